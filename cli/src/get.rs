//! `rusectl get`: list a kind of resource.

use ruse_proto::admin::v1 as pb;
use ruse_proto::types::{Labels, UnixMs, parse_duration};

use crate::Client;
use crate::args::GetWhat;
use crate::campaigns::campaign_name;
use crate::incidents;
use crate::listing;
use crate::output::Format;

pub async fn get(client: &mut Client, format: Format, what: GetWhat) -> anyhow::Result<()> {
    match what {
        GetWhat::Incidents(args) => incidents::list(client, format, args).await,
        GetWhat::Suppressions => incidents::suppressions(client, format).await,
        GetWhat::Outputs => incidents::outputs(client, format).await,
        GetWhat::Agents { selector, all } => {
            let selector = Labels::parse_pairs(selector.iter().map(String::as_str))?;
            // Page by page: a large fleet does not fit in one message.
            let mut agents = Vec::new();
            let mut after_id = String::new();
            loop {
                let page = client
                    .list_agents(pb::ListAgentsRequest {
                        selector: selector.to_map(),
                        include_deleted: all,
                        after_id,
                    })
                    .await?
                    .into_inner();
                agents.extend(page.agents);
                if page.next_after_id.is_empty() {
                    break;
                }
                after_id = page.next_after_id;
            }
            listing::print(format, &agents)
        }
        GetWhat::Tokens => {
            let tokens = client
                .list_tokens(pb::ListTokensRequest {})
                .await?
                .into_inner()
                .tokens;
            listing::print(format, &tokens)
        }
        GetWhat::Audit { since, limit } => {
            let since_ms = match since {
                Some(s) => UnixMs::now().saturating_sub(parse_duration(&s)?).0,
                None => 0,
            };
            // Page by page (the controller bounds each reply), newest
            // pages first, until `limit` records or the start of the log.
            let mut records = Vec::new();
            let mut before_seq = 0;
            loop {
                let want = limit.saturating_sub(records.len() as u32);
                if want == 0 {
                    break;
                }
                let page = client
                    .list_audit(pb::ListAuditRequest {
                        since_ms,
                        limit: want,
                        before_seq,
                    })
                    .await?
                    .into_inner();
                let mut page_records = page.records;
                page_records.append(&mut records);
                records = page_records;
                if page.next_before_seq == 0 {
                    break;
                }
                before_seq = page.next_before_seq;
            }
            listing::print(format, &records)
        }
        GetWhat::Events { filter, limit } => {
            // Page by page (the controller bounds each reply), newest pages
            // first, until `limit` events or the oldest stored.
            let filter = filter.filter()?;
            let mut events = Vec::new();
            let mut before_cursor = 0;
            loop {
                let want = limit.saturating_sub(events.len() as u32);
                if want == 0 {
                    break;
                }
                let page = client
                    .list_events(pb::ListEventsRequest {
                        filter: Some(filter.clone()),
                        limit: want,
                        before_cursor,
                    })
                    .await?
                    .into_inner();
                let mut page_events = page.events;
                page_events.append(&mut events);
                events = page_events;
                if page.next_before_cursor == 0 {
                    break;
                }
                before_cursor = page.next_before_cursor;
            }
            listing::print(format, &events)
        }
        GetWhat::Metrics => {
            let text = client
                .get_metrics(pb::GetMetricsRequest {})
                .await?
                .into_inner()
                .text;
            print!("{text}");
            Ok(())
        }
        GetWhat::Campaigns => {
            let campaigns = client
                .list_campaigns(pb::ListCampaignsRequest {})
                .await?
                .into_inner()
                .campaigns;
            listing::print(format, &campaigns)
        }
        GetWhat::AllowRules => {
            let rules = client
                .list_allow_rules(pb::ListAllowRulesRequest {})
                .await?
                .into_inner()
                .rules;
            listing::print(format, &rules)
        }
        GetWhat::Decoys => {
            let decoys = client
                .list_decoys(pb::ListDecoysRequest {})
                .await?
                .into_inner()
                .decoys;
            listing::print(format, &decoys)
        }
        GetWhat::Lures {
            agent,
            campaign,
            all,
        } => {
            let lures = client
                .list_lures(pb::ListLuresRequest {
                    agent_id: agent.unwrap_or_default(),
                    campaign: campaign
                        .map(|c| campaign_name(&c))
                        .transpose()?
                        .unwrap_or_default(),
                    include_retired: all,
                })
                .await?
                .into_inner()
                .lures;
            listing::print(format, &lures)
        }
        GetWhat::Admins => {
            let admins = client
                .list_admins(pb::ListAdminsRequest {})
                .await?
                .into_inner()
                .admins;
            listing::print(format, &admins)
        }
    }
}

//! `rusectl get`: list a kind of resource.

use ruse_proto::admin::v1 as pb;
use ruse_proto::types::{Labels, UnixMs, parse_duration};

use crate::Client;
use crate::args::GetWhat;
use crate::campaigns::campaign_name;
use crate::incidents;
use crate::output::{self, Format};

pub async fn get(client: &mut Client, format: Format, what: GetWhat) -> anyhow::Result<()> {
    match what {
        GetWhat::Incidents(args) => incidents::list(client, format, args).await,
        GetWhat::Suppressions => incidents::suppressions(client, format).await,
        GetWhat::Outputs => incidents::outputs(client, format).await,
        GetWhat::Agents { selector, all } => {
            let selector = Labels::parse_pairs(selector.iter().map(String::as_str))?;
            let agents = client
                .list_agents(pb::ListAgentsRequest {
                    selector: selector.to_map(),
                    include_deleted: all,
                })
                .await?
                .into_inner()
                .agents;
            match format {
                Format::Json | Format::Yaml => output::structured(
                    format,
                    &output::List {
                        items: agents.iter().map(output::Agent::from).collect::<Vec<_>>(),
                    },
                ),
                Format::Table => {
                    let rows: Vec<Vec<String>> = agents
                        .iter()
                        .map(|a| {
                            vec![
                                a.id.clone(),
                                a.hostname.clone(),
                                a.state().display_name().into(),
                                output::age(a.last_seen_ms),
                                output::labels(&a.labels.clone().into_iter().collect()),
                            ]
                        })
                        .collect();
                    output::table(&["ID", "HOSTNAME", "STATE", "LAST SEEN", "LABELS"], &rows);
                    Ok(())
                }
                Format::Wide => {
                    let rows: Vec<Vec<String>> = agents
                        .iter()
                        .map(|a| {
                            vec![
                                a.id.clone(),
                                a.hostname.clone(),
                                a.state().display_name().into(),
                                output::age(a.last_seen_ms),
                                a.os.clone(),
                                a.addresses.join(","),
                                a.agent_version.clone(),
                                a.peer.clone(),
                                output::labels(&a.labels.clone().into_iter().collect()),
                            ]
                        })
                        .collect();
                    output::table(
                        &[
                            "ID",
                            "HOSTNAME",
                            "STATE",
                            "LAST SEEN",
                            "OS",
                            "ADDRESSES",
                            "VERSION",
                            "PEER",
                            "LABELS",
                        ],
                        &rows,
                    );
                    Ok(())
                }
            }
        }
        GetWhat::Tokens => {
            let tokens = client
                .list_tokens(pb::ListTokensRequest {})
                .await?
                .into_inner()
                .tokens;
            let items: Vec<output::Token> = tokens.iter().map(output::Token::from).collect();
            match format {
                Format::Json | Format::Yaml => output::structured(format, &output::List { items }),
                _ => {
                    let now = UnixMs::now().0;
                    let rows: Vec<Vec<String>> = tokens
                        .iter()
                        .zip(&items)
                        .map(|(t, item)| {
                            let status = if t.expires_ms <= now {
                                "expired"
                            } else if t.uses >= t.max_uses {
                                "used up"
                            } else {
                                "valid"
                            };
                            vec![
                                t.id.clone(),
                                status.into(),
                                format!("{}/{}", t.uses, t.max_uses),
                                item.expires.clone(),
                                output::labels(&item.labels),
                                t.description.clone(),
                            ]
                        })
                        .collect();
                    output::table(
                        &["ID", "STATUS", "USES", "EXPIRES", "LABELS", "DESCRIPTION"],
                        &rows,
                    );
                    Ok(())
                }
            }
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
            let items: Vec<output::Audit> = records.iter().map(output::Audit::from).collect();
            match format {
                Format::Json | Format::Yaml => output::structured(format, &output::List { items }),
                wide => {
                    let rows: Vec<Vec<String>> = items
                        .iter()
                        .map(|r| {
                            let mut row = vec![
                                r.at.clone(),
                                r.actor.clone(),
                                r.action.clone(),
                                r.target.clone(),
                                r.result.clone(),
                            ];
                            if wide == Format::Wide {
                                row.push(r.peer.clone());
                                row.push(r.detail.clone());
                            }
                            row
                        })
                        .collect();
                    let mut headers = vec!["TIME", "ACTOR", "ACTION", "TARGET", "RESULT"];
                    if wide == Format::Wide {
                        headers.extend(["PEER", "DETAIL"]);
                    }
                    output::table(&headers, &rows);
                    Ok(())
                }
            }
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
            match format {
                Format::Json | Format::Yaml => output::structured(
                    format,
                    &output::List {
                        items: events.iter().map(output::Event::from).collect::<Vec<_>>(),
                    },
                ),
                wide => {
                    let wide = wide == Format::Wide;
                    let rows: Vec<Vec<String>> =
                        events.iter().map(|e| output::event_row(e, wide)).collect();
                    let mut headers = output::EVENT_HEADERS.to_vec();
                    if wide {
                        headers.extend(output::EVENT_WIDE_HEADERS);
                    }
                    output::table(&headers, &rows);
                    Ok(())
                }
            }
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
            match format {
                Format::Json | Format::Yaml => output::structured(
                    format,
                    &output::List {
                        items: campaigns
                            .iter()
                            .map(output::Campaign::from)
                            .collect::<Vec<_>>(),
                    },
                ),
                _ => {
                    let rows: Vec<Vec<String>> = campaigns
                        .iter()
                        .map(|c| {
                            let applied: u32 = c.wave_status.iter().map(|w| w.acked).sum();
                            let failed: u32 = c.wave_status.iter().map(|w| w.failed).sum();
                            vec![
                                c.name.clone(),
                                output::labels(&c.selector.clone().into_iter().collect()),
                                c.lures.len().to_string(),
                                c.matching_agents.to_string(),
                                c.rollout_state.clone(),
                                format!("{}/{}", c.wave, c.wave_status.len()),
                                format!("{applied}/{}", c.matching_agents),
                                failed.to_string(),
                                output::age(c.updated_ms),
                            ]
                        })
                        .collect();
                    output::table(
                        &[
                            "NAME", "SELECTOR", "LURES", "AGENTS", "ROLLOUT", "WAVE", "APPLIED",
                            "FAILED", "UPDATED",
                        ],
                        &rows,
                    );
                    Ok(())
                }
            }
        }
        GetWhat::AllowRules => {
            let rules = client
                .list_allow_rules(pb::ListAllowRulesRequest {})
                .await?
                .into_inner()
                .rules;
            #[derive(serde::Serialize)]
            struct Rule {
                name: String,
                selector: std::collections::BTreeMap<String, String>,
                process: String,
                user: String,
                template: String,
                matching_agents: u32,
            }
            let items: Vec<Rule> = rules
                .iter()
                .map(|r| Rule {
                    name: r.name.clone(),
                    selector: r.selector.clone().into_iter().collect(),
                    process: r.process.clone(),
                    user: r.user.clone(),
                    template: r.template.clone(),
                    matching_agents: r.matching_agents,
                })
                .collect();
            match format {
                Format::Json | Format::Yaml => output::structured(format, &output::List { items }),
                _ => {
                    let any = |s: &str| {
                        if s.is_empty() {
                            "*".to_owned()
                        } else {
                            s.to_owned()
                        }
                    };
                    let rows: Vec<Vec<String>> = items
                        .iter()
                        .map(|r| {
                            vec![
                                r.name.clone(),
                                any(&r.process),
                                any(&r.user),
                                any(&r.template),
                                output::labels(&r.selector),
                                r.matching_agents.to_string(),
                            ]
                        })
                        .collect();
                    output::table(
                        &["NAME", "PROCESS", "USER", "TEMPLATE", "SELECTOR", "AGENTS"],
                        &rows,
                    );
                    Ok(())
                }
            }
        }
        GetWhat::Decoys => {
            let decoys = client
                .list_decoys(pb::ListDecoysRequest {})
                .await?
                .into_inner()
                .decoys;
            match format {
                Format::Json | Format::Yaml => output::structured(
                    format,
                    &output::List {
                        items: decoys.iter().map(output::Decoy::from).collect::<Vec<_>>(),
                    },
                ),
                _ => {
                    let rows: Vec<Vec<String>> = decoys
                        .iter()
                        .map(|d| {
                            vec![
                                d.name.clone(),
                                d.address.clone(),
                                d.services
                                    .iter()
                                    .map(|s| match s.refusal_delay_ms {
                                        Some(ms) => {
                                            format!("{}/{} (refusal {ms}ms)", s.protocol, s.port)
                                        }
                                        None => format!("{}/{}", s.protocol, s.port),
                                    })
                                    .collect::<Vec<_>>()
                                    .join(","),
                                output::labels(&d.selector.clone().into_iter().collect()),
                                d.matching_agents.to_string(),
                            ]
                        })
                        .collect();
                    output::table(
                        &["NAME", "ADDRESS", "SERVICES", "SELECTOR", "AGENTS"],
                        &rows,
                    );
                    Ok(())
                }
            }
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
            let items: Vec<output::Lure> = lures.iter().map(output::Lure::from).collect();
            match format {
                Format::Json | Format::Yaml => output::structured(format, &output::List { items }),
                wide => {
                    let rows: Vec<Vec<String>> = items
                        .iter()
                        .map(|l| {
                            let mut row = vec![
                                l.id.clone(),
                                l.agent.clone(),
                                l.campaign.clone(),
                                l.template.clone(),
                                l.state.clone(),
                                l.identifiers.clone(),
                            ];
                            if wide == Format::Wide {
                                row.extend([
                                    l.slot.clone(),
                                    l.epoch.to_string(),
                                    l.revision.to_string(),
                                    l.created.clone(),
                                    l.retired.clone(),
                                    l.error.clone(),
                                ]);
                            }
                            row
                        })
                        .collect();
                    let mut headers = vec![
                        "ID",
                        "AGENT",
                        "CAMPAIGN",
                        "TEMPLATE",
                        "STATE",
                        "IDENTIFIERS",
                    ];
                    if wide == Format::Wide {
                        headers
                            .extend(["SLOT", "EPOCH", "REVISION", "CREATED", "RETIRED", "ERROR"]);
                    }
                    output::table(&headers, &rows);
                    Ok(())
                }
            }
        }
        GetWhat::Admins => {
            let admins = client
                .list_admins(pb::ListAdminsRequest {})
                .await?
                .into_inner()
                .admins;
            let items: Vec<output::Admin> = admins.iter().map(output::Admin::from).collect();
            match format {
                Format::Json | Format::Yaml => output::structured(format, &output::List { items }),
                _ => {
                    let rows: Vec<Vec<String>> = items
                        .iter()
                        .map(|a| {
                            vec![
                                a.name.clone(),
                                a.role.clone(),
                                a.issued.clone(),
                                a.issued_by.clone(),
                            ]
                        })
                        .collect();
                    output::table(&["NAME", "ROLE", "ISSUED", "ISSUED BY"], &rows);
                    Ok(())
                }
            }
        }
    }
}

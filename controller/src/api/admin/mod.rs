//! `ruse.admin.v1.AdminService`, used by `rusectl`.
//!
//! Every call is authorised by the caller's role (from the admin identity
//! in its certificate); every mutating call, allowed or refused, is written
//! to the audit log before the reply.
//!
//! Longer than our ~800 lines because the service is one trait impl, a
//! block Rust does not split across files; each method only authorises,
//! calls the core and converts. The conversions are in `convert.rs`, the
//! logic in the core.

use std::future::Future;
use std::sync::Arc;

use tonic::{Request, Response, Status};

use ruse_proto::admin::v1 as pb;
use ruse_proto::admin::v1::admin_service_server::AdminService;
use ruse_proto::types::{AdminName, AgentId, Identity, Role, TokenId, UnixMs};

use super::{caller, status};
use crate::core::{AuditEntry, Caller, Core, OpError};
use crate::deploy::RolloutAction;
use crate::events::WatchItem;
use crate::model::AgentRecord;

mod convert;

use self::convert::*;

/// Audit records returned when the request sets no limit.
const DEFAULT_AUDIT_LIMIT: usize = 100;
const MAX_AUDIT_LIMIT: usize = 10_000;

/// The admin-facing service.
#[derive(Debug, Clone)]
pub struct AdminApi {
    core: Arc<Core>,
}

impl AdminApi {
    pub fn new(core: Arc<Core>) -> Self {
        AdminApi { core }
    }

    /// The caller's name and role, if it may do something needing `needed`.
    /// Refusals of mutating calls (`audit` set) are audited.
    async fn authorize<T>(
        &self,
        request: &Request<T>,
        needed: Role,
        audit: Option<&AuditEntry>,
    ) -> Result<(Caller, AdminName, Role), Status> {
        let caller = caller(request)?;
        let refusal = match &caller.identity {
            None => Err(Status::unauthenticated(
                "an admin client certificate is required",
            )),
            Some(Identity::Agent(_)) => Err(Status::permission_denied(
                "agent certificates cannot call the admin API",
            )),
            Some(Identity::Admin(name)) => {
                match self.core.admin_role(name).map_err(|e| status(e.into()))? {
                    None => Err(Status::permission_denied(format!(
                        "{name} is not a known admin of this controller"
                    ))),
                    Some(role) if role < needed => Err(Status::permission_denied(format!(
                        "{name} has role {role}; this needs {needed}"
                    ))),
                    Some(role) => Ok((name.clone(), role)),
                }
            }
        };
        match refusal {
            Ok((name, role)) => Ok((caller, name, role)),
            Err(refused) => {
                if let Some(entry) = audit {
                    tracing::warn!(actor = %caller.actor(), action = entry.action, error = %refused.message(), "admin call refused");
                    self.core
                        .audit(&caller, entry.clone(), refused.message())
                        .await
                        .map_err(|e| status(e.into()))?;
                }
                Err(refused)
            }
        }
    }

    /// Runs a mutating operation for an authorised caller and audits its
    /// outcome; the reply waits for the audit record (and the operation's
    /// writes) to be durable.
    async fn mutate<T>(
        &self,
        caller: &Caller,
        entry: AuditEntry,
        op: impl Future<Output = Result<T, OpError>>,
    ) -> Result<T, Status> {
        let outcome = op.await;
        let result = match &outcome {
            Ok(_) => "ok".to_owned(),
            Err(e) => e.to_string(),
        };
        self.core
            .audit(caller, entry, &result)
            .await
            .map_err(|e| status(e.into()))?;
        outcome.map_err(status)
    }

    /// What the fleet now shows of agent `id`, as the answer to a call
    /// that changed it.
    fn agent_reply(&self, id: &AgentId) -> Result<Response<pb::Agent>, Status> {
        let view = self
            .core
            .fleet
            .get(id)
            .ok_or_else(|| status(OpError::NotFound(format!("agent {id}"))))?;
        Ok(Response::new(agent_pb(view)))
    }

    /// Revokes or deletes agent `id` (`action` names it in the audit log)
    /// and answers with what the fleet now shows of it.
    async fn retire_agent<T>(
        &self,
        request: &Request<T>,
        id: &str,
        action: &'static str,
        reason: String,
        op: fn(&Core, &Caller, &AgentId, &str) -> Result<AgentRecord, OpError>,
    ) -> Result<Response<pb::Agent>, Status> {
        let audit = entry(action, format!("agent/{id}"), reason.clone());
        let (caller, _, _) = self
            .authorize(request, Role::Operator, Some(&audit))
            .await?;
        let id = id.parse::<AgentId>();
        let record = self
            .mutate(&caller, audit, async {
                let id = id.map_err(|e| OpError::Invalid(e.to_string()))?;
                op(&self.core, &caller, &id, &reason)
            })
            .await?;
        tracing::info!(agent = %record.id, by = %caller.actor(), action, "agent retired");
        self.agent_reply(&record.id)
    }
}

fn entry(action: &'static str, target: impl Into<String>, detail: impl Into<String>) -> AuditEntry {
    AuditEntry {
        action,
        target: target.into(),
        detail: detail.into(),
    }
}

/// Events returned when the request sets no limit.
const DEFAULT_EVENT_LIMIT: usize = 100;
const MAX_EVENT_LIMIT: usize = 100_000;

type WatchStream = std::pin::Pin<
    Box<dyn tokio_stream::Stream<Item = Result<pb::WatchEventsResponse, Status>> + Send>,
>;

type IncidentStream = std::pin::Pin<
    Box<dyn tokio_stream::Stream<Item = Result<pb::WatchIncidentsResponse, Status>> + Send>,
>;

type DrillStream =
    std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::DrillStep, Status>> + Send>>;

impl AdminApi {
    fn campaign_status(&self, name: &str) -> Result<pb::Campaign, Status> {
        self.core
            .deploy
            .campaign(name)
            .map(campaign_pb)
            .ok_or_else(|| status(OpError::NotFound(format!("campaign {name}"))))
    }
}

#[tonic::async_trait]
impl AdminService for AdminApi {
    async fn who_am_i(
        &self,
        request: Request<pb::WhoAmIRequest>,
    ) -> Result<Response<pb::WhoAmIResponse>, Status> {
        let (_, name, role) = self.authorize(&request, Role::Viewer, None).await?;
        Ok(Response::new(pb::WhoAmIResponse {
            name: name.to_string(),
            role: pb::Role::from(role).into(),
            trust_domain: self.core.ca.trust_domain().to_string(),
            controller_version: env!("CARGO_PKG_VERSION").to_owned(),
        }))
    }

    async fn console_sign_in(
        &self,
        request: Request<pb::ConsoleSignInRequest>,
    ) -> Result<Response<pb::ConsoleSignInResponse>, Status> {
        let audit = entry("console.link", "", "");
        let (caller, name, _) = self.authorize(&request, Role::Viewer, Some(&audit)).await?;
        let link = self
            .mutate(&caller, audit, async { self.core.console_link(&name) })
            .await?;
        Ok(Response::new(pb::ConsoleSignInResponse {
            url: link.url,
            expires_ms: link.expires.0.max(0) as u64,
        }))
    }

    async fn revoke_console_sessions(
        &self,
        request: Request<pb::RevokeConsoleSessionsRequest>,
    ) -> Result<Response<pb::RevokeConsoleSessionsResponse>, Status> {
        let whose = request.get_ref().admin.clone();
        let audit = entry("console.revoke", format!("admin/{whose}"), "");
        // Anyone may end their own sessions; others' need the admin role.
        let (_, me, _) = self.authorize(&request, Role::Viewer, None).await?;
        let needed = if me.as_str() == whose {
            Role::Viewer
        } else {
            Role::Admin
        };
        let (caller, _, _) = self.authorize(&request, needed, Some(&audit)).await?;
        let admin: AdminName = parse(&whose)?;
        let (sessions, links) = self
            .mutate(&caller, audit, async {
                Ok(self.core.console.end_all(&admin))
            })
            .await?;
        Ok(Response::new(pb::RevokeConsoleSessionsResponse {
            sessions: u32::try_from(sessions).unwrap_or(u32::MAX),
            links: u32::try_from(links).unwrap_or(u32::MAX),
        }))
    }

    async fn create_token(
        &self,
        request: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreateTokenResponse>, Status> {
        let req = request.get_ref();
        let labels = labels(req.labels.clone())?;
        let audit = entry(
            "token.create",
            "",
            format!(
                "ttl_ms={} max_uses={} labels={labels}",
                req.ttl_ms, req.max_uses
            ),
        );
        let (caller, _, _) = self
            .authorize(&request, Role::Operator, Some(&audit))
            .await?;
        let req = request.into_inner();
        // The token id is only known once created; audit after creating.
        let token = self.core.create_token(
            &caller,
            optional_ms(req.ttl_ms),
            (req.max_uses > 0).then_some(req.max_uses),
            labels,
            req.description.chars().take(256).collect(),
        );
        let audit = AuditEntry {
            target: token
                .as_ref()
                .map(|t| format!("token/{}", t.record.id))
                .unwrap_or_default(),
            ..audit
        };
        let token = self.mutate(&caller, audit, async { token }).await?;
        Ok(Response::new(pb::CreateTokenResponse {
            info: Some(token_pb(&token.record)),
            token: token.secret,
        }))
    }

    async fn list_tokens(
        &self,
        request: Request<pb::ListTokensRequest>,
    ) -> Result<Response<pb::ListTokensResponse>, Status> {
        self.authorize(&request, Role::Viewer, None).await?;
        let mut tokens = self.core.tokens().map_err(status)?;
        tokens.sort_by_key(|t| t.created_at);
        Ok(Response::new(pb::ListTokensResponse {
            tokens: tokens.iter().map(token_pb).collect(),
        }))
    }

    async fn delete_token(
        &self,
        request: Request<pb::DeleteTokenRequest>,
    ) -> Result<Response<pb::DeleteTokenResponse>, Status> {
        let audit = entry(
            "token.delete",
            format!("token/{}", request.get_ref().id),
            "",
        );
        let (caller, _, _) = self
            .authorize(&request, Role::Operator, Some(&audit))
            .await?;
        let id = request.get_ref().id.parse::<TokenId>();
        self.mutate(&caller, audit, async {
            let id = id.map_err(|e| OpError::Invalid(e.to_string()))?;
            self.core.delete_token(&id)
        })
        .await?;
        Ok(Response::new(pb::DeleteTokenResponse {}))
    }

    async fn list_agents(
        &self,
        request: Request<pb::ListAgentsRequest>,
    ) -> Result<Response<pb::ListAgentsResponse>, Status> {
        self.authorize(&request, Role::Viewer, None).await?;
        let req = request.into_inner();
        let selector = labels(req.selector)?;
        let mut listed: Vec<_> = self
            .core
            .fleet
            .list(&selector)
            .into_iter()
            .filter(|a| req.include_deleted || a.record.deleted.is_none())
            .filter(|a| req.after_id.is_empty() || a.record.id.as_str() > req.after_id.as_str())
            .collect();
        listed.sort_unstable_by(|a, b| a.record.id.as_str().cmp(b.record.id.as_str()));
        // By id until the reply would pass half the message limit (a large
        // fleet is several pages).
        let budget = self.core.config.max_message_bytes / 2;
        let mut used = 0;
        let mut agents = Vec::new();
        let mut next_after_id = String::new();
        for view in listed {
            let agent = agent_pb(view);
            used += prost::Message::encoded_len(&agent) + 8;
            if used > budget && !agents.is_empty() {
                next_after_id = agents
                    .last()
                    .map_or_else(String::new, |a: &pb::Agent| a.id.clone());
                break;
            }
            agents.push(agent);
        }
        Ok(Response::new(pb::ListAgentsResponse {
            agents,
            next_after_id,
        }))
    }

    async fn get_agent(
        &self,
        request: Request<pb::GetAgentRequest>,
    ) -> Result<Response<pb::Agent>, Status> {
        self.authorize(&request, Role::Viewer, None).await?;
        let id: AgentId = parse(&request.get_ref().id)?;
        let view = self
            .core
            .fleet
            .get(&id)
            .ok_or_else(|| status(OpError::NotFound(format!("agent {id}"))))?;
        Ok(Response::new(agent_pb(view)))
    }

    async fn revoke_agent(
        &self,
        request: Request<pb::RevokeAgentRequest>,
    ) -> Result<Response<pb::Agent>, Status> {
        let req = request.get_ref();
        let reason: String = req.reason.chars().take(256).collect();
        self.retire_agent(
            &request,
            &req.id,
            "agent.revoke",
            reason,
            Core::revoke_agent,
        )
        .await
    }

    async fn list_outputs(
        &self,
        request: Request<pb::ListOutputsRequest>,
    ) -> Result<Response<pb::ListOutputsResponse>, Status> {
        self.authorize(&request, Role::Viewer, None).await?;
        let outputs = self
            .core
            .events
            .outputs
            .status()
            .into_iter()
            .map(|o| pb::Output {
                name: o.name,
                kind: o.kind,
                queued: count(o.queued),
                delivered: o.delivered,
                failures: o.failures,
                last_delivered_ms: o.last_delivered.map_or(0, |t| t.0),
                last_failed_ms: o.last_failed.map_or(0, |t| t.0),
                last_error: o.last_error,
            })
            .collect();
        Ok(Response::new(pb::ListOutputsResponse { outputs }))
    }

    async fn delete_agent(
        &self,
        request: Request<pb::DeleteAgentRequest>,
    ) -> Result<Response<pb::Agent>, Status> {
        let req = request.get_ref();
        let reason: String = req.reason.chars().take(256).collect();
        let reason = if reason.trim().is_empty() {
            "deleted (decommissioned)".to_owned()
        } else {
            reason
        };
        self.retire_agent(
            &request,
            &req.id,
            "agent.delete",
            reason,
            Core::delete_agent,
        )
        .await
    }

    async fn issue_admin(
        &self,
        request: Request<pb::IssueAdminRequest>,
    ) -> Result<Response<pb::IssueAdminResponse>, Status> {
        let req = request.get_ref();
        let audit = entry(
            "admin.issue",
            format!("admin/{}", req.name),
            format!("role={}", req.role().display_name()),
        );
        let (caller, _, _) = self.authorize(&request, Role::Admin, Some(&audit)).await?;
        let req = request.into_inner();
        let name = req.name.parse::<AdminName>();
        let role = Role::try_from(req.role());
        let cert = self
            .mutate(&caller, audit, async {
                let name = name.map_err(|e| OpError::Invalid(e.to_string()))?;
                let role = role.map_err(|e| OpError::Invalid(e.to_string()))?;
                self.core
                    .issue_admin(&caller, &name, role, &req.csr_der, optional_ms(req.ttl_ms))
            })
            .await?;
        Ok(Response::new(pb::IssueAdminResponse {
            certificate_der: cert.der.to_vec(),
            ca_certificate_der: self.core.ca.cert_der().to_vec(),
            not_after_ms: cert.not_after.0,
            trust_domain: self.core.ca.trust_domain().to_string(),
        }))
    }

    async fn list_admins(
        &self,
        request: Request<pb::ListAdminsRequest>,
    ) -> Result<Response<pb::ListAdminsResponse>, Status> {
        self.authorize(&request, Role::Viewer, None).await?;
        let admins = self
            .core
            .store
            .admins()
            .map_err(|e| status(e.into()))?
            .into_iter()
            .map(|a| pb::Admin {
                name: a.name.to_string(),
                role: pb::Role::from(a.role).into(),
                issued_ms: a.issued_at.0,
                issued_by: a.issued_by,
            })
            .collect();
        Ok(Response::new(pb::ListAdminsResponse { admins }))
    }

    async fn list_audit(
        &self,
        request: Request<pb::ListAuditRequest>,
    ) -> Result<Response<pb::ListAuditResponse>, Status> {
        self.authorize(&request, Role::Viewer, None).await?;
        // What was refused until now is part of the log the caller sees.
        self.core
            .audit_refusals()
            .await
            .map_err(|e| status(e.into()))?;
        let req = request.into_inner();
        let limit = match req.limit {
            0 => DEFAULT_AUDIT_LIMIT,
            n => usize::try_from(n)
                .unwrap_or(MAX_AUDIT_LIMIT)
                .min(MAX_AUDIT_LIMIT),
        };
        let before = (req.before_seq > 0).then_some(req.before_seq);
        let stored = self
            .core
            .store
            .audit(UnixMs(req.since_ms), before, limit)
            .map_err(|e| status(e.into()))?;
        let full = stored.len() == limit;
        // Newest first until the reply would pass half the message limit.
        let budget = self.core.config.max_message_bytes / 2;
        let mut used = 0;
        let mut cut_by_size = false;
        let mut records: Vec<pb::AuditRecord> = Vec::new();
        for r in stored.into_iter().rev() {
            let record = pb::AuditRecord {
                seq: r.seq,
                at_ms: r.at.0,
                actor: r.actor,
                peer: r.peer,
                action: r.action,
                target: r.target,
                result: r.result,
                detail: r.detail,
            };
            used += prost::Message::encoded_len(&record) + 8;
            if used > budget && !records.is_empty() {
                cut_by_size = true;
                break;
            }
            records.push(record);
        }
        records.reverse();
        let next_before_seq = if full || cut_by_size {
            records.first().map_or(0, |r| r.seq)
        } else {
            0
        };
        Ok(Response::new(pb::ListAuditResponse {
            records,
            next_before_seq,
        }))
    }

    async fn label_agent(
        &self,
        request: Request<pb::LabelAgentRequest>,
    ) -> Result<Response<pb::Agent>, Status> {
        let req = request.get_ref();
        let set = labels(req.set.clone())?;
        let remove = req.remove.clone();
        let audit = entry(
            "agent.label",
            format!("agent/{}", req.id),
            format!("set={set} remove={}", remove.join(",")),
        );
        let (caller, _, _) = self
            .authorize(&request, Role::Operator, Some(&audit))
            .await?;
        let id = request.get_ref().id.parse::<AgentId>();
        let record = self
            .mutate(&caller, audit, async {
                let id = id.map_err(|e| OpError::Invalid(e.to_string()))?;
                self.core.label_agent(&id, &set, &remove)
            })
            .await?;
        self.agent_reply(&record.id)
    }

    async fn apply(
        &self,
        request: Request<pb::ApplyRequest>,
    ) -> Result<Response<pb::ApplyResponse>, Status> {
        let req = request.get_ref();
        let dry_run = req.dry_run;
        let audit = entry(
            if dry_run {
                "resources.apply-dry-run"
            } else {
                "resources.apply"
            },
            req.source.chars().take(256).collect::<String>(),
            "",
        );
        let (caller, _, _) = self
            .authorize(&request, Role::Operator, Some(&audit))
            .await?;
        let content = request.into_inner().content;
        let outcome = async {
            let docs = self.core.parse_manifests(content).await?;
            Ok::<_, OpError>(self.core.deploy.apply(&docs, dry_run).await?)
        }
        .await;
        let detail = match &outcome {
            Ok(results) => results
                .iter()
                .map(|r| format!("{}/{} {}", r.kind, r.name, r.action))
                .collect::<Vec<_>>()
                .join("; "),
            Err(_) => String::new(),
        };
        let results = self
            .mutate(&caller, AuditEntry { detail, ..audit }, async { outcome })
            .await?;
        Ok(Response::new(pb::ApplyResponse {
            results: results
                .into_iter()
                .map(|r| pb::ApplyResult {
                    kind: r.kind.into(),
                    name: r.name,
                    action: r.action.into(),
                    notes: r.notes,
                })
                .collect(),
        }))
    }

    async fn list_campaigns(
        &self,
        request: Request<pb::ListCampaignsRequest>,
    ) -> Result<Response<pb::ListCampaignsResponse>, Status> {
        self.authorize(&request, Role::Viewer, None).await?;
        let campaigns = self
            .core
            .deploy
            .campaign_names()
            .iter()
            .filter_map(|n| self.core.deploy.campaign(n))
            .map(campaign_pb)
            .collect();
        Ok(Response::new(pb::ListCampaignsResponse { campaigns }))
    }

    async fn get_campaign(
        &self,
        request: Request<pb::GetCampaignRequest>,
    ) -> Result<Response<pb::Campaign>, Status> {
        self.authorize(&request, Role::Viewer, None).await?;
        Ok(Response::new(
            self.campaign_status(&request.get_ref().name)?,
        ))
    }

    async fn delete_campaign(
        &self,
        request: Request<pb::DeleteCampaignRequest>,
    ) -> Result<Response<pb::DeleteCampaignResponse>, Status> {
        let name = request.get_ref().name.clone();
        let audit = entry("campaign.delete", format!("campaign/{name}"), "");
        let (caller, _, _) = self
            .authorize(&request, Role::Operator, Some(&audit))
            .await?;
        self.mutate(&caller, audit, async {
            Ok(self.core.deploy.delete_campaign(&name).await?)
        })
        .await?;
        Ok(Response::new(pb::DeleteCampaignResponse {}))
    }

    async fn list_decoys(
        &self,
        request: Request<pb::ListDecoysRequest>,
    ) -> Result<Response<pb::ListDecoysResponse>, Status> {
        self.authorize(&request, Role::Viewer, None).await?;
        let decoys = self
            .core
            .deploy
            .decoys()
            .into_iter()
            .map(|d| {
                let matching = self
                    .core
                    .fleet
                    .list(&d.selector)
                    .iter()
                    .filter(|a| a.record.revoked.is_none())
                    .count();
                decoy_pb(d, matching)
            })
            .collect();
        Ok(Response::new(pb::ListDecoysResponse { decoys }))
    }

    async fn delete_decoy(
        &self,
        request: Request<pb::DeleteDecoyRequest>,
    ) -> Result<Response<pb::DeleteDecoyResponse>, Status> {
        let name = request.get_ref().name.clone();
        let audit = entry("decoy.delete", format!("decoy/{name}"), "");
        let (caller, _, _) = self
            .authorize(&request, Role::Operator, Some(&audit))
            .await?;
        self.mutate(&caller, audit, async {
            Ok(self.core.deploy.delete_decoy(&name).await?)
        })
        .await?;
        Ok(Response::new(pb::DeleteDecoyResponse {}))
    }

    async fn list_lures(
        &self,
        request: Request<pb::ListLuresRequest>,
    ) -> Result<Response<pb::ListLuresResponse>, Status> {
        self.authorize(&request, Role::Viewer, None).await?;
        let req = request.into_inner();
        let agent = if req.agent_id.is_empty() {
            None
        } else {
            Some(parse::<AgentId>(&req.agent_id)?)
        };
        let campaign = (!req.campaign.is_empty()).then_some(req.campaign.as_str());
        let lures = self
            .core
            .deploy
            .lures(agent.as_ref(), campaign, req.include_retired)
            .map_err(|e| status(e.into()))?
            .into_iter()
            .map(lure_pb)
            .collect();
        Ok(Response::new(pb::ListLuresResponse { lures }))
    }

    async fn rollout(
        &self,
        request: Request<pb::RolloutRequest>,
    ) -> Result<Response<pb::Campaign>, Status> {
        let req = request.get_ref();
        let name = req.campaign.clone();
        let action = match req.action() {
            pb::RolloutAction::Status => {
                self.authorize(&request, Role::Viewer, None).await?;
                return Ok(Response::new(self.campaign_status(&name)?));
            }
            pb::RolloutAction::Pause => RolloutAction::Pause,
            pb::RolloutAction::Resume => RolloutAction::Resume,
            pb::RolloutAction::Abort => RolloutAction::Abort,
            pb::RolloutAction::Unspecified => {
                return Err(Status::invalid_argument("no rollout action given"));
            }
        };
        let verb = match action {
            RolloutAction::Pause => "rollout.pause",
            RolloutAction::Resume => "rollout.resume",
            RolloutAction::Abort => "rollout.abort",
        };
        let audit = entry(verb, format!("campaign/{name}"), "");
        let (caller, _, _) = self
            .authorize(&request, Role::Operator, Some(&audit))
            .await?;
        let by = caller.actor();
        self.mutate(&caller, audit, async {
            Ok(self.core.deploy.rollout_action(&name, action, &by).await?)
        })
        .await?;
        Ok(Response::new(self.campaign_status(&name)?))
    }

    async fn rotate(
        &self,
        request: Request<pb::RotateRequest>,
    ) -> Result<Response<pb::Campaign>, Status> {
        let name = request.get_ref().campaign.clone();
        let audit = entry("campaign.rotate", format!("campaign/{name}"), "");
        let (caller, _, _) = self
            .authorize(&request, Role::Operator, Some(&audit))
            .await?;
        self.mutate(&caller, audit, async {
            Ok(self.core.deploy.rotate(&name).await?)
        })
        .await?;
        Ok(Response::new(self.campaign_status(&name)?))
    }

    async fn list_events(
        &self,
        request: Request<pb::ListEventsRequest>,
    ) -> Result<Response<pb::ListEventsResponse>, Status> {
        self.authorize(&request, Role::Viewer, None).await?;
        let req = request.into_inner();
        let filter = event_filter(req.filter)?;
        let limit = match req.limit {
            0 => DEFAULT_EVENT_LIMIT,
            n => usize::try_from(n)
                .unwrap_or(MAX_EVENT_LIMIT)
                .min(MAX_EVENT_LIMIT),
        };
        let before = (req.before_cursor > 0).then_some(req.before_cursor);
        let stored = self
            .core
            .events
            .query(&filter, before, limit)
            .map_err(|e| status(e.into()))?;
        let full = stored.len() == limit;
        // Newest first until the reply would pass half the message limit.
        let budget = self.core.config.max_message_bytes / 2;
        let mut used = 0;
        let mut cut = false;
        let mut events = Vec::new();
        for e in stored.iter().rev() {
            let event = event_pb(e);
            used += prost::Message::encoded_len(&event) + 8;
            if used > budget && !events.is_empty() {
                cut = true;
                break;
            }
            events.push(event);
        }
        events.reverse();
        let next_before_cursor = if full || cut {
            events.first().map_or(0, |e| e.cursor)
        } else {
            0
        };
        Ok(Response::new(pb::ListEventsResponse {
            events,
            next_before_cursor,
        }))
    }

    type WatchEventsStream = WatchStream;

    async fn watch_events(
        &self,
        request: Request<pb::WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        self.authorize(&request, Role::Viewer, None).await?;
        let req = request.into_inner();
        let filter = event_filter(req.filter)?;
        let after = (req.after_cursor > 0).then_some(req.after_cursor);
        let mut watch = self.core.events.watch(filter, after);
        let core = self.core.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let item = match watch.next(&core.events).await {
                    Ok(Some(WatchItem::Event(e))) => pb::WatchEventsResponse {
                        event: Some(event_pb(&e)),
                        ..Default::default()
                    },
                    Ok(Some(WatchItem::Other(e))) => pb::WatchEventsResponse {
                        event: Some(event_pb(&e)),
                        from_other_controller: true,
                        ..Default::default()
                    },
                    Ok(Some(WatchItem::Gap(n))) => pb::WatchEventsResponse {
                        missed: n,
                        ..Default::default()
                    },
                    Ok(Some(WatchItem::MissedFromOthers(n))) => pb::WatchEventsResponse {
                        missed_from_others: n,
                        ..Default::default()
                    },
                    Ok(None) => {
                        let _ = tx
                            .send(Err(Status::unavailable("the controller is shutting down")))
                            .await;
                        return;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(status(e.into()))).await;
                        return;
                    }
                };
                if tx.send(Ok(item)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn get_metrics(
        &self,
        request: Request<pb::GetMetricsRequest>,
    ) -> Result<Response<pb::GetMetricsResponse>, Status> {
        self.authorize(&request, Role::Viewer, None).await?;
        Ok(Response::new(pb::GetMetricsResponse {
            text: self.core.render_metrics(),
        }))
    }

    async fn list_allow_rules(
        &self,
        request: Request<pb::ListAllowRulesRequest>,
    ) -> Result<Response<pb::ListAllowRulesResponse>, Status> {
        self.authorize(&request, Role::Viewer, None).await?;
        let rules = self
            .core
            .deploy
            .allow_rules()
            .into_iter()
            .map(|r| {
                let matching = self
                    .core
                    .fleet
                    .list(&r.selector)
                    .iter()
                    .filter(|a| a.record.revoked.is_none())
                    .count();
                pb::AllowRule {
                    selector: r.selector.to_map(),
                    name: r.name,
                    description: r.description,
                    process: r.process,
                    user: r.user,
                    template: r.template,
                    matching_agents: count(matching),
                }
            })
            .collect();
        Ok(Response::new(pb::ListAllowRulesResponse { rules }))
    }

    async fn delete_allow_rule(
        &self,
        request: Request<pb::DeleteAllowRuleRequest>,
    ) -> Result<Response<pb::DeleteAllowRuleResponse>, Status> {
        let name = request.get_ref().name.clone();
        let audit = entry("allowrule.delete", format!("allowrule/{name}"), "");
        let (caller, _, _) = self
            .authorize(&request, Role::Operator, Some(&audit))
            .await?;
        self.mutate(&caller, audit, async {
            Ok(self.core.deploy.delete_allow_rule(&name).await?)
        })
        .await?;
        Ok(Response::new(pb::DeleteAllowRuleResponse {}))
    }

    async fn list_incidents(
        &self,
        request: Request<pb::ListIncidentsRequest>,
    ) -> Result<Response<pb::ListIncidentsResponse>, Status> {
        self.authorize(&request, Role::Viewer, None).await?;
        let r = request.into_inner();
        let filter = incident_filter(&r.status, &r.min_severity, r.since_ms, r.include_drills)?;
        let limit = if r.limit == 0 { 1000 } else { r.limit as usize };
        let incidents = self
            .core
            .events
            .incidents
            .list(&filter, limit)
            .iter()
            .map(incident_pb)
            .collect();
        Ok(Response::new(pb::ListIncidentsResponse { incidents }))
    }

    async fn get_incident(
        &self,
        request: Request<pb::GetIncidentRequest>,
    ) -> Result<Response<pb::Incident>, Status> {
        self.authorize(&request, Role::Viewer, None).await?;
        let id = &request.get_ref().id;
        self.core
            .events
            .incidents
            .get(id)
            .map(|i| Response::new(incident_pb(&i)))
            .ok_or_else(|| Status::not_found(format!("no incident {id}")))
    }

    async fn ack_incident(
        &self,
        request: Request<pb::AckIncidentRequest>,
    ) -> Result<Response<pb::Incident>, Status> {
        let id = request.get_ref().id.clone();
        let audit = entry("incident.ack", format!("incident/{id}"), "");
        let (caller, name, _) = self
            .authorize(&request, Role::Operator, Some(&audit))
            .await?;
        let result = self
            .core
            .acknowledge_incident(&id, &format!("admin/{name}"))
            .await;
        self.core
            .audit(
                &caller,
                audit,
                &result
                    .as_ref()
                    .map_or_else(ToString::to_string, |_| "ok".into()),
            )
            .await
            .map_err(|e| status(e.into()))?;
        result
            .map(|i| Response::new(incident_pb(&i)))
            .map_err(|e| status(e.into()))
    }

    async fn resolve_incident(
        &self,
        request: Request<pb::ResolveIncidentRequest>,
    ) -> Result<Response<pb::Incident>, Status> {
        let r = request.get_ref().clone();
        let audit = entry(
            "incident.resolve",
            format!("incident/{}", r.id),
            r.note.clone(),
        );
        let (caller, name, _) = self
            .authorize(&request, Role::Operator, Some(&audit))
            .await?;
        let result = self
            .core
            .resolve_incident(&r.id, &format!("admin/{name}"), &r.note)
            .await;
        self.core
            .audit(
                &caller,
                audit,
                &result
                    .as_ref()
                    .map_or_else(ToString::to_string, |_| "ok".into()),
            )
            .await
            .map_err(|e| status(e.into()))?;
        result
            .map(|i| Response::new(incident_pb(&i)))
            .map_err(|e| status(e.into()))
    }

    type WatchIncidentsStream = IncidentStream;

    async fn watch_incidents(
        &self,
        request: Request<pb::WatchIncidentsRequest>,
    ) -> Result<Response<Self::WatchIncidentsStream>, Status> {
        self.authorize(&request, Role::Viewer, None).await?;
        let drills = request.get_ref().include_drills;
        let mut live = self.core.events.incidents.subscribe();
        let mut closing = self.core.events.closing();
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            let mut missed = 0u64;
            loop {
                let received = tokio::select! {
                    () = crate::stopped(&mut closing) => {
                        let _ = tx
                            .send(Err(Status::unavailable("the controller is shutting down")))
                            .await;
                        return;
                    }
                    received = live.recv() => received,
                };
                let incident = match received {
                    Ok(i) => i,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        missed += n;
                        continue;
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                };
                if incident.drill && !drills {
                    continue;
                }
                let item = pb::WatchIncidentsResponse {
                    incident: Some(incident_pb(&incident)),
                    missed: std::mem::take(&mut missed),
                };
                if tx.send(Ok(item)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn export_incidents(
        &self,
        request: Request<pb::ExportIncidentsRequest>,
    ) -> Result<Response<pb::ExportIncidentsResponse>, Status> {
        self.authorize(&request, Role::Viewer, None).await?;
        let r = request.into_inner();
        if !r.format.is_empty() && r.format != "stix" {
            return Err(Status::invalid_argument(format!(
                "format {:?}: only stix is supported",
                r.format
            )));
        }
        let filter = incident_filter("", "", r.since_ms, r.include_drills)?;
        let incidents = self.core.events.incidents.list(&filter, usize::MAX);
        let producer = format!("Ruse ({})", self.core.ca.trust_domain());
        let sharing = if r.include_internal {
            crate::stix::Sharing::Internal
        } else {
            crate::stix::Sharing::Redacted
        };
        let bundle = crate::stix::bundle(&incidents, &producer, UnixMs::now(), sharing);
        Ok(Response::new(pb::ExportIncidentsResponse {
            content: serde_json::to_string_pretty(&bundle)
                .map_err(|e| Status::internal(e.to_string()))?,
            incidents: count(incidents.len()),
        }))
    }

    async fn list_suppressions(
        &self,
        request: Request<pb::ListSuppressionsRequest>,
    ) -> Result<Response<pb::ListSuppressionsResponse>, Status> {
        self.authorize(&request, Role::Viewer, None).await?;
        let counts = self.core.events.incidents.suppressed_counts();
        let suppressions = self
            .core
            .deploy
            .suppressions()
            .into_iter()
            .map(|r| pb::Suppression {
                suppressed: counts.get(&r.name).copied().unwrap_or(0),
                selector: r.selector.to_map(),
                name: r.name,
                description: r.description,
                source: r.source.map(|c| c.to_string()).unwrap_or_default(),
                process: r.process,
                template: r.template,
                expires_ms: r.expires.map_or(0, |t| t.0),
            })
            .collect();
        Ok(Response::new(pb::ListSuppressionsResponse { suppressions }))
    }

    async fn delete_suppression(
        &self,
        request: Request<pb::DeleteSuppressionRequest>,
    ) -> Result<Response<pb::DeleteSuppressionResponse>, Status> {
        let name = request.get_ref().name.clone();
        let audit = entry("suppression.delete", format!("suppression/{name}"), "");
        let (caller, _, _) = self
            .authorize(&request, Role::Operator, Some(&audit))
            .await?;
        self.mutate(&caller, audit, async {
            Ok(self.core.deploy.delete_suppression(&name).await?)
        })
        .await?;
        Ok(Response::new(pb::DeleteSuppressionResponse {}))
    }

    type DrillStream = DrillStream;

    async fn drill(
        &self,
        request: Request<pb::DrillRequest>,
    ) -> Result<Response<Self::DrillStream>, Status> {
        let r = request.get_ref().clone();
        let audit = entry(
            "drill.run",
            format!("agent/{}", r.agent_id),
            r.lure_id.clone(),
        );
        let (caller, _, _) = self
            .authorize(&request, Role::Operator, Some(&audit))
            .await?;
        let agent: AgentId = parse(&r.agent_id)?;
        let lure = crate::drill_run::pick_lure(&self.core, &agent, &r.lure_id).map_err(status)?;
        self.core
            .audit(&caller, audit, "ok")
            .await
            .map_err(|e| status(e.into()))?;
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(crate::drill_run::run(self.core.clone(), agent, lure, tx));
        let steps = tokio_stream::StreamExt::map(
            tokio_stream::wrappers::ReceiverStream::new(rx),
            |s: crate::drill_run::Step| {
                Ok(pb::DrillStep {
                    step: s.step,
                    ok: s.ok,
                    elapsed_ms: s.elapsed_ms,
                    detail: s.detail,
                    done: s.done,
                    passed: s.passed,
                    incident_id: s.incident_id,
                })
            },
        );
        Ok(Response::new(Box::pin(steps)))
    }
}

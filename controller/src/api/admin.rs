//! `ruse.admin.v1.AdminService`, used by `rusectl`.
//!
//! Every call is authorised by the caller's role (from the admin identity
//! in its certificate); every mutating call, allowed or refused, is written
//! to the audit log before the reply.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tonic::{Request, Response, Status};

use ruse_proto::admin::v1 as pb;
use ruse_proto::admin::v1::admin_service_server::AdminService;
use ruse_proto::types::{AdminName, AgentId, Identity, Labels, Role, TokenId, UnixMs};

use super::{caller, status};
use crate::core::{AuditEntry, Caller, Core, OpError};
use crate::deploy::{CampaignStatus, LureView, RolloutAction, RolloutState};
use crate::events::{EventFilter, StoredEvent};
use crate::fleet::AgentView;
use crate::resources::Decoy;
use crate::store::TokenRecord;

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
}

fn entry(action: &'static str, target: impl Into<String>, detail: impl Into<String>) -> AuditEntry {
    AuditEntry {
        action,
        target: target.into(),
        detail: detail.into(),
    }
}

fn optional_ms(ms: u64) -> Option<Duration> {
    (ms > 0).then(|| Duration::from_millis(ms))
}

fn labels(map: std::collections::HashMap<String, String>) -> Result<Labels, Status> {
    Labels::try_from(map).map_err(|e| Status::invalid_argument(e.to_string()))
}

fn parse<T: std::str::FromStr>(s: &str) -> Result<T, Status>
where
    T::Err: std::fmt::Display,
{
    s.parse()
        .map_err(|e: T::Err| Status::invalid_argument(e.to_string()))
}

fn token_pb(t: &TokenRecord) -> pb::Token {
    pb::Token {
        id: t.id.to_string(),
        created_ms: t.created_at.0,
        expires_ms: t.expires_at.0,
        max_uses: t.max_uses,
        uses: t.uses,
        labels: t.labels.to_map(),
        created_by: t.created_by.clone(),
        description: t.description.clone(),
    }
}

fn agent_pb(view: AgentView) -> pb::Agent {
    let r = view.record;
    let labels = r.labels().to_map();
    let (revoked_ms, revoked_by, revoke_reason) = match r.revoked {
        Some(rev) => (rev.at.0, rev.by, rev.reason),
        None => (0, String::new(), String::new()),
    };
    pb::Agent {
        id: r.id.to_string(),
        state: pb::AgentState::from(view.state).into(),
        hostname: r.facts.hostname,
        os: r.facts.os,
        kernel: r.facts.kernel,
        arch: r.facts.arch,
        addresses: r.facts.addresses,
        agent_version: r.facts.agent_version,
        labels,
        enrolled_ms: r.enrolled_at.0,
        last_seen_ms: r.last_seen.0,
        cert_not_after_ms: r.cert_not_after.0,
        peer: view.peer.map(|p| p.to_string()).unwrap_or(r.last_peer),
        problems: view.health.problems,
        enrolled_with_token: r.enrolled_with.to_string(),
        revoked_ms,
        revoked_by,
        revoke_reason,
    }
}

fn campaign_pb(status: CampaignStatus) -> pb::Campaign {
    let r = status.record;
    let spec = &r.target.spec;
    let reason = match &r.rollout {
        RolloutState::Paused { reason, .. } => reason.clone(),
        RolloutState::Aborted { by } => format!("aborted by {by}"),
        _ => String::new(),
    };
    pb::Campaign {
        name: spec.name.clone(),
        description: spec.description.clone(),
        selector: spec.selector.to_map(),
        lures: spec
            .lures
            .iter()
            .map(|l| pb::CampaignLure {
                name: l.key.clone(),
                template: l.template.to_string(),
                decoy: l.decoy.clone().unwrap_or_default(),
                path: l.path.clone().unwrap_or_default(),
                params: l.params.clone().into_iter().collect(),
            })
            .collect(),
        waves: spec.waves.iter().map(|&w| u32::from(w)).collect(),
        max_failure_ratio: spec.max_failure_ratio,
        rotate_every_ms: spec
            .rotate_every
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        generation: r.target.number,
        epoch: r.target.epoch,
        rollout_state: r.rollout.name().to_owned(),
        rollout_reason: reason,
        wave: u32::try_from(r.wave + 1).unwrap_or(u32::MAX),
        wave_status: status
            .waves
            .into_iter()
            .map(|w| pb::WaveStatus {
                percent: u32::from(w.percent),
                agents: count(w.agents),
                acked: count(w.acked),
                failed: count(w.failed),
                pending: count(w.pending),
                offline: count(w.offline),
                released: w.released,
                errors: w.errors,
            })
            .collect(),
        matching_agents: count(status.matching),
        created_ms: r.created.0,
        updated_ms: r.updated.0,
        last_rotated_ms: r.last_rotated.0,
    }
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn decoy_pb(d: Decoy, matching: usize) -> pb::Decoy {
    pb::Decoy {
        name: d.name,
        description: d.description,
        selector: d.selector.to_map(),
        address: d.address,
        services: d
            .services
            .into_iter()
            .map(|s| pb::DecoyService {
                protocol: s.protocol,
                port: u32::from(s.port),
            })
            .collect(),
        matching_agents: count(matching),
    }
}

fn lure_pb(v: LureView) -> pb::Lure {
    pb::Lure {
        identifiers: v.lure.material.summary(),
        id: v.lure.id,
        agent_id: v.lure.agent.to_string(),
        campaign: v.lure.campaign,
        slot: v.lure.slot,
        template: v.lure.template.to_string(),
        epoch: v.lure.epoch,
        revision: v.revision,
        state: v.state.to_owned(),
        error: v.error,
        created_ms: v.lure.created.0,
        retired_ms: v.lure.retired.map_or(0, |t| t.0),
    }
}

fn event_pb(e: &StoredEvent) -> pb::LureEvent {
    pb::LureEvent {
        id: e.id.clone(),
        agent_id: e.agent.to_string(),
        lure_id: e.lure_id.clone(),
        lure_revision: e.lure_revision,
        template: e.template.clone(),
        campaign: e.campaign.clone(),
        kind: e.kind.clone(),
        path: e.path.clone(),
        process: e.process.as_ref().map(|p| pb::EventProcess {
            pid: p.pid,
            exe: p.exe.clone(),
            uid: p.uid,
            user: p.user.clone(),
            cmdline: p.cmdline.clone(),
        }),
        operations: e.operations.clone(),
        attribution: e.attribution.clone(),
        allowed: e.allowed,
        allow_rule: e.allow_rule.clone(),
        dropped_before: e.dropped_before,
        detail: e.detail.clone(),
        observed_ms: e.observed.0,
        received_ms: e.received.0,
        peer: e.peer.clone(),
        seq: e.seq,
        decoy: e.decoy.as_ref().map(|d| pb::DecoyContact {
            name: d.name.clone(),
            protocol: d.protocol.clone(),
            port: u32::from(d.port),
            source_ip: d.source_ip.clone(),
            source_port: u32::from(d.source_port),
        }),
        credential: e.credential.as_ref().map(|c| pb::PresentedCredential {
            username: c.username.clone(),
            password: c.password.clone(),
            key_fingerprint: c.key_fingerprint.clone(),
            key_type: c.key_type.clone(),
            ae_title: c.ae_title.clone(),
            called_ae_title: c.called_ae_title.clone(),
            token: c.token.clone(),
            domain: c.domain.clone(),
            workstation: c.workstation.clone(),
            client: c.client.clone(),
            host: c.host.clone(),
            application: c.application.clone(),
        }),
        origin_agent_id: e
            .origin_agent
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
        matched_on: e.matched_on.clone(),
    }
}

fn event_filter(f: Option<pb::EventFilter>) -> Result<EventFilter, Status> {
    let f = f.unwrap_or_default();
    Ok(EventFilter {
        agent: if f.agent_id.is_empty() {
            None
        } else {
            Some(parse(&f.agent_id)?)
        },
        lure: (!f.lure_id.is_empty()).then_some(f.lure_id),
        kind: (!f.kind.is_empty()).then_some(f.kind),
        since: (f.since_ms > 0).then_some(UnixMs(f.since_ms)),
    })
}

/// Events returned when the request sets no limit.
const DEFAULT_EVENT_LIMIT: usize = 100;
const MAX_EVENT_LIMIT: usize = 100_000;

type WatchStream = std::pin::Pin<
    Box<dyn tokio_stream::Stream<Item = Result<pb::WatchEventsResponse, Status>> + Send>,
>;

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
        let selector = labels(request.into_inner().selector)?;
        let agents = self
            .core
            .fleet
            .list(&selector)
            .into_iter()
            .map(agent_pb)
            .collect();
        Ok(Response::new(pb::ListAgentsResponse { agents }))
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
        let audit = entry("agent.revoke", format!("agent/{}", req.id), reason.clone());
        let (caller, _, _) = self
            .authorize(&request, Role::Operator, Some(&audit))
            .await?;
        let id = request.get_ref().id.parse::<AgentId>();
        let record = self
            .mutate(&caller, audit, async {
                let id = id.map_err(|e| OpError::Invalid(e.to_string()))?;
                self.core.revoke_agent(&caller, &id, &reason)
            })
            .await?;
        tracing::info!(agent = %record.id, by = %caller.actor(), "agent revoked");
        let view = self
            .core
            .fleet
            .get(&record.id)
            .ok_or_else(|| status(OpError::NotFound(format!("agent {}", record.id))))?;
        Ok(Response::new(agent_pb(view)))
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
        let req = request.into_inner();
        let limit = match req.limit {
            0 => DEFAULT_AUDIT_LIMIT,
            n => usize::try_from(n)
                .unwrap_or(MAX_AUDIT_LIMIT)
                .min(MAX_AUDIT_LIMIT),
        };
        let records = self
            .core
            .store
            .audit(UnixMs(req.since_ms), limit)
            .map_err(|e| status(e.into()))?
            .into_iter()
            .map(|r| pb::AuditRecord {
                seq: r.seq,
                at_ms: r.at.0,
                actor: r.actor,
                peer: r.peer,
                action: r.action,
                target: r.target,
                result: r.result,
                detail: r.detail,
            })
            .collect();
        Ok(Response::new(pb::ListAuditResponse { records }))
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
        let view = self
            .core
            .fleet
            .get(&record.id)
            .ok_or_else(|| status(OpError::NotFound(format!("agent {}", record.id))))?;
        Ok(Response::new(agent_pb(view)))
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
            let docs = crate::resources::parse(&content)?;
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
        let events = self
            .core
            .events
            .query(&filter, limit)
            .map_err(|e| status(e.into()))?
            .iter()
            .map(event_pb)
            .collect();
        Ok(Response::new(pb::ListEventsResponse { events }))
    }

    type WatchEventsStream = WatchStream;

    async fn watch_events(
        &self,
        request: Request<pb::WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        self.authorize(&request, Role::Viewer, None).await?;
        let filter = event_filter(request.into_inner().filter)?;
        let mut live = self.core.events.subscribe();
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            let mut missed = 0u64;
            loop {
                let event = match live.recv().await {
                    Ok(e) => e,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        missed += n;
                        continue;
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                };
                if !filter.matches(&event) {
                    continue;
                }
                let item = pb::WatchEventsResponse {
                    event: Some(event_pb(&event)),
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
}

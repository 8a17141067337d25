//! `ruse.admin.v1.AdminService`, used by `rusectl`.
//!
//! Every call is authorised by the caller's role (from the admin identity
//! in its certificate); every mutating call, allowed or refused, is written
//! to the audit log before the reply.

use std::sync::Arc;
use std::time::Duration;

use tonic::{Request, Response, Status};

use ruse_proto::admin::v1 as pb;
use ruse_proto::admin::v1::admin_service_server::AdminService;
use ruse_proto::types::{AdminName, AgentId, Identity, Labels, Role, TokenId, UnixMs};

use super::{caller, status};
use crate::core::{AuditEntry, Caller, Core, OpError};
use crate::fleet::AgentView;
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
        op: impl FnOnce() -> Result<T, OpError>,
    ) -> Result<T, Status> {
        let outcome = op();
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
        let token = self.mutate(&caller, audit, || token).await?;
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
        self.mutate(&caller, audit, || {
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
            .mutate(&caller, audit, || {
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
            .mutate(&caller, audit, || {
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
}

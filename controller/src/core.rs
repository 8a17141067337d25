//! The controller's state and the operations on it, independent of gRPC.
//!
//! Every operation that changes state writes to the store, appends its
//! audit record, and waits for one group commit before it returns, so
//! **nothing is acknowledged before it is durable**.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex as AsyncMutex;

use ruse_pki::{CertificateAuthority, IssuedCert, PkiError};
use ruse_proto::convert::HostFacts;
use ruse_proto::types::{AdminName, AgentId, Identity, Labels, Role, TokenId, UnixMs};

use crate::config::ControllerConfig;
use crate::deploy::{DeployError, Deployer};
use crate::drills::Drills;
use crate::events::{EventDeps, Events};
use crate::fleet::Fleet;
use crate::incidents::{IncidentError, Incidents, Notice};
use crate::metrics::Metrics;
use crate::model::{AdminRecord, AgentRecord, AuditRecord, Incident, TokenRecord};
use crate::outputs::Outputs;
use crate::ratelimit::FailureLimiter;
use crate::refusals::{Refusal, Refusals};
use crate::resources::ManifestError;
use crate::store::{Committer, Store, StoreError};
use crate::tokens::{self, NewToken, TokenSpec, Unusable};

/// Who is calling, as established by the TLS handshake.
#[derive(Debug, Clone)]
pub struct Caller {
    pub identity: Option<Identity>,
    pub peer: SocketAddr,
}

impl Caller {
    /// The actor recorded in the audit log.
    pub fn actor(&self) -> String {
        match &self.identity {
            Some(id) => id.to_string(),
            None => "anonymous".to_owned(),
        }
    }
}

/// Why an operation failed, in domain terms. The API layer maps these to
/// gRPC codes in one place.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    #[error("invalid bootstrap token")]
    TokenInvalid,
    #[error("bootstrap token {0} has expired")]
    TokenExpired(TokenId),
    #[error("bootstrap token {0} has been used its maximum number of times")]
    TokenExhausted(TokenId),
    #[error("too many failed enrollment attempts from this address; retry in {}s", .0.as_secs().max(1))]
    RateLimited(Duration),
    #[error("agent {0} is revoked")]
    AgentRevoked(AgentId),
    #[error("agent {0} is not enrolled with this controller")]
    AgentUnknown(AgentId),
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Manifest(#[from] ManifestError),
    #[error("{0}")]
    Conflict(String),
    #[error("certificate: {0}")]
    Pki(#[from] PkiError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<DeployError> for OpError {
    fn from(e: DeployError) -> Self {
        match e {
            DeployError::Manifest(m) => OpError::Manifest(m),
            DeployError::NotFound(what) => OpError::NotFound(what),
            DeployError::Conflict(why) => OpError::Conflict(why),
            DeployError::Store(s) => OpError::Store(s),
        }
    }
}

impl From<IncidentError> for OpError {
    fn from(e: IncidentError) -> Self {
        match e {
            IncidentError::NotFound(id) => OpError::NotFound(format!("incident {id}")),
            IncidentError::Resolved(_) => OpError::Conflict(e.to_string()),
            IncidentError::Store(s) => OpError::Store(s),
        }
    }
}

/// A successful enrollment.
#[derive(Debug)]
pub struct Enrolled {
    pub record: AgentRecord,
    pub cert: IssuedCert,
}

/// An audit entry before the store numbers it.
#[derive(Debug, Clone)]
pub struct AuditEntry {
    pub action: &'static str,
    pub target: String,
    pub detail: String,
}

/// A console sign-in link.
#[derive(Debug, Clone)]
pub struct ConsoleLink {
    pub url: String,
    pub expires: UnixMs,
}

/// Shared controller state.
#[derive(Debug)]
pub struct Core {
    pub config: ControllerConfig,
    pub ca: CertificateAuthority,
    pub store: Arc<dyn Store>,
    pub committer: Committer,
    pub fleet: Arc<Fleet>,
    pub deploy: Arc<Deployer>,
    pub events: Events,
    pub metrics: Arc<Metrics>,
    /// Admin calls refused before the API, not yet audited.
    pub refusals: Arc<Refusals>,
    /// Console sign-in links and browser sessions.
    pub console: crate::sessions::Sessions,
    /// The console's bound port, 0 while it is off.
    pub console_port: std::sync::atomic::AtomicU16,
    /// Manifests parsed at once (each on a blocking thread).
    manifest_parses: tokio::sync::Semaphore,
    /// Serialises token use so `max_uses` holds under concurrency.
    token_lock: AsyncMutex<()>,
    enroll_failures: FailureLimiter,
}

impl Core {
    /// Resolves an incident and tells the outputs it is closed.
    pub async fn resolve_incident(
        &self,
        id: &str,
        by: &str,
        note: &str,
    ) -> Result<Incident, IncidentError> {
        let resolved = self.events.incidents.resolve(id, by, note).await?;
        self.tell_outputs(&resolved, Notice::Resolved).await;
        Ok(resolved)
    }

    /// Acknowledges an incident and tells the outputs (a page is
    /// acknowledged where it was raised).
    pub async fn acknowledge_incident(
        &self,
        id: &str,
        by: &str,
    ) -> Result<Incident, IncidentError> {
        let acked = self.events.incidents.acknowledge(id, by).await?;
        self.tell_outputs(&acked, Notice::Acknowledged).await;
        Ok(acked)
    }

    /// Queues `notice` of `incident` for the outputs, durably, and wakes
    /// them. The change itself is already committed: a failure here is
    /// logged, not returned.
    async fn tell_outputs(&self, incident: &Incident, notice: Notice) {
        let queued = self
            .events
            .outputs
            .enqueue(&[(incident.id.clone(), notice)], &self.events.incidents);
        let durable = match queued {
            Ok(_) => self.committer.durable().await,
            Err(e) => Err(e),
        };
        if let Err(e) = durable {
            tracing::error!(incident = %incident.id, notice = notice.as_str(), error = %e, "cannot queue the notice for outputs");
        }
        self.events.outputs.wake();
    }

    pub fn new(
        config: ControllerConfig,
        ca: CertificateAuthority,
        store: Arc<dyn Store>,
        committer: Committer,
        outputs: Outputs,
    ) -> Result<Self, StoreError> {
        let fleet = Arc::new(Fleet::new(store.agents()?, config.offline_after));
        let deploy = Arc::new(Deployer::load(
            store.clone(),
            committer.clone(),
            fleet.clone(),
            config.max_message_bytes,
            config.rollout_unreachable_after,
        )?);
        let enroll_failures =
            FailureLimiter::new(config.enroll_failures_per_minute, Duration::from_secs(60));
        let metrics = Arc::new(Metrics::default());
        let incidents = Arc::new(Incidents::load(
            store.clone(),
            committer.clone(),
            config.incident_window,
        )?);
        let outputs = Arc::new(outputs);
        let events = Events::new(EventDeps {
            store: store.clone(),
            committer: committer.clone(),
            deploy: deploy.clone(),
            fleet: fleet.clone(),
            metrics: metrics.clone(),
            incidents,
            outputs,
            drills: Arc::new(Drills::default()),
            limits: crate::events::EventLimits::of(&config),
        });
        Ok(Core {
            config,
            ca,
            store,
            committer,
            fleet,
            deploy,
            events,
            metrics,
            refusals: Arc::default(),
            console: Default::default(),
            console_port: Default::default(),
            manifest_parses: tokio::sync::Semaphore::new(2),
            token_lock: AsyncMutex::new(()),
            enroll_failures,
        })
    }

    /// Appends an audit record for `caller` with `result` and waits until it
    /// (and every write made before it) is durable.
    pub async fn audit(
        &self,
        caller: &Caller,
        entry: AuditEntry,
        result: &str,
    ) -> Result<(), StoreError> {
        self.store.append_audit(AuditRecord {
            seq: 0,
            at: UnixMs::now(),
            actor: bounded(caller.actor()),
            peer: caller.peer.to_string(),
            action: entry.action.to_owned(),
            target: bounded(entry.target),
            result: bounded(result.to_owned()),
            detail: bounded(entry.detail),
        })?;
        self.committer.durable().await
    }

    /// Writes one audit record per source whose admin calls were refused
    /// before the API since the last summary (see [`crate::refusals`]).
    pub async fn audit_refusals(&self) -> Result<(), StoreError> {
        let tallies = self.refusals.drain();
        if tallies.is_empty() {
            return Ok(());
        }
        for t in tallies {
            tracing::warn!(source = %t.source, calls = t.count, actor = t.refusal.actor(), "admin calls refused");
            self.store.append_audit(AuditRecord {
                seq: 0,
                at: t.last,
                actor: t.refusal.actor().to_owned(),
                peer: t.source.to_string(),
                action: "refused-calls".to_owned(),
                target: String::new(),
                result: format!("refused: {}", t.refusal.message()),
                detail: t.detail(),
            })?;
        }
        self.committer.durable().await
    }

    /// Parses manifests away from the async threads, two at a time and
    /// within [`MANIFEST_PARSE_TIMEOUT`], so that a hostile file delays
    /// nothing but its own apply ([`crate::resources::check_shape`] has
    /// already bounded what the parser sees).
    pub async fn parse_manifests(
        &self,
        content: String,
    ) -> Result<Vec<crate::resources::Parsed>, OpError> {
        crate::resources::check_shape(&content)?;
        let _permit = self
            .manifest_parses
            .acquire()
            .await
            .map_err(|_| OpError::Invalid("the controller is shutting down".into()))?;
        let parsing = tokio::task::spawn_blocking(move || crate::resources::parse(&content));
        match tokio::time::timeout(MANIFEST_PARSE_TIMEOUT, parsing).await {
            Ok(Ok(parsed)) => Ok(parsed?),
            Ok(Err(e)) => Err(OpError::Invalid(format!("manifest parser failed: {e}"))),
            Err(_) => Err(OpError::Invalid(format!(
                "the manifest took longer than {}s to parse",
                MANIFEST_PARSE_TIMEOUT.as_secs()
            ))),
        }
    }

    /// The role of an admin identity, if it is a known admin.
    /// A one-time console sign-in link for `admin`, valid for
    /// [`crate::sessions::LINK_TTL`].
    pub fn console_link(&self, admin: &AdminName) -> Result<ConsoleLink, OpError> {
        self.console_link_for(admin, crate::sessions::LINK_TTL)
    }

    /// As [`Self::console_link`], valid for `ttl`.
    pub fn console_link_for(
        &self,
        admin: &AdminName,
        ttl: Duration,
    ) -> Result<ConsoleLink, OpError> {
        let Some(port) = self.console_port() else {
            return Err(OpError::Invalid(
                "the console is off on this controller: set console_listen in its configuration"
                    .into(),
            ));
        };
        let token = self.console.mint(admin.clone(), ttl);
        Ok(ConsoleLink {
            url: format!(
                "{}/signin?t={token}",
                crate::sessions::base_url(&self.config.server_names, port)
            ),
            expires: UnixMs::now().saturating_add(ttl),
        })
    }

    /// The console's port: where it listens (set once bound).
    pub fn console_port(&self) -> Option<u16> {
        match self.console_port.load(std::sync::atomic::Ordering::Relaxed) {
            0 => None,
            p => Some(p),
        }
    }

    pub fn admin_role(&self, name: &AdminName) -> Result<Option<Role>, StoreError> {
        Ok(self.store.admin(name)?.map(|a| a.role))
    }

    // ----- enrollment -----

    /// Creates `bootstrap_admin` if the store has no admin yet (audited).
    pub async fn bootstrap_admin(&self) -> Result<(), StoreError> {
        let Some(name) = &self.config.bootstrap_admin else {
            return Ok(());
        };
        if !self.store.admins()?.is_empty() {
            return Ok(());
        }
        let Ok(name) = name.parse::<AdminName>() else {
            return Ok(());
        };
        self.store.put_admin(&AdminRecord {
            name: name.clone(),
            role: Role::Admin,
            issued_at: UnixMs::now(),
            issued_by: "bootstrap_admin configuration".into(),
        })?;
        let caller = Caller {
            identity: None,
            peer: SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        self.audit(
            &caller,
            AuditEntry {
                action: "admin.bootstrap",
                target: format!("admin/{name}"),
                detail: "no admin existed; created from bootstrap_admin".into(),
            },
            "ok",
        )
        .await?;
        tracing::warn!(admin = %name, "created the bootstrap admin (role admin)");
        Ok(())
    }

    /// Exchanges a bootstrap token and CSR for an agent identity.
    pub async fn enroll(
        &self,
        caller: &Caller,
        token: &str,
        csr_der: &[u8],
        facts: HostFacts,
    ) -> Result<Enrolled, OpError> {
        // A valid token enrolls whatever others at the same address did
        // (a NAT'd site shares one); the limit only decides how failures
        // are answered and recorded.
        let ip = caller.peer.ip();
        let result = self.try_enroll(token, csr_der, facts).await;
        match &result {
            Ok(enrolled) => {
                // One commit covers the agent and this record, and makes the
                // token use (committed on its own) durable with them.
                self.audit(
                    caller,
                    AuditEntry {
                        action: "agent.enroll",
                        target: format!("agent/{}", enrolled.record.id),
                        detail: format!(
                            "token={} hostname={} labels={}",
                            enrolled.record.enrolled_with,
                            enrolled.record.facts.hostname,
                            enrolled.record.labels()
                        ),
                    },
                    "ok",
                )
                .await?;
                self.fleet.insert(enrolled.record.clone());
                self.deploy.request_recompute();
            }
            Err(OpError::Store(_)) => {}
            Err(err) => {
                if let Err(retry_after) = self.enroll_failures.check(ip) {
                    // Past the limit: counted, summarised, not audited one
                    // by one.
                    self.refusals.record(ip, Refusal::Enrollment, "Enroll");
                    return Err(OpError::RateLimited(retry_after));
                }
                let limited = self.enroll_failures.fail(ip);
                let detail = if limited {
                    "further failures from this address are refused for a minute"
                } else {
                    ""
                };
                tracing::warn!(peer = %caller.peer, error = %err, "enrollment refused");
                self.audit(
                    caller,
                    AuditEntry {
                        action: "agent.enroll",
                        target: tokens::parse(token)
                            .map(|(id, _)| format!("token/{id}"))
                            .unwrap_or_default(),
                        detail: detail.to_owned(),
                    },
                    &err.to_string(),
                )
                .await?;
            }
        }
        result
    }

    async fn try_enroll(
        &self,
        token: &str,
        csr_der: &[u8],
        facts: HostFacts,
    ) -> Result<Enrolled, OpError> {
        let (token_id, secret) = tokens::parse(token).ok_or(OpError::TokenInvalid)?;
        let now = UnixMs::now();
        let guard = self.token_lock.lock().await;
        let record = self.store.token(&token_id)?.ok_or(OpError::TokenInvalid)?;
        if !tokens::secret_matches(&record, secret) {
            return Err(OpError::TokenInvalid);
        }
        tokens::check_usable(&record, now).map_err(|e| match e {
            Unusable::Expired => OpError::TokenExpired(token_id.clone()),
            Unusable::Exhausted => OpError::TokenExhausted(token_id.clone()),
        })?;
        let id = AgentId::generate();
        let cert = self
            .ca
            .sign_client_csr(
                csr_der,
                &Identity::Agent(id.clone()),
                self.config.agent_cert_ttl,
            )
            .map_err(|e| OpError::Invalid(e.to_string()))?;
        // Counted where every controller sharing the store sees it: the
        // checks above read a copy another controller may be using too.
        let record = self
            .store
            .use_token(&token_id)?
            .ok_or_else(|| OpError::TokenExhausted(token_id.clone()))?;
        let agent = AgentRecord {
            id,
            facts,
            token_labels: record.labels.clone(),
            admin_labels: Labels::new(),
            removed_labels: Vec::new(),
            enrolled_at: now,
            enrolled_with: token_id,
            last_seen: now,
            last_peer: String::new(),
            cert_serial: cert.serial.clone(),
            cert_not_after: cert.not_after,
            revoked: None,
            session: None,
            applied: None,
            deleted: None,
        };
        self.store.put_agent(&agent)?;
        drop(guard);
        Ok(Enrolled {
            record: agent,
            cert,
        })
    }

    /// Issues a new certificate for an enrolled agent's new key.
    pub async fn renew(&self, id: &AgentId, csr_der: &[u8]) -> Result<IssuedCert, OpError> {
        let record = self
            .fleet
            .record(id)
            .ok_or_else(|| OpError::AgentUnknown(id.clone()))?;
        if record.revoked.is_some() {
            return Err(OpError::AgentRevoked(id.clone()));
        }
        let cert = self
            .ca
            .sign_client_csr(
                csr_der,
                &Identity::Agent(id.clone()),
                self.config.agent_cert_ttl,
            )
            .map_err(|e| OpError::Invalid(e.to_string()))?;
        let record = self
            .fleet
            .set_certificate(id, &cert.serial, cert.not_after)
            .ok_or_else(|| OpError::AgentUnknown(id.clone()))?;
        self.store.put_agent(&record)?;
        self.committer.durable().await?;
        Ok(cert)
    }

    // ----- admin operations: each writes, then the caller audits -----

    /// Creates a bootstrap token. The audit record does not contain the
    /// secret.
    pub fn create_token(
        &self,
        caller: &Caller,
        ttl: Option<Duration>,
        max_uses: Option<u32>,
        labels: Labels,
        description: String,
    ) -> Result<NewToken, OpError> {
        let spec = TokenSpec {
            ttl: ttl.unwrap_or(self.config.token_ttl),
            max_uses: max_uses.unwrap_or(self.config.token_uses),
            labels,
            created_by: caller.actor(),
            description,
        };
        if spec.max_uses == 0 {
            return Err(OpError::Invalid(
                "a token must allow at least one use".into(),
            ));
        }
        if spec.ttl < Duration::from_secs(1) {
            return Err(OpError::Invalid("a token must live at least 1s".into()));
        }
        let token = tokens::generate(spec, UnixMs::now());
        self.store.put_token(&token.record)?;
        Ok(token)
    }

    pub fn delete_token(&self, id: &TokenId) -> Result<(), OpError> {
        if self.store.delete_token(id)? {
            Ok(())
        } else {
            Err(OpError::NotFound(format!("token {id}")))
        }
    }

    pub fn tokens(&self) -> Result<Vec<TokenRecord>, OpError> {
        Ok(self.store.tokens()?)
    }

    /// Revokes an agent: denied at the next handshake, its live session
    /// closed now.
    pub fn revoke_agent(
        &self,
        caller: &Caller,
        id: &AgentId,
        reason: &str,
    ) -> Result<AgentRecord, OpError> {
        self.retire_agent(id, self.fleet.revoke(id, &caller.actor(), reason))
    }

    /// Removes a decommissioned agent from the inventory (revoking it).
    pub fn delete_agent(
        &self,
        caller: &Caller,
        id: &AgentId,
        reason: &str,
    ) -> Result<AgentRecord, OpError> {
        self.retire_agent(id, self.fleet.delete(id, &caller.actor(), reason))
    }

    /// Stores what revoking or deleting `id` made of it; its lures go.
    fn retire_agent(
        &self,
        id: &AgentId,
        record: Option<AgentRecord>,
    ) -> Result<AgentRecord, OpError> {
        let record = record.ok_or_else(|| OpError::NotFound(format!("agent {id}")))?;
        self.store.put_agent(&record)?;
        self.deploy.request_recompute();
        Ok(record)
    }

    /// Sets and removes admin labels on an agent; its lures follow.
    pub fn label_agent(
        &self,
        id: &AgentId,
        set: &Labels,
        remove: &[String],
    ) -> Result<AgentRecord, OpError> {
        let record = self
            .fleet
            .set_admin_labels(id, set, remove)
            .ok_or_else(|| OpError::NotFound(format!("agent {id}")))?;
        self.store.put_agent(&record)?;
        self.deploy.request_recompute();
        Ok(record)
    }

    /// Issues an admin certificate for the caller's key.
    pub fn issue_admin(
        &self,
        caller: &Caller,
        name: &AdminName,
        role: Role,
        csr_der: &[u8],
        ttl: Option<Duration>,
    ) -> Result<IssuedCert, OpError> {
        let cert = self
            .ca
            .sign_client_csr(
                csr_der,
                &Identity::Admin(name.clone()),
                ttl.unwrap_or(self.config.admin_cert_ttl),
            )
            .map_err(|e| OpError::Invalid(e.to_string()))?;
        self.store.put_admin(&AdminRecord {
            name: name.clone(),
            role,
            issued_at: UnixMs::now(),
            issued_by: caller.actor(),
        })?;
        Ok(cert)
    }

    /// The Prometheus exposition of the controller's metrics.
    pub fn render_metrics(&self) -> String {
        use ruse_proto::convert::AgentState;
        let agents = self.fleet.states();
        let mut gauges = Vec::new();
        for state in [
            AgentState::Online,
            AgentState::Degraded,
            AgentState::Offline,
            AgentState::Revoked,
        ] {
            let n = agents.iter().filter(|(s, _)| *s == state).count() as u64;
            gauges.push((
                "ruse_agents",
                "Agents by state.",
                vec![("state", state.as_str().to_owned())],
                n,
            ));
        }
        let depth: u64 = agents.iter().map(|(_, h)| h.outbox_depth).sum();
        gauges.push((
            "ruse_agent_outbox_events",
            "Events waiting in agents' outboxes, as last reported.",
            vec![],
            depth,
        ));
        let dropped: u64 = agents.iter().map(|(_, h)| h.outbox_dropped).sum();
        gauges.push((
            "ruse_agent_outbox_dropped_events",
            "Events agents dropped because their outbox was full, as last reported.",
            vec![],
            dropped,
        ));
        let limited: u64 = agents.iter().map(|(_, h)| h.rate_limited).sum();
        gauges.push((
            "ruse_agent_rate_limited_events",
            "Events agents dropped by the per-lure rate limit, as last reported.",
            vec![],
            limited,
        ));
        let open = self.events.incidents.open_by_severity();
        for severity in crate::model::Severity::ALL {
            gauges.push((
                "ruse_incidents_open",
                "Incidents not yet resolved, by severity.",
                vec![("severity", severity.as_str().to_owned())],
                open.get(&severity).copied().unwrap_or(0),
            ));
        }
        let outputs = self.events.outputs.status();
        for (name, help, value) in [
            (
                "ruse_output_queue_depth",
                "Incident notices waiting for delivery, by output.",
                &(|o: &crate::outputs::OutputStatus| o.queued as u64)
                    as &dyn Fn(&crate::outputs::OutputStatus) -> u64,
            ),
            (
                "ruse_output_delivered",
                "Incident notices delivered since the controller started, by output.",
                &|o: &crate::outputs::OutputStatus| o.delivered,
            ),
            (
                "ruse_output_failures",
                "Failed delivery attempts since the controller started, by output.",
                &|o: &crate::outputs::OutputStatus| o.failures,
            ),
        ] {
            for o in &outputs {
                gauges.push((name, help, vec![("output", o.name.clone())], value(o)));
            }
        }
        gauges.push((
            "ruse_lure_instances_created",
            "Lure instances this controller created since it started (with replicas, each plans the agents whose sessions it holds).",
            vec![],
            self.deploy.instances_created(),
        ));
        for name in self.deploy.campaign_names() {
            let Some(c) = self.deploy.campaign(&name) else {
                continue;
            };
            let released = c.waves.iter().filter(|w| w.released).count() as u64;
            let acked: usize = c.waves.iter().filter(|w| w.released).map(|w| w.acked).sum();
            let failed: usize = c
                .waves
                .iter()
                .filter(|w| w.released)
                .map(|w| w.failed)
                .sum();
            for (metric, help, value) in [
                (
                    "ruse_rollout_waves_released",
                    "Waves released, by campaign.",
                    released,
                ),
                (
                    "ruse_rollout_waves",
                    "Waves, by campaign.",
                    c.waves.len() as u64,
                ),
                (
                    "ruse_rollout_agents_matching",
                    "Agents the campaign selects.",
                    c.matching as u64,
                ),
                (
                    "ruse_rollout_agents_applied",
                    "Agents of released waves that applied every lure.",
                    acked as u64,
                ),
                (
                    "ruse_rollout_agents_failed",
                    "Agents of released waves that refused a lure.",
                    failed as u64,
                ),
            ] {
                gauges.push((metric, help, vec![("campaign", name.clone())], value));
            }
        }
        gauges.sort_by(|a, b| a.0.cmp(b.0));
        self.metrics.render(&gauges)
    }

    /// Writes agent records whose last-seen or facts changed. Called
    /// periodically and at shutdown.
    /// Takes in agents that another controller sharing the store enrolled
    /// or changed: `Some(ids)` for those, `None` for all.
    pub fn agents_changed(&self, ids: Option<&[AgentId]>) -> Result<(), StoreError> {
        let records = match ids {
            Some([id]) => self.store.agent(id)?.into_iter().collect(),
            Some(ids) => self.store.agents_among(ids)?,
            None => self.store.agents()?,
        };
        let mut changed = false;
        for record in records {
            self.deploy.take_in_applied(&record);
            changed |= self.fleet.merge_stored(record);
        }
        if changed {
            self.deploy.request_recompute();
        }
        Ok(())
    }

    pub async fn flush_fleet_state(&self) -> Result<usize, StoreError> {
        let dirty = self.fleet.take_dirty();
        if dirty.is_empty() {
            return Ok(0);
        }
        let written = self.store.put_agent_states(&dirty);
        let result = match written {
            Ok(()) => self.committer.durable().await,
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            self.fleet.restore_dirty(&dirty);
            return Err(e);
        }
        Ok(dirty.len())
    }
}

/// How long one apply's manifests may take to parse.
pub const MANIFEST_PARSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest text kept in one audit field: callers choose targets and
/// details, and an audit log must not become their storage.
pub const MAX_AUDIT_FIELD: usize = 512;

/// `text` cut at [`MAX_AUDIT_FIELD`] bytes (on a character boundary), with
/// how long it was.
pub fn bounded(mut text: String) -> String {
    if text.len() <= MAX_AUDIT_FIELD {
        return text;
    }
    let len = text.len();
    let mut cut = MAX_AUDIT_FIELD;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    text.truncate(cut);
    text.push_str(&format!("... ({len} bytes)"));
    text
}

//! `ruse.agent.v1.AgentService`: enrollment, renewal and the session stream.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, mpsc};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use ruse_proto::agent::v1 as pb;
use ruse_proto::agent::v1::agent_service_server::AgentService;
use ruse_proto::convert::HostFacts;
use ruse_proto::types::{AgentId, Identity};

use super::{caller, status};
use crate::core::{AuditEntry, Caller, Core, OpError};
use crate::fleet::{CloseReason, Health, SessionRefused, SessionTicket};

/// Messages buffered towards one agent. Small: updates are coalesced, not
/// queued (lure issue), and events are acknowledged by sequence.
const OUTBOUND_BUFFER: usize = 8;

/// The agent-facing service.
#[derive(Debug, Clone)]
pub struct AgentApi {
    core: Arc<Core>,
}

impl AgentApi {
    pub fn new(core: Arc<Core>) -> Self {
        AgentApi { core }
    }
}

fn require_agent<T>(request: &Request<T>) -> Result<AgentId, Status> {
    match caller(request)?.identity {
        Some(Identity::Agent(id)) => Ok(id),
        Some(Identity::Admin(_)) => Err(Status::permission_denied(
            "admin certificates cannot call the agent API",
        )),
        None => Err(Status::unauthenticated(
            "a client certificate is required (only Enroll works without one)",
        )),
    }
}

fn trust_bundle(core: &Core) -> Vec<Vec<u8>> {
    vec![core.ca.cert_der().to_vec()]
}

type SessionStream = Pin<Box<dyn Stream<Item = Result<pb::ControllerMessage, Status>> + Send>>;

#[tonic::async_trait]
impl AgentService for AgentApi {
    async fn enroll(
        &self,
        request: Request<pb::EnrollRequest>,
    ) -> Result<Response<pb::EnrollResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let facts = HostFacts::try_from(req.facts.unwrap_or_default())
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let enrolled = self
            .core
            .enroll(&caller, &req.token, &req.csr_der, facts)
            .await
            .map_err(status)?;
        tracing::info!(
            agent = %enrolled.record.id,
            hostname = %enrolled.record.facts.hostname,
            peer = %caller.peer,
            "agent enrolled"
        );
        Ok(Response::new(pb::EnrollResponse {
            agent_id: enrolled.record.id.to_string(),
            certificate_der: enrolled.cert.der.to_vec(),
            trust_bundle_der: trust_bundle(&self.core),
            not_after_ms: enrolled.cert.not_after.0,
            labels: enrolled.record.labels().to_map(),
        }))
    }

    async fn renew(
        &self,
        request: Request<pb::RenewRequest>,
    ) -> Result<Response<pb::RenewResponse>, Status> {
        let id = require_agent(&request)?;
        let cert = self
            .core
            .renew(&id, &request.into_inner().csr_der)
            .await
            .map_err(status)?;
        tracing::debug!(agent = %id, not_after = %cert.not_after, "certificate renewed");
        Ok(Response::new(pb::RenewResponse {
            certificate_der: cert.der.to_vec(),
            trust_bundle_der: trust_bundle(&self.core),
            not_after_ms: cert.not_after.0,
        }))
    }

    async fn deregister(
        &self,
        request: Request<pb::DeregisterRequest>,
    ) -> Result<Response<pb::DeregisterResponse>, Status> {
        let id = require_agent(&request)?;
        let caller = caller(&request)?;
        let reason: String = request.get_ref().reason.chars().take(256).collect();
        let reason = if reason.trim().is_empty() {
            "uninstalled".to_owned()
        } else {
            reason
        };
        let result = self
            .core
            .revoke_agent(&caller, &id, &reason)
            .map(|_| "ok".to_owned())
            .unwrap_or_else(|e| e.to_string());
        self.core
            .audit(
                &caller,
                AuditEntry {
                    action: "agent.deregister",
                    target: format!("agent/{id}"),
                    detail: reason,
                },
                &result,
            )
            .await
            .map_err(|e| status(e.into()))?;
        tracing::warn!(agent = %id, "agent deregistered itself (uninstalled)");
        Ok(Response::new(pb::DeregisterResponse {}))
    }

    type SessionStream = SessionStream;

    async fn session(
        &self,
        request: Request<Streaming<pb::AgentMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let id = require_agent(&request)?;
        let peer = caller(&request)?.peer;
        let ticket = self
            .core
            .fleet
            .begin_session(&id, peer)
            .map_err(|refused| {
                status(match refused {
                    SessionRefused::Revoked(id) => OpError::AgentRevoked(id),
                    SessionRefused::Unknown(id) => OpError::AgentUnknown(id),
                })
            })?;
        tracing::info!(agent = %id, %peer, "session started");
        let (tx, rx) = mpsc::channel(OUTBOUND_BUFFER);
        let heartbeat = pb::ControllerMessage {
            msg: Some(pb::controller_message::Msg::Directive(pb::Directive {
                kind: Some(pb::directive::Kind::SetHeartbeat(pb::SetHeartbeat {
                    interval_ms: duration_ms(self.core.config.heartbeat_interval),
                })),
            })),
        };
        // The channel is new and empty, so this cannot fail.
        let _ = tx.try_send(Ok(heartbeat));
        let notify = Arc::new(Notify::new());
        self.core.deploy.session_started(&id, notify.clone());
        let session = Session {
            core: self.core.clone(),
            id,
            ticket,
            tx,
            notify,
            peer,
        };
        tokio::spawn(session.run(request.into_inner()));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// One agent's stream. The task sleeps until the agent sends something or
/// the controller closes the session.
struct Session {
    core: Arc<Core>,
    id: AgentId,
    ticket: SessionTicket,
    tx: mpsc::Sender<Result<pb::ControllerMessage, Status>>,
    /// Woken when the deployer has something for this agent.
    notify: Arc<Notify>,
    peer: std::net::SocketAddr,
}

impl Session {
    /// Stores a batch durably, audits refusals, then acknowledges it.
    async fn ingest(&self, events: Vec<pb::Event>) -> Result<(), Status> {
        let caller = Caller {
            identity: Some(Identity::Agent(self.id.clone())),
            peer: self.peer,
        };
        let ingested = self
            .core
            .events
            .ingest(&self.id, &self.peer.to_string(), events)
            .await
            .map_err(|e| status(e.into()))?;
        if !ingested.rejected.is_empty() {
            tracing::warn!(agent = %self.id, refused = ingested.rejected.len(), first = %ingested.rejected[0], "events refused");
            self.core
                .audit(
                    &caller,
                    AuditEntry {
                        action: "event.rejected",
                        target: format!("agent/{}", self.id),
                        detail: format!(
                            "{} refused; first: {}",
                            ingested.rejected.len(),
                            ingested.rejected[0]
                        ),
                    },
                    "refused",
                )
                .await
                .map_err(|e| status(e.into()))?;
        }
        // Refused events are acknowledged too: resending cannot help.
        let ack = pb::ControllerMessage {
            msg: Some(pb::controller_message::Msg::EventAck(pb::EventAck {
                through_seq: ingested.through_seq,
            })),
        };
        self.tx
            .send(Ok(ack))
            .await
            .map_err(|_| Status::cancelled("session closed"))
    }

    async fn run(mut self, mut inbound: Streaming<pb::AgentMessage>) {
        let mut greeted = false;
        let ending = loop {
            tokio::select! {
                reason = &mut self.ticket.closed => break match reason {
                    Ok(CloseReason::Revoked) => Some(status(OpError::AgentRevoked(self.id.clone()))),
                    Ok(CloseReason::Superseded) => Some(Status::aborted("a newer session of this agent replaced this one")),
                    Ok(CloseReason::ShuttingDown) => Some(Status::unavailable("the controller is shutting down")),
                    Err(_) => None,
                },
                message = inbound.message() => match message {
                    Ok(Some(message)) => {
                        if let Err(status) = self.handle(message, &mut greeted).await {
                            break Some(status);
                        }
                    }
                    Ok(None) => break None,
                    Err(status) => {
                        tracing::debug!(agent = %self.id, error = %status, "session stream error");
                        break Some(status);
                    }
                },
                () = self.notify.notified() => {
                    for drill in self.core.events.drills.take_directives(&self.id) {
                        let message = pb::ControllerMessage {
                            msg: Some(pb::controller_message::Msg::Directive(pb::Directive {
                                kind: Some(pb::directive::Kind::Drill(pb::Drill {
                                    id: drill.id,
                                    lure_id: drill.lure_id,
                                })),
                            })),
                        };
                        if self.tx.send(Ok(message)).await.is_err() {
                            break;
                        }
                    }
                    if let Some(update) = self.core.deploy.next_update(&self.id) {
                        let message = pb::ControllerMessage { msg: Some(pb::controller_message::Msg::Update(update.into())) };
                        if self.tx.send(Ok(message)).await.is_err() {
                            break None;
                        }
                    }
                }
                () = self.tx.closed() => break None,
            }
        };
        if let Some(status) = ending {
            tracing::info!(agent = %self.id, reason = %status.message(), "session closed by controller");
            let _ = self.tx.send(Err(status)).await;
        } else {
            tracing::info!(agent = %self.id, "session ended");
        }
        self.core.deploy.session_ended(&self.id);
        self.core.fleet.end_session(&self.id, self.ticket.id);
    }

    async fn handle(&self, message: pb::AgentMessage, greeted: &mut bool) -> Result<(), Status> {
        use pb::agent_message::Msg;
        let Some(msg) = message.msg else {
            return Err(Status::invalid_argument("empty agent message"));
        };
        match msg {
            Msg::Hello(hello) => {
                let facts = HostFacts::try_from(hello.facts.unwrap_or_default())
                    .map_err(|e| Status::invalid_argument(e.to_string()))?;
                let labels_before = self.core.fleet.record(&self.id).map(|r| r.labels());
                self.core.fleet.hello(&self.id, self.ticket.id, facts);
                if self.core.fleet.record(&self.id).map(|r| r.labels()) != labels_before {
                    self.core.deploy.request_recompute();
                }
                self.core.deploy.hello(&self.id, hello.applied);
                *greeted = true;
            }
            _ if !*greeted => {
                return Err(Status::failed_precondition(
                    "the first message of a session must be Hello",
                ));
            }
            Msg::Heartbeat(hb) => {
                let health = Health {
                    degraded: hb.status() == pb::HealthStatus::Degraded,
                    problems: hb
                        .problems
                        .into_iter()
                        .take(16)
                        .map(|p| p.chars().take(256).collect())
                        .collect(),
                    outbox_depth: hb.outbox_depth,
                    outbox_dropped: hb.outbox_dropped,
                    rate_limited: hb.events_rate_limited,
                    watcher: hb.watcher.chars().take(32).collect(),
                };
                self.core.fleet.heartbeat(&self.id, self.ticket.id, health);
            }
            Msg::Ack(ack) => self.core.deploy.acked(&self.id, ack.nonce),
            Msg::Nack(nack) => {
                tracing::warn!(
                    agent = %self.id,
                    failed = nack.errors.len(),
                    first = %nack.errors.first().map(|e| e.error.as_str()).unwrap_or(""),
                    "agent refused lures"
                );
                self.core.deploy.nacked(
                    &self.id,
                    nack.nonce,
                    nack.errors.into_iter().map(Into::into).collect(),
                );
            }
            Msg::Events(batch) => self.ingest(batch.events).await?,
        }
        Ok(())
    }
}

/// Events arrive as the protocol's messages and are converted (bounded and
/// checked by `ReportedEvent::try_from`) only once admitted.
impl crate::events::Incoming for pb::Event {
    fn seq(&self) -> u64 {
        self.seq
    }

    fn into_kind(self) -> String {
        self.kind
    }

    fn into_event(
        self,
    ) -> Result<ruse_proto::convert::ReportedEvent, ruse_proto::types::InvalidValue> {
        ruse_proto::convert::ReportedEvent::try_from(self)
    }
}

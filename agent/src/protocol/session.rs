//! One session with the controller, from connect to close.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use rustls::AlertDescription;
use rustls::pki_types::CertificateDer;
use tokio::sync::{mpsc, watch};
use tokio::time::MissedTickBehavior;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;
use tonic::transport::Channel;

use ruse_pki::PrivateKey;
use ruse_proto::agent::v1 as pb;
use ruse_proto::agent::v1::agent_service_client::AgentServiceClient;
use ruse_proto::spec;
use ruse_proto::types::UnixMs;
use ruse_proto::{errors, transport};

use crate::decoys::DecoyManager;
use crate::identity::AgentIdentity;
use crate::platform::{Native, Platform};
use crate::{AgentConfig, AgentError, AgentStatus, Failure, Shared, random_fraction};

/// Until the controller says otherwise.
const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(30);
const OUTBOUND_BUFFER: usize = 16;

/// How a session ended without a failure.
#[derive(Debug)]
pub(crate) enum End {
    Shutdown,
    /// The certificate was renewed; reconnect with it now.
    Renewed,
    Closed {
        lasted: Duration,
    },
}

/// Where the agent is when a call fails, which decides what errors mean.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Phase<'a> {
    Enrolling,
    Enrolled {
        identity: &'a AgentIdentity,
        state_dir: &'a str,
    },
}

/// Classifies a failed call.
pub(crate) fn classify_status(status: &Status, phase: Phase<'_>) -> Failure {
    if let Some(tls) = transport::tls_error(status) {
        return classify_tls(tls, phase);
    }
    let reason = status
        .metadata()
        .get(errors::HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    match (reason, phase) {
        (errors::AGENT_REVOKED, Phase::Enrolled { identity, .. }) => {
            Failure::Fatal(AgentError::Revoked(identity.id.clone()))
        }
        (
            errors::AGENT_UNKNOWN,
            Phase::Enrolled {
                identity,
                state_dir,
            },
        ) => Failure::Fatal(AgentError::Unknown {
            id: identity.id.clone(),
            state: state_dir.to_owned(),
        }),
        (errors::TOKEN_INVALID | errors::TOKEN_EXPIRED | errors::TOKEN_EXHAUSTED, _) => {
            Failure::Fatal(AgentError::TokenRejected(status.message().to_owned()))
        }
        (errors::RATE_LIMITED, _) => Failure::RetryAfter(Duration::from_secs(60)),
        (_, Phase::Enrolling) if status.code() == tonic::Code::InvalidArgument => {
            Failure::Fatal(AgentError::TokenRejected(status.message().to_owned()))
        }
        _ => Failure::Retry(format!(
            "{}: {}",
            code_name(status.code()),
            status.message()
        )),
    }
}

fn code_name(code: tonic::Code) -> String {
    format!("{code:?}").to_lowercase()
}

pub(crate) fn classify_transport(err: &tonic::transport::Error, phase: Phase<'_>) -> Failure {
    match transport::tls_error(err) {
        Some(tls) => classify_tls(tls, phase),
        None => Failure::Retry(error_chain(err)),
    }
}

fn classify_tls(err: &rustls::Error, phase: Phase<'_>) -> Failure {
    use rustls::Error as E;
    match (err, phase) {
        (
            E::AlertReceived(AlertDescription::CertificateRevoked),
            Phase::Enrolled { identity, .. },
        ) => Failure::Fatal(AgentError::Revoked(identity.id.clone())),
        (
            E::AlertReceived(AlertDescription::CertificateExpired),
            Phase::Enrolled { identity, .. },
        ) if !identity.expired(UnixMs::now()) => Failure::Clock(format!(
            "the controller refused this agent's certificate as expired, but it is valid until {} by this host's clock ({}): the controller's clock is probably ahead; retrying",
            identity.not_after.rfc3339(),
            UnixMs::now().rfc3339()
        )),
        (E::AlertReceived(AlertDescription::CertificateExpired), Phase::Enrolled { .. }) => {
            Failure::Expired
        }
        (E::InvalidCertificate(e), _)
            if let Some(text) =
                ruse_pki::validity_error_text(e, "the controller's certificate", "this host") =>
        {
            Failure::Clock(text)
        }
        (
            E::AlertReceived(
                alert @ (AlertDescription::UnknownCA
                | AlertDescription::BadCertificate
                | AlertDescription::CertificateUnknown),
            ),
            Phase::Enrolled { .. },
        ) => Failure::Fatal(AgentError::CertificateRejected(format!("{alert:?}"))),
        (E::InvalidCertificate(e), Phase::Enrolling) => {
            Failure::Fatal(AgentError::PinMismatch(certificate_error_text(e)))
        }
        (E::InvalidCertificate(e), Phase::Enrolled { .. }) => {
            Failure::Fatal(AgentError::Untrusted(certificate_error_text(e)))
        }
        (other, _) => Failure::Retry(format!("tls: {other}")),
    }
}

fn certificate_error_text(e: &rustls::CertificateError) -> String {
    match e {
        rustls::CertificateError::Other(other) => other.0.to_string(),
        e => format!("{e:?}"),
    }
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

fn message(msg: pb::agent_message::Msg) -> pb::AgentMessage {
    pb::AgentMessage { msg: Some(msg) }
}

/// Connects, runs the session until it ends, and reports how.
pub(crate) async fn run_once(
    config: &AgentConfig,
    identity: &mut AgentIdentity,
    shared: &Shared,
    mut problems: Vec<String>,
    shutdown: &mut watch::Receiver<bool>,
    status: &watch::Sender<AgentStatus>,
) -> Result<End, Failure> {
    let state = config.state_dir.display().to_string();
    let phase = Phase::Enrolled {
        identity,
        state_dir: &state,
    };
    let tls = ruse_pki::client_config(
        &identity.trust_bundle,
        vec![identity.cert.clone()],
        identity.key.to_der(),
    )?;
    let channel = transport::connect(&config.controller, tls, &config.dial)
        .await
        .map_err(|e| classify_transport(&e, phase))?;
    let mut client = AgentServiceClient::new(channel);

    let (tx, rx) = mpsc::channel(OUTBOUND_BUFFER);
    let hello = pb::Hello {
        agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        capabilities: Vec::new(),
        facts: Some(Native::host_facts(&config.labels).into()),
        applied: {
            let mut applied = crate::lock(&shared.engine).applied();
            applied.extend(shared.decoys.lock().await.applied());
            applied.into_iter().collect()
        },
    };
    // The channel is new and empty.
    let _ = tx.try_send(message(pb::agent_message::Msg::Hello(hello)));
    let mut inbound = client
        .session(ReceiverStream::new(rx))
        .await
        .map_err(|s| classify_status(&s, phase))?
        .into_inner();
    let started = Instant::now();
    status.send_modify(|s| {
        s.connected = true;
        s.sessions += 1;
        s.last_error = None;
    });
    tracing::info!(agent = %identity.id, controller = %config.controller, "session open");

    let mut heartbeat = heartbeat_timer(DEFAULT_HEARTBEAT);
    let mut last_verify = Instant::now();
    let mut flight = InFlight::new(shared.sink.acked());
    if !send_events(shared, &tx, &mut flight).await {
        return Ok(End::Closed {
            lasted: started.elapsed(),
        });
    }
    let renew_at = identity.renew_at(random_fraction());
    let renew_in = UnixMs::now().until(renew_at);
    let renew = tokio::time::sleep(renew_in);
    tokio::pin!(renew);
    loop {
        tokio::select! {
            () = crate::stopped(shutdown) => {
                drop(tx);
                return Ok(End::Shutdown);
            }
            () = &mut renew => {
                renew_certificate(&mut client, identity, config).await?;
                return Ok(End::Renewed);
            }
            () = shared.sink.notify().notified() => {
                if !send_events(shared, &tx, &mut flight).await {
                    return Ok(End::Closed { lasted: started.elapsed() });
                }
            }
            () = shared.drifted.notified() => {
                // Let a burst of changes (an editor's save) settle, then
                // check and repair now rather than at the next interval.
                tokio::time::sleep(DRIFT_SETTLE).await;
                problems = crate::verify(shared).await;
                last_verify = Instant::now();
            }
            _ = heartbeat.tick() => {
                if last_verify.elapsed() >= config.verify_interval {
                    problems = crate::verify(shared).await;
                    last_verify = Instant::now();
                }
                let degraded = !problems.is_empty();
                if status.borrow().problems != problems {
                    status.send_modify(|s| s.problems = problems.clone());
                }
                let (depth, outbox_dropped) = shared.sink.backlog();
                let outbox_depth = depth as u64;
                let beat = pb::Heartbeat {
                    status: if degraded { pb::HealthStatus::Degraded } else { pb::HealthStatus::Ok }.into(),
                    problems: problems.clone(),
                    outbox_depth,
                    outbox_dropped,
                    events_rate_limited: shared.rate_limited.load(std::sync::atomic::Ordering::Relaxed),
                    watcher: shared.watcher_mode.into(),
                };
                if tx.send(message(pb::agent_message::Msg::Heartbeat(beat))).await.is_err() {
                    return Ok(End::Closed { lasted: started.elapsed() });
                }
            }
            received = inbound.message() => match received {
                Ok(Some(msg)) => {
                    use pb::controller_message::Msg;
                    match msg.msg {
                        Some(Msg::Directive(d)) => match d.kind {
                            Some(pb::directive::Kind::SetHeartbeat(hb)) => {
                                let interval = Duration::from_millis(hb.interval_ms.max(100));
                                heartbeat = heartbeat_timer(interval);
                            }
                            Some(pb::directive::Kind::RenewNow(_)) => {
                                renew_certificate(&mut client, identity, config).await?;
                                return Ok(End::Renewed);
                            }
                            Some(pb::directive::Kind::RetryAfter(r)) => {
                                return Err(Failure::RetryAfter(Duration::from_millis(r.millis)));
                            }
                            Some(pb::directive::Kind::Drill(drill)) => {
                                crate::drill(shared, &crate::Drill { id: drill.id, lure_id: drill.lure_id });
                            }
                            Some(pb::directive::Kind::ReportFullState(_)) | None => {}
                        },
                        Some(Msg::Update(update)) => {
                            let reply = apply_update(shared, update).await;
                            shared.rewatch().await;
                            let decoy_services = shared.decoys.lock().await.services();
                            status.send_modify(|s| {
                                s.updates += 1;
                                s.decoy_services = decoy_services;
                                s.lures = crate::lock(&shared.engine).applied().len();
                            });
                            if tx.send(reply).await.is_err() {
                                return Ok(End::Closed { lasted: started.elapsed() });
                            }
                        }
                        Some(Msg::EventAck(ack)) => {
                            match shared.sink.ack(ack.through_seq).await {
                                Ok((newly, depth)) => {
                                    let acked = flight.acknowledged(ack.through_seq);
                                    status.send_modify(|s| {
                                        s.events_acked += newly;
                                        s.outbox_depth = depth;
                                        s.acknowledged(acked);
                                    });
                                }
                                Err(e) => tracing::error!(error = %e, "cannot record the event acknowledgement; events will be sent again"),
                            }
                            if !send_events(shared, &tx, &mut flight).await {
                                return Ok(End::Closed { lasted: started.elapsed() });
                            }
                        }
                        None => {}
                    }
                }
                Ok(None) => return Ok(End::Closed { lasted: started.elapsed() }),
                Err(status) => {
                    let failure = classify_status(&status, Phase::Enrolled { identity, state_dir: &state });
                    if let Failure::Retry(reason) = &failure {
                        tracing::info!(reason = %reason, "session closed");
                        return Ok(End::Closed { lasted: started.elapsed() });
                    }
                    return Err(failure);
                }
            }
        }
    }
}

/// Events sent but not yet acknowledged, at most.
const MAX_EVENTS_IN_FLIGHT: u64 = 2000;
/// Batches sent but not yet acknowledged, at most. With none in flight an
/// event goes at once; under a flood, events wait in the outbox for an
/// acknowledgement and go in fewer, larger batches, each of which costs the
/// controller a correlation pass and a write of every incident it touches.
const MAX_BATCHES_IN_FLIGHT: usize = 2;
/// Events per batch, at most.
const EVENTS_PER_BATCH: usize = 500;

/// What a session has sent and not yet had acknowledged.
#[derive(Debug)]
struct InFlight {
    /// Events sent on this session (acknowledged or not) go up to here.
    sent_through: u64,
    /// The last sequence number of each batch not yet acknowledged.
    batches: VecDeque<u64>,
    /// The last events sent, by sequence number, for the status to show
    /// once acknowledged (at most [`crate::RECENT_ACKED`]).
    summaries: VecDeque<(u64, crate::AckedEvent)>,
}

impl InFlight {
    fn new(acked: u64) -> Self {
        InFlight {
            sent_through: acked,
            batches: VecDeque::new(),
            summaries: VecDeque::new(),
        }
    }

    /// Keeps what the status shows of a sent event.
    fn summarize(&mut self, e: &ruse_proto::event::AgentEvent) {
        crate::keep_recent(
            &mut self.summaries,
            (
                e.seq,
                crate::AckedEvent {
                    id: e.id.clone(),
                    lure_id: e.lure_id.clone(),
                    kind: e.kind.clone(),
                    path: e.path.clone(),
                    observed_ms: e.observed_ms,
                },
            ),
        );
    }

    /// The summaries of the events `through` acknowledges, taken out.
    fn acknowledged(&mut self, through: u64) -> Vec<crate::AckedEvent> {
        let mut out = Vec::new();
        while self
            .summaries
            .front()
            .is_some_and(|(seq, _)| *seq <= through)
        {
            if let Some((_, e)) = self.summaries.pop_front() {
                out.push(e);
            }
        }
        out
    }

    /// Records a batch whose last event is `last` as sent.
    fn sent(&mut self, last: u64) {
        self.sent_through = last;
        self.batches.push_back(last);
    }

    /// Forgets what `acked` covers; whether another batch may go.
    fn room(&mut self, acked: u64) -> bool {
        self.sent_through = self.sent_through.max(acked);
        while self.batches.front().is_some_and(|last| *last <= acked) {
            self.batches.pop_front();
        }
        self.sent_through - acked < MAX_EVENTS_IN_FLIGHT
            && self.batches.len() < MAX_BATCHES_IN_FLIGHT
    }
}

/// Sends outbox events after those in flight, within the in-flight window.
/// Returns false when the stream is gone.
async fn send_events(
    shared: &Shared,
    tx: &mpsc::Sender<pb::AgentMessage>,
    flight: &mut InFlight,
) -> bool {
    loop {
        if !flight.room(shared.sink.acked()) {
            return true;
        }
        let batch = match shared.sink.pending(flight.sent_through, EVENTS_PER_BATCH) {
            Ok(events) => events,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the outbox");
                return true;
            }
        };
        let Some(last) = batch.last().map(|e| e.seq) else {
            return true;
        };
        for e in &batch {
            flight.summarize(e);
        }
        if tx
            .send(message(pb::agent_message::Msg::Events(pb::EventBatch {
                events: batch.into_iter().map(pb::Event::from).collect(),
            })))
            .await
            .is_err()
        {
            return false;
        }
        flight.sent(last);
    }
}

/// Applies an update off the async threads and builds the Ack or Nack.
/// Decoy resources go to the decoy manager, the rest to the planting engine.
async fn apply_update(shared: &Shared, update: pb::Update) -> pb::AgentMessage {
    let update = spec::Update::from(update);
    let nonce = update.nonce;
    let (decoy_removed, removed): (Vec<String>, Vec<String>) = update
        .removed
        .into_iter()
        .partition(|id| DecoyManager::owns(id));
    let (decoy_resources, resources): (Vec<spec::Resource>, Vec<spec::Resource>) = update
        .resources
        .into_iter()
        .partition(|r| r.kind == crate::decoys::DECOY);
    let engine = shared.engine.clone();
    let outcomes =
        tokio::task::spawn_blocking(move || crate::lock(&engine).apply(&removed, &resources))
            .await
            .unwrap_or_default();
    let mut errors: Vec<spec::ResourceError> = outcomes
        .into_iter()
        .filter_map(|o| {
            o.result.err().map(|e| spec::ResourceError {
                id: o.id,
                revision: o.revision,
                error: e.to_string(),
            })
        })
        .collect();
    if !decoy_removed.is_empty() || !decoy_resources.is_empty() {
        let outcomes = shared
            .decoys
            .lock()
            .await
            .apply(&decoy_removed, &decoy_resources)
            .await;
        errors.extend(outcomes.into_iter().filter_map(|(id, revision, r)| {
            r.err().map(|e| spec::ResourceError {
                id,
                revision,
                error: e.to_string(),
            })
        }));
    }
    if errors.is_empty() {
        message(pb::agent_message::Msg::Ack(pb::Ack { nonce }))
    } else {
        tracing::warn!(nonce, failed = errors.len(), first = %errors[0].error, "update partly refused");
        message(pb::agent_message::Msg::Nack(pb::Nack {
            nonce,
            errors: errors.into_iter().map(pb::ResourceError::from).collect(),
        }))
    }
}

fn heartbeat_timer(interval: Duration) -> tokio::time::Interval {
    let mut timer = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    timer.set_missed_tick_behavior(MissedTickBehavior::Delay);
    timer
}

/// Gets a certificate for a fresh key and saves it.
async fn renew_certificate(
    client: &mut AgentServiceClient<Channel>,
    identity: &mut AgentIdentity,
    config: &AgentConfig,
) -> Result<(), Failure> {
    let state = config.state_dir.display().to_string();
    let key = PrivateKey::generate()?;
    let response = client
        .renew(pb::RenewRequest {
            csr_der: key.csr_der()?,
        })
        .await
        .map_err(|s| {
            classify_status(
                &s,
                Phase::Enrolled {
                    identity,
                    state_dir: &state,
                },
            )
        })?
        .into_inner();
    let bundle = response
        .trust_bundle_der
        .into_iter()
        .map(CertificateDer::from)
        .collect();
    let renewed =
        AgentIdentity::from_issued(key, CertificateDer::from(response.certificate_der), bundle)?;
    if renewed.id != identity.id {
        return Err(Failure::Fatal(AgentError::Untrusted(
            "the renewed certificate names another agent".into(),
        )));
    }
    renewed.save(&config.state_dir)?;
    tracing::info!(agent = %renewed.id, not_after = %renewed.not_after, "certificate renewed");
    *identity = renewed;
    Ok(())
}

/// How long after a lure changed the agent checks and repairs it.
const DRIFT_SETTLE: Duration = Duration::from_millis(500);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_wait_while_two_are_unacknowledged_or_the_event_window_is_full() {
        let mut f = InFlight::new(10);
        assert!(f.room(10), "nothing in flight: an event goes at once");
        f.sent(15);
        assert!(f.room(10));
        f.sent(16);
        assert!(!f.room(10), "two batches out");
        assert!(f.room(15), "the first is acknowledged");
        assert_eq!(f.batches, [16]);

        // One large batch fills the event window by itself.
        f.sent(16 + MAX_EVENTS_IN_FLIGHT);
        assert!(!f.room(16));
        assert_eq!(
            f.batches.len(),
            1,
            "one batch out: the event window holds it"
        );
        assert!(f.room(16 + MAX_EVENTS_IN_FLIGHT));
        assert!(f.batches.is_empty());

        // A new session starts from what the outbox has acknowledged.
        let mut f = InFlight::new(100);
        assert_eq!(f.sent_through, 100);
        assert!(f.room(90), "an older acknowledgement changes nothing");
        assert_eq!(f.sent_through, 100);
    }
}

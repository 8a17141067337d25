//! Incident outputs: syslog (RFC 5424 with a CEF payload, over UDP, TCP or
//! TLS), JSON webhooks (generic, Slack, Microsoft Teams) and a JSON lines
//! file.
//!
//! Every output has a durable queue in the store. An incident's notice
//! (opened, escalated, resolved) is queued in the same commit as the
//! events that caused it, so it is delivered even if the output was down,
//! or the controller restarted, when the incident opened. A worker per
//! output delivers the incident's current state, oldest notice first,
//! retrying with doubling delays; where each incident went is recorded on
//! the incident (`rusectl describe incident`).
//!
//! Controllers sharing one store deliver from one of them at a time: the
//! holder of the `outputs` lease ([`Store::lease`]), renewed every
//! [`LEASE_RENEW`]; when it dies another takes over within
//! [`LEASE_TTL`] + [`LEASE_RENEW`]. A notice is removed from its queue only
//! after its delivery, so one in flight when a holder dies is delivered
//! again by the next: at least once, with the incident's id and version as
//! the receiver's key to drop the repeat (docs/incidents.md).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use ruse_proto::types::UnixMs;

use crate::incidents::{Incidents, Notice};
use crate::model::{Delivery, Incident, Severity};
use crate::store::{Committer, LEASE_RENEW, LEASE_TTL, Store, StoreError};

mod config;
mod format;
mod raw;
mod sink;
mod smtp;

pub use self::config::{
    FileFormat, Output, OutputConfig, OutputConfigError, SmtpTls, SyslogFormat, Target, Transport,
    WebhookFormat,
};
pub use self::format::{
    ECS_VERSION, OCSF_VERSION, cef, check_template, ecs_document, hec_event, leef, ocsf_finding,
    pagerduty_event, render_template, syslog_message, template_values, webhook_body,
};
pub use self::raw::{RawEvent, ecs_event, hec_raw, ocsf_event};
use self::sink::{Item, Sent, Sink};
pub use self::smtp::{Mail, digest as digest_message, message as mail_message};

/// The lease of the controller that delivers the outputs.
const LEASE: &str = "outputs";

/// A queued notice (the form queues always had) or raw event.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
enum Queued {
    Notice { incident: String, notice: Notice },
    Event { raw: Box<RawEvent> },
}

/// The outputs and their delivery workers.
#[derive(Debug)]
pub struct Outputs {
    sinks: Vec<Arc<Sink>>,
    store: Arc<dyn Store>,
    /// Whether this controller holds the lease and delivers.
    leading: watch::Sender<bool>,
}

/// An output's state, for metrics and drills.
#[derive(Debug, Clone)]
pub struct OutputStatus {
    pub name: String,
    pub kind: String,
    pub queued: usize,
    pub delivered: u64,
    pub failures: u64,
    /// Since the controller started.
    pub last_delivered: Option<UnixMs>,
    pub last_failed: Option<UnixMs>,
    /// The last failure's error, until a delivery succeeds.
    pub last_error: String,
}

impl Outputs {
    /// Builds the outputs (checking CA files and the like).
    pub fn new(
        configs: &[OutputConfig],
        store: Arc<dyn Store>,
    ) -> Result<Outputs, OutputConfigError> {
        let sinks = configs
            .iter()
            .map(|c| {
                Output::try_from(c)
                    .and_then(Sink::new)
                    .map(Arc::new)
                    .map_err(|e| format!("output {:?}: {e}", c.name).into())
            })
            .collect::<Result<_, OutputConfigError>>()?;
        Ok(Outputs {
            sinks,
            store,
            leading: watch::channel(false).0,
        })
    }

    pub fn names(&self) -> Vec<String> {
        self.sinks.iter().map(|s| s.output.name.clone()).collect()
    }

    /// Outputs an incident of `severity` goes to.
    pub fn for_severity(&self, severity: Severity) -> Vec<String> {
        self.sinks
            .iter()
            .filter(|s| severity >= s.output.min_severity)
            .map(|s| s.output.name.clone())
            .collect()
    }

    /// Queues notices (before the commit that makes them durable).
    /// Returns the (incident, output) pairs queued.
    pub fn enqueue(
        &self,
        notices: &[(String, Notice)],
        incidents: &Incidents,
    ) -> Result<Vec<(String, String)>, StoreError> {
        let mut queued = Vec::new();
        for (id, notice) in notices {
            let Some(i) = incidents.get(id) else { continue };
            for sink in self
                .sinks
                .iter()
                .filter(|s| i.severity >= s.output.min_severity)
            {
                let item = serde_json::to_vec(&Queued::Notice {
                    incident: id.clone(),
                    notice: *notice,
                })
                .map_err(|e| StoreError::Engine(e.to_string().into()))?;
                // Below the digest's severity: held for the next digest
                // (a drill's incident never is: the drill waits for it).
                let queue = match sink.digest() {
                    Some((digest, below, _)) if i.severity < below && !i.drill => digest,
                    _ => sink.queue(),
                };
                self.store.queue_push(&queue, &item)?;
                queued.push((id.clone(), sink.output.name.clone()));
            }
        }
        Ok(queued)
    }

    /// Whether any output takes raw events.
    pub fn takes_events(&self) -> bool {
        self.sinks.iter().any(|s| s.output.events)
    }

    /// Queues raw events for the outputs that take them (before the
    /// commit that stores the events).
    pub fn enqueue_events(&self, events: &[RawEvent]) -> Result<(), StoreError> {
        for sink in self.sinks.iter().filter(|s| s.output.events) {
            for raw in events {
                let item = serde_json::to_vec(&Queued::Event {
                    raw: Box::new(raw.clone()),
                })
                .map_err(|e| StoreError::Engine(e.to_string().into()))?;
                self.store.queue_push(&sink.queue(), &item)?;
            }
        }
        Ok(())
    }

    /// Wakes the workers after queued notices became durable.
    pub fn wake(&self) {
        for s in &self.sinks {
            s.wake.notify_one();
        }
    }

    pub fn status(&self) -> Vec<OutputStatus> {
        self.sinks
            .iter()
            .map(|s| {
                let last = s.last.lock().unwrap_or_else(|e| e.into_inner()).clone();
                OutputStatus {
                    name: s.output.name.clone(),
                    kind: s.output.target.kind().to_owned(),
                    queued: self.store.queue_len(&s.queue()).unwrap_or(0)
                        + s.digest()
                            .map_or(0, |(q, _, _)| self.store.queue_len(&q).unwrap_or(0)),
                    delivered: s.delivered.load(Ordering::Relaxed),
                    failures: s.failures.load(Ordering::Relaxed),
                    last_delivered: last.delivered,
                    last_failed: last.failed,
                    last_error: last.error,
                }
            })
            .collect()
    }

    /// Whether this controller delivers the outputs now (it holds the
    /// lease).
    pub fn leading(&self) -> bool {
        *self.leading.borrow()
    }

    /// Starts one delivery worker per output, and the task that holds the
    /// lease they deliver under; they stop when `stop` turns true.
    pub fn start(
        self: &Arc<Self>,
        incidents: Arc<Incidents>,
        committer: Committer,
        retry: (Duration, Duration),
        stop: watch::Receiver<bool>,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        if self.sinks.is_empty() {
            return Vec::new();
        }
        let mut tasks: Vec<_> = self
            .sinks
            .iter()
            .map(|sink| {
                tokio::spawn(deliver(
                    sink.clone(),
                    self.store.clone(),
                    incidents.clone(),
                    committer.clone(),
                    retry,
                    (self.leading.subscribe(), stop.clone()),
                ))
            })
            .collect();
        tasks.push(tokio::spawn(self.clone().hold_lease(stop)));
        tasks
    }

    /// Takes and renews the lease until `stop`, then gives it up.
    async fn hold_lease(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        loop {
            let held = match self.store.lease(LEASE, LEASE_TTL) {
                Ok(held) => held,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot renew the output lease; not delivering until it is");
                    false
                }
            };
            let was = self.leading.send_replace(held);
            if held && !was {
                tracing::info!("this controller delivers the outputs");
                self.wake();
            } else if was && !held {
                tracing::warn!("another controller delivers the outputs now");
            }
            tokio::select! {
                () = tokio::time::sleep(LEASE_RENEW) => {}
                () = crate::stopped(&mut stop) => break,
            }
        }
        self.leading.send_replace(false);
        if let Err(e) = self.store.release_lease(LEASE) {
            tracing::warn!(error = %e, "cannot give up the output lease; another controller takes it when it expires");
        }
    }
}

/// One output's worker: oldest item first (as many as one request of
/// this output carries), retried until delivered.
async fn deliver(
    sink: Arc<Sink>,
    store: Arc<dyn Store>,
    incidents: Arc<Incidents>,
    committer: Committer,
    (retry_min, retry_max): (Duration, Duration),
    (mut leading, mut stop): (watch::Receiver<bool>, watch::Receiver<bool>),
) {
    let name = sink.output.name.clone();
    let mut delay = retry_min;
    let mut attempts: BTreeMap<String, u32> = BTreeMap::new();
    // When the next digest is due (an e-mail output with one), and the
    // delay before trying a failed one again.
    let mut digest_due = sink
        .digest()
        .map(|(_, _, every)| tokio::time::Instant::now() + every);
    let mut digest_delay = retry_min;
    loop {
        if *stop.borrow() {
            return;
        }
        if !*leading.borrow_and_update() {
            tokio::select! {
                _ = leading.wait_for(|l| *l) => {}
                () = crate::stopped(&mut stop) => return,
            }
            continue;
        }
        if let (Some(due), Some((_, _, every))) = (digest_due, sink.digest())
            && tokio::time::Instant::now() >= due
        {
            let now = tokio::time::Instant::now();
            digest_due = Some(
                match mail_digest(&sink, &store, &incidents, &committer).await {
                    Ok(()) => {
                        digest_delay = retry_min;
                        now + every
                    }
                    Err(e) => {
                        tracing::warn!(output = %name, error = %e, retry_in_ms = digest_delay.as_millis() as u64, "digest mail failed");
                        let retry = digest_delay;
                        digest_delay = (digest_delay * 2).min(retry_max);
                        now + retry
                    }
                },
            );
        }
        let next = match store.queue_peek(&sink.queue(), sink.batch()) {
            Ok(items) => items,
            Err(e) => {
                tracing::error!(output = %name, error = %e, "cannot read the output queue");
                Vec::new()
            }
        };
        if next.is_empty() {
            let digest = async {
                match digest_due {
                    Some(due) => tokio::time::sleep_until(due).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = sink.wake.notified() => {}
                _ = leading.changed() => {}
                () = digest => {}
                () = crate::stopped(&mut stop) => return,
            }
            continue;
        }
        let items = match resolve(&store, &incidents, &sink, &sink.queue(), next) {
            Ok(items) => items,
            Err(e) => {
                tracing::error!(output = %name, error = %e, "cannot read incidents");
                tokio::select! {
                    () = tokio::time::sleep(retry_min) => {}
                    () = crate::stopped(&mut stop) => return,
                }
                continue;
            }
        };
        if items.is_empty() {
            continue;
        }
        for (_, item) in &items {
            if let Item::Notice(i, _) = item {
                *attempts.entry(i.id.clone()).or_default() += 1;
            }
        }
        let batch: Vec<Item> = items.iter().map(|(_, item)| item.clone()).collect();
        match sink.send_batch(&batch).await {
            Ok(sent) => {
                for ((seq, item), sent) in items.iter().zip(sent) {
                    let Item::Notice(incident, notice) = item else {
                        if let Sent::Rejected(why) = &sent {
                            sink.failed(why);
                            tracing::error!(output = %name, error = %why, "the receiver rejected an event; not retried");
                        } else {
                            sink.delivered.fetch_add(1, Ordering::Relaxed);
                        }
                        if let Err(e) = store.queue_remove(&sink.queue(), *seq) {
                            tracing::error!(output = %name, error = %e, "cannot record a delivery");
                        }
                        continue;
                    };
                    let tries = attempts.remove(&incident.id).unwrap_or(1);
                    let record = match sent {
                        Sent::Rejected(why) => {
                            // Refused for good: reported, and the queue
                            // moves on.
                            sink.failed(&why);
                            tracing::error!(output = %name, incident = %incident.id, error = %why, "the receiver rejected the incident; not retried");
                            unsent(incident, &name, "rejected", tries, why)
                        }
                        Sent::Delivered => {
                            sink.delivered.fetch_add(1, Ordering::Relaxed);
                            tracing::info!(output = %name, incident = %incident.id, notice = notice.as_str(), "incident delivered");
                            Delivery {
                                state: "delivered".into(),
                                attempts: tries,
                                last_error: String::new(),
                                delivered: Some(UnixMs::now()),
                                version: incident.version,
                            }
                        }
                    };
                    settle(&*store, &incidents, &sink, *seq, &incident.id, record);
                }
                {
                    let mut last = sink.last.lock().unwrap_or_else(|e| e.into_inner());
                    last.delivered = Some(UnixMs::now());
                    last.error.clear();
                }
                let _ = committer.durable().await;
                delay = retry_min;
            }
            Err(error) => {
                sink.failed(&error);
                tracing::warn!(output = %name, items = items.len(), error = %error, retry_in_ms = delay.as_millis() as u64, "delivery failed");
                for (_, item) in &items {
                    if let Item::Notice(incident, _) = item {
                        let tries = attempts.get(&incident.id).copied().unwrap_or(1);
                        let record = unsent(incident, &name, "failing", tries, error.clone());
                        let _ = incidents.record_delivery(&incident.id, &name, record);
                    }
                }
                // Committed now: recording it holds other controllers'
                // incident writes until then.
                let _ = committer.durable().await;
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = crate::stopped(&mut stop) => return,
                }
                delay = (delay * 2).min(retry_max);
            }
        }
    }
}

/// Queue entries as what to send: each notice with its incident as it is
/// now (taken in from other controllers sharing the store when it opened
/// there). Entries that cannot be read, and notices of incidents that no
/// longer exist, leave the queue.
fn resolve(
    store: &Arc<dyn Store>,
    incidents: &Incidents,
    sink: &Sink,
    queue: &str,
    entries: Vec<(u64, Vec<u8>)>,
) -> Result<Vec<(u64, Item)>, StoreError> {
    let mut caught_up = false;
    let mut items = Vec::with_capacity(entries.len());
    for (seq, bytes) in entries {
        let item = match serde_json::from_slice::<Queued>(&bytes) {
            Ok(Queued::Event { raw }) => Some(Item::Event(raw)),
            Ok(Queued::Notice { incident, notice }) => {
                let mut found = incidents.get(&incident);
                if found.is_none() && !caught_up {
                    incidents.catch_up()?;
                    caught_up = true;
                    found = incidents.get(&incident);
                }
                found.map(|i| Item::Notice(Box::new(i), notice))
            }
            Err(_) => {
                tracing::error!(output = %sink.output.name, seq, "dropping an unreadable queue entry");
                None
            }
        };
        match item {
            Some(item) => items.push((seq, item)),
            None => {
                let _ = store.queue_remove(queue, seq);
            }
        }
    }
    Ok(items)
}

/// The most notices one digest mail takes from its queue.
const DIGEST_MAX: usize = 500;

/// Mails the notices held for `sink`'s digest, if there are any: one mail
/// listing each incident once, as it is now. They leave the queue when the
/// server took the mail; each incident records the delivery.
async fn mail_digest(
    sink: &Sink,
    store: &Arc<dyn Store>,
    incidents: &Incidents,
    committer: &Committer,
) -> Result<(), String> {
    let Some((queue, _, _)) = sink.digest() else {
        return Ok(());
    };
    let entries = store
        .queue_peek(&queue, DIGEST_MAX)
        .map_err(|e| format!("reading the digest queue: {e}"))?;
    if entries.is_empty() {
        return Ok(());
    }
    let items = resolve(store, incidents, sink, &queue, entries)
        .map_err(|e| format!("reading incidents: {e}"))?;
    let mut listed: BTreeMap<String, Incident> = BTreeMap::new();
    for (_, item) in &items {
        if let Item::Notice(i, _) = item {
            listed.insert(i.id.clone(), (**i).clone());
        }
    }
    let listed: Vec<Incident> = listed.into_values().collect();
    let name = &sink.output.name;
    let outcome = if listed.is_empty() {
        Ok(())
    } else {
        sink.send_digest(&listed).await
    };
    match &outcome {
        Ok(()) => {
            for (seq, _) in &items {
                if let Err(e) = store.queue_remove(&queue, *seq) {
                    tracing::error!(output = %name, error = %e, "cannot record a delivery");
                }
            }
            for i in &listed {
                let record = Delivery {
                    state: "delivered".into(),
                    attempts: 1,
                    last_error: String::new(),
                    delivered: Some(UnixMs::now()),
                    version: i.version,
                };
                let _ = incidents.record_delivery(&i.id, name, record);
            }
            if !listed.is_empty() {
                sink.delivered
                    .fetch_add(listed.len() as u64, Ordering::Relaxed);
                tracing::info!(output = %name, incidents = listed.len(), "digest mailed");
            }
        }
        Err(e) => {
            sink.failed(e);
            for i in &listed {
                let record = unsent(i, name, "failing", 1, e.clone());
                let _ = incidents.record_delivery(&i.id, name, record);
            }
        }
    }
    let _ = committer.durable().await;
    outcome
}

/// A delivery that did not happen now (`failing` or `rejected`): the last
/// successful one, if any, is kept.
fn unsent(
    incident: &Incident,
    output: &str,
    state: &str,
    attempts: u32,
    error: String,
) -> Delivery {
    let before = incident.deliveries.get(output);
    Delivery {
        state: state.into(),
        attempts,
        last_error: error,
        delivered: before.and_then(|d| d.delivered),
        version: before.map_or(0, |d| d.version),
    }
}

/// A notice is done with (delivered or refused for good): it leaves the
/// queue and the incident records the outcome.
fn settle(
    store: &dyn Store,
    incidents: &Incidents,
    sink: &Sink,
    seq: u64,
    incident: &str,
    record: Delivery,
) {
    let done = store.queue_remove(&sink.queue(), seq).and_then(|()| {
        incidents
            .record_delivery(incident, &sink.output.name, record)
            .map(|_| ())
    });
    if let Err(e) = done {
        tracing::error!(output = %sink.output.name, error = %e, "cannot record a delivery");
    }
}

#[cfg(test)]
mod tests;

//! Lure events: ingest from agents, durable storage, queries, live watch.
//!
//! `quota.rs` bounds what one agent may have stored, `publish.rs` releases
//! live events in the controller's receive order, `watch.rs` is the live
//! view that never silently drops an event.
//!
//! Invariants:
//! - **An agent reports only about its own lures.** The agent comes from
//!   the session's certificate; an event naming a lure registered to
//!   another agent (or to none) is refused and audited.
//! - **Acknowledged means durable.** A batch is acknowledged only after its
//!   events are flushed (group commit across agents).
//! - **Exactly once.** Events are stored by id with compare-and-swap, so a
//!   batch sent again after a lost acknowledgement adds nothing.
//! - **The controller orders events, not the agent.** Each stored event
//!   gets a cursor in receive order; ids must be well-formed ULIDs of a
//!   plausible time, and an agent's event time outside the accepted clock
//!   skew is clamped and the reported time kept beside it.
//! - **One agent cannot crowd out the others.** Past its quota an agent's
//!   events are counted and summarised ([`quota`]), not stored one by one.

mod publish;
pub mod quota;
pub mod watch;

use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ruse_proto::convert::{CREDENTIAL_USE, ReportedEvent};
use ruse_proto::types::{AgentId, InvalidValue, UnixMs, new_ulid};

use crate::deploy::{BatchLookup, Deployer};
use crate::drills::Drills;
use crate::fleet::Fleet;
use crate::incidents::Incidents;
use crate::matching::{self, MatchedOn};
use crate::metrics::Metrics;
use crate::model::{FLOOD, StoredEvent, Suppression};
use crate::outputs::{Outputs, RawEvent};
use crate::store::{Committer, EventScan, Store, StoreError};

use self::publish::Publisher;
use self::quota::{Excess, Quota};
pub use self::watch::{EventWatch, WatchItem};

/// An event as it arrives from an agent, converted only once admitted
/// (events over the agent's quota are counted by kind, never converted).
/// The protocol edge implements it for its message.
pub trait Incoming {
    fn seq(&self) -> u64;
    fn into_kind(self) -> String;
    fn into_event(self) -> Result<ReportedEvent, InvalidValue>;
}

/// The outcome of one batch.
#[derive(Debug, Default)]
pub struct Ingested {
    /// Every event with a sequence up to this is handled (stored, a
    /// duplicate, or refused).
    pub through_seq: u64,
    pub stored: usize,
    pub duplicates: usize,
    /// Why events were refused, one line each.
    pub rejected: Vec<String>,
}

/// Filters for queries and watches.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    pub agent: Option<AgentId>,
    pub lure: Option<String>,
    pub kind: Option<String>,
    /// Received (by the controller's clock) at or after.
    pub since: Option<UnixMs>,
}

impl EventFilter {
    pub fn matches(&self, e: &StoredEvent) -> bool {
        self.agent.as_ref().is_none_or(|a| &e.agent == a)
            && self.lure.as_ref().is_none_or(|l| &e.lure_id == l)
            && self.kind.as_ref().is_none_or(|k| &e.kind == k)
            && self.since.is_none_or(|s| e.received >= s)
    }
}

/// Cursors are reserved at a batch's start with its receive time, so
/// concurrent batches may store times a little out of cursor order: a
/// `since` query reads this much further back before it stops.
const SINCE_SLACK_MS: i64 = 60_000;

/// How events are bounded (from the controller configuration).
#[derive(Debug, Clone, Copy)]
pub struct EventLimits {
    pub per_agent_per_second: u32,
    pub per_agent_burst: u32,
    pub retention: Duration,
    pub max_stored: u64,
    pub max_ahead: Duration,
    pub max_behind: Duration,
}

impl EventLimits {
    pub fn of(c: &crate::config::ControllerConfig) -> Self {
        EventLimits {
            per_agent_per_second: c.agent_events_per_second,
            per_agent_burst: c.agent_event_burst,
            retention: c.event_retention,
            max_stored: c.max_stored_events,
            max_ahead: c.max_clock_ahead,
            max_behind: c.max_clock_behind,
        }
    }
}

/// Events deleted per retention pass (bounded work per pass).
const TRIM_BATCH: usize = 10_000;

/// Event storage and distribution.
/// Events of other controllers kept for slow watchers, at most.
const OTHERS_BUFFER: usize = 16_384;
/// Events of other controllers read per query.
const OTHERS_BATCH: usize = 1_000;

#[derive(Debug)]
pub struct Events {
    store: Arc<dyn Store>,
    committer: Committer,
    deploy: Arc<Deployer>,
    fleet: Arc<Fleet>,
    pub metrics: Arc<Metrics>,
    pub incidents: Arc<Incidents>,
    pub outputs: Arc<Outputs>,
    pub drills: Arc<Drills>,
    limits: EventLimits,
    quota: Quota,
    publisher: Publisher,
    /// Set when the controller stops: watchers end.
    closed: tokio::sync::watch::Sender<bool>,
    /// Events other controllers sharing the store ingested, as they
    /// commit, for watchers here (see [`Events::take_in_others`]).
    others: tokio::sync::broadcast::Sender<Arc<StoredEvent>>,
    /// How far those have been taken in; `None` until
    /// [`Events::follow_others`].
    others_mark: std::sync::Mutex<Option<u64>>,
}

/// What [`Events`] works with.
#[derive(Debug)]
pub struct EventDeps {
    pub store: Arc<dyn Store>,
    pub committer: Committer,
    pub deploy: Arc<Deployer>,
    pub fleet: Arc<Fleet>,
    pub metrics: Arc<Metrics>,
    pub incidents: Arc<Incidents>,
    pub outputs: Arc<Outputs>,
    pub drills: Arc<Drills>,
    pub limits: EventLimits,
}

impl Events {
    pub fn new(d: EventDeps) -> Self {
        Events {
            quota: Quota::new(d.limits.per_agent_per_second, d.limits.per_agent_burst),
            publisher: Publisher::new(d.store.as_ref()),
            closed: tokio::sync::watch::channel(false).0,
            others: tokio::sync::broadcast::channel(OTHERS_BUFFER).0,
            others_mark: std::sync::Mutex::new(None),
            limits: d.limits,
            store: d.store,
            committer: d.committer,
            deploy: d.deploy,
            fleet: d.fleet,
            metrics: d.metrics,
            incidents: d.incidents,
            outputs: d.outputs,
            drills: d.drills,
        }
    }

    /// Starts following the events other controllers sharing the store
    /// ingest: from now on, [`Events::take_in_others`] passes them to
    /// watchers.
    pub fn follow_others(&self) -> Result<(), StoreError> {
        let mark = self.store.events_mark()?;
        *self.others_mark.lock().unwrap_or_else(|e| e.into_inner()) = Some(mark);
        Ok(())
    }

    /// Reads the events other controllers stored since the last call and
    /// passes them to watchers (called when the store says there are some).
    pub fn take_in_others(&self) -> Result<(), StoreError> {
        let mut guard = self.others_mark.lock().unwrap_or_else(|e| e.into_inner());
        let Some(mark) = guard.as_mut() else {
            return Ok(());
        };
        loop {
            let batch = self.store.events_changed(mark, OTHERS_BATCH)?;
            let full = batch.len() == OTHERS_BATCH;
            for e in batch {
                // No watchers is fine.
                let _ = self.others.send(Arc::new(e));
            }
            if !full {
                return Ok(());
            }
        }
    }

    /// Ends every watch (the controller is stopping).
    pub fn close(&self) {
        self.closed.send_replace(true);
    }

    /// Turns true when the controller stops: long-lived streams end then.
    pub fn closing(&self) -> tokio::sync::watch::Receiver<bool> {
        self.closed.subscribe()
    }

    /// Stores a batch from `agent` durably. The caller acknowledges
    /// `through_seq` once this returns (and audits refusals).
    pub async fn ingest(
        &self,
        agent: &AgentId,
        peer: &str,
        batch: Vec<impl Incoming>,
    ) -> Result<Ingested, StoreError> {
        let mut out = Ingested::default();
        let received = UnixMs::now();
        Metrics::add(&self.metrics.events_received, batch.len() as u64);
        // The quota first: what is over it costs a count, nothing more.
        let admitted = self.quota.take(agent, batch.len(), Instant::now());
        let mut events = Vec::with_capacity(admitted);
        let mut over = Vec::new();
        for (n, raw) in batch.into_iter().enumerate() {
            out.through_seq = out.through_seq.max(raw.seq());
            if n >= admitted {
                over.push(raw.into_kind());
                continue;
            }
            match raw.into_event() {
                Ok(e) => events.push(e),
                Err(e) => out.rejected.push(format!("malformed event: {e}")),
            }
        }
        // One look at the registry for the whole batch.
        let lookup = self.deploy.lookup(agent, &events)?;
        let mut records = Vec::with_capacity(events.len());
        for event in events {
            let record = if let Some(decoy) = &event.decoy {
                if !lookup.runs_decoy(&decoy.name) {
                    out.rejected.push(format!(
                        "event {} comes from decoy {}, which this agent does not run",
                        event.id, decoy.name
                    ));
                    continue;
                }
                decoy_event(agent, peer, received, event, &lookup)
            } else {
                let Some(lure) = lookup.owner(&event.lure_id) else {
                    out.rejected.push(format!(
                        "event {} names lure {}, which does not exist",
                        event.id, event.lure_id
                    ));
                    continue;
                };
                if lure.agent != *agent {
                    out.rejected.push(format!(
                        "event {} names lure {}, which belongs to agent {}",
                        event.id, event.lure_id, lure.agent
                    ));
                    continue;
                }
                stored_event(
                    agent,
                    peer,
                    received,
                    event,
                    lure.template.to_string(),
                    lure.campaign.clone(),
                )
            };
            records.push(self.on_controller_clock(record));
        }
        if !over.is_empty() {
            Metrics::add(&self.metrics.events_over_quota, over.len() as u64);
            self.quota.exceeded(agent, over.iter().map(String::as_str));
            // An agent's first excess is summarised at once, later ones
            // every few seconds.
            records.extend(self.flood_summaries(Instant::now(), false, Some(agent)));
        }
        let stored = self
            .store_and_publish(records, &mut out, &lookup.suppressions)
            .await?;
        Metrics::add(&self.metrics.events_duplicate, out.duplicates as u64);
        Metrics::add(&self.metrics.events_rejected, out.rejected.len() as u64);
        log_batch(&stored);
        Ok(out)
    }

    /// `record` with its time inside the accepted skew of the controller's
    /// clock; a time outside is clamped and kept as reported.
    fn on_controller_clock(&self, mut record: StoredEvent) -> StoredEvent {
        let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        let earliest = record.received.saturating_sub(self.limits.max_behind);
        let latest = UnixMs(record.received.0.saturating_add(ms(self.limits.max_ahead)));
        let clamped = UnixMs(record.observed.0.clamp(earliest.0, latest.0));
        if clamped != record.observed {
            record.reported_observed = Some(record.observed);
            record.observed = clamped;
        }
        record
    }

    /// Stores events under new cursors (dropping duplicates), correlates
    /// them, waits until durable, then publishes them in cursor order.
    async fn store_and_publish(
        &self,
        records: Vec<StoredEvent>,
        out: &mut Ingested,
        suppressions: &[Suppression],
    ) -> Result<Vec<Arc<StoredEvent>>, StoreError> {
        if records.is_empty() {
            return Ok(Vec::new());
        }
        let slot = self
            .publisher
            .reserve(self.store.as_ref(), records.len() as u64)?;
        let mut drills = Vec::with_capacity(records.len());
        let mut records = records;
        for (cursor, record) in (slot.first..).zip(records.iter_mut()) {
            record.cursor = cursor;
            let drill = self.drills.claim(record);
            record.drill = drill.is_some();
            drills.push(drill);
        }
        // Inserting takes the incident lock first (a failure leaves nothing
        // stored, and the agent resends the batch); then the incidents
        // other controllers wrote are taken in before correlating.
        let inserted = self.store.insert_events(&records)?;
        self.incidents.hold()?;
        let mut stored = Vec::with_capacity(records.len());
        for ((record, drill), new) in records.into_iter().zip(drills).zip(inserted) {
            if new {
                stored.push((record, drill));
            } else {
                out.duplicates += 1;
            }
        }
        out.stored = stored.len();
        if stored.is_empty() {
            return Ok(Vec::new());
        }
        // Incidents and their output notices commit with the events.
        let changes = self
            .incidents
            .correlate(&stored, suppressions, self.fleet.as_ref())?;
        self.outputs.enqueue(&changes.notices, &self.incidents)?;
        if self.outputs.takes_events() {
            use crate::incidents::Directory;
            let raw: Vec<RawEvent> = stored
                .iter()
                .map(|(e, _)| RawEvent {
                    host: self.fleet.hostname(&e.agent),
                    origin_host: e.origin_agent.as_ref().map(|a| self.fleet.hostname(a)),
                    event: e.clone(),
                })
                .collect();
            self.outputs.enqueue_events(&raw)?;
        }
        self.committer.durable().await?;
        self.incidents.publish(&changes);
        self.outputs.wake();
        for (e, drill) in &stored {
            if let Some(drill) = drill
                && let Some(i) = changes
                    .incidents
                    .iter()
                    .find(|i| i.timeline.iter().any(|t| t.event_id == e.id))
            {
                self.drills.incident(drill, &i.id);
            }
        }
        let stored: Vec<Arc<StoredEvent>> = stored.into_iter().map(|(e, _)| Arc::new(e)).collect();
        for e in &stored {
            self.metrics.event_persisted(&e.kind);
        }
        slot.publish(stored.clone());
        Ok(stored)
    }

    /// `flood` events summarising what agents sent over their quota: those
    /// due now (or every one, with `all`), of one agent or of all.
    fn flood_summaries(&self, now: Instant, all: bool, only: Option<&AgentId>) -> Vec<StoredEvent> {
        self.quota
            .due(now, all)
            .into_iter()
            .filter(|x| only.is_none_or(|a| *a == x.agent))
            .map(|x| flood_event(&x))
            .collect()
    }

    /// Summaries of excess that no later batch carried (an agent that
    /// stopped flooding); run periodically, and with `all` at shutdown.
    pub async fn summarise_floods(&self, all: bool) -> Result<(), StoreError> {
        let records = self.flood_summaries(Instant::now(), all, None);
        if records.is_empty() {
            return Ok(());
        }
        let mut out = Ingested::default();
        let suppressions = self.deploy.suppressions();
        let stored = self
            .store_and_publish(records, &mut out, &suppressions)
            .await?;
        log_batch(&stored);
        Ok(())
    }

    /// Deletes events past the retention or the store budget, a bounded
    /// number per call; returns how many.
    pub fn trim(&self) -> Result<usize, StoreError> {
        let cutoff = UnixMs::now().saturating_sub(self.limits.retention);
        let deleted = self
            .store
            .trim_events(cutoff, self.limits.max_stored, TRIM_BATCH)?;
        if deleted > 0 {
            Metrics::add(&self.metrics.events_trimmed, deleted as u64);
            tracing::info!(
                deleted,
                retention = %ruse_proto::types::format_duration(self.limits.retention),
                max_stored = self.limits.max_stored,
                "old events deleted (retention or the store budget)"
            );
        }
        Ok(deleted)
    }

    /// Stored events matching `filter`, newest `limit` (received before
    /// the cursor `before`, when set), oldest first. With an agent in the
    /// filter only that agent's events are read.
    pub fn query(
        &self,
        filter: &EventFilter,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let mut out = Vec::new();
        let scan = EventScan {
            agent: filter.agent.clone(),
            after: 0,
            before,
            newest_first: true,
        };
        let stop_at = filter
            .since
            .map(|s| UnixMs(s.0.saturating_sub(SINCE_SLACK_MS)));
        self.store.scan_events(&scan, &mut |e| {
            if stop_at.is_some_and(|t| e.received < t) {
                return ControlFlow::Break(());
            }
            if filter.matches(&e) {
                out.push(e);
            }
            if out.len() >= limit {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })?;
        out.reverse();
        Ok(out)
    }
}

/// A decoy event as stored: a credential matching a planted lure makes it
/// a `credential-use` naming the lure and the agent it was planted on;
/// an unmatched password is redacted.
fn decoy_event(
    agent: &AgentId,
    peer: &str,
    received: UnixMs,
    event: ReportedEvent,
    lookup: &BatchLookup,
) -> StoredEvent {
    let matched = match &event.credential {
        Some(c) => lookup.credential(&event.id, c),
        None => None,
    };
    let mut credential = event.credential.clone();
    if matched
        .as_ref()
        .is_none_or(|(_, on)| *on != MatchedOn::UsernamePassword)
        && let Some(c) = &mut credential
    {
        c.password = matching::redact(&c.password);
    }
    let mut record = stored_event(agent, peer, received, event, String::new(), String::new());
    record.credential = credential;
    if let Some((lure, on)) = matched {
        record.kind = CREDENTIAL_USE.into();
        record.lure_id = lure.id.to_string();
        record.lure_revision = 0;
        record.template = lure.template.to_string();
        record.campaign = lure.campaign.clone();
        record.origin_agent = Some(lure.agent.clone());
        record.matched_on = on.as_str().into();
    }
    record
}

/// Logs are for people: decoy contacts and stolen-credential use one line
/// each, lure touches one line per batch (a burst of reads is thousands of
/// events; outputs and `watch` carry every one).
fn log_batch(stored: &[Arc<StoredEvent>]) {
    let mut touches: Option<(&StoredEvent, usize)> = None;
    for e in stored {
        if let Some(d) = &e.decoy {
            if e.kind == CREDENTIAL_USE {
                tracing::warn!(agent = %e.agent, decoy = %d.name, protocol = %d.protocol, source = %d.source_ip, lure = %e.lure_id, origin = %e.origin_agent.as_ref().map(ToString::to_string).unwrap_or_default(), matched_on = %e.matched_on, "stolen credential used");
            } else {
                tracing::info!(agent = %e.agent, decoy = %d.name, protocol = %d.protocol, source = %d.source_ip, kind = %e.kind, "decoy contact");
            }
        } else if e.kind == FLOOD {
            tracing::warn!(agent = %e.agent, detail = %e.detail, "agent over its event quota");
        } else if e.allowed {
            tracing::debug!(agent = %e.agent, lure = %e.lure_id, path = %e.path, rule = %e.allow_rule, "lure read by an allowed reader");
        } else {
            touches = Some(touches.map_or((e, 1), |(first, n)| (first, n + 1)));
        }
    }
    if let Some((e, n)) = touches {
        tracing::warn!(agent = %e.agent, events = n, lure = %e.lure_id, kind = %e.kind, path = %e.path, exe = %e.process.as_ref().map_or("", |p| p.exe.as_str()), "lure events (first shown)");
    }
}

/// The controller's summary of an agent's events over quota.
fn flood_event(x: &Excess) -> StoredEvent {
    let now = UnixMs::now();
    StoredEvent {
        id: new_ulid(),
        cursor: 0,
        agent: x.agent.clone(),
        seq: 0,
        lure_id: String::new(),
        lure_revision: 0,
        template: String::new(),
        campaign: String::new(),
        kind: FLOOD.into(),
        path: String::new(),
        process: None,
        operations: Vec::new(),
        attribution: "controller".into(),
        allowed: false,
        allow_rule: String::new(),
        dropped_before: u32::try_from(x.count).unwrap_or(u32::MAX),
        detail: x.detail(),
        observed: x.first,
        received: now,
        reported_observed: None,
        peer: String::new(),
        decoy: None,
        credential: None,
        origin_agent: None,
        matched_on: String::new(),
        drill: false,
    }
}

/// An event as stored, with the lure's template and campaign from the
/// registry (never from the agent).
fn stored_event(
    agent: &AgentId,
    peer: &str,
    received: UnixMs,
    event: ReportedEvent,
    template: String,
    campaign: String,
) -> StoredEvent {
    StoredEvent {
        id: event.id,
        cursor: 0,
        agent: agent.clone(),
        seq: event.seq,
        lure_id: event.lure_id,
        lure_revision: event.lure_revision,
        template,
        campaign,
        kind: event.kind,
        path: event.path,
        process: event.process,
        operations: event.operations,
        attribution: event.attribution,
        allowed: event.allowed,
        allow_rule: event.allow_rule,
        dropped_before: event.dropped_before,
        detail: event.detail,
        observed: UnixMs(event.observed_ms),
        received,
        reported_observed: None,
        peer: peer.to_owned(),
        decoy: event.decoy,
        credential: None,
        origin_agent: None,
        matched_on: String::new(),
        drill: false,
    }
}

#[cfg(test)]
pub(crate) mod tests_support {
    use super::*;

    /// An empty event of `agent`.
    pub fn event(agent: &AgentId) -> StoredEvent {
        StoredEvent {
            id: new_ulid(),
            agent: agent.clone(),
            seq: 0,
            lure_id: String::new(),
            lure_revision: 0,
            template: String::new(),
            campaign: String::new(),
            kind: String::new(),
            path: String::new(),
            process: None,
            operations: Vec::new(),
            attribution: String::new(),
            allowed: false,
            allow_rule: String::new(),
            dropped_before: 0,
            detail: String::new(),
            observed: UnixMs(0),
            received: UnixMs(0),
            peer: String::new(),
            decoy: None,
            credential: None,
            origin_agent: None,
            matched_on: String::new(),
            drill: false,
            cursor: 0,
            reported_observed: None,
        }
    }
}

//! Lure events: ingest from agents, durable storage, queries, live watch.
//!
//! Invariants:
//! - **An agent reports only about its own lures.** The agent comes from
//!   the session's certificate; an event naming a lure registered to
//!   another agent (or to none) is refused and audited.
//! - **Acknowledged means durable.** A batch is acknowledged only after its
//!   events are flushed (group commit across agents).
//! - **Exactly once.** Events are stored by id with compare-and-swap, so a
//!   batch sent again after a lost acknowledgement adds nothing.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use ruse_proto::agent::v1 as pb;
use ruse_proto::convert::{
    CREDENTIAL_USE, DecoyContact, EventProcess, PresentedCredential, ReportedEvent,
};
use ruse_proto::types::{AgentId, UnixMs, ulid_floor};

use crate::deploy::Deployer;
use crate::drills::Drills;
use crate::fleet::Fleet;
use crate::incidents::Incidents;
use crate::matching::{self, MatchedOn};
use crate::metrics::Metrics;
use crate::outputs::Outputs;
use crate::store::{Committer, Store, StoreError};

/// An event as stored and shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredEvent {
    pub id: String,
    pub agent: AgentId,
    pub seq: u64,
    pub lure_id: String,
    pub lure_revision: u64,
    /// From the registry, not from the agent.
    pub template: String,
    pub campaign: String,
    pub kind: String,
    pub path: String,
    pub process: Option<EventProcess>,
    pub operations: Vec<String>,
    pub attribution: String,
    pub allowed: bool,
    pub allow_rule: String,
    pub dropped_before: u32,
    pub detail: String,
    pub observed: UnixMs,
    pub received: UnixMs,
    /// The agent's address when it reported this.
    pub peer: String,
    /// For events from decoy services: which decoy, and who connected.
    #[serde(default)]
    pub decoy: Option<DecoyContact>,
    /// What the client presented (a password matching no lure redacted).
    #[serde(default)]
    pub credential: Option<PresentedCredential>,
    /// For credential-use events: the agent the lure was planted on.
    #[serde(default)]
    pub origin_agent: Option<AgentId>,
    /// For credential-use events: what matched.
    #[serde(default)]
    pub matched_on: String,
    /// Caused by an incident-response drill, not an intruder.
    #[serde(default)]
    pub drill: bool,
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
    /// Observed at or after.
    pub since: Option<UnixMs>,
}

impl EventFilter {
    pub fn matches(&self, e: &StoredEvent) -> bool {
        self.agent.as_ref().is_none_or(|a| &e.agent == a)
            && self.lure.as_ref().is_none_or(|l| &e.lure_id == l)
            && self.kind.as_ref().is_none_or(|k| &e.kind == k)
            && self.since.is_none_or(|s| e.observed >= s)
    }
}

/// Agents' clocks may run behind; a `since` query looks this much further
/// back in the id order and then filters on the observed time.
const CLOCK_SLACK_MS: i64 = 24 * 3600 * 1000;
/// Live events buffered per watcher before a slow one loses some.
const LIVE_BUFFER: usize = 4096;

/// Event storage and distribution.
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
    live: broadcast::Sender<Arc<StoredEvent>>,
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
}

impl Events {
    pub fn new(d: EventDeps) -> Self {
        Events {
            store: d.store,
            committer: d.committer,
            deploy: d.deploy,
            fleet: d.fleet,
            metrics: d.metrics,
            incidents: d.incidents,
            outputs: d.outputs,
            drills: d.drills,
            live: broadcast::channel(LIVE_BUFFER).0,
        }
    }

    /// Stores a batch from `agent` durably. The caller acknowledges
    /// `through_seq` once this returns (and audits refusals).
    pub async fn ingest(
        &self,
        agent: &AgentId,
        peer: &str,
        batch: Vec<pb::Event>,
    ) -> Result<Ingested, StoreError> {
        let mut out = Ingested::default();
        let received = UnixMs::now();
        let mut stored = Vec::new();
        Metrics::add(&self.metrics.events_received, batch.len() as u64);
        for raw in batch {
            out.through_seq = out.through_seq.max(raw.seq);
            let event = match ReportedEvent::try_from(raw) {
                Ok(e) => e,
                Err(e) => {
                    out.rejected.push(format!("malformed event: {e}"));
                    continue;
                }
            };
            let record = if let Some(decoy) = &event.decoy {
                if !self.deploy.runs_decoy(agent, &decoy.name) {
                    out.rejected.push(format!(
                        "event {} comes from decoy {}, which this agent does not run",
                        event.id, decoy.name
                    ));
                    continue;
                }
                self.decoy_event(agent, peer, received, event)?
            } else {
                let Some(lure) = self.deploy.lure_owner(&event.lure_id)? else {
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
            let mut record = record;
            let drill = self.drills.claim(&record);
            record.drill = drill.is_some();
            if self.store.insert_event(&record)? {
                stored.push((record, drill));
            } else {
                out.duplicates += 1;
            }
        }
        if !stored.is_empty() {
            // Incidents and their output notices commit with the events.
            let changes = self.incidents.correlate(
                &stored,
                &self.deploy.suppressions(),
                self.fleet.as_ref(),
            )?;
            self.outputs.enqueue(&changes.notices, &self.incidents)?;
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
        }
        let stored: Vec<StoredEvent> = stored.into_iter().map(|(e, _)| e).collect();
        out.stored = stored.len();
        Metrics::add(&self.metrics.events_duplicate, out.duplicates as u64);
        Metrics::add(&self.metrics.events_rejected, out.rejected.len() as u64);
        // Logs are for people: decoy contacts and stolen-credential use one
        // line each, lure touches one line per batch (a burst of reads is
        // thousands of events; outputs and `watch` carry every one).
        let mut touches: Option<(&StoredEvent, usize)> = None;
        for e in &stored {
            self.metrics.event_persisted(&e.kind);
            if let Some(d) = &e.decoy {
                if e.kind == CREDENTIAL_USE {
                    tracing::warn!(agent = %e.agent, decoy = %d.name, protocol = %d.protocol, source = %d.source_ip, lure = %e.lure_id, origin = %e.origin_agent.as_ref().map(ToString::to_string).unwrap_or_default(), matched_on = %e.matched_on, "stolen credential used");
                } else {
                    tracing::info!(agent = %e.agent, decoy = %d.name, protocol = %d.protocol, source = %d.source_ip, kind = %e.kind, "decoy contact");
                }
            } else if e.allowed {
                tracing::debug!(agent = %e.agent, lure = %e.lure_id, path = %e.path, rule = %e.allow_rule, "lure read by an allowed reader");
            } else {
                touches = Some(touches.map_or((e, 1), |(first, n)| (first, n + 1)));
            }
        }
        if let Some((e, n)) = touches {
            tracing::warn!(agent = %e.agent, events = n, lure = %e.lure_id, kind = %e.kind, path = %e.path, exe = %e.process.as_ref().map_or("", |p| p.exe.as_str()), "lure events (first shown)");
        }
        for e in stored {
            // No receivers is fine.
            let _ = self.live.send(Arc::new(e));
        }
        Ok(out)
    }

    /// A decoy event as stored: matched against the lure registry, and
    /// with an unmatched password redacted.
    fn decoy_event(
        &self,
        agent: &AgentId,
        peer: &str,
        received: UnixMs,
        event: ReportedEvent,
    ) -> Result<StoredEvent, StoreError> {
        let matched = match &event.credential {
            Some(c) => self.deploy.match_credential(c)?,
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
        Ok(record)
    }

    /// Stored events matching `filter`, newest `limit`, oldest first.
    pub fn query(
        &self,
        filter: &EventFilter,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let from = filter
            .since
            .map(|s| ulid_floor(s.0.saturating_sub(CLOCK_SLACK_MS)))
            .unwrap_or_default();
        self.store.events(&from, limit, &mut |e| filter.matches(e))
    }

    /// Events as they are stored, from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<StoredEvent>> {
        self.live.subscribe()
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
            id: ruse_proto::types::new_ulid(),
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
        }
    }
}

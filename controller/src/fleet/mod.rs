//! The fleet: every enrolled agent in memory, its live session and health.
//!
//! Invariants:
//! - **At most one live session per agent.** A new session replaces the old
//!   one, which is told to close.
//! - **State is derived, not stored**: revoked if revoked; online or
//!   degraded while a session is open and heartbeats arrive within
//!   `offline_after`; offline otherwise. No timer runs per agent.
//! - **Last-seen times reach the store in batches** ([`Fleet::take_dirty`]),
//!   at most once a minute per agent while nothing else changes.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use ruse_proto::convert::{AgentState, HostFacts, Platform};
use ruse_proto::types::{AgentId, Identity, Labels, UnixMs};

use crate::model::{AgentRecord, Applied, Revocation, SessionRecord};

/// Why the controller ends a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    Revoked,
    /// The same agent opened a newer session.
    Superseded,
    ShuttingDown,
}

/// Why a session may not start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionRefused {
    #[error("agent {0} is revoked")]
    Revoked(AgentId),
    #[error("agent {0} is not enrolled with this controller")]
    Unknown(AgentId),
}

/// Health reported in the last heartbeat.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Health {
    pub degraded: bool,
    pub problems: Vec<String>,
    pub outbox_depth: u64,
    pub outbox_dropped: u64,
    pub rate_limited: u64,
    /// fanotify or inotify.
    pub watcher: String,
}

#[derive(Debug)]
struct LiveSession {
    id: u64,
    peer: SocketAddr,
    close: Option<oneshot::Sender<CloseReason>>,
}

#[derive(Debug)]
struct Entry {
    record: AgentRecord,
    /// `record.labels()`, kept current by every change to its sources:
    /// selectors are matched against every agent on each campaign pass
    /// and status query, and merging four label sets each time was a
    /// fifth of the controller's CPU during a 10k-agent push (perf).
    labels: Arc<Labels>,
    session: Option<LiveSession>,
    last_heartbeat: Instant,
    health: Health,
    /// When `record.last_seen` was last written to the store.
    persisted_seen: UnixMs,
}

impl Entry {
    /// After any change to the record's label sources.
    fn relabel(&mut self) {
        self.labels = Arc::new(self.record.labels());
    }

    fn new(record: AgentRecord, now: Instant) -> Mutex<Entry> {
        Mutex::new(Entry {
            labels: Arc::new(record.labels()),
            persisted_seen: record.last_seen,
            record,
            session: None,
            last_heartbeat: now,
            health: Health::default(),
        })
    }
}

/// A point-in-time view of one agent.
#[derive(Debug, Clone)]
pub struct AgentView {
    pub record: AgentRecord,
    /// The labels selectors match (`record.labels()`).
    pub labels: Arc<Labels>,
    pub state: AgentState,
    pub health: Health,
    pub peer: Option<SocketAddr>,
    /// The controller holding its session, when online: this one, or
    /// another live controller sharing the store.
    pub controller: Option<String>,
}

/// An agent as selectors and rollouts see it.
#[derive(Debug, Clone)]
pub struct Member {
    pub id: AgentId,
    pub state: AgentState,
    pub labels: Arc<Labels>,
    /// When it was last seen (sessions and heartbeats).
    pub last_seen: UnixMs,
    /// Its session is held by another live controller sharing the store.
    pub elsewhere: bool,
    /// Its operating system family, which decides where its lures go.
    pub platform: Platform,
}

/// A started session: its id and the signal that ends it.
#[derive(Debug)]
pub struct SessionTicket {
    pub id: u64,
    pub closed: oneshot::Receiver<CloseReason>,
}

/// How often last-seen alone is worth a store write.
const SEEN_PERSIST_EVERY: Duration = Duration::from_secs(60);

/// All agents of this controller.
#[derive(Debug)]
pub struct Fleet {
    agents: RwLock<HashMap<AgentId, Mutex<Entry>>>,
    dirty: Mutex<HashSet<AgentId>>,
    offline_after: Duration,
    next_session: AtomicU64,
    /// This controller's name, recorded with each session it holds.
    name: OnceLock<String>,
    /// Controllers sharing the store that are alive now (their names).
    live_controllers: RwLock<HashSet<String>>,
}

impl Fleet {
    pub fn new(records: Vec<AgentRecord>, offline_after: Duration) -> Self {
        let now = Instant::now();
        let agents = records
            .into_iter()
            .map(|record| (record.id.clone(), Entry::new(record, now)))
            .collect();
        Fleet {
            agents: RwLock::new(agents),
            dirty: Mutex::new(HashSet::new()),
            offline_after,
            next_session: AtomicU64::new(1),
            name: OnceLock::new(),
            live_controllers: RwLock::new(HashSet::new()),
        }
    }

    /// Names this controller (once, before it serves).
    pub fn set_name(&self, name: String) {
        let _ = self.name.set(name);
    }

    pub fn name(&self) -> &str {
        self.name.get().map_or("", String::as_str)
    }

    /// The controllers sharing the store that are alive now.
    pub fn set_live_controllers(&self, names: HashSet<String>) {
        *self
            .live_controllers
            .write()
            .unwrap_or_else(|e| e.into_inner()) = names;
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<AgentId, Mutex<Entry>>> {
        self.agents.read().unwrap_or_else(|e| e.into_inner())
    }

    fn with_entry<R>(&self, id: &AgentId, f: impl FnOnce(&mut Entry) -> R) -> Option<R> {
        let agents = self.read();
        let entry = agents.get(id)?;
        let mut entry = entry.lock().unwrap_or_else(|e| e.into_inner());
        Some(f(&mut entry))
    }

    fn mark_dirty(&self, id: &AgentId) {
        self.dirty
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.clone());
    }

    pub fn len(&self) -> usize {
        self.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds a newly enrolled agent (already durable in the store).
    pub fn insert(&self, record: AgentRecord) {
        let mut agents = self.agents.write().unwrap_or_else(|e| e.into_inner());
        agents.insert(record.id.clone(), Entry::new(record, Instant::now()));
    }

    /// The hostname the agent reported (empty if none), without copying
    /// its record: correlation asks for it per event.
    pub fn hostname_of(&self, id: &AgentId) -> Option<String> {
        self.with_entry(id, |e| e.record.facts.hostname.clone())
    }

    /// The labels selectors match, shared.
    pub fn labels_of(&self, id: &AgentId) -> Option<Arc<Labels>> {
        self.with_entry(id, |e| e.labels.clone())
    }

    pub fn record(&self, id: &AgentId) -> Option<AgentRecord> {
        self.with_entry(id, |e| e.record.clone())
    }

    /// Records a renewed certificate; returns the record to persist.
    pub fn set_certificate(
        &self,
        id: &AgentId,
        serial: &str,
        not_after: UnixMs,
    ) -> Option<AgentRecord> {
        self.with_entry(id, |e| {
            e.record.cert_serial = serial.to_owned();
            e.record.cert_not_after = not_after;
            e.record.clone()
        })
    }

    /// Starts a session for `id`, closing any previous one.
    pub fn begin_session(
        &self,
        id: &AgentId,
        peer: SocketAddr,
    ) -> Result<SessionTicket, SessionRefused> {
        let (tx, rx) = oneshot::channel();
        let session_id = self.next_session.fetch_add(1, Ordering::Relaxed);
        let outcome = self.with_entry(id, |e| {
            if e.record.revoked.is_some() {
                return Err(SessionRefused::Revoked(id.clone()));
            }
            if let Some(mut old) = e.session.take()
                && let Some(close) = old.close.take()
            {
                let _ = close.send(CloseReason::Superseded);
            }
            e.session = Some(LiveSession {
                id: session_id,
                peer,
                close: Some(tx),
            });
            e.last_heartbeat = Instant::now();
            let now = UnixMs::now();
            e.record.last_seen = now;
            e.record.last_peer = peer.to_string();
            e.record.session = Some(SessionRecord {
                controller: self.name().to_owned(),
                since: now,
                ended: None,
            });
            Ok(())
        });
        match outcome {
            None => Err(SessionRefused::Unknown(id.clone())),
            Some(Err(e)) => Err(e),
            Some(Ok(())) => {
                self.mark_dirty(id);
                Ok(SessionTicket {
                    id: session_id,
                    closed: rx,
                })
            }
        }
    }

    /// Sets and removes labels as an admin; returns the record to persist.
    /// A removed key stays hidden, whichever source sets it, until set
    /// again.
    pub fn set_admin_labels(
        &self,
        id: &AgentId,
        set: &Labels,
        remove: &[String],
    ) -> Option<AgentRecord> {
        let record = self.with_entry(id, |e| {
            let r = &mut e.record;
            r.admin_labels = r.admin_labels.overlaid_with(set).without(remove);
            r.removed_labels.retain(|k| set.get(k).is_none());
            for key in remove {
                if !r.removed_labels.contains(key) {
                    r.removed_labels.push(key.clone());
                }
            }
            r.removed_labels.sort();
            e.relabel();
            e.record.clone()
        });
        if record.is_some() {
            self.mark_dirty(id);
        }
        record
    }

    /// Records what the agent said about itself in its Hello.
    pub fn hello(&self, id: &AgentId, session: u64, facts: HostFacts) {
        let changed = self.with_entry(id, |e| {
            if e.session.as_ref().map(|s| s.id) != Some(session) || e.record.facts == facts {
                return false;
            }
            e.record.facts = facts;
            e.relabel();
            true
        });
        if changed == Some(true) {
            self.mark_dirty(id);
        }
    }

    /// Records a heartbeat.
    pub fn heartbeat(&self, id: &AgentId, session: u64, health: Health) {
        let persist = self.with_entry(id, |e| {
            if e.session.as_ref().map(|s| s.id) != Some(session) {
                return false;
            }
            let now = UnixMs::now();
            e.last_heartbeat = Instant::now();
            e.record.last_seen = now;
            let health_changed = e.health.degraded != health.degraded;
            e.health = health;
            health_changed || e.persisted_seen.until(now) >= SEEN_PERSIST_EVERY
        });
        if persist == Some(true) {
            self.mark_dirty(id);
        }
    }

    /// Records what the agent applied (for controllers sharing the store).
    pub fn set_applied(&self, id: &AgentId, applied: Applied) {
        let changed = self.with_entry(id, |e| {
            if e.record.applied.as_ref() == Some(&applied) {
                return false;
            }
            e.record.applied = Some(applied);
            true
        });
        if changed == Some(true) {
            self.mark_dirty(id);
        }
    }

    /// Ends a session, if it is still the agent's current one.
    pub fn end_session(&self, id: &AgentId, session: u64) {
        let ended = self.with_entry(id, |e| {
            if e.session.as_ref().map(|s| s.id) != Some(session) {
                return false;
            }
            e.session = None;
            let now = UnixMs::now();
            e.record.last_seen = now;
            if let Some(s) = &mut e.record.session {
                s.ended = Some(now);
            }
            true
        });
        if ended == Some(true) {
            self.mark_dirty(id);
        }
    }

    /// Marks the agent revoked and closes its session. Returns the updated
    /// record, which the caller must persist; `None` if there is no such
    /// agent.
    pub fn revoke(&self, id: &AgentId, by: &str, reason: &str) -> Option<AgentRecord> {
        self.with_entry(id, |e| {
            if e.record.revoked.is_none() {
                e.record.revoked = Some(Revocation {
                    at: UnixMs::now(),
                    by: by.to_owned(),
                    reason: reason.to_owned(),
                });
            }
            if let Some(mut session) = e.session.take()
                && let Some(close) = session.close.take()
            {
                let _ = close.send(CloseReason::Revoked);
            }
            e.record.clone()
        })
    }

    /// Takes in an agent's record as another controller sharing the store
    /// wrote it: a new agent is added; of a known one, what admins change
    /// is taken (labels; a revocation, which closes a live session here;
    /// a deletion). Revocation and deletion are never undone this way.
    /// Returns whether anything changed.
    pub fn merge_stored(&self, stored: AgentRecord) -> bool {
        let known = self.with_entry(&stored.id, |e| {
            let mut changed = false;
            let r = &mut e.record;
            if (&r.token_labels, &r.admin_labels, &r.removed_labels)
                != (
                    &stored.token_labels,
                    &stored.admin_labels,
                    &stored.removed_labels,
                )
            {
                r.token_labels = stored.token_labels.clone();
                r.admin_labels = stored.admin_labels.clone();
                r.removed_labels = stored.removed_labels.clone();
                e.relabel();
                changed = true;
            }
            if e.record.revoked.is_none() && stored.revoked.is_some() {
                e.record.revoked = stored.revoked.clone();
                if let Some(mut session) = e.session.take()
                    && let Some(close) = session.close.take()
                {
                    let _ = close.send(CloseReason::Revoked);
                }
                changed = true;
            }
            if e.record.deleted.is_none() && stored.deleted.is_some() {
                e.record.deleted = stored.deleted;
                changed = true;
            }
            // A later session (as the store keeps it: the later `since`
            // wins, so controllers' clocks should agree), held by another
            // controller: this one's session, if it has one, is stale (an
            // agent holds one).
            if let Some(theirs) = &stored.session
                && theirs.controller != self.name()
                && e.record
                    .session
                    .as_ref()
                    .is_none_or(|ours| *ours != *theirs && theirs.since >= ours.since)
            {
                e.record.session = stored.session.clone();
                e.record.last_seen = e.record.last_seen.max(stored.last_seen);
                e.record.last_peer = stored.last_peer.clone();
                if let Some(mut session) = e.session.take()
                    && let Some(close) = session.close.take()
                {
                    let _ = close.send(CloseReason::Superseded);
                }
            }
            changed
        });
        match known {
            Some(changed) => changed,
            None => {
                self.insert(stored);
                true
            }
        }
    }

    /// Revokes an agent (if it is not already) and marks it deleted.
    pub fn delete(&self, id: &AgentId, by: &str, reason: &str) -> Option<AgentRecord> {
        self.revoke(id, by, reason)?;
        let record = self.with_entry(id, |e| {
            e.record.deleted.get_or_insert_with(UnixMs::now);
            e.record.clone()
        });
        if record.is_some() {
            self.mark_dirty(id);
        }
        record
    }

    /// Tells every live session to close (shutdown).
    pub fn close_all(&self) {
        for entry in self.read().values() {
            let mut entry = entry.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(session) = entry.session.as_mut()
                && let Some(close) = session.close.take()
            {
                let _ = close.send(CloseReason::ShuttingDown);
            }
        }
    }

    /// Every agent's id, state and labels: what selectors and rollouts
    /// need, without copying whole records.
    pub fn members(&self) -> Vec<Member> {
        let now = Instant::now();
        let mut out: Vec<Member> = self
            .read()
            .values()
            .map(|entry| {
                let e = entry.lock().unwrap_or_else(|e| e.into_inner());
                Member {
                    id: e.record.id.clone(),
                    state: self.state(&e, now),
                    labels: e.labels.clone(),
                    last_seen: e.record.last_seen,
                    elsewhere: self.held_elsewhere(&e).is_some(),
                    platform: e.record.facts.platform,
                }
            })
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    /// The state shown for `e`, and the controller holding its session:
    /// online at another live controller if that one holds it.
    fn shown(&self, e: &Entry, now: Instant) -> (AgentState, Option<String>) {
        let local = self.state(e, now);
        match (local, self.held_elsewhere(e)) {
            (AgentState::Offline, Some(other)) => (AgentState::Online, Some(other)),
            (AgentState::Online | AgentState::Degraded, _) => (local, Some(self.name().to_owned())),
            (state, _) => (state, None),
        }
    }

    fn view(&self, e: &Entry, now: Instant) -> AgentView {
        let (state, controller) = self.shown(e, now);
        AgentView {
            record: e.record.clone(),
            labels: e.labels.clone(),
            state,
            health: e.health.clone(),
            peer: e.session.as_ref().map(|s| s.peer),
            controller,
        }
    }

    /// The other live controller holding `e`'s session, if one does.
    fn held_elsewhere(&self, e: &Entry) -> Option<String> {
        let s = e.record.session.as_ref()?;
        if e.session.is_some() || s.ended.is_some() || s.controller == self.name() {
            return None;
        }
        self.live_controllers
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&s.controller)
            .then(|| s.controller.clone())
    }

    fn state(&self, e: &Entry, now: Instant) -> AgentState {
        if e.record.revoked.is_some() {
            AgentState::Revoked
        } else if e.session.is_some() && now.duration_since(e.last_heartbeat) <= self.offline_after
        {
            if e.health.degraded {
                AgentState::Degraded
            } else {
                AgentState::Online
            }
        } else {
            AgentState::Offline
        }
    }

    pub fn get(&self, id: &AgentId) -> Option<AgentView> {
        let now = Instant::now();
        let agents = self.read();
        let entry = agents.get(id)?.lock().unwrap_or_else(|e| e.into_inner());
        Some(self.view(&entry, now))
    }

    /// Every agent's shown state, with its last reported health, without
    /// copying its record: the metrics read this every scrape, and a copy
    /// of 10,000 records each time (~30 MB) kept the controller serving
    /// them ~10 KiB per agent larger than the others.
    pub fn states(&self) -> Vec<(AgentState, Health)> {
        let now = Instant::now();
        self.read()
            .values()
            .map(|entry| {
                let e = entry.lock().unwrap_or_else(|e| e.into_inner());
                (self.shown(&e, now).0, e.health.clone())
            })
            .collect()
    }

    /// Agents whose labels match `selector`, ordered by id.
    pub fn list(&self, selector: &Labels) -> Vec<AgentView> {
        let now = Instant::now();
        let mut out: Vec<AgentView> = self
            .read()
            .values()
            .filter_map(|entry| {
                let entry = entry.lock().unwrap_or_else(|e| e.into_inner());
                entry
                    .labels
                    .matches(selector)
                    .then(|| self.view(&entry, now))
            })
            .collect();
        out.sort_by(|a, b| a.record.id.cmp(&b.record.id));
        out
    }

    /// Records changed since the last call, to be written to the store.
    pub fn take_dirty(&self) -> Vec<AgentRecord> {
        let ids: Vec<AgentId> = self
            .dirty
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .collect();
        ids.iter()
            .filter_map(|id| {
                self.with_entry(id, |e| {
                    e.persisted_seen = e.record.last_seen;
                    e.record.clone()
                })
            })
            .collect()
    }

    /// Puts records back in the dirty set after a failed write.
    pub fn restore_dirty(&self, records: &[AgentRecord]) {
        let mut dirty = self.dirty.lock().unwrap_or_else(|e| e.into_inner());
        dirty.extend(records.iter().map(|r| r.id.clone()));
    }
}

impl ruse_pki::Denylist for Fleet {
    fn is_denied(&self, identity: &Identity) -> bool {
        match identity {
            Identity::Agent(id) => self
                .with_entry(id, |e| e.record.revoked.is_some())
                .unwrap_or(false),
            Identity::Admin(_) => false,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests_support {
    use super::*;

    /// An enrolled agent with `labels` (comma-separated pairs) as facts.
    pub fn record(id: &str, labels: &str) -> AgentRecord {
        AgentRecord {
            id: id.parse().unwrap(),
            facts: HostFacts::default(),
            token_labels: Labels::parse_pairs([labels]).unwrap(),
            admin_labels: Labels::new(),
            removed_labels: Vec::new(),
            enrolled_at: UnixMs(0),
            enrolled_with: "t".parse().unwrap(),
            last_seen: UnixMs(0),
            last_peer: String::new(),
            cert_serial: String::new(),
            cert_not_after: UnixMs(0),
            revoked: None,
            deleted: None,
            session: None,
            applied: None,
        }
    }
}

#[cfg(test)]
mod tests;

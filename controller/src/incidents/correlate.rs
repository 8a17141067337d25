//! The correlator: correlation keys per event, the index of open
//! incidents by key, opening, joining and escalating, suppressions.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

// Seeded fast hashing (see deploy/mod.rs): every ingested batch looks up the
// correlation index per event and checks each touched incident's timeline
// (up to 500 entries) against the batch's event ids; with SipHash that
// check alone was 3.6 % of the controller's samples at saturation (perf).
use foldhash::{HashMap, HashMapExt};

use ruse_proto::convert::CREDENTIAL_USE;
use ruse_proto::types::{AgentId, UnixMs, new_ulid};

use super::present::{event_severity, summary, techniques};
use super::present::{matched_identifier, title};
use super::{Directory, Outcome};
use crate::model::{
    Hop, Incident, MAX_INDICATORS, MAX_TIMELINE, Severity, Status, StoredEvent, Suppression,
    Timeline, TimelineEntry,
};

/// Correlation keys kept per incident (each indicator above can bring
/// one); they re-index the incident at start.
pub(super) const MAX_KEYS: usize = 4 * MAX_INDICATORS;

/// Adds `value` to `set` unless the set already holds `max` values.
pub(super) fn add_bounded<T: Ord>(set: &mut BTreeSet<T>, value: T, max: usize) {
    if set.len() < max {
        set.insert(value);
    }
}

pub(super) fn suppressed_by<'a>(
    e: &StoredEvent,
    rules: &'a [Suppression],
    dir: &dyn Directory,
    now: UnixMs,
) -> Option<&'a Suppression> {
    rules.iter().find(|s| {
        if s.expires.is_some_and(|t| t <= now) {
            return false;
        }
        if !s.selector.is_empty() && !dir.labels(&e.agent).matches(&s.selector) {
            return false;
        }
        if let Some(cidr) = &s.source {
            let ip = e
                .decoy
                .as_ref()
                .and_then(|d| d.source_ip.parse::<std::net::IpAddr>().ok());
            if !ip.is_some_and(|ip| cidr.contains(ip)) {
                return false;
            }
        }
        if !s.process.is_empty() {
            let exe = e.process.as_ref().map_or("", |p| p.exe.as_str());
            let ok = match s.process.strip_suffix('*') {
                Some(prefix) => exe.starts_with(prefix),
                None => exe == s.process,
            };
            if !ok {
                return false;
            }
        }
        s.template.is_empty() || s.template == e.template
    })
}

/// Correlation keys of an event. A drill's events only meet that drill's.
pub(super) fn keys(e: &StoredEvent, drill: Option<&str>) -> Vec<String> {
    let prefix = drill.map(|d| format!("drill:{d}:")).unwrap_or_default();
    let mut keys = Vec::new();
    if e.kind == crate::model::FLOOD {
        // An agent over its quota is an incident of its own: it says
        // nothing about which lure or intruder its events were about.
        keys.push(format!("{prefix}flood:{}", e.agent));
        return keys;
    }
    if let Some(d) = &e.decoy {
        keys.push(format!("{prefix}source:{}", d.source_ip));
        if e.kind == CREDENTIAL_USE {
            keys.push(format!("{prefix}lure:{}", e.lure_id));
            if let Some(origin) = &e.origin_agent {
                keys.push(format!("{prefix}host:{origin}"));
            }
        }
    } else {
        keys.push(format!("{prefix}host:{}", e.agent));
        keys.push(format!("{prefix}lure:{}", e.lure_id));
        if let Some(p) = &e.process {
            keys.push(format!("{prefix}proc:{}:{}", e.agent, p.exe));
        }
    }
    keys
}

/// Incremental correlation over open incidents.
#[derive(Debug)]
pub struct Correlator {
    pub(super) window: Duration,
    /// Open and acknowledged incidents, by id; shared copy-on-write with
    /// the outcome of the last correlation.
    pub(super) live: HashMap<String, std::sync::Arc<Incident>>,
    /// Key → (incident id, last seen).
    pub(super) index: HashMap<String, (String, UnixMs)>,
    /// When [`Correlator::expire`] next scans the index.
    pub(super) next_expiry: UnixMs,
    /// Timeline entries added since [`Correlator::take_added`], with
    /// their incident's id: what a batch must write. [`Incidents`] takes
    /// them after every batch; at most [`MAX_TIMELINE`] per incident are
    /// ever added.
    pub(super) added: Vec<(String, std::sync::Arc<TimelineEntry>)>,
}

/// How often the index is swept for keys past the window. Lookups check
/// the window themselves, so the sweep only bounds memory; sweeping once
/// per batch cost ~2 % of ingest with 10k keys.
pub(super) const EXPIRE_EVERY_MS: i64 = 1_000;

impl Correlator {
    /// Resumes from stored incidents (resolved ones are not indexed).
    pub fn new(window: Duration, incidents: impl IntoIterator<Item = Incident>) -> Self {
        let mut c = Correlator {
            window,
            live: HashMap::new(),
            index: HashMap::new(),
            next_expiry: UnixMs(i64::MIN),
            added: Vec::new(),
        };
        for i in incidents {
            if i.status != Status::Resolved {
                for k in &i.keys {
                    c.index.insert(k.clone(), (i.id.clone(), i.last_seen));
                }
                c.live.insert(i.id.clone(), std::sync::Arc::new(i));
            }
        }
        c
    }

    pub fn get(&self, id: &str) -> Option<&std::sync::Arc<Incident>> {
        self.live.get(id)
    }

    /// The timeline entries added since the last call, by incident id.
    pub fn take_added(&mut self) -> Vec<(String, std::sync::Arc<TimelineEntry>)> {
        std::mem::take(&mut self.added)
    }

    /// Replaces a live incident after a lifecycle change; a resolved one
    /// stops correlating.
    pub fn replace(&mut self, incident: Incident) {
        if incident.status == Status::Resolved {
            self.live.remove(&incident.id);
            self.index.retain(|_, (id, _)| *id != incident.id);
        } else {
            self.live
                .insert(incident.id.clone(), std::sync::Arc::new(incident));
        }
    }

    /// Takes in `incident` as another controller sharing the store wrote
    /// it: its newest state, and its keys, unless a key points at an
    /// incident seen later.
    pub fn take_in(&mut self, incident: std::sync::Arc<Incident>) {
        if incident.status == Status::Resolved {
            self.live.remove(&incident.id);
            self.index.retain(|_, (id, _)| *id != incident.id);
            return;
        }
        for k in &incident.keys {
            let newer = self
                .index
                .get(k)
                .is_some_and(|(id, last)| *id != incident.id && *last > incident.last_seen);
            if !newer {
                self.index
                    .insert(k.clone(), (incident.id.clone(), incident.last_seen));
            }
        }
        self.live.insert(incident.id.clone(), incident);
    }

    /// Takes `incident` as the live copy of an incident it correlates.
    pub fn share(&mut self, incident: std::sync::Arc<Incident>) {
        if let Some(live) = self.live.get_mut(&incident.id) {
            *live = incident;
        }
    }

    /// Live incidents, for views.
    pub fn live(&self) -> impl Iterator<Item = &Incident> {
        self.live.values().map(|i| &**i)
    }

    /// Forgets index entries older than the window (bounded memory), at
    /// most once every [`EXPIRE_EVERY_MS`].
    pub fn expire(&mut self, now: UnixMs) {
        if now < self.next_expiry {
            return;
        }
        self.next_expiry = UnixMs(now.0.saturating_add(EXPIRE_EVERY_MS));
        let window = i64::try_from(self.window.as_millis()).unwrap_or(i64::MAX);
        self.index
            .retain(|_, (_, last)| now.0.saturating_sub(last.0) <= window);
    }

    /// Correlates one stored event.
    pub fn correlate(
        &mut self,
        e: &StoredEvent,
        drill: Option<&str>,
        suppressions: &[Suppression],
        dir: &dyn Directory,
        now: UnixMs,
    ) -> Outcome {
        let Some(severity) = event_severity(e) else {
            return Outcome::Ignored;
        };
        if drill.is_none()
            && let Some(s) = suppressed_by(e, suppressions, dir, now)
        {
            return Outcome::Suppressed(s.name.clone());
        }
        let keys = keys(e, drill);
        let window = i64::try_from(self.window.as_millis()).unwrap_or(i64::MAX);
        let at = e.observed;
        // The oldest live incident any key points at, within the window.
        let found = keys
            .iter()
            .filter_map(|k| self.index.get(k))
            .filter(|(_, last)| (at.0 - last.0).abs() <= window)
            .filter_map(|(id, _)| self.live.get(id))
            .min_by_key(|i| (i.created, i.id.clone()))
            .map(|i| i.id.clone());
        let (mut shared, opened) = match found {
            Some(id) => match self.live.remove(&id) {
                Some(i) => (i, false),
                None => return Outcome::Ignored,
            },
            None => (
                std::sync::Arc::new(Incident {
                    id: new_ulid(),
                    title: String::new(),
                    severity,
                    status: Status::Open,
                    drill: drill.is_some(),
                    first_seen: at,
                    last_seen: at,
                    created: now,
                    updated: now,
                    version: 0,
                    event_count: 0,
                    timeline: Timeline::default(),
                    agents: BTreeSet::new(),
                    decoys: BTreeSet::new(),
                    sources: BTreeSet::new(),
                    lures: BTreeSet::new(),
                    processes: BTreeSet::new(),
                    credentials: BTreeSet::new(),
                    matched: BTreeSet::new(),
                    ports: BTreeSet::new(),
                    path: Vec::new(),
                    techniques: BTreeSet::new(),
                    rules: BTreeSet::new(),
                    keys: BTreeSet::new(),
                    acknowledged_by: String::new(),
                    resolved_by: String::new(),
                    resolution: String::new(),
                    deliveries: BTreeMap::new(),
                }),
                true,
            ),
        };
        // Copies only if someone still holds the previous outcome.
        let incident = std::sync::Arc::make_mut(&mut shared);
        let before = incident.severity;
        if let Some(entry) = self.absorb(incident, e, severity, dir, now) {
            self.added.push((incident.id.clone(), entry));
        }
        for k in keys {
            self.index.insert(k.clone(), (incident.id.clone(), at));
            add_bounded(&mut incident.keys, k, MAX_KEYS);
        }
        let escalated = !opened && incident.severity > before;
        self.live.insert(incident.id.clone(), shared.clone());
        if opened {
            Outcome::Opened(shared)
        } else {
            Outcome::Updated {
                incident: shared,
                escalated,
            }
        }
    }

    /// Adds an event to an incident; returns the timeline entry it added
    /// (none once the timeline is full).
    pub(super) fn absorb(
        &self,
        i: &mut Incident,
        e: &StoredEvent,
        severity: Severity,
        dir: &dyn Directory,
        now: UnixMs,
    ) -> Option<std::sync::Arc<TimelineEntry>> {
        let at = e.observed;
        i.first_seen = i.first_seen.min(at);
        i.last_seen = i.last_seen.max(at);
        i.updated = now;
        i.version += 1;
        i.event_count += 1;
        i.severity = i.severity.max(severity);
        let mut added = None;
        if i.timeline.len() < MAX_TIMELINE {
            // Events mostly arrive in order: insert in place, no sort.
            let at_index = i
                .timeline
                .partition_point(|t| (t.at, t.event_id.as_str()) <= (at, e.id.as_str()));
            let entry = std::sync::Arc::new(TimelineEntry {
                event_id: e.id.clone(),
                at,
                agent: e.agent.clone(),
                kind: e.kind.clone(),
                summary: summary(e, dir),
            });
            std::sync::Arc::make_mut(&mut i.timeline).insert(at_index, entry.clone());
            added = Some(entry);
        }
        i.techniques
            .extend(techniques(e).into_iter().map(str::to_owned));
        if !e.lure_id.is_empty() {
            add_bounded(&mut i.lures, e.lure_id.clone(), MAX_INDICATORS);
        }
        let mut hop = |kind: &str, name: String, agent: Option<AgentId>, what: String| {
            if i.path.len() < MAX_INDICATORS
                && !i.path.iter().any(|h| h.kind == kind && h.name == name)
            {
                i.path.push(Hop {
                    kind: kind.into(),
                    name,
                    agent,
                    first_seen: at,
                    what,
                });
            }
        };
        match &e.decoy {
            None if e.kind == crate::model::FLOOD => {
                hop(
                    "host",
                    dir.hostname(&e.agent),
                    Some(e.agent.clone()),
                    "events over its quota".into(),
                );
                add_bounded(&mut i.agents, e.agent.clone(), MAX_INDICATORS);
                i.rules.insert("flood".into());
            }
            None => {
                let exe = e.process.as_ref().map(|p| p.exe.clone());
                hop(
                    "host",
                    dir.hostname(&e.agent),
                    Some(e.agent.clone()),
                    format!("{} {}", e.kind, e.template),
                );
                add_bounded(&mut i.agents, e.agent.clone(), MAX_INDICATORS);
                if let Some(exe) = exe {
                    let same = i.processes.contains(&exe);
                    let others = !i.processes.is_empty() && !same;
                    if same && i.event_count > 1 {
                        i.rules.insert("same-host-process".into());
                    }
                    if others {
                        i.rules.insert("repeated-touches".into());
                    }
                    add_bounded(&mut i.processes, exe, MAX_INDICATORS);
                } else if i.event_count > 1 {
                    i.rules.insert("repeated-touches".into());
                }
            }
            Some(d) => {
                if let Some(origin) = &e.origin_agent {
                    hop(
                        "host",
                        dir.hostname(origin),
                        Some(origin.clone()),
                        format!("{} lure harvested", e.template),
                    );
                    add_bounded(&mut i.agents, origin.clone(), MAX_INDICATORS);
                }
                hop(
                    "source",
                    d.source_ip.clone(),
                    None,
                    format!("{} from {}", d.protocol, d.source_ip),
                );
                hop(
                    "decoy",
                    d.name.clone(),
                    Some(e.agent.clone()),
                    format!("{} on {}/{}", e.kind, d.protocol, d.port),
                );
                add_bounded(&mut i.agents, e.agent.clone(), MAX_INDICATORS);
                add_bounded(&mut i.decoys, d.name.clone(), MAX_INDICATORS);
                if !i.sources.is_empty() || i.event_count > 1 {
                    i.rules.insert("same-source".into());
                }
                add_bounded(&mut i.sources, d.source_ip.clone(), MAX_INDICATORS);
                add_bounded(&mut i.ports, (d.name.clone(), d.port), MAX_INDICATORS);
                if let Some(c) = &e.credential {
                    for id in [&c.username, &c.key_fingerprint, &c.ae_title] {
                        if !id.is_empty() {
                            add_bounded(&mut i.credentials, id.clone(), MAX_INDICATORS);
                        }
                    }
                }
                if e.kind == CREDENTIAL_USE {
                    i.rules.insert("credential-use".into());
                    if let Some(id) = e.credential.as_ref().and_then(|c| matched_identifier(e, c)) {
                        add_bounded(&mut i.matched, id, MAX_INDICATORS);
                    }
                }
                if i.ports.len() >= 3 {
                    i.rules.insert("scan".into());
                    i.severity = i.severity.max(Severity::Medium);
                }
            }
        }
        i.title = title(i, e, dir);
        added
    }
}

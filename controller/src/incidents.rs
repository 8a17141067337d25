//! Incidents: events correlated into what a SOC acts on.
//!
//! Correlation is incremental. Every event yields a few correlation keys
//! (`host:<agent>`, `proc:<agent>:<exe>`, `source:<address>`,
//! `lure:<id>`); an event joins the open incident that saw one of its keys
//! within the window, or opens a new one if it is worth raising. Nothing
//! rescans history: an event touches at most one incident and a handful of
//! index entries.
//!
//! Rules (each named in the incident's `rules`):
//! - `credential-use`: a lure harvested on agent A is used from source S
//!   against decoy D — keys tie it to A's lure touches and S's activity;
//! - `same-source`: decoy activity from one address;
//! - `same-host-process`: one process touching several lures on one host;
//! - `repeated-touches`: several touches on one host by different processes;
//! - `scan`: one source reaching several decoy ports.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

// Seeded fast hashing (see deploy.rs): every ingested batch looks up the
// correlation index per event and checks each touched incident's timeline
// (up to 500 entries) against the batch's event ids; with SipHash that
// check alone was 3.6 % of the controller's samples at saturation (perf).
use foldhash::{HashMap, HashMapExt};

use serde::{Deserialize, Serialize};

use ruse_proto::convert::CREDENTIAL_USE;
use ruse_proto::types::{AgentId, UnixMs, new_ulid};

use crate::model::{
    Delivery, Hop, Incident, MAX_INDICATORS, MAX_TIMELINE, Severity, Status, StoredEvent,
    Suppression, Template, Timeline, TimelineEntry,
};

/// Correlation keys kept per incident (each indicator above can bring
/// one); they re-index the incident at start.
const MAX_KEYS: usize = 4 * MAX_INDICATORS;

/// Adds `value` to `set` unless the set already holds `max` values.
fn add_bounded<T: Ord>(set: &mut BTreeSet<T>, value: T, max: usize) {
    if set.len() < max {
        set.insert(value);
    }
}

/// How an event relates to incidents.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Not worth an incident (an allowed reader, a drift repair).
    Ignored,
    /// A suppression matched (its name).
    Suppressed(String),
    /// Shared with the correlator's live copy: drop it before correlating
    /// the next event, or that event pays for a copy of the incident.
    Opened(std::sync::Arc<Incident>),
    Updated {
        incident: std::sync::Arc<Incident>,
        /// The severity rose.
        escalated: bool,
    },
}

/// What correlation knows about agents, for titles and paths.
pub trait Directory {
    fn hostname(&self, agent: &AgentId) -> String;
    fn labels(&self, agent: &AgentId) -> ruse_proto::types::Labels;
}

/// Templates whose reading is the signal (documents, not credentials).
fn is_honeyfile(template: &str) -> bool {
    template
        .parse::<Template>()
        .is_ok_and(|t| t.is_honeyfile() && t != Template::PasswordsXlsx)
}

/// MITRE ATT&CK techniques an event shows.
pub fn techniques(e: &StoredEvent) -> Vec<&'static str> {
    let protocol = e.decoy.as_ref().map_or("", |d| d.protocol.as_str());
    let remote = match protocol {
        "ssh" => "T1021.004",
        "smb" => "T1021.002",
        _ => "T1021",
    };
    match e.kind.as_str() {
        "touch" => match e.template.as_str() {
            "ssh-key" => vec!["T1552.004"],
            "hosts-entry" => vec!["T1018"],
            t if is_honeyfile(t) => vec!["T1005"],
            _ => vec!["T1552.001"],
        },
        "modify" => vec!["T1565.001"],
        "delete" | "rename" => vec!["T1070.004"],
        CREDENTIAL_USE => match protocol {
            "http" | "https" => vec!["T1078"],
            _ => vec!["T1078", remote],
        },
        "decoy-login" => vec!["T1110", remote],
        "decoy-message" | "decoy-connection" | "portscan" => vec!["T1046"],
        _ => Vec::new(),
    }
}

/// The severity an event alone deserves; `None`: no incident.
pub fn event_severity(e: &StoredEvent) -> Option<Severity> {
    if e.allowed {
        return None;
    }
    Some(match e.kind.as_str() {
        CREDENTIAL_USE | "decoy-login" => Severity::Critical,
        "touch" | "modify" | "delete" | "rename" => Severity::High,
        "decoy-message" | crate::model::FLOOD => Severity::Medium,
        "decoy-connection" | "portscan" => Severity::Low,
        _ => return None,
    })
}

fn suppressed_by<'a>(
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
fn keys(e: &StoredEvent, drill: Option<&str>) -> Vec<String> {
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

/// `how: identifier` for what of `c` matched a lure in credential-use
/// event `e`.
fn matched_identifier(
    e: &StoredEvent,
    c: &ruse_proto::convert::PresentedCredential,
) -> Option<String> {
    let how = e.matched_on.as_str();
    let id = match how {
        "ssh key fingerprint" => &c.key_fingerprint,
        "calling AE title" => &c.ae_title,
        "HL7 sending application" => &c.application,
        "token" => return Some(format!("{how}: (a planted token)")),
        _ => &c.username,
    };
    (!id.is_empty()).then(|| format!("{how}: {id}"))
}

/// A few words about an event.
pub fn summary(e: &StoredEvent, dir: &dyn Directory) -> String {
    let who = e
        .process
        .as_ref()
        .map(|p| format!(" by {} (pid {})", p.exe, p.pid))
        .unwrap_or_default();
    match &e.decoy {
        Some(d) => {
            let presented = e
                .credential
                .as_ref()
                .map(|c| {
                    [&c.username, &c.key_fingerprint, &c.ae_title, &c.application]
                        .into_iter()
                        .find(|s| !s.is_empty())
                        .cloned()
                        .unwrap_or_default()
                })
                .filter(|s| !s.is_empty())
                .map(|s| format!(" as {s}"))
                .unwrap_or_default();
            match e.kind.as_str() {
                CREDENTIAL_USE => format!(
                    "{} lure from {} used{presented} from {} against {} {}/{}",
                    e.template,
                    e.origin_agent
                        .as_ref()
                        .map_or_else(String::new, |a| dir.hostname(a)),
                    d.source_ip,
                    d.name,
                    d.protocol,
                    d.port
                ),
                kind => format!(
                    "{kind} from {} on {} {}/{}{presented}",
                    d.source_ip, d.name, d.protocol, d.port
                ),
            }
        }
        None if e.kind == crate::model::FLOOD => {
            format!("{} on {}", e.detail, dir.hostname(&e.agent))
        }
        None => format!(
            "{} of {} on {}{who}",
            e.kind,
            if e.template.is_empty() {
                e.path.clone()
            } else {
                e.template.clone()
            },
            dir.hostname(&e.agent)
        ),
    }
}

/// Incremental correlation over open incidents.
#[derive(Debug)]
pub struct Correlator {
    window: Duration,
    /// Open and acknowledged incidents, by id; shared copy-on-write with
    /// the outcome of the last correlation.
    live: HashMap<String, std::sync::Arc<Incident>>,
    /// Key → (incident id, last seen).
    index: HashMap<String, (String, UnixMs)>,
    /// When [`Correlator::expire`] next scans the index.
    next_expiry: UnixMs,
    /// Timeline entries added since [`Correlator::take_added`], with
    /// their incident's id: what a batch must write. [`Incidents`] takes
    /// them after every batch; at most [`MAX_TIMELINE`] per incident are
    /// ever added.
    added: Vec<(String, std::sync::Arc<TimelineEntry>)>,
}

/// How often the index is swept for keys past the window. Lookups check
/// the window themselves, so the sweep only bounds memory; sweeping once
/// per batch cost ~2 % of ingest with 10k keys.
const EXPIRE_EVERY_MS: i64 = 1_000;

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
    fn absorb(
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

/// The title names the strongest thing the incident shows.
fn title(i: &Incident, e: &StoredEvent, dir: &dyn Directory) -> String {
    let drill = if i.drill { "[DRILL] " } else { "" };
    let path = i.path_text();
    if i.rules.contains("credential-use") {
        return format!("{drill}Stolen credential used: {path}");
    }
    if i.rules.contains("flood") {
        let host = i
            .agents
            .iter()
            .next()
            .map(|a| dir.hostname(a))
            .unwrap_or_default();
        return format!(
            "{drill}Agent {host} sent more events than its quota (a compromised or misbehaving agent?)"
        );
    }
    if i.severity == Severity::Critical {
        let d = i.decoys.iter().next().cloned().unwrap_or_default();
        let s = i.sources.iter().next().cloned().unwrap_or_default();
        return format!("{drill}Login attempt on decoy {d} from {s}");
    }
    if !i.agents.is_empty() && i.decoys.is_empty() {
        let host = i
            .agents
            .iter()
            .next()
            .map(|a| dir.hostname(a))
            .unwrap_or_default();
        let what = if i.lures.len() > 1 {
            format!("{} lures", i.lures.len())
        } else {
            format!("{} lure", e.template)
        };
        let by = if i.processes.len() == 1 {
            format!(
                " by {}",
                i.processes.iter().next().cloned().unwrap_or_default()
            )
        } else if i.processes.len() > 1 {
            format!(" by {} processes", i.processes.len())
        } else {
            String::new()
        };
        return format!("{drill}{what} touched on {host}{by}");
    }
    let s = i.sources.iter().cloned().collect::<Vec<_>>().join(", ");
    if i.rules.contains("scan") {
        return format!("{drill}Scan from {s} across {} decoy ports", i.ports.len());
    }
    format!("{drill}Decoy contact from {s}: {path}")
}

/// Fleet-backed names for correlation.
impl Directory for crate::fleet::Fleet {
    fn hostname(&self, agent: &AgentId) -> String {
        self.hostname_of(agent)
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| agent.to_string())
    }

    fn labels(&self, agent: &AgentId) -> ruse_proto::types::Labels {
        self.labels_of(agent)
            .map(|l| (*l).clone())
            .unwrap_or_default()
    }
}

/// Why an incident goes to the outputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Notice {
    Opened,
    Escalated,
    Resolved,
}

impl Notice {
    pub fn as_str(self) -> &'static str {
        match self {
            Notice::Opened => "opened",
            Notice::Escalated => "escalated",
            Notice::Resolved => "resolved",
        }
    }
}

/// What one batch of events did to incidents, before it is durable.
#[derive(Debug, Default)]
pub struct Changes {
    pub incidents: Vec<std::sync::Arc<Incident>>,
    /// Incidents (id) to deliver, and why.
    pub notices: Vec<(String, Notice)>,
}

/// Filters for incident lists.
#[derive(Debug, Clone, Default)]
pub struct IncidentFilter {
    /// One status; with `unresolved`, open or acknowledged.
    pub status: Option<Status>,
    pub unresolved: bool,
    pub min_severity: Option<Severity>,
    /// Last seen at or after.
    pub since: Option<UnixMs>,
    pub drills: bool,
}

impl IncidentFilter {
    pub fn matches(&self, i: &Incident) -> bool {
        self.status.is_none_or(|s| i.status == s)
            && (!self.unresolved || i.status != Status::Resolved)
            && self.min_severity.is_none_or(|s| i.severity >= s)
            && self.since.is_none_or(|t| i.last_seen >= t)
            && (self.drills || !i.drill)
    }
}

/// Why a lifecycle change was refused.
#[derive(Debug, thiserror::Error)]
pub enum IncidentError {
    #[error("no incident {0}")]
    NotFound(String),
    #[error("incident {0} is already resolved")]
    Resolved(String),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// Incidents: correlation, storage, lifecycle and the live watch.
#[derive(Debug)]
pub struct Incidents {
    store: std::sync::Arc<dyn crate::store::Store>,
    committer: crate::store::Committer,
    correlator: std::sync::Mutex<Correlator>,
    /// Every incident by id (resolved ones too), for views.
    /// Shared with the correlator until the next event changes it: a
    /// batch copies an incident (and its timeline) once, not per reader.
    all: std::sync::Mutex<BTreeMap<String, std::sync::Arc<Incident>>>,
    /// Suppression name → events suppressed.
    suppressed: std::sync::Mutex<BTreeMap<String, u64>>,
    live: tokio::sync::broadcast::Sender<std::sync::Arc<Incident>>,
}

impl Incidents {
    /// Loads stored incidents and counters.
    pub fn load(
        store: std::sync::Arc<dyn crate::store::Store>,
        committer: crate::store::Committer,
        window: Duration,
    ) -> Result<Self, crate::store::StoreError> {
        let stored = store.incidents()?;
        let suppressed = store
            .counters()?
            .into_iter()
            .filter_map(|(k, v)| k.strip_prefix("suppressed:").map(|n| (n.to_owned(), v)))
            .collect();
        Ok(Incidents {
            correlator: std::sync::Mutex::new(Correlator::new(window, stored.clone())),
            all: std::sync::Mutex::new(
                stored
                    .into_iter()
                    .map(|i| (i.id.clone(), std::sync::Arc::new(i)))
                    .collect(),
            ),
            suppressed: std::sync::Mutex::new(suppressed),
            live: tokio::sync::broadcast::channel(1024).0,
            store,
            committer,
        })
    }

    fn correlator(&self) -> std::sync::MutexGuard<'_, Correlator> {
        self.correlator.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn all(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, std::sync::Arc<Incident>>> {
        self.all.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Correlates newly stored events and writes what changed (the caller
    /// makes it durable with the events, then calls [`Self::publish`]).
    pub fn correlate(
        &self,
        events: &[(StoredEvent, Option<String>)],
        suppressions: &[Suppression],
        dir: &dyn Directory,
    ) -> Result<Changes, crate::store::StoreError> {
        let now = UnixMs::now();
        let mut changes = Changes::default();
        let mut touched: BTreeSet<String> = BTreeSet::new();
        let mut hits: BTreeMap<String, u64> = BTreeMap::new();
        let (touched, added): (Vec<std::sync::Arc<Incident>>, HashMap<_, _>) = {
            let mut c = self.correlator();
            c.expire(now);
            for (e, drill) in events {
                match c.correlate(e, drill.as_deref(), suppressions, dir, now) {
                    Outcome::Ignored => {}
                    Outcome::Suppressed(name) => *hits.entry(name).or_default() += 1,
                    // Only ids are kept, so the next event on the same
                    // incident updates it in place.
                    Outcome::Opened(i) => {
                        changes.notices.push((i.id.clone(), Notice::Opened));
                        touched.insert(i.id.clone());
                    }
                    Outcome::Updated {
                        incident,
                        escalated,
                    } => {
                        if escalated {
                            changes
                                .notices
                                .push((incident.id.clone(), Notice::Escalated));
                        }
                        touched.insert(incident.id.clone());
                    }
                }
            }
            let mut added: HashMap<String, Vec<std::sync::Arc<TimelineEntry>>> = HashMap::new();
            for (id, entry) in c.take_added() {
                added.entry(id).or_default().push(entry);
            }
            let touched = touched.iter().filter_map(|id| c.get(id).cloned()).collect();
            (touched, added)
        };
        // This batch's timeline entries, written with their incident.
        {
            let mut all = self.all();
            for mut i in touched {
                let added: Vec<&TimelineEntry> = added
                    .get(&i.id)
                    .map(|entries| entries.iter().map(|t| &**t).collect())
                    .unwrap_or_default();
                self.store.put_timeline(&i.id, &added)?;
                // Deliveries are recorded by the outputs; keep theirs.
                if let Some(old) = all.get(&i.id)
                    && old.deliveries != i.deliveries
                {
                    std::sync::Arc::make_mut(&mut i).deliveries = old.deliveries.clone();
                    self.correlator().share(i.clone());
                }
                self.store.put_incident(&i)?;
                all.insert(i.id.clone(), i.clone());
                changes.incidents.push(i);
            }
        }
        if !hits.is_empty() {
            let mut counts = self.suppressed.lock().unwrap_or_else(|e| e.into_inner());
            for (name, n) in hits {
                let total = counts.entry(name.clone()).or_default();
                *total += n;
                self.store
                    .put_counter(&format!("suppressed:{name}"), *total)?;
            }
        }
        Ok(changes)
    }

    /// Announces durable changes to watchers.
    pub fn publish(&self, changes: &Changes) {
        for i in &changes.incidents {
            let _ = self.live.send(i.clone());
        }
    }

    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<std::sync::Arc<Incident>> {
        self.live.subscribe()
    }

    pub fn get(&self, id: &str) -> Option<Incident> {
        self.all().get(id).map(|i| (**i).clone())
    }

    /// Incidents matching `filter`, most recently seen first.
    pub fn list(&self, filter: &IncidentFilter, limit: usize) -> Vec<Incident> {
        let mut out: Vec<Incident> = self
            .all()
            .values()
            .filter(|i| filter.matches(i))
            .map(|i| (**i).clone())
            .collect();
        out.sort_by(|a, b| b.last_seen.cmp(&a.last_seen).then(b.id.cmp(&a.id)));
        out.truncate(limit);
        out
    }

    /// Events each suppression has hidden.
    pub fn suppressed_counts(&self) -> BTreeMap<String, u64> {
        self.suppressed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Open incidents by severity, for metrics.
    pub fn open_by_severity(&self) -> BTreeMap<Severity, u64> {
        let mut out = BTreeMap::new();
        // Drills rehearse the response; they are not open business.
        for i in self
            .all()
            .values()
            .filter(|i| i.status != Status::Resolved && !i.drill)
        {
            *out.entry(i.severity).or_default() += 1;
        }
        out
    }

    async fn change(
        &self,
        id: &str,
        f: impl FnOnce(&mut Incident) -> Result<(), IncidentError>,
    ) -> Result<Incident, IncidentError> {
        let updated = {
            let mut all = self.all();
            let i = all
                .get_mut(id)
                .ok_or_else(|| IncidentError::NotFound(id.to_owned()))?;
            let mut next = (**i).clone();
            f(&mut next)?;
            next.updated = UnixMs::now();
            next.version += 1;
            self.store.put_incident(&next)?;
            *i = std::sync::Arc::new(next.clone());
            next
        };
        self.committer.durable().await?;
        self.correlator().replace(updated.clone());
        let _ = self.live.send(std::sync::Arc::new(updated.clone()));
        Ok(updated)
    }

    /// Someone is looking at it.
    pub async fn acknowledge(&self, id: &str, by: &str) -> Result<Incident, IncidentError> {
        self.change(id, |i| {
            if i.status == Status::Resolved {
                return Err(IncidentError::Resolved(i.id.clone()));
            }
            i.status = Status::Acknowledged;
            i.acknowledged_by = by.to_owned();
            Ok(())
        })
        .await
    }

    /// Closed, with a note; later events open a new incident.
    pub async fn resolve(&self, id: &str, by: &str, note: &str) -> Result<Incident, IncidentError> {
        self.change(id, |i| {
            if i.status == Status::Resolved {
                return Err(IncidentError::Resolved(i.id.clone()));
            }
            i.status = Status::Resolved;
            i.resolved_by = by.to_owned();
            i.resolution = note.chars().take(2000).collect();
            Ok(())
        })
        .await
    }

    /// Records where an incident was delivered (no new version).
    pub fn record_delivery(
        &self,
        id: &str,
        output: &str,
        delivery: Delivery,
    ) -> Result<Option<Incident>, crate::store::StoreError> {
        let mut all = self.all();
        let Some(i) = all.get_mut(id) else {
            return Ok(None);
        };
        std::sync::Arc::make_mut(i)
            .deliveries
            .insert(output.to_owned(), delivery);
        self.store.put_incident(i)?;
        let i = i.clone();
        drop(all);
        let _ = self.live.send(i.clone());
        Ok(Some((*i).clone()))
    }
}

#[cfg(test)]
pub(crate) mod tests_support {
    use super::*;

    /// A critical incident with a path, for output tests.
    pub fn incident() -> Incident {
        let a = AgentId::generate();
        Incident {
            id: new_ulid(),
            title: "Stolen credential used: ws-07 → 10.9.8.7 → pacs".into(),
            severity: Severity::Critical,
            status: Status::Open,
            drill: false,
            first_seen: UnixMs(1_000),
            last_seen: UnixMs(2_000),
            created: UnixMs(2_000),
            updated: UnixMs(2_000),
            version: 2,
            event_count: 2,
            timeline: Timeline::default(),
            agents: [a.clone()].into(),
            decoys: ["pacs".to_owned()].into(),
            sources: ["10.9.8.7".to_owned()].into(),
            lures: ["01lure".to_owned()].into(),
            processes: BTreeSet::new(),
            credentials: ["root".to_owned(), "SHA256:abc".to_owned()].into(),
            matched: ["ssh key fingerprint: SHA256:abc".to_owned()].into(),
            ports: BTreeSet::new(),
            path: vec![
                Hop {
                    kind: "host".into(),
                    name: "ws-07".into(),
                    agent: Some(a),
                    first_seen: UnixMs(1_000),
                    what: "touch ssh-key".into(),
                },
                Hop {
                    kind: "source".into(),
                    name: "10.9.8.7".into(),
                    agent: None,
                    first_seen: UnixMs(2_000),
                    what: "ssh".into(),
                },
            ],
            techniques: ["T1078".to_owned(), "T1552.004".to_owned()].into(),
            rules: ["credential-use".to_owned()].into(),
            keys: BTreeSet::new(),
            acknowledged_by: String::new(),
            resolved_by: String::new(),
            resolution: String::new(),
            deliveries: BTreeMap::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ruse_proto::convert::{DecoyContact, EventProcess, PresentedCredential};
    use ruse_proto::types::Labels;

    struct Dir;
    impl Directory for Dir {
        fn hostname(&self, agent: &AgentId) -> String {
            format!("host-{}", &agent.as_str()[..4])
        }
        fn labels(&self, _: &AgentId) -> Labels {
            Labels::parse_pairs(["site=icu"]).unwrap()
        }
    }

    fn base(agent: &AgentId, at: i64) -> StoredEvent {
        StoredEvent {
            campaign: "c".into(),
            observed: UnixMs(at),
            received: UnixMs(at),
            ..crate::events::tests_support::event(agent)
        }
    }

    fn touch(agent: &AgentId, lure: &str, exe: &str, at: i64) -> StoredEvent {
        StoredEvent {
            kind: "touch".into(),
            lure_id: lure.into(),
            template: "patient-csv".into(),
            path: "/home/a/x.csv".into(),
            process: Some(EventProcess {
                pid: 7,
                exe: exe.into(),
                ..Default::default()
            }),
            ..base(agent, at)
        }
    }

    fn decoy(
        agent: &AgentId,
        kind: &str,
        source: &str,
        protocol: &str,
        port: u16,
        at: i64,
    ) -> StoredEvent {
        StoredEvent {
            kind: kind.into(),
            decoy: Some(DecoyContact {
                name: "pacs".into(),
                protocol: protocol.into(),
                port,
                source_ip: source.into(),
                source_port: 40000,
            }),
            ..base(agent, at)
        }
    }

    fn use_of(
        lure: &str,
        origin: &AgentId,
        decoy_agent: &AgentId,
        source: &str,
        at: i64,
    ) -> StoredEvent {
        StoredEvent {
            lure_id: lure.into(),
            template: "ssh-key".into(),
            origin_agent: Some(origin.clone()),
            credential: Some(PresentedCredential {
                username: "radiology7".into(),
                key_fingerprint: "SHA256:x".into(),
                ..Default::default()
            }),
            ..decoy(decoy_agent, CREDENTIAL_USE, source, "ssh", 22, at)
        }
    }

    fn opened(o: Outcome) -> Incident {
        match o {
            Outcome::Opened(i) => (*i).clone(),
            other => panic!("expected a new incident, got {other:?}"),
        }
    }

    fn updated(o: Outcome) -> Incident {
        match o {
            Outcome::Updated { incident, .. } => (*incident).clone(),
            other => panic!("expected an update, got {other:?}"),
        }
    }

    #[test]
    fn sprays_of_distinct_values_leave_the_incident_bounded() {
        let (a, d) = (AgentId::generate(), AgentId::generate());
        let mut c = Correlator::new(Duration::from_secs(3600), []);
        let now = UnixMs(1_000_000);
        let n = 3 * MAX_INDICATORS;
        // One address trying a new user name on a new port each time.
        let mut ids = BTreeSet::new();
        let mut last = None;
        for k in 0..n {
            let e = StoredEvent {
                credential: Some(PresentedCredential {
                    username: format!("user{k}"),
                    ..Default::default()
                }),
                ..decoy(
                    &d,
                    "decoy-login",
                    "10.1.1.1",
                    "ftp",
                    2000 + k as u16,
                    1000 + k as i64,
                )
            };
            let (Outcome::Opened(i) | Outcome::Updated { incident: i, .. }) =
                c.correlate(&e, None, &[], &Dir, now)
            else {
                panic!("event {k} was not correlated");
            };
            ids.insert(i.id.clone());
            last = Some(i);
        }
        let i = last.unwrap();
        assert_eq!(ids.len(), 1, "one incident");
        assert_eq!(i.event_count, n as u64);
        assert_eq!(i.credentials.len(), MAX_INDICATORS);
        assert!(i.credentials.contains("user0"), "the first ones are kept");
        assert_eq!(i.ports.len(), MAX_INDICATORS);
        assert_eq!(i.timeline.len(), n.min(MAX_TIMELINE));

        // One host, a new program reading the lure each time.
        let mut last = None;
        for k in 0..n {
            let e = touch(&a, "L1", &format!("/tmp/x{k}"), 1000 + k as i64);
            let (Outcome::Opened(i) | Outcome::Updated { incident: i, .. }) =
                c.correlate(&e, None, &[], &Dir, now)
            else {
                panic!("touch {k} was not correlated");
            };
            last = Some(i);
        }
        let i = last.unwrap();
        assert_eq!(i.event_count, n as u64);
        assert_eq!(i.processes.len(), MAX_INDICATORS);
        assert!(i.keys.len() <= MAX_KEYS);
        assert!(i.path.len() <= MAX_INDICATORS);
        assert!(i.rules.contains("repeated-touches"));
    }

    #[test]
    fn harvest_use_and_decoy_contact_are_one_incident_with_the_path() {
        let (a, d) = (AgentId::generate(), AgentId::generate());
        let mut c = Correlator::new(Duration::from_secs(3600), []);
        let now = UnixMs(1_000_000);
        let i = opened(c.correlate(&touch(&a, "L1", "/usr/bin/cat", 1000), None, &[], &Dir, now));
        assert_eq!(i.severity, Severity::High);
        let i2 = updated(c.correlate(
            &use_of("L2", &a, &d, "10.9.8.7", 2000),
            None,
            &[],
            &Dir,
            now,
        ));
        assert_eq!(i2.id, i.id);
        assert_eq!(i2.severity, Severity::Critical);
        let i3 = updated(c.correlate(
            &decoy(&d, "decoy-login", "10.9.8.7", "dicom", 104, 3000),
            None,
            &[],
            &Dir,
            now,
        ));
        assert_eq!(i3.id, i.id);
        let kinds: Vec<&str> = i3.path.iter().map(|h| h.kind.as_str()).collect();
        assert_eq!(kinds, ["host", "source", "decoy"]);
        assert_eq!(i3.path[0].agent.as_ref(), Some(&a));
        assert_eq!(i3.path[1].name, "10.9.8.7");
        assert_eq!(i3.path[2].name, "pacs");
        for t in ["T1005", "T1078", "T1021.004", "T1110"] {
            assert!(i3.techniques.contains(t), "{t} in {:?}", i3.techniques);
        }
        assert!(i3.rules.contains("credential-use"));
        assert!(
            i3.title.starts_with("Stolen credential used: host-"),
            "{}",
            i3.title
        );
        assert_eq!(i3.event_count, 3);
        assert!(i3.credentials.contains("SHA256:x"));
    }

    #[test]
    fn unrelated_activity_and_old_activity_open_new_incidents() {
        let (a, b, d) = (
            AgentId::generate(),
            AgentId::generate(),
            AgentId::generate(),
        );
        let mut c = Correlator::new(Duration::from_secs(60), []);
        let now = UnixMs(0);
        let first = opened(c.correlate(&touch(&a, "L1", "/usr/bin/cat", 0), None, &[], &Dir, now));
        // Another host: another incident.
        let other =
            opened(c.correlate(&touch(&b, "L9", "/usr/bin/cat", 1000), None, &[], &Dir, now));
        assert_ne!(first.id, other.id);
        // Same host, same process, within the window: the same incident.
        let same = updated(c.correlate(
            &touch(&a, "L2", "/usr/bin/cat", 30_000),
            None,
            &[],
            &Dir,
            now,
        ));
        assert_eq!(same.id, first.id);
        assert!(same.rules.contains("same-host-process"));
        // Same host, another process: repeated touches.
        let rep = updated(c.correlate(
            &touch(&a, "L3", "/usr/bin/less", 40_000),
            None,
            &[],
            &Dir,
            now,
        ));
        assert!(rep.rules.contains("repeated-touches"));
        // Past the window: a new incident.
        let late = opened(c.correlate(
            &touch(&a, "L1", "/usr/bin/cat", 200_000),
            None,
            &[],
            &Dir,
            now,
        ));
        assert_ne!(late.id, first.id);
        // A scan across ports from one source.
        let mut scan = opened(c.correlate(
            &decoy(&d, "portscan", "10.0.0.9", "portscan", 3389, 0),
            None,
            &[],
            &Dir,
            now,
        ));
        assert_eq!(scan.severity, Severity::Low);
        for (port, at) in [(22, 1000), (445, 2000)] {
            scan = updated(c.correlate(
                &decoy(&d, "decoy-connection", "10.0.0.9", "ssh", port, at),
                None,
                &[],
                &Dir,
                now,
            ));
        }
        assert!(scan.rules.contains("scan"));
        assert_eq!(scan.severity, Severity::Medium);
        assert!(
            scan.title.starts_with("Scan from 10.0.0.9 across 3"),
            "{}",
            scan.title
        );
        assert!(scan.techniques.contains("T1046"));
    }

    #[test]
    fn allowed_drift_suppressed_and_drill_events_are_kept_apart() {
        let (a, d) = (AgentId::generate(), AgentId::generate());
        let mut c = Correlator::new(Duration::from_secs(3600), []);
        let now = UnixMs(0);
        let mut allowed = touch(&a, "L1", "/usr/bin/restic", 0);
        allowed.allowed = true;
        assert_eq!(
            c.correlate(&allowed, None, &[], &Dir, now),
            Outcome::Ignored
        );
        let drift = StoredEvent {
            kind: "drift".into(),
            ..touch(&a, "L1", "", 0)
        };
        assert_eq!(c.correlate(&drift, None, &[], &Dir, now), Outcome::Ignored);
        let rules = [Suppression {
            name: "vuln-scanner".into(),
            description: String::new(),
            selector: Labels::parse_pairs(["site=icu"]).unwrap(),
            source: Some(crate::model::Cidr::parse("10.50.0.0/16").unwrap()),
            process: String::new(),
            template: String::new(),
            expires: None,
        }];
        let scan = decoy(&d, "portscan", "10.50.3.4", "portscan", 3389, 0);
        assert_eq!(
            c.correlate(&scan, None, &rules, &Dir, now),
            Outcome::Suppressed("vuln-scanner".into())
        );
        let mut expired = rules.clone();
        expired[0].expires = Some(UnixMs(-1));
        assert!(matches!(
            c.correlate(&scan, None, &expired, &Dir, now),
            Outcome::Opened(_)
        ));
        // A drill on the same host does not join the real incident.
        let real = opened(c.correlate(&touch(&a, "L1", "/usr/bin/cat", 10), None, &[], &Dir, now));
        let drill = opened(c.correlate(
            &touch(&a, "L1", "/usr/bin/cat", 20),
            Some("d1"),
            &[],
            &Dir,
            now,
        ));
        assert_ne!(real.id, drill.id);
        assert!(drill.drill && drill.title.starts_with("[DRILL]"));
    }

    #[test]
    fn resumes_from_stored_incidents_and_resolved_ones_stop_correlating() {
        let a = AgentId::generate();
        let mut c = Correlator::new(Duration::from_secs(3600), []);
        let now = UnixMs(0);
        let i = opened(c.correlate(&touch(&a, "L1", "/usr/bin/cat", 0), None, &[], &Dir, now));
        let mut c2 = Correlator::new(Duration::from_secs(3600), [i.clone()]);
        let again =
            updated(c2.correlate(&touch(&a, "L1", "/usr/bin/cat", 5), None, &[], &Dir, now));
        assert_eq!(again.id, i.id);
        let mut resolved = again.clone();
        resolved.status = Status::Resolved;
        c2.replace(resolved);
        let fresh = opened(c2.correlate(&touch(&a, "L1", "/usr/bin/cat", 6), None, &[], &Dir, now));
        assert_ne!(fresh.id, i.id);
    }

    /// Each batch writes exactly the timeline entries it added, so a
    /// restart reads back every incident's whole timeline.
    #[tokio::test]
    async fn timelines_written_batch_by_batch_are_read_back_whole() {
        use crate::store::{Committer, SledStore, Store};
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (AgentId::generate(), AgentId::generate());
        let ids = |i: &Incident| {
            i.timeline
                .iter()
                .map(|t| t.event_id.clone())
                .collect::<Vec<_>>()
        };
        let batches = [
            vec![
                decoy(&a, "decoy-login", "10.0.0.1", "ftp", 21, 1_000),
                decoy(&a, "decoy-login", "10.0.0.1", "ftp", 21, 1_001),
            ],
            vec![
                decoy(&a, "decoy-login", "10.0.0.1", "ftp", 21, 1_002),
                touch(&b, "L9", "/usr/bin/cat", 1_003),
            ],
        ];
        let (first, second) = {
            let store: std::sync::Arc<dyn Store> =
                std::sync::Arc::new(SledStore::open(dir.path(), 1 << 20).unwrap());
            let (committer, task) = Committer::spawn(store.clone());
            let incidents =
                Incidents::load(store.clone(), committer, Duration::from_secs(3600)).unwrap();
            let mut seen: Vec<String> = Vec::new();
            for batch in &batches {
                let events: Vec<_> = batch.iter().map(|e| (e.clone(), None)).collect();
                let changes = incidents.correlate(&events, &[], &Dir).unwrap();
                for i in &changes.incidents {
                    if !seen.contains(&i.id) {
                        seen.push(i.id.clone());
                    }
                }
            }
            store.flush().unwrap();
            assert_eq!(seen.len(), 2, "unrelated events, two incidents");
            let first = incidents.get(&seen[0]).unwrap();
            let second = incidents.get(&seen[1]).unwrap();
            // Close the store: the committer task holds it until it ends.
            drop((incidents, store));
            task.await.unwrap();
            (first, second)
        };
        let e = |b: usize, k: usize| batches[b][k].id.clone();
        assert_eq!(ids(&first), [e(0, 0), e(0, 1), e(1, 0)]);
        assert_eq!(ids(&second), [e(1, 1)]);
        let store: std::sync::Arc<dyn Store> =
            std::sync::Arc::new(SledStore::open(dir.path(), 1 << 20).unwrap());
        let (committer, _task) = Committer::spawn(store.clone());
        let back = Incidents::load(store, committer, Duration::from_secs(3600)).unwrap();
        assert_eq!(back.get(&first.id).unwrap(), first);
        assert_eq!(back.get(&second.id).unwrap(), second);
    }
}

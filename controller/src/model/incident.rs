//! Incidents as persisted: what correlation builds and outputs deliver.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use ruse_proto::types::{AgentId, UnixMs};

/// How urgent an incident is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    pub const ALL: [Severity; 4] = [
        Severity::Low,
        Severity::Medium,
        Severity::High,
        Severity::Critical,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }

    /// CEF severity (0–10).
    pub fn cef(self) -> u8 {
        match self {
            Severity::Low => 3,
            Severity::Medium => 5,
            Severity::High => 8,
            Severity::Critical => 10,
        }
    }
}

/// Where an incident is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Open,
    Acknowledged,
    Resolved,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Open => "open",
            Status::Acknowledged => "acknowledged",
            Status::Resolved => "resolved",
        }
    }
}

/// A node of an attack path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hop {
    /// `host` (a lure was touched or harvested there), `source` (an
    /// address that reached a decoy), or `decoy`.
    pub kind: String,
    /// The agent's hostname, the address, or the decoy's name.
    pub name: String,
    #[serde(default)]
    pub agent: Option<AgentId>,
    pub first_seen: UnixMs,
    /// What happened there first, in a few words.
    pub what: String,
}

/// One event as the incident's timeline shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimelineEntry {
    pub event_id: String,
    pub at: UnixMs,
    pub agent: AgentId,
    pub kind: String,
    pub summary: String,
}

/// An incident's timeline, in time order, at most [`MAX_TIMELINE`] entries.
pub type Timeline = std::sync::Arc<Vec<std::sync::Arc<TimelineEntry>>>;

/// Where an incident was sent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    /// `queued`, `delivered` or `failing`.
    pub state: String,
    pub attempts: u32,
    #[serde(default)]
    pub last_error: String,
    #[serde(default)]
    pub delivered: Option<UnixMs>,
    /// The incident's update count the last delivery carried.
    #[serde(default)]
    pub version: u64,
}

/// Timeline entries kept per incident; later events are counted.
pub const MAX_TIMELINE: usize = 500;

/// Distinct values an incident keeps of each indicator (credentials tried,
/// sources, processes, lures, hosts, decoys, decoy ports) and hops in its
/// path; later ones are in its events, not in the incident. Every batch
/// copies and rewrites the incidents it touches, so what an attacker
/// chooses, such as a spray of distinct user names from one address, must
/// not grow them without bound.
pub const MAX_INDICATORS: usize = 100;

/// An incident.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Incident {
    pub id: String,
    pub title: String,
    pub severity: Severity,
    pub status: Status,
    /// Made by a drill, not an attacker.
    pub drill: bool,
    pub first_seen: UnixMs,
    pub last_seen: UnixMs,
    pub created: UnixMs,
    pub updated: UnixMs,
    /// Increases with every change; outputs deliver versions.
    pub version: u64,
    pub event_count: u64,
    /// Stored apart from the rest ([`IncidentHead`]), entry by entry.
    /// Shared: copying an incident (each batch that changes it does)
    /// copies the timeline only when the batch adds to it.
    #[serde(default)]
    pub timeline: Timeline,
    pub agents: BTreeSet<AgentId>,
    pub decoys: BTreeSet<String>,
    pub sources: BTreeSet<String>,
    pub lures: BTreeSet<String>,
    pub processes: BTreeSet<String>,
    /// Identifiers of credentials used against decoys (usernames, key
    /// fingerprints, AE titles), for indicators.
    pub credentials: BTreeSet<String>,
    /// What matched a planted lure, as `how: identifier` (`ssh key
    /// fingerprint: SHA256:...`): the planted credential actually used,
    /// not whatever else the attacker typed.
    #[serde(default)]
    pub matched: BTreeSet<String>,
    /// (decoy, port) pairs a source reached, for the scan rule.
    pub ports: BTreeSet<(String, u16)>,
    pub path: Vec<Hop>,
    /// MITRE ATT&CK technique ids.
    pub techniques: BTreeSet<String>,
    pub rules: BTreeSet<String>,
    pub keys: BTreeSet<String>,
    #[serde(default)]
    pub acknowledged_by: String,
    #[serde(default)]
    pub resolved_by: String,
    #[serde(default)]
    pub resolution: String,
    #[serde(default)]
    pub deliveries: BTreeMap<String, Delivery>,
}

/// An incident without its timeline, as the store writes it on every
/// change: the timeline (up to [`MAX_TIMELINE`] entries, most of an
/// incident's bytes) is written entry by entry as entries are added, so a
/// batch of events no longer rewrites it whole.
#[derive(Debug, Serialize)]
pub struct IncidentHead<'a> {
    id: &'a str,
    title: &'a str,
    severity: Severity,
    status: Status,
    drill: bool,
    first_seen: UnixMs,
    last_seen: UnixMs,
    created: UnixMs,
    updated: UnixMs,
    version: u64,
    event_count: u64,
    agents: &'a BTreeSet<AgentId>,
    decoys: &'a BTreeSet<String>,
    sources: &'a BTreeSet<String>,
    lures: &'a BTreeSet<String>,
    processes: &'a BTreeSet<String>,
    credentials: &'a BTreeSet<String>,
    matched: &'a BTreeSet<String>,
    ports: &'a BTreeSet<(String, u16)>,
    path: &'a [Hop],
    techniques: &'a BTreeSet<String>,
    rules: &'a BTreeSet<String>,
    keys: &'a BTreeSet<String>,
    acknowledged_by: &'a str,
    resolved_by: &'a str,
    resolution: &'a str,
    deliveries: &'a BTreeMap<String, Delivery>,
}

impl<'a> From<&'a Incident> for IncidentHead<'a> {
    fn from(i: &'a Incident) -> Self {
        // No `..`: a new field must be placed here or there is no build.
        let Incident {
            id,
            title,
            severity,
            status,
            drill,
            first_seen,
            last_seen,
            created,
            updated,
            version,
            event_count,
            timeline: _,
            agents,
            decoys,
            sources,
            lures,
            processes,
            credentials,
            matched,
            ports,
            path,
            techniques,
            rules,
            keys,
            acknowledged_by,
            resolved_by,
            resolution,
            deliveries,
        } = i;
        IncidentHead {
            id,
            title,
            severity: *severity,
            status: *status,
            drill: *drill,
            first_seen: *first_seen,
            last_seen: *last_seen,
            created: *created,
            updated: *updated,
            version: *version,
            event_count: *event_count,
            agents,
            decoys,
            sources,
            lures,
            processes,
            credentials,
            matched,
            ports,
            path,
            techniques,
            rules,
            keys,
            acknowledged_by,
            resolved_by,
            resolution,
            deliveries,
        }
    }
}

impl Incident {
    /// An incident with every indicator set, whose texts hold what JSON
    /// must escape (quotes, a backslash, a line break): output templates
    /// are checked with it.
    pub fn sample() -> Incident {
        let sample = serde_json::json!({
            "id": "01JSAMPLE", "title": "Honeyfile \"patients.csv\" read on ws\\07\nby cat",
            "severity": "high", "status": "open", "drill": false, "first_seen": 1, "last_seen": 2,
            "created": 2, "updated": 2, "version": 1, "event_count": 1, "agents": [],
            "decoys": ["pacs"], "sources": ["10.0.0.9"], "lures": ["01LURE"],
            "processes": ["/usr/bin/cat"], "credentials": ["radiology"], "ports": [],
            "path": [], "techniques": ["T1005"], "rules": ["honeyfile-read"], "keys": [],
        });
        serde_json::from_value(sample).unwrap_or_else(|e| unreachable!("the sample incident: {e}"))
    }

    /// The attack path as `A → S → D`.
    pub fn path_text(&self) -> String {
        self.path
            .iter()
            .map(|h| h.name.clone())
            .collect::<Vec<_>>()
            .join(" → ")
    }
}

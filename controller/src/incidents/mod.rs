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
//!
//! `correlate.rs` is the correlator, `present.rs` how incidents read
//! (techniques, severities, titles), `storage.rs` the incidents kept in
//! the store with their deliveries, queries and watch.

use serde::{Deserialize, Serialize};

use ruse_proto::types::{AgentId, UnixMs};

use crate::model::{Incident, Severity, Status};

mod correlate;
mod present;
mod storage;

pub use self::correlate::Correlator;
pub use self::present::{event_severity, summary, techniques};
pub use self::storage::Incidents;

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
    /// An admin took it on (pages and tickets follow).
    Acknowledged,
    Resolved,
}

impl Notice {
    pub fn as_str(self) -> &'static str {
        match self {
            Notice::Opened => "opened",
            Notice::Escalated => "escalated",
            Notice::Acknowledged => "acknowledged",
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

#[cfg(test)]
pub(crate) mod tests_support {
    use std::collections::{BTreeMap, BTreeSet};

    use ruse_proto::types::new_ulid;

    use super::*;
    use crate::model::{Hop, Timeline};

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
mod tests;

//! Events as stored and shown.

use serde::{Deserialize, Serialize};

use ruse_proto::convert::{DecoyContact, EventProcess, PresentedCredential};
use ruse_proto::types::{AgentId, UnixMs};

/// The kind of the controller's summary of an agent's events over quota.
pub const FLOOD: &str = "flood";

/// An event as stored and shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredEvent {
    pub id: String,
    /// Where the controller's receive order put it (assigned at ingest):
    /// the order of listings and the position a watch resumes from.
    #[serde(default)]
    pub cursor: u64,
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
    /// The time the agent reported when it was outside the accepted skew
    /// of the controller's clock (`observed` was then clamped).
    #[serde(default)]
    pub reported_observed: Option<UnixMs>,
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

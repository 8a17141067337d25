//! Agents, bootstrap tokens, administrators and the audit log as persisted.

use serde::{Deserialize, Serialize};

use ruse_proto::convert::HostFacts;
use ruse_proto::types::{AdminName, AgentId, Labels, Role, TokenId, UnixMs};

/// An enrolled agent as persisted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentRecord {
    pub id: AgentId,
    pub facts: HostFacts,
    /// Labels stamped by the bootstrap token.
    pub token_labels: Labels,
    /// Labels set by an admin (`rusectl label agent`); they override both.
    #[serde(default)]
    pub admin_labels: Labels,
    /// Label keys an admin removed (`rusectl label agent ID key-`): hidden
    /// whichever source sets them, until an admin sets them again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed_labels: Vec<String>,
    pub enrolled_at: UnixMs,
    pub enrolled_with: TokenId,
    pub last_seen: UnixMs,
    /// Address of the last session's peer.
    pub last_peer: String,
    pub cert_serial: String,
    pub cert_not_after: UnixMs,
    pub revoked: Option<Revocation>,
    /// When an admin removed it from the inventory (decommissioned). It is
    /// revoked too; the record stays for attribution.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted: Option<UnixMs>,
    /// Its latest session: which controller held it, since when, and
    /// when it ended. Controllers sharing a store show an agent whose
    /// session another (live) controller holds as online there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<SessionRecord>,
    /// What the agent applied and refused, as the controller holding its
    /// session last heard; written only where controllers share a store,
    /// so the one moving rollouts on counts every agent's result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied: Option<Applied>,
}

/// An agent's applied resources (id → revision) and refused ones (id →
/// revision and error).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    pub revisions: std::collections::BTreeMap<String, u64>,
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub failed: std::collections::BTreeMap<String, (u64, String)>,
}

/// Where an agent's latest session was held.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    /// The controller's name (`name` in its configuration).
    pub controller: String,
    pub since: UnixMs,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended: Option<UnixMs>,
}

impl AgentRecord {
    /// The labels selectors match against: the token's, overlaid with an
    /// admin's. Only these decide which campaigns, decoys and allow rules
    /// an agent gets: an agent cannot give itself another selector's
    /// lures or make itself a decoy host (whose events are believed).
    pub fn labels(&self) -> Labels {
        self.token_labels
            .overlaid_with(&self.admin_labels)
            .without(&self.removed_labels)
    }

    /// What the agent says about itself: labels derived from its host facts
    /// (`ruse.io/hostname|os|arch`) overlaid with the labels of its own
    /// configuration. Shown, never matched by a selector.
    pub fn reported_labels(&self) -> Labels {
        self.facts.fact_labels().overlaid_with(&self.facts.labels)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    pub at: UnixMs,
    pub by: String,
    pub reason: String,
}

/// A bootstrap token. The secret itself is never stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub id: TokenId,
    /// SHA-256 of the secret part, hexadecimal.
    pub secret_sha256: String,
    pub created_at: UnixMs,
    pub expires_at: UnixMs,
    pub max_uses: u32,
    pub uses: u32,
    pub labels: Labels,
    pub created_by: String,
    pub description: String,
}

/// An administrator and their role.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminRecord {
    pub name: AdminName,
    pub role: Role,
    pub issued_at: UnixMs,
    pub issued_by: String,
}

/// One entry of the audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Assigned by the store; increasing.
    pub seq: u64,
    pub at: UnixMs,
    pub actor: String,
    pub peer: String,
    pub action: String,
    pub target: String,
    pub result: String,
    pub detail: String,
}

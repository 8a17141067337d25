//! Lure instances and campaigns as persisted: what the registry and the
//! rollout engine keep.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use ruse_proto::types::{AgentId, UnixMs};

use super::resource::Campaign;
use super::template::Template;

/// A lure instance: one slot of one campaign on one agent, for one
/// rotation epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LureInstance {
    /// Shared, not copied, by every index and desired set that names it.
    pub id: Arc<str>,
    pub agent: AgentId,
    pub campaign: String,
    pub slot: String,
    pub template: Template,
    pub epoch: u32,
    pub material: Material,
    pub created: UnixMs,
    pub retired: Option<UnixMs>,
}

/// The revision of one slot in a generation, and what it was computed from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotVersion {
    pub revision: u64,
    /// SHA-256 of the slot and its decoy: equal fingerprints render equally.
    pub fingerprint: String,
}

/// A campaign's spec at one point, with its rotation epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Generation {
    pub number: u64,
    pub spec: Campaign,
    pub epoch: u32,
    pub slots: BTreeMap<String, SlotVersion>,
}

/// Where a campaign's rollout stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum RolloutState {
    Progressing,
    Paused { reason: String, by_failure: bool },
    Completed,
    Aborted { by: String },
}

impl RolloutState {
    pub fn name(&self) -> &'static str {
        match self {
            RolloutState::Progressing => "progressing",
            RolloutState::Paused { .. } => "paused",
            RolloutState::Completed => "completed",
            RolloutState::Aborted { .. } => "aborted",
        }
    }
}

/// A campaign as persisted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CampaignRecord {
    pub target: Generation,
    /// The generation of the last completed rollout, kept by agents outside
    /// the released waves.
    pub stable: Option<Generation>,
    pub rollout: RolloutState,
    /// Index of the last released wave.
    pub wave: usize,
    pub created: UnixMs,
    pub updated: UnixMs,
    pub last_rotated: UnixMs,
}

/// What makes one lure instance unique: its credentials and the seed of its
/// fake content. Kept in the registry forever, so a stolen credential is
/// attributed even after the lure was rotated away.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Material {
    pub seed: u64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub username: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub password: String,
    /// Access key id (AWS).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub key_id: String,
    /// Secret key or bearer token.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub secret: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub ssh_private_key: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub ssh_public_key: String,
    /// `SHA256:…` of the SSH public key, as OpenSSH prints it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub fingerprint: String,
    /// DICOM calling AE title.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub ae_title: String,
    /// HL7 sending application (MSH-3) of the lure's messages.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub application: String,
}

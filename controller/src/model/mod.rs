//! The domain model: every record the controller persists and the
//! vocabulary its subsystems share (templates, campaigns, events,
//! incidents). The bottom layer: it imports nothing else of the
//! controller, the store imports only it, and the subsystems above meet
//! here instead of importing each other's records.

pub mod agent;
pub mod event;
pub mod incident;
pub mod lure;
pub mod resource;
pub mod template;

pub use self::agent::{
    AdminRecord, AgentRecord, Applied, AuditRecord, Revocation, SessionRecord, TokenRecord,
};
pub use self::event::{FLOOD, StoredEvent};
pub use self::incident::{
    Delivery, Hop, Incident, IncidentHead, MAX_INDICATORS, MAX_TIMELINE, Severity, Status,
    Timeline, TimelineEntry,
};
pub use self::lure::{
    CampaignRecord, Generation, LureInstance, Material, RolloutState, SlotVersion,
};
pub use self::resource::{
    AllowRule, Campaign, Cidr, Decoy, LureSlot, ServiceManifest, Suppression,
};
pub use self::template::Template;

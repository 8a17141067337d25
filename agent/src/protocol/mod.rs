//! The agent's side of the wire protocol, and the only agent code that
//! names its generated messages or tonic: enrollment (`enroll.rs`) and the
//! session stream (`session.rs`: hello, heartbeats, updates in, events
//! out, directives). Everything behind it works with domain types
//! (`ruse_proto::spec`, `ruse_proto::event`), converted here.

pub(crate) mod enroll;
pub(crate) mod session;

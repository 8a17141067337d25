//! An event as an agent records, stores and sends it: the agent's domain
//! type, converted to the protocol's `Event` here and nowhere else. What
//! arrives at the controller is checked there (`convert::ReportedEvent`);
//! this side trusts what its own agent made.
//!
//! The agent's outbox keeps events as [`AgentEvent::encode`] bytes, the
//! protocol's encoding, so an outbox written by an earlier agent reads the
//! same.

use prost::Message;

use crate::agent::v1 as pb;
use crate::convert::{DecoyContact, EventProcess, PresentedCredential};

/// A lure or decoy event, as the agent reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentEvent {
    /// Globally unique, time-ordered (a ULID).
    pub id: String,
    /// Per-agent sequence number, strictly increasing.
    pub seq: u64,
    pub lure_id: String,
    pub lure_revision: u64,
    /// touch, modify, delete, rename, drift, or a decoy event's kind.
    pub kind: String,
    pub observed_ms: i64,
    pub path: String,
    /// Who did it, when the watcher can tell.
    pub process: Option<EventProcess>,
    /// What was done, coalesced: open, read, modify, close, delete, rename.
    pub operations: Vec<String>,
    /// How the access was observed (fanotify, inotify, verify, decoy).
    pub attribution: String,
    /// A known benign reader: recorded, not raised.
    pub allowed: bool,
    pub allow_rule: String,
    /// Events of this lure dropped by the rate limit since the previous one.
    pub dropped_before: u32,
    pub template: String,
    pub detail: String,
    /// For events from decoy services: which decoy, and who connected.
    pub decoy: Option<DecoyContact>,
    /// What a client presented to a decoy, NTLM response included (the
    /// controller matches it and never stores it).
    pub credential: Option<PresentedCredential>,
}

/// Bytes that are not an event.
#[derive(Debug, thiserror::Error)]
#[error("not an encoded event: {0}")]
pub struct DecodeError(#[from] prost::DecodeError);

impl AgentEvent {
    /// The protocol's encoding of the event.
    pub fn encode(&self) -> Vec<u8> {
        pb::Event::from(self.clone()).encode_to_vec()
    }

    /// An event from [`AgentEvent::encode`]'s bytes.
    pub fn decode(bytes: &[u8]) -> Result<AgentEvent, DecodeError> {
        Ok(AgentEvent::from(pb::Event::decode(bytes)?))
    }
}

impl From<AgentEvent> for pb::Event {
    fn from(e: AgentEvent) -> Self {
        pb::Event {
            id: e.id,
            seq: e.seq,
            lure_id: e.lure_id,
            lure_revision: e.lure_revision,
            kind: e.kind,
            observed_ms: e.observed_ms,
            path: e.path,
            process: e.process.as_ref().map(pb::Process::from),
            operations: e.operations,
            attribution: e.attribution,
            allowed: e.allowed,
            allow_rule: e.allow_rule,
            dropped_before: e.dropped_before,
            template: e.template,
            detail: e.detail,
            decoy: e.decoy.as_ref().map(pb::DecoyContact::from),
            // The one conversion, plus the NTLM and MySQL responses it
            // leaves out: an agent sends them to its controller to match.
            credential: e.credential.map(|c| pb::Credential {
                ntlm_response: c.ntlm_response.clone(),
                mysql_response: c.mysql_response.clone(),
                ..pb::Credential::from(&c)
            }),
        }
    }
}

/// The agent's own event back (from its outbox): nothing is checked or
/// cut, so what the controller refuses it refuses and audits itself.
impl From<pb::Event> for AgentEvent {
    fn from(e: pb::Event) -> Self {
        let port = |p: u32| u16::try_from(p).unwrap_or(u16::MAX);
        AgentEvent {
            id: e.id,
            seq: e.seq,
            lure_id: e.lure_id,
            lure_revision: e.lure_revision,
            kind: e.kind,
            observed_ms: e.observed_ms,
            path: e.path,
            process: e.process.map(|p| EventProcess {
                pid: p.pid,
                exe: p.exe,
                uid: p.uid,
                user: p.user,
                cmdline: p.cmdline,
            }),
            operations: e.operations,
            attribution: e.attribution,
            allowed: e.allowed,
            allow_rule: e.allow_rule,
            dropped_before: e.dropped_before,
            template: e.template,
            detail: e.detail,
            decoy: e.decoy.map(|d| DecoyContact {
                name: d.name,
                protocol: d.protocol,
                port: port(d.port),
                source_ip: d.source_ip,
                source_port: port(d.source_port),
            }),
            credential: e.credential.map(|c| PresentedCredential {
                username: c.username,
                password: c.password,
                key_fingerprint: c.key_fingerprint,
                key_type: c.key_type,
                ae_title: c.ae_title,
                called_ae_title: c.called_ae_title,
                token: c.token,
                domain: c.domain,
                workstation: c.workstation,
                client: c.client,
                host: c.host,
                application: c.application,
                ntlm_response: c.ntlm_response,
                mysql_response: c.mysql_response,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_survives_the_outbox_encoding_whole() {
        let e = AgentEvent {
            id: "01kb5z8x9q3w4e5r6t7y8v9w0p".into(),
            seq: 9,
            lure_id: "l1".into(),
            lure_revision: 3,
            kind: "touch".into(),
            observed_ms: 1_795_000_000_000,
            path: "/home/n/.aws/credentials".into(),
            process: Some(EventProcess {
                pid: 7,
                exe: "/usr/bin/cat".into(),
                uid: 1000,
                user: "n".into(),
                cmdline: "cat credentials".into(),
            }),
            operations: vec!["open".into(), "read".into()],
            attribution: "fanotify".into(),
            allowed: true,
            allow_rule: "backup".into(),
            dropped_before: 2,
            template: "aws-credentials".into(),
            detail: "d".into(),
            decoy: Some(DecoyContact {
                name: "pacs".into(),
                protocol: "smb".into(),
                port: 445,
                source_ip: "10.0.0.9".into(),
                source_port: 50_000,
            }),
            credential: Some(PresentedCredential {
                username: "u".into(),
                domain: "D".into(),
                ntlm_response: vec![1, 2, 3],
                mysql_response: vec![1, 4, 5],
                ..PresentedCredential::default()
            }),
        };
        let back = AgentEvent::decode(&e.encode()).expect("decodes");
        assert_eq!(back, e);
        assert!(AgentEvent::decode(&[0xff, 0xff]).is_err());
    }
}

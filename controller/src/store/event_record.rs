//! The stored form of an event: a version byte and a protobuf message.
//!
//! Events are the one record written per ingested item, so their size is
//! what the store's B-tree copies when it splits and rewrites nodes: the
//! JSON form (~500 bytes for a plain touch, most of it field names) made
//! sled's node copies and JSON encoding together ~10 % of ingest. This
//! form is about a third of that. Records written as JSON by earlier
//! versions (they start with `{`) are still read.
//!
//! Encoding writes straight from the borrowed event (no owned copy of its
//! top-level strings; the nested process, decoy and credential are
//! converted to their record messages first); decoding goes through
//! [`EventRecord`], whose tags are the contract. The nested messages are
//! the store's own, not the agent protocol's: their tags were the
//! protocol's when this form was introduced and stay so even if the
//! protocol changes. A test round-trips an event with every field set.

use prost::Message;
use prost::bytes::BufMut;
use prost::encoding::{
    WireType, bool as pbool, encode_key, encode_varint, int64, message, uint32, uint64,
};

use ruse_proto::convert::{DecoyContact, EventProcess, PresentedCredential};
use ruse_proto::types::{AgentId, UnixMs};

use crate::model::StoredEvent;

/// First byte of a record in this form (JSON records start with `{`).
const VERSION: u8 = 1;

#[derive(Clone, PartialEq, Message)]
struct EventRecord {
    #[prost(string, tag = "1")]
    id: String,
    #[prost(string, tag = "2")]
    agent: String,
    #[prost(uint64, tag = "3")]
    seq: u64,
    #[prost(string, tag = "4")]
    lure_id: String,
    #[prost(uint64, tag = "5")]
    lure_revision: u64,
    #[prost(string, tag = "6")]
    template: String,
    #[prost(string, tag = "7")]
    campaign: String,
    #[prost(string, tag = "8")]
    kind: String,
    #[prost(string, tag = "9")]
    path: String,
    #[prost(message, optional, tag = "10")]
    process: Option<ProcessRecord>,
    #[prost(string, repeated, tag = "11")]
    operations: Vec<String>,
    #[prost(string, tag = "12")]
    attribution: String,
    #[prost(bool, tag = "13")]
    allowed: bool,
    #[prost(string, tag = "14")]
    allow_rule: String,
    #[prost(uint32, tag = "15")]
    dropped_before: u32,
    #[prost(string, tag = "16")]
    detail: String,
    #[prost(int64, tag = "17")]
    observed: i64,
    #[prost(int64, tag = "18")]
    received: i64,
    #[prost(string, tag = "19")]
    peer: String,
    #[prost(message, optional, tag = "20")]
    decoy: Option<DecoyRecord>,
    #[prost(message, optional, tag = "21")]
    credential: Option<CredentialRecord>,
    #[prost(string, optional, tag = "22")]
    origin_agent: Option<String>,
    #[prost(string, tag = "23")]
    matched_on: String,
    #[prost(bool, tag = "24")]
    drill: bool,
    #[prost(uint64, tag = "25")]
    cursor: u64,
    #[prost(int64, optional, tag = "26")]
    reported_observed: Option<i64>,
}

#[derive(Clone, PartialEq, Message)]
struct ProcessRecord {
    #[prost(uint32, tag = "1")]
    pid: u32,
    #[prost(string, tag = "2")]
    exe: String,
    #[prost(uint32, tag = "3")]
    uid: u32,
    #[prost(string, tag = "4")]
    user: String,
    #[prost(string, tag = "5")]
    cmdline: String,
}

#[derive(Clone, PartialEq, Message)]
struct DecoyRecord {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(string, tag = "2")]
    protocol: String,
    #[prost(uint32, tag = "3")]
    port: u32,
    #[prost(string, tag = "4")]
    source_ip: String,
    #[prost(uint32, tag = "5")]
    source_port: u32,
}

/// What a client presented; never an NTLM response (matching only).
#[derive(Clone, PartialEq, Message)]
struct CredentialRecord {
    #[prost(string, tag = "1")]
    username: String,
    #[prost(string, tag = "2")]
    password: String,
    #[prost(string, tag = "3")]
    key_fingerprint: String,
    #[prost(string, tag = "4")]
    key_type: String,
    #[prost(string, tag = "5")]
    ae_title: String,
    #[prost(string, tag = "6")]
    called_ae_title: String,
    #[prost(string, tag = "7")]
    token: String,
    #[prost(string, tag = "8")]
    domain: String,
    #[prost(string, tag = "9")]
    workstation: String,
    #[prost(string, tag = "10")]
    client: String,
    #[prost(string, tag = "11")]
    host: String,
    #[prost(string, tag = "12")]
    application: String,
}

impl From<&EventProcess> for ProcessRecord {
    fn from(p: &EventProcess) -> Self {
        ProcessRecord {
            pid: p.pid,
            exe: p.exe.clone(),
            uid: p.uid,
            user: p.user.clone(),
            cmdline: p.cmdline.clone(),
        }
    }
}

impl From<&DecoyContact> for DecoyRecord {
    fn from(d: &DecoyContact) -> Self {
        DecoyRecord {
            name: d.name.clone(),
            protocol: d.protocol.clone(),
            port: u32::from(d.port),
            source_ip: d.source_ip.clone(),
            source_port: u32::from(d.source_port),
        }
    }
}

impl TryFrom<DecoyRecord> for DecoyContact {
    type Error = String;

    fn try_from(d: DecoyRecord) -> Result<Self, String> {
        let port = |p: u32| u16::try_from(p).map_err(|_| format!("decoy port {p} is not a port"));
        Ok(DecoyContact {
            name: d.name,
            protocol: d.protocol,
            port: port(d.port)?,
            source_ip: d.source_ip,
            source_port: port(d.source_port)?,
        })
    }
}

impl From<&PresentedCredential> for CredentialRecord {
    fn from(c: &PresentedCredential) -> Self {
        CredentialRecord {
            username: c.username.clone(),
            password: c.password.clone(),
            key_fingerprint: c.key_fingerprint.clone(),
            key_type: c.key_type.clone(),
            ae_title: c.ae_title.clone(),
            called_ae_title: c.called_ae_title.clone(),
            token: c.token.clone(),
            domain: c.domain.clone(),
            workstation: c.workstation.clone(),
            client: c.client.clone(),
            host: c.host.clone(),
            application: c.application.clone(),
        }
    }
}

impl From<CredentialRecord> for PresentedCredential {
    fn from(c: CredentialRecord) -> Self {
        PresentedCredential {
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
            ntlm_response: Vec::new(),
            mysql_response: Vec::new(),
        }
    }
}

/// `e` in the stored form.
pub fn encode(e: &StoredEvent) -> Vec<u8> {
    let mut b = Vec::with_capacity(256);
    b.put_u8(VERSION);
    let s = |tag: u32, v: &str, b: &mut Vec<u8>| {
        if !v.is_empty() {
            text(tag, v, b);
        }
    };
    s(1, &e.id, &mut b);
    text(2, e.agent.as_str(), &mut b);
    uint64::encode(3, &e.seq, &mut b);
    s(4, &e.lure_id, &mut b);
    uint64::encode(5, &e.lure_revision, &mut b);
    s(6, &e.template, &mut b);
    s(7, &e.campaign, &mut b);
    s(8, &e.kind, &mut b);
    s(9, &e.path, &mut b);
    if let Some(p) = &e.process {
        message::encode(10, &ProcessRecord::from(p), &mut b);
    }
    for op in &e.operations {
        text(11, op, &mut b);
    }
    s(12, &e.attribution, &mut b);
    pbool::encode(13, &e.allowed, &mut b);
    s(14, &e.allow_rule, &mut b);
    uint32::encode(15, &e.dropped_before, &mut b);
    s(16, &e.detail, &mut b);
    int64::encode(17, &e.observed.0, &mut b);
    int64::encode(18, &e.received.0, &mut b);
    s(19, &e.peer, &mut b);
    if let Some(d) = &e.decoy {
        message::encode(20, &DecoyRecord::from(d), &mut b);
    }
    if let Some(c) = &e.credential {
        message::encode(21, &CredentialRecord::from(c), &mut b);
    }
    if let Some(a) = &e.origin_agent {
        text(22, a.as_str(), &mut b);
    }
    s(23, &e.matched_on, &mut b);
    pbool::encode(24, &e.drill, &mut b);
    uint64::encode(25, &e.cursor, &mut b);
    if let Some(t) = e.reported_observed {
        int64::encode(26, &t.0, &mut b);
    }
    b
}

/// A string field, from a borrowed `str`.
pub(super) fn text(tag: u32, v: &str, b: &mut Vec<u8>) {
    encode_key(tag, WireType::LengthDelimited, b);
    encode_varint(v.len() as u64, b);
    b.put_slice(v.as_bytes());
}

/// A stored event back, from either form; `Err` says what is wrong.
pub fn decode(bytes: &[u8]) -> Result<StoredEvent, String> {
    match bytes.split_first() {
        Some((&VERSION, rest)) => {
            let r = EventRecord::decode(rest).map_err(|e| e.to_string())?;
            from_record(r)
        }
        Some((b'{', _)) => serde_json::from_slice(bytes).map_err(|e| e.to_string()),
        Some((v, _)) => Err(format!("unknown record version {v}")),
        None => Err("empty record".into()),
    }
}

fn from_record(r: EventRecord) -> Result<StoredEvent, String> {
    let agent = |s: String| AgentId::try_from(s).map_err(|e| format!("agent: {e}"));
    Ok(StoredEvent {
        id: r.id,
        agent: agent(r.agent)?,
        seq: r.seq,
        lure_id: r.lure_id,
        lure_revision: r.lure_revision,
        template: r.template,
        campaign: r.campaign,
        kind: r.kind,
        path: r.path,
        process: r.process.map(|p| EventProcess {
            pid: p.pid,
            exe: p.exe,
            uid: p.uid,
            user: p.user,
            cmdline: p.cmdline,
        }),
        operations: r.operations,
        attribution: r.attribution,
        allowed: r.allowed,
        allow_rule: r.allow_rule,
        dropped_before: r.dropped_before,
        detail: r.detail,
        observed: UnixMs(r.observed),
        received: UnixMs(r.received),
        peer: r.peer,
        decoy: r.decoy.map(DecoyContact::try_from).transpose()?,
        credential: r.credential.map(PresentedCredential::from),
        origin_agent: r.origin_agent.map(agent).transpose()?,
        matched_on: r.matched_on,
        drill: r.drill,
        cursor: r.cursor,
        reported_observed: r.reported_observed.map(UnixMs),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full() -> StoredEvent {
        StoredEvent {
            id: "01kb5z8x9q3w4e5r6t7y8v9w0p".into(),
            agent: "01kb5z8x9q3w4e5r6t7y8v9w0a".parse().unwrap(),
            seq: 42,
            lure_id: "01kb5z8x9q3w4e5r6t7y8v9w0l".into(),
            lure_revision: 7,
            template: "aws-credentials".into(),
            campaign: "icu".into(),
            kind: "credential-use".into(),
            path: "/home/n/.aws/credentials".into(),
            process: Some(EventProcess {
                pid: 4321,
                exe: "/usr/bin/cat".into(),
                uid: 1000,
                user: "nurse".into(),
                cmdline: "cat credentials".into(),
            }),
            operations: vec!["open".into(), "read".into()],
            attribution: "fanotify".into(),
            allowed: true,
            allow_rule: "backup".into(),
            dropped_before: 3,
            detail: "detail".into(),
            observed: UnixMs(-5),
            received: UnixMs(1_790_000_000_000),
            peer: "127.0.0.1:5000".into(),
            decoy: Some(DecoyContact {
                name: "pacs".into(),
                protocol: "dicom".into(),
                port: 104,
                source_ip: "10.0.0.9".into(),
                source_port: 50_000,
            }),
            credential: Some(PresentedCredential {
                username: "u".into(),
                password: "p".into(),
                key_fingerprint: "kf".into(),
                key_type: "kt".into(),
                ae_title: "AE".into(),
                called_ae_title: "CAE".into(),
                token: "t".into(),
                domain: "d".into(),
                workstation: "w".into(),
                client: "c".into(),
                host: "h".into(),
                application: "a".into(),
                ntlm_response: Vec::new(),
                mysql_response: Vec::new(),
            }),
            origin_agent: Some("01kb5z8x9q3w4e5r6t7y8v9w0b".parse().unwrap()),
            matched_on: "username+password".into(),
            drill: true,
            cursor: 1234,
            reported_observed: Some(UnixMs(1 << 60)),
        }
    }

    #[test]
    fn nested_records_are_byte_for_byte_what_earlier_versions_wrote() {
        // Earlier versions encoded these with the agent protocol's
        // messages; stored events must read back the same.
        use ruse_proto::agent::v1 as pb;
        let e = full();
        let p = e.process.as_ref().unwrap();
        assert_eq!(
            ProcessRecord::from(p).encode_to_vec(),
            pb::Process::from(p).encode_to_vec()
        );
        let d = e.decoy.as_ref().unwrap();
        assert_eq!(
            DecoyRecord::from(d).encode_to_vec(),
            pb::DecoyContact::from(d).encode_to_vec()
        );
        let c = e.credential.as_ref().unwrap();
        assert_eq!(
            CredentialRecord::from(c).encode_to_vec(),
            pb::Credential::from(c).encode_to_vec()
        );
    }

    #[test]
    fn every_field_round_trips_and_the_record_is_smaller_than_json() {
        let e = full();
        let bytes = encode(&e);
        assert_eq!(decode(&bytes).unwrap(), e);
        let json = serde_json::to_vec(&e).unwrap();
        assert!(
            bytes.len() * 2 < json.len(),
            "{} vs {}",
            bytes.len(),
            json.len()
        );
        // Empty and default fields too.
        let mut bare = full();
        bare.process = None;
        bare.decoy = None;
        bare.credential = None;
        bare.origin_agent = None;
        bare.operations.clear();
        bare.lure_id.clear();
        bare.seq = 0;
        bare.allowed = false;
        bare.drill = false;
        bare.cursor = 0;
        bare.reported_observed = None;
        assert_eq!(decode(&encode(&bare)).unwrap(), bare);
    }

    #[test]
    fn records_written_as_json_are_still_read() {
        let e = full();
        assert_eq!(decode(&serde_json::to_vec(&e).unwrap()).unwrap(), e);
    }

    #[test]
    fn damaged_records_are_errors_not_panics() {
        let bytes = encode(&full());
        for cut in 0..bytes.len() {
            let _ = decode(&bytes[..cut]);
        }
        assert!(decode(&[]).is_err());
        assert!(decode(&[9, 1, 2]).is_err());
        let mut b = vec![VERSION];
        text(2, "not an agent id", &mut b);
        assert!(decode(&b).unwrap_err().contains("agent"));
    }
}

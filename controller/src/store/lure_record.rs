//! The stored form of lure instances: a version byte and a protobuf
//! message, for a batch of new instances (`lure_batches`) and for one
//! instance (`lures`).
//!
//! A fleet-wide campaign writes 100k instances at once. As JSON (~330
//! bytes each, a third of it field names) their encoding and sled's copy
//! of it were ~12 % of the controller's CPU during a 10k-agent push
//! (perf, `bench/profile/push.sh`); this form is about half the size.
//! Records written as JSON by earlier versions (a batch starts with `[`,
//! one instance with `{`) are still read.
//!
//! Encoding writes straight from the borrowed instance; decoding goes
//! through [`LureRecord`], whose tags are the contract. Templates are
//! stored by name, so reordering the enum changes nothing stored.

use std::sync::Arc;

use prost::Message;
use prost::bytes::BufMut;
use prost::encoding::{WireType, encode_key, encode_varint, fixed64, int64, uint32};

use ruse_proto::types::{AgentId, UnixMs};

use super::event_record::text;
use crate::model::LureInstance;
use crate::model::{Material, Template};

/// First byte of a record in this form (JSON starts with `[` or `{`).
const VERSION: u8 = 1;

#[derive(Clone, PartialEq, Message)]
struct LureBatch {
    #[prost(message, repeated, tag = "1")]
    lures: Vec<LureRecord>,
}

#[derive(Clone, PartialEq, Message)]
struct LureRecord {
    #[prost(string, tag = "1")]
    id: String,
    #[prost(string, tag = "2")]
    agent: String,
    #[prost(string, tag = "3")]
    campaign: String,
    #[prost(string, tag = "4")]
    slot: String,
    #[prost(string, tag = "5")]
    template: String,
    #[prost(uint32, tag = "6")]
    epoch: u32,
    #[prost(int64, tag = "7")]
    created: i64,
    #[prost(int64, optional, tag = "8")]
    retired: Option<i64>,
    #[prost(fixed64, tag = "9")]
    seed: u64,
    #[prost(string, tag = "10")]
    username: String,
    #[prost(string, tag = "11")]
    password: String,
    #[prost(string, tag = "12")]
    key_id: String,
    #[prost(string, tag = "13")]
    secret: String,
    #[prost(string, tag = "14")]
    ssh_private_key: String,
    #[prost(string, tag = "15")]
    ssh_public_key: String,
    #[prost(string, tag = "16")]
    fingerprint: String,
    #[prost(string, tag = "17")]
    ae_title: String,
    #[prost(string, tag = "18")]
    application: String,
}

/// A batch of new instances in the stored form.
pub fn encode_batch(lures: &[Arc<LureInstance>]) -> Vec<u8> {
    let mut b = Vec::with_capacity(1 + lures.len() * 180);
    b.put_u8(VERSION);
    let mut one = Vec::with_capacity(512);
    for lure in lures {
        one.clear();
        fields(lure, &mut one);
        encode_key(1, WireType::LengthDelimited, &mut b);
        encode_varint(one.len() as u64, &mut b);
        b.put_slice(&one);
    }
    b
}

/// One instance in the stored form.
pub fn encode(lure: &LureInstance) -> Vec<u8> {
    let mut b = Vec::with_capacity(256);
    b.put_u8(VERSION);
    fields(lure, &mut b);
    b
}

/// `lure`'s [`LureRecord`] fields, empty strings left out.
fn fields(l: &LureInstance, b: &mut Vec<u8>) {
    let s = |tag: u32, v: &str, b: &mut Vec<u8>| {
        if !v.is_empty() {
            text(tag, v, b);
        }
    };
    s(1, &l.id, b);
    s(2, l.agent.as_str(), b);
    s(3, &l.campaign, b);
    s(4, &l.slot, b);
    s(5, l.template.as_str(), b);
    if l.epoch != 0 {
        uint32::encode(6, &l.epoch, b);
    }
    if l.created.0 != 0 {
        int64::encode(7, &l.created.0, b);
    }
    if let Some(r) = l.retired {
        int64::encode(8, &r.0, b);
    }
    let m = &l.material;
    if m.seed != 0 {
        fixed64::encode(9, &m.seed, b);
    }
    s(10, &m.username, b);
    s(11, &m.password, b);
    s(12, &m.key_id, b);
    s(13, &m.secret, b);
    s(14, &m.ssh_private_key, b);
    s(15, &m.ssh_public_key, b);
    s(16, &m.fingerprint, b);
    s(17, &m.ae_title, b);
    s(18, &m.application, b);
}

/// A batch back, from either form; `Err` says what is wrong.
pub fn decode_batch(bytes: &[u8]) -> Result<Vec<LureInstance>, String> {
    match bytes.split_first() {
        Some((&VERSION, rest)) => LureBatch::decode(rest)
            .map_err(|e| e.to_string())?
            .lures
            .into_iter()
            .map(from_record)
            .collect(),
        Some((b'[', _)) => serde_json::from_slice(bytes).map_err(|e| e.to_string()),
        Some((v, _)) => Err(format!("unknown record version {v}")),
        None => Err("empty record".into()),
    }
}

/// One instance back, from either form; `Err` says what is wrong.
pub fn decode(bytes: &[u8]) -> Result<LureInstance, String> {
    match bytes.split_first() {
        Some((&VERSION, rest)) => from_record(LureRecord::decode(rest).map_err(|e| e.to_string())?),
        Some((b'{', _)) => serde_json::from_slice(bytes).map_err(|e| e.to_string()),
        Some((v, _)) => Err(format!("unknown record version {v}")),
        None => Err("empty record".into()),
    }
}

fn from_record(r: LureRecord) -> Result<LureInstance, String> {
    Ok(LureInstance {
        agent: AgentId::try_from(r.agent).map_err(|e| format!("{}: agent: {e}", r.id))?,
        template: r
            .template
            .parse::<Template>()
            .map_err(|e| format!("{}: template: {e}", r.id))?,
        id: r.id.into(),
        campaign: r.campaign,
        slot: r.slot,
        epoch: r.epoch,
        material: Material {
            seed: r.seed,
            username: r.username,
            password: r.password,
            key_id: r.key_id,
            secret: r.secret,
            ssh_private_key: r.ssh_private_key,
            ssh_public_key: r.ssh_public_key,
            fingerprint: r.fingerprint,
            ae_title: r.ae_title,
            application: r.application,
        },
        created: UnixMs(r.created),
        retired: r.retired.map(UnixMs),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full(id: &str) -> LureInstance {
        LureInstance {
            id: id.into(),
            agent: "01kb5z8x9q3w4e5r6t7y8v9w0a".parse().unwrap(),
            campaign: "icu".into(),
            slot: "pg-1".into(),
            template: Template::SshKey,
            epoch: 3,
            material: Material {
                seed: u64::MAX - 7,
                username: "svc_pacs_ab12".into(),
                password: "Winter2024!xyz".into(),
                key_id: "AKIAEXAMPLE".into(),
                secret: "c2VjcmV0".into(),
                ssh_private_key: "-----BEGIN OPENSSH PRIVATE KEY-----".into(),
                ssh_public_key: "ssh-ed25519 AAAA".into(),
                fingerprint: "SHA256:abc".into(),
                ae_title: "PACS_AB12".into(),
                application: "ADTHUB".into(),
            },
            created: UnixMs(1_790_000_000_000),
            retired: Some(UnixMs(1_790_000_100_000)),
        }
    }

    #[test]
    fn every_field_round_trips_alone_and_in_a_batch() {
        let one = full("01kb5z8x9q3w4e5r6t7y8v9w0l");
        assert_eq!(decode(&encode(&one)).unwrap(), one);
        let mut bare = full("01kb5z8x9q3w4e5r6t7y8v9w0m");
        bare.material = Material::default();
        bare.retired = None;
        bare.epoch = 0;
        let batch = vec![Arc::new(one.clone()), Arc::new(bare.clone())];
        assert_eq!(
            decode_batch(&encode_batch(&batch)).unwrap(),
            vec![one, bare]
        );
    }

    #[test]
    fn json_records_of_earlier_versions_are_read() {
        let one = full("01kb5z8x9q3w4e5r6t7y8v9w0l");
        assert_eq!(decode(&serde_json::to_vec(&one).unwrap()).unwrap(), one);
        let batch = vec![one.clone()];
        assert_eq!(
            decode_batch(&serde_json::to_vec(&batch).unwrap()).unwrap(),
            batch
        );
    }

    #[test]
    fn a_typical_instance_is_about_half_its_json() {
        let mut l = full("01kb5z8x9q3w4e5r6t7y8v9w0l");
        l.template = Template::Pgpass;
        l.material.key_id.clear();
        l.material.ssh_private_key.clear();
        l.material.ssh_public_key.clear();
        l.material.fingerprint.clear();
        l.material.ae_title.clear();
        l.material.application.clear();
        let json = serde_json::to_vec(&l).unwrap().len();
        let ours = encode(&l).len();
        assert!(ours * 10 < json * 6, "{ours} bytes against JSON's {json}");
    }

    #[test]
    fn damaged_records_are_errors_not_panics() {
        let good = encode_batch(&[Arc::new(full("01kb5z8x9q3w4e5r6t7y8v9w0l"))]);
        for cut in 0..good.len() {
            let _ = decode_batch(&good[..cut]);
            let _ = decode(&good[..cut]);
        }
        assert!(decode(&[9, 1, 2]).unwrap_err().contains("version 9"));
        assert!(decode_batch(&[]).is_err());
        let mut bad_template = full("01kb5z8x9q3w4e5r6t7y8v9w0l");
        bad_template.template = Template::Pgpass;
        let mut bytes = encode(&bad_template);
        let at = bytes.windows(6).position(|w| w == b"pgpass").unwrap();
        bytes[at..at + 6].copy_from_slice(b"pgXass");
        assert!(decode(&bytes).unwrap_err().contains("template"));
    }
}

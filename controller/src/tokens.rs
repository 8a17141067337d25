//! Bootstrap tokens: `ruse_<id>.<secret>`.
//!
//! The id (48 random bits) is public and finds the record; the secret (160
//! random bits) is shown once and stored only as its SHA-256. The prefix
//! lets secret scanners recognise a leaked token.

use std::time::Duration;

use ruse_proto::types::{Labels, TokenId, UnixMs, hex, random_bytes};

use crate::model::TokenRecord;

const PREFIX: &str = "ruse_";
/// Length of a token id in hexadecimal digits (see `TokenId::generate`).
const ID_HEX_LEN: usize = 12;
const SECRET_BYTES: usize = 20;

/// A token just created: the secret to show once, and the record to store.
#[derive(Debug)]
pub struct NewToken {
    pub secret: String,
    pub record: TokenRecord,
}

/// What a new token allows.
#[derive(Debug, Clone)]
pub struct TokenSpec {
    pub ttl: Duration,
    pub max_uses: u32,
    pub labels: Labels,
    pub created_by: String,
    pub description: String,
}

/// Creates a token at `now`.
pub fn generate(spec: TokenSpec, now: UnixMs) -> NewToken {
    let id = TokenId::generate();
    let mut secret = [0u8; SECRET_BYTES];
    random_bytes(&mut secret);
    let secret_hex = hex(&secret);
    let record = TokenRecord {
        id: id.clone(),
        secret_sha256: sha256_hex(&secret_hex),
        created_at: now,
        expires_at: now.saturating_add(spec.ttl),
        max_uses: spec.max_uses,
        uses: 0,
        labels: spec.labels,
        created_by: spec.created_by,
        description: spec.description,
    };
    NewToken {
        secret: format!("{PREFIX}{id}.{secret_hex}"),
        record,
    }
}

fn sha256_hex(s: &str) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, s.as_bytes()).as_ref())
}

/// Splits a presented token into its id and secret. `None` when it is not
/// shaped like a token at all.
pub fn parse(token: &str) -> Option<(TokenId, &str)> {
    let rest = token.trim().strip_prefix(PREFIX)?;
    let (id, secret) = rest.split_once('.')?;
    if id.len() != ID_HEX_LEN || secret.len() != SECRET_BYTES * 2 {
        return None;
    }
    if !secret.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    Some((id.parse().ok()?, secret))
}

/// Whether `secret` is the one `record` was created with. Compares digests
/// in constant time.
pub fn secret_matches(record: &TokenRecord, secret: &str) -> bool {
    let presented = sha256_hex(&secret.to_ascii_lowercase());
    let stored = record.secret_sha256.as_bytes();
    let presented = presented.as_bytes();
    if stored.len() != presented.len() {
        return false;
    }
    stored
        .iter()
        .zip(presented)
        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
        == 0
}

/// Why a token cannot be used now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unusable {
    Expired,
    Exhausted,
}

/// Whether a token whose secret matched may enroll one more agent at `now`.
pub fn check_usable(record: &TokenRecord, now: UnixMs) -> Result<(), Unusable> {
    if now >= record.expires_at {
        return Err(Unusable::Expired);
    }
    if record.uses >= record.max_uses {
        return Err(Unusable::Exhausted);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> TokenSpec {
        TokenSpec {
            ttl: Duration::from_secs(60),
            max_uses: 2,
            labels: Labels::new(),
            created_by: "admin/root".into(),
            description: String::new(),
        }
    }

    #[test]
    fn generated_token_parses_and_verifies() {
        let t = generate(spec(), UnixMs(1000));
        let (id, secret) = parse(&t.secret).unwrap();
        assert_eq!(id, t.record.id);
        assert!(secret_matches(&t.record, secret));
        assert!(!t.record.secret_sha256.contains(secret));
        assert_eq!(t.record.expires_at, UnixMs(61_000));
        // 160 bits of secret.
        assert_eq!(secret.len() * 4, 160);
    }

    #[test]
    fn wrong_secret_and_malformed_tokens_are_refused() {
        let t = generate(spec(), UnixMs(0));
        let other = generate(spec(), UnixMs(0));
        let (_, other_secret) = parse(&other.secret).unwrap();
        assert!(!secret_matches(&t.record, other_secret));
        for bad in [
            "",
            "ruse_",
            "ruse_abc.def",
            "token",
            "ruse_0123456789ab",
            "ruse_0123456789ab.zz23456789012345678901234567890123456789",
        ] {
            assert!(parse(bad).is_none(), "{bad} parsed");
        }
    }

    #[test]
    fn usability_follows_expiry_and_uses() {
        let mut t = generate(spec(), UnixMs(0)).record;
        assert_eq!(check_usable(&t, UnixMs(59_999)), Ok(()));
        assert_eq!(check_usable(&t, UnixMs(60_000)), Err(Unusable::Expired));
        t.uses = 2;
        assert_eq!(check_usable(&t, UnixMs(1)), Err(Unusable::Exhausted));
    }
}

//! Matching what a client presented to a decoy against every lure ever
//! planted (retired instances included): a match names the lure instance
//! and so the host the credential was stolen from.
//!
//! Strongest evidence first: an SSH key fingerprint, a username with its
//! password (or, for NTLM, a response only the password could compute), a
//! token or access key, a DICOM calling AE title, a username alone, a
//! hosts-entry alias in an HTTP Host header. Lure usernames, AE titles and
//! aliases carry 40 random bits, so neither a collision with a real account
//! nor a forger's guess is likely; a password that matches no lure is
//! never stored in clear (see [`redact`]), an NTLM response never at all.

// Seeded fast hashing (see deploy/mod.rs); every lure ever made is indexed here.
use std::sync::Arc;

use foldhash::HashMap;

use ruse_proto::convert::PresentedCredential;

use crate::model::LureInstance;
use crate::model::Template;

/// What matched, for the event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatchedOn {
    SshKey,
    UsernamePassword,
    /// An NTLMv2 response computed from the planted password.
    NtlmResponse,
    /// A MySQL auth response computed from the planted password.
    MysqlResponse,
    Token,
    AeTitle,
    Username,
    HostAlias,
    Hl7Application,
}

impl MatchedOn {
    pub fn as_str(self) -> &'static str {
        match self {
            MatchedOn::SshKey => "ssh key fingerprint",
            MatchedOn::UsernamePassword => "username and password",
            MatchedOn::NtlmResponse => "username and NTLMv2 response",
            MatchedOn::MysqlResponse => "username and MySQL auth response",
            MatchedOn::Token => "token",
            MatchedOn::AeTitle => "calling AE title",
            MatchedOn::Username => "username",
            MatchedOn::HostAlias => "hosts-entry alias",
            MatchedOn::Hl7Application => "HL7 sending application",
        }
    }
}

/// Lure ids (shared with the instances) by the material a client could
/// present.
#[derive(Debug, Default)]
pub struct CredentialIndex {
    fingerprint: HashMap<String, Arc<str>>,
    username: HashMap<String, Vec<Arc<str>>>,
    token: HashMap<String, Arc<str>>,
    ae_title: HashMap<String, Arc<str>>,
    alias: HashMap<String, Arc<str>>,
    application: HashMap<String, Arc<str>>,
}

impl CredentialIndex {
    /// Indexes one lure instance (active or retired).
    pub fn add(&mut self, lure: &LureInstance) {
        let m = &lure.material;
        let id = lure.id.clone();
        if !m.fingerprint.is_empty() {
            self.fingerprint.insert(m.fingerprint.clone(), id.clone());
        }
        if !m.application.is_empty() {
            self.application
                .insert(m.application.to_uppercase(), id.clone());
        }
        if lure.template == Template::HostsEntry {
            if !m.username.is_empty() {
                self.alias.insert(m.username.to_lowercase(), id);
            }
            return;
        }
        if !m.username.is_empty() {
            let ids = self.username.entry(m.username.to_lowercase()).or_default();
            if !ids.contains(&id) {
                ids.push(id.clone());
            }
        }
        for t in [&m.secret, &m.key_id] {
            if !t.is_empty() {
                self.token.insert(t.clone(), id.clone());
            }
        }
        if !m.ae_title.is_empty() {
            self.ae_title.insert(m.ae_title.to_uppercase(), id);
        }
    }

    /// Room for `n` more instances' material (by username and secret,
    /// which most templates carry).
    pub fn reserve(&mut self, n: usize) {
        self.username.reserve(n);
        self.token.reserve(n);
    }

    /// Lure instances indexed.
    pub fn len(&self) -> usize {
        self.fingerprint.len()
            + self.username.values().map(Vec::len).sum::<usize>()
            + self.ae_title.len()
            + self.alias.len()
            + self.application.len()
    }

    /// Whether nothing is indexed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Candidate lure ids for `c`, strongest evidence first. Passwords are
    /// checked by [`confirm`] against each candidate's material.
    pub fn candidates(&self, c: &PresentedCredential) -> Vec<(Arc<str>, MatchedOn)> {
        let mut out = Vec::new();
        if let Some(id) = self.fingerprint.get(&c.key_fingerprint) {
            out.push((id.clone(), MatchedOn::SshKey));
        }
        if !c.username.is_empty() {
            // NTLM and HTTP forms may carry DOMAIN\user or user@domain.
            let bare = c
                .username
                .rsplit('\\')
                .next()
                .and_then(|u| u.split('@').next())
                .unwrap_or(&c.username)
                .to_lowercase();
            for name in [c.username.to_lowercase(), bare] {
                for id in self.username.get(&name).into_iter().flatten() {
                    if !c.password.is_empty() {
                        out.push((id.clone(), MatchedOn::UsernamePassword));
                    }
                    if !c.ntlm_response.is_empty() {
                        out.push((id.clone(), MatchedOn::NtlmResponse));
                    }
                    if !c.mysql_response.is_empty() {
                        out.push((id.clone(), MatchedOn::MysqlResponse));
                    }
                    out.push((id.clone(), MatchedOn::Username));
                }
            }
        }
        if !c.token.is_empty() {
            if let Some(id) = self.token.get(&c.token) {
                out.push((id.clone(), MatchedOn::Token));
            }
            // Basic auth with a client id and secret, or key id and secret.
            if let Some(id) = self.token.get(&c.password) {
                out.push((id.clone(), MatchedOn::Token));
            }
        } else if !c.password.is_empty()
            && let Some(id) = self.token.get(&c.password)
        {
            out.push((id.clone(), MatchedOn::Token));
        }
        if let Some(id) = self.ae_title.get(&c.ae_title.to_uppercase()) {
            out.push((id.clone(), MatchedOn::AeTitle));
        }
        if !c.application.is_empty()
            && let Some(id) = self.application.get(&c.application.to_uppercase())
        {
            out.push((id.clone(), MatchedOn::Hl7Application));
        }
        if !c.host.is_empty() {
            let host = c.host.rsplit_once(':').map_or(c.host.as_str(), |(h, _)| h);
            let first = host.split('.').next().unwrap_or(host).to_lowercase();
            if let Some(id) = self.alias.get(&first) {
                out.push((id.clone(), MatchedOn::HostAlias));
            }
        }
        out
    }
}

/// Whether `lure` really carries what `on` claims `c` matched.
pub fn confirm(lure: &LureInstance, c: &PresentedCredential, on: MatchedOn) -> bool {
    let m = &lure.material;
    match on {
        MatchedOn::UsernamePassword => !m.password.is_empty() && m.password == c.password,
        MatchedOn::NtlmResponse => {
            !m.password.is_empty()
                && ntlmv2_proves(&m.password, &c.username, &c.domain, &c.ntlm_response)
        }
        MatchedOn::MysqlResponse => {
            !m.password.is_empty() && mysql_native_proves(&m.password, &c.mysql_response)
        }
        MatchedOn::SshKey
        | MatchedOn::Token
        | MatchedOn::AeTitle
        | MatchedOn::Username
        | MatchedOn::HostAlias
        | MatchedOn::Hl7Application => true,
    }
}

/// Whether `response` (the server challenge, then the client's NTLMv2
/// response: NTProofStr and blob) was computed from `password` for `user`
/// in `domain`, as they appeared in the AUTHENTICATE message (MS-NLMP
/// 3.3.2: NTOWFv2 = HMAC-MD5(MD4(password), UPPER(user) + domain), the
/// proof = HMAC-MD5(NTOWFv2, challenge + blob)).
pub fn ntlmv2_proves(password: &str, user: &str, domain: &str, response: &[u8]) -> bool {
    use hmac::{Hmac, Mac};
    use md4::{Digest, Md4};
    type HmacMd5 = Hmac<md5::Md5>;

    if response.len() <= 8 + 16 {
        return false;
    }
    let (challenge, rest) = response.split_at(8);
    let (proof, blob) = rest.split_at(16);
    let utf16 = |s: &str| -> Vec<u8> { s.encode_utf16().flat_map(u16::to_le_bytes).collect() };
    let nt_hash = Md4::digest(utf16(password));
    let Ok(mut owf) = HmacMd5::new_from_slice(&nt_hash) else {
        return false;
    };
    owf.update(&utf16(&(user.to_uppercase() + domain)));
    let key = owf.finalize().into_bytes();
    let Ok(mut mac) = HmacMd5::new_from_slice(&key) else {
        return false;
    };
    mac.update(challenge);
    mac.update(blob);
    // Constant time: a forger learns nothing from how long a no takes.
    mac.verify_slice(proof).is_ok()
}

/// Whether `response` (scheme 1, the server's 20-byte scramble, the
/// client's 20-byte auth response) is `mysql_native_password`'s proof of
/// `password`: SHA1(password) XOR SHA1(scramble + SHA1(SHA1(password))).
pub fn mysql_native_proves(password: &str, response: &[u8]) -> bool {
    use ring::digest::{SHA1_FOR_LEGACY_USE_ONLY as SHA1, digest};
    let [1, rest @ ..] = response else {
        return false;
    };
    if rest.len() != 40 {
        return false;
    }
    let (scramble, proof) = rest.split_at(20);
    let stage1 = digest(&SHA1, password.as_bytes());
    let stage2 = digest(&SHA1, stage1.as_ref());
    let mut ctx = ring::digest::Context::new(&SHA1);
    ctx.update(scramble);
    ctx.update(stage2.as_ref());
    let mask = ctx.finish();
    // Every byte compared whatever differs (constant time, as for NTLM).
    let differs = stage1
        .as_ref()
        .iter()
        .zip(mask.as_ref())
        .zip(proof)
        .fold(0u8, |acc, ((s, m), p)| acc | (s ^ m ^ p));
    differs == 0
}

/// A password that matched no lure, as stored: its length and a short
/// digest, so repeated guesses can be told apart without keeping a real
/// user's mistyped password.
pub fn redact(password: &str) -> String {
    if password.is_empty() {
        return String::new();
    }
    let digest = ring::digest::digest(&ring::digest::SHA256, password.as_bytes());
    format!(
        "<redacted: {} characters, sha256 {}>",
        password.chars().count(),
        ruse_proto::types::hex(&digest.as_ref()[..4])
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lures::Material;
    use ruse_proto::types::{AgentId, UnixMs};

    fn lure(id: &str, template: Template, f: impl FnOnce(&mut Material)) -> LureInstance {
        let mut material = Material::default();
        f(&mut material);
        LureInstance {
            id: id.into(),
            agent: AgentId::generate(),
            campaign: "c".into(),
            slot: "s".into(),
            template,
            epoch: 0,
            material,
            created: UnixMs(0),
            retired: None,
        }
    }

    #[test]
    fn strongest_evidence_first() {
        let mut index = CredentialIndex::default();
        let smb = lure("smb", Template::SmbCredentials, |m| {
            m.username = "svc_scan7k2".into();
            m.password = "Pw1".into();
        });
        index.add(&smb);
        index.add(&lure("ssh", Template::SshKey, |m| {
            m.username = "radiology7".into();
            m.fingerprint = "SHA256:abc".into();
        }));
        index.add(&lure("pacs", Template::PacsConfig, |m| {
            m.ae_title = "RADWSAB12".into()
        }));
        index.add(&lure("hosts", Template::HostsEntry, |m| {
            m.username = "pacs-bkp-x1".into()
        }));
        index.add(&lure("kube", Template::Kubeconfig, |m| {
            m.secret = "eyJtoken".into()
        }));

        let c = PresentedCredential {
            username: "HOSPITAL\\SVC_SCAN7K2".into(),
            password: "Pw1".into(),
            ..Default::default()
        };
        let found = index.candidates(&c);
        assert_eq!(found[0], ("smb".into(), MatchedOn::UsernamePassword));
        assert!(confirm(&smb, &c, MatchedOn::UsernamePassword));
        let wrong = PresentedCredential {
            password: "nope".into(),
            ..c.clone()
        };
        assert!(!confirm(&smb, &wrong, MatchedOn::UsernamePassword));
        assert!(
            index
                .candidates(&wrong)
                .contains(&("smb".into(), MatchedOn::Username))
        );

        let key = PresentedCredential {
            username: "radiology7".into(),
            key_fingerprint: "SHA256:abc".into(),
            ..Default::default()
        };
        assert_eq!(index.candidates(&key)[0], ("ssh".into(), MatchedOn::SshKey));
        let ae = PresentedCredential {
            ae_title: "radwsab12".into(),
            ..Default::default()
        };
        assert_eq!(
            index.candidates(&ae),
            vec![("pacs".into(), MatchedOn::AeTitle)]
        );
        let host = PresentedCredential {
            host: "pacs-bkp-x1:8443".into(),
            ..Default::default()
        };
        assert_eq!(
            index.candidates(&host),
            vec![("hosts".into(), MatchedOn::HostAlias)]
        );
        let bearer = PresentedCredential {
            token: "eyJtoken".into(),
            ..Default::default()
        };
        assert_eq!(
            index.candidates(&bearer),
            vec![("kube".into(), MatchedOn::Token)]
        );
        assert!(index.candidates(&PresentedCredential::default()).is_empty());
    }

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// MS-NLMP 4.2.4: user "User", domain "Domain", password "Password",
    /// server challenge 0123456789abcdef, client challenge aa..aa, time 0,
    /// the server's names as target information.
    fn nlmp_response() -> Vec<u8> {
        let av = "02000c0044006f006d00610069006e0001000c0053006500720076006500720000000000";
        let blob = format!(
            "0101000000000000{}{}00000000{av}00000000",
            "00".repeat(8),
            "aa".repeat(8)
        );
        unhex(&format!(
            "0123456789abcdef68cd0ab851e51c96aabc927bebef6a1c{blob}"
        ))
    }

    #[test]
    fn ntlmv2_responses_are_checked_against_the_password() {
        let r = nlmp_response();
        assert!(ntlmv2_proves("Password", "User", "Domain", &r));
        // The user name is case-insensitive, the domain is not (as sent).
        assert!(ntlmv2_proves("Password", "user", "Domain", &r));
        assert!(!ntlmv2_proves("Password", "User", "DOMAIN", &r));
        assert!(!ntlmv2_proves("password", "User", "Domain", &r));
        assert!(!ntlmv2_proves("Password", "Other", "Domain", &r));
        let mut other_challenge = r.clone();
        other_challenge[0] ^= 1;
        assert!(!ntlmv2_proves(
            "Password",
            "User",
            "Domain",
            &other_challenge
        ));
        assert!(!ntlmv2_proves("Password", "User", "Domain", &r[..24]));
        assert!(!ntlmv2_proves("Password", "User", "Domain", &[]));

        let mut index = CredentialIndex::default();
        let smb = lure("smb", Template::SmbCredentials, |m| {
            m.username = "User".into();
            m.password = "Password".into();
        });
        index.add(&smb);
        let c = PresentedCredential {
            username: "User".into(),
            domain: "Domain".into(),
            ntlm_response: r,
            ..Default::default()
        };
        let found = index.candidates(&c);
        assert_eq!(found[0], ("smb".into(), MatchedOn::NtlmResponse));
        assert!(confirm(&smb, &c, MatchedOn::NtlmResponse));
        let guessed = PresentedCredential {
            domain: "Elsewhere".into(),
            ..c
        };
        assert!(!confirm(&smb, &guessed, MatchedOn::NtlmResponse));
    }

    #[test]
    fn a_mysql_auth_response_proves_the_planted_password() {
        use ring::digest::{SHA1_FOR_LEGACY_USE_ONLY as SHA1, digest};
        // What a client computes (independently of the function above).
        let scramble = *b"01234567890123456789";
        let client = |password: &str| -> Vec<u8> {
            let s1 = digest(&SHA1, password.as_bytes());
            let s2 = digest(&SHA1, s1.as_ref());
            let mut joined = scramble.to_vec();
            joined.extend_from_slice(s2.as_ref());
            let mask = digest(&SHA1, &joined);
            let mut r = vec![1];
            r.extend_from_slice(&scramble);
            r.extend(s1.as_ref().iter().zip(mask.as_ref()).map(|(a, b)| a ^ b));
            r
        };
        let r = client("Tr0ub4dor&3");
        assert!(mysql_native_proves("Tr0ub4dor&3", &r));
        assert!(!mysql_native_proves("Tr0ub4dor&4", &r));
        assert!(!mysql_native_proves("Tr0ub4dor&3", &r[..40]));
        let mut scheme = r.clone();
        scheme[0] = 2;
        assert!(!mysql_native_proves("Tr0ub4dor&3", &scheme));

        let mut index = CredentialIndex::default();
        let my = lure("my", Template::MysqlCredentials, |m| {
            m.username = "lis_app_x".into();
            m.password = "Tr0ub4dor&3".into();
        });
        index.add(&my);
        let c = PresentedCredential {
            username: "lis_app_x".into(),
            mysql_response: r,
            ..Default::default()
        };
        let found = index.candidates(&c);
        assert_eq!(found[0], ("my".into(), MatchedOn::MysqlResponse));
        assert!(confirm(&my, &c, MatchedOn::MysqlResponse));
        let wrong = PresentedCredential {
            mysql_response: client("guess"),
            ..c
        };
        assert!(!confirm(&my, &wrong, MatchedOn::MysqlResponse));
    }

    #[test]
    fn redaction_keeps_no_password() {
        let r = redact("Summer2026!");
        assert!(!r.contains("Summer"));
        assert!(r.contains("11 characters"));
        assert_eq!(r, redact("Summer2026!"));
        assert_ne!(r, redact("Summer2027!"));
    }
}

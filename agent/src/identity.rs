//! The agent's identity on disk.
//!
//! ```text
//! <state>/agent.pem   private key and certificate together (0600), replaced
//!                     atomically so key and certificate always match
//! <state>/ca.pem      the controller's trust bundle
//! ```
//!
//! The agent id and trust domain are read from the certificate, so there is
//! nothing else to keep in step.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rustls::pki_types::CertificateDer;

use ruse_pki::{PkiError, PrivateKey, pem_decode_certificates, pem_encode};
use ruse_proto::types::{AgentId, Identity, TrustDomain, UnixMs};

/// An enrolled agent's credentials.
#[derive(Debug)]
pub struct AgentIdentity {
    pub id: AgentId,
    pub trust_domain: TrustDomain,
    pub key: PrivateKey,
    pub cert: CertificateDer<'static>,
    pub trust_bundle: Vec<CertificateDer<'static>>,
    pub not_after: UnixMs,
    /// When the certificate was issued (its validity start, less the CA's
    /// allowance for clock skew).
    pub issued_at: UnixMs,
}

/// Why the state directory could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error("{path}: {reason}")]
    Invalid { path: String, reason: String },
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

fn key_cert_path(state: &Path) -> PathBuf {
    state.join("agent.pem")
}

fn bundle_path(state: &Path) -> PathBuf {
    state.join("ca.pem")
}

impl AgentIdentity {
    /// Builds an identity from what the controller issued, checking that the
    /// certificate is for `key` and names an agent.
    pub fn from_issued(
        key: PrivateKey,
        cert: CertificateDer<'static>,
        trust_bundle: Vec<CertificateDer<'static>>,
    ) -> Result<Self, StateError> {
        let invalid = |reason: String| StateError::Invalid {
            path: "issued certificate".into(),
            reason,
        };
        let ca_pem = trust_bundle
            .first()
            .map(|ca| pem_encode("CERTIFICATE", ca))
            .ok_or_else(|| invalid("empty trust bundle".into()))?;
        let trust_domain = ruse_pki::ca_trust_domain(&ca_pem)?;
        let info = ruse_pki::certificate_identity(&trust_domain, &cert)?;
        let Identity::Agent(id) = info.identity else {
            return Err(invalid(
                "the certificate is not an agent certificate".into(),
            ));
        };
        if !ruse_pki::certificate_matches_key(&cert, &key)? {
            return Err(invalid(
                "the certificate is not for this agent's key".into(),
            ));
        }
        let not_before = ruse_pki::certificate_not_before(&cert)?;
        Ok(AgentIdentity {
            id,
            trust_domain,
            key,
            cert,
            trust_bundle,
            not_after: info.not_after,
            issued_at: not_before.saturating_add(ruse_pki::CLOCK_SKEW),
        })
    }

    /// Loads the identity in `state`, or `None` if the agent never enrolled.
    pub fn load(state: &Path) -> Result<Option<Self>, StateError> {
        let path = key_cert_path(state);
        if !path.exists() {
            return Ok(None);
        }
        let pem = ruse_pki::read_private_file(&path)?;
        let key = PrivateKey::from_pem(&pem)?;
        let cert = pem_decode_certificates(&pem, &path.display().to_string())?
            .into_iter()
            .next()
            .ok_or_else(|| StateError::Invalid {
                path: path.display().to_string(),
                reason: "no certificate".into(),
            })?;
        let bundle_file = bundle_path(state);
        let bundle_pem =
            std::fs::read_to_string(&bundle_file).map_err(|source| StateError::Io {
                path: bundle_file.display().to_string(),
                source,
            })?;
        let bundle = pem_decode_certificates(&bundle_pem, &bundle_file.display().to_string())?;
        Self::from_issued(key, cert, bundle).map(Some)
    }

    /// Writes the identity to `state`.
    pub fn save(&self, state: &Path) -> Result<(), StateError> {
        let bundle: String = self
            .trust_bundle
            .iter()
            .map(|c| pem_encode("CERTIFICATE", c))
            .collect();
        ruse_pki::write_public_file(&bundle_path(state), bundle.as_bytes())?;
        let both = format!(
            "{}{}",
            self.key.to_pem(),
            pem_encode("CERTIFICATE", &self.cert)
        );
        ruse_pki::write_private_file(&key_cert_path(state), both.as_bytes())?;
        Ok(())
    }

    /// Removes the identity (before re-enrolling).
    pub fn remove(state: &Path) -> Result<(), StateError> {
        let path = key_cert_path(state);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(StateError::Io {
                path: path.display().to_string(),
                source,
            }),
        }
    }

    pub fn expired(&self, now: UnixMs) -> bool {
        now >= self.not_after
    }

    /// When to renew: at 65–75 % of the lifetime (uniform jitter), so a fleet
    /// enrolled together does not renew together.
    pub fn renew_at(&self, jitter: f64) -> UnixMs {
        let lifetime = self.issued_at.until(self.not_after);
        let fraction = 0.65 + 0.10 * jitter.clamp(0.0, 1.0);
        self.issued_at
            .saturating_add(Duration::from_secs_f64(lifetime.as_secs_f64() * fraction))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ruse_pki::CertificateAuthority;

    #[test]
    fn save_load_round_trip_and_renewal_point() {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::generate("ruse.test".parse().unwrap()).unwrap();
        let key = PrivateKey::generate().unwrap();
        let id = Identity::Agent("01agent".parse().unwrap());
        let cert = ca
            .sign_client_csr(&key.csr_der().unwrap(), &id, Duration::from_secs(1000))
            .unwrap();
        let identity =
            AgentIdentity::from_issued(key, cert.der.clone(), vec![ca.cert_der().clone()]).unwrap();
        identity.save(dir.path()).unwrap();
        let loaded = AgentIdentity::load(dir.path()).unwrap().unwrap();
        assert_eq!(loaded.id.as_str(), "01agent");
        assert_eq!(loaded.cert, cert.der);
        let lifetime = loaded.issued_at.until(loaded.not_after).as_secs();
        assert!((999..=1001).contains(&lifetime), "{lifetime}");
        let early = loaded.issued_at.until(loaded.renew_at(0.0)).as_secs();
        let late = loaded.issued_at.until(loaded.renew_at(1.0)).as_secs();
        assert!((649..=651).contains(&early) && (749..=751).contains(&late));
        AgentIdentity::remove(dir.path()).unwrap();
        assert!(AgentIdentity::load(dir.path()).unwrap().is_none());
    }

    #[test]
    fn a_certificate_for_another_key_is_refused() {
        let ca = CertificateAuthority::generate("ruse.test".parse().unwrap()).unwrap();
        let (cert, _) = ca
            .issue_client(
                &Identity::Agent("a".parse().unwrap()),
                Duration::from_secs(60),
            )
            .unwrap();
        let other = PrivateKey::generate().unwrap();
        assert!(AgentIdentity::from_issued(other, cert.der, vec![ca.cert_der().clone()]).is_err());
    }
}

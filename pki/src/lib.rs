//! Ruse's public-key infrastructure: the controller's certificate authority,
//! CSR signing, identities read from certificates, CA pins, and every rustls
//! configuration the project uses.
//!
//! Invariants:
//! - **Identity comes from the URI SAN only** (`spiffe://<td>/agent/<id>`,
//!   `spiffe://<td>/admin/<name>`); the subject CN is never read.
//! - **Only the public key of a CSR is used**: the CA decides the identity,
//!   lifetime and usages of every certificate it signs.
//! - **One crypto provider** (ring) and TLS 1.3 only, everywhere.
// Unsafe code only in the Windows modules that call the Win32 API.
#![deny(unsafe_code)]

mod files;
mod tls;

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PublicKeyData,
    SanType, SerialNumber,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use ruse_proto::types::{Identity, TrustDomain, UnixMs, hex, random_bytes, unhex};

pub use files::{
    create_private_dir, open_private_append, read_mounted_private_file, read_private_file,
    write_private_file, write_private_file_with, write_public_file,
};
pub use rustls;
pub use tls::{
    ClientAuth, Denylist, NoDenylist, ServerCert, anonymous_client_config, client_config,
    console_server_config, database_client_config, decoy_server_config, decoy_server_config_of,
    pinned_client_config, plain_client_config, plain_server_config, server_config,
    validity_error_text,
};

/// Things that go wrong with keys and certificates.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("invalid certificate: {0}")]
    InvalidCertificate(String),
    #[error("invalid certificate signing request: {0}")]
    InvalidCsr(String),
    #[error("certificate has no usable identity: {0}")]
    NoIdentity(String),
    #[error("invalid PEM in {what}: {reason}")]
    Pem { what: String, reason: String },
    #[error("tls configuration: {0}")]
    Tls(#[from] rustls::Error),
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path} is readable by other users (mode {mode:o}); run `chmod 600 {path}` and try again"
    )]
    InsecurePermissions { path: String, mode: u32 },
}

/// The SHA-256 of a certificate's SubjectPublicKeyInfo, printed as
/// `sha256:<hex>`. Agents pin the controller's CA with it before they hold
/// any certificate of their own (the kubeadm discovery model).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct CaPin([u8; 32]);

impl CaPin {
    /// The pin of a DER certificate.
    pub fn of_certificate(cert_der: &[u8]) -> Result<Self, PkiError> {
        let cert = parse_certificate(cert_der)?;
        let digest =
            ring::digest::digest(&ring::digest::SHA256, cert.tbs_certificate.subject_pki.raw);
        let mut pin = [0u8; 32];
        pin.copy_from_slice(digest.as_ref());
        Ok(CaPin(pin))
    }
}

impl fmt::Display for CaPin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", hex(&self.0))
    }
}

impl fmt::Debug for CaPin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Why a CA pin could not be read.
#[derive(Debug, thiserror::Error)]
#[error("invalid CA pin {0:?}: expected sha256: followed by 64 hexadecimal digits")]
pub struct InvalidPin(String);

impl FromStr for CaPin {
    type Err = InvalidPin;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || InvalidPin(s.chars().take(80).collect());
        let digits = s.trim().strip_prefix("sha256:").ok_or_else(bad)?;
        let bytes = unhex(digits).ok_or_else(bad)?;
        let pin: [u8; 32] = bytes.try_into().map_err(|_| bad())?;
        Ok(CaPin(pin))
    }
}

/// A private key generated here (ECDSA P-256), never sent anywhere.
pub struct PrivateKey(KeyPair);

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PrivateKey(ECDSA P-256, redacted)")
    }
}

impl PrivateKey {
    pub fn generate() -> Result<Self, PkiError> {
        Ok(PrivateKey(KeyPair::generate_for(
            &rcgen::PKCS_ECDSA_P256_SHA256,
        )?))
    }

    pub fn from_pem(pem: &str) -> Result<Self, PkiError> {
        let key = KeyPair::from_pem(pem).map_err(|e| PkiError::Pem {
            what: "private key".into(),
            reason: e.to_string(),
        })?;
        Ok(PrivateKey(key))
    }

    pub fn to_pem(&self) -> String {
        self.0.serialize_pem()
    }

    /// PKCS#8 DER, for rustls.
    pub fn to_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.0.serialize_der()))
    }

    /// A PKCS#10 request for this key. It names nothing: the CA decides the
    /// identity.
    pub fn csr_der(&self) -> Result<Vec<u8>, PkiError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        Ok(params.serialize_request(&self.0)?.der().to_vec())
    }
}

/// A certificate the CA issued, with what callers need to know about it.
#[derive(Debug, Clone)]
pub struct IssuedCert {
    pub der: CertificateDer<'static>,
    pub not_after: UnixMs,
    /// Hexadecimal serial number.
    pub serial: String,
}

impl IssuedCert {
    pub fn to_pem(&self) -> String {
        pem_encode("CERTIFICATE", &self.der)
    }
}

/// The controller's certificate authority (ECDSA P-256).
pub struct CertificateAuthority {
    trust_domain: TrustDomain,
    cert_der: CertificateDer<'static>,
    key: KeyPair,
}

impl fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("trust_domain", &self.trust_domain)
            .field("pin", &self.pin())
            .finish_non_exhaustive()
    }
}

/// Lifetime of a newly generated CA.
pub const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 86_400);
/// Certificates are valid from this long before they were issued, so small
/// clock differences between hosts do not reject fresh certificates.
pub const CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);

impl CertificateAuthority {
    /// A new CA for `trust_domain`, valid for ten years.
    pub fn generate(trust_domain: TrustDomain) -> Result<Self, PkiError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Ruse");
        dn.push(DnType::CommonName, format!("Ruse CA {trust_domain}"));
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.subject_alt_names =
            vec![SanType::URI(format!("spiffe://{trust_domain}").try_into()?)];
        set_validity(&mut params, CA_LIFETIME);
        params.serial_number = Some(random_serial());
        let cert = params.self_signed(&key)?;
        Ok(CertificateAuthority {
            trust_domain,
            cert_der: cert.der().clone(),
            key,
        })
    }

    /// Loads a CA from its certificate and key in PEM.
    pub fn from_pem(
        trust_domain: TrustDomain,
        cert_pem: &str,
        key_pem: &str,
    ) -> Result<Self, PkiError> {
        let cert_der = pem_decode_certificates(cert_pem, "CA certificate")?
            .into_iter()
            .next()
            .ok_or_else(|| PkiError::Pem {
                what: "CA certificate".into(),
                reason: "no CERTIFICATE block".into(),
            })?;
        let key = PrivateKey::from_pem(key_pem)?.0;
        // The key must belong to the certificate.
        let cert = parse_certificate(&cert_der)?;
        if cert.tbs_certificate.subject_pki.raw != key.subject_public_key_info().as_slice() {
            return Err(PkiError::InvalidCertificate(
                "the CA key does not belong to the CA certificate".into(),
            ));
        }
        Ok(CertificateAuthority {
            trust_domain,
            cert_der,
            key,
        })
    }

    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    pub fn cert_pem(&self) -> String {
        pem_encode("CERTIFICATE", &self.cert_der)
    }

    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    pub fn pin(&self) -> CaPin {
        let digest =
            ring::digest::digest(&ring::digest::SHA256, &self.key.subject_public_key_info());
        let mut pin = [0u8; 32];
        pin.copy_from_slice(digest.as_ref());
        CaPin(pin)
    }

    fn issuer(&self) -> Result<Issuer<'_, &KeyPair>, PkiError> {
        Ok(Issuer::from_ca_cert_der(&self.cert_der, &self.key)?)
    }

    /// Signs the public key of `csr_der` as a client certificate for
    /// `identity`, valid for `ttl`. Everything else the CSR asks for is
    /// ignored.
    pub fn sign_client_csr(
        &self,
        csr_der: &[u8],
        identity: &Identity,
        ttl: Duration,
    ) -> Result<IssuedCert, PkiError> {
        let csr_der = rustls::pki_types::CertificateSigningRequestDer::from(csr_der);
        let mut csr = CertificateSigningRequestParams::from_der(&csr_der)
            .map_err(|e| PkiError::InvalidCsr(e.to_string()))?;
        if csr.public_key.algorithm() != &rcgen::PKCS_ECDSA_P256_SHA256 {
            return Err(PkiError::InvalidCsr("the key must be ECDSA P-256".into()));
        }
        let (params, not_after, serial) = self.client_params(identity, ttl)?;
        csr.params = params;
        let cert = csr.signed_by(&self.issuer()?)?;
        Ok(IssuedCert {
            der: cert.der().clone(),
            not_after,
            serial,
        })
    }

    /// Generates a key here and issues a client certificate for it. Used for
    /// the first admin at `init`, and by tests.
    pub fn issue_client(
        &self,
        identity: &Identity,
        ttl: Duration,
    ) -> Result<(IssuedCert, PrivateKey), PkiError> {
        let key = PrivateKey::generate()?;
        let (params, not_after, serial) = self.client_params(identity, ttl)?;
        let cert = params.signed_by(&key.0, &self.issuer()?)?;
        Ok((
            IssuedCert {
                der: cert.der().clone(),
                not_after,
                serial,
            },
            key,
        ))
    }

    /// Issues a client certificate whose validity window is given explicitly
    /// (for tests of expired certificates).
    pub fn issue_client_with_validity(
        &self,
        identity: &Identity,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<(IssuedCert, PrivateKey), PkiError> {
        let key = PrivateKey::generate()?;
        let (mut params, _, serial) = self.client_params(identity, Duration::ZERO)?;
        params.not_before = not_before.into();
        params.not_after = not_after.into();
        let cert = params.signed_by(&key.0, &self.issuer()?)?;
        Ok((
            IssuedCert {
                der: cert.der().clone(),
                not_after: UnixMs::from(not_after),
                serial,
            },
            key,
        ))
    }

    fn client_params(
        &self,
        identity: &Identity,
        ttl: Duration,
    ) -> Result<(CertificateParams, UnixMs, String), PkiError> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        // Informational only: authorisation never reads the subject.
        dn.push(DnType::CommonName, identity.to_string());
        params.distinguished_name = dn;
        params.subject_alt_names = vec![SanType::URI(
            identity.to_uri(&self.trust_domain).try_into()?,
        )];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        let not_after = set_validity(&mut params, ttl);
        let serial = random_serial();
        let serial_hex = hex(&serial.to_bytes());
        params.serial_number = Some(serial);
        Ok((params, not_after, serial_hex))
    }

    /// Issues the controller's TLS server certificate for `names` (DNS names
    /// or IP addresses). The returned chain is `[leaf, CA]` so agents can
    /// check the CA against their pin.
    pub fn issue_server(
        &self,
        names: &[String],
        ttl: Duration,
    ) -> Result<(Vec<CertificateDer<'static>>, PrivateKey), PkiError> {
        let key = PrivateKey::generate()?;
        let mut params = CertificateParams::new(names.to_vec())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Ruse");
        dn.push(
            DnType::CommonName,
            names
                .first()
                .cloned()
                .unwrap_or_else(|| "ruse-controller".into()),
        );
        params.distinguished_name = dn;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        set_validity(&mut params, ttl);
        params.serial_number = Some(random_serial());
        let cert = params.signed_by(&key.0, &self.issuer()?)?;
        Ok((vec![cert.der().clone(), self.cert_der.clone()], key))
    }
}

/// A self-signed server certificate for `names` (for decoy services,
/// which must look like an ordinary server, not part of Ruse's PKI).
pub fn self_signed(names: &[String]) -> Result<(CertificateDer<'static>, PrivateKey), PkiError> {
    let key = PrivateKey::generate()?;
    let mut params = CertificateParams::new(names.to_vec())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "General Hospital");
    dn.push(DnType::OrganizationalUnitName, "Radiology IT");
    dn.push(
        DnType::CommonName,
        names.first().cloned().unwrap_or_else(|| "localhost".into()),
    );
    params.distinguished_name = dn;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    // Issued some time ago, valid for years: as installed appliances are.
    let now = SystemTime::now();
    params.not_before = (now - Duration::from_secs(200 * 86_400)).into();
    params.not_after = (now + Duration::from_secs(3 * 365 * 86_400)).into();
    params.serial_number = Some(random_serial());
    let cert = params.self_signed(&key.0)?;
    Ok((cert.der().clone(), key))
}

fn set_validity(params: &mut CertificateParams, ttl: Duration) -> UnixMs {
    let now = SystemTime::now();
    let not_after = now + ttl;
    params.not_before = (now - CLOCK_SKEW).into();
    params.not_after = not_after.into();
    UnixMs::from(not_after)
}

fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    random_bytes(&mut bytes);
    // Positive and without a leading zero byte.
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    SerialNumber::from_slice(&bytes)
}

/// Facts read from a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// The identity in the URI SAN, if it is one of this trust domain's.
    pub identity: Identity,
    pub not_after: UnixMs,
    pub serial: String,
}

/// The identity of a certificate holder, from the certificate's URI SAN.
///
/// Exactly one URI SAN of `trust_domain` must be present; the subject is
/// ignored.
pub fn certificate_identity(
    trust_domain: &TrustDomain,
    cert_der: &[u8],
) -> Result<CertInfo, PkiError> {
    let cert = parse_certificate(cert_der)?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| PkiError::InvalidCertificate(e.to_string()))?
        .ok_or_else(|| PkiError::NoIdentity("no subject alternative name".into()))?;
    let mut uris = san
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::URI(uri) => Some(*uri),
            _ => None,
        });
    let uri = uris
        .next()
        .ok_or_else(|| PkiError::NoIdentity("no URI subject alternative name".into()))?;
    if uris.next().is_some() {
        return Err(PkiError::NoIdentity(
            "more than one URI subject alternative name".into(),
        ));
    }
    let identity =
        Identity::from_uri(trust_domain, uri).map_err(|e| PkiError::NoIdentity(e.to_string()))?;
    let not_after = UnixMs(cert.validity().not_after.timestamp().saturating_mul(1000));
    Ok(CertInfo {
        identity,
        not_after,
        serial: hex(cert.tbs_certificate.raw_serial()),
    })
}

/// The trust domain of a CA certificate in PEM, from its
/// `spiffe://<trust-domain>` URI SAN.
pub fn ca_trust_domain(cert_pem: &str) -> Result<TrustDomain, PkiError> {
    let der = pem_decode_certificates(cert_pem, "CA certificate")?
        .into_iter()
        .next()
        .ok_or_else(|| PkiError::Pem {
            what: "CA certificate".into(),
            reason: "no CERTIFICATE block".into(),
        })?;
    let cert = parse_certificate(&der)?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| PkiError::InvalidCertificate(e.to_string()))?
        .ok_or_else(|| PkiError::NoIdentity("the CA has no subject alternative name".into()))?;
    san.value
        .general_names
        .iter()
        .find_map(|name| match name {
            GeneralName::URI(uri) => uri.strip_prefix("spiffe://"),
            _ => None,
        })
        .ok_or_else(|| PkiError::NoIdentity("the CA has no spiffe:// URI".into()))?
        .trim_end_matches('/')
        .parse()
        .map_err(|e: ruse_proto::types::InvalidValue| PkiError::NoIdentity(e.to_string()))
}

fn parse_certificate(cert_der: &[u8]) -> Result<X509Certificate<'_>, PkiError> {
    X509Certificate::from_der(cert_der)
        .map(|(_, cert)| cert)
        .map_err(|e| PkiError::InvalidCertificate(e.to_string()))
}

/// The end of a certificate's validity.
pub fn certificate_not_after(cert_der: &[u8]) -> Result<UnixMs, PkiError> {
    let cert = parse_certificate(cert_der)?;
    Ok(UnixMs(
        cert.validity().not_after.timestamp().saturating_mul(1000),
    ))
}

/// The start of a certificate's validity.
pub fn certificate_not_before(cert_der: &[u8]) -> Result<UnixMs, PkiError> {
    let cert = parse_certificate(cert_der)?;
    Ok(UnixMs(
        cert.validity().not_before.timestamp().saturating_mul(1000),
    ))
}

/// Whether the certificate certifies this key.
pub fn certificate_matches_key(cert_der: &[u8], key: &PrivateKey) -> Result<bool, PkiError> {
    let cert = parse_certificate(cert_der)?;
    Ok(cert.tbs_certificate.subject_pki.raw == key.0.subject_public_key_info().as_slice())
}

/// PEM-encodes DER bytes with the given label.
pub fn pem_encode(label: &str, der: &[u8]) -> String {
    pem::encode(&pem::Pem::new(label, der.to_vec()))
}

/// Every CERTIFICATE block of a PEM document.
pub fn pem_decode_certificates(
    pem: &str,
    what: &str,
) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PkiError::Pem {
            what: what.into(),
            reason: e.to_string(),
        })
}

/// The mTLS client configuration a rusectl context describes (files or
/// inline PEM; a key file must be private).
pub fn context_client_config(
    ctx: &ruse_proto::context::Context,
) -> Result<std::sync::Arc<rustls::ClientConfig>, PkiError> {
    let read = |inline: &Option<String>, file: &std::path::Path| match inline {
        Some(pem) => Ok(pem.clone()),
        None => std::fs::read_to_string(file).map_err(|source| PkiError::Io {
            path: file.display().to_string(),
            source,
        }),
    };
    let ca_pem = read(&ctx.ca_pem, &ctx.ca)?;
    let cert_pem = read(&ctx.cert_pem, &ctx.cert)?;
    let key = match &ctx.key_pem {
        Some(pem) => PrivateKey::from_pem(pem)?,
        None => PrivateKey::from_pem(&read_private_file(&ctx.key)?)?,
    };
    client_config(
        &pem_decode_certificates(&ca_pem, &ctx.ca.display().to_string())?,
        pem_decode_certificates(&cert_pem, &ctx.cert.display().to_string())?,
        key.to_der(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn td() -> TrustDomain {
        "ruse.test".parse().unwrap()
    }

    #[test]
    fn csr_is_signed_with_the_ca_chosen_identity_only() {
        let ca = CertificateAuthority::generate(td()).unwrap();
        let key = PrivateKey::generate().unwrap();
        let id = Identity::Agent("01agent".parse().unwrap());
        let cert = ca
            .sign_client_csr(&key.csr_der().unwrap(), &id, Duration::from_secs(3600))
            .unwrap();
        let info = certificate_identity(&td(), &cert.der).unwrap();
        assert_eq!(info.identity, id);
        assert_eq!(info.serial, cert.serial);
        let lifetime = UnixMs::now().until(info.not_after);
        assert!(lifetime > Duration::from_secs(3500) && lifetime <= Duration::from_secs(3600));
    }

    #[test]
    fn csr_asking_for_another_identity_gets_the_ca_chosen_one() {
        let ca = CertificateAuthority::generate(td()).unwrap();
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::URI(
            "spiffe://ruse.test/admin/root".try_into().unwrap(),
        )];
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let csr = params.serialize_request(&key).unwrap();
        let id = Identity::Agent("01agent".parse().unwrap());
        let cert = ca
            .sign_client_csr(csr.der(), &id, Duration::from_secs(60))
            .unwrap();
        assert_eq!(certificate_identity(&td(), &cert.der).unwrap().identity, id);
        let (_, parsed) = X509Certificate::from_der(&cert.der).unwrap();
        assert!(!parsed.is_ca());
    }

    #[test]
    fn server_certificate_is_replaced_for_new_handshakes_and_must_match_its_key() {
        let ca = CertificateAuthority::generate(td()).unwrap();
        let names = vec!["ruse-controller".to_owned()];
        let (chain, key) = ca.issue_server(&names, Duration::from_secs(3600)).unwrap();
        let first = chain[0].clone();
        let served = ServerCert::new(chain, key.to_der()).unwrap();
        assert_eq!(served.leaf(), Some(first.clone()));
        let (chain, key) = ca.issue_server(&names, Duration::from_secs(3600)).unwrap();
        let second = chain[0].clone();
        assert_ne!(first, second);
        served.replace(chain.clone(), key.to_der()).unwrap();
        assert_eq!(served.leaf(), Some(second.clone()));
        // A key that is not the leaf's is refused; the served one stays.
        let other = PrivateKey::generate().unwrap();
        assert!(served.replace(chain, other.to_der()).is_err());
        assert_eq!(served.leaf(), Some(second.clone()));
    }

    #[test]
    fn garbage_csr_is_rejected() {
        let ca = CertificateAuthority::generate(td()).unwrap();
        let id = Identity::Agent("01agent".parse().unwrap());
        for bad in [&b""[..], b"\x30\x03\x02\x01\x00", &[0xff; 64]] {
            assert!(matches!(
                ca.sign_client_csr(bad, &id, Duration::from_secs(60)),
                Err(PkiError::InvalidCsr(_))
            ));
        }
    }

    #[test]
    fn identity_of_another_trust_domain_is_refused() {
        let other = CertificateAuthority::generate("other.test".parse().unwrap()).unwrap();
        let (cert, _) = other
            .issue_client(
                &Identity::Admin("mallory".parse().unwrap()),
                Duration::from_secs(60),
            )
            .unwrap();
        assert!(matches!(
            certificate_identity(&td(), &cert.der),
            Err(PkiError::NoIdentity(_))
        ));
    }

    #[test]
    fn pin_is_stable_across_pem_round_trip_and_parses() {
        let ca = CertificateAuthority::generate(td()).unwrap();
        let pin = ca.pin();
        assert_eq!(CaPin::of_certificate(ca.cert_der()).unwrap(), pin);
        let loaded = CertificateAuthority::from_pem(td(), &ca.cert_pem(), &ca.key_pem()).unwrap();
        assert_eq!(loaded.pin(), pin);
        assert_eq!(pin.to_string().parse::<CaPin>().unwrap(), pin);
        for bad in ["", "sha256:", "sha1:00", "sha256:zz", "sha256:0011"] {
            assert!(bad.parse::<CaPin>().is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn ca_key_must_match_certificate() {
        let a = CertificateAuthority::generate(td()).unwrap();
        let b = CertificateAuthority::generate(td()).unwrap();
        assert!(CertificateAuthority::from_pem(td(), &a.cert_pem(), &b.key_pem()).is_err());
    }

    #[test]
    fn pem_encoding_round_trips() {
        let ca = CertificateAuthority::generate(td()).unwrap();
        let certs = pem_decode_certificates(&ca.cert_pem(), "ca").unwrap();
        assert_eq!(certs, vec![ca.cert_der().clone()]);
    }
}

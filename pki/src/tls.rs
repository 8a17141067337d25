//! Every rustls configuration in the project: ring provider, TLS 1.3 only,
//! ALPN `h2`.

use std::fmt;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, OtherError,
    RootCertStore, ServerConfig, SignatureScheme,
};

use ruse_proto::types::{Identity, TrustDomain};

use crate::{CaPin, PkiError, certificate_identity};

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(cas: &[CertificateDer<'static>]) -> Result<Arc<RootCertStore>, PkiError> {
    let mut roots = RootCertStore::empty();
    for ca in cas {
        roots.add(ca.clone())?;
    }
    Ok(Arc::new(roots))
}

/// Identities that must not complete a handshake (revoked agents).
pub trait Denylist: Send + Sync + fmt::Debug {
    fn is_denied(&self, identity: &Identity) -> bool;
}

/// A denylist that denies nothing.
#[derive(Debug, Default)]
pub struct NoDenylist;

impl Denylist for NoDenylist {
    fn is_denied(&self, _: &Identity) -> bool {
        false
    }
}

/// Whether a listener requires a client certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// Accept connections without a certificate (the agent port, where
    /// `Enroll` is called before the agent has one). Calls that need an
    /// identity check for it themselves.
    Optional,
    /// Refuse the handshake without a valid client certificate.
    Required,
}

/// Verifies client certificates against the CA, then refuses identities
/// that are not of this trust domain or are on the denylist.
struct IdentityVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    trust_domain: TrustDomain,
    denylist: Arc<dyn Denylist>,
    mandatory: bool,
}

impl fmt::Debug for IdentityVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdentityVerifier")
            .field("trust_domain", &self.trust_domain)
            .field("mandatory", &self.mandatory)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct Refused(String);

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

fn other_error(message: String) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(Refused(
        message,
    )))))
}

impl ClientCertVerifier for IdentityVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.inner
            .verify_client_cert(end_entity, intermediates, now)?;
        let info = certificate_identity(&self.trust_domain, end_entity)
            .map_err(|e| other_error(e.to_string()))?;
        if self.denylist.is_denied(&info.identity) {
            return Err(rustls::Error::InvalidCertificate(CertificateError::Revoked));
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The controller's server certificate, replaceable while serving: every
/// new handshake gets the certificate set last, connections already open
/// keep theirs. Renewal is the caller's job ([`ServerCert::replace`]).
#[derive(Debug)]
pub struct ServerCert {
    current: std::sync::RwLock<Arc<CertifiedKey>>,
}

impl ServerCert {
    /// `chain` is `[leaf, CA]`; `key` must match the leaf.
    pub fn new(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Arc<Self>, PkiError> {
        Ok(Arc::new(ServerCert {
            current: std::sync::RwLock::new(Arc::new(certified(chain, key)?)),
        }))
    }

    /// Serves `chain` and `key` from the next handshake on.
    pub fn replace(
        &self,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<(), PkiError> {
        let next = Arc::new(certified(chain, key)?);
        *self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = next;
        Ok(())
    }

    /// The leaf certificate served now.
    pub fn leaf(&self) -> Option<CertificateDer<'static>> {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .cert
            .first()
            .map(|c| c.clone().into_owned())
    }
}

fn certified(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<CertifiedKey, PkiError> {
    Ok(CertifiedKey::from_der(chain, key, &provider())?)
}

impl ResolvesServerCert for ServerCert {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone(),
        )
    }
}

/// The controller's server configuration.
///
/// `cert` serves `[leaf, CA]`. Client certificates must chain to `ca`,
/// carry an identity of `trust_domain`, and not be on `denylist`.
pub fn server_config(
    ca: &CertificateDer<'static>,
    trust_domain: &TrustDomain,
    cert: Arc<ServerCert>,
    client_auth: ClientAuth,
    denylist: Arc<dyn Denylist>,
) -> Result<Arc<ServerConfig>, PkiError> {
    let provider = provider();
    let inner = WebPkiClientVerifier::builder_with_provider(
        roots(std::slice::from_ref(ca))?,
        provider.clone(),
    )
    .allow_unauthenticated()
    .build()
    .map_err(|e| PkiError::Tls(rustls::Error::General(e.to_string())))?;
    let verifier = IdentityVerifier {
        inner,
        trust_domain: trust_domain.clone(),
        denylist,
        mandatory: client_auth == ClientAuth::Required,
    };
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_cert_resolver(cert);
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// The controller's web console: the same renewed server certificate as
/// its gRPC listeners, TLS 1.3, HTTP/1.1, no client certificate (browsers
/// sign in with a one-time link instead).
pub fn console_server_config(cert: Arc<ServerCert>) -> Result<Arc<ServerConfig>, PkiError> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_cert_resolver(cert);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A server without client authentication (decoy services).
pub fn plain_server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<ServerConfig>, PkiError> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A server for a decoy that imitates a public server (HTTPS, a
/// Kubernetes API): TLS 1.2 and 1.3, as the real ones accept, so a
/// scanner's TLS 1.2 probe is answered rather than refused. Ruse's own
/// connections stay TLS 1.3 only.
pub fn decoy_server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<ServerConfig>, PkiError> {
    decoy_server_config_of(chain, key, true)
}

/// A decoy server with TLS 1.2 only (`tls13` false): SQL Server 2019 on
/// TDS 7, whose clients (FreeTDS with TLS 1.3 among them) expect it.
pub fn decoy_server_config_of(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    tls13: bool,
) -> Result<Arc<ServerConfig>, PkiError> {
    let versions: &[&rustls::SupportedProtocolVersion] = if tls13 {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    } else {
        &[&rustls::version::TLS12]
    };
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn client_builder() -> Result<rustls::ConfigBuilder<ClientConfig, rustls::WantsVerifier>, PkiError>
{
    Ok(ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?)
}

fn finish(mut config: ClientConfig) -> Arc<ClientConfig> {
    config.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(config)
}

/// A client with a certificate (agents after enrollment, `rusectl`) that
/// trusts only `ca`.
pub fn client_config(
    ca: &[CertificateDer<'static>],
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<ClientConfig>, PkiError> {
    Ok(finish(
        client_builder()?
            .with_root_certificates(roots(ca)?)
            .with_client_auth_cert(chain, key)?,
    ))
}

/// A client without a certificate that trusts only `ca`.
pub fn anonymous_client_config(
    ca: &[CertificateDer<'static>],
) -> Result<Arc<ClientConfig>, PkiError> {
    Ok(finish(
        client_builder()?
            .with_root_certificates(roots(ca)?)
            .with_no_client_auth(),
    ))
}

/// A client for outputs (syslog over TLS, HTTPS webhooks): no
/// certificate, trusts only `ca`, HTTP/1.1.
pub fn plain_client_config(
    ca: Vec<CertificateDer<'static>>,
) -> Result<Arc<ClientConfig>, PkiError> {
    let mut config = client_builder()?
        .with_root_certificates(roots(&ca)?)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A client for the controller's PostgreSQL store: no certificate (the
/// database authenticates the controller by password), trusts only `ca`,
/// no ALPN (PostgreSQL before 17 negotiates none).
pub fn database_client_config(
    ca: &[CertificateDer<'static>],
) -> Result<Arc<ClientConfig>, PkiError> {
    Ok(Arc::new(
        client_builder()?
            .with_root_certificates(roots(ca)?)
            .with_no_client_auth(),
    ))
}

/// A client without a certificate that trusts a server whose chain contains
/// a CA with this pin, and whose leaf that CA signed for the name dialled.
/// Used once, for enrollment.
pub fn pinned_client_config(pin: CaPin) -> Result<Arc<ClientConfig>, PkiError> {
    let provider = provider();
    let verifier = PinnedCaVerifier {
        pin,
        algorithms: provider.signature_verification_algorithms,
        provider: provider.clone(),
    };
    Ok(finish(
        client_builder()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth(),
    ))
}

#[derive(Debug)]
struct PinnedCaVerifier {
    pin: CaPin,
    algorithms: WebPkiSupportedAlgorithms,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ca = intermediates
            .iter()
            .find(|c| CaPin::of_certificate(c).ok() == Some(self.pin))
            .ok_or_else(|| {
                other_error(format!(
                    "the controller's CA does not match the pinned {}",
                    self.pin
                ))
            })?;
        let roots =
            roots(&[ca.clone().into_owned()]).map_err(|e| rustls::Error::General(e.to_string()))?;
        let verifier = WebPkiServerVerifier::builder_with_provider(roots, self.provider.clone())
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        verifier.verify_server_cert(end_entity, &[], server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// When a certificate was refused for its validity period, what a person
/// needs to know: the period, the clock that judged it, and that a wrong
/// clock is the likely cause. `whose` names the certificate ("the
/// controller's certificate"), `clock` the host that judged ("this host").
/// `None` for any other refusal.
pub fn validity_error_text(e: &CertificateError, whose: &str, clock: &str) -> Option<String> {
    use CertificateError as C;
    use ruse_proto::types::{UnixMs, format_duration};
    let at = |t: UnixTime| {
        UnixMs(
            i64::try_from(t.as_secs())
                .unwrap_or(i64::MAX)
                .saturating_mul(1000),
        )
    };
    let apart = |a: UnixTime, b: UnixTime| {
        format_duration(std::time::Duration::from_secs(
            a.as_secs().abs_diff(b.as_secs()),
        ))
    };
    Some(match e {
        C::ExpiredContext { time, not_after } => format!(
            "{whose} expired at {} by the clock of {clock} ({}, {} later): if it is current, {clock}'s clock is ahead; set it right (NTP)",
            at(*not_after).rfc3339(),
            at(*time).rfc3339(),
            apart(*time, *not_after)
        ),
        C::NotValidYetContext { time, not_before } => format!(
            "{whose} is valid only from {} by the clock of {clock} ({}, {} earlier): {clock}'s clock is probably behind; set it right (NTP)",
            at(*not_before).rfc3339(),
            at(*time).rfc3339(),
            apart(*time, *not_before)
        ),
        C::Expired => {
            format!("{whose} has expired by the clock of {clock}: check that clock (NTP)")
        }
        C::NotValidYet => {
            format!("{whose} is not valid yet by the clock of {clock}: check that clock (NTP)")
        }
        _ => return None,
    })
}

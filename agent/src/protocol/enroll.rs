//! First contact: token + CSR + host facts for an identity, over TLS pinned
//! to the controller's CA.

use rustls::pki_types::CertificateDer;

use ruse_pki::{CaPin, PrivateKey};
use ruse_proto::agent::v1 as pb;
use ruse_proto::agent::v1::agent_service_client::AgentServiceClient;
use ruse_proto::transport;

use super::session::{Phase, classify_status, classify_transport};
use crate::identity::AgentIdentity;
use crate::platform::{Native, Platform};
use crate::{AgentConfig, AgentError, Failure};

/// Enrolls and saves the new identity. The token is read here and never
/// logged.
pub(crate) async fn enroll(config: &AgentConfig) -> Result<AgentIdentity, Failure> {
    let path = config
        .token_file
        .as_ref()
        .ok_or(Failure::Fatal(AgentError::NoToken))?;
    let token = std::fs::read_to_string(path)
        .map_err(|source| {
            Failure::Fatal(AgentError::TokenFile {
                path: path.display().to_string(),
                source,
            })
        })?
        .trim()
        .to_owned();
    let key = PrivateKey::generate()?;
    let csr_der = key.csr_der()?;
    let tls = ruse_pki::pinned_client_config(config.ca_pin)?;
    let channel = transport::connect(&config.controller, tls, &config.dial)
        .await
        .map_err(|e| classify_transport(&e, Phase::Enrolling))?;
    let response = AgentServiceClient::new(channel)
        .enroll(pb::EnrollRequest {
            token,
            csr_der,
            facts: Some(Native::host_facts(&config.labels).into()),
        })
        .await
        .map_err(|s| classify_status(&s, Phase::Enrolling))?
        .into_inner();
    let bundle: Vec<CertificateDer<'static>> = response
        .trust_bundle_der
        .into_iter()
        .map(CertificateDer::from)
        .collect();
    // The bundle must contain the CA we pinned: never trust a CA the pin did
    // not vouch for.
    if !bundle
        .iter()
        .any(|c| CaPin::of_certificate(c).ok() == Some(config.ca_pin))
    {
        return Err(Failure::Fatal(AgentError::PinMismatch(
            "the controller's trust bundle does not contain the pinned CA".into(),
        )));
    }
    let identity =
        AgentIdentity::from_issued(key, CertificateDer::from(response.certificate_der), bundle)?;
    if identity.id.as_str() != response.agent_id {
        return Err(Failure::Fatal(AgentError::Untrusted(
            "the certificate names another agent than the enrollment response".into(),
        )));
    }
    identity.save(&config.state_dir)?;
    Ok(identity)
}

/// Tells the controller this agent is gone (its lures are already removed).
pub(crate) async fn deregister(
    channel: tonic::transport::Channel,
    reason: &str,
) -> Result<(), AgentError> {
    AgentServiceClient::new(channel)
        .deregister(pb::DeregisterRequest {
            reason: reason.to_owned(),
        })
        .await
        .map_err(|s| AgentError::Unreachable(s.message().to_owned()))?;
    Ok(())
}

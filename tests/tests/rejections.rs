//! Bad input gets a clear error and harms nothing else. Every case asserts
//! the rejection, then that the controller still serves.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, SystemTime};

use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

use ruse_agent::AgentError;
use ruse_e2e::{TestController, eventually, pb};
use ruse_pki::CertificateAuthority;
use ruse_pki::rustls::{AlertDescription, Error};
use ruse_proto::agent::v1 as agent_pb;
use ruse_proto::types::Identity;

/// The error that ends a session stream (messages before it are skipped).
async fn first_error(mut inbound: tonic::Streaming<agent_pb::ControllerMessage>) -> tonic::Status {
    loop {
        match inbound.message().await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the stream ended without an error"),
            Err(status) => return status,
        }
    }
}

fn admin(name: &str) -> Identity {
    Identity::Admin(name.parse().unwrap())
}

#[tokio::test]
async fn callers_without_the_right_certificate_are_refused() {
    let tc = TestController::start().await;

    // No client certificate: the admin API answers Unauthenticated.
    let anonymous = ruse_pki::anonymous_client_config(&[tc.ca().cert_der().clone()]).unwrap();
    let status = tc
        .admin_with(anonymous)
        .await
        .unwrap()
        .list_agents(pb::ListAgentsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    tc.assert_serving().await;

    // A certificate from another CA (same trust domain name): refused at the
    // handshake.
    let other = CertificateAuthority::generate(ruse_e2e::TRUST_DOMAIN.parse().unwrap()).unwrap();
    let (cert, key) = other
        .issue_client(&admin("root"), Duration::from_secs(60))
        .unwrap();
    let tls = ruse_pki::client_config(&[tc.ca().cert_der().clone()], vec![cert.der], key.to_der())
        .unwrap();
    let err = tc
        .admin_with(tls)
        .await
        .expect_err("foreign certificate accepted");
    assert!(ruse_proto::transport::tls_error(&err).is_some(), "{err:?}");
    tc.assert_serving().await;

    // An expired certificate from the right CA: refused at the handshake.
    let now = SystemTime::now();
    let (cert, key) = tc
        .ca()
        .issue_client_with_validity(
            &admin("root"),
            now - Duration::from_secs(7200),
            now - Duration::from_secs(3600),
        )
        .unwrap();
    let tls = ruse_pki::client_config(&[tc.ca().cert_der().clone()], vec![cert.der], key.to_der())
        .unwrap();
    let err = tc
        .admin_with(tls)
        .await
        .expect_err("expired certificate accepted");
    assert!(
        matches!(
            ruse_proto::transport::tls_error(&err),
            Some(Error::AlertReceived(AlertDescription::CertificateExpired))
        ),
        "{err:?}"
    );
    tc.assert_serving().await;

    // An agent certificate on the admin API.
    let agent = tc.client_tls(&Identity::Agent("01someagent".parse().unwrap()));
    let status = tc
        .admin_with(agent)
        .await
        .unwrap()
        .list_agents(pb::ListAgentsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(
        status.message().contains("agent certificates"),
        "{}",
        status.message()
    );

    // An admin certificate from the right CA for a name the controller never
    // issued.
    let stranger = tc.client_tls(&admin("mallory"));
    let status = tc
        .admin_with(stranger)
        .await
        .unwrap()
        .create_token(pb::CreateTokenRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    tc.assert_serving().await;
}

#[tokio::test]
async fn roles_are_checked_per_call_and_refusals_are_audited() {
    let tc = TestController::start().await;
    let mut viewer = tc.admin_as("vera", pb::Role::Viewer).await;
    let mut operator = tc.admin_as("otto", pb::Role::Operator).await;

    // Viewers read.
    viewer
        .list_agents(pb::ListAgentsRequest::default())
        .await
        .unwrap();
    viewer
        .list_audit(pb::ListAuditRequest::default())
        .await
        .unwrap();
    // Viewers do not mutate.
    let status = viewer
        .create_token(pb::CreateTokenRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(status.message().contains("viewer"), "{}", status.message());
    let status = viewer
        .revoke_agent(pb::RevokeAgentRequest {
            id: "01x".into(),
            reason: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);

    // Operators create tokens but do not issue admins.
    operator
        .create_token(pb::CreateTokenRequest::default())
        .await
        .unwrap();
    let status = operator
        .issue_admin(pb::IssueAdminRequest {
            name: "eve".into(),
            role: pb::Role::Admin.into(),
            csr_der: ruse_pki::PrivateKey::generate().unwrap().csr_der().unwrap(),
            ttl_ms: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);

    let audit = tc.audit().await;
    let refused: Vec<_> = audit.iter().filter(|r| r.result != "ok").collect();
    assert!(
        refused.iter().any(|r| r.actor == "admin/vera"
            && r.action == "token.create"
            && r.result.contains("needs operator")),
        "{refused:#?}"
    );
    assert!(
        refused
            .iter()
            .any(|r| r.actor == "admin/vera" && r.action == "agent.revoke")
    );
    assert!(
        refused
            .iter()
            .any(|r| r.actor == "admin/otto" && r.action == "admin.issue")
    );
    assert!(
        audit
            .iter()
            .any(|r| r.actor == "admin/otto" && r.action == "token.create" && r.result == "ok")
    );
    // The token secret never reaches the audit log.
    assert!(
        audit
            .iter()
            .all(|r| !r.detail.contains("ruse_") && !r.target.contains('.'))
    );
    tc.assert_serving().await;
}

#[tokio::test]
async fn bad_tokens_are_refused_with_a_reason() {
    let tc = TestController::start().await;

    // Unknown token.
    let unknown = "ruse_0123456789ab.0123456789012345678901234567890123456789";
    let ended = tc
        .spawn_agent(tc.agent_config("unknown", unknown, ""))
        .finished(Duration::from_secs(10))
        .await;
    assert!(
        matches!(&ended, Err(AgentError::TokenRejected(m)) if m.contains("invalid bootstrap token")),
        "{ended:?}"
    );

    // Right id, wrong secret.
    let real = tc.token("", 5, Duration::from_secs(600)).await;
    let (id, _) = real.split_once('.').unwrap();
    let forged = format!("{id}.{}", "0".repeat(40));
    let ended = tc
        .spawn_agent(tc.agent_config("forged", &forged, ""))
        .finished(Duration::from_secs(10))
        .await;
    assert!(
        matches!(&ended, Err(AgentError::TokenRejected(m)) if m.contains("invalid")),
        "{ended:?}"
    );

    // Expired token.
    let short = tc.token("", 5, Duration::from_secs(1)).await;
    let short_id = short
        .trim_start_matches("ruse_")
        .split('.')
        .next()
        .unwrap()
        .to_owned();
    eventually("token expiry", Duration::from_secs(5), || async {
        let tokens = tc
            .root()
            .await
            .list_tokens(pb::ListTokensRequest {})
            .await
            .unwrap()
            .into_inner()
            .tokens;
        let expires = tokens.iter().find(|t| t.id == short_id).unwrap().expires_ms;
        ruse_proto::types::UnixMs::now().0 > expires
    })
    .await;
    let ended = tc
        .spawn_agent(tc.agent_config("expired", &short, ""))
        .finished(Duration::from_secs(10))
        .await;
    assert!(
        matches!(&ended, Err(AgentError::TokenRejected(m)) if m.contains("expired")),
        "{ended:?}"
    );

    // Exhausted token: one use, two agents.
    let once = tc.token("", 1, Duration::from_secs(600)).await;
    let mut first = tc.spawn_agent(tc.agent_config("first", &once, ""));
    first.connected().await;
    let ended = tc
        .spawn_agent(tc.agent_config("second", &once, ""))
        .finished(Duration::from_secs(10))
        .await;
    assert!(
        matches!(&ended, Err(AgentError::TokenRejected(m)) if m.contains("maximum number of times")),
        "{ended:?}"
    );
    assert_eq!(tc.agents().await.len(), 1);
    first.stop().await.unwrap();

    // Every refusal is in the audit log.
    let audit = tc.audit().await;
    let refusals = audit
        .iter()
        .filter(|r| r.action == "agent.enroll" && r.result != "ok")
        .count();
    assert_eq!(refusals, 4, "{audit:#?}");
    tc.assert_serving().await;
}

#[tokio::test]
async fn a_wrong_ca_pin_stops_the_agent_before_it_sends_its_token() {
    let tc = TestController::start().await;
    let token = tc.token("", 1, Duration::from_secs(600)).await;
    let mut config = tc.agent_config("pinned", &token, "");
    let other = CertificateAuthority::generate(ruse_e2e::TRUST_DOMAIN.parse().unwrap()).unwrap();
    config.ca_pin = other.pin();
    let ended = tc
        .spawn_agent(config.clone())
        .finished(Duration::from_secs(10))
        .await;
    assert!(
        matches!(&ended, Err(AgentError::PinMismatch(m)) if m.contains("does not match the pinned")),
        "{ended:?}"
    );
    // The token was never presented: it is still unused and works.
    config.ca_pin = tc.pin;
    let mut agent = tc.spawn_agent(config);
    agent.connected().await;
    agent.stop().await.unwrap();
}

#[tokio::test]
async fn repeated_enrollment_failures_are_rate_limited() {
    let tc = TestController::start_with(|c| c.enroll_failures_per_minute = 3).await;
    let key = ruse_pki::PrivateKey::generate().unwrap();
    let tls = ruse_pki::pinned_client_config(tc.pin).unwrap();
    let mut client = tc.agent_client_with(tls).await.unwrap();
    let request = || agent_pb::EnrollRequest {
        token: "ruse_0123456789ab.0123456789012345678901234567890123456789".into(),
        csr_der: key.csr_der().unwrap(),
        facts: None,
    };
    for _ in 0..3 {
        let status = client.enroll(request()).await.unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated);
    }
    let status = client.enroll(request()).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("retry in"),
        "{}",
        status.message()
    );
    // A legitimate agent behind the same address (a NAT'd site) is not
    // locked out by someone else's failures: a good token still enrolls.
    let token = tc.token("", 1, Duration::from_secs(600)).await;
    client
        .enroll(agent_pb::EnrollRequest {
            token,
            csr_der: key.csr_der().unwrap(),
            facts: None,
        })
        .await
        .expect("a valid token enrolls from a rate-limited address");
    // Failures past the limit are summarised in the audit log, not
    // written one by one.
    for _ in 0..20 {
        client.enroll(request()).await.unwrap_err();
    }
    let audit = tc.audit().await;
    let one_by_one = audit
        .iter()
        .filter(|r| r.action == "agent.enroll" && r.result != "ok")
        .count();
    assert_eq!(one_by_one, 3, "{audit:#?}");
    assert!(
        audit
            .iter()
            .any(|r| r.action == "refused-calls" && r.detail.starts_with("21 call(s)")),
        "{audit:#?}"
    );
    tc.assert_serving().await;
}

#[tokio::test]
async fn malformed_enrollments_and_sessions_are_refused() {
    let tc = TestController::start().await;
    let token = tc.token("", 5, Duration::from_secs(600)).await;
    let tls = ruse_pki::pinned_client_config(tc.pin).unwrap();
    let mut client = tc.agent_client_with(tls).await.unwrap();

    // A CSR that is not one.
    let status = client
        .enroll(agent_pb::EnrollRequest {
            token: token.clone(),
            csr_der: vec![0x30, 0x03, 0x02, 0x01, 0x00],
            facts: None,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");

    // Hostile host facts.
    let status = client
        .enroll(agent_pb::EnrollRequest {
            token: token.clone(),
            csr_der: ruse_pki::PrivateKey::generate().unwrap().csr_der().unwrap(),
            facts: Some(agent_pb::HostFacts {
                hostname: "x".repeat(10_000),
                ..Default::default()
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");

    // Session without a certificate.
    let (_tx, rx) = tokio::sync::mpsc::channel::<agent_pb::AgentMessage>(1);
    let status = client.session(ReceiverStream::new(rx)).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);

    // Session whose first message is not Hello.
    let mut agent = tc.spawn_agent(tc.agent_config("m", &token, ""));
    agent.connected().await;
    let identity = ruse_agent::identity::AgentIdentity::load(&agent.state_dir())
        .unwrap()
        .unwrap();
    agent.stop().await.unwrap();
    let tls = ruse_pki::client_config(
        &identity.trust_bundle,
        vec![identity.cert.clone()],
        identity.key.to_der(),
    )
    .unwrap();
    let mut session_client = tc.agent_client_with(tls).await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    tx.send(agent_pb::AgentMessage {
        msg: Some(agent_pb::agent_message::Msg::Heartbeat(
            agent_pb::Heartbeat::default(),
        )),
    })
    .await
    .unwrap();
    let inbound = session_client
        .session(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let status = first_error(inbound).await;
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    drop(tx);
    tc.assert_serving().await;
}

#[tokio::test]
async fn oversized_messages_are_refused_without_harm() {
    let tc = TestController::start_with(|c| c.max_message_bytes = 64 << 10).await;
    let mut root = tc.root().await;
    let huge: std::collections::HashMap<String, String> = (0..5000)
        .map(|i| (format!("k{i}"), "v".repeat(60)))
        .collect();
    let status = root
        .create_token(pb::CreateTokenRequest {
            labels: huge,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");

    // On the session stream too.
    let token = tc.token("", 1, Duration::from_secs(600)).await;
    let mut agent = tc.spawn_agent(tc.agent_config("big", &token, ""));
    agent.connected().await;
    let identity = ruse_agent::identity::AgentIdentity::load(&agent.state_dir())
        .unwrap()
        .unwrap();
    agent.stop().await.unwrap();
    let tls = ruse_pki::client_config(
        &identity.trust_bundle,
        vec![identity.cert.clone()],
        identity.key.to_der(),
    )
    .unwrap();
    let mut client = tc.agent_client_with(tls).await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    tx.send(agent_pb::AgentMessage {
        msg: Some(agent_pb::agent_message::Msg::Hello(agent_pb::Hello {
            capabilities: vec!["c".repeat(1024); 100],
            ..Default::default()
        })),
    })
    .await
    .unwrap();
    let inbound = client
        .session(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let status = first_error(inbound).await;
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    drop(tx);
    tc.assert_serving().await;
    root.list_agents(pb::ListAgentsRequest::default())
        .await
        .unwrap();
}

//! Agents enroll, stay online, renew, and are revoked: in-process
//! controller and agents on 127.0.0.1.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use tokio_stream::wrappers::ReceiverStream;

use ruse_agent::AgentError;
use ruse_agent::identity::AgentIdentity;
use ruse_e2e::{TestController, eventually, pb};
use ruse_pki::rustls::{AlertDescription, Error};
use ruse_proto::agent::v1 as agent_pb;

fn state_of(agents: &[pb::Agent], id: &str) -> Option<pb::AgentState> {
    agents.iter().find(|a| a.id == id).map(|a| a.state())
}

#[tokio::test]
async fn two_agents_enroll_with_labels_and_a_revoked_one_is_cut_off() {
    let tc = TestController::start().await;
    let workstation = tc
        .token("site=icu,role=workstation", 1, Duration::from_secs(600))
        .await;
    let pacs = tc
        .token("site=icu,role=pacs", 1, Duration::from_secs(600))
        .await;
    let mut a = tc.spawn_agent(tc.agent_config("a", &workstation, "room=12"));
    let mut b = tc.spawn_agent(tc.agent_config("b", &pacs, ""));
    let a_id = a.connected().await;
    let b_id = b.connected().await;
    assert_ne!(a_id, b_id);

    eventually("both agents online", Duration::from_secs(5), || async {
        let agents = tc.agents().await;
        state_of(&agents, &a_id) == Some(pb::AgentState::Online)
            && state_of(&agents, &b_id) == Some(pb::AgentState::Online)
    })
    .await;
    let view = tc.agent_view(&a_id).await;
    assert_eq!(
        view.labels.get("site").map(String::as_str),
        Some("icu"),
        "token label"
    );
    assert_eq!(
        view.labels.get("role").map(String::as_str),
        Some("workstation"),
        "token label"
    );
    // The agent's own labels are reported, never matched by selectors.
    assert_eq!(
        view.reported_labels.get("room").map(String::as_str),
        Some("12"),
        "agent label"
    );
    assert!(!view.labels.contains_key("room"));
    assert!(!view.hostname.is_empty());
    assert!(view.cert_not_after_ms > 0);

    // The selector finds exactly one.
    let pacs = tc
        .root()
        .await
        .list_agents(pb::ListAgentsRequest {
            selector: [("role".to_owned(), "pacs".to_owned())].into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .agents;
    assert_eq!(pacs.len(), 1);
    assert_eq!(pacs[0].id, b_id);

    // Revoke A: its live stream is closed within a second and it stops.
    let started = Instant::now();
    let revoked = tc
        .root()
        .await
        .revoke_agent(pb::RevokeAgentRequest {
            id: a_id.clone(),
            reason: "laptop stolen".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(revoked.state(), pb::AgentState::Revoked);
    let a_state_dir = a.state_dir();
    let a_config = a.config.clone();
    let ended = a.finished(Duration::from_secs(1)).await;
    assert!(
        matches!(&ended, Err(AgentError::Revoked(id)) if id.as_str() == a_id),
        "{ended:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(1));

    // A reconnect with A's certificate is refused at the handshake.
    let identity = AgentIdentity::load(&a_state_dir).unwrap().unwrap();
    let tls = ruse_pki::client_config(
        &identity.trust_bundle,
        vec![identity.cert.clone()],
        identity.key.to_der(),
    )
    .unwrap();
    let refused = tc.agent_client_with(tls).await;
    let err = refused.expect_err("a revoked agent's handshake must fail");
    let tls_err = ruse_proto::transport::tls_error(&err).expect("a TLS error");
    assert!(
        matches!(
            tls_err,
            Error::AlertReceived(AlertDescription::CertificateRevoked)
        ),
        "{tls_err:?}"
    );
    // Restarting the revoked agent stops it again, with the reason.
    let again = tc
        .spawn_agent(a_config)
        .finished(Duration::from_secs(5))
        .await;
    assert!(matches!(again, Err(AgentError::Revoked(_))), "{again:?}");

    // B is unaffected and the revocation is audited.
    let agents = tc.agents().await;
    assert_eq!(state_of(&agents, &a_id), Some(pb::AgentState::Revoked));
    assert_eq!(state_of(&agents, &b_id), Some(pb::AgentState::Online));
    let audit = tc.audit().await;
    let entry = audit
        .iter()
        .find(|r| r.action == "agent.revoke")
        .expect("revocation audited");
    assert_eq!(entry.actor, "admin/root");
    assert_eq!(entry.target, format!("agent/{a_id}"));
    assert_eq!(entry.result, "ok");
    assert_eq!(entry.detail, "laptop stolen");
    assert!(entry.peer.starts_with("127.0.0.1:"));
    b.stop().await.unwrap();
}

#[tokio::test]
async fn agents_renew_before_expiry_with_a_fresh_key() {
    let tc = TestController::start_with(|c| c.agent_cert_ttl = Duration::from_secs(6)).await;
    let token = tc.token("site=lab", 1, Duration::from_secs(600)).await;
    let mut agent = tc.spawn_agent(tc.agent_config("r", &token, ""));
    let id = agent.connected().await;
    let first = AgentIdentity::load(&agent.state_dir()).unwrap().unwrap();
    let first_not_after = tc.agent_view(&id).await.cert_not_after_ms;

    // 65–75 % of 6 s: renewal within ~4.5 s.
    tokio::time::timeout(
        Duration::from_secs(10),
        agent.status.wait_for(|s| s.renewals >= 1 && s.connected),
    )
    .await
    .expect("no renewal within 10s")
    .unwrap();
    let renewed = AgentIdentity::load(&agent.state_dir()).unwrap().unwrap();
    assert_eq!(renewed.id, first.id);
    assert_ne!(
        renewed.key.to_pem(),
        first.key.to_pem(),
        "renewal must use a new key"
    );
    assert!(renewed.not_after > first.not_after);
    let view = tc.agent_view(&id).await;
    assert!(view.cert_not_after_ms > first_not_after);
    assert_eq!(view.state(), pb::AgentState::Online);
    // Past the first certificate's expiry, the agent is still connected.
    eventually(
        "first certificate expired",
        Duration::from_secs(10),
        || async { ruse_proto::types::UnixMs::now() > first.not_after },
    )
    .await;
    eventually(
        "agent online after first expiry",
        Duration::from_secs(10),
        || async {
            tc.agent_view(&id).await.state() == pb::AgentState::Online
                && agent.status.borrow().connected
        },
    )
    .await;
    agent.stop().await.unwrap();
}

#[tokio::test]
async fn silence_makes_an_agent_offline_and_a_new_session_replaces_the_old() {
    let tc = TestController::start().await;
    let token = tc.token("", 1, Duration::from_secs(600)).await;
    let mut agent = tc.spawn_agent(tc.agent_config("s", &token, ""));
    let id = agent.connected().await;
    let identity = AgentIdentity::load(&agent.state_dir()).unwrap().unwrap();
    agent.stop().await.unwrap();
    eventually(
        "offline after a clean stop",
        Duration::from_secs(5),
        || async { tc.agent_view(&id).await.state() == pb::AgentState::Offline },
    )
    .await;

    // A session that says Hello and then nothing: online, then offline once
    // the heartbeat TTL passes, although the stream is still open.
    let tls = ruse_pki::client_config(
        &identity.trust_bundle,
        vec![identity.cert.clone()],
        identity.key.to_der(),
    )
    .unwrap();
    let mut client = tc.agent_client_with(tls.clone()).await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(agent_pb::AgentMessage {
        msg: Some(agent_pb::agent_message::Msg::Hello(
            agent_pb::Hello::default(),
        )),
    })
    .await
    .unwrap();
    let mut first = client
        .session(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let directive = first.message().await.unwrap().unwrap();
    assert!(matches!(
        directive.msg,
        Some(agent_pb::controller_message::Msg::Directive(
            agent_pb::Directive {
                kind: Some(agent_pb::directive::Kind::SetHeartbeat(_))
            }
        ))
    ));
    assert_eq!(tc.agent_view(&id).await.state(), pb::AgentState::Online);
    eventually(
        "offline after the heartbeat TTL",
        Duration::from_secs(5),
        || async { tc.agent_view(&id).await.state() == pb::AgentState::Offline },
    )
    .await;

    // A second session for the same agent closes the first.
    let mut client2 = tc.agent_client_with(tls).await.unwrap();
    let (tx2, rx2) = tokio::sync::mpsc::channel(4);
    tx2.send(agent_pb::AgentMessage {
        msg: Some(agent_pb::agent_message::Msg::Hello(
            agent_pb::Hello::default(),
        )),
    })
    .await
    .unwrap();
    let _second = client2
        .session(ReceiverStream::new(rx2))
        .await
        .unwrap()
        .into_inner();
    let closed = tokio::time::timeout(Duration::from_secs(2), first.message())
        .await
        .expect("the first session was not closed");
    let status = closed.expect_err("the first session must end with an error");
    assert_eq!(status.code(), tonic::Code::Aborted);
    assert_eq!(tc.agent_view(&id).await.state(), pb::AgentState::Online);
    drop(tx);
    drop(tx2);
}

#[tokio::test]
async fn agent_state_and_tokens_survive_a_graceful_restart_and_agents_reconnect() {
    let mut tc = TestController::start().await;
    let token = tc.token("site=or", 3, Duration::from_secs(600)).await;
    let mut agent = tc.spawn_agent(tc.agent_config("p", &token, ""));
    let id = agent.connected().await;
    tc.restart().await;
    eventually(
        "agent back online after restart",
        Duration::from_secs(10),
        || async {
            tc.agents()
                .await
                .iter()
                .any(|a| a.id == id && a.state() == pb::AgentState::Online)
        },
    )
    .await;
    assert!(agent.status.borrow().sessions >= 2);
    let tokens = tc
        .root()
        .await
        .list_tokens(pb::ListTokensRequest {})
        .await
        .unwrap()
        .into_inner()
        .tokens;
    assert_eq!(tokens.len(), 1);
    assert_eq!(tokens[0].uses, 1);
    assert_eq!(tokens[0].max_uses, 3);
    agent.stop().await.unwrap();
    // The agent kept its identity across the restart: no re-enrollment.
    assert_eq!(tc.agents().await.len(), 1);
}

#[tokio::test]
async fn an_agent_the_controller_does_not_know_stops_with_a_clear_error() {
    let tc = TestController::start().await;
    // A certificate from the right CA for an agent that never enrolled (as
    // after the controller's store was lost but its CA kept).
    let ca = tc.ca();
    let key = ruse_pki::PrivateKey::generate().unwrap();
    let id = ruse_proto::types::Identity::Agent("01neverenrolled".parse().unwrap());
    let cert = ca
        .sign_client_csr(&key.csr_der().unwrap(), &id, Duration::from_secs(600))
        .unwrap();
    let config = tc.agent_config("ghost", "unused", "");
    AgentIdentity::from_issued(key, cert.der, vec![ca.cert_der().clone()])
        .unwrap()
        .save(&config.state_dir)
        .unwrap();
    let ended = tc
        .spawn_agent(config)
        .finished(Duration::from_secs(10))
        .await;
    assert!(
        matches!(&ended, Err(AgentError::Unknown { id, .. }) if id.as_str() == "01neverenrolled"),
        "{ended:?}"
    );
    let message = ended.unwrap_err().to_string();
    assert!(
        message.contains("enroll again with a new token"),
        "{message}"
    );
    tc.assert_serving().await;
}

#[tokio::test]
async fn an_agent_whose_certificate_expired_while_off_enrolls_again() {
    let tc = TestController::start_with(|c| c.agent_cert_ttl = Duration::from_secs(5)).await;
    let token = tc.token("site=icu", 2, Duration::from_secs(600)).await;
    let config = tc.agent_config("sleeper", &token, "");
    let mut agent = tc.spawn_agent(config.clone());
    let first_id = agent.connected().await;
    agent.stop().await.unwrap();
    let expired = AgentIdentity::load(&config.state_dir).unwrap().unwrap();
    eventually("certificate expiry", Duration::from_secs(10), || async {
        expired.expired(ruse_proto::types::UnixMs::now())
    })
    .await;

    let mut again = tc.spawn_agent(config);
    let second_id = again.connected().await;
    assert_ne!(
        first_id, second_id,
        "an expired identity is replaced by a new enrollment"
    );
    let view = tc.agent_view(&second_id).await;
    assert_eq!(view.state(), pb::AgentState::Online);
    assert_eq!(view.labels.get("site").map(String::as_str), Some("icu"));
    again.stop().await.unwrap();
}

/// A machine taken out of service: its agent stays registered as offline,
/// and a wave of agents that never answer never completes. An admin deletes
/// it: it is revoked, gone from the inventory (still there with --all),
/// and rollouts stop waiting for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_agent_leaves_the_inventory_and_rollouts_stop_waiting() {
    let tc = TestController::start().await;
    let token = tc
        .token("role=workstation", 1, Duration::from_secs(600))
        .await;
    let mut agent = tc.spawn_agent(tc.agent_config("old-ws", &token, ""));
    let id = agent.connected().await;
    let campaign = |template: &str| {
        format!(
            "kind: Campaign\nname: ward\nselector: {{role: workstation}}\nlures:\n  - {{template: {template}}}\n"
        )
    };
    tc.apply(&campaign("pgpass")).await;
    tc.wait_rollout("ward", "completed", Duration::from_secs(10))
        .await;
    agent.stop().await.unwrap();
    // Decommissioned: the next change waits for an agent that never comes.
    tc.apply(&campaign("netrc")).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(tc.campaign("ward").await.rollout_state, "progressing");

    let mut root = tc.root().await;
    let deleted = root
        .delete_agent(pb::DeleteAgentRequest {
            id: id.clone(),
            reason: "workstation scrapped".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(deleted.state(), pb::AgentState::Revoked);
    assert!(deleted.deleted_ms > 0);
    tc.wait_rollout("ward", "completed", Duration::from_secs(10))
        .await;
    assert!(
        tc.agents().await.is_empty(),
        "deleted agents are not listed"
    );
    let all = root
        .list_agents(pb::ListAgentsRequest {
            include_deleted: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .agents;
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].revoke_reason, "workstation scrapped");
    let audit = root
        .list_audit(pb::ListAuditRequest::default())
        .await
        .unwrap()
        .into_inner()
        .records;
    assert!(
        audit
            .iter()
            .any(|r| r.action == "agent.delete" && r.result == "ok")
    );
}

/// A machine switched off for the holidays used to hold up every rollout
/// whose wave it was alone in. Offline longer than
/// `rollout_unreachable_after`, it is reported as unreachable and not
/// waited for; it gets its lures when it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_offline_too_long_does_not_hold_up_a_rollout() {
    let tc = TestController::start_with(|c| {
        c.rollout_unreachable_after = Duration::from_secs(2);
    })
    .await;
    let token = tc
        .token("role=workstation", 1, Duration::from_secs(600))
        .await;
    let mut agent = tc.spawn_agent(tc.agent_config("laptop", &token, ""));
    agent.connected().await;
    let config = agent.config.clone();
    agent.stop().await.unwrap();
    tc.apply("kind: Campaign\nname: ward\nselector: {role: workstation}\nlures:\n  - {template: pgpass}\n")
        .await;
    let done = tc
        .wait_rollout("ward", "completed", Duration::from_secs(15))
        .await;
    assert_eq!(done.wave_status[0].unreachable, 1, "{done:#?}");
    // Back from the holidays: it gets its lure.
    let mut agent = tc.spawn_agent(config);
    agent.connected().await;
    agent.wait_lures(1, Duration::from_secs(10)).await;
    agent.stop().await.unwrap();
}

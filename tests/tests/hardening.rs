//! The defects a hostile test of the system found, each reproduced: what an
//! unauthenticated peer, a compromised agent, a local user on an endpoint
//! and an operator could do, and must no longer be able to.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use std::time::Duration;

use ruse_e2e::{TestAgent, TestController, eventually};

/// Every file and directory below `dir`, with its mode.
fn modes(dir: &Path) -> Vec<(PathBuf, u32)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap().flatten() {
            let meta = entry.metadata().unwrap();
            if meta.is_dir() {
                stack.push(entry.path());
            }
            out.push((entry.path(), meta.permissions().mode() & 0o777));
        }
    }
    out
}

/// An FTP password an intruder typed sits in the agent's outbox until the
/// controller acknowledges it, and in the controller's store for good:
/// neither may be readable by other local users, whatever the umask the
/// processes were started with (tests run with the usual 022).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_agent_and_controller_write_is_private_whatever_the_umask() {
    let tc = TestController::start().await;
    let token = tc.token("site=icu", 1, Duration::from_secs(600)).await;
    let mut agent = tc.spawn_agent(tc.agent_config("a", &token, ""));
    agent.connected().await;
    let mut event = TestAgent::touch_event("no-such-lure", 1);
    event.detail = "PASS Winter2026!".into();
    agent.events.record(vec![event]).await.unwrap();
    let state = agent.state_dir();
    eventually("the outbox exists", Duration::from_secs(5), || {
        let log = state.join("outbox/outbox.log");
        async move { log.exists() }
    })
    .await;

    // Both directories are closed to other users, so nothing inside can
    // be reached whatever mode a library gave its files (sled uses the
    // umask) ...
    for top in [state.as_path(), tc.data_dir(), &tc.data_dir().join("store")] {
        let mode = std::fs::metadata(top).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode & 0o077, 0, "{} is {mode:o}", top.display());
    }
    // ... and what the agent writes itself is private on its own.
    let written: Vec<_> = modes(&state)
        .into_iter()
        .filter(|(p, _)| {
            !p.is_dir() && !p.to_string_lossy().ends_with("cert.pem") && !p.ends_with("ca.pem")
        })
        .collect();
    assert!(
        written
            .iter()
            .any(|(p, _)| p.ends_with("outbox/outbox.log"))
    );
    for (path, mode) in written {
        assert_eq!(mode & 0o077, 0, "{} is {mode:o}", path.display());
    }
    agent.stop().await.unwrap();
}

/// 1,500 connections that never send a ClientHello used to hold every
/// handshake slot (512, 10 s each) and shut out new agents, admins and
/// enrollments for as long as they stayed. Now new connections are served
/// at once, and the silent ones are closed after a few seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_shut_out_nobody() {
    let tc = TestController::start().await;
    let token = tc.token("site=icu", 1, Duration::from_secs(600)).await;
    let addr = tc.controller().agent_addr();
    // All at once, as an attacker would: a connect the controller's
    // backlog cannot take within two seconds is given up.
    let connects: Vec<_> = (0..1_500)
        .map(|_| {
            tokio::spawn(tokio::time::timeout(
                Duration::from_secs(2),
                tokio::net::TcpStream::connect(addr),
            ))
        })
        .collect();
    let mut silent = Vec::new();
    for c in connects {
        if let Ok(Ok(conn)) = c.await.unwrap() {
            silent.push(conn);
        }
    }
    assert_eq!(silent.len(), 1_500, "every connection was taken at once");
    // Let the controller accept them all.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let started = std::time::Instant::now();
    let agents = tokio::time::timeout(Duration::from_secs(3), tc.agents())
        .await
        .expect("an admin call is served while silent connections are held");
    assert!(agents.is_empty());
    let mut agent = tc.spawn_agent(tc.agent_config("new", &token, ""));
    tokio::time::timeout(Duration::from_secs(5), agent.connected())
        .await
        .expect("a new agent enrolls and connects while silent connections are held");
    assert!(started.elapsed() < Duration::from_secs(5));

    // The silent ones are closed by the controller, not kept for good.
    let mut closed = 0;
    for conn in &mut silent {
        let mut buf = [0u8; 1];
        match tokio::time::timeout(
            Duration::from_secs(6),
            tokio::io::AsyncReadExt::read(conn, &mut buf),
        )
        .await
        {
            Ok(Ok(0) | Err(_)) => closed += 1,
            _ => break,
        }
    }
    assert_eq!(closed, silent.len(), "every silent connection was closed");
    agent.stop().await.unwrap();
}

/// Refused admin calls without a certificate were audited one by one with
/// the caller's target: two 3 MB ids grew the store 6 MB and broke `get
/// audit`, and a flood pushed real entries out of view. Now they are
/// refused before their body is read and summarised per source; what an
/// authenticated caller puts in a target is cut short.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_calls_cannot_fill_the_audit_log_or_hide_real_entries() {
    use ruse_e2e::pb;
    let tc = TestController::start().await;
    let mut root = tc.root().await;
    root.create_token(pb::CreateTokenRequest::default())
        .await
        .unwrap();
    let anonymous = ruse_pki::anonymous_client_config(&[tc.ca().cert_der().clone()]).unwrap();
    let mut anon = tc.admin_with(anonymous).await.unwrap();
    let huge = "x".repeat(3 << 20);
    let revoke = |id: &str| pb::RevokeAgentRequest {
        id: id.to_owned(),
        reason: String::new(),
    };
    for _ in 0..2 {
        let status = anon.revoke_agent(revoke(&huge)).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
    }
    for _ in 0..500 {
        anon.revoke_agent(revoke("01x")).await.unwrap_err();
    }
    let mut vera = tc.admin_as("vera", pb::Role::Viewer).await;
    let status = vera.revoke_agent(revoke(&huge)).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied);

    let audit = root
        .list_audit(pb::ListAuditRequest::default())
        .await
        .unwrap()
        .into_inner()
        .records;
    // One summary per source and interval (the test controller writes them
    // every 200 ms), together counting every call.
    let summaries: Vec<_> = audit.iter().filter(|r| r.actor == "anonymous").collect();
    assert!(
        !summaries.is_empty() && summaries.len() <= 20,
        "{summaries:#?}"
    );
    let counted: u64 = summaries
        .iter()
        .map(|r| {
            assert!(r.detail.contains("RevokeAgent x"), "{}", r.detail);
            r.detail.split(' ').next().unwrap().parse::<u64>().unwrap()
        })
        .sum();
    assert_eq!(counted, 502);
    assert!(audit.iter().any(|r| r.action == "token.create"));
    let vera_refused = audit
        .iter()
        .find(|r| r.actor == "admin/vera" && r.result != "ok")
        .expect("the viewer's refusal is audited");
    assert!(
        vera_refused.target.len() < 600,
        "{}",
        vera_refused.target.len()
    );
    let bytes: usize = audit
        .iter()
        .map(|r| r.target.len() + r.detail.len() + r.result.len())
        .sum();
    assert!(
        bytes < 16 << 10,
        "the audit log holds {bytes} bytes of text"
    );
}

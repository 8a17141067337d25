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

    let audit = tc.audit().await;
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

const EXPORTS: &str = "kind: Campaign\nname: exports\nselector: {site: icu}\nlures:\n  - {template: patient-csv, path: \"~/Documents/Exports\"}\n";

/// An agent with the `exports` lure planted; its id and lure id.
async fn agent_with_lure(tc: &TestController, name: &str) -> (String, String, TestAgent) {
    let token = tc.token("site=icu", 1, Duration::from_secs(600)).await;
    let mut agent = tc.spawn_agent(tc.agent_config(name, &token, ""));
    let id = agent.connected().await;
    tc.apply(EXPORTS).await;
    agent.wait_lures(1, Duration::from_secs(10)).await;
    let lure = tc.lures(&id, false).await[0].id.clone();
    (id, lure, agent)
}

fn random_suffix(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    ruse_proto::types::random_bytes(&mut bytes);
    bytes
        .iter()
        .map(|b| b"0123456789abcdefghjkmnpqrstvwxyz"[usize::from(b % 32)] as char)
        .collect()
}

/// Ids starting `zz` once sorted as newest forever: an attacker's 2,000
/// such events hid another host's real touch from `get events` and
/// `--since 10m`, and times of ±2^62 ms made an incident "seen" from the
/// year -146,136,543. The controller now orders events by when it received
/// them and clamps times outside the accepted skew, keeping what was said.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_choose_neither_where_their_events_sort_nor_when_they_happened() {
    use ruse_e2e::pb;
    let tc = TestController::start().await;
    let (attacker_id, attacker_lure, attacker) = agent_with_lure(&tc, "attacker").await;
    let (victim_id, victim_lure, victim) = agent_with_lure(&tc, "victim").await;

    // The highest ids a ULID allows (and some beyond it), and absurd times.
    let mut forged: Vec<_> = (0..2_000)
        .map(|n| {
            let mut e = TestAgent::touch_event(&attacker_lure, n);
            e.id = format!("7zzzzzzz{}", random_suffix(18));
            e
        })
        .collect();
    forged[0].observed_ms = 1 << 62;
    forged[1].observed_ms = -(1 << 62);
    let mut malformed = TestAgent::touch_event(&attacker_lure, 9_999);
    malformed.id = format!("zz{}", random_suffix(24));
    forged.push(malformed);
    attacker.events.record(forged).await.unwrap();
    eventually(
        "the forged events are in",
        Duration::from_secs(20),
        || async { attacker.events.depth() == 0 },
    )
    .await;

    let real = TestAgent::touch_event(&victim_lure, 1);
    let real_id = real.id.clone();
    victim.events.record(vec![real]).await.unwrap();
    eventually("the real touch is in", Duration::from_secs(10), || async {
        victim.events.depth() == 0
    })
    .await;

    let mut root = tc.root().await;
    let since_10m = pb::EventFilter {
        since_ms: ruse_proto::types::UnixMs::now().0 - 600_000,
        ..Default::default()
    };
    for filter in [pb::EventFilter::default(), since_10m] {
        let newest = root
            .list_events(pb::ListEventsRequest {
                filter: Some(filter),
                limit: 40,
                before_cursor: 0,
            })
            .await
            .unwrap()
            .into_inner()
            .events;
        assert_eq!(
            newest.last().map(|e| e.id.as_str()),
            Some(real_id.as_str()),
            "the last event received is listed last"
        );
        assert!(newest.windows(2).all(|w| w[0].cursor < w[1].cursor));
    }

    let stored = tc
        .events(pb::EventFilter {
            agent_id: attacker_id.clone(),
            ..Default::default()
        })
        .await;
    assert_eq!(stored.len(), 2_000, "the malformed id is refused");
    let now = ruse_proto::types::UnixMs::now().0;
    let clamped: Vec<_> = stored
        .iter()
        .filter(|e| e.reported_observed_ms != 0)
        .collect();
    assert_eq!(clamped.len(), 2, "{clamped:#?}");
    for e in &clamped {
        assert!(e.reported_observed_ms.abs() == 1 << 62);
        assert!((now - 31 * 86_400_000..=now + 301_000).contains(&e.observed_ms));
    }
    let incidents = root
        .list_incidents(pb::ListIncidentsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .incidents;
    for i in &incidents {
        assert!(
            (now - 31 * 86_400_000..=now + 301_000).contains(&i.first_seen_ms)
                && (now - 31 * 86_400_000..=now + 301_000).contains(&i.last_seen_ms),
            "{i:#?}"
        );
    }
    let _ = victim_id;
    attacker.stop().await.unwrap();
    victim.stop().await.unwrap();
}

/// One agent certificate sent 57–76k events a second: the store grew by
/// 1.8 GB a minute, another agent's events reached `watch` late, the live
/// watch skipped events, and one agent's query read everyone's events.
/// Now an agent past its quota is counted and summarised in a `flood`
/// incident of its own; the others are stored and watched as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_agent_is_summarised_and_hides_nobody() {
    use ruse_e2e::pb;
    let tc = TestController::start_with(|c| {
        c.agent_events_per_second = 100;
        c.agent_event_burst = 500;
    })
    .await;
    let (flooder_id, flooder_lure, flooder) = agent_with_lure(&tc, "flooder").await;
    let (victim_id, victim_lure, victim) = agent_with_lure(&tc, "victim").await;
    let mut root = tc.root().await;
    let mut watch = root
        .watch_events(pb::WatchEventsRequest::default())
        .await
        .unwrap()
        .into_inner();

    let started = std::time::Instant::now();
    for batch in 0..20 {
        let events: Vec<_> = (0..1_000)
            .map(|n| TestAgent::touch_event(&flooder_lure, batch * 1_000 + n))
            .collect();
        flooder.events.record(events).await.unwrap();
    }
    let real = TestAgent::touch_event(&victim_lure, 1);
    let real_id = real.id.clone();
    victim.events.record(vec![real]).await.unwrap();

    // The victim's event reaches the watch: nothing is hidden.
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let item = watch.message().await.unwrap().unwrap();
            if item.event.is_some_and(|e| e.id == real_id) {
                return;
            }
        }
    })
    .await
    .expect("the victim's touch reached the watch during the flood");

    eventually(
        "the flood is acknowledged",
        Duration::from_secs(30),
        || async { flooder.events.depth() == 0 },
    )
    .await;
    let elapsed = started.elapsed().as_secs() + 1;
    let stored = tc
        .events(pb::EventFilter {
            agent_id: flooder_id.clone(),
            ..Default::default()
        })
        .await;
    let touches = stored.iter().filter(|e| e.kind == "touch").count() as u64;
    assert!(
        touches <= 500 + 100 * elapsed,
        "{touches} touches stored in {elapsed}s"
    );
    let floods: u64 = stored
        .iter()
        .filter(|e| e.kind == "flood")
        .map(|e| u64::from(e.dropped_before))
        .sum();
    assert!(floods > 0, "the excess is summarised");
    let incidents = root
        .list_incidents(pb::ListIncidentsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .incidents;
    assert!(
        incidents
            .iter()
            .any(|i| i.title.contains("sent more events than its quota")),
        "{incidents:#?}"
    );
    // Everything the flooder sent is accounted for once the last summary
    // is written (every 200 ms in tests).
    eventually(
        "every event is stored or counted",
        Duration::from_secs(10),
        || async {
            let stored = tc
                .events(pb::EventFilter {
                    agent_id: flooder_id.clone(),
                    ..Default::default()
                })
                .await;
            let touches = stored.iter().filter(|e| e.kind == "touch").count() as u64;
            let counted: u64 = stored
                .iter()
                .filter(|e| e.kind == "flood")
                .map(|e| u64::from(e.dropped_before))
                .sum();
            touches + counted == 20_000
        },
    )
    .await;
    let of_victim = root
        .list_events(pb::ListEventsRequest {
            filter: Some(pb::EventFilter {
                agent_id: victim_id.clone(),
                ..Default::default()
            }),
            limit: 40,
            before_cursor: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .events;
    assert_eq!(of_victim.len(), 1);
    assert_eq!(of_victim[0].id, real_id);
    flooder.stop().await.unwrap();
    victim.stop().await.unwrap();
}

/// A watcher that stops reading falls behind the live buffer: it used to
/// be told a count and lose the events. Now it reads them from the store
/// and gets every one, in order; and a watch that reconnects with the
/// last cursor it saw resumes with nothing missed or repeated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_or_reconnecting_watcher_misses_nothing() {
    use ruse_e2e::pb;
    let tc = TestController::start().await;
    let (_, lure, agent) = agent_with_lure(&tc, "busy").await;
    let mut root = tc.root().await;
    let mut slow = root
        .watch_events(pb::WatchEventsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let mut sent = Vec::new();
    for batch in 0..12 {
        let events: Vec<_> = (0..1_000)
            .map(|n| TestAgent::touch_event(&lure, batch * 1_000 + n))
            .collect();
        sent.extend(events.iter().map(|e| e.id.clone()));
        agent.events.record(events).await.unwrap();
    }
    eventually("all stored", Duration::from_secs(30), || async {
        agent.events.depth() == 0
    })
    .await;
    // Only now does the slow watcher read: far more than the live buffer.
    let mut seen = Vec::new();
    let mut cursors = Vec::new();
    while seen.len() < sent.len() {
        let item = tokio::time::timeout(Duration::from_secs(10), slow.message())
            .await
            .expect("the slow watcher keeps getting events")
            .unwrap()
            .unwrap();
        assert_eq!(item.missed, 0);
        if let Some(e) = item.event {
            cursors.push(e.cursor);
            seen.push(e.id);
        }
    }
    assert_eq!(seen, sent, "every event, once, in the order received");
    assert!(cursors.windows(2).all(|w| w[0] < w[1]));

    // Resume after the 5,000th.
    let after = cursors[4_999];
    let mut resumed = root
        .watch_events(pb::WatchEventsRequest {
            filter: None,
            after_cursor: after,
        })
        .await
        .unwrap()
        .into_inner();
    let mut rest = Vec::new();
    while rest.len() < sent.len() - 5_000 {
        let item = tokio::time::timeout(Duration::from_secs(10), resumed.message())
            .await
            .expect("the resumed watch catches up")
            .unwrap()
            .unwrap();
        if let Some(e) = item.event {
            rest.push(e.id);
        }
    }
    assert_eq!(rest, sent[5_000..]);
    agent.stop().await.unwrap();
}

/// An agent could rewrite its own labels in its Hello: one that was not a
/// decoy host claimed the decoy's labels and its forged `decoy-login`
/// was believed; one that flipped a label 400 times left 2,800 lure
/// instances. Only a token's and an admin's labels select now; what an
/// agent says about itself is reported beside them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_cannot_label_itself_into_a_decoy_or_a_campaign() {
    use ruse_e2e::pb;
    use ruse_proto::agent::v1 as agent_pb;
    let tc = TestController::start().await;
    tc.apply(
        "kind: Decoy\nname: pacs\nselector: {role: decoy}\naddress: 127.0.0.1\nlisten: 127.0.0.1\nservices:\n  - {protocol: portscan, port: 1}\n---\nkind: Campaign\nname: decoy-only\nselector: {role: decoy}\nlures:\n  - {template: pgpass}\n",
    )
    .await;
    let token = tc.token("site=icu", 1, Duration::from_secs(600)).await;
    let mut config = tc.agent_config("intruder", &token, "role=decoy");
    config.decoy_limits.read_timeout = Duration::from_secs(1);
    let mut intruder = tc.spawn_agent(config);
    let id = intruder.connected().await;

    let view = tc.agent_view(&id).await;
    assert!(!view.labels.contains_key("role"), "{:?}", view.labels);
    assert_eq!(
        view.reported_labels.get("role").map(String::as_str),
        Some("decoy")
    );
    assert!(
        tc.lures(&id, true).await.is_empty(),
        "no campaign by its own labels"
    );

    // A forged login at the decoy is refused, not matched or correlated.
    let mut forged = TestAgent::touch_event("", 0);
    forged.kind = "decoy-login".into();
    forged.decoy = Some(agent_pb::DecoyContact {
        name: "pacs".into(),
        protocol: "ssh".into(),
        port: 22,
        source_ip: "10.0.0.66".into(),
        source_port: 4444,
    });
    intruder.events.record(vec![forged]).await.unwrap();
    eventually(
        "the forged event is answered",
        Duration::from_secs(10),
        || async { intruder.events.depth() == 0 },
    )
    .await;
    let mut root = tc.root().await;
    let events = tc.events(pb::EventFilter::default()).await;
    assert!(
        events.iter().all(|e| e.kind != "decoy-login"),
        "{events:#?}"
    );
    let audit = tc.audit().await;
    assert!(
        audit
            .iter()
            .any(|r| r.action == "event.rejected" && r.detail.contains("does not run")),
        "{audit:#?}"
    );
    // An admin's label does select.
    root.label_agent(pb::LabelAgentRequest {
        id: id.clone(),
        set: [("role".to_owned(), "decoy".to_owned())].into(),
        remove: Vec::new(),
    })
    .await
    .unwrap();
    eventually(
        "the admin's label selects",
        Duration::from_secs(10),
        || async { tc.lures(&id, false).await.len() == 1 },
    )
    .await;
    intruder.stop().await.unwrap();
}

/// 120 KB of 60,000 nested brackets took 21 s to parse on the async
/// threads: admin calls failed, agents lost their sessions, events came
/// late. Depth and size are bounded before parsing now, and parsing runs
/// off the async threads with a time limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deeply_nested_manifest_is_refused_at_once_and_freezes_nothing() {
    use ruse_e2e::pb;
    let tc = TestController::start().await;
    let mut root = tc.root().await;
    // 480 KB each: 240,000 levels of flow sequences, and of block
    // sequences on one line. 821bb7e took 4.1 s over the first (debug
    // build), on an async thread, before refusing it.
    for content in [
        "[".repeat(240_000) + &"]".repeat(240_000),
        "- ".repeat(240_000) + "x\n",
    ] {
        let started = std::time::Instant::now();
        let status = root
            .apply(pb::ApplyRequest {
                source: "deep.yaml".into(),
                content,
                dry_run: false,
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(
            status.message().contains("nests deeper"),
            "{}",
            status.message()
        );
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }
    tc.assert_serving().await;
}

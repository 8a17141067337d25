//! Touching a lure becomes a durable, attributed event at the controller,
//! and no event is lost or duplicated when the controller or the agent
//! dies.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use ruse_e2e::postgres::Postgres;
use ruse_e2e::{
    TestAgent, TestController, consistently, eventually, pb, planted_files, require_root,
};

const CAMPAIGN: &str = "kind: Campaign\nname: exports\nselector: {site: icu}\nlures:\n  - {template: patient-csv, path: \"~/Documents/Exports\"}\n";

/// The planted patient export of `agent`.
fn honeyfile(agent: &TestAgent) -> PathBuf {
    let dir = agent.home().join("Documents/Exports");
    planted_files(&dir)
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("no planted export in {}", dir.display()))
}

async fn agent_with_lure(tc: &TestController, name: &str) -> (String, TestAgent) {
    let token = tc.token("site=icu", 5, Duration::from_secs(600)).await;
    let mut agent = tc.spawn_agent(tc.agent_config(name, &token, ""));
    let id = agent.connected().await;
    (id, agent)
}

fn cat(path: &Path) -> u32 {
    let child = Command::new("cat")
        .arg(path)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    pid
}

fn filter_agent(id: &str) -> pb::EventFilter {
    pb::EventFilter {
        agent_id: id.into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cat_of_a_honeyfile_is_one_event_naming_cat_seen_by_watch_within_a_second() {
    if !require_root("cat_of_a_honeyfile_is_one_event_naming_cat") {
        return;
    }
    let tc = TestController::start().await;
    let (id, mut agent) = agent_with_lure(&tc, "a").await;
    tc.apply(CAMPAIGN).await;
    agent.wait_lures(1, Duration::from_secs(10)).await;
    let file = honeyfile(&agent);

    let mut watch = tc.watch_events().await;
    let start = Instant::now();
    let pid = cat(&file);
    let item = tokio::time::timeout(Duration::from_secs(1), watch.message())
        .await
        .expect("no event within 1s of cat")
        .unwrap()
        .expect("stream ended");
    let latency = start.elapsed();
    let e = item.event.unwrap();
    assert_eq!(e.agent_id, id);
    assert_eq!(e.kind, "touch");
    assert_eq!(e.template, "patient-csv");
    assert_eq!(e.campaign, "exports");
    assert_eq!(e.path, file.display().to_string());
    assert_eq!(e.operations, ["open", "read", "close"]);
    assert_eq!(e.attribution, "fanotify");
    let p = e.process.expect("the process is named");
    assert_eq!(p.pid, pid);
    assert!(p.exe.ends_with("/cat"), "{}", p.exe);
    assert_eq!(p.uid, 0);
    assert_eq!(p.user, "root");
    assert!(p.cmdline.starts_with("cat "), "{}", p.cmdline);
    assert!(!e.allowed);
    eprintln!("cat -> rusectl watch: {latency:?}");
    // The agent's status (status.json, `ruse-agent status`) names the event
    // once the controller has acknowledged it.
    eventually(
        "the acknowledged event in the agent's status",
        Duration::from_secs(5),
        || async {
            agent.status.borrow().recent_acked.iter().any(|a| {
                a.lure_id == e.lure_id && a.kind == "touch" && a.path == e.path && a.id == e.id
            })
        },
    )
    .await;
    // One cat, one event.
    consistently("no second event", Duration::from_millis(500), || async {
        tc.events(filter_agent(&id)).await.len() == 1
    })
    .await;
    agent.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agents_own_planting_verifying_and_removal_raise_nothing() {
    let tc = TestController::start().await;
    let token = tc.token("site=icu", 1, Duration::from_secs(600)).await;
    let mut config = tc.agent_config("quiet", &token, "");
    config.verify_interval = Duration::from_secs(1);
    let mut agent = tc.spawn_agent(config);
    let id = agent.connected().await;
    tc.apply(&format!(
        "{CAMPAIGN}  - {{template: aws-credentials}}\n  - {{template: dicom-study}}\n  - {{template: hosts-entry, decoy: d}}\n---\nkind: Decoy\nname: d\naddress: 10.9.9.9\nservices: [{{protocol: ssh, port: 22}}]\n"
    ))
    .await;
    agent.wait_lures(4, Duration::from_secs(10)).await;
    // Rotation replaces every file; verification reads them every second.
    tc.root()
        .await
        .rotate(pb::RotateRequest {
            campaign: "exports".into(),
        })
        .await
        .unwrap();
    tc.wait_rollout("exports", "completed", Duration::from_secs(10))
        .await;
    consistently(
        "no events from the agent's own work",
        Duration::from_millis(2500),
        || async { tc.events(filter_agent(&id)).await.is_empty() },
    )
    .await;
    tc.root()
        .await
        .delete_campaign(pb::DeleteCampaignRequest {
            name: "exports".into(),
        })
        .await
        .unwrap();
    agent.wait_lures(0, Duration::from_secs(10)).await;
    consistently(
        "no events from removal",
        Duration::from_millis(1000),
        || async { tc.events(filter_agent(&id)).await.is_empty() },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_is_repaired_and_reported_as_an_event() {
    let tc = TestController::start().await;
    let token = tc.token("site=icu", 1, Duration::from_secs(600)).await;
    let mut config = tc.agent_config("drift", &token, "");
    config.verify_interval = Duration::from_secs(1);
    let mut agent = tc.spawn_agent(config);
    let id = agent.connected().await;
    tc.apply(CAMPAIGN).await;
    agent.wait_lures(1, Duration::from_secs(10)).await;
    let file = honeyfile(&agent);
    let content = std::fs::read(&file).unwrap();
    std::fs::remove_file(&file).unwrap();
    eventually("a drift event", Duration::from_secs(10), || async {
        tc.events(pb::EventFilter {
            agent_id: id.clone(),
            kind: "drift".into(),
            ..Default::default()
        })
        .await
        .iter()
        .any(|e| e.detail == "deleted; repaired" && e.path == file.display().to_string())
    })
    .await;
    assert_eq!(
        std::fs::read(&file).unwrap(),
        content,
        "the lure was put back"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allow_rule_keeps_the_record_but_does_not_raise() {
    if !require_root("an_allow_rule_keeps_the_record_but_does_not_raise") {
        return;
    }
    let tc = TestController::start().await;
    let (id, mut agent) = agent_with_lure(&tc, "allow").await;
    let cat_path = std::fs::canonicalize(
        String::from_utf8(
            Command::new("sh")
                .args(["-c", "command -v cat"])
                .output()
                .unwrap()
                .stdout,
        )
        .unwrap()
        .trim(),
    )
    .unwrap();
    tc.apply(&format!(
        "{CAMPAIGN}---\nkind: AllowRule\nname: nightly-export-check\nselector: {{site: icu}}\nprocess: {}\n",
        cat_path.display()
    ))
    .await;
    // The lure and the allow rules.
    agent.wait_lures(2, Duration::from_secs(10)).await;
    let file = honeyfile(&agent);
    cat(&file);
    Command::new("head").arg("-c1").arg(&file).output().unwrap();
    eventually("both reads recorded", Duration::from_secs(5), || async {
        tc.events(filter_agent(&id)).await.len() == 2
    })
    .await;
    let events = tc.events(filter_agent(&id)).await;
    let by_cat = events
        .iter()
        .find(|e| e.process.as_ref().unwrap().exe.ends_with("/cat"))
        .unwrap();
    assert!(by_cat.allowed);
    assert_eq!(by_cat.allow_rule, "nightly-export-check");
    let by_head = events
        .iter()
        .find(|e| e.process.as_ref().unwrap().exe.ends_with("/head"))
        .unwrap();
    assert!(!by_head.allowed, "other readers are still raised");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_events_made_while_the_controller_is_down_arrive_exactly_once() {
    let mut tc = TestController::start().await;
    let (id, mut agent) = agent_with_lure(&tc, "offline").await;
    tc.apply(CAMPAIGN).await;
    agent.wait_lures(1, Duration::from_secs(10)).await;
    let lure = tc.lures(&id, false).await[0].id.clone();
    tc.stop().await;

    let mut sent = HashSet::new();
    for batch in 0..10 {
        let events: Vec<_> = (0..1000)
            .map(|n| TestAgent::touch_event(&lure, batch * 1000 + n))
            .collect();
        sent.extend(events.iter().map(|e| e.id.clone()));
        agent.events.record(events).await.unwrap();
    }
    assert_eq!(sent.len(), 10_000);
    assert_eq!(agent.events.depth(), 10_000, "all waiting in the outbox");

    tc.start_again().await;
    eventually("outbox drained", Duration::from_secs(60), || async {
        agent.events.depth() == 0
    })
    .await;
    let stored = tc.events(filter_agent(&id)).await;
    let ids: HashSet<_> = stored.iter().map(|e| e.id.clone()).collect();
    assert_eq!(stored.len(), 10_000, "exactly once");
    assert_eq!(ids, sent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_controller_during_a_stream_loses_and_duplicates_nothing() {
    kill_9_during_a_stream(TestController::start_process().await).await;
}

/// The same on PostgreSQL: an event is acknowledged only once the
/// transaction holding it commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgresql_kill_9_of_the_controller_during_a_stream_loses_and_duplicates_nothing() {
    let Some(pg) = Postgres::start("on_postgresql_kill_9_of_the_controller_during_a_stream") else {
        return;
    };
    pg.database("ruse");
    let tc = TestController::start_process_on(Some(pg.options("ruse"))).await;
    kill_9_during_a_stream(tc).await;
    assert_eq!(
        pg.psql("ruse", "SELECT count(*) FROM events WHERE kind = 'touch'"),
        "3000"
    );
}

async fn kill_9_during_a_stream(mut tc: TestController) {
    let (id, mut agent) = agent_with_lure(&tc, "stream").await;
    tc.apply(CAMPAIGN).await;
    agent.wait_lures(1, Duration::from_secs(10)).await;
    let lure = tc.lures(&id, false).await[0].id.clone();

    let sink = agent.events.clone();
    let producer = tokio::spawn(async move {
        let mut sent = Vec::new();
        for round in 0..150 {
            let events: Vec<_> = (0..20)
                .map(|n| TestAgent::touch_event(&lure, round * 20 + n))
                .collect();
            sent.extend(events.iter().map(|e| e.id.clone()));
            sink.record(events).await.unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        sent
    });
    eventually("the stream is flowing", Duration::from_secs(10), || async {
        tc.events(filter_agent(&id)).await.len() > 200
    })
    .await;
    tc.kill9();
    tokio::time::sleep(Duration::from_millis(300)).await;
    tc.restart_process(1);
    let sent: Vec<String> = producer.await.unwrap();
    eventually("outbox drained", Duration::from_secs(30), || async {
        agent.events.depth() == 0
    })
    .await;
    let stored = tc.events(filter_agent(&id)).await;
    let ids: HashSet<_> = stored.iter().map(|e| e.id.clone()).collect();
    assert_eq!(ids.len(), stored.len(), "no duplicates");
    assert_eq!(
        ids,
        sent.iter().cloned().collect::<HashSet<_>>(),
        "none lost"
    );
    assert_eq!(sent.len(), 3000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_agent_loses_nothing_it_recorded() {
    if !require_root("kill_9_of_the_agent_loses_nothing_it_recorded") {
        return;
    }
    let tc = TestController::start().await;
    let token = tc.token("site=icu", 1, Duration::from_secs(600)).await;
    let dir = tc.dir.path().join("proc-agent");
    let root = dir.join("root");
    std::fs::create_dir_all(root.join("home/clinician")).unwrap();
    std::fs::write(dir.join("token"), &token).unwrap();
    let config = dir.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "controller = \"{}\"\nca_pin = \"{}\"\ntoken_file = \"{}\"\nstate_dir = \"{}\"\nroot = \"{}\"\nevent_coalesce = \"20ms\"\nevents_per_lure_per_second = 100000\nmin_backoff = \"50ms\"\nmax_backoff = \"500ms\"\n",
            tc.url(),
            tc.pin,
            dir.join("token").display(),
            dir.join("state").display(),
            root.display()
        ),
    )
    .unwrap();
    let start = |n: usize| {
        ruse_e2e::process::spawn(
            "ruse-agent",
            &["run", "--config", &config.display().to_string()],
            &dir.join(format!("agent-{n}.log")),
        )
    };
    let mut agent = start(0);
    eventually("agent online", Duration::from_secs(15), || async {
        tc.agents().await.len() == 1
    })
    .await;
    let id = tc.agents().await[0].id.clone();
    tc.apply(CAMPAIGN).await;
    let exports = root.join("home/clinician/Documents/Exports");
    eventually("lure planted", Duration::from_secs(10), || async {
        !planted_files(&exports).is_empty()
    })
    .await;
    let file = planted_files(&exports).remove(0);

    // A continuous stream of real reads; the agent is killed in the middle.
    let reader_file = file.clone();
    let reader = std::thread::spawn(move || {
        for _ in 0..300 {
            let _ = Command::new("cat")
                .arg(&reader_file)
                .stdout(std::process::Stdio::null())
                .status();
            std::thread::sleep(Duration::from_millis(5));
        }
    });
    eventually("events flowing", Duration::from_secs(10), || async {
        tc.events(filter_agent(&id)).await.len() > 30
    })
    .await;
    agent.kill9();
    // What the agent had recorded but not yet delivered is on disk.
    let waiting: HashSet<String> =
        ruse_agent::outbox::Outbox::open(&dir.join("state/outbox"), 1_000_000)
            .unwrap()
            .pending(0, 1_000_000)
            .unwrap()
            .into_iter()
            .map(|e| e.id)
            .collect();
    let delivered: HashSet<String> = tc
        .events(filter_agent(&id))
        .await
        .into_iter()
        .map(|e| e.id)
        .collect();
    let _agent2 = start(1);
    reader.join().unwrap();
    eventually(
        "everything recorded before the kill arrives",
        Duration::from_secs(20),
        || async {
            let now: HashSet<String> = tc
                .events(filter_agent(&id))
                .await
                .into_iter()
                .map(|e| e.id)
                .collect();
            waiting.is_subset(&now) && delivered.is_subset(&now)
        },
    )
    .await;
    let stored = tc.events(filter_agent(&id)).await;
    let ids: HashSet<_> = stored.iter().map(|e| e.id.clone()).collect();
    assert_eq!(ids.len(), stored.len(), "no duplicates");
    assert!(stored.len() > 30);
    eprintln!(
        "{} events before the kill, {} waiting in the outbox, {} in all",
        delivered.len(),
        waiting.len(),
        stored.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_about_another_agents_lure_are_refused_and_audited() {
    let tc = TestController::start().await;
    let (a_id, mut a) = agent_with_lure(&tc, "a").await;
    let (b_id, mut b) = agent_with_lure(&tc, "b").await;
    tc.apply(CAMPAIGN).await;
    a.wait_lures(1, Duration::from_secs(10)).await;
    b.wait_lures(1, Duration::from_secs(10)).await;
    let b_lure = tc.lures(&b_id, false).await[0].id.clone();
    let a_lure = tc.lures(&a_id, false).await[0].id.clone();

    a.events
        .record(vec![
            TestAgent::touch_event(&b_lure, 0),
            TestAgent::touch_event("01nosuchlure0000000000000", 1),
            TestAgent::touch_event(&a_lure, 2),
        ])
        .await
        .unwrap();
    eventually("acknowledged", Duration::from_secs(10), || async {
        a.events.depth() == 0
    })
    .await;
    let stored = tc.events(pb::EventFilter::default()).await;
    assert_eq!(stored.len(), 1, "only the event about A's own lure");
    assert_eq!(stored[0].lure_id, a_lure);
    let audit = tc.audit().await;
    let refusal = audit
        .iter()
        .find(|r| r.action == "event.rejected")
        .expect("audited");
    assert_eq!(refusal.actor, format!("agent/{a_id}"));
    assert!(
        refusal.detail.starts_with("2 refused"),
        "{}",
        refusal.detail
    );
    assert!(
        refusal.detail.contains(&format!("belongs to agent {b_id}")),
        "{}",
        refusal.detail
    );
    let metrics = tc
        .root()
        .await
        .get_metrics(pb::GetMetricsRequest {})
        .await
        .unwrap()
        .into_inner()
        .text;
    assert!(
        metrics.contains("ruse_events_rejected_total 2\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("ruse_events_persisted_total 1\n"),
        "{metrics}"
    );
}

//! Faults nobody plans for: an agent killed in the middle of planting or
//! removing a campaign, a full disk under the controller's store or the
//! agent's outbox, an endpoint whose clock is years off. Each
//! test injects the fault into real processes (or a real filesystem) and
//! checks what a user would: what is on the endpoint's disk, what the
//! controller's registry says, that nothing is lost or duplicated.
//!
//! Longer than our ~800 lines on purpose: one test binary per area: every
//! binary links the whole workspace, so splitting this one would add a link
//! step to every CI run for no reader's gain; each test stands alone.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ruse_e2e::process::{Proc, spawn};
use ruse_e2e::{TestAgent, TestController, eventually, require_root, require_tool};
use ruse_proto::admin::v1 as pb;

/// Every file and directory under `root`: content and mode.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, (Vec<u8>, u32)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else {
                continue;
            };
            let path = entry.path();
            let mode = meta.permissions().mode();
            if meta.is_dir() {
                out.insert(path.clone(), (Vec::new(), mode));
                stack.push(path);
            } else {
                // A file may go between the listing and the read.
                if let Ok(bytes) = std::fs::read(&path) {
                    out.insert(path, (bytes, mode));
                }
            }
        }
    }
    out
}

/// The agent's temporary files: `.NAME.<12 hex>.tmp`.
fn is_temp(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with('.') && n.ends_with(".tmp") && n.len() > 18)
}

const HOMES: usize = 24;

/// An endpoint with `HOMES` users, half with an SSH config and AWS
/// credentials of their own, and a hosts file.
fn endpoint(root: &Path) {
    for i in 0..HOMES {
        let home = root.join(format!("home/user{i:02}"));
        std::fs::create_dir_all(&home).unwrap();
        if i % 2 == 0 {
            std::fs::create_dir_all(home.join(".ssh")).unwrap();
            std::fs::write(
                home.join(".ssh/config"),
                format!("Host jump\n  HostName 10.0.0.{i}\n"),
            )
            .unwrap();
            std::fs::create_dir_all(home.join(".aws")).unwrap();
            // No newline at the end: the block must give it back exactly.
            std::fs::write(
                home.join(".aws/credentials"),
                "[default]\naws_access_key_id = AKIAREALREALREAL0000",
            )
            .unwrap();
        }
    }
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::write(root.join("etc/hosts"), "127.0.0.1 localhost\n").unwrap();
}

const CAMPAIGN: &str = "kind: Decoy
name: pacs
selector: {site: nowhere}
address: 10.20.0.5
services: [{protocol: ssh, port: 22}, {protocol: smb, port: 445}, {protocol: https, port: 443}]
---
kind: Campaign
name: wide
selector: {role: ws}
lures:
  - {template: ssh-key, decoy: pacs}
  - {template: aws-credentials}
  - {template: smb-credentials, decoy: pacs}
  - {template: pgpass}
  - {template: netrc}
  - {template: kubeconfig}
  - {template: env-file, path: '~/projects/ehr-integration/.env'}
  - {template: pacs-config, decoy: pacs}
  - {template: hosts-entry, decoy: pacs}
  - {template: patient-csv, path: '~/Documents/exports'}
  - {template: hl7-adt, path: '~/Documents/interfaces'}
  - {template: passwords-xlsx, path: '~/Documents'}
";

fn agent(dir: &Path, tc: &TestController, token: &Path, root: &Path, run: usize) -> Proc {
    spawn(
        "ruse-agent",
        &[
            "run",
            "--controller",
            &tc.url().to_string(),
            "--ca-pin",
            &tc.pin.to_string(),
            "--token-file",
            &token.display().to_string(),
            "--state-dir",
            &dir.join("state").display().to_string(),
            "--root",
            &root.display().to_string(),
        ],
        &dir.join(format!("agent-{run}.log")),
    )
}

/// Kills the agent once the files under `root` have changed in `changes`
/// places from `from` (or once they stop changing: the update finished
/// before the kill could land). Returns what the disk held at the kill.
async fn kill_after(
    agent: &mut Proc,
    root: &Path,
    from: &BTreeMap<PathBuf, (Vec<u8>, u32)>,
    changes: usize,
) -> BTreeMap<PathBuf, (Vec<u8>, u32)> {
    let start = Instant::now();
    loop {
        let now = snapshot(root);
        let changed = now.iter().filter(|(p, v)| from.get(*p) != Some(*v)).count()
            + from.keys().filter(|p| !now.contains_key(*p)).count();
        if changed >= changes || start.elapsed() > Duration::from_secs(20) {
            agent.kill9();
            let at_kill = snapshot(root);
            eprintln!(
                "killed after {:?} with {changed} paths changed, {} temporary files",
                start.elapsed(),
                at_kill.keys().filter(|p| is_temp(p)).count()
            );
            return at_kill;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Every file at the kill is as it was before the update or as it is once
/// the update is complete: never in between. Temporary files may be there
/// at the kill; none may outlive the restart.
fn assert_old_or_new(
    what: &str,
    old: &BTreeMap<PathBuf, (Vec<u8>, u32)>,
    at_kill: &BTreeMap<PathBuf, (Vec<u8>, u32)>,
    new: &BTreeMap<PathBuf, (Vec<u8>, u32)>,
) {
    let mut half = Vec::new();
    for (path, (bytes, _)) in at_kill {
        if is_temp(path) || bytes.is_empty() && old.get(path).is_none_or(|o| o.0.is_empty()) {
            continue;
        }
        let was = old.get(path).map(|v| &v.0);
        let will = new.get(path).map(|v| &v.0);
        if was != Some(bytes) && will != Some(bytes) {
            half.push(format!(
                "{}: {} bytes, before {:?}, after {:?}",
                path.display(),
                bytes.len(),
                was.map(Vec::len),
                will.map(Vec::len)
            ));
        }
    }
    assert!(
        half.is_empty(),
        "{what}: half-written files:\n{}",
        half.join("\n")
    );
    let temps: Vec<_> = new.keys().filter(|p| is_temp(p)).collect();
    assert!(temps.is_empty(), "{what}: temporary files left: {temps:?}");
}

async fn registry(tc: &TestController, agent: &str) -> Vec<pb::Lure> {
    tc.lures(agent, false).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_while_planting_or_removing_leaves_the_old_or_the_new_state() {
    let tc = TestController::start().await;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    endpoint(&root);
    let token = dir.path().join("token");
    std::fs::write(
        &token,
        tc.token("role=ws", 1, Duration::from_secs(600)).await,
    )
    .unwrap();
    let mut run = 0;
    let mut proc = agent(dir.path(), &tc, &token, &root, run);
    eventually("the agent online", Duration::from_secs(20), || async {
        tc.agents()
            .await
            .iter()
            .any(|a| a.state == pb::AgentState::Online as i32)
    })
    .await;
    let id = tc.agents().await[0].id.clone();
    let before = snapshot(&root);

    // Planting: killed a quarter of the way, then again three quarters of
    // the way through what is left.
    tc.apply(CAMPAIGN).await;
    let mut kills = Vec::new();
    for changes in [HOMES * 3, HOMES * 9] {
        kills.push(kill_after(&mut proc, &root, &before, changes).await);
        run += 1;
        proc = agent(dir.path(), &tc, &token, &root, run);
    }
    tc.wait_rollout("wide", "completed", Duration::from_secs(60))
        .await;
    let planted = snapshot(&root);
    for (i, at_kill) in kills.iter().enumerate() {
        assert_old_or_new(&format!("planting, kill {i}"), &before, at_kill, &planted);
    }
    let lures = registry(&tc, &id).await;
    assert_eq!(lures.len(), 12, "{lures:#?}");
    assert!(lures.iter().all(|l| l.state == "applied"), "{lures:#?}");
    // What the registry names is on the disk: every user name, key id and
    // AE title a decoy would match on is in some file (key fingerprints
    // are not written out; the spreadsheet is compressed).
    let disk: Vec<u8> = planted.values().flat_map(|v| v.0.clone()).collect();
    let disk = String::from_utf8_lossy(&disk);
    for lure in lures.iter().filter(|l| l.template != "passwords-xlsx") {
        for (kind, value) in lure
            .identifiers
            .split(' ')
            .filter_map(|w| w.split_once('='))
        {
            if kind != "key" {
                assert!(
                    disk.contains(value),
                    "{}: {value} not on disk",
                    lure.template
                );
            }
        }
    }

    // Removing: killed midway, restarted, and the endpoint is as before.
    tc.root()
        .await
        .delete_campaign(pb::DeleteCampaignRequest {
            name: "wide".into(),
        })
        .await
        .unwrap();
    let at_kill = kill_after(&mut proc, &root, &planted, HOMES * 5).await;
    run += 1;
    let _proc = agent(dir.path(), &tc, &token, &root, run);
    let start = Instant::now();
    while snapshot(&root) != before && start.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let after = snapshot(&root);
    let differ: Vec<String> = after
        .iter()
        .filter(|(p, v)| before.get(*p) != Some(*v))
        .map(|(p, v)| {
            format!(
                "{}: now {:?}, before {:?}",
                p.display(),
                String::from_utf8_lossy(&v.0),
                before
                    .get(p)
                    .map(|b| String::from_utf8_lossy(&b.0).into_owned())
            )
        })
        .chain(
            before
                .keys()
                .filter(|p| !after.contains_key(*p))
                .map(|p| format!("{}: gone", p.display())),
        )
        .collect();
    assert!(
        differ.is_empty(),
        "the endpoint is not back as it was:\n{}",
        differ.join("\n")
    );
    assert_old_or_new("removing", &planted, &at_kill, &before);
    assert!(registry(&tc, &id).await.is_empty());
}

/// A tmpfs of `size` mounted at a new directory, unmounted when dropped.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> SmallDisk {
        let dir = tempfile::tempdir().unwrap();
        let out = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mount: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        SmallDisk { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Fills what is left with one file; returns it.
    fn fill(&self) -> PathBuf {
        use std::io::Write;
        let filler = self.path().join("filler");
        let mut f = std::fs::File::create(&filler).unwrap();
        let block = vec![0u8; 64 << 10];
        while f.write_all(&block).is_ok() {}
        // Whatever a 64 KiB write could not take.
        while f.write_all(&block[..512]).is_ok() {}
        let _ = f.sync_all();
        filler
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Copies a directory tree, keeping modes (the CA key stays 0600).
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    std::fs::set_permissions(to, std::fs::metadata(from).unwrap().permissions()).unwrap();
    for entry in std::fs::read_dir(from).unwrap().flatten() {
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_under_the_controller_refuses_clearly_and_loses_nothing() {
    let test = "a_full_disk_under_the_controller_refuses_clearly_and_loses_nothing";
    if !(require_root(test) && require_tool(test, "mount")) {
        return;
    }
    let disk = SmallDisk::mount("48m");
    let data = disk.path().join("data");
    let mut tc = TestController::start_with(|c| {
        copy_tree(&c.data_dir, &data);
        c.data_dir = data.clone();
        c.disk_reserve_mb = 8;
    })
    .await;
    let token = tc.token("site=icu", 1, Duration::from_secs(600)).await;
    let mut agent = tc.spawn_agent(tc.agent_config("ward", &token, ""));
    let id = agent.connected().await;
    let lure = exports_lure(&tc, &mut agent, &id).await;
    let filter = touches_of(&id);

    let filler = disk.fill();
    let mut sent = std::collections::HashSet::new();
    for batch in 0..5 {
        let events: Vec<_> = (0..200)
            .map(|n| TestAgent::touch_event(&lure, batch * 200 + n))
            .collect();
        sent.extend(events.iter().map(|e| e.id.clone()));
        agent.events.record(events).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // An admin change cannot be stored: refused with the reason.
    let refused = tc
        .root()
        .await
        .apply(pb::ApplyRequest {
            source: "test".into(),
            content: "kind: Campaign\nname: more\nselector: {site: icu}\nlures:\n  - {template: pgpass}\n".into(),
            dry_run: false,
        })
        .await;
    let status = refused.expect_err("an apply on a full disk is refused");
    assert!(
        status.message().contains("space"),
        "{:?}: {}",
        status.code(),
        status.message()
    );
    // The controller still answers, and the events wait in the outbox.
    tc.assert_serving().await;
    let stored_while_full = tc.events(filter.clone()).await.len();
    assert!(
        agent.events.depth() > 0,
        "the agent keeps what was not stored"
    );

    // Space comes back: everything arrives, once.
    std::fs::remove_file(&filler).unwrap();
    eventually("the outbox drained", Duration::from_secs(60), || async {
        agent.events.depth() == 0
    })
    .await;
    let stored = tc.events(filter.clone()).await;
    let ids: std::collections::HashSet<_> = stored.iter().map(|e| e.id.clone()).collect();
    assert_eq!(stored.len(), 1000, "exactly once");
    assert_eq!(ids, sent);
    eprintln!(
        "disk full: {stored_while_full} of 1000 events stored while full, all 1000 once space returned"
    );
    // And the store is whole after a restart.
    tc.apply("kind: Campaign\nname: more\nselector: {site: icu}\nlures:\n  - {template: pgpass}\n")
        .await;
    tc.restart().await;
    assert_eq!(tc.events(filter).await.len(), 1000);
    assert_eq!(tc.lures(&id, false).await.len(), 2);
    agent.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_under_the_agent_delays_and_loses_no_event() {
    let test = "a_full_disk_under_the_agent_delays_and_loses_no_event";
    if !(require_root(test) && require_tool(test, "mount")) {
        return;
    }
    let tc = TestController::start().await;
    let disk = SmallDisk::mount("16m");
    let token = tc.token("site=icu", 1, Duration::from_secs(600)).await;
    let mut config = tc.agent_config("ward", &token, "");
    config.state_dir = disk.path().join("state");
    let mut agent = tc.spawn_agent(config.clone());
    let id = agent.connected().await;
    let lure = exports_lure(&tc, &mut agent, &id).await;
    let filter = touches_of(&id);

    let filler = disk.fill();
    let mut sent = std::collections::HashSet::new();
    let events: Vec<_> = (0..300).map(|n| TestAgent::touch_event(&lure, n)).collect();
    sent.extend(events.iter().map(|e| e.id.clone()));
    agent.events.record(events).await.unwrap();
    // Sent from memory while the disk is full: the alert is not delayed.
    eventually(
        "300 events stored while the agent's disk is full",
        Duration::from_secs(20),
        || async { tc.events(filter.clone()).await.len() == 300 },
    )
    .await;

    std::fs::remove_file(&filler).unwrap();
    let events: Vec<_> = (300..400)
        .map(|n| TestAgent::touch_event(&lure, n))
        .collect();
    sent.extend(events.iter().map(|e| e.id.clone()));
    agent.events.record(events).await.unwrap();
    eventually("the outbox drained", Duration::from_secs(20), || async {
        agent.events.depth() == 0
    })
    .await;
    agent.stop().await.unwrap();

    // A restart sends nothing twice and finds an outbox it can read.
    let mut agent = tc.spawn_agent(config);
    agent.connected().await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let stored = tc.events(filter).await;
    let ids: std::collections::HashSet<_> = stored.iter().map(|e| e.id.clone()).collect();
    assert_eq!(stored.len(), 400, "exactly once");
    assert_eq!(ids, sent);
    assert_eq!(agent.events.depth(), 0);
    agent.stop().await.unwrap();
}

/// `ruse-agent ARGS` with its clock moved by `offset` (libfaketime, as
/// `faketime -f +800d`); monotonic time is left alone.
fn skewed_agent(offset: &str, args: &[&str]) -> std::process::Command {
    let mut cmd = std::process::Command::new("faketime");
    cmd.env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
        .args(["-f", offset])
        .arg(ruse_e2e::process::binary("ruse-agent"))
        .args(args);
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clock_years_off_is_named_on_both_sides_and_the_agent_keeps_trying() {
    let test = "a_clock_years_off_is_named_on_both_sides_and_the_agent_keeps_trying";
    if !require_tool(test, "faketime") {
        return;
    }
    let tc = TestController::start_process().await;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir_all(root.join("home/u")).unwrap();
    let token = dir.path().join("token");
    std::fs::write(
        &token,
        tc.token("site=icu", 2, Duration::from_secs(600)).await,
    )
    .unwrap();
    let (url, pin) = (tc.url().to_string(), tc.pin.to_string());
    let args = |state: &Path| -> Vec<String> {
        vec![
            "--controller".into(),
            url.clone(),
            "--ca-pin".into(),
            pin.clone(),
            "--token-file".into(),
            token.display().to_string(),
            "--state-dir".into(),
            state.display().to_string(),
            "--root".into(),
            root.display().to_string(),
        ]
    };

    // Enrolling with a clock two years ahead, or behind: refused, and the
    // message says why (it used to blame the CA pin).
    for (offset, says) in [
        ("+800d", "this host's clock is ahead"),
        ("-800d", "this host's clock is probably behind"),
    ] {
        let state = dir.path().join(format!("state{offset}"));
        let mut a = vec!["enroll".to_owned()];
        a.extend(args(&state));
        let out = skewed_agent(offset, &a.iter().map(String::as_str).collect::<Vec<_>>())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(stderr.contains(says), "{offset}: {stderr}");
        assert!(!stderr.contains("--ca-pin"), "{offset}: {stderr}");
    }

    // An enrolled agent whose clock then jumps ahead keeps running and
    // says so, and so does the controller.
    let state = dir.path().join("state");
    let mut a = vec!["enroll".to_owned()];
    a.extend(args(&state));
    let out = std::process::Command::new(ruse_e2e::process::binary("ruse-agent"))
        .args(&a)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut r = vec!["run".to_owned()];
    r.extend(args(&state));
    let log = dir.path().join("skewed-run.log");
    let mut run = skewed_agent("+800d", &r.iter().map(String::as_str).collect::<Vec<_>>())
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(dir.path().join("skewed-run.err")).unwrap())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let named = loop {
        let agent_says = std::fs::read_to_string(&log).unwrap_or_default()
            + &std::fs::read_to_string(dir.path().join("skewed-run.err")).unwrap_or_default();
        let controller_says = tc.log_text();
        if agent_says.contains("the clocks of this host and the controller disagree")
            && controller_says
                .contains("refused this controller's certificate as expired or not yet valid")
        {
            break true;
        }
        if start.elapsed() > Duration::from_secs(20) {
            eprintln!("agent:\n{agent_says}\ncontroller:\n{controller_says}");
            break false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(named, "both sides name the clock");
    assert!(
        run.try_wait().unwrap().is_none(),
        "the agent kept running (a clock put right lets it reconnect)"
    );
    let _ = run.kill();
    let _ = run.wait();
}

/// One patient-export lure for every agent labelled site=icu.
const EXPORTS: &str = "kind: Campaign\nname: exports\nselector: {site: icu}\nlures:\n  - {template: patient-csv, path: '~/Documents/Exports'}\n";

/// Plants [`EXPORTS`] on `agent` (agent `id`) and returns its lure's id.
async fn exports_lure(tc: &TestController, agent: &mut TestAgent, id: &str) -> String {
    tc.apply(EXPORTS).await;
    agent.wait_lures(1, Duration::from_secs(10)).await;
    tc.lures(id, false).await[0].id.clone()
}

/// The touch events of agent `id`.
fn touches_of(id: &str) -> pb::EventFilter {
    pb::EventFilter {
        agent_id: id.to_owned(),
        kind: "touch".into(),
        ..Default::default()
    }
}

/// What the link between the agents and the controller does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    Up,
    /// Nothing passes; bytes in flight wait (as TCP retransmits them) and
    /// new connections get no answer.
    Partitioned,
    /// 300 ms per chunk, 32 KiB/s each way per connection.
    Slow,
    /// Every connection is cut (RST) after 0.2–2 s.
    Flaky,
}

/// A TCP proxy between agents and the controller that can fail.
struct FaultyLink {
    addr: std::net::SocketAddr,
    mode: tokio::sync::watch::Sender<Link>,
    /// When each connection was accepted.
    accepted: std::sync::Arc<std::sync::Mutex<Vec<Instant>>>,
}

impl FaultyLink {
    async fn start(upstream: std::net::SocketAddr) -> FaultyLink {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (mode, rx) = tokio::sync::watch::channel(Link::Up);
        let accepted = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = accepted.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                log.lock().unwrap().push(Instant::now());
                tokio::spawn(Self::carry(client, upstream, rx.clone()));
            }
        });
        FaultyLink {
            addr,
            mode,
            accepted,
        }
    }

    fn set(&self, link: Link) {
        self.mode.send_replace(link);
    }

    fn accepted_between(&self, from: Instant, to: Instant) -> usize {
        self.accepted
            .lock()
            .unwrap()
            .iter()
            .filter(|t| **t >= from && **t < to)
            .count()
    }

    async fn carry(
        client: tokio::net::TcpStream,
        upstream: std::net::SocketAddr,
        mut mode: tokio::sync::watch::Receiver<Link>,
    ) {
        // A partition answers no new connection until it heals.
        let _ = mode.wait_for(|m| *m != Link::Partitioned).await;
        let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
            return;
        };
        let lifetime = {
            let mut b = [0u8; 2];
            ruse_proto::types::random_bytes(&mut b);
            Duration::from_millis(200 + u64::from(u16::from_le_bytes(b)) % 1800)
        };
        let (cr, cw) = client.into_split();
        let (sr, sw) = server.into_split();
        let born = Instant::now();
        let mut watch = mode.clone();
        tokio::select! {
            () = Self::pump(cr, sw, mode.clone()) => {}
            () = Self::pump(sr, cw, mode.clone()) => {}
            // Flaky: cut at the connection's lifetime.
            () = async {
                loop {
                    if *watch.borrow_and_update() == Link::Flaky {
                        let left = lifetime.saturating_sub(born.elapsed());
                        tokio::time::sleep(left).await;
                        if *watch.borrow() == Link::Flaky {
                            return;
                        }
                    } else if watch.changed().await.is_err() {
                        std::future::pending::<()>().await;
                    }
                }
            } => {}
        }
    }

    async fn pump(
        mut from: tokio::net::tcp::OwnedReadHalf,
        mut to: tokio::net::tcp::OwnedWriteHalf,
        mut mode: tokio::sync::watch::Receiver<Link>,
    ) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut buf = vec![0u8; 16 << 10];
        loop {
            if mode.wait_for(|m| *m != Link::Partitioned).await.is_err() {
                return;
            }
            let slow = *mode.borrow() == Link::Slow;
            let cap = if slow { 4 << 10 } else { buf.len() };
            let n = match from.read(&mut buf[..cap]).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            // Bytes read as the partition began wait for it to end.
            if mode.wait_for(|m| *m != Link::Partitioned).await.is_err() {
                return;
            }
            if *mode.borrow() == Link::Slow {
                // 300 ms latency, then 32 KiB/s.
                tokio::time::sleep(
                    Duration::from_millis(300) + Duration::from_micros(n as u64 * 30),
                )
                .await;
            }
            if to.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_slow_and_flaky_links_lose_and_duplicate_nothing() {
    const AGENTS: usize = 12;
    const PARTITION: Duration = Duration::from_secs(90);
    let tc = TestController::start().await;
    let link = FaultyLink::start(tc.config.listen).await;
    let token = tc
        .token("site=icu", AGENTS as u32, Duration::from_secs(600))
        .await;
    let mut agents = Vec::new();
    for i in 0..AGENTS {
        let mut config = tc.agent_config(&format!("ward{i}"), &token, "");
        config.controller = ruse_proto::transport::ControllerUrl::from_addr(link.addr);
        // The production keepalive (a dead link is noticed within 80 s)
        // and a shorter ceiling on the backoff than production's 60 s.
        config.dial = Default::default();
        config.min_backoff = Duration::from_millis(500);
        config.max_backoff = Duration::from_secs(10);
        agents.push(tc.spawn_agent(config));
    }
    let mut ids = Vec::new();
    for a in &mut agents {
        ids.push(a.connected().await);
    }
    tc.apply(EXPORTS).await;
    for a in &mut agents {
        a.wait_lures(1, Duration::from_secs(20)).await;
    }
    let mut lures = Vec::new();
    for id in &ids {
        lures.push(tc.lures(id, false).await[0].id.clone());
    }
    let mut sent: Vec<std::collections::HashSet<String>> = vec![Default::default(); AGENTS];
    let mut n = 0;
    let mut record = |agents: &[TestAgent], count: usize| {
        let mut batches = Vec::new();
        for (i, lure) in lures.iter().enumerate() {
            let events: Vec<_> = (0..count)
                .map(|_| {
                    n += 1;
                    TestAgent::touch_event(lure, n)
                })
                .collect();
            sent[i].extend(events.iter().map(|e| e.id.clone()));
            batches.push((i, events));
        }
        let sinks: Vec<_> = agents.iter().map(|a| a.events.clone()).collect();
        async move {
            for (i, events) in batches {
                sinks[i].record(events).await.unwrap();
            }
        }
    };

    // A partition of a minute and a half: events wait in the outboxes, a
    // campaign changed meanwhile reaches every agent afterwards.
    let cut = Instant::now();
    link.set(Link::Partitioned);
    tokio::time::sleep(Duration::from_secs(5)).await;
    record(&agents, 50).await;
    tc.apply(
        "kind: Campaign\nname: exports\nselector: {site: icu}\nlures:\n  - {template: patient-csv, path: '~/Documents/Exports'}\n  - {template: pgpass}\n",
    )
    .await;
    tokio::time::sleep(PARTITION.saturating_sub(cut.elapsed())).await;
    let healed = Instant::now();
    let tries = link.accepted_between(cut, healed);
    link.set(Link::Up);
    let mut back = Vec::new();
    for a in &mut agents {
        a.wait_lures(2, Duration::from_secs(60)).await;
        back.push(healed.elapsed());
    }
    eventually("the outboxes drained", Duration::from_secs(60), || async {
        agents.iter().all(|a| a.events.depth() == 0)
    })
    .await;
    back.sort();
    eprintln!(
        "partition of {PARTITION:?}: {tries} connection attempts from {AGENTS} agents during it; all back with the new campaign {:?} after the heal (first {:?})",
        back[AGENTS - 1],
        back[0]
    );
    // No hammering: backoff with jitter bounds the attempts.
    assert!(
        tries <= AGENTS * 15,
        "{tries} connection attempts in {PARTITION:?}"
    );
    // Back soon after the heal: a wait never exceeds the backoff ceiling
    // plus one connect timeout. (Reconnection herds are the reconnect
    // storm benchmark's subject: 10,000 agents at once.)
    assert!(
        back[AGENTS - 1] <= Duration::from_secs(25),
        "back {back:?} after the heal"
    );

    // A slow link, then a flaky one, each with events flowing.
    for (mode, events) in [(Link::Slow, 100), (Link::Flaky, 100)] {
        link.set(mode);
        record(&agents, events).await;
        tokio::time::sleep(Duration::from_secs(15)).await;
        let accepted = link.accepted_between(healed, Instant::now());
        link.set(Link::Up);
        let up = Instant::now();
        eventually(
            &format!("the outboxes drained after {mode:?}"),
            Duration::from_secs(60),
            || async { agents.iter().all(|a| a.events.depth() == 0) },
        )
        .await;
        eprintln!(
            "{mode:?} link for 15 s: {accepted} connections so far after the partition; outboxes empty {:?} after it ended",
            up.elapsed()
        );
    }

    // Every event once, none lost.
    for (i, id) in ids.iter().enumerate() {
        let stored = tc.events(touches_of(id)).await;
        let got: std::collections::HashSet<_> = stored.iter().map(|e| e.id.clone()).collect();
        assert_eq!(
            stored.len(),
            sent[i].len(),
            "agent {i}: duplicates or losses"
        );
        assert_eq!(got, sent[i], "agent {i}");
    }
    for a in agents {
        a.stop().await.unwrap();
    }
}

//! Faults nobody plans for: an agent killed in the middle of planting or
//! removing a campaign, a full disk under the controller's store. Each
//! test injects the fault into real processes (or a real filesystem) and
//! checks what a user would: what is on the endpoint's disk, what the
//! controller's registry says, that nothing is lost or duplicated.

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
    tc.apply(
        "kind: Campaign\nname: exports\nselector: {site: icu}\nlures:\n  - {template: patient-csv, path: '~/Documents/Exports'}\n",
    )
    .await;
    agent.wait_lures(1, Duration::from_secs(10)).await;
    let lure = tc.lures(&id, false).await[0].id.clone();
    let filter = pb::EventFilter {
        agent_id: id.clone(),
        kind: "touch".into(),
        ..Default::default()
    };

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
    tc.apply(
        "kind: Campaign\nname: exports\nselector: {site: icu}\nlures:\n  - {template: patient-csv, path: '~/Documents/Exports'}\n",
    )
    .await;
    agent.wait_lures(1, Duration::from_secs(10)).await;
    let lure = tc.lures(&id, false).await[0].id.clone();
    let filter = pb::EventFilter {
        agent_id: id.clone(),
        kind: "touch".into(),
        ..Default::default()
    };

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

//! Campaigns reach agents in waves; lures are unique, rotated, removed on
//! relabel, never re-pushed without change, and never damage real files.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use ruse_e2e::{TestAgent, TestController, consistently, eventually, pb};
use ruse_proto::types::AgentId;

const DECOY: &str = r#"
kind: Decoy
name: pacs-archive02
selector: {role: decoy}
address: 10.20.0.15
services: [{protocol: ssh, port: 22}, {protocol: dicom, port: 104}, {protocol: https, port: 443}]
"#;

/// Starts `n` agents enrolled with `labels`, all connected.
async fn fleet(tc: &TestController, n: usize, labels: &str) -> Vec<(String, TestAgent)> {
    let token = tc
        .token(labels, u32::try_from(n).unwrap(), Duration::from_secs(600))
        .await;
    let mut agents = Vec::new();
    for i in 0..n {
        let mut agent = tc.spawn_agent(tc.agent_config(&format!("a{i}"), &token, ""));
        let id = agent.connected().await;
        agents.push((id, agent));
    }
    agents
}

fn sha(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    ruse_proto::types::hex(ring::digest::digest(&ring::digest::SHA256, &bytes).as_ref())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_wave_rollout_pauses_on_failures_and_completes_after_resume() {
    let tc = TestController::start().await;
    let mut agents = fleet(&tc, 20, "site=icu").await;
    let ids: Vec<AgentId> = agents.iter().map(|(id, _)| id.parse().unwrap()).collect();
    let order: Vec<String> = ruse_controller::deploy::rollout_order("icu-workstations", &ids)
        .into_iter()
        .map(ToString::to_string)
        .collect();
    // Waves of 10%, 50%, 100% of 20 agents: ranks 0-1, 2-9, 10-19. Three
    // agents of the second wave hold a real passwords.xlsx, which a lure
    // must never replace.
    let failing: Vec<&String> = order[2..5].iter().collect();
    for (id, agent) in &agents {
        if failing.contains(&id) {
            let docs = agent.home().join("Documents");
            std::fs::create_dir_all(&docs).unwrap();
            std::fs::write(docs.join("passwords.xlsx"), b"the real one").unwrap();
        }
    }
    let results = tc
        .apply(&format!(
            "{DECOY}---\nkind: Campaign\nname: icu-workstations\nselector: {{site: icu}}\nlures:\n  - {{template: ssh-key, decoy: pacs-archive02}}\n  - {{template: patient-csv}}\n  - {{template: passwords-xlsx, decoy: pacs-archive02}}\nrollout: {{waves: [\"10%\", \"50%\", \"100%\"], max_failure_ratio: 0.2}}\n"
        ))
        .await;
    assert_eq!(results.len(), 2);
    assert!(results.iter().all(|r| r.action == "created"));

    let paused = tc
        .wait_rollout("icu-workstations", "paused", Duration::from_secs(30))
        .await;
    assert_eq!(paused.wave, 2, "paused in the second wave: {paused:?}");
    assert_eq!(
        (paused.wave_status[0].agents, paused.wave_status[0].acked),
        (2, 2)
    );
    assert_eq!(paused.wave_status[1].agents, 8);
    // It pauses once failures must exceed 20% of 8 (2 already do); the
    // status keeps counting while paused.
    assert!(paused.wave_status[1].failed >= 2, "{paused:?}");
    assert!(
        paused.rollout_reason.starts_with("wave 2 (50%): "),
        "{}",
        paused.rollout_reason
    );
    assert!(
        paused.rollout_reason.contains("already exists"),
        "{}",
        paused.rollout_reason
    );
    eventually(
        "all of wave 2 answered",
        Duration::from_secs(10),
        || async {
            let w = &tc.campaign("icu-workstations").await.wave_status[1];
            (w.failed, w.acked) == (3, 5)
        },
    )
    .await;
    assert_eq!(
        tc.campaign("icu-workstations").await.rollout_state,
        "paused"
    );
    // The third wave got nothing.
    for (id, agent) in &agents {
        if order[10..].contains(id) {
            assert_eq!(
                agent.status.borrow().lures,
                0,
                "{id} is in the unreleased wave"
            );
        }
    }
    // The real files are untouched.
    for (id, agent) in &agents {
        if failing.contains(&id) {
            assert_eq!(
                std::fs::read(agent.home().join("Documents/passwords.xlsx")).unwrap(),
                b"the real one"
            );
        }
    }

    tc.root()
        .await
        .rollout(pb::RolloutRequest {
            campaign: "icu-workstations".into(),
            action: pb::RolloutAction::Resume.into(),
        })
        .await
        .unwrap();
    let done = tc
        .wait_rollout("icu-workstations", "completed", Duration::from_secs(30))
        .await;
    assert_eq!(done.wave_status[2].acked, 10, "{done:?}");
    for (id, agent) in &mut agents {
        let expected = if failing.contains(&&*id) { 2 } else { 3 };
        agent.wait_lures(expected, Duration::from_secs(10)).await;
    }
    // Every instance is unique: 20 different SSH keys and user names.
    let mut fingerprints = std::collections::HashSet::new();
    for (id, agent) in &agents {
        let key = std::fs::read_dir(agent.home().join(".ssh"))
            .unwrap()
            .flatten()
            .find(|e| e.file_name().to_string_lossy().ends_with(".pub"))
            .unwrap_or_else(|| panic!("{id} has no planted key"));
        fingerprints.insert(std::fs::read_to_string(key.path()).unwrap());
    }
    assert_eq!(fingerprints.len(), 20);
    let lures = tc.lures("", false).await;
    assert_eq!(lures.len(), 60, "3 lures x 20 agents in the registry");
    assert_eq!(lures.iter().filter(|l| l.state == "failed").count(), 3);
    for (_, agent) in agents {
        agent.stop().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relabelling_an_agent_adds_and_removes_its_lures() {
    let tc = TestController::start().await;
    let mut agents = fleet(&tc, 2, "site=er").await;
    tc.apply(&format!(
        "{DECOY}---\nkind: Campaign\nname: pacs-readers\nselector: {{role: pacs-reader}}\nlures:\n  - {{template: pacs-config, decoy: pacs-archive02}}\n  - {{template: hl7-adt}}\n"
    ))
    .await;
    tc.wait_rollout("pacs-readers", "completed", Duration::from_secs(10))
        .await;
    let (a_id, a) = &mut agents[0];
    assert_eq!(a.status.borrow().lures, 0);

    let label = |set: &[(&str, &str)], remove: &[&str]| pb::LabelAgentRequest {
        id: a_id.clone(),
        set: set
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        remove: remove.iter().map(|s| s.to_string()).collect(),
    };
    let labelled = tc
        .root()
        .await
        .label_agent(label(&[("role", "pacs-reader")], &[]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        labelled.labels.get("role").map(String::as_str),
        Some("pacs-reader")
    );
    a.wait_lures(2, Duration::from_secs(10)).await;
    let nodes = a.home().join(".config/pacs-viewer/nodes.ini");
    assert!(
        std::fs::read_to_string(&nodes)
            .unwrap()
            .contains("Host=10.20.0.15")
    );

    tc.root()
        .await
        .label_agent(label(&[], &["role"]))
        .await
        .unwrap();
    a.wait_lures(0, Duration::from_secs(10)).await;
    assert!(!nodes.exists(), "the lure is removed from disk");
    assert!(
        !a.home().join(".config").exists(),
        "directories the lure created are gone"
    );
    // The other agent was never touched.
    assert_eq!(agents[1].1.status.borrow().updates, 0);
    // The registry remembers the retired instances.
    let all = tc.lures(&agents[0].0, true).await;
    assert_eq!(all.len(), 2);
    assert!(all.iter().all(|l| l.state == "retired" && l.retired_ms > 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_replaces_material_and_old_instances_stay_attributable() {
    let tc = TestController::start().await;
    let mut agents = fleet(&tc, 2, "site=lab").await;
    tc.apply(&format!(
        "{DECOY}---\nkind: Campaign\nname: lab\nselector: {{site: lab}}\nlures:\n  - {{template: ssh-key, decoy: pacs-archive02}}\n  - {{template: aws-credentials}}\n"
    ))
    .await;
    tc.wait_rollout("lab", "completed", Duration::from_secs(10))
        .await;
    for (_, a) in &mut agents {
        a.wait_lures(2, Duration::from_secs(10)).await;
    }
    let (id, agent) = &agents[0];
    let before = tc.lures(id, false).await;
    let ssh_before = before
        .iter()
        .find(|l| l.template == "ssh-key")
        .unwrap()
        .clone();
    let creds = agent.home().join(".aws/credentials");
    let creds_before = std::fs::read_to_string(&creds).unwrap();

    let rotated = tc
        .root()
        .await
        .rotate(pb::RotateRequest {
            campaign: "lab".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rotated.epoch, 1);
    tc.wait_rollout("lab", "completed", Duration::from_secs(10))
        .await;
    eventually("new material on disk", Duration::from_secs(10), || async {
        std::fs::read_to_string(&creds).is_ok_and(|c| c != creds_before)
    })
    .await;
    let after = tc.lures(id, false).await;
    let ssh_after = after.iter().find(|l| l.template == "ssh-key").unwrap();
    assert_ne!(ssh_after.id, ssh_before.id);
    assert_ne!(
        ssh_after.identifiers, ssh_before.identifiers,
        "a new key and user"
    );
    assert_eq!(ssh_after.epoch, 1);
    // The retired instance is still in the registry, naming its agent.
    let all = tc.lures(id, true).await;
    let old = all
        .iter()
        .find(|l| l.id == ssh_before.id)
        .expect("old instance kept");
    assert_eq!(old.state, "retired");
    assert_eq!(old.agent_id, *id);
    assert_eq!(old.identifiers, ssh_before.identifiers);
    let key_line = std::fs::read_to_string(agent.home().join(".aws/credentials")).unwrap();
    assert_eq!(
        key_line.matches("aws_access_key_id").count(),
        1,
        "the old block was removed: {key_line}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_the_controller_or_an_agent_pushes_nothing_unchanged() {
    let mut tc = TestController::start().await;
    let mut agents = fleet(&tc, 3, "site=or").await;
    tc.apply(&format!(
        "{DECOY}---\nkind: Campaign\nname: or\nselector: {{site: or}}\nlures:\n  - {{template: ssh-key, decoy: pacs-archive02}}\n  - {{template: dicom-study}}\n  - {{template: fhir-bundle}}\n"
    ))
    .await;
    tc.wait_rollout("or", "completed", Duration::from_secs(10))
        .await;
    for (_, a) in &mut agents {
        a.wait_lures(3, Duration::from_secs(10)).await;
    }
    let updates_before: BTreeMap<String, u64> = agents
        .iter()
        .map(|(id, a)| (id.clone(), a.status.borrow().updates))
        .collect();
    assert!(updates_before.values().all(|&n| n >= 1));
    let key_file = |a: &TestAgent| a.home().join(".ssh/id_ed25519_pacs-archive02");
    let inode = |p: &Path| std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(p).unwrap());
    let inodes: Vec<u64> = agents.iter().map(|(_, a)| inode(&key_file(a))).collect();

    // Controller restart: agents reconnect and say Hello; nothing is pushed.
    let sessions: Vec<u64> = agents
        .iter()
        .map(|(_, a)| a.status.borrow().sessions)
        .collect();
    tc.restart().await;
    for ((_, a), before) in agents.iter_mut().zip(&sessions) {
        let before = *before;
        tokio::time::timeout(
            Duration::from_secs(10),
            a.status.wait_for(|s| s.sessions > before && s.connected),
        )
        .await
        .unwrap()
        .unwrap();
    }
    let c = tc
        .wait_rollout("or", "completed", Duration::from_secs(10))
        .await;
    eventually(
        "every agent acknowledged after the restart",
        Duration::from_secs(10),
        || async { tc.campaign("or").await.wave_status[0].acked == 3 },
    )
    .await;
    let _ = c;
    consistently(
        "no update after the controller restart",
        Duration::from_millis(1500),
        || async {
            agents.iter().all(|(id, a)| {
                a.status.borrow().updates == updates_before[id] && tc.updates_sent(id) == 0
            })
        },
    )
    .await;

    // Agent restart: it re-verifies what is planted instead of rewriting.
    let (id, agent) = agents.remove(0);
    let config = agent.config.clone();
    agent.stop().await.unwrap();
    let sent_before = tc.updates_sent(&id);
    let mut again = TestAgent::spawn(config);
    again.connected().await;
    again.wait_lures(3, Duration::from_secs(5)).await;
    consistently(
        "no update after the agent restart",
        Duration::from_millis(1500),
        || async { again.status.borrow().updates == 0 && tc.updates_sent(&id) == sent_before },
    )
    .await;
    assert_eq!(
        inode(&key_file(&again)),
        inodes[0],
        "the planted key was not rewritten"
    );
    for ((_, a), ino) in agents.iter().zip(&inodes[1..]) {
        assert_eq!(inode(&key_file(a)), *ino);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lures_beside_real_files_and_uninstall_leave_them_byte_identical() {
    let tc = TestController::start().await;
    let token = tc.token("site=icu", 1, Duration::from_secs(600)).await;
    let config = tc.agent_config("real", &token, "");
    let home = config.root.join("home/clinician");
    std::fs::create_dir_all(home.join(".aws")).unwrap();
    std::fs::create_dir_all(home.join(".ssh")).unwrap();
    let real_creds = home.join(".aws/credentials");
    let real_ssh = home.join(".ssh/config");
    let hosts = config.root.join("etc/hosts");
    std::fs::write(
        &real_creds,
        "[default]\naws_access_key_id = AKIAREALREALREAL0000\naws_secret_access_key = real\n",
    )
    .unwrap();
    std::fs::write(&real_ssh, "Host jump\n    HostName 10.0.0.1\n    User ops").unwrap();
    std::fs::write(
        &hosts,
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost\n",
    )
    .unwrap();
    let originals: Vec<(std::path::PathBuf, String)> = [&real_creds, &real_ssh, &hosts]
        .iter()
        .map(|p| (p.to_path_buf(), sha(p)))
        .collect();

    let mut agent = tc.spawn_agent(config.clone());
    agent.connected().await;
    tc.apply(&format!(
        "{DECOY}---\nkind: Campaign\nname: icu\nselector: {{site: icu}}\nlures:\n  - {{template: aws-credentials}}\n  - {{template: ssh-key, decoy: pacs-archive02}}\n  - {{template: hosts-entry, decoy: pacs-archive02}}\n  - {{template: pgpass}}\n"
    ))
    .await;
    agent.wait_lures(4, Duration::from_secs(10)).await;
    let creds = std::fs::read_to_string(&real_creds).unwrap();
    assert!(
        creds.starts_with("[default]\naws_access_key_id = AKIAREALREALREAL0000\n"),
        "{creds}"
    );
    assert_eq!(creds.matches("aws_access_key_id").count(), 2);
    let ssh = std::fs::read_to_string(&real_ssh).unwrap();
    assert!(
        ssh.starts_with("Host jump\n    HostName 10.0.0.1\n    User ops\n"),
        "{ssh}"
    );
    assert!(ssh.contains("Host pacs-archive02"));
    assert!(
        std::fs::read_to_string(&hosts)
            .unwrap()
            .contains("10.20.0.15\tpacs-archive02.hospital.local")
    );
    agent.stop().await.unwrap();

    // The real `ruse-agent uninstall`.
    let out = std::process::Command::new(ruse_e2e::process::binary("ruse-agent"))
        .args([
            "uninstall",
            "--state-dir",
            &config.state_dir.display().to_string(),
            "--root",
            &config.root.display().to_string(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("removed 4 of 4 lure(s)"));
    for (path, digest) in &originals {
        assert_eq!(
            &sha(path),
            digest,
            "{} must be byte-identical after uninstall",
            path.display()
        );
    }
    assert!(!home.join(".pgpass").exists());
    assert!(!home.join(".ssh/id_ed25519_pacs-archive02").exists());
    let left: Vec<_> = std::fs::read_dir(home.join(".ssh"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(left, vec![std::ffi::OsString::from("config")]);
}

/// Two campaigns planting the same whole file on one agent (the SSH key
/// for one decoy): the second used to fail with "a file already exists
/// there and is not a lure" about the first's lure. It names the campaign
/// that planted it now.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_another_campaign_planted_is_named_in_the_error() {
    let tc = TestController::start().await;
    let token = tc
        .token("role=workstation", 1, Duration::from_secs(600))
        .await;
    let mut agent = tc.spawn_agent(tc.agent_config("ws", &token, ""));
    agent.connected().await;
    let decoy = "kind: Decoy\nname: pacs\nselector: {role: decoy}\naddress: 127.0.0.1\nservices: [{protocol: ssh, port: 22}]\n";
    let campaign = |name: &str| {
        format!(
            "kind: Campaign\nname: {name}\nselector: {{role: workstation}}\nrollout: {{waves: [\"100%\"], max_failure_ratio: 0.5}}\nlures:\n  - {{template: ssh-key, decoy: pacs}}\n"
        )
    };
    tc.apply(&format!("{decoy}---\n{}", campaign("first")))
        .await;
    tc.wait_rollout("first", "completed", Duration::from_secs(10))
        .await;
    tc.apply(&campaign("second")).await;
    let paused = tc
        .wait_rollout("second", "paused", Duration::from_secs(10))
        .await;
    let errors = paused.wave_status[0].errors.join("; ");
    assert!(
        errors.contains("already planted there by lure") && errors.contains("of campaign first"),
        "{errors}"
    );
    agent.stop().await.unwrap();
}

/// Applying another Decoy under a live one's name silently reconfigured
/// it: its services stopped and planted SSH configs pointed elsewhere.
/// `apply` (and `--dry-run` before it) says what changes and which live
/// campaigns' lures follow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconfiguring_a_live_decoy_says_what_changes_and_whose_lures_follow() {
    use ruse_e2e::pb;
    let tc = TestController::start().await;
    let decoy = |address: &str, port: u16| {
        format!(
            "kind: Decoy\nname: pacs-archive02\nselector: {{role: decoy}}\naddress: {address}\nservices: [{{protocol: ssh, port: {port}}}]\n"
        )
    };
    tc.apply(&format!(
        "{}---\nkind: Campaign\nname: ward\nselector: {{role: workstation}}\nlures:\n  - {{template: ssh-key, decoy: pacs-archive02}}\n",
        decoy("127.0.0.1", 2222)
    ))
    .await;
    let results = tc
        .root()
        .await
        .apply(pb::ApplyRequest {
            source: "docs-example.yaml".into(),
            content: decoy("10.20.0.15", 22),
            dry_run: true,
        })
        .await
        .unwrap()
        .into_inner()
        .results;
    assert_eq!(results[0].action, "configured");
    let notes = results[0].notes.join("\n");
    assert!(
        notes.contains("address: 127.0.0.1 -> 10.20.0.15"),
        "{notes}"
    );
    assert!(notes.contains("services: ssh/2222 -> ssh/22"), "{notes}");
    assert!(notes.contains("campaign ward"), "{notes}");
    // A dry run changed nothing.
    let again = tc.apply(&decoy("127.0.0.1", 2222)).await;
    assert_eq!(again[0].action, "unchanged");
}

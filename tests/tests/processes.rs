//! The real binaries, as a user runs them: `ruse-controller init` and
//! `serve`, `rusectl`, `ruse-agent` processes; `kill -9` of the controller.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use ruse_e2e::eventually;
use ruse_e2e::process::{Proc, binary, rusectl, rusectl_json, spawn, spawn_controller};

fn init(data: &Path) -> String {
    let out = Command::new(binary("ruse-controller"))
        .args([
            "init",
            "--data-dir",
            &data.display().to_string(),
            "--trust-domain",
            "ruse.test",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "init failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let pin = text
        .split_whitespace()
        .find(|w| w.starts_with("sha256:"))
        .expect("init prints the CA pin")
        .to_owned();
    assert!(
        text.contains("rusectl.toml"),
        "init names the context file: {text}"
    );
    pin
}

fn context(data: &Path, url: &str) -> std::path::PathBuf {
    // init wrote https://127.0.0.1:7443; point it at the test port.
    let path = data.join("admin").join("rusectl.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replace("https://127.0.0.1:7443", url)).unwrap();
    path
}

fn agent(dir: &Path, name: &str, url: &str, pin: &str, token: &str, labels: &str) -> Proc {
    let state = dir.join(name);
    std::fs::create_dir_all(&state).unwrap();
    let token_file = state.join("token");
    std::fs::write(&token_file, token).unwrap();
    spawn(
        "ruse-agent",
        &[
            "run",
            "--controller",
            url,
            "--ca-pin",
            pin,
            "--token-file",
            &token_file.display().to_string(),
            "--state-dir",
            &state.join("state").display().to_string(),
            "--label",
            labels,
        ],
        &dir.join(format!("{name}.log")),
    )
}

fn agents(ctx: &Path) -> Vec<Value> {
    rusectl_json(ctx, &["get", "agents"])["items"]
        .as_array()
        .unwrap()
        .clone()
}

fn state(agents: &[Value], hostname_label: &str) -> Option<String> {
    agents
        .iter()
        .find(|a| a["labels"]["name"] == hostname_label)
        .map(|a| a["state"].as_str().unwrap().to_owned())
}

#[tokio::test]
async fn readme_flow_two_agents_online_then_one_revoked() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let pin = init(&data);
    let (mut controller, addr) =
        spawn_controller(&data, "127.0.0.1:0", &dir.path().join("controller.log"));
    let url = format!("https://{addr}");
    let ctx = context(&data, &url);

    let created = rusectl_json(
        &ctx,
        &[
            "token", "create", "--ttl", "1h", "--uses", "2", "--label", "site=icu",
        ],
    );
    let token = created["token"].as_str().unwrap().to_owned();
    assert_eq!(created["max_uses"], 2);
    assert_eq!(created["labels"]["site"], "icu");
    assert!(created["expires"].as_str().unwrap().ends_with('Z'));

    let _one = agent(
        dir.path(),
        "one",
        &url,
        &pin,
        &token,
        "name=one,role=workstation",
    );
    let mut two = agent(dir.path(), "two", &url, &pin, &token, "name=two,role=pacs");
    eventually(
        "both agents online in `rusectl get agents -o json`",
        Duration::from_secs(20),
        || async {
            let list = agents(&ctx);
            state(&list, "one").as_deref() == Some("online")
                && state(&list, "two").as_deref() == Some("online")
        },
    )
    .await;
    let list = agents(&ctx);
    let two_id = list.iter().find(|a| a["labels"]["name"] == "two").unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(list.iter().all(|a| a["labels"]["site"] == "icu"));

    // The table output a person reads.
    let table = rusectl(&ctx, &["get", "agents"]);
    let table = String::from_utf8(table.stdout).unwrap();
    assert!(table.starts_with("ID"), "{table}");
    assert_eq!(table.lines().count(), 3, "{table}");

    let out = rusectl(
        &ctx,
        &["revoke", "agent", &two_id, "--reason", "decommissioned"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Its process stops by itself with a clear message.
    let status = two
        .wait(Duration::from_secs(5))
        .expect("revoked agent kept running");
    assert!(!status.success());
    let log = two.log_text();
    assert!(log.contains("has been revoked"), "{log}");
    let list = agents(&ctx);
    assert_eq!(state(&list, "two").as_deref(), Some("revoked"));
    assert_eq!(state(&list, "one").as_deref(), Some("online"));

    let described = rusectl_json(&ctx, &["describe", "agent", &two_id]);
    assert_eq!(described["revoked"]["reason"], "decommissioned");
    assert_eq!(described["revoked"]["by"], "admin/admin");

    // SIGTERM: graceful, exit 0.
    let status = controller.terminate(Duration::from_secs(15));
    assert!(
        status.success(),
        "controller exit: {status:?}\n{}",
        controller.log_text()
    );
}

#[tokio::test]
async fn tokens_agents_revocations_and_audit_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let pin = init(&data);
    let log = dir.path().join("controller.log");
    let (mut controller, addr) = spawn_controller(&data, "127.0.0.1:0", &log);
    let url = format!("https://{addr}");
    let ctx = context(&data, &url);

    let token = rusectl_json(
        &ctx,
        &["token", "create", "--uses", "5", "--label", "site=er"],
    )["token"]
        .as_str()
        .unwrap()
        .to_owned();
    rusectl_json(&ctx, &["token", "create", "--uses", "1"]);
    let mut stays = agent(dir.path(), "stays", &url, &pin, &token, "name=stays");
    let mut goes = agent(dir.path(), "goes", &url, &pin, &token, "name=goes");
    eventually("two agents online", Duration::from_secs(20), || async {
        agents(&ctx)
            .iter()
            .filter(|a| a["state"] == "online")
            .count()
            == 2
    })
    .await;
    let goes_id = agents(&ctx)
        .iter()
        .find(|a| a["labels"]["name"] == "goes")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let out = rusectl(&ctx, &["revoke", "agent", &goes_id]);
    assert!(out.status.success());
    goes.wait(Duration::from_secs(5))
        .expect("revoked agent kept running");
    let audit_before = rusectl_json(&ctx, &["get", "audit"])["items"]
        .as_array()
        .unwrap()
        .len();

    controller.kill9();
    let (_controller, _) = spawn_controller(
        &data,
        &addr.to_string(),
        &dir.path().join("controller2.log"),
    );

    let tokens = rusectl_json(&ctx, &["get", "tokens"])["items"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(tokens.len(), 2);
    let used = tokens.iter().find(|t| t["max_uses"] == 5).unwrap();
    assert_eq!(used["uses"], 2, "token uses survive");
    assert_eq!(used["labels"]["site"], "er");
    let list = agents(&ctx);
    assert_eq!(list.len(), 2);
    assert_eq!(state(&list, "goes").as_deref(), Some("revoked"));
    // The surviving agent reconnects by itself with its saved identity.
    eventually(
        "agent reconnects after kill -9",
        Duration::from_secs(20),
        || async { state(&agents(&ctx), "stays").as_deref() == Some("online") },
    )
    .await;
    let audit_after = rusectl_json(&ctx, &["get", "audit"])["items"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(audit_after, audit_before, "the audit log survives");
    // The revoked agent is still refused after the restart.
    let mut again = agent(dir.path(), "goes", &url, &pin, &token, "name=goes");
    let status = again
        .wait(Duration::from_secs(10))
        .expect("revoked agent kept running after restart");
    assert!(!status.success());
    assert!(again.log_text().contains("revoked"));
    assert!(
        stays.wait(Duration::from_millis(10)).is_none(),
        "the other agent keeps running"
    );
}

//! The real binaries, as a user runs them: `ruse-controller init` and
//! `serve`, `rusectl`, `ruse-agent` processes; `kill -9` of the controller.
//!
//! Longer than our ~800 lines on purpose: one test binary per area: every
//! binary links the whole workspace, so splitting this one would add a link
//! step to every CI run; the tests share its process helpers.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use ruse_e2e::eventually;
use ruse_e2e::process::{Ctl, Proc, binary, init_controller, spawn, spawn_controller};

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

fn agents(ctl: &Ctl) -> Vec<Value> {
    ctl.json(&["get", "agents"])["items"]
        .as_array()
        .unwrap()
        .clone()
}

fn state(agents: &[Value], hostname_label: &str) -> Option<String> {
    agents
        .iter()
        .find(|a| a["reported_labels"]["name"] == hostname_label)
        .map(|a| a["state"].as_str().unwrap().to_owned())
}

#[tokio::test]
async fn readme_flow_two_agents_online_then_one_revoked() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let pin = init_controller(&data);
    let (mut controller, addr) =
        spawn_controller(&data, "127.0.0.1:0", &dir.path().join("controller.log"));
    let url = format!("https://{addr}");
    let ctx = Ctl::for_data_dir(&data, &url);

    let created = ctx.json(&[
        "token", "create", "--ttl", "1h", "--uses", "2", "--label", "site=icu",
    ]);
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
    let two_id = list
        .iter()
        .find(|a| a["reported_labels"]["name"] == "two")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(list.iter().all(|a| a["labels"]["site"] == "icu"));

    // `ruse-agent status` on the endpoint: what the running agent does,
    // from its status file (at most a second behind), without asking the
    // controller.
    let one_state = dir.path().join("one/state");
    let agent_status = || {
        Command::new(binary("ruse-agent"))
            .args(["status", "--json", "--state-dir"])
            .arg(&one_state)
            .output()
            .unwrap()
    };
    eventually(
        "`ruse-agent status` says connected",
        Duration::from_secs(5),
        || async { agent_status().status.success() },
    )
    .await;
    let status: Value = serde_json::from_slice(&agent_status().stdout).unwrap();
    assert_eq!(status["connected"], true, "{status}");
    assert_eq!(status["controller"], url.as_str(), "{status}");
    assert!(status["agent_id"].is_string(), "{status}");
    let out = Command::new(binary("ruse-agent"))
        .args(["status", "--state-dir"])
        .arg(dir.path().join("nowhere"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is the agent running"),
        "{out:?}"
    );

    // The table output a person reads.
    let table = ctx.run(&["get", "agents"]);
    let table = String::from_utf8(table.stdout).unwrap();
    assert!(table.starts_with("ID"), "{table}");
    assert_eq!(table.lines().count(), 3, "{table}");

    let out = ctx.run(&["revoke", "agent", &two_id, "--reason", "decommissioned"]);
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

    let described = ctx.json(&["describe", "agent", &two_id]);
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
    let pin = init_controller(&data);
    let log = dir.path().join("controller.log");
    let (mut controller, addr) = spawn_controller(&data, "127.0.0.1:0", &log);
    let url = format!("https://{addr}");
    let ctx = Ctl::for_data_dir(&data, &url);

    let token = ctx.json(&["token", "create", "--uses", "5", "--label", "site=er"])["token"]
        .as_str()
        .unwrap()
        .to_owned();
    ctx.json(&["token", "create", "--uses", "1"]);
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
        .find(|a| a["reported_labels"]["name"] == "goes")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let out = ctx.run(&["revoke", "agent", &goes_id]);
    assert!(out.status.success());
    goes.wait(Duration::from_secs(5))
        .expect("revoked agent kept running");
    let audit_before = ctx.json(&["get", "audit"])["items"]
        .as_array()
        .unwrap()
        .len();

    controller.kill9();
    let (_controller, _) = spawn_controller(
        &data,
        &addr.to_string(),
        &dir.path().join("controller2.log"),
    );

    let tokens = ctx.json(&["get", "tokens"])["items"]
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
    let audit_after = ctx.json(&["get", "audit"])["items"]
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

#[tokio::test]
async fn rusectl_issues_admins_whose_roles_hold_and_reports_errors_plainly() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    init_controller(&data);
    let (_controller, addr) =
        spawn_controller(&data, "127.0.0.1:0", &dir.path().join("controller.log"));
    let url = format!("https://{addr}");
    let root = Ctl::for_data_dir(&data, &url);

    // Without --controller the context's URL (port 7443, nothing there) is
    // used, and the failure says so.
    let unreachable = Ctl {
        controller: None,
        ..root.clone()
    };
    let out = unreachable.run(&["get", "agents"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot reach the controller at https://127.0.0.1:7443"),
        "{err}"
    );

    // Issue a viewer; the key is written 0600 next to a usable context.
    let vera_dir = dir.path().join("vera");
    let out = root.run(&[
        "admin",
        "issue",
        "vera",
        "--role",
        "viewer",
        "--out-dir",
        &vera_dir.display().to_string(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(vera_dir.join("vera-key.pem"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let vera = Ctl {
        context_file: vera_dir.join("rusectl.toml"),
        controller: Some(url.clone()),
    };
    let who = vera.run(&["whoami"]);
    assert!(String::from_utf8_lossy(&who.stdout).contains("vera (role viewer)"));
    assert!(
        vera.json(&["get", "agents"])["items"]
            .as_array()
            .unwrap()
            .is_empty()
    );

    // A viewer cannot create tokens: non-zero exit and a plain message.
    let out = vera.run(&["token", "create"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("rusectl: error: permission denied: vera has role viewer"),
        "{err}"
    );

    // The refusal and the issuance are in the audit log, with the actor.
    let audit = root.json(&["get", "audit"])["items"]
        .as_array()
        .unwrap()
        .clone();
    assert!(audit.iter().any(|r| r["action"] == "admin.issue"
        && r["target"] == "admin/vera"
        && r["result"] == "ok"));
    assert!(audit.iter().any(|r| r["actor"] == "admin/vera"
        && r["action"] == "token.create"
        && r["result"] != "ok"));
    let admins = root.json(&["get", "admins"])["items"]
        .as_array()
        .unwrap()
        .clone();
    assert!(
        admins
            .iter()
            .any(|a| a["name"] == "vera" && a["role"] == "viewer")
    );

    // YAML output and shell completions.
    let out = root.run(&["get", "admins", "-o", "yaml"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("role: viewer"));
    let out = root.run(&["completion", "bash"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("rusectl"));
}

#[tokio::test]
async fn rusectl_applies_manifests_and_follows_a_rollout() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let pin = init_controller(&data);
    let (_controller, addr) =
        spawn_controller(&data, "127.0.0.1:0", &dir.path().join("controller.log"));
    let url = format!("https://{addr}");
    let ctx = Ctl::for_data_dir(&data, &url);

    // An invalid file changes nothing and says where the problem is.
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "kind: Decoy\nname: d1\nservices: [{protocol: ssh, port: 22}]\n---\nkind: Campaign\nname: c1\nlures: [{template: ssh-key, decoy: d1}, {template: patient-csv, rows: 5}]\n",
    )
    .unwrap();
    let out = ctx.run(&["apply", "-f", &bad.display().to_string()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("document 2 (Campaign c1): lures[1].rows: unknown field `rows`"),
        "{err}"
    );
    assert!(
        ctx.json(&["get", "decoys"])["items"]
            .as_array()
            .unwrap()
            .is_empty(),
        "nothing applied"
    );

    // The shipped example, to one real agent process.
    let token = ctx.json(&[
        "token",
        "create",
        "--label",
        "site=icu",
        "--label",
        "role=workstation",
    ])["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let state = dir.path().join("agent");
    let root = dir.path().join("root");
    std::fs::create_dir_all(root.join("home/nurse")).unwrap();
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(state.join("token"), &token).unwrap();
    let _agent = spawn(
        "ruse-agent",
        &[
            "run",
            "--controller",
            &url,
            "--ca-pin",
            &pin,
            "--token-file",
            &state.join("token").display().to_string(),
            "--state-dir",
            &state.join("s").display().to_string(),
            "--root",
            &root.display().to_string(),
        ],
        &dir.path().join("agent.log"),
    );
    eventually("agent online", Duration::from_secs(20), || async {
        agents(&ctx).iter().any(|a| a["state"] == "online")
    })
    .await;
    let example =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/healthcare-campaign.yaml");
    let out = ctx.run(&["apply", "-f", &example.display().to_string()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("decoy/pacs-archive02 created")
            && text.contains("campaign/clinical-workstations created"),
        "{text}"
    );
    // A decoy's refusal delay shows when its manifest sets one.
    let quick = dir.path().join("quick.yaml");
    std::fs::write(
        &quick,
        "kind: Decoy\nname: quick-ftp\nselector: {site: nowhere}\nservices: [{protocol: ftp, port: 2121, refusal_delay: 250ms}, {protocol: telnet, port: 2323, device: lab-analyser}]\n",
    )
    .unwrap();
    assert!(
        ctx.run(&["apply", "-f", &quick.display().to_string()])
            .status
            .success()
    );
    let decoys = ctx.json(&["get", "decoys"]);
    let services = |name: &str| {
        decoys["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["name"] == name)
            .unwrap()["services"][0]
            .clone()
    };
    assert_eq!(services("quick-ftp")["refusal_delay_ms"], 250);
    assert!(services("pacs-archive02").get("refusal_delay_ms").is_none());
    let table = String::from_utf8_lossy(&ctx.run(&["get", "decoys"]).stdout).into_owned();
    assert!(table.contains("ftp/2121 (refusal 250ms)"), "{table}");
    // And a Telnet service's device.
    assert_eq!(
        decoys["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["name"] == "quick-ftp")
            .unwrap()["services"][1]["device"],
        "lab-analyser"
    );
    assert!(table.contains("telnet/2323 (lab-analyser)"), "{table}");
    assert!(ctx.run(&["delete", "decoy", "quick-ftp"]).status.success());

    let out = ctx.run(&[
        "rollout",
        "status",
        "campaign/clinical-workstations",
        "--timeout",
        "30s",
    ]);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("completed"));
    eventually("14 lures applied", Duration::from_secs(10), || async {
        let lures = ctx.json(&["get", "lures"])["items"]
            .as_array()
            .unwrap()
            .clone();
        lures.len() == 14 && lures.iter().all(|l| l["state"] == "applied")
    })
    .await;
    assert!(
        root.join("home/nurse/.ssh/id_ed25519_pacs-archive02")
            .exists()
    );
    let described = ctx.json(&["describe", "campaign", "clinical-workstations"]);
    assert_eq!(described["rollout"], "completed");
    assert_eq!(described["lures"].as_array().unwrap().len(), 14);

    // A drill, step by step, then the drill incident's lifecycle.
    let id = agents(&ctx)[0]["id"].as_str().unwrap().to_owned();
    let out = ctx.run(&["drill", "--agent", &id]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("✔") && text.contains("event received") && text.contains("drill passed"),
        "{text}"
    );
    assert!(
        ctx.json(&["get", "incidents"])["items"]
            .as_array()
            .unwrap()
            .is_empty(),
        "drills stay out of the default list"
    );
    // A finished drill resolves its incident: it is found with --all.
    assert!(
        ctx.json(&["get", "incidents", "--drills"])["items"]
            .as_array()
            .unwrap()
            .is_empty(),
        "a finished drill leaves nothing open"
    );
    let drills = ctx.json(&["get", "incidents", "--drills", "--all"]);
    let incident = drills["items"][0].clone();
    assert_eq!(incident["drill"], true);
    assert_eq!(incident["status"], "resolved");
    let incident_id = incident["id"].as_str().unwrap().to_owned();
    let out = ctx.run(&["describe", "incident", &incident_id]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success());
    for want in ["(DRILL)", "Attack path:", "┌", "Timeline:", "Delivered to:"] {
        assert!(text.contains(want), "{want} missing from:\n{text}");
    }
    assert_eq!(incident["resolution"], "drill passed");
    // Resolving it again is refused plainly.
    let out = ctx.run(&[
        "resolve",
        "incident",
        &incident_id,
        "--note",
        "quarterly drill",
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already resolved"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stix = dir.path().join("incidents.stix.json");
    let out = ctx.run(&[
        "export",
        "incidents",
        "--format",
        "stix",
        "--since",
        "1d",
        "--drills",
        "-f",
        &stix.display().to_string(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bundle: Value = serde_json::from_str(&std::fs::read_to_string(&stix).unwrap()).unwrap();
    assert_eq!(bundle["type"], "bundle");
    assert!(
        bundle["objects"]
            .as_array()
            .unwrap()
            .iter()
            .any(|o| o["type"] == "incident")
    );

    // Relabelling takes the lures away again; the registry keeps them.
    let out = ctx.run(&["label", "agent", &id, "role-", "team=it"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eventually(
        "lures removed after relabel",
        Duration::from_secs(10),
        || async {
            !root
                .join("home/nurse/.ssh/id_ed25519_pacs-archive02")
                .exists()
        },
    )
    .await;
    let all = ctx.json(&["get", "lures", "--all"])["items"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(all.len(), 14);
    assert!(all.iter().all(|l| l["state"] == "retired"));
    let audit = ctx.json(&["get", "audit"])["items"]
        .as_array()
        .unwrap()
        .clone();
    assert!(
        audit
            .iter()
            .any(|r| r["action"] == "resources.apply" && r["result"] != "ok")
    );
    assert!(
        audit
            .iter()
            .any(|r| r["action"] == "agent.label" && r["result"] == "ok")
    );
}

/// The conventions a Kubernetes deployment relies on: configuration from a
/// mounted file plus `RUSE_*`, a CA created on first start when none is
/// mounted, a bootstrap admin, plaintext gRPC health for kubelet probes,
/// JSON logs, and a clean exit on SIGTERM.
#[tokio::test]
async fn the_controller_starts_empty_as_on_kubernetes_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let ports = ruse_e2e::free_ports(3);
    let config = dir.path().join("controller.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = \"{}\"\nlisten = \"127.0.0.1:{}\"\nhealth_listen = \"127.0.0.1:{}\"\nmetrics_listen = \"127.0.0.1:{}\"\ninit_if_missing = true\ntrust_domain = \"hospital.example\"\nbootstrap_admin = \"ops\"\nserver_names = [\"127.0.0.1\", \"ruse-controller.ruse.svc\"]\nlog_format = \"json\"\n",
            data.display(),
            ports[0],
            ports[1],
            ports[2]
        ),
    )
    .unwrap();
    let mut controller = spawn(
        "ruse-controller",
        &["serve", "--config", &config.display().to_string()],
        &dir.path().join("controller.log"),
    );
    // kubelet's gRPC probe: grpc.health.v1 in plaintext.
    let health_url = format!("http://127.0.0.1:{}", ports[1]);
    eventually("health SERVING", Duration::from_secs(20), || {
        let url = health_url.clone();
        async move {
            let Ok(channel) = tonic::transport::Endpoint::from_shared(url)
                .unwrap()
                .connect()
                .await
            else {
                return false;
            };
            let mut client = tonic_health::pb::health_client::HealthClient::new(channel);
            client
                .check(tonic_health::pb::HealthCheckRequest {
                    service: String::new(),
                })
                .await
                .is_ok_and(|r| {
                    r.into_inner().status
                        == tonic_health::pb::health_check_response::ServingStatus::Serving as i32
                })
        }
    })
    .await;
    // Logs are JSON lines and say a CA was created.
    let log = controller.log_text();
    assert!(log.contains("init_if_missing"), "{log}");
    assert!(
        log.lines()
            .filter(|l| !l.is_empty())
            .all(|l| serde_json::from_str::<Value>(l).is_ok()),
        "{log}"
    );

    // The first admin's context, credentials inline, as `kubectl exec` prints it.
    let out = Command::new(binary("ruse-controller"))
        .args([
            "admin-context",
            "--data-dir",
            &data.display().to_string(),
            "--controller",
            &format!("https://127.0.0.1:{}", ports[0]),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let context = dir.path().join("ruse.toml");
    std::fs::write(&context, &out.stdout).unwrap();
    use std::os::unix::fs::PermissionsExt;
    let ctl = Ctl {
        context_file: context.clone(),
        controller: None,
    };
    // A world-readable file with a key inside is refused.
    std::fs::set_permissions(&context, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert!(!ctl.run(&["whoami"]).status.success());
    std::fs::set_permissions(&context, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = ctl.run(&["whoami"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("ops (role admin)") && text.contains("hospital.example"),
        "{text}"
    );
    let audit = ctl.json(&["get", "audit"]);
    assert!(
        audit["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["action"] != "admin.bootstrap"),
        "init created the admin, so no bootstrap was needed"
    );

    // SIGTERM: drains and exits 0 within the grace period.
    let status = controller.terminate(Duration::from_secs(15));
    assert!(
        status.success(),
        "exit {status:?}; log:\n{}",
        controller.log_text()
    );

    // Restarted with the CA mounted elsewhere and an empty store, the
    // bootstrap admin is created (and audited) because none exists.
    let data2 = dir.path().join("data2");
    std::fs::create_dir_all(&data2).unwrap();
    let config2 = dir.path().join("controller2.toml");
    std::fs::write(
        &config2,
        format!(
            "data_dir = \"{}\"\nlisten = \"127.0.0.1:{}\"\nca_cert_file = \"{}\"\nca_key_file = \"{}\"\nbootstrap_admin = \"ops\"\nserver_names = [\"127.0.0.1\"]\nlog_format = \"json\"\n",
            data2.display(),
            ports[0],
            data.join("pki/ca.pem").display(),
            data.join("pki/ca-key.pem").display()
        ),
    )
    .unwrap();
    let mut controller = spawn(
        "ruse-controller",
        &["serve", "--config", &config2.display().to_string()],
        &dir.path().join("controller2.log"),
    );
    eventually(
        "the bootstrap admin works",
        Duration::from_secs(20),
        || async { ctl.run(&["whoami"]).status.success() },
    )
    .await;
    let audit = ctl.json(&["get", "audit"]);
    assert!(
        audit["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["action"] == "admin.bootstrap"),
        "{audit}"
    );
    let status = controller.terminate(Duration::from_secs(15));
    assert!(status.success());
}

/// A controller with `rusectl watch` clients connected used to log that
/// connections did not drain, stay up over a minute holding the store
/// lock, and make the next `serve` fail with "could not acquire lock": a
/// rolling update or `systemctl restart` hung the same way. Now watches end
/// when the controller stops, it exits within its drain deadline, and the
/// next one starts at once.
#[tokio::test]
async fn sigterm_with_watchers_connected_exits_within_the_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let _pin = init_controller(&data);
    let (mut controller, addr) =
        spawn_controller(&data, "127.0.0.1:0", &dir.path().join("controller.log"));
    let url = format!("https://{addr}");
    let ctx = Ctl::for_data_dir(&data, &url);
    let watch = |what: &str, log: &str| {
        spawn(
            "rusectl",
            &[
                "--context-file",
                &ctx.context_file.display().to_string(),
                "--controller",
                &url,
                "watch",
                what,
            ],
            &dir.path().join(log),
        )
    };
    let mut events = watch("events", "watch-events.log");
    let mut incidents = watch("incidents", "watch-incidents.log");
    // Both streams are open before the controller is told to stop.
    eventually(
        "the watches are connected",
        Duration::from_secs(10),
        || async {
            let log =
                std::fs::read_to_string(dir.path().join("watch-events.log")).unwrap_or_default();
            log.contains("OBSERVED")
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = std::time::Instant::now();
    let status = controller.terminate(Duration::from_secs(20));
    assert!(status.success(), "{}", controller.log_text());
    // The default drain deadline is 10 s.
    assert!(
        started.elapsed() < Duration::from_secs(12),
        "took {:?}",
        started.elapsed()
    );
    // The store is free: a new controller serves on the same data.
    let (mut again, addr) =
        spawn_controller(&data, "127.0.0.1:0", &dir.path().join("controller-2.log"));
    let ctx = Ctl::for_data_dir(&data, &format!("https://{addr}"));
    assert!(ctx.run(&["whoami"]).status.success());
    assert!(again.terminate(Duration::from_secs(20)).success());
    for w in [&mut events, &mut incidents] {
        let _ = w.wait(Duration::from_secs(5));
    }
}

/// `init`'s next steps used to omit `--listen` and, on Kubernetes (where
/// rusectl dials the admin port through a port-forward), told agents to
/// dial the admin port. They follow what init was told now.
#[test]
fn init_prints_steps_for_the_ports_it_was_given() {
    let dir = tempfile::tempdir().unwrap();
    let init = |data: &str, args: &[&str]| {
        let out = Command::new(binary("ruse-controller"))
            .args([
                "init",
                "--data-dir",
                &dir.path().join(data).display().to_string(),
            ])
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap()
    };
    let one_port = init("a", &["--controller-url", "https://ruse.example.org:7443"]);
    assert!(
        one_port.contains("--listen 0.0.0.0:7443 --server-name ruse.example.org"),
        "{one_port}"
    );
    assert!(one_port.contains("ruse-agent run --controller https://ruse.example.org:7443"));
    let two_ports = init(
        "b",
        &[
            "--controller-url",
            "https://localhost:7444",
            "--agent-url",
            "https://ruse.hospital.example:7443",
        ],
    );
    assert!(
        two_ports.contains("--listen 0.0.0.0:7443 --admin-listen 0.0.0.0:7444"),
        "{two_ports}"
    );
    assert!(
        two_ports.contains("ruse-agent run --controller https://ruse.hospital.example:7443"),
        "agents dial the agent port: {two_ports}"
    );
}

/// Following the docs' own commands used to leave secrets world-readable
/// (`token create > token`, `admin-context > ruse.toml`). The commands
/// write them 0600 themselves now.
#[tokio::test]
async fn secrets_the_commands_write_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let _pin = init_controller(&data);
    let (mut controller, addr) =
        spawn_controller(&data, "127.0.0.1:0", &dir.path().join("controller.log"));
    let ctx = Ctl::for_data_dir(&data, &format!("https://{addr}"));
    let token = dir.path().join("token");
    let out = ctx.run(&[
        "token",
        "create",
        "--secret-file",
        &token.display().to_string(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout.is_empty(), "the secret is not printed");
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&token), 0o600);
    assert!(
        std::fs::read_to_string(&token)
            .unwrap()
            .starts_with("ruse_")
    );
    let context = dir.path().join("ruse.toml");
    let out = Command::new(binary("ruse-controller"))
        .args(["admin-context", "--data-dir"])
        .arg(&data)
        .arg("-o")
        .arg(&context)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(mode(&context), 0o600);
    // rusectl accepts it as it is.
    let out = Command::new(binary("rusectl"))
        .arg("--context-file")
        .arg(&context)
        .args(["--controller", &format!("https://{addr}"), "whoami"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(controller.terminate(Duration::from_secs(15)).success());
}

/// The commands of README.md's "Run it for real" block, continuation lines
/// joined, comments left out.
fn readme_commands() -> Vec<String> {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
            .unwrap();
    let section = &readme[readme
        .find("## Run it for real")
        .expect("README has its Run it for real section")..];
    let block = section
        .split("```sh\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("a sh block");
    ruse_e2e::shell_commands(block)
}

/// README's "Run it for real", run as written, one command after the
/// other through `sh`, with only what a machine of the test suite needs
/// changed: paths under a temporary directory instead of /var/lib,
/// `localhost` and a free port instead of ruse.example.org:7443 (and
/// 127.0.0.1 instead of 0.0.0.0), the pin and the agent's id where the
/// README has placeholders, the agent given a scratch `--root` (it would
/// plant into this machine's homes), and the two commands that run until
/// stopped (`serve`, `ruse-agent run`) and the live `watch` started in
/// the background. `cargo build` and `export PATH` are the suite's own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_run_it_for_real_runs_as_written() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().to_path_buf();
    let port = ruse_e2e::free_ports(1)[0];
    let root = work.join("endpoint");
    std::fs::create_dir_all(root.join("home/clinician")).unwrap();
    std::fs::create_dir_all(root.join("root")).unwrap();
    let bin_dir = binary("rusectl").parent().unwrap().to_path_buf();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/");
    let substitute = |command: &str| {
        command
            .replace(
                "/var/lib/ruse-agent",
                &work.join("agent").display().to_string(),
            )
            .replace("/var/lib/ruse", &work.join("ruse").display().to_string())
            .replace("0.0.0.0:7443", &format!("127.0.0.1:{port}"))
            .replace("ruse.example.org:7443", &format!("localhost:{port}"))
            .replace("ruse.example.org", "localhost")
            .replace("deploy/examples/", &examples.display().to_string())
    };
    let mut env: Vec<(String, String)> = vec![("PATH".into(), path)];
    let sh = |command: &str, env: &[(String, String)]| {
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(command)
            .current_dir(&work)
            .stdin(std::process::Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd
    };
    let mut pin = String::new();
    let mut agent_id = String::new();
    let mut background: Vec<std::process::Child> = Vec::new();
    let mut ran = Vec::new();
    for command in readme_commands() {
        if command.starts_with("cargo build") || command.starts_with("export PATH=") {
            continue;
        }
        let mut command = substitute(&command)
            .replace("sha256:<pin from init>", &pin)
            .replace("<id>", &agent_id);
        if let Some(assignment) = command.strip_prefix("export ") {
            let (k, v) = assignment.split_once('=').unwrap();
            env.push((k.to_owned(), v.to_owned()));
            continue;
        }
        let long_running = command.starts_with("ruse-controller serve")
            || command.starts_with("ruse-agent run")
            || command.starts_with("rusectl watch");
        if command.starts_with("ruse-agent run") {
            command += &format!(" --root {}", root.display());
        }
        if long_running {
            let log = work.join(format!("background-{}.log", background.len()));
            let file = std::fs::File::create(&log).unwrap();
            // `exec`: the shell becomes the program, so stopping the child
            // stops the program, not just the shell around it.
            let child = sh(&format!("exec {command}"), &env)
                .stdout(file.try_clone().unwrap())
                .stderr(file)
                .spawn()
                .unwrap();
            background.push(child);
            if command.starts_with("ruse-controller serve") {
                eventually(
                    "the controller listens",
                    Duration::from_secs(20),
                    || async { std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() },
                )
                .await;
            } else if command.starts_with("ruse-agent run") {
                let online = || {
                    let out = sh("rusectl get agents -o json", &env).output().unwrap();
                    let list: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
                    list["items"]
                        .as_array()
                        .and_then(|a| a.first())
                        .filter(|a| a["state"] == "online")
                        .and_then(|a| a["id"].as_str().map(str::to_owned))
                };
                eventually("the agent is online", Duration::from_secs(30), || async {
                    online().is_some()
                })
                .await;
                agent_id = online().unwrap();
            } else {
                // The live watch prints its header and waits for events.
                tokio::time::sleep(Duration::from_secs(2)).await;
                let text = std::fs::read_to_string(&log).unwrap();
                assert!(text.contains("KIND"), "{command}: {text}");
            }
            ran.push(command);
            continue;
        }
        let out = tokio::time::timeout(Duration::from_secs(120), async {
            sh(&command, &env).output().unwrap()
        })
        .await
        .expect("finishes");
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "`{command}` failed:\n{text}");
        if command.starts_with("ruse-controller init") {
            pin = text
                .split_whitespace()
                .find(|w| w.starts_with("sha256:"))
                .expect("init prints the CA pin")
                .to_owned();
        }
        ran.push(command);
    }
    for mut child in background {
        let _ = child.kill();
        let _ = child.wait();
    }
    let joined = ran.join("\n");
    for step in [
        "init",
        "serve",
        "token create",
        "ruse-agent run",
        "apply",
        "rollout status",
        "watch events",
        "label agent",
        "revoke agent",
        "get audit",
    ] {
        assert!(
            joined.contains(step),
            "the README's `{step}` ran:\n{joined}"
        );
    }
    assert!(!agent_id.is_empty());
}

/// README's one command: `ruse-controller dev` plants the demo campaign
/// into its sandbox, a read of the honeyfile it names reaches `rusectl`,
/// it stops on SIGTERM, and a second run keeps the agent's identity.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_plants_the_demo_and_a_read_honeyfile_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("ruse-dev");
    let port = ruse_e2e::free_ports(1)[0];
    let start = |n: usize| {
        let log = dir.path().join(format!("dev-{n}.log"));
        let proc = spawn(
            "ruse-controller",
            &[
                "dev",
                "--data-dir",
                &data.display().to_string(),
                "--listen",
                &format!("127.0.0.1:{port}"),
            ],
            &log,
        );
        (proc, log)
    };
    let banner_line = |log: &Path, prefix: &str| -> Option<String> {
        std::fs::read_to_string(log)
            .ok()?
            .lines()
            .find_map(|l| l.trim().strip_prefix(prefix).map(|v| v.trim().to_owned()))
    };

    let (mut dev, log) = start(1);
    eventually("dev prints its banner", Duration::from_secs(60), || async {
        banner_line(&log, "Press Ctrl-C").is_some()
    })
    .await;
    let text = std::fs::read_to_string(&log).unwrap();
    let agent_id = banner_line(&log, "demo agent")
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| panic!("no demo agent in:\n{text}"));
    let honeyfile = banner_line(&log, "trip one")
        .and_then(|l| l.strip_prefix("cat ").map(str::to_owned))
        .unwrap_or_else(|| panic!("no honeyfile in:\n{text}"));
    let planted: usize = banner_line(&log, "lures planted")
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    assert!(planted >= 10, "{text}");

    let url = format!("https://127.0.0.1:{port}");
    let ctl = Ctl::for_data_dir(&data, &url);
    let agents = ctl.json(&["get", "agents"]);
    assert_eq!(agents["items"][0]["id"], agent_id.as_str());
    assert_eq!(agents["items"][0]["state"], "online");

    // Trip it as the banner says.
    let read = Command::new("cat").arg(&honeyfile).output().unwrap();
    assert!(read.status.success());
    eventually("the read is an event", Duration::from_secs(20), || async {
        let events = ctl.json(&["get", "events", "--kind", "touch"]);
        events["items"].as_array().is_some_and(|e| !e.is_empty())
    })
    .await;

    // The banner's console link signs in on first try, and so does one
    // from `rusectl console` (each once).
    let ca = data.join("pki/ca.pem");
    let sign_in = |link: &str| -> String {
        let out = Command::new("curl")
            .args([
                "-sS",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code} %{redirect_url}",
                "--cacert",
            ])
            .arg(&ca)
            .arg(link)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let banner_link =
        banner_line(&log, "web console").unwrap_or_else(|| panic!("no console link in:\n{text}"));
    assert!(
        sign_in(&banner_link).starts_with("303 https://"),
        "{banner_link}"
    );
    assert!(
        sign_in(&banner_link).starts_with("403"),
        "a link works once"
    );
    let printed = ctl.run(&["console", "--no-browser"]);
    assert!(printed.status.success());
    let cli_link = String::from_utf8_lossy(&printed.stdout).trim().to_owned();
    assert!(sign_in(&cli_link).starts_with("303 https://"), "{cli_link}");

    let status = dev.terminate(Duration::from_secs(20));
    assert!(status.success(), "{}", dev.log_text());

    // The data directory is kept: the same agent comes back.
    let (mut again, log) = start(2);
    eventually("dev starts again", Duration::from_secs(60), || async {
        banner_line(&log, "Press Ctrl-C").is_some()
    })
    .await;
    let second = banner_line(&log, "demo agent")
        .and_then(|l| l.split_whitespace().next().map(str::to_owned));
    assert_eq!(second.as_deref(), Some(agent_id.as_str()));
    let status = again.terminate(Duration::from_secs(20));
    assert!(status.success(), "{}", again.log_text());
}

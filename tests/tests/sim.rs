//! The fleet simulator works: every scenario at a tiny size against a real
//! controller process. (Benchmarks run it at size: bench/run.sh.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use serde_json::Value;

use std::time::Duration;

use ruse_e2e::postgres::Postgres;
use ruse_e2e::process::{
    Ctl, binary, init_controller, init_controller_with, spawn, spawn_controller,
    spawn_controller_with,
};
use ruse_e2e::{eventually, require_root};

#[test]
fn every_simulator_scenario_runs_against_a_real_controller() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let pin = init_controller(&data);
    let (controller, addr) =
        spawn_controller(&data, "127.0.0.1:0", &dir.path().join("controller.log"));
    let url = format!("https://{addr}");
    let json = dir.path().join("sim.json");
    let mut args = admin_args(&url, &pin, &data);
    args.extend(
        [
            "-n",
            "6",
            "--lures",
            "3",
            "--rate",
            "600",
            "--batch",
            "10",
            "--duration",
            "1s",
            "--hold",
            "200ms",
            "--sources",
            "3",
            "--scenarios",
            "connect,push,ingest,storm",
            "--timeout",
            "60s",
            "--controller-pid",
        ]
        .map(String::from),
    );
    args.push(controller.pid().to_string());
    let report = sim(&args, &json);
    let value = |scenario: &str, metric: &str| value(&report, scenario, metric);
    assert_eq!(value("connect", "agents connected"), 6.0);
    assert!(value("connect", "controller memory per agent") >= 0.0);
    assert_eq!(value("push", "lures per agent"), 3.0);
    assert!(value("push", "all acked (max)") > 0.0);
    let sent = value("ingest", "events sent");
    assert!(sent >= 100.0, "{sent}");
    assert_eq!(value("ingest", "events acked"), sent);
    assert!(value("ingest", "batch ack p99") > 0.0);
    assert_eq!(value("storm", "agents reconnecting"), 6.0);
    assert!(value("storm", "all online at controller") > 0.0);

    // The controller stored exactly what was acknowledged.
    let ctl = Ctl::for_data_dir(&data, &url);
    let events = ctl.json(&["get", "events", "--limit", "100000"]);
    assert_eq!(events["items"].as_array().unwrap().len() as f64, sent);
    drop(controller);
}

/// Three replica processes on one PostgreSQL database, a fleet of two
/// simulators spread over them: `failover` kills the first replica while
/// events flow, and its agents come back at the others with nothing lost —
/// every event sent is acknowledged and stored exactly once.
#[test]
fn the_failover_scenario_kills_a_replica_and_its_agents_move_losing_nothing() {
    let Some(pg) = Postgres::start("the_failover_scenario_kills_a_replica") else {
        return;
    };
    let store = pg.database("ruse");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let pin = init_controller_with(&data, &[("RUSE_STORE_URL", &store)]);
    let replicas: Vec<_> = ["r0", "r1", "r2"]
        .iter()
        .map(|name| {
            spawn_controller_with(
                &data,
                "127.0.0.1:0",
                &dir.path().join(format!("{name}.log")),
                &[("RUSE_STORE_URL", &store), ("RUSE_NAME", name)],
            )
        })
        .collect();
    let urls: Vec<String> = replicas
        .iter()
        .map(|(_, a)| format!("https://{a}"))
        .collect();
    let pids: Vec<String> = replicas.iter().map(|(p, _)| p.pid().to_string()).collect();
    // Two simulators drive one fleet (as past one process's file limit):
    // they meet in `fleet/`, one applies the campaign and kills for both.
    let mut args = admin_args(&urls.join(","), &pin, &data);
    // The admin API at a replica that survives.
    args[3] = urls[1].clone();
    args.extend(
        [
            "-n",
            "6",
            "--lures",
            "2",
            "--rate",
            "150",
            "--batch",
            "5",
            "--duration",
            "3s",
            "--hold",
            "200ms",
            "--sources",
            "3",
            "--scenarios",
            "connect,push,failover",
            "--kill-replica",
            "0",
            "--timeout",
            "90s",
            "--peer-count",
            "2",
            "--peers",
        ]
        .map(String::from),
    );
    args.push(dir.path().join("fleet").display().to_string());
    args.push("--controller-pid".into());
    args.push(pids.join(","));
    let reports: Vec<Value> = std::thread::scope(|s| {
        let runs: Vec<_> = (0..2)
            .map(|k| {
                let (args, json) = (&args, dir.path().join(format!("sim-{k}.json")));
                s.spawn(move || sim(args, &json))
            })
            .collect();
        runs.into_iter().map(|r| r.join().unwrap()).collect()
    });
    let total = |scenario: &str, metric: &str| -> f64 {
        reports.iter().map(|r| value(r, scenario, metric)).sum()
    };
    for report in &reports {
        // Each replica holds 4 of the 12 agents of both simulators.
        let per_agent = value(report, "connect", "replica 0 memory per agent");
        assert!(per_agent >= 0.0);
        assert_eq!(report["samples"]["push acked"].as_array().unwrap().len(), 6);
        assert!(value(report, "failover", "all online elsewhere (get agents)") > 0.0);
    }
    assert_eq!(total("failover", "agents at the killed replica"), 4.0);
    assert_eq!(total("failover", "sessions lost"), 4.0);
    let sent = total("failover", "events sent");
    assert!(sent >= 300.0, "{sent}");
    assert_eq!(total("failover", "events acked"), sent);
    let stored = pg.psql("ruse", "SELECT count(*), count(DISTINCT id) FROM events");
    assert_eq!(stored.trim(), format!("{sent}|{sent}"), "stored, distinct");
    drop(replicas);
}

/// A fleet larger than one message is listed whole: with the controller's
/// message limit at 64 KiB, 300 agents (~75 KB as one list) are several
/// pages of `rusectl get agents`.
#[test]
fn get_agents_pages_through_a_fleet_larger_than_one_message() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let pin = init_controller(&data);
    let (controller, addr) = spawn_controller_with(
        &data,
        "127.0.0.1:0",
        &dir.path().join("controller.log"),
        &[("RUSE_MAX_MESSAGE_BYTES", "65536")],
    );
    let url = format!("https://{addr}");
    let mut args = admin_args(&url, &pin, &data);
    args.extend(
        [
            "-n",
            "300",
            "--hold",
            "0s",
            "--scenarios",
            "connect",
            "--timeout",
            "120s",
        ]
        .map(String::from),
    );
    let report = sim(&args, &dir.path().join("sim.json"));
    assert_eq!(value(&report, "connect", "agents connected"), 300.0);
    let ctl = Ctl::for_data_dir(&data, &url);
    let listed = ctl.json(&["get", "agents"]);
    let items = listed["items"].as_array().unwrap();
    let ids: std::collections::HashSet<&str> =
        items.iter().map(|a| a["id"].as_str().unwrap()).collect();
    assert_eq!((items.len(), ids.len()), (300, 300), "every agent, once");
    drop(controller);
}

/// `--controller`, `--admin`, `--ca-pin` and `--context-file` for the
/// controller initialised in `data`.
fn admin_args(url: &str, pin: &str, data: &std::path::Path) -> Vec<String> {
    vec![
        "--controller".into(),
        url.into(),
        "--admin".into(),
        url.into(),
        "--ca-pin".into(),
        pin.into(),
        "--context-file".into(),
        data.join("admin/rusectl.toml").display().to_string(),
    ]
}

/// Runs `ruse-sim ARGS --json FILE`; panics with its output on failure and
/// returns the report.
fn sim(args: &[String], json: &std::path::Path) -> Value {
    let out = Command::new(binary("ruse-sim"))
        .args(args)
        .arg("--json")
        .arg(json)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ruse-sim {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    rows(json)
}

fn rows(path: &std::path::Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn value(report: &Value, scenario: &str, metric: &str) -> f64 {
    report["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["scenario"] == scenario && r["metric"] == metric)
        .and_then(|r| r["value"].as_f64())
        .unwrap_or_else(|| panic!("no {scenario}/{metric} in {report}"))
}

#[tokio::test]
async fn touch_and_flood_scenarios_measure_a_real_agent() {
    if !require_root("touch_and_flood_scenarios_measure_a_real_agent") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let pin = init_controller(&data);
    let (_controller, addr) =
        spawn_controller(&data, "127.0.0.1:0", &dir.path().join("controller.log"));
    let url = format!("https://{addr}");
    let ctl = Ctl::for_data_dir(&data, &url);
    let token = ctl.json(&[
        "token",
        "create",
        "--label",
        "role=bench",
        "--label",
        "decoys=bench",
    ])["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let host = dir.path().join("host");
    std::fs::create_dir_all(host.join("root/home/clinician")).unwrap();
    std::fs::write(host.join("token"), token).unwrap();
    let _agent = spawn(
        "ruse-agent",
        &[
            "run",
            "--controller",
            &url,
            "--ca-pin",
            &pin,
            "--token-file",
            &host.join("token").display().to_string(),
            "--state-dir",
            &host.join("state").display().to_string(),
            "--root",
            &host.join("root").display().to_string(),
        ],
        &dir.path().join("agent.log"),
    );
    let ports = ruse_e2e::free_ports(1);
    let manifest = dir.path().join("bench.yaml");
    std::fs::write(
        &manifest,
        format!(
            "kind: Decoy\nname: bench\nselector: {{decoys: bench}}\naddress: 127.0.0.1\nlisten: 127.0.0.1\nservices: [{{protocol: ftp, port: {}, refusal_delay: 0s}}]\n---\nkind: Campaign\nname: touch\nselector: {{role: bench}}\nlures:\n  - {{template: patient-csv, path: '~/touch'}}\n  - {{template: hl7-adt, path: '~/touch'}}\n",
            ports[0]
        ),
    )
    .unwrap();
    eventually("the agent online", Duration::from_secs(20), || async {
        ctl.json(&["get", "agents"])["items"][0]["state"] == "online"
    })
    .await;
    let out = ctl.run(&["apply", "-f", &manifest.display().to_string()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = ctl.run(&["rollout", "status", "campaign/touch", "--timeout", "30s"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let json = dir.path().join("touch.json");
    let mut args = admin_args(&url, &pin, &data);
    args.extend(["--scenarios", "touch", "--touches", "6", "--timeout", "60s"].map(String::from));
    args.push("--touch-root".into());
    args.push(host.join("root/home/clinician/touch").display().to_string());
    let report = sim(&args, &json);
    assert_eq!(value(&report, "touch", "lure files"), 2.0);
    assert_eq!(value(&report, "touch", "events not seen within 5 s"), 0.0);
    assert!(value(&report, "touch", "read to watch p99") > 0.0);

    // The decoy is up once its port answers.
    eventually(
        "the ftp decoy listening",
        Duration::from_secs(20),
        || async { std::net::TcpStream::connect(("127.0.0.1", ports[0])).is_ok() },
    )
    .await;
    let json = dir.path().join("flood.json");
    let args = [
        "--scenarios".to_owned(),
        "flood".into(),
        "--flood".into(),
        format!("ftp://127.0.0.1:{}", ports[0]),
        "--flood-connections".into(),
        "4".into(),
        "--sources".into(),
        "4".into(),
        "--duration".into(),
        "1s".into(),
    ];
    let report = sim(&args, &json);
    let answered = value(&report, "flood", "attempts answered");
    assert!(answered > 0.0);
    // Every answered attempt is recorded at the controller.
    eventually(
        "every flood attempt recorded",
        Duration::from_secs(20),
        || async {
            let metrics = String::from_utf8(ctl.run(&["get", "metrics"]).stdout).unwrap();
            metrics
                .lines()
                .find_map(|l| l.strip_prefix("ruse_events_by_kind_total{kind=\"decoy-login\"} "))
                .and_then(|v| v.trim().parse::<f64>().ok())
                .is_some_and(|n| n >= answered)
        },
    )
    .await;
}

/// The floor the peer benchmark compares decoys with: `ruse-sim --scenarios
/// floor` serves, a flood against it is answered, and both sides count the
/// same logins.
#[test]
fn a_flood_against_the_floor_is_answered_and_counted_on_both_sides() {
    let dir = tempfile::tempdir().unwrap();
    for (n, (scheme, path)) in [("ftp", ""), ("http", "/login")].into_iter().enumerate() {
        let port = ruse_e2e::free_ports(1)[0];
        let url = format!("{scheme}://127.0.0.1:{port}{path}");
        let floor_json = dir.path().join(format!("floor-{n}.json"));
        let floor = Command::new(binary("ruse-sim"))
            .args(["--scenarios", "floor", "--flood", &url, "--duration", "5s"])
            .arg("--json")
            .arg(&floor_json)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "the floor never listened"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let flood_json = dir.path().join(format!("flood-{n}.json"));
        let args = [
            "--scenarios",
            "flood",
            "--flood",
            &url,
            "--flood-connections",
            "4",
            "--sources",
            "2",
            "--duration",
            "1s",
        ]
        .map(String::from);
        let flood = sim(&args, &flood_json);
        let answered = value(&flood, "flood", "attempts answered");
        assert!(answered > 0.0, "{scheme}: nothing answered");
        assert_eq!(value(&flood, "flood", "attempts failed"), 0.0, "{scheme}");
        let out = floor.wait_with_output().unwrap();
        assert!(out.status.success(), "{scheme}: the floor failed");
        // The one probe connection above is not a login, so it is not counted.
        assert_eq!(
            value(&rows(&floor_json), "floor", "logins answered"),
            answered,
            "{scheme}"
        );
    }
}

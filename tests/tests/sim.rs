//! The fleet simulator works: every scenario at a tiny size against a real
//! controller process. (Benchmarks run it at size: bench/run.sh.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use serde_json::Value;

use ruse_e2e::process::{binary, init_controller, spawn_controller};

#[test]
fn every_simulator_scenario_runs_against_a_real_controller() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let pin = init_controller(&data);
    let (controller, addr) =
        spawn_controller(&data, "127.0.0.1:0", &dir.path().join("controller.log"));
    let url = format!("https://{addr}");
    let json = dir.path().join("sim.json");
    let out = Command::new(binary("ruse-sim"))
        .args(["--controller", &url, "--admin", &url, "--ca-pin", &pin])
        .arg("--context-file")
        .arg(data.join("admin/rusectl.toml"))
        .args(["-n", "6", "--lures", "3", "--rate", "600", "--batch", "10"])
        .args(["--duration", "1s", "--hold", "200ms", "--sources", "3"])
        .args([
            "--scenarios",
            "connect,push,ingest,storm",
            "--timeout",
            "60s",
        ])
        .args(["--controller-pid", &controller.pid().to_string()])
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ruse-sim failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let value = |scenario: &str, metric: &str| {
        report["rows"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["scenario"] == scenario && r["metric"] == metric)
            .and_then(|r| r["value"].as_f64())
            .unwrap_or_else(|| panic!("no {scenario}/{metric} in {report}"))
    };
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
    let ctl = ruse_e2e::process::Ctl::for_data_dir(&data, &url);
    let events = ctl.json(&["get", "events", "--limit", "100000"]);
    assert_eq!(events["items"].as_array().unwrap().len() as f64, sent);
    drop(controller);
}

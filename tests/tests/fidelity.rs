//! Decoys against the real servers they imitate: the same requests to
//! both, and what comes back compared. A decoy that a scanner or a careful
//! intruder can tell apart fails silently.
//!
//! Each test starts the Debian package of the real server on a free port
//! beside a decoy of the same protocol run by a real agent, and compares
//! what a fingerprinting tool looks at: status lines and banners, header
//! names with their case and order, error pages byte for byte. What must
//! differ (the application page behind the decoy's nginx, dates) is named
//! where it is skipped. docs/security.md lists what still differs and why.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use ruse_e2e::{TestAgent, TestController, free_ports, require_tool};

/// What a client reads from one request on a fresh connection.
fn ask(port: u16, request: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    s.write_all(request).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
        // One response on a kept-alive connection: stop at its end.
        if let Some(end) = head_end(&out) {
            let length = header(&out[..end], "Content-Length")
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(0);
            if out.len() >= end + 4 + length {
                break;
            }
        }
    }
    out
}

fn head_end(raw: &[u8]) -> Option<usize> {
    raw.windows(4).position(|w| w == b"\r\n\r\n")
}

fn header(head: &[u8], name: &str) -> Option<String> {
    String::from_utf8_lossy(head)
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")).map(str::to_owned))
}

/// Status line, header names in order (as sent), and body.
fn parts(raw: &[u8]) -> (String, Vec<String>, Vec<u8>) {
    let end = head_end(raw).unwrap_or_else(|| panic!("no header end in {raw:?}"));
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let mut lines = head.lines();
    let status = lines.next().unwrap_or_default().to_owned();
    let names = lines
        .filter_map(|l| l.split_once(':').map(|(n, _)| n.to_owned()))
        .collect();
    (status, names, raw[end + 4..].to_vec())
}

/// A process ended when the test ends.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_listening(port: u16) {
    for _ in 0..100 {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("nothing listens on {port}");
}

/// Debian's nginx on `port`, answering `/` from an application as a
/// reverse proxy in front of one would (a fixed page), everything else with
/// its own pages.
fn nginx(dir: &Path, port: u16) -> Daemon {
    let conf = dir.join("nginx.conf");
    std::fs::create_dir_all(dir.join("tmp")).unwrap();
    std::fs::write(
        &conf,
        format!(
            "daemon off;\nmaster_process off;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\nevents {{}}\nhttp {{\n  access_log off;\n  client_body_temp_path {d}/tmp;\n  server {{\n    listen 127.0.0.1:{port};\n    location = / {{ default_type \"text/html; charset=utf-8\"; return 200 \"<html>portal</html>\"; }}\n    location / {{ return 404; }}\n  }}\n}}\n",
            d = dir.display()
        ),
    )
    .unwrap();
    let child = Command::new("nginx")
        .args([
            "-c",
            &conf.display().to_string(),
            "-p",
            &dir.display().to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_listening(port);
    Daemon(child)
}

/// A real agent running one decoy service; returns it (keep it alive).
async fn decoy(tc: &TestController, protocol: &str, port: u16) -> TestAgent {
    let token = tc.token("role=decoy", 1, Duration::from_secs(600)).await;
    let mut agent = tc.spawn_agent(tc.agent_config("decoy", &token, ""));
    agent.connected().await;
    tc.apply(&format!(
        "kind: Decoy\nname: pacs-web\nselector: {{role: decoy}}\naddress: 127.0.0.1\nlisten: 127.0.0.1\nservices: [{{protocol: {protocol}, port: {port}, refusal_delay: 0s}}]\n"
    ))
    .await;
    tokio::time::timeout(
        Duration::from_secs(10),
        agent.status.wait_for(|s| s.decoy_services >= 1),
    )
    .await
    .expect("the decoy runs")
    .unwrap();
    wait_listening(port);
    agent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_decoy_answers_as_nginx_does() {
    if !require_tool("the_http_decoy_answers_as_nginx_does", "nginx") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ports = free_ports(2);
    let _nginx = nginx(dir.path(), ports[0]);
    let tc = TestController::start().await;
    let agent = decoy(&tc, "http", ports[1]).await;
    let (real, fake) = (ports[0], ports[1]);

    let cases: &[(&str, &[u8], bool)] = &[
        // (what, request, whether the body must match too)
        (
            "the application's page",
            b"GET / HTTP/1.1\r\nHost: pacs\r\nConnection: close\r\n\r\n",
            false,
        ),
        (
            "a path that does not exist",
            b"GET /phpmyadmin/ HTTP/1.1\r\nHost: pacs\r\nConnection: close\r\n\r\n",
            true,
        ),
        ("a request line nginx refuses", b"FOO\r\n\r\n", true),
        (
            "a scanner's odd method",
            b"get / HTTP/1.1\r\nHost: pacs\r\n\r\n",
            true,
        ),
        (
            "HTTP/1.0 without keep-alive",
            b"GET /nothing-here HTTP/1.0\r\n\r\n",
            true,
        ),
        (
            "HTTP/1.1 kept alive",
            b"GET /nothing-here HTTP/1.1\r\nHost: pacs\r\n\r\n",
            true,
        ),
    ];
    let mut differences = Vec::new();
    for (what, request, body_too) in cases {
        let (status_a, names_a, body_a) = parts(&ask(real, request));
        let (status_b, names_b, body_b) = parts(&ask(fake, request));
        if status_a != status_b {
            differences.push(format!("{what}: status {status_a:?} vs {status_b:?}"));
        }
        if names_a != names_b {
            differences.push(format!("{what}: headers {names_a:?} vs {names_b:?}"));
        }
        if *body_too && body_a != body_b {
            differences.push(format!(
                "{what}: body {:?} vs {:?}",
                String::from_utf8_lossy(&body_a),
                String::from_utf8_lossy(&body_b)
            ));
        }
    }
    assert!(differences.is_empty(), "{}", differences.join("\n"));
    drop(agent);
}

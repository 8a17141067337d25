//! The web console against a real controller and a real decoy, driven with
//! `curl` as a browser would drive it: sign-in by a one-time link, the
//! session cookie, the incident queue and an incident page, acknowledging
//! with the CSRF token, a viewer's forged POST refused and audited, and an
//! attacker's HTML in a decoy login shown as text.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use ruse_e2e::{TestController, free_ports, pb, require_tool};

/// An attacker's user name: markup that would set `window.pwned` if it
/// ever ran.
const PAYLOAD: &str = "<script>window.pwned=1</script><img src=x onerror=window.pwned=2>";

/// What `curl` got: status, headers (lower-case names) and body.
struct Got {
    status: u16,
    headers: String,
    body: String,
}

/// One request with `curl`, verifying the console's certificate against
/// the controller's CA; cookies kept in `jar`.
fn curl(ca: &Path, jar: &Path, method: &str, url: &str, form: Option<&str>) -> Got {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "10", "--cacert"])
        .arg(ca)
        .arg("-b")
        .arg(jar)
        .arg("-c")
        .arg(jar)
        .args(["-D", "-", "-X", method, url]);
    if let Some(form) = form {
        cmd.args(["--data-raw", form]);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "curl {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap();
    Got {
        status,
        headers: head.to_lowercase(),
        body: body.to_owned(),
    }
}

/// The value of the first `name="csrf" value="..."` in a page.
fn csrf(page: &str) -> String {
    let at = page.find("name=\"csrf\" value=\"").expect(page) + "name=\"csrf\" value=\"".len();
    page[at..].split('"').next().unwrap().to_owned()
}

/// A one-time sign-in link for a new admin of `role`.
async fn link(tc: &TestController, name: &str, role: pb::Role) -> String {
    tc.admin_as(name, role)
        .await
        .console_sign_in(pb::ConsoleSignInRequest {})
        .await
        .unwrap()
        .into_inner()
        .url
}

/// An FTP login with `user` at the decoy on `port`, as a client types it.
fn ftp_login(port: u16, user: &str) {
    let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut w = s;
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    write!(w, "USER {user}\r\n").unwrap();
    line.clear();
    r.read_line(&mut line).unwrap();
    write!(w, "PASS Winter2024!\r\n").unwrap();
    line.clear();
    r.read_line(&mut line).unwrap();
    assert!(line.starts_with("530"), "{line}");
}

/// A controller with its console on, and the controller's CA as a PEM
/// file in `dir` (what browsers and curl trust).
async fn console_controller(dir: &Path) -> (TestController, std::path::PathBuf) {
    // Incidents also go to a file, for the outputs page.
    let archive = dir.join("incidents.jsonl");
    let tc = TestController::start_with(|c| {
        c.console_listen = Some("127.0.0.1:0".parse().unwrap());
        c.outputs.push(ruse_controller::outputs::OutputConfig {
            name: "archive".into(),
            kind: "file".into(),
            path: Some(archive.clone()),
            ..Default::default()
        });
    })
    .await;
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, ruse_pki::pem_encode("CERTIFICATE", tc.ca().cert_der())).unwrap();
    (tc, ca)
}

/// A real agent running an FTP decoy; its port.
async fn ftp_decoy(tc: &TestController) -> (u16, ruse_e2e::TestAgent) {
    let port = free_ports(1)[0];
    let token = tc.token("role=decoy", 1, Duration::from_secs(600)).await;
    let mut decoy = tc.spawn_agent(tc.agent_config("decoyhost", &token, ""));
    decoy.connected().await;
    tc.apply(&format!(
        "kind: Decoy\nname: files01\nselector: {{role: decoy}}\naddress: 127.0.0.1\nlisten: 127.0.0.1\nservices:\n  - {{protocol: ftp, port: {port}, refusal_delay: 0s}}\n"
    ))
    .await;
    let started = Instant::now();
    while decoy.status.borrow().decoy_services < 1 {
        assert!(started.elapsed() < Duration::from_secs(20), "no decoy");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (port, decoy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_signs_in_once_shows_incidents_escaped_and_acts_by_role() {
    if !require_tool("the_console_signs_in_once", "curl") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (tc, ca) = console_controller(dir.path()).await;
    let console = tc.controller().console_addr().unwrap();

    // An attacker's login at a real decoy: their user name is HTML.
    let (port, _decoy) = ftp_decoy(&tc).await;
    ftp_login(port, PAYLOAD);
    let mut root = tc.root().await;
    let started = Instant::now();
    let incident = loop {
        let list = root
            .list_incidents(pb::ListIncidentsRequest::default())
            .await
            .unwrap()
            .into_inner()
            .incidents;
        if let Some(i) = list.into_iter().next() {
            break i;
        }
        assert!(started.elapsed() < Duration::from_secs(15), "no incident");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    // Sign in: the link works once and sets a strict session cookie.
    let url = link(&tc, "alice", pb::Role::Operator).await;
    // On the controller's first server name, the console's port.
    let (base, _) = url.split_once("/signin?t=").unwrap();
    let base = base.to_owned();
    assert!(
        base.starts_with("https://") && base.ends_with(&format!(":{}", console.port())),
        "{url}"
    );
    let jar = dir.path().join("alice.jar");
    let got = curl(&ca, &jar, "GET", &url, None);
    assert_eq!(got.status, 303, "{}", got.body);
    assert!(
        got.headers.contains("location: /incidents"),
        "{}",
        got.headers
    );
    let cookie = got
        .headers
        .lines()
        .find(|l| l.starts_with("set-cookie: ruse_console="))
        .unwrap()
        .to_owned();
    for attribute in ["secure", "httponly", "samesite=strict", "path=/"] {
        assert!(cookie.contains(attribute), "{cookie}");
    }
    let again = curl(&ca, &dir.path().join("other.jar"), "GET", &url, None);
    assert_eq!(again.status, 403, "a link works once");

    // Without a session: nothing but how to sign in.
    let anonymous = curl(
        &ca,
        &dir.path().join("none.jar"),
        "GET",
        &format!("{base}/incidents"),
        None,
    );
    assert_eq!(anonymous.status, 401);
    assert!(!anonymous.body.contains(&incident.id));

    // The queue and the incident: the attacker's HTML is text.
    let queue = curl(&ca, &jar, "GET", &format!("{base}/incidents"), None);
    assert_eq!(queue.status, 200);
    assert!(queue.body.contains(&incident.id), "{}", queue.body);
    assert!(
        queue
            .headers
            .contains("content-security-policy: default-src 'none'"),
        "{}",
        queue.headers
    );
    let page_url = format!("{base}/incidents/{}", incident.id);
    let page = curl(&ca, &jar, "GET", &page_url, None);
    assert_eq!(page.status, 200);
    assert!(page.body.contains("<svg class=\"path\""), "{}", page.body);
    assert!(
        page.body.contains(
            "&lt;script&gt;window.pwned=1&lt;/script&gt;&lt;img src=x onerror=window.pwned=2&gt;"
        ),
        "{}",
        page.body
    );
    assert!(!page.body.contains("<script>window") && !page.body.contains("<img"));

    // The fleet: the decoy's agent and what it runs; the audit log.
    let fleet = curl(&ca, &jar, "GET", &format!("{base}/fleet"), None);
    assert_eq!(fleet.status, 200);
    assert!(
        fleet.body.contains("role=decoy") && fleet.body.contains("files01"),
        "{}",
        fleet.body
    );
    let log = curl(&ca, &jar, "GET", &format!("{base}/audit"), None);
    assert!(log.body.contains("console.signin"), "{}", log.body);

    // The event stream, with rusectl's filters: the login's markup as text.
    let events = curl(&ca, &jar, "GET", &format!("{base}/events"), None);
    assert_eq!(events.status, 200);
    assert!(
        events.body.contains("decoy-login")
            && events.body.contains("user &lt;script&gt;window.pwned=1")
            && events.body.contains("data-live=\"/live/events?\""),
        "{}",
        events.body
    );
    let touches = curl(
        &ca,
        &jar,
        "GET",
        &format!("{base}/events?kind=touch&part=rows"),
        None,
    );
    assert_eq!(touches.body.trim(), "<p class=\"empty\">No events.</p>");
    let bad = curl(
        &ca,
        &jar,
        "GET",
        &format!("{base}/events?agent=%3Cx%3E"),
        None,
    );
    assert_eq!(bad.status, 400);
    assert!(
        bad.body.contains("agent &quot;&lt;x&gt;&quot;"),
        "{}",
        bad.body
    );

    // A campaign whose one agent is offline waits in its first wave; an
    // operator pauses it from the campaigns page.
    let ws_token = tc
        .token("role=workstation", 1, Duration::from_secs(600))
        .await;
    let mut ws = tc.spawn_agent(tc.agent_config("ws", &ws_token, ""));
    ws.connected().await;
    ws.stop().await.unwrap();
    tc.apply("kind: Campaign\nname: icu-desktops\nselector: {role: workstation}\nlures:\n  - {template: patient-csv}\n")
        .await;
    let campaigns = curl(&ca, &jar, "GET", &format!("{base}/campaigns"), None);
    assert_eq!(campaigns.status, 200);
    for expected in [
        "icu-desktops",
        "progressing",
        "files01",
        ">Pause<",
        "<progress",
    ] {
        assert!(
            campaigns.body.contains(expected),
            "{expected}: {}",
            campaigns.body
        );
    }
    let token = csrf(&campaigns.body);
    let paused = curl(
        &ca,
        &jar,
        "POST",
        &format!("{base}/campaigns/icu-desktops/pause"),
        Some(&format!("csrf={token}")),
    );
    assert_eq!(paused.status, 303, "{}", paused.body);
    assert_eq!(tc.campaign("icu-desktops").await.rollout_state, "paused");

    // The queue's filters, and the incident as STIX to share.
    let critical = curl(
        &ca,
        &jar,
        "GET",
        &format!("{base}/incidents?severity=critical"),
        None,
    );
    assert!(critical.body.contains(&incident.id));
    let other_agent = curl(
        &ca,
        &jar,
        "GET",
        &format!("{base}/incidents?agent=01m0000000000000000000000a"),
        None,
    );
    assert!(
        !other_agent.body.contains(&incident.id),
        "{}",
        other_agent.body
    );
    let stix = curl(&ca, &jar, "GET", &format!("{page_url}/stix"), None);
    assert_eq!(stix.status, 200);
    assert!(
        stix.headers.contains("content-type: application/stix+json")
            && stix.headers.contains("content-disposition: attachment"),
        "{}",
        stix.headers
    );
    let bundle: serde_json::Value = serde_json::from_str(&stix.body).unwrap();
    assert_eq!(bundle["type"], "bundle");

    // Acknowledge: refused without the CSRF token, done with it.
    let ack = format!("{page_url}/ack");
    let forged = curl(&ca, &jar, "POST", &ack, Some("csrf=guess"));
    assert_eq!(forged.status, 403);
    let token = csrf(&page.body);
    let done = curl(&ca, &jar, "POST", &ack, Some(&format!("csrf={token}")));
    assert_eq!(done.status, 303, "{}", done.body);
    let now = root
        .get_incident(pb::GetIncidentRequest {
            id: incident.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(now.status, "acknowledged");
    assert_eq!(now.acknowledged_by, "admin/alice");

    // A viewer sees no actions, and its forged POST is refused.
    let viewer_jar = dir.path().join("victor.jar");
    let url = link(&tc, "victor", pb::Role::Viewer).await;
    assert_eq!(curl(&ca, &viewer_jar, "GET", &url, None).status, 303);
    let seen = curl(&ca, &viewer_jar, "GET", &page_url, None);
    assert_eq!(seen.status, 200);
    assert!(
        !seen.body.contains("/resolve\"") && !seen.body.contains(">Resolve<"),
        "{}",
        seen.body
    );
    let token = csrf(&seen.body);
    let forged = curl(
        &ca,
        &viewer_jar,
        "POST",
        &format!("{page_url}/resolve"),
        Some(&format!("csrf={token}&note=closing")),
    );
    assert_eq!(forged.status, 403);

    // The audit log names who did what, via the console.
    let audit = tc.audit().await;
    let find = |actor: &str, action: &str, result: &str| {
        audit.iter().any(|r| {
            r.actor == actor
                && r.action == action
                && r.result.starts_with(result)
                && r.detail == "via console"
        })
    };
    assert!(find("admin/alice", "console.signin", "ok"), "{audit:#?}");
    assert!(find("admin/alice", "incident.ack", "ok"), "{audit:#?}");
    assert!(find("admin/alice", "rollout.pause", "ok"), "{audit:#?}");
    assert!(
        find(
            "admin/alice",
            "incident.ack",
            "refused: missing or wrong CSRF"
        ),
        "{audit:#?}"
    );
    assert!(
        find(
            "admin/victor",
            "incident.resolve",
            "refused: this needs the operator role"
        ),
        "{audit:#?}"
    );
    assert!(
        audit
            .iter()
            .any(|r| r.actor == "admin/alice" && r.action == "console.link"),
        "{audit:#?}"
    );

    // Revoking: a viewer may not end another's sessions; an admin may, and
    // the browser is signed out at once.
    let mut vic = tc.admin_as("vic2", pb::Role::Viewer).await;
    let refused = vic
        .revoke_console_sessions(pb::RevokeConsoleSessionsRequest {
            admin: "alice".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    let ended = root
        .revoke_console_sessions(pb::RevokeConsoleSessionsRequest {
            admin: "alice".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ended.sessions, 1);
    let after = curl(&ca, &jar, "GET", &format!("{base}/incidents"), None);
    assert_eq!(after.status, 401);
}

/// Headless Chromium through chromedriver (tests/clients/console_browser.py):
/// a decoy login (and, as root, the read of a planted honeyfile by a
/// process whose command line is markup) after the queue is open: the
/// queue shows the new incident without a reload within 2 s, the incident
/// page draws its path and shows the attacker's markup as text without
/// running it, an operator acknowledges it, a viewer sees no controls and
/// its forged POSTs are refused; the audit page names who acknowledged,
/// "via console". Screenshots of the incident, the queue and the fleet are
/// saved under the target directory's `console-screenshots/`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_headless_chromium_the_queue_is_live_and_markup_never_runs() {
    let test = "in_headless_chromium_the_queue_is_live";
    if !require_tool(test, "chromium") || !require_tool(test, "chromedriver") {
        return;
    }
    let python = ruse_e2e::test_venv().join("bin/python");
    let has_selenium = Command::new(&python)
        .args(["-c", "import selenium"])
        .status()
        .is_ok_and(|s| s.success());
    if !has_selenium {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{test} needs selenium in the test virtualenv; scripts/install-test-deps.sh installs it"
        );
        eprintln!("SKIPPED {test}: no selenium in {}", python.display());
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (tc, _ca) = console_controller(dir.path()).await;
    let (port, _decoy) = ftp_decoy(&tc).await;
    // As root the agent names the process behind a read: one whose command
    // line is markup reads a planted honeyfile.
    let touched = nix::unistd::geteuid().is_root();
    let ws = if touched {
        let token = tc
            .token("role=workstation", 1, Duration::from_secs(600))
            .await;
        let mut ws = tc.spawn_agent(tc.agent_config("ws", &token, ""));
        ws.connected().await;
        tc.apply("kind: Campaign\nname: exports\nselector: {role: workstation}\nlures:\n  - {template: patient-csv}\n")
            .await;
        ws.wait_lures(1, Duration::from_secs(20)).await;
        let file = ruse_e2e::planted_files(&ws.home().join("Documents/Exports"))
            .into_iter()
            .next()
            .unwrap();
        Some((ws, file))
    } else {
        eprintln!("not root: the command-line part of this test is left out");
        None
    };
    let operator = link(&tc, "olga", pb::Role::Operator).await;
    let viewer = link(&tc, "vic", pb::Role::Viewer).await;
    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/console_browser.py");
    let mut child = Command::new(&python)
        .arg(&script)
        .arg(&operator)
        .arg(&viewer)
        .arg(&shots)
        .arg(if touched { "yes" } else { "no" })
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (lines, seen) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            eprintln!("browser: {line}");
            if lines.send(line).is_err() {
                return;
            }
        }
    });
    let ready = seen.recv_timeout(Duration::from_secs(60)).unwrap();
    assert_eq!(ready, "READY");
    // The browser's clock starts at this line, before the trip: what it
    // measures is an upper bound.
    writeln!(child.stdin.take().unwrap(), "tripped").unwrap();
    ftp_login(port, PAYLOAD);
    if let Some((_, file)) = &ws {
        let read = Command::new("python3")
            .args(["-c", "import sys; open(sys.argv[1]).read()"])
            .arg(file)
            .arg("<script>window.pwned=3</script>")
            .status()
            .unwrap();
        assert!(read.success());
    }
    let status = child.wait().unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let said: Vec<String> = seen.try_iter().collect();
    assert!(
        status.success() && said.iter().any(|l| l == "OK"),
        "{status}: {said:?}"
    );
    for shot in ["incident.png", "queue.png", "fleet.png"] {
        let len = std::fs::metadata(shots.join(shot)).unwrap().len();
        assert!(len > 10_000, "{shot}: {len} bytes");
    }
}

/// The fleet page's drill button: the agent trips one of its lures for
/// real, and the streamed page shows every step and the verdict.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drill_from_the_fleet_page_shows_each_step_as_it_happens() {
    if !require_tool("a_drill_from_the_fleet_page", "curl") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (tc, ca) = console_controller(dir.path()).await;
    let token = tc
        .token("role=workstation", 1, Duration::from_secs(600))
        .await;
    let mut ws = tc.spawn_agent(tc.agent_config("ws", &token, ""));
    let agent = ws.connected().await;
    tc.apply("kind: Campaign\nname: drilled\nselector: {role: workstation}\nlures:\n  - {template: patient-csv}\n")
        .await;
    ws.wait_lures(1, Duration::from_secs(20)).await;
    let url = link(&tc, "dora", pb::Role::Operator).await;
    let (base, _) = url.split_once("/signin?t=").unwrap();
    let jar = dir.path().join("dora.jar");
    assert_eq!(curl(&ca, &jar, "GET", &url, None).status, 303);
    let fleet = curl(&ca, &jar, "GET", &format!("{base}/fleet"), None);
    assert!(fleet.body.contains(">Drill<"), "{}", fleet.body);
    let token = csrf(&fleet.body);
    let drill = curl(
        &ca,
        &jar,
        "POST",
        &format!("{base}/drill"),
        Some(&format!("csrf={token}&agent={agent}")),
    );
    assert_eq!(drill.status, 200);
    assert!(
        drill.body.contains("The drill passed.") && drill.body.contains("</html>"),
        "{}",
        drill.body
    );
    assert!(
        drill.body.matches("<li class=\"ok\">").count() >= 3,
        "{}",
        drill.body
    );
    // The drill's incident went to the file output.
    let outputs = curl(&ca, &jar, "GET", &format!("{base}/outputs"), None);
    assert!(
        outputs
            .body
            .contains("<td>archive</td><td>file</td><td>0</td><td>1</td>"),
        "{}",
        outputs.body
    );
    let audit = tc.audit().await;
    assert!(
        audit.iter().any(|r| r.actor == "admin/dora"
            && r.action == "drill.run"
            && r.result == "ok"
            && r.detail == "via console"),
        "{audit:#?}"
    );
}

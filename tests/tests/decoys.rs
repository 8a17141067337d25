//! Decoy services against the real clients an attacker (or a hospital
//! system) would use: a credential planted on one agent and used against a
//! decoy on another becomes a credential-use event naming the lure and the
//! agent it was stolen from; unknown credentials are recorded unmatched;
//! garbage, oversized and slow streams are cut off without harming anyone
//! else.
//!
//! The clients (`ssh`, `sshpass`, `curl`, `smbclient`, `echoscu`, `lftp`,
//! `python3`) are installed by scripts/install-test-deps.sh; without one a
//! test says it is skipped, and under `CI=true` it fails.
//!
//! Longer than our ~800 lines on purpose: one test binary per area: every
//! binary links the whole workspace, so splitting this one would add a link
//! step to every CI run; the tests share its real-client helpers.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use ruse_agent::decoys::Limits;
use ruse_e2e::{
    TestAgent, TestController, free_ports, pb, planted_files, require_tool, ssh_options,
};

const DECOY: &str = "pacs-archive02";

struct Ports {
    ssh: u16,
    http: u16,
    https: u16,
    smb: u16,
    dicom: u16,
    hl7: u16,
    ftp: u16,
    mysql: u16,
    telnet: u16,
    kube: u16,
    mssql: u16,
    rdp: u16,
    scan: u16,
}

/// A controller, a workstation agent with planted lures, and a decoy
/// agent running every decoy service on 127.0.0.1.
struct Range {
    tc: TestController,
    ws: TestAgent,
    ws_id: String,
    decoy_id: String,
    _decoy: TestAgent,
    ports: Ports,
}

const LURES: usize = 13;

impl Range {
    async fn start() -> Range {
        Self::start_with(Limits {
            read_timeout: Duration::from_secs(1),
            lifetime: Duration::from_secs(4),
        })
        .await
    }

    /// With the decoy agent's connection `limits`.
    async fn start_with(limits: Limits) -> Range {
        let tc = TestController::start().await;
        let p = free_ports(13);
        let ports = Ports {
            ssh: p[0],
            http: p[1],
            https: p[2],
            smb: p[3],
            dicom: p[4],
            hl7: p[5],
            ftp: p[6],
            scan: p[7],
            mysql: p[8],
            telnet: p[9],
            kube: p[10],
            mssql: p[11],
            rdp: p[12],
        };
        // Roles come from the tokens: an agent's own labels select nothing.
        let ws_token = tc
            .token("role=workstation", 1, Duration::from_secs(600))
            .await;
        let decoy_token = tc.token("role=decoy", 1, Duration::from_secs(600)).await;
        let mut ws = tc.spawn_agent(tc.agent_config("ws", &ws_token, ""));
        let mut config = tc.agent_config("decoyhost", &decoy_token, "");
        config.decoy_limits = limits;
        let mut decoy = tc.spawn_agent(config);
        let ws_id = ws.connected().await;
        let decoy_id = decoy.connected().await;
        // FTP refuses after 300 ms here: vsftpd's ~3 s would come close
        // to the 4 s connection lifetime this range sets.
        let manifest = format!(
            "kind: Decoy\nname: {DECOY}\nselector: {{role: decoy}}\naddress: 127.0.0.1\nlisten: 127.0.0.1\nservices:\n  - {{protocol: ssh, port: {}, refusal_delay: 300ms}}\n  - {{protocol: http, port: {}}}\n  - {{protocol: https, port: {}}}\n  - {{protocol: smb, port: {}}}\n  - {{protocol: dicom, port: {}}}\n  - {{protocol: hl7, port: {}}}\n  - {{protocol: ftp, port: {}, refusal_delay: 300ms}}\n  - {{protocol: portscan, port: {}}}\n  - {{protocol: mysql, port: {}}}\n  - {{protocol: telnet, port: {}, device: lab-analyser, refusal_delay: 300ms}}\n  - {{protocol: kube-apiserver, port: {}}}\n  - {{protocol: mssql, port: {}}}\n  - {{protocol: rdp, port: {}}}\n---\nkind: Campaign\nname: stolen\nselector: {{role: workstation}}\nlures:\n  - {{template: ssh-key, decoy: {DECOY}}}\n  - {{template: smb-credentials, decoy: {DECOY}}}\n  - {{template: pacs-config, decoy: {DECOY}}}\n  - {{template: netrc, decoy: {DECOY}}}\n  - {{template: pgpass}}\n  - {{template: env-file, decoy: {DECOY}}}\n  - {{template: kubeconfig, decoy: {DECOY}}}\n  - {{template: hl7-adt}}\n  - {{template: hosts-entry, decoy: {DECOY}}}\n  - {{template: mysql-credentials, decoy: {DECOY}}}\n  - {{template: mssql-connection, decoy: {DECOY}, params: {{app: lab-interface}}}}\n  - {{template: rdp-file, decoy: {DECOY}}}\n  - {{template: rdp-credentials, decoy: {DECOY}}}\n",
            ports.ssh,
            ports.http,
            ports.https,
            ports.smb,
            ports.dicom,
            ports.hl7,
            ports.ftp,
            ports.scan,
            ports.mysql,
            ports.telnet,
            ports.kube,
            ports.mssql,
            ports.rdp
        );
        tc.apply(&manifest).await;
        ws.wait_lures(LURES, Duration::from_secs(20)).await;
        let reached = matches!(
            tokio::time::timeout(
                Duration::from_secs(20),
                decoy.status.wait_for(|s| s.decoy_services == 13),
            )
            .await,
            Ok(Ok(_))
        );
        assert!(
            reached,
            "decoy services did not start: {:?}",
            *decoy.status.borrow()
        );
        Range {
            tc,
            ws,
            ws_id,
            decoy_id,
            _decoy: decoy,
            ports,
        }
    }

    fn home(&self) -> PathBuf {
        self.ws.home()
    }

    fn read(&self, rel: &str) -> String {
        let path = self.home().join(rel);
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    /// The lure of `template` planted on the workstation.
    async fn lure(&self, template: &str) -> pb::Lure {
        self.tc
            .lures(&self.ws_id, false)
            .await
            .into_iter()
            .find(|l| l.template == template)
            .unwrap_or_else(|| panic!("no {template} lure"))
    }

    /// Waits for an event of `kind` from the decoy agent that `pick` accepts.
    async fn event(&self, kind: &str, pick: impl Fn(&pb::LureEvent) -> bool) -> pb::LureEvent {
        let filter = pb::EventFilter {
            agent_id: self.decoy_id.clone(),
            kind: kind.into(),
            ..Default::default()
        };
        let start = Instant::now();
        loop {
            let events = self.tc.events(filter.clone()).await;
            if let Some(e) = events.iter().find(|e| pick(e)) {
                return e.clone();
            }
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "no matching {kind} event within 15s; have: {events:#?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The credential-use event of a `protocol` decoy service.
    async fn used(&self, protocol: &str) -> pb::LureEvent {
        self.event("credential-use", |e| {
            e.decoy.as_ref().is_some_and(|d| d.protocol == protocol)
        })
        .await
    }

    /// The unmatched login of `username`: recorded, attributed to no lure.
    async fn unmatched_login(&self, username: &str) -> pb::LureEvent {
        let e = self
            .event("decoy-login", |e| {
                e.credential
                    .as_ref()
                    .is_some_and(|c| c.username == username)
            })
            .await;
        assert!(
            e.lure_id.is_empty() && e.origin_agent_id.is_empty(),
            "{e:#?}"
        );
        e
    }

    /// Asserts `e` attributes the use to the workstation's `template` lure.
    async fn assert_credential_use(&self, e: &pb::LureEvent, template: &str, protocol: &str) {
        let lure = self.lure(template).await;
        assert_eq!(e.kind, "credential-use", "{e:#?}");
        assert_eq!(e.lure_id, lure.id, "{e:#?}");
        assert_eq!(e.template, template);
        assert_eq!(e.campaign, "stolen");
        assert_eq!(
            e.origin_agent_id, self.ws_id,
            "the lure's agent is where it was stolen"
        );
        assert_eq!(e.agent_id, self.decoy_id, "the decoy's agent reported it");
        let d = e.decoy.as_ref().unwrap();
        assert_eq!(d.name, DECOY);
        assert_eq!(d.protocol, protocol);
        assert_eq!(d.source_ip, "127.0.0.1");
        assert_ne!(d.source_port, 0);
        assert!(!e.matched_on.is_empty());
    }
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    eprintln!(
        "{cmd:?} -> {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `key value` or `key=value` of a planted file.
fn field(text: &str, key: &str) -> String {
    text.lines()
        .map(str::trim)
        .find_map(|l| {
            l.strip_prefix(key)
                .map(|rest| rest.trim_start_matches([' ', '=', ':']).trim().to_owned())
                .filter(|v| !v.is_empty())
        })
        .unwrap_or_else(|| panic!("no {key} in:\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssh_with_the_planted_key_and_a_planted_password_is_attributed() {
    let test = "ssh_with_the_planted_key_and_a_planted_password";
    if !require_tool(test, "ssh") || !require_tool(test, "sshpass") {
        return;
    }
    let r = Range::start().await;
    // The attacker reads ~/.ssh/config and uses the key it names.
    let config = r.read(".ssh/config");
    let user = field(&config, "User");
    assert_eq!(field(&config, "Port"), r.ports.ssh.to_string());
    let key = r.home().join(format!(".ssh/id_ed25519_{DECOY}"));
    let out = run(Command::new("ssh")
        .args(ssh_options(r.ports.ssh))
        .args(["-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-i"])
        .arg(&key)
        .arg(format!("{user}@127.0.0.1"))
        .arg("true"));
    assert!(!out.status.success(), "the decoy never grants access");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("Permission denied"), "{stderr}");
    let e = r.used("ssh").await;
    r.assert_credential_use(&e, "ssh-key", "ssh").await;
    let c = e.credential.unwrap();
    assert!(c.key_fingerprint.starts_with("SHA256:"), "{c:?}");
    assert_eq!(c.username, user);

    // A password from ~/.pgpass, tried on SSH (password reuse).
    let pgpass = r.read(".pgpass");
    let parts: Vec<&str> = pgpass.trim().split(':').collect();
    let (pg_user, pg_password) = (parts[3], parts[4]);
    let out = run(Command::new("sshpass")
        .args(["-p", pg_password, "ssh"])
        .args(ssh_options(r.ports.ssh))
        .args([
            "-o",
            "PreferredAuthentications=password",
            "-o",
            "PubkeyAuthentication=no",
        ])
        .arg(format!("{pg_user}@127.0.0.1"))
        .arg("true"));
    assert!(!out.status.success());
    let e = r
        .event("credential-use", |e| {
            e.credential
                .as_ref()
                .is_some_and(|c| c.username == pg_user && c.key_fingerprint.is_empty())
        })
        .await;
    r.assert_credential_use(&e, "pgpass", "ssh").await;
    assert_eq!(e.matched_on, "username and password");

    // A guess matches nothing, and the password is not kept.
    let out = run(Command::new("sshpass")
        .args(["-p", "Winter2026!", "ssh"])
        .args(ssh_options(r.ports.ssh))
        .args([
            "-o",
            "PreferredAuthentications=password",
            "-o",
            "PubkeyAuthentication=no",
        ])
        .arg("admin@127.0.0.1")
        .arg("true"));
    assert!(!out.status.success());
    let e = r
        .event("decoy-login", |e| {
            e.credential.as_ref().is_some_and(|c| c.username == "admin")
        })
        .await;
    assert!(e.lure_id.is_empty() && e.origin_agent_id.is_empty());
    let c = e.credential.unwrap();
    assert!(
        !c.password.contains("Winter"),
        "an unmatched password is redacted: {c:?}"
    );
    assert!(c.password.contains("11 characters"), "{c:?}");
}

fn curl(args: &[&str]) -> (String, String) {
    let out = run(Command::new("curl")
        .args(["-sS", "--max-time", "10", "-o", "-", "-w", "\n%{http_code}"])
        .args(args));
    assert!(out.status.success(), "curl failed");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (body.to_owned(), code.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_against_the_portal_and_fhir_endpoint_is_attributed() {
    if !require_tool("curl_against_the_portal_and_fhir_endpoint", "curl") {
        return;
    }
    let r = Range::start().await;
    let base = format!("http://127.0.0.1:{}", r.ports.http);

    // The login page and the FHIR CapabilityStatement look real.
    let (page, code) = curl(&[&format!("{base}/")]);
    assert_eq!(code, "200");
    assert!(
        page.contains("<form method=\"post\" action=\"/login\">"),
        "{page}"
    );
    let (meta, code) = curl(&[&format!("{base}/fhir/R4/metadata")]);
    assert_eq!(code, "200");
    let meta: serde_json::Value = serde_json::from_str(&meta).unwrap();
    assert_eq!(meta["resourceType"], "CapabilityStatement");
    assert_eq!(meta["fhirVersion"], "4.0.1");

    // Portal login with the database account from ~/.pgpass.
    let pgpass = r.read(".pgpass");
    let parts: Vec<&str> = pgpass.trim().split(':').collect();
    let (user, password) = (parts[3], parts[4]);
    let (page, code) = curl(&[
        "--data-urlencode",
        &format!("username={user}"),
        "--data-urlencode",
        &format!("password={password}"),
        &format!("{base}/login"),
    ]);
    assert_eq!(code, "401");
    assert!(page.contains("Invalid credentials"));
    let e = r
        .event("credential-use", |e| {
            e.credential.as_ref().is_some_and(|c| c.username == user)
        })
        .await;
    r.assert_credential_use(&e, "pgpass", "http").await;
    assert_eq!(e.matched_on, "username and password");

    // FHIR with the client id and secret from the .env file (basic auth).
    let env = std::fs::read_to_string(r.home().join("projects/ehr-integration/.env")).unwrap();
    let id = field(&env, "FHIR_CLIENT_ID");
    let secret = field(&env, "FHIR_CLIENT_SECRET");
    let (body, code) = curl(&[
        "-u",
        &format!("{id}:{secret}"),
        &format!("{base}/fhir/R4/Patient?name=smith"),
    ]);
    assert_eq!(code, "401");
    assert!(body.contains("OperationOutcome"));
    let e = r
        .event("credential-use", |e| e.template == "env-file")
        .await;
    r.assert_credential_use(&e, "env-file", "http").await;

    // The kubeconfig's bearer token, over HTTPS with the generated cert.
    let kube = std::fs::read_to_string(planted_files(&r.home().join(".kube")).remove(0)).unwrap();
    let token = field(&kube, "token");
    let (_, code) = curl(&[
        "-k",
        "-H",
        &format!("Authorization: Bearer {token}"),
        &format!(
            "https://127.0.0.1:{}/api/v1/namespaces/pacs/secrets",
            r.ports.https
        ),
    ]);
    assert_eq!(code, "401");
    let e = r
        .event("credential-use", |e| e.template == "kubeconfig")
        .await;
    r.assert_credential_use(&e, "kubeconfig", "https").await;
    assert_eq!(e.matched_on, "token");

    // The alias only the planted hosts entry knows, in the Host header.
    let hosts = std::fs::read_to_string(r.ws.root().join("etc/hosts")).unwrap();
    let alias = hosts
        .lines()
        .find(|l| l.contains(DECOY))
        .and_then(|l| l.split_whitespace().last())
        .unwrap()
        .to_owned();
    let (_, code) = curl(&["-H", &format!("Host: {alias}"), &format!("{base}/")]);
    assert_eq!(code, "200");
    let e = r
        .event("credential-use", |e| e.template == "hosts-entry")
        .await;
    r.assert_credential_use(&e, "hosts-entry", "http").await;

    // Unknown credentials: recorded, unmatched, password redacted.
    let (_, code) = curl(&[
        "-d",
        "username=jsmith&password=Password1",
        &format!("{base}/login"),
    ]);
    assert_eq!(code, "401");
    let e = r.unmatched_login("jsmith").await;
    assert!(!e.credential.unwrap().password.contains("Password1"));
    let (_, code) = curl(&[
        "-H",
        "Authorization: Bearer not-a-lure-token",
        &format!("{base}/fhir/R4/Patient"),
    ]);
    assert_eq!(code, "401");
    r.event("decoy-login", |e| {
        e.credential
            .as_ref()
            .is_some_and(|c| c.token == "not-a-lure-token")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smbclient_with_the_planted_smbcredentials_is_attributed() {
    if !require_tool("smbclient_with_the_planted_smbcredentials", "smbclient") {
        return;
    }
    let r = Range::start().await;
    let creds = r.home().join(".smbcredentials");
    let user = field(&std::fs::read_to_string(&creds).unwrap(), "username");
    let out = run(Command::new("smbclient")
        .arg("//127.0.0.1/PACS_Archive")
        .args(["-p", &r.ports.smb.to_string(), "-A"])
        .arg(&creds)
        .args(["-c", "ls"]));
    assert!(!out.status.success(), "the decoy never grants access");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("NT_STATUS_LOGON_FAILURE"), "{text}");
    let e = r.used("smb").await;
    r.assert_credential_use(&e, "smb-credentials", "smb").await;
    let c = e.credential.unwrap();
    assert_eq!(c.username.to_lowercase(), user.to_lowercase());
    assert_eq!(c.domain, "HOSPITAL");
    assert!(!c.workstation.is_empty(), "{c:?}");
    // The NTLMv2 response proves the planted password (checked at the
    // controller, never stored; the admin API has no field for it).
    assert_eq!(e.matched_on, "username and NTLMv2 response");

    // The planted user with another password: still the stolen name, but
    // only the name matched.
    let out = run(Command::new("smbclient")
        .arg("//127.0.0.1/PACS_Archive")
        .args(["-p", &r.ports.smb.to_string(), "-U"])
        .arg(format!("HOSPITAL/{user}%not-the-password"))
        .args(["-c", "ls"]));
    assert!(!out.status.success());
    let e = r
        .event("credential-use", |e| e.matched_on == "username")
        .await;
    r.assert_credential_use(&e, "smb-credentials", "smb").await;

    let out = run(Command::new("smbclient").arg("//127.0.0.1/C$").args([
        "-p",
        &r.ports.smb.to_string(),
        "-U",
        "EVILCORP/intruder%guess",
        "-c",
        "ls",
    ]));
    assert!(!out.status.success());
    let e = r.unmatched_login("intruder").await;
    assert_eq!(e.credential.unwrap().domain, "EVILCORP");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echoscu_with_the_planted_ae_title_is_attributed() {
    if !require_tool("echoscu_with_the_planted_ae_title", "echoscu") {
        return;
    }
    let r = Range::start().await;
    let nodes = r.read(".config/pacs-viewer/nodes.ini");
    let calling = field(&nodes, "CallingAETitle");
    let called = nodes
        .lines()
        .skip_while(|l| !l.starts_with("[Node:"))
        .find_map(|l| l.strip_prefix("AETitle="))
        .unwrap()
        .to_owned();
    assert_eq!(field(&nodes, "Port"), "11112", "the local port comes first");
    // C-ECHO succeeds: the archive answers like a real one.
    let out = run(Command::new("echoscu").args([
        "-aet",
        &calling,
        "-aec",
        &called,
        "127.0.0.1",
        &r.ports.dicom.to_string(),
    ]));
    assert!(
        out.status.success(),
        "echoscu against the decoy archive failed"
    );
    let e = r.used("dicom").await;
    r.assert_credential_use(&e, "pacs-config", "dicom").await;
    assert_eq!(e.matched_on, "calling AE title");
    let c = e.credential.unwrap();
    assert_eq!(
        (c.ae_title.as_str(), c.called_ae_title.as_str()),
        (calling.as_str(), called.as_str())
    );

    // A stranger is reported; called to the archive's AE title it is
    // accepted, called to another it is rejected, as an archive does.
    let out = run(Command::new("echoscu").args([
        "-aet",
        "STRANGER",
        "-aec",
        &called,
        "127.0.0.1",
        &r.ports.dicom.to_string(),
    ]));
    assert!(out.status.success());
    let e = r
        .event("decoy-login", |e| {
            e.credential
                .as_ref()
                .is_some_and(|c| c.ae_title == "STRANGER")
        })
        .await;
    assert!(e.lure_id.is_empty());
    assert!(
        e.detail.contains("1.2.840.10008.1.1"),
        "presentation contexts: {}",
        e.detail
    );
    let out = run(Command::new("echoscu").args([
        "-aet",
        "SCANNER",
        "-aec",
        "ANY-SCP",
        "127.0.0.1",
        &r.ports.dicom.to_string(),
    ]));
    assert!(!out.status.success());
    let said =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("Called AE Title Not Recognized"),
        "echoscu: {said}"
    );
    let e = r
        .event("decoy-login", |e| {
            e.credential
                .as_ref()
                .is_some_and(|c| c.ae_title == "SCANNER")
        })
        .await;
    assert!(
        e.detail
            .ends_with("rejected: called AE title not recognized"),
        "{}",
        e.detail
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_adt_message_from_the_planted_hl7_file_is_attributed() {
    if !require_tool("an_adt_message_from_the_planted_hl7_file", "python3") {
        return;
    }
    let r = Range::start().await;
    let dir = r.home().join("Documents/HL7");
    let file = planted_files(&dir).remove(0);
    let out = run(Command::new("python3")
        .arg(mllp_client())
        .args(["127.0.0.1", &r.ports.hl7.to_string()])
        .arg(&file));
    assert!(out.status.success(), "every message is ACKed (MSA|AA)");
    let e = r.used("hl7").await;
    r.assert_credential_use(&e, "hl7-adt", "hl7").await;
    assert_eq!(e.matched_on, "HL7 sending application");
    assert!(e.detail.starts_with("ADT^A01"), "{}", e.detail);

    let other = r.tc.dir.path().join("other.hl7");
    std::fs::write(
        &other,
        "MSH|^~\\&|LABSYS|OTHERHOSP|EHR|GENHOSP|20261128101500||ORU^R01^ORU_R01|X1|P|2.5.1\rPID|1||123^^^OTHERHOSP^MR\r\n",
    )
    .unwrap();
    let out = run(Command::new("python3")
        .arg(mllp_client())
        .args(["127.0.0.1", &r.ports.hl7.to_string()])
        .arg(&other));
    assert!(out.status.success());
    let e = r
        .event("decoy-message", |e| {
            e.credential
                .as_ref()
                .is_some_and(|c| c.application == "LABSYS")
        })
        .await;
    assert!(e.lure_id.is_empty());
}

fn mllp_client() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/mllp_send.py")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lftp_with_the_planted_netrc_is_attributed() {
    if !require_tool("lftp_with_the_planted_netrc", "lftp") {
        return;
    }
    let r = Range::start().await;
    let netrc = r.read(".netrc");
    let user = field(&netrc, "login");
    // lftp reads ~/.netrc itself: the attacker only names the host.
    let out = run(Command::new("lftp")
        .env("HOME", r.home())
        .args([
            "-c",
            &format!(
                "set net:max-retries 1; set net:timeout 5; set cmd:fail-exit yes; open -p {} 127.0.0.1; ls",
                r.ports.ftp
            ),
        ]));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("530"), "{stderr}");
    let e = r.used("ftp").await;
    r.assert_credential_use(&e, "netrc", "ftp").await;
    assert_eq!(e.credential.unwrap().username, user);

    let out = run(Command::new("lftp").args([
        "-c",
        &format!(
            "set net:max-retries 1; set net:timeout 5; set cmd:fail-exit yes; open -u anonymous,guest@ -p {} 127.0.0.1; ls",
            r.ports.ftp
        ),
    ]));
    assert!(!out.status.success());
    r.unmatched_login("anonymous").await;
}

/// The MariaDB client with the planted `~/.my.cnf` logs in with
/// `mysql_native_password`: the decoy's scramble and the client's response
/// prove the planted password (the controller checks them; neither is
/// stored), and the client shows MariaDB's error 1045. A wrong password is
/// a login with no match.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_with_the_planted_my_cnf_is_attributed() {
    if !require_tool("mysql_with_the_planted_my_cnf", "mysql") {
        return;
    }
    let r = Range::start().await;
    let cnf = r.read(".my.cnf");
    let user = field(&cnf, "user");
    assert!(cnf.contains(&format!("port = {}", r.ports.mysql)), "{cnf}");
    // The client reads ~/.my.cnf itself: the attacker types only `mysql`.
    let out = run(Command::new("mysql").env("HOME", r.home()).args([
        "--protocol=tcp",
        "--connect-timeout=5",
        "-e",
        "show databases",
    ]));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "ERROR 1045 (28000): Access denied for user '{user}'@'localhost' (using password: YES)"
        )),
        "{stderr}"
    );
    let e = r.used("mysql").await;
    r.assert_credential_use(&e, "mysql-credentials", "mysql")
        .await;
    assert_eq!(e.matched_on, "username and MySQL auth response");
    let c = e.credential.unwrap();
    assert_eq!(c.username, user);
    assert!(c.password.is_empty(), "the decoy never sees the password");
    assert!(c.client.contains("program_name=mysql"), "{c:?}");

    // Someone else's login: recorded, matching nothing.
    let port = r.ports.mysql.to_string();
    let out = run(Command::new("mysql").args([
        "--no-defaults",
        "--protocol=tcp",
        "-h",
        "127.0.0.1",
        "-P",
        &port,
        "-u",
        "dba",
        "-pguess",
        "-e",
        "select 1",
    ]));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("ERROR 1045"));
    r.unmatched_login("dba").await;
}

/// `telnet`, driven by `expect` as a person types, logs in to the lab
/// analyser's console with the planted `.netrc` login: its banner and
/// prompts, `Login incorrect`, and a credential-use naming the lure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telnet_with_a_planted_login_is_attributed() {
    let test = "telnet_with_a_planted_login_is_attributed";
    if !(require_tool(test, "telnet") && require_tool(test, "expect")) {
        return;
    }
    let r = Range::start().await;
    let netrc = r.read(".netrc");
    let (user, password) = (field(&netrc, "login"), field(&netrc, "password"));
    let script = format!(
        "set timeout 10\n\
         spawn telnet 127.0.0.1 {port}\n\
         expect \"LabCore LC-2400\" {{}} timeout {{ exit 2 }}\n\
         expect \"{DECOY} login: \" {{}} timeout {{ exit 3 }}\n\
         send \"{user}\\r\"\n\
         expect \"Password: \" {{}} timeout {{ exit 4 }}\n\
         send \"{password}\\r\"\n\
         expect \"Login incorrect\" {{}} timeout {{ exit 5 }}\n\
         expect \"{DECOY} login: \" {{ exit 0 }} timeout {{ exit 6 }} eof {{ exit 7 }}\n",
        port = r.ports.telnet
    );
    let out = run(Command::new("expect").args(["-c", &script]));
    assert!(
        out.status.success(),
        "expect exited {:?}: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout)
    );
    let e = r.used("telnet").await;
    r.assert_credential_use(&e, "netrc", "telnet").await;
    assert_eq!(e.matched_on, "username and password");
    assert_eq!(e.credential.unwrap().username, user);
}

/// `kubectl` with the planted kubeconfig, which names the decoy's
/// Kubernetes API: the token is refused as a real API server refuses it
/// and attributed to the workstation; anonymous requests get the version
/// and `403 Forbidden` as `system:anonymous`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_with_the_planted_kubeconfig_is_attributed() {
    if !require_tool("kubectl_with_the_planted_kubeconfig", "kubectl") {
        return;
    }
    let r = Range::start().await;
    let path = planted_files(&r.home().join(".kube")).remove(0);
    let kube = std::fs::read_to_string(&path).unwrap();
    assert!(
        kube.contains(&format!("server: https://127.0.0.1:{}", r.ports.kube)),
        "{kube}"
    );
    let out = run(Command::new("kubectl")
        .env("HOME", r.home())
        .arg("--kubeconfig")
        .arg(&path)
        .args(["get", "pods", "--request-timeout=5s"]));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("You must be logged in to the server"),
        "{stderr}"
    );
    let e = r.used("kube-apiserver").await;
    r.assert_credential_use(&e, "kubeconfig", "kube-apiserver")
        .await;
    assert_eq!(e.matched_on, "token");
    let c = e.credential.unwrap();
    assert!(c.client.starts_with("kubectl"), "the client named: {c:?}");

    let base = format!("https://127.0.0.1:{}", r.ports.kube);
    let (body, code) = curl(&["-k", &format!("{base}/version")]);
    assert_eq!(code, "200");
    let version: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(version["gitVersion"].as_str().unwrap().starts_with("v1."));
    let (body, code) = curl(&["-k", &format!("{base}/api/v1/secrets")]);
    assert_eq!(code, "403");
    assert!(
        body.contains(r#"User \"system:anonymous\" cannot get path \"/api/v1/secrets\""#),
        "{body}"
    );
}

/// FreeTDS's `tsql` with the SQL login from the planted `appsettings.json`
/// connection string: SQL Server's error 18456 shown to the client, the
/// password revealed from TDS's hiding and matched, the workstation and
/// application named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tsql_with_the_planted_connection_string_is_attributed() {
    if !require_tool("tsql_with_the_planted_connection_string", "tsql") {
        return;
    }
    let r = Range::start().await;
    let settings: serde_json::Value =
        serde_json::from_str(&r.read("projects/lab-interface/appsettings.json")).unwrap();
    let connection = settings["ConnectionStrings"]["Reporting"]
        .as_str()
        .unwrap()
        .to_owned();
    let part = |key: &str| {
        connection
            .split(';')
            .find_map(|p| p.strip_prefix(&format!("{key}=")))
            .unwrap()
            .to_owned()
    };
    assert_eq!(
        part("Server"),
        format!("tcp:127.0.0.1,{}", r.ports.mssql),
        "{connection}"
    );
    let (user, password) = (part("User Id"), part("Password"));
    assert!(r.read(".odbc.ini").contains(&format!("UID = {user}")));
    // What tsql prints logging in as `user` with `password` (and FreeTDS's
    // configuration from `conf`, when given).
    let tsql = |user: &str, password: &str, conf: Option<&Path>| {
        let mut cmd = Command::new("tsql");
        if let Some(conf) = conf {
            cmd.env("FREETDSCONF", conf);
        }
        let port = r.ports.mssql.to_string();
        cmd.args(["-H", "127.0.0.1", "-p", &port, "-U", user, "-P", password])
            .stdin(std::process::Stdio::null());
        let out = run(&mut cmd);
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    };
    let text = tsql(&user, &password, None);
    assert!(
        text.contains(&format!("Login failed for user '{user}'.")) && text.contains("18456"),
        "{text}"
    );
    let e = r.used("mssql").await;
    r.assert_credential_use(&e, "mssql-connection", "mssql")
        .await;
    assert_eq!(e.matched_on, "username and password");
    assert!(
        e.detail.contains("login encrypted"),
        "FreeTDS's default: {e:?}"
    );
    let c = e.credential.unwrap();
    assert_eq!(c.username, user);
    assert!(c.client.contains("TSQL"), "{c:?}");
    assert!(!c.workstation.is_empty(), "{c:?}");

    // A client that requires encryption: everything inside TLS, the
    // refusal too.
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("freetds.conf");
    std::fs::write(&conf, "[global]\n\tencryption = require\n").unwrap();
    let text = tsql("sa", "guess", Some(&conf));
    assert!(text.contains("Login failed for user 'sa'."), "{text}");
    let e = r.unmatched_login("sa").await;
    assert!(
        e.detail.ends_with("encrypted") && !e.detail.contains("login encrypted"),
        "{e:?}"
    );
}

/// FreeRDP (`xfreerdp /auth-only`, on a virtual X display) opening the
/// planted `.rdp` file: its planted user name names the lure; with the
/// login from the planted note, Network Level Authentication's NTLMv2
/// response proves the planted password. FreeRDP reports the logon
/// failure a Windows server gives. A wrong password is recorded unmatched; a client that only
/// negotiates is recorded as a connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xfreerdp_with_the_planted_rdp_file_and_password_is_attributed() {
    let test = "xfreerdp_with_the_planted_rdp_file_and_password";
    if !require_tool(test, "xfreerdp") || !require_tool(test, "xvfb-run") {
        return;
    }
    let r = Range::start().await;
    let rdp_file = r.home().join(format!("Desktop/{DECOY}.rdp"));
    let note = r.read("Documents/remote-desktop-logins.txt");
    let login = field(&note, "user:");
    let (domain, user) = login.split_once('\\').unwrap();
    let password = field(&note, "password:");
    let xfreerdp = |args: &[&str]| {
        let out = run(Command::new("xvfb-run")
            .args(["-a", "xfreerdp"])
            .args(args)
            .args(["/auth-only", "/cert:ignore", "/timeout:10000"])
            .stdin(std::process::Stdio::null()));
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    };
    // The .rdp file alone: its user name is planted, a password guessed.
    let file = rdp_file.to_str().unwrap();
    let text = xfreerdp(&[file, "/p:Winter2024!"]);
    assert!(text.contains("ERRCONNECT_LOGON_FAILURE"), "{text}");
    let e = r
        .event("credential-use", |e| e.template == "rdp-file")
        .await;
    r.assert_credential_use(&e, "rdp-file", "rdp").await;
    assert_eq!(e.matched_on, "username");

    // The file with the login from the note: the password proved.
    let text = xfreerdp(&[
        file,
        &format!("/u:{user}"),
        &format!("/d:{domain}"),
        &format!("/p:{password}"),
    ]);
    assert!(text.contains("ERRCONNECT_LOGON_FAILURE"), "{text}");
    let e = r
        .event("credential-use", |e| e.template == "rdp-credentials")
        .await;
    r.assert_credential_use(&e, "rdp-credentials", "rdp").await;
    assert_eq!(e.matched_on, "username and NTLMv2 response");
    let c = e.credential.clone().unwrap();
    assert_eq!((c.username.as_str(), c.domain.as_str()), (user, domain));
    assert!(!c.workstation.is_empty(), "{c:?}");
    assert!(e.detail.contains("over CredSSP"), "{e:?}");

    let port = format!("/v:127.0.0.1:{}", r.ports.rdp);
    let text = xfreerdp(&[&port, "/u:nurse.station", "/d:WARD3", "/p:Guess123"]);
    assert!(text.contains("ERRCONNECT_LOGON_FAILURE"), "{text}");
    let e = r.unmatched_login("nurse.station").await;
    assert_eq!(e.credential.unwrap().domain, "WARD3");

    // A scanner's negotiation, and nothing after it.
    let mut s = TcpStream::connect(("127.0.0.1", r.ports.rdp)).unwrap();
    std::io::Write::write_all(&mut s, RDP_REQUEST).unwrap();
    let mut cc = [0u8; 19];
    s.read_exact(&mut cc).unwrap();
    assert_eq!(cc[11..], [2, 0x1f, 8, 0, 2, 0, 0, 0], "CredSSP chosen");
    drop(s);
    let e = r
        .event("decoy-connection", |e| {
            e.detail.contains("negotiation only")
        })
        .await;
    assert!(e.detail.contains("\"nmap\""), "{e:?}");
}

/// nmap's service detection names the new decoys as the servers they
/// imitate: MariaDB, BusyBox's telnetd, SQL Server 2019, Windows Remote
/// Desktop; the Kubernetes API as TLS (see docs/security.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nmap_service_detection_names_the_new_decoys() {
    if !require_tool("nmap_service_detection_names_the_new_decoys", "nmap") {
        return;
    }
    // A decoy's usual patience: nmap waits 6 s for a banner before its
    // TLS probes, longer than the range's 1 s read timeout.
    let r = Range::start_with(Limits::default()).await;
    // Two scans at once: SQL Server's and Remote Desktop's probes are rare
    // (7) off ports 1433 and 3389, and at that intensity the TLS port alone
    // would take a minute and a half.
    let scan = |ports: String, intensity: &'static str| {
        std::thread::spawn(move || {
            let out = run(Command::new("nmap").args([
                "-sV",
                "-Pn",
                "-n",
                "--version-intensity",
                intensity,
                "-p",
                &ports,
                "127.0.0.1",
            ]));
            String::from_utf8_lossy(&out.stdout).into_owned()
        })
    };
    let common = scan(
        format!("{},{},{}", r.ports.mysql, r.ports.telnet, r.ports.kube),
        "5",
    );
    let rare = scan(format!("{},{}", r.ports.mssql, r.ports.rdp), "7");
    let text = common.join().unwrap() + &rare.join().unwrap();
    let line = |port: u16| {
        text.lines()
            .find(|l| l.starts_with(&format!("{port}/tcp")))
            .unwrap_or_else(|| panic!("{text}"))
            .to_owned()
    };
    for (port, expected) in [
        (r.ports.mysql, "MySQL 5.5.5-10.11.19-MariaDB"),
        (r.ports.telnet, "BusyBox telnetd"),
        (r.ports.kube, "ssl/"),
        (r.ports.mssql, "Microsoft SQL Server 2019"),
        (r.ports.rdp, "ms-wbt-server"),
    ] {
        let l = line(port);
        assert!(l.contains("open") && l.contains(expected), "{l}");
    }
    // nmap 7.93 has no signature of a current API server (its Kubernetes
    // ones are a 2016 discovery document and the basic-auth realm of
    // releases before 1.19), so it prints what the port said: the API
    // server's 403 for `system:anonymous`, as a real one answers it.
    let fingerprint: String = text
        .lines()
        .filter(|l| l.starts_with("SF"))
        .map(|l| l.strip_prefix("SF:").unwrap_or(l))
        .collect();
    assert!(
        fingerprint.contains(&format!("SF-Port{}-TCP", r.ports.kube))
            && fingerprint.contains("system:anonymous"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_scan_is_reported_once_per_source() {
    let r = Range::start().await;
    for _ in 0..5 {
        let mut s = TcpStream::connect(("127.0.0.1", r.ports.scan)).unwrap();
        let mut buf = [0u8; 16];
        // The port accepts and closes.
        let n = s.read(&mut buf).unwrap_or(0);
        assert_eq!(n, 0);
    }
    let e = r.event("portscan", |_| true).await;
    assert_eq!(e.decoy.unwrap().port, u32::from(r.ports.scan));
    // Give any duplicates time to arrive, then count.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let all =
        r.tc.events(pb::EventFilter {
            kind: "portscan".into(),
            ..Default::default()
        })
        .await;
    assert_eq!(all.len(), 1, "one report per source per window: {all:#?}");
}

/// Connects from `source` (another loopback address) to `port`.
async fn connect_from(source: &str, port: u16) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    socket
        .connect(SocketAddr::from(([127, 0, 0, 1], port)))
        .await
        .unwrap()
}

/// Whether the server closed (or reset) the connection within `within`,
/// reading (and discarding) whatever it sends meanwhile.
async fn closed_within(s: &mut tokio::net::TcpStream, within: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

/// Sends `bytes` (ignoring a reset: the server may close mid-write).
async fn send(s: &mut tokio::net::TcpStream, bytes: &[u8]) {
    use tokio::io::AsyncWriteExt;
    let _ = s.write_all(bytes).await;
}

/// A DICOM A-ASSOCIATE-RQ for Verification.
fn associate_rq(calling: &str) -> Vec<u8> {
    use dicom_ul::pdu::{AssociationRQ, PresentationContextProposed, UserVariableItem};
    let pdu = dicom_ul::Pdu::AssociationRQ(AssociationRQ {
        protocol_version: 1,
        calling_ae_title: calling.into(),
        called_ae_title: ruse_proto::types::dicom_ae_title(DECOY),
        application_context_name: "1.2.840.10008.3.1.1.1".into(),
        presentation_contexts: vec![PresentationContextProposed {
            id: 1,
            abstract_syntax: "1.2.840.10008.1.1".into(),
            transfer_syntaxes: vec!["1.2.840.10008.1.2".into()],
        }],
        user_variables: vec![UserVariableItem::MaxLength(16384)],
    });
    let mut out = Vec::new();
    dicom_ul::write_pdu(&mut out, &pdu).unwrap();
    out
}

/// An SMB2 NEGOTIATE in its NetBIOS frame.
fn smb2_negotiate() -> Vec<u8> {
    let mut msg = b"\xfeSMB".to_vec();
    msg.extend_from_slice(&64u16.to_le_bytes());
    msg.extend_from_slice(&[0; 58]);
    msg.extend_from_slice(&36u16.to_le_bytes());
    msg.extend_from_slice(&2u16.to_le_bytes());
    msg.extend_from_slice(&[0; 32]);
    msg.extend_from_slice(&0x0202u16.to_le_bytes());
    msg.extend_from_slice(&0x0210u16.to_le_bytes());
    let mut framed = (msg.len() as u32).to_be_bytes().to_vec();
    framed.extend_from_slice(&msg);
    framed
}

/// nmap's RDP connection request (TLS or CredSSP, cookie `nmap`).
const RDP_REQUEST: &[u8] =
    b"\x03\0\0*%\xe0\0\0\0\0\0Cookie: mstshash=nmap\r\n\x01\0\x08\0\x03\0\0\0";

const ADT: &[u8] = b"\x0bMSH|^~\\&|REG|HOSP|EHR|HOSP|20261128101500||ADT^A01^ADT_A01|C1|P|2.5.1\rPID|1||1^^^HOSP^MR\r\x1c\x0d";

/// Whether the service on `port` still answers a well-behaved client from
/// 127.0.0.1 correctly.
async fn answers(protocol: &str, port: u16) -> bool {
    use tokio::io::AsyncReadExt;
    let mut s = connect_from("127.0.0.1", port).await;
    let request: Vec<u8> = match protocol {
        "http" => b"GET / HTTP/1.1\r\nHost: pacs\r\nConnection: close\r\n\r\n".to_vec(),
        "hl7" => ADT.to_vec(),
        "smb" => smb2_negotiate(),
        "dicom" => associate_rq("HEALTHY"),
        "rdp" => RDP_REQUEST.to_vec(),
        _ => Vec::new(),
    };
    send(&mut s, &request).await;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let expect: &[u8] = match protocol {
        "ssh" => b"SSH-2.0-OpenSSH_9.2p1",
        "ftp" => b"220 ",
        "http" => b"HTTP/1.1 200 OK",
        "hl7" => b"MSA|AA|C1",
        "smb" => b"\xfeSMB",
        // A-ASSOCIATE-AC.
        "dicom" => &[0x02, 0x00],
        // An X.224 connection confirm.
        "rdp" => b"\x03\0\0\x13\x0e\xd0",
        "mysql" => b"10.11.19-MariaDB",
        other => panic!("no check for {other}"),
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
        if got.windows(expect.len()).any(|w| w == expect) {
            return true;
        }
    }
    eprintln!(
        "{protocol} on {port} answered {:?}",
        String::from_utf8_lossy(&got)
    );
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_oversized_and_slow_streams_are_cut_off_without_harming_others() {
    let r = Range::start().await;
    let p = &r.ports;
    let services = [
        ("ssh", p.ssh),
        ("http", p.http),
        ("smb", p.smb),
        ("dicom", p.dicom),
        ("hl7", p.hl7),
        ("ftp", p.ftp),
        ("rdp", p.rdp),
        ("mysql", p.mysql),
    ];
    let garbage: Vec<u8> = (0..65_536u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();

    // Garbage: every service hangs up promptly.
    for (protocol, port) in services {
        let mut s = connect_from("127.0.0.1", port).await;
        send(&mut s, &garbage).await;
        assert!(
            closed_within(&mut s, Duration::from_secs(5)).await,
            "{protocol} kept a garbage stream open"
        );
    }

    // Oversized frames and lines: refused from the header, or at the bound.
    let mut huge_line = b"USER ".to_vec();
    huge_line.extend(std::iter::repeat_n(b'a', 100_000));
    let mut huge_hl7 = vec![0x0b];
    huge_hl7.extend(std::iter::repeat_n(b'A', 200_000));
    let mut huge_header = b"GET / HTTP/1.1\r\nX-Pad: ".to_vec();
    huge_header.extend(std::iter::repeat_n(b'a', 200_000));
    let mut huge_banner = b"SSH-2.0-".to_vec();
    huge_banner.extend(std::iter::repeat_n(b'x', 200_000));
    let oversized: Vec<(&str, u16, Vec<u8>)> = vec![
        (
            "smb",
            p.smb,
            vec![0x00, 0xff, 0xff, 0xff, 0xfe, b'S', b'M', b'B'],
        ),
        (
            "dicom",
            p.dicom,
            vec![0x01, 0x00, 0x7f, 0xff, 0xff, 0xff, 0x00, 0x01],
        ),
        ("hl7", p.hl7, huge_hl7),
        ("ftp", p.ftp, huge_line),
        ("http", p.http, huge_header),
        ("ssh", p.ssh, huge_banner),
        // A TPKT that claims 64 KiB.
        ("rdp", p.rdp, vec![0x03, 0x00, 0xff, 0xff, 0x02, 0xf0]),
    ];
    for (protocol, port, bytes) in oversized {
        let mut s = connect_from("127.0.0.1", port).await;
        send(&mut s, &bytes).await;
        assert!(
            closed_within(&mut s, Duration::from_secs(5)).await,
            "{protocol} kept an oversized stream open"
        );
    }

    // Slow-loris from 127.0.0.2: 20 connections per service, each
    // dribbling a valid-looking prefix one byte at a time.
    let prefixes: Vec<(&str, u16, Vec<u8>)> = vec![
        ("ssh", p.ssh, b"SSH-2.0-OpenSSH_9.6\r\n".to_vec()),
        (
            "http",
            p.http,
            b"GET / HTTP/1.1\r\nHost: pacs\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
                .to_vec(),
        ),
        ("smb", p.smb, smb2_negotiate()),
        ("dicom", p.dicom, associate_rq("SLOWLORIS")),
        ("hl7", p.hl7, ADT[..ADT.len() - 2].to_vec()),
        (
            "ftp",
            p.ftp,
            b"USER aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa".to_vec(),
        ),
        ("rdp", p.rdp, RDP_REQUEST.to_vec()),
    ];
    let mut slow = Vec::new();
    for (protocol, port, prefix) in &prefixes {
        for _ in 0..20 {
            let mut s = connect_from("127.0.0.2", *port).await;
            let prefix = prefix.clone();
            let protocol = protocol.to_string();
            slow.push(tokio::spawn(async move {
                let start = Instant::now();
                for byte in prefix.iter().cycle().take(200) {
                    use tokio::io::AsyncWriteExt;
                    if s.write_all(&[*byte]).await.is_err() {
                        break;
                    }
                    // Faster than the read timeout: only the lifetime ends it.
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    if closed_within(&mut s, Duration::from_millis(1)).await {
                        break;
                    }
                }
                (protocol, start.elapsed())
            }));
        }
    }
    // Meanwhile every service answers others normally.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for (protocol, port) in services {
        assert!(
            answers(protocol, port).await,
            "{protocol} stopped answering during a slow-loris"
        );
    }
    // And every slow connection is cut: past the per-source cap at once,
    // the rest at the connection lifetime (4 s in this range).
    for task in slow {
        let (protocol, lasted) = task.await.unwrap();
        assert!(
            lasted < Duration::from_secs(8),
            "a slow {protocol} connection lasted {lasted:?}"
        );
    }
    // A connection that sends nothing is closed at the read timeout (1 s).
    for (protocol, port) in services
        .into_iter()
        // Those that greet first wait as their servers do (MariaDB 10 s).
        .filter(|(p, _)| !["ssh", "ftp", "mysql"].contains(p))
    {
        let mut s = connect_from("127.0.0.1", port).await;
        let start = Instant::now();
        assert!(
            closed_within(&mut s, Duration::from_secs(4)).await,
            "{protocol} kept a silent connection"
        );
        assert!(
            start.elapsed() >= Duration::from_millis(900),
            "{protocol} closed before the read timeout"
        );
    }
    // The decoy agent is still healthy and still reporting.
    for (protocol, port) in services {
        assert!(
            answers(protocol, port).await,
            "{protocol} stopped answering after the abuse"
        );
    }
    let view = r.tc.agent_view(&r.decoy_id).await;
    assert_eq!(view.state, pb::AgentState::Online as i32, "{view:#?}");
    assert!(view.problems.is_empty(), "{view:#?}");
}

//! Incidents: a scripted attack becomes one incident with its attack path
//! and ATT&CK ids; outputs deliver it (a real rsyslogd, a webhook that is
//! down at first); drills pass or name the output that failed; the STIX
//! export has the shape STIX 2.1 requires.
//!
//! `ssh` and `rsyslogd` are installed by scripts/install-test-deps.sh;
//! without them those tests say they are skipped, and under `CI=true` they
//! fail.
//!
//! Longer than our ~800 lines on purpose: one test binary per area: every
//! binary links the whole workspace, so splitting this one would add a link
//! step to every CI run; the tests share its attack helpers.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use ruse_controller::config::OutputConfig;
use ruse_controller::store::{EventScan, PgOptions, PgStore, SledStore, Store};
use ruse_e2e::postgres::Postgres;
use ruse_e2e::{
    TestAgent, TestController, eventually, free_ports, pb, planted_files, require_tool,
};
use ruse_proto::types::UnixMs;

const DECOY: &str = "pacs-archive02";

/// A workstation with a patient export and an SSH key that leads to a
/// decoy running SSH and DICOM on another agent.
struct Hospital {
    tc: TestController,
    ws: TestAgent,
    ws_id: String,
    decoy_id: String,
    _decoy: TestAgent,
    ssh_port: u16,
    dicom_port: u16,
}

impl Hospital {
    /// Acknowledges incident `id` as the root admin.
    async fn ack(&self, id: &str) {
        self.tc
            .root()
            .await
            .ack_incident(pb::AckIncidentRequest { id: id.to_owned() })
            .await
            .unwrap();
    }

    /// Resolves incident `id` as the root admin.
    async fn resolve(&self, id: &str, note: &str) {
        self.tc
            .root()
            .await
            .resolve_incident(pb::ResolveIncidentRequest {
                id: id.to_owned(),
                note: note.to_owned(),
            })
            .await
            .unwrap();
    }

    /// The incident `id` as the admin API shows it now.
    async fn incident_by_id(&self, id: &str) -> pb::Incident {
        self.tc
            .root()
            .await
            .get_incident(pb::GetIncidentRequest { id: id.to_owned() })
            .await
            .unwrap()
            .into_inner()
    }

    async fn start(
        adjust: impl FnOnce(&mut ruse_controller::config::ControllerConfig),
    ) -> Hospital {
        Self::start_on(None, adjust).await
    }

    /// On the PostgreSQL store `store` (the embedded one without).
    async fn start_on(
        store: Option<PgOptions>,
        adjust: impl FnOnce(&mut ruse_controller::config::ControllerConfig),
    ) -> Hospital {
        let tc = TestController::start_on(store, adjust).await;
        let ports = free_ports(2);
        // Roles come from the tokens: an agent's own labels select nothing.
        let ws_token = tc
            .token("role=workstation", 1, Duration::from_secs(600))
            .await;
        let decoy_token = tc.token("role=decoy", 1, Duration::from_secs(600)).await;
        let mut ws = tc.spawn_agent(tc.agent_config("ws", &ws_token, ""));
        let mut decoy = tc.spawn_agent(tc.agent_config("decoyhost", &decoy_token, ""));
        let ws_id = ws.connected().await;
        let decoy_id = decoy.connected().await;
        tc.apply(&format!(
            "kind: Decoy\nname: {DECOY}\nselector: {{role: decoy}}\naddress: 127.0.0.1\nlisten: 127.0.0.1\nservices:\n  - {{protocol: ssh, port: {}}}\n  - {{protocol: dicom, port: {}}}\n---\nkind: Campaign\nname: ward\nselector: {{role: workstation}}\nlures:\n  - {{template: ssh-key, decoy: {DECOY}}}\n  - {{template: patient-csv, path: \"~/Documents/Exports\"}}\n",
            ports[0], ports[1]
        ))
        .await;
        ws.wait_lures(2, Duration::from_secs(20)).await;
        let up = matches!(
            tokio::time::timeout(
                Duration::from_secs(20),
                decoy.status.wait_for(|s| s.decoy_services == 2),
            )
            .await,
            Ok(Ok(_))
        );
        assert!(up, "decoy services did not start");
        Hospital {
            tc,
            ws,
            ws_id,
            decoy_id,
            _decoy: decoy,
            ssh_port: ports[0],
            dicom_port: ports[1],
        }
    }

    fn honeyfile(&self) -> PathBuf {
        planted_files(&self.ws.home().join("Documents/Exports")).remove(0)
    }

    async fn lure(&self, template: &str) -> String {
        self.tc
            .lures(&self.ws_id, false)
            .await
            .into_iter()
            .find(|l| l.template == template)
            .unwrap()
            .id
    }

    async fn incidents(&self, drills: bool) -> Vec<pb::Incident> {
        self.tc
            .root()
            .await
            .list_incidents(pb::ListIncidentsRequest {
                include_drills: drills,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .incidents
    }

    /// Waits for an incident `pick` accepts.
    async fn incident(&self, what: &str, pick: impl Fn(&pb::Incident) -> bool) -> pb::Incident {
        let start = Instant::now();
        loop {
            let all = self.incidents(true).await;
            if let Some(i) = all.iter().find(|i| pick(i)) {
                return i.clone();
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "no incident {what} within 20s; have {all:#?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A lure event as the workstation's watcher reports it.
    async fn touch(&self, lure: &str) {
        self.ws
            .events
            .record(vec![TestAgent::touch_event(lure, 1)])
            .await
            .unwrap();
    }
}

/// A DICOM association request from `source`.
async fn dicom_from(source: &str, port: u16, calling: &str) {
    use dicom_ul::pdu::{AssociationRQ, PresentationContextProposed, UserVariableItem};
    let pdu = dicom_ul::Pdu::AssociationRQ(AssociationRQ {
        protocol_version: 1,
        calling_ae_title: calling.into(),
        called_ae_title: "PACSARCHIVE02".into(),
        application_context_name: "1.2.840.10008.3.1.1.1".into(),
        presentation_contexts: vec![PresentationContextProposed {
            id: 1,
            abstract_syntax: "1.2.840.10008.1.1".into(),
            transfer_syntaxes: vec!["1.2.840.10008.1.2".into()],
        }],
        user_variables: vec![UserVariableItem::MaxLength(16384)],
    });
    let mut bytes = Vec::new();
    dicom_ul::write_pdu(&mut bytes, &pdu).unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    let mut s = socket
        .connect(std::net::SocketAddr::from(([127, 0, 0, 1], port)))
        .await
        .unwrap();
    s.write_all(&bytes).await.unwrap();
    let mut ac = [0u8; 1];
    s.read_exact(&mut ac).await.unwrap();
    assert_eq!(ac[0], 0x02, "A-ASSOCIATE-AC");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scripted_attack_is_one_incident_with_its_path_and_techniques() {
    if !require_tool("a_scripted_attack_is_one_incident", "ssh") {
        return;
    }
    scripted_attack(Hospital::start(|_| {}).await).await;
}

/// The same attack with the controller on PostgreSQL; then the controller
/// restarts and the incident, its timeline and the lures behind it are
/// still there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgresql_a_scripted_attack_is_one_incident_that_survives_a_restart() {
    let test = "on_postgresql_a_scripted_attack_is_one_incident";
    if !require_tool(test, "ssh") {
        return;
    }
    let Some(pg) = Postgres::start(test) else {
        return;
    };
    pg.database("ruse");
    let mut h = Hospital::start_on(Some(pg.options("ruse")), |_| {}).await;
    let before = scripted_attack_steps(&h).await;
    h.tc.restart().await;
    let after = h.incident_by_id(&before.id).await;
    assert_eq!(after.path, before.path);
    assert_eq!(after.techniques, before.techniques);
    assert_eq!(after.event_count, before.event_count);
    assert_eq!(after.timeline.len(), before.timeline.len());
    assert!(after.lures.contains(&h.lure("ssh-key").await));
    // Every record kind is in PostgreSQL's tables, not a local file.
    for (table, at_least) in [
        ("agents", 2),
        ("events", 4),
        ("incidents", 1),
        ("incident_timeline", 1),
        // New instances are a row per chunk (migration 9).
        ("lure_batches", 1),
        ("campaigns", 1),
        ("decoys", 1),
        ("audit", 3),
    ] {
        let n: u64 = pg
            .psql("ruse", &format!("SELECT count(*) FROM {table}"))
            .parse()
            .unwrap();
        assert!(n >= at_least, "{table}: {n} rows");
    }
    assert!(
        !h.tc.data_dir().join("store").exists(),
        "no embedded store was made"
    );
}

async fn scripted_attack(h: Hospital) {
    let i = scripted_attack_steps(&h).await;
    assert_eq!(i.severity, "critical");
    stix_export_is_valid(&h).await;
}

/// Reads a honeyfile, uses the planted SSH key at the decoy and touches
/// its DICOM service; checks the one incident this makes and returns it.
async fn scripted_attack_steps(h: &Hospital) -> pb::Incident {
    // 1. Read a honeyfile on A.
    let out = Command::new("cat").arg(h.honeyfile()).output().unwrap();
    assert!(out.status.success());
    let first = h
        .incident("for the honeyfile read", |i| i.agents.contains(&h.ws_id))
        .await;
    assert_eq!(first.severity, "high");

    // 2. Use A's planted SSH key from another address (127.0.0.2).
    let key = h.ws.home().join(format!(".ssh/id_ed25519_{DECOY}"));
    let out = Command::new("ssh")
        .args([
            "-F",
            "/dev/null",
            "-b",
            "127.0.0.2",
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-p",
        ])
        .arg(h.ssh_port.to_string())
        .arg("-i")
        .arg(&key)
        .args(["radiology@127.0.0.1", "true"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "the decoy never grants access");

    // 3. From the same address, reach the decoy's DICOM service.
    dicom_from("127.0.0.2", h.dicom_port, "ATTACKER").await;

    let i = h
        .incident("with the whole attack", |i| {
            i.id == first.id
                && i.rules.iter().any(|r| r == "credential-use")
                && i.techniques.iter().any(|t| t == "T1110")
        })
        .await;
    let all = h.incidents(false).await;
    assert_eq!(all.len(), 1, "one incident, not several: {all:#?}");
    assert_eq!(i.severity, "critical");
    assert!(i.title.starts_with("Stolen credential used"), "{}", i.title);
    let path: Vec<(&str, &str)> = i
        .path
        .iter()
        .map(|h| (h.kind.as_str(), h.name.as_str()))
        .collect();
    assert_eq!(path.len(), 3, "{path:?}");
    assert_eq!(path[0].0, "host");
    assert_eq!(
        i.path[0].agent_id, h.ws_id,
        "A: where the credential was harvested"
    );
    assert_eq!(
        path[1],
        ("source", "127.0.0.2"),
        "S: where it was used from"
    );
    assert_eq!(path[2], ("decoy", DECOY), "D: the decoy");
    assert_eq!(i.path[2].agent_id, h.decoy_id);
    for t in ["T1005", "T1552.004", "T1078", "T1021.004", "T1110"] {
        assert!(
            i.techniques.iter().any(|x| x == t),
            "{t} missing from {:?}",
            i.techniques
        );
    }
    assert!(i.lures.contains(&h.lure("ssh-key").await));
    assert!(i.lures.contains(&h.lure("patient-csv").await));
    assert!(i.sources == ["127.0.0.2"], "{:?}", i.sources);
    assert!(i.credentials.iter().any(|c| c == "ATTACKER"));
    assert!(i.event_count >= 4, "{}", i.event_count);
    i
}

/// The STIX export of the attack's incident parses and has what STIX 2.1
/// requires.
async fn stix_export_is_valid(h: &Hospital) {
    let export =
        h.tc.root()
            .await
            .export_incidents(pb::ExportIncidentsRequest {
                format: "stix".into(),
                since_ms: 0,
                include_drills: false,
                include_internal: false,
            })
            .await
            .unwrap()
            .into_inner();
    assert_eq!(export.incidents, 1);
    let bundle: serde_json::Value = serde_json::from_str(&export.content).unwrap();
    assert_eq!(bundle["type"], "bundle");
    assert!(bundle["id"].as_str().unwrap().starts_with("bundle--"));
    let objects = bundle["objects"].as_array().unwrap();
    let ids: Vec<&str> = objects.iter().map(|o| o["id"].as_str().unwrap()).collect();
    for o in objects {
        let kind = o["type"].as_str().unwrap();
        for field in ["spec_version", "id", "created", "modified"] {
            assert!(o.get(field).is_some(), "{kind} lacks {field}");
        }
        assert_eq!(o["spec_version"], "2.1");
        let required: &[&str] = match kind {
            "indicator" => &["pattern", "pattern_type", "valid_from"],
            "sighting" => &["sighting_of_ref"],
            "attack-pattern" | "identity" | "incident" => &["name"],
            "relationship" => &["relationship_type", "source_ref", "target_ref"],
            _ => &[],
        };
        for field in required {
            assert!(o.get(*field).is_some(), "{kind} lacks {field}");
        }
        for r in ["sighting_of_ref", "source_ref", "target_ref"] {
            if let Some(target) = o[r].as_str() {
                assert!(ids.contains(&target), "{kind}.{r} points at nothing");
            }
        }
    }
    let patterns: Vec<&str> = objects
        .iter()
        .filter_map(|o| o["pattern"].as_str())
        .collect();
    assert!(
        patterns.contains(&"[ipv4-addr:value = '127.0.0.2']"),
        "{patterns:?}"
    );
    let techniques: Vec<&str> = objects
        .iter()
        .filter(|o| o["type"] == "attack-pattern")
        .map(|o| o["external_references"][0]["external_id"].as_str().unwrap())
        .collect();
    assert!(techniques.contains(&"T1078") && techniques.contains(&"T1110"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incidents_are_acknowledged_resolved_and_suppressed() {
    let h = Hospital::start(|_| {}).await;
    let lure = h.lure("patient-csv").await;
    h.touch(&lure).await;
    let i = h.incident("for the touch", |_| true).await;
    let mut admin = h.tc.root().await;
    let acked = admin
        .ack_incident(pb::AckIncidentRequest { id: i.id.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(acked.status, "acknowledged");
    assert_eq!(acked.acknowledged_by, "admin/root");
    // An acknowledged incident still gathers related events.
    h.touch(&lure).await;
    h.incident("with two events", |x| x.id == i.id && x.event_count == 2)
        .await;
    let resolved = admin
        .resolve_incident(pb::ResolveIncidentRequest {
            id: i.id.clone(),
            note: "nurse opened the export by mistake; retrained".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resolved.status, "resolved");
    let again = admin
        .resolve_incident(pb::ResolveIncidentRequest {
            id: i.id.clone(),
            note: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(again.code(), tonic::Code::FailedPrecondition);
    // `rusectl get incidents` asks for the unresolved ones by default.
    let unresolved = admin
        .list_incidents(pb::ListIncidentsRequest {
            status: "unresolved".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .incidents;
    assert!(unresolved.iter().all(|x| x.id != i.id), "{unresolved:#?}");
    // After resolution the same activity opens a new incident.
    h.touch(&lure).await;
    h.incident("a new one", |x| x.id != i.id).await;

    // A suppression hides a scanner's address; its hits are counted.
    h.tc.apply("kind: Suppression\nname: it-scanner\nsource: 127.0.0.3/32\nexpires: 2099-01-01\n")
        .await;
    dicom_from("127.0.0.3", h.dicom_port, "VULNSCAN").await;
    eventually(
        "the suppression counted",
        Duration::from_secs(10),
        || async {
            let list =
                h.tc.root()
                    .await
                    .list_suppressions(pb::ListSuppressionsRequest {})
                    .await
                    .unwrap()
                    .into_inner()
                    .suppressions;
            list.len() == 1 && list[0].suppressed >= 1
        },
    )
    .await;
    let all = h.incidents(false).await;
    assert!(
        all.iter()
            .all(|i| !i.sources.contains(&"127.0.0.3".to_owned())),
        "a suppressed source opened an incident: {all:#?}"
    );
    // The scanner's event itself is kept.
    let events =
        h.tc.events(pb::EventFilter {
            agent_id: h.decoy_id.clone(),
            ..Default::default()
        })
        .await;
    assert!(
        events
            .iter()
            .any(|e| e.decoy.as_ref().is_some_and(|d| d.source_ip == "127.0.0.3"))
    );
    // Unsuppressed, the same source is raised.
    admin
        .delete_suppression(pb::DeleteSuppressionRequest {
            name: "it-scanner".into(),
        })
        .await
        .unwrap();
    dicom_from("127.0.0.3", h.dicom_port, "VULNSCAN").await;
    h.incident("from the scanner", |i| {
        i.sources.contains(&"127.0.0.3".to_owned())
    })
    .await;
}

/// rsyslogd, stopped when dropped (also when the test fails).
struct Rsyslogd(std::process::Child);

impl Drop for Rsyslogd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// rsyslogd listening on 127.0.0.1 (UDP and TCP), writing what it
/// receives to the returned file.
fn start_rsyslogd(dir: &Path, udp: u16, tcp: u16) -> (Rsyslogd, PathBuf) {
    let out = dir.join("received.log");
    let conf = dir.join("rsyslog.conf");
    std::fs::write(
        &conf,
        format!(
            "global(workDirectory=\"{dir}\")\nmodule(load=\"imudp\")\nmodule(load=\"imtcp\")\ninput(type=\"imudp\" address=\"127.0.0.1\" port=\"{udp}\")\ninput(type=\"imtcp\" address=\"127.0.0.1\" port=\"{tcp}\")\ntemplate(name=\"raw\" type=\"string\" string=\"%inputname% %rawmsg%\\n\")\n*.* action(type=\"omfile\" file=\"{out}\" template=\"raw\")\n",
            dir = dir.display(),
            out = out.display()
        ),
    )
    .unwrap();
    let child = Command::new(ruse_e2e::find_tool("rsyslogd").expect("rsyslogd"))
        .args(["-n", "-f"])
        .arg(&conf)
        .arg("-i")
        .arg(dir.join("rsyslogd.pid"))
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.join("rsyslogd.err")).unwrap())
        .spawn()
        .expect("rsyslogd starts");
    (Rsyslogd(child), out)
}

/// What rsyslogd wrote once it has received the incident `id` over both
/// UDP and TCP. rsyslogd may take a moment to listen; the outputs retry
/// until it does.
async fn received_over_udp_and_tcp(dir: &Path, received: &Path, id: &str) -> String {
    let start = Instant::now();
    loop {
        let text = std::fs::read_to_string(received).unwrap_or_default();
        let lines: Vec<&str> = text.lines().filter(|l| l.contains(id)).collect();
        if lines.iter().any(|l| l.starts_with("imudp"))
            && lines.iter().any(|l| l.starts_with("imtcp"))
        {
            return text;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "rsyslogd did not receive both messages; it has:\n{text}\nstderr: {}",
            std::fs::read_to_string(dir.join("rsyslogd.err")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn syslog(name: &str, transport: &str, port: u16) -> OutputConfig {
    OutputConfig {
        name: name.into(),
        kind: "syslog".into(),
        address: Some(format!("127.0.0.1:{port}")),
        transport: Some(transport.into()),
        ..OutputConfig::default()
    }
}

fn webhook(name: &str, port: u16, format: &str) -> OutputConfig {
    OutputConfig {
        name: name.into(),
        kind: "webhook".into(),
        url: Some(format!("http://127.0.0.1:{port}/hooks/ruse")),
        format: Some(format.into()),
        ..OutputConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_rsyslogd_receives_the_cef_message_over_udp_and_tcp() {
    if !require_tool("a_real_rsyslogd_receives_the_cef_message", "rsyslogd") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ports = free_ports(2);
    let (rsyslogd, received) = start_rsyslogd(dir.path(), ports[0], ports[1]);
    let h = Hospital::start(|c| {
        c.outputs = vec![
            syslog("soc-udp", "udp", ports[0]),
            syslog("soc-tcp", "tcp", ports[1]),
        ];
        c.output_retry_min = Duration::from_millis(100);
        c.output_retry_max = Duration::from_millis(500);
    })
    .await;
    h.touch(&h.lure("patient-csv").await).await;
    let i = h.incident("for the touch", |_| true).await;
    let text = received_over_udp_and_tcp(dir.path(), &received, &i.id).await;
    drop(rsyslogd);
    for line in text.lines().filter(|l| l.contains(&i.id)) {
        assert!(line.contains("CEF:0|Ruse|Ruse|"), "{line}");
        assert!(line.contains("|incident-opened|"), "{line}");
        assert!(line.contains(&format!("cs1={}", i.id)), "{line}");
        assert!(
            line.contains("cs3Label=mitreTechniques cs3=T1005"),
            "{line}"
        );
        // RFC 5424: <PRI>VERSION TIMESTAMP HOST APP PROCID MSGID SD MSG;
        // facility 4 (auth), severity 3 (error) for a high incident.
        assert!(line.contains(" <35>1 20"), "RFC 5424 header: {line}");
        assert!(line.contains(" ruse-controller "), "{line}");
    }
    eventually(
        "both deliveries recorded",
        Duration::from_secs(5),
        || async {
            let i = h.incident_by_id(&i.id).await;
            i.deliveries.len() == 2 && i.deliveries.iter().all(|d| d.state == "delivered")
        },
    )
    .await;
}

/// One LEEF 2.0 event read strictly, as IBM's description of the format
/// has it: `LEEF:2.0|Vendor|Product|Version|EventID|Delimiter|attributes`,
/// the delimiter one character or its hex code (`x5E`, `0x5E`; tab when
/// empty), attributes `key=value` split on it, keys of letters and digits,
/// none twice. Returns the five header fields after the version and the
/// attributes.
fn parse_leef(payload: &str) -> Result<(Vec<String>, BTreeMap<String, String>), String> {
    let rest = payload
        .strip_prefix("LEEF:2.0|")
        .ok_or_else(|| format!("not LEEF 2.0: {payload}"))?;
    let fields: Vec<&str> = rest.splitn(6, '|').collect();
    let [vendor, product, version, event_id, delimiter, attributes] = fields[..] else {
        return Err(format!("a LEEF 2.0 header has six fields: {payload}"));
    };
    for (what, v) in [
        ("vendor", vendor),
        ("product", product),
        ("version", version),
        ("event id", event_id),
    ] {
        if v.is_empty() {
            return Err(format!("empty {what}: {payload}"));
        }
    }
    let delimiter = match delimiter {
        "" => '\t',
        d if d.chars().count() == 1 => d.chars().next().unwrap(),
        d => {
            let hex = d.strip_prefix("0x").or_else(|| d.strip_prefix('x'));
            let code = hex
                .and_then(|h| u32::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("delimiter {d:?} is neither a character nor a hex code"))?;
            char::from_u32(code).ok_or_else(|| format!("delimiter {d:?}"))?
        }
    };
    let mut attrs = BTreeMap::new();
    for pair in attributes.split(delimiter) {
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| format!("attribute {pair:?} has no '='"))?;
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(format!("attribute key {key:?}"));
        }
        if value.chars().any(char::is_control) {
            return Err(format!("control character in {key}"));
        }
        if attrs.insert(key.to_owned(), value.to_owned()).is_some() {
            return Err(format!("key {key} twice"));
        }
    }
    let header = [vendor, product, version, event_id, &delimiter.to_string()]
        .iter()
        .map(|s| s.to_string())
        .collect();
    Ok((header, attrs))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_rsyslogd_receives_leef_that_a_strict_parser_reads_back() {
    if !require_tool("a_real_rsyslogd_receives_leef", "rsyslogd") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ports = free_ports(2);
    let (rsyslogd, received) = start_rsyslogd(dir.path(), ports[0], ports[1]);
    let leef = |o: OutputConfig| OutputConfig {
        format: Some("leef".into()),
        ..o
    };
    let h = Hospital::start(|c| {
        c.outputs = vec![
            leef(syslog("qradar-udp", "udp", ports[0])),
            leef(syslog("qradar-tcp", "tcp", ports[1])),
        ];
        c.output_retry_min = Duration::from_millis(100);
        c.output_retry_max = Duration::from_millis(500);
    })
    .await;
    h.touch(&h.lure("patient-csv").await).await;
    let i = h.incident("for the touch", |_| true).await;
    let text = received_over_udp_and_tcp(dir.path(), &received, &i.id).await;
    drop(rsyslogd);
    for line in text.lines().filter(|l| l.contains(&i.id)) {
        assert!(line.contains(" <35>1 20"), "RFC 5424 header: {line}");
        let payload = &line[line.find("LEEF:").expect("a LEEF payload")..];
        let (header, attrs) = parse_leef(payload).unwrap_or_else(|e| panic!("{e}\n{line}"));
        assert_eq!(header[..2], ["Ruse", "Ruse"], "{line}");
        assert_eq!(header[3], "incident-opened", "{line}");
        assert_eq!(attrs["incidentId"], i.id);
        assert_eq!(attrs["sev"], "8", "a high incident: {line}");
        assert_eq!(attrs["devTimeFormat"], "yyyy-MM-dd'T'HH:mm:ss.SSSZ");
        let t = &attrs["devTime"];
        let shape: String = t
            .chars()
            .map(|c| if c.is_ascii_digit() { 'd' } else { c })
            .collect();
        assert_eq!(shape, "dddd-dd-ddTdd:dd:dd.ddd+dddd", "devTime {t}");
        assert_eq!(attrs["cat"], "deception");
        assert!(attrs["mitreTechniques"].contains("T1005"), "{line}");
        assert!(
            attrs.contains_key("identHostName"),
            "the host the lure was on: {line}"
        );
        assert_eq!(attrs["msg"], i.title);
    }
}

/// A batch accepted and not yet indexed: how often its ack was asked for,
/// and its events.
type Pending = (u32, Vec<serde_json::Value>);

/// What a strict Splunk HTTP Event Collector has indexed, and how many
/// event requests it saw.
#[derive(Default)]
struct HecState {
    /// Per channel: the next ack id, and batches not yet indexed with how
    /// often their ack was asked for.
    channels: BTreeMap<String, (u64, BTreeMap<u64, Pending>)>,
    indexed: Vec<serde_json::Value>,
    event_requests: usize,
    busy: usize,
    /// The most events one accepted request carried.
    largest_batch: usize,
}

type Hec = std::sync::Arc<std::sync::Mutex<HecState>>;

/// A Splunk HTTP Event Collector on `port`, strict as Splunk's
/// documentation describes it: `POST /services/collector/event` and
/// `/services/collector/ack` only; `Authorization: Splunk <token>`
/// (401 code 2 without, 403 code 4 with another); a GUID channel in
/// `X-Splunk-Request-Channel` (400 code 10 without); one or more JSON
/// events, each with `event`, a numeric `time`, only HEC's keys and
/// string-valued indexed `fields` (400 code 12 / 6 / 15 otherwise);
/// `{"ackId": N}` per request, and an event is indexed only when its ack
/// is asked for a second time. The first `busy` event requests get 503
/// code 9 (back-pressure).
async fn hec_receiver(
    port: u16,
    token: &'static str,
    busy: usize,
) -> (Hec, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let state: Hec = std::sync::Arc::new(std::sync::Mutex::new(HecState {
        busy,
        ..HecState::default()
    }));
    let shared = state.clone();
    let task = json_server(listener, move |head, body| {
        hec_answer(&shared, token, head, body)
    });
    (state, task)
}

fn hec_answer(
    state: &Hec,
    token: &str,
    head: &str,
    body: &[u8],
) -> (&'static str, serde_json::Value) {
    use serde_json::json;
    let fail = |status, text: &str, code: i64| (status, json!({"text": text, "code": code}));
    let mut lines = head.lines();
    let request = lines.next().unwrap_or_default();
    let headers: BTreeMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let path = match request.split(' ').collect::<Vec<_>>()[..] {
        ["POST", path, "HTTP/1.1"] => path,
        _ => return fail("400 Bad Request", "Invalid request", 6),
    };
    if path != "/services/collector/event" && path != "/services/collector/ack" {
        return fail(
            "404 Not Found",
            "The requested URL was not found on this server.",
            404,
        );
    }
    match headers.get("authorization") {
        None => return fail("401 Unauthorized", "Token is required", 2),
        Some(a) if *a != format!("Splunk {token}") => {
            return fail("403 Forbidden", "Invalid token", 4);
        }
        Some(_) => {}
    }
    let Some(channel) = headers.get("x-splunk-request-channel").cloned() else {
        return fail("400 Bad Request", "Data channel is missing", 10);
    };
    let guid = channel.len() == 36
        && channel.char_indices().all(|(i, c)| {
            if [8, 13, 18, 23].contains(&i) {
                c == '-'
            } else {
                c.is_ascii_hexdigit()
            }
        });
    if !guid {
        return fail("400 Bad Request", "Invalid data channel", 11);
    }
    let mut st = state.lock().unwrap();
    if path == "/services/collector/ack" {
        let Ok(query) = serde_json::from_slice::<serde_json::Value>(body) else {
            return fail("400 Bad Request", "Invalid data format", 6);
        };
        let Some(ids) = query["acks"]
            .as_array()
            .map(|a| a.iter().map(|v| v.as_u64()).collect::<Option<Vec<u64>>>())
        else {
            return fail("400 Bad Request", "Invalid data format", 6);
        };
        let Some(ids) = ids else {
            return fail("400 Bad Request", "Invalid data format", 6);
        };
        let mut acks = serde_json::Map::new();
        for id in ids {
            let (_, pending) = st.channels.entry(channel.clone()).or_default();
            let indexed = match pending.get_mut(&id) {
                Some((asked, _)) if *asked == 0 => {
                    *asked += 1;
                    false
                }
                Some(_) => {
                    let (_, events) = pending.remove(&id).unwrap();
                    st.indexed.extend(events);
                    true
                }
                None => false,
            };
            acks.insert(id.to_string(), indexed.into());
        }
        return ("200 OK", json!({ "acks": acks }));
    }
    st.event_requests += 1;
    if st.busy > 0 {
        st.busy -= 1;
        return fail("503 Service Unavailable", "Server is busy", 9);
    }
    let mut events = Vec::new();
    for event in serde_json::Deserializer::from_slice(body).into_iter::<serde_json::Value>() {
        let Ok(event) = event else {
            return fail("400 Bad Request", "Invalid data format", 6);
        };
        let Some(fields) = event.as_object() else {
            return fail("400 Bad Request", "Invalid data format", 6);
        };
        let allowed = [
            "time",
            "host",
            "source",
            "sourcetype",
            "index",
            "event",
            "fields",
        ];
        if fields.keys().any(|k| !allowed.contains(&k.as_str())) {
            return fail("400 Bad Request", "Invalid data format", 6);
        }
        match event.get("event") {
            None | Some(serde_json::Value::Null) => {
                return fail("400 Bad Request", "Event field is required", 12);
            }
            Some(serde_json::Value::String(s)) if s.is_empty() => {
                return fail("400 Bad Request", "Event field cannot be blank", 13);
            }
            _ => {}
        }
        if event.get("time").is_some_and(|t| !t.is_number()) {
            return fail("400 Bad Request", "Invalid data format", 6);
        }
        let indexed_ok = event.get("fields").is_none_or(|f| {
            f.as_object().is_some_and(|m| {
                m.values().all(|v| {
                    v.is_string()
                        || v.as_array()
                            .is_some_and(|a| a.iter().all(|x| x.is_string()))
                })
            })
        });
        if !indexed_ok {
            return fail("400 Bad Request", "Error in handling indexed fields", 15);
        }
        events.push(event);
    }
    if events.is_empty() {
        return fail("400 Bad Request", "No data", 5);
    }
    st.largest_batch = st.largest_batch.max(events.len());
    let (next, pending) = st.channels.entry(channel).or_default();
    let id = *next;
    *next += 1;
    pending.insert(id, (0, events));
    ("200 OK", json!({"text": "Success", "code": 0, "ackId": id}))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn splunk_hec_indexes_each_incident_once_after_back_pressure_and_a_bad_token_is_named() {
    const TOKEN: &str = "8f1c2b7e-5d4a-4c3b-9e2f-1a0b9c8d7e6f";
    let port = free_ports(1)[0];
    let (hec, server) = hec_receiver(port, TOKEN, 2).await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("hec-token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let output = |name: &str| OutputConfig {
        name: name.into(),
        kind: "splunk-hec".into(),
        url: Some(format!("http://127.0.0.1:{port}")),
        index: Some("deception".into()),
        ..OutputConfig::default()
    };
    let h = Hospital::start(|c| {
        c.outputs = vec![
            OutputConfig {
                token_file: Some(token_file.clone()),
                ..output("splunk")
            },
            OutputConfig {
                token: Some("not-the-token".into()),
                ..output("splunk-wrong-token")
            },
        ];
        c.output_retry_min = Duration::from_millis(100);
        c.output_retry_max = Duration::from_millis(400);
    })
    .await;
    h.touch(&h.lure("patient-csv").await).await;
    let i = h.incident("for the touch", |_| true).await;
    eventually(
        "the incident indexed and delivered",
        Duration::from_secs(20),
        || async {
            let i = h.incident_by_id(&i.id).await;
            i.deliveries
                .iter()
                .any(|d| d.output == "splunk" && d.state == "delivered")
        },
    )
    .await;
    eventually(
        "the wrong token named as such",
        Duration::from_secs(10),
        || async {
            let i = h.incident_by_id(&i.id).await;
            i.deliveries.iter().any(|d| {
                d.output == "splunk-wrong-token"
                    && d.state == "failing"
                    && d.last_error.contains("Invalid token (code 4)")
                    && !d.last_error.contains("not-the-token")
            })
        },
    )
    .await;
    let st = hec.lock().unwrap();
    assert!(
        st.event_requests >= 3,
        "two refused as busy, then accepted: {}",
        st.event_requests
    );
    let mine: Vec<&serde_json::Value> = st
        .indexed
        .iter()
        .filter(|e| e["fields"]["incident_id"] == i.id.as_str())
        .collect();
    assert!(!mine.is_empty(), "indexed: {:?}", st.indexed);
    let mut versions: Vec<&str> = mine
        .iter()
        .map(|e| e["fields"]["version"].as_str().unwrap())
        .collect();
    let n = versions.len();
    versions.sort_unstable();
    versions.dedup();
    assert_eq!(versions.len(), n, "each version indexed once: {mine:?}");
    for e in mine {
        assert!(e["time"].as_f64().unwrap() > 1.7e9, "{e}");
        assert_eq!(e["index"], "deception");
        assert_eq!(e["source"], "ruse");
        assert_eq!(e["sourcetype"], "ruse:incident");
        assert_eq!(e["event"]["incident"]["id"], i.id.as_str());
        assert_eq!(e["fields"]["severity"], "high");
    }
    drop(st);
    server.abort();
}

/// One HTTP/1.1 request from `s`: its head (request line and headers)
/// and its body of `Content-Length` bytes; `None` if the peer goes away.
/// A stand-in HTTP server on `listener` that answers each request (its
/// head and body) with `answer`'s status line and JSON, one request per
/// connection.
fn json_server(
    listener: tokio::net::TcpListener,
    answer: impl Fn(&str, &[u8]) -> (&'static str, serde_json::Value) + Send + Sync + 'static,
) -> tokio::task::JoinHandle<()> {
    let answer = std::sync::Arc::new(answer);
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let answer = answer.clone();
            tokio::spawn(async move {
                let Some((head, body)) = read_request(&mut s).await else {
                    return;
                };
                let (status, reply) = answer(&head, &body);
                let reply = reply.to_string();
                let response = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{reply}",
                    reply.len()
                );
                let _ = s.write_all(response.as_bytes()).await;
            });
        }
    })
}

async fn read_request(s: &mut tokio::net::TcpStream) -> Option<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_string();
        let len: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .unwrap_or(0);
        if buf.len() >= end + 4 + len {
            return Some((head, buf[end + 4..end + 4 + len].to_vec()));
        }
    }
}

/// A webhook receiver on `port`: every request body goes to the channel.
async fn receiver(
    port: u16,
) -> (
    mpsc::Receiver<serde_json::Value>,
    tokio::task::JoinHandle<()>,
) {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let (tx, rx) = mpsc::channel(64);
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                let Some((_, body)) = read_request(&mut s).await else {
                    return;
                };
                let _ = s
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                    )
                    .await;
                if let Ok(v) = serde_json::from_slice(&body) {
                    let _ = tx.send(v).await;
                }
            });
        }
    });
    (rx, task)
}

/// Three controllers on one PostgreSQL database. Two DICOM contacts from
/// one source, at decoys whose agents hold their sessions on different
/// replicas, make one incident, seen alike on every replica; its notice is
/// delivered once, by the replica holding the output lease. When that
/// replica stops, another takes the lease over and delivers the next
/// notice (an acknowledgement made on a third) once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_correlate_one_attack_into_one_incident_and_deliver_each_notice_once() {
    use ruse_controller::incidents::IncidentFilter;
    use ruse_proto::transport::ControllerUrl;

    let Some(pg) = Postgres::start("replicas_correlate_one_attack") else {
        return;
    };
    pg.database("ruse");
    let ports = free_ports(2);
    let (hook, pacs_b_port) = (ports[0], ports[1]);
    let (mut hooked, _receiver) = receiver(hook).await;
    let mut h = Hospital::start_on(Some(pg.options("ruse")), |c| {
        c.outputs = vec![webhook("soc-webhook", hook, "json")];
        c.output_retry_min = Duration::from_millis(200);
        c.output_retry_max = Duration::from_secs(1);
    })
    .await;
    let replicas = h.tc.replicas(2).await;
    // A started first and delivers; the others wait for its lease.
    assert!(h.tc.controller().core().events.outputs.leading());
    assert!(replicas.iter().all(|r| !r.core().events.outputs.leading()));

    // A second PACS decoy (answering to the same AE title), run by an
    // agent whose session is on replica B.
    let token = h.tc.token("role=pacs-b", 1, Duration::from_secs(600)).await;
    let mut config = h.tc.agent_config("pacs-b", &token, "");
    config.controller = ControllerUrl::from_addr(replicas[0].agent_addr());
    let mut pacs_b = h.tc.spawn_agent(config);
    tokio::time::timeout(Duration::from_secs(20), pacs_b.connected())
        .await
        .expect("an agent enrolls through replica B");
    h.tc.apply(&format!(
        "kind: Decoy\nname: pacs-archive-02\nselector: {{role: pacs-b}}\naddress: 127.0.0.1\nlisten: 127.0.0.1\nservices:\n  - {{protocol: dicom, port: {pacs_b_port}}}\n"
    ))
    .await;
    tokio::time::timeout(
        Duration::from_secs(20),
        pacs_b.status.wait_for(|s| s.decoy_services == 1),
    )
    .await
    .expect("the decoy applied on A runs on B's agent")
    .unwrap();

    // One scanner, one contact at each replica's decoy.
    for port in [h.dicom_port, pacs_b_port] {
        tokio::time::timeout(
            Duration::from_secs(10),
            dicom_from("127.0.0.9", port, "ANY-SCU"),
        )
        .await
        .unwrap_or_else(|_| panic!("the DICOM decoy on port {port} did not answer"));
    }
    let scanner = |i: &ruse_controller::model::Incident| i.sources.contains("127.0.0.9");
    let cores: Vec<_> = std::iter::once(h.tc.controller().core().clone())
        .chain(replicas.iter().map(|r| r.core().clone()))
        .collect();
    eventually(
        "one incident of both contacts on every replica",
        Duration::from_secs(20),
        || {
            let cores = cores.clone();
            async move {
                cores.iter().all(|c| {
                    let seen: Vec<_> = c
                        .events
                        .incidents
                        .list(&IncidentFilter::default(), 100)
                        .into_iter()
                        .filter(scanner)
                        .collect();
                    seen.len() == 1 && seen[0].event_count == 2
                })
            }
        },
    )
    .await;
    let id = cores[1]
        .events
        .incidents
        .list(&IncidentFilter::default(), 100)
        .into_iter()
        .find(scanner)
        .unwrap()
        .id;
    for c in &cores {
        let i = c.events.incidents.get(&id).unwrap();
        assert_eq!(i.agents.len(), 2, "both decoy hosts: {:?}", i.agents);
        assert_eq!(i.timeline.len(), 2);
    }
    assert_eq!(
        pg.psql(
            "ruse",
            "SELECT count(*) FROM incidents WHERE record->'sources' ? '127.0.0.9'"
        ),
        "1"
    );

    // Delivered once, whichever replica queued it.
    let deliveries = notices_of(&mut hooked, &id, Duration::from_secs(3)).await;
    let opened: Vec<_> = deliveries.iter().filter(|(n, _)| n == "opened").collect();
    assert_eq!(opened.len(), 1, "deliveries: {deliveries:?}");
    assert_eq!(pg.psql("ruse", "SELECT count(*) FROM output_queue"), "0");

    // A stops; B or C takes the lease over and delivers what is queued
    // next: an acknowledgement made on C.
    drop(cores);
    h.tc.stop().await;
    eventually(
        "another replica delivers the outputs",
        Duration::from_secs(5),
        || {
            let leading = replicas
                .iter()
                .filter(|r| r.core().events.outputs.leading())
                .count();
            async move { leading == 1 }
        },
    )
    .await;
    replicas[1]
        .core()
        .acknowledge_incident(&id, "admin/nurse-lead")
        .await
        .unwrap();
    let deliveries = notices_of(&mut hooked, &id, Duration::from_secs(3)).await;
    let acked: Vec<_> = deliveries
        .iter()
        .filter(|(n, _)| n == "acknowledged")
        .collect();
    assert_eq!(acked.len(), 1, "deliveries: {deliveries:?}");
    assert_eq!(pg.psql("ruse", "SELECT count(*) FROM output_queue"), "0");
    // Every replica sees who acknowledged it.
    for r in &replicas {
        eventually(
            "the acknowledgement everywhere",
            Duration::from_secs(2),
            || {
                let by = r.core().events.incidents.get(&id).unwrap().acknowledged_by;
                async move { by == "admin/nurse-lead" }
            },
        )
        .await;
    }
    for r in replicas {
        r.shutdown().await.unwrap();
    }
}

/// The (notice, version) of each JSON webhook body about incident `id`
/// received until none came for `quiet`.
async fn notices_of(
    hooked: &mut mpsc::Receiver<serde_json::Value>,
    id: &str,
    quiet: Duration,
) -> Vec<(String, String)> {
    let mut seen = Vec::new();
    while let Ok(Some(body)) = tokio::time::timeout(quiet, hooked.recv()).await {
        if body["incident"]["id"] == id {
            seen.push((
                body["notice"].as_str().unwrap_or_default().to_owned(),
                body["incident"]["version"].to_string(),
            ));
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_down_for_the_first_minute_still_gets_the_incident() {
    let ports = free_ports(2);
    let (hook, metrics) = (ports[0], ports[1]);
    let mut h = Hospital::start(|c| {
        c.outputs = vec![webhook("soc-webhook", hook, "json")];
        c.output_retry_min = Duration::from_millis(200);
        c.output_retry_max = Duration::from_secs(2);
        c.metrics_listen = Some(std::net::SocketAddr::from(([127, 0, 0, 1], metrics)));
    })
    .await;
    h.touch(&h.lure("patient-csv").await).await;
    let i = h.incident("for the touch", |_| true).await;
    let down = Instant::now();
    eventually(
        "delivery failing while the receiver is down",
        Duration::from_secs(10),
        || async {
            let i = h.incident_by_id(&i.id).await;
            i.deliveries.iter().any(|d| {
                d.state == "failing" && d.attempts >= 2 && d.last_error.contains("127.0.0.1")
            })
        },
    )
    .await;
    // The queue is durable: a controller restart while the receiver is
    // down loses nothing.
    h.tc.restart().await;
    // Prometheus sees the queued notice and the failures.
    let text = http_get(h.tc.controller().metrics_addr().unwrap(), "/metrics").await;
    assert!(
        text.contains("ruse_output_queue_depth{output=\"soc-webhook\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("ruse_incidents_open{severity=\"high\"} 1"),
        "{text}"
    );
    assert!(text.contains("ruse_agents{state="), "{text}");
    assert!(
        text.contains("ruse_rollout_waves_released{campaign=\"ward\"}"),
        "{text}"
    );
    // Down for the first minute.
    let remaining = Duration::from_secs(60).saturating_sub(down.elapsed());
    tokio::time::sleep(remaining).await;
    let (mut bodies, _task) = receiver(hook).await;
    let body = tokio::time::timeout(Duration::from_secs(10), bodies.recv())
        .await
        .expect("the incident arrived once the receiver came up")
        .unwrap();
    assert_eq!(body["notice"], "opened");
    assert_eq!(body["incident"]["id"], i.id.as_str());
    assert_eq!(body["incident"]["severity"], "high");
    assert_eq!(body["drill"], false);
    eventually("delivery recorded", Duration::from_secs(5), || async {
        let i = h.incident_by_id(&i.id).await;
        i.deliveries
            .iter()
            .any(|d| d.output == "soc-webhook" && d.state == "delivered")
    })
    .await;
    let text = http_get(h.tc.controller().metrics_addr().unwrap(), "/metrics").await;
    assert!(
        text.contains("ruse_output_queue_depth{output=\"soc-webhook\"} 0"),
        "{text}"
    );
}

async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    out
}

async fn drill(tc: &TestController, agent: &str) -> Vec<pb::DrillStep> {
    let mut stream = tc
        .root()
        .await
        .drill(pb::DrillRequest {
            agent_id: agent.into(),
            lure_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut steps = Vec::new();
    while let Some(s) = stream.message().await.unwrap() {
        let done = s.done;
        steps.push(s);
        if done {
            break;
        }
    }
    steps
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drill_passes_with_outputs_up_and_names_the_output_that_is_down() {
    let dir = tempfile::tempdir().unwrap();
    let jsonl = dir.path().join("incidents.jsonl");
    let hook = free_ports(1)[0];
    let (mut bodies, receiver_task) = receiver(hook).await;
    let h = Hospital::start(|c| {
        c.outputs = vec![
            webhook("soc-teams", hook, "teams"),
            OutputConfig {
                name: "archive".into(),
                kind: "file".into(),
                path: Some(jsonl.clone()),
                ..syslog("x", "udp", 1)
            },
        ];
        c.output_retry_min = Duration::from_millis(100);
        c.output_retry_max = Duration::from_millis(500);
        c.drill_timeout = Duration::from_secs(8);
    })
    .await;
    let steps = drill(&h.tc, &h.ws_id).await;
    let last = steps.last().unwrap();
    assert!(last.done && last.passed, "{steps:#?}");
    let names: Vec<&str> = steps.iter().map(|s| s.step.as_str()).collect();
    for step in [
        "directive sent",
        "event received",
        "incident opened",
        "output soc-teams",
        "output archive",
    ] {
        assert!(names.contains(&step), "{step} missing: {names:?}");
    }
    assert!(steps.iter().all(|s| s.ok));
    let incident = h.incident_by_id(&last.incident_id).await;
    assert!(
        incident.drill && incident.title.starts_with("[DRILL]"),
        "{incident:#?}"
    );
    // Drill incidents are labelled as such everywhere, outputs included.
    let card = tokio::time::timeout(Duration::from_secs(5), bodies.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(card["@type"], "MessageCard");
    assert!(
        card["title"].as_str().unwrap().starts_with("[DRILL]"),
        "{card}"
    );
    let line = std::fs::read_to_string(&jsonl).unwrap();
    assert!(line.contains("\"drill\":true"), "{line}");
    // And they stay out of the default incident list.
    assert!(h.incidents(false).await.is_empty());
    // A finished drill leaves nothing open: its incident is resolved and
    // does not count among the open ones.
    assert_eq!(incident.status, "resolved", "{incident:#?}");
    let metrics =
        h.tc.root()
            .await
            .get_metrics(pb::GetMetricsRequest {})
            .await
            .unwrap()
            .into_inner()
            .text;
    assert!(
        metrics
            .lines()
            .filter(|l| l.starts_with("ruse_incidents_open{"))
            .all(|l| l.ends_with(" 0")),
        "{metrics}"
    );

    // The Teams receiver goes down: the next drill fails and says where.
    receiver_task.abort();
    let _ = receiver_task.await;
    let steps = drill(&h.tc, &h.ws_id).await;
    let last = steps.last().unwrap();
    assert!(last.done && !last.passed, "{steps:#?}");
    let failed: Vec<&pb::DrillStep> = steps.iter().filter(|s| !s.ok && !s.done).collect();
    assert_eq!(failed.len(), 1, "{steps:#?}");
    assert_eq!(failed[0].step, "output soc-teams");
    assert!(
        failed[0].detail.contains("not delivered"),
        "{}",
        failed[0].detail
    );
    assert!(steps.iter().any(|s| s.step == "output archive" && s.ok));
    // `rusectl get outputs`: each output's queue, last delivery, last error.
    let outputs =
        h.tc.root()
            .await
            .list_outputs(pb::ListOutputsRequest {})
            .await
            .unwrap()
            .into_inner()
            .outputs;
    let by = |name: &str| outputs.iter().find(|o| o.name == name).unwrap();
    assert!(by("archive").last_delivered_ms > 0 && by("archive").last_error.is_empty());
    let teams = by("soc-teams");
    assert!(
        teams.queued >= 1 && teams.failures >= 1 && !teams.last_error.is_empty(),
        "{teams:?}"
    );
}

/// A TLS receiver on `port` with a certificate from a test CA (written to
/// `ca_file`): sends every decrypted connection's bytes to the channel,
/// answering HTTP requests with 200.
async fn tls_receiver(port: u16, ca_file: &Path) -> mpsc::Receiver<Vec<u8>> {
    let ca = ruse_pki::CertificateAuthority::generate("receiver.test".parse().unwrap()).unwrap();
    std::fs::write(ca_file, ca.cert_pem()).unwrap();
    let (chain, key) = ca
        .issue_server(&["127.0.0.1".to_owned()], Duration::from_secs(3600))
        .unwrap();
    let config = ruse_pki::plain_server_config(chain, key.to_der()).unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(s).await else {
                    return;
                };
                let mut got = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    match tokio::time::timeout(Duration::from_millis(300), tls.read(&mut chunk))
                        .await
                    {
                        Ok(Ok(n)) if n > 0 => got.extend_from_slice(&chunk[..n]),
                        _ => break,
                    }
                }
                if got.starts_with(b"POST ") {
                    let _ = tls
                        .write_all(
                            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                        )
                        .await;
                    let _ = tls.shutdown().await;
                }
                let _ = tx.send(got).await;
            });
        }
    });
    rx
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syslog_over_tls_https_webhooks_and_splunk_hec_verify_the_receivers_ca() {
    let dir = tempfile::tempdir().unwrap();
    let ports = free_ports(3);
    let (syslog_ca, hook_ca, hec_ca) = (
        dir.path().join("syslog-ca.pem"),
        dir.path().join("hook-ca.pem"),
        dir.path().join("hec-ca.pem"),
    );
    let mut syslog_rx = tls_receiver(ports[0], &syslog_ca).await;
    let mut hook_rx = tls_receiver(ports[1], &hook_ca).await;
    let mut hec_rx = tls_receiver(ports[2], &hec_ca).await;
    let h = Hospital::start(|c| {
        c.outputs = vec![
            OutputConfig {
                ca_file: Some(syslog_ca.clone()),
                ..syslog("siem-tls", "tls", ports[0])
            },
            OutputConfig {
                ca_file: Some(hook_ca.clone()),
                url: Some(format!("https://127.0.0.1:{}/services/hook", ports[1])),
                ..webhook("slack", 0, "slack")
            },
            // Splunk's collector over TLS with its own CA (no indexer
            // acknowledgement: this receiver only answers 200).
            OutputConfig {
                name: "splunk-tls".into(),
                kind: "splunk-hec".into(),
                url: Some(format!("https://127.0.0.1:{}", ports[2])),
                ca_file: Some(hec_ca.clone()),
                token: Some("8f1c2b7e-5d4a-4c3b-9e2f-1a0b9c8d7e6f".into()),
                ack: Some(false),
                ..OutputConfig::default()
            },
        ];
        c.output_retry_min = Duration::from_millis(100);
    })
    .await;
    h.touch(&h.lure("patient-csv").await).await;
    let i = h.incident("for the touch", |_| true).await;
    let frame = tokio::time::timeout(Duration::from_secs(10), syslog_rx.recv())
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8(frame).unwrap();
    // RFC 5425: octet-counted frames over TLS.
    let (len, message) = text.split_once(' ').unwrap();
    assert_eq!(len.parse::<usize>().unwrap(), message.len(), "{text}");
    assert!(
        message.contains("CEF:0|Ruse|Ruse|") && message.contains(&i.id),
        "{text}"
    );
    let request = tokio::time::timeout(Duration::from_secs(10), hook_rx.recv())
        .await
        .unwrap()
        .unwrap();
    let request = String::from_utf8(request).unwrap();
    assert!(
        request.starts_with("POST /services/hook HTTP/1.1"),
        "{request}"
    );
    let body: serde_json::Value =
        serde_json::from_str(request.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert!(body["text"].as_str().unwrap().contains(&i.title), "{body}");
    assert_eq!(body["blocks"][0]["type"], "header");
    let hec = tokio::time::timeout(Duration::from_secs(10), hec_rx.recv())
        .await
        .unwrap()
        .unwrap();
    let hec = String::from_utf8(hec).unwrap();
    assert!(
        hec.starts_with("POST /services/collector/event HTTP/1.1"),
        "{hec}"
    );
    assert!(
        hec.to_ascii_lowercase()
            .contains("authorization: splunk 8f1c2b7e-5d4a-4c3b-9e2f-1a0b9c8d7e6f"),
        "{hec}"
    );
    let event: serde_json::Value =
        serde_json::from_str(hec.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(event["fields"]["incident_id"], i.id);
    eventually("all delivered", Duration::from_secs(5), || async {
        let i = h.incident_by_id(&i.id).await;
        i.deliveries.len() == 3 && i.deliveries.iter().all(|d| d.state == "delivered")
    })
    .await;

    // A receiver with a certificate from another CA is refused, not trusted.
    let other = dir.path().join("other-ca.pem");
    let port = free_ports(1)[0];
    let _rx = tls_receiver(port, &other).await;
    let h2 = Hospital::start(|c| {
        c.outputs = vec![OutputConfig {
            ca_file: Some(syslog_ca.clone()),
            ..syslog("impostor", "tls", port)
        }];
        c.output_retry_min = Duration::from_millis(100);
    })
    .await;
    h2.touch(&h2.lure("patient-csv").await).await;
    let i2 = h2.incident("for the touch", |_| true).await;
    eventually("the impostor refused", Duration::from_secs(10), || async {
        let i = h2.incident_by_id(&i2.id).await;
        i.deliveries
            .iter()
            .any(|d| d.state == "failing" && d.last_error.contains("TLS"))
    })
    .await;
}

/// Every record of `store`, each kind sorted, as JSON: two stores hold
/// the same installation when these are equal. Audit sequence numbers are
/// left out (the target numbers its log anew, in the same order).
fn everything(store: &dyn Store, queues: &[String]) -> Vec<(String, serde_json::Value)> {
    use serde_json::{Value, json, to_value};
    fn sorted(mut v: Vec<Value>) -> Value {
        v.sort_by_key(|x| x.to_string());
        Value::Array(v)
    }
    let mut events = Vec::new();
    store
        .scan_events(&EventScan::default(), &mut |e| {
            events.push(to_value(&e).unwrap());
            std::ops::ControlFlow::Continue(())
        })
        .unwrap();
    let audit: Vec<Value> = store
        .audit(UnixMs(i64::MIN), None, usize::MAX)
        .unwrap()
        .into_iter()
        .map(|mut r| {
            r.seq = 0;
            to_value(r).unwrap()
        })
        .collect();
    let queued: Vec<Value> = queues
        .iter()
        .map(|q| {
            let items: Vec<Vec<u8>> = store
                .queue_peek(q, usize::MAX)
                .unwrap()
                .into_iter()
                .map(|(_, item)| item)
                .collect();
            json!({ "queue": q, "items": items })
        })
        .collect();
    // Each record as JSON, sorted.
    macro_rules! rows {
        ($records:expr) => {
            sorted($records.into_iter().map(|r| to_value(r).unwrap()).collect())
        };
    }
    vec![
        ("admins".into(), rows!(store.admins().unwrap())),
        ("agents".into(), rows!(store.agents().unwrap())),
        ("tokens".into(), rows!(store.tokens().unwrap())),
        ("campaigns".into(), rows!(store.campaigns().unwrap())),
        ("decoys".into(), rows!(store.decoys().unwrap())),
        ("allow rules".into(), rows!(store.allow_rules().unwrap())),
        ("suppressions".into(), rows!(store.suppressions().unwrap())),
        (
            "counters".into(),
            to_value(store.counters().unwrap()).unwrap(),
        ),
        ("lures".into(), rows!(store.lures().unwrap())),
        ("incidents".into(), rows!(store.incidents().unwrap())),
        ("audit".into(), Value::Array(audit)),
        ("queues".into(), Value::Array(queued)),
        ("events".into(), Value::Array(events)),
    ]
}

/// `ruse-controller migrate-store` moves a whole sled installation — an
/// attack's incident, its events and the lure registry, agents, tokens,
/// admins, audit, campaigns, decoys, rules and a queued notice for an
/// output that is down — into PostgreSQL; both stores then hold the same
/// records, and a controller on PostgreSQL carries on with them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_store_moves_a_whole_installation_into_postgresql() {
    let test = "migrate_store_moves_a_whole_installation_into_postgresql";
    let Some(pg) = Postgres::start(test) else {
        return;
    };
    let url = pg.database("ruse");
    let down = free_ports(1)[0];
    let mut h = Hospital::start(|c| {
        c.outputs = vec![webhook("soc-webhook", down, "json")];
    })
    .await;
    h.tc.apply(
        "kind: AllowRule\nname: nightly-backup\nprocess: /usr/bin/tar\n---\nkind: Suppression\nname: it-scanner\nsource: 127.0.0.3/32\nexpires: 2099-01-01\n",
    )
    .await;
    h.tc.token("site=er", 3, Duration::from_secs(600)).await;
    h.touch(&h.lure("patient-csv").await).await;
    let incident = h.incident("for the touch", |_| true).await;
    eventually(
        "a notice queued for the output that is down",
        Duration::from_secs(10),
        || async {
            let i = h.incident_by_id(&incident.id).await;
            i.deliveries.iter().any(|d| d.attempts >= 1)
        },
    )
    .await;
    h.tc.stop().await;
    let data = h.tc.data_dir().to_owned();

    let out = Command::new(ruse_e2e::process::binary("ruse-controller"))
        .args(["migrate-store", "--from"])
        .arg(&data)
        .args(["--to", &url])
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("copied and verified"), "{text}");
    for kind in [
        "events",
        "lure instances",
        "incidents",
        "queued notices",
        "audit records",
    ] {
        assert!(text.contains(kind), "{kind} missing from {text}");
    }

    {
        let sled = SledStore::open(&data.join("store"), 1 << 20).unwrap();
        let queues = sled.queue_names();
        assert!(!queues.is_empty());
        let pg_store = PgStore::open(&pg.options("ruse")).unwrap();
        let (a, b) = (everything(&sled, &queues), everything(&pg_store, &queues));
        for ((kind, x), (_, y)) in a.iter().zip(&b) {
            assert_eq!(x, y, "{kind} differ");
            assert!(
                kind == "allow rules"
                    || kind == "counters"
                    || x.as_array().is_none_or(|v| !v.is_empty()),
                "no {kind} to compare"
            );
        }
    }
    // Again, into a database that already holds an installation: refused.
    let again = Command::new(ruse_e2e::process::binary("ruse-controller"))
        .args(["migrate-store", "--from"])
        .arg(&data)
        .args(["--to", &url])
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already holds a Ruse installation"));

    // The same data directory (CA, admins) on PostgreSQL carries on.
    h.tc.config.store_url = Some(ruse_controller::config::StoreUrl(url.clone()));
    h.tc.start_again().await;
    let after = h.incident_by_id(&incident.id).await;
    assert_eq!(after.timeline.len(), incident.timeline.len());
    h.touch(&h.lure("patient-csv").await).await;
    h.incident("with the touch after the move", |i| {
        i.id == incident.id && i.event_count > after.event_count
    })
    .await;
}

/// What the Elasticsearch stand-in has seen.
#[derive(Default)]
struct EsState {
    /// Documents by data stream and `_id`.
    docs: BTreeMap<(String, String), serde_json::Value>,
    bulk_requests: usize,
    /// Items answered 429 (es_rejected_execution_exception) so far.
    busy_left: usize,
    /// Documents the stream `logs-ruse.strict-default` refuses for good
    /// (a mapping conflict), the first this many.
    reject_left: usize,
}

/// A strict stand-in for Elasticsearch's `_bulk` API into data streams,
/// written from Elastic's documentation: `POST /<stream>/_bulk` only, an
/// `ApiKey` authorization, NDJSON ending with a newline, `create` actions
/// only (data streams refuse others), an `@timestamp` in every document,
/// an `_id` indexed once (a second create is a 409 conflict), per-item
/// statuses in `items`, and ECS fields of the types ECS gives them.
async fn es_receiver(
    port: u16,
    api_key: &'static str,
    busy: usize,
) -> (
    std::sync::Arc<std::sync::Mutex<EsState>>,
    tokio::task::JoinHandle<()>,
) {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let state = std::sync::Arc::new(std::sync::Mutex::new(EsState {
        busy_left: busy,
        reject_left: 1,
        ..EsState::default()
    }));
    let shared = state.clone();
    let task = json_server(listener, move |head, body| {
        es_answer(&shared, api_key, head, body)
    });
    (state, task)
}

fn es_answer(
    state: &std::sync::Mutex<EsState>,
    api_key: &str,
    head: &str,
    body: &[u8],
) -> (&'static str, serde_json::Value) {
    use serde_json::json;
    let header = |name: &str| {
        head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
    };
    let bad = |reason: &str| {
        (
            "400 Bad Request",
            json!({"error": {"type": "illegal_argument_exception", "reason": reason}, "status": 400}),
        )
    };
    let request_line = head.lines().next().unwrap_or_default();
    let Some(stream) = request_line
        .strip_prefix("POST /")
        .and_then(|r| r.strip_suffix("/_bulk HTTP/1.1"))
    else {
        return bad(&format!("no handler for {request_line}"));
    };
    if header("authorization").as_deref() != Some(&format!("ApiKey {api_key}")) {
        return (
            "401 Unauthorized",
            json!({"error": {"type": "security_exception", "reason": "unable to authenticate with provided credentials and anonymous access is not allowed for this request"}, "status": 401}),
        );
    }
    if header("content-type").as_deref() != Some("application/x-ndjson") {
        return bad("the bulk request must be application/x-ndjson");
    }
    if !body.ends_with(b"\n") {
        return bad("The bulk request must be terminated by a newline [\\n]");
    }
    let text = String::from_utf8(body.to_vec()).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    if !lines.len().is_multiple_of(2) {
        return bad("an action line without its document");
    }
    let mut st = state.lock().unwrap();
    st.bulk_requests += 1;
    let mut items = Vec::new();
    for pair in lines.chunks(2) {
        let action: serde_json::Value = serde_json::from_str(pair[0]).unwrap();
        let doc: serde_json::Value = serde_json::from_str(pair[1]).unwrap();
        // An action may name its own data stream.
        let stream = action["create"]["_index"].as_str().unwrap_or(stream);
        let item = |status: u16, error: Option<(&str, String)>| {
            let mut item = json!({"_index": format!(".ds-{stream}-000001"), "status": status});
            if let Some((kind, reason)) = error {
                item["error"] = json!({"type": kind, "reason": reason});
            }
            json!({"create": item})
        };
        let Some(create) = action.get("create") else {
            items.push(item(
                400,
                Some((
                    "illegal_argument_exception",
                    "only write ops with an op_type of create are allowed in data streams".into(),
                )),
            ));
            continue;
        };
        let id = create["_id"].as_str().unwrap_or_default().to_owned();
        let shape = if doc["event"]["kind"] == "event" {
            ecs_event_shape(&doc)
        } else {
            ecs_shape(&doc)
        };
        if let Err(why) = shape {
            items.push(item(400, Some(("document_parsing_exception", why))));
            continue;
        }
        if st.busy_left > 0 {
            st.busy_left -= 1;
            items.push(item(
                429,
                Some((
                    "es_rejected_execution_exception",
                    "rejected execution of coordinating operation".into(),
                )),
            ));
            continue;
        }
        if stream == "logs-ruse.strict-default" && st.reject_left > 0 {
            st.reject_left -= 1;
            items.push(item(
                400,
                Some((
                    "document_parsing_exception",
                    "[1:2] failed to parse field [labels.status] of type [long]".into(),
                )),
            ));
            continue;
        }
        let key = (stream.to_owned(), id.clone());
        if st.docs.contains_key(&key) {
            items.push(item(
                409,
                Some((
                    "version_conflict_engine_exception",
                    format!("[{id}]: version conflict, document already exists"),
                )),
            ));
            continue;
        }
        st.docs.insert(key, doc);
        items.push(item(201, None));
    }
    let errors = items
        .iter()
        .any(|i| i["create"]["status"].as_u64().unwrap_or(0) >= 300);
    (
        "200 OK",
        json!({"took": 3, "errors": errors, "items": items}),
    )
}

/// The ECS fields every raw event document has.
fn ecs_event_shape(doc: &serde_json::Value) -> Result<(), String> {
    for path in [
        "/@timestamp",
        "/ecs/version",
        "/event/id",
        "/event/action",
        "/host/id",
    ] {
        doc.pointer(path)
            .and_then(|v| v.as_str())
            .ok_or_else(|| format!("{path} is missing or not a string"))?;
    }
    if doc
        .pointer("/event/category")
        .and_then(|v| v.as_array())
        .is_none()
    {
        return Err("event.category is not an array".into());
    }
    Ok(())
}

/// The ECS fields of an alert, with the types and values ECS allows.
fn ecs_shape(doc: &serde_json::Value) -> Result<(), String> {
    let text = |path: &str| -> Result<&str, String> {
        doc.pointer(path)
            .and_then(|v| v.as_str())
            .ok_or_else(|| format!("{path} is missing or not a string"))
    };
    UnixMs::parse_rfc3339(text("/@timestamp")?).map_err(|_| {
        "data stream timestamp field [@timestamp] is missing or not a date".to_owned()
    })?;
    if !text("/ecs/version")?.starts_with("8.") {
        return Err("ecs.version".into());
    }
    if text("/event/kind")? != "alert" {
        return Err("event.kind".into());
    }
    let list = |path: &str| -> Result<Vec<&str>, String> {
        doc.pointer(path)
            .and_then(|v| v.as_array())
            .map(|a| a.iter().filter_map(|x| x.as_str()).collect())
            .ok_or_else(|| format!("{path} is not an array"))
    };
    // ECS: intrusion_detection pairs with allowed, denied or info.
    if list("/event/category")? != ["intrusion_detection"]
        || !list("/event/type")?
            .iter()
            .all(|t| ["allowed", "denied", "info"].contains(t))
    {
        return Err("event.category / event.type".into());
    }
    let severity = doc.pointer("/event/severity").and_then(|v| v.as_u64());
    if severity.is_none_or(|s| s > 100) {
        return Err("event.severity is not a number 0-100".into());
    }
    if text("/threat/framework")? != "MITRE ATT&CK" {
        return Err("threat.framework".into());
    }
    let ids = list("/threat/technique/id")?;
    if ids.is_empty() || ids.len() != list("/threat/technique/name")?.len() {
        return Err("threat.technique.id / name".into());
    }
    if list("/threat/tactic/id")?
        .iter()
        .any(|t| !t.starts_with("TA"))
    {
        return Err("threat.tactic.id".into());
    }
    text("/rule/name")?;
    text("/host/hostname")?;
    text("/labels/incident_id")?;
    Ok(())
}

/// Incidents reach Elasticsearch as ECS alert documents through `_bulk`:
/// after the cluster is busy (429 items) they are retried, each version
/// indexed once under a stable id; a document the cluster refuses for good
/// (a mapping conflict) is reported as rejected and does not hold up the
/// notice behind it (the incident's resolution); a wrong API key is named without the key; and the
/// file output writes the same documents for Filebeat to ship.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elasticsearch_gets_ecs_alerts_through_bulk_and_a_rejected_one_does_not_block_the_rest() {
    const KEY: &str = "VnVhQ2ZHY0JDZGJrUW0tZTVhT3g6dWkybHAyYXhUTm1zeWFrdzl0dk5udw==";
    let port = free_ports(1)[0];
    let (es, server) = es_receiver(port, KEY, 2).await;
    let dir = tempfile::tempdir().unwrap();
    let ecs_file = dir.path().join("ecs.ndjson");
    let output = |name: &str, index: Option<&str>, key: &str| OutputConfig {
        name: name.into(),
        kind: "elasticsearch".into(),
        url: Some(format!("http://127.0.0.1:{port}")),
        index: index.map(str::to_owned),
        token: Some(key.into()),
        ..OutputConfig::default()
    };
    let h = Hospital::start(|c| {
        c.outputs = vec![
            output("elastic", None, KEY),
            output("elastic-strict", Some("logs-ruse.strict-default"), KEY),
            output("elastic-wrong-key", None, "bm90LXRoZS1rZXk="),
            OutputConfig {
                name: "filebeat".into(),
                kind: "file".into(),
                path: Some(ecs_file.clone()),
                format: Some("ecs".into()),
                ..OutputConfig::default()
            },
        ];
        c.output_retry_min = Duration::from_millis(100);
        c.output_retry_max = Duration::from_millis(400);
    })
    .await;
    let lure = h.lure("patient-csv").await;
    h.touch(&lure).await;
    let i = h.incident("for the touch", |_| true).await;
    let delivery = |output: &'static str, state: &'static str| {
        let id = i.id.clone();
        let h = &h;
        move || {
            let id = id.clone();
            async move {
                h.incident_by_id(&id)
                    .await
                    .deliveries
                    .iter()
                    .any(|d| d.output == output && d.state == state)
            }
        }
    };
    eventually(
        "indexed after the busy answers",
        Duration::from_secs(20),
        delivery("elastic", "delivered"),
    )
    .await;
    eventually(
        "the strict stream's refusal reported",
        Duration::from_secs(20),
        delivery("elastic-strict", "rejected"),
    )
    .await;
    eventually("the wrong key named", Duration::from_secs(10), || async {
        h.incident_by_id(&i.id).await.deliveries.iter().any(|d| {
            d.output == "elastic-wrong-key"
                && d.state == "failing"
                && d.last_error.contains("401")
                && d.last_error.contains("unable to authenticate")
                && !d.last_error.contains("bm90LXRoZS1rZXk=")
        })
    })
    .await;
    // The incident's next notice (resolved) goes through on the strict
    // stream: the rejected one held nothing up.
    h.resolve(&i.id, "a drill of the SOC's Elastic pipeline")
        .await;
    eventually(
        "the next version indexed on the strict stream",
        Duration::from_secs(20),
        || async {
            let strict = es
                .lock()
                .unwrap()
                .docs
                .keys()
                .filter(|(s, _)| s == "logs-ruse.strict-default")
                .count();
            strict == 1
                && h.incident_by_id(&i.id)
                    .await
                    .deliveries
                    .iter()
                    .any(|d| d.output == "elastic-strict" && d.state == "delivered")
        },
    )
    .await;
    {
        let st = es.lock().unwrap();
        let on = |stream: &str| {
            st.docs
                .iter()
                .filter(|((s, _), _)| s == stream)
                .map(|((_, id), doc)| (id.clone(), doc.clone()))
                .collect::<Vec<_>>()
        };
        let main = on("logs-ruse.incidents-default");
        let ids: BTreeSet<&str> = main.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(ids.len(), main.len(), "each version once");
        assert!(
            ids.iter().all(|id| id.starts_with(&format!("{}-", i.id))),
            "{ids:?}"
        );
        let doc = &main[0].1;
        assert_eq!(doc["labels"]["incident_id"], i.id);
        let host = i.path.iter().find(|h| h.kind == "host").unwrap();
        assert_eq!(doc["host"]["hostname"], host.name.as_str());
        assert_eq!(doc["host"]["id"], h.ws_id.as_str());
        assert_eq!(doc["event"]["severity"], 73, "high");
        assert!(
            doc["threat"]["technique"]["id"]
                .as_array()
                .unwrap()
                .iter()
                .any(|t| t == "T1005")
        );
        assert!(
            doc["threat"]["tactic"]["name"]
                .as_array()
                .unwrap()
                .iter()
                .any(|t| t == "Collection")
        );
        assert_eq!(
            on("logs-ruse.strict-default").len(),
            1,
            "the rejected version is not there, the next is"
        );
        assert!(st.bulk_requests >= 3);
    }
    // The file output: one ECS document per line, the same shape.
    let text = std::fs::read_to_string(&ecs_file).unwrap();
    let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    ecs_shape(&first).unwrap();
    assert_eq!(first["labels"]["incident_id"], i.id);
    // Every document, indexed or written, against Elastic's ECS field
    // definitions: every field, its type, arrays and allowed values.
    let mut docs: Vec<serde_json::Value> = es.lock().unwrap().docs.values().cloned().collect();
    docs.extend(text.lines().map(|l| serde_json::from_str(l).unwrap()));
    let report = ecs_check(&docs);
    assert_eq!(report.matches("valid ECS").count(), docs.len(), "{report}");
    server.abort();
}

/// With `events = true` raw events go out beside incidents: the scripted
/// attack's honeyfile read, credential use and DICOM contact reach
/// Splunk's HEC (after a busy answer, several to a request, each indexed
/// once), Elasticsearch (ECS `event.kind: event` documents in their own
/// data stream) and files as ECS and OCSF (File System Activity,
/// Authentication, Network Activity): every document valid against ECS
/// 8.11 or OCSF 1.5.0. An output without `events` gets incidents only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_events_reach_siems_beside_incidents_as_ecs_ocsf_and_hec_events() {
    if !require_tool("raw_events_reach_siems", "ssh") {
        return;
    }
    const TOKEN: &str = "0d9e8f7a-6b5c-4d3e-8f2a-1b0c9d8e7f6a";
    const KEY: &str = "cmF3LWV2ZW50czpzZWNyZXQ=";
    let ports = free_ports(2);
    let (hec, hec_server) = hec_receiver(ports[0], TOKEN, 1).await;
    let (es, es_server) = es_receiver(ports[1], KEY, 0).await;
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, format: &str, events: bool| OutputConfig {
        name: name.into(),
        kind: "file".into(),
        path: Some(dir.path().join(format!("{name}.ndjson"))),
        format: Some(format.into()),
        events: Some(events),
        ..OutputConfig::default()
    };
    let h = Hospital::start(|c| {
        c.outputs = vec![
            OutputConfig {
                name: "splunk".into(),
                kind: "splunk-hec".into(),
                url: Some(format!("http://127.0.0.1:{}", ports[0])),
                token: Some(TOKEN.into()),
                events: Some(true),
                ..OutputConfig::default()
            },
            OutputConfig {
                name: "elastic".into(),
                kind: "elasticsearch".into(),
                url: Some(format!("http://127.0.0.1:{}", ports[1])),
                token: Some(KEY.into()),
                events: Some(true),
                ..OutputConfig::default()
            },
            file("filebeat", "ecs", true),
            file("security-lake", "ocsf", true),
            file("incidents-only", "json", false),
        ];
        c.output_retry_min = Duration::from_millis(100);
        c.output_retry_max = Duration::from_millis(400);
    })
    .await;
    scripted_attack_steps(&h).await;
    // And a bare connection to the DICOM port: a network event.
    drop(
        tokio::net::TcpStream::connect(("127.0.0.1", h.dicom_port))
            .await
            .unwrap(),
    );
    eventually(
        "the connection recorded",
        Duration::from_secs(10),
        || async {
            h.tc.events(pb::EventFilter::default())
                .await
                .iter()
                .any(|e| e.kind == "decoy-connection")
        },
    )
    .await;
    let stored: BTreeSet<String> =
        h.tc.events(pb::EventFilter::default())
            .await
            .into_iter()
            .map(|e| e.id)
            .collect();
    assert!(stored.len() >= 3, "{stored:?}");
    let lines = |name: &str| -> Vec<serde_json::Value> {
        std::fs::read_to_string(dir.path().join(format!("{name}.ndjson")))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let hec_events = || -> BTreeMap<String, usize> {
        let mut ids = BTreeMap::new();
        for e in hec.lock().unwrap().indexed.iter() {
            if e["sourcetype"] == "ruse:event" {
                *ids.entry(e["fields"]["event_id"].as_str().unwrap().to_owned())
                    .or_default() += 1;
            }
        }
        ids
    };
    let es_events = || -> BTreeSet<String> {
        es.lock()
            .unwrap()
            .docs
            .keys()
            .filter(|(stream, _)| stream == "logs-ruse.events-default")
            .map(|(_, id)| id.clone())
            .collect()
    };
    let file_events = |name: &str, id: &str| -> BTreeSet<String> {
        lines(name)
            .iter()
            .filter_map(|d| d.pointer(id).and_then(|v| v.as_str()).map(str::to_owned))
            .collect()
    };
    eventually(
        "every event at every SIEM",
        Duration::from_secs(30),
        || async {
            hec_events().keys().cloned().collect::<BTreeSet<_>>() == stored
                && es_events() == stored
                && file_events("filebeat", "/ruse/event/id") == stored
                && file_events("security-lake", "/metadata/uid")
                    .intersection(&stored)
                    .count()
                    == stored.len()
        },
    )
    .await;
    assert!(
        hec_events().values().all(|n| *n == 1),
        "each event indexed once: {:?}",
        hec_events()
    );
    {
        let st = hec.lock().unwrap();
        assert!(st.largest_batch >= 2, "events and notices share requests");
        assert!(
            st.indexed
                .iter()
                .any(|e| e["sourcetype"] == "ruse:incident")
        );
    }
    // Incidents still go where they went.
    assert!(
        es.lock()
            .unwrap()
            .docs
            .keys()
            .any(|(stream, _)| stream == "logs-ruse.incidents-default")
    );
    assert!(
        lines("incidents-only")
            .iter()
            .all(|l| l.get("incident").is_some()),
        "no events where events is off"
    );
    // The ECS documents, indexed and written, against ECS 8.11.
    let mut ecs: Vec<serde_json::Value> = es.lock().unwrap().docs.values().cloned().collect();
    ecs.extend(lines("filebeat"));
    let credential_use = ecs
        .iter()
        .find(|d| d["event"]["action"] == "credential-use")
        .expect("a credential-use event");
    assert_eq!(credential_use["event"]["category"][0], "authentication");
    assert_eq!(credential_use["source"]["ip"], "127.0.0.2");
    assert_eq!(credential_use["user"]["name"], "radiology");
    let read = ecs
        .iter()
        .find(|d| d["event"]["kind"] == "event" && d["event"]["action"] == "touch")
        .expect("a touch event");
    assert_eq!(read["host"]["id"], h.ws_id.as_str());
    assert!(read["file"]["path"].as_str().unwrap().contains("Exports"));
    let report = ecs_check(&ecs);
    assert_eq!(report.matches("valid ECS").count(), ecs.len(), "{report}");
    // The OCSF lines: findings and the three activity classes, all valid.
    let ocsf = lines("security-lake");
    let classes: BTreeSet<u64> = ocsf
        .iter()
        .filter_map(|d| d["class_uid"].as_u64())
        .collect();
    for class in [1001, 2004, 3002, 4001] {
        assert!(classes.contains(&class), "class {class} in {classes:?}");
    }
    let report = ocsf_validate(&ocsf);
    assert_eq!(
        report.matches(" valid (OCSF").count(),
        ocsf.len(),
        "{report}"
    );
    hec_server.abort();
    es_server.abort();
}

/// Runs tests/clients/ecs_check.js (Elastic's ECS 8.11 field definitions,
/// from the @elastic/ecs package the test dependencies install) over
/// `docs`; its report.
fn ecs_check(docs: &[serde_json::Value]) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/ecs_check.js");
    let mut child = Command::new("node")
        .arg(script)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("node (Node.js) runs the ECS check; scripts/install-test-deps.sh needs it");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        for d in docs {
            writeln!(stdin, "{d}").unwrap();
        }
    }
    let out = child.wait_with_output().unwrap();
    let report =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "ECS check failed:\n{report}");
    report
}

/// Runs tests/clients/ocsf_validate.py (OCSF 1.5.0, through ocsf-emitter
/// in the test virtualenv) over `docs`; its report.
fn ocsf_validate(docs: &[serde_json::Value]) -> String {
    let python = ruse_e2e::test_venv().join("bin/python");
    assert!(
        python.exists() || std::env::var("CI").as_deref() != Ok("true"),
        "the test virtualenv (scripts/install-test-deps.sh) is missing"
    );
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/ocsf_validate.py");
    let mut child = Command::new(python)
        .arg(script)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        for d in docs {
            writeln!(stdin, "{d}").unwrap();
        }
    }
    let out = child.wait_with_output().unwrap();
    let report =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "OCSF validation failed:\n{report}");
    report
}

/// Incidents as OCSF Detection Findings — by the file output and a
/// webhook — are valid OCSF 1.5.0 (every attribute one the schema
/// defines), with activity Create when the incident opens and Close when
/// it is resolved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ocsf_findings_from_the_file_and_webhook_outputs_are_valid_ocsf() {
    let hook = free_ports(1)[0];
    let (mut bodies, _task) = receiver(hook).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ocsf.ndjson");
    let h = Hospital::start(|c| {
        c.outputs = vec![
            webhook("soar", hook, "ocsf"),
            OutputConfig {
                name: "security-lake".into(),
                kind: "file".into(),
                path: Some(file.clone()),
                format: Some("ocsf".into()),
                ..OutputConfig::default()
            },
        ];
    })
    .await;
    h.touch(&h.lure("patient-csv").await).await;
    let i = h.incident("for the touch", |_| true).await;
    let opened = tokio::time::timeout(Duration::from_secs(10), bodies.recv())
        .await
        .expect("the webhook got the finding")
        .unwrap();
    h.resolve(&i.id, "training").await;
    let closed = tokio::time::timeout(Duration::from_secs(10), bodies.recv())
        .await
        .expect("the webhook got the resolution")
        .unwrap();
    assert_eq!(opened["class_uid"], 2004);
    assert_eq!(opened["activity_id"], 1);
    assert_eq!(closed["activity_id"], 3);
    assert_eq!(closed["status_id"], 4);
    assert_eq!(opened["finding_info"]["uid"], i.id);
    assert_eq!(opened["severity_id"], 4, "high");
    assert!(
        opened["finding_info"]["attacks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["technique"]["uid"] == "T1005" && a["tactic"]["name"] == "Collection")
    );
    eventually(
        "both lines in the file",
        Duration::from_secs(10),
        || async { std::fs::read_to_string(&file).is_ok_and(|t| t.lines().count() == 2) },
    )
    .await;
    let mut docs = vec![opened, closed];
    for line in std::fs::read_to_string(&file).unwrap().lines() {
        docs.push(serde_json::from_str(line).unwrap());
    }
    let report = ocsf_validate(&docs);
    assert_eq!(
        report.matches("DetectionFinding valid").count(),
        4,
        "{report}"
    );
}

/// A strict stand-in for PagerDuty's Events API v2, written from its
/// documentation: `POST /v2/enqueue` with a JSON body; a 32-character
/// routing key; `event_action` trigger, acknowledge or resolve; a dedup
/// key of at most 255 characters; a trigger needs `payload.summary` (at
/// most 1024 characters), `payload.source` and a `payload.severity` of
/// critical, error, warning or info. 202 with the dedup key, or 400
/// "invalid event" with the reasons. Keeps each alert's actions.
async fn pagerduty_receiver(
    port: u16,
) -> (
    std::sync::Arc<std::sync::Mutex<BTreeMap<String, Vec<String>>>>,
    tokio::task::JoinHandle<()>,
) {
    use serde_json::json;
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let alerts = std::sync::Arc::new(std::sync::Mutex::new(BTreeMap::new()));
    let shared = alerts.clone();
    let task = json_server(listener, move |head, body| {
        let event: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
        let mut errors = Vec::new();
        if !head.starts_with("POST /v2/enqueue HTTP/1.1") {
            errors.push("not POST /v2/enqueue".to_owned());
        }
        if event["routing_key"].as_str().is_none_or(|k| k.len() != 32) {
            errors.push("'routing_key' must be 32 characters".into());
        }
        let action = event["event_action"].as_str().unwrap_or_default();
        if !["trigger", "acknowledge", "resolve"].contains(&action) {
            errors.push("'event_action' is invalid".into());
        }
        let key = event["dedup_key"].as_str().unwrap_or_default().to_owned();
        if key.is_empty() || key.len() > 255 {
            errors.push("'dedup_key' is missing or too long".into());
        }
        if action == "trigger" {
            let p = &event["payload"];
            if p["summary"]
                .as_str()
                .is_none_or(|s| s.is_empty() || s.len() > 1024)
            {
                errors.push("'payload.summary' is missing or too long".into());
            }
            if p["source"].as_str().is_none_or(str::is_empty) {
                errors.push("'payload.source' is missing".into());
            }
            if !["critical", "error", "warning", "info"]
                .contains(&p["severity"].as_str().unwrap_or_default())
            {
                errors.push("'payload.severity' is invalid".into());
            }
        }
        if errors.is_empty() {
            shared
                .lock()
                .unwrap()
                .entry(key.clone())
                .or_insert_with(Vec::new)
                .push(action.to_owned());
            (
                "202 Accepted",
                json!({"status": "success", "message": "Event processed", "dedup_key": key}),
            )
        } else {
            (
                "400 Bad Request",
                json!({"status": "invalid event", "message": "Event object is invalid", "errors": errors}),
            )
        }
    });
    (alerts, task)
}

/// PagerDuty pages follow the incident — triggered when it opens,
/// acknowledged and resolved when it is in Ruse, one alert by its dedup
/// key — an event PagerDuty refuses (a wrong routing key) is reported as
/// rejected rather than retried for ever, and a template webhook sends the
/// operator's body with the incident's values as escaped text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pagerduty_pages_follow_the_incident_and_a_template_webhook_fills_its_body() {
    const KEY: &str = "R0123456789abcdef0123456789abcde";
    let [pd_port, chat_port] = free_ports(2)[..] else {
        unreachable!()
    };
    let (alerts, _pd) = pagerduty_receiver(pd_port).await;
    let (mut chat, _chat) = receiver(chat_port).await;
    let pd = |name: &str, key: &str| OutputConfig {
        name: name.into(),
        kind: "webhook".into(),
        url: Some(format!("http://127.0.0.1:{pd_port}/v2/enqueue")),
        format: Some("pagerduty".into()),
        token: Some(key.into()),
        ..OutputConfig::default()
    };
    let h = Hospital::start(|c| {
        c.outputs = vec![
            pd("oncall", KEY),
            pd("oncall-wrong-key", "short"),
            OutputConfig {
                name: "chat".into(),
                kind: "webhook".into(),
                url: Some(format!("http://127.0.0.1:{chat_port}/hooks/chat")),
                template: Some(r#"{"text": "Ruse {{notice}}: {{title}} [{{severity}}] via {{path}}", "thread": {"key": "{{id}}"}}"#.into()),
                ..OutputConfig::default()
            },
        ];
    })
    .await;
    h.touch(&h.lure("patient-csv").await).await;
    let i = h.incident("for the touch", |_| true).await;
    let message = tokio::time::timeout(Duration::from_secs(10), chat.recv())
        .await
        .expect("the template webhook was called")
        .unwrap();
    assert_eq!(
        message["text"],
        format!(
            "Ruse opened: {} [{}] via {}",
            i.title,
            i.severity,
            i.path
                .iter()
                .map(|h| h.name.as_str())
                .collect::<Vec<_>>()
                .join(" → ")
        )
    );
    assert_eq!(message["thread"]["key"], i.id);
    let key = format!("ruse-{}", i.id);
    eventually("the page triggered", Duration::from_secs(10), || async {
        alerts
            .lock()
            .unwrap()
            .get(&key)
            .is_some_and(|a| a == &["trigger"])
    })
    .await;
    h.ack(&i.id).await;
    eventually("the page acknowledged", Duration::from_secs(10), || async {
        alerts
            .lock()
            .unwrap()
            .get(&key)
            .is_some_and(|a| a == &["trigger", "acknowledge"])
    })
    .await;
    h.resolve(&i.id, "contained").await;
    eventually("the page resolved", Duration::from_secs(10), || async {
        alerts
            .lock()
            .unwrap()
            .get(&key)
            .is_some_and(|a| a == &["trigger", "acknowledge", "resolve"])
    })
    .await;
    let d = h.incident_by_id(&i.id).await;
    let wrong = d
        .deliveries
        .iter()
        .find(|d| d.output == "oncall-wrong-key")
        .unwrap();
    assert_eq!(wrong.state, "rejected", "{wrong:?}");
    assert!(
        wrong.last_error.contains("routing_key"),
        "{}",
        wrong.last_error
    );
    assert!(!wrong.last_error.contains("short"));
    assert_eq!(
        alerts.lock().unwrap().len(),
        1,
        "one alert, by its dedup key"
    );
    // A drill checks these outputs too, and names the refused one at once.
    let steps = drill(&h.tc, &h.ws_id).await;
    for ok in ["output oncall", "output chat"] {
        assert!(
            steps.iter().any(|s| s.step == ok && s.ok),
            "{ok}: {steps:#?}"
        );
    }
    let refused = steps
        .iter()
        .find(|s| s.step == "output oncall-wrong-key")
        .unwrap();
    assert!(
        !refused.ok
            && refused.detail.starts_with("rejected: ")
            && refused.detail.contains("routing_key"),
        "{refused:?}"
    );
}

/// A real SMTP server (aiosmtpd from the test virtualenv, STARTTLS and
/// AUTH required), stopped when dropped.
struct SmtpServer {
    child: std::process::Child,
    port: u16,
    maildir: PathBuf,
    ca_file: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn smtp_server(user: &str, password: &str) -> Option<SmtpServer> {
    let python = ruse_e2e::test_venv().join("bin/python");
    if !python.exists() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "the test virtualenv with aiosmtpd (scripts/install-test-deps.sh) is missing"
        );
        eprintln!("SKIPPED: no test virtualenv (scripts/install-test-deps.sh)");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let ca = ruse_pki::CertificateAuthority::generate("mail.test".parse().unwrap()).unwrap();
    let (chain, key) = ca
        .issue_server(&["localhost".into()], Duration::from_secs(3600))
        .unwrap();
    let (cert_file, key_file, ca_file) = (
        dir.path().join("cert.pem"),
        dir.path().join("key.pem"),
        dir.path().join("ca.pem"),
    );
    let chain_pem: String = chain
        .iter()
        .map(|c| ruse_pki::pem_encode("CERTIFICATE", c))
        .collect();
    std::fs::write(&cert_file, chain_pem).unwrap();
    std::fs::write(&key_file, key.to_pem()).unwrap();
    std::fs::write(&ca_file, ca.cert_pem()).unwrap();
    let maildir = dir.path().join("mail");
    std::fs::create_dir(&maildir).unwrap();
    let port = free_ports(1)[0];
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/smtp_server.py");
    let mut child = Command::new(python)
        .arg(script)
        .arg(port.to_string())
        .arg(&cert_file)
        .arg(&key_file)
        .args([user, password])
        .arg(&maildir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(dir.path().join("smtp.log")).unwrap())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(
        line.trim(),
        "ready",
        "{}",
        std::fs::read_to_string(dir.path().join("smtp.log")).unwrap_or_default()
    );
    Some(SmtpServer {
        child,
        port,
        maildir,
        ca_file,
        _dir: dir,
    })
}

/// The headers and the decoded text and HTML parts of a received mail.
fn read_mail(eml: &Path) -> (BTreeMap<String, String>, String, String) {
    use base64::Engine;
    let raw = std::fs::read_to_string(eml).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let headers: BTreeMap<String, String> = head
        .split("\r\n")
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_ascii_lowercase(), v.to_owned()))
        .collect();
    let boundary = headers["content-type"]
        .split("boundary=\"")
        .nth(1)
        .unwrap()
        .trim_end_matches('"')
        .to_owned();
    let mut parts = BTreeMap::new();
    for part in body.split(&format!("--{boundary}")) {
        let Some((ph, pb)) = part.split_once("\r\n\r\n") else {
            continue;
        };
        let kind = if ph.contains("text/plain") {
            "text"
        } else if ph.contains("text/html") {
            "html"
        } else {
            continue;
        };
        assert!(ph.contains("Content-Transfer-Encoding: base64"), "{ph}");
        let compact: String = pb.split_whitespace().collect();
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(compact)
            .unwrap();
        parts.insert(kind, String::from_utf8(decoded).unwrap());
    }
    (headers, parts["text"].clone(), parts["html"].clone())
}

/// Incident mails go through a real SMTP server with STARTTLS and
/// authentication, to every recipient, with a text and an HTML part; a
/// wrong password is named (never shown) and retried; and past
/// `max_per_hour` a notice waits in the queue instead of burying the
/// mailbox.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incidents_are_mailed_over_starttls_with_authentication_and_a_rate_limit() {
    const PASSWORD: &str = "correct horse battery staple";
    let Some(smtp) = smtp_server("ruse", PASSWORD) else {
        return;
    };
    let mail = |name: &str, password: &str, max: u32| OutputConfig {
        name: name.into(),
        kind: "smtp".into(),
        address: Some(format!("localhost:{}", smtp.port)),
        ca_file: Some(smtp.ca_file.clone()),
        username: Some("ruse".into()),
        password: Some(password.into()),
        from: Some("ruse@hospital.test".into()),
        to: vec!["soc@hospital.test".into(), "oncall@hospital.test".into()],
        max_per_hour: Some(max),
        ..OutputConfig::default()
    };
    let h = Hospital::start(|c| {
        c.outputs = vec![
            mail("soc-mail", PASSWORD, 2),
            mail("wrong-password", "guess", 30),
        ];
        c.output_retry_min = Duration::from_millis(100);
        c.output_retry_max = Duration::from_millis(500);
    })
    .await;
    h.touch(&h.lure("patient-csv").await).await;
    let i = h.incident("for the touch", |_| true).await;
    let eml = smtp.maildir.join("1.eml");
    eventually("the first mail", Duration::from_secs(15), || async {
        eml.exists()
    })
    .await;
    let envelope: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(smtp.maildir.join("1.json")).unwrap())
            .unwrap();
    assert_eq!(envelope["from"], "ruse@hospital.test");
    assert_eq!(
        envelope["to"],
        serde_json::json!(["soc@hospital.test", "oncall@hospital.test"])
    );
    assert_eq!(envelope["user"], "ruse", "authenticated");
    assert_eq!(envelope["tls"], true, "after STARTTLS");
    let (headers, text, html) = read_mail(&eml);
    assert!(
        headers["subject"].starts_with("[Ruse] HIGH incident opened: "),
        "{headers:?}"
    );
    assert!(headers["content-type"].starts_with("multipart/alternative"));
    assert_eq!(headers["x-ruse-incident"], i.id);
    assert!(headers.contains_key("date") && headers.contains_key("message-id"));
    for part in [&text, &html] {
        assert!(part.contains(&i.id), "{part}");
        assert!(part.contains("What to do first"), "{part}");
    }
    assert!(
        text.contains(&format!(
            "Attack path: {}",
            i.path
                .iter()
                .map(|h| h.name.as_str())
                .collect::<Vec<_>>()
                .join(" → ")
        )),
        "{text}"
    );
    assert!(
        html.starts_with("<html>") && html.contains("<table>"),
        "{html}"
    );

    // The wrong password: refused by the server, named, never shown.
    eventually("the refusal named", Duration::from_secs(10), || async {
        h.incident_by_id(&i.id).await.deliveries.iter().any(|d| {
            d.output == "wrong-password"
                && d.state == "failing"
                && d.last_error.contains("authentication refused: 535")
                && !d.last_error.contains("guess")
        })
    })
    .await;

    // Two mails an hour: the acknowledgement is the second, the
    // resolution waits.
    h.ack(&i.id).await;
    let second = smtp.maildir.join("2.eml");
    eventually("the second mail", Duration::from_secs(15), || async {
        second.exists()
    })
    .await;
    assert!(read_mail(&second).0["subject"].contains("incident acknowledged"));
    h.resolve(&i.id, "contained").await;
    eventually("the third held back", Duration::from_secs(10), || async {
        h.incident_by_id(&i.id).await.deliveries.iter().any(|d| {
            d.output == "soc-mail" && d.state == "failing" && d.last_error.contains("max_per_hour")
        })
    })
    .await;
    assert!(
        !smtp.maildir.join("3.eml").exists(),
        "a third mail in the hour"
    );
}

/// An e-mail output with `digest_below = "critical"` mails a high incident
/// only in its digest (once `digest_every` has passed, with a link to the
/// console), while the same incident's escalation to critical is mailed at
/// once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incidents_below_the_digest_severity_are_mailed_together_and_critical_ones_at_once() {
    const PASSWORD: &str = "digest and page";
    if !require_tool("incidents_below_the_digest_severity", "ssh") {
        return;
    }
    let Some(smtp) = smtp_server("ruse", PASSWORD) else {
        return;
    };
    let h = Hospital::start(|c| {
        c.outputs = vec![OutputConfig {
            name: "soc-digest".into(),
            kind: "smtp".into(),
            address: Some(format!("localhost:{}", smtp.port)),
            ca_file: Some(smtp.ca_file.clone()),
            username: Some("ruse".into()),
            password: Some(PASSWORD.into()),
            from: Some("ruse@hospital.test".into()),
            to: vec!["soc@hospital.test".into()],
            digest_below: Some("critical".into()),
            digest_every: Some("4s".into()),
            console_url: Some("https://ruse.hospital.test:8443/".into()),
            ..OutputConfig::default()
        }];
        c.output_retry_min = Duration::from_millis(100);
        c.output_retry_max = Duration::from_millis(500);
    })
    .await;
    let i = scripted_attack_steps(&h).await;
    let mails = || -> Vec<(BTreeMap<String, String>, String)> {
        let mut names: Vec<PathBuf> = std::fs::read_dir(&smtp.maildir)
            .unwrap()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "eml"))
            .collect();
        names.sort();
        names
            .iter()
            .map(|p| {
                let (mut headers, text, _) = read_mail(p);
                // An RFC 2047 word (the title's arrows are not ASCII).
                let subject = &headers["subject"];
                if let Some(b64) = subject
                    .strip_prefix("=?UTF-8?B?")
                    .and_then(|s| s.strip_suffix("?="))
                {
                    use base64::Engine;
                    let bytes = base64::engine::general_purpose::STANDARD
                        .decode(b64)
                        .unwrap();
                    headers.insert("subject".into(), String::from_utf8(bytes).unwrap());
                }
                (headers, text)
            })
            .collect()
    };
    let start = Instant::now();
    loop {
        let subjects: Vec<String> = mails()
            .into_iter()
            .map(|(h, _)| h["subject"].clone())
            .collect();
        let digest = subjects
            .iter()
            .any(|s| s.starts_with("[Ruse] Digest: 1 incident below critical"));
        let page = subjects
            .iter()
            .any(|s| s.starts_with("[Ruse] CRITICAL incident escalated: "));
        if digest && page {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no digest and page within 20 s; mailed: {subjects:?}; deliveries: {:?}",
            h.incident_by_id(&i.id).await.deliveries
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let all = mails();
    assert!(
        all.iter()
            .all(|(h, _)| !h["subject"].contains("HIGH incident opened")),
        "the high incident was not mailed alone: {:?}",
        all.iter().map(|(h, _)| &h["subject"]).collect::<Vec<_>>()
    );
    let (_, digest) = all
        .iter()
        .find(|(h, _)| h["subject"].contains("Digest"))
        .unwrap();
    assert!(digest.contains(&i.id), "{digest}");
    assert!(
        digest.contains(&format!(
            "https://ruse.hospital.test:8443/incidents/{}",
            i.id
        )),
        "{digest}"
    );
    let (page, text) = all
        .iter()
        .find(|(h, _)| h["subject"].contains("CRITICAL"))
        .unwrap();
    assert_eq!(page["x-ruse-incident"], i.id);
    assert!(
        text.contains("In the console: https://ruse.hospital.test:8443/incidents/"),
        "{text}"
    );
    eventually("the delivery recorded", Duration::from_secs(5), || async {
        h.incident_by_id(&i.id)
            .await
            .deliveries
            .iter()
            .any(|d| d.output == "soc-digest" && d.state == "delivered")
    })
    .await;
}

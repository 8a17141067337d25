use super::correlate::MAX_KEYS;
use std::collections::BTreeSet;
use std::time::Duration;

use ruse_proto::convert::CREDENTIAL_USE;

use super::*;
use crate::model::{MAX_INDICATORS, MAX_TIMELINE, StoredEvent, Suppression};
use ruse_proto::convert::{DecoyContact, EventProcess, PresentedCredential};
use ruse_proto::types::Labels;

struct Dir;
impl Directory for Dir {
    fn hostname(&self, agent: &AgentId) -> String {
        format!("host-{}", &agent.as_str()[..4])
    }
    fn labels(&self, _: &AgentId) -> Labels {
        Labels::parse_pairs(["site=icu"]).unwrap()
    }
}

fn base(agent: &AgentId, at: i64) -> StoredEvent {
    StoredEvent {
        campaign: "c".into(),
        observed: UnixMs(at),
        received: UnixMs(at),
        ..crate::events::tests_support::event(agent)
    }
}

fn touch(agent: &AgentId, lure: &str, exe: &str, at: i64) -> StoredEvent {
    StoredEvent {
        kind: "touch".into(),
        lure_id: lure.into(),
        template: "patient-csv".into(),
        path: "/home/a/x.csv".into(),
        process: Some(EventProcess {
            pid: 7,
            exe: exe.into(),
            ..Default::default()
        }),
        ..base(agent, at)
    }
}

fn decoy(
    agent: &AgentId,
    kind: &str,
    source: &str,
    protocol: &str,
    port: u16,
    at: i64,
) -> StoredEvent {
    StoredEvent {
        kind: kind.into(),
        decoy: Some(DecoyContact {
            name: "pacs".into(),
            protocol: protocol.into(),
            port,
            source_ip: source.into(),
            source_port: 40000,
        }),
        ..base(agent, at)
    }
}

fn use_of(
    lure: &str,
    origin: &AgentId,
    decoy_agent: &AgentId,
    source: &str,
    at: i64,
) -> StoredEvent {
    StoredEvent {
        lure_id: lure.into(),
        template: "ssh-key".into(),
        origin_agent: Some(origin.clone()),
        credential: Some(PresentedCredential {
            username: "radiology7".into(),
            key_fingerprint: "SHA256:x".into(),
            ..Default::default()
        }),
        ..decoy(decoy_agent, CREDENTIAL_USE, source, "ssh", 22, at)
    }
}

fn opened(o: Outcome) -> Incident {
    match o {
        Outcome::Opened(i) => (*i).clone(),
        other => panic!("expected a new incident, got {other:?}"),
    }
}

fn updated(o: Outcome) -> Incident {
    match o {
        Outcome::Updated { incident, .. } => (*incident).clone(),
        other => panic!("expected an update, got {other:?}"),
    }
}

#[test]
fn sprays_of_distinct_values_leave_the_incident_bounded() {
    let (a, d) = (AgentId::generate(), AgentId::generate());
    let mut c = Correlator::new(Duration::from_secs(3600), []);
    let now = UnixMs(1_000_000);
    let n = 3 * MAX_INDICATORS;
    // One address trying a new user name on a new port each time.
    let mut ids = BTreeSet::new();
    let mut last = None;
    for k in 0..n {
        let e = StoredEvent {
            credential: Some(PresentedCredential {
                username: format!("user{k}"),
                ..Default::default()
            }),
            ..decoy(
                &d,
                "decoy-login",
                "10.1.1.1",
                "ftp",
                2000 + k as u16,
                1000 + k as i64,
            )
        };
        let (Outcome::Opened(i) | Outcome::Updated { incident: i, .. }) =
            c.correlate(&e, None, &[], &Dir, now)
        else {
            panic!("event {k} was not correlated");
        };
        ids.insert(i.id.clone());
        last = Some(i);
    }
    let i = last.unwrap();
    assert_eq!(ids.len(), 1, "one incident");
    assert_eq!(i.event_count, n as u64);
    assert_eq!(i.credentials.len(), MAX_INDICATORS);
    assert!(i.credentials.contains("user0"), "the first ones are kept");
    assert_eq!(i.ports.len(), MAX_INDICATORS);
    assert_eq!(i.timeline.len(), n.min(MAX_TIMELINE));

    // One host, a new program reading the lure each time.
    let mut last = None;
    for k in 0..n {
        let e = touch(&a, "L1", &format!("/tmp/x{k}"), 1000 + k as i64);
        let (Outcome::Opened(i) | Outcome::Updated { incident: i, .. }) =
            c.correlate(&e, None, &[], &Dir, now)
        else {
            panic!("touch {k} was not correlated");
        };
        last = Some(i);
    }
    let i = last.unwrap();
    assert_eq!(i.event_count, n as u64);
    assert_eq!(i.processes.len(), MAX_INDICATORS);
    assert!(i.keys.len() <= MAX_KEYS);
    assert!(i.path.len() <= MAX_INDICATORS);
    assert!(i.rules.contains("repeated-touches"));
}

#[test]
fn harvest_use_and_decoy_contact_are_one_incident_with_the_path() {
    let (a, d) = (AgentId::generate(), AgentId::generate());
    let mut c = Correlator::new(Duration::from_secs(3600), []);
    let now = UnixMs(1_000_000);
    let i = opened(c.correlate(&touch(&a, "L1", "/usr/bin/cat", 1000), None, &[], &Dir, now));
    assert_eq!(i.severity, Severity::High);
    let i2 = updated(c.correlate(
        &use_of("L2", &a, &d, "10.9.8.7", 2000),
        None,
        &[],
        &Dir,
        now,
    ));
    assert_eq!(i2.id, i.id);
    assert_eq!(i2.severity, Severity::Critical);
    let i3 = updated(c.correlate(
        &decoy(&d, "decoy-login", "10.9.8.7", "dicom", 104, 3000),
        None,
        &[],
        &Dir,
        now,
    ));
    assert_eq!(i3.id, i.id);
    let kinds: Vec<&str> = i3.path.iter().map(|h| h.kind.as_str()).collect();
    assert_eq!(kinds, ["host", "source", "decoy"]);
    assert_eq!(i3.path[0].agent.as_ref(), Some(&a));
    assert_eq!(i3.path[1].name, "10.9.8.7");
    assert_eq!(i3.path[2].name, "pacs");
    for t in ["T1005", "T1078", "T1021.004", "T1110"] {
        assert!(i3.techniques.contains(t), "{t} in {:?}", i3.techniques);
    }
    assert!(i3.rules.contains("credential-use"));
    assert!(
        i3.title.starts_with("Stolen credential used: host-"),
        "{}",
        i3.title
    );
    assert_eq!(i3.event_count, 3);
    assert!(i3.credentials.contains("SHA256:x"));
}

#[test]
fn unrelated_activity_and_old_activity_open_new_incidents() {
    let (a, b, d) = (
        AgentId::generate(),
        AgentId::generate(),
        AgentId::generate(),
    );
    let mut c = Correlator::new(Duration::from_secs(60), []);
    let now = UnixMs(0);
    let first = opened(c.correlate(&touch(&a, "L1", "/usr/bin/cat", 0), None, &[], &Dir, now));
    // Another host: another incident.
    let other = opened(c.correlate(&touch(&b, "L9", "/usr/bin/cat", 1000), None, &[], &Dir, now));
    assert_ne!(first.id, other.id);
    // Same host, same process, within the window: the same incident.
    let same = updated(c.correlate(
        &touch(&a, "L2", "/usr/bin/cat", 30_000),
        None,
        &[],
        &Dir,
        now,
    ));
    assert_eq!(same.id, first.id);
    assert!(same.rules.contains("same-host-process"));
    // Same host, another process: repeated touches.
    let rep = updated(c.correlate(
        &touch(&a, "L3", "/usr/bin/less", 40_000),
        None,
        &[],
        &Dir,
        now,
    ));
    assert!(rep.rules.contains("repeated-touches"));
    // Past the window: a new incident.
    let late = opened(c.correlate(
        &touch(&a, "L1", "/usr/bin/cat", 200_000),
        None,
        &[],
        &Dir,
        now,
    ));
    assert_ne!(late.id, first.id);
    // A scan across ports from one source.
    let mut scan = opened(c.correlate(
        &decoy(&d, "portscan", "10.0.0.9", "portscan", 3389, 0),
        None,
        &[],
        &Dir,
        now,
    ));
    assert_eq!(scan.severity, Severity::Low);
    for (port, at) in [(22, 1000), (445, 2000)] {
        scan = updated(c.correlate(
            &decoy(&d, "decoy-connection", "10.0.0.9", "ssh", port, at),
            None,
            &[],
            &Dir,
            now,
        ));
    }
    assert!(scan.rules.contains("scan"));
    assert_eq!(scan.severity, Severity::Medium);
    assert!(
        scan.title.starts_with("Scan from 10.0.0.9 across 3"),
        "{}",
        scan.title
    );
    assert!(scan.techniques.contains("T1046"));
}

#[test]
fn allowed_drift_suppressed_and_drill_events_are_kept_apart() {
    let (a, d) = (AgentId::generate(), AgentId::generate());
    let mut c = Correlator::new(Duration::from_secs(3600), []);
    let now = UnixMs(0);
    let mut allowed = touch(&a, "L1", "/usr/bin/restic", 0);
    allowed.allowed = true;
    assert_eq!(
        c.correlate(&allowed, None, &[], &Dir, now),
        Outcome::Ignored
    );
    let drift = StoredEvent {
        kind: "drift".into(),
        ..touch(&a, "L1", "", 0)
    };
    assert_eq!(c.correlate(&drift, None, &[], &Dir, now), Outcome::Ignored);
    let rules = [Suppression {
        name: "vuln-scanner".into(),
        description: String::new(),
        selector: Labels::parse_pairs(["site=icu"]).unwrap(),
        source: Some(crate::model::Cidr::parse("10.50.0.0/16").unwrap()),
        process: String::new(),
        template: String::new(),
        expires: None,
    }];
    let scan = decoy(&d, "portscan", "10.50.3.4", "portscan", 3389, 0);
    assert_eq!(
        c.correlate(&scan, None, &rules, &Dir, now),
        Outcome::Suppressed("vuln-scanner".into())
    );
    let mut expired = rules.clone();
    expired[0].expires = Some(UnixMs(-1));
    assert!(matches!(
        c.correlate(&scan, None, &expired, &Dir, now),
        Outcome::Opened(_)
    ));
    // A drill on the same host does not join the real incident.
    let real = opened(c.correlate(&touch(&a, "L1", "/usr/bin/cat", 10), None, &[], &Dir, now));
    let drill = opened(c.correlate(
        &touch(&a, "L1", "/usr/bin/cat", 20),
        Some("d1"),
        &[],
        &Dir,
        now,
    ));
    assert_ne!(real.id, drill.id);
    assert!(drill.drill && drill.title.starts_with("[DRILL]"));
}

#[test]
fn resumes_from_stored_incidents_and_resolved_ones_stop_correlating() {
    let a = AgentId::generate();
    let mut c = Correlator::new(Duration::from_secs(3600), []);
    let now = UnixMs(0);
    let i = opened(c.correlate(&touch(&a, "L1", "/usr/bin/cat", 0), None, &[], &Dir, now));
    let mut c2 = Correlator::new(Duration::from_secs(3600), [i.clone()]);
    let again = updated(c2.correlate(&touch(&a, "L1", "/usr/bin/cat", 5), None, &[], &Dir, now));
    assert_eq!(again.id, i.id);
    let mut resolved = again.clone();
    resolved.status = Status::Resolved;
    c2.replace(resolved);
    let fresh = opened(c2.correlate(&touch(&a, "L1", "/usr/bin/cat", 6), None, &[], &Dir, now));
    assert_ne!(fresh.id, i.id);
}

/// Each batch writes exactly the timeline entries it added, so a
/// restart reads back every incident's whole timeline.
#[tokio::test]
async fn timelines_written_batch_by_batch_are_read_back_whole() {
    use crate::store::{Committer, SledStore, Store};
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (AgentId::generate(), AgentId::generate());
    let ids = |i: &Incident| {
        i.timeline
            .iter()
            .map(|t| t.event_id.clone())
            .collect::<Vec<_>>()
    };
    let batches = [
        vec![
            decoy(&a, "decoy-login", "10.0.0.1", "ftp", 21, 1_000),
            decoy(&a, "decoy-login", "10.0.0.1", "ftp", 21, 1_001),
        ],
        vec![
            decoy(&a, "decoy-login", "10.0.0.1", "ftp", 21, 1_002),
            touch(&b, "L9", "/usr/bin/cat", 1_003),
        ],
    ];
    let (first, second) = {
        let store: std::sync::Arc<dyn Store> =
            std::sync::Arc::new(SledStore::open(dir.path(), 1 << 20).unwrap());
        let (committer, task) = Committer::spawn(store.clone());
        let incidents =
            Incidents::load(store.clone(), committer, Duration::from_secs(3600)).unwrap();
        let mut seen: Vec<String> = Vec::new();
        for batch in &batches {
            let events: Vec<_> = batch.iter().map(|e| (e.clone(), None)).collect();
            let changes = incidents.correlate(&events, &[], &Dir).unwrap();
            for i in &changes.incidents {
                if !seen.contains(&i.id) {
                    seen.push(i.id.clone());
                }
            }
        }
        store.flush().unwrap();
        assert_eq!(seen.len(), 2, "unrelated events, two incidents");
        let first = incidents.get(&seen[0]).unwrap();
        let second = incidents.get(&seen[1]).unwrap();
        // Close the store: the committer task holds it until it ends.
        drop((incidents, store));
        task.await.unwrap();
        (first, second)
    };
    let e = |b: usize, k: usize| batches[b][k].id.clone();
    assert_eq!(ids(&first), [e(0, 0), e(0, 1), e(1, 0)]);
    assert_eq!(ids(&second), [e(1, 1)]);
    let store: std::sync::Arc<dyn Store> =
        std::sync::Arc::new(SledStore::open(dir.path(), 1 << 20).unwrap());
    let (committer, _task) = Committer::spawn(store.clone());
    let back = Incidents::load(store, committer, Duration::from_secs(3600)).unwrap();
    assert_eq!(back.get(&first.id).unwrap(), first);
    assert_eq!(back.get(&second.id).unwrap(), second);
}

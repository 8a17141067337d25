//! The store contract (`ruse_controller::store::Store`), checked on both
//! engines: every test in `contract` runs once on sled and once on a real
//! PostgreSQL 15 cluster made for it. Then what only the PostgreSQL store
//! has: migrations under a lock, group commit visible to other
//! controllers only once flushed, and what a database crash does; then
//! controllers sharing one database (replicas).
//!
//! Longer than our ~800 lines on purpose: one test binary per area: every
//! binary links the whole workspace, so splitting this one would add a link
//! step to every CI run; the tests share its fixtures.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::ops::ControlFlow;
use std::sync::Arc;

use ruse_controller::model::{
    AdminRecord, AgentRecord, AuditRecord, Incident, LureInstance, StoredEvent, TimelineEntry,
    TokenRecord,
};
use ruse_controller::store::{EventScan, PgOptions, PgStore, SledStore, Store};
use ruse_e2e::TestController;
use ruse_e2e::postgres::Postgres;
use ruse_proto::types::{AgentId, UnixMs};

/// Opens (and reopens) one store of one engine.
trait Engine {
    fn open(&mut self) -> Arc<dyn Store>;
}

struct Sled(tempfile::TempDir);

impl Engine for Sled {
    fn open(&mut self) -> Arc<dyn Store> {
        Arc::new(SledStore::open(self.0.path(), 1 << 20).unwrap())
    }
}

struct Pg(Postgres);

impl Engine for Pg {
    fn open(&mut self) -> Arc<dyn Store> {
        Arc::new(PgStore::open(&self.0.options("ruse")).unwrap())
    }
}

fn postgres(test: &str) -> Option<Pg> {
    let pg = Postgres::start(test)?;
    pg.database("ruse");
    Some(Pg(pg))
}

/// Each named function of `contract` as a test on each engine.
macro_rules! on_both_engines {
    ($($name:ident),* $(,)?) => {
        mod sled {
            $(#[test]
            fn $name() {
                super::contract::$name(&mut super::Sled(tempfile::tempdir().unwrap()));
            })*
        }
        mod postgres {
            $(#[test]
            fn $name() {
                if let Some(mut pg) = super::postgres(stringify!($name)) {
                    super::contract::$name(&mut pg);
                }
            })*
        }
    };
}

on_both_engines!(
    records_round_trip_and_survive_reopen,
    audit_is_ordered_and_bounded,
    incidents_keep_their_timelines_in_time_order,
    output_queues_are_fifo_per_output,
    the_lure_registry_keeps_each_instance_in_its_latest_version,
    events_are_stored_once_and_walked_in_cursor_order,
    old_events_and_those_past_the_budget_are_trimmed,
    a_recent_event_is_never_trimmed_whatever_its_cursor,
    a_token_is_used_at_most_its_uses,
);

fn token(id: &str) -> TokenRecord {
    serde_json::from_value(serde_json::json!({
        "id": id, "secret_sha256": "00", "created_at": 1, "expires_at": 2,
        "max_uses": 3, "uses": 0, "labels": {"site": "icu"},
        "created_by": "admin/root", "description": "ward tablets",
    }))
    .unwrap()
}

fn event(agent: &AgentId, id: &str, received: i64) -> StoredEvent {
    serde_json::from_value(serde_json::json!({
        "id": id, "agent": agent, "seq": 1, "lure_id": "l1", "lure_revision": 1,
        "template": "patient-csv", "campaign": "exports", "kind": "touch",
        "path": "/home/n/Documents/export.csv", "process": null, "operations": ["read"],
        "attribution": "fanotify", "allowed": false, "allow_rule": "",
        "dropped_before": 0, "detail": "", "observed": received, "received": received,
        "peer": "127.0.0.1:5000",
    }))
    .unwrap()
}

fn instance(id: &str, retired: Option<i64>) -> LureInstance {
    serde_json::from_value(serde_json::json!({
        "id": id, "agent": AgentId::generate(), "campaign": "exports", "slot": "pgpass",
        "template": "pgpass", "epoch": 0, "material": {"seed": 7}, "created": 1, "retired": retired,
    }))
    .unwrap()
}

fn entry(event_id: &str, at: i64) -> TimelineEntry {
    TimelineEntry {
        event_id: event_id.into(),
        at: UnixMs(at),
        agent: "a1".parse().unwrap(),
        kind: "touch".into(),
        summary: format!("read {event_id}"),
    }
}

/// An open incident `id` on agent a1 (no timeline).
fn incident(id: &str) -> Incident {
    serde_json::from_value(serde_json::json!({
        "id": id, "title": "Honeyfile read on ws-07", "severity": "high",
        "status": "open", "drill": false, "first_seen": 1000, "last_seen": 2000,
        "created": 2000, "updated": 2000, "version": 2, "event_count": 3,
        "agents": ["a1"], "decoys": [], "sources": [], "lures": ["l1"], "processes": [],
        "credentials": [], "ports": [], "path": [], "techniques": ["T1005"],
        "rules": [], "keys": ["host:a1", "lure:l1"],
    }))
    .unwrap_or_else(|e| panic!("incident fixture: {e}"))
}

/// Ids of the events `scan` walks, at most `limit`.
fn scanned(store: &dyn Store, scan: &EventScan, limit: usize) -> Vec<String> {
    let mut ids = Vec::new();
    store
        .scan_events(scan, &mut |e| {
            ids.push(e.id);
            if ids.len() >= limit {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .unwrap();
    ids
}

/// Stores `events` under fresh cursors; which were new.
fn insert(store: &dyn Store, mut events: Vec<StoredEvent>) -> Vec<bool> {
    let first = store.reserve_event_cursors(events.len() as u64).unwrap();
    for (cursor, e) in (first..).zip(events.iter_mut()) {
        e.cursor = cursor;
    }
    store.insert_events(&events).unwrap()
}

mod contract {
    use super::*;

    pub fn a_token_is_used_at_most_its_uses(engine: &mut dyn Engine) {
        let store = engine.open();
        let mut t = token("t1");
        t.max_uses = 2;
        store.put_token(&t).unwrap();
        let id = "t1".parse().unwrap();
        assert_eq!(store.use_token(&id).unwrap().unwrap().uses, 1);
        assert_eq!(store.use_token(&id).unwrap().unwrap().uses, 2);
        assert!(store.use_token(&id).unwrap().is_none());
        assert_eq!(store.token(&id).unwrap().unwrap().uses, 2);
        assert!(store.use_token(&"nope".parse().unwrap()).unwrap().is_none());
    }

    pub fn records_round_trip_and_survive_reopen(engine: &mut dyn Engine) {
        let revision;
        {
            let store = engine.open();
            store.put_token(&token("t1")).unwrap();
            store.put_token(&token("t2")).unwrap();
            store
                .put_admin(&AdminRecord {
                    name: "alice".parse().unwrap(),
                    role: ruse_proto::types::Role::Viewer,
                    issued_at: UnixMs(5),
                    issued_by: "admin/root".into(),
                })
                .unwrap();
            store.put_counter("suppressed:nightly-backup", 7).unwrap();
            store.put_counter("suppressed:nightly-backup", 9).unwrap();
            let a = store.next_revision().unwrap();
            revision = store.next_revision().unwrap();
            assert!(revision > a && a > 0);
            store.flush().unwrap();
        }
        let store = engine.open();
        assert_eq!(
            store.token(&"t1".parse().unwrap()).unwrap(),
            Some(token("t1"))
        );
        assert_eq!(store.tokens().unwrap().len(), 2);
        assert!(store.delete_token(&"t1".parse().unwrap()).unwrap());
        assert!(!store.delete_token(&"t1".parse().unwrap()).unwrap());
        assert_eq!(store.token(&"t1".parse().unwrap()).unwrap(), None);
        let admins = store.admins().unwrap();
        assert_eq!(admins.len(), 1);
        assert_eq!(admins[0].name.as_str(), "alice");
        assert_eq!(
            store.counters().unwrap(),
            [("suppressed:nightly-backup".to_owned(), 9)]
        );
        assert!(
            store.next_revision().unwrap() > revision,
            "revisions only grow"
        );
    }

    pub fn audit_is_ordered_and_bounded(engine: &mut dyn Engine) {
        let store = engine.open();
        let mut seqs = Vec::new();
        for at in [10, 20, 30, 40, 50] {
            let r = store
                .append_audit(AuditRecord {
                    seq: 0,
                    at: UnixMs(at),
                    actor: "admin/root".into(),
                    peer: "127.0.0.1".into(),
                    action: "token.create".into(),
                    target: format!("t{at}"),
                    result: "ok".into(),
                    detail: String::new(),
                })
                .unwrap();
            seqs.push(r.seq);
        }
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
        let targets = |records: Vec<AuditRecord>| -> Vec<String> {
            records.into_iter().map(|r| r.target).collect()
        };
        assert_eq!(
            targets(store.audit(UnixMs(20), None, 10).unwrap()),
            ["t20", "t30", "t40", "t50"]
        );
        assert_eq!(
            targets(store.audit(UnixMs(0), None, 2).unwrap()),
            ["t40", "t50"]
        );
        let page = store.audit(UnixMs(0), Some(seqs[3]), 2).unwrap();
        assert_eq!(page[0].seq, seqs[1]);
        assert_eq!(targets(page), ["t20", "t30"]);
    }

    pub fn incidents_keep_their_timelines_in_time_order(engine: &mut dyn Engine) {
        let mut incident = incident("01incident");
        let (e1, e2, e0) = (entry("e1", 1_000), entry("e2", 2_000), entry("e0", -5));
        {
            let store = engine.open();
            store.put_incident(&incident).unwrap();
            store.put_timeline(&incident.id, &[&e1]).unwrap();
            // A later batch reaching back in time.
            store.put_timeline(&incident.id, &[&e2, &e0]).unwrap();
            incident.status = serde_json::from_value(serde_json::json!("resolved")).unwrap();
            store.put_incident(&incident).unwrap();
            store.flush().unwrap();
        }
        let store = engine.open();
        let all = store.incidents().unwrap();
        assert_eq!(all.len(), 1);
        let ids: Vec<&str> = all[0]
            .timeline
            .iter()
            .map(|t| t.event_id.as_str())
            .collect();
        assert_eq!(ids, ["e0", "e1", "e2"]);
        assert_eq!(all[0].status, incident.status);
        assert_eq!(all[0].title, incident.title);
    }

    pub fn output_queues_are_fifo_per_output(engine: &mut dyn Engine) {
        let store = engine.open();
        let s1 = store.queue_push("siem", b"one").unwrap();
        let s2 = store.queue_push("siem", b"two").unwrap();
        store.queue_push("mail", b"other").unwrap();
        let s3 = store.queue_push("siem", b"three").unwrap();
        assert!(s1 < s2 && s2 < s3);
        assert_eq!(store.queue_len("siem").unwrap(), 3);
        let peeked = store.queue_peek("siem", 2).unwrap();
        assert_eq!(peeked, [(s1, b"one".to_vec()), (s2, b"two".to_vec())]);
        store.queue_remove("siem", s1).unwrap();
        store.flush().unwrap();
        drop(store);
        let store = engine.open();
        assert_eq!(store.queue_peek("siem", 10).unwrap().len(), 2);
        assert_eq!(store.queue_peek("mail", 10).unwrap()[0].1, b"other");
        assert_eq!(store.queue_len("nowhere").unwrap(), 0);
    }

    pub fn the_lure_registry_keeps_each_instance_in_its_latest_version(engine: &mut dyn Engine) {
        let store = engine.open();
        let batch: Vec<Arc<LureInstance>> = ["l1", "l2", "l3"]
            .iter()
            .map(|id| Arc::new(instance(id, None)))
            .collect();
        store.put_new_lures(&batch).unwrap();
        store.put_lure(&instance("l2", Some(99))).unwrap();
        // A pass writing l1 again after a write whose outcome it did not
        // know: as a record, which supersedes the batch's copy.
        store.put_lures(&[instance("l1", None)]).unwrap();
        store
            .put_lures(&[instance("l4", Some(5)), instance("l3", Some(7))])
            .unwrap();
        assert_eq!(
            store.drop_superseded_lure_batches().unwrap(),
            1,
            "each instance of the batch has a record of its own"
        );
        store.flush().unwrap();
        drop(store);
        let store = engine.open();
        let mut all: Vec<(String, Option<UnixMs>)> = store
            .lures()
            .unwrap()
            .into_iter()
            .map(|l| (l.id.to_string(), l.retired))
            .collect();
        all.sort();
        assert_eq!(
            all,
            [
                ("l1".to_owned(), None),
                ("l2".to_owned(), Some(UnixMs(99))),
                ("l3".to_owned(), Some(UnixMs(7))),
                ("l4".to_owned(), Some(UnixMs(5))),
            ]
        );
        assert_eq!(store.lure("l2").unwrap().unwrap().retired, Some(UnixMs(99)));
        assert!(store.lure("nope").unwrap().is_none());
    }

    pub fn events_are_stored_once_and_walked_in_cursor_order(engine: &mut dyn Engine) {
        let (a, b) = (AgentId::generate(), AgentId::generate());
        {
            let store = engine.open();
            assert_eq!(store.event_cursors().unwrap(), None);
            // Ids sort opposite to arrival: arrival decides.
            let stored = insert(
                store.as_ref(),
                vec![
                    event(&a, "zz-first", 1),
                    event(&b, "mm-second", 2),
                    event(&a, "aa-third", 3),
                    event(&a, "zz-first", 4),
                ],
            );
            assert_eq!(stored, [true, true, true, false]);
            assert_eq!(
                insert(store.as_ref(), vec![event(&b, "bb-fourth", 5)]),
                [true]
            );
            store.flush().unwrap();
        }
        let store = engine.open();
        // A resend after a restart is a duplicate.
        assert_eq!(
            insert(store.as_ref(), vec![event(&b, "mm-second", 6)]),
            [false]
        );
        let all = EventScan::default();
        assert_eq!(
            scanned(store.as_ref(), &all, 10),
            ["zz-first", "mm-second", "aa-third", "bb-fourth"]
        );
        let newest = EventScan {
            newest_first: true,
            ..EventScan::default()
        };
        assert_eq!(
            scanned(store.as_ref(), &newest, 2),
            ["bb-fourth", "aa-third"]
        );
        let of_a = EventScan {
            agent: Some(a.clone()),
            ..EventScan::default()
        };
        assert_eq!(scanned(store.as_ref(), &of_a, 10), ["zz-first", "aa-third"]);
        let (first, last) = store.event_cursors().unwrap().unwrap();
        assert!(first < last);
        let mut cursors = Vec::new();
        store
            .scan_events(&all, &mut |e| {
                cursors.push(e.cursor);
                ControlFlow::Continue(())
            })
            .unwrap();
        assert_eq!(cursors.first(), Some(&first));
        assert_eq!(cursors.last(), Some(&last));
        let window = EventScan {
            after: cursors[0],
            before: Some(cursors[3]),
            ..EventScan::default()
        };
        assert_eq!(
            scanned(store.as_ref(), &window, 10),
            ["mm-second", "aa-third"]
        );
        let window_of_b = EventScan {
            agent: Some(b),
            newest_first: true,
            ..window
        };
        assert_eq!(scanned(store.as_ref(), &window_of_b, 10), ["mm-second"]);
        // More than one page of a long scan.
        let many: Vec<StoredEvent> = (0..1_200)
            .map(|i| event(&a, &format!("bulk-{i:05}"), 10 + i))
            .collect();
        assert!(insert(store.as_ref(), many).iter().all(|new| *new));
        store.flush().unwrap();
        let bulk = scanned(store.as_ref(), &of_a, 5_000);
        assert_eq!(bulk.len(), 1_202);
        assert_eq!(bulk[1_201], "bulk-01199");
    }

    pub fn old_events_and_those_past_the_budget_are_trimmed(engine: &mut dyn Engine) {
        let store = engine.open();
        let a = AgentId::generate();
        let events: Vec<StoredEvent> = (0..20)
            .map(|i| event(&a, &format!("e{i:02}"), 1_000 + i * 10))
            .collect();
        insert(store.as_ref(), events);
        store.flush().unwrap();
        // Received before 1050: e00..e04, at most 3 per call.
        assert_eq!(store.trim_events(UnixMs(1_050), 1_000, 3).unwrap(), 3);
        assert_eq!(store.trim_events(UnixMs(1_050), 1_000, 100).unwrap(), 2);
        assert_eq!(store.trim_events(UnixMs(1_050), 1_000, 100).unwrap(), 0);
        // Keep at most 10 (counted by cursors).
        assert_eq!(store.trim_events(UnixMs(0), 10, 100).unwrap(), 5);
        store.flush().unwrap();
        let left = scanned(store.as_ref(), &EventScan::default(), 100);
        assert_eq!(left.len(), 10);
        assert_eq!(left[0], "e10");
    }

    /// Cursors are not receive order (a replica fills a cursor block it
    /// reserved earlier; concurrent batches take cursors in another order
    /// than they arrived): retention deletes old events only, whatever
    /// cursors recent ones have.
    pub fn a_recent_event_is_never_trimmed_whatever_its_cursor(engine: &mut dyn Engine) {
        let store = engine.open();
        let a = AgentId::generate();
        // Lower cursors, received later.
        let events = vec![
            event(&a, "late-1", 3_000),
            event(&a, "late-2", 3_100),
            event(&a, "early", 1_000),
            event(&a, "later", 3_200),
        ];
        insert(store.as_ref(), events);
        store.flush().unwrap();
        assert_eq!(store.trim_events(UnixMs(500), u64::MAX, 100).unwrap(), 0);
        // Past the cutoff of 2000, only `early` may go.
        assert!(store.trim_events(UnixMs(2_000), u64::MAX, 100).unwrap() <= 1);
        store.flush().unwrap();
        let left = scanned(store.as_ref(), &EventScan::default(), 100);
        for recent in ["late-1", "late-2", "later"] {
            assert!(
                left.iter().any(|id| id == recent),
                "{recent} kept: {left:?}"
            );
        }
    }
}

#[test]
fn session_state_written_by_one_controller_keeps_what_another_set() {
    let Some(pg) = Postgres::start("session_state_written_by_one_controller") else {
        return;
    };
    pg.database("ruse");
    let (a, b) = (
        PgStore::open(&pg.options("ruse")).unwrap(),
        PgStore::open(&pg.options("ruse")).unwrap(),
    );
    let mut record: AgentRecord = serde_json::from_value(serde_json::json!({
        "id": AgentId::generate(), "facts": {"hostname": "ws-07", "os": "linux", "kernel": "6.1",
        "arch": "x86_64", "addresses": [], "agent_version": "0.1.0", "labels": {}},
        "token_labels": {"site": "icu"}, "enrolled_at": 1, "enrolled_with": "t1",
        "last_seen": 1, "last_peer": "10.0.0.7:5000", "cert_serial": "01",
        "cert_not_after": 9, "revoked": null,
    }))
    .unwrap();
    b.put_agent(&record).unwrap();
    b.flush().unwrap();
    // A revokes and relabels; B, holding the session, then writes its
    // older copy's session state.
    let mut revoked = record.clone();
    revoked.revoked = Some(
        serde_json::from_value(serde_json::json!({
            "at": 5, "by": "admin/root", "reason": "laptop stolen"
        }))
        .unwrap(),
    );
    revoked.admin_labels = ruse_proto::types::Labels::parse_pairs(["ward=3"]).unwrap();
    a.put_agent(&revoked).unwrap();
    a.flush().unwrap();
    record.last_seen = UnixMs(77);
    b.put_agent_state(&record).unwrap();
    b.flush().unwrap();
    let stored = a.agent(&record.id).unwrap().unwrap();
    assert_eq!(stored.last_seen, UnixMs(77));
    assert!(stored.revoked.is_some(), "the revocation stays");
    assert_eq!(stored.admin_labels, revoked.admin_labels);
}

#[test]
fn replicas_starting_together_migrate_the_schema_once() {
    let Some(pg) = Postgres::start("replicas_starting_together_migrate_the_schema_once") else {
        return;
    };
    pg.database("ruse");
    let options = pg.options("ruse");
    let stores: Vec<_> = (0..3)
        .map(|_| {
            let options = options.clone();
            std::thread::spawn(move || PgStore::open(&options).map(drop))
        })
        .collect();
    for s in stores {
        s.join().unwrap().unwrap();
    }
    assert_eq!(
        pg.psql("ruse", "SELECT count(*), max(version) FROM ruse_schema"),
        format!("{0}|{0}", ruse_controller::store::schema_version())
    );
    let m = ruse_controller::store::migrate(&options).unwrap();
    assert!(m.applied.is_empty());
    // A database a newer controller migrated is refused, not written.
    pg.psql(
        "ruse",
        "INSERT INTO ruse_schema (version, name) VALUES (999, 'future')",
    );
    let e = PgStore::open(&options).unwrap_err().to_string();
    assert!(
        e.contains("version 999, newer than this controller's"),
        "{e}"
    );
}

#[test]
fn writes_reach_other_controllers_only_once_flushed_and_a_failed_one_undoes_only_itself() {
    let Some(pg) = Postgres::start("writes_reach_other_controllers_only_once_flushed") else {
        return;
    };
    pg.database("ruse");
    let (one, two) = (
        PgStore::open(&pg.options("ruse")).unwrap(),
        PgStore::open(&pg.options("ruse")).unwrap(),
    );
    one.put_token(&token("t1")).unwrap();
    assert!(one.token(&"t1".parse().unwrap()).unwrap().is_some());
    assert!(two.token(&"t1".parse().unwrap()).unwrap().is_none());
    // PostgreSQL text cannot hold NUL: this write fails, alone.
    assert!(one.put_counter("bad\0name", 1).is_err());
    one.put_token(&token("t2")).unwrap();
    one.flush().unwrap();
    assert_eq!(two.tokens().unwrap().len(), 2);
    // Cursors from two controllers never collide.
    let (x, y) = (
        one.reserve_event_cursors(10).unwrap(),
        two.reserve_event_cursors(10).unwrap(),
    );
    assert!(x + 10 <= y || y + 10 <= x, "{x} and {y}");
}

#[test]
fn a_database_crash_with_nothing_uncommitted_is_survived_and_with_writes_in_flight_is_fatal() {
    let Some(mut pg) = Postgres::start("a_database_crash") else {
        return;
    };
    pg.database("ruse");
    let store = PgStore::open(&pg.options("ruse")).unwrap();
    store.put_token(&token("t1")).unwrap();
    store.flush().unwrap();
    pg.crash_and_restart();
    // Nothing was lost: the store reconnects.
    assert!(store.token(&"t1".parse().unwrap()).unwrap().is_some());
    store.put_token(&token("t2")).unwrap();
    pg.crash_and_restart();
    // t2 died with the transaction: no flush may call it durable.
    let e = store.flush().unwrap_err().to_string();
    assert!(e.contains("restart it"), "{e}");
    assert!(store.tokens().is_err(), "the store refuses work after");
    let fresh = PgStore::open(&pg.options("ruse")).unwrap();
    let ids: Vec<String> = fresh
        .tokens()
        .unwrap()
        .into_iter()
        .map(|t| t.id.to_string())
        .collect();
    assert_eq!(ids, ["t1"]);
}

#[test]
fn ruse_controller_migrate_brings_a_database_to_this_version_and_says_so() {
    let Some(pg) = Postgres::start("ruse_controller_migrate") else {
        return;
    };
    let url = pg.database("ruse").replace("ruse@", "ruse:not-a-secret@");
    let migrate = |args: &[&str]| {
        let out = std::process::Command::new(ruse_e2e::process::binary("ruse-controller"))
            .arg("migrate")
            .args(args)
            .env_remove("RUSE_STORE_URL")
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (ok, text) = migrate(&["--store-url", &url]);
    assert!(ok, "{text}");
    assert!(
        text.contains(&format!(
            "schema migrated from version 0 to {}",
            ruse_controller::store::schema_version()
        )),
        "{text}"
    );
    assert!(
        !text.contains("not-a-secret"),
        "the password is never printed: {text}"
    );
    let (ok, text) = migrate(&["--store-url", &url]);
    assert!(
        ok && text.contains(&format!(
            "schema already at version {}",
            ruse_controller::store::schema_version()
        )),
        "{text}"
    );
    // Nothing to migrate without a database; an unreachable one is named.
    let (ok, text) = migrate(&[]);
    assert!(
        !ok && text.contains("no PostgreSQL store to migrate"),
        "{text}"
    );
    let closed = ruse_e2e::free_ports(1)[0];
    let (ok, text) = migrate(&[
        "--store-url",
        &format!("postgres://ruse:not-a-secret@127.0.0.1:{closed}/ruse?sslmode=disable"),
    ]);
    assert!(!ok, "{text}");
    assert!(
        text.contains("cannot connect to the database postgres://ruse:***@127.0.0.1"),
        "{text}"
    );
    assert!(!text.contains("not-a-secret"), "{text}");
}

#[test]
fn tls_to_the_database_verifies_its_certificate_and_name() {
    let ca = ruse_pki::CertificateAuthority::generate("db.test".parse().unwrap()).unwrap();
    let (chain, key) = ca
        .issue_server(&["localhost".into()], std::time::Duration::from_secs(3600))
        .unwrap();
    let chain_pem: String = chain
        .iter()
        .map(|c| ruse_pki::pem_encode("CERTIFICATE", c))
        .collect();
    let Some(pg) = Postgres::start_tls("tls_to_the_database", &chain_pem, &key.to_pem()) else {
        return;
    };
    pg.database("ruse");
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("db-ca.pem");
    std::fs::write(&ca_file, ca.cert_pem()).unwrap();
    let options = |host: &str, mode: &str, ca_file: &std::path::Path| PgOptions {
        url: format!("postgres://ruse@{host}:{}/ruse?sslmode={mode}", pg.port),
        ca_file: Some(ca_file.to_owned()),
    };
    // libpq's strictest mode is accepted as written.
    let store = PgStore::open(&options("localhost", "verify-full", &ca_file)).unwrap();
    store.put_token(&token("t1")).unwrap();
    store.flush().unwrap();
    assert_eq!(
        pg.psql(
            "ruse",
            "SELECT count(*) > 0 FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
             WHERE s.ssl AND a.application_name = 'ruse-controller'"
        ),
        "t"
    );
    // The certificate names localhost, not 127.0.0.1.
    let e = PgStore::open(&options("127.0.0.1", "require", &ca_file))
        .unwrap_err()
        .to_string();
    assert!(e.contains("certificate"), "{e}");
    // Another CA's certificate is refused.
    let other = ruse_pki::CertificateAuthority::generate("other.test".parse().unwrap()).unwrap();
    let other_file = dir.path().join("other-ca.pem");
    std::fs::write(&other_file, other.cert_pem()).unwrap();
    let e = PgStore::open(&options("localhost", "require", &other_file))
        .unwrap_err()
        .to_string();
    assert!(e.contains("certificate"), "{e}");
}

#[test]
fn a_serve_process_on_postgresql_rides_out_a_database_restart() {
    let Some(mut pg) = Postgres::start("a_serve_process_on_postgresql") else {
        return;
    };
    let url = pg.database("ruse");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let out = std::process::Command::new(ruse_e2e::process::binary("ruse-controller"))
        .args(["init", "--trust-domain", "ruse.test", "--data-dir"])
        .arg(&data)
        .args(["--store-url", &url])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The first admin is in the database, not in a local store.
    assert_eq!(pg.psql("ruse", "SELECT name FROM admins"), "admin");
    assert!(!data.join("store").exists());
    let (mut controller, addr) = ruse_e2e::process::spawn_controller_with(
        &data,
        "127.0.0.1:0",
        &dir.path().join("controller.log"),
        &[("RUSE_STORE_URL", &url)],
    );
    let ctl = ruse_e2e::process::Ctl::for_data_dir(&data, &format!("https://{addr}"));
    let token = |description: &str| {
        ctl.run(&["token", "create", "--description", description])
            .status
            .success()
    };
    assert!(token("before"), "{}", controller.log_text());
    pg.crash_and_restart();
    // Nothing was uncommitted: the controller reconnects and serves on.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !token("after") {
        assert!(
            std::time::Instant::now() < deadline,
            "no token after the database came back: {}",
            controller.log_text()
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert_eq!(
        pg.psql("ruse", "SELECT count(*) FROM tokens"),
        "2",
        "both tokens are in the database"
    );
    assert!(
        controller
            .wait(std::time::Duration::from_millis(10))
            .is_none()
    );
    controller.terminate(std::time::Duration::from_secs(10));
}

/// A controller takes in only the lure instances written since its last
/// look (`lures_since`): new ones (a chunk per row, committed by the
/// write itself), retirements, which supersede a batch's copy, and rows
/// from before the change marks only when it loads everything; a batch
/// goes once each of its instances has a record of its own.
#[test]
fn lure_instances_are_taken_in_by_what_changed_since_the_last_look() {
    let Some(pg) = Postgres::start("lure_instances_are_taken_in_by_what_changed") else {
        return;
    };
    pg.database("ruse");
    let (a, b) = (
        PgStore::open(&pg.options("ruse")).unwrap(),
        PgStore::open(&pg.options("ruse")).unwrap(),
    );
    let (first, second) = (instance("01lurea", None), instance("01lureb", None));
    a.put_new_lures(&[Arc::new(first.clone()), Arc::new(second.clone())])
        .unwrap();
    let count = |table: &str| pg.psql("ruse", &format!("SELECT count(*) FROM {table}"));
    assert_eq!(
        (count("lure_batches"), count("lures")),
        ("1".into(), "0".into())
    );
    let (all, mark) = b.lures_since(0).unwrap();
    assert_eq!(
        all,
        vec![first.clone(), second.clone()],
        "read with nothing flushed"
    );
    assert!(mark > 0);
    assert!(b.lures_since(mark).unwrap().0.is_empty(), "nothing new");

    // A retirement is a change; the untouched instance is not.
    let mut retired = first.clone();
    retired.retired = Some(UnixMs(5));
    a.put_lures(&[retired.clone()]).unwrap();
    let (changed, next) = b.lures_since(mark).unwrap();
    assert_eq!(changed, vec![retired.clone()]);
    assert!(next > mark);
    assert_eq!(b.lures().unwrap(), vec![retired.clone(), second.clone()]);
    assert_eq!(
        a.drop_superseded_lure_batches().unwrap(),
        0,
        "second has no record"
    );
    let mut second_retired = second.clone();
    second_retired.retired = Some(UnixMs(6));
    a.put_lures(&[second_retired.clone()]).unwrap();
    assert_eq!(a.drop_superseded_lure_batches().unwrap(), 1);
    assert_eq!(count("lure_batches"), "0");
    assert_eq!(b.lures().unwrap(), vec![retired, second_retired]);

    // Rows written before the marks existed come with a whole load only.
    let (_, last) = b.lures_since(next).unwrap();
    pg.psql("ruse", "UPDATE lures SET changed = NULL");
    assert!(b.lures_since(last).unwrap().0.is_empty());
    assert_eq!(b.lures_since(0).unwrap().0.len(), 2);
}

/// Controllers sharing one database take in each other's incidents in
/// commit order, never their own, and an incident write (or a hold) by
/// one makes the others' incident writes wait for its commit.
#[test]
fn incident_writes_commit_one_controller_at_a_time_and_are_taken_in_by_the_others() {
    use std::time::{Duration, Instant};
    let Some(pg) = Postgres::start("incident_writes_commit_one_controller_at_a_time") else {
        return;
    };
    pg.database("ruse");
    let (a, b) = (
        PgStore::open(&pg.options("ruse")).unwrap(),
        PgStore::open(&pg.options("ruse")).unwrap(),
    );
    let (mut a_mark, mut b_mark) = (a.incidents_mark().unwrap(), b.incidents_mark().unwrap());
    let mut i = incident("01shared");
    a.put_incident(&i).unwrap();
    a.put_timeline(&i.id, &[&entry("e1", 1_000)]).unwrap();
    // Not committed: nothing to take in yet.
    assert!(b.incidents_changed(&mut b_mark, false).unwrap().is_empty());
    a.flush().unwrap();
    let theirs = b.incidents_changed(&mut b_mark, false).unwrap();
    assert_eq!(theirs.len(), 1);
    assert_eq!(theirs[0].id, i.id);
    assert_eq!(theirs[0].keys, i.keys);
    assert_eq!(theirs[0].timeline.len(), 1, "with its timeline");
    // Its own writes are not handed back to A, but its mark moves past them.
    assert!(a.incidents_changed(&mut a_mark, false).unwrap().is_empty());
    assert!(a_mark >= b_mark && b_mark > 0);
    assert!(b.incidents_changed(&mut b_mark, false).unwrap().is_empty());

    // A holds: B's write of the incident waits until A commits.
    assert!(a.incidents_changed(&mut a_mark, true).unwrap().is_empty());
    i.event_count = 4;
    let writer = std::thread::spawn({
        let i = i.clone();
        move || {
            let started = Instant::now();
            b.put_incident(&i).unwrap();
            b.flush().unwrap();
            (started.elapsed(), b)
        }
    });
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !writer.is_finished(),
        "B wrote an incident while A held them"
    );
    a.flush().unwrap();
    let (waited, b) = writer.join().unwrap();
    assert!(waited >= Duration::from_millis(400), "B waited {waited:?}");
    let theirs = a.incidents_changed(&mut a_mark, true).unwrap();
    assert_eq!(theirs.len(), 1);
    assert_eq!(theirs[0].event_count, 4);
    a.flush().unwrap();
    assert!(b.incidents_changed(&mut b_mark, false).unwrap().is_empty());
}

/// The output lease: one controller holds it while it renews it, another
/// takes it over once it lapses or is given up.
#[test]
fn the_output_lease_is_held_by_one_controller_and_taken_over_when_it_lapses() {
    use std::time::Duration;
    let Some(pg) = Postgres::start("the_output_lease_is_held_by_one_controller") else {
        return;
    };
    pg.database("ruse");
    let (a, b) = (
        PgStore::open(&pg.options("ruse")).unwrap(),
        PgStore::open(&pg.options("ruse")).unwrap(),
    );
    let ttl = Duration::from_millis(800);
    assert!(a.lease("outputs", ttl).unwrap());
    assert!(!b.lease("outputs", ttl).unwrap());
    // Another lease is another matter.
    assert!(b.lease("other", ttl).unwrap());
    std::thread::sleep(Duration::from_millis(500));
    assert!(a.lease("outputs", ttl).unwrap(), "renewed");
    std::thread::sleep(Duration::from_millis(500));
    assert!(!b.lease("outputs", ttl).unwrap(), "A renewed it 500 ms ago");
    // A stops renewing (it died): B takes over after the lease lapses.
    std::thread::sleep(Duration::from_millis(900));
    assert!(b.lease("outputs", ttl).unwrap());
    assert!(!a.lease("outputs", ttl).unwrap());
    // Given up: taken at once.
    b.release_lease("outputs").unwrap();
    assert!(a.lease("outputs", ttl).unwrap());
    // Giving up a lease one does not hold changes nothing.
    b.release_lease("outputs").unwrap();
    assert!(!b.lease("outputs", ttl).unwrap());
}

/// Controllers sharing one PostgreSQL database (replicas) agree on what
/// matters for trust: a token with five uses enrols exactly five agents
/// however the attempts spread over three replicas, a revocation made on
/// one replica closes the agent's live session on another within a second
/// and refuses its next handshake there, and allow rules and suppressions
/// applied on one are applied by all within a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_token_uses_and_revocations() {
    use ruse_e2e::pb;
    use std::time::{Duration, Instant};

    let Some(pg) = Postgres::start("replicas_share_token_uses_and_revocations") else {
        return;
    };
    pg.database("ruse");
    let a = TestController::start_on(Some(pg.options("ruse")), |_| {}).await;
    let replicas = a.replicas(2).await;
    let urls = a.agent_urls(&replicas);

    // Fifteen agents, five at each replica, one token good for five.
    let token = a.token("site=icu", 5, Duration::from_secs(600)).await;
    let mut agents = Vec::new();
    for n in 0..15 {
        let mut config = a.agent_config(&format!("ws-{n}"), &token, "");
        config.controller = urls[n % 3].clone();
        agents.push(a.spawn_agent(config));
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let connected = agents
            .iter()
            .filter(|g| g.status.borrow().connected)
            .count();
        let stored: usize = pg
            .psql("ruse", "SELECT count(*) FROM agents")
            .parse()
            .unwrap();
        assert!(
            stored <= 5,
            "{stored} agents enrolled with a five-use token"
        );
        if connected == 5 && stored == 5 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{connected} agents connected, {stored} stored"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The others were refused for good, on whichever replica they tried.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        agents
            .iter()
            .filter(|g| g.status.borrow().connected)
            .count(),
        5
    );
    assert_eq!(pg.psql("ruse", "SELECT record->>'uses' FROM tokens"), "5");

    // An agent whose session is on a replica other than A, revoked on A.
    let (n, agent) = agents
        .iter_mut()
        .enumerate()
        .find(|(n, g)| n % 3 != 0 && g.status.borrow().connected)
        .expect("an agent connected to another replica");
    let id = agent.status.borrow().agent_id.clone().unwrap().to_string();
    let revoked = Instant::now();
    a.root()
        .await
        .revoke_agent(pb::RevokeAgentRequest {
            id: id.clone(),
            reason: "laptop stolen".into(),
        })
        .await
        .unwrap();
    tokio::time::timeout(
        Duration::from_secs(1),
        agent.status.wait_for(|s| !s.connected),
    )
    .await
    .unwrap_or_else(|_| {
        panic!("agent {n}'s session on its replica survived the revocation for 1 s")
    })
    .unwrap();
    let cut = revoked.elapsed();
    // Its next handshake, on that replica, is refused.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !agent.status.borrow().connected,
        "reconnected after revocation"
    );
    eprintln!("revocation on A closed the session on another replica after {cut:?}");

    // Rules applied through A are what every replica applies.
    a.apply(
        "kind: AllowRule\nname: nightly-backup\nprocess: /usr/bin/tar\n---\nkind: Suppression\nname: it-scanner\nsource: 127.0.0.3/32\nexpires: 2099-01-01\n",
    )
    .await;
    let applied = Instant::now();
    for r in &replicas {
        loop {
            let deploy = &r.core().deploy;
            let rules: Vec<String> = deploy.allow_rules().into_iter().map(|r| r.name).collect();
            let hidden: Vec<String> = deploy.suppressions().into_iter().map(|r| r.name).collect();
            if rules == ["nightly-backup"] && hidden == ["it-scanner"] {
                break;
            }
            assert!(
                applied.elapsed() < Duration::from_secs(1),
                "a replica has rules {rules:?} and suppressions {hidden:?} a second after the apply"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    for r in replicas {
        r.shutdown().await.unwrap();
    }
}

/// A throw-away PostgreSQL cluster for `test` and a controller on it named
/// `replica-a` (others join it with `replicas` or `replica_process`).
/// The id of agent `id`'s first lure, once controller `a` knows it: it
/// learns of another replica's instances through the database's
/// notifications, a few milliseconds after their commit.
async fn lure_known_at(a: &TestController, id: &str) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        if let Some(l) = a.lures(id, false).await.first() {
            return l.id.clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "controller A does not know agent {id}'s lure"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Lure instances the database holds, retired ones included.
fn instances(pg: &Postgres) -> usize {
    PgStore::open(&pg.options("ruse"))
        .unwrap()
        .lures()
        .unwrap()
        .len()
}

async fn replica_a_on_postgres(test: &str) -> Option<(Postgres, TestController)> {
    let pg = Postgres::start(test)?;
    pg.database("ruse");
    let a = TestController::start_on(Some(pg.options("ruse")), |c| {
        c.name = Some("replica-a".into());
    })
    .await;
    Some((pg, a))
}

/// Every replica shows each agent online with the replica holding its
/// session (`get agents`); when that replica is killed (`kill -9`), an
/// agent that knows no other shows offline everywhere once the dead
/// replica's name lapses, and one given another replica moves there and
/// shows online at it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_replica_shows_where_each_session_is_and_a_killed_replicas_agents_move() {
    use ruse_e2e::{eventually, pb};
    use ruse_proto::transport::ControllerUrl;
    use std::time::{Duration, Instant};

    let Some((_pg, a)) = replica_a_on_postgres("every_replica_shows_where_each_session_is").await
    else {
        return;
    };
    // B: a `ruse-controller serve` process with A's CA and database.
    let (mut b, b_addr) = a.replica_process("replica-b");
    let token = a.token("site=icu", 2, Duration::from_secs(600)).await;
    // One agent knows only B; the other B, then A.
    let mut only_b = a.agent_config("ws-only-b", &token, "");
    only_b.controller = ControllerUrl::from_addr(b_addr);
    let mut b_then_a = a.agent_config("ws-b-then-a", &token, "");
    b_then_a.controller = ControllerUrl::from_addr(b_addr);
    b_then_a.other_controllers = vec![a.url()];
    let mut stays = a.spawn_agent(only_b);
    let mut moves = a.spawn_agent(b_then_a);
    let (stays_id, moves_id) = (stays.connected().await, moves.connected().await);

    let shown = async |id: &str| -> (i32, String) {
        let agent: pb::Agent = a.agent_view(id).await;
        (agent.state, agent.controller)
    };
    let online = pb::AgentState::Online as i32;
    let offline = pb::AgentState::Offline as i32;
    for id in [&stays_id, &moves_id] {
        let deadline = Instant::now() + Duration::from_secs(10);
        while shown(id).await != (online, "replica-b".into()) {
            assert!(
                Instant::now() < deadline,
                "A shows agent {id} as {:?}, not online at replica-b",
                shown(id).await
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    b.kill9();
    let killed = Instant::now();
    eventually(
        "the agent given A moves there and A shows it online at replica-a",
        Duration::from_secs(20),
        || async { shown(&moves_id).await == (online, "replica-a".into()) },
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while shown(&stays_id).await != (offline, String::new()) {
        assert!(
            Instant::now() < deadline,
            "A shows agent {stays_id} of the killed replica as {:?}",
            shown(&stays_id).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "the killed replica's agents: offline (or moved) on A after {:?}",
        killed.elapsed()
    );
    assert!(!stays.status.borrow().connected);
}

/// Three replicas plan one set of lures: a campaign applied through a
/// replica that is not the leader reaches the agents of every replica in
/// its waves (the leader counts acknowledgements made at every replica),
/// each agent gets one instance per slot (never one per replica), every
/// replica knows every instance (a touch is attributed wherever it
/// arrives), and when the leader stops another takes over and plans the
/// next change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_plan_one_set_of_lures_for_the_agents_of_every_replica() {
    use ruse_e2e::{TestAgent, eventually};
    use std::time::Duration;

    let Some(pg) = Postgres::start("replicas_plan_one_set_of_lures") else {
        return;
    };
    pg.database("ruse");
    let mut a = TestController::start_on(Some(pg.options("ruse")), |_| {}).await;
    let replicas = a.replicas(2).await;
    assert!(a.controller().core().deploy.leading());
    assert!(replicas.iter().all(|r| !r.core().deploy.leading()));
    let urls = a.agent_urls(&replicas);
    // Six agents, two at each replica.
    let token = a.token("site=icu", 6, Duration::from_secs(600)).await;
    let mut agents = Vec::new();
    for n in 0..6 {
        let mut config = a.agent_config(&format!("ws-{n}"), &token, "");
        config.controller = urls[n % 3].clone();
        agents.push(a.spawn_agent(config));
    }
    let mut ids = Vec::new();
    for agent in &mut agents {
        ids.push(agent.connected().await);
    }

    // Each replica plans the agents whose sessions it holds: once every
    // replica knows where each session is, each creates its own two.
    let cores: Vec<_> = std::iter::once(a.controller().core().clone())
        .chain(replicas.iter().map(|r| r.core().clone()))
        .collect();
    eventually(
        "every replica knows which sessions the others hold",
        Duration::from_secs(10),
        || {
            let elsewhere: Vec<usize> = cores
                .iter()
                .map(|c| c.fleet.members().iter().filter(|m| m.elsewhere).count())
                .collect();
            async move { elsewhere == [4, 4, 4] }
        },
    )
    .await;

    // Applied through B, which is not the leader.
    let b = replicas[0].core().clone();
    // In three waves: the leader moves each on once the agents of the
    // last acknowledged, whichever replica holds their sessions.
    let manifest = |waves: &str, slots: &str| {
        ruse_controller::resources::parse(&format!(
            "kind: Campaign\nname: exports\nselector: {{site: icu}}\nrollout: {{waves: [{waves}]}}\nlures:\n{slots}"
        ))
        .unwrap()
    };
    let csv = "  - {template: patient-csv, path: \"~/Documents/Exports\"}\n";
    let waves = "\"34%\", \"67%\", \"100%\"";
    b.deploy.apply(&manifest(waves, csv), false).await.unwrap();
    for agent in &mut agents {
        agent.wait_lures(1, Duration::from_secs(20)).await;
    }
    assert_eq!(instances(&pg), 6);
    let created: Vec<u64> = cores.iter().map(|c| c.deploy.instances_created()).collect();
    assert_eq!(created, [2, 2, 2], "each replica planned its own agents");
    for c in &cores {
        eventually(
            "the rollout completed on every replica",
            Duration::from_secs(2),
            || {
                let rollout = c.deploy.campaign("exports").unwrap().record.rollout;
                async move { rollout == ruse_controller::model::RolloutState::Completed }
            },
        )
        .await;
    }
    eventually(
        "every replica knows every instance",
        Duration::from_secs(2),
        || {
            let known: Vec<usize> = cores
                .iter()
                .map(|c| c.deploy.lures(None, None, false).unwrap().len())
                .collect();
            async move { known == [6, 6, 6] }
        },
    )
    .await;
    // A touch at C of a lure A's leader created is C's agent's.
    let (n, agent) = (2, &agents[2]);
    let lure = cores[2]
        .deploy
        .lures(Some(&ids[n].parse().unwrap()), None, false)
        .unwrap()[0]
        .lure
        .id
        .to_string();
    agent
        .events
        .record(vec![TestAgent::touch_event(&lure, 1)])
        .await
        .unwrap();
    eventually(
        "the touch at C is one stored event",
        Duration::from_secs(10),
        || {
            let n = pg.psql(
                "ruse",
                &format!("SELECT count(*) FROM events WHERE lure = '{lure}' AND kind = 'touch'"),
            );
            async move { n == "1" }
        },
    )
    .await;

    // The leader stops; B or C leads and plans the next change, made on C.
    drop(cores);
    a.stop().await;
    eventually("another replica leads", Duration::from_secs(5), || {
        let leading = replicas
            .iter()
            .filter(|r| r.core().deploy.leading())
            .count();
        async move { leading == 1 }
    })
    .await;
    let key = "  - {template: aws-credentials}\n";
    let changed = std::time::Instant::now();
    replicas[1]
        .core()
        .deploy
        .apply(&manifest("\"100%\"", &format!("{csv}{key}")), false)
        .await
        .unwrap();
    // A's agents are offline with it (in waves they would hold the
    // rollout back, as offline agents do); the others get the new slot.
    // Every enrolled agent has one instance of it.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let behind: Vec<usize> = agents
            .iter()
            .enumerate()
            .filter(|(_, g)| g.status.borrow().connected && g.status.borrow().lures != 2)
            .map(|(n, _)| n)
            .collect();
        if behind.is_empty() {
            break;
        }
        if std::time::Instant::now() > deadline {
            for (i, r) in replicas.iter().enumerate() {
                let d = &r.core().deploy;
                eprintln!(
                    "replica {i}: leading {}, campaign (slots, rollout, wave) {:?}",
                    d.leading(),
                    d.campaign("exports").map(|c| (
                        c.record.target.spec.lures.len(),
                        c.record.rollout,
                        c.record.wave
                    ))
                );
                for n in &behind {
                    let id: AgentId = ids[*n].parse().unwrap();
                    eprintln!(
                        "  agent {n} lures there: {:?}",
                        d.lures(Some(&id), None, false)
                            .unwrap()
                            .iter()
                            .map(|l| (format!("{:?}", l.lure.template), l.state))
                            .collect::<Vec<_>>()
                    );
                }
            }
            panic!("agents {behind:?} did not get the new slot");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "a change applied on C planted on the agents of B and C after {:?}",
        changed.elapsed()
    );
    assert_eq!(
        instances(&pg),
        12,
        "one aws-credentials instance per enrolled agent, whichever replica planned it"
    );
    drop(b);
    for r in replicas {
        r.shutdown().await.unwrap();
    }
}

/// Two replicas that plan one agent in the same moment (it just moved, or
/// the leader took it for offline as it connected elsewhere) may each
/// create an instance of a slot: the replica holding the agent takes the
/// other's in, keeps the one the agent has, and retires the other, which
/// stays attributable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_instance_of_a_slot_from_another_replica_is_retired_by_the_agents_replica() {
    use ruse_controller::model::{Material, Template};
    use ruse_e2e::eventually;
    use std::time::Duration;

    let Some((pg, a)) = replica_a_on_postgres("a_second_instance_of_a_slot").await else {
        return;
    };
    let replicas = a.replicas(1).await;
    let b = replicas[0].core().clone();
    let token = a.token("site=icu", 1, Duration::from_secs(600)).await;
    let mut config = a.agent_config("ws-b", &token, "");
    config.controller = a.agent_urls(&replicas)[1].clone();
    let mut agent = a.spawn_agent(config);
    let id: AgentId = agent.connected().await.parse().unwrap();
    // A, the leader, knows B holds it (so plans nothing for it).
    let leader = a.controller().core().clone();
    eventually("A knows the agent is at B", Duration::from_secs(10), || {
        let elsewhere = leader
            .fleet
            .members()
            .iter()
            .any(|m| m.id == id && m.elsewhere);
        async move { elsewhere }
    })
    .await;
    let campaign = ruse_controller::resources::parse(
        "kind: Campaign\nname: exports\nselector: {site: icu}\nlures: [{template: pgpass}]\n",
    )
    .unwrap();
    b.deploy.apply(&campaign, false).await.unwrap();
    agent.wait_lures(1, Duration::from_secs(20)).await;
    let held = b.deploy.lures(Some(&id), None, false).unwrap();
    assert_eq!(held.len(), 1);
    let mine = held[0].lure.clone();
    assert_eq!(
        b.deploy.instances_created(),
        1,
        "B planned the agent it holds"
    );

    // Another controller's instance of the same slot, written as the leader
    // writes one for an agent it took for offline.
    let rival = LureInstance {
        id: ruse_proto::types::new_ulid().into(),
        material: Material::generate(Template::Pgpass).unwrap(),
        created: UnixMs::now(),
        ..mine.clone()
    };
    let other = PgStore::open(&pg.options("ruse")).unwrap();
    other.put_new_lures(&[Arc::new(rival.clone())]).unwrap();
    eventually(
        "B retires the other instance and keeps the agent's",
        Duration::from_secs(10),
        || {
            let stored: Vec<(String, bool)> = other
                .lures()
                .unwrap()
                .into_iter()
                .map(|l| (l.id.to_string(), l.retired.is_some()))
                .collect();
            let want = vec![(mine.id.to_string(), false), (rival.id.to_string(), true)];
            async move { stored == want }
        },
    )
    .await;
    let active = b.deploy.lures(Some(&id), None, false).unwrap();
    assert_eq!(active.len(), 1);
    assert_eq!(active[0].lure.id, mine.id);
    let all = b.deploy.lures(Some(&id), None, true).unwrap();
    assert!(
        all.iter()
            .any(|l| l.lure.id == rival.id && l.state == "retired"),
        "the other instance stays attributable"
    );
    // The agent kept what it had.
    let pgpass = std::fs::read_to_string(agent.home().join(".pgpass")).unwrap();
    assert!(pgpass.contains(&mine.material.username), "{pgpass}");
    assert_eq!(agent.status.borrow().lures, 1);
    assert_eq!(leader.deploy.instances_created(), 0);
    drop((b, leader));
    for r in replicas {
        r.shutdown().await.unwrap();
    }
}

/// `kill -9` of the replica that plans lures and moves rollouts on, in
/// the middle of a rollout, while it holds agents in the middle of an
/// event stream: the other replica takes the lease over and completes the
/// rollout with one instance per agent and slot; the agents move to it and
/// resend; nothing acknowledged is lost and nothing is stored twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_leading_replica_mid_rollout_and_mid_stream_loses_and_duplicates_nothing() {
    use ruse_e2e::{TestAgent, eventually};
    use ruse_proto::transport::ControllerUrl;
    use std::time::{Duration, Instant};

    let Some((pg, mut a)) = replica_a_on_postgres("kill_9_of_the_leading_replica").await else {
        return;
    };
    let (mut p, p_addr) = a.replica_process("replica-p");
    // P leads: A steps down, and comes back once P holds the lease.
    a.stop().await;
    let held = "SELECT count(*) FROM leases WHERE name = 'deploy' AND expires > now()";
    eventually("P takes the deploy lease", Duration::from_secs(10), || {
        let n = pg.psql("ruse", held);
        async move { n == "1" }
    })
    .await;
    a.start_again().await;
    assert!(!a.controller().core().deploy.leading());

    // Three agents at P that know A too, each with a lure to touch.
    let token = a.token("site=icu", 3, Duration::from_secs(600)).await;
    let mut agents = Vec::new();
    for n in 0..3 {
        let mut config = a.agent_config(&format!("ws-{n}"), &token, "");
        config.controller = ControllerUrl::from_addr(p_addr);
        config.other_controllers = vec![a.url()];
        agents.push(a.spawn_agent(config));
    }
    let mut ids = Vec::new();
    for agent in &mut agents {
        ids.push(agent.connected().await);
    }
    let csv = "  - {template: patient-csv, path: \"~/Documents/Exports\"}\n";
    a.apply(&format!(
        "kind: Campaign\nname: exports\nselector: {{site: icu}}\nlures:\n{csv}"
    ))
    .await;
    let mut producers = Vec::new();
    for (agent, id) in agents.iter_mut().zip(&ids) {
        agent.wait_lures(1, Duration::from_secs(20)).await;
        let lure = lure_known_at(&a, id).await;
        let sink = agent.events.clone();
        producers.push(tokio::spawn(async move {
            let mut sent = 0;
            for round in 0..100 {
                let events: Vec<_> = (0..10)
                    .map(|n| TestAgent::touch_event(&lure, round * 10 + n))
                    .collect();
                sent += events.len();
                sink.record(events).await.unwrap();
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            sent
        }));
    }
    let touches = "SELECT count(*) FROM events WHERE kind = 'touch'";
    eventually("the stream is flowing", Duration::from_secs(10), || {
        let n: u64 = pg.psql("ruse", touches).parse().unwrap();
        async move { n > 300 }
    })
    .await;

    // A change in three waves, applied through A; P dies as it starts.
    a.apply(&format!(
        "kind: Campaign\nname: exports\nselector: {{site: icu}}\nrollout: {{waves: [\"34%\", \"67%\", \"100%\"]}}\nlures:\n{csv}  - {{template: aws-credentials}}\n"
    ))
    .await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    p.kill9();
    let killed = Instant::now();
    for agent in &mut agents {
        agent.wait_lures(2, Duration::from_secs(30)).await;
    }
    let core = a.controller().core().clone();
    eventually("A completes the rollout", Duration::from_secs(10), || {
        let rollout = core.deploy.campaign("exports").unwrap().record.rollout;
        async move { rollout == ruse_controller::model::RolloutState::Completed }
    })
    .await;
    eprintln!(
        "the rollout completed on A {:?} after P was killed",
        killed.elapsed()
    );
    assert!(core.deploy.leading());
    drop(core);
    assert_eq!(instances(&pg), 6, "one instance per agent and slot");
    let mut sent = 0;
    for producer in producers {
        sent += producer.await.unwrap();
    }
    eventually("every outbox drained", Duration::from_secs(30), || {
        let depth: usize = agents.iter().map(|g| g.events.depth()).sum();
        async move { depth == 0 }
    })
    .await;
    // Event ids are unique in the table: as many rows as sent means none
    // lost and none twice.
    assert_eq!(sent, 3000);
    assert_eq!(pg.psql("ruse", touches), "3000");
}

/// `rusectl watch events` and `watch incidents` on one replica show what
/// another ingested, within a second of its commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_on_one_replica_show_what_another_ingested() {
    use ruse_e2e::{TestAgent, pb};
    use ruse_proto::transport::ControllerUrl;
    use std::time::{Duration, Instant};

    let Some(pg) = Postgres::start("watches_on_one_replica_show") else {
        return;
    };
    pg.database("ruse");
    let a = TestController::start_on(Some(pg.options("ruse")), |_| {}).await;
    let b = a.replicas(1).await.remove(0);
    let token = a.token("site=icu", 1, Duration::from_secs(600)).await;
    let mut agent_config = a.agent_config("ws", &token, "");
    agent_config.controller = ControllerUrl::from_addr(b.agent_addr());
    let mut agent = a.spawn_agent(agent_config);
    let id = agent.connected().await;
    a.apply("kind: Campaign\nname: exports\nselector: {site: icu}\nlures:\n  - {template: patient-csv, path: \"~/Documents/Exports\"}\n")
        .await;
    agent.wait_lures(1, Duration::from_secs(20)).await;
    let lure = lure_known_at(&a, &id).await;

    // Watching on A; the agent's session is on B.
    let mut events = a.watch_events().await;
    let mut incidents = a
        .root()
        .await
        .watch_incidents(pb::WatchIncidentsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let touch = TestAgent::touch_event(&lure, 1);
    let sent = Instant::now();
    agent.events.record(vec![touch.clone()]).await.unwrap();
    let item = tokio::time::timeout(Duration::from_secs(1), events.message())
        .await
        .expect("A's watch showed nothing within 1 s of B's ingest")
        .unwrap()
        .expect("stream ended");
    let shown = sent.elapsed();
    let e = item.event.unwrap();
    assert_eq!(e.id, touch.id);
    assert_eq!(e.agent_id, id);
    assert!(item.from_other_controller, "marked as another controller's");
    let update = tokio::time::timeout(Duration::from_secs(1), incidents.message())
        .await
        .expect("A's incident watch showed nothing within 1 s")
        .unwrap()
        .expect("stream ended");
    let incident = update.incident.unwrap();
    assert!(incident.lures.contains(&lure), "{incident:?}");
    eprintln!("an event ingested on B was shown by a watch on A after {shown:?}");
    b.shutdown().await.unwrap();
}

/// An agent given two controller replicas moves to the second when its
/// controller stops, and what it records then is stored through the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_moves_to_another_replica_when_its_controller_stops() {
    use ruse_e2e::TestAgent;
    use ruse_proto::transport::ControllerUrl;
    use std::time::Duration;

    let Some(pg) = Postgres::start("an_agent_moves_to_another_replica") else {
        return;
    };
    pg.database("ruse");
    let mut a = TestController::start_on(Some(pg.options("ruse")), |_| {}).await;
    let token = a.token("site=icu", 1, Duration::from_secs(600)).await;
    let mut config = a.agent_config("ws", &token, "");
    let mut b_config = a.config.clone();
    b_config.listen = ruse_e2e::free_ports(1)
        .first()
        .map(|p| format!("127.0.0.1:{p}").parse().unwrap())
        .unwrap();
    config.other_controllers = vec![ControllerUrl::from_addr(b_config.listen)];
    let mut agent = a.spawn_agent(config);
    let id = agent.connected().await;
    a.apply("kind: Campaign\nname: exports\nselector: {site: icu}\nlures:\n  - {template: patient-csv, path: \"~/Documents/Exports\"}\n")
        .await;
    agent.wait_lures(1, Duration::from_secs(10)).await;
    let lure = lure_known_at(&a, &id).await;

    // B starts once the lures exist, A stops: the agent moves to B.
    let b = ruse_controller::Controller::start(b_config).await.unwrap();
    a.stop().await;
    tokio::time::timeout(
        Duration::from_secs(10),
        agent.status.wait_for(|s| s.connected && s.sessions >= 2),
    )
    .await
    .expect("the agent did not reach the other replica within 10 s")
    .unwrap();
    agent
        .events
        .record(vec![TestAgent::touch_event(&lure, 1)])
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let n = pg.psql(
            "ruse",
            &format!("SELECT count(*) FROM events WHERE agent = '{id}' AND kind = 'touch'"),
        );
        if n == "1" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{n} touch events stored"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    b.shutdown().await.unwrap();
}

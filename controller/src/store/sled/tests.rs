use super::*;
use ruse_proto::types::{Labels, Role};

fn token(id: &str) -> TokenRecord {
    TokenRecord {
        id: id.parse().unwrap(),
        secret_sha256: "00".into(),
        created_at: UnixMs(1),
        expires_at: UnixMs(2),
        max_uses: 3,
        uses: 0,
        labels: Labels::parse_pairs(["site=icu"]).unwrap(),
        created_by: "admin/root".into(),
        description: String::new(),
    }
}

#[test]
fn records_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = SledStore::open(dir.path(), 1 << 20).unwrap();
        store.put_token(&token("t1")).unwrap();
        store
            .put_admin(&AdminRecord {
                name: "alice".parse().unwrap(),
                role: Role::Viewer,
                issued_at: UnixMs(5),
                issued_by: "admin/root".into(),
            })
            .unwrap();
        store.flush().unwrap();
    }
    let store = SledStore::open(dir.path(), 1 << 20).unwrap();
    assert_eq!(
        store.token(&"t1".parse().unwrap()).unwrap(),
        Some(token("t1"))
    );
    assert_eq!(store.admins().unwrap().len(), 1);
    assert!(store.delete_token(&"t1".parse().unwrap()).unwrap());
    assert!(!store.delete_token(&"t1".parse().unwrap()).unwrap());
}

fn entry(event_id: &str, at: i64) -> TimelineEntry {
    TimelineEntry {
        event_id: event_id.into(),
        at: UnixMs(at),
        agent: "a1".parse().unwrap(),
        kind: "lure-read".into(),
        summary: format!("read {event_id}"),
    }
}

#[test]
fn incident_heads_and_timelines_are_stored_apart_and_read_back_in_time_order() {
    let dir = tempfile::tempdir().unwrap();
    let mut i = crate::incidents::tests_support::incident();
    let (a, b, c) = (entry("e1", 1_000), entry("e2", 2_000), entry("e0", -5));
    {
        let store = SledStore::open(dir.path(), 1 << 20).unwrap();
        store.put_incident(&i).unwrap();
        // Added over three batches, not in time order.
        store.put_timeline(&i.id, &[&b]).unwrap();
        store.put_timeline(&i.id, &[&a]).unwrap();
        i.version += 1;
        store.put_incident(&i).unwrap();
        store.put_timeline(&i.id, &[&c]).unwrap();
        // Another incident's timeline stays its own.
        let other = crate::incidents::tests_support::incident();
        store.put_incident(&other).unwrap();
        store.put_timeline(&other.id, &[&entry("x", 1)]).unwrap();
        store.flush().unwrap();
        // The head record holds no timeline.
        let head = store.incidents.get(i.id.as_bytes()).unwrap().unwrap();
        assert!(!String::from_utf8_lossy(&head).contains("read e1"));
    }
    let store = SledStore::open(dir.path(), 1 << 20).unwrap();
    let back = store
        .incidents()
        .unwrap()
        .into_iter()
        .find(|x| x.id == i.id)
        .unwrap();
    i.timeline = Arc::new(vec![Arc::new(c), Arc::new(a), Arc::new(b)]);
    assert_eq!(back, i);
}

#[test]
fn an_incident_written_whole_by_an_earlier_version_keeps_its_timeline() {
    let dir = tempfile::tempdir().unwrap();
    let mut i = crate::incidents::tests_support::incident();
    i.timeline = Arc::new(vec![
        Arc::new(entry("e1", 1_000)),
        Arc::new(entry("e2", 2_000)),
    ]);
    {
        let store = SledStore::open(dir.path(), 1 << 20).unwrap();
        // How incidents were stored before heads and timelines split.
        SledStore::put(&store.incidents, &i.id, &i).unwrap();
        assert_eq!(store.incidents().unwrap(), vec![i.clone()]);
        store.flush().unwrap();
    }
    // Migrated on the first read: the head is now written without it.
    let store = SledStore::open(dir.path(), 1 << 20).unwrap();
    let head = store.incidents.get(i.id.as_bytes()).unwrap().unwrap();
    assert!(!String::from_utf8_lossy(&head).contains("read e1"));
    assert_eq!(store.incidents().unwrap(), vec![i]);
}

#[test]
fn audit_is_ordered_and_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path(), 1 << 20).unwrap();
    for i in 0..10 {
        store
            .append_audit(AuditRecord {
                seq: 0,
                at: UnixMs(i * 10),
                actor: "a".into(),
                peer: "p".into(),
                action: format!("act{i}"),
                target: String::new(),
                result: "ok".into(),
                detail: String::new(),
            })
            .unwrap();
    }
    let last3 = store.audit(UnixMs(0), None, 3).unwrap();
    let actions: Vec<_> = last3.iter().map(|r| r.action.as_str()).collect();
    assert_eq!(actions, ["act7", "act8", "act9"]);
    assert!(last3.windows(2).all(|w| w[0].seq < w[1].seq));
    let since = store.audit(UnixMs(75), None, 100).unwrap();
    assert_eq!(since.len(), 2);
    // The page before the last three.
    let page = store.audit(UnixMs(0), Some(last3[0].seq), 3).unwrap();
    let actions: Vec<_> = page.iter().map(|r| r.action.as_str()).collect();
    assert_eq!(actions, ["act4", "act5", "act6"]);
}

fn instance(id: &str, retired: Option<UnixMs>) -> LureInstance {
    LureInstance {
        id: id.into(),
        agent: "a1".parse().unwrap(),
        campaign: "c".into(),
        slot: "pgpass".into(),
        template: crate::model::Template::Pgpass,
        epoch: 0,
        material: crate::lures::Material::default(),
        created: UnixMs(1),
        retired,
    }
}

#[test]
fn a_lure_written_later_supersedes_its_copy_in_a_batch() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path(), 1 << 20).unwrap();
    let batch: Vec<Arc<LureInstance>> = ["l1", "l2", "l3"]
        .iter()
        .map(|id| Arc::new(instance(id, None)))
        .collect();
    store.put_new_lures(&batch).unwrap();
    store.put_new_lures(&[]).unwrap();
    // Written again by a pass after a failed flush.
    store.put_new_lures(&batch[..1]).unwrap();
    // An instance written before batches existed.
    store.put_lure(&instance("l0", None)).unwrap();
    store.put_lures(&[instance("l2", Some(UnixMs(5)))]).unwrap();
    let mut all = store.lures().unwrap();
    all.sort_by(|a, b| a.id.cmp(&b.id));
    let seen: Vec<(&str, Option<UnixMs>)> = all.iter().map(|l| (&*l.id, l.retired)).collect();
    assert_eq!(
        seen,
        [
            ("l0", None),
            ("l1", None),
            ("l2", Some(UnixMs(5))),
            ("l3", None)
        ]
    );
    assert_eq!(store.lure("l2").unwrap().unwrap().retired, Some(UnixMs(5)));
    assert!(store.lure("l1").unwrap().is_none());
    assert_eq!(
        store.lure_batches().len(),
        2,
        "an empty batch writes nothing"
    );
}

#[test]
fn a_batch_is_dropped_once_every_instance_in_it_has_a_record_of_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path(), 1 << 20).unwrap();
    let first: Vec<Arc<LureInstance>> = ["l1", "l2"]
        .iter()
        .map(|id| Arc::new(instance(id, None)))
        .collect();
    store.put_new_lures(&first).unwrap();
    store
        .put_new_lures(&[Arc::new(instance("l3", None))])
        .unwrap();
    // The first batch still holds the only copy of l2.
    store.put_lures(&[instance("l1", Some(UnixMs(5)))]).unwrap();
    assert_eq!(store.drop_superseded_lure_batches().unwrap(), 0);
    assert_eq!(store.lure_batches().len(), 2);

    store.put_lures(&[instance("l2", Some(UnixMs(6)))]).unwrap();
    assert_eq!(store.drop_superseded_lure_batches().unwrap(), 1);
    let left: Vec<Vec<Arc<str>>> = store
        .lure_batches()
        .iter()
        .map(|b| b.iter().map(|l| l.id.clone()).collect())
        .collect();
    assert_eq!(left, [[Arc::<str>::from("l3")]]);
    // Every instance is still there, in its latest version.
    let mut all = store.lures().unwrap();
    all.sort_by(|a, b| a.id.cmp(&b.id));
    let seen: Vec<(&str, Option<UnixMs>)> = all.iter().map(|l| (&*l.id, l.retired)).collect();
    assert_eq!(
        seen,
        [
            ("l1", Some(UnixMs(5))),
            ("l2", Some(UnixMs(6))),
            ("l3", None)
        ]
    );
    assert_eq!(store.drop_superseded_lure_batches().unwrap(), 0);
}

#[test]
fn a_damaged_lure_batch_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path(), 1 << 20).unwrap();
    store.lure_batches.insert(b"b1", &b"[{\"id\""[..]).unwrap();
    assert!(matches!(
        store.lures(),
        Err(StoreError::Corrupt {
            tree: "lure_batches",
            ..
        })
    ));
    assert!(matches!(
        store.drop_superseded_lure_batches(),
        Err(StoreError::Corrupt {
            tree: "lure_batches",
            ..
        })
    ));
    assert_eq!(
        store.lure_batches.len(),
        1,
        "kept for an operator to look at"
    );
}

#[test]
fn corrupt_record_is_reported_not_panicked() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path(), 1 << 20).unwrap();
    store.tokens.insert(b"bad", &b"{not json"[..]).unwrap();
    assert!(matches!(
        store.token(&"bad".parse().unwrap()),
        Err(StoreError::Corrupt { tree: "tokens", .. })
    ));
}

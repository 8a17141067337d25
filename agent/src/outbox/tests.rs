use super::*;

fn event(n: u32, kind: &str, allowed: bool) -> AgentEvent {
    AgentEvent {
        id: format!("ev{n:06}"),
        kind: kind.into(),
        lure_id: "lure".into(),
        allowed,
        path: format!("/home/x/file{n}"),
        ..Default::default()
    }
}

fn ids(events: &[AgentEvent]) -> Vec<String> {
    events.iter().map(|e| e.id.clone()).collect()
}

#[test]
fn events_the_disk_refuses_are_held_sent_in_order_and_written_later() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = Outbox::open(dir.path(), 100).unwrap();
    o.append(&mut (0..3).map(|n| event(n, "touch", false)).collect::<Vec<_>>())
        .unwrap();
    // The disk refuses writes (a read-only handle fails every write
    // as a full disk would).
    let writable = std::mem::replace(&mut o.log, File::open(dir.path().join(LOG)).unwrap());
    o.append(&mut (3..5).map(|n| event(n, "touch", false)).collect::<Vec<_>>())
        .unwrap();
    assert_eq!(o.depth(), 5);
    assert_eq!(o.held.len(), 2);
    let all = ids(&o.pending(0, 10).unwrap());
    assert_eq!(all, (0..5).map(|n| format!("ev{n:06}")).collect::<Vec<_>>());
    // Acknowledging a held event forgets it.
    o.ack(4).unwrap();
    assert_eq!(ids(&o.pending(0, 10).unwrap()), vec!["ev000004"]);

    // Writable again: the held event goes to the log before the next.
    o.log = writable;
    o.append(&mut [event(5, "touch", false)]).unwrap();
    assert!(o.held.is_empty());
    assert_eq!(
        ids(&o.pending(0, 10).unwrap()),
        vec!["ev000004", "ev000005"]
    );
    drop(o);
    let o = Outbox::open(dir.path(), 100).unwrap();
    assert_eq!(
        ids(&o.pending(0, 10).unwrap()),
        vec!["ev000004", "ev000005"]
    );
}

#[test]
fn memory_holds_at_most_max_held_and_counts_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = Outbox::open(dir.path(), 2 * MAX_HELD).unwrap();
    o.log = {
        o.append(&mut [event(0, "touch", false)]).unwrap();
        File::open(dir.path().join(LOG)).unwrap()
    };
    let mut many: Vec<_> = (1..=MAX_HELD as u32 + 5)
        .map(|n| event(n, "touch", false))
        .collect();
    let e = o.append(&mut many).unwrap_err();
    assert!(e.to_string().contains("5 events dropped"), "{e}");
    assert_eq!(o.held.len(), MAX_HELD);
    assert_eq!(o.dropped, 5);
}

#[test]
fn events_survive_reopen_until_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut o = Outbox::open(dir.path(), 100).unwrap();
        let mut batch: Vec<_> = (0..5).map(|n| event(n, "touch", false)).collect();
        o.append(&mut batch).unwrap();
        assert_eq!(
            batch.iter().map(|e| e.seq).collect::<Vec<_>>(),
            [1, 2, 3, 4, 5]
        );
        o.ack(2).unwrap();
    }
    let mut o = Outbox::open(dir.path(), 100).unwrap();
    assert_eq!(o.depth(), 3);
    assert_eq!(
        ids(&o.pending(0, 10).unwrap()),
        ["ev000002", "ev000003", "ev000004"]
    );
    assert_eq!(ids(&o.pending(3, 10).unwrap()), ["ev000003", "ev000004"]);
    let mut more = vec![event(9, "touch", false)];
    o.append(&mut more).unwrap();
    assert_eq!(more[0].seq, 6, "sequence numbers continue after a restart");
    o.ack(6).unwrap();
    assert_eq!(o.depth(), 0);
    assert_eq!(
        std::fs::metadata(dir.path().join(LOG)).unwrap().len(),
        0,
        "an empty outbox is truncated"
    );
    drop(o);
    let mut o = Outbox::open(dir.path(), 100).unwrap();
    let mut next = vec![event(10, "touch", false)];
    o.append(&mut next).unwrap();
    assert_eq!(next[0].seq, 7, "sequence survives truncation");
}

#[test]
fn after_a_crash_recent_acknowledgements_are_sent_again_and_sequences_never_go_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = Outbox::open(dir.path(), 100).unwrap();
    o.append(&mut (0..5).map(|n| event(n, "touch", false)).collect::<Vec<_>>())
        .unwrap();
    o.ack(2).unwrap();
    // A crash: nothing written on the way out.
    std::mem::forget(o);
    let mut o = Outbox::open(dir.path(), 100).unwrap();
    let pending = ids(&o.pending(0, 10).unwrap());
    assert!(
        pending.ends_with(&["ev000002".into(), "ev000003".into(), "ev000004".into()]),
        "unacknowledged events are all there: {pending:?}"
    );
    // Everything acknowledged empties the log: the acknowledgement is
    // written first, so numbering continues after another crash.
    o.ack(5).unwrap();
    assert_eq!(o.depth(), 0);
    std::mem::forget(o);
    let mut o = Outbox::open(dir.path(), 100).unwrap();
    assert_eq!(o.depth(), 0);
    let mut next = vec![event(9, "touch", false)];
    o.append(&mut next).unwrap();
    assert_eq!(next[0].seq, 6);
    // Older than ACKED_SYNC_EVERY, an acknowledgement is written even
    // with events left.
    o.append(&mut [event(10, "touch", false)]).unwrap();
    o.acked_written -= ACKED_SYNC_EVERY;
    o.ack(6).unwrap();
    std::mem::forget(o);
    let o = Outbox::open(dir.path(), 100).unwrap();
    assert_eq!(ids(&o.pending(0, 10).unwrap()), ["ev000010"]);
}

#[test]
fn the_log_is_compacted_only_once_acknowledged_bytes_outweigh_pending_ones() {
    let dir = tempfile::tempdir().unwrap();
    let len = || std::fs::metadata(dir.path().join(LOG)).unwrap().len();
    let mut o = Outbox::open(dir.path(), 1_000).unwrap();
    // 200 records of ~50 KB: ~10 MB.
    let mut batch: Vec<_> = (0..200)
        .map(|n| AgentEvent {
            detail: "x".repeat(50_000),
            ..event(n, "decoy-login", false)
        })
        .collect();
    o.append(&mut batch).unwrap();
    let full = len();
    // 4.5 MB acknowledged, 5.5 MB pending: copying would cost more
    // than it frees.
    o.ack(90).unwrap();
    assert_eq!(len(), full);
    // 5.5 MB acknowledged, 4.5 MB pending: compacted.
    o.ack(110).unwrap();
    assert!(len() < full / 2 + 100_000, "{} of {full}", len());
    assert_eq!(o.depth(), 90);
    let pending = o.pending(0, 1_000).unwrap();
    assert_eq!(pending.len(), 90);
    assert_eq!(pending[0].id, "ev000110");
    assert_eq!(pending[89].detail.len(), 50_000);
    drop(o);
    let o = Outbox::open(dir.path(), 1_000).unwrap();
    assert_eq!(o.depth(), 90);
    assert_eq!(o.pending(0, 1).unwrap()[0].id, "ev000110");
}

#[test]
fn a_torn_tail_is_cut_off_and_earlier_events_kept() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut o = Outbox::open(dir.path(), 100).unwrap();
        o.append(&mut (0..3).map(|n| event(n, "touch", false)).collect::<Vec<_>>())
            .unwrap();
    }
    // A crash in the middle of writing a fourth record.
    let mut f = OpenOptions::new()
        .append(true)
        .open(dir.path().join(LOG))
        .unwrap();
    f.write_all(&[200, 0, 0, 0, 1, 2, 3, 4, 9, 9]).unwrap();
    drop(f);
    let mut o = Outbox::open(dir.path(), 100).unwrap();
    assert_eq!(o.depth(), 3);
    let mut next = vec![event(7, "touch", false)];
    o.append(&mut next).unwrap();
    assert_eq!(next[0].seq, 4);
    drop(o);
    let o = Outbox::open(dir.path(), 100).unwrap();
    assert_eq!(
        ids(&o.pending(0, 10).unwrap()),
        ["ev000000", "ev000001", "ev000002", "ev000007"]
    );
}

#[test]
fn when_full_the_oldest_low_severity_events_go_first() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = Outbox::open(dir.path(), 4).unwrap();
    let mut batch = vec![
        event(0, "touch", false),
        event(1, "touch", true),
        event(2, "drift", false),
        event(3, "touch", true),
        event(4, "touch", false),
        event(5, "touch", false),
    ];
    o.append(&mut batch).unwrap();
    assert_eq!(o.depth(), 4);
    assert_eq!(o.dropped(), 2);
    assert_eq!(
        ids(&o.pending(0, 10).unwrap()),
        ["ev000000", "ev000002", "ev000004", "ev000005"]
    );
    // Across the holes the drops left, after a sequence and limited.
    assert_eq!(ids(&o.pending(1, 2).unwrap()), ["ev000002", "ev000004"]);
    assert_eq!(ids(&o.pending(5, 10).unwrap()), ["ev000005"]);
    o.append(&mut [event(6, "touch", false)]).unwrap();
    assert_eq!(
        ids(&o.pending(0, 10).unwrap()),
        ["ev000000", "ev000004", "ev000005", "ev000006"]
    );
    drop(o);
    let o = Outbox::open(dir.path(), 4).unwrap();
    assert_eq!(o.depth(), 4, "the log reopens with what was kept");
    assert_eq!(
        ids(&o.pending(0, 10).unwrap()),
        ["ev000000", "ev000004", "ev000005", "ev000006"]
    );
    assert_eq!(o.dropped(), 0, "drops before a restart were counted then");
}

#[test]
fn a_full_outbox_does_not_rewrite_its_log_on_every_append() {
    let dir = tempfile::tempdir().unwrap();
    let len = || std::fs::metadata(dir.path().join(LOG)).unwrap().len();
    let mut o = Outbox::open(dir.path(), 20).unwrap();
    let mut rewrites = 0;
    let mut before = 0;
    // ~50 KB each: 20 fit in ~1 MB; 200 appended one at a time.
    for n in 0..200 {
        let mut one = [AgentEvent {
            detail: "x".repeat(50_000),
            ..event(n, "touch", false)
        }];
        o.append(&mut one).unwrap();
        assert_eq!(o.depth(), 20.min(n as usize + 1));
        if len() < before {
            rewrites += 1;
        }
        before = len();
        // Dead bytes never pass the larger of 4 MiB and the live ones.
        assert!(len() < 2 * 20 * 50_100 + COMPACT_AFTER, "{}", len());
    }
    assert!((1..=4).contains(&rewrites), "{rewrites} rewrites");
    assert_eq!(o.dropped(), 180);
    let newest: Vec<String> = (180..200).map(|n| format!("ev{n:06}")).collect();
    assert_eq!(ids(&o.pending(0, 100).unwrap()), newest);
    drop(o);
    let o = Outbox::open(dir.path(), 20).unwrap();
    assert_eq!(ids(&o.pending(0, 100).unwrap()), newest);
}

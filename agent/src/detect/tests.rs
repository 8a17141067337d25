use super::*;
use crate::outbox::Outbox;

fn watched() -> Watched {
    let mut files = HashMap::new();
    files.insert(
        PathBuf::from("/r/home/a/patients.csv"),
        LureRef {
            id: "l1".into(),
            revision: 3,
            template: "patient-csv".into(),
            ordinary: Arc::default(),
        },
    );
    files.insert(
        PathBuf::from("/r/home/a/.ssh/config"),
        LureRef {
            id: "l2".into(),
            revision: 1,
            template: "ssh-key".into(),
            ordinary: vec!["ssh".to_owned(), "scp".to_owned()].into(),
        },
    );
    files.insert(
        PathBuf::from("/r/etc/hosts"),
        LureRef {
            id: "l3".into(),
            revision: 1,
            template: "hosts-entry".into(),
            ordinary: vec!["*".to_owned()].into(),
        },
    );
    Watched {
        files,
        rules: vec![AllowRule {
            name: "backup".into(),
            process: "/usr/bin/rest*".into(),
            user: String::new(),
            template: String::new(),
        }],
    }
}

fn access(op: Op, pid: Option<i32>, via: Via) -> Access {
    Access {
        path: PathBuf::from("/r/home/a/patients.csv"),
        op,
        pid,
        process: None,
        via,
    }
}

fn detector() -> Detector {
    let mut d = Detector::new(DetectConfig::default(), Arc::new(SelfActivity::default()));
    d.set_watched(Arc::new(watched()));
    d
}

#[test]
fn a_read_is_one_event_listing_its_operations() {
    let mut d = detector();
    let now = Instant::now();
    let pid = Some(999_999);
    assert!(
        d.observe(
            vec![
                access(Op::Open, pid, Via::Fanotify),
                access(Op::Read, pid, Via::Fanotify)
            ],
            now
        )
        .is_empty()
    );
    let events = d.observe(vec![access(Op::Close, pid, Via::Fanotify)], now);
    assert_eq!(events.len(), 1);
    let e = &events[0];
    assert_eq!(
        (e.kind.as_str(), e.lure_id.as_str(), e.lure_revision),
        ("touch", "l1", 3)
    );
    assert_eq!(e.operations, ["open", "read", "close"]);
    assert_eq!(e.attribution, "fanotify");
    assert!(!e.allowed);
    assert_eq!(e.id.len(), 26);
}

#[test]
fn a_verification_read_explains_a_read_but_never_a_change() {
    let activity = Arc::new(SelfActivity::default());
    let mut d = Detector::new(DetectConfig::default(), activity.clone());
    d.set_watched(Arc::new(watched()));
    activity.read(Path::new("/r/home/a/patients.csv"));
    let now = Instant::now();
    assert!(
        d.observe(vec![access(Op::Close, None, Via::Inotify)], now)
            .is_empty(),
        "the agent's own read"
    );
    let seen = d.observe(vec![access(Op::Delete, None, Via::DirectoryChanges)], now);
    assert_eq!(
        seen.len(),
        1,
        "a deletion right after a verification is reported"
    );
    assert_eq!(seen[0].operations, ["delete"]);
    activity.touch(Path::new("/r/home/a/patients.csv"));
    assert!(
        d.observe(
            vec![access(Op::Modify, None, Via::DirectoryChanges)],
            Instant::now()
        )
        .is_empty(),
        "the agent's own write"
    );
}

#[test]
fn own_accesses_and_unwatched_paths_are_ignored() {
    let activity = Arc::new(SelfActivity::default());
    let mut d = Detector::new(DetectConfig::default(), activity.clone());
    d.set_watched(Arc::new(watched()));
    let me = Some(i32::try_from(std::process::id()).unwrap());
    let now = Instant::now();
    assert!(
        d.observe(
            vec![
                access(Op::Open, me, Via::Fanotify),
                access(Op::Close, me, Via::Fanotify)
            ],
            now
        )
        .is_empty()
    );
    activity.touch(Path::new("/r/home/a/patients.csv"));
    assert!(
        d.observe(vec![access(Op::Close, None, Via::Inotify)], Instant::now())
            .is_empty()
    );
    let mut other = access(Op::Close, Some(5), Via::Fanotify);
    other.path = PathBuf::from("/r/home/a/real.txt");
    assert!(d.observe(vec![other], now).is_empty());
    assert!(d.next_deadline().is_none());
}

#[test]
fn unclosed_accesses_are_flushed_after_the_window() {
    let mut d = detector();
    let start = Instant::now();
    assert!(
        d.observe(vec![access(Op::Modify, None, Via::Inotify)], start)
            .is_empty()
    );
    assert!(d.flush_due(start + Duration::from_millis(10)).is_empty());
    let events = d.flush_due(start + Duration::from_millis(250));
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].kind, "modify");
    assert_eq!(events[0].attribution, "inotify (no process attribution)");
    assert!(events[0].process.is_none());
}

#[test]
fn bursts_are_rate_limited_and_counted() {
    let mut d = detector();
    let now = Instant::now();
    let mut emitted = 0;
    for pid in 0..20 {
        emitted += d
            .observe(
                vec![
                    access(Op::Open, Some(pid), Via::Fanotify),
                    access(Op::Close, Some(pid), Via::Fanotify),
                ],
                now,
            )
            .len();
    }
    assert_eq!(emitted, 5);
    assert_eq!(d.rate_limited(), 15);
    let next = d.observe(
        vec![access(Op::Close, Some(77), Via::Fanotify)],
        now + Duration::from_secs(1),
    );
    assert_eq!(next[0].dropped_before, 15);
}

#[test]
fn allow_rules_mark_known_readers() {
    let mut d = detector();
    let now = Instant::now();
    let mut p = Pending {
        first: now,
        observed: UnixMs::now(),
        lure: watched().files[Path::new("/r/home/a/patients.csv")].clone(),
        path: PathBuf::from("/r/home/a/patients.csv"),
        ops: [Op::Open].into(),
        process: Some(EventProcess {
            pid: 1,
            exe: "/usr/bin/restic".into(),
            uid: 0,
            user: "backup".into(),
            cmdline: "restic backup".into(),
        }),
        via: Via::Fanotify,
    };
    let e = d.emit(p, now).unwrap();
    assert!(e.allowed);
    assert_eq!(e.allow_rule, "backup");
    p = Pending {
        first: now,
        observed: UnixMs::now(),
        lure: watched().files[Path::new("/r/home/a/patients.csv")].clone(),
        path: PathBuf::from("/r/home/a/patients.csv"),
        ops: [Op::Open].into(),
        process: Some(EventProcess {
            exe: "/usr/bin/cat".into(),
            ..Default::default()
        }),
        via: Via::Fanotify,
    };
    assert!(!d.emit(p, now).unwrap().allowed);
}

fn decoy_events(n: usize) -> Vec<AgentEvent> {
    (0..n)
        .map(|i| AgentEvent {
            id: format!("e{i}"),
            kind: "decoy-login".into(),
            ..Default::default()
        })
        .collect()
}

#[tokio::test]
async fn decoy_events_wait_for_room_and_never_push_older_events_out() {
    let patience = Duration::from_secs(60);
    let dir = tempfile::tempdir().unwrap();
    let sink = EventSink::new(Outbox::open(dir.path(), 4).unwrap());
    assert_eq!(
        sink.record_when_room(decoy_events(4), patience)
            .await
            .unwrap(),
        0
    );
    assert_eq!(sink.depth(), 4);

    // Full: the writer waits until an acknowledgement makes room.
    let waiting = tokio::spawn({
        let sink = sink.clone();
        async move { sink.record_when_room(decoy_events(2), patience).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished());
    assert_eq!(sink.depth(), 4);
    assert_eq!(sink.ack(2).await.unwrap(), (2, 2));
    assert_eq!(waiting.await.unwrap().unwrap(), 0);
    assert_eq!(sink.depth(), 4);

    // Full of a touch and decoy events, and nothing acknowledged within
    // the patience: the new events are refused and counted; nothing
    // older is shed, the touch is still there.
    assert_eq!(sink.ack(6).await.unwrap(), (4, 0));
    let mut touch = decoy_events(1);
    touch[0].kind = "touch".into();
    sink.record(touch).await.unwrap();
    assert_eq!(
        sink.record_when_room(decoy_events(3), patience)
            .await
            .unwrap(),
        0
    );
    let refused = sink
        .record_when_room(decoy_events(3), Duration::from_millis(300))
        .await
        .unwrap();
    assert_eq!(refused, 3);
    assert_eq!(sink.backlog().1, 0);
    let pending = sink.pending(0, 10).unwrap();
    assert_eq!(pending.len(), 4);
    assert_eq!(pending[0].kind, "touch");
}

#[test]
fn reads_of_a_shared_file_by_its_ordinary_programs_are_recorded_not_raised() {
    let mut d = Detector::new(
        DetectConfig {
            per_lure_per_second: 100,
            ..DetectConfig::default()
        },
        Arc::new(SelfActivity::default()),
    );
    d.set_watched(Arc::new(watched()));
    let now = Instant::now();
    let read_by = |path: &str, exe: &str, pid: i32, op: Op| {
        [Op::Open, op, Op::Close]
            .into_iter()
            .map(|op| Access {
                path: PathBuf::from(path),
                op,
                pid: Some(pid),
                process: Some(EventProcess {
                    pid: pid.unsigned_abs(),
                    exe: exe.into(),
                    ..Default::default()
                }),
                via: Via::Fanotify,
            })
            .collect::<Vec<_>>()
    };
    let judge = |d: &mut Detector, accesses| {
        let events = d.observe(accesses, now);
        assert_eq!(events.len(), 1, "{events:?}");
        (events[0].allowed, events[0].allow_rule.clone())
    };
    let config = "/r/home/a/.ssh/config";
    assert_eq!(
        judge(&mut d, read_by(config, "/usr/bin/ssh", 10, Op::Read)),
        (true, "ordinary reader (ssh)".into())
    );
    // Anything else reading it, a copy named ssh outside the system
    // directories, and any write are raised.
    for (exe, pid, op) in [
        ("/usr/bin/cat", 11, Op::Read),
        ("/usr/bin/grep", 12, Op::Read),
        ("/tmp/ssh", 13, Op::Read),
        ("/home/a/bin/ssh", 14, Op::Read),
        ("/usr/bin/ssh", 15, Op::Modify),
    ] {
        assert!(!judge(&mut d, read_by(config, exe, pid, op)).0, "{exe}");
    }
    // An interpreter counts by its script: the AWS CLI is Python.
    let with_cmdline = |exe: &str, cmdline: &str, pid: i32| {
        let mut accesses = read_by(config, exe, pid, Op::Read);
        for a in &mut accesses {
            if let Some(p) = &mut a.process {
                p.cmdline = cmdline.into();
            }
        }
        accesses
    };
    let mut d2 = Detector::new(
        DetectConfig {
            per_lure_per_second: 100,
            ..DetectConfig::default()
        },
        Arc::new(SelfActivity::default()),
    );
    let mut w = watched();
    if let Some(l) = w.files.get_mut(Path::new(config)) {
        l.ordinary = vec!["aws".to_owned()].into();
    }
    d2.set_watched(Arc::new(w));
    assert!(
        judge(
            &mut d2,
            with_cmdline(
                "/usr/bin/python3.11",
                "/usr/bin/python3 /usr/bin/aws s3 ls",
                20
            )
        )
        .0
    );
    for (cmdline, pid) in [
        ("/usr/bin/python3 /tmp/aws", 21),
        ("/usr/bin/python3 -c import os", 22),
        ("/usr/bin/python3 /home/a/dump.py", 23),
    ] {
        assert!(
            !judge(&mut d2, with_cmdline("/usr/bin/python3.11", cmdline, pid)).0,
            "{cmdline}"
        );
    }
    // Everyone reads /etc/hosts.
    assert!(judge(&mut d, read_by("/r/etc/hosts", "/tmp/x", 16, Op::Read)).0);
    // A whole-file lure raises on any read.
    assert!(
        !judge(
            &mut d,
            read_by("/r/home/a/patients.csv", "/usr/bin/ssh", 17, Op::Read)
        )
        .0
    );
}

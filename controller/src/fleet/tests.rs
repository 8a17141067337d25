use super::*;

use tests_support::record;

fn peer() -> SocketAddr {
    "127.0.0.1:5000".parse().unwrap()
}

#[test]
fn state_follows_sessions_heartbeats_and_revocation() {
    let fleet = Fleet::new(vec![record("a", "site=icu")], Duration::from_millis(50));
    let id: AgentId = "a".parse().unwrap();
    assert_eq!(fleet.get(&id).unwrap().state, AgentState::Offline);
    let ticket = fleet.begin_session(&id, peer()).unwrap();
    assert_eq!(fleet.get(&id).unwrap().state, AgentState::Online);
    fleet.heartbeat(
        &id,
        ticket.id,
        Health {
            degraded: true,
            ..Health::default()
        },
    );
    assert_eq!(fleet.get(&id).unwrap().state, AgentState::Degraded);
    std::thread::sleep(Duration::from_millis(80));
    assert_eq!(fleet.get(&id).unwrap().state, AgentState::Offline);
    fleet.revoke(&id, "admin/x", "lost laptop").unwrap();
    assert_eq!(fleet.get(&id).unwrap().state, AgentState::Revoked);
    assert!(matches!(
        fleet.begin_session(&id, peer()),
        Err(SessionRefused::Revoked(_))
    ));
    use ruse_pki::Denylist;
    assert!(fleet.is_denied(&Identity::Agent(id)));
}

#[test]
fn a_new_session_closes_the_old_one_and_stale_ends_are_ignored() {
    let fleet = Fleet::new(vec![record("a", "")], Duration::from_secs(60));
    let id: AgentId = "a".parse().unwrap();
    let mut first = fleet.begin_session(&id, peer()).unwrap();
    let second = fleet.begin_session(&id, peer()).unwrap();
    assert_eq!(first.closed.try_recv(), Ok(CloseReason::Superseded));
    fleet.end_session(&id, first.id);
    assert_eq!(fleet.get(&id).unwrap().state, AgentState::Online);
    fleet.end_session(&id, second.id);
    assert_eq!(fleet.get(&id).unwrap().state, AgentState::Offline);
}

#[test]
fn revocation_closes_the_live_session() {
    let fleet = Fleet::new(vec![record("a", "")], Duration::from_secs(60));
    let id: AgentId = "a".parse().unwrap();
    let mut ticket = fleet.begin_session(&id, peer()).unwrap();
    fleet.revoke(&id, "admin/x", "").unwrap();
    assert_eq!(ticket.closed.try_recv(), Ok(CloseReason::Revoked));
}

#[test]
fn unknown_agents_are_refused_and_selectors_filter() {
    let fleet = Fleet::new(
        vec![record("a", "site=icu"), record("b", "site=er")],
        Duration::from_secs(60),
    );
    assert!(matches!(
        fleet.begin_session(&"zz".parse().unwrap(), peer()),
        Err(SessionRefused::Unknown(_))
    ));
    let icu = fleet.list(&Labels::parse_pairs(["site=icu"]).unwrap());
    assert_eq!(icu.len(), 1);
    assert_eq!(icu[0].record.id.as_str(), "a");
    assert_eq!(fleet.list(&Labels::new()).len(), 2);
}

#[test]
fn admins_set_and_remove_labels_from_any_source() {
    let fleet = Fleet::new(
        vec![record("a", "role=workstation,site=icu")],
        Duration::from_secs(60),
    );
    let id: AgentId = "a".parse().unwrap();
    let r = fleet
        .set_admin_labels(
            &id,
            &Labels::parse_pairs(["tier=1"]).unwrap(),
            &["role".into()],
        )
        .unwrap();
    assert_eq!(r.labels().to_string(), "site=icu,tier=1");
    let r = fleet
        .set_admin_labels(&id, &Labels::parse_pairs(["role=pacs"]).unwrap(), &[])
        .unwrap();
    assert_eq!(r.labels().get("role"), Some("pacs"));
    assert!(r.removed_labels.is_empty());
    // What selectors see follows every source.
    let member = |fleet: &Fleet| fleet.members().remove(0);
    assert_eq!(*member(&fleet).labels, r.labels());
    assert_eq!(
        fleet
            .list(&Labels::parse_pairs(["role=pacs"]).unwrap())
            .len(),
        1
    );
    let ticket = fleet.begin_session(&id, peer()).unwrap();
    fleet.hello(
        &id,
        ticket.id,
        HostFacts {
            hostname: "ws-07".into(),
            labels: Labels::parse_pairs(["site=er"]).unwrap(),
            ..HostFacts::default()
        },
    );
    assert_eq!(fleet.hostname_of(&id).as_deref(), Some("ws-07"));
    // What the agent says about itself is reported, never selected on.
    let now = fleet.record(&id).unwrap().labels();
    assert_eq!(now.get("site"), Some("icu"));
    assert_eq!(
        fleet.record(&id).unwrap().reported_labels().get("site"),
        Some("er")
    );
    assert_eq!(*member(&fleet).labels, now);
    assert_eq!(*fleet.get(&id).unwrap().labels, now);
    assert_eq!(fleet.labels_of(&id).as_deref(), Some(&now));
    assert_eq!(fleet.hostname_of(&"zz".parse().unwrap()), None);
    assert_eq!(
        fleet
            .list(&Labels::parse_pairs(["site=icu"]).unwrap())
            .len(),
        1,
        "a Hello moves the agent neither into nor out of a selector"
    );
}

#[test]
fn a_session_held_elsewhere_shows_there_while_that_controller_lives() {
    let fleet = Fleet::new(vec![record("a", "")], Duration::from_secs(60));
    fleet.set_name("replica-a".into());
    let id: AgentId = "a".parse().unwrap();
    let mut ticket = fleet.begin_session(&id, peer()).unwrap();
    let view = fleet.get(&id).unwrap();
    assert_eq!(view.controller.as_deref(), Some("replica-a"));
    let ours = fleet.record(&id).unwrap().session.unwrap();
    assert_eq!((ours.controller.as_str(), ours.ended), ("replica-a", None));
    // A later session at B: ours is stale and closed.
    let mut stored = fleet.record(&id).unwrap();
    stored.session = Some(SessionRecord {
        controller: "replica-b".into(),
        since: UnixMs(ours.since.0 + 1),
        ended: None,
    });
    assert!(!fleet.merge_stored(stored.clone()), "no relabelling");
    assert!(matches!(
        ticket.closed.try_recv(),
        Ok(CloseReason::Superseded)
    ));
    // Online at B while B lives; offline once it is gone.
    fleet.set_live_controllers(["replica-b".to_owned()].into());
    let view = fleet.get(&id).unwrap();
    assert_eq!(view.state, AgentState::Online);
    assert_eq!(view.controller.as_deref(), Some("replica-b"));
    fleet.set_live_controllers(HashSet::new());
    let view = fleet.get(&id).unwrap();
    assert_eq!((view.state, view.controller), (AgentState::Offline, None));
    // Its end, written by B, is taken in; an older session is not.
    fleet.set_live_controllers(["replica-b".to_owned()].into());
    stored.session.as_mut().unwrap().ended = Some(UnixMs(ours.since.0 + 5));
    fleet.merge_stored(stored.clone());
    assert_eq!(fleet.get(&id).unwrap().state, AgentState::Offline);
    let mut older = stored.clone();
    older.session = Some(SessionRecord {
        controller: "replica-c".into(),
        since: UnixMs(ours.since.0 - 10),
        ended: None,
    });
    fleet.merge_stored(older);
    assert_eq!(
        fleet.record(&id).unwrap().session,
        stored.session,
        "an older session record is ignored"
    );
}

#[test]
fn records_another_controller_stored_are_taken_in_and_a_revocation_closes_the_session() {
    use ruse_pki::Denylist;
    let fleet = Fleet::new(vec![record("a", "site=icu")], Duration::from_secs(60));
    let id: AgentId = "a".parse().unwrap();
    let mut ticket = fleet.begin_session(&id, peer()).unwrap();
    let mut stored = fleet.record(&id).unwrap();
    stored.last_seen = UnixMs(1);
    assert!(
        !fleet.merge_stored(stored.clone()),
        "nothing an admin sets changed"
    );
    stored.admin_labels = Labels::parse_pairs(["ward=3"]).unwrap();
    assert!(fleet.merge_stored(stored.clone()));
    assert_eq!(fleet.labels_of(&id).unwrap().get("ward"), Some("3"));
    assert!(ticket.closed.try_recv().is_err(), "still connected");
    stored.revoked = Some(Revocation {
        at: UnixMs(5),
        by: "admin/root".into(),
        reason: "laptop stolen".into(),
    });
    assert!(fleet.merge_stored(stored.clone()));
    assert!(matches!(ticket.closed.try_recv(), Ok(CloseReason::Revoked)));
    assert!(fleet.is_denied(&Identity::Agent(id.clone())));
    // An older copy does not undo it.
    stored.revoked = None;
    assert!(!fleet.merge_stored(stored));
    assert!(fleet.is_denied(&Identity::Agent(id)));
    // An agent enrolled elsewhere is added.
    assert!(fleet.merge_stored(record("b", "")));
    assert_eq!(fleet.len(), 2);
}

#[test]
fn dirty_records_are_batched_and_heartbeats_do_not_rewrite_every_time() {
    let fleet = Fleet::new(vec![record("a", "")], Duration::from_secs(60));
    let id: AgentId = "a".parse().unwrap();
    let ticket = fleet.begin_session(&id, peer()).unwrap();
    assert_eq!(fleet.take_dirty().len(), 1);
    fleet.heartbeat(&id, ticket.id, Health::default());
    assert!(fleet.take_dirty().is_empty());
    fleet.end_session(&id, ticket.id);
    let dirty = fleet.take_dirty();
    assert_eq!(dirty.len(), 1);
    fleet.restore_dirty(&dirty);
    assert_eq!(fleet.take_dirty().len(), 1);
}

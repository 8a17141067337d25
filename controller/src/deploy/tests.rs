use super::plan::{AGENTS_PER_LOCK, REGISTRY_CHUNK};
use super::rollout::{Verdict, verdict, wave_size};
use super::*;
use crate::model::{Material, RolloutState};

use crate::fleet::tests_support::record as agent_record;
use crate::model::AgentRecord;
use crate::store::SledStore;

/// A deployer over `store` for a fleet of `agents`, with its committer.
fn deployer(store: &Arc<SledStore>, agents: Vec<AgentRecord>) -> Deployer {
    let (committer, _task) = Committer::spawn(store.clone());
    let fleet = Arc::new(Fleet::new(agents, Duration::from_secs(60)));
    Deployer::load(
        store.clone(),
        committer,
        fleet,
        4 << 20,
        Duration::from_secs(86_400),
    )
    .unwrap()
}

#[tokio::test]
async fn instances_a_failed_write_left_unpushed_are_written_and_pushed_by_the_next_pass() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SledStore::open(dir.path(), 1 << 20).unwrap());
    let d = deployer(&store, vec![agent_record("a1", "site=icu")]);
    let a1: AgentId = "a1".parse().unwrap();
    let notify = Arc::new(Notify::new());
    d.session_started(&a1, notify.clone());
    d.prepare().await.unwrap();
    d.hello(&a1, Default::default());
    let docs = crate::resources::parse(
        "kind: Campaign\nname: c1\nselector: {site: icu}\nlures: [{template: pgpass}, {template: netrc}]\n",
    )
    .unwrap();
    d.apply(&docs, false).await.unwrap();

    // The pass computes two instances but cannot write them.
    store.fail_lure_writes.store(1, Ordering::Release);
    assert!(d.recompute().await.is_err());
    let computed: HashSet<Arc<str>> = d.lock().undurable.clone();
    assert_eq!(computed.len(), 2);
    assert!(store.lures().unwrap().is_empty());
    if let Some(update) = d.next_update(&a1) {
        assert!(
            update
                .resources
                .iter()
                .all(|r| !computed.contains(r.id.as_str())),
            "nothing undurable is pushed"
        );
        d.acked(&a1, update.nonce);
    }

    // The next pass has nothing new to compute, writes them anyway and
    // wakes the agent, which now gets them. (A wake-up stored earlier,
    // by the Hello, is used up first.)
    let _ = tokio::time::timeout(Duration::from_millis(50), notify.notified()).await;
    let woken = notify.notified();
    d.recompute().await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), woken)
        .await
        .expect("agent woken once its instances are durable");
    assert!(d.lock().undurable.is_empty());
    let stored: HashSet<Arc<str>> = store.lures().unwrap().into_iter().map(|l| l.id).collect();
    assert_eq!(stored, computed);
    let update = d.next_update(&a1).expect("the lures");
    let pushed: HashSet<Arc<str>> = update
        .resources
        .iter()
        .map(|r| Arc::from(r.id.as_str()))
        .collect();
    assert!(pushed.is_superset(&computed), "{pushed:?}");
}

#[tokio::test]
async fn a_retired_instance_stays_attributable_until_its_record_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SledStore::open(dir.path(), 1 << 20).unwrap());
    let d = deployer(&store, vec![agent_record("a1", "site=icu")]);
    d.prepare().await.unwrap();
    let docs = crate::resources::parse(
        "kind: Campaign\nname: c1\nselector: {site: icu}\nlures: [{template: pgpass}]\n",
    )
    .unwrap();
    d.apply(&docs, false).await.unwrap();
    d.recompute().await.unwrap();
    let created = store.lures().unwrap();
    assert_eq!(created.len(), 1);
    let id = created[0].id.clone();
    assert!(created[0].retired.is_none());
    assert!(
        store.lure(&id).unwrap().is_none(),
        "new instances are in a batch"
    );

    // Deleted; the pass retires the instance but cannot write that.
    d.delete_campaign("c1").await.unwrap();
    store.fail_lure_writes.store(1, Ordering::Release);
    assert!(d.recompute().await.is_err());
    let owner = d.lure_owner(&id).unwrap().expect("still found by id");
    assert!(owner.retired.is_some());
    assert!(d.lock().registry.active.is_empty());

    // The next pass writes the retirement: found in the store, and the
    // registry holds the instance once, retired.
    d.recompute().await.unwrap();
    assert!(d.lock().retiring.is_empty());
    assert!(store.lure(&id).unwrap().unwrap().retired.is_some());
    assert!(
        store.lure_batches().is_empty(),
        "the batch holds nothing its retirement record does not"
    );
    let all = store.lures().unwrap();
    assert_eq!(all.len(), 1);
    assert!(all[0].retired.is_some());
    assert!(d.lure_owner(&id).unwrap().unwrap().retired.is_some());

    // And after a restart it is retired, not active again.
    drop(d);
    let d = deployer(&store, vec![agent_record("a1", "site=icu")]);
    assert!(d.lock().registry.active.is_empty());
    assert!(d.lure_owner(&id).unwrap().unwrap().retired.is_some());
}

#[tokio::test]
async fn a_start_deletes_batches_a_crash_left_after_their_retirements_were_written() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SledStore::open(dir.path(), 1 << 20).unwrap());
    let instance = |id: &str, retired: Option<UnixMs>| LureInstance {
        id: id.into(),
        agent: "a1".parse().unwrap(),
        campaign: "c1".into(),
        slot: "pgpass".into(),
        template: Template::Pgpass,
        epoch: 0,
        material: Material::default(),
        created: UnixMs(1),
        retired,
    };
    // What a pass leaves if the controller stops between writing its
    // retirements and deleting the batch they supersede.
    store
        .put_new_lures(&[Arc::new(instance("l1", None))])
        .unwrap();
    store.put_lures(&[instance("l1", Some(UnixMs(2)))]).unwrap();
    assert_eq!(store.lure_batches().len(), 1);

    let d = deployer(&store, vec![agent_record("a1", "site=icu")]);
    assert!(store.lure_batches().is_empty());
    assert!(d.lock().registry.active.is_empty());
    let owner = d.lure_owner("l1").unwrap().expect("still attributable");
    assert_eq!(owner.retired, Some(UnixMs(2)));
}

/// Open sessions (said Hello) for `ids`, with the notifies they wait on.
fn sessions(d: &Deployer, ids: &[&AgentId]) -> Vec<Arc<Notify>> {
    ids.iter()
        .map(|id| {
            let notify = Arc::new(Notify::new());
            d.session_started(id, notify.clone());
            d.hello(id, Default::default());
            notify
        })
        .collect()
}

/// Runs a pass and asserts that it wakes every one of `notified`.
async fn pass_wakes(d: &Deployer, notified: &[Arc<Notify>]) {
    for notify in notified {
        // A wake-up stored by the Hello is used up first.
        let _ = tokio::time::timeout(Duration::from_millis(50), notify.notified()).await;
    }
    let woken: Vec<_> = notified.iter().map(|n| n.notified()).collect();
    d.recompute().await.unwrap();
    for w in woken {
        tokio::time::timeout(Duration::from_secs(5), w)
            .await
            .expect("every agent woken");
    }
}

#[tokio::test]
async fn a_change_with_nothing_to_write_wakes_every_agent_it_changes() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SledStore::open(dir.path(), 1 << 20).unwrap());
    // More agents than one hold of the state lock computes.
    let n = 2 * AGENTS_PER_LOCK + 7;
    let records = (0..n)
        .map(|i| agent_record(&format!("a{i:05}"), "site=icu"))
        .collect();
    let d = deployer(&store, records);
    d.prepare().await.unwrap();
    let ids: Vec<AgentId> = [0, AGENTS_PER_LOCK + 1, n - 1]
        .iter()
        .map(|i| format!("a{i:05}").parse().unwrap())
        .collect();
    let notified = sessions(&d, &ids.iter().collect::<Vec<_>>());
    let docs = crate::resources::parse(
        "kind: Decoy\nname: d\nselector: {site: icu}\nservices: [{protocol: ssh, port: 2222}]\n",
    )
    .unwrap();
    d.apply(&docs, false).await.unwrap();
    pass_wakes(&d, &notified).await;
    assert!(store.lure_batches().is_empty());
    for id in &ids {
        let update = d.next_update(id).expect("the decoy");
        assert_eq!(update.resources.len(), 1);
        assert_eq!(update.resources[0].id, decoy_resource_id("d"));
    }
}

#[tokio::test]
async fn a_fleet_wide_pass_writes_whole_agents_per_record_and_wakes_each_agent() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SledStore::open(dir.path(), 1 << 20).unwrap());
    // Enough instances for three records.
    let n = 2 * REGISTRY_CHUNK / 5 + 7;
    let records = (0..n)
        .map(|i| agent_record(&format!("a{i:05}"), "site=icu"))
        .collect();
    let d = deployer(&store, records);
    d.prepare().await.unwrap();
    let (first, last): (AgentId, AgentId) = (
        "a00000".parse().unwrap(),
        format!("a{:05}", n - 1).parse().unwrap(),
    );
    let notified = sessions(&d, &[&first, &last]);
    let lures: Vec<String> = (0..5)
        .map(|i| format!("{{template: pgpass, name: p{i}}}"))
        .collect();
    let docs = crate::resources::parse(&format!(
        "kind: Campaign\nname: c1\nselector: {{site: icu}}\nlures: [{}]\n",
        lures.join(", ")
    ))
    .unwrap();
    d.apply(&docs, false).await.unwrap();
    pass_wakes(&d, &notified).await;

    let batches = store.lure_batches();
    assert_eq!(
        batches.len(),
        3,
        "{:?}",
        batches.iter().map(Vec::len).collect::<Vec<_>>()
    );
    let mut seen: HashMap<AgentId, usize> = HashMap::default();
    let mut batch_of: HashMap<AgentId, usize> = HashMap::default();
    for (i, batch) in batches.iter().enumerate() {
        for lure in batch {
            *seen.entry(lure.agent.clone()).or_default() += 1;
            assert_eq!(
                *batch_of.entry(lure.agent.clone()).or_insert(i),
                i,
                "{} split",
                lure.agent
            );
        }
    }
    assert_eq!(seen.len(), n);
    assert!(seen.values().all(|c| *c == 5));
    assert!(d.lock().undurable.is_empty());
    for id in [&first, &last] {
        assert_eq!(d.next_update(id).expect("its lures").resources.len(), 5);
    }
}

#[test]
fn waves_cover_cumulative_shares_rounding_up() {
    let waves = [10, 50, 100];
    assert_eq!(wave_size(&waves, 0, 20), 2);
    assert_eq!(wave_size(&waves, 1, 20), 10);
    assert_eq!(wave_size(&waves, 2, 20), 20);
    assert_eq!(
        wave_size(&[5, 100], 0, 3),
        1,
        "a wave is never empty when agents match"
    );
    assert_eq!(wave_size(&[5, 100], 0, 0), 0);
}

fn wave(agents: usize, acked: usize, failed: usize, pending: usize, offline: usize) -> WaveStatus {
    WaveStatus {
        percent: 50,
        agents,
        acked,
        failed,
        pending,
        offline,
        unreachable: 0,
        released: true,
        errors: Vec::new(),
    }
}

#[test]
fn verdicts() {
    use Verdict::*;
    let cases = [
        // 1 failure of 2 answers, 6 pending: could still end at 1/8.
        (wave(8, 1, 1, 6, 0), 0.2, Wait),
        // 3 failures of 8 exceed 20% whatever happens.
        (wave(8, 3, 3, 2, 0), 0.2, Pause { ratio: 0.5 }),
        (wave(8, 7, 1, 0, 0), 0.2, Advance),
        (wave(8, 6, 2, 0, 0), 0.2, Pause { ratio: 0.25 }),
        (wave(4, 0, 0, 4, 0), 0.2, Wait),
        // Offline agents do not block, but someone must answer.
        (wave(4, 2, 0, 0, 2), 0.2, Advance),
        (wave(4, 0, 0, 0, 4), 0.2, Wait),
        (wave(0, 0, 0, 0, 0), 0.2, Advance),
        // A ratio of 0 pauses at the first failure.
        (wave(10, 0, 1, 9, 0), 0.0, Pause { ratio: 1.0 }),
    ];
    for (w, allowed, expected) in cases {
        assert_eq!(verdict(&w, allowed), expected, "{w:?} allowed {allowed}");
    }
}

#[test]
fn rollout_order_is_stable_and_per_campaign() {
    let ids: Vec<AgentId> = (0..50)
        .map(|i| format!("agent{i}").parse().unwrap())
        .collect();
    let a = rollout_order("icu", &ids);
    let b = rollout_order("icu", ids.iter().rev());
    assert_eq!(a, b, "independent of input order");
    let c = rollout_order("er", &ids);
    assert_ne!(a, c, "each campaign samples the fleet differently");
    assert_eq!(a.len(), 50);
}

#[test]
fn cached_orders_are_reused_only_for_the_same_agents() {
    let ids: Vec<AgentId> = (0..50)
        .map(|i| format!("agent{i}").parse().unwrap())
        .collect();
    let all: Vec<&AgentId> = ids.iter().collect();
    let cache = OrderCache::default();
    let first = cache.order("icu", &all);
    let expected: Vec<AgentId> = rollout_order("icu", &ids).into_iter().cloned().collect();
    assert_eq!(*first, expected);
    assert!(Arc::ptr_eq(&first, &cache.order("icu", &all)), "reused");
    // One agent fewer: ordered again.
    let fewer = cache.order("icu", &all[1..]);
    assert_eq!(fewer.len(), 49);
    assert!(!fewer.contains(&ids[0]));
    // Per campaign, and forgotten with it.
    assert_ne!(*cache.order("er", &all), expected);
    cache.retain(&BTreeMap::new());
    assert!(cache.lock().is_empty());
}

#[test]
fn rotation_is_due_only_after_the_interval_and_a_completed_rollout() {
    let spec = Campaign {
        name: "c".into(),
        description: String::new(),
        selector: Default::default(),
        lures: Vec::new(),
        waves: vec![100],
        max_failure_ratio: 0.1,
        rotate_every: Some(Duration::from_secs(3600)),
    };
    let mut record = CampaignRecord {
        target: Generation {
            number: 1,
            spec,
            epoch: 0,
            slots: BTreeMap::new(),
        },
        stable: None,
        rollout: RolloutState::Completed,
        wave: 0,
        created: UnixMs(0),
        updated: UnixMs(0),
        last_rotated: UnixMs(0),
    };
    assert!(!rotation_due(&record, UnixMs(3_599_999)));
    assert!(rotation_due(&record, UnixMs(3_600_000)));
    record.rollout = RolloutState::Progressing;
    assert!(!rotation_due(&record, UnixMs(7_200_000)));
}

#[tokio::test]
async fn each_agent_gets_the_lures_of_its_platform_at_its_platform_paths() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SledStore::open(dir.path(), 1 << 20).unwrap());
    let mut windows = agent_record("win1", "site=icu");
    windows.facts.platform = ruse_proto::convert::Platform::Windows;
    let d = deployer(&store, vec![agent_record("lin1", "site=icu"), windows]);
    let (lin, win): (AgentId, AgentId) = ("lin1".parse().unwrap(), "win1".parse().unwrap());
    sessions(&d, &[&lin, &win]);
    d.prepare().await.unwrap();
    d.hello(&lin, Default::default());
    d.hello(&win, Default::default());
    let docs = crate::resources::parse(
        "kind: Decoy\nname: arc\nselector: {role: none}\naddress: 10.0.0.9\nservices: [{protocol: ssh, port: 22}]\n---\nkind: Campaign\nname: c1\nselector: {site: icu}\nlures: [{template: pgpass}, {template: putty-session, decoy: arc}]\n",
    )
    .unwrap();
    d.apply(&docs, false).await.unwrap();
    d.recompute().await.unwrap();
    let specs = |id: &AgentId| -> Vec<ruse_proto::spec::LureSpec> {
        d.next_update(id)
            .expect("an update")
            .resources
            .iter()
            .filter(|r| r.kind == "lure")
            .map(|r| ruse_proto::spec::LureSpec::decode(&r.body).unwrap())
            .collect()
    };
    let on_linux = specs(&lin);
    assert_eq!(on_linux.len(), 1, "the Windows-only template is left out");
    assert_eq!(on_linux[0].files[0].path, "~/.pgpass");
    let mut on_windows = specs(&win);
    on_windows.sort_by(|a, b| a.template.cmp(&b.template));
    assert_eq!(on_windows.len(), 2);
    assert_eq!(
        on_windows[0].files[0].path,
        "~/AppData/Roaming/postgresql/pgpass.conf"
    );
    assert_eq!(on_windows[1].template, "putty-session");
    assert!(on_windows[1].keys[0].path.ends_with("/Sessions/arc"));
}

//! Criterion benches for the controller's hot paths: protobuf encode and
//! decode of what crosses the wire most (updates, event batches),
//! correlation of one event, storing events with group commit against
//! one flush per event, writing one registry chunk of a fleet-wide
//! campaign (5,000 new lure instances as one record), and the web
//! console's incident queue with 10,000 open incidents.
//!
//! `cargo bench -p ruse-controller --bench hot_paths`

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::Arc;
use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use prost::Message;

use ruse_controller::incidents::{Correlator, Directory};
use ruse_controller::lures::{Material, Template};
use ruse_controller::model::LureInstance;
use ruse_controller::model::StoredEvent;
use ruse_controller::store::{Committer, SledStore, Store};
use ruse_proto::agent::v1 as pb;
use ruse_proto::convert::EventProcess;
use ruse_proto::types::{AgentId, Labels, UnixMs, new_ulid};

fn update(resources: usize, body: usize) -> pb::Update {
    pb::Update {
        nonce: 7,
        resources: (0..resources)
            .map(|i| pb::Resource {
                id: format!("01lure{i:020}"),
                revision: 42,
                kind: "lure".into(),
                body: vec![b'x'; body],
            })
            .collect(),
        removed: vec!["01lureold".into()],
    }
}

fn event_batch(n: usize) -> pb::EventBatch {
    pb::EventBatch {
        events: (0..n)
            .map(|i| pb::Event {
                id: new_ulid(),
                seq: i as u64 + 1,
                lure_id: format!("01lure{:020}", i % 10),
                lure_revision: 3,
                kind: "touch".into(),
                observed_ms: 1_790_000_000_000 + i as i64,
                path: "/home/nurse/Documents/Exports/patients_ICU_2026-05-26.csv".into(),
                process: Some(pb::Process {
                    pid: 4242,
                    exe: "/usr/bin/cat".into(),
                    uid: 1000,
                    user: "nurse".into(),
                    cmdline: "cat patients_ICU_2026-05-26.csv".into(),
                }),
                operations: vec!["open".into(), "read".into(), "close".into()],
                attribution: "fanotify".into(),
                template: "patient-csv".into(),
                ..Default::default()
            })
            .collect(),
    }
}

fn proto(c: &mut Criterion) {
    let mut group = c.benchmark_group("proto");
    let u = update(10, 1024);
    let bytes = u.encode_to_vec();
    group.throughput(Throughput::Bytes(bytes.len() as u64));
    group.bench_function("update_10x1KiB_encode", |b| b.iter(|| u.encode_to_vec()));
    group.bench_function("update_10x1KiB_decode", |b| {
        b.iter(|| pb::Update::decode(bytes.as_slice()).unwrap())
    });
    let batch = event_batch(100);
    let bytes = batch.encode_to_vec();
    group.throughput(Throughput::Elements(100));
    group.bench_function("event_batch_100_encode", |b| {
        b.iter(|| batch.encode_to_vec())
    });
    group.bench_function("event_batch_100_decode", |b| {
        b.iter(|| pb::EventBatch::decode(bytes.as_slice()).unwrap())
    });
    group.finish();
}

struct Dir;

impl Directory for Dir {
    fn hostname(&self, agent: &AgentId) -> String {
        format!("ws-{}", &agent.as_str()[..6])
    }
    fn labels(&self, _: &AgentId) -> Labels {
        Labels::new()
    }
}

fn stored(agent: &AgentId, lure: usize, at: i64) -> StoredEvent {
    StoredEvent {
        id: new_ulid(),
        agent: agent.clone(),
        seq: 1,
        lure_id: format!("lure-{lure}"),
        lure_revision: 1,
        template: "patient-csv".into(),
        campaign: "icu".into(),
        kind: "touch".into(),
        path: "/home/nurse/Documents/Exports/patients.csv".into(),
        process: Some(EventProcess {
            pid: 4242,
            exe: "/usr/bin/cat".into(),
            uid: 1000,
            user: "nurse".into(),
            cmdline: "cat patients.csv".into(),
        }),
        operations: vec!["open".into(), "read".into()],
        attribution: "fanotify".into(),
        allowed: false,
        allow_rule: String::new(),
        dropped_before: 0,
        detail: String::new(),
        observed: UnixMs(at),
        received: UnixMs(at),
        peer: "10.0.0.9:40000".into(),
        decoy: None,
        credential: None,
        origin_agent: None,
        matched_on: String::new(),
        drill: false,
        cursor: 0,
        reported_observed: None,
    }
}

fn correlation(c: &mut Criterion) {
    let mut group = c.benchmark_group("correlate");
    group.throughput(Throughput::Elements(1));
    // 1,000 agents, each with its own open incident: the steady state of a
    // busy installation. Each event updates one of them.
    let agents: Vec<AgentId> = (0..1000).map(|_| AgentId::generate()).collect();
    let mut correlator = Correlator::new(Duration::from_secs(3600), Vec::new());
    let mut at = 1_790_000_000_000i64;
    for (i, a) in agents.iter().enumerate() {
        at += 1;
        correlator.correlate(&stored(a, i, at), None, &[], &Dir, UnixMs(at));
    }
    let mut i = 0usize;
    group.bench_function("touch_event_1000_open_incidents", |b| {
        b.iter(|| {
            i += 1;
            at += 1;
            let e = stored(&agents[i % agents.len()], i % 10, at);
            correlator.correlate(&e, None, &[], &Dir, UnixMs(at))
        })
    });
    group.finish();
}

/// A two-thread runtime and a sled store in a fresh directory (kept while
/// the directory lives).
fn runtime_and_store() -> (tokio::runtime::Runtime, tempfile::TempDir, Arc<dyn Store>) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(SledStore::open(dir.path(), 64 << 20).unwrap());
    (rt, dir, store)
}

fn store(c: &mut Criterion) {
    let mut group = c.benchmark_group("store");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(5));
    let (rt, _dir, store) = runtime_and_store();
    let agent = AgentId::generate();
    const WRITERS: usize = 64;
    const PER_WRITER: usize = 16;
    group.throughput(Throughput::Elements((WRITERS * PER_WRITER) as u64));
    // 64 sessions each storing 16 events, each event durable before its
    // (simulated) ack: group commit shares flushes between them.
    group.bench_function("group_commit_64_writers", |b| {
        b.iter_batched(
            || (),
            |()| {
                rt.block_on(async {
                    let (committer, _task) = Committer::spawn(store.clone());
                    let mut tasks = Vec::new();
                    for w in 0..WRITERS {
                        let (store, committer, agent) =
                            (store.clone(), committer.clone(), agent.clone());
                        tasks.push(tokio::spawn(async move {
                            for i in 0..PER_WRITER {
                                let mut e = stored(&agent, w, i as i64);
                                e.cursor = store.reserve_event_cursors(1).unwrap();
                                store.insert_events(std::slice::from_ref(&e)).unwrap();
                                committer.durable().await.unwrap();
                            }
                        }));
                    }
                    for t in tasks {
                        t.await.unwrap();
                    }
                })
            },
            BatchSize::PerIteration,
        )
    });
    group.throughput(Throughput::Elements(64));
    group.bench_function("flush_each_event", |b| {
        b.iter(|| {
            for i in 0..64 {
                let mut e = stored(&agent, i, i as i64);
                e.cursor = store.reserve_event_cursors(1).unwrap();
                store.insert_events(std::slice::from_ref(&e)).unwrap();
                store.flush().unwrap();
            }
        })
    });
    // The deployer's registry chunk: 500 agents' 10 new instances each.
    let chunk: Vec<Arc<LureInstance>> = (0..5_000)
        .map(|i| {
            Arc::new(LureInstance {
                id: new_ulid().into(),
                agent: agent.clone(),
                campaign: "icu".into(),
                slot: format!("pg-{}", i % 10),
                template: Template::Pgpass,
                epoch: 1,
                material: Material::generate(Template::Pgpass).unwrap(),
                created: UnixMs(1_790_000_000_000),
                retired: None,
            })
        })
        .collect();
    group.throughput(Throughput::Elements(chunk.len() as u64));
    group.bench_function("lure_chunk_5000_put", |b| {
        b.iter(|| store.put_new_lures(&chunk).unwrap())
    });
    group.finish();
}

/// The console's incident queue with 10,000 open incidents (one per
/// agent): what the server does for `GET /incidents` — pick the 1,000 most
/// recent, render the page — without TLS and HTTP.
fn console(c: &mut Criterion) {
    use ruse_controller::console::pages::{QueueFilters, Viewer, queue};
    use ruse_controller::incidents::{IncidentFilter, Incidents};
    let mut group = c.benchmark_group("console");
    group.sample_size(20);
    let (rt, _dir, store) = runtime_and_store();
    let incidents = rt.block_on(async {
        let (committer, _task) = Committer::spawn(store.clone());
        let incidents =
            Incidents::load(store.clone(), committer, Duration::from_secs(3600)).unwrap();
        let now = UnixMs::now().0;
        let events: Vec<(StoredEvent, Option<String>)> = (0..10_000)
            .map(|i| {
                (
                    stored(&AgentId::generate(), i, now - 10_000 + i as i64),
                    None,
                )
            })
            .collect();
        for chunk in events.chunks(500) {
            incidents.correlate(chunk, &[], &Dir).unwrap();
        }
        incidents
    });
    let filter = IncidentFilter {
        unresolved: true,
        ..IncidentFilter::default()
    };
    assert_eq!(incidents.list(&filter, usize::MAX).len(), 10_000);
    let viewer = Viewer {
        admin: "alice",
        role: ruse_proto::types::Role::Operator,
        csrf: "token",
    };
    group.bench_function("queue_page_10000_open_incidents", |b| {
        b.iter(|| {
            let shown = incidents.list(&filter, 1000);
            let filters = QueueFilters {
                status: "unresolved",
                severity: "",
                agent: "",
            };
            queue(&shown, &filters, &viewer).len()
        })
    });
    group.finish();
}

criterion_group!(benches, proto, correlation, store, console);
criterion_main!(benches);

//! The simulated fleet: each agent's enrollment and its life as a task
//! (sessions, acks, event batches), and how the coordinator hears of it.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::bail;
use rustls::ClientConfig;
use rustls::pki_types::CertificateDer;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use ruse_pki::{CaPin, PrivateKey};
use ruse_proto::admin::v1 as admin_pb;
use ruse_proto::admin::v1::admin_service_client::AdminServiceClient;
use ruse_proto::agent::v1 as pb;
use ruse_proto::agent::v1::agent_service_client::AgentServiceClient;
use ruse_proto::transport::{self, ControllerUrl, DialOptions};
use ruse_proto::types::{UnixMs, new_ulid, random_bytes};

/// What an agent task tells the coordinator.
#[derive(Debug)]
pub enum Report {
    Connected,
    /// A session ended without being told to (the controller went away).
    Lost,
    /// An update was acked; `lures` is how many lure resources it now has.
    Updated {
        lures: usize,
    },
    /// A batch's durable ack arrived `latency` after it was first sent.
    Acked {
        events: usize,
        latency: Duration,
    },
    Failed(String),
}

/// What the coordinator tells an agent task.
#[derive(Debug)]
pub enum Command {
    SendEvents(usize),
    Disconnect,
    Reconnect,
}

pub struct SimAgent {
    index: usize,
    tls: Arc<ClientConfig>,
}

pub struct Fleet {
    pub commands: Vec<mpsc::Sender<Command>>,
    pub reports: mpsc::UnboundedReceiver<(usize, Instant, Report)>,
    pub connected: Arc<AtomicUsize>,
    /// Enrollment attempts that failed and were retried.
    pub enroll_retries: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    stop: watch::Sender<bool>,
}

impl Fleet {
    /// Spawns `n` agents: each enrolls with `token` at its first controller
    /// (at most `concurrency` enrollments at a time), then lives as
    /// [`agent_task`].
    pub fn start(
        n: usize,
        urls: Arc<[ControllerUrl]>,
        pin: CaPin,
        token: &str,
        run: &str,
        sources: u8,
        concurrency: usize,
    ) -> Fleet {
        let gate = Arc::new(Semaphore::new(concurrency.max(1)));
        let (report_tx, reports) = mpsc::unbounded_channel();
        let connected = Arc::new(AtomicUsize::new(0));
        let (stop, stop_rx) = watch::channel(false);
        let enroll_retries = Arc::new(AtomicU64::new(0));
        let mut commands = Vec::with_capacity(n);
        let mut tasks = Vec::with_capacity(n);
        for index in 0..n {
            let (ctx, crx) = mpsc::channel(8);
            commands.push(ctx);
            let gate = gate.clone();
            let token = token.to_owned();
            let link = Link {
                urls: urls.clone(),
                run: run.to_owned(),
                sources,
                reports: report_tx.clone(),
                connected: connected.clone(),
                stop: stop_rx.clone(),
            };
            let retries = enroll_retries.clone();
            tasks.push(tokio::spawn(async move {
                let url = &link.urls[index % link.urls.len()];
                let agent = {
                    let _permit = gate.acquire().await;
                    let mut attempt = 0;
                    loop {
                        match enroll(index, url, pin, &token, &link.run, link.sources).await {
                            Ok(a) => break a,
                            Err(e) if attempt < 5 => {
                                attempt += 1;
                                retries.fetch_add(1, Ordering::Relaxed);
                                if attempt == 1 {
                                    eprintln!("agent {index}: enroll: {e:#}; retrying");
                                }
                                tokio::time::sleep(Duration::from_millis(100 * attempt)).await;
                            }
                            Err(e) => {
                                let _ = link.reports.send((
                                    index,
                                    Instant::now(),
                                    Report::Failed(format!("enroll: {e:#}")),
                                ));
                                return;
                            }
                        }
                    }
                };
                agent_task(agent, link, crx).await;
            }));
        }
        Fleet {
            commands,
            reports,
            connected,
            enroll_retries,
            tasks,
            stop,
        }
    }

    /// Ends every agent's session and task.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
    }
}

/// Where agent (or flood worker) `index` connects from: one of `sources`
/// addresses 127.0.1.x.
pub fn dial(index: usize, sources: u8) -> DialOptions {
    let host = 1 + (index % usize::from(sources.max(1))) as u8;
    DialOptions {
        local_addr: Some(IpAddr::V4(Ipv4Addr::new(127, 0, 1, host))),
        // Idle fleets should cost what real idle agents cost.
        keepalive_interval: Duration::from_secs(60),
        ..DialOptions::default()
    }
}

/// One agent's enrollment: its own key, the token, its certificate.
async fn enroll(
    index: usize,
    url: &ControllerUrl,
    pin: CaPin,
    token: &str,
    run: &str,
    sources: u8,
) -> anyhow::Result<SimAgent> {
    let key = PrivateKey::generate()?;
    let tls = ruse_pki::pinned_client_config(pin)?;
    let channel = transport::connect(url, tls, &dial(index, sources)).await?;
    let response = AgentServiceClient::new(channel)
        .enroll(pb::EnrollRequest {
            token: token.to_owned(),
            csr_der: key.csr_der()?,
            facts: Some(facts(index, run)),
        })
        .await?
        .into_inner();
    let bundle: Vec<CertificateDer<'static>> = response
        .trust_bundle_der
        .into_iter()
        .map(CertificateDer::from)
        .collect();
    let tls = ruse_pki::client_config(
        &bundle,
        vec![CertificateDer::from(response.certificate_der)],
        key.to_der(),
    )?;
    Ok(SimAgent { index, tls })
}

/// Simulated agent `index`'s host: `sim-<run>-<index>`.
fn facts(index: usize, run: &str) -> pb::HostFacts {
    pb::HostFacts {
        hostname: format!("sim-{run}-{index}"),
        os: "ruse-sim".into(),
        kernel: "0".into(),
        arch: std::env::consts::ARCH.into(),
        addresses: vec![],
        agent_version: env!("CARGO_PKG_VERSION").into(),
        labels: HashMap::new(),
        platform: "linux".into(),
    }
}

fn hello(index: usize, run: &str, applied: &HashMap<String, u64>) -> pb::AgentMessage {
    pb::AgentMessage {
        msg: Some(pb::agent_message::Msg::Hello(pb::Hello {
            agent_version: env!("CARGO_PKG_VERSION").into(),
            capabilities: vec![],
            facts: Some(facts(index, run)),
            applied: applied.clone(),
        })),
    }
}

/// What every agent task shares with the coordinator.
#[derive(Clone)]
pub struct Link {
    /// The controllers: agent `i` dials `urls[i % n]` first and the next
    /// one after every failure or lost session, as a real agent given
    /// several controller URLs does.
    pub urls: Arc<[ControllerUrl]>,
    pub run: String,
    pub sources: u8,
    pub reports: mpsc::UnboundedSender<(usize, Instant, Report)>,
    pub connected: Arc<AtomicUsize>,
    pub stop: watch::Receiver<bool>,
}

/// The real agent's reconnect backoff (`agent/src/lib.rs`, its default
/// `min_backoff`/`max_backoff`): each wait is between half and all of a
/// step that doubles from 500 ms to 60 s, back to 500 ms after a session
/// that lasted over 30 s.
struct Backoff {
    step: Duration,
}

impl Backoff {
    const MIN: Duration = Duration::from_millis(500);
    const MAX: Duration = Duration::from_secs(60);

    fn next(&mut self) -> Duration {
        let step = self.step;
        self.step = (self.step * 2).min(Self::MAX);
        let mut bytes = [0u8; 8];
        random_bytes(&mut bytes);
        let fraction = (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64;
        step.mul_f64(0.5 + 0.5 * fraction)
    }
}

/// An event batch sent and not yet acknowledged: sent again, as it is, in
/// the next session (a real agent's outbox does the same), so a controller
/// dying before its ack loses nothing and the ids keep it from counting
/// twice.
struct InFlight {
    through_seq: u64,
    events: Vec<pb::Event>,
    first_sent: Instant,
}

impl InFlight {
    fn message(&self) -> pb::AgentMessage {
        pb::AgentMessage {
            msg: Some(pb::agent_message::Msg::Events(pb::EventBatch {
                events: self.events.clone(),
            })),
        }
    }
}

/// What one agent holds across sessions.
#[derive(Default)]
struct AgentState {
    applied: HashMap<String, u64>,
    lures: Vec<String>,
    seq: u64,
    next_lure: usize,
    in_flight: VecDeque<InFlight>,
}

impl AgentState {
    /// A batch of `n` touch events on the agent's lures, in turn.
    fn batch(&mut self, index: usize, n: usize) -> &InFlight {
        let mut events = Vec::with_capacity(n);
        for _ in 0..n {
            self.seq += 1;
            let lure = &self.lures[self.next_lure % self.lures.len()];
            self.next_lure += 1;
            events.push(pb::Event {
                id: new_ulid(),
                seq: self.seq,
                lure_id: lure.clone(),
                lure_revision: self.applied.get(lure).copied().unwrap_or(0),
                kind: "touch".into(),
                observed_ms: UnixMs::now().0,
                path: format!("/sim/{index}"),
                operations: vec!["open".into(), "read".into()],
                attribution: "sim".into(),
                ..Default::default()
            });
        }
        self.in_flight.push_back(InFlight {
            through_seq: self.seq,
            events,
            first_sent: Instant::now(),
        });
        self.in_flight.back().expect("just pushed")
    }
}

/// Connects to `url` and opens a session with a hello.
async fn open_session(
    agent: &SimAgent,
    url: &ControllerUrl,
    link: &Link,
    applied: &HashMap<String, u64>,
) -> Result<
    (
        mpsc::Sender<pb::AgentMessage>,
        tonic::Streaming<pb::ControllerMessage>,
    ),
    String,
> {
    let channel = transport::connect(url, agent.tls.clone(), &dial(agent.index, link.sources))
        .await
        .map_err(|e| format!("connect {url}: {e}"))?;
    let (tx, rx) = mpsc::channel(64);
    let _ = tx.send(hello(agent.index, &link.run, applied)).await;
    let inbound = AgentServiceClient::new(channel)
        .session(ReceiverStream::new(rx))
        .await
        .map_err(|e| format!("session at {url}: {e}"))?
        .into_inner();
    Ok((tx, inbound))
}

/// Why a session ended.
enum End {
    /// The controller went away or failed the stream: dial the next one.
    Lost,
    /// The controller is overloaded: dial the next one after this.
    RetryAfter(Duration),
    /// On command: wait for `Reconnect`.
    Disconnect,
    /// The run is over.
    Stop,
}

/// One simulated agent's life: sessions, acks, event batches.
pub async fn agent_task(agent: SimAgent, link: Link, mut commands: mpsc::Receiver<Command>) {
    let mut stop = link.stop.clone();
    let report = |r: Report| {
        let _ = link.reports.send((agent.index, Instant::now(), r));
    };
    let mut state = AgentState::default();
    let mut dialling = agent.index;
    let mut backoff = Backoff { step: Backoff::MIN };
    loop {
        let url = &link.urls[dialling % link.urls.len()];
        let (tx, inbound) = match open_session(&agent, url, &link, &state.applied).await {
            Ok(session) => session,
            Err(why) => {
                report(Report::Failed(why));
                dialling += 1;
                let wait = backoff.next();
                tokio::select! {
                    () = tokio::time::sleep(wait) => continue,
                    () = async { let _ = stop.wait_for(|s| *s).await; } => return,
                }
            }
        };
        let began = Instant::now();
        link.connected.fetch_add(1, Ordering::Relaxed);
        report(Report::Connected);
        let end = session(&agent, &link, &mut state, tx, inbound, &mut commands).await;
        link.connected.fetch_sub(1, Ordering::Relaxed);
        match end {
            End::Stop => return,
            End::Lost | End::RetryAfter(_) => {
                report(Report::Lost);
                dialling += 1;
                if began.elapsed() > Duration::from_secs(30) {
                    backoff.step = Backoff::MIN;
                }
                let wait = match end {
                    End::RetryAfter(wait) => wait,
                    _ => backoff.next(),
                };
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = async { let _ = stop.wait_for(|s| *s).await; } => return,
                }
            }
            End::Disconnect => loop {
                // Disconnected on command: wait for the word to come back.
                tokio::select! {
                    command = commands.recv() => match command {
                        Some(Command::Reconnect) => break,
                        Some(_) => {}
                        None => return,
                    },
                    () = async { let _ = stop.wait_for(|s| *s).await; } => return,
                }
            },
        }
    }
}

/// One session: resends what is in flight, then answers updates, sends
/// batches on command and heartbeats until it ends.
async fn session(
    agent: &SimAgent,
    link: &Link,
    state: &mut AgentState,
    tx: mpsc::Sender<pb::AgentMessage>,
    mut inbound: tonic::Streaming<pb::ControllerMessage>,
    commands: &mut mpsc::Receiver<Command>,
) -> End {
    let mut stop = link.stop.clone();
    let report = |r: Report| {
        let _ = link.reports.send((agent.index, Instant::now(), r));
    };
    for batch in &state.in_flight {
        if tx.send(batch.message()).await.is_err() {
            return End::Lost;
        }
    }
    // Every 30 s until the controller says otherwise (it does first).
    let every = Duration::from_secs(30);
    let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        tokio::select! {
            message = inbound.message() => match message {
                Ok(Some(pb::ControllerMessage { msg: Some(msg) })) => match msg {
                    pb::controller_message::Msg::Update(update) => {
                        for id in &update.removed {
                            state.applied.remove(id);
                        }
                        for r in &update.resources {
                            state.applied.insert(r.id.clone(), r.revision);
                        }
                        state.lures = state.applied.keys().cloned().collect();
                        state.lures.sort();
                        let ack = pb::AgentMessage { msg: Some(pb::agent_message::Msg::Ack(pb::Ack { nonce: update.nonce })) };
                        if tx.send(ack).await.is_err() {
                            return End::Lost;
                        }
                        report(Report::Updated { lures: state.lures.len() });
                    }
                    pb::controller_message::Msg::EventAck(ack) => {
                        while state.in_flight.front().is_some_and(|b| b.through_seq <= ack.through_seq) {
                            if let Some(b) = state.in_flight.pop_front() {
                                report(Report::Acked { events: b.events.len(), latency: b.first_sent.elapsed() });
                            }
                        }
                    }
                    pb::controller_message::Msg::Directive(d) => match d.kind {
                        Some(pb::directive::Kind::SetHeartbeat(h)) => {
                            let every = Duration::from_millis(h.interval_ms.max(100));
                            heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
                        }
                        Some(pb::directive::Kind::RetryAfter(r)) => {
                            return End::RetryAfter(Duration::from_millis(r.millis));
                        }
                        _ => {}
                    },
                },
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => return End::Lost,
            },
            command = commands.recv() => match command {
                Some(Command::SendEvents(n)) if !state.lures.is_empty() => {
                    let batch = state.batch(agent.index, n).message();
                    if tx.send(batch).await.is_err() {
                        return End::Lost;
                    }
                }
                Some(Command::SendEvents(_)) => report(Report::Failed("no lures to report events for".into())),
                Some(Command::Disconnect) => return End::Disconnect,
                Some(Command::Reconnect) => {}
                None => return End::Stop,
            },
            _ = heartbeat.tick() => {
                let hb = pb::AgentMessage { msg: Some(pb::agent_message::Msg::Heartbeat(pb::Heartbeat { watcher: "sim".into(), ..Default::default() })) };
                let _ = tx.send(hb).await;
            }
            () = async { let _ = stop.wait_for(|s| *s).await; } => return End::Stop,
        }
    }
}

/// Online agents, as the controller counts them.
pub async fn online(admin: &mut AdminServiceClient<Channel>) -> anyhow::Result<u64> {
    let text = admin
        .get_metrics(admin_pb::GetMetricsRequest {})
        .await?
        .into_inner()
        .text;
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix("ruse_agents{state=\"online\"} "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0))
}

pub async fn wait_reports(
    fleet: &mut Fleet,
    deadline: Instant,
    mut done: impl FnMut(usize, Instant, &Report) -> bool,
) -> anyhow::Result<()> {
    let mut failures = 0usize;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, fleet.reports.recv()).await {
            Ok(Some((index, at, report))) => {
                if let Report::Failed(why) = &report {
                    failures += 1;
                    if failures <= 3 {
                        eprintln!("agent {index}: {why}");
                    }
                }
                if done(index, at, &report) {
                    return Ok(());
                }
            }
            Ok(None) => bail!("every simulated agent stopped"),
            Err(_) => bail!("timed out"),
        }
    }
}

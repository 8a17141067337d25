//! `ruse-sim`: many agents in one process, for load and benchmarks.
//!
//! Each simulated agent speaks the agent protocol for real: it enrolls with
//! a bootstrap token over pinned TLS (its own key, its own certificate),
//! then holds a mutually authenticated `Session` stream, answers updates
//! with acks, sends event batches and waits for their durable acks.
//! Connections are spread over several 127.x source addresses.
//!
//! Scenarios run in the order given, on one fleet:
//! - `connect`: ramp to N agents and hold; controller memory per agent.
//! - `push`: apply a campaign for every simulated agent; time until each
//!   has received and acked its lures.
//! - `ingest`: a sustained event rate; durable ack latency, rate achieved,
//!   events per controller CPU-second.
//! - `storm`: every agent drops its connection, then all reconnect at once;
//!   time until the controller sees them all online again.
//! - `touch` (alone, no simulated fleet): reads the lure files a real agent
//!   planted under `--touch-root`, one at a time, and times each read until
//!   the event arrives on an admin `WatchEvents` stream, as `rusectl watch
//!   events` sees it.
//! - `flood` (alone, no controller needed): a login flood against a decoy
//!   service, FTP (`--flood ftp://HOST:PORT`) or an HTML form
//!   (`--flood http://HOST:PORT/PATH`), from `--flood-connections` workers
//!   spread over source addresses; counts the attempts the server answered.
//! - `floor` (alone): the other end of a flood, for comparison. Serves the
//!   `--flood` address's protocol for `--duration`, answering each login
//!   as a decoy does and recording nothing, on one thread
//!   ([`ruse_e2e::floor`]); a flood against it shows the most this
//!   machine and generator allow.
//!
//! Every wait is bounded (`--timeout`); the program stops by itself.
//!
//! Longer than our ~800 lines on purpose: a benchmark program whose scenarios
//! (push, ingest, storm, flood) share its simulated-agent machinery; it is
//! read scenario by scenario.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::{Parser, ValueEnum};
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
use ruse_proto::context::ContextFile;
use ruse_proto::transport::{self, ControllerUrl, DialOptions};
use ruse_proto::types::{UnixMs, new_ulid, parse_duration};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    Connect,
    Push,
    Ingest,
    Storm,
    Touch,
    Flood,
    Floor,
}

/// Simulates a fleet of Ruse agents against a running controller.
#[derive(Debug, Parser)]
#[command(name = "ruse-sim", version)]
struct Args {
    /// The controller's agent URL.
    #[arg(long, default_value = "https://127.0.0.1:7443")]
    controller: String,
    /// The CA pin (`ruse-controller init` prints it); not for `flood`.
    #[arg(long)]
    ca_pin: Option<String>,
    /// An admin's rusectl context file (for tokens, the campaign, metrics);
    /// not for `flood`.
    #[arg(long)]
    context_file: Option<PathBuf>,
    /// The admin URL, when it is not the context's.
    #[arg(long)]
    admin: Option<String>,
    /// Number of simulated agents.
    #[arg(long, short = 'n', default_value_t = 100)]
    agents: usize,
    /// Lures per agent in the `push` campaign.
    #[arg(long, default_value_t = 10)]
    lures: usize,
    /// `ingest`: events per second, whole fleet.
    #[arg(long, default_value_t = 20_000)]
    rate: u64,
    /// `ingest`: events per batch.
    #[arg(long, default_value_t = 50)]
    batch: usize,
    /// `ingest`: how long.
    #[arg(long, default_value = "10s")]
    duration: String,
    /// `connect`: how long to hold the fleet before measuring memory.
    #[arg(long, default_value = "5s")]
    hold: String,
    /// Spread connections over this many source addresses 127.0.1.x.
    #[arg(long, default_value_t = 8)]
    sources: u8,
    /// Enrollments and connects in flight during the ramp.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// The controller's pid, to read its memory and CPU from /proc.
    #[arg(long)]
    controller_pid: Option<u32>,
    /// Scenarios, in order (comma separated).
    #[arg(long, value_delimiter = ',', default_value = "connect")]
    scenarios: Vec<Scenario>,
    /// Bound on every wait.
    #[arg(long, default_value = "600s")]
    timeout: String,
    /// `touch`: the directory holding a real agent's lure files.
    #[arg(long)]
    touch_root: Option<PathBuf>,
    /// `touch`: how many reads.
    #[arg(long, default_value_t = 200)]
    touches: usize,
    /// `flood`: the target, ftp://HOST:PORT or http://HOST:PORT/PATH;
    /// `floor`: what to serve, and where.
    #[arg(long)]
    flood: Option<String>,
    /// `flood`: concurrent connections (each a login attempt at a time).
    #[arg(long, default_value_t = 32)]
    flood_connections: usize,
    /// Also write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// What an agent task tells the coordinator.
#[derive(Debug)]
enum Report {
    Connected,
    /// An update was acked; `lures` is how many lure resources it now has.
    Updated {
        lures: usize,
    },
    /// A batch's durable ack arrived after `latency`.
    Acked {
        events: usize,
        latency: Duration,
    },
    Failed(String),
}

/// What the coordinator tells an agent task.
#[derive(Debug)]
enum Command {
    SendEvents(usize),
    Disconnect,
    Reconnect,
}

struct SimAgent {
    index: usize,
    tls: Arc<ClientConfig>,
}

struct Fleet {
    commands: Vec<mpsc::Sender<Command>>,
    reports: mpsc::UnboundedReceiver<(usize, Instant, Report)>,
    connected: Arc<AtomicUsize>,
}

#[derive(Debug, Default)]
struct Summary {
    rows: Vec<BTreeMap<String, serde_json::Value>>,
}

impl Summary {
    fn add(&mut self, scenario: &str, metric: &str, value: f64, unit: &str) {
        println!("{scenario:<8} {metric:<34} {value:>14.2} {unit}");
        let mut row = BTreeMap::new();
        row.insert("scenario".into(), scenario.into());
        row.insert("metric".into(), metric.into());
        row.insert("value".into(), value.into());
        row.insert("unit".into(), unit.into());
        self.rows.push(row);
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Resident memory of `pid` in KiB.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// User + system CPU time of `pid`, in seconds.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces).
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    Some((utime + stime) / ticks)
}

async fn admin_client(args: &Args) -> anyhow::Result<AdminServiceClient<Channel>> {
    let path = args
        .context_file
        .as_ref()
        .context("--context-file is required (an admin's rusectl context)")?;
    let file = ContextFile::load(path)?;
    let mut ctx = file.select(path, None)?;
    if let Some(url) = &args.admin {
        ctx.controller = url.clone();
    }
    let tls = ruse_pki::context_client_config(&ctx)?;
    let url: ControllerUrl = ctx.controller.parse()?;
    let channel = transport::connect(&url, tls, &DialOptions::default())
        .await
        .with_context(|| format!("cannot reach the admin API at {url}"))?;
    Ok(AdminServiceClient::new(channel))
}

fn dial(index: usize, sources: u8) -> DialOptions {
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
    let facts = pb::HostFacts {
        hostname: format!("sim-{run}-{index}"),
        os: "ruse-sim".into(),
        kernel: "0".into(),
        arch: std::env::consts::ARCH.into(),
        addresses: vec![],
        agent_version: env!("CARGO_PKG_VERSION").into(),
        labels: HashMap::new(),
    };
    let response = AgentServiceClient::new(channel)
        .enroll(pb::EnrollRequest {
            token: token.to_owned(),
            csr_der: key.csr_der()?,
            facts: Some(facts),
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

fn hello(index: usize, run: &str, applied: &HashMap<String, u64>) -> pb::AgentMessage {
    pb::AgentMessage {
        msg: Some(pb::agent_message::Msg::Hello(pb::Hello {
            agent_version: env!("CARGO_PKG_VERSION").into(),
            capabilities: vec![],
            facts: Some(pb::HostFacts {
                hostname: format!("sim-{run}-{index}"),
                os: "ruse-sim".into(),
                kernel: "0".into(),
                arch: std::env::consts::ARCH.into(),
                addresses: vec![],
                agent_version: env!("CARGO_PKG_VERSION").into(),
                labels: HashMap::new(),
            }),
            applied: applied.clone(),
        })),
    }
}

/// What every agent task shares with the coordinator.
#[derive(Clone)]
struct Link {
    url: ControllerUrl,
    run: String,
    sources: u8,
    reports: mpsc::UnboundedSender<(usize, Instant, Report)>,
    connected: Arc<AtomicUsize>,
    stop: watch::Receiver<bool>,
}

/// One simulated agent's life: sessions, acks, event batches.
async fn agent_task(agent: SimAgent, link: Link, mut commands: mpsc::Receiver<Command>) {
    let Link {
        url,
        run,
        sources,
        reports,
        connected,
        mut stop,
    } = link;
    let report = |r: Report| {
        let _ = reports.send((agent.index, Instant::now(), r));
    };
    let mut applied: HashMap<String, u64> = HashMap::new();
    let mut lures: Vec<String> = Vec::new();
    let mut seq = 0u64;
    let mut next_lure = 0usize;
    'sessions: loop {
        let channel = loop {
            match transport::connect(&url, agent.tls.clone(), &dial(agent.index, sources)).await {
                Ok(c) => break c,
                Err(e) => {
                    report(Report::Failed(format!("connect: {e}")));
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    if *stop.borrow() {
                        return;
                    }
                }
            }
        };
        let (tx, rx) = mpsc::channel(64);
        let _ = tx.send(hello(agent.index, &run, &applied)).await;
        let mut inbound = match AgentServiceClient::new(channel)
            .session(ReceiverStream::new(rx))
            .await
        {
            Ok(r) => r.into_inner(),
            Err(e) => {
                report(Report::Failed(format!("session: {e}")));
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        connected.fetch_add(1, Ordering::Relaxed);
        report(Report::Connected);
        let mut in_flight: VecDeque<(u64, usize, Instant)> = VecDeque::new();
        let mut heartbeat = tokio::time::interval(Duration::from_secs(30));
        heartbeat.tick().await;
        let reconnect = loop {
            tokio::select! {
                message = inbound.message() => match message {
                    Ok(Some(pb::ControllerMessage { msg: Some(msg) })) => match msg {
                        pb::controller_message::Msg::Update(update) => {
                            for id in &update.removed {
                                applied.remove(id);
                            }
                            for r in &update.resources {
                                applied.insert(r.id.clone(), r.revision);
                            }
                            lures = applied.keys().cloned().collect();
                            lures.sort();
                            let ack = pb::AgentMessage { msg: Some(pb::agent_message::Msg::Ack(pb::Ack { nonce: update.nonce })) };
                            if tx.send(ack).await.is_err() {
                                break true;
                            }
                            report(Report::Updated { lures: lures.len() });
                        }
                        pb::controller_message::Msg::EventAck(ack) => {
                            while in_flight.front().is_some_and(|(s, _, _)| *s <= ack.through_seq) {
                                if let Some((_, n, sent)) = in_flight.pop_front() {
                                    report(Report::Acked { events: n, latency: sent.elapsed() });
                                }
                            }
                        }
                        pb::controller_message::Msg::Directive(_) => {}
                    },
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => break true,
                },
                command = commands.recv() => match command {
                    Some(Command::SendEvents(n)) if !lures.is_empty() => {
                        let mut events = Vec::with_capacity(n);
                        for _ in 0..n {
                            seq += 1;
                            let lure = &lures[next_lure % lures.len()];
                            next_lure += 1;
                            events.push(pb::Event {
                                id: new_ulid(),
                                seq,
                                lure_id: lure.clone(),
                                lure_revision: applied.get(lure).copied().unwrap_or(0),
                                kind: "touch".into(),
                                observed_ms: UnixMs::now().0,
                                path: format!("/sim/{}", agent.index),
                                operations: vec!["open".into(), "read".into()],
                                attribution: "sim".into(),
                                ..Default::default()
                            });
                        }
                        in_flight.push_back((seq, n, Instant::now()));
                        let batch = pb::AgentMessage { msg: Some(pb::agent_message::Msg::Events(pb::EventBatch { events })) };
                        if tx.send(batch).await.is_err() {
                            break true;
                        }
                    }
                    Some(Command::SendEvents(_)) => report(Report::Failed("no lures to report events for".into())),
                    Some(Command::Disconnect) => break false,
                    Some(Command::Reconnect) => {}
                    None => break false,
                },
                _ = heartbeat.tick() => {
                    let hb = pb::AgentMessage { msg: Some(pb::agent_message::Msg::Heartbeat(pb::Heartbeat { watcher: "sim".into(), ..Default::default() })) };
                    let _ = tx.send(hb).await;
                }
                () = async { let _ = stop.wait_for(|s| *s).await; } => {
                    connected.fetch_sub(1, Ordering::Relaxed);
                    return;
                }
            }
        };
        connected.fetch_sub(1, Ordering::Relaxed);
        drop(tx);
        drop(inbound);
        if reconnect {
            continue 'sessions;
        }
        // Disconnected on command: wait for the word to come back.
        loop {
            tokio::select! {
                command = commands.recv() => match command {
                    Some(Command::Reconnect) => continue 'sessions,
                    Some(_) => {}
                    None => return,
                },
                () = async { let _ = stop.wait_for(|s| *s).await; } => return,
            }
        }
    }
}

/// Online agents, as the controller counts them.
async fn online(admin: &mut AdminServiceClient<Channel>) -> anyhow::Result<u64> {
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

async fn wait_reports(
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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let timeout = parse_duration(&args.timeout)?;
    let hold = parse_duration(&args.hold)?;
    let ingest_for = parse_duration(&args.duration)?;
    let url: ControllerUrl = args.controller.parse()?;
    let fd_limit = ruse_proto::limits::raise_fd_limit();
    let run = new_ulid()[..10].to_lowercase();
    let mut summary = Summary::default();
    if args.scenarios == [Scenario::Flood] {
        flood(&args, ingest_for, &mut summary).await?;
        return write_json(&args, &summary);
    }
    if args.scenarios == [Scenario::Floor] {
        floor(&args, ingest_for, &mut summary).await?;
        return write_json(&args, &summary);
    }
    if args.scenarios.contains(&Scenario::Flood) || args.scenarios.contains(&Scenario::Floor) {
        bail!("`flood` and `floor` run alone");
    }
    let mut admin = admin_client(&args).await?;
    let pid = args.controller_pid;
    println!(
        "ruse-sim: {} agents, run {run}, fd limit {fd_limit}, {} source addresses",
        args.agents, args.sources
    );
    if args.scenarios == [Scenario::Touch] {
        touch(&args, &mut admin, timeout, &mut summary).await?;
        return write_json(&args, &summary);
    }
    let position = |s: Scenario| args.scenarios.iter().position(|x| *x == s);
    if let Some(i) = position(Scenario::Ingest)
        && position(Scenario::Push).is_none_or(|p| p > i)
    {
        bail!("`ingest` reports events for the agents' lures: run `push` before it");
    }
    if args.scenarios.contains(&Scenario::Touch) {
        bail!("`touch` runs alone (it measures a real agent, not the simulated fleet)");
    }
    let pin: CaPin = args
        .ca_pin
        .as_deref()
        .context("--ca-pin is required")?
        .parse()
        .context("--ca-pin")?;
    let expected_online = online(&mut admin).await?;

    // Ramp: enroll and connect every agent.
    let rss_before = pid.and_then(rss_kib);
    let token = admin
        .create_token(admin_pb::CreateTokenRequest {
            ttl_ms: u64::try_from(timeout.as_millis())?,
            max_uses: u32::try_from(args.agents)?,
            labels: [("sim".to_owned(), run.clone())].into(),
            description: format!("ruse-sim run {run}"),
        })
        .await?
        .into_inner()
        .token;
    let started = Instant::now();
    let gate = Arc::new(Semaphore::new(args.concurrency.max(1)));
    let (report_tx, reports) = mpsc::unbounded_channel();
    let connected = Arc::new(AtomicUsize::new(0));
    let (stop_tx, stop_rx) = watch::channel(false);
    let enroll_failures = Arc::new(AtomicU64::new(0));
    let mut commands = Vec::with_capacity(args.agents);
    let mut enrolls = Vec::with_capacity(args.agents);
    for index in 0..args.agents {
        let (ctx, crx) = mpsc::channel(8);
        commands.push(ctx);
        let gate = gate.clone();
        let token = token.clone();
        let link = Link {
            url: url.clone(),
            run: run.clone(),
            sources: args.sources,
            reports: report_tx.clone(),
            connected: connected.clone(),
            stop: stop_rx.clone(),
        };
        let failures = enroll_failures.clone();
        enrolls.push(tokio::spawn(async move {
            let agent = {
                let _permit = gate.acquire().await;
                let mut attempt = 0;
                loop {
                    match enroll(index, &link.url, pin, &token, &link.run, link.sources).await {
                        Ok(a) => break a,
                        Err(e) if attempt < 5 => {
                            attempt += 1;
                            failures.fetch_add(1, Ordering::Relaxed);
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
    drop(report_tx);
    let mut fleet = Fleet {
        commands,
        reports,
        connected,
    };
    let deadline = started + timeout;
    let mut sessions = 0usize;
    let mut connect_times = Vec::with_capacity(args.agents);
    wait_reports(&mut fleet, deadline, |_, at, r| {
        if matches!(r, Report::Connected) {
            sessions += 1;
            connect_times.push(at.duration_since(started));
        }
        sessions == args.agents
    })
    .await
    .context("ramp")?;
    let ramp = started.elapsed();
    summary.add("connect", "agents connected", args.agents as f64, "");
    summary.add("connect", "ramp time", ramp.as_secs_f64(), "s");
    summary.add(
        "connect",
        "enroll+connect rate",
        args.agents as f64 / ramp.as_secs_f64(),
        "agents/s",
    );
    summary.add(
        "connect",
        "enroll retries",
        enroll_failures.load(Ordering::Relaxed) as f64,
        "",
    );
    let target_online = expected_online + args.agents as u64;
    while online(&mut admin).await? < target_online {
        if Instant::now() > deadline {
            bail!("the controller does not count every agent online");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    for scenario in &args.scenarios {
        match scenario {
            Scenario::Connect => {
                tokio::time::sleep(hold).await;
                if let (Some(before), Some(after)) = (rss_before, pid.and_then(rss_kib)) {
                    summary.add(
                        "connect",
                        "controller RSS before",
                        before as f64 / 1024.0,
                        "MiB",
                    );
                    summary.add(
                        "connect",
                        "controller RSS holding",
                        after as f64 / 1024.0,
                        "MiB",
                    );
                    summary.add(
                        "connect",
                        "controller memory per agent",
                        after.saturating_sub(before) as f64 / args.agents as f64,
                        "KiB",
                    );
                }
                summary.add(
                    "connect",
                    "sim RSS",
                    rss_kib(std::process::id()).unwrap_or(0) as f64 / 1024.0,
                    "MiB",
                );
            }
            Scenario::Push => {
                let mut manifest = format!(
                    "kind: Campaign\nname: sim-{run}\nselector: {{sim: \"{run}\"}}\nrollout: {{waves: [\"100%\"], max_failure_ratio: 1}}\nlures:\n"
                );
                for i in 0..args.lures {
                    manifest.push_str(&format!(
                        "  - {{template: pgpass, name: pg-{i}, params: {{database: db{i}}}}}\n"
                    ));
                }
                let t0 = Instant::now();
                admin
                    .apply(admin_pb::ApplyRequest {
                        source: "ruse-sim".into(),
                        content: manifest,
                        dry_run: false,
                    })
                    .await
                    .context("applying the campaign")?;
                let applied = t0.elapsed();
                let mut done = 0usize;
                let mut seen = vec![false; args.agents];
                let mut latencies = Vec::with_capacity(args.agents);
                let lures = args.lures;
                wait_reports(&mut fleet, t0 + timeout, |index, at, r| {
                    if let Report::Updated { lures: n } = r
                        && *n >= lures
                        && !seen[index]
                    {
                        seen[index] = true;
                        done += 1;
                        latencies.push(at.duration_since(t0));
                    }
                    done == args.agents
                })
                .await
                .context("push")?;
                latencies.sort();
                summary.add("push", "lures per agent", lures as f64, "");
                summary.add("push", "apply call", ms(applied), "ms");
                summary.add("push", "acked p50", ms(percentile(&latencies, 50.0)), "ms");
                summary.add("push", "acked p99", ms(percentile(&latencies, 99.0)), "ms");
                summary.add(
                    "push",
                    "all acked (max)",
                    ms(percentile(&latencies, 100.0)),
                    "ms",
                );
            }
            Scenario::Ingest => {
                let batches_per_tick = |elapsed: Duration, sent: u64| -> u64 {
                    let due = (elapsed.as_secs_f64() * args.rate as f64) as u64;
                    due.saturating_sub(sent) / args.batch as u64
                };
                let cpu_before = pid.and_then(cpu_seconds);
                let t0 = Instant::now();
                let mut sent_events = 0u64;
                let mut next = 0usize;
                let mut acked_events = 0u64;
                let mut latencies = Vec::new();
                let mut tick = tokio::time::interval(Duration::from_millis(10));
                while t0.elapsed() < ingest_for {
                    tick.tick().await;
                    for _ in 0..batches_per_tick(t0.elapsed(), sent_events) {
                        let target = &fleet.commands[next % fleet.commands.len()];
                        next += 1;
                        if target.try_send(Command::SendEvents(args.batch)).is_ok() {
                            sent_events += args.batch as u64;
                        }
                    }
                    while let Ok((_, _, r)) = fleet.reports.try_recv() {
                        if let Report::Acked { events, latency } = r {
                            acked_events += events as u64;
                            latencies.push(latency);
                        }
                    }
                }
                let sending = t0.elapsed();
                // The rest of the acks.
                if acked_events < sent_events {
                    let _ = wait_reports(
                        &mut fleet,
                        Instant::now() + Duration::from_secs(60),
                        |_, _, r| {
                            if let Report::Acked { events, latency } = r {
                                acked_events += *events as u64;
                                latencies.push(*latency);
                            }
                            acked_events >= sent_events
                        },
                    )
                    .await;
                }
                let elapsed = t0.elapsed();
                let cpu = match (cpu_before, pid.and_then(cpu_seconds)) {
                    (Some(a), Some(b)) => Some(b - a),
                    _ => None,
                };
                latencies.sort();
                summary.add("ingest", "target rate", args.rate as f64, "events/s");
                summary.add("ingest", "events sent", sent_events as f64, "");
                summary.add("ingest", "events acked", acked_events as f64, "");
                summary.add("ingest", "sending time", sending.as_secs_f64(), "s");
                summary.add(
                    "ingest",
                    "durable rate",
                    acked_events as f64 / elapsed.as_secs_f64(),
                    "events/s",
                );
                if let Some(cpu) = cpu {
                    summary.add("ingest", "controller CPU", cpu, "s");
                    summary.add(
                        "ingest",
                        "events per controller CPU-second",
                        acked_events as f64 / cpu.max(0.001),
                        "events/s/core",
                    );
                }
                summary.add(
                    "ingest",
                    "batch ack p50",
                    ms(percentile(&latencies, 50.0)),
                    "ms",
                );
                summary.add(
                    "ingest",
                    "batch ack p99",
                    ms(percentile(&latencies, 99.0)),
                    "ms",
                );
                summary.add(
                    "ingest",
                    "batch ack max",
                    ms(percentile(&latencies, 100.0)),
                    "ms",
                );
                if acked_events < sent_events {
                    bail!(
                        "{} events were never acknowledged",
                        sent_events - acked_events
                    );
                }
            }
            Scenario::Touch | Scenario::Flood | Scenario::Floor => unreachable!("checked above"),
            Scenario::Storm => {
                for c in &fleet.commands {
                    let _ = c.send(Command::Disconnect).await;
                }
                let drop_deadline = Instant::now() + timeout;
                while fleet.connected.load(Ordering::Relaxed) > 0
                    || online(&mut admin).await? > expected_online
                {
                    if Instant::now() > drop_deadline {
                        bail!("the fleet did not go offline");
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                while fleet.reports.try_recv().is_ok() {}
                let t0 = Instant::now();
                for c in &fleet.commands {
                    let _ = c.send(Command::Reconnect).await;
                }
                let mut back = 0usize;
                let mut times = Vec::with_capacity(args.agents);
                wait_reports(&mut fleet, t0 + timeout, |_, at, r| {
                    if matches!(r, Report::Connected) {
                        back += 1;
                        times.push(at.duration_since(t0));
                    }
                    back == args.agents
                })
                .await
                .context("storm")?;
                let sessions_back = t0.elapsed();
                while online(&mut admin).await? < target_online {
                    if Instant::now() > t0 + timeout {
                        bail!("the controller does not count every agent online after the storm");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                let drained = t0.elapsed();
                times.sort();
                summary.add("storm", "agents reconnecting", args.agents as f64, "");
                summary.add("storm", "session p50", ms(percentile(&times, 50.0)), "ms");
                summary.add("storm", "session p99", ms(percentile(&times, 99.0)), "ms");
                summary.add(
                    "storm",
                    "all sessions back",
                    sessions_back.as_secs_f64(),
                    "s",
                );
                summary.add(
                    "storm",
                    "all online at controller",
                    drained.as_secs_f64(),
                    "s",
                );
            }
        }
    }

    let _ = stop_tx.send(true);
    for e in enrolls {
        let _ = tokio::time::timeout(Duration::from_secs(5), e).await;
    }
    write_json(&args, &summary)
}

fn write_json(args: &Args, summary: &Summary) -> anyhow::Result<()> {
    if let Some(path) = &args.json {
        let json = serde_json::json!({ "agents": args.agents, "rows": summary.rows });
        std::fs::write(path, serde_json::to_vec_pretty(&json)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// One login attempt on a fresh connection; true when the server answered
/// it (FTP `530`, any HTTP status line).
async fn login_attempt(target: &FloodTarget, source: IpAddr, n: u64) -> std::io::Result<bool> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(std::net::SocketAddr::new(source, 0))?;
    let stream = socket.connect(target.addr).await?;
    let mut stream = BufReader::new(stream);
    let mut line = String::new();
    let user = format!("radiology{}", n % 997);
    let password = format!("Winter{n}!");
    match &target.path {
        None => {
            stream.read_line(&mut line).await?; // banner
            stream
                .get_mut()
                .write_all(format!("USER {user}\r\n").as_bytes())
                .await?;
            line.clear();
            stream.read_line(&mut line).await?; // 331
            stream
                .get_mut()
                .write_all(format!("PASS {password}\r\n").as_bytes())
                .await?;
            line.clear();
            stream.read_line(&mut line).await?;
            let _ = stream.get_mut().write_all(b"QUIT\r\n").await;
            Ok(line.starts_with("530"))
        }
        Some(path) => {
            let body = format!("username={user}&password={password}");
            let request = format!(
                "POST {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: ruse-sim\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                target.addr,
                body.len()
            );
            stream.get_mut().write_all(request.as_bytes()).await?;
            stream.read_line(&mut line).await?;
            Ok(line.starts_with("HTTP/1."))
        }
    }
}

struct FloodTarget {
    addr: std::net::SocketAddr,
    /// `None` for FTP; the form's path for HTTP.
    path: Option<String>,
}

fn flood_target(spec: &str) -> anyhow::Result<FloodTarget> {
    let (scheme, rest) = spec
        .split_once("://")
        .context("--flood must look like ftp://HOST:PORT or http://HOST:PORT/PATH")?;
    let (host, path) = match rest.split_once('/') {
        Some((h, p)) => (h, Some(format!("/{p}"))),
        None => (rest, None),
    };
    let addr = host
        .parse()
        .with_context(|| format!("--flood: {host} is not HOST:PORT"))?;
    match scheme {
        "ftp" => Ok(FloodTarget { addr, path: None }),
        "http" => Ok(FloodTarget {
            addr,
            path: Some(path.unwrap_or_else(|| "/".into())),
        }),
        other => bail!("--flood: unknown scheme {other} (ftp or http)"),
    }
}

/// Serves the flood's protocol at its address for `duration`, recording
/// nothing.
async fn floor(args: &Args, duration: Duration, summary: &mut Summary) -> anyhow::Result<()> {
    let spec = args.flood.as_deref().context("`floor` needs --flood URL")?;
    let target = flood_target(spec)?;
    let protocol = match target.path {
        None => ruse_e2e::floor::Protocol::Ftp,
        Some(_) => ruse_e2e::floor::Protocol::Http,
    };
    let until = Instant::now() + duration;
    let addr = target.addr;
    println!("ruse-sim: floor serving {spec} for {}s", duration.as_secs());
    let answered =
        tokio::task::spawn_blocking(move || ruse_e2e::floor::serve(protocol, addr, until))
            .await?
            .with_context(|| format!("serving {addr}"))?;
    summary.add("floor", "logins answered", answered as f64, "");
    summary.add(
        "floor",
        "answered rate",
        answered as f64 / duration.as_secs_f64(),
        "logins/s",
    );
    Ok(())
}

/// A login flood for `duration`: attempts answered per second.
async fn flood(args: &Args, duration: Duration, summary: &mut Summary) -> anyhow::Result<()> {
    let spec = args.flood.as_deref().context("`flood` needs --flood URL")?;
    let target = Arc::new(flood_target(spec)?);
    let answered = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let counter = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now();
    let mut workers = Vec::new();
    for w in 0..args.flood_connections.max(1) {
        let (target, answered, failed, counter) = (
            target.clone(),
            answered.clone(),
            failed.clone(),
            counter.clone(),
        );
        let source = dial(w, args.sources)
            .local_addr
            .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
        workers.push(tokio::spawn(async move {
            while t0.elapsed() < duration {
                let n = counter.fetch_add(1, Ordering::Relaxed);
                match tokio::time::timeout(
                    Duration::from_secs(5),
                    login_attempt(&target, source, n),
                )
                .await
                {
                    Ok(Ok(true)) => answered.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    for w in workers {
        let _ = w.await;
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let answered = answered.load(Ordering::Relaxed);
    summary.add("flood", "connections", args.flood_connections as f64, "");
    summary.add("flood", "attempts answered", answered as f64, "");
    summary.add(
        "flood",
        "attempts failed",
        failed.load(Ordering::Relaxed) as f64,
        "",
    );
    summary.add(
        "flood",
        "answered rate",
        answered as f64 / elapsed,
        "attempts/s",
    );
    Ok(())
}

/// Every regular file under `dir`.
fn files_under(dir: &std::path::Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            files_under(&entry.path(), out)?;
        } else if kind.is_file() {
            out.push(entry.path());
        }
    }
    Ok(())
}

/// Lure read → event on a watch stream, one read at a time.
async fn touch(
    args: &Args,
    admin: &mut AdminServiceClient<Channel>,
    timeout: Duration,
    summary: &mut Summary,
) -> anyhow::Result<()> {
    let root = args
        .touch_root
        .as_ref()
        .context("`touch` needs --touch-root (the real agent's lure directory)")?;
    let mut files = Vec::new();
    files_under(root, &mut files).with_context(|| format!("reading {}", root.display()))?;
    files.sort();
    if files.is_empty() {
        bail!("no lure files under {}", root.display());
    }
    let mut stream = admin
        .watch_events(admin_pb::WatchEventsRequest {
            filter: Some(admin_pb::EventFilter {
                kind: "touch".into(),
                since_ms: UnixMs::now().0,
                ..Default::default()
            }),
            after_cursor: 0,
        })
        .await?
        .into_inner();
    let deadline = Instant::now() + timeout;
    let mut latencies = Vec::with_capacity(args.touches);
    let mut lost = 0usize;
    for k in 0..args.touches {
        if Instant::now() > deadline {
            bail!("timed out after {k} touches");
        }
        // Spaced so the agent's per-lure rate limit never applies.
        tokio::time::sleep(Duration::from_millis(120)).await;
        let file = &files[k % files.len()];
        let name = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let t0 = Instant::now();
        let read = file.clone();
        tokio::task::spawn_blocking(move || std::fs::read(read)).await??;
        let seen = tokio::time::timeout(Duration::from_secs(5), async {
            while let Some(m) = stream.message().await? {
                if m.event.is_some_and(|e| e.path.ends_with(&name)) {
                    return Ok::<bool, tonic::Status>(true);
                }
            }
            Ok(false)
        })
        .await;
        match seen {
            Ok(Ok(true)) => latencies.push(t0.elapsed()),
            Ok(Ok(false)) => bail!("the watch stream ended"),
            Ok(Err(e)) => bail!("the watch stream failed: {e}"),
            Err(_) => lost += 1,
        }
    }
    latencies.sort();
    summary.add("touch", "lure files", files.len() as f64, "");
    summary.add("touch", "reads", args.touches as f64, "");
    summary.add("touch", "events not seen within 5 s", lost as f64, "");
    summary.add(
        "touch",
        "read to watch p50",
        ms(percentile(&latencies, 50.0)),
        "ms",
    );
    summary.add(
        "touch",
        "read to watch p99",
        ms(percentile(&latencies, 99.0)),
        "ms",
    );
    summary.add(
        "touch",
        "read to watch max",
        ms(percentile(&latencies, 100.0)),
        "ms",
    );
    Ok(())
}

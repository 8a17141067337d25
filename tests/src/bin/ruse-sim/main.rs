//! `ruse-sim`: many agents in one process, for load and benchmarks.
//!
//! Each simulated agent speaks the agent protocol for real: it enrolls with
//! a bootstrap token over pinned TLS (its own key, its own certificate),
//! then holds a mutually authenticated `Session` stream, answers updates
//! with acks, sends event batches and waits for their durable acks; a batch
//! not acknowledged when a session ends is sent again in the next one, as a
//! real agent's outbox does. Connections are spread over several 127.x
//! source addresses. Given several controllers (replicas on one database,
//! `--controller URL,URL,…`), agent `i` starts at the `i % n`-th and moves
//! to the next after a failure with the real agent's jittered backoff.
//!
//! Scenarios run in the order given, on one fleet ([`fleet`]):
//! - `connect`: ramp to N agents and hold; controller memory per agent
//!   (per replica with several `--controller-pid`s).
//! - `push`: apply a campaign for every simulated agent; time until each
//!   has received and acked its lures.
//! - `ingest`: a sustained event rate; durable ack latency, rate achieved,
//!   events per controller CPU-second.
//! - `storm`: every agent drops its connection, then all reconnect at once;
//!   time until the controller sees them all online again.
//! - `failover`: events at `--rate` while one replica (`--kill-replica`) is
//!   killed with SIGKILL; time until its agents have sessions elsewhere and
//!   until the controller shows them online there, and whether every event
//!   sent was acknowledged.
//!
//! And alone, without a simulated fleet ([`alone`]): `touch` (a real
//! agent's lure reads timed to `rusectl watch events`), `flood` (a login
//! flood against a decoy service) and `floor` (the other end of a flood,
//! answering as a decoy does and recording nothing, for comparison).
//!
//! Every wait is bounded (`--timeout`); the program stops by itself.

mod alone;
mod fleet;
mod peers;
mod scenarios;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::{Parser, ValueEnum};
use tonic::transport::Channel;

use ruse_pki::CaPin;
use ruse_proto::admin::v1 as admin_pb;
use ruse_proto::admin::v1::admin_service_client::AdminServiceClient;
use ruse_proto::context::ContextFile;
use ruse_proto::transport::{self, ControllerUrl, DialOptions};
use ruse_proto::types::{new_ulid, parse_duration};

use fleet::{Fleet, Report, online, wait_reports};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    Connect,
    Push,
    Ingest,
    Storm,
    Failover,
    Touch,
    Flood,
    Floor,
}

/// Simulates a fleet of Ruse agents against a running controller.
#[derive(Debug, Parser)]
#[command(name = "ruse-sim", version)]
struct Args {
    /// The controller's agent URL; several, comma separated, for replicas
    /// sharing a database (agents are spread over them in turn).
    #[arg(long, value_delimiter = ',', default_value = "https://127.0.0.1:7443")]
    controller: Vec<String>,
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
    /// `ingest`, `failover`: events per second, whole fleet.
    #[arg(long, default_value_t = 20_000)]
    rate: u64,
    /// `ingest`, `failover`: events per batch.
    #[arg(long, default_value_t = 50)]
    batch: usize,
    /// `ingest`, `failover`: how long to send (a replica is killed a third
    /// of the way in).
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
    /// The controllers' pids, in the order of `--controller`, to read their
    /// memory and CPU from /proc (and for `failover`, the one to kill).
    #[arg(long, value_delimiter = ',')]
    controller_pid: Vec<u32>,
    /// `failover`: which `--controller` to kill (0 is the first), by its
    /// pid at the same place in `--controller-pid`.
    #[arg(long, default_value_t = 0)]
    kill_replica: usize,
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
    /// Also write the results as JSON here (with each agent's latencies,
    /// so the figures of several simulators can be merged).
    #[arg(long)]
    json: Option<PathBuf>,
    /// A directory shared by simulators that drive one fleet together
    /// (past one process's file-descriptor limit): they meet there at each
    /// step; the first by run id applies the campaign and kills the
    /// replica for all. Their agents carry the label `fleet: <the
    /// directory's name>`, which the campaign selects.
    #[arg(long)]
    peers: Option<PathBuf>,
    /// How many simulators share `--peers`.
    #[arg(long, default_value_t = 1)]
    peer_count: usize,
}

#[derive(Debug, Default)]
struct Summary {
    rows: Vec<BTreeMap<String, serde_json::Value>>,
    /// Latencies behind some rows, in ms, by name.
    samples: BTreeMap<String, Vec<f64>>,
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

    /// Rows `<name> p50`, `<name> p99`, … of the sorted `latencies` (100
    /// is `<name> max`), in ms.
    fn percentiles(&mut self, scenario: &str, name: &str, latencies: &[Duration], ps: &[f64]) {
        for p in ps {
            let metric = if *p >= 100.0 {
                format!("{name} max")
            } else {
                format!("{name} p{p}")
            };
            self.add(scenario, &metric, ms(percentile(latencies, *p)), "ms");
        }
    }

    /// Keeps `latencies` (for the JSON) as `name`.
    fn samples(&mut self, name: &str, latencies: &[Duration]) {
        self.samples
            .insert(name.to_owned(), latencies.iter().map(|d| ms(*d)).collect());
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

/// An admin client at `--admin` or the context's URL, and that URL.
async fn admin_client(args: &Args) -> anyhow::Result<(AdminServiceClient<Channel>, ControllerUrl)> {
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
    Ok((AdminServiceClient::new(channel), url))
}

/// Enough file descriptors for `agents` connections and some to spare:
/// raises the soft limit to the hard one, and the hard one too where that
/// is allowed (root), with a clear error where it is not.
fn ensure_fds(agents: usize) -> anyhow::Result<u64> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let need = agents as u64 + 1024;
    let limit = ruse_proto::limits::raise_fd_limit();
    if limit >= need {
        return Ok(limit);
    }
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    setrlimit(Resource::RLIMIT_NOFILE, need, need.max(hard)).with_context(|| {
        format!(
            "{agents} agents need {need} file descriptors and this process may open {limit}; \
             run as root, raise the hard limit (ulimit -Hn) or split the fleet over several \
             simulators"
        )
    })?;
    Ok(need)
}

/// The fleet label of simulators sharing `--peers`: the directory's name.
fn fleet_name(args: &Args) -> Option<String> {
    let dir = args.peers.as_ref()?;
    Some(dir.file_name()?.to_string_lossy().into_owned())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let timeout = parse_duration(&args.timeout)?;
    let duration = parse_duration(&args.duration)?;
    let mut summary = Summary::default();
    if args.scenarios == [Scenario::Flood] {
        alone::flood(&args, duration, &mut summary).await?;
        return write_json(&args, &summary);
    }
    if args.scenarios == [Scenario::Floor] {
        alone::floor(&args, duration, &mut summary).await?;
        return write_json(&args, &summary);
    }
    if args.scenarios.contains(&Scenario::Flood) || args.scenarios.contains(&Scenario::Floor) {
        bail!("`flood` and `floor` run alone");
    }
    let urls = args
        .controller
        .iter()
        .map(|u| u.parse().with_context(|| format!("--controller {u}")))
        .collect::<anyhow::Result<Vec<ControllerUrl>>>()?;
    if urls.is_empty() {
        bail!("--controller names no controller");
    }
    if args.controller_pid.len() > 1 && args.controller_pid.len() != urls.len() {
        bail!("give one --controller-pid per --controller, in the same order");
    }
    let fd_limit = ensure_fds(args.agents)?;
    // The random end of a ULID: simulators started together differ.
    let run = new_ulid()[16..].to_lowercase();
    let (mut admin, admin_url) = admin_client(&args).await?;
    println!(
        "ruse-sim: {} agents, run {run}, fd limit {fd_limit}, {} source addresses, {} controller(s)",
        args.agents,
        args.sources,
        urls.len()
    );
    if args.scenarios == [Scenario::Touch] {
        alone::touch(&args, &mut admin, timeout, &mut summary).await?;
        return write_json(&args, &summary);
    }
    let position = |s: Scenario| args.scenarios.iter().position(|x| *x == s);
    for sends in [Scenario::Ingest, Scenario::Failover] {
        if let Some(i) = position(sends)
            && position(Scenario::Push).is_none_or(|p| p > i)
        {
            bail!("`ingest` and `failover` report events for the agents' lures: run `push` before");
        }
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
    let peers = match &args.peers {
        Some(dir) => {
            if args.scenarios.contains(&Scenario::Storm) {
                bail!("`storm` counts the whole controller's agents: not with --peers");
            }
            std::fs::create_dir_all(dir)?;
            let peers = peers::Peers {
                dir: dir.clone(),
                count: args.peer_count.max(1),
                run: run.clone(),
                timeout,
            };
            peers.meet("start", "").await?;
            Some(peers)
        }
        None => None,
    };
    let mut labels = BTreeMap::from([("sim".to_owned(), run.clone())]);
    if let Some(fleet) = fleet_name(&args) {
        labels.insert("fleet".to_owned(), fleet);
    }

    // Ramp: enroll and connect every agent.
    let rss_before: Vec<Option<u64>> = args.controller_pid.iter().map(|p| rss_kib(*p)).collect();
    let token = admin
        .create_token(admin_pb::CreateTokenRequest {
            ttl_ms: u64::try_from(timeout.as_millis())?,
            max_uses: u32::try_from(args.agents)?,
            labels: labels.into_iter().collect(),
            description: format!("ruse-sim run {run}"),
        })
        .await?
        .into_inner()
        .token;
    let started = Instant::now();
    let urls: Arc<[ControllerUrl]> = urls.into();
    let mut fleet = Fleet::start(
        args.agents,
        urls.clone(),
        pin,
        &token,
        &run,
        args.sources,
        args.concurrency,
    );
    let deadline = started + timeout;
    let mut sessions = 0usize;
    wait_reports(&mut fleet, deadline, |_, _, r| {
        if matches!(r, Report::Connected) {
            sessions += 1;
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
        fleet
            .enroll_retries
            .load(std::sync::atomic::Ordering::Relaxed) as f64,
        "",
    );
    let target_online = expected_online + args.agents as u64;
    while online(&mut admin).await? < target_online {
        if Instant::now() > deadline {
            bail!("the controller does not count every agent online");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let mut sim = scenarios::Sim {
        admin_url,
        args: &args,
        admin,
        fleet,
        urls,
        run,
        timeout,
        duration,
        target_online,
        rss_before,
        summary,
        peers,
    };
    for scenario in &args.scenarios {
        match scenario {
            Scenario::Connect => sim.connect().await?,
            Scenario::Push => sim.push().await?,
            Scenario::Ingest => sim.ingest().await?,
            Scenario::Storm => sim.storm().await?,
            Scenario::Failover => sim.failover().await?,
            Scenario::Touch | Scenario::Flood | Scenario::Floor => unreachable!("checked above"),
        }
    }
    let scenarios::Sim { fleet, summary, .. } = sim;
    fleet.stop().await;
    write_json(&args, &summary)
}

fn write_json(args: &Args, summary: &Summary) -> anyhow::Result<()> {
    if let Some(path) = &args.json {
        let json = serde_json::json!({
            "agents": args.agents,
            "rows": summary.rows,
            "samples": summary.samples,
        });
        std::fs::write(path, serde_json::to_vec_pretty(&json)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

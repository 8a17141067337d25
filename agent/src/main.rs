//! `ruse-agent`: flags, logging, then the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio::sync::watch;

use ruse_agent::platform::{Native, Platform};
use ruse_agent::{AgentConfig, AgentStatus};
use ruse_proto::types::Labels;

#[derive(Parser, Debug)]
#[command(name = "ruse-agent", version, about = "Ruse endpoint agent")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Enroll (first start) and keep a session with the controller.
    Run(RunArgs),
    /// Enroll now if not enrolled yet, then exit (installers run this so a
    /// wrong token or pin fails the install, not the service).
    Enroll(RunArgs),
    /// What the Windows service manager starts: `run`, reporting to the
    /// service manager (the MSI installs the service with this).
    #[cfg(windows)]
    #[command(hide = true)]
    Service(RunArgs),
    /// Write (or update) the configuration file, as an installer does:
    /// the settings given are set, empty ones are left as they were, so an
    /// upgrade without them keeps the agent's settings. A token is stored
    /// beside the identity, readable by the agent only.
    Configure(ConfigureArgs),
    /// What the running agent is doing, from its status file: connected,
    /// lures, events waiting and acknowledged, problems. Exits non-zero
    /// when it is not connected or has not written the file for 90 s.
    Status {
        /// The agent's state directory.
        #[arg(long, default_value = ruse_agent::config::DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
        /// The status file as it is (JSON), for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Remove every lure this agent planted (and nothing else).
    Uninstall {
        /// The agent's state directory (holds the record of what was planted).
        #[arg(long, default_value = ruse_agent::config::DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
        /// The root the lures were planted under.
        #[arg(long, default_value = ruse_agent::config::DEFAULT_ROOT)]
        root: PathBuf,
        /// The agent's configuration file: the controller it names is told
        /// the agent is gone (it revokes it, and rollouts stop waiting).
        #[arg(long)]
        config: Option<PathBuf>,
        /// The controller to tell, when there is no configuration file.
        #[arg(long)]
        controller: Option<String>,
        /// Do nothing when an upgrade is under way: the MSI marks one before
        /// it removes the older version (Windows also says so to that
        /// removal with UPGRADINGPRODUCTCODE; Wine's installer does not).
        #[arg(long)]
        unless_upgrading: bool,
    },
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// TOML configuration file (flags override it).
    #[arg(long)]
    config: Option<PathBuf>,
    /// The controller, https://HOST:PORT; replicas as a comma-separated
    /// list, tried in turn.
    #[arg(long)]
    controller: Option<String>,
    /// The controller CA's pin, sha256:… (printed by `ruse-controller init`).
    #[arg(long)]
    ca_pin: Option<String>,
    /// File holding the bootstrap token (needed to enroll).
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Where the agent keeps its identity.
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Root under which lures are planted (default /).
    #[arg(long)]
    root: Option<PathBuf>,
    /// Labels for this agent, k=v (repeatable, or comma separated).
    #[arg(long = "label", short = 'l')]
    labels: Vec<String>,
    /// Log lines as JSON.
    #[arg(long)]
    log_json: bool,
    /// Append log lines to this file instead of standard error (a service
    /// has no console).
    #[arg(long)]
    log_file: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
struct ConfigureArgs {
    /// The configuration file to write.
    #[arg(long)]
    config: PathBuf,
    /// The controller, https://HOST:PORT (replicas comma-separated).
    #[arg(long, default_value = "")]
    controller: String,
    /// The controller CA's pin, sha256:….
    #[arg(long, default_value = "")]
    ca_pin: String,
    /// A bootstrap token, stored in the state directory.
    #[arg(long, default_value = "")]
    token: String,
    /// A file holding the bootstrap token (copied into the state directory).
    #[arg(long, default_value = "")]
    token_file: String,
    /// Labels, k=v,k=v.
    #[arg(long, default_value = "")]
    labels: String,
    /// Where the agent keeps its identity.
    #[arg(long, default_value = ruse_agent::config::DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
}

/// glibc's allocator, tuned for a small long-running daemon. By default
/// each thread that meets a busy allocator gets an arena of its own (up to
/// 8 per core) and the mmap threshold rises with every large block freed,
/// so freed memory stays in the process. Under a decoy HTTP flood (64
/// connections) the agent peaked at 48.7 MiB RSS with the defaults and at
/// 21.7 MiB with these (docs/benchmarks.md), answering as fast.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MALLOC_TUNING: &[(&str, &str)] = &[
    ("MALLOC_ARENA_MAX", "2"),
    ("MALLOC_TRIM_THRESHOLD_", "262144"),
    ("MALLOC_MMAP_THRESHOLD_", "262144"),
];

/// Starts the agent again with [`MALLOC_TUNING`] unless the environment
/// already tunes glibc's allocator (glibc reads it only at start). Returns
/// only if that was not possible; the agent then runs as it is.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn tune_malloc() {
    use std::os::unix::process::CommandExt;
    let tuned = std::env::var_os("GLIBC_TUNABLES").is_some()
        || MALLOC_TUNING
            .iter()
            .any(|(k, _)| std::env::var_os(k).is_some());
    if tuned {
        return;
    }
    let mut args = std::env::args_os();
    let argv0 = args.next().unwrap_or_default();
    let err = std::process::Command::new("/proc/self/exe")
        .arg0(argv0)
        .args(args)
        .envs(MALLOC_TUNING.iter().copied())
        .exec();
    eprintln!(
        "ruse-agent: running with glibc's default allocator settings: cannot restart with them tuned ({err})"
    );
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn tune_malloc() {}

fn main() -> ExitCode {
    // Whatever the agent or a library it uses creates is its own: the
    // state directory holds what intruders typed at decoys. Lure files get
    // their modes set explicitly and are not affected.
    #[cfg(unix)]
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    let command = Cli::parse().command;
    if matches!(command, Command::Run(_)) {
        tune_malloc();
    }
    let (args, enroll_only) = match command {
        Command::Configure(args) => {
            return match ruse_agent::config::configure(&ruse_agent::config::Installer {
                config: args.config,
                state_dir: args.state_dir,
                controller: args.controller,
                ca_pin: args.ca_pin,
                token: args.token,
                token_file: args.token_file,
                labels: args.labels,
            }) {
                Ok(path) => {
                    println!("configuration written to {}", path.display());
                    ExitCode::SUCCESS
                }
                Err(e) => fail(&e),
            };
        }
        Command::Status { state_dir, json } => return status(&state_dir, json),
        Command::Run(args) => (args, false),
        Command::Enroll(args) => (args, true),
        #[cfg(windows)]
        Command::Service(args) => {
            let ran = ruse_agent::platform::windows::service::dispatch(move || {
                u32::from(agent_main(args, false) != ExitCode::SUCCESS)
            });
            return match ran {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(&format!(
                    "not started by the service manager ({e}); use `ruse-agent run` in a console"
                )),
            };
        }
        Command::Uninstall {
            state_dir,
            root,
            config,
            controller,
            unless_upgrading,
        } => {
            if unless_upgrading && ruse_agent::config::take_upgrade_mark(&state_dir) {
                println!("an upgrade is under way: the lures and the agent's registration stay");
                return ExitCode::SUCCESS;
            }
            deregister(&state_dir, config.as_deref(), controller);
            return uninstall(&state_dir, &root);
        }
    };
    agent_main(args, enroll_only)
}

/// `run` (or `enroll` when `enroll_only`): configuration, then the agent
/// until it is asked to stop.
fn agent_main(args: RunArgs, enroll_only: bool) -> ExitCode {
    if let Err(e) = init_logging(args.log_json, args.log_file.as_deref()) {
        return fail(&e);
    }
    ruse_proto::limits::raise_fd_limit();
    let labels = match Labels::parse_pairs(args.labels.iter().map(String::as_str)) {
        Ok(l) => l,
        Err(e) => return fail(&e),
    };
    let mut overrides = Vec::new();
    let mut set = |key: &'static str, value: Option<String>| {
        if let Some(v) = value {
            overrides.push((key, v));
        }
    };
    set("controller", args.controller);
    set("ca_pin", args.ca_pin);
    set(
        "token_file",
        args.token_file.map(|p| p.display().to_string()),
    );
    set("state_dir", args.state_dir.map(|p| p.display().to_string()));
    set("root", args.root.map(|p| p.display().to_string()));
    let config = match AgentConfig::load(
        args.config.as_deref(),
        std::env::vars(),
        &overrides,
        &labels,
    ) {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return fail(&e),
    };
    if enroll_only {
        return runtime.block_on(async move {
            match ruse_agent::enroll_once(&config).await {
                Ok((id, true)) => {
                    println!("enrolled as agent {id}");
                    forget_installer_token(&config);
                    ExitCode::SUCCESS
                }
                Ok((id, false)) => {
                    println!("already enrolled as agent {id}");
                    ExitCode::SUCCESS
                }
                Err(e) => fail(&e),
            }
        });
    }
    // Running: an upgrade that prepared this start is over.
    ruse_agent::config::take_upgrade_mark(&config.state_dir);
    runtime.block_on(async move {
        let (stop_tx, stop_rx) = watch::channel(false);
        let (status_tx, status_rx) = watch::channel(AgentStatus::default());
        tokio::spawn(ruse_agent::status::keep(
            config.state_dir.clone(),
            config.controller.to_string(),
            status_rx,
        ));
        tokio::spawn(async move {
            <Native as Platform>::stop_requested().await;
            tracing::info!("stopping");
            let _ = stop_tx.send(true);
        });
        match ruse_agent::run(config, stop_rx, status_tx).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(&e),
        }
    })
}

/// A token an installer kept for enrollment (`configure`) is spent once
/// the agent is enrolled: deleted, as install.sh deletes its copy.
fn forget_installer_token(config: &AgentConfig) {
    let kept = config.state_dir.join(ruse_agent::config::INSTALLER_TOKEN);
    if config.token_file.as_deref() == Some(kept.as_path()) {
        let _ = std::fs::remove_file(&kept);
    }
}

/// Tells the controller this agent is going, when it knows which one.
/// Failing to is not fatal: the lures are removed anyway, and an admin can
/// remove the agent with `rusectl delete agent ID`.
fn deregister(
    state_dir: &std::path::Path,
    config: Option<&std::path::Path>,
    controller: Option<String>,
) {
    let target = match (config, controller) {
        // The first of a replica list.
        (_, Some(url)) => url
            .split(',')
            .next()
            .unwrap_or_default()
            .trim()
            .parse::<ruse_proto::transport::ControllerUrl>()
            .map(|url| (url, ruse_proto::transport::DialOptions::default()))
            .map_err(|e| e.to_string()),
        (Some(file), None) => AgentConfig::load(
            Some(file),
            std::env::vars(),
            &[("state_dir", state_dir.display().to_string())],
            &Labels::new(),
        )
        .map(|c| (c.controller, c.dial))
        .map_err(|e| e.to_string()),
        (None, None) => return,
    };
    let result = target.and_then(|(url, dial)| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        runtime
            .block_on(async {
                tokio::time::timeout(
                    std::time::Duration::from_secs(15),
                    ruse_agent::deregister(&url, &dial, state_dir, "uninstalled"),
                )
                .await
            })
            .map_err(|_| "the controller did not answer within 15 s".to_owned())?
            .map_err(|e| e.to_string())
    });
    match result {
        Ok(id) => println!("agent {id} deregistered: the controller revoked it"),
        Err(e) => eprintln!(
            "ruse-agent: warning: could not tell the controller ({e}); remove the agent there with `rusectl delete agent ID`"
        ),
    }
}

fn uninstall(state_dir: &std::path::Path, root: &std::path::Path) -> ExitCode {
    let homes = ruse_agent::lures::HomeDirs::default();
    let mut engine = match ruse_agent::lures::LureEngine::open(root, homes, state_dir) {
        Ok(e) => e,
        Err(e) => return fail(&e),
    };
    let count = engine.lures().len();
    let failures = engine.uninstall();
    for (id, error) in &failures {
        eprintln!("ruse-agent: could not fully remove lure {id}: {error}");
    }
    println!(
        "removed {} of {count} lure(s) planted under {}",
        count.saturating_sub(failures.len()),
        root.display()
    );
    if failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// `ruse-agent status`.
fn status(state_dir: &std::path::Path, json: bool) -> ExitCode {
    use ruse_agent::status::{REFRESH, StatusFile};
    let file = match StatusFile::read(state_dir) {
        Ok(file) => file,
        Err(e) => return fail(&e),
    };
    let age = file.age();
    let live = age <= 3 * REFRESH;
    let s = &file.status;
    if json {
        match serde_json::to_string_pretty(&file) {
            Ok(text) => println!("{text}"),
            Err(e) => return fail(&e),
        }
    } else {
        let yes = |b: bool| if b { "yes" } else { "no" };
        let id = s.agent_id.as_ref().map(ToString::to_string);
        println!("agent       {}", id.as_deref().unwrap_or("(not enrolled)"));
        println!("controller  {}", file.controller);
        println!(
            "connected   {} ({} sessions so far)",
            yes(s.connected),
            s.sessions
        );
        println!("lures       {}", s.lures);
        println!("decoys      {} services listening", s.decoy_services);
        println!(
            "events      {} waiting for the controller, {} acknowledged since the agent started",
            s.outbox_depth, s.events_acked
        );
        if let Some(last) = s.recent_acked.back() {
            println!(
                "last acked  {} of {} (event {}, lure {})",
                last.kind, last.path, last.id, last.lure_id
            );
        }
        if s.problems.is_empty() {
            println!("problems    none");
        }
        for p in &s.problems {
            println!("problem     {p}");
        }
        if let Some(e) = &s.last_error {
            println!("last error  {e}");
        }
        println!(
            "written     {} s ago{}",
            age.as_secs(),
            if live {
                ""
            } else {
                " (the agent is not running?)"
            }
        );
    }
    if s.connected && live {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn fail(e: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("ruse-agent: error: {e}");
    ExitCode::FAILURE
}

fn init_logging(json: bool, file: Option<&std::path::Path>) -> Result<(), String> {
    let filter = tracing_subscriber::EnvFilter::try_from_env("RUSE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match file {
        Some(path) => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)
                    .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            }
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| format!("cannot open the log file {}: {e}", path.display()))?;
            let builder = builder
                .with_writer(std::sync::Mutex::new(file))
                .with_ansi(false);
            if json {
                builder.json().init();
            } else {
                builder.init();
            }
        }
        None => {
            let builder = builder
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
            if json {
                builder.json().init();
            } else {
                builder.init();
            }
        }
    }
    Ok(())
}

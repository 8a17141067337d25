//! `ruse-controller`: flags, logging and signals; everything else is in the
//! library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use ruse_controller::config::{ControllerConfig, LogFormat, StoreLocation};
use ruse_controller::dev::{self, DevOptions};
use ruse_controller::init::{self, InitOptions};
use ruse_controller::store::{self, PgOptions};
use ruse_controller::{Controller, layout};

// mimalloc rather than glibc's malloc: a campaign pass allocates and frees
// hundreds of thousands of small strings across threads, and glibc spent
// about a sixth of the 10,000-agent push in malloc, free and chunk
// consolidation. Built without transparent huge pages (`no_thp`): with them
// the arenas' RSS grew by 15 KiB per connected agent. sled is built with
// `miri_optimizations` so its metrics histograms are zeroed allocations
// left untouched rather than 20 MiB written at startup. Measured in
// bench/analysis.md, "The controller's allocator (bcc24f5)".
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(
    name = "ruse-controller",
    version,
    about = "Ruse deception control plane: the controller"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create the CA, the first admin and a rusectl context in a new data directory.
    Init {
        #[arg(long)]
        data_dir: PathBuf,
        /// SPIFFE trust domain of this installation.
        #[arg(long, default_value = "ruse.local")]
        trust_domain: String,
        /// The URL rusectl will use to reach the controller.
        #[arg(long, default_value = "https://127.0.0.1:7443")]
        controller_url: String,
        /// The URL agents will dial, when it is not the one rusectl uses
        /// (an admin port, a port-forward): the printed next steps use it.
        #[arg(long)]
        agent_url: Option<String>,
        /// Name of the first admin.
        #[arg(long, default_value = "admin")]
        admin_name: String,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Bring a PostgreSQL store's schema to this version (`serve` also
    /// does this at start; run it alone before upgrading replicas).
    Migrate {
        /// TOML configuration file (its `store_url` and `store_ca_file`).
        #[arg(long)]
        config: Option<PathBuf>,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Serve agents and admins.
    Serve(ServeArgs),
    /// Copy an installation's embedded store into an empty PostgreSQL
    /// database and check the counts (stop the controller first).
    MigrateStore {
        /// The data directory whose store (`DIR/store`) is copied; it is
        /// left as it was.
        #[arg(long, value_name = "DIR")]
        from: PathBuf,
        /// The PostgreSQL URL (`postgres://user:password@host:5432/ruse?sslmode=require`).
        #[arg(
            long,
            value_name = "URL",
            env = "RUSE_STORE_URL",
            hide_env_values = true
        )]
        to: String,
        /// CAs (PEM) that sign the database's certificate (default: the system bundle).
        #[arg(long, env = "RUSE_STORE_CA_FILE")]
        store_ca_file: Option<PathBuf>,
    },
    /// Print the first admin's rusectl context, credentials inline (for a
    /// controller that created its CA on first start, e.g. on Kubernetes:
    /// `kubectl exec … -- ruse-controller admin-context > ruse.toml`).
    AdminContext {
        #[arg(long, default_value = "/var/lib/ruse")]
        data_dir: PathBuf,
        /// The URL rusectl will dial (default: the one recorded at init).
        #[arg(long)]
        controller: Option<String>,
        /// Write the context (it holds the admin's private key) to this
        /// file, readable by you only (0600), instead of printing it.
        #[arg(long, short = 'o', value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Run a controller and a demo agent on this machine (data kept in --data-dir).
    Dev {
        #[arg(long, default_value = "ruse-dev")]
        data_dir: PathBuf,
        #[arg(long, default_value = "127.0.0.1:7443")]
        listen: SocketAddr,
    },
}

/// Where a PostgreSQL store is (unset: the embedded store in the data
/// directory).
#[derive(clap::Args, Debug)]
struct StoreArgs {
    /// PostgreSQL URL (`postgres://user:password@host:5432/ruse?sslmode=require`).
    #[arg(long, env = "RUSE_STORE_URL", hide_env_values = true)]
    store_url: Option<String>,
    /// CAs (PEM) that sign the database's certificate (default: the system bundle).
    #[arg(long, env = "RUSE_STORE_CA_FILE")]
    store_ca_file: Option<PathBuf>,
}

impl StoreArgs {
    fn options(self) -> Option<PgOptions> {
        self.store_url.map(|url| PgOptions {
            url,
            ca_file: self.store_ca_file,
        })
    }
}

#[derive(clap::Args, Debug)]
struct ServeArgs {
    /// TOML configuration file; `RUSE_*` environment variables and flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Agent listener (and admin API unless --admin-listen is given).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Separate admin API listener (client certificate required at the handshake).
    #[arg(long)]
    admin_listen: Option<SocketAddr>,
    /// A DNS name or IP address for the server certificate (repeatable).
    #[arg(long = "server-name")]
    server_names: Vec<String>,
    /// Log format: text or json.
    #[arg(long)]
    log_format: Option<String>,
    /// The PostgreSQL store (default: `store_url` of the configuration, or
    /// the embedded store in the data directory).
    #[arg(long)]
    store_url: Option<String>,
}

fn main() -> ExitCode {
    // Whatever the controller or a library it uses creates (sled's files
    // among them) is readable by its own user only.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    match Cli::parse().command {
        Command::Init {
            data_dir,
            trust_domain,
            controller_url,
            agent_url,
            admin_name,
            store,
        } => run_init(
            data_dir,
            &trust_domain,
            controller_url,
            agent_url,
            &admin_name,
            store,
        ),
        Command::Serve(args) => run_serve(args),
        Command::Migrate { config, store } => run_migrate(config, store),
        Command::MigrateStore {
            from,
            to,
            store_ca_file,
        } => run_migrate_store(
            &from,
            &PgOptions {
                url: to,
                ca_file: store_ca_file,
            },
        ),
        Command::AdminContext {
            data_dir,
            controller,
            output,
        } => match admin_context(&data_dir, controller) {
            Ok(text) => match output {
                Some(path) => match ruse_pki::write_private_file(&path, text.as_bytes()) {
                    Ok(()) => {
                        eprintln!(
                            "admin context written to {} (mode 0600): rusectl --context-file {} whoami",
                            path.display(),
                            path.display()
                        );
                        ExitCode::SUCCESS
                    }
                    Err(e) => fail(&e),
                },
                None => {
                    print!("{text}");
                    ExitCode::SUCCESS
                }
            },
            Err(e) => fail(&e),
        },
        Command::Dev { data_dir, listen } => {
            init_logging(LogFormat::Text, "info");
            runtime(|| async move {
                let result = dev::run(
                    DevOptions { data_dir, listen },
                    |info| println!("{}", info.banner()),
                    wait_for_signal(),
                )
                .await;
                result.map_err(|e| e.to_string())
            })
        }
    }
}

/// The context `init` wrote, with its files inlined.
fn admin_context(data_dir: &std::path::Path, controller: Option<String>) -> Result<String, String> {
    let path = layout::context_file(data_dir);
    let file = ruse_proto::context::ContextFile::load(&path).map_err(|e| e.to_string())?;
    let ctx = file.select(&path, None).map_err(|e| e.to_string())?;
    let read = |p: &std::path::Path| {
        std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))
    };
    let key = ruse_pki::read_private_file(&ctx.key).map_err(|e| e.to_string())?;
    let name = file
        .current_context
        .clone()
        .unwrap_or_else(|| "ruse".into());
    let inline = ruse_proto::context::Context::inline(
        &controller.unwrap_or(ctx.controller.clone()),
        &read(&ctx.ca)?,
        &read(&ctx.cert)?,
        &key,
    );
    let out = ruse_proto::context::ContextFile {
        current_context: Some(name.clone()),
        contexts: [(name, inline)].into(),
    };
    Ok(format!(
        "# rusectl context with the admin's private key inline: keep this file mode 0600.\n{}",
        out.to_toml()
    ))
}

fn run_init(
    data_dir: PathBuf,
    trust_domain: &str,
    controller_url: String,
    agent_url: Option<String>,
    admin_name: &str,
    store: StoreArgs,
) -> ExitCode {
    let opts = (|| {
        Ok::<_, String>(InitOptions {
            trust_domain: trust_domain
                .parse()
                .map_err(|e| format!("--trust-domain: {e}"))?,
            admin_name: admin_name
                .parse()
                .map_err(|e| format!("--admin-name: {e}"))?,
            controller_url: {
                controller_url
                    .parse::<ruse_proto::transport::ControllerUrl>()
                    .map_err(|e| format!("--controller-url: {e}"))?;
                controller_url
            },
            admin_cert_ttl: ControllerConfig::default().admin_cert_ttl,
            store: store.options(),
            data_dir,
        })
    })();
    let opts = match opts {
        Ok(o) => o,
        Err(e) => return fail(&e),
    };
    let parse = |flag: &str, url: &str| {
        url.parse::<ruse_proto::transport::ControllerUrl>()
            .map_err(|e| format!("{flag}: {e}"))
    };
    let (admin_url, agent_url) = match (
        parse("--controller-url", &opts.controller_url),
        parse(
            "--agent-url",
            agent_url.as_deref().unwrap_or(&opts.controller_url),
        ),
    ) {
        (Ok(admin), Ok(agent)) => (admin, agent),
        (Err(e), _) | (_, Err(e)) => return fail(&e),
    };
    // What serve needs so that agents and rusectl reach it where init was
    // told they would: one port for both, or the admin API on its own.
    let listen = if admin_url.port() == agent_url.port() {
        format!(
            "--listen 0.0.0.0:{port} --server-name {host}\n\
The admin API answers on the same port (it needs an admin certificate). To keep\n\
it off the agents' network, give it its own port: add --admin-listen\n\
127.0.0.1:{next} --server-name 127.0.0.1 and dial https://127.0.0.1:{next}.",
            port = agent_url.port(),
            host = agent_url.host(),
            next = agent_url.port().wrapping_add(1),
        )
    } else {
        format!(
            "--listen 0.0.0.0:{port} --admin-listen 0.0.0.0:{admin_port} --server-name {host} --server-name {admin_host}\n\
Agents dial port {port}; the admin API has its own port {admin_port}, which\n\
refuses any connection without an admin certificate at the handshake.",
            port = agent_url.port(),
            admin_port = admin_url.port(),
            host = agent_url.host(),
            admin_host = admin_url.host(),
        )
    };
    match init::init(&opts) {
        Ok(report) => {
            println!(
                "\
Initialised {data}
  CA certificate   {ca}
  CA pin           {pin}
  admin            {admin} (certificate valid until {until})
  admin files      {dir}
  rusectl context  {ctx} (dials {admin_url})

Start the controller:
  ruse-controller serve --data-dir {data} {listen}
Then:
  rusectl --context-file {ctx} token create --ttl 1h --uses 10 --label site=icu --secret-file token
  ruse-agent run --controller {agent_url} --ca-pin {pin} --token-file token --state-dir /var/lib/ruse-agent",
                data = opts.data_dir.display(),
                ca = report.ca_cert.display(),
                pin = report.pin,
                admin = opts.admin_name,
                until = report.admin_cert_not_after,
                dir = report.admin_dir.display(),
                ctx = report.context_file.display(),
                admin_url = opts.controller_url,
            );
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    }
}

fn run_migrate(config: Option<PathBuf>, store: StoreArgs) -> ExitCode {
    init_logging(LogFormat::Text, "warn");
    let options = match store.options() {
        Some(options) => options,
        None => match ControllerConfig::load(config.as_deref(), std::env::vars(), &[]) {
            Ok(c) => match c.store_location() {
                StoreLocation::Postgres(options) => options,
                StoreLocation::Sled { .. } => {
                    return fail(
                        &"no PostgreSQL store to migrate: give --store-url, RUSE_STORE_URL or \
                          store_url in --config (the embedded store migrates itself)",
                    );
                }
            },
            Err(e) => return fail(&e),
        },
    };
    match store::migrate(&options) {
        Ok(m) if m.applied.is_empty() => {
            println!(
                "{}: schema already at version {}",
                store::redact_url(&options.url),
                m.from
            );
            ExitCode::SUCCESS
        }
        Ok(m) => {
            let applied: Vec<String> = m.applied.iter().map(i32::to_string).collect();
            println!(
                "{}: schema migrated from version {} to {} (applied {})",
                store::redact_url(&options.url),
                m.from,
                store::schema_version(),
                applied.join(", ")
            );
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    }
}

fn run_migrate_store(from: &std::path::Path, to: &PgOptions) -> ExitCode {
    init_logging(LogFormat::Text, "warn");
    let dir = layout::store(from);
    if !dir.is_dir() {
        return fail(&format!(
            "{} holds no embedded store (looked for {})",
            from.display(),
            dir.display()
        ));
    }
    let source = match store::SledStore::open(&dir, 64 << 20) {
        Ok(s) => s,
        Err(e) => {
            return fail(&format!(
                "{}: {e} (is a controller still running on it? stop it first)",
                dir.display()
            ));
        }
    };
    let target = match store::PgStore::open(to) {
        Ok(s) => s,
        Err(e) => return fail(&e),
    };
    eprintln!(
        "copying {} into {}",
        dir.display(),
        store::redact_url(&to.url)
    );
    let copied = store::copy_store(&source, &target, |kind, n| eprintln!("  {kind}: {n}"));
    match copied {
        Ok(copied) => {
            println!("copied and verified:");
            for (kind, n) in &copied {
                println!("  {kind:<18} {n}");
            }
            println!(
                "Next: serve with store_url (or RUSE_STORE_URL) set to this database and the same \
                 data directory (its CA and admin credentials). {} is left as it was: keep it \
                 until the controller runs well on PostgreSQL.",
                dir.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    }
}

fn run_serve(args: ServeArgs) -> ExitCode {
    let mut overrides: Vec<(&str, String)> = Vec::new();
    if let Some(d) = &args.data_dir {
        overrides.push(("data_dir", d.display().to_string()));
    }
    if let Some(l) = args.listen {
        overrides.push(("listen", l.to_string()));
    }
    if let Some(l) = args.admin_listen {
        overrides.push(("admin_listen", l.to_string()));
    }
    if let Some(f) = &args.log_format {
        overrides.push(("log_format", f.clone()));
    }
    if let Some(url) = &args.store_url {
        overrides.push(("store_url", url.clone()));
    }
    let mut config =
        match ControllerConfig::load(args.config.as_deref(), std::env::vars(), &overrides) {
            Ok(c) => c,
            Err(e) => return fail(&e),
        };
    if !args.server_names.is_empty() {
        config.server_names = args.server_names;
    }
    init_logging(config.log_format, &config.log_level);
    let fd_limit = ruse_proto::limits::raise_fd_limit();
    runtime(|| async move {
        let controller = Controller::start(config).await.map_err(|e| e.to_string())?;
        tracing::debug!(fd_limit, "open-file limit");
        let shared = controller.admin_addr() == controller.agent_addr();
        tracing::info!(
            context = %layout::context_file(&controller.core().config.data_dir).display(),
            pin = %controller.core().ca.pin(),
            agents = %controller.agent_addr(),
            admins = %controller.admin_addr(),
            admin_api = if shared { "on the agent port" } else { "on its own port (admin certificate required at the handshake)" },
            "ready"
        );
        tokio::select! {
            () = wait_for_signal() => {}
            why = controller.store_broken() => {
                // What was not committed is lost: exit, so the supervisor
                // restarts the controller and agents resend.
                return Err(format!("the store failed: {why}"));
            }
        }
        tracing::info!("shutting down");
        controller.shutdown().await.map_err(|e| e.to_string())
    })
}

fn runtime<F, Fut>(f: F) -> ExitCode
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(&e),
    };
    let result = rt.block_on(f());
    rt.shutdown_timeout(Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

fn fail(e: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("ruse-controller: error: {e}");
    ExitCode::FAILURE
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn init_logging(format: LogFormat, level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        // JSON lines on stdout, as log collectors expect.
        LogFormat::Json => builder.json().with_writer(std::io::stdout).init(),
        LogFormat::Text => builder
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
}

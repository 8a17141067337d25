//! Harness for Ruse's end-to-end tests: a real controller (in-process or as
//! a child process) on 127.0.0.1 port 0 with a fresh CA and data directory
//! per test, real agents, real admin clients.
//!
//! Waiting is done by polling a condition against a deadline
//! ([`eventually`]), never by bare sleeps.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    missing_debug_implementations
)]

pub mod commands;
pub mod floor;
pub mod machine;
pub mod postgres;
pub mod process;
pub mod wine;

pub use commands::{output_text, shell_commands, workspace};

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tempfile::TempDir;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

use ruse_agent::outbox::EventSink;
use ruse_agent::{AgentConfig, AgentError, AgentStatus};
use ruse_controller::Controller;
use ruse_controller::config::{ControllerConfig, StoreUrl};
use ruse_controller::init::{self, InitOptions};
use ruse_controller::store::PgOptions;
use ruse_pki::rustls::ClientConfig;
use ruse_pki::{CaPin, CertificateAuthority, PrivateKey};
use ruse_proto::admin::v1 as admin_pb;
use ruse_proto::admin::v1::admin_service_client::AdminServiceClient;
use ruse_proto::agent::v1 as agent_pb;
use ruse_proto::agent::v1::agent_service_client::AgentServiceClient;
use ruse_proto::transport::{self, ControllerUrl, DialOptions};
use ruse_proto::types::{Identity, Labels};

pub use ruse_proto::admin::v1 as pb;

/// The trust domain of every test installation.
pub const TRUST_DOMAIN: &str = "ruse.test";

/// The files planted in `dir`, sorted; empty if `dir` does not exist yet.
/// Leaves out the temporary file (`.NAME.RANDOM.tmp`) the agent writes each
/// lure through before renaming it into place: a test that lists the
/// directory mid-write must not pick it.
pub fn planted_files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .flatten()
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            !(name.starts_with('.') && name.ends_with(".tmp"))
        })
        .map(|e| e.path())
        .collect();
    files.sort();
    files
}

/// Polls `check` every 20 ms until it returns true; panics with `what` if
/// `deadline` passes first.
pub async fn eventually<F, Fut>(what: &str, deadline: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if check().await {
            return;
        }
        assert!(
            start.elapsed() < deadline,
            "timed out after {deadline:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Checks that `check` stays true for all of `period` (polling every
/// 20 ms): for asserting that something does not happen.
pub async fn consistently<F, Fut>(what: &str, period: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < period {
        assert!(check().await, "no longer true: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether this process is root (fanotify, real daemons). Under `CI=true` a test
/// that needs root fails without it; elsewhere it says why it is skipped.
pub fn require_root(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{test} needs root (fanotify, real daemons); CI runs as root"
    );
    eprintln!(
        "SKIPPED {test}: needs root (fanotify attribution, real daemons); run as root, or under CI=true this is a failure"
    );
    false
}

/// Whether the external `tool` is installed. Under `CI=true` a missing
/// tool fails the test (scripts/install-test-deps.sh installs them all);
/// elsewhere the test says it is skipped and why.
pub fn require_tool(test: &str, tool: &str) -> bool {
    if find_tool(tool).is_some() {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{test} needs `{tool}`; scripts/install-test-deps.sh installs it (CI runs it first)"
    );
    eprintln!(
        "SKIPPED {test}: `{tool}` is not installed (run scripts/install-test-deps.sh as root, or under CI=true this is a failure)"
    );
    false
}

/// `ssh`'s arguments for one attempt at a decoy on `port`: no
/// configuration read, the host key neither checked nor kept, one
/// password prompt at most.
pub fn ssh_options(port: u16) -> Vec<String> {
    [
        "-F",
        "/dev/null",
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "ConnectTimeout=10",
        "-o",
        "NumberOfPasswordPrompts=1",
        "-p",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([port.to_string()])
    .collect()
}

/// Where scripts/install-test-deps.sh puts Python tools.
pub fn test_venv() -> PathBuf {
    std::env::var_os("RUSE_TEST_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/ruse-test-venv"))
}

/// `tool` on PATH, in /usr/sbin or /sbin, or in the test virtualenv.
pub fn find_tool(tool: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.extend([
        PathBuf::from("/usr/sbin"),
        PathBuf::from("/sbin"),
        test_venv().join("bin"),
    ]);
    dirs.into_iter().map(|d| d.join(tool)).find(|p| p.is_file())
}

/// `n` distinct TCP ports on 127.0.0.1 that were free a moment ago (all
/// held at once while choosing, so none repeats), for services a test
/// starts itself.
///
/// They are picked below the kernel's ephemeral range: a port from that
/// range, once released, can be taken as the source port of any connection
/// another test makes before the service binds it. (That is the likely
/// cause of a CI failure seen here: one of a decoy host's eight services
/// did not start while other tests flooded decoys with new connections.)
/// The bench scripts' fixed ports (17xxx, 20xxx) are below the range used.
pub fn free_ports(n: usize) -> Vec<u16> {
    use std::hash::{BuildHasher, Hasher};
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (low, high) = (21_000u16, ephemeral_low.max(21_001));
    let span = u64::from(high - low);
    let mut next = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
        % span;
    let mut held: Vec<std::net::TcpListener> = Vec::new();
    for _ in 0..span {
        if held.len() == n {
            break;
        }
        let port = low + u16::try_from(next).unwrap();
        next = (next + 1) % span;
        if let Ok(l) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            held.push(l);
        }
    }
    assert_eq!(held.len(), n, "no {n} free ports in {low}..{high}");
    held.iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

/// Settings that make tests fast: short heartbeats and state flushes.
pub fn fast_config(data_dir: &Path) -> ControllerConfig {
    ControllerConfig {
        data_dir: data_dir.to_owned(),
        listen: "127.0.0.1:0".parse().unwrap(),
        server_names: vec!["127.0.0.1".into(), "localhost".into()],
        heartbeat_interval: Duration::from_millis(200),
        offline_after: Duration::from_millis(1500),
        state_flush_interval: Duration::from_millis(200),
        shutdown_grace: Duration::from_secs(3),
        // Dozens of controllers run at once: a small disk reserve each.
        disk_reserve_mb: 4,
        ..ControllerConfig::default()
    }
}

/// An initialised data directory: CA, first admin `root`.
pub fn init_data_dir(data_dir: &Path) -> CaPin {
    init_data_dir_on(data_dir, None)
}

/// An initialised data directory whose first admin, `root`, is in `store`
/// (PostgreSQL) or, without one, in the embedded store.
pub fn init_data_dir_on(data_dir: &Path, store: Option<PgOptions>) -> CaPin {
    init::init(&InitOptions {
        data_dir: data_dir.to_owned(),
        trust_domain: TRUST_DOMAIN.parse().unwrap(),
        controller_url: "https://127.0.0.1:7443".into(),
        admin_name: "root".parse().unwrap(),
        admin_cert_ttl: Duration::from_secs(3600),
        store,
    })
    .unwrap()
    .pin
}

/// A controller running in this process.
pub struct TestController {
    pub dir: TempDir,
    pub config: ControllerConfig,
    pub pin: CaPin,
    controller: Option<Controller>,
    /// In process mode: the `ruse-controller` child.
    process: Option<process::Proc>,
}

impl TestController {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// Starts with [`fast_config`] changed by `adjust`.
    pub async fn start_with(adjust: impl FnOnce(&mut ControllerConfig)) -> Self {
        Self::start_on(None, adjust).await
    }

    /// Starts on the PostgreSQL store `store` (the embedded one without),
    /// with [`fast_config`] changed by `adjust`.
    pub async fn start_on(
        store: Option<PgOptions>,
        adjust: impl FnOnce(&mut ControllerConfig),
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let pin = init_data_dir_on(&data, store.clone());
        let mut config = fast_config(&data);
        if let Some(store) = store {
            config.store_url = Some(StoreUrl(store.url));
            config.store_ca_file = store.ca_file;
        }
        adjust(&mut config);
        let controller = Controller::start(config.clone()).await.unwrap();
        // Keep the port across restarts.
        config.listen = controller.agent_addr();
        if config.admin_listen.is_some() {
            config.admin_listen = Some(controller.admin_addr());
        }
        TestController {
            dir,
            config,
            pin,
            controller: Some(controller),
            process: None,
        }
    }

    /// A controller as a separate `ruse-controller serve` process (for
    /// `kill -9`).
    pub async fn start_process() -> Self {
        Self::start_process_on(None).await
    }

    /// [`TestController::start_process`] on the PostgreSQL store `store`
    /// (the embedded one without).
    pub async fn start_process_on(store: Option<PgOptions>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let pin = init_data_dir_on(&data, store.clone());
        let mut config = fast_config(&data);
        if let Some(store) = store {
            config.store_url = Some(StoreUrl(store.url));
        }
        let (proc, addr) = process::spawn_controller_with(
            &data,
            "127.0.0.1:0",
            &dir.path().join("controller-0.log"),
            &Self::process_env(&config),
        );
        config.listen = addr;
        TestController {
            dir,
            config,
            pin,
            controller: None,
            process: Some(proc),
        }
    }

    /// What the controller process has logged so far.
    pub fn log_text(&self) -> String {
        self.process
            .as_ref()
            .expect("not a process controller")
            .log_text()
    }

    /// `kill -9` of the controller process.
    pub fn kill9(&mut self) {
        self.process
            .as_mut()
            .expect("not a process controller")
            .kill9();
    }

    /// Starts the controller process again on the same port and data.
    pub fn restart_process(&mut self, attempt: usize) {
        let log = self.dir.path().join(format!("controller-{attempt}.log"));
        let (proc, _) = process::spawn_controller_with(
            &self.config.data_dir,
            &self.config.listen.to_string(),
            &log,
            &Self::process_env(&self.config),
        );
        self.process = Some(proc);
    }

    /// The environment a controller process gets from `config`: its store.
    fn process_env(config: &ControllerConfig) -> Vec<(&'static str, &str)> {
        config
            .store_url
            .iter()
            .map(|url| ("RUSE_STORE_URL", url.0.as_str()))
            .collect()
    }

    pub fn controller(&self) -> &Controller {
        self.controller.as_ref().expect("controller is stopped")
    }

    pub fn url(&self) -> ControllerUrl {
        ControllerUrl::from_addr(self.config.listen)
    }

    pub fn admin_url(&self) -> ControllerUrl {
        ControllerUrl::from_addr(self.config.admin_listen.unwrap_or(self.config.listen))
    }

    pub fn data_dir(&self) -> &Path {
        &self.config.data_dir
    }

    /// The CA, loaded from the data directory (to mint test certificates).
    pub fn ca(&self) -> CertificateAuthority {
        init::load_ca(
            &ruse_controller::layout::ca_cert(self.data_dir()),
            &ruse_controller::layout::ca_key(self.data_dir()),
        )
        .unwrap()
    }

    /// `n` more controllers in this process on the same PostgreSQL
    /// database and CA (replicas), each on a port of its own.
    pub async fn replicas(&self, n: usize) -> Vec<Controller> {
        let mut replicas = Vec::new();
        for _ in 0..n {
            let mut config = self.config.clone();
            config.listen = "127.0.0.1:0".parse().unwrap();
            config.name = None;
            replicas.push(Controller::start(config).await.unwrap());
        }
        replicas
    }

    /// The agent URLs of this controller and then of `replicas`.
    pub fn agent_urls(&self, replicas: &[Controller]) -> Vec<ControllerUrl> {
        std::iter::once(self.url())
            .chain(
                replicas
                    .iter()
                    .map(|c| ControllerUrl::from_addr(c.agent_addr())),
            )
            .collect()
    }

    /// A replica as a `ruse-controller serve` process named `name` (for
    /// `kill -9`), on this controller's database and CA; its log is
    /// `<name>.log` in this controller's directory.
    pub fn replica_process(&self, name: &str) -> (process::Proc, std::net::SocketAddr) {
        let url = self.config.store_url.clone().expect("a PostgreSQL store").0;
        process::spawn_controller_with(
            self.data_dir(),
            "127.0.0.1:0",
            &self.dir.path().join(format!("{name}.log")),
            &[("RUSE_STORE_URL", url.as_str()), ("RUSE_NAME", name)],
        )
    }

    /// A live view of every event, as root (`rusectl watch events`).
    pub async fn watch_events(&self) -> tonic::Streaming<admin_pb::WatchEventsResponse> {
        self.root()
            .await
            .watch_events(admin_pb::WatchEventsRequest::default())
            .await
            .unwrap()
            .into_inner()
    }

    /// Graceful stop.
    pub async fn stop(&mut self) {
        if let Some(c) = self.controller.take() {
            c.shutdown().await.unwrap();
        }
    }

    /// Starts again on the same port and data (after [`TestController::stop`]).
    pub async fn start_again(&mut self) {
        assert!(self.controller.is_none(), "controller already running");
        self.controller = Some(Controller::start(self.config.clone()).await.unwrap());
    }

    /// Graceful stop, then start again on the same port and data.
    pub async fn restart(&mut self) {
        self.stop().await;
        self.start_again().await;
    }

    /// Every stored event matching `filter` (up to 100 000).
    /// Every stored event matching `filter` (up to 100,000), oldest first,
    /// read page by page as `rusectl get events` does.
    pub async fn events(&self, filter: admin_pb::EventFilter) -> Vec<admin_pb::LureEvent> {
        let mut client = self.root().await;
        let mut events = Vec::new();
        let mut before_cursor = 0;
        loop {
            let page = client
                .list_events(admin_pb::ListEventsRequest {
                    filter: Some(filter.clone()),
                    limit: 100_000 - events.len() as u32,
                    before_cursor,
                })
                .await
                .unwrap()
                .into_inner();
            let mut older = page.events;
            older.append(&mut events);
            events = older;
            if page.next_before_cursor == 0 || events.len() >= 100_000 {
                return events;
            }
            before_cursor = page.next_before_cursor;
        }
    }

    /// A TLS client configuration with a certificate for `identity`.
    pub fn client_tls(&self, identity: &Identity) -> Arc<ClientConfig> {
        let ca = self.ca();
        let (cert, key) = ca
            .issue_client(identity, Duration::from_secs(3600))
            .unwrap();
        ruse_pki::client_config(&[ca.cert_der().clone()], vec![cert.der], key.to_der()).unwrap()
    }

    /// An admin client speaking with `tls`.
    pub async fn admin_with(
        &self,
        tls: Arc<ClientConfig>,
    ) -> Result<AdminServiceClient<Channel>, tonic::transport::Error> {
        let channel = transport::connect(&self.admin_url(), tls, &DialOptions::default()).await?;
        Ok(AdminServiceClient::new(channel))
    }

    /// The first admin (role admin).
    pub async fn root(&self) -> AdminServiceClient<Channel> {
        self.admin_with(self.client_tls(&Identity::Admin("root".parse().unwrap())))
            .await
            .unwrap()
    }

    /// A new admin with `role`, issued through the admin API as root.
    /// The audit log (its most recent records), as the root admin reads it.
    pub async fn audit(&self) -> Vec<admin_pb::AuditRecord> {
        self.root()
            .await
            .list_audit(admin_pb::ListAuditRequest::default())
            .await
            .unwrap()
            .into_inner()
            .records
    }

    pub async fn admin_as(&self, name: &str, role: admin_pb::Role) -> AdminServiceClient<Channel> {
        let key = PrivateKey::generate().unwrap();
        let issued = self
            .root()
            .await
            .issue_admin(admin_pb::IssueAdminRequest {
                name: name.into(),
                role: role.into(),
                csr_der: key.csr_der().unwrap(),
                ttl_ms: 0,
            })
            .await
            .unwrap()
            .into_inner();
        let tls = ruse_pki::client_config(
            &[issued.ca_certificate_der.into()],
            vec![issued.certificate_der.into()],
            key.to_der(),
        )
        .unwrap();
        self.admin_with(tls).await.unwrap()
    }

    /// An agent-service client with `tls`.
    pub async fn agent_client_with(
        &self,
        tls: Arc<ClientConfig>,
    ) -> Result<AgentServiceClient<Channel>, tonic::transport::Error> {
        let channel = transport::connect(&self.url(), tls, &DialOptions::default()).await?;
        Ok(AgentServiceClient::new(channel))
    }

    /// Creates a token as root.
    pub async fn token(&self, labels: &str, uses: u32, ttl: Duration) -> String {
        self.root()
            .await
            .create_token(admin_pb::CreateTokenRequest {
                ttl_ms: u64::try_from(ttl.as_millis()).unwrap(),
                max_uses: uses,
                labels: Labels::parse_pairs([labels]).unwrap().to_map(),
                description: "test".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .token
    }

    /// Configuration for an agent with state in a new directory under this
    /// test's temp dir, enrolling with `token`.
    pub fn agent_config(&self, name: &str, token: &str, labels: &str) -> AgentConfig {
        let dir = self.dir.path().join("agents").join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let token_file = dir.join("token");
        std::fs::write(&token_file, token).unwrap();
        let root = dir.join("root");
        std::fs::create_dir_all(root.join("home/clinician")).unwrap();
        std::fs::create_dir_all(root.join("etc")).unwrap();
        let mut config = AgentConfig::new(self.url(), self.pin, dir.join("state"), root);
        config.token_file = Some(token_file);
        config.labels = Labels::parse_pairs([labels]).unwrap();
        config.min_backoff = Duration::from_millis(50);
        config.max_backoff = Duration::from_millis(500);
        config
    }

    /// Starts an in-process agent.
    pub fn spawn_agent(&self, config: AgentConfig) -> TestAgent {
        TestAgent::spawn(config)
    }

    pub async fn agent_view(&self, id: &str) -> admin_pb::Agent {
        self.root()
            .await
            .get_agent(admin_pb::GetAgentRequest { id: id.into() })
            .await
            .unwrap()
            .into_inner()
    }

    /// Every agent (not deleted), page by page as `rusectl get agents`.
    pub async fn agents(&self) -> Vec<admin_pb::Agent> {
        let mut client = self.root().await;
        let mut agents = Vec::new();
        let mut after_id = String::new();
        loop {
            let page = client
                .list_agents(admin_pb::ListAgentsRequest {
                    after_id,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            agents.extend(page.agents);
            if page.next_after_id.is_empty() {
                return agents;
            }
            after_id = page.next_after_id;
        }
    }

    /// Applies manifests as root; panics with the controller's message on
    /// failure.
    pub async fn apply(&self, manifests: &str) -> Vec<admin_pb::ApplyResult> {
        self.root()
            .await
            .apply(admin_pb::ApplyRequest {
                source: "test".into(),
                content: manifests.into(),
                dry_run: false,
            })
            .await
            .unwrap_or_else(|s| panic!("apply failed: {}", s.message()))
            .into_inner()
            .results
    }

    pub async fn campaign(&self, name: &str) -> admin_pb::Campaign {
        self.root()
            .await
            .get_campaign(admin_pb::GetCampaignRequest { name: name.into() })
            .await
            .unwrap()
            .into_inner()
    }

    /// Waits until the campaign's rollout is in `state`.
    pub async fn wait_rollout(
        &self,
        name: &str,
        state: &str,
        within: Duration,
    ) -> admin_pb::Campaign {
        let mut last = None;
        let start = Instant::now();
        loop {
            let c = self.campaign(name).await;
            if c.rollout_state == state {
                return c;
            }
            assert!(
                start.elapsed() < within,
                "campaign {name} not {state} within {within:?}; last seen: {:?}",
                last.as_ref().map(|c: &admin_pb::Campaign| (
                    &c.rollout_state,
                    &c.rollout_reason,
                    c.wave,
                    &c.wave_status
                ))
            );
            last = Some(c);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn lures(&self, agent: &str, include_retired: bool) -> Vec<admin_pb::Lure> {
        self.root()
            .await
            .list_lures(admin_pb::ListLuresRequest {
                agent_id: agent.into(),
                campaign: String::new(),
                include_retired,
            })
            .await
            .unwrap()
            .into_inner()
            .lures
    }

    /// Updates the controller has pushed to an agent since it started.
    pub fn updates_sent(&self, agent: &str) -> u64 {
        self.controller()
            .core()
            .deploy
            .updates_sent(&agent.parse().unwrap())
    }

    /// Proves the controller still serves: a fresh admin connection works.
    pub async fn assert_serving(&self) {
        let me = self
            .root()
            .await
            .who_am_i(admin_pb::WhoAmIRequest {})
            .await
            .expect("the controller stopped serving");
        assert_eq!(me.into_inner().name, "root");
    }
}

/// An agent running in this process.
pub struct TestAgent {
    pub config: AgentConfig,
    pub status: watch::Receiver<AgentStatus>,
    /// Where the agent records events (its real outbox and session).
    pub events: EventSink,
    stop: watch::Sender<bool>,
    pub handle: JoinHandle<Result<(), AgentError>>,
}

impl TestAgent {
    pub fn spawn(config: AgentConfig) -> Self {
        let (stop, stop_rx) = watch::channel(false);
        let (status_tx, status) = watch::channel(AgentStatus::default());
        let agent = ruse_agent::Agent::start(config.clone()).expect("agent start");
        let events = agent.events();
        let handle = tokio::spawn(agent.run(stop_rx, status_tx));
        TestAgent {
            config,
            status,
            events,
            stop,
            handle,
        }
    }

    /// A touch event of `lure`, as a watcher would report it.
    pub fn touch_event(lure: &str, n: usize) -> agent_pb::Event {
        agent_pb::Event {
            id: ruse_proto::types::new_ulid(),
            lure_id: lure.to_owned(),
            kind: "touch".into(),
            observed_ms: ruse_proto::types::UnixMs::now().0,
            path: format!("/synthetic/{n}"),
            operations: vec!["open".into(), "read".into(), "close".into()],
            attribution: "test".into(),
            ..Default::default()
        }
    }

    /// Waits until a session is open; returns the agent id.
    pub async fn connected(&mut self) -> String {
        let status = tokio::time::timeout(
            Duration::from_secs(15),
            self.status.wait_for(|s| s.connected),
        )
        .await
        .expect("agent did not connect within 15s")
        .expect("agent task ended");
        status
            .agent_id
            .clone()
            .expect("connected without an id")
            .to_string()
    }

    /// Waits for the agent to stop by itself and returns how it ended.
    pub async fn finished(self, within: Duration) -> Result<(), AgentError> {
        tokio::time::timeout(within, self.handle)
            .await
            .expect("agent did not stop in time")
            .expect("agent task panicked")
    }

    /// Asks the agent to stop and waits for it.
    pub async fn stop(self) -> Result<(), AgentError> {
        let _ = self.stop.send(true);
        self.finished(Duration::from_secs(10)).await
    }

    pub fn state_dir(&self) -> PathBuf {
        self.config.state_dir.clone()
    }

    /// The agent's lure root (with `home/clinician` and `etc`).
    pub fn root(&self) -> PathBuf {
        self.config.root.clone()
    }

    /// The demo user's home under the root.
    pub fn home(&self) -> PathBuf {
        self.config.root.join("home/clinician")
    }

    /// Waits until the agent has exactly `n` lures applied.
    pub async fn wait_lures(&mut self, n: usize, within: Duration) {
        let reached = matches!(
            tokio::time::timeout(within, self.status.wait_for(|s| s.lures == n)).await,
            Ok(Ok(_))
        );
        assert!(
            reached,
            "agent did not reach {n} lures within {within:?} (has {})",
            self.status.borrow().lures
        );
    }
}

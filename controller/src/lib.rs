//! The Ruse controller as a library: [`Controller::start`] runs a complete
//! controller (store, CA, listeners) in the current tokio runtime, so the
//! binary, `dev` mode and tests all run the same thing.
//!
//! Layers (ARCHITECTURE.md): `api` (the gRPC edge, with the TLS
//! listeners in `api/server.rs`) → `core` and the services (`deploy`,
//! `events`, `incidents`, `outputs`, `fleet`, `drills`, `lures`,
//! `resources`, `tokens`) → `model` (records and shared vocabulary) ←
//! `store` (the `Store` trait; sled only in `store/sled.rs`). Also
//! `config` (layered settings), `init` (CA and first admin) and `dev`
//! (the one-command demo).
#![forbid(unsafe_code)]

pub mod api;
pub mod config;
pub mod console;
pub mod core;
pub mod deploy;
pub mod dev;
pub mod drill_run;
pub mod drills;
pub mod events;
pub mod fleet;
pub mod incidents;
pub mod init;
pub mod layout;
pub mod lures;
pub mod matching;
pub mod metrics;
pub mod model;
pub mod outputs;
mod ratelimit;
pub mod refusals;
pub mod resources;
pub mod sessions;
pub mod stix;
pub mod store;

pub mod tokens;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::ControllerConfig;
use crate::core::Core;
use crate::store::{Committer, Store, StoreError};

/// Why the controller could not start or stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error(
        "{0} does not exist: run `ruse-controller init --data-dir DIR` first (or mount the CA and set ca_cert_file / ca_key_file)"
    )]
    NotInitialised(String),
    #[error(transparent)]
    Init(#[from] init::InitError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot listen: {0}")]
    Listen(#[from] std::io::Error),
    #[error("outputs: {0}")]
    Outputs(#[from] outputs::OutputConfigError),
}

/// A running controller.
#[derive(Debug)]
pub struct Controller {
    core: Arc<Core>,
    listeners: api::server::Listeners,
    metrics_server: Option<(SocketAddr, JoinHandle<()>)>,
    stop: watch::Sender<bool>,
    state_writer: JoinHandle<()>,
    deploy_worker: JoinHandle<()>,
    output_workers: Vec<JoinHandle<()>>,
    committer_task: JoinHandle<()>,
}

impl Controller {
    /// Opens the store, loads the CA, binds the listeners and serves.
    pub async fn start(config: ControllerConfig) -> Result<Self, ControllerError> {
        let ca_cert = config.ca_cert_path();
        if !ca_cert.exists() {
            if !config.init_if_missing || config.ca_cert_file.is_some() {
                return Err(ControllerError::NotInitialised(
                    ca_cert.display().to_string(),
                ));
            }
            init_on_first_start(&config)?;
        }
        // A key mounted from elsewhere (ca_key_file) may be group-readable,
        // as Kubernetes mounts Secrets with fsGroup; never world-readable.
        let ca = init::load_ca_with(
            &ca_cert,
            &config.ca_key_path(),
            config.ca_key_file.is_some(),
        )?;
        let location = config.store_location();
        let store: Arc<dyn Store> = tokio::task::spawn_blocking(move || location.open())
            .await
            .map_err(|e| StoreError::Engine(e.to_string().into()))??;
        let outputs = outputs::Outputs::new(&config.outputs, store.clone())?;
        let (committer, committer_task) = Committer::spawn(store.clone());
        let core = Arc::new(Core::new(config, ca, store, committer, outputs)?);
        core.bootstrap_admin().await?;
        // Desired lure sets exist before any agent can say Hello.
        core.deploy.prepare().await?;
        let (stop, stop_rx) = watch::channel(false);
        // Named before it serves: each session records it.
        core.fleet.set_name(core.config.name_or_default());
        let listeners = api::server::serve(core.clone(), stop_rx.clone()).await?;
        let metrics_server = match core.config.metrics_listen {
            Some(addr) => {
                let core = core.clone();
                Some(metrics::serve(move || core.render_metrics(), addr, stop_rx.clone()).await?)
            }
            None => None,
        };
        let output_workers = core.events.outputs.start(
            core.events.incidents.clone(),
            core.committer.clone(),
            (core.config.output_retry_min, core.config.output_retry_max),
            stop_rx.clone(),
        );
        let state_writer = tokio::spawn(write_fleet_state(core.clone(), stop_rx.clone()));
        if let Some(changes) = core.store.changes() {
            core.events.follow_others()?;
            tokio::spawn(hold_name(core.clone(), stop_rx.clone()));
            tokio::spawn(follow_changes(core.clone(), changes, stop_rx.clone()));
        }
        let deploy_worker = tokio::spawn(core.deploy.clone().run(stop_rx));
        tracing::info!(
            agent_addr = %listeners.agent_addr,
            admin_addr = %listeners.admin_addr,
            trust_domain = %core.ca.trust_domain(),
            agents = core.fleet.len(),
            "controller serving"
        );
        Ok(Controller {
            core,
            listeners,
            metrics_server,
            stop,
            state_writer,
            deploy_worker,
            output_workers,
            committer_task,
        })
    }

    /// Returns (with the reason) once the store refuses all work for good;
    /// never returns while it works.
    pub async fn store_broken(&self) -> Arc<str> {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tick.tick().await;
            if let Some(why) = self.core.store.broken() {
                return why;
            }
        }
    }

    /// Where Prometheus scrapes, when `metrics_listen` is set.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_server.as_ref().map(|(addr, _)| *addr)
    }

    /// Where agents connect.
    pub fn agent_addr(&self) -> SocketAddr {
        self.listeners.agent_addr
    }

    /// Where admins connect (the agent address unless `admin_listen` is set).
    pub fn admin_addr(&self) -> SocketAddr {
        self.listeners.admin_addr
    }

    /// Where the web console listens, when `console_listen` is set.
    pub fn console_addr(&self) -> Option<SocketAddr> {
        self.listeners.console_addr
    }

    pub fn core(&self) -> &Arc<Core> {
        &self.core
    }

    /// Graceful stop: close agent sessions, let calls in flight finish
    /// within `shutdown_grace`, write agent state, flush and close the store.
    /// When this returns the data directory can be opened again.
    pub async fn shutdown(mut self) -> Result<(), ControllerError> {
        let grace = self.core.config.shutdown_grace;
        let deadline = tokio::time::Instant::now() + grace;
        // Watches never end by themselves: end them first.
        self.core.events.close();
        self.core.fleet.close_all();
        let _ = self.stop.send(true);
        let drained = tokio::time::timeout_at(deadline, async {
            for task in &mut self.listeners.tasks {
                let _ = task.await;
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                grace_ms = grace.as_millis() as u64,
                "connections did not drain in time; closing them"
            );
            for task in &self.listeners.tasks {
                task.abort();
            }
        }
        let _ = (&mut self.state_writer).await;
        let _ = (&mut self.deploy_worker).await;
        for w in &mut self.output_workers {
            let _ = tokio::time::timeout_at(deadline, w).await;
        }
        if let Some((_, task)) = &mut self.metrics_server {
            let _ = tokio::time::timeout_at(deadline, task).await;
        }
        // Session tasks end as their connections close; wait for them to
        // release the controller state (bounded by the grace period).
        while Arc::strong_count(&self.core) > 1 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let written = self.core.flush_fleet_state().await?;
        self.core.audit_refusals().await?;
        self.core.events.summarise_floods(true).await?;
        let store = self.core.store.clone();
        tokio::task::spawn_blocking(move || store.flush())
            .await
            .map_err(|e| StoreError::Engine(e.to_string().into()))??;
        let Controller {
            core,
            committer_task,
            ..
        } = self;
        if Arc::strong_count(&core) > 1 {
            tracing::warn!(
                "controller state still in use at shutdown; the store closes when it is released"
            );
        }
        drop(core);
        let _ = committer_task.await;
        tracing::info!(agent_records = written, "controller stopped; store flushed");
        Ok(())
    }
}

/// Writes changed agent state every `state_flush_interval` until stopped.
/// `init_if_missing`: a new CA and first admin in the data directory.
fn init_on_first_start(config: &ControllerConfig) -> Result<(), ControllerError> {
    let invalid = |what: &str, e: &dyn std::fmt::Display| {
        ControllerError::NotInitialised(format!("{} ({what}: {e})", config.data_dir.display()))
    };
    let admin = config.bootstrap_admin.as_deref().unwrap_or("admin");
    let host = config
        .server_names
        .first()
        .cloned()
        .unwrap_or_else(|| "localhost".into());
    let report = init::init(&init::InitOptions {
        data_dir: config.data_dir.clone(),
        trust_domain: config
            .trust_domain
            .parse()
            .map_err(|e| invalid("trust_domain", &e))?,
        controller_url: format!("https://{host}:{}", config.listen.port()),
        admin_name: admin.parse().map_err(|e| invalid("bootstrap_admin", &e))?,
        admin_cert_ttl: config.admin_cert_ttl,
        store: match config.store_location() {
            config::StoreLocation::Postgres(options) => Some(options),
            config::StoreLocation::Sled { .. } => None,
        },
    })?;
    tracing::warn!(
        data_dir = %config.data_dir.display(),
        pin = %report.pin,
        admin = admin,
        "no CA found: created a new one (init_if_missing); admin credentials are in the data directory (`ruse-controller admin-context`)"
    );
    Ok(())
}

/// Holds this controller's name (`controller:<name>`, a lease) and learns
/// which controllers sharing the store are alive, every
/// [`store::LEASE_RENEW`], until stopped; then gives the name up.
async fn hold_name(core: Arc<Core>, mut stop: watch::Receiver<bool>) {
    const PREFIX: &str = "controller:";
    let lease = format!("{PREFIX}{}", core.fleet.name());
    let mut warned = false;
    loop {
        match core.store.lease(&lease, store::LEASE_TTL) {
            Ok(true) => warned = false,
            Ok(false) if !warned => {
                warned = true;
                tracing::error!(
                    name = core.fleet.name(),
                    "another live controller on this database has this name; give each its own `name` (agents' sessions are shown under either)"
                );
            }
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "cannot renew this controller's name"),
        }
        match core.store.live_leases(PREFIX) {
            Ok(names) => core.fleet.set_live_controllers(names.into_iter().collect()),
            Err(e) => tracing::warn!(error = %e, "cannot read which controllers are alive"),
        }
        tokio::select! {
            () = stopped(&mut stop) => break,
            () = tokio::time::sleep(store::LEASE_RENEW) => {}
        }
    }
    if let Err(e) = core.store.release_lease(&lease) {
        tracing::warn!(error = %e, "cannot give up this controller's name");
    }
}

async fn write_fleet_state(core: Arc<Core>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(core.config.state_flush_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stopped(&mut stop) => return,
            _ = tick.tick() => {
                if let Err(e) = core.flush_fleet_state().await {
                    tracing::error!(error = %e, "writing agent state failed; will retry");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                // Refused anonymous admin calls, summarised per source.
                if let Err(e) = core.audit_refusals().await {
                    tracing::error!(error = %e, "writing refused calls to the audit log failed");
                }
                // Agents that stopped flooding get their last summary.
                if let Err(e) = core.events.summarise_floods(false).await {
                    tracing::error!(error = %e, "writing event quota summaries failed");
                }
                // Retention and the store budget, a bounded step at a time.
                let trim = {
                    let core = core.clone();
                    tokio::task::spawn_blocking(move || core.events.trim()).await
                };
                if let Ok(Err(e)) = trim {
                    tracing::error!(error = %e, "deleting old events failed");
                }
            }
        }
    }
}

/// Takes in what other controllers sharing the store changed.
async fn follow_changes(
    core: Arc<Core>,
    mut changes: tokio::sync::broadcast::Receiver<store::Change>,
    mut stop: watch::Receiver<bool>,
) {
    use tokio::sync::broadcast::error::{RecvError, TryRecvError};
    loop {
        let first = tokio::select! {
            () = stopped(&mut stop) => return,
            change = changes.recv() => change,
        };
        // What arrived meanwhile is taken in together (a replica writing
        // a thousand agents' state is one read, not a thousand).
        let mut batch = Changed::default();
        match first {
            Ok(change) => batch.add(change),
            Err(RecvError::Lagged(_)) => batch.resync = true,
            Err(RecvError::Closed) => return,
        }
        loop {
            match changes.try_recv() {
                Ok(change) => batch.add(change),
                Err(TryRecvError::Lagged(_)) => batch.resync = true,
                Err(TryRecvError::Empty | TryRecvError::Closed) => break,
            }
        }
        // Store reads block: off the runtime's workers.
        let core = core.clone();
        let result = tokio::task::spawn_blocking(move || batch.take_in(&core))
            .await
            .unwrap_or_else(|e| Err(StoreError::Engine(e.to_string().into())));
        if let Err(e) = result {
            tracing::warn!(error = %e, "taking in another controller's change failed");
        }
    }
}

/// Changes other controllers made, gathered from the feed.
#[derive(Debug, Default)]
struct Changed {
    /// Missed some: take in everything.
    resync: bool,
    agents: std::collections::BTreeSet<ruse_proto::types::AgentId>,
    /// Deployer tables (campaigns, lures, decoys, allow rules,
    /// suppressions).
    tables: std::collections::BTreeSet<String>,
    incidents: bool,
    events: bool,
    queued: bool,
}

impl Changed {
    fn add(&mut self, change: store::Change) {
        match change {
            store::Change::Resync => self.resync = true,
            store::Change::Record { table, key } => match table.as_str() {
                "agents" => {
                    if let Ok(id) = key.parse() {
                        self.agents.insert(id);
                    }
                }
                "incidents" => self.incidents = true,
                "events" => self.events = true,
                "output_queue" => self.queued = true,
                _ => {
                    self.tables.insert(table);
                }
            },
        }
    }

    fn take_in(self, core: &Core) -> Result<(), StoreError> {
        if self.resync {
            core.events.outputs.wake();
            for table in [
                "campaigns",
                "lures",
                "decoys",
                "allow_rules",
                "suppressions",
            ] {
                core.deploy.reload(table)?;
            }
            core.agents_changed(None)?;
            core.events.incidents.catch_up()?;
            return core.events.take_in_others();
        }
        if self.queued {
            core.events.outputs.wake();
        }
        for table in &self.tables {
            core.deploy.reload(table)?;
        }
        if !self.agents.is_empty() {
            // One query for them all: while 10,000 agents acknowledge a
            // campaign at other controllers, reading every agent per burst
            // of their changes was 50–130 ms of the database's time each.
            let ids: Vec<ruse_proto::types::AgentId> = self.agents.into_iter().collect();
            core.agents_changed(Some(&ids))?;
        }
        if self.incidents {
            core.events.incidents.catch_up()?;
        }
        if self.events {
            core.events.take_in_others()?;
        }
        Ok(())
    }
}

/// Resolves once `stop` turns true (or its sender is gone).
pub(crate) async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

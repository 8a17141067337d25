//! The Ruse endpoint agent.
//!
//! [`run`] enrolls the agent if it has no valid identity, then keeps one
//! session with the controller open: it says Hello, sends heartbeats at the
//! interval the controller sets, renews its certificate at ~70 % of its
//! lifetime (with a fresh key), and reconnects with jittered exponential
//! backoff. Conditions retrying cannot fix — revoked, unknown to the
//! controller, a rejected token, a CA that does not match the pin — end
//! [`run`] with an [`AgentError`] that says what to do.
// Unsafe code only in the Windows modules that call the Win32 API.
#![deny(unsafe_code)]

pub mod config;
pub mod decoys;
pub mod detect;

pub mod identity;
pub mod lures;
pub mod outbox;
pub mod platform;
mod protocol;
pub mod status;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use ruse_pki::PkiError;
use ruse_proto::event::AgentEvent;
use ruse_proto::types::{AgentId, UnixMs, random_bytes};

pub use config::AgentConfig;
use detect::{Detector, Watched};
use identity::{AgentIdentity, StateError};
use lures::{HomeDirs, LureEngine};
use outbox::EventSink;
use platform::{FileWatcher, Native, Platform};
use protocol::{enroll, session};

/// The planting engine, shared by the sessions of one agent process.
pub(crate) type SharedEngine = Arc<Mutex<LureEngine>>;

/// Locks the engine; a panic elsewhere does not make its state unusable.
pub(crate) fn lock(engine: &SharedEngine) -> std::sync::MutexGuard<'_, LureEngine> {
    engine.lock().unwrap_or_else(|e| e.into_inner())
}

/// Opens the planting engine for `config` (the root must exist).
pub fn open_engine(config: &AgentConfig) -> Result<LureEngine, AgentError> {
    ruse_pki::create_private_dir(&config.state_dir).map_err(|e| {
        AgentError::Lures(lures::LureError::Fs(lures::fs::FsError::Io {
            path: config.state_dir.display().to_string(),
            source: std::io::Error::other(e.to_string()),
        }))
    })?;
    Ok(LureEngine::open(
        &config.root,
        HomeDirs::new(config.home_dirs.clone()),
        &config.state_dir,
    )?)
}

/// What a session needs besides its identity.
#[derive(Debug, Clone)]
pub(crate) struct Shared {
    pub engine: SharedEngine,
    pub sink: EventSink,
    /// One copy of the watched set, shared by the channel, the detector
    /// and `marked` (a thousand lures are ~300 KiB a copy).
    pub watched: Arc<watch::Sender<Arc<Watched>>>,
    /// What the detector watches now.
    pub marked: watch::Receiver<Arc<Watched>>,
    pub watcher_mode: &'static str,
    /// Told when a watched lure was changed, deleted or renamed.
    pub drifted: Arc<tokio::sync::Notify>,
    pub rate_limited: Arc<std::sync::atomic::AtomicU64>,
    pub decoys: Arc<tokio::sync::Mutex<decoys::DecoyManager>>,
}

impl Shared {
    /// Tells the detector about changed lures and waits (up to a second)
    /// until they are watched, so an acknowledged lure is a watched lure.
    pub async fn rewatch(&self) {
        let watched = lock(&self.engine).watched();
        self.watched.send_if_modified(|w| {
            if **w == watched {
                return false;
            }
            *w = Arc::new(watched);
            true
        });
        // Unchanged or not, wait until the detector holds the current set.
        let want = self.watched.borrow().clone();
        let mut marked = self.marked.clone();
        if tokio::time::timeout(
            Duration::from_secs(1),
            marked.wait_for(|m| Arc::ptr_eq(m, &want)),
        )
        .await
        .is_err()
        {
            tracing::warn!("the detector did not take up changed lures within a second");
        }
    }
}

/// Checks planted lures and repairs drift; each drift becomes an event.
/// Returns the problems left.
pub(crate) async fn verify(shared: &Shared) -> Vec<String> {
    let engine = shared.engine.clone();
    // Only what the events need, not a copy of every lure.
    let drifts = tokio::task::spawn_blocking(move || {
        let mut e = lock(&engine);
        let drifts: Vec<_> = e
            .verify_and_repair()
            .into_iter()
            .map(|d| {
                let lure = e.lures().get(&d.lure_id);
                let revision = lure.map_or(0, |l| l.revision);
                let template = lure.map(|l| l.template.clone()).unwrap_or_default();
                (d, revision, template)
            })
            .collect();
        e.activity().expire();
        drifts
    })
    .await
    .unwrap_or_default();
    let mut problems = Vec::new();
    let mut events = Vec::new();
    for (d, revision, template) in drifts {
        let what = match d.what {
            lures::DriftKind::Deleted => "deleted",
            lures::DriftKind::Modified => "modified",
        };
        if d.repaired {
            tracing::warn!(lure = %d.lure_id, path = %d.path.display(), what, "lure drift repaired");
        } else {
            tracing::error!(lure = %d.lure_id, path = %d.path.display(), what, "lure drift could not be repaired");
            problems.push(format!(
                "lure {} at {} was {what} and could not be repaired",
                d.lure_id,
                d.path.display()
            ));
        }
        events.push(AgentEvent {
            id: ruse_proto::types::new_ulid(),
            lure_id: d.lure_id.clone(),
            lure_revision: revision,
            kind: "drift".into(),
            observed_ms: UnixMs::now().0,
            path: d.path.display().to_string(),
            attribution: "verify".into(),
            template,
            detail: format!(
                "{what}; {}",
                if d.repaired {
                    "repaired"
                } else {
                    "could not be repaired"
                }
            ),
            ..Default::default()
        });
    }
    if let Err(e) = shared.sink.record(events).await {
        tracing::error!(error = %e, "cannot record drift events");
    }
    shared.rewatch().await;
    problems.extend(shared.decoys.lock().await.problems());
    problems.extend(Native::detection_problems());
    problems
}

/// Programs a drill reads a lure with, first found wins.
const DRILL_READERS: &[&str] = &["/usr/bin/cat", "/bin/cat"];

/// A drill the controller asked for: read this lure now.
#[derive(Debug, Clone)]
pub(crate) struct Drill {
    pub id: String,
    pub lure_id: String,
}

/// Trips a lure for real: another process reads one of its files, so the
/// watcher reports the read exactly as it would an intruder's (the agent's
/// own reads are never reported). The controller recognises the event.
pub(crate) fn drill(shared: &Shared, drill: &Drill) {
    let file = lock(&shared.engine)
        .lures()
        .get(&drill.lure_id)
        .and_then(|l| l.files.first().map(|f| f.path().to_path_buf()));
    let Some(file) = file else {
        tracing::warn!(drill = %drill.id, lure = %drill.lure_id, "drill names a lure this agent has not planted");
        return;
    };
    let Some(reader) = DRILL_READERS
        .iter()
        .find(|p| std::path::Path::new(p).exists())
    else {
        tracing::error!(drill = %drill.id, "no reader program for a drill (cat)");
        return;
    };
    tracing::info!(drill = %drill.id, lure = %drill.lure_id, path = %file.display(), "drill: reading a lure");
    match std::process::Command::new(reader)
        .arg(&file)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
    {
        // Reaped off the async threads.
        Ok(mut child) => {
            std::thread::spawn(move || child.wait());
        }
        Err(e) => tracing::error!(drill = %drill.id, error = %e, "drill reader did not start"),
    }
}

/// Conditions that stop the agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("agent {0} has been revoked by the controller; it will not reconnect")]
    Revoked(AgentId),
    #[error(
        "the controller does not know agent {id}; remove {state} and enroll again with a new token"
    )]
    Unknown { id: AgentId, state: String },
    #[error("enrollment refused: {0}")]
    TokenRejected(String),
    #[error("this agent must enroll but no token file was given (--token-file)")]
    NoToken,
    #[error("cannot read token file {path}: {source}")]
    TokenFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}; check --ca-pin against the pin `ruse-controller init` printed")]
    PinMismatch(String),
    #[error("the controller is not trusted: {0}")]
    Untrusted(String),
    #[error(
        "the controller rejected this agent's certificate ({0}); remove the state directory and enroll again"
    )]
    CertificateRejected(String),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("lures: {0}")]
    Lures(#[from] lures::LureError),
    #[error(transparent)]
    Outbox(#[from] outbox::OutboxError),
    #[error("cannot watch lure files: {0}")]
    Watch(std::io::Error),
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error("decoys: {0}")]
    Decoys(#[from] decoys::DecoyError),
    #[error("cannot enroll: {0}")]
    Unreachable(String),
    /// A certificate was refused for its validity period: the clocks of
    /// this host and the controller disagree.
    #[error("cannot enroll: {0}")]
    Clock(String),
}

/// What the agent is doing, for the embedding program, tests and the
/// status file ([`status`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AgentStatus {
    pub agent_id: Option<AgentId>,
    pub connected: bool,
    /// Sessions opened so far.
    pub sessions: u64,
    /// Certificates renewed so far.
    pub renewals: u64,
    /// Updates received from the controller so far.
    pub updates: u64,
    /// Lures currently applied.
    pub lures: usize,
    /// Decoy services listening now.
    pub decoy_services: usize,
    /// Events waiting in the outbox for the controller's acknowledgement.
    pub outbox_depth: usize,
    /// Events the controller acknowledged so far (this process).
    pub events_acked: u64,
    /// What the last heartbeat reported as wrong.
    pub problems: Vec<String>,
    /// The last events the controller acknowledged, oldest first (at most
    /// [`RECENT_ACKED`]): what an administrator checks a test read by.
    #[serde(default)]
    pub recent_acked: std::collections::VecDeque<AckedEvent>,
    pub last_error: Option<String>,
}

/// How many acknowledged events the status keeps.
pub const RECENT_ACKED: usize = 16;

/// An event the controller acknowledged (stored), as the status shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AckedEvent {
    pub id: String,
    pub lure_id: String,
    pub kind: String,
    pub path: String,
    pub observed_ms: i64,
}

impl AgentStatus {
    /// Records events as acknowledged, keeping the last [`RECENT_ACKED`].
    pub fn acknowledged(&mut self, events: impl IntoIterator<Item = AckedEvent>) {
        for e in events {
            keep_recent(&mut self.recent_acked, e);
        }
    }
}

/// Appends `item`, dropping the oldest past [`RECENT_ACKED`].
pub(crate) fn keep_recent<T>(queue: &mut std::collections::VecDeque<T>, item: T) {
    if queue.len() == RECENT_ACKED {
        queue.pop_front();
    }
    queue.push_back(item);
}

/// A uniformly random number in [0, 1).
fn random_fraction() -> f64 {
    let mut bytes = [0u8; 8];
    random_bytes(&mut bytes);
    (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64
}

/// Exponential backoff with jitter: each wait is between half and all of
/// the current step, and the step doubles up to `max`.
#[derive(Debug)]
struct Backoff {
    min: Duration,
    max: Duration,
    step: Duration,
}

impl Backoff {
    fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            min,
            max,
            step: min,
        }
    }

    fn next(&mut self) -> Duration {
        let step = self.step;
        self.step = (self.step * 2).min(self.max);
        step.mul_f64(0.5 + 0.5 * random_fraction())
    }

    fn reset(&mut self) {
        self.step = self.min;
    }
}

/// How a failed attempt should be handled.
#[derive(Debug)]
enum Failure {
    Fatal(AgentError),
    /// Transient: back off and try again.
    Retry(String),
    /// The controller asked for this delay.
    RetryAfter(Duration),
    /// The certificate is no longer accepted because it expired: enroll again.
    Expired,
    /// A certificate was refused for its validity period although it is
    /// current by the other side's clock: one of the clocks is wrong. Back
    /// off and try again (a clock put right fixes it).
    Clock(String),
}

impl From<StateError> for Failure {
    fn from(e: StateError) -> Self {
        Failure::Fatal(e.into())
    }
}

impl From<PkiError> for Failure {
    fn from(e: PkiError) -> Self {
        Failure::Fatal(e.into())
    }
}

/// Resolves once `shutdown` turns true (or its sender is gone).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}

/// Sleeps for `d` unless shutdown is requested first; returns false on
/// shutdown.
async fn pause(d: Duration, shutdown: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        () = tokio::time::sleep(d) => true,
        () = stopped(shutdown) => false,
    }
}

/// An agent, started: its planting engine open, its outbox open, and its
/// detector watching. [`Agent::events`] is where anything inside the agent
/// (watchers, decoy services) records events.
#[derive(Debug)]
pub struct Agent {
    config: AgentConfig,
    shared: Shared,
    detection: tokio::task::JoinHandle<()>,
    stop_detection: watch::Sender<bool>,
}

impl Agent {
    /// Opens the state directory and starts watching planted lures. Call
    /// inside a tokio runtime.
    pub fn start(config: AgentConfig) -> Result<Self, AgentError> {
        let engine = open_engine(&config)?;
        let activity = engine.activity();
        let watched = engine.watched();
        let engine: SharedEngine = Arc::new(Mutex::new(engine));
        let sink = EventSink::new(outbox::Outbox::open(
            &config.state_dir.join("outbox"),
            config.outbox_capacity,
        )?);
        let watcher = Native::watcher().map_err(AgentError::Watch)?;
        let watcher_mode = FileWatcher::mode(&watcher);
        let detector = Detector::new(config.detect, activity);
        let rate_limited = detector.rate_limited_counter();
        let (watched_tx, watched_rx) = watch::channel(Arc::new(watched));
        let (marked_tx, marked) = watch::channel(Arc::new(Watched::default()));
        // Its own stop signal: raised however `run` ends, so pending events
        // are recorded without waiting for the caller's shutdown.
        let (stop_detection, detection_stop) = watch::channel(false);
        let decoys = decoys::DecoyManager::open(
            &config.state_dir,
            sink.clone(),
            config.decoy_limits,
            rate_limited.clone(),
        )?;
        let drifted = Arc::new(tokio::sync::Notify::new());
        let detection = tokio::spawn(detect::run(
            watcher,
            detector,
            sink.clone(),
            watched_rx,
            marked_tx,
            drifted.clone(),
            detection_stop,
        ));
        Ok(Agent {
            config,
            shared: Shared {
                engine,
                sink,
                watched: Arc::new(watched_tx),
                marked,
                watcher_mode,
                drifted,
                rate_limited,
                decoys: Arc::new(tokio::sync::Mutex::new(decoys)),
            },
            detection,
            stop_detection,
        })
    }

    /// Where events are recorded: durable in the outbox, then sent.
    pub fn events(&self) -> EventSink {
        self.shared.sink.clone()
    }

    /// Runs until `shutdown` turns true (returns `Ok`) or a condition that
    /// retrying cannot fix (returns the error).
    pub async fn run(
        self,
        mut shutdown: watch::Receiver<bool>,
        status: watch::Sender<AgentStatus>,
    ) -> Result<(), AgentError> {
        let Agent {
            config,
            shared,
            detection,
            stop_detection,
        } = self;
        let mut backoff = Backoff::new(config.min_backoff, config.max_backoff);
        // After a restart, check what is planted instead of rewriting it,
        // and start the decoys this agent ran.
        shared.decoys.lock().await.resume().await;
        let problems = verify(&shared).await;
        let decoy_services = shared.decoys.lock().await.services();
        status.send_modify(|s| {
            s.decoy_services = decoy_services;
            s.lures = lock(&shared.engine).applied().len();
            s.outbox_depth = shared.sink.depth();
        });
        let result = run_sessions(
            &config,
            &shared,
            problems,
            &mut shutdown,
            &status,
            &mut backoff,
        )
        .await;
        // Let the detector record what it was coalescing.
        let _ = stop_detection.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(2), detection).await;
        result
    }
}

/// Enrolls unless this state directory already holds a valid identity, and
/// returns the agent id and whether it enrolled now. For installers: a
/// wrong token, pin or address fails here, with the reason, instead of in
/// a service's retry loop.
pub async fn enroll_once(config: &AgentConfig) -> Result<(AgentId, bool), AgentError> {
    if let Some(identity) = AgentIdentity::load(&config.state_dir)?
        && !identity.expired(UnixMs::now())
    {
        return Ok((identity.id, false));
    }
    match enroll::enroll(config).await {
        Ok(identity) => Ok((identity.id, true)),
        Err(Failure::Fatal(e)) => Err(e),
        Err(Failure::Retry(reason)) => Err(AgentError::Unreachable(reason)),
        Err(Failure::RetryAfter(wait)) => Err(AgentError::Unreachable(format!(
            "the controller is busy; retry in {}s",
            wait.as_secs().max(1)
        ))),
        Err(Failure::Expired) => Err(AgentError::Unreachable(
            "the new certificate is already expired; check the clocks".into(),
        )),
        Err(Failure::Clock(reason)) => Err(AgentError::Clock(reason)),
    }
}

/// Tells the controller that the agent with the identity in `state_dir` is
/// being uninstalled; the controller revokes it with `reason`, so its
/// inventory and rollouts stop waiting for it. Returns the agent's id.
pub async fn deregister(
    controller: &ruse_proto::transport::ControllerUrl,
    dial: &ruse_proto::transport::DialOptions,
    state_dir: &std::path::Path,
    reason: &str,
) -> Result<AgentId, AgentError> {
    let identity = AgentIdentity::load(state_dir)?.ok_or_else(|| {
        AgentError::Unreachable(format!("{} holds no agent identity", state_dir.display()))
    })?;
    let tls = ruse_pki::client_config(
        &identity.trust_bundle,
        vec![identity.cert.clone()],
        identity.key.to_der(),
    )?;
    let channel = ruse_proto::transport::connect(controller, tls, dial)
        .await
        .map_err(|e| AgentError::Unreachable(e.to_string()))?;
    enroll::deregister(channel, reason).await?;
    Ok(identity.id)
}

/// Starts and runs an agent until `shutdown` turns true (returns `Ok`) or a
/// condition that retrying cannot fix (returns the error).
pub async fn run(
    config: AgentConfig,
    shutdown: watch::Receiver<bool>,
    status: watch::Sender<AgentStatus>,
) -> Result<(), AgentError> {
    Agent::start(config)?.run(shutdown, status).await
}

async fn run_sessions(
    config: &AgentConfig,
    shared: &Shared,
    problems: Vec<String>,
    shutdown: &mut watch::Receiver<bool>,
    status: &watch::Sender<AgentStatus>,
    backoff: &mut Backoff,
) -> Result<(), AgentError> {
    let mut problems = Some(problems);
    // Which controller address is dialled: the next one after a failure
    // or a session's end (replicas; one address wraps to itself).
    let mut dial = 0usize;
    loop {
        if *shutdown.borrow() {
            return Ok(());
        }
        let mut identity = match AgentIdentity::load(&config.state_dir)? {
            Some(identity) if !identity.expired(UnixMs::now()) => identity,
            found => {
                if let Some(old) = found {
                    tracing::warn!(agent = %old.id, "certificate expired; enrolling again");
                }
                match enroll::enroll(&config.dialling(dial)).await {
                    Ok(identity) => {
                        tracing::info!(agent = %identity.id, "enrolled");
                        backoff.reset();
                        identity
                    }
                    Err(failure) => {
                        dial += 1;
                        if !handle_failure(failure, backoff, shutdown, status).await? {
                            return Ok(());
                        }
                        continue;
                    }
                }
            }
        };
        status.send_modify(|s| s.agent_id = Some(identity.id.clone()));
        loop {
            let outcome = session::run_once(
                &config.dialling(dial),
                &mut identity,
                shared,
                problems.take().unwrap_or_default(),
                shutdown,
                status,
            )
            .await;
            status.send_modify(|s| s.connected = false);
            match outcome {
                Ok(session::End::Shutdown) => return Ok(()),
                Ok(session::End::Renewed) => {
                    status.send_modify(|s| s.renewals += 1);
                    backoff.reset();
                }
                Ok(session::End::Closed { lasted }) => {
                    dial += 1;
                    if lasted > Duration::from_secs(30) {
                        backoff.reset();
                    }
                    if !pause(backoff.next(), shutdown).await {
                        return Ok(());
                    }
                }
                Err(Failure::Expired) => break,
                Err(failure) => {
                    dial += 1;
                    if !handle_failure(failure, backoff, shutdown, status).await? {
                        return Ok(());
                    }
                }
            }
        }
    }
}

/// Waits as the failure requires. `Ok(false)` on shutdown, `Err` if fatal.
async fn handle_failure(
    failure: Failure,
    backoff: &mut Backoff,
    shutdown: &mut watch::Receiver<bool>,
    status: &watch::Sender<AgentStatus>,
) -> Result<bool, AgentError> {
    let wait = match failure {
        Failure::Fatal(e) => {
            status.send_modify(|s| s.last_error = Some(e.to_string()));
            return Err(e);
        }
        Failure::Retry(reason) => {
            let wait = backoff.next();
            tracing::warn!(error = %reason, retry_in_ms = wait.as_millis() as u64, "controller unreachable");
            status.send_modify(|s| s.last_error = Some(reason));
            wait
        }
        Failure::RetryAfter(wait) => {
            tracing::info!(
                retry_in_ms = wait.as_millis() as u64,
                "controller asked to retry later"
            );
            wait
        }
        Failure::Clock(reason) => {
            let wait = backoff.next();
            tracing::error!(error = %reason, retry_in_ms = wait.as_millis() as u64, "the clocks of this host and the controller disagree");
            status.send_modify(|s| s.last_error = Some(reason));
            wait
        }
        Failure::Expired => Duration::ZERO,
    };
    Ok(pause(wait, shutdown).await)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(800));
        let waits: Vec<_> = (0..6).map(|_| b.next()).collect();
        for (wait, step) in waits.iter().zip([100u64, 200, 400, 800, 800, 800]) {
            assert!(
                *wait >= Duration::from_millis(step / 2) && *wait <= Duration::from_millis(step),
                "{wait:?} not within step {step}ms"
            );
        }
        b.reset();
        assert!(b.next() <= Duration::from_millis(100));
    }

    #[test]
    fn random_fraction_is_in_range() {
        for _ in 0..1000 {
            let f = random_fraction();
            assert!((0.0..1.0).contains(&f));
        }
    }
}

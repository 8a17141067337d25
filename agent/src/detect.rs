//! From raw file accesses to lure events.
//!
//! - Accesses by the agent itself (planting, verifying, removing) are
//!   ignored: by process id under fanotify, and by a short window after
//!   the agent touched the path under inotify (which cannot tell who).
//! - The operations of one process on one lure are coalesced into one
//!   event listing them (`cat` = open, read, close), emitted at close, at a
//!   delete or rename, or after a short window.
//! - Each lure raises at most `per_lure_per_second` events a second; what
//!   the limit drops is counted on the next event and in heartbeats.
//! - Allow rules (process path, user, template) mark known benign readers:
//!   their events are recorded with `allowed`, not raised.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use ruse_proto::convert::EventProcess;
use ruse_proto::event::AgentEvent;
use ruse_proto::spec::AllowRule;
use ruse_proto::types::{UnixMs, new_ulid};

use crate::outbox::EventSink;
use crate::platform::{Access, FileWatcher, Native, Op, Platform, Via};

/// Paths the agent itself touched recently (for inotify and Windows'
/// directory changes, which report no process): when it last read each
/// one (verifying) and when it last wrote it (planting, repairing,
/// removing). A read by the agent explains an open or a read, never a
/// change: a lure deleted just after a verification is still reported.
#[derive(Debug, Default)]
pub struct SelfActivity {
    touched: Mutex<HashMap<PathBuf, Touched>>,
}

#[derive(Debug, Clone, Copy)]
struct Touched {
    any: Instant,
    wrote: Option<Instant>,
}

/// How long after the agent touched a path its events are its own.
const SELF_WINDOW: Duration = Duration::from_secs(2);

impl SelfActivity {
    /// The agent is about to change `path` (or read it).
    pub fn touch(&self, path: &Path) {
        self.record(path, true);
    }

    /// The agent is about to read `path` only.
    pub fn read(&self, path: &Path) {
        self.record(path, false);
    }

    fn record(&self, path: &Path, wrote: bool) {
        let mut touched = self.touched.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        // `expire` runs at each verify; this bounds the map between verifies
        // (planting or repairing many lures at once).
        if touched.len() > 10_000 {
            touched.retain(|_, t| now.duration_since(t.any) < SELF_WINDOW);
        }
        let entry = touched.entry(path.to_path_buf()).or_insert(Touched {
            any: now,
            wrote: None,
        });
        entry.any = now;
        if wrote {
            entry.wrote = Some(now);
        }
    }

    /// Forgets touches older than the window, giving their memory back
    /// (after planting a thousand lures, ~300 KiB that would otherwise
    /// stay until the next ten thousand touches).
    pub fn expire(&self) {
        let mut touched = self.touched.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        touched.retain(|_, t| now.duration_since(t.any) < SELF_WINDOW);
        touched.shrink_to_fit();
    }

    /// Whether `op` on `path` now is the agent's own doing.
    fn explains(&self, path: &Path, op: Op, now: Instant) -> bool {
        let touched = self.touched.lock().unwrap_or_else(|e| e.into_inner());
        let within = |t: Instant| now.saturating_duration_since(t) < SELF_WINDOW;
        touched.get(path).is_some_and(|t| match op {
            Op::Modify | Op::Delete | Op::Rename => t.wrote.is_some_and(within),
            Op::Open | Op::Read | Op::Close => within(t.any),
        })
    }
}

/// A lure a watched path belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LureRef {
    pub id: String,
    pub revision: u64,
    pub template: String,
    /// Programs whose reads of this file are its ordinary use (a block in
    /// a shared file); `*` for every reader. Empty for whole-file lures.
    pub ordinary: Arc<[String]>,
}

/// Where a program must live for its name to vouch for it: a copy of a
/// dumper named `ssh` in /tmp or a home is not the ssh client.
const SYSTEM_DIRS: &[&str] = &["/usr/", "/bin/", "/sbin/", "/opt/", "/snap/", "/nix/store/"];

/// What the detector watches and how it judges.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Watched {
    pub files: HashMap<PathBuf, LureRef>,
    pub rules: Vec<AllowRule>,
}

/// Detector settings.
#[derive(Debug, Clone, Copy)]
pub struct DetectConfig {
    pub coalesce: Duration,
    pub per_lure_per_second: u32,
}

impl Default for DetectConfig {
    fn default() -> Self {
        DetectConfig {
            coalesce: Duration::from_millis(200),
            per_lure_per_second: 5,
        }
    }
}

#[derive(Debug)]
struct Pending {
    first: Instant,
    observed: UnixMs,
    lure: LureRef,
    path: PathBuf,
    ops: BTreeSet<Op>,
    process: Option<EventProcess>,
    via: Via,
}

#[derive(Debug, Default)]
struct Rate {
    window: Option<Instant>,
    count: u32,
    dropped: u32,
}

/// Coalesces, filters and rate-limits accesses into events.
#[derive(Debug)]
pub struct Detector {
    config: DetectConfig,
    me: i32,
    watched: Arc<Watched>,
    activity: Arc<SelfActivity>,
    pending: HashMap<(String, Option<i32>), Pending>,
    rates: HashMap<String, Rate>,
    rate_limited: Arc<AtomicU64>,
}

impl Detector {
    pub fn new(config: DetectConfig, activity: Arc<SelfActivity>) -> Self {
        Detector {
            config,
            me: i32::try_from(std::process::id()).unwrap_or(-1),
            watched: Arc::default(),
            activity,
            pending: HashMap::new(),
            rates: HashMap::new(),
            rate_limited: Arc::new(AtomicU64::new(0)),
        }
    }

    pub fn set_watched(&mut self, watched: Arc<Watched>) {
        self.watched = watched;
    }

    /// Events dropped by the rate limit so far.
    pub fn rate_limited(&self) -> u64 {
        self.rate_limited.load(Ordering::Relaxed)
    }

    /// The counter behind [`Detector::rate_limited`], to read elsewhere.
    pub fn rate_limited_counter(&self) -> Arc<AtomicU64> {
        self.rate_limited.clone()
    }

    /// Takes in accesses; returns the events they complete.
    pub fn observe(&mut self, accesses: Vec<Access>, now: Instant) -> Vec<AgentEvent> {
        let mut done = Vec::new();
        for access in accesses {
            if access.pid == Some(self.me) {
                continue;
            }
            if !access.via.attributed() && self.activity.explains(&access.path, access.op, now) {
                continue;
            }
            let Some(lure) = self.watched.files.get(&access.path).cloned() else {
                continue;
            };
            let key = (lure.id.clone(), access.pid);
            let entry = self.pending.entry(key.clone()).or_insert_with(|| Pending {
                first: now,
                observed: UnixMs::now(),
                process: access
                    .process
                    .clone()
                    .or_else(|| access.pid.and_then(Native::process)),
                lure,
                path: access.path.clone(),
                ops: BTreeSet::new(),
                via: access.via,
            });
            entry.ops.insert(access.op);
            if matches!(access.op, Op::Close | Op::Delete | Op::Rename)
                && let Some(p) = self.pending.remove(&key)
                && let Some(event) = self.emit(p, now)
            {
                done.push(event);
            }
        }
        done
    }

    /// Events whose coalescing window has passed.
    pub fn flush_due(&mut self, now: Instant) -> Vec<AgentEvent> {
        let due: Vec<_> = self
            .pending
            .iter()
            .filter(|(_, p)| now.duration_since(p.first) >= self.config.coalesce)
            .map(|(k, _)| k.clone())
            .collect();
        let mut out = Vec::new();
        for key in due {
            if let Some(p) = self.pending.remove(&key)
                && let Some(event) = self.emit(p, now)
            {
                out.push(event);
            }
        }
        out
    }

    /// Everything pending, now (at shutdown).
    pub fn flush_all(&mut self, now: Instant) -> Vec<AgentEvent> {
        let pending: Vec<Pending> = self.pending.drain().map(|(_, p)| p).collect();
        pending
            .into_iter()
            .filter_map(|p| self.emit(p, now))
            .collect()
    }

    /// When the next pending event falls due.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.pending
            .values()
            .map(|p| p.first + self.config.coalesce)
            .min()
    }

    fn emit(&mut self, p: Pending, now: Instant) -> Option<AgentEvent> {
        let rate = self.rates.entry(p.lure.id.clone()).or_default();
        let fresh = rate
            .window
            .is_none_or(|w| now.duration_since(w) >= Duration::from_secs(1));
        if fresh {
            rate.window = Some(now);
            rate.count = 0;
        }
        if rate.count >= self.config.per_lure_per_second {
            rate.dropped += 1;
            self.rate_limited.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        rate.count += 1;
        let dropped_before = std::mem::take(&mut rate.dropped);
        let kind = if p.ops.contains(&Op::Delete) {
            "delete"
        } else if p.ops.contains(&Op::Rename) {
            "rename"
        } else if p.ops.contains(&Op::Modify) {
            "modify"
        } else {
            "touch"
        };
        let rule = if kind == "touch" {
            ordinary_reader(&p)
        } else {
            None
        }
        .or_else(|| self.allow_rule(&p));
        Some(AgentEvent {
            id: new_ulid(),
            seq: 0,
            lure_id: p.lure.id,
            lure_revision: p.lure.revision,
            kind: kind.into(),
            observed_ms: p.observed.0,
            path: p.path.display().to_string(),
            process: p.process,
            operations: p.ops.iter().map(|o| o.as_str().to_owned()).collect(),
            attribution: match p.via {
                Via::Fanotify => "fanotify".into(),
                Via::Inotify => "inotify (no process attribution)".into(),
                Via::DirectoryChanges => "directory changes (no process attribution)".into(),
                Via::Audit => "object-access auditing".into(),
            },
            allowed: rule.is_some(),
            allow_rule: rule.unwrap_or_default(),
            dropped_before,
            template: p.lure.template,
            detail: String::new(),
            ..Default::default()
        })
    }

    fn allow_rule(&self, p: &Pending) -> Option<String> {
        self.watched
            .rules
            .iter()
            .find(|r| {
                // The executable, or for an interpreter its script (a
                // Python backup tool is `/usr/bin/borg`, not python3).
                let matches = |path: &str| match r.process.strip_suffix('*') {
                    Some(prefix) => path.starts_with(prefix),
                    None => path == r.process,
                };
                let process_ok = r.process.is_empty()
                    || p.process.as_ref().is_some_and(|proc| {
                        matches(&proc.exe) || program(proc).is_some_and(matches)
                    });
                let user_ok =
                    r.user.is_empty() || p.process.as_ref().is_some_and(|proc| proc.user == r.user);
                let template_ok = r.template.is_empty() || r.template == p.lure.template;
                process_ok && user_ok && template_ok
            })
            .map(|r| r.name.clone())
    }
}

/// `ordinary reader (NAME)` when the process that only read a shared file
/// is one of the programs that read it as a matter of course.
fn ordinary_reader(p: &Pending) -> Option<String> {
    if p.lure.ordinary.iter().any(|r| r == "*") {
        return Some("ordinary reader (every program reads this file)".into());
    }
    let program = program(p.process.as_ref()?)?;
    if !SYSTEM_DIRS.iter().any(|d| program.starts_with(d)) {
        return None;
    }
    let name = Path::new(program).file_name()?.to_str()?;
    p.lure
        .ordinary
        .iter()
        .any(|r| r == name)
        .then(|| format!("ordinary reader ({name})"))
}

/// The program a process runs: its executable, or for an interpreter (the
/// AWS CLI is Python) the script it was started with, the first argument
/// that is not an option. `python3 -c ...` and `bash -c ...` have none.
fn program(p: &EventProcess) -> Option<&str> {
    let exe = Path::new(&p.exe).file_name()?.to_str()?;
    let interpreter = ["python", "perl", "ruby", "node", "php"]
        .iter()
        .any(|i| exe.starts_with(i))
        || matches!(exe, "sh" | "bash" | "dash" | "zsh" | "ksh");
    if !interpreter {
        return Some(&p.exe);
    }
    let mut args = p.cmdline.split(' ').skip(1);
    loop {
        let arg = args.next()?;
        match arg {
            // Options that take the program text or a module: no script.
            "-c" | "-m" | "-e" | "-E" => return None,
            a if a.starts_with('-') => {}
            script => return Some(script),
        }
    }
}

/// Runs the watcher and detector until `stop`, re-watching whenever
/// `watched` changes; publishes each set on `marked` once it is watched.
/// A lure modified, deleted or renamed is told to `drifted`, so the agent
/// checks and repairs its lures now instead of at the next verification.
pub async fn run<W: FileWatcher>(
    mut watcher: W,
    mut detector: Detector,
    sink: EventSink,
    mut watched: watch::Receiver<Arc<Watched>>,
    marked: watch::Sender<Arc<Watched>>,
    drifted: Arc<tokio::sync::Notify>,
    mut stop: watch::Receiver<bool>,
) {
    let initial = watched.borrow_and_update().clone();
    watcher.watch(&initial.files.keys().cloned().collect::<Vec<_>>());
    marked.send_replace(initial.clone());
    detector.set_watched(initial);
    loop {
        let deadline = detector.next_deadline();
        let events = tokio::select! {
            () = crate::stopped(&mut stop) => {
                let events = detector.flush_all(Instant::now());
                if let Err(e) = sink.record(events).await {
                    tracing::error!(error = %e, "cannot record lure events");
                }
                return;
            }
            changed = watched.changed() => {
                if changed.is_err() {
                    return;
                }
                let w = watched.borrow_and_update().clone();
                watcher.watch(&w.files.keys().cloned().collect::<Vec<_>>());
                marked.send_replace(w.clone());
                detector.set_watched(w);
                continue;
            }
            accesses = watcher.next() => match accesses {
                Ok(accesses) => {
                    if accesses
                        .iter()
                        .any(|a| matches!(a.op, Op::Modify | Op::Delete | Op::Rename))
                    {
                        drifted.notify_one();
                    }
                    detector.observe(accesses, Instant::now())
                }
                Err(e) => {
                    tracing::error!(error = %e, "reading file access events failed");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            },
            () = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d.into()).await,
                    None => std::future::pending().await,
                }
            } => detector.flush_due(Instant::now()),
        };
        for e in &events {
            if e.allowed {
                tracing::info!(lure = %e.lure_id, path = %e.path, rule = %e.allow_rule, "lure accessed by an allowed reader");
            } else {
                tracing::warn!(lure = %e.lure_id, path = %e.path, kind = %e.kind, pid = e.process.as_ref().map_or(0, |p| p.pid), exe = %e.process.as_ref().map_or("", |p| p.exe.as_str()), "lure touched");
            }
        }
        if let Err(e) = sink.record(events).await {
            tracing::error!(error = %e, "cannot record lure events");
        }
    }
}

#[cfg(test)]
mod tests;

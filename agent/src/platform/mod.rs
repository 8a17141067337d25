//! What differs between operating systems, behind small traits, so a
//! Windows or macOS agent is an added module here and not a change to the
//! lure engine, the detector or the session:
//!
//! - [`FileWatcher`]: watching exactly the planted lure files and naming
//!   the process behind each access;
//! - [`Platform`]: the watcher to use, who a process is, what the host is
//!   (its facts for enrollment) and when the service manager wants the
//!   agent to stop.
//!
//! `linux/` implements them (fanotify with inotify as the fallback,
//! `/proc`, `uname`, SIGTERM), `windows/` for Windows
//! (`ReadDirectoryChangesW`, the registry, the service manager);
//! [`Native`] is this build's implementation. Planting's file operations
//! (directory handles that never follow a link, owners) are per platform
//! in `lures/fs/`.

#[cfg(unix)]
pub mod linux;
pub mod security_event;
#[cfg(windows)]
#[allow(unsafe_code)]
pub mod windows;

use std::future::Future;
use std::io;
use std::path::PathBuf;

use ruse_proto::convert::{EventProcess, HostFacts};
use ruse_proto::types::Labels;

/// This build's platform.
#[cfg(unix)]
pub use self::linux::Linux as Native;
/// This build's platform.
#[cfg(windows)]
pub use self::windows::Windows as Native;

/// A host's facts from what its platform read (each clipped as the
/// controller accepts it), with what every platform reports alike.
pub(crate) fn host_facts(
    hostname: &str,
    os: &str,
    kernel: &str,
    addresses: Vec<String>,
    labels: &Labels,
) -> HostFacts {
    HostFacts {
        hostname: clip_fact(hostname),
        os: clip_fact(os),
        kernel: clip_fact(kernel),
        arch: std::env::consts::ARCH.to_owned(),
        addresses,
        agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        labels: labels.clone(),
        platform: ruse_proto::convert::Platform::this(),
    }
}

/// A fact as the controller accepts it: trimmed, without control
/// characters, at most 255 characters.
fn clip_fact(s: &str) -> String {
    s.trim()
        .chars()
        .filter(|c| !c.is_control())
        .take(255)
        .collect()
}

/// What was done to a watched file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Op {
    Open,
    Read,
    Modify,
    Close,
    Delete,
    Rename,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Open => "open",
            Op::Read => "read",
            Op::Modify => "modify",
            Op::Close => "close",
            Op::Delete => "delete",
            Op::Rename => "rename",
        }
    }
}

/// How an access was observed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// With the accessing process.
    Fanotify,
    /// Without process attribution.
    Inotify,
    /// Windows' `ReadDirectoryChangesW`: changes, without process
    /// attribution.
    DirectoryChanges,
    /// Windows' object-access auditing (Security-log event 4663 or
    /// 4656): reads, with the process.
    Audit,
}

impl Via {
    /// Whether the access names its process (the agent's own accesses are
    /// then told apart by process id, not by time).
    pub fn attributed(self) -> bool {
        matches!(self, Via::Fanotify | Via::Audit)
    }
}

/// One observed access.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    pub path: PathBuf,
    pub op: Op,
    /// The accessing process, when known.
    pub pid: Option<i32>,
    /// Who it is, read while it was held at open.
    pub process: Option<EventProcess>,
    pub via: Via,
}

/// Watches the planted lure files.
pub trait FileWatcher: Send + 'static {
    /// Which mechanism watches (for logs and status: `fanotify`, `inotify`).
    fn mode(&self) -> &'static str;
    /// Accesses lost because the agent could not keep up.
    fn lost(&self) -> u64;
    /// Replaces the watched set with `files`; returns the files that could
    /// not be watched, with why.
    fn watch(&mut self, files: &[PathBuf]) -> Vec<(PathBuf, io::Error)>;
    /// Waits for the next accesses.
    fn next(&mut self) -> impl Future<Output = io::Result<Vec<Access>>> + Send;
}

/// What the agent needs from the operating system besides files.
pub trait Platform {
    type Watcher: FileWatcher;

    /// The best watcher this host allows (with process attribution when
    /// the agent has the privilege for it).
    fn watcher() -> io::Result<Self::Watcher>;

    /// Who process `pid` is, if it still exists.
    fn process(pid: i32) -> Option<EventProcess>;

    /// The host's facts now; what cannot be read is left empty.
    fn host_facts(labels: &Labels) -> HostFacts;

    /// Resolves when the service manager (or the console) asks the agent
    /// to stop.
    fn stop_requested() -> impl Future<Output = ()> + Send;

    /// What keeps detection from doing all it should (on Windows: reads
    /// not attributed, and why), checked again at each call; reported in
    /// heartbeats.
    fn detection_problems() -> Vec<String> {
        Vec::new()
    }
}

//! Watching exactly the planted lure files (Linux).
//!
//! As root, fanotify marks each lure file for open, read, modify and close,
//! and reports which process did it. Opens are *permission* events: the
//! opening process waits (microseconds) while a dedicated thread reads who
//! it is from `/proc` and answers "allow" — without that, a short-lived
//! reader like `cat` is gone before it can be named. The thread answers
//! before doing anything else and never waits on the rest of the agent,
//! and if the agent dies the kernel lets held opens through.
//!
//! An access is attributed to a lure by the file's inode, not by the path
//! the reader used: a read through a bind mount (a container given the
//! host's /etc/hosts) or a hard link (`ln ~/.pgpass /tmp/x`) is the read of
//! the lure it is.
//!
//! inotify watches each lure's parent directory for deletes and renames of
//! the lure's name (and, without root, the files themselves, without
//! process attribution). Marks are on inodes, so [`Watcher::watch`] is
//! called again whenever lures change.
//!
//! Other platforms bring their own module with the same interface.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::fanotify::{
    EventFFlags, Fanotify, FanotifyResponse, InitFlags as FanInit, MarkFlags, MaskFlags, Response,
};
use nix::sys::inotify::{AddWatchFlags, InitFlags as InoInit, Inotify, WatchDescriptor};
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;

use ruse_proto::convert::EventProcess;

use crate::platform::{Access, FileWatcher, Op, Via};

fn io_err(e: Errno) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

/// Accesses buffered between the fanotify thread and the detector.
const ACCESS_BUFFER: usize = 4096;

/// The fanotify group and the thread reading it.
#[derive(Debug)]
struct FanotifyReader {
    group: Arc<Fanotify>,
    accesses: mpsc::Receiver<Access>,
    /// Dropping this ends the thread.
    _stop: UnixStream,
    /// Opens are held for attribution (permission events).
    permission: bool,
    lost: Arc<AtomicU64>,
    /// Watched files by (device, inode), shared with the thread.
    inodes: Arc<std::sync::RwLock<Inodes>>,
}

/// Watched files by (device, inode).
type Inodes = HashMap<(u64, u64), PathBuf>;

impl FanotifyReader {
    fn start() -> io::Result<Self> {
        let flags = EventFFlags::O_RDONLY | EventFFlags::O_CLOEXEC | EventFFlags::O_LARGEFILE;
        let content = FanInit::FAN_CLASS_CONTENT | FanInit::FAN_CLOEXEC | FanInit::FAN_NONBLOCK;
        let notify = FanInit::FAN_CLASS_NOTIF | FanInit::FAN_CLOEXEC | FanInit::FAN_NONBLOCK;
        let (group, permission) = match Fanotify::init(content, flags) {
            Ok(g) => (g, true),
            Err(_) => (Fanotify::init(notify, flags).map_err(io_err)?, false),
        };
        let group = Arc::new(group);
        let (stop, stop_thread) = UnixStream::pair()?;
        let (tx, rx) = mpsc::channel(ACCESS_BUFFER);
        let lost = Arc::new(AtomicU64::new(0));
        let inodes = Arc::new(std::sync::RwLock::new(Inodes::new()));
        let thread_group = group.clone();
        let thread_lost = lost.clone();
        let thread_inodes = inodes.clone();
        std::thread::Builder::new()
            .name("ruse-fanotify".into())
            .spawn(move || {
                read_loop(
                    &thread_group,
                    &stop_thread,
                    &tx,
                    &thread_lost,
                    &thread_inodes,
                );
            })?;
        Ok(FanotifyReader {
            group,
            accesses: rx,
            _stop: stop,
            permission,
            lost,
            inodes,
        })
    }

    fn mask(&self) -> MaskFlags {
        let open = if self.permission {
            MaskFlags::FAN_OPEN_PERM
        } else {
            MaskFlags::FAN_OPEN
        };
        open | MaskFlags::FAN_ACCESS
            | MaskFlags::FAN_MODIFY
            | MaskFlags::FAN_CLOSE_WRITE
            | MaskFlags::FAN_CLOSE_NOWRITE
    }
}

/// The fanotify thread: answers permission events first, then reports.
fn read_loop(
    group: &Fanotify,
    stop: &UnixStream,
    tx: &mpsc::Sender<Access>,
    lost: &AtomicU64,
    inodes: &std::sync::RwLock<Inodes>,
) {
    let me = i32::try_from(std::process::id()).unwrap_or(-1);
    loop {
        let mut fds = [
            PollFd::new(group.as_fd(), PollFlags::POLLIN),
            PollFd::new(stop.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => {
                tracing::error!(error = %e, "fanotify poll failed; lure access is no longer watched by fanotify");
                return;
            }
        }
        if fds[1].revents().is_some_and(|r| !r.is_empty()) {
            return;
        }
        let events = match group.read_events() {
            Ok(events) => events,
            Err(Errno::EAGAIN | Errno::EINTR) => continue,
            Err(e) => {
                tracing::error!(error = %e, "reading fanotify events failed");
                return;
            }
        };
        for event in events {
            let mask = event.mask();
            if mask.contains(MaskFlags::FAN_Q_OVERFLOW) {
                tracing::warn!("fanotify queue overflowed; some lure accesses were not seen");
                continue;
            }
            let Some(fd) = event.fd() else { continue };
            let pid = event.pid();
            let held = mask.contains(MaskFlags::FAN_OPEN_PERM);
            let process = (held && pid != me).then(|| process_info(pid)).flatten();
            if held {
                // Always allow, and before anything else: a lure never
                // blocks a reader, and no one waits on the rest of the agent.
                if let Err(e) = group.write_response(FanotifyResponse::new(fd, Response::FAN_ALLOW))
                {
                    tracing::error!(error = %e, "cannot answer a fanotify permission event");
                }
            }
            if pid == me {
                continue;
            }
            // The lure's own path, whatever path the reader used.
            let known = nix::sys::stat::fstat(fd).ok().and_then(|st| {
                inodes
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(&(st.st_dev, st.st_ino))
                    .cloned()
            });
            let path = match known {
                Some(path) => path,
                None => match std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())) {
                    Ok(path) => path,
                    Err(_) => continue,
                },
            };
            for (flag, op) in [
                (MaskFlags::FAN_OPEN_PERM, Op::Open),
                (MaskFlags::FAN_OPEN, Op::Open),
                (MaskFlags::FAN_ACCESS, Op::Read),
                (MaskFlags::FAN_MODIFY, Op::Modify),
                (MaskFlags::FAN_CLOSE_WRITE, Op::Close),
                (MaskFlags::FAN_CLOSE_NOWRITE, Op::Close),
            ] {
                if !mask.contains(flag) {
                    continue;
                }
                let access = Access {
                    path: path.clone(),
                    op,
                    pid: Some(pid),
                    process: if op == Op::Open {
                        process.clone()
                    } else {
                        None
                    },
                    via: Via::Fanotify,
                };
                match tx.try_send(access) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        lost.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => return,
                }
            }
        }
    }
}

/// Who a process is, from /proc (`None` once it is gone).
pub fn process_info(pid: i32) -> Option<EventProcess> {
    let dir = PathBuf::from(format!("/proc/{pid}"));
    let uid = std::fs::read_to_string(dir.join("status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<u32>().ok())
        })?;
    let exe = std::fs::read_link(dir.join("exe"))
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let cmdline = std::fs::read(dir.join("cmdline"))
        .map(|b| {
            let mut s: String = String::from_utf8_lossy(&b)
                .split('\0')
                .filter(|p| !p.is_empty())
                .collect::<Vec<_>>()
                .join(" ");
            s.truncate(s.floor_char_boundary(512));
            s
        })
        .unwrap_or_default();
    let user = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_default();
    Some(EventProcess {
        pid: u32::try_from(pid).unwrap_or(0),
        exe,
        uid,
        user,
        cmdline,
    })
}

/// `Inotify` for tokio, which needs `AsRawFd`.
#[derive(Debug)]
struct InotifyFd(Inotify);

impl AsRawFd for InotifyFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

/// Watches a set of files.
#[derive(Debug)]
pub struct Watcher {
    fanotify: Option<FanotifyReader>,
    inotify: AsyncFd<InotifyFd>,
    /// Watch descriptor → watched directory, or watched file.
    watches: HashMap<WatchDescriptor, (PathBuf, bool)>,
    /// Lure file names by directory, for delete/rename.
    names: HashMap<PathBuf, HashSet<OsString>>,
}

impl Watcher {
    /// fanotify when permitted (root), inotify otherwise.
    ///
    /// `AsyncFd::new` is deprecated in favour of the `unsafe`
    /// `AsyncFd::register`, whose precondition is that the value owns its
    /// descriptor for as long as it is registered. `Inotify` holds an
    /// `OwnedFd` and moves into the `AsyncFd`, so that holds; the safe
    /// constructor keeps this crate free of `unsafe`.
    #[allow(deprecated)]
    pub fn new() -> io::Result<Self> {
        let fanotify = match FanotifyReader::start() {
            Ok(f) => {
                if !f.permission {
                    tracing::warn!(
                        "fanotify permission events unavailable; short-lived readers may not be named"
                    );
                }
                Some(f)
            }
            Err(e) => {
                tracing::info!(error = %e, "fanotify unavailable (needs root); lure access is watched with inotify, without process attribution");
                None
            }
        };
        let inotify = Inotify::init(InoInit::IN_CLOEXEC | InoInit::IN_NONBLOCK).map_err(io_err)?;
        Ok(Watcher {
            fanotify,
            inotify: AsyncFd::new(InotifyFd(inotify))?,
            watches: HashMap::new(),
            names: HashMap::new(),
        })
    }

    /// `fanotify` or `inotify`.
    pub fn mode(&self) -> &'static str {
        if self.fanotify.is_some() {
            "fanotify"
        } else {
            "inotify"
        }
    }

    /// Accesses the fanotify thread could not hand over (a full buffer).
    pub fn lost(&self) -> u64 {
        self.fanotify
            .as_ref()
            .map_or(0, |f| f.lost.load(Ordering::Relaxed))
    }

    /// Replaces the watched set with `files`. Returns the files that could
    /// not be watched, with why (they are also logged).
    pub fn watch(&mut self, files: &[PathBuf]) -> Vec<(PathBuf, io::Error)> {
        let mut failures = Vec::new();
        if let Some(fan) = &self.fanotify {
            let _ = fan.group.mark(
                MarkFlags::FAN_MARK_FLUSH,
                MaskFlags::empty(),
                nix::fcntl::AT_FDCWD,
                None::<&Path>,
            );
        }
        let inotify = &self.inotify.get_ref().0;
        for (wd, _) in self.watches.drain() {
            let _ = inotify.rm_watch(wd);
        }
        self.names.clear();
        let mut inodes = Inodes::new();
        for file in files {
            let result = if let Some(fan) = &self.fanotify {
                fan.group
                    .mark(
                        MarkFlags::FAN_MARK_ADD | MarkFlags::FAN_MARK_DONT_FOLLOW,
                        fan.mask(),
                        nix::fcntl::AT_FDCWD,
                        Some(file.as_path()),
                    )
                    .map_err(io_err)
            } else {
                inotify
                    .add_watch(
                        file.as_path(),
                        AddWatchFlags::IN_OPEN
                            | AddWatchFlags::IN_ACCESS
                            | AddWatchFlags::IN_MODIFY
                            | AddWatchFlags::IN_CLOSE_WRITE
                            | AddWatchFlags::IN_CLOSE_NOWRITE
                            | AddWatchFlags::IN_DONT_FOLLOW,
                    )
                    .map(|wd| {
                        self.watches.insert(wd, (file.clone(), false));
                    })
                    .map_err(io_err)
            };
            if let Err(e) = result {
                tracing::warn!(path = %file.display(), error = %e, "cannot watch lure file");
                failures.push((file.clone(), e));
                continue;
            }
            if let Ok(meta) = std::fs::symlink_metadata(file) {
                use std::os::unix::fs::MetadataExt;
                inodes.insert((meta.dev(), meta.ino()), file.clone());
            }
            if let (Some(dir), Some(name)) = (file.parent(), file.file_name()) {
                self.names
                    .entry(dir.to_path_buf())
                    .or_default()
                    .insert(name.to_owned());
            }
        }
        if let Some(fan) = &self.fanotify {
            *fan.inodes.write().unwrap_or_else(|e| e.into_inner()) = inodes;
        }
        for dir in self.names.keys() {
            match inotify.add_watch(
                dir.as_path(),
                AddWatchFlags::IN_DELETE | AddWatchFlags::IN_MOVED_FROM | AddWatchFlags::IN_ONLYDIR,
            ) {
                Ok(wd) => {
                    self.watches.insert(wd, (dir.clone(), true));
                }
                Err(e) => {
                    tracing::warn!(path = %dir.display(), error = %e, "cannot watch lure directory");
                    failures.push((dir.clone(), io_err(e)));
                }
            }
        }
        failures
    }

    /// Waits for the next accesses.
    pub async fn next(&mut self) -> io::Result<Vec<Access>> {
        loop {
            let accesses = match &mut self.fanotify {
                Some(fan) => tokio::select! {
                    access = fan.accesses.recv() => {
                        let Some(first) = access else {
                            return Err(io::Error::other("the fanotify thread stopped"));
                        };
                        let mut all = vec![first];
                        while let Ok(more) = fan.accesses.try_recv() {
                            all.push(more);
                        }
                        Some(all)
                    }
                    guard = self.inotify.readable() => read_inotify(guard?, &self.watches, &self.names)?,
                },
                None => read_inotify(self.inotify.readable().await?, &self.watches, &self.names)?,
            };
            if let Some(accesses) = accesses {
                return Ok(accesses);
            }
        }
    }
}

fn read_inotify(
    mut guard: tokio::io::unix::AsyncFdReadyGuard<'_, InotifyFd>,
    watches: &HashMap<WatchDescriptor, (PathBuf, bool)>,
    names: &HashMap<PathBuf, HashSet<OsString>>,
) -> io::Result<Option<Vec<Access>>> {
    let events = match guard.get_inner().0.read_events() {
        Ok(events) => events,
        Err(Errno::EAGAIN) => {
            guard.clear_ready();
            return Ok(None);
        }
        Err(e) => return Err(io_err(e)),
    };
    let mut out = Vec::new();
    for event in events {
        if event.mask.contains(AddWatchFlags::IN_Q_OVERFLOW) {
            tracing::warn!("inotify queue overflowed; some lure accesses were not seen");
            continue;
        }
        let Some((watched, is_dir)) = watches.get(&event.wd) else {
            continue;
        };
        let (path, ops): (PathBuf, Vec<Op>) = if *is_dir {
            let Some(name) = &event.name else { continue };
            if !names.get(watched).is_some_and(|n| n.contains(name)) {
                continue;
            }
            let op = if event.mask.contains(AddWatchFlags::IN_DELETE) {
                Op::Delete
            } else {
                Op::Rename
            };
            (watched.join(name), vec![op])
        } else {
            let ops = [
                (AddWatchFlags::IN_OPEN, Op::Open),
                (AddWatchFlags::IN_ACCESS, Op::Read),
                (AddWatchFlags::IN_MODIFY, Op::Modify),
                (AddWatchFlags::IN_CLOSE_WRITE, Op::Close),
                (AddWatchFlags::IN_CLOSE_NOWRITE, Op::Close),
            ]
            .into_iter()
            .filter(|(flag, _)| event.mask.contains(*flag))
            .map(|(_, op)| op)
            .collect();
            (watched.clone(), ops)
        };
        out.extend(ops.into_iter().map(|op| Access {
            path: path.clone(),
            op,
            pid: None,
            process: None,
            via: Via::Inotify,
        }));
    }
    Ok(Some(out))
}

impl FileWatcher for Watcher {
    fn mode(&self) -> &'static str {
        Watcher::mode(self)
    }

    fn lost(&self) -> u64 {
        Watcher::lost(self)
    }

    fn watch(&mut self, files: &[PathBuf]) -> Vec<(PathBuf, io::Error)> {
        Watcher::watch(self, files)
    }

    fn next(&mut self) -> impl Future<Output = io::Result<Vec<Access>>> + Send {
        Watcher::next(self)
    }
}

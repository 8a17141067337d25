//! Watching the planted lure files (Windows): `ReadDirectoryChangesW` on
//! each lure's directory reports modifications, deletions and renames of
//! the lure's name, as inotify does on Linux and, like inotify, without
//! the process behind them. Reads leave no trace here: they are seen
//! through object-access auditing ([`super::audit`]: each lure file and
//! registry key has an audit SACL, and Security-log events 4663 and 4656
//! name the process), whose accesses come through the same channel.
//!
//! One thread serves every watched directory through an I/O completion
//! port: each directory has one overlapped `ReadDirectoryChangesW`
//! outstanding with a small buffer of its own (a burst that overflows it
//! is reported as a change to each lure there, and the agent checks them
//! all). [`Watcher::watch`] stops the thread, cancels every request and
//! waits for the cancellations before the buffers go, then starts anew.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::windows::ffi::OsStringExt;
use std::os::windows::fs::OpenOptionsExt;
use std::os::windows::io::AsRawHandle;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use tokio::sync::mpsc;
use windows_sys::Win32::Foundation::{CloseHandle, FALSE, HANDLE, INVALID_HANDLE_VALUE};
use windows_sys::Win32::Storage::FileSystem::{
    FILE_ACTION_ADDED, FILE_ACTION_MODIFIED, FILE_ACTION_REMOVED, FILE_ACTION_RENAMED_NEW_NAME,
    FILE_ACTION_RENAMED_OLD_NAME, FILE_FLAG_BACKUP_SEMANTICS, FILE_FLAG_OVERLAPPED,
    FILE_LIST_DIRECTORY, FILE_NOTIFY_CHANGE_ATTRIBUTES, FILE_NOTIFY_CHANGE_FILE_NAME,
    FILE_NOTIFY_CHANGE_LAST_WRITE, FILE_NOTIFY_CHANGE_SECURITY, FILE_NOTIFY_CHANGE_SIZE,
    FILE_SHARE_DELETE, FILE_SHARE_READ, FILE_SHARE_WRITE, ReadDirectoryChangesW,
};
use windows_sys::Win32::System::IO::{
    CancelIoEx, CreateIoCompletionPort, GetQueuedCompletionStatus, OVERLAPPED,
    PostQueuedCompletionStatus,
};
use windows_sys::Win32::System::Threading::INFINITE;

use ruse_proto::convert::EventProcess;

use super::audit;
use crate::platform::security_event::AuditedAccess;
use crate::platform::{Access, FileWatcher, Op, Via};

use crate::platform::security_event::{REGISTRY_PREFIX, folded_name as audit_name};

/// Watched paths by the name auditing gives them (folded), for the
/// Security-log subscription.
type Audited = Arc<RwLock<HashMap<String, PathBuf>>>;

/// Accesses buffered between the watching thread and the detector.
const ACCESS_BUFFER: usize = 4096;
/// Bytes of change records one directory's request holds (about forty
/// changes of lure-length names); a lure directory rarely changes, and an
/// overflow costs a check of its lures, not a missed change.
const CHANGE_BUFFER: usize = 4096;
/// The completion key that tells the thread to stop.
const STOP: usize = usize::MAX;

/// An I/O completion port, closed on drop.
#[derive(Debug)]
struct Port(HANDLE);

// SAFETY: a completion port is a process-wide kernel object handle, usable
// from any thread.
unsafe impl Send for Port {}
// SAFETY: as above; its calls are thread-safe.
unsafe impl Sync for Port {}

impl Port {
    fn new() -> io::Result<Port> {
        // SAFETY: a new port not associated with any file.
        let h = unsafe { CreateIoCompletionPort(INVALID_HANDLE_VALUE, std::ptr::null_mut(), 0, 1) };
        if h.is_null() {
            Err(io::Error::last_os_error())
        } else {
            Ok(Port(h))
        }
    }
}

impl Drop for Port {
    fn drop(&mut self) {
        // SAFETY: the handle is ours and closed once.
        unsafe { CloseHandle(self.0) };
    }
}

/// One watched directory: its handle, its lures by folded name, and the
/// request outstanding on it (its buffer and OVERLAPPED stay put on the
/// heap while the request runs).
struct DirWatch {
    dir: PathBuf,
    file: File,
    names: BTreeMap<String, PathBuf>,
    buf: Vec<u32>,
    ov: Box<OVERLAPPED>,
    pending: bool,
}

// SAFETY: the OVERLAPPED's only pointer-typed field is its event handle,
// left null here; a watch is built on one thread and then used by the
// watching thread alone.
unsafe impl Send for DirWatch {}

/// The watching thread.
#[derive(Debug)]
struct Running {
    port: Arc<Port>,
    thread: std::thread::JoinHandle<()>,
}

/// Watches lure files through their directories.
#[derive(Debug)]
pub struct Watcher {
    tx: mpsc::Sender<Access>,
    rx: mpsc::Receiver<Access>,
    running: Option<Running>,
    lost: Arc<AtomicU64>,
    audited: Audited,
    /// The Security-log subscription, when the agent may read the log.
    subscription: Option<audit::Subscription>,
}

impl Watcher {
    pub fn new() -> io::Result<Self> {
        let (tx, rx) = mpsc::channel(ACCESS_BUFFER);
        let lost = Arc::new(AtomicU64::new(0));
        let audited = Audited::default();
        audit::ensure_policy();
        let subscription = {
            let (tx, lost, audited) = (tx.clone(), lost.clone(), audited.clone());
            audit::subscribe(Box::new(move |a| {
                if let Some(access) = audited_access(&audited, a)
                    && tx.try_send(access).is_err()
                {
                    lost.fetch_add(1, Ordering::Relaxed);
                }
            }))
        };
        Ok(Watcher {
            tx,
            rx,
            running: None,
            lost,
            audited,
            subscription,
        })
    }

    fn stop(&mut self) {
        if let Some(r) = self.running.take() {
            // SAFETY: the port is alive (the thread holds it too).
            unsafe { PostQueuedCompletionStatus(r.port.0, 0, STOP, std::ptr::null()) };
            let _ = r.thread.join();
        }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A name as Windows compares it (case-insensitively).
fn fold(name: &std::ffi::OsStr) -> String {
    name.to_string_lossy().to_lowercase()
}

/// The read an audited event records, if it is of a watched lure.
fn audited_access(audited: &Audited, a: AuditedAccess) -> Option<Access> {
    if !a.ops().contains(&Op::Read) {
        // Changes are the directory watch's (and a key's, verification's).
        return None;
    }
    let path = audited
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .get(&audit_name(&a.object_name))?
        .clone();
    Some(Access {
        path,
        op: Op::Read,
        pid: i32::try_from(a.pid).ok(),
        process: Some(EventProcess {
            pid: a.pid,
            exe: a.process,
            uid: 0,
            user: a.user,
            cmdline: String::new(),
        }),
        via: Via::Audit,
    })
}

impl FileWatcher for Watcher {
    fn mode(&self) -> &'static str {
        if self.subscription.is_some() {
            "directory-changes+audit"
        } else {
            "directory-changes"
        }
    }

    fn lost(&self) -> u64 {
        self.lost.load(Ordering::Relaxed)
    }

    fn watch(&mut self, files: &[PathBuf]) -> Vec<(PathBuf, io::Error)> {
        self.stop();
        *self.audited.write().unwrap_or_else(|e| e.into_inner()) = files
            .iter()
            .map(|f| (audit_name(&f.to_string_lossy()), f.clone()))
            .collect();
        let mut dirs: BTreeMap<PathBuf, BTreeMap<String, PathBuf>> = BTreeMap::new();
        for file in files {
            if audit_name(&file.to_string_lossy()).starts_with(REGISTRY_PREFIX) {
                continue;
            }
            if let (Some(dir), Some(name)) = (file.parent(), file.file_name()) {
                dirs.entry(dir.to_path_buf())
                    .or_default()
                    .insert(fold(name), file.clone());
            }
        }
        let mut failures = Vec::new();
        if dirs.is_empty() {
            return failures;
        }
        let port = match Port::new() {
            Ok(port) => Arc::new(port),
            Err(e) => {
                for file in files {
                    failures.push((file.clone(), io::Error::new(e.kind(), e.to_string())));
                }
                return failures;
            }
        };
        let mut watches = Vec::with_capacity(dirs.len());
        for (dir, names) in dirs {
            match open(&dir, &port, watches.len()) {
                Ok(file) => watches.push(DirWatch {
                    dir,
                    file,
                    names,
                    buf: vec![0u32; CHANGE_BUFFER / 4],
                    // SAFETY: an all-zero OVERLAPPED is valid.
                    ov: Box::new(unsafe { std::mem::zeroed() }),
                    pending: false,
                }),
                Err(e) => {
                    tracing::warn!(dir = %dir.display(), error = %e, "cannot watch a lure directory");
                    for file in names.into_values() {
                        failures.push((file, io::Error::new(e.kind(), e.to_string())));
                    }
                }
            }
        }
        let (tx, lost, thread_port) = (self.tx.clone(), self.lost.clone(), port.clone());
        match std::thread::Builder::new()
            .name("ruse-dirwatch".into())
            .spawn(move || run(&thread_port, watches, &tx, &lost))
        {
            Ok(thread) => self.running = Some(Running { port, thread }),
            Err(e) => {
                tracing::error!(error = %e, "cannot start the directory watcher");
                for file in files {
                    failures.push((file.clone(), io::Error::new(e.kind(), e.to_string())));
                }
            }
        }
        failures
    }

    async fn next(&mut self) -> io::Result<Vec<Access>> {
        let Some(first) = self.rx.recv().await else {
            return Err(io::Error::other("the directory watcher stopped"));
        };
        let mut all = vec![first];
        while let Ok(more) = self.rx.try_recv() {
            all.push(more);
        }
        Ok(all)
    }
}

/// Opens `dir` for change notification, tied to `port` with `key`.
fn open(dir: &Path, port: &Port, key: usize) -> io::Result<File> {
    let file = OpenOptions::new()
        .access_mode(FILE_LIST_DIRECTORY)
        .share_mode(FILE_SHARE_READ | FILE_SHARE_WRITE | FILE_SHARE_DELETE)
        .custom_flags(FILE_FLAG_BACKUP_SEMANTICS | FILE_FLAG_OVERLAPPED)
        .open(dir)?;
    // SAFETY: both handles are open; the file stays tied to the port
    // until it is closed.
    let tied = unsafe { CreateIoCompletionPort(file.as_raw_handle() as HANDLE, port.0, key, 0) };
    if tied.is_null() {
        return Err(io::Error::last_os_error());
    }
    Ok(file)
}

/// Starts the next request on `w`.
fn issue(w: &mut DirWatch) -> io::Result<()> {
    *w.ov = {
        // SAFETY: an all-zero OVERLAPPED is valid.
        unsafe { std::mem::zeroed() }
    };
    // SAFETY: the buffer and OVERLAPPED are heap allocations owned by `w`,
    // which outlives the request: the thread waits for every request to
    // complete or be cancelled before dropping the watches.
    let ok = unsafe {
        ReadDirectoryChangesW(
            w.file.as_raw_handle() as HANDLE,
            w.buf.as_mut_ptr().cast(),
            (w.buf.len() * 4) as u32,
            FALSE,
            FILE_NOTIFY_CHANGE_FILE_NAME
                | FILE_NOTIFY_CHANGE_LAST_WRITE
                | FILE_NOTIFY_CHANGE_SIZE
                | FILE_NOTIFY_CHANGE_ATTRIBUTES
                | FILE_NOTIFY_CHANGE_SECURITY,
            std::ptr::null_mut(),
            &mut *w.ov,
            None,
        )
    };
    if ok == 0 {
        return Err(io::Error::last_os_error());
    }
    w.pending = true;
    Ok(())
}

/// What the completed request of `w` (`bytes` long, or failed) means.
fn completed(w: &DirWatch, ok: bool, bytes: u32) -> Vec<Access> {
    if !ok || bytes == 0 {
        // Overflowed, or the directory itself went: any lure there may
        // have changed; the agent checks them all.
        return w
            .names
            .values()
            .map(|path| change(path.clone(), Op::Modify))
            .collect();
    }
    let raw: Vec<u8> = w
        .buf
        .iter()
        .flat_map(|word| word.to_ne_bytes())
        .take(bytes as usize)
        .collect();
    parse_changes(&raw)
        .into_iter()
        .filter_map(|(action, name)| {
            let path = w.names.get(&fold(&name))?;
            Some(change(path.clone(), op_of(action)?))
        })
        .collect()
}

/// The thread: report each directory's changes to its lures and ask for
/// the next, until told to stop.
fn run(port: &Port, mut watches: Vec<DirWatch>, tx: &mpsc::Sender<Access>, lost: &AtomicU64) {
    for w in &mut watches {
        if let Err(e) = issue(w) {
            tracing::warn!(dir = %w.dir.display(), error = %e, "cannot watch a lure directory");
        }
    }
    loop {
        let (mut bytes, mut key) = (0u32, 0usize);
        let mut ov: *mut OVERLAPPED = std::ptr::null_mut();
        // SAFETY: the port is open; the out-pointers are valid.
        let ok =
            unsafe { GetQueuedCompletionStatus(port.0, &mut bytes, &mut key, &mut ov, INFINITE) };
        if key == STOP && ov.is_null() {
            break;
        }
        let Some(w) = watches.get_mut(key).filter(|_| !ov.is_null()) else {
            if ok == 0 {
                tracing::error!(error = %io::Error::last_os_error(), "the directory watcher failed");
                break;
            }
            continue;
        };
        w.pending = false;
        for access in completed(w, ok != 0, bytes) {
            if tx.try_send(access).is_err() {
                lost.fetch_add(1, Ordering::Relaxed);
            }
        }
        if let Err(e) = issue(w) {
            tracing::warn!(dir = %w.dir.display(), error = %e, "a lure directory is no longer watched");
        }
    }
    // Cancel what is outstanding and wait until it is over: the buffers
    // must outlive every request.
    let mut outstanding = 0usize;
    for w in &watches {
        if w.pending {
            // SAFETY: the request and its OVERLAPPED are alive.
            unsafe { CancelIoEx(w.file.as_raw_handle() as HANDLE, &*w.ov) };
            outstanding += 1;
        }
    }
    while outstanding > 0 {
        let (mut bytes, mut key) = (0u32, 0usize);
        let mut ov: *mut OVERLAPPED = std::ptr::null_mut();
        // SAFETY: as above; a bounded wait per completion.
        let ok = unsafe { GetQueuedCompletionStatus(port.0, &mut bytes, &mut key, &mut ov, 5_000) };
        if ov.is_null() {
            if ok == 0 {
                // Timed out: never free a buffer a request may still use.
                tracing::error!(
                    outstanding,
                    "directory watch requests did not end; keeping their buffers"
                );
                std::mem::forget(watches);
                return;
            }
            continue;
        }
        outstanding -= 1;
    }
}

fn change(path: PathBuf, op: Op) -> Access {
    Access {
        path,
        op,
        pid: None,
        process: None,
        via: Via::DirectoryChanges,
    }
}

/// What a change to a lure's name means. A file created or renamed onto
/// the name is a change of the lure's content.
fn op_of(action: u32) -> Option<Op> {
    match action {
        FILE_ACTION_MODIFIED | FILE_ACTION_ADDED | FILE_ACTION_RENAMED_NEW_NAME => Some(Op::Modify),
        FILE_ACTION_REMOVED => Some(Op::Delete),
        FILE_ACTION_RENAMED_OLD_NAME => Some(Op::Rename),
        _ => None,
    }
}

/// The `FILE_NOTIFY_INFORMATION` records in `bytes`: (action, name).
/// Records that do not fit are ignored; this never reads past `bytes`.
pub fn parse_changes(bytes: &[u8]) -> Vec<(u32, OsString)> {
    let u32_at = |at: usize| -> Option<u32> {
        bytes
            .get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let mut out = Vec::new();
    let mut at = 0usize;
    while let (Some(next), Some(action), Some(len)) = (u32_at(at), u32_at(at + 4), u32_at(at + 8)) {
        let start = at + 12;
        let Some(name) = start
            .checked_add(len as usize)
            .and_then(|end| bytes.get(start..end))
        else {
            break;
        };
        let wide: Vec<u16> = name
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect();
        out.push((action, OsString::from_wide(&wide)));
        if next == 0 {
            break;
        }
        match at.checked_add(next as usize) {
            Some(n) if n > at => at = n,
            _ => break,
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(next: u32, action: u32, name: &str) -> Vec<u8> {
        let wide: Vec<u8> = name.encode_utf16().flat_map(u16::to_le_bytes).collect();
        let mut out = Vec::new();
        out.extend(next.to_le_bytes());
        out.extend(action.to_le_bytes());
        out.extend((wide.len() as u32).to_le_bytes());
        out.extend(wide);
        while out.len() % 4 != 0 {
            out.push(0);
        }
        out
    }

    #[test]
    fn change_records_are_parsed_and_truncation_is_harmless() {
        let offset = record(0, FILE_ACTION_MODIFIED, "config").len() as u32;
        let mut bytes = record(offset, FILE_ACTION_MODIFIED, "config");
        bytes.extend(record(0, FILE_ACTION_REMOVED, "credentials"));
        let parsed = parse_changes(&bytes);
        assert_eq!(
            parsed,
            [
                (FILE_ACTION_MODIFIED, OsString::from("config")),
                (FILE_ACTION_REMOVED, OsString::from("credentials"))
            ]
        );
        for cut in 0..bytes.len() {
            assert!(parse_changes(&bytes[..cut]).len() <= 2);
        }
    }
}

//! Watching the planted lure files (Windows): `ReadDirectoryChangesW` on
//! each lure's directory reports modifications, deletions and renames of
//! the lure's name, as inotify does on Linux and, like inotify, without
//! the process behind them. Reads leave no trace here: they are seen
//! through object-access auditing (Security-log event 4663), which needs
//! an audit SACL on each lure; that is the next step and is not here yet.
//!
//! One thread per watched directory waits on an overlapped
//! `ReadDirectoryChangesW` and on a stop event; [`Watcher::watch`] stops
//! them all and starts one per directory of the new set.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs::OpenOptions;
use std::io;
use std::os::windows::ffi::OsStringExt;
use std::os::windows::fs::OpenOptionsExt;
use std::os::windows::io::AsRawHandle;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::mpsc;
use windows_sys::Win32::Foundation::{
    CloseHandle, ERROR_IO_PENDING, ERROR_OPERATION_ABORTED, FALSE, GetLastError, HANDLE, TRUE,
    WAIT_OBJECT_0,
};
use windows_sys::Win32::Storage::FileSystem::{
    FILE_ACTION_ADDED, FILE_ACTION_MODIFIED, FILE_ACTION_REMOVED, FILE_ACTION_RENAMED_NEW_NAME,
    FILE_ACTION_RENAMED_OLD_NAME, FILE_FLAG_BACKUP_SEMANTICS, FILE_FLAG_OVERLAPPED,
    FILE_LIST_DIRECTORY, FILE_NOTIFY_CHANGE_ATTRIBUTES, FILE_NOTIFY_CHANGE_FILE_NAME,
    FILE_NOTIFY_CHANGE_LAST_WRITE, FILE_NOTIFY_CHANGE_SECURITY, FILE_NOTIFY_CHANGE_SIZE,
    FILE_SHARE_DELETE, FILE_SHARE_READ, FILE_SHARE_WRITE, ReadDirectoryChangesW,
};
use windows_sys::Win32::System::IO::{CancelIoEx, GetOverlappedResult, OVERLAPPED};
use windows_sys::Win32::System::Threading::{
    CreateEventW, INFINITE, SetEvent, WaitForMultipleObjects,
};

use crate::platform::{Access, FileWatcher, Op, Via};

/// Accesses buffered between the directory threads and the detector.
const ACCESS_BUFFER: usize = 4096;
/// Bytes of change records one wait can return (the documented maximum
/// for a network share is 64 KiB).
const CHANGE_BUFFER: usize = 64 * 1024;

/// An event handle, closed on drop; handles may be used from any thread.
#[derive(Debug)]
struct Event(HANDLE);

// SAFETY: a Windows event handle is a process-wide kernel object handle,
// usable from any thread.
unsafe impl Send for Event {}
unsafe impl Sync for Event {}

impl Event {
    fn new() -> io::Result<Event> {
        // SAFETY: an unnamed manual-reset event, initially unset.
        let h = unsafe { CreateEventW(std::ptr::null(), TRUE, FALSE, std::ptr::null()) };
        if h.is_null() {
            Err(io::Error::last_os_error())
        } else {
            Ok(Event(h))
        }
    }
}

impl Drop for Event {
    fn drop(&mut self) {
        // SAFETY: the handle is ours and closed once.
        unsafe { CloseHandle(self.0) };
    }
}

/// One directory's thread.
#[derive(Debug)]
struct DirThread {
    stop: Arc<Event>,
    thread: std::thread::JoinHandle<()>,
}

/// Watches lure files through their directories.
#[derive(Debug)]
pub struct Watcher {
    tx: mpsc::Sender<Access>,
    rx: mpsc::Receiver<Access>,
    threads: Vec<DirThread>,
    lost: Arc<AtomicU64>,
}

impl Watcher {
    pub fn new() -> io::Result<Self> {
        let (tx, rx) = mpsc::channel(ACCESS_BUFFER);
        Ok(Watcher {
            tx,
            rx,
            threads: Vec::new(),
            lost: Arc::new(AtomicU64::new(0)),
        })
    }

    fn stop_all(&mut self) {
        for t in self.threads.drain(..) {
            // SAFETY: the event is alive (the thread holds it too).
            unsafe { SetEvent(t.stop.0) };
            let _ = t.thread.join();
        }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.stop_all();
    }
}

/// A name as Windows compares it (case-insensitively).
fn fold(name: &std::ffi::OsStr) -> String {
    name.to_string_lossy().to_lowercase()
}

impl FileWatcher for Watcher {
    fn mode(&self) -> &'static str {
        "directory-changes"
    }

    fn lost(&self) -> u64 {
        self.lost.load(Ordering::Relaxed)
    }

    fn watch(&mut self, files: &[PathBuf]) -> Vec<(PathBuf, io::Error)> {
        self.stop_all();
        let mut dirs: BTreeMap<PathBuf, BTreeMap<String, PathBuf>> = BTreeMap::new();
        for file in files {
            if let (Some(dir), Some(name)) = (file.parent(), file.file_name()) {
                dirs.entry(dir.to_path_buf())
                    .or_default()
                    .insert(fold(name), file.clone());
            }
        }
        let mut failures = Vec::new();
        for (dir, names) in dirs {
            match start(&dir, names.clone(), self.tx.clone(), self.lost.clone()) {
                Ok(thread) => self.threads.push(thread),
                Err(e) => {
                    tracing::warn!(dir = %dir.display(), error = %e, "cannot watch a lure directory");
                    for file in names.into_values() {
                        failures.push((file, io::Error::new(e.kind(), e.to_string())));
                    }
                }
            }
        }
        failures
    }

    async fn next(&mut self) -> io::Result<Vec<Access>> {
        let Some(first) = self.rx.recv().await else {
            return Err(io::Error::other("the directory watchers stopped"));
        };
        let mut all = vec![first];
        while let Ok(more) = self.rx.try_recv() {
            all.push(more);
        }
        Ok(all)
    }
}

/// Opens `dir` for change notification and starts its thread.
fn start(
    dir: &Path,
    names: BTreeMap<String, PathBuf>,
    tx: mpsc::Sender<Access>,
    lost: Arc<AtomicU64>,
) -> io::Result<DirThread> {
    let handle = OpenOptions::new()
        .access_mode(FILE_LIST_DIRECTORY)
        .share_mode(FILE_SHARE_READ | FILE_SHARE_WRITE | FILE_SHARE_DELETE)
        .custom_flags(FILE_FLAG_BACKUP_SEMANTICS | FILE_FLAG_OVERLAPPED)
        .open(dir)?;
    let stop = Arc::new(Event::new()?);
    let ready = Event::new()?;
    let thread_stop = stop.clone();
    let dir = dir.to_path_buf();
    let thread = std::thread::Builder::new()
        .name("ruse-dirwatch".into())
        .spawn(move || {
            let send = |accesses: Vec<Access>| {
                for access in accesses {
                    if tx.try_send(access).is_err() {
                        lost.fetch_add(1, Ordering::Relaxed);
                    }
                }
            };
            if let Err(e) = run(&handle, &thread_stop, &ready, &names, send) {
                tracing::warn!(dir = %dir.display(), error = %e, "a lure directory is no longer watched");
            }
        })?;
    Ok(DirThread { stop, thread })
}

/// The thread: wait for changes or the stop event, report changes to the
/// watched names.
fn run(
    dir: &std::fs::File,
    stop: &Event,
    done: &Event,
    names: &BTreeMap<String, PathBuf>,
    mut send: impl FnMut(Vec<Access>),
) -> io::Result<()> {
    let mut buf = vec![0u32; CHANGE_BUFFER / 4];
    let handle = dir.as_raw_handle() as HANDLE;
    loop {
        // SAFETY: an all-zero OVERLAPPED is valid; it and `buf` outlive the
        // request, which is complete or cancelled before either is reused.
        let mut ov: OVERLAPPED = unsafe { std::mem::zeroed() };
        ov.hEvent = done.0;
        // SAFETY: valid handle, buffer and OVERLAPPED (see above).
        let issued = unsafe {
            ReadDirectoryChangesW(
                handle,
                buf.as_mut_ptr().cast(),
                (buf.len() * 4) as u32,
                FALSE,
                FILE_NOTIFY_CHANGE_FILE_NAME
                    | FILE_NOTIFY_CHANGE_LAST_WRITE
                    | FILE_NOTIFY_CHANGE_SIZE
                    | FILE_NOTIFY_CHANGE_ATTRIBUTES
                    | FILE_NOTIFY_CHANGE_SECURITY,
                std::ptr::null_mut(),
                &mut ov,
                None,
            )
        };
        // SAFETY: reading the calling thread's last error.
        if issued == 0 && unsafe { GetLastError() } != ERROR_IO_PENDING {
            return Err(io::Error::last_os_error());
        }
        let waits = [done.0, stop.0];
        // SAFETY: both handles are open events.
        let woke = unsafe { WaitForMultipleObjects(2, waits.as_ptr(), FALSE, INFINITE) };
        let mut bytes = 0u32;
        if woke != WAIT_OBJECT_0 {
            // Stop: cancel the request and wait until it is really over
            // before the buffer goes away.
            // SAFETY: the request and OVERLAPPED are ours and alive.
            unsafe {
                CancelIoEx(handle, &ov);
                GetOverlappedResult(handle, &ov, &mut bytes, TRUE);
            }
            return Ok(());
        }
        // SAFETY: the request completed (its event is set).
        let ok = unsafe { GetOverlappedResult(handle, &ov, &mut bytes, FALSE) };
        // SAFETY: a manual-reset event; reset before the next request.
        unsafe { windows_sys::Win32::System::Threading::ResetEvent(done.0) };
        if ok == 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(ERROR_OPERATION_ABORTED as i32) {
                return Ok(());
            }
            return Err(e);
        }
        let bytes: Vec<u8> = buf
            .iter()
            .flat_map(|w| w.to_ne_bytes())
            .take(bytes as usize)
            .collect();
        let accesses = if bytes.is_empty() {
            // The system's buffer overflowed: every watched file may have
            // changed; the agent checks them all.
            names
                .values()
                .map(|path| change(path.clone(), Op::Modify))
                .collect()
        } else {
            parse_changes(&bytes)
                .into_iter()
                .filter_map(|(action, name)| {
                    let path = names.get(&fold(&name))?;
                    Some(change(path.clone(), op_of(action)?))
                })
                .collect::<Vec<_>>()
        };
        if !accesses.is_empty() {
            send(accesses);
        }
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
    loop {
        let (Some(next), Some(action), Some(len)) = (u32_at(at), u32_at(at + 4), u32_at(at + 8))
        else {
            break;
        };
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

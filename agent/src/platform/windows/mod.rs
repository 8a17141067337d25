//! Windows: `ReadDirectoryChangesW` for changes to lures (`watcher.rs`),
//! the registry and IP Helper for host facts (`facts.rs`), the process
//! image name for who a process is, Ctrl-C, Ctrl-Break or the console
//! closing to stop (and the service manager's stop, `service.rs`).

pub mod facts;
pub mod service;
pub mod watcher;

use std::io;

use windows_sys::Win32::Foundation::{CloseHandle, HANDLE};
use windows_sys::Win32::System::Threading::{
    OpenProcess, PROCESS_NAME_WIN32, PROCESS_QUERY_LIMITED_INFORMATION, QueryFullProcessImageNameW,
};

use ruse_proto::convert::{EventProcess, HostFacts};
use ruse_proto::types::Labels;

use super::Platform;

/// The Windows implementation of the platform seam.
#[derive(Debug, Clone, Copy)]
pub struct Windows;

impl Platform for Windows {
    type Watcher = watcher::Watcher;

    fn watcher() -> io::Result<watcher::Watcher> {
        watcher::Watcher::new()
    }

    fn process(pid: i32) -> Option<EventProcess> {
        let pid = u32::try_from(pid).ok()?;
        Some(EventProcess {
            pid,
            exe: image_name(pid)?,
            uid: 0,
            user: String::new(),
            cmdline: String::new(),
        })
    }

    fn host_facts(labels: &Labels) -> HostFacts {
        facts::gather(labels)
    }

    async fn stop_requested() {
        use tokio::signal::windows;
        match (windows::ctrl_break(), windows::ctrl_close()) {
            (Ok(mut brk), Ok(mut close)) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = brk.recv() => {}
                    _ = close.recv() => {}
                    () = service::stop_requested() => {}
                }
            }
            _ => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    () = service::stop_requested() => {}
                }
            }
        }
    }
}

/// The full path of process `pid`'s executable.
fn image_name(pid: u32) -> Option<String> {
    // SAFETY: the process handle is closed below; the buffer's length in
    // characters is passed in and the written length comes back.
    unsafe {
        let process: HANDLE = OpenProcess(PROCESS_QUERY_LIMITED_INFORMATION, 0, pid);
        if process.is_null() {
            return None;
        }
        let mut buf = [0u16; 1024];
        let mut len = buf.len() as u32;
        let ok =
            QueryFullProcessImageNameW(process, PROCESS_NAME_WIN32, buf.as_mut_ptr(), &mut len);
        CloseHandle(process);
        (ok != 0).then(|| String::from_utf16_lossy(&buf[..len as usize]))
    }
}

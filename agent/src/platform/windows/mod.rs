//! Windows: `ReadDirectoryChangesW` for changes to lures (`watcher.rs`),
//! the registry and IP Helper for host facts (`facts.rs`), the process
//! image name for who a process is, Ctrl-C, Ctrl-Break or the console
//! closing to stop (and the service manager's stop, `service.rs`).

pub mod audit;
pub mod facts;
pub mod registry;
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

/// `s` as a NUL-terminated UTF-16 string, as the wide API takes it.
pub(crate) fn wide(s: &str) -> Vec<u16> {
    s.encode_utf16().chain(Some(0)).collect()
}

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

    fn detection_problems() -> Vec<String> {
        // A group policy refresh may have turned it off again.
        audit::ensure_policy();
        audit::problems()
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

/// Enables `privilege` in the process token (LocalSystem holds the backup,
/// restore and security privileges, disabled until asked for).
pub(crate) fn enable_privilege(privilege: &str) -> io::Result<()> {
    use windows_sys::Win32::Foundation::{ERROR_SUCCESS, LUID};
    use windows_sys::Win32::Security::{
        AdjustTokenPrivileges, LUID_AND_ATTRIBUTES, LookupPrivilegeValueW, SE_PRIVILEGE_ENABLED,
        TOKEN_ADJUST_PRIVILEGES, TOKEN_PRIVILEGES, TOKEN_QUERY,
    };
    use windows_sys::Win32::System::Threading::{GetCurrentProcess, OpenProcessToken};

    let name = wide(privilege);
    let mut luid = LUID {
        LowPart: 0,
        HighPart: 0,
    };
    // SAFETY: `name` is NUL-terminated; `luid` receives the value.
    if unsafe { LookupPrivilegeValueW(std::ptr::null(), name.as_ptr(), &mut luid) } == 0 {
        return Err(io::Error::last_os_error());
    }
    let mut token: HANDLE = std::ptr::null_mut();
    // SAFETY: the current process's pseudo-handle; `token` receives a
    // handle closed below.
    if unsafe {
        OpenProcessToken(
            GetCurrentProcess(),
            TOKEN_ADJUST_PRIVILEGES | TOKEN_QUERY,
            &mut token,
        )
    } == 0
    {
        return Err(io::Error::last_os_error());
    }
    let state = TOKEN_PRIVILEGES {
        PrivilegeCount: 1,
        Privileges: [LUID_AND_ATTRIBUTES {
            Luid: luid,
            Attributes: SE_PRIVILEGE_ENABLED,
        }],
    };
    // SAFETY: `state` is one privilege; the previous state is not asked
    // for. AdjustTokenPrivileges succeeds without assigning a privilege
    // the token lacks, which GetLastError reports.
    let ok = unsafe {
        AdjustTokenPrivileges(
            token,
            0,
            &state,
            0,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        )
    };
    let error = io::Error::last_os_error();
    // SAFETY: the token handle is open and ours.
    unsafe { CloseHandle(token) };
    if ok == 0 || error.raw_os_error() != Some(ERROR_SUCCESS as i32) {
        return Err(io::Error::other(format!(
            "{privilege} could not be enabled ({error}); the agent runs as LocalSystem as a service"
        )));
    }
    Ok(())
}

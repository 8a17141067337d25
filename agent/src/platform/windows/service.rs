//! Running as a Windows service: `ruse-agent.exe service …` is what the
//! service manager starts (the MSI installs it so, as LocalSystem, started
//! at boot). [`dispatch`] hands the process's main thread to the service
//! manager, which calls back [`service_main`] on a thread of its own: that
//! reports the service running, makes sure the service restarts on
//! failure, runs the agent and reports it stopped with its exit code. A
//! stop or shutdown from the manager is what [`stop_requested`] waits for.

use std::ffi::c_void;
use std::io;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use tokio::sync::Notify;

use super::wide;
use windows_sys::Win32::Foundation::{
    ERROR_CALL_NOT_IMPLEMENTED, ERROR_SERVICE_SPECIFIC_ERROR, NO_ERROR,
};
use windows_sys::Win32::System::Services::{
    ChangeServiceConfig2W, CloseServiceHandle, OpenSCManagerW, OpenServiceW,
    RegisterServiceCtrlHandlerExW, SC_ACTION, SC_ACTION_RESTART, SC_MANAGER_CONNECT,
    SERVICE_ACCEPT_SHUTDOWN, SERVICE_ACCEPT_STOP, SERVICE_CHANGE_CONFIG,
    SERVICE_CONFIG_FAILURE_ACTIONS, SERVICE_CONTROL_INTERROGATE, SERVICE_CONTROL_SHUTDOWN,
    SERVICE_CONTROL_STOP, SERVICE_FAILURE_ACTIONSW, SERVICE_RUNNING, SERVICE_START,
    SERVICE_START_PENDING, SERVICE_STATUS, SERVICE_STATUS_CURRENT_STATE, SERVICE_STATUS_HANDLE,
    SERVICE_STOP_PENDING, SERVICE_STOPPED, SERVICE_TABLE_ENTRYW, SERVICE_WIN32_OWN_PROCESS,
    SetServiceStatus, StartServiceCtrlDispatcherW,
};

/// The service's name, as the MSI installs it.
pub const SERVICE_NAME: &str = "RuseAgent";

type Body = Box<dyn FnOnce() -> u32 + Send>;

/// What the service runs, handed from [`dispatch`] to [`service_main`].
static BODY: Mutex<Option<Body>> = Mutex::new(None);
/// The handle [`set_status`] reports through.
static STATUS: AtomicUsize = AtomicUsize::new(0);
static STOPPING: AtomicBool = AtomicBool::new(false);
static STOP: Notify = Notify::const_new();

/// Runs `body` as the service; returns when the service has stopped. Fails
/// at once when the process was not started by the service manager.
pub fn dispatch(body: impl FnOnce() -> u32 + Send + 'static) -> io::Result<()> {
    *BODY.lock().unwrap_or_else(|e| e.into_inner()) = Some(Box::new(body));
    let mut name = wide(SERVICE_NAME);
    let table = [
        SERVICE_TABLE_ENTRYW {
            lpServiceName: name.as_mut_ptr(),
            lpServiceProc: Some(service_main),
        },
        SERVICE_TABLE_ENTRYW {
            lpServiceName: std::ptr::null_mut(),
            lpServiceProc: None,
        },
    ];
    // SAFETY: the table ends with a null entry and outlives the call,
    // which returns only when every service of the process has stopped.
    if unsafe { StartServiceCtrlDispatcherW(table.as_ptr()) } == 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Resolves when the service manager asked the service to stop.
pub async fn stop_requested() {
    loop {
        let notified = STOP.notified();
        if STOPPING.load(Ordering::Acquire) {
            return;
        }
        notified.await;
    }
}

extern "system" fn service_main(_argc: u32, _argv: *mut windows_sys::core::PWSTR) {
    let name = wide(SERVICE_NAME);
    // SAFETY: the name is NUL-terminated; the handler is a plain function
    // that lives as long as the process.
    let handle = unsafe {
        RegisterServiceCtrlHandlerExW(name.as_ptr(), Some(handler), std::ptr::null_mut())
    };
    if handle.is_null() {
        return;
    }
    STATUS.store(handle as usize, Ordering::Release);
    set_status(SERVICE_START_PENDING, 0);
    if let Err(e) = restart_on_failure() {
        tracing::warn!(error = %e, "cannot set the service to restart on failure");
    }
    set_status(SERVICE_RUNNING, 0);
    let body = BODY.lock().unwrap_or_else(|e| e.into_inner()).take();
    let code = body.map_or(1, |run| run());
    set_status(SERVICE_STOPPED, code);
}

extern "system" fn handler(control: u32, _kind: u32, _data: *mut c_void, _ctx: *mut c_void) -> u32 {
    match control {
        SERVICE_CONTROL_STOP | SERVICE_CONTROL_SHUTDOWN => {
            set_status(SERVICE_STOP_PENDING, 0);
            STOPPING.store(true, Ordering::Release);
            STOP.notify_waiters();
            NO_ERROR
        }
        SERVICE_CONTROL_INTERROGATE => NO_ERROR,
        _ => ERROR_CALL_NOT_IMPLEMENTED,
    }
}

fn set_status(state: SERVICE_STATUS_CURRENT_STATE, exit_code: u32) {
    let handle = STATUS.load(Ordering::Acquire) as SERVICE_STATUS_HANDLE;
    if handle.is_null() {
        return;
    }
    let status = SERVICE_STATUS {
        dwServiceType: SERVICE_WIN32_OWN_PROCESS,
        dwCurrentState: state,
        dwControlsAccepted: if state == SERVICE_RUNNING {
            SERVICE_ACCEPT_STOP | SERVICE_ACCEPT_SHUTDOWN
        } else {
            0
        },
        dwWin32ExitCode: if exit_code == 0 {
            NO_ERROR
        } else {
            ERROR_SERVICE_SPECIFIC_ERROR
        },
        dwServiceSpecificExitCode: exit_code,
        dwCheckPoint: 0,
        // The agent drains within its own deadline (a few seconds).
        dwWaitHint: if state == SERVICE_STOP_PENDING || state == SERVICE_START_PENDING {
            30_000
        } else {
            0
        },
    };
    // SAFETY: the handle came from RegisterServiceCtrlHandlerExW.
    unsafe { SetServiceStatus(handle, &status) };
}

/// Restart after 5 s, 30 s and 2 min, counting failures over a day: set
/// by the service on itself at each start, so it holds however the
/// service was installed.
fn restart_on_failure() -> io::Result<()> {
    let name = wide(SERVICE_NAME);
    let mut actions = [
        SC_ACTION {
            Type: SC_ACTION_RESTART,
            Delay: 5_000,
        },
        SC_ACTION {
            Type: SC_ACTION_RESTART,
            Delay: 30_000,
        },
        SC_ACTION {
            Type: SC_ACTION_RESTART,
            Delay: 120_000,
        },
    ];
    let mut failure = SERVICE_FAILURE_ACTIONSW {
        dwResetPeriod: 24 * 3600,
        lpRebootMsg: std::ptr::null_mut(),
        lpCommand: std::ptr::null_mut(),
        cActions: actions.len() as u32,
        lpsaActions: actions.as_mut_ptr(),
    };
    // SAFETY: handles are closed below; the structures outlive the call.
    unsafe {
        let manager = OpenSCManagerW(std::ptr::null(), std::ptr::null(), SC_MANAGER_CONNECT);
        if manager.is_null() {
            return Err(io::Error::last_os_error());
        }
        let service = OpenServiceW(
            manager,
            name.as_ptr(),
            SERVICE_CHANGE_CONFIG | SERVICE_START,
        );
        if service.is_null() {
            let e = io::Error::last_os_error();
            CloseServiceHandle(manager);
            return Err(e);
        }
        let ok = ChangeServiceConfig2W(
            service,
            SERVICE_CONFIG_FAILURE_ACTIONS,
            (&mut failure as *mut SERVICE_FAILURE_ACTIONSW).cast(),
        );
        let e = io::Error::last_os_error();
        CloseServiceHandle(service);
        CloseServiceHandle(manager);
        if ok == 0 { Err(e) } else { Ok(()) }
    }
}

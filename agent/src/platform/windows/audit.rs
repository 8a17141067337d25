//! Reads with the process behind them, through object-access auditing: a
//! read leaves no trace in `ReadDirectoryChangesW`, so the agent asks
//! Windows to log it. Three parts:
//!
//! - **SACLs**: every file a lure creates, and every registry key, gets an
//!   audit entry for a successful read of its data by anyone
//!   ([`LURE_SACL`]). Only what the agent made: a block added to a user's
//!   own file (`.ssh\config`) leaves that file's security descriptor as it
//!   is, so removal stays exact.
//! - **Policy**: the "File System" and "Registry" audit subcategories must
//!   log successes, or Windows ignores the SACLs; the agent turns them on
//!   and reads the policy back (a group policy may override it).
//! - **Subscription**: events 4663 and 4656 from the Security log, by
//!   `EvtSubscribe`, rendered as XML and parsed by
//!   [`crate::platform::security_event`].
//!
//! Each part needs `SeSecurityPrivilege` (LocalSystem and administrators
//! hold it). What fails is kept as a problem, reported in every heartbeat
//! ([`problems`]), and the agent goes on seeing changes without readers.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::windows::io::AsRawHandle;
use std::path::Path;
use std::sync::{Mutex, OnceLock};

use windows_sys::Win32::Foundation::{CloseHandle, HANDLE, INVALID_HANDLE_VALUE, LocalFree};
use windows_sys::Win32::Security::Authentication::Identity::{
    AUDIT_POLICY_INFORMATION, AuditFree, AuditQuerySystemPolicy, AuditSetSystemPolicy,
    POLICY_AUDIT_EVENT_SUCCESS,
};
use windows_sys::Win32::Security::Authorization::{
    ConvertStringSecurityDescriptorToSecurityDescriptorW, SDDL_REVISION_1,
};
use windows_sys::Win32::Security::{
    PSECURITY_DESCRIPTOR, SACL_SECURITY_INFORMATION, SetKernelObjectSecurity,
};
use windows_sys::Win32::Storage::FileSystem::{
    FILE_SHARE_DELETE, FILE_SHARE_READ, FILE_SHARE_WRITE, ReOpenFile,
};
use windows_sys::Win32::System::EventLog::{
    EVT_HANDLE, EVT_SUBSCRIBE_NOTIFY_ACTION, EvtClose, EvtRender, EvtRenderEventXml, EvtSubscribe,
    EvtSubscribeActionDeliver, EvtSubscribeToFutureEvents,
};
use windows_sys::Win32::System::Registry::{HKEY, RegSetKeySecurity};
use windows_sys::Win32::System::SystemServices::ACCESS_SYSTEM_SECURITY;
use windows_sys::core::GUID;

use super::wide;
use crate::platform::security_event::{self, AuditedAccess, MAX_EVENT};

/// A lure's audit entry: log every successful read of its data
/// (`FILE_READ_DATA`, for a key `KEY_QUERY_VALUE`, both 0x1) by
/// Everyone. Nothing else: attributes, listings and the agent's own
/// checks of its files' metadata stay out of the log.
pub const LURE_SACL: &str = "S:(AU;SA;0x1;;;WD)";

/// The audit subcategories the SACLs need: File System and Registry.
const SUBCATEGORIES: [(GUID, &str); 2] = [
    (
        GUID::from_u128(0x0cce921d_69ae_11d9_bed3_505054503030),
        "File System",
    ),
    (
        GUID::from_u128(0x0cce921e_69ae_11d9_bed3_505054503030),
        "Registry",
    ),
];

/// What the subscription asks the Security log for.
const QUERY: &str = "*[System[(EventID=4663 or EventID=4656)]]";

/// Problems by part, each cleared when that part works again.
static PROBLEMS: Mutex<BTreeMap<&'static str, String>> = Mutex::new(BTreeMap::new());

fn set_problem(part: &'static str, problem: Option<String>) {
    let mut problems = PROBLEMS.lock().unwrap_or_else(|e| e.into_inner());
    match problem {
        Some(p) => {
            if problems.get(part) != Some(&p) {
                tracing::warn!(problem = %p, "read attribution on Windows");
            }
            problems.insert(part, p);
        }
        None => {
            problems.remove(part);
        }
    }
}

/// Why reads are not (all) attributed, for the heartbeat.
pub fn problems() -> Vec<String> {
    PROBLEMS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .values()
        .cloned()
        .collect()
}

/// Whether `SeSecurityPrivilege` is enabled (asked for once).
pub fn privileged() -> bool {
    static HELD: OnceLock<bool> = OnceLock::new();
    *HELD.get_or_init(|| match super::enable_privilege("SeSecurityPrivilege") {
        Ok(()) => true,
        Err(e) => {
            set_problem(
                "privilege",
                Some(format!(
                    "reads of lures are not attributed: SeSecurityPrivilege is not held ({e}); run the agent as LocalSystem (the MSI's service does)"
                )),
            );
            false
        }
    })
}

/// A security descriptor from SDDL, freed on drop.
struct Descriptor(PSECURITY_DESCRIPTOR);

impl Descriptor {
    fn lure() -> io::Result<Descriptor> {
        let sddl = wide(LURE_SACL);
        let mut sd: PSECURITY_DESCRIPTOR = std::ptr::null_mut();
        // SAFETY: `sddl` is NUL-terminated; `sd` receives a LocalAlloc'd
        // descriptor, freed on drop.
        let ok = unsafe {
            ConvertStringSecurityDescriptorToSecurityDescriptorW(
                sddl.as_ptr(),
                SDDL_REVISION_1,
                &mut sd,
                std::ptr::null_mut(),
            )
        };
        if ok == 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Descriptor(sd))
    }
}

impl Drop for Descriptor {
    fn drop(&mut self) {
        // SAFETY: allocated by ConvertStringSecurityDescriptorToSecurityDescriptorW.
        unsafe { LocalFree(self.0.cast()) };
    }
}

fn sacl_result(result: io::Result<()>, what: &Path) {
    set_problem(
        "sacl",
        result.err().map(|e| {
            format!(
                "reads of lures are not attributed: cannot set the audit SACL on {} ({e})",
                what.display()
            )
        }),
    );
}

/// Gives the new file `file` (a lure's) the audit entry. A second handle
/// to the same file is opened for it (`ReOpenFile`, no path involved).
pub fn mark_file(file: &File, path: &Path) {
    if !privileged() {
        return;
    }
    let result = (|| {
        let sd = Descriptor::lure()?;
        // SAFETY: `file` is open; the new handle is closed below.
        let handle = unsafe {
            ReOpenFile(
                file.as_raw_handle() as HANDLE,
                ACCESS_SYSTEM_SECURITY,
                FILE_SHARE_READ | FILE_SHARE_WRITE | FILE_SHARE_DELETE,
                0,
            )
        };
        if handle == INVALID_HANDLE_VALUE || handle.is_null() {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the handle was opened with ACCESS_SYSTEM_SECURITY; the
        // descriptor holds a SACL.
        let ok = unsafe { SetKernelObjectSecurity(handle, SACL_SECURITY_INFORMATION, sd.0) };
        let error = io::Error::last_os_error();
        // SAFETY: the handle is ours.
        unsafe { CloseHandle(handle) };
        if ok == 0 { Err(error) } else { Ok(()) }
    })();
    sacl_result(result, path);
}

/// Gives a registry key a lure created the audit entry; `key` must be
/// open with `ACCESS_SYSTEM_SECURITY` ([`KEY_AUDIT_ACCESS`]). Only for the
/// registry module, which holds the key open.
pub(super) fn mark_key(key: HKEY, name: &str) {
    if !privileged() {
        return;
    }
    let result = Descriptor::lure().and_then(|sd| {
        // SAFETY: the key is open with ACCESS_SYSTEM_SECURITY.
        let rc = unsafe { RegSetKeySecurity(key, SACL_SECURITY_INFORMATION, sd.0) };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::from_raw_os_error(rc as i32))
        }
    });
    sacl_result(result, Path::new(name));
}

/// The access a key is opened with to set its audit entry.
pub const KEY_AUDIT_ACCESS: u32 = ACCESS_SYSTEM_SECURITY;

/// Makes sure the File System and Registry subcategories log successes,
/// turning them on if they do not; reads the policy back, since a group
/// policy (or "Force audit policy subcategory settings" being off) can
/// keep it from taking.
pub fn ensure_policy() {
    if !privileged() {
        return;
    }
    let off = |policy: &[u32]| -> Vec<&'static str> {
        SUBCATEGORIES
            .iter()
            .zip(policy)
            .filter(|(_, info)| **info & POLICY_AUDIT_EVENT_SUCCESS as u32 == 0)
            .map(|((_, name), _)| *name)
            .collect()
    };
    let problem = match query_policy() {
        Err(e) => Some(format!(
            "reads of lures are not attributed: cannot read the audit policy ({e})"
        )),
        Ok(policy) if off(&policy).is_empty() => None,
        Ok(policy) => {
            let wanted: Vec<AUDIT_POLICY_INFORMATION> = SUBCATEGORIES
                .iter()
                .zip(&policy)
                .map(|((guid, _), info)| AUDIT_POLICY_INFORMATION {
                    AuditSubCategoryGuid: *guid,
                    AuditingInformation: info | POLICY_AUDIT_EVENT_SUCCESS as u32,
                    AuditCategoryGuid: GUID::from_u128(0),
                })
                .collect();
            // SAFETY: `wanted` holds that many entries.
            let set = unsafe { AuditSetSystemPolicy(wanted.as_ptr(), wanted.len() as u32) };
            let set_error = io::Error::last_os_error();
            match query_policy() {
                Ok(after) if off(&after).is_empty() => {
                    tracing::info!(subcategories = ?off(&policy), "turned on success auditing for lures");
                    None
                }
                Ok(after) => Some(format!(
                    "reads of lures are not attributed: success auditing of {} is off and could not be turned on{} (is it set by a group policy?)",
                    off(&after).join(" and "),
                    if set {
                        String::new()
                    } else {
                        format!(" ({set_error})")
                    }
                )),
                Err(e) => Some(format!(
                    "reads of lures are not attributed: cannot read the audit policy back ({e})"
                )),
            }
        }
    };
    set_problem("policy", problem);
}

/// The auditing information of [`SUBCATEGORIES`], in order.
fn query_policy() -> io::Result<Vec<u32>> {
    let guids: Vec<GUID> = SUBCATEGORIES.iter().map(|(g, _)| *g).collect();
    let mut out: *mut AUDIT_POLICY_INFORMATION = std::ptr::null_mut();
    // SAFETY: `guids` holds that many GUIDs; `out` receives an array of as
    // many entries, freed with AuditFree.
    if !unsafe { AuditQuerySystemPolicy(guids.as_ptr(), guids.len() as u32, &mut out) } {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: on success `out` points to `guids.len()` entries.
    let policy = unsafe { std::slice::from_raw_parts(out, guids.len()) }
        .iter()
        .map(|p| p.AuditingInformation)
        .collect();
    // SAFETY: allocated by AuditQuerySystemPolicy.
    unsafe { AuditFree(out.cast()) };
    Ok(policy)
}

type OnAccess = Box<dyn Fn(AuditedAccess) + Send + Sync>;

/// A subscription to the Security log's object-access events; closed on
/// drop.
pub struct Subscription {
    handle: EVT_HANDLE,
    context: *mut OnAccess,
}

// SAFETY: the handle may be closed from any thread; the context is only
// read by the callbacks, which closing the handle waits for.
unsafe impl Send for Subscription {}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Subscription")
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        // SAFETY: the handle is open; once closed no callback runs, and
        // the context can go.
        unsafe {
            EvtClose(self.handle);
            drop(Box::from_raw(self.context));
        }
    }
}

/// Subscribes to events 4663 and 4656 from now on; each one that parses
/// goes to `on_access` (on a thread of the event log's pool). `None`, with
/// the problem recorded, when the log cannot be read.
pub fn subscribe(on_access: OnAccess) -> Option<Subscription> {
    if !privileged() {
        return None;
    }
    let (channel, query) = (wide("Security"), wide(QUERY));
    let context = Box::into_raw(Box::new(on_access));
    // SAFETY: the strings are NUL-terminated; `context` lives until the
    // subscription is closed (or is freed below if there is none).
    let handle = unsafe {
        EvtSubscribe(
            0,
            std::ptr::null_mut(),
            channel.as_ptr(),
            query.as_ptr(),
            0,
            context as *const std::ffi::c_void,
            Some(deliver),
            EvtSubscribeToFutureEvents,
        )
    };
    if handle == 0 {
        let e = io::Error::last_os_error();
        // SAFETY: no subscription holds the context.
        drop(unsafe { Box::from_raw(context) });
        set_problem(
            "subscribe",
            Some(format!(
                "reads of lures are not attributed: cannot subscribe to the Security event log ({e})"
            )),
        );
        return None;
    }
    set_problem("subscribe", None);
    Some(Subscription { handle, context })
}

/// The event log's callback: renders a delivered event and hands it on.
unsafe extern "system" fn deliver(
    action: EVT_SUBSCRIBE_NOTIFY_ACTION,
    context: *const std::ffi::c_void,
    event: EVT_HANDLE,
) -> u32 {
    if action != EvtSubscribeActionDeliver {
        return 0;
    }
    // SAFETY: the context is the subscription's, alive while it is open.
    let on_access = unsafe { &*(context as *const OnAccess) };
    if let Some(xml) = render(event)
        && let Ok(access) = security_event::parse(&xml)
    {
        on_access(access);
    }
    0
}

/// An event as XML, if it fits [`MAX_EVENT`].
fn render(event: EVT_HANDLE) -> Option<String> {
    let mut buf = vec![0u16; 8 * 1024];
    let (mut used, mut count) = (0u32, 0u32);
    for _ in 0..2 {
        // SAFETY: `buf` holds `len` bytes.
        let ok = unsafe {
            EvtRender(
                0,
                event,
                EvtRenderEventXml,
                (buf.len() * 2) as u32,
                buf.as_mut_ptr().cast(),
                &mut used,
                &mut count,
            )
        };
        if ok != 0 {
            let chars = (used as usize / 2).min(buf.len());
            let xml = String::from_utf16_lossy(&buf[..chars]);
            return Some(xml.trim_end_matches('\0').to_owned());
        }
        let needed = used as usize / 2 + 1;
        if needed > MAX_EVENT || needed <= buf.len() {
            return None;
        }
        buf.resize(needed, 0);
    }
    None
}

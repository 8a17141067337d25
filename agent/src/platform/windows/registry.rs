//! The registry, for registry lures: which hive is whose profile
//! (`ProfileList`), a user's hive opened — or loaded from `NTUSER.DAT`
//! while the user is not logged on, and unloaded again — and the few key
//! and value operations planting needs.

use std::io;
use std::path::{Path, PathBuf};

use windows_sys::Win32::Foundation::{
    ERROR_FILE_NOT_FOUND, ERROR_MORE_DATA, ERROR_NO_MORE_ITEMS, ERROR_SUCCESS, WIN32_ERROR,
};
use windows_sys::Win32::System::Registry::{
    HKEY, HKEY_LOCAL_MACHINE, HKEY_USERS, KEY_ENUMERATE_SUB_KEYS, KEY_QUERY_VALUE, KEY_READ,
    KEY_WRITE, REG_CREATED_NEW_KEY, REG_DWORD, REG_OPTION_NON_VOLATILE, REG_SZ, REG_VALUE_TYPE,
    RRF_RT_REG_SZ, RegCloseKey, RegCreateKeyExW, RegDeleteKeyW, RegDeleteValueW, RegEnumKeyExW,
    RegGetValueW, RegLoadKeyW, RegOpenKeyExW, RegQueryInfoKeyW, RegQueryValueExW, RegSetValueExW,
    RegUnLoadKeyW,
};

use ruse_proto::spec::RegistryData;

use super::wide;

const PROFILE_LIST: &str = r"SOFTWARE\Microsoft\Windows NT\CurrentVersion\ProfileList";

fn check(rc: WIN32_ERROR) -> io::Result<()> {
    if rc == ERROR_SUCCESS {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(rc as i32))
    }
}

/// Whether `e` says the key or value does not exist.
pub fn is_not_found(e: &io::Error) -> bool {
    e.raw_os_error() == Some(ERROR_FILE_NOT_FOUND as i32)
}

/// An open registry key, closed on drop.
#[derive(Debug)]
pub struct Key(HKEY);

// SAFETY: a registry key handle may be used and closed from any thread.
unsafe impl Send for Key {}

impl Drop for Key {
    fn drop(&mut self) {
        // SAFETY: the handle is open and owned by this value.
        unsafe { RegCloseKey(self.0) };
    }
}

impl Key {
    /// `sub` under `parent`, opened for reading and writing.
    fn open_under(parent: HKEY, sub: &str, access: u32) -> io::Result<Key> {
        let name = wide(sub);
        let mut key: HKEY = std::ptr::null_mut();
        // SAFETY: `name` is NUL-terminated and `key` receives the handle.
        check(unsafe { RegOpenKeyExW(parent, name.as_ptr(), 0, access, &mut key) })?;
        Ok(Key(key))
    }

    pub fn open(&self, sub: &str) -> io::Result<Key> {
        Key::open_under(self.0, sub, KEY_READ | KEY_WRITE)
    }

    /// Creates (or opens) the subkey `name`; whether it was created.
    pub fn create(&self, name: &str) -> io::Result<(Key, bool)> {
        let name = wide(name);
        let mut key: HKEY = std::ptr::null_mut();
        let mut disposition = 0u32;
        // SAFETY: `name` is NUL-terminated; no class, default security;
        // `key` and `disposition` receive the results.
        check(unsafe {
            RegCreateKeyExW(
                self.0,
                name.as_ptr(),
                0,
                std::ptr::null(),
                REG_OPTION_NON_VOLATILE,
                KEY_READ | KEY_WRITE,
                std::ptr::null(),
                &mut key,
                &mut disposition,
            )
        })?;
        Ok((Key(key), disposition == REG_CREATED_NEW_KEY))
    }

    pub fn set(&self, name: &str, data: &RegistryData) -> io::Result<()> {
        let name = wide(name);
        let (kind, bytes): (REG_VALUE_TYPE, Vec<u8>) = match data {
            RegistryData::Text(t) => (
                REG_SZ,
                wide(t).iter().flat_map(|c| c.to_le_bytes()).collect(),
            ),
            RegistryData::Dword(d) => (REG_DWORD, d.to_le_bytes().to_vec()),
        };
        let len = u32::try_from(bytes.len()).map_err(|_| io::Error::other("value too long"))?;
        // SAFETY: `bytes` holds `len` bytes of the value's type.
        check(unsafe { RegSetValueExW(self.0, name.as_ptr(), 0, kind, bytes.as_ptr(), len) })
    }

    /// The value `name`, if it exists; a value of another type than lures
    /// plant reads as `None` data (`Ok(Some(None))`).
    pub fn get(&self, name: &str) -> io::Result<Option<Option<RegistryData>>> {
        let name = wide(name);
        let mut kind: REG_VALUE_TYPE = 0;
        let mut buf = vec![0u8; 512];
        loop {
            let mut len = buf.len() as u32;
            // SAFETY: `buf` holds `len` bytes.
            let rc = unsafe {
                RegQueryValueExW(
                    self.0,
                    name.as_ptr(),
                    std::ptr::null(),
                    &mut kind,
                    buf.as_mut_ptr(),
                    &mut len,
                )
            };
            if rc == ERROR_MORE_DATA && buf.len() < 1 << 20 {
                buf.resize(len as usize, 0);
                continue;
            }
            if rc == ERROR_FILE_NOT_FOUND {
                return Ok(None);
            }
            check(rc)?;
            let bytes = &buf[..(len as usize).min(buf.len())];
            return Ok(Some(match kind {
                REG_SZ => {
                    let chars: Vec<u16> = bytes
                        .chunks_exact(2)
                        .map(|c| u16::from_le_bytes([c[0], c[1]]))
                        .collect();
                    let text = String::from_utf16_lossy(&chars);
                    Some(RegistryData::Text(text.trim_end_matches('\0').to_owned()))
                }
                REG_DWORD if bytes.len() == 4 => Some(RegistryData::Dword(u32::from_le_bytes([
                    bytes[0], bytes[1], bytes[2], bytes[3],
                ]))),
                _ => None,
            }));
        }
    }

    pub fn delete_value(&self, name: &str) -> io::Result<()> {
        let name = wide(name);
        // SAFETY: `name` is NUL-terminated.
        check(unsafe { RegDeleteValueW(self.0, name.as_ptr()) })
    }

    /// Whether the key holds no subkeys and no values.
    pub fn is_empty(&self) -> io::Result<bool> {
        let (mut subkeys, mut values) = (0u32, 0u32);
        let null = std::ptr::null_mut::<u32>();
        // SAFETY: only the two counts are asked for.
        check(unsafe {
            RegQueryInfoKeyW(
                self.0,
                null.cast(),
                null.cast(),
                std::ptr::null(),
                &mut subkeys,
                null.cast(),
                null.cast(),
                &mut values,
                null.cast(),
                null.cast(),
                null.cast(),
                null.cast(),
            )
        })?;
        Ok(subkeys == 0 && values == 0)
    }

    /// Deletes the subkey `name`, which must have no subkeys.
    pub fn delete_subkey(&self, name: &str) -> io::Result<()> {
        let name = wide(name);
        // SAFETY: `name` is NUL-terminated.
        check(unsafe { RegDeleteKeyW(self.0, name.as_ptr()) })
    }
}

/// Gives the key `sub` under `root` (one a lure created) the audit entry
/// that has Windows log reads of its values.
pub fn mark_audited(root: &Key, sub: &str, name: &str) {
    // Opening a key for its SACL needs the privilege enabled first.
    if !super::audit::privileged() {
        return;
    }
    match Key::open_under(root.0, sub, super::audit::KEY_AUDIT_ACCESS) {
        Ok(key) => super::audit::mark_key(key.0, name),
        // Without the privilege the key cannot be opened for it; that
        // problem is the privilege's, reported already.
        Err(e) => {
            tracing::debug!(key = name, error = %e, "cannot open a registry lure to audit it")
        }
    }
}

/// A user's hive, open at `HKEY_USERS\<SID>`; loaded for the time it is
/// held when the user was not logged on.
#[derive(Debug)]
pub struct Hive {
    key: Option<Key>,
    loaded: Option<Vec<u16>>,
}

impl Hive {
    /// The hive of `sid` if it is loaded (the user is logged on, or a
    /// service runs as them); `None` if not.
    pub fn loaded(sid: &str) -> io::Result<Option<Hive>> {
        match Key::open_under(HKEY_USERS, sid, KEY_READ | KEY_WRITE) {
            Ok(key) => Ok(Some(Hive {
                key: Some(key),
                loaded: None,
            })),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The hive of `sid`, loading it from `profile\NTUSER.DAT` (and
    /// unloading it when dropped) if it is not loaded.
    pub fn open(sid: &str, profile: &Path) -> io::Result<Hive> {
        if let Some(hive) = Hive::loaded(sid)? {
            return Ok(hive);
        }
        super::enable_privilege("SeRestorePrivilege")?;
        super::enable_privilege("SeBackupPrivilege")?;
        let name = wide(sid);
        let file = wide(&profile.join("NTUSER.DAT").to_string_lossy());
        // SAFETY: both strings are NUL-terminated.
        check(unsafe { RegLoadKeyW(HKEY_USERS, name.as_ptr(), file.as_ptr()) })?;
        // Unloaded again on drop, should opening it fail.
        let mut hive = Hive {
            key: None,
            loaded: Some(name),
        };
        hive.key = Some(Key::open_under(HKEY_USERS, sid, KEY_READ | KEY_WRITE)?);
        Ok(hive)
    }

    pub fn root(&self) -> &Key {
        self.key.as_ref().expect("an open hive has its key")
    }
}

impl Drop for Hive {
    fn drop(&mut self) {
        // Every handle into a hive must be closed before it unloads.
        self.key = None;
        if let Some(name) = &self.loaded {
            // SAFETY: `name` is NUL-terminated; the hive was loaded by us.
            let rc = unsafe { RegUnLoadKeyW(HKEY_USERS, name.as_ptr()) };
            if rc != ERROR_SUCCESS {
                tracing::warn!(
                    error = %io::Error::from_raw_os_error(rc as i32),
                    "a user's registry hive loaded for planting could not be unloaded"
                );
            }
        }
    }
}

/// Every profile's directory and SID, from `ProfileList`.
pub fn profiles() -> Vec<(PathBuf, String)> {
    let Ok(list) = Key::open_under(
        HKEY_LOCAL_MACHINE,
        PROFILE_LIST,
        KEY_READ | KEY_QUERY_VALUE | KEY_ENUMERATE_SUB_KEYS,
    ) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for index in 0.. {
        let mut name = [0u16; 256];
        let mut len = name.len() as u32;
        let null = std::ptr::null_mut::<u16>();
        // SAFETY: `name` holds `len` characters; nothing else is asked for.
        let rc = unsafe {
            RegEnumKeyExW(
                list.0,
                index,
                name.as_mut_ptr(),
                &mut len,
                std::ptr::null(),
                null,
                null.cast(),
                null.cast(),
            )
        };
        if rc == ERROR_NO_MORE_ITEMS || rc != ERROR_SUCCESS || index > 10_000 {
            break;
        }
        let sid = String::from_utf16_lossy(&name[..len as usize]);
        if let Some(path) = profile_path(&list, &sid) {
            out.push((path, sid));
        }
    }
    out
}

/// A profile's `ProfileImagePath`, environment variables expanded.
fn profile_path(list: &Key, sid: &str) -> Option<PathBuf> {
    string_value(list.0, sid, "ProfileImagePath").map(PathBuf::from)
}

/// The string value `name` of the key `sub` under `root`, a REG_EXPAND_SZ
/// expanded; `None` if it is missing or empty. `root` is an open key or a
/// predefined one, so this stays inside the Windows platform.
pub(super) fn string_value(root: HKEY, sub: &str, name: &str) -> Option<String> {
    let (sub, value) = (wide(sub), wide(name));
    let mut buf = vec![0u16; 1024];
    let mut bytes = (buf.len() * 2) as u32;
    // SAFETY: `bytes` is the buffer's size in bytes; the value is a string.
    let rc = unsafe {
        RegGetValueW(
            root,
            sub.as_ptr(),
            value.as_ptr(),
            // Without RRF_NOEXPAND this takes REG_EXPAND_SZ too, expanded
            // (asking for RRF_RT_REG_EXPAND_SZ as well is refused).
            RRF_RT_REG_SZ,
            std::ptr::null_mut(),
            buf.as_mut_ptr().cast(),
            &mut bytes,
        )
    };
    if rc != ERROR_SUCCESS {
        return None;
    }
    let chars = (bytes as usize / 2).min(buf.len());
    let s = String::from_utf16_lossy(&buf[..chars]);
    Some(s.trim_end_matches('\0').to_owned()).filter(|s| !s.is_empty())
}

//! Writing and reading key material on disk.
//!
//! Private files are created with mode 0600 from the start (never written
//! and then narrowed; on Windows a private directory gets a protected ACL
//! of SYSTEM and Administrators only, which the files in it inherit),
//! written to a temporary file in the same directory,
//! synced, and renamed into place, so a crash leaves either the old or the
//! new file, never half of one.

use std::fs;
use std::io::Write;
#[cfg(unix)]
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use crate::PkiError;

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Creates with `mode` on Unix; on Windows the directory's ACL decides.
fn with_mode(options: &mut fs::OpenOptions, mode: u32) -> &mut fs::OpenOptions {
    #[cfg(unix)]
    options.mode(mode);
    #[cfg(not(unix))]
    let _ = mode;
    options
}

fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<(), PkiError> {
    write_atomic_with(path, mode, |w| w.write_all(contents))
}

fn write_atomic_with(
    path: &Path,
    mode: u32,
    write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> Result<(), PkiError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{file_name}.tmp-{}", std::process::id()));
    let result = (|| {
        let file = with_mode(
            fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true),
            mode,
        )
        .open(&tmp)?;
        // The mode given to open() is reduced by the umask; set it exactly.
        #[cfg(unix)]
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        let mut out = std::io::BufWriter::new(file);
        write(&mut out)?;
        let file = out
            .into_inner()
            .map_err(std::io::IntoInnerError::into_error)?;
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        if let Ok(d) = fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(io_err(path))
}

/// Creates `dir` (and its parents) if missing and makes it 0700, so what
/// is written inside is private whatever the process umask. A directory
/// the process may not change (a volume an orchestrator mounted, owned by
/// someone else) keeps its mode; the files made in it are private anyway.
pub fn create_private_dir(dir: &Path) -> Result<(), PkiError> {
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    #[cfg(windows)]
    windows::protect_dir(dir).map_err(io_err(dir))?;
    #[cfg(unix)]
    narrow_dir(dir)?;
    Ok(())
}

/// Makes an existing directory 0700 where the process may.
#[cfg(unix)]
fn narrow_dir(dir: &Path) -> Result<(), PkiError> {
    let meta = fs::metadata(dir).map_err(io_err(dir))?;
    if meta.permissions().mode() & 0o077 != 0 {
        match fs::set_permissions(dir, fs::Permissions::from_mode(0o700)) {
            Err(e) if e.kind() != std::io::ErrorKind::PermissionDenied => {
                return Err(io_err(dir)(e));
            }
            _ => {}
        }
    }
    Ok(())
}

/// Opens `path` to append, creating it readable and writable by its owner
/// only (a file the process writes a line at a time: an outbox, an
/// output's JSON lines).
pub fn open_private_append(path: &Path) -> Result<fs::File, PkiError> {
    let file = with_mode(
        fs::OpenOptions::new().read(true).append(true).create(true),
        0o600,
    )
    .open(path)
    .map_err(io_err(path))?;
    Ok(file)
}

/// Writes a secret (a private key, a token) readable by its owner only.
pub fn write_private_file(path: &Path, contents: &[u8]) -> Result<(), PkiError> {
    write_atomic(path, contents, 0o600)
}

/// Writes a private file from a writer (through a buffer), so a large
/// file need not be built in memory first; same guarantees as
/// [`write_private_file`].
pub fn write_private_file_with(
    path: &Path,
    write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> Result<(), PkiError> {
    write_atomic_with(path, 0o600, write)
}

/// Writes a public file (a certificate, a context file).
pub fn write_public_file(path: &Path, contents: &[u8]) -> Result<(), PkiError> {
    write_atomic(path, contents, 0o644)
}

/// Reads a secret, refusing one that other users can read (as OpenSSH
/// refuses such private keys).
/// Reads a private file mounted by an orchestrator (a Kubernetes Secret
/// with `fsGroup`): readable by its group is accepted, by others never.
pub fn read_mounted_private_file(path: &Path) -> Result<String, PkiError> {
    check_mode(path, 0o037)?;
    fs::read_to_string(path).map_err(io_err(path))
}

/// Refuses a file any of whose `exposed` mode bits are set (Unix; Windows
/// files are private through their directory's ACL).
fn check_mode(path: &Path, exposed: u32) -> Result<(), PkiError> {
    #[cfg(unix)]
    {
        let meta = fs::metadata(path).map_err(io_err(path))?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & exposed != 0 {
            return Err(PkiError::InsecurePermissions {
                path: path.display().to_string(),
                mode,
            });
        }
    }
    #[cfg(not(unix))]
    let _ = (path, exposed);
    Ok(())
}

pub fn read_private_file(path: &Path) -> Result<String, PkiError> {
    check_mode(path, 0o077)?;
    fs::read_to_string(path).map_err(io_err(path))
}

#[cfg(windows)]
#[allow(unsafe_code)]
mod windows {
    use std::path::Path;

    use windows_sys::Win32::Foundation::LocalFree;
    use windows_sys::Win32::Security::Authorization::{
        ConvertStringSecurityDescriptorToSecurityDescriptorW, SDDL_REVISION_1,
    };
    use windows_sys::Win32::Security::{
        DACL_SECURITY_INFORMATION, PROTECTED_DACL_SECURITY_INFORMATION, PSECURITY_DESCRIPTOR,
        SetFileSecurityW,
    };

    /// Full control for SYSTEM and Administrators, inherited by what is
    /// created inside, and nothing inherited from above (ProgramData lets
    /// every user read).
    const PRIVATE_DIR: &str = "D:P(A;OICI;FA;;;SY)(A;OICI;FA;;;BA)";

    fn wide(s: &std::ffi::OsStr) -> Vec<u16> {
        use std::os::windows::ffi::OsStrExt;
        s.encode_wide().chain(Some(0)).collect()
    }

    pub(super) fn protect_dir(dir: &Path) -> std::io::Result<()> {
        let sddl = wide(PRIVATE_DIR.as_ref());
        let path = wide(dir.as_os_str());
        let mut sd: PSECURITY_DESCRIPTOR = std::ptr::null_mut();
        // SAFETY: both strings are NUL-terminated; `sd` is allocated by
        // the call and freed below.
        unsafe {
            if ConvertStringSecurityDescriptorToSecurityDescriptorW(
                sddl.as_ptr(),
                SDDL_REVISION_1,
                &mut sd,
                std::ptr::null_mut(),
            ) == 0
            {
                return Err(std::io::Error::last_os_error());
            }
            let ok = SetFileSecurityW(
                path.as_ptr(),
                DACL_SECURITY_INFORMATION | PROTECTED_DACL_SECURITY_INFORMATION,
                sd,
            );
            let err = std::io::Error::last_os_error();
            LocalFree(sd.cast());
            if ok == 0 { Err(err) } else { Ok(()) }
        }
    }
}

#[cfg(test)]
#[cfg(unix)]
mod tests {
    use super::*;

    #[test]
    fn private_files_are_0600_and_refused_when_exposed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/key.pem");
        write_private_file(&path, b"secret").unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(read_private_file(&path).unwrap(), "secret");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            read_private_file(&path),
            Err(PkiError::InsecurePermissions { mode: 0o644, .. })
        ));
    }

    #[test]
    fn private_dirs_and_appended_files_are_private_whatever_the_umask() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        fs::create_dir(&state).unwrap();
        fs::set_permissions(&state, fs::Permissions::from_mode(0o755)).unwrap();
        create_private_dir(&state.join("a/b")).unwrap();
        create_private_dir(&state).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&state), 0o700, "an existing directory is narrowed");
        assert_eq!(mode(&state.join("a/b")), 0o700);
        let log = state.join("a/b/log");
        open_private_append(&log).unwrap();
        assert_eq!(mode(&log), 0o600);
    }

    #[test]
    fn rewrite_replaces_contents_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cert.pem");
        write_public_file(&path, b"one").unwrap();
        write_public_file(&path, b"two").unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "two");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_failed_streamed_write_keeps_the_old_file_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        write_private_file_with(&path, |w| w.write_all(b"old")).unwrap();
        let failed = write_private_file_with(&path, |w| {
            w.write_all(b"half of the new")?;
            Err(std::io::Error::other("serializer gave up"))
        });
        assert!(matches!(failed, Err(PkiError::Io { .. })));
        assert_eq!(fs::read_to_string(&path).unwrap(), "old");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}

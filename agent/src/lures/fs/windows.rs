//! Windows' directory handles. Windows has no `openat`, so a directory is
//! reached by a walk from the root that opens each component as a handle
//! refusing reparse points (symbolic links, junctions, mount points), and a
//! [`Dir`] keeps the handles of every directory on the way open. They are
//! shared for reading and writing but not for deletion: while the agent
//! works below a directory, nobody can rename or delete one on its path
//! and put a junction there, so the names it then uses resolve through
//! exactly the directories it checked.
//!
//! Files are created with `CREATE_NEW` (never replacing), put in place by a
//! hard link (which fails if the name is taken) and deleted only after
//! reading them back; a new file or directory inherits its directory's ACL
//! as one its user made would, and gets the home's owner when the agent
//! may set it (SeRestorePrivilege, which LocalSystem holds).

use std::ffi::{OsStr, OsString};
use std::fs::{File, Metadata, OpenOptions};
use std::os::windows::fs::{MetadataExt, OpenOptionsExt};
use std::os::windows::io::AsRawHandle;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use windows_sys::Win32::Foundation::{ERROR_ALREADY_EXISTS, ERROR_FILE_EXISTS, HANDLE, LocalFree};
use windows_sys::Win32::Security::Authorization::{
    GetSecurityInfo, SE_FILE_OBJECT, SetSecurityInfo,
};
use windows_sys::Win32::Security::{
    CopySid, GetLengthSid, IsValidSid, OWNER_SECURITY_INFORMATION, PSECURITY_DESCRIPTOR, PSID,
};
use windows_sys::Win32::Storage::FileSystem::{
    BY_HANDLE_FILE_INFORMATION, FILE_ATTRIBUTE_DIRECTORY, FILE_ATTRIBUTE_REPARSE_POINT,
    FILE_FLAG_BACKUP_SEMANTICS, FILE_FLAG_OPEN_REPARSE_POINT, FILE_GENERIC_READ,
    FILE_GENERIC_WRITE, FILE_SHARE_DELETE, FILE_SHARE_READ, FILE_SHARE_WRITE,
    FILE_WRITE_ATTRIBUTES, GetFileInformationByHandle, READ_CONTROL, WRITE_OWNER,
};

use super::{Dir, FsError, NewFile, io, link_refused};

/// The largest SID there is (SID_MAX_SUB_AUTHORITIES = 15).
const MAX_SID: usize = 68;

/// Who should own what the agent creates: a SID, kept inline so an
/// `Owner` is as cheap to pass around as on Linux.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    sid: [u8; MAX_SID],
    len: u8,
}

impl std::fmt::Debug for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Owner({} byte SID)", self.len)
    }
}

impl Owner {
    /// The owner in the security descriptor of the open `file`.
    fn of_handle(file: &File) -> Option<Owner> {
        let mut sid: PSID = std::ptr::null_mut();
        let mut sd: PSECURITY_DESCRIPTOR = std::ptr::null_mut();
        // SAFETY: the handle is open for READ_CONTROL; `sid` points into
        // `sd`, which is freed after the SID is copied out.
        unsafe {
            let rc = GetSecurityInfo(
                file.as_raw_handle() as HANDLE,
                SE_FILE_OBJECT,
                OWNER_SECURITY_INFORMATION,
                &mut sid,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                &mut sd,
            );
            if rc != 0 || sid.is_null() {
                return None;
            }
            let mut owner = Owner {
                sid: [0; MAX_SID],
                len: 0,
            };
            let len = GetLengthSid(sid) as usize;
            let copied = IsValidSid(sid) != 0
                && len <= MAX_SID
                && CopySid(MAX_SID as u32, owner.sid.as_mut_ptr().cast(), sid) != 0;
            LocalFree(sd.cast());
            copied.then(|| {
                owner.len = len as u8;
                owner
            })
        }
    }

    /// Makes this the owner of the open `file` (opened with WRITE_OWNER).
    fn set_on(&self, file: &File) -> std::io::Result<()> {
        let mut sid = self.sid;
        // SAFETY: `sid` holds a valid SID of `len` bytes, copied by CopySid.
        let rc = unsafe {
            SetSecurityInfo(
                file.as_raw_handle() as HANDLE,
                SE_FILE_OBJECT,
                OWNER_SECURITY_INFORMATION,
                sid.as_mut_ptr().cast(),
                std::ptr::null_mut(),
                std::ptr::null(),
                std::ptr::null(),
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::from_raw_os_error(rc as i32))
        }
    }
}

/// Set once an owner could not be set; said once in the log, then the
/// files keep the agent's owner (their ACL, inherited, is the user's).
static OWNER_WARNED: AtomicBool = AtomicBool::new(false);

fn give(owner: Option<Owner>, file: &File, path: &Path) {
    if let Some(o) = owner
        && let Err(e) = o.set_on(file)
        && !OWNER_WARNED.swap(true, Ordering::Relaxed)
    {
        tracing::warn!(path = %path.display(), error = %e,
            "cannot give planted files their home's owner (needs SeRestorePrivilege); they keep the agent's");
    }
}

/// The owner of the directory or file at `path` (a home), not following a
/// reparse point.
pub fn owner_of_path(path: &Path) -> Option<Owner> {
    let file = OpenOptions::new()
        .access_mode(READ_CONTROL | FILE_READ_ATTRIBUTES_ONLY)
        .share_mode(FILE_SHARE_READ | FILE_SHARE_WRITE | FILE_SHARE_DELETE)
        .custom_flags(FILE_FLAG_BACKUP_SEMANTICS | FILE_FLAG_OPEN_REPARSE_POINT)
        .open(path)
        .ok()?;
    Owner::of_handle(&file)
}

/// The owner of the open directory `dir`.
pub(super) fn owner_of(dir: &Dir) -> Option<Owner> {
    Owner::of_handle(dir.handle.file())
}

const FILE_READ_ATTRIBUTES_ONLY: u32 = 0x80;

/// The directories from the root to this one, all held open.
#[derive(Debug, Clone)]
pub struct Handle {
    chain: Vec<Arc<File>>,
}

impl Handle {
    pub(super) fn file(&self) -> &File {
        self.chain.last().expect("a handle chain is never empty")
    }
}

/// Attributes and identity of an open file.
fn info(file: &File) -> std::io::Result<BY_HANDLE_FILE_INFORMATION> {
    // SAFETY: an all-zero BY_HANDLE_FILE_INFORMATION is valid; the call
    // fills it for an open handle.
    unsafe {
        let mut info: BY_HANDLE_FILE_INFORMATION = std::mem::zeroed();
        if GetFileInformationByHandle(file.as_raw_handle() as HANDLE, &mut info) == 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(info)
    }
}

fn is_reparse(attributes: u32) -> bool {
    attributes & FILE_ATTRIBUTE_REPARSE_POINT != 0
}

/// Opens the directory at `path` as a link of a chain: not through a
/// reparse point, and not shareable for deletion.
fn open_dir_handle(path: &Path) -> Result<File, FsError> {
    let file = OpenOptions::new()
        .access_mode(FILE_GENERIC_READ | FILE_WRITE_ATTRIBUTES | READ_CONTROL)
        .share_mode(FILE_SHARE_READ | FILE_SHARE_WRITE)
        .custom_flags(FILE_FLAG_BACKUP_SEMANTICS | FILE_FLAG_OPEN_REPARSE_POINT)
        .open(path)
        .map_err(io(path))?;
    let attributes = info(&file).map_err(io(path))?.dwFileAttributes;
    if is_reparse(attributes) {
        return Err(link_refused(path));
    }
    if attributes & FILE_ATTRIBUTE_DIRECTORY == 0 {
        return Err(FsError::Unsuitable {
            path: path.display().to_string(),
            reason: "is not a directory".into(),
        });
    }
    Ok(file)
}

/// Opens the regular file at `path`, refusing a reparse point.
fn open_regular(path: &Path, options: &mut OpenOptions) -> Result<File, FsError> {
    let file = options
        .share_mode(FILE_SHARE_READ | FILE_SHARE_WRITE | FILE_SHARE_DELETE)
        .custom_flags(FILE_FLAG_OPEN_REPARSE_POINT)
        .open(path)
        .map_err(io(path))?;
    if is_reparse(info(&file).map_err(io(path))?.dwFileAttributes) {
        return Err(link_refused(path));
    }
    Ok(file)
}

impl Dir {
    /// Opens the agent's root. The root is the administrator's choice and
    /// was made canonical at start; it is the one path opened by name.
    pub fn open_root(path: &Path) -> Result<Dir, FsError> {
        Ok(Dir {
            handle: Handle {
                chain: vec![Arc::new(open_dir_handle(path)?)],
            },
            path: path.to_path_buf(),
        })
    }

    pub(super) fn try_clone(&self) -> Result<Dir, FsError> {
        Ok(Dir {
            handle: self.handle.clone(),
            path: self.path.clone(),
        })
    }

    /// Opens the directory `name` inside this one, refusing a link.
    pub(super) fn child(&self, name: &OsStr) -> Result<Dir, FsError> {
        let path = self.path.join(name);
        let file = open_dir_handle(&path)?;
        let mut chain = self.handle.chain.clone();
        chain.push(Arc::new(file));
        Ok(Dir {
            handle: Handle { chain },
            path,
        })
    }

    /// Windows opens one component at a time: always the walk.
    pub(super) fn beneath(&self, _rel: &Path) -> Option<Dir> {
        None
    }

    /// Whether anything (a link included) has the name `name` here.
    pub(super) fn has(&self, name: &OsStr) -> Result<bool, FsError> {
        let path = self.path.join(name);
        match std::fs::symlink_metadata(&path) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io(&path)(e)),
        }
    }

    /// Opens the file `name` here to read it, refusing a link.
    pub(super) fn open_file(&self, name: &OsStr) -> Result<File, FsError> {
        open_regular(
            &self.path.join(name),
            OpenOptions::new().access_mode(FILE_GENERIC_READ | FILE_WRITE_ATTRIBUTES),
        )
    }

    /// Opens the file `name` here to write it in place, refusing a link.
    pub(super) fn open_write(&self, name: &OsStr) -> Result<File, FsError> {
        open_regular(
            &self.path.join(name),
            OpenOptions::new().access_mode(FILE_GENERIC_READ | FILE_GENERIC_WRITE),
        )
    }

    /// Windows makes names durable with the file system's own log.
    pub(super) fn sync(&self) {}

    /// Makes the directory `name` here and opens it. Its ACL is inherited
    /// from here; `private` (`.ssh`, `.aws`) needs nothing more, since a
    /// profile's folders are its user's alone already.
    pub(super) fn make_dir(
        &self,
        name: &OsStr,
        owner: Option<Owner>,
        _private: bool,
    ) -> Result<Dir, FsError> {
        let path = self.path.join(name);
        std::fs::create_dir(&path).map_err(io(&path))?;
        let child = self.child(name)?;
        if owner.is_some()
            && let Ok(file) = OpenOptions::new()
                .access_mode(WRITE_OWNER | READ_CONTROL)
                .share_mode(FILE_SHARE_READ | FILE_SHARE_WRITE)
                .custom_flags(FILE_FLAG_BACKUP_SEMANTICS | FILE_FLAG_OPEN_REPARSE_POINT)
                .open(&path)
        {
            give(owner, &file, &path);
        }
        Ok(child)
    }

    /// Removes the directory `name` here if it is empty (and a directory,
    /// not a junction).
    pub(super) fn remove_dir(&self, name: &OsStr) -> bool {
        let path = self.path.join(name);
        let is_dir = std::fs::symlink_metadata(&path)
            .is_ok_and(|m| m.is_dir() && !is_reparse(m.file_attributes()));
        is_dir && std::fs::remove_dir(&path).is_ok()
    }

    /// Removes the file `name` here; false when it was not there.
    pub(super) fn unlink(&self, name: &OsStr) -> Result<bool, FsError> {
        let path = self.path.join(name);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io(&path)(e)),
        }
    }

    /// The names in this directory.
    pub(super) fn names(&self) -> Vec<OsString> {
        std::fs::read_dir(&self.path)
            .map(|entries| entries.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default()
    }

    /// Whether `name` here is a regular file (not a reparse point).
    pub(super) fn is_regular(&self, name: &OsStr) -> bool {
        std::fs::symlink_metadata(self.path.join(name))
            .is_ok_and(|m| m.is_file() && !is_reparse(m.file_attributes()))
    }

    /// Creates the new, empty file `name` here, failing if the name is taken.
    pub(super) fn create_exclusive(&self, name: &OsStr) -> Result<File, FsError> {
        let path = self.path.join(name);
        // `write` only satisfies std's check; the access is `access_mode`.
        OpenOptions::new()
            .write(true)
            .access_mode(FILE_GENERIC_READ | FILE_GENERIC_WRITE | WRITE_OWNER | READ_CONTROL)
            .create_new(true)
            .share_mode(FILE_SHARE_READ | FILE_SHARE_DELETE)
            .custom_flags(FILE_FLAG_OPEN_REPARSE_POINT)
            .open(&path)
            .map_err(io(&path))
    }

    /// Gives `from` the additional name `to`, never replacing one:
    /// `Ok(false)` when `to` is taken.
    pub(super) fn link_new(&self, from: &OsStr, to: &OsStr) -> Result<bool, FsError> {
        let target = self.path.join(to);
        match std::fs::hard_link(self.path.join(from), &target) {
            Ok(()) => Ok(true),
            Err(e)
                if e.kind() == std::io::ErrorKind::AlreadyExists
                    || [ERROR_ALREADY_EXISTS, ERROR_FILE_EXISTS]
                        .iter()
                        .any(|c| e.raw_os_error() == Some(*c as i32)) =>
            {
                Ok(false)
            }
            Err(e) => Err(io(&target)(e)),
        }
    }

    /// Renames `from` to `to` here, replacing `to`.
    pub(super) fn rename(&self, from: &OsStr, to: &OsStr) -> Result<(), FsError> {
        let target = self.path.join(to);
        std::fs::rename(self.path.join(from), &target).map_err(io(&target))
    }

    /// Whether `name` here is still the file `seen` describes: same file
    /// (volume and index), and, when `content` is asked, same size and
    /// modification time.
    pub(super) fn still(&self, name: &OsStr, seen: &Metadata, content: bool) -> bool {
        let Ok(file) = self.open_file(name) else {
            return false;
        };
        same(&file, seen, content).unwrap_or(false)
    }
}

/// Whether the open `file` is the one `seen` describes (and unchanged,
/// when `content`). `Metadata` on Windows does not carry the file index,
/// so `seen` is compared on what it has: size, times and attributes.
fn same(file: &File, seen: &Metadata, content: bool) -> std::io::Result<bool> {
    let now = file.metadata()?;
    let created = now.creation_time() == seen.creation_time();
    Ok(now.is_file()
        && created
        && (!content
            || (now.len() == seen.len() && now.last_write_time() == seen.last_write_time())))
}

/// Whether the open `file` is the one `seen` describes, unchanged.
pub(super) fn same_file(file: &File, seen: &Metadata) -> Result<bool, std::io::Error> {
    same(file, seen, true)
}

/// Gives a new file its owner (the rest is inherited) and the audit entry
/// that has Windows log reads of it.
pub(super) fn apply(file: &File, new: &NewFile) -> std::io::Result<()> {
    give(new.owner, file, Path::new("(new file)"));
    crate::platform::windows::audit::mark_file(file, Path::new("a new lure file"));
    Ok(())
}

/// The attributes a replacement keeps from the file it replaces (unused
/// on Windows: existing files are changed in place).
pub(super) fn kept(seen: &Metadata) -> NewFile {
    NewFile {
        mode: 0o644,
        owner: None,
        mtime: seen.modified().ok(),
    }
}

/// Windows always changes an existing file in place.
pub(super) fn dir_not_writable(_e: &std::io::Error) -> bool {
    true
}

/// Writes all of `bytes` at `offset`.
pub(super) fn write_at(file: &File, bytes: &[u8], offset: u64) -> std::io::Result<()> {
    use std::os::windows::fs::FileExt;
    let mut done = 0;
    while done < bytes.len() {
        match file.seek_write(&bytes[done..], offset + done as u64)? {
            0 => return Err(std::io::ErrorKind::WriteZero.into()),
            n => done += n,
        }
    }
    Ok(())
}

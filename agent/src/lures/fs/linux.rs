//! Linux's directory handles: `openat2(RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS)` from the root where the kernel has it, one
//! `O_NOFOLLOW` open per component where it does not; every file
//! operation by name relative to its directory's descriptor, owners and
//! modes set through the file's own descriptor.

use std::ffi::{OsStr, OsString};
use std::fs::{File, Metadata};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{FileStat, Mode, SFlag};
use nix::unistd::UnlinkatFlags;

use super::{Dir, FsError, NewFile, io, link_refused};

/// Who should own what the agent creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

impl Owner {
    pub fn of(meta: &Metadata) -> Self {
        Owner {
            uid: meta.uid(),
            gid: meta.gid(),
        }
    }
}

/// The owner of the directory or file at `path` (a home), not following a
/// link.
pub fn owner_of_path(path: &Path) -> Option<Owner> {
    std::fs::symlink_metadata(path)
        .ok()
        .map(|meta| Owner::of(&meta))
}

/// The owner of the open directory `dir`.
pub(super) fn owner_of(dir: &Dir) -> Option<Owner> {
    dir.metadata().ok().map(|meta| Owner::of(&meta))
}

const DIR_FLAGS: OFlag = OFlag::O_RDONLY
    .union(OFlag::O_DIRECTORY)
    .union(OFlag::O_NOFOLLOW)
    .union(OFlag::O_CLOEXEC);
/// Opening a file to read or re-time it: never through a link, and never
/// blocking on a FIFO a user planted at a lure's name.
const FILE_FLAGS: OFlag = OFlag::O_RDONLY
    .union(OFlag::O_NOFOLLOW)
    .union(OFlag::O_NONBLOCK)
    .union(OFlag::O_NOCTTY)
    .union(OFlag::O_CLOEXEC);

/// Set once `openat2` turned out to be missing (kernels before 5.6, or a
/// seccomp filter that refuses it); the component walk is used from then on.
static NO_OPENAT2: AtomicBool = AtomicBool::new(false);

fn errno(path: &Path) -> impl FnOnce(Errno) -> FsError + '_ {
    move |e| io(path)(std::io::Error::from(e))
}

/// A directory handle: the open directory and nothing else.
#[derive(Debug)]
pub struct Handle(File);

impl Handle {
    pub(super) fn file(&self) -> &File {
        &self.0
    }
}

impl Dir {
    /// Opens the agent's root. The root is the administrator's choice and
    /// was made canonical at start; it is the one path opened by name.
    pub fn open_root(path: &Path) -> Result<Dir, FsError> {
        let fd = nix::fcntl::open(path, DIR_FLAGS, Mode::empty()).map_err(errno(path))?;
        Ok(Dir {
            handle: Handle(File::from(fd)),
            path: path.to_path_buf(),
        })
    }

    pub(super) fn try_clone(&self) -> Result<Dir, FsError> {
        Ok(Dir {
            handle: Handle(self.handle.0.try_clone().map_err(io(&self.path))?),
            path: self.path.clone(),
        })
    }

    /// Opens the directory `name` inside this one, refusing a link.
    pub(super) fn child(&self, name: &OsStr) -> Result<Dir, FsError> {
        let path = self.path.join(name);
        match nix::fcntl::openat(self.handle.0.as_fd(), name, DIR_FLAGS, Mode::empty()) {
            Ok(fd) => Ok(Dir {
                handle: Handle(File::from(fd)),
                path,
            }),
            Err(e) => Err(self.refusal(name, e)),
        }
    }

    /// Opens the directory `rel` below this one in one call, where the
    /// kernel can refuse links on the way itself; `None` when the caller
    /// should walk the components instead.
    pub(super) fn beneath(&self, rel: &Path) -> Option<Dir> {
        if NO_OPENAT2.load(Ordering::Relaxed) {
            return None;
        }
        let how = OpenHow::new().flags(DIR_FLAGS).resolve(
            ResolveFlag::RESOLVE_BENEATH
                | ResolveFlag::RESOLVE_NO_SYMLINKS
                | ResolveFlag::RESOLVE_NO_MAGICLINKS,
        );
        match nix::fcntl::openat2(self.handle.0.as_fd(), rel, how) {
            Ok(fd) => Some(Dir {
                handle: Handle(File::from(fd)),
                path: self.path.join(rel),
            }),
            Err(Errno::ENOSYS | Errno::EPERM) => {
                NO_OPENAT2.store(true, Ordering::Relaxed);
                None
            }
            // A link or a missing name somewhere on the way: the walk says
            // which component it was.
            Err(_) => None,
        }
    }

    /// What an open of `name` that failed with `e` means to a reader.
    fn refusal(&self, name: &OsStr, e: Errno) -> FsError {
        let path = self.path.join(name);
        let is_link = || {
            self.stat(name).is_ok_and(|st| {
                SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFLNK
            })
        };
        match e {
            Errno::ELOOP => link_refused(&path),
            Errno::ENOTDIR if is_link() => link_refused(&path),
            Errno::ENOTDIR => FsError::Unsuitable {
                path: path.display().to_string(),
                reason: "is not a directory".into(),
            },
            e => errno(&path)(e),
        }
    }

    fn stat(&self, name: &OsStr) -> nix::Result<FileStat> {
        nix::sys::stat::fstatat(self.handle.0.as_fd(), name, AtFlags::AT_SYMLINK_NOFOLLOW)
    }

    /// Whether anything (a link included) has the name `name` here.
    pub(super) fn has(&self, name: &OsStr) -> Result<bool, FsError> {
        match self.stat(name) {
            Ok(_) => Ok(true),
            Err(Errno::ENOENT) => Ok(false),
            Err(e) => Err(errno(&self.path.join(name))(e)),
        }
    }

    /// Opens the file `name` here to read it, refusing a link.
    pub(super) fn open_file(&self, name: &OsStr) -> Result<File, FsError> {
        match nix::fcntl::openat(self.handle.0.as_fd(), name, FILE_FLAGS, Mode::empty()) {
            Ok(fd) => Ok(File::from(fd)),
            Err(e) => Err(self.refusal(name, e)),
        }
    }

    /// Opens the file `name` here to write it in place, refusing a link.
    pub(super) fn open_write(&self, name: &OsStr) -> Result<File, FsError> {
        nix::fcntl::openat(
            self.handle.0.as_fd(),
            name,
            OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map(File::from)
        .map_err(|e| self.refusal(name, e))
    }

    /// Syncs the directory, so names made or removed in it survive a crash.
    pub(super) fn sync(&self) {
        let _ = self.handle.0.sync_all();
    }

    /// Makes the directory `name` here (private until its owner and mode
    /// are set through its own handle) and opens it.
    pub(super) fn make_dir(
        &self,
        name: &OsStr,
        owner: Option<Owner>,
        private: bool,
    ) -> Result<Dir, FsError> {
        let path = self.path.join(name);
        nix::sys::stat::mkdirat(self.handle.0.as_fd(), name, Mode::from_bits_truncate(0o700))
            .map_err(errno(&path))?;
        // Opened again without following: if a racing user replaced the new
        // directory with a link, this fails and nothing is changed through it.
        let child = self.child(name)?;
        if let Some(o) = owner {
            std::os::unix::fs::fchown(&child.handle.0, Some(o.uid), Some(o.gid))
                .map_err(io(&path))?;
        }
        child
            .handle
            .0
            .set_permissions(std::fs::Permissions::from_mode(if private {
                0o700
            } else {
                0o755
            }))
            .map_err(io(&path))?;
        Ok(child)
    }

    /// Removes the directory `name` here if it is empty (and a directory).
    pub(super) fn remove_dir(&self, name: &OsStr) -> bool {
        nix::unistd::unlinkat(self.handle.0.as_fd(), name, UnlinkatFlags::RemoveDir).is_ok()
    }

    /// Removes the file `name` here; false when it was not there.
    pub(super) fn unlink(&self, name: &OsStr) -> Result<bool, FsError> {
        match nix::unistd::unlinkat(self.handle.0.as_fd(), name, UnlinkatFlags::NoRemoveDir) {
            Ok(()) => Ok(true),
            Err(Errno::ENOENT) => Ok(false),
            Err(e) => Err(errno(&self.path.join(name))(e)),
        }
    }

    /// The names in this directory.
    pub(super) fn names(&self) -> Vec<OsString> {
        use std::os::unix::ffi::OsStrExt;
        let Ok(Some(listing)) = self
            .handle
            .0
            .try_clone()
            .ok()
            .map(|f| nix::dir::Dir::from_fd(OwnedFd::from(f)))
            .transpose()
        else {
            return Vec::new();
        };
        listing
            .into_iter()
            .filter_map(Result::ok)
            .map(|e| OsStr::from_bytes(e.file_name().to_bytes()).to_owned())
            .collect()
    }

    /// Whether `name` here is a regular file (not following a link).
    pub(super) fn is_regular(&self, name: &OsStr) -> bool {
        self.stat(name).is_ok_and(|st| {
            SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) == SFlag::S_IFREG
        })
    }

    /// Creates the new, empty file `name` here, failing if the name is taken.
    pub(super) fn create_exclusive(&self, name: &OsStr) -> Result<File, FsError> {
        nix::fcntl::openat(
            self.handle.0.as_fd(),
            name,
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )
        .map(File::from)
        .map_err(errno(&self.path.join(name)))
    }

    /// Gives `from` the additional name `to`, never replacing one:
    /// `Ok(false)` when `to` is taken.
    pub(super) fn link_new(&self, from: &OsStr, to: &OsStr) -> Result<bool, FsError> {
        match nix::unistd::linkat(
            self.handle.0.as_fd(),
            from,
            self.handle.0.as_fd(),
            to,
            AtFlags::empty(),
        ) {
            Ok(()) => Ok(true),
            Err(Errno::EEXIST) => Ok(false),
            Err(e) => Err(errno(&self.path.join(to))(e)),
        }
    }

    /// Renames `from` to `to` here, replacing `to`.
    pub(super) fn rename(&self, from: &OsStr, to: &OsStr) -> Result<(), FsError> {
        nix::fcntl::renameat(self.handle.0.as_fd(), from, self.handle.0.as_fd(), to)
            .map_err(errno(&self.path.join(to)))
    }

    /// Whether `name` here is still the file `seen` describes: same inode,
    /// and, when `content` is asked, same size and modification time.
    pub(super) fn still(&self, name: &OsStr, seen: &Metadata, content: bool) -> bool {
        self.stat(name).is_ok_and(|now| {
            now.st_ino == seen.ino()
                && now.st_dev == seen.dev()
                && (!content
                    || (now.st_size == seen.size() as i64
                        && now.st_mtime == seen.mtime()
                        && now.st_mtime_nsec == seen.mtime_nsec()))
        })
    }
}

/// Whether the open `file` is the one `seen` describes, unchanged.
pub(super) fn same_file(file: &File, seen: &Metadata) -> Result<bool, std::io::Error> {
    let now = file.metadata()?;
    Ok(now.is_file()
        && now.ino() == seen.ino()
        && now.dev() == seen.dev()
        && now.len() == seen.len()
        && now.modified().ok() == seen.modified().ok())
}

/// Gives a new file its owner, mode and time (through its descriptor).
pub(super) fn apply(file: &File, new: &NewFile) -> std::io::Result<()> {
    if let Some(o) = new.owner {
        std::os::unix::fs::fchown(file, Some(o.uid), Some(o.gid))?;
    }
    file.set_permissions(std::fs::Permissions::from_mode(new.mode))
}

/// The attributes a replacement keeps from the file it replaces.
pub(super) fn kept(seen: &Metadata) -> NewFile {
    NewFile {
        mode: seen.mode() & 0o7777,
        owner: Some(Owner::of(seen)),
        mtime: seen.modified().ok(),
    }
}

/// Whether a write error means the directory may not be written (but the
/// file itself perhaps may).
pub(super) fn dir_not_writable(e: &std::io::Error) -> bool {
    [Errno::EROFS, Errno::EACCES, Errno::EPERM]
        .iter()
        .any(|errno| e.raw_os_error() == Some(*errno as i32))
}

/// Writes all of `bytes` at `offset`.
pub(super) fn write_at(file: &File, bytes: &[u8], offset: u64) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    file.write_all_at(bytes, offset)
}

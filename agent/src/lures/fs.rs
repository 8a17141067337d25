//! The file operations behind planting, confined to the agent's root.
//!
//! The agent runs as root and plants into directories that local users
//! own, so any user may swap a directory on a lure's path for a symbolic
//! link at any moment. Path-based calls would follow it. Every operation
//! here therefore works on directory handles:
//!
//! - the root is opened once ([`Dir::open_root`]); every other directory
//!   is opened relative to it without following a link: on Linux with
//!   `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`, or, where the kernel
//!   lacks `openat2`, by a walk that opens one component at a time with
//!   `O_NOFOLLOW`; on Windows by a walk that opens each component as a
//!   handle refusing reparse points (links and junctions) and holds the
//!   handles of every directory on the way, shared for reading and writing
//!   but not for deletion, so none of them can be renamed or replaced
//!   while the agent works below it (`fs/linux.rs`, `fs/windows.rs`). A
//!   link anywhere on the way is refused, so nothing is read, written,
//!   created, deleted or re-timed outside the root;
//! - files are created, linked, renamed and unlinked by name relative to
//!   the handle of their directory, and owners, modes and times are set
//!   through the file's own descriptor (fchown, fchmod, futimens; on
//!   Windows the owner through the handle, the rest inherited from the
//!   directory as for a file its user made), never by path;
//! - a whole-file lure never replaces an existing file (the final step is
//!   `linkat`, which fails if the name is taken), and nothing is deleted or
//!   replaced unless its content is the lure's own ([`remove_if_ours`]
//!   checks it, and that the name still holds the inode it read);
//! - every write goes to a temporary file in the same directory, synced,
//!   then moved into place, keeping the target's owner and mode (on
//!   Windows a file that existed is changed in place, which keeps its
//!   owner, ACL and attributes: a block is only ever appended or cut off);
//! - files and directories the agent creates get the home's owner and a
//!   backdated time; a file the agent adds a block to keeps its time.

use std::ffi::{OsStr, OsString};
use std::fs::{File, Metadata};
use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ruse_proto::types::{hex, random_bytes};

#[cfg(unix)]
#[path = "fs/linux.rs"]
mod sys;
#[cfg(windows)]
#[path = "fs/windows.rs"]
#[allow(unsafe_code)]
mod sys;

pub use sys::{Owner, owner_of_path};

/// Largest existing file the agent will add a block to.
pub const MAX_BLOCK_TARGET: u64 = 4 << 20;
/// Largest file the agent reads back to check a whole-file lure.
const MAX_LURE_FILE: u64 = 64 << 20;

/// Why a file operation was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("{path}: refusing a path outside the agent root ({reason})")]
    OutsideRoot { path: String, reason: &'static str },
    #[error("{path}: a file already exists there and is not a lure")]
    Exists { path: String },
    #[error("{path}: {reason}")]
    Unsuitable { path: String, reason: String },
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl FsError {
    /// Nothing exists at the path (or on the way to it).
    pub fn is_not_found(&self) -> bool {
        matches!(self, FsError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
    }
}

pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> FsError + '_ {
    move |source| FsError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// An open directory, reached from the root without following a link.
#[derive(Debug)]
pub struct Dir {
    handle: sys::Handle,
    path: PathBuf,
}

impl Dir {
    /// The path this directory had when it was opened (for messages and
    /// records; operations use the handle).
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn metadata(&self) -> Result<Metadata, FsError> {
        self.handle.file().metadata().map_err(io(&self.path))
    }

    /// The owner things created in this directory get.
    pub fn owner(&self) -> Option<Owner> {
        sys::owner_of(self)
    }

    /// Sets the modification and access time through the handle.
    pub fn set_times(&self, t: SystemTime) -> Result<(), FsError> {
        set_times(self.handle.file(), t).map_err(io(&self.path))
    }
}

fn link_refused(path: &Path) -> FsError {
    FsError::OutsideRoot {
        path: path.display().to_string(),
        reason: "symbolic links are never followed",
    }
}

fn set_times(file: &File, t: SystemTime) -> std::io::Result<()> {
    file.set_times(std::fs::FileTimes::new().set_modified(t).set_accessed(t))
}

/// The root as an absolute path without links. On Windows that is
/// `C:\Users\…`, not the `\\?\C:\…` form `canonicalize` gives: paths
/// in events and records read as an administrator writes them.
pub fn canonical(root: &Path) -> Result<PathBuf, FsError> {
    let path = std::fs::canonicalize(root).map_err(io(root))?;
    #[cfg(windows)]
    if let Some(plain) = path.to_str().and_then(|p| p.strip_prefix(r"\\?\"))
        && plain.as_bytes().get(1) == Some(&b':')
    {
        return Ok(PathBuf::from(plain));
    }
    Ok(path)
}

/// Joins a lure-relative path onto `base`, refusing anything that could
/// leave it.
pub fn confined_join(base: &Path, relative: &str) -> Result<PathBuf, FsError> {
    let outside = |reason| FsError::OutsideRoot {
        path: relative.to_owned(),
        reason,
    };
    let rel = Path::new(relative.trim_start_matches('/'));
    let mut out = base.to_path_buf();
    let mut parts = 0;
    for component in rel.components() {
        match component {
            Component::Normal(part) => {
                out.push(part);
                parts += 1;
            }
            Component::CurDir => {}
            Component::ParentDir => return Err(outside("'..' is not allowed")),
            Component::RootDir | Component::Prefix(_) => return Err(outside("unexpected root")),
        }
    }
    if parts == 0 {
        return Err(outside("empty path"));
    }
    Ok(out)
}

/// `target` relative to the root: plain names only.
fn relative<'a>(root: &Dir, target: &'a Path) -> Result<&'a Path, FsError> {
    let outside = |reason| FsError::OutsideRoot {
        path: target.display().to_string(),
        reason,
    };
    let rel = target
        .strip_prefix(&root.path)
        .map_err(|_| outside("not under the root"))?;
    if rel.components().any(|c| !matches!(c, Component::Normal(_))) {
        return Err(outside("only plain names are allowed below the root"));
    }
    Ok(rel)
}

/// Opens the directory at `rel` below the root, never following a link.
fn open_dir(root: &Dir, rel: &Path) -> Result<Dir, FsError> {
    if rel.as_os_str().is_empty() {
        return root.try_clone();
    }
    if let Some(dir) = root.beneath(rel) {
        return Ok(dir);
    }
    walk(root, rel)
}

/// One open per component, each refusing a link.
fn walk(root: &Dir, rel: &Path) -> Result<Dir, FsError> {
    let mut dir = root.try_clone()?;
    for component in rel.components() {
        dir = dir.child(component.as_os_str())?;
    }
    Ok(dir)
}

/// The directory holding `target`, opened from the root, and its name.
pub fn parent(root: &Dir, target: &Path) -> Result<(Dir, OsString), FsError> {
    let rel = relative(root, target)?;
    let name = rel.file_name().ok_or_else(|| FsError::OutsideRoot {
        path: target.display().to_string(),
        reason: "empty path",
    })?;
    let dir = open_dir(root, rel.parent().unwrap_or(Path::new("")))?;
    Ok((dir, name.to_owned()))
}

/// Refuses `target` if a link, or something that is not a directory, is
/// on the way to it from the root. A missing directory is fine.
pub fn check_path(root: &Dir, target: &Path) -> Result<(), FsError> {
    match parent(root, target) {
        Ok((dir, name)) => match dir.open_file(&name) {
            Err(e @ FsError::OutsideRoot { .. }) => Err(e),
            _ => Ok(()),
        },
        Err(e) if e.is_not_found() => Ok(()),
        Err(e) => Err(e),
    }
}

/// Opens the nearest existing directory at or above `dir` (below the
/// root), or the root.
pub fn nearest_dir(root: &Dir, dir: &Path) -> Option<Dir> {
    let rel = relative(root, dir).ok()?;
    rel.ancestors().find_map(|a| open_dir(root, a).ok())
}

/// Creates the missing directories above `target`, owned by `owner`
/// (0700 for the private ones: `.ssh`, `.aws`, `.kube`, `.gnupg`).
/// Returns them, outermost first, so removal can undo exactly this.
///
/// `before` is told each directory's path before it is made (the planting
/// journal records it); its error stops the walk.
pub fn create_parents(
    root: &Dir,
    target: &Path,
    owner: Option<Owner>,
    before: &mut dyn FnMut(&Path) -> std::io::Result<()>,
) -> Result<Vec<PathBuf>, FsError> {
    let rel = relative(root, target)?;
    let Some(parent) = rel.parent() else {
        return Ok(Vec::new());
    };
    let mut dir = root.try_clone()?;
    let mut created = Vec::new();
    for component in parent.components() {
        let name = component.as_os_str();
        let next = match dir.child(name) {
            Err(e) if e.is_not_found() => {
                let path = dir.path.join(name);
                before(&path)
                    .map_err(io(&path))
                    .and_then(|()| make_dir(&dir, name, owner))
                    .inspect(|child| created.push(child.path.clone()))
            }
            other => other,
        };
        dir = match next {
            Ok(child) => child,
            Err(e) => {
                remove_created_dirs(root, &created);
                return Err(e);
            }
        };
    }
    Ok(created)
}

/// Makes the directory `name` in `dir` for a lure: 0700 for the private
/// ones (`.ssh`, `.aws`, `.kube`, `.gnupg`), owned by `owner`.
fn make_dir(dir: &Dir, name: &OsStr, owner: Option<Owner>) -> Result<Dir, FsError> {
    let private = name
        .to_str()
        .is_some_and(|n| matches!(n, ".ssh" | ".aws" | ".kube" | ".gnupg"));
    let child = dir.make_dir(name, owner, private)?;
    dir.sync();
    Ok(child)
}

/// Removes directories the agent created, innermost first, while empty.
pub fn remove_created_dirs(root: &Dir, dirs: &[PathBuf]) {
    for dir in dirs.iter().rev() {
        // Not empty means someone put something there: leave it. A link
        // at the name is not a directory and is left too.
        if let Ok((parent, name)) = parent(root, dir) {
            parent.remove_dir(&name);
        }
    }
}

/// Sets the time of the file or directory at `path`, opened without
/// following a link.
pub fn set_mtime(root: &Dir, path: &Path, t: SystemTime) -> Result<(), FsError> {
    let (dir, name) = parent(root, path)?;
    let file = dir.open_file(&name)?;
    set_times(&file, t).map_err(io(path))
}

pub fn system_time(ms: i64) -> Option<SystemTime> {
    let ms = u64::try_from(ms).ok().filter(|&ms| ms > 0)?;
    Some(UNIX_EPOCH + Duration::from_millis(ms))
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())
}

fn temp_name(name: &OsStr) -> OsString {
    let mut rnd = [0u8; 6];
    random_bytes(&mut rnd);
    let mut tmp = OsString::from(".");
    tmp.push(name);
    tmp.push(format!(".{}.tmp", hex(&rnd)));
    tmp
}

/// Whether `candidate` is a name [`temp_name`] gives for `name`.
fn is_temp_of(candidate: &[u8], name: &[u8]) -> bool {
    candidate
        .strip_prefix(b".")
        .and_then(|r| r.strip_prefix(name))
        .and_then(|r| r.strip_prefix(b"."))
        .and_then(|r| r.strip_suffix(b".tmp"))
        .is_some_and(|h| h.len() == 12 && h.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')))
}

/// Deletes the temporary files a crash left beside `target` (regular
/// files named as [`temp_name`] names them, with 48 random bits no one
/// else picks); returns how many.
pub fn remove_temps(root: &Dir, target: &Path) -> usize {
    let Ok((dir, name)) = parent(root, target) else {
        return 0;
    };
    let mut removed = 0;
    for temp in dir.names() {
        if is_temp_of(temp.as_encoded_bytes(), name.as_encoded_bytes())
            && dir.is_regular(&temp)
            && dir.unlink(&temp).unwrap_or(false)
        {
            removed += 1;
        }
    }
    if removed > 0 {
        dir.sync();
    }
    removed
}

/// The attributes a new file gets.
#[derive(Debug, Clone, Copy)]
pub struct NewFile {
    pub mode: u32,
    pub owner: Option<Owner>,
    pub mtime: Option<SystemTime>,
}

/// Writes `content` to a new temporary file in `dir` next to `name` with
/// the given mode, owner and time, synced. The caller links or renames it
/// into place. Returns the temporary name.
fn write_temp(dir: &Dir, name: &OsStr, content: &[u8], new: NewFile) -> Result<OsString, FsError> {
    let tmp = temp_name(name);
    let target = dir.path.join(name);
    let mut file = dir.create_exclusive(&tmp).map_err(|e| match e {
        FsError::Io { source, .. } => io(&target)(source),
        e => e,
    })?;
    let result = (|| {
        sys::apply(&file, &new)?;
        file.write_all(content)?;
        file.sync_all()?;
        if let Some(t) = new.mtime {
            set_times(&file, t)?;
        }
        Ok(())
    })();
    drop(file);
    match result {
        Ok(()) => Ok(tmp),
        Err(e) => {
            let _ = dir.unlink(&tmp);
            Err(io(&target)(e))
        }
    }
}

/// Creates `target` with `content`, atomically, failing if anything exists
/// at that name.
pub fn create_new(root: &Dir, target: &Path, content: &[u8], new: NewFile) -> Result<(), FsError> {
    let (dir, name) = parent(root, target)?;
    let exists = || FsError::Exists {
        path: target.display().to_string(),
    };
    if dir.has(&name)? {
        return Err(exists());
    }
    let tmp = write_temp(&dir, &name, content, new)?;
    // A link never replaces an existing name: no-clobber even if a file
    // appeared since the check above.
    let linked = dir.link_new(&tmp, &name);
    let _ = dir.unlink(&tmp);
    match linked {
        Ok(true) => {
            dir.sync();
            Ok(())
        }
        Ok(false) => Err(exists()),
        Err(e) => Err(e),
    }
}

/// Reads an open file, up to `limit` bytes; refuses anything that is not a
/// regular file or is larger.
fn read_open(file: &mut File, path: &Path, limit: u64) -> Result<(Vec<u8>, Metadata), FsError> {
    let meta = file.metadata().map_err(io(path))?;
    if !meta.is_file() {
        return Err(FsError::Unsuitable {
            path: path.display().to_string(),
            reason: "is not a regular file".into(),
        });
    }
    if meta.len() > limit {
        return Err(FsError::Unsuitable {
            path: path.display().to_string(),
            reason: format!("is larger than {limit} bytes"),
        });
    }
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(io(path))?;
    if bytes.len() as u64 > limit {
        return Err(FsError::Unsuitable {
            path: path.display().to_string(),
            reason: format!("is larger than {limit} bytes"),
        });
    }
    Ok((bytes, meta))
}

/// A regular file's bytes and metadata (a file a block goes into), refusing
/// links and huge files.
pub fn read_regular(root: &Dir, target: &Path) -> Result<(Vec<u8>, Metadata), FsError> {
    let (dir, name) = parent(root, target)?;
    read_open(&mut dir.open_file(&name)?, target, MAX_BLOCK_TARGET)
}

/// A planted whole-file lure's bytes, as [`read_regular`] with a larger
/// limit.
pub fn read_lure(root: &Dir, target: &Path) -> Result<Vec<u8>, FsError> {
    let (dir, name) = parent(root, target)?;
    read_open(&mut dir.open_file(&name)?, target, MAX_LURE_FILE).map(|(bytes, _)| bytes)
}

/// Replaces an existing file's content (`old`, as read with `seen`)
/// atomically, keeping its owner, mode and modification time. Fails if the
/// file changed since it was read.
///
/// Where the directory may not be written but the file may (the agent's
/// unit can make just `/etc/hosts` writable, not `/etc`), and always on
/// Windows (where a replacement would lose the file's own ACL and
/// attributes), there is no temporary file to rename: the file is changed
/// in place from the first byte that differs, then cut to length. A block
/// is appended at the end, so planting only writes after the old content
/// and taking it out again only truncates: the file's own content is
/// never rewritten.
pub fn replace_content(
    root: &Dir,
    target: &Path,
    old: &[u8],
    content: &[u8],
    seen: &Metadata,
) -> Result<(), FsError> {
    let (dir, name) = parent(root, target)?;
    if cfg!(windows) {
        return rewrite_in_place(&dir, &name, target, old, content, seen);
    }
    let tmp = match write_temp(&dir, &name, content, sys::kept(seen)) {
        Ok(tmp) => tmp,
        // The directory is not writable (read-only, or not ours).
        Err(FsError::Io { source, .. }) if sys::dir_not_writable(&source) => {
            return rewrite_in_place(&dir, &name, target, old, content, seen);
        }
        Err(e) => return Err(e),
    };
    if !dir.still(&name, seen, true) {
        let _ = dir.unlink(&tmp);
        return Err(changed(target));
    }
    if let Err(e) = dir.rename(&tmp, &name) {
        let _ = dir.unlink(&tmp);
        return Err(e);
    }
    dir.sync();
    Ok(())
}

fn changed(target: &Path) -> FsError {
    FsError::Unsuitable {
        path: target.display().to_string(),
        reason: "changed while the lure was being written; will retry".into(),
    }
}

/// [`replace_content`] without a temporary file: the file at `name`, still
/// the one read, is written from the first byte where `old` and `new`
/// differ, cut to the new length and synced.
fn rewrite_in_place(
    dir: &Dir,
    name: &OsStr,
    target: &Path,
    old: &[u8],
    new: &[u8],
    seen: &Metadata,
) -> Result<(), FsError> {
    let file = dir.open_write(name)?;
    if !sys::same_file(&file, seen).map_err(io(target))? {
        return Err(changed(target));
    }
    let same = old.iter().zip(new).take_while(|(a, b)| a == b).count();
    sys::write_at(&file, &new[same..], same as u64)
        .and_then(|()| file.set_len(new.len() as u64))
        .and_then(|()| file.sync_all())
        .map_err(io(target))?;
    if let Ok(t) = seen.modified() {
        let _ = set_times(&file, t);
    }
    Ok(())
}

/// What [`remove_if_ours`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removal {
    Removed,
    /// Nothing was there.
    Missing,
    /// Something was there whose content is not the lure's: left in place.
    NotOurs,
}

/// Deletes the regular file at `target` only if `ours` accepts its content
/// and the name still holds the inode that was read.
pub fn remove_if_ours(
    root: &Dir,
    target: &Path,
    ours: impl FnOnce(&[u8]) -> bool,
) -> Result<Removal, FsError> {
    let (dir, name) = match parent(root, target) {
        Ok(found) => found,
        Err(e) if e.is_not_found() => return Ok(Removal::Missing),
        Err(e) => return Err(e),
    };
    let mut file = match dir.open_file(&name) {
        Ok(file) => file,
        Err(e) if e.is_not_found() => return Ok(Removal::Missing),
        Err(e) => return Err(e),
    };
    let (bytes, meta) = match read_open(&mut file, target, MAX_LURE_FILE) {
        Ok(read) => read,
        Err(FsError::Unsuitable { .. }) => return Ok(Removal::NotOurs),
        Err(e) => return Err(e),
    };
    if !ours(&bytes) {
        return Ok(Removal::NotOurs);
    }
    drop(file);
    if !dir.still(&name, &meta, false) {
        return Ok(Removal::NotOurs);
    }
    match dir.unlink(&name) {
        Ok(true) => {
            dir.sync();
            Ok(Removal::Removed)
        }
        Ok(false) => Ok(Removal::Missing),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
#[cfg(unix)]
mod tests;

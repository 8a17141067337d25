//! The file operations behind planting, confined to the agent's root.
//!
//! Rules kept here, each tested:
//! - every path resolves under the root; `..` and symlinks on the way are
//!   refused, so a lure can never be written outside it;
//! - a whole-file lure never replaces an existing file (the final step is a
//!   hard link, which fails if the name is taken);
//! - every write goes to a temporary file in the same directory, synced,
//!   then moved into place, keeping the target's owner and mode;
//! - files and directories the agent creates get the home's owner and a
//!   backdated time; a file the agent adds a block to keeps its time.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ruse_proto::types::{hex, random_bytes};

/// Largest existing file the agent will add a block to.
pub const MAX_BLOCK_TARGET: u64 = 4 << 20;

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

pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> FsError + '_ {
    move |source| FsError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Who should own what the agent creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
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

/// Refuses `target` if any existing directory between `base` and it is a
/// symlink (or not a directory).
pub fn check_no_symlinks(base: &Path, target: &Path) -> Result<(), FsError> {
    let rel = target
        .strip_prefix(base)
        .map_err(|_| FsError::OutsideRoot {
            path: target.display().to_string(),
            reason: "not under the root",
        })?;
    let mut current = base.to_path_buf();
    let components: Vec<_> = rel.components().collect();
    for (i, component) in components.iter().enumerate() {
        current.push(component);
        match fs::symlink_metadata(&current) {
            Ok(meta) if meta.file_type().is_symlink() => {
                return Err(FsError::OutsideRoot {
                    path: current.display().to_string(),
                    reason: "symbolic links are never followed",
                });
            }
            Ok(meta) if i + 1 < components.len() && !meta.is_dir() => {
                return Err(FsError::Unsuitable {
                    path: current.display().to_string(),
                    reason: "is not a directory".into(),
                });
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io(&current)(e)),
        }
    }
    Ok(())
}

/// Creates the missing directories above `target` (below `base`), owned by
/// `owner`. Returns them, outermost first, so removal can undo exactly this.
pub fn create_parents(
    base: &Path,
    target: &Path,
    owner: Option<Owner>,
    mtime: Option<SystemTime>,
) -> Result<Vec<PathBuf>, FsError> {
    let Some(parent) = target.parent() else {
        return Ok(Vec::new());
    };
    let mut missing = Vec::new();
    let mut dir = parent;
    while dir.starts_with(base) && dir != base && !dir.exists() {
        missing.push(dir.to_path_buf());
        match dir.parent() {
            Some(p) => dir = p,
            None => break,
        }
    }
    missing.reverse();
    for dir in &missing {
        let private = dir
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| matches!(n, ".ssh" | ".aws" | ".kube" | ".gnupg"));
        fs::create_dir(dir).map_err(io(dir))?;
        fs::set_permissions(
            dir,
            fs::Permissions::from_mode(if private { 0o700 } else { 0o755 }),
        )
        .map_err(io(dir))?;
        if let Some(o) = owner {
            std::os::unix::fs::chown(dir, Some(o.uid), Some(o.gid)).map_err(io(dir))?;
        }
        if let Some(t) = mtime {
            set_mtime(dir, t)?;
        }
    }
    Ok(missing)
}

/// Removes directories the agent created, innermost first, while empty.
pub fn remove_created_dirs(dirs: &[PathBuf]) {
    for dir in dirs.iter().rev() {
        // Not empty means someone put something there: leave it.
        let _ = fs::remove_dir(dir);
    }
}

pub fn set_mtime(path: &Path, t: SystemTime) -> Result<(), FsError> {
    let file = File::options()
        .read(true)
        .open(path)
        .or_else(|_| File::open(path))
        .map_err(io(path))?;
    file.set_times(fs::FileTimes::new().set_modified(t).set_accessed(t))
        .map_err(io(path))
}

pub fn system_time(ms: i64) -> Option<SystemTime> {
    let ms = u64::try_from(ms).ok().filter(|&ms| ms > 0)?;
    Some(UNIX_EPOCH + Duration::from_millis(ms))
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())
}

fn temp_path(target: &Path) -> PathBuf {
    let mut rnd = [0u8; 6];
    random_bytes(&mut rnd);
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    target.with_file_name(format!(".{name}.{}.tmp", hex(&rnd)))
}

/// Writes `content` to a new temporary file beside `target` with the given
/// mode, owner and time, synced. The caller moves it into place.
fn write_temp(
    target: &Path,
    content: &[u8],
    mode: u32,
    owner: Option<Owner>,
    mtime: Option<SystemTime>,
) -> Result<PathBuf, FsError> {
    let tmp = temp_path(target);
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .custom_flags(nix_o_nofollow())
            .open(&tmp)?;
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        if let Some(o) = owner {
            std::os::unix::fs::fchown(&file, Some(o.uid), Some(o.gid))?;
        }
        file.write_all(content)?;
        file.sync_all()?;
        if let Some(t) = mtime {
            file.set_times(fs::FileTimes::new().set_modified(t).set_accessed(t))?;
        }
        Ok(())
    })();
    match result {
        Ok(()) => Ok(tmp),
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(io(target)(e))
        }
    }
}

/// `O_NOFOLLOW`: never open through a symlink planted at the temp name.
fn nix_o_nofollow() -> i32 {
    nix::fcntl::OFlag::O_NOFOLLOW.bits()
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Creates `target` with `content`, atomically, failing if anything exists
/// at that name.
pub fn create_new(
    target: &Path,
    content: &[u8],
    mode: u32,
    owner: Option<Owner>,
    mtime: Option<SystemTime>,
) -> Result<(), FsError> {
    if fs::symlink_metadata(target).is_ok() {
        return Err(FsError::Exists {
            path: target.display().to_string(),
        });
    }
    let tmp = write_temp(target, content, mode, owner, mtime)?;
    // link() never replaces an existing name: no-clobber even if a file
    // appeared since the check above.
    let linked = fs::hard_link(&tmp, target);
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => {
            if let Some(parent) = target.parent() {
                sync_dir(parent);
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(FsError::Exists {
            path: target.display().to_string(),
        }),
        Err(e) => Err(io(target)(e)),
    }
}

/// A regular file's bytes and metadata, refusing symlinks and huge files.
pub fn read_regular(target: &Path) -> Result<(Vec<u8>, fs::Metadata), FsError> {
    let meta = fs::symlink_metadata(target).map_err(io(target))?;
    if !meta.file_type().is_file() {
        return Err(FsError::Unsuitable {
            path: target.display().to_string(),
            reason: "is not a regular file".into(),
        });
    }
    if meta.len() > MAX_BLOCK_TARGET {
        return Err(FsError::Unsuitable {
            path: target.display().to_string(),
            reason: format!("is larger than {MAX_BLOCK_TARGET} bytes"),
        });
    }
    let mut file = OpenOptions::new()
        .read(true)
        .custom_flags(nix_o_nofollow())
        .open(target)
        .map_err(io(target))?;
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    file.read_to_end(&mut bytes).map_err(io(target))?;
    Ok((bytes, meta))
}

/// Replaces an existing file's content atomically, keeping its owner, mode
/// and modification time. Fails if the file changed since `seen` was read.
pub fn replace_content(target: &Path, content: &[u8], seen: &fs::Metadata) -> Result<(), FsError> {
    let owner = Some(Owner {
        uid: seen.uid(),
        gid: seen.gid(),
    });
    let mtime = seen.modified().ok();
    let tmp = write_temp(target, content, seen.mode() & 0o7777, owner, mtime)?;
    let unchanged = fs::symlink_metadata(target)
        .map(|now| {
            now.ino() == seen.ino() && now.len() == seen.len() && now.modified().ok() == mtime
        })
        .unwrap_or(false);
    if !unchanged {
        let _ = fs::remove_file(&tmp);
        return Err(FsError::Unsuitable {
            path: target.display().to_string(),
            reason: "changed while the lure was being written; will retry".into(),
        });
    }
    fs::rename(&tmp, target).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        io(target)(e)
    })?;
    if let Some(parent) = target.parent() {
        sync_dir(parent);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_under_the_base() {
        let base = Path::new("/r");
        assert_eq!(
            confined_join(base, "/etc/hosts").unwrap(),
            Path::new("/r/etc/hosts")
        );
        assert_eq!(confined_join(base, "a/./b").unwrap(), Path::new("/r/a/b"));
        for bad in ["../etc/passwd", "/a/../../etc", "", "/", "."] {
            assert!(confined_join(base, bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn symlinks_on_the_way_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let outside = dir.path().join("outside");
        fs::create_dir_all(root.join("home/alice")).unwrap();
        fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("home/alice/.ssh")).unwrap();
        let target = root.join("home/alice/.ssh/config");
        assert!(matches!(
            check_no_symlinks(&root, &target),
            Err(FsError::OutsideRoot { .. })
        ));
        assert!(check_no_symlinks(&root, &root.join("home/alice/.aws/credentials")).is_ok());
        // A symlink at the final name is refused too.
        std::os::unix::fs::symlink(outside.join("x"), root.join("home/alice/notes")).unwrap();
        assert!(check_no_symlinks(&root, &root.join("home/alice/notes")).is_err());
    }

    #[test]
    fn create_new_never_clobbers() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("real.txt");
        fs::write(&target, b"real data").unwrap();
        assert!(matches!(
            create_new(&target, b"lure", 0o600, None, None),
            Err(FsError::Exists { .. })
        ));
        assert_eq!(fs::read(&target).unwrap(), b"real data");
        let fresh = dir.path().join("lure.txt");
        let t = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        create_new(&fresh, b"lure", 0o640, None, Some(t)).unwrap();
        let meta = fs::metadata(&fresh).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o640);
        assert_eq!(meta.modified().unwrap(), t);
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            2,
            "no temp files left"
        );
    }

    #[test]
    fn replace_content_keeps_mode_and_time() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("config");
        fs::write(&target, b"before").unwrap();
        fs::set_permissions(&target, fs::Permissions::from_mode(0o604)).unwrap();
        let t = UNIX_EPOCH + Duration::from_secs(1_600_000_000);
        set_mtime(&target, t).unwrap();
        let (_, seen) = read_regular(&target).unwrap();
        replace_content(&target, b"after", &seen).unwrap();
        let meta = fs::metadata(&target).unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"after");
        assert_eq!(meta.permissions().mode() & 0o777, 0o604);
        assert_eq!(meta.modified().unwrap(), t);
        // A change between read and replace is detected.
        let (_, seen) = read_regular(&target).unwrap();
        fs::write(&target, b"someone else").unwrap();
        assert!(replace_content(&target, b"mine", &seen).is_err());
        assert_eq!(fs::read(&target).unwrap(), b"someone else");
    }

    #[test]
    fn created_parents_are_private_where_expected_and_removed_when_empty() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path();
        let target = base.join("home/bob/.ssh/config");
        let created = create_parents(base, &target, None, None).unwrap();
        assert_eq!(
            created,
            vec![
                base.join("home"),
                base.join("home/bob"),
                base.join("home/bob/.ssh")
            ]
        );
        let mode = fs::metadata(base.join("home/bob/.ssh"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o700);
        fs::write(base.join("home/bob/keep"), b"x").unwrap();
        remove_created_dirs(&created);
        assert!(!base.join("home/bob/.ssh").exists());
        assert!(
            base.join("home/bob/keep").exists(),
            "non-empty directories stay"
        );
    }
}

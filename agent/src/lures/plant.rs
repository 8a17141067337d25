//! What happens to the files of one lure: planting them (whole files
//! moved into place, blocks appended), checking them for drift, and
//! removing or undoing them byte-exactly.

use std::path::{Path, PathBuf};

use ruse_proto::spec::{PlantFile, PlantMode};

use super::fs::{Dir, FsError, NewFile, Owner, Removal};
use super::journal::Intent;
use super::{AppliedLure, DriftKind, LureEngine, LureError, Planted, block, fs};

/// Keeps a directory's modification time across changes inside it, so a
/// lure does not show up as "modified today" in a listing. Holds the
/// directory open: the time is put back through the handle.
pub(super) struct KeepDirTime(Option<(Dir, std::time::SystemTime)>);

impl KeepDirTime {
    /// Remembers the time of the nearest existing directory above `target`.
    pub(super) fn above(root: &Dir, target: &Path) -> Self {
        let found = target
            .parent()
            .and_then(|p| fs::nearest_dir(root, p))
            .and_then(|dir| {
                let time = dir.metadata().ok()?.modified().ok()?;
                Some((dir, time))
            });
        KeepDirTime(found)
    }
}

impl Drop for KeepDirTime {
    fn drop(&mut self) {
        if let Some((dir, time)) = self.0.take() {
            let _ = dir.set_times(time);
        }
    }
}

/// Announces one lure's steps in the journal before they are taken.
pub(super) struct Intents<'a> {
    pub(super) engine: &'a LureEngine,
    pub(super) lure: &'a str,
    pub(super) revision: u64,
}

impl Intents<'_> {
    pub(super) fn dir(&self, path: &Path) -> std::io::Result<()> {
        self.engine
            .journal()
            .record(&Intent::Dir {
                lure: self.lure.to_owned(),
                revision: self.revision,
                path: path.to_path_buf(),
            })
            .map_err(std::io::Error::other)
    }

    pub(super) fn key(&self, planted: &super::registry::PlantedKey) -> Result<(), LureError> {
        self.engine.journal().record(&Intent::Key {
            lure: self.lure.to_owned(),
            revision: self.revision,
            planted: planted.clone(),
        })
    }

    pub(super) fn file(&self, planted: &Planted) -> Result<(), LureError> {
        self.engine.journal().record(&Intent::File {
            lure: self.lure.to_owned(),
            revision: self.revision,
            planted: planted.clone(),
        })
    }
}

pub(super) fn plant_file(
    root: &Dir,
    target: &Path,
    file: &PlantFile,
    owner: Option<Owner>,
    created_dirs: &mut Vec<PathBuf>,
    journal: &Intents<'_>,
) -> Result<Planted, LureError> {
    let mtime = fs::system_time(file.mtime_ms);
    let mode = if file.permissions == 0 {
        0o644
    } else {
        file.permissions & 0o777
    };
    let owner = owner.or_else(|| parent_owner(root, target));
    let _keep = KeepDirTime::above(root, target);
    let created = fs::create_parents(root, target, owner, &mut |dir| journal.dir(dir))?;
    let planted = plant_content(root, target, file, NewFile { mode, owner, mtime }, journal);
    if planted.is_err() {
        fs::remove_created_dirs(root, &created);
        return planted;
    }
    // Directories made for the lure look as old as it, innermost first
    // (each entry added inside changed its time).
    if let Some(t) = mtime {
        for dir in created.iter().rev() {
            let _ = fs::set_mtime(root, dir, t);
        }
    }
    created_dirs.extend(created);
    planted
}

pub(super) fn plant_content(
    root: &Dir,
    target: &Path,
    file: &PlantFile,
    new: NewFile,
    journal: &Intents<'_>,
) -> Result<Planted, LureError> {
    match file.mode {
        PlantMode::WholeFile => {
            let planted = Planted::Whole {
                path: target.to_path_buf(),
                sha256: fs::sha256_hex(&file.content),
            };
            journal.file(&planted)?;
            fs::create_new(root, target, &file.content, new)?;
            Ok(planted)
        }
        PlantMode::Block => {
            let text = std::str::from_utf8(&file.content).map_err(|_| {
                LureError::Spec(format!("block for {} is not UTF-8 text", file.path))
            })?;
            match fs::read_regular(root, target) {
                Err(e) if e.is_not_found() => {
                    let (content, inserted) = block::insert(b"", text);
                    let planted = Planted::Block {
                        path: target.to_path_buf(),
                        inserted,
                        created: true,
                        readers: file.ordinary_readers.clone(),
                    };
                    journal.file(&planted)?;
                    fs::create_new(root, target, &content, new)?;
                    Ok(planted)
                }
                Err(e) => Err(e.into()),
                Ok((existing, seen)) => {
                    let (content, inserted) = block::insert(&existing, text);
                    let planted = Planted::Block {
                        path: target.to_path_buf(),
                        inserted,
                        created: false,
                        readers: file.ordinary_readers.clone(),
                    };
                    journal.file(&planted)?;
                    fs::replace_content(root, target, &existing, &content, &seen)?;
                    Ok(planted)
                }
            }
        }
    }
}

/// The owner of the nearest existing directory above `target` (for
/// absolute paths: files created in /etc belong to whoever owns /etc).
pub(super) fn parent_owner(root: &Dir, target: &Path) -> Option<Owner> {
    let dir = fs::nearest_dir(root, target.parent()?)?;
    dir.owner()
}

/// What is wrong with a planted file, if anything. A link on the way
/// counts as deleted: the file is no longer where it was planted.
pub(super) fn check(root: &Dir, planted: &Planted) -> Option<DriftKind> {
    match planted {
        Planted::Whole { path, sha256 } => match fs::read_lure(root, path) {
            Err(_) => Some(DriftKind::Deleted),
            Ok(bytes) if fs::sha256_hex(&bytes) != *sha256 => Some(DriftKind::Modified),
            Ok(_) => None,
        },
        Planted::Block { path, inserted, .. } => match fs::read_regular(root, path) {
            Err(_) => Some(DriftKind::Deleted),
            Ok((bytes, _)) => block::locate(&bytes, inserted)
                .err()
                .map(|_| DriftKind::Modified),
        },
    }
}

/// A planted file now behind a link cannot be reached without following
/// it: whatever is at the end of the link is not the agent's to change.
pub(super) fn unreachable(path: &Path, e: &FsError) -> Result<(), LureError> {
    tracing::warn!(path = %path.display(), error = %e, "a link now stands on the way to a planted file; leaving it alone");
    Ok(())
}

/// Takes one planted file out again, with any temporary file an earlier
/// run that ended mid-write left beside it.
pub(super) fn unplant(root: &Dir, planted: &Planted) -> Result<(), LureError> {
    let _keep = KeepDirTime::above(root, planted.path());
    fs::remove_temps(root, planted.path());
    match planted {
        Planted::Whole { path, sha256 } => {
            match fs::remove_if_ours(root, path, |bytes| fs::sha256_hex(bytes) == *sha256) {
                Ok(Removal::Removed | Removal::Missing) => Ok(()),
                // Changed by someone: not ours to delete any more.
                Ok(Removal::NotOurs) => Err(LureError::Block {
                    path: path.display().to_string(),
                    reason: "the file was modified after it was planted; left in place".into(),
                }),
                Err(e @ FsError::OutsideRoot { .. }) => unreachable(path, &e),
                Err(e) => Err(e.into()),
            }
        }
        Planted::Block {
            path,
            inserted,
            created,
            ..
        } => {
            let (current, seen) = match fs::read_regular(root, path) {
                Ok(v) => v,
                Err(e) if e.is_not_found() => return Ok(()),
                Err(e @ FsError::OutsideRoot { .. }) => return unreachable(path, &e),
                Err(e) => return Err(e.into()),
            };
            let restored = match block::remove(&current, inserted) {
                Ok(restored) => restored,
                // Nothing of the lure is left (someone took the block out,
                // or a run ended before writing it): removed already.
                Err(block::BlockError::Missing) => return Ok(()),
                Err(e) => {
                    return Err(LureError::Block {
                        path: path.display().to_string(),
                        reason: e.to_string(),
                    });
                }
            };
            if *created && restored.is_empty() {
                // The file holds the block and nothing else: it is ours.
                fs::remove_if_ours(root, path, |bytes| bytes == current.as_slice())?;
                Ok(())
            } else {
                fs::replace_content(root, path, &current, &restored, &seen).map_err(LureError::from)
            }
        }
    }
}

/// Removes directories made for a lure, keeping the times of the
/// directories they were in.
pub(super) fn remove_dirs(root: &Dir, dirs: &[PathBuf]) {
    let _keep: Vec<KeepDirTime> = dirs.iter().map(|d| KeepDirTime::above(root, d)).collect();
    fs::remove_created_dirs(root, dirs);
}

/// Best-effort removal of a partly planted lure.
pub(super) fn undo(root: &Dir, applied: &AppliedLure) {
    for planted in applied.files.iter().rev() {
        let _ = unplant(root, planted);
    }
    remove_dirs(root, &applied.created_dirs);
}

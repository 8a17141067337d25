//! The planting journal: what the engine is about to do, written down
//! before it does it, so a crash (`kill -9`, power loss) in the middle of
//! an update leaves nothing half-done behind.
//!
//! The state file is saved once per update (it is megabytes for a
//! thousand lures), so between two saves the disk may hold lure files the
//! state does not know of. Before each directory it creates and each file
//! it plants, the engine appends an [`Intent`] here and syncs it; after
//! every save the journal is emptied. At start, intents whose lure the
//! saved state does not hold are undone exactly as a removal would
//! (by content: a whole file only if it is byte for byte the lure's, a
//! block only if it is there, a directory only if empty), and temporary
//! files next to any journaled file are deleted. The endpoint is then as
//! the last saved state says, and the controller, which never got an
//! acknowledgement for the interrupted update, sends it again.
//!
//! One line of JSON per intent; a torn last line (the crash came during
//! the append) is ignored: what it announced had not started.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::registry::PlantedKey;
use super::{LureError, Planted};

const JOURNAL_FILE: &str = "planting.journal";

/// One step about to be taken for a lure at a revision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "intent", rename_all = "snake_case")]
pub enum Intent {
    /// A directory about to be created on the way to a lure file.
    Dir {
        lure: String,
        revision: u64,
        path: PathBuf,
    },
    /// A file about to be planted, as it will be recorded.
    File {
        lure: String,
        revision: u64,
        planted: Planted,
    },
    /// A registry key about to be created, as it will be recorded.
    Key {
        lure: String,
        revision: u64,
        planted: PlantedKey,
    },
}

/// The journal file in the agent's state directory.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    file: Option<File>,
    /// Whether the file may hold anything (intents, or a torn line a new
    /// append must not follow).
    dirty: bool,
}

impl Journal {
    /// Opens the journal in `state_dir`, returning the intents a previous
    /// run left (empty after a clean stop).
    pub fn open(state_dir: &Path) -> Result<(Journal, Vec<Intent>), LureError> {
        let path = state_dir.join(JOURNAL_FILE);
        let (left, dirty) = match File::open(&path) {
            Ok(f) => {
                let dirty = f.metadata().map_or(true, |m| m.len() > 0);
                let left = BufReader::new(f)
                    .lines()
                    .map_while(Result::ok)
                    .map_while(|line| serde_json::from_str::<Intent>(&line).ok())
                    .collect();
                (left, dirty)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (Vec::new(), false),
            Err(e) => return Err(state_error(&path, e)),
        };
        Ok((
            Journal {
                path,
                file: None,
                dirty,
            },
            left,
        ))
    }

    /// Appends `intent` and syncs it: only then may the step be taken.
    pub fn record(&mut self, intent: &Intent) -> Result<(), LureError> {
        let mut line = serde_json::to_vec(intent).map_err(|e| state_error(&self.path, e))?;
        line.push(b'\n');
        let path = self.path.clone();
        let file = self.file()?;
        file.write_all(&line)
            .and_then(|()| file.sync_data())
            .map_err(|e| state_error(&path, e))?;
        self.dirty = true;
        Ok(())
    }

    /// Empties the journal once the state file records everything in it.
    pub fn clear(&mut self) -> Result<(), LureError> {
        if !self.dirty {
            return Ok(());
        }
        let path = self.path.clone();
        let file = self.file()?;
        file.set_len(0)
            .and_then(|()| file.sync_data())
            .map_err(|e| state_error(&path, e))?;
        self.dirty = false;
        Ok(())
    }

    /// The journal file, opened for appending on first use (0600).
    fn file(&mut self) -> Result<&mut File, LureError> {
        if self.file.is_none() {
            let f = ruse_pki::open_private_append(&self.path)
                .map_err(|e| state_error(&self.path, e))?;
            self.file = Some(f);
        }
        self.file
            .as_mut()
            .ok_or_else(|| state_error(&self.path, "not open"))
    }
}

fn state_error(path: &Path, e: impl std::fmt::Display) -> LureError {
    LureError::State {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intents_survive_until_cleared_and_a_torn_line_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, left) = Journal::open(dir.path()).unwrap();
        assert!(left.is_empty());
        let one = Intent::Dir {
            lure: "l1".into(),
            revision: 3,
            path: "/home/a/.ssh".into(),
        };
        let two = Intent::File {
            lure: "l1".into(),
            revision: 3,
            planted: Planted::Whole {
                path: "/home/a/.ssh/id".into(),
                sha256: "ab".into(),
            },
        };
        j.record(&one).unwrap();
        j.record(&two).unwrap();
        drop(j);
        // A crash during the next append.
        let path = dir.path().join(JOURNAL_FILE);
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(b"{\"intent\":\"dir\",\"lu").unwrap();
        let (mut j, left) = Journal::open(dir.path()).unwrap();
        assert_eq!(left, vec![one, two]);
        j.clear().unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
        let (_, left) = Journal::open(dir.path()).unwrap();
        assert!(left.is_empty());
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
}

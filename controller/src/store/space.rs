//! Keeping the embedded store off a full disk.
//!
//! sled turns a failed background write into an error that every later
//! call returns until the store is opened again: one `ENOSPC` would leave
//! the controller refusing everything until a restart, even after space
//! came back. So the store never lets the disk fill under it. The
//! controller keeps a reserve file (`disk_reserve_mb`, 64 MiB by default)
//! in its data directory and checks the free space before every write.
//! Below a quarter of the reserve, writes are refused with a clear error
//! and the reserve is deleted, so that what sled already buffered still
//! reaches the disk. Once there is room for the reserve again and that
//! quarter besides, the reserve is made again and writes resume. Agents
//! keep the events that were refused and send them again.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use super::StoreError;

/// The reserve file, in the data directory.
pub const RESERVE_FILE: &str = "disk-reserve";

/// The free-space guard of one data directory.
#[derive(Debug)]
pub struct DiskSpace {
    dir: PathBuf,
    reserve: u64,
    /// Writes are refused below this much free space.
    low: u64,
    full: AtomicBool,
    /// Serialises the switch between the two states.
    switching: Mutex<()>,
}

impl DiskSpace {
    /// A guard for `dir` keeping `reserve` bytes (0: no guard). Makes the
    /// reserve file now if there is room; otherwise starts refusing
    /// writes until there is.
    pub fn new(dir: &Path, reserve: u64) -> DiskSpace {
        let space = DiskSpace {
            dir: dir.to_owned(),
            reserve,
            low: reserve / 4,
            full: AtomicBool::new(false),
            switching: Mutex::new(()),
        };
        if reserve > 0 && !space.reserve_path().exists() {
            let enough = space
                .free()
                .is_none_or(|f| f >= reserve.saturating_add(space.low));
            if !enough || space.make_reserve().is_err() {
                tracing::error!(
                    dir = %dir.display(),
                    free_mib = space.free().unwrap_or(0) >> 20,
                    reserve_mib = reserve >> 20,
                    "the data directory has no room for its disk reserve: writes are refused until there is"
                );
                space.full.store(true, Ordering::Release);
            }
        }
        space
    }

    fn reserve_path(&self) -> PathBuf {
        self.dir.join(RESERVE_FILE)
    }

    /// Bytes an unprivileged writer may still use on the data directory's
    /// filesystem; `None` if that cannot be told.
    fn free(&self) -> Option<u64> {
        let st = nix::sys::statvfs::statvfs(&self.dir).ok()?;
        Some((st.blocks_available() as u64).saturating_mul(st.fragment_size() as u64))
    }

    fn make_reserve(&self) -> std::io::Result<()> {
        let path = self.reserve_path();
        let result = (|| {
            let mut f = File::create(&path)?;
            let len = i64::try_from(self.reserve).unwrap_or(i64::MAX);
            if nix::fcntl::fallocate(&f, nix::fcntl::FallocateFlags::empty(), 0, len).is_err() {
                // No fallocate on this filesystem: write the zeros.
                let zeros = vec![0u8; 1 << 20];
                let mut left = self.reserve;
                while left > 0 {
                    let n = left.min(zeros.len() as u64) as usize;
                    f.write_all(&zeros[..n])?;
                    left -= n as u64;
                }
            }
            f.sync_all()
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&path);
        }
        result
    }

    /// Whether a write may go ahead now.
    pub fn check(&self) -> Result<(), StoreError> {
        if self.reserve == 0 {
            return Ok(());
        }
        let Some(free) = self.free() else {
            return Ok(());
        };
        if !self.full.load(Ordering::Acquire) {
            if free >= self.low {
                return Ok(());
            }
            let _switch = self.lock();
            if !self.full.swap(true, Ordering::AcqRel) {
                // Room for what sled already holds in memory.
                let _ = std::fs::remove_file(self.reserve_path());
                tracing::error!(
                    dir = %self.dir.display(),
                    free_mib = free >> 20,
                    "the data directory is almost full: writes are refused (agents keep their events) until {} MiB are free",
                    self.reserve.saturating_add(self.low) >> 20
                );
            }
            return Err(self.refusal(free));
        }
        if free >= self.reserve.saturating_add(self.low) {
            let _switch = self.lock();
            if !self.full.load(Ordering::Acquire) {
                return Ok(());
            }
            match self.make_reserve() {
                Ok(()) => {
                    self.full.store(false, Ordering::Release);
                    tracing::info!(dir = %self.dir.display(), free_mib = free >> 20, "disk space is back: writes resume");
                    return Ok(());
                }
                Err(e) => {
                    tracing::warn!(error = %e, "the disk reserve could not be made again");
                }
            }
        }
        Err(self.refusal(free))
    }

    fn refusal(&self, free: u64) -> StoreError {
        StoreError::Full(
            format!(
                "{} MiB free in {}; writes resume at {} MiB",
                free >> 20,
                self.dir.display(),
                self.reserve.saturating_add(self.low) >> 20
            )
            .into(),
        )
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.switching
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_reserve_means_no_guard() {
        let dir = tempfile::tempdir().unwrap();
        let space = DiskSpace::new(dir.path(), 0);
        assert!(space.check().is_ok());
        assert!(!dir.path().join(RESERVE_FILE).exists());
    }

    #[test]
    fn the_reserve_is_made_and_writes_go_ahead() {
        let dir = tempfile::tempdir().unwrap();
        let space = DiskSpace::new(dir.path(), 1 << 20);
        assert_eq!(
            std::fs::metadata(dir.path().join(RESERVE_FILE))
                .unwrap()
                .len(),
            1 << 20
        );
        assert!(space.check().is_ok());
    }

    #[test]
    fn a_reserve_larger_than_the_disk_refuses_writes_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let space = DiskSpace::new(dir.path(), u64::MAX / 8);
        let e = space.check().unwrap_err();
        assert!(matches!(e, StoreError::Full(_)));
        assert!(e.to_string().contains("out of disk space"), "{e}");
        assert!(!dir.path().join(RESERVE_FILE).exists());
    }
}

//! Which home directories `~/` means: by default every directory under
//! `<root>/home/` and `<root>/root` on Linux, and every profile under
//! `<root>\Users\` on Windows except the shared ones (`Default`,
//! `Public`).

use std::path::{Path, PathBuf};

use super::fs::{Owner, owner_of_path};

/// Patterns relative to the root: `home/*` (every directory in `home`) or a
/// plain path (`root`, `var/lib/pacs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HomeDirs {
    patterns: Vec<String>,
}

impl Default for HomeDirs {
    fn default() -> Self {
        HomeDirs {
            patterns: default_patterns(),
        }
    }
}

/// The default home patterns of this platform.
pub fn default_patterns() -> Vec<String> {
    if cfg!(windows) {
        vec!["Users/*".into()]
    } else {
        vec!["home/*".into(), "root".into()]
    }
}

/// A discovered home and who owns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Home {
    pub path: PathBuf,
    pub owner: Owner,
}

impl HomeDirs {
    pub fn new(patterns: Vec<String>) -> Self {
        HomeDirs { patterns }
    }

    /// The homes that exist now under `root`, sorted. Symlinks are skipped.
    pub fn discover(&self, root: &Path) -> Vec<Home> {
        let mut homes = Vec::new();
        for pattern in &self.patterns {
            let pattern = pattern.trim_start_matches('/');
            if let Some(parent) = pattern.strip_suffix("/*") {
                let Ok(dir) = super::fs::confined_join(root, parent) else {
                    continue;
                };
                let Ok(entries) = std::fs::read_dir(&dir) else {
                    continue;
                };
                for entry in entries.flatten() {
                    if let Some(home) = home_at(&entry.path()) {
                        homes.push(home);
                    }
                }
            } else if let Ok(path) = super::fs::confined_join(root, pattern)
                && let Some(home) = home_at(&path)
            {
                homes.push(home);
            }
        }
        homes.sort_by(|a, b| a.path.cmp(&b.path));
        homes.dedup_by(|a, b| a.path == b.path);
        homes
    }
}

/// Windows' profiles that are no one's: the template for new users and
/// the shared one (`All Users` and `Default User` are junctions and are
/// skipped as links already).
fn is_shared_profile(path: &Path) -> bool {
    cfg!(windows)
        && path.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
            ["Default", "Default User", "Public", "All Users"]
                .iter()
                .any(|shared| n.eq_ignore_ascii_case(shared))
        })
}

fn home_at(path: &Path) -> Option<Home> {
    let meta = std::fs::symlink_metadata(path).ok()?;
    if !meta.is_dir() || is_shared_profile(path) {
        return None;
    }
    Some(Home {
        path: path.to_path_buf(),
        owner: owner_of_path(path)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discovers_homes_and_skips_symlinks_and_files() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("home/alice")).unwrap();
        std::fs::create_dir_all(root.join("home/bob")).unwrap();
        std::fs::create_dir_all(root.join("root")).unwrap();
        std::fs::write(root.join("home/notes.txt"), b"x").unwrap();
        std::os::unix::fs::symlink("/etc", root.join("home/evil")).unwrap();
        let homes: Vec<_> = HomeDirs::default()
            .discover(root)
            .into_iter()
            .map(|h| h.path.strip_prefix(root).unwrap().to_path_buf())
            .collect();
        assert_eq!(
            homes,
            [
                Path::new("home/alice"),
                Path::new("home/bob"),
                Path::new("root")
            ]
        );
        assert!(
            HomeDirs::new(vec!["../etc".into()])
                .discover(root)
                .is_empty()
        );
    }
}

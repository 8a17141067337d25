//! The planting engine: turns lure specs from the controller into files
//! under the agent's root, remembers exactly what it did, and undoes it
//! exactly.
//!
//! Invariants:
//! - **A lure never damages a real file.** Whole-file lures are only
//!   created where nothing exists; blocks are appended and removed
//!   byte-exactly; nothing is written outside the root or through a symlink.
//! - **Applying the same revision again touches nothing**, and a restart
//!   re-verifies planted lures against the local state instead of rewriting
//!   them.
//! - **The local state is written after every change**, atomically, so
//!   `uninstall` can always remove everything the agent planted — and
//!   nothing else.

pub mod block;
pub mod fs;
mod homes;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use prost::Message;
use serde::{Deserialize, Serialize};

use ruse_proto::agent::v1 as pb;

use self::block::Inserted;
use self::fs::{FsError, Owner};
pub use self::homes::HomeDirs;
use crate::detect::{LureRef, SelfActivity, Watched};

const STATE_FILE: &str = "lures.json";

/// Resource kind of lures.
pub const LURE: &str = "lure";
/// Resource kind of the allow rules (one per agent).
pub const ALLOW_RULES: &str = "allow-rules";

/// One planted file, as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Planted {
    /// A file the agent created; `sha256` of what it wrote.
    Whole { path: PathBuf, sha256: String },
    /// Bytes appended to a file. `created` when the agent created the file.
    Block {
        path: PathBuf,
        inserted: Inserted,
        created: bool,
    },
}

impl Planted {
    pub fn path(&self) -> &Path {
        match self {
            Planted::Whole { path, .. } | Planted::Block { path, .. } => path,
        }
    }
}

/// One applied lure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedLure {
    pub revision: u64,
    /// The resource kind (lure or allow-rules).
    #[serde(default = "lure_kind")]
    pub kind: String,
    pub template: String,
    pub files: Vec<Planted>,
    /// Directories created for this lure, outermost first.
    pub created_dirs: Vec<PathBuf>,
    /// The spec, so drift can be repaired without the controller.
    #[serde(with = "spec_bytes")]
    pub spec: Vec<u8>,
}

fn lure_kind() -> String {
    LURE.to_owned()
}

mod spec_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&ruse_proto::types::hex(b))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        ruse_proto::types::unhex(&s).ok_or_else(|| serde::de::Error::custom("invalid hex"))
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct StateFile {
    lures: BTreeMap<String, AppliedLure>,
}

/// Why a lure could not be applied or removed.
#[derive(Debug, thiserror::Error)]
pub enum LureError {
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error("invalid lure spec: {0}")]
    Spec(String),
    #[error("no home directories under {0} for a ~/ path")]
    NoHomes(String),
    #[error("the planted block in {path} was changed: {reason}")]
    Block { path: String, reason: String },
    #[error("cannot save the lure state {path}: {reason}")]
    State { path: String, reason: String },
}

/// What happened to one resource of an update.
#[derive(Debug)]
pub struct Outcome {
    pub id: String,
    pub revision: u64,
    pub result: Result<(), LureError>,
}

/// A lure found not as it was planted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drift {
    pub lure_id: String,
    pub path: PathBuf,
    pub what: DriftKind,
    /// Whether the agent put it back.
    pub repaired: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriftKind {
    Deleted,
    Modified,
}

/// The engine. Owns the lure state of one agent.
#[derive(Debug)]
pub struct LureEngine {
    root: PathBuf,
    homes: HomeDirs,
    state_path: PathBuf,
    state: StateFile,
    /// Where the engine records the paths it touches, so its own work never
    /// raises events.
    activity: Arc<SelfActivity>,
}

impl LureEngine {
    /// Opens the engine for `root`, loading the state kept in `state_dir`.
    pub fn open(root: &Path, homes: HomeDirs, state_dir: &Path) -> Result<Self, LureError> {
        let root = std::fs::canonicalize(root).map_err(|e| LureError::Fs(fs::io(root)(e)))?;
        let state_path = state_dir.join(STATE_FILE);
        let state = match std::fs::read(&state_path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| LureError::State {
                path: state_path.display().to_string(),
                reason: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => StateFile::default(),
            Err(e) => return Err(LureError::Fs(fs::io(&state_path)(e))),
        };
        Ok(LureEngine {
            root,
            homes,
            state_path,
            state,
            activity: Arc::new(SelfActivity::default()),
        })
    }

    /// The record of paths this engine touches (shared with the detector).
    pub fn activity(&self) -> Arc<SelfActivity> {
        self.activity.clone()
    }

    fn touch_all(&self, lure: &AppliedLure) {
        for f in &lure.files {
            self.activity.touch(f.path());
        }
        for d in &lure.created_dirs {
            self.activity.touch(d);
        }
    }

    /// What the detector should watch: every planted file, and the allow
    /// rules.
    pub fn watched(&self) -> Watched {
        let mut files = HashMap::new();
        let mut rules = Vec::new();
        for (id, lure) in &self.state.lures {
            if lure.kind == ALLOW_RULES {
                if let Ok(r) = pb::AllowRules::decode(lure.spec.as_slice()) {
                    rules = r.rules;
                }
                continue;
            }
            for f in &lure.files {
                files.insert(
                    f.path().to_path_buf(),
                    LureRef {
                        id: id.clone(),
                        revision: lure.revision,
                        template: lure.template.clone(),
                    },
                );
            }
        }
        Watched { files, rules }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Applied lures and their revisions, for the session's Hello.
    pub fn applied(&self) -> BTreeMap<String, u64> {
        self.state
            .lures
            .iter()
            .map(|(id, l)| (id.clone(), l.revision))
            .collect()
    }

    pub fn lures(&self) -> &BTreeMap<String, AppliedLure> {
        &self.state.lures
    }

    fn save(&self) -> Result<(), LureError> {
        // Streamed: a thousand lures are megabytes of JSON, which as one
        // buffer would stay in the allocator after the save.
        ruse_pki::write_private_file_with(&self.state_path, |w| {
            serde_json::to_writer_pretty(w, &self.state).map_err(std::io::Error::other)
        })
        .map_err(|e| LureError::State {
            path: self.state_path.display().to_string(),
            reason: e.to_string(),
        })
    }

    /// Applies an update: removals first, then changed resources. Every
    /// resource gets an outcome; the state is saved once at the end.
    pub fn apply(&mut self, removed: &[String], resources: &[pb::Resource]) -> Vec<Outcome> {
        let mut outcomes = Vec::new();
        for id in removed {
            let revision = self.state.lures.get(id).map_or(0, |l| l.revision);
            let result = self.remove(id);
            outcomes.push(Outcome {
                id: id.clone(),
                revision,
                result,
            });
        }
        for resource in resources {
            let result = if resource.kind == LURE {
                self.apply_one(resource)
            } else if resource.kind == ALLOW_RULES {
                self.apply_rules(resource)
            } else {
                Err(LureError::Spec(format!(
                    "resource kind {:?} is not supported by this agent",
                    resource.kind
                )))
            };
            outcomes.push(Outcome {
                id: resource.id.clone(),
                revision: resource.revision,
                result,
            });
        }
        if let Err(e) = self.save() {
            for outcome in &mut outcomes {
                if outcome.result.is_ok() {
                    outcome.result = Err(LureError::State {
                        path: self.state_path.display().to_string(),
                        reason: e.to_string(),
                    });
                }
            }
        }
        outcomes
    }

    fn apply_rules(&mut self, resource: &pb::Resource) -> Result<(), LureError> {
        pb::AllowRules::decode(resource.body.as_slice())
            .map_err(|e| LureError::Spec(e.to_string()))?;
        self.state.lures.insert(
            resource.id.clone(),
            AppliedLure {
                revision: resource.revision,
                kind: ALLOW_RULES.into(),
                template: String::new(),
                files: Vec::new(),
                created_dirs: Vec::new(),
                spec: resource.body.clone(),
            },
        );
        Ok(())
    }

    fn apply_one(&mut self, resource: &pb::Resource) -> Result<(), LureError> {
        if let Some(existing) = self.state.lures.get(&resource.id) {
            if existing.revision == resource.revision && existing.spec == resource.body {
                return Ok(());
            }
            self.remove(&resource.id)?;
        }
        let spec = pb::LureSpec::decode(resource.body.as_slice())
            .map_err(|e| LureError::Spec(e.to_string()))?;
        let applied = self.plant(&spec, &resource.body, resource.revision)?;
        self.state.lures.insert(resource.id.clone(), applied);
        Ok(())
    }

    /// Where a spec path lands: one target per home for `~/…`.
    fn targets(&self, path: &str) -> Result<Vec<(PathBuf, PathBuf, Option<Owner>)>, LureError> {
        if let Some(rest) = path.strip_prefix("~/") {
            let homes = self.homes.discover(&self.root);
            if homes.is_empty() {
                return Err(LureError::NoHomes(self.root.display().to_string()));
            }
            homes
                .into_iter()
                .map(|home| {
                    let target = fs::confined_join(&home.path, rest)?;
                    Ok((home.path, target, Some(home.owner)))
                })
                .collect()
        } else if path.starts_with('/') {
            Ok(vec![(
                self.root.clone(),
                fs::confined_join(&self.root, path)?,
                None,
            )])
        } else {
            Err(LureError::Spec(format!(
                "path {path:?} is neither absolute nor ~/"
            )))
        }
    }

    /// Plants every file of a spec; on any failure, undoes what it planted.
    fn plant(
        &self,
        spec: &pb::LureSpec,
        body: &[u8],
        revision: u64,
    ) -> Result<AppliedLure, LureError> {
        let mut applied = AppliedLure {
            revision,
            kind: LURE.into(),
            template: spec.template.clone(),
            files: Vec::new(),
            created_dirs: Vec::new(),
            spec: body.to_vec(),
        };
        let result = (|| {
            for file in &spec.files {
                for (base, target, owner) in self.targets(&file.path)? {
                    self.activity.touch(&target);
                    fs::check_no_symlinks(&self.root, &target)?;
                    fs::check_no_symlinks(&base, &target)?;
                    let planted =
                        plant_file(&self.root, &target, file, owner, &mut applied.created_dirs)?;
                    applied.files.push(planted);
                }
            }
            Ok(())
        })();
        self.touch_all(&applied);
        match result {
            Ok(()) => Ok(applied),
            Err(e) => {
                undo(&applied);
                Err(e)
            }
        }
    }

    /// Removes a lure, restoring every file it touched.
    pub fn remove(&mut self, id: &str) -> Result<(), LureError> {
        let Some(lure) = self.state.lures.get(id) else {
            return Ok(());
        };
        self.touch_all(lure);
        let mut first_error = None;
        for planted in lure.files.iter().rev() {
            if let Err(e) = unplant(planted)
                && first_error.is_none()
            {
                first_error = Some(e);
            }
        }
        remove_dirs(&lure.created_dirs);
        self.touch_all(lure);
        match first_error {
            // Keep the record of a lure we could not fully remove.
            Some(e) => Err(e),
            None => {
                self.state.lures.remove(id);
                Ok(())
            }
        }
    }

    /// Checks every planted file; puts back what was deleted or changed.
    pub fn verify_and_repair(&mut self) -> Vec<Drift> {
        let mut drifts = Vec::new();
        let ids: Vec<String> = self.state.lures.keys().cloned().collect();
        for id in ids {
            let Some(lure) = self.state.lures.get(&id).cloned() else {
                continue;
            };
            self.touch_all(&lure);
            let mut found = Vec::new();
            for planted in &lure.files {
                if let Some(kind) = check(planted) {
                    found.push((planted.path().to_path_buf(), kind));
                }
            }
            if found.is_empty() {
                continue;
            }
            // Replant the whole lure from its spec: remove what is left of
            // it, then plant again.
            let repaired = self.replant(&id, &lure).is_ok();
            drifts.extend(found.into_iter().map(|(path, what)| Drift {
                lure_id: id.clone(),
                path,
                what,
                repaired,
            }));
        }
        if !drifts.is_empty() {
            let _ = self.save();
        }
        drifts
    }

    fn replant(&mut self, id: &str, lure: &AppliedLure) -> Result<(), LureError> {
        for planted in &lure.files {
            match planted {
                // A changed whole-file lure is ours: take it out of the way.
                Planted::Whole { path, .. } => {
                    if std::fs::symlink_metadata(path).is_ok_and(|m| m.is_file()) {
                        std::fs::remove_file(path).map_err(|e| LureError::Fs(fs::io(path)(e)))?;
                    }
                }
                Planted::Block { .. } => {
                    let _ = unplant(planted);
                }
            }
        }
        let spec = pb::LureSpec::decode(lure.spec.as_slice())
            .map_err(|e| LureError::Spec(e.to_string()))?;
        let fresh = self.plant(&spec, &lure.spec, lure.revision)?;
        let mut fresh = fresh;
        // Keep the directories created the first time.
        for dir in &lure.created_dirs {
            if !fresh.created_dirs.contains(dir) {
                fresh.created_dirs.push(dir.clone());
            }
        }
        fresh.created_dirs.sort_by_key(|d| d.components().count());
        self.state.lures.insert(id.to_owned(), fresh);
        Ok(())
    }

    /// Removes every lure; returns the ids that could not be removed
    /// completely, with why.
    pub fn uninstall(&mut self) -> Vec<(String, LureError)> {
        let ids: Vec<String> = self.state.lures.keys().cloned().collect();
        let mut failures = Vec::new();
        for id in ids {
            if let Err(e) = self.remove(&id) {
                failures.push((id, e));
            }
        }
        if let Err(e) = self.save() {
            failures.push(("state".into(), e));
        }
        failures
    }
}

/// Keeps a directory's modification time across changes inside it, so a
/// lure does not show up as "modified today" in a listing.
struct KeepDirTime(Option<(PathBuf, std::time::SystemTime)>);

impl KeepDirTime {
    /// Remembers the time of the nearest existing directory above `target`.
    fn above(target: &Path) -> Self {
        let found = target.ancestors().skip(1).find_map(|dir| {
            let meta = std::fs::symlink_metadata(dir).ok()?;
            if !meta.is_dir() {
                return None;
            }
            Some((dir.to_path_buf(), meta.modified().ok()?))
        });
        KeepDirTime(found)
    }
}

impl Drop for KeepDirTime {
    fn drop(&mut self) {
        if let Some((dir, time)) = self.0.take() {
            let _ = fs::set_mtime(&dir, time);
        }
    }
}

fn plant_file(
    root: &Path,
    target: &Path,
    file: &pb::PlantFile,
    owner: Option<Owner>,
    created_dirs: &mut Vec<PathBuf>,
) -> Result<Planted, LureError> {
    let mtime = fs::system_time(file.mtime_ms);
    let perms = if file.permissions == 0 {
        0o644
    } else {
        file.permissions & 0o777
    };
    let owner = owner.or_else(|| parent_owner(target));
    let _keep = KeepDirTime::above(target);
    let created = fs::create_parents(root, target, owner, mtime)?;
    let planted = plant_content(target, file, perms, owner, mtime);
    // Directories made for the lure look as old as it, innermost first
    // (each entry added inside changed its time).
    if let Some(t) = mtime {
        for dir in created.iter().rev() {
            let _ = fs::set_mtime(dir, t);
        }
    }
    created_dirs.extend(created);
    planted
}

fn plant_content(
    target: &Path,
    file: &pb::PlantFile,
    perms: u32,
    owner: Option<Owner>,
    mtime: Option<std::time::SystemTime>,
) -> Result<Planted, LureError> {
    match file.mode() {
        pb::PlantMode::WholeFile => {
            fs::create_new(target, &file.content, perms, owner, mtime)?;
            Ok(Planted::Whole {
                path: target.to_path_buf(),
                sha256: fs::sha256_hex(&file.content),
            })
        }
        pb::PlantMode::Block => {
            let text = std::str::from_utf8(&file.content).map_err(|_| {
                LureError::Spec(format!("block for {} is not UTF-8 text", file.path))
            })?;
            match std::fs::symlink_metadata(target) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    let (content, inserted) = block::insert(b"", text);
                    fs::create_new(target, &content, perms, owner, mtime)?;
                    Ok(Planted::Block {
                        path: target.to_path_buf(),
                        inserted,
                        created: true,
                    })
                }
                Err(e) => Err(LureError::Fs(fs::io(target)(e))),
                Ok(_) => {
                    let (existing, seen) = fs::read_regular(target)?;
                    let (content, inserted) = block::insert(&existing, text);
                    fs::replace_content(target, &content, &seen)?;
                    Ok(Planted::Block {
                        path: target.to_path_buf(),
                        inserted,
                        created: false,
                    })
                }
            }
        }
        pb::PlantMode::Unspecified => {
            Err(LureError::Spec(format!("no plant mode for {}", file.path)))
        }
    }
}

/// The owner of the nearest existing ancestor (for absolute paths: files
/// created in /etc belong to whoever owns /etc).
fn parent_owner(target: &Path) -> Option<Owner> {
    use std::os::unix::fs::MetadataExt;
    target.ancestors().skip(1).find_map(|dir| {
        std::fs::metadata(dir).ok().map(|m| Owner {
            uid: m.uid(),
            gid: m.gid(),
        })
    })
}

/// What is wrong with a planted file, if anything.
fn check(planted: &Planted) -> Option<DriftKind> {
    match planted {
        Planted::Whole { path, sha256 } => match std::fs::read(path) {
            Err(_) => Some(DriftKind::Deleted),
            Ok(bytes) if fs::sha256_hex(&bytes) != *sha256 => Some(DriftKind::Modified),
            Ok(_) => None,
        },
        Planted::Block { path, inserted, .. } => match fs::read_regular(path) {
            Err(_) => Some(DriftKind::Deleted),
            Ok((bytes, _)) => block::locate(&bytes, inserted)
                .err()
                .map(|_| DriftKind::Modified),
        },
    }
}

/// Takes one planted file out again.
fn unplant(planted: &Planted) -> Result<(), LureError> {
    let _keep = KeepDirTime::above(planted.path());
    match planted {
        Planted::Whole { path, sha256 } => match std::fs::read(path) {
            Ok(bytes) if fs::sha256_hex(&bytes) == *sha256 => {
                std::fs::remove_file(path).map_err(|e| LureError::Fs(fs::io(path)(e)))
            }
            // Changed by someone: not ours to delete any more.
            Ok(_) => Err(LureError::Block {
                path: path.display().to_string(),
                reason: "the file was modified after it was planted; left in place".into(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(LureError::Fs(fs::io(path)(e))),
        },
        Planted::Block {
            path,
            inserted,
            created,
        } => {
            let (current, seen) = match fs::read_regular(path) {
                Ok(v) => v,
                Err(FsError::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound =>
                {
                    return Ok(());
                }
                Err(e) => return Err(e.into()),
            };
            let restored = block::remove(&current, inserted).map_err(|e| LureError::Block {
                path: path.display().to_string(),
                reason: e.to_string(),
            })?;
            if *created && restored.is_empty() {
                std::fs::remove_file(path).map_err(|e| LureError::Fs(fs::io(path)(e)))
            } else {
                fs::replace_content(path, &restored, &seen).map_err(LureError::from)
            }
        }
    }
}

/// Removes directories made for a lure, keeping the times of the
/// directories they were in.
fn remove_dirs(dirs: &[PathBuf]) {
    let _keep: Vec<KeepDirTime> = dirs.iter().map(|d| KeepDirTime::above(d)).collect();
    fs::remove_created_dirs(dirs);
}

/// Best-effort removal of a partly planted lure.
fn undo(applied: &AppliedLure) {
    for planted in applied.files.iter().rev() {
        let _ = unplant(planted);
    }
    remove_dirs(&applied.created_dirs);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn file(path: &str, content: &str, mode: pb::PlantMode, perms: u32) -> pb::PlantFile {
        pb::PlantFile {
            path: path.into(),
            content: content.as_bytes().to_vec(),
            mode: mode.into(),
            permissions: perms,
            mtime_ms: 1_700_000_000_000,
        }
    }

    fn resource(id: &str, revision: u64, files: Vec<pb::PlantFile>) -> pb::Resource {
        pb::Resource {
            id: id.into(),
            revision,
            kind: "lure".into(),
            body: pb::LureSpec {
                template: "test".into(),
                files,
            }
            .encode_to_vec(),
        }
    }

    struct Fixture {
        _dir: tempfile::TempDir,
        root: PathBuf,
        state: PathBuf,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let state = dir.path().join("state");
        std::fs::create_dir_all(root.join("home/alice/.ssh")).unwrap();
        std::fs::create_dir_all(root.join("home/bob")).unwrap();
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::create_dir_all(&state).unwrap();
        Fixture {
            root: std::fs::canonicalize(&root).unwrap(),
            state,
            _dir: dir,
        }
    }

    fn engine(f: &Fixture) -> LureEngine {
        LureEngine::open(&f.root, HomeDirs::default(), &f.state).unwrap()
    }

    fn snapshot(root: &Path) -> BTreeMap<PathBuf, (Vec<u8>, u32)> {
        let mut out = BTreeMap::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).unwrap().flatten() {
                let meta = entry.metadata().unwrap();
                let path = entry.path();
                let mode = meta.permissions().mode();
                if meta.is_dir() {
                    out.insert(path.clone(), (Vec::new(), mode));
                    stack.push(path);
                } else {
                    out.insert(path.clone(), (std::fs::read(&path).unwrap(), mode));
                }
            }
        }
        out
    }

    #[test]
    fn plants_in_every_home_and_uninstall_restores_everything_exactly() {
        let f = fixture();
        let ssh_config = f.root.join("home/alice/.ssh/config");
        std::fs::write(&ssh_config, "Host real\n  HostName 10.1.1.1").unwrap();
        std::fs::set_permissions(&ssh_config, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(f.root.join("etc/hosts"), "127.0.0.1 localhost\n").unwrap();
        let before = snapshot(&f.root);

        let mut e = engine(&f);
        let outcomes = e.apply(
            &[],
            &[
                resource(
                    "ssh",
                    1,
                    vec![
                        file(
                            "~/.ssh/id_pacs",
                            "PRIVATE KEY",
                            pb::PlantMode::WholeFile,
                            0o600,
                        ),
                        file(
                            "~/.ssh/config",
                            "Host pacs\n  User svc_7f3k\n",
                            pb::PlantMode::Block,
                            0o600,
                        ),
                    ],
                ),
                resource(
                    "hosts",
                    1,
                    vec![file(
                        "/etc/hosts",
                        "10.9.9.9 pacs-archive02\n",
                        pb::PlantMode::Block,
                        0o644,
                    )],
                ),
            ],
        );
        assert!(outcomes.iter().all(|o| o.result.is_ok()), "{outcomes:?}");
        let alice_config = std::fs::read_to_string(&ssh_config).unwrap();
        assert_eq!(
            alice_config,
            "Host real\n  HostName 10.1.1.1\nHost pacs\n  User svc_7f3k\n"
        );
        assert_eq!(
            std::fs::metadata(&ssh_config).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            std::fs::read_to_string(f.root.join("home/bob/.ssh/config")).unwrap(),
            "Host pacs\n  User svc_7f3k\n",
            "a new file in a home without one"
        );
        let key = f.root.join("home/bob/.ssh/id_pacs");
        assert_eq!(
            std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            std::fs::metadata(f.root.join("home/bob/.ssh"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o700
        );
        let mtime = std::fs::metadata(&key).unwrap().modified().unwrap();
        assert_eq!(
            mtime,
            fs::system_time(1_700_000_000_000).unwrap(),
            "backdated"
        );
        assert_eq!(
            e.applied(),
            BTreeMap::from([("hosts".into(), 1), ("ssh".into(), 1)])
        );

        // A fresh engine (agent restart) sees the same state and removes it all.
        drop(e);
        let mut e = engine(&f);
        assert!(e.uninstall().is_empty());
        assert_eq!(
            snapshot(&f.root),
            before,
            "uninstall restores the tree byte for byte"
        );
        assert!(e.applied().is_empty());
    }

    #[test]
    fn a_whole_file_lure_never_replaces_a_real_file_and_partial_plants_are_undone() {
        let f = fixture();
        let real = f.root.join("home/bob/passwords.xlsx");
        std::fs::write(&real, b"the real spreadsheet").unwrap();
        let before = snapshot(&f.root);
        let mut e = engine(&f);
        let outcomes = e.apply(
            &[],
            &[resource(
                "xlsx",
                3,
                vec![
                    file(
                        "~/Documents/notes.txt",
                        "lure",
                        pb::PlantMode::WholeFile,
                        0o644,
                    ),
                    file("~/passwords.xlsx", "lure", pb::PlantMode::WholeFile, 0o644),
                ],
            )],
        );
        let err = outcomes[0].result.as_ref().unwrap_err().to_string();
        assert!(err.contains("already exists"), "{err}");
        assert_eq!(std::fs::read(&real).unwrap(), b"the real spreadsheet");
        assert_eq!(
            snapshot(&f.root),
            before,
            "nothing of the failed lure is left"
        );
        assert!(e.applied().is_empty());
    }

    #[test]
    fn reapplying_the_same_revision_touches_nothing() {
        let f = fixture();
        let mut e = engine(&f);
        let r = resource(
            "aws",
            5,
            vec![file(
                "~/.aws/credentials",
                "[x]\nk = v\n",
                pb::PlantMode::Block,
                0o600,
            )],
        );
        assert!(e.apply(&[], std::slice::from_ref(&r))[0].result.is_ok());
        let path = f.root.join("home/alice/.aws/credentials");
        let inode = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&path).unwrap());
        assert!(e.apply(&[], &[r])[0].result.is_ok());
        assert_eq!(
            std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&path).unwrap()),
            inode,
            "not rewritten"
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "[x]\nk = v\n");
        // A new revision replaces it.
        let r2 = resource(
            "aws",
            6,
            vec![file(
                "~/.aws/credentials",
                "[y]\nk = w\n",
                pb::PlantMode::Block,
                0o600,
            )],
        );
        assert!(e.apply(&[], &[r2])[0].result.is_ok());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "[y]\nk = w\n");
        // Removal.
        assert!(e.apply(&["aws".into()], &[])[0].result.is_ok());
        assert!(!path.exists());
        assert!(!f.root.join("home/alice/.aws").exists());
    }

    #[test]
    fn drift_is_detected_and_repaired() {
        let f = fixture();
        let mut e = engine(&f);
        let r = resource(
            "mixed",
            1,
            vec![
                file(
                    "~/Documents/patients.csv",
                    "mrn,name\n1,A\n",
                    pb::PlantMode::WholeFile,
                    0o644,
                ),
                file("/etc/hosts", "10.9.9.9 pacs\n", pb::PlantMode::Block, 0o644),
            ],
        );
        assert!(e.apply(&[], &[r])[0].result.is_ok());
        assert!(e.verify_and_repair().is_empty());
        let csv = f.root.join("home/alice/Documents/patients.csv");
        std::fs::remove_file(&csv).unwrap();
        std::fs::write(f.root.join("etc/hosts"), "127.0.0.1 localhost\n").unwrap();
        let drifts = e.verify_and_repair();
        assert_eq!(drifts.len(), 2, "{drifts:?}");
        assert!(drifts.iter().all(|d| d.repaired));
        assert!(
            drifts
                .iter()
                .any(|d| d.path == csv && d.what == DriftKind::Deleted)
        );
        assert_eq!(std::fs::read_to_string(&csv).unwrap(), "mrn,name\n1,A\n");
        assert_eq!(
            std::fs::read_to_string(f.root.join("etc/hosts")).unwrap(),
            "127.0.0.1 localhost\n10.9.9.9 pacs\n"
        );
        assert!(e.verify_and_repair().is_empty());
        assert!(e.uninstall().is_empty());
        assert_eq!(
            std::fs::read_to_string(f.root.join("etc/hosts")).unwrap(),
            "127.0.0.1 localhost\n"
        );
    }

    #[test]
    fn a_block_keeps_the_files_owner_and_mode() {
        use std::os::unix::fs::MetadataExt;
        let f = fixture();
        let path = f.root.join("home/alice/.pgpass");
        std::fs::write(&path, "db:5432:app:alice:secret\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        // As root (CI), give the file to another user; otherwise it stays ours.
        let (uid, gid) = if nix::unistd::geteuid().is_root() {
            (1234, 5678)
        } else {
            let m = std::fs::metadata(&path).unwrap();
            (m.uid(), m.gid())
        };
        std::os::unix::fs::chown(&path, Some(uid), Some(gid)).unwrap();
        let mut e = engine(&f);
        let r = resource(
            "pg",
            1,
            vec![file(
                "~/.pgpass",
                "pacs:5432:pacs:svc:pw\n",
                pb::PlantMode::Block,
                0o644,
            )],
        );
        assert!(e.apply(&[], &[r])[0].result.is_ok());
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(
            (meta.uid(), meta.gid(), meta.mode() & 0o777),
            (uid, gid, 0o600)
        );
        assert!(e.uninstall().is_empty());
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(
            (meta.uid(), meta.gid(), meta.mode() & 0o777),
            (uid, gid, 0o600)
        );
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "db:5432:app:alice:secret\n"
        );
    }

    #[test]
    fn listings_do_not_give_lures_away() {
        let f = fixture();
        let home = f.root.join("home/bob");
        let old = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_600_000_000);
        fs::set_mtime(&home, old).unwrap();
        let mut e = engine(&f);
        let r = resource(
            "aws",
            1,
            vec![file(
                "~/.aws/credentials",
                "[x]\nk = v\n",
                pb::PlantMode::Block,
                0o600,
            )],
        );
        assert!(e.apply(&[], &[r])[0].result.is_ok());
        let mtime = |p: &Path| std::fs::metadata(p).unwrap().modified().unwrap();
        assert_eq!(mtime(&home), old, "the home directory keeps its time");
        assert_eq!(
            mtime(&home.join(".aws")),
            fs::system_time(1_700_000_000_000).unwrap(),
            "a directory made for the lure is as old as the lure"
        );
        assert!(e.uninstall().is_empty());
        assert_eq!(mtime(&home), old, "and keeps it after removal");
    }

    #[test]
    fn refuses_paths_that_escape_and_unknown_kinds() {
        let f = fixture();
        let mut e = engine(&f);
        std::os::unix::fs::symlink("/etc", f.root.join("home/alice/link")).unwrap();
        let outcomes = e.apply(
            &[],
            &[
                resource(
                    "up",
                    1,
                    vec![file("/../../etc/x", "x", pb::PlantMode::WholeFile, 0)],
                ),
                resource(
                    "link",
                    1,
                    vec![file("~/link/evil", "x", pb::PlantMode::WholeFile, 0)],
                ),
                resource(
                    "rel",
                    1,
                    vec![file("relative/x", "x", pb::PlantMode::WholeFile, 0)],
                ),
                pb::Resource {
                    id: "d".into(),
                    revision: 1,
                    kind: "decoy".into(),
                    body: Vec::new(),
                },
            ],
        );
        assert!(outcomes.iter().all(|o| o.result.is_err()), "{outcomes:?}");
        assert!(!Path::new("/etc/evil").exists());
        assert!(e.applied().is_empty());
    }
}

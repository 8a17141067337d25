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
//! - **A crash never leaves a lure half-planted.** Each file is written
//!   whole (a temporary file moved into place), and every directory and
//!   file is announced in the planting journal before it is made; at the
//!   next start what the saved state does not record is undone
//!   ([`journal`]).

pub mod block;
pub mod fs;
pub(crate) mod homes;
mod journal;
mod plant;
pub mod registry;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use ruse_proto::spec::{LureSpec, Resource, decode_allow_rules};

use self::block::Inserted;
use self::fs::{Dir, FsError, Owner};
pub use self::homes::HomeDirs;
use self::journal::{Intent, Journal};
use self::plant::{Intents, check, plant_file, remove_dirs, undo, unplant};
use self::registry::PlantedKey;
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
        /// Programs whose reads of the file are its ordinary use.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        readers: Vec<String>,
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
    /// Registry keys created for this lure (Windows).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<PlantedKey>,
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
    /// Directories the agent made for a lure that were not empty when that
    /// lure went (another lure, rotated in, had files there): removed once
    /// empty, at the latest by `uninstall`.
    #[serde(default, skip_serializing_if = "std::collections::BTreeSet::is_empty")]
    leftover_dirs: std::collections::BTreeSet<PathBuf>,
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
    #[error("{key}: {reason}")]
    Registry { key: String, reason: String },
    #[error("cannot save the lure state {path}: {reason}")]
    State { path: String, reason: String },
    #[error(
        "{path}: already planted there by lure {other} ({template}) of another campaign; give one of the two another path or file name"
    )]
    TakenByLure {
        path: String,
        other: String,
        template: String,
    },
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
    /// The root, open: every file operation starts from this handle.
    root: Dir,
    homes: HomeDirs,
    state_path: PathBuf,
    state: StateFile,
    /// Where the engine records the paths it touches, so its own work never
    /// raises events.
    activity: Arc<SelfActivity>,
    /// What is being planted since the last save.
    journal: Mutex<Journal>,
}

impl LureEngine {
    /// Opens the engine for `root`, loading the state kept in `state_dir`.
    pub fn open(root: &Path, homes: HomeDirs, state_dir: &Path) -> Result<Self, LureError> {
        let root = fs::canonical(root)?;
        let root = Dir::open_root(&root)?;
        let state_path = state_dir.join(STATE_FILE);
        let state = match std::fs::read(&state_path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| LureError::State {
                path: state_path.display().to_string(),
                reason: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => StateFile::default(),
            Err(e) => return Err(LureError::Fs(fs::io(&state_path)(e))),
        };
        let (journal, unfinished) = Journal::open(state_dir)?;
        let engine = LureEngine {
            root,
            homes,
            state_path,
            state,
            activity: Arc::new(SelfActivity::default()),
            journal: Mutex::new(journal),
        };
        engine.recover(&unfinished);
        engine.journal().clear()?;
        Ok(engine)
    }

    fn journal(&self) -> std::sync::MutexGuard<'_, Journal> {
        self.journal
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Undoes what a run that ended mid-update planted without saving it
    /// (see [`journal`]), newest first, and deletes temporary files it
    /// left. What the saved state records stays.
    fn recover(&self, unfinished: &[Intent]) {
        if unfinished.is_empty() {
            return;
        }
        let recorded = |lure: &str, revision: u64, has: &dyn Fn(&AppliedLure) -> bool| {
            self.state
                .lures
                .get(lure)
                .is_some_and(|l| l.revision == revision && has(l))
        };
        let (mut undone, mut temps) = (0, 0);
        for intent in unfinished.iter().rev() {
            match intent {
                Intent::File {
                    lure,
                    revision,
                    planted,
                } => {
                    self.activity.touch(planted.path());
                    temps += fs::remove_temps(&self.root, planted.path());
                    if recorded(lure, *revision, &|l| l.files.contains(planted)) {
                        continue;
                    }
                    match unplant(&self.root, planted) {
                        Ok(()) => undone += 1,
                        Err(e) => tracing::warn!(
                            path = %planted.path().display(),
                            error = %e,
                            "an unfinished lure file could not be undone"
                        ),
                    }
                }
                Intent::Dir {
                    lure,
                    revision,
                    path,
                } => {
                    if !recorded(lure, *revision, &|l| l.created_dirs.contains(path)) {
                        remove_dirs(&self.root, std::slice::from_ref(path));
                    }
                }
                Intent::Key {
                    lure,
                    revision,
                    planted,
                } => {
                    if recorded(lure, *revision, &|l| l.keys.contains(planted)) {
                        continue;
                    }
                    match registry::unplant(planted) {
                        Ok(()) => undone += 1,
                        Err(e) => tracing::warn!(
                            key = %planted.display(),
                            error = %e,
                            "an unfinished registry lure could not be undone"
                        ),
                    }
                }
            }
        }
        tracing::info!(
            steps = unfinished.len(),
            files_undone = undone,
            temporary_files = temps,
            "undid the planting an earlier run left unfinished"
        );
    }

    /// The record of paths this engine touches (shared with the detector).
    pub fn activity(&self) -> Arc<SelfActivity> {
        self.activity.clone()
    }

    /// Marks every file and directory of `lure` as read by the agent
    /// (verifying).
    fn read_all(&self, lure: &AppliedLure) {
        self.mark_all(lure, SelfActivity::read);
    }

    /// Marks every file and directory of `lure` as changed by the agent.
    fn touch_all(&self, lure: &AppliedLure) {
        self.mark_all(lure, SelfActivity::touch);
    }

    fn mark_all(&self, lure: &AppliedLure, mark: fn(&SelfActivity, &Path)) {
        let paths = lure.files.iter().map(Planted::path);
        for path in paths.chain(lure.created_dirs.iter().map(PathBuf::as_path)) {
            mark(&self.activity, path);
        }
    }

    /// What the detector should watch: every planted file and registry
    /// key, and the allow rules.
    pub fn watched(&self) -> Watched {
        let mut files = HashMap::new();
        let mut rules = Vec::new();
        for (id, lure) in &self.state.lures {
            if lure.kind == ALLOW_RULES {
                if let Ok(r) = decode_allow_rules(lure.spec.as_slice()) {
                    rules = r;
                }
                continue;
            }
            let lure_ref = |ordinary| LureRef {
                id: id.clone(),
                revision: lure.revision,
                template: lure.template.clone(),
                ordinary,
            };
            for f in &lure.files {
                let ordinary = match f {
                    Planted::Block { readers, .. } => readers.as_slice().into(),
                    Planted::Whole { .. } => Arc::default(),
                };
                files.insert(f.path().to_path_buf(), lure_ref(ordinary));
            }
            // Registry lures by their `HKEY_USERS\…` names: read auditing
            // reports them (Windows).
            for k in &lure.keys {
                files.insert(PathBuf::from(k.display()), lure_ref(Arc::default()));
            }
        }
        Watched { files, rules }
    }

    pub fn root(&self) -> &Path {
        self.root.path()
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

    /// Saves the state; the journal is emptied once it is on disk.
    fn save(&self) -> Result<(), LureError> {
        // Streamed: a thousand lures are megabytes of JSON, which as one
        // buffer would stay in the allocator after the save.
        ruse_pki::write_private_file_with(&self.state_path, |w| {
            serde_json::to_writer_pretty(w, &self.state).map_err(std::io::Error::other)
        })
        .map_err(|e| LureError::State {
            path: self.state_path.display().to_string(),
            reason: e.to_string(),
        })?;
        self.journal().clear()
    }

    /// Applies an update: removals first, then changed resources. Every
    /// resource gets an outcome; the state is saved once at the end.
    pub fn apply(&mut self, removed: &[String], resources: &[Resource]) -> Vec<Outcome> {
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

    fn apply_rules(&mut self, resource: &Resource) -> Result<(), LureError> {
        decode_allow_rules(resource.body.as_slice()).map_err(|e| LureError::Spec(e.to_string()))?;
        self.state.lures.insert(
            resource.id.clone(),
            AppliedLure {
                revision: resource.revision,
                kind: ALLOW_RULES.into(),
                template: String::new(),
                files: Vec::new(),
                created_dirs: Vec::new(),
                keys: Vec::new(),
                spec: resource.body.clone(),
            },
        );
        Ok(())
    }

    fn apply_one(&mut self, resource: &Resource) -> Result<(), LureError> {
        if let Some(existing) = self.state.lures.get(&resource.id) {
            if existing.revision == resource.revision && existing.spec == resource.body {
                return Ok(());
            }
            self.remove(&resource.id)?;
        }
        let spec = LureSpec::decode(resource.body.as_slice())
            .map_err(|e| LureError::Spec(e.to_string()))?;
        let applied = self.plant(&resource.id, &spec, &resource.body, resource.revision)?;
        self.state.lures.insert(resource.id.clone(), applied);
        Ok(())
    }

    /// Where a spec path lands: one target per home for `~/…`.
    fn targets(&self, path: &str) -> Result<Vec<(PathBuf, Option<Owner>)>, LureError> {
        if let Some(rest) = path.strip_prefix("~/") {
            let homes = self.homes.discover(self.root.path());
            if homes.is_empty() {
                return Err(LureError::NoHomes(self.root.path().display().to_string()));
            }
            homes
                .into_iter()
                .map(|home| {
                    let target = fs::confined_join(&home.path, rest)?;
                    Ok((target, Some(home.owner)))
                })
                .collect()
        } else if path.starts_with('/') {
            Ok(vec![(fs::confined_join(self.root.path(), path)?, None)])
        } else {
            Err(LureError::Spec(format!(
                "path {path:?} is neither absolute nor ~/"
            )))
        }
    }

    /// Plants every file of a spec; on any failure, undoes what it planted.
    /// A `~/` file that cannot go into one home (a link on its way, a real
    /// file at its name) skips that home with a warning, so one user's home
    /// cannot keep the lure from the others; it fails the lure only when no
    /// home takes it.
    fn plant(
        &self,
        id: &str,
        spec: &LureSpec,
        body: &[u8],
        revision: u64,
    ) -> Result<AppliedLure, LureError> {
        let journal = Intents {
            engine: self,
            lure: id,
            revision,
        };
        let mut applied = AppliedLure {
            revision,
            kind: LURE.into(),
            template: spec.template.clone(),
            files: Vec::new(),
            created_dirs: Vec::new(),
            keys: Vec::new(),
            spec: body.to_vec(),
        };
        let result = (|| {
            for file in &spec.files {
                let per_home = file.path.starts_with("~/");
                let mut refused = None;
                let mut planted_any = false;
                for (target, owner) in self.targets(&file.path)? {
                    self.activity.touch(&target);
                    let planted = plant_file(
                        &self.root,
                        &target,
                        file,
                        owner,
                        &mut applied.created_dirs,
                        &journal,
                    )
                    .map_err(|e| self.name_the_owner(e, &target, id));
                    match planted {
                        Ok(planted) => {
                            applied.files.push(planted);
                            planted_any = true;
                        }
                        Err(e) if per_home => {
                            tracing::warn!(template = %spec.template, error = %e, "lure file left out of one home");
                            refused.get_or_insert(e);
                        }
                        Err(e) => return Err(e),
                    }
                }
                if let (false, Some(e)) = (planted_any, refused) {
                    return Err(e);
                }
            }
            self.plant_keys(spec, &journal, &mut applied.keys)
        })();
        self.touch_all(&applied);
        match result {
            Ok(()) => Ok(applied),
            Err(e) => {
                for key in applied.keys.iter().rev() {
                    let _ = registry::unplant(key);
                }
                undo(&self.root, &applied);
                Err(e)
            }
        }
    }

    /// Plants the spec's registry keys into every target user's hive,
    /// skipping (with a warning) a user whose hive refuses it, failing
    /// only when no hive takes a key.
    fn plant_keys(
        &self,
        spec: &LureSpec,
        journal: &Intents<'_>,
        planted: &mut Vec<PlantedKey>,
    ) -> Result<(), LureError> {
        if spec.keys.is_empty() {
            return Ok(());
        }
        registry::supported()?;
        let profiles = registry::profile_list();
        let homes = self.homes.discover(self.root.path());
        for key in &spec.keys {
            let path = registry::hive_path(key)?;
            let mut refused = None;
            let mut planted_any = false;
            for home in &homes {
                let Some(sid) = registry::sid_of(&profiles, &home.path) else {
                    refused.get_or_insert(LureError::Registry {
                        key: path.clone(),
                        reason: format!(
                            "{} is not in the system's profile list, so its registry hive is unknown",
                            home.path.display()
                        ),
                    });
                    continue;
                };
                let result = registry::plan(&sid, &home.path, &path, &key.values).and_then(|p| {
                    // Journaled before it is made (a crash half-way is
                    // undone at the next start); a failure half-way is
                    // undone now, and this home goes without it.
                    journal.key(&p)?;
                    match registry::plant(&p) {
                        Ok(()) => {
                            planted.push(p);
                            Ok(())
                        }
                        Err(e) => {
                            let _ = registry::unplant(&p);
                            Err(e)
                        }
                    }
                });
                match result {
                    Ok(()) => planted_any = true,
                    Err(e) => {
                        tracing::warn!(template = %spec.template, error = %e, "registry lure left out of one user's hive");
                        refused.get_or_insert(e);
                    }
                }
            }
            match (planted_any, refused) {
                (false, Some(e)) => return Err(e),
                (false, None) => {
                    return Err(LureError::NoHomes(self.root.path().display().to_string()));
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// A file in the way that is another lure's is named as such: two
    /// campaigns planting the same whole file on one agent. One that is
    /// this lure's own (a replant after someone changed the file, which is
    /// then theirs and stays) says so.
    fn name_the_owner(&self, e: LureError, target: &Path, planting: &str) -> LureError {
        if !matches!(e, LureError::Fs(FsError::Exists { .. })) {
            return e;
        }
        let owner = self.state.lures.iter().find(|(_, l)| {
            l.files
                .iter()
                .any(|f| matches!(f, Planted::Whole { path, .. } if path == target))
        });
        match owner {
            Some((id, _)) if id == planting => LureError::Fs(FsError::Unsuitable {
                path: target.display().to_string(),
                reason:
                    "changed by someone after it was planted, so it is theirs now and left as it is"
                        .into(),
            }),
            Some((id, l)) => LureError::TakenByLure {
                path: target.display().to_string(),
                other: id.clone(),
                template: l.template.clone(),
            },
            None => e,
        }
    }

    /// Removes a lure, restoring every file it touched.
    pub fn remove(&mut self, id: &str) -> Result<(), LureError> {
        let Some(lure) = self.state.lures.get(id) else {
            return Ok(());
        };
        self.touch_all(lure);
        let mut first_error = None;
        for key in lure.keys.iter().rev() {
            if let Err(e) = registry::unplant(key)
                && first_error.is_none()
            {
                first_error = Some(e);
            }
        }
        for planted in lure.files.iter().rev() {
            if let Err(e) = unplant(&self.root, planted)
                && first_error.is_none()
            {
                first_error = Some(e);
            }
        }
        remove_dirs(&self.root, &lure.created_dirs);
        self.touch_all(lure);
        let outlived: Vec<PathBuf> = lure
            .created_dirs
            .iter()
            .filter(|d| std::fs::symlink_metadata(d).is_ok_and(|m| m.is_dir()))
            .cloned()
            .collect();
        self.state.leftover_dirs.extend(outlived);
        self.remove_leftover_dirs();
        match first_error {
            // Keep the record of a lure we could not fully remove.
            Some(e) => Err(e),
            None => {
                self.state.lures.remove(id);
                Ok(())
            }
        }
    }

    /// Removes the leftover directories that are empty now, innermost
    /// first; forgets those that are gone.
    fn remove_leftover_dirs(&mut self) {
        if self.state.leftover_dirs.is_empty() {
            return;
        }
        let mut dirs: Vec<PathBuf> = self.state.leftover_dirs.iter().cloned().collect();
        dirs.sort_by_key(|d| d.components().count());
        remove_dirs(&self.root, &dirs);
        self.state
            .leftover_dirs
            .retain(|d| std::fs::symlink_metadata(d).is_ok_and(|m| m.is_dir()));
    }

    /// Checks every planted file; puts back what was deleted or changed
    /// where that is safe (a whole file someone changed is theirs now and
    /// stays; a link on the way is never followed).
    pub fn verify_and_repair(&mut self) -> Vec<Drift> {
        let mut drifts = Vec::new();
        let ids: Vec<String> = self.state.lures.keys().cloned().collect();
        for id in ids {
            let Some(lure) = self.state.lures.get(&id).cloned() else {
                continue;
            };
            self.read_all(&lure);
            let mut found = Vec::new();
            for planted in &lure.files {
                if let Some(kind) = check(&self.root, planted) {
                    found.push((planted.path().to_path_buf(), kind));
                }
            }
            for key in &lure.keys {
                if let Some(kind) = registry::check(key) {
                    found.push((PathBuf::from(key.display()), kind));
                }
            }
            if found.is_empty() {
                continue;
            }
            // Replant the whole lure from its spec: remove what is left of
            // it, then plant again.
            if let Err(e) = self.replant(&id, &lure) {
                tracing::warn!(lure = %id, error = %e, "lure could not be planted again");
            }
            let now = self.state.lures.get(&id);
            drifts.extend(found.into_iter().map(|(path, what)| Drift {
                repaired: now.is_some_and(|l| {
                    l.files
                        .iter()
                        .any(|f| f.path() == path && check(&self.root, f).is_none())
                        || l.keys.iter().any(|k| {
                            Path::new(&k.display()) == path && registry::check(k).is_none()
                        })
                }),
                lure_id: id.clone(),
                path,
                what,
            }));
        }
        if !drifts.is_empty() {
            let _ = self.save();
        }
        drifts
    }

    fn replant(&mut self, id: &str, lure: &AppliedLure) -> Result<(), LureError> {
        for key in &lure.keys {
            let _ = registry::unplant(key);
        }
        for planted in &lure.files {
            // Only what is still the lure's own goes: a whole file someone
            // changed, or one behind a link, stays where it is.
            let _ = unplant(&self.root, planted);
        }
        let spec =
            LureSpec::decode(lure.spec.as_slice()).map_err(|e| LureError::Spec(e.to_string()))?;
        let mut fresh = self.plant(id, &spec, &lure.spec, lure.revision)?;
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
        self.remove_leftover_dirs();
        if let Err(e) = self.save() {
            failures.push(("state".into(), e));
        }
        failures
    }
}

#[cfg(test)]
mod tests;

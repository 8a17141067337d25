//! Registry lures (Windows): keys created in each target user's hive with
//! the values a program saves there (a PuTTY or WinSCP session), recorded
//! so they are removed exactly, as file lures are.
//!
//! The rules match whole-file lures': a key is only created where none
//! exists, so a session the user saved under the same name is never
//! touched; removal deletes the values that are still as planted, then the
//! keys the agent created, innermost first, each only if nothing else is
//! left in it. Registry lures go only under the programs' session keys
//! ([`ALLOWED_UNDER`]): a controller cannot use them to write autostart or
//! handler keys into a user's hive.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use ruse_proto::spec::{PlantKey, RegistryValue};

use super::{DriftKind, LureError};

/// The keys registry lures may be created under, `/`-separated.
pub const ALLOWED_UNDER: &[&str] = &[
    "Software/SimonTatham/PuTTY/Sessions/",
    "Software/Martin Prikryl/WinSCP 2/Sessions/",
];

/// One planted registry key, as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlantedKey {
    /// The hive: `HKEY_USERS\<sid>`.
    pub sid: String,
    /// The profile whose hive it is (to load it when the user is not
    /// logged on).
    pub profile: PathBuf,
    /// The key under the hive, `\`-separated.
    pub path: String,
    /// The keys the agent created, outermost first; the last is `path`.
    pub created: Vec<String>,
    pub values: Vec<RegistryValue>,
}

impl PlantedKey {
    /// `HKEY_USERS\<sid>\<path>`, as events and errors name it.
    pub fn display(&self) -> String {
        format!(r"HKEY_USERS\{}\{}", self.sid, self.path)
    }
}

/// The key path under a hive of a spec's `~/…` path, `\`-separated, if it
/// is one registry lures may create.
pub fn hive_path(spec: &PlantKey) -> Result<String, LureError> {
    let invalid = |reason: &str| LureError::Spec(format!("registry key {:?}: {reason}", spec.path));
    let rest = spec
        .path
        .strip_prefix("~/")
        .ok_or_else(|| invalid("not under a user's hive (~/)"))?;
    if !ALLOWED_UNDER
        .iter()
        .any(|allowed| rest.starts_with(allowed) && rest.len() > allowed.len())
    {
        return Err(invalid(&format!(
            "registry lures go only under {}",
            ALLOWED_UNDER.join(", ")
        )));
    }
    let parts: Vec<&str> = rest.split('/').collect();
    if parts.iter().any(|p| {
        p.is_empty() || p.len() > 255 || p.contains('\\') || p.chars().any(char::is_control)
    }) {
        return Err(invalid(
            "a key name is empty, too long or holds '\\' or a control character",
        ));
    }
    if spec.values.is_empty()
        || spec
            .values
            .iter()
            .any(|v| v.name.is_empty() || v.name.len() > 16_383 || v.name.contains('\0'))
    {
        return Err(invalid("no values, or a value without a valid name"));
    }
    Ok(parts.join("\\"))
}

/// The SID of the profile at `home`, from the system's profile list.
pub fn sid_of(profiles: &[(PathBuf, String)], home: &Path) -> Option<String> {
    let home = normalized(home);
    profiles
        .iter()
        .find(|(path, _)| normalized(path) == home)
        .map(|(_, sid)| sid.clone())
}

/// A path compared as Windows compares them: case-insensitively, with
/// either separator, without the `\\?\` prefix or a trailing separator.
fn normalized(path: &Path) -> String {
    let s = path.to_string_lossy().replace('/', "\\").to_lowercase();
    let s = s.strip_prefix(r"\\?\").unwrap_or(&s);
    s.trim_end_matches('\\').to_owned()
}

#[cfg(windows)]
mod imp {
    use super::*;
    use crate::platform::windows::registry::{Hive, Key, is_not_found, profiles};
    use ruse_proto::spec::RegistryData;

    fn error(key: &str, e: impl std::fmt::Display) -> LureError {
        LureError::Registry {
            key: key.to_owned(),
            reason: e.to_string(),
        }
    }

    pub fn supported() -> Result<(), LureError> {
        Ok(())
    }

    pub fn profile_list() -> Vec<(PathBuf, String)> {
        profiles()
    }

    /// Whether a planted value is still as planted: the data read back.
    fn same(planted: &RegistryData, read: Option<&Option<RegistryData>>) -> bool {
        matches!(read, Some(Some(data)) if data == planted)
    }

    /// The keys of `path` that do not exist yet under `root`, outermost
    /// first; an error if the key itself exists.
    fn missing(root: &Key, path: &str, display: &str) -> Result<Vec<String>, LureError> {
        let parts: Vec<&str> = path.split('\\').collect();
        let mut missing = Vec::new();
        for i in 1..=parts.len() {
            let sub = parts[..i].join("\\");
            match root.open(&sub) {
                Ok(_) if i == parts.len() => {
                    return Err(error(
                        display,
                        "a key already exists there and is not a lure (a session of that name); give the lure another session name",
                    ));
                }
                Ok(_) => {}
                Err(e) if is_not_found(&e) => missing.push(sub),
                Err(e) => return Err(error(display, e)),
            }
        }
        Ok(missing)
    }

    /// The record of what planting `spec` into `sid`'s hive will create,
    /// for the journal, before anything is created.
    pub fn plan(
        sid: &str,
        profile: &Path,
        path: &str,
        values: &[RegistryValue],
    ) -> Result<PlantedKey, LureError> {
        let display = format!(r"HKEY_USERS\{sid}\{path}");
        let hive = Hive::open(sid, profile).map_err(|e| error(&display, e))?;
        let created = missing(hive.root(), path, &display)?;
        Ok(PlantedKey {
            sid: sid.to_owned(),
            profile: profile.to_path_buf(),
            path: path.to_owned(),
            created,
            values: values.to_vec(),
        })
    }

    /// Creates the keys and values `planted` records.
    pub fn plant(planted: &PlantedKey) -> Result<(), LureError> {
        let display = planted.display();
        let hive = Hive::open(&planted.sid, &planted.profile).map_err(|e| error(&display, e))?;
        // Created one level at a time, so each created key is recorded.
        let mut key = None::<Key>;
        for part in planted.path.split('\\') {
            let parent = key.as_ref().unwrap_or(hive.root());
            let (child, _) = parent.create(part).map_err(|e| error(&display, e))?;
            key = Some(child);
        }
        let key = key.ok_or_else(|| error(&display, "an empty key path"))?;
        for value in &planted.values {
            key.set(&value.name, &value.data)
                .map_err(|e| error(&format!(r"{display}\{}", value.name), e))?;
        }
        drop(key);
        crate::platform::windows::registry::mark_audited(hive.root(), &planted.path, &display);
        Ok(())
    }

    /// Removes what is still as planted; the created keys once empty.
    pub fn unplant(planted: &PlantedKey) -> Result<(), LureError> {
        let display = planted.display();
        let hive = Hive::open(&planted.sid, &planted.profile).map_err(|e| error(&display, e))?;
        let root = hive.root();
        match root.open(&planted.path) {
            Ok(key) => {
                for value in &planted.values {
                    let read = key.get(&value.name).map_err(|e| error(&display, e))?;
                    if same(&value.data, read.as_ref()) {
                        key.delete_value(&value.name)
                            .map_err(|e| error(&display, e))?;
                    }
                }
            }
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(error(&display, e)),
        }
        for created in planted.created.iter().rev() {
            let Ok(key) = root.open(created) else {
                continue;
            };
            if !key.is_empty().map_err(|e| error(created, e))? {
                // Something the user (or the program) put there stays,
                // and with it the keys above it.
                break;
            }
            drop(key);
            let (parent, name) = created.rsplit_once('\\').unwrap_or(("", created));
            let result = if parent.is_empty() {
                root.delete_subkey(name)
            } else {
                root.open(parent).and_then(|p| p.delete_subkey(name))
            };
            match result {
                Ok(()) => {}
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(error(created, e)),
            }
        }
        Ok(())
    }

    /// How the key differs from what was planted; `None` if it is as
    /// planted or its hive is not loaded (an unloaded hive does not
    /// change).
    pub fn check(planted: &PlantedKey) -> Option<DriftKind> {
        let hive = Hive::loaded(&planted.sid).ok()??;
        let key = match hive.root().open(&planted.path) {
            Ok(key) => key,
            Err(e) if is_not_found(&e) => return Some(DriftKind::Deleted),
            Err(_) => return None,
        };
        for value in &planted.values {
            match key.get(&value.name) {
                Ok(None) => return Some(DriftKind::Deleted),
                Ok(read) if !same(&value.data, read.as_ref()) => {
                    return Some(DriftKind::Modified);
                }
                _ => {}
            }
        }
        None
    }
}

#[cfg(not(windows))]
mod imp {
    use super::*;

    fn unsupported() -> LureError {
        LureError::Spec("registry lures are for Windows agents".into())
    }

    pub fn supported() -> Result<(), LureError> {
        Err(unsupported())
    }

    pub fn profile_list() -> Vec<(PathBuf, String)> {
        Vec::new()
    }

    pub fn plan(
        _sid: &str,
        _profile: &Path,
        _path: &str,
        _values: &[RegistryValue],
    ) -> Result<PlantedKey, LureError> {
        Err(unsupported())
    }

    pub fn plant(_planted: &PlantedKey) -> Result<(), LureError> {
        Err(unsupported())
    }

    pub fn unplant(_planted: &PlantedKey) -> Result<(), LureError> {
        Err(unsupported())
    }

    pub fn check(_planted: &PlantedKey) -> Option<DriftKind> {
        None
    }
}

pub use imp::{check, plan, plant, profile_list, supported, unplant};

#[cfg(test)]
mod tests {
    use super::*;
    use ruse_proto::spec::RegistryData;

    fn spec(path: &str) -> PlantKey {
        PlantKey {
            path: path.into(),
            values: vec![RegistryValue {
                name: "HostName".into(),
                data: RegistryData::Text("10.0.0.5".into()),
            }],
        }
    }

    #[test]
    fn only_the_session_keys_take_registry_lures() {
        assert_eq!(
            hive_path(&spec("~/Software/SimonTatham/PuTTY/Sessions/pacs")).unwrap(),
            r"Software\SimonTatham\PuTTY\Sessions\pacs"
        );
        for refused in [
            "~/Software/Microsoft/Windows/CurrentVersion/Run/x",
            "~/Software/Classes/ms-settings/shell/open/command",
            "~/Software/SimonTatham/PuTTY/Sessions/",
            "~/Software/SimonTatham/PuTTY/Sessions/a//b",
            "~/Software/SimonTatham/PuTTY/Sessions/a\\..\\..\\Run",
            "/Software/SimonTatham/PuTTY/Sessions/pacs",
        ] {
            assert!(hive_path(&spec(refused)).is_err(), "{refused}");
        }
        let mut empty = spec("~/Software/SimonTatham/PuTTY/Sessions/pacs");
        empty.values.clear();
        assert!(hive_path(&empty).is_err());
    }

    #[test]
    fn profiles_match_as_windows_compares_paths() {
        let profiles = vec![
            (
                PathBuf::from(r"C:\Users\alice"),
                "S-1-5-21-1-2-3-1001".to_owned(),
            ),
            (
                PathBuf::from(r"C:\users\root"),
                "S-1-5-21-0-0-0-1000".to_owned(),
            ),
        ];
        assert_eq!(
            sid_of(&profiles, Path::new(r"\\?\C:\Users\root\")).as_deref(),
            Some("S-1-5-21-0-0-0-1000")
        );
        assert_eq!(
            sid_of(&profiles, Path::new("C:/USERS/ALICE")).as_deref(),
            Some("S-1-5-21-1-2-3-1001")
        );
        assert_eq!(sid_of(&profiles, Path::new(r"C:\Users\bob")), None);
    }
}

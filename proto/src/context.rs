//! rusectl context files (`~/.config/ruse/config.toml` and the files
//! `ruse-controller init` and `rusectl admin issue` write).
//!
//! ```toml
//! current-context = "ruse"
//!
//! [contexts.ruse]
//! controller = "https://127.0.0.1:7443"
//! ca = "ca.pem"              # relative paths are relative to this file
//! cert = "admin.pem"
//! key = "admin-key.pem"
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// A file holding one or more contexts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ContextFile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_context: Option<String>,
    #[serde(default)]
    pub contexts: BTreeMap<String, Context>,
}

/// How to reach and authenticate to one controller: files (`ca`, `cert`,
/// `key`), or the PEM text itself (`ca-pem`, `cert-pem`, `key-pem`, as
/// `ruse-controller admin-context` prints; the file must then be private).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Context {
    pub controller: String,
    #[serde(default, skip_serializing_if = "is_empty_path")]
    pub ca: PathBuf,
    #[serde(default, skip_serializing_if = "is_empty_path")]
    pub cert: PathBuf,
    #[serde(default, skip_serializing_if = "is_empty_path")]
    pub key: PathBuf,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_pem: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_pem: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_pem: Option<String>,
}

fn is_empty_path(p: &Path) -> bool {
    p.as_os_str().is_empty()
}

impl Context {
    /// A context carrying its credentials inline.
    pub fn inline(controller: &str, ca_pem: &str, cert_pem: &str, key_pem: &str) -> Context {
        Context {
            controller: controller.to_owned(),
            ca: PathBuf::new(),
            cert: PathBuf::new(),
            key: PathBuf::new(),
            ca_pem: Some(ca_pem.to_owned()),
            cert_pem: Some(cert_pem.to_owned()),
            key_pem: Some(key_pem.to_owned()),
        }
    }
}

/// Why a context could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    #[error("cannot read context file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid context file {path}: {reason}")]
    Parse { path: String, reason: String },
    #[error("context file {path} has no context named {name:?} (it has: {available})")]
    NoSuchContext {
        path: String,
        name: String,
        available: String,
    },
    #[error(
        "context file {path} holds several contexts and names none as current-context; pass --context"
    )]
    NoCurrentContext { path: String },
}

impl ContextFile {
    pub fn load(path: &Path) -> Result<Self, ContextError> {
        let text = std::fs::read_to_string(path).map_err(|source| ContextError::Read {
            path: path.display().to_string(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ContextError::Parse {
            path: path.display().to_string(),
            reason: e.to_string(),
        })
    }

    /// One context, named `name`, for admin `admin` whose files
    /// (`<admin>.pem`, `<admin>-key.pem`, `ca.pem`) sit beside the file.
    pub fn for_admin(name: &str, controller: &str, admin: &str) -> Self {
        ContextFile {
            current_context: Some(name.to_owned()),
            contexts: [(
                name.to_owned(),
                Context {
                    controller: controller.to_owned(),
                    ca: "ca.pem".into(),
                    cert: format!("{admin}.pem").into(),
                    key: format!("{admin}-key.pem").into(),
                    ca_pem: None,
                    cert_pem: None,
                    key_pem: None,
                },
            )]
            .into(),
        }
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_default()
    }

    /// The named context, or the current one, with relative paths resolved
    /// against the directory of `path` (where this file was loaded from).
    pub fn select(&self, path: &Path, name: Option<&str>) -> Result<Context, ContextError> {
        let name = match name.or(self.current_context.as_deref()) {
            Some(n) => n.to_owned(),
            None if self.contexts.len() == 1 => {
                self.contexts.keys().next().cloned().unwrap_or_default()
            }
            None => {
                return Err(ContextError::NoCurrentContext {
                    path: path.display().to_string(),
                });
            }
        };
        let ctx = self
            .contexts
            .get(&name)
            .ok_or_else(|| ContextError::NoSuchContext {
                path: path.display().to_string(),
                name: name.clone(),
                available: self.contexts.keys().cloned().collect::<Vec<_>>().join(", "),
            })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let resolve = |p: &Path| {
            if p.is_absolute() || p.as_os_str().is_empty() {
                p.to_owned()
            } else {
                base.join(p)
            }
        };
        for (inline, file, what) in [
            (&ctx.ca_pem, &ctx.ca, "ca"),
            (&ctx.cert_pem, &ctx.cert, "cert"),
            (&ctx.key_pem, &ctx.key, "key"),
        ] {
            if inline.is_none() && file.as_os_str().is_empty() {
                return Err(ContextError::Parse {
                    path: path.display().to_string(),
                    reason: format!("context {name:?} needs {what} (a file) or {what}-pem"),
                });
            }
        }
        Ok(Context {
            controller: ctx.controller.clone(),
            ca: resolve(&ctx.ca),
            cert: resolve(&ctx.cert),
            key: resolve(&ctx.key),
            ca_pem: ctx.ca_pem.clone(),
            cert_pem: ctx.cert_pem.clone(),
            key_pem: ctx.key_pem.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn select_resolves_relative_paths_and_current_context() {
        let text = r#"
current-context = "b"
[contexts.a]
controller = "https://a:7443"
ca = "/etc/ruse/ca.pem"
cert = "a.pem"
key = "a-key.pem"
[contexts.b]
controller = "https://b:7443"
ca = "ca.pem"
cert = "certs/b.pem"
key = "certs/b-key.pem"
"#;
        let file: ContextFile = toml::from_str(text).unwrap();
        let path = Path::new("/home/u/.config/ruse/config.toml");
        let b = file.select(path, None).unwrap();
        assert_eq!(b.controller, "https://b:7443");
        assert_eq!(b.cert, Path::new("/home/u/.config/ruse/certs/b.pem"));
        let a = file.select(path, Some("a")).unwrap();
        assert_eq!(a.ca, Path::new("/etc/ruse/ca.pem"));
        assert!(matches!(
            file.select(path, Some("c")),
            Err(ContextError::NoSuchContext { .. })
        ));
        let round: ContextFile = toml::from_str(&file.to_toml()).unwrap();
        assert_eq!(round, file);
    }

    #[test]
    fn unknown_keys_are_errors() {
        assert!(
            toml::from_str::<ContextFile>(
                "[contexts.a]\ncontroller='x'\nca='a'\ncert='b'\nkey='c'\ntoken='t'"
            )
            .is_err()
        );
    }
}

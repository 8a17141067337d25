//! Agent configuration: defaults, then a TOML file, then `RUSE_AGENT_*`
//! environment variables, then flags, checked into an [`AgentConfig`].

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use ruse_pki::CaPin;
use ruse_proto::transport::{ControllerUrl, DialOptions};
use ruse_proto::types::{Labels, duration_str};

/// The file / environment form of the configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentFileConfig {
    pub controller: Option<String>,
    pub ca_pin: Option<String>,
    pub token_file: Option<PathBuf>,
    pub state_dir: PathBuf,
    /// Where lures are planted from; `/` in production.
    pub root: PathBuf,
    /// What `~/` means in lure paths, relative to the root: `home/*` is
    /// every directory in `home`.
    pub home_dirs: Vec<String>,
    /// How often planted lures are checked for deletion or edits.
    #[serde(with = "duration_str")]
    pub verify_interval: Duration,
    /// Accesses of one process to one lure within this window are one event.
    #[serde(with = "duration_str")]
    pub event_coalesce: Duration,
    /// At most this many events per lure per second; the rest are counted.
    pub events_per_lure_per_second: u32,
    /// Unacknowledged events kept on disk, at most.
    pub outbox_capacity: usize,
    /// A decoy connection that sends nothing for this long is closed.
    #[serde(with = "duration_str")]
    pub decoy_read_timeout: Duration,
    /// No decoy connection lasts longer than this, however slowly it sends.
    #[serde(with = "duration_str")]
    pub decoy_connection_lifetime: Duration,
    pub labels: BTreeMap<String, String>,
    #[serde(with = "duration_str")]
    pub connect_timeout: Duration,
    #[serde(with = "duration_str")]
    pub keepalive_interval: Duration,
    #[serde(with = "duration_str")]
    pub min_backoff: Duration,
    #[serde(with = "duration_str")]
    pub max_backoff: Duration,
}

/// Where the agent keeps its identity unless told otherwise.
pub const DEFAULT_STATE_DIR: &str = if cfg!(windows) {
    r"C:\ProgramData\Ruse\agent"
} else {
    "/var/lib/ruse-agent"
};

/// The root lures are planted under unless told otherwise.
pub const DEFAULT_ROOT: &str = if cfg!(windows) { r"C:\" } else { "/" };

impl Default for AgentFileConfig {
    fn default() -> Self {
        AgentFileConfig {
            controller: None,
            ca_pin: None,
            token_file: None,
            state_dir: PathBuf::from(DEFAULT_STATE_DIR),
            root: PathBuf::from(DEFAULT_ROOT),
            home_dirs: crate::lures::homes::default_patterns(),
            verify_interval: Duration::from_secs(300),
            event_coalesce: Duration::from_millis(200),
            events_per_lure_per_second: 5,
            outbox_capacity: 100_000,
            decoy_read_timeout: crate::decoys::Limits::default().read_timeout,
            decoy_connection_lifetime: crate::decoys::Limits::default().lifetime,
            labels: BTreeMap::new(),
            connect_timeout: Duration::from_secs(10),
            keepalive_interval: Duration::from_secs(60),
            min_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(60),
        }
    }
}

/// A checked agent configuration.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub controller: ControllerUrl,
    /// Other replicas of the controller, tried in turn after `controller`
    /// when a session cannot be opened or ends (`controller =
    /// "https://a:7443,https://b:7443"` in the file or on the command
    /// line).
    pub other_controllers: Vec<ControllerUrl>,
    pub ca_pin: CaPin,
    /// Needed only to enroll (first start, or after the certificate expired).
    pub token_file: Option<PathBuf>,
    pub state_dir: PathBuf,
    pub root: PathBuf,
    pub home_dirs: Vec<String>,
    pub verify_interval: Duration,
    pub detect: crate::detect::DetectConfig,
    pub outbox_capacity: usize,
    pub decoy_limits: crate::decoys::Limits,
    pub labels: Labels,
    pub dial: DialOptions,
    pub min_backoff: Duration,
    pub max_backoff: Duration,
}

impl AgentConfig {
    /// This configuration dialling the `n`th controller address (counting
    /// `controller` first, wrapping).
    pub fn dialling(&self, n: usize) -> AgentConfig {
        let mut config = self.clone();
        let i = n % (1 + self.other_controllers.len());
        if i > 0 {
            config.controller = self.other_controllers[i - 1].clone();
        }
        config
    }
}

/// Why a configuration was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Load(#[from] config::ConfigError),
    #[error("configuration: {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
}

fn invalid(field: &'static str, reason: impl std::fmt::Display) -> ConfigError {
    ConfigError::Invalid {
        field,
        reason: reason.to_string(),
    }
}

impl AgentConfig {
    /// A configuration with every optional setting at its default.
    pub fn new(
        controller: ControllerUrl,
        ca_pin: CaPin,
        state_dir: PathBuf,
        root: PathBuf,
    ) -> Self {
        let d = AgentFileConfig::default();
        AgentConfig {
            controller,
            other_controllers: Vec::new(),
            ca_pin,
            token_file: None,
            state_dir,
            root,
            home_dirs: d.home_dirs,
            verify_interval: d.verify_interval,
            detect: crate::detect::DetectConfig {
                coalesce: d.event_coalesce,
                per_lure_per_second: d.events_per_lure_per_second,
            },
            outbox_capacity: d.outbox_capacity,
            decoy_limits: crate::decoys::Limits {
                read_timeout: d.decoy_read_timeout,
                lifetime: d.decoy_connection_lifetime,
            },
            labels: Labels::new(),
            dial: DialOptions {
                connect_timeout: d.connect_timeout,
                keepalive_interval: d.keepalive_interval,
                ..DialOptions::default()
            },
            min_backoff: d.min_backoff,
            max_backoff: d.max_backoff,
        }
    }

    /// Merges the layers. `overrides` are flag values as `(key, value)`;
    /// `flag_labels` are `--label` pairs, which win over the file's labels.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: &[(&str, String)],
        flag_labels: &Labels,
    ) -> Result<Self, ConfigError> {
        let known: Vec<String> = match serde_json::to_value(AgentFileConfig::default()) {
            Ok(serde_json::Value::Object(map)) => map.keys().cloned().collect(),
            _ => Vec::new(),
        };
        let env: HashMap<String, String> = env
            .into_iter()
            .filter(|(k, _)| {
                k.strip_prefix("RUSE_AGENT_")
                    .is_some_and(|key| known.contains(&key.to_ascii_lowercase()))
            })
            .collect();
        let mut builder = config::Config::builder()
            .add_source(config::Config::try_from(&AgentFileConfig::default())?);
        if let Some(path) = file {
            builder = builder.add_source(
                config::File::from(path)
                    .format(config::FileFormat::Toml)
                    .required(true),
            );
        }
        builder = builder.add_source(
            config::Environment::with_prefix("RUSE_AGENT")
                .prefix_separator("_")
                .try_parsing(true)
                .source(Some(env)),
        );
        for (key, value) in overrides {
            builder = builder.set_override(*key, value.clone())?;
        }
        let raw: AgentFileConfig = builder.build()?.try_deserialize()?;
        Self::validate(raw, flag_labels)
    }

    fn validate(raw: AgentFileConfig, flag_labels: &Labels) -> Result<Self, ConfigError> {
        let mut controllers = raw
            .controller
            .ok_or_else(|| invalid("controller", "required (--controller https://HOST:PORT)"))?
            .split(',')
            .map(str::trim)
            .filter(|url| !url.is_empty())
            .map(|url| {
                url.parse::<ControllerUrl>()
                    .map_err(|e| invalid("controller", e))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if controllers.is_empty() {
            return Err(invalid(
                "controller",
                "required (--controller https://HOST:PORT)",
            ));
        }
        let controller = controllers.remove(0);
        let ca_pin = raw
            .ca_pin
            .ok_or_else(|| {
                invalid(
                    "ca_pin",
                    "required (--ca-pin sha256:…, printed by ruse-controller init)",
                )
            })?
            .parse::<CaPin>()
            .map_err(|e| invalid("ca_pin", e))?;
        let labels = Labels::try_from(raw.labels)
            .map_err(|e| invalid("labels", e))?
            .overlaid_with(flag_labels);
        if raw.events_per_lure_per_second == 0 || raw.outbox_capacity == 0 {
            return Err(invalid(
                "events_per_lure_per_second / outbox_capacity",
                "must be at least 1",
            ));
        }
        if raw.decoy_read_timeout < Duration::from_millis(100)
            || raw.decoy_connection_lifetime < raw.decoy_read_timeout
        {
            return Err(invalid(
                "decoy_read_timeout / decoy_connection_lifetime",
                "the read timeout must be at least 100ms and the lifetime at least the read timeout",
            ));
        }
        if raw.verify_interval < Duration::from_secs(1) {
            return Err(invalid("verify_interval", "must be at least 1s"));
        }
        if raw.min_backoff.is_zero() || raw.max_backoff < raw.min_backoff {
            return Err(invalid(
                "min_backoff / max_backoff",
                "need 0 < min_backoff <= max_backoff",
            ));
        }
        Ok(AgentConfig {
            controller,
            other_controllers: controllers,
            ca_pin,
            token_file: raw.token_file,
            state_dir: raw.state_dir,
            root: raw.root,
            home_dirs: raw.home_dirs,
            verify_interval: raw.verify_interval,
            detect: crate::detect::DetectConfig {
                coalesce: raw.event_coalesce,
                per_lure_per_second: raw.events_per_lure_per_second,
            },
            outbox_capacity: raw.outbox_capacity,
            decoy_limits: crate::decoys::Limits {
                read_timeout: raw.decoy_read_timeout,
                lifetime: raw.decoy_connection_lifetime,
            },
            labels,
            dial: DialOptions {
                connect_timeout: raw.connect_timeout,
                keepalive_interval: raw.keepalive_interval,
                ..DialOptions::default()
            },
            min_backoff: raw.min_backoff,
            max_backoff: raw.max_backoff,
        })
    }
}

/// What an installer was given (the MSI's properties); empty means "not
/// given".
#[derive(Debug, Clone, Default)]
pub struct Installer {
    pub config: PathBuf,
    pub state_dir: PathBuf,
    pub controller: String,
    pub ca_pin: String,
    pub token: String,
    pub token_file: String,
    pub labels: String,
}

/// The file a token given to the installer is kept in, in the state
/// directory (private to the agent).
pub const INSTALLER_TOKEN: &str = "bootstrap-token";

/// Marks an upgrade under way, in the state directory: the MSI writes it
/// before it removes the older version; `uninstall --unless-upgrading`
/// (that removal) or the agent's next start takes it.
const UPGRADE_MARK: &str = "upgrading";

/// An upgrade mark older than this is a leftover, not an upgrade.
const UPGRADE_MARK_LIFETIME: Duration = Duration::from_secs(3600);

/// Removes the upgrade mark; whether a fresh one was there.
pub fn take_upgrade_mark(state_dir: &Path) -> bool {
    let mark = state_dir.join(UPGRADE_MARK);
    let fresh = std::fs::metadata(&mark)
        .and_then(|m| m.modified())
        .is_ok_and(|t| t.elapsed().is_ok_and(|age| age < UPGRADE_MARK_LIFETIME));
    let _ = std::fs::remove_file(&mark);
    fresh
}

/// Writes the settings an installer was given into its configuration
/// file, keeping every setting it was not given (an upgrade passes none),
/// and checks that the result is a valid configuration. Returns the file.
pub fn configure(given: &Installer) -> Result<PathBuf, ConfigError> {
    let mut table: toml::Table = match std::fs::read_to_string(&given.config) {
        Ok(text) => text.parse().map_err(|e: toml::de::Error| {
            invalid("config", format!("{}: {e}", given.config.display()))
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => toml::Table::new(),
        Err(e) => {
            return Err(invalid(
                "config",
                format!("{}: {e}", given.config.display()),
            ));
        }
    };
    let mut set = |key: &str, value: &str| {
        let value = value.trim();
        if !value.is_empty() {
            table.insert(key.to_owned(), toml::Value::String(value.to_owned()));
        }
    };
    set("controller", &given.controller);
    set("ca_pin", &given.ca_pin);
    set("state_dir", &given.state_dir.display().to_string());
    let token = if given.token.trim().is_empty() && !given.token_file.trim().is_empty() {
        std::fs::read_to_string(given.token_file.trim())
            .map_err(|e| invalid("token_file", format!("{}: {e}", given.token_file.trim())))?
    } else {
        given.token.clone()
    };
    if !token.trim().is_empty() {
        ruse_pki::create_private_dir(&given.state_dir).map_err(|e| invalid("state_dir", e))?;
        let kept = given.state_dir.join(INSTALLER_TOKEN);
        ruse_pki::write_private_file(&kept, token.trim().as_bytes())
            .map_err(|e| invalid("token", e))?;
        set("token_file", &kept.display().to_string());
    }
    if !given.labels.trim().is_empty() {
        let labels = Labels::parse_pairs(given.labels.split(',').map(str::trim))
            .map_err(|e| invalid("labels", e))?;
        let map = labels
            .iter()
            .map(|(k, v)| (k.to_owned(), toml::Value::String(v.to_owned())))
            .collect();
        table.insert("labels".into(), toml::Value::Table(map));
    }
    let text = toml::to_string(&table).map_err(|e| invalid("config", e))?;
    if let Some(dir) = given.config.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| invalid("config", format!("{}: {e}", dir.display())))?;
    }
    // Checked before it replaces the file: a wrong setting fails the
    // install and leaves the working configuration as it was.
    let candidate = given.config.with_extension("toml.new");
    ruse_pki::write_public_file(&candidate, text.as_bytes()).map_err(|e| invalid("config", e))?;
    if let Err(e) = AgentConfig::load(Some(&candidate), Vec::new(), &[], &Labels::default()) {
        let _ = std::fs::remove_file(&candidate);
        return Err(e);
    }
    std::fs::rename(&candidate, &given.config)
        .map_err(|e| invalid("config", format!("{}: {e}", given.config.display())))?;
    Ok(given.config.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PIN: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";

    #[test]
    fn an_installer_sets_what_it_is_given_and_keeps_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let given = Installer {
            config: dir.path().join("conf/agent.toml"),
            state_dir: dir.path().join("state"),
            controller: "https://ruse.hospital.example:7443".into(),
            ca_pin: PIN.into(),
            token: "rt1.secret".into(),
            token_file: String::new(),
            labels: "site=icu, role=workstation".into(),
        };
        configure(&given).unwrap();
        let load = || AgentConfig::load(Some(&given.config), Vec::new(), &[], &Labels::default());
        let config = load().unwrap();
        assert_eq!(
            config.controller.to_string(),
            "https://ruse.hospital.example:7443"
        );
        let kept = dir.path().join("state").join(INSTALLER_TOKEN);
        assert_eq!(config.token_file.as_deref(), Some(kept.as_path()));
        assert_eq!(std::fs::read_to_string(&kept).unwrap(), "rt1.secret");
        assert_eq!(config.labels.get("site"), Some("icu"));
        // An upgrade passes nothing: everything stays.
        configure(&Installer {
            config: given.config.clone(),
            state_dir: given.state_dir.clone(),
            ..Installer::default()
        })
        .unwrap();
        assert_eq!(load().unwrap().controller, config.controller);
        assert_eq!(load().unwrap().labels, config.labels);
        // A wrong pin is refused, naming the field.
        let wrong = Installer {
            ca_pin: "sha256:nope".into(),
            ..given.clone()
        };
        assert!(
            configure(&wrong)
                .unwrap_err()
                .to_string()
                .contains("ca_pin")
        );
        assert_eq!(
            load().unwrap().ca_pin,
            config.ca_pin,
            "the file is untouched"
        );
    }

    #[test]
    fn several_controllers_are_dialled_in_turn() {
        let config = AgentConfig::load(
            None,
            Vec::new(),
            &[
                ("controller", "https://a:1, https://b:2,https://c:3".into()),
                ("ca_pin", PIN.into()),
            ],
            &Labels::new(),
        )
        .unwrap();
        let dialled: Vec<String> = (0..4)
            .map(|n| config.dialling(n).controller.to_string())
            .collect();
        assert_eq!(
            dialled,
            ["https://a:1", "https://b:2", "https://c:3", "https://a:1"]
        );
        let err = AgentConfig::load(
            None,
            Vec::new(),
            &[
                ("controller", "https://a:1,ftp://b".into()),
                ("ca_pin", PIN.into()),
            ],
            &Labels::new(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("controller"), "{err}");
    }

    #[test]
    fn flags_override_file_and_labels_merge() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("agent.toml");
        std::fs::write(
            &file,
            format!("controller = \"https://a:1\"\nca_pin = \"{PIN}\"\n[labels]\nsite = \"er\"\nrole = \"ws\"\n"),
        )
        .unwrap();
        let config = AgentConfig::load(
            Some(&file),
            [("RUSE_AGENT_STATE_DIR".to_owned(), "/tmp/s".to_owned())],
            &[("controller", "https://b:2".into())],
            &Labels::parse_pairs(["site=icu"]).unwrap(),
        )
        .unwrap();
        assert_eq!(config.controller.to_string(), "https://b:2");
        assert_eq!(config.state_dir, Path::new("/tmp/s"));
        assert_eq!(config.labels.get("site"), Some("icu"));
        assert_eq!(config.labels.get("role"), Some("ws"));
    }

    #[test]
    fn missing_or_bad_required_values_are_named() {
        let err = AgentConfig::load(None, [], &[], &Labels::new()).unwrap_err();
        assert!(err.to_string().contains("controller"), "{err}");
        let err = AgentConfig::load(
            None,
            [],
            &[
                ("controller", "https://a:1".into()),
                ("ca_pin", "sha1:00".into()),
            ],
            &Labels::new(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("ca_pin"), "{err}");
    }

    #[test]
    fn the_example_config_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/agent.toml");
        let config = AgentConfig::load(Some(&path), [], &[], &Labels::new()).unwrap();
        assert_eq!(config.controller.host(), "ruse.example.org");
        assert_eq!(
            config.labels.get("device-class"),
            Some("clinical-workstation")
        );
        assert_eq!(config.root, Path::new("/"));
    }
}

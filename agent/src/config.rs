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

#[cfg(test)]
mod tests {
    use super::*;

    const PIN: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";

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

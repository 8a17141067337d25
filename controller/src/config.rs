//! Controller configuration: defaults, then a TOML file, then `RUSE_*`
//! environment variables, then command-line flags, merged with the `config`
//! crate and checked by [`ControllerConfig::validate`].
//!
//! The environment is passed in as a map (tests never touch the process
//! environment). Only variables naming a known key are read, so `RUSE_*`
//! variables meant for other Ruse programs do not break the controller.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use ruse_proto::types::duration_str;

pub use crate::outputs::OutputConfig;
pub use crate::store::StoreLocation;

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// A PostgreSQL URL. It may hold a password: its `Debug` form hides it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct StoreUrl(pub String);

impl std::fmt::Debug for StoreUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&crate::store::redact_url(&self.0))
    }
}

/// Everything `ruse-controller serve` can be told.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControllerConfig {
    /// Where the CA, the store and admin credentials live.
    pub data_dir: PathBuf,
    /// The agent listener (and the admin API, unless `admin_listen` is set).
    pub listen: SocketAddr,
    /// This controller's name among controllers sharing a database (shown
    /// with each agent whose session it holds). Default: the host name and
    /// the agent port (on Kubernetes, the pod's name and port).
    pub name: Option<String>,
    /// A separate listener for the admin API, which then requires a client
    /// certificate at the handshake.
    pub admin_listen: Option<SocketAddr>,
    /// DNS names and IP addresses in the server certificate: every name
    /// agents and admins dial (for Kubernetes, the Service DNS names).
    pub server_names: Vec<String>,
    /// CA certificate and key; default `<data_dir>/pki/ca.pem` and
    /// `ca-key.pem` (set these to a mounted Secret on Kubernetes).
    pub ca_cert_file: Option<PathBuf>,
    pub ca_key_file: Option<PathBuf>,
    #[serde(with = "duration_str")]
    pub agent_cert_ttl: Duration,
    #[serde(with = "duration_str")]
    pub admin_cert_ttl: Duration,
    #[serde(with = "duration_str")]
    pub server_cert_ttl: Duration,
    /// Defaults for `rusectl token create` without `--ttl` / `--uses`.
    #[serde(with = "duration_str")]
    pub token_ttl: Duration,
    pub token_uses: u32,
    /// How often agents send a heartbeat.
    #[serde(with = "duration_str")]
    pub heartbeat_interval: Duration,
    /// An agent with no heartbeat for this long is offline.
    #[serde(with = "duration_str")]
    pub offline_after: Duration,
    /// How often agent last-seen times are written to the store.
    #[serde(with = "duration_str")]
    pub state_flush_interval: Duration,
    /// Largest gRPC message accepted or sent.
    pub max_message_bytes: usize,
    /// Connections are closed after this long so load rebalances and
    /// renewed certificates are used.
    #[serde(with = "duration_str")]
    pub max_connection_age: Duration,
    #[serde(with = "duration_str")]
    pub handshake_timeout: Duration,
    /// On SIGTERM, how long streams may take to drain before the store is
    /// flushed and the process exits.
    #[serde(with = "duration_str")]
    pub shutdown_grace: Duration,
    /// Failed enrollments allowed per source address per minute.
    pub enroll_failures_per_minute: u32,
    /// The PostgreSQL store that controller replicas share
    /// (`postgres://user:password@host:5432/ruse?sslmode=require`; with TLS
    /// the server's certificate and name are always verified). Unset: the
    /// embedded store in `data_dir`.
    pub store_url: Option<StoreUrl>,
    /// A file holding `store_url` (a mounted Secret, such as the `uri` key
    /// of the secret CloudNativePG makes), instead of the URL itself.
    pub store_url_file: Option<PathBuf>,
    /// CAs (PEM) that sign the database's certificate; default the system
    /// bundle.
    pub store_ca_file: Option<PathBuf>,
    /// sled page cache.
    pub store_cache_mb: u64,
    /// Disk space kept free under the data directory: a file of this size
    /// is kept there, and below a quarter of it free, writes are refused
    /// (and the file deleted so buffered writes land) until there is room
    /// again. 0 turns the guard off.
    pub disk_reserve_mb: u64,
    pub log_format: LogFormat,
    /// A tracing filter (`info`, `ruse_controller=debug`).
    pub log_level: String,
    /// Events sharing a source, host, process or lure within this window
    /// join one incident.
    #[serde(with = "duration_str")]
    pub incident_window: Duration,
    /// Prometheus metrics (`GET /metrics`, plain HTTP) on this address.
    pub metrics_listen: Option<SocketAddr>,
    /// Plaintext `grpc.health.v1` (and nothing else) on this address, for
    /// Kubernetes gRPC probes, which cannot speak TLS.
    pub health_listen: Option<SocketAddr>,
    /// The web console (HTTPS, the controller's server certificate) on
    /// this address; off unless set.
    pub console_listen: Option<SocketAddr>,
    /// Without a CA in the data directory (and none mounted), create one on
    /// first start, with the first admin's credentials in `<data_dir>/admin`
    /// (`ruse-controller admin-context` prints them as a rusectl context).
    pub init_if_missing: bool,
    /// The trust domain a CA created by `init_if_missing` gets.
    pub trust_domain: String,
    /// If the store has no admin yet, this admin (role admin) is created at
    /// start. Its certificate must still be signed by this controller's CA:
    /// use it with a CA made by `ruse-controller init` elsewhere and
    /// mounted (the usual Kubernetes setup).
    pub bootstrap_admin: Option<String>,
    /// Where incidents are sent (`[[outputs]]` tables).
    pub outputs: Vec<OutputConfig>,
    /// Retry delays of an output that failed: doubling from the first to
    /// the second.
    #[serde(with = "duration_str")]
    pub output_retry_min: Duration,
    #[serde(with = "duration_str")]
    pub output_retry_max: Duration,
    /// How long a drill waits for each step.
    #[serde(with = "duration_str")]
    pub drill_timeout: Duration,
    /// Events one agent may have stored per second, on average, and in one
    /// burst. Beyond that its events are counted, summarised every few
    /// seconds in a `flood` event of its own (which opens an incident) and
    /// acknowledged, so one agent can neither fill the store nor delay or
    /// hide anyone else's events.
    pub agent_events_per_second: u32,
    pub agent_event_burst: u32,
    /// Events received longer ago than this are deleted (incidents keep
    /// their timelines).
    #[serde(with = "duration_str")]
    pub event_retention: Duration,
    /// At most this many events are kept; past it the oldest are deleted
    /// first.
    pub max_stored_events: u64,
    /// An agent's event time further ahead of the controller's clock than
    /// this, or further behind than `max_clock_behind` (an agent may hold
    /// events while offline), is clamped into that range and the reported
    /// time kept beside it.
    #[serde(with = "duration_str")]
    pub max_clock_ahead: Duration,
    #[serde(with = "duration_str")]
    pub max_clock_behind: Duration,
    /// An agent offline longer than this no longer holds up rollouts: it
    /// is reported as unreachable in `rusectl rollout status` and gets its
    /// lures when it is back.
    #[serde(with = "duration_str")]
    pub rollout_unreachable_after: Duration,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        ControllerConfig {
            data_dir: PathBuf::from("/var/lib/ruse"),
            listen: SocketAddr::from(([0, 0, 0, 0], ruse_proto::transport::DEFAULT_PORT)),
            admin_listen: None,
            name: None,
            server_names: default_server_names(),
            ca_cert_file: None,
            ca_key_file: None,
            agent_cert_ttl: Duration::from_secs(24 * 3600),
            admin_cert_ttl: Duration::from_secs(90 * 86_400),
            server_cert_ttl: Duration::from_secs(90 * 86_400),
            token_ttl: Duration::from_secs(24 * 3600),
            token_uses: 1,
            heartbeat_interval: Duration::from_secs(30),
            offline_after: Duration::from_secs(90),
            state_flush_interval: Duration::from_secs(5),
            max_message_bytes: 4 << 20,
            max_connection_age: Duration::from_secs(12 * 3600),
            handshake_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(10),
            enroll_failures_per_minute: 10,
            store_url: None,
            store_url_file: None,
            store_ca_file: None,
            store_cache_mb: 64,
            disk_reserve_mb: 64,
            log_format: LogFormat::Text,
            log_level: "info".into(),
            incident_window: Duration::from_secs(3600),
            metrics_listen: None,
            health_listen: None,
            console_listen: None,
            init_if_missing: false,
            trust_domain: "ruse.local".into(),
            bootstrap_admin: None,
            outputs: Vec::new(),
            output_retry_min: Duration::from_secs(1),
            output_retry_max: Duration::from_secs(60),
            drill_timeout: Duration::from_secs(30),
            agent_events_per_second: 1_000,
            agent_event_burst: 20_000,
            event_retention: Duration::from_secs(365 * 86_400),
            max_stored_events: 50_000_000,
            max_clock_ahead: Duration::from_secs(300),
            max_clock_behind: Duration::from_secs(30 * 86_400),
            rollout_unreachable_after: Duration::from_secs(86_400),
        }
    }
}

/// `localhost`, the loopback addresses and this host's name.
pub fn default_server_names() -> Vec<String> {
    let mut names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    if let Ok(host) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        let host = host.trim();
        if !host.is_empty() && host != "localhost" {
            names.push(host.to_owned());
        }
    }
    names
}

/// Why a configuration was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Load(#[from] config::ConfigError),
    #[error("configuration: {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
}

fn invalid(field: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field,
        reason: reason.into(),
    }
}

impl ControllerConfig {
    /// Merges the layers. `overrides` are flag values as `(key, value)`.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: &[(&str, String)],
    ) -> Result<Self, ConfigError> {
        let known = known_keys();
        let env: HashMap<String, String> = env
            .into_iter()
            .filter(|(k, _)| {
                k.strip_prefix("RUSE_")
                    .is_some_and(|key| known.contains(&key.to_ascii_lowercase()))
            })
            .collect();
        let mut builder = config::Config::builder()
            .add_source(config::Config::try_from(&ControllerConfig::default())?);
        if let Some(path) = file {
            builder = builder.add_source(
                config::File::from(path)
                    .format(config::FileFormat::Toml)
                    .required(true),
            );
        }
        builder = builder.add_source(
            config::Environment::with_prefix("RUSE")
                .prefix_separator("_")
                .list_separator(",")
                .with_list_parse_key("server_names")
                .try_parsing(true)
                .source(Some(env)),
        );
        for (key, value) in overrides {
            builder = builder.set_override(*key, value.clone())?;
        }
        let mut config: ControllerConfig = builder.build()?.try_deserialize()?;
        if let Some(path) = &config.store_url_file {
            if config.store_url.is_some() {
                return Err(invalid(
                    "store_url_file",
                    "give store_url or store_url_file, not both",
                ));
            }
            let url = std::fs::read_to_string(path)
                .map_err(|e| invalid("store_url_file", format!("{}: {e}", path.display())))?;
            config.store_url = Some(StoreUrl(url.trim().to_owned()));
        }
        config.validate()
    }

    /// Checks the values make sense together.
    pub fn validate(self) -> Result<Self, ConfigError> {
        if self.server_names.is_empty() {
            return Err(invalid("server_names", "at least one name is needed"));
        }
        let min_ttl = Duration::from_secs(5);
        if self.agent_cert_ttl < min_ttl {
            return Err(invalid("agent_cert_ttl", "must be at least 5s"));
        }
        if self.admin_cert_ttl < min_ttl || self.server_cert_ttl < Duration::from_secs(3600) {
            return Err(invalid(
                "admin_cert_ttl / server_cert_ttl",
                "must be at least 5s / 1h",
            ));
        }
        if self.heartbeat_interval < Duration::from_millis(100) {
            return Err(invalid("heartbeat_interval", "must be at least 100ms"));
        }
        if self.offline_after <= self.heartbeat_interval {
            return Err(invalid(
                "offline_after",
                "must be longer than heartbeat_interval",
            ));
        }
        if !(64 << 10..=64 << 20).contains(&self.max_message_bytes) {
            return Err(invalid(
                "max_message_bytes",
                "must be between 64 KiB and 64 MiB",
            ));
        }
        if self.token_uses == 0 {
            return Err(invalid("token_uses", "must be at least 1"));
        }
        if self.disk_reserve_mb > 16 << 10 {
            return Err(invalid("disk_reserve_mb", "must be at most 16384 (16 GiB)"));
        }
        if self.enroll_failures_per_minute == 0 {
            return Err(invalid("enroll_failures_per_minute", "must be at least 1"));
        }
        if let Some(name) = &self.bootstrap_admin {
            name.parse::<ruse_proto::types::AdminName>()
                .map_err(|e| invalid("bootstrap_admin", e.to_string()))?;
        }
        if self.init_if_missing {
            self.trust_domain
                .parse::<ruse_proto::types::TrustDomain>()
                .map_err(|e| invalid("trust_domain", e.to_string()))?;
        }
        if self.agent_events_per_second == 0 || self.agent_event_burst == 0 {
            return Err(invalid(
                "agent_events_per_second / agent_event_burst",
                "must be at least 1",
            ));
        }
        if self.event_retention < Duration::from_secs(3600) || self.max_stored_events < 1_000 {
            return Err(invalid(
                "event_retention / max_stored_events",
                "must be at least 1h / 1000",
            ));
        }
        if self.incident_window < Duration::from_secs(1) {
            return Err(invalid("incident_window", "must be at least 1s"));
        }
        if self.output_retry_min < Duration::from_millis(10)
            || self.output_retry_max < self.output_retry_min
        {
            return Err(invalid(
                "output_retry_min / output_retry_max",
                "the first must be at least 10ms and the second at least the first",
            ));
        }
        let mut names = std::collections::HashSet::new();
        for o in &self.outputs {
            if !names.insert(o.name.as_str()) {
                return Err(invalid(
                    "outputs",
                    format!("two outputs are named {:?}", o.name),
                ));
            }
            crate::outputs::Output::try_from(o)
                .map_err(|reason| invalid("outputs", format!("output {:?}: {reason}", o.name)))?;
        }
        if let Some(admin) = self.admin_listen
            && admin == self.listen
            && admin.port() != 0
        {
            return Err(invalid("admin_listen", "must differ from listen"));
        }
        if let Some(name) = &self.name
            && (name.is_empty()
                || name.len() > 64
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-._:".contains(c)))
        {
            return Err(invalid("name", "1 to 64 of letters, digits and - . _ :"));
        }
        Ok(self)
    }

    /// This controller's name: `name`, or the host's name and the agent
    /// port (with a port chosen by the system, a random suffix instead).
    pub fn name_or_default(&self) -> String {
        if let Some(name) = &self.name {
            return name.clone();
        }
        let host = std::env::var("HOSTNAME")
            .ok()
            .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "controller".into());
        match self.listen.port() {
            0 => format!("{host}-{}", &ruse_proto::types::new_ulid()[20..]),
            port => format!("{host}:{port}"),
        }
    }

    /// Where the store is: PostgreSQL when `store_url` is set, else sled
    /// under the data directory.
    pub fn store_location(&self) -> StoreLocation {
        match &self.store_url {
            Some(url) => StoreLocation::Postgres(crate::store::PgOptions {
                url: url.0.clone(),
                ca_file: self.store_ca_file.clone(),
            }),
            None => StoreLocation::Sled {
                dir: crate::layout::store(&self.data_dir),
                cache_bytes: self.store_cache_mb.saturating_mul(1 << 20),
                disk_reserve: Some((
                    self.data_dir.clone(),
                    self.disk_reserve_mb.saturating_mul(1 << 20),
                )),
            },
        }
    }

    pub fn ca_cert_path(&self) -> PathBuf {
        self.ca_cert_file
            .clone()
            .unwrap_or_else(|| crate::layout::ca_cert(&self.data_dir))
    }

    pub fn ca_key_path(&self) -> PathBuf {
        self.ca_key_file
            .clone()
            .unwrap_or_else(|| crate::layout::ca_key(&self.data_dir))
    }
}

/// Every top-level key, from the serialised defaults.
fn known_keys() -> Vec<String> {
    match serde_json::to_value(ControllerConfig::default()) {
        Ok(serde_json::Value::Object(map)) => map.keys().cloned().collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn layers_apply_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("controller.toml");
        std::fs::write(
            &file,
            "listen = \"127.0.0.1:9000\"\nheartbeat_interval = \"10s\"\nlog_format = \"json\"\n",
        )
        .unwrap();
        let config = ControllerConfig::load(
            Some(&file),
            env(&[
                ("RUSE_HEARTBEAT_INTERVAL", "20s"),
                ("RUSE_SERVER_NAMES", "ruse.svc,ruse.svc.cluster.local"),
                ("RUSE_CONTEXT_FILE", "/ignored/because/unknown"),
                ("PATH", "/bin"),
            ]),
            &[("listen", "127.0.0.1:9100".into())],
        )
        .unwrap();
        assert_eq!(config.listen, "127.0.0.1:9100".parse().unwrap());
        assert_eq!(config.heartbeat_interval, Duration::from_secs(20));
        assert_eq!(config.log_format, LogFormat::Json);
        assert_eq!(config.server_names, ["ruse.svc", "ruse.svc.cluster.local"]);
        assert_eq!(config.agent_cert_ttl, Duration::from_secs(86_400));
    }

    #[test]
    fn unknown_file_keys_and_bad_values_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "lisen = \"127.0.0.1:1\"\n").unwrap();
        let err = ControllerConfig::load(Some(&file), env(&[]), &[]).unwrap_err();
        assert!(err.to_string().contains("lisen"), "{err}");

        let err = ControllerConfig::load(None, env(&[("RUSE_HEARTBEAT_INTERVAL", "soon")]), &[])
            .unwrap_err();
        assert!(err.to_string().contains("duration"), "{err}");

        let err = ControllerConfig::load(
            None,
            env(&[
                ("RUSE_OFFLINE_AFTER", "10s"),
                ("RUSE_HEARTBEAT_INTERVAL", "30s"),
            ]),
            &[],
        )
        .unwrap_err();
        assert!(err.to_string().contains("offline_after"), "{err}");

        let missing = dir.path().join("missing.toml");
        assert!(ControllerConfig::load(Some(&missing), env(&[]), &[]).is_err());
    }

    #[test]
    fn the_store_url_comes_from_the_environment_and_its_password_is_never_shown() {
        let config = ControllerConfig::load(
            None,
            env(&[("RUSE_STORE_URL", "postgres://ruse:hunter2@db:5432/ruse")]),
            &[],
        )
        .unwrap();
        match config.store_location() {
            StoreLocation::Postgres(options) => {
                assert_eq!(options.url, "postgres://ruse:hunter2@db:5432/ruse");
            }
            other => panic!("{other:?}"),
        }
        let shown = format!("{config:?} {:?}", config.store_location());
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(
            shown.contains("postgres://ruse:***@db:5432/ruse"),
            "{shown}"
        );
        let embedded = ControllerConfig::load(None, env(&[]), &[]).unwrap();
        assert!(matches!(
            embedded.store_location(),
            StoreLocation::Sled { .. }
        ));
    }

    #[test]
    fn the_store_url_can_come_from_a_file_but_not_from_both() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("uri");
        std::fs::write(&file, "postgresql://ruse:hunter2@ruse-db-rw:5432/ruse\n").unwrap();
        let path = file.display().to_string();
        let config =
            ControllerConfig::load(None, env(&[("RUSE_STORE_URL_FILE", &path)]), &[]).unwrap();
        match config.store_location() {
            StoreLocation::Postgres(options) => {
                assert_eq!(
                    options.url,
                    "postgresql://ruse:hunter2@ruse-db-rw:5432/ruse"
                );
            }
            other => panic!("{other:?}"),
        }
        let both = ControllerConfig::load(
            None,
            env(&[
                ("RUSE_STORE_URL_FILE", &path),
                ("RUSE_STORE_URL", "postgres://ruse@db/ruse"),
            ]),
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(both.contains("not both"), "{both}");
        let missing = ControllerConfig::load(
            None,
            env(&[("RUSE_STORE_URL_FILE", "/nonexistent/uri")]),
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(missing.contains("/nonexistent/uri"), "{missing}");
    }

    #[test]
    fn the_example_config_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/controller.toml");
        let config = ControllerConfig::load(Some(&path), env(&[]), &[]).unwrap();
        assert_eq!(config.server_names, ["ruse.example.org", "10.0.0.5"]);
        let mut expected = ControllerConfig {
            server_names: config.server_names.clone(),
            ..ControllerConfig::default()
        };
        expected.listen = config.listen;
        // Outputs, the metrics and console addresses are examples, not
        // defaults.
        assert_eq!(config.outputs.len(), 4);
        for o in &config.outputs {
            crate::outputs::Output::try_from(o).unwrap();
        }
        expected.outputs = config.outputs.clone();
        expected.metrics_listen = config.metrics_listen;
        expected.console_listen = config.console_listen;
        assert_eq!(config, expected, "the example shows the defaults");
    }

    /// deploy/examples/controller.toml says each key shows its default
    /// unless its comment says otherwise: every value that differs from
    /// the default is one whose comment says so.
    #[test]
    fn the_example_config_shows_defaults_or_says_otherwise() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/controller.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let example: toml::Table = text.parse().unwrap();
        let defaults = serde_json::to_value(ControllerConfig::default()).unwrap();
        let loaded = ControllerConfig::load(Some(&path), Vec::new(), &[]).unwrap();
        let loaded = serde_json::to_value(loaded).unwrap();
        for key in example.keys() {
            if loaded[key] == defaults[key] {
                continue;
            }
            // The comment lines right above the key.
            let lines: Vec<&str> = text.lines().collect();
            let at = lines
                .iter()
                .position(|l| {
                    l.starts_with(&format!("{key} =")) || l.starts_with(&format!("[[{key}]]"))
                })
                .unwrap();
            let mut comment: Vec<&str> = lines[..at]
                .iter()
                .rev()
                .take_while(|l| l.starts_with('#'))
                .map(|l| l.trim_start_matches('#').trim())
                .collect();
            comment.reverse();
            let comment = comment.join(" ");
            assert!(
                comment.contains("Default:") || comment.contains("not the default"),
                "{key} = {} differs from the default {} and its comment does not say so",
                loaded[key],
                defaults[key]
            );
        }
    }
}

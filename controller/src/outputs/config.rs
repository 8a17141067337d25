//! Output settings: the configuration file's form ([`OutputConfig`],
//! strings as an operator writes them) and the checked, typed form the
//! controller uses ([`Output`]).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::model::Severity;

/// One incident output.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputConfig {
    /// Shown in `rusectl describe incident` and drills.
    pub name: String,
    /// `syslog`, `webhook`, `splunk-hec`, `elasticsearch` or `file`.
    #[serde(rename = "type")]
    pub kind: String,
    /// syslog: `host:port`.
    #[serde(default)]
    pub address: Option<String>,
    /// syslog: `udp`, `tcp` or `tls` (RFC 5424 with a CEF payload).
    #[serde(default)]
    pub transport: Option<String>,
    /// syslog over TLS and HTTPS webhooks: CA certificates (PEM) to trust
    /// instead of the built-in roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// webhook: `http://` or `https://` URL. Chat and ticket webhooks
    /// carry their secret in the URL: errors, logs and `rusectl` show only
    /// its scheme, host and port.
    #[serde(default)]
    pub url: Option<String>,
    /// webhook: a file holding the URL instead (a mounted Kubernetes
    /// Secret), read when the configuration is checked.
    #[serde(default)]
    pub url_file: Option<PathBuf>,
    /// webhook: the name of an environment variable holding the URL (a
    /// Secret mapped into the controller's environment).
    #[serde(default)]
    pub url_env: Option<String>,
    /// webhook: `json` (the incident), `slack`, `teams` or `ocsf` (an OCSF
    /// Detection Finding); syslog: `cef` (default) or `leef` (IBM QRadar's
    /// LEEF 2.0); file: `json` (default), `ecs` (Elastic Common Schema
    /// documents, for Filebeat or Elastic Agent to ship) or `ocsf`;
    /// splunk-hec: `json` (default) or `ocsf` (the event is the finding).
    #[serde(default)]
    pub format: Option<String>,
    /// file: JSON lines appended here.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// webhook: a body of your own (ServiceNow, Jira, Google Chat,
    /// Mattermost…): JSON in which `{{name}}` stands for an incident's
    /// value, inserted as the contents of a JSON string (so placed inside
    /// quotes); no logic, no code. Or `template_file`. See
    /// docs/incidents.md for the names.
    #[serde(default)]
    pub template: Option<String>,
    #[serde(default)]
    pub template_file: Option<PathBuf>,
    /// Only incidents at least this severe (`low`, `medium`, `high`,
    /// `critical`); default `low`.
    #[serde(default)]
    pub min_severity: Option<String>,
    /// splunk-hec: the HTTP Event Collector token; elasticsearch: the API
    /// key in its encoded form (base64 of `id:key`, as Elasticsearch's
    /// create-API-key call returns it). Or a file holding it
    /// (`token_file`, a mounted Secret). Never logged or shown.
    #[serde(default)]
    pub token: Option<String>,
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// Or the name of an environment variable holding it.
    #[serde(default)]
    pub token_env: Option<String>,
    /// splunk-hec: the index (default: the token's), `source` (default
    /// `ruse`) and `sourcetype` (default `ruse:incident`); elasticsearch:
    /// the data stream (default `logs-ruse.incidents-default`).
    #[serde(default)]
    pub index: Option<String>,
    #[serde(default)]
    pub source: Option<String>,
    #[serde(default)]
    pub sourcetype: Option<String>,
    /// splunk-hec: wait for indexer acknowledgement before a notice leaves
    /// the queue (default true; the token must have it enabled).
    #[serde(default)]
    pub ack: Option<bool>,
    /// smtp: `starttls` (default, port 587), `implicit` (port 465) or
    /// `none` (a relay on this host only).
    #[serde(default)]
    pub tls: Option<String>,
    /// smtp: the account to authenticate as, and its password (or
    /// `password_file`, `password_env`); never logged or shown.
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    #[serde(default)]
    pub password_env: Option<String>,
    /// smtp: the sender and the recipients.
    #[serde(default)]
    pub from: Option<String>,
    #[serde(default)]
    pub to: Vec<String>,
    /// smtp: at most this many mails per hour (default 30); past it,
    /// notices wait in the queue for the next free slot.
    #[serde(default)]
    pub max_per_hour: Option<u32>,
    /// smtp: incidents less severe than this (`medium`, `high` or
    /// `critical`) are not mailed one by one but listed together in a
    /// digest every `digest_every` (default `1h`). Off by default.
    #[serde(default)]
    pub digest_below: Option<String>,
    #[serde(default)]
    pub digest_every: Option<String>,
    /// smtp: the console's base URL (`https://…`): mails link to each
    /// incident there.
    #[serde(default)]
    pub console_url: Option<String>,
    /// Also every raw event (each touch, decoy login, scan…), not only
    /// incidents: file (json, ecs, ocsf), webhook (json, ocsf),
    /// splunk-hec and elasticsearch. Default false. `min_severity` does
    /// not apply to events: a SIEM gets all of them, the allowed ones
    /// marked.
    #[serde(default)]
    pub events: Option<bool>,
    /// elasticsearch with `events = true`: the data stream raw events go
    /// to (default `logs-ruse.events-default`).
    #[serde(default)]
    pub events_index: Option<String>,
}

/// A secret from the configuration: shown as `<redacted>` by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Why an output's settings are wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct OutputConfigError(String);

impl From<&str> for OutputConfigError {
    fn from(s: &str) -> Self {
        OutputConfigError(s.to_owned())
    }
}

impl From<String> for OutputConfigError {
    fn from(s: String) -> Self {
        OutputConfigError(s)
    }
}

/// An output as the controller uses it: checked once, typed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    pub name: String,
    pub target: Target,
    pub min_severity: Severity,
    /// Raw events go out too, not only incidents.
    pub events: bool,
}

/// Where an output sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// RFC 5424 with a CEF or LEEF payload to `host:port`.
    Syslog {
        address: String,
        transport: Transport,
        format: SyslogFormat,
    },
    Webhook {
        url: hyper::Uri,
        format: WebhookFormat,
        /// CA certificates for an `https` URL.
        ca_file: Option<PathBuf>,
    },
    /// JSON lines appended to a file.
    File { path: PathBuf, format: FileFormat },
    /// Mail through an SMTP server.
    Smtp {
        settings: super::smtp::SmtpSettings,
        ca_file: Option<PathBuf>,
        max_per_hour: u32,
        /// Incidents below this severity go into a digest mail, every
        /// so often.
        digest: Option<(Severity, std::time::Duration)>,
        /// The console's base URL, for links.
        console_url: Option<String>,
    },
    /// Elasticsearch's `_bulk` API at `url` (its base, such as
    /// `https://es:9200`), into the data stream `index`.
    Elasticsearch {
        url: hyper::Uri,
        api_key: Secret,
        index: String,
        /// The data stream of raw events.
        events_index: String,
        ca_file: Option<PathBuf>,
    },
    /// Splunk's HTTP Event Collector at `url` (its base, such as
    /// `https://splunk:8088`).
    SplunkHec {
        url: hyper::Uri,
        token: Secret,
        index: Option<String>,
        source: String,
        sourcetype: String,
        ca_file: Option<PathBuf>,
        ack: bool,
        /// The event is an OCSF Detection Finding, not the incident.
        ocsf: bool,
    },
}

/// How mail reaches the SMTP server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpTls {
    StartTls,
    Implicit,
    None,
}

/// How syslog messages travel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
    /// With the receiver's CA certificates.
    Tls {
        ca_file: PathBuf,
    },
}

/// The payload of a syslog message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyslogFormat {
    /// ArcSight's Common Event Format.
    Cef,
    /// IBM QRadar's Log Event Extended Format, version 2.0.
    Leef,
}

/// What a webhook body looks like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebhookFormat {
    /// The incident as JSON.
    Json,
    Slack,
    Teams,
    /// An OCSF Detection Finding.
    Ocsf,
    /// PagerDuty's Events API v2, with this routing key: a page per
    /// incident (its id the dedup key), acknowledged and resolved as the
    /// incident is.
    PagerDuty {
        routing_key: Secret,
    },
    /// The operator's template (`{{name}}` placeholders).
    Template(String),
}

/// What a file output's lines are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileFormat {
    /// The notice and the incident.
    Json,
    /// An Elastic Common Schema alert document.
    Ecs,
    /// An OCSF Detection Finding.
    Ocsf,
}

impl Target {
    /// `syslog`, `webhook` or `file`, as the configuration names it.
    pub fn kind(&self) -> &'static str {
        match self {
            Target::Syslog { .. } => "syslog",
            Target::Webhook { .. } => "webhook",
            Target::File { .. } => "file",
            Target::SplunkHec { .. } => "splunk-hec",
            Target::Elasticsearch { .. } => "elasticsearch",
            Target::Smtp { .. } => "smtp",
        }
    }

    /// Whether raw events have a form here (a SIEM's or a JSON one; chat
    /// cards, pages, mails and syslog lines are for incidents).
    pub fn carries_events(&self) -> bool {
        match self {
            Target::File { .. } | Target::SplunkHec { .. } | Target::Elasticsearch { .. } => true,
            Target::Webhook { format, .. } => {
                matches!(format, WebhookFormat::Json | WebhookFormat::Ocsf)
            }
            Target::Syslog { .. } | Target::Smtp { .. } => false,
        }
    }

    /// The CA certificates a TLS connection of this output trusts.
    pub fn ca_file(&self) -> Option<&PathBuf> {
        match self {
            Target::Syslog {
                transport: Transport::Tls { ca_file },
                ..
            } => Some(ca_file),
            Target::Webhook { ca_file, .. }
            | Target::SplunkHec { ca_file, .. }
            | Target::Elasticsearch { ca_file, .. }
            | Target::Smtp { ca_file, .. } => ca_file.as_ref(),
            _ => None,
        }
    }
}

impl TryFrom<&OutputConfig> for Output {
    type Error = OutputConfigError;

    fn try_from(o: &OutputConfig) -> Result<Output, OutputConfigError> {
        if o.name.is_empty()
            || o.name.len() > 63
            || !o
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err("name: 1 to 63 letters, digits, - or _".into());
        }
        let min_severity = match &o.min_severity {
            Some(s) => parse_severity(s).map_err(|e| format!("min_severity {e}"))?,
            None => Severity::Low,
        };
        let target = match o.kind.as_str() {
            "syslog" => {
                let address = o
                    .address
                    .clone()
                    .ok_or("syslog needs address = \"host:port\"")?;
                if !address.contains(':') {
                    return Err(format!("address {address:?} needs a port").into());
                }
                let transport = match o.transport.as_deref().unwrap_or("udp") {
                    "udp" => Transport::Udp,
                    "tcp" => Transport::Tcp,
                    "tls" => Transport::Tls {
                        ca_file: o
                            .ca_file
                            .clone()
                            .ok_or("syslog over TLS needs ca_file (the receiver's CA)")?,
                    },
                    other => {
                        return Err(format!("transport {other:?}: expected udp, tcp or tls").into());
                    }
                };
                let format = match o.format.as_deref().unwrap_or("cef") {
                    "cef" => SyslogFormat::Cef,
                    "leef" => SyslogFormat::Leef,
                    other => {
                        return Err(format!("format {other:?}: expected cef or leef").into());
                    }
                };
                Target::Syslog {
                    address,
                    transport,
                    format,
                }
            }
            "webhook" => {
                let uri = http_url(o, "webhook")?;
                let template = inline_file_or_env(
                    "webhook",
                    "template",
                    o.template.as_ref(),
                    o.template_file.as_ref(),
                    None,
                )?;
                let format = match o.format.as_deref().unwrap_or(if template.is_some() {
                    "template"
                } else {
                    "json"
                }) {
                    "template" => {
                        let template =
                            template.ok_or("format template needs template (or template_file)")?;
                        super::format::check_template(&template)
                            .map_err(|e| format!("template: {e}"))?;
                        WebhookFormat::Template(template)
                    }
                    _ if template.is_some() => {
                        return Err(
                            "a template is the body: leave format out (or set it to template)"
                                .into(),
                        );
                    }
                    "pagerduty" => WebhookFormat::PagerDuty {
                        routing_key: secret(o, "webhook (pagerduty)")?,
                    },
                    "json" => WebhookFormat::Json,
                    "slack" => WebhookFormat::Slack,
                    "teams" => WebhookFormat::Teams,
                    "ocsf" => WebhookFormat::Ocsf,
                    other => {
                        return Err(format!(
                            "format {other:?}: expected json, slack, teams, ocsf, pagerduty or template"
                        )
                        .into());
                    }
                };
                Target::Webhook {
                    url: uri,
                    format,
                    ca_file: o.ca_file.clone(),
                }
            }
            "splunk-hec" => {
                let url = http_url(o, "splunk-hec")?;
                let token = secret(o, "splunk-hec")?;
                Target::SplunkHec {
                    url,
                    token,
                    index: o.index.clone(),
                    source: o.source.clone().unwrap_or_else(|| "ruse".into()),
                    sourcetype: o
                        .sourcetype
                        .clone()
                        .unwrap_or_else(|| "ruse:incident".into()),
                    ca_file: o.ca_file.clone(),
                    ack: o.ack.unwrap_or(true),
                    ocsf: match o.format.as_deref().unwrap_or("json") {
                        "json" => false,
                        "ocsf" => true,
                        other => {
                            return Err(format!("format {other:?}: expected json or ocsf").into());
                        }
                    },
                }
            }
            "elasticsearch" => {
                let url = http_url(o, "elasticsearch")?;
                let api_key = secret(o, "elasticsearch")?;
                let index = data_stream(o.index.as_deref(), "logs-ruse.incidents-default")?;
                let events_index =
                    data_stream(o.events_index.as_deref(), "logs-ruse.events-default")?;
                if events_index == index {
                    return Err(
                        "elasticsearch: events_index must differ from index (raw events and incidents map differently)"
                            .into(),
                    );
                }
                Target::Elasticsearch {
                    url,
                    api_key,
                    index,
                    events_index,
                    ca_file: o.ca_file.clone(),
                }
            }
            "smtp" => smtp(o)?,
            "file" => Target::File {
                path: o.path.clone().ok_or("file needs path")?,
                format: match o.format.as_deref().unwrap_or("json") {
                    "json" => FileFormat::Json,
                    "ecs" => FileFormat::Ecs,
                    "ocsf" => FileFormat::Ocsf,
                    other => {
                        return Err(format!("format {other:?}: expected json, ecs or ocsf").into());
                    }
                },
            },
            other => {
                return Err(format!(
                    "type {other:?}: expected syslog, webhook, splunk-hec, elasticsearch, smtp or file"
                )
                .into());
            }
        };
        let events = o.events.unwrap_or(false);
        if events && !target.carries_events() {
            return Err(format!(
                "events = true: raw events go to file, webhook (json or ocsf), splunk-hec and elasticsearch outputs, not to {}",
                match &target {
                    Target::Webhook { .. } => "a chat, PagerDuty or template webhook",
                    other => other.kind(),
                }
            )
            .into());
        }
        if o.events_index.is_some() && !(events && matches!(target, Target::Elasticsearch { .. })) {
            return Err("events_index is for an elasticsearch output with events = true".into());
        }
        Ok(Output {
            name: o.name.clone(),
            target,
            min_severity,
            events,
        })
    }
}

/// `name`, or `default`, if it is a valid Elasticsearch data stream name.
fn data_stream(name: Option<&str>, default: &str) -> Result<String, OutputConfigError> {
    let index = name.unwrap_or(default);
    // Elasticsearch's rules for index and data stream names.
    if index.is_empty()
        || index.len() > 255
        || index.starts_with(['-', '_', '+', '.'])
        || index
            .chars()
            .any(|c| c.is_ascii_uppercase() || " \\/*?\"<>|,#:".contains(c) || c.is_control())
    {
        return Err(format!("elasticsearch: {index:?} is not a data stream name").into());
    }
    Ok(index.to_owned())
}

/// An e-mail address as SMTP's envelope needs it: one `local@domain`,
/// nothing that could end the command it is in.
fn mail_address(a: &str) -> bool {
    a.split_once('@')
        .is_some_and(|(l, d)| !l.is_empty() && d.contains('.'))
        && a.len() <= 254
        && a.chars()
            .all(|c| c.is_ascii_graphic() && !"<>,;\"\\".contains(c))
}

fn smtp(o: &OutputConfig) -> Result<Target, OutputConfigError> {
    let address = o
        .address
        .clone()
        .ok_or("smtp needs address = \"host:port\"")?;
    if !address.contains(':') {
        return Err(format!("address {address:?} needs a port").into());
    }
    let tls = match o.tls.as_deref().unwrap_or("starttls") {
        "starttls" => SmtpTls::StartTls,
        "implicit" => SmtpTls::Implicit,
        "none" => SmtpTls::None,
        other => {
            return Err(format!("tls {other:?}: expected starttls, implicit or none").into());
        }
    };
    if tls != SmtpTls::None && o.ca_file.is_none() {
        return Err("smtp with TLS needs ca_file (the server's CA, or the system bundle)".into());
    }
    let from = o
        .from
        .clone()
        .ok_or("smtp needs from (the sender's address)")?;
    if !mail_address(&from) {
        return Err(format!("from {from:?} is not an e-mail address").into());
    }
    if o.to.is_empty() {
        return Err("smtp needs to = [\"soc@…\"] (one recipient or more)".into());
    }
    if let Some(bad) = o.to.iter().find(|a| !mail_address(a)) {
        return Err(format!("to: {bad:?} is not an e-mail address").into());
    }
    let password = inline_file_or_env(
        "smtp",
        "password",
        o.password.as_ref(),
        o.password_file.as_ref(),
        o.password_env.as_ref(),
    )?;
    if password.is_some() != o.username.is_some() {
        return Err("smtp: username and password go together".into());
    }
    if password.is_some() && tls == SmtpTls::None {
        return Err("smtp: a password is never sent without TLS".into());
    }
    let max_per_hour = o.max_per_hour.unwrap_or(30);
    if max_per_hour == 0 {
        return Err("max_per_hour must be at least 1".into());
    }
    let digest = match (&o.digest_below, &o.digest_every) {
        (None, None) => None,
        (None, Some(_)) => return Err("digest_every goes with digest_below".into()),
        (Some(below), every) => {
            let below = parse_severity(below).map_err(|e| format!("digest_below {e}"))?;
            if below == Severity::Low {
                return Err("digest_below low would hold nothing: medium, high or critical".into());
            }
            let every = match every {
                Some(e) => ruse_proto::types::parse_duration(e)
                    .map_err(|e| format!("digest_every: {e}"))?,
                None => std::time::Duration::from_secs(3600),
            };
            if every < std::time::Duration::from_secs(1)
                || every > std::time::Duration::from_secs(7 * 86_400)
            {
                return Err("digest_every: between 1s and 7d".into());
            }
            Some((below, every))
        }
    };
    let console_url = match &o.console_url {
        None => None,
        Some(u) => {
            let uri: hyper::Uri = u
                .parse()
                .map_err(|_| format!("console_url {u:?} is not a URL"))?;
            if !matches!(uri.scheme_str(), Some("https" | "http")) || uri.host().is_none() {
                return Err(format!("console_url {u:?}: an http(s) URL with a host").into());
            }
            Some(u.trim_end_matches('/').to_owned())
        }
    };
    Ok(Target::Smtp {
        settings: super::smtp::SmtpSettings {
            address,
            tls,
            username: o.username.clone(),
            password: password.map(Secret),
            from,
            to: o.to.clone(),
        },
        ca_file: o.ca_file.clone(),
        max_per_hour,
        digest,
        console_url,
    })
}

/// A setting given inline (`name`), in a file (`name_file`) or in an
/// environment variable (`name_env`): at most one of them.
fn inline_file_or_env(
    kind: &str,
    name: &str,
    inline: Option<&String>,
    file: Option<&PathBuf>,
    env: Option<&String>,
) -> Result<Option<String>, OutputConfigError> {
    match (inline, file, env) {
        (None, None, None) => Ok(None),
        (Some(v), None, None) => Ok(Some(v.clone())),
        (None, Some(path), None) => Ok(Some(
            std::fs::read_to_string(path)
                .map_err(|e| format!("{name}_file {}: {e}", path.display()))?
                .trim()
                .to_owned(),
        )),
        (None, None, Some(var)) => match std::env::var(var) {
            Ok(v) => Ok(Some(v.trim().to_owned())),
            Err(_) => Err(format!("{name}_env: the environment variable {var} is not set").into()),
        },
        _ => Err(format!("{kind}: one of {name}, {name}_file or {name}_env, not several").into()),
    }
}

/// The `token` (or `token_file`, `token_env`) of an output: one word,
/// never echoed.
fn secret(o: &OutputConfig, kind: &str) -> Result<Secret, OutputConfigError> {
    let token = inline_file_or_env(
        kind,
        "token",
        o.token.as_ref(),
        o.token_file.as_ref(),
        o.token_env.as_ref(),
    )?
    .ok_or_else(|| format!("{kind} needs token (or token_file, token_env)"))?;
    if token.is_empty() || token.chars().any(|c| c.is_control() || c == ' ') {
        return Err(format!("{kind}: the token is empty or not one word").into());
    }
    Ok(Secret(token))
}

/// The `url` (or `url_file`) of an HTTP output, checked. Never echoes
/// the URL: a webhook's path may be its secret.
fn http_url(o: &OutputConfig, kind: &str) -> Result<hyper::Uri, OutputConfigError> {
    let url = inline_file_or_env(
        kind,
        "url",
        o.url.as_ref(),
        o.url_file.as_ref(),
        o.url_env.as_ref(),
    )?
    .ok_or_else(|| format!("{kind} needs url (or url_file, url_env)"))?;
    // Never echo the URL: its path may be the webhook's secret.
    let uri: hyper::Uri = url
        .parse()
        .map_err(|e| format!("the {kind} url is not a URL ({e})"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            if o.ca_file.is_none() {
                return Err(format!("an https {kind} needs ca_file (the receiver's CA)").into());
            }
        }
        other => {
            return Err(format!(
                "the {kind} url must be http:// or https://, not {}",
                other.map_or("a relative URL".to_owned(), |s| format!("{s}://"))
            )
            .into());
        }
    }
    if uri.host().is_none() {
        return Err(format!("the {kind} url has no host").into());
    }
    Ok(uri)
}

/// `scheme://host[:port]` of a URL (no user information, path or query):
/// what errors may show of a webhook.
pub(super) fn origin(uri: &hyper::Uri) -> String {
    let port = uri.port_u16().map(|p| format!(":{p}")).unwrap_or_default();
    format!(
        "{}://{}{port}",
        uri.scheme_str().unwrap_or("http"),
        uri.host().unwrap_or_default()
    )
}

fn parse_severity(s: &str) -> Result<Severity, OutputConfigError> {
    Severity::ALL
        .into_iter()
        .find(|v| v.as_str() == s)
        .ok_or_else(|| format!("{s:?}: expected low, medium, high or critical").into())
}

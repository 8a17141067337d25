//! Manifests: `Campaign` and `Decoy` documents in YAML or JSON, several per
//! file, parsed and checked before anything changes.
//!
//! ```yaml
//! kind: Campaign
//! name: icu-workstations
//! selector: {site: icu, role: workstation}
//! lures:
//!   - template: ssh-key
//!     decoy: pacs-archive02
//!   - template: patient-csv
//!     path: "~/Documents/Exports"
//! rollout: {waves: ["5%", "25%", "100%"], max_failure_ratio: 0.1}
//! rotate_every: 30d
//! ---
//! kind: Decoy
//! name: pacs-archive02
//! selector: {role: decoy}
//! address: 10.20.0.15
//! services: [{protocol: ssh, port: 22}, {protocol: dicom, port: 104}]
//! ```
//!
//! Errors name the document (1-based), its kind and name, the field and
//! the reason.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use ruse_proto::types::{Labels, UnixMs, parse_duration};

use crate::model::{
    AllowRule, Campaign, Cidr, Decoy, LureSlot, ServiceManifest, Suppression, Template,
};

mod decoy;

use self::decoy::check_decoy;
pub use self::decoy::{PROTOCOLS, TELNET_DEVICES};

/// At most this many documents in one apply.
pub const MAX_DOCUMENTS: usize = 256;
/// At most this many lures in one campaign.
pub const MAX_LURES: usize = 64;
/// The largest manifest file accepted.
pub const MAX_MANIFEST_BYTES: usize = 1 << 20;
/// How deeply a manifest may nest, estimated before parsing (see
/// [`check_shape`]); real manifests nest four or five levels.
pub const MAX_NESTING: usize = 64;

/// A validation failure, precise enough to fix the file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ManifestError {
    /// 1-based position in the file; 0 for the file as a whole.
    pub document: usize,
    pub kind: Option<String>,
    pub name: Option<String>,
    pub field: String,
    pub reason: String,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.document > 0 {
            write!(f, "document {}", self.document)?;
            match (&self.kind, &self.name) {
                (Some(k), Some(n)) => write!(f, " ({k} {n})")?,
                (Some(k), None) => write!(f, " ({k})")?,
                _ => {}
            }
            f.write_str(": ")?;
        }
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        f.write_str(&self.reason)
    }
}

/// A campaign as written by the operator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CampaignManifest {
    #[serde(
        rename = "apiVersion",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub api_version: Option<String>,
    pub kind: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    #[serde(default)]
    pub selector: BTreeMap<String, String>,
    pub lures: Vec<LureManifest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutManifest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotate_every: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LureManifest {
    pub template: String,
    /// Distinguishes two lures of one template in a campaign.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decoy: Option<String>,
    /// A directory (for file lures) or file path; `~/` means each home.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub params: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutManifest {
    #[serde(default = "default_waves")]
    pub waves: Vec<String>,
    #[serde(default = "default_failure_ratio")]
    pub max_failure_ratio: f64,
}

fn default_waves() -> Vec<String> {
    vec!["100%".into()]
}

fn default_failure_ratio() -> f64 {
    0.1
}

/// A decoy as written by the operator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecoyManifest {
    #[serde(
        rename = "apiVersion",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub api_version: Option<String>,
    pub kind: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    #[serde(default)]
    pub selector: BTreeMap<String, String>,
    /// What lures pointing at this decoy name as its address (an IP address
    /// or a DNS name); default: the decoy's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// The local address the agent binds; default: every address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    pub services: Vec<ServiceManifest>,
}

/// A known benign reader, as written by the operator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllowRuleManifest {
    #[serde(
        rename = "apiVersion",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub api_version: Option<String>,
    pub kind: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// Agents the rule applies to; empty: all.
    #[serde(default)]
    pub selector: BTreeMap<String, String>,
    /// Executable path; a trailing `*` matches a prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
}

/// What not to raise, as written by the operator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SuppressionManifest {
    #[serde(
        rename = "apiVersion",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub api_version: Option<String>,
    pub kind: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// Agents (reporting the event) it applies to; empty: all.
    #[serde(default)]
    pub selector: BTreeMap<String, String>,
    /// A client address or CIDR range (decoy events).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Executable path; a trailing `*` matches a prefix (lure events).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    /// When it stops applying: `2026-12-31` or `2026-12-31T18:00:00Z`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
}

/// One checked document of a file.
#[derive(Debug, Clone, PartialEq)]
pub enum Document {
    Campaign(Campaign),
    Decoy(Decoy),
    AllowRule(AllowRule),
    Suppression(Suppression),
}

impl Document {
    pub fn kind(&self) -> &'static str {
        match self {
            Document::Campaign(_) => "Campaign",
            Document::Decoy(_) => "Decoy",
            Document::AllowRule(_) => "AllowRule",
            Document::Suppression(_) => "Suppression",
        }
    }

    pub fn name(&self) -> &str {
        match self {
            Document::Campaign(c) => &c.name,
            Document::Decoy(d) => &d.name,
            Document::AllowRule(r) => &r.name,
            Document::Suppression(r) => &r.name,
        }
    }
}

/// Resource names: DNS-label style, as Kubernetes names.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a valid name: use 1 to 63 lowercase letters, digits and '-', not starting or ending with '-'"
        ))
    }
}

/// A checked document and its 1-based position in the file.
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed {
    pub number: usize,
    pub doc: Document,
}

impl Parsed {
    /// An error about this document.
    pub fn error(&self, field: impl Into<String>, reason: impl Into<String>) -> ManifestError {
        ManifestError {
            document: self.number,
            kind: Some(self.doc.kind().to_owned()),
            name: Some(self.doc.name().to_owned()),
            field: field.into(),
            reason: reason.into(),
        }
    }
}

fn whole(reason: String) -> ManifestError {
    ManifestError {
        document: 0,
        kind: None,
        name: None,
        field: String::new(),
        reason,
    }
}

/// Refuses a file too large or nested too deeply before any YAML parser
/// sees it: 120 KB of 60,000 nested brackets once took the parser 21 s.
/// Depth is over-estimated cheaply per line: flow brackets open outside
/// quotes and comments, plus block indentation, plus a run of `- ` (each
/// one a nested sequence).
pub fn check_shape(content: &str) -> Result<(), ManifestError> {
    if content.len() > MAX_MANIFEST_BYTES {
        return Err(whole(format!(
            "the file is {} bytes; at most {MAX_MANIFEST_BYTES} are accepted",
            content.len()
        )));
    }
    let too_deep = |line: usize| {
        whole(format!(
            "line {line} nests deeper than {MAX_NESTING} levels; manifests need a handful"
        ))
    };
    let mut flow = 0usize;
    for (n, line) in content.lines().enumerate() {
        let indent = line.len() - line.trim_start_matches([' ', '\t']).len();
        let mut rest = &line[indent..];
        let mut dashes = 0;
        while let Some(r) = rest.strip_prefix("- ") {
            dashes += 1;
            rest = r.trim_start_matches(' ');
        }
        let mut quote: Option<char> = None;
        for c in rest.chars() {
            match (quote, c) {
                (Some(q), c) if c == q => quote = None,
                (Some(_), _) => {}
                (None, '"' | '\'') => quote = Some(c),
                (None, '#') => break,
                (None, '[' | '{') => flow += 1,
                (None, ']' | '}') => flow = flow.saturating_sub(1),
                _ => {}
            }
            if flow > MAX_NESTING {
                return Err(too_deep(n + 1));
            }
        }
        // One space per level is the least YAML allows.
        if indent / 2 + dashes + flow > MAX_NESTING || indent > 4 * MAX_NESTING {
            return Err(too_deep(n + 1));
        }
    }
    Ok(())
}

/// Splits a file into documents and checks each one. Nothing is applied.
pub fn parse(content: &str) -> Result<Vec<Parsed>, ManifestError> {
    check_shape(content)?;
    let mut values = Vec::new();
    for (i, doc) in serde_norway::Deserializer::from_str(content).enumerate() {
        let value = serde_json::Value::deserialize(doc).map_err(|e| ManifestError {
            document: i + 1,
            kind: None,
            name: None,
            field: String::new(),
            reason: format!("not valid YAML or JSON: {e}"),
        })?;
        if value.is_null() {
            continue;
        }
        values.push((i + 1, value));
        if values.len() > MAX_DOCUMENTS {
            return Err(whole(format!("more than {MAX_DOCUMENTS} documents")));
        }
    }
    if values.is_empty() {
        return Err(whole("no documents".into()));
    }
    values
        .into_iter()
        .map(|(number, value)| {
            if let Some(field) = hidden_text(&value, "") {
                return Err(ManifestError {
                    document: number,
                    kind: value.get("kind").and_then(|k| k.as_str()).map(str::to_owned),
                    name: value.get("name").and_then(|k| k.as_str()).map(str::to_owned),
                    field,
                    reason: "contains a bidirectional, invisible or control character (text that displays as something it is not)".into(),
                });
            }
            parse_document(number, value).map(|doc| Parsed { number, doc })
        })
        .collect()
}

/// The first field (as a path) whose key or text holds a character that
/// hides how it reads ([`ruse_proto::types::hides_text`]); line breaks and
/// tabs are allowed in text.
fn hidden_text(value: &serde_json::Value, at: &str) -> Option<String> {
    let hides = |s: &str| {
        s.chars()
            .any(|c| ruse_proto::types::hides_text(c) && !matches!(c, '\n' | '\r' | '\t'))
    };
    match value {
        serde_json::Value::String(s) if hides(s) => Some(at.to_owned()),
        serde_json::Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, v)| hidden_text(v, &format!("{at}[{i}]"))),
        serde_json::Value::Object(map) => map.iter().find_map(|(k, v)| {
            let field = if at.is_empty() {
                k.clone()
            } else {
                format!("{at}.{k}")
            };
            if hides(k) {
                Some(field)
            } else {
                hidden_text(v, &field)
            }
        }),
        _ => None,
    }
}

fn typed<T: DeserializeOwned>(
    n: usize,
    kind: &str,
    name: Option<&str>,
    value: serde_json::Value,
) -> Result<T, ManifestError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        ManifestError {
            document: n,
            kind: Some(kind.to_owned()),
            name: name.map(str::to_owned),
            field: if path == "." { String::new() } else { path },
            reason: e.into_inner().to_string(),
        }
    })
}

fn parse_document(n: usize, value: serde_json::Value) -> Result<Document, ManifestError> {
    let kind = value
        .get("kind")
        .and_then(|k| k.as_str())
        .map(str::to_owned);
    let name = value
        .get("name")
        .and_then(|k| k.as_str())
        .map(str::to_owned);
    let err = |field: &str, reason: String| ManifestError {
        document: n,
        kind: kind.clone(),
        name: name.clone(),
        field: field.to_owned(),
        reason,
    };
    if !value.is_object() {
        return Err(err(
            "",
            "a document must be a mapping with kind and name".into(),
        ));
    }
    match kind.as_deref() {
        Some("Campaign") => {
            let m: CampaignManifest = typed(n, "Campaign", name.as_deref(), value)?;
            check_campaign(m)
                .map(Document::Campaign)
                .map_err(|(f, r)| err(&f, r))
        }
        Some("Decoy") => {
            let m: DecoyManifest = typed(n, "Decoy", name.as_deref(), value)?;
            check_decoy(m)
                .map(Document::Decoy)
                .map_err(|(f, r)| err(&f, r))
        }
        Some("AllowRule") => {
            let m: AllowRuleManifest = typed(n, "AllowRule", name.as_deref(), value)?;
            check_allow_rule(m)
                .map(Document::AllowRule)
                .map_err(|(f, r)| err(&f, r))
        }
        Some("Suppression") => {
            let m: SuppressionManifest = typed(n, "Suppression", name.as_deref(), value)?;
            check_suppression(m)
                .map(Document::Suppression)
                .map_err(|(f, r)| err(&f, r))
        }
        Some(other) => Err(err(
            "kind",
            format!("unknown kind {other:?}; expected Campaign, Decoy, AllowRule or Suppression"),
        )),
        None => Err(err("kind", "missing".into())),
    }
}

fn check_api_version(v: &Option<String>) -> Result<(), (String, String)> {
    match v.as_deref() {
        None | Some("ruse.dev/v1") => Ok(()),
        Some(other) => Err((
            "apiVersion".into(),
            format!("{other:?} is not supported; use ruse.dev/v1 or omit it"),
        )),
    }
}

fn selector(map: BTreeMap<String, String>) -> Result<Labels, (String, String)> {
    Labels::try_from(map).map_err(|e| ("selector".into(), e.to_string()))
}

fn check_campaign(m: CampaignManifest) -> Result<Campaign, (String, String)> {
    check_api_version(&m.api_version)?;
    check_name(&m.name).map_err(|r| ("name".to_owned(), r))?;
    let selector = selector(m.selector)?;
    if m.lures.is_empty() {
        return Err(("lures".into(), "a campaign needs at least one lure".into()));
    }
    if m.lures.len() > MAX_LURES {
        return Err((
            "lures".into(),
            format!("at most {MAX_LURES} lures per campaign"),
        ));
    }
    let mut lures: Vec<LureSlot> = Vec::new();
    for (i, l) in m.lures.into_iter().enumerate() {
        let at = |field: &str| format!("lures[{i}].{field}");
        let template: Template = l
            .template
            .parse()
            .map_err(|e: String| (at("template"), e))?;
        if let Some(name) = &l.name {
            check_name(name).map_err(|r| (at("name"), r))?;
        }
        if let Some(decoy) = &l.decoy {
            check_name(decoy).map_err(|r| (at("decoy"), r))?;
        } else if template.needs_decoy() {
            return Err((
                at("decoy"),
                format!("template {template} points at a decoy; name one"),
            ));
        }
        if let Some(path) = &l.path {
            check_lure_path(path).map_err(|r| (at("path"), r))?;
        }
        template
            .check_params(&l.params)
            .map_err(|r| (at("params"), r))?;
        let key = l.name.clone().unwrap_or_else(|| template.to_string());
        if lures.iter().any(|s| s.key == key) {
            return Err((
                at("name"),
                format!("two lures are called {key:?}; give one of them a distinct name"),
            ));
        }
        lures.push(LureSlot {
            key,
            template,
            decoy: l.decoy,
            path: l.path,
            params: l.params,
        });
    }
    let rollout = m.rollout.unwrap_or(RolloutManifest {
        waves: default_waves(),
        max_failure_ratio: default_failure_ratio(),
    });
    let waves = check_waves(&rollout.waves)?;
    if !(0.0..=1.0).contains(&rollout.max_failure_ratio) || rollout.max_failure_ratio.is_nan() {
        return Err((
            "rollout.max_failure_ratio".into(),
            "must be between 0 and 1".into(),
        ));
    }
    let rotate_every = match &m.rotate_every {
        Some(s) => {
            let d = parse_duration(s).map_err(|e| ("rotate_every".to_owned(), e.to_string()))?;
            if d < Duration::from_secs(60) {
                return Err(("rotate_every".into(), "must be at least 1m".into()));
            }
            Some(d)
        }
        None => None,
    };
    Ok(Campaign {
        name: m.name,
        description: m.description,
        selector,
        lures,
        waves,
        max_failure_ratio: rollout.max_failure_ratio,
        rotate_every,
    })
}

fn check_lure_path(path: &str) -> Result<(), String> {
    if !(path.starts_with("~/") || path.starts_with('/')) {
        return Err(format!(
            "{path:?} must start with ~/ (each user's home) or / (the agent's root)"
        ));
    }
    if path.split('/').any(|c| c == "..") {
        return Err(format!("{path:?} must not contain '..'"));
    }
    if path.len() > 512 || path.chars().any(ruse_proto::types::hides_text) {
        return Err("too long, or contains control, bidirectional or invisible characters".into());
    }
    Ok(())
}

fn check_waves(waves: &[String]) -> Result<Vec<u8>, (String, String)> {
    if waves.is_empty() || waves.len() > 10 {
        return Err((
            "rollout.waves".into(),
            "give 1 to 10 waves, the last \"100%\"".into(),
        ));
    }
    let mut out = Vec::new();
    for (i, w) in waves.iter().enumerate() {
        let field = format!("rollout.waves[{i}]");
        let pct: u8 = w
            .trim()
            .strip_suffix('%')
            .and_then(|n| n.trim().parse().ok())
            .filter(|&p| (1..=100).contains(&p))
            .ok_or_else(|| {
                (
                    field.clone(),
                    format!("{w:?} is not a percentage between 1% and 100%"),
                )
            })?;
        if out.last().is_some_and(|&last| pct <= last) {
            return Err((
                field,
                "each wave must cover more agents than the one before".into(),
            ));
        }
        out.push(pct);
    }
    if out.last() != Some(&100) {
        return Err((
            "rollout.waves".into(),
            "the last wave must be \"100%\"".into(),
        ));
    }
    Ok(out)
}

fn check_allow_rule(m: AllowRuleManifest) -> Result<AllowRule, (String, String)> {
    check_api_version(&m.api_version)?;
    check_name(&m.name).map_err(|r| ("name".to_owned(), r))?;
    let selector = selector(m.selector)?;
    let process = m.process.unwrap_or_default();
    let user = m.user.unwrap_or_default();
    let template = m.template.unwrap_or_default();
    if process.is_empty() && user.is_empty() && template.is_empty() {
        return Err((
            "process".into(),
            "give at least one of process, user or template (a rule matching everything would hide every event)".into(),
        ));
    }
    if !process.is_empty() && !process.starts_with('/') {
        return Err((
            "process".into(),
            format!("{process:?} must be an absolute executable path"),
        ));
    }
    if process == "/*" {
        return Err(("process".into(), "\"/*\" would allow every process".into()));
    }
    if !template.is_empty() {
        template
            .parse::<Template>()
            .map_err(|e| ("template".to_owned(), e))?;
    }
    for (field, v) in [("process", &process), ("user", &user)] {
        if v.len() > 1024 || v.chars().any(char::is_control) {
            return Err((
                field.into(),
                "too long or contains control characters".into(),
            ));
        }
    }
    Ok(AllowRule {
        name: m.name,
        description: m.description,
        selector,
        process,
        user,
        template,
    })
}

fn check_suppression(m: SuppressionManifest) -> Result<Suppression, (String, String)> {
    check_api_version(&m.api_version)?;
    check_name(&m.name).map_err(|r| ("name".to_owned(), r))?;
    let selector = selector(m.selector)?;
    let source = m
        .source
        .as_deref()
        .map(Cidr::parse)
        .transpose()
        .map_err(|e| ("source".to_owned(), e))?;
    let process = m.process.unwrap_or_default();
    let template = m.template.unwrap_or_default();
    if source.is_none() && process.is_empty() && template.is_empty() {
        return Err((
            "source".into(),
            "give at least one of source, process or template (a suppression of everything would hide every incident)".into(),
        ));
    }
    if source.is_some_and(|c| c.prefix == 0) {
        return Err((
            "source".into(),
            "a /0 range would suppress every address".into(),
        ));
    }
    if !process.is_empty() && (!process.starts_with('/') || process == "/*") {
        return Err((
            "process".into(),
            format!(
                "{process:?} must be an absolute executable path (a trailing * matches a prefix)"
            ),
        ));
    }
    if process.len() > 1024 || process.chars().any(char::is_control) {
        return Err((
            "process".into(),
            "too long or contains control characters".into(),
        ));
    }
    if !template.is_empty() {
        template
            .parse::<Template>()
            .map_err(|e| ("template".to_owned(), e))?;
    }
    let expires = m
        .expires
        .as_deref()
        .map(UnixMs::parse_rfc3339)
        .transpose()
        .map_err(|e| ("expires".to_owned(), e.to_string()))?;
    Ok(Suppression {
        name: m.name,
        description: m.description,
        selector,
        source,
        process,
        template,
        expires,
    })
}

#[cfg(test)]
mod tests;

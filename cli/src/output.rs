//! Printing resources as tables, JSON or YAML.
//!
//! JSON and YAML print the same serde views; lists are `{"items": [...]}`
//! so scripts can rely on one shape.

use std::collections::BTreeMap;

use serde::Serialize;

use ruse_proto::admin::v1 as pb;
use ruse_proto::types::{UnixMs, format_duration};

/// `-o` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Wide,
    Json,
    Yaml,
}

/// Prints a serialisable value as JSON or YAML.
pub fn structured<T: Serialize>(format: Format, value: &T) -> anyhow::Result<()> {
    match format {
        Format::Yaml => print!("{}", serde_norway::to_string(value)?),
        _ => println!("{}", serde_json::to_string_pretty(value)?),
    }
    Ok(())
}

#[derive(Debug, Serialize)]
pub struct List<T> {
    pub items: Vec<T>,
}

/// A simple left-aligned table.
pub fn table(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<String>| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                let pad = widths[i] - cell.chars().count() + 3;
                out.push_str(cell);
                out.push_str(&" ".repeat(pad));
            }
        }
        println!("{}", out.trim_end());
    };
    line(headers.iter().map(|h| h.to_string()).collect());
    for row in rows {
        line(row.clone());
    }
}

/// Time formatted for people: RFC 3339, or empty for "never".
pub fn time(ms: i64) -> String {
    if ms == 0 {
        String::new()
    } else {
        UnixMs(ms).rfc3339()
    }
}

/// How long ago, kubectl style (`5s`, `3m`, `2d`).
pub fn age(ms: i64) -> String {
    if ms == 0 {
        return "never".into();
    }
    let elapsed = UnixMs(ms).until(UnixMs::now());
    let secs = elapsed.as_secs();
    let coarse = match secs {
        0..=119 => std::time::Duration::from_secs(secs),
        120..=7199 => std::time::Duration::from_secs(secs / 60 * 60),
        7200..=172_799 => std::time::Duration::from_secs(secs / 3600 * 3600),
        _ => std::time::Duration::from_secs(secs / 86_400 * 86_400),
    };
    let mut text = format_duration(coarse);
    // Keep only the leading unit: "2h" rather than "2h0m".
    if let Some(pos) = text.find(|c: char| c.is_ascii_alphabetic()) {
        let unit_end = text[pos..]
            .find(|c: char| c.is_ascii_digit())
            .map_or(text.len(), |e| pos + e);
        text.truncate(unit_end);
    }
    text
}

pub fn labels(map: &BTreeMap<String, String>) -> String {
    if map.is_empty() {
        return "<none>".into();
    }
    map.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn sorted(map: &std::collections::HashMap<String, String>) -> BTreeMap<String, String> {
    map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

#[derive(Debug, Serialize)]
pub struct Revoked {
    pub at: String,
    pub by: String,
    pub reason: String,
}

/// An agent as printed by `get agents -o json|yaml` and `describe agent`.
#[derive(Debug, Serialize)]
pub struct Agent {
    pub id: String,
    pub state: String,
    pub hostname: String,
    pub os: String,
    pub kernel: String,
    pub arch: String,
    pub addresses: Vec<String>,
    pub agent_version: String,
    /// From the token and admins: what selectors match.
    pub labels: BTreeMap<String, String>,
    /// What the agent says about itself: shown, never matched.
    pub reported_labels: BTreeMap<String, String>,
    pub enrolled: String,
    pub enrolled_with_token: String,
    pub last_seen: String,
    pub certificate_expires: String,
    pub peer: String,
    /// The controller holding its session, when online.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub controller: String,
    pub problems: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revoked: Option<Revoked>,
}

impl From<&pb::Agent> for Agent {
    fn from(a: &pb::Agent) -> Self {
        Agent {
            id: a.id.clone(),
            state: a.state().display_name().into(),
            hostname: a.hostname.clone(),
            os: a.os.clone(),
            kernel: a.kernel.clone(),
            arch: a.arch.clone(),
            addresses: a.addresses.clone(),
            agent_version: a.agent_version.clone(),
            labels: sorted(&a.labels),
            reported_labels: sorted(&a.reported_labels),
            enrolled: time(a.enrolled_ms),
            enrolled_with_token: a.enrolled_with_token.clone(),
            last_seen: time(a.last_seen_ms),
            certificate_expires: time(a.cert_not_after_ms),
            peer: a.peer.clone(),
            controller: a.controller.clone(),
            problems: a.problems.clone(),
            revoked: (a.revoked_ms != 0).then(|| Revoked {
                at: time(a.revoked_ms),
                by: a.revoked_by.clone(),
                reason: a.revoke_reason.clone(),
            }),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Token {
    pub id: String,
    pub created: String,
    pub expires: String,
    pub uses: u32,
    pub max_uses: u32,
    pub labels: BTreeMap<String, String>,
    pub created_by: String,
    pub description: String,
}

impl From<&pb::Token> for Token {
    fn from(t: &pb::Token) -> Self {
        Token {
            id: t.id.clone(),
            created: time(t.created_ms),
            expires: time(t.expires_ms),
            uses: t.uses,
            max_uses: t.max_uses,
            labels: sorted(&t.labels),
            created_by: t.created_by.clone(),
            description: t.description.clone(),
        }
    }
}

/// `token create -o json`: the secret with what it allows.
#[derive(Debug, Serialize)]
pub struct CreatedToken {
    pub token: String,
    pub id: String,
    pub expires: String,
    pub max_uses: u32,
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Serialize)]
pub struct Audit {
    pub seq: u64,
    pub at: String,
    pub actor: String,
    pub peer: String,
    pub action: String,
    pub target: String,
    pub result: String,
    pub detail: String,
}

impl From<&pb::AuditRecord> for Audit {
    fn from(r: &pb::AuditRecord) -> Self {
        Audit {
            seq: r.seq,
            at: time(r.at_ms),
            actor: r.actor.clone(),
            peer: r.peer.clone(),
            action: r.action.clone(),
            target: r.target.clone(),
            result: r.result.clone(),
            detail: r.detail.clone(),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Admin {
    pub name: String,
    pub role: String,
    pub issued: String,
    pub issued_by: String,
}

impl From<&pb::Admin> for Admin {
    fn from(a: &pb::Admin) -> Self {
        Admin {
            name: a.name.clone(),
            role: a.role().display_name().into(),
            issued: time(a.issued_ms),
            issued_by: a.issued_by.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_are_coarse() {
        let now = UnixMs::now().0;
        assert_eq!(age(0), "never");
        assert_eq!(age(now - 5_000), "5s");
        assert_eq!(age(now - 3 * 60_000 - 10_000), "3m");
        assert_eq!(age(now - 5 * 3_600_000 - 60_000), "5h");
        assert_eq!(age(now - 3 * 86_400_000 - 3_600_000), "3d");
    }

    #[test]
    fn labels_print_sorted() {
        let map: BTreeMap<_, _> = [
            ("site".to_owned(), "icu".to_owned()),
            ("a".to_owned(), "b".to_owned()),
        ]
        .into();
        assert_eq!(labels(&map), "a=b,site=icu");
        assert_eq!(labels(&BTreeMap::new()), "<none>");
    }
}

#[derive(Debug, Serialize)]
pub struct CampaignLure {
    pub name: String,
    pub template: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub decoy: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub path: String,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub params: BTreeMap<String, String>,
}

#[derive(Debug, Serialize)]
pub struct Wave {
    pub percent: u32,
    pub agents: u32,
    pub applied: u32,
    pub failed: u32,
    pub pending: u32,
    pub offline: u32,
    /// Offline so long the rollout no longer waits for them.
    #[serde(skip_serializing_if = "is_zero")]
    pub unreachable: u32,
    pub released: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct Campaign {
    pub name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub description: String,
    pub selector: BTreeMap<String, String>,
    pub lures: Vec<CampaignLure>,
    pub generation: u64,
    pub epoch: u32,
    pub rollout: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub reason: String,
    pub wave: u32,
    pub waves: Vec<Wave>,
    pub max_failure_ratio: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rotate_every: Option<String>,
    pub matching_agents: u32,
    pub created: String,
    pub updated: String,
    pub last_rotated: String,
}

impl From<&pb::Campaign> for Campaign {
    fn from(c: &pb::Campaign) -> Self {
        Campaign {
            name: c.name.clone(),
            description: c.description.clone(),
            selector: sorted(&c.selector),
            lures: c
                .lures
                .iter()
                .map(|l| CampaignLure {
                    name: l.name.clone(),
                    template: l.template.clone(),
                    decoy: l.decoy.clone(),
                    path: l.path.clone(),
                    params: sorted(&l.params),
                })
                .collect(),
            generation: c.generation,
            epoch: c.epoch,
            rollout: c.rollout_state.clone(),
            reason: c.rollout_reason.clone(),
            wave: c.wave,
            waves: c
                .wave_status
                .iter()
                .map(|w| Wave {
                    percent: w.percent,
                    agents: w.agents,
                    applied: w.acked,
                    failed: w.failed,
                    pending: w.pending,
                    offline: w.offline,
                    unreachable: w.unreachable,
                    released: w.released,
                    errors: w.errors.clone(),
                })
                .collect(),
            max_failure_ratio: c.max_failure_ratio,
            rotate_every: (c.rotate_every_ms > 0)
                .then(|| format_duration(std::time::Duration::from_millis(c.rotate_every_ms))),
            matching_agents: c.matching_agents,
            created: time(c.created_ms),
            updated: time(c.updated_ms),
            last_rotated: time(c.last_rotated_ms),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct DecoyService {
    pub protocol: String,
    pub port: u32,
    /// Set only when the manifest overrides the protocol's usual delay.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refusal_delay_ms: Option<u32>,
    /// Telnet: the device imitated and the service's own banner, if set.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub device: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub banner: String,
}

#[derive(Debug, Serialize)]
pub struct Decoy {
    pub name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub description: String,
    pub selector: BTreeMap<String, String>,
    pub address: String,
    pub services: Vec<DecoyService>,
    pub matching_agents: u32,
}

impl From<&pb::Decoy> for Decoy {
    fn from(d: &pb::Decoy) -> Self {
        Decoy {
            name: d.name.clone(),
            description: d.description.clone(),
            selector: sorted(&d.selector),
            address: d.address.clone(),
            services: d
                .services
                .iter()
                .map(|s| DecoyService {
                    protocol: s.protocol.clone(),
                    port: s.port,
                    refusal_delay_ms: s.refusal_delay_ms,
                    device: s.device.clone(),
                    banner: s.banner.clone(),
                })
                .collect(),
            matching_agents: d.matching_agents,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Lure {
    pub id: String,
    pub agent: String,
    pub campaign: String,
    pub slot: String,
    pub template: String,
    pub epoch: u32,
    pub revision: u64,
    pub state: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub error: String,
    pub identifiers: String,
    pub created: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub retired: String,
}

impl From<&pb::Lure> for Lure {
    fn from(l: &pb::Lure) -> Self {
        Lure {
            id: l.id.clone(),
            agent: l.agent_id.clone(),
            campaign: l.campaign.clone(),
            slot: l.slot.clone(),
            template: l.template.clone(),
            epoch: l.epoch,
            revision: l.revision,
            state: l.state.clone(),
            error: l.error.clone(),
            identifiers: l.identifiers.clone(),
            created: time(l.created_ms),
            retired: time(l.retired_ms),
        }
    }
}

/// A text progress bar `[#####.....]`.
pub fn bar(done: u32, total: u32, width: usize) -> String {
    let filled = if total == 0 {
        width
    } else {
        (usize::try_from(done).unwrap_or(0) * width) / usize::try_from(total).unwrap_or(1).max(1)
    };
    format!(
        "[{}{}]",
        "#".repeat(filled.min(width)),
        ".".repeat(width - filled.min(width))
    )
}

/// The per-wave rollout table, as lines.
pub fn rollout_lines(c: &pb::Campaign) -> Vec<String> {
    let mut lines = vec![format!(
        "campaign {}  generation {}  epoch {}  {}  wave {}/{}  ({} matching agents)",
        c.name,
        c.generation,
        c.epoch,
        c.rollout_state,
        c.wave
            .min(u32::try_from(c.wave_status.len()).unwrap_or(u32::MAX)),
        c.wave_status.len(),
        c.matching_agents
    )];
    if !c.rollout_reason.is_empty() {
        lines.push(format!("  reason: {}", c.rollout_reason));
    }
    lines.push(format!(
        "  {:<5} {:>5} {:>7} {:>8} {:>7} {:>8} {:>8}  PROGRESS",
        "WAVE", "SHARE", "AGENTS", "APPLIED", "FAILED", "PENDING", "OFFLINE"
    ));
    for (i, w) in c.wave_status.iter().enumerate() {
        let progress = if w.released {
            bar(w.acked + w.failed, w.agents, 20)
        } else {
            "waiting".to_owned()
        };
        lines.push(format!(
            "  {:<5} {:>4}% {:>7} {:>8} {:>7} {:>8} {:>8}  {progress}",
            i + 1,
            w.percent,
            w.agents,
            w.acked,
            w.failed,
            w.pending,
            w.offline
        ));
        if w.unreachable > 0 {
            lines.push(format!(
                "        {} unreachable (offline too long; not waited for)",
                w.unreachable
            ));
        }
        for e in &w.errors {
            lines.push(format!("        ! {e}"));
        }
    }
    lines
}

#[cfg(test)]
mod more_tests {
    use super::*;

    #[test]
    fn bars() {
        assert_eq!(bar(0, 10, 10), "[..........]");
        assert_eq!(bar(5, 10, 10), "[#####.....]");
        assert_eq!(bar(10, 10, 10), "[##########]");
        assert_eq!(bar(0, 0, 4), "[####]");
    }
}

#[derive(Debug, Serialize)]
pub struct Process {
    pub pid: u32,
    pub exe: String,
    pub uid: u32,
    pub user: String,
    pub cmdline: String,
}

/// A lure event as printed by `get events` and `watch events`.
#[derive(Debug, Serialize)]
pub struct Event {
    pub id: String,
    /// The controller's receive order (`watch events --after` resumes here).
    pub cursor: u64,
    pub observed: String,
    /// What the agent said when its clock was outside the accepted skew
    /// (`observed` is then clamped).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub reported_observed: String,
    pub received: String,
    pub agent: String,
    pub kind: String,
    pub lure: String,
    pub template: String,
    pub campaign: String,
    pub path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub process: Option<Process>,
    pub operations: Vec<String>,
    pub attribution: String,
    pub allowed: bool,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub allow_rule: String,
    #[serde(skip_serializing_if = "is_zero")]
    pub dropped_before: u32,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decoy: Option<DecoyContact>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential: Option<Credential>,
    /// For credential-use: the agent the lure was planted on.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub origin_agent: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub matched_on: String,
}

/// Which decoy service was contacted, and from where.
#[derive(Debug, Serialize)]
pub struct DecoyContact {
    pub name: String,
    pub protocol: String,
    pub port: u32,
    pub source_ip: String,
    pub source_port: u32,
}

/// What a client presented to a decoy (only the fields it presented).
#[derive(Debug, Serialize)]
pub struct Credential {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub username: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub password: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub key_fingerprint: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub key_type: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub ae_title: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub called_ae_title: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub token: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub domain: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub workstation: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub client: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub host: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub application: String,
}

/// A one-line summary of what a client presented.
fn presented(c: &pb::PresentedCredential) -> String {
    let mut parts = Vec::new();
    if !c.username.is_empty() {
        if c.domain.is_empty() {
            parts.push(format!("user {}", c.username));
        } else {
            parts.push(format!("user {}\\{}", c.domain, c.username));
        }
    }
    if !c.key_fingerprint.is_empty() {
        parts.push(format!("key {}", c.key_fingerprint));
    }
    if !c.ae_title.is_empty() {
        parts.push(format!("AE {} -> {}", c.ae_title, c.called_ae_title));
    }
    if !c.token.is_empty() {
        parts.push(format!(
            "token {}…",
            c.token.chars().take(8).collect::<String>()
        ));
    }
    if !c.host.is_empty() {
        parts.push(format!("host {}", c.host));
    }
    if !c.application.is_empty() {
        parts.push(format!("HL7 sender {}", c.application));
    }
    parts.join(", ")
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl From<&pb::LureEvent> for Event {
    fn from(e: &pb::LureEvent) -> Self {
        Event {
            id: e.id.clone(),
            cursor: e.cursor,
            observed: time(e.observed_ms),
            reported_observed: if e.reported_observed_ms == 0 {
                String::new()
            } else {
                time(e.reported_observed_ms)
            },
            received: time(e.received_ms),
            agent: e.agent_id.clone(),
            kind: e.kind.clone(),
            lure: e.lure_id.clone(),
            template: e.template.clone(),
            campaign: e.campaign.clone(),
            path: e.path.clone(),
            process: e.process.as_ref().map(|p| Process {
                pid: p.pid,
                exe: p.exe.clone(),
                uid: p.uid,
                user: p.user.clone(),
                cmdline: p.cmdline.clone(),
            }),
            operations: e.operations.clone(),
            attribution: e.attribution.clone(),
            allowed: e.allowed,
            allow_rule: e.allow_rule.clone(),
            dropped_before: e.dropped_before,
            detail: e.detail.clone(),
            decoy: e.decoy.as_ref().map(|d| DecoyContact {
                name: d.name.clone(),
                protocol: d.protocol.clone(),
                port: d.port,
                source_ip: d.source_ip.clone(),
                source_port: d.source_port,
            }),
            credential: e.credential.as_ref().map(|c| Credential {
                username: c.username.clone(),
                password: c.password.clone(),
                key_fingerprint: c.key_fingerprint.clone(),
                key_type: c.key_type.clone(),
                ae_title: c.ae_title.clone(),
                called_ae_title: c.called_ae_title.clone(),
                token: c.token.clone(),
                domain: c.domain.clone(),
                workstation: c.workstation.clone(),
                client: c.client.clone(),
                host: c.host.clone(),
                application: c.application.clone(),
            }),
            origin_agent: e.origin_agent_id.clone(),
            matched_on: e.matched_on.clone(),
        }
    }
}

/// One table row for an event; `wide` adds the lure, the command line and
/// the attribution.
pub fn event_row(e: &pb::LureEvent, wide: bool) -> Vec<String> {
    if let Some(d) = &e.decoy {
        // PATH names the decoy service; PROCESS, the client and what it presented.
        let mut who = format!("{}:{}", d.source_ip, d.source_port);
        if let Some(c) = &e.credential {
            let p = presented(c);
            if !p.is_empty() {
                who = format!("{who} ({p})");
            }
        }
        let kind = if e.origin_agent_id.is_empty() {
            e.kind.clone()
        } else {
            format!("{} (lure from {})", e.kind, e.origin_agent_id)
        };
        let mut row = vec![
            time(e.observed_ms),
            e.agent_id.clone(),
            kind,
            e.template.clone(),
            format!("decoy {} {}/{}", d.name, d.protocol, d.port),
            who,
        ];
        if wide {
            row.push(e.lure_id.clone());
            row.push(e.matched_on.clone());
            row.push(e.detail.clone());
            row.push(e.attribution.clone());
        }
        return row;
    }
    let who = match &e.process {
        Some(p) => format!(
            "{} (pid {}, {})",
            p.exe,
            p.pid,
            if p.user.is_empty() {
                p.uid.to_string()
            } else {
                p.user.clone()
            }
        ),
        None => "unknown process".into(),
    };
    let kind = if e.allowed {
        format!("{} (allowed: {})", e.kind, e.allow_rule)
    } else {
        e.kind.clone()
    };
    let mut row = vec![
        time(e.observed_ms),
        e.agent_id.clone(),
        kind,
        e.template.clone(),
        e.path.clone(),
        who,
    ];
    if wide {
        row.push(e.lure_id.clone());
        row.push(e.operations.join(","));
        row.push(
            e.process
                .as_ref()
                .map(|p| p.cmdline.clone())
                .unwrap_or_default(),
        );
        row.push(e.attribution.clone());
    }
    row
}

pub const EVENT_HEADERS: &[&str] = &["OBSERVED", "AGENT", "KIND", "TEMPLATE", "PATH", "PROCESS"];
pub const EVENT_WIDE_HEADERS: &[&str] = &["LURE", "OPERATIONS", "COMMAND", "ATTRIBUTION"];

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
    pub labels: BTreeMap<String, String>,
    pub enrolled: String,
    pub enrolled_with_token: String,
    pub last_seen: String,
    pub certificate_expires: String,
    pub peer: String,
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
            enrolled: time(a.enrolled_ms),
            enrolled_with_token: a.enrolled_with_token.clone(),
            last_seen: time(a.last_seen_ms),
            certificate_expires: time(a.cert_not_after_ms),
            peer: a.peer.clone(),
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

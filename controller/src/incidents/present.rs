//! How incidents and events read: ATT&CK techniques, severities, one-line
//! summaries and titles.

use ruse_proto::convert::CREDENTIAL_USE;

use super::Directory;
use crate::model::{Incident, Severity, StoredEvent, Template};

/// Templates whose reading is the signal (documents, not credentials).
pub(super) fn is_honeyfile(template: &str) -> bool {
    template
        .parse::<Template>()
        .is_ok_and(|t| t.is_honeyfile() && t != Template::PasswordsXlsx)
}

/// MITRE ATT&CK techniques an event shows.
pub fn techniques(e: &StoredEvent) -> Vec<&'static str> {
    let protocol = e.decoy.as_ref().map_or("", |d| d.protocol.as_str());
    let remote = match protocol {
        "ssh" => "T1021.004",
        "smb" => "T1021.002",
        "rdp" => "T1021.001",
        _ => "T1021",
    };
    match e.kind.as_str() {
        "touch" => match e.template.as_str() {
            "ssh-key" => vec!["T1552.004"],
            "putty-session" | "winscp-session" => vec!["T1552.002"],
            "hosts-entry" => vec!["T1018"],
            t if is_honeyfile(t) => vec!["T1005"],
            _ => vec!["T1552.001"],
        },
        "modify" => vec!["T1565.001"],
        "delete" | "rename" => vec!["T1070.004"],
        CREDENTIAL_USE => match protocol {
            "http" | "https" => vec!["T1078"],
            _ => vec!["T1078", remote],
        },
        "decoy-login" => vec!["T1110", remote],
        "decoy-message" | "decoy-connection" | "portscan" => vec!["T1046"],
        _ => Vec::new(),
    }
}

/// The severity an event alone deserves; `None`: no incident.
pub fn event_severity(e: &StoredEvent) -> Option<Severity> {
    if e.allowed {
        return None;
    }
    Some(match e.kind.as_str() {
        CREDENTIAL_USE | "decoy-login" => Severity::Critical,
        "touch" | "modify" | "delete" | "rename" => Severity::High,
        "decoy-message" | crate::model::FLOOD => Severity::Medium,
        "decoy-connection" | "portscan" => Severity::Low,
        _ => return None,
    })
}

/// `how: identifier` for what of `c` matched a lure in credential-use
/// event `e`.
pub(super) fn matched_identifier(
    e: &StoredEvent,
    c: &ruse_proto::convert::PresentedCredential,
) -> Option<String> {
    let how = e.matched_on.as_str();
    let id = match how {
        "ssh key fingerprint" => &c.key_fingerprint,
        "calling AE title" => &c.ae_title,
        "HL7 sending application" => &c.application,
        "token" => return Some(format!("{how}: (a planted token)")),
        _ => &c.username,
    };
    (!id.is_empty()).then(|| format!("{how}: {id}"))
}

/// A few words about an event.
pub fn summary(e: &StoredEvent, dir: &dyn Directory) -> String {
    let who = e
        .process
        .as_ref()
        .map(|p| format!(" by {} (pid {})", p.exe, p.pid))
        .unwrap_or_default();
    match &e.decoy {
        Some(d) => {
            let presented = e
                .credential
                .as_ref()
                .map(|c| {
                    [&c.username, &c.key_fingerprint, &c.ae_title, &c.application]
                        .into_iter()
                        .find(|s| !s.is_empty())
                        .cloned()
                        .unwrap_or_default()
                })
                .filter(|s| !s.is_empty())
                .map(|s| format!(" as {s}"))
                .unwrap_or_default();
            match e.kind.as_str() {
                CREDENTIAL_USE => format!(
                    "{} lure from {} used{presented} from {} against {} {}/{}",
                    e.template,
                    e.origin_agent
                        .as_ref()
                        .map_or_else(String::new, |a| dir.hostname(a)),
                    d.source_ip,
                    d.name,
                    d.protocol,
                    d.port
                ),
                kind => format!(
                    "{kind} from {} on {} {}/{}{presented}",
                    d.source_ip, d.name, d.protocol, d.port
                ),
            }
        }
        None if e.kind == crate::model::FLOOD => {
            format!("{} on {}", e.detail, dir.hostname(&e.agent))
        }
        None => format!(
            "{} of {} on {}{who}",
            e.kind,
            if e.template.is_empty() {
                e.path.clone()
            } else {
                e.template.clone()
            },
            dir.hostname(&e.agent)
        ),
    }
}

/// The title names the strongest thing the incident shows.
pub(super) fn title(i: &Incident, e: &StoredEvent, dir: &dyn Directory) -> String {
    let drill = if i.drill { "[DRILL] " } else { "" };
    let path = i.path_text();
    if i.rules.contains("credential-use") {
        return format!("{drill}Stolen credential used: {path}");
    }
    if i.rules.contains("flood") {
        let host = i
            .agents
            .iter()
            .next()
            .map(|a| dir.hostname(a))
            .unwrap_or_default();
        return format!(
            "{drill}Agent {host} sent more events than its quota (a compromised or misbehaving agent?)"
        );
    }
    if i.severity == Severity::Critical {
        let d = i.decoys.iter().next().cloned().unwrap_or_default();
        let s = i.sources.iter().next().cloned().unwrap_or_default();
        return format!("{drill}Login attempt on decoy {d} from {s}");
    }
    if !i.agents.is_empty() && i.decoys.is_empty() {
        let host = i
            .agents
            .iter()
            .next()
            .map(|a| dir.hostname(a))
            .unwrap_or_default();
        let what = if i.lures.len() > 1 {
            format!("{} lures", i.lures.len())
        } else {
            format!("{} lure", e.template)
        };
        let by = if i.processes.len() == 1 {
            format!(
                " by {}",
                i.processes.iter().next().cloned().unwrap_or_default()
            )
        } else if i.processes.len() > 1 {
            format!(" by {} processes", i.processes.len())
        } else {
            String::new()
        };
        return format!("{drill}{what} touched on {host}{by}");
    }
    let s = i.sources.iter().cloned().collect::<Vec<_>>().join(", ");
    if i.rules.contains("scan") {
        return format!("{drill}Scan from {s} across {} decoy ports", i.ports.len());
    }
    format!("{drill}Decoy contact from {s}: {path}")
}

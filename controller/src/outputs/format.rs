//! What an output sends: the CEF and LEEF payloads, the RFC 5424 syslog
//! message, webhook bodies (JSON, Slack, Teams), Splunk HEC events,
//! Elastic Common Schema documents and OCSF Detection Findings.
//!
//! One severity mapping for every format (docs/incidents.md):
//!
//! | incident | CEF severity | LEEF `sev` | syslog severity |
//! |----------|--------------|------------|-----------------|
//! | low      | 3            | 3          | 5 (notice)      |
//! | medium   | 5            | 5          | 4 (warning)     |
//! | high     | 8            | 8          | 3 (error)       |
//! | critical | 10           | 10         | 2 (critical)    |
//!
//! ECS `event.severity` (0–100, as Elastic's detection rules score):
//! low 21, medium 47, high 73, critical 99. OCSF `severity_id`: low 2,
//! medium 3, high 4, critical 5.

use ruse_proto::types::UnixMs;

use super::config::{SyslogFormat, WebhookFormat};
use crate::incidents::Notice;
use crate::model::{Incident, Severity};

/// Escapes a CEF header field.
fn cef_header(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('|', "\\|")
        .replace(['\r', '\n'], " ")
}

/// Escapes a CEF extension value.
fn cef_value(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('=', "\\=")
        .replace('\n', "\\n")
        .replace('\r', "\\r")
}

/// The CEF payload for an incident notice.
pub fn cef(i: &Incident, notice: Notice) -> String {
    let mut ext: Vec<(&str, String)> = vec![
        ("rt", i.last_seen.0.to_string()),
        ("start", i.first_seen.0.to_string()),
        ("cnt", i.event_count.to_string()),
        ("cs1Label", "incidentId".into()),
        ("cs1", i.id.clone()),
        ("cs2Label", "attackPath".into()),
        ("cs2", i.path_text()),
        ("cs3Label", "mitreTechniques".into()),
        (
            "cs3",
            i.techniques.iter().cloned().collect::<Vec<_>>().join(","),
        ),
        ("cs4Label", "status".into()),
        ("cs4", i.status.as_str().into()),
        ("cs5Label", "drill".into()),
        ("cs5", i.drill.to_string()),
        ("cs6Label", "lures".into()),
        ("cs6", i.lures.iter().cloned().collect::<Vec<_>>().join(",")),
    ];
    if let Some(src) = i.sources.iter().next() {
        ext.push(("src", src.clone()));
    }
    if let Some(d) = i.decoys.iter().next() {
        ext.push(("dhost", d.clone()));
    }
    if let Some(h) = i.path.iter().find(|h| h.kind == "host") {
        ext.push(("shost", h.name.clone()));
    }
    if let Some(c) = i.credentials.iter().next() {
        ext.push(("suser", c.clone()));
    }
    if let Some(p) = i.processes.iter().next() {
        ext.push(("sproc", p.clone()));
    }
    ext.push(("msg", i.title.clone()));
    let ext = ext
        .into_iter()
        .map(|(k, v)| format!("{k}={}", cef_value(&v)))
        .collect::<Vec<_>>()
        .join(" ");
    format!(
        "CEF:0|Ruse|Ruse|{}|incident-{}|{}|{}|{ext}",
        env!("CARGO_PKG_VERSION"),
        notice.as_str(),
        cef_header(&i.title),
        i.severity.cef()
    )
}

/// The LEEF attribute delimiter, announced in the header. A caret, not
/// LEEF 1.0's tab: syslog relays such as rsyslog escape control characters
/// by default, which would break a tab-separated payload on the way.
const LEEF_DELIMITER: char = '^';

/// A LEEF attribute value: LEEF has no escape for its delimiter, so a
/// caret (or a line break, which would end the syslog message) in what an
/// attacker typed becomes a space. The incident id finds the exact text.
fn leef_value(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c == LEEF_DELIMITER || c.is_control() {
                ' '
            } else {
                c
            }
        })
        .collect()
}

/// `devTime` as `yyyy-MM-dd'T'HH:mm:ss.SSSZ` (the `devTimeFormat` sent
/// with it), in UTC.
fn leef_time(t: UnixMs) -> String {
    let seconds = t.rfc3339();
    format!(
        "{}.{:03}+0000",
        seconds.trim_end_matches('Z'),
        t.0.rem_euclid(1000)
    )
}

/// The LEEF 2.0 payload for an incident notice (IBM QRadar). QRadar's
/// own keys where one fits — `devTime`, `sev`, `cat`, `src`, `dst`,
/// `usrName`, `identHostName` — and Ruse's as the CEF payload names them.
pub fn leef(i: &Incident, notice: Notice) -> String {
    let mut attrs: Vec<(&str, String)> = vec![
        ("devTime", leef_time(i.last_seen)),
        ("devTimeFormat", "yyyy-MM-dd'T'HH:mm:ss.SSSZ".into()),
        ("sev", i.severity.cef().to_string()),
        ("cat", if i.drill { "drill" } else { "deception" }.into()),
    ];
    if let Some(src) = i.sources.iter().next() {
        attrs.push(("src", src.clone()));
    }
    if let Some(d) = i.decoys.iter().next() {
        attrs.push(("dst", d.clone()));
    }
    if let Some(c) = i.credentials.iter().next() {
        attrs.push(("usrName", c.clone()));
    }
    if let Some(h) = i.path.iter().find(|h| h.kind == "host") {
        attrs.push(("identHostName", h.name.clone()));
    }
    attrs.extend([
        ("incidentId", i.id.clone()),
        ("severity", i.severity.as_str().into()),
        ("status", i.status.as_str().into()),
        ("drill", i.drill.to_string()),
        ("eventCount", i.event_count.to_string()),
        ("firstSeen", leef_time(i.first_seen)),
        ("attackPath", i.path_text()),
        (
            "mitreTechniques",
            i.techniques.iter().cloned().collect::<Vec<_>>().join(","),
        ),
        (
            "lures",
            i.lures.iter().cloned().collect::<Vec<_>>().join(","),
        ),
    ]);
    if let Some(p) = i.processes.iter().next() {
        attrs.push(("process", p.clone()));
    }
    attrs.push(("msg", i.title.clone()));
    let body = attrs
        .into_iter()
        .map(|(k, v)| format!("{k}={}", leef_value(&v)))
        .collect::<Vec<_>>()
        .join(&LEEF_DELIMITER.to_string());
    format!(
        "LEEF:2.0|Ruse|Ruse|{}|incident-{}|{LEEF_DELIMITER}|{body}",
        env!("CARGO_PKG_VERSION"),
        notice.as_str(),
    )
}

/// An RFC 5424 message carrying the CEF or LEEF payload.
pub fn syslog_message(
    i: &Incident,
    notice: Notice,
    hostname: &str,
    format: SyslogFormat,
) -> String {
    // Facility 4 (security/authorization); severity by incident severity.
    let level = match i.severity {
        Severity::Critical => 2,
        Severity::High => 3,
        Severity::Medium => 4,
        Severity::Low => 5,
    };
    let host: String = hostname
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(255)
        .collect();
    format!(
        "<{}>1 {} {} ruse-controller {} incident - {}",
        4 * 8 + level,
        UnixMs::now().rfc3339(),
        if host.is_empty() { "-".into() } else { host },
        std::process::id(),
        match format {
            SyslogFormat::Cef => cef(i, notice),
            SyslogFormat::Leef => leef(i, notice),
        }
    )
}

/// One event for Splunk's HTTP Event Collector: the incident as a webhook
/// sends it, with HEC's metadata (`time` in seconds with milliseconds)
/// and indexed `fields` a search can use without parsing the event.
pub fn hec_event(
    i: &Incident,
    notice: Notice,
    hostname: &str,
    index: Option<&str>,
    source: &str,
    sourcetype: &str,
    ocsf: bool,
) -> serde_json::Value {
    let body = if ocsf {
        ocsf_finding(i, notice)
    } else {
        serde_json::json!({
            "source": "ruse",
            "notice": notice.as_str(),
            "drill": i.drill,
            "incident": i,
        })
    };
    let mut event = serde_json::json!({
        "time": i.last_seen.0 as f64 / 1000.0,
        "host": hostname,
        "source": source,
        "sourcetype": sourcetype,
        "event": body,
        "fields": {
            "incident_id": i.id,
            "version": i.version.to_string(),
            "notice": notice.as_str(),
            "severity": i.severity.as_str(),
            "status": i.status.as_str(),
            "drill": i.drill.to_string(),
            "mitre_technique": i.techniques.iter().cloned().collect::<Vec<_>>(),
        },
    });
    if let Some(index) = index {
        event["index"] = index.into();
    }
    event
}

/// What a person reads first about an incident (chat cards, mails), in
/// order.
pub(super) fn facts(i: &Incident) -> Vec<(&'static str, String)> {
    vec![
        ("Severity", i.severity.as_str().to_owned()),
        ("Status", i.status.as_str().to_owned()),
        ("Attack path", i.path_text()),
        (
            "ATT&CK",
            i.techniques.iter().cloned().collect::<Vec<_>>().join(", "),
        ),
        ("Events", i.event_count.to_string()),
        ("First seen", i.first_seen.rfc3339()),
        ("Incident", i.id.clone()),
    ]
}

/// The JSON body a webhook receives.
pub fn webhook_body(i: &Incident, notice: Notice, format: &WebhookFormat) -> serde_json::Value {
    let drill = if i.drill { "[DRILL] " } else { "" };
    let facts = facts(i);
    match format {
        WebhookFormat::Slack => serde_json::json!({
            "text": format!("{drill}Ruse incident {}: {}", notice.as_str(), i.title),
            "blocks": [
                {"type": "header", "text": {"type": "plain_text", "text": format!("{drill}{}", i.title).chars().take(150).collect::<String>()}},
                {"type": "section", "fields": facts.iter().map(|(k, v)| serde_json::json!({"type": "mrkdwn", "text": format!("*{k}*\n{v}")})).collect::<Vec<_>>()},
            ]
        }),
        WebhookFormat::Teams => serde_json::json!({
            "@type": "MessageCard",
            "@context": "https://schema.org/extensions",
            "summary": format!("{drill}Ruse incident {}", notice.as_str()),
            "themeColor": match i.severity { Severity::Critical => "B00020", Severity::High => "E65100", Severity::Medium => "F9A825", Severity::Low => "607D8B" },
            "title": format!("{drill}{}", i.title),
            "sections": [{"facts": facts.iter().map(|(k, v)| serde_json::json!({"name": k, "value": v})).collect::<Vec<_>>()}],
        }),
        WebhookFormat::Ocsf => ocsf_finding(i, notice),
        WebhookFormat::PagerDuty { routing_key } => {
            pagerduty_event(i, notice, routing_key.expose())
        }
        WebhookFormat::Template(template) => {
            // The template was checked with every name when configured,
            // and values only ever fill string contents.
            render_template(template, &template_values(i, notice))
                .ok()
                .and_then(|body| serde_json::from_str(&body).ok())
                .unwrap_or_default()
        }
        WebhookFormat::Json => serde_json::json!({
            "source": "ruse",
            "notice": notice.as_str(),
            "drill": i.drill,
            "incident": i,
        }),
    }
}

/// The ECS version the documents follow.
pub const ECS_VERSION: &str = "8.11.0";

/// An incident as an Elastic Common Schema alert document: what SIEM
/// rules and dashboards read (`event.*`, `threat.*`, `rule.name`,
/// `host.*`, `source.ip`, `user.name`, `process.*`) in ECS fields, the
/// whole incident under `ruse.incident`.
pub fn ecs_document(i: &Incident, notice: Notice, observer: &str) -> serde_json::Value {
    use crate::stix::{technique_name, technique_tactic};
    let techniques: Vec<&String> = i.techniques.iter().collect();
    let mut tactics: Vec<(&str, &str)> = techniques
        .iter()
        .filter_map(|t| technique_tactic(t))
        .collect();
    tactics.sort_unstable();
    tactics.dedup();
    let score = match i.severity {
        Severity::Low => 21,
        Severity::Medium => 47,
        Severity::High => 73,
        Severity::Critical => 99,
    };
    let mut doc = serde_json::json!({
        "@timestamp": i.last_seen.rfc3339(),
        "ecs": {"version": ECS_VERSION},
        "message": i.title,
        "event": {
            "kind": "alert",
            "category": ["intrusion_detection"],
            "type": ["info"],
            "action": format!("incident-{}", notice.as_str()),
            "id": format!("{}-{}", i.id, i.version),
            "severity": score,
            "created": i.created.rfc3339(),
            "start": i.first_seen.rfc3339(),
            "end": i.last_seen.rfc3339(),
            "dataset": "ruse.incidents",
            "module": "ruse",
            "provider": "ruse-controller",
        },
        "observer": {"vendor": "Ruse", "product": "Ruse", "type": "deception", "hostname": observer},
        "rule": {
            "name": i.rules.iter().next().cloned().unwrap_or_else(|| i.title.clone()),
            "ruleset": "ruse",
        },
        "threat": {
            "framework": "MITRE ATT&CK",
            "technique": {
                "id": techniques,
                "name": techniques.iter().map(|t| technique_name(t)).collect::<Vec<_>>(),
            },
            "tactic": {
                "id": tactics.iter().map(|t| t.0).collect::<Vec<_>>(),
                "name": tactics.iter().map(|t| t.1).collect::<Vec<_>>(),
            },
        },
        "labels": {
            "incident_id": i.id,
            "status": i.status.as_str(),
            "drill": i.drill.to_string(),
        },
        "tags": if i.drill { vec!["ruse", "drill"] } else { vec!["ruse"] },
        "ruse": {"notice": notice.as_str(), "incident": i},
    });
    // The host a lure was touched or harvested on, the address that used
    // a stolen credential, the process and account behind it: single
    // values in ECS, the first of each (all are under `ruse.incident`).
    if let Some(hop) = i.path.iter().find(|h| h.kind == "host") {
        doc["host"] = serde_json::json!({"hostname": hop.name, "name": hop.name});
        if let Some(agent) = &hop.agent {
            doc["host"]["id"] = agent.as_str().into();
        }
    }
    if let Some(ip) = i
        .sources
        .iter()
        .find(|s| s.parse::<std::net::IpAddr>().is_ok())
    {
        doc["source"] = serde_json::json!({"ip": ip});
    }
    if let Some(user) = i
        .credentials
        .iter()
        .find(|c| !c.starts_with("SHA256:") && !c.contains(' '))
    {
        doc["user"] = serde_json::json!({"name": user});
    }
    if let Some(p) = i.processes.iter().next() {
        let name = p.rsplit('/').next().unwrap_or(p);
        doc["process"] = if p.starts_with('/') {
            serde_json::json!({"executable": p, "name": name})
        } else {
            serde_json::json!({"name": name})
        };
    }
    doc
}

/// The OCSF schema version the findings follow.
pub const OCSF_VERSION: &str = "1.5.0";

/// An incident as an OCSF Detection Finding (class 2004): activity Create,
/// Update or Close as it opens, escalates and is resolved; the ATT&CK
/// techniques and tactics in `finding_info.attacks`; the host, source,
/// account and process as observables; the whole incident under
/// `unmapped.ruse`.
pub fn ocsf_finding(i: &Incident, notice: Notice) -> serde_json::Value {
    use crate::model::Status;
    use crate::stix::{technique_name, technique_tactic};
    let (activity_id, activity) = match notice {
        Notice::Opened => (1, "Create"),
        Notice::Escalated | Notice::Acknowledged => (2, "Update"),
        Notice::Resolved => (3, "Close"),
    };
    let (severity_id, severity) = match i.severity {
        Severity::Low => (2, "Low"),
        Severity::Medium => (3, "Medium"),
        Severity::High => (4, "High"),
        Severity::Critical => (5, "Critical"),
    };
    let (status_id, status) = match i.status {
        Status::Open => (1, "New"),
        Status::Acknowledged => (2, "In Progress"),
        Status::Resolved => (4, "Resolved"),
    };
    let attacks: Vec<serde_json::Value> = i
        .techniques
        .iter()
        .map(|t| {
            let mut attack = serde_json::json!({
                "technique": {"uid": t, "name": technique_name(t)},
            });
            if let Some((uid, name)) = technique_tactic(t) {
                attack["tactic"] = serde_json::json!({"uid": uid, "name": name});
            }
            attack
        })
        .collect();
    let mut observables = Vec::new();
    let host = i.path.iter().find(|h| h.kind == "host");
    if let Some(hop) = host {
        observables.push(serde_json::json!({"name": "device.hostname", "type_id": 1, "type": "Hostname", "value": hop.name}));
    }
    for source in i
        .sources
        .iter()
        .filter(|s| s.parse::<std::net::IpAddr>().is_ok())
    {
        observables.push(serde_json::json!({"name": "src_endpoint.ip", "type_id": 2, "type": "IP Address", "value": source}));
    }
    for user in i
        .credentials
        .iter()
        .filter(|c| !c.starts_with("SHA256:") && !c.contains(' '))
    {
        observables.push(serde_json::json!({"name": "user.name", "type_id": 4, "type": "User Name", "value": user}));
    }
    for process in &i.processes {
        observables.push(serde_json::json!({"name": "process.file.path", "type_id": 7, "type": "File Name", "value": process}));
    }
    let mut finding = serde_json::json!({
        "class_uid": 2004,
        "class_name": "Detection Finding",
        "category_uid": 2,
        "category_name": "Findings",
        "activity_id": activity_id,
        "activity_name": activity,
        "type_uid": 200_400 + activity_id,
        "type_name": format!("Detection Finding: {activity}"),
        "time": i.last_seen.0,
        "start_time": i.first_seen.0,
        "end_time": i.last_seen.0,
        "count": i.event_count,
        "message": i.title,
        "severity_id": severity_id,
        "severity": severity,
        "status_id": status_id,
        "status": status,
        "is_alert": !i.drill,
        "metadata": {
            "version": OCSF_VERSION,
            "uid": format!("{}-{}", i.id, i.version),
            "correlation_uid": i.id,
            "product": {
                "name": "Ruse",
                "vendor_name": "Ruse",
                "version": env!("CARGO_PKG_VERSION"),
            },
            "labels": if i.drill { vec!["ruse", "drill"] } else { vec!["ruse"] },
        },
        "finding_info": {
            "uid": i.id,
            "title": i.title,
            "desc": i.path_text(),
            "created_time": i.created.0,
            "modified_time": i.updated.0,
            "first_seen_time": i.first_seen.0,
            "last_seen_time": i.last_seen.0,
            "types": ["Deception"],
            "attacks": attacks,
            "analytic": {
                "name": i.rules.iter().next().cloned().unwrap_or_else(|| "correlation".into()),
                "type_id": 1,
                "type": "Rule",
            },
        },
        "observables": observables,
        "unmapped": {"ruse": {"notice": notice.as_str(), "incident": i}},
    });
    if let Some(hop) = host {
        finding["device"] = serde_json::json!({
            "hostname": hop.name,
            "type_id": 0,
            "type": "Unknown",
        });
        if let Some(agent) = &hop.agent {
            finding["device"]["uid"] = agent.as_str().into();
        }
    }
    finding
}

/// A PagerDuty Events API v2 event: `trigger` when the incident opens or
/// escalates (the same dedup key updates the one alert), `acknowledge`
/// and `resolve` as it is acknowledged and resolved in Ruse.
pub fn pagerduty_event(i: &Incident, notice: Notice, routing_key: &str) -> serde_json::Value {
    let action = match notice {
        Notice::Opened | Notice::Escalated => "trigger",
        Notice::Acknowledged => "acknowledge",
        Notice::Resolved => "resolve",
    };
    let mut event = serde_json::json!({
        "routing_key": routing_key,
        "event_action": action,
        "dedup_key": format!("ruse-{}", i.id),
    });
    if action == "trigger" {
        let drill = if i.drill { "[DRILL] " } else { "" };
        event["client"] = "Ruse".into();
        event["payload"] = serde_json::json!({
            "summary": format!("{drill}{}", i.title).chars().take(1024).collect::<String>(),
            "source": i.path.iter().find(|h| h.kind == "host").map_or("ruse", |h| h.name.as_str()),
            "severity": match i.severity {
                Severity::Critical => "critical",
                Severity::High => "error",
                Severity::Medium => "warning",
                Severity::Low => "info",
            },
            "timestamp": i.last_seen.rfc3339(),
            "component": "ruse",
            "class": i.rules.iter().next().cloned().unwrap_or_default(),
            "custom_details": {
                "incident": i.id,
                "attack path": i.path_text(),
                "ATT&CK": i.techniques.iter().cloned().collect::<Vec<_>>().join(", "),
                "events": i.event_count,
                "first seen": i.first_seen.rfc3339(),
            },
        });
    }
    event
}

/// The names a template may use, and their values for `i`.
pub fn template_values(i: &Incident, notice: Notice) -> Vec<(&'static str, String)> {
    let join = |set: &mut dyn Iterator<Item = &String>| set.cloned().collect::<Vec<_>>().join(", ");
    vec![
        ("id", i.id.clone()),
        ("title", i.title.clone()),
        ("severity", i.severity.as_str().to_owned()),
        ("status", i.status.as_str().to_owned()),
        ("notice", notice.as_str().to_owned()),
        ("path", i.path_text()),
        ("techniques", join(&mut i.techniques.iter())),
        ("rules", join(&mut i.rules.iter())),
        ("sources", join(&mut i.sources.iter())),
        ("lures", join(&mut i.lures.iter())),
        ("processes", join(&mut i.processes.iter())),
        ("first_seen", i.first_seen.rfc3339()),
        ("last_seen", i.last_seen.rfc3339()),
        ("event_count", i.event_count.to_string()),
        ("version", i.version.to_string()),
        ("drill", i.drill.to_string()),
    ]
}

/// `template` with each `{{name}}` replaced by its value, escaped as the
/// contents of a JSON string: a value can never end the string it is in.
pub fn render_template(template: &str, values: &[(&str, String)]) -> Result<String, String> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find("}}")
            .ok_or_else(|| "a {{ without its }}".to_owned())?;
        let name = after[..end].trim();
        let value = values
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v)
            .ok_or_else(|| {
                let known: Vec<&str> = values.iter().map(|(n, _)| *n).collect();
                format!("unknown name {{{{{name}}}}} (known: {})", known.join(", "))
            })?;
        let quoted = serde_json::to_string(value).map_err(|e| e.to_string())?;
        out.push_str(&quoted[1..quoted.len() - 1]);
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Whether `template` renders to a JSON object or array whatever the
/// incident (checked with every name filled).
pub fn check_template(template: &str) -> Result<(), String> {
    let sample = Incident::sample();
    let body = render_template(template, &template_values(&sample, Notice::Opened))?;
    match serde_json::from_str::<serde_json::Value>(&body) {
        Ok(v) if v.is_object() || v.is_array() => Ok(()),
        Ok(_) => Err("the body must be a JSON object or array".into()),
        Err(e) => Err(format!(
            "the body is not JSON once filled in ({e}); put {{{{names}}}} inside quotes"
        )),
    }
}

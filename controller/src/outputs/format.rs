//! What an output sends: the CEF payload, the RFC 5424 syslog message,
//! webhook bodies (JSON, Slack, Teams).

use ruse_proto::types::UnixMs;

use super::config::WebhookFormat;
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

/// An RFC 5424 message carrying the CEF payload.
pub fn syslog_message(i: &Incident, notice: Notice, hostname: &str) -> String {
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
        cef(i, notice)
    )
}

/// The JSON body a webhook receives.
pub fn webhook_body(i: &Incident, notice: Notice, format: WebhookFormat) -> serde_json::Value {
    let drill = if i.drill { "[DRILL] " } else { "" };
    let facts = [
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
    ];
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
        WebhookFormat::Json => serde_json::json!({
            "source": "ruse",
            "notice": notice.as_str(),
            "drill": i.drill,
            "incident": i,
        }),
    }
}

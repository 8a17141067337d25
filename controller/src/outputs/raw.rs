//! Raw events for SIEMs (outputs with `events = true`): each touch of a
//! lure, decoy login, credential use and scan as JSON, an Elastic Common
//! Schema event document, an OCSF activity (File System Activity,
//! Authentication, Network Activity) or a Splunk HEC event. Incidents are
//! what a person is woken for; these are what a hunt searches.

use serde::{Deserialize, Serialize};

use super::format::{ECS_VERSION, OCSF_VERSION};
use crate::incidents::event_severity;
use crate::model::{Severity, StoredEvent};

/// An event as an output queues it: with the names of the hosts it
/// involves, taken from the fleet when it was stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RawEvent {
    pub event: StoredEvent,
    /// The host of the agent that reported it.
    pub host: String,
    /// For a credential use: the host the credential was planted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin_host: Option<String>,
}

/// What an event is, for a SIEM's categories.
enum Class {
    /// A lure file opened, changed, removed or put back.
    File,
    /// Credentials presented to a decoy.
    Login,
    /// A connection, a message or a scan at a decoy.
    Network,
    /// Anything else (a flood summary).
    Other,
}

fn class(e: &StoredEvent) -> Class {
    match e.kind.as_str() {
        "touch" | "modify" | "delete" | "rename" | "drift" => Class::File,
        "decoy-login" | ruse_proto::convert::CREDENTIAL_USE => Class::Login,
        "decoy-connection" | "decoy-message" | "portscan" => Class::Network,
        _ => Class::Other,
    }
}

/// The severity of an event on its own (allowed ones are informational).
fn severity(e: &StoredEvent) -> Option<Severity> {
    event_severity(e)
}

/// The event and its hosts as JSON (file, webhook and HEC `json`).
pub fn event_json(r: &RawEvent) -> serde_json::Value {
    serde_json::json!({
        "source": "ruse",
        "type": "event",
        "host": r.host,
        "origin_host": r.origin_host,
        "event": r.event,
    })
}

/// The last component of a path.
fn base_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// An event as an ECS event document (`event.kind: event`).
pub fn ecs_event(r: &RawEvent, observer: &str) -> serde_json::Value {
    let e = &r.event;
    let (category, kind): (&str, &str) = match (class(e), e.kind.as_str()) {
        (Class::File, "touch") => ("file", "access"),
        (Class::File, "delete") => ("file", "deletion"),
        (Class::File, "drift") => ("file", "creation"),
        (Class::File, _) => ("file", "change"),
        (Class::Login, _) => ("authentication", "start"),
        (Class::Network, "decoy-message") => ("network", "protocol"),
        (Class::Network, _) => ("network", "connection"),
        (Class::Other, _) => ("intrusion_detection", "info"),
    };
    let score = match severity(e) {
        None => 0,
        Some(Severity::Low) => 21,
        Some(Severity::Medium) => 47,
        Some(Severity::High) => 73,
        Some(Severity::Critical) => 99,
    };
    let mut tags = vec!["ruse"];
    if e.allowed {
        tags.push("allowed");
    }
    if e.drill {
        tags.push("drill");
    }
    let mut doc = serde_json::json!({
        "@timestamp": e.observed.rfc3339(),
        "ecs": {"version": ECS_VERSION},
        "message": format!("{} on {} ({})", e.kind, r.host, if e.template.is_empty() { "decoy" } else { &e.template }),
        "event": {
            "kind": "event",
            "category": [category],
            "type": [kind],
            "action": e.kind,
            "id": e.id,
            "severity": score,
            "created": e.received.rfc3339(),
            "dataset": "ruse.events",
            "module": "ruse",
            "provider": "ruse-controller",
        },
        "observer": {"vendor": "Ruse", "product": "Ruse", "type": "deception", "hostname": observer},
        "host": {"id": e.agent.as_str(), "name": r.host, "hostname": r.host},
        "labels": {
            "lure_id": e.lure_id,
            "template": e.template,
            "campaign": e.campaign,
            "allowed": e.allowed.to_string(),
            "drill": e.drill.to_string(),
        },
        "tags": tags,
        "ruse": {"event": e, "origin_host": r.origin_host},
    });
    if !e.template.is_empty() {
        doc["rule"] = serde_json::json!({"name": e.template, "id": e.lure_id, "ruleset": "ruse"});
    }
    if matches!(class(e), Class::Login) {
        doc["event"]["outcome"] = "failure".into();
    }
    if !e.path.is_empty() && matches!(class(e), Class::File) {
        doc["file"] = serde_json::json!({"path": e.path, "name": base_name(&e.path)});
    }
    if let Some(p) = &e.process {
        let mut process = serde_json::json!({"pid": p.pid});
        if !p.exe.is_empty() {
            process["executable"] = p.exe.as_str().into();
            process["name"] = base_name(&p.exe).into();
        }
        if !p.cmdline.is_empty() {
            process["command_line"] = p.cmdline.as_str().into();
        }
        doc["process"] = process;
        doc["user"] = serde_json::json!({"id": p.uid.to_string()});
        if !p.user.is_empty() {
            doc["user"]["name"] = p.user.as_str().into();
        }
    }
    if let Some(d) = &e.decoy {
        if d.source_ip.parse::<std::net::IpAddr>().is_ok() {
            doc["source"] = serde_json::json!({"ip": d.source_ip, "port": d.source_port});
        }
        doc["destination"] = serde_json::json!({"port": d.port});
        doc["network"] = serde_json::json!({"protocol": d.protocol});
    }
    if let Some(c) = &e.credential {
        let mut user = serde_json::json!({});
        if !c.username.is_empty() {
            user["name"] = c.username.as_str().into();
        }
        if !c.domain.is_empty() {
            user["domain"] = c.domain.as_str().into();
        }
        if user.as_object().is_some_and(|u| !u.is_empty()) {
            doc["user"] = user;
        }
    }
    doc
}

/// An event as an OCSF activity: File System Activity (1001) for a lure
/// file, Authentication (3002, a failed logon) for credentials presented
/// to a decoy, Network Activity (4001) for connections, messages and
/// scans; other kinds (an agent's flood summary) are File System Activity
/// "Other" on the agent's host.
pub fn ocsf_event(r: &RawEvent) -> serde_json::Value {
    let e = &r.event;
    let (severity_id, severity_name) = match severity(e) {
        None => (1, "Informational"),
        Some(Severity::Low) => (2, "Low"),
        Some(Severity::Medium) => (3, "Medium"),
        Some(Severity::High) => (4, "High"),
        Some(Severity::Critical) => (5, "Critical"),
    };
    let (class_uid, class_name, category_uid, category_name, activity_id, activity) =
        match (class(e), e.kind.as_str()) {
            (Class::File, "touch") => (
                1001,
                "File System Activity",
                1,
                "System Activity",
                2,
                "Read",
            ),
            (Class::File, "modify") => (
                1001,
                "File System Activity",
                1,
                "System Activity",
                3,
                "Update",
            ),
            (Class::File, "delete") => (
                1001,
                "File System Activity",
                1,
                "System Activity",
                4,
                "Delete",
            ),
            (Class::File, "rename") => (
                1001,
                "File System Activity",
                1,
                "System Activity",
                5,
                "Rename",
            ),
            (Class::File, _) => (
                1001,
                "File System Activity",
                1,
                "System Activity",
                1,
                "Create",
            ),
            (Class::Login, _) => (
                3002,
                "Authentication",
                3,
                "Identity & Access Management",
                1,
                "Logon",
            ),
            (Class::Network, "decoy-message") => (
                4001,
                "Network Activity",
                4,
                "Network Activity",
                6,
                "Traffic",
            ),
            (Class::Network, _) => (4001, "Network Activity", 4, "Network Activity", 1, "Open"),
            (Class::Other, _) => (
                1001,
                "File System Activity",
                1,
                "System Activity",
                99,
                "Other",
            ),
        };
    let mut labels = vec!["ruse"];
    if e.allowed {
        labels.push("allowed");
    }
    if e.drill {
        labels.push("drill");
    }
    let device = serde_json::json!({
        "hostname": r.host,
        "uid": e.agent.as_str(),
        "type_id": 0,
        "type": "Unknown",
    });
    let mut doc = serde_json::json!({
        "class_uid": class_uid,
        "class_name": class_name,
        "category_uid": category_uid,
        "category_name": category_name,
        "activity_id": activity_id,
        "activity_name": activity,
        "type_uid": class_uid * 100 + activity_id,
        "type_name": format!("{class_name}: {activity}"),
        "time": e.observed.0,
        "severity_id": severity_id,
        "severity": severity_name,
        "message": format!("{} on {}", e.kind, r.host),
        "metadata": {
            "version": OCSF_VERSION,
            "uid": e.id,
            "logged_time": e.received.0,
            "product": {
                "name": "Ruse",
                "vendor_name": "Ruse",
                "version": env!("CARGO_PKG_VERSION"),
            },
            "labels": labels,
        },
        "unmapped": {"ruse": {"event": e, "origin_host": r.origin_host}},
    });
    let mut actor_process = serde_json::json!({});
    if let Some(p) = &e.process {
        actor_process = serde_json::json!({
            "pid": p.pid,
            "cmd_line": p.cmdline,
            "user": {"uid": p.uid.to_string(), "name": p.user},
        });
        if !p.exe.is_empty() {
            actor_process["file"] = serde_json::json!({
                "path": p.exe,
                "name": base_name(&p.exe),
                "type_id": 1,
                "type": "Regular File",
            });
        }
    }
    match class(e) {
        Class::File | Class::Other => {
            doc["device"] = device;
            doc["actor"] = serde_json::json!({"process": actor_process});
            doc["file"] = serde_json::json!({
                "path": e.path,
                "name": base_name(&e.path),
                "type_id": 1,
                "type": "Regular File",
            });
        }
        Class::Login | Class::Network => {
            let d = e.decoy.clone().unwrap_or_default();
            let mut src = serde_json::json!({"port": d.source_port});
            if d.source_ip.parse::<std::net::IpAddr>().is_ok() {
                src["ip"] = d.source_ip.as_str().into();
            }
            doc["src_endpoint"] = src;
            // The decoy's host: OCSF puts no device on these classes.
            doc["dst_endpoint"] = serde_json::json!({
                "hostname": r.host,
                "uid": e.agent.as_str(),
                "port": d.port,
                "svc_name": d.name,
            });
            if matches!(class(e), Class::Login) {
                let c = e.credential.clone().unwrap_or_default();
                doc["status_id"] = 2.into();
                doc["status"] = "Failure".into();
                doc["is_cleartext"] = (!c.password.is_empty()).into();
                doc["auth_protocol"] = d.protocol.as_str().into();
                doc["auth_protocol_id"] = 99.into();
                doc["user"] = serde_json::json!({"name": c.username});
                if !c.domain.is_empty() {
                    doc["user"]["domain"] = c.domain.as_str().into();
                }
                doc["service"] = serde_json::json!({"name": d.name});
            } else {
                doc["connection_info"] = serde_json::json!({
                    "protocol_name": "tcp",
                    "direction_id": 1,
                    "direction": "Inbound",
                });
                doc["app_name"] = d.protocol.as_str().into();
            }
        }
    }
    doc
}

/// A raw event for Splunk's HTTP Event Collector (sourcetype
/// `ruse:event`), its indexed fields those a search filters on.
pub fn hec_raw(r: &RawEvent, index: Option<&str>, source: &str, ocsf: bool) -> serde_json::Value {
    let e = &r.event;
    let mut event = serde_json::json!({
        "time": e.observed.0 as f64 / 1000.0,
        "host": r.host,
        "source": source,
        "sourcetype": "ruse:event",
        "event": if ocsf { ocsf_event(r) } else { event_json(r) },
        "fields": {
            "event_id": e.id,
            "kind": e.kind,
            "agent": e.agent.as_str(),
            "lure_id": e.lure_id,
            "template": e.template,
            "allowed": e.allowed.to_string(),
            "drill": e.drill.to_string(),
        },
    });
    if let Some(index) = index {
        event["index"] = index.into();
    }
    event
}

//! STIX 2.1 export of incidents, for sharing with a sector ISAC: the
//! reporting system (identity), each incident, indicators for attacker
//! addresses (and, for internal use, the planted credentials that
//! matched), sightings of those indicators, and attack patterns by MITRE
//! ATT&CK id.
//!
//! Shared outside the hospital, a bundle is [`Sharing::Redacted`]: peers
//! get what they can act on — techniques, the kinds of decoys touched, the
//! attacker's addresses, times and counts — and none of the hospital's
//! internal names (hosts, decoys, lures, the attack path, planted
//! credentials, the trust domain).

use std::collections::BTreeMap;

use serde_json::{Value, json};

use ruse_proto::types::{UnixMs, uuid4};

use crate::model::Incident;

/// ATT&CK technique names for the ids incidents carry.
pub fn technique_name(id: &str) -> &'static str {
    match id {
        "T1005" => "Data from Local System",
        "T1018" => "Remote System Discovery",
        "T1021" => "Remote Services",
        "T1021.001" => "Remote Services: Remote Desktop Protocol",
        "T1021.002" => "Remote Services: SMB/Windows Admin Shares",
        "T1021.004" => "Remote Services: SSH",
        "T1046" => "Network Service Discovery",
        "T1070.004" => "Indicator Removal: File Deletion",
        "T1078" => "Valid Accounts",
        "T1110" => "Brute Force",
        "T1552.001" => "Unsecured Credentials: Credentials In Files",
        "T1552.002" => "Unsecured Credentials: Credentials in Registry",
        "T1552.004" => "Unsecured Credentials: Private Keys",
        "T1565.001" => "Data Manipulation: Stored Data Manipulation",
        _ => "Unknown technique",
    }
}

/// The ATT&CK tactic (id, name) a technique is reported under. Valid
/// Accounts serves several; at a decoy it is an intruder's way in.
pub fn technique_tactic(id: &str) -> Option<(&'static str, &'static str)> {
    let base = id.split('.').next().unwrap_or(id);
    Some(match base {
        "T1005" => ("TA0009", "Collection"),
        "T1018" | "T1046" => ("TA0007", "Discovery"),
        "T1021" => ("TA0008", "Lateral Movement"),
        "T1070" => ("TA0005", "Defense Evasion"),
        "T1078" => ("TA0001", "Initial Access"),
        "T1110" | "T1552" => ("TA0006", "Credential Access"),
        "T1565" => ("TA0040", "Impact"),
        _ => return None,
    })
}

fn time(t: UnixMs) -> String {
    // STIX timestamps: RFC 3339, UTC, with milliseconds.
    let s = t.rfc3339();
    format!("{}.{:03}Z", s.trim_end_matches('Z'), t.0.rem_euclid(1000))
}

/// Escapes a value inside a STIX pattern string literal.
fn literal(s: &str) -> String {
    s.replace('\\', "\\\\").replace('\'', "\\'")
}

/// What a bundle may carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sharing {
    /// For peers: no internal names (the default).
    Redacted,
    /// For the hospital's own tools: everything.
    Internal,
}

/// A STIX 2.1 bundle of `incidents`, made at `now` by `producer`.
pub fn bundle(incidents: &[Incident], producer: &str, now: UnixMs, sharing: Sharing) -> Value {
    let redacted = sharing == Sharing::Redacted;
    let created = time(now);
    let common = |kind: &str| -> (String, Value) {
        let id = format!("{kind}--{}", uuid4());
        (
            id.clone(),
            json!({"type": kind, "spec_version": "2.1", "id": id, "created": created, "modified": created}),
        )
    };
    let mut objects = Vec::new();
    let (identity, mut o) = common("identity");
    o["name"] = json!(if redacted {
        "Ruse deception sensor"
    } else {
        producer
    });
    o["identity_class"] = json!("system");
    o["description"] = json!("Ruse deception platform: every sighting is a use of planted bait.");
    objects.push(o);

    let mut patterns: BTreeMap<String, String> = BTreeMap::new();
    for i in incidents {
        for t in &i.techniques {
            if !patterns.contains_key(t) {
                let (id, mut o) = common("attack-pattern");
                o["name"] = json!(technique_name(t));
                o["external_references"] = json!([{
                    "source_name": "mitre-attack",
                    "external_id": t,
                    "url": format!("https://attack.mitre.org/techniques/{}/", t.replace('.', "/")),
                }]);
                objects.push(o);
                patterns.insert(t.clone(), id);
            }
        }
    }

    for i in incidents {
        let (incident_id, mut o) = common("incident");
        let title = if redacted {
            redacted_title(i)
        } else {
            i.title.clone()
        };
        let path = if redacted {
            "decoys touched: ".to_owned() + &decoy_kinds(i).join(", ")
        } else {
            format!("attack path {}", i.path_text())
        };
        o["name"] = json!(title);
        o["description"] = json!(format!(
            "{} incident ({}), {path}; {} events from {} to {}.{}",
            i.severity.as_str(),
            i.status.as_str(),
            i.event_count,
            time(i.first_seen),
            time(i.last_seen),
            if i.drill { " This was a drill." } else { "" }
        ));
        o["labels"] = json!([i.severity.as_str()]);
        o["external_references"] = json!([{"source_name": "ruse", "external_id": i.id}]);
        objects.push(o);

        let mut indicators = Vec::new();
        for address in &i.sources {
            let kind = if address.contains(':') {
                "ipv6-addr"
            } else {
                "ipv4-addr"
            };
            indicators.push((
                format!("Address seen using planted bait: {address}"),
                format!("[{kind}:value = '{}']", literal(address)),
            ));
        }
        // The planted credential that matched, never what else was typed
        // (an attacker trying `root` did not use a planted `root`); bait
        // is internal, so only for the hospital's own tools.
        for matched in i.matched.iter().filter(|_| !redacted) {
            let Some((how, id)) = matched.split_once(": ") else {
                continue;
            };
            let pattern = match how {
                "ssh key fingerprint" => {
                    format!("[x-ruse-ssh-key:fingerprint = '{}']", literal(id))
                }
                _ => format!("[user-account:account_login = '{}']", literal(id)),
            };
            indicators.push((format!("Planted credential used ({how}): {id}"), pattern));
        }
        for (name, pattern) in indicators {
            let (indicator, mut o) = common("indicator");
            o["name"] = json!(name);
            o["indicator_types"] = json!(["malicious-activity"]);
            o["pattern"] = json!(pattern);
            o["pattern_type"] = json!("stix");
            o["valid_from"] = json!(time(i.first_seen));
            objects.push(o);
            let (_, mut s) = common("sighting");
            s["sighting_of_ref"] = json!(indicator);
            s["first_seen"] = json!(time(i.first_seen));
            s["last_seen"] = json!(time(i.last_seen.max(i.first_seen)));
            s["count"] = json!(i.event_count.min(999_999_999));
            s["where_sighted_refs"] = json!([identity]);
            s["description"] = json!(title);
            objects.push(s);
            for t in &i.techniques {
                let (_, mut r) = common("relationship");
                r["relationship_type"] = json!("indicates");
                r["source_ref"] = json!(indicator);
                r["target_ref"] = json!(patterns[t]);
                objects.push(r);
            }
            let (_, mut r) = common("relationship");
            r["relationship_type"] = json!("related-to");
            r["source_ref"] = json!(indicator);
            r["target_ref"] = json!(incident_id);
            objects.push(r);
        }
        for t in &i.techniques {
            let (_, mut r) = common("relationship");
            r["relationship_type"] = json!("uses");
            r["source_ref"] = json!(incident_id);
            r["target_ref"] = json!(patterns[t]);
            objects.push(r);
        }
    }
    json!({"type": "bundle", "id": format!("bundle--{}", uuid4()), "objects": objects})
}

/// A title without internal names: the strongest rule and the decoy kinds.
fn redacted_title(i: &Incident) -> String {
    let what = if i.rules.contains("credential-use") {
        "Planted credential used against a decoy"
    } else if i.rules.contains("scan") {
        "Scan across decoy services"
    } else if !i.decoys.is_empty() {
        "Contact with a decoy service"
    } else {
        "Planted bait touched on an endpoint"
    };
    let kinds = decoy_kinds(i);
    if kinds.is_empty() {
        what.to_owned()
    } else {
        format!("{what} ({})", kinds.join(", "))
    }
}

/// The protocols of the decoys an incident reached (`ssh`, `dicom`), not
/// their names.
fn decoy_kinds(i: &Incident) -> Vec<String> {
    let mut kinds: Vec<String> = i
        .path
        .iter()
        .filter(|h| h.kind == "decoy")
        .filter_map(|h| h.what.rsplit(" on ").next())
        .filter_map(|p| p.split('/').next())
        .map(str::to_owned)
        .collect();
    kinds.sort();
    kinds.dedup();
    kinds
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_object_has_the_required_properties() {
        let i = crate::incidents::tests_support::incident();
        let b = bundle(
            &[i],
            "Ruse at General Hospital",
            UnixMs(1_795_000_000_123),
            Sharing::Internal,
        );
        assert_eq!(b["type"], "bundle");
        let objects = b["objects"].as_array().unwrap();
        let ids: Vec<&str> = objects.iter().map(|o| o["id"].as_str().unwrap()).collect();
        for o in objects {
            let kind = o["type"].as_str().unwrap();
            assert_eq!(o["spec_version"], "2.1");
            assert!(o["id"].as_str().unwrap().starts_with(&format!("{kind}--")));
            assert!(o["created"].as_str().unwrap().ends_with(".123Z"));
            match kind {
                "indicator" => {
                    assert_eq!(o["pattern_type"], "stix");
                    assert!(o["pattern"].as_str().unwrap().starts_with('['));
                }
                "sighting" | "relationship" => {
                    for r in ["sighting_of_ref", "source_ref", "target_ref"] {
                        if let Some(target) = o[r].as_str() {
                            assert!(ids.contains(&target), "{r} {target} dangles");
                        }
                    }
                }
                _ => {}
            }
        }
        let patterns: Vec<&str> = objects
            .iter()
            .filter(|o| o["type"] == "indicator")
            .map(|o| o["pattern"].as_str().unwrap())
            .collect();
        assert!(patterns.contains(&"[ipv4-addr:value = '10.9.8.7']"));
        // What matched, not what else the attacker typed.
        assert!(patterns.contains(&"[x-ruse-ssh-key:fingerprint = 'SHA256:abc']"));
        assert!(!patterns.iter().any(|p| p.contains("root")), "{patterns:?}");
        assert!(objects.iter().any(|o| o["type"] == "attack-pattern"
            && o["external_references"][0]["external_id"] == "T1078"));
        assert_eq!(literal("a'b\\c"), "a\\'b\\\\c");
    }

    #[test]
    fn a_redacted_bundle_keeps_what_peers_need_and_no_internal_names() {
        let mut i = crate::incidents::tests_support::incident();
        i.path.push(crate::model::Hop {
            kind: "decoy".into(),
            name: "pacs-archive02".into(),
            agent: None,
            first_seen: UnixMs(2_000),
            what: "credential-use on ssh/22".into(),
        });
        let b = bundle(
            &[i.clone()],
            "Ruse (hospital.example)",
            UnixMs(1_795_000_000_000),
            Sharing::Redacted,
        );
        let text = b.to_string();
        for internal in [
            "ws-07",
            "pacs-archive02",
            "pacs",
            "hospital.example",
            "SHA256:abc",
            "01lure",
            i.agents.iter().next().unwrap().as_str(),
        ] {
            assert!(!text.contains(internal), "{internal} leaked: {text}");
        }
        assert!(text.contains("10.9.8.7"), "the attacker's address is kept");
        assert!(text.contains("T1078") && text.contains("T1552.004"));
        assert!(text.contains("Planted credential used against a decoy (ssh)"));
    }
}

//! STIX 2.1 export of incidents, for sharing with a sector ISAC: the
//! reporting system (identity), each incident, indicators for attacker
//! addresses and the identifiers of credentials they used, sightings of
//! those indicators, and attack patterns by MITRE ATT&CK id.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use ruse_proto::types::{UnixMs, random_bytes};

use crate::incidents::Incident;

/// ATT&CK technique names for the ids incidents carry.
pub fn technique_name(id: &str) -> &'static str {
    match id {
        "T1005" => "Data from Local System",
        "T1018" => "Remote System Discovery",
        "T1021" => "Remote Services",
        "T1021.002" => "Remote Services: SMB/Windows Admin Shares",
        "T1021.004" => "Remote Services: SSH",
        "T1046" => "Network Service Discovery",
        "T1070.004" => "Indicator Removal: File Deletion",
        "T1078" => "Valid Accounts",
        "T1110" => "Brute Force",
        "T1552.001" => "Unsecured Credentials: Credentials In Files",
        "T1552.004" => "Unsecured Credentials: Private Keys",
        "T1565.001" => "Data Manipulation: Stored Data Manipulation",
        _ => "Unknown technique",
    }
}

/// A random (version 4) UUID.
fn uuid() -> String {
    let mut b = [0u8; 16];
    random_bytes(&mut b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = ruse_proto::types::hex(&b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
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

/// A STIX 2.1 bundle of `incidents`, made at `now` by `producer`.
pub fn bundle(incidents: &[Incident], producer: &str, now: UnixMs) -> Value {
    let created = time(now);
    let common = |kind: &str| -> (String, Value) {
        let id = format!("{kind}--{}", uuid());
        (
            id.clone(),
            json!({"type": kind, "spec_version": "2.1", "id": id, "created": created, "modified": created}),
        )
    };
    let mut objects = Vec::new();
    let (identity, mut o) = common("identity");
    o["name"] = json!(producer);
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
        o["name"] = json!(i.title);
        o["description"] = json!(format!(
            "{} incident ({}), attack path {}; {} events from {} to {}.{}",
            i.severity.as_str(),
            i.status.as_str(),
            i.path_text(),
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
        for login in &i.credentials {
            if login.starts_with("SHA256:") {
                continue;
            }
            indicators.push((
                format!("Planted credential identifier used: {login}"),
                format!("[user-account:account_login = '{}']", literal(login)),
            ));
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
            s["description"] = json!(i.title);
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
    json!({"type": "bundle", "id": format!("bundle--{}", uuid()), "objects": objects})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_object_has_the_required_properties() {
        let i = crate::incidents::tests_support::incident();
        let b = bundle(&[i], "Ruse at General Hospital", UnixMs(1_795_000_000_123));
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
        assert!(patterns.contains(&"[user-account:account_login = 'radiology7']"));
        assert!(objects.iter().any(|o| o["type"] == "attack-pattern"
            && o["external_references"][0]["external_id"] == "T1078"));
        assert_eq!(literal("a'b\\c"), "a\\'b\\\\c");
    }
}

use super::*;

const GOOD: &str = r#"
kind: Campaign
name: icu-workstations
selector: {site: icu, role: workstation}
lures:
  - template: ssh-key
    decoy: pacs-archive02
  - template: patient-csv
    path: "~/Documents/Exports"
rollout: {waves: ["5%", "25%", "100%"], max_failure_ratio: 0.1}
rotate_every: 30d
---
kind: Decoy
name: pacs-archive02
selector: {role: decoy}
services: [{protocol: ssh, port: 22}, {protocol: dicom, port: 104}]
"#;

#[test]
fn the_design_example_parses() {
    let docs = parse(GOOD).unwrap();
    assert_eq!(docs.len(), 2);
    let Document::Campaign(c) = &docs[0].doc else {
        panic!()
    };
    assert_eq!(c.waves, [5, 25, 100]);
    assert_eq!(c.lures[0].key, "ssh-key");
    assert_eq!(c.rotate_every, Some(Duration::from_secs(30 * 86_400)));
    let Document::Decoy(d) = &docs[1].doc else {
        panic!()
    };
    assert_eq!(d.address, "pacs-archive02");
    assert_eq!(d.port("dicom"), Some(104));
}

#[test]
fn json_documents_parse_too() {
    let json = r#"{"kind": "Decoy", "name": "fhir-01", "address": "10.0.0.9", "services": [{"protocol": "https", "port": 8443}]}"#;
    let docs = parse(json).unwrap();
    assert_eq!(docs[0].doc.name(), "fhir-01");
}

#[test]
fn errors_name_document_field_and_reason() {
    let cases: &[(&str, &str)] = &[
        (
            "kind: Campaign\nname: c\nlures: [{template: ssh-kee, decoy: d}]\n",
            "document 1 (Campaign c): lures[0].template: unknown template \"ssh-kee\"",
        ),
        (
            "kind: Decoy\nname: d\nservices: [{protocol: ssh, port: 22}]\n---\nkind: Campaign\nname: c\nlures: [{template: netrc, tempalte: x, decoy: d}]\n",
            "document 2 (Campaign c): lures[0].tempalte: unknown field `tempalte`, expected one of `template`",
        ),
        (
            "kind: Campaign\nname: c\nlures: [{template: pgpass, decoy: d}]\nrollout: {waves: [\"50%\", \"20%\", \"100%\"]}\n",
            "document 1 (Campaign c): rollout.waves[1]: each wave must cover more",
        ),
        (
            "kind: Campaign\nname: c\nlures: [{template: ssh-key}]\n",
            "lures[0].decoy: template ssh-key points at a decoy",
        ),
        (
            "kind: Campaign\nname: Bad_Name\nlures: [{template: patient-csv}]\n",
            "document 1 (Campaign Bad_Name): name: \"Bad_Name\" is not a valid name",
        ),
        (
            "kind: Decoy\nname: d\nservices: [{protocol: rlogin, port: 513}]\n",
            "services[0].protocol: unknown protocol \"rlogin\"",
        ),
        (
            "kind: Decoy\nname: d\nservices: [{protocol: telnet, port: 23, device: toaster}]\n",
            "services[0].device: unknown device \"toaster\"",
        ),
        (
            "kind: Decoy\nname: d\nservices: [{protocol: ssh, port: 22, banner: hi}]\n",
            "services[0]: device and banner are for telnet services",
        ),
        (
            "kind: Decoy\nname: d\nservices: [{protocol: telnet, port: 23, banner: \"a\\u0007b\"}]\n",
            "services[0].banner: contains a bidirectional, invisible or control character",
        ),
        (
            "kind: Decoy\nname: d\nservices: [{protocol: ftp, port: 21, refusal_delay: 1m}]\n",
            "services[0].refusal_delay: must be at most 10s",
        ),
        (
            "kind: Decoy\nname: d\nservices: [{protocol: ftp, port: 21, refusal_delay: slow}]\n",
            "services[0].refusal_delay:",
        ),
        (
            "kind: Campaign\nname: c\nlures: [{template: patient-csv, path: \"../etc\"}]\n",
            "lures[0].path:",
        ),
        (
            "kind: Secret\nname: s\n",
            "document 1 (Secret s): kind: unknown kind \"Secret\"",
        ),
        (
            "kind: Campaign\nname: c\nlures: []\nrotate_every: soon\n",
            "a campaign needs at least one lure",
        ),
        ("", "no documents"),
        ("kind: [unclosed", "document 1: not valid YAML or JSON"),
    ];
    for (text, expected) in cases {
        let err = parse(text).unwrap_err().to_string();
        assert!(
            err.contains(expected),
            "for {text:?}\n  got:      {err}\n  expected: {expected}"
        );
    }
}

#[test]
fn duplicate_slots_need_distinct_names() {
    let two = "kind: Campaign\nname: c\nlures:\n  - {template: patient-csv}\n  - {template: patient-csv}\n";
    assert!(
        parse(two)
            .unwrap_err()
            .to_string()
            .contains("distinct name")
    );
    let named = "kind: Campaign\nname: c\nlures:\n  - {template: patient-csv}\n  - {template: patient-csv, name: er-export}\n";
    let Document::Campaign(c) = &parse(named).unwrap()[0].doc else {
        panic!()
    };
    assert_eq!(c.lures[1].key, "er-export");
}

#[test]
fn allow_rules_need_something_to_match() {
    let ok = "kind: AllowRule\nname: backup\nprocess: /usr/bin/restic\nselector: {site: icu}\n";
    let Document::AllowRule(r) = &parse(ok).unwrap()[0].doc else {
        panic!()
    };
    assert_eq!(r.process, "/usr/bin/restic");
    for (text, expected) in [
        (
            "kind: AllowRule\nname: r\n",
            "process: give at least one of",
        ),
        (
            "kind: AllowRule\nname: r\nprocess: restic\n",
            "must be an absolute executable path",
        ),
        (
            "kind: AllowRule\nname: r\nprocess: \"/*\"\n",
            "would allow every process",
        ),
        (
            "kind: AllowRule\nname: r\ntemplate: xlsx\n",
            "template: unknown template",
        ),
    ] {
        let err = parse(text).unwrap_err().to_string();
        assert!(err.contains(expected), "{err}");
    }
}

#[test]
fn deep_or_huge_files_are_refused_before_parsing() {
    let deep_flow = "[".repeat(60_000);
    let started = std::time::Instant::now();
    let err = parse(&deep_flow).unwrap_err();
    assert!(err.reason.contains("nests deeper"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(1));
    let deep_dashes = format!("{}x\n", "- ".repeat(200));
    assert!(check_shape(&deep_dashes).is_err());
    let mut deep_block = String::new();
    for level in 0..300 {
        deep_block.push_str(&format!("{}k{level}:\n", " ".repeat(level)));
    }
    assert!(check_shape(&deep_block).is_err());
    assert!(check_shape(&"x".repeat(MAX_MANIFEST_BYTES + 1)).is_err());
    // Brackets in quotes and comments are text.
    let quoted = format!("name: \"{}\" # {}\n", "[".repeat(500), "{".repeat(500));
    assert!(check_shape(&quoted).is_ok());
    // The shipped example passes.
    let example = include_str!("../../../deploy/examples/healthcare-campaign.yaml");
    assert!(check_shape(example).is_ok());
}

#[test]
fn text_that_displays_as_something_else_is_refused() {
    let spoofed = "kind: Campaign\nname: c\nselector: {site: icu}\nlures:\n  - {template: patient-csv, path: \"~/Documents/\u{202E}vsc.exe\"}\n";
    let err = parse(spoofed).unwrap_err();
    assert_eq!(err.field, "lures[0].path", "{err}");
    let described = "kind: Campaign\nname: c\ndescription: \"ok\u{2066}hidden\u{2069}\"\nselector: {site: icu}\nlures:\n  - {template: pgpass}\n";
    assert_eq!(parse(described).unwrap_err().field, "description");
    // Line breaks in a description are text, not spoofing.
    let multiline = "kind: Campaign\nname: c\ndescription: |\n  two\n  lines\nselector: {site: icu}\nlures:\n  - {template: pgpass}\n";
    assert!(parse(multiline).is_ok());
}

#[test]
fn a_telnet_banner_may_have_lines() {
    let docs = parse(
        "kind: Decoy\nname: d\nservices:\n  - protocol: telnet\n    port: 23\n    banner: \"MedCab XT\\nService access only\"\n",
    )
    .unwrap();
    let Document::Decoy(d) = &docs[0].doc else {
        panic!("{docs:?}")
    };
    assert_eq!(
        d.services[0].banner.as_deref(),
        Some("MedCab XT\nService access only")
    );
}

use super::*;
use proptest::prelude::*;

#[test]
fn identity_uri_round_trip_and_rejections() {
    let td: TrustDomain = "ruse.local".parse().unwrap();
    let agent = Identity::Agent("01abc".parse().unwrap());
    assert_eq!(agent.to_uri(&td), "spiffe://ruse.local/agent/01abc");
    assert_eq!(Identity::from_uri(&td, &agent.to_uri(&td)).unwrap(), agent);
    let admin = Identity::Admin("alice".parse().unwrap());
    assert_eq!(Identity::from_uri(&td, &admin.to_uri(&td)).unwrap(), admin);
    for bad in [
        "spiffe://other.local/agent/01abc",
        "https://ruse.local/agent/01abc",
        "spiffe://ruse.local/agent/",
        "spiffe://ruse.local/agent/a/b",
        "spiffe://ruse.local/node/01abc",
        "spiffe://ruse.local",
        "spiffe://ruse.local/agent/UPPER",
    ] {
        assert!(Identity::from_uri(&td, bad).is_err(), "{bad} accepted");
    }
}

#[test]
fn labels_validate_and_match() {
    let labels = Labels::parse_pairs(["site=icu,role=workstation", "tier=1"]).unwrap();
    assert_eq!(labels.get("site"), Some("icu"));
    assert_eq!(labels.len(), 3);
    assert!(labels.matches(&Labels::parse_pairs(["site=icu"]).unwrap()));
    assert!(labels.matches(&Labels::new()));
    assert!(!labels.matches(&Labels::parse_pairs(["site=er"]).unwrap()));
    assert!(!labels.matches(&Labels::parse_pairs(["dept=x"]).unwrap()));
    assert!(Labels::parse_pairs(["example.org/site=icu"]).is_ok());
    assert!(Labels::parse_pairs(["empty="]).is_ok());
    for bad in ["noequals", "=v", "k=v v", "-k=v", "k=-v", "a/b/c=v"] {
        assert!(Labels::parse_pairs([bad]).is_err(), "{bad} accepted");
    }
    let long = format!("k={}", "v".repeat(64));
    assert!(Labels::parse_pairs([long.as_str()]).is_err());
}

#[test]
fn labels_overlay_prefers_the_overlay() {
    let base = Labels::parse_pairs(["site=er,role=ws"]).unwrap();
    let top = Labels::parse_pairs(["site=icu"]).unwrap();
    let merged = base.overlaid_with(&top);
    assert_eq!(merged.get("site"), Some("icu"));
    assert_eq!(merged.get("role"), Some("ws"));
}

#[test]
fn durations_parse_and_format() {
    for (s, ms) in [
        ("250ms", 250),
        ("30s", 30_000),
        ("5m", 300_000),
        ("1h", 3_600_000),
        ("7d", 604_800_000),
        ("1h30m", 5_400_000),
    ] {
        assert_eq!(parse_duration(s).unwrap(), Duration::from_millis(ms), "{s}");
        assert_eq!(format_duration(Duration::from_millis(ms)), s);
    }
    for bad in ["", "h", "10", "10y", "1.5h", "99999999999999999999d"] {
        assert!(parse_duration(bad).is_err(), "{bad} accepted");
    }
}

#[test]
fn rfc3339_parses_back() {
    for ms in [0i64, 951_782_400_000, 1_795_000_000_000, 4_102_444_799_000] {
        let t = UnixMs(ms);
        assert_eq!(UnixMs::parse_rfc3339(&t.rfc3339()).unwrap(), t);
    }
    assert_eq!(
        UnixMs::parse_rfc3339("2026-12-31").unwrap().rfc3339(),
        "2026-12-31T00:00:00Z"
    );
    for bad in [
        "2026-02-30",
        "2026-13-01",
        "2026-12-31T10:00:00",
        "yesterday",
        "2026-1-1x",
    ] {
        assert!(UnixMs::parse_rfc3339(bad).is_err(), "{bad}");
    }
}

#[test]
fn text_hiding_characters_are_recognised() {
    for c in [
        '\u{202E}', '\u{2066}', '\u{200B}', '\u{200F}', '\u{FEFF}', '\u{1b}', '\n',
    ] {
        assert!(hides_text(c), "{c:?}");
    }
    for c in ['a', 'é', 'Ж', '漢', ' ', '-'] {
        assert!(!hides_text(c), "{c:?}");
    }
}

#[test]
fn rfc3339_known_dates() {
    assert_eq!(UnixMs(0).rfc3339(), "1970-01-01T00:00:00Z");
    assert_eq!(UnixMs(951_782_400_000).rfc3339(), "2000-02-29T00:00:00Z");
    assert_eq!(UnixMs(1_795_878_189_000).rfc3339(), "2026-11-28T15:03:09Z");
}

#[test]
fn ulid_floor_sorts_before_ulids_of_that_time() {
    let id = new_ulid();
    let now = UnixMs::now().0;
    assert!(ulid_floor(now - 1000) < id);
    assert!(ulid_floor(now + 1000) > id);
}

#[test]
fn random_bytes_never_repeat_across_pool_refills() {
    let mut seen = std::collections::HashSet::new();
    // Well past one 4 KiB pool, in sizes that straddle its end.
    for n in [8usize, 13, 40, 255, 300, 4096] {
        for _ in 0..200 {
            let mut buf = vec![0u8; n];
            random_bytes(&mut buf);
            assert!(buf.iter().any(|b| *b != 0));
            assert!(seen.insert(buf), "a random block repeated");
        }
    }
}

#[test]
fn ulids_sort_by_time_and_are_unique() {
    let a = new_ulid();
    std::thread::sleep(Duration::from_millis(2));
    let b = new_ulid();
    assert_eq!(a.len(), 26);
    assert!(a < b);
    assert!(a.parse::<AgentId>().is_ok());
}

proptest! {
    #[test]
    fn hex_round_trips(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        prop_assert_eq!(unhex(&hex(&bytes)).unwrap(), bytes);
    }

    #[test]
    fn duration_format_parses_back(ms in 1u64..10_000_000_000) {
        let d = Duration::from_millis(ms);
        prop_assert_eq!(parse_duration(&format_duration(d)).unwrap(), d);
    }

    #[test]
    fn parsers_never_panic(s in "\\PC{0,40}") {
        let _ = parse_duration(&s);
        let _ = Labels::parse_pairs([s.as_str()]);
        let _ = s.parse::<AgentId>();
        let _ = s.parse::<TrustDomain>();
        let _ = unhex(&s);
    }
}

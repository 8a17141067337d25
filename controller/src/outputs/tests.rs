use super::*;

fn output(kind: &str) -> OutputConfig {
    OutputConfig {
        name: "o".into(),
        kind: kind.into(),
        ..OutputConfig::default()
    }
}

fn check(o: &OutputConfig) -> Result<Output, OutputConfigError> {
    Output::try_from(o)
}

#[test]
fn raw_events_go_only_where_they_have_a_form() {
    let with_events = |kind: &str, more: OutputConfig| OutputConfig {
        name: "o".into(),
        kind: kind.into(),
        events: Some(true),
        ..more
    };
    let url = || Some("http://127.0.0.1:9".to_owned());
    // (type, address, url, format): refused with this, or taken.
    for (kind, address, url, format, refused) in [
        (
            "syslog",
            Some("127.0.0.1:514"),
            None,
            None,
            Some("not to syslog"),
        ),
        (
            "webhook",
            None,
            url(),
            Some("slack"),
            Some("chat, PagerDuty or template"),
        ),
        ("webhook", None, url(), Some("ocsf"), None),
        ("file", None, None, Some("ecs"), None),
    ] {
        let o = with_events(
            kind,
            OutputConfig {
                address: address.map(str::to_owned),
                url,
                format: format.map(str::to_owned),
                path: Some("/tmp/x".into()),
                ..OutputConfig::default()
            },
        );
        match (check(&o), refused) {
            (Err(e), Some(why)) => assert!(e.to_string().contains(why), "{e}"),
            (Ok(out), None) => assert!(out.events),
            (other, _) => panic!("{kind} {format:?}: {other:?}"),
        }
    }
    let es = |events_index: Option<&str>, events: bool| OutputConfig {
        events: Some(events),
        events_index: events_index.map(str::to_owned),
        token: Some("k".into()),
        ..with_events(
            "elasticsearch",
            OutputConfig {
                url: url(),
                ..OutputConfig::default()
            },
        )
    };
    match check(&es(None, true)).unwrap().target {
        Target::Elasticsearch { events_index, .. } => {
            assert_eq!(events_index, "logs-ruse.events-default");
        }
        other => panic!("{other:?}"),
    }
    assert!(
        check(&es(Some("logs-ruse.incidents-default"), true))
            .unwrap_err()
            .to_string()
            .contains("must differ")
    );
    assert!(
        check(&es(Some("Bad Name"), true))
            .unwrap_err()
            .to_string()
            .contains("not a data stream name")
    );
    assert!(
        check(&es(Some("logs-x-default"), false))
            .unwrap_err()
            .to_string()
            .contains("events = true")
    );
}

#[test]
fn settings_are_checked() {
    assert!(check(&output("syslog")).is_err());
    let ok = OutputConfig {
        address: Some("127.0.0.1:514".into()),
        ..output("syslog")
    };
    assert_eq!(
        check(&ok),
        Ok(Output {
            name: "o".into(),
            target: Target::Syslog {
                address: "127.0.0.1:514".into(),
                transport: Transport::Udp,
                format: SyslogFormat::Cef,
            },
            min_severity: Severity::Low,
            events: false,
        })
    );
    let tls = OutputConfig {
        transport: Some("tls".into()),
        ..ok.clone()
    };
    assert!(check(&tls).unwrap_err().to_string().contains("ca_file"));
    let hook = OutputConfig {
        url: Some("ftp://x/".into()),
        ..output("webhook")
    };
    assert!(check(&hook).is_err());
    let hook = OutputConfig {
        url: Some("http://127.0.0.1:9/hook".into()),
        format: Some("teams".into()),
        ..output("webhook")
    };
    assert!(matches!(
        check(&hook).unwrap().target,
        Target::Webhook {
            format: WebhookFormat::Teams,
            ca_file: None,
            ..
        }
    ));
    assert!(check(&output("pager")).is_err());
    let bad = OutputConfig {
        min_severity: Some("urgent".into()),
        path: Some("/tmp/x".into()),
        ..output("file")
    };
    assert!(check(&bad).is_err());
}

#[test]
fn cef_escapes_and_names_the_incident() {
    let mut i = crate::incidents::tests_support::incident();
    i.title = "a|b=c\\d".into();
    let line = cef(&i, Notice::Opened);
    assert!(line.starts_with("CEF:0|Ruse|Ruse|"), "{line}");
    assert!(line.contains("|incident-opened|a\\|b=c\\\\d|10|"), "{line}");
    assert!(line.contains("msg=a|b\\=c\\\\d"), "{line}");
    assert!(line.contains(&format!("cs1={}", i.id)));
    let msg = syslog_message(&i, Notice::Opened, "ctl", SyslogFormat::Cef);
    assert!(msg.starts_with("<34>1 "), "{msg}");
    assert!(msg.contains(" ctl ruse-controller "));
}

#[test]
fn webhook_shapes() {
    let i = crate::incidents::tests_support::incident();
    let slack = webhook_body(&i, Notice::Opened, &WebhookFormat::Slack);
    assert!(slack["text"].as_str().unwrap().contains(&i.title));
    assert_eq!(slack["blocks"][0]["type"], "header");
    let teams = webhook_body(&i, Notice::Opened, &WebhookFormat::Teams);
    assert_eq!(teams["@type"], "MessageCard");
    let json = webhook_body(&i, Notice::Resolved, &WebhookFormat::Json);
    assert_eq!(json["incident"]["id"], i.id);
    assert_eq!(json["notice"], "resolved");
}

#[test]
fn syslog_formats_are_cef_or_leef() {
    let syslog = OutputConfig {
        address: Some("127.0.0.1:514".into()),
        ..output("syslog")
    };
    let leef = OutputConfig {
        format: Some("leef".into()),
        ..syslog.clone()
    };
    assert!(matches!(
        check(&leef).unwrap().target,
        Target::Syslog {
            format: SyslogFormat::Leef,
            ..
        }
    ));
    let bogus = OutputConfig {
        format: Some("json".into()),
        ..syslog
    };
    assert!(
        check(&bogus)
            .unwrap_err()
            .to_string()
            .contains("expected cef or leef")
    );
}

#[test]
fn leef_has_a_2_0_header_one_delimiter_and_qradar_keys() {
    let mut i = crate::incidents::tests_support::incident();
    i.title = "caret^in\ntitle = yes".into();
    i.credentials = ["ad^min".to_owned()].into();
    i.sources = ["10.9.8.7".to_owned()].into();
    let line = leef(&i, Notice::Opened);
    let mut header = line.splitn(7, '|');
    assert_eq!(header.next(), Some("LEEF:2.0"));
    assert_eq!(header.next(), Some("Ruse"));
    assert_eq!(header.next(), Some("Ruse"));
    assert_eq!(header.next(), Some(env!("CARGO_PKG_VERSION")));
    assert_eq!(header.next(), Some("incident-opened"));
    assert_eq!(header.next(), Some("^"));
    let attrs: Vec<(&str, &str)> = header
        .next()
        .unwrap()
        .split('^')
        .map(|kv| kv.split_once('=').unwrap())
        .collect();
    let get = |k: &str| attrs.iter().find(|(key, _)| *key == k).map(|(_, v)| *v);
    assert_eq!(get("sev"), Some("10"), "critical is 10, as in CEF");
    assert_eq!(get("devTimeFormat"), Some("yyyy-MM-dd'T'HH:mm:ss.SSSZ"));
    let t = get("devTime").unwrap();
    assert_eq!(t.len(), "2026-12-03T21:30:00.000+0000".len(), "{t}");
    assert!(t.ends_with("+0000") && t.as_bytes()[10] == b'T', "{t}");
    assert_eq!(get("src"), Some("10.9.8.7"));
    assert_eq!(
        get("usrName"),
        Some("ad min"),
        "a caret in a value becomes a space"
    );
    assert_eq!(get("msg"), Some("caret in title = yes"));
    assert_eq!(get("incidentId"), Some(i.id.as_str()));
    let keys: Vec<&str> = attrs.iter().map(|(k, _)| *k).collect();
    let mut unique = keys.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), keys.len(), "no key twice: {keys:?}");
    let msg = syslog_message(&i, Notice::Resolved, "ctl", SyslogFormat::Leef);
    assert!(msg.contains(" incident - LEEF:2.0|Ruse|Ruse|"), "{msg}");
    assert!(!msg.contains('\n'));
}

#[test]
fn webhook_urls_stay_out_of_errors_and_may_come_from_a_file() {
    let secret = "T000/B000/XoXSeCrEt";
    let hook = |url: &str| OutputConfig {
        url: Some(url.into()),
        ..output("webhook")
    };
    for bad in [
        format!("ftp://hooks.example.org/{secret}"),
        format!("hooks.example.org/{secret}"),
        format!("http://[::1/{secret}"),
    ] {
        let e = check(&hook(&bad)).unwrap_err().to_string();
        assert!(!e.contains("XoXSeCrEt"), "{bad} → {e}");
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("teams-url");
    std::fs::write(&file, format!("  http://127.0.0.1:9/{secret}\n")).unwrap();
    let from_file = OutputConfig {
        url_file: Some(file.clone()),
        ..output("webhook")
    };
    let Target::Webhook { url, .. } = check(&from_file).unwrap().target else {
        panic!("a webhook")
    };
    assert_eq!(url.path(), format!("/{secret}"));
    let both = OutputConfig {
        url: Some("http://127.0.0.1:9/x".into()),
        ..from_file.clone()
    };
    assert!(
        check(&both)
            .unwrap_err()
            .to_string()
            .contains("not several")
    );
    let missing = OutputConfig {
        url_file: Some(dir.path().join("absent")),
        ..output("webhook")
    };
    assert!(check(&missing).unwrap_err().to_string().contains("absent"));
}

#[tokio::test]
async fn a_refused_delivery_names_the_receiver_not_the_webhook_secret() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 4096];
        let _ = s.read(&mut buf).await;
        let _ = s
            .write_all(b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\n\r\n")
            .await;
    });
    let config = OutputConfig {
        url: Some(format!(
            "http://bot:pa55w0rd@127.0.0.1:{port}/hooks/XoXSeCrEt?token=t0kEn"
        )),
        ..output("webhook")
    };
    let sink = Sink::new(check(&config).unwrap()).unwrap();
    let i = crate::incidents::tests_support::incident();
    let error = sink.send(&i, Notice::Opened).await.unwrap_err();
    server.await.unwrap();
    assert!(error.contains("answered 500"), "{error}");
    assert!(error.contains(&format!("127.0.0.1:{port}")), "{error}");
    for secret in ["XoXSeCrEt", "t0kEn", "pa55w0rd", "bot"] {
        assert!(!error.contains(secret), "{error}");
    }
}

#[test]
fn splunk_hec_settings_are_checked_and_the_token_never_printed() {
    let hec = |token: Option<&str>| OutputConfig {
        url: Some("https://splunk.example.org:8088".into()),
        ca_file: Some("/etc/ruse/splunk-ca.pem".into()),
        token: token.map(str::to_owned),
        ..output("splunk-hec")
    };
    let checked = check(&hec(Some("s3cr3t-hec-token"))).unwrap();
    let Target::SplunkHec {
        source,
        sourcetype,
        ack,
        index,
        ..
    } = &checked.target
    else {
        panic!("a splunk-hec output")
    };
    assert_eq!(
        (source.as_str(), sourcetype.as_str()),
        ("ruse", "ruse:incident")
    );
    assert!(*ack, "indexer acknowledgement by default");
    assert_eq!(*index, None);
    assert_eq!(checked.target.kind(), "splunk-hec");
    assert!(!format!("{checked:?}").contains("s3cr3t"), "{checked:?}");
    assert!(check(&hec(None)).unwrap_err().to_string().contains("token"));
    assert!(check(&hec(Some("two words"))).is_err());
    let no_ca = OutputConfig {
        ca_file: None,
        ..hec(Some("t"))
    };
    assert!(check(&no_ca).unwrap_err().to_string().contains("ca_file"));
}

#[test]
fn hec_events_carry_the_metadata_and_string_indexed_fields() {
    let i = crate::incidents::tests_support::incident();
    let e = hec_event(
        &i,
        Notice::Opened,
        "ctl",
        Some("deception"),
        "ruse",
        "ruse:incident",
        false,
    );
    assert_eq!(e["time"].as_f64(), Some(i.last_seen.0 as f64 / 1000.0));
    assert_eq!(e["index"], "deception");
    assert_eq!(e["event"]["incident"]["id"], i.id.as_str());
    for (k, v) in e["fields"].as_object().unwrap() {
        assert!(
            v.is_string()
                || v.as_array()
                    .is_some_and(|a| a.iter().all(|x| x.is_string())),
            "indexed field {k} must be text: {v}"
        );
    }
    let e = hec_event(
        &i,
        Notice::Opened,
        "ctl",
        None,
        "ruse",
        "ruse:incident",
        false,
    );
    assert!(e.get("index").is_none(), "no index: the token's default");
}

#[test]
fn a_collector_gets_its_indexing_time_before_a_delivery_gives_up() {
    let hec = |ack: Option<bool>| OutputConfig {
        url: Some("http://127.0.0.1:9".into()),
        token: Some("t".into()),
        ack,
        ..output("splunk-hec")
    };
    let waits = |c: &OutputConfig| sink::deadline(&check(c).unwrap().target);
    assert!(waits(&hec(None)) > sink::HEC_ACK_WAIT);
    assert_eq!(waits(&hec(Some(false))), Duration::from_secs(10));
    let file = OutputConfig {
        path: Some("/tmp/x".into()),
        ..output("file")
    };
    assert_eq!(waits(&file), Duration::from_secs(10));
}

#[test]
fn elasticsearch_settings_are_checked_and_the_api_key_never_printed() {
    let es = |index: Option<&str>| OutputConfig {
        url: Some("http://es:9200".into()),
        token: Some("c2VjcmV0LWtleQ==".into()),
        index: index.map(str::to_owned),
        ..output("elasticsearch")
    };
    let Target::Elasticsearch { index, api_key, .. } = check(&es(None)).unwrap().target else {
        panic!("not elasticsearch");
    };
    assert_eq!(index, "logs-ruse.incidents-default");
    assert!(!format!("{api_key:?}").contains("c2VjcmV0"));
    for bad in ["Logs-ruse", "logs ruse", "-logs", "logs/ruse", "logs:ruse"] {
        let e = check(&es(Some(bad))).unwrap_err().to_string();
        assert!(e.contains("not a data stream name"), "{bad}: {e}");
    }
    let no_key = OutputConfig {
        token: None,
        ..es(None)
    };
    assert!(
        check(&no_key)
            .unwrap_err()
            .to_string()
            .contains("needs token")
    );
    let https = OutputConfig {
        url: Some("https://es:9200".into()),
        ..es(None)
    };
    assert!(check(&https).unwrap_err().to_string().contains("ca_file"));
    let file = |format: &str| OutputConfig {
        path: Some("/var/log/ruse/ecs.ndjson".into()),
        format: Some(format.into()),
        ..output("file")
    };
    assert!(matches!(
        check(&file("ecs")).unwrap().target,
        Target::File {
            format: FileFormat::Ecs,
            ..
        }
    ));
    assert!(check(&file("cef")).is_err());
}

#[test]
fn ecs_documents_carry_the_alert_fields() {
    let mut i = crate::incidents::tests_support::incident();
    i.processes.insert("/usr/bin/python3".into());
    let doc = ecs_document(&i, Notice::Opened, "ruse-0");
    assert_eq!(doc["ecs"]["version"], ECS_VERSION);
    assert_eq!(doc["event"]["kind"], "alert");
    assert_eq!(doc["event"]["severity"], 99, "critical");
    assert_eq!(doc["event"]["id"], format!("{}-{}", i.id, i.version));
    assert_eq!(doc["threat"]["framework"], "MITRE ATT&CK");
    assert_eq!(
        doc["threat"]["technique"]["name"][0],
        crate::stix::technique_name(doc["threat"]["technique"]["id"][0].as_str().unwrap())
    );
    assert_eq!(doc["source"]["ip"], "10.9.8.7");
    assert_eq!(doc["user"]["name"], "root", "not the key fingerprint");
    assert_eq!(doc["process"]["executable"], "/usr/bin/python3");
    assert_eq!(doc["process"]["name"], "python3");
    assert_eq!(doc["host"]["hostname"], "ws-07");
    assert_eq!(doc["observer"]["hostname"], "ruse-0");
    assert_eq!(doc["ruse"]["incident"]["id"], i.id);
}

#[test]
fn ocsf_findings_follow_the_notice_and_splunk_can_carry_them() {
    let i = crate::incidents::tests_support::incident();
    for (notice, activity) in [
        (Notice::Opened, 1),
        (Notice::Escalated, 2),
        (Notice::Resolved, 3),
    ] {
        let f = ocsf_finding(&i, notice);
        assert_eq!(f["activity_id"], activity);
        assert_eq!(f["type_uid"], 200_400 + activity);
    }
    let f = ocsf_finding(&i, Notice::Opened);
    assert_eq!(f["metadata"]["version"], OCSF_VERSION);
    assert_eq!(f["severity_id"], 5, "critical");
    assert_eq!(f["finding_info"]["uid"], i.id);
    let hec = hec_event(&i, Notice::Opened, "ctl", None, "ruse", "ruse:ocsf", true);
    assert_eq!(hec["event"]["class_uid"], 2004);
    let o = OutputConfig {
        url: Some("http://splunk:8088".into()),
        token: Some("t".into()),
        format: Some("ocsf".into()),
        ..output("splunk-hec")
    };
    assert!(matches!(
        check(&o).unwrap().target,
        Target::SplunkHec { ocsf: true, .. }
    ));
    let teams_to_file = OutputConfig {
        path: Some("/tmp/x".into()),
        format: Some("teams".into()),
        ..output("file")
    };
    assert!(check(&teams_to_file).is_err());
}

#[test]
fn secrets_may_come_from_environment_variables() {
    // Set by cargo and nextest for every test process.
    let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap();
    let es = |var: &str| OutputConfig {
        url: Some("http://es:9200".into()),
        token_env: Some(var.into()),
        ..output("elasticsearch")
    };
    let Target::Elasticsearch { api_key, .. } = check(&es("CARGO_MANIFEST_DIR")).unwrap().target
    else {
        panic!("not elasticsearch");
    };
    assert_eq!(api_key.expose(), dir);
    let e = check(&es("RUSE_TEST_NO_SUCH_VARIABLE"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("RUSE_TEST_NO_SUCH_VARIABLE is not set"), "{e}");
    let both = OutputConfig {
        token: Some("inline".into()),
        ..es("CARGO_MANIFEST_DIR")
    };
    assert!(
        check(&both)
            .unwrap_err()
            .to_string()
            .contains("not several")
    );
}

#[test]
fn templates_fill_string_contents_and_are_checked_when_configured() {
    let i = Incident::sample();
    let body = render_template(
        r#"{"text": "{{title}} ({{severity}}) {{ path }}"}"#,
        &template_values(&i, Notice::Opened),
    )
    .unwrap();
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        v["text"],
        format!("{} (high) {}", i.title, i.path_text()),
        "quotes, backslash and line break survive as text"
    );
    let hook = |template: &str| OutputConfig {
        url: Some("http://chat:8080/hook".into()),
        template: Some(template.into()),
        ..output("webhook")
    };
    assert!(matches!(
        check(&hook(r#"{"text": "{{title}}"}"#)).unwrap().target,
        Target::Webhook {
            format: WebhookFormat::Template(_),
            ..
        }
    ));
    for (bad, why) in [
        (r#"{"text": "{{nope}}"}"#, "unknown name {{nope}}"),
        (r#"{"text": {{title}}}"#, "inside quotes"),
        (r#"{"text": "{{title"}"#, "without its }}"),
        (r#""{{title}}""#, "object or array"),
    ] {
        let e = check(&hook(bad)).unwrap_err().to_string();
        assert!(e.contains(why), "{bad}: {e}");
    }
}

#[test]
fn pagerduty_events_trigger_acknowledge_and_resolve_one_alert() {
    let i = crate::incidents::tests_support::incident();
    let opened = pagerduty_event(&i, Notice::Opened, "R0UT1NGKEY");
    assert_eq!(opened["event_action"], "trigger");
    assert_eq!(opened["payload"]["severity"], "critical");
    assert_eq!(opened["routing_key"], "R0UT1NGKEY");
    let acked = pagerduty_event(&i, Notice::Acknowledged, "R0UT1NGKEY");
    let resolved = pagerduty_event(&i, Notice::Resolved, "R0UT1NGKEY");
    assert_eq!(acked["event_action"], "acknowledge");
    assert_eq!(resolved["event_action"], "resolve");
    assert_eq!(opened["dedup_key"], resolved["dedup_key"]);
    assert!(acked.get("payload").is_none());
    let pd = OutputConfig {
        url: Some("http://pd:8080/v2/enqueue".into()),
        format: Some("pagerduty".into()),
        ..output("webhook")
    };
    assert!(check(&pd).unwrap_err().to_string().contains("needs token"));
}

#[test]
fn smtp_settings_are_checked_and_the_password_never_printed() {
    let mail = OutputConfig {
        address: Some("mail.hospital.test:587".into()),
        ca_file: Some("/etc/ssl/certs/ca-certificates.crt".into()),
        username: Some("ruse".into()),
        password: Some("s3cret-pass".into()),
        from: Some("ruse@hospital.test".into()),
        to: vec!["soc@hospital.test".into()],
        ..output("smtp")
    };
    let target = check(&mail).unwrap().target;
    assert!(!format!("{target:?}").contains("s3cret-pass"));
    let Target::Smtp { max_per_hour, .. } = target else {
        panic!("not smtp")
    };
    assert_eq!(max_per_hour, 30);
    for (bad, why) in [
        (
            OutputConfig {
                to: vec!["soc@hospital.test>\r\nRCPT TO:<x@evil.test".into()],
                ..mail.clone()
            },
            "not an e-mail address",
        ),
        (
            OutputConfig {
                to: Vec::new(),
                ..mail.clone()
            },
            "one recipient or more",
        ),
        (
            OutputConfig {
                tls: Some("none".into()),
                ..mail.clone()
            },
            "never sent without TLS",
        ),
        (
            OutputConfig {
                ca_file: None,
                ..mail.clone()
            },
            "needs ca_file",
        ),
        (
            OutputConfig {
                username: None,
                ..mail.clone()
            },
            "go together",
        ),
        (
            OutputConfig {
                max_per_hour: Some(0),
                ..mail.clone()
            },
            "at least 1",
        ),
    ] {
        let e = check(&bad).unwrap_err().to_string();
        assert!(e.contains(why), "{why}: {e}");
    }
}

#[test]
fn mails_have_both_parts_and_escape_the_html() {
    let mut i = crate::incidents::tests_support::incident();
    i.title = "<script>alert(1)</script> & more".into();
    let to = ["soc@h.test".to_owned()];
    let mail = Mail {
        from: "ruse@h.test",
        to: &to,
        host: "ctl",
        console: None,
        digest_below: None,
    };
    let m = mail_message(&i, Notice::Opened, &mail);
    assert!(m.contains("Content-Type: multipart/alternative"));
    assert!(m.contains("Content-Type: text/plain; charset=utf-8"));
    assert!(m.contains("Content-Type: text/html; charset=utf-8"));
    assert!(m.lines().all(|l| l.len() <= 998), "RFC 5322 line length");
    let (_, html) = parts(&m);
    assert!(
        html.contains("&lt;script&gt;alert(1)&lt;/script&gt; &amp; more"),
        "{html}"
    );
    assert!(!html.contains("<script>"));
}

/// The decoded parts of a mail this module composed.
fn parts(m: &str) -> (String, String) {
    use base64::Engine;
    let part = |kind: &str| {
        let encoded: String = m
            .split(&format!("Content-Type: text/{kind}; charset=utf-8"))
            .nth(1)
            .unwrap()
            .split("\r\n\r\n")
            .nth(1)
            .unwrap()
            .lines()
            .take_while(|l| !l.starts_with("--"))
            .collect();
        String::from_utf8(
            base64::engine::general_purpose::STANDARD
                .decode(encoded.trim())
                .unwrap(),
        )
        .unwrap()
    };
    (part("plain"), part("html"))
}

#[test]
fn mails_link_to_the_console_and_a_digest_lists_each_incident_most_severe_first() {
    let mut low = crate::incidents::tests_support::incident();
    low.id = "01LOW".into();
    low.severity = Severity::Low;
    low.title = "Port scan of the PACS decoy".into();
    let mut high = crate::incidents::tests_support::incident();
    high.id = "01HIGH".into();
    high.severity = Severity::High;
    high.title = "Honeyfile <read> on ward-3".into();
    let to = ["soc@h.test".to_owned()];
    let mail = Mail {
        from: "ruse@h.test",
        to: &to,
        host: "ctl",
        console: Some("https://ruse.h.test:8443"),
        digest_below: Some(Severity::Critical),
    };
    let (text, html) = parts(&mail_message(&high, Notice::Opened, &mail));
    assert!(
        text.contains("In the console: https://ruse.h.test:8443/incidents/01HIGH"),
        "{text}"
    );
    assert!(
        html.contains("href=\"https://ruse.h.test:8443/incidents/01HIGH\""),
        "{html}"
    );
    let m = digest_message(&[low.clone(), high.clone()], &mail);
    assert!(
        m.contains("Subject: [Ruse] Digest: 2 incidents below critical"),
        "{m}"
    );
    assert!(!m.contains("X-Ruse-Incident"), "a digest is about several");
    let (text, html) = parts(&m);
    let (h, l) = (text.find("01HIGH").unwrap(), text.find("01LOW").unwrap());
    assert!(h < l, "most severe first: {text}");
    assert!(text.contains("https://ruse.h.test:8443/incidents/01LOW"));
    assert!(html.contains("Honeyfile &lt;read&gt; on ward-3"), "{html}");
    assert!(!html.contains("<read>"));
    // Without a console: the command that shows it.
    let plain = Mail {
        console: None,
        ..mail
    };
    let (text, _) = parts(&digest_message(&[low], &plain));
    assert!(text.contains("rusectl describe incident 01LOW"), "{text}");
    assert!(text.contains("1 incident since the last digest"), "{text}");
}

#[test]
fn digest_settings_are_checked() {
    let mail = OutputConfig {
        address: Some("mail.hospital.test:25".into()),
        tls: Some("none".into()),
        from: Some("ruse@h.test".into()),
        to: vec!["soc@h.test".into()],
        ..output("smtp")
    };
    let with = |below: Option<&str>, every: Option<&str>, console: Option<&str>| {
        check(&OutputConfig {
            digest_below: below.map(str::to_owned),
            digest_every: every.map(str::to_owned),
            console_url: console.map(str::to_owned),
            ..mail.clone()
        })
    };
    match with(Some("high"), None, Some("https://ruse.h.test/"))
        .unwrap()
        .target
    {
        Target::Smtp {
            digest,
            console_url,
            ..
        } => {
            assert_eq!(digest, Some((Severity::High, Duration::from_secs(3600))));
            assert_eq!(console_url.as_deref(), Some("https://ruse.h.test"));
        }
        other => panic!("{other:?}"),
    }
    for (below, every, console, why) in [
        (None, Some("1h"), None, "goes with digest_below"),
        (Some("low"), None, None, "would hold nothing"),
        (Some("severe"), None, None, "digest_below"),
        (Some("high"), Some("soon"), None, "digest_every"),
        (Some("high"), Some("30d"), None, "between 1s and 7d"),
        (None, None, Some("ftp://x"), "console_url"),
    ] {
        let e = with(below, every, console).unwrap_err().to_string();
        assert!(e.contains(why), "{why}: {e}");
    }
}

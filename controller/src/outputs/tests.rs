use super::*;

fn output(kind: &str) -> OutputConfig {
    OutputConfig {
        name: "o".into(),
        kind: kind.into(),
        address: None,
        transport: None,
        ca_file: None,
        url: None,
        format: None,
        path: None,
        min_severity: None,
    }
}

fn check(o: &OutputConfig) -> Result<Output, OutputConfigError> {
    Output::try_from(o)
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
            },
            min_severity: Severity::Low,
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
    let msg = syslog_message(&i, Notice::Opened, "ctl");
    assert!(msg.starts_with("<34>1 "), "{msg}");
    assert!(msg.contains(" ctl ruse-controller "));
}

#[test]
fn webhook_shapes() {
    let i = crate::incidents::tests_support::incident();
    let slack = webhook_body(&i, Notice::Opened, WebhookFormat::Slack);
    assert!(slack["text"].as_str().unwrap().contains(&i.title));
    assert_eq!(slack["blocks"][0]["type"], "header");
    let teams = webhook_body(&i, Notice::Opened, WebhookFormat::Teams);
    assert_eq!(teams["@type"], "MessageCard");
    let json = webhook_body(&i, Notice::Resolved, WebhookFormat::Json);
    assert_eq!(json["incident"]["id"], i.id);
    assert_eq!(json["notice"], "resolved");
}

use super::*;

/// A 4663 as the Security log renders it (the fields of Microsoft's
/// documented schema, version 1; the values are this test's own): a
/// PowerShell `Get-Content` of a planted note.
const READ_4663: &str = r#"<Event xmlns="http://schemas.microsoft.com/win/2004/08/events/event">
 <System>
  <Provider Name="Microsoft-Windows-Security-Auditing" Guid="{54849625-5478-4994-A5BA-3E3B0328C30D}" />
  <EventID>4663</EventID>
  <Version>1</Version>
  <Level>0</Level>
  <Task>12800</Task>
  <Opcode>0</Opcode>
  <Keywords>0x8020000000000000</Keywords>
  <TimeCreated SystemTime="2026-11-30T09:14:03.512870300Z" />
  <EventRecordID>884213</EventRecordID>
  <Correlation />
  <Execution ProcessID="4" ThreadID="6120" />
  <Channel>Security</Channel>
  <Computer>NURSE-WS-014.clinic.example</Computer>
  <Security />
 </System>
 <EventData>
  <Data Name="SubjectUserSid">S-1-5-21-1004336348-1177238915-682003330-1112</Data>
  <Data Name="SubjectUserName">j.doe</Data>
  <Data Name="SubjectDomainName">CLINIC</Data>
  <Data Name="SubjectLogonId">0x3e0a1f</Data>
  <Data Name="ObjectServer">Security</Data>
  <Data Name="ObjectType">File</Data>
  <Data Name="ObjectName">C:\Users\j.doe\Documents\remote-desktop-logins.txt</Data>
  <Data Name="HandleId">0x2f4</Data>
  <Data Name="AccessList">%%4416
				</Data>
  <Data Name="AccessMask">0x1</Data>
  <Data Name="ProcessId">0x1a2c</Data>
  <Data Name="ProcessName">C:\Windows\System32\WindowsPowerShell\v1.0\powershell.exe</Data>
  <Data Name="ResourceAttributes">S:AI</Data>
 </EventData>
</Event>"#;

/// A 4656 for a registry key (a PuTTY session read by a dumper), with the
/// XML escapes the renderer uses.
const KEY_4656: &str = r#"<Event xmlns="http://schemas.microsoft.com/win/2004/08/events/event"><System><Provider Name="Microsoft-Windows-Security-Auditing" /><EventID>4656</EventID><Version>1</Version><TimeCreated SystemTime='2026-11-30T09:15:44.001Z'/></System><EventData><Data Name="SubjectUserSid">S-1-5-18</Data><Data Name="SubjectUserName">NURSE-WS-014$</Data><Data Name="SubjectDomainName">CLINIC</Data><Data Name="ObjectServer">Security</Data><Data Name="ObjectType">Key</Data><Data Name="ObjectName">\REGISTRY\USER\S-1-5-21-1-2-3-1112\Software\SimonTatham\PuTTY\Sessions\pacs&amp;ris</Data><Data Name="HandleId">0x0</Data><Data Name="TransactionId">{00000000-0000-0000-0000-000000000000}</Data><Data Name="AccessList">%%4432 %%4435</Data><Data Name="AccessReasons">-</Data><Data Name="AccessMask">0x9</Data><Data Name="PrivilegeList">-</Data><Data Name="RestrictedSidCount">0</Data><Data Name="ProcessId">0x2210</Data><Data Name="ProcessName">C:\Users\j.doe\AppData\Local\Temp\&lt;dump&gt;.exe</Data><Data Name="ResourceAttributes"/></EventData></Event>"#;

#[test]
fn a_4663_read_names_the_file_process_and_user() {
    let a = parse(READ_4663).unwrap();
    assert_eq!(a.event_id, 4663);
    assert_eq!(a.object_type, "File");
    assert_eq!(
        a.object_name,
        r"C:\Users\j.doe\Documents\remote-desktop-logins.txt"
    );
    assert_eq!(a.access_mask, 1);
    assert_eq!(a.pid, 0x1a2c);
    assert_eq!(
        a.process,
        r"C:\Windows\System32\WindowsPowerShell\v1.0\powershell.exe"
    );
    assert_eq!(a.user, r"CLINIC\j.doe");
    assert_eq!(a.sid, "S-1-5-21-1004336348-1177238915-682003330-1112");
    assert_eq!(a.time, "2026-11-30T09:14:03.512870300Z");
    assert_eq!(a.ops(), [Op::Read]);
}

#[test]
fn a_4656_on_a_registry_key_is_unescaped_and_read_as_key_rights() {
    let a = parse(KEY_4656).unwrap();
    assert_eq!(a.event_id, 4656);
    assert_eq!(a.object_type, "Key");
    assert!(
        a.object_name.ends_with(r"PuTTY\Sessions\pacs&ris"),
        "{}",
        a.object_name
    );
    assert_eq!(a.process, r"C:\Users\j.doe\AppData\Local\Temp\<dump>.exe");
    assert_eq!(a.user, r"CLINIC\NURSE-WS-014$");
    assert_eq!(a.time, "2026-11-30T09:15:44.001Z");
    // KEY_QUERY_VALUE | KEY_ENUMERATE_SUB_KEYS
    assert_eq!(a.ops(), [Op::Read]);
}

#[test]
fn access_masks_map_to_reads_changes_and_deletions() {
    let with = |mask: &str| {
        parse(&READ_4663.replace(
            "<Data Name=\"AccessMask\">0x1</Data>",
            &format!("<Data Name=\"AccessMask\">{mask}</Data>"),
        ))
        .unwrap()
        .ops()
    };
    assert_eq!(with("0x2"), [Op::Modify]);
    assert_eq!(with("0x4"), [Op::Modify]);
    assert_eq!(with("0x10000"), [Op::Delete]);
    assert_eq!(with("0x10003"), [Op::Read, Op::Modify, Op::Delete]);
    assert_eq!(with("65536"), [Op::Delete]);
    assert!(
        with("0x80").is_empty(),
        "reading attributes is not reading the file"
    );
}

#[test]
fn other_events_and_broken_ones_are_refused_with_a_reason() {
    let other = READ_4663.replace("<EventID>4663</EventID>", "<EventID>4624</EventID>");
    assert_eq!(parse(&other), Err(EventError::OtherEvent(4624)));
    let no_name = READ_4663.replace("Name=\"ObjectName\"", "Name=\"Elsewhere\"");
    assert_eq!(parse(&no_name), Err(EventError::Missing("ObjectName")));
    let bad_mask = READ_4663.replace(">0x1<", ">0xZZ<");
    assert_eq!(parse(&bad_mask), Err(EventError::NotANumber("AccessMask")));
    assert_eq!(parse(""), Err(EventError::Missing("EventID")));
    let huge = "x".repeat(MAX_EVENT + 1);
    assert_eq!(parse(&huge), Err(EventError::TooLarge));
}

#[test]
fn truncated_and_mangled_events_never_panic() {
    for cut in 0..READ_4663.len() {
        if READ_4663.is_char_boundary(cut) {
            let _ = parse(&READ_4663[..cut]);
        }
    }
    for junk in [
        "<Data Name=",
        "<Data Name=\"a\">&#xFFFFFFFF;</Data>",
        "&",
        "&#;",
        "<EventID",
        "<TimeCreated SystemTime=\"",
        "<Data Name='x'/><EventID>4663</EventID>",
    ] {
        let _ = parse(junk);
    }
}

#[test]
fn object_names_fold_to_the_lures_paths() {
    assert_eq!(
        folded_name(r"C:\Users\Alice\Documents\Patients.csv"),
        folded_name(r"\\?\c:\users\alice\documents\patients.csv")
    );
    assert_eq!(
        folded_name(r"\REGISTRY\USER\S-1-5-21-1-2-3-1001\Software\SimonTatham\PuTTY\Sessions\pacs"),
        folded_name(r"HKEY_USERS\S-1-5-21-1-2-3-1001\Software\SimonTatham\PuTTY\Sessions\pacs")
    );
    assert!(folded_name(r"HKEY_USERS\S-1-5-18\x").starts_with(REGISTRY_PREFIX));
    assert_eq!(folded_name("C:/Users/a"), r"c:\users\a");
}

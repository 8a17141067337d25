//! Windows Security-log object-access events, as the event log renders
//! them in XML (`EvtRender`): 4663 ("an attempt was made to access an
//! object") and 4656 ("a handle to an object was requested"). This is how
//! Windows names the process and user behind a read of an audited lure.
//!
//! Pure parsing, built on every platform so it is tested and fuzzed here;
//! the Windows agent feeds it what `EvtSubscribe` delivers. The input is
//! bounded text from the local event log, but its object names come from
//! whoever opened the file: the parser never panics and reads nothing
//! beyond what it is given.

use std::collections::BTreeMap;

use super::Op;

/// The largest event the parser looks at (a 4663 is about 2 KiB).
pub const MAX_EVENT: usize = 64 * 1024;

/// One audited access to a file or registry key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditedAccess {
    /// 4663 or 4656.
    pub event_id: u32,
    /// `File` or `Key`.
    pub object_type: String,
    /// The file's path (`C:\Users\…`) or the key's (`\REGISTRY\USER\…`).
    pub object_name: String,
    /// The access asked for or used, as the event gives it.
    pub access_mask: u32,
    pub pid: u32,
    /// The process's executable, full path.
    pub process: String,
    /// `DOMAIN\user`.
    pub user: String,
    pub sid: String,
    /// The event's time, as the log wrote it (RFC 3339).
    pub time: String,
}

/// Why an event was not an audited access.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    #[error("the event is larger than {MAX_EVENT} bytes")]
    TooLarge,
    #[error("not an object-access event (event {0})")]
    OtherEvent(u32),
    #[error("the event has no {0}")]
    Missing(&'static str),
    #[error("the event's {0} is not a number")]
    NotANumber(&'static str),
}

// Access rights as 4663 reports them (winnt.h).
const FILE_READ_DATA: u32 = 0x0001;
const FILE_WRITE_DATA: u32 = 0x0002;
const FILE_APPEND_DATA: u32 = 0x0004;
const FILE_EXECUTE: u32 = 0x0020;
const DELETE: u32 = 0x0001_0000;
const WRITE_DAC: u32 = 0x0004_0000;
const WRITE_OWNER: u32 = 0x0008_0000;
const KEY_QUERY_VALUE: u32 = 0x0001;
const KEY_SET_VALUE: u32 = 0x0002;
const KEY_ENUMERATE_SUB_KEYS: u32 = 0x0008;

impl AuditedAccess {
    /// What was done, in the agent's terms: a read, a change, a deletion.
    pub fn ops(&self) -> Vec<Op> {
        let m = self.access_mask;
        let mut ops = Vec::new();
        let (read, write) = if self.object_type.eq_ignore_ascii_case("Key") {
            (
                KEY_QUERY_VALUE | KEY_ENUMERATE_SUB_KEYS,
                KEY_SET_VALUE | WRITE_DAC | WRITE_OWNER,
            )
        } else {
            (
                FILE_READ_DATA | FILE_EXECUTE,
                FILE_WRITE_DATA | FILE_APPEND_DATA | WRITE_DAC | WRITE_OWNER,
            )
        };
        if m & read != 0 {
            ops.push(Op::Read);
        }
        if m & write != 0 {
            ops.push(Op::Modify);
        }
        if m & DELETE != 0 {
            ops.push(Op::Delete);
        }
        ops
    }
}

/// How registry lures are named among watched paths (folded): their
/// `HKEY_USERS\<SID>\…` path.
pub const REGISTRY_PREFIX: &str = r"hkey_users\";

/// An object's name as the agent compares it with its lures' paths:
/// lower-case with `\` separators, without the `\\?\` prefix, and a
/// key's `\REGISTRY\USER\…` (as events name it) as `hkey_users\…`.
pub fn folded_name(name: &str) -> String {
    let name = name.replace('/', "\\").to_lowercase();
    let name = name.strip_prefix(r"\\?\").unwrap_or(&name);
    match name.strip_prefix(r"\registry\user\") {
        Some(rest) => format!("{REGISTRY_PREFIX}{rest}"),
        None => name.to_owned(),
    }
}

/// Parses one rendered event.
pub fn parse(xml: &str) -> Result<AuditedAccess, EventError> {
    if xml.len() > MAX_EVENT {
        return Err(EventError::TooLarge);
    }
    let event_id = element_text(xml, "EventID")
        .ok_or(EventError::Missing("EventID"))?
        .trim()
        .parse::<u32>()
        .map_err(|_| EventError::NotANumber("EventID"))?;
    if event_id != 4663 && event_id != 4656 {
        return Err(EventError::OtherEvent(event_id));
    }
    let data = data_fields(xml);
    let field = |name: &'static str| -> Result<String, EventError> {
        data.get(name).cloned().ok_or(EventError::Missing(name))
    };
    let number = |name: &'static str| -> Result<u32, EventError> {
        let text = field(name)?;
        let text = text.trim();
        let parsed = match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
            Some(hex) => u32::from_str_radix(hex, 16),
            None => text.parse(),
        };
        parsed.map_err(|_| EventError::NotANumber(name))
    };
    let domain = data.get("SubjectDomainName").cloned().unwrap_or_default();
    let name = field("SubjectUserName")?;
    Ok(AuditedAccess {
        event_id,
        object_type: field("ObjectType")?,
        object_name: field("ObjectName")?,
        access_mask: number("AccessMask")?,
        pid: number("ProcessId")?,
        process: field("ProcessName")?,
        user: if domain.is_empty() {
            name
        } else {
            format!("{domain}\\{name}")
        },
        sid: data.get("SubjectUserSid").cloned().unwrap_or_default(),
        time: attribute(xml, "TimeCreated", "SystemTime").unwrap_or_default(),
    })
}

/// The text of the first `<name>…</name>` element.
fn element_text(xml: &str, name: &str) -> Option<String> {
    let open = format!("<{name}");
    let mut from = 0;
    while let Some(at) = xml.get(from..)?.find(&open) {
        let start = from + at;
        let rest = xml.get(start + open.len()..)?;
        // `<EventID>` or `<EventID Qualifiers="">`, not `<EventIDs>`.
        if rest.starts_with('>') || rest.starts_with(' ') {
            let body_start = start + open.len() + rest.find('>')? + 1;
            let body_end = body_start + xml.get(body_start..)?.find('<')?;
            return Some(unescape(xml.get(body_start..body_end)?));
        }
        from = start + open.len();
    }
    None
}

/// The value of attribute `attr` of the first `<name …>` element.
fn attribute(xml: &str, name: &str, attr: &str) -> Option<String> {
    let start = xml.find(&format!("<{name} "))?;
    let tag_end = start + xml.get(start..)?.find('>')?;
    let tag = xml.get(start..tag_end)?;
    let key = format!("{attr}=");
    let at = tag.find(&key)? + key.len();
    let quote = tag.get(at..at + 1)?;
    let value_start = at + 1;
    let value_end = value_start + tag.get(value_start..)?.find(quote)?;
    Some(unescape(tag.get(value_start..value_end)?))
}

/// Every `<Data Name="X">value</Data>` (and `<Data Name="X"/>`, empty).
fn data_fields(xml: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = xml;
    while let Some(at) = rest.find("<Data ") {
        rest = &rest[at + "<Data ".len()..];
        let Some(tag_end) = rest.find('>') else {
            break;
        };
        let tag = &rest[..tag_end];
        let Some(name) = tag
            .find("Name=")
            .and_then(|i| tag.get(i + 5..))
            .and_then(|v| {
                let quote = v.get(..1)?;
                let v = v.get(1..)?;
                v.get(..v.find(quote)?)
            })
        else {
            continue;
        };
        let name = unescape(name);
        if tag.ends_with('/') {
            out.entry(name).or_insert_with(String::new);
            rest = &rest[tag_end + 1..];
            continue;
        }
        let body = &rest[tag_end + 1..];
        let Some(close) = body.find("</Data>") else {
            break;
        };
        out.entry(name).or_insert_with(|| unescape(&body[..close]));
        rest = &body[close..];
    }
    out
}

/// XML's five entities and numeric character references; anything else
/// is kept as it is.
fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        rest = &rest[amp..];
        let Some(semi) = rest.get(..rest.len().min(12)).and_then(|r| r.find(';')) else {
            out.push('&');
            rest = &rest[1..];
            continue;
        };
        let entity = &rest[1..semi];
        let decoded = match entity {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            e => e
                .strip_prefix("#x")
                .or_else(|| e.strip_prefix("#X"))
                .and_then(|h| u32::from_str_radix(h, 16).ok())
                .or_else(|| e.strip_prefix('#').and_then(|d| d.parse().ok()))
                .and_then(char::from_u32),
        };
        match decoded {
            Some(c) => {
                out.push(c);
                rest = &rest[semi + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests;

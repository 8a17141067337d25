//! Conversions between generated protobuf messages and domain types.
//!
//! Messages arriving from the network go through `TryFrom` and are bounded
//! here, once, so the rest of the code never handles unchecked input.

use serde::{Deserialize, Serialize};

use crate::admin::v1 as admin_pb;
use crate::agent::v1 as agent_pb;
use crate::types::{InvalidValue, Labels, Role, hides_text};

/// At most this many addresses in one agent's host facts.
pub const MAX_ADDRESSES: usize = 64;
/// At most this many bytes in one host fact string.
pub const MAX_FACT_LEN: usize = 256;

/// What an agent reports about its host. Bounded: see [`MAX_ADDRESSES`] and
/// [`MAX_FACT_LEN`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostFacts {
    pub hostname: String,
    pub os: String,
    pub kernel: String,
    pub arch: String,
    pub addresses: Vec<String>,
    pub agent_version: String,
    /// Labels the agent declares for itself.
    pub labels: Labels,
    /// The operating system family, which decides where lures go.
    #[serde(default)]
    pub platform: Platform,
}

/// An agent's operating system family.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Platform {
    /// Also what agents older than the field are.
    #[default]
    Linux,
    Windows,
}

impl Platform {
    /// The platform this code is built for.
    pub const fn this() -> Platform {
        if cfg!(windows) {
            Platform::Windows
        } else {
            Platform::Linux
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Platform::Linux => "linux",
            Platform::Windows => "windows",
        }
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Platform {
    type Err = InvalidValue;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "" | "linux" => Ok(Platform::Linux),
            "windows" => Ok(Platform::Windows),
            other => Err(InvalidValue::Invalid {
                what: "platform",
                value: other.chars().take(40).collect(),
                reason: "not one this controller knows (linux, windows); upgrade the controller",
            }),
        }
    }
}

fn bounded(what: &'static str, s: String) -> Result<String, InvalidValue> {
    if s.len() > MAX_FACT_LEN {
        return Err(InvalidValue::Invalid {
            what,
            value: s.chars().take(40).collect(),
            reason: "longer than 256 bytes",
        });
    }
    if s.chars().any(char::is_control) {
        return Err(InvalidValue::Invalid {
            what,
            value: s.chars().filter(|c| !c.is_control()).take(40).collect(),
            reason: "contains control characters",
        });
    }
    Ok(s)
}

impl HostFacts {
    /// Labels derived from the facts themselves, so selectors can pick
    /// hosts by name, operating system or architecture without anyone
    /// labelling them: `ruse.io/hostname`, `ruse.io/os`, `ruse.io/arch`.
    /// Values are lower-cased and reduced to label characters; a fact that
    /// leaves nothing usable is omitted.
    pub fn fact_labels(&self) -> Labels {
        let mut labels = Labels::new();
        for (key, fact) in [
            ("ruse.io/hostname", self.hostname.as_str()),
            ("ruse.io/os", &self.os),
            ("ruse.io/arch", &self.arch),
            ("ruse.io/platform", self.platform.as_str()),
        ] {
            let value = label_value(fact);
            if !value.is_empty() {
                // Cannot fail: the value was reduced to label characters.
                let _ = labels.insert(key, &value);
            }
        }
        labels
    }
}

/// `Debian GNU/Linux 12 (bookworm)` → `debian-gnu-linux-12-bookworm`.
fn label_value(fact: &str) -> String {
    let mut out = String::new();
    for c in fact.chars().flat_map(char::to_lowercase) {
        if c.is_ascii_alphanumeric() || matches!(c, '.' | '_') {
            out.push(c);
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    let trimmed = |s: &str| {
        s.trim_matches(|c: char| !c.is_ascii_alphanumeric())
            .to_owned()
    };
    let mut out = trimmed(&out);
    out.truncate(63);
    trimmed(&out)
}

impl TryFrom<agent_pb::HostFacts> for HostFacts {
    type Error = InvalidValue;

    fn try_from(pb: agent_pb::HostFacts) -> Result<Self, Self::Error> {
        if pb.addresses.len() > MAX_ADDRESSES {
            return Err(InvalidValue::Invalid {
                what: "host facts",
                value: format!("{} addresses", pb.addresses.len()),
                reason: "more than 64 addresses",
            });
        }
        Ok(HostFacts {
            hostname: bounded("hostname", pb.hostname)?,
            os: bounded("os", pb.os)?,
            kernel: bounded("kernel", pb.kernel)?,
            arch: bounded("arch", pb.arch)?,
            addresses: pb
                .addresses
                .into_iter()
                .map(|a| bounded("address", a))
                .collect::<Result<_, _>>()?,
            agent_version: bounded("agent version", pb.agent_version)?,
            labels: Labels::try_from(pb.labels)?,
            platform: pb.platform.parse()?,
        })
    }
}

impl From<HostFacts> for agent_pb::HostFacts {
    fn from(f: HostFacts) -> Self {
        agent_pb::HostFacts {
            hostname: f.hostname,
            os: f.os,
            kernel: f.kernel,
            addresses: f.addresses,
            agent_version: f.agent_version,
            arch: f.arch,
            labels: f.labels.to_map(),
            platform: f.platform.as_str().to_owned(),
        }
    }
}

impl From<Role> for admin_pb::Role {
    fn from(r: Role) -> Self {
        match r {
            Role::Viewer => admin_pb::Role::Viewer,
            Role::Operator => admin_pb::Role::Operator,
            Role::Admin => admin_pb::Role::Admin,
        }
    }
}

impl TryFrom<admin_pb::Role> for Role {
    type Error = InvalidValue;
    fn try_from(r: admin_pb::Role) -> Result<Self, Self::Error> {
        match r {
            admin_pb::Role::Viewer => Ok(Role::Viewer),
            admin_pb::Role::Operator => Ok(Role::Operator),
            admin_pb::Role::Admin => Ok(Role::Admin),
            admin_pb::Role::Unspecified => Err(InvalidValue::Invalid {
                what: "role",
                value: String::new(),
                reason: "no role given",
            }),
        }
    }
}

/// The state of an agent as operators see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AgentState {
    Online,
    Degraded,
    Offline,
    Revoked,
}

impl AgentState {
    pub fn as_str(self) -> &'static str {
        match self {
            AgentState::Online => "online",
            AgentState::Degraded => "degraded",
            AgentState::Offline => "offline",
            AgentState::Revoked => "revoked",
        }
    }
}

impl From<AgentState> for admin_pb::AgentState {
    fn from(s: AgentState) -> Self {
        match s {
            AgentState::Online => admin_pb::AgentState::Online,
            AgentState::Degraded => admin_pb::AgentState::Degraded,
            AgentState::Offline => admin_pb::AgentState::Offline,
            AgentState::Revoked => admin_pb::AgentState::Revoked,
        }
    }
}

impl admin_pb::AgentState {
    /// The lowercase name operators see (`online`, `revoked`).
    pub fn display_name(self) -> &'static str {
        match self {
            admin_pb::AgentState::Online => "online",
            admin_pb::AgentState::Degraded => "degraded",
            admin_pb::AgentState::Offline => "offline",
            admin_pb::AgentState::Revoked => "revoked",
            admin_pb::AgentState::Unspecified => "unknown",
        }
    }
}

impl admin_pb::Role {
    /// The lowercase name operators see (`viewer`, `admin`).
    pub fn display_name(self) -> &'static str {
        match self {
            admin_pb::Role::Viewer => "viewer",
            admin_pb::Role::Operator => "operator",
            admin_pb::Role::Admin => "admin",
            admin_pb::Role::Unspecified => "unknown",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> agent_pb::HostFacts {
        agent_pb::HostFacts {
            hostname: "ws-icu-01".into(),
            os: "Debian GNU/Linux 12".into(),
            kernel: "6.1.0".into(),
            addresses: vec!["10.0.0.5".into()],
            agent_version: "0.1.0".into(),
            arch: "x86_64".into(),
            labels: [("site".to_owned(), "icu".to_owned())].into(),
            platform: "linux".into(),
        }
    }

    #[test]
    fn the_platform_decides_and_an_unknown_one_is_refused() {
        let old = agent_pb::HostFacts {
            platform: String::new(),
            ..facts()
        };
        assert_eq!(HostFacts::try_from(old).unwrap().platform, Platform::Linux);
        let windows = agent_pb::HostFacts {
            platform: "windows".into(),
            ..facts()
        };
        let f = HostFacts::try_from(windows).unwrap();
        assert_eq!(f.platform, Platform::Windows);
        assert_eq!(f.fact_labels().get("ruse.io/platform"), Some("windows"));
        let err = HostFacts::try_from(agent_pb::HostFacts {
            platform: "plan9".into(),
            ..facts()
        })
        .unwrap_err();
        assert!(err.to_string().contains("upgrade the controller"), "{err}");
        // Records stored before the field read as Linux.
        let stored: HostFacts = serde_json::from_str(r#"{"hostname":"a","os":"","kernel":"","arch":"","addresses":[],"agent_version":"","labels":{}}"#).unwrap();
        assert_eq!(stored.platform, Platform::Linux);
    }

    #[test]
    fn host_facts_accept_plausible_input() {
        let f = HostFacts::try_from(facts()).unwrap();
        assert_eq!(f.labels.get("site"), Some("icu"));
        assert_eq!(agent_pb::HostFacts::from(f), facts());
    }

    #[test]
    fn host_facts_become_selectable_labels() {
        let mut f = HostFacts::try_from(facts()).unwrap();
        let labels = f.fact_labels();
        assert_eq!(labels.get("ruse.io/hostname"), Some("ws-icu-01"));
        assert_eq!(labels.get("ruse.io/os"), Some("debian-gnu-linux-12"));
        assert_eq!(labels.get("ruse.io/arch"), Some("x86_64"));
        f.os = "  (((  ".into();
        f.hostname = format!("{}-end", "A".repeat(70));
        let labels = f.fact_labels();
        assert_eq!(labels.get("ruse.io/os"), None);
        assert_eq!(
            labels.get("ruse.io/hostname"),
            Some("a".repeat(63).as_str())
        );
    }

    #[test]
    fn host_facts_reject_oversized_or_hostile_input() {
        let cases: Vec<fn(&mut agent_pb::HostFacts)> = vec![
            |f| f.hostname = "h".repeat(300),
            |f| f.os = "bad\x1b[31m".into(),
            |f| f.addresses = vec!["a".into(); 65],
            |f| {
                f.labels.insert("bad key".into(), "v".into());
            },
        ];
        for mutate in cases {
            let mut f = facts();
            mutate(&mut f);
            assert!(HostFacts::try_from(f).is_err());
        }
    }

    #[test]
    fn event_strings_have_control_characters_replaced_and_are_bounded() {
        assert_eq!(
            bounded_to("path", "/srv/a\x1b[31m\nb".into(), 64).unwrap(),
            "/srv/a?[31m?b"
        );
        assert_eq!(bounded_to("path", "/srv/ü".into(), 64).unwrap(), "/srv/ü");
        assert!(bounded_to("path", "x".repeat(65), 64).is_err());
    }
}

/// Event kinds an agent may report about its lures.
pub const EVENT_KINDS: &[&str] = &["touch", "modify", "delete", "rename", "drift"];

/// Event kinds an agent's decoy services may report.
pub const DECOY_EVENT_KINDS: &[&str] = &[
    "decoy-connection",
    "decoy-login",
    "decoy-message",
    "portscan",
];

/// The kind the controller gives a decoy event whose credential matched a
/// lure. Agents cannot report it.
pub const CREDENTIAL_USE: &str = "credential-use";

/// Which decoy service was contacted, and from where.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecoyContact {
    pub name: String,
    pub protocol: String,
    pub port: u16,
    pub source_ip: String,
    pub source_port: u16,
}

/// What a client presented to a decoy, bounded.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresentedCredential {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub username: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub password: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub key_fingerprint: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub key_type: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub ae_title: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub called_ae_title: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub token: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub domain: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub workstation: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub client: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub host: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub application: String,
    /// NTLM server challenge and NTLMv2 response (see the proto). Used
    /// for matching only: never stored or shown, since it lets anyone
    /// crack the password offline, a real user's included.
    #[serde(skip)]
    pub ntlm_response: Vec<u8>,
    /// MySQL: scheme, scramble and auth response (see the proto). For
    /// matching only, like `ntlm_response`.
    #[serde(skip)]
    pub mysql_response: Vec<u8>,
}

impl PresentedCredential {
    /// Whether nothing at all was presented.
    pub fn is_empty(&self) -> bool {
        *self == PresentedCredential::default()
    }
}

impl TryFrom<agent_pb::DecoyContact> for DecoyContact {
    type Error = InvalidValue;

    fn try_from(d: agent_pb::DecoyContact) -> Result<Self, Self::Error> {
        let port = |what: &'static str, p: u32| {
            u16::try_from(p).map_err(|_| InvalidValue::Invalid {
                what,
                value: p.to_string(),
                reason: "not a port",
            })
        };
        let source_ip = bounded_to("decoy source address", d.source_ip, 64)?;
        if source_ip.parse::<std::net::IpAddr>().is_err() {
            return Err(InvalidValue::Invalid {
                what: "decoy source address",
                value: source_ip,
                reason: "not an IP address",
            });
        }
        Ok(DecoyContact {
            name: bounded_to("decoy name", d.name, 64)?,
            protocol: bounded_to("decoy protocol", d.protocol, 16)?,
            port: port("decoy port", d.port)?,
            source_ip,
            source_port: port("decoy source port", d.source_port)?,
        })
    }
}

impl TryFrom<agent_pb::Credential> for PresentedCredential {
    type Error = InvalidValue;

    fn try_from(c: agent_pb::Credential) -> Result<Self, Self::Error> {
        Ok(PresentedCredential {
            username: bounded_to("username", c.username, 256)?,
            password: bounded_to("password", c.password, 256)?,
            key_fingerprint: bounded_to("key fingerprint", c.key_fingerprint, 128)?,
            key_type: bounded_to("key type", c.key_type, 64)?,
            ae_title: bounded_to("AE title", c.ae_title, 16)?,
            called_ae_title: bounded_to("called AE title", c.called_ae_title, 16)?,
            token: bounded_to("token", c.token, 4096)?,
            domain: bounded_to("domain", c.domain, 256)?,
            workstation: bounded_to("workstation", c.workstation, 256)?,
            client: bounded_to("client", c.client, 256)?,
            host: bounded_to("host", c.host, 256)?,
            application: bounded_to("application", c.application, 64)?,
            ntlm_response: if c.ntlm_response.len() > MAX_NTLM_RESPONSE {
                return Err(InvalidValue::Invalid {
                    what: "NTLM response",
                    value: format!("{} bytes", c.ntlm_response.len()),
                    reason: "too long",
                });
            } else {
                c.ntlm_response
            },
            mysql_response: if c.mysql_response.len() > MAX_MYSQL_RESPONSE {
                return Err(InvalidValue::Invalid {
                    what: "MySQL auth response",
                    value: format!("{} bytes", c.mysql_response.len()),
                    reason: "too long",
                });
            } else {
                c.mysql_response
            },
        })
    }
}

impl From<&PresentedCredential> for agent_pb::Credential {
    fn from(c: &PresentedCredential) -> Self {
        agent_pb::Credential {
            username: c.username.clone(),
            password: c.password.clone(),
            key_fingerprint: c.key_fingerprint.clone(),
            key_type: c.key_type.clone(),
            ae_title: c.ae_title.clone(),
            called_ae_title: c.called_ae_title.clone(),
            token: c.token.clone(),
            domain: c.domain.clone(),
            workstation: c.workstation.clone(),
            client: c.client.clone(),
            host: c.host.clone(),
            application: c.application.clone(),
            // Matching only: never stored, shown or sent on.
            ntlm_response: Vec::new(),
            mysql_response: Vec::new(),
        }
    }
}

impl From<&DecoyContact> for agent_pb::DecoyContact {
    fn from(d: &DecoyContact) -> Self {
        agent_pb::DecoyContact {
            name: d.name.clone(),
            protocol: d.protocol.clone(),
            port: u32::from(d.port),
            source_ip: d.source_ip.clone(),
            source_port: u32::from(d.source_port),
        }
    }
}

/// The process behind an event.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventProcess {
    pub pid: u32,
    pub exe: String,
    pub uid: u32,
    pub user: String,
    pub cmdline: String,
}

impl From<&EventProcess> for agent_pb::Process {
    fn from(p: &EventProcess) -> Self {
        agent_pb::Process {
            pid: p.pid,
            exe: p.exe.clone(),
            uid: p.uid,
            user: p.user.clone(),
            cmdline: p.cmdline.clone(),
        }
    }
}

/// A lure event as received from an agent, checked and bounded. Which
/// agent sent it is not part of it: that comes from the certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportedEvent {
    pub id: String,
    pub seq: u64,
    pub lure_id: String,
    pub lure_revision: u64,
    pub kind: String,
    pub observed_ms: i64,
    pub path: String,
    pub process: Option<EventProcess>,
    pub operations: Vec<String>,
    pub attribution: String,
    pub allowed: bool,
    pub allow_rule: String,
    pub dropped_before: u32,
    pub template: String,
    pub detail: String,
    /// Set for events from decoy services (and then `lure_id` is empty).
    pub decoy: Option<DecoyContact>,
    pub credential: Option<PresentedCredential>,
}

/// The challenge and the longest NTLMv2 response an agent keeps.
pub const MAX_NTLM_RESPONSE: usize = 8 + 1024;
/// The longest MySQL scheme, scramble and response accepted.
pub const MAX_MYSQL_RESPONSE: usize = 1 + 20 + 64;

fn bounded_to(what: &'static str, s: String, max: usize) -> Result<String, InvalidValue> {
    if s.len() > max {
        return Err(InvalidValue::Invalid {
            what,
            value: s.chars().take(40).collect(),
            reason: "too long",
        });
    }
    // Most strings are clean: keep them rather than copy them.
    if !s.chars().any(hides_text) {
        return Ok(s);
    }
    Ok(s.chars()
        .map(|c| if hides_text(c) { '?' } else { c })
        .collect())
}

/// Whether `s` is a ULID as [`crate::types::new_ulid`] makes them.
pub fn is_ulid(s: &str) -> bool {
    // 48 bits of time in 50: the first character is at most 7.
    s.len() == 26
        && s.as_bytes()[0] <= b'7'
        && s.bytes().all(|b| {
            b.is_ascii_digit()
                || (b.is_ascii_lowercase() && !matches!(b, b'i' | b'l' | b'o' | b'u'))
        })
}

impl TryFrom<agent_pb::Event> for ReportedEvent {
    type Error = InvalidValue;

    fn try_from(e: agent_pb::Event) -> Result<Self, Self::Error> {
        if !is_ulid(&e.id) {
            return Err(InvalidValue::Invalid {
                what: "event id",
                value: e.id.chars().take(40).collect(),
                reason: "not a ULID",
            });
        }
        let from_decoy = e.decoy.is_some();
        let kinds = if from_decoy {
            DECOY_EVENT_KINDS
        } else {
            EVENT_KINDS
        };
        if !kinds.contains(&e.kind.as_str()) {
            return Err(InvalidValue::Invalid {
                what: "event kind",
                value: e.kind.chars().take(40).collect(),
                reason: if from_decoy {
                    "unknown kind for a decoy event"
                } else {
                    "unknown kind"
                },
            });
        }
        if from_decoy && !e.lure_id.is_empty() {
            return Err(InvalidValue::Invalid {
                what: "decoy event",
                value: e.lure_id.chars().take(40).collect(),
                reason: "names a lure; decoy events are matched to lures by the controller",
            });
        }
        if e.operations.len() > 8 {
            return Err(InvalidValue::Invalid {
                what: "event operations",
                value: String::new(),
                reason: "more than 8",
            });
        }
        Ok(ReportedEvent {
            id: e.id,
            seq: e.seq,
            lure_id: bounded_to("lure id", e.lure_id, 64)?,
            lure_revision: e.lure_revision,
            kind: e.kind,
            observed_ms: e.observed_ms,
            path: bounded_to("path", e.path, 4096)?,
            process: e
                .process
                .map(|p| {
                    Ok::<_, InvalidValue>(EventProcess {
                        pid: p.pid,
                        exe: bounded_to("process exe", p.exe, 4096)?,
                        uid: p.uid,
                        user: bounded_to("process user", p.user, 256)?,
                        cmdline: bounded_to("process command line", p.cmdline, 1024)?,
                    })
                })
                .transpose()?,
            operations: e
                .operations
                .into_iter()
                .map(|o| bounded_to("operation", o, 16))
                .collect::<Result<_, _>>()?,
            attribution: bounded_to("attribution", e.attribution, 64)?,
            allowed: e.allowed,
            allow_rule: bounded_to("allow rule", e.allow_rule, 128)?,
            dropped_before: e.dropped_before,
            template: bounded_to("template", e.template, 64)?,
            detail: bounded_to("detail", e.detail, 512)?,
            decoy: e.decoy.map(DecoyContact::try_from).transpose()?,
            credential: e
                .credential
                .map(PresentedCredential::try_from)
                .transpose()?
                .filter(|c| !c.is_empty()),
        })
    }
}

#[cfg(test)]
mod event_tests {
    use super::*;

    fn event() -> agent_pb::Event {
        agent_pb::Event {
            id: crate::types::new_ulid(),
            kind: "touch".into(),
            lure_id: "01lure".into(),
            path: "/home/a/x.csv".into(),
            ..Default::default()
        }
    }

    #[test]
    fn events_are_checked() {
        assert!(ReportedEvent::try_from(event()).is_ok());
        let cases: Vec<fn(&mut agent_pb::Event)> = vec![
            |e| e.id = "not-a-ulid".into(),
            |e| e.id = "01ARZ3NDEKTSV4RRFFQ69G5FAV".into(),
            |e| e.kind = "exfiltrate".into(),
            |e| e.path = "p".repeat(5000),
            |e| e.operations = vec!["open".into(); 9],
        ];
        for mutate in cases {
            let mut e = event();
            mutate(&mut e);
            assert!(ReportedEvent::try_from(e).is_err());
        }
        let mut e = event();
        e.path = "/tmp/evil\u{1b}[31m".into();
        assert_eq!(ReportedEvent::try_from(e).unwrap().path, "/tmp/evil?[31m");
    }

    fn decoy_event() -> agent_pb::Event {
        agent_pb::Event {
            id: crate::types::new_ulid(),
            kind: "decoy-login".into(),
            decoy: Some(agent_pb::DecoyContact {
                name: "pacs".into(),
                protocol: "ssh".into(),
                port: 2222,
                source_ip: "10.1.2.3".into(),
                source_port: 50000,
            }),
            credential: Some(agent_pb::Credential {
                username: "root".into(),
                password: "hunter2".into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn decoy_events_are_checked() {
        let ok = ReportedEvent::try_from(decoy_event()).unwrap();
        assert_eq!(ok.decoy.unwrap().port, 2222);
        assert_eq!(ok.credential.unwrap().password, "hunter2");
        let cases: Vec<fn(&mut agent_pb::Event)> = vec![
            // Only the controller decides a credential was a lure's.
            |e| e.kind = CREDENTIAL_USE.into(),
            |e| e.kind = "touch".into(),
            |e| e.lure_id = "01lure".into(),
            |e| e.decoy.as_mut().unwrap().port = 70000,
            |e| e.decoy.as_mut().unwrap().source_ip = "somewhere".into(),
            |e| e.credential.as_mut().unwrap().ae_title = "A".repeat(17),
        ];
        for mutate in cases {
            let mut e = decoy_event();
            mutate(&mut e);
            assert!(ReportedEvent::try_from(e).is_err());
        }
        // A file event cannot use a decoy kind.
        let mut e = event();
        e.kind = "portscan".into();
        assert!(ReportedEvent::try_from(e).is_err());
        // An empty credential is no credential.
        let mut e = decoy_event();
        e.credential = Some(agent_pb::Credential::default());
        assert_eq!(ReportedEvent::try_from(e).unwrap().credential, None);
    }
}

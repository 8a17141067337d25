//! Conversions between generated protobuf messages and domain types.
//!
//! Messages arriving from the network go through `TryFrom` and are bounded
//! here, once, so the rest of the code never handles unchecked input.

use serde::{Deserialize, Serialize};

use crate::admin::v1 as admin_pb;
use crate::agent::v1 as agent_pb;
use crate::types::{InvalidValue, Labels, Role};

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
        }
    }

    #[test]
    fn host_facts_accept_plausible_input() {
        let f = HostFacts::try_from(facts()).unwrap();
        assert_eq!(f.labels.get("site"), Some("icu"));
        assert_eq!(agent_pb::HostFacts::from(f), facts());
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
}

//! Campaigns, decoys, allow rules and suppressions as checked from their
//! manifests (`resources.rs` parses and checks) and as persisted.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use ruse_proto::types::{Labels, UnixMs, parse_duration};

use super::template::Template;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceManifest {
    pub protocol: String,
    pub port: u16,
    /// How long a refused login waits before the refusal (`300ms`, `2s`);
    /// default: what the imitated server does. At most 10 s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refusal_delay: Option<String>,
    /// telnet: the device imitated (`infusion-pump`, the default,
    /// `monitor-gateway` or `lab-analyser`), which sets the banner.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// telnet: a banner of its own instead (up to 1,024 characters, lines
    /// separated by newlines).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub banner: Option<String>,
}

impl ServiceManifest {
    /// The refusal delay, if set (validated when the manifest was read).
    pub fn refusal_delay(&self) -> Option<Duration> {
        self.refusal_delay
            .as_deref()
            .and_then(|d| parse_duration(d).ok())
    }
}

/// A known benign reader (backup, antivirus, indexer), checked. Its reads
/// are recorded, not raised.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllowRule {
    pub name: String,
    pub description: String,
    pub selector: Labels,
    pub process: String,
    pub user: String,
    pub template: String,
}

/// An address range: an IP address and a prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cidr {
    pub addr: std::net::IpAddr,
    pub prefix: u8,
}

impl Cidr {
    /// Parses `10.0.0.0/8`, `fd00::/8` or a single address.
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: std::net::IpAddr = addr
            .parse()
            .map_err(|_| format!("{s:?} is not an address or CIDR range"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?}: the prefix length must be 0 to {max}"))?,
            None => max,
        };
        Ok(Cidr { addr, prefix })
    }

    /// Whether `ip` is in the range (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        let ip = match ip {
            std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, std::net::IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (std::net::IpAddr::V4(net), std::net::IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (std::net::IpAddr::V6(net), std::net::IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Events matching every given criterion are stored but open or update no
/// incident; how many it suppressed is counted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Suppression {
    pub name: String,
    pub description: String,
    pub selector: Labels,
    pub source: Option<Cidr>,
    pub process: String,
    pub template: String,
    pub expires: Option<UnixMs>,
}

/// One lure of a campaign, checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LureSlot {
    /// Unique within the campaign: the manifest's `name`, or the template.
    pub key: String,
    pub template: Template,
    pub decoy: Option<String>,
    pub path: Option<String>,
    pub params: BTreeMap<String, String>,
}

/// A campaign, checked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Campaign {
    pub name: String,
    pub description: String,
    pub selector: Labels,
    pub lures: Vec<LureSlot>,
    /// Cumulative percentages, increasing, the last 100.
    pub waves: Vec<u8>,
    pub max_failure_ratio: f64,
    #[serde(with = "option_duration")]
    pub rotate_every: Option<Duration>,
}

/// A decoy, checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decoy {
    pub name: String,
    pub description: String,
    pub selector: Labels,
    pub address: String,
    /// The local address agents bind; empty: every address.
    #[serde(default)]
    pub listen: String,
    pub services: Vec<ServiceManifest>,
}

impl Decoy {
    /// The port of the first service speaking `protocol`.
    pub fn port(&self, protocol: &str) -> Option<u16> {
        self.services
            .iter()
            .find(|s| s.protocol == protocol)
            .map(|s| s.port)
    }
}

mod option_duration {
    use super::Duration;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&d.as_millis()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Ok(Option::<u64>::deserialize(d)?.map(Duration::from_millis))
    }
}

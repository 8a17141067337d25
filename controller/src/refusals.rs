//! Calls refused before they cost anything (admin calls without an admin
//! certificate, enrollments failing again after their source's limit),
//! tallied per source address and written to the audit log as one summary
//! per source and interval.
//!
//! Anyone who reaches the port can make such calls, as fast as they like
//! and with bodies as large as the message limit. Auditing each one cost
//! a store write, a flush and the caller's own strings; 1,750 a second
//! pushed real entries out of view and megabyte targets filled the disk.
//! A refusal now costs a map update; the audit log gets, per source, how
//! many calls were refused, when, and which methods (bounded).

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Mutex;

use ruse_proto::types::UnixMs;

/// Sources tallied at once; refusals from further sources are added to
/// one tally for "other sources" (`::`).
const MAX_SOURCES: usize = 4096;
/// Distinct methods named per source; further ones are counted as "other".
const MAX_METHODS: usize = 16;

/// Why a call was refused before the API saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Refusal {
    /// No client certificate.
    Anonymous,
    /// An agent's certificate.
    Agent,
    /// An enrollment that failed after its source used up its failures.
    Enrollment,
}

impl Refusal {
    pub fn actor(self) -> &'static str {
        match self {
            Refusal::Anonymous => "anonymous",
            Refusal::Agent => "agent certificates",
            Refusal::Enrollment => "anonymous",
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            Refusal::Anonymous => "an admin client certificate is required",
            Refusal::Agent => "agent certificates cannot call the admin API",
            Refusal::Enrollment => {
                "enrollment failed again after too many failures from this address"
            }
        }
    }
}

/// The refusals of one source and kind since the last summary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tally {
    pub source: IpAddr,
    pub refusal: Refusal,
    pub first: UnixMs,
    pub last: UnixMs,
    pub count: u64,
    /// Method name → calls (at most [`MAX_METHODS`], then "other").
    pub methods: BTreeMap<String, u64>,
}

impl Tally {
    /// One line for the audit record's detail.
    pub fn detail(&self) -> String {
        let methods: Vec<String> = self
            .methods
            .iter()
            .map(|(m, n)| format!("{m} x{n}"))
            .collect();
        format!(
            "{} call(s) from {} to {}: {}",
            self.count,
            self.first.rfc3339(),
            self.last.rfc3339(),
            methods.join(", ")
        )
    }
}

/// Refusals not yet summarised.
#[derive(Debug, Default)]
pub struct Refusals {
    tallies: Mutex<HashMap<(IpAddr, Refusal), Tally>>,
}

impl Refusals {
    /// Counts one refused call of `method` (the gRPC method name, which
    /// the caller chose: it is cut to a short, printable name).
    pub fn record(&self, source: IpAddr, refusal: Refusal, method: &str) {
        let mut tallies = self.tallies.lock().unwrap_or_else(|e| e.into_inner());
        let source = if tallies.len() >= MAX_SOURCES && !tallies.contains_key(&(source, refusal)) {
            IpAddr::V6(Ipv6Addr::UNSPECIFIED)
        } else {
            source
        };
        let now = UnixMs::now();
        let tally = tallies.entry((source, refusal)).or_insert_with(|| Tally {
            source,
            refusal,
            first: now,
            last: now,
            count: 0,
            methods: BTreeMap::new(),
        });
        tally.count += 1;
        tally.last = now;
        let method = method_name(method);
        let key = if tally.methods.len() < MAX_METHODS || tally.methods.contains_key(&method) {
            method
        } else {
            "other".to_owned()
        };
        *tally.methods.entry(key).or_default() += 1;
    }

    /// Takes every tally (oldest first) for the audit log.
    pub fn drain(&self) -> Vec<Tally> {
        let mut tallies: Vec<Tally> = self
            .tallies
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .map(|(_, t)| t)
            .collect();
        tallies.sort_by_key(|t| (t.first, t.source));
        tallies
    }
}

/// The last path segment, printable ASCII, at most 64 characters.
fn method_name(path: &str) -> String {
    let name = path.rsplit('/').next().unwrap_or_default();
    let clean: String = name
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(64)
        .collect();
    if clean.is_empty() {
        "unknown".to_owned()
    } else {
        clean
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_tallied_per_source_with_bounded_names() {
        let r = Refusals::default();
        let a = IpAddr::from([10, 0, 0, 1]);
        let b = IpAddr::from([10, 0, 0, 2]);
        let huge = format!("/ruse.admin.v1.AdminService/{}", "X".repeat(3 << 20));
        for _ in 0..1000 {
            r.record(
                a,
                Refusal::Anonymous,
                "/ruse.admin.v1.AdminService/RevokeAgent",
            );
        }
        r.record(a, Refusal::Anonymous, &huge);
        for i in 0..40 {
            r.record(b, Refusal::Agent, &format!("/x/M{i}"));
        }
        let tallies = r.drain();
        assert_eq!(tallies.len(), 2);
        let ta = tallies.iter().find(|t| t.source == a).unwrap();
        assert_eq!(ta.count, 1001);
        assert_eq!(ta.methods["RevokeAgent"], 1000);
        assert!(ta.detail().len() < 300, "{}", ta.detail());
        let tb = tallies.iter().find(|t| t.source == b).unwrap();
        assert_eq!(tb.methods.len(), MAX_METHODS + 1);
        assert_eq!(tb.methods["other"], 40 - MAX_METHODS as u64);
        assert!(r.drain().is_empty());
    }

    #[test]
    fn sources_beyond_the_cap_share_one_tally() {
        let r = Refusals::default();
        for i in 0..(MAX_SOURCES as u32 + 100) {
            r.record(IpAddr::from(i.to_be_bytes()), Refusal::Anonymous, "/x/Y");
        }
        let tallies = r.drain();
        assert_eq!(tallies.len(), MAX_SOURCES + 1);
        let other = tallies
            .iter()
            .find(|t| t.source == IpAddr::V6(Ipv6Addr::UNSPECIFIED))
            .unwrap();
        assert_eq!(other.count, 100);
    }
}

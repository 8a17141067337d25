//! What the agent reports about its host. Linux-specific reads are kept
//! here so other platforms add their own without touching callers.

use ruse_proto::convert::{HostFacts, MAX_ADDRESSES};
use ruse_proto::types::Labels;

/// Gathers host facts now. Missing facts are left empty rather than failing:
/// an agent on a locked-down device still enrolls.
pub fn gather(labels: &Labels) -> HostFacts {
    crate::platform::host_facts(
        &hostname(),
        &os_name(),
        &kernel_release(),
        addresses(),
        labels,
    )
}

fn hostname() -> String {
    nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn os_name() -> String {
    for path in ["/etc/os-release", "/usr/lib/os-release"] {
        if let Ok(text) = std::fs::read_to_string(path)
            && let Some(name) = text.lines().find_map(|l| l.strip_prefix("PRETTY_NAME="))
        {
            return name.trim_matches('"').to_owned();
        }
    }
    std::env::consts::OS.to_owned()
}

fn kernel_release() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn addresses() -> Vec<String> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    let mut out: Vec<String> = addrs
        .filter_map(|ifa| {
            let addr = ifa.address?;
            let ip: std::net::IpAddr = if let Some(v4) = addr.as_sockaddr_in() {
                v4.ip().into()
            } else {
                addr.as_sockaddr_in6()?.ip().into()
            };
            (!ip.is_loopback() && !ip.is_unspecified()).then(|| ip.to_string())
        })
        .collect();
    out.sort();
    out.dedup();
    out.truncate(MAX_ADDRESSES);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn facts_are_plausible_and_pass_controller_validation() {
        let facts = gather(&Labels::parse_pairs(["site=icu"]).unwrap());
        assert!(!facts.hostname.is_empty());
        assert!(!facts.kernel.is_empty());
        assert_eq!(facts.agent_version, env!("CARGO_PKG_VERSION"));
        let pb = ruse_proto::agent::v1::HostFacts::from(facts.clone());
        assert_eq!(HostFacts::try_from(pb).unwrap(), facts);
    }
}

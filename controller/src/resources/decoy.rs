//! Decoy manifests: the protocols a decoy may run and the checks of its
//! services, address and listen address.

use std::time::Duration;

use ruse_proto::types::parse_duration;

use super::{DecoyManifest, check_api_version, check_name, selector};
use crate::model::Decoy;

/// Decoy protocols (DESIGN §4).
pub const PROTOCOLS: &[&str] = &[
    "ssh",
    "http",
    "https",
    "smb",
    "dicom",
    "hl7",
    "ftp",
    "mysql",
    "mssql",
    "rdp",
    "telnet",
    "kube-apiserver",
    "portscan",
];

/// The devices a Telnet decoy imitates (the agent has their banners).
pub const TELNET_DEVICES: &[&str] = &["infusion-pump", "monitor-gateway", "lab-analyser"];

pub(super) fn check_decoy(m: DecoyManifest) -> Result<Decoy, (String, String)> {
    check_api_version(&m.api_version)?;
    check_name(&m.name).map_err(|r| ("name".to_owned(), r))?;
    let selector = selector(m.selector)?;
    if m.services.is_empty() {
        return Err((
            "services".into(),
            "a decoy needs at least one service".into(),
        ));
    }
    for (i, s) in m.services.iter().enumerate() {
        if !PROTOCOLS.contains(&s.protocol.as_str()) {
            return Err((
                format!("services[{i}].protocol"),
                format!(
                    "unknown protocol {:?}; expected one of {}",
                    s.protocol,
                    PROTOCOLS.join(", ")
                ),
            ));
        }
        if s.port == 0 {
            return Err((format!("services[{i}].port"), "must be 1 to 65535".into()));
        }
        if m.services[..i].iter().any(|o| o.port == s.port) {
            return Err((
                format!("services[{i}].port"),
                format!("port {} is used twice", s.port),
            ));
        }
        if (s.device.is_some() || s.banner.is_some()) && s.protocol != "telnet" {
            return Err((
                format!("services[{i}]"),
                "device and banner are for telnet services".into(),
            ));
        }
        if let Some(d) = &s.device
            && !TELNET_DEVICES.contains(&d.as_str())
        {
            return Err((
                format!("services[{i}].device"),
                format!(
                    "unknown device {d:?}; expected one of {}",
                    TELNET_DEVICES.join(", ")
                ),
            ));
        }
        if let Some(b) = &s.banner
            && (b.len() > 1024 || b.chars().any(|c| c.is_control() && c != '\n' && c != '\t'))
        {
            return Err((
                format!("services[{i}].banner"),
                "at most 1,024 characters, no control characters but newlines and tabs".into(),
            ));
        }
        if let Some(d) = &s.refusal_delay {
            match parse_duration(d) {
                Ok(d) if d <= Duration::from_secs(10) => {}
                Ok(_) => {
                    return Err((
                        format!("services[{i}].refusal_delay"),
                        "must be at most 10s".into(),
                    ));
                }
                Err(e) => return Err((format!("services[{i}].refusal_delay"), e.to_string())),
            }
        }
    }
    let address = match m.address {
        Some(a) => {
            let ok = a.parse::<std::net::IpAddr>().is_ok()
                || (!a.is_empty()
                    && a.len() <= 253
                    && a.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.'));
            if !ok {
                return Err((
                    "address".into(),
                    format!("{a:?} is neither an IP address nor a DNS name"),
                ));
            }
            a
        }
        None => m.name.clone(),
    };
    let listen = match m.listen {
        Some(l) => {
            if l.parse::<std::net::IpAddr>().is_err() {
                return Err(("listen".into(), format!("{l:?} is not an IP address")));
            }
            l
        }
        None => String::new(),
    };
    Ok(Decoy {
        name: m.name,
        description: m.description,
        selector,
        address,
        listen,
        services: m.services,
    })
}

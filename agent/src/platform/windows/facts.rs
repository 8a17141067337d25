//! What the agent reports about a Windows host: the computer's DNS name,
//! the edition and build from the registry (`ProductName`,
//! `DisplayVersion`, `CurrentBuild.UBR`), the domain it is joined to, and
//! its unicast addresses.

use std::net::IpAddr;

use windows_sys::Win32::Foundation::{ERROR_BUFFER_OVERFLOW, ERROR_SUCCESS};
use windows_sys::Win32::NetworkManagement::IpHelper::{
    GAA_FLAG_SKIP_ANYCAST, GAA_FLAG_SKIP_DNS_SERVER, GAA_FLAG_SKIP_MULTICAST, GetAdaptersAddresses,
    IP_ADAPTER_ADDRESSES_LH,
};
use windows_sys::Win32::Networking::WinSock::{
    AF_INET, AF_INET6, AF_UNSPEC, SOCKADDR_IN, SOCKADDR_IN6,
};
use windows_sys::Win32::System::Registry::{HKEY_LOCAL_MACHINE, RRF_RT_REG_DWORD, RegGetValueW};
use windows_sys::Win32::System::SystemInformation::{
    COMPUTER_NAME_FORMAT, ComputerNameDnsDomain, ComputerNameDnsHostname, GetComputerNameExW,
};

use ruse_proto::convert::{HostFacts, MAX_ADDRESSES};
use ruse_proto::types::Labels;

use super::wide;

const CURRENT_VERSION: &str = r"SOFTWARE\Microsoft\Windows NT\CurrentVersion";

/// Gathers host facts now; what cannot be read is left empty.
pub fn gather(labels: &Labels) -> HostFacts {
    crate::platform::host_facts(
        &computer_name(ComputerNameDnsHostname).unwrap_or_default(),
        &edition(),
        &build(),
        addresses(),
        labels,
    )
}

fn computer_name(format: COMPUTER_NAME_FORMAT) -> Option<String> {
    let mut buf = [0u16; 256];
    let mut len = buf.len() as u32;
    // SAFETY: `len` is the buffer's length in characters.
    let ok = unsafe { GetComputerNameExW(format, buf.as_mut_ptr(), &mut len) };
    (ok != 0).then(|| String::from_utf16_lossy(&buf[..len as usize]))
}

/// A string value under HKLM\SOFTWARE\Microsoft\Windows NT\CurrentVersion.
fn version_string(name: &str) -> Option<String> {
    super::registry::string_value(HKEY_LOCAL_MACHINE, CURRENT_VERSION, name)
}

fn version_dword(name: &str) -> Option<u32> {
    let (key, value) = (wide(CURRENT_VERSION), wide(name));
    let mut out = 0u32;
    let mut bytes = 4u32;
    // SAFETY: a DWORD value into a DWORD.
    let rc = unsafe {
        RegGetValueW(
            HKEY_LOCAL_MACHINE,
            key.as_ptr(),
            value.as_ptr(),
            RRF_RT_REG_DWORD,
            std::ptr::null_mut(),
            (&mut out as *mut u32).cast(),
            &mut bytes,
        )
    };
    (rc == ERROR_SUCCESS).then_some(out)
}

/// "Windows 10 Enterprise 22H2", and the domain when joined to one:
/// "Windows 10 Enterprise 22H2 (domain hospital.example)".
fn edition() -> String {
    let mut os = version_string("ProductName").unwrap_or_else(|| "Windows".into());
    if let Some(display) = version_string("DisplayVersion") {
        os = format!("{os} {display}");
    }
    match computer_name(ComputerNameDnsDomain).filter(|d| !d.is_empty()) {
        Some(domain) => format!("{os} (domain {domain})"),
        None => os,
    }
}

/// "10.0.19045.3803": major, minor, build and update revision.
fn build() -> String {
    let major = version_dword("CurrentMajorVersionNumber").unwrap_or(10);
    let minor = version_dword("CurrentMinorVersionNumber").unwrap_or(0);
    let build = version_string("CurrentBuild").unwrap_or_default();
    match version_dword("UBR") {
        Some(ubr) => format!("{major}.{minor}.{build}.{ubr}"),
        None => format!("{major}.{minor}.{build}"),
    }
}

fn addresses() -> Vec<String> {
    let flags = GAA_FLAG_SKIP_ANYCAST | GAA_FLAG_SKIP_MULTICAST | GAA_FLAG_SKIP_DNS_SERVER;
    let mut size = 16 * 1024u32;
    let mut buf: Vec<u64> = Vec::new();
    for _ in 0..3 {
        buf = vec![0u64; (size as usize).div_ceil(8)];
        // SAFETY: `size` is the buffer's size in bytes; the buffer is
        // 8-aligned as IP_ADAPTER_ADDRESSES_LH needs.
        let rc = unsafe {
            GetAdaptersAddresses(
                u32::from(AF_UNSPEC),
                flags,
                std::ptr::null(),
                buf.as_mut_ptr().cast(),
                &mut size,
            )
        };
        match rc {
            ERROR_SUCCESS => break,
            ERROR_BUFFER_OVERFLOW => continue,
            _ => return Vec::new(),
        }
    }
    let mut out = Vec::new();
    let mut adapter = buf.as_ptr() as *const IP_ADAPTER_ADDRESSES_LH;
    // SAFETY: the list and its addresses live in `buf`, linked by Next
    // pointers the call filled in; null ends each list.
    unsafe {
        while !adapter.is_null() {
            let mut unicast = (*adapter).FirstUnicastAddress;
            while !unicast.is_null() {
                let sa = (*unicast).Address.lpSockaddr;
                if !sa.is_null() {
                    let ip: Option<IpAddr> = match (*sa).sa_family {
                        AF_INET => {
                            let v4 = &*(sa as *const SOCKADDR_IN);
                            Some(
                                std::net::Ipv4Addr::from(u32::from_be(v4.sin_addr.S_un.S_addr))
                                    .into(),
                            )
                        }
                        AF_INET6 => {
                            let v6 = &*(sa as *const SOCKADDR_IN6);
                            Some(std::net::Ipv6Addr::from(v6.sin6_addr.u.Byte).into())
                        }
                        _ => None,
                    };
                    if let Some(ip) = ip.filter(|ip| !ip.is_loopback() && !ip.is_unspecified()) {
                        out.push(ip.to_string());
                    }
                }
                unicast = (*unicast).Next;
            }
            adapter = (*adapter).Next;
        }
    }
    out.sort();
    out.dedup();
    out.truncate(MAX_ADDRESSES);
    out
}

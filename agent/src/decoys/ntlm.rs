//! The NTLMSSP messages the SMB and RDP decoys need ([MS-NLMP]): build a
//! CHALLENGE, read user, domain and workstation from an AUTHENTICATE.
//! Every function is pure and bounded, for fuzzing.

const SIGNATURE: &[u8; 8] = b"NTLMSSP\0";

pub const NEGOTIATE_UNICODE: u32 = 0x0000_0001;
pub const REQUEST_TARGET: u32 = 0x0000_0004;
pub const NEGOTIATE_SIGN: u32 = 0x0000_0010;
pub const NEGOTIATE_SEAL: u32 = 0x0000_0020;
pub const NEGOTIATE_NTLM: u32 = 0x0000_0200;
pub const NEGOTIATE_ALWAYS_SIGN: u32 = 0x0000_8000;
pub const TARGET_TYPE_SERVER: u32 = 0x0002_0000;
pub const EXTENDED_SESSION_SECURITY: u32 = 0x0008_0000;
pub const NEGOTIATE_TARGET_INFO: u32 = 0x0080_0000;
pub const NEGOTIATE_VERSION: u32 = 0x0200_0000;
pub const NEGOTIATE_128: u32 = 0x2000_0000;
pub const KEY_EXCHANGE: u32 = 0x4000_0000;
pub const NEGOTIATE_56: u32 = 0x8000_0000;

/// Flags the server agrees to when the client asks for them.
const SUPPORTED: u32 = NEGOTIATE_UNICODE
    | NEGOTIATE_SIGN
    | NEGOTIATE_SEAL
    | NEGOTIATE_ALWAYS_SIGN
    | EXTENDED_SESSION_SECURITY
    | NEGOTIATE_VERSION
    | NEGOTIATE_128
    | KEY_EXCHANGE
    | NEGOTIATE_56;

/// The NTLMSSP message inside a security blob (bare or wrapped in SPNEGO).
pub fn find(blob: &[u8]) -> Option<&[u8]> {
    let at = blob.windows(SIGNATURE.len()).position(|w| w == SIGNATURE)?;
    Some(&blob[at..])
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// The message type (1 NEGOTIATE, 2 CHALLENGE, 3 AUTHENTICATE).
pub fn message_type(msg: &[u8]) -> Option<u32> {
    if msg.get(..8)? != SIGNATURE {
        return None;
    }
    u32_at(msg, 8)
}

/// The flags of a NEGOTIATE message.
pub fn negotiate_flags(msg: &[u8]) -> Option<u32> {
    (message_type(msg)? == 1).then(|| u32_at(msg, 12)).flatten()
}

/// What the server calls itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    /// NetBIOS computer name (upper case, at most 15 characters).
    pub computer: String,
    /// NetBIOS domain name.
    pub domain: String,
    /// DNS host name.
    pub dns_computer: String,
    /// DNS domain name (may be empty).
    pub dns_domain: String,
}

impl Names {
    /// Names for a decoy called `name` reachable at `address` (a DNS name
    /// gives the DNS domain; otherwise the host is in WORKGROUP).
    pub fn new(name: &str, address: &str) -> Names {
        let host = if address.parse::<std::net::IpAddr>().is_ok() || address.is_empty() {
            name
        } else {
            address
        };
        let (first, rest) = host.split_once('.').unwrap_or((host, ""));
        let computer: String = first
            .to_uppercase()
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
            .take(15)
            .collect();
        let domain = rest
            .split('.')
            .next()
            .filter(|d| !d.is_empty())
            .map(|d| d.to_uppercase().chars().take(15).collect())
            .unwrap_or_else(|| "WORKGROUP".to_owned());
        Names {
            computer: if computer.is_empty() {
                "FILESRV01".into()
            } else {
                computer
            },
            domain,
            dns_computer: host.to_lowercase(),
            dns_domain: rest.to_lowercase(),
        }
    }
}

fn utf16(s: &str) -> Vec<u8> {
    s.encode_utf16().flat_map(u16::to_le_bytes).collect()
}

fn av_pair(out: &mut Vec<u8>, id: u16, value: &[u8]) {
    out.extend_from_slice(&id.to_le_bytes());
    out.extend_from_slice(&(value.len() as u16).to_le_bytes());
    out.extend_from_slice(value);
}

/// The VERSION a server puts in its CHALLENGE: what Samba 4.17 says it
/// is, 6.1.0 (build 0), NTLM revision 15.
pub const SAMBA_VERSION: [u8; 8] = [6, 1, 0, 0, 0, 0, 0, 15];
/// Windows Server 2019 (10.0, build 17763), NTLM revision 15.
pub const WINDOWS_2019_VERSION: [u8; 8] = [10, 0, 0x63, 0x45, 0, 0, 0, 15];

/// The CHALLENGE answering a NEGOTIATE with `client_flags`, from a server
/// that says it is `version` (see [`SAMBA_VERSION`]).
pub fn challenge(
    client_flags: u32,
    server_challenge: [u8; 8],
    names: &Names,
    filetime: u64,
    version: [u8; 8],
) -> Vec<u8> {
    let flags = (client_flags & SUPPORTED)
        | REQUEST_TARGET
        | NEGOTIATE_NTLM
        | TARGET_TYPE_SERVER
        | NEGOTIATE_TARGET_INFO
        | NEGOTIATE_UNICODE;
    let target = utf16(&names.computer);
    let mut info = Vec::new();
    av_pair(&mut info, 2, &utf16(&names.domain));
    av_pair(&mut info, 1, &utf16(&names.computer));
    // Samba names the DNS domain even when it is empty (a standalone
    // server).
    av_pair(&mut info, 4, &utf16(&names.dns_domain));
    av_pair(&mut info, 3, &utf16(&names.dns_computer));
    if !names.dns_domain.is_empty() {
        av_pair(&mut info, 5, &utf16(&names.dns_domain));
    }
    av_pair(&mut info, 7, &filetime.to_le_bytes());
    av_pair(&mut info, 0, &[]);
    const HEADER: usize = 56;
    let mut out = Vec::with_capacity(HEADER + target.len() + info.len());
    out.extend_from_slice(SIGNATURE);
    out.extend_from_slice(&2u32.to_le_bytes());
    out.extend_from_slice(&(target.len() as u16).to_le_bytes());
    out.extend_from_slice(&(target.len() as u16).to_le_bytes());
    out.extend_from_slice(&(HEADER as u32).to_le_bytes());
    out.extend_from_slice(&flags.to_le_bytes());
    out.extend_from_slice(&server_challenge);
    out.extend_from_slice(&[0; 8]);
    out.extend_from_slice(&(info.len() as u16).to_le_bytes());
    out.extend_from_slice(&(info.len() as u16).to_le_bytes());
    out.extend_from_slice(&((HEADER + target.len()) as u32).to_le_bytes());
    out.extend_from_slice(&version);
    out.extend_from_slice(&target);
    out.extend_from_slice(&info);
    out
}

/// What an AUTHENTICATE message presents.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Authenticate {
    pub user: String,
    pub domain: String,
    pub workstation: String,
    /// Anonymous: no user and an empty or one-byte LM response.
    pub anonymous: bool,
    /// The NT response is NTLMv2 (longer than 24 bytes).
    pub ntlmv2: bool,
    /// The NTLMv2 response (proof and blob), at most [`MAX_NT_RESPONSE`]
    /// bytes; empty for NTLMv1 or a longer one. With the server challenge
    /// it proves a password without revealing it.
    pub nt_response: Vec<u8>,
}

impl Authenticate {
    /// What the client presented, for the event: user, domain and
    /// workstation, and (for NTLMv2) the `server_challenge` this connection
    /// sent followed by the response, which the controller checks against
    /// every planted password.
    pub fn credential(
        &self,
        server_challenge: &[u8; 8],
    ) -> ruse_proto::convert::PresentedCredential {
        let mut c = super::credential();
        c.username = self.user.clone();
        c.domain = self.domain.clone();
        c.workstation = self.workstation.clone();
        if !self.nt_response.is_empty() {
            c.ntlm_response = [&server_challenge[..], &self.nt_response].concat();
        }
        c
    }
}

/// Longest NTLMv2 response kept: the proof, the blob's fixed part and the
/// target information a client echoes (a few hundred bytes in practice).
pub const MAX_NT_RESPONSE: usize = 1024;

/// Reads user, domain and workstation from an AUTHENTICATE.
pub fn authenticate(msg: &[u8]) -> Option<Authenticate> {
    if message_type(msg)? != 3 {
        return None;
    }
    let flags = u32_at(msg, 60).unwrap_or(NEGOTIATE_UNICODE);
    let field = |at: usize| -> Option<&[u8]> {
        let len = usize::from(u16_at(msg, at)?);
        let offset = u32_at(msg, at + 4)? as usize;
        msg.get(offset..offset.checked_add(len)?)
    };
    let text = |b: &[u8]| -> String {
        let s = if flags & NEGOTIATE_UNICODE != 0 {
            let units: Vec<u16> = b
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .collect();
            String::from_utf16_lossy(&units)
        } else {
            String::from_utf8_lossy(b).into_owned()
        };
        s.chars().filter(|c| !c.is_control()).take(256).collect()
    };
    let lm = field(12)?;
    let nt = field(20)?;
    let user = text(field(36)?);
    Some(Authenticate {
        domain: text(field(28)?),
        workstation: text(field(44)?),
        anonymous: user.is_empty() && nt.is_empty() && lm.len() <= 1,
        ntlmv2: nt.len() > 24,
        nt_response: if (25..=MAX_NT_RESPONSE).contains(&nt.len()) {
            nt.to_vec()
        } else {
            Vec::new()
        },
        user,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An AUTHENTICATE as a client builds it.
    pub fn authenticate_message(user: &str, domain: &str, workstation: &str) -> Vec<u8> {
        let fields = [
            vec![0u8; 24],
            vec![1u8; 48],
            utf16(domain),
            utf16(user),
            utf16(workstation),
            vec![],
        ];
        let mut out = SIGNATURE.to_vec();
        out.extend_from_slice(&3u32.to_le_bytes());
        let mut offset = 72u32;
        let mut payload = Vec::new();
        for f in &fields {
            out.extend_from_slice(&(f.len() as u16).to_le_bytes());
            out.extend_from_slice(&(f.len() as u16).to_le_bytes());
            out.extend_from_slice(&offset.to_le_bytes());
            offset += f.len() as u32;
            payload.extend_from_slice(f);
        }
        out.extend_from_slice(&(NEGOTIATE_UNICODE | EXTENDED_SESSION_SECURITY).to_le_bytes());
        out.extend_from_slice(&[10, 0, 0x63, 0x45, 0, 0, 0, 15]);
        out.extend_from_slice(&payload);
        out
    }

    #[test]
    fn reads_an_authenticate() {
        let mut blob = vec![0xa1, 0x81, 0x80, 0x30];
        blob.extend(authenticate_message("svc_pacs", "RADIOLOGY", "WS-0042"));
        let a = authenticate(find(&blob).unwrap()).unwrap();
        assert_eq!(a.user, "svc_pacs");
        assert_eq!(a.domain, "RADIOLOGY");
        assert_eq!(a.workstation, "WS-0042");
        assert!(a.ntlmv2);
        assert!(!a.anonymous);
    }

    #[test]
    fn truncated_or_lying_messages_are_refused() {
        let msg = authenticate_message("u", "d", "w");
        for cut in 0..msg.len() - 1 {
            // Any prefix shorter than the payload loses a field.
            if cut < 72 + 24 + 48 {
                assert_eq!(authenticate(&msg[..cut]), None, "cut at {cut}");
            }
        }
        let mut lying = msg.clone();
        lying[40..44].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(authenticate(&lying), None);
    }

    #[test]
    fn challenge_carries_the_names() {
        let names = Names::new("pacs-archive02", "pacs-archive02.radiology.example.org");
        assert_eq!(names.computer, "PACS-ARCHIVE02");
        assert_eq!(names.domain, "RADIOLOGY");
        let c = challenge(0xe288_8215, [1; 8], &names, 0, SAMBA_VERSION);
        assert_eq!(message_type(&c), Some(2));
        let flags = u32_at(&c, 20).unwrap();
        assert_ne!(flags & NEGOTIATE_TARGET_INFO, 0);
        assert_ne!(flags & EXTENDED_SESSION_SECURITY, 0);
        let ip = Names::new("pacs-archive02", "127.0.0.1");
        assert_eq!(ip.domain, "WORKGROUP");
    }
}

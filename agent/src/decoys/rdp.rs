//! A Windows Remote Desktop server that requires Network Level
//! Authentication and never lets anyone in: the X.224 connection request
//! and its RDP negotiation ([MS-RDPBCGR] 2.2.1.1–2.2.1.2, answered as
//! Windows Server 2019 answers), TLS, then CredSSP ([MS-CSSP]) carrying
//! NTLM: the client's AUTHENTICATE gives user, domain and workstation, and
//! its NTLMv2 response lets the controller prove a planted password without
//! the decoy ever learning one. The answer is the CredSSP error a Windows
//! server sends for a bad password (STATUS_LOGON_FAILURE). A client that
//! only negotiates (a scanner) is recorded as a connection with what it
//! asked for.

use std::sync::Arc;
use std::time::Duration;

use ruse_proto::convert::PresentedCredential;
use tokio::io::{AsyncRead, AsyncWriteExt};

use super::der::{self, der};
use super::{Conn, ServiceCtx, ntlm};

/// The largest TPKT or CredSSP message read (a client's NTLM AUTHENTICATE
/// with its public key proof is well under 4 KiB).
pub const MAX_PDU: usize = 16 * 1024;

/// Security protocols of an RDP negotiation request.
pub const PROTOCOL_SSL: u32 = 0x01;
pub const PROTOCOL_HYBRID: u32 = 0x02;
pub const PROTOCOL_RDSTLS: u32 = 0x04;
pub const PROTOCOL_HYBRID_EX: u32 = 0x08;
/// The negotiation failure a server that requires NLA sends a client that
/// did not offer it.
const HYBRID_REQUIRED_BY_SERVER: u32 = 0x05;
/// What Windows Server 2019 sets in its negotiation response: extended
/// client data, the graphics pipeline, restricted admin and redirected
/// authentication supported (nmap's fingerprint of Windows expects 0x1f).
const NEG_RSP_FLAGS: u8 = 0x1f;
/// The CredSSP version the decoy speaks (Windows 10 1809 and later).
const CREDSSP_VERSION: u32 = 6;
/// NTSTATUS of a bad user name or password.
pub const STATUS_LOGON_FAILURE: u32 = 0xc000_006d;

/// What a client's X.224 connection request said.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnectionRequest {
    /// The `Cookie: mstshash=` value (a user name hint; mstsc cuts it to
    /// nine characters) or a load balancer's routing token.
    pub cookie: String,
    /// The protocols of its RDP negotiation request, if it sent one (old
    /// clients and some scanners do not).
    pub requested: Option<u32>,
}

/// A TPKT header's total length (header included). Pure, for fuzzing.
pub fn tpkt_length(h: &[u8; 4]) -> Option<usize> {
    let len = usize::from(u16::from_be_bytes([h[2], h[3]]));
    (h[0] == 3 && (4 + 7..=MAX_PDU).contains(&len)).then_some(len)
}

/// Parses an X.224 Connection Request TPDU (what follows the TPKT
/// header). Pure, for fuzzing.
pub fn connection_request(tpdu: &[u8]) -> Option<ConnectionRequest> {
    let li = usize::from(*tpdu.first()?);
    // The length indicator covers the TPDU after itself.
    if tpdu.get(1)? & 0xf0 != 0xe0 || li + 1 != tpdu.len() || li < 6 {
        return None;
    }
    let mut rest = &tpdu[7..];
    let mut req = ConnectionRequest::default();
    if rest.starts_with(b"Cookie: ") {
        let end = rest.windows(2).position(|w| w == b"\r\n")?;
        let line = &rest[b"Cookie: ".len()..end];
        let value = line.strip_prefix(b"mstshash=").unwrap_or(line);
        req.cookie = String::from_utf8_lossy(value)
            .chars()
            .filter(|c| !c.is_control())
            .take(64)
            .collect();
        rest = &rest[end + 2..];
    }
    // RDP_NEG_REQ: type 1, flags, length 8, requested protocols.
    if let [1, _, 8, 0, a, b, c, d, ..] = *rest {
        req.requested = Some(u32::from_le_bytes([a, b, c, d]));
    }
    Some(req)
}

/// What the server does with a connection request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Negotiated {
    /// TLS then CredSSP (`PROTOCOL_HYBRID` or `PROTOCOL_HYBRID_EX`).
    Nla(u32),
    /// The client did not offer NLA: refused with a negotiation failure.
    NlaRequired,
    /// An old client without a negotiation request: confirmed as an old
    /// Windows server does, then nothing it can use.
    Legacy,
}

/// The server's decision and its X.224 Connection Confirm (TPKT framed).
pub fn connection_confirm(req: &ConnectionRequest) -> (Negotiated, Vec<u8>) {
    let (negotiated, neg) = match req.requested {
        None => (Negotiated::Legacy, None),
        Some(p) if p & PROTOCOL_HYBRID_EX != 0 => (
            Negotiated::Nla(PROTOCOL_HYBRID_EX),
            Some((2, NEG_RSP_FLAGS, PROTOCOL_HYBRID_EX)),
        ),
        Some(p) if p & PROTOCOL_HYBRID != 0 => (
            Negotiated::Nla(PROTOCOL_HYBRID),
            Some((2, NEG_RSP_FLAGS, PROTOCOL_HYBRID)),
        ),
        Some(_) => (
            Negotiated::NlaRequired,
            Some((3, 0, HYBRID_REQUIRED_BY_SERVER)),
        ),
    };
    // LI, CC, DST-REF 0, SRC-REF 0x1234, class 0.
    let mut tpdu = vec![0, 0xd0, 0, 0, 0x12, 0x34, 0];
    if let Some((kind, flags, value)) = neg {
        tpdu.extend_from_slice(&[kind, flags, 8, 0]);
        tpdu.extend_from_slice(&value.to_le_bytes());
    }
    tpdu[0] = u8::try_from(tpdu.len() - 1).unwrap_or(0);
    let mut out = vec![3, 0];
    out.extend_from_slice(&u16::try_from(tpdu.len() + 4).unwrap_or(0).to_be_bytes());
    out.extend_from_slice(&tpdu);
    (negotiated, out)
}

/// The protocols of a negotiation request, as a person reads them.
pub fn protocols(p: u32) -> String {
    let names: Vec<&str> = [
        (PROTOCOL_SSL, "TLS"),
        (PROTOCOL_HYBRID, "CredSSP"),
        (PROTOCOL_RDSTLS, "RDSTLS"),
        (PROTOCOL_HYBRID_EX, "CredSSP with early authorization"),
    ]
    .iter()
    .filter(|(bit, _)| p & bit != 0)
    .map(|(_, name)| *name)
    .collect();
    if names.is_empty() {
        "standard RDP security".into()
    } else {
        names.join(", ")
    }
}

/// What a CredSSP TSRequest carried.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TsRequest {
    pub version: u32,
    /// The first negoToken (an NTLM or SPNEGO message), empty if none.
    pub nego_token: Vec<u8>,
    /// The client proved the server's public key (it does with its
    /// AUTHENTICATE).
    pub pub_key_auth: bool,
    /// The client sent its credentials (only after the server proved
    /// itself, which this one never does).
    pub auth_info: bool,
    pub error_code: Option<u32>,
}

/// Parses a TSRequest. Pure, for fuzzing.
pub fn ts_request(msg: &[u8]) -> Option<TsRequest> {
    let mut fields = der::expect(msg, 0x30)?;
    let mut req = TsRequest::default();
    let mut version = None;
    while !fields.is_empty() {
        let (tag, value, rest) = der::tlv(fields)?;
        fields = rest;
        match tag {
            0xa0 => version = Some(der::uint(der::expect(value, 0x02)?)?),
            // NegoData: SEQUENCE OF SEQUENCE { negoToken [0] OCTET STRING }.
            0xa1 => {
                let item = der::expect(der::expect(value, 0x30)?, 0x30)?;
                req.nego_token = der::expect(der::expect(item, 0xa0)?, 0x04)?.to_vec();
            }
            0xa2 => req.auth_info = true,
            0xa3 => req.pub_key_auth = true,
            0xa4 => req.error_code = Some(der::uint(der::expect(value, 0x02)?)?),
            // clientNonce, and whatever a later version adds.
            _ => {}
        }
    }
    req.version = version?;
    Some(req)
}

/// A TSRequest from the server: a negoToken, or an error code (CredSSP 3
/// and later).
pub fn ts_request_bytes(version: u32, token: Option<&[u8]>, error: Option<u32>) -> Vec<u8> {
    let v = version.to_be_bytes();
    let first = v.iter().position(|b| *b != 0).unwrap_or(3);
    // DER's shortest form, with a zero before a high bit.
    let mut int = if v[first] & 0x80 != 0 {
        vec![0]
    } else {
        vec![]
    };
    int.extend_from_slice(&v[first..]);
    let mut body = der(0xa0, &der(0x02, &int));
    if let Some(t) = token {
        body.extend(der(0xa1, &der(0x30, &der(0x30, &der(0xa0, &der(0x04, t))))));
    }
    if let Some(e) = error {
        // As Windows sends an NTSTATUS: four bytes, read as signed.
        body.extend(der(0xa4, &der(0x02, &e.to_be_bytes())));
    }
    der(0x30, &body)
}

fn invalid(why: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, why.to_owned())
}

/// Reads one DER element (a TSRequest) within `timeout` per read.
async fn read_element<R: AsyncRead + Unpin>(
    r: &mut R,
    timeout: Duration,
) -> std::io::Result<Vec<u8>> {
    let mut msg = vec![0u8; 2];
    super::read_exact(r, &mut msg, timeout).await?;
    let total = loop {
        match der::element_len(&msg) {
            der::ElementLen::Known(n) => break n,
            der::ElementLen::NeedMore => {
                let mut b = [0u8; 1];
                super::read_exact(r, &mut b, timeout).await?;
                msg.push(b[0]);
            }
            der::ElementLen::Invalid => return Err(invalid("not a DER message")),
        }
    };
    if msg[0] != 0x30 || total > MAX_PDU {
        return Err(invalid("not a CredSSP message"));
    }
    let have = msg.len();
    msg.resize(total, 0);
    super::read_exact(r, &mut msg[have..], timeout).await?;
    Ok(msg)
}

/// The handler: a certificate for the decoy's address, made once and kept
/// in the decoy directory, as the self-signed one Windows makes for RDP.
pub fn handler(ctx: &Arc<ServiceCtx>) -> Result<super::Handler, super::DecoyError> {
    // TLS 1.2, as Windows Server 2019 speaks it.
    let mut config = (*super::http::tls_config_of(ctx, false)?).clone();
    config.alpn_protocols.clear();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    Ok(Arc::new(move |conn: Conn| {
        Box::pin(serve(conn, acceptor.clone()))
    }))
}

/// A connection request's cookie, for a detail.
fn cookie_note(req: &ConnectionRequest) -> String {
    if req.cookie.is_empty() {
        String::new()
    } else {
        format!("; cookie {:?}", req.cookie)
    }
}

async fn serve(mut conn: Conn, acceptor: tokio_rustls::TlsAcceptor) {
    let peer = conn.peer;
    let ctx = conn.ctx.clone();
    let mut head = [0u8; 4];
    if let Err(e) = conn.read_exact(&mut head).await {
        let detail = match e.kind() {
            std::io::ErrorKind::UnexpectedEof => "connected and closed".to_owned(),
            _ => format!("cut off: {e}"),
        };
        ctx.report(peer, "decoy-connection", None, detail).await;
        return;
    }
    let Some(len) = tpkt_length(&head) else {
        ctx.report(peer, "decoy-connection", None, "not RDP".into())
            .await;
        return;
    };
    let mut tpdu = vec![0u8; len - 4];
    let request = match conn.read_exact(&mut tpdu).await {
        Ok(()) => connection_request(&tpdu),
        Err(_) => None,
    };
    let Some(request) = request else {
        ctx.report(
            peer,
            "decoy-connection",
            None,
            "not an RDP connection request".into(),
        )
        .await;
        return;
    };
    let (negotiated, confirm) = connection_confirm(&request);
    let _ = conn.stream.write_all(&confirm).await;
    let asked = request.requested.map_or_else(
        || "no negotiation (an old client)".to_owned(),
        |p| format!("requested {}", protocols(p)),
    );
    let cookie = cookie_note(&request);
    let Negotiated::Nla(_) = negotiated else {
        let what = match negotiated {
            Negotiated::NlaRequired => "refused: Network Level Authentication required",
            _ => "closed",
        };
        ctx.report(
            peer,
            "decoy-connection",
            None,
            format!("RDP {asked}{cookie}; {what}"),
        )
        .await;
        return;
    };
    let stream =
        match tokio::time::timeout(ctx.limits.read_timeout, acceptor.accept(conn.stream)).await {
            Ok(Ok(s)) => s,
            _ => {
                ctx.report(
                    peer,
                    "decoy-connection",
                    None,
                    format!("RDP negotiation only ({asked}{cookie}); no TLS"),
                )
                .await;
                return;
            }
        };
    let outcome = credssp(stream, &ctx).await;
    let (kind, credential, detail) = match outcome {
        Credssp::Login(c, how) => (
            "decoy-login",
            Some(*c),
            format!("{how}{cookie}; refused (STATUS_LOGON_FAILURE)"),
        ),
        Credssp::Ended(why) => (
            "decoy-connection",
            None,
            format!("RDP over TLS ({asked}{cookie}); {why}"),
        ),
    };
    ctx.report(peer, kind, credential, detail).await;
}

/// How the CredSSP exchange ended.
enum Credssp {
    /// An AUTHENTICATE came, and how it was sent.
    Login(Box<PresentedCredential>, String),
    /// It ended without one, and why.
    Ended(String),
}

async fn credssp<S>(mut stream: S, ctx: &ServiceCtx) -> Credssp
where
    S: AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let timeout = ctx.limits.read_timeout;
    let ended = |e: std::io::Error| {
        Credssp::Ended(match e.kind() {
            std::io::ErrorKind::UnexpectedEof => "closed before authenticating".to_owned(),
            _ => format!("cut off: {e}"),
        })
    };
    let first = match read_element(&mut stream, timeout).await {
        Ok(m) => m,
        Err(e) => return ended(e),
    };
    let Some(req) = ts_request(&first) else {
        return Credssp::Ended("a malformed CredSSP message".into());
    };
    // The version stays the same on both sides for the whole exchange.
    let version = req.version.clamp(2, CREDSSP_VERSION);
    let refuse = |error: u32| ts_request_bytes(version, None, (version >= 3).then_some(error));
    let negotiate = ntlm::find(&req.nego_token);
    let spnego = !req.nego_token.starts_with(b"NTLMSSP\0");
    let Some(flags) = negotiate.and_then(ntlm::negotiate_flags) else {
        let _ = stream.write_all(&refuse(STATUS_LOGON_FAILURE)).await;
        let _ = stream.shutdown().await;
        return Credssp::Ended("CredSSP without an NTLM negotiation (Kerberos?); refused".into());
    };
    let mut server_challenge = [0u8; 8];
    if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut server_challenge)
        .is_err()
    {
        return Credssp::Ended("no randomness for a challenge".into());
    }
    let names = ntlm::Names::new(&ctx.decoy, &ctx.address);
    let challenge = ntlm::challenge(
        flags,
        server_challenge,
        &names,
        super::smb::filetime_now(),
        ntlm::WINDOWS_2019_VERSION,
    );
    let token = if spnego {
        super::smb::neg_token_resp(&challenge)
    } else {
        challenge
    };
    if let Err(e) = stream
        .write_all(&ts_request_bytes(version, Some(&token), None))
        .await
    {
        return ended(e);
    }
    let second = match read_element(&mut stream, timeout).await {
        Ok(m) => m,
        Err(e) => return ended(e),
    };
    let seen = ts_request(&second)
        .and_then(|r| ntlm::find(&r.nego_token).map(<[u8]>::to_vec))
        .and_then(|m| ntlm::authenticate(&m));
    let Some(a) = seen else {
        let _ = stream.write_all(&refuse(STATUS_LOGON_FAILURE)).await;
        return Credssp::Ended("no NTLM authentication followed the challenge".into());
    };
    let c = a.credential(&server_challenge);
    let how = format!(
        "NTLM{} logon over CredSSP (NLA) as {}\\{} from workstation {:?}",
        if a.ntlmv2 { "v2" } else { "v1" },
        a.domain,
        a.user,
        a.workstation
    );
    // Windows answers a bad password at once.
    ctx.refusal_pause(Duration::ZERO).await;
    let _ = stream.write_all(&refuse(STATUS_LOGON_FAILURE)).await;
    let _ = stream.shutdown().await;
    Credssp::Login(Box::new(c), how)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// nmap's TerminalServerCookie probe.
    const NMAP_PROBE: &[u8] =
        b"\x03\0\0*%\xe0\0\0\0\0\0Cookie: mstshash=nmap\r\n\x01\0\x08\0\x03\0\0\0";

    fn request(bytes: &[u8]) -> ConnectionRequest {
        let h: [u8; 4] = bytes[..4].try_into().unwrap();
        assert_eq!(tpkt_length(&h), Some(bytes.len()));
        connection_request(&bytes[4..]).unwrap()
    }

    #[test]
    fn nmap_takes_the_answer_for_windows() {
        let req = request(NMAP_PROBE);
        assert_eq!(req.cookie, "nmap");
        assert_eq!(req.requested, Some(PROTOCOL_SSL | PROTOCOL_HYBRID));
        let (negotiated, cc) = connection_confirm(&req);
        assert_eq!(negotiated, Negotiated::Nla(PROTOCOL_HYBRID));
        // nmap-service-probes: "Microsoft Terminal Services".
        assert_eq!(
            cc,
            b"\x03\0\0\x13\x0e\xd0\0\0\x124\0\x02\x1f\x08\0\x02\0\0\0".to_vec()
        );
        // Its older probe, without a negotiation request.
        let old = request(b"\x03\0\0\x0b\x06\xe0\0\0\0\0\0");
        let (negotiated, cc) = connection_confirm(&old);
        assert_eq!(negotiated, Negotiated::Legacy);
        assert_eq!(cc, b"\x03\0\0\x0b\x06\xd0\0\0\x124\0".to_vec());
    }

    #[test]
    fn a_client_without_nla_is_refused_and_hybrid_ex_is_chosen() {
        let mut only_tls = NMAP_PROBE.to_vec();
        let at = only_tls.len() - 4;
        only_tls[at] = PROTOCOL_SSL as u8;
        let (negotiated, cc) = connection_confirm(&request(&only_tls));
        assert_eq!(negotiated, Negotiated::NlaRequired);
        assert_eq!(&cc[11..], b"\x03\0\x08\0\x05\0\0\0");
        only_tls[at] = 0x0b;
        let (negotiated, _) = connection_confirm(&request(&only_tls));
        assert_eq!(negotiated, Negotiated::Nla(PROTOCOL_HYBRID_EX));
        assert_eq!(
            protocols(0x0b),
            "TLS, CredSSP, CredSSP with early authorization"
        );
        assert_eq!(protocols(0), "standard RDP security");
    }

    #[test]
    fn lying_requests_are_refused() {
        assert_eq!(tpkt_length(&[3, 0, 0, 4]), None);
        assert_eq!(tpkt_length(&[4, 0, 0, 11]), None);
        assert_eq!(tpkt_length(&[3, 0, 0xff, 0xff]), None);
        let tpdu = &NMAP_PROBE[4..];
        let mut wrong_li = tpdu.to_vec();
        wrong_li[0] += 1;
        assert_eq!(connection_request(&wrong_li), None);
        let mut not_cr = tpdu.to_vec();
        not_cr[1] = 0xd0;
        assert_eq!(connection_request(&not_cr), None);
        // A cookie without its end of line.
        let cut = b"\x11\xe0\0\0\0\0\0Cookie: mstsh";
        assert_eq!(connection_request(cut), None);
    }

    #[test]
    fn ts_requests_round_trip() {
        let token = ntlm::tests::authenticate_message("svc_rdp", "HOSPITAL", "WS-7");
        let bytes = ts_request_bytes(6, Some(&token), None);
        let req = ts_request(&bytes).unwrap();
        assert_eq!(req.version, 6);
        assert_eq!(req.nego_token, token);
        assert_eq!(req.error_code, None);
        let refused = ts_request_bytes(6, None, Some(STATUS_LOGON_FAILURE));
        // As Windows sends it: a4 06 02 04 c0 00 00 6d.
        assert!(refused.ends_with(&[0xa4, 6, 2, 4, 0xc0, 0, 0, 0x6d]));
        let req = ts_request(&refused).unwrap();
        assert_eq!(req.error_code, Some(STATUS_LOGON_FAILURE));
        assert!(req.nego_token.is_empty());
        assert_eq!(
            ts_request(&ts_request_bytes(200, None, None))
                .unwrap()
                .version,
            200
        );
        // Without a version, or cut anywhere: refused.
        assert_eq!(ts_request(&der(0x30, &[])), None);
        for cut in 0..bytes.len() {
            assert_eq!(ts_request(&bytes[..cut]), None, "cut at {cut}");
        }
    }
}

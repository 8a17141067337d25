//! An SMB2 file server far enough to capture who logs in ([MS-SMB2]), as
//! Debian 12's Samba 4.17 answers (tests/tests/fidelity.rs compares them):
//! NEGOTIATE (also reached from an SMB1 negotiate that offers SMB2),
//! SESSION_SETUP with SPNEGO/NTLMSSP to the AUTHENTICATE message, whose
//! user, domain and workstation are reported, then STATUS_LOGON_FAILURE.
//! Clients that speak only SMB1 are refused with "no dialect acceptable".
//!
//! [`Session::handle`] is a pure state machine over whole messages, for
//! fuzzing; [`serve`] only moves NetBIOS-framed bytes.

use tokio::io::AsyncWriteExt;

use super::Conn;
use super::der::der;
use super::ntlm;

/// Largest message accepted (NetBIOS length field).
pub const MAX_MESSAGE: usize = 64 << 10;
const MAX_MESSAGES: usize = 32;

const STATUS_SUCCESS: u32 = 0;
const STATUS_MORE_PROCESSING_REQUIRED: u32 = 0xC000_0016;
const STATUS_LOGON_FAILURE: u32 = 0xC000_006D;
const STATUS_ACCESS_DENIED: u32 = 0xC000_0022;
const STATUS_INVALID_PARAMETER: u32 = 0xC000_000D;
const STATUS_NOT_SUPPORTED: u32 = 0xC000_00BB;

const NEGOTIATE: u16 = 0;
const SESSION_SETUP: u16 = 1;
const LOGOFF: u16 = 2;

/// Dialects the server speaks, best first. For 3.1.1 the negotiate
/// contexts are answered (preauthentication integrity, encryption); the
/// preauthentication hash itself is needed only to derive the keys of a
/// session that logs in, and none does.
const DIALECTS: [u16; 5] = [0x0311, 0x0302, 0x0300, 0x0210, 0x0202];
const SMB311: u16 = 0x0311;

/// Negotiate context types ([MS-SMB2] 2.2.3.1).
const PREAUTH_INTEGRITY: u16 = 1;
const ENCRYPTION: u16 = 2;
const SHA512: u16 = 1;
/// Ciphers the server chooses from, best first (AES-128-GCM, AES-128-CCM),
/// as Samba does.
const CIPHERS: [u16; 2] = [2, 1];

/// SPNEGO and NTLMSSP object identifiers, DER-encoded.
const SPNEGO_OID: [u8; 6] = [0x2b, 0x06, 0x01, 0x05, 0x05, 0x02];
const NTLMSSP_OID: [u8; 10] = [0x2b, 0x06, 0x01, 0x04, 0x01, 0x82, 0x37, 0x02, 0x02, 0x0a];

/// What a client did, for the event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// Spoke only SMB1; refused.
    Smb1Only,
    /// Negotiated a dialect.
    Negotiated(u16),
    /// Presented credentials.
    Login(ntlm::Authenticate),
    /// Sent something this server does not answer.
    Refused(String),
}

/// One connection's protocol state.
#[derive(Debug)]
pub struct Session {
    names: ntlm::Names,
    server_guid: [u8; 16],
    challenge: [u8; 8],
    session_id: u64,
    filetime: u64,
    dialect: Option<u16>,
    /// The preauthentication integrity salt of a 3.1.1 NEGOTIATE response.
    salt: [u8; 32],
    /// Set once the connection must end after the reply.
    pub done: bool,
}

/// The SPNEGO NegTokenInit2 offering NTLMSSP, as in a NEGOTIATE response:
/// with the `negHints` Windows sends and Samba copies.
pub fn neg_token_init() -> Vec<u8> {
    let mech = der(0x06, &NTLMSSP_OID);
    let mut fields = der(0xa0, &der(0x30, &mech));
    fields.extend(der(
        0xa3,
        &der(
            0x30,
            &der(0xa0, &der(0x1b, b"not_defined_in_RFC4178@please_ignore")),
        ),
    ));
    let init = der(0xa0, &der(0x30, &fields));
    let mut inner = der(0x06, &SPNEGO_OID);
    inner.extend_from_slice(&init);
    der(0x60, &inner)
}

/// The SPNEGO NegTokenResp carrying an NTLM CHALLENGE.
pub fn neg_token_resp(ntlm: &[u8]) -> Vec<u8> {
    let mut seq = der(0xa0, &der(0x0a, &[1])); // accept-incomplete
    seq.extend(der(0xa1, &der(0x06, &NTLMSSP_OID)));
    seq.extend(der(0xa2, &der(0x04, ntlm)));
    der(0xa1, &der(0x30, &seq))
}

/// Fields of an SMB2 request header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub command: u16,
    pub credit_charge: u16,
    pub credits: u16,
    pub message_id: u64,
    pub process_id: u32,
    pub session_id: u64,
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// Parses an SMB2 header.
pub fn header(msg: &[u8]) -> Option<Header> {
    if msg.get(..4)? != b"\xfeSMB" || u16_at(msg, 4)? != 64 {
        return None;
    }
    Some(Header {
        credit_charge: u16_at(msg, 6)?,
        command: u16_at(msg, 12)?,
        credits: u16_at(msg, 14)?,
        message_id: u64_at(msg, 24)?,
        process_id: u32_at(msg, 32)?,
        session_id: u64_at(msg, 40)?,
    })
}

/// The negotiate contexts of an SMB2 NEGOTIATE request ([MS-SMB2]
/// 2.2.3.1): type and data of each (at most 16), or None if they do not
/// fit in the message.
pub fn negotiate_contexts(msg: &[u8]) -> Option<Vec<(u16, &[u8])>> {
    let body = msg.get(64..)?;
    let mut at = usize::try_from(u32_at(body, 28)?).ok()?;
    let count = usize::from(u16_at(body, 32)?);
    let mut contexts = Vec::new();
    for _ in 0..count.min(16) {
        let kind = u16_at(msg, at)?;
        let len = usize::from(u16_at(msg, at.checked_add(2)?)?);
        let start = at.checked_add(8)?;
        contexts.push((kind, msg.get(start..start.checked_add(len)?)?));
        at = start.checked_add(len)?.checked_next_multiple_of(8)?;
    }
    Some(contexts)
}

/// The dialects of an SMB2 NEGOTIATE request.
pub fn negotiate_dialects(msg: &[u8]) -> Option<Vec<u16>> {
    let body = msg.get(64..)?;
    if u16_at(body, 0)? != 36 {
        return None;
    }
    let count = usize::from(u16_at(body, 2)?);
    (0..count.min(64))
        .map(|i| u16_at(body, 36 + 2 * i))
        .collect()
}

/// The dialect strings of an SMB1 NEGOTIATE request.
pub fn smb1_dialects(msg: &[u8]) -> Option<Vec<String>> {
    if msg.get(..4)? != b"\xffSMB" || *msg.get(4)? != 0x72 {
        return None;
    }
    let words = usize::from(*msg.get(32)?);
    let count_at = 33 + 2 * words;
    let count = usize::from(u16_at(msg, count_at)?);
    let bytes = msg.get(count_at + 2..count_at + 2 + count)?;
    Some(
        bytes
            .split(|b| *b == 0)
            .filter_map(|d| d.strip_prefix(&[0x02]))
            .take(32)
            .map(|d| String::from_utf8_lossy(d).into_owned())
            .collect(),
    )
}

/// The security buffer of a SESSION_SETUP request.
pub fn security_buffer(msg: &[u8]) -> Option<&[u8]> {
    let body = msg.get(64..)?;
    if u16_at(body, 0)? != 25 {
        return None;
    }
    let offset = usize::from(u16_at(body, 12)?);
    let len = usize::from(u16_at(body, 14)?);
    msg.get(offset..offset.checked_add(len)?)
}

impl Session {
    /// A fresh connection; `random` seeds the GUID, challenge, session id
    /// and preauthentication salt.
    pub fn new(names: ntlm::Names, random: [u8; 64], filetime: u64) -> Session {
        let mut server_guid = [0; 16];
        server_guid.copy_from_slice(&random[..16]);
        let mut challenge = [0; 8];
        challenge.copy_from_slice(&random[16..24]);
        let mut id = [0; 8];
        id.copy_from_slice(&random[24..32]);
        let mut salt = [0; 32];
        salt.copy_from_slice(&random[32..]);
        Session {
            names,
            server_guid,
            challenge,
            session_id: u64::from_le_bytes(id) | 1,
            filetime,
            dialect: None,
            salt,
            done: false,
        }
    }

    /// Answers one message; returns the reply (if any) and what was seen.
    pub fn handle(&mut self, msg: &[u8]) -> (Option<Vec<u8>>, Option<Seen>) {
        if let Some(dialects) = smb1_dialects(msg) {
            return self.smb1_negotiate(msg, &dialects);
        }
        let Some(h) = header(msg) else {
            self.done = true;
            return (None, Some(Seen::Refused("not an SMB message".into())));
        };
        match h.command {
            NEGOTIATE => match negotiate_dialects(msg) {
                Some(offered) => match DIALECTS.into_iter().find(|d| offered.contains(d)) {
                    Some(SMB311) => self.negotiate_311(msg, &h),
                    Some(d) => {
                        self.dialect = Some(d);
                        (
                            Some(self.negotiate_response(&h, d, &[])),
                            Some(Seen::Negotiated(d)),
                        )
                    }
                    None => {
                        self.done = true;
                        (
                            Some(self.error(&h, STATUS_NOT_SUPPORTED, 0)),
                            Some(Seen::Refused(format!("dialects {offered:04x?}"))),
                        )
                    }
                },
                None => {
                    self.done = true;
                    (
                        Some(self.error(&h, STATUS_INVALID_PARAMETER, 0)),
                        Some(Seen::Refused("malformed NEGOTIATE".into())),
                    )
                }
            },
            SESSION_SETUP if self.dialect.is_some() => self.session_setup(msg, &h),
            LOGOFF => {
                self.done = true;
                (Some(self.error(&h, STATUS_ACCESS_DENIED, 0)), None)
            }
            other => {
                self.done = true;
                (
                    Some(self.error(&h, STATUS_ACCESS_DENIED, 0)),
                    Some(Seen::Refused(format!("command {other} before logon"))),
                )
            }
        }
    }

    fn smb1_negotiate(
        &mut self,
        msg: &[u8],
        dialects: &[String],
    ) -> (Option<Vec<u8>>, Option<Seen>) {
        let wildcard = dialects.iter().any(|d| d == "SMB 2.???");
        let smb202 = dialects.iter().any(|d| d == "SMB 2.002");
        if wildcard || smb202 {
            let d = if wildcard { 0x02FF } else { 0x0202 };
            let h = Header {
                command: NEGOTIATE,
                credit_charge: 0,
                credits: 1,
                message_id: 0,
                process_id: 0,
                session_id: 0,
            };
            self.dialect = (d == 0x0202).then_some(d);
            return (
                Some(self.negotiate_response(&h, d, &[])),
                Some(Seen::Negotiated(d)),
            );
        }
        // SMB1 response: "none of the offered dialects" (index 0xFFFF).
        let mut out = msg.get(..32).map(<[u8]>::to_vec).unwrap_or_default();
        out.resize(32, 0);
        out[5..9].copy_from_slice(&0u32.to_le_bytes());
        // Flags: reply, case-insensitive paths; flags2: Unicode, NT status,
        // extended security, long names, extended attributes (as Samba).
        out[9] = 0x88;
        out[10..12].copy_from_slice(&0xc013u16.to_le_bytes());
        out.extend_from_slice(&[1, 0xff, 0xff, 0, 0]);
        self.done = true;
        (Some(out), Some(Seen::Smb1Only))
    }

    fn reply_header(&self, h: &Header, status: u32, session_id: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(128);
        out.extend_from_slice(b"\xfeSMB");
        out.extend_from_slice(&64u16.to_le_bytes());
        out.extend_from_slice(&h.credit_charge.to_le_bytes());
        out.extend_from_slice(&status.to_le_bytes());
        out.extend_from_slice(&h.command.to_le_bytes());
        out.extend_from_slice(&h.credits.clamp(1, 64).to_le_bytes());
        out.extend_from_slice(&1u32.to_le_bytes()); // SERVER_TO_REDIR
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&h.message_id.to_le_bytes());
        out.extend_from_slice(&h.process_id.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes()); // tree id
        out.extend_from_slice(&session_id.to_le_bytes());
        out.extend_from_slice(&[0; 16]);
        out
    }

    fn error(&self, h: &Header, status: u32, session_id: u64) -> Vec<u8> {
        let mut out = self.reply_header(h, status, session_id);
        out.extend_from_slice(&9u16.to_le_bytes());
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&0u32.to_le_bytes());
        out.push(0);
        out
    }

    /// Answers a NEGOTIATE that chose 3.1.1: a preauthentication context
    /// with SHA-512 is required ([MS-SMB2] 3.3.5.4), an encryption context
    /// gets the best cipher both sides have.
    fn negotiate_311(&mut self, msg: &[u8], h: &Header) -> (Option<Vec<u8>>, Option<Seen>) {
        let contexts = negotiate_contexts(msg).unwrap_or_default();
        let sha512 = contexts.iter().any(|(kind, data)| {
            *kind == PREAUTH_INTEGRITY
                && u16_at(data, 0).is_some_and(|n| {
                    (0..usize::from(n).min(8)).any(|i| u16_at(data, 4 + 2 * i) == Some(SHA512))
                })
        });
        if !sha512 {
            self.done = true;
            return (
                Some(self.error(h, STATUS_INVALID_PARAMETER, 0)),
                Some(Seen::Refused(
                    "3.1.1 without SHA-512 preauthentication".into(),
                )),
            );
        }
        let mut preauth = Vec::with_capacity(38);
        preauth.extend_from_slice(&1u16.to_le_bytes());
        preauth.extend_from_slice(&32u16.to_le_bytes());
        preauth.extend_from_slice(&SHA512.to_le_bytes());
        preauth.extend_from_slice(&self.salt);
        let mut answers = vec![(PREAUTH_INTEGRITY, preauth)];
        if let Some((_, data)) = contexts.iter().find(|(kind, _)| *kind == ENCRYPTION) {
            let offered: Vec<u16> = (0..usize::from(u16_at(data, 0).unwrap_or(0)).min(8))
                .filter_map(|i| u16_at(data, 2 + 2 * i))
                .collect();
            let chosen = CIPHERS
                .into_iter()
                .find(|c| offered.contains(c))
                .unwrap_or(0);
            let mut enc = 1u16.to_le_bytes().to_vec();
            enc.extend_from_slice(&chosen.to_le_bytes());
            answers.push((ENCRYPTION, enc));
        }
        self.dialect = Some(SMB311);
        (
            Some(self.negotiate_response(h, SMB311, &answers)),
            Some(Seen::Negotiated(SMB311)),
        )
    }

    /// A NEGOTIATE response as Samba 4.17 gives it: capabilities and
    /// sizes by dialect, and for 3.1.1 the negotiate contexts after the
    /// security buffer.
    fn negotiate_response(&self, h: &Header, dialect: u16, contexts: &[(u16, Vec<u8>)]) -> Vec<u8> {
        let token = neg_token_init();
        let mut out = self.reply_header(h, STATUS_SUCCESS, 0);
        out.extend_from_slice(&65u16.to_le_bytes());
        out.extend_from_slice(&1u16.to_le_bytes()); // signing enabled
        out.extend_from_slice(&dialect.to_le_bytes());
        out.extend_from_slice(&(contexts.len() as u16).to_le_bytes());
        out.extend_from_slice(&self.server_guid);
        // DFS; from 2.1 leasing and large MTU; from 3.0 also multichannel
        // and encryption, which 3.1.1 leaves to its context when the
        // client sent one.
        let caps: u32 = match dialect {
            0x0202 => 0x01,
            0x0210 | 0x02FF => 0x07,
            SMB311 if contexts.iter().any(|(kind, _)| *kind == ENCRYPTION) => 0x0f,
            _ => 0x4f,
        };
        out.extend_from_slice(&caps.to_le_bytes());
        let max: u32 = if dialect == 0x0202 { 65_536 } else { 8_388_608 };
        for _ in 0..3 {
            out.extend_from_slice(&max.to_le_bytes());
        }
        out.extend_from_slice(&self.filetime.to_le_bytes());
        out.extend_from_slice(&0u64.to_le_bytes());
        out.extend_from_slice(&128u16.to_le_bytes());
        out.extend_from_slice(&(token.len() as u16).to_le_bytes());
        let contexts_at = (128 + token.len()).next_multiple_of(8);
        let offset = if contexts.is_empty() { 0 } else { contexts_at };
        out.extend_from_slice(&(offset as u32).to_le_bytes());
        out.extend_from_slice(&token);
        for (i, (kind, data)) in contexts.iter().enumerate() {
            if i == 0 {
                out.resize(contexts_at, 0);
            } else {
                out.resize(out.len().next_multiple_of(8), 0);
            }
            out.extend_from_slice(&kind.to_le_bytes());
            out.extend_from_slice(&(data.len() as u16).to_le_bytes());
            out.extend_from_slice(&0u32.to_le_bytes());
            out.extend_from_slice(data);
        }
        out
    }

    fn session_setup(&mut self, msg: &[u8], h: &Header) -> (Option<Vec<u8>>, Option<Seen>) {
        let Some(ntlm_msg) = security_buffer(msg).and_then(ntlm::find) else {
            self.done = true;
            return (
                Some(self.error(h, STATUS_LOGON_FAILURE, 0)),
                Some(Seen::Refused("SESSION_SETUP without NTLMSSP".into())),
            );
        };
        match ntlm::message_type(ntlm_msg) {
            Some(1) => {
                let flags = ntlm::negotiate_flags(ntlm_msg).unwrap_or(0);
                let challenge = ntlm::challenge(
                    flags,
                    self.challenge,
                    &self.names,
                    self.filetime,
                    ntlm::SAMBA_VERSION,
                );
                let token = neg_token_resp(&challenge);
                let mut out =
                    self.reply_header(h, STATUS_MORE_PROCESSING_REQUIRED, self.session_id);
                out.extend_from_slice(&9u16.to_le_bytes());
                out.extend_from_slice(&0u16.to_le_bytes());
                out.extend_from_slice(&72u16.to_le_bytes());
                out.extend_from_slice(&(token.len() as u16).to_le_bytes());
                out.extend_from_slice(&token);
                (Some(out), None)
            }
            Some(3) => {
                let seen = match ntlm::authenticate(ntlm_msg) {
                    Some(a) => Seen::Login(a),
                    None => Seen::Refused("malformed NTLM AUTHENTICATE".into()),
                };
                // A client may retry (for example anonymously); let it.
                (Some(self.error(h, STATUS_LOGON_FAILURE, 0)), Some(seen))
            }
            other => {
                self.done = true;
                (
                    Some(self.error(h, STATUS_LOGON_FAILURE, 0)),
                    Some(Seen::Refused(format!("NTLM message type {other:?}"))),
                )
            }
        }
    }
}

/// Reads one NetBIOS session message; `Ok(None)` at a clean end of stream.
async fn read_message(conn: &mut Conn) -> std::io::Result<Option<Vec<u8>>> {
    let mut header = [0u8; 4];
    match conn.read_exact(&mut header[..1]).await {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    conn.read_exact(&mut header[1..]).await?;
    if header[0] != 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("NetBIOS message type 0x{:02x}", header[0]),
        ));
    }
    let len = usize::from(header[1]) << 16 | usize::from(header[2]) << 8 | usize::from(header[3]);
    if len > MAX_MESSAGE {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("message of {len} bytes"),
        ));
    }
    let mut msg = vec![0u8; len];
    conn.read_exact(&mut msg).await?;
    Ok(Some(msg))
}

pub(super) fn filetime_now() -> u64 {
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    (unix.as_secs() + 11_644_473_600) * 10_000_000 + u64::from(unix.subsec_nanos() / 100)
}

/// Serves one connection.
pub async fn serve(mut conn: Conn) {
    let ctx = conn.ctx.clone();
    let peer = conn.peer;
    let mut random = [0u8; 64];
    if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut random).is_err() {
        return;
    }
    let mut session = Session::new(
        ntlm::Names::new(&ctx.decoy, &ctx.address),
        random,
        filetime_now(),
    );
    let mut logged_in = false;
    for _ in 0..MAX_MESSAGES {
        let msg = match read_message(&mut conn).await {
            Ok(Some(m)) => m,
            Ok(None) => break,
            Err(e) => {
                ctx.report(peer, "decoy-connection", None, format!("cut off: {e}"))
                    .await;
                return;
            }
        };
        let (reply, seen) = session.handle(&msg);
        match seen {
            Some(Seen::Login(a)) => {
                logged_in = true;
                let c = a.credential(&session.challenge);
                let what = if a.anonymous {
                    "anonymous NTLM logon".to_owned()
                } else {
                    format!("NTLM{} logon", if a.ntlmv2 { "v2" } else { "v1" })
                };
                ctx.report(
                    peer,
                    "decoy-login",
                    Some(c),
                    format!(
                        "{what} as {}\\{} from workstation {:?}; refused",
                        a.domain, a.user, a.workstation
                    ),
                )
                .await;
            }
            Some(Seen::Smb1Only) => {
                ctx.report(
                    peer,
                    "decoy-connection",
                    None,
                    "SMB1-only client refused".into(),
                )
                .await
            }
            Some(Seen::Refused(why)) => {
                ctx.report(peer, "decoy-message", None, format!("refused: {why}"))
                    .await
            }
            Some(Seen::Negotiated(_)) | None => {}
        }
        if let Some(reply) = reply {
            let len = reply.len() as u32;
            let mut framed = Vec::with_capacity(reply.len() + 4);
            framed.extend_from_slice(&len.to_be_bytes());
            framed.extend_from_slice(&reply);
            if conn.stream.write_all(&framed).await.is_err() {
                break;
            }
        }
        if session.done {
            break;
        }
    }
    if !logged_in {
        ctx.report(
            peer,
            "decoy-connection",
            None,
            "connected without logging in".into(),
        )
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(command: u16, message_id: u64, body: &[u8]) -> Vec<u8> {
        let mut out = b"\xfeSMB".to_vec();
        out.extend_from_slice(&64u16.to_le_bytes());
        out.extend_from_slice(&[0; 6]);
        out.extend_from_slice(&command.to_le_bytes());
        out.extend_from_slice(&1u16.to_le_bytes());
        out.extend_from_slice(&[0; 8]);
        out.extend_from_slice(&message_id.to_le_bytes());
        out.extend_from_slice(&[0; 32]);
        out.extend_from_slice(body);
        out
    }

    fn negotiate(dialects: &[u16]) -> Vec<u8> {
        let mut body = 36u16.to_le_bytes().to_vec();
        body.extend_from_slice(&(dialects.len() as u16).to_le_bytes());
        body.extend_from_slice(&[0; 32]);
        for d in dialects {
            body.extend_from_slice(&d.to_le_bytes());
        }
        request(NEGOTIATE, 0, &body)
    }

    /// A NEGOTIATE offering 2.0.2 to 3.1.1 with a preauthentication
    /// context (when `preauth`) and an encryption context offering
    /// `ciphers`.
    fn negotiate_311(preauth: bool, ciphers: &[u16]) -> Vec<u8> {
        let dialects = [0x0202u16, 0x0210, 0x0300, 0x0302, 0x0311];
        let mut contexts: Vec<(u16, Vec<u8>)> = Vec::new();
        if preauth {
            let mut d = vec![1, 0, 32, 0, 1, 0];
            d.extend_from_slice(&[9; 32]);
            contexts.push((PREAUTH_INTEGRITY, d));
        }
        let mut d = (ciphers.len() as u16).to_le_bytes().to_vec();
        for c in ciphers {
            d.extend_from_slice(&c.to_le_bytes());
        }
        contexts.push((ENCRYPTION, d));
        let fixed = 64 + 36 + 2 * dialects.len();
        let at = fixed.next_multiple_of(8);
        let mut body = 36u16.to_le_bytes().to_vec();
        body.extend_from_slice(&(dialects.len() as u16).to_le_bytes());
        body.extend_from_slice(&[0; 24]);
        body.extend_from_slice(&(at as u32).to_le_bytes());
        body.extend_from_slice(&(contexts.len() as u16).to_le_bytes());
        body.extend_from_slice(&[0; 2]);
        for d in dialects {
            body.extend_from_slice(&d.to_le_bytes());
        }
        let mut msg = request(NEGOTIATE, 0, &body);
        for (kind, data) in contexts {
            msg.resize(msg.len().next_multiple_of(8), 0);
            msg.extend_from_slice(&kind.to_le_bytes());
            msg.extend_from_slice(&(data.len() as u16).to_le_bytes());
            msg.extend_from_slice(&[0; 4]);
            msg.extend_from_slice(&data);
        }
        msg
    }

    #[test]
    fn smb_311_answers_its_negotiate_contexts() {
        let mut s = session();
        let (reply, seen) = s.handle(&negotiate_311(true, &[1, 2]));
        assert_eq!(seen, Some(Seen::Negotiated(0x0311)));
        let reply = reply.unwrap();
        assert_eq!(u16_at(&reply, 64 + 4), Some(0x0311));
        let contexts = {
            // The response's count and offset sit where the request's do
            // not: count at body+6, offset at body+60.
            let count = usize::from(u16_at(&reply, 64 + 6).unwrap());
            let mut at = u32_at(&reply, 64 + 60).unwrap() as usize;
            let mut out = Vec::new();
            for _ in 0..count {
                let kind = u16_at(&reply, at).unwrap();
                let len = usize::from(u16_at(&reply, at + 2).unwrap());
                out.push((kind, reply[at + 8..at + 8 + len].to_vec()));
                at = (at + 8 + len).next_multiple_of(8);
            }
            out
        };
        assert_eq!(contexts.len(), 2);
        assert_eq!(contexts[0].0, PREAUTH_INTEGRITY);
        assert_eq!(&contexts[0].1[..6], &[1, 0, 32, 0, 1, 0]);
        assert_eq!(&contexts[0].1[6..], &[7; 32]);
        // AES-128-GCM is preferred to CCM whatever the client's order.
        assert_eq!(contexts[1], (ENCRYPTION, vec![1, 0, 2, 0]));
        // 3.1.1 without the required preauthentication context.
        let mut s = session();
        let (reply, _) = s.handle(&negotiate_311(false, &[2]));
        assert_eq!(status(&reply.unwrap()), STATUS_INVALID_PARAMETER);
        assert!(s.done);
    }

    fn session_setup(blob: &[u8]) -> Vec<u8> {
        let mut body = 25u16.to_le_bytes().to_vec();
        body.extend_from_slice(&[0; 10]);
        body.extend_from_slice(&88u16.to_le_bytes());
        body.extend_from_slice(&(blob.len() as u16).to_le_bytes());
        body.extend_from_slice(&[0; 8]);
        body.extend_from_slice(blob);
        request(SESSION_SETUP, 2, &body)
    }

    fn status(reply: &[u8]) -> u32 {
        u32_at(reply, 8).unwrap()
    }

    fn session() -> Session {
        Session::new(ntlm::Names::new("files01", "127.0.0.1"), [7; 64], 0)
    }

    #[test]
    fn full_logon_is_captured_and_refused() {
        let mut s = session();
        let (reply, seen) = s.handle(&negotiate(&[0x0202, 0x0210, 0x0300, 0x0302]));
        assert_eq!(seen, Some(Seen::Negotiated(0x0302)));
        let reply = reply.unwrap();
        assert_eq!(status(&reply), STATUS_SUCCESS);
        assert_eq!(u16_at(&reply, 64 + 4), Some(0x0302));
        let mut neg = b"NTLMSSP\0".to_vec();
        neg.extend_from_slice(&1u32.to_le_bytes());
        neg.extend_from_slice(&0xe208_8297u32.to_le_bytes());
        let (reply, _) = s.handle(&session_setup(&neg));
        let reply = reply.unwrap();
        assert_eq!(status(&reply), STATUS_MORE_PROCESSING_REQUIRED);
        let challenge = ntlm::find(&reply).unwrap();
        assert_eq!(ntlm::message_type(challenge), Some(2));
        let auth = ntlm::tests::authenticate_message("svc_pacs", "RADIOLOGY", "WS1");
        let (reply, seen) = s.handle(&session_setup(&auth));
        assert_eq!(status(&reply.unwrap()), STATUS_LOGON_FAILURE);
        let Some(Seen::Login(a)) = seen else {
            panic!("no login seen")
        };
        assert_eq!(a.user, "svc_pacs");
    }

    #[test]
    fn smb1_only_is_refused_and_smb1_with_smb2_switches() {
        let smb1 = |dialects: &[&str]| {
            let mut msg = b"\xffSMB\x72".to_vec();
            msg.resize(32, 0);
            msg.push(0);
            let bytes: Vec<u8> = dialects
                .iter()
                .flat_map(|d| [&[2u8][..], d.as_bytes(), &[0]].concat())
                .collect();
            msg.extend_from_slice(&(bytes.len() as u16).to_le_bytes());
            msg.extend_from_slice(&bytes);
            msg
        };
        let mut s = session();
        let (reply, seen) = s.handle(&smb1(&["PC NETWORK PROGRAM 1.0", "NT LM 0.12"]));
        assert_eq!(seen, Some(Seen::Smb1Only));
        assert!(s.done);
        assert_eq!(&reply.unwrap()[33..35], &[0xff, 0xff]);
        let mut s = session();
        let (reply, seen) = s.handle(&smb1(&["NT LM 0.12", "SMB 2.002", "SMB 2.???"]));
        assert_eq!(seen, Some(Seen::Negotiated(0x02FF)));
        assert_eq!(u16_at(&reply.unwrap(), 64 + 4), Some(0x02FF));
    }

    #[test]
    fn garbage_ends_the_connection() {
        let mut s = session();
        let (reply, _) = s.handle(b"GET / HTTP/1.1\r\n\r\n");
        assert!(reply.is_none());
        assert!(s.done);
        // A session setup before negotiate is refused, not answered.
        let mut s = session();
        let (_, seen) = s.handle(&session_setup(b"NTLMSSP\0"));
        assert!(matches!(seen, Some(Seen::Refused(_))));
    }
}

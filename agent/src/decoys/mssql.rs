//! A Microsoft SQL Server that never lets anyone in: the TDS pre-login
//! exchange (SQL Server 2019's version, encryption not offered), the
//! client's LOGIN7 with its user, host, application, database and password
//! (TDS hides the password by swapping the nibbles of each byte and XORing
//! it with 0xA5, which undoes), and error 18456 `Login failed for user`,
//! as SQL Server answers a wrong password.
//!
//! Not yet: the TLS that wraps a login when the client insists on
//! encryption (such a client is told encryption is not supported and
//! gives up; the connection is reported).

use ruse_proto::convert::PresentedCredential;

use tokio::io::AsyncWriteExt;

use super::{Conn, credential};

/// TDS packet types.
const PRELOGIN: u8 = 0x12;
const LOGIN7: u8 = 0x10;
const TABULAR: u8 = 0x04;
/// The largest TDS packet read (a login is well under 4 KiB).
pub const MAX_PACKET: usize = 16 * 1024;
/// The version the decoy claims: SQL Server 2019 CU24 (15.0.4345), a
/// common one in hospitals (`nmap -sV` names it).
const VERSION: [u8; 6] = [15, 0, 0x10, 0xf9, 0, 0];
/// ENCRYPTION: encryption not available.
const ENCRYPT_NOT_SUP: u8 = 0x02;

/// A TDS packet header: its type, whether it ends the message, and its
/// length (header included). Pure, for fuzzing.
pub fn header(h: &[u8; 8]) -> Option<(u8, bool, usize)> {
    let len = usize::from(u16::from_be_bytes([h[2], h[3]]));
    (8..=MAX_PACKET)
        .contains(&len)
        .then_some((h[0], h[1] & 0x01 != 0, len))
}

/// The options of a PRELOGIN message: token, then its data. Pure, for
/// fuzzing.
pub fn prelogin_options(body: &[u8]) -> Option<Vec<(u8, &[u8])>> {
    let mut out = Vec::new();
    let mut at = 0;
    loop {
        let token = *body.get(at)?;
        if token == 0xff {
            return Some(out);
        }
        let entry = body.get(at + 1..at + 5)?;
        let offset = usize::from(u16::from_be_bytes([entry[0], entry[1]]));
        let len = usize::from(u16::from_be_bytes([entry[2], entry[3]]));
        out.push((token, body.get(offset..offset.checked_add(len)?)?));
        at += 5;
        if out.len() > 16 {
            return None;
        }
    }
}

/// The server's PRELOGIN answer (packet body): VERSION, ENCRYPTION,
/// INSTOPT and THREADID, and MARS when the client asked about it, as SQL
/// Server answers (the options the client sent, in order).
fn prelogin_answer(mars: bool) -> Vec<u8> {
    let all: [(u8, &[u8]); 5] = [
        (0, &VERSION),
        (1, &[ENCRYPT_NOT_SUP]),
        (2, &[0]),
        (3, &[]),
        (4, &[0]),
    ];
    let options = &all[..if mars { 5 } else { 4 }];
    let mut table = Vec::new();
    let mut data = Vec::new();
    let start = options.len() * 5 + 1;
    for &(token, value) in options {
        table.push(token);
        table.extend_from_slice(&u16::try_from(start + data.len()).unwrap_or(0).to_be_bytes());
        table.extend_from_slice(&u16::try_from(value.len()).unwrap_or(0).to_be_bytes());
        data.extend_from_slice(value);
    }
    table.push(0xff);
    table.extend_from_slice(&data);
    table
}

/// What a LOGIN7 message said.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Login {
    pub host: String,
    pub user: String,
    pub password: String,
    pub application: String,
    pub server: String,
    pub library: String,
    pub database: String,
    /// The client used integrated (SSPI) authentication instead.
    pub sspi: bool,
}

/// TDS's password hiding undone: XOR 0xA5, then swap the nibbles.
pub fn reveal(byte: u8) -> u8 {
    let b = byte ^ 0xa5;
    b.rotate_left(4)
}

/// A UTF-16LE string of `chars` characters at `offset` of `body`.
fn utf16(body: &[u8], offset: usize, chars: usize, password: bool) -> Option<String> {
    let bytes = body.get(offset..offset.checked_add(chars.checked_mul(2)?)?)?;
    let units: Vec<u16> = bytes
        .chunks_exact(2)
        .map(|c| {
            if password {
                u16::from_le_bytes([reveal(c[0]), reveal(c[1])])
            } else {
                u16::from_le_bytes([c[0], c[1]])
            }
        })
        .collect();
    Some(String::from_utf16_lossy(&units).chars().take(256).collect())
}

/// Parses a LOGIN7 message body. Pure, for fuzzing.
pub fn parse_login(body: &[u8]) -> Option<Login> {
    if body.len() < 94 {
        return None;
    }
    let field = |at: usize, password: bool| -> Option<String> {
        let offset = usize::from(u16::from_le_bytes([body[at], body[at + 1]]));
        let chars = usize::from(u16::from_le_bytes([body[at + 2], body[at + 3]]));
        if chars == 0 {
            return Some(String::new());
        }
        utf16(body, offset, chars.min(1024), password)
    };
    let sspi_len = u16::from_le_bytes([body[80], body[81]]);
    Some(Login {
        host: field(36, false)?,
        user: field(40, false)?,
        password: field(44, true)?,
        application: field(48, false)?,
        server: field(52, false)?,
        library: field(60, false)?,
        database: field(68, false)?,
        sspi: sspi_len > 0,
    })
}

/// A TDS string with a 2-byte (`wide`) or 1-byte length in characters.
fn tds_string(out: &mut Vec<u8>, s: &str, wide: bool) {
    let units: Vec<u16> = s.encode_utf16().take(255).collect();
    if wide {
        out.extend_from_slice(&u16::try_from(units.len()).unwrap_or(0).to_le_bytes());
    } else {
        out.push(u8::try_from(units.len()).unwrap_or(0));
    }
    for u in units {
        out.extend_from_slice(&u.to_le_bytes());
    }
}

/// The tabular answer to a refused login: an ERROR token (18456, state 1,
/// class 14) and a DONE token with its error bit, as SQL Server sends.
pub fn login_failed(user: &str, server: &str) -> Vec<u8> {
    let mut error = Vec::new();
    error.extend_from_slice(&18456u32.to_le_bytes());
    error.push(1);
    error.push(14);
    tds_string(
        &mut error,
        &format!("Login failed for user '{user}'."),
        true,
    );
    tds_string(&mut error, server, false);
    tds_string(&mut error, "", false);
    error.extend_from_slice(&1u32.to_le_bytes());
    let mut out = vec![0xaa];
    out.extend_from_slice(&u16::try_from(error.len()).unwrap_or(0).to_le_bytes());
    out.extend_from_slice(&error);
    // DONE: DONE_ERROR, no command, no rows.
    out.push(0xfd);
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&0u64.to_le_bytes());
    out
}

/// One message (its packets joined): type and body.
async fn read_message(conn: &mut Conn) -> std::io::Result<(u8, Vec<u8>)> {
    let mut body = Vec::new();
    for _ in 0..8 {
        let mut h = [0u8; 8];
        conn.read_exact(&mut h).await?;
        let (kind, last, len) = header(&h).ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidData, "not a TDS packet")
        })?;
        let mut part = vec![0u8; len - 8];
        conn.read_exact(&mut part).await?;
        body.extend_from_slice(&part);
        if last {
            return Ok((kind, body));
        }
        if body.len() > MAX_PACKET {
            break;
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        "message too long",
    ))
}

async fn write_message(conn: &mut Conn, body: &[u8]) -> std::io::Result<()> {
    let len = u16::try_from(body.len() + 8).unwrap_or(u16::MAX);
    let mut packet = vec![TABULAR, 0x01];
    packet.extend_from_slice(&len.to_be_bytes());
    packet.extend_from_slice(&[0, 0, 1, 0]);
    packet.extend_from_slice(body);
    conn.stream.write_all(&packet).await
}

pub async fn serve(mut conn: Conn) {
    let peer = conn.peer;
    let ctx = conn.ctx.clone();
    let mut asked_encryption = false;
    for _ in 0..4 {
        let (kind, body) = match read_message(&mut conn).await {
            Ok(m) => m,
            Err(e) => {
                let detail = match e.kind() {
                    std::io::ErrorKind::UnexpectedEof if asked_encryption => {
                        "wanted encryption".to_owned()
                    }
                    std::io::ErrorKind::UnexpectedEof => "connected and closed".to_owned(),
                    _ => format!("cut off: {e}"),
                };
                ctx.report(peer, "decoy-connection", None, detail).await;
                return;
            }
        };
        match kind {
            PRELOGIN => {
                let options = prelogin_options(&body).unwrap_or_default();
                asked_encryption = options
                    .iter()
                    .find(|(t, _)| *t == 1)
                    .is_some_and(|(_, v)| matches!(v.first(), Some(1 | 3)));
                let mars = options.iter().any(|(t, _)| *t == 4);
                if write_message(&mut conn, &prelogin_answer(mars))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            LOGIN7 => {
                let Some(login) = parse_login(&body) else {
                    ctx.report(peer, "decoy-connection", None, "a malformed login".into())
                        .await;
                    return;
                };
                let detail = [
                    (!login.database.is_empty()).then(|| format!("database {}", login.database)),
                    login.sspi.then(|| "integrated authentication".to_owned()),
                ]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join("; ");
                ctx.report(
                    peer,
                    "decoy-login",
                    Some(PresentedCredential {
                        username: login.user.clone(),
                        password: login.password.clone(),
                        workstation: login.host.clone(),
                        client: [login.application.as_str(), login.library.as_str()]
                            .iter()
                            .filter(|s| !s.is_empty())
                            .copied()
                            .collect::<Vec<_>>()
                            .join("; "),
                        ..credential()
                    }),
                    detail,
                )
                .await;
                ctx.refusal_pause(std::time::Duration::ZERO).await;
                let server = ctx.decoy.to_uppercase();
                let _ = write_message(&mut conn, &login_failed(&login.user, &server)).await;
                return;
            }
            _ => {
                ctx.report(peer, "decoy-connection", None, "not a TDS login".into())
                    .await;
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A LOGIN7 body as FreeTDS builds one.
    fn login7(host: &str, user: &str, password: &str, app: &str, db: &str) -> Vec<u8> {
        let hide = |s: &str| -> Vec<u8> {
            s.encode_utf16()
                .flat_map(u16::to_le_bytes)
                .map(|b| b.rotate_left(4) ^ 0xa5)
                .collect()
        };
        let plain = |s: &str| -> Vec<u8> { s.encode_utf16().flat_map(u16::to_le_bytes).collect() };
        let mut fixed = vec![0u8; 94];
        let mut data = Vec::new();
        let mut put = |at: usize, bytes: Vec<u8>, chars: usize, fixed: &mut Vec<u8>| {
            let offset = (94 + data.len()) as u16;
            fixed[at..at + 2].copy_from_slice(&offset.to_le_bytes());
            fixed[at + 2..at + 4].copy_from_slice(&(chars as u16).to_le_bytes());
            data.extend_from_slice(&bytes);
        };
        let n = |s: &str| s.encode_utf16().count();
        put(36, plain(host), n(host), &mut fixed);
        put(40, plain(user), n(user), &mut fixed);
        put(44, hide(password), n(password), &mut fixed);
        put(48, plain(app), n(app), &mut fixed);
        put(52, plain("EHRDB01"), 7, &mut fixed);
        put(60, plain("DB-Library"), 10, &mut fixed);
        put(68, plain(db), n(db), &mut fixed);
        [fixed, data].concat()
    }

    #[test]
    fn a_login_is_read_and_its_password_revealed() {
        let l = parse_login(&login7("ws-12", "ehr_svc", "Wínter2026!x", "TSQL", "ehr")).unwrap();
        assert_eq!(l.host, "ws-12");
        assert_eq!(l.user, "ehr_svc");
        assert_eq!(l.password, "Wínter2026!x");
        assert_eq!(l.application, "TSQL");
        assert_eq!(l.library, "DB-Library");
        assert_eq!(l.database, "ehr");
        assert!(!l.sspi);
        // Fields past the end are refused, not read.
        let mut bad = login7("h", "u", "p", "a", "d");
        bad[40] = 0xff;
        bad[41] = 0xff;
        assert_eq!(parse_login(&bad), None);
        assert_eq!(parse_login(&[0; 20]), None);
    }

    #[test]
    fn prelogin_options_are_read_and_answered() {
        let answer = prelogin_answer(false);
        let options = prelogin_options(&answer).unwrap();
        assert_eq!(options[0], (0, &VERSION[..]));
        assert_eq!(options[1], (1, &[ENCRYPT_NOT_SUP][..]));
        assert_eq!(options.len(), 4);
        // The shape nmap knows SQL Server by: VERSION at 0x15.
        assert_eq!(&answer[..5], &[0, 0, 0x15, 0, 6]);
        assert_eq!(prelogin_options(&prelogin_answer(true)).unwrap().len(), 5);
        assert_eq!(prelogin_options(&[0, 0, 200, 0, 6, 0xff]), None);
        assert_eq!(prelogin_options(&[]), None);
    }

    #[test]
    fn the_refusal_is_error_18456_then_done() {
        let r = login_failed("sa", "EHRDB01");
        assert_eq!(r[0], 0xaa);
        assert_eq!(u32::from_le_bytes([r[3], r[4], r[5], r[6]]), 18456);
        assert_eq!(&r[r.len() - 13..r.len() - 10], &[0xfd, 2, 0]);
        assert_eq!(header(&[4, 1, 0, 8, 0, 0, 1, 0]), Some((4, true, 8)));
        assert_eq!(header(&[4, 1, 0, 4, 0, 0, 1, 0]), None);
    }
}

//! A Microsoft SQL Server that never lets anyone in: the TDS pre-login
//! exchange (SQL Server 2019's version), TLS as SQL Server does it — the
//! handshake carried in PRELOGIN packets, then the login inside TLS and,
//! when the client asked for encryption, everything after it too — the
//! client's LOGIN7 with its user, host, application, database and password
//! (TDS hides the password by swapping the nibbles of each byte and XORing
//! it with 0xA5, which undoes), and error 18456 `Login failed for user`,
//! as SQL Server answers a wrong password.

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
/// ENCRYPTION values: the login only, everything, not available, required.
const ENCRYPT_OFF: u8 = 0x00;
const ENCRYPT_ON: u8 = 0x01;
const ENCRYPT_NOT_SUP: u8 = 0x02;
const ENCRYPT_REQ: u8 = 0x03;
/// The most TLS bytes one PRELOGIN packet of the handshake carries (TDS's
/// default packet size, 4,096, less the header).
const TLS_CHUNK: usize = 4096 - 8;

/// What the server answers a client's ENCRYPTION option with, as SQL
/// Server with a certificate does: encryption of the login only for a
/// client that offers it, of everything for one that wants it, none for
/// one that cannot.
pub fn encryption_answer(client: Option<u8>) -> u8 {
    match client {
        Some(ENCRYPT_OFF) => ENCRYPT_OFF,
        Some(ENCRYPT_ON | ENCRYPT_REQ) => ENCRYPT_ON,
        _ => ENCRYPT_NOT_SUP,
    }
}

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
fn prelogin_answer(encryption: u8, mars: bool) -> Vec<u8> {
    let all: [(u8, &[u8]); 5] = [
        (0, &VERSION),
        (1, &[encryption]),
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

/// `body` as TDS packets of `kind` (at most [`TLS_CHUNK`] bytes each, the
/// last marked as the end of the message).
fn packets(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 16);
    let chunks: Vec<&[u8]> = if body.is_empty() {
        vec![&[]]
    } else {
        body.chunks(TLS_CHUNK).collect()
    };
    let last = chunks.len() - 1;
    for (i, chunk) in chunks.into_iter().enumerate() {
        let len = u16::try_from(chunk.len() + 8).unwrap_or(u16::MAX);
        out.extend_from_slice(&[kind, u8::from(i == last)]);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&[0, 0, u8::try_from(i + 1).unwrap_or(0), 0]);
        out.extend_from_slice(chunk);
    }
    out
}

async fn write_message(conn: &mut Conn, body: &[u8]) -> std::io::Result<()> {
    conn.stream.write_all(&packets(TABULAR, body)).await
}

fn invalid(why: impl Into<String>) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, why.into())
}

/// Writes what TLS has to send: raw on the stream, or (during the
/// handshake) inside PRELOGIN packets.
async fn flush_tls(
    conn: &mut Conn,
    tls: &mut rustls::ServerConnection,
    in_prelogin: bool,
) -> std::io::Result<()> {
    let mut out = Vec::new();
    while tls.wants_write() {
        tls.write_tls(&mut out)?;
    }
    if out.is_empty() {
        return Ok(());
    }
    if in_prelogin {
        out = packets(PRELOGIN, &out);
    }
    conn.stream.write_all(&out).await
}

/// Feeds `bytes` to TLS.
fn feed(tls: &mut rustls::ServerConnection, mut bytes: &[u8]) -> std::io::Result<()> {
    while !bytes.is_empty() {
        tls.read_tls(&mut bytes)?;
        tls.process_new_packets()
            .map_err(|e| invalid(e.to_string()))?;
    }
    Ok(())
}

/// Reads what is there (at most 4 KiB) within the read timeout.
async fn read_some(conn: &mut Conn, buf: &mut [u8]) -> std::io::Result<usize> {
    use tokio::io::AsyncReadExt;
    match tokio::time::timeout(conn.ctx.limits.read_timeout, conn.stream.read(buf)).await {
        Ok(Ok(0)) => Err(std::io::ErrorKind::UnexpectedEof.into()),
        Ok(r) => r,
        Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
    }
}

/// The TLS handshake SQL Server runs inside PRELOGIN messages. A client
/// may send the end of its side (FreeTDS's TLS 1.3 Finished) as bare TLS
/// records instead: a TLS record type where a TDS packet type should be
/// is taken as such.
async fn handshake(conn: &mut Conn, tls: &mut rustls::ServerConnection) -> std::io::Result<()> {
    for _ in 0..32 {
        if !tls.is_handshaking() {
            return Ok(());
        }
        let mut first = [0u8; 1];
        conn.read_exact(&mut first).await?;
        if first[0] == PRELOGIN {
            let mut rest = [0u8; 7];
            conn.read_exact(&mut rest).await?;
            let mut h = [0u8; 8];
            h[0] = first[0];
            h[1..].copy_from_slice(&rest);
            let (_, _, len) = header(&h).ok_or_else(|| invalid("not a TDS packet"))?;
            let mut payload = vec![0u8; len - 8];
            conn.read_exact(&mut payload).await?;
            feed(tls, &payload)?;
        } else if (20..=23).contains(&first[0]) {
            let mut buf = [0u8; 4096];
            let n = read_some(conn, &mut buf).await?;
            feed(tls, &[&first[..], &buf[..n]].concat())?;
        } else {
            return Err(invalid("neither TDS nor TLS"));
        }
        flush_tls(conn, tls, true).await?;
    }
    Err(invalid("the TLS handshake did not finish"))
}

/// One TDS message read from inside TLS (bare TLS records on the stream).
async fn read_message_tls(
    conn: &mut Conn,
    tls: &mut rustls::ServerConnection,
) -> std::io::Result<(u8, Vec<u8>)> {
    use std::io::Read;
    let mut plain = Vec::new();
    let mut body = Vec::new();
    loop {
        // What TLS already decrypted (the handshake may have brought it).
        let mut chunk = [0u8; 4096];
        loop {
            match tls.reader().read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => {
                    plain.extend_from_slice(&chunk[..n]);
                    if plain.len() > 2 * MAX_PACKET {
                        return Err(invalid("message too long"));
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        while plain.len() >= 8 {
            let h: [u8; 8] = plain[..8].try_into().unwrap_or_default();
            let (kind, last, len) = header(&h).ok_or_else(|| invalid("not a TDS packet"))?;
            if plain.len() < len {
                break;
            }
            body.extend_from_slice(&plain[8..len]);
            plain.drain(..len);
            if last {
                return Ok((kind, body));
            }
            if body.len() > MAX_PACKET {
                return Err(invalid("message too long"));
            }
        }
        let mut buf = [0u8; 4096];
        let n = read_some(conn, &mut buf).await?;
        feed(tls, &buf[..n])?;
    }
}

/// The handler: a certificate for the decoy's address is made once and
/// kept in the decoy directory, for the TLS that SQL Server wraps logins in.
pub fn handler(
    ctx: &std::sync::Arc<super::ServiceCtx>,
) -> Result<super::Handler, super::DecoyError> {
    // TLS 1.2, as SQL Server 2019 speaks it on TDS 7 (FreeTDS, for one,
    // loses its TLS 1.3 Finished inside the pre-login exchange).
    let mut config = (*super::http::tls_config_of(ctx, false)?).clone();
    config.alpn_protocols.clear();
    let config = std::sync::Arc::new(config);
    Ok(std::sync::Arc::new(move |conn: Conn| {
        Box::pin(serve(conn, config.clone()))
    }))
}

/// How a connection that sent no login ended: `closed` when the client
/// hung up.
fn ended(e: &std::io::Error, closed: &str) -> String {
    match e.kind() {
        std::io::ErrorKind::UnexpectedEof => closed.to_owned(),
        _ => format!("cut off: {e}"),
    }
}

async fn serve(mut conn: Conn, config: std::sync::Arc<rustls::ServerConfig>) {
    let peer = conn.peer;
    let ctx = conn.ctx.clone();
    let (kind, body) = match read_message(&mut conn).await {
        Ok(m) => m,
        Err(e) => {
            let detail = ended(&e, "connected and closed");
            ctx.report(peer, "decoy-connection", None, detail).await;
            return;
        }
    };
    // A login without a pre-login is an old client's (TDS 7.0): taken as is.
    let (mut tls, everything, (kind, body)) = if kind == PRELOGIN {
        let options = prelogin_options(&body).unwrap_or_default();
        let asked = options
            .iter()
            .find(|(t, _)| *t == 1)
            .and_then(|(_, v)| v.first().copied());
        let encryption = encryption_answer(asked);
        let mars = options.iter().any(|(t, _)| *t == 4);
        if write_message(&mut conn, &prelogin_answer(encryption, mars))
            .await
            .is_err()
        {
            return;
        }
        let mut tls = if encryption == ENCRYPT_NOT_SUP {
            None
        } else {
            match rustls::ServerConnection::new(config) {
                Ok(mut t) => match handshake(&mut conn, &mut t).await {
                    Ok(()) => Some(t),
                    Err(e) => {
                        ctx.report(peer, "decoy-connection", None, format!("TLS: {e}"))
                            .await;
                        return;
                    }
                },
                Err(_) => return,
            }
        };
        let next = match &mut tls {
            Some(t) => read_message_tls(&mut conn, t).await,
            None => read_message(&mut conn).await,
        };
        match next {
            Ok(m) => (tls, encryption == ENCRYPT_ON, m),
            Err(e) => {
                let detail = ended(&e, "closed after the pre-login");
                ctx.report(peer, "decoy-connection", None, detail).await;
                return;
            }
        }
    } else {
        (None, false, (kind, body))
    };
    if kind != LOGIN7 {
        ctx.report(peer, "decoy-connection", None, "not a TDS login".into())
            .await;
        return;
    }
    let Some(login) = parse_login(&body) else {
        ctx.report(peer, "decoy-connection", None, "a malformed login".into())
            .await;
        return;
    };
    let detail = [
        (!login.database.is_empty()).then(|| format!("database {}", login.database)),
        login.sspi.then(|| "integrated authentication".to_owned()),
        tls.is_some().then(|| {
            if everything {
                "encrypted".to_owned()
            } else {
                "login encrypted".to_owned()
            }
        }),
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
    let answer = packets(
        TABULAR,
        &login_failed(&login.user, &ctx.decoy.to_uppercase()),
    );
    match &mut tls {
        // Everything encrypted: the answer too.
        Some(t) if everything => {
            use std::io::Write;
            if t.writer().write_all(&answer).is_ok() {
                let _ = flush_tls(&mut conn, t, false).await;
            }
        }
        // Only the login was: the answer goes in the clear.
        _ => {
            let _ = conn.stream.write_all(&answer).await;
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
        let answer = prelogin_answer(ENCRYPT_NOT_SUP, false);
        let options = prelogin_options(&answer).unwrap();
        assert_eq!(options[0], (0, &VERSION[..]));
        assert_eq!(options[1], (1, &[ENCRYPT_NOT_SUP][..]));
        assert_eq!(options.len(), 4);
        // The shape nmap knows SQL Server by: VERSION at 0x15.
        assert_eq!(&answer[..5], &[0, 0, 0x15, 0, 6]);
        assert_eq!(
            prelogin_options(&prelogin_answer(ENCRYPT_OFF, true))
                .unwrap()
                .len(),
            5
        );
        assert_eq!(encryption_answer(Some(ENCRYPT_OFF)), ENCRYPT_OFF);
        assert_eq!(encryption_answer(Some(ENCRYPT_REQ)), ENCRYPT_ON);
        assert_eq!(encryption_answer(Some(ENCRYPT_NOT_SUP)), ENCRYPT_NOT_SUP);
        assert_eq!(encryption_answer(None), ENCRYPT_NOT_SUP);
        // A long TLS flight goes in several packets, the last one ending
        // the message.
        let p = packets(PRELOGIN, &[7; 5000]);
        assert_eq!((p[0], p[1]), (PRELOGIN, 0));
        let second = 8 + TLS_CHUNK;
        assert_eq!((p[second], p[second + 1]), (PRELOGIN, 1));
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

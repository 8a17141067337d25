//! A MySQL server that never lets anyone in, answering as Debian 12's
//! MariaDB 10.11 does: protocol 10's initial handshake with a fresh
//! 20-byte scramble and `mysql_native_password`, the client's handshake
//! response (user, auth response, database, plugin, connection
//! attributes), an authentication switch to `mysql_native_password` for a
//! client that asked for another plugin (MySQL 8's
//! `caching_sha2_password`), and error 1045 `Access denied`.
//!
//! The auth response proves the password without revealing it: the
//! scramble and the response go to the controller, which checks them
//! against every planted password (SHA1(password) XOR
//! SHA1(scramble + SHA1(SHA1(password)))) and never stores them.

use ruse_proto::convert::PresentedCredential;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{Conn, credential};

/// The server version MariaDB 10.11 on Debian 12 announces (the `5.5.5-`
/// prefix is MariaDB's, for old clients).
pub const SERVER_VERSION: &str = "5.5.5-10.11.19-MariaDB-0+deb12u1";
/// The authentication plugin offered, and switched to.
pub const NATIVE: &str = "mysql_native_password";
/// The largest client packet read (a handshake response with connection
/// attributes is well under 2 KiB).
pub const MAX_PACKET: usize = 16 * 1024;
/// How long MariaDB waits for a login (`connect_timeout`) before it
/// resets the connection.
pub const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// `mysql_response`'s first byte: the scheme of what follows.
pub const SCHEME_NATIVE: u8 = 1;

// Capability flags (the client's and ours).
const CLIENT_CONNECT_WITH_DB: u32 = 0x0000_0008;
const CLIENT_PROTOCOL_41: u32 = 0x0000_0200;
const CLIENT_SSL: u32 = 0x0000_0800;
const CLIENT_SECURE_CONNECTION: u32 = 0x0000_8000;
const CLIENT_PLUGIN_AUTH: u32 = 0x0008_0000;
const CLIENT_CONNECT_ATTRS: u32 = 0x0010_0000;
const CLIENT_PLUGIN_AUTH_LENENC: u32 = 0x0020_0000;
/// What MariaDB 10.11 without TLS announces (read from Debian's
/// `mariadbd`; `tests/tests/fidelity.rs` compares the two).
const SERVER_CAPABILITIES: u32 = 0x81ff_f7fe;

/// The server's first packet (payload only).
pub fn handshake(connection_id: u32, scramble: &[u8; 20]) -> Vec<u8> {
    let mut p = Vec::with_capacity(96);
    p.push(10);
    p.extend_from_slice(SERVER_VERSION.as_bytes());
    p.push(0);
    p.extend_from_slice(&connection_id.to_le_bytes());
    p.extend_from_slice(&scramble[..8]);
    p.push(0);
    p.extend_from_slice(&(SERVER_CAPABILITIES as u16).to_le_bytes());
    // utf8mb4_general_ci, then SERVER_STATUS_AUTOCOMMIT.
    p.push(45);
    p.extend_from_slice(&2u16.to_le_bytes());
    p.extend_from_slice(&((SERVER_CAPABILITIES >> 16) as u16).to_le_bytes());
    p.push(21);
    // Six reserved bytes, then MariaDB's extended capabilities.
    p.extend_from_slice(&[0; 6]);
    p.extend_from_slice(&0x1du32.to_le_bytes());
    p.extend_from_slice(&scramble[8..]);
    p.push(0);
    p.extend_from_slice(NATIVE.as_bytes());
    p.push(0);
    p
}

/// What a client's handshake response said.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Login {
    pub user: String,
    pub auth: Vec<u8>,
    pub database: String,
    pub plugin: String,
    /// `_client_name`, `_client_version` and `program_name`, when sent.
    pub client: String,
}

/// A client packet that is not the response to the handshake it should be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// An SSL request: this server offered no TLS.
    SslRequest,
    /// Too short, or a field runs past the end.
    Malformed,
    /// A pre-4.1 client (MariaDB refuses those too).
    OldProtocol,
}

/// A NUL-terminated string at `at`, and where the next field starts.
fn cstring(p: &[u8], at: usize) -> Option<(String, usize)> {
    let rest = p.get(at..)?;
    let end = rest.iter().position(|&b| b == 0)?;
    Some((
        String::from_utf8_lossy(&rest[..end]).into_owned(),
        at + end + 1,
    ))
}

/// A length-encoded integer at `at`, and where the next field starts.
fn lenenc(p: &[u8], at: usize) -> Option<(u64, usize)> {
    let first = *p.get(at)?;
    let bytes = |n: usize| -> Option<u64> {
        let b = p.get(at + 1..at + 1 + n)?;
        Some(b.iter().rev().fold(0u64, |v, &x| (v << 8) | u64::from(x)))
    };
    match first {
        0..=0xfa => Some((u64::from(first), at + 1)),
        0xfc => Some((bytes(2)?, at + 3)),
        0xfd => Some((bytes(3)?, at + 4)),
        0xfe => Some((bytes(8)?, at + 9)),
        _ => None,
    }
}

/// `n` bytes at `at` (a length from the client, checked).
fn take(p: &[u8], at: usize, n: u64) -> Option<(&[u8], usize)> {
    let n = usize::try_from(n).ok()?;
    let end = at.checked_add(n)?;
    Some((p.get(at..end)?, end))
}

/// Parses a HandshakeResponse41. Pure, for fuzzing.
pub fn parse_login(p: &[u8]) -> Result<Login, Refused> {
    let caps = u32::from_le_bytes(
        p.get(..4)
            .ok_or(Refused::Malformed)?
            .try_into()
            .unwrap_or_default(),
    );
    if caps & CLIENT_PROTOCOL_41 == 0 {
        return Err(Refused::OldProtocol);
    }
    if p.len() == 32 && caps & CLIENT_SSL != 0 {
        return Err(Refused::SslRequest);
    }
    // Capabilities, max packet size, character set, 23 reserved bytes.
    let (user, at) = cstring(p, 32).ok_or(Refused::Malformed)?;
    let (auth, mut at) = if caps & CLIENT_PLUGIN_AUTH_LENENC != 0 {
        let (n, at) = lenenc(p, at).ok_or(Refused::Malformed)?;
        take(p, at, n).ok_or(Refused::Malformed)?
    } else if caps & CLIENT_SECURE_CONNECTION != 0 {
        let n = *p.get(at).ok_or(Refused::Malformed)?;
        take(p, at + 1, u64::from(n)).ok_or(Refused::Malformed)?
    } else {
        // Pre-4.1 style: up to a NUL.
        let rest = p.get(at..).ok_or(Refused::Malformed)?;
        let end = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or(Refused::Malformed)?;
        (&rest[..end], at + end + 1)
    };
    let auth = auth.to_vec();
    let mut login = Login {
        user,
        auth,
        ..Login::default()
    };
    if caps & CLIENT_CONNECT_WITH_DB != 0
        && let Some((db, next)) = cstring(p, at)
    {
        login.database = db;
        at = next;
    }
    if caps & CLIENT_PLUGIN_AUTH != 0
        && let Some((plugin, next)) = cstring(p, at)
    {
        login.plugin = plugin;
        at = next;
    }
    if caps & CLIENT_CONNECT_ATTRS != 0
        && let Some((len, start)) = lenenc(p, at)
        && let Some((attrs, _)) = take(p, start, len)
    {
        login.client = client_attributes(attrs);
    }
    Ok(login)
}

/// The client's name, version and program from its connection attributes.
fn client_attributes(attrs: &[u8]) -> String {
    let mut at = 0;
    let mut found: Vec<(String, String)> = Vec::new();
    for _ in 0..64 {
        let Some((klen, k)) = lenenc(attrs, at) else {
            break;
        };
        let Some((key, v)) = take(attrs, k, klen) else {
            break;
        };
        let Some((vlen, v)) = lenenc(attrs, v) else {
            break;
        };
        let Some((value, next)) = take(attrs, v, vlen) else {
            break;
        };
        let key = String::from_utf8_lossy(key);
        if matches!(
            key.as_ref(),
            "_client_name" | "_client_version" | "program_name"
        ) {
            found.push((
                key.into_owned(),
                String::from_utf8_lossy(value).into_owned(),
            ));
        }
        at = next;
    }
    found.sort();
    found
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// MariaDB's error packet (payload); the SQL state only for a 4.1
/// client (`state` empty otherwise).
pub fn error(code: u16, state: &str, message: &str) -> Vec<u8> {
    let mut p = vec![0xff];
    p.extend_from_slice(&code.to_le_bytes());
    if !state.is_empty() {
        p.push(b'#');
        p.extend_from_slice(state.as_bytes());
    }
    p.extend_from_slice(message.as_bytes());
    p
}

/// What MariaDB answers a packet that is not a login it can take.
pub fn bad_handshake(why: &Refused) -> Vec<u8> {
    match why {
        Refused::OldProtocol => error(1043, "", "Bad handshake"),
        Refused::SslRequest | Refused::Malformed => error(1043, "08S01", "Bad handshake"),
    }
}

/// How MariaDB names a client's host in its errors: `localhost` for a
/// loopback address, the address otherwise (its reverse lookup aside).
pub fn client_host(ip: std::net::IpAddr) -> String {
    if ip.is_loopback() {
        "localhost".into()
    } else {
        ip.to_string()
    }
}

/// The 1045 a refused login gets.
pub fn access_denied(user: &str, peer: &str, with_password: bool) -> Vec<u8> {
    error(
        1045,
        "28000",
        &format!(
            "Access denied for user '{user}'@'{peer}' (using password: {})",
            if with_password { "YES" } else { "NO" }
        ),
    )
}

/// An authentication switch request to `mysql_native_password`.
pub fn auth_switch(scramble: &[u8; 20]) -> Vec<u8> {
    let mut p = vec![0xfe];
    p.extend_from_slice(NATIVE.as_bytes());
    p.push(0);
    p.extend_from_slice(scramble);
    p.push(0);
    p
}

/// A packet read: its sequence id and payload.
async fn read_packet(conn: &mut Conn) -> std::io::Result<(u8, Vec<u8>)> {
    let mut head = [0u8; 4];
    conn.read_exact(&mut head).await?;
    let len = usize::from(head[0]) | usize::from(head[1]) << 8 | usize::from(head[2]) << 16;
    if len > MAX_PACKET {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "packet too large",
        ));
    }
    let mut payload = vec![0u8; len];
    conn.read_exact(&mut payload).await?;
    Ok((head[3], payload))
}

async fn write_packet(conn: &mut Conn, seq: u8, payload: &[u8]) -> std::io::Result<()> {
    let len = u32::try_from(payload.len()).unwrap_or(0).to_le_bytes();
    let mut frame = Vec::with_capacity(payload.len() + 4);
    frame.extend_from_slice(&[len[0], len[1], len[2], seq]);
    frame.extend_from_slice(payload);
    conn.stream.write_all(&frame).await
}

/// Connection ids, as a server counts its connections.
static CONNECTION_ID: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

pub async fn serve(mut conn: Conn) {
    let peer = conn.peer;
    let ctx = conn.ctx.clone();
    let mut scramble = [0u8; 20];
    ruse_proto::types::random_bytes(&mut scramble);
    // MariaDB's scramble is printable ASCII, never NUL.
    for b in &mut scramble {
        *b = 33 + *b % 94;
    }
    let id = CONNECTION_ID
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        .wrapping_add(8 + (scramble[0] as u32));
    if write_packet(&mut conn, 0, &handshake(id, &scramble))
        .await
        .is_err()
    {
        return;
    }
    let (seq, payload) = match tokio::time::timeout(CONNECT_TIMEOUT, read_packet(&mut conn)).await {
        Ok(Ok(p)) => p,
        Err(_) => {
            // MariaDB's connect_timeout: it resets the connection without
            // a word.
            let _ = conn.stream.set_zero_linger();
            ctx.report(
                peer,
                "decoy-connection",
                None,
                "sent nothing within 10 s".into(),
            )
            .await;
            return;
        }
        Ok(Err(e)) => {
            let detail = if e.kind() == std::io::ErrorKind::UnexpectedEof {
                "connected and closed".to_owned()
            } else {
                format!("cut off before logging in: {e}")
            };
            ctx.report(peer, "decoy-connection", None, detail).await;
            return;
        }
    };
    let host = client_host(peer.ip());
    let mut login = match parse_login(&payload) {
        Ok(login) => login,
        Err(why) => {
            let detail = match why {
                Refused::SslRequest => "asked for TLS",
                Refused::OldProtocol => "a pre-4.1 client",
                Refused::Malformed => "not a MySQL login",
            };
            let _ = write_packet(&mut conn, seq.wrapping_add(1), &bad_handshake(&why)).await;
            ctx.report(peer, "decoy-connection", None, detail.into())
                .await;
            return;
        }
    };
    let mut seq = seq.wrapping_add(1);
    if login.plugin != NATIVE && !login.plugin.is_empty() {
        // As MariaDB: ask for the plugin it knows, on the same scramble.
        if write_packet(&mut conn, seq, &auth_switch(&scramble))
            .await
            .is_err()
        {
            return;
        }
        match read_packet(&mut conn).await {
            Ok((s, auth)) => {
                login.auth = auth;
                seq = s.wrapping_add(1);
            }
            Err(_) => {
                report_login(&ctx, peer, &login, &scramble).await;
                return;
            }
        }
    }
    report_login(&ctx, peer, &login, &scramble).await;
    ctx.refusal_pause(std::time::Duration::ZERO).await;
    let _ = write_packet(
        &mut conn,
        seq,
        &access_denied(&login.user, &host, !login.auth.is_empty()),
    )
    .await;
    // MariaDB closes the connection after the error; read what is left
    // briefly so the client sees the error, not a reset.
    let mut rest = [0u8; 64];
    let _ = tokio::time::timeout(
        std::time::Duration::from_millis(200),
        conn.stream.read(&mut rest),
    )
    .await;
}

async fn report_login(
    ctx: &super::ServiceCtx,
    peer: std::net::SocketAddr,
    login: &Login,
    scramble: &[u8; 20],
) {
    let mysql_response = if login.auth.len() == 20 {
        let mut r = vec![SCHEME_NATIVE];
        r.extend_from_slice(scramble);
        r.extend_from_slice(&login.auth);
        r
    } else {
        Vec::new()
    };
    let detail = if login.database.is_empty() {
        String::new()
    } else {
        format!("database {}", login.database)
    };
    ctx.report(
        peer,
        "decoy-login",
        Some(PresentedCredential {
            username: login.user.clone(),
            client: login.client.clone(),
            mysql_response,
            ..credential()
        }),
        detail,
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A HandshakeResponse41 as mariadb-client 10.11 sends it.
    fn response(user: &str, auth: &[u8], db: &str, plugin: &str) -> Vec<u8> {
        let caps = CLIENT_PROTOCOL_41
            | CLIENT_SECURE_CONNECTION
            | CLIENT_PLUGIN_AUTH
            | CLIENT_PLUGIN_AUTH_LENENC
            | CLIENT_CONNECT_ATTRS
            | if db.is_empty() {
                0
            } else {
                CLIENT_CONNECT_WITH_DB
            };
        let mut p = caps.to_le_bytes().to_vec();
        p.extend_from_slice(&(16u32 << 20).to_le_bytes());
        p.push(45);
        p.extend_from_slice(&[0; 23]);
        p.extend_from_slice(user.as_bytes());
        p.push(0);
        p.push(auth.len() as u8);
        p.extend_from_slice(auth);
        if !db.is_empty() {
            p.extend_from_slice(db.as_bytes());
            p.push(0);
        }
        p.extend_from_slice(plugin.as_bytes());
        p.push(0);
        let mut attrs = Vec::new();
        for (k, v) in [
            ("_client_name", "libmariadb"),
            ("_pid", "42"),
            ("program_name", "mysql"),
        ] {
            attrs.push(k.len() as u8);
            attrs.extend_from_slice(k.as_bytes());
            attrs.push(v.len() as u8);
            attrs.extend_from_slice(v.as_bytes());
        }
        p.push(attrs.len() as u8);
        p.extend_from_slice(&attrs);
        p
    }

    #[test]
    fn a_login_is_read_whole() {
        let auth = [7u8; 20];
        let login = parse_login(&response("ehr_ro_x1", &auth, "ehr", NATIVE)).unwrap();
        assert_eq!(login.user, "ehr_ro_x1");
        assert_eq!(login.auth, auth);
        assert_eq!(login.database, "ehr");
        assert_eq!(login.plugin, NATIVE);
        assert_eq!(login.client, "_client_name=libmariadb program_name=mysql");
        let login = parse_login(&response("u", &[], "", "caching_sha2_password")).unwrap();
        assert!(login.auth.is_empty());
        assert_eq!(login.plugin, "caching_sha2_password");
    }

    #[test]
    fn what_is_not_a_login_is_refused() {
        assert_eq!(parse_login(&[]), Err(Refused::Malformed));
        let mut ssl = (CLIENT_PROTOCOL_41 | CLIENT_SSL).to_le_bytes().to_vec();
        ssl.resize(32, 0);
        assert_eq!(parse_login(&ssl), Err(Refused::SslRequest));
        assert_eq!(parse_login(&[0, 0, 0, 0, 1]), Err(Refused::OldProtocol));
        // An auth length past the end.
        let mut p = response("u", &[1; 20], "", NATIVE);
        let at = 32 + 2;
        p[at] = 250;
        assert_eq!(parse_login(&p[..40]), Err(Refused::Malformed));
    }

    #[test]
    fn the_handshake_is_mariadbs_shape() {
        let scramble = *b"abcdefghijklmnopqrst";
        let h = handshake(9, &scramble);
        assert_eq!(h[0], 10);
        assert!(h[1..].starts_with(SERVER_VERSION.as_bytes()));
        assert!(h.ends_with(b"mysql_native_password\0"));
        let at = 1 + SERVER_VERSION.len() + 1 + 4;
        assert_eq!(&h[at..at + 8], b"abcdefgh");
        let denied = access_denied("bob", "127.0.0.2", true);
        assert_eq!(&denied[..3], &[0xff, 0x15, 0x04]);
        assert!(String::from_utf8_lossy(&denied).ends_with("(using password: YES)"));
    }
}

//! An FTP server that takes USER and PASS and always says
//! `530 Login incorrect.`, answering as Debian's vsftpd 3.0.3 does before
//! a login: its banner and words, `530 Please login with USER and PASS.`
//! for everything a session needs, no answer to an empty line, its wait
//! before a refusal (PAM's and its own), and the connection closed after
//! the third failed login. `tests/tests/fidelity.rs` compares the two.

use ruse_proto::convert::PresentedCredential;
use std::time::Duration;

use tokio::io::AsyncWriteExt;

use super::{Conn, credential};

/// Longest command line vsftpd reads; a longer one is answered and the
/// connection closed.
const MAX_LINE: usize = 4096;
/// Commands answered before the connection is closed.
const MAX_COMMANDS: usize = 64;
/// vsftpd's `max_login_fails`: the connection ends after this many.
const MAX_LOGIN_FAILS: usize = 3;

const NOT_LOGGED_IN: &str = "530 Please login with USER and PASS.\r\n";
const FEATURES: &str = "211-Features:\r\n EPRT\r\n EPSV\r\n MDTM\r\n PASV\r\n REST STREAM\r\n SIZE\r\n TVFS\r\n211 End\r\n";

/// What to answer one command line, and what it revealed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Say(&'static str),
    /// USER: remember the name (an empty one names nobody).
    User(String),
    /// PASS: a login attempt with this password.
    Pass(String),
    Quit,
    /// An empty line: vsftpd reads it and says nothing.
    Nothing,
}

/// Interprets one command line. Pure, for fuzzing.
pub fn command(line: &str) -> Reply {
    if line.is_empty() {
        return Reply::Nothing;
    }
    let (verb, arg) = match line.split_once(' ') {
        Some((v, a)) => (v, a),
        None => (line, ""),
    };
    match verb.to_ascii_uppercase().as_str() {
        "USER" => Reply::User(arg.chars().take(128).collect()),
        "PASS" => Reply::Pass(arg.chars().take(128).collect()),
        "QUIT" => Reply::Quit,
        "FEAT" => Reply::Say(FEATURES),
        "OPTS" if arg.eq_ignore_ascii_case("UTF8 ON") => Reply::Say("200 Always in UTF8 mode.\r\n"),
        "OPTS" => Reply::Say("501 Option not understood.\r\n"),
        _ => Reply::Say(NOT_LOGGED_IN),
    }
}

/// How long vsftpd takes to refuse a password: PAM's two seconds with
/// its ±25% jitter and its own work, then vsftpd's `delay_failed_login`
/// second (2.9 to 3.7 s measured on Debian's package).
fn refusal_wait() -> Duration {
    let mut random = [0u8; 2];
    let jitter = match ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut random)
    {
        Ok(()) => u64::from(u16::from_le_bytes(random)) * 1000 / u64::from(u16::MAX),
        Err(_) => 500,
    };
    Duration::from_millis(2_600 + jitter * 6 / 5)
}

pub async fn serve(mut conn: Conn) {
    let peer = conn.peer;
    let ctx = conn.ctx.clone();
    if conn
        .stream
        .write_all(b"220 (vsFTPd 3.0.3)\r\n")
        .await
        .is_err()
    {
        return;
    }
    let mut user: Option<String> = None;
    let mut failures = 0;
    for _ in 0..MAX_COMMANDS {
        let line = match conn.read_line(MAX_LINE).await {
            Ok(Some(line)) => line,
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                // vsftpd shuts the connection down before it exits with
                // the rest of the line unread: the client sees the end of
                // the stream (a plain close would reset it).
                let _ = conn.stream.write_all(b"500 Input line too long.\r\n").await;
                let _ = conn.stream.shutdown().await;
                break;
            }
            Ok(None) | Err(_) => break,
        };
        let answer: &[u8] = match command(&line) {
            Reply::Say(text) => text.as_bytes(),
            Reply::Nothing => continue,
            Reply::User(name) => {
                user = Some(name).filter(|n| !n.is_empty());
                b"331 Please specify the password.\r\n"
            }
            Reply::Pass(password) => {
                let Some(name) = user.take() else {
                    let _ = conn
                        .stream
                        .write_all(b"503 Login with USER first.\r\n")
                        .await;
                    continue;
                };
                failures += 1;
                ctx.report(
                    peer,
                    "decoy-login",
                    Some(PresentedCredential {
                        username: name,
                        password,
                        ..credential()
                    }),
                    String::new(),
                )
                .await;
                ctx.refusal_pause(refusal_wait()).await;
                b"530 Login incorrect.\r\n"
            }
            Reply::Quit => {
                let _ = conn.stream.write_all(b"221 Goodbye.\r\n").await;
                break;
            }
        };
        if conn.stream.write_all(answer).await.is_err() || failures >= MAX_LOGIN_FAILS {
            break;
        }
    }
    if failures == 0 {
        ctx.report(peer, "decoy-connection", None, String::new())
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands() {
        assert_eq!(
            command("USER pacsftp7k2m"),
            Reply::User("pacsftp7k2m".into())
        );
        assert_eq!(command("user bob"), Reply::User("bob".into()));
        assert_eq!(command("USER"), Reply::User(String::new()));
        assert_eq!(
            command("PASS Winter2024!x"),
            Reply::Pass("Winter2024!x".into())
        );
        // A password keeps its spaces.
        assert_eq!(command("PASS a b "), Reply::Pass("a b ".into()));
        assert_eq!(command("QUIT"), Reply::Quit);
        assert_eq!(command(""), Reply::Nothing);
        assert_eq!(command("  "), Reply::Say(NOT_LOGGED_IN));
        for line in [
            "AUTH TLS",
            "RETR /etc/passwd",
            "SYST",
            "NOOP",
            "HELP",
            "PWD",
        ] {
            assert_eq!(command(line), Reply::Say(NOT_LOGGED_IN), "{line}");
        }
        assert_eq!(command("feat x"), Reply::Say(FEATURES));
        assert!(matches!(command("opts utf8 on"), Reply::Say(s) if s.starts_with("200")));
        assert!(matches!(command("OPTS UTF8 OFF"), Reply::Say(s) if s.starts_with("501")));
    }

    #[test]
    fn the_wait_is_vsftpds() {
        for _ in 0..100 {
            let w = refusal_wait();
            assert!((2_600..=3_800).contains(&w.as_millis()), "{w:?}");
        }
    }
}

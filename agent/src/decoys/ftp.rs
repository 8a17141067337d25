//! An FTP server that takes USER and PASS and always says
//! `530 Login incorrect.` (vsftpd's words and banner).

use tokio::io::AsyncWriteExt;

use super::{Conn, credential};

/// Longest command line accepted.
const MAX_LINE: usize = 512;
/// Commands answered before the connection is closed.
const MAX_COMMANDS: usize = 64;

/// What to answer one command line, and what it revealed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Say(&'static str),
    /// USER: remember the name.
    User(String),
    /// PASS: a login attempt with this password.
    Pass(String),
    Quit,
}

/// Interprets one command line. Pure, for fuzzing.
pub fn command(line: &str) -> Reply {
    let (verb, arg) = match line.split_once(' ') {
        Some((v, a)) => (v, a.trim_end()),
        None => (line.trim_end(), ""),
    };
    match verb.to_ascii_uppercase().as_str() {
        "USER" => Reply::User(arg.chars().take(128).collect()),
        "PASS" => Reply::Pass(arg.chars().take(128).collect()),
        "QUIT" => Reply::Quit,
        "SYST" => Reply::Say("215 UNIX Type: L8\r\n"),
        "FEAT" => Reply::Say(
            "211-Features:\r\n EPRT\r\n EPSV\r\n MDTM\r\n PASV\r\n REST STREAM\r\n SIZE\r\n TVFS\r\n UTF8\r\n211 End\r\n",
        ),
        "OPTS" => Reply::Say("200 Always in UTF8 mode.\r\n"),
        "NOOP" => Reply::Say("200 NOOP ok.\r\n"),
        "AUTH" | "PBSZ" | "PROT" => Reply::Say("530 Please login with USER and PASS.\r\n"),
        "" => Reply::Say("500 Unknown command.\r\n"),
        _ => Reply::Say("530 Please login with USER and PASS.\r\n"),
    }
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
    let mut attempted = false;
    for _ in 0..MAX_COMMANDS {
        let Ok(Some(line)) = conn.read_line(MAX_LINE).await else {
            break;
        };
        let answer: &[u8] = match command(&line) {
            Reply::Say(text) => text.as_bytes(),
            Reply::User(name) => {
                user = Some(name);
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
                attempted = true;
                ctx.report(
                    peer,
                    "decoy-login",
                    Some(ruse_proto::agent::v1::Credential {
                        username: name,
                        password,
                        ..credential()
                    }),
                    String::new(),
                )
                .await;
                // vsftpd waits before refusing.
                ctx.refusal_pause(std::time::Duration::from_millis(300))
                    .await;
                b"530 Login incorrect.\r\n"
            }
            Reply::Quit => {
                let _ = conn.stream.write_all(b"221 Goodbye.\r\n").await;
                break;
            }
        };
        if conn.stream.write_all(answer).await.is_err() {
            break;
        }
    }
    if !attempted {
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
        assert_eq!(
            command("PASS Winter2024!x"),
            Reply::Pass("Winter2024!x".into())
        );
        assert_eq!(command("QUIT"), Reply::Quit);
        assert!(matches!(command("AUTH TLS"), Reply::Say(s) if s.starts_with("530")));
        assert!(matches!(command("RETR /etc/passwd"), Reply::Say(s) if s.starts_with("530")));
        assert!(matches!(command(""), Reply::Say(s) if s.starts_with("500")));
    }
}

//! A Telnet console of a networked medical or lab device that never lets
//! anyone in: the option negotiation of BusyBox's `telnetd` (the daemon of
//! most embedded Linux devices), a device banner, `<host> login:` and
//! `Password:` prompts, `Login incorrect` after login's 3-second delay, and
//! the connection closed after the third failure. The banner comes from the
//! service's `device` (an infusion pump, a patient-monitor gateway, a lab
//! analyser) or its own `banner`.

use ruse_proto::convert::PresentedCredential;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{Conn, credential};

/// Telnet commands and options used here (RFC 854, 857, 858, 1073, 1091).
const IAC: u8 = 255;
const DONT: u8 = 254;
const DO: u8 = 253;
const WONT: u8 = 252;
const WILL: u8 = 251;
const SB: u8 = 250;
const SE: u8 = 240;
const ECHO: u8 = 1;
const SGA: u8 = 3;
const TTYPE: u8 = 24;
const NAWS: u8 = 31;

/// What BusyBox telnetd sends first: DO ECHO, DO NAWS, WILL ECHO, WILL SGA.
pub const NEGOTIATION: &[u8] = &[
    IAC, DO, ECHO, IAC, DO, NAWS, IAC, WILL, ECHO, IAC, WILL, SGA,
];

/// The longest line (user name or password) kept; the rest is dropped.
pub const MAX_LINE: usize = 128;
/// The longest subnegotiation kept (a terminal type, a window size).
const MAX_SB: usize = 64;
/// login's failures before the connection ends.
const MAX_FAILURES: usize = 3;
/// Bytes read from one connection before it is cut off.
const MAX_BYTES: usize = 16 * 1024;

/// The devices a Telnet decoy can be, by the `device` of its service.
pub const DEVICES: &[&str] = &["infusion-pump", "monitor-gateway", "lab-analyser"];

/// The banner of `device` (the first of [`DEVICES`] when empty or unknown).
pub fn device_banner(device: &str) -> &'static str {
    match device {
        "monitor-gateway" => {
            "CareView Central Station Gateway CVG-204\r\nHL7/ADT interface node - authorized service personnel only\r\n"
        }
        "lab-analyser" => {
            "LabCore LC-2400 Chemistry Analyzer\r\nMaintenance console, system software 6.2.1\r\n"
        }
        _ => {
            "MedFlow 8000 Infusion Management Server\r\nService port - firmware 4.12.3 (build 2231)\r\n"
        }
    }
}

/// What the client sent, byte by byte, as the server reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// A data byte (IAC IAC is one 255).
    Data(u8),
    /// The end of a line (CR LF, CR NUL, CR alone, or LF).
    Line,
    /// WILL, WONT, DO or DONT of an option.
    Option { verb: u8, option: u8 },
    /// A subnegotiation: the option and its bytes (at most [`MAX_SB`]).
    Sub { option: u8, data: Vec<u8> },
    /// Another command (NOP, AYT, BRK, IP…).
    Command(u8),
}

/// The Telnet reader's state between bytes.
#[derive(Debug, Default, Clone)]
pub struct Reader {
    state: State,
    sb: Vec<u8>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum State {
    #[default]
    Data,
    /// After CR: LF or NUL completes the line break.
    Cr,
    Iac,
    /// After WILL/WONT/DO/DONT: the option byte.
    Verb(u8),
    Sub,
    SubIac,
}

impl Reader {
    /// Reads `bytes`, appending what they mean to `out`. Pure, for fuzzing.
    pub fn feed(&mut self, bytes: &[u8], out: &mut Vec<Input>) {
        for &b in bytes {
            self.state = match (self.state, b) {
                (State::Data | State::Cr, IAC) => State::Iac,
                (State::Cr, b'\n' | 0) => State::Data,
                (State::Data | State::Cr, b'\r') => {
                    out.push(Input::Line);
                    State::Cr
                }
                (State::Data, b'\n') => {
                    out.push(Input::Line);
                    State::Data
                }
                (State::Data | State::Cr, b) => {
                    out.push(Input::Data(b));
                    State::Data
                }
                (State::Iac, IAC) => {
                    out.push(Input::Data(IAC));
                    State::Data
                }
                (State::Iac, WILL | WONT | DO | DONT) => State::Verb(b),
                (State::Iac, SB) => {
                    self.sb.clear();
                    State::Sub
                }
                (State::Iac, c) => {
                    out.push(Input::Command(c));
                    State::Data
                }
                (State::Verb(verb), option) => {
                    out.push(Input::Option { verb, option });
                    State::Data
                }
                (State::Sub, IAC) => State::SubIac,
                (State::Sub, b) => {
                    if self.sb.len() < MAX_SB + 1 {
                        self.sb.push(b);
                    }
                    State::Sub
                }
                (State::SubIac, SE) => {
                    let mut data = std::mem::take(&mut self.sb);
                    let option = if data.is_empty() { 0 } else { data.remove(0) };
                    data.truncate(MAX_SB);
                    out.push(Input::Sub { option, data });
                    State::Data
                }
                (State::SubIac, IAC) => {
                    if self.sb.len() < MAX_SB + 1 {
                        self.sb.push(IAC);
                    }
                    State::Sub
                }
                // IAC and anything else inside a subnegotiation: RFC 855
                // leaves it undefined; keep reading it.
                (State::SubIac, _) => State::Sub,
            };
        }
    }
}

/// The terminal type a TTYPE IS subnegotiation names.
pub fn terminal_type(option: u8, data: &[u8]) -> Option<String> {
    (option == TTYPE && data.first() == Some(&0)).then(|| {
        String::from_utf8_lossy(&data[1..])
            .chars()
            .filter(|c| !c.is_control())
            .collect()
    })
}

/// One line being typed: printable bytes kept (up to [`MAX_LINE`]),
/// backspace and DEL honoured.
#[derive(Debug, Default)]
struct Line(Vec<u8>);

impl Line {
    /// Takes a typed byte; what to echo back.
    fn push(&mut self, b: u8) -> &'static [u8] {
        match b {
            8 | 127 => {
                if self.0.pop().is_some() {
                    b"\x08 \x08"
                } else {
                    b""
                }
            }
            0x20..=0x7e | 0x80..=0xfe if self.0.len() < MAX_LINE => {
                self.0.push(b);
                b""
            }
            _ => b"",
        }
    }

    fn take(&mut self) -> String {
        String::from_utf8_lossy(&std::mem::take(&mut self.0)).into_owned()
    }
}

/// login's wait before `Login incorrect` (its FAIL_DELAY, 3 s).
const LOGIN_DELAY: Duration = Duration::from_secs(3);

/// The banner a service shows: its own (`banner`, lines ended CR LF), or
/// its device's.
pub fn banner(device: &str, own: &str) -> String {
    if own.is_empty() {
        device_banner(device).to_owned()
    } else {
        let mut text: String = own.lines().map(|l| format!("{l}\r\n")).collect();
        if text.is_empty() {
            text.push_str("\r\n");
        }
        text
    }
}

pub async fn serve(mut conn: Conn) {
    let peer = conn.peer;
    let ctx = conn.ctx.clone();
    // The device's host name, as BusyBox's login prompt shows it.
    let host = ctx.decoy.clone();
    let hello = [NEGOTIATION, b"\r\n", ctx.banner.as_bytes(), b"\r\n"].concat();
    if conn.stream.write_all(&hello).await.is_err() {
        return;
    }
    let login_prompt = format!("{host} login: ");
    if conn
        .stream
        .write_all(login_prompt.as_bytes())
        .await
        .is_err()
    {
        return;
    }
    let mut reader = Reader::default();
    let mut line = Line::default();
    let mut user: Option<String> = None;
    let mut terminal = String::new();
    let mut failures = 0;
    let mut read = 0;
    let mut buf = [0u8; 1024];
    let mut inputs = Vec::new();
    let timeout = conn.ctx.limits.read_timeout;
    'session: loop {
        let n = match tokio::time::timeout(timeout, conn.stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => n,
            _ => break,
        };
        read += n;
        if read > MAX_BYTES {
            break;
        }
        inputs.clear();
        reader.feed(&buf[..n], &mut inputs);
        let mut echo = Vec::new();
        for input in inputs.drain(..) {
            match input {
                Input::Data(b) => {
                    let erase = line.push(b);
                    // The user name is echoed (the server said WILL ECHO);
                    // the password is not.
                    if user.is_none() {
                        if erase.is_empty() && (0x20..=0x7e).contains(&b) {
                            echo.push(b);
                        } else {
                            echo.extend_from_slice(erase);
                        }
                    }
                }
                Input::Line => {
                    echo.extend_from_slice(b"\r\n");
                    match user.take() {
                        None => {
                            let name = line.take();
                            if name.is_empty() {
                                echo.extend_from_slice(login_prompt.as_bytes());
                            } else {
                                user = Some(name);
                                echo.extend_from_slice(b"Password: ");
                            }
                        }
                        Some(name) => {
                            let password = line.take();
                            if conn.stream.write_all(&echo).await.is_err() {
                                break 'session;
                            }
                            echo.clear();
                            failures += 1;
                            ctx.report(
                                peer,
                                "decoy-login",
                                Some(PresentedCredential {
                                    username: name,
                                    password,
                                    client: terminal.clone(),
                                    ..credential()
                                }),
                                String::new(),
                            )
                            .await;
                            ctx.refusal_pause(LOGIN_DELAY).await;
                            echo.extend_from_slice(b"Login incorrect\r\n");
                            if failures >= MAX_FAILURES {
                                let _ = conn.stream.write_all(&echo).await;
                                break 'session;
                            }
                            echo.extend_from_slice(login_prompt.as_bytes());
                        }
                    }
                }
                Input::Sub { option, data } => {
                    if let Some(t) = terminal_type(option, &data) {
                        terminal = t;
                    }
                }
                Input::Option { .. } | Input::Command(_) => {}
            }
        }
        if !echo.is_empty() && conn.stream.write_all(&echo).await.is_err() {
            break;
        }
    }
    if failures == 0 {
        let detail = match &user {
            Some(name) => format!("gave user {name:?}, no password"),
            None => String::new(),
        };
        ctx.report(peer, "decoy-connection", None, detail).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(bytes: &[u8]) -> Vec<Input> {
        let mut out = Vec::new();
        Reader::default().feed(bytes, &mut out);
        out
    }

    #[test]
    fn lines_end_however_the_client_ends_them() {
        for ending in [&b"\r\n"[..], b"\r\0", b"\n", b"\r"] {
            let got = read(&[b"ab", ending, b"c"].concat());
            assert_eq!(
                got,
                vec![
                    Input::Data(b'a'),
                    Input::Data(b'b'),
                    Input::Line,
                    Input::Data(b'c')
                ],
                "{ending:?}"
            );
        }
    }

    #[test]
    fn negotiation_and_subnegotiation_are_read_and_bounded() {
        let got = read(&[
            IAC, WILL, TTYPE, IAC, IAC, IAC, SB, TTYPE, 0, b'x', b't', IAC, SE, IAC, 241,
        ]);
        assert_eq!(
            got,
            vec![
                Input::Option {
                    verb: WILL,
                    option: TTYPE
                },
                Input::Data(IAC),
                Input::Sub {
                    option: TTYPE,
                    data: vec![0, b'x', b't']
                },
                Input::Command(241),
            ]
        );
        assert_eq!(
            terminal_type(TTYPE, &[0, b'x', b't']).as_deref(),
            Some("xt")
        );
        assert_eq!(terminal_type(NAWS, &[0, 80, 0, 24]), None);
        // A subnegotiation that never ends keeps at most MAX_SB bytes.
        let mut r = Reader::default();
        let mut out = Vec::new();
        r.feed(&[IAC, SB, NAWS], &mut out);
        for _ in 0..10_000 {
            r.feed(&[7; 100], &mut out);
        }
        assert!(out.is_empty());
        assert!(r.sb.len() <= MAX_SB + 1);
        r.feed(&[IAC, SE], &mut out);
        assert!(matches!(&out[0], Input::Sub { data, .. } if data.len() == MAX_SB));
    }

    #[test]
    fn typed_lines_keep_printables_and_honour_backspace() {
        let mut l = Line::default();
        for b in b"adminX" {
            l.push(*b);
        }
        assert_eq!(l.push(127), b"\x08 \x08");
        l.push(0x1b);
        assert_eq!(l.take(), "admin");
        assert_eq!(l.push(8), b"");
        for _ in 0..1000 {
            l.push(b'a');
        }
        assert_eq!(l.take().len(), MAX_LINE);
    }

    #[test]
    fn every_device_has_a_banner_and_an_own_one_wins() {
        for d in DEVICES {
            assert!(device_banner(d).ends_with("\r\n"));
        }
        assert_eq!(device_banner(""), device_banner("infusion-pump"));
        assert_eq!(banner("lab-analyser", ""), device_banner("lab-analyser"));
        assert_eq!(
            banner("lab-analyser", "Pump 7\nWard 3"),
            "Pump 7\r\nWard 3\r\n"
        );
    }
}

//! E-mail: an SMTP client for incident mails (RFC 5321), with STARTTLS
//! (RFC 3207) or implicit TLS (RFC 8314), AUTH PLAIN (RFC 4954), and a
//! `multipart/alternative` message with a plain-text and an HTML part.
//! Every reply is bounded and every step time-limited by the delivery's
//! deadline.

use base64::Engine;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};

use ruse_proto::types::UnixMs;

use super::config::{Secret, SmtpTls};
use crate::incidents::Notice;
use crate::model::Incident;

/// The longest reply line read (RFC 5321 allows 512 octets).
const MAX_LINE: usize = 4096;
/// The most lines one reply may have.
const MAX_LINES: usize = 64;

/// Where and how to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmtpSettings {
    pub address: String,
    pub tls: SmtpTls,
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub from: String,
    pub to: Vec<String>,
}

/// A reply: its code and text lines.
struct Reply {
    code: u16,
    text: String,
}

async fn read_reply<S: AsyncRead + Unpin>(io: &mut BufReader<S>) -> Result<Reply, String> {
    let mut text = Vec::new();
    for _ in 0..MAX_LINES {
        let mut line = Vec::new();
        let n = (&mut *io)
            .take(MAX_LINE as u64)
            .read_until(b'\n', &mut line)
            .await
            .map_err(|e| format!("reading the server's reply: {e}"))?;
        if n == 0 {
            return Err("the server closed the connection".into());
        }
        let line = String::from_utf8_lossy(&line);
        let line = line.trim_end();
        let (code, rest) = line.split_at(line.len().min(3));
        let code: u16 = code.parse().map_err(|_| {
            format!(
                "not an SMTP reply: {:?}",
                line.chars().take(80).collect::<String>()
            )
        })?;
        text.push(rest.get(1..).unwrap_or_default().to_owned());
        if !rest.starts_with('-') {
            return Ok(Reply {
                code,
                text: text.join(" "),
            });
        }
    }
    Err("the server's reply has too many lines".into())
}

async fn command<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut BufReader<S>,
    line: &str,
    want: u16,
    what: &str,
) -> Result<Reply, String> {
    io.get_mut()
        .write_all(format!("{line}\r\n").as_bytes())
        .await
        .map_err(|e| format!("{what}: {e}"))?;
    let reply = read_reply(io).await?;
    if reply.code != want {
        let text: String = reply
            .text
            .chars()
            .filter(|c| !c.is_control())
            .take(200)
            .collect();
        return Err(format!("{what} refused: {} {text}", reply.code));
    }
    Ok(reply)
}

/// Sends `message` (a complete RFC 5322 message) from `from` to `to`
/// over an established session: EHLO, authentication, the envelope, the
/// data, QUIT.
async fn session<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut BufReader<S>,
    settings: &SmtpSettings,
    helo: &str,
    message: &str,
) -> Result<(), String> {
    let ehlo = command(io, &format!("EHLO {helo}"), 250, "EHLO").await?;
    if let (Some(user), Some(password)) = (&settings.username, &settings.password) {
        if !ehlo.text.to_ascii_uppercase().contains("AUTH") {
            return Err("the server offers no authentication (AUTH) here".into());
        }
        let token = base64::engine::general_purpose::STANDARD
            .encode(format!("\0{user}\0{}", password.expose()));
        command(io, &format!("AUTH PLAIN {token}"), 235, "authentication").await?;
    }
    command(
        io,
        &format!("MAIL FROM:<{}>", settings.from),
        250,
        "MAIL FROM",
    )
    .await?;
    for to in &settings.to {
        command(
            io,
            &format!("RCPT TO:<{to}>"),
            250,
            &format!("recipient {to}"),
        )
        .await?;
    }
    command(io, "DATA", 354, "DATA").await?;
    // Dot-stuffing (RFC 5321 §4.5.2), then the end of data.
    let mut data = String::with_capacity(message.len() + 64);
    for line in message.split("\r\n") {
        if line.starts_with('.') {
            data.push('.');
        }
        data.push_str(line);
        data.push_str("\r\n");
    }
    data.push('.');
    command(io, &data, 250, "the message").await?;
    let _ = command(io, "QUIT", 221, "QUIT").await;
    Ok(())
}

/// Connects and sends `message`.
pub(super) async fn send(
    settings: &SmtpSettings,
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    helo: &str,
    message: &str,
) -> Result<(), String> {
    let address = settings.address.as_str();
    let stream = tokio::net::TcpStream::connect(address)
        .await
        .map_err(|e| format!("{address}: {e}"))?;
    let host = address
        .rsplit_once(':')
        .map_or(address, |(h, _)| h)
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let connector = || {
        let config = tls.clone().ok_or("TLS needs ca_file")?;
        let name = rustls::pki_types::ServerName::try_from(host.clone())
            .map_err(|e| format!("{host}: {e}"))?;
        Ok::<_, String>((tokio_rustls::TlsConnector::from(config), name))
    };
    match settings.tls {
        SmtpTls::Implicit => {
            let (connector, name) = connector()?;
            let tls = connector
                .connect(name, stream)
                .await
                .map_err(|e| format!("TLS to {address}: {e}"))?;
            let mut io = BufReader::new(tls);
            greeting(&mut io).await?;
            session(&mut io, settings, helo, message).await
        }
        SmtpTls::StartTls => {
            let mut io = BufReader::new(stream);
            greeting(&mut io).await?;
            let ehlo = command(&mut io, &format!("EHLO {helo}"), 250, "EHLO").await?;
            if !ehlo.text.to_ascii_uppercase().contains("STARTTLS") {
                return Err(format!("{address} does not offer STARTTLS"));
            }
            command(&mut io, "STARTTLS", 220, "STARTTLS").await?;
            let (connector, name) = connector()?;
            let tls = connector
                .connect(name, io.into_inner())
                .await
                .map_err(|e| format!("TLS to {address}: {e}"))?;
            session(&mut BufReader::new(tls), settings, helo, message).await
        }
        SmtpTls::None => {
            let mut io = BufReader::new(stream);
            greeting(&mut io).await?;
            session(&mut io, settings, helo, message).await
        }
    }
}

async fn greeting<S: AsyncRead + AsyncWrite + Unpin>(io: &mut BufReader<S>) -> Result<(), String> {
    let hello = read_reply(io).await?;
    if hello.code != 220 {
        return Err(format!(
            "the server is not ready: {} {}",
            hello.code, hello.text
        ));
    }
    Ok(())
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A header value: no line breaks, non-ASCII as an RFC 2047 word.
fn header(s: &str) -> String {
    let s: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if s.is_ascii() {
        s
    } else {
        format!(
            "=?UTF-8?B?{}?=",
            base64::engine::general_purpose::STANDARD.encode(s.as_bytes())
        )
    }
}

/// What to do first, by the incident's strongest evidence (from
/// docs/runbook.md).
fn first_steps(i: &Incident) -> &'static str {
    if i.rules.iter().any(|r| r == "credential-use") {
        "A planted credential was used: it was stolen from the host on the path. Isolate that host, find how the credential was read there (the process in the timeline), and look for other use from the source address."
    } else if !i.decoys.is_empty() {
        "Something reached a decoy that no one has reason to use: find the source host and what on it made the connection."
    } else {
        "A lure was read on the host: find the process and user in the timeline, and whether they had reason to read it; if not, treat the host as compromised."
    }
}

fn base64_lines(s: &str) -> String {
    let encoded = base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
    encoded
        .as_bytes()
        .chunks(76)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join("\r\n")
}

/// Where the console shows incident `id`, when a console is configured.
fn console_link(console: Option<&str>, id: &str) -> Option<String> {
    console.map(|base| format!("{}/incidents/{id}", base.trim_end_matches('/')))
}

/// The mail for `notice` of `i`: RFC 5322 headers and a
/// `multipart/alternative` body (text, then HTML), each part in base64.
/// With `console` (its base URL), a link to the incident there.
pub fn message(i: &Incident, notice: Notice, mail: &Mail<'_>) -> String {
    let drill = if i.drill { "[DRILL] " } else { "" };
    let severity = i.severity.as_str().to_ascii_uppercase();
    let subject = format!(
        "{drill}[Ruse] {severity} incident {}: {}",
        notice.as_str(),
        i.title
    );
    let mut facts = super::format::facts(i);
    // A mail is read later than a chat card: when it last happened too.
    let at = facts.len() - 1;
    facts.insert(at, ("Last seen", i.last_seen.rfc3339()));
    let steps = first_steps(i);
    let link = console_link(mail.console, &i.id);
    let mut text = format!("{drill}{}\r\n\r\n", i.title);
    for (k, v) in &facts {
        text.push_str(&format!("{k}: {v}\r\n"));
    }
    text.push_str(&format!("\r\nWhat to do first: {steps}\r\n\r\n"));
    if let Some(link) = &link {
        text.push_str(&format!("In the console: {link}\r\n"));
    }
    text.push_str(&format!("rusectl describe incident {}\r\n", i.id));
    let mut html = format!(
        "<html><body><h2>{}{}</h2><table>",
        html_escape(drill),
        html_escape(&i.title)
    );
    for (k, v) in &facts {
        html.push_str(&format!(
            "<tr><th align=\"left\">{}</th><td>{}</td></tr>",
            html_escape(k),
            html_escape(v)
        ));
    }
    html.push_str(&format!(
        "</table><p><b>What to do first:</b> {}</p>",
        html_escape(steps)
    ));
    if let Some(link) = &link {
        html.push_str(&format!(
            "<p><a href=\"{0}\">Open the incident in the console</a></p>",
            html_escape(link)
        ));
    }
    html.push_str(&format!(
        "<p><code>rusectl describe incident {}</code></p></body></html>",
        html_escape(&i.id)
    ));
    mail.compose(
        &subject,
        &format!("{}.{}.{}", i.id, i.version, notice.as_str()),
        Some(&i.id),
        &text,
        &html,
    )
}

/// One mail listing `incidents` (each as it is now): the digest of those
/// below an output's `digest_below` severity.
pub fn digest(incidents: &[Incident], mail: &Mail<'_>) -> String {
    let drills = incidents.iter().all(|i| i.drill);
    let drill = if drills { "[DRILL] " } else { "" };
    let n = incidents.len();
    let count = format!("{n} incident{}", if n == 1 { "" } else { "s" });
    let subject = format!(
        "{drill}[Ruse] Digest: {count} below {}",
        mail.digest_below.map_or("any severity", |s| s.as_str())
    );
    let mut text = format!("{drill}{count} since the last digest, most severe first.\r\n");
    let mut html = format!(
        "<html><body><h2>{}</h2><table><tr><th align=\"left\">Severity</th><th align=\"left\">Status</th><th align=\"left\">Incident</th><th align=\"left\">Attack path</th><th align=\"left\">Last seen</th></tr>",
        html_escape(&format!("{drill}{count} since the last digest"))
    );
    let mut sorted: Vec<&Incident> = incidents.iter().collect();
    sorted.sort_by(|a, b| {
        b.severity
            .cmp(&a.severity)
            .then(b.last_seen.cmp(&a.last_seen))
    });
    for i in sorted {
        let link = console_link(mail.console, &i.id);
        text.push_str(&format!(
            "\r\n{} {} {}\r\n  {}\r\n  Attack path: {}\r\n  Last seen: {}\r\n  {}\r\n",
            i.severity.as_str().to_ascii_uppercase(),
            i.status.as_str(),
            i.id,
            i.title,
            i.path_text(),
            i.last_seen.rfc3339(),
            link.clone()
                .unwrap_or_else(|| format!("rusectl describe incident {}", i.id)),
        ));
        let title = match &link {
            Some(link) => format!(
                "<a href=\"{}\">{}</a>",
                html_escape(link),
                html_escape(&i.title)
            ),
            None => html_escape(&i.title),
        };
        html.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{title}<br><code>{}</code></td><td>{}</td><td>{}</td></tr>",
            html_escape(i.severity.as_str()),
            html_escape(i.status.as_str()),
            html_escape(&i.id),
            html_escape(&i.path_text()),
            html_escape(&i.last_seen.rfc3339()),
        ));
    }
    html.push_str("</table></body></html>");
    let first = incidents.first().map_or("none", |i| i.id.as_str());
    mail.compose(
        &subject,
        &format!("digest.{first}.{n}.{}", UnixMs::now().0),
        None,
        &text,
        &html,
    )
}

/// Who a mail is from and to, and what it links to.
#[derive(Debug)]
pub struct Mail<'a> {
    pub from: &'a str,
    pub to: &'a [String],
    /// This controller's host name (for Message-ID).
    pub host: &'a str,
    /// The console's base URL, for links.
    pub console: Option<&'a str>,
    /// The severity below which incidents go into the digest.
    pub digest_below: Option<crate::model::Severity>,
}

impl Mail<'_> {
    /// RFC 5322 headers and a `multipart/alternative` body (text, then
    /// HTML), each part in base64.
    fn compose(
        &self,
        subject: &str,
        id: &str,
        incident: Option<&str>,
        text: &str,
        html: &str,
    ) -> String {
        let mut b = [0u8; 12];
        ruse_proto::types::random_bytes(&mut b);
        let boundary = format!("ruse-{}", ruse_proto::types::hex(&b));
        let now = UnixMs::now();
        let date = httpdate::fmt_http_date(
            std::time::UNIX_EPOCH
                + std::time::Duration::from_millis(u64::try_from(now.0).unwrap_or(0)),
        )
        .replace("GMT", "+0000");
        let mut lines = vec![
            format!("From: Ruse <{}>", self.from),
            format!("To: {}", self.to.join(", ")),
            format!("Subject: {}", header(subject)),
            format!("Date: {date}"),
            format!("Message-ID: <{id}@{}>", header(self.host)),
        ];
        if let Some(incident) = incident {
            lines.push(format!("X-Ruse-Incident: {incident}"));
        }
        lines.extend([
            "MIME-Version: 1.0".into(),
            format!("Content-Type: multipart/alternative; boundary=\"{boundary}\""),
            String::new(),
            format!("--{boundary}"),
            "Content-Type: text/plain; charset=utf-8".into(),
            "Content-Transfer-Encoding: base64".into(),
            String::new(),
            base64_lines(text),
            format!("--{boundary}"),
            "Content-Type: text/html; charset=utf-8".into(),
            "Content-Transfer-Encoding: base64".into(),
            String::new(),
            base64_lines(html),
            format!("--{boundary}--"),
        ]);
        lines.join("\r\n")
    }
}

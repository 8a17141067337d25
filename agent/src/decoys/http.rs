//! An HTTP(S) login portal styled as a PACS web viewer, with a FHIR
//! `metadata` endpoint. Logins, Basic credentials and bearer tokens on any
//! path are captured and refused; nothing is ever granted.
//!
//! It answers as the nginx 1.22.1 in front of such an application would
//! (tests/tests/fidelity.rs compares it with Debian's nginx): header names
//! in nginx's case and order (`Server`, `Date`, `Content-Type`,
//! `Content-Length`, `Connection`), nginx's own error pages byte for byte,
//! and nginx's `400 Bad Request` page for a request line nginx would not
//! take.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{
    AUTHORIZATION, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, DATE, HOST, HeaderValue, SERVER,
    USER_AGENT, WWW_AUTHENTICATE,
};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};

use ruse_proto::convert::PresentedCredential;

use super::{Conn, DecoyError, Handler, ServiceCtx};

/// Largest request body read.
pub const MAX_BODY: usize = 16 << 10;
const SERVER_NAME: &str = "nginx/1.22.1";

/// What a request presented.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Presented {
    pub username: String,
    pub password: String,
    pub token: String,
}

/// `application/x-www-form-urlencoded` fields, decoded. Pure, for fuzzing.
pub fn form_fields(body: &[u8]) -> Vec<(String, String)> {
    String::from_utf8_lossy(body)
        .split('&')
        .filter(|p| !p.is_empty())
        .take(32)
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (url_decode(k), url_decode(v))
        })
        .collect()
}

fn url_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).chars().take(256).collect()
}

/// Credentials in an `Authorization` header. Pure, for fuzzing.
pub fn authorization(value: &str) -> Presented {
    let value = value.trim();
    let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64_decode(rest).unwrap_or_default();
        let text = String::from_utf8_lossy(&decoded);
        let (user, pass) = text.split_once(':').unwrap_or((&text, ""));
        Presented {
            username: user.chars().take(256).collect(),
            password: pass.chars().take(256).collect(),
            token: String::new(),
        }
    } else {
        Presented {
            token: rest.chars().take(4096).collect(),
            ..Presented::default()
        }
    }
}

fn base64_decode(s: &str) -> Option<Vec<u8>> {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0;
    for c in s.bytes().take(8192) {
        if c == b'=' {
            break;
        }
        let v = ALPHABET.iter().position(|&a| a == c)? as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push(u8::try_from((acc >> bits) & 0xff).unwrap_or(0));
        }
    }
    Some(out)
}

fn login_page(address: &str, error: bool) -> String {
    let message = if error {
        "<div class=\"error\">Invalid credentials. Please try again or contact the Radiology IT service desk (ext. 4357).</div>"
    } else {
        ""
    };
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>PACS Web Viewer - Sign in</title>\n<style>body{{font-family:Segoe UI,Arial,sans-serif;background:#10243e;color:#fff}}.box{{width:340px;margin:120px auto;background:#1b3658;padding:28px;border-radius:6px}}input{{width:100%;padding:8px;margin:6px 0}}.error{{color:#ffb4b4;margin-bottom:10px}}small{{color:#9db3cf}}</style></head>\n<body><div class=\"box\"><h2>Enterprise Imaging</h2><p>PACS Web Viewer 7.4 &mdash; {address}</p>{message}\n<form method=\"post\" action=\"/login\"><label>User name</label><input name=\"username\" autocomplete=\"username\"><label>Password</label><input name=\"password\" type=\"password\" autocomplete=\"current-password\"><input type=\"submit\" value=\"Sign in\"></form>\n<small>Authorized use only. Access is monitored and recorded in accordance with hospital policy.</small></div></body></html>\n"
    )
}

fn capability_statement() -> String {
    let resources: Vec<serde_json::Value> = ["Patient", "ImagingStudy", "DiagnosticReport", "Observation", "Encounter", "Practitioner"]
        .iter()
        .map(|t| serde_json::json!({"type": t, "interaction": [{"code": "read"}, {"code": "search-type"}]}))
        .collect();
    serde_json::json!({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2026-03-02",
        "publisher": "General Hospital Enterprise Imaging",
        "kind": "instance",
        "software": {"name": "Imaging FHIR Gateway", "version": "4.2.1"},
        "implementation": {"description": "Radiology FHIR R4 endpoint"},
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "application/fhir+xml"],
        "rest": [{
            "mode": "server",
            "security": {
                "cors": true,
                "service": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/restful-security-service", "code": "SMART-on-FHIR"}]}]
            },
            "resource": resources
        }]
    })
    .to_string()
}

/// A response with nginx's headers, in nginx's order.
fn response(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let length = body.len();
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(SERVER, HeaderValue::from_static(SERVER_NAME));
    if let Ok(date) = HeaderValue::from_str(&httpdate::fmt_http_date(std::time::SystemTime::now()))
    {
        h.insert(DATE, date);
    }
    h.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(CONTENT_LENGTH, HeaderValue::from(length));
    r
}

/// nginx's own page for an error status, byte for byte.
pub fn nginx_page(status: StatusCode) -> String {
    let title = match status {
        StatusCode::UNAUTHORIZED => "401 Authorization Required".to_owned(),
        s => format!(
            "{} {}",
            s.as_u16(),
            s.canonical_reason().unwrap_or_default()
        ),
    };
    format!(
        "<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n<center><h1>{title}</h1></center>\r\n<hr><center>{SERVER_NAME}</center>\r\n</body>\r\n</html>\r\n"
    )
}

/// Whether `line` is a request line nginx would parse: a method of
/// capital letters, a target starting with `/` (or an absolute URL), and
/// `HTTP/1.x`. Pure, for fuzzing.
pub fn request_line_ok(line: &[u8]) -> bool {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let mut parts = line.split(|b| *b == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    !method.is_empty()
        && method.len() <= 16
        && method
            .iter()
            .all(|b| b.is_ascii_uppercase() || *b == b'_' || *b == b'-')
        && (target.starts_with(b"/")
            || target.starts_with(b"http://")
            || target.starts_with(b"https://"))
        && matches!(version, b"HTTP/1.0" | b"HTTP/1.1")
}

fn header(req: &Request<Incoming>, name: hyper::header::HeaderName) -> String {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.chars().take(256).collect())
        .unwrap_or_default()
}

async fn handle(
    req: Request<Incoming>,
    ctx: Arc<ServiceCtx>,
    peer: std::net::SocketAddr,
    presented_any: Arc<AtomicBool>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path: String = req.uri().path().chars().take(256).collect();
    let client = header(&req, USER_AGENT);
    let host = header(&req, HOST);
    let auth = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(authorization);
    let method = req.method().clone();
    let report = async |p: &Presented| {
        presented_any.store(true, Ordering::Relaxed);
        ctx.report(
            peer,
            "decoy-login",
            Some(PresentedCredential {
                username: p.username.clone(),
                password: p.password.clone(),
                token: p.token.clone(),
                client: client.clone(),
                host: host.clone(),
                ..Default::default()
            }),
            format!("{method} {path}"),
        )
        .await;
    };
    let fhir = path.ends_with("/metadata") || path.starts_with("/fhir");
    if let Some(p) = &auth {
        report(p).await;
        ctx.refusal_pause(Duration::from_millis(150)).await;
        let mut r = if fhir {
            response(
                StatusCode::UNAUTHORIZED,
                "application/fhir+json",
                r#"{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"login","diagnostics":"Invalid or expired access token"}]}"#.into(),
            )
        } else {
            response(
                StatusCode::UNAUTHORIZED,
                "text/html; charset=utf-8",
                login_page(&ctx.address, true),
            )
        };
        r.headers_mut().insert(
            WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"PACS\""),
        );
        return Ok(r);
    }
    if method == Method::POST && (path == "/login" || path == "/") {
        let body = Limited::new(req.into_body(), MAX_BODY).collect().await;
        let fields = body.map(|b| form_fields(&b.to_bytes())).unwrap_or_default();
        let get = |names: &[&str]| {
            fields
                .iter()
                .find(|(k, _)| names.iter().any(|n| k.eq_ignore_ascii_case(n)))
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        let presented = Presented {
            username: get(&["username", "user", "login", "j_username", "email"]),
            password: get(&["password", "pass", "pwd", "j_password"]),
            token: String::new(),
        };
        report(&presented).await;
        ctx.refusal_pause(Duration::from_millis(300)).await;
        return Ok(response(
            StatusCode::UNAUTHORIZED,
            "text/html; charset=utf-8",
            login_page(&ctx.address, true),
        ));
    }
    if !presented_any.swap(true, Ordering::Relaxed) {
        // The Host header can name a hosts-entry lure's alias.
        let seen = PresentedCredential {
            client: client.clone(),
            host: host.clone(),
            ..Default::default()
        };
        ctx.report(
            peer,
            "decoy-connection",
            Some(seen),
            format!("{method} {path}"),
        )
        .await;
    }
    Ok(match path.as_str() {
        "/" | "/login" | "/index.html" => response(StatusCode::OK, "text/html; charset=utf-8", login_page(&ctx.address, false)),
        p if p.ends_with("/metadata") => response(StatusCode::OK, "application/fhir+json", capability_statement()),
        p if p.starts_with("/fhir") => response(
            StatusCode::UNAUTHORIZED,
            "application/fhir+json",
            r#"{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"login","diagnostics":"Authentication required"}]}"#.into(),
        ),
        _ => response(
            StatusCode::NOT_FOUND,
            "text/html",
            nginx_page(StatusCode::NOT_FOUND),
        ),
    })
}

async fn serve_io<I>(mut io: I, ctx: Arc<ServiceCtx>, peer: std::net::SocketAddr)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use tokio::io::AsyncWriteExt;
    let read_timeout = ctx.limits.read_timeout;
    // The request line first: one nginx would refuse gets nginx's 400
    // (hyper's own answer to garbage would give the decoy away).
    let Some(mut first) = first_line(&mut io, read_timeout).await else {
        return;
    };
    let line = first.split(|b| *b == b'\n').next().unwrap_or_default();
    if !request_line_ok(line) {
        let body = nginx_page(StatusCode::BAD_REQUEST);
        let head = format!(
            "HTTP/1.1 400 Bad Request\r\nServer: {SERVER_NAME}\r\nDate: {}\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            httpdate::fmt_http_date(std::time::SystemTime::now()),
            body.len()
        );
        let _ = io.write_all(format!("{head}{body}").as_bytes()).await;
        ctx.report(
            peer,
            "decoy-message",
            None,
            format!(
                "malformed request line: {}",
                String::from_utf8_lossy(&line[..line.len().min(120)])
            ),
        )
        .await;
        return;
    }
    // nginx answers an HTTP/1.0 request with HTTP/1.1 (and closes unless
    // asked not to); hyper would answer HTTP/1.0, which gives it away. The
    // request is handed on as HTTP/1.1 and remembered as 1.0.
    let http10 = Arc::new(AtomicBool::new(false));
    let line_end = line.len();
    let version_at = line_end - usize::from(line.ends_with(b"\r")) - 8;
    if first.get(version_at..version_at + 8) == Some(b"HTTP/1.0") {
        first[version_at + 7] = b'1';
        http10.store(true, Ordering::Relaxed);
    }
    let presented = Arc::new(AtomicBool::new(false));
    let service = hyper::service::service_fn(move |req| {
        let (ctx, presented) = (ctx.clone(), presented.clone());
        let was_http10 = http10.swap(false, Ordering::Relaxed);
        async move {
            // nginx names the connection's fate on every response.
            let keep = keep_alive(&req, was_http10);
            let mut r = handle(req, ctx, peer, presented).await?;
            r.headers_mut().insert(
                CONNECTION,
                HeaderValue::from_static(if keep { "keep-alive" } else { "close" }),
            );
            Ok::<_, Infallible>(r)
        }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(read_timeout)
        .max_buf_size(32 << 10)
        .keep_alive(true)
        .title_case_headers(true)
        .serve_connection(TokioIo::new(Rewind::new(first, io)), service)
        .await;
}

/// What a client sent up to the end of its first line (and what came with
/// it), read within `timeout`: `None` if it sent nothing, or the read
/// failed or timed out. At most 8 KiB are read looking for the line.
pub(super) async fn first_line<I>(io: &mut I, timeout: Duration) -> Option<Vec<u8>>
where
    I: tokio::io::AsyncRead + Unpin,
{
    use tokio::io::AsyncReadExt;
    let mut first = Vec::with_capacity(512);
    let read = tokio::time::timeout(timeout, async {
        let mut chunk = [0u8; 512];
        while !first.contains(&b'\n') && first.len() < 8 << 10 {
            let n = io.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            first.extend_from_slice(&chunk[..n]);
        }
        Ok::<_, std::io::Error>(())
    })
    .await;
    (!first.is_empty() && matches!(read, Ok(Ok(())))).then_some(first)
}

/// The TLS side of a decoy connection, or `None` (reported) when the
/// handshake does not complete within the read timeout.
pub(super) async fn accept_tls(
    acceptor: &tokio_rustls::TlsAcceptor,
    conn: Conn,
) -> Option<(
    tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    Arc<ServiceCtx>,
    std::net::SocketAddr,
)> {
    let Conn {
        stream, peer, ctx, ..
    } = conn;
    match tokio::time::timeout(ctx.limits.read_timeout, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => Some((tls, ctx, peer)),
        _ => {
            ctx.report(
                peer,
                "decoy-connection",
                None,
                "TLS handshake did not complete".into(),
            )
            .await;
            None
        }
    }
}

/// Whether the connection stays open after this request (HTTP/1.1 unless
/// it says `close`; HTTP/1.0 only if it asks).
fn keep_alive(req: &Request<Incoming>, http10: bool) -> bool {
    let asked = |v: &str| {
        req.headers()
            .get(CONNECTION)
            .and_then(|h| h.to_str().ok())
            .is_some_and(|h| h.split(',').any(|t| t.trim().eq_ignore_ascii_case(v)))
    };
    if http10 || req.version() == hyper::Version::HTTP_10 {
        asked("keep-alive")
    } else {
        !asked("close")
    }
}

/// A stream that first yields bytes already read from it.
pub(super) struct Rewind<I> {
    read: Vec<u8>,
    at: usize,
    inner: I,
}

impl<I> Rewind<I> {
    pub(super) fn new(read: Vec<u8>, inner: I) -> Self {
        Rewind { read, at: 0, inner }
    }
}

impl<I: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Rewind<I> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if self.at < self.read.len() {
            let n = (self.read.len() - self.at).min(buf.remaining());
            let at = self.at;
            buf.put_slice(&self.read[at..at + n]);
            self.at += n;
            if self.at == self.read.len() {
                self.read = Vec::new();
                self.at = 0;
            }
            return std::task::Poll::Ready(Ok(()));
        }
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<I: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Rewind<I> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A plain connection whose write half is closed by closing the socket
/// when the connection ends, not by a `shutdown` first: hyper shuts the
/// write half down before it drops a finished connection, and the extra
/// system call sends the FIN that closing the socket sends anyway.
struct CloseOnDrop(tokio::net::TcpStream);

impl tokio::io::AsyncRead for CloseOnDrop {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for CloseOnDrop {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

/// The handler; with `tls`, a certificate for the decoy's address is made
/// once and kept in the decoy directory.
pub fn handler(ctx: &Arc<ServiceCtx>, tls: bool) -> Result<Handler, DecoyError> {
    if !tls {
        return Ok(Arc::new(|conn: Conn| {
            Box::pin(serve_io(CloseOnDrop(conn.stream), conn.ctx, conn.peer))
        }));
    }
    let config = tls_config(ctx)?;
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    Ok(Arc::new(move |conn: Conn| {
        let acceptor = acceptor.clone();
        Box::pin(async move {
            if let Some((tls, ctx, peer)) = accept_tls(&acceptor, conn).await {
                serve_io(tls, ctx, peer).await;
            }
        })
    }))
}

pub(super) fn tls_config(ctx: &ServiceCtx) -> Result<Arc<rustls::ServerConfig>, DecoyError> {
    tls_config_of(ctx, true)
}

/// As [`tls_config`], with TLS 1.3 only if `tls13`.
pub(super) fn tls_config_of(
    ctx: &ServiceCtx,
    tls13: bool,
) -> Result<Arc<rustls::ServerConfig>, DecoyError> {
    let path = ctx
        .dir
        .join(format!("{}-https-{}.pem", ctx.decoy, ctx.port));
    let (chain, key) = match std::fs::read_to_string(&path) {
        Ok(pem) => {
            let key = ruse_pki::PrivateKey::from_pem(&pem)
                .map_err(|e| DecoyError::Setup(e.to_string()))?;
            let chain = ruse_pki::pem_decode_certificates(&pem, &path.display().to_string())
                .map_err(|e| DecoyError::Setup(e.to_string()))?;
            (chain, key)
        }
        Err(_) => {
            let names = vec![ctx.address.clone(), ctx.decoy.clone()];
            let (cert, key) =
                ruse_pki::self_signed(&names).map_err(|e| DecoyError::Setup(e.to_string()))?;
            let pem = format!(
                "{}{}",
                key.to_pem(),
                ruse_pki::pem_encode("CERTIFICATE", &cert)
            );
            ruse_pki::write_private_file(&path, pem.as_bytes())
                .map_err(|e| DecoyError::Setup(e.to_string()))?;
            (vec![cert], key)
        }
    };
    ruse_pki::decoy_server_config_of(chain, key.to_der(), tls13)
        .map_err(|e| DecoyError::Setup(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_lines_nginx_takes_and_refuses() {
        for ok in [
            &b"GET / HTTP/1.1\r"[..],
            b"POST /login HTTP/1.0",
            b"GET http://pacs/x HTTP/1.1",
            b"PROPFIND /dav HTTP/1.1",
        ] {
            assert!(request_line_ok(ok), "{}", String::from_utf8_lossy(ok));
        }
        for bad in [
            &b"FOO"[..],
            b"get / HTTP/1.1",
            b"GET / HTTP/2.0",
            b"GET  / HTTP/1.1",
            b"GET index.html HTTP/1.1",
            b"\x16\x03\x01\x02",
            b"",
        ] {
            assert!(!request_line_ok(bad), "{}", String::from_utf8_lossy(bad));
        }
        assert!(
            nginx_page(StatusCode::NOT_FOUND)
                .starts_with("<html>\r\n<head><title>404 Not Found</title></head>")
        );
    }

    #[test]
    fn forms_and_authorization_decode() {
        let fields =
            form_fields(b"username=pacs.admin7k2m&password=Radiology2024%21Xq&remember=on");
        assert_eq!(fields[0], ("username".into(), "pacs.admin7k2m".into()));
        assert_eq!(fields[1], ("password".into(), "Radiology2024!Xq".into()));
        assert_eq!(
            form_fields(b"a=%zz&b=%4"),
            vec![("a".into(), "%zz".into()), ("b".into(), "%4".into())]
        );
        let basic = authorization("Basic cGFjczpzZWNyZXQ6d2l0aDpjb2xvbnM=");
        assert_eq!(
            (basic.username.as_str(), basic.password.as_str()),
            ("pacs", "secret:with:colons")
        );
        let bearer = authorization("Bearer eyJhbGciOiJSUzI1NiIsXYZ");
        assert_eq!(bearer.token, "eyJhbGciOiJSUzI1NiIsXYZ");
        assert_eq!(authorization("Basic !!!!").username, "");
    }
}

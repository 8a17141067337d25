//! An HTTP(S) login portal styled as a PACS web viewer, with a FHIR
//! `metadata` endpoint. Logins, Basic credentials and bearer tokens on any
//! path are captured and refused; nothing is ever granted.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{
    AUTHORIZATION, CONTENT_TYPE, HOST, HeaderValue, SERVER, USER_AGENT, WWW_AUTHENTICATE,
};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};

use ruse_proto::agent::v1 as pb;

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

fn response(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(SERVER, HeaderValue::from_static(SERVER_NAME));
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
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
            Some(pb::Credential {
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
        let seen = pb::Credential {
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
            "<html><head><title>404 Not Found</title></head><body><center><h1>404 Not Found</h1></center><hr><center>nginx/1.22.1</center></body></html>\n".into(),
        ),
    })
}

async fn serve_io<I>(io: I, ctx: Arc<ServiceCtx>, peer: std::net::SocketAddr)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let presented = Arc::new(AtomicBool::new(false));
    let read_timeout = ctx.limits.read_timeout;
    let service =
        hyper::service::service_fn(move |req| handle(req, ctx.clone(), peer, presented.clone()));
    let _ = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(read_timeout)
        .max_buf_size(32 << 10)
        .keep_alive(true)
        .serve_connection(TokioIo::new(io), service)
        .await;
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
            let Conn {
                stream, peer, ctx, ..
            } = conn;
            match tokio::time::timeout(ctx.limits.read_timeout, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => serve_io(tls, ctx, peer).await,
                _ => {
                    ctx.report(
                        peer,
                        "decoy-connection",
                        None,
                        "TLS handshake did not complete".into(),
                    )
                    .await
                }
            }
        })
    }))
}

fn tls_config(ctx: &ServiceCtx) -> Result<Arc<rustls::ServerConfig>, DecoyError> {
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
    ruse_pki::plain_server_config(chain, key.to_der()).map_err(|e| DecoyError::Setup(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

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

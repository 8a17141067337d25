//! A Kubernetes API server that authenticates no one, answering as
//! kube-apiserver does over TLS: `/version` and the health endpoints to
//! anyone (as the default `system:public-info-viewer` role allows),
//! `403 Forbidden` for everything else asked anonymously, and
//! `401 Unauthorized` for any bearer token or basic credentials — the
//! planted kubeconfig's token among them, which the controller matches.
//! Errors are the API's `Status` objects, with kube-apiserver's headers.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{AUTHORIZATION, HeaderValue, USER_AGENT};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};

use ruse_proto::convert::PresentedCredential;

use super::http::{Rewind, accept_tls, authorization, first_line, tls_config};
use super::{Conn, DecoyError, Handler, ServiceCtx};

/// The Kubernetes version the decoy claims.
pub const GIT_VERSION: &str = "v1.30.6";

/// What Go's `net/http` (kube-apiserver's server) answers a request it
/// cannot parse, before it hangs up.
pub const GO_BAD_REQUEST: &[u8] =
    b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n400 Bad Request";

/// Whether Go's `net/http` parses `line` as a request line: a method
/// token, a target, and `HTTP/1.0` or `HTTP/1.1`, separated by single
/// spaces. Pure, for fuzzing.
pub fn go_request_line_ok(line: &[u8]) -> bool {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let mut parts = line.splitn(3, |b| *b == b' ');
    let (Some(method), Some(target), Some(proto)) = (parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let token = |b: &u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(b);
    !method.is_empty()
        && method.iter().all(token)
        && !target.is_empty()
        && !target.contains(&b' ')
        && matches!(proto, b"HTTP/1.0" | b"HTTP/1.1")
}

/// What the API server answers `method` on `path` with, given whether
/// the request carried credentials. Pure, for fuzzing and tests.
pub fn answer(method: &str, path: &str, credentials: bool) -> (StatusCode, String) {
    if credentials {
        // Any token or password: none authenticates here.
        return (
            StatusCode::UNAUTHORIZED,
            status(401, "Unauthorized", "Unauthorized"),
        );
    }
    match (method, path) {
        ("GET", "/version" | "/version/") => (StatusCode::OK, version()),
        ("GET", "/healthz" | "/livez" | "/readyz") => (StatusCode::OK, "ok".into()),
        _ => {
            let verb = match method {
                "GET" | "HEAD" => "get",
                "POST" => "post",
                "PUT" => "put",
                "PATCH" => "patch",
                "DELETE" => "delete",
                "OPTIONS" => "options",
                _ => "get",
            };
            let shown: String = path
                .chars()
                .filter(|c| !c.is_control() && *c != '"' && *c != '\\')
                .take(256)
                .collect();
            (
                StatusCode::FORBIDDEN,
                status(
                    403,
                    "Forbidden",
                    &format!(
                        "forbidden: User \\\"system:anonymous\\\" cannot {verb} path \\\"{shown}\\\""
                    ),
                ),
            )
        }
    }
}

/// A `Status` object as kube-apiserver writes it (its field order; the
/// message already JSON-escaped).
fn status(code: u16, reason: &str, message: &str) -> String {
    if code == 401 {
        format!(
            "{{\"kind\":\"Status\",\"apiVersion\":\"v1\",\"metadata\":{{}},\"status\":\"Failure\",\"message\":\"{message}\",\"reason\":\"{reason}\",\"code\":{code}}}\n"
        )
    } else {
        format!(
            "{{\"kind\":\"Status\",\"apiVersion\":\"v1\",\"metadata\":{{}},\"status\":\"Failure\",\"message\":\"{message}\",\"reason\":\"{reason}\",\"details\":{{}},\"code\":{code}}}\n"
        )
    }
}

fn version() -> String {
    serde_json::to_string_pretty(&serde_json::json!({
        "major": "1",
        "minor": "30",
        "gitVersion": GIT_VERSION,
        "gitCommit": "fa3c9c7f7d7fd4b7bd2b3a0f6a0a9f3b8c3e1d52",
        "gitTreeState": "clean",
        "buildDate": "2024-10-22T20:28:14Z",
        "goVersion": "go1.22.8",
        "compiler": "gc",
        "platform": "linux/amd64"
    }))
    .unwrap_or_default()
}

fn response(code: StatusCode, body: String) -> Response<Full<Bytes>> {
    let json = body.starts_with('{');
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = code;
    let h = r.headers_mut();
    if let Ok(id) = HeaderValue::from_str(&ruse_proto::types::uuid4()) {
        h.insert("audit-id", id);
    }
    h.insert(
        "cache-control",
        HeaderValue::from_static("no-cache, private"),
    );
    h.insert(
        "content-type",
        HeaderValue::from_static(if json {
            "application/json"
        } else {
            "text/plain; charset=utf-8"
        }),
    );
    if code != StatusCode::UNAUTHORIZED {
        // Priority and fairness: set once a request is authenticated.
        for name in [
            "x-kubernetes-pf-flowschema-uid",
            "x-kubernetes-pf-prioritylevel-uid",
        ] {
            if let Ok(v) = HeaderValue::from_str(&ruse_proto::types::uuid4()) {
                h.insert(name, v);
            }
        }
    }
    r
}

async fn handle(
    req: Request<Incoming>,
    ctx: Arc<ServiceCtx>,
    peer: std::net::SocketAddr,
    reported: Arc<AtomicBool>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path: String = req.uri().path().chars().take(256).collect();
    let method = req.method().as_str().to_owned();
    let client: String = req
        .headers()
        .get(USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.chars().take(256).collect())
        .unwrap_or_default();
    let presented = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(authorization);
    let (code, body) = answer(&method, &path, presented.is_some());
    if let Some(p) = presented {
        // Every request of a client carries its token: one event per
        // connection is enough to name it.
        if !reported.swap(true, Ordering::Relaxed) {
            ctx.report(
                peer,
                "decoy-login",
                Some(PresentedCredential {
                    username: p.username,
                    password: p.password,
                    token: p.token,
                    client,
                    ..Default::default()
                }),
                format!("{method} {path}"),
            )
            .await;
        }
        ctx.refusal_pause(Duration::ZERO).await;
    } else if !reported.swap(true, Ordering::Relaxed) {
        ctx.report(
            peer,
            "decoy-connection",
            Some(PresentedCredential {
                client,
                ..Default::default()
            }),
            format!("{method} {path}"),
        )
        .await;
    }
    Ok(response(code, body))
}

/// The handler: TLS with a certificate for the decoy's address, made once
/// and kept in the decoy directory, then HTTP/1.1.
pub fn handler(ctx: &Arc<ServiceCtx>) -> Result<Handler, DecoyError> {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls_config(ctx)?);
    Ok(Arc::new(move |conn: Conn| {
        let acceptor = acceptor.clone();
        Box::pin(async move {
            let Some((mut tls, ctx, peer)) = accept_tls(&acceptor, conn).await else {
                return;
            };
            let read_timeout = ctx.limits.read_timeout;
            // The request line first: one Go would not parse gets Go's own
            // 400 (hyper's would tell a scanner it is not Go).
            let Some(first) = first_line(&mut tls, read_timeout).await else {
                ctx.report(peer, "decoy-connection", None, "TLS, then nothing".into())
                    .await;
                return;
            };
            let line = first.split(|b| *b == b'\n').next().unwrap_or_default();
            if !first.contains(&b'\n') || !go_request_line_ok(line) {
                use tokio::io::AsyncWriteExt;
                let _ = tls.write_all(GO_BAD_REQUEST).await;
                let _ = tls.shutdown().await;
                ctx.report(
                    peer,
                    "decoy-message",
                    None,
                    format!(
                        "not an HTTP request: {}",
                        String::from_utf8_lossy(&line[..line.len().min(120)])
                    ),
                )
                .await;
                return;
            }
            let reported = Arc::new(AtomicBool::new(false));
            let service = hyper::service::service_fn(move |req| {
                handle(req, ctx.clone(), peer, reported.clone())
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(read_timeout)
                .max_buf_size(32 << 10)
                .title_case_headers(true)
                .serve_connection(TokioIo::new(Rewind::new(first, tls)), service)
                .await;
        })
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anonymous_requests_get_the_version_or_a_forbidden_status() {
        let (code, body) = answer("GET", "/version", false);
        assert_eq!(code, StatusCode::OK);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["gitVersion"], GIT_VERSION);
        let (code, body) = answer("GET", "/api/v1/namespaces/default/pods", false);
        assert_eq!(code, StatusCode::FORBIDDEN);
        let s: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            s["message"],
            "forbidden: User \"system:anonymous\" cannot get path \"/api/v1/namespaces/default/pods\""
        );
        assert_eq!(s["code"], 403);
        // What a path says cannot break out of the JSON.
        let (_, body) = answer("DELETE", "/x\"y\\z\u{1}", false);
        assert!(
            serde_json::from_str::<serde_json::Value>(&body).is_ok(),
            "{body}"
        );
    }

    #[test]
    fn request_lines_go_parses_and_refuses() {
        for ok in [
            &b"GET / HTTP/1.1\r"[..],
            b"get /api HTTP/1.0",
            b"OPTIONS * HTTP/1.1",
        ] {
            assert!(go_request_line_ok(ok), "{}", String::from_utf8_lossy(ok));
        }
        for bad in [
            &b"OPTIONS / RTSP/1.0\r"[..],
            b"HELP",
            b"GET  / HTTP/1.1",
            b"GET / HTTP/2.0",
            b"\x16\x03\x01",
            b"",
        ] {
            assert!(!go_request_line_ok(bad), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn any_credentials_are_unauthorized() {
        let (code, body) = answer("GET", "/api", true);
        assert_eq!(code, StatusCode::UNAUTHORIZED);
        assert_eq!(
            body,
            "{\"kind\":\"Status\",\"apiVersion\":\"v1\",\"metadata\":{},\"status\":\"Failure\",\"message\":\"Unauthorized\",\"reason\":\"Unauthorized\",\"code\":401}\n"
        );
        assert_eq!(ruse_proto::types::uuid4().len(), 36);
    }
}

//! The web console: another edge beside `api/`, over the same core.
//!
//! HTTPS on `console_listen` with the controller's server certificate;
//! sign-in by a one-time link an admin gets from `rusectl console`
//! ([`crate::sessions`]); a session cookie that is `Secure`, `HttpOnly` and
//! `SameSite=Strict`, with idle and absolute limits; a CSRF token in every
//! form; roles checked on every request exactly as the gRPC API checks
//! them (the role is read from the store each time, so a changed or
//! removed admin takes effect at once); every action audited as the admin,
//! "via console". Pages are rendered on the server and escaped by
//! construction ([`html`]); the Content-Security-Policy allows no script at
//! all and only the console's own stylesheet.

mod events;
pub mod html;
mod operate;
pub mod pages;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::sync::watch;

use ruse_proto::types::{AdminName, Identity, Role};

use self::pages::Viewer;
use crate::core::{AuditEntry, Caller, Core};
use crate::incidents::IncidentFilter;
use crate::model::Status;
use crate::sessions::{self as session, Session};

/// The session cookie.
const COOKIE: &str = "ruse_console";
/// Incidents the queue shows at most.
const QUEUE_LIMIT: usize = 1000;
/// The longest a browser connection is kept.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(600);
/// How long a browser may take to send a request's headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest form accepted.
const MAX_FORM: usize = 8 * 1024;

const CSS: &str = include_str!("console.css");
/// The one script: live updates of the incident queue (progressive
/// enhancement; every page works without it).
const JS: &str = include_str!("console.js");
/// A comment sent on a quiet live stream, so proxies keep it open.
const KEEPALIVE: Duration = Duration::from_secs(15);

/// What every response carries: no script, nothing from elsewhere, never
/// framed or cached.
const CSP: &str = "default-src 'none'; script-src 'self'; connect-src 'self'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

#[derive(Debug, Clone)]
struct App {
    core: Arc<Core>,
    peer: SocketAddr,
}

fn router(app: App) -> Router {
    Router::new()
        .route("/", get(|| async { redirect("/incidents") }))
        .route("/signin", get(sign_in))
        .route("/signout", post(sign_out))
        .route("/incidents", get(queue))
        .route("/live/incidents", get(live))
        .route("/events", get(events::events))
        .route("/live/events", get(events::live))
        .route("/fleet", get(operate::fleet))
        .route("/audit", get(operate::audit))
        .route("/outputs", get(operate::outputs))
        .route("/campaigns", get(operate::campaigns))
        .route("/drill", post(operate::drill))
        .route("/campaigns/{name}/{action}", post(operate::rollout))
        .route("/incidents/{id}", get(incident))
        .route("/incidents/{id}/stix", get(stix))
        .route("/incidents/{id}/{action}", post(act))
        .route(
            "/static/console.css",
            get(|| async { ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], CSS) }),
        )
        .route(
            "/static/console.js",
            get(|| async {
                (
                    [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
                    JS,
                )
            }),
        )
        .fallback(|| async { not_found() })
        .with_state(app)
}

/// Serves the console on `listener` until `stop` turns true.
pub async fn serve(
    core: Arc<Core>,
    listener: tokio::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    mut stop: watch::Receiver<bool>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    loop {
        let (tcp, peer) = tokio::select! {
            () = async { let _ = stop.wait_for(|s| *s).await; } => return,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(error = %e, "console accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let acceptor = acceptor.clone();
        let app = App {
            core: core.clone(),
            peer,
        };
        tokio::spawn(async move {
            let Ok(Ok(tls)) = tokio::time::timeout(HEADER_TIMEOUT, acceptor.accept(tcp)).await
            else {
                return;
            };
            let router = router(app);
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let mut router = router.clone();
                async move {
                    let req = req.map(Body::new);
                    let mut resp = tower::Service::call(&mut router, req)
                        .await
                        .unwrap_or_else(|e| match e {});
                    secure(resp.headers_mut());
                    Ok::<_, std::convert::Infallible>(resp)
                }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(hyper_util::rt::TokioIo::new(tls), service);
            let _ = tokio::time::timeout(CONNECTION_LIFETIME, conn).await;
        });
    }
}

fn secure(headers: &mut HeaderMap) {
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::STRICT_TRANSPORT_SECURITY,
        HeaderValue::from_static("max-age=31536000"),
    );
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
}

fn html(status: StatusCode, body: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        body,
    )
        .into_response()
}

/// A path segment, percent-encoded.
fn encoded(segment: &str) -> String {
    percent_encoding::utf8_percent_encode(segment, percent_encoding::NON_ALPHANUMERIC).to_string()
}

fn not_found() -> Response {
    html(
        StatusCode::NOT_FOUND,
        pages::message("Not found", "There is no such page.", None),
    )
}

fn redirect(to: &str) -> Response {
    let mut r = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(to) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

/// A form body as text: at most [`MAX_FORM`] bytes of it.
fn form_text(body: &[u8]) -> String {
    String::from_utf8_lossy(&body[..body.len().min(MAX_FORM)]).into_owned()
}

/// A query or form parameter (`application/x-www-form-urlencoded`).
fn param(encoded: &str, key: &str) -> Option<String> {
    encoded.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(&s.replace('+', " "))
                .decode_utf8_lossy()
                .into_owned()
        };
        (decode(k) == key).then(|| decode(v))
    })
}

fn cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| c.trim().strip_prefix(COOKIE)?.strip_prefix('='))
        .map(str::to_owned)
}

/// A signed-in admin and their role now.
struct SignedIn {
    session: Session,
    role: Role,
}

/// Handlers that take a `SignedIn` answer only a signed-in browser; any
/// other request gets the page that says how to sign in.
impl axum::extract::FromRequestParts<App> for SignedIn {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        app: &App,
    ) -> Result<Self, Response> {
        app.signed_in(&parts.headers).map_err(|r| *r)
    }
}

impl SignedIn {
    fn viewer(&self) -> Viewer<'_> {
        Viewer {
            admin: self.session.admin.as_str(),
            role: self.role,
            csrf: &self.session.csrf,
        }
    }
}

impl App {
    /// The request's session and the admin's current role; otherwise the
    /// page that says how to sign in.
    fn signed_in(&self, headers: &HeaderMap) -> Result<SignedIn, Box<Response>> {
        let not_signed_in = || {
            Box::new(html(
                StatusCode::UNAUTHORIZED,
                pages::message(
                    "Not signed in",
                    "Sign in with a link from `rusectl console` (each link works once, for two minutes).",
                    None,
                ),
            ))
        };
        let id = cookie(headers).ok_or_else(not_signed_in)?;
        let session = self.core.console.check(&id).ok_or_else(not_signed_in)?;
        match self.core.admin_role(&session.admin) {
            Ok(Some(role)) => Ok(SignedIn { session, role }),
            _ => {
                self.core.console.end(&id);
                Err(not_signed_in())
            }
        }
    }

    fn caller(&self, admin: &AdminName) -> Caller {
        Caller {
            identity: Some(Identity::Admin(admin.clone())),
            peer: self.peer,
        }
    }

    async fn audit(&self, admin: &AdminName, action: &'static str, target: String, result: &str) {
        let entry = AuditEntry {
            action,
            target,
            detail: "via console".into(),
        };
        if let Err(e) = self.core.audit(&self.caller(admin), entry, result).await {
            tracing::error!(error = %e, action, "cannot audit a console action");
        }
    }

    /// A mutating request's signed-in admin, once its CSRF token and the
    /// admin's role are checked; a refusal is audited.
    async fn may_act(
        &self,
        headers: &HeaderMap,
        form: &str,
        action: &'static str,
        target: &str,
    ) -> Result<SignedIn, Box<Response>> {
        let who = self.signed_in(headers)?;
        let token = param(form, "csrf").unwrap_or_default();
        let refusal = if !session::same(&token, &who.session.csrf) {
            Some("refused: missing or wrong CSRF token")
        } else if who.role < Role::Operator {
            Some("refused: this needs the operator role")
        } else {
            None
        };
        match refusal {
            None => Ok(who),
            Some(why) => {
                tracing::warn!(admin = %who.session.admin, action, "console action refused");
                self.audit(&who.session.admin, action, target.to_owned(), why)
                    .await;
                Err(Box::new(html(
                    StatusCode::FORBIDDEN,
                    pages::message("Forbidden", why, Some(&who.viewer())),
                )))
            }
        }
    }
}

async fn sign_in(State(app): State<App>, req: Request<Body>) -> Response {
    let token = req
        .uri()
        .query()
        .and_then(|q| param(q, "t"))
        .unwrap_or_default();
    let Some((id, session)) = app.core.console.redeem(&token) else {
        return html(
            StatusCode::FORBIDDEN,
            pages::message(
                "This sign-in link does not work",
                "It was used already, has expired, or was mistyped. Run `rusectl console` for a new one.",
                None,
            ),
        );
    };
    app.audit(&session.admin, "console.signin", String::new(), "ok")
        .await;
    let mut r = redirect("/incidents");
    let cookie = format!("{COOKIE}={id}; Path=/; Secure; HttpOnly; SameSite=Strict");
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

async fn sign_out(State(app): State<App>, headers: HeaderMap, body: Bytes) -> Response {
    let form = form_text(&body);
    let Ok(who) = app.signed_in(&headers) else {
        return redirect("/incidents");
    };
    if !session::same(&param(&form, "csrf").unwrap_or_default(), &who.session.csrf) {
        return html(
            StatusCode::FORBIDDEN,
            pages::message("Forbidden", "missing or wrong CSRF token", None),
        );
    }
    if let Some(id) = cookie(&headers) {
        app.core.console.end(&id);
    }
    app.audit(&who.session.admin, "console.signout", String::new(), "ok")
        .await;
    let mut r = html(
        StatusCode::OK,
        pages::message(
            "Signed out",
            "Run `rusectl console` to sign in again.",
            None,
        ),
    );
    r.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static(
            "ruse_console=; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=0",
        ),
    );
    r
}

async fn queue(State(app): State<App>, who: SignedIn, req: Request<Body>) -> Response {
    let status = req
        .uri()
        .query()
        .and_then(|q| param(q, "status"))
        .unwrap_or_else(|| "unresolved".into());
    let min_severity = req
        .uri()
        .query()
        .and_then(|q| param(q, "severity"))
        .and_then(|s| {
            crate::model::Severity::ALL
                .into_iter()
                .find(|v| v.as_str() == s)
        });
    let agent = req
        .uri()
        .query()
        .and_then(|q| param(q, "agent"))
        .filter(|a| !a.is_empty());
    let filter = IncidentFilter {
        min_severity,
        status: match status.as_str() {
            "open" => Some(Status::Open),
            "acknowledged" => Some(Status::Acknowledged),
            "resolved" => Some(Status::Resolved),
            _ => None,
        },
        unresolved: !matches!(status.as_str(), "open" | "acknowledged" | "resolved"),
        ..IncidentFilter::default()
    };
    let shown = if filter.unresolved {
        "unresolved"
    } else {
        status.as_str()
    };
    let mut incidents = app.core.events.incidents.list(
        &filter,
        if agent.is_some() {
            usize::MAX
        } else {
            QUEUE_LIMIT
        },
    );
    if let Some(agent) = &agent {
        incidents.retain(|i| i.agents.iter().any(|a| a.as_str() == agent));
        incidents.truncate(QUEUE_LIMIT);
    }
    let rows_only = req.uri().query().and_then(|q| param(q, "part")).as_deref() == Some("rows");
    if rows_only {
        return html(StatusCode::OK, pages::queue_rows(&incidents).into_string());
    }
    let filters = pages::QueueFilters {
        status: shown,
        severity: min_severity.map_or("", |s| s.as_str()),
        agent: agent.as_deref().unwrap_or(""),
    };
    html(
        StatusCode::OK,
        pages::queue(&incidents, &filters, &who.viewer()),
    )
}

/// What a live page listens to: the id of the next thing that opened or
/// changed (empty when some were missed), or `None` when it ends.
trait Changes: Send + 'static {
    fn next(&mut self) -> impl Future<Output = Option<String>> + Send;
}

/// Incidents as they open or change.
struct IncidentChanges(tokio::sync::broadcast::Receiver<Arc<crate::model::Incident>>);

impl Changes for IncidentChanges {
    async fn next(&mut self) -> Option<String> {
        match self.0.recv().await {
            Ok(i) => Some(i.id.clone()),
            // Missed some: any change makes the page refresh.
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => Some(String::new()),
            Err(tokio::sync::broadcast::error::RecvError::Closed) => None,
        }
    }
}

/// Server-sent events, one `change` per item of `changes`, with
/// keepalives, until the browser leaves or the controller stops (the
/// browser reconnects after a drop).
fn event_stream(core: &Core, mut changes: impl Changes) -> Response {
    let mut closing = core.events.closing();
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::convert::Infallible>>(16);
    tokio::spawn(async move {
        // Tells the browser to reconnect after 2 s if the stream drops.
        if tx
            .send(Ok(Bytes::from_static(b"retry: 2000\n\n")))
            .await
            .is_err()
        {
            return;
        }
        loop {
            let chunk = tokio::select! {
                () = crate::stopped(&mut closing) => return,
                () = tokio::time::sleep(KEEPALIVE) => Bytes::from_static(b": keepalive\n\n"),
                changed = changes.next() => match changed {
                    Some(id) => Bytes::from(format!("event: change\ndata: {id}\n\n")),
                    None => return,
                },
            };
            if tx.send(Ok(chunk)).await.is_err() {
                return;
            }
        }
    });
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx)),
    )
        .into_response()
}

/// `GET /live/incidents`: incidents as they open or change.
async fn live(State(app): State<App>, _who: SignedIn) -> Response {
    event_stream(
        &app.core,
        IncidentChanges(app.core.events.incidents.subscribe()),
    )
}

async fn incident(State(app): State<App>, Path(id): Path<String>, who: SignedIn) -> Response {
    match app.core.events.incidents.get(&id) {
        Some(i) => html(StatusCode::OK, pages::incident(&i, &who.viewer())),
        None => html(
            StatusCode::NOT_FOUND,
            pages::message(
                "Not found",
                &format!("No incident {id}."),
                Some(&who.viewer()),
            ),
        ),
    }
}

/// `GET /incidents/{id}/stix`: the incident as a STIX 2.1 bundle to share
/// (names internal to the hospital redacted, as `rusectl export` does by
/// default), downloaded as a file.
async fn stix(State(app): State<App>, Path(id): Path<String>, _who: SignedIn) -> Response {
    let Some(incident) = app.core.events.incidents.get(&id) else {
        return not_found();
    };
    let producer = format!("Ruse ({})", app.core.ca.trust_domain());
    let bundle = crate::stix::bundle(
        std::slice::from_ref(&incident),
        &producer,
        ruse_proto::types::UnixMs::now(),
        crate::stix::Sharing::Redacted,
    );
    let body = serde_json::to_string_pretty(&bundle).unwrap_or_default();
    let file: String = id
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(64)
        .collect();
    let disposition = format!("attachment; filename=\"incident-{file}.stix.json\"");
    let mut r = (
        [(header::CONTENT_TYPE, "application/stix+json;version=2.1")],
        body,
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(&disposition) {
        r.headers_mut().insert(header::CONTENT_DISPOSITION, v);
    }
    r
}

/// Acknowledge (`ack`) or resolve (`resolve`, with a `note`) an incident.
async fn act(
    State(app): State<App>,
    Path((id, verb)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let action = match verb.as_str() {
        "ack" => "incident.ack",
        "resolve" => "incident.resolve",
        _ => return not_found(),
    };
    let form = form_text(&body);
    let target = format!("incident/{id}");
    let who = match app.may_act(&headers, &form, action, &target).await {
        Ok(w) => w,
        Err(r) => return *r,
    };
    let by = format!("admin/{}", who.session.admin);
    let result = if verb == "ack" {
        app.core.acknowledge_incident(&id, &by).await
    } else {
        let note: String = param(&form, "note")
            .unwrap_or_default()
            .chars()
            .take(1024)
            .collect();
        app.core.resolve_incident(&id, &by, &note).await
    };
    let back = format!("/incidents/{}", encoded(&id));
    finish(&app, &who, action, target, &back, result.map(|_| ())).await
}

/// Audits an action's outcome and answers: back to `back`, or why it
/// failed.
async fn finish<E: std::fmt::Display>(
    app: &App,
    who: &SignedIn,
    action: &'static str,
    target: String,
    back: &str,
    result: Result<(), E>,
) -> Response {
    let outcome = result
        .as_ref()
        .map_or_else(ToString::to_string, |_| "ok".into());
    app.audit(&who.session.admin, action, target, &outcome)
        .await;
    match result {
        Ok(()) => redirect(back),
        Err(e) => html(
            StatusCode::CONFLICT,
            pages::message("Not done", &e.to_string(), Some(&who.viewer())),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_and_cookies_are_read() {
        assert_eq!(
            param("csrf=a%2Bb&note=two+words", "note").as_deref(),
            Some("two words")
        );
        assert_eq!(param("csrf=a%2Bb&note=x", "csrf").as_deref(), Some("a+b"));
        assert_eq!(param("csrf", "csrf").as_deref(), Some(""));
        assert_eq!(param("a=b", "csrf"), None);
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("x=1; ruse_console=abc; y=2"),
        );
        assert_eq!(cookie(&h).as_deref(), Some("abc"));
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("ruse_consolex=abc"),
        );
        assert_eq!(cookie(&h), None);
    }
}

//! The console's event stream: the most recent lure events with the
//! filters of `rusectl get events` (agent, lure, kind), updated live as
//! `rusectl watch events` would show them.

use axum::body::Body;
use axum::extract::State;
use axum::http::{Request, StatusCode};
use axum::response::{IntoResponse, Response};

use ruse_proto::types::AgentId;

use super::html::Html;
use super::pages::{Viewer, page, time};
use super::{App, Changes, SignedIn, event_stream, html, param};
use crate::events::{EventFilter, WatchItem};
use crate::model::StoredEvent;

/// Events the page shows.
const PAGE: usize = 200;

/// The filter in a query string, and the query string that says it again.
fn filter(query: &str) -> Result<(EventFilter, String), String> {
    let get = |k: &str| param(query, k).filter(|v| !v.is_empty());
    let agent = match get("agent") {
        Some(a) => Some(
            a.parse::<AgentId>()
                .map_err(|e| format!("agent {a:?}: {e}"))?,
        ),
        None => None,
    };
    let filter = EventFilter {
        agent,
        lure: get("lure"),
        kind: get("kind"),
        since: None,
    };
    let mut again = Vec::new();
    for (k, v) in [
        ("agent", filter.agent.as_ref().map(ToString::to_string)),
        ("lure", filter.lure.clone()),
        ("kind", filter.kind.clone()),
    ] {
        if let Some(v) = v {
            again.push(format!("{k}={}", super::encoded(&v)));
        }
    }
    Ok((filter, again.join("&")))
}

/// `GET /events`: the form, and the rows (alone with `part=rows`).
pub(super) async fn events(State(app): State<App>, who: SignedIn, req: Request<Body>) -> Response {
    let query = req.uri().query().unwrap_or("").to_owned();
    let (filter, again) = match filter(&query) {
        Ok(f) => f,
        Err(why) => {
            return html(
                StatusCode::BAD_REQUEST,
                super::pages::message("Bad filter", &why, Some(&who.viewer())),
            );
        }
    };
    let stored = match app.core.events.query(&filter, None, PAGE) {
        Ok(s) => s,
        Err(e) => {
            return html(
                StatusCode::SERVICE_UNAVAILABLE,
                super::pages::message("Events unavailable", &e.to_string(), Some(&who.viewer())),
            );
        }
    };
    let hostname = |a: &AgentId| {
        app.core
            .fleet
            .record(a)
            .map(|r| r.facts.hostname.clone())
            .unwrap_or_default()
    };
    let rows = rows(&stored, &hostname);
    if param(&query, "part").as_deref() == Some("rows") {
        return html(StatusCode::OK, rows.into_string());
    }
    html(
        StatusCode::OK,
        events_page(&filter, &again, rows, &who.viewer()),
    )
}

/// New events a filter matches.
struct EventChanges {
    watch: crate::events::EventWatch,
    core: std::sync::Arc<crate::core::Core>,
}

impl Changes for EventChanges {
    async fn next(&mut self) -> Option<String> {
        match self.watch.next(&self.core.events).await {
            Ok(Some(WatchItem::Event(e) | WatchItem::Other(e))) => Some(e.id.clone()),
            Ok(Some(_)) => Some(String::new()),
            Ok(None) | Err(_) => None,
        }
    }
}

/// `GET /live/events`: server-sent events, one per new event the filter
/// matches.
pub(super) async fn live(State(app): State<App>, _who: SignedIn, req: Request<Body>) -> Response {
    let Ok((filter, _)) = filter(req.uri().query().unwrap_or("")) else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    let changes = EventChanges {
        watch: app.core.events.watch(filter, None),
        core: app.core.clone(),
    };
    event_stream(&app.core, changes)
}

/// Where an event happened: the planted file, or the decoy and who
/// reached it.
fn place(e: &StoredEvent) -> String {
    match &e.decoy {
        Some(d) => format!(
            "decoy {} {}/{} from {}:{}",
            d.name, d.protocol, d.port, d.source_ip, d.source_port
        ),
        None => e.path.clone(),
    }
}

/// Who did it: the process, or what was presented at a decoy.
fn actor(e: &StoredEvent) -> String {
    if let Some(p) = &e.process {
        return format!("{} (pid {}, user {}): {}", p.exe, p.pid, p.user, p.cmdline);
    }
    match &e.credential {
        Some(c) if !c.username.is_empty() => format!("user {}", c.username),
        Some(c) if !c.ae_title.is_empty() => format!("AE title {}", c.ae_title),
        Some(c) if !c.key_fingerprint.is_empty() => format!("key {}", c.key_fingerprint),
        _ => String::new(),
    }
}

fn rows(events: &[StoredEvent], hostname: &dyn Fn(&AgentId) -> String) -> Html {
    let mut h = Html::new();
    if events.is_empty() {
        h.raw("<p class=\"empty\">No events.</p>");
        return h;
    }
    h.raw("<table class=\"events\"><thead><tr><th>Received</th><th>Agent</th><th>Kind</th><th>Template</th><th>Where</th><th>Who</th><th>Detail</th></tr></thead><tbody>");
    for e in events.iter().rev() {
        h.raw("<tr><td>");
        time(&mut h, e.received);
        h.raw("</td><td>")
            .text(&hostname(&e.agent))
            .raw("<br><code>")
            .text(e.agent.as_str())
            .raw("</code></td><td>")
            .text(&e.kind);
        if e.allowed {
            h.raw("<br><small>allowed: ")
                .text(&e.allow_rule)
                .raw("</small>");
        }
        h.raw("</td><td>")
            .text(&e.template)
            .raw("</td><td><code>")
            .text(&place(e))
            .raw("</code></td><td><code>")
            .text(&actor(e))
            .raw("</code></td><td>")
            .text(&e.detail)
            .raw("</td></tr>");
    }
    h.raw("</tbody></table>");
    h
}

fn events_page(filter: &EventFilter, again: &str, rows: Html, viewer: &Viewer<'_>) -> String {
    let mut h = Html::new();
    h.raw("<h1>Events</h1><form class=\"filters\" method=\"get\" action=\"/events\">");
    for (name, label, value) in [
        (
            "agent",
            "Agent id",
            filter.agent.as_ref().map(ToString::to_string),
        ),
        ("lure", "Lure id", filter.lure.clone()),
        ("kind", "Kind", filter.kind.clone()),
    ] {
        h.raw("<label>")
            .text(label)
            .raw(" <input name=\"")
            .text(name)
            .raw("\" value=\"")
            .text(&value.unwrap_or_default())
            .raw("\"></label> ");
    }
    h.raw("<button type=\"submit\">Filter</button></form><p class=\"facts\">The ")
        .num(PAGE as u64)
        .raw(" most recent, newest first; new ones appear as they arrive.</p><div id=\"rows\" data-live=\"/live/events?")
        .text(again)
        .raw("\" aria-live=\"polite\">")
        .append(rows)
        .raw("</div>");
    page("Events", Some(viewer), h)
}

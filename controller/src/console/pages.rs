//! The console's pages, rendered on the server from the same incidents the
//! gRPC API serves. Every value from an incident goes through
//! [`Html::text`]; severity is always written as a word beside its colour.

use ruse_proto::types::{Role, UnixMs};

use super::html::Html;
use crate::model::{Incident, Status};

/// Who is looking, for what the page offers.
#[derive(Debug, Clone)]
pub struct Viewer<'a> {
    pub admin: &'a str,
    pub role: Role,
    pub csrf: &'a str,
}

impl Viewer<'_> {
    /// Whether this viewer may acknowledge and resolve.
    pub fn may_act(&self) -> bool {
        self.role >= Role::Operator
    }
}

pub(super) fn time(h: &mut Html, t: UnixMs) {
    h.raw("<time>").text(&t.rfc3339()).raw("</time>");
}

/// The page around `body`.
pub fn page(title: &str, viewer: Option<&Viewer<'_>>, body: Html) -> String {
    let mut h = Html::new();
    h.raw("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">")
        .raw("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">")
        .raw("<title>")
        .text(title)
        .raw(" · Ruse</title><link rel=\"stylesheet\" href=\"/static/console.css\"><script src=\"/static/console.js\" defer></script></head><body>")
        .raw("<header><a class=\"brand\" href=\"/incidents\">Ruse</a><nav><a href=\"/incidents\">Incidents</a> <a href=\"/events\">Events</a> <a href=\"/fleet\">Fleet</a> <a href=\"/campaigns\">Campaigns</a> <a href=\"/outputs\">Outputs</a> <a href=\"/audit\">Audit</a></nav>");
    if let Some(v) = viewer {
        h.raw("<form class=\"who\" method=\"post\" action=\"/signout\"><span>")
            .text(v.admin)
            .raw(" (")
            .text(v.role.as_str())
            .raw(")</span><input type=\"hidden\" name=\"csrf\" value=\"")
            .text(v.csrf)
            .raw("\"><button type=\"submit\">Sign out</button></form>");
    }
    h.raw("</header><main>")
        .append(body)
        .raw("</main></body></html>\n");
    h.into_string()
}

/// A message page (sign-in refused, not found, forbidden).
pub fn message(title: &str, text: &str, viewer: Option<&Viewer<'_>>) -> String {
    let mut body = Html::new();
    body.raw("<h1>")
        .text(title)
        .raw("</h1><p>")
        .text(text)
        .raw("</p>");
    page(title, viewer, body)
}

fn severity(h: &mut Html, i: &Incident) {
    h.raw("<span class=\"sev sev-")
        .text(i.severity.as_str())
        .raw("\">")
        .text(i.severity.as_str())
        .raw("</span>");
}

/// The statuses the queue filters by.
pub const FILTERS: [(&str, &str); 4] = [
    ("unresolved", "Open and acknowledged"),
    ("open", "Open"),
    ("acknowledged", "Acknowledged"),
    ("resolved", "Resolved"),
];

/// What the queue is filtered by.
#[derive(Debug, Clone, Copy)]
pub struct QueueFilters<'a> {
    /// One of [`FILTERS`].
    pub status: &'a str,
    /// A minimum severity, or empty.
    pub severity: &'a str,
    /// An agent id, or empty.
    pub agent: &'a str,
}

/// The incident queue: most recently seen first, with its filters.
pub fn queue(incidents: &[Incident], f: &QueueFilters<'_>, viewer: &Viewer<'_>) -> String {
    let mut h = Html::new();
    h.raw("<h1>Incidents</h1><nav class=\"filters\" aria-label=\"Status\">");
    for (key, label) in FILTERS {
        h.raw("<a href=\"/incidents?status=").text(key).raw("\"");
        if key == f.status {
            h.raw(" aria-current=\"page\"");
        }
        h.raw(">").text(label).raw("</a> ");
    }
    h.raw("</nav><form class=\"filters\" method=\"get\" action=\"/incidents\"><input type=\"hidden\" name=\"status\" value=\"")
        .text(f.status)
        .raw("\"><label>At least <select name=\"severity\"><option value=\"\">any severity</option>");
    for s in crate::model::Severity::ALL {
        h.raw("<option");
        if s.as_str() == f.severity {
            h.raw(" selected");
        }
        h.raw(">").text(s.as_str()).raw("</option>");
    }
    h.raw("</select></label> <label>Agent id <input name=\"agent\" value=\"")
        .text(f.agent)
        .raw("\"></label> <button type=\"submit\">Filter</button></form>")
        .raw("<div id=\"queue\" data-live=\"/live/incidents?\" aria-live=\"polite\">")
        .append(queue_rows(incidents))
        .raw("</div>");
    page("Incidents", Some(viewer), h)
}

/// The queue's table (what live updates replace).
pub fn queue_rows(incidents: &[Incident]) -> Html {
    let mut h = Html::new();
    if incidents.is_empty() {
        h.raw("<p class=\"empty\">No incidents.</p>");
        return h;
    }
    h.raw("<table class=\"queue\"><thead><tr><th>Severity</th><th>Status</th><th>Title</th><th>Hosts and sources</th><th>Last seen</th><th>Events</th></tr></thead><tbody>");
    for i in incidents {
        h.raw("<tr><td>");
        severity(&mut h, i);
        h.raw("</td><td>")
            .text(i.status.as_str())
            .raw("</td><td><a href=\"/incidents/")
            .text(&i.id)
            .raw("\">")
            .text(&i.title)
            .raw("</a>");
        if i.drill {
            h.raw(" <span class=\"tag\">drill</span>");
        }
        h.raw("</td><td>");
        let hops: Vec<&str> = i.path.iter().map(|p| p.name.as_str()).collect();
        h.text(&hops.join(" → ")).raw("</td><td>");
        time(&mut h, i.last_seen);
        h.raw("</td><td>").num(i.event_count).raw("</td></tr>");
    }
    h.raw("</tbody></table>");
    h
}

/// The attack path as an SVG graph: one box per hop, left to right, each
/// arrow labelled with when the next hop was reached.
fn path_svg(h: &mut Html, i: &Incident) {
    const W: u64 = 240;
    const GAP: u64 = 70;
    const BOX_H: u64 = 74;
    let n = i.path.len() as u64;
    if n == 0 {
        return;
    }
    let width = n * W + (n - 1) * GAP + 2;
    h.raw("<svg class=\"path\" role=\"img\" aria-label=\"Attack path\" viewBox=\"0 0 ")
        .num(width)
        .raw(" 110\" width=\"")
        .num(width)
        .raw("\" height=\"110\"><defs><marker id=\"arrow\" viewBox=\"0 0 10 10\" refX=\"10\" refY=\"5\" markerWidth=\"8\" markerHeight=\"8\" orient=\"auto\"><path d=\"M0,0 L10,5 L0,10 z\"/></marker></defs>");
    for (k, hop) in i.path.iter().enumerate() {
        let x = 1 + k as u64 * (W + GAP);
        h.raw("<g class=\"hop hop-")
            .text(&hop.kind)
            .raw("\"><rect x=\"")
            .num(x)
            .raw("\" y=\"18\" width=\"")
            .num(W)
            .raw("\" height=\"")
            .num(BOX_H)
            .raw("\" rx=\"6\"/><text x=\"")
            .num(x + 10)
            .raw("\" y=\"40\" class=\"kind\">")
            .text(&hop.kind)
            .raw("</text><text x=\"")
            .num(x + 10)
            .raw("\" y=\"60\" class=\"name\">")
            .text(&clip(&hop.name, 30))
            .raw("</text><text x=\"")
            .num(x + 10)
            .raw("\" y=\"80\" class=\"what\">")
            .text(&clip(&hop.what, 34))
            .raw("</text><title>")
            .text(&format!("{} {}: {}", hop.kind, hop.name, hop.what))
            .raw("</title></g>");
        if let Some(next) = i.path.get(k + 1) {
            let x1 = x + W;
            h.raw("<line class=\"edge\" x1=\"")
                .num(x1)
                .raw("\" y1=\"55\" x2=\"")
                .num(x1 + GAP)
                .raw("\" y2=\"55\" marker-end=\"url(#arrow)\"/>");
            let (label, about) = edge_label(i, &next.kind);
            h.raw("<text class=\"edge-label\" x=\"")
                .num(x1 + GAP / 2)
                .raw("\" y=\"48\" text-anchor=\"middle\">")
                .text(&label)
                .raw("<title>")
                .text(&about)
                .raw("</title></text>");
        }
    }
    h.raw("</svg>");
}

/// What an edge into a hop of `kind` stands for: the ATT&CK technique (a
/// short label) and, in its tooltip, the technique's name and the lure or
/// planted credential behind it.
fn edge_label(i: &Incident, kind: &str) -> (String, String) {
    // Into a source: a credential harvested from a lure; into a decoy: it
    // was used there; into a host: a lure was touched on it.
    let prefixes: &[&str] = match kind {
        "source" => &["T1552"],
        "decoy" => &["T1078", "T1021", "T1110", "T1046"],
        _ => &["T1005", "T1552", "T1018"],
    };
    let technique = i
        .techniques
        .iter()
        .find(|t| prefixes.iter().any(|p| t.starts_with(p)))
        .cloned()
        .unwrap_or_default();
    let what = match kind {
        "decoy" => i.matched.iter().next().or(i.lures.iter().next()),
        _ => i.lures.iter().next(),
    }
    .cloned()
    .unwrap_or_default();
    let about = format!(
        "{technique} {}{}{what}",
        crate::stix::technique_name(&technique),
        if what.is_empty() { "" } else { " — " }
    );
    (technique, about.trim().to_owned())
}

/// `s` cut to `max` characters, with an ellipsis when cut.
fn clip(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_owned()
    } else {
        s.chars().take(max - 1).chain(['…']).collect()
    }
}

fn list(h: &mut Html, title: &'static str, items: &std::collections::BTreeSet<String>) {
    if items.is_empty() {
        return;
    }
    h.raw("<section><h3>").raw(title).raw("</h3><ul>");
    for item in items {
        h.raw("<li><code>").text(item).raw("</code></li>");
    }
    h.raw("</ul></section>");
}

/// One incident: what it is, its path, what was used, the timeline and
/// where it was delivered; the actions the viewer may take.
pub fn incident(i: &Incident, viewer: &Viewer<'_>) -> String {
    let mut h = Html::new();
    h.raw("<p><a href=\"/incidents\">← Incidents</a></p><h1>")
        .text(&i.title)
        .raw("</h1><p class=\"facts\">");
    severity(&mut h, i);
    h.raw(" <span class=\"status\">")
        .text(i.status.as_str())
        .raw("</span> · ")
        .num(i.event_count)
        .raw(if i.event_count == 1 {
            " event · first seen "
        } else {
            " events · first seen "
        });
    time(&mut h, i.first_seen);
    h.raw(" · last seen ");
    time(&mut h, i.last_seen);
    h.raw(" · <code>").text(&i.id).raw("</code></p>");
    if !i.acknowledged_by.is_empty() {
        h.raw("<p>Acknowledged by ")
            .text(&i.acknowledged_by)
            .raw("</p>");
    }
    if i.status == Status::Resolved {
        h.raw("<p>Resolved by ")
            .text(&i.resolved_by)
            .raw(": ")
            .text(&i.resolution)
            .raw("</p>");
    }
    if viewer.may_act() && i.status != Status::Resolved {
        h.raw("<section class=\"actions\">");
        if i.status == Status::Open {
            h.raw("<form method=\"post\" action=\"/incidents/")
                .text(&i.id)
                .raw("/ack\"><input type=\"hidden\" name=\"csrf\" value=\"")
                .text(viewer.csrf)
                .raw("\"><button type=\"submit\">Acknowledge</button></form>");
        }
        h.raw("<form method=\"post\" action=\"/incidents/")
            .text(&i.id)
            .raw("/resolve\"><input type=\"hidden\" name=\"csrf\" value=\"")
            .text(viewer.csrf)
            .raw("\"><label>Note <input name=\"note\" required maxlength=\"1024\"></label> <button type=\"submit\">Resolve</button></form></section>");
    }
    h.raw("<p><a class=\"button\" href=\"/incidents/")
        .text(&i.id)
        .raw("/stix\" download>Export STIX 2.1</a></p><h2>Attack path</h2>");
    path_svg(&mut h, i);
    h.raw("<h2>What was involved</h2><div class=\"facts-grid\">");
    let techniques: std::collections::BTreeSet<String> = i
        .techniques
        .iter()
        .map(|t| format!("{t} {}", crate::stix::technique_name(t)))
        .collect();
    list(&mut h, "ATT&amp;CK techniques", &techniques);
    list(&mut h, "Planted credentials used", &i.matched);
    list(&mut h, "Lures", &i.lures);
    list(&mut h, "Decoys", &i.decoys);
    list(&mut h, "Sources", &i.sources);
    list(&mut h, "Processes", &i.processes);
    h.raw("</div><h2>Timeline</h2><table class=\"timeline\"><thead><tr><th>When</th><th>Agent</th><th>Kind</th><th>What</th></tr></thead><tbody>");
    for e in i.timeline.iter() {
        h.raw("<tr><td>");
        time(&mut h, e.at);
        h.raw("</td><td><code>")
            .text(e.agent.as_str())
            .raw("</code></td><td>")
            .text(&e.kind)
            .raw("</td><td>")
            .text(&e.summary)
            .raw("</td></tr>");
    }
    h.raw("</tbody></table>");
    if !i.deliveries.is_empty() {
        h.raw("<h2>Outputs</h2><table><thead><tr><th>Output</th><th>State</th><th>Attempts</th><th>Last error</th></tr></thead><tbody>");
        for (name, d) in &i.deliveries {
            h.raw("<tr><td>")
                .text(name)
                .raw("</td><td>")
                .text(&d.state)
                .raw("</td><td>")
                .num(d.attempts)
                .raw("</td><td>")
                .text(&d.last_error)
                .raw("</td></tr>");
        }
        h.raw("</tbody></table>");
    }
    page(&i.title, Some(viewer), h)
}

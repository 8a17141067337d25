//! The console's pages for running the deployment: the fleet and its
//! coverage (and drills), campaigns and their rollouts (pause, resume,
//! abort), decoys and who runs them, outputs, and the audit log.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use ruse_proto::types::UnixMs;

use super::html::Html;
use super::pages::{self, Viewer, page, time};
use super::{App, SignedIn, encoded, finish, form_text, html, not_found};
use crate::deploy::RolloutAction;

/// Audit records the audit page shows.
const AUDIT_LIMIT: usize = 500;

/// Every agent not deleted, with what it runs and how the fleet is covered.
pub(super) async fn fleet(State(app): State<App>, who: SignedIn) -> Response {
    let core = &app.core;
    let mut lures: std::collections::HashMap<String, usize> = Default::default();
    for l in core.deploy.lures(None, None, false).unwrap_or_default() {
        *lures.entry(l.lure.agent.to_string()).or_default() += 1;
    }
    let decoys = core.deploy.decoys();
    // Agents renew at about 70 % of a certificate's life: with a quarter
    // left, one has not.
    let now = UnixMs::now();
    let overdue_within = core.config.agent_cert_ttl / 4;
    let mut rows: Vec<FleetRow> = core
        .fleet
        .list(&Default::default())
        .into_iter()
        .filter(|a| a.record.deleted.is_none())
        .map(|a| {
            let r = &a.record;
            let id = r.id.to_string();
            FleetRow {
                lures: lures.get(&id).copied().unwrap_or(0),
                decoys: decoys
                    .iter()
                    .filter(|d| a.state.as_str() != "revoked" && a.labels.matches(&d.selector))
                    .map(|d| d.name.clone())
                    .collect(),
                site: a.labels.get("site").unwrap_or("—").to_owned(),
                labels: a.labels.to_string(),
                hostname: r.facts.hostname.clone(),
                state: a.state.as_str(),
                os: r.facts.os.clone(),
                version: r.facts.agent_version.clone(),
                last_seen: r.last_seen,
                cert_not_after: r.cert_not_after,
                cert_overdue: r.cert_not_after.0 - now.0
                    < i64::try_from(overdue_within.as_millis()).unwrap_or(i64::MAX),
                problems: a.health.problems.clone(),
                id,
            }
        })
        .collect();
    rows.sort_by(|a, b| a.hostname.cmp(&b.hostname).then(a.id.cmp(&b.id)));
    html(StatusCode::OK, fleet_page(&rows, &who.viewer()))
}

/// The audit log's most recent records.
pub(super) async fn audit(State(app): State<App>, who: SignedIn) -> Response {
    match app.core.store.audit(UnixMs(0), None, AUDIT_LIMIT) {
        Ok(records) => html(StatusCode::OK, audit_page(&records, &who.viewer())),
        Err(e) => html(
            StatusCode::SERVICE_UNAVAILABLE,
            pages::message("Audit log unavailable", &e.to_string(), Some(&who.viewer())),
        ),
    }
}

/// One agent as the fleet page shows it.
#[derive(Debug, Clone)]
pub struct FleetRow {
    pub id: String,
    pub hostname: String,
    pub state: &'static str,
    pub os: String,
    pub labels: String,
    pub version: String,
    pub last_seen: UnixMs,
    pub lures: usize,
    pub decoys: Vec<String>,
    pub cert_not_after: UnixMs,
    /// Its certificate is past the point where the agent renews it (a
    /// quarter of its lifetime left): the agent is not renewing.
    pub cert_overdue: bool,
    pub problems: Vec<String>,
    /// The `site` label (or "—").
    pub site: String,
}

/// The fleet: coverage at a glance, then every agent.
fn fleet_page(agents: &[FleetRow], viewer: &Viewer<'_>) -> String {
    let mut h = Html::new();
    h.raw("<h1>Fleet</h1>");
    let count = |f: &dyn Fn(&FleetRow) -> bool| agents.iter().filter(|a| f(a)).count() as u64;
    let active = |a: &FleetRow| a.state != "revoked";
    h.raw("<dl class=\"summary\">");
    for (label, n) in [
        ("Agents", count(&active)),
        ("Online", count(&|a| a.state == "online")),
        ("Degraded", count(&|a| a.state == "degraded")),
        ("Offline", count(&|a| a.state == "offline")),
        ("Without lures", count(&|a| active(a) && a.lures == 0)),
        (
            "Certificates not renewed in time",
            count(&|a| active(a) && a.cert_overdue),
        ),
    ] {
        h.raw("<div><dt>")
            .text(label)
            .raw("</dt><dd>")
            .num(n)
            .raw("</dd></div>");
    }
    h.raw("</dl><h2>Coverage by site</h2><table><thead><tr><th>Site</th><th>Agents</th><th>With lures</th><th>Without lures</th><th>Running decoys</th><th>Offline or degraded</th></tr></thead><tbody>");
    let mut sites: std::collections::BTreeMap<&str, [u64; 5]> = Default::default();
    for a in agents.iter().filter(|a| active(a)) {
        let s = sites.entry(a.site.as_str()).or_default();
        s[0] += 1;
        s[if a.lures > 0 { 1 } else { 2 }] += 1;
        s[3] += u64::from(!a.decoys.is_empty());
        s[4] += u64::from(a.state != "online");
    }
    for (site, n) in &sites {
        h.raw("<tr><td>").text(site).raw("</td>");
        for v in n {
            h.raw("<td>").num(*v).raw("</td>");
        }
        h.raw("</tr>");
    }
    h.raw("</tbody></table><h2>Agents</h2><table class=\"fleet\"><thead><tr><th>Host</th><th>State</th><th>OS</th><th>Labels</th><th>Version</th><th>Last seen</th><th>Lures</th><th>Decoys</th><th>Certificate until</th>");
    if viewer.may_act() {
        h.raw("<th>Drill</th>");
    }
    h.raw("</tr></thead><tbody>");
    for a in agents {
        h.raw("<tr><td>")
            .text(&a.hostname)
            .raw("<br><code>")
            .text(&a.id)
            .raw("</code></td><td><span class=\"state state-")
            .text(a.state)
            .raw("\">")
            .text(a.state)
            .raw("</span>");
        for p in &a.problems {
            h.raw("<br><small>").text(p).raw("</small>");
        }
        h.raw("</td><td>")
            .text(&a.os)
            .raw("</td><td><code>")
            .text(&a.labels)
            .raw("</code></td><td>")
            .text(&a.version)
            .raw("</td><td>");
        time(&mut h, a.last_seen);
        h.raw("</td><td>")
            .num(a.lures as u64)
            .raw("</td><td>")
            .text(&a.decoys.join(", "))
            .raw("</td><td>");
        time(&mut h, a.cert_not_after);
        if a.state != "revoked" && a.cert_overdue {
            h.raw(" <strong>(not renewed)</strong>");
        }
        h.raw("</td>");
        if viewer.may_act() {
            h.raw("<td>");
            if a.state == "online" && a.lures > 0 {
                h.raw("<form method=\"post\" action=\"/drill\"><input type=\"hidden\" name=\"csrf\" value=\"")
                    .text(viewer.csrf)
                    .raw("\"><input type=\"hidden\" name=\"agent\" value=\"")
                    .text(&a.id)
                    .raw("\"><button type=\"submit\">Drill</button></form>");
            }
            h.raw("</td>");
        }
        h.raw("</tr>");
    }
    h.raw("</tbody></table>");
    page("Fleet", Some(viewer), h)
}

/// The audit log, newest first.
fn audit_page(records: &[crate::model::AuditRecord], viewer: &Viewer<'_>) -> String {
    let mut h = Html::new();
    h.raw("<h1>Audit log</h1><table class=\"audit\"><thead><tr><th>When</th><th>Who</th><th>From</th><th>Action</th><th>Target</th><th>Result</th><th>Detail</th></tr></thead><tbody>");
    for r in records.iter().rev() {
        h.raw("<tr><td>");
        time(&mut h, r.at);
        h.raw("</td><td>")
            .text(&r.actor)
            .raw("</td><td>")
            .text(&r.peer)
            .raw("</td><td>")
            .text(&r.action)
            .raw("</td><td>")
            .text(&r.target)
            .raw("</td><td>")
            .text(&r.result)
            .raw("</td><td>")
            .text(&r.detail)
            .raw("</td></tr>");
    }
    h.raw("</tbody></table>");
    page("Audit log", Some(viewer), h)
}

/// Campaigns with their rollouts, then decoys and who runs them.
pub(super) async fn campaigns(State(app): State<App>, who: SignedIn) -> Response {
    let core = &app.core;
    let campaigns: Vec<_> = core
        .deploy
        .campaign_names()
        .iter()
        .filter_map(|n| core.deploy.campaign(n))
        .collect();
    let decoys: Vec<(crate::model::Decoy, Vec<String>)> = core
        .deploy
        .decoys()
        .into_iter()
        .map(|d| {
            let mut hosts: Vec<String> = core
                .fleet
                .list(&d.selector)
                .into_iter()
                .filter(|a| a.record.revoked.is_none() && a.record.deleted.is_none())
                .map(|a| format!("{} ({})", a.record.facts.hostname, a.state.as_str()))
                .collect();
            hosts.sort();
            (d, hosts)
        })
        .collect();
    html(
        StatusCode::OK,
        campaigns_page(&campaigns, &decoys, &who.viewer()),
    )
}

/// Pause, resume or abort a campaign's rollout.
pub(super) async fn rollout(
    State(app): State<App>,
    Path((name, verb)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (action, audited) = match verb.as_str() {
        "pause" => (RolloutAction::Pause, "rollout.pause"),
        "resume" => (RolloutAction::Resume, "rollout.resume"),
        "abort" => (RolloutAction::Abort, "rollout.abort"),
        _ => return not_found(),
    };
    let form = form_text(&body);
    let target = format!("campaign/{name}");
    let who = match app.may_act(&headers, &form, audited, &target).await {
        Ok(w) => w,
        Err(r) => return *r,
    };
    let by = format!("admin/{}", who.session.admin);
    let result = app.core.deploy.rollout_action(&name, action, &by).await;
    let back = format!("/campaigns#campaign-{}", encoded(&name));
    finish(&app, &who, audited, target, &back, result).await
}

fn campaigns_page(
    campaigns: &[crate::deploy::CampaignStatus],
    decoys: &[(crate::model::Decoy, Vec<String>)],
    viewer: &Viewer<'_>,
) -> String {
    use crate::model::RolloutState;
    let mut h = Html::new();
    h.raw("<h1>Campaigns</h1>");
    if campaigns.is_empty() {
        h.raw("<p class=\"empty\">No campaigns. Apply one with <code>rusectl apply -f</code>.</p>");
    }
    for c in campaigns {
        let r = &c.record;
        let spec = &r.target.spec;
        h.raw("<section class=\"campaign\" id=\"campaign-")
            .text(&spec.name)
            .raw("\"><h2>")
            .text(&spec.name)
            .raw("</h2><p>")
            .text(&spec.description)
            .raw("</p><p class=\"facts\">Selector <code>")
            .text(&spec.selector.to_string())
            .raw("</code> · ")
            .num(c.matching as u64)
            .raw(" agents match · ")
            .num(spec.lures.len() as u64)
            .raw(" lures each · generation ")
            .num(r.target.number)
            .raw(" · rollout <strong>")
            .text(r.rollout.name())
            .raw("</strong>");
        match &r.rollout {
            RolloutState::Paused { reason, .. } => {
                h.raw(": ").text(reason);
            }
            RolloutState::Aborted { by } => {
                h.raw(" by ").text(by);
            }
            _ => {}
        }
        h.raw("</p><table class=\"waves\"><thead><tr><th>Wave</th><th>Progress</th><th>Applied</th><th>Failed</th><th>Pending</th><th>Offline</th><th>Unreachable</th></tr></thead><tbody>");
        for (n, w) in c.waves.iter().enumerate() {
            h.raw("<tr><td>")
                .num(n as u64 + 1)
                .raw(" (")
                .num(w.percent)
                .raw("%)");
            if !w.released {
                h.raw(" <small>not released</small>");
            }
            h.raw("</td><td><progress max=\"")
                .num(w.agents.max(1) as u64)
                .raw("\" value=\"")
                .num(w.acked as u64)
                .raw("\">")
                .num(w.acked as u64)
                .raw("</progress></td><td>")
                .num(w.acked as u64)
                .raw(" of ")
                .num(w.agents as u64)
                .raw("</td><td>")
                .num(w.failed as u64)
                .raw("</td><td>")
                .num(w.pending as u64)
                .raw("</td><td>")
                .num(w.offline as u64)
                .raw("</td><td>")
                .num(w.unreachable as u64)
                .raw("</td></tr>");
            for e in &w.errors {
                h.raw("<tr class=\"error\"><td></td><td colspan=\"6\">")
                    .text(e)
                    .raw("</td></tr>");
            }
        }
        h.raw("</tbody></table>");
        if viewer.may_act() {
            let actions: &[(&str, &str)] = match r.rollout {
                RolloutState::Progressing => &[("pause", "Pause"), ("abort", "Abort")],
                RolloutState::Paused { .. } => &[("resume", "Resume"), ("abort", "Abort")],
                RolloutState::Completed | RolloutState::Aborted { .. } => &[],
            };
            if !actions.is_empty() {
                h.raw("<div class=\"actions\">");
            }
            for (verb, label) in actions {
                h.raw("<form method=\"post\" action=\"/campaigns/")
                    .text(&encoded(&spec.name))
                    .raw("/")
                    .text(verb)
                    .raw("\"><input type=\"hidden\" name=\"csrf\" value=\"")
                    .text(viewer.csrf)
                    .raw("\"><button type=\"submit\">")
                    .text(label)
                    .raw("</button></form>");
            }
            if !actions.is_empty() {
                h.raw("</div>");
            }
        }
        h.raw("</section>");
    }
    h.raw("<h1>Decoys</h1>");
    if decoys.is_empty() {
        h.raw("<p class=\"empty\">No decoys.</p>");
    }
    h.raw("<table><thead><tr><th>Decoy</th><th>Address</th><th>Services</th><th>Run by</th></tr></thead><tbody>");
    for (d, hosts) in decoys {
        let services: Vec<String> = d
            .services
            .iter()
            .map(|s| format!("{} {}", s.protocol, s.port))
            .collect();
        h.raw("<tr><td>")
            .text(&d.name)
            .raw("</td><td>")
            .text(&d.address)
            .raw("</td><td>")
            .text(&services.join(", "))
            .raw("</td><td>")
            .text(&if hosts.is_empty() {
                "no agent".to_owned()
            } else {
                hosts.join(", ")
            })
            .raw("</td></tr>");
    }
    h.raw("</tbody></table>");
    page("Campaigns", Some(viewer), h)
}

/// Where the streamed steps of a drill go in its page.
const STEPS: &str = "<!--drill steps-->";

/// `POST /drill`: an operator's drill of one agent; the page shows each
/// step as it happens (the response is streamed, no script needed).
pub(super) async fn drill(State(app): State<App>, headers: HeaderMap, body: Bytes) -> Response {
    let form = form_text(&body);
    let agent_text = super::param(&form, "agent").unwrap_or_default();
    let target = format!("agent/{agent_text}");
    let who = match app.may_act(&headers, &form, "drill.run", &target).await {
        Ok(w) => w,
        Err(r) => return *r,
    };
    let picked = agent_text
        .parse::<ruse_proto::types::AgentId>()
        .map_err(|e| e.to_string())
        .and_then(|agent| {
            crate::drill_run::pick_lure(&app.core, &agent, "")
                .map(|lure| (agent, lure))
                .map_err(|e| e.to_string())
        });
    let outcome = picked
        .as_ref()
        .map_or_else(Clone::clone, |_| "ok".to_owned());
    app.audit(&who.session.admin, "drill.run", target, &outcome)
        .await;
    let (agent, lure) = match picked {
        Ok(p) => p,
        Err(why) => {
            return html(
                StatusCode::CONFLICT,
                pages::message("No drill", &why, Some(&who.viewer())),
            );
        }
    };
    let mut body = Html::new();
    body.raw("<h1>Drill</h1><p class=\"facts\">Agent <code>")
        .text(agent.as_str())
        .raw("</code>, lure <code>")
        .text(&lure)
        .raw("</code>: the agent trips it for real; each step appears as it happens.</p><ol class=\"drill\">")
        .raw(STEPS)
        .raw("</ol><p><a href=\"/fleet\">← Fleet</a></p>");
    let whole = page("Drill", Some(&who.viewer()), body);
    let (head, tail) = whole.split_once(STEPS).unwrap_or((&whole, ""));
    let (head, tail) = (head.to_owned(), tail.to_owned());
    let (steps_tx, mut steps) = tokio::sync::mpsc::channel(16);
    tokio::spawn(crate::drill_run::run(
        app.core.clone(),
        agent,
        lure,
        steps_tx,
    ));
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::convert::Infallible>>(16);
    tokio::spawn(async move {
        if tx.send(Ok(Bytes::from(head))).await.is_err() {
            return;
        }
        while let Some(s) = steps.recv().await {
            let mut li = Html::new();
            li.raw("<li class=\"")
                .raw(if s.ok { "ok" } else { "failed" })
                .raw("\"><strong>")
                .text(&s.step)
                .raw("</strong> ")
                .raw(if s.ok { "✓ ok" } else { "✗ failed" })
                .raw(" <small>")
                .num(s.elapsed_ms)
                .raw(" ms</small> ")
                .text(&s.detail);
            if s.done {
                li.raw("<br><strong>")
                    .raw(if s.passed {
                        "The drill passed."
                    } else {
                        "The drill failed."
                    })
                    .raw("</strong>");
                if !s.incident_id.is_empty() {
                    li.raw(" <a href=\"/incidents/")
                        .text(&encoded(&s.incident_id))
                        .raw("\">Its incident</a>");
                }
            }
            li.raw("</li>\n");
            if tx.send(Ok(Bytes::from(li.into_string()))).await.is_err() {
                return;
            }
        }
        let _ = tx.send(Ok(Bytes::from(tail))).await;
    });
    (
        [(axum::http::header::CONTENT_TYPE, "text/html; charset=utf-8")],
        axum::body::Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx)),
    )
        .into_response()
}

/// `GET /outputs`: each output with its queue, deliveries and failures.
pub(super) async fn outputs(State(app): State<App>, who: SignedIn) -> Response {
    let outputs = app.core.events.outputs.status();
    let mut h = Html::new();
    h.raw("<h1>Outputs</h1>");
    if outputs.is_empty() {
        h.raw("<p class=\"empty\">No outputs: incidents are only in the console and <code>rusectl</code>. Configure them in the controller's configuration (docs/incidents.md).</p>");
    } else {
        h.raw("<p class=\"facts\">Counts since the controller started; the queue is durable.</p><table><thead><tr><th>Output</th><th>Kind</th><th>Queued</th><th>Delivered</th><th>Failed attempts</th><th>Last delivery</th><th>Last failure</th></tr></thead><tbody>");
        for o in &outputs {
            h.raw("<tr><td>")
                .text(&o.name)
                .raw("</td><td>")
                .text(&o.kind)
                .raw("</td><td>")
                .num(o.queued as u64);
            if o.queued > 0 && o.last_error.is_empty() {
                h.raw(" <small>(delivering)</small>");
            }
            h.raw("</td><td>")
                .num(o.delivered)
                .raw("</td><td>")
                .num(o.failures)
                .raw("</td><td>");
            match o.last_delivered {
                Some(t) => time(&mut h, t),
                None => {
                    h.raw("—");
                }
            }
            h.raw("</td><td>");
            match o.last_failed {
                Some(t) => {
                    time(&mut h, t);
                    h.raw("<br>").text(&o.last_error);
                }
                None => {
                    h.raw("—");
                }
            }
            h.raw("</td></tr>");
        }
        h.raw("</tbody></table>");
    }
    html(StatusCode::OK, page("Outputs", Some(&who.viewer()), h))
}

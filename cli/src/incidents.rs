//! `rusectl` incident commands: list, describe (timeline and attack path
//! drawn in the terminal), acknowledge, resolve, watch, export (STIX),
//! suppressions and drills.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::bail;
use serde::Serialize;
use tonic::transport::Channel;

use ruse_proto::admin::v1 as pb;
use ruse_proto::admin::v1::admin_service_client::AdminServiceClient;
use ruse_proto::types::{UnixMs, parse_duration};

use crate::listing::{self, Listed};
use crate::output::{self, Format};

type Client = AdminServiceClient<Channel>;

/// An incident as printed with `-o json|yaml`.
#[derive(Debug, Serialize)]
pub struct Incident {
    pub id: String,
    pub title: String,
    pub severity: String,
    pub status: String,
    pub drill: bool,
    pub first_seen: String,
    pub last_seen: String,
    pub events: u64,
    pub attack_path: Vec<Hop>,
    pub techniques: Vec<String>,
    pub rules: Vec<String>,
    pub agents: Vec<String>,
    pub decoys: Vec<String>,
    pub sources: Vec<String>,
    pub lures: Vec<String>,
    pub processes: Vec<String>,
    pub credentials: Vec<String>,
    pub timeline: Vec<Entry>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub acknowledged_by: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub resolved_by: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub resolution: String,
    pub deliveries: BTreeMap<String, Delivery>,
}

#[derive(Debug, Serialize)]
pub struct Hop {
    pub kind: String,
    pub name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub agent: String,
    pub first_seen: String,
    pub what: String,
}

#[derive(Debug, Serialize)]
pub struct Entry {
    pub at: String,
    pub agent: String,
    pub kind: String,
    pub summary: String,
    pub event: String,
}

#[derive(Debug, Serialize)]
pub struct Delivery {
    pub state: String,
    pub attempts: u32,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub last_error: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub delivered: String,
}

impl From<&pb::Incident> for Incident {
    fn from(i: &pb::Incident) -> Self {
        Incident {
            id: i.id.clone(),
            title: i.title.clone(),
            severity: i.severity.clone(),
            status: i.status.clone(),
            drill: i.drill,
            first_seen: output::time(i.first_seen_ms),
            last_seen: output::time(i.last_seen_ms),
            events: i.event_count,
            attack_path: i
                .path
                .iter()
                .map(|h| Hop {
                    kind: h.kind.clone(),
                    name: h.name.clone(),
                    agent: h.agent_id.clone(),
                    first_seen: output::time(h.first_seen_ms),
                    what: h.what.clone(),
                })
                .collect(),
            techniques: i.techniques.clone(),
            rules: i.rules.clone(),
            agents: i.agents.clone(),
            decoys: i.decoys.clone(),
            sources: i.sources.clone(),
            lures: i.lures.clone(),
            processes: i.processes.clone(),
            credentials: i.credentials.clone(),
            timeline: i
                .timeline
                .iter()
                .map(|t| Entry {
                    at: output::time(t.at_ms),
                    agent: t.agent_id.clone(),
                    kind: t.kind.clone(),
                    summary: t.summary.clone(),
                    event: t.event_id.clone(),
                })
                .collect(),
            acknowledged_by: i.acknowledged_by.clone(),
            resolved_by: i.resolved_by.clone(),
            resolution: i.resolution.clone(),
            deliveries: i
                .deliveries
                .iter()
                .map(|d| {
                    (
                        d.output.clone(),
                        Delivery {
                            state: d.state.clone(),
                            attempts: d.attempts,
                            last_error: d.last_error.clone(),
                            delivered: if d.delivered_ms > 0 {
                                output::time(d.delivered_ms)
                            } else {
                                String::new()
                            },
                        },
                    )
                })
                .collect(),
        }
    }
}

pub fn path_line(i: &pb::Incident) -> String {
    i.path
        .iter()
        .map(|h| h.name.clone())
        .collect::<Vec<_>>()
        .join(" → ")
}

/// Filters of `get incidents`.
#[derive(clap::Args, Debug)]
pub struct ListArgs {
    /// open, acknowledged or resolved (default: open and acknowledged).
    #[arg(long)]
    pub status: Option<String>,
    /// Resolved incidents too.
    #[arg(long, conflicts_with = "status")]
    pub all: bool,
    /// At least this severe: low, medium, high, critical.
    #[arg(long)]
    pub severity: Option<String>,
    /// Only incidents seen in this last stretch of time (e.g. 24h, 7d).
    #[arg(long)]
    pub since: Option<String>,
    /// Include drill incidents.
    #[arg(long)]
    pub drills: bool,
    #[arg(long, default_value_t = 100)]
    pub limit: u32,
}

fn since_ms(since: &Option<String>) -> anyhow::Result<i64> {
    Ok(match since {
        Some(s) => UnixMs::now().saturating_sub(parse_duration(s)?).0,
        None => 0,
    })
}

pub async fn list(client: &mut Client, format: Format, args: ListArgs) -> anyhow::Result<()> {
    let incidents = client
        .list_incidents(pb::ListIncidentsRequest {
            status: match (args.status, args.all) {
                (Some(s), _) => s,
                (None, true) => String::new(),
                (None, false) => "unresolved".into(),
            },
            min_severity: args.severity.unwrap_or_default(),
            since_ms: since_ms(&args.since)?,
            include_drills: args.drills,
            limit: args.limit,
        })
        .await?
        .into_inner()
        .incidents;
    listing::print(format, &incidents)
}

/// The attack path as boxes and arrows, one hop per line.
pub fn draw_path(i: &pb::Incident) -> String {
    let mut out = String::new();
    for (n, h) in i.path.iter().enumerate() {
        let label = match h.kind.as_str() {
            "host" => "host   ",
            "source" => "source ",
            "decoy" => "decoy  ",
            _ => "       ",
        };
        let name = format!("{label} {}", h.name);
        let width = name.chars().count().max(h.what.chars().count()) + 2;
        out.push_str(&format!("  ┌{}┐\n", "─".repeat(width)));
        out.push_str(&format!("  │ {name:<w$} │\n", w = width - 2));
        out.push_str(&format!("  │ {:<w$} │\n", h.what, w = width - 2));
        out.push_str(&format!("  └{}┘\n", "─".repeat(width)));
        if n + 1 < i.path.len() {
            out.push_str(&format!(
                "      │  {}\n      ▼\n",
                output::time(i.path[n + 1].first_seen_ms)
            ));
        }
    }
    out
}

pub fn describe(format: Format, i: &pb::Incident) -> anyhow::Result<()> {
    if matches!(format, Format::Json | Format::Yaml) {
        return output::structured(format, &Incident::from(i));
    }
    println!("Incident:     {}", i.id);
    println!("Title:        {}", i.title);
    println!(
        "Severity:     {}{}",
        i.severity.to_uppercase(),
        if i.drill { "   (DRILL)" } else { "" }
    );
    println!("Status:       {}", i.status);
    if !i.acknowledged_by.is_empty() {
        println!("Acknowledged: by {}", i.acknowledged_by);
    }
    if !i.resolved_by.is_empty() {
        println!("Resolved:     by {}: {}", i.resolved_by, i.resolution);
    }
    println!(
        "Seen:         {} to {} ({} events)",
        output::time(i.first_seen_ms),
        output::time(i.last_seen_ms),
        i.event_count
    );
    println!(
        "Rules:        {}",
        if i.rules.is_empty() {
            "-".to_owned()
        } else {
            i.rules.join(", ")
        }
    );
    println!("ATT&CK:       {}", i.techniques.join(", "));
    if !i.sources.is_empty() {
        println!("Sources:      {}", i.sources.join(", "));
    }
    if !i.credentials.is_empty() {
        println!("Credentials:  {}", i.credentials.join(", "));
    }
    if !i.lures.is_empty() {
        println!("Lures:        {}", i.lures.join(", "));
    }
    println!("\nAttack path:  {}\n", path_line(i));
    print!("{}", draw_path(i));
    println!("\nTimeline:");
    let rows: Vec<Vec<String>> = i
        .timeline
        .iter()
        .map(|t| vec![output::time(t.at_ms), t.kind.clone(), t.summary.clone()])
        .collect();
    output::table(&["AT", "KIND", "WHAT"], &rows);
    if (i.event_count as usize) > i.timeline.len() {
        println!(
            "({} more events: rusectl get events --since …)",
            i.event_count as usize - i.timeline.len()
        );
    }
    println!("\nDelivered to:");
    if i.deliveries.is_empty() {
        println!("  (no outputs)");
    }
    for d in &i.deliveries {
        let when = if d.delivered_ms > 0 {
            format!(" at {}", output::time(d.delivered_ms))
        } else {
            String::new()
        };
        let error = if d.last_error.is_empty() {
            String::new()
        } else {
            format!(" — last error: {}", d.last_error)
        };
        println!(
            "  {:<16} {}{when} ({} attempts){error}",
            d.output, d.state, d.attempts
        );
    }
    Ok(())
}

pub async fn watch(client: &mut Client, format: Format, drills: bool) -> anyhow::Result<()> {
    let mut stream = client
        .watch_incidents(pb::WatchIncidentsRequest {
            include_drills: drills,
        })
        .await?
        .into_inner();
    let wide = format == Format::Wide;
    if matches!(format, Format::Table | Format::Wide) {
        println!("{}", <pb::Incident as Listed>::columns(wide).join("\t"));
    }
    while let Some(item) = stream.message().await? {
        if item.missed > 0 {
            eprintln!(
                "({} updates missed: this terminal read too slowly)",
                item.missed
            );
        }
        let Some(i) = item.incident else { continue };
        match format {
            Format::Json => println!("{}", serde_json::to_string(&Incident::from(&i))?),
            Format::Yaml => {
                output::structured(format, &Incident::from(&i))?;
                println!("---");
            }
            _ => println!("{}", i.cells(wide).join("\t")),
        }
    }
    Ok(())
}

/// `rusectl export incidents`.
#[derive(clap::Args, Debug)]
pub struct ExportArgs {
    /// Only stix (STIX 2.1 JSON bundle).
    #[arg(long, default_value = "stix")]
    format: String,
    /// Incidents seen in this last stretch of time (e.g. 7d).
    #[arg(long)]
    since: Option<String>,
    /// Include drill incidents.
    #[arg(long)]
    drills: bool,
    /// Keep internal names (hosts, decoys, lures, the attack path, planted
    /// credentials): for your own tools, not for sharing. By default the
    /// bundle carries techniques, decoy kinds and the attacker's indicators
    /// only.
    #[arg(long)]
    internal: bool,
    /// Write here instead of stdout.
    #[arg(long = "file", short = 'f')]
    file: Option<PathBuf>,
}

pub async fn export(client: &mut Client, args: ExportArgs) -> anyhow::Result<()> {
    if args.format != "stix" {
        bail!("--format {}: only stix is supported", args.format);
    }
    let r = client
        .export_incidents(pb::ExportIncidentsRequest {
            format: args.format,
            since_ms: since_ms(&args.since)?,
            include_drills: args.drills,
            include_internal: args.internal,
        })
        .await?
        .into_inner();
    match args.file {
        Some(path) => {
            std::fs::write(&path, r.content.as_bytes())?;
            eprintln!(
                "wrote a STIX 2.1 bundle of {} incidents to {}",
                r.incidents,
                path.display()
            );
        }
        None => println!("{}", r.content),
    }
    Ok(())
}

pub async fn outputs(client: &mut Client, format: Format) -> anyhow::Result<()> {
    let outputs = client
        .list_outputs(pb::ListOutputsRequest {})
        .await?
        .into_inner()
        .outputs;
    if outputs.is_empty() && matches!(format, Format::Table | Format::Wide) {
        eprintln!("no outputs are configured ([[outputs]] in the controller's config)");
        return Ok(());
    }
    listing::print(format, &outputs)
}

pub async fn suppressions(client: &mut Client, format: Format) -> anyhow::Result<()> {
    let suppressions = client
        .list_suppressions(pb::ListSuppressionsRequest {})
        .await?
        .into_inner()
        .suppressions;
    listing::print(format, &suppressions)
}

/// Runs a drill, printing each step as it happens; fails if any step did.
pub async fn drill(
    client: &mut Client,
    format: Format,
    agent: String,
    lure: Option<String>,
) -> anyhow::Result<()> {
    let mut stream = client
        .drill(pb::DrillRequest {
            agent_id: agent,
            lure_id: lure.unwrap_or_default(),
        })
        .await?
        .into_inner();
    #[derive(Serialize)]
    struct Step {
        step: String,
        ok: bool,
        elapsed_ms: u64,
        detail: String,
    }
    let mut steps = Vec::new();
    let mut failed = Vec::new();
    let mut passed = false;
    let mut incident = String::new();
    while let Some(s) = stream.message().await? {
        if !s.incident_id.is_empty() {
            incident = s.incident_id.clone();
        }
        if s.done {
            passed = s.passed;
            break;
        }
        if matches!(format, Format::Table | Format::Wide) {
            println!(
                "{} {:>6} ms  {:<20} {}",
                if s.ok { "✔" } else { "✘" },
                s.elapsed_ms,
                s.step,
                s.detail
            );
        }
        if !s.ok {
            failed.push(format!("{}: {}", s.step, s.detail));
        }
        steps.push(Step {
            step: s.step,
            ok: s.ok,
            elapsed_ms: s.elapsed_ms,
            detail: s.detail,
        });
    }
    match format {
        Format::Json | Format::Yaml => {
            #[derive(Serialize)]
            struct Drill {
                passed: bool,
                incident: String,
                steps: Vec<Step>,
            }
            output::structured(
                format,
                &Drill {
                    passed,
                    incident: incident.clone(),
                    steps,
                },
            )?;
        }
        _ => {
            if passed {
                println!("drill passed (incident {incident}, marked as a drill everywhere)");
            }
        }
    }
    if !passed {
        bail!("drill failed: {}", failed.join("; "));
    }
    Ok(())
}

/// `incident/ID` or `ID`.
fn incident_id(s: &str) -> String {
    s.strip_prefix("incident/").unwrap_or(s).to_owned()
}

/// `rusectl describe incident ID`.
pub async fn show(client: &mut Client, format: Format, id: &str) -> anyhow::Result<()> {
    let i = client
        .get_incident(pb::GetIncidentRequest {
            id: incident_id(id),
        })
        .await?
        .into_inner();
    describe(format, &i)
}

/// `rusectl ack incident ID`.
pub async fn ack(client: &mut Client, format: Format, id: &str) -> anyhow::Result<()> {
    let i = client
        .ack_incident(pb::AckIncidentRequest {
            id: incident_id(id),
        })
        .await?
        .into_inner();
    match format {
        Format::Json | Format::Yaml => output::structured(format, &Incident::from(&i)),
        _ => {
            println!("incident/{} acknowledged by {}", i.id, i.acknowledged_by);
            Ok(())
        }
    }
}

/// `rusectl resolve incident ID --note …`.
pub async fn resolve(
    client: &mut Client,
    format: Format,
    id: &str,
    note: String,
) -> anyhow::Result<()> {
    let i = client
        .resolve_incident(pb::ResolveIncidentRequest {
            id: incident_id(id),
            note,
        })
        .await?
        .into_inner();
    match format {
        Format::Json | Format::Yaml => output::structured(format, &Incident::from(&i)),
        _ => {
            println!("incident/{} resolved by {}", i.id, i.resolved_by);
            Ok(())
        }
    }
}

/// `rusectl delete suppression NAME`.
pub async fn delete_suppression(client: &mut Client, name: &str) -> anyhow::Result<()> {
    let name = name.strip_prefix("suppression/").unwrap_or(name).to_owned();
    client
        .delete_suppression(pb::DeleteSuppressionRequest { name: name.clone() })
        .await?;
    println!("suppression/{name} deleted");
    Ok(())
}

//! Campaign verbs: apply manifests, roll out, rotate, describe, delete.

use std::path::Path;

use anyhow::{Context as _, bail};

use ruse_proto::admin::v1 as pb;
use ruse_proto::types::parse_duration;

use crate::Client;
use crate::args::RolloutCmd;
use crate::output::{self, Format};

/// `campaign/NAME` (kubectl style) or a bare name.
pub fn campaign_name(reference: &str) -> anyhow::Result<String> {
    let name = match reference.split_once('/') {
        Some(("campaign" | "campaigns", name)) => name,
        Some((kind, _)) => bail!("{reference:?}: expected campaign/NAME, not a {kind}"),
        None => reference,
    };
    if name.is_empty() {
        bail!("{reference:?}: no campaign name");
    }
    Ok(name.to_owned())
}

pub async fn apply(
    client: &mut Client,
    format: Format,
    file: &Path,
    dry_run: bool,
) -> anyhow::Result<()> {
    let (source, content) = if file == Path::new("-") {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text).context("reading stdin")?;
        ("stdin".to_owned(), text)
    } else {
        (
            file.display().to_string(),
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?,
        )
    };
    let results = client
        .apply(pb::ApplyRequest {
            source: source.clone(),
            content,
            dry_run,
        })
        .await
        .map_err(|s| anyhow::anyhow!("{source}: {}", s.message()))?
        .into_inner()
        .results;
    #[derive(serde::Serialize)]
    struct Applied {
        kind: String,
        name: String,
        action: String,
        #[serde(skip_serializing_if = "Vec::is_empty")]
        notes: Vec<String>,
    }
    match format {
        Format::Json | Format::Yaml => output::structured(
            format,
            &output::List {
                items: results
                    .iter()
                    .map(|r| Applied {
                        kind: r.kind.clone(),
                        name: r.name.clone(),
                        action: r.action.clone(),
                        notes: r.notes.clone(),
                    })
                    .collect::<Vec<_>>(),
            },
        ),
        _ => {
            let suffix = if dry_run { " (dry run)" } else { "" };
            for r in &results {
                println!("{}/{} {}{suffix}", r.kind.to_lowercase(), r.name, r.action);
                for note in &r.notes {
                    println!("  {note}");
                }
            }
            Ok(())
        }
    }
}

pub async fn rollout(
    client: &mut Client,
    format: Format,
    action: RolloutCmd,
) -> anyhow::Result<()> {
    let (campaign, action) = match action {
        RolloutCmd::Status {
            campaign,
            watch,
            timeout,
        } => {
            return rollout_status(
                client,
                format,
                &campaign_name(&campaign)?,
                watch,
                parse_duration(&timeout)?,
            )
            .await;
        }
        RolloutCmd::Pause { campaign } => (campaign, pb::RolloutAction::Pause),
        RolloutCmd::Resume { campaign } => (campaign, pb::RolloutAction::Resume),
        RolloutCmd::Abort { campaign } => (campaign, pb::RolloutAction::Abort),
    };
    let c = client
        .rollout(pb::RolloutRequest {
            campaign: campaign_name(&campaign)?,
            action: action.into(),
        })
        .await?
        .into_inner();
    match format {
        Format::Json | Format::Yaml => output::structured(format, &output::Campaign::from(&c)),
        _ => {
            println!("campaign/{} rollout {}", c.name, c.rollout_state);
            Ok(())
        }
    }
}

/// Prints rollout progress; with `watch`, redraws until the rollout
/// completes (exit 0), pauses or is aborted (an error), or `timeout`.
pub async fn rollout_status(
    client: &mut Client,
    format: Format,
    name: &str,
    watch: bool,
    timeout: std::time::Duration,
) -> anyhow::Result<()> {
    use std::io::{IsTerminal, Write};
    let tty = std::io::stdout().is_terminal();
    let started = std::time::Instant::now();
    let mut drawn = 0usize;
    let mut last: Vec<String> = Vec::new();
    loop {
        let c = client
            .rollout(pb::RolloutRequest {
                campaign: name.to_owned(),
                action: pb::RolloutAction::Status.into(),
            })
            .await?
            .into_inner();
        if matches!(format, Format::Json | Format::Yaml) {
            return output::structured(format, &output::Campaign::from(&c));
        }
        let lines = output::rollout_lines(&c);
        if lines != last {
            let mut out = std::io::stdout().lock();
            if tty && drawn > 0 {
                // Redraw in place.
                write!(out, "\x1b[{drawn}A\x1b[J")?;
            } else if drawn > 0 {
                writeln!(out)?;
            }
            for line in &lines {
                writeln!(out, "{line}")?;
            }
            out.flush()?;
            drawn = lines.len();
            last = lines;
        }
        match c.rollout_state.as_str() {
            "completed" => return Ok(()),
            "paused" if watch => {
                bail!("rollout of campaign/{name} is paused: {}", c.rollout_reason)
            }
            "aborted" if watch => bail!("rollout of campaign/{name} was aborted"),
            _ => {}
        }
        if !watch {
            return Ok(());
        }
        if started.elapsed() > timeout {
            bail!(
                "rollout of campaign/{name} still {} after {}",
                c.rollout_state,
                ruse_proto::types::format_duration(timeout)
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

pub fn describe_campaign(format: Format, c: &pb::Campaign) -> anyhow::Result<()> {
    let view = output::Campaign::from(c);
    if matches!(format, Format::Json | Format::Yaml) {
        return output::structured(format, &view);
    }
    let field = |name: &str, value: &str| println!("{:<18}{}", format!("{name}:"), value);
    field("Name", &view.name);
    if !view.description.is_empty() {
        field("Description", &view.description);
    }
    field("Selector", &output::labels(&view.selector));
    field("Matching agents", &view.matching_agents.to_string());
    field(
        "Generation",
        &format!("{} (rotation epoch {})", view.generation, view.epoch),
    );
    field(
        "Rotate every",
        view.rotate_every.as_deref().unwrap_or("never"),
    );
    field("Last rotated", &view.last_rotated);
    field("Created", &view.created);
    field("Updated", &view.updated);
    println!("Lures:");
    for l in &view.lures {
        let mut line = format!("  {:<20} {}", l.name, l.template);
        if !l.decoy.is_empty() {
            line.push_str(&format!(" -> decoy {}", l.decoy));
        }
        if !l.path.is_empty() {
            line.push_str(&format!(" at {}", l.path));
        }
        if !l.params.is_empty() {
            line.push_str(&format!(" ({})", output::labels(&l.params)));
        }
        println!("{line}");
    }
    println!(
        "Rollout (max failure ratio {:.0}%):",
        view.max_failure_ratio * 100.0
    );
    for line in output::rollout_lines(c) {
        println!("  {line}");
    }
    Ok(())
}

/// `rusectl describe campaign NAME`.
pub async fn describe(client: &mut Client, format: Format, name: &str) -> anyhow::Result<()> {
    let campaign = client
        .get_campaign(pb::GetCampaignRequest {
            name: campaign_name(name)?,
        })
        .await?
        .into_inner();
    describe_campaign(format, &campaign)
}

/// `rusectl rotate campaign/NAME`.
pub async fn rotate(client: &mut Client, format: Format, campaign: &str) -> anyhow::Result<()> {
    let c = client
        .rotate(pb::RotateRequest {
            campaign: campaign_name(campaign)?,
        })
        .await?
        .into_inner();
    match format {
        Format::Json | Format::Yaml => output::structured(format, &output::Campaign::from(&c)),
        _ => {
            println!(
                "campaign/{} rotating to epoch {}: new material rolls out in waves (rusectl rollout status campaign/{})",
                c.name, c.epoch, c.name
            );
            Ok(())
        }
    }
}

/// `rusectl delete campaign NAME`.
pub async fn delete_campaign(client: &mut Client, name: &str) -> anyhow::Result<()> {
    let name = campaign_name(name)?;
    client
        .delete_campaign(pb::DeleteCampaignRequest { name: name.clone() })
        .await?;
    println!("campaign/{name} deleted; its lures are being removed from agents");
    Ok(())
}

/// `rusectl delete allowrule NAME`.
pub async fn delete_allow_rule(client: &mut Client, name: &str) -> anyhow::Result<()> {
    let name = name.strip_prefix("allowrule/").unwrap_or(name).to_owned();
    client
        .delete_allow_rule(pb::DeleteAllowRuleRequest { name: name.clone() })
        .await?;
    println!("allowrule/{name} deleted");
    Ok(())
}

/// `rusectl delete decoy NAME`.
pub async fn delete_decoy(client: &mut Client, name: &str) -> anyhow::Result<()> {
    let name = name.strip_prefix("decoy/").unwrap_or(name).to_owned();
    client
        .delete_decoy(pb::DeleteDecoyRequest { name: name.clone() })
        .await?;
    println!("decoy/{name} deleted");
    Ok(())
}

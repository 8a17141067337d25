//! Agent verbs: describe, label, revoke, delete.

use ruse_proto::admin::v1 as pb;
use ruse_proto::types::Labels;

use crate::Client;
use crate::output::{self, Format};

pub fn describe_agent(format: Format, agent: &pb::Agent) -> anyhow::Result<()> {
    let view = output::Agent::from(agent);
    if matches!(format, Format::Json | Format::Yaml) {
        return output::structured(format, &view);
    }
    let field = |name: &str, value: &str| println!("{:<22}{}", format!("{name}:"), value);
    field("ID", &view.id);
    field("State", &view.state);
    field("Hostname", &view.hostname);
    field("OS", &view.os);
    field("Kernel", &view.kernel);
    field("Architecture", &view.arch);
    field("Addresses", &view.addresses.join(", "));
    field("Agent version", &view.agent_version);
    field("Labels", &output::labels(&view.labels));
    field("Reported labels", &output::labels(&view.reported_labels));
    field(
        "Enrolled",
        &format!("{} (token {})", view.enrolled, view.enrolled_with_token),
    );
    field(
        "Last seen",
        &format!(
            "{} ({} ago)",
            view.last_seen,
            output::age(agent.last_seen_ms)
        ),
    );
    field("Peer", &view.peer);
    if !view.controller.is_empty() {
        field("Controller", &view.controller);
    }
    field("Certificate expires", &view.certificate_expires);
    if !view.problems.is_empty() {
        field("Problems", &view.problems.join("; "));
    }
    if let Some(r) = &view.revoked {
        field("Revoked", &format!("{} by {} ({})", r.at, r.by, r.reason));
    }
    Ok(())
}

/// `rusectl describe agent ID`.
pub async fn describe(client: &mut Client, format: Format, id: String) -> anyhow::Result<()> {
    let agent = client
        .get_agent(pb::GetAgentRequest { id })
        .await?
        .into_inner();
    describe_agent(format, &agent)
}

/// `rusectl label agent ID key=value key-`.
pub async fn label(
    client: &mut Client,
    format: Format,
    id: String,
    labels: &[String],
) -> anyhow::Result<()> {
    let mut set = Vec::new();
    let mut remove = Vec::new();
    for l in labels {
        match l.strip_suffix('-') {
            Some(key) if !l.contains('=') => remove.push(key.to_owned()),
            _ => set.push(l.as_str()),
        }
    }
    let set = Labels::parse_pairs(set)?;
    let agent = client
        .label_agent(pb::LabelAgentRequest {
            id,
            set: set.to_map(),
            remove,
        })
        .await?
        .into_inner();
    match format {
        Format::Json | Format::Yaml => output::structured(format, &output::Agent::from(&agent)),
        _ => {
            println!(
                "agent {} labelled: {}",
                agent.id,
                output::labels(&agent.labels.clone().into_iter().collect())
            );
            Ok(())
        }
    }
}

/// `rusectl revoke agent ID`.
pub async fn revoke(
    client: &mut Client,
    format: Format,
    id: String,
    reason: String,
) -> anyhow::Result<()> {
    let agent = client
        .revoke_agent(pb::RevokeAgentRequest { id, reason })
        .await?
        .into_inner();
    match format {
        Format::Json | Format::Yaml => output::structured(format, &output::Agent::from(&agent)),
        _ => {
            println!("agent {} revoked", agent.id);
            Ok(())
        }
    }
}

/// `rusectl delete agent ID`: decommissioned, revoked, kept for attribution.
pub async fn delete(client: &mut Client, id: &str, reason: String) -> anyhow::Result<()> {
    let id = id.strip_prefix("agent/").unwrap_or(id).to_owned();
    let agent = client
        .delete_agent(pb::DeleteAgentRequest { id, reason })
        .await?
        .into_inner();
    println!(
        "agent/{} deleted from the inventory (revoked; `rusectl get agents --all` still lists it)",
        agent.id
    );
    Ok(())
}

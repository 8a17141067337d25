//! Domain types to and from the admin protocol's messages: one conversion
//! each, bounded where the input comes from a client.

use std::time::Duration;

use tonic::Status;

use ruse_proto::admin::v1 as pb;
use ruse_proto::types::{Labels, UnixMs};

use crate::deploy::{CampaignStatus, LureView};
use crate::events::EventFilter;
use crate::fleet::AgentView;
use crate::incidents::IncidentFilter;
use crate::model::{
    Decoy, Incident, RolloutState, Severity, Status as IncidentStatus, StoredEvent, TokenRecord,
};

pub(super) fn optional_ms(ms: u64) -> Option<Duration> {
    (ms > 0).then(|| Duration::from_millis(ms))
}

pub(super) fn labels(map: std::collections::HashMap<String, String>) -> Result<Labels, Status> {
    Labels::try_from(map).map_err(|e| Status::invalid_argument(e.to_string()))
}

pub(super) fn parse<T: std::str::FromStr>(s: &str) -> Result<T, Status>
where
    T::Err: std::fmt::Display,
{
    s.parse()
        .map_err(|e: T::Err| Status::invalid_argument(e.to_string()))
}

pub(super) fn token_pb(t: &TokenRecord) -> pb::Token {
    pb::Token {
        id: t.id.to_string(),
        created_ms: t.created_at.0,
        expires_ms: t.expires_at.0,
        max_uses: t.max_uses,
        uses: t.uses,
        labels: t.labels.to_map(),
        created_by: t.created_by.clone(),
        description: t.description.clone(),
    }
}

pub(super) fn agent_pb(view: AgentView) -> pb::Agent {
    let r = view.record;
    let labels = r.labels().to_map();
    let reported_labels = r.reported_labels().to_map();
    let (revoked_ms, revoked_by, revoke_reason) = match r.revoked {
        Some(rev) => (rev.at.0, rev.by, rev.reason),
        None => (0, String::new(), String::new()),
    };
    pb::Agent {
        id: r.id.to_string(),
        state: pb::AgentState::from(view.state).into(),
        hostname: r.facts.hostname,
        os: r.facts.os,
        kernel: r.facts.kernel,
        arch: r.facts.arch,
        addresses: r.facts.addresses,
        agent_version: r.facts.agent_version,
        labels,
        enrolled_ms: r.enrolled_at.0,
        last_seen_ms: r.last_seen.0,
        cert_not_after_ms: r.cert_not_after.0,
        peer: view.peer.map(|p| p.to_string()).unwrap_or(r.last_peer),
        problems: view.health.problems,
        enrolled_with_token: r.enrolled_with.to_string(),
        revoked_ms,
        revoked_by,
        revoke_reason,
        reported_labels,
        deleted_ms: r.deleted.map_or(0, |t| t.0),
        controller: view.controller.unwrap_or_default(),
    }
}

pub(super) fn campaign_pb(status: CampaignStatus) -> pb::Campaign {
    let r = status.record;
    let spec = &r.target.spec;
    let reason = match &r.rollout {
        RolloutState::Paused { reason, .. } => reason.clone(),
        RolloutState::Aborted { by } => format!("aborted by {by}"),
        _ => String::new(),
    };
    pb::Campaign {
        name: spec.name.clone(),
        description: spec.description.clone(),
        selector: spec.selector.to_map(),
        lures: spec
            .lures
            .iter()
            .map(|l| pb::CampaignLure {
                name: l.key.clone(),
                template: l.template.to_string(),
                decoy: l.decoy.clone().unwrap_or_default(),
                path: l.path.clone().unwrap_or_default(),
                params: l.params.clone().into_iter().collect(),
            })
            .collect(),
        waves: spec.waves.iter().map(|&w| u32::from(w)).collect(),
        max_failure_ratio: spec.max_failure_ratio,
        rotate_every_ms: spec
            .rotate_every
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        generation: r.target.number,
        epoch: r.target.epoch,
        rollout_state: r.rollout.name().to_owned(),
        rollout_reason: reason,
        wave: u32::try_from(r.wave + 1).unwrap_or(u32::MAX),
        wave_status: status
            .waves
            .into_iter()
            .map(|w| pb::WaveStatus {
                percent: u32::from(w.percent),
                agents: count(w.agents),
                acked: count(w.acked),
                failed: count(w.failed),
                pending: count(w.pending),
                offline: count(w.offline),
                unreachable: count(w.unreachable),
                released: w.released,
                errors: w.errors,
            })
            .collect(),
        matching_agents: count(status.matching),
        created_ms: r.created.0,
        updated_ms: r.updated.0,
        last_rotated_ms: r.last_rotated.0,
    }
}

pub(super) fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

pub(super) fn decoy_pb(d: Decoy, matching: usize) -> pb::Decoy {
    pb::Decoy {
        name: d.name,
        description: d.description,
        selector: d.selector.to_map(),
        address: d.address,
        services: d
            .services
            .into_iter()
            .map(|s| pb::DecoyService {
                refusal_delay_ms: s
                    .refusal_delay()
                    .map(|d| u32::try_from(d.as_millis()).unwrap_or(u32::MAX)),
                protocol: s.protocol,
                port: u32::from(s.port),
                device: s.device.unwrap_or_default(),
                banner: s.banner.unwrap_or_default(),
            })
            .collect(),
        matching_agents: count(matching),
    }
}

pub(super) fn lure_pb(v: LureView) -> pb::Lure {
    pb::Lure {
        identifiers: v.lure.material.summary(),
        id: v.lure.id.to_string(),
        agent_id: v.lure.agent.to_string(),
        campaign: v.lure.campaign,
        slot: v.lure.slot,
        template: v.lure.template.to_string(),
        epoch: v.lure.epoch,
        revision: v.revision,
        state: v.state.to_owned(),
        error: v.error,
        created_ms: v.lure.created.0,
        retired_ms: v.lure.retired.map_or(0, |t| t.0),
    }
}

pub(super) fn event_pb(e: &StoredEvent) -> pb::LureEvent {
    pb::LureEvent {
        id: e.id.clone(),
        agent_id: e.agent.to_string(),
        lure_id: e.lure_id.clone(),
        lure_revision: e.lure_revision,
        template: e.template.clone(),
        campaign: e.campaign.clone(),
        kind: e.kind.clone(),
        path: e.path.clone(),
        process: e.process.as_ref().map(Into::into),
        operations: e.operations.clone(),
        attribution: e.attribution.clone(),
        allowed: e.allowed,
        allow_rule: e.allow_rule.clone(),
        dropped_before: e.dropped_before,
        detail: e.detail.clone(),
        observed_ms: e.observed.0,
        received_ms: e.received.0,
        peer: e.peer.clone(),
        seq: e.seq,
        decoy: e.decoy.as_ref().map(Into::into),
        // The NTLM response is never shown (the conversion leaves it out).
        credential: e.credential.as_ref().map(Into::into),
        origin_agent_id: e
            .origin_agent
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
        matched_on: e.matched_on.clone(),
        cursor: e.cursor,
        reported_observed_ms: e.reported_observed.map_or(0, |t| t.0),
    }
}

pub(super) fn event_filter(f: Option<pb::EventFilter>) -> Result<EventFilter, Status> {
    let f = f.unwrap_or_default();
    Ok(EventFilter {
        agent: if f.agent_id.is_empty() {
            None
        } else {
            Some(parse(&f.agent_id)?)
        },
        lure: (!f.lure_id.is_empty()).then_some(f.lure_id),
        kind: (!f.kind.is_empty()).then_some(f.kind),
        since: (f.since_ms > 0).then_some(UnixMs(f.since_ms)),
    })
}

pub(super) fn incident_pb(i: &Incident) -> pb::Incident {
    let strings = |set: &std::collections::BTreeSet<String>| set.iter().cloned().collect();
    pb::Incident {
        id: i.id.clone(),
        title: i.title.clone(),
        severity: i.severity.as_str().into(),
        status: i.status.as_str().into(),
        drill: i.drill,
        first_seen_ms: i.first_seen.0,
        last_seen_ms: i.last_seen.0,
        created_ms: i.created.0,
        updated_ms: i.updated.0,
        event_count: i.event_count,
        timeline: i
            .timeline
            .iter()
            .map(|t| pb::TimelineEntry {
                event_id: t.event_id.clone(),
                at_ms: t.at.0,
                agent_id: t.agent.to_string(),
                kind: t.kind.clone(),
                summary: t.summary.clone(),
            })
            .collect(),
        agents: i.agents.iter().map(ToString::to_string).collect(),
        decoys: strings(&i.decoys),
        sources: strings(&i.sources),
        lures: strings(&i.lures),
        processes: strings(&i.processes),
        credentials: strings(&i.credentials),
        path: i
            .path
            .iter()
            .map(|h| pb::Hop {
                kind: h.kind.clone(),
                name: h.name.clone(),
                agent_id: h
                    .agent
                    .as_ref()
                    .map(ToString::to_string)
                    .unwrap_or_default(),
                first_seen_ms: h.first_seen.0,
                what: h.what.clone(),
            })
            .collect(),
        techniques: strings(&i.techniques),
        rules: strings(&i.rules),
        acknowledged_by: i.acknowledged_by.clone(),
        resolved_by: i.resolved_by.clone(),
        resolution: i.resolution.clone(),
        deliveries: i
            .deliveries
            .iter()
            .map(|(name, d)| pb::IncidentDelivery {
                output: name.clone(),
                state: d.state.clone(),
                attempts: d.attempts,
                last_error: d.last_error.clone(),
                delivered_ms: d.delivered.map_or(0, |t| t.0),
            })
            .collect(),
    }
}

pub(super) fn incident_filter(
    status: &str,
    min_severity: &str,
    since_ms: i64,
    drills: bool,
) -> Result<IncidentFilter, Status> {
    let unresolved = status == "unresolved";
    let status = match status {
        "" | "unresolved" => None,
        "open" => Some(IncidentStatus::Open),
        "acknowledged" => Some(IncidentStatus::Acknowledged),
        "resolved" => Some(IncidentStatus::Resolved),
        other => {
            return Err(Status::invalid_argument(format!(
                "status {other:?}: expected open, acknowledged, resolved or unresolved"
            )));
        }
    };
    let min_severity = match min_severity {
        "" => None,
        s => Some(
            Severity::ALL
                .into_iter()
                .find(|v| v.as_str() == s)
                .ok_or_else(|| {
                    Status::invalid_argument(format!(
                        "severity {s:?}: expected low, medium, high or critical"
                    ))
                })?,
        ),
    };
    Ok(IncidentFilter {
        status,
        unresolved,
        min_severity,
        since: (since_ms > 0).then_some(UnixMs(since_ms)),
        drills,
    })
}

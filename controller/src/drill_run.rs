//! Running a drill end to end for `rusectl drill`: send the directive,
//! then wait for the event, the incident and every output's delivery,
//! reporting each step with its timing and failing loudly where a step
//! did not happen.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use ruse_proto::convert::AgentState;
use ruse_proto::types::AgentId;

use crate::core::{Core, OpError};
use crate::model::Template;

/// The lure to trip: the one asked for (it must be applied on the agent),
/// or one of the agent's applied lures, honeyfiles first.
pub fn pick_lure(core: &Core, agent: &AgentId, asked: &str) -> Result<String, OpError> {
    let view = core
        .fleet
        .get(agent)
        .ok_or_else(|| OpError::AgentUnknown(agent.clone()))?;
    if view.state == AgentState::Revoked {
        return Err(OpError::AgentRevoked(agent.clone()));
    }
    let lures = core.deploy.lures(Some(agent), None, false)?;
    let applied: Vec<_> = lures.iter().filter(|l| l.state == "applied").collect();
    if !asked.is_empty() {
        return applied
            .iter()
            .find(|l| *l.lure.id == *asked)
            .map(|l| l.lure.id.to_string())
            .ok_or_else(|| {
                OpError::Invalid(format!(
                    "lure {asked} is not applied on agent {agent}; `rusectl get lures --agent {agent}` lists its lures"
                ))
            });
    }
    applied
        .iter()
        .find(|l| l.lure.template.is_honeyfile() && l.lure.template != Template::HostsEntry)
        .or_else(|| applied.first())
        .map(|l| l.lure.id.to_string())
        .ok_or_else(|| {
            OpError::Invalid(format!(
                "agent {agent} has no applied lure to drill; roll out a campaign to it first"
            ))
        })
}

/// One step of a drill as `rusectl drill` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub step: String,
    pub ok: bool,
    pub elapsed_ms: u64,
    pub detail: String,
    /// The last step: `passed` is the drill's verdict.
    pub done: bool,
    pub passed: bool,
    pub incident_id: String,
}

struct Reporter {
    tx: mpsc::Sender<Step>,
    started: Instant,
    incident: String,
    passed: bool,
}

impl Reporter {
    async fn step(&mut self, step: &str, ok: bool, detail: String) {
        self.passed &= ok;
        let _ = self
            .tx
            .send(Step {
                step: step.into(),
                ok,
                elapsed_ms: self.started.elapsed().as_millis() as u64,
                detail,
                done: false,
                passed: false,
                incident_id: self.incident.clone(),
            })
            .await;
    }

    async fn done(self) {
        let _ = self
            .tx
            .send(Step {
                step: if self.passed {
                    "drill passed"
                } else {
                    "drill FAILED"
                }
                .into(),
                ok: self.passed,
                elapsed_ms: self.started.elapsed().as_millis() as u64,
                detail: String::new(),
                done: true,
                passed: self.passed,
                incident_id: self.incident,
            })
            .await;
    }
}

/// Runs the drill, streaming its steps to `tx`.
pub async fn run(core: Arc<Core>, agent: AgentId, lure: String, tx: mpsc::Sender<Step>) {
    let timeout = core.config.drill_timeout;
    let mut r = Reporter {
        tx,
        started: Instant::now(),
        incident: String::new(),
        passed: true,
    };
    let drills = core.events.drills.clone();
    let (id, mut claim) = drills.begin(&agent, &lure);
    let online = core
        .fleet
        .get(&agent)
        .is_some_and(|v| matches!(v.state, AgentState::Online | AgentState::Degraded));
    if !online || !core.deploy.wake_agent(&agent) {
        drills.take_directives(&agent);
        drills.finish(&id);
        r.step(
            "directive sent",
            false,
            format!("agent {agent} is not connected; the drill needs a live session"),
        )
        .await;
        return r.done().await;
    }
    r.step(
        "directive sent",
        true,
        format!("agent {agent} asked to read lure {lure} (drill {id})"),
    )
    .await;

    let event = tokio::time::timeout(timeout, claim.wait_for(|c| c.is_some()))
        .await
        .ok()
        .and_then(Result::ok)
        .and_then(|c| c.clone());
    let Some(event) = event else {
        drills.finish(&id);
        r.step(
            "event received",
            false,
            format!("no event for lure {lure} from agent {agent} within {timeout:?}: is its watcher running? (`rusectl describe agent {agent}`)"),
        )
        .await;
        return r.done().await;
    };
    r.step(
        "event received",
        true,
        format!(
            "event {} observed on the agent and stored ({} ms from read to store)",
            event.event_id,
            event.received.0.saturating_sub(event.observed.0).max(0)
        ),
    )
    .await;

    let incident = tokio::time::timeout(
        timeout,
        claim.wait_for(|c| c.as_ref().is_some_and(|c| c.incident.is_some())),
    )
    .await
    .ok()
    .and_then(Result::ok)
    .and_then(|c| c.as_ref().and_then(|c| c.incident.clone()));
    drills.finish(&id);
    let Some(incident_id) = incident else {
        r.step(
            "incident opened",
            false,
            "the event did not open an incident (is a suppression hiding it? `rusectl get suppressions`)".into(),
        )
        .await;
        return r.done().await;
    };
    r.incident = incident_id.clone();
    let severity = core
        .events
        .incidents
        .get(&incident_id)
        .map(|i| i.severity)
        .unwrap_or(crate::model::Severity::Low);
    r.step(
        "incident opened",
        true,
        format!("drill incident {incident_id} ({})", severity.as_str()),
    )
    .await;

    let outputs = core.events.outputs.for_severity(severity);
    if outputs.is_empty() {
        r.step("outputs", true, "no outputs are configured".into())
            .await;
    }
    for name in outputs {
        let deadline = Instant::now() + timeout;
        let mut last = String::new();
        let delivered = loop {
            let d = core
                .events
                .incidents
                .get(&incident_id)
                .and_then(|i| i.deliveries.get(&name).cloned());
            if let Some(d) = &d {
                if d.state == "delivered" {
                    break true;
                }
                if !d.last_error.is_empty() {
                    last = format!("{} (after {} attempts)", d.last_error, d.attempts);
                }
                // Refused for good: waiting longer cannot help.
                if d.state == "rejected" {
                    last = format!("rejected: {}", d.last_error);
                    break false;
                }
            }
            if Instant::now() >= deadline {
                break false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        if delivered {
            r.step(&format!("output {name}"), true, "delivered".into())
                .await;
        } else {
            let why = if last.starts_with("rejected: ") {
                last
            } else if last.is_empty() {
                format!("not delivered within {timeout:?}")
            } else {
                format!("not delivered within {timeout:?}: {last}")
            };
            r.step(&format!("output {name}"), false, why).await;
        }
    }
    // A rehearsal leaves nothing open: the drill incident is resolved (no
    // output is told; they saw it opened).
    let note = if r.passed {
        "drill passed"
    } else {
        "drill failed"
    };
    if let Err(e) = core
        .events
        .incidents
        .resolve(&incident_id, "drill", note)
        .await
    {
        tracing::warn!(incident = %incident_id, error = %e, "drill incident not resolved");
    }
    r.done().await;
}

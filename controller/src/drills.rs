//! Incident-response drills: an agent trips one of its lures for real (a
//! separate process reads the file, so the same watcher path as an
//! intruder's read reports it), and the controller follows the read
//! through event, incident and every output.
//!
//! The controller recognises the drill's event as the first touch of the
//! drilled lure on the drilled agent after the drill began; that event,
//! and the incident it opens, are marked as a drill everywhere.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::watch;

use ruse_proto::types::{AgentId, UnixMs, new_ulid};

use crate::model::StoredEvent;

/// A drill's event, once seen, and the incident it went into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub event_id: String,
    pub observed: UnixMs,
    pub received: UnixMs,
    pub incident: Option<String>,
}

#[derive(Debug)]
struct Pending {
    agent: AgentId,
    lure: String,
    started: UnixMs,
    claim: watch::Sender<Option<Claim>>,
}

/// A drill for an agent's session to send: read this lure now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Directive {
    pub id: String,
    pub lure_id: String,
}

/// Drills in progress.
#[derive(Debug, Default)]
pub struct Drills {
    pending: Mutex<HashMap<String, Pending>>,
    /// Directives waiting for the agent's session to send them.
    directives: Mutex<HashMap<AgentId, Vec<Directive>>>,
}

/// Events observed this long before the drill began still count (agent
/// clocks run behind).
const CLOCK_SLACK_MS: i64 = 5_000;

impl Drills {
    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<String, Pending>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts a drill of `lure` on `agent`; the caller wakes the agent's
    /// session, which sends the directive.
    pub fn begin(&self, agent: &AgentId, lure: &str) -> (String, watch::Receiver<Option<Claim>>) {
        let id = new_ulid();
        let (tx, rx) = watch::channel(None);
        self.pending().insert(
            id.clone(),
            Pending {
                agent: agent.clone(),
                lure: lure.to_owned(),
                started: UnixMs::now(),
                claim: tx,
            },
        );
        self.directives
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(agent.clone())
            .or_default()
            .push(Directive {
                id: id.clone(),
                lure_id: lure.to_owned(),
            });
        (id, rx)
    }

    /// Directives for `agent`'s session to send now.
    pub fn take_directives(&self, agent: &AgentId) -> Vec<Directive> {
        self.directives
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(agent)
            .unwrap_or_default()
    }

    /// Whether `e` is a drill's event; claims it if so.
    pub fn claim(&self, e: &StoredEvent) -> Option<String> {
        if e.decoy.is_some() || e.kind != "touch" {
            return None;
        }
        let pending = self.pending();
        let (id, p) = pending.iter().find(|(_, p)| {
            p.agent == e.agent
                && p.lure == e.lure_id
                && e.observed.0 >= p.started.0 - CLOCK_SLACK_MS
                && p.claim.borrow().is_none()
        })?;
        p.claim.send_replace(Some(Claim {
            event_id: e.id.clone(),
            observed: e.observed,
            received: e.received,
            incident: None,
        }));
        Some(id.clone())
    }

    /// The incident a drill's event went into.
    pub fn incident(&self, drill: &str, incident: &str) {
        if let Some(p) = self.pending().get(drill) {
            p.claim.send_modify(|c| {
                if let Some(c) = c {
                    c.incident = Some(incident.to_owned());
                }
            });
        }
    }

    /// Forgets a finished drill.
    pub fn finish(&self, id: &str) {
        self.pending().remove(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_the_first_touch_of_the_lure_on_the_agent() {
        let d = Drills::default();
        let (a, b) = (AgentId::generate(), AgentId::generate());
        let (id, rx) = d.begin(&a, "L1");
        assert_eq!(d.take_directives(&a).len(), 1);
        assert!(d.take_directives(&a).is_empty());
        let event = |agent: &AgentId, lure: &str, kind: &str| StoredEvent {
            kind: kind.into(),
            lure_id: lure.into(),
            observed: UnixMs::now(),
            ..crate::events::tests_support::event(agent)
        };
        assert_eq!(d.claim(&event(&b, "L1", "touch")), None);
        assert_eq!(d.claim(&event(&a, "L2", "touch")), None);
        assert_eq!(d.claim(&event(&a, "L1", "modify")), None);
        assert_eq!(d.claim(&event(&a, "L1", "touch")), Some(id.clone()));
        // Only once.
        assert_eq!(d.claim(&event(&a, "L1", "touch")), None);
        d.incident(&id, "I1");
        assert_eq!(
            rx.borrow().as_ref().unwrap().incident.as_deref(),
            Some("I1")
        );
        d.finish(&id);
        assert_eq!(d.claim(&event(&a, "L1", "touch")), None);
    }
}

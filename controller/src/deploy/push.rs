//! The per-agent update protocol: what a session sends next (the
//! difference between desired and applied, at most one update in flight),
//! and how acks and nacks settle it. Also the encoded bodies of decoys
//! and allow rules, whose bytes give their revisions.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use foldhash::HashMap;
use tokio::sync::Notify;

use ruse_proto::spec::{
    DecoyService, DecoySpec, Resource, ResourceError, Update, encode_allow_rules,
};
use ruse_proto::types::AgentId;

use super::plan::{Payload, name_campaigns};
use super::{Deployer, State, lures_kind};
use crate::lures::{self, RenderInput};
use crate::model::Decoy;

/// The resource id of a decoy on the agents that run it.
pub fn decoy_resource_id(name: &str) -> String {
    format!("decoy/{name}")
}

/// The resource kind of decoys.
pub const DECOY_KIND: &str = "decoy";

/// The spec an agent runs for `decoy`.
pub fn decoy_spec(decoy: &Decoy) -> DecoySpec {
    DecoySpec {
        name: decoy.name.clone(),
        address: decoy.address.clone(),
        listen: decoy.listen.clone(),
        services: decoy
            .services
            .iter()
            .map(|s| DecoyService {
                protocol: s.protocol.clone(),
                port: s.port,
                refusal_delay_ms: s
                    .refusal_delay()
                    .map(|d| u32::try_from(d.as_millis()).unwrap_or(u32::MAX)),
                device: s.device.clone().unwrap_or_default(),
                banner: s.banner.clone().unwrap_or_default(),
            })
            .collect(),
    }
}

/// A revision derived from content: any change is a new revision.
pub(super) fn content_revision(body: &[u8]) -> u64 {
    let digest = ring::digest::digest(&ring::digest::SHA256, body);
    let mut rev = [0u8; 8];
    rev.copy_from_slice(&digest.as_ref()[..8]);
    u64::from_le_bytes(rev) | 1
}

/// The resource id of an agent's allow rules.
pub const ALLOW_RULES_ID: &str = "allow-rules";

#[derive(Debug, Clone)]
pub(super) struct Inflight {
    pub(super) nonce: u64,
    pub(super) sent: Vec<(Arc<str>, u64)>,
    pub(super) removed: Vec<String>,
}

/// A removal that failed is recorded with this revision.
pub(super) const REMOVAL: u64 = 0;

/// Resources sent in one update, at most.
pub(super) const MAX_RESOURCES_PER_UPDATE: usize = 256;

impl Deployer {
    /// Wakes `agent`'s session (drills); false if it has none.
    pub fn wake_agent(&self, agent: &AgentId) -> bool {
        match self.lock().agents.get(agent).and_then(|a| a.notify.clone()) {
            Some(n) => {
                n.notify_one();
                true
            }
            None => false,
        }
    }

    /// Updates pushed to an agent so far (for tests and diagnostics).
    pub fn updates_sent(&self, agent: &AgentId) -> u64 {
        self.lock().agents.get(agent).map_or(0, |a| a.updates_sent)
    }

    /// A session opened; `notify` wakes it when there is something to push.
    pub fn session_started(&self, agent: &AgentId, notify: Arc<Notify>) {
        let mut st = self.lock();
        let a = st.agents.entry(agent.clone()).or_default();
        a.notify = Some(notify);
        a.inflight = None;
        a.greeted = false;
    }

    /// The agent's Hello: what it has applied.
    pub fn hello(&self, agent: &AgentId, applied: std::collections::HashMap<String, u64>) {
        let mut st = self.lock();
        let a = st.agents.entry(agent.clone()).or_default();
        a.applied = applied
            .into_iter()
            .map(|(id, revision)| (Arc::from(id), revision))
            .collect();
        a.inflight = None;
        a.greeted = true;
        if let Some(n) = &a.notify {
            n.notify_one();
        }
        drop(st);
        self.share_applied(agent);
        self.request_evaluate();
    }

    pub fn session_ended(&self, agent: &AgentId) {
        let mut st = self.lock();
        if let Some(a) = st.agents.get_mut(agent) {
            a.notify = None;
            a.inflight = None;
            a.greeted = false;
        }
    }

    /// The next update for `agent`, if it has none in flight and something
    /// differs. Renders outside the lock.
    pub fn next_update(&self, agent: &AgentId) -> Option<Update> {
        if !self.ready.load(Ordering::Acquire) {
            return None;
        }
        let (nonce, candidates, removed) = {
            let mut st = self.lock();
            st.next_nonce += 1;
            let nonce = st.next_nonce;
            let State {
                agents, undurable, ..
            } = &mut *st;
            let a = agents.get_mut(agent)?;
            if a.inflight.is_some() || !a.greeted {
                return None;
            }
            let mut candidates = Vec::new();
            for (id, d) in &a.desired {
                if candidates.len() >= MAX_RESOURCES_PER_UPDATE {
                    break;
                }
                if a.applied.get(id) == Some(&d.revision)
                    || a.failed.get(id).is_some_and(|(r, _)| *r == d.revision)
                    || undurable.contains(id)
                {
                    continue;
                }
                candidates.push((id.clone(), d.clone()));
            }
            let removed: Vec<String> = a
                .applied
                .keys()
                .filter(|id| {
                    !a.desired.contains_key(*id)
                        && a.failed.get(*id).is_none_or(|(r, _)| *r != REMOVAL)
                })
                .map(|id| id.to_string())
                .collect();
            if candidates.is_empty() && removed.is_empty() {
                return None;
            }
            a.inflight = Some(Inflight {
                nonce,
                sent: Vec::new(),
                removed: removed.clone(),
            });
            (nonce, candidates, removed)
        };
        let mut resources = Vec::new();
        let mut sent = Vec::new();
        let mut render_failures = Vec::new();
        let mut bytes = 0;
        for (id, desired) in candidates {
            let rendered = match &desired.payload {
                Payload::Lure {
                    slot,
                    decoy,
                    lure,
                    platform,
                } => lures::render(RenderInput {
                    slot,
                    material: &lure.material,
                    decoy: decoy.as_deref(),
                    created: lure.created,
                    platform: *platform,
                })
                .map(|spec| (lures_kind(), spec.encode()))
                .map_err(|e| e.to_string()),
                Payload::AllowRules(rules) => Ok((ALLOW_RULES_ID, encode_allow_rules(rules))),
                Payload::Decoy(body) => Ok((DECOY_KIND, body.to_vec())),
            };
            match rendered {
                Ok((kind, body)) => {
                    if bytes + body.len() > self.max_update_bytes && !resources.is_empty() {
                        break;
                    }
                    bytes += body.len();
                    resources.push(Resource {
                        id: id.to_string(),
                        revision: desired.revision,
                        kind: kind.into(),
                        body,
                    });
                    sent.push((id, desired.revision));
                }
                Err(e) => render_failures.push((id, desired.revision, e)),
            }
        }
        let mut st = self.lock();
        let a = st.agents.get_mut(agent)?;
        for (id, rev, error) in render_failures {
            tracing::warn!(agent = %agent, lure = %id, error = %error, "lure could not be rendered");
            a.failed.insert(
                id,
                (
                    rev,
                    format!("controller could not render the lure: {error}"),
                ),
            );
        }
        match a.inflight.as_mut() {
            Some(inflight) if inflight.nonce == nonce => {
                if resources.is_empty() && removed.is_empty() {
                    a.inflight = None;
                    return None;
                }
                inflight.sent = sent;
                a.updates_sent += 1;
            }
            // The session restarted meanwhile.
            _ => return None,
        }
        Some(Update {
            nonce,
            resources,
            removed,
        })
    }

    /// The agent applied the update with `nonce`.
    pub fn acked(&self, agent: &AgentId, nonce: u64) {
        self.settle(agent, nonce, Vec::new());
    }

    /// The agent could not apply some resources of the update.
    pub fn nacked(&self, agent: &AgentId, nonce: u64, errors: Vec<ResourceError>) {
        self.settle(agent, nonce, errors);
    }

    pub(super) fn settle(&self, agent: &AgentId, nonce: u64, errors: Vec<ResourceError>) {
        let mut st = self.lock();
        let errors: HashMap<String, String> = errors
            .into_iter()
            .map(|e| {
                let error: String = e.error.chars().take(512).collect();
                (e.id, name_campaigns(&st.registry, error))
            })
            .collect();
        let Some(a) = st.agents.get_mut(agent) else {
            return;
        };
        let Some(inflight) = a.inflight.take_if(|i| i.nonce == nonce) else {
            tracing::debug!(agent = %agent, nonce, "acknowledgement for an unknown update ignored");
            return;
        };
        for (id, revision) in inflight.sent {
            match errors.get(&*id) {
                None => {
                    a.applied.insert(id.clone(), revision);
                    a.failed.remove(&id);
                }
                Some(error) => {
                    // A failed replacement leaves the old version removed.
                    a.applied.remove(&id);
                    a.failed.insert(id, (revision, error.clone()));
                }
            }
        }
        for id in inflight.removed {
            match errors.get(&id) {
                None => {
                    a.applied.remove(id.as_str());
                    a.failed.remove(id.as_str());
                }
                Some(error) => {
                    a.failed.insert(id.into(), (REMOVAL, error.clone()));
                }
            }
        }
        if let Some(n) = &a.notify {
            n.notify_one();
        }
        drop(st);
        self.share_applied(agent);
        self.request_evaluate();
    }
}

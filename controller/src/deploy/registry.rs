//! The lure registry: every instance ever created, by id, agent and slot,
//! and what event ingest asks of it (lure ownership, credential matches,
//! which decoys an agent runs, allow rules and suppressions).

use std::sync::Arc;

use foldhash::{HashMap, HashSet};

use ruse_proto::convert::PresentedCredential;
use ruse_proto::convert::ReportedEvent;
use ruse_proto::types::AgentId;

use super::Deployer;
use super::push::decoy_resource_id;
use crate::matching::{self, CredentialIndex, MatchedOn};
use crate::model::{AllowRule, Decoy, LureInstance, Suppression, Template};
use crate::store::StoreError;

/// One agent's active instances: campaign → slot → instances.
pub(super) type CampaignSlots = HashMap<String, HashMap<String, Vec<Arc<LureInstance>>>>;

/// Inserts an empty entry under `key` if there is none, cloning the key
/// only then (the campaign pass inserts 100k instances under a few
/// thousand keys).
pub(super) fn ensure<K, V>(map: &mut HashMap<K, V>, key: &K)
where
    K: std::hash::Hash + Eq + Clone,
    V: Default,
{
    if !map.contains_key(key) {
        map.insert(key.clone(), V::default());
    }
}

#[derive(Debug, Default)]
pub(super) struct Registry {
    /// Active (not retired) instances.
    pub(super) active: HashMap<Arc<str>, Arc<LureInstance>>,
    /// Active instances by agent, campaign and slot (several per slot only
    /// while an epoch or template is being replaced): the campaign pass
    /// looks them up by borrowed names, without building a key per slot.
    pub(super) by_slot: HashMap<AgentId, CampaignSlots>,
    /// Every instance ever (retired included), by presentable material.
    pub(super) credentials: CredentialIndex,
    /// The store's change mark this registry has taken in up to
    /// ([`crate::store::Store::lures_since`]).
    pub(super) seen: u64,
}

impl Registry {
    /// Every instance the store holds: active ones indexed, retired ones
    /// matchable.
    pub(super) fn load(store: &dyn crate::store::Store) -> Result<Registry, StoreError> {
        let mut registry = Registry::default();
        let (lures, seen) = store.lures_since(0)?;
        registry.reserve(lures.len());
        for lure in lures {
            registry.take_in(lure);
        }
        registry.seen = seen;
        Ok(registry)
    }

    /// Takes in an instance as the store holds it: a new one, a newer
    /// record of one held (retired: no longer active, still matchable), or
    /// one already held (nothing changes).
    pub(super) fn take_in(&mut self, lure: LureInstance) {
        if lure.retired.is_none() {
            if self.active.get(&lure.id).is_some_and(|held| **held == lure) {
                return;
            }
            self.remove(&lure.id);
            self.insert(Arc::new(lure));
        } else {
            self.remove(&lure.id);
            self.credentials.add(&lure);
        }
    }

    /// Room for `n` more instances: taking in another controller's 67,000
    /// grew every map many times over.
    pub(super) fn reserve(&mut self, n: usize) {
        self.active.reserve(n);
        self.credentials.reserve(n);
    }

    pub(super) fn insert(&mut self, lure: Arc<LureInstance>) {
        self.credentials.add(&lure);
        ensure(&mut self.by_slot, &lure.agent);
        if let Some(campaigns) = self.by_slot.get_mut(&lure.agent) {
            ensure(campaigns, &lure.campaign);
            if let Some(slots) = campaigns.get_mut(&lure.campaign) {
                ensure(slots, &lure.slot);
                if let Some(instances) = slots.get_mut(&lure.slot) {
                    instances.push(lure.clone());
                }
            }
        }
        self.active.insert(lure.id.clone(), lure);
    }

    /// The active instance of `slot` for `agent`, campaign and epoch.
    pub(super) fn find(
        &self,
        agent: &AgentId,
        campaign: &str,
        slot: &str,
        epoch: u32,
        template: Template,
    ) -> Option<&Arc<LureInstance>> {
        self.by_slot
            .get(agent)?
            .get(campaign)?
            .get(slot)?
            .iter()
            .find(|l| l.epoch == epoch && l.template == template)
    }

    pub(super) fn remove(&mut self, id: &str) -> Option<Arc<LureInstance>> {
        let lure = self.active.remove(id)?;
        let Some(campaigns) = self.by_slot.get_mut(&lure.agent) else {
            return Some(lure);
        };
        if let Some(slots) = campaigns.get_mut(&lure.campaign) {
            if let Some(instances) = slots.get_mut(&lure.slot) {
                instances.retain(|l| *l.id != *id);
                if instances.is_empty() {
                    slots.remove(&lure.slot);
                }
            }
            if slots.is_empty() {
                campaigns.remove(&lure.campaign);
            }
        }
        if campaigns.is_empty() {
            self.by_slot.remove(&lure.agent);
        }
        Some(lure)
    }
}

impl Deployer {
    pub fn suppressions(&self) -> Vec<Suppression> {
        self.lock()
            .suppressions
            .values()
            .map(|r| (**r).clone())
            .collect()
    }

    pub fn allow_rules(&self) -> Vec<AllowRule> {
        self.lock()
            .allow_rules
            .values()
            .map(|r| (**r).clone())
            .collect()
    }

    pub fn decoys(&self) -> Vec<Decoy> {
        self.lock().decoys.values().map(|d| (**d).clone()).collect()
    }

    /// The registry entry of a lure, active or retired.
    pub fn lure_owner(&self, id: &str) -> Result<Option<Arc<LureInstance>>, StoreError> {
        {
            let st = self.lock();
            if let Some(l) = st.registry.active.get(id).or_else(|| st.retiring.get(id)) {
                return Ok(Some(l.clone()));
            }
        }
        Ok(self.store.lure(id)?.map(Arc::new))
    }
}

/// What event ingest needs from the registry about one agent's batch,
/// looked up under one lock (and the store only for instances no longer
/// in memory): which lures exist and whose they are, which decoys the
/// agent runs, which planted credentials each decoy event may carry, and
/// the suppressions.
#[derive(Debug, Default)]
pub struct BatchLookup {
    owners: HashMap<Arc<str>, Arc<LureInstance>>,
    decoys: HashSet<String>,
    /// Per presented credential (by event id): the candidate lures and
    /// what would match, strongest first.
    candidates: HashMap<String, Vec<(Arc<str>, MatchedOn)>>,
    pub suppressions: Vec<Suppression>,
}

impl BatchLookup {
    /// The registry entry of a lure, active or retired.
    pub fn owner(&self, lure_id: &str) -> Option<&Arc<LureInstance>> {
        self.owners.get(lure_id)
    }

    /// Whether the agent runs (or was last told to run) decoy `name`.
    pub fn runs_decoy(&self, name: &str) -> bool {
        self.decoys.contains(name)
    }

    /// The lure instance whose material event `event_id`'s credential
    /// carries, with what matched; strongest evidence first.
    pub fn credential(
        &self,
        event_id: &str,
        presented: &PresentedCredential,
    ) -> Option<(Arc<LureInstance>, MatchedOn)> {
        self.candidates.get(event_id)?.iter().find_map(|(id, on)| {
            let lure = self.owners.get(id)?;
            matching::confirm(lure, presented, *on).then(|| (lure.clone(), *on))
        })
    }
}

impl Deployer {
    /// Everything ingest asks about `events` from `agent`, in one pass.
    pub fn lookup(
        &self,
        agent: &AgentId,
        events: &[ReportedEvent],
    ) -> Result<BatchLookup, StoreError> {
        // Another controller's instances not yet taken in (the deploy
        // worker does that between its passes): an agent that has just
        // moved here reports lures its last controller planned, and a
        // decoy may be presented a credential planted by another's.
        self.take_in_others_now()?;
        let mut out = BatchLookup::default();
        let mut missing: Vec<Arc<str>> = Vec::new();
        {
            let st = self.lock();
            let runs = st.agents.get(agent);
            let mut want = |id: Arc<str>, out: &mut BatchLookup| {
                if out.owners.contains_key(&id) {
                    return;
                }
                match st.registry.active.get(&id).or_else(|| st.retiring.get(&id)) {
                    Some(l) => {
                        out.owners.insert(id, l.clone());
                    }
                    None => missing.push(id),
                }
            };
            for e in events {
                match &e.decoy {
                    Some(d) => {
                        let id = decoy_resource_id(&d.name);
                        if runs.is_some_and(|a| {
                            a.desired.contains_key(id.as_str())
                                || a.applied.contains_key(id.as_str())
                        }) {
                            out.decoys.insert(d.name.clone());
                        }
                        if let Some(c) = &e.credential {
                            let found = st.registry.credentials.candidates(c);
                            for (id, _) in &found {
                                want(id.clone(), &mut out);
                            }
                            out.candidates.insert(e.id.clone(), found);
                        }
                    }
                    None => want(Arc::from(e.lure_id.as_str()), &mut out),
                }
            }
            out.suppressions = st.suppressions.values().map(|s| (**s).clone()).collect();
        }
        missing.sort_unstable();
        missing.dedup();
        for id in missing {
            if let Some(lure) = self.store.lure(&id)? {
                out.owners.insert(id, Arc::new(lure));
            }
        }
        Ok(out)
    }
}

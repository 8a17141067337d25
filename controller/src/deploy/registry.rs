//! The lure registry: every instance ever created, by id, agent and slot,
//! and what event ingest asks of it (lure ownership, credential matches,
//! which decoys an agent runs, allow rules and suppressions).

use super::*;

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
}

impl Registry {
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

    /// The lure instance (active or retired) whose material `presented`
    /// carries, with what matched; strongest evidence first.
    pub fn match_credential(
        &self,
        presented: &PresentedCredential,
    ) -> Result<Option<(Arc<LureInstance>, MatchedOn)>, StoreError> {
        let candidates = self.lock().registry.credentials.candidates(presented);
        for (id, on) in candidates {
            if let Some(lure) = self.lure_owner(&id)?
                && matching::confirm(&lure, presented, on)
            {
                return Ok(Some((lure, on)));
            }
        }
        Ok(None)
    }

    /// Whether `agent` runs (or was last told to run) decoy `name`.
    pub fn runs_decoy(&self, agent: &AgentId, name: &str) -> bool {
        let id = decoy_resource_id(name);
        self.lock().agents.get(agent).is_some_and(|a| {
            a.desired.contains_key(id.as_str()) || a.applied.contains_key(id.as_str())
        })
    }
}

//! What controllers sharing one store exchange about lures: the `deploy`
//! lease that makes one of them the leader (it moves rollouts on, and
//! plans the lures of agents no controller holds a session for), and
//! taking in what another wrote.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use foldhash::{HashSet, HashSetExt};

use super::Deployer;
use ruse_proto::types::AgentId;

use crate::model::{AgentRecord, Applied, CampaignRecord};
use crate::store::StoreError;

/// The lease of the controller that moves rollouts on and plans the lures
/// of agents whose sessions no controller holds.
pub(super) const LEASE: &str = "deploy";
/// A leader stops acting as one this long before its lease would run out
/// unrenewed.
const SAFETY: Duration = Duration::from_secs(2);

impl Deployer {
    /// Writes what `agent` applied into its record, where other
    /// controllers share the store (the leader counts its rollouts from
    /// it).
    pub(super) fn share_applied(&self, agent: &AgentId) {
        if !self.shared {
            return;
        }
        let applied = {
            let st = self.lock();
            let Some(a) = st.agents.get(agent) else {
                return;
            };
            Applied {
                revisions: a.applied.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
                failed: a
                    .failed
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.clone()))
                    .collect(),
            }
        };
        self.fleet.set_applied(agent, applied);
    }

    /// Takes in what an agent whose session another controller holds
    /// applied, as that controller wrote it into the agent's record.
    pub fn take_in_applied(&self, record: &AgentRecord) {
        let Some(applied) = &record.applied else {
            return;
        };
        {
            let mut st = self.lock();
            let a = st.agents.entry(record.id.clone()).or_default();
            if a.notify.is_some() {
                // Its session is here: this controller knows better.
                return;
            }
            a.applied = applied
                .revisions
                .iter()
                .map(|(k, v)| (Arc::from(k.as_str()), *v))
                .collect();
            a.failed = applied
                .failed
                .iter()
                .map(|(k, v)| (Arc::from(k.as_str()), v.clone()))
                .collect();
        }
        self.request_evaluate();
    }

    /// Takes or renews the `deploy` lease; true while this controller is
    /// the leader. Becoming it, it first takes in what the previous one
    /// wrote.
    pub fn take_lease(&self) -> Result<bool, StoreError> {
        let was = self.leading();
        let held = self.ask_lease()?;
        if held && !was {
            tracing::info!("this controller plans lures and moves rollouts on");
            self.reload("campaigns")?;
            self.reload_registry()?;
            self.request_recompute();
            self.request_evaluate();
        } else if was && !held {
            tracing::warn!("another controller plans lures and moves rollouts on now");
        }
        Ok(held)
    }

    /// Asks for the lease; records when it was asked if granted.
    pub(super) fn ask_lease(&self) -> Result<bool, StoreError> {
        // Counted from before the request: the database's lease runs at
        // least that long.
        let asked = Instant::now();
        let held = match self.store.lease(LEASE, crate::store::LEASE_TTL) {
            Ok(held) => held,
            Err(e) => {
                self.lost_lease();
                return Err(e);
            }
        };
        *self.lease_granted() = held.then_some(asked);
        Ok(held)
    }

    pub(super) fn lost_lease(&self) {
        *self.lease_granted() = None;
    }

    fn lease_granted(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        self.lease.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether this controller creates instances and moves rollouts on: it
    /// holds the lease, granted recently enough that no other controller
    /// can have taken it over (a leader that cannot renew stops acting as
    /// one [`SAFETY`] before its lease runs out, even in the middle of a
    /// pass).
    pub fn leading(&self) -> bool {
        self.lease_granted()
            .is_some_and(|t| t.elapsed() + SAFETY < crate::store::LEASE_TTL)
    }

    /// Takes in what other controllers wrote to the registry since it last
    /// looked, if they wrote anything, and has the desired sets of the
    /// agents it is of computed again (only theirs can change). Run by the
    /// deploy worker between passes: while three controllers each plan a
    /// third of a fleet-wide campaign, taking in the others' instances as
    /// each chunk arrived, and computing every agent again for each, took
    /// the CPU this controller's own pass and pushes wanted.
    pub(super) async fn take_in_others(self: &Arc<Self>) -> Result<(), StoreError> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.take_in_others_now())
            .await
            .map_err(|e| StoreError::Engine(e.to_string().into()))?
    }

    /// [`Deployer::take_in_others`], on this thread.
    pub(super) fn take_in_others_now(&self) -> Result<(), StoreError> {
        if !self.registry_stale.swap(false, Ordering::AcqRel) {
            return Ok(());
        }
        match self.reload_registry() {
            Ok(agents) => {
                self.request_recompute_of(agents);
                Ok(())
            }
            Err(e) => {
                self.registry_stale.store(true, Ordering::Release);
                Err(e)
            }
        }
    }

    /// Takes in the instances another controller created or retired since
    /// the registry last looked; instances this one created and has not
    /// written yet stay as they are. Returns the agents they are of.
    fn reload_registry(&self) -> Result<HashSet<AgentId>, StoreError> {
        let seen = self.lock().registry.seen;
        let (changed, mark) = self.store.lures_since(seen)?;
        let mut agents = HashSet::new();
        let mut st = self.lock();
        st.registry.reserve(changed.len());
        for lure in changed {
            if !st.undurable.contains(&lure.id) {
                agents.insert(lure.agent.clone());
                st.registry.take_in(lure);
            }
        }
        st.registry.seen = st.registry.seen.max(mark);
        Ok(agents)
    }

    /// Takes in the campaigns, lure instances, decoys, allow rules or
    /// suppressions (`table`, as the store names it) as stored, after
    /// another controller sharing the store changed them.
    pub fn reload(&self, table: &str) -> Result<(), StoreError> {
        fn by_name<T>(items: Vec<T>, name: fn(&T) -> &str) -> BTreeMap<String, Arc<T>> {
            items
                .into_iter()
                .map(|t| (name(&t).to_owned(), Arc::new(t)))
                .collect()
        }
        let changed = match table {
            "campaigns" => {
                let stored: BTreeMap<String, CampaignRecord> = self
                    .store
                    .campaigns()?
                    .into_iter()
                    .map(|r| (r.target.spec.name.clone(), r))
                    .collect();
                let mut st = self.lock();
                std::mem::replace(&mut st.campaigns, stored) != st.campaigns
            }
            // Every controller writes instances; its own are not notified.
            // The deploy worker takes them in between its passes (see
            // `take_in_others`).
            "lures" => {
                self.registry_stale.store(true, Ordering::Release);
                self.wake.notify_one();
                false
            }
            "decoys" => {
                let stored = by_name(self.store.decoys()?, |d| &d.name);
                let mut st = self.lock();
                std::mem::replace(&mut st.decoys, stored) != st.decoys
            }
            "allow_rules" => {
                let stored = by_name(self.store.allow_rules()?, |r| &r.name);
                let mut st = self.lock();
                std::mem::replace(&mut st.allow_rules, stored) != st.allow_rules
            }
            "suppressions" => {
                let stored = by_name(self.store.suppressions()?, |r| &r.name);
                let mut st = self.lock();
                std::mem::replace(&mut st.suppressions, stored) != st.suppressions
            }
            _ => false,
        };
        if changed {
            self.request_recompute();
        }
        Ok(())
    }

    /// Gives up the lease (stopping): another controller takes over at
    /// once.
    pub fn release_lease(&self) {
        if self.lease_granted().take().is_some()
            && let Err(e) = self.store.release_lease(LEASE)
        {
            tracing::warn!(error = %e, "cannot give up the deploy lease; another controller takes it when it expires");
        }
    }
}

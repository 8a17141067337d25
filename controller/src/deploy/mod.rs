//! Which lures go where, and getting them there.
//!
//! - The **registry** holds every lure instance ever created: its agent,
//!   campaign, slot and material. Instances are retired, never deleted, so
//!   a credential used long after rotation is still attributed.
//! - Each campaign has a **target generation** (its latest spec and
//!   rotation epoch) and, once a rollout has completed, a **stable** one.
//!   Matching agents are ordered by a stable hash; those inside the
//!   released waves get the target generation, the others keep the stable
//!   one.
//! - Each agent has a **desired** set (lure id → revision). A session
//!   pushes the difference between desired and what the agent reported as
//!   applied (its `Hello`, then its acks): at most one update in flight,
//!   changes coalesced meanwhile.
//!
//! This file is the facade (the [`Deployer`], applying and deleting
//! resources, listing lures); behind it `registry.rs` (instances and what
//! ingest asks), `rollout.rs` (generations, waves, verdicts, rotation),
//! `plan.rs` (desired state per agent and the pass that writes it) and
//! `push.rs` (the per-agent update protocol).
//!
//! Controllers sharing one store plan together: the holder of the
//! `deploy` lease (the *leader*; always this controller on sled) creates
//! and retires instances, moves rollouts on and rotates on schedule; the
//! others take in the campaigns and instances it wrote (the store's change
//! feed, [`Deployer::reload`]) and push, to the agents whose sessions they
//! hold, only instances that exist.
//!
//! Invariants:
//! - **An instance is durable in the registry before it is pushed.**
//! - **Revisions change only when the rendered lure would change** (slot,
//!   decoy or material), so restarts cause no re-push.

use std::collections::BTreeMap;

// Seeded fast hashing: a 10k-agent campaign pass does hundreds of
// thousands of lookups keyed by lure and agent ids, and SipHash was a
// quarter of its time (perf).
use foldhash::{HashMap, HashSet, HashSetExt};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{Mutex as AsyncMutex, Notify, watch};

use ruse_proto::types::{AgentId, UnixMs};

use crate::fleet::Fleet;
use crate::model::{
    AllowRule, Campaign, CampaignRecord, Decoy, Generation, LureInstance, SlotVersion, Suppression,
    Template,
};
use crate::resources::{Document, ManifestError, Parsed};
use crate::store::{Committer, Store, StoreError};

mod plan;
mod push;
mod registry;
mod rollout;
mod shared;

use self::plan::{Desired, decoy_change, slot_fingerprint};
use self::push::Inflight;
pub use self::push::{ALLOW_RULES_ID, DECOY_KIND, decoy_resource_id, decoy_spec};
pub use self::registry::BatchLookup;
use self::registry::Registry;
pub use self::rollout::{CampaignStatus, RolloutAction, WaveStatus, rollout_order, rotation_due};
use self::rollout::{OrderCache, next_record};

#[derive(Debug, Default)]
struct AgentLures {
    desired: BTreeMap<Arc<str>, Desired>,
    /// What the agent reported applied, by id.
    applied: HashMap<Arc<str>, u64>,
    /// Refused by the agent at this revision, with its error.
    failed: HashMap<Arc<str>, (u64, String)>,
    inflight: Option<Inflight>,
    /// Set while a session is open.
    notify: Option<Arc<Notify>>,
    greeted: bool,
    updates_sent: u64,
}

impl AgentLures {
    /// Whether every lure of `campaign` is applied (true), failed
    /// (false), or neither yet (None).
    fn campaign_result(&self, campaign: &str) -> Option<bool> {
        let mut all_applied = true;
        for (id, d) in self
            .desired
            .iter()
            .filter(|(_, d)| *d.campaign == *campaign)
        {
            if self
                .failed
                .get(id)
                .is_some_and(|(rev, _)| *rev == d.revision)
            {
                return Some(false);
            }
            if self.applied.get(id) != Some(&d.revision) {
                all_applied = false;
            }
        }
        all_applied.then_some(true)
    }

    fn first_error(&self, campaign: &str) -> Option<String> {
        self.desired
            .iter()
            .filter(|(_, d)| *d.campaign == *campaign)
            .find_map(|(id, d)| {
                self.failed
                    .get(id)
                    .filter(|(rev, _)| *rev == d.revision)
                    .map(|(_, e)| e.clone())
            })
    }
}

#[derive(Debug, Default)]
struct State {
    campaigns: BTreeMap<String, CampaignRecord>,
    decoys: BTreeMap<String, Arc<Decoy>>,
    allow_rules: BTreeMap<String, Arc<AllowRule>>,
    suppressions: BTreeMap<String, Arc<Suppression>>,
    registry: Registry,
    agents: HashMap<AgentId, AgentLures>,
    /// Created but not yet durable: never pushed.
    undurable: HashSet<Arc<str>>,
    /// Retired in memory, their retired records not yet written: still
    /// found by id meanwhile (a lure touched while it is rotated away).
    retiring: HashMap<Arc<str>, Arc<LureInstance>>,
    next_nonce: u64,
}

impl State {
    /// Wakes the sessions of `ids` that have one.
    fn wake(&self, ids: &[AgentId]) {
        for id in ids {
            if let Some(n) = self.agents.get(id).and_then(|a| a.notify.as_ref()) {
                n.notify_one();
            }
        }
    }

    /// Moves an active instance to `retiring`, stamped retired `now`.
    fn retire(&mut self, id: &str, now: UnixMs) {
        if let Some(lure) = self.registry.remove(id) {
            let mut lure = (*lure).clone();
            lure.retired = Some(now);
            self.undurable.remove(id);
            self.retiring.insert(lure.id.clone(), Arc::new(lure));
        }
    }
}

/// What an apply did to one document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplyResult {
    pub kind: &'static str,
    pub name: String,
    /// created, configured or unchanged.
    pub action: &'static str,
    /// What a change does beyond the resource itself (a decoy's lures).
    pub notes: Vec<String>,
}

/// Why an admin operation on resources failed.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A registry entry and how it stands on its agent.
#[derive(Debug, Clone)]
pub struct LureView {
    pub lure: LureInstance,
    pub revision: u64,
    /// applied, pending, failed or retired.
    pub state: &'static str,
    pub error: String,
}

/// The deployer: registry, desired sets, rollouts, and the push protocol.
#[derive(Debug)]
pub struct Deployer {
    /// Shared with the blocking threads that write registry chunks.
    state: Arc<Mutex<State>>,
    store: Arc<dyn Store>,
    committer: Committer,
    fleet: Arc<Fleet>,
    /// Serialises admin changes (apply, delete, rotate, rollout actions).
    admin: AsyncMutex<()>,
    orders: OrderCache,
    wake: Notify,
    recompute_needed: AtomicBool,
    /// Agents whose desired sets alone need computing again (another
    /// controller's instances of theirs arrived), when no whole pass is
    /// due.
    recompute_of: Mutex<HashSet<AgentId>>,
    /// Another controller wrote lure instances this one has not taken in.
    registry_stale: AtomicBool,
    evaluate_needed: AtomicBool,
    /// Set after the first recomputation. Until then desired sets are
    /// empty, and pushing would tell every agent to remove its lures.
    ready: AtomicBool,
    /// Rendered bytes per update, at most.
    max_update_bytes: usize,
    /// Offline longer than this, an agent is unreachable: rollouts report
    /// it and do not wait for it.
    unreachable_after: Duration,
    /// One registry chunk is written at a time (see `write_chunk`).
    writing: Arc<Mutex<()>>,
    /// Lure instances this controller created and wrote since it started
    /// (not those it took in from others sharing the store).
    created: Arc<std::sync::atomic::AtomicU64>,
    /// When this controller was last granted the `deploy` lease (see
    /// above), if it holds it.
    lease: Mutex<Option<std::time::Instant>>,
    /// Other controllers share the store: what agents apply is written to
    /// their records, for the leader's rollouts.
    shared: bool,
}

/// How long after planting lures a controller waits before taking in the
/// lures other controllers planted meanwhile. In a fleet-wide change over
/// three replicas each takes in two thirds of the instances (67,000 at
/// 10,000 agents), which competed with its own pushes for the CPU.
const TAKE_IN_AFTER_PLANTING: Duration = Duration::from_millis(500);

/// Rollout evaluation runs at most this often. Each pass counts acks over
/// the whole fleet; while 10k agents ack a push, running it after every
/// burst of acks took a tenth of the controller's CPU (perf).
const EVALUATE_EVERY: Duration = Duration::from_millis(100);
fn lock_state(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

fn lures_kind() -> &'static str {
    "lure"
}

impl Deployer {
    /// Loads campaigns, decoys and active registry entries from the store.
    pub fn load(
        store: Arc<dyn Store>,
        committer: Committer,
        fleet: Arc<Fleet>,
        max_message_bytes: usize,
        unreachable_after: Duration,
    ) -> Result<Self, StoreError> {
        let mut state = State::default();
        for record in store.campaigns()? {
            state
                .campaigns
                .insert(record.target.spec.name.clone(), record);
        }
        for decoy in store.decoys()? {
            state.decoys.insert(decoy.name.clone(), Arc::new(decoy));
        }
        for rule in store.allow_rules()? {
            state.allow_rules.insert(rule.name.clone(), Arc::new(rule));
        }
        for rule in store.suppressions()? {
            state.suppressions.insert(rule.name.clone(), Arc::new(rule));
        }
        // Before the registry is read: batches a retirement superseded and
        // a crash left behind (see `recompute`).
        let dropped = store.drop_superseded_lure_batches()?;
        if dropped > 0 {
            tracing::info!(
                batches = dropped,
                "deleted lure batches whose instances were all retired since"
            );
        }
        state.registry = Registry::load(&*store)?;
        let shared = store.changes().is_some();
        let deployer = Deployer {
            state: Arc::new(Mutex::new(state)),
            store,
            committer,
            fleet,
            admin: AsyncMutex::new(()),
            orders: OrderCache::default(),
            wake: Notify::new(),
            recompute_needed: AtomicBool::new(true),
            recompute_of: Mutex::default(),
            registry_stale: AtomicBool::new(false),
            evaluate_needed: AtomicBool::new(true),
            ready: AtomicBool::new(false),
            max_update_bytes: max_message_bytes / 2,
            unreachable_after,
            writing: Arc::new(Mutex::new(())),
            created: Arc::default(),
            lease: Mutex::new(None),
            shared,
        };
        Ok(deployer)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        lock_state(&self.state)
    }

    /// Lure instances this controller created since it started.
    pub fn instances_created(&self) -> u64 {
        self.created.load(Ordering::Relaxed)
    }

    /// Asks the worker to recompute desired sets (catalog, labels, fleet
    /// changed).
    pub fn request_recompute(&self) {
        self.recompute_needed.store(true, Ordering::Release);
        self.wake.notify_one();
    }

    fn take_recompute_of(&self) -> HashSet<AgentId> {
        std::mem::take(&mut *self.recompute_of.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Asks the worker to recompute the desired sets of `agents`.
    fn request_recompute_of(&self, agents: HashSet<AgentId>) {
        if agents.is_empty() {
            return;
        }
        self.recompute_of
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(agents);
        self.wake.notify_one();
    }

    fn request_evaluate(&self) {
        self.evaluate_needed.store(true, Ordering::Release);
        self.wake.notify_one();
    }

    // ----- admin operations -----

    /// Applies checked documents atomically: every change is durable before
    /// this returns, or nothing changed.
    pub async fn apply(
        &self,
        docs: &[Parsed],
        dry_run: bool,
    ) -> Result<Vec<ApplyResult>, DeployError> {
        let _admin = self.admin.lock().await;
        let now = UnixMs::now();
        let (decoys, campaigns, rules, suppressions) = {
            let st = self.lock();
            (
                st.decoys.clone(),
                st.campaigns.clone(),
                st.allow_rules.clone(),
                st.suppressions.clone(),
            )
        };
        let mut rule_writes = Vec::new();
        let mut suppression_writes = Vec::new();
        // Decoys after this apply, to check references and fingerprints.
        let mut new_decoys: BTreeMap<String, Arc<Decoy>> = decoys.clone();
        for p in docs {
            if let Document::Decoy(d) = &p.doc {
                new_decoys.insert(d.name.clone(), Arc::new(d.clone()));
            }
        }
        let mut results = Vec::new();
        let mut decoy_writes = Vec::new();
        let mut changed_decoys = HashSet::new();
        let mut seen = HashSet::new();
        for p in docs {
            if !seen.insert((p.doc.kind(), p.doc.name().to_owned())) {
                return Err(p
                    .error(
                        "name",
                        format!(
                            "{} {} appears twice in this apply",
                            p.doc.kind(),
                            p.doc.name()
                        ),
                    )
                    .into());
            }
            match &p.doc {
                Document::Suppression(r) => {
                    let action = match suppressions.get(&r.name) {
                        None => "created",
                        Some(old) if **old == *r => "unchanged",
                        Some(_) => "configured",
                    };
                    if action != "unchanged" {
                        suppression_writes.push(r.clone());
                    }
                    results.push(ApplyResult {
                        kind: "Suppression",
                        name: r.name.clone(),
                        action,
                        notes: Vec::new(),
                    });
                }
                Document::AllowRule(r) => {
                    let action = match rules.get(&r.name) {
                        None => "created",
                        Some(old) if **old == *r => "unchanged",
                        Some(_) => "configured",
                    };
                    if action != "unchanged" {
                        rule_writes.push(r.clone());
                    }
                    results.push(ApplyResult {
                        kind: "AllowRule",
                        name: r.name.clone(),
                        action,
                        notes: Vec::new(),
                    });
                }
                Document::Decoy(d) => {
                    let action = match decoys.get(&d.name) {
                        None => "created",
                        Some(old) if **old == *d => "unchanged",
                        Some(_) => "configured",
                    };
                    if action != "unchanged" {
                        changed_decoys.insert(d.name.clone());
                        decoy_writes.push(d.clone());
                    }
                    let notes = match decoys.get(&d.name) {
                        Some(old) if action == "configured" => decoy_change(old, d, &campaigns),
                        _ => Vec::new(),
                    };
                    results.push(ApplyResult {
                        kind: "Decoy",
                        name: d.name.clone(),
                        action,
                        notes,
                    });
                }
                Document::Campaign(c) => {
                    for (i, slot) in c.lures.iter().enumerate() {
                        if let Some(name) = &slot.decoy {
                            let Some(decoy) = new_decoys.get(name) else {
                                return Err(p
                                    .error(format!("lures[{i}].decoy"), format!("no decoy named {name:?}; apply it first or in the same file"))
                                    .into());
                            };
                            if slot.template == Template::HostsEntry
                                && decoy.address.parse::<std::net::IpAddr>().is_err()
                            {
                                return Err(p
                                    .error(format!("lures[{i}].decoy"), format!("hosts-entry needs decoy {name} to have an IP address, not {:?}", decoy.address))
                                    .into());
                            }
                        }
                    }
                    let action = match campaigns.get(&c.name) {
                        None => "created",
                        Some(old) if old.target.spec == *c => "unchanged",
                        Some(_) => "configured",
                    };
                    results.push(ApplyResult {
                        kind: "Campaign",
                        name: c.name.clone(),
                        action,
                        notes: Vec::new(),
                    });
                }
            }
        }
        if dry_run {
            return Ok(results);
        }
        // New generations: changed campaigns, and campaigns whose decoys changed.
        let mut campaign_writes: Vec<CampaignRecord> = Vec::new();
        let applied: HashMap<&str, &Campaign> = docs
            .iter()
            .filter_map(|p| match &p.doc {
                Document::Campaign(c) => Some((c.name.as_str(), c)),
                Document::Decoy(_) | Document::AllowRule(_) | Document::Suppression(_) => None,
            })
            .collect();
        let mut names: Vec<&str> = campaigns
            .keys()
            .map(String::as_str)
            .chain(applied.keys().copied())
            .collect();
        names.sort_unstable();
        names.dedup();
        for name in names {
            let old = campaigns.get(name);
            let spec = match (applied.get(name), old) {
                (Some(spec), _) => (*spec).clone(),
                (None, Some(old)) => old.target.spec.clone(),
                (None, None) => continue,
            };
            let touches_changed_decoy = spec
                .lures
                .iter()
                .any(|s| s.decoy.as_ref().is_some_and(|d| changed_decoys.contains(d)));
            let spec_changed = old.is_none_or(|o| o.target.spec != spec);
            if !spec_changed && !touches_changed_decoy {
                continue;
            }
            let epoch = old.map_or(0, |o| o.target.epoch);
            let generation = self.generation(spec, epoch, old.map(|o| &o.target), &new_decoys)?;
            campaign_writes.push(next_record(old, generation, now));
        }
        for d in &decoy_writes {
            self.store.put_decoy(d)?;
        }
        for r in &rule_writes {
            self.store.put_allow_rule(r)?;
        }
        for r in &suppression_writes {
            self.store.put_suppression(r)?;
        }
        for r in &campaign_writes {
            self.store.put_campaign(r)?;
        }
        self.committer.durable().await?;
        {
            let mut st = self.lock();
            for d in decoy_writes {
                st.decoys.insert(d.name.clone(), Arc::new(d));
            }
            for r in rule_writes {
                st.allow_rules.insert(r.name.clone(), Arc::new(r));
            }
            for r in suppression_writes {
                st.suppressions.insert(r.name.clone(), Arc::new(r));
            }
            for r in campaign_writes {
                st.campaigns.insert(r.target.spec.name.clone(), r);
            }
        }
        self.request_recompute();
        Ok(results)
    }

    /// A generation of `spec`: slots keep their revision where slot and
    /// decoy are unchanged since `previous`.
    fn generation(
        &self,
        spec: Campaign,
        epoch: u32,
        previous: Option<&Generation>,
        decoys: &BTreeMap<String, Arc<Decoy>>,
    ) -> Result<Generation, StoreError> {
        let number = self.store.next_revision()?;
        let mut slots = BTreeMap::new();
        for slot in &spec.lures {
            let decoy = slot
                .decoy
                .as_ref()
                .and_then(|d| decoys.get(d))
                .map(|d| &**d);
            let fingerprint = slot_fingerprint(slot, decoy);
            let kept = previous
                .filter(|p| p.epoch == epoch)
                .and_then(|p| p.slots.get(&slot.key))
                .filter(|v| v.fingerprint == fingerprint)
                .map(|v| v.revision);
            let revision = match kept {
                Some(r) => r,
                None => self.store.next_revision()?,
            };
            slots.insert(
                slot.key.clone(),
                SlotVersion {
                    revision,
                    fingerprint,
                },
            );
        }
        Ok(Generation {
            number,
            spec,
            epoch,
            slots,
        })
    }

    /// Deletes a campaign; its lures are removed from agents, and stay in
    /// the registry as retired.
    pub async fn delete_campaign(&self, name: &str) -> Result<(), DeployError> {
        let _admin = self.admin.lock().await;
        if !self.lock().campaigns.contains_key(name) {
            return Err(DeployError::NotFound(format!("campaign {name}")));
        }
        self.store.delete_campaign(name)?;
        self.committer.durable().await?;
        self.lock().campaigns.remove(name);
        self.request_recompute();
        Ok(())
    }

    /// Deletes a decoy no campaign points at.
    pub async fn delete_decoy(&self, name: &str) -> Result<(), DeployError> {
        let _admin = self.admin.lock().await;
        {
            let st = self.lock();
            if !st.decoys.contains_key(name) {
                return Err(DeployError::NotFound(format!("decoy {name}")));
            }
            if let Some(c) = st.campaigns.values().find(|c| {
                c.target
                    .spec
                    .lures
                    .iter()
                    .any(|l| l.decoy.as_deref() == Some(name))
                    || c.stable.as_ref().is_some_and(|s| {
                        s.spec
                            .lures
                            .iter()
                            .any(|l| l.decoy.as_deref() == Some(name))
                    })
            }) {
                return Err(DeployError::Conflict(format!(
                    "decoy {name} is used by campaign {}; change or delete the campaign first",
                    c.target.spec.name
                )));
            }
        }
        self.store.delete_decoy(name)?;
        self.committer.durable().await?;
        self.lock().decoys.remove(name);
        Ok(())
    }

    /// Deletes an allow rule; matching agents stop treating its readers as
    /// benign.
    pub async fn delete_allow_rule(&self, name: &str) -> Result<(), DeployError> {
        let _admin = self.admin.lock().await;
        if !self.lock().allow_rules.contains_key(name) {
            return Err(DeployError::NotFound(format!("allow rule {name}")));
        }
        self.store.delete_allow_rule(name)?;
        self.committer.durable().await?;
        self.lock().allow_rules.remove(name);
        self.request_recompute();
        Ok(())
    }

    /// Deletes a suppression; what it hid is raised again from now on.
    pub async fn delete_suppression(&self, name: &str) -> Result<(), DeployError> {
        let _admin = self.admin.lock().await;
        if !self.lock().suppressions.contains_key(name) {
            return Err(DeployError::NotFound(format!("suppression {name}")));
        }
        self.store.delete_suppression(name)?;
        self.committer.durable().await?;
        self.lock().suppressions.remove(name);
        Ok(())
    }

    // ----- views -----

    pub fn campaign_names(&self) -> Vec<String> {
        self.lock().campaigns.keys().cloned().collect()
    }

    /// Registry entries, newest first, filtered.
    pub fn lures(
        &self,
        agent: Option<&AgentId>,
        campaign: Option<&str>,
        include_retired: bool,
    ) -> Result<Vec<LureView>, StoreError> {
        // What other controllers wrote and notified, even if the deploy
        // worker has not taken it in yet (it waits after planting).
        self.take_in_others_now()?;
        let all = if include_retired {
            self.store
                .lures()?
                .into_iter()
                .map(Arc::new)
                .collect::<Vec<_>>()
        } else {
            self.lock().registry.active.values().cloned().collect()
        };
        let st = self.lock();
        let mut out: Vec<LureView> = all
            .into_iter()
            .filter(|l| {
                agent.is_none_or(|a| &l.agent == a) && campaign.is_none_or(|c| l.campaign == c)
            })
            .map(|l| {
                let agent = st.agents.get(&l.agent);
                let desired = agent.and_then(|a| a.desired.get(&l.id));
                let revision = desired.map_or(0, |d| d.revision);
                let (state, error) = match (l.retired, desired, agent) {
                    (Some(_), _, _) | (None, None, _) => ("retired", String::new()),
                    (None, Some(d), Some(a)) => match (a.applied.get(&l.id), a.failed.get(&l.id)) {
                        (Some(r), _) if *r == d.revision => ("applied", String::new()),
                        (_, Some((r, e))) if *r == d.revision => ("failed", e.clone()),
                        _ => ("pending", String::new()),
                    },
                    (None, Some(_), None) => ("pending", String::new()),
                };
                LureView {
                    lure: (*l).clone(),
                    revision,
                    state,
                    error,
                }
            })
            .collect();
        out.sort_by(|a, b| {
            b.lure
                .created
                .cmp(&a.lure.created)
                .then_with(|| a.lure.id.cmp(&b.lure.id))
        });
        Ok(out)
    }

    // ----- sessions -----

    // ----- the worker -----

    /// Runs recomputation, rollout evaluation and scheduled rotation until
    /// `stop`.
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut last_rotation_check = tokio::time::Instant::now() - Duration::from_secs(3600);
        let mut last_evaluation = tokio::time::Instant::now() - EVALUATE_EVERY;
        let mut last_lease = tokio::time::Instant::now();
        let mut planted: Option<tokio::time::Instant> = None;
        loop {
            if last_lease.elapsed() >= crate::store::LEASE_RENEW {
                last_lease = tokio::time::Instant::now();
                if let Err(e) = self.take_lease() {
                    tracing::warn!(error = %e, "cannot renew the deploy lease");
                }
            }
            // An evaluation held back by EVALUATE_EVERY, due then.
            let deferred = self
                .evaluate_needed
                .load(Ordering::Acquire)
                .then_some(last_evaluation + EVALUATE_EVERY);
            tokio::select! {
                _ = stop.wait_for(|s| *s) => {
                    self.release_lease();
                    return;
                }
                () = self.wake.notified() => {}
                () = tokio::time::sleep(Duration::from_secs(1)) => {
                    // Agents going offline change wave accounting.
                    self.evaluate_needed.store(true, Ordering::Release);
                }
                () = tokio::time::sleep_until(deferred.unwrap_or_else(tokio::time::Instant::now)),
                    if deferred.is_some() => {}
            }
            // Let a burst of changes coalesce into one pass.
            tokio::time::sleep(Duration::from_millis(20)).await;
            // A whole pass first (the new lures of this controller's own
            // agents); then what others wrote, and the agents it is of.
            let pass = if self.recompute_needed.swap(false, Ordering::AcqRel) {
                self.take_recompute_of();
                let before = self.instances_created();
                let pass = self.recompute().await;
                if self.instances_created() > before {
                    planted = Some(tokio::time::Instant::now());
                }
                Some(pass)
            } else {
                // Just after this controller planted lures, its sessions
                // push them first: taking in the other controllers' share
                // of the same change (ingest takes in at once what it
                // needs) waits a little.
                if let Some(at) = planted.take()
                    && self.registry_stale.load(Ordering::Acquire)
                {
                    tokio::time::sleep_until(at + TAKE_IN_AFTER_PLANTING).await;
                }
                if let Err(e) = self.take_in_others().await {
                    tracing::warn!(error = %e, "cannot take in other controllers' lure instances; will retry");
                }
                let some = self.take_recompute_of();
                if some.is_empty() {
                    None
                } else {
                    Some(self.recompute_agents(Some(&some)).await)
                }
            };
            if let Some(Err(e)) = pass {
                tracing::error!(error = %e, "recomputing desired lures failed; will retry");
                self.recompute_needed.store(true, Ordering::Release);
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            // Still due: round again without waiting.
            if self.registry_stale.load(Ordering::Acquire)
                || !self
                    .recompute_of
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .is_empty()
            {
                self.wake.notify_one();
            }
            if self.leading()
                && last_evaluation.elapsed() >= EVALUATE_EVERY
                && self.evaluate_needed.swap(false, Ordering::AcqRel)
            {
                last_evaluation = tokio::time::Instant::now();
                if let Err(e) = self.evaluate().await {
                    tracing::error!(error = %e, "evaluating rollouts failed; will retry");
                    self.evaluate_needed.store(true, Ordering::Release);
                }
            }
            if self.leading() && last_rotation_check.elapsed() >= Duration::from_secs(60) {
                last_rotation_check = tokio::time::Instant::now();
                self.rotate_due().await;
            }
        }
    }

    /// Takes the lease if free and computes every desired set once,
    /// before the controller serves.
    pub async fn prepare(&self) -> Result<(), StoreError> {
        self.ask_lease()?;
        self.recompute_needed.store(false, Ordering::Release);
        self.recompute().await
    }
}

#[cfg(test)]
mod tests;

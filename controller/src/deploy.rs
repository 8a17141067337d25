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

use prost::Message;
use tokio::sync::{Mutex as AsyncMutex, Notify, watch};

use ruse_proto::agent::v1 as pb;
use ruse_proto::convert::{AgentState, PresentedCredential};
use ruse_proto::types::{AgentId, UnixMs, hex, new_ulid};

use crate::fleet::{Fleet, Member};
use crate::lures::{self, RenderInput};
use crate::matching::{self, CredentialIndex, MatchedOn};
use crate::model::{
    AllowRule, Campaign, CampaignRecord, Decoy, Generation, LureInstance, LureSlot, Material,
    RolloutState, SlotVersion, Suppression, Template,
};
use crate::resources::{Document, ManifestError, Parsed};
use crate::store::{Committer, Store, StoreError};

impl CampaignRecord {
    /// How many of `n` matching agents have been released the target.
    fn released(&self, n: usize) -> usize {
        match self.rollout {
            RolloutState::Completed => n,
            _ => wave_size(&self.target.spec.waves, self.wave, n),
        }
    }
}

/// Agents covered by waves `0..=wave` out of `n`.
fn wave_size(waves: &[u8], wave: usize, n: usize) -> usize {
    let pct = waves.get(wave).copied().unwrap_or(100);
    (n * usize::from(pct)).div_ceil(100)
}

/// The order in which a campaign reaches agents: by a hash of campaign and
/// agent, so waves are a stable, spread-out sample of the fleet.
pub fn rollout_order<'a>(
    campaign: &str,
    agents: impl IntoIterator<Item = &'a AgentId>,
) -> Vec<&'a AgentId> {
    // The digest as two big-endian halves sorts exactly as its bytes do,
    // without a heap copy or a byte-wise compare per key (evaluation sorts
    // the whole fleet several times a second during a rollout).
    let mut keyed: Vec<((u128, u128), &AgentId)> = agents
        .into_iter()
        .map(|a| {
            let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
            ctx.update(campaign.as_bytes());
            ctx.update(b"/");
            ctx.update(a.as_str().as_bytes());
            let digest = ctx.finish();
            let (hi, lo) = digest.as_ref().split_at(16);
            let half = |b: &[u8]| u128::from_be_bytes(b.try_into().unwrap_or([0; 16]));
            ((half(hi), half(lo)), a)
        })
        .collect();
    keyed.sort_unstable();
    keyed.into_iter().map(|(_, a)| a).collect()
}

/// Rollout orders by campaign, kept while the matching agents stay the
/// same: evaluation and `rollout status` ask several times a second during
/// a rollout, and ordering 10k agents (a SHA-256 each, then a sort) was most
/// of each answer.
#[derive(Debug, Default)]
struct OrderCache {
    orders: Mutex<HashMap<String, CachedOrder>>,
}

/// A fingerprint of the matching agents, and their order.
type CachedOrder = (u64, Arc<Vec<AgentId>>);

impl OrderCache {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, CachedOrder>> {
        self.orders.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// [`rollout_order`] of `matching` (in fleet order, by id).
    fn order(&self, campaign: &str, matching: &[&AgentId]) -> Arc<Vec<AgentId>> {
        use std::hash::{BuildHasher, Hash, Hasher};
        let mut h = foldhash::fast::FixedState::default().build_hasher();
        matching.len().hash(&mut h);
        for id in matching {
            id.hash(&mut h);
        }
        let key = h.finish();
        if let Some((k, order)) = self.lock().get(campaign)
            && *k == key
        {
            return order.clone();
        }
        let order: Arc<Vec<AgentId>> = Arc::new(
            rollout_order(campaign, matching.iter().copied())
                .into_iter()
                .cloned()
                .collect(),
        );
        self.lock()
            .insert(campaign.to_owned(), (key, order.clone()));
        order
    }

    /// Forgets campaigns that no longer exist.
    fn retain(&self, campaigns: &BTreeMap<String, CampaignRecord>) {
        self.lock().retain(|name, _| campaigns.contains_key(name));
    }
}

/// What an agent should have under one resource id.
#[derive(Debug, Clone)]
struct Desired {
    revision: u64,
    /// The campaign of a lure; empty for allow rules. Shared: every
    /// agent's entries of one campaign point at one string.
    campaign: Arc<str>,
    payload: Payload,
}

#[derive(Debug, Clone)]
enum Payload {
    /// `lure` is active: the pass retires an instance in the same hold of
    /// the state lock in which it drops it from the agent's desired set.
    Lure {
        slot: Arc<LureSlot>,
        decoy: Option<Arc<Decoy>>,
        lure: Arc<LureInstance>,
    },
    AllowRules(Arc<Vec<pb::AllowRule>>),
    /// An encoded `DecoySpec`.
    Decoy(Arc<Vec<u8>>),
}

/// The resource id of a decoy on the agents that run it.
pub fn decoy_resource_id(name: &str) -> String {
    format!("decoy/{name}")
}

/// The resource kind of decoys.
pub const DECOY_KIND: &str = "decoy";

/// The spec an agent runs for `decoy`.
pub fn decoy_spec(decoy: &Decoy) -> pb::DecoySpec {
    pb::DecoySpec {
        name: decoy.name.clone(),
        address: decoy.address.clone(),
        listen: decoy.listen.clone(),
        services: decoy
            .services
            .iter()
            .map(|s| pb::DecoyService {
                protocol: s.protocol.clone(),
                port: u32::from(s.port),
                refusal_delay_ms: s
                    .refusal_delay()
                    .map(|d| u32::try_from(d.as_millis()).unwrap_or(u32::MAX)),
            })
            .collect(),
    }
}

/// A revision derived from content: any change is a new revision.
fn content_revision(body: &[u8]) -> u64 {
    let digest = ring::digest::digest(&ring::digest::SHA256, body);
    let mut rev = [0u8; 8];
    rev.copy_from_slice(&digest.as_ref()[..8]);
    u64::from_le_bytes(rev) | 1
}

/// The resource id of an agent's allow rules.
pub const ALLOW_RULES_ID: &str = "allow-rules";

#[derive(Debug, Clone)]
struct Inflight {
    nonce: u64,
    sent: Vec<(Arc<str>, u64)>,
    removed: Vec<String>,
}

/// A removal that failed is recorded with this revision.
const REMOVAL: u64 = 0;

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

/// One agent's active instances: campaign → slot → instances.
type CampaignSlots = HashMap<String, HashMap<String, Vec<Arc<LureInstance>>>>;

/// Inserts an empty entry under `key` if there is none, cloning the key
/// only then (the campaign pass inserts 100k instances under a few
/// thousand keys).
fn ensure<K, V>(map: &mut HashMap<K, V>, key: &K)
where
    K: std::hash::Hash + Eq + Clone,
    V: Default,
{
    if !map.contains_key(key) {
        map.insert(key.clone(), V::default());
    }
}

#[derive(Debug, Default)]
struct Registry {
    /// Active (not retired) instances.
    active: HashMap<Arc<str>, Arc<LureInstance>>,
    /// Active instances by agent, campaign and slot (several per slot only
    /// while an epoch or template is being replaced): the campaign pass
    /// looks them up by borrowed names, without building a key per slot.
    by_slot: HashMap<AgentId, CampaignSlots>,
    /// Every instance ever (retired included), by presentable material.
    credentials: CredentialIndex,
}

impl Registry {
    fn insert(&mut self, lure: Arc<LureInstance>) {
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
    fn find(
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

    fn remove(&mut self, id: &str) -> Option<Arc<LureInstance>> {
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

/// Operator actions on a rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RolloutAction {
    Pause,
    Resume,
    Abort,
}

/// One wave, for `rusectl rollout status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaveStatus {
    pub percent: u8,
    pub agents: usize,
    pub acked: usize,
    pub failed: usize,
    pub pending: usize,
    pub offline: usize,
    /// Offline longer than `rollout_unreachable_after`: reported, not
    /// waited for, and not counted in `agents`.
    pub unreachable: usize,
    pub released: bool,
    pub errors: Vec<String>,
}

/// A campaign and its rollout, for the admin API.
#[derive(Debug, Clone)]
pub struct CampaignStatus {
    pub record: CampaignRecord,
    pub matching: usize,
    pub waves: Vec<WaveStatus>,
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
}

/// Rollout evaluation runs at most this often. Each pass counts acks over
/// the whole fleet; while 10k agents ack a push, running it after every
/// burst of acks took a tenth of the controller's CPU (perf).
const EVALUATE_EVERY: Duration = Duration::from_millis(100);
/// Resources sent in one update, at most.
const MAX_RESOURCES_PER_UPDATE: usize = 256;
/// New lure instances written (and flushed) per registry chunk, about; a
/// chunk always holds whole agents.
const REGISTRY_CHUNK: usize = 5_000;
/// Agents whose desired sets are computed per hold of the state lock, at
/// most (~5 ms): sessions push and ack in between.
const AGENTS_PER_LOCK: usize = 100;

/// A registry chunk's write: when it became durable.
type ChunkWritten = Result<std::time::Instant, StoreError>;

/// Where a pass spent its time, for the log.
#[derive(Debug, Default)]
struct PassTiming {
    created: usize,
    compute: Duration,
    /// Waiting to run again after letting sessions run.
    yielded: Duration,
    first_durable: Option<Duration>,
    last_durable: Option<Duration>,
}

impl PassTiming {
    /// A chunk became durable at `at`.
    fn durable(&mut self, started: std::time::Instant, at: std::time::Instant) {
        let after = at.saturating_duration_since(started);
        self.first_durable = Some(self.first_durable.map_or(after, |d| d.min(after)));
        self.last_durable = Some(self.last_durable.map_or(after, |d| d.max(after)));
    }
}

fn lock_state(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

fn lures_kind() -> &'static str {
    "lure"
}

fn slot_fingerprint(slot: &LureSlot, decoy: Option<&Decoy>) -> String {
    let bytes = serde_json::to_vec(&(slot, decoy)).unwrap_or_default();
    hex(ring::digest::digest(&ring::digest::SHA256, &bytes).as_ref())
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
        for lure in store.lures()? {
            if lure.retired.is_none() {
                state.registry.insert(Arc::new(lure));
            } else {
                state.registry.credentials.add(&lure);
            }
        }
        let deployer = Deployer {
            state: Arc::new(Mutex::new(state)),
            store,
            committer,
            fleet,
            admin: AsyncMutex::new(()),
            orders: OrderCache::default(),
            wake: Notify::new(),
            recompute_needed: AtomicBool::new(true),
            evaluate_needed: AtomicBool::new(true),
            ready: AtomicBool::new(false),
            max_update_bytes: max_message_bytes / 2,
            unreachable_after,
            writing: Arc::new(Mutex::new(())),
        };
        Ok(deployer)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        lock_state(&self.state)
    }

    /// Asks the worker to recompute desired sets (catalog, labels, fleet
    /// changed).
    pub fn request_recompute(&self) {
        self.recompute_needed.store(true, Ordering::Release);
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

    /// New material for every lure of the campaign, rolled out in waves.
    pub async fn rotate(&self, name: &str) -> Result<(), DeployError> {
        let _admin = self.admin.lock().await;
        let (old, decoys) = {
            let st = self.lock();
            (st.campaigns.get(name).cloned(), st.decoys.clone())
        };
        let old = old.ok_or_else(|| DeployError::NotFound(format!("campaign {name}")))?;
        let generation =
            self.generation(old.target.spec.clone(), old.target.epoch + 1, None, &decoys)?;
        let mut record = next_record(Some(&old), generation, UnixMs::now());
        record.last_rotated = UnixMs::now();
        self.store.put_campaign(&record)?;
        self.committer.durable().await?;
        self.lock().campaigns.insert(name.to_owned(), record);
        self.request_recompute();
        Ok(())
    }

    /// Pauses, resumes or aborts a campaign's rollout.
    pub async fn rollout_action(
        &self,
        name: &str,
        action: RolloutAction,
        by: &str,
    ) -> Result<(), DeployError> {
        let _admin = self.admin.lock().await;
        let mut record = self
            .lock()
            .campaigns
            .get(name)
            .cloned()
            .ok_or_else(|| DeployError::NotFound(format!("campaign {name}")))?;
        let conflict = |what: &str| {
            Err(DeployError::Conflict(format!(
                "campaign {name}'s rollout is {what}"
            )))
        };
        let mut clear_failures = false;
        match (action, &record.rollout) {
            (_, RolloutState::Completed) => return conflict("already completed"),
            (_, RolloutState::Aborted { .. }) => {
                return conflict("aborted; apply or rotate to start a new one");
            }
            (RolloutAction::Pause, RolloutState::Paused { .. }) => {
                return conflict("already paused");
            }
            (RolloutAction::Resume, RolloutState::Progressing) => return conflict("not paused"),
            (RolloutAction::Pause, RolloutState::Progressing) => {
                record.rollout = RolloutState::Paused {
                    reason: format!("paused by {by}"),
                    by_failure: false,
                };
            }
            (RolloutAction::Resume, RolloutState::Paused { by_failure, .. }) => {
                // After a failure pause, resuming accepts that wave's
                // failures and releases the next one; failed lures are
                // retried.
                if *by_failure {
                    record.wave = (record.wave + 1).min(record.target.spec.waves.len() - 1);
                    clear_failures = true;
                }
                record.rollout = RolloutState::Progressing;
            }
            (RolloutAction::Abort, _) => {
                record.rollout = RolloutState::Aborted { by: by.to_owned() };
            }
        }
        record.updated = UnixMs::now();
        self.store.put_campaign(&record)?;
        self.committer.durable().await?;
        {
            let mut st = self.lock();
            st.campaigns.insert(name.to_owned(), record);
            if clear_failures {
                for agent in st.agents.values_mut() {
                    let ids: Vec<Arc<str>> = agent
                        .desired
                        .iter()
                        .filter(|(_, d)| *d.campaign == *name)
                        .map(|(id, _)| id.clone())
                        .collect();
                    for id in ids {
                        agent.failed.remove(&id);
                    }
                    if let Some(n) = &agent.notify {
                        n.notify_one();
                    }
                }
            }
        }
        self.request_recompute();
        self.request_evaluate();
        Ok(())
    }

    // ----- views -----

    pub fn decoys(&self) -> Vec<Decoy> {
        self.lock().decoys.values().map(|d| (**d).clone()).collect()
    }

    pub fn campaign_names(&self) -> Vec<String> {
        self.lock().campaigns.keys().cloned().collect()
    }

    /// A campaign with per-wave progress.
    pub fn campaign(&self, name: &str) -> Option<CampaignStatus> {
        let agents = self.fleet.members();
        let record = self.lock().campaigns.get(name)?.clone();
        // Ordered outside the lock, which every session's pushes and acks
        // take.
        let ids: Vec<&AgentId> = agents
            .iter()
            .filter(|a| {
                a.state != AgentState::Revoked && a.labels.matches(&record.target.spec.selector)
            })
            .map(|a| &a.id)
            .collect();
        let order = self.orders.order(name, &ids);
        let cutoff = UnixMs::now().saturating_sub(self.unreachable_after);
        let long_gone: HashSet<&AgentId> = agents
            .iter()
            .filter(|a| a.last_seen < cutoff)
            .map(|a| &a.id)
            .collect();
        let unreachable = |id: &AgentId| long_gone.contains(id);
        // Should an apply replace the record meanwhile, this status is of
        // the record read above; evaluation acts only if it is still current.
        let st = self.lock();
        let n = order.len();
        let released = record.released(n);
        let mut waves = Vec::new();
        let mut lo = 0;
        for (i, &pct) in record.target.spec.waves.iter().enumerate() {
            let hi = wave_size(&record.target.spec.waves, i, n).max(lo);
            let wave_released =
                hi <= released && (record.rollout == RolloutState::Completed || i <= record.wave);
            let mut w = WaveStatus {
                percent: pct,
                agents: hi - lo,
                acked: 0,
                failed: 0,
                pending: 0,
                offline: 0,
                unreachable: 0,
                released: wave_released,
                errors: Vec::new(),
            };
            for id in &order[lo..hi] {
                let lures = st.agents.get(id);
                let online = lures.is_some_and(|l| l.notify.is_some());
                match lures.and_then(|l| l.campaign_result(name)) {
                    Some(true) if wave_released => w.acked += 1,
                    Some(false) if wave_released => {
                        w.failed += 1;
                        if w.errors.len() < 3
                            && let Some(e) = lures.and_then(|l| l.first_error(name))
                        {
                            w.errors.push(format!("{id}: {e}"));
                        }
                    }
                    _ if !online && unreachable(id) => {
                        w.unreachable += 1;
                        w.agents -= 1;
                    }
                    _ if !online => w.offline += 1,
                    _ => w.pending += 1,
                }
            }
            waves.push(w);
            lo = hi;
        }
        Some(CampaignStatus {
            record,
            matching: n,
            waves,
        })
    }

    /// Registry entries, newest first, filtered.
    pub fn lures(
        &self,
        agent: Option<&AgentId>,
        campaign: Option<&str>,
        include_retired: bool,
    ) -> Result<Vec<LureView>, StoreError> {
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

    // ----- sessions -----

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
    pub fn next_update(&self, agent: &AgentId) -> Option<pb::Update> {
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
                Payload::Lure { slot, decoy, lure } => lures::render(RenderInput {
                    slot,
                    material: &lure.material,
                    decoy: decoy.as_deref(),
                    created: lure.created,
                })
                .map(|spec| (lures_kind(), spec.encode_to_vec()))
                .map_err(|e| e.to_string()),
                Payload::AllowRules(rules) => Ok((
                    ALLOW_RULES_ID,
                    pb::AllowRules {
                        rules: rules.to_vec(),
                    }
                    .encode_to_vec(),
                )),
                Payload::Decoy(body) => Ok((DECOY_KIND, body.to_vec())),
            };
            match rendered {
                Ok((kind, body)) => {
                    if bytes + body.len() > self.max_update_bytes && !resources.is_empty() {
                        break;
                    }
                    bytes += body.len();
                    resources.push(pb::Resource {
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
        Some(pb::Update {
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
    pub fn nacked(&self, agent: &AgentId, nonce: u64, errors: Vec<pb::ResourceError>) {
        self.settle(agent, nonce, errors);
    }

    fn settle(&self, agent: &AgentId, nonce: u64, errors: Vec<pb::ResourceError>) {
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
        self.request_evaluate();
    }

    // ----- the worker -----

    /// Runs recomputation, rollout evaluation and scheduled rotation until
    /// `stop`.
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut last_rotation_check = tokio::time::Instant::now() - Duration::from_secs(3600);
        let mut last_evaluation = tokio::time::Instant::now() - EVALUATE_EVERY;
        loop {
            // An evaluation held back by EVALUATE_EVERY, due then.
            let deferred = self
                .evaluate_needed
                .load(Ordering::Acquire)
                .then_some(last_evaluation + EVALUATE_EVERY);
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
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
            if self.recompute_needed.swap(false, Ordering::AcqRel)
                && let Err(e) = self.recompute().await
            {
                tracing::error!(error = %e, "recomputing desired lures failed; will retry");
                self.recompute_needed.store(true, Ordering::Release);
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            if last_evaluation.elapsed() >= EVALUATE_EVERY
                && self.evaluate_needed.swap(false, Ordering::AcqRel)
            {
                last_evaluation = tokio::time::Instant::now();
                if let Err(e) = self.evaluate().await {
                    tracing::error!(error = %e, "evaluating rollouts failed; will retry");
                    self.evaluate_needed.store(true, Ordering::Release);
                }
            }
            if last_rotation_check.elapsed() >= Duration::from_secs(60) {
                last_rotation_check = tokio::time::Instant::now();
                self.rotate_due().await;
            }
        }
    }

    /// Computes every desired set once, before the controller serves.
    pub async fn prepare(&self) -> Result<(), StoreError> {
        self.recompute_needed.store(false, Ordering::Release);
        self.recompute().await
    }

    /// Recomputes every agent's desired set; persists new instances before
    /// waking the sessions that have them to push, and retired ones last.
    ///
    /// Agents are taken in chunks: a chunk's new instances are written as
    /// one record while the next chunk is computed, and its agents are woken
    /// as soon as that record is durable. So the first pushes go out while
    /// most of a fleet-wide campaign (100k instances) is still being
    /// generated, and the state lock is never held for a whole pass.
    async fn recompute(&self) -> Result<(), StoreError> {
        let started = std::time::Instant::now();
        let members = self.fleet.members();
        let live: Vec<&Member> = members
            .iter()
            .filter(|a| a.state != AgentState::Revoked)
            .collect();
        let now = UnixMs::now();
        // Left undurable by a pass whose write failed: written first, and
        // their agents woken (that pass never did).
        let (plan, mut created) = {
            let st = self.lock();
            let leftover: Vec<Arc<LureInstance>> = st
                .undurable
                .iter()
                .filter_map(|id| st.registry.active.get(id))
                .cloned()
                .collect();
            self.orders.retain(&st.campaigns);
            (Plan::new(&st, &live, &self.orders), leftover)
        };
        created.sort_by(|a, b| a.agent.cmp(&b.agent));
        let mut wake: Vec<AgentId> = created.iter().map(|l| l.agent.clone()).collect();
        wake.dedup();
        let mut durable = tokio::task::JoinSet::new();
        let mut timing = PassTiming::default();
        let mut next = 0;
        loop {
            let last = next == live.len();
            // A chunk is written once full; agents whose sets changed with
            // nothing new to write (a decoy or allow rule changed) are woken
            // after each hold.
            let full = created.len() >= REGISTRY_CHUNK;
            if full || (created.is_empty() && !wake.is_empty()) || (last && !created.is_empty()) {
                timing.created += created.len();
                let chunk = std::mem::take(&mut created);
                let chunk_wake = std::mem::take(&mut wake);
                self.write_chunk(chunk, chunk_wake, &mut durable);
            }
            while let Some(done) = durable.try_join_next() {
                timing.durable(started, Self::chunk_written(done)?);
            }
            if last {
                break;
            }
            let computing = std::time::Instant::now();
            {
                let mut st = self.lock();
                let stop = (next + AGENTS_PER_LOCK).min(live.len());
                while next < stop && created.len() < REGISTRY_CHUNK {
                    desire(&mut st, &plan, live[next], now, &mut created, &mut wake)?;
                    next += 1;
                }
            }
            timing.compute += computing.elapsed();
            // Sessions waiting for the lock (pushes, acks) run now.
            let yielding = std::time::Instant::now();
            tokio::task::yield_now().await;
            timing.yielded += yielding.elapsed();
        }
        let live_ids: HashSet<&AgentId> = live.iter().map(|a| &a.id).collect();
        let gone = forget_gone(&mut self.lock(), &live_ids, now);
        self.wake_agents(&gone);
        let computed = started.elapsed();
        while let Some(done) = durable.join_next().await {
            timing.durable(started, Self::chunk_written(done)?);
        }
        // Retirements last: nothing waits on them (the deployer still finds
        // retiring instances by id), and a rotation's 100k of them written
        // first held back every push of its new instances. This pass's, and
        // any a failed write left.
        let retired: Vec<LureInstance> = self
            .lock()
            .retiring
            .values()
            .map(|l| (**l).clone())
            .collect();
        let retired_n = retired.len();
        if !retired.is_empty() {
            let store = self.store.clone();
            let retired =
                tokio::task::spawn_blocking(move || store.put_lures(&retired).map(|()| retired))
                    .await
                    .map_err(|e| StoreError::Engine(e.to_string().into()))??;
            self.committer.durable().await?;
            // Readable by id from the store now (lure_owner).
            {
                let mut st = self.lock();
                for lure in &retired {
                    st.retiring.remove(&lure.id);
                }
            }
            // A batch whose instances are all retired now is stored again,
            // record by record: deleted rather than kept twice. Its own
            // deletion need not be durable: a start repeats it.
            let store = self.store.clone();
            match tokio::task::spawn_blocking(move || store.drop_superseded_lure_batches()).await {
                Ok(Ok(0)) => {}
                Ok(Ok(n)) => tracing::debug!(batches = n, "deleted superseded lure batches"),
                Ok(Err(e)) => tracing::warn!(
                    error = %e,
                    "could not delete superseded lure batches; the next start tries again"
                ),
                Err(e) => tracing::warn!(error = %e, "deleting superseded lure batches failed"),
            }
        }
        if timing.created > 0 || retired_n > 0 {
            tracing::debug!(
                created = timing.created,
                retired = retired_n,
                agents = members.len(),
                compute_ms = timing.compute.as_millis() as u64,
                yielded_ms = timing.yielded.as_millis() as u64,
                computed_ms = computed.as_millis() as u64,
                first_durable_ms = timing.first_durable.unwrap_or_default().as_millis() as u64,
                last_durable_ms = timing.last_durable.unwrap_or_default().as_millis() as u64,
                done_ms = started.elapsed().as_millis() as u64,
                "lure registry updated"
            );
        }
        if !self.ready.swap(true, Ordering::AcqRel) {
            // Sessions that said Hello before the first pass: wake them all.
            let st = self.lock();
            for a in st.agents.values() {
                if let Some(n) = &a.notify {
                    n.notify_one();
                }
            }
        }
        self.request_evaluate();
        Ok(())
    }

    /// Wakes the agents of `wake` that have nothing new in `chunk` at once;
    /// has `chunk` written as one record and flushed on a blocking thread,
    /// which then marks it durable and wakes the rest. The pass computes
    /// the next chunk meanwhile; chunks are written one at a time.
    ///
    /// The write, the flush and the wake-up make no stop on the async
    /// runtime: while 10k sessions push and ack, every such stop waits
    /// behind them. As tasks there, chunks whose write and flush took
    /// ~5 ms were seen durable up to ~600 ms later in a 10k-agent push.
    fn write_chunk(
        &self,
        chunk: Vec<Arc<LureInstance>>,
        wake: Vec<AgentId>,
        durable: &mut tokio::task::JoinSet<ChunkWritten>,
    ) {
        let mut waiting: HashSet<&AgentId> = HashSet::new();
        for lure in &chunk {
            waiting.insert(&lure.agent);
        }
        let (later, now): (Vec<AgentId>, Vec<AgentId>) =
            wake.into_iter().partition(|id| waiting.contains(id));
        drop(waiting);
        self.wake_agents(&now);
        if chunk.is_empty() {
            return;
        }
        let store = self.store.clone();
        let state = self.state.clone();
        let writing = self.writing.clone();
        durable.spawn_blocking(move || {
            {
                let _turn = writing.lock().unwrap_or_else(|e| e.into_inner());
                store.put_new_lures(&chunk)?;
            }
            // Directly rather than through the committer, whose task runs
            // on the busy runtime.
            store.flush()?;
            let at = std::time::Instant::now();
            let mut st = lock_state(&state);
            for lure in &chunk {
                st.undurable.remove(&lure.id);
            }
            st.wake(&later);
            Ok(at)
        });
    }

    /// When a chunk's write (see `write_chunk`) made it durable, or why it
    /// failed.
    fn chunk_written(
        done: Result<ChunkWritten, tokio::task::JoinError>,
    ) -> Result<std::time::Instant, StoreError> {
        done.map_err(|e| StoreError::Engine(e.to_string().into()))?
    }

    fn wake_agents(&self, ids: &[AgentId]) {
        self.lock().wake(ids);
    }

    /// Advances, pauses or completes progressing rollouts.
    async fn evaluate(&self) -> Result<(), StoreError> {
        let names: Vec<String> = self
            .lock()
            .campaigns
            .iter()
            .filter(|(_, c)| c.rollout == RolloutState::Progressing)
            .map(|(n, _)| n.clone())
            .collect();
        for name in names {
            let Some(status) = self.campaign(&name) else {
                continue;
            };
            let record = &status.record;
            if record.rollout != RolloutState::Progressing {
                continue;
            }
            let wave = &status.waves[record.wave];
            let allowed = record.target.spec.max_failure_ratio;
            let mut next = record.clone();
            let verdict = verdict(wave, allowed);
            if let Verdict::Pause { ratio } = verdict {
                let responded = wave.acked + wave.failed;
                next.rollout = RolloutState::Paused {
                    reason: format!(
                        "wave {} ({}%): {} of {} agents failed ({:.0}% > {:.0}% allowed){}",
                        record.wave + 1,
                        wave.percent,
                        wave.failed,
                        responded,
                        ratio * 100.0,
                        allowed * 100.0,
                        wave.errors
                            .first()
                            .map(|e| format!("; first error: {e}"))
                            .unwrap_or_default()
                    ),
                    by_failure: true,
                };
                tracing::warn!(campaign = %name, reason = ?next.rollout, "rollout paused");
            } else if verdict == Verdict::Advance {
                if record.wave + 1 < record.target.spec.waves.len() {
                    next.wave += 1;
                    tracing::info!(campaign = %name, wave = next.wave + 1, "rollout wave released");
                } else {
                    next.rollout = RolloutState::Completed;
                    next.stable = Some(next.target.clone());
                    tracing::info!(campaign = %name, generation = next.target.number, "rollout completed");
                }
            } else {
                continue;
            }
            next.updated = UnixMs::now();
            let _admin = self.admin.lock().await;
            // An admin change may have replaced the record meanwhile.
            if self.lock().campaigns.get(&name) != Some(record) {
                continue;
            }
            self.store.put_campaign(&next)?;
            self.committer.durable().await?;
            self.lock().campaigns.insert(name, next);
            self.request_recompute();
        }
        Ok(())
    }

    /// Rotates campaigns whose `rotate_every` has passed and whose rollout
    /// is not under way.
    async fn rotate_due(&self) {
        let now = UnixMs::now();
        let due: Vec<String> = self
            .lock()
            .campaigns
            .iter()
            .filter(|(_, c)| rotation_due(c, now))
            .map(|(n, _)| n.clone())
            .collect();
        for name in due {
            tracing::info!(campaign = %name, "scheduled rotation");
            if let Err(e) = self.rotate(&name).await {
                tracing::error!(campaign = %name, error = %e, "scheduled rotation failed");
            }
        }
    }
}

/// What a wave's progress means for its rollout.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Verdict {
    /// Failures exceed the allowed ratio.
    Pause { ratio: f64 },
    /// Every online agent answered within the allowed ratio.
    Advance,
    /// Still waiting for answers.
    Wait,
}

/// What changing decoy `old` into `new` does: the fields that change, and
/// the live campaigns whose lures point at it (their files on every agent
/// are rewritten, and the services the old ones named stop).
fn decoy_change(
    old: &Decoy,
    new: &Decoy,
    campaigns: &BTreeMap<String, CampaignRecord>,
) -> Vec<String> {
    let mut notes = Vec::new();
    let services = |d: &Decoy| {
        d.services
            .iter()
            .map(|s| format!("{}/{}", s.protocol, s.port))
            .collect::<Vec<_>>()
            .join(" ")
    };
    for (field, before, after) in [
        ("address", old.address.clone(), new.address.clone()),
        ("listen", old.listen.clone(), new.listen.clone()),
        (
            "selector",
            old.selector.to_string(),
            new.selector.to_string(),
        ),
        ("services", services(old), services(new)),
    ] {
        if before != after {
            notes.push(format!("{field}: {before} -> {after}"));
        }
    }
    let users: Vec<&str> = campaigns
        .values()
        .filter(|c| {
            c.target
                .spec
                .lures
                .iter()
                .any(|l| l.decoy.as_deref() == Some(new.name.as_str()))
        })
        .map(|c| c.target.spec.name.as_str())
        .collect();
    if !users.is_empty() {
        notes.push(format!(
            "live lures point at this decoy: campaign {} (their files are rewritten on every agent)",
            users.join(", campaign ")
        ));
    }
    notes
}

/// An agent's error that names another lure ("lure ID ... of another
/// campaign") names that lure's campaign instead.
fn name_campaigns(registry: &Registry, error: String) -> String {
    let Some(at) = error.find("by lure ") else {
        return error;
    };
    let id = error[at + 8..]
        .split_whitespace()
        .next()
        .unwrap_or_default();
    match registry.active.get(id) {
        Some(lure) => error.replace(
            "of another campaign",
            &format!("of campaign {}", lure.campaign),
        ),
        None => error,
    }
}

/// Pauses as soon as the outcome is certain (failures exceed the ratio
/// even if every pending agent succeeds); otherwise judges once every
/// online agent of the wave has answered. Offline agents do not block.
fn verdict(wave: &WaveStatus, allowed: f64) -> Verdict {
    let responded = wave.acked + wave.failed;
    let ratio = if responded == 0 {
        0.0
    } else {
        wave.failed as f64 / responded as f64
    };
    let expected = responded + wave.pending;
    let certain = expected > 0 && wave.failed as f64 / expected as f64 > allowed;
    let settled = wave.pending == 0;
    if wave.failed > 0 && (certain || settled && ratio > allowed) {
        Verdict::Pause { ratio }
    } else if settled && (responded > 0 || wave.agents == 0) {
        Verdict::Advance
    } else {
        Verdict::Wait
    }
}

/// Whether a campaign's scheduled rotation is due at `now`.
pub fn rotation_due(c: &CampaignRecord, now: UnixMs) -> bool {
    let Some(every) = c.target.spec.rotate_every else {
        return false;
    };
    matches!(c.rollout, RolloutState::Completed) && c.last_rotated.until(now) >= every
}

/// The record after a new target generation: the rollout starts over from
/// the first wave; the stable generation is the last completed one.
fn next_record(old: Option<&CampaignRecord>, target: Generation, now: UnixMs) -> CampaignRecord {
    let stable = old.and_then(|o| match o.rollout {
        RolloutState::Completed => Some(o.target.clone()),
        _ => o.stable.clone(),
    });
    CampaignRecord {
        target,
        stable,
        rollout: RolloutState::Progressing,
        wave: 0,
        created: old.map_or(now, |o| o.created),
        updated: now,
        last_rotated: old.map_or(now, |o| o.last_rotated),
    }
}

/// One campaign as a pass sees it: a snapshot, with the agents its target
/// generation is released to.
struct CampaignPlan {
    name: String,
    /// Shared by every agent's desired entries of this campaign.
    shared_name: Arc<str>,
    target: Generation,
    target_slots: Vec<Arc<LureSlot>>,
    stable: Option<Generation>,
    stable_slots: Vec<Arc<LureSlot>>,
    released: HashSet<AgentId>,
}

/// A decoy as a pass sees it, with its encoded spec and that spec's
/// revision.
struct DecoyPlan {
    decoy: Arc<Decoy>,
    body: Arc<Vec<u8>>,
    revision: u64,
}

/// What a pass computes desired sets from: campaigns, decoys and allow
/// rules as they were when it started. A change meanwhile requests the next
/// pass, which sees it.
struct Plan {
    campaigns: Vec<CampaignPlan>,
    decoys: BTreeMap<String, DecoyPlan>,
    allow_rules: Vec<Arc<AllowRule>>,
}

impl Plan {
    fn new(st: &State, live: &[&Member], orders: &OrderCache) -> Plan {
        // Shared by every agent's desired entry instead of a copy each.
        let shared_slots = |g: &Generation| -> Vec<Arc<LureSlot>> {
            g.spec.lures.iter().cloned().map(Arc::new).collect()
        };
        let campaigns = st
            .campaigns
            .iter()
            .map(|(name, record)| {
                let matching: Vec<&AgentId> = live
                    .iter()
                    .filter(|a| a.labels.matches(&record.target.spec.selector))
                    .map(|a| &a.id)
                    .collect();
                let order = orders.order(name, &matching);
                let released = order[..record.released(order.len())]
                    .iter()
                    .cloned()
                    .collect();
                CampaignPlan {
                    name: name.clone(),
                    shared_name: Arc::from(name.as_str()),
                    target: record.target.clone(),
                    target_slots: shared_slots(&record.target),
                    stable: record.stable.clone(),
                    stable_slots: record.stable.as_ref().map(shared_slots).unwrap_or_default(),
                    released,
                }
            })
            .collect();
        let decoys = st
            .decoys
            .iter()
            .map(|(name, decoy)| {
                let body = Arc::new(decoy_spec(decoy).encode_to_vec());
                let revision = content_revision(&body);
                let decoy = decoy.clone();
                (
                    name.clone(),
                    DecoyPlan {
                        decoy,
                        body,
                        revision,
                    },
                )
            })
            .collect();
        Plan {
            campaigns,
            decoys,
            allow_rules: st.allow_rules.values().cloned().collect(),
        }
    }
}

/// Computes `agent`'s desired set, creating the instances it lacks (added
/// to `created`) and moving those it no longer wants to `retiring`. Pushes
/// the agent onto `wake` if its desired set changed.
fn desire(
    st: &mut State,
    plan: &Plan,
    agent: &Member,
    now: UnixMs,
    created: &mut Vec<Arc<LureInstance>>,
    wake: &mut Vec<AgentId>,
) -> Result<(), StoreError> {
    let id = &agent.id;
    let mut desired: BTreeMap<Arc<str>, Desired> = BTreeMap::new();
    for c in &plan.campaigns {
        let (generation, slots) = if c.released.contains(id) {
            (&c.target, &c.target_slots)
        } else {
            match &c.stable {
                Some(s) if agent.labels.matches(&s.spec.selector) => (s, &c.stable_slots),
                _ => continue,
            }
        };
        for (slot, shared) in generation.spec.lures.iter().zip(slots) {
            let existing = st
                .registry
                .find(id, &c.name, &slot.key, generation.epoch, slot.template)
                .cloned();
            let lure = match existing {
                Some(l) => l,
                None => {
                    let material = Material::generate(slot.template)
                        .map_err(|e| StoreError::Engine(e.to_string().into()))?;
                    let lure = Arc::new(LureInstance {
                        id: new_ulid().into(),
                        agent: id.clone(),
                        campaign: c.name.clone(),
                        slot: slot.key.clone(),
                        template: slot.template,
                        epoch: generation.epoch,
                        material,
                        created: now,
                        retired: None,
                    });
                    // An instance of another template under this key is no
                    // longer wanted and is retired below.
                    st.registry.insert(lure.clone());
                    st.undurable.insert(lure.id.clone());
                    created.push(lure.clone());
                    lure
                }
            };
            let revision = generation.slots.get(&slot.key).map_or(0, |v| v.revision);
            let decoy = slot
                .decoy
                .as_ref()
                .and_then(|d| plan.decoys.get(d))
                .map(|d| &d.decoy)
                .cloned();
            desired.insert(
                lure.id.clone(),
                Desired {
                    revision,
                    campaign: c.shared_name.clone(),
                    payload: Payload::Lure {
                        slot: shared.clone(),
                        decoy,
                        lure: lure.clone(),
                    },
                },
            );
        }
    }
    // Instances it no longer wants are retired (kept in the registry). Every
    // lure it wants is one of its active instances, so as many wanted as
    // active means none is unwanted, with no lookup each.
    if let Some(campaigns) = st.registry.by_slot.get(id) {
        let instances = campaigns
            .values()
            .flat_map(|slots| slots.values().flatten());
        if instances.clone().count() != desired.len() {
            let unwanted: Vec<Arc<str>> = instances
                .filter(|l| !desired.contains_key(&l.id))
                .map(|l| l.id.clone())
                .collect();
            for lure_id in unwanted {
                st.retire(&lure_id, now);
            }
        }
    }
    // Allow rules: one resource with the rules matching the agent; its
    // revision is derived from the rules, so any change is a new revision.
    let rules: Vec<pb::AllowRule> = plan
        .allow_rules
        .iter()
        .filter(|r| agent.labels.matches(&r.selector))
        .map(|r| pb::AllowRule {
            name: r.name.clone(),
            process: r.process.clone(),
            user: r.user.clone(),
            template: r.template.clone(),
        })
        .collect();
    if !rules.is_empty() {
        let body = pb::AllowRules {
            rules: rules.clone(),
        }
        .encode_to_vec();
        desired.insert(
            Arc::from(ALLOW_RULES_ID),
            Desired {
                revision: content_revision(&body),
                campaign: Arc::from(""),
                payload: Payload::AllowRules(Arc::new(rules)),
            },
        );
    }
    // Decoys: the agent runs each decoy whose selector it matches.
    for DecoyPlan {
        decoy,
        body,
        revision,
    } in plan.decoys.values()
    {
        if agent.labels.matches(&decoy.selector) {
            desired.insert(
                decoy_resource_id(&decoy.name).into(),
                Desired {
                    revision: *revision,
                    campaign: Arc::from(""),
                    payload: Payload::Decoy(body.clone()),
                },
            );
        }
    }
    if !st.agents.contains_key(id) {
        st.agents.insert(id.clone(), AgentLures::default());
    }
    if let Some(entry) = st.agents.get_mut(id) {
        let same = entry.desired.len() == desired.len()
            && entry
                .desired
                .iter()
                .zip(&desired)
                .all(|((a_id, a), (b_id, b))| a_id == b_id && a.revision == b.revision);
        entry.desired = desired;
        if !same {
            wake.push(id.clone());
        }
    }
    Ok(())
}

/// Revoked or unknown agents want nothing: their desired sets are emptied
/// (returned, to be woken) and their instances retired.
fn forget_gone(st: &mut State, live: &HashSet<&AgentId>, now: UnixMs) -> Vec<AgentId> {
    let mut wake = Vec::new();
    for (id, entry) in st.agents.iter_mut() {
        if !live.contains(id) && !entry.desired.is_empty() {
            entry.desired.clear();
            wake.push(id.clone());
        }
    }
    let unwanted: Vec<Arc<str>> = st
        .registry
        .by_slot
        .iter()
        .filter(|(agent, _)| !live.contains(agent))
        .flat_map(|(_, campaigns)| {
            campaigns
                .values()
                .flat_map(|slots| slots.values().flatten())
        })
        .map(|l| l.id.clone())
        .collect();
    for id in unwanted {
        st.retire(&id, now);
    }
    wake
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::fleet::tests_support::record as agent_record;
    use crate::model::AgentRecord;
    use crate::store::SledStore;

    /// A deployer over `store` for a fleet of `agents`, with its committer.
    fn deployer(store: &Arc<SledStore>, agents: Vec<AgentRecord>) -> Deployer {
        let (committer, _task) = Committer::spawn(store.clone());
        let fleet = Arc::new(Fleet::new(agents, Duration::from_secs(60)));
        Deployer::load(
            store.clone(),
            committer,
            fleet,
            4 << 20,
            Duration::from_secs(86_400),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn instances_a_failed_write_left_unpushed_are_written_and_pushed_by_the_next_pass() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SledStore::open(dir.path(), 1 << 20).unwrap());
        let d = deployer(&store, vec![agent_record("a1", "site=icu")]);
        let a1: AgentId = "a1".parse().unwrap();
        let notify = Arc::new(Notify::new());
        d.session_started(&a1, notify.clone());
        d.prepare().await.unwrap();
        d.hello(&a1, Default::default());
        let docs = crate::resources::parse(
            "kind: Campaign\nname: c1\nselector: {site: icu}\nlures: [{template: pgpass}, {template: netrc}]\n",
        )
        .unwrap();
        d.apply(&docs, false).await.unwrap();

        // The pass computes two instances but cannot write them.
        store.fail_lure_writes.store(1, Ordering::Release);
        assert!(d.recompute().await.is_err());
        let computed: HashSet<Arc<str>> = d.lock().undurable.clone();
        assert_eq!(computed.len(), 2);
        assert!(store.lures().unwrap().is_empty());
        if let Some(update) = d.next_update(&a1) {
            assert!(
                update
                    .resources
                    .iter()
                    .all(|r| !computed.contains(r.id.as_str())),
                "nothing undurable is pushed"
            );
            d.acked(&a1, update.nonce);
        }

        // The next pass has nothing new to compute, writes them anyway and
        // wakes the agent, which now gets them. (A wake-up stored earlier,
        // by the Hello, is used up first.)
        let _ = tokio::time::timeout(Duration::from_millis(50), notify.notified()).await;
        let woken = notify.notified();
        d.recompute().await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), woken)
            .await
            .expect("agent woken once its instances are durable");
        assert!(d.lock().undurable.is_empty());
        let stored: HashSet<Arc<str>> = store.lures().unwrap().into_iter().map(|l| l.id).collect();
        assert_eq!(stored, computed);
        let update = d.next_update(&a1).expect("the lures");
        let pushed: HashSet<Arc<str>> = update
            .resources
            .iter()
            .map(|r| Arc::from(r.id.as_str()))
            .collect();
        assert!(pushed.is_superset(&computed), "{pushed:?}");
    }

    #[tokio::test]
    async fn a_retired_instance_stays_attributable_until_its_record_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SledStore::open(dir.path(), 1 << 20).unwrap());
        let d = deployer(&store, vec![agent_record("a1", "site=icu")]);
        d.prepare().await.unwrap();
        let docs = crate::resources::parse(
            "kind: Campaign\nname: c1\nselector: {site: icu}\nlures: [{template: pgpass}]\n",
        )
        .unwrap();
        d.apply(&docs, false).await.unwrap();
        d.recompute().await.unwrap();
        let created = store.lures().unwrap();
        assert_eq!(created.len(), 1);
        let id = created[0].id.clone();
        assert!(created[0].retired.is_none());
        assert!(
            store.lure(&id).unwrap().is_none(),
            "new instances are in a batch"
        );

        // Deleted; the pass retires the instance but cannot write that.
        d.delete_campaign("c1").await.unwrap();
        store.fail_lure_writes.store(1, Ordering::Release);
        assert!(d.recompute().await.is_err());
        let owner = d.lure_owner(&id).unwrap().expect("still found by id");
        assert!(owner.retired.is_some());
        assert!(d.lock().registry.active.is_empty());

        // The next pass writes the retirement: found in the store, and the
        // registry holds the instance once, retired.
        d.recompute().await.unwrap();
        assert!(d.lock().retiring.is_empty());
        assert!(store.lure(&id).unwrap().unwrap().retired.is_some());
        assert!(
            store.lure_batches().is_empty(),
            "the batch holds nothing its retirement record does not"
        );
        let all = store.lures().unwrap();
        assert_eq!(all.len(), 1);
        assert!(all[0].retired.is_some());
        assert!(d.lure_owner(&id).unwrap().unwrap().retired.is_some());

        // And after a restart it is retired, not active again.
        drop(d);
        let d = deployer(&store, vec![agent_record("a1", "site=icu")]);
        assert!(d.lock().registry.active.is_empty());
        assert!(d.lure_owner(&id).unwrap().unwrap().retired.is_some());
    }

    #[tokio::test]
    async fn a_start_deletes_batches_a_crash_left_after_their_retirements_were_written() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SledStore::open(dir.path(), 1 << 20).unwrap());
        let instance = |id: &str, retired: Option<UnixMs>| LureInstance {
            id: id.into(),
            agent: "a1".parse().unwrap(),
            campaign: "c1".into(),
            slot: "pgpass".into(),
            template: Template::Pgpass,
            epoch: 0,
            material: Material::default(),
            created: UnixMs(1),
            retired,
        };
        // What a pass leaves if the controller stops between writing its
        // retirements and deleting the batch they supersede.
        store
            .put_new_lures(&[Arc::new(instance("l1", None))])
            .unwrap();
        store.put_lures(&[instance("l1", Some(UnixMs(2)))]).unwrap();
        assert_eq!(store.lure_batches().len(), 1);

        let d = deployer(&store, vec![agent_record("a1", "site=icu")]);
        assert!(store.lure_batches().is_empty());
        assert!(d.lock().registry.active.is_empty());
        let owner = d.lure_owner("l1").unwrap().expect("still attributable");
        assert_eq!(owner.retired, Some(UnixMs(2)));
    }

    /// Open sessions (said Hello) for `ids`, with the notifies they wait on.
    fn sessions(d: &Deployer, ids: &[&AgentId]) -> Vec<Arc<Notify>> {
        ids.iter()
            .map(|id| {
                let notify = Arc::new(Notify::new());
                d.session_started(id, notify.clone());
                d.hello(id, Default::default());
                notify
            })
            .collect()
    }

    /// Runs a pass and asserts that it wakes every one of `notified`.
    async fn pass_wakes(d: &Deployer, notified: &[Arc<Notify>]) {
        for notify in notified {
            // A wake-up stored by the Hello is used up first.
            let _ = tokio::time::timeout(Duration::from_millis(50), notify.notified()).await;
        }
        let woken: Vec<_> = notified.iter().map(|n| n.notified()).collect();
        d.recompute().await.unwrap();
        for w in woken {
            tokio::time::timeout(Duration::from_secs(5), w)
                .await
                .expect("every agent woken");
        }
    }

    #[tokio::test]
    async fn a_change_with_nothing_to_write_wakes_every_agent_it_changes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SledStore::open(dir.path(), 1 << 20).unwrap());
        // More agents than one hold of the state lock computes.
        let n = 2 * AGENTS_PER_LOCK + 7;
        let records = (0..n)
            .map(|i| agent_record(&format!("a{i:05}"), "site=icu"))
            .collect();
        let d = deployer(&store, records);
        d.prepare().await.unwrap();
        let ids: Vec<AgentId> = [0, AGENTS_PER_LOCK + 1, n - 1]
            .iter()
            .map(|i| format!("a{i:05}").parse().unwrap())
            .collect();
        let notified = sessions(&d, &ids.iter().collect::<Vec<_>>());
        let docs = crate::resources::parse(
            "kind: Decoy\nname: d\nselector: {site: icu}\nservices: [{protocol: ssh, port: 2222}]\n",
        )
        .unwrap();
        d.apply(&docs, false).await.unwrap();
        pass_wakes(&d, &notified).await;
        assert!(store.lure_batches().is_empty());
        for id in &ids {
            let update = d.next_update(id).expect("the decoy");
            assert_eq!(update.resources.len(), 1);
            assert_eq!(update.resources[0].id, decoy_resource_id("d"));
        }
    }

    #[tokio::test]
    async fn a_fleet_wide_pass_writes_whole_agents_per_record_and_wakes_each_agent() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SledStore::open(dir.path(), 1 << 20).unwrap());
        // Enough instances for three records.
        let n = 2 * REGISTRY_CHUNK / 5 + 7;
        let records = (0..n)
            .map(|i| agent_record(&format!("a{i:05}"), "site=icu"))
            .collect();
        let d = deployer(&store, records);
        d.prepare().await.unwrap();
        let (first, last): (AgentId, AgentId) = (
            "a00000".parse().unwrap(),
            format!("a{:05}", n - 1).parse().unwrap(),
        );
        let notified = sessions(&d, &[&first, &last]);
        let lures: Vec<String> = (0..5)
            .map(|i| format!("{{template: pgpass, name: p{i}}}"))
            .collect();
        let docs = crate::resources::parse(&format!(
            "kind: Campaign\nname: c1\nselector: {{site: icu}}\nlures: [{}]\n",
            lures.join(", ")
        ))
        .unwrap();
        d.apply(&docs, false).await.unwrap();
        pass_wakes(&d, &notified).await;

        let batches = store.lure_batches();
        assert_eq!(
            batches.len(),
            3,
            "{:?}",
            batches.iter().map(Vec::len).collect::<Vec<_>>()
        );
        let mut seen: HashMap<AgentId, usize> = HashMap::default();
        let mut batch_of: HashMap<AgentId, usize> = HashMap::default();
        for (i, batch) in batches.iter().enumerate() {
            for lure in batch {
                *seen.entry(lure.agent.clone()).or_default() += 1;
                assert_eq!(
                    *batch_of.entry(lure.agent.clone()).or_insert(i),
                    i,
                    "{} split",
                    lure.agent
                );
            }
        }
        assert_eq!(seen.len(), n);
        assert!(seen.values().all(|c| *c == 5));
        assert!(d.lock().undurable.is_empty());
        for id in [&first, &last] {
            assert_eq!(d.next_update(id).expect("its lures").resources.len(), 5);
        }
    }

    #[test]
    fn waves_cover_cumulative_shares_rounding_up() {
        let waves = [10, 50, 100];
        assert_eq!(wave_size(&waves, 0, 20), 2);
        assert_eq!(wave_size(&waves, 1, 20), 10);
        assert_eq!(wave_size(&waves, 2, 20), 20);
        assert_eq!(
            wave_size(&[5, 100], 0, 3),
            1,
            "a wave is never empty when agents match"
        );
        assert_eq!(wave_size(&[5, 100], 0, 0), 0);
    }

    fn wave(
        agents: usize,
        acked: usize,
        failed: usize,
        pending: usize,
        offline: usize,
    ) -> WaveStatus {
        WaveStatus {
            percent: 50,
            agents,
            acked,
            failed,
            pending,
            offline,
            unreachable: 0,
            released: true,
            errors: Vec::new(),
        }
    }

    #[test]
    fn verdicts() {
        use Verdict::*;
        let cases = [
            // 1 failure of 2 answers, 6 pending: could still end at 1/8.
            (wave(8, 1, 1, 6, 0), 0.2, Wait),
            // 3 failures of 8 exceed 20% whatever happens.
            (wave(8, 3, 3, 2, 0), 0.2, Pause { ratio: 0.5 }),
            (wave(8, 7, 1, 0, 0), 0.2, Advance),
            (wave(8, 6, 2, 0, 0), 0.2, Pause { ratio: 0.25 }),
            (wave(4, 0, 0, 4, 0), 0.2, Wait),
            // Offline agents do not block, but someone must answer.
            (wave(4, 2, 0, 0, 2), 0.2, Advance),
            (wave(4, 0, 0, 0, 4), 0.2, Wait),
            (wave(0, 0, 0, 0, 0), 0.2, Advance),
            // A ratio of 0 pauses at the first failure.
            (wave(10, 0, 1, 9, 0), 0.0, Pause { ratio: 1.0 }),
        ];
        for (w, allowed, expected) in cases {
            assert_eq!(verdict(&w, allowed), expected, "{w:?} allowed {allowed}");
        }
    }

    #[test]
    fn rollout_order_is_stable_and_per_campaign() {
        let ids: Vec<AgentId> = (0..50)
            .map(|i| format!("agent{i}").parse().unwrap())
            .collect();
        let a = rollout_order("icu", &ids);
        let b = rollout_order("icu", ids.iter().rev());
        assert_eq!(a, b, "independent of input order");
        let c = rollout_order("er", &ids);
        assert_ne!(a, c, "each campaign samples the fleet differently");
        assert_eq!(a.len(), 50);
    }

    #[test]
    fn cached_orders_are_reused_only_for_the_same_agents() {
        let ids: Vec<AgentId> = (0..50)
            .map(|i| format!("agent{i}").parse().unwrap())
            .collect();
        let all: Vec<&AgentId> = ids.iter().collect();
        let cache = OrderCache::default();
        let first = cache.order("icu", &all);
        let expected: Vec<AgentId> = rollout_order("icu", &ids).into_iter().cloned().collect();
        assert_eq!(*first, expected);
        assert!(Arc::ptr_eq(&first, &cache.order("icu", &all)), "reused");
        // One agent fewer: ordered again.
        let fewer = cache.order("icu", &all[1..]);
        assert_eq!(fewer.len(), 49);
        assert!(!fewer.contains(&ids[0]));
        // Per campaign, and forgotten with it.
        assert_ne!(*cache.order("er", &all), expected);
        cache.retain(&BTreeMap::new());
        assert!(cache.lock().is_empty());
    }

    #[test]
    fn rotation_is_due_only_after_the_interval_and_a_completed_rollout() {
        let spec = Campaign {
            name: "c".into(),
            description: String::new(),
            selector: Default::default(),
            lures: Vec::new(),
            waves: vec![100],
            max_failure_ratio: 0.1,
            rotate_every: Some(Duration::from_secs(3600)),
        };
        let mut record = CampaignRecord {
            target: Generation {
                number: 1,
                spec,
                epoch: 0,
                slots: BTreeMap::new(),
            },
            stable: None,
            rollout: RolloutState::Completed,
            wave: 0,
            created: UnixMs(0),
            updated: UnixMs(0),
            last_rotated: UnixMs(0),
        };
        assert!(!rotation_due(&record, UnixMs(3_599_999)));
        assert!(rotation_due(&record, UnixMs(3_600_000)));
        record.rollout = RolloutState::Progressing;
        assert!(!rotation_due(&record, UnixMs(7_200_000)));
    }
}

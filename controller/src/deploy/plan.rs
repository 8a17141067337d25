//! Planning: the desired lure set of every agent from the campaigns,
//! decoys and allow rules, and a pass that writes new instances durably
//! (in chunks) before any is pushed.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use foldhash::{HashSet, HashSetExt};

use ruse_proto::convert::{AgentState, Platform};
use ruse_proto::spec::{self, encode_allow_rules};
use ruse_proto::types::{AgentId, UnixMs, hex, new_ulid};

use super::push::content_revision;
use super::push::{ALLOW_RULES_ID, decoy_resource_id, decoy_spec};
use super::registry::Registry;
use super::rollout::OrderCache;
use super::{AgentLures, Deployer, State, lock_state};
use crate::fleet::Member;
use crate::model::{
    AllowRule, CampaignRecord, Decoy, Generation, LureInstance, LureSlot, Material,
};
use crate::store::StoreError;

/// What an agent should have under one resource id.
#[derive(Debug, Clone)]
pub(super) struct Desired {
    pub(super) revision: u64,
    /// The campaign of a lure; empty for allow rules. Shared: every
    /// agent's entries of one campaign point at one string.
    pub(super) campaign: Arc<str>,
    pub(super) payload: Payload,
}

#[derive(Debug, Clone)]
pub(super) enum Payload {
    /// `lure` is active: the pass retires an instance in the same hold of
    /// the state lock in which it drops it from the agent's desired set.
    Lure {
        slot: Arc<LureSlot>,
        decoy: Option<Arc<Decoy>>,
        lure: Arc<LureInstance>,
        /// The agent's platform, which decides where the files go.
        platform: Platform,
    },
    AllowRules(Arc<Vec<spec::AllowRule>>),
    /// An encoded `DecoySpec`.
    Decoy(Arc<Vec<u8>>),
}

/// New lure instances written (and flushed) per registry chunk, about; a
/// chunk always holds whole agents.
pub(super) const REGISTRY_CHUNK: usize = 5_000;

/// Agents whose desired sets are computed per hold of the state lock, at
/// most (~5 ms): sessions push and ack in between.
pub(super) const AGENTS_PER_LOCK: usize = 100;

/// A registry chunk's write: when it became durable.
pub(super) type ChunkWritten = Result<std::time::Instant, StoreError>;

/// Where a pass spent its time, for the log.
#[derive(Debug, Default)]
pub(super) struct PassTiming {
    pub(super) created: usize,
    pub(super) compute: Duration,
    /// Waiting to run again after letting sessions run.
    pub(super) yielded: Duration,
    pub(super) first_durable: Option<Duration>,
    pub(super) last_durable: Option<Duration>,
}

impl PassTiming {
    /// A chunk became durable at `at`.
    pub(super) fn durable(&mut self, started: std::time::Instant, at: std::time::Instant) {
        let after = at.saturating_duration_since(started);
        self.first_durable = Some(self.first_durable.map_or(after, |d| d.min(after)));
        self.last_durable = Some(self.last_durable.map_or(after, |d| d.max(after)));
    }
}

pub(super) fn slot_fingerprint(slot: &LureSlot, decoy: Option<&Decoy>) -> String {
    let bytes = serde_json::to_vec(&(slot, decoy)).unwrap_or_default();
    hex(ring::digest::digest(&ring::digest::SHA256, &bytes).as_ref())
}

impl Deployer {
    /// Recomputes every agent's desired set; persists new instances before
    /// waking the sessions that have them to push, and retired ones last.
    ///
    /// Agents are taken in chunks: a chunk's new instances are written as
    /// one record while the next chunk is computed, and its agents are woken
    /// as soon as that record is durable. So the first pushes go out while
    /// most of a fleet-wide campaign (100k instances) is still being
    /// generated, and the state lock is never held for a whole pass.
    pub(super) async fn recompute(&self) -> Result<(), StoreError> {
        self.recompute_agents(None).await
    }

    /// [`Deployer::recompute`] of the desired sets of `only` (all when
    /// none); agents gone are forgotten only by a whole pass.
    pub(super) async fn recompute_agents(
        &self,
        only: Option<&HashSet<AgentId>>,
    ) -> Result<(), StoreError> {
        let started = std::time::Instant::now();
        let members = self.fleet.members();
        let live: Vec<&Member> = members
            .iter()
            .filter(|a| a.state != AgentState::Revoked)
            .collect();
        // Waves are released over every live agent, whichever are computed.
        let todo: Vec<&Member> = match only {
            None => live.clone(),
            Some(only) => live
                .iter()
                .copied()
                .filter(|a| only.contains(&a.id))
                .collect(),
        };
        let now = UnixMs::now();
        // Each controller creates and retires the instances of the agents
        // whose sessions it holds, so planning a fleet-wide change is
        // spread over the controllers sharing a store and the instances
        // of an agent are pushed as soon as its own controller wrote them.
        // The leader does it for agents whose session no live controller
        // holds (offline ones), and stops at once when its lease could
        // lapse (checked per hold below). Two that plan one agent in the
        // same moment (it just moved, or the leader took it for offline)
        // may each create an instance of a slot; each takes in the other's,
        // and the next pass of the one holding the agent keeps the first
        // it holds and retires the other (still attributable, as every
        // retired instance is).
        let mut leader = self.leading();
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
        let mut durable = tokio::task::JoinSet::new();
        if !created.is_empty() {
            let mut agents: Vec<AgentId> = created.iter().map(|l| l.agent.clone()).collect();
            agents.sort();
            agents.dedup();
            self.write_chunk(std::mem::take(&mut created), agents, true, &mut durable);
        }
        let mut wake: Vec<AgentId> = Vec::new();
        let mut timing = PassTiming::default();
        let mut next = 0;
        loop {
            let last = next == todo.len();
            // A chunk is written once full; agents whose sets changed with
            // nothing new to write (a decoy or allow rule changed) are woken
            // after each hold.
            let full = created.len() >= REGISTRY_CHUNK;
            if full || (created.is_empty() && !wake.is_empty()) || (last && !created.is_empty()) {
                timing.created += created.len();
                let chunk = std::mem::take(&mut created);
                let chunk_wake = std::mem::take(&mut wake);
                self.write_chunk(chunk, chunk_wake, false, &mut durable);
            }
            while let Some(done) = durable.try_join_next() {
                timing.durable(started, Self::chunk_written(done)?);
            }
            if last {
                break;
            }
            let computing = std::time::Instant::now();
            leader &= self.leading();
            {
                let mut st = self.lock();
                let stop = (next + AGENTS_PER_LOCK).min(todo.len());
                while next < stop && created.len() < REGISTRY_CHUNK {
                    let agent = todo[next];
                    let here = st.agents.get(&agent.id).is_some_and(|a| a.notify.is_some());
                    let create = here || (leader && !agent.elsewhere);
                    desire(&mut st, &plan, agent, now, create, &mut created, &mut wake)?;
                    next += 1;
                }
            }
            timing.compute += computing.elapsed();
            // Sessions waiting for the lock (pushes, acks) run now.
            let yielding = std::time::Instant::now();
            tokio::task::yield_now().await;
            timing.yielded += yielding.elapsed();
        }
        if only.is_none() {
            let live_ids: HashSet<&AgentId> = live.iter().map(|a| &a.id).collect();
            let gone = forget_gone(&mut self.lock(), &live_ids, now, leader);
            self.wake_agents(&gone);
        }
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
    /// `again`: instances a failed write left undurable, which it may
    /// have written after all.
    pub(super) fn write_chunk(
        &self,
        chunk: Vec<Arc<LureInstance>>,
        wake: Vec<AgentId>,
        again: bool,
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
        let created = self.created.clone();
        durable.spawn_blocking(move || {
            {
                let _turn = writing.lock().unwrap_or_else(|e| e.into_inner());
                if again {
                    // Perhaps written before: as records, which supersede
                    // a batch's copies (an instance is in one batch).
                    let lures: Vec<LureInstance> = chunk.iter().map(|l| (**l).clone()).collect();
                    store.put_lures(&lures)?;
                } else {
                    store.put_new_lures(&chunk)?;
                }
            }
            // Directly rather than through the committer, whose task runs
            // on the busy runtime.
            store.flush()?;
            let at = std::time::Instant::now();
            let mut st = lock_state(&state);
            for lure in &chunk {
                st.undurable.remove(&lure.id);
            }
            if !again {
                created.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            }
            st.wake(&later);
            Ok(at)
        });
    }

    /// When a chunk's write (see `write_chunk`) made it durable, or why it
    /// failed.
    pub(super) fn chunk_written(
        done: Result<ChunkWritten, tokio::task::JoinError>,
    ) -> Result<std::time::Instant, StoreError> {
        done.map_err(|e| StoreError::Engine(e.to_string().into()))?
    }

    pub(super) fn wake_agents(&self, ids: &[AgentId]) {
        self.lock().wake(ids);
    }
}

/// What changing decoy `old` into `new` does: the fields that change, and
/// the live campaigns whose lures point at it (their files on every agent
/// are rewritten, and the services the old ones named stop).
pub(super) fn decoy_change(
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
pub(super) fn name_campaigns(registry: &Registry, error: String) -> String {
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

/// One campaign as a pass sees it: a snapshot, with the agents its target
/// generation is released to.
pub(super) struct CampaignPlan {
    pub(super) name: String,
    /// Shared by every agent's desired entries of this campaign.
    pub(super) shared_name: Arc<str>,
    pub(super) target: Generation,
    pub(super) target_slots: Vec<Arc<LureSlot>>,
    pub(super) stable: Option<Generation>,
    pub(super) stable_slots: Vec<Arc<LureSlot>>,
    pub(super) released: HashSet<AgentId>,
}

/// A decoy as a pass sees it, with its encoded spec and that spec's
/// revision.
pub(super) struct DecoyPlan {
    pub(super) decoy: Arc<Decoy>,
    pub(super) body: Arc<Vec<u8>>,
    pub(super) revision: u64,
}

/// What a pass computes desired sets from: campaigns, decoys and allow
/// rules as they were when it started. A change meanwhile requests the next
/// pass, which sees it.
pub(super) struct Plan {
    pub(super) campaigns: Vec<CampaignPlan>,
    pub(super) decoys: BTreeMap<String, DecoyPlan>,
    pub(super) allow_rules: Vec<Arc<AllowRule>>,
}

impl Plan {
    pub(super) fn new(st: &State, live: &[&Member], orders: &OrderCache) -> Plan {
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
                let body = Arc::new(decoy_spec(decoy).encode());
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
/// the agent onto `wake` if its desired set changed. Without `create` (not
/// the leader), a slot whose instance does not exist yet is left out
/// until the leader's instance is taken in, and nothing is retired.
#[allow(clippy::too_many_arguments)]
pub(super) fn desire(
    st: &mut State,
    plan: &Plan,
    agent: &Member,
    now: UnixMs,
    create: bool,
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
            if !slot.template.plants_on(agent.platform) {
                continue;
            }
            let existing = st
                .registry
                .find(id, &c.name, &slot.key, generation.epoch, slot.template)
                .cloned();
            let lure = match existing {
                Some(l) => l,
                None if !create => continue,
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
                        platform: agent.platform,
                    },
                },
            );
        }
    }
    // Instances it no longer wants are retired (kept in the registry). Every
    // lure it wants is one of its active instances, so as many wanted as
    // active means none is unwanted, with no lookup each.
    if let Some(campaigns) = st.registry.by_slot.get(id).filter(|_| create) {
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
    let rules: Vec<spec::AllowRule> = plan
        .allow_rules
        .iter()
        .filter(|r| agent.labels.matches(&r.selector))
        .map(|r| spec::AllowRule {
            name: r.name.clone(),
            process: r.process.clone(),
            user: r.user.clone(),
            template: r.template.clone(),
        })
        .collect();
    if !rules.is_empty() {
        let body = encode_allow_rules(&rules);
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
/// (returned, to be woken) and, by the leader (`retire`), their instances
/// retired.
pub(super) fn forget_gone(
    st: &mut State,
    live: &HashSet<&AgentId>,
    now: UnixMs,
    retire: bool,
) -> Vec<AgentId> {
    let mut wake = Vec::new();
    for (id, entry) in st.agents.iter_mut() {
        if !live.contains(id) && !entry.desired.is_empty() {
            entry.desired.clear();
            wake.push(id.clone());
        }
    }
    if !retire {
        return wake;
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

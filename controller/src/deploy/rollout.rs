//! Rollouts: the order in which a campaign reaches agents, waves and
//! their verdicts, pause/resume/abort, rotation, and the status views.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use foldhash::{HashMap, HashSet};

use ruse_proto::convert::AgentState;
use ruse_proto::types::{AgentId, UnixMs};

use super::{DeployError, Deployer};
use crate::model::{CampaignRecord, Generation, RolloutState};
use crate::store::StoreError;

impl CampaignRecord {
    /// How many of `n` matching agents have been released the target.
    pub(super) fn released(&self, n: usize) -> usize {
        match self.rollout {
            RolloutState::Completed => n,
            _ => wave_size(&self.target.spec.waves, self.wave, n),
        }
    }
}

/// Agents covered by waves `0..=wave` out of `n`.
pub(super) fn wave_size(waves: &[u8], wave: usize, n: usize) -> usize {
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
pub(super) struct OrderCache {
    pub(super) orders: Mutex<HashMap<String, CachedOrder>>,
}

/// A fingerprint of the matching agents, and their order.
pub(super) type CachedOrder = (u64, Arc<Vec<AgentId>>);

impl OrderCache {
    pub(super) fn lock(&self) -> MutexGuard<'_, HashMap<String, CachedOrder>> {
        self.orders.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// [`rollout_order`] of `matching` (in fleet order, by id).
    pub(super) fn order(&self, campaign: &str, matching: &[&AgentId]) -> Arc<Vec<AgentId>> {
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
    pub(super) fn retain(&self, campaigns: &BTreeMap<String, CampaignRecord>) {
        self.lock().retain(|name, _| campaigns.contains_key(name));
    }
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

impl Deployer {
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
        // Online at another controller sharing the store.
        let elsewhere: HashSet<&AgentId> = agents
            .iter()
            .filter(|a| a.elsewhere)
            .map(|a| &a.id)
            .collect();
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
                let online = lures.is_some_and(|l| l.notify.is_some()) || elsewhere.contains(id);
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

    /// Advances, pauses or completes progressing rollouts.
    pub(super) async fn evaluate(&self) -> Result<(), StoreError> {
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
    pub(super) async fn rotate_due(&self) {
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
pub(super) enum Verdict {
    /// Failures exceed the allowed ratio.
    Pause { ratio: f64 },
    /// Every online agent answered within the allowed ratio.
    Advance,
    /// Still waiting for answers.
    Wait,
}

/// Pauses as soon as the outcome is certain (failures exceed the ratio
/// even if every pending agent succeeds); otherwise judges once every
/// online agent of the wave has answered. Offline agents do not block.
pub(super) fn verdict(wave: &WaveStatus, allowed: f64) -> Verdict {
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
pub(super) fn next_record(
    old: Option<&CampaignRecord>,
    target: Generation,
    now: UnixMs,
) -> CampaignRecord {
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

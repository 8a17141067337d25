//! How many events each agent may have stored: a token bucket per agent.
//!
//! One agent certificate once sent 57–76k events a second: the store grew
//! by 1.8 GB a minute, another agent's events reached `watch` 680 ms late,
//! and queries slowed for everyone. Past its bucket an agent's events are
//! only counted (a map update), and every few seconds the count becomes
//! one `flood` event of that agent, which opens an incident of its own:
//! the excess is visible, and costs the controller almost nothing.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ruse_proto::types::{AgentId, UnixMs};

/// How often an agent over its quota gets a summary.
pub const SUMMARY_EVERY: Duration = Duration::from_secs(5);
/// Distinct event kinds named in a summary; the rest are "other".
const MAX_KINDS: usize = 8;

/// Events an agent sent past its quota since the last summary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Excess {
    pub agent: AgentId,
    pub first: UnixMs,
    pub last: UnixMs,
    pub count: u64,
    pub kinds: BTreeMap<String, u64>,
}

impl Excess {
    pub fn detail(&self) -> String {
        let kinds: Vec<String> = self
            .kinds
            .iter()
            .map(|(k, n)| format!("{k} x{n}"))
            .collect();
        format!(
            "{} events over this agent's quota from {} to {} were counted, not stored: {}",
            self.count,
            self.first.rfc3339(),
            self.last.rfc3339(),
            kinds.join(", ")
        )
    }
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
    excess: Option<Excess>,
    /// When the last summary of this agent was made.
    summarised: Option<Instant>,
}

/// The per-agent buckets.
#[derive(Debug)]
pub struct Quota {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<AgentId, Bucket>>,
}

impl Quota {
    pub fn new(per_second: u32, burst: u32) -> Self {
        Quota {
            rate: f64::from(per_second.max(1)),
            burst: f64::from(burst.max(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<AgentId, Bucket>> {
        self.buckets.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How many of `wanted` events `agent` may have stored now.
    pub fn take(&self, agent: &AgentId, wanted: usize, now: Instant) -> usize {
        let mut buckets = self.lock();
        let burst = self.burst;
        let bucket = buckets.entry(agent.clone()).or_insert_with(|| Bucket {
            tokens: burst,
            at: now,
            excess: None,
            summarised: None,
        });
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.rate).min(self.burst);
        bucket.at = now;
        let granted = (bucket.tokens.floor() as usize).min(wanted);
        bucket.tokens -= granted as f64;
        granted
    }

    /// Counts events of `agent` that were over its quota.
    pub fn exceeded<'a>(&self, agent: &AgentId, kinds: impl IntoIterator<Item = &'a str>) {
        let mut buckets = self.lock();
        let Some(bucket) = buckets.get_mut(agent) else {
            return;
        };
        let now = UnixMs::now();
        let excess = bucket.excess.get_or_insert_with(|| Excess {
            agent: agent.clone(),
            first: now,
            last: now,
            count: 0,
            kinds: BTreeMap::new(),
        });
        excess.last = now;
        for kind in kinds {
            excess.count += 1;
            let kind = if excess.kinds.len() < MAX_KINDS || excess.kinds.contains_key(kind) {
                kind.to_owned()
            } else {
                "other".to_owned()
            };
            *excess.kinds.entry(kind).or_default() += 1;
        }
    }

    /// The excesses due for a summary: an agent's first at once, then at
    /// most one per [`SUMMARY_EVERY`] (all of them when `all`).
    pub fn due(&self, now: Instant, all: bool) -> Vec<Excess> {
        let mut buckets = self.lock();
        let mut out = Vec::new();
        for bucket in buckets.values_mut() {
            let due = all
                || bucket
                    .summarised
                    .is_none_or(|t| now.saturating_duration_since(t) >= SUMMARY_EVERY);
            if due && let Some(excess) = bucket.excess.take() {
                bucket.summarised = Some(now);
                out.push(excess);
            }
        }
        // Agents that have been quiet a while need no bucket: a full one
        // is what a new entry starts with.
        buckets.retain(|_, b| {
            b.excess.is_some() || now.saturating_duration_since(b.at) < Duration::from_secs(600)
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_agent_gets_its_burst_then_its_rate_and_excess_is_summarised() {
        let q = Quota::new(10, 100);
        let a: AgentId = "01kb5z8x9q3w4e5r6t7y8v9w0a".parse().unwrap();
        let b: AgentId = "01kb5z8x9q3w4e5r6t7y8v9w0b".parse().unwrap();
        let t0 = Instant::now();
        assert_eq!(q.take(&a, 150, t0), 100);
        q.exceeded(&a, std::iter::repeat_n("touch", 50));
        assert_eq!(q.take(&a, 10, t0), 0, "the bucket is empty");
        assert_eq!(q.take(&b, 10, t0), 10, "another agent is not affected");
        assert_eq!(q.take(&a, 10, t0 + Duration::from_millis(500)), 5);
        let due = q.due(t0, false);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].count, 50);
        assert_eq!(due[0].kinds["touch"], 50);
        // The next excess waits for the interval.
        q.exceeded(&a, ["decoy-login", "touch"]);
        assert!(q.due(t0 + Duration::from_secs(1), false).is_empty());
        let later = q.due(t0 + SUMMARY_EVERY, false);
        assert_eq!(later[0].count, 2);
    }
}

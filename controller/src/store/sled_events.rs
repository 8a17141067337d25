//! The event log on sled: events in the controller's receive order.
//!
//! Agents choose their events' ids and times, so neither may decide where
//! an event sorts (ids beginning `zz` once sorted as newest forever and
//! hid other hosts' events). Each stored event gets a *cursor*, a number
//! the controller assigns as it receives it, and three trees hold it:
//!
//! - `event_log`: cursor (big-endian) → the event record;
//! - `event_ids`: event id → cursor, so a resent event is a duplicate;
//! - `agent_events`: agent id, `/`, the last cursor of a run of that
//!   agent's events → the run's first cursor: one agent's events without
//!   reading anyone else's, so a query for one agent costs what that agent
//!   sent, not what the busiest agent sent. A batch from an agent is one
//!   run (one index write per batch, not per event: an entry per event
//!   cost a fifth of ingest in node copies). Cursors in a run that hold no
//!   event (duplicates) or another agent's are skipped when read.
//!
//! A store written by an earlier version kept events in one tree by id
//! (`events`); [`SledEvents::open`] moves them into the log once, in id
//! order, and drops the old tree.

use std::ops::ControlFlow;
use std::sync::atomic::{AtomicU64, Ordering};

use ruse_proto::types::UnixMs;

use super::event_record;
use super::sled::{corrupt, engine};
use super::{EventScan, StoreError};
use crate::model::StoredEvent;

const LOG: &str = "event_log";
const IDS: &str = "event_ids";
const BY_AGENT: &str = "agent_events";
/// Where versions before cursors kept events, by id.
const LEGACY: &str = "events";

#[derive(Debug)]
pub(super) struct SledEvents {
    log: sled::Tree,
    ids: sled::Tree,
    by_agent: sled::Tree,
    /// The next cursor to hand out.
    next: AtomicU64,
}

fn agent_key(agent: &str, cursor: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(agent.len() + 9);
    key.extend_from_slice(agent.as_bytes());
    key.push(b'/');
    key.extend_from_slice(&cursor.to_be_bytes());
    key
}

fn cursor_of(bytes: &[u8]) -> Option<u64> {
    let tail: [u8; 8] = bytes.get(bytes.len().checked_sub(8)?..)?.try_into().ok()?;
    Some(u64::from_be_bytes(tail))
}

impl SledEvents {
    pub(super) fn open(db: &sled::Db) -> Result<Self, StoreError> {
        let events = SledEvents {
            log: db.open_tree(LOG).map_err(engine)?,
            ids: db.open_tree(IDS).map_err(engine)?,
            by_agent: db.open_tree(BY_AGENT).map_err(engine)?,
            next: AtomicU64::new(1),
        };
        let last = events
            .log
            .last()
            .map_err(engine)?
            .and_then(|(k, _)| cursor_of(&k));
        events
            .next
            .store(last.map_or(1, |c| c + 1), Ordering::Relaxed);
        if db
            .tree_names()
            .iter()
            .any(|name| name.as_ref() == LEGACY.as_bytes())
        {
            events.migrate(db)?;
        }
        Ok(events)
    }

    /// Moves events stored by id (earlier versions) into the log.
    fn migrate(&self, db: &sled::Db) -> Result<(), StoreError> {
        let legacy = db.open_tree(LEGACY).map_err(engine)?;
        let total = legacy.len();
        if total > 0 {
            tracing::info!(
                events = total,
                "moving stored events into the receive-ordered log"
            );
        }
        let mut moved = 0usize;
        for kv in legacy.iter() {
            let (k, v) = kv.map_err(engine)?;
            let mut event =
                event_record::decode(&v).map_err(|reason| corrupt(LEGACY, &k, reason))?;
            event.cursor = self.reserve(1);
            self.insert(std::slice::from_ref(&event))?;
            moved += 1;
            if moved.is_multiple_of(100_000) {
                tracing::info!(moved, total, "moving stored events");
            }
        }
        db.flush().map_err(engine)?;
        db.drop_tree(LEGACY).map_err(engine)?;
        if total > 0 {
            tracing::info!(events = moved, "stored events moved");
        }
        Ok(())
    }

    pub(super) fn reserve(&self, n: u64) -> u64 {
        self.next.fetch_add(n, Ordering::Relaxed)
    }

    pub(super) fn insert(&self, events: &[StoredEvent]) -> Result<Vec<bool>, StoreError> {
        let mut stored = Vec::with_capacity(events.len());
        // Per agent, the first and last cursor it stored in this batch.
        let mut runs: Vec<(&str, u64, u64)> = Vec::new();
        for event in events {
            let cursor = event.cursor.to_be_bytes();
            let claimed = self
                .ids
                .compare_and_swap(event.id.as_bytes(), None::<&[u8]>, Some(&cursor[..]))
                .map_err(engine)?;
            if claimed.is_err() {
                stored.push(false);
                continue;
            }
            self.log
                .insert(cursor, event_record::encode(event))
                .map_err(engine)?;
            let agent = event.agent.as_str();
            match runs.iter_mut().find(|(a, _, _)| *a == agent) {
                Some(run) => run.2 = run.2.max(event.cursor),
                None => runs.push((agent, event.cursor, event.cursor)),
            }
            stored.push(true);
        }
        for (agent, first, last) in runs {
            self.by_agent
                .insert(agent_key(agent, last), &first.to_be_bytes())
                .map_err(engine)?;
        }
        Ok(stored)
    }

    /// An agent's runs (first and last cursor) that may hold cursors in
    /// `lo..hi`, in the order walked.
    fn runs<'a>(
        &'a self,
        agent: &str,
        lo: u64,
        hi: u64,
        newest_first: bool,
    ) -> Box<dyn Iterator<Item = Result<(u64, u64), StoreError>> + 'a> {
        let entries = self
            .by_agent
            .range(agent_key(agent, lo)..=agent_key(agent, u64::MAX));
        let decode = |kv: sled::Result<(sled::IVec, sled::IVec)>| {
            let (k, v) = kv.map_err(engine)?;
            let last = cursor_of(&k).ok_or_else(|| corrupt(BY_AGENT, &k, "short key".into()))?;
            let first = cursor_of(&v).ok_or_else(|| corrupt(BY_AGENT, &k, "short value".into()))?;
            Ok((first, last))
        };
        // Runs are disjoint and keyed by their last cursor: those ending at
        // or after `lo` and starting before `hi`.
        let starts_before_hi = move |r: &Result<(u64, u64), StoreError>| match r {
            Ok((first, _)) => *first < hi,
            Err(_) => true,
        };
        if newest_first {
            Box::new(entries.rev().map(decode).filter(starts_before_hi))
        } else {
            Box::new(entries.map(decode).take_while(starts_before_hi))
        }
    }

    fn get(&self, cursor: u64) -> Result<Option<StoredEvent>, StoreError> {
        let key = cursor.to_be_bytes();
        match self.log.get(key).map_err(engine)? {
            Some(v) => event_record::decode(&v)
                .map(Some)
                .map_err(|reason| corrupt(LOG, &key, reason)),
            None => Ok(None),
        }
    }

    pub(super) fn scan(
        &self,
        scan: &EventScan,
        visit: &mut dyn FnMut(StoredEvent) -> ControlFlow<()>,
    ) -> Result<(), StoreError> {
        let lo = scan.after.saturating_add(1);
        let hi = scan.before.unwrap_or(u64::MAX);
        if lo >= hi {
            return Ok(());
        }
        match &scan.agent {
            None => {
                let range = self.log.range(lo.to_be_bytes()..hi.to_be_bytes());
                let mut step = |kv: sled::Result<(sled::IVec, sled::IVec)>| {
                    let (k, v) = kv.map_err(engine)?;
                    let event =
                        event_record::decode(&v).map_err(|reason| corrupt(LOG, &k, reason))?;
                    Ok::<_, StoreError>(visit(event))
                };
                if scan.newest_first {
                    for kv in range.rev() {
                        if step(kv)?.is_break() {
                            break;
                        }
                    }
                } else {
                    for kv in range {
                        if step(kv)?.is_break() {
                            break;
                        }
                    }
                }
            }
            Some(agent) => {
                for run in self.runs(agent.as_str(), lo, hi, scan.newest_first) {
                    let (first, last) = run?;
                    let (from, to) = (first.max(lo), last.min(hi - 1));
                    if from > to {
                        continue;
                    }
                    let cursors: Box<dyn Iterator<Item = u64>> = if scan.newest_first {
                        Box::new((from..=to).rev())
                    } else {
                        Box::new(from..=to)
                    };
                    for cursor in cursors {
                        // A duplicate's cursor holds nothing; a run may
                        // also span other agents' events, or trimmed ones.
                        let Some(event) = self.get(cursor)? else {
                            continue;
                        };
                        if event.agent != *agent {
                            continue;
                        }
                        if visit(event).is_break() {
                            return Ok(());
                        }
                    }
                }
            }
        }
        Ok(())
    }

    pub(super) fn cursors(&self) -> Result<Option<(u64, u64)>, StoreError> {
        let first = self
            .log
            .first()
            .map_err(engine)?
            .and_then(|(k, _)| cursor_of(&k));
        let last = self
            .log
            .last()
            .map_err(engine)?
            .and_then(|(k, _)| cursor_of(&k));
        Ok(first.zip(last))
    }

    pub(super) fn trim(
        &self,
        received_before: UnixMs,
        keep_at_most: u64,
        max: usize,
    ) -> Result<usize, StoreError> {
        let Some((_, newest)) = self.cursors()? else {
            return Ok(0);
        };
        let mut deleted = 0;
        for kv in self.log.iter() {
            if deleted >= max {
                break;
            }
            let (k, v) = kv.map_err(engine)?;
            let Some(cursor) = cursor_of(&k) else {
                continue;
            };
            let event = event_record::decode(&v).map_err(|reason| corrupt(LOG, &k, reason))?;
            // Cursors between this one and the newest: an upper bound on
            // how many events remain (duplicates leave gaps).
            let over_budget = newest - cursor + 1 > keep_at_most;
            if event.received >= received_before && !over_budget {
                break;
            }
            self.log.remove(&k).map_err(engine)?;
            self.ids.remove(event.id.as_bytes()).map_err(engine)?;
            // Events go oldest first: a run ending here is now empty.
            self.by_agent
                .remove(agent_key(event.agent.as_str(), cursor))
                .map_err(engine)?;
            deleted += 1;
        }
        Ok(deleted)
    }
}

#[cfg(test)]
mod tests {
    use ruse_proto::types::AgentId;

    use super::*;
    use crate::store::Store;
    use crate::store::sled::SledStore;

    fn event(agent: &AgentId, id: &str, received: i64) -> StoredEvent {
        StoredEvent {
            id: id.into(),
            received: UnixMs(received),
            ..crate::events::tests_support::event(agent)
        }
    }

    fn insert(store: &SledStore, mut e: StoredEvent) -> bool {
        e.cursor = store.reserve_event_cursors(1).unwrap();
        store.insert_events(std::slice::from_ref(&e)).unwrap()[0]
    }

    fn ids(store: &SledStore, scan: &EventScan, limit: usize) -> Vec<String> {
        let mut out = Vec::new();
        store
            .scan_events(scan, &mut |e| {
                out.push(e.id);
                if out.len() >= limit {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            })
            .unwrap();
        out
    }

    #[test]
    fn events_are_in_receive_order_whatever_their_ids_and_one_agent_reads_alone() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path(), 1 << 20).unwrap();
        let a: AgentId = "01kb5z8x9q3w4e5r6t7y8v9w0a".parse().unwrap();
        let b: AgentId = "01kb5z8x9q3w4e5r6t7y8v9w0b".parse().unwrap();
        // An id that sorts last is stored first: it does not stay "newest".
        assert!(insert(&store, event(&a, "7zzzzzzzzzzzzzzzzzzzzzzzzz", 1)));
        for n in 0..5 {
            assert!(insert(
                &store,
                event(&b, &format!("01kb5z8x9q3w4e5r6t7y8v9b0{n}"), 2)
            ));
        }
        assert!(insert(&store, event(&a, "00000000000000000000000001", 3)));
        assert!(
            !insert(&store, event(&a, "00000000000000000000000001", 4)),
            "a duplicate id is not stored again"
        );
        let newest = ids(
            &store,
            &EventScan {
                newest_first: true,
                ..EventScan::default()
            },
            2,
        );
        assert_eq!(
            newest,
            ["00000000000000000000000001", "01kb5z8x9q3w4e5r6t7y8v9b04"]
        );
        let of_a = ids(
            &store,
            &EventScan {
                agent: Some(a.clone()),
                newest_first: true,
                ..EventScan::default()
            },
            10,
        );
        assert_eq!(
            of_a,
            ["00000000000000000000000001", "7zzzzzzzzzzzzzzzzzzzzzzzzz"]
        );
        let (oldest, last) = store.event_cursors().unwrap().unwrap();
        let middle = ids(
            &store,
            &EventScan {
                after: oldest,
                before: Some(last),
                ..EventScan::default()
            },
            100,
        );
        assert_eq!(middle.len(), 5);
        assert!(
            middle
                .iter()
                .all(|id| id.starts_with("01kb5z8x9q3w4e5r6t7y8v9b"))
        );
    }

    #[test]
    fn old_events_and_those_past_the_budget_are_trimmed_everywhere() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path(), 1 << 20).unwrap();
        let a: AgentId = "01kb5z8x9q3w4e5r6t7y8v9w0a".parse().unwrap();
        for n in 0..10 {
            insert(
                &store,
                event(&a, &format!("01kb5z8x9q3w4e5r6t7y8v9w{n:02}"), n),
            );
        }
        // Received before 3: three go.
        assert_eq!(store.trim_events(UnixMs(3), u64::MAX, 100).unwrap(), 3);
        // More than 5 left: the oldest go, at most 1 per call.
        assert_eq!(store.trim_events(UnixMs(0), 5, 1).unwrap(), 1);
        assert_eq!(store.trim_events(UnixMs(0), 5, 100).unwrap(), 1);
        assert_eq!(store.trim_events(UnixMs(0), 5, 100).unwrap(), 0);
        let left = ids(
            &store,
            &EventScan {
                agent: Some(a.clone()),
                ..EventScan::default()
            },
            100,
        );
        assert_eq!(left.len(), 5);
        assert_eq!(left[0], "01kb5z8x9q3w4e5r6t7y8v9w05");
        // A trimmed id may arrive again (a very late resend): stored anew.
        assert!(insert(&store, event(&a, "01kb5z8x9q3w4e5r6t7y8v9w00", 20)));
    }

    #[test]
    fn events_stored_by_id_by_earlier_versions_move_into_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let a: AgentId = "01kb5z8x9q3w4e5r6t7y8v9w0a".parse().unwrap();
        {
            let db = sled::open(dir.path()).unwrap();
            let legacy = db.open_tree(LEGACY).unwrap();
            for id in ["01kb5z8x9q3w4e5r6t7y8v9w02", "01kb5z8x9q3w4e5r6t7y8v9w01"] {
                legacy
                    .insert(id, event_record::encode(&event(&a, id, 5)))
                    .unwrap();
            }
            db.flush().unwrap();
        }
        let store = SledStore::open(dir.path(), 1 << 20).unwrap();
        let moved = ids(&store, &EventScan::default(), 10);
        assert_eq!(
            moved,
            ["01kb5z8x9q3w4e5r6t7y8v9w01", "01kb5z8x9q3w4e5r6t7y8v9w02"]
        );
        assert!(
            !insert(&store, event(&a, "01kb5z8x9q3w4e5r6t7y8v9w01", 6)),
            "moved ids still deduplicate"
        );
        drop(store);
        let store = SledStore::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(
            ids(&store, &EventScan::default(), 10).len(),
            2,
            "moved once"
        );
        assert!(insert(&store, event(&a, "01kb5z8x9q3w4e5r6t7y8v9w03", 7)));
        let (_, newest) = store.event_cursors().unwrap().unwrap();
        assert_eq!(newest, 3, "cursors continue after a restart");
    }

    #[test]
    fn one_agent_reads_its_runs_within_batches_that_mix_agents_and_duplicates() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path(), 1 << 20).unwrap();
        let a: AgentId = "01kb5z8x9q3w4e5r6t7y8v9w0a".parse().unwrap();
        let b: AgentId = "01kb5z8x9q3w4e5r6t7y8v9w0b".parse().unwrap();
        let first = store.reserve_event_cursors(6).unwrap();
        let mut batch: Vec<_> = [(&a, "a1"), (&b, "b1"), (&a, "a2"), (&b, "b2"), (&a, "a3")]
            .iter()
            .map(|(agent, id)| event(agent, &format!("01kb5z8x9q3w4e5r6t7y8v9{id}x"), 1))
            .collect();
        batch.push(batch[0].clone());
        for (n, e) in batch.iter_mut().enumerate() {
            e.cursor = first + n as u64;
        }
        let stored = store.insert_events(&batch).unwrap();
        assert_eq!(stored, [true, true, true, true, true, false]);
        let of = |agent: &AgentId, newest_first, before| {
            ids(
                &store,
                &EventScan {
                    agent: Some(agent.clone()),
                    before,
                    newest_first,
                    ..EventScan::default()
                },
                10,
            )
        };
        let short = |v: Vec<String>| v.iter().map(|s| s[23..25].to_owned()).collect::<Vec<_>>();
        assert_eq!(short(of(&a, false, None)), ["a1", "a2", "a3"]);
        assert_eq!(short(of(&a, true, None)), ["a3", "a2", "a1"]);
        assert_eq!(short(of(&a, true, Some(first + 4))), ["a2", "a1"]);
        assert_eq!(short(of(&b, false, None)), ["b1", "b2"]);
        // Trimming the oldest two keeps the rest of the runs readable.
        assert_eq!(store.trim_events(UnixMs(0), 3, 100).unwrap(), 2);
        assert_eq!(short(of(&a, false, None)), ["a2", "a3"]);
        assert_eq!(short(of(&b, false, None)), ["b2"]);
    }
}

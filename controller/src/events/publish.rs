//! Live events leave in cursor order.
//!
//! Batches from many agents are stored concurrently and become durable in
//! one group commit, so they may finish in any order. A watcher resumes
//! from the last cursor it saw; that is only exact if nothing with a lower
//! cursor can still be published after it. So each batch reserves its
//! cursors here and hands its stored events back when durable, and events
//! are released to watchers only once every batch before them is done.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;

use crate::model::StoredEvent;
use crate::store::{Store, StoreError};

/// Live events buffered per watcher; one that falls further behind reads
/// the rest from the store.
const LIVE_BUFFER: usize = 4096;

/// A batch's last cursor, and its stored events once durable.
type Reserved = (u64, Option<Vec<Arc<StoredEvent>>>);

#[derive(Debug)]
pub(super) struct Publisher {
    /// Reserved batches by first cursor: their last cursor, and their
    /// events once durable.
    pending: Mutex<BTreeMap<u64, Reserved>>,
    /// Every cursor up to this one is published (or was never stored).
    through: AtomicU64,
    live: broadcast::Sender<Arc<StoredEvent>>,
}

/// A batch's reserved cursors; dropping it without [`Slot::publish`]
/// releases the slot with nothing in it (a batch that failed).
#[derive(Debug)]
pub(super) struct Slot<'a> {
    publisher: &'a Publisher,
    pub first: u64,
    done: bool,
}

impl Publisher {
    pub(super) fn new(store: &dyn Store) -> Self {
        let newest = store
            .event_cursors()
            .ok()
            .flatten()
            .map_or(0, |(_, newest)| newest);
        Publisher {
            pending: Mutex::new(BTreeMap::new()),
            through: AtomicU64::new(newest),
            live: broadcast::channel(LIVE_BUFFER).0,
        }
    }

    pub(super) fn subscribe(&self) -> broadcast::Receiver<Arc<StoredEvent>> {
        self.live.subscribe()
    }

    /// Every cursor at or below this is published.
    pub(super) fn through(&self) -> u64 {
        self.through.load(Ordering::Acquire)
    }

    /// Reserves `n` cursors for a batch (in the store, in order).
    pub(super) fn reserve(&self, store: &dyn Store, n: u64) -> Result<Slot<'_>, StoreError> {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let first = store.reserve_event_cursors(n)?;
        pending.insert(first, (first + n.saturating_sub(1), None));
        Ok(Slot {
            publisher: self,
            first,
            done: false,
        })
    }

    fn complete(&self, first: u64, events: Vec<Arc<StoredEvent>>) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, slot)) = pending.get_mut(&first) {
            *slot = Some(events);
        }
        // Release every finished batch with no unfinished one before it.
        while let Some(entry) = pending.first_entry() {
            if entry.get().1.is_none() {
                break;
            }
            let (_, (last, events)) = entry.remove_entry();
            for e in events.into_iter().flatten() {
                // No receivers is fine.
                let _ = self.live.send(e);
            }
            self.through.fetch_max(last, Ordering::AcqRel);
        }
    }
}

impl Slot<'_> {
    /// The batch's stored events are durable: release them in order.
    pub(super) fn publish(mut self, events: Vec<Arc<StoredEvent>>) {
        self.done = true;
        self.publisher.complete(self.first, events);
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.publisher.complete(self.first, Vec::new());
        }
    }
}

//! A live view of events that never silently drops one.
//!
//! A watcher reads live events from a bounded broadcast buffer. One that
//! falls behind (a slow client, a flood) used to be told only how many it
//! had missed; now it reads what it missed from the store, from the last
//! cursor it saw, and then goes on live. A client that reconnects passes
//! that cursor to resume where it stopped. Only events deleted by
//! retention before it read them are missing, and it is told how many.

use std::collections::VecDeque;
use std::ops::ControlFlow;
use std::sync::Arc;

use tokio::sync::{broadcast, watch};

use super::{EventFilter, Events, StoredEvent};
use crate::store::{EventScan, StoreError};

/// Events read from the store per catch-up step.
const CATCH_UP_BATCH: usize = 256;
/// Events looked at per catch-up step (a selective filter matches few).
const CATCH_UP_SCAN: usize = 4096;

/// What a watcher gets next.
#[derive(Debug)]
pub enum WatchItem {
    Event(Arc<StoredEvent>),
    /// An event another controller sharing the store ingested.
    Other(Arc<StoredEvent>),
    /// This many events of other controllers were not shown (the watcher
    /// read too slowly); they are stored.
    MissedFromOthers(u64),
    /// This many events (by cursor, so an upper bound) were deleted by
    /// retention before this watcher read them.
    Gap(u64),
}

/// One watcher's position.
#[derive(Debug)]
pub struct EventWatch {
    live: broadcast::Receiver<Arc<StoredEvent>>,
    /// Other controllers' events, as they commit (their cursors are
    /// theirs: not in order with this controller's).
    others: broadcast::Receiver<Arc<StoredEvent>>,
    closed: watch::Receiver<bool>,
    filter: EventFilter,
    /// Every event up to this cursor has been looked at.
    last: u64,
    catching_up: bool,
    backlog: VecDeque<StoredEvent>,
}

impl Events {
    /// Watches events matching `filter`: from now on, or after the cursor
    /// `after` (a resumed watch).
    pub fn watch(&self, filter: EventFilter, after: Option<u64>) -> EventWatch {
        let live = self.publisher.subscribe();
        let through = self.publisher.through();
        EventWatch {
            live,
            others: self.others.subscribe(),
            closed: self.closed.subscribe(),
            filter,
            last: after.map_or(through, |a| a.min(through)),
            catching_up: after.is_some(),
            backlog: VecDeque::new(),
        }
    }

    /// Stored events after `after` matching `filter`, up to what is
    /// published; how far it looked; and how many were deleted by retention
    /// before `after + 1` could be read.
    fn catch_up(
        &self,
        filter: &EventFilter,
        after: u64,
    ) -> Result<(Vec<StoredEvent>, u64, u64), StoreError> {
        let through = self.publisher.through();
        let gap = match self.store.event_cursors()? {
            Some((oldest, _)) if oldest > after + 1 => oldest - after - 1,
            _ => 0,
        };
        let mut out = Vec::new();
        let mut looked = 0;
        let mut reached = after;
        let scan = EventScan {
            agent: filter.agent.clone(),
            after,
            before: Some(through.saturating_add(1)),
            newest_first: false,
        };
        self.store.scan_events(&scan, &mut |e| {
            looked += 1;
            reached = e.cursor;
            if filter.matches(&e) {
                out.push(e);
            }
            if out.len() >= CATCH_UP_BATCH || looked >= CATCH_UP_SCAN {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })?;
        if out.len() < CATCH_UP_BATCH && looked < CATCH_UP_SCAN {
            reached = through;
        }
        Ok((out, reached, gap))
    }
}

impl EventWatch {
    /// The next event (or gap); `None` once the controller stops.
    pub async fn next(&mut self, events: &Events) -> Result<Option<WatchItem>, StoreError> {
        loop {
            if let Some(e) = self.backlog.pop_front() {
                return Ok(Some(WatchItem::Event(Arc::new(e))));
            }
            if self.catching_up {
                let (found, reached, gap) = events.catch_up(&self.filter, self.last)?;
                let done = found.is_empty() && reached >= events.publisher.through();
                self.last = self.last.max(reached);
                self.backlog.extend(found);
                self.catching_up = !done;
                if gap > 0 {
                    return Ok(Some(WatchItem::Gap(gap)));
                }
                continue;
            }
            tokio::select! {
                () = crate::stopped(&mut self.closed) => return Ok(None),
                received = self.live.recv() => match received {
                    Ok(e) => {
                        if e.cursor <= self.last {
                            continue;
                        }
                        self.last = e.cursor;
                        if self.filter.matches(&e) {
                            return Ok(Some(WatchItem::Event(e)));
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => self.catching_up = true,
                    Err(broadcast::error::RecvError::Closed) => return Ok(None),
                },
                received = self.others.recv() => match received {
                    Ok(e) => {
                        if self.filter.matches(&e) {
                            return Ok(Some(WatchItem::Other(e)));
                        }
                    }
                    // Too slow for them: they are in the store, for
                    // `get events`; say how many were not shown.
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        return Ok(Some(WatchItem::MissedFromOthers(n)));
                    }
                    Err(broadcast::error::RecvError::Closed) => return Ok(None),
                },
            }
        }
    }
}

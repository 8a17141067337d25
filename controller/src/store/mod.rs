//! Everything the controller persists, behind one trait.
//!
//! Invariants:
//! - **A write is durable only after a flush.** Writers call the store's
//!   write methods, then [`Committer::durable`], and only then acknowledge
//!   anything (to an agent or an admin).
//! - **Each engine appears only in its own module**: sled in `sled.rs` and
//!   `sled_events.rs`, PostgreSQL in `postgres/`. Callers see [`Store`].

mod copy;
mod event_record;
mod lure_record;
mod postgres;
mod sled;
mod sled_events;
pub mod space;

use std::ops::ControlFlow;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use ruse_proto::types::{AdminName, AgentId, TokenId, UnixMs};

use crate::model::{
    AdminRecord, AgentRecord, AllowRule, AuditRecord, CampaignRecord, Decoy, Incident,
    LureInstance, StoredEvent, Suppression, TimelineEntry, TokenRecord,
};

pub use self::copy::{Copied, copy_store};
pub use self::postgres::{
    Migrated, PgOptions, PgStore, migrate, redact as redact_url, schema_version,
};
pub use self::sled::SledStore;

/// A storage failure. Cloneable so one flush failure can be reported to
/// every writer waiting on it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("store engine error: {0}")]
    Engine(Arc<str>),
    #[error("corrupt record in {tree} at key {key}: {reason}")]
    Corrupt {
        tree: &'static str,
        key: String,
        reason: String,
    },
    #[error("the store is shutting down")]
    Closed,
    /// The disk under the data directory has no space left.
    #[error(
        "the controller's data directory is out of disk space ({0}); free space there: nothing already stored is lost, and agents keep their events until they can be stored"
    )]
    Full(Arc<str>),
}

/// How long a lease ([`Store::lease`]) lasts unrenewed.
pub const LEASE_TTL: std::time::Duration = std::time::Duration::from_secs(10);
/// How often a lease's holder renews it (and others try to take it).
pub const LEASE_RENEW: std::time::Duration = std::time::Duration::from_secs(3);

/// A committed change to a store that several controllers share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The record `key` of `table` was written or deleted (by any
    /// controller, this one too).
    Record { table: String, key: String },
    /// Changes may have been missed (the feed reconnected): reload what
    /// you follow.
    Resync,
}

/// Which store to open, and where.
#[derive(Debug, Clone)]
pub enum StoreLocation {
    /// The embedded store in `dir`, keeping `disk_reserve` (the data
    /// directory and a byte count) free.
    Sled {
        dir: std::path::PathBuf,
        cache_bytes: u64,
        disk_reserve: Option<(std::path::PathBuf, u64)>,
    },
    /// A PostgreSQL database (migrated to this controller's schema when
    /// opened).
    Postgres(PgOptions),
}

impl StoreLocation {
    /// Opens the store. Blocks (a migration may take a while).
    pub fn open(&self) -> Result<Arc<dyn Store>, StoreError> {
        Ok(match self {
            StoreLocation::Sled {
                dir,
                cache_bytes,
                disk_reserve,
            } => {
                let store = SledStore::open(dir, *cache_bytes)?;
                match disk_reserve {
                    Some((data_dir, bytes)) => Arc::new(store.with_disk_reserve(data_dir, *bytes)),
                    None => Arc::new(store),
                }
            }
            StoreLocation::Postgres(options) => Arc::new(PgStore::open(options)?),
        })
    }
}

/// How [`Store::scan_events`] walks the event log.
#[derive(Debug, Clone, Default)]
pub struct EventScan {
    /// Only this agent's events.
    pub agent: Option<AgentId>,
    /// Cursors above this one (0: from the first).
    pub after: u64,
    /// Cursors below this one (`None`: to the last).
    pub before: Option<u64>,
    pub newest_first: bool,
}

/// The controller's persistent state.
///
/// Methods are synchronous and may block briefly; writes are buffered by the
/// engine until [`Store::flush`].
pub trait Store: Send + Sync + std::fmt::Debug + 'static {
    fn agent(&self, id: &AgentId) -> Result<Option<AgentRecord>, StoreError>;
    fn agents(&self) -> Result<Vec<AgentRecord>, StoreError>;
    /// The records of `ids` that exist (another controller changed them).
    fn agents_among(&self, ids: &[AgentId]) -> Result<Vec<AgentRecord>, StoreError> {
        ids.iter()
            .filter_map(|id| self.agent(id).transpose())
            .collect()
    }
    fn put_agent(&self, record: &AgentRecord) -> Result<(), StoreError>;
    /// Writes what an agent's sessions change (last seen, address, host
    /// facts, certificate) and keeps what admins set (labels, revocation,
    /// deletion) as stored: the controller holding the agent's session
    /// writes this often, and must not undo another controller's
    /// revocation or labels with its older copy. Of two controllers'
    /// session records (`session`), the later session's is kept.
    fn put_agent_state(&self, record: &AgentRecord) -> Result<(), StoreError> {
        self.put_agent(record)
    }
    /// [`Store::put_agent_state`] of many (the agent state written every
    /// few seconds: a thousand agents' acknowledgements are one write).
    fn put_agent_states(&self, records: &[AgentRecord]) -> Result<(), StoreError> {
        records.iter().try_for_each(|r| self.put_agent_state(r))
    }

    fn token(&self, id: &TokenId) -> Result<Option<TokenRecord>, StoreError>;
    /// Counts one use of a token if it has uses left; returns its record
    /// after, or `None` if it had none left (or does not exist). Atomic
    /// across every controller sharing the store (PostgreSQL: one
    /// `UPDATE … WHERE uses < max_uses`), so `max_uses` holds across
    /// replicas; within one controller, uses are serialised by the caller.
    fn use_token(&self, id: &TokenId) -> Result<Option<TokenRecord>, StoreError> {
        let Some(mut record) = self.token(id)? else {
            return Ok(None);
        };
        if record.uses >= record.max_uses {
            return Ok(None);
        }
        record.uses += 1;
        self.put_token(&record)?;
        Ok(Some(record))
    }
    fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError>;
    fn put_token(&self, record: &TokenRecord) -> Result<(), StoreError>;
    /// Returns whether the token existed.
    fn delete_token(&self, id: &TokenId) -> Result<bool, StoreError>;

    fn admin(&self, name: &AdminName) -> Result<Option<AdminRecord>, StoreError>;
    fn admins(&self) -> Result<Vec<AdminRecord>, StoreError>;
    fn put_admin(&self, record: &AdminRecord) -> Result<(), StoreError>;

    /// Appends to the audit log, assigning `seq`.
    fn append_audit(&self, record: AuditRecord) -> Result<AuditRecord, StoreError>;
    /// The most recent `limit` records at or after `since` and (when
    /// `before` is set) with a sequence number below it, oldest first.
    fn audit(
        &self,
        since: UnixMs,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<AuditRecord>, StoreError>;

    fn campaigns(&self) -> Result<Vec<CampaignRecord>, StoreError>;
    fn put_campaign(&self, record: &CampaignRecord) -> Result<(), StoreError>;
    fn delete_campaign(&self, name: &str) -> Result<(), StoreError>;

    fn decoys(&self) -> Result<Vec<Decoy>, StoreError>;
    fn put_decoy(&self, decoy: &Decoy) -> Result<(), StoreError>;
    fn delete_decoy(&self, name: &str) -> Result<(), StoreError>;

    fn allow_rules(&self) -> Result<Vec<AllowRule>, StoreError>;
    fn put_allow_rule(&self, rule: &AllowRule) -> Result<(), StoreError>;
    fn delete_allow_rule(&self, name: &str) -> Result<(), StoreError>;

    fn suppressions(&self) -> Result<Vec<Suppression>, StoreError>;
    fn put_suppression(&self, rule: &Suppression) -> Result<(), StoreError>;
    fn delete_suppression(&self, name: &str) -> Result<(), StoreError>;

    /// Every incident (resolved ones too), with its timeline.
    fn incidents(&self) -> Result<Vec<Incident>, StoreError>;
    /// Writes an incident's head: everything but its timeline.
    fn put_incident(&self, incident: &Incident) -> Result<(), StoreError>;
    /// Adds entries to an incident's timeline (written once each; the
    /// timeline is read back in time order).
    fn put_timeline(&self, incident: &str, entries: &[&TimelineEntry]) -> Result<(), StoreError>;
    /// Where [`Store::incidents_changed`] starts after [`Store::incidents`]
    /// was read: taken before that read (an incident written between the
    /// two is returned again, never missed).
    fn incidents_mark(&self) -> Result<u64, StoreError> {
        Ok(0)
    }
    /// Incidents that *other* controllers sharing this store wrote since
    /// `mark` (with their timelines), in the order they committed;
    /// advances `mark`. With `hold`, first makes every other controller
    /// wait to write incidents until this one's next flush, so what it
    /// correlates until then starts from every incident they wrote: two
    /// events of one attack that arrive at two controllers land in one
    /// incident. A store only one controller writes returns nothing.
    fn incidents_changed(&self, _mark: &mut u64, _hold: bool) -> Result<Vec<Incident>, StoreError> {
        Ok(Vec::new())
    }

    /// Named counters (suppression hits, …).
    fn counters(&self) -> Result<Vec<(String, u64)>, StoreError>;
    fn put_counter(&self, name: &str, value: u64) -> Result<(), StoreError>;

    /// A durable delivery queue per output: appends `item`, returning its
    /// sequence number.
    fn queue_push(&self, queue: &str, item: &[u8]) -> Result<u64, StoreError>;
    /// The oldest `limit` items of `queue`.
    fn queue_peek(&self, queue: &str, limit: usize) -> Result<Vec<(u64, Vec<u8>)>, StoreError>;
    fn queue_remove(&self, queue: &str, seq: u64) -> Result<(), StoreError>;
    fn queue_len(&self, queue: &str) -> Result<usize, StoreError>;

    /// The lure registry: every instance ever created, retired ones too,
    /// each in its latest written version.
    fn lures(&self) -> Result<Vec<LureInstance>, StoreError>;
    /// The instances written since change mark `after` (every one when it
    /// is 0), and the mark to pass next time. A store that no other
    /// controller writes to keeps no marks: it returns every instance and
    /// 0.
    fn lures_since(&self, after: u64) -> Result<(Vec<LureInstance>, u64), StoreError> {
        let _ = after;
        Ok((self.lures()?, 0))
    }
    /// An instance written by [`Store::put_lure`] or [`Store::put_lures`]
    /// (retired ones are; new ones written in a batch are not, and are
    /// looked up in memory while active).
    fn lure(&self, id: &str) -> Result<Option<LureInstance>, StoreError>;
    fn put_lure(&self, lure: &LureInstance) -> Result<(), StoreError>;
    /// Many lures, a record each, so each can be looked up by id (the
    /// retired instances of a pass).
    fn put_lures(&self, lures: &[LureInstance]) -> Result<(), StoreError> {
        lures.iter().try_for_each(|l| self.put_lure(l))
    }
    /// New instances in one record: a fleet-wide campaign writes 100k
    /// instances, and a record each was about a quarter of the controller's
    /// CPU during the push (perf), and with PostgreSQL ~1.9 s of the
    /// database's time while three controllers pushed. A later record of an
    /// instance ([`Store::put_lures`]: its retirement, or a pass writing it
    /// again after a write whose outcome it does not know) supersedes its
    /// copy here; an instance is written here once.
    fn put_new_lures(&self, lures: &[Arc<LureInstance>]) -> Result<(), StoreError>;
    /// Deletes each batch written by [`Store::put_new_lures`] whose every
    /// instance has a later record of its own (it was retired since): the
    /// batch holds nothing that is not stored again. Without this, every
    /// rotation would leave its generation stored twice. Returns how many
    /// batches were deleted.
    fn drop_superseded_lure_batches(&self) -> Result<usize, StoreError>;

    /// Reserves `n` consecutive event cursors (the controller's receive
    /// order); returns the first. Cursors only grow; one reserved and never
    /// stored is a harmless gap.
    fn reserve_event_cursors(&self, n: u64) -> Result<u64, StoreError>;
    /// Stores events (their cursors reserved, increasing), each unless one
    /// with its id is already stored; returns which were stored (atomic
    /// per event: a resend after a crash is a duplicate, never a second
    /// copy). Where controllers share the store this first holds their
    /// incident writes back, as [`Store::incidents_changed`] with `hold`
    /// does, in the same statement: it fails whole or not at all.
    fn insert_events(&self, events: &[StoredEvent]) -> Result<Vec<bool>, StoreError>;
    /// Walks stored events in cursor order as `scan` says, until `visit`
    /// breaks. With an agent, only that agent's events are read. Events
    /// and trims not yet flushed may or may not be seen (events are shown
    /// only once durable anyway).
    fn scan_events(
        &self,
        scan: &EventScan,
        visit: &mut dyn FnMut(StoredEvent) -> ControlFlow<()>,
    ) -> Result<(), StoreError>;
    /// Where [`Store::events_changed`] starts: everything stored so far
    /// is behind it.
    fn events_mark(&self) -> Result<u64, StoreError> {
        Ok(0)
    }
    /// Events that *other* controllers sharing this store stored since
    /// `mark`, at most `limit`, in the order they committed; advances
    /// `mark`. A store only one controller writes returns none.
    fn events_changed(
        &self,
        _mark: &mut u64,
        _limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        Ok(Vec::new())
    }
    /// The oldest and newest stored cursors.
    fn event_cursors(&self) -> Result<Option<(u64, u64)>, StoreError>;
    /// Deletes the oldest events while they were received before
    /// `received_before` or more than `keep_at_most` remain (counted by
    /// cursors, so gaps count too), at most `max` of them; returns how
    /// many.
    fn trim_events(
        &self,
        received_before: UnixMs,
        keep_at_most: u64,
        max: usize,
    ) -> Result<usize, StoreError>;

    /// A new resource revision, greater than every one before (survives
    /// restarts).
    fn next_revision(&self) -> Result<u64, StoreError>;

    /// Takes or renews the lease `name` for `ttl` (work one controller at
    /// a time does); true while this controller holds it. Another takes
    /// it over once `ttl` passes unrenewed. A store only one controller
    /// uses always grants it.
    fn lease(&self, _name: &str, _ttl: std::time::Duration) -> Result<bool, StoreError> {
        Ok(true)
    }
    /// The names of the leases starting with `prefix` that some
    /// controller holds now (unexpired), without the prefix.
    fn live_leases(&self, _prefix: &str) -> Result<Vec<String>, StoreError> {
        Ok(Vec::new())
    }
    /// Gives up the lease `name` if this controller holds it (stopping):
    /// another takes it over at once.
    fn release_lease(&self, _name: &str) -> Result<(), StoreError> {
        Ok(())
    }

    /// Makes every write made before this call durable. Blocks.
    fn flush(&self) -> Result<(), StoreError>;

    /// Committed changes made by every controller sharing this store;
    /// `None` when only this controller writes it (sled).
    fn changes(&self) -> Option<tokio::sync::broadcast::Receiver<Change>> {
        None
    }

    /// Why the store refuses all work for good, if it does (the PostgreSQL
    /// store after losing uncommitted writes): the process should exit so
    /// its supervisor restarts it.
    fn broken(&self) -> Option<Arc<str>> {
        None
    }
}

type FlushWaiter = oneshot::Sender<Result<(), StoreError>>;

/// Group commit: many writers wait on one flush.
///
/// A writer makes its writes, then awaits [`Committer::durable`]. The
/// committer flushes once for every writer that asked while the previous
/// flush was running, so throughput does not pay one flush per write.
#[derive(Debug, Clone)]
pub struct Committer {
    tx: mpsc::Sender<FlushWaiter>,
}

impl Committer {
    /// Starts the commit task. It ends, releasing `store`, when every
    /// `Committer` is dropped; the handle lets the owner wait for that.
    pub fn spawn(store: Arc<dyn Store>) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, mut rx) = mpsc::channel::<FlushWaiter>(4096);
        let task = tokio::spawn(async move {
            let mut waiters = Vec::new();
            while let Some(first) = rx.recv().await {
                waiters.push(first);
                while let Ok(more) = rx.try_recv() {
                    waiters.push(more);
                }
                let store = store.clone();
                let result = tokio::task::spawn_blocking(move || store.flush())
                    .await
                    .unwrap_or_else(|e| Err(StoreError::Engine(e.to_string().into())));
                for waiter in waiters.drain(..) {
                    let _ = waiter.send(result.clone());
                }
            }
        });
        (Committer { tx }, task)
    }

    /// Returns once every write this task made before the call is durable.
    pub async fn durable(&self) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(tx).await.map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }
}

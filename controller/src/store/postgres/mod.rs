//! The PostgreSQL store: controllers sharing one database. The only place
//! that names tokio-postgres.
//!
//! [`Store`] is synchronous and its writes become durable together at
//! [`Store::flush`] (group commit). Here that is one *writer* connection
//! holding an open transaction: every write and every read that must see
//! this controller's unflushed writes runs on it, one at a time, each
//! inside a savepoint so a failed statement undoes only itself;
//! `flush` commits and opens the next transaction. Events, the incidents
//! they open and the output notices those send therefore commit together,
//! as they do on sled. Reads that need only committed data (event
//! listings) and counters that must not wait for a commit (event cursors,
//! revisions) use a second, autocommit connection.
//!
//! If the writer connection breaks while it holds uncommitted writes,
//! those writes are gone and nothing can tell their writers which flush
//! would have covered them: the store then refuses every call, so no flush
//! can report them durable, and the controller must be restarted (agents
//! resend what was not acknowledged). A break with nothing uncommitted is
//! repaired by reconnecting.
//!
//! The calls block the calling thread on a small runtime of the store's
//! own, as sled's calls block on the disk.

mod connect;
mod events;
mod listen;
mod records;
mod schema;
mod session;
mod tls;

use std::future::Future;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::runtime::{Handle, Runtime};
use tokio_postgres::Client;
use tokio_postgres::types::Type;

use self::connect::Connector;
use self::session::{PgResult, Shared, Writer, commit_regularly};
use super::{Store, StoreError};

pub use self::connect::{PgOptions, redact};
pub use self::schema::{Migrated, newest as schema_version};

/// How long one call may take before it fails.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Uncommitted writes are committed at least this often, so no
/// transaction stays open long (flushes usually come sooner).
const COMMIT_EVERY: Duration = Duration::from_secs(1);
/// Event cursors taken from the database at a time.
const CURSOR_BLOCK: u64 = 512;
/// Events read per query while scanning.
const SCAN_PAGE: i64 = 500;
/// The advisory lock every incident write takes until its commit ("ruse"
/// and 2; migrations use 1).
const INCIDENT_LOCK: i64 = 0x7275_7365_0000_0002;
/// The advisory lock every write of lure instances takes until its commit
/// ("ruse" and 3; see migration 8).
const LURE_LOCK: i64 = 0x7275_7365_0000_0003;

/// The PostgreSQL-backed [`Store`].
#[derive(Debug)]
pub struct PgStore {
    runtime: Option<Runtime>,
    handle: Handle,
    shared: Arc<Shared>,
    /// Event cursors taken from the database and not yet handed out:
    /// next and end.
    cursors: Mutex<(u64, u64)>,
    /// Committed changes of every controller (see `listen.rs`).
    changes: tokio::sync::broadcast::Sender<super::Change>,
    /// This store's name among the controllers sharing the database: the
    /// `writer` of its incidents and the holder of its leases.
    me: Arc<str>,
}

fn runtime() -> Result<Runtime, StoreError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("ruse-store")
        .enable_all()
        .build()
        .map_err(|e| StoreError::Engine(format!("store runtime: {e}").into()))
}

/// Applies the migrations the database lacks (`ruse-controller migrate`).
pub fn migrate(options: &PgOptions) -> Result<Migrated, StoreError> {
    let connector = Connector::new(options)?;
    runtime()?.block_on(async {
        let mut client = connector.connect().await?;
        schema::migrate(&mut client).await
    })
}

impl PgStore {
    /// Connects, migrates the schema if needed, and opens the store.
    pub fn open(options: &PgOptions) -> Result<Self, StoreError> {
        let runtime = runtime()?;
        let handle = runtime.handle().clone();
        let me: Arc<str> = ruse_proto::types::new_ulid().into();
        let shared = Arc::new(Shared {
            connector: Arc::new(Connector::new(options)?.writer(&me)),
            writer: tokio::sync::Mutex::new(Writer::default()),
            auto: tokio::sync::Mutex::new(None),
            own: tokio::sync::Mutex::new(None),
            failed: OnceLock::new(),
        });
        let store = PgStore {
            runtime: Some(runtime),
            handle,
            shared,
            cursors: Mutex::new((0, 0)),
            changes: tokio::sync::broadcast::channel(4096).0,
            me,
        };
        let s = store.shared.clone();
        let migrated = store.call(async move {
            let mut client = s.connector.connect().await?;
            schema::migrate(&mut client).await
        })?;
        tracing::info!(
            database = %store.shared.connector.target,
            schema = schema::newest(),
            applied = ?migrated.applied,
            "store: PostgreSQL"
        );
        store
            .handle
            .spawn(commit_regularly(Arc::downgrade(&store.shared)));
        store.handle.spawn(listen::follow(
            store.shared.connector.clone(),
            store.changes.clone(),
            store.me.clone(),
        ));
        Ok(store)
    }

    /// Runs `f` on the store's runtime and waits for it.
    fn call<T: Send + 'static>(
        &self,
        f: impl Future<Output = Result<T, StoreError>> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.handle.spawn(async move {
            let _ = tx.send(f.await);
        });
        rx.recv().unwrap_or(Err(StoreError::Closed))
    }

    fn in_tx<T, F, Fut>(&self, write: bool, op: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(Arc<Client>) -> Fut + Send + 'static,
        Fut: Future<Output = PgResult<T>> + Send + 'static,
    {
        let shared = self.shared.clone();
        self.call(async move { shared.in_tx(write, op).await })
    }

    fn own_tx<T, F, Fut>(&self, op: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(Arc<Client>) -> Fut + Send + 'static,
        Fut: Future<Output = PgResult<T>> + Send + 'static,
    {
        let shared = self.shared.clone();
        self.call(async move { shared.own_tx(op).await })
    }

    fn write<F, Fut>(&self, op: F) -> Result<(), StoreError>
    where
        F: FnOnce(Arc<Client>) -> Fut + Send + 'static,
        Fut: Future<Output = PgResult<u64>> + Send + 'static,
    {
        self.in_tx(true, op).map(drop)
    }

    fn auto<T, F, Fut>(&self, op: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(Arc<Client>) -> Fut + Send + 'static,
        Fut: Future<Output = PgResult<T>> + Send + 'static,
    {
        let shared = self.shared.clone();
        self.call(async move { shared.auto(op).await })
    }

    fn get<T: DeserializeOwned>(
        &self,
        table: &'static str,
        key: &str,
    ) -> Result<Option<T>, StoreError> {
        let sql = format!(
            "SELECT record::text FROM {table} WHERE {} = $1",
            key_of(table)
        );
        let param = key.to_owned();
        let row = self.in_tx(false, move |c| async move {
            c.query_typed_opt(&sql, &[(&param, Type::TEXT)]).await
        })?;
        row.map(|r| decode(table, key, r.get(0))).transpose()
    }

    fn all<T: DeserializeOwned>(&self, table: &'static str) -> Result<Vec<T>, StoreError> {
        let sql = format!(
            "SELECT record::text, {key} FROM {table} ORDER BY {key}",
            key = key_of(table)
        );
        let rows = self.in_tx(
            false,
            move |c| async move { c.query_typed(&sql, &[]).await },
        )?;
        rows.iter()
            .map(|r| decode(table, r.get(1), r.get(0)))
            .collect()
    }

    fn put<T: Serialize>(
        &self,
        table: &'static str,
        key: &str,
        value: &T,
    ) -> Result<(), StoreError> {
        let json = serde_json::to_string(value)
            .map_err(|e| StoreError::Engine(format!("encode: {e}").into()))?;
        let sql = format!(
            "INSERT INTO {table} ({key}, record) VALUES ($1, $2::jsonb) \
             ON CONFLICT ({key}) DO UPDATE SET record = excluded.record",
            key = key_of(table)
        );
        let key = key.to_owned();
        self.write(move |c| async move {
            c.execute_typed(&sql, &[(&key, Type::TEXT), (&json, Type::TEXT)])
                .await
        })
    }

    fn delete(&self, table: &'static str, key: &str) -> Result<bool, StoreError> {
        let sql = format!("DELETE FROM {table} WHERE {} = $1", key_of(table));
        let key = key.to_owned();
        let n = self.in_tx(true, move |c| async move {
            c.execute_typed(&sql, &[(&key, Type::TEXT)]).await
        })?;
        Ok(n > 0)
    }
}

impl PgStore {
    /// Whether the database holds no installation yet (no admin, agent,
    /// token, lure or event).
    pub fn is_empty(&self) -> Result<bool, StoreError> {
        let row = self.in_tx(false, move |c| async move {
            c.query_typed_one(
                "SELECT NOT (EXISTS (SELECT 1 FROM admins) OR EXISTS (SELECT 1 FROM agents) \
                 OR EXISTS (SELECT 1 FROM tokens) OR EXISTS (SELECT 1 FROM lures) \
                 OR EXISTS (SELECT 1 FROM events))",
                &[],
            )
            .await
        })?;
        Ok(row.get(0))
    }

    /// Makes later revisions and event cursors greater than `revision` and
    /// `cursor` (records copied from another store keep theirs).
    pub fn raise_floors(&self, revision: u64, cursor: u64) -> Result<(), StoreError> {
        let (revision, cursor) = (to_i64(revision.max(1)), to_i64(cursor));
        self.auto(move |c| async move {
            c.query_typed(
                "SELECT setval('revisions', greatest((SELECT last_value FROM revisions), $1))",
                &[(&revision, Type::INT8)],
            )
            .await?;
            c.execute_typed(
                "UPDATE cursor_blocks SET last = greatest(last, $1) WHERE name = 'events'",
                &[(&cursor, Type::INT8)],
            )
            .await
        })?;
        // Cursors already taken from the database are below the floor now.
        *self.cursors.lock().unwrap_or_else(|e| e.into_inner()) = (0, 0);
        Ok(())
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        // As sled does when closed: what was written is kept.
        if let Err(e) = self.flush() {
            tracing::warn!(error = %e, "store: last commit failed");
        }
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Commits uncommitted writes every [`COMMIT_EVERY`], until the store is
/// dropped.
/// The key column of a JSON record table.
fn key_of(table: &str) -> &'static str {
    match table {
        "agents" | "tokens" | "incidents" => "id",
        _ => "name",
    }
}

fn decode<T: DeserializeOwned>(
    table: &'static str,
    key: &str,
    json: &str,
) -> Result<T, StoreError> {
    serde_json::from_str(json).map_err(|e| StoreError::Corrupt {
        tree: table,
        key: key.to_owned(),
        reason: e.to_string(),
    })
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn to_u64(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

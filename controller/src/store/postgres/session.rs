//! The three connections of a store: the writer, holding the open
//! transaction that [`Shared::flush`] commits; an autocommit one; and one
//! for writes of lure instances, each committed on its own.

use std::future::Future;
use std::sync::{Arc, OnceLock, Weak};

use tokio_postgres::Client;

use super::connect::{Connector, db};
use super::{CALL_TIMEOUT, COMMIT_EVERY};
use crate::store::StoreError;

#[derive(Debug, Default)]
pub(super) struct Writer {
    client: Option<Arc<Client>>,
    dirty: bool,
    /// The open transaction holds the incident lock (see `hold_once`).
    held: bool,
    /// Counts transactions (commits and reconnects).
    tx: u64,
    /// The transaction `tx` read what other controllers wrote after it
    /// took the lock: until it commits they cannot write more.
    caught_up: Option<u64>,
}

#[derive(Debug)]
pub(super) struct Shared {
    pub(super) connector: Arc<Connector>,
    pub(super) writer: tokio::sync::Mutex<Writer>,
    pub(super) auto: tokio::sync::Mutex<Option<Arc<Client>>>,
    /// For [`Shared::own_tx`]: held for a whole transaction.
    pub(super) own: tokio::sync::Mutex<Option<Arc<Client>>>,
    /// Set when uncommitted writes were lost; every call fails after.
    pub(super) failed: OnceLock<Arc<str>>,
}

pub(super) type PgResult<T> = Result<T, tokio_postgres::Error>;

impl Shared {
    fn check(&self) -> Result<(), StoreError> {
        match self.failed.get() {
            Some(why) => Err(StoreError::Engine(why.clone())),
            None => Ok(()),
        }
    }

    /// The writer connection broke (or a statement could not be undone):
    /// with uncommitted writes on it, the store fails for good.
    fn lost(&self, w: &mut Writer, e: StoreError) -> StoreError {
        w.client = None;
        if w.dirty {
            let why: Arc<str> = format!(
                "the database connection broke with uncommitted writes ({e}); they are lost, \
                 so this controller refuses further work: restart it (agents resend what \
                 was not acknowledged)"
            )
            .into();
            tracing::error!("{why}");
            let _ = self.failed.set(why.clone());
            return StoreError::Engine(why);
        }
        e
    }

    async fn writer_client(&self, w: &mut Writer) -> Result<Arc<Client>, StoreError> {
        if let Some(c) = &w.client
            && !c.is_closed()
        {
            return Ok(c.clone());
        }
        if w.client.is_some() {
            // Closed between calls.
            let e = StoreError::Engine("database connection closed".into());
            let e = self.lost(w, e);
            self.check()?;
            drop(e);
        }
        let client = self.connector.connect().await?;
        client.batch_execute("BEGIN").await.map_err(db)?;
        let client = Arc::new(client);
        w.client = Some(client.clone());
        w.held = false;
        w.tx += 1;
        Ok(client)
    }

    /// Runs `op` on the writer connection inside a savepoint.
    pub(super) async fn in_tx<T, F, Fut>(&self, write: bool, op: F) -> Result<T, StoreError>
    where
        F: FnOnce(Arc<Client>) -> Fut,
        Fut: Future<Output = PgResult<T>>,
    {
        self.check()?;
        let mut w = self.writer.lock().await;
        self.run_in_tx(&mut w, write, op).await
    }

    /// Runs `op` (a lock) on the writer connection, once per transaction:
    /// not again until the next commit releases what it took. Returns the
    /// transaction, and whether it already read what others wrote (see
    /// [`Shared::caught_up`]).
    pub(super) async fn hold_once<F, Fut>(&self, op: F) -> Result<(u64, bool), StoreError>
    where
        F: FnOnce(Arc<Client>) -> Fut,
        Fut: Future<Output = PgResult<u64>>,
    {
        self.check()?;
        let mut w = self.writer.lock().await;
        if !w.held {
            // A write: the next flush commits, and so releases, it.
            self.run_in_tx(&mut w, true, op).await?;
            w.held = true;
        }
        Ok((w.tx, w.caught_up == Some(w.tx)))
    }

    /// Transaction `tx`, holding the lock, has read what others wrote.
    pub(super) async fn caught_up(&self, tx: u64) {
        let mut w = self.writer.lock().await;
        if w.tx == tx && w.held {
            w.caught_up = Some(tx);
        }
    }

    /// Runs the write `op`, which takes the lock [`Shared::hold_once`]
    /// takes, on the writer connection.
    pub(super) async fn in_tx_holding<T, F, Fut>(&self, op: F) -> Result<T, StoreError>
    where
        F: FnOnce(Arc<Client>) -> Fut,
        Fut: Future<Output = PgResult<T>>,
    {
        self.check()?;
        let mut w = self.writer.lock().await;
        let value = self.run_in_tx(&mut w, true, op).await?;
        w.held = true;
        Ok(value)
    }

    async fn run_in_tx<T, F, Fut>(
        &self,
        w: &mut Writer,
        write: bool,
        op: F,
    ) -> Result<T, StoreError>
    where
        F: FnOnce(Arc<Client>) -> Fut,
        Fut: Future<Output = PgResult<T>>,
    {
        let client = self.writer_client(w).await?;
        let run = async {
            // Pipelined: the savepoint and the operation's first statement
            // go in one round trip.
            let (savepoint, result) =
                tokio::join!(client.batch_execute("SAVEPOINT op"), op(client.clone()));
            savepoint?;
            Ok::<_, tokio_postgres::Error>(result)
        };
        let result = match tokio::time::timeout(CALL_TIMEOUT, run).await {
            Err(_) => {
                let e = StoreError::Engine("the database did not answer in 30 s".into());
                return Err(self.lost(w, e));
            }
            Ok(Err(e)) => return Err(self.lost(w, db(e))),
            Ok(Ok(result)) => result,
        };
        match result {
            Ok(value) => {
                if let Err(e) = client.batch_execute("RELEASE SAVEPOINT op").await {
                    return Err(self.lost(w, db(e)));
                }
                w.dirty |= write;
                Ok(value)
            }
            Err(e) => {
                let undo = client
                    .batch_execute("ROLLBACK TO SAVEPOINT op; RELEASE SAVEPOINT op")
                    .await;
                match undo {
                    Ok(()) => Err(db(e)),
                    Err(_) => Err(self.lost(w, db(e))),
                }
            }
        }
    }

    /// Runs `op` on the autocommit connection.
    pub(super) async fn auto<T, F, Fut>(&self, op: F) -> Result<T, StoreError>
    where
        F: FnOnce(Arc<Client>) -> Fut,
        Fut: Future<Output = PgResult<T>>,
    {
        self.check()?;
        let client = {
            let mut auto = self.auto.lock().await;
            match auto.as_ref() {
                Some(c) if !c.is_closed() => c.clone(),
                _ => {
                    let c = self.connector.connect().await?;
                    // Cursor blocks need not wait for the disk: an event
                    // using one commits after it, and that commit makes
                    // the block durable too.
                    c.batch_execute("SET synchronous_commit = off")
                        .await
                        .map_err(db)?;
                    let c = Arc::new(c);
                    *auto = Some(c.clone());
                    c
                }
            }
        };
        match tokio::time::timeout(CALL_TIMEOUT, op(client)).await {
            Ok(result) => result.map_err(db),
            Err(_) => Err(StoreError::Engine(
                "the database did not answer in 30 s".into(),
            )),
        }
    }

    /// Runs `op` in a transaction of its own, committed before this
    /// returns (durably: the connection keeps the default
    /// `synchronous_commit`). For writes that take a lock every
    /// controller's writes of the same kind wait on (lure instances): in
    /// the writer's transaction it would be held until the next commit,
    /// beside the locks that transaction took for other writes, and two
    /// controllers could each wait for a lock the other holds. A failure
    /// leaves nothing written; where the connection broke during the
    /// commit, the caller cannot know, and repeats a write that is
    /// idempotent.
    pub(super) async fn own_tx<T, F, Fut>(&self, op: F) -> Result<T, StoreError>
    where
        F: FnOnce(Arc<Client>) -> Fut,
        Fut: Future<Output = PgResult<T>>,
    {
        self.check()?;
        let mut own = self.own.lock().await;
        let client = match own.as_ref() {
            Some(c) if !c.is_closed() => c.clone(),
            _ => {
                let c = Arc::new(self.connector.connect().await?);
                *own = Some(c.clone());
                c
            }
        };
        let run = async {
            client.batch_execute("BEGIN").await?;
            match op(client.clone()).await {
                Ok(value) => client.batch_execute("COMMIT").await.map(|()| value),
                Err(e) => {
                    client.batch_execute("ROLLBACK").await?;
                    Err(e)
                }
            }
        };
        match tokio::time::timeout(CALL_TIMEOUT, run).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => {
                // In no known state: the next call starts afresh.
                *own = None;
                Err(db(e))
            }
            Err(_) => {
                *own = None;
                Err(StoreError::Engine(
                    "the database did not answer in 30 s".into(),
                ))
            }
        }
    }

    pub(super) async fn flush(&self) -> Result<(), StoreError> {
        self.check()?;
        let mut w = self.writer.lock().await;
        if !w.dirty {
            return Ok(());
        }
        let Some(client) = w.client.clone() else {
            let e = StoreError::Engine("database connection closed".into());
            return Err(self.lost(&mut w, e));
        };
        match client.batch_execute("COMMIT; BEGIN").await {
            Ok(()) => {
                w.dirty = false;
                w.held = false;
                w.tx += 1;
                Ok(())
            }
            Err(e) => Err(self.lost(&mut w, db(e))),
        }
    }
}

pub(super) async fn commit_regularly(shared: Weak<Shared>) {
    let mut tick = tokio::time::interval(COMMIT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        if shared.failed.get().is_some() {
            return;
        }
        if let Err(e) = shared.flush().await {
            tracing::warn!(error = %e, "store: periodic commit failed");
        }
    }
}

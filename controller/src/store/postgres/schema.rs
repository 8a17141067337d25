//! The database schema: versioned migrations embedded in the binary,
//! applied in order, each in its own transaction, under an advisory lock so
//! controllers starting together apply each one once.

use tokio_postgres::Client;

use super::connect::db;
use crate::store::StoreError;

struct Migration {
    version: i32,
    name: &'static str,
    sql: &'static str,
}

const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "initial",
        sql: include_str!("migrations/0001_initial.sql"),
    },
    Migration {
        version: 2,
        name: "changes",
        sql: include_str!("migrations/0002_changes.sql"),
    },
    Migration {
        version: 3,
        name: "shared rules",
        sql: include_str!("migrations/0003_shared_rules.sql"),
    },
    Migration {
        version: 4,
        name: "shared incidents",
        sql: include_str!("migrations/0004_shared_incidents.sql"),
    },
    Migration {
        version: 5,
        name: "shared campaigns",
        sql: include_str!("migrations/0005_shared_campaigns.sql"),
    },
    Migration {
        version: 6,
        name: "shared events",
        sql: include_str!("migrations/0006_shared_events.sql"),
    },
    Migration {
        version: 7,
        name: "notifications name their writer",
        sql: include_str!("migrations/0007_notify_writer.sql"),
    },
    Migration {
        version: 8,
        name: "lure instances by change",
        sql: include_str!("migrations/0008_lure_changes.sql"),
    },
    Migration {
        version: 9,
        name: "new lure instances in batches",
        sql: include_str!("migrations/0009_lure_batches.sql"),
    },
];

/// The advisory lock migrations run under ("ruse" and 1).
const LOCK: i64 = 0x7275_7365_0000_0001;

/// The schema version this controller writes.
pub fn newest() -> i32 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

/// What [`migrate`] found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migrated {
    /// The database's version before.
    pub from: i32,
    /// Versions applied now, in order.
    pub applied: Vec<i32>,
}

/// Brings the database to [`newest`]. Refuses a database a newer controller
/// migrated: this one would not know its tables.
pub(super) async fn migrate(client: &mut Client) -> Result<Migrated, StoreError> {
    client
        .execute("SELECT pg_advisory_lock($1)", &[&LOCK])
        .await
        .map_err(db)?;
    let result = apply(client).await;
    // The lock is the session's: closing the connection releases it too.
    let _ = client
        .execute("SELECT pg_advisory_unlock($1)", &[&LOCK])
        .await;
    result
}

async fn apply(client: &mut Client) -> Result<Migrated, StoreError> {
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS ruse_schema (
                version integer PRIMARY KEY,
                name text NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT now()
            )",
        )
        .await
        .map_err(db)?;
    let from: i32 = client
        .query_one("SELECT coalesce(max(version), 0) FROM ruse_schema", &[])
        .await
        .map_err(db)?
        .get(0);
    if from > newest() {
        return Err(StoreError::Engine(
            format!(
                "the database's schema is version {from}, newer than this controller's ({}): \
                 run a controller at least as new as the one that migrated it",
                newest()
            )
            .into(),
        ));
    }
    let mut applied = Vec::new();
    for m in MIGRATIONS.iter().filter(|m| m.version > from) {
        let tx = client.transaction().await.map_err(db)?;
        tx.batch_execute(m.sql).await.map_err(|e| {
            StoreError::Engine(format!("migration {} ({}): {}", m.version, m.name, db(e)).into())
        })?;
        tx.execute(
            "INSERT INTO ruse_schema (version, name) VALUES ($1, $2)",
            &[
                &m.version as &(dyn tokio_postgres::types::ToSql + Sync),
                &m.name,
            ],
        )
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        tracing::info!(
            version = m.version,
            name = m.name,
            "database schema migrated"
        );
        applied.push(m.version);
    }
    Ok(Migrated { from, applied })
}

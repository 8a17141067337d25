//! The event log's larger calls as SQL, for [`Store`](crate::store::Store)
//! (`records.rs` holds the rest).

use std::collections::HashSet;
use std::ops::ControlFlow;

use tokio_postgres::Row;
use tokio_postgres::types::{ToSql, Type};

use ruse_proto::types::UnixMs;

use super::{INCIDENT_LOCK, PgStore, SCAN_PAGE, to_i64};
use crate::model::StoredEvent;
use crate::store::{EventScan, StoreError, event_record};

impl PgStore {
    pub(super) fn insert_event_rows(
        &self,
        events: &[StoredEvent],
    ) -> Result<Vec<bool>, StoreError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let n = events.len();
        let (mut cursors, mut ids, mut agents, mut lures, mut kinds, mut received, mut records) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        for e in events {
            cursors.push(to_i64(e.cursor));
            ids.push(e.id.clone());
            agents.push(e.agent.as_str().to_owned());
            lures.push(e.lure_id.clone());
            kinds.push(e.kind.clone());
            received.push(e.received.0);
            records.push(event_record::encode(e));
        }
        let order = cursors.clone();
        let me = self.me.to_string();
        // Under the incident lock, taken by this statement before a row is
        // inserted (see `Store::insert_events`).
        let shared = self.shared.clone();
        let stored: Vec<Row> = self.call(async move {
            shared
                .in_tx_holding(move |c| async move {
                    let params: [(&(dyn ToSql + Sync), Type); 9] = [
                        (&cursors, Type::INT8_ARRAY),
                        (&ids, Type::TEXT_ARRAY),
                        (&agents, Type::TEXT_ARRAY),
                        (&lures, Type::TEXT_ARRAY),
                        (&kinds, Type::TEXT_ARRAY),
                        (&received, Type::INT8_ARRAY),
                        (&records, Type::BYTEA_ARRAY),
                        (&me, Type::TEXT),
                        (&INCIDENT_LOCK, Type::INT8),
                    ];
                    c.query_typed(
                "INSERT INTO events (cursor, id, agent, lure, kind, received, record, writer) \
                 SELECT u.*, $8 FROM (SELECT pg_advisory_xact_lock($9)) AS held, \
                 unnest($1::int8[], $2::text[], $3::text[], $4::text[], \
                 $5::text[], $6::int8[], $7::bytea[]) AS u \
                 ON CONFLICT DO NOTHING RETURNING cursor",
                &params,
            )
            .await
                })
                .await
        })?;
        let stored: HashSet<i64> = stored.iter().map(|r| r.get(0)).collect();
        Ok(order.iter().map(|c| stored.contains(c)).collect())
    }

    pub(super) fn scan_event_rows(
        &self,
        scan: &EventScan,
        visit: &mut dyn FnMut(StoredEvent) -> ControlFlow<()>,
    ) -> Result<(), StoreError> {
        // Committed events only: events are published once durable.
        let mut lo = to_i64(scan.after);
        let mut hi = scan.before.map_or(i64::MAX, to_i64);
        let agent = scan.agent.as_ref().map(|a| a.as_str().to_owned());
        let sql = match (scan.agent.is_some(), scan.newest_first) {
            (false, false) => {
                "SELECT cursor, record FROM events WHERE cursor > $1 AND cursor < $2 \
                 ORDER BY cursor LIMIT $3"
            }
            (false, true) => {
                "SELECT cursor, record FROM events WHERE cursor > $1 AND cursor < $2 \
                 ORDER BY cursor DESC LIMIT $3"
            }
            (true, false) => {
                "SELECT cursor, record FROM events WHERE agent = $4 AND cursor > $1 \
                 AND cursor < $2 ORDER BY cursor LIMIT $3"
            }
            (true, true) => {
                "SELECT cursor, record FROM events WHERE agent = $4 AND cursor > $1 \
                 AND cursor < $2 ORDER BY cursor DESC LIMIT $3"
            }
        };
        while lo.saturating_add(1) < hi {
            let agent = agent.clone();
            let rows = self.auto(move |c| async move {
                let mut params: Vec<(&(dyn ToSql + Sync), Type)> = vec![
                    (&lo, Type::INT8),
                    (&hi, Type::INT8),
                    (&SCAN_PAGE, Type::INT8),
                ];
                if let Some(agent) = &agent {
                    params.push((agent, Type::TEXT));
                }
                c.query_typed(sql, &params).await
            })?;
            let full = rows.len() as i64 == SCAN_PAGE;
            for r in &rows {
                let cursor: i64 = r.get(0);
                let event =
                    event_record::decode(r.get(1)).map_err(|reason| StoreError::Corrupt {
                        tree: "events",
                        key: cursor.to_string(),
                        reason,
                    })?;
                if scan.newest_first {
                    hi = cursor;
                } else {
                    lo = cursor;
                }
                if visit(event).is_break() {
                    return Ok(());
                }
            }
            if !full {
                break;
            }
        }
        Ok(())
    }

    pub(super) fn trim_event_rows(
        &self,
        received_before: UnixMs,
        keep_at_most: u64,
        max: usize,
    ) -> Result<usize, StoreError> {
        // Events received before the cutoff, oldest first — by when they
        // were received, not by cursor: replicas fill cursor blocks they
        // reserved earlier, and one controller's concurrent batches take
        // cursors in a different order than they were received, so a
        // low cursor does not make an event old (reading "everything
        // before the first recent cursor" as old deleted recent events).
        // Then, within what is left of `max`, the lowest cursors past the
        // budget (cursors between an event and the newest bound how many
        // remain, as in the embedded store).
        let before = received_before.0;
        let keep = to_i64(keep_at_most);
        let max = i64::try_from(max).unwrap_or(i64::MAX);
        let n = self.in_tx(true, move |c| async move {
            let old = c
                .execute_typed(
                    "DELETE FROM events WHERE cursor IN ( \
                         SELECT cursor FROM events WHERE received < $1 \
                         ORDER BY received LIMIT $2)",
                    &[(&before, Type::INT8), (&max, Type::INT8)],
                )
                .await?;
            let rest = max - i64::try_from(old).unwrap_or(i64::MAX);
            if rest <= 0 {
                return Ok(old);
            }
            let over = c
                .execute_typed(
                    "DELETE FROM events WHERE cursor IN ( \
                         SELECT cursor FROM events \
                         WHERE cursor < (SELECT coalesce(max(cursor), 0) FROM events) - $1 + 1 \
                         ORDER BY cursor LIMIT $2)",
                    &[(&keep, Type::INT8), (&rest, Type::INT8)],
                )
                .await?;
            Ok(old + over)
        })?;
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }
}

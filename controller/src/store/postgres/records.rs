//! The [`Store`] calls as SQL.

use std::collections::{HashMap, HashSet};
use std::ops::ControlFlow;
use std::sync::Arc;

use tokio_postgres::types::Type;

use ruse_proto::types::{AdminName, AgentId, TokenId, UnixMs};

use super::{CURSOR_BLOCK, INCIDENT_LOCK, LURE_LOCK, PgStore, decode, to_i64, to_u64};
use crate::model::{
    AdminRecord, AgentRecord, AllowRule, AuditRecord, CampaignRecord, Decoy, Incident,
    IncidentHead, LureInstance, StoredEvent, Suppression, TimelineEntry, TokenRecord,
};
use crate::store::{EventScan, Store, StoreError, event_record, lure_record};

impl Store for PgStore {
    fn agent(&self, id: &AgentId) -> Result<Option<AgentRecord>, StoreError> {
        self.get("agents", id.as_str())
    }

    fn agents(&self) -> Result<Vec<AgentRecord>, StoreError> {
        self.all("agents")
    }

    fn agents_among(&self, ids: &[AgentId]) -> Result<Vec<AgentRecord>, StoreError> {
        let keys: Vec<String> = ids.iter().map(|id| id.as_str().to_owned()).collect();
        let rows = self.in_tx(false, move |c| async move {
            c.query_typed(
                "SELECT record::text, id FROM agents WHERE id = ANY($1)",
                &[(&keys, Type::TEXT_ARRAY)],
            )
            .await
        })?;
        rows.iter()
            .map(|r| decode("agents", r.get(1), r.get(0)))
            .collect()
    }

    fn put_agent(&self, record: &AgentRecord) -> Result<(), StoreError> {
        self.put("agents", record.id.as_str(), record)
    }

    fn put_agent_state(&self, record: &AgentRecord) -> Result<(), StoreError> {
        self.put_agent_states(std::slice::from_ref(record))
    }

    fn put_agent_states(&self, records: &[AgentRecord]) -> Result<(), StoreError> {
        // One statement for them all; an upsert cannot touch a row twice,
        // so the last record of an id wins.
        let mut seen = HashSet::new();
        let (mut ids, mut jsons) = (Vec::new(), Vec::new());
        for record in records.iter().rev() {
            if seen.insert(record.id.as_str()) {
                ids.push(record.id.as_str().to_owned());
                jsons.push(
                    serde_json::to_string(record)
                        .map_err(|e| StoreError::Engine(format!("encode: {e}").into()))?,
                );
            }
        }
        if ids.is_empty() {
            return Ok(());
        }
        self.write(move |c| async move {
            c.execute_typed(
                "INSERT INTO agents (id, record) \
                 SELECT id, record::jsonb FROM unnest($1::text[], $2::text[]) AS u (id, record) \
                 ON CONFLICT (id) DO UPDATE SET record = agents.record || \
                 (excluded.record - 'token_labels' - 'admin_labels' - 'removed_labels' \
                  - 'revoked' - 'deleted' - 'session') || \
                 CASE WHEN excluded.record ? 'session' AND \
                   (NOT agents.record ? 'session' OR \
                    (excluded.record #>> '{session,since}')::bigint >= \
                    (agents.record #>> '{session,since}')::bigint) \
                 THEN jsonb_build_object('session', excluded.record -> 'session') \
                 ELSE '{}'::jsonb END",
                &[(&ids, Type::TEXT_ARRAY), (&jsons, Type::TEXT_ARRAY)],
            )
            .await
        })
    }

    fn token(&self, id: &TokenId) -> Result<Option<TokenRecord>, StoreError> {
        self.get("tokens", id.as_str())
    }

    fn use_token(&self, id: &TokenId) -> Result<Option<TokenRecord>, StoreError> {
        let key = id.as_str().to_owned();
        // A statement of its own, committed at once: in the writer's
        // transaction the token's row stayed locked until its group commit,
        // so replicas enrolling with one token waited on each other's
        // commits, and with two tokens taken in opposite orders they
        // deadlocked. The enrollment's own commit (the agent, its audit
        // record) makes the use durable with it: that commit flushes the
        // log past this one. This controller's own uncommitted writes (a
        // token just created, or deleted) are committed first, so the
        // statement sees them.
        self.flush()?;
        let row = self.auto(move |c| async move {
            c.query_typed_opt(
                "UPDATE tokens SET record = jsonb_set(record, '{uses}', \
                 to_jsonb((record->>'uses')::bigint + 1)) \
                 WHERE id = $1 AND (record->>'uses')::bigint < (record->>'max_uses')::bigint \
                 RETURNING record::text",
                &[(&key, Type::TEXT)],
            )
            .await
        })?;
        row.map(|r| decode("tokens", id.as_str(), r.get(0)))
            .transpose()
    }

    fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        self.all("tokens")
    }

    fn put_token(&self, record: &TokenRecord) -> Result<(), StoreError> {
        self.put("tokens", record.id.as_str(), record)
    }

    fn delete_token(&self, id: &TokenId) -> Result<bool, StoreError> {
        self.delete("tokens", id.as_str())
    }

    fn admin(&self, name: &AdminName) -> Result<Option<AdminRecord>, StoreError> {
        self.get("admins", name.as_str())
    }

    fn admins(&self) -> Result<Vec<AdminRecord>, StoreError> {
        self.all("admins")
    }

    fn put_admin(&self, record: &AdminRecord) -> Result<(), StoreError> {
        self.put("admins", record.name.as_str(), record)
    }

    fn append_audit(&self, mut record: AuditRecord) -> Result<AuditRecord, StoreError> {
        // The record's own `seq` is the column's; it is set when read.
        let json = serde_json::to_string(&record)
            .map_err(|e| StoreError::Engine(format!("encode: {e}").into()))?;
        let at = record.at.0;
        let seq: i64 = self.in_tx(true, move |c| async move {
            let row = c
                .query_typed_one(
                    "INSERT INTO audit (at, record) VALUES ($1, $2::jsonb) RETURNING seq",
                    &[(&at, Type::INT8), (&json, Type::TEXT)],
                )
                .await?;
            Ok(row.get(0))
        })?;
        record.seq = to_u64(seq);
        Ok(record)
    }

    fn audit(
        &self,
        since: UnixMs,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        let before = before.map_or(i64::MAX, to_i64);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let since = since.0;
        let rows = self.in_tx(false, move |c| async move {
            c.query_typed(
                "SELECT seq, record::text FROM audit WHERE seq < $1 AND at >= $2 \
                 ORDER BY seq DESC LIMIT $3",
                &[
                    (&before, Type::INT8),
                    (&since, Type::INT8),
                    (&limit, Type::INT8),
                ],
            )
            .await
        })?;
        let mut out = rows
            .iter()
            .map(|r| {
                let seq: i64 = r.get(0);
                let mut record: AuditRecord = decode("audit", &seq.to_string(), r.get(1))?;
                record.seq = to_u64(seq);
                Ok(record)
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        out.reverse();
        Ok(out)
    }

    fn campaigns(&self) -> Result<Vec<CampaignRecord>, StoreError> {
        self.all("campaigns")
    }

    fn put_campaign(&self, record: &CampaignRecord) -> Result<(), StoreError> {
        self.put("campaigns", &record.target.spec.name, record)
    }

    fn delete_campaign(&self, name: &str) -> Result<(), StoreError> {
        self.delete("campaigns", name).map(drop)
    }

    fn decoys(&self) -> Result<Vec<Decoy>, StoreError> {
        self.all("decoys")
    }

    fn put_decoy(&self, decoy: &Decoy) -> Result<(), StoreError> {
        self.put("decoys", &decoy.name, decoy)
    }

    fn delete_decoy(&self, name: &str) -> Result<(), StoreError> {
        self.delete("decoys", name).map(drop)
    }

    fn allow_rules(&self) -> Result<Vec<AllowRule>, StoreError> {
        self.all("allow_rules")
    }

    fn put_allow_rule(&self, rule: &AllowRule) -> Result<(), StoreError> {
        self.put("allow_rules", &rule.name, rule)
    }

    fn delete_allow_rule(&self, name: &str) -> Result<(), StoreError> {
        self.delete("allow_rules", name).map(drop)
    }

    fn suppressions(&self) -> Result<Vec<Suppression>, StoreError> {
        self.all("suppressions")
    }

    fn put_suppression(&self, rule: &Suppression) -> Result<(), StoreError> {
        self.put("suppressions", &rule.name, rule)
    }

    fn delete_suppression(&self, name: &str) -> Result<(), StoreError> {
        self.delete("suppressions", name).map(drop)
    }

    fn incidents(&self) -> Result<Vec<Incident>, StoreError> {
        let mut all: Vec<Incident> = self.all("incidents")?;
        self.attach_timelines(&mut all, None)?;
        Ok(all)
    }

    fn put_incident(&self, incident: &Incident) -> Result<(), StoreError> {
        let json = serde_json::to_string(&IncidentHead::from(incident))
            .map_err(|e| StoreError::Engine(format!("encode: {e}").into()))?;
        let (id, me) = (incident.id.clone(), self.me.to_string());
        // The lock first (see migration 4): incident writes commit one
        // controller at a time.
        self.write(move |c| async move {
            c.execute_typed(
                "INSERT INTO incidents (id, record, writer, changed) \
                 SELECT $1, $2::jsonb, $3, nextval('incident_changes') \
                 FROM (SELECT pg_advisory_xact_lock($4)) AS held \
                 ON CONFLICT (id) DO UPDATE SET record = excluded.record, \
                 writer = excluded.writer, changed = excluded.changed",
                &[
                    (&id, Type::TEXT),
                    (&json, Type::TEXT),
                    (&me, Type::TEXT),
                    (&INCIDENT_LOCK, Type::INT8),
                ],
            )
            .await
        })
    }

    fn incidents_mark(&self) -> Result<u64, StoreError> {
        let n: i64 = self.auto(move |c| async move {
            let row = c
                .query_typed_one("SELECT coalesce(max(changed), 0) FROM incidents", &[])
                .await?;
            Ok(row.get(0))
        })?;
        Ok(to_u64(n))
    }

    fn incidents_changed(&self, mark: &mut u64, hold: bool) -> Result<Vec<Incident>, StoreError> {
        let mut holding = None;
        if hold {
            // Held by the open transaction until the next flush (taken
            // once per transaction).
            let shared = self.shared.clone();
            let (tx, caught_up) = self.call(async move {
                shared
                    .hold_once(move |c| async move {
                        c.execute_typed(
                            "SELECT pg_advisory_xact_lock($1)",
                            &[(&INCIDENT_LOCK, Type::INT8)],
                        )
                        .await
                    })
                    .await
            })?;
            if caught_up {
                // Read since the lock was taken: nobody can have written.
                return Ok(Vec::new());
            }
            holding = Some(tx);
        }
        // After the lock is granted: this statement's snapshot has every
        // incident the others committed.
        let (since, me) = (to_i64(*mark), self.me.to_string());
        let rows = self.auto(move |c| async move {
            c.query_typed(
                "SELECT id, changed, CASE WHEN writer = $2 THEN NULL ELSE record::text END \
                 FROM incidents WHERE changed > $1 ORDER BY changed",
                &[(&since, Type::INT8), (&me, Type::TEXT)],
            )
            .await
        })?;
        let mut theirs = Vec::new();
        for r in &rows {
            *mark = (*mark).max(to_u64(r.get(1)));
            if let Some(json) = r.get::<_, Option<&str>>(2) {
                theirs.push(decode::<Incident>("incidents", r.get(0), json)?);
            }
        }
        if !theirs.is_empty() {
            let ids = theirs.iter().map(|i| i.id.clone()).collect();
            self.attach_timelines(&mut theirs, Some(ids))?;
        }
        if let Some(tx) = holding {
            let shared = self.shared.clone();
            self.call(async move {
                shared.caught_up(tx).await;
                Ok(())
            })?;
        }
        Ok(theirs)
    }

    fn put_timeline(&self, incident: &str, entries: &[&TimelineEntry]) -> Result<(), StoreError> {
        let Some(first) = entries.iter().min_by_key(|e| (e.at, e.event_id.as_str())) else {
            return Ok(());
        };
        let json = serde_json::to_string(entries)
            .map_err(|e| StoreError::Engine(format!("encode: {e}").into()))?;
        let (incident, at, event_id) = (incident.to_owned(), first.at.0, first.event_id.clone());
        self.write(move |c| async move {
            c.execute_typed(
                "INSERT INTO incident_timeline (incident, at, event_id, entries) \
                 VALUES ($1, $2, $3, $4::jsonb) \
                 ON CONFLICT (incident, at, event_id) DO UPDATE SET entries = excluded.entries",
                &[
                    (&incident, Type::TEXT),
                    (&at, Type::INT8),
                    (&event_id, Type::TEXT),
                    (&json, Type::TEXT),
                ],
            )
            .await
        })
    }

    fn counters(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let rows = self.in_tx(false, move |c| async move {
            c.query_typed("SELECT name, value FROM counters ORDER BY name", &[])
                .await
        })?;
        Ok(rows
            .iter()
            .map(|r| (r.get::<_, String>(0), to_u64(r.get(1))))
            .collect())
    }

    fn put_counter(&self, name: &str, value: u64) -> Result<(), StoreError> {
        let (name, value) = (name.to_owned(), to_i64(value));
        self.write(move |c| async move {
            c.execute_typed(
                "INSERT INTO counters (name, value) VALUES ($1, $2) \
                 ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                &[(&name, Type::TEXT), (&value, Type::INT8)],
            )
            .await
        })
    }

    fn queue_push(&self, queue: &str, item: &[u8]) -> Result<u64, StoreError> {
        let (queue, item) = (queue.to_owned(), item.to_vec());
        let seq: i64 = self.in_tx(true, move |c| async move {
            let row = c
                .query_typed_one(
                    "INSERT INTO output_queue (queue, item) VALUES ($1, $2) RETURNING seq",
                    &[(&queue, Type::TEXT), (&item, Type::BYTEA)],
                )
                .await?;
            Ok(row.get(0))
        })?;
        Ok(to_u64(seq))
    }

    fn queue_peek(&self, queue: &str, limit: usize) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let queue = queue.to_owned();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self.in_tx(false, move |c| async move {
            c.query_typed(
                "SELECT seq, item FROM output_queue WHERE queue = $1 ORDER BY seq LIMIT $2",
                &[(&queue, Type::TEXT), (&limit, Type::INT8)],
            )
            .await
        })?;
        Ok(rows
            .iter()
            .map(|r| (to_u64(r.get(0)), r.get::<_, Vec<u8>>(1)))
            .collect())
    }

    fn queue_remove(&self, queue: &str, seq: u64) -> Result<(), StoreError> {
        let (queue, seq) = (queue.to_owned(), to_i64(seq));
        self.write(move |c| async move {
            c.execute_typed(
                "DELETE FROM output_queue WHERE queue = $1 AND seq = $2",
                &[(&queue, Type::TEXT), (&seq, Type::INT8)],
            )
            .await
        })
    }

    fn queue_len(&self, queue: &str) -> Result<usize, StoreError> {
        let queue = queue.to_owned();
        let n: i64 = self.in_tx(false, move |c| async move {
            let row = c
                .query_typed_one(
                    "SELECT count(*) FROM output_queue WHERE queue = $1",
                    &[(&queue, Type::TEXT)],
                )
                .await?;
            Ok(row.get(0))
        })?;
        Ok(usize::try_from(n).unwrap_or(0))
    }

    fn lures(&self) -> Result<Vec<LureInstance>, StoreError> {
        Ok(self.lures_since(0)?.0)
    }

    fn lures_since(&self, after: u64) -> Result<(Vec<LureInstance>, u64), StoreError> {
        let after = to_i64(after);
        // One statement, one snapshot: records and batches (migration 9)
        // in the order they were written, so an instance's later record
        // supersedes its copy in a batch. The mark is the newest change
        // among the rows returned (records from before migration 8 have
        // none and come first).
        let rows = self.in_tx(false, move |c| async move {
            c.query_typed(
                "SELECT id, record, changed, false FROM lures WHERE $1 = 0 OR changed > $1 \
                 UNION ALL \
                 SELECT batch, records, changed, true FROM lure_batches WHERE changed > $1 \
                 ORDER BY 3 NULLS FIRST",
                &[(&after, Type::INT8)],
            )
            .await
        })?;
        let mut mark = after;
        let mut out: Vec<LureInstance> = Vec::new();
        let mut at: HashMap<Arc<str>, usize> = HashMap::new();
        let mut keep = |lure: LureInstance| match at.get(&lure.id) {
            Some(&i) => out[i] = lure,
            None => {
                at.insert(lure.id.clone(), out.len());
                out.push(lure);
            }
        };
        for r in &rows {
            mark = mark.max(r.get::<_, Option<i64>>(2).unwrap_or(0));
            let corrupt = |reason| StoreError::Corrupt {
                tree: if r.get(3) { "lure_batches" } else { "lures" },
                key: r.get(0),
                reason,
            };
            if r.get(3) {
                for lure in lure_record::decode_batch(r.get(1)).map_err(corrupt)? {
                    keep(lure);
                }
            } else {
                keep(lure_record::decode(r.get(1)).map_err(corrupt)?);
            }
        }
        Ok((out, to_u64(mark)))
    }

    fn lure(&self, id: &str) -> Result<Option<LureInstance>, StoreError> {
        let key = id.to_owned();
        let row = self.in_tx(false, move |c| async move {
            c.query_typed_opt(
                "SELECT record FROM lures WHERE id = $1",
                &[(&key, Type::TEXT)],
            )
            .await
        })?;
        row.map(|r| {
            lure_record::decode(r.get(0)).map_err(|reason| StoreError::Corrupt {
                tree: "lures",
                key: id.to_owned(),
                reason,
            })
        })
        .transpose()
    }

    fn put_lure(&self, lure: &LureInstance) -> Result<(), StoreError> {
        self.put_lures(std::slice::from_ref(lure))
    }

    fn put_lures(&self, lures: &[LureInstance]) -> Result<(), StoreError> {
        // The last write of an id wins, as one upsert cannot touch a row
        // twice.
        let mut seen = HashSet::new();
        let (mut ids, mut records) = (Vec::new(), Vec::new());
        for lure in lures.iter().rev() {
            if seen.insert(lure.id.clone()) {
                ids.push(lure.id.to_string());
                records.push(lure_record::encode(lure));
            }
        }
        // The lock first (see migration 8): writes of instances commit in
        // the order of their `changed`.
        self.own_tx(move |c| async move {
            c.execute_typed(
                "INSERT INTO lures (id, record, changed) \
                 SELECT u.id, u.record, nextval('lure_changes') \
                 FROM (SELECT pg_advisory_xact_lock($3)) AS held, \
                 unnest($1::text[], $2::bytea[]) AS u (id, record) \
                 ON CONFLICT (id) DO UPDATE SET record = excluded.record, changed = excluded.changed",
                &[
                    (&ids, Type::TEXT_ARRAY),
                    (&records, Type::BYTEA_ARRAY),
                    (&LURE_LOCK, Type::INT8),
                ],
            )
            .await
        })
        .map(drop)
    }

    fn put_new_lures(&self, lures: &[Arc<LureInstance>]) -> Result<(), StoreError> {
        if lures.is_empty() {
            return Ok(());
        }
        // One row (migration 9), in a transaction of its own (see
        // `own_tx`), durable when this returns.
        let batch = ruse_proto::types::new_ulid();
        let records = lure_record::encode_batch(lures);
        let ids: Vec<String> = lures.iter().map(|l| l.id.to_string()).collect();
        self.own_tx(move |c| async move {
            c.execute_typed(
                "INSERT INTO lure_batches (batch, records, changed, ids) \
                 SELECT $1, $2, nextval('lure_changes'), $4 \
                 FROM (SELECT pg_advisory_xact_lock($3)) AS held",
                &[
                    (&batch, Type::TEXT),
                    (&records, Type::BYTEA),
                    (&LURE_LOCK, Type::INT8),
                    (&ids, Type::TEXT_ARRAY),
                ],
            )
            .await
        })
        .map(drop)
    }

    fn drop_superseded_lure_batches(&self) -> Result<usize, StoreError> {
        // A batch goes once each of its instances has a record of its own
        // (written later: see `lures_since`), found by the database alone.
        // Its deletion need not be durable: a start repeats it.
        let deleted = self.auto(|c| async move {
            c.execute_typed(
                "DELETE FROM lure_batches b WHERE NOT EXISTS (\
                 SELECT 1 FROM unnest(b.ids) AS i (id) \
                 WHERE NOT EXISTS (SELECT 1 FROM lures l WHERE l.id = i.id))",
                &[],
            )
            .await
        })?;
        Ok(usize::try_from(deleted).unwrap_or(0))
    }

    fn reserve_event_cursors(&self, n: u64) -> Result<u64, StoreError> {
        let mut block = self.cursors.lock().unwrap_or_else(|e| e.into_inner());
        if block.1 - block.0 < n {
            let take = to_i64(n.max(CURSOR_BLOCK));
            let last: i64 = self.auto(move |c| async move {
                let row = c
                    .query_typed_one(
                        "UPDATE cursor_blocks SET last = last + $1 WHERE name = 'events' RETURNING last",
                        &[(&take, Type::INT8)],
                    )
                    .await?;
                Ok(row.get(0))
            })?;
            let end = to_u64(last) + 1;
            *block = (end - to_u64(take), end);
        }
        let first = block.0;
        block.0 += n;
        Ok(first)
    }

    fn insert_events(&self, events: &[StoredEvent]) -> Result<Vec<bool>, StoreError> {
        self.insert_event_rows(events)
    }

    fn scan_events(
        &self,
        scan: &EventScan,
        visit: &mut dyn FnMut(StoredEvent) -> ControlFlow<()>,
    ) -> Result<(), StoreError> {
        self.scan_event_rows(scan, visit)
    }

    fn events_mark(&self) -> Result<u64, StoreError> {
        let n: Option<i64> = self.auto(move |c| async move {
            let row = c
                .query_typed_one("SELECT max(seq) FROM events", &[])
                .await?;
            Ok(row.get(0))
        })?;
        Ok(n.map_or(0, to_u64))
    }

    fn events_changed(&self, mark: &mut u64, limit: usize) -> Result<Vec<StoredEvent>, StoreError> {
        let (since, me) = (to_i64(*mark), self.me.to_string());
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self.auto(move |c| async move {
            c.query_typed(
                "SELECT seq, cursor, record FROM events \
                 WHERE seq > $1 AND writer <> $2 ORDER BY seq LIMIT $3",
                &[
                    (&since, Type::INT8),
                    (&me, Type::TEXT),
                    (&limit, Type::INT8),
                ],
            )
            .await
        })?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            *mark = (*mark).max(to_u64(r.get(0)));
            let cursor: i64 = r.get(1);
            out.push(
                event_record::decode(r.get(2)).map_err(|reason| StoreError::Corrupt {
                    tree: "events",
                    key: cursor.to_string(),
                    reason,
                })?,
            );
        }
        Ok(out)
    }

    fn event_cursors(&self) -> Result<Option<(u64, u64)>, StoreError> {
        let row = self.auto(move |c| async move {
            c.query_typed_one("SELECT min(cursor), max(cursor) FROM events", &[])
                .await
        })?;
        let (first, last): (Option<i64>, Option<i64>) = (row.get(0), row.get(1));
        Ok(first.zip(last).map(|(a, b)| (to_u64(a), to_u64(b))))
    }

    fn trim_events(
        &self,
        received_before: UnixMs,
        keep_at_most: u64,
        max: usize,
    ) -> Result<usize, StoreError> {
        self.trim_event_rows(received_before, keep_at_most, max)
    }

    fn next_revision(&self) -> Result<u64, StoreError> {
        let n: i64 = self.auto(move |c| async move {
            let row = c
                .query_typed_one("SELECT nextval('revisions')", &[])
                .await?;
            Ok(row.get(0))
        })?;
        Ok(to_u64(n))
    }

    fn changes(&self) -> Option<tokio::sync::broadcast::Receiver<crate::store::Change>> {
        Some(self.changes.subscribe())
    }

    fn broken(&self) -> Option<Arc<str>> {
        self.shared.failed.get().cloned()
    }

    fn lease(&self, name: &str, ttl: std::time::Duration) -> Result<bool, StoreError> {
        let (name, me) = (name.to_owned(), self.me.to_string());
        let ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
        // The database's clock decides, not the controllers'.
        let row = self.auto(move |c| async move {
            c.query_typed_opt(
                "INSERT INTO leases (name, holder, expires) \
                 VALUES ($1, $2, now() + $3 * interval '1 millisecond') \
                 ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires = excluded.expires \
                 WHERE leases.holder = excluded.holder OR leases.expires < now() \
                 RETURNING holder",
                &[(&name, Type::TEXT), (&me, Type::TEXT), (&ms, Type::INT8)],
            )
            .await
        })?;
        Ok(row.is_some())
    }

    fn live_leases(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let prefix = prefix.to_owned();
        let rows = self.auto(move |c| async move {
            c.query_typed(
                "SELECT substr(name, length($1) + 1) FROM leases \
                 WHERE starts_with(name, $1) AND expires > now() ORDER BY name",
                &[(&prefix, Type::TEXT)],
            )
            .await
        })?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    fn release_lease(&self, name: &str) -> Result<(), StoreError> {
        let (name, me) = (name.to_owned(), self.me.to_string());
        self.auto(move |c| async move {
            c.execute_typed(
                "DELETE FROM leases WHERE name = $1 AND holder = $2",
                &[(&name, Type::TEXT), (&me, Type::TEXT)],
            )
            .await
        })
        .map(drop)
    }

    fn flush(&self) -> Result<(), StoreError> {
        let shared = self.shared.clone();
        self.call(async move { shared.flush().await })
    }
}

impl PgStore {
    /// Reads the timelines of `incidents` (of those with an id in `only`,
    /// when given, reading only theirs).
    fn attach_timelines(
        &self,
        incidents: &mut [Incident],
        only: Option<Vec<String>>,
    ) -> Result<(), StoreError> {
        let rows = self.in_tx(false, move |c| async move {
            match only {
                None => {
                    c.query_typed(
                        "SELECT incident, entries::text FROM incident_timeline \
                         ORDER BY incident, at, event_id",
                        &[],
                    )
                    .await
                }
                Some(ids) => {
                    c.query_typed(
                        "SELECT incident, entries::text FROM incident_timeline \
                         WHERE incident = ANY($1) ORDER BY incident, at, event_id",
                        &[(&ids, Type::TEXT_ARRAY)],
                    )
                    .await
                }
            }
        })?;
        let mut timelines: HashMap<String, Vec<Arc<TimelineEntry>>> = HashMap::new();
        for r in &rows {
            let incident: String = r.get(0);
            let entries: Vec<Arc<TimelineEntry>> =
                decode("incident_timeline", &incident, r.get(1))?;
            timelines.entry(incident).or_default().extend(entries);
        }
        for i in incidents {
            let mut entries = timelines.remove(&i.id).unwrap_or_default();
            // Batches may overlap in time.
            entries.sort_by(|a, b| (a.at, &a.event_id).cmp(&(b.at, &b.event_id)));
            i.timeline = Arc::new(entries);
        }
        Ok(())
    }
}

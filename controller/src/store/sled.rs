//! The embedded store, on sled. The only module that names sled.
//!
//! Records are JSON values in one tree per kind, except events and lure
//! instances, which have compact forms of their own (`event_record`,
//! `lure_record`); audit keys are big-endian
//! sequence numbers so iteration is in order. sled's background flusher is
//! off: durability comes from explicit flushes, through the committer
//! (group commit) or, for registry chunks, from the deployer's writer
//! thread.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::ops::ControlFlow;
use std::path::Path;
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;

use ruse_proto::types::{AdminName, AgentId, TokenId, UnixMs};

use super::EventScan;
use super::lure_record;
use super::sled_events::SledEvents;
use super::space::DiskSpace;
use super::{AdminRecord, AgentRecord, AuditRecord, Store, StoreError, TokenRecord};
use crate::model::StoredEvent;
use crate::model::{AllowRule, Decoy, Suppression};
use crate::model::{CampaignRecord, LureInstance};
use crate::model::{Incident, IncidentHead, TimelineEntry};

const AGENTS: &str = "agents";
const TOKENS: &str = "tokens";
const ADMINS: &str = "admins";
const AUDIT: &str = "audit";
const CAMPAIGNS: &str = "campaigns";
const DECOYS: &str = "decoys";
const LURES: &str = "lures";
/// New lure instances, many per record (see [`Store::put_new_lures`]).
const LURE_BATCHES: &str = "lure_batches";
const ALLOW_RULES: &str = "allow_rules";
const SUPPRESSIONS: &str = "suppressions";
const INCIDENTS: &str = "incidents";
/// Timeline entries, a batch per record: incident id, NUL, the batch's
/// first time and event id.
const TIMELINE: &str = "incident_timeline";
const COUNTERS: &str = "counters";

/// The sled-backed [`Store`].
#[derive(Debug)]
pub struct SledStore {
    db: sled::Db,
    agents: sled::Tree,
    tokens: sled::Tree,
    admins: sled::Tree,
    audit: sled::Tree,
    campaigns: sled::Tree,
    decoys: sled::Tree,
    lures: sled::Tree,
    lure_batches: sled::Tree,
    events: SledEvents,
    allow_rules: sled::Tree,
    suppressions: sled::Tree,
    incidents: sled::Tree,
    timeline: sled::Tree,
    counters: sled::Tree,
    /// Tests: how many of the next lure writes (`put_lures`,
    /// `put_new_lures`) fail.
    #[cfg(test)]
    pub(crate) fail_lure_writes: std::sync::atomic::AtomicUsize,
    /// Refuses writes before the disk fills (see [`DiskSpace`]).
    space: Option<DiskSpace>,
}

pub(super) fn engine(e: sled::Error) -> StoreError {
    match &e {
        sled::Error::Io(io)
            if io.kind() == std::io::ErrorKind::StorageFull
                || io.raw_os_error() == Some(nix::libc::ENOSPC) =>
        {
            StoreError::Full(io.to_string().into())
        }
        _ => StoreError::Engine(e.to_string().into()),
    }
}

impl SledStore {
    /// Opens (creating if needed) the store in `dir`, with a page cache of
    /// `cache_bytes`.
    pub fn open(dir: &Path, cache_bytes: u64) -> Result<Self, StoreError> {
        // The store holds audit records, events and what intruders typed:
        // its directory is private whatever the umask.
        ruse_pki::create_private_dir(dir).map_err(|e| StoreError::Engine(e.to_string().into()))?;
        let config = sled::Config::new()
            .path(dir)
            .cache_capacity(cache_bytes)
            .mode(sled::Mode::HighThroughput)
            .flush_every_ms(None);
        // A store closed a moment ago may still hold its file lock while
        // sled's background thread winds down: wait briefly for it.
        let mut attempts = 0;
        let db = loop {
            match config.open() {
                Ok(db) => break db,
                // sled reports the lock as its own error wrapping the
                // `WouldBlock` of flock, so match both forms.
                Err(sled::Error::Io(e))
                    if (e.kind() == std::io::ErrorKind::WouldBlock
                        || e.to_string().contains("could not acquire lock"))
                        && attempts < 60 =>
                {
                    attempts += 1;
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                Err(e) => return Err(engine(e)),
            }
        };
        Ok(SledStore {
            agents: db.open_tree(AGENTS).map_err(engine)?,
            tokens: db.open_tree(TOKENS).map_err(engine)?,
            admins: db.open_tree(ADMINS).map_err(engine)?,
            audit: db.open_tree(AUDIT).map_err(engine)?,
            campaigns: db.open_tree(CAMPAIGNS).map_err(engine)?,
            decoys: db.open_tree(DECOYS).map_err(engine)?,
            lures: db.open_tree(LURES).map_err(engine)?,
            lure_batches: db.open_tree(LURE_BATCHES).map_err(engine)?,
            events: SledEvents::open(&db)?,
            allow_rules: db.open_tree(ALLOW_RULES).map_err(engine)?,
            suppressions: db.open_tree(SUPPRESSIONS).map_err(engine)?,
            incidents: db.open_tree(INCIDENTS).map_err(engine)?,
            timeline: db.open_tree(TIMELINE).map_err(engine)?,
            counters: db.open_tree(COUNTERS).map_err(engine)?,
            #[cfg(test)]
            fail_lure_writes: std::sync::atomic::AtomicUsize::new(0),
            space: None,
            db,
        })
    }

    /// Keeps `reserve` bytes free on `data_dir`'s disk: writes are refused
    /// before sled could run out of space (see [`DiskSpace`]).
    pub fn with_disk_reserve(mut self, data_dir: &Path, reserve: u64) -> Self {
        self.space = Some(DiskSpace::new(data_dir, reserve));
        self
    }

    fn writable(&self) -> Result<(), StoreError> {
        self.space.as_ref().map_or(Ok(()), DiskSpace::check)
    }

    fn get<T: DeserializeOwned>(
        tree: &sled::Tree,
        name: &'static str,
        key: &str,
    ) -> Result<Option<T>, StoreError> {
        tree.get(key.as_bytes())
            .map_err(engine)?
            .map(|v| decode(name, key.as_bytes(), &v))
            .transpose()
    }

    fn all<T: DeserializeOwned>(
        tree: &sled::Tree,
        name: &'static str,
    ) -> Result<Vec<T>, StoreError> {
        tree.iter()
            .map(|kv| {
                let (k, v) = kv.map_err(engine)?;
                decode(name, &k, &v)
            })
            .collect()
    }

    fn put<T: Serialize>(tree: &sled::Tree, key: &str, value: &T) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(value)
            .map_err(|e| StoreError::Engine(format!("encode: {e}").into()))?;
        tree.insert(key.as_bytes(), bytes).map_err(engine)?;
        Ok(())
    }
}

fn decode<T: DeserializeOwned>(
    tree: &'static str,
    key: &[u8],
    value: &[u8],
) -> Result<T, StoreError> {
    serde_json::from_slice(value).map_err(|e| corrupt(tree, key, e.to_string()))
}

/// A record under `key` in `tree` that cannot be read, and why.
pub(super) fn corrupt(tree: &'static str, key: &[u8], reason: String) -> StoreError {
    StoreError::Corrupt {
        tree,
        key: String::from_utf8_lossy(key).into_owned(),
        reason,
    }
}

impl SledStore {
    /// Tests: the records of tree `lure_batches`, in key order.
    #[cfg(test)]
    pub(crate) fn lure_batches(&self) -> Vec<Vec<LureInstance>> {
        self.lure_batches
            .iter()
            .filter_map(|kv| kv.ok())
            .filter_map(|(_, v)| lure_record::decode_batch(&v).ok())
            .collect()
    }

    /// Tests only: fails this lure write if a failure was injected.
    fn injected_lure_write_failure(&self) -> Result<(), StoreError> {
        #[cfg(test)]
        {
            use std::sync::atomic::Ordering::{AcqRel, Acquire};
            let fail = |n: usize| n.checked_sub(1);
            if self
                .fail_lure_writes
                .fetch_update(AcqRel, Acquire, fail)
                .is_ok()
            {
                return Err(StoreError::Engine("injected write failure".into()));
            }
        }
        Ok(())
    }

    /// The tree of an output's delivery queue.
    fn queue(&self, name: &str) -> Result<sled::Tree, StoreError> {
        self.db.open_tree(format!("queue:{name}")).map_err(engine)
    }

    /// The names of every output queue ever written, empty ones too.
    pub fn queue_names(&self) -> Vec<String> {
        self.db
            .tree_names()
            .iter()
            .filter_map(|name| {
                std::str::from_utf8(name)
                    .ok()?
                    .strip_prefix("queue:")
                    .map(str::to_owned)
            })
            .collect()
    }
}

impl Store for SledStore {
    fn agent(&self, id: &AgentId) -> Result<Option<AgentRecord>, StoreError> {
        Self::get(&self.agents, AGENTS, id.as_str())
    }

    fn agents(&self) -> Result<Vec<AgentRecord>, StoreError> {
        Self::all(&self.agents, AGENTS)
    }

    fn put_agent(&self, record: &AgentRecord) -> Result<(), StoreError> {
        self.writable()?;
        Self::put(&self.agents, record.id.as_str(), record)
    }

    fn token(&self, id: &TokenId) -> Result<Option<TokenRecord>, StoreError> {
        Self::get(&self.tokens, TOKENS, id.as_str())
    }

    fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        Self::all(&self.tokens, TOKENS)
    }

    fn put_token(&self, record: &TokenRecord) -> Result<(), StoreError> {
        self.writable()?;
        Self::put(&self.tokens, record.id.as_str(), record)
    }

    fn delete_token(&self, id: &TokenId) -> Result<bool, StoreError> {
        self.writable()?;
        Ok(self
            .tokens
            .remove(id.as_str().as_bytes())
            .map_err(engine)?
            .is_some())
    }

    fn admin(&self, name: &AdminName) -> Result<Option<AdminRecord>, StoreError> {
        Self::get(&self.admins, ADMINS, name.as_str())
    }

    fn admins(&self) -> Result<Vec<AdminRecord>, StoreError> {
        Self::all(&self.admins, ADMINS)
    }

    fn put_admin(&self, record: &AdminRecord) -> Result<(), StoreError> {
        self.writable()?;
        Self::put(&self.admins, record.name.as_str(), record)
    }

    fn append_audit(&self, mut record: AuditRecord) -> Result<AuditRecord, StoreError> {
        self.writable()?;
        record.seq = self.db.generate_id().map_err(engine)?;
        let bytes = serde_json::to_vec(&record)
            .map_err(|e| StoreError::Engine(format!("encode: {e}").into()))?;
        self.audit
            .insert(record.seq.to_be_bytes(), bytes)
            .map_err(engine)?;
        Ok(record)
    }

    fn audit(
        &self,
        since: UnixMs,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        let mut out = Vec::new();
        let end = before.unwrap_or(u64::MAX).to_be_bytes();
        for kv in self.audit.range(..end).rev() {
            let (k, v) = kv.map_err(engine)?;
            let record: AuditRecord = decode(AUDIT, &k, &v)?;
            if record.at < since || out.len() >= limit {
                break;
            }
            out.push(record);
        }
        out.reverse();
        Ok(out)
    }

    fn campaigns(&self) -> Result<Vec<CampaignRecord>, StoreError> {
        Self::all(&self.campaigns, CAMPAIGNS)
    }

    fn put_campaign(&self, record: &CampaignRecord) -> Result<(), StoreError> {
        self.writable()?;
        Self::put(&self.campaigns, &record.target.spec.name, record)
    }

    fn delete_campaign(&self, name: &str) -> Result<(), StoreError> {
        self.writable()?;
        self.campaigns.remove(name.as_bytes()).map_err(engine)?;
        Ok(())
    }

    fn decoys(&self) -> Result<Vec<Decoy>, StoreError> {
        Self::all(&self.decoys, DECOYS)
    }

    fn put_decoy(&self, decoy: &Decoy) -> Result<(), StoreError> {
        self.writable()?;
        Self::put(&self.decoys, &decoy.name, decoy)
    }

    fn delete_decoy(&self, name: &str) -> Result<(), StoreError> {
        self.writable()?;
        self.decoys.remove(name.as_bytes()).map_err(engine)?;
        Ok(())
    }

    fn allow_rules(&self) -> Result<Vec<AllowRule>, StoreError> {
        Self::all(&self.allow_rules, ALLOW_RULES)
    }

    fn put_allow_rule(&self, rule: &AllowRule) -> Result<(), StoreError> {
        self.writable()?;
        Self::put(&self.allow_rules, &rule.name, rule)
    }

    fn delete_allow_rule(&self, name: &str) -> Result<(), StoreError> {
        self.writable()?;
        self.allow_rules.remove(name.as_bytes()).map_err(engine)?;
        Ok(())
    }

    fn suppressions(&self) -> Result<Vec<Suppression>, StoreError> {
        Self::all(&self.suppressions, SUPPRESSIONS)
    }

    fn put_suppression(&self, rule: &Suppression) -> Result<(), StoreError> {
        self.writable()?;
        Self::put(&self.suppressions, &rule.name, rule)
    }

    fn delete_suppression(&self, name: &str) -> Result<(), StoreError> {
        self.writable()?;
        self.suppressions.remove(name.as_bytes()).map_err(engine)?;
        Ok(())
    }

    fn incidents(&self) -> Result<Vec<Incident>, StoreError> {
        let mut all: Vec<Incident> = Self::all(&self.incidents, INCIDENTS)?;
        for i in &mut all {
            let mut prefix = i.id.as_bytes().to_vec();
            prefix.push(0);
            let mut entries = Vec::new();
            for kv in self.timeline.scan_prefix(&prefix) {
                let (k, v) = kv.map_err(engine)?;
                entries.extend(decode::<Vec<Arc<TimelineEntry>>>(TIMELINE, &k, &v)?);
            }
            // Batches may overlap in time.
            entries.sort_by(|a, b| (a.at, &a.event_id).cmp(&(b.at, &b.event_id)));
            if i.timeline.is_empty() {
                i.timeline = Arc::new(entries);
            } else {
                // Written whole by an earlier version: split it now.
                let old: Vec<&TimelineEntry> = i.timeline.iter().map(|t| &**t).collect();
                self.put_timeline(&i.id, &old)?;
                self.put_incident(i)?;
            }
        }
        Ok(all)
    }

    fn put_incident(&self, incident: &Incident) -> Result<(), StoreError> {
        self.writable()?;
        Self::put(&self.incidents, &incident.id, &IncidentHead::from(incident))
    }

    fn put_timeline(&self, incident: &str, entries: &[&TimelineEntry]) -> Result<(), StoreError> {
        self.writable()?;
        // One record per call (a batch's entries): small inserts cost sled
        // more than the bytes do.
        let Some(first) = entries.iter().min_by_key(|e| (e.at, e.event_id.as_str())) else {
            return Ok(());
        };
        let mut key = Vec::with_capacity(incident.len() + 9 + first.event_id.len());
        key.extend_from_slice(incident.as_bytes());
        key.push(0);
        // Sign bit flipped: byte order is time order, negatives first.
        key.extend_from_slice(&((first.at.0 as u64) ^ (1 << 63)).to_be_bytes());
        key.extend_from_slice(first.event_id.as_bytes());
        let bytes = serde_json::to_vec(entries)
            .map_err(|e| StoreError::Engine(format!("encode: {e}").into()))?;
        self.timeline.insert(key, bytes).map_err(engine)?;
        Ok(())
    }

    fn counters(&self) -> Result<Vec<(String, u64)>, StoreError> {
        self.counters
            .iter()
            .map(|kv| {
                let (k, v) = kv.map_err(engine)?;
                let n = <[u8; 8]>::try_from(v.as_ref())
                    .map_err(|_| corrupt(COUNTERS, &k, "not a u64".into()))?;
                Ok((
                    String::from_utf8_lossy(&k).into_owned(),
                    u64::from_be_bytes(n),
                ))
            })
            .collect()
    }

    fn put_counter(&self, name: &str, value: u64) -> Result<(), StoreError> {
        self.writable()?;
        self.counters
            .insert(name.as_bytes(), &value.to_be_bytes())
            .map_err(engine)?;
        Ok(())
    }

    fn queue_push(&self, queue: &str, item: &[u8]) -> Result<u64, StoreError> {
        self.writable()?;
        let tree = self.queue(queue)?;
        let seq = self.db.generate_id().map_err(engine)? + 1;
        tree.insert(seq.to_be_bytes(), item).map_err(engine)?;
        Ok(seq)
    }

    fn queue_peek(&self, queue: &str, limit: usize) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let tree = self.queue(queue)?;
        tree.iter()
            .take(limit)
            .map(|kv| {
                let (k, v) = kv.map_err(engine)?;
                let seq = <[u8; 8]>::try_from(k.as_ref()).map_err(|_| StoreError::Corrupt {
                    tree: "queue",
                    key: queue.to_owned(),
                    reason: "bad sequence key".into(),
                })?;
                Ok((u64::from_be_bytes(seq), v.to_vec()))
            })
            .collect()
    }

    fn queue_remove(&self, queue: &str, seq: u64) -> Result<(), StoreError> {
        self.writable()?;
        self.queue(queue)?
            .remove(seq.to_be_bytes())
            .map_err(engine)?;
        Ok(())
    }

    fn queue_len(&self, queue: &str) -> Result<usize, StoreError> {
        Ok(self.queue(queue)?.len())
    }

    fn lures(&self) -> Result<Vec<LureInstance>, StoreError> {
        // A record of its own supersedes the instance's copy in a batch:
        // it is the later write (the instance was retired since). An
        // instance can also be in two batches, if a flush failed after its
        // first batch was written and the next pass wrote it again.
        //
        // Batches are read first. A batch is deleted only once each of its
        // instances has a record of its own (drop_superseded_lure_batches),
        // so an instance whose batch is gone by the time it is read is
        // found among the records read after it.
        let mut out: Vec<LureInstance> = Vec::new();
        let mut at: HashMap<Arc<str>, usize> = HashMap::new();
        for kv in self.lure_batches.iter() {
            let (k, v) = kv.map_err(engine)?;
            let batch = lure_record::decode_batch(&v)
                .map_err(|reason| corrupt(LURE_BATCHES, &k, reason))?;
            for lure in batch {
                if let Entry::Vacant(e) = at.entry(lure.id.clone()) {
                    e.insert(out.len());
                    out.push(lure);
                }
            }
        }
        for kv in self.lures.iter() {
            let (k, v) = kv.map_err(engine)?;
            let lure = lure_record::decode(&v).map_err(|reason| corrupt(LURES, &k, reason))?;
            match at.get(&lure.id) {
                Some(&i) => out[i] = lure,
                None => out.push(lure),
            }
        }
        Ok(out)
    }

    fn lure(&self, id: &str) -> Result<Option<LureInstance>, StoreError> {
        self.lures
            .get(id.as_bytes())
            .map_err(engine)?
            .map(|v| {
                lure_record::decode(&v).map_err(|reason| corrupt(LURES, id.as_bytes(), reason))
            })
            .transpose()
    }

    fn put_lure(&self, lure: &LureInstance) -> Result<(), StoreError> {
        self.writable()?;
        self.lures
            .insert(lure.id.as_bytes(), lure_record::encode(lure))
            .map_err(engine)?;
        Ok(())
    }

    fn put_lures(&self, lures: &[LureInstance]) -> Result<(), StoreError> {
        self.writable()?;
        self.injected_lure_write_failure()?;
        let mut batch = sled::Batch::default();
        for lure in lures {
            batch.insert(lure.id.as_bytes(), lure_record::encode(lure));
        }
        self.lures.apply_batch(batch).map_err(engine)
    }

    fn put_new_lures(&self, lures: &[Arc<LureInstance>]) -> Result<(), StoreError> {
        self.writable()?;
        self.injected_lure_write_failure()?;
        if lures.is_empty() {
            return Ok(());
        }
        // Time-ordered, unique: a later batch never overwrites an earlier.
        let key = ruse_proto::types::new_ulid();
        self.lure_batches
            .insert(key.as_bytes(), lure_record::encode_batch(lures))
            .map_err(engine)?;
        Ok(())
    }

    fn drop_superseded_lure_batches(&self) -> Result<usize, StoreError> {
        self.writable()?;
        let mut dropped = 0;
        for kv in self.lure_batches.iter() {
            let (k, v) = kv.map_err(engine)?;
            let batch = lure_record::decode_batch(&v)
                .map_err(|reason| corrupt(LURE_BATCHES, &k, reason))?;
            let mut superseded = true;
            for lure in &batch {
                if !self
                    .lures
                    .contains_key(lure.id.as_bytes())
                    .map_err(engine)?
                {
                    superseded = false;
                    break;
                }
            }
            if superseded {
                // Batch keys are never written twice, so nothing can have
                // replaced this one since it was read.
                self.lure_batches.remove(&k).map_err(engine)?;
                dropped += 1;
            }
        }
        Ok(dropped)
    }

    fn reserve_event_cursors(&self, n: u64) -> Result<u64, StoreError> {
        Ok(self.events.reserve(n))
    }

    fn insert_events(&self, events: &[StoredEvent]) -> Result<Vec<bool>, StoreError> {
        self.writable()?;
        self.events.insert(events)
    }

    fn scan_events(
        &self,
        scan: &EventScan,
        visit: &mut dyn FnMut(StoredEvent) -> ControlFlow<()>,
    ) -> Result<(), StoreError> {
        self.events.scan(scan, visit)
    }

    fn event_cursors(&self) -> Result<Option<(u64, u64)>, StoreError> {
        self.events.cursors()
    }

    fn trim_events(
        &self,
        received_before: UnixMs,
        keep_at_most: u64,
        max: usize,
    ) -> Result<usize, StoreError> {
        self.writable()?;
        self.events.trim(received_before, keep_at_most, max)
    }

    fn next_revision(&self) -> Result<u64, StoreError> {
        self.writable()?;
        // generate_id is monotonic across restarts; +1 keeps revisions > 0.
        Ok(self.db.generate_id().map_err(engine)? + 1)
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.db.flush().map_err(engine)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests;

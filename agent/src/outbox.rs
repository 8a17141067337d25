//! The durable outbox: events are written here, synced, before they are
//! sent, and leave only when the controller acknowledges them.
//!
//! On disk: `outbox.log`, records of `[len u32][check u32][Event]` (the check
//! is the first 4 bytes of SHA-256 of the event), and `outbox.acked`, an
//! acknowledged sequence number. A torn record at the end (a crash
//! mid-write) is cut off when the log is opened. Only an index (sequence,
//! offset, severity) is kept in memory; events are read back from the log
//! to be sent.
//!
//! `outbox.acked` is written at most once per [`ACKED_SYNC_EVERY`], before
//! the log is emptied, and when the outbox is dropped, not on every
//! acknowledgement (each write is two fsyncs and a rename; under a decoy
//! flood, 100–200 a second and several per cent of the agent's CPU).
//! After a crash, events acknowledged in the last second are sent again
//! and the controller, which keeps events by id, drops them as
//! duplicates. Emptying the log only after its acknowledgement is on disk
//! keeps sequence numbers from going back.
//!
//! When the disk refuses a write (full, or failing), the events are held
//! in memory instead (at most [`MAX_HELD`]), sent like the others, and
//! written out as soon as a write succeeds again: a full disk on the
//! endpoint delays nothing and loses nothing unless the agent stops before
//! the disk has room. A write that failed halfway is cut off the log
//! first, so no partial record sits between whole ones.
//!
//! When the outbox is full, the oldest events of the lowest severity go
//! first (allowed readers, then drift, then touches); what was dropped is
//! counted and reported in heartbeats. Dropped and acknowledged records
//! stay in the log as dead bytes until those outweigh the live ones; then
//! the log is rewritten, so each rewrite copies no more than it frees. (A
//! dropped event may therefore come back after a crash and be dropped, or
//! sent, again: never fewer events, only more.)

use std::collections::{BTreeMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use ruse_proto::event::AgentEvent;

const LOG: &str = "outbox.log";
const ACKED: &str = "outbox.acked";
/// Larger records are refused (an event is a few hundred bytes).
const MAX_RECORD: usize = 64 << 10;
/// Acknowledged bytes at the head of the log before it is compacted.
const COMPACT_AFTER: u64 = 4 << 20;
/// Events held in memory while the disk refuses writes; beyond this they
/// are dropped and counted.
pub const MAX_HELD: usize = 10_000;
/// The offset of an entry held in memory, not in the log.
const HELD: u64 = u64::MAX;

/// How stale `outbox.acked` may get while events stay in the log.
pub const ACKED_SYNC_EVERY: Duration = Duration::from_secs(1);

/// How much an event matters, for the drop policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// A known benign reader.
    Allowed,
    /// A lure found changed by the agent's own check.
    Drift,
    /// Someone touched a lure.
    Touch,
}

impl Severity {
    pub fn of(event: &AgentEvent) -> Self {
        if event.allowed {
            Severity::Allowed
        } else if event.kind == "drift" {
            Severity::Drift
        } else {
            Severity::Touch
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    seq: u64,
    offset: u64,
    len: u32,
    severity: Severity,
}

/// Why the outbox failed.
#[derive(Debug, thiserror::Error)]
#[error("outbox {path}: {source}")]
pub struct OutboxError {
    path: String,
    #[source]
    source: std::io::Error,
}

impl OutboxError {
    pub(crate) fn other(reason: String) -> Self {
        OutboxError {
            path: "outbox".into(),
            source: std::io::Error::other(reason),
        }
    }
}

/// The outbox of one agent.
#[derive(Debug)]
pub struct Outbox {
    dir: PathBuf,
    log: File,
    /// Bytes written to the log.
    end: u64,
    acked: u64,
    /// What `outbox.acked` holds, and when it was written.
    acked_on_disk: u64,
    acked_written: std::time::Instant,
    next_seq: u64,
    /// Unacknowledged events, in sequence order.
    index: VecDeque<Entry>,
    /// Bytes of the log that `index` points at; the rest is dead.
    live: u64,
    capacity: usize,
    dropped: u64,
    /// Records (as they would be in the log) of entries whose offset is
    /// [`HELD`]: the disk refused them.
    held: BTreeMap<u64, Vec<u8>>,
}

fn check(bytes: &[u8]) -> u32 {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    let d = digest.as_ref();
    u32::from_le_bytes([d[0], d[1], d[2], d[3]])
}

impl Outbox {
    /// Opens (or creates) the outbox in `dir`, holding at most `capacity`
    /// unacknowledged events.
    pub fn open(dir: &Path, capacity: usize) -> Result<Self, OutboxError> {
        let err = |path: &Path| {
            let path = path.display().to_string();
            move |source| OutboxError { path, source }
        };
        ruse_pki::create_private_dir(dir)
            .map_err(|e| err(dir)(std::io::Error::other(e.to_string())))?;
        let acked_path = dir.join(ACKED);
        let acked = match std::fs::read_to_string(&acked_path) {
            Ok(s) => s.trim().parse().unwrap_or(0),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(err(&acked_path)(e)),
        };
        let log_path = dir.join(LOG);
        // Events hold what intruders typed at decoys (passwords among them):
        // the log is private whatever the umask.
        let mut log = ruse_pki::open_private_append(&log_path)
            .map_err(|e| err(&log_path)(std::io::Error::other(e.to_string())))?;
        let mut bytes = Vec::new();
        log.seek(SeekFrom::Start(0)).map_err(err(&log_path))?;
        log.read_to_end(&mut bytes).map_err(err(&log_path))?;
        let mut index = VecDeque::new();
        let mut offset = 0usize;
        let mut next_seq = acked + 1;
        while offset + 8 <= bytes.len() {
            let len = u32::from_le_bytes([
                bytes[offset],
                bytes[offset + 1],
                bytes[offset + 2],
                bytes[offset + 3],
            ]);
            let sum = u32::from_le_bytes([
                bytes[offset + 4],
                bytes[offset + 5],
                bytes[offset + 6],
                bytes[offset + 7],
            ]);
            let start = offset + 8;
            let Some(body) = bytes.get(start..start + len as usize) else {
                break;
            };
            if check(body) != sum {
                break;
            }
            let Ok(event) = AgentEvent::decode(body) else {
                break;
            };
            next_seq = next_seq.max(event.seq + 1);
            if event.seq > acked {
                index.push_back(Entry {
                    seq: event.seq,
                    offset: offset as u64,
                    len: len + 8,
                    severity: Severity::of(&event),
                });
            }
            offset = start + len as usize;
        }
        if offset < bytes.len() {
            // A torn or corrupt tail: keep what is whole.
            tracing::warn!(path = %log_path.display(), kept = offset, lost = bytes.len() - offset, "outbox log had a damaged tail; cut off");
            log.set_len(offset as u64).map_err(err(&log_path))?;
            log.sync_all().map_err(err(&log_path))?;
        }
        let live = index.iter().map(|e| u64::from(e.len)).sum();
        let mut outbox = Outbox {
            dir: dir.to_path_buf(),
            log,
            end: offset as u64,
            acked,
            acked_on_disk: acked,
            acked_written: std::time::Instant::now(),
            next_seq,
            index,
            live,
            capacity: capacity.max(1),
            dropped: 0,
            held: BTreeMap::new(),
        };
        if outbox.index.is_empty() && outbox.end > 0 {
            outbox.truncate()?;
        } else if outbox.index.len() > outbox.capacity {
            // Dropped before a crash (and counted then), or a smaller
            // capacity now: drop again, without counting.
            outbox.drop_excess();
            let keep: Vec<Entry> = outbox.index.iter().copied().collect();
            outbox.rewrite(keep)?;
        }
        Ok(outbox)
    }

    /// An error about the log; the path is formatted only on failure.
    fn log_error(&self) -> impl FnOnce(std::io::Error) -> OutboxError + '_ {
        move |source| OutboxError {
            path: self.dir.join(LOG).display().to_string(),
            source,
        }
    }

    /// Unacknowledged events.
    pub fn depth(&self) -> usize {
        self.index.len()
    }

    /// Unacknowledged events it holds at most.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Events dropped because the outbox was full, since it was opened.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// The highest acknowledged sequence number.
    pub fn acked(&self) -> u64 {
        self.acked
    }

    /// Gives each event its sequence number, writes them, and syncs. Events
    /// are durable when this returns.
    ///
    /// If the disk refuses the write, the events are held in memory (see
    /// the module comment) and this still succeeds; it fails only when
    /// even memory is full, and then drops and counts them.
    pub fn append(&mut self, events: &mut [AgentEvent]) -> Result<(), OutboxError> {
        if events.is_empty() {
            return Ok(());
        }
        self.write_held();
        let mut buf = Vec::new();
        let mut entries = Vec::new();
        for event in events.iter_mut() {
            event.seq = self.next_seq;
            self.next_seq += 1;
            let body = event.encode();
            if body.len() > MAX_RECORD {
                tracing::warn!(lure = %event.lure_id, bytes = body.len(), "event too large; not recorded");
                continue;
            }
            let len = u32::try_from(body.len()).unwrap_or(u32::MAX);
            entries.push(Entry {
                seq: event.seq,
                offset: self.end + buf.len() as u64,
                len: len + 8,
                severity: Severity::of(event),
            });
            buf.extend_from_slice(&len.to_le_bytes());
            buf.extend_from_slice(&check(&body).to_le_bytes());
            buf.extend_from_slice(&body);
        }
        let written = if self.held.is_empty() {
            self.write_at_end(&buf)
        } else {
            // Keep the order: nothing after held events reaches the log
            // before they do.
            Err(std::io::Error::other("earlier events are held"))
        };
        match written {
            Ok(()) => {
                self.live += entries.iter().map(|e| u64::from(e.len)).sum::<u64>();
                self.index.extend(entries);
            }
            Err(e) => self.hold(entries, &buf, &e)?,
        }
        if self.index.len() > self.capacity {
            self.shed()?;
        }
        Ok(())
    }

    /// Appends `buf` to the log and syncs it; on failure the log is cut
    /// back to where it ended, so no partial record stays.
    fn write_at_end(&mut self, buf: &[u8]) -> std::io::Result<()> {
        match self.log.write_all(buf).and_then(|()| self.log.sync_data()) {
            Ok(()) => {
                self.end += buf.len() as u64;
                Ok(())
            }
            Err(e) => {
                let _ = self.log.set_len(self.end);
                Err(e)
            }
        }
    }

    /// Keeps records the disk refused (`entries`, their bytes in `buf`
    /// from offset `self.end` on) in memory.
    fn hold(
        &mut self,
        entries: Vec<Entry>,
        buf: &[u8],
        why: &std::io::Error,
    ) -> Result<(), OutboxError> {
        if self.held.is_empty() {
            tracing::error!(
                path = %self.dir.join(LOG).display(),
                error = %why,
                "the outbox cannot be written: events are held in memory and sent, and written out once the disk takes them (lost if the agent stops first)"
            );
        }
        let room = MAX_HELD.saturating_sub(self.held.len());
        let refused = entries.len().saturating_sub(room);
        for e in entries.into_iter().take(room) {
            let at = (e.offset - self.end) as usize;
            self.held
                .insert(e.seq, buf[at..at + e.len as usize].to_vec());
            self.index.push_back(Entry { offset: HELD, ..e });
        }
        if refused > 0 {
            self.dropped += refused as u64;
            return Err(OutboxError {
                path: self.dir.join(LOG).display().to_string(),
                source: std::io::Error::other(format!(
                    "{refused} events dropped: the disk refuses writes ({why}) and {MAX_HELD} are already held in memory"
                )),
            });
        }
        Ok(())
    }

    /// Writes the events held in memory to the log, if the disk takes
    /// them now.
    fn write_held(&mut self) {
        if self.held.is_empty() {
            return;
        }
        let mut buf = Vec::new();
        let mut placed = Vec::with_capacity(self.held.len());
        for (seq, record) in &self.held {
            placed.push((*seq, self.end + buf.len() as u64));
            buf.extend_from_slice(record);
        }
        if self.write_at_end(&buf).is_err() {
            return;
        }
        for (seq, offset) in placed {
            if let Ok(i) = self.index.binary_search_by_key(&seq, |e| e.seq) {
                self.index[i].offset = offset;
                self.live += u64::from(self.index[i].len);
            }
        }
        tracing::info!(
            events = self.held.len(),
            "the outbox is writable again: held events written"
        );
        self.held.clear();
    }

    /// Drops the oldest events of the lowest severity until within
    /// capacity; the log is compacted only when dead bytes outweigh live
    /// ones (rewriting it on every append of a full outbox made each
    /// append cost the whole backlog).
    fn shed(&mut self) -> Result<(), OutboxError> {
        let dropped = self.drop_excess();
        self.dropped += dropped as u64;
        tracing::warn!(
            dropped,
            capacity = self.capacity,
            "outbox full; dropped the oldest low-severity events"
        );
        self.compact_if_mostly_dead()
    }

    /// Takes the oldest events of the lowest severity out of the index
    /// until it is within capacity; returns how many.
    fn drop_excess(&mut self) -> usize {
        let excess = self.index.len().saturating_sub(self.capacity);
        let mut victims = Vec::with_capacity(excess);
        for severity in [Severity::Allowed, Severity::Drift, Severity::Touch] {
            for e in self.index.iter().filter(|e| e.severity == severity) {
                if victims.len() == excess {
                    break;
                }
                victims.push(e.seq);
            }
        }
        victims.sort_unstable();
        let mut freed = 0;
        let held = &mut self.held;
        self.index.retain(|e| {
            let keep = victims.binary_search(&e.seq).is_err();
            if !keep {
                if e.offset == HELD {
                    held.remove(&e.seq);
                } else {
                    freed += u64::from(e.len);
                }
            }
            keep
        });
        self.live -= freed;
        victims.len()
    }

    /// Rewrites the log once its dead bytes pass [`COMPACT_AFTER`] and
    /// are at least as many as the live ones.
    fn compact_if_mostly_dead(&mut self) -> Result<(), OutboxError> {
        let dead = self.end.saturating_sub(self.live);
        if dead > COMPACT_AFTER && dead >= self.live {
            let keep: Vec<Entry> = self.index.iter().copied().collect();
            self.rewrite(keep)?;
        }
        Ok(())
    }

    /// Rewrites the log with only `keep`, atomically.
    fn rewrite(&mut self, keep: Vec<Entry>) -> Result<(), OutboxError> {
        let mut buf = Vec::new();
        let mut index = VecDeque::with_capacity(keep.len());
        for e in keep {
            if e.offset == HELD {
                index.push_back(e);
                continue;
            }
            let bytes = self.read_record(&e)?;
            index.push_back(Entry {
                offset: buf.len() as u64,
                ..e
            });
            buf.extend_from_slice(&bytes);
        }
        let tmp = self.dir.join(format!("{LOG}.tmp"));
        let mut file = private_file(OpenOptions::new().write(true).create(true).truncate(true))
            .open(&tmp)
            .map_err(self.log_error())?;
        file.write_all(&buf).map_err(self.log_error())?;
        file.sync_all().map_err(self.log_error())?;
        std::fs::rename(&tmp, self.dir.join(LOG)).map_err(self.log_error())?;
        self.log = OpenOptions::new()
            .read(true)
            .append(true)
            .open(self.dir.join(LOG))
            .map_err(self.log_error())?;
        self.end = buf.len() as u64;
        self.live = self.end;
        self.index = index;
        if let Ok(d) = File::open(&self.dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }

    fn truncate(&mut self) -> Result<(), OutboxError> {
        self.log.set_len(0).map_err(self.log_error())?;
        self.log.sync_all().map_err(self.log_error())?;
        self.end = 0;
        self.live = 0;
        Ok(())
    }

    fn read_record(&self, e: &Entry) -> Result<Vec<u8>, OutboxError> {
        let mut bytes = vec![0u8; e.len as usize];
        read_exact_at(&self.log, &mut bytes, e.offset).map_err(self.log_error())?;
        Ok(bytes)
    }

    /// Up to `limit` unacknowledged events with `seq > after`, in order.
    /// Records that lie back to back in the log are read with one call.
    pub fn pending(&self, after: u64, limit: usize) -> Result<Vec<AgentEvent>, OutboxError> {
        let first = self.index.partition_point(|e| e.seq <= after);
        let mut out = Vec::new();
        let mut run: Vec<Entry> = Vec::new();
        let mut bytes = Vec::new();
        for e in self.index.range(first..).take(limit) {
            if e.offset == HELD {
                self.decode_run(&run, &mut bytes, &mut out)?;
                run.clear();
                if let Some(event) = self
                    .held
                    .get(&e.seq)
                    .and_then(|r| AgentEvent::decode(r.get(8..)?).ok())
                {
                    out.push(event);
                }
                continue;
            }
            if run
                .last()
                .is_some_and(|l| l.offset + u64::from(l.len) != e.offset)
            {
                self.decode_run(&run, &mut bytes, &mut out)?;
                run.clear();
            }
            run.push(*e);
        }
        self.decode_run(&run, &mut bytes, &mut out)?;
        Ok(out)
    }

    /// Reads records that lie back to back in the log and decodes them.
    fn decode_run(
        &self,
        run: &[Entry],
        bytes: &mut Vec<u8>,
        out: &mut Vec<AgentEvent>,
    ) -> Result<(), OutboxError> {
        let (Some(first), Some(last)) = (run.first(), run.last()) else {
            return Ok(());
        };
        let span = last.offset + u64::from(last.len) - first.offset;
        bytes.clear();
        bytes.resize(span as usize, 0);
        read_exact_at(&self.log, bytes, first.offset).map_err(self.log_error())?;
        for e in run {
            let at = (e.offset - first.offset) as usize;
            let body = &bytes[at + 8..at + e.len as usize];
            if let Ok(event) = AgentEvent::decode(body) {
                out.push(event);
            }
        }
        Ok(())
    }

    /// The controller has every event up to `through`: forget them.
    pub fn ack(&mut self, through: u64) -> Result<(), OutboxError> {
        if through <= self.acked {
            return Ok(());
        }
        let through = through.min(self.next_seq.saturating_sub(1));
        self.acked = through;
        while let Some(e) = self.index.front().filter(|e| e.seq <= through) {
            if e.offset == HELD {
                self.held.remove(&e.seq);
            } else {
                self.live -= u64::from(e.len);
            }
            self.index.pop_front();
        }
        if self.index.is_empty() {
            // Sequence numbers continue from the file once the log is empty.
            self.write_acked()?;
            self.truncate()?;
        } else {
            if self.acked_written.elapsed() >= ACKED_SYNC_EVERY {
                self.write_acked()?;
            }
            // (Compacting whenever the file passed 4 MiB rewrote a large
            // pending backlog on every ack under a decoy flood: a third
            // of the agent's CPU in perf.)
            self.compact_if_mostly_dead()?;
        }
        Ok(())
    }

    /// Writes the acknowledged sequence number durably, if it moved.
    fn write_acked(&mut self) -> Result<(), OutboxError> {
        if self.acked == self.acked_on_disk {
            return Ok(());
        }
        let path = self.dir.join(ACKED);
        ruse_pki::write_private_file(&path, self.acked.to_string().as_bytes()).map_err(|e| {
            OutboxError {
                path: path.display().to_string(),
                source: std::io::Error::other(e.to_string()),
            }
        })?;
        self.acked_on_disk = self.acked;
        self.acked_written = std::time::Instant::now();
        Ok(())
    }
}

/// A clean stop writes the last acknowledgements.
impl Drop for Outbox {
    fn drop(&mut self) {
        if let Err(e) = self.write_acked() {
            tracing::warn!(error = %e, "cannot record the last acknowledgements; they will be sent again");
        }
    }
}

/// Where events go: the durable outbox, then the session.
#[derive(Debug, Clone)]
pub struct EventSink {
    outbox: Arc<Mutex<Outbox>>,
    notify: Arc<Notify>,
    /// Woken whenever acknowledgements make room in the outbox.
    room: Arc<Notify>,
}

impl EventSink {
    pub fn new(outbox: Outbox) -> Self {
        EventSink {
            outbox: Arc::new(Mutex::new(outbox)),
            notify: Arc::new(Notify::new()),
            room: Arc::new(Notify::new()),
        }
    }

    fn outbox(&self) -> std::sync::MutexGuard<'_, Outbox> {
        self.outbox.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The highest sequence the controller has acknowledged.
    pub fn acked(&self) -> u64 {
        self.outbox().acked()
    }

    /// Events waiting (recorded, not acknowledged) and events dropped.
    pub fn backlog(&self) -> (usize, u64) {
        let o = self.outbox();
        (o.depth(), o.dropped())
    }

    /// Up to `limit` recorded events after sequence `after`, oldest first.
    pub fn pending(&self, after: u64, limit: usize) -> Result<Vec<AgentEvent>, OutboxError> {
        self.outbox().pending(after, limit)
    }

    /// Events recorded and not yet acknowledged by the controller.
    pub fn depth(&self) -> usize {
        self.outbox().depth()
    }

    /// Woken whenever events are recorded.
    pub fn notify(&self) -> &Arc<Notify> {
        &self.notify
    }

    /// Records events durably (synced to disk) and wakes the session.
    pub async fn record<E: Into<AgentEvent>>(&self, events: Vec<E>) -> Result<(), OutboxError> {
        let mut events: Vec<AgentEvent> = events.into_iter().map(Into::into).collect();
        if events.is_empty() {
            return Ok(());
        }
        let outbox = self.outbox.clone();
        let result = tokio::task::spawn_blocking(move || {
            outbox
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .append(&mut events)
        })
        .await
        .unwrap_or_else(|e| Err(OutboxError::other(e.to_string())));
        self.notify.notify_one();
        result
    }

    /// Records events only where the outbox has room for all of them,
    /// waiting up to `patience` for acknowledgements to make it. Unlike
    /// [`EventSink::record`] this never sheds older events: events that
    /// still do not fit are not recorded, and their number is returned.
    pub async fn record_when_room<E: Into<AgentEvent>>(
        &self,
        events: Vec<E>,
        patience: Duration,
    ) -> Result<usize, OutboxError> {
        let mut events: Vec<AgentEvent> = events.into_iter().map(Into::into).collect();
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            if events.is_empty() {
                return Ok(0);
            }
            // Registered before the check, so an ack in between still wakes us.
            let room = self.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            let outbox = self.outbox.clone();
            let expired = tokio::time::Instant::now() >= deadline;
            let (result, rest) = tokio::task::spawn_blocking(move || {
                let mut outbox = outbox.lock().unwrap_or_else(|e| e.into_inner());
                let free = outbox.capacity().saturating_sub(outbox.depth());
                if free >= events.len() {
                    (outbox.append(&mut events), Vec::new())
                } else if expired {
                    let rest = events.split_off(free);
                    (outbox.append(&mut events), rest)
                } else {
                    (Ok(()), events)
                }
            })
            .await
            .unwrap_or_else(|e| (Err(OutboxError::other(e.to_string())), Vec::new()));
            result?;
            if rest.is_empty() {
                self.notify.notify_one();
                return Ok(0);
            }
            if expired {
                self.notify.notify_one();
                return Ok(rest.len());
            }
            events = rest;
            // Nothing fitted: wait for an acknowledgement or the deadline.
            let _ = tokio::time::timeout_at(deadline, room).await;
        }
    }

    /// The controller has every event through `through`: forgets them and
    /// wakes writers waiting for room. Returns the events newly
    /// acknowledged and the outbox depth after.
    pub async fn ack(&self, through: u64) -> Result<(u64, usize), OutboxError> {
        let outbox = self.outbox.clone();
        let result = tokio::task::spawn_blocking(move || {
            let mut outbox = outbox.lock().unwrap_or_else(|e| e.into_inner());
            let before = outbox.acked();
            outbox
                .ack(through)
                .map(|()| (outbox.acked() - before, outbox.depth()))
        })
        .await
        .unwrap_or_else(|e| Err(OutboxError::other(e.to_string())));
        self.room.notify_waiters();
        result
    }
}

/// Reads exactly `buf.len()` bytes at `offset`. The log is opened for
/// appending, so on Windows, where a positioned read moves the file's
/// cursor, appends still go to the end.
fn read_exact_at(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
    }
    #[cfg(windows)]
    {
        use std::os::windows::fs::FileExt;
        let mut done = 0;
        while done < buf.len() {
            match file.seek_read(&mut buf[done..], offset + done as u64)? {
                0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                n => done += n,
            }
        }
        Ok(())
    }
}

/// Options that create a file only its owner can read: mode 0600 on
/// Unix; on Windows the state directory's ACL (the installer's, SYSTEM
/// and Administrators only) is inherited.
fn private_file(options: &mut OpenOptions) -> &mut OpenOptions {
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(options, 0o600);
    options
}

#[cfg(test)]
mod tests;

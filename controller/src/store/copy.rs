//! Moving an installation from the embedded store into PostgreSQL
//! (`ruse-controller migrate-store`): every record kind is copied, then
//! counted on both sides.

use std::collections::BTreeMap;
use std::ops::ControlFlow;

use ruse_proto::types::UnixMs;

use super::{EventScan, PgStore, SledStore, Store, StoreError};
use crate::model::{StoredEvent, TimelineEntry};

/// Events and lure instances written per statement.
const CHUNK: usize = 5_000;

/// How many records of each kind were copied (and found in the target).
pub type Copied = BTreeMap<&'static str, u64>;

/// Copies everything in `from` into the empty database behind `to`, then
/// checks that the target holds as many records of each kind. `progress`
/// hears each kind as it is done, and every 100,000 events.
pub fn copy_store(
    from: &SledStore,
    to: &PgStore,
    mut progress: impl FnMut(&str, u64),
) -> Result<Copied, StoreError> {
    if !to.is_empty()? {
        return Err(StoreError::Engine(
            "the database already holds a Ruse installation; migrate-store copies into an empty one"
                .into(),
        ));
    }
    let mut copied = Copied::new();
    let done =
        |kind: &'static str, n: usize, copied: &mut Copied, progress: &mut dyn FnMut(&str, u64)| {
            copied.insert(kind, n as u64);
            progress(kind, n as u64);
        };

    let admins = from.admins()?;
    admins.iter().try_for_each(|r| to.put_admin(r))?;
    done("admins", admins.len(), &mut copied, &mut progress);
    let agents = from.agents()?;
    agents.iter().try_for_each(|r| to.put_agent(r))?;
    done("agents", agents.len(), &mut copied, &mut progress);
    let tokens = from.tokens()?;
    tokens.iter().try_for_each(|r| to.put_token(r))?;
    done("tokens", tokens.len(), &mut copied, &mut progress);
    let campaigns = from.campaigns()?;
    campaigns.iter().try_for_each(|r| to.put_campaign(r))?;
    done("campaigns", campaigns.len(), &mut copied, &mut progress);
    let decoys = from.decoys()?;
    decoys.iter().try_for_each(|r| to.put_decoy(r))?;
    done("decoys", decoys.len(), &mut copied, &mut progress);
    let allow_rules = from.allow_rules()?;
    allow_rules.iter().try_for_each(|r| to.put_allow_rule(r))?;
    done("allow rules", allow_rules.len(), &mut copied, &mut progress);
    let suppressions = from.suppressions()?;
    suppressions
        .iter()
        .try_for_each(|r| to.put_suppression(r))?;
    done(
        "suppressions",
        suppressions.len(),
        &mut copied,
        &mut progress,
    );
    let counters = from.counters()?;
    counters
        .iter()
        .try_for_each(|(name, n)| to.put_counter(name, *n))?;
    done("counters", counters.len(), &mut copied, &mut progress);
    // Oldest first, so the new sequence numbers keep the order.
    let audit = from.audit(UnixMs(i64::MIN), None, usize::MAX)?;
    for record in &audit {
        to.append_audit(record.clone())?;
    }
    done("audit records", audit.len(), &mut copied, &mut progress);
    to.flush()?;

    let lures = from.lures()?;
    for chunk in lures.chunks(CHUNK) {
        to.put_lures(chunk)?;
        to.flush()?;
    }
    done("lure instances", lures.len(), &mut copied, &mut progress);

    let incidents = from.incidents()?;
    let mut entries = 0;
    for incident in &incidents {
        to.put_incident(incident)?;
        let timeline: Vec<&TimelineEntry> = incident.timeline.iter().map(|t| &**t).collect();
        to.put_timeline(&incident.id, &timeline)?;
        entries += timeline.len();
    }
    to.flush()?;
    done("incidents", incidents.len(), &mut copied, &mut progress);
    done("timeline entries", entries, &mut copied, &mut progress);

    let mut queued = 0;
    for queue in from.queue_names() {
        for (_, item) in from.queue_peek(&queue, usize::MAX)? {
            to.queue_push(&queue, &item)?;
            queued += 1;
        }
    }
    to.flush()?;
    done("queued notices", queued, &mut copied, &mut progress);

    // Events keep their cursors (the receive order, which watches and
    // listings page by).
    let mut batch: Vec<StoredEvent> = Vec::with_capacity(CHUNK);
    let (mut events, mut failed) = (0usize, None);
    from.scan_events(&EventScan::default(), &mut |e| {
        batch.push(e);
        if batch.len() == CHUNK {
            match to.insert_events(&batch).and_then(|_| to.flush()) {
                Ok(()) => {
                    events += batch.len();
                    if events % 100_000 < CHUNK {
                        progress("events so far", events as u64);
                    }
                }
                Err(e) => {
                    failed = Some(e);
                    return ControlFlow::Break(());
                }
            }
            batch.clear();
        }
        ControlFlow::Continue(())
    })?;
    if let Some(e) = failed {
        return Err(e);
    }
    to.insert_events(&batch)?;
    events += batch.len();
    to.flush()?;
    done("events", events, &mut copied, &mut progress);

    // Later revisions and cursors come after every copied one.
    let last_cursor = from.event_cursors()?.map_or(0, |(_, last)| last);
    to.raise_floors(from.next_revision()?, last_cursor)?;
    verify(to, &copied, &from.queue_names())?;
    Ok(copied)
}

/// Counts each kind in the target and compares.
fn verify(to: &PgStore, copied: &Copied, queues: &[String]) -> Result<(), StoreError> {
    let mut events = 0u64;
    to.scan_events(&EventScan::default(), &mut |_| {
        events += 1;
        ControlFlow::Continue(())
    })?;
    let incidents = to.incidents()?;
    let entries: usize = incidents.iter().map(|i| i.timeline.len()).sum();
    let mut queued = 0;
    for q in queues {
        queued += to.queue_len(q)?;
    }
    let found: [(&str, u64); 14] = [
        ("admins", to.admins()?.len() as u64),
        ("agents", to.agents()?.len() as u64),
        ("tokens", to.tokens()?.len() as u64),
        ("campaigns", to.campaigns()?.len() as u64),
        ("decoys", to.decoys()?.len() as u64),
        ("allow rules", to.allow_rules()?.len() as u64),
        ("suppressions", to.suppressions()?.len() as u64),
        ("counters", to.counters()?.len() as u64),
        (
            "audit records",
            to.audit(UnixMs(i64::MIN), None, usize::MAX)?.len() as u64,
        ),
        ("lure instances", to.lures()?.len() as u64),
        ("incidents", incidents.len() as u64),
        ("timeline entries", entries as u64),
        ("queued notices", queued as u64),
        ("events", events),
    ];
    for (kind, n) in found {
        let want = copied.get(kind).copied().unwrap_or(0);
        if n != want {
            return Err(StoreError::Engine(
                format!("verification failed: {want} {kind} copied but {n} found in the database")
                    .into(),
            ));
        }
    }
    Ok(())
}

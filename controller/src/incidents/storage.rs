//! Incidents kept: the correlator over the store, status changes, output
//! deliveries, queries and the live watch.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use foldhash::{HashMap, HashMapExt};

use ruse_proto::types::UnixMs;

use super::correlate::Correlator;
use super::{Changes, Directory, IncidentError, IncidentFilter, Notice, Outcome};
use crate::model::{Delivery, Incident, Severity, Status, StoredEvent, Suppression, TimelineEntry};

/// Incidents: correlation, storage, lifecycle and the live watch.
#[derive(Debug)]
pub struct Incidents {
    pub(super) store: std::sync::Arc<dyn crate::store::Store>,
    pub(super) committer: crate::store::Committer,
    pub(super) correlator: std::sync::Mutex<Correlator>,
    /// Every incident by id (resolved ones too), for views.
    /// Shared with the correlator until the next event changes it: a
    /// batch copies an incident (and its timeline) once, not per reader.
    pub(super) all: std::sync::Mutex<BTreeMap<String, std::sync::Arc<Incident>>>,
    /// Suppression name → events suppressed.
    pub(super) suppressed: std::sync::Mutex<BTreeMap<String, u64>>,
    pub(super) live: tokio::sync::broadcast::Sender<std::sync::Arc<Incident>>,
    /// How far this controller has taken in the incidents other
    /// controllers sharing the store wrote (see [`Incidents::catch_up`]).
    pub(super) mark: std::sync::Mutex<u64>,
}

impl Incidents {
    /// Loads stored incidents and counters.
    pub fn load(
        store: std::sync::Arc<dyn crate::store::Store>,
        committer: crate::store::Committer,
        window: Duration,
    ) -> Result<Self, crate::store::StoreError> {
        // Before the read: whatever is written meanwhile is read again.
        let mark = store.incidents_mark()?;
        let stored = store.incidents()?;
        let suppressed = store
            .counters()?
            .into_iter()
            .filter_map(|(k, v)| k.strip_prefix("suppressed:").map(|n| (n.to_owned(), v)))
            .collect();
        Ok(Incidents {
            correlator: std::sync::Mutex::new(Correlator::new(window, stored.clone())),
            all: std::sync::Mutex::new(
                stored
                    .into_iter()
                    .map(|i| (i.id.clone(), std::sync::Arc::new(i)))
                    .collect(),
            ),
            suppressed: std::sync::Mutex::new(suppressed),
            live: tokio::sync::broadcast::channel(1024).0,
            mark: std::sync::Mutex::new(mark),
            store,
            committer,
        })
    }

    pub(super) fn correlator(&self) -> std::sync::MutexGuard<'_, Correlator> {
        self.correlator.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn all(
        &self,
    ) -> std::sync::MutexGuard<'_, BTreeMap<String, std::sync::Arc<Incident>>> {
        self.all.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes in the incidents other controllers sharing the store wrote
    /// since the last call: views, watchers and the correlator see them.
    pub fn catch_up(&self) -> Result<(), crate::store::StoreError> {
        self.take_in(false)
    }

    /// As [`Self::catch_up`], and holds the other controllers' incident
    /// writes back until this controller's next flush: call before
    /// storing events to correlate, or changing an incident, so that
    /// what follows starts from every incident they wrote (two events of
    /// one attack at two controllers make one incident). Nothing that
    /// waits on another controller may come between this and that flush.
    pub fn hold(&self) -> Result<(), crate::store::StoreError> {
        self.take_in(true)
    }

    fn take_in(&self, hold: bool) -> Result<(), crate::store::StoreError> {
        let mut mark = self.mark.lock().unwrap_or_else(|e| e.into_inner());
        let theirs = self.store.incidents_changed(&mut mark, hold)?;
        if theirs.is_empty() {
            return Ok(());
        }
        let theirs: Vec<std::sync::Arc<Incident>> =
            theirs.into_iter().map(std::sync::Arc::new).collect();
        {
            let mut c = self.correlator();
            for i in &theirs {
                c.take_in(i.clone());
            }
        }
        let mut all = self.all();
        for i in theirs {
            all.insert(i.id.clone(), i.clone());
            let _ = self.live.send(i);
        }
        Ok(())
    }

    /// Correlates newly stored events and writes what changed (the caller
    /// makes it durable with the events, then calls [`Self::publish`]).
    pub fn correlate(
        &self,
        events: &[(StoredEvent, Option<String>)],
        suppressions: &[Suppression],
        dir: &dyn Directory,
    ) -> Result<Changes, crate::store::StoreError> {
        let now = UnixMs::now();
        let mut changes = Changes::default();
        let mut touched: BTreeSet<String> = BTreeSet::new();
        let mut hits: BTreeMap<String, u64> = BTreeMap::new();
        let (touched, added): (Vec<std::sync::Arc<Incident>>, HashMap<_, _>) = {
            let mut c = self.correlator();
            c.expire(now);
            for (e, drill) in events {
                match c.correlate(e, drill.as_deref(), suppressions, dir, now) {
                    Outcome::Ignored => {}
                    Outcome::Suppressed(name) => *hits.entry(name).or_default() += 1,
                    // Only ids are kept, so the next event on the same
                    // incident updates it in place.
                    Outcome::Opened(i) => {
                        changes.notices.push((i.id.clone(), Notice::Opened));
                        touched.insert(i.id.clone());
                    }
                    Outcome::Updated {
                        incident,
                        escalated,
                    } => {
                        if escalated {
                            changes
                                .notices
                                .push((incident.id.clone(), Notice::Escalated));
                        }
                        touched.insert(incident.id.clone());
                    }
                }
            }
            let mut added: HashMap<String, Vec<std::sync::Arc<TimelineEntry>>> = HashMap::new();
            for (id, entry) in c.take_added() {
                added.entry(id).or_default().push(entry);
            }
            let touched = touched.iter().filter_map(|id| c.get(id).cloned()).collect();
            (touched, added)
        };
        // This batch's timeline entries, written with their incident.
        {
            let mut all = self.all();
            for mut i in touched {
                let added: Vec<&TimelineEntry> = added
                    .get(&i.id)
                    .map(|entries| entries.iter().map(|t| &**t).collect())
                    .unwrap_or_default();
                self.store.put_timeline(&i.id, &added)?;
                // Deliveries are recorded by the outputs; keep theirs.
                if let Some(old) = all.get(&i.id)
                    && old.deliveries != i.deliveries
                {
                    std::sync::Arc::make_mut(&mut i).deliveries = old.deliveries.clone();
                    self.correlator().share(i.clone());
                }
                self.store.put_incident(&i)?;
                all.insert(i.id.clone(), i.clone());
                changes.incidents.push(i);
            }
        }
        if !hits.is_empty() {
            let mut counts = self.suppressed.lock().unwrap_or_else(|e| e.into_inner());
            for (name, n) in hits {
                let total = counts.entry(name.clone()).or_default();
                *total += n;
                self.store
                    .put_counter(&format!("suppressed:{name}"), *total)?;
            }
        }
        Ok(changes)
    }

    /// Announces durable changes to watchers.
    pub fn publish(&self, changes: &Changes) {
        for i in &changes.incidents {
            let _ = self.live.send(i.clone());
        }
    }

    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<std::sync::Arc<Incident>> {
        self.live.subscribe()
    }

    pub fn get(&self, id: &str) -> Option<Incident> {
        self.all().get(id).map(|i| (**i).clone())
    }

    /// Incidents matching `filter`, most recently seen first.
    pub fn list(&self, filter: &IncidentFilter, limit: usize) -> Vec<Incident> {
        let all = self.all();
        // Sorted by reference, and only the first `limit` copied: the
        // console asks for 1,000 of maybe 10,000 open.
        let mut matching: Vec<&std::sync::Arc<Incident>> =
            all.values().filter(|i| filter.matches(i)).collect();
        let newest_first = |a: &&std::sync::Arc<Incident>, b: &&std::sync::Arc<Incident>| {
            b.last_seen.cmp(&a.last_seen).then(b.id.cmp(&a.id))
        };
        if matching.len() > limit && limit > 0 {
            matching.select_nth_unstable_by(limit - 1, newest_first);
            matching.truncate(limit);
        }
        matching.sort_by(newest_first);
        matching.truncate(limit);
        matching.into_iter().map(|i| (**i).clone()).collect()
    }

    /// Events each suppression has hidden.
    pub fn suppressed_counts(&self) -> BTreeMap<String, u64> {
        self.suppressed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Open incidents by severity, for metrics.
    pub fn open_by_severity(&self) -> BTreeMap<Severity, u64> {
        let mut out = BTreeMap::new();
        // Drills rehearse the response; they are not open business.
        for i in self
            .all()
            .values()
            .filter(|i| i.status != Status::Resolved && !i.drill)
        {
            *out.entry(i.severity).or_default() += 1;
        }
        out
    }

    pub(super) async fn change(
        &self,
        id: &str,
        f: impl FnOnce(&mut Incident) -> Result<(), IncidentError>,
    ) -> Result<Incident, IncidentError> {
        self.hold()?;
        let updated = {
            let mut all = self.all();
            let i = all
                .get_mut(id)
                .ok_or_else(|| IncidentError::NotFound(id.to_owned()))?;
            let mut next = (**i).clone();
            f(&mut next)?;
            next.updated = UnixMs::now();
            next.version += 1;
            self.store.put_incident(&next)?;
            *i = std::sync::Arc::new(next.clone());
            next
        };
        self.committer.durable().await?;
        self.correlator().replace(updated.clone());
        let _ = self.live.send(std::sync::Arc::new(updated.clone()));
        Ok(updated)
    }

    /// Someone is looking at it.
    pub async fn acknowledge(&self, id: &str, by: &str) -> Result<Incident, IncidentError> {
        self.change(id, |i| {
            if i.status == Status::Resolved {
                return Err(IncidentError::Resolved(i.id.clone()));
            }
            i.status = Status::Acknowledged;
            i.acknowledged_by = by.to_owned();
            Ok(())
        })
        .await
    }

    /// Closed, with a note; later events open a new incident.
    pub async fn resolve(&self, id: &str, by: &str, note: &str) -> Result<Incident, IncidentError> {
        self.change(id, |i| {
            if i.status == Status::Resolved {
                return Err(IncidentError::Resolved(i.id.clone()));
            }
            i.status = Status::Resolved;
            i.resolved_by = by.to_owned();
            i.resolution = note.chars().take(2000).collect();
            Ok(())
        })
        .await
    }

    /// Records where an incident was delivered (no new version).
    pub fn record_delivery(
        &self,
        id: &str,
        output: &str,
        delivery: Delivery,
    ) -> Result<Option<Incident>, crate::store::StoreError> {
        self.hold()?;
        let mut all = self.all();
        let Some(i) = all.get_mut(id) else {
            return Ok(None);
        };
        std::sync::Arc::make_mut(i)
            .deliveries
            .insert(output.to_owned(), delivery);
        self.store.put_incident(i)?;
        let i = i.clone();
        drop(all);
        let _ = self.live.send(i.clone());
        Ok(Some((*i).clone()))
    }
}

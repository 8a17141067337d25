//! Admission of new connections before the gRPC server sees them.
//!
//! Anyone who reaches the port can open connections and say nothing; each
//! costs a file descriptor and, once it speaks, a TLS handshake. So that
//! such connections can never shut out agents, admins or enrollments:
//!
//! - the accept loop never waits on a handshake: a connection is admitted
//!   at once and tracked here until its handshake ends;
//! - at most `cap` connections are pending per listener (far below the
//!   file-descriptor limit), and a silent one is dropped after a few
//!   seconds ([`super::server`] sets that deadline);
//! - when the cap is reached, room is made by evicting the oldest *silent*
//!   connection of the source that holds the most pending ones; failing
//!   that, the oldest handshake of a source holding more than its `share`.
//!   Only when neither exists (a storm of real clients) does accepting wait
//!   for a handshake to finish, leaving the rest in the kernel's backlog.
//!
//! A real client sends its ClientHello as soon as it connects, so it is
//! silent for one round trip and the youngest entry of its source: the
//! last thing eviction would pick.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use tokio::sync::{Notify, oneshot};

/// The pending connections of one listener.
#[derive(Debug)]
pub(crate) struct Admission {
    inner: Mutex<Inner>,
    freed: Notify,
    cap: usize,
    share: usize,
}

#[derive(Debug, Default)]
struct Inner {
    next: u64,
    total: usize,
    evicted: u64,
    /// Per source, entries by admission order (oldest first).
    sources: HashMap<IpAddr, BTreeMap<u64, Entry>>,
}

#[derive(Debug)]
struct Entry {
    /// The client has sent its first bytes.
    talking: bool,
    /// Dropped (or fired) when the connection is evicted.
    _evict: oneshot::Sender<()>,
}

/// One admitted connection; dropping it frees its place.
#[derive(Debug)]
pub(crate) struct Ticket {
    admission: Arc<Admission>,
    source: IpAddr,
    id: u64,
}

impl Admission {
    pub(crate) fn new(cap: usize, share: usize) -> Arc<Self> {
        Arc::new(Admission {
            inner: Mutex::new(Inner::default()),
            freed: Notify::new(),
            cap: cap.max(1),
            share: share.max(1),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Connections pending now.
    pub(crate) fn pending(&self) -> usize {
        self.lock().total
    }

    /// Connections evicted so far.
    pub(crate) fn evicted(&self) -> u64 {
        self.lock().evicted
    }

    /// Waits until another connection may be admitted, evicting one where
    /// the rules allow.
    pub(crate) async fn room(&self) {
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            {
                let mut inner = self.lock();
                if inner.total < self.cap || inner.evict_one(self.share) {
                    return;
                }
            }
            freed.await;
        }
    }

    /// Tracks a newly accepted connection from `source`. The receiver
    /// resolves when the connection is evicted to make room.
    pub(crate) fn admit(self: &Arc<Self>, source: IpAddr) -> (Ticket, oneshot::Receiver<()>) {
        let (tx, rx) = oneshot::channel();
        let mut inner = self.lock();
        let id = inner.next;
        inner.next += 1;
        inner.total += 1;
        inner.sources.entry(source).or_default().insert(
            id,
            Entry {
                talking: false,
                _evict: tx,
            },
        );
        let ticket = Ticket {
            admission: self.clone(),
            source,
            id,
        };
        (ticket, rx)
    }
}

impl Inner {
    /// Evicts one connection if the rules allow; says whether it did.
    fn evict_one(&mut self, share: usize) -> bool {
        let mut sources: Vec<(&IpAddr, usize)> =
            self.sources.iter().map(|(ip, e)| (ip, e.len())).collect();
        sources.sort_by_key(|s| std::cmp::Reverse(s.1));
        let silent = sources.iter().find_map(|(ip, _)| {
            self.sources[*ip]
                .iter()
                .find(|(_, e)| !e.talking)
                .map(|(id, _)| (**ip, *id))
        });
        let victim = silent.or_else(|| {
            sources
                .first()
                .filter(|(_, n)| *n > share)
                .and_then(|(ip, _)| self.sources[*ip].keys().next().map(|id| (**ip, *id)))
        });
        let Some((ip, id)) = victim else {
            return false;
        };
        self.remove(ip, id);
        self.evicted += 1;
        true
    }

    fn remove(&mut self, ip: IpAddr, id: u64) -> bool {
        let Some(entries) = self.sources.get_mut(&ip) else {
            return false;
        };
        let removed = entries.remove(&id).is_some();
        if entries.is_empty() {
            self.sources.remove(&ip);
        }
        if removed {
            self.total -= 1;
        }
        removed
    }
}

impl Ticket {
    /// The client has spoken: it is no longer evicted as a silent one.
    pub(crate) fn talking(&self) {
        let mut inner = self.admission.lock();
        if let Some(e) = inner
            .sources
            .get_mut(&self.source)
            .and_then(|s| s.get_mut(&self.id))
        {
            e.talking = true;
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let removed = self.admission.lock().remove(self.source, self.id);
        if removed {
            self.admission.freed.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    #[tokio::test]
    async fn silent_connections_of_the_busiest_source_make_room_first() {
        let a = Admission::new(4, 2);
        let mut attacker: Vec<_> = (0..3).map(|_| a.admit(ip(1))).collect();
        let (honest, _) = a.admit(ip(2));
        honest.talking();
        assert_eq!(a.pending(), 4);
        tokio::time::timeout(Duration::from_secs(1), a.room())
            .await
            .expect("room is made by evicting a silent connection");
        assert_eq!(a.pending(), 3);
        // The oldest silent one of the busiest source went.
        assert!(matches!(
            attacker[0].1.try_recv(),
            Err(oneshot::error::TryRecvError::Closed)
        ));
        assert!(matches!(
            attacker[1].1.try_recv(),
            Err(oneshot::error::TryRecvError::Empty)
        ));
        drop(attacker);
        assert_eq!(a.pending(), 1, "dropped tickets free their places");
        drop(honest);
        assert_eq!(a.pending(), 0);
        assert_eq!(a.evicted(), 1);
    }

    #[tokio::test]
    async fn real_handshakes_are_evicted_only_beyond_a_sources_share() {
        let a = Admission::new(4, 2);
        let fair: Vec<_> = [1, 1, 2, 2].iter().map(|&i| a.admit(ip(i)).0).collect();
        fair.iter().for_each(Ticket::talking);
        assert!(
            tokio::time::timeout(Duration::from_millis(100), a.room())
                .await
                .is_err(),
            "nobody may be evicted: accepting waits"
        );
        // A finished handshake frees a place and wakes the waiter.
        let waiter = {
            let a = a.clone();
            tokio::spawn(async move { a.room().await })
        };
        drop(fair);
        tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .unwrap()
            .unwrap();

        let greedy: Vec<_> = (0..3).map(|_| a.admit(ip(3)).0).collect();
        greedy.iter().for_each(Ticket::talking);
        let (other, _) = a.admit(ip(4));
        other.talking();
        tokio::time::timeout(Duration::from_secs(1), a.room())
            .await
            .expect("a source over its share loses its oldest handshake");
        assert_eq!(a.pending(), 3);
        assert_eq!(a.evicted(), 1);
    }
}

//! Ports where no service runs: a connection is accepted and closed, and
//! reported once per source address per window.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{Conn, Handler};

/// A source is reported again after this long.
pub const WINDOW: Duration = Duration::from_secs(60);

/// Remembers which sources were reported recently.
#[derive(Debug, Default)]
pub struct Seen(Mutex<HashMap<IpAddr, Instant>>);

impl Seen {
    /// True when `ip` was not reported within the window (and records it).
    pub fn first(&self, ip: IpAddr, now: Instant) -> bool {
        let mut seen = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if seen.len() > 65_536 {
            seen.retain(|_, t| now.duration_since(*t) < WINDOW);
        }
        match seen.get(&ip) {
            Some(t) if now.duration_since(*t) < WINDOW => false,
            _ => {
                seen.insert(ip, now);
                true
            }
        }
    }
}

pub fn handler() -> Handler {
    let seen = Arc::new(Seen::default());
    Arc::new(move |conn: Conn| {
        let seen = seen.clone();
        Box::pin(async move {
            if seen.first(conn.peer.ip(), Instant::now()) {
                conn.ctx
                    .report(
                        conn.peer,
                        "portscan",
                        None,
                        format!("connection to port {}", conn.ctx.port),
                    )
                    .await;
            }
            drop(conn);
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn once_per_source_per_window() {
        let seen = Seen::default();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let t = Instant::now();
        assert!(seen.first(a, t));
        assert!(!seen.first(a, t + Duration::from_secs(5)));
        assert!(seen.first(b, t));
        assert!(seen.first(a, t + WINDOW));
    }
}

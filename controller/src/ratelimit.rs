//! Per-source limits on failed attempts (enrollment).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Counts failures per source address in fixed windows.
#[derive(Debug)]
pub struct FailureLimiter {
    limit: u32,
    window: Duration,
    sources: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

/// Above this many tracked sources, expired windows are purged.
const PURGE_ABOVE: usize = 10_000;

impl FailureLimiter {
    pub fn new(limit: u32, window: Duration) -> Self {
        FailureLimiter {
            limit,
            window,
            sources: Mutex::new(HashMap::new()),
        }
    }

    /// `Err(retry_after)` when `ip` has used up its failures in this window.
    pub fn check(&self, ip: IpAddr) -> Result<(), Duration> {
        let sources = self.sources.lock().unwrap_or_else(|e| e.into_inner());
        match sources.get(&ip) {
            Some((start, count)) if *count >= self.limit => {
                let elapsed = start.elapsed();
                if elapsed < self.window {
                    Err(self.window - elapsed)
                } else {
                    Ok(())
                }
            }
            _ => Ok(()),
        }
    }

    /// Counts one failure. Returns true when this failure reached the limit.
    pub fn fail(&self, ip: IpAddr) -> bool {
        let mut sources = self.sources.lock().unwrap_or_else(|e| e.into_inner());
        if sources.len() > PURGE_ABOVE {
            let window = self.window;
            sources.retain(|_, (start, _)| start.elapsed() < window);
        }
        let now = Instant::now();
        let entry = sources.entry(ip).or_insert((now, 0));
        if entry.0.elapsed() >= self.window {
            *entry = (now, 0);
        }
        entry.1 += 1;
        entry.1 == self.limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_per_source_and_window() {
        let limiter = FailureLimiter::new(2, Duration::from_millis(50));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        assert!(limiter.check(a).is_ok());
        assert!(!limiter.fail(a));
        assert!(limiter.fail(a));
        assert!(limiter.check(a).is_err());
        assert!(limiter.check(b).is_ok());
        std::thread::sleep(Duration::from_millis(60));
        assert!(limiter.check(a).is_ok());
    }
}

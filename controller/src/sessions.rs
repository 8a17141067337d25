//! Console sign-in without a password store: an admin authenticated by
//! their certificate asks for a one-time link (`rusectl console`); opening
//! it trades the link for a browser session. Links and sessions are kept
//! by their SHA-256 only, so neither can be read back from memory or logs;
//! each session has a CSRF token of its own.
//!
//! Sessions live in this controller's memory: a restart signs everyone
//! out, and with several replicas a session works on the replica that
//! made it (docs/console.md).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ruse_proto::types::AdminName;

/// How long a sign-in link may wait to be opened.
pub const LINK_TTL: Duration = Duration::from_secs(120);
/// A session not used for this long ends.
pub const IDLE: Duration = Duration::from_secs(30 * 60);
/// A session ends this long after sign-in, however busy.
pub const ABSOLUTE: Duration = Duration::from_secs(12 * 3600);
/// Links and sessions kept at most (the oldest go first beyond them).
const MAX_LINKS: usize = 1024;
const MAX_SESSIONS: usize = 4096;

/// A signed-in browser.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub admin: AdminName,
    /// What every form of this session must carry.
    pub csrf: String,
}

#[derive(Debug)]
struct Link {
    admin: AdminName,
    expires: Instant,
}

#[derive(Debug)]
struct Live {
    session: Session,
    created: Instant,
    last: Instant,
}

/// Sign-in links and sessions.
#[derive(Debug, Default)]
pub struct Sessions {
    links: Mutex<HashMap<String, Link>>,
    live: Mutex<HashMap<String, Live>>,
}

/// 32 random bytes, URL-safe.
fn secret() -> String {
    use base64::Engine;
    let mut bytes = [0u8; 32];
    ruse_proto::types::random_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn digest(secret: &str) -> String {
    ruse_proto::types::hex(ring::digest::digest(&ring::digest::SHA256, secret.as_bytes()).as_ref())
}

/// Whether two secrets are equal, in time independent of where they differ.
pub fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

impl Sessions {
    /// A one-time sign-in link for `admin`, valid for `ttl`.
    pub fn mint(&self, admin: AdminName, ttl: Duration) -> String {
        let token = secret();
        let now = Instant::now();
        let mut links = self.links.lock().unwrap_or_else(|e| e.into_inner());
        links.retain(|_, l| l.expires > now);
        if links.len() >= MAX_LINKS
            && let Some(oldest) = links
                .iter()
                .min_by_key(|(_, l)| l.expires)
                .map(|(k, _)| k.clone())
        {
            links.remove(&oldest);
        }
        links.insert(
            digest(&token),
            Link {
                admin,
                expires: now + ttl,
            },
        );
        token
    }

    /// Trades a link for a session: its id (the cookie) and the session.
    /// `None` for a link used before, expired or never made.
    pub fn redeem(&self, token: &str) -> Option<(String, Session)> {
        let link = self
            .links
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&digest(token))?;
        let now = Instant::now();
        if link.expires <= now {
            return None;
        }
        let id = secret();
        let session = Session {
            admin: link.admin,
            csrf: secret(),
        };
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        live.retain(|_, s| alive(s, now));
        if live.len() >= MAX_SESSIONS
            && let Some(oldest) = live
                .iter()
                .min_by_key(|(_, s)| s.last)
                .map(|(k, _)| k.clone())
        {
            live.remove(&oldest);
        }
        live.insert(
            digest(&id),
            Live {
                session: session.clone(),
                created: now,
                last: now,
            },
        );
        Some((id, session))
    }

    /// The session of cookie `id`, if it is alive (and now used).
    pub fn check(&self, id: &str) -> Option<Session> {
        let key = digest(id);
        let now = Instant::now();
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        let s = live.get_mut(&key)?;
        if !alive(s, now) {
            live.remove(&key);
            return None;
        }
        s.last = now;
        Some(s.session.clone())
    }

    /// Ends the session of cookie `id`.
    pub fn end(&self, id: &str) {
        self.live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&digest(id));
    }

    /// Ends every session and unused link of `admin`: how many of each
    /// there were.
    pub fn end_all(&self, admin: &AdminName) -> (usize, usize) {
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        let before = live.len();
        live.retain(|_, s| s.session.admin != *admin);
        let sessions = before - live.len();
        drop(live);
        let mut links = self.links.lock().unwrap_or_else(|e| e.into_inner());
        let before = links.len();
        links.retain(|_, l| l.admin != *admin);
        (sessions, before - links.len())
    }
}

/// Where the console of a controller called `server_names` is reached:
/// its first server name and the console's port.
pub fn base_url(server_names: &[String], port: u16) -> String {
    let host = server_names.first().map_or("localhost", String::as_str);
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_owned()
    };
    format!("https://{host}:{port}")
}

fn alive(s: &Live, now: Instant) -> bool {
    now.duration_since(s.last) < IDLE && now.duration_since(s.created) < ABSOLUTE
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admin(name: &str) -> AdminName {
        name.parse().unwrap()
    }

    #[test]
    fn a_link_signs_in_once() {
        let s = Sessions::default();
        let link = s.mint(admin("alice"), LINK_TTL);
        let (id, session) = s.redeem(&link).unwrap();
        assert_eq!(session.admin, admin("alice"));
        assert_eq!(s.check(&id), Some(session.clone()));
        assert_eq!(s.redeem(&link), None, "used once");
        assert_eq!(s.redeem("made-up"), None);
        assert_eq!(s.check(&link), None, "a link is not a session");
        s.end(&id);
        assert_eq!(s.check(&id), None);
    }

    #[test]
    fn an_expired_link_is_refused_and_sessions_end_per_admin() {
        let s = Sessions::default();
        let link = s.mint(admin("bob"), Duration::ZERO);
        assert_eq!(s.redeem(&link), None);
        let (a, _) = s.redeem(&s.mint(admin("bob"), LINK_TTL)).unwrap();
        let (b, _) = s.redeem(&s.mint(admin("carol"), LINK_TTL)).unwrap();
        let unused = s.mint(admin("bob"), LINK_TTL);
        assert_eq!(s.end_all(&admin("bob")), (1, 1));
        assert_eq!(s.redeem(&unused), None, "its links end too");
        assert_eq!(s.check(&a), None);
        assert!(s.check(&b).is_some());
        assert!(same("abc", "abc") && !same("abc", "abd") && !same("abc", "ab"));
    }
}

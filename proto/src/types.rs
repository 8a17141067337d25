//! Domain types shared by the controller, the agent and the CLI.
//!
//! Each type checks its preconditions when it is built (`FromStr`,
//! `TryFrom`), so code holding an [`AgentId`] or a [`Labels`] never has to
//! check it again.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Why a value could not become a domain type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidValue {
    #[error("invalid {what} {value:?}: {reason}")]
    Invalid {
        what: &'static str,
        value: String,
        reason: &'static str,
    },
}

fn invalid(what: &'static str, value: &str, reason: &'static str) -> InvalidValue {
    // Never echo unbounded attacker input back in an error.
    let mut value: String = value.chars().take(80).collect();
    if value.len() >= 80 {
        value.push('…');
    }
    InvalidValue::Invalid {
        what,
        value,
        reason,
    }
}

/// Characters allowed in ids and names that end up in a SPIFFE path segment.
fn check_segment(what: &'static str, s: &str) -> Result<(), InvalidValue> {
    if s.is_empty() || s.len() > 64 {
        return Err(invalid(what, s, "must be 1 to 64 characters"));
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(invalid(
            what,
            s,
            "only lowercase letters, digits, '-', '_' and '.' are allowed",
        ));
    }
    if s.starts_with('.') || s.starts_with('-') {
        return Err(invalid(what, s, "must start with a letter, digit or '_'"));
    }
    Ok(())
}

macro_rules! segment_newtype {
    ($(#[$meta:meta])* $name:ident, $what:literal) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = InvalidValue;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                check_segment($what, s)?;
                Ok(Self(s.to_owned()))
            }
        }

        impl TryFrom<String> for $name {
            type Error = InvalidValue;
            fn try_from(s: String) -> Result<Self, Self::Error> {
                check_segment($what, &s)?;
                Ok(Self(s))
            }
        }

        impl From<$name> for String {
            fn from(v: $name) -> String {
                v.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

segment_newtype!(
    /// An enrolled agent. Chosen by the controller at enrollment.
    AgentId,
    "agent id"
);
segment_newtype!(
    /// An administrator, as named in their certificate.
    AdminName,
    "admin name"
);
segment_newtype!(
    /// A bootstrap token's public identifier (the part before the dot).
    TokenId,
    "token id"
);

impl AgentId {
    /// A new, unique, time-ordered agent id.
    pub fn generate() -> Self {
        Self(new_ulid())
    }
}

impl TokenId {
    /// A new random token id: twelve hexadecimal digits (48 bits).
    pub fn generate() -> Self {
        let mut bytes = [0u8; 6];
        random_bytes(&mut bytes);
        Self(hex(&bytes))
    }
}

/// The SPIFFE trust domain of one Ruse installation (`ruse.local`,
/// `deception.hospital.example`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TrustDomain(String);

impl TrustDomain {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for TrustDomain {
    type Err = InvalidValue;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() || s.len() > 255 {
            return Err(invalid("trust domain", s, "must be 1 to 255 characters"));
        }
        let ok = s.split('.').all(|label| {
            !label.is_empty()
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        });
        if !ok {
            return Err(invalid(
                "trust domain",
                s,
                "must be a lowercase DNS-style name such as ruse.local",
            ));
        }
        Ok(Self(s.to_owned()))
    }
}

impl TryFrom<String> for TrustDomain {
    type Error = InvalidValue;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<TrustDomain> for String {
    fn from(v: TrustDomain) -> String {
        v.0
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Who a certificate says its holder is. Read from the URI SAN only.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Identity {
    Agent(AgentId),
    Admin(AdminName),
}

impl Identity {
    /// `spiffe://<trust-domain>/agent/<id>` or `.../admin/<name>`.
    pub fn to_uri(&self, td: &TrustDomain) -> String {
        match self {
            Identity::Agent(id) => format!("spiffe://{td}/agent/{id}"),
            Identity::Admin(name) => format!("spiffe://{td}/admin/{name}"),
        }
    }

    /// Parses a SPIFFE URI of this trust domain.
    pub fn from_uri(td: &TrustDomain, uri: &str) -> Result<Self, InvalidValue> {
        let rest = uri
            .strip_prefix("spiffe://")
            .ok_or_else(|| invalid("identity", uri, "not a spiffe:// URI"))?;
        let (domain, path) = rest
            .split_once('/')
            .ok_or_else(|| invalid("identity", uri, "no path"))?;
        if domain != td.as_str() {
            return Err(invalid("identity", uri, "belongs to another trust domain"));
        }
        match path.split_once('/') {
            Some(("agent", id)) => Ok(Identity::Agent(id.parse()?)),
            Some(("admin", name)) => Ok(Identity::Admin(name.parse()?)),
            _ => Err(invalid(
                "identity",
                uri,
                "path is neither /agent/<id> nor /admin/<name>",
            )),
        }
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Identity::Agent(id) => write!(f, "agent/{id}"),
            Identity::Admin(name) => write!(f, "admin/{name}"),
        }
    }
}

/// Admin roles, ordered by what they may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads everything.
    Viewer,
    /// Also creates tokens, revokes agents, manages campaigns.
    Operator,
    /// Also issues admin certificates.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

impl FromStr for Role {
    type Err = InvalidValue;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "viewer" => Ok(Role::Viewer),
            "operator" => Ok(Role::Operator),
            "admin" => Ok(Role::Admin),
            _ => Err(invalid("role", s, "expected viewer, operator or admin")),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Kubernetes-style labels: keys and values of letters, digits, `-`, `_`,
/// `.` (keys may have one `prefix/`), at most 63 characters each.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    try_from = "BTreeMap<String, String>",
    into = "BTreeMap<String, String>"
)]
pub struct Labels(BTreeMap<String, String>);

/// At most this many labels on one object.
pub const MAX_LABELS: usize = 64;

fn check_label_part(what: &'static str, s: &str, allow_empty: bool) -> Result<(), InvalidValue> {
    if s.is_empty() {
        return if allow_empty {
            Ok(())
        } else {
            Err(invalid(what, s, "must not be empty"))
        };
    }
    if s.len() > 63 {
        return Err(invalid(what, s, "must be at most 63 characters"));
    }
    let bytes = s.as_bytes();
    let alnum = |b: u8| b.is_ascii_alphanumeric();
    if !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
        return Err(invalid(
            what,
            s,
            "must start and end with a letter or digit",
        ));
    }
    if !bytes
        .iter()
        .all(|&b| alnum(b) || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(invalid(
            what,
            s,
            "only letters, digits, '-', '_' and '.' are allowed",
        ));
    }
    Ok(())
}

fn check_label(key: &str, value: &str) -> Result<(), InvalidValue> {
    match key.split_once('/') {
        Some((prefix, name)) => {
            if prefix.is_empty() || prefix.len() > 253 || prefix.contains('/') {
                return Err(invalid("label key", key, "prefix must be a DNS name"));
            }
            check_label_part("label key", prefix, false)?;
            check_label_part("label key", name, false)?;
        }
        None => check_label_part("label key", key, false)?,
    }
    check_label_part("label value", value, true)
}

impl Labels {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn insert(&mut self, key: &str, value: &str) -> Result<(), InvalidValue> {
        check_label(key, value)?;
        if !self.0.contains_key(key) && self.0.len() >= MAX_LABELS {
            return Err(invalid("labels", key, "too many labels (at most 64)"));
        }
        self.0.insert(key.to_owned(), value.to_owned());
        Ok(())
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `self` overlaid with `other`: where both have a key, `other` wins.
    pub fn overlaid_with(&self, other: &Labels) -> Labels {
        let mut out = self.0.clone();
        out.extend(other.0.iter().map(|(k, v)| (k.clone(), v.clone())));
        Labels(out)
    }

    /// These labels without `keys`.
    pub fn without(&self, keys: &[String]) -> Labels {
        let mut out = self.0.clone();
        for key in keys {
            out.remove(key);
        }
        Labels(out)
    }

    /// True when every key of `selector` is present here with the same value.
    pub fn matches(&self, selector: &Labels) -> bool {
        selector.iter().all(|(k, v)| self.get(k) == Some(v))
    }

    /// Parses `k=v` pairs, separated by commas or given separately.
    pub fn parse_pairs<'a>(pairs: impl IntoIterator<Item = &'a str>) -> Result<Self, InvalidValue> {
        let mut labels = Labels::new();
        for pair in pairs {
            for item in pair.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                let (k, v) = item
                    .split_once('=')
                    .ok_or_else(|| invalid("label", item, "expected key=value"))?;
                labels.insert(k.trim(), v.trim())?;
            }
        }
        Ok(labels)
    }

    pub fn into_map(self) -> BTreeMap<String, String> {
        self.0
    }

    pub fn to_map<M: FromIterator<(String, String)>>(&self) -> M {
        self.0.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }
}

impl<K: AsRef<str>, V: AsRef<str>> TryFrom<Vec<(K, V)>> for Labels {
    type Error = InvalidValue;
    fn try_from(pairs: Vec<(K, V)>) -> Result<Self, Self::Error> {
        let mut labels = Labels::new();
        for (k, v) in pairs {
            labels.insert(k.as_ref(), v.as_ref())?;
        }
        Ok(labels)
    }
}

impl TryFrom<BTreeMap<String, String>> for Labels {
    type Error = InvalidValue;
    fn try_from(map: BTreeMap<String, String>) -> Result<Self, Self::Error> {
        if map.len() > MAX_LABELS {
            return Err(invalid("labels", "", "too many labels (at most 64)"));
        }
        for (k, v) in &map {
            check_label(k, v)?;
        }
        Ok(Labels(map))
    }
}

impl TryFrom<std::collections::HashMap<String, String>> for Labels {
    type Error = InvalidValue;
    fn try_from(map: std::collections::HashMap<String, String>) -> Result<Self, Self::Error> {
        Labels::try_from(map.into_iter().collect::<BTreeMap<_, _>>())
    }
}

impl From<Labels> for BTreeMap<String, String> {
    fn from(l: Labels) -> Self {
        l.0
    }
}

impl fmt::Display for Labels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for (k, v) in &self.0 {
            if !first {
                f.write_str(",")?;
            }
            first = false;
            write!(f, "{k}={v}")?;
        }
        Ok(())
    }
}

/// Milliseconds since the Unix epoch, UTC.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct UnixMs(pub i64);

impl UnixMs {
    pub fn now() -> Self {
        Self::from(SystemTime::now())
    }

    pub fn saturating_add(self, d: Duration) -> Self {
        UnixMs(
            self.0
                .saturating_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
        )
    }

    pub fn saturating_sub(self, d: Duration) -> Self {
        UnixMs(
            self.0
                .saturating_sub(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
        )
    }

    /// How long from `self` until `later` (zero if `later` is not later).
    pub fn until(self, later: UnixMs) -> Duration {
        Duration::from_millis(u64::try_from(later.0.saturating_sub(self.0)).unwrap_or(0))
    }

    pub fn to_system_time(self) -> SystemTime {
        match u64::try_from(self.0) {
            Ok(ms) => UNIX_EPOCH + Duration::from_millis(ms),
            Err(_) => UNIX_EPOCH,
        }
    }

    /// RFC 3339 in UTC with second precision (`2026-11-28T14:03:09Z`).
    pub fn rfc3339(self) -> String {
        let secs = self.0.div_euclid(1000);
        let days = secs.div_euclid(86_400);
        let rem = secs.rem_euclid(86_400);
        let (y, m, d) = civil_from_days(days);
        format!(
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
            rem / 3600,
            (rem % 3600) / 60,
            rem % 60
        )
    }
}

impl From<SystemTime> for UnixMs {
    fn from(t: SystemTime) -> Self {
        match t.duration_since(UNIX_EPOCH) {
            Ok(d) => UnixMs(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
            Err(e) => UnixMs(-i64::try_from(e.duration().as_millis()).unwrap_or(i64::MAX)),
        }
    }
}

impl fmt::Display for UnixMs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.rfc3339())
    }
}

impl UnixMs {
    /// Parses `2026-12-31T23:59:59Z` (UTC, optional fraction ignored) or a
    /// date `2026-12-31` (midnight UTC).
    pub fn parse_rfc3339(s: &str) -> Result<UnixMs, InvalidValue> {
        let bad = |reason| invalid("time", s, reason);
        let s = s.trim();
        let (date, time) = match s.split_once(['T', 't', ' ']) {
            Some((d, t)) => (d, Some(t)),
            None => (s, None),
        };
        let num = |p: &str, lo: i64, hi: i64| -> Result<i64, InvalidValue> {
            let n: i64 = p
                .parse()
                .map_err(|_| bad("expected YYYY-MM-DDTHH:MM:SSZ"))?;
            if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) || n < lo || n > hi {
                return Err(bad("a field is out of range"));
            }
            Ok(n)
        };
        let parts: Vec<&str> = date.split('-').collect();
        let [y, m, d] = parts.as_slice() else {
            return Err(bad("expected YYYY-MM-DD"));
        };
        let (y, m, d) = (num(y, 1970, 9999)?, num(m, 1, 12)?, num(d, 1, 31)?);
        let mut secs = days_from_civil(y, m as u32, d as u32) * 86_400;
        if let Some(t) = time {
            let t = t
                .strip_suffix(['Z', 'z'])
                .ok_or_else(|| bad("times must be UTC (end in Z)"))?;
            let t = t.split('.').next().unwrap_or(t);
            let hms: Vec<&str> = t.split(':').collect();
            let [h, mi, sec] = hms.as_slice() else {
                return Err(bad("expected HH:MM:SS"));
            };
            secs += num(h, 0, 23)? * 3600 + num(mi, 0, 59)? * 60 + num(sec, 0, 60)?;
        }
        if civil_from_days(secs.div_euclid(86_400)) != (y, m as u32, d as u32) {
            return Err(bad("no such date"));
        }
        Ok(UnixMs(secs * 1000))
    }
}

/// (year, month, day) to days since 1970-01-01, proleptic Gregorian.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Parses durations such as `250ms`, `30s`, `5m`, `1h`, `7d`, `1h30m`.
pub fn parse_duration(s: &str) -> Result<Duration, InvalidValue> {
    let s = s.trim();
    if s.is_empty() {
        return Err(invalid("duration", s, "empty"));
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(invalid(
                "duration",
                s,
                "expected a number followed by ms, s, m, h or d",
            ));
        }
        let n: u64 = rest[..digits]
            .parse()
            .map_err(|_| invalid("duration", s, "number too large"))?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let unit_ms: u64 = match &rest[..unit_len] {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => {
                return Err(invalid("duration", s, "unit must be one of ms, s, m, h, d"));
            }
        };
        rest = &rest[unit_len..];
        let ms = n
            .checked_mul(unit_ms)
            .ok_or_else(|| invalid("duration", s, "too large"))?;
        total = total
            .checked_add(Duration::from_millis(ms))
            .ok_or_else(|| invalid("duration", s, "too large"))?;
    }
    Ok(total)
}

/// Formats a duration the way [`parse_duration`] reads it, largest units
/// first (`1h30m`, `45s`, `250ms`).
pub fn format_duration(d: Duration) -> String {
    let mut ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    if ms == 0 {
        return "0s".to_owned();
    }
    let mut out = String::new();
    for (unit, size) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
        ("ms", 1),
    ] {
        if ms >= size {
            out.push_str(&format!("{}{unit}", ms / size));
            ms %= size;
        }
    }
    out
}

/// A serde adapter for durations written as `30s`, `24h` in config files.
pub mod duration_str {
    use super::{format_duration, parse_duration};
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_duration(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        parse_duration(&s).map_err(serde::de::Error::custom)
    }
}

/// A random (version 4) UUID in its usual text form: STIX ids, Splunk
/// HEC channels, Kubernetes audit ids.
pub fn uuid4() -> String {
    let mut b = [0u8; 16];
    random_bytes(&mut b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex(&b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// Fills `buf` from the operating system's secure random source.
pub fn random_bytes(buf: &mut [u8]) {
    use ring::rand::SecureRandom;
    use std::cell::RefCell;
    const POOL: usize = 4096;
    // Small requests are served from a per-thread pool of OS randomness,
    // refilled 4 KiB at a time: a fleet-wide campaign generates hundreds of
    // thousands of secrets, and one getrandom call each was most of its
    // cost. Bytes handed out are wiped from the pool.
    thread_local! {
        static RANDOM: RefCell<(Vec<u8>, usize)> = const { RefCell::new((Vec::new(), 0)) };
    }
    let fill = |out: &mut [u8]| {
        // The system RNG failing is not recoverable and does not happen on
        // Linux after early boot; refuse to continue with predictable bytes.
        if ring::rand::SystemRandom::new().fill(out).is_err() {
            panic!("the operating system's random number generator failed");
        }
    };
    if buf.len() > 256 {
        fill(buf);
        return;
    }
    RANDOM.with(|pool| {
        let mut pool = pool.borrow_mut();
        let (bytes, used) = &mut *pool;
        if bytes.len() != POOL || POOL - *used < buf.len() {
            bytes.resize(POOL, 0);
            fill(bytes);
            *used = 0;
        }
        let taken = &mut bytes[*used..*used + buf.len()];
        buf.copy_from_slice(taken);
        taken.fill(0);
        *used += buf.len();
    });
}

const CROCKFORD: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";

/// A ULID in lowercase Crockford base32: 48 bits of milliseconds then 80
/// random bits, so ids sort by creation time.
pub fn new_ulid() -> String {
    let ms = u128::try_from(UnixMs::now().0.max(0)).unwrap_or(0) & ((1 << 48) - 1);
    let mut rnd = [0u8; 10];
    random_bytes(&mut rnd);
    let mut value = ms << 80;
    for (i, b) in rnd.iter().enumerate() {
        value |= u128::from(*b) << (8 * (9 - i));
    }
    (0..26)
        .rev()
        .map(|i| CROCKFORD[((value >> (5 * i)) & 31) as usize] as char)
        .collect()
}

/// The smallest ULID of millisecond `ms` (for range scans).
pub fn ulid_floor(ms: i64) -> String {
    let ms = u128::try_from(ms.max(0)).unwrap_or(0) & ((1 << 48) - 1);
    let value = ms << 80;
    (0..26)
        .rev()
        .map(|i| CROCKFORD[((value >> (5 * i)) & 31) as usize] as char)
        .collect()
}

/// Characters that change how text around them is displayed without being
/// visible themselves: control characters, the bidirectional overrides,
/// embeddings and isolates (U+202E turns `exe.txt` into what looks like
/// `txt.exe`), directional marks and zero-width characters. Names, paths
/// and anything else an intruder or a careless admin writes and a person
/// later reads must not carry them.
pub fn hides_text(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061C}'
                | '\u{200B}'..='\u{200F}'
                | '\u{202A}'..='\u{202E}'
                | '\u{2060}'..='\u{2069}'
                | '\u{FEFF}'
        )
}

/// The AE title a DICOM decoy answers to: its name in capitals without
/// hyphens, at most 16 characters. The `pacs-config` lure names it as the
/// archive's; the decoy refuses associations called to any other, as an
/// archive does.
pub fn dicom_ae_title(decoy: &str) -> String {
    decoy
        .to_uppercase()
        .replace('-', "")
        .chars()
        .take(16)
        .collect()
}

/// Lowercase hexadecimal.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    s
}

/// Parses lowercase or uppercase hexadecimal.
pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    s.as_bytes()
        .chunks(2)
        .map(|pair| {
            let hi = (pair[0] as char).to_digit(16)?;
            let lo = (pair[1] as char).to_digit(16)?;
            u8::try_from(hi * 16 + lo).ok()
        })
        .collect()
}

#[cfg(test)]
mod tests;

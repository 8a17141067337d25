//! Decoy network services, run inside the agent when a `Decoy` resource
//! assigns them.
//!
//! Every service presents a realistic banner and flow, never grants
//! access, and reports every credential presented (and every connection
//! that presented none) as an event. Every service is bounded: at most
//! [`MAX_CONNECTIONS_PER_SERVICE`] connections, [`MAX_CONNECTIONS_PER_SOURCE`]
//! from one address, a read timeout on every read and a lifetime cap on
//! every connection ([`Limits`]). Parsers of attacker bytes never panic and are fuzzed
//! (`fuzz/`).

pub mod der;
pub mod dicom;
pub mod ftp;
pub mod hl7;
pub mod http;
pub mod kube;
pub mod mssql;
pub mod mysql;
pub mod ntlm;
pub mod portscan;
pub mod rdp;
pub mod smb;
pub mod ssh;
pub mod telnet;

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinHandle;

use ruse_proto::convert::{DecoyContact, PresentedCredential};
use ruse_proto::event::AgentEvent;
use ruse_proto::spec::{DecoyService, DecoySpec, Resource};
use ruse_proto::types::{UnixMs, new_ulid};

use crate::outbox::EventSink;

/// Resource kind of decoys.
pub const DECOY: &str = "decoy";
/// Concurrent connections one service accepts.
pub const MAX_CONNECTIONS_PER_SERVICE: usize = 256;
/// Concurrent connections from one source address to one service.
pub const MAX_CONNECTIONS_PER_SOURCE: usize = 16;
/// Time limits of every decoy connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The longest a single read may wait.
    pub read_timeout: Duration,
    /// The longest a connection may last, however slowly it sends.
    pub lifetime: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            read_timeout: Duration::from_secs(20),
            lifetime: Duration::from_secs(120),
        }
    }
}
/// Events batched before one outbox write.
const EVENT_BATCH: usize = 512;
/// Events a decoy may have reported and not yet written; beyond this its
/// connections wait (see `ServiceCtx::report`).
const EVENT_QUEUE: usize = 2 * EVENT_BATCH;
/// Under load (more than one event waiting), how long the writer gathers
/// more before it syncs: each sync is a device flush (a VM exit on a
/// virtual disk), and a flood brought ~1,000 a second of 15 events each.
const EVENT_GATHER: Duration = Duration::from_millis(2);
/// How long decoy events wait for room in a full outbox (the controller
/// unreachable or behind) before they are counted as lost. They never push
/// older events out: a flood on a decoy must not erase lure touches.
const OUTBOX_PATIENCE: Duration = Duration::from_secs(30);
const STATE_FILE: &str = "decoys.json";

/// Why a decoy could not run.
#[derive(Debug, thiserror::Error)]
pub enum DecoyError {
    #[error("invalid decoy spec: {0}")]
    Spec(String),
    #[error("cannot listen on {addr} for {protocol}: {source}")]
    Bind {
        addr: SocketAddr,
        protocol: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Setup(String),
    #[error("cannot save the decoy state {path}: {reason}")]
    State { path: String, reason: String },
}

/// What a service knows about itself, and where it reports.
#[derive(Debug)]
pub struct ServiceCtx {
    pub decoy: String,
    pub address: String,
    pub protocol: String,
    pub port: u16,
    /// Where this service keeps keys and certificates.
    pub dir: PathBuf,
    pub limits: Limits,
    /// The decoy's `refusal_delay`, if set; otherwise each protocol waits
    /// as the server it imitates does.
    pub refusal_delay: Option<Duration>,
    /// What a console-like service (Telnet) shows first: the service's own
    /// banner or its device's.
    pub banner: String,
    reporter: mpsc::Sender<AgentEvent>,
    /// Shared with the agent's rate-limited counter (reported in heartbeats).
    lost: Arc<std::sync::atomic::AtomicU64>,
}

impl ServiceCtx {
    /// Waits before refusing a login: `usual` (what the imitated server
    /// does) unless the decoy sets its own delay.
    pub async fn refusal_pause(&self, usual: Duration) {
        let wait = self.refusal_delay.unwrap_or(usual);
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }

    /// Reports something a client did. When the agent is behind (the
    /// event queue is full) the connection waits for room before it gets
    /// its answer, as a loaded server answers late: a flood slows to what
    /// the agent records durably instead of losing attempts.
    pub async fn report(
        &self,
        peer: SocketAddr,
        kind: &str,
        credential: Option<PresentedCredential>,
        detail: String,
    ) {
        let credential = credential.map(bounded);
        let event = AgentEvent {
            id: new_ulid(),
            kind: kind.into(),
            observed_ms: UnixMs::now().0,
            attribution: "decoy".into(),
            detail: truncate(detail, 512),
            decoy: Some(DecoyContact {
                name: self.decoy.clone(),
                protocol: self.protocol.clone(),
                port: self.port,
                source_ip: peer.ip().to_string(),
                source_port: peer.port(),
            }),
            credential,
            ..Default::default()
        };
        if self.reporter.send(event).await.is_err() {
            self.lost.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// A credential with only the fields a service saw.
pub fn credential() -> PresentedCredential {
    PresentedCredential::default()
}

/// `s` cut to at most `max` bytes, on a character boundary.
pub fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut at = max;
        while !s.is_char_boundary(at) {
            at -= 1;
        }
        s.truncate(at);
    }
    s
}

/// A credential within the sizes the controller accepts: whatever an
/// attacker sends, the event is never refused for its size.
fn bounded(c: PresentedCredential) -> PresentedCredential {
    PresentedCredential {
        username: truncate(c.username, 256),
        password: truncate(c.password, 256),
        key_fingerprint: truncate(c.key_fingerprint, 128),
        key_type: truncate(c.key_type, 64),
        ae_title: truncate(c.ae_title, 16),
        called_ae_title: truncate(c.called_ae_title, 16),
        token: truncate(c.token, 4096),
        domain: truncate(c.domain, 256),
        workstation: truncate(c.workstation, 256),
        client: truncate(c.client, 256),
        host: truncate(c.host, 256),
        application: truncate(c.application, 64),
        // Only whole: a scheme byte, a scramble and a response.
        mysql_response: if c.mysql_response.len() <= ruse_proto::convert::MAX_MYSQL_RESPONSE {
            c.mysql_response
        } else {
            Vec::new()
        },
        // A cut response proves nothing: drop one that is too long.
        ntlm_response: if c.ntlm_response.len() <= ruse_proto::convert::MAX_NTLM_RESPONSE {
            c.ntlm_response
        } else {
            Vec::new()
        },
    }
}

fn timed_out() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::TimedOut, "read timed out")
}

/// Reads one line (ending in `\n`, without it or a `\r` before it) of at
/// most `max` bytes, each read within `timeout`. Reads ahead in chunks:
/// what follows the line stays in `pending` for the next call (a byte per
/// read was a system call and a timer per byte, most of an FTP decoy's CPU
/// under a login flood). `Ok(None)` at end of stream; an error for a line
/// too long or a timeout.
pub async fn read_line<R: AsyncRead + Unpin>(
    r: &mut R,
    pending: &mut Vec<u8>,
    max: usize,
    timeout: Duration,
) -> std::io::Result<Option<String>> {
    let too_long = || std::io::Error::new(std::io::ErrorKind::InvalidData, "line too long");
    let mut chunk = [0u8; 512];
    loop {
        if let Some(end) = pending.iter().position(|b| *b == b'\n') {
            if end > max {
                return Err(too_long());
            }
            let mut line: Vec<u8> = pending.drain(..=end).collect();
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            return Ok(Some(String::from_utf8_lossy(&line).into_owned()));
        }
        if pending.len() > max {
            return Err(too_long());
        }
        let n = tokio::time::timeout(timeout, r.read(&mut chunk))
            .await
            .map_err(|_| timed_out())??;
        if n == 0 {
            return Ok(if pending.is_empty() {
                None
            } else {
                let line = std::mem::take(pending);
                Some(String::from_utf8_lossy(&line).into_owned())
            });
        }
        pending.extend_from_slice(&chunk[..n]);
    }
}

/// Reads exactly `buf.len()` bytes within `timeout`.
pub async fn read_exact<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut [u8],
    timeout: Duration,
) -> std::io::Result<()> {
    tokio::time::timeout(timeout, r.read_exact(buf))
        .await
        .map_err(|_| timed_out())?
        .map(|_| ())
}

/// Per-source connection counts of one service.
#[derive(Debug, Default)]
struct Sources(Mutex<HashMap<IpAddr, usize>>);

struct SourceSlot {
    sources: Arc<Sources>,
    ip: IpAddr,
}

impl Sources {
    fn take(self: &Arc<Self>, ip: IpAddr) -> Option<SourceSlot> {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let n = map.entry(ip).or_default();
        if *n >= MAX_CONNECTIONS_PER_SOURCE {
            return None;
        }
        *n += 1;
        Some(SourceSlot {
            sources: self.clone(),
            ip,
        })
    }
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut map = self.sources.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

/// One accepted connection.
#[derive(Debug)]
pub struct Conn {
    pub stream: TcpStream,
    pub peer: SocketAddr,
    pub ctx: Arc<ServiceCtx>,
    /// Read by `read_line` past the end of its line, not yet consumed.
    pending: Vec<u8>,
}

impl Conn {
    /// Reads exactly `buf.len()` bytes within the read timeout, starting
    /// with any that `read_line` read ahead.
    pub async fn read_exact(&mut self, buf: &mut [u8]) -> std::io::Result<()> {
        let ahead = self.pending.len().min(buf.len());
        buf[..ahead].copy_from_slice(&self.pending[..ahead]);
        self.pending.drain(..ahead);
        read_exact(
            &mut self.stream,
            &mut buf[ahead..],
            self.ctx.limits.read_timeout,
        )
        .await
    }

    /// Reads one line of at most `max` bytes within the read timeout.
    pub async fn read_line(&mut self, max: usize) -> std::io::Result<Option<String>> {
        read_line(
            &mut self.stream,
            &mut self.pending,
            max,
            self.ctx.limits.read_timeout,
        )
        .await
    }
}

/// A running service.
#[derive(Debug)]
struct Running {
    spec: DecoyService,
    accept: JoinHandle<()>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Applied {
    revision: u64,
    #[serde(with = "hex_bytes")]
    spec: Vec<u8>,
}

mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&ruse_proto::types::hex(b))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        ruse_proto::types::unhex(&s).ok_or_else(|| serde::de::Error::custom("invalid hex"))
    }
}

/// Runs the decoys assigned to this agent.
#[derive(Debug)]
pub struct DecoyManager {
    dir: PathBuf,
    applied: BTreeMap<String, Applied>,
    /// By resource id, then port.
    running: HashMap<String, HashMap<u16, Running>>,
    reporter: mpsc::Sender<AgentEvent>,
    limits: Limits,
    lost: Arc<std::sync::atomic::AtomicU64>,
    /// Decoys that could not start, for the heartbeat.
    problems: BTreeMap<String, String>,
}

impl DecoyManager {
    /// Opens the decoy state in `state_dir` and starts the task that
    /// records decoy events into `sink` in batches. Call [`Self::resume`]
    /// to start the services recorded there.
    /// Events lost to a full queue are added to `lost`.
    pub fn open(
        state_dir: &Path,
        sink: EventSink,
        limits: Limits,
        lost: Arc<std::sync::atomic::AtomicU64>,
    ) -> Result<Self, DecoyError> {
        let dir = state_dir.join("decoys");
        let state_path = state_dir.join(STATE_FILE);
        let applied = match std::fs::read(&state_path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| DecoyError::State {
                path: state_path.display().to_string(),
                reason: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => {
                return Err(DecoyError::State {
                    path: state_path.display().to_string(),
                    reason: e.to_string(),
                });
            }
        };
        let (reporter, events) = mpsc::channel(EVENT_QUEUE);
        tokio::spawn(record_events(events, sink, lost.clone()));
        Ok(DecoyManager {
            dir,
            applied,
            running: HashMap::new(),
            reporter,
            limits,
            lost,
            problems: BTreeMap::new(),
        })
    }

    /// Applied decoy resources and their revisions, for the Hello.
    pub fn applied(&self) -> BTreeMap<String, u64> {
        self.applied
            .iter()
            .map(|(id, a)| (id.clone(), a.revision))
            .collect()
    }

    /// Whether `id` names a decoy resource (`decoy/<name>`).
    pub fn owns(id: &str) -> bool {
        id.starts_with("decoy/")
    }

    /// Decoys that could not start, for the heartbeat.
    pub fn problems(&self) -> Vec<String> {
        self.problems
            .iter()
            .map(|(id, e)| format!("{id}: {e}"))
            .collect()
    }

    /// Services running now.
    pub fn services(&self) -> usize {
        self.running.values().map(HashMap::len).sum()
    }

    /// Starts the services of decoys recorded as applied (after a
    /// restart). Failures are kept as problems for the heartbeat.
    pub async fn resume(&mut self) {
        let applied: Vec<(String, Applied)> = self
            .applied
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (id, a) in applied {
            if let Err(e) = self.start(&id, &a.spec).await {
                tracing::error!(decoy = %id, error = %e, "cannot restart decoy");
                self.problems.insert(id, e.to_string());
            } else {
                self.problems.remove(&id);
            }
        }
    }

    fn state_path(&self) -> PathBuf {
        self.dir.parent().unwrap_or(&self.dir).join(STATE_FILE)
    }

    fn save(&self) -> Result<(), DecoyError> {
        let bytes = serde_json::to_vec_pretty(&self.applied).map_err(|e| DecoyError::State {
            path: self.state_path().display().to_string(),
            reason: e.to_string(),
        })?;
        ruse_pki::write_private_file(&self.state_path(), &bytes).map_err(|e| DecoyError::State {
            path: self.state_path().display().to_string(),
            reason: e.to_string(),
        })
    }

    /// Applies decoy resources and removals; returns each resource's result.
    pub async fn apply(
        &mut self,
        removed: &[String],
        resources: &[Resource],
    ) -> Vec<(String, u64, Result<(), DecoyError>)> {
        let mut out = Vec::new();
        for id in removed {
            self.problems.remove(id);
            self.running.remove(id);
            let revision = self.applied.remove(id).map_or(0, |a| a.revision);
            out.push((id.clone(), revision, Ok(())));
        }
        for r in resources.iter().filter(|r| r.kind == DECOY) {
            if self
                .applied
                .get(&r.id)
                .is_some_and(|a| a.revision == r.revision && a.spec == r.body)
            {
                out.push((r.id.clone(), r.revision, Ok(())));
                continue;
            }
            let result = self.start(&r.id, &r.body).await;
            if let Err(e) = &result {
                self.problems.insert(r.id.clone(), e.to_string());
            } else {
                self.problems.remove(&r.id);
            }
            if result.is_ok() {
                self.applied.insert(
                    r.id.clone(),
                    Applied {
                        revision: r.revision,
                        spec: r.body.clone(),
                    },
                );
            } else {
                self.applied.remove(&r.id);
            }
            out.push((r.id.clone(), r.revision, result));
        }
        if let Err(e) = self.save() {
            for o in &mut out {
                if o.2.is_ok() {
                    o.2 = Err(DecoyError::State {
                        path: self.state_path().display().to_string(),
                        reason: e.to_string(),
                    });
                }
            }
        }
        out
    }

    /// (Re)starts the services of one decoy: services whose spec is
    /// unchanged keep running; every port is bound before anything is
    /// replaced.
    async fn start(&mut self, id: &str, body: &[u8]) -> Result<(), DecoyError> {
        let spec = DecoySpec::decode(body).map_err(|e| DecoyError::Spec(e.to_string()))?;
        let listen: IpAddr = if spec.listen.is_empty() {
            IpAddr::from([0, 0, 0, 0])
        } else {
            spec.listen
                .parse()
                .map_err(|_| DecoyError::Spec(format!("listen address {:?}", spec.listen)))?
        };
        let current = self.running.remove(id).unwrap_or_default();
        let mut keep = HashMap::new();
        let mut bind = Vec::new();
        for service in &spec.services {
            let port = service.port;
            match current.get(&port) {
                Some(r) if r.spec == *service => {}
                _ => bind.push((port, service.clone())),
            }
        }
        let mut current = current;
        for service in &spec.services {
            let port = service.port;
            if current.get(&port).is_some_and(|r| r.spec == *service)
                && let Some(r) = current.remove(&port)
            {
                keep.insert(port, r);
            }
        }
        // Services being replaced release their ports first.
        drop(current);
        ruse_pki::create_private_dir(&self.dir).map_err(|e| DecoyError::Setup(e.to_string()))?;
        let mut result = Ok(());
        for (port, service) in bind {
            match self.start_service(&spec, listen, port, &service).await {
                Ok(accept) => {
                    keep.insert(
                        port,
                        Running {
                            spec: service,
                            accept,
                        },
                    );
                }
                Err(e) => {
                    // What already runs keeps running; the decoy is failed.
                    result = Err(e);
                    break;
                }
            }
        }
        self.running.insert(id.to_owned(), keep);
        result
    }

    /// Binds one service's port and starts accepting.
    async fn start_service(
        &self,
        spec: &DecoySpec,
        listen: IpAddr,
        port: u16,
        service: &DecoyService,
    ) -> Result<JoinHandle<()>, DecoyError> {
        let addr = SocketAddr::new(listen, port);
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| DecoyError::Bind {
                addr,
                protocol: service.protocol.clone(),
                source,
            })?;
        let ctx = Arc::new(ServiceCtx {
            decoy: spec.name.clone(),
            address: spec.address.clone(),
            protocol: service.protocol.clone(),
            port,
            dir: self.dir.clone(),
            limits: self.limits,
            refusal_delay: service
                .refusal_delay_ms
                .map(|ms| Duration::from_millis(u64::from(ms.min(10_000)))),
            banner: telnet::banner(&service.device, &service.banner),
            reporter: self.reporter.clone(),
            lost: self.lost.clone(),
        });
        let handler = handler_for(&service.protocol, &ctx).await?;
        tracing::info!(decoy = %spec.name, protocol = %service.protocol, %addr, "decoy service listening");
        Ok(tokio::spawn(accept_loop(listener, ctx, handler)))
    }
}

/// Handles one connection of a protocol.
pub type Handler =
    Arc<dyn Fn(Conn) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

async fn handler_for(protocol: &str, ctx: &Arc<ServiceCtx>) -> Result<Handler, DecoyError> {
    Ok(match protocol {
        "ftp" => Arc::new(|c| Box::pin(ftp::serve(c))),
        "mysql" => Arc::new(|c| Box::pin(mysql::serve(c))),
        "mssql" => mssql::handler(ctx)?,
        "rdp" => rdp::handler(ctx)?,
        "telnet" => Arc::new(|c| Box::pin(telnet::serve(c))),
        "hl7" => Arc::new(|c| Box::pin(hl7::serve(c))),
        "portscan" => portscan::handler(),
        "smb" => Arc::new(|c| Box::pin(smb::serve(c))),
        "dicom" => Arc::new(|c| Box::pin(dicom::serve(c))),
        "http" => http::handler(ctx, false)?,
        "https" => http::handler(ctx, true)?,
        "kube-apiserver" => kube::handler(ctx)?,
        "ssh" => ssh::handler(ctx).await?,
        other => return Err(DecoyError::Spec(format!("unknown protocol {other:?}"))),
    })
}

async fn accept_loop(listener: TcpListener, ctx: Arc<ServiceCtx>, handler: Handler) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS_PER_SERVICE));
    let sources = Arc::new(Sources::default());
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(decoy = %ctx.decoy, error = %e, "decoy accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            // Reap finished connections so the set stays small.
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let Ok(permit): Result<OwnedSemaphorePermit, _> = permits.clone().try_acquire_owned()
        else {
            tracing::debug!(decoy = %ctx.decoy, %peer, "decoy connection cap reached; dropped");
            continue;
        };
        let Some(slot) = sources.take(peer.ip()) else {
            tracing::debug!(decoy = %ctx.decoy, %peer, "per-source connection cap reached; dropped");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let conn = Conn {
            stream,
            peer,
            ctx: ctx.clone(),
            pending: Vec::new(),
        };
        let fut = handler(conn);
        let lifetime = ctx.limits.lifetime;
        connections.spawn(async move {
            let _permit = permit;
            let _slot = slot;
            let _ = tokio::time::timeout(lifetime, fut).await;
        });
    }
}

/// Records decoy events in batches (one outbox sync per batch).
async fn record_events(
    mut events: mpsc::Receiver<AgentEvent>,
    sink: EventSink,
    lost: Arc<std::sync::atomic::AtomicU64>,
) {
    let mut batch = Vec::with_capacity(EVENT_BATCH);
    while events.recv_many(&mut batch, EVENT_BATCH).await > 0 {
        if batch.len() > 1 {
            tokio::time::sleep(EVENT_GATHER).await;
            while batch.len() < EVENT_BATCH {
                match events.try_recv() {
                    Ok(e) => batch.push(e),
                    Err(_) => break,
                }
            }
        }
        match sink
            .record_when_room(std::mem::take(&mut batch), OUTBOX_PATIENCE)
            .await
        {
            Ok(0) => {}
            Ok(refused) => {
                lost.fetch_add(refused as u64, std::sync::atomic::Ordering::Relaxed);
                tracing::warn!(
                    events = refused,
                    "outbox full and not drained for {}s; decoy events not recorded",
                    OUTBOX_PATIENCE.as_secs()
                );
            }
            Err(e) => tracing::error!(error = %e, "cannot record decoy events"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn lines_read_ahead_are_kept_for_the_next_call() {
        let mut r: &[u8] = b"USER radiology7\r\nPASS Winter1!\nQUIT";
        let mut pending = Vec::new();
        let mut next = async || read_line(&mut r, &mut pending, 64, T).await.unwrap();
        assert_eq!(next().await.as_deref(), Some("USER radiology7"));
        assert_eq!(next().await.as_deref(), Some("PASS Winter1!"));
        assert_eq!(
            next().await.as_deref(),
            Some("QUIT"),
            "the last, unterminated"
        );
        assert_eq!(next().await, None);
    }

    #[tokio::test]
    async fn a_line_longer_than_the_limit_is_an_error() {
        let mut pending = Vec::new();
        let mut r: &[u8] = b"abcd\nabcd\r\n";
        assert_eq!(
            read_line(&mut r, &mut pending, 4, T)
                .await
                .unwrap()
                .as_deref(),
            Some("abcd")
        );
        let err = read_line(&mut r, &mut pending, 4, T).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);

        // With no end in sight, as soon as more than the limit has come.
        let mut pending = Vec::new();
        let mut r: &[u8] = &[b'x'; 2000];
        let err = read_line(&mut r, &mut pending, 600, T).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
        assert!(
            pending.len() <= 600 + 512,
            "read at most a chunk past the limit"
        );
    }
}

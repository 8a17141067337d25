//! Incident outputs: syslog (RFC 5424 with a CEF payload, over UDP, TCP or
//! TLS), JSON webhooks (generic, Slack, Microsoft Teams) and a JSON lines
//! file.
//!
//! Every output has a durable queue in the store. An incident's notice
//! (opened, escalated, resolved) is queued in the same commit as the
//! events that caused it, so it is delivered even if the output was down,
//! or the controller restarted, when the incident opened. A worker per
//! output delivers the incident's current state, oldest notice first,
//! retrying with doubling delays; where each incident went is recorded on
//! the incident (`rusectl describe incident`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use tokio::sync::{Notify, watch};

use ruse_proto::types::UnixMs;

use crate::incidents::{Incidents, Notice};
use crate::model::{Delivery, Incident, Severity};
use crate::store::{Committer, Store, StoreError};

/// One incident output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputConfig {
    /// Shown in `rusectl describe incident` and drills.
    pub name: String,
    /// `syslog`, `webhook` or `file`.
    #[serde(rename = "type")]
    pub kind: String,
    /// syslog: `host:port`.
    #[serde(default)]
    pub address: Option<String>,
    /// syslog: `udp`, `tcp` or `tls` (RFC 5424 with a CEF payload).
    #[serde(default)]
    pub transport: Option<String>,
    /// syslog over TLS and HTTPS webhooks: CA certificates (PEM) to trust
    /// instead of the built-in roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// webhook: `http://` or `https://` URL.
    #[serde(default)]
    pub url: Option<String>,
    /// webhook: `json` (the incident), `slack` or `teams`.
    #[serde(default)]
    pub format: Option<String>,
    /// file: JSON lines appended here.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// Only incidents at least this severe (`low`, `medium`, `high`,
    /// `critical`); default `low`.
    #[serde(default)]
    pub min_severity: Option<String>,
}

/// Checks one output's settings.
pub fn check(o: &OutputConfig) -> Result<(), String> {
    if o.name.is_empty()
        || o.name.len() > 63
        || !o
            .name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err("name: 1 to 63 letters, digits, - or _".into());
    }
    if let Some(s) = &o.min_severity {
        parse_severity(s)?;
    }
    match o.kind.as_str() {
        "syslog" => {
            let address = o
                .address
                .as_deref()
                .ok_or("syslog needs address = \"host:port\"")?;
            if !address.contains(':') {
                return Err(format!("address {address:?} needs a port"));
            }
            match o.transport.as_deref().unwrap_or("udp") {
                "udp" | "tcp" => {}
                "tls" => {
                    if o.ca_file.is_none() {
                        return Err("syslog over TLS needs ca_file (the receiver's CA)".into());
                    }
                }
                other => return Err(format!("transport {other:?}: expected udp, tcp or tls")),
            }
        }
        "webhook" => {
            let url = o.url.as_deref().ok_or("webhook needs url")?;
            let uri: hyper::Uri = url.parse().map_err(|e| format!("url {url:?}: {e}"))?;
            match uri.scheme_str() {
                Some("http") => {}
                Some("https") => {
                    if o.ca_file.is_none() {
                        return Err("an https webhook needs ca_file (the receiver's CA)".into());
                    }
                }
                _ => return Err(format!("url {url:?} must be http:// or https://")),
            }
            if uri.host().is_none() {
                return Err(format!("url {url:?} has no host"));
            }
            match o.format.as_deref().unwrap_or("json") {
                "json" | "slack" | "teams" => {}
                other => return Err(format!("format {other:?}: expected json, slack or teams")),
            }
        }
        "file" => {
            if o.path.is_none() {
                return Err("file needs path".into());
            }
        }
        other => return Err(format!("type {other:?}: expected syslog, webhook or file")),
    }
    Ok(())
}

fn parse_severity(s: &str) -> Result<Severity, String> {
    Severity::ALL
        .into_iter()
        .find(|v| v.as_str() == s)
        .ok_or_else(|| format!("min_severity {s:?}: expected low, medium, high or critical"))
}

/// A queued notice.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Queued {
    incident: String,
    notice: Notice,
}

/// Escapes a CEF header field.
fn cef_header(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('|', "\\|")
        .replace(['\r', '\n'], " ")
}

/// Escapes a CEF extension value.
fn cef_value(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('=', "\\=")
        .replace('\n', "\\n")
        .replace('\r', "\\r")
}

/// The CEF payload for an incident notice.
pub fn cef(i: &Incident, notice: Notice) -> String {
    let mut ext: Vec<(&str, String)> = vec![
        ("rt", i.last_seen.0.to_string()),
        ("start", i.first_seen.0.to_string()),
        ("cnt", i.event_count.to_string()),
        ("cs1Label", "incidentId".into()),
        ("cs1", i.id.clone()),
        ("cs2Label", "attackPath".into()),
        ("cs2", i.path_text()),
        ("cs3Label", "mitreTechniques".into()),
        (
            "cs3",
            i.techniques.iter().cloned().collect::<Vec<_>>().join(","),
        ),
        ("cs4Label", "status".into()),
        ("cs4", i.status.as_str().into()),
        ("cs5Label", "drill".into()),
        ("cs5", i.drill.to_string()),
        ("cs6Label", "lures".into()),
        ("cs6", i.lures.iter().cloned().collect::<Vec<_>>().join(",")),
    ];
    if let Some(src) = i.sources.iter().next() {
        ext.push(("src", src.clone()));
    }
    if let Some(d) = i.decoys.iter().next() {
        ext.push(("dhost", d.clone()));
    }
    if let Some(h) = i.path.iter().find(|h| h.kind == "host") {
        ext.push(("shost", h.name.clone()));
    }
    if let Some(c) = i.credentials.iter().next() {
        ext.push(("suser", c.clone()));
    }
    if let Some(p) = i.processes.iter().next() {
        ext.push(("sproc", p.clone()));
    }
    ext.push(("msg", i.title.clone()));
    let ext = ext
        .into_iter()
        .map(|(k, v)| format!("{k}={}", cef_value(&v)))
        .collect::<Vec<_>>()
        .join(" ");
    format!(
        "CEF:0|Ruse|Ruse|{}|incident-{}|{}|{}|{ext}",
        env!("CARGO_PKG_VERSION"),
        notice.as_str(),
        cef_header(&i.title),
        i.severity.cef()
    )
}

/// An RFC 5424 message carrying the CEF payload.
pub fn syslog_message(i: &Incident, notice: Notice, hostname: &str) -> String {
    // Facility 4 (security/authorization); severity by incident severity.
    let level = match i.severity {
        Severity::Critical => 2,
        Severity::High => 3,
        Severity::Medium => 4,
        Severity::Low => 5,
    };
    let host: String = hostname
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(255)
        .collect();
    format!(
        "<{}>1 {} {} ruse-controller {} incident - {}",
        4 * 8 + level,
        UnixMs::now().rfc3339(),
        if host.is_empty() { "-".into() } else { host },
        std::process::id(),
        cef(i, notice)
    )
}

/// The JSON body a webhook receives.
pub fn webhook_body(i: &Incident, notice: Notice, format: &str) -> serde_json::Value {
    let drill = if i.drill { "[DRILL] " } else { "" };
    let facts = [
        ("Severity", i.severity.as_str().to_owned()),
        ("Status", i.status.as_str().to_owned()),
        ("Attack path", i.path_text()),
        (
            "ATT&CK",
            i.techniques.iter().cloned().collect::<Vec<_>>().join(", "),
        ),
        ("Events", i.event_count.to_string()),
        ("First seen", i.first_seen.rfc3339()),
        ("Incident", i.id.clone()),
    ];
    match format {
        "slack" => serde_json::json!({
            "text": format!("{drill}Ruse incident {}: {}", notice.as_str(), i.title),
            "blocks": [
                {"type": "header", "text": {"type": "plain_text", "text": format!("{drill}{}", i.title).chars().take(150).collect::<String>()}},
                {"type": "section", "fields": facts.iter().map(|(k, v)| serde_json::json!({"type": "mrkdwn", "text": format!("*{k}*\n{v}")})).collect::<Vec<_>>()},
            ]
        }),
        "teams" => serde_json::json!({
            "@type": "MessageCard",
            "@context": "https://schema.org/extensions",
            "summary": format!("{drill}Ruse incident {}", notice.as_str()),
            "themeColor": match i.severity { Severity::Critical => "B00020", Severity::High => "E65100", Severity::Medium => "F9A825", Severity::Low => "607D8B" },
            "title": format!("{drill}{}", i.title),
            "sections": [{"facts": facts.iter().map(|(k, v)| serde_json::json!({"name": k, "value": v})).collect::<Vec<_>>()}],
        }),
        _ => serde_json::json!({
            "source": "ruse",
            "notice": notice.as_str(),
            "drill": i.drill,
            "incident": i,
        }),
    }
}

/// Why a delivery failed.
type SendError = String;

/// A configured output, ready to send.
#[derive(Debug)]
struct Sink {
    config: OutputConfig,
    min_severity: Severity,
    tls: Option<Arc<rustls::ClientConfig>>,
    hostname: String,
    wake: Notify,
    failures: AtomicU64,
    delivered: AtomicU64,
    /// When the last delivery succeeded, and the last failure and its error
    /// (cleared by the next success).
    last: std::sync::Mutex<LastDelivery>,
}

#[derive(Debug, Default, Clone)]
struct LastDelivery {
    delivered: Option<UnixMs>,
    failed: Option<UnixMs>,
    error: String,
}

impl Sink {
    fn new(config: OutputConfig) -> Result<Sink, String> {
        check(&config)?;
        let tls = match &config.ca_file {
            Some(path)
                if config.transport.as_deref() == Some("tls") || config.kind == "webhook" =>
            {
                let pem = std::fs::read_to_string(path)
                    .map_err(|e| format!("ca_file {}: {e}", path.display()))?;
                let roots = ruse_pki::pem_decode_certificates(&pem, &path.display().to_string())
                    .map_err(|e| e.to_string())?;
                Some(ruse_pki::plain_client_config(roots).map_err(|e| e.to_string())?)
            }
            _ => None,
        };
        Ok(Sink {
            min_severity: config
                .min_severity
                .as_deref()
                .map(parse_severity)
                .transpose()?
                .unwrap_or(Severity::Low),
            tls,
            hostname: std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_owned())
                .unwrap_or_default(),
            config,
            wake: Notify::new(),
            failures: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            last: std::sync::Mutex::default(),
        })
    }

    fn queue(&self) -> String {
        self.config.name.clone()
    }

    async fn send(&self, i: &Incident, notice: Notice) -> Result<(), SendError> {
        let timeout = Duration::from_secs(10);
        match tokio::time::timeout(timeout, self.send_inner(i, notice)).await {
            Ok(r) => r,
            Err(_) => Err(format!("no answer within {timeout:?}")),
        }
    }

    async fn send_inner(&self, i: &Incident, notice: Notice) -> Result<(), SendError> {
        let c = &self.config;
        match c.kind.as_str() {
            "syslog" => {
                let address = c.address.clone().unwrap_or_default();
                let message = syslog_message(i, notice, &self.hostname);
                match c.transport.as_deref().unwrap_or("udp") {
                    "udp" => {
                        let target = tokio::net::lookup_host(&address)
                            .await
                            .map_err(|e| format!("{address}: {e}"))?
                            .next()
                            .ok_or_else(|| format!("{address}: no address"))?;
                        let bind = if target.is_ipv4() {
                            "0.0.0.0:0"
                        } else {
                            "[::]:0"
                        };
                        let socket = tokio::net::UdpSocket::bind(bind)
                            .await
                            .map_err(|e| e.to_string())?;
                        // One datagram; receivers commonly accept 8 KiB.
                        let bytes: Vec<u8> = message.into_bytes().into_iter().take(8000).collect();
                        socket
                            .send_to(&bytes, target)
                            .await
                            .map_err(|e| format!("{address}: {e}"))?;
                        Ok(())
                    }
                    transport => {
                        // RFC 6587 / 5425 octet counting.
                        let frame = format!("{} {message}", message.len());
                        let stream = tokio::net::TcpStream::connect(&address)
                            .await
                            .map_err(|e| format!("{address}: {e}"))?;
                        if transport == "tls" {
                            let mut tls = self.tls_connect(stream, &address).await?;
                            tls.write_all(frame.as_bytes())
                                .await
                                .map_err(|e| e.to_string())?;
                            tls.shutdown().await.map_err(|e| e.to_string())
                        } else {
                            let mut stream = stream;
                            stream
                                .write_all(frame.as_bytes())
                                .await
                                .map_err(|e| e.to_string())?;
                            stream.shutdown().await.map_err(|e| e.to_string())
                        }
                    }
                }
            }
            "webhook" => {
                let body = webhook_body(i, notice, c.format.as_deref().unwrap_or("json"));
                self.post(&serde_json::to_vec(&body).map_err(|e| e.to_string())?)
                    .await
            }
            "file" => {
                let path: PathBuf = c.path.clone().unwrap_or_default();
                let mut line = serde_json::to_vec(&serde_json::json!({
                    "notice": notice.as_str(),
                    "at": UnixMs::now().rfc3339(),
                    "incident": i,
                }))
                .map_err(|e| e.to_string())?;
                line.push(b'\n');
                tokio::task::spawn_blocking(move || {
                    use std::io::Write;
                    if let Some(dir) = path.parent() {
                        std::fs::create_dir_all(dir)?;
                    }
                    // Incidents name hosts, users and credentials: 0600.
                    let mut f =
                        ruse_pki::open_private_append(&path).map_err(std::io::Error::other)?;
                    f.write_all(&line)?;
                    f.sync_data()
                })
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())
            }
            other => Err(format!("unknown output type {other}")),
        }
    }

    async fn tls_connect(
        &self,
        stream: tokio::net::TcpStream,
        address: &str,
    ) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, SendError> {
        let config = self.tls.clone().ok_or("TLS needs ca_file")?;
        let host = address
            .rsplit_once(':')
            .map_or(address, |(h, _)| h)
            .trim_start_matches('[')
            .trim_end_matches(']');
        let name = rustls::pki_types::ServerName::try_from(host.to_owned())
            .map_err(|e| format!("{host}: {e}"))?;
        tokio_rustls::TlsConnector::from(config)
            .connect(name, stream)
            .await
            .map_err(|e| format!("TLS to {address}: {e}"))
    }

    async fn post(&self, body: &[u8]) -> Result<(), SendError> {
        let url = self.config.url.clone().unwrap_or_default();
        let uri: hyper::Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
        let https = uri.scheme_str() == Some("https");
        let host = uri.host().unwrap_or_default().to_owned();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let address = format!("{host}:{port}");
        let stream = tokio::net::TcpStream::connect(&address)
            .await
            .map_err(|e| format!("{address}: {e}"))?;
        let request = hyper::Request::post(uri.path_and_query().map_or("/", |p| p.as_str()))
            .header(
                hyper::header::HOST,
                uri.authority().map_or(host.as_str(), |a| a.as_str()),
            )
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(
                hyper::header::USER_AGENT,
                concat!("ruse-controller/", env!("CARGO_PKG_VERSION")),
            )
            .body(http_body_util::Full::new(bytes::Bytes::copy_from_slice(
                body,
            )))
            .map_err(|e| e.to_string())?;
        let status = if https {
            let tls = self.tls_connect(stream, &address).await?;
            send_request(tls, request).await?
        } else {
            send_request(stream, request).await?
        };
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("{url} answered {status}"))
        }
    }
}

async fn send_request<S>(
    io: S,
    request: hyper::Request<http_body_util::Full<bytes::Bytes>>,
) -> Result<hyper::StatusCode, SendError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io))
            .await
            .map_err(|e| e.to_string())?;
    let driver = tokio::spawn(conn);
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string());
    driver.abort();
    Ok(response?.status())
}

/// The outputs and their delivery workers.
#[derive(Debug)]
pub struct Outputs {
    sinks: Vec<Arc<Sink>>,
    store: Arc<dyn Store>,
}

/// An output's state, for metrics and drills.
#[derive(Debug, Clone)]
pub struct OutputStatus {
    pub name: String,
    pub kind: String,
    pub queued: usize,
    pub delivered: u64,
    pub failures: u64,
    /// Since the controller started.
    pub last_delivered: Option<UnixMs>,
    pub last_failed: Option<UnixMs>,
    /// The last failure's error, until a delivery succeeds.
    pub last_error: String,
}

impl Outputs {
    /// Builds the outputs (checking CA files and the like).
    pub fn new(configs: &[OutputConfig], store: Arc<dyn Store>) -> Result<Outputs, String> {
        let sinks = configs
            .iter()
            .map(|c| {
                Sink::new(c.clone())
                    .map(Arc::new)
                    .map_err(|e| format!("output {:?}: {e}", c.name))
            })
            .collect::<Result<_, _>>()?;
        Ok(Outputs { sinks, store })
    }

    pub fn names(&self) -> Vec<String> {
        self.sinks.iter().map(|s| s.config.name.clone()).collect()
    }

    /// Outputs an incident of `severity` goes to.
    pub fn for_severity(&self, severity: Severity) -> Vec<String> {
        self.sinks
            .iter()
            .filter(|s| severity >= s.min_severity)
            .map(|s| s.config.name.clone())
            .collect()
    }

    /// Queues notices (before the commit that makes them durable).
    /// Returns the (incident, output) pairs queued.
    pub fn enqueue(
        &self,
        notices: &[(String, Notice)],
        incidents: &Incidents,
    ) -> Result<Vec<(String, String)>, StoreError> {
        let mut queued = Vec::new();
        for (id, notice) in notices {
            let Some(i) = incidents.get(id) else { continue };
            for sink in self.sinks.iter().filter(|s| i.severity >= s.min_severity) {
                let item = serde_json::to_vec(&Queued {
                    incident: id.clone(),
                    notice: *notice,
                })
                .map_err(|e| StoreError::Engine(e.to_string().into()))?;
                self.store.queue_push(&sink.queue(), &item)?;
                queued.push((id.clone(), sink.config.name.clone()));
            }
        }
        Ok(queued)
    }

    /// Wakes the workers after queued notices became durable.
    pub fn wake(&self) {
        for s in &self.sinks {
            s.wake.notify_one();
        }
    }

    pub fn status(&self) -> Vec<OutputStatus> {
        self.sinks
            .iter()
            .map(|s| {
                let last = s.last.lock().unwrap_or_else(|e| e.into_inner()).clone();
                OutputStatus {
                    name: s.config.name.clone(),
                    kind: s.config.kind.clone(),
                    queued: self.store.queue_len(&s.queue()).unwrap_or(0),
                    delivered: s.delivered.load(Ordering::Relaxed),
                    failures: s.failures.load(Ordering::Relaxed),
                    last_delivered: last.delivered,
                    last_failed: last.failed,
                    last_error: last.error,
                }
            })
            .collect()
    }

    /// Starts one delivery worker per output; they stop when `stop` turns
    /// true.
    pub fn start(
        self: &Arc<Self>,
        incidents: Arc<Incidents>,
        committer: Committer,
        retry: (Duration, Duration),
        stop: watch::Receiver<bool>,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        self.sinks
            .iter()
            .map(|sink| {
                tokio::spawn(deliver(
                    sink.clone(),
                    self.store.clone(),
                    incidents.clone(),
                    committer.clone(),
                    retry,
                    stop.clone(),
                ))
            })
            .collect()
    }
}

/// One output's worker: oldest notice first, retried until delivered.
async fn deliver(
    sink: Arc<Sink>,
    store: Arc<dyn Store>,
    incidents: Arc<Incidents>,
    committer: Committer,
    (retry_min, retry_max): (Duration, Duration),
    mut stop: watch::Receiver<bool>,
) {
    let name = sink.config.name.clone();
    let mut delay = retry_min;
    let mut attempts: BTreeMap<String, u32> = BTreeMap::new();
    loop {
        if *stop.borrow() {
            return;
        }
        let next = match store.queue_peek(&sink.queue(), 1) {
            Ok(items) => items.into_iter().next(),
            Err(e) => {
                tracing::error!(output = %name, error = %e, "cannot read the output queue");
                None
            }
        };
        let Some((seq, bytes)) = next else {
            tokio::select! {
                () = sink.wake.notified() => {}
                () = crate::stopped(&mut stop) => return,
            }
            continue;
        };
        let Ok(item) = serde_json::from_slice::<Queued>(&bytes) else {
            tracing::error!(output = %name, seq, "dropping an unreadable queue entry");
            let _ = store.queue_remove(&sink.queue(), seq);
            continue;
        };
        let Some(incident) = incidents.get(&item.incident) else {
            let _ = store.queue_remove(&sink.queue(), seq);
            continue;
        };
        let tries = attempts.entry(item.incident.clone()).or_default();
        *tries += 1;
        match sink.send(&incident, item.notice).await {
            Ok(()) => {
                let record = Delivery {
                    state: "delivered".into(),
                    attempts: *tries,
                    last_error: String::new(),
                    delivered: Some(UnixMs::now()),
                    version: incident.version,
                };
                attempts.remove(&item.incident);
                sink.delivered.fetch_add(1, Ordering::Relaxed);
                {
                    let mut last = sink.last.lock().unwrap_or_else(|e| e.into_inner());
                    last.delivered = Some(UnixMs::now());
                    last.error.clear();
                }
                let done = store.queue_remove(&sink.queue(), seq).and_then(|()| {
                    incidents
                        .record_delivery(&incident.id, &name, record)
                        .map(|_| ())
                });
                if let Err(e) = done {
                    tracing::error!(output = %name, error = %e, "cannot record a delivery");
                }
                let _ = committer.durable().await;
                tracing::info!(output = %name, incident = %incident.id, notice = item.notice.as_str(), "incident delivered");
                delay = retry_min;
            }
            Err(error) => {
                sink.failures.fetch_add(1, Ordering::Relaxed);
                {
                    let mut last = sink.last.lock().unwrap_or_else(|e| e.into_inner());
                    last.failed = Some(UnixMs::now());
                    last.error = error.chars().take(512).collect();
                }
                tracing::warn!(output = %name, incident = %incident.id, error = %error, retry_in_ms = delay.as_millis() as u64, "incident delivery failed");
                let record = Delivery {
                    state: "failing".into(),
                    attempts: *tries,
                    last_error: error,
                    delivered: incident.deliveries.get(&name).and_then(|d| d.delivered),
                    version: incident.deliveries.get(&name).map_or(0, |d| d.version),
                };
                let _ = incidents.record_delivery(&incident.id, &name, record);
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = crate::stopped(&mut stop) => return,
                }
                delay = (delay * 2).min(retry_max);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn output(kind: &str) -> OutputConfig {
        OutputConfig {
            name: "o".into(),
            kind: kind.into(),
            address: None,
            transport: None,
            ca_file: None,
            url: None,
            format: None,
            path: None,
            min_severity: None,
        }
    }

    #[test]
    fn settings_are_checked() {
        assert!(check(&output("syslog")).is_err());
        let ok = OutputConfig {
            address: Some("127.0.0.1:514".into()),
            ..output("syslog")
        };
        assert!(check(&ok).is_ok());
        let tls = OutputConfig {
            transport: Some("tls".into()),
            ..ok.clone()
        };
        assert!(check(&tls).unwrap_err().contains("ca_file"));
        let hook = OutputConfig {
            url: Some("ftp://x/".into()),
            ..output("webhook")
        };
        assert!(check(&hook).is_err());
        let hook = OutputConfig {
            url: Some("http://127.0.0.1:9/hook".into()),
            format: Some("teams".into()),
            ..output("webhook")
        };
        assert!(check(&hook).is_ok());
        assert!(check(&output("pager")).is_err());
        let bad = OutputConfig {
            min_severity: Some("urgent".into()),
            path: Some("/tmp/x".into()),
            ..output("file")
        };
        assert!(check(&bad).is_err());
    }

    #[test]
    fn cef_escapes_and_names_the_incident() {
        let mut i = crate::incidents::tests_support::incident();
        i.title = "a|b=c\\d".into();
        let line = cef(&i, Notice::Opened);
        assert!(line.starts_with("CEF:0|Ruse|Ruse|"), "{line}");
        assert!(line.contains("|incident-opened|a\\|b=c\\\\d|10|"), "{line}");
        assert!(line.contains("msg=a|b\\=c\\\\d"), "{line}");
        assert!(line.contains(&format!("cs1={}", i.id)));
        let msg = syslog_message(&i, Notice::Opened, "ctl");
        assert!(msg.starts_with("<34>1 "), "{msg}");
        assert!(msg.contains(" ctl ruse-controller "));
    }

    #[test]
    fn webhook_shapes() {
        let i = crate::incidents::tests_support::incident();
        let slack = webhook_body(&i, Notice::Opened, "slack");
        assert!(slack["text"].as_str().unwrap().contains(&i.title));
        assert_eq!(slack["blocks"][0]["type"], "header");
        let teams = webhook_body(&i, Notice::Opened, "teams");
        assert_eq!(teams["@type"], "MessageCard");
        let json = webhook_body(&i, Notice::Resolved, "json");
        assert_eq!(json["incident"]["id"], i.id);
        assert_eq!(json["notice"], "resolved");
    }
}

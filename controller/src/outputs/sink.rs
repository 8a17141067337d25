//! One configured output, ready to send: syslog over UDP, TCP or TLS,
//! webhooks over HTTP or HTTPS, Splunk's HEC, Elasticsearch's `_bulk`, a
//! JSON lines file.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::sync::Notify;

use ruse_proto::types::UnixMs;

use super::config::{
    FileFormat, Output, OutputConfigError, Target, Transport, WebhookFormat, origin,
};
use super::format::{ecs_document, hec_event, ocsf_finding, syslog_message, webhook_body};
use super::raw::{RawEvent, ecs_event, event_json, hec_raw, ocsf_event};
use crate::incidents::Notice;
use crate::model::{Incident, Severity};

/// One thing to deliver: an incident's notice (with the incident as it is
/// now) or a raw event.
#[derive(Debug, Clone)]
pub(super) enum Item {
    Notice(Box<Incident>, Notice),
    Event(Box<RawEvent>),
}

/// The most items one request carries (HEC, `_bulk`, a file append).
const BATCH: usize = 100;

/// Why a delivery failed (it is retried).
type SendError = String;

/// What became of a notice the receiver answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Sent {
    Delivered,
    /// The receiver refused this notice for good (Elasticsearch's mapping
    /// rejected the document): retrying cannot help, and would hold up
    /// every notice behind it.
    Rejected(String),
}

/// A configured output, ready to send.
#[derive(Debug)]
pub(super) struct Sink {
    pub(super) output: Output,
    pub(super) tls: Option<Arc<rustls::ClientConfig>>,
    pub(super) hostname: String,
    /// This sink's HEC channel, a GUID (acknowledgements are per channel).
    pub(super) channel: String,
    pub(super) wake: Notify,
    pub(super) failures: AtomicU64,
    pub(super) delivered: AtomicU64,
    /// When the last delivery succeeded, and the last failure and its error
    /// (cleared by the next success).
    pub(super) last: std::sync::Mutex<LastDelivery>,
    /// When each mail of the last hour went (e-mail's hourly limit).
    pub(super) mailed: std::sync::Mutex<std::collections::VecDeque<std::time::Instant>>,
}

#[derive(Debug, Default, Clone)]
pub(super) struct LastDelivery {
    pub(super) delivered: Option<UnixMs>,
    pub(super) failed: Option<UnixMs>,
    pub(super) error: String,
}

impl Sink {
    pub(super) fn new(output: Output) -> Result<Sink, OutputConfigError> {
        let tls = match output.target.ca_file() {
            Some(path) => {
                let pem = std::fs::read_to_string(path)
                    .map_err(|e| format!("ca_file {}: {e}", path.display()))?;
                let roots = ruse_pki::pem_decode_certificates(&pem, &path.display().to_string())
                    .map_err(|e| e.to_string())?;
                let config = ruse_pki::plain_client_config(roots).map_err(|e| e.to_string())?;
                if matches!(output.target, Target::Smtp { .. }) {
                    // Mail servers negotiate no application protocol.
                    let mut mail = (*config).clone();
                    mail.alpn_protocols.clear();
                    Some(Arc::new(mail))
                } else {
                    Some(config)
                }
            }
            None => None,
        };
        Ok(Sink {
            tls,
            hostname: std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_owned())
                .unwrap_or_default(),
            // HEC channels are named by GUIDs.
            channel: ruse_proto::types::uuid4(),
            output,
            wake: Notify::new(),
            failures: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            last: std::sync::Mutex::default(),
            mailed: std::sync::Mutex::default(),
        })
    }

    /// Counts a failed delivery and keeps its error for `get outputs`.
    pub(super) fn failed(&self, error: &str) {
        self.failures
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        last.failed = Some(UnixMs::now());
        last.error = error.chars().take(512).collect();
    }

    pub(super) fn queue(&self) -> String {
        self.output.name.clone()
    }

    /// How many queued items one delivery takes: receivers with a batch
    /// API (HEC, `_bulk`) and files take many, the others one.
    pub(super) fn batch(&self) -> usize {
        match self.output.target {
            Target::SplunkHec { .. } | Target::Elasticsearch { .. } | Target::File { .. } => BATCH,
            _ => 1,
        }
    }

    /// Delivers `items` (at most [`Sink::batch`]): what became of each, or
    /// why none can be taken as delivered (all are retried).
    pub(super) async fn send_batch(&self, items: &[Item]) -> Result<Vec<Sent>, SendError> {
        let timeout = deadline(&self.output.target);
        let all = |r: Result<(), SendError>| r.map(|()| vec![Sent::Delivered; items.len()]);
        let sent = async {
            match &self.output.target {
                Target::Elasticsearch {
                    url,
                    api_key,
                    index,
                    events_index,
                    ..
                } => self.bulk(url, api_key, (index, events_index), items).await,
                Target::SplunkHec { .. } => all(self.hec(items).await),
                Target::File { path, format } => all(self.append(path, *format, items).await),
                _ => {
                    let mut out = Vec::with_capacity(items.len());
                    for item in items {
                        out.push(match item {
                            Item::Notice(i, notice) => self.send_one(i, *notice).await?,
                            Item::Event(r) => self.send_event(r).await?,
                        });
                    }
                    Ok(out)
                }
            }
        };
        match tokio::time::timeout(timeout, sent).await {
            Ok(r) => r,
            Err(_) => Err(format!("no answer within {timeout:?}")),
        }
    }

    /// One notice (a drill's or a test's), as its queue would send it.
    #[cfg(test)]
    pub(super) async fn send(&self, i: &Incident, notice: Notice) -> Result<Sent, SendError> {
        let item = Item::Notice(Box::new(i.clone()), notice);
        let mut sent = self.send_batch(std::slice::from_ref(&item)).await?;
        Ok(sent.pop().unwrap_or(Sent::Delivered))
    }

    /// A raw event to a JSON or OCSF webhook.
    async fn send_event(&self, r: &RawEvent) -> Result<Sent, SendError> {
        let Target::Webhook { url, format, .. } = &self.output.target else {
            return Err(format!(
                "{} outputs take no raw events",
                self.output.target.kind()
            ));
        };
        let body = match format {
            WebhookFormat::Ocsf => ocsf_event(r),
            _ => event_json(r),
        };
        let body = serde_json::to_vec(&body).map_err(|e| e.to_string())?;
        let (status, _) = self.request(url, &[], &body).await?;
        match status.as_u16() {
            200..=299 => Ok(Sent::Delivered),
            // The receiver will never take this body.
            400 | 413 | 415 | 422 => Ok(Sent::Rejected(format!(
                "{} answered {status} to event {}",
                origin(url),
                r.event.id
            ))),
            _ => Err(format!("{} answered {status}", origin(url))),
        }
    }

    /// One notice to a receiver that takes them one at a time.
    async fn send_one(&self, i: &Incident, notice: Notice) -> Result<Sent, SendError> {
        async {
            match &self.output.target {
                Target::Webhook {
                    url,
                    format: format @ WebhookFormat::PagerDuty { .. },
                    ..
                } => {
                    // PagerDuty's 400 is an event it will never take;
                    // anything else (429, 5xx) is worth retrying.
                    let body = serde_json::to_vec(&webhook_body(i, notice, format))
                        .map_err(|e| e.to_string())?;
                    let (status, reply) = self.request(url, &[], &body).await?;
                    let reply: serde_json::Value =
                        serde_json::from_slice(&reply).unwrap_or_default();
                    let why = || {
                        let text: String = reply["message"]
                            .as_str()
                            .into_iter()
                            .chain(
                                reply["errors"]
                                    .as_array()
                                    .into_iter()
                                    .flatten()
                                    .filter_map(|e| e.as_str()),
                            )
                            .collect::<Vec<_>>()
                            .join("; ")
                            .chars()
                            .filter(|c| !c.is_control())
                            .take(300)
                            .collect();
                        format!("{} answered {status}: {text}", origin(url))
                    };
                    match status.as_u16() {
                        200..=299 => Ok(Sent::Delivered),
                        400 => Ok(Sent::Rejected(why())),
                        _ => Err(why()),
                    }
                }
                _ => self.send_inner(i, notice).await.map(|()| Sent::Delivered),
            }
        }
        .await
    }

    /// Documents into Elasticsearch with one `_bulk` request: incidents
    /// into `index` under the id `<incident>-<version>`, raw events into
    /// `events_index` under the event's id; a copy already indexed (a
    /// retry after a lost answer) is a conflict, and counts as delivered.
    /// What became of each item is read from the answer's `items`.
    async fn bulk(
        &self,
        url: &hyper::Uri,
        api_key: &super::config::Secret,
        (index, events_index): (&str, &str),
        items: &[Item],
    ) -> Result<Vec<Sent>, SendError> {
        let mut body = Vec::new();
        for item in items {
            let (action, doc) = match item {
                Item::Notice(i, notice) => (
                    serde_json::json!({"create": {"_id": format!("{}-{}", i.id, i.version)}}),
                    ecs_document(i, *notice, &self.hostname),
                ),
                Item::Event(r) => (
                    serde_json::json!({"create": {"_index": events_index, "_id": r.event.id}}),
                    ecs_event(r, &self.hostname),
                ),
            };
            serde_json::to_writer(&mut body, &action).map_err(|e| e.to_string())?;
            body.push(b'\n');
            serde_json::to_writer(&mut body, &doc).map_err(|e| e.to_string())?;
            body.push(b'\n');
        }
        let auth = format!("ApiKey {}", api_key.expose());
        let headers = [
            ("authorization", auth.as_str()),
            ("content-type", "application/x-ndjson"),
        ];
        let endpoint = with_path(url, &format!("/{index}/_bulk"))?;
        let (status, reply) = self.request(&endpoint, &headers, &body).await?;
        let reply: serde_json::Value = serde_json::from_slice(&reply).unwrap_or_default();
        if !status.is_success() {
            let why = reply["error"]["reason"]
                .as_str()
                .or(reply["error"]["type"].as_str())
                .map(|r| {
                    format!(
                        ": {}",
                        r.chars()
                            .filter(|c| !c.is_control())
                            .take(200)
                            .collect::<String>()
                    )
                })
                .unwrap_or_default();
            return Err(format!("{} answered {status}{why}", origin(url)));
        }
        let answers = reply["items"].as_array().map_or(&[][..], Vec::as_slice);
        if answers.len() != items.len() {
            return Err(format!(
                "{} answered {} items for {} documents",
                origin(url),
                answers.len(),
                items.len()
            ));
        }
        // Settled in order up to the first document the cluster could
        // not take now (busy, 429, or failing): it and those after it stay
        // queued for the retry (any indexed meanwhile are conflicts then).
        let mut out = Vec::with_capacity(items.len());
        for answer in answers {
            let item = &answer["create"];
            let code = item["status"].as_u64().unwrap_or(0);
            let reason = || {
                let kind = item["error"]["type"].as_str().unwrap_or("error");
                let text: String = item["error"]["reason"]
                    .as_str()
                    .unwrap_or_default()
                    .chars()
                    .filter(|c| !c.is_control())
                    .take(200)
                    .collect();
                format!(
                    "{} refused the document ({code} {kind}: {text})",
                    origin(url)
                )
            };
            match code {
                200..=299 | 409 => out.push(Sent::Delivered),
                429 | 500..=599 | 0 if out.is_empty() => return Err(reason()),
                429 | 500..=599 | 0 => break,
                _ => out.push(Sent::Rejected(reason())),
            }
        }
        Ok(out)
    }

    /// Events to Splunk's HEC in one request (its events one after the
    /// other), then, with `ack`, waits until the collector has indexed
    /// them.
    async fn hec(&self, items: &[Item]) -> Result<(), SendError> {
        let Target::SplunkHec {
            url,
            token,
            index,
            source,
            sourcetype,
            ack,
            ocsf,
            ..
        } = &self.output.target
        else {
            return Err("not a splunk-hec output".into());
        };
        let mut body = Vec::new();
        for item in items {
            let event = match item {
                Item::Notice(i, notice) => hec_event(
                    i,
                    *notice,
                    &self.hostname,
                    index.as_deref(),
                    source,
                    sourcetype,
                    *ocsf,
                ),
                Item::Event(r) => hec_raw(r, index.as_deref(), source, *ocsf),
            };
            serde_json::to_writer(&mut body, &event).map_err(|e| e.to_string())?;
            body.push(b'\n');
        }
        let auth = format!("Splunk {}", token.expose());
        let headers = [
            ("authorization", auth.as_str()),
            ("x-splunk-request-channel", self.channel.as_str()),
        ];
        let endpoint = with_path(url, "/services/collector/event")?;
        let (status, reply) = self.request(&endpoint, &headers, &body).await?;
        let reply: serde_json::Value = serde_json::from_slice(&reply).unwrap_or_default();
        if !status.is_success() {
            return Err(hec_error(url, status, &reply));
        }
        if !*ack {
            return Ok(());
        }
        let id = reply["ackId"].as_u64().ok_or_else(|| {
            format!(
                "{} gave no ackId: enable indexer acknowledgement on the token, or set ack = false",
                origin(url)
            )
        })?;
        self.await_ack(url, &headers, id).await
    }

    /// Appends one JSON line per item to the file, synced once.
    async fn append(
        &self,
        path: &std::path::Path,
        format: FileFormat,
        items: &[Item],
    ) -> Result<(), SendError> {
        let mut lines = Vec::new();
        for item in items {
            let record = match (item, format) {
                (Item::Notice(i, notice), FileFormat::Ecs) => {
                    ecs_document(i, *notice, &self.hostname)
                }
                (Item::Notice(i, notice), FileFormat::Ocsf) => ocsf_finding(i, *notice),
                (Item::Notice(i, notice), FileFormat::Json) => serde_json::json!({
                    "notice": notice.as_str(),
                    "at": UnixMs::now().rfc3339(),
                    "incident": i,
                }),
                (Item::Event(r), FileFormat::Ecs) => ecs_event(r, &self.hostname),
                (Item::Event(r), FileFormat::Ocsf) => ocsf_event(r),
                (Item::Event(r), FileFormat::Json) => event_json(r),
            };
            serde_json::to_writer(&mut lines, &record).map_err(|e| e.to_string())?;
            lines.push(b'\n');
        }
        let path = path.to_owned();
        tokio::task::spawn_blocking(move || {
            use std::io::Write;
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            // Incidents name hosts, users and credentials: 0600.
            let mut f = ruse_pki::open_private_append(&path).map_err(std::io::Error::other)?;
            f.write_all(&lines)?;
            f.sync_data()
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())
    }

    async fn send_inner(&self, i: &Incident, notice: Notice) -> Result<(), SendError> {
        match &self.output.target {
            Target::Syslog {
                address,
                transport,
                format,
            } => {
                let address = address.as_str();
                let message = syslog_message(i, notice, &self.hostname, *format);
                match transport {
                    Transport::Udp => {
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
                        let stream = tokio::net::TcpStream::connect(address)
                            .await
                            .map_err(|e| format!("{address}: {e}"))?;
                        if matches!(transport, Transport::Tls { .. }) {
                            let mut tls = self.tls_connect(stream, address).await?;
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
            Target::Webhook { url, format, .. } => {
                let body = webhook_body(i, notice, format);
                let body = serde_json::to_vec(&body).map_err(|e| e.to_string())?;
                let (status, _) = self.request(url, &[], &body).await?;
                if status.is_success() {
                    Ok(())
                } else {
                    Err(format!("{} answered {status}", origin(url)))
                }
            }
            Target::SplunkHec { .. } | Target::Elasticsearch { .. } | Target::File { .. } => {
                Err("sent in batches".into())
            }
            Target::Smtp { .. } => {
                let message = super::smtp::message(i, notice, &self.mail()?);
                self.mail_out(&message).await
            }
        }
    }

    /// Who this output's mails are from and to (an error if it is not an
    /// e-mail output).
    fn mail(&self) -> Result<super::smtp::Mail<'_>, SendError> {
        let Target::Smtp {
            settings,
            digest,
            console_url,
            ..
        } = &self.output.target
        else {
            return Err(format!(
                "{} outputs send no mail",
                self.output.target.kind()
            ));
        };
        Ok(super::smtp::Mail {
            from: &settings.from,
            to: &settings.to,
            host: &self.hostname,
            console: console_url.as_deref(),
            digest_below: digest.map(|(below, _)| below),
        })
    }

    /// Sends one mail, unless `max_per_hour` were sent in the last hour.
    async fn mail_out(&self, message: &str) -> Result<(), SendError> {
        let Target::Smtp {
            settings,
            max_per_hour,
            ..
        } = &self.output.target
        else {
            return Err(format!(
                "{} outputs send no mail",
                self.output.target.kind()
            ));
        };
        let hour = Duration::from_secs(3600);
        {
            let mut mailed = self.mailed.lock().unwrap_or_else(|e| e.into_inner());
            while mailed.front().is_some_and(|t| t.elapsed() >= hour) {
                mailed.pop_front();
            }
            if mailed.len() >= *max_per_hour as usize {
                let wait = mailed
                    .front()
                    .map_or(hour, |t| hour.saturating_sub(t.elapsed()));
                return Err(format!(
                    "{max_per_hour} mails sent in the last hour (max_per_hour): the next in {} s",
                    wait.as_secs()
                ));
            }
        }
        let helo = if self.hostname.is_empty() {
            "ruse"
        } else {
            &self.hostname
        };
        super::smtp::send(settings, self.tls.clone(), helo, message).await?;
        self.mailed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_back(std::time::Instant::now());
        Ok(())
    }

    /// Mails the digest of `incidents`, within the delivery deadline.
    pub(super) async fn send_digest(&self, incidents: &[Incident]) -> Result<(), SendError> {
        let message = super::smtp::digest(incidents, &self.mail()?);
        let timeout = deadline(&self.output.target);
        match tokio::time::timeout(timeout, self.mail_out(&message)).await {
            Ok(r) => r,
            Err(_) => Err(format!("no answer within {timeout:?}")),
        }
    }

    /// The queue of notices held for this output's digest, and how often
    /// it is sent, if it has one.
    pub(super) fn digest(&self) -> Option<(String, Severity, Duration)> {
        match &self.output.target {
            Target::Smtp {
                digest: Some((below, every)),
                ..
            } => Some((format!("{}~digest", self.output.name), *below, *every)),
            _ => None,
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

    /// Polls the collector's acknowledgement endpoint until `id` is
    /// indexed: only then does the notice leave the queue. A notice still
    /// unacknowledged after [`HEC_ACK_WAIT`] is retried, and may then be
    /// indexed twice (Splunk's is at-least-once): its `incident_id` and
    /// `version` fields identify it.
    async fn await_ack(
        &self,
        url: &hyper::Uri,
        headers: &[(&str, &str)],
        id: u64,
    ) -> Result<(), SendError> {
        let endpoint = with_path(url, "/services/collector/ack")?;
        let query =
            serde_json::to_vec(&serde_json::json!({ "acks": [id] })).map_err(|e| e.to_string())?;
        let deadline = tokio::time::Instant::now() + HEC_ACK_WAIT;
        let mut pause = Duration::from_millis(100);
        loop {
            let (status, reply) = self.request(&endpoint, headers, &query).await?;
            let reply: serde_json::Value = serde_json::from_slice(&reply).unwrap_or_default();
            if !status.is_success() {
                return Err(hec_error(url, status, &reply));
            }
            if reply["acks"][id.to_string()].as_bool() == Some(true) {
                return Ok(());
            }
            if tokio::time::Instant::now() + pause > deadline {
                return Err(format!(
                    "{} did not acknowledge event {id} as indexed within {HEC_ACK_WAIT:?}",
                    origin(url)
                ));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(2));
        }
    }

    /// One POST of a JSON body with extra `headers`; the status and (up to
    /// 64 KiB of) the reply.
    async fn request(
        &self,
        uri: &hyper::Uri,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<(hyper::StatusCode, bytes::Bytes), SendError> {
        let https = uri.scheme_str() == Some("https");
        let host = uri.host().unwrap_or_default().to_owned();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let address = format!("{host}:{port}");
        let stream = tokio::net::TcpStream::connect(&address)
            .await
            .map_err(|e| format!("{address}: {e}"))?;
        let request = hyper::Request::post(uri.path_and_query().map_or("/", |p| p.as_str()))
            // host[:port] only: a URL's user information is not a Host.
            .header(
                hyper::header::HOST,
                uri.port_u16()
                    .map_or_else(|| host.clone(), |p| format!("{host}:{p}")),
            )
            .header(
                hyper::header::CONTENT_TYPE,
                headers
                    .iter()
                    .find(|(n, _)| *n == "content-type")
                    .map_or("application/json", |(_, v)| v),
            )
            .header(
                hyper::header::USER_AGENT,
                concat!("ruse-controller/", env!("CARGO_PKG_VERSION")),
            )
            .body(http_body_util::Full::new(bytes::Bytes::copy_from_slice(
                body,
            )))
            .map_err(|e| e.to_string())?;
        let mut request = request;
        for (name, value) in headers {
            let header = hyper::header::HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| format!("header name {name}"))?;
            let value = hyper::header::HeaderValue::from_str(value)
                .map_err(|_| format!("header {name} is not a valid value"))?;
            request.headers_mut().insert(header, value);
        }
        if https {
            let tls = self.tls_connect(stream, &address).await?;
            send_request(tls, request).await
        } else {
            send_request(stream, request).await
        }
    }
}

async fn send_request<S>(
    io: S,
    request: hyper::Request<http_body_util::Full<bytes::Bytes>>,
) -> Result<(hyper::StatusCode, bytes::Bytes), SendError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use http_body_util::BodyExt;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io))
            .await
            .map_err(|e| e.to_string())?;
    let driver = tokio::spawn(conn);
    let result = async {
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status();
        let body = http_body_util::Limited::new(response.into_body(), MAX_REPLY)
            .collect()
            .await
            .map_err(|e| format!("reading the reply: {e}"))?
            .to_bytes();
        Ok((status, body))
    }
    .await;
    driver.abort();
    result
}

/// The most of a receiver's reply read.
const MAX_REPLY: usize = 64 * 1024;

/// How long a collector may take to acknowledge an event as indexed.
pub(super) const HEC_ACK_WAIT: Duration = Duration::from_secs(60);

/// How long one delivery may take: an answer within 10 s, and for a
/// collector whose acknowledgement is awaited, its indexing on top.
pub(super) fn deadline(target: &Target) -> Duration {
    let answer = Duration::from_secs(10);
    match target {
        Target::SplunkHec { ack: true, .. } => answer + HEC_ACK_WAIT,
        _ => answer,
    }
}

/// `base` with `path` (the collector's endpoints live under its base URL).
fn with_path(base: &hyper::Uri, path: &str) -> Result<hyper::Uri, SendError> {
    let prefix = base.path().trim_end_matches('/');
    hyper::Uri::builder()
        .scheme(base.scheme_str().unwrap_or("http"))
        .authority(base.authority().map_or("", |a| a.as_str()))
        .path_and_query(format!("{prefix}{path}"))
        .build()
        .map_err(|e| format!("{}: {e}", origin(base)))
}

/// A collector's refusal in words: its status, and its `text` and `code`
/// (503 code 9 is back-pressure, retried like any failure).
fn hec_error(url: &hyper::Uri, status: hyper::StatusCode, reply: &serde_json::Value) -> SendError {
    match (reply["text"].as_str(), reply["code"].as_i64()) {
        (Some(text), Some(code)) => {
            let text: String = text.chars().filter(|c| !c.is_control()).take(200).collect();
            format!("{} answered {status}: {text} (code {code})", origin(url))
        }
        _ => format!("{} answered {status}", origin(url)),
    }
}

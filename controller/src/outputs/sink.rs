//! One configured output, ready to send: syslog over UDP, TCP or TLS,
//! webhooks over HTTP or HTTPS, a JSON lines file.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::sync::Notify;

use ruse_proto::types::UnixMs;

use super::config::{Output, OutputConfigError, Target, Transport, origin};
use super::format::{syslog_message, webhook_body};
use crate::incidents::Notice;
use crate::model::Incident;

/// Why a delivery failed.
type SendError = String;

/// A configured output, ready to send.
#[derive(Debug)]
pub(super) struct Sink {
    pub(super) output: Output,
    pub(super) tls: Option<Arc<rustls::ClientConfig>>,
    pub(super) hostname: String,
    pub(super) wake: Notify,
    pub(super) failures: AtomicU64,
    pub(super) delivered: AtomicU64,
    /// When the last delivery succeeded, and the last failure and its error
    /// (cleared by the next success).
    pub(super) last: std::sync::Mutex<LastDelivery>,
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
                Some(ruse_pki::plain_client_config(roots).map_err(|e| e.to_string())?)
            }
            None => None,
        };
        Ok(Sink {
            tls,
            hostname: std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_owned())
                .unwrap_or_default(),
            output,
            wake: Notify::new(),
            failures: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            last: std::sync::Mutex::default(),
        })
    }

    pub(super) fn queue(&self) -> String {
        self.output.name.clone()
    }

    pub(super) async fn send(&self, i: &Incident, notice: Notice) -> Result<(), SendError> {
        let timeout = Duration::from_secs(10);
        match tokio::time::timeout(timeout, self.send_inner(i, notice)).await {
            Ok(r) => r,
            Err(_) => Err(format!("no answer within {timeout:?}")),
        }
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
                let body = webhook_body(i, notice, *format);
                self.post(url, &serde_json::to_vec(&body).map_err(|e| e.to_string())?)
                    .await
            }
            Target::File { path } => {
                let path = path.clone();
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

    async fn post(&self, uri: &hyper::Uri, body: &[u8]) -> Result<(), SendError> {
        let url = uri;
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
            Err(format!("{} answered {status}", origin(url)))
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

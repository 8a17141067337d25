//! Listeners, TLS handshakes, the tonic servers, and graceful shutdown.
//!
//! Handshakes run in their own tasks with a deadline for the first bytes
//! and one for the whole handshake; [`Admission`] bounds how many are
//! pending and evicts silent ones first, so neither a slow nor a hostile
//! client ever stalls `accept` or shuts out anyone else. The
//! identity in the client certificate is read once, after the handshake,
//! and travels with the connection as [`ConnInfo`].

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Server;
use tonic::transport::server::Connected;

use ruse_pki::{ClientAuth, ServerCert};
use ruse_proto::admin::v1::admin_service_server::AdminServiceServer;
use ruse_proto::agent::v1::agent_service_server::AgentServiceServer;
use ruse_proto::types::TrustDomain;

use super::admission::Admission;
use crate::api::{AdminApi, AdminGate, AgentApi, ConnInfo};
use crate::core::Core;

/// Connections accepted and not yet handed to the gRPC server (silent,
/// or in their TLS handshake), per listener. Far below the process's file
/// descriptor limit, so pending connections alone can never exhaust it.
const MAX_PENDING: usize = 2048;
/// A source holding more than this share of the pending connections may
/// lose its oldest handshakes to newcomers.
const MAX_SOURCE_SHARE: usize = MAX_PENDING / 4;
/// How long a new connection may stay silent before its first byte (a
/// real client sends its ClientHello at once).
const FIRST_BYTES_TIMEOUT: Duration = Duration::from_secs(3);
/// Concurrent streams one connection may open (an agent needs two).
const MAX_STREAMS_PER_CONNECTION: u32 = 16;
/// How long a connection without a client certificate may live: long
/// enough to enroll, too short to hold a file descriptor for good.
const ANONYMOUS_LIFETIME: Duration = Duration::from_secs(60);

/// A TLS connection with what its handshake established.
pub struct TlsConn {
    inner: TlsStream<TcpStream>,
    info: ConnInfo,
    /// When a connection without a client certificate is closed.
    expires: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl TlsConn {
    /// An error once an anonymous connection has lived its lifetime (the
    /// server then closes it); registers the wake-up until then.
    fn expired(&mut self, cx: &mut Context<'_>) -> Option<io::Error> {
        let expires = self.expires.as_mut()?;
        expires.as_mut().poll(cx).is_ready().then(|| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                "connection without a client certificate outlived its lifetime",
            )
        })
    }
}

impl std::fmt::Debug for TlsConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConn").field("info", &self.info).finish()
    }
}

impl Connected for TlsConn {
    type ConnectInfo = ConnInfo;
    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some(e) = self.expired(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if let Some(e) = self.expired(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// A handshake that failed because one side judged the other's
/// certificate outside its validity period: a clock is wrong somewhere.
fn clock_trouble(e: &io::Error, peer: SocketAddr) -> Option<String> {
    let tls = e.get_ref()?.downcast_ref::<rustls::Error>()?;
    match tls {
        rustls::Error::InvalidCertificate(c) => ruse_pki::validity_error_text(
            c,
            &format!("the certificate of the client at {peer}"),
            "this controller",
        ),
        // rustls, OpenSSL and Go send it for "not yet valid" too.
        rustls::Error::AlertReceived(rustls::AlertDescription::CertificateExpired) => {
            Some(format!(
                "the client at {peer} refused this controller's certificate as expired or not yet valid: its clock (or this host's) is probably wrong"
            ))
        }
        _ => None,
    }
}

/// Clock warnings, at most one a minute (a client with a wrong clock
/// retries for as long as it runs), with how many were left out.
#[derive(Debug, Default)]
struct ClockWarnings {
    last: std::sync::Mutex<Option<std::time::Instant>>,
    left_out: std::sync::atomic::AtomicU64,
}

impl ClockWarnings {
    fn warn(&self, text: &str) {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_some_and(|t| t.elapsed() < Duration::from_secs(60)) {
            self.left_out
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return;
        }
        *last = Some(std::time::Instant::now());
        let left_out = self.left_out.swap(0, std::sync::atomic::Ordering::Relaxed);
        tracing::warn!(similar_left_out = left_out, "{text}");
    }
}

/// Accepts TCP connections, completes TLS handshakes concurrently, and
/// hands finished connections to tonic. Silent and slow connections are
/// kept from shutting anyone out by [`Admission`].
fn accept_tls(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    trust_domain: TrustDomain,
    handshake_timeout: Duration,
    mut stop: watch::Receiver<bool>,
) -> ReceiverStream<io::Result<TlsConn>> {
    let (tx, rx) = mpsc::channel(64);
    let admission = Admission::new(MAX_PENDING, MAX_SOURCE_SHARE);
    let clock_warnings = Arc::new(ClockWarnings::default());
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = stop.changed() => break,
                () = admission.room() => {}
            }
            let (tcp, peer) = tokio::select! {
                _ = stop.changed() => break,
                accepted = listener.accept() => match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        // Out of file descriptors and similar: back off
                        // briefly rather than spin.
                        tracing::warn!(error = %e, pending = admission.pending(), evicted = admission.evicted(), "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let _ = tcp.set_nodelay(true);
            let (ticket, mut evicted) = admission.admit(peer.ip());
            let acceptor = acceptor.clone();
            let clock_warnings = clock_warnings.clone();
            let tx = tx.clone();
            let trust_domain = trust_domain.clone();
            tokio::spawn(async move {
                let handshake = async {
                    // The first bytes (a ClientHello) come at once from a
                    // real client; a silent socket is not kept.
                    let mut first = [0u8; 1];
                    match tokio::time::timeout(FIRST_BYTES_TIMEOUT, tcp.peek(&mut first)).await {
                        Ok(Ok(n)) if n > 0 => ticket.talking(),
                        _ => return Err("no first bytes"),
                    }
                    match tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => Ok(tls),
                        Ok(Err(e)) => {
                            match clock_trouble(&e, peer) {
                                Some(text) => clock_warnings.warn(&text),
                                None => tracing::debug!(%peer, error = %e, "tls handshake failed"),
                            }
                            Err("handshake failed")
                        }
                        Err(_) => Err("handshake timed out"),
                    }
                };
                let tls = tokio::select! {
                    _ = &mut evicted => Err("evicted to make room"),
                    result = handshake => result,
                };
                drop(ticket);
                let tls = match tls {
                    Ok(tls) => tls,
                    Err(why) => {
                        tracing::debug!(%peer, why, "connection dropped before its handshake ended");
                        return;
                    }
                };
                let identity = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|chain| chain.first())
                    .and_then(|leaf| ruse_pki::certificate_identity(&trust_domain, leaf).ok())
                    .map(|info| info.identity);
                // Without a certificate a connection can only enroll (or
                // ask for health): it gets a lifetime.
                let expires = identity
                    .is_none()
                    .then(|| Box::pin(tokio::time::sleep(ANONYMOUS_LIFETIME)));
                let conn = TlsConn {
                    inner: tls,
                    info: ConnInfo { peer, identity },
                    expires,
                };
                let _ = tx.send(Ok(conn)).await;
            });
        }
    });
    ReceiverStream::new(rx)
}

/// Connections the kernel completes and queues for `accept` (capped by
/// `net.core.somaxconn`). A reconnect storm or a burst of silent sockets
/// arrives faster than one accept loop takes them; beyond the queue the
/// kernel drops handshakes and clients wait for its retransmissions.
const LISTEN_BACKLOG: u32 = 4096;

/// Binds a listener with [`LISTEN_BACKLOG`].
fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// A running controller's listeners.
#[derive(Debug)]
pub struct Listeners {
    pub agent_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    /// Plaintext gRPC health for probes, when `health_listen` is set.
    pub health_addr: Option<SocketAddr>,
    /// The web console, when `console_listen` is set.
    pub console_addr: Option<SocketAddr>,
    pub(crate) tasks: Vec<JoinHandle<Result<(), tonic::transport::Error>>>,
}

/// Binds the configured addresses and serves until `stop` turns true.
pub async fn serve(core: Arc<Core>, stop: watch::Receiver<bool>) -> io::Result<Listeners> {
    let config = &core.config;
    let (chain, key) = core
        .ca
        .issue_server(&config.server_names, config.server_cert_ttl)
        .map_err(io::Error::other)?;
    let server_cert = ServerCert::new(chain, key.to_der()).map_err(io::Error::other)?;
    let tls_config = |auth| {
        ruse_pki::server_config(
            core.ca.cert_der(),
            core.ca.trust_domain(),
            server_cert.clone(),
            auth,
            core.fleet.clone(),
        )
        .map_err(io::Error::other)
    };
    let max = config.max_message_bytes;
    let agent_api = AgentServiceServer::new(AgentApi::new(core.clone()))
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    let admin_api = AdminGate::new(
        AdminServiceServer::new(AdminApi::new(core.clone()))
            .max_decoding_message_size(max)
            .max_encoding_message_size(max),
        core.refusals.clone(),
    );
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<AgentServiceServer<AgentApi>>()
        .await;
    health_reporter
        .set_serving::<AdminServiceServer<AdminApi>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(ruse_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(io::Error::other)?;

    let builder = || {
        Server::builder()
            .http2_keepalive_interval(Some(config.heartbeat_interval.max(Duration::from_secs(10))))
            .http2_keepalive_timeout(Some(Duration::from_secs(20)))
            .max_concurrent_streams(Some(MAX_STREAMS_PER_CONNECTION))
            .max_connection_age(config.max_connection_age)
            .max_connection_age_grace(config.shutdown_grace)
    };
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };

    let agent_listener = bind(config.listen)?;
    let agent_addr = agent_listener.local_addr()?;
    let mut tasks = Vec::new();

    let admin_addr = if let Some(admin_listen) = config.admin_listen {
        let admin_listener = bind(admin_listen)?;
        let admin_addr = admin_listener.local_addr()?;
        let incoming = accept_tls(
            admin_listener,
            TlsAcceptor::from(tls_config(ClientAuth::Required)?),
            core.ca.trust_domain().clone(),
            config.handshake_timeout,
            stop.clone(),
        );
        let router = builder()
            .add_service(admin_api)
            .add_service(health.clone())
            .add_service(reflection.clone());
        tasks.push(tokio::spawn(
            router.serve_with_incoming_shutdown(incoming, stopped(stop.clone())),
        ));
        let incoming = accept_tls(
            agent_listener,
            TlsAcceptor::from(tls_config(ClientAuth::Optional)?),
            core.ca.trust_domain().clone(),
            config.handshake_timeout,
            stop.clone(),
        );
        let router = builder()
            .add_service(agent_api)
            .add_service(health)
            .add_service(reflection);
        tasks.push(tokio::spawn(
            router.serve_with_incoming_shutdown(incoming, stopped(stop.clone())),
        ));
        admin_addr
    } else {
        let incoming = accept_tls(
            agent_listener,
            TlsAcceptor::from(tls_config(ClientAuth::Optional)?),
            core.ca.trust_domain().clone(),
            config.handshake_timeout,
            stop.clone(),
        );
        let router = builder()
            .add_service(agent_api)
            .add_service(admin_api)
            .add_service(health)
            .add_service(reflection);
        tasks.push(tokio::spawn(
            router.serve_with_incoming_shutdown(incoming, stopped(stop.clone())),
        ));
        agent_addr
    };
    // Plaintext grpc.health.v1 only, for kubelet gRPC probes (which
    // cannot speak TLS); nothing else is reachable there.
    let health_addr = match config.health_listen {
        Some(addr) => {
            let listener = TcpListener::bind(addr).await?;
            let bound = listener.local_addr()?;
            let (probe_reporter, probe) = tonic_health::server::health_reporter();
            probe_reporter
                .set_service_status("", tonic_health::ServingStatus::Serving)
                .await;
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            tasks.push(tokio::spawn(
                Server::builder()
                    .add_service(probe)
                    .serve_with_incoming_shutdown(incoming, stopped(stop.clone())),
            ));
            Some(bound)
        }
        None => None,
    };
    let console_addr = match config.console_listen {
        Some(addr) => {
            let tls =
                ruse_pki::console_server_config(server_cert.clone()).map_err(io::Error::other)?;
            let listener = bind(addr)?;
            let bound = listener.local_addr()?;
            core.console_port
                .store(bound.port(), std::sync::atomic::Ordering::Relaxed);
            tokio::spawn(crate::console::serve(
                core.clone(),
                listener,
                tls,
                stop.clone(),
            ));
            tracing::info!(addr = %bound, "console listening");
            Some(bound)
        }
        None => None,
    };
    tasks.push(tokio::spawn(renew_server_cert(
        core.clone(),
        server_cert,
        stop.clone(),
    )));
    Ok(Listeners {
        agent_addr,
        admin_addr,
        health_addr,
        console_addr,
        tasks,
    })
}

/// When a server certificate valid for `ttl` is replaced: at two thirds of
/// its life, so a failure leaves time to retry.
fn renew_after(ttl: Duration) -> Duration {
    ttl / 3 * 2
}

/// Issues a fresh server certificate (new key) before the served one
/// expires, so a controller that runs for months keeps a valid one.
async fn renew_server_cert(
    core: Arc<Core>,
    cert: Arc<ServerCert>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), tonic::transport::Error> {
    let config = &core.config;
    let mut wait = renew_after(config.server_cert_ttl);
    loop {
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = crate::stopped(&mut stop) => return Ok(()),
        }
        let issued = core
            .ca
            .issue_server(&config.server_names, config.server_cert_ttl)
            .and_then(|(chain, key)| cert.replace(chain, key.to_der()));
        wait = match issued {
            Ok(()) => {
                tracing::info!(
                    valid_for = %ruse_proto::types::format_duration(config.server_cert_ttl),
                    "server certificate renewed"
                );
                renew_after(config.server_cert_ttl)
            }
            Err(e) => {
                tracing::error!(error = %e, "server certificate renewal failed; retrying in a minute");
                Duration::from_secs(60)
            }
        };
    }
}

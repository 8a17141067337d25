//! Dialling the controller: TCP, then TLS with a configuration from
//! `ruse-pki`, then HTTP/2 for tonic.

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use std::pin::Pin;
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::ClientConfig;
use tokio_rustls::rustls::pki_types::ServerName;
use tonic::transport::{Channel, Endpoint};

/// Default port of the controller's agent and admin listener.
pub const DEFAULT_PORT: u16 = 7443;

/// Where the controller listens: `https://HOST[:PORT]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControllerUrl {
    host: String,
    port: u16,
}

/// Why a controller URL was not accepted.
#[derive(Debug, thiserror::Error)]
#[error("invalid controller URL {url:?}: {reason}")]
pub struct InvalidUrl {
    url: String,
    reason: &'static str,
}

impl ControllerUrl {
    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn from_addr(addr: SocketAddr) -> Self {
        ControllerUrl {
            host: addr.ip().to_string(),
            port: addr.port(),
        }
    }
}

impl FromStr for ControllerUrl {
    type Err = InvalidUrl;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |reason| InvalidUrl {
            url: s.chars().take(200).collect(),
            reason,
        };
        let rest = s
            .strip_prefix("https://")
            .ok_or_else(|| bad("must start with https://"))?;
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains('/') || rest.contains('@') || rest.contains('?') {
            return Err(bad("must be https://HOST[:PORT] with no path"));
        }
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let (host, after) = v6
                .split_once(']')
                .ok_or_else(|| bad("unterminated IPv6 address"))?;
            host.parse::<std::net::Ipv6Addr>()
                .map_err(|_| bad("invalid IPv6 address"))?;
            let port = match after.strip_prefix(':') {
                Some(p) => Some(p),
                None if after.is_empty() => None,
                None => return Err(bad("unexpected text after the address")),
            };
            (host, port)
        } else {
            match rest.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (rest, None),
            }
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let port = match port {
            Some(p) => p.parse().map_err(|_| bad("invalid port"))?,
            None => DEFAULT_PORT,
        };
        if port == 0 {
            return Err(bad("port 0"));
        }
        Ok(ControllerUrl {
            host: host.to_owned(),
            port,
        })
    }
}

impl std::fmt::Display for ControllerUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "https://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "https://{}:{}", self.host, self.port)
        }
    }
}

/// How to dial.
#[derive(Debug, Clone)]
pub struct DialOptions {
    pub connect_timeout: Duration,
    /// HTTP/2 PING interval; the connection is closed when a PING is not
    /// answered within `keepalive_timeout`.
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
    /// Source address to bind (the fleet simulator spreads connections over
    /// several loopback addresses).
    pub local_addr: Option<IpAddr>,
}

impl Default for DialOptions {
    fn default() -> Self {
        DialOptions {
            connect_timeout: Duration::from_secs(10),
            keepalive_interval: Duration::from_secs(60),
            keepalive_timeout: Duration::from_secs(20),
            local_addr: None,
        }
    }
}

/// Connects to the controller with `tls` and returns a tonic channel.
///
/// The connection is made now; failures (refused, TLS rejected, pin
/// mismatch) are returned here rather than on the first call.
pub async fn connect(
    url: &ControllerUrl,
    tls: Arc<ClientConfig>,
    options: &DialOptions,
) -> Result<Channel, tonic::transport::Error> {
    let host = url.host.clone();
    let port = url.port;
    let local = options.local_addr;
    let connector = tower::service_fn(move |_: tonic::transport::Uri| {
        let host = host.clone();
        let tls = tls.clone();
        async move {
            let tcp = tcp_connect(&host, port, local).await?;
            let name = ServerName::try_from(host)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
            let stream = TlsConnector::from(tls).connect(name, tcp).await?;
            let stream = Primed::first_read(stream).await?;
            Ok::<_, std::io::Error>(TokioIo::new(stream))
        }
    });
    // The URI only supplies :authority; the connector above does the dialling.
    let authority = if url.host.contains(':') {
        format!("http://[{}]:{}", url.host, url.port)
    } else {
        format!("http://{}:{}", url.host, url.port)
    };
    Endpoint::from_shared(authority)?
        .connect_timeout(options.connect_timeout)
        .http2_keep_alive_interval(options.keepalive_interval)
        .keep_alive_timeout(options.keepalive_timeout)
        .keep_alive_while_idle(true)
        .tcp_nodelay(true)
        .connect_with_connector(connector)
        .await
}

/// A TLS stream whose first bytes were read at connect time and are
/// replayed before the rest.
///
/// With TLS 1.3 the client finishes its handshake before the server has
/// checked the client certificate, so a refusal (revoked, expired, unknown
/// CA) arrives as an alert on the first read. The controller's HTTP/2
/// server speaks first (its SETTINGS frame), so reading here turns a refusal
/// into a typed `rustls::Error` from `connect` instead of an untyped
/// transport error later.
struct Primed<S> {
    first: Vec<u8>,
    offset: usize,
    inner: S,
}

impl<S: AsyncRead + Unpin> Primed<S> {
    async fn first_read(mut inner: S) -> std::io::Result<Self> {
        let mut first = vec![0u8; 1024];
        let n = inner.read(&mut first).await?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the controller closed the connection after the TLS handshake",
            ));
        }
        first.truncate(n);
        Ok(Primed {
            first,
            offset: 0,
            inner,
        })
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Primed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.offset < self.first.len() {
            let n = (self.first.len() - self.offset).min(buf.remaining());
            let start = self.offset;
            buf.put_slice(&self.first[start..start + n]);
            self.offset += n;
            if self.offset == self.first.len() {
                self.first = Vec::new();
                self.offset = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Primed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

async fn tcp_connect(host: &str, port: u16, local: Option<IpAddr>) -> std::io::Result<TcpStream> {
    let mut last_err = None;
    for addr in tokio::net::lookup_host((host, port)).await? {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        if let Some(ip) = local {
            socket.bind(SocketAddr::new(ip, 0))?;
        }
        match socket.connect(addr).await {
            Ok(stream) => {
                stream.set_nodelay(true)?;
                return Ok(stream);
            }
            Err(e) => last_err = Some(e),
        }
    }
    Err(last_err.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("{host} resolves to no address"),
        )
    }))
}

/// The TLS error at the root of a transport failure, if there is one.
pub fn tls_error<'a>(
    err: &'a (dyn std::error::Error + 'static),
) -> Option<&'a tokio_rustls::rustls::Error> {
    let mut current: Option<&'a (dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = current {
        if let Some(tls) = e.downcast_ref::<tokio_rustls::rustls::Error>() {
            return Some(tls);
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && let Some(inner) = io.get_ref()
            && let Some(tls) = inner.downcast_ref::<tokio_rustls::rustls::Error>()
        {
            return Some(tls);
        }
        current = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse() {
        for (s, host, port) in [
            ("https://ruse.example:8443", "ruse.example", 8443),
            ("https://ruse.example", "ruse.example", DEFAULT_PORT),
            ("https://127.0.0.1:7443/", "127.0.0.1", 7443),
            ("https://[::1]:9000", "::1", 9000),
            ("https://[::1]", "::1", DEFAULT_PORT),
        ] {
            let url: ControllerUrl = s.parse().unwrap();
            assert_eq!((url.host(), url.port()), (host, port), "{s}");
            assert_eq!(url.to_string().parse::<ControllerUrl>().unwrap(), url);
        }
        for bad in [
            "http://ruse.example",
            "ruse.example:7443",
            "https://",
            "https://:7443",
            "https://host:0",
            "https://host:99999",
            "https://host/path",
            "https://user@host",
            "https://[::1",
            "https://[zz]:1",
        ] {
            assert!(bad.parse::<ControllerUrl>().is_err(), "{bad} accepted");
        }
    }
}

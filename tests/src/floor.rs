//! The floor of a login flood: a server that answers each attempt the way
//! a decoy does (FTP banner, `331`, `530`; an HTTP `401` page) and records
//! nothing, on one thread.
//!
//! Flooding it with the same generator and connection count as a decoy
//! shows what this machine's TCP stack and the generator allow at all, so
//! a decoy's rate can be read against it: no server that accepts each
//! attempt on its own connection here answers faster.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the floor answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// Banner, `331` to `USER`, `530` to `PASS`, then it closes.
    Ftp,
    /// Reads one request (head and `Content-Length` body), answers `401`,
    /// closes.
    Http,
}

/// A request larger than this is cut off (the flood's are ~200 bytes).
const MAX_REQUEST: usize = 16 << 10;
/// A connection that sends nothing for this long is closed.
const IDLE: Duration = Duration::from_secs(5);

const HTTP_401: &[u8] = b"HTTP/1.1 401 Unauthorized\r\ncontent-type: text/html\r\n\
content-length: 24\r\nconnection: close\r\n\r\n<p>Invalid password.</p>";

/// Serves `protocol` on `addr` until `until`, on a runtime of one thread
/// (blocks the calling thread); returns the logins answered.
pub fn serve(protocol: Protocol, addr: SocketAddr, until: Instant) -> std::io::Result<u64> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = TcpListener::bind(addr).await?;
        let answered = Arc::new(AtomicU64::new(0));
        let deadline = tokio::time::Instant::from_std(until);
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                () = tokio::time::sleep_until(deadline) => break,
            };
            let Ok((stream, _)) = accepted else { continue };
            let answered = answered.clone();
            tokio::spawn(async move {
                let served = match protocol {
                    Protocol::Ftp => ftp(stream).await,
                    Protocol::Http => http(stream).await,
                };
                if served.unwrap_or(false) {
                    answered.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        Ok(answered.load(Ordering::Relaxed))
    })
}

/// Reads until `buf` holds a line; returns its end (after the `\n`).
async fn line(stream: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<Option<usize>> {
    loop {
        if let Some(at) = buf.iter().position(|&b| b == b'\n') {
            return Ok(Some(at + 1));
        }
        if !read_more(stream, buf).await? {
            return Ok(None);
        }
    }
}

/// Appends what the peer sends next; false at its end, at the size
/// limit, or after [`IDLE`].
async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<bool> {
    let mut chunk = [0u8; 1024];
    let n = match tokio::time::timeout(IDLE, stream.read(&mut chunk)).await {
        Ok(read) => read?,
        Err(_) => return Ok(false),
    };
    buf.extend_from_slice(&chunk[..n]);
    Ok(n > 0 && buf.len() <= MAX_REQUEST)
}

async fn ftp(mut stream: TcpStream) -> std::io::Result<bool> {
    stream.write_all(b"220 FTP server ready.\r\n").await?;
    let mut buf = Vec::new();
    for answer in [
        &b"331 Please specify the password.\r\n"[..],
        b"530 Login incorrect.\r\n",
    ] {
        let Some(end) = line(&mut stream, &mut buf).await? else {
            return Ok(false);
        };
        buf.drain(..end);
        stream.write_all(answer).await?;
    }
    Ok(true)
}

async fn http(mut stream: TcpStream) -> std::io::Result<bool> {
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        if !read_more(&mut stream, &mut buf).await? {
            return Ok(false);
        }
    };
    let body = String::from_utf8_lossy(&buf[..head_end])
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse::<usize>().ok())
                .flatten()
        })
        .unwrap_or(0);
    while buf.len() < head_end + body.min(MAX_REQUEST) {
        if !read_more(&mut stream, &mut buf).await? {
            return Ok(false);
        }
    }
    stream.write_all(HTTP_401).await?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn exchange(protocol: Protocol, send: &[&[u8]]) -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let until = Instant::now() + Duration::from_secs(2);
        let server = std::thread::spawn(move || serve(protocol, addr, until).unwrap());
        let mut stream = loop {
            match TcpStream::connect(addr).await {
                Ok(s) => break s,
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        for part in send {
            stream.write_all(part).await.unwrap();
        }
        let mut out = String::new();
        stream.read_to_string(&mut out).await.unwrap();
        drop(stream);
        assert_eq!(server.join().unwrap(), 1, "one login answered");
        out
    }

    #[tokio::test]
    async fn ftp_answers_a_login_with_530() {
        let out = exchange(Protocol::Ftp, &[b"USER a\r\n", b"PASS b\r\n"]).await;
        assert!(out.starts_with("220 "), "{out}");
        assert!(out.contains("\r\n331 "), "{out}");
        assert!(out.ends_with("530 Login incorrect.\r\n"), "{out}");
    }

    #[tokio::test]
    async fn http_reads_the_whole_form_before_answering() {
        let out = exchange(
            Protocol::Http,
            &[
                b"POST /login HTTP/1.1\r\nContent-Length: 21\r\n\r\nusername=a",
                b"&password=b",
            ],
        )
        .await;
        assert!(out.starts_with("HTTP/1.1 401 "), "{out}");
        assert!(out.ends_with("<p>Invalid password.</p>"), "{out}");
    }
}

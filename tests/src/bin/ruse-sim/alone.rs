//! The scenarios that run alone, without a simulated fleet: `flood` (a
//! login flood against a decoy service), `floor` (the other end of one, for
//! comparison) and `touch` (a real agent's lure reads timed to the watch
//! stream).

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use tonic::transport::Channel;

use ruse_proto::admin::v1 as admin_pb;
use ruse_proto::admin::v1::admin_service_client::AdminServiceClient;
use ruse_proto::types::UnixMs;

use crate::fleet::dial;
use crate::{Args, Summary};

/// One login attempt on a fresh connection; true when the server answered
/// it (FTP `530`, any HTTP status line).
async fn login_attempt(target: &FloodTarget, source: IpAddr, n: u64) -> std::io::Result<bool> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(std::net::SocketAddr::new(source, 0))?;
    let stream = socket.connect(target.addr).await?;
    let mut stream = BufReader::new(stream);
    let mut line = String::new();
    let user = format!("radiology{}", n % 997);
    let password = format!("Winter{n}!");
    match &target.path {
        None => {
            stream.read_line(&mut line).await?; // banner
            stream
                .get_mut()
                .write_all(format!("USER {user}\r\n").as_bytes())
                .await?;
            line.clear();
            stream.read_line(&mut line).await?; // 331
            stream
                .get_mut()
                .write_all(format!("PASS {password}\r\n").as_bytes())
                .await?;
            line.clear();
            stream.read_line(&mut line).await?;
            let _ = stream.get_mut().write_all(b"QUIT\r\n").await;
            Ok(line.starts_with("530"))
        }
        Some(path) => {
            let body = format!("username={user}&password={password}");
            let request = format!(
                "POST {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: ruse-sim\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                target.addr,
                body.len()
            );
            stream.get_mut().write_all(request.as_bytes()).await?;
            stream.read_line(&mut line).await?;
            Ok(line.starts_with("HTTP/1."))
        }
    }
}

struct FloodTarget {
    addr: std::net::SocketAddr,
    /// `None` for FTP; the form's path for HTTP.
    path: Option<String>,
}

fn flood_target(spec: &str) -> anyhow::Result<FloodTarget> {
    let (scheme, rest) = spec
        .split_once("://")
        .context("--flood must look like ftp://HOST:PORT or http://HOST:PORT/PATH")?;
    let (host, path) = match rest.split_once('/') {
        Some((h, p)) => (h, Some(format!("/{p}"))),
        None => (rest, None),
    };
    let addr = host
        .parse()
        .with_context(|| format!("--flood: {host} is not HOST:PORT"))?;
    match scheme {
        "ftp" => Ok(FloodTarget { addr, path: None }),
        "http" => Ok(FloodTarget {
            addr,
            path: Some(path.unwrap_or_else(|| "/".into())),
        }),
        other => bail!("--flood: unknown scheme {other} (ftp or http)"),
    }
}

/// Serves the flood's protocol at its address for `duration`, recording
/// nothing.
pub async fn floor(args: &Args, duration: Duration, summary: &mut Summary) -> anyhow::Result<()> {
    let spec = args.flood.as_deref().context("`floor` needs --flood URL")?;
    let target = flood_target(spec)?;
    let protocol = match target.path {
        None => ruse_e2e::floor::Protocol::Ftp,
        Some(_) => ruse_e2e::floor::Protocol::Http,
    };
    let until = Instant::now() + duration;
    let addr = target.addr;
    println!("ruse-sim: floor serving {spec} for {}s", duration.as_secs());
    let answered =
        tokio::task::spawn_blocking(move || ruse_e2e::floor::serve(protocol, addr, until))
            .await?
            .with_context(|| format!("serving {addr}"))?;
    summary.add("floor", "logins answered", answered as f64, "");
    summary.add(
        "floor",
        "answered rate",
        answered as f64 / duration.as_secs_f64(),
        "logins/s",
    );
    Ok(())
}

/// A login flood for `duration`: attempts answered per second.
pub async fn flood(args: &Args, duration: Duration, summary: &mut Summary) -> anyhow::Result<()> {
    let spec = args.flood.as_deref().context("`flood` needs --flood URL")?;
    let target = Arc::new(flood_target(spec)?);
    let answered = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let counter = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now();
    let mut workers = Vec::new();
    for w in 0..args.flood_connections.max(1) {
        let (target, answered, failed, counter) = (
            target.clone(),
            answered.clone(),
            failed.clone(),
            counter.clone(),
        );
        let source = dial(w, args.sources)
            .local_addr
            .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
        workers.push(tokio::spawn(async move {
            while t0.elapsed() < duration {
                let n = counter.fetch_add(1, Ordering::Relaxed);
                match tokio::time::timeout(
                    Duration::from_secs(5),
                    login_attempt(&target, source, n),
                )
                .await
                {
                    Ok(Ok(true)) => answered.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    for w in workers {
        let _ = w.await;
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let answered = answered.load(Ordering::Relaxed);
    summary.add("flood", "connections", args.flood_connections as f64, "");
    summary.add("flood", "attempts answered", answered as f64, "");
    summary.add(
        "flood",
        "attempts failed",
        failed.load(Ordering::Relaxed) as f64,
        "",
    );
    summary.add(
        "flood",
        "answered rate",
        answered as f64 / elapsed,
        "attempts/s",
    );
    Ok(())
}

/// Every regular file under `dir`.
fn files_under(dir: &std::path::Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            files_under(&entry.path(), out)?;
        } else if kind.is_file() {
            out.push(entry.path());
        }
    }
    Ok(())
}

/// Lure read → event on a watch stream, one read at a time.
pub async fn touch(
    args: &Args,
    admin: &mut AdminServiceClient<Channel>,
    timeout: Duration,
    summary: &mut Summary,
) -> anyhow::Result<()> {
    let root = args
        .touch_root
        .as_ref()
        .context("`touch` needs --touch-root (the real agent's lure directory)")?;
    let mut files = Vec::new();
    files_under(root, &mut files).with_context(|| format!("reading {}", root.display()))?;
    files.sort();
    if files.is_empty() {
        bail!("no lure files under {}", root.display());
    }
    let mut stream = admin
        .watch_events(admin_pb::WatchEventsRequest {
            filter: Some(admin_pb::EventFilter {
                kind: "touch".into(),
                since_ms: UnixMs::now().0,
                ..Default::default()
            }),
            after_cursor: 0,
        })
        .await?
        .into_inner();
    let deadline = Instant::now() + timeout;
    let mut latencies = Vec::with_capacity(args.touches);
    let mut lost = 0usize;
    for k in 0..args.touches {
        if Instant::now() > deadline {
            bail!("timed out after {k} touches");
        }
        // Spaced so the agent's per-lure rate limit never applies.
        tokio::time::sleep(Duration::from_millis(120)).await;
        let file = &files[k % files.len()];
        let name = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let t0 = Instant::now();
        let read = file.clone();
        tokio::task::spawn_blocking(move || std::fs::read(read)).await??;
        let seen = tokio::time::timeout(Duration::from_secs(5), async {
            while let Some(m) = stream.message().await? {
                if m.event.is_some_and(|e| e.path.ends_with(&name)) {
                    return Ok::<bool, tonic::Status>(true);
                }
            }
            Ok(false)
        })
        .await;
        match seen {
            Ok(Ok(true)) => latencies.push(t0.elapsed()),
            Ok(Ok(false)) => bail!("the watch stream ended"),
            Ok(Err(e)) => bail!("the watch stream failed: {e}"),
            Err(_) => lost += 1,
        }
    }
    latencies.sort();
    summary.add("touch", "lure files", files.len() as f64, "");
    summary.add("touch", "reads", args.touches as f64, "");
    summary.add("touch", "events not seen within 5 s", lost as f64, "");
    summary.percentiles("touch", "read to watch", &latencies, &[50.0, 99.0, 100.0]);
    Ok(())
}

//! Counters and gauges, rendered in the Prometheus text format.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// A gauge value: name, help, labels, value.
pub type Gauge<'a> = (&'a str, &'a str, Vec<(&'a str, String)>, u64);

/// The controller's own counters. Gauges that describe current state
/// (agents by state, outbox depths) are computed when rendered.
#[derive(Debug, Default)]
pub struct Metrics {
    pub events_received: AtomicU64,
    pub events_persisted: AtomicU64,
    pub events_duplicate: AtomicU64,
    pub events_rejected: AtomicU64,
    pub events_over_quota: AtomicU64,
    pub events_trimmed: AtomicU64,
    events_by_kind: Mutex<BTreeMap<String, u64>>,
}

impl Metrics {
    pub fn event_persisted(&self, kind: &str) {
        self.events_persisted.fetch_add(1, Ordering::Relaxed);
        let mut by_kind = self
            .events_by_kind
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        *by_kind.entry(kind.to_owned()).or_default() += 1;
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// The exposition text; `gauges` are (name, help, labels, value).
    pub fn render(&self, gauges: &[Gauge<'_>]) -> String {
        let mut out = String::new();
        let counter = |out: &mut String, name: &str, help: &str, value: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
            );
        };
        counter(
            &mut out,
            "ruse_events_received_total",
            "Lure events received from agents.",
            self.events_received.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "ruse_events_persisted_total",
            "Lure events stored durably.",
            self.events_persisted.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "ruse_events_duplicate_total",
            "Lure events received again and dropped by id.",
            self.events_duplicate.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "ruse_events_rejected_total",
            "Lure events refused (unknown lure, another agent's lure, malformed).",
            self.events_rejected.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "ruse_events_over_quota_total",
            "Events counted but not stored because their agent was over its quota.",
            self.events_over_quota.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "ruse_events_trimmed_total",
            "Stored events deleted by retention or the store budget.",
            self.events_trimmed.load(Ordering::Relaxed),
        );
        let _ = writeln!(
            out,
            "# HELP ruse_events_by_kind_total Lure events stored, by kind.\n# TYPE ruse_events_by_kind_total counter"
        );
        for (kind, n) in self
            .events_by_kind
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "ruse_events_by_kind_total{{kind=\"{}\"}} {n}",
                escape(kind)
            );
        }
        let mut last = "";
        for (name, help, labels, value) in gauges {
            if *name != last {
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
                last = name;
            }
            if labels.is_empty() {
                let _ = writeln!(out, "{name} {value}");
            } else {
                let labels: Vec<String> = labels
                    .iter()
                    .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
                    .collect();
                let _ = writeln!(out, "{name}{{{}}} {value}", labels.join(","));
            }
        }
        out
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Serves `GET /metrics` (plain HTTP, Prometheus text format) on `addr`
/// until `stop` turns true, each scrape answered with what `render` returns
/// (the controller passes `Core::render_metrics`; this module knows no
/// more of it). Returns the bound address.
pub async fn serve(
    render: impl Fn() -> String + Send + Sync + 'static,
    addr: std::net::SocketAddr,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<(std::net::SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tracing::info!(addr = %bound, "metrics served at /metrics");
    let render = std::sync::Arc::new(render);
    let task = tokio::spawn(async move {
        loop {
            let (stream, _) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        tracing::warn!(error = %e, "metrics accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        continue;
                    }
                },
                () = crate::stopped(&mut stop) => return,
            };
            let render = render.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let render = render.clone();
                        async move {
                            let (status, body) = if req.uri().path() == "/metrics"
                                && req.method() == hyper::Method::GET
                            {
                                (hyper::StatusCode::OK, render())
                            } else {
                                (
                                    hyper::StatusCode::NOT_FOUND,
                                    "only GET /metrics is served here\n".to_owned(),
                                )
                            };
                            let mut r = hyper::Response::new(http_body_util::Full::new(
                                bytes::Bytes::from(body),
                            ));
                            *r.status_mut() = status;
                            r.headers_mut().insert(
                                hyper::header::CONTENT_TYPE,
                                hyper::header::HeaderValue::from_static(
                                    "text/plain; version=0.0.4",
                                ),
                            );
                            Ok::<_, std::convert::Infallible>(r)
                        }
                    },
                );
                let _ = tokio::time::timeout(
                    std::time::Duration::from_secs(30),
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
                )
                .await;
            });
        }
    });
    Ok((bound, task))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_gauges() {
        let m = Metrics::default();
        Metrics::add(&m.events_received, 3);
        m.event_persisted("touch");
        m.event_persisted("touch");
        let text = m.render(&[
            (
                "ruse_agents",
                "Agents by state.",
                vec![("state", "online".into())],
                2,
            ),
            (
                "ruse_agents",
                "Agents by state.",
                vec![("state", "offline".into())],
                1,
            ),
        ]);
        assert!(text.contains("ruse_events_received_total 3\n"));
        assert!(text.contains("ruse_events_by_kind_total{kind=\"touch\"} 2\n"));
        assert_eq!(text.matches("# TYPE ruse_agents gauge").count(), 1);
        assert!(text.contains("ruse_agents{state=\"offline\"} 1\n"));
    }
}

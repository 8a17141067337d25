//! Linux: fanotify and inotify (`watcher.rs`), `/proc` for processes,
//! `uname` and interfaces for host facts (`facts.rs`), SIGTERM from
//! systemd (or Ctrl-C in a console) to stop.

pub mod facts;
pub mod watcher;

use std::io;

use ruse_proto::convert::{EventProcess, HostFacts};
use ruse_proto::types::Labels;

use super::Platform;

/// The Linux implementation of the platform seam.
#[derive(Debug, Clone, Copy)]
pub struct Linux;

impl Platform for Linux {
    type Watcher = watcher::Watcher;

    fn watcher() -> io::Result<watcher::Watcher> {
        watcher::Watcher::new()
    }

    fn process(pid: i32) -> Option<EventProcess> {
        watcher::process_info(pid)
    }

    fn host_facts(labels: &Labels) -> HostFacts {
        facts::gather(labels)
    }

    async fn stop_requested() {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
}

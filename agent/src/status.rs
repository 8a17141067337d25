//! `status.json` in the state directory: what the running agent is doing,
//! rewritten when it changes (at most once a second) and every 30 seconds
//! so its age shows the agent is alive. `ruse-agent status` prints it; an
//! administrator (or `deploy/agent/windows/verify.ps1`) reads it without
//! asking the controller anything.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use ruse_proto::types::UnixMs;

use crate::AgentStatus;

/// The file's name in the state directory.
pub const STATUS_FILE: &str = "status.json";
/// How often the file is rewritten when nothing changes.
pub const REFRESH: Duration = Duration::from_secs(30);
/// At most one write per this interval.
const SETTLE: Duration = Duration::from_secs(1);

/// The file's contents: the status, when it was written and the
/// controller the agent dials.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusFile {
    /// When it was written (ms since the epoch).
    pub written_ms: i64,
    pub controller: String,
    #[serde(flatten)]
    pub status: AgentStatus,
}

impl StatusFile {
    fn of(s: &AgentStatus, controller: &str) -> StatusFile {
        StatusFile {
            written_ms: UnixMs::now().0,
            controller: controller.to_owned(),
            status: s.clone(),
        }
    }

    /// Reads the file in `state_dir`.
    pub fn read(state_dir: &Path) -> Result<StatusFile, String> {
        let path = state_dir.join(STATUS_FILE);
        let bytes = std::fs::read(&path).map_err(|e| {
            format!(
                "cannot read {} ({e}); is the agent running with this state directory?",
                path.display()
            )
        })?;
        serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Seconds since it was written.
    pub fn age(&self) -> Duration {
        UnixMs(self.written_ms).until(UnixMs::now())
    }
}

/// Keeps `state_dir/status.json` up to date with `status` until the
/// channel closes.
pub async fn keep(
    state_dir: PathBuf,
    controller: String,
    mut status: watch::Receiver<AgentStatus>,
) {
    let path = state_dir.join(STATUS_FILE);
    // An enrolled agent knows its identity moments after it starts; a
    // first write before that would call it "not enrolled" for a second.
    if status.borrow().agent_id.is_none() {
        let _ = tokio::time::timeout(SETTLE, status.changed()).await;
    }
    loop {
        let current = StatusFile::of(&status.borrow_and_update(), &controller);
        let written = serde_json::to_vec_pretty(&current)
            .map_err(|e| e.to_string())
            .and_then(|bytes| {
                ruse_pki::write_private_file(&path, &bytes).map_err(|e| e.to_string())
            });
        if let Err(e) = written {
            tracing::debug!(path = %path.display(), error = %e, "cannot write the status file");
        }
        tokio::time::sleep(SETTLE).await;
        // Rewritten on a change, or after REFRESH anyway; over when the
        // agent is gone.
        if let Ok(Err(_)) = tokio::time::timeout(REFRESH, status.changed()).await {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_file_follows_the_status_and_says_when_it_was_written() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, rx) = watch::channel(AgentStatus::default());
        let task = tokio::spawn(keep(dir.path().to_path_buf(), "https://c:8443".into(), rx));
        // Not enrolled yet: the first write waits up to a second for the
        // identity.
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(StatusFile::read(dir.path()).is_err());
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let first = StatusFile::read(dir.path()).unwrap();
        assert!(!first.status.connected);
        assert_eq!(first.controller, "https://c:8443");
        tx.send_modify(|s| {
            s.connected = true;
            s.events_acked = 7;
            s.problems = vec!["reads of lures are not attributed: x".into()];
        });
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let now = StatusFile::read(dir.path()).unwrap();
        assert!(
            now.status.connected && now.status.events_acked == 7,
            "{now:?}"
        );
        assert_eq!(now.status.problems.len(), 1);
        drop(tx);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(task.is_finished());
        let err = StatusFile::read(&dir.path().join("nope")).unwrap_err();
        assert!(err.contains("is the agent running"), "{err}");
    }
}

//! The defects a hostile test of the system found, each reproduced: what an
//! unauthenticated peer, a compromised agent, a local user on an endpoint
//! and an operator could do, and must no longer be able to.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use std::time::Duration;

use ruse_e2e::{TestAgent, TestController, eventually};

/// Every file and directory below `dir`, with its mode.
fn modes(dir: &Path) -> Vec<(PathBuf, u32)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap().flatten() {
            let meta = entry.metadata().unwrap();
            if meta.is_dir() {
                stack.push(entry.path());
            }
            out.push((entry.path(), meta.permissions().mode() & 0o777));
        }
    }
    out
}

/// An FTP password an intruder typed sits in the agent's outbox until the
/// controller acknowledges it, and in the controller's store for good:
/// neither may be readable by other local users, whatever the umask the
/// processes were started with (tests run with the usual 022).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_agent_and_controller_write_is_private_whatever_the_umask() {
    let tc = TestController::start().await;
    let token = tc.token("site=icu", 1, Duration::from_secs(600)).await;
    let mut agent = tc.spawn_agent(tc.agent_config("a", &token, ""));
    agent.connected().await;
    let mut event = TestAgent::touch_event("no-such-lure", 1);
    event.detail = "PASS Winter2026!".into();
    agent.events.record(vec![event]).await.unwrap();
    let state = agent.state_dir();
    eventually("the outbox exists", Duration::from_secs(5), || {
        let log = state.join("outbox/outbox.log");
        async move { log.exists() }
    })
    .await;

    // Both directories are closed to other users, so nothing inside can
    // be reached whatever mode a library gave its files (sled uses the
    // umask) ...
    for top in [state.as_path(), tc.data_dir(), &tc.data_dir().join("store")] {
        let mode = std::fs::metadata(top).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode & 0o077, 0, "{} is {mode:o}", top.display());
    }
    // ... and what the agent writes itself is private on its own.
    let written: Vec<_> = modes(&state)
        .into_iter()
        .filter(|(p, _)| {
            !p.is_dir() && !p.to_string_lossy().ends_with("cert.pem") && !p.ends_with("ca.pem")
        })
        .collect();
    assert!(
        written
            .iter()
            .any(|(p, _)| p.ends_with("outbox/outbox.log"))
    );
    for (path, mode) in written {
        assert_eq!(mode & 0o077, 0, "{} is {mode:o}", path.display());
    }
    agent.stop().await.unwrap();
}

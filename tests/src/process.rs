//! Real processes: the `ruse-controller`, `ruse-agent` and `rusectl`
//! binaries of this build, started and killed by pid.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// The path of a workspace binary built alongside these tests
/// (`target/<profile>/<name>`). `RUSE_BIN_DIR` overrides the directory.
pub fn binary(name: &str) -> PathBuf {
    let dir = match std::env::var_os("RUSE_BIN_DIR") {
        Some(d) => PathBuf::from(d),
        None => {
            let exe = std::env::current_exe().expect("current_exe");
            // target/<profile>/deps/<test> -> target/<profile>
            exe.parent()
                .and_then(Path::parent)
                .expect("test binary location")
                .to_owned()
        }
    };
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the binaries first (`cargo build --workspace --bins`), or set RUSE_BIN_DIR",
        path.display()
    );
    path
}

/// A child process that is killed when dropped.
pub struct Proc {
    pub child: Child,
    pub name: String,
    pub log: PathBuf,
}

impl Proc {
    pub fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).expect("pid")
    }

    /// `kill -9`.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then wait up to `within` for the exit status.
    pub fn terminate(&mut self, within: Duration) -> std::process::ExitStatus {
        use nix::sys::signal::{Signal, kill};
        use nix::unistd::Pid;
        let _ = kill(Pid::from_raw(self.pid()), Signal::SIGTERM);
        self.wait(within).unwrap_or_else(|| {
            panic!(
                "{} did not exit within {within:?} of SIGTERM; log:\n{}",
                self.name,
                self.log_text()
            )
        })
    }

    /// Waits up to `within` for the process to exit by itself.
    pub fn wait(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + within;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if std::time::Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// What the process wrote: its log, and the copy of its standard
    /// output where that was read separately (the controller's JSON logs).
    pub fn log_text(&self) -> String {
        let mut text = std::fs::read_to_string(&self.log).unwrap_or_default();
        if let Ok(stdout) = std::fs::read_to_string(self.log.with_extension("stdout")) {
            text.push_str(&stdout);
        }
        text
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Starts a binary with its stderr (and stdout unless `stdout` is given)
/// going to `log`.
pub fn spawn(name: &str, args: &[&str], log: &Path) -> Proc {
    let file = std::fs::File::create(log).expect("log file");
    let child = Command::new(binary(name))
        .args(args)
        .stdin(Stdio::null())
        .stdout(file.try_clone().expect("log file"))
        .stderr(file)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
    Proc {
        child,
        name: name.to_owned(),
        log: log.to_owned(),
    }
}

/// `ruse-controller serve` with JSON logs; returns once it is serving, with
/// the agent address it bound.
pub fn spawn_controller(data_dir: &Path, listen: &str, log: &Path) -> (Proc, SocketAddr) {
    spawn_controller_with(data_dir, listen, log, &[])
}

/// [`spawn_controller`] with more environment (`RUSE_STORE_URL`, …).
pub fn spawn_controller_with(
    data_dir: &Path,
    listen: &str,
    log: &Path,
    env: &[(&str, &str)],
) -> (Proc, SocketAddr) {
    let stderr = std::fs::File::create(log).expect("log file");
    let mut child = Command::new(binary("ruse-controller"))
        .args([
            "serve",
            "--data-dir",
            &data_dir.display().to_string(),
            "--listen",
            listen,
            "--log-format",
            "json",
            "--server-name",
            "127.0.0.1",
        ])
        .env("RUSE_HEARTBEAT_INTERVAL", "200ms")
        .env("RUSE_OFFLINE_AFTER", "2s")
        .env("RUSE_STATE_FLUSH_INTERVAL", "200ms")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .expect("cannot start ruse-controller");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    let log_copy = log.with_extension("stdout");
    std::thread::spawn(move || {
        let mut copy = std::fs::File::create(log_copy).ok();
        let mut sent = false;
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(f) = copy.as_mut() {
                use std::io::Write;
                let _ = writeln!(f, "{line}");
            }
            if !sent
                && let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                && v["fields"]["message"] == "controller serving"
                && let Some(addr) = v["fields"]["agent_addr"]
                    .as_str()
                    .and_then(|a| a.parse::<SocketAddr>().ok())
            {
                let _ = tx.send(addr);
                sent = true;
            }
        }
    });
    let mut proc = Proc {
        child,
        name: "ruse-controller".into(),
        log: log.to_owned(),
    };
    match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(addr) => (proc, addr),
        Err(_) => {
            proc.kill9();
            panic!("ruse-controller did not start; log:\n{}", proc.log_text());
        }
    }
}

/// `ruse-controller init --data-dir DATA` (trust domain `ruse.test`);
/// returns the CA pin it printed.
pub fn init_controller(data: &Path) -> String {
    init_controller_with(data, &[])
}

/// [`init_controller`] with more environment (`RUSE_STORE_URL`, …).
pub fn init_controller_with(data: &Path, env: &[(&str, &str)]) -> String {
    let out = Command::new(binary("ruse-controller"))
        .args([
            "init",
            "--data-dir",
            &data.display().to_string(),
            "--trust-domain",
            "ruse.test",
        ])
        .envs(env.iter().copied())
        .output()
        .expect("cannot run ruse-controller init");
    assert!(
        out.status.success(),
        "init failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let pin = text
        .split_whitespace()
        .find(|w| w.starts_with("sha256:"))
        .expect("init prints the CA pin")
        .to_owned();
    assert!(
        text.contains("rusectl.toml"),
        "init names the context file: {text}"
    );
    pin
}

/// `rusectl` with a context file and, optionally, `--controller`.
#[derive(Debug, Clone)]
pub struct Ctl {
    pub context_file: PathBuf,
    pub controller: Option<String>,
}

impl Ctl {
    /// rusectl with the context `init` wrote into DATA, whose URL (port
    /// 7443) is not the test's, so every call passes `--controller URL`.
    pub fn for_data_dir(data: &Path, url: &str) -> Self {
        Ctl {
            context_file: data.join("admin").join("rusectl.toml"),
            controller: Some(url.to_owned()),
        }
    }

    /// Runs `rusectl ARGS` and returns its output.
    pub fn run(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(binary("rusectl"));
        cmd.arg("--context-file").arg(&self.context_file);
        if let Some(url) = &self.controller {
            cmd.arg("--controller").arg(url);
        }
        cmd.args(args).output().expect("cannot run rusectl")
    }

    /// Runs `rusectl ARGS -o json` and parses the output; panics with
    /// stderr on failure.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        let out = self.run(&all);
        assert!(
            out.status.success(),
            "rusectl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("rusectl printed invalid JSON")
    }
}

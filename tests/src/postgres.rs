//! A throw-away PostgreSQL 15 cluster for one test: `initdb` and `postgres`
//! under a temporary directory (as the `postgres` user when the test runs
//! as root, since PostgreSQL refuses to run as root), on a free port on
//! 127.0.0.1; stopped and removed when dropped. No mock database.
//!
//! initdb without fsync takes ~0.5 s here, so each test makes its own
//! cluster (nextest runs every test in its own process anyway).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use ruse_controller::store::PgOptions;

/// Where Debian's postgresql-15 puts the server programs.
pub const BIN: &str = "/usr/lib/postgresql/15/bin";

/// A running cluster. Superuser `ruse`, trust authentication on 127.0.0.1.
pub struct Postgres {
    dir: TempDir,
    pub port: u16,
    server: Option<Child>,
    /// Server settings beyond the defaults (`-c` values).
    settings: Vec<String>,
}

/// The command `program` as the `postgres` user when this process is root.
fn command(program: &Path) -> Command {
    if nix::unistd::geteuid().is_root() {
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid",
            "postgres",
            "--regid",
            "postgres",
            "--init-groups",
            "--",
        ])
        .arg(program);
        c
    } else {
        Command::new(program)
    }
}

impl Postgres {
    /// A new cluster, or `None` (the test is skipped, saying why) when
    /// PostgreSQL 15 is not installed; under `CI=true` that fails instead.
    pub fn start(test: &str) -> Option<Postgres> {
        Self::start_with(test, None)
    }

    /// A cluster that speaks TLS with `cert_pem` (the chain) and `key_pem`.
    pub fn start_tls(test: &str, cert_pem: &str, key_pem: &str) -> Option<Postgres> {
        Self::start_with(test, Some((cert_pem, key_pem)))
    }

    fn start_with(test: &str, tls: Option<(&str, &str)>) -> Option<Postgres> {
        let bin = Path::new(BIN);
        if !bin.join("initdb").is_file() {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "{test} needs PostgreSQL 15 ({BIN}); scripts/install-test-deps.sh installs it"
            );
            eprintln!(
                "SKIPPED {test}: PostgreSQL 15 is not installed (run scripts/install-test-deps.sh as root, or under CI=true this is a failure)"
            );
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let owner = nix::unistd::geteuid().is_root().then(|| {
            nix::unistd::User::from_name("postgres")
                .unwrap()
                .expect("the postgres user (made by the postgresql-15 package)")
                .uid
                .as_raw()
        });
        if let Some(uid) = owner {
            std::os::unix::fs::chown(dir.path(), Some(uid), None).unwrap();
        }
        let mut settings = Vec::new();
        if let Some((cert, key)) = tls {
            use std::os::unix::fs::PermissionsExt;
            let (cert_file, key_file) =
                (dir.path().join("server.crt"), dir.path().join("server.key"));
            std::fs::write(&cert_file, cert).unwrap();
            std::fs::write(&key_file, key).unwrap();
            std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
            for f in [&cert_file, &key_file] {
                if let Some(uid) = owner {
                    std::os::unix::fs::chown(f, Some(uid), None).unwrap();
                }
            }
            settings.push("ssl=on".to_owned());
            settings.push(format!("ssl_cert_file={}", cert_file.display()));
            settings.push(format!("ssl_key_file={}", key_file.display()));
        }
        let data = dir.path().join("data");
        let out = command(&bin.join("initdb"))
            .args(["-A", "trust", "-U", "ruse", "--no-sync", "-E", "UTF8"])
            .arg("--locale=C")
            .arg("-D")
            .arg(&data)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = crate::free_ports(1)[0];
        let mut pg = Postgres {
            port,
            server: None,
            dir,
            settings,
        };
        pg.launch();
        Some(pg)
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Starts the server on the cluster's port and waits until it accepts
    /// connections.
    fn launch(&mut self) {
        let log = std::fs::File::create(self.dir.path().join("server.log")).unwrap();
        let mut server = command(&Path::new(BIN).join("postgres"));
        for setting in &self.settings {
            server.arg("-c").arg(setting);
        }
        let child = server
            .arg("-D")
            .arg(self.data())
            .args(["-p", &self.port.to_string()])
            .arg("-k")
            .arg(self.dir.path())
            .args(["-c", "listen_addresses=127.0.0.1"])
            .args(["-c", "max_connections=200"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.server = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = Command::new(Path::new(BIN).join("pg_isready"))
                .args(["-q", "-h", "127.0.0.1", "-p", &self.port.to_string()])
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "PostgreSQL did not start: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// A new, empty database; its URL.
    pub fn database(&self, name: &str) -> String {
        self.psql("postgres", &format!("CREATE DATABASE {name}"));
        self.url(name)
    }

    /// The URL of database `name` (TLS off: the cluster has none).
    pub fn url(&self, name: &str) -> String {
        format!(
            "postgres://ruse@127.0.0.1:{}/{name}?sslmode=disable",
            self.port
        )
    }

    /// Store options for database `name`.
    pub fn options(&self, name: &str) -> PgOptions {
        PgOptions {
            url: self.url(name),
            ca_file: None,
        }
    }

    /// Runs `sql` in database `db` with psql; its output, unaligned.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let out = Command::new("psql")
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "ruse",
            ])
            .args(["-d", db, "-c", sql])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "psql {sql:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// `kill -9` of every server process at once, as a crash of the
    /// database host would (`pg_ctl -m immediate` semantics), then a
    /// restart on the same port and data: crash recovery runs.
    pub fn crash_and_restart(&mut self) {
        self.stop(nix::sys::signal::Signal::SIGQUIT);
        self.launch();
    }

    fn stop(&mut self, signal: nix::sys::signal::Signal) {
        if let Some(mut child) = self.server.take() {
            let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
            let _ = nix::sys::signal::kill(pid, signal);
            let _ = child.wait();
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // Immediate shutdown: the cluster is thrown away.
        self.stop(nix::sys::signal::Signal::SIGQUIT);
    }
}

//! The Windows agent under Wine: a throw-away Wine prefix per test
//! (a Windows `C:` drive inside a temporary directory), the cross-built
//! `ruse-agent.exe` (deploy/agent/windows/build.sh, which scripts/test.sh
//! runs before the tests) and processes started in it.
//!
//! Wine links a new profile's shell folders (Documents, Desktop, …) to
//! the Linux user's home and writes menus into it: every command here runs
//! with `HOME` in the test's directory, and the links are replaced by real
//! folders, as on Windows, so nothing a test plants leaves the prefix.
//!
//! Wine 8.0 lacks `ProcessPrng`, which every Rust program since 1.78 calls
//! at start; the prefix gets a test-only `bcryptprimitives.dll` built from
//! tests/windows/bcryptprimitives.c that provides it (Windows 10 and later
//! have it, as does Wine 8.13 and later). It is never shipped.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use crate::process::Proc;

/// The Windows build's directory: `RUSE_WINDOWS_DIR`, or `windows/` beside
/// the profile directories of the target directory.
pub fn artefact_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("RUSE_WINDOWS_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test> -> target/windows
    exe.parent()
        .and_then(Path::parent)
        .and_then(Path::parent)
        .expect("test binary location")
        .join("windows")
}

/// The cross-built agent, if it was built.
pub fn agent_exe() -> Option<PathBuf> {
    Some(artefact_dir().join("ruse-agent.exe")).filter(|p| p.exists())
}

/// Whether the Windows tests can run: Wine, MinGW (for the shim) and the
/// cross-built agent. Under `CI=true` a missing piece fails the test.
pub fn require(test: &str) -> bool {
    for tool in ["wine", "wineboot", "wineserver", "x86_64-w64-mingw32-gcc"] {
        if !crate::require_tool(test, tool) {
            return false;
        }
    }
    if agent_exe().is_none() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{test} needs {}: deploy/agent/windows/build.sh builds it (scripts/test.sh runs it first)",
            artefact_dir().join("ruse-agent.exe").display()
        );
        eprintln!("SKIPPED {test}: the Windows agent is not built (deploy/agent/windows/build.sh)");
        return false;
    }
    true
}

/// A Wine prefix: a Windows installation in a directory.
#[derive(Debug)]
pub struct Prefix {
    _dir: tempfile::TempDir,
    path: PathBuf,
    home: PathBuf,
    /// A console program waiting on its input for as long as the prefix
    /// lives: Wine ends its services when the last ordinary program ends
    /// (a `msiexec` that started one, say), which Windows does not.
    session: Option<std::process::Child>,
}

impl Prefix {
    /// A new prefix (`wineboot -i`, ~10 s, then the shim), removed with
    /// its wineserver when dropped.
    pub fn create() -> Prefix {
        let dir = tempfile::Builder::new()
            .prefix("ruse-wine-")
            .tempdir_in(std::env::var_os("RUSE_WINE_TMP").unwrap_or_else(|| "/var/tmp".into()))
            .expect("a directory for the Wine prefix");
        let path = dir.path().join("prefix");
        let home = dir.path().join("home");
        std::fs::create_dir_all(&home).unwrap();
        let mut prefix = Prefix {
            _dir: dir,
            path,
            home,
            session: None,
        };
        let out = prefix
            .command("wineboot")
            .arg("-i")
            .output()
            .expect("wineboot");
        assert!(
            out.status.success(),
            "wineboot -i failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        prefix.wait_server();
        prefix.unlink_shell_folders();
        let shim = prefix.windows_dir().join("system32/bcryptprimitives.dll");
        let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("windows/bcryptprimitives.c");
        let out = Command::new("x86_64-w64-mingw32-gcc")
            .args(["-shared", "-O2", "-o"])
            .arg(&shim)
            .arg(&source)
            .arg("-ladvapi32")
            .output()
            .expect("x86_64-w64-mingw32-gcc");
        assert!(
            out.status.success(),
            "building the ProcessPrng shim failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        prefix.session = Some(
            prefix
                .command("wine")
                .arg("cmd.exe")
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("wine cmd.exe"),
        );
        prefix
    }

    /// Replaces the profile's links to the Linux home by empty folders.
    fn unlink_shell_folders(&self) {
        for entry in std::fs::read_dir(self.profile()).unwrap().flatten() {
            let path = entry.path();
            if std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink()) {
                std::fs::remove_file(&path).unwrap();
                std::fs::create_dir(&path).unwrap();
            }
        }
    }

    /// The prefix directory (`WINEPREFIX`).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `C:\` as a Linux path.
    pub fn drive_c(&self) -> PathBuf {
        self.path.join("drive_c")
    }

    fn windows_dir(&self) -> PathBuf {
        self.drive_c().join("windows")
    }

    /// The Linux path of the prefix user's profile (`C:\users\<user>`).
    pub fn profile(&self) -> PathBuf {
        let users = self.drive_c().join("users");
        std::fs::read_dir(&users)
            .expect("C:\\users")
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name().is_some_and(|n| n != "Public")
                    && std::fs::symlink_metadata(p).is_ok_and(|m| m.is_dir())
            })
            .expect("a user profile in the prefix")
    }

    /// A command run in the prefix, quiet, without a display.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new(program);
        cmd.env("WINEPREFIX", &self.path)
            .env("HOME", &self.home)
            .env_remove("XDG_CONFIG_HOME")
            .env_remove("XDG_DATA_HOME")
            .env("WINEDEBUG", "-all")
            .env("WINEDLLOVERRIDES", "mscoree,mshtml=;winemenubuilder.exe=d")
            .env_remove("DISPLAY")
            .stdin(Stdio::null());
        cmd
    }

    /// Runs a Windows program to completion (`wine PROGRAM ARGS`).
    pub fn run(&self, program: &Path, args: &[&str]) -> Output {
        self.command("wine")
            .arg(program)
            .args(args)
            .output()
            .expect("wine")
    }

    /// `reg ARGS` in the prefix (Wine's `reg.exe`): whether it succeeded,
    /// and what it printed. The output goes through a file: a wineserver
    /// it starts would hold a pipe open for as long as it runs.
    ///
    /// Under load Wine itself now and then fails to start `reg.exe`
    /// ("ShellExecuteEx failed: Internal error", seen once in CI right
    /// after an uninstall); that is no answer from `reg`, so it is tried
    /// again, at most five times.
    pub fn reg(&self, args: &[&str]) -> (bool, String) {
        let mut attempt = 0;
        loop {
            let out = tempfile::NamedTempFile::new().expect("a temporary file");
            let status = self
                .command("wine")
                .arg("reg")
                .args(args)
                .stdout(out.reopen().expect("the temporary file"))
                .stderr(Stdio::null())
                .status()
                .expect("wine reg");
            let text = String::from_utf8_lossy(&std::fs::read(out.path()).unwrap_or_default())
                .replace("\r\n", "\n");
            attempt += 1;
            if text.contains("ShellExecuteEx failed") && attempt < 5 {
                std::thread::sleep(Duration::from_millis(500));
                continue;
            }
            return (status.success(), text);
        }
    }

    /// Starts a Windows program in the background, its output in `log`.
    pub fn spawn(&self, program: &Path, args: &[&str], log: &Path) -> Proc {
        let file = std::fs::File::create(log).expect("log file");
        let child = self
            .command("wine")
            .arg(program)
            .args(args)
            .stdout(file.try_clone().expect("log"))
            .stderr(file)
            .spawn()
            .expect("wine");
        Proc {
            child,
            name: program
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            log: log.to_path_buf(),
        }
    }

    /// Waits until every program in the prefix has ended (after wineboot;
    /// not once the session keeper runs).
    fn wait_server(&self) {
        let _ = self
            .command("wineserver")
            .arg("--wait")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }

    /// A Linux path as Wine's `Z:` drive names it.
    pub fn windows_path(path: &Path) -> String {
        format!("Z:{}", path.display()).replace('/', "\\")
    }
}

impl Drop for Prefix {
    fn drop(&mut self) {
        if let Some(mut session) = self.session.take() {
            let _ = session.kill();
            let _ = session.wait();
        }
        let _ = self
            .command("wineserver")
            .arg("-k")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// How long a Windows program under Wine may take to start (the first
/// start of a prefix loads much of Wine).
pub const START: Duration = Duration::from_secs(60);

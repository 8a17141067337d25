//! A throw-away Linux machine with systemd, for tests that follow the
//! documentation's `systemctl` and `apt` steps as an administrator would.
//!
//! This host's systemd 252 boots as PID 1 of new PID, mount and UTS
//! namespaces, pivoted into an overlay of this host's root whose writes go to a
//! tmpfs that vanishes with the machine: `/home`, `/tmp` and `/run` start
//! empty, everything else starts as this host has it, and nothing the
//! machine does reaches this host's files. It shares this host's network,
//! so it dials a controller on 127.0.0.1. systemd gets cgroups of its own
//! (`/ruse-machine-<pid>-<name>` in each hierarchy it uses), so two
//! machines do not meet there, and it starts nothing but what a test asks
//! for: its first unit is a target that wants only journald.
//!
//! Everything a machine runs dies with its PID 1 when it is dropped; the
//! cgroups it made are removed.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The hierarchies systemd 252 uses on a hybrid (v1 + v2) host, and the
/// one it uses alone on a v2-only host. cpuset and freezer are left out:
/// systemd does not use them on v1, and cpuset would need its CPUs set.
const CGROUP_HIERARCHIES: &[&str] = &[
    "cpu", "cpuacct", "memory", "devices", "blkio", "pids", "systemd", "unified",
];

/// What runs inside the new namespaces: join the machine's cgroups, build
/// its root and exec systemd as PID 1. Arguments: the scratch directory
/// (a tmpfs is mounted on it, seen only inside) and the host name;
/// `CGROUP_DIRS` lists the cgroup directories to join.
const BOOT: &str = r#"set -eu
scratch=$1; name=$2
for dir in $CGROUP_DIRS; do echo $$ > "$dir/cgroup.procs"; done
mount -t tmpfs -o mode=755 ruse-machine "$scratch"
mkdir "$scratch/upper" "$scratch/work" "$scratch/root"
mount -t overlay ruse-machine -o "lowerdir=/,upperdir=$scratch/upper,workdir=$scratch/work" "$scratch/root"
root=$scratch/root
mount -t proc proc "$root/proc"
mount --rbind /sys "$root/sys"
# Read-only, as in a container: no udev in the machine (it would act on
# this host's devices); the cgroup mounts below it stay writable.
mount -o remount,bind,ro "$root/sys"
mount --rbind /dev "$root/dev"
mount -t tmpfs -o mode=755 tmpfs "$root/run"
mount -t tmpfs -o mode=1777 tmpfs "$root/tmp"
mount -t tmpfs -o mode=755 tmpfs "$root/home"
hostname "$name"
echo "$name" > "$root/etc/hostname"
printf '127.0.0.1\tlocalhost\n127.0.1.1\t%s\n::1\tlocalhost ip6-localhost ip6-loopback\n' "$name" > "$root/etc/hosts"
# Each machine its own machine id (systemd makes one when there is none).
rm -f "$root/etc/machine-id"
mkdir -p "$root/etc/systemd/system"
# The network is this host's and up before the machine boots: nothing
# waits for it (units ordered after network-online.target start at once).
ln -sf /dev/null "$root/etc/systemd/system/systemd-networkd-wait-online.service"
printf '[Unit]\nDescription=What the test starts\nWants=systemd-journald.service\n' > "$root/etc/systemd/system/ruse-test.target"
export container=ruse-test
# pivot_root, not chroot: a chroot's processes see each other's paths
# from this host's root (the agent would report /tmp/…/usr/bin/cat).
cd "$root"
pivot_root . mnt
umount -l /mnt
exec /lib/systemd/systemd --unit=ruse-test.target
"#;

/// The environment of commands run in a machine: a root shell's, nothing
/// of the test's.
const ENV: &[(&str, &str)] = &[
    (
        "PATH",
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    ),
    ("HOME", "/root"),
    ("LANG", "C.UTF-8"),
    ("USER", "root"),
    ("LOGNAME", "root"),
];

pub struct Machine {
    pub name: String,
    /// `unshare`, whose child is the machine's systemd.
    unshare: Child,
    /// systemd's pid as this host sees it.
    init: u32,
    /// Cgroup directories made for it (removed when it is dropped).
    cgroups: Vec<PathBuf>,
    _scratch: tempfile::TempDir,
}

impl Machine {
    /// Boots a machine named `name` (its host name) and waits until its
    /// systemd answers `systemctl`.
    pub fn boot(name: &str) -> Machine {
        let scratch = tempfile::tempdir().expect("scratch directory");
        let leaf = format!("ruse-machine-{}-{name}", std::process::id());
        let mut cgroups = Vec::new();
        for hierarchy in CGROUP_HIERARCHIES {
            let base = Path::new("/sys/fs/cgroup").join(hierarchy);
            if !base.join("cgroup.procs").exists() {
                continue;
            }
            let dir = base.join(&leaf);
            std::fs::create_dir(&dir)
                .unwrap_or_else(|e| panic!("cannot make cgroup {}: {e}", dir.display()));
            cgroups.push(dir);
        }
        if cgroups.is_empty() {
            // A v2-only host mounts the one hierarchy at the top.
            let dir = Path::new("/sys/fs/cgroup").join(&leaf);
            std::fs::create_dir(&dir)
                .unwrap_or_else(|e| panic!("cannot make cgroup {}: {e}", dir.display()));
            cgroups.push(dir);
        }
        let dirs = cgroups
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(" ");
        let log = scratch.path().with_extension("boot.log");
        let log_file = std::fs::File::create(&log).expect("boot log");
        let unshare = Command::new("unshare")
            .args([
                "--mount",
                "--pid",
                "--uts",
                "--fork",
                "--propagation",
                "private",
                "sh",
                "-c",
                BOOT,
                "boot",
            ])
            .arg(scratch.path())
            .arg(name)
            .env("CGROUP_DIRS", dirs)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("boot log"))
            .stderr(log_file)
            .spawn()
            .expect("cannot run unshare (util-linux)");
        let mut machine = Machine {
            name: name.to_owned(),
            init: 0,
            unshare,
            cgroups,
            _scratch: scratch,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let boot_log = || std::fs::read_to_string(&log).unwrap_or_default();
            if let Ok(Some(status)) = machine.unshare.try_wait() {
                panic!("machine {name} did not boot ({status}):\n{}", boot_log());
            }
            if machine.init == 0 {
                machine.init = child_named(machine.unshare.id(), "systemd").unwrap_or(0);
            } else {
                let out = machine.sh("systemctl is-system-running");
                let state = String::from_utf8_lossy(&out.stdout).trim().to_owned();
                if state == "running" || state == "degraded" {
                    return machine;
                }
            }
            assert!(
                Instant::now() < deadline,
                "machine {name}: systemd did not come up within 30 s:\n{}",
                boot_log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs `sh -c COMMAND` in the machine as root, in `/root`, with a
    /// root shell's environment.
    pub fn sh(&self, command: &str) -> Output {
        self.sh_in("/root", command)
    }

    /// [`Machine::sh`] in the directory `dir` of the machine.
    pub fn sh_in(&self, dir: &str, command: &str) -> Output {
        self.answering(dir, command, "")
    }

    /// [`Machine::sh_in`] with `answers` on its standard input, as a
    /// person would type them at its prompts.
    pub fn answering(&self, dir: &str, command: &str, answers: &str) -> Output {
        use std::io::Write;
        let mut child = Command::new("nsenter")
            .args(["-t", &self.init.to_string(), "-m", "-p", "-u", "-r", "-w"])
            .args(["env", "-i"])
            .args(ENV.iter().map(|(k, v)| format!("{k}={v}")))
            .args(["sh", "-c", &format!("cd {dir} && {command}")])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot run nsenter (util-linux)");
        let mut stdin = child.stdin.take().expect("stdin");
        // A command that reads nothing may be gone before this is written.
        let _ = stdin.write_all(answers.as_bytes());
        drop(stdin);
        child.wait_with_output().expect("nsenter's output")
    }

    /// The last lines `unit` logged (journald runs in every machine).
    pub fn journal(&self, unit: &str) -> String {
        let out = self.sh(&format!("journalctl --no-pager -o cat -n 60 -u {unit}"));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Where this host sees the machine's `path` (to copy files in and
    /// read them out).
    pub fn path(&self, path: &str) -> PathBuf {
        Path::new("/proc")
            .join(self.init.to_string())
            .join("root")
            .join(path.trim_start_matches('/'))
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        use nix::sys::signal::{Signal, kill};
        use nix::unistd::Pid;
        // SIGKILL to a PID namespace's init ends every process in it.
        if self.init != 0
            && let Ok(pid) = i32::try_from(self.init)
        {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        let _ = self.unshare.kill();
        let _ = self.unshare.wait();
        // The kernel frees a cgroup only once its last task is gone.
        let deadline = Instant::now() + Duration::from_secs(5);
        for dir in &self.cgroups {
            while remove_cgroup(dir).is_err() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// A child of `parent` whose command name is `name`.
fn child_named(parent: u32, name: &str) -> Option<u32> {
    let tasks = std::fs::read_dir(format!("/proc/{parent}/task")).ok()?;
    for task in tasks.flatten() {
        let children = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        for child in children.split_whitespace() {
            let comm = std::fs::read_to_string(format!("/proc/{child}/comm")).unwrap_or_default();
            if comm.trim() == name {
                return child.parse().ok();
            }
        }
    }
    None
}

/// Removes a cgroup and every cgroup under it, deepest first.
fn remove_cgroup(dir: &Path) -> std::io::Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    for entry in std::fs::read_dir(dir)?.flatten() {
        if entry.file_type()?.is_dir() {
            remove_cgroup(&entry.path())?;
        }
    }
    std::fs::remove_dir(dir)
}

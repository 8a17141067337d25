//! What ships in `deploy/`, checked without a cluster: the Kubernetes
//! overlays rendered (the custom resource of the CloudNativePG example is
//! not known to the schema validator, and is checked by its fields),
//! validated against the schemas and scanned; the
//! Dockerfiles scanned; the agent's systemd unit verified and scored; the
//! install script and the Debian package installed into a temporary root
//! against a real controller, used, and removed with nothing left behind.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;

use ruse_e2e::process::{Ctl, Proc, binary, init_controller, spawn_controller};
use ruse_e2e::{eventually, find_tool, output_text, require_root, require_tool, workspace};

fn tool(name: &str) -> PathBuf {
    find_tool(name).unwrap_or_else(|| panic!("{name} vanished"))
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    if !out.status.success() {
        panic!(
            "{cmd:?} failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

/// checkov's JSON summary for one framework; panics with the failed checks
/// if any failed.
fn checkov(args: &[&str], cwd: &Path) -> Value {
    let out = Command::new(tool("checkov"))
        .args(args)
        .args(["--skip-download", "-o", "json"])
        .current_dir(cwd)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "checkov {args:?} printed no JSON ({e}):\n{}",
            output_text(&out)
        )
    });
    let summary = report["summary"].clone();
    let failed: Vec<String> = report["results"]["failed_checks"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            format!(
                "{} {} ({})",
                c["check_id"].as_str().unwrap_or("?"),
                c["resource"].as_str().unwrap_or("?"),
                c["check_name"].as_str().unwrap_or("?")
            )
        })
        .collect();
    assert!(
        out.status.success() && failed.is_empty() && summary["failed"] == 0,
        "checkov {args:?} failed ({}, {summary}):\n{}",
        out.status,
        failed.join("\n")
    );
    assert_eq!(summary["parsing_errors"], 0, "{summary}");
    assert!(
        summary["passed"].as_u64().unwrap_or(0) > 20,
        "checkov ran almost no checks: {summary}"
    );
    summary
}

#[test]
fn kubernetes_overlays_render_validate_and_pass_checkov() {
    let test = "kubernetes_overlays_render_validate_and_pass_checkov";
    if !(require_tool(test, "kubectl")
        && require_tool(test, "kubernetes-validate")
        && require_tool(test, "checkov"))
    {
        return;
    }
    // Not a dot-directory: checkov skips those.
    let out_dir = tempfile::Builder::new()
        .prefix("ruse-rendered-")
        .tempdir()
        .unwrap();
    let k8s = workspace().join("deploy/kubernetes");
    let mut rendered = BTreeMap::new();
    for overlay in [
        "overlays/production",
        "overlays/dev",
        "overlays/ha",
        "database",
        "agent",
    ] {
        let out = run(Command::new(tool("kubectl"))
            .arg("kustomize")
            .arg(k8s.join(overlay)));
        let yaml = String::from_utf8(out.stdout).unwrap();
        let file = out_dir
            .path()
            .join(format!("{}.yaml", overlay.replace('/', "-")));
        std::fs::write(&file, &yaml).unwrap();
        // Every document against the Kubernetes schemas, unknown fields
        // included.
        let checked = run(Command::new(tool("kubernetes-validate"))
            .arg("--strict")
            .arg(&file));
        if overlay == "database" {
            // The validator has no schema for custom resources: the
            // CloudNativePG Cluster is checked below, by what Ruse needs.
            assert!(
                output_text(&checked).contains("Couldn't find schema for kind Cluster"),
                "{}",
                output_text(&checked)
            );
        }
        rendered.insert(overlay, yaml);
    }

    let production = &rendered["overlays/production"];
    for needle in [
        "kind: StatefulSet",
        "volumeClaimTemplates:",
        "kind: NetworkPolicy",
        "kind: ConfigMap",
        "namespace: ruse",
        "pod-security.kubernetes.io/enforce: restricted",
        "replicas: 1",
        "secretName: ruse-ca",
        "runAsNonRoot: true",
        "readOnlyRootFilesystem: true",
        "allowPrivilegeEscalation: false",
        "type: RuntimeDefault",
        "- ALL",
        "livenessProbe:",
        "readinessProbe:",
        "grpc:",
        "prometheus.io/scrape: \"true\"",
        "type: LoadBalancer",
    ] {
        assert!(
            production.contains(needle),
            "production render lacks {needle:?}:\n{production}"
        );
    }
    // Replicas: stateless, spread, one at a time, on the database.
    let ha = &rendered["overlays/ha"];
    for needle in [
        "kind: Deployment",
        "replicas: 3",
        "kind: PodDisruptionBudget",
        "maxUnavailable: 1",
        "topologySpreadConstraints:",
        "topologyKey: kubernetes.io/hostname",
        "emptyDir:",
        "secretName: ruse-ca",
        "secretName: ruse-db-app",
        "secretName: ruse-db-ca",
        "store_url_file = \"/etc/ruse/db/uri\"",
        "port: 5432",
        "readinessProbe:",
        "image: ruse/ruse-controller:0.1.0",
    ] {
        assert!(ha.contains(needle), "ha render lacks {needle:?}:\n{ha}");
    }
    for absent in ["kind: StatefulSet", "volumeClaimTemplates:"] {
        assert!(!ha.contains(absent), "ha render has {absent:?}");
    }
    let database = &rendered["database"];
    for needle in [
        "kind: Cluster",
        "name: ruse-db",
        "instances: 3",
        "database: ruse",
        "owner: ruse",
        "minSyncReplicas: 1",
    ] {
        assert!(
            database.contains(needle),
            "database render lacks {needle:?}:\n{database}"
        );
    }
    assert!(
        rendered["overlays/dev"].contains("init_if_missing = true"),
        "the dev overlay creates its CA on first start"
    );
    let agent = &rendered["agent"];
    for needle in ["kind: DaemonSet", "hostPID: true", "SYS_ADMIN", "- ALL"] {
        assert!(agent.contains(needle), "agent render lacks {needle:?}");
    }
    assert!(
        !agent.contains("privileged: true"),
        "the agent DaemonSet asks for capabilities, not privilege"
    );

    // Scanned with the skips beside the manifests (each justified there).
    let summary = checkov(
        &[
            "-d",
            &out_dir.path().display().to_string(),
            "--config-file",
            &k8s.join(".checkov.yaml").display().to_string(),
        ],
        out_dir.path(),
    );
    eprintln!("checkov kubernetes: {summary}");
    let summary = checkov(
        &[
            "-d",
            &workspace().join("deploy/container").display().to_string(),
            "--framework",
            "dockerfile",
        ],
        out_dir.path(),
    );
    assert_eq!(summary["resource_count"], 2, "both Dockerfiles scanned");
    eprintln!("checkov dockerfile: {summary}");
}

#[test]
fn the_agent_unit_verifies_and_is_hardened() {
    let test = "the_agent_unit_verifies_and_is_hardened";
    if !require_tool(test, "systemd-analyze") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // verify checks that ExecStart exists: point it at this build.
    let unit = std::fs::read_to_string(workspace().join("deploy/agent/ruse-agent.service"))
        .unwrap()
        .replace(
            "/usr/local/bin/ruse-agent",
            &binary("ruse-agent").display().to_string(),
        );
    let path = dir.path().join("ruse-agent.service");
    std::fs::write(&path, &unit).unwrap();
    let out = run(Command::new(tool("systemd-analyze"))
        .arg("verify")
        .arg(&path));
    assert!(
        out.stderr.is_empty(),
        "systemd-analyze verify warns:\n{}",
        output_text(&out)
    );
    // Exposure 4.0 or better ("OK"); the unit scores 3.4 today.
    let out = run(Command::new(tool("systemd-analyze"))
        .args(["security", "--offline=true", "--threshold=40"])
        .arg(&path));
    let report = output_text(&out);
    assert!(report.contains("Overall exposure level"), "{report}");
    for line in [
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        // Homes stay read-only through ProtectSystem=strict but for
        // these; ProtectHome=read-only would win over them and keep every
        // lure out (the fleet-rollout test runs the unit).
        "ReadWritePaths=-/home -/root",
        "Restart=on-failure",
    ] {
        assert!(unit.contains(line), "unit lacks {line}");
    }
    let caps = unit
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .expect("a capability bounding set");
    let mut caps: Vec<&str> = caps.split_whitespace().collect();
    caps.sort_unstable();
    assert_eq!(
        caps,
        [
            "CAP_CHOWN",
            "CAP_DAC_OVERRIDE",
            "CAP_DAC_READ_SEARCH",
            "CAP_FOWNER",
            "CAP_NET_BIND_SERVICE",
            "CAP_SYS_ADMIN",
            "CAP_SYS_PTRACE"
        ],
        "only what fanotify, planting and low decoy ports need"
    );
}

/// Every path under `root` (except those starting with one of `except`)
/// with its type, mode, owner and, for files, a digest of the contents.
fn snapshot(root: &Path, except: &[&str]) -> BTreeMap<String, String> {
    fn walk(root: &Path, dir: &Path, except: &[&str], out: &mut BTreeMap<String, String>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for path in entries {
            let rel = path.strip_prefix(root).unwrap().display().to_string();
            if except.iter().any(|e| rel.starts_with(e)) {
                continue;
            }
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let what = if meta.is_dir() {
                "dir".to_owned()
            } else if meta.is_file() {
                let digest =
                    ring::digest::digest(&ring::digest::SHA256, &std::fs::read(&path).unwrap());
                format!("file {}", ruse_proto::types::hex(&digest.as_ref()[..8]))
            } else {
                "other".to_owned()
            };
            out.insert(
                rel,
                format!(
                    "{what} {:o} {}:{}",
                    meta.mode() & 0o7777,
                    meta.uid(),
                    meta.gid()
                ),
            );
            if meta.is_dir() {
                walk(root, &path, except, out);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, except, &mut out);
    out
}

fn assert_same_tree(before: &BTreeMap<String, String>, after: &BTreeMap<String, String>) {
    let added: Vec<_> = after.keys().filter(|k| !before.contains_key(*k)).collect();
    let removed: Vec<_> = before.keys().filter(|k| !after.contains_key(*k)).collect();
    let changed: Vec<_> = before
        .iter()
        .filter(|(k, v)| after.get(*k).is_some_and(|a| a != *v))
        .map(|(k, v)| format!("{k}: {v} -> {}", after[k]))
        .collect();
    assert!(
        added.is_empty() && removed.is_empty() && changed.is_empty(),
        "the tree changed:\nleft behind: {added:?}\nremoved: {removed:?}\nchanged: {changed:?}"
    );
}

/// A host's filesystem in miniature: a user's home with a file of theirs,
/// and the directories an installer expects.
fn fake_host(root: &Path) {
    for dir in [
        "home/nurse/Documents",
        "etc/systemd/system",
        "usr/local/bin",
        "var/lib",
        "root",
    ] {
        std::fs::create_dir_all(root.join(dir)).unwrap();
    }
    std::fs::write(
        root.join("home/nurse/Documents/handover.txt"),
        "bed 4: obs every 2h\n",
    )
    .unwrap();
    std::fs::write(root.join("etc/hosts"), "127.0.0.1 localhost\n").unwrap();
}

/// A real controller process with a pilot campaign for workstations of
/// this machine's architecture (a label that comes from host facts).
struct Site {
    // Stopped before its directory goes.
    _controller: Proc,
    dir: tempfile::TempDir,
    url: String,
    pin: String,
    ctl: Ctl,
}

impl Site {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let pin = init_controller(&data);
        let (controller, addr) =
            spawn_controller(&data, "127.0.0.1:0", &dir.path().join("controller.log"));
        let url = format!("https://{addr}");
        let ctl = Ctl::for_data_dir(&data, &url);
        let manifest = dir.path().join("pilot.yaml");
        std::fs::write(
            &manifest,
            "kind: Campaign\nname: pilot\nselector: {role: workstation}\nlures:\n  - {template: aws-credentials}\n  - {template: pgpass}\n  - {template: patient-csv}\n",
        )
        .unwrap();
        let out = ctl.run(&["apply", "-f", &manifest.display().to_string()]);
        assert!(out.status.success(), "{}", output_text(&out));
        Site {
            dir,
            _controller: controller,
            url,
            pin,
            ctl,
        }
    }

    /// A bootstrap token in a file; returns (file, secret).
    fn token_file(&self, name: &str, labels: &str) -> (PathBuf, String) {
        let token = self.ctl.json(&["token", "create", "--label", labels])["token"]
            .as_str()
            .unwrap()
            .to_owned();
        let file = self.dir.path().join(name);
        std::fs::write(&file, &token).unwrap();
        (file, token)
    }

    fn agents(&self) -> Vec<Value> {
        self.ctl.json(&["get", "agents"])["items"]
            .as_array()
            .unwrap()
            .clone()
    }

    /// Waits until the one agent is online and has acked the campaign,
    /// and its three lures are on disk under `home`.
    async fn wait_planted(&self, home: &Path) {
        eventually("the agent online", Duration::from_secs(20), || async {
            self.agents().iter().any(|a| a["state"] == "online")
        })
        .await;
        let out = self
            .ctl
            .run(&["rollout", "status", "campaign/pilot", "--timeout", "30s"]);
        assert!(out.status.success(), "rollout: {}", output_text(&out));
        eventually("three lures planted", Duration::from_secs(10), || async {
            planted(home) == 3
        })
        .await;
    }
}

/// Starts an installed agent binary as the unit would, but under `root`.
fn start_installed(bin: &Path, args: &[&str], log: &Path) -> Proc {
    let file = std::fs::File::create(log).unwrap();
    let child = Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .unwrap();
    Proc {
        child,
        name: "installed ruse-agent".into(),
        log: log.to_owned(),
    }
}

/// Files in the fake host's home that are not the user's own.
fn planted(home: &Path) -> usize {
    snapshot(home, &[])
        .iter()
        .filter(|(path, what)| what.starts_with("file") && *path != "Documents/handover.txt")
        .count()
}

#[tokio::test]
async fn install_script_enrolls_plants_reruns_and_uninstalls_to_nothing() {
    if !require_root("install_script_enrolls_plants_reruns_and_uninstalls_to_nothing") {
        return;
    }
    let site = Site::start();
    let root = site.dir.path().join("host");
    fake_host(&root);
    let before = snapshot(&root, &[]);
    let script = workspace().join("deploy/agent/install.sh");
    let agent_bin = binary("ruse-agent");
    let install_with = |token: Option<&Path>, pin: &str, extra: &[&str]| {
        let mut cmd = Command::new("sh");
        cmd.arg(&script)
            .args(["--controller", &site.url, "--ca-pin", pin])
            .args(extra)
            .arg("--binary")
            .arg(&agent_bin)
            .arg("--root")
            .arg(&root);
        if let Some(t) = token {
            cmd.arg("--token-file").arg(t);
        }
        cmd.stdin(Stdio::null()).output().unwrap()
    };
    let install = |token: Option<&Path>, pin: &str| {
        install_with(token, pin, &["--labels", "role=workstation,ward=4b"])
    };
    let (token_path, token) = site.token_file("token", "site=icu,role=workstation");

    // A malformed label is refused before anything is written.
    let out = install_with(
        Some(&token_path),
        &site.pin,
        &["--labels", "role=work station"],
    );
    assert!(!out.status.success());
    assert!(
        output_text(&out).contains("label role=work station"),
        "{}",
        output_text(&out)
    );
    assert_same_tree(&before, &snapshot(&root, &[]));

    // For a golden image: installed, token kept (0600) for the first
    // start, nothing enrolled yet.
    let out = install_with(Some(&token_path), &site.pin, &["--no-enroll"]);
    assert!(out.status.success(), "{}", output_text(&out));
    let kept = root.join("etc/ruse/token");
    assert_eq!(std::fs::read_to_string(&kept).unwrap(), token);
    assert_eq!(
        std::fs::metadata(&kept).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(site.agents().is_empty());

    // A wrong pin fails the install, with the reason, and enrolls nothing.
    let wrong_pin = format!("sha256:{}", "0".repeat(64));
    let out = install(Some(&token_path), &wrong_pin);
    assert!(!out.status.success());
    let said = output_text(&out);
    assert!(said.contains("enrollment failed"), "{said}");
    assert!(!said.contains(&token), "the token is never printed");
    assert!(site.agents().is_empty());

    // Installed, configured and enrolled; the token copy is gone.
    let out = install(Some(&token_path), &site.pin);
    let said = output_text(&out);
    assert!(out.status.success(), "{said}");
    assert!(!said.contains(&token), "the token is never printed: {said}");
    assert!(!root.join("etc/ruse/token").exists());
    let bin = root.join("usr/local/bin/ruse-agent");
    let modes = |p: &str| {
        std::fs::metadata(root.join(p))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    };
    assert_eq!(modes("usr/local/bin/ruse-agent"), 0o755);
    assert_eq!(modes("etc/systemd/system/ruse-agent.service"), 0o644);
    assert_eq!(modes("etc/ruse"), 0o750);
    assert_eq!(modes("etc/ruse/agent.toml"), 0o640);
    assert_eq!(modes("var/lib/ruse-agent"), 0o700);
    let config = std::fs::read_to_string(root.join("etc/ruse/agent.toml")).unwrap();
    assert!(
        config.contains(&format!("controller = \"{}\"", site.url)),
        "{config}"
    );
    assert!(config.contains("\"ward\" = \"4b\""), "{config}");
    let agents = site.agents();
    assert_eq!(agents.len(), 1);
    let id = agents[0]["id"].as_str().unwrap().to_owned();
    // Selectable labels from the token; what the install command and host
    // facts say is reported beside them.
    let labels = &agents[0]["labels"];
    assert_eq!(labels["role"], "workstation");
    assert_eq!(labels["site"], "icu");
    assert!(labels.get("ward").is_none());
    let reported = &agents[0]["reported_labels"];
    assert_eq!(reported["ward"], "4b");
    assert_eq!(reported["ruse.io/arch"], std::env::consts::ARCH);

    // Run it as the unit would (but under the temporary root): it plants.
    let root_s = root.display().to_string();
    let state = root.join("var/lib/ruse-agent").display().to_string();
    let config_s = root.join("etc/ruse/agent.toml").display().to_string();
    let args = [
        "run",
        "--config",
        &config_s,
        "--state-dir",
        &state,
        "--root",
        &root_s,
    ];
    let mut agent = start_installed(&bin, &args, &site.dir.path().join("agent.log"));
    let home = root.join("home/nurse");
    site.wait_planted(&home).await;
    let status = agent.terminate(Duration::from_secs(10));
    assert!(status.success(), "agent exit: {status}");
    let log = agent.log_text();
    assert!(!log.contains(&token), "the token is never logged");

    // Rerun (as configuration management does): same identity, no token.
    let out = install(None, &site.pin);
    assert!(out.status.success(), "{}", output_text(&out));
    let agents = site.agents();
    assert_eq!(agents.len(), 1, "rerun enrolled nothing new");
    assert_eq!(agents[0]["id"], id.as_str());
    assert_eq!(planted(&home), 3, "rerun leaves lures alone");

    // Uninstall: lures first, then the agent; the user's file untouched.
    let out = Command::new("sh")
        .arg(&script)
        .args(["--uninstall", "--root"])
        .arg(&root)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", output_text(&out));
    assert_same_tree(&before, &snapshot(&root, &[]));
    // The controller was told: the agent is revoked, so inventories and
    // rollouts stop waiting for it.
    assert!(
        output_text(&out).contains("deregistered"),
        "{}",
        output_text(&out)
    );
    let agents = site.agents();
    assert_eq!(agents[0]["state"], "revoked", "{agents:?}");
    assert_eq!(agents[0]["revoked"]["reason"], "uninstalled");
    // Running it again is harmless.
    let out = Command::new("sh")
        .arg(&script)
        .args(["--uninstall", "--root"])
        .arg(&root)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", output_text(&out));
}

/// `dpkg --root` needs its database skeleton under the root.
fn dpkg_root(root: &Path) {
    for dir in [
        "var/lib/dpkg/info",
        "var/lib/dpkg/updates",
        "var/lib/dpkg/triggers",
    ] {
        std::fs::create_dir_all(root.join(dir)).unwrap();
    }
    std::fs::write(root.join("var/lib/dpkg/status"), "").unwrap();
}

fn dpkg(root: &Path, args: &[&str]) -> Output {
    run(Command::new(tool("dpkg"))
        .arg(format!("--root={}", root.display()))
        .args([
            "--force-script-chrootless",
            "--force-depends",
            "--log=/dev/null",
        ])
        .args(args))
}

#[tokio::test]
async fn debian_package_has_the_right_contents_and_purges_to_nothing() {
    let test = "debian_package_has_the_right_contents_and_purges_to_nothing";
    if !(require_root(test) && require_tool(test, "dpkg-deb") && require_tool(test, "dpkg")) {
        return;
    }
    let site = Site::start();
    let out_dir = site.dir.path().join("deb");
    let out = run(Command::new("sh")
        .arg(workspace().join("deploy/agent/build-deb.sh"))
        .arg(binary("ruse-agent"))
        .arg(&out_dir)
        .env("DEB_COMPRESSION", "none"));
    let deb = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
    assert!(deb.is_file(), "{}", deb.display());

    // Fields.
    let field = |name: &str| {
        let out = run(Command::new(tool("dpkg-deb")).arg("-f").arg(&deb).arg(name));
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    assert_eq!(field("Package"), "ruse-agent");
    assert_eq!(field("Version"), env!("CARGO_PKG_VERSION"));
    let arch = run(Command::new(tool("dpkg")).arg("--print-architecture"));
    assert_eq!(
        field("Architecture"),
        String::from_utf8(arch.stdout).unwrap().trim()
    );
    assert!(field("Depends").starts_with("libc6"));
    assert!(!field("Description").is_empty());

    // Contents: paths, modes, owned by root.
    let out = run(Command::new(tool("dpkg-deb")).arg("-c").arg(&deb));
    let listing = String::from_utf8(out.stdout).unwrap();
    let mut entries = BTreeMap::new();
    for line in listing.lines() {
        let cols: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(cols[1], "root/root", "{line}");
        entries.insert(cols[5].trim_end_matches('/').to_owned(), cols[0].to_owned());
    }
    for (path, mode) in [
        ("./usr/bin/ruse-agent", "-rwxr-xr-x"),
        ("./lib/systemd/system/ruse-agent.service", "-rw-r--r--"),
        ("./etc/ruse", "drwxr-x---"),
        ("./etc/ruse/agent.toml", "-rw-r-----"),
        ("./usr/share/doc/ruse-agent/copyright", "-rw-r--r--"),
    ] {
        assert_eq!(
            entries.get(path).map(String::as_str),
            Some(mode),
            "{path} in\n{listing}"
        );
    }

    // Maintainer scripts: present, executable, valid shell, and honouring
    // DPKG_ROOT (so they never touch this machine's real paths).
    let control = site.dir.path().join("control");
    run(Command::new(tool("dpkg-deb"))
        .arg("-e")
        .arg(&deb)
        .arg(&control));
    assert_eq!(
        std::fs::read_to_string(control.join("conffiles"))
            .unwrap()
            .trim(),
        "/etc/ruse/agent.toml"
    );
    for script in ["postinst", "prerm", "postrm"] {
        let path = control.join(script);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o755, "{script}");
        run(Command::new("sh").arg("-n").arg(&path));
        let body = std::fs::read_to_string(&path).unwrap();
        assert!(body.contains("DPKG_ROOT"), "{script} ignores DPKG_ROOT");
    }
    let unit =
        std::fs::read_to_string(workspace().join("deploy/agent/ruse-agent.service")).unwrap();
    assert!(unit.contains("/usr/local/bin/ruse-agent"));

    // Install into a temporary root, use, purge.
    let root = site.dir.path().join("host");
    fake_host(&root);
    dpkg_root(&root);
    let before = snapshot(&root, &["var/lib/dpkg"]);
    dpkg(&root, &["-i", &deb.display().to_string()]);
    let unit = std::fs::read_to_string(root.join("lib/systemd/system/ruse-agent.service")).unwrap();
    assert!(unit.contains("ExecStart=/usr/bin/ruse-agent run"), "{unit}");
    let state = root.join("var/lib/ruse-agent");
    assert_eq!(
        std::fs::metadata(&state).unwrap().permissions().mode() & 0o777,
        0o700,
        "postinst made the state directory"
    );
    let (token_path, token) = site.token_file("token", "role=workstation");
    let root_s = root.display().to_string();
    let args = [
        "run",
        "--config",
        &root.join("etc/ruse/agent.toml").display().to_string(),
        "--controller",
        &site.url,
        "--ca-pin",
        &site.pin,
        "--token-file",
        &token_path.display().to_string(),
        "--state-dir",
        &state.display().to_string(),
        "--root",
        &root_s,
    ]
    .map(|s| s.to_owned());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut agent = start_installed(
        &root.join("usr/bin/ruse-agent"),
        &args,
        &site.dir.path().join("agent.log"),
    );
    site.wait_planted(&root.join("home/nurse")).await;
    assert!(agent.terminate(Duration::from_secs(10)).success());
    assert!(
        !agent.log_text().contains(&token),
        "the token is never logged"
    );

    // Purge: prerm removes the lures, postrm the identity and settings.
    let out = dpkg(&root, &["-P", "ruse-agent"]);
    assert!(
        !output_text(&out).contains("could not be removed"),
        "{}",
        output_text(&out)
    );
    assert_same_tree(&before, &snapshot(&root, &["var/lib/dpkg"]));
}

//! docs/fleet-rollout.md, run as written: the administrator's commands
//! on this host against a real controller process, the endpoint's
//! commands on throw-away machines that boot systemd (`ruse_e2e::machine`:
//! this host's own systemd as PID 1 of new namespaces over a scratch
//! overlay of its root, so `systemctl`, `apt` and the hardened unit are
//! the real ones and nothing reaches this host's files).
//!
//! The commands are read from the guide's code blocks, so a step that no
//! longer works fails here. What is changed, and only this:
//! - `https://ruse.hospital.example:7443` and the pin `sha256:b5f3a184…`
//!   become this test's controller (127.0.0.1, a free port) and its pin;
//! - `target/release/ruse-agent` is the suite's build of the agent, and
//!   `deploy/agent/` this checkout's;
//! - where the guide's prose says "ID" or "...", the agent's id and a
//!   reason are filled in, and `--token-file ./general.token` is given to
//!   the install command for the general ring, as step 2 says;
//! - the general ring is installed with the guide's Ansible playbook
//!   (ansible-core, run on the endpoint with a local connection; its
//!   `icu-pilot.token` is that ring's `general.token`); for the pilot, the
//!   SCCM-like copy of `deploy/agent/`, the binary and the token is done by
//!   copying them into the machine; the Windows MSI has its own test
//!   (tests/tests/windows.rs).
//!
//! Runs as root (namespaces, systemd); under `CI=true` it never skips.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use ruse_e2e::machine::Machine;
use ruse_e2e::process::{binary, spawn_controller};
use ruse_e2e::{
    consistently, eventually, free_ports, output_text, require_root, require_tool, shell_commands,
    workspace,
};

const GUIDE: &str = "docs/fleet-rollout.md";
/// Where the endpoint keeps what the deployment tool copied to it (the
/// Ansible playbook's `dest`).
const DROP: &str = "/opt/ruse-install";

/// The guide's fenced code blocks: (language, text).
fn blocks() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(workspace().join(GUIDE)).unwrap();
    let mut out = Vec::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        let Some(lang) = line.trim_start().strip_prefix("```") else {
            continue;
        };
        let indent = line.len() - line.trim_start().len();
        let mut body = String::new();
        for line in lines.by_ref() {
            if line.trim_start().starts_with("```") {
                break;
            }
            body.push_str(line.get(indent..).unwrap_or(line.trim_start()));
            body.push('\n');
        }
        out.push((lang.to_owned(), body));
    }
    out
}

/// The one block of `lang` that starts with `start` (and holds `holding`).
fn block(lang: &str, start: &str, holding: &str) -> String {
    let found: Vec<_> = blocks()
        .into_iter()
        .filter(|(l, b)| l == lang && b.starts_with(start) && b.contains(holding))
        .map(|(_, b)| b)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "{GUIDE} should have one ```{lang} block starting with {start:?} and holding {holding:?}"
    );
    found.into_iter().next().unwrap()
}

/// A command the guide gives inline, in backticks; panics if it does not.
fn inline(command: &str) -> String {
    let text = std::fs::read_to_string(workspace().join(GUIDE)).unwrap();
    let folded = text.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        folded.contains(&format!("`{command}`")),
        "{GUIDE} no longer gives `{command}`"
    );
    command.to_owned()
}

/// Says how far the test got (in the output of a failed run).
fn step(start: std::time::Instant, what: &str) {
    eprintln!("[{:6.1} s] {what}", start.elapsed().as_secs_f64());
}

fn ok(what: &str, out: Output) -> String {
    assert!(out.status.success(), "{what} failed: {}", output_text(&out));
    output_text(&out)
}

/// The administrator's workstation: a controller, `rusectl` with its
/// context, a working directory for manifests and token files.
struct Admin {
    _controller: ruse_e2e::process::Proc,
    work: tempfile::TempDir,
    url: String,
    pin: String,
    context: PathBuf,
}

impl Admin {
    fn start() -> Admin {
        let work = tempfile::tempdir().unwrap();
        let data = work.path().join("data");
        let port = free_ports(1)[0];
        let url = format!("https://127.0.0.1:{port}");
        let out = Command::new(binary("ruse-controller"))
            .args(["init", "--data-dir"])
            .arg(&data)
            .args(["--controller-url", &url])
            .output()
            .unwrap();
        let init = ok("ruse-controller init", out);
        let pin = init
            .split_whitespace()
            .find(|w| w.starts_with("sha256:"))
            .expect("init prints the pin")
            .to_owned();
        let (controller, _) = spawn_controller(
            &data,
            &format!("127.0.0.1:{port}"),
            &work.path().join("controller.log"),
        );
        Admin {
            _controller: controller,
            context: data.join("admin/rusectl.toml"),
            work,
            url,
            pin,
        }
    }

    fn dir(&self) -> &Path {
        self.work.path()
    }

    /// Runs a command of the guide on the administrator's side.
    fn run(&self, command: &str) -> String {
        let bin = binary("rusectl").parent().unwrap().to_path_buf();
        let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
        let command = self.substitute(command);
        let out = Command::new("sh")
            .args(["-c", &command])
            .current_dir(self.dir())
            .env("PATH", path)
            .env("RUSECTL_CONTEXT_FILE", &self.context)
            .output()
            .unwrap();
        ok(&command, out)
    }

    fn json(&self, command: &str) -> serde_json::Value {
        serde_json::from_str(&self.run(&format!("{command} -o json"))).unwrap()
    }

    fn substitute(&self, command: &str) -> String {
        let agent = binary("ruse-agent");
        command
            .replace("https://ruse.hospital.example:7443", &self.url)
            .replace("sha256:b5f3a184…", &self.pin)
            .replace("target/release/ruse-agent", &agent.display().to_string())
            .replace(
                "deploy/agent/",
                &format!("{}/", workspace().join("deploy/agent").display()),
            )
    }

    /// The agent enrolled from `machine` (by host name), as `get agents
    /// --all` shows it.
    fn agent(&self, machine: &Machine) -> Option<serde_json::Value> {
        self.json("rusectl get agents --all")["items"]
            .as_array()
            .unwrap()
            .iter()
            .rev()
            .find(|a| a["hostname"] == machine.name.as_str())
            .cloned()
    }

    async fn wait_online(&self, machine: &Machine) -> String {
        let mut id = String::new();
        eventually(
            &format!("{} online", machine.name),
            Duration::from_secs(30),
            || {
                let agent = self.agent(machine);
                if let Some(a) = agent.as_ref().filter(|a| a["state"] == "online") {
                    id = a["id"].as_str().unwrap().to_owned();
                }
                let online = !id.is_empty();
                async move { online }
            },
        )
        .await;
        id
    }

    /// Copies what the deployment tool puts on an endpoint: deploy/agent/,
    /// the agent binary and a token file, into the machine's `dir`.
    fn deliver(&self, machine: &Machine, dir: &str, token: &str) {
        let drop = machine.path(dir);
        std::fs::create_dir_all(&drop).unwrap();
        for file in ["install.sh", "ruse-agent.service"] {
            std::fs::copy(workspace().join("deploy/agent").join(file), drop.join(file)).unwrap();
        }
        std::fs::copy(binary("ruse-agent"), drop.join("ruse-agent")).unwrap();
        std::fs::copy(self.dir().join(token), drop.join(token)).unwrap();
    }
}

/// Runs a command of the guide on an endpoint, in the deployment drop.
fn on(machine: &Machine, admin: &Admin, command: &str) -> String {
    answering(machine, admin, command, "")
}

/// [`on`] with what the administrator types at the command's prompts.
fn answering(machine: &Machine, admin: &Admin, command: &str, answers: &str) -> String {
    let command = admin.substitute(command);
    let out = machine.answering(DROP, &command, answers);
    assert!(
        out.status.success(),
        "{command} on {} failed: {}\nthe agent's journal:\n{}",
        machine.name,
        output_text(&out),
        machine.journal("ruse-agent")
    );
    output_text(&out)
}

/// Every file and directory under /home with owner, mode and size.
/// Nothing is read: a read of a lure is an event.
fn listing(machine: &Machine) -> String {
    ok(
        "listing of /home",
        machine.sh("find /home -printf '%p %M %u:%g %s\\n' | sort"),
    )
}

/// [`listing`] and a digest of every file's contents: what "not one file
/// or mode differs" compares, taken only when no lure is planted.
fn homes(machine: &Machine) -> String {
    let digests = ok(
        "digests of /home",
        machine.sh("find /home -type f -exec sha256sum {} + | sort"),
    );
    format!("{}{digests}", listing(machine))
}

/// Files under /home that are not in `before`.
fn planted(machine: &Machine, before: &str) -> Vec<String> {
    listing(machine)
        .lines()
        .filter(|l| l.contains(" -rw") && !before.contains(*l))
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}

/// ansible-playbook in the virtualenv scripts/install-test-deps.sh makes
/// (`RUSE_ANSIBLE_VENV`).
fn ansible_playbook() -> PathBuf {
    std::env::var_os("RUSE_ANSIBLE_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/ruse-ansible-venv"))
        .join("bin/ansible-playbook")
}

/// The guide's playbook, run on `machine` for the general ring.
fn ansible(admin: &Admin, machine: &Machine) {
    let playbook = admin
        .substitute(&block(
            "yaml",
            "- name: Ruse agent",
            "ansible.builtin.command",
        ))
        .replace("icu-pilot.token", "general.token");
    // Beside the playbook, as in the administrator's checkout.
    admin.deliver(machine, "/root/rollout", "general.token");
    let dir = machine.path("/root/rollout");
    std::fs::write(dir.join("agent.yml"), playbook).unwrap();
    std::fs::write(
        dir.join("hosts"),
        format!(
            "[clinical_workstations]\n{} ansible_connection=local ansible_python_interpreter=/usr/bin/python3\n",
            machine.name
        ),
    )
    .unwrap();
    let command = format!(
        "{} -i hosts agent.yml -e ruse_ca_pin={} -e ward=4b",
        ansible_playbook().display(),
        admin.pin
    );
    let out = machine.sh_in("/root/rollout", &command);
    assert!(
        out.status.success(),
        "the Ansible playbook failed: {}\nthe agent's journal:\n{}",
        output_text(&out),
        machine.journal("ruse-agent")
    );
}

fn workstation(name: &str) -> (Machine, String) {
    let machine = Machine::boot(name);
    ok("useradd", machine.sh("useradd -m -s /bin/bash clinician"));
    let before = homes(&machine);
    (machine, before)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_rollout_guide_runs_as_written_on_systemd_machines() {
    let test = "fleet_rollout_guide_runs_as_written_on_systemd_machines";
    if !require_root(test)
        || !require_tool(test, "/lib/systemd/systemd")
        || !require_tool(test, "unshare")
        || !require_tool(test, "sudo")
        || !require_tool(test, "dpkg-deb")
        || !require_tool(test, &ansible_playbook().display().to_string())
    {
        return;
    }
    let t0 = std::time::Instant::now();
    let admin = Admin::start();
    step(t0, "controller serving");
    let (pilot, pilot_home) = workstation("ws-icu-01");
    let (general, general_home) = workstation("ws-icu-02");

    step(t0, "Tokens and labels");
    for command in shell_commands(&block("sh", "rusectl token create", "ring=pilot")) {
        admin.run(&command);
    }
    let token = admin.dir().join("icu-pilot.token");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&token).unwrap().permissions().mode() & 0o777,
        0o600
    );

    step(t0, "Installing: the script, on the pilot endpoint");
    admin.deliver(&pilot, DROP, "icu-pilot.token");
    let install = shell_commands(&block("sh", "sudo ./install.sh", "--token-file"));
    assert_eq!(install.len(), 1);
    let out = on(&pilot, &admin, &install[0]);
    assert!(out.contains("enrolled as agent"), "{out}");
    assert_eq!(
        ok("is-active", pilot.sh("systemctl is-active ruse-agent")).trim(),
        "active"
    );
    assert_eq!(
        ok("is-enabled", pilot.sh("systemctl is-enabled ruse-agent")).trim(),
        "enabled"
    );
    ok(
        "config mode",
        pilot.sh("test \"$(stat -c %a /etc/ruse/agent.toml)\" = 640 && test ! -e /etc/ruse/token"),
    );
    let pilot_id = admin.wait_online(&pilot).await;
    step(t0, "the pilot online");
    // The status file is rewritten at most once a second.
    let status = inline("ruse-agent status");
    eventually(
        "ruse-agent status: connected",
        Duration::from_secs(5),
        || {
            let out = pilot.sh_in(DROP, &status);
            let shown = output_text(&out);
            let connected = out.status.success()
                && shown.contains(&pilot_id)
                && shown.contains("connected   yes");
            async move { connected }
        },
    )
    .await;

    step(
        t0,
        "The hosts-entry drop-in: only /etc/hosts becomes writable",
    );
    for command in shell_commands(&block(
        "sh",
        "mkdir -p /etc/systemd/system/ruse-agent.service.d",
        "",
    )) {
        on(&pilot, &admin, &command);
    }
    let paths = ok(
        "show",
        pilot.sh("systemctl show -p ReadWritePaths ruse-agent"),
    );
    let writable: Vec<&str> = paths
        .trim()
        .trim_start_matches("ReadWritePaths=")
        .split(' ')
        .collect();
    assert!(
        writable.contains(&"/etc/hosts") && !writable.contains(&"/etc"),
        "{paths}"
    );
    ok("is-active", pilot.sh("systemctl is-active ruse-agent"));
    let pilot_id = admin.wait_online(&pilot).await;

    step(
        t0,
        "Staged rollout, 1: the decoy, then the campaign for the pilot only",
    );
    std::fs::write(
        admin.dir().join("pacs-archive02.yaml"),
        block("yaml", "kind: Decoy", "name: pacs-archive02"),
    )
    .unwrap();
    for command in shell_commands(&block("sh", "rusectl apply -f pacs-archive02.yaml", "")) {
        admin.run(&command);
    }
    let campaign_file = admin.dir().join("clinical-workstations.yaml");
    std::fs::write(
        &campaign_file,
        block("yaml", "kind: Campaign", "name: clinical-workstations"),
    )
    .unwrap();
    let apply = block(
        "sh",
        "rusectl apply -f clinical-workstations.yaml",
        "rusectl get lures",
    );
    for command in shell_commands(&apply) {
        admin.run(&command);
    }
    eventually("the pilot's lures on disk", Duration::from_secs(20), || {
        let n = planted(&pilot, &pilot_home).len();
        async move { n >= 3 }
    })
    .await;
    step(
        t0,
        "The hardened unit still sees a read: cat of the patient list",
    );
    let csv = planted(&pilot, &pilot_home)
        .into_iter()
        .find(|p| p.ends_with(".csv"))
        .expect("the patient-csv lure");
    ok("cat", pilot.sh(&format!("cat '{csv}' > /dev/null")));
    eventually(
        "the read reported with its process",
        Duration::from_secs(20),
        || {
            let events = admin.json(&inline("rusectl get events"));
            let seen = events["items"].as_array().unwrap().iter().any(|e| {
                e["agent"] == pilot_id.as_str()
                    && e["kind"] == "touch"
                    && e["path"] == csv.as_str()
                    && e["process"]["exe"] == "/usr/bin/cat"
            });
            async move { seen }
        },
    )
    .await;
    step(t0, "The drop-in lets the hosts-entry lure into /etc/hosts");
    let hosts_before = std::fs::read_to_string(pilot.path("/etc/hosts")).unwrap();
    std::fs::write(
        admin.dir().join("pilot-hosts.yaml"),
        "kind: Campaign\nname: pilot-hosts\nselector: {ring: pilot}\nlures:\n  - {template: hosts-entry, decoy: pacs-archive02}\n",
    )
    .unwrap();
    admin.run("rusectl apply -f pilot-hosts.yaml");
    admin.run("rusectl rollout status campaign/pilot-hosts");
    let hosts = std::fs::read_to_string(pilot.path("/etc/hosts")).unwrap();
    assert!(
        hosts.starts_with(&hosts_before) && hosts.contains("10.20.0.15"),
        "{hosts}"
    );
    admin.run("rusectl delete campaign pilot-hosts");
    eventually("/etc/hosts as it was", Duration::from_secs(20), || {
        let now = std::fs::read_to_string(pilot.path("/etc/hosts")).unwrap();
        let same = now == hosts_before;
        async move { same }
    })
    .await;
    let drill = inline("rusectl drill --agent ID").replace("ID", &pilot_id);
    admin.run(&drill);

    step(
        t0,
        "2: install everywhere with the general ring's token; no lures yet",
    );
    for command in shell_commands(&block("sh", "rusectl token create", "ring=general")) {
        admin.run(&command);
    }
    ansible(&admin, &general);
    let general_id = admin.wait_online(&general).await;
    ok(
        "the playbook removed the token",
        general.sh(&format!(
            "test ! -e {DROP}/token && test ! -e /etc/ruse/token"
        )),
    );
    consistently(
        "no lures on the general ring",
        Duration::from_secs(2),
        || {
            let n = planted(&general, &general_home).len();
            async move { n == 0 }
        },
    )
    .await;

    step(
        t0,
        "3: waves. The fragment replaces the manifest's selector and rollout",
    );
    let fragment = block("yaml", "selector: {role: workstation}", "rollout:");
    let manifest = std::fs::read_to_string(&campaign_file).unwrap();
    let mut widened = String::new();
    for line in manifest.lines() {
        let key = line.split(':').next().unwrap_or_default();
        match fragment.lines().find(|f| f.starts_with(&format!("{key}:"))) {
            Some(replacement) => widened.push_str(replacement),
            None => widened.push_str(line),
        }
        widened.push('\n');
    }
    assert!(widened.contains("waves: [\"5%\""), "{widened}");
    std::fs::write(&campaign_file, widened).unwrap();
    for command in shell_commands(&block(
        "sh",
        "rusectl apply -f clinical-workstations.yaml",
        "live progress",
    )) {
        admin.run(&command);
    }
    eventually("the general ring's lures", Duration::from_secs(30), || {
        let n = planted(&general, &general_home).len();
        async move { n >= 3 }
    })
    .await;
    let described = admin.run(&inline("rusectl describe campaign clinical-workstations"));
    assert!(described.contains("clinical-workstations"), "{described}");
    admin.run(&inline("rusectl label agent ID ring=wave2").replace("ID", &pilot_id));

    step(
        t0,
        "Uninstall: lures, agent and its state go; the controller revokes it",
    );
    on(&general, &admin, &inline("sudo ./install.sh --uninstall"));
    assert_eq!(
        homes(&general),
        general_home,
        "an uninstall leaves /home as it was"
    );
    ok(
        "nothing left",
        general.sh("test ! -e /usr/local/bin/ruse-agent && test ! -e /etc/systemd/system/ruse-agent.service && test ! -e /var/lib/ruse-agent && test ! -e /etc/ruse"),
    );
    let gone = admin.agent(&general).unwrap();
    assert_eq!(gone["id"], general_id.as_str());
    assert!(
        gone["revoked"].to_string().contains("uninstalled"),
        "{gone}"
    );

    step(t0, "Installing: the Debian package, on the same endpoint");
    let package = shell_commands(&block("sh", "deploy/agent/build-deb.sh", "apt install"));
    assert_eq!(package.len(), 2);
    admin.run(&package[0]);
    let dist = general.path(DROP).join("dist");
    std::fs::create_dir_all(&dist).unwrap();
    for entry in std::fs::read_dir(admin.dir().join("dist")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dist.join(entry.file_name())).unwrap();
    }
    on(&general, &admin, &package[1]);
    // "Set controller, ca_pin and token_file there."
    std::fs::copy(
        admin.dir().join("general.token"),
        general.path("/etc/ruse/token"),
    )
    .unwrap();
    ok("token mode", general.sh("chmod 0600 /etc/ruse/token"));
    let conf = general.path("/etc/ruse/agent.toml");
    let settings = std::fs::read_to_string(&conf)
        .unwrap()
        .replace(
            "# controller = \"https://ruse.example.org:7443\"",
            &format!("controller = \"{}\"", admin.url),
        )
        .replace(
            "# ca_pin = \"sha256:...\"",
            &format!("ca_pin = \"{}\"", admin.pin),
        )
        .replace(
            "# token_file = \"/etc/ruse/token\"",
            "token_file = \"/etc/ruse/token\"",
        );
    assert!(!settings.contains("# ca_pin"), "{settings}");
    std::fs::write(&conf, settings).unwrap();
    on(&general, &admin, &inline("systemctl restart ruse-agent"));
    let packaged_id = admin.wait_online(&general).await;
    assert_ne!(packaged_id, general_id);
    eventually(
        "the packaged agent's lures",
        Duration::from_secs(30),
        || {
            let n = planted(&general, &general_home).len();
            async move { n >= 3 }
        },
    )
    .await;
    answering(&general, &admin, &inline("apt remove ruse-agent"), "y\n");
    assert_eq!(homes(&general), general_home, "apt remove takes every lure");
    answering(&general, &admin, &inline("apt purge ruse-agent"), "y\n");
    ok(
        "purged",
        general.sh(
            "test ! -e /var/lib/ruse-agent && test ! -e /etc/ruse && test ! -e /usr/bin/ruse-agent",
        ),
    );

    step(
        t0,
        "A golden image: installed with --no-enroll, enrolled at first start",
    );
    admin.deliver(&general, DROP, "general.token");
    let install_general = install[0].replace("./icu-pilot.token", "./general.token");
    let golden = format!("{install_general} --no-enroll");
    on(&general, &admin, &golden);
    ok(
        "not enrolled, token kept for the first start",
        general.sh("test ! -e /var/lib/ruse-agent/agent.pem && test \"$(stat -c %a /etc/ruse/token)\" = 600 && ! systemctl is-active ruse-agent"),
    );
    ok("first start", general.sh("systemctl start ruse-agent"));
    let cloned_id = admin.wait_online(&general).await;
    assert_ne!(cloned_id, packaged_id);

    step(t0, "A scrapped machine: the controller forgets it");
    let delete = inline("rusectl delete agent ID --reason \"...\"")
        .replace("ID", &pilot_id)
        .replace("...", "scrapped");
    admin.run(&delete);
    let listed = admin.json("rusectl get agents");
    assert!(
        !listed.to_string().contains(&pilot_id),
        "a deleted agent is not listed: {listed}"
    );
    assert!(admin.agent(&pilot).is_some(), "get agents --all shows it");
}

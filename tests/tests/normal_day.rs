//! Alert fidelity: a workstation used normally with the example healthcare
//! campaign planted raises nothing, and an intruder's minute on it raises
//! what it must. Real programs, a real agent with fanotify (root), real
//! decoys.
//!
//! The normal day: ssh to other hosts, name lookups, the AWS CLI and psql
//! with their real profiles, git over HTTPS, a backup (tar) and a desktop
//! indexer (recollindex) reading everything under the documented allow
//! rules, editors and tools opening other files in the same folders. The
//! intruder's minute: `cat` of the honeyfiles, a `grep -r password` sweep,
//! a credential-dumper-like script reading the shared files, and the
//! planted SSH key used at the decoy.
//!
//! Prints the figures docs/benchmarks.md publishes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use ruse_e2e::{
    TestController, consistently, eventually, free_ports, pb, require_root, require_tool,
};

const TEST: &str = "a_normal_day_raises_nothing_and_an_intruders_minute_raises_what_it_must";

/// Runs a program as a user of the workstation would, with `home` as
/// HOME; its output is not wanted, its exit status does not matter (most
/// of these connect to nothing).
fn run(home: &Path, program: &str, args: &[&str], env: &[(&str, &str)]) {
    Command::new(program)
        .args(args)
        .env("HOME", home)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
}

/// The workstation's own files, before any lure: what a clinician's home
/// and the machine's /etc/hosts hold.
fn realistic_home(root: &Path, user: &str) -> PathBuf {
    let home = root.join("home").join(user);
    for dir in [".ssh", ".aws", "Documents", "projects/notes"] {
        std::fs::create_dir_all(home.join(dir)).unwrap();
    }
    let files: &[(&str, &str)] = &[
        (
            ".ssh/config",
            "Host intranet\n  HostName 10.20.1.5\n  User clinician\n\nHost *.lab.hospital.local\n  User labtech\n",
        ),
        (
            ".ssh/known_hosts",
            "10.20.1.5 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOx\n",
        ),
        (
            ".aws/credentials",
            "[default]\naws_access_key_id = AKIAREALPROFILE00001\naws_secret_access_key = realsecretrealsecretrealsecret00\n",
        ),
        (".aws/config", "[default]\nregion = eu-central-1\n"),
        (
            ".pgpass",
            "ehr-db.hospital.local:5432:ehr:clinician:real-password\n",
        ),
        (
            ".netrc",
            "machine git.hospital.local login clinician password real-token\n",
        ),
        ("Documents/handover.txt", "Bed 4: fluids at 18:00.\n"),
        ("projects/notes/todo.md", "- renew badge\n"),
    ];
    for (path, content) in files {
        std::fs::write(home.join(path), content).unwrap();
    }
    // libpq ignores a password file others can read, as a real one is not.
    std::fs::set_permissions(
        home.join(".pgpass"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    home
}

/// The example campaign, its decoy on free ports.
fn example_manifest() -> (String, u16) {
    let example = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/healthcare-campaign.yaml"),
    )
    .unwrap();
    let ports = free_ports(7);
    let mut manifest = example;
    for (old, new) in [2222u16, 11112, 8443, 2575, 4445, 2121, 3389]
        .iter()
        .zip(&ports)
    {
        manifest = manifest.replace(&format!("port: {old}}}"), &format!("port: {new}}}"));
    }
    let allow = "---\nkind: AllowRule\nname: nightly-backup\nprocess: /usr/bin/tar\n---\nkind: AllowRule\nname: desktop-indexer\nprocess: /usr/bin/recollindex\n";
    (manifest + allow, ports[0])
}

/// The value after `key` on a line of `text` (`User svc_x` → `svc_x`).
fn field(text: &str, key: &str) -> String {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix(key))
        .map(|v| v.trim().to_owned())
        .next_back()
        .unwrap_or_else(|| panic!("no {key} in {text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_normal_day_raises_nothing_and_an_intruders_minute_raises_what_it_must() {
    if !require_root(TEST) {
        return;
    }
    for tool in [
        "ssh",
        "psql",
        "git",
        "getent",
        "unshare",
        "tar",
        "recollindex",
        "grep",
        "cat",
        "python3",
    ] {
        if !require_tool(TEST, tool) {
            return;
        }
    }
    if !Path::new("/usr/bin/aws").exists() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{TEST} needs Debian's awscli (/usr/bin/aws); scripts/install-test-deps.sh installs it"
        );
        eprintln!("SKIPPED {TEST}: /usr/bin/aws (Debian awscli) is not installed");
        return;
    }
    let tc = TestController::start().await;
    let token = tc
        .token("role=workstation,decoys=pacs", 1, Duration::from_secs(600))
        .await;
    let config = tc.agent_config("ws", &token, "");
    let root = config.root.clone();
    let clinician = realistic_home(&root, "clinician");
    let radiologist = realistic_home(&root, "radiologist");
    std::fs::write(
        root.join("etc/hosts"),
        "127.0.0.1\tlocalhost\n10.20.1.5\tintranet.hospital.local intranet\n",
    )
    .unwrap();
    let mut agent = tc.spawn_agent(config);
    let agent_id = agent.connected().await;
    let (manifest, ssh_port) = example_manifest();
    tc.apply(&manifest).await;
    tc.wait_rollout(
        "clinical-workstations",
        "completed",
        Duration::from_secs(30),
    )
    .await;
    // Its decoy runs (without connecting to it: that is an event).
    tokio::time::timeout(
        Duration::from_secs(10),
        agent.status.wait_for(|s| s.decoy_services >= 7),
    )
    .await
    .expect("the decoy's seven services run")
    .unwrap();
    let home = clinician.display().to_string();
    let closed = free_ports(1)[0].to_string();
    let recoll = tc.dir.path().join("recoll");
    std::fs::create_dir_all(&recoll).unwrap();
    std::fs::write(
        recoll.join("recoll.conf"),
        format!(
            "topdirs = {} {}\nusesystemfilecommand = 0\n",
            clinician.display(),
            radiologist.display()
        ),
    )
    .unwrap();

    // ---- A normal day ----
    let ssh_config = format!("{home}/.ssh/config");
    run(
        &clinician,
        "ssh",
        &["-F", &ssh_config, "-G", "intranet.example.org"],
        &[],
    );
    run(
        &clinician,
        "ssh",
        &[
            "-F",
            &ssh_config,
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=2",
            "-p",
            &closed,
            "clinician@127.0.0.1",
            "true",
        ],
        &[],
    );
    run(
        &clinician,
        "unshare",
        &[
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            &format!(
                "mount --bind {}/etc/hosts /etc/hosts && getent hosts intranet.hospital.local; getent hosts www.example.org",
                root.display()
            ),
        ],
        &[],
    );
    run(&clinician, "/usr/bin/aws", &["configure", "list"], &[]);
    run(
        &clinician,
        "psql",
        &[
            &format!("host=127.0.0.1 port={closed} user=clinician dbname=ehr connect_timeout=2"),
            "-c",
            "select 1",
        ],
        &[("PGPASSFILE", &format!("{home}/.pgpass"))],
    );
    run(
        &clinician,
        "git",
        &[
            "ls-remote",
            &format!("https://127.0.0.1:{closed}/ehr/config.git"),
        ],
        &[("GIT_TERMINAL_PROMPT", "0")],
    );
    // Editors and tools opening other files in the same folders.
    for other in [".ssh/known_hosts", ".aws/config", "Documents/handover.txt"] {
        run(
            &clinician,
            "sed",
            &["-n", "1p", &format!("{home}/{other}")],
            &[],
        );
    }
    run(
        &clinician,
        "tar",
        &[
            "czf",
            &tc.dir.path().join("backup.tgz").display().to_string(),
            "-C",
            &root.join("home").display().to_string(),
            ".",
        ],
        &[],
    );
    run(
        &clinician,
        "recollindex",
        &["-c", &recoll.display().to_string()],
        &[("RECOLL_CONFDIR", &recoll.display().to_string())],
    );

    // Every read of the day is recorded (allowed), none raised.
    let of_agent = || pb::EventFilter {
        agent_id: agent_id.clone(),
        ..Default::default()
    };
    eventually(
        "the day's reads are recorded",
        Duration::from_secs(15),
        || async {
            let events = tc.events(of_agent()).await;
            let by = |rule: &str| events.iter().any(|e| e.allow_rule.contains(rule));
            let hosts_by_getent = events.iter().any(|e| {
                e.path.ends_with("/etc/hosts")
                    && e.process
                        .as_ref()
                        .is_some_and(|p| p.exe.ends_with("/getent"))
            });
            hosts_by_getent
                && by("ordinary reader (ssh)")
                && by("every program")
                && by("ordinary reader (aws)")
                && by("ordinary reader (psql)")
                && by("nightly-backup")
                && by("desktop-indexer")
        },
    )
    .await;
    let mut root_client = tc.root().await;
    let incidents = |mut c: ruse_proto::admin::v1::admin_service_client::AdminServiceClient<
        tonic::transport::Channel,
    >| async move {
        c.list_incidents(pb::ListIncidentsRequest::default())
            .await
            .unwrap()
            .into_inner()
            .incidents
    };
    consistently(
        "a normal day opens no incident",
        Duration::from_secs(2),
        || {
            let c = root_client.clone();
            async move { incidents(c).await.is_empty() }
        },
    )
    .await;
    let day = tc.events(of_agent()).await;
    let raised: Vec<_> = day.iter().filter(|e| !e.allowed).collect();
    assert!(raised.is_empty(), "raised on a normal day: {raised:#?}");
    let mut readers: Vec<String> = day
        .iter()
        .filter_map(|e| e.process.as_ref().map(|p| p.exe.clone()))
        .collect();
    readers.sort();
    readers.dedup();
    eprintln!(
        "FIGURES normal day: {} lure reads recorded by {:?}, {} raised, {} incidents",
        day.len(),
        readers,
        raised.len(),
        incidents(root_client.clone()).await.len()
    );
    let before = day.len();

    // ---- An intruder's minute ----
    let exports = clinician.join("Documents/Exports");
    for csv in ruse_e2e::planted_files(&exports) {
        run(&clinician, "cat", &[&csv.display().to_string()], &[]);
    }
    run(&clinician, "grep", &["-r", "-i", "password", &home], &[]);
    run(
        &clinician,
        "python3",
        &[
            "-c",
            "import os\nfor p in ['.aws/credentials', '.pgpass', '.netrc', '.ssh/config']:\n    open(os.path.join(os.environ['HOME'], p)).read()\n",
        ],
        &[],
    );
    let planted_config = std::fs::read_to_string(clinician.join(".ssh/config")).unwrap();
    let user = field(&planted_config, "User ");
    let key = clinician.join(".ssh/id_ed25519_pacs-archive02");
    run(
        &clinician,
        "ssh",
        &[
            "-i",
            &key.display().to_string(),
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-p",
            &ssh_port.to_string(),
            &format!("{user}@127.0.0.1"),
            "true",
        ],
        &[],
    );

    let wanted = |incident: &pb::Incident| {
        let exes = incident.processes.join(" ");
        incident.title.starts_with("Stolen credential used")
            && exes.contains("/cat")
            && exes.contains("/grep")
            && exes.contains("python3")
    };
    eventually(
        "the intruder's minute raises its incident",
        Duration::from_secs(20),
        || {
            let c = root_client.clone();
            async move { incidents(c).await.iter().any(wanted) }
        },
    )
    .await;
    let all = tc.events(pb::EventFilter::default()).await;
    let minute: Vec<_> = all
        .iter()
        .filter(|e| e.agent_id != agent_id || !day.iter().any(|d| d.id == e.id))
        .collect();
    let raised = minute.iter().filter(|e| !e.allowed).count();
    let open = incidents(root_client.clone()).await;
    eprintln!(
        "FIGURES intruder minute: {} events ({} raised, kinds {:?}), {} incidents: {:?}",
        all.len() - before,
        raised,
        {
            let mut kinds: Vec<_> = minute.iter().map(|e| e.kind.clone()).collect();
            kinds.sort();
            kinds.dedup();
            kinds
        },
        open.len(),
        open.iter()
            .map(|i| format!("{} [{}]", i.title, i.severity))
            .collect::<Vec<_>>()
    );
    let stolen = open.iter().find(|i| wanted(i)).unwrap();
    assert_eq!(stolen.severity, "critical");
    assert!(stolen.techniques.iter().any(|t| t.starts_with("T1552")));
    assert!(stolen.techniques.iter().any(|t| t.starts_with("T1021")));
    root_client = tc.root().await;
    let _ = root_client;
    agent.stop().await.unwrap();
}

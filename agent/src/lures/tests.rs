//! The planting engine's tests: planting, removal, drift and the links a
//! local user may plant.

use super::*;
use ruse_proto::spec::{PlantFile, PlantMode};
use std::os::unix::fs::PermissionsExt;

fn file(path: &str, content: &str, mode: PlantMode, perms: u32) -> PlantFile {
    PlantFile {
        ordinary_readers: Vec::new(),
        path: path.into(),
        content: content.as_bytes().to_vec(),
        mode,
        permissions: perms,
        mtime_ms: 1_700_000_000_000,
    }
}

fn resource(id: &str, revision: u64, files: Vec<PlantFile>) -> Resource {
    Resource {
        id: id.into(),
        revision,
        kind: "lure".into(),
        body: LureSpec {
            template: "test".into(),
            files,
            keys: Vec::new(),
        }
        .encode(),
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    state: PathBuf,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let state = dir.path().join("state");
    std::fs::create_dir_all(root.join("home/alice/.ssh")).unwrap();
    std::fs::create_dir_all(root.join("home/bob")).unwrap();
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::create_dir_all(&state).unwrap();
    Fixture {
        root: std::fs::canonicalize(&root).unwrap(),
        state,
        _dir: dir,
    }
}

fn engine(f: &Fixture) -> LureEngine {
    LureEngine::open(&f.root, HomeDirs::default(), &f.state).unwrap()
}

fn snapshot(root: &Path) -> BTreeMap<PathBuf, (Vec<u8>, u32)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let meta = entry.metadata().unwrap();
            let path = entry.path();
            let mode = meta.permissions().mode();
            if meta.is_dir() {
                out.insert(path.clone(), (Vec::new(), mode));
                stack.push(path);
            } else {
                out.insert(path.clone(), (std::fs::read(&path).unwrap(), mode));
            }
        }
    }
    out
}

#[test]
fn plants_in_every_home_and_uninstall_restores_everything_exactly() {
    let f = fixture();
    let ssh_config = f.root.join("home/alice/.ssh/config");
    std::fs::write(&ssh_config, "Host real\n  HostName 10.1.1.1").unwrap();
    std::fs::set_permissions(&ssh_config, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(f.root.join("etc/hosts"), "127.0.0.1 localhost\n").unwrap();
    let before = snapshot(&f.root);

    let mut e = engine(&f);
    let outcomes = e.apply(
        &[],
        &[
            resource(
                "ssh",
                1,
                vec![
                    file("~/.ssh/id_pacs", "PRIVATE KEY", PlantMode::WholeFile, 0o600),
                    file(
                        "~/.ssh/config",
                        "Host pacs\n  User svc_7f3k\n",
                        PlantMode::Block,
                        0o600,
                    ),
                ],
            ),
            resource(
                "hosts",
                1,
                vec![file(
                    "/etc/hosts",
                    "10.9.9.9 pacs-archive02\n",
                    PlantMode::Block,
                    0o644,
                )],
            ),
        ],
    );
    assert!(outcomes.iter().all(|o| o.result.is_ok()), "{outcomes:?}");
    let alice_config = std::fs::read_to_string(&ssh_config).unwrap();
    assert_eq!(
        alice_config,
        "Host real\n  HostName 10.1.1.1\nHost pacs\n  User svc_7f3k\n"
    );
    assert_eq!(
        std::fs::metadata(&ssh_config).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(
        std::fs::read_to_string(f.root.join("home/bob/.ssh/config")).unwrap(),
        "Host pacs\n  User svc_7f3k\n",
        "a new file in a home without one"
    );
    let key = f.root.join("home/bob/.ssh/id_pacs");
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(
        std::fs::metadata(f.root.join("home/bob/.ssh"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o700
    );
    let mtime = std::fs::metadata(&key).unwrap().modified().unwrap();
    assert_eq!(
        mtime,
        fs::system_time(1_700_000_000_000).unwrap(),
        "backdated"
    );
    assert_eq!(
        e.applied(),
        BTreeMap::from([("hosts".into(), 1), ("ssh".into(), 1)])
    );

    // A fresh engine (agent restart) sees the same state and removes it all.
    drop(e);
    let mut e = engine(&f);
    assert!(e.uninstall().is_empty());
    assert_eq!(
        snapshot(&f.root),
        before,
        "uninstall restores the tree byte for byte"
    );
    assert!(e.applied().is_empty());
}

#[test]
fn a_whole_file_lure_never_replaces_a_real_file_and_partial_plants_are_undone() {
    let f = fixture();
    // A real file of that name in every home: no home can take the lure.
    let real = f.root.join("home/bob/passwords.xlsx");
    std::fs::write(&real, b"the real spreadsheet").unwrap();
    std::fs::write(f.root.join("home/alice/passwords.xlsx"), b"alice's").unwrap();
    let before = snapshot(&f.root);
    let mut e = engine(&f);
    let outcomes = e.apply(
        &[],
        &[resource(
            "xlsx",
            3,
            vec![
                file("~/Documents/notes.txt", "lure", PlantMode::WholeFile, 0o644),
                file("~/passwords.xlsx", "lure", PlantMode::WholeFile, 0o644),
            ],
        )],
    );
    let err = outcomes[0].result.as_ref().unwrap_err().to_string();
    assert!(err.contains("already exists"), "{err}");
    assert_eq!(std::fs::read(&real).unwrap(), b"the real spreadsheet");
    assert_eq!(
        snapshot(&f.root),
        before,
        "nothing of the failed lure is left"
    );
    assert!(e.applied().is_empty());
}

#[test]
fn reapplying_the_same_revision_touches_nothing() {
    let f = fixture();
    let mut e = engine(&f);
    let r = resource(
        "aws",
        5,
        vec![file(
            "~/.aws/credentials",
            "[x]\nk = v\n",
            PlantMode::Block,
            0o600,
        )],
    );
    assert!(e.apply(&[], std::slice::from_ref(&r))[0].result.is_ok());
    let path = f.root.join("home/alice/.aws/credentials");
    let inode = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&path).unwrap());
    assert!(e.apply(&[], &[r])[0].result.is_ok());
    assert_eq!(
        std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&path).unwrap()),
        inode,
        "not rewritten"
    );
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "[x]\nk = v\n");
    // A new revision replaces it.
    let r2 = resource(
        "aws",
        6,
        vec![file(
            "~/.aws/credentials",
            "[y]\nk = w\n",
            PlantMode::Block,
            0o600,
        )],
    );
    assert!(e.apply(&[], &[r2])[0].result.is_ok());
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "[y]\nk = w\n");
    // Removal.
    assert!(e.apply(&["aws".into()], &[])[0].result.is_ok());
    assert!(!path.exists());
    assert!(!f.root.join("home/alice/.aws").exists());
}

#[test]
fn drift_is_detected_and_repaired() {
    let f = fixture();
    let mut e = engine(&f);
    let r = resource(
        "mixed",
        1,
        vec![
            file(
                "~/Documents/patients.csv",
                "mrn,name\n1,A\n",
                PlantMode::WholeFile,
                0o644,
            ),
            file("/etc/hosts", "10.9.9.9 pacs\n", PlantMode::Block, 0o644),
        ],
    );
    assert!(e.apply(&[], &[r])[0].result.is_ok());
    assert!(e.verify_and_repair().is_empty());
    let csv = f.root.join("home/alice/Documents/patients.csv");
    std::fs::remove_file(&csv).unwrap();
    std::fs::write(f.root.join("etc/hosts"), "127.0.0.1 localhost\n").unwrap();
    let drifts = e.verify_and_repair();
    assert_eq!(drifts.len(), 2, "{drifts:?}");
    assert!(drifts.iter().all(|d| d.repaired));
    assert!(
        drifts
            .iter()
            .any(|d| d.path == csv && d.what == DriftKind::Deleted)
    );
    assert_eq!(std::fs::read_to_string(&csv).unwrap(), "mrn,name\n1,A\n");
    assert_eq!(
        std::fs::read_to_string(f.root.join("etc/hosts")).unwrap(),
        "127.0.0.1 localhost\n10.9.9.9 pacs\n"
    );
    assert!(e.verify_and_repair().is_empty());
    assert!(e.uninstall().is_empty());
    assert_eq!(
        std::fs::read_to_string(f.root.join("etc/hosts")).unwrap(),
        "127.0.0.1 localhost\n"
    );
}

#[test]
fn a_block_keeps_the_files_owner_and_mode() {
    use std::os::unix::fs::MetadataExt;
    let f = fixture();
    let path = f.root.join("home/alice/.pgpass");
    std::fs::write(&path, "db:5432:app:alice:secret\n").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    // As root (CI), give the file to another user; otherwise it stays ours.
    let (uid, gid) = if nix::unistd::geteuid().is_root() {
        (1234, 5678)
    } else {
        let m = std::fs::metadata(&path).unwrap();
        (m.uid(), m.gid())
    };
    std::os::unix::fs::chown(&path, Some(uid), Some(gid)).unwrap();
    let mut e = engine(&f);
    let r = resource(
        "pg",
        1,
        vec![file(
            "~/.pgpass",
            "pacs:5432:pacs:svc:pw\n",
            PlantMode::Block,
            0o644,
        )],
    );
    assert!(e.apply(&[], &[r])[0].result.is_ok());
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(
        (meta.uid(), meta.gid(), meta.mode() & 0o777),
        (uid, gid, 0o600)
    );
    assert!(e.uninstall().is_empty());
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(
        (meta.uid(), meta.gid(), meta.mode() & 0o777),
        (uid, gid, 0o600)
    );
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        "db:5432:app:alice:secret\n"
    );
}

#[test]
fn listings_do_not_give_lures_away() {
    let f = fixture();
    let home = f.root.join("home/bob");
    let old = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_600_000_000);
    std::fs::File::open(&home)
        .unwrap()
        .set_modified(old)
        .unwrap();
    let mut e = engine(&f);
    let r = resource(
        "aws",
        1,
        vec![file(
            "~/.aws/credentials",
            "[x]\nk = v\n",
            PlantMode::Block,
            0o600,
        )],
    );
    assert!(e.apply(&[], &[r])[0].result.is_ok());
    let mtime = |p: &Path| std::fs::metadata(p).unwrap().modified().unwrap();
    assert_eq!(mtime(&home), old, "the home directory keeps its time");
    assert_eq!(
        mtime(&home.join(".aws")),
        fs::system_time(1_700_000_000_000).unwrap(),
        "a directory made for the lure is as old as the lure"
    );
    assert!(e.uninstall().is_empty());
    assert_eq!(mtime(&home), old, "and keeps it after removal");
}

#[test]
fn refuses_paths_that_escape_and_unknown_kinds() {
    let f = fixture();
    let mut e = engine(&f);
    std::os::unix::fs::symlink("/etc", f.root.join("etc/link")).unwrap();
    let outcomes = e.apply(
        &[],
        &[
            resource(
                "up",
                1,
                vec![file("/../../etc/x", "x", PlantMode::WholeFile, 0)],
            ),
            resource(
                "link",
                1,
                vec![file("/etc/link/evil", "x", PlantMode::WholeFile, 0)],
            ),
            resource(
                "rel",
                1,
                vec![file("relative/x", "x", PlantMode::WholeFile, 0)],
            ),
            Resource {
                id: "d".into(),
                revision: 1,
                kind: "decoy".into(),
                body: Vec::new(),
            },
        ],
    );
    assert!(outcomes.iter().all(|o| o.result.is_err()), "{outcomes:?}");
    assert!(!Path::new("/etc/evil").exists());
    assert!(e.applied().is_empty());
}

/// A local user swaps a directory on a lure's path for a link to
/// another application's folder, which holds a file identical to the
/// lure: neither repair nor removal may touch anything through it.
#[test]
fn a_link_planted_after_the_lure_is_never_followed() {
    let f = fixture();
    let outside = f._dir.path().join("other-app");
    std::fs::create_dir_all(&outside).unwrap();
    let env = "DATABASE_URL=postgres://svc:pw@ehr-db/ehr\n";
    std::fs::write(outside.join(".env"), env).unwrap();
    let old = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_500_000_000);
    std::fs::File::open(&outside)
        .unwrap()
        .set_modified(old)
        .unwrap();
    let mut e = engine(&f);
    let r = resource(
        "env",
        1,
        vec![file(
            "~/projects/ehr-integration/.env",
            env,
            PlantMode::WholeFile,
            0o600,
        )],
    );
    assert!(e.apply(&[], &[r])[0].result.is_ok());
    let alice = f.root.join("home/alice/projects/ehr-integration");
    std::fs::remove_file(alice.join(".env")).unwrap();
    std::fs::remove_dir(&alice).unwrap();
    std::os::unix::fs::symlink(&outside, &alice).unwrap();

    let drifts = e.verify_and_repair();
    assert_eq!(drifts.len(), 1, "{drifts:?}");
    assert!(!drifts[0].repaired, "nothing is planted through the link");
    assert_eq!(std::fs::read_to_string(outside.join(".env")).unwrap(), env);
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 1);
    assert!(
        f.root
            .join("home/bob/projects/ehr-integration/.env")
            .exists(),
        "the other home keeps its lure"
    );

    // Removing the lure (a deleted campaign, an uninstall) leaves the
    // hash-identical file behind the link and its folder alone.
    assert!(e.apply(&["env".into()], &[])[0].result.is_ok());
    assert_eq!(std::fs::read_to_string(outside.join(".env")).unwrap(), env);
    assert!(!f.root.join("home/bob/projects").exists());
    let mtime = std::fs::metadata(&outside).unwrap().modified().unwrap();
    assert_eq!(mtime, old, "nothing re-timed through the link");
}

/// One home whose folder is a link (or holds a real file at the lure's
/// name) must not keep the lure from the agent's other homes.
#[test]
fn one_refusing_home_leaves_the_lure_in_the_others() {
    let f = fixture();
    let outside = f._dir.path().join("elsewhere");
    std::fs::create_dir_all(&outside).unwrap();
    std::os::unix::fs::symlink(&outside, f.root.join("home/alice/Dokumente")).unwrap();
    std::fs::create_dir_all(f.root.join("home/bob/Dokumente")).unwrap();
    let real = f.root.join("home/bob/passwords.xlsx");
    std::fs::write(&real, b"the real spreadsheet").unwrap();
    let mut e = engine(&f);
    let outcomes = e.apply(
        &[],
        &[resource(
            "files",
            1,
            vec![
                file(
                    "~/Dokumente/Export/patienten.csv",
                    "mrn\n",
                    PlantMode::WholeFile,
                    0o644,
                ),
                file("~/passwords.xlsx", "lure", PlantMode::WholeFile, 0o644),
            ],
        )],
    );
    assert!(outcomes[0].result.is_ok(), "{outcomes:?}");
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
    assert!(
        f.root
            .join("home/bob/Dokumente/Export/patienten.csv")
            .exists()
    );
    assert_eq!(std::fs::read(&real).unwrap(), b"the real spreadsheet");
    assert_eq!(
        std::fs::read(f.root.join("home/alice/passwords.xlsx")).unwrap(),
        b"lure"
    );
    let planted: Vec<_> = e.lures()["files"]
        .files
        .iter()
        .map(|p| p.path().strip_prefix(&f.root).unwrap().to_path_buf())
        .collect();
    assert_eq!(
        planted,
        [
            Path::new("home/bob/Dokumente/Export/patienten.csv"),
            Path::new("home/alice/passwords.xlsx")
        ]
    );
    assert!(e.uninstall().is_empty());
    assert!(!f.root.join("home/bob/Dokumente/Export").exists());
    assert!(f.root.join("home/bob/Dokumente").exists());
}

/// A whole-file lure someone changed is theirs now: repair does not
/// delete it, and its removal leaves it.
#[test]
fn a_changed_whole_file_lure_is_never_deleted() {
    let f = fixture();
    let mut e = engine(&f);
    let r = resource(
        "csv",
        1,
        vec![file(
            "/etc/patients.csv",
            "mrn,name\n",
            PlantMode::WholeFile,
            0o644,
        )],
    );
    assert!(e.apply(&[], &[r])[0].result.is_ok());
    let path = f.root.join("etc/patients.csv");
    std::fs::write(&path, "someone's own work\n").unwrap();
    let drifts = e.verify_and_repair();
    assert_eq!(drifts.len(), 1);
    assert_eq!(drifts[0].what, DriftKind::Modified);
    assert!(!drifts[0].repaired);
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        "someone's own work\n"
    );
}

/// A rotation plants the new instance beside the old one, then removes the
/// old: the directory the old one made is not empty then. Uninstall used to
/// leave it behind, empty and backdated, in users' homes.
#[test]
fn directories_made_by_a_rotated_lure_go_at_uninstall() {
    let f = fixture();
    let before = snapshot(&f.root);
    let mut e = engine(&f);
    let kube = |id: &str, name: &str| {
        resource(
            id,
            1,
            vec![file(
                &format!("~/.kube/{name}.kubeconfig"),
                "apiVersion: v1\n",
                PlantMode::WholeFile,
                0o600,
            )],
        )
    };
    assert!(e.apply(&[], &[kube("old", "imaging")])[0].result.is_ok());
    assert!(
        e.apply(&[], &[kube("new", "imaging-prod")])[0]
            .result
            .is_ok()
    );
    assert!(e.apply(&["old".into()], &[])[0].result.is_ok());
    assert!(
        f.root
            .join("home/alice/.kube/imaging-prod.kubeconfig")
            .exists()
    );
    // A restart in between: the state file remembers.
    drop(e);
    let mut e = engine(&f);
    assert!(e.uninstall().is_empty());
    assert_eq!(snapshot(&f.root), before, "no directory left behind");
}

#[test]
fn a_run_that_ends_before_saving_leaves_nothing_behind_at_the_next_start() {
    let f = fixture();
    let ssh_config = f.root.join("home/alice/.ssh/config");
    std::fs::write(&ssh_config, "Host real\n  HostName 10.1.1.1").unwrap();
    let before = snapshot(&f.root);
    let mut e = engine(&f);
    // The save fails (a directory where the state file goes): the files
    // are planted, the state never records them, as after a kill -9
    // between planting and saving.
    let state_file = f.state.join(STATE_FILE);
    std::fs::create_dir(&state_file).unwrap();
    let outcomes = e.apply(
        &[],
        &[resource(
            "lure-1",
            1,
            vec![
                file(
                    "~/.config/pacs/viewer/nodes.ini",
                    "[Node]\nAETitle=RADWS7K2M9QX\n",
                    PlantMode::WholeFile,
                    0o600,
                ),
                file(
                    "~/.ssh/config",
                    "Host pacs-bkp\n  User svc\n",
                    PlantMode::Block,
                    0o600,
                ),
            ],
        )],
    );
    assert!(matches!(outcomes[0].result, Err(LureError::State { .. })));
    let planted = f.root.join("home/bob/.config/pacs/viewer/nodes.ini");
    assert!(planted.exists());
    assert!(
        std::fs::read_to_string(&ssh_config)
            .unwrap()
            .contains("pacs-bkp")
    );
    // A temporary file the crash left mid-write.
    let temp = f
        .root
        .join("home/alice/.config/pacs/viewer/.nodes.ini.0123456789ab.tmp");
    std::fs::write(&temp, "[Node]\n").unwrap();
    // Not ours: a user's file with a similar name stays.
    let users = f.root.join("home/alice/.ssh/.config.backup.tmp");
    std::fs::write(&users, "mine").unwrap();
    drop(e);
    std::fs::remove_dir(&state_file).unwrap();

    let e = engine(&f);
    assert!(e.lures().is_empty());
    std::fs::remove_file(&users).unwrap();
    assert_eq!(
        snapshot(&f.root),
        before,
        "files, blocks, directories and temporary files undone"
    );
    // The journal is empty again.
    assert_eq!(
        std::fs::metadata(f.state.join("planting.journal"))
            .unwrap()
            .len(),
        0
    );
}

#[test]
fn what_the_state_recorded_survives_the_recovery() {
    let f = fixture();
    let mut e = engine(&f);
    let lure = resource(
        "lure-1",
        1,
        vec![file(
            "/etc/pacs.ini",
            "[pacs]\n",
            PlantMode::WholeFile,
            0o644,
        )],
    );
    assert!(e.apply(&[], &[lure]).iter().all(|o| o.result.is_ok()));
    // A journal that still names the file (the crash came after the
    // save, before the journal was emptied).
    let journal = f.state.join("planting.journal");
    let planted = e.lures()["lure-1"].files[0].clone();
    let line = serde_json::to_string(&Intent::File {
        lure: "lure-1".into(),
        revision: 1,
        planted,
    })
    .unwrap();
    std::fs::write(&journal, format!("{line}\n")).unwrap();
    drop(e);
    let e = engine(&f);
    assert_eq!(e.lures().len(), 1);
    assert_eq!(
        std::fs::read_to_string(f.root.join("etc/pacs.ini")).unwrap(),
        "[pacs]\n"
    );
}

#[test]
fn removing_a_block_someone_already_took_out_succeeds() {
    let f = fixture();
    let ssh_config = f.root.join("home/alice/.ssh/config");
    std::fs::write(&ssh_config, "Host real\n").unwrap();
    let mut e = engine(&f);
    let lure = resource(
        "lure-1",
        1,
        vec![file(
            "~/.ssh/config",
            "Host pacs\n",
            PlantMode::Block,
            0o600,
        )],
    );
    assert!(e.apply(&[], &[lure]).iter().all(|o| o.result.is_ok()));
    std::fs::write(&ssh_config, "Host real\n").unwrap();
    let outcomes = e.apply(&["lure-1".into()], &[]);
    assert!(outcomes[0].result.is_ok(), "{:?}", outcomes[0].result);
    assert!(e.lures().is_empty());
    assert_eq!(std::fs::read_to_string(&ssh_config).unwrap(), "Host real\n");
}

#[test]
fn a_registry_lure_on_linux_is_refused_and_leaves_nothing() {
    let f = fixture();
    let before = snapshot(&f.root);
    let mut e = engine(&f);
    let body = LureSpec {
        template: "putty-session".into(),
        files: vec![file(
            "~/Documents/note.txt",
            "x\n",
            PlantMode::WholeFile,
            0o600,
        )],
        keys: vec![ruse_proto::spec::PlantKey {
            path: "~/Software/SimonTatham/PuTTY/Sessions/pacs".into(),
            values: vec![ruse_proto::spec::RegistryValue {
                name: "HostName".into(),
                data: ruse_proto::spec::RegistryData::Text("10.0.0.5".into()),
            }],
        }],
    }
    .encode();
    let outcomes = e.apply(
        &[],
        &[Resource {
            id: "l1".into(),
            revision: 1,
            kind: "lure".into(),
            body,
        }],
    );
    let err = outcomes[0].result.as_ref().unwrap_err().to_string();
    assert!(err.contains("for Windows agents"), "{err}");
    assert!(e.lures().is_empty());
    assert_eq!(snapshot(&f.root), before);
}

use super::*;
use nix::sys::stat::Mode;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};

fn root_of(path: &Path) -> Dir {
    Dir::open_root(&fs::canonicalize(path).unwrap()).unwrap()
}

#[test]
fn paths_stay_under_the_base() {
    let base = Path::new("/r");
    assert_eq!(
        confined_join(base, "/etc/hosts").unwrap(),
        Path::new("/r/etc/hosts")
    );
    assert_eq!(confined_join(base, "a/./b").unwrap(), Path::new("/r/a/b"));
    for bad in ["../etc/passwd", "/a/../../etc", "", "/", "."] {
        assert!(confined_join(base, bad).is_err(), "{bad:?} accepted");
    }
}

#[test]
fn links_on_the_way_are_refused_by_openat2_and_by_the_walk() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let outside = dir.path().join("outside");
    fs::create_dir_all(root.join("home/alice/.aws")).unwrap();
    fs::create_dir_all(&outside).unwrap();
    std::os::unix::fs::symlink(&outside, root.join("home/alice/.ssh")).unwrap();
    let root = root_of(&root);
    let through_link = root.path().join("home/alice/.ssh/config");
    assert!(matches!(
        check_path(&root, &through_link),
        Err(FsError::OutsideRoot { .. })
    ));
    assert!(check_path(&root, &root.path().join("home/alice/.aws/credentials")).is_ok());
    assert!(check_path(&root, &root.path().join("home/alice/new/dir/x")).is_ok());
    // A link at the final name is refused too.
    std::os::unix::fs::symlink(outside.join("x"), root.path().join("home/alice/notes")).unwrap();
    assert!(check_path(&root, &root.path().join("home/alice/notes")).is_err());
    // The fallback walk refuses the same links.
    let rel = Path::new("home/alice/.ssh");
    assert!(matches!(walk(&root, rel), Err(FsError::OutsideRoot { .. })));
    assert!(walk(&root, Path::new("home/alice/.aws")).is_ok());
    assert!(
        walk(&root, Path::new("home/alice/missing"))
            .unwrap_err()
            .is_not_found()
    );
}

#[test]
fn create_new_never_clobbers() {
    let dir = tempfile::tempdir().unwrap();
    let root = root_of(dir.path());
    let target = root.path().join("real.txt");
    fs::write(&target, b"real data").unwrap();
    let new = |mode, mtime| NewFile {
        mode,
        owner: None,
        mtime,
    };
    assert!(matches!(
        create_new(&root, &target, b"lure", new(0o600, None)),
        Err(FsError::Exists { .. })
    ));
    assert_eq!(fs::read(&target).unwrap(), b"real data");
    // Nor a dangling link at the name.
    let dangling = root.path().join("dangling");
    std::os::unix::fs::symlink(dir.path().join("nowhere"), &dangling).unwrap();
    assert!(matches!(
        create_new(&root, &dangling, b"lure", new(0o600, None)),
        Err(FsError::Exists { .. })
    ));
    assert!(!dir.path().join("nowhere").exists());
    let fresh = root.path().join("lure.txt");
    let t = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    create_new(&root, &fresh, b"lure", new(0o640, Some(t))).unwrap();
    let meta = fs::metadata(&fresh).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o640);
    assert_eq!(meta.modified().unwrap(), t);
    assert_eq!(
        fs::read_dir(dir.path()).unwrap().count(),
        3,
        "no temp files left"
    );
}

#[test]
fn replace_content_keeps_mode_and_time() {
    let dir = tempfile::tempdir().unwrap();
    let root = root_of(dir.path());
    let target = root.path().join("config");
    fs::write(&target, b"before").unwrap();
    fs::set_permissions(&target, fs::Permissions::from_mode(0o604)).unwrap();
    let t = UNIX_EPOCH + Duration::from_secs(1_600_000_000);
    set_mtime(&root, &target, t).unwrap();
    let (old, seen) = read_regular(&root, &target).unwrap();
    replace_content(&root, &target, &old, b"after", &seen).unwrap();
    let meta = fs::metadata(&target).unwrap();
    assert_eq!(fs::read(&target).unwrap(), b"after");
    assert_eq!(meta.permissions().mode() & 0o777, 0o604);
    assert_eq!(meta.modified().unwrap(), t);
    // A change between read and replace is detected.
    let (old, seen) = read_regular(&root, &target).unwrap();
    fs::write(&target, b"someone else").unwrap();
    assert!(replace_content(&root, &target, &old, b"mine", &seen).is_err());
    assert_eq!(fs::read(&target).unwrap(), b"someone else");
}

#[test]
fn a_fifo_at_a_lure_name_is_refused_without_blocking() {
    let dir = tempfile::tempdir().unwrap();
    let root = root_of(dir.path());
    let fifo = root.path().join("pipe");
    nix::unistd::mkfifo(&fifo, Mode::from_bits_truncate(0o644)).unwrap();
    assert!(matches!(
        read_regular(&root, &fifo),
        Err(FsError::Unsuitable { .. })
    ));
    assert_eq!(
        remove_if_ours(&root, &fifo, |_| true).unwrap(),
        Removal::NotOurs
    );
    assert!(fifo.exists());
}

#[test]
fn only_the_lures_own_content_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    let root = root_of(dir.path());
    let target = root.path().join("notes.txt");
    fs::write(&target, b"lure").unwrap();
    let lure = sha256_hex(b"lure");
    let ours = |b: &[u8]| sha256_hex(b) == lure;
    fs::write(&target, b"edited by its user").unwrap();
    assert_eq!(
        remove_if_ours(&root, &target, ours).unwrap(),
        Removal::NotOurs
    );
    assert!(target.exists());
    fs::write(&target, b"lure").unwrap();
    assert_eq!(
        remove_if_ours(&root, &target, ours).unwrap(),
        Removal::Removed
    );
    assert!(!target.exists());
    assert_eq!(
        remove_if_ours(&root, &target, ours).unwrap(),
        Removal::Missing
    );
}

#[test]
fn created_parents_are_private_where_expected_and_removed_when_empty() {
    let dir = tempfile::tempdir().unwrap();
    let root = root_of(dir.path());
    let base = root.path().to_path_buf();
    let target = base.join("home/bob/.ssh/config");
    let created = create_parents(&root, &target, None, &mut |_| Ok(())).unwrap();
    assert_eq!(
        created,
        vec![
            base.join("home"),
            base.join("home/bob"),
            base.join("home/bob/.ssh")
        ]
    );
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&base.join("home/bob/.ssh")), 0o700);
    assert_eq!(mode(&base.join("home/bob")), 0o755);
    fs::write(base.join("home/bob/keep"), b"x").unwrap();
    remove_created_dirs(&root, &created);
    assert!(!base.join("home/bob/.ssh").exists());
    assert!(
        base.join("home/bob/keep").exists(),
        "non-empty directories stay"
    );
}

#[test]
fn created_parents_stop_at_a_link() {
    let dir = tempfile::tempdir().unwrap();
    let outside = dir.path().join("outside");
    fs::create_dir_all(dir.path().join("root/home/bob")).unwrap();
    fs::create_dir_all(&outside).unwrap();
    std::os::unix::fs::symlink(&outside, dir.path().join("root/home/bob/Documents")).unwrap();
    let root = root_of(&dir.path().join("root"));
    let target = root.path().join("home/bob/Documents/Exports/patients.csv");
    assert!(matches!(
        create_parents(&root, &target, None, &mut |_| Ok(())),
        Err(FsError::OutsideRoot { .. })
    ));
    assert_eq!(fs::read_dir(&outside).unwrap().count(), 0);
}

#[test]
fn times_are_never_set_through_a_link() {
    let dir = tempfile::tempdir().unwrap();
    let precious = dir.path().join("precious");
    fs::write(&precious, b"root's").unwrap();
    let old = UNIX_EPOCH + Duration::from_secs(1_500_000_000);
    File::open(&precious).unwrap().set_modified(old).unwrap();
    fs::create_dir_all(dir.path().join("root/home/bob")).unwrap();
    std::os::unix::fs::symlink(&precious, dir.path().join("root/home/bob/.aws")).unwrap();
    let root = root_of(&dir.path().join("root"));
    let t = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    assert!(set_mtime(&root, &root.path().join("home/bob/.aws"), t).is_err());
    assert_eq!(fs::metadata(&precious).unwrap().modified().unwrap(), old);
}

#[test]
fn in_place_rewrites_touch_only_what_differs() {
    let dir = tempfile::tempdir().unwrap();
    let root = root_of(dir.path());
    let hosts = root.path().join("hosts");
    let original = b"127.0.0.1 localhost\n".to_vec();
    fs::write(&hosts, &original).unwrap();
    let t = UNIX_EPOCH + Duration::from_secs(1_600_000_000);
    set_mtime(&root, &hosts, t).unwrap();
    let inode = fs::metadata(&hosts).unwrap().ino();
    let (dir_handle, name) = parent(&root, &hosts).unwrap();
    // Plant: append.
    let (old, seen) = read_regular(&root, &hosts).unwrap();
    let planted = [old.clone(), b"10.0.0.9 pacs\n".to_vec()].concat();
    rewrite_in_place(&dir_handle, &name, &hosts, &old, &planted, &seen).unwrap();
    assert_eq!(fs::read(&hosts).unwrap(), planted);
    // Someone appends after the block; taking the block out rewrites
    // the tail and keeps theirs.
    let mut theirs = planted.clone();
    theirs.extend_from_slice(b"10.1.1.1 printer\n");
    fs::write(&hosts, &theirs).unwrap();
    set_mtime(&root, &hosts, t).unwrap();
    let (old, seen) = read_regular(&root, &hosts).unwrap();
    let restored = [original.clone(), b"10.1.1.1 printer\n".to_vec()].concat();
    rewrite_in_place(&dir_handle, &name, &hosts, &old, &restored, &seen).unwrap();
    assert_eq!(fs::read(&hosts).unwrap(), restored);
    let meta = fs::metadata(&hosts).unwrap();
    assert_eq!(meta.ino(), inode, "the same file, changed in place");
    assert_eq!(meta.modified().unwrap(), t);
    // A change since it was read is refused.
    let (old, seen) = read_regular(&root, &hosts).unwrap();
    fs::write(&hosts, b"rewritten by someone\n").unwrap();
    assert!(rewrite_in_place(&dir_handle, &name, &hosts, &old, b"x", &seen).is_err());
}

//! Tests of the recovery file's I/O: names, safe opens, the lock and atomic writes.

use std::fs;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use super::codec::tests::sample;
use super::codec::*;
use super::files::*;
use super::lock::*;
use super::path::*;

fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "foo-proxy-recovery-unit-{name}-{}",
        std::process::id()
    ));
    let _ = fs::remove_dir_all(&dir);
    dir
}

#[test]
fn write_atomic_creates_parents_and_leaves_no_temp() {
    let dir = scratch_dir("write");
    let path = dir.join("a/b/recovery.json");
    write_atomic(&path, &encode(&sample())).unwrap();
    write_atomic(&path, &encode(&Snapshot::default())).unwrap();
    assert_eq!(decode(&fs::read(&path).unwrap()), Ok(Snapshot::default()));
    let names: Vec<_> = fs::read_dir(path.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["recovery.json"]);
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn write_atomic_names_the_unwritable_directory() {
    let dir = scratch_dir("blocked");
    fs::create_dir_all(&dir).unwrap();
    let blocker = dir.join("file");
    fs::write(&blocker, b"not a directory").unwrap();
    let err = write_atomic(&blocker.join("recovery.json"), b"{}").unwrap_err();
    assert!(err.contains("cannot create directory"), "{err}");
    assert!(err.contains(&blocker.display().to_string()), "{err}");
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn names_beside_the_file_follow_one_pattern() {
    let path = Path::new("/x/recovery.json");
    assert_eq!(
        temp_path(path, 42, 7),
        Path::new("/x/.recovery.json.42.7.tmp")
    );
    assert_eq!(lock_path(path), Path::new("/x/recovery.json.lock"));
    // 2026-11-27T22:10:11.123Z
    let ms = 1_795_817_411_123;
    let aside = corrupt_path(path, ms, 0);
    assert_eq!(
        aside,
        Path::new("/x/recovery.json.corrupt.20261127T221011.123Z")
    );
    let of = b"recovery.json";
    for (name, ours) in [
        (name_of(&aside), true),
        (name_of(&corrupt_path(path, ms, 2)), true),
        (b"recovery.json.corrupt".as_slice(), false),
        (b"recovery.json.corrupt.notes", false),
        (b"recovery.json.corrupt.20261127T221011.123Z-", false),
        (b"other.json.corrupt.20261127T221011.123Z", false),
    ] {
        assert_eq!(is_corrupt_name(name, of), ours, "{name:?}");
    }
    for (name, ours) in [
        (name_of(&temp_path(path, 42, 7)), true),
        (b".recovery.json.1.2.3.tmp".as_slice(), false),
        (b".recovery.json.x.2.tmp", false),
        (b".recovery.json..2.tmp", false),
        (b"recovery.json.tmp", false),
        (b".other.json.1.2.tmp", false),
    ] {
        assert_eq!(is_temp_name(name, of), ours, "{name:?}");
    }
    assert_eq!(dir_of(Path::new("relative.json")), Path::new("."));
    assert_eq!(
        temp_path(Path::new("relative.json"), 1, 2),
        Path::new("./.relative.json.1.2.tmp")
    );
}

fn mkfifo(path: &Path) {
    let ok = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "mkfifo {path:?}");
}

/// Runs `f` on another thread; fails if it takes more than 5 s (it
/// would block forever on the old code's open).
fn within_5s<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(5))
        .expect("blocked for 5 s")
}

#[test]
fn a_fifo_swapped_in_after_the_check_is_never_opened_blocking() {
    let dir = scratch_dir("fifo");
    fs::create_dir_all(&dir).unwrap();
    let path = dir.join("recovery.json");
    assert_eq!(check_path(&path), Ok(()));
    mkfifo(&path);
    let read = path.clone();
    let got = within_5s(move || open_regular(&read).map(|f| f.is_some()));
    assert_eq!(got, Err(Unreadable::NotRegular("a FIFO")));
    // Nor replaced by a write.
    let err = write_atomic(&path, b"{}").unwrap_err();
    assert!(err.contains("is now a FIFO"), "{err}");
    assert!(fs::symlink_metadata(&path).unwrap().file_type().is_fifo());
    // A FIFO at the lock file's name is refused, not opened.
    let lock = lock_path(&path);
    mkfifo(&lock);
    let locked = within_5s(move || RecoveryLock::take(&path).map(|_| ()));
    assert!(matches!(locked, Err(LockError::Unusable(m)) if m.contains("a FIFO")));
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn check_path_accepts_only_regular_files_and_links_to_them() {
    let dir = scratch_dir("check");
    fs::create_dir_all(&dir).unwrap();
    let file = dir.join("file");
    fs::write(&file, b"x").unwrap();
    let link = dir.join("link");
    std::os::unix::fs::symlink(&file, &link).unwrap();
    let dangling = dir.join("dangling");
    std::os::unix::fs::symlink(dir.join("nothing"), &dangling).unwrap();
    let to_dir = dir.join("to-dir");
    std::os::unix::fs::symlink(&dir, &to_dir).unwrap();
    for ok in [
        &file,
        &link,
        &dangling,
        &dir.join("missing"),
        &file.join("x"),
    ] {
        assert_eq!(check_path(ok), Ok(()), "{ok:?}");
    }
    let refused = |p: &Path| check_path(p).map_err(|e| (e.exit_code(), e.to_string()));
    let (code, msg) = refused(&dir).unwrap_err();
    assert_eq!(code, 2);
    assert!(msg.ends_with("is a directory, not a regular file"), "{msg}");
    let (_, msg) = refused(&to_dir).unwrap_err();
    assert!(msg.contains("a symbolic link to a directory"), "{msg}");
    let (_, msg) = refused(&dir.join("..")).unwrap_err();
    assert!(msg.contains("does not name a file"), "{msg}");
    let (code, msg) = refused(Path::new("missing/recovery.json/")).unwrap_err();
    assert_eq!(code, 2);
    assert!(msg.contains("does not name a file"), "{msg}");
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn one_lock_per_path_with_the_holders_pid_released_on_drop() {
    use std::os::unix::fs::PermissionsExt;
    let dir = scratch_dir("lock");
    fs::create_dir_all(&dir).unwrap();
    let path = dir.join("recovery.json");
    let first = RecoveryLock::take(&path).unwrap();
    let meta = fs::metadata(first.path()).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    // flock conflicts between two opens even in one process.
    let second = RecoveryLock::take(&path).unwrap_err();
    assert_eq!(second, LockError::InUse(Some(process::id())));
    assert!(second.describe(&path).ends_with(&format!(
        "is in use by another foo-proxy (pid {})",
        process::id()
    )));
    drop(first);
    let again = RecoveryLock::take(&path).unwrap();
    // Removing the lock file while held is noticed.
    assert!(again.still_named());
    fs::remove_file(again.path()).unwrap();
    assert!(!again.still_named());
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn a_pid_cut_short_names_no_process() {
    assert_eq!(parse_pid(b"1234\n"), Some(1234));
    assert_eq!(parse_pid(b"12"), None);
    assert_eq!(parse_pid(b""), None);
    assert_eq!(parse_pid(b"x\n"), None);
}

#[test]
fn a_file_written_in_place_must_have_one_name_and_our_owner() {
    assert_eq!(not_ours(1, 1000, 1000), None);
    assert_eq!(not_ours(1, 0, 0), None);
    let linked = not_ours(2, 1000, 1000).unwrap();
    assert!(linked.contains("2 hard links"), "{linked}");
    let foreign = not_ours(1, 0, 1000).unwrap();
    assert!(
        foreign.contains("uid 0") && foreign.contains("uid 1000"),
        "{foreign}"
    );
    // A link count of 0 (removed while open) is not another name.
    assert_eq!(not_ours(0, 7, 7), None);
}

#[test]
fn a_hard_link_at_the_lock_name_is_refused_and_left_as_it_was() {
    let dir = scratch_dir("lock-hardlink");
    fs::create_dir_all(&dir).unwrap();
    let path = dir.join("recovery.json");
    let victim = dir.join("victim");
    fs::write(&victim, b"precious").unwrap();
    fs::hard_link(&victim, lock_path(&path)).unwrap();
    match RecoveryLock::take(&path) {
        Err(LockError::Unusable(why)) => assert!(why.contains("hard links"), "{why}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(fs::read(&victim).unwrap(), b"precious");
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn a_planted_link_at_the_lock_or_temp_name_is_never_followed() {
    let dir = scratch_dir("plant");
    fs::create_dir_all(&dir).unwrap();
    let path = dir.join("recovery.json");
    let victim = dir.join("victim");
    fs::write(&victim, b"precious").unwrap();
    std::os::unix::fs::symlink(&victim, lock_path(&path)).unwrap();
    let err = RecoveryLock::take(&path).unwrap_err();
    assert!(matches!(&err, LockError::Unusable(m) if m.contains("symbolic link")));
    // Every temp name the next writes would try, planted.
    let next = TEMP_SEQ.load(Ordering::Relaxed);
    for n in next..next + 4 {
        std::os::unix::fs::symlink(&victim, temp_path(&path, process::id(), n)).unwrap();
    }
    write_atomic(&path, &encode(&sample())).unwrap();
    assert_eq!(fs::read(&victim).unwrap(), b"precious");
    assert_eq!(decode(&fs::read(&path).unwrap()), Ok(sample()));
    let _ = fs::remove_dir_all(&dir);
}

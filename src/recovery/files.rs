//! The names beside the recovery file and the file I/O: load at start, atomic replace, quarantine of a bad file.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::dates::{self, wall_ms};
use crate::net::describe;
use crate::recovery::codec::{DecodeError, MAX_FILE_BYTES, Snapshot, decode};
use crate::recovery::path::{SAFE_OPEN, Unreadable, kind_of, open_regular};
use log::{debug, info, warn};

/// Most quarantined files kept beside the recovery file; older ones go.
pub const MAX_CORRUPT: usize = 5;
/// Temp names tried per write when planted ones are in the way; the next
/// retry goes on with fresh names.
const TEMP_TRIES: u64 = 16;
/// Makes temp names unique within the process.
pub(super) static TEMP_SEQ: AtomicU64 = AtomicU64::new(0);

pub(super) fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// The directory `path` lives in (`.` for a bare file name).
pub(super) fn dir_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// The last component of `path`, as bytes (empty when it has none).
pub(super) fn name_of(path: &Path) -> &[u8] {
    path.file_name().map(OsStrExt::as_bytes).unwrap_or_default()
}

/// The lock file that says who owns `path`: `PATH.lock`.
pub fn lock_path(path: &Path) -> PathBuf {
    with_suffix(path, ".lock")
}

/// Where a snapshot is written before it is renamed over `path`: a name
/// unique to this process and write, hidden, in the same directory (so the
/// rename is atomic): `DIR/.NAME.PID.N.tmp`.
pub fn temp_path(path: &Path, pid: u32, n: u64) -> PathBuf {
    let mut name = OsString::from(".");
    name.push(path.file_name().unwrap_or_default());
    name.push(format!(".{pid}.{n}.tmp"));
    dir_of(path).join(name)
}

/// The fixed temp name that builds before issue 11 used (`PATH.tmp`); a
/// crash of such a build can leave one behind.
pub fn legacy_temp_path(path: &Path) -> PathBuf {
    with_suffix(path, ".tmp")
}

/// Where a file that cannot be used is kept for inspection:
/// `PATH.corrupt.YYYYMMDDTHHMMSS.mmmZ` (UTC, so names sort by age), with
/// `-N` appended when `n > 0` (two in one millisecond).
pub fn corrupt_path(path: &Path, wall_ms: u64, n: u32) -> PathBuf {
    let mut stamp = format!(".corrupt.{}", dates::compact_ms(wall_ms));
    if n > 0 {
        stamp.push_str(&format!("-{n}"));
    }
    with_suffix(path, &stamp)
}

pub(super) fn all_digits(s: &[u8]) -> bool {
    !s.is_empty() && s.iter().all(u8::is_ascii_digit)
}

/// Whether `name` is one of our temp names for the file named `of`.
pub(super) fn is_temp_name(name: &[u8], of: &[u8]) -> bool {
    let Some(middle) = name
        .strip_prefix(b".")
        .and_then(|r| r.strip_prefix(of))
        .and_then(|r| r.strip_prefix(b"."))
        .and_then(|r| r.strip_suffix(b".tmp"))
    else {
        return false;
    };
    let mut parts = middle.split(|b| *b == b'.');
    matches!(
        (parts.next(), parts.next(), parts.next()),
        (Some(pid), Some(n), None) if all_digits(pid) && all_digits(n)
    )
}

/// Whether `name` is one of our quarantine names for the file named `of`.
pub(super) fn is_corrupt_name(name: &[u8], of: &[u8]) -> bool {
    const SHAPE: &[u8; 20] = b"00000000T000000.000Z";
    let Some(rest) = name
        .strip_prefix(of)
        .and_then(|r| r.strip_prefix(b".corrupt."))
    else {
        return false;
    };
    let (stamp, n) = match rest.iter().position(|b| *b == b'-') {
        Some(i) => (rest.get(..i), rest.get(i + 1..)),
        None => (Some(rest), None),
    };
    let stamp_ok = stamp.is_some_and(|s| {
        s.len() == SHAPE.len()
            && s.iter().zip(SHAPE).all(|(c, want)| {
                if *want == b'0' {
                    c.is_ascii_digit()
                } else {
                    c == want
                }
            })
    });
    stamp_ok && n.is_none_or(all_digits)
}

/// The regular files in `path`'s directory whose names `pattern` accepts,
/// sorted by name. Links and anything else are never listed, so never
/// removed.
pub(super) fn own_files(path: &Path, pattern: fn(&[u8], &[u8]) -> bool) -> Vec<PathBuf> {
    let of = name_of(path);
    let Ok(entries) = fs::read_dir(dir_of(path)) else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = entries
        .flatten()
        // `DirEntry::file_type` does not follow links.
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .filter(|e| pattern(e.file_name().as_bytes(), of))
        .map(|e| e.path())
        .collect();
    found.sort();
    found
}

/// The quarantined copies of `path` (regular files named by
/// [`corrupt_path`]), oldest first.
pub fn corrupt_files(path: &Path) -> Vec<PathBuf> {
    own_files(path, is_corrupt_name)
}

/// What is at the recovery path at start.
pub(super) enum Loaded {
    Absent,
    Snapshot(Box<Snapshot>),
    Unreadable(Unreadable),
}

/// Reads and decodes `path`. Never blocks, never reads more than
/// `MAX_FILE_BYTES`, never reads anything but a regular file.
pub(super) fn load(path: &Path) -> Loaded {
    let file = match open_regular(path) {
        Ok(Some(file)) => file,
        Ok(None) => return Loaded::Absent,
        Err(why) => return Loaded::Unreadable(why),
    };
    if let Ok(meta) = file.metadata()
        && meta.len() > MAX_FILE_BYTES
    {
        return Loaded::Unreadable(Unreadable::Bad(
            DecodeError::TooLarge(meta.len()).to_string(),
        ));
    }
    let mut bytes = Vec::new();
    if let Err(e) = file.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes) {
        return Loaded::Unreadable(Unreadable::Bad(format!("cannot read it: {}", describe(&e))));
    }
    match decode(&bytes) {
        Ok(snapshot) => Loaded::Snapshot(Box::new(snapshot)),
        Err(e) => Loaded::Unreadable(Unreadable::Bad(e.to_string())),
    }
}

/// Makes sure `path`'s directory exists (creating missing parents, as
/// `mkdir -p`), naming it when it cannot.
pub(super) fn ensure_dir(path: &Path) -> Result<(), String> {
    let dir = dir_of(path);
    fs::create_dir_all(dir).map_err(|e| {
        format!(
            "cannot create directory {}: {}",
            dir.display(),
            describe(&e)
        )
    })
}

/// Whether the files for `path` could be created, without creating
/// anything (`--check`): its directory, or the nearest existing ancestor
/// when the directory is still to be made, must be a directory this
/// process may write to (`access(2)`: permissions and a read-only mount).
/// Errors are one sentence naming the directory.
pub(super) fn could_create_in(path: &Path) -> Result<(), String> {
    let dir = dir_of(path);
    let existing = dir
        .ancestors()
        .find(|d| d.as_os_str().is_empty() || fs::metadata(d).is_ok())
        .map_or(Path::new("."), |d| {
            if d.as_os_str().is_empty() {
                Path::new(".")
            } else {
                d
            }
        });
    let cannot = |why: &str| {
        if existing == dir {
            format!("cannot write in directory {}: {why}", dir.display())
        } else {
            format!("cannot create directory {}: {why}", dir.display())
        }
    };
    match fs::metadata(existing) {
        Ok(meta) if !meta.is_dir() => {
            return Err(cannot(&format!(
                "{} is not a directory",
                existing.display()
            )));
        }
        Ok(_) => {}
        Err(e) => return Err(cannot(&describe(&e))),
    }
    let flags = nix::unistd::AccessFlags::W_OK | nix::unistd::AccessFlags::X_OK;
    nix::unistd::access(existing, flags)
        .map_err(|errno| cannot(&describe(&std::io::Error::from(errno))))
}

/// Creates a new temp file for `path`: a fresh unique name, `O_EXCL` and
/// `O_NOFOLLOW` (a name someone planted, link or not, is skipped, never
/// opened), mode 0600.
pub(super) fn create_temp(path: &Path) -> Result<(PathBuf, File), String> {
    let mut last = None;
    for _ in 0..TEMP_TRIES {
        let tmp = temp_path(
            path,
            process::id(),
            TEMP_SEQ.fetch_add(1, Ordering::Relaxed),
        );
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(SAFE_OPEN | libc::O_NOFOLLOW)
            .open(&tmp)
        {
            Ok(file) => return Ok((tmp, file)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(tmp),
            Err(e) => return Err(format!("cannot create {}: {}", tmp.display(), describe(&e))),
        }
    }
    let tmp = last.unwrap_or_else(|| temp_path(path, process::id(), 0));
    Err(format!(
        "cannot create a temp file such as {}: {TEMP_TRIES} names in a row exist already",
        tmp.display()
    ))
}

/// Whether a write may replace what is at `path`: nothing, a regular file
/// or a link (the rename replaces the link itself, never its target). A
/// directory, FIFO, device or socket that appeared after the start is
/// never replaced.
pub(super) fn check_replaceable(path: &Path) -> Result<(), String> {
    match fs::symlink_metadata(path) {
        Ok(meta) if !meta.is_file() && !meta.file_type().is_symlink() => Err(format!(
            "recovery path {} is now {}, not a regular file; not replacing it",
            path.display(),
            kind_of(meta.file_type())
        )),
        _ => Ok(()),
    }
}

/// Replaces `path` with `bytes` so that a crash at any instant leaves the
/// old file or the new one: a new temp file, fsync, rename, fsync the
/// directory. The caller holds the [`RecoveryLock`](crate::recovery::RecoveryLock).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), String> {
    ensure_dir(path)?;
    check_replaceable(path)?;
    let (tmp, mut file) = create_temp(path)?;
    if let Err(e) = file.write_all(bytes).and_then(|()| file.sync_all()) {
        let _ = fs::remove_file(&tmp);
        return Err(format!("cannot write {}: {}", tmp.display(), describe(&e)));
    }
    drop(file);
    if let Err(e) = fs::rename(&tmp, path) {
        let _ = fs::remove_file(&tmp);
        return Err(format!(
            "cannot rename {} to {}: {}",
            tmp.display(),
            path.display(),
            describe(&e)
        ));
    }
    let dir = dir_of(path);
    OpenOptions::new()
        .read(true)
        .custom_flags(SAFE_OPEN | libc::O_DIRECTORY)
        .open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| format!("cannot sync directory {}: {}", dir.display(), describe(&e)))
}

/// Whether `path`'s directory takes a new file: creates a temp file and
/// removes it.
pub(super) fn probe_writable(path: &Path) -> Result<(), String> {
    let (tmp, file) = create_temp(path)?;
    drop(file);
    fs::remove_file(&tmp).map_err(|e| format!("cannot remove {}: {}", tmp.display(), describe(&e)))
}

/// Removes what interrupted writes left: our temp names and the legacy
/// `PATH.tmp`, regular files only. Only the lock holder calls this, so no
/// other writer's temp file is live.
pub(super) fn remove_leftover_temps(path: &Path) {
    let mut leftovers = own_files(path, is_temp_name);
    let legacy = legacy_temp_path(path);
    if fs::symlink_metadata(&legacy).is_ok_and(|m| m.is_file()) {
        leftovers.push(legacy);
    }
    for tmp in leftovers {
        match fs::remove_file(&tmp) {
            Ok(()) => info!("removed {} left by an interrupted write", tmp.display()),
            Err(e) => debug!("cannot remove {}: {}", tmp.display(), describe(&e)),
        }
    }
}

/// Moves a file that cannot be used aside under a new name (never over an
/// older one), with one warning, then keeps only the newest `MAX_CORRUPT`.
pub(super) fn quarantine(path: &Path, why: &str) {
    let now = wall_ms();
    let aside = (0..100)
        .map(|n| corrupt_path(path, now, n))
        .find(|p| fs::symlink_metadata(p).is_err());
    let Some(aside) = aside else {
        warn!(
            "cannot use recovery file {}: {why}; no free name to move it to; starting fresh",
            path.display()
        );
        return;
    };
    match fs::rename(path, &aside) {
        Ok(()) => warn!(
            "cannot use recovery file {}: {why}; moved it to {} and starting fresh",
            path.display(),
            aside.display()
        ),
        Err(e) => {
            warn!(
                "cannot use recovery file {}: {why}; cannot move it to {} ({}); starting fresh",
                path.display(),
                aside.display(),
                describe(&e)
            );
            return;
        }
    }
    let kept = corrupt_files(path);
    let excess = kept.len().saturating_sub(MAX_CORRUPT);
    for old in kept.iter().take(excess) {
        match fs::remove_file(old) {
            Ok(()) => info!(
                "removed {} (keeping the newest {MAX_CORRUPT})",
                old.display()
            ),
            Err(e) => debug!("cannot remove {}: {}", old.display(), describe(&e)),
        }
    }
}

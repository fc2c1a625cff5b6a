//! The recovery file: the totals and the 10 s window survive a restart.
//!
//! Pure part: [`Snapshot`], [`encode`]/[`decode`], [`capture`], [`plan`] and
//! [`restore`]. They take both clocks as arguments: the wall clock (ms since
//! the Unix epoch) maps ages across processes, the monotonic one (the
//! server's `now_ms`) places them in the [`RateWindow`](crate::rates::RateWindow).
//!
//! I/O part: [`Recovery::claim`] checks the path before any socket is
//! bound (a regular file or nothing; never a FIFO, device or directory) and
//! takes the [`RecoveryLock`], so one process owns the file.
//! [`Recovery::open`] loads it (a bad one is moved to
//! `PATH.corrupt.TIMESTAMP`) and starts a writer thread that replaces it
//! atomically (a new temp file, fsync, rename, fsync of the directory), so a
//! slow disk never stalls the relay. The loop hands the thread owned
//! [`Snapshot`]s over a channel. No open here ever blocks or follows a
//! planted link to write.

use std::ffi::OsString;
use std::fmt;
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::dates;
use crate::net::describe;
use crate::rates::{BUCKET_MS, BUCKETS, Bucket};
use crate::stats::Stats;
use log::{debug, info, warn};

/// The `format` field: tells our file from any other JSON, such as the
/// reference proxy's own `recovery.json`.
pub const FORMAT: &str = "foo-proxy-recovery";
/// The `version` field this build writes and reads.
pub const VERSION: u64 = 1;
/// A full window is about 50 KiB; anything past this is not ours.
pub const MAX_FILE_BYTES: u64 = 1 << 20;
/// The span of the moving window: older counts are not restored.
pub const WINDOW_MS: u64 = BUCKET_MS * BUCKETS as u64;
/// Snapshots are written at most this often.
pub const SNAPSHOT_INTERVAL: Duration = Duration::from_secs(1);
/// A failed write is retried after this, doubling up to `RETRY_MAX`.
const RETRY_MIN: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(30);
/// How long the exit waits for the final snapshot to reach the disk.
const FINISH_WAIT: Duration = Duration::from_secs(5);
/// Most quarantined files kept beside the recovery file; older ones go.
pub const MAX_CORRUPT: usize = 5;
/// Temp names tried per write when planted ones are in the way; the next
/// retry goes on with fresh names.
const TEMP_TRIES: u64 = 16;
/// Makes temp names unique within the process.
static TEMP_SEQ: AtomicU64 = AtomicU64::new(0);

pub use crate::stats::Totals;

/// One non-empty bucket of the window, stamped with the wall-clock time it
/// started, so its age is known in the next process too.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct WindowBucket {
    pub start_ms: u64,
    pub req: u32,
    pub resp: u32,
}

/// What the file holds besides its format and version.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Wall-clock time it was taken, ms since the Unix epoch.
    pub written_at_ms: u64,
    pub totals: Totals,
    /// Non-empty buckets, oldest first.
    pub window: Vec<WindowBucket>,
}

#[derive(Serialize)]
struct WireOut<'a> {
    format: &'a str,
    version: u64,
    written_at_ms: u64,
    totals: &'a Totals,
    window: &'a [WindowBucket],
}

#[derive(Deserialize)]
struct WireIn {
    #[serde(rename = "format")]
    _format: String,
    #[serde(rename = "version")]
    _version: u64,
    written_at_ms: u64,
    totals: Totals,
    window: Vec<WindowBucket>,
}

/// The file's bytes: one line of JSON.
pub fn encode(snapshot: &Snapshot) -> Vec<u8> {
    let wire = WireOut {
        format: FORMAT,
        version: VERSION,
        written_at_ms: snapshot.written_at_ms,
        totals: &snapshot.totals,
        window: &snapshot.window,
    };
    // Integers, strings and arrays into a Vec cannot fail to serialize; an
    // empty result would only ever be rejected by `decode`, never misread.
    let mut bytes = serde_json::to_vec(&wire).unwrap_or_default();
    bytes.push(b'\n');
    bytes
}

/// Why a file is not a snapshot this build can use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    Empty,
    TooLarge(u64),
    Truncated,
    NotJson(String),
    /// JSON without our `format` field: someone else's file.
    NotOurs,
    Version(String),
    Invalid(String),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Empty => f.write_str("the file is empty"),
            DecodeError::TooLarge(len) => write!(
                f,
                "the file is {len} bytes, more than a snapshot can be ({MAX_FILE_BYTES})"
            ),
            DecodeError::Truncated => f.write_str("the file is truncated"),
            DecodeError::NotJson(why) => write!(f, "the file is not valid JSON: {why}"),
            DecodeError::NotOurs => write!(
                f,
                "the file is not a foo-proxy snapshot (no \"format\": \"{FORMAT}\"; \
                 perhaps the reference proxy's format)"
            ),
            DecodeError::Version(v) => write!(
                f,
                "unsupported format version {v} (this build reads version {VERSION})"
            ),
            DecodeError::Invalid(why) => write!(f, "the snapshot is invalid: {why}"),
        }
    }
}

/// Parses a file's bytes. Pure and total: any input gives a snapshot or a
/// reason, never a panic. Fields this build does not know are ignored; a
/// `version` other than [`VERSION`] is an error. Any `u64` total is taken
/// as written: counters saturate, so a restored total near `u64::MAX` stops
/// there instead of wrapping. The window is returned as written:
/// [`check_window`] says whether it can be believed.
pub fn decode(bytes: &[u8]) -> Result<Snapshot, DecodeError> {
    let len = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
    if len > MAX_FILE_BYTES {
        return Err(DecodeError::TooLarge(len));
    }
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(DecodeError::Empty);
    }
    let value: Value = serde_json::from_slice(bytes).map_err(|e| {
        if e.is_eof() {
            DecodeError::Truncated
        } else {
            DecodeError::NotJson(e.to_string())
        }
    })?;
    let Value::Object(fields) = &value else {
        return Err(DecodeError::NotOurs);
    };
    if fields.get("format").and_then(Value::as_str) != Some(FORMAT) {
        return Err(DecodeError::NotOurs);
    }
    match fields.get("version") {
        Some(v) if v.as_u64() == Some(VERSION) => {}
        Some(v) => return Err(DecodeError::Version(v.to_string())),
        None => return Err(DecodeError::Version("(missing)".into())),
    }
    let wire: WireIn =
        serde_json::from_value(value).map_err(|e| DecodeError::Invalid(e.to_string()))?;
    Ok(Snapshot {
        written_at_ms: wire.written_at_ms,
        totals: wire.totals,
        window: wire.window,
    })
}

/// Why a snapshot's window cannot be true of its own totals. A window that
/// [`capture`] wrote always passes; anything else was crafted or damaged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Implausible {
    /// More buckets than the window has.
    TooManyBuckets(usize),
    /// A bucket started outside `[written_at_ms - WINDOW_MS, written_at_ms]`.
    OutsideWindow { start_ms: u64 },
    /// Two buckets with the same start.
    Duplicate { start_ms: u64 },
    /// The buckets hold more requests than `totals.msg_req`.
    Requests { window: u64, total: u64 },
    /// The buckets hold more responses than `totals.msg_ack + msg_nak`.
    Responses { window: u64, total: u64 },
}

impl fmt::Display for Implausible {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Implausible::TooManyBuckets(n) => {
                write!(f, "it has {n} buckets, more than the {BUCKETS} of a window")
            }
            Implausible::OutsideWindow { start_ms } => write!(
                f,
                "a bucket starts at {start_ms}, outside the 10 s before the snapshot"
            ),
            Implausible::Duplicate { start_ms } => {
                write!(f, "two buckets start at {start_ms}")
            }
            Implausible::Requests { window, total } => write!(
                f,
                "its buckets hold {window} requests but the totals only {total}"
            ),
            Implausible::Responses { window, total } => write!(
                f,
                "its buckets hold {window} responses but the totals only {total}"
            ),
        }
    }
}

/// Whether `snapshot`'s window can be part of its totals: at most
/// [`BUCKETS`] buckets, each started in the `WINDOW_MS` before the snapshot,
/// no two with the same start, and their requests and responses summed no
/// more than `msg_req` and `msg_ack + msg_nak` (so no bucket is either).
/// Pure; the first rule broken is the answer.
pub fn check_window(snapshot: &Snapshot) -> Result<(), Implausible> {
    let window = &snapshot.window;
    if window.len() > BUCKETS {
        return Err(Implausible::TooManyBuckets(window.len()));
    }
    let written = snapshot.written_at_ms;
    let oldest = written.saturating_sub(WINDOW_MS);
    if let Some(b) = window
        .iter()
        .find(|b| b.start_ms < oldest || b.start_ms > written)
    {
        return Err(Implausible::OutsideWindow {
            start_ms: b.start_ms,
        });
    }
    let mut starts: Vec<u64> = window.iter().map(|b| b.start_ms).collect();
    starts.sort_unstable();
    if let Some(pair) = starts.windows(2).find(|p| p.first() == p.get(1)) {
        return Err(Implausible::Duplicate {
            start_ms: pair.first().copied().unwrap_or_default(),
        });
    }
    // At most BUCKETS u32s: the sums cannot overflow a u64.
    let req: u64 = window.iter().map(|b| u64::from(b.req)).sum();
    let resp: u64 = window.iter().map(|b| u64::from(b.resp)).sum();
    let totals = &snapshot.totals;
    if req > totals.msg_req {
        return Err(Implausible::Requests {
            window: req,
            total: totals.msg_req,
        });
    }
    let answered = totals.msg_ack.saturating_add(totals.msg_nak);
    if resp > answered {
        return Err(Implausible::Responses {
            window: resp,
            total: answered,
        });
    }
    Ok(())
}

/// Takes a snapshot of `stats` at wall-clock `now_wall_ms`, monotonic `now_ms`.
pub fn capture(stats: &mut Stats, now_wall_ms: u64, now_ms: u64) -> Snapshot {
    stats.commit_window(now_ms);
    let window = stats
        .window
        .live_buckets(now_ms)
        .into_iter()
        .map(|(age_ms, b)| WindowBucket {
            start_ms: now_wall_ms.saturating_sub(age_ms),
            req: b.req,
            resp: b.resp,
        })
        .collect();
    Snapshot {
        written_at_ms: now_wall_ms,
        totals: Totals::of(stats),
        window,
    }
}

/// What happens to a snapshot's window on restore.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowFate {
    /// The buckets still inside the window come back.
    Restored,
    /// Written `WINDOW_MS` or more ago: nothing of it is left.
    TooOld,
    /// Written after "now": the clock stepped back, so ages are unknown.
    FromTheFuture,
}

/// The restore arithmetic's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub totals: Totals,
    /// `(ms since the bucket started, counts)`, each younger than `WINDOW_MS`.
    pub buckets: Vec<(u64, Bucket)>,
    pub window: WindowFate,
    /// How long ago the snapshot was written (0 if in the future).
    pub age_ms: u64,
}

/// Decides what of `snapshot` to restore at wall-clock `now_wall_ms`: the
/// totals always; the buckets younger than `WINDOW_MS` by wall-clock age,
/// unless the snapshot is too old or from the future.
pub fn plan(snapshot: &Snapshot, now_wall_ms: u64) -> Plan {
    let written = snapshot.written_at_ms;
    let (window, age_ms) = match now_wall_ms.checked_sub(written) {
        None => (WindowFate::FromTheFuture, 0),
        Some(age) if age >= WINDOW_MS => (WindowFate::TooOld, age),
        Some(age) => (WindowFate::Restored, age),
    };
    let buckets = if window == WindowFate::Restored {
        snapshot
            .window
            .iter()
            .filter(|b| b.start_ms <= written)
            .filter_map(|b| {
                let age = now_wall_ms.checked_sub(b.start_ms)?;
                (age < WINDOW_MS).then_some((
                    age,
                    Bucket {
                        req: b.req,
                        resp: b.resp,
                    },
                ))
            })
            .collect()
    } else {
        Vec::new()
    };
    Plan {
        totals: snapshot.totals,
        buckets,
        window,
        age_ms,
    }
}

/// Adds what `plan` keeps of `snapshot` to `stats`; returns the plan.
pub fn restore(snapshot: &Snapshot, stats: &mut Stats, now_wall_ms: u64, now_ms: u64) -> Plan {
    let plan = plan(snapshot, now_wall_ms);
    plan.totals.add_to(stats);
    for (age_ms, bucket) in &plan.buckets {
        stats.window.restore_bucket(now_ms, *age_ms, *bucket);
    }
    plan
}

pub use crate::dates::wall_ms;

// ---- Names beside the recovery file ------------------------------------

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// The directory `path` lives in (`.` for a bare file name).
fn dir_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// The last component of `path`, as bytes (empty when it has none).
fn name_of(path: &Path) -> &[u8] {
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

fn all_digits(s: &[u8]) -> bool {
    !s.is_empty() && s.iter().all(u8::is_ascii_digit)
}

/// Whether `name` is one of our temp names for the file named `of`.
fn is_temp_name(name: &[u8], of: &[u8]) -> bool {
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
fn is_corrupt_name(name: &[u8], of: &[u8]) -> bool {
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
fn own_files(path: &Path, pattern: fn(&[u8], &[u8]) -> bool) -> Vec<PathBuf> {
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

// ---- Opening what the user named, safely ---------------------------------

/// Flags for every open of a path someone else may control: a FIFO or a
/// device never blocks the open, and a terminal never becomes ours. (std
/// adds `O_CLOEXEC` itself.)
const SAFE_OPEN: i32 = libc::O_NONBLOCK | libc::O_NOCTTY;

/// A file system object's kind, as a message names it.
fn kind_of(t: fs::FileType) -> &'static str {
    if t.is_file() {
        "a regular file"
    } else if t.is_dir() {
        "a directory"
    } else if t.is_symlink() {
        "a symbolic link"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else {
        "of an unknown type"
    }
}

/// Why the proxy must not start on a recovery path; [`exit_code`] is what
/// `main` returns (2: an unusable path, 1: the path is owned or cannot be
/// locked).
///
/// [`exit_code`]: StartError::exit_code
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartError {
    message: String,
    exit_code: u8,
}

impl StartError {
    fn unusable(message: String) -> StartError {
        StartError {
            message,
            exit_code: 2,
        }
    }

    pub fn exit_code(&self) -> u8 {
        self.exit_code
    }
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// Refuses a recovery path that is not, or does not lead to, a regular
/// file: a directory, FIFO, device or socket is never opened, renamed or
/// written. A symbolic link to a regular file (or to nothing yet) is
/// accepted: it is read through, and the first write replaces the link.
/// Looks only (`lstat`, `stat`): never opens, so never blocks.
pub fn check_path(path: &Path) -> Result<(), StartError> {
    // `x/` names a directory (`Path` would drop the slash, and the lock
    // file would become `x/.lock`, inside it).
    if path.file_name().is_none() || path.as_os_str().as_bytes().ends_with(b"/") {
        return Err(StartError::unusable(format!(
            "recovery path {} does not name a file",
            path.display()
        )));
    }
    // Missing, or a parent that is not a directory: the directory check
    // reports it.
    let Ok(meta) = fs::symlink_metadata(path) else {
        return Ok(());
    };
    let kind = meta.file_type();
    if kind.is_file() {
        return Ok(());
    }
    if !kind.is_symlink() {
        return Err(StartError::unusable(format!(
            "recovery path {} is {}, not a regular file",
            path.display(),
            kind_of(kind)
        )));
    }
    match fs::metadata(path) {
        Ok(target) if !target.is_file() => Err(StartError::unusable(format!(
            "recovery path {} is a symbolic link to {}, not to a regular file",
            path.display(),
            kind_of(target.file_type())
        ))),
        // A regular file, or a dangling link: nothing to read yet.
        _ => Ok(()),
    }
}

/// Opens `path` for reading without ever blocking, and only if it is a
/// regular file (checked on the opened descriptor, so a FIFO swapped in
/// after [`check_path`] is caught too). `Ok(None)`: there is no file.
fn open_regular(path: &Path) -> Result<Option<File>, Unreadable> {
    let file = match OpenOptions::new()
        .read(true)
        .custom_flags(SAFE_OPEN)
        .open(path)
    {
        Ok(file) => file,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
            ) =>
        {
            return Ok(None);
        }
        Err(e) => return Err(Unreadable::Bad(format!("cannot open it: {}", describe(&e)))),
    };
    match file.metadata() {
        Ok(meta) if meta.is_file() => Ok(Some(file)),
        Ok(meta) => Err(Unreadable::NotRegular(kind_of(meta.file_type()))),
        Err(e) => Err(Unreadable::Bad(format!("cannot stat it: {}", describe(&e)))),
    }
}

/// Why a recovery file was not read.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Unreadable {
    /// Not a regular file (any more): left exactly where it is.
    NotRegular(&'static str),
    /// A regular file that cannot be used: moved aside.
    Bad(String),
}

// ---- One owner -----------------------------------------------------------

/// Why [`RecoveryLock::take`] failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockError {
    /// The lock file is not a regular file (a planted link, a FIFO, ...):
    /// the path is unusable.
    Unusable(String),
    /// Another process holds the lock; its pid, when it wrote one.
    InUse(Option<u32>),
    /// The lock file cannot be created or opened: the directory is missing
    /// or unwritable.
    Unwritable(String),
    /// `flock` itself failed.
    Failed(String),
}

impl LockError {
    /// The message, naming the recovery file `path`.
    pub fn describe(&self, path: &Path) -> String {
        match self {
            LockError::InUse(Some(pid)) => format!(
                "recovery file {} is in use by another foo-proxy (pid {pid})",
                path.display()
            ),
            LockError::InUse(None) => format!(
                "recovery file {} is in use by another foo-proxy",
                path.display()
            ),
            LockError::Unusable(m) | LockError::Unwritable(m) | LockError::Failed(m) => m.clone(),
        }
    }
}

/// Ownership of a recovery path: an exclusive `flock` on `PATH.lock`, held
/// while this value lives and released by the kernel when the process dies,
/// so a stale lock file never blocks a start. The file holds the owner's
/// pid, for the message a second process prints. A small owned value, so it
/// can be handed to another process with its descriptor.
#[derive(Debug)]
pub struct RecoveryLock {
    file: File,
    path: PathBuf,
}

impl RecoveryLock {
    /// Takes the lock for recovery file `path` without blocking. The lock
    /// file is created with mode 0600 and is never a link followed or a
    /// special file opened.
    pub fn take(path: &Path) -> Result<RecoveryLock, LockError> {
        let lock_path = lock_path(path);
        let not_regular = |kind: &str| {
            LockError::Unusable(format!(
                "lock file {} is {kind}, not a regular file",
                lock_path.display()
            ))
        };
        if let Ok(meta) = fs::symlink_metadata(&lock_path)
            && !meta.is_file()
        {
            return Err(not_regular(kind_of(meta.file_type())));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .mode(0o600)
            .custom_flags(SAFE_OPEN | libc::O_NOFOLLOW)
            .open(&lock_path)
            .map_err(|e| {
                if e.raw_os_error() == Some(libc::ELOOP) {
                    not_regular("a symbolic link")
                } else {
                    LockError::Unwritable(format!(
                        "cannot open lock file {}: {}",
                        lock_path.display(),
                        describe(&e)
                    ))
                }
            })?;
        // Checked on the opened file, before anything is written to it: the
        // pid write below truncates, and must never reach a file that is
        // also another name (a planted hard link) or someone else's.
        match file.metadata() {
            Ok(meta) if meta.is_file() => {
                let euid = nix::unistd::geteuid().as_raw();
                if let Some(why) = not_ours(meta.nlink(), meta.uid(), euid) {
                    return Err(LockError::Unusable(format!(
                        "lock file {} {why}; refusing to use it",
                        lock_path.display()
                    )));
                }
            }
            Ok(meta) => return Err(not_regular(kind_of(meta.file_type()))),
            Err(e) => {
                return Err(LockError::Failed(format!(
                    "cannot stat lock file {}: {}",
                    lock_path.display(),
                    describe(&e)
                )));
            }
        }
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => return Err(LockError::InUse(read_pid(&file))),
            Err(TryLockError::Error(e)) => {
                return Err(LockError::Failed(format!(
                    "cannot lock {}: {}",
                    lock_path.display(),
                    describe(&e)
                )));
            }
        }
        // Only a name for messages: the lock is what counts, so a failed
        // write costs nothing but the pid in a second process's message.
        let pid = format!("{}\n", process::id());
        if let Err(e) = file
            .set_len(0)
            .and_then(|()| file.write_all_at(pid.as_bytes(), 0))
        {
            debug!(
                "cannot write the pid into {}: {}",
                lock_path.display(),
                describe(&e)
            );
        }
        Ok(RecoveryLock {
            file,
            path: lock_path,
        })
    }

    /// The lock file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the lock file's name still leads to the file this lock holds:
    /// if someone removed or replaced it, a second process could lock the
    /// new one, so the writer takes the lock again before it writes.
    fn still_named(&self) -> bool {
        match (self.file.metadata(), fs::symlink_metadata(&self.path)) {
            (Ok(held), Ok(named)) => held.dev() == named.dev() && held.ino() == named.ino(),
            _ => false,
        }
    }
}

/// Why a regular file we are about to write in place is not ours alone:
/// another name links to it (`nlink > 1`: writing would change a file
/// elsewhere, such as a victim someone hard-linked here), or another user
/// owns it. `None` when it is ours.
fn not_ours(nlink: u64, owner: u32, euid: u32) -> Option<String> {
    if nlink > 1 {
        Some(format!("has {nlink} hard links (another name shares it)"))
    } else if owner != euid {
        Some(format!(
            "is owned by uid {owner}, not by this process's uid {euid}"
        ))
    } else {
        None
    }
}

/// The pid a lock holder wrote, if it wrote one yet.
fn read_pid(file: &File) -> Option<u32> {
    let mut buf = [0u8; 24];
    let n = file.read_at(&mut buf, 0).ok()?;
    parse_pid(buf.get(..n)?)
}

/// `1234\n` as 1234. Without the newline the write was cut short (a full
/// disk): a prefix of the pid would name another process, so none.
fn parse_pid(bytes: &[u8]) -> Option<u32> {
    let digits = bytes.strip_suffix(b"\n")?;
    std::str::from_utf8(digits).ok()?.parse().ok()
}

// ---- Reading, writing, moving aside --------------------------------------

/// What is at the recovery path at start.
enum Loaded {
    Absent,
    Snapshot(Snapshot),
    Unreadable(Unreadable),
}

/// Reads and decodes `path`. Never blocks, never reads more than
/// `MAX_FILE_BYTES`, never reads anything but a regular file.
fn load(path: &Path) -> Loaded {
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
        Ok(snapshot) => Loaded::Snapshot(snapshot),
        Err(e) => Loaded::Unreadable(Unreadable::Bad(e.to_string())),
    }
}

/// Makes sure `path`'s directory exists (creating missing parents, as
/// `mkdir -p`), naming it when it cannot.
fn ensure_dir(path: &Path) -> Result<(), String> {
    let dir = dir_of(path);
    fs::create_dir_all(dir).map_err(|e| {
        format!(
            "cannot create directory {}: {}",
            dir.display(),
            describe(&e)
        )
    })
}

/// Creates a new temp file for `path`: a fresh unique name, `O_EXCL` and
/// `O_NOFOLLOW` (a name someone planted, link or not, is skipped, never
/// opened), mode 0600.
fn create_temp(path: &Path) -> Result<(PathBuf, File), String> {
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
fn check_replaceable(path: &Path) -> Result<(), String> {
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
/// directory. The caller holds the [`RecoveryLock`].
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
fn probe_writable(path: &Path) -> Result<(), String> {
    let (tmp, file) = create_temp(path)?;
    drop(file);
    fs::remove_file(&tmp).map_err(|e| format!("cannot remove {}: {}", tmp.display(), describe(&e)))
}

/// Removes what interrupted writes left: our temp names and the legacy
/// `PATH.tmp`, regular files only. Only the lock holder calls this, so no
/// other writer's temp file is live.
fn remove_leftover_temps(path: &Path) {
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
fn quarantine(path: &Path, why: &str) {
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

/// Makes sure the writer holds the lock before it writes: takes it when it
/// was not available at start, and again if the lock file was removed or
/// replaced meanwhile.
fn hold_lock(path: &Path, lock: &mut Option<RecoveryLock>) -> Result<(), String> {
    if lock.as_ref().is_some_and(|l| !l.still_named()) {
        *lock = None;
    }
    if lock.is_none() {
        ensure_dir(path)?;
        let taken = RecoveryLock::take(path).map_err(|e| e.describe(path))?;
        remove_leftover_temps(path);
        *lock = Some(taken);
    }
    Ok(())
}

/// The writer thread: writes the newest snapshot it has, holding the lock;
/// a failure is logged once (not at all if the start already warned), then
/// retried quietly with backoff until a write succeeds. Once the sender is
/// gone it makes one last attempt and exits: true when the newest snapshot
/// is on disk.
fn run_writer(
    path: PathBuf,
    mut lock: Option<RecoveryLock>,
    mut failing: bool,
    rx: Receiver<Snapshot>,
) -> bool {
    let mut pending: Option<Snapshot> = None;
    let mut retry = RETRY_MIN;
    loop {
        let received = if pending.is_some() {
            rx.recv_timeout(retry)
        } else {
            rx.recv().map_err(|_| RecvTimeoutError::Disconnected)
        };
        let last_round = match received {
            Ok(snapshot) => {
                pending = Some(snapshot);
                false
            }
            Err(RecvTimeoutError::Timeout) => false,
            Err(RecvTimeoutError::Disconnected) => true,
        };
        // Only the newest snapshot matters.
        if let Some(newest) = rx.try_iter().last() {
            pending = Some(newest);
        }
        if let Some(snapshot) = &pending {
            match hold_lock(&path, &mut lock).and_then(|()| write_atomic(&path, &encode(snapshot)))
            {
                Ok(()) => {
                    if failing {
                        info!("recovery file {} written again", path.display());
                    }
                    failing = false;
                    retry = RETRY_MIN;
                    pending = None;
                }
                Err(why) => {
                    if !failing {
                        warn!("cannot save the recovery file: {why}; will retry quietly");
                    } else {
                        debug!("recovery file still not written: {why}");
                    }
                    failing = true;
                    retry = (retry * 2).min(RETRY_MAX);
                }
            }
        }
        if last_round {
            return pending.is_none();
        }
    }
}

/// The recovery file as the event loop sees it: claimed before any socket
/// is bound, restored when the loop starts, then a snapshot at most once
/// per `SNAPSHOT_INTERVAL` while counters change, and a final one at exit.
pub struct Recovery {
    path: PathBuf,
    /// Held here from the claim until `open` hands it to the writer.
    lock: Option<RecoveryLock>,
    /// The start already warned that the file cannot be written.
    warned: bool,
    writer: Option<(Sender<Snapshot>, JoinHandle<bool>)>,
    /// Totals in the last snapshot handed to the writer (or restored).
    last: Totals,
    dirty: bool,
    next_write: Instant,
}

impl Recovery {
    /// The start-up check, before any socket is bound: refuses a path that
    /// is not a regular file (exit 2) or that another process owns (exit
    /// 1); creates the directory; takes the lock, removes what interrupted
    /// writes left, and tries a write in the directory. A directory that
    /// cannot be created or written gets one warning here, and the writer
    /// retries quietly later. Never blocks.
    pub fn claim(path: PathBuf) -> Result<Recovery, StartError> {
        check_path(&path)?;
        let mut unwritable = None;
        let mut lock = None;
        match ensure_dir(&path) {
            Err(why) => unwritable = Some(why),
            Ok(()) => match RecoveryLock::take(&path) {
                Ok(taken) => lock = Some(taken),
                Err(LockError::Unwritable(why)) => unwritable = Some(why),
                Err(e @ LockError::Unusable(_)) => {
                    return Err(StartError::unusable(e.describe(&path)));
                }
                Err(e @ (LockError::InUse(_) | LockError::Failed(_))) => {
                    return Err(StartError {
                        message: e.describe(&path),
                        exit_code: 1,
                    });
                }
            },
        }
        if lock.is_some() {
            remove_leftover_temps(&path);
            if let Err(why) = probe_writable(&path) {
                unwritable = Some(why);
            }
        }
        if let Some(why) = &unwritable {
            warn!(
                "recovery file {} cannot be written: {why}; relaying anyway and retrying quietly",
                path.display()
            );
        }
        Ok(Recovery {
            path,
            lock,
            warned: unwritable.is_some(),
            writer: None,
            last: Totals::default(),
            dirty: false,
            next_write: Instant::now(),
        })
    }

    /// Restores what the file holds into `stats` (moving a bad file aside,
    /// dropping an implausible window), and starts the writer thread.
    pub fn open(&mut self, stats: &mut Stats, now: Instant, now_ms: u64) {
        let path = &self.path;
        match load(path) {
            Loaded::Absent => {}
            Loaded::Snapshot(mut snapshot) => {
                if let Err(why) = check_window(&snapshot) {
                    warn!(
                        "recovery file {}: dropped its rate window ({why}); restoring the totals",
                        path.display()
                    );
                    snapshot.window.clear();
                }
                Self::report_restore(path, &snapshot, stats, now_ms);
            }
            Loaded::Unreadable(Unreadable::NotRegular(kind)) => warn!(
                "recovery path {} is now {kind}, not a regular file; starting fresh",
                path.display()
            ),
            // Only the owner moves a file aside: without the lock another
            // process may be using it.
            Loaded::Unreadable(Unreadable::Bad(why)) if self.lock.is_none() => warn!(
                "cannot use recovery file {}: {why}; leaving it in place and starting fresh",
                path.display()
            ),
            Loaded::Unreadable(Unreadable::Bad(why)) => quarantine(path, &why),
        }
        let (tx, rx) = mpsc::channel();
        let thread_path = path.clone();
        let lock = self.lock.take();
        let warned = self.warned;
        let writer = thread::Builder::new()
            .name("recovery-writer".into())
            .spawn(move || run_writer(thread_path, lock, warned, rx));
        self.writer = match writer {
            Ok(handle) => Some((tx, handle)),
            Err(e) => {
                warn!(
                    "cannot start the recovery writer: {}; {} will not be updated",
                    describe(&e),
                    path.display()
                );
                None
            }
        };
        self.last = Totals::of(stats);
        self.dirty = false;
        self.next_write = now;
    }

    fn report_restore(path: &Path, snapshot: &Snapshot, stats: &mut Stats, now_ms: u64) {
        let plan = restore(snapshot, stats, wall_ms(), now_ms);
        let age = plan.age_ms as f64 / 1000.0;
        match plan.window {
            WindowFate::Restored => info!(
                "restored totals and {} rate buckets from {} (saved {age:.1} s ago)",
                plan.buckets.len(),
                path.display()
            ),
            WindowFate::TooOld => info!(
                "restored totals from {} (saved {age:.1} s ago, too old for the rate window)",
                path.display()
            ),
            WindowFate::FromTheFuture => info!(
                "restored totals from {}; it is dated in the future (clock stepped back?), \
                 so the rate window starts empty",
                path.display()
            ),
        }
    }

    /// When the loop must wake up to write a snapshot: only while there is
    /// something not yet written.
    pub fn deadline(&self) -> Option<Instant> {
        self.dirty.then_some(self.next_write)
    }

    /// Called once per loop iteration: hands a snapshot to the writer when
    /// the counters changed and the last one is at least an interval old.
    pub fn tick(&mut self, stats: &mut Stats, now: Instant, now_ms: u64) {
        let totals = Totals::of(stats);
        self.dirty = totals != self.last;
        if self.dirty && now >= self.next_write {
            self.send(stats, now_ms);
            self.last = totals;
            self.dirty = false;
            self.next_write = now + SNAPSHOT_INTERVAL;
        }
    }

    fn send(&mut self, stats: &mut Stats, now_ms: u64) {
        let snapshot = capture(stats, wall_ms(), now_ms);
        if let Some((tx, _)) = &self.writer {
            // A writer that is gone has nothing left to save to.
            let _ = tx.send(snapshot);
        }
    }

    /// Writes the final snapshot and waits for it to be on disk: at most
    /// [`FINISH_WAIT`], and not at all once `cut_short` says so (a further
    /// stop signal). True when it is on disk; false, with one warning, when
    /// it could not be written or the wait ended first.
    pub fn finish(
        mut self,
        stats: &mut Stats,
        now_ms: u64,
        mut cut_short: impl FnMut() -> bool,
    ) -> bool {
        self.send(stats, now_ms);
        let path = self.path.display();
        let Some((tx, handle)) = self.writer.take() else {
            warn!("the final snapshot to {path} was not written: no recovery writer");
            return false;
        };
        drop(tx);
        let deadline = Instant::now() + FINISH_WAIT;
        while !handle.is_finished() {
            if Instant::now() >= deadline {
                warn!(
                    "the final snapshot to {path} is taking more than {} s; exiting without it",
                    FINISH_WAIT.as_secs()
                );
                return false;
            }
            if cut_short() {
                warn!("stopping now, without waiting for the final snapshot to {path}");
                return false;
            }
            thread::sleep(Duration::from_millis(5));
        }
        let saved = handle.join().unwrap_or(false);
        if !saved {
            warn!(
                "the final snapshot could not be written to {path}; the counts since the last one are lost"
            );
        }
        saved
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scanner::FrameCounts;

    /// A wall-clock instant well after the epoch.
    const T0: u64 = 1_795_817_411_000;

    fn bucket(start_ms: u64, req: u32, resp: u32) -> WindowBucket {
        WindowBucket {
            start_ms,
            req,
            resp,
        }
    }

    fn sample() -> Snapshot {
        Snapshot {
            written_at_ms: T0,
            totals: Totals {
                msg_req: 1000,
                msg_ack: 900,
                msg_nak: 99,
                invalid_client_to_server: 3,
                invalid_server_to_client: 4,
                connections_total: 12,
                upstream_errors: 2,
                bytes_client_to_server: u64::MAX - 1,
                bytes_server_to_client: 123_456_789_012,
            },
            // Started 0 ms, 10 ms, 2 s, 6.49 s, 6.5 s and 9.99 s before the write.
            window: vec![
                bucket(T0 - 9_990, 1, 0),
                bucket(T0 - 6_500, 2, 0),
                bucket(T0 - 6_490, 4, 0),
                bucket(T0 - 2_000, 8, 0),
                bucket(T0 - 10, 16, 0),
                bucket(T0, 32, 0),
            ],
        }
    }

    #[test]
    fn encode_decode_round_trip() {
        let s = sample();
        let bytes = encode(&s);
        assert_eq!(decode(&bytes), Ok(s));
        assert_eq!(bytes.last(), Some(&b'\n'));
        assert_eq!(bytes.iter().filter(|b| **b == b'\n').count(), 1);
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["format"], FORMAT);
        assert_eq!(v["version"], VERSION);
        let empty = Snapshot::default();
        assert_eq!(decode(&encode(&empty)), Ok(empty));
    }

    #[test]
    fn a_total_missing_from_the_file_reads_as_zero() {
        let old = br#"{"format":"foo-proxy-recovery","version":1,"written_at_ms":5,
            "totals":{"msg_req":3,"bytes_client_to_server":9},"window":[]}"#;
        let snapshot = decode(old).unwrap();
        assert_eq!(
            snapshot.totals,
            Totals {
                msg_req: 3,
                bytes_client_to_server: 9,
                ..Totals::default()
            }
        );
    }

    #[test]
    fn decode_names_what_is_wrong() {
        let good = encode(&sample());
        assert_eq!(decode(b""), Err(DecodeError::Empty));
        assert_eq!(decode(b" \n"), Err(DecodeError::Empty));
        let half = good.get(..good.len() / 2).unwrap();
        assert_eq!(decode(half), Err(DecodeError::Truncated));
        assert!(matches!(
            decode(b"\x00\xffgarbage"),
            Err(DecodeError::NotJson(_))
        ));
        let mut trailing = good.clone();
        trailing.extend_from_slice(b"xx");
        assert!(matches!(decode(&trailing), Err(DecodeError::NotJson(_))));
        let huge = vec![b' '; MAX_FILE_BYTES as usize + 1];
        assert!(matches!(decode(&huge), Err(DecodeError::TooLarge(_))));
        // Other JSON, such as a window the reference proxy might keep.
        for other in [
            &b"[0,1,2,3]"[..],
            b"{\"RequestRate\":[1,2],\"ResponseRate\":[3,4]}",
            b"{\"version\":1,\"window\":[]}",
            b"{\"format\":\"something-else\",\"version\":1}",
            b"42",
            b"null",
        ] {
            assert_eq!(decode(other), Err(DecodeError::NotOurs), "{other:?}");
        }
        let v2 = br#"{"format":"foo-proxy-recovery","version":2}"#;
        assert_eq!(decode(v2), Err(DecodeError::Version("2".into())));
        let nover = br#"{"format":"foo-proxy-recovery"}"#;
        assert!(matches!(decode(nover), Err(DecodeError::Version(_))));
        let missing = br#"{"format":"foo-proxy-recovery","version":1,"written_at_ms":1}"#;
        assert!(matches!(decode(missing), Err(DecodeError::Invalid(_))));
        let negative = String::from_utf8(good.clone())
            .unwrap()
            .replace("\"msg_req\":1000", "\"msg_req\":-1");
        assert!(matches!(
            decode(negative.as_bytes()),
            Err(DecodeError::Invalid(_))
        ));
        let too_many = String::from_utf8(good.clone()).unwrap().replace(
            "\"msg_req\":1000",
            &format!("\"msg_req\":{}", u128::from(u64::MAX) + 1),
        );
        assert!(matches!(
            decode(too_many.as_bytes()),
            Err(DecodeError::Invalid(_))
        ));
        let wrong_type = String::from_utf8(good)
            .unwrap()
            .replace("\"req\":1,", "\"req\":\"1\",");
        assert!(matches!(
            decode(wrong_type.as_bytes()),
            Err(DecodeError::Invalid(_))
        ));
    }

    fn surviving(age_ms: u64) -> (WindowFate, Vec<u32>) {
        let p = plan(&sample(), T0 + age_ms);
        assert_eq!(p.totals, sample().totals);
        (p.window, p.buckets.iter().map(|(_, b)| b.req).collect())
    }

    #[test]
    fn buckets_survive_by_wall_clock_age() {
        // Bucket `req` values name them: 1 is the oldest (9.99 s at write
        // time), 32 the newest (0 s).
        assert_eq!(
            surviving(0),
            (WindowFate::Restored, vec![1, 2, 4, 8, 16, 32])
        );
        // 3.5 s later: 6.5 s + 3.5 s = 10 s is out, 6.49 s + 3.5 s is in.
        assert_eq!(surviving(3_500), (WindowFate::Restored, vec![4, 8, 16, 32]));
        // 9.99 s later only the bucket that started at the write survives.
        assert_eq!(surviving(9_990), (WindowFate::Restored, vec![32]));
        assert_eq!(surviving(10_000), (WindowFate::TooOld, vec![]));
        assert_eq!(surviving(11_000), (WindowFate::TooOld, vec![]));
    }

    #[test]
    fn restored_ages_are_wall_clock_ages() {
        let p = plan(&sample(), T0 + 3_500);
        let ages: Vec<u64> = p.buckets.iter().map(|(age, _)| *age).collect();
        assert_eq!(ages, vec![9_990, 5_500, 3_510, 3_500]);
        assert_eq!(p.age_ms, 3_500);
    }

    #[test]
    fn future_snapshots_restore_totals_only() {
        let p = plan(&sample(), T0 - 1);
        assert_eq!(p.window, WindowFate::FromTheFuture);
        assert!(p.buckets.is_empty());
        assert_eq!(p.totals, sample().totals);
        // A bucket dated after its own snapshot is not trusted either.
        let mut s = sample();
        s.window.push(bucket(T0 + 5, 64, 0));
        let p = plan(&s, T0 + 10);
        assert!(p.buckets.iter().all(|(_, b)| b.req != 64));
    }

    #[test]
    fn restore_puts_rates_and_totals_back() {
        let mut stats = Stats::default();
        // A fresh process: its monotonic clock is near 0.
        let p = restore(&sample(), &mut stats, T0 + 3_500, 7);
        assert_eq!(p.window, WindowFate::Restored);
        assert_eq!(Totals::of(&stats), sample().totals);
        let r = stats.report(7);
        assert_eq!(r.request_rate_10s, f64::from(4 + 8 + 16 + 32) / 10.0);
        // Ages 3.5 s and 3.51 s: outside the last second.
        assert_eq!(r.request_rate_1s, 0.0);
        // 10 ms later the 9.99 s-old bucket has left the window, and 4.5 s
        // later the 5.5 s-old one too.
        let r = stats.report(7 + 10);
        assert_eq!(r.request_rate_10s, f64::from(8 + 16 + 32) / 10.0);
        let r = stats.report(7 + 4_500);
        assert_eq!(r.request_rate_10s, f64::from(16 + 32) / 10.0);
        assert_eq!(stats.report(7 + 10_000).request_rate_10s, 0.0);
    }

    #[test]
    fn capture_then_restore_keeps_the_rates() {
        let mut stats = Stats::default();
        stats.add_client_frames(&FrameCounts {
            req: 5,
            ..FrameCounts::default()
        });
        stats.commit_window(40_003);
        stats.add_server_frames(&FrameCounts {
            ack: 4,
            nak: 1,
            ..FrameCounts::default()
        });
        stats.commit_window(47_500);
        let snap = capture(&mut stats, T0, 48_000);
        assert_eq!(snap.window.len(), 2);
        assert_eq!(snap.window.first().map(|b| b.start_ms), Some(T0 - 8_000));
        let before = stats.report(48_000);

        let mut fresh = Stats::default();
        restore(&decode(&encode(&snap)).unwrap(), &mut fresh, T0, 0);
        let after = fresh.report(0);
        assert_eq!(after.msg_total, before.msg_total);
        assert_eq!(after.request_rate_10s, before.request_rate_10s);
        assert_eq!(after.response_rate_10s, before.response_rate_10s);
        assert_eq!(after.response_rate_1s, before.response_rate_1s);
        assert_eq!(after.uptime_secs, 0.0);
    }

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
    fn unknown_fields_anywhere_are_ignored() {
        let good = encode(&sample());
        let mut v: Value = serde_json::from_slice(&good).unwrap();
        v["later"] = serde_json::json!({"x": [1, null]});
        v["totals"]["msg_other"] = serde_json::json!(7);
        v["window"][0]["weight"] = serde_json::json!("heavy");
        let extra = serde_json::to_vec(&v).unwrap();
        assert_eq!(decode(&extra), Ok(sample()));
        // A different version is still refused, extra fields or not.
        v["version"] = serde_json::json!(2);
        let v2 = serde_json::to_vec(&v).unwrap();
        assert_eq!(decode(&v2), Err(DecodeError::Version("2".into())));
    }

    #[test]
    fn a_captured_window_is_always_plausible() {
        assert_eq!(check_window(&sample()), Ok(()));
        let mut stats = Stats::default();
        for ms in (0..12_000).step_by(7) {
            stats.add_client_frames(&FrameCounts {
                req: 3,
                ..FrameCounts::default()
            });
            stats.add_server_frames(&FrameCounts {
                ack: 2,
                nak: 1,
                ..FrameCounts::default()
            });
            stats.commit_window(ms);
        }
        let snap = capture(&mut stats, T0, 12_000);
        // Every bucket but the one just begun.
        assert_eq!(snap.window.len(), BUCKETS - 1);
        assert_eq!(check_window(&snap), Ok(()));
    }

    #[test]
    fn implausible_windows_are_named() {
        let with = |f: &dyn Fn(&mut Snapshot)| {
            let mut s = sample();
            f(&mut s);
            check_window(&s)
        };
        // 63 requests in the window.
        assert_eq!(
            with(&|s| s.totals.msg_req = 62),
            Err(Implausible::Requests {
                window: 63,
                total: 62
            })
        );
        assert_eq!(with(&|s| s.totals.msg_req = 63), Ok(()));
        assert_eq!(
            with(&|s| s.window.push(bucket(T0 - 1, 0, 1_000))),
            Err(Implausible::Responses {
                window: 1_000,
                total: 999
            })
        );
        // One bucket may not be larger than its totals either.
        assert!(matches!(
            with(&|s| s.window = vec![bucket(T0, u32::MAX, 0)]),
            Err(Implausible::Requests { .. })
        ));
        assert_eq!(
            with(&|s| s.window.push(bucket(T0 + 1, 0, 0))),
            Err(Implausible::OutsideWindow { start_ms: T0 + 1 })
        );
        assert_eq!(
            with(&|s| s.window.push(bucket(T0 - WINDOW_MS - 1, 0, 0))),
            Err(Implausible::OutsideWindow {
                start_ms: T0 - WINDOW_MS - 1
            })
        );
        assert_eq!(
            with(&|s| s.window.push(bucket(T0 - WINDOW_MS, 0, 0))),
            Ok(())
        );
        assert_eq!(
            with(&|s| s.window.push(bucket(T0 - 10, 0, 0))),
            Err(Implausible::Duplicate { start_ms: T0 - 10 })
        );
        assert_eq!(
            with(&|s| s.window = (0..=BUCKETS as u64).map(|i| bucket(T0 - i, 0, 0)).collect()),
            Err(Implausible::TooManyBuckets(BUCKETS + 1))
        );
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
}

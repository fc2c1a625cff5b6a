//! The recovery file: the totals and the 10 s window survive a restart.
//!
//! Pure part: [`Snapshot`], [`encode`]/[`decode`], [`capture`], [`plan`] and
//! [`restore`]. They take both clocks as arguments: the wall clock (ms since
//! the Unix epoch) maps ages across processes, the monotonic one (the
//! server's `now_ms`) places them in the [`RateWindow`](crate::rates::RateWindow).
//!
//! I/O part: [`Recovery`] loads the file at start (a bad one is moved to
//! `PATH.corrupt`), and a writer thread replaces it atomically (temp file,
//! fsync, rename, fsync of the directory), so a slow disk never stalls the
//! relay. The loop hands the thread owned [`Snapshot`]s over a channel.

use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::rates::{BUCKET_MS, BUCKETS, Bucket};
use crate::server::describe;
use crate::stats::Stats;
use crate::{debug, info, warn};

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

/// Counters that only grow, as a snapshot carries them. Unknown fields are
/// ignored on reading (here and in the whole file), so a build rolled back
/// after an upgrade that added one still restores the counts.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub msg_req: u64,
    pub msg_ack: u64,
    pub msg_nak: u64,
    pub invalid_client_to_server: u64,
    pub invalid_server_to_client: u64,
    pub connections_total: u64,
    pub upstream_errors: u64,
    pub bytes_client_to_server: u64,
    pub bytes_server_to_client: u64,
}

impl Totals {
    pub fn of(stats: &Stats) -> Totals {
        Totals {
            msg_req: stats.msg_req,
            msg_ack: stats.msg_ack,
            msg_nak: stats.msg_nak,
            invalid_client_to_server: stats.invalid_client_to_server,
            invalid_server_to_client: stats.invalid_server_to_client,
            connections_total: stats.connections_total,
            upstream_errors: stats.upstream_errors,
            bytes_client_to_server: stats.bytes_client_to_server,
            bytes_server_to_client: stats.bytes_server_to_client,
        }
    }

    pub fn add_to(&self, stats: &mut Stats) {
        let add = |field: &mut u64, value: u64| *field = field.saturating_add(value);
        add(&mut stats.msg_req, self.msg_req);
        add(&mut stats.msg_ack, self.msg_ack);
        add(&mut stats.msg_nak, self.msg_nak);
        add(
            &mut stats.invalid_client_to_server,
            self.invalid_client_to_server,
        );
        add(
            &mut stats.invalid_server_to_client,
            self.invalid_server_to_client,
        );
        add(&mut stats.connections_total, self.connections_total);
        add(&mut stats.upstream_errors, self.upstream_errors);
        add(
            &mut stats.bytes_client_to_server,
            self.bytes_client_to_server,
        );
        add(
            &mut stats.bytes_server_to_client,
            self.bytes_server_to_client,
        );
    }
}

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
/// `version` other than [`VERSION`] is an error. The window is returned as
/// written: [`check_window`] says whether it can be believed.
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

/// Milliseconds since the Unix epoch (0 for a clock before it).
pub fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Where a snapshot is written before it is renamed over `path`.
pub fn temp_path(path: &Path) -> PathBuf {
    with_suffix(path, ".tmp")
}

/// Where a file that cannot be used is kept for inspection.
pub fn corrupt_path(path: &Path) -> PathBuf {
    with_suffix(path, ".corrupt")
}

/// Reads and decodes `path`. `Ok(None)` when there is no file; `Err` is the
/// reason the file cannot be used. Never reads more than `MAX_FILE_BYTES`.
fn load(path: &Path) -> Result<Option<Snapshot>, String> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
            ) =>
        {
            return Ok(None);
        }
        Err(e) => return Err(format!("cannot open it: {}", describe(&e))),
    };
    if let Ok(meta) = file.metadata()
        && meta.len() > MAX_FILE_BYTES
    {
        return Err(DecodeError::TooLarge(meta.len()).to_string());
    }
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read it: {}", describe(&e)))?;
    decode(&bytes).map(Some).map_err(|e| e.to_string())
}

/// Replaces `path` with `bytes` so that a crash at any instant leaves the
/// old file or the new one: temp file, fsync, rename, fsync the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    fs::create_dir_all(dir).map_err(|e| {
        format!(
            "cannot create directory {}: {}",
            dir.display(),
            describe(&e)
        )
    })?;
    let tmp = temp_path(path);
    let written = File::create(&tmp).and_then(|mut f| {
        f.write_all(bytes)?;
        f.sync_all()
    });
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(format!("cannot write {}: {}", tmp.display(), describe(&e)));
    }
    if let Err(e) = fs::rename(&tmp, path) {
        let _ = fs::remove_file(&tmp);
        return Err(format!(
            "cannot rename {} to {}: {}",
            tmp.display(),
            path.display(),
            describe(&e)
        ));
    }
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| format!("cannot sync directory {}: {}", dir.display(), describe(&e)))
}

/// The writer thread: writes the newest snapshot it has; a failure is
/// logged once, then retried quietly with backoff until a write succeeds.
/// Exits once the sender is gone and nothing is left to write.
fn run_writer(path: PathBuf, rx: Receiver<Snapshot>) {
    let mut pending: Option<Snapshot> = None;
    let mut failing = false;
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
            match write_atomic(&path, &encode(snapshot)) {
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
            return;
        }
    }
}

/// The recovery file as the event loop sees it: restored at start, then a
/// snapshot at most once per `SNAPSHOT_INTERVAL` while counters change, and
/// a final one at exit.
pub struct Recovery {
    path: PathBuf,
    writer: Option<(Sender<Snapshot>, JoinHandle<()>)>,
    /// Totals in the last snapshot handed to the writer (or restored).
    last: Totals,
    dirty: bool,
    next_write: Instant,
}

impl Recovery {
    /// Cleans up after an interrupted write, restores what `path` holds into
    /// `stats` (moving a bad file aside), and starts the writer thread.
    pub fn open(path: PathBuf, stats: &mut Stats, now: Instant, now_ms: u64) -> Recovery {
        let tmp = temp_path(&path);
        match fs::remove_file(&tmp) {
            Ok(()) => info!("removed {} left by an interrupted write", tmp.display()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => debug!("cannot remove {}: {}", tmp.display(), describe(&e)),
        }
        match load(&path) {
            Ok(Some(snapshot)) => Self::report_restore(&path, &snapshot, stats, now_ms),
            Ok(None) => {}
            Err(why) => quarantine(&path, &why),
        }
        let (tx, rx) = mpsc::channel();
        let thread_path = path.clone();
        let writer = thread::Builder::new()
            .name("recovery-writer".into())
            .spawn(move || run_writer(thread_path, rx));
        let writer = match writer {
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
        Recovery {
            path,
            writer,
            last: Totals::of(stats),
            dirty: false,
            next_write: now,
        }
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

    /// Writes the final snapshot and waits (bounded) for it to be on disk.
    pub fn finish(mut self, stats: &mut Stats, now_ms: u64) {
        self.send(stats, now_ms);
        let Some((tx, handle)) = self.writer.take() else {
            return;
        };
        drop(tx);
        let deadline = Instant::now() + FINISH_WAIT;
        while !handle.is_finished() {
            if Instant::now() >= deadline {
                warn!(
                    "the final snapshot to {} is taking more than {} s; exiting without it",
                    self.path.display(),
                    FINISH_WAIT.as_secs()
                );
                return;
            }
            thread::sleep(Duration::from_millis(5));
        }
        let _ = handle.join();
    }
}

/// Moves a file that cannot be used to `PATH.corrupt`, with one warning.
fn quarantine(path: &Path, why: &str) {
    let aside = corrupt_path(path);
    match fs::rename(path, &aside) {
        Ok(()) => warn!(
            "cannot use recovery file {}: {why}; moved it to {} and starting fresh",
            path.display(),
            aside.display()
        ),
        Err(e) => warn!(
            "cannot use recovery file {}: {why}; cannot move it to {} ({}); starting fresh",
            path.display(),
            aside.display(),
            describe(&e)
        ),
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
                bytes_client_to_server: u64::MAX,
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
        assert!(!temp_path(&path).exists());
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
}

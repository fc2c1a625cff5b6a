//! The recovery file as the event loop sees it: claim, restore at start, the writer thread and the final snapshot.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::dates::wall_ms;
use crate::net::describe;
use crate::recovery::codec::{
    Snapshot, Totals, WindowFate, capture, check_window, encode, restore_counted,
};
use crate::recovery::files::{
    Loaded, could_create_in, ensure_dir, load, probe_writable, quarantine, remove_leftover_temps,
    write_atomic,
};
use crate::recovery::lock::{LockError, RecoveryLock};
use crate::recovery::path::{StartError, Unreadable, check_path};
use crate::signals;
use crate::stats::Stats;
use log::{debug, info, warn};

/// Snapshots are written at most this often.
pub const SNAPSHOT_INTERVAL: Duration = Duration::from_secs(1);
/// A failed write is retried after this, doubling up to `RETRY_MAX`.
const RETRY_MIN: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(30);
/// How long the exit waits for the final snapshot to reach the disk.
const FINISH_WAIT: Duration = Duration::from_secs(5);

/// Makes sure the writer holds the lock before it writes: takes it when it
/// was not available at start, and again if the lock file was removed or
/// replaced meanwhile.
pub(super) fn hold_lock(path: &Path, lock: &mut Option<RecoveryLock>) -> Result<(), String> {
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
/// is on disk, and the lock, for a hand-over to the next process.
pub(super) fn run_writer(
    path: PathBuf,
    mut lock: Option<RecoveryLock>,
    mut failing: bool,
    rx: Receiver<Snapshot>,
) -> Written {
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
            return (pending.is_none(), lock);
        }
    }
}

/// What the writer thread ends with: whether the newest snapshot is on
/// disk, and the lock.
pub(super) type Written = (bool, Option<RecoveryLock>);

/// The recovery file as the event loop sees it: claimed before any socket
/// is bound, restored when the loop starts, then a snapshot at most once
/// per `SNAPSHOT_INTERVAL` while counters change, and a final one at exit.
pub struct Recovery {
    path: PathBuf,
    /// Held here from the claim until `open` hands it to the writer.
    lock: Option<RecoveryLock>,
    /// The start already warned that the file cannot be written.
    warned: bool,
    writer: Option<(Sender<Snapshot>, JoinHandle<Written>)>,
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
        let (recovery, unwritable) = Recovery::claim_quietly(path)?;
        if let Some(why) = &unwritable {
            warn!(
                "recovery file {} cannot be written: {why}; relaying anyway and retrying quietly",
                recovery.path.display()
            );
        }
        Ok(recovery)
    }

    /// `--check`: the checks [`claim`](Recovery::claim) makes, without
    /// creating, writing or removing anything: the path's kind, whether its
    /// directory could be made or written (`could_create_in`), and an
    /// existing lock file's checks and `flock`, tried and released at once
    /// (a lock another process holds is the error, naming its pid).
    /// `Ok(Some(why))`: the file cannot be written now, which the proxy
    /// would warn about and relay through.
    pub fn check(path: PathBuf) -> Result<Option<String>, StartError> {
        check_path(&path)?;
        if let Err(why) = could_create_in(&path) {
            return Ok(Some(why));
        }
        match RecoveryLock::probe(&path) {
            Ok(()) => Ok(None),
            Err(LockError::Unwritable(why)) => Ok(Some(why)),
            Err(e @ LockError::Unusable(_)) => Err(StartError::unusable(e.describe(&path))),
            Err(e @ (LockError::InUse(_) | LockError::Failed(_))) => Err(StartError {
                message: e.describe(&path),
                exit_code: 1,
            }),
        }
    }

    /// [`claim`](Recovery::claim) without the warning: the recovery, and
    /// why the file cannot be written if it cannot.
    fn claim_quietly(path: PathBuf) -> Result<(Recovery, Option<String>), StartError> {
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
        let recovery = Recovery {
            path,
            lock,
            warned: unwritable.is_some(),
            writer: None,
            last: Totals::default(),
            dirty: false,
            next_write: Instant::now(),
        };
        Ok((recovery, unwritable))
    }

    /// Restores what the file holds into `stats` (moving a bad file aside,
    /// dropping an implausible window), and starts the writer thread.
    /// Returns whether counts were restored.
    pub fn open(&mut self, stats: &mut Stats, now: Instant, now_ms: u64) -> bool {
        let path = &self.path;
        let mut restored = false;
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
                restored = true;
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
        self.start_writer(stats, now);
        restored
    }

    /// The recovery file of a process that handed over: its `lock` (held
    /// all along, so there was never a second writer), no restore (the
    /// counts came over the hand-over). [`Recovery::start_writer`] keeps it
    /// written.
    pub fn adopt(path: PathBuf, lock: Option<RecoveryLock>) -> Recovery {
        Recovery {
            path,
            lock,
            warned: false,
            writer: None,
            last: Totals::default(),
            dirty: false,
            next_write: Instant::now(),
        }
    }

    /// Starts the writer thread with the lock this value holds; the next
    /// tick writes when `stats` changed since.
    pub fn start_writer(&mut self, stats: &mut Stats, now: Instant) {
        let path = &self.path;
        let (tx, rx) = mpsc::channel();
        let thread_path = path.clone();
        let lock = self.lock.take();
        let warned = self.warned;
        let builder = thread::Builder::new().name("recovery-writer".into());
        let writer =
            signals::spawn_unsignalled(builder, move || run_writer(thread_path, lock, warned, rx));
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
        let (plan, skipped) = restore_counted(snapshot, stats, wall_ms(), now_ms);
        if !skipped.reasons.is_empty() || skipped.histograms {
            warn!(
                "{}: left out what this build cannot count the same way: close reasons {:?}{}",
                path.display(),
                skipped.reasons,
                if skipped.histograms {
                    ", latency histograms with other buckets"
                } else {
                    ""
                }
            );
        }
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

    /// The recovery file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the claim took the lock (before [`Recovery::open`] hands
    /// it to the writer): false when the directory was unwritable.
    pub fn holds_lock(&self) -> bool {
        self.lock.is_some()
    }

    /// Makes the next tick write a snapshot even if nothing changes from
    /// now on: after a hand-over the file holds the old process's final
    /// counts, not yet ours.
    pub fn write_soon(&mut self) {
        self.last = Totals::default();
        self.dirty = true;
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
    /// `FINISH_WAIT`, and not at all once `cut_short` says so (a further
    /// stop signal). True when it is on disk; false, with one warning, when
    /// it could not be written or the wait ended first.
    pub fn finish(self, stats: &mut Stats, now_ms: u64, cut_short: impl FnMut() -> bool) -> bool {
        self.finish_keeping_lock(stats, now_ms, cut_short).0
    }

    /// [`Recovery::finish`], and the lock back when the writer exited in
    /// time (the hand-over passes it on); `None` when it never had it or
    /// is still writing.
    pub fn finish_keeping_lock(
        mut self,
        stats: &mut Stats,
        now_ms: u64,
        mut cut_short: impl FnMut() -> bool,
    ) -> Written {
        self.send(stats, now_ms);
        let path = self.path.display();
        let Some((tx, handle)) = self.writer.take() else {
            warn!("the final snapshot to {path} was not written: no recovery writer");
            return (false, self.lock.take());
        };
        drop(tx);
        let deadline = Instant::now() + FINISH_WAIT;
        while !handle.is_finished() {
            if Instant::now() >= deadline {
                warn!(
                    "the final snapshot to {path} is taking more than {} s; exiting without it",
                    FINISH_WAIT.as_secs()
                );
                return (false, None);
            }
            if cut_short() {
                warn!("stopping now, without waiting for the final snapshot to {path}");
                return (false, None);
            }
            thread::sleep(Duration::from_millis(5));
        }
        let (saved, lock) = handle.join().unwrap_or((false, None));
        if !saved {
            warn!(
                "the final snapshot could not be written to {path}; the counts since the last one are lost"
            );
        }
        (saved, lock)
    }
}

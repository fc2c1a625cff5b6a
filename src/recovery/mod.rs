//! The recovery file: the totals and the 10 s window survive a restart.
//!
//! Pure part: [`Snapshot`], [`encode`]/[`decode`], [`capture`], [`plan`] and
//! [`restore`]. They take both clocks as arguments: the wall clock (ms since
//! the Unix epoch) maps ages across processes, the monotonic one (the
//! server's `now_ms`) places them in the `RateWindow`.
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
//!
//! Rooms: `codec` (pure), `path` (the checks and opens of what the user
//! named), `files` (names beside the file, load, atomic replace,
//! quarantine), `lock` (one owner) and `writer` (the [`Recovery`] the loop
//! drives and its thread). Imports go one way: `writer` uses all four,
//! `lock` uses `files` and `path`, `files` uses `path` and `codec`.

mod codec;
mod files;
mod lock;
mod path;
#[cfg(test)]
mod tests;
mod writer;

pub use crate::dates::wall_ms;
pub use codec::{
    DecodeError, FORMAT, Implausible, MAX_FILE_BYTES, Plan, Snapshot, Totals, VERSION, WINDOW_MS,
    WindowBucket, WindowFate, capture, check_window, decode, encode, plan, restore,
};
pub use codec::{HistogramTotals, LatencyTotals, Skipped, restore_counted};
pub use files::{
    MAX_CORRUPT, corrupt_files, corrupt_path, legacy_temp_path, lock_path, temp_path, write_atomic,
};
pub use lock::{LockError, RecoveryLock};
pub use path::{StartError, check_path};
pub use writer::{Recovery, SNAPSHOT_INTERVAL};

/// `--check`: why a start could not restore the recovery file at `path`
/// and would move it aside (a regular file it cannot decode) or leave it
/// alone (not a regular file), or `None` when it is absent or would be
/// restored. Reads only.
pub fn unrestorable(path: &std::path::Path) -> Option<String> {
    match files::load(path) {
        files::Loaded::Absent | files::Loaded::Snapshot(_) => None,
        files::Loaded::Unreadable(path::Unreadable::Bad(why)) => {
            Some(format!("{why}; a start moves it aside and starts fresh"))
        }
        files::Loaded::Unreadable(path::Unreadable::NotRegular(kind)) => {
            Some(format!("it is {kind}; a start leaves it and starts fresh"))
        }
    }
}

//! One owner per recovery path: the lock file beside it, holding the owner's pid.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process;

use crate::net::describe;
use crate::recovery::files::lock_path;
use crate::recovery::path::{SAFE_OPEN, kind_of};
use log::debug;

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
        // Created when absent, so never `None`.
        let Some(file) = open_checked(&lock_path, true)? else {
            return Err(LockError::Failed(format!(
                "cannot open lock file {}",
                lock_path.display()
            )));
        };
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

    /// Whether [`take`](RecoveryLock::take) would succeed now, without
    /// creating or writing anything (`--check`): an absent lock file is
    /// free; an existing one gets the same checks and a `flock` tried and
    /// released at once. Errors as [`take`](RecoveryLock::take)'s.
    pub fn probe(path: &Path) -> Result<(), LockError> {
        let lock_path = lock_path(path);
        let Some(file) = open_checked(&lock_path, false)? else {
            return Ok(());
        };
        match file.try_lock() {
            Ok(()) => Ok(()),
            Err(TryLockError::WouldBlock) => Err(LockError::InUse(read_pid(&file))),
            Err(TryLockError::Error(e)) => Err(LockError::Failed(format!(
                "cannot lock {}: {}",
                lock_path.display(),
                describe(&e)
            ))),
        }
    }

    /// The lock a previous owner handed over (its descriptor, so the
    /// `flock` was held all along), for recovery file `path`: it must still
    /// be the file named `PATH.lock`. Writes our pid into it.
    pub fn adopt(file: File, path: &Path) -> Result<RecoveryLock, String> {
        let lock = RecoveryLock {
            file,
            path: lock_path(path),
        };
        if !lock.still_named() {
            return Err(format!(
                "the handed-over lock is not {} any more",
                lock.path.display()
            ));
        }
        let pid = format!("{}\n", process::id());
        let _ = lock
            .file
            .set_len(0)
            .and_then(|()| lock.file.write_all_at(pid.as_bytes(), 0));
        Ok(lock)
    }

    /// The lock file's descriptor, to hand the lock over.
    pub fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        std::os::fd::AsFd::as_fd(&self.file)
    }

    /// The lock file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the lock file's name still leads to the file this lock holds:
    /// if someone removed or replaced it, a second process could lock the
    /// new one, so the writer takes the lock again before it writes.
    pub(super) fn still_named(&self) -> bool {
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
pub(super) fn not_ours(nlink: u64, owner: u32, euid: u32) -> Option<String> {
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
pub(super) fn read_pid(file: &File) -> Option<u32> {
    let mut buf = [0u8; 24];
    let n = file.read_at(&mut buf, 0).ok()?;
    parse_pid(buf.get(..n)?)
}

/// `1234\n` as 1234. Without the newline the write was cut short (a full
/// disk): a prefix of the pid would name another process, so none.
pub(super) fn parse_pid(bytes: &[u8]) -> Option<u32> {
    let digits = bytes.strip_suffix(b"\n")?;
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// Opens lock file `lock_path` (creating it when `create`; `Ok(None)` when
/// it is absent and not created), refusing what is not a regular file of
/// ours: a symbolic link, another kind of file, a hard link, another
/// user's file.
fn open_checked(lock_path: &Path, create: bool) -> Result<Option<File>, LockError> {
    let not_regular = |kind: &str| {
        LockError::Unusable(format!(
            "lock file {} is {kind}, not a regular file",
            lock_path.display()
        ))
    };
    if let Ok(meta) = fs::symlink_metadata(lock_path)
        && !meta.is_file()
    {
        return Err(not_regular(kind_of(meta.file_type())));
    }
    let opened = OpenOptions::new()
        .read(true)
        .write(create)
        .create(create)
        .mode(0o600)
        .custom_flags(SAFE_OPEN | libc::O_NOFOLLOW)
        .open(lock_path);
    if !create
        && opened
            .as_ref()
            .is_err_and(|e| e.kind() == io::ErrorKind::NotFound)
    {
        return Ok(None);
    }
    let file = opened.map_err(|e| {
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
    // pid write in `take` truncates, and must never reach a file that is
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
    Ok(Some(file))
}

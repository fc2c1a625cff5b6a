//! The recovery path checked before any socket is bound, and every open of it that cannot block or follow a planted link.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

use crate::net::describe;

/// Flags for every open of a path someone else may control: a FIFO or a
/// device never blocks the open, and a terminal never becomes ours. (std
/// adds `O_CLOEXEC` itself.)
pub(super) const SAFE_OPEN: i32 = libc::O_NONBLOCK | libc::O_NOCTTY;

/// A file system object's kind, as a message names it.
pub(super) fn kind_of(t: fs::FileType) -> &'static str {
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
    pub(super) message: String,
    pub(super) exit_code: u8,
}

impl StartError {
    pub(super) fn unusable(message: String) -> StartError {
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
pub(super) fn open_regular(path: &Path) -> Result<Option<File>, Unreadable> {
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
pub(super) enum Unreadable {
    /// Not a regular file (any more): left exactly where it is.
    NotRegular(&'static str),
    /// A regular file that cannot be used: moved aside.
    Bad(String),
}

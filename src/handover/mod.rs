//! The hand-over from a running proxy to its successor (`--takeover`): the
//! messages, the control socket beside the recovery file, and one
//! connection that carries lines with descriptors (SCM_RIGHTS) on some.
//!
//! The conversation, new process (N) and old (O), over `RECOVERY.sock`:
//!
//! ```text
//! N -> O  HELLO 1 <pid>
//! O -> N  LISTENERS <listen|-> <admin|->     + the listeners it has open
//!         (or BUSY <pid>: another hand-over is in progress; or REFUSED ...)
//! N       binds what it did not get; on failure it exits: O never stopped
//! N -> O  READY                               N accepts from here on
//! O       stops accepting (keeps the descriptors) and drains
//! O -> N  COUNTS <snapshot>                   its totals so far, each second
//! O -> N  FINAL <lock|-> <control|-> <snapshot>  + recovery lock, control socket
//! N -> O  DONE                                O exits 0
//! ```
//!
//! N learns O's pid from the credentials O's answer carries (N's socket
//! has `SO_PASSCRED`), not from `SO_PEERCRED`: the control socket is
//! handed on, and on the connecting side that names its creator.
//!
//! Either side's end before `DONE` is seen as the connection's end: N
//! claims the recovery file itself (its last snapshot is what O saved), O
//! takes its listeners back and serves again.

pub mod giver;
pub mod taker;

use std::collections::VecDeque;
use std::fs;
use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use nix::sys::stat::Mode;
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};

use crate::net::{self, Io, describe};
use crate::recovery::{self, Snapshot};

/// The protocol's version in `HELLO`.
pub const VERSION: u32 = 1;
/// The longest line either side accepts, in bytes, its newline not
/// counted: the longest message, a snapshot as large as a recovery file may
/// be after the words before it (`FINAL lock control `). Snapshots are a
/// few KiB.
const MAX_LINE: usize = recovery::MAX_FILE_BYTES as usize + 64;
/// The most descriptors one message carries (`FINAL`: lock and control).
const MAX_FDS: usize = 4;

/// Who sent a message: the kernel's `SCM_CREDENTIALS` of the sending
/// process (pid in our pid namespace, uid), present on what a socket with
/// `SO_PASSCRED` reads.
pub type Sender = rustix::net::UCred;

/// The control socket of recovery file `path`: `PATH.sock`, beside it.
pub fn control_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".sock");
    PathBuf::from(name)
}

/// One message of the conversation.
#[derive(Debug, Clone, PartialEq)]
pub enum Msg {
    /// N's greeting: protocol version, pid.
    Hello { version: u32, pid: u32 },
    /// O's listeners, by the address each is bound to; a descriptor follows
    /// for each one present, in this order.
    Listeners {
        listen: Option<SocketAddr>,
        admin: Option<SocketAddr>,
    },
    /// Another hand-over (to `pid`) is in progress.
    Busy { pid: u32 },
    /// O cannot hand over (an unknown version, ...): one sentence.
    Refused(String),
    /// N listens and accepts: O may stop.
    Ready,
    /// O's totals and rate window so far.
    Counts(Snapshot),
    /// O's last counts; the recovery lock and the control socket follow
    /// when present.
    Final {
        lock: bool,
        control: bool,
        snapshot: Snapshot,
    },
    /// N has everything: O may exit.
    Done,
}

fn addr_word(addr: Option<SocketAddr>) -> String {
    addr.map_or_else(|| "-".to_string(), |a| a.to_string())
}

fn parse_addr(word: &str) -> Result<Option<SocketAddr>, String> {
    match word {
        "-" => Ok(None),
        w => w
            .parse()
            .map(Some)
            .map_err(|_| format!("bad address {w:?}")),
    }
}

fn snapshot_text(snapshot: &Snapshot) -> String {
    String::from_utf8_lossy(&recovery::encode(snapshot))
        .trim_end()
        .to_string()
}

impl Msg {
    /// The line, newline included.
    pub fn encode(&self) -> String {
        let line = match self {
            Msg::Hello { version, pid } => format!("HELLO {version} {pid}"),
            Msg::Listeners { listen, admin } => {
                format!("LISTENERS {} {}", addr_word(*listen), addr_word(*admin))
            }
            Msg::Busy { pid } => format!("BUSY {pid}"),
            Msg::Refused(why) => format!("REFUSED {}", why.replace('\n', " ")),
            Msg::Ready => "READY".to_string(),
            Msg::Counts(s) => format!("COUNTS {}", snapshot_text(s)),
            Msg::Final {
                lock,
                control,
                snapshot,
            } => format!(
                "FINAL {} {} {}",
                if *lock { "lock" } else { "-" },
                if *control { "control" } else { "-" },
                snapshot_text(snapshot)
            ),
            Msg::Done => "DONE".to_string(),
        };
        line + "\n"
    }

    /// Reads one line (without its newline); errors name what is wrong.
    pub fn decode(line: &[u8]) -> Result<Msg, String> {
        let text = std::str::from_utf8(line).map_err(|_| "a line is not UTF-8".to_string())?;
        let (verb, rest) = text.split_once(' ').unwrap_or((text, ""));
        let words: Vec<&str> = rest.split(' ').collect();
        let number = |w: Option<&&str>| -> Result<u32, String> {
            w.and_then(|w| crate::cli::parse_count(w))
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| format!("bad {verb} line"))
        };
        let snapshot = |s: &str| recovery::decode(s.as_bytes()).map_err(|e| e.to_string());
        match verb {
            "HELLO" => Ok(Msg::Hello {
                version: number(words.first())?,
                pid: number(words.get(1))?,
            }),
            "LISTENERS" => match words.as_slice() {
                [listen, admin] => Ok(Msg::Listeners {
                    listen: parse_addr(listen)?,
                    admin: parse_addr(admin)?,
                }),
                _ => Err("bad LISTENERS line".to_string()),
            },
            "BUSY" => Ok(Msg::Busy {
                pid: number(words.first())?,
            }),
            "REFUSED" => Ok(Msg::Refused(rest.to_string())),
            "READY" => Ok(Msg::Ready),
            "COUNTS" => Ok(Msg::Counts(snapshot(rest)?)),
            "FINAL" => {
                let mut parts = rest.splitn(3, ' ');
                let lock = parts.next() == Some("lock");
                let control = parts.next() == Some("control");
                let json = parts.next().ok_or("bad FINAL line")?;
                Ok(Msg::Final {
                    lock,
                    control,
                    snapshot: snapshot(json)?,
                })
            }
            "DONE" => Ok(Msg::Done),
            other => Err(format!("unknown message {other:?}")),
        }
    }
}

/// One end of the conversation: the socket, what was read and not yet
/// parsed (one line up to `MAX_LINE`, 1 MiB and 64 bytes, the whole up to
/// twice that), and the descriptors that came with it, in order.
pub struct Link<S> {
    pub sock: S,
    inbuf: Vec<u8>,
    fds: VecDeque<OwnedFd>,
    /// The credentials the last read carried (only with `SO_PASSCRED`).
    sender: Option<Sender>,
    /// The length of the line being read: `inbuf`'s bytes after its last
    /// newline. Complete lines before it do not count towards the cap.
    unfinished: usize,
    /// Queued lines not yet written (non-blocking sends), whole lines only
    /// ever added, so a line is never interleaved with another.
    out: Vec<u8>,
}

impl<S: AsFd> Link<S> {
    pub fn new(sock: S) -> Link<S> {
        Link {
            sock,
            inbuf: Vec::new(),
            fds: VecDeque::new(),
            sender: None,
            unfinished: 0,
            out: Vec::new(),
        }
    }

    /// Reads once: `Done(0)` at the peer's end, `WouldBlock` when nothing
    /// is there (or a blocking socket's timeout ran out).
    pub fn fill(&mut self) -> Io<usize> {
        let mut buf = [0u8; 16 * 1024];
        // Room for the credentials too: without it, a socket with
        // SO_PASSCRED would get its descriptors cut off (MSG_CTRUNC).
        let mut space =
            [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS), ScmCredentials(1))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let sock = &self.sock;
        let result = net::io(|| {
            rustix::net::recvmsg(
                sock,
                &mut [IoSliceMut::new(&mut buf)],
                &mut control,
                RecvFlags::CMSG_CLOEXEC,
            )
            .map_err(io::Error::from)
        });
        for message in control.drain() {
            match message {
                RecvAncillaryMessage::ScmRights(fds) => self.fds.extend(fds),
                RecvAncillaryMessage::ScmCredentials(cred) => self.sender = Some(cred),
                _ => {}
            }
        }
        match result {
            Io::Done(msg) => {
                let got = buf.get(..msg.bytes).unwrap_or_default();
                self.inbuf.extend_from_slice(got);
                self.unfinished = match got.iter().rposition(|b| *b == b'\n') {
                    Some(end) => got.len() - end - 1,
                    None => self.unfinished + got.len(),
                };
                // The line being read, not the buffer, is what is capped;
                // the buffer is bounded too, against a peer that sends
                // lines faster than the conversation takes them.
                let why = if self.unfinished > MAX_LINE {
                    Some("a hand-over line is too long")
                } else if self.inbuf.len() > 2 * MAX_LINE {
                    Some("the peer sent more than two lines ahead")
                } else {
                    None
                };
                if let Some(why) = why {
                    return Io::Failed(io::Error::new(io::ErrorKind::InvalidData, why));
                }
                Io::Done(msg.bytes)
            }
            Io::WouldBlock => Io::WouldBlock,
            Io::Failed(e) => Io::Failed(e),
        }
    }

    /// The next complete message read, if any.
    pub fn next_msg(&mut self) -> Result<Option<Msg>, String> {
        let Some(end) = self.inbuf.iter().position(|b| *b == b'\n') else {
            return Ok(None);
        };
        let line: Vec<u8> = self.inbuf.drain(..=end).collect();
        Msg::decode(line.get(..end).unwrap_or_default()).map(Some)
    }

    /// The process that sent what was read last, as the kernel saw it at
    /// the send: only on a socket with `SO_PASSCRED` (see
    /// [`connect_control`]). Unlike `SO_PEERCRED`, it names whoever holds
    /// the other end now, even when that socket was handed on.
    pub fn sender(&self) -> Option<Sender> {
        self.sender
    }

    /// The next descriptor that came with the messages read.
    pub fn take_fd(&mut self) -> Option<OwnedFd> {
        self.fds.pop_front()
    }

    /// Queues `msg` unless a previous one is still unwritten (the newest
    /// counts replace nothing then: they come next time), and writes what
    /// the socket takes. Never blocks on a non-blocking socket.
    pub fn offer_line(&mut self, msg: &Msg) -> io::Result<()> {
        if self.flush()? {
            self.out.extend_from_slice(msg.encode().as_bytes());
            self.flush()?;
        }
        Ok(())
    }

    /// Writes queued lines; true when none is left.
    pub fn flush(&mut self) -> io::Result<bool> {
        while !self.out.is_empty() {
            match rustix::net::send(&self.sock, &self.out, SendFlags::NOSIGNAL) {
                Ok(n) => {
                    self.out.drain(..n.min(self.out.len()));
                }
                Err(rustix::io::Errno::INTR) => {}
                Err(rustix::io::Errno::AGAIN) => return Ok(false),
                Err(e) => return Err(io::Error::from(e)),
            }
        }
        Ok(true)
    }

    /// Sends `msg` with `fds` riding on its first byte, after any queued
    /// line (see [`Link::offer_line`]). A short write is
    /// finished (a non-blocking socket whose buffer is full fails with
    /// `WouldBlock`: the messages are small, so only a peer that stopped
    /// reading gets there).
    pub fn send(&mut self, msg: &Msg, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        if !self.flush()? {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let line = msg.encode();
        let mut bytes = line.as_bytes();
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "too many descriptors",
            ));
        }
        let mut first = true;
        while !bytes.is_empty() {
            let sent = loop {
                let result = if first {
                    rustix::net::sendmsg(
                        &self.sock,
                        &[IoSlice::new(bytes)],
                        &mut control,
                        SendFlags::NOSIGNAL,
                    )
                } else {
                    rustix::net::send(&self.sock, bytes, SendFlags::NOSIGNAL)
                };
                match result {
                    Err(rustix::io::Errno::INTR) => {}
                    other => break other.map_err(io::Error::from)?,
                }
            };
            first = false;
            bytes = bytes.get(sent..).unwrap_or_default();
        }
        Ok(())
    }
}

/// The peer of an accepted Unix socket, checked to run as our uid: a
/// process of another user never takes part in a hand-over. Its pid on
/// success.
///
/// `SO_PEERCRED` names whoever called `connect()` for the socket `accept()`
/// returned (the successor itself), but on the connecting side it names
/// whoever called `listen()`: for a control socket that was handed over,
/// the first process of the chain, long gone. So the connecting side takes
/// only the uid from it ([`connect_control`]) and the pid from the
/// messages' credentials ([`Link::sender`]).
pub fn check_peer(sock: impl AsFd) -> Result<u32, String> {
    let cred = rustix::net::sockopt::socket_peercred(sock)
        .map_err(|e| format!("cannot read the peer's credentials: {e}"))?;
    check_uid(cred.uid.as_raw())?;
    Ok(u32::try_from(cred.pid.as_raw_nonzero().get()).unwrap_or(0))
}

/// Whether `theirs` is this process's effective uid; the error says whose
/// it is.
pub fn check_uid(theirs: u32) -> Result<(), String> {
    let ours = nix::unistd::geteuid().as_raw();
    if theirs != ours {
        return Err(format!(
            "the peer runs as uid {theirs}, not as this process's uid {ours}"
        ));
    }
    Ok(())
}

/// The pid of `sender`, once its uid is checked to be ours.
pub fn sender_pid(sender: &Sender) -> Result<u32, String> {
    check_uid(sender.uid.as_raw())?;
    Ok(u32::try_from(sender.pid.as_raw_nonzero().get()).unwrap_or(0))
}

/// Creates the control socket at `path` with mode 0600 (the umask is
/// narrowed around the bind, so it is never reachable by others, not even
/// for an instant). Only the recovery lock's holder calls this, so a
/// socket (or a link) left at `path` is stale and is removed; anything
/// else there is refused, never removed.
pub fn bind_control(path: &Path) -> Result<UnixListener, String> {
    if let Ok(meta) = fs::symlink_metadata(path) {
        let kind = meta.file_type();
        if !kind.is_socket() && !kind.is_symlink() {
            return Err(format!(
                "control socket path {} exists and is not a socket; not replacing it",
                path.display()
            ));
        }
        fs::remove_file(path)
            .map_err(|e| format!("cannot remove stale {}: {}", path.display(), describe(&e)))?;
    }
    let old = nix::sys::stat::umask(Mode::from_bits_truncate(0o177));
    let bound = UnixListener::bind(path);
    nix::sys::stat::umask(old);
    let listener =
        bound.map_err(|e| format!("cannot listen on {}: {}", path.display(), describe(&e)))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("cannot listen on {}: {}", path.display(), describe(&e)))?;
    Ok(listener)
}

/// Connects to the control socket at `path`: `None` when nothing listens
/// there (no file, or a stale one). The file must be a socket owned by
/// this user, and the socket's creator must have run as this user. The
/// socket has `SO_PASSCRED` from before the connect, so every message of
/// the old process carries its credentials ([`Link::sender`]): the pid of
/// the process that holds the control socket now. `SO_PEERCRED` here would
/// name the socket's creator ([`check_peer`]).
pub fn connect_control(path: &Path) -> Result<Option<UnixStream>, String> {
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot stat {}: {}", path.display(), describe(&e))),
    };
    if !meta.file_type().is_socket() {
        return Err(format!(
            "control socket path {} is not a socket; refusing to use it",
            path.display()
        ));
    }
    let ours = nix::unistd::geteuid().as_raw();
    if meta.uid() != ours {
        return Err(format!(
            "control socket {} is owned by uid {}, not by this process's uid {ours}",
            path.display(),
            meta.uid()
        ));
    }
    let cannot = |e: io::Error| format!("cannot connect to {}: {}", path.display(), describe(&e));
    let stream = passcred_stream().map_err(cannot)?;
    let addr = rustix::net::SocketAddrUnix::new(path).map_err(|e| cannot(e.into()))?;
    match rustix::net::connect(&stream, &addr) {
        Ok(()) => {}
        Err(rustix::io::Errno::CONNREFUSED | rustix::io::Errno::NOENT) => return Ok(None),
        Err(e) => return Err(cannot(e.into())),
    }
    let peer = rustix::net::sockopt::socket_peercred(&stream).map_err(|e| {
        format!(
            "{}: cannot read the peer's credentials: {e}",
            path.display()
        )
    })?;
    check_uid(peer.uid.as_raw()).map_err(|why| format!("{}: {why}", path.display()))?;
    Ok(Some(UnixStream::from(stream)))
}

/// A Unix stream socket (close-on-exec) that receives its peer's
/// credentials with every message.
fn passcred_stream() -> io::Result<OwnedFd> {
    let fd = rustix::net::socket_with(
        rustix::net::AddressFamily::UNIX,
        rustix::net::SocketType::STREAM,
        rustix::net::SocketFlags::CLOEXEC,
        None,
    )?;
    rustix::net::sockopt::set_socket_passcred(&fd, true)?;
    Ok(fd)
}

/// Whether a listener bound to `actual` serves the configured address
/// `wanted`: the same, or `[::]:P` configured where the host fell back to
/// `0.0.0.0:P` (see [`net::listen`]).
pub fn same_listen(wanted: SocketAddr, actual: SocketAddr) -> bool {
    wanted == actual
        || (wanted.port() == actual.port()
            && wanted.ip() == std::net::IpAddr::from(std::net::Ipv6Addr::UNSPECIFIED)
            && actual.ip() == std::net::IpAddr::from(std::net::Ipv4Addr::UNSPECIFIED))
}

#[cfg(test)]
mod tests;

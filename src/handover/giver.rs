//! The old process's side of a hand-over: the control socket it listens
//! on, and the one conversation at a time with a successor.

use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use mio::net::{UnixListener, UnixStream};
use mio::{Interest, Registry, Token};

use super::{Link, Msg, VERSION, check_peer};
use crate::net::{self, Io, describe};
use crate::recovery::Snapshot;

/// How long a successor may take from its connection to `READY` (it binds
/// what it did not get in between) before its slot is given up.
pub const READY_WAIT: Duration = Duration::from_secs(15);
/// How long the old process waits for `DONE` after `FINAL`.
const DONE_WAIT: Duration = Duration::from_secs(10);
/// The longest single read or write of that wait.
const READ_SLICE: Duration = Duration::from_millis(200);

/// Where the conversation with a successor stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    /// Connected; its `HELLO` has not come yet.
    Greeting,
    /// Our listeners went out; waiting for its `READY`.
    Offered,
    /// It accepts: we drain and send counts.
    Ready,
}

struct Session {
    link: Link<UnixStream>,
    /// The successor's pid: `SO_PEERCRED` of the accepted connection,
    /// which names the process that connected (see [`check_peer`]).
    pid: u32,
    stage: Stage,
}

/// What the loop must do after the control socket or the conversation
/// was read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Heard {
    Nothing,
    /// A successor asks for the listeners: [`Giver::offer`] them.
    Hello,
    /// The successor accepts: stop accepting and drain.
    Ready,
    /// The successor went away after `READY`: take the listeners back.
    GoneAfterReady,
}

/// The control socket and the conversation in progress, if any.
pub struct Giver {
    listener: UnixListener,
    path: PathBuf,
    session: Option<Session>,
    session_token: Token,
}

impl Giver {
    /// Polls the control socket `listener` (bound at `path`).
    pub fn new(
        listener: std::os::unix::net::UnixListener,
        path: PathBuf,
        registry: &Registry,
        listener_token: Token,
        session_token: Token,
    ) -> Result<Giver, String> {
        let mut listener = UnixListener::from_std(listener);
        registry
            .register(&mut listener, listener_token, Interest::READABLE)
            .map_err(|e| format!("cannot poll {}: {}", path.display(), describe(&e)))?;
        Ok(Giver {
            listener,
            path,
            session: None,
            session_token,
        })
    }

    /// The successor's pid while a hand-over is in progress.
    pub fn successor(&self) -> Option<u32> {
        self.session.as_ref().map(|s| s.pid)
    }

    /// Accepts successors: the first gets a conversation, any other while
    /// it lasts is told `BUSY` and closed. A peer of another user is closed
    /// at once.
    pub fn accept(&mut self, registry: &Registry) {
        loop {
            let (stream, _) = match net::io(|| self.listener.accept()) {
                Io::Done(ok) => ok,
                Io::WouldBlock => return,
                Io::Failed(e) => {
                    debug!("control socket accept failed: {}", describe(&e));
                    return;
                }
            };
            let pid = match check_peer(&stream) {
                Ok(pid) => pid,
                Err(why) => {
                    warn!("refused a connection on {}: {why}", self.path.display());
                    continue;
                }
            };
            if let Some(current) = self.successor() {
                info!(
                    "refusing a second hand-over (pid {pid}): the one to pid {current} is in progress"
                );
                let _ = Link::new(stream).send(&Msg::Busy { pid: current }, &[]);
                continue;
            }
            let mut stream = stream;
            if let Err(e) = registry.register(&mut stream, self.session_token, Interest::READABLE) {
                debug!("cannot poll a hand-over connection: {}", describe(&e));
                continue;
            }
            self.session = Some(Session {
                link: Link::new(stream),
                pid,
                stage: Stage::Greeting,
            });
        }
    }

    /// Reads the conversation; what the loop must do about it.
    pub fn read(&mut self, registry: &Registry) -> Heard {
        let Some(session) = self.session.as_mut() else {
            return Heard::Nothing;
        };
        let mut heard = Heard::Nothing;
        let ended = loop {
            match session.link.fill() {
                Io::Done(0) => break Some("closed the connection".to_string()),
                Io::Done(_) => {}
                Io::WouldBlock => break None,
                Io::Failed(e) => break Some(describe(&e)),
            }
            match session.link.next_msg() {
                Ok(None) => {}
                Ok(Some(Msg::Hello { version, pid })) if session.stage == Stage::Greeting => {
                    if version != VERSION {
                        let why = format!("protocol version {version} is not {VERSION}");
                        let _ = session.link.send(&Msg::Refused(why.clone()), &[]);
                        break Some(why);
                    }
                    // The pid we name is the connection's (SO_PEERCRED of
                    // an accepted socket: the process that connected, in
                    // our pid namespace); the greeting's is its own view.
                    if pid != session.pid {
                        debug!("hand-over: pid {} calls itself pid {pid}", session.pid);
                    }
                    info!("hand-over: pid {} asks to take over", session.pid);
                    heard = Heard::Hello;
                }
                Ok(Some(Msg::Ready)) if session.stage == Stage::Offered => {
                    session.stage = Stage::Ready;
                    heard = Heard::Ready;
                }
                Ok(Some(other)) => break Some(format!("sent {other:?} out of turn")),
                Err(why) => break Some(why),
            }
        };
        if let Some(why) = ended {
            let stage = session.stage;
            let pid = session.pid;
            self.end_session(registry);
            if stage == Stage::Ready {
                warn!("hand-over: pid {pid} {why} before it had our counts; serving again");
                return Heard::GoneAfterReady;
            }
            info!("hand-over: pid {pid} {why}; still serving");
            return Heard::Nothing;
        }
        heard
    }

    fn end_session(&mut self, registry: &Registry) {
        if let Some(mut session) = self.session.take() {
            let _ = registry.deregister(&mut session.link.sock);
        }
    }

    /// Sends our listeners, each with its address.
    pub fn offer(
        &mut self,
        registry: &Registry,
        listen: Option<(std::net::SocketAddr, BorrowedFd<'_>)>,
        admin: Option<(std::net::SocketAddr, BorrowedFd<'_>)>,
    ) {
        let Some(session) = self.session.as_mut() else {
            return;
        };
        let msg = Msg::Listeners {
            listen: listen.map(|(a, _)| a),
            admin: admin.map(|(a, _)| a),
        };
        let fds: Vec<BorrowedFd<'_>> = listen.into_iter().chain(admin).map(|(_, fd)| fd).collect();
        match session.link.send(&msg, &fds) {
            Ok(()) => session.stage = Stage::Offered,
            Err(e) => {
                info!(
                    "hand-over: cannot send the listeners to pid {}: {}; still serving",
                    session.pid,
                    describe(&e)
                );
                self.end_session(registry);
            }
        }
    }

    /// Our counts so far, best effort: a successor that does not read now
    /// gets the next ones.
    pub fn counts(&mut self, snapshot: Snapshot) {
        if let Some(session) = self.session.as_mut().filter(|s| s.stage == Stage::Ready) {
            let _ = session.link.offer_line(&Msg::Counts(snapshot));
        }
    }

    /// After the drain: sends the final counts with the recovery lock and
    /// this control socket, and waits (at most 10 s) for `DONE`.
    /// True when the successor has them (or is alive but silent: it holds
    /// the listeners either way); false when it went away first, so we
    /// serve again.
    pub fn finish(&mut self, snapshot: Snapshot, lock: Option<BorrowedFd<'_>>) -> bool {
        let Some(session) = self.session.as_mut() else {
            return false;
        };
        let pid = session.pid;
        let msg = Msg::Final {
            lock: lock.is_some(),
            control: true,
            snapshot,
        };
        let fds: Vec<BorrowedFd<'_>> = lock.into_iter().chain([self.listener.as_fd()]).collect();
        let deadline = Instant::now() + DONE_WAIT;
        let mut flushed = blocking(&session.link.sock).and_then(|()| session.link.flush());
        while matches!(flushed, Ok(false)) && Instant::now() < deadline {
            flushed = session.link.flush();
        }
        if let Err(e) = flushed.and_then(|_| session.link.send(&msg, &fds)) {
            warn!(
                "hand-over: cannot send the final counts to pid {pid}: {}",
                describe(&e)
            );
            return false;
        }
        loop {
            if Instant::now() >= deadline {
                warn!(
                    "hand-over: pid {pid} did not confirm within {DONE_WAIT:?}; exiting, it holds the listeners"
                );
                return true;
            }
            // Each read waits at most READ_SLICE (the socket's timeout).
            match session.link.fill() {
                Io::Done(0) | Io::Failed(_) => {
                    warn!("hand-over: pid {pid} went away before it confirmed; serving again");
                    return false;
                }
                Io::Done(_) | Io::WouldBlock => {}
            }
            if let Ok(Some(Msg::Done)) = session.link.next_msg() {
                info!("hand-over: pid {pid} has our listeners and counts; exiting");
                return true;
            }
        }
    }

    /// A successor that has not said READY within [`READY_WAIT`] loses its
    /// slot, so a hung one cannot block every later hand-over.
    pub fn expire(&mut self, registry: &Registry) {
        if let Some(session) = self.session.as_ref().filter(|s| s.stage != Stage::Ready) {
            info!(
                "hand-over: pid {} did not get ready within {READY_WAIT:?}; still serving",
                session.pid
            );
            self.end_session(registry);
        }
    }

    /// The conversation is over (we serve again, or we exit).
    pub fn forget_session(&mut self, registry: &Registry) {
        self.end_session(registry);
    }

    /// Closes the control socket and removes its name: this process
    /// exits without a successor (we own the recovery file, so the name is
    /// ours).
    pub fn remove(mut self, registry: &Registry) {
        self.end_session(registry);
        let _ = registry.deregister(&mut self.listener);
        if let Err(e) = std::fs::remove_file(&self.path) {
            debug!("cannot remove {}: {}", self.path.display(), describe(&e));
        }
    }
}

/// Makes the conversation blocking, each read and write bounded by
/// [`READ_SLICE`]: the loop is over by then, nothing else waits.
fn blocking(sock: &UnixStream) -> io::Result<()> {
    let sock = socket2::SockRef::from(sock);
    sock.set_nonblocking(false)?;
    sock.set_read_timeout(Some(READ_SLICE))?;
    sock.set_write_timeout(Some(READ_SLICE))
}

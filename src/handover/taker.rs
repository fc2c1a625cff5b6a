//! The new process's side of a hand-over: asks the old one for its
//! listeners before binding, then, from the loop, takes its counts, its
//! recovery lock and its control socket.

use std::fs::File;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::{Duration, Instant};

use log::{info, warn};
use mio::{Interest, Registry, Token};

use super::{Link, Msg, VERSION, connect_control, sender_pid};
use crate::net::{Io, describe};
use crate::recovery::{self, Snapshot, Totals};
use crate::stats::Stats;

/// How long the new process waits for the old one's listeners.
const ASK_WAIT: Duration = Duration::from_secs(5);

/// What the old process handed over at the start.
pub struct Offered {
    link: Link<UnixStream>,
    pub old_pid: u32,
    /// Its client listener, with the address it is bound to.
    pub listen: Option<(SocketAddr, TcpListener)>,
    /// Its admin listener, likewise.
    pub admin: Option<(SocketAddr, TcpListener)>,
}

/// Asks the process behind control socket `path` for its listeners.
/// `None`: no process listens there (start normally). Errors: a hand-over
/// is already in progress, the peer is not ours, it refused or went
/// silent (bounded by 5 s). The old process's pid is the one its answer
/// came from ([`Link::sender`]); until then errors name the socket.
pub fn ask(path: &Path) -> Result<Option<Offered>, String> {
    let Some(stream) = connect_control(path)? else {
        return Ok(None);
    };
    let via = format!("hand-over via {}", path.display());
    let timeouts = stream
        .set_read_timeout(Some(ASK_WAIT))
        .and_then(|()| stream.set_write_timeout(Some(ASK_WAIT)));
    let what = |e: io::Error| format!("{via}: {}", describe(&e));
    timeouts.map_err(what)?;
    let mut link = Link::new(stream);
    let hello = Msg::Hello {
        version: VERSION,
        pid: std::process::id(),
    };
    // A busy old process answers and closes at once, maybe before our
    // greeting is written: its answer is read all the same.
    let greeted = link.send(&hello, &[]);
    let deadline = Instant::now() + ASK_WAIT;
    let msg = loop {
        match link.next_msg() {
            Ok(Some(msg)) => break msg,
            Ok(None) => {}
            Err(why) => return Err(format!("{via}: {why}")),
        }
        if Instant::now() >= deadline {
            return Err(format!("{via}: no answer within {ASK_WAIT:?}"));
        }
        match link.fill() {
            Io::Done(0) if greeted.is_err() => {
                return Err(greeted.map_err(what).err().unwrap_or_default());
            }
            // It went away as we asked: as if it had not been there.
            Io::Done(0) => return Ok(None),
            Io::Done(_) | Io::WouldBlock => {}
            Io::Failed(e) => return Err(what(e)),
        }
    };
    let old_pid = link
        .sender()
        .ok_or_else(|| "its answer came without the sender's credentials".to_string())
        .and_then(|sender| sender_pid(&sender))
        .map_err(|why| format!("{via}: {why}"))?;
    match msg {
        Msg::Listeners { listen, admin } => {
            let mut take = |addr: Option<SocketAddr>| -> Result<_, String> {
                let Some(addr) = addr else {
                    return Ok(None);
                };
                let fd = link.take_fd().ok_or_else(|| {
                    format!("hand-over with pid {old_pid}: the listener for {addr} did not come")
                })?;
                Ok(Some((addr, TcpListener::from(fd))))
            };
            let listen = take(listen)?;
            let admin = take(admin)?;
            Ok(Some(Offered {
                link,
                old_pid,
                listen,
                admin,
            }))
        }
        Msg::Busy { pid } => Err(format!(
            "a hand-over from pid {old_pid} to pid {pid} is already in progress; try again when it is over"
        )),
        Msg::Refused(why) => Err(format!("pid {old_pid} refused the hand-over: {why}")),
        other => Err(format!(
            "hand-over with pid {old_pid}: unexpected {other:?}"
        )),
    }
}

/// What the old process said, for the loop.
pub enum Heard {
    Nothing,
    /// Its last counts (already added), lock and control socket: it exits.
    Final {
        lock: Option<File>,
        control: Option<UnixListener>,
    },
    /// It went away before `FINAL` (a crash, a kill -9): its last counts
    /// are in the recovery file, which is ours to claim now.
    Gone,
}

/// The conversation from `READY` on.
pub struct Taker {
    link: Link<mio::net::UnixStream>,
    pub old_pid: u32,
    /// What of the old process's counts is in our stats already.
    applied: Totals,
}

impl Taker {
    /// Says `READY` (we accept now) and polls the conversation.
    pub fn start(offered: Offered, registry: &Registry, token: Token) -> Result<Taker, String> {
        let old_pid = offered.old_pid;
        let mut link = offered.link;
        let what = |e: io::Error| format!("hand-over with pid {old_pid}: {}", describe(&e));
        link.send(&Msg::Ready, &[]).map_err(what)?;
        link.sock.set_nonblocking(true).map_err(what)?;
        let mut sock = mio::net::UnixStream::from_std(link.sock);
        registry
            .register(&mut sock, token, Interest::READABLE)
            .map_err(what)?;
        info!("hand-over: accepting; pid {old_pid} drains");
        Ok(Taker {
            link: Link::new(sock),
            old_pid,
            applied: Totals::default(),
        })
    }

    /// Reads what the old process sent: counts go into `stats` at once
    /// (totals while it drains, then totals and rate window at the end).
    pub fn read(&mut self, stats: &mut Stats, now_ms: u64) -> Heard {
        loop {
            match self.link.next_msg() {
                Ok(Some(Msg::Counts(snapshot))) => {
                    self.apply_totals(&snapshot.totals, stats);
                    continue;
                }
                Ok(Some(Msg::Final {
                    lock,
                    control,
                    snapshot,
                })) => return self.finish(lock, control, &snapshot, stats, now_ms),
                Ok(Some(other)) => {
                    warn!(
                        "hand-over: pid {} sent {other:?} out of turn; going on without it",
                        self.old_pid
                    );
                    return Heard::Gone;
                }
                Ok(None) => {}
                Err(why) => {
                    warn!(
                        "hand-over: pid {}: {why}; going on without it",
                        self.old_pid
                    );
                    return Heard::Gone;
                }
            }
            match self.link.fill() {
                Io::Done(0) => return Heard::Gone,
                Io::Done(_) => {}
                Io::WouldBlock => return Heard::Nothing,
                Io::Failed(e) => {
                    warn!(
                        "hand-over: reading from pid {}: {}",
                        self.old_pid,
                        describe(&e)
                    );
                    return Heard::Gone;
                }
            }
        }
    }

    /// Adds what `totals` has beyond what was applied.
    fn apply_totals(&mut self, totals: &Totals, stats: &mut Stats) {
        let delta = totals.minus(&self.applied);
        delta.add_to(stats);
        self.applied = self.applied.plus(&delta);
    }

    fn finish(
        &mut self,
        lock: bool,
        control: bool,
        snapshot: &Snapshot,
        stats: &mut Stats,
        now_ms: u64,
    ) -> Heard {
        let lock = lock.then(|| self.link.take_fd()).flatten().map(File::from);
        let control = control
            .then(|| self.link.take_fd())
            .flatten()
            .map(UnixListener::from);
        // Confirmed before anything is used: the old process exits on DONE
        // and serves again without it, so both never hold the lock.
        if let Err(e) = self.link.send(&Msg::Done, &[]) {
            warn!(
                "hand-over: cannot confirm to pid {}: {}; going on without its counts",
                self.old_pid,
                describe(&e)
            );
            return Heard::Gone;
        }
        let rest = Snapshot {
            totals: snapshot.totals.minus(&self.applied),
            ..snapshot.clone()
        };
        self.applied = Totals::default();
        let plan = recovery::restore(&rest, stats, recovery::wall_ms(), now_ms);
        info!(
            "hand-over from pid {} complete: its totals ({} requests) and {} rate buckets added",
            self.old_pid,
            snapshot.totals.msg_req,
            plan.buckets.len()
        );
        Heard::Final { lock, control }
    }

    /// The old process went away before `FINAL`: takes back from `stats`
    /// what came from it, so the recovery file (its last snapshot) is
    /// counted once.
    pub fn forget(&mut self, stats: &mut Stats, registry: &Registry) {
        self.applied.sub_from(stats);
        self.applied = Totals::default();
        let _ = registry.deregister(&mut self.link.sock);
    }

    /// Stops polling the conversation.
    pub fn close(&mut self, registry: &Registry) {
        let _ = registry.deregister(&mut self.link.sock);
    }
}

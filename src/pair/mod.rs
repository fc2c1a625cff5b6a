//! One client connection and its upstream connection, over their whole
//! life: the connect (each forward address in turn), the relay both ways,
//! the client's half-close, and the lingering close that ends it.
//!
//! A pair starts in [`State::Header`] while the PROXY protocol header is
//! read (`--accept-proxy`, in `header`; otherwise it leaves that state at once).
//! Each phase is a [`State`], holding only what that phase has (no upstream
//! socket once the relay is over), and each state has exactly one kind of
//! [`Deadline`]; why a relay ended is a [`Reason`]. A connected pair's
//! drive, both ways and the half-close, is in `relay`. The pair does its own
//! socket I/O through its [`Pipe`]s; the table that owns it
//! ([`crate::pairs`]) registers its sockets, arms its deadline and counts.

mod header;
pub(crate) mod linger;
pub(crate) mod log_line;
mod relay;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use log::debug;
use mio::net::TcpStream;

use crate::net::{self, Io, describe};
use crate::pipe::{Ctx, Fault, Pipe, Side};
use crate::pool::Pool;
pub(crate) use crate::reason::Reason;
use crate::scanner::Direction;
use crate::seqs::Seqs;
use crate::timer::Slot;
use header::read_header;
use linger::{Ending, Linger, Step};
use relay::relay;

/// A client connection and its upstream connection.
pub(crate) struct Pair {
    /// Unique for the process lifetime; slab keys are reused.
    pub id: u64,
    pub client: Side,
    pub state: State,
    pub c2s: Pipe,
    pub s2c: Pipe,
    pub deadline: Slot,
    /// When the pair last moved a byte, for the idle timeout.
    pub last_active: Instant,
    /// In the loop's work list.
    pub scheduled: bool,
    /// A pooled connection was lent to it and no answer line came yet:
    /// `TCP_USER_TIMEOUT` is armed on it (see [`crate::upstream_pool`]).
    pub upstream_on_trial: bool,
    /// The requests outstanding upstream, matched with their answers, and
    /// the connection log's record (with `--log-connections`).
    pub seqs: Seqs,
}

/// Where a pair is in its life.
pub(crate) enum State {
    /// Reading the PROXY protocol header (`--accept-proxy`). It is peeked
    /// at, not read, until complete, so nothing is held here; then exactly
    /// its bytes are consumed. No upstream yet.
    Header,
    /// Waiting for an upstream connection at `--max-upstream-connections`
    /// since `last_active`, in the pool's queue. The client is not read:
    /// its bytes wait in the kernel, within the socket's buffer. It is
    /// peeked at, so that one that leaves without a byte leaves the queue.
    Queued,
    /// Connecting to the forward address number `attempt`. The client's
    /// bytes are read and held meanwhile, up to `--buffer-size`.
    Connecting {
        upstream: Side,
        attempt: u32,
        /// The client sent its FIN before the connect completed.
        client_eof: bool,
    },
    /// Connected: relaying both ways.
    Relaying { upstream: Side, client: Client },
    /// The relay is over and the upstream closed: the client gets what is
    /// queued, a FIN, and its input discarded until its EOF.
    Lingering(Linger),
}

/// The client's side while relaying.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Client {
    Open,
    /// It sent its FIN. Its bytes are flushed, then the upstream's write
    /// side is shut (`upstream_shut`), and answers flow back until each
    /// line it sent is answered or the fin timeout.
    HalfClosed {
        upstream_shut: bool,
    },
}

/// The one deadline a state has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Deadline {
    /// `--proxy-header-timeout` for the PROXY protocol header.
    Header,
    /// `--queue-timeout` for an upstream connection, from when it queued.
    Queue,
    /// `--connect-timeout` for the current forward address.
    Connect,
    /// `--idle-timeout` since the last byte moved.
    Idle,
    /// `--fin-timeout` for the answers to a half-closed client, since the
    /// later of the half-close and the last byte moved.
    Fin,
    /// The bound of the lingering close (`--fin-timeout` since the last
    /// queued byte went out, shorter at exit).
    Linger,
}

/// The timeouts the flags set.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Timeouts {
    pub connect: Duration,
    pub idle: Duration,
    pub fin: Duration,
    /// `--proxy-header-timeout`, from accept.
    pub header: Duration,
    /// `--queue-timeout`.
    pub queue: Duration,
}

/// What a drive came to.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Going on. `requeue`: the read budget ran out with input left;
    /// `moved`: bytes moved; `rearm`: the state now has another deadline.
    Going {
        requeue: bool,
        moved: bool,
        rearm: bool,
    },
    /// The PROXY protocol header is read: the client's address and the one
    /// it connected to, or `None` for the connection's own (`LOCAL`).
    Header(Option<(SocketAddr, SocketAddr)>),
    /// The relay is over.
    End(Reason),
    /// The lingering close is over.
    Closed(Ending),
}

/// What a deadline that came due asks for.
#[derive(Debug)]
pub(crate) enum Due {
    /// Try the next forward address (or give up).
    ConnectTimedOut,
    /// Not due after all (bytes moved since it was armed): again then.
    Later(Instant),
    End(Reason),
    Close(Ending),
}

impl State {
    pub fn deadline(&self) -> Deadline {
        match self {
            State::Header => Deadline::Header,
            State::Queued => Deadline::Queue,
            State::Connecting { .. } => Deadline::Connect,
            State::Relaying {
                client: Client::Open,
                ..
            } => Deadline::Idle,
            State::Relaying {
                client: Client::HalfClosed { .. },
                ..
            } => Deadline::Fin,
            State::Lingering(_) => Deadline::Linger,
        }
    }
}

impl Pair {
    /// A client just accepted: in [`State::Header`] until it is served.
    pub fn accepted(id: u64, client: TcpStream, now: Instant) -> Pair {
        Pair {
            id,
            client: Side::new(client),
            state: State::Header,
            c2s: Pipe::new(Direction::ClientToServer),
            s2c: Pipe::new(Direction::ServerToClient),
            deadline: Slot::default(),
            last_active: now,
            scheduled: false,
            upstream_on_trial: false,
            seqs: Seqs::default(),
        }
    }

    /// Waits for an upstream connection (`--max-upstream-connections`).
    pub fn queued(&mut self, now: Instant) {
        if matches!(self.state, State::Header) {
            self.state = State::Queued;
            self.last_active = now;
        }
    }

    /// The upstream connect to forward address `attempt` started (or a
    /// pooled connection was taken: [`Pair::connected`] follows at once).
    pub fn connecting(&mut self, upstream: TcpStream, attempt: u32) {
        if matches!(self.state, State::Header | State::Queued) {
            self.state = State::Connecting {
                upstream: Side::new(upstream),
                attempt,
                client_eof: false,
            };
        }
    }

    /// True when closing the upstream now would cut the client's request
    /// stream short: bytes the client sent are still held, or it stopped
    /// inside a line without closing (a reset, a timeout, the drain). A
    /// FIN then would let the server take a truncated last line for a
    /// whole one (servers answer a last line at EOF): a reset says the
    /// stream was cut. A client that half-closed after a partial line
    /// meant it, and gets the FIN.
    pub fn upstream_cut(&self) -> bool {
        if self.upstream_ref().is_none() {
            return false;
        }
        self.c2s.pending() > 0 || (!self.client_sent_fin() && !self.c2s.at_frame_boundary())
    }

    /// The client's FIN has been read (while connecting or relaying).
    fn client_sent_fin(&self) -> bool {
        match &self.state {
            State::Connecting { client_eof, .. } => *client_eof,
            State::Relaying { client, .. } => *client != Client::Open,
            State::Header | State::Queued | State::Lingering(_) => false,
        }
    }

    fn upstream_ref(&self) -> Option<&Side> {
        match &self.state {
            State::Connecting { upstream, .. } | State::Relaying { upstream, .. } => Some(upstream),
            State::Header | State::Queued | State::Lingering(_) => None,
        }
    }

    /// True when closing the client now would cut its answer stream short:
    /// bytes read from the server are still held for it. Its close is then
    /// a reset, never a FIN after a truncated stream (a bound ran out).
    pub fn client_cut(&self) -> bool {
        self.s2c.pending() > 0
    }

    /// The upstream connection, while there is one.
    pub fn upstream(&mut self) -> Option<&mut Side> {
        match &mut self.state {
            State::Connecting { upstream, .. } | State::Relaying { upstream, .. } => Some(upstream),
            State::Header | State::Queued | State::Lingering(_) => None,
        }
    }

    /// True when the session ended cleanly, so that its upstream
    /// connection can serve another client: the client closed on a frame
    /// boundary; every line it sent went upstream and was answered with
    /// exactly one line, delivered; no request is outstanding; no line
    /// went by whose answer cannot be told by its seq (a malformed frame,
    /// an answer that matched nothing, a request past the tracking cap:
    /// with one of those, equal line counts can hide an answer still to
    /// come); nothing is buffered either way; the upstream's write side is
    /// open and it sent no FIN. Anything else (a partial line, an answer
    /// still to come, an extra line) could put one client's answer in
    /// another's session.
    pub fn reusable(&self) -> bool {
        let State::Relaying {
            upstream,
            client: Client::HalfClosed {
                upstream_shut: false,
            },
        } = &self.state
        else {
            return false;
        };
        !upstream.read_closed
            && self.c2s.pending() == 0
            && self.s2c.pending() == 0
            && self.c2s.at_frame_boundary()
            && self.s2c.at_frame_boundary()
            && self.c2s.lines == self.s2c.lines
            && self.seqs.outstanding() == 0
            && !self.seqs.unmatchable
    }

    /// The connect completed (or a pooled connection was taken): relay,
    /// half-closed already if the client's FIN came first; the connection
    /// log, when on, notes the upstream address used.
    pub fn connected(&mut self, now: Instant) {
        let old = std::mem::replace(
            &mut self.state,
            State::Lingering(Linger::new(Reason::Shutdown, false)),
        );
        self.state = match old {
            State::Connecting {
                mut upstream,
                client_eof,
                ..
            } => {
                upstream.writable = true;
                let client = match client_eof {
                    true => Client::HalfClosed {
                        upstream_shut: false,
                    },
                    false => Client::Open,
                };
                State::Relaying { upstream, client }
            }
            other => other,
        };
        self.last_active = now;
        if self.seqs.log.is_some() {
            let addr = self.upstream().and_then(|u| u.stream.peer_addr().ok());
            if let Some(rec) = self.seqs.log.as_deref_mut() {
                rec.upstream = addr;
            }
        }
    }

    /// Ends the relay: the upstream (if any) is handed back to be closed,
    /// the bytes the client sent that it will never take are dropped, and
    /// the client starts its lingering close. `Err` when it had already
    /// started. An upstream whose request stream is cut (see
    /// [`Pair::upstream_cut`]) is set to close with a reset.
    pub fn stop_relaying(&mut self, reason: Reason, pool: &mut Pool) -> Result<Option<Side>, ()> {
        if matches!(self.state, State::Lingering(_)) {
            return Err(());
        }
        let client_eof = self.client_sent_fin();
        if self.upstream_cut()
            && let Some(upstream) = self.upstream_ref()
        {
            net::reset_on_close(&upstream.stream);
        }
        let old = std::mem::replace(
            &mut self.state,
            State::Lingering(Linger::new(reason, client_eof)),
        );
        self.c2s.discard(pool);
        Ok(match old {
            State::Connecting { upstream, .. } | State::Relaying { upstream, .. } => Some(upstream),
            State::Header | State::Queued | State::Lingering(_) => None,
        })
    }

    /// Bytes read but not yet written, both ways.
    pub fn buffered(&self) -> usize {
        self.c2s.pending().saturating_add(self.s2c.pending())
    }

    /// Marks writable each side this pair holds bytes for, so that the
    /// next drive tries the write; true when there is such a side. A peer
    /// that reads slowly frees its send buffer below the kernel's wake-up
    /// mark (a third of the buffer), so no writable event comes while it
    /// still takes bytes: a deadline that slides with progress tries the
    /// write once before it cuts.
    pub fn probe_writes(&mut self) -> bool {
        let to_client = self.s2c.pending() > 0;
        if to_client {
            self.client.writable = true;
        }
        let to_upstream = self.c2s.pending() > 0;
        let upstream = match self.upstream() {
            Some(up) if to_upstream => {
                up.writable = true;
                true
            }
            _ => false,
        };
        to_client || upstream
    }

    /// What the deadline that came due at `now` asks for. The idle and the
    /// fin timeouts count from the last byte moved: a half-closed client
    /// that is still taking its answers is not cut while they flow.
    pub fn due(&self, now: Instant, t: &Timeouts) -> Due {
        let unless_moved = |after: Duration, reason: Reason| {
            let until = self.last_active + after;
            if until <= now {
                Due::End(reason)
            } else {
                Due::Later(until)
            }
        };
        match self.state.deadline() {
            Deadline::Header => Due::End(Reason::ProxyHeaderMissing),
            Deadline::Queue => Due::End(Reason::QueueTimeout),
            Deadline::Connect => Due::ConnectTimedOut,
            Deadline::Idle => unless_moved(t.idle, Reason::IdleTimeout),
            Deadline::Fin => unless_moved(t.fin, Reason::FinTimeout),
            // While queued answers still go out, the bound counts from the
            // last byte that went (a client reading at its own pace is not
            // cut); once they are out, from the FIN.
            Deadline::Linger => match self.last_active + t.fin {
                until if self.s2c.pending() > 0 && until > now => Due::Later(until),
                _ => Due::Close(Ending::Bound),
            },
        }
    }

    /// Moves what the sockets allow, within `ctx.budget` bytes read per
    /// direction.
    pub fn drive(&mut self, ctx: &mut Ctx<'_>) -> Outcome {
        let id = self.id;
        let Pair {
            client,
            state,
            c2s,
            s2c,
            seqs,
            ..
        } = self;
        match state {
            State::Header => read_header(id, client),
            State::Queued => queued_peek(id, client),
            State::Lingering(l) => match l.drive(client, s2c, ctx) {
                Step::Wait { moved } => Outcome::Going {
                    requeue: false,
                    moved,
                    rearm: false,
                },
                Step::Requeue => Outcome::Going {
                    requeue: true,
                    moved: false,
                    rearm: false,
                },
                Step::Done(ending) => Outcome::Closed(ending),
            },
            // Bytes are held, not written, until the connect completes.
            State::Connecting {
                upstream,
                client_eof,
                ..
            } => match c2s.pump(client, upstream, false, seqs, ctx) {
                // Bytes read while connecting are all held: none held at
                // the client's FIN means it sent nothing and wants nothing,
                // so it does not wait out the connect (every line it sent,
                // none, is answered).
                Ok(p) if p.eof && c2s.pending() == 0 => Outcome::End(Reason::Answered),
                Ok(p) => {
                    *client_eof |= p.eof;
                    Outcome::Going {
                        requeue: p.exhausted,
                        moved: p.moved,
                        rearm: false,
                    }
                }
                Err(Fault::Source(e)) => {
                    debug!("pair {id}: client read failed: {}", describe(&e));
                    Outcome::End(Reason::ClientFailed)
                }
                Err(Fault::Destination(_)) => Outcome::End(Reason::UpstreamFailed),
            },
            State::Relaying {
                upstream,
                client: half,
            } => relay(id, client, upstream, half, c2s, s2c, seqs, ctx),
        }
    }
}

/// One drive of a queued client: a peek (nothing is read) for an end of
/// file before any byte, a client that sent nothing and wants nothing: it
/// ends at once (`client_closed`) instead of holding its place in the queue
/// until its turn or the queue timeout. Bytes waiting, with a FIN after
/// them or not, are a request to serve: they stay in the kernel.
fn queued_peek(id: u64, client: &mut Side) -> Outcome {
    let wait = Outcome::Going {
        requeue: false,
        moved: false,
        rearm: false,
    };
    if !client.readable {
        return wait;
    }
    let mut byte = [0u8; 1];
    match net::io(|| client.stream.peek(&mut byte)) {
        Io::Done(0) => Outcome::End(Reason::Answered),
        // The peeked bytes stay readable for the relay once served
        // (`readable` stays set: no new edge will come for them).
        Io::Done(_) => wait,
        Io::WouldBlock => {
            client.readable = false;
            wait
        }
        Io::Failed(e) => {
            debug!("pair {id}: client read failed: {}", describe(&e));
            Outcome::End(Reason::ClientFailed)
        }
    }
}

#[cfg(test)]
mod tests;

//! Lingering close: how a pair ends once the proxy is done with its client,
//! so that answers already queued reach the client.
//!
//! Closing a socket that still has unread input makes the kernel send a
//! reset, and a reset destroys whatever the client has not read yet. So a
//! lingering client first gets every byte still queued, then a FIN
//! (`shutdown(Write)`), and then its input is read into the loop's scratch
//! buffer and discarded until its EOF. Only then is the socket closed. The
//! wait is bounded in time (the pair's linger deadline) and in bytes
//! discarded ([`MAX_DISCARD`]); the upstream is already closed, and no
//! pooled buffer is held once the queued bytes are out.

use std::fmt;
use std::io::{self, Read};
use std::net::Shutdown;

use crate::net::{self, Io, describe};
use crate::pipe::{Ctx, Fault, Pipe, Side};
use crate::reason::Reason;

/// Most input discarded from a lingering client before giving up on it.
pub const MAX_DISCARD: u32 = 1 << 20;

/// A client on its way out: why the relay ended, and how far the close is.
#[derive(Debug)]
pub(crate) struct Linger {
    pub reason: Reason,
    fin_sent: bool,
    /// The client's EOF has been read: nothing more can arrive.
    client_eof: bool,
    discarded: u32,
}

/// How a lingering close ended.
#[derive(Debug)]
pub(crate) enum Ending {
    /// The client read everything and closed (or had closed): a clean end.
    Clean,
    /// The client reset, or an I/O error.
    Failed(io::Error),
    /// The client sent more than [`MAX_DISCARD`] after the FIN.
    TooMuch,
    /// Its deadline came first (a reset if input is left unread).
    Bound,
    /// The proxy cut the relay (a timeout, the drain's end) inside an
    /// answer line: a reset at once, so that the client never takes the
    /// line's first part, then a FIN, for a whole answer.
    CutMidLine,
    /// The server reset the upstream connection inside an answer line:
    /// what was read from it went out, and the client gets a reset too,
    /// never a FIN, which would pass the partial last line off as a whole
    /// answer.
    UpstreamReset,
    /// No lingering close: the client failed, so both sides close now.
    AtOnce,
}

impl fmt::Display for Ending {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ending::Clean => f.write_str("closed"),
            Ending::Failed(e) => write!(f, "client failed while lingering: {}", describe(e)),
            Ending::TooMuch => write!(
                f,
                "client sent over {MAX_DISCARD} bytes after the FIN; closing"
            ),
            Ending::Bound => f.write_str("lingering close reached its bound"),
            Ending::CutMidLine => f.write_str("reset: the relay was cut inside an answer line"),
            Ending::UpstreamReset => f.write_str("reset: passing on the server's reset"),
            Ending::AtOnce => f.write_str("closed at once"),
        }
    }
}

/// What one drive of a lingering client came to.
#[derive(Debug)]
pub(crate) enum Step {
    /// Waiting for the client to read or to close; `moved`: queued bytes
    /// went out in this drive (the bound counts from the last of them).
    Wait { moved: bool },
    /// Read budget used up with input left: drive again next turn.
    Requeue,
    /// The close is over.
    Done(Ending),
}

impl Linger {
    pub fn new(reason: Reason, client_eof: bool) -> Linger {
        Linger {
            reason,
            fin_sent: false,
            client_eof,
            discarded: 0,
        }
    }

    /// Nothing to deliver and nothing more can arrive: close at once.
    pub fn over_before_it_starts(&self, s2c: &Pipe) -> bool {
        self.client_eof && s2c.pending() == 0
    }

    /// True when the relay ended on the server's reset (or failure) with
    /// the bytes read from it ending inside a line: the client's close is
    /// then a reset too. On a line boundary every answer read is whole, and
    /// the FIN keeps them all (a reset would drop what the kernel still
    /// holds for a slow reader); the unanswered requests show the failure.
    pub fn passes_reset(&self, s2c: &Pipe) -> bool {
        self.reason == Reason::UpstreamFailed && !s2c.at_frame_boundary()
    }

    /// Delivers what `s2c` holds, sends the FIN, then discards input,
    /// reading at most `ctx.budget` bytes into the scratch buffer. After
    /// the server's reset inside a line, the close is a reset once the
    /// bytes are out.
    pub fn drive(&mut self, client: &mut Side, s2c: &mut Pipe, ctx: &mut Ctx<'_>) -> Step {
        if s2c.pending() > 0 {
            match s2c.flush_to(client, ctx.pool) {
                Ok(moved) if s2c.pending() > 0 => return Step::Wait { moved },
                Ok(_) => {}
                Err(Fault::Destination(e) | Fault::Source(e)) => {
                    return Step::Done(Ending::Failed(e));
                }
            }
        }
        if self.passes_reset(s2c) {
            return Step::Done(Ending::UpstreamReset);
        }
        if !self.fin_sent {
            if self.client_eof {
                // Nothing unread can be left: close() sends the FIN after
                // the bytes the kernel still holds.
                return Step::Done(Ending::Clean);
            }
            if let Err(e) = client.stream.shutdown(Shutdown::Write) {
                return Step::Done(Ending::Failed(e));
            }
            self.fin_sent = true;
            client.readable = true;
        }
        let mut left = ctx.budget;
        while client.readable {
            if left == 0 {
                return Step::Requeue;
            }
            let want = left.min(ctx.scratch.len());
            let Some(buf) = ctx.scratch.get_mut(..want) else {
                return Step::Requeue;
            };
            match net::io(|| client.stream.read(buf)) {
                Io::Done(0) => return Step::Done(Ending::Clean),
                Io::Done(n) => {
                    left = left.saturating_sub(n);
                    let n = u32::try_from(n).unwrap_or(u32::MAX);
                    self.discarded = self.discarded.saturating_add(n);
                    if self.discarded > MAX_DISCARD {
                        return Step::Done(Ending::TooMuch);
                    }
                    if (n as usize) < want && !client.read_closed {
                        client.readable = false;
                    }
                }
                Io::WouldBlock => client.readable = false,
                Io::Failed(e) => return Step::Done(Ending::Failed(e)),
            }
        }
        Step::Wait { moved: false }
    }
}

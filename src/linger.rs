//! Lingering close: how a client connection ends once the proxy is done
//! with it, so that answers already queued reach the client.
//!
//! Closing a socket that still has unread input makes the kernel send a
//! reset, and a reset destroys whatever the client has not read yet. So a
//! lingering client first gets every byte still queued, then a FIN
//! (`shutdown(Write)`), and then its input is read into the loop's scratch
//! buffer and discarded until its EOF. Only then is the socket closed. The
//! wait is bounded in time (the caller's deadline) and in bytes discarded
//! ([`MAX_DISCARD`]); the upstream is already closed, and no pooled buffer
//! is held once the queued bytes are out.

use std::io::{self, Read};
use std::net::Shutdown;

use crate::net::{self, Io};
use crate::pipe::{Fault, Pipe, Side};
use crate::pool::Pool;
use crate::timer::Slot;

/// Most input discarded from a lingering client before giving up on it.
pub const MAX_DISCARD: u64 = 1 << 20;

/// A client on its way out.
pub struct Linger {
    /// The pair's id, for logs and timers.
    pub id: u64,
    pub client: Side,
    /// Answers still to deliver before the FIN.
    s2c: Pipe,
    fin_sent: bool,
    /// The client's EOF has been read: nothing more can arrive.
    client_eof: bool,
    discarded: u64,
    pub(crate) deadline: Slot,
    pub scheduled: bool,
}

/// How a lingering client ended, or that it goes on.
#[derive(Debug)]
pub enum Step {
    /// Waiting for the client to read or to close.
    Wait,
    /// Read budget used up with input left: drive again next turn.
    Requeue,
    /// The client read everything and closed (or had closed): a clean end.
    Done,
    /// The client reset, or an I/O error: close now.
    Failed(io::Error),
    /// The client sent more than [`MAX_DISCARD`] after the FIN.
    TooMuch,
}

impl Linger {
    pub fn new(id: u64, client: Side, s2c: Pipe, client_eof: bool) -> Linger {
        Linger {
            id,
            client,
            s2c,
            fin_sent: false,
            client_eof,
            discarded: 0,
            deadline: Slot::default(),
            scheduled: false,
        }
    }

    /// Bytes still to deliver.
    pub fn pending(&self) -> usize {
        self.s2c.pending()
    }

    /// Delivers what is queued, sends the FIN, then discards input, reading
    /// at most `budget` bytes into `scratch`.
    pub fn drive(&mut self, scratch: &mut [u8], pool: &mut Pool, budget: usize) -> Step {
        if self.s2c.pending() > 0 {
            match self.s2c.flush_to(&mut self.client, pool) {
                Ok(_) if self.s2c.pending() > 0 => return Step::Wait,
                Ok(_) => {}
                Err(Fault::Destination(e) | Fault::Source(e)) => return Step::Failed(e),
            }
        }
        if !self.fin_sent {
            if self.client_eof {
                // Nothing unread can be left: close() sends the FIN after
                // the bytes the kernel still holds.
                return Step::Done;
            }
            if let Err(e) = self.client.stream.shutdown(Shutdown::Write) {
                return Step::Failed(e);
            }
            self.fin_sent = true;
            self.client.readable = true;
        }
        let mut left = budget;
        while self.client.readable {
            if left == 0 {
                return Step::Requeue;
            }
            let want = left.min(scratch.len());
            let Some(buf) = scratch.get_mut(..want) else {
                return Step::Requeue;
            };
            match net::io(|| self.client.stream.read(buf)) {
                Io::Done(0) => return Step::Done,
                Io::Done(n) => {
                    left = left.saturating_sub(n);
                    self.discarded = self.discarded.saturating_add(n as u64);
                    if self.discarded > MAX_DISCARD {
                        return Step::TooMuch;
                    }
                    if n < want && !self.client.read_closed {
                        self.client.readable = false;
                    }
                }
                Io::WouldBlock => self.client.readable = false,
                Io::Failed(e) => return Step::Failed(e),
            }
        }
        Step::Wait
    }

    /// Returns the pooled buffer, if any (the linger ends).
    pub fn release(&mut self, pool: &mut Pool) {
        self.s2c.discard(pool);
    }
}

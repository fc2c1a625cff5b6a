//! The relay of a connected pair: client to upstream, upstream to client,
//! the client's half-close, and when the session is over.

use std::net::Shutdown;

use log::debug;

use super::{Client, Outcome, Reason};
use crate::net::describe;
use crate::pipe::{Ctx, Fault, Pipe, Side};
use crate::seqs::Seqs;

/// One drive of a connected pair: client to upstream, then upstream to
/// client, then the half-close's progress.
#[allow(clippy::too_many_arguments)] // the pair's fields, split for the borrow checker
pub(super) fn relay(
    id: u64,
    client: &mut Side,
    upstream: &mut Side,
    half: &mut Client,
    c2s: &mut Pipe,
    s2c: &mut Pipe,
    seqs: &mut Seqs,
    ctx: &mut Ctx<'_>,
) -> Outcome {
    let (mut requeue, mut moved, mut rearm) = (false, false, false);
    let mut ended = None;
    match c2s.pump(client, upstream, true, seqs, ctx) {
        Ok(p) => {
            if p.eof && *half == Client::Open {
                *half = Client::HalfClosed {
                    upstream_shut: false,
                };
                rearm = true;
            }
            requeue |= p.exhausted;
            moved |= p.moved;
        }
        Err(Fault::Source(e)) => {
            debug!("pair {id}: client read failed: {}", describe(&e));
            return Outcome::End(Reason::ClientFailed);
        }
        Err(Fault::Destination(e)) => {
            debug!("pair {id}: upstream write failed: {}", describe(&e));
            ended = Some(Reason::UpstreamFailed);
        }
    }
    // A write to the upstream failed (often a reset while requests were
    // still going up): the answers it sent before are still queued in its
    // socket, so read them once, up to what the client can take; the
    // lingering close then delivers them. The read ends at the reset.
    if ended.is_some() {
        upstream.readable = true;
    }
    match s2c.pump(upstream, client, true, seqs, ctx) {
        Ok(p) => {
            if p.eof {
                ended.get_or_insert(Reason::UpstreamClosed);
            }
            requeue |= p.exhausted;
            moved |= p.moved;
        }
        Err(Fault::Source(e)) => {
            debug!("pair {id}: upstream read failed: {}", describe(&e));
            ended.get_or_insert(Reason::UpstreamFailed);
        }
        Err(Fault::Destination(e)) => {
            debug!("pair {id}: client write failed: {}", describe(&e));
            return Outcome::End(Reason::ClientFailed);
        }
    }
    if let Some(reason) = ended {
        // What the upstream sent is delivered by the lingering close. A
        // server that closes once it has answered every line of a client
        // that closed first ends the session normally: often its last
        // answer and its FIN come in one read.
        let answered = reason == Reason::UpstreamClosed
            && matches!(half, Client::HalfClosed { .. })
            && all_answered(c2s, s2c, seqs);
        return Outcome::End(if answered { Reason::Answered } else { reason });
    }
    if let Client::HalfClosed { upstream_shut } = half {
        // A pooled connection is kept open for the next client, unless the
        // client left a partial line (its session cannot end cleanly).
        let keep = ctx.keep_upstream && c2s.at_frame_boundary();
        // A Foo server answers each line with one line: once every line
        // the client sent is answered and delivered, nothing is left.
        if c2s.pending() == 0 && s2c.pending() == 0 && all_answered(c2s, s2c, seqs) {
            // The upstream is closed (or pooled) now: its close sends the
            // FIN, so a shutdown first would be a syscall for nothing.
            return Outcome::End(Reason::Answered);
        }
        if c2s.pending() == 0 && !*upstream_shut && !keep {
            *upstream_shut = true;
            if let Err(e) = upstream.stream.shutdown(Shutdown::Write) {
                debug!("pair {id}: upstream shutdown failed: {}", describe(&e));
            }
        }
    }
    Outcome::Going {
        requeue,
        moved,
        rearm,
    }
}

/// Whether every line a half-closed client sent has its answer: as many
/// lines back as went up (a partial last line, with no newline before the
/// FIN, counts: servers that read to EOF answer it too), and no tracked
/// request still outstanding (a duplicate or stray answer can make the
/// line counts match while a request waits).
fn all_answered(c2s: &Pipe, s2c: &Pipe, seqs: &Seqs) -> bool {
    let sent = c2s
        .lines
        .saturating_add(u64::from(!c2s.at_frame_boundary()));
    s2c.lines >= sent && seqs.outstanding() == 0
}

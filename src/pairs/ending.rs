//! How a pair ends: its relay stops for a reason, then a lingering close or a close at once, counted and logged; and every pair at the drain's end and at exit.

use std::time::{Instant, SystemTime};

use log::{debug, warn};

use super::{Env, Pairs, lent};
use crate::logging::suppressed_note;
use crate::net;
use crate::output;
use crate::pair::linger::Ending;
use crate::pair::log_line::{self, Ended};
use crate::pair::{Reason, State};
use crate::stats::add;
use crate::timer::Timer;

impl Pairs {
    /// The drain is over: every pair still relaying gets its lingering
    /// close, and no lingering close lasts past `until`.
    pub fn shut_down(&mut self, until: Instant, env: &mut Env<'_>) {
        self.exit = Some(until);
        let keys: Vec<usize> = self.slab.iter().map(|(k, _)| k).collect();
        for key in keys {
            self.end(key, Reason::Shutdown, env);
            if let Some(pair) = self.slab.get(key)
                && pair.deadline.when().is_some_and(|t| t > until)
            {
                self.arm(key, until, env);
            }
        }
    }

    /// Closes every pair now, at exit (a reset where input is unread).
    pub fn close_all(&mut self, env: &mut Env<'_>) {
        let keys: Vec<usize> = self.slab.iter().map(|(k, _)| k).collect();
        for key in keys {
            self.close(key, Ending::Bound, env);
        }
    }

    /// Ends the relay for `reason`: the upstream is closed now, and the
    /// client either gets its lingering close or, if it failed or is over
    /// its per-client limit, is closed at once too.
    pub(super) fn end(&mut self, key: usize, reason: Reason, env: &mut Env<'_>) {
        let Some(pair) = self.slab.get_mut(key) else {
            return;
        };
        let reusable = self.keep_upstream && reason == Reason::Answered && pair.reusable();
        let relaying = matches!(pair.state, State::Relaying { .. });
        if let (State::Queued, Some(up)) = (&pair.state, self.upstream_pool.as_mut()) {
            let timed_out = reason == Reason::QueueTimeout;
            up.forget(key, pair.id, timed_out, env.stats);
        }
        let Ok(upstream) = pair.stop_relaying(reason, &mut self.pool) else {
            return;
        };
        let mut released = false;
        if let Some(upstream) = upstream {
            self.upstreams.release(key, &upstream.stream);
            match self.upstream_pool.as_mut() {
                Some(up) if reusable => up.give_back(upstream.stream, &mut lent(env)),
                // Dropped: closing the socket takes it out of the poll (no
                // other descriptor shares it), so no EPOLL_CTL_DEL first.
                Some(up) => up.closed(relaying, env.stats),
                None => {}
            }
            released = self.upstream_pool.is_some();
        }
        let Some(pair) = self.slab.get_mut(key) else {
            return;
        };
        // No answer can come any more.
        pair.seqs.finish(env.stats);
        if matches!(
            reason,
            Reason::ProxyHeaderMissing | Reason::ProxyHeaderInvalid
        ) {
            add(&mut env.stats.proxy_header_errors, 1);
            if let Some(suppressed) = self.header_log.ready(env.now) {
                let peer = pair.client.stream.peer_addr();
                let peer = peer.map_or_else(
                    |_| "a client".into(),
                    |p| format!("client {}", crate::net::plain(p)),
                );
                warn!(
                    "closing {peer}: {reason} (--accept-proxy: is the balancer sending one?){}",
                    suppressed_note(suppressed)
                );
            }
        }
        // Bytes after the last newline form no frame; counted here, once
        // per connection, so that the frame counts can be reconciled.
        if !pair.c2s.at_frame_boundary() {
            add(&mut env.stats.partial_frames_client_to_server, 1);
        }
        if !pair.s2c.at_frame_boundary() {
            add(&mut env.stats.partial_frames_server_to_client, 1);
        }
        debug!("pair {}: relay ended ({reason})", pair.id);
        // The proxy's own cut inside an answer line: a FIN would pass the
        // line's first part off as a whole answer (`ACK 94` of `ACK 94
        // data`), so the client gets a reset at once instead.
        let cut = matches!(
            reason,
            Reason::IdleTimeout | Reason::FinTimeout | Reason::Shutdown
        ) && !pair.s2c.at_frame_boundary();
        if released {
            self.serve_queue(env);
        }
        match reason {
            _ if cut => self.close(key, Ending::CutMidLine, env),
            // A client over its limit is not kept for a lingering close:
            // that would let one address hold every slot.
            Reason::ClientFailed | Reason::ClientLimit => self.close(key, Ending::AtOnce, env),
            _ => self.begin_linger(key, env),
        }
    }

    /// Starts the lingering close of a pair whose relay is over: at once
    /// when there is nothing to do, else driven now, bounded by
    /// `--fin-timeout` (and by the exit).
    pub(super) fn begin_linger(&mut self, key: usize, env: &mut Env<'_>) {
        let Some(pair) = self.slab.get_mut(key) else {
            return;
        };
        if let State::Lingering(linger) = &pair.state
            && linger.over_before_it_starts(&pair.s2c)
        {
            self.close(key, Ending::Clean, env);
            return;
        }
        // Try at once; the events say when to try again.
        pair.client.readable = true;
        pair.client.writable = true;
        self.rearm(key, env);
        self.schedule(key);
    }

    /// Closes a pair for good: both sockets, its deadline, its buffers.
    pub(super) fn close(&mut self, key: usize, ending: Ending, env: &mut Env<'_>) {
        let Some(mut pair) = self.slab.try_remove(key) else {
            return;
        };
        pair.deadline
            .set(env.timers, None, pair.id, Timer::Pair(key));
        let relaying = matches!(pair.state, State::Relaying { .. });
        // A stream cut short ends with a reset, never a FIN: the peer must
        // not take a truncated stream for a whole one. The server's reset
        // inside an answer line is passed on as one.
        let passes_reset = matches!(&pair.state, State::Lingering(l) if l.passes_reset(&pair.s2c));
        if pair.client_cut() || passes_reset || matches!(ending, Ending::CutMidLine) {
            net::reset_on_close(&pair.client.stream);
        }
        let upstream_cut = pair.upstream_cut();
        // The sockets are dropped below: closing them takes them out of
        // the poll, so no EPOLL_CTL_DEL first.
        if let Some(upstream) = pair.upstream() {
            if upstream_cut {
                net::reset_on_close(&upstream.stream);
            }
            self.upstreams.release(key, &upstream.stream);
            if let Some(up) = self.upstream_pool.as_mut() {
                up.closed(relaying, env.stats);
            }
        }
        if let Some(limits) = self.per_client.as_mut() {
            limits.release(key);
        }
        pair.c2s.discard(&mut self.pool);
        pair.s2c.discard(&mut self.pool);
        let reason = match &pair.state {
            State::Lingering(linger) => linger.reason,
            _ => {
                pair.seqs.finish(env.stats);
                Reason::Shutdown
            }
        };
        debug!("pair {}: {ending} ({reason})", pair.id);
        env.stats.connections_active = env.stats.connections_active.saturating_sub(1);
        if let Some(n) = env.stats.matching.closed.get_mut(reason.index()) {
            add(n, 1);
        }
        if let (Some(format), Some(rec)) = (self.conn_log, pair.seqs.log.as_deref()) {
            let end = Ended {
                id: pair.id,
                reason,
                unanswered: pair.seqs.unanswered,
                slowest_us: pair.seqs.answered().then_some(pair.seqs.slowest_us),
                now: env.now,
                wall: SystemTime::now(),
            };
            // Dropped and counted when stderr is not read: never blocks.
            output::log_line(log_line::line(rec, &end, format));
        }
    }
}

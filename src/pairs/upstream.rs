//! A pair's upstream connection: the connect to each forward address in turn, or a pooled connection, and the queue of clients waiting for one (`--upstream-pool`, `--max-upstream-connections`).

use std::io;

use log::debug;
use mio::net::TcpStream;

use super::{Env, Opened, Pairs, lent, upstream_token};
use crate::pair::{Pair, Reason, State};
use crate::pipe::Side;
use crate::upstream::NotStarted;

/// A pooled connection lent to `pair` brought its first answer line: the
/// server is alive, and `TCP_USER_TIMEOUT` is lifted so that a live server
/// that reads slowly (a zero window, which the timeout would also bound)
/// is never cut.
pub(super) fn upstream_confirmed(pair: &mut Pair) {
    pair.upstream_on_trial = false;
    if let Some(up) = pair.upstream() {
        // Best effort: if it fails the timeout stays, as on a fresh trial.
        let _ = socket2::SockRef::from(&up.stream).set_tcp_user_timeout(None);
    }
}

impl Pairs {
    /// Starts pair `key`'s connect to the first forward address that
    /// takes one.
    pub(super) fn connect_upstream(&mut self, key: usize, env: &mut Env<'_>) -> Opened {
        let token = upstream_token(key);
        let started = self
            .upstreams
            .connect(key, 0, token, env.registry, env.stats, env.now);
        match started {
            Ok((attempt, upstream)) => {
                if let Some(pair) = self.slab.get_mut(key) {
                    pair.connecting(upstream, attempt);
                    pair.last_active = env.now;
                }
                if let Some(up) = self.upstream_pool.as_mut() {
                    up.opened(env.stats);
                }
                self.rearm(key, env);
                // Client bytes that came with the header are read now.
                self.schedule(key);
                Opened::Yes
            }
            Err(NotStarted::OutOfResources(e)) => {
                self.end(key, Reason::NoResources, env);
                Opened::OutOfResources(e)
            }
            Err(NotStarted::Failed(e)) => {
                self.upstreams.failed(&e, env.stats, env.now);
                self.end(key, Reason::Refused, env);
                Opened::Yes
            }
        }
    }

    /// Pair `key` takes pooled connection `stream` (registered under the
    /// pair's upstream token already): it relays at once.
    pub(super) fn attach_pooled(&mut self, key: usize, stream: TcpStream, env: &mut Env<'_>) {
        let Some(pair) = self.slab.get_mut(key) else {
            return;
        };
        pair.connecting(stream, 0);
        pair.connected(env.now);
        pair.upstream_on_trial = true;
        debug!("pair {}: pooled upstream connection taken", pair.id);
        // Client bytes that came while it waited are read now.
        pair.client.readable = true;
        self.rearm(key, env);
        self.schedule(key);
    }

    /// Serves waiting clients, oldest first, while a pooled connection is
    /// idle or another may be opened; then tops up the spares.
    pub(super) fn serve_queue(&mut self, env: &mut Env<'_>) {
        if self.serving_queue {
            return;
        }
        self.serving_queue = true;
        while let Some(up) = self.upstream_pool.as_mut() {
            let Some((key, id)) = up.front() else {
                break;
            };
            let waiting = self
                .slab
                .get(key)
                .is_some_and(|p| p.id == id && matches!(p.state, State::Queued));
            if !waiting {
                up.pop_front(None, env.stats);
                continue;
            }
            if let Some(stream) = up.take(upstream_token(key), &mut self.upstreams, &mut lent(env))
            {
                up.pop_front(Some(env.now), env.stats);
                self.attach_pooled(key, stream, env);
            } else if up.may_open() {
                up.pop_front(Some(env.now), env.stats);
                // Running out of descriptors here is paused on by the next
                // accept that meets it.
                let _ = self.connect_upstream(key, env);
                self.schedule(key);
            } else {
                break;
            }
        }
        if let Some(up) = self.upstream_pool.as_mut() {
            up.refill(&mut self.upstreams, &mut lent(env));
        }
        self.serving_queue = false;
    }

    /// Opens the spares `--upstream-spare` asks for, at start.
    pub fn start_upstream_pool(&mut self, env: &mut Env<'_>) {
        self.serve_queue(env);
    }

    /// A pooled connection's deadline came due.
    pub fn fire_upstream(&mut self, key: usize, id: u64, env: &mut Env<'_>) {
        if let Some(up) = self.upstream_pool.as_mut() {
            up.expire(key, id, &mut self.upstreams, &mut lent(env));
        }
        self.serve_queue(env);
    }

    /// Spares may be opened again after one failed.
    pub fn upstream_backoff_over(&mut self, env: &mut Env<'_>) {
        if let Some(up) = self.upstream_pool.as_mut() {
            up.backoff_over();
        }
        self.serve_queue(env);
    }

    /// The drain began: pooled idle connections are closed, none is kept
    /// or opened ahead any more.
    pub fn drain_upstream_pool(&mut self, env: &mut Env<'_>) {
        if let Some(up) = self.upstream_pool.as_mut() {
            up.drain(&mut self.upstreams, &mut lent(env));
        }
    }

    /// A hand-over broke off: pooling as before.
    pub fn resume_upstream_pool(&mut self, env: &mut Env<'_>) {
        if let Some(up) = self.upstream_pool.as_mut() {
            up.resume();
        }
        self.serve_queue(env);
    }

    /// Tries the next forward address after `err`, or gives up on the pair.
    /// Each attempt gets the whole `--connect-timeout`.
    pub(super) fn next_address(&mut self, key: usize, err: io::Error, env: &mut Env<'_>) {
        let Some(pair) = self.slab.get_mut(key) else {
            return;
        };
        let State::Connecting {
            upstream, attempt, ..
        } = &mut pair.state
        else {
            return;
        };
        // Replaced below; its close takes it out of the poll.
        self.upstreams.release(key, &upstream.stream);
        let failed = *attempt;
        self.upstreams.retrying(failed, &err, env.stats, env.now);
        let from = (failed as usize).saturating_add(1);
        let token = upstream_token(key);
        let started = self
            .upstreams
            .connect(key, from, token, env.registry, env.stats, env.now);
        match started {
            Ok((next, stream)) => {
                *attempt = next;
                *upstream = Side::new(stream);
                self.rearm(key, env);
            }
            Err(_) => {
                self.upstreams.failed(&err, env.stats, env.now);
                let reason = match err.kind() {
                    io::ErrorKind::TimedOut => Reason::ConnectTimeout,
                    _ => Reason::Refused,
                };
                self.end(key, reason, env);
            }
        }
    }
}

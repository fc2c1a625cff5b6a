//! The loop's pairs: a slab of [`Pair`]s with their tokens, the work list,
//! the shared scratch buffer and buffer pool, and every step of a pair's
//! life that needs the poll registry, the timers or the counters: opening,
//! the PROXY protocol header both ways, the per-client limit ([`PerClient`]),
//! connect progress and the next forward address ([`Upstreams`]), driving,
//! deadlines, and the two ways a pair ends (a lingering close, or at once).
//! How a pair ends is in `ending`; its upstream connection (the connect,
//! the next address, a pooled connection, the queue for one) in `upstream`;
//! arming its one deadline and what happens when it is due in `deadlines`.

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use mio::event::Event;
use mio::net::TcpStream;
use mio::{Interest, Registry, Token};
use slab::Slab;

use crate::clients::PerClient;
use crate::latency;
use crate::logging::{Throttle, suppressed_note};
use crate::net::{Connect, connect_progress_after, describe};
use crate::pair::log_line::{ConnRecord, LogFormat};
use crate::pair::{Outcome, Pair, Reason, State, Timeouts};
use crate::pipe::Ctx;
use crate::pool::Pool;
use crate::proxy_protocol::{self, Version};
use crate::stats::{Stats, add};
use crate::timer::Timers;
use crate::upstream::Upstreams;
use crate::upstream_pool::{self, Lent, Limits, UpstreamPool};

mod deadlines;
mod ending;
mod upstream;

/// Pair tokens start here: `PAIR_BASE + 2 * key` is the client, `+ 1` the
/// upstream. Below it are the loop's own tokens.
pub(crate) const PAIR_BASE: usize = 16;
/// Free buffers kept for reuse; more than this go back to the allocator.
const POOL_CAP: usize = 32;
/// Reads per direction per drive before other pairs get their turn.
const READS_PER_TURN: usize = 4;
/// At most one line per this interval for clients that cannot be polled.
const LOG_INTERVAL: Duration = Duration::from_secs(10);

fn client_token(key: usize) -> Token {
    Token(PAIR_BASE + 2 * key)
}

fn upstream_token(key: usize) -> Token {
    Token(PAIR_BASE + 2 * key + 1)
}

/// Which side of which pair a token names: `(key, is_client)`.
fn side_of(token: Token) -> Option<(usize, bool)> {
    let n = token.0.checked_sub(PAIR_BASE)?;
    Some((n / 2, n % 2 == 0))
}

/// What the loop lends the pairs for one step.
pub(crate) struct Env<'a> {
    pub registry: &'a Registry,
    pub timers: &'a mut Timers,
    pub stats: &'a mut Stats,
    pub now: Instant,
}

/// What the flags ask of every pair besides the relay.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Serving {
    /// `--accept-proxy`: every client starts with a PROXY protocol header.
    pub accept_proxy: bool,
    /// `--send-proxy`: every upstream connection starts with one.
    pub send_proxy: Option<Version>,
    /// `--max-connections-per-client`.
    pub per_client: Option<u32>,
}

/// How opening a pair went, for the accept gate.
pub(crate) enum Opened {
    Yes,
    /// No upstream socket could be made for want of descriptors or memory:
    /// accepting should pause.
    OutOfResources(io::Error),
}

/// Every pair of the loop.
pub(crate) struct Pairs {
    slab: Slab<Pair>,
    /// Pairs to drive in this iteration, and those that used their budget.
    work: Vec<usize>,
    /// The list being driven (empty between iterations, its capacity kept).
    driving: Vec<usize>,
    scratch: Box<[u8]>,
    pool: Pool,
    next_id: u64,
    upstreams: Upstreams,
    timeouts: Timeouts,
    serving: Serving,
    /// Open connections by real client address, with a per-client limit.
    per_client: Option<PerClient>,
    /// Clients without a valid PROXY header, clients over their limit.
    header_log: Throttle,
    client_limit_log: Throttle,
    /// At exit, no lingering close lasts past this.
    exit: Option<Instant>,
    /// Clients that could not be registered with the poll.
    poll_log: Throttle,
    /// The connection log's format, when it is on.
    conn_log: Option<LogFormat>,
    /// Upstream pooling and the upstream connection limit, when a pooling
    /// flag is given; `None` (the default) costs nothing per message.
    upstream_pool: Option<UpstreamPool>,
    /// `--upstream-pool` above 0: half-closed clients' upstream
    /// connections are kept open for a clean end.
    keep_upstream: bool,
    /// In [`Pairs::serve_queue`]: a pair it ends does not start it again.
    serving_queue: bool,
}

/// A lend of the pool's part of `env`.
fn lent<'a>(env: &'a mut Env<'_>) -> Lent<'a> {
    Lent {
        registry: env.registry,
        timers: env.timers,
        stats: env.stats,
        now: env.now,
    }
}

impl Pairs {
    pub fn new(
        upstreams: Upstreams,
        timeouts: Timeouts,
        serving: Serving,
        buffer_size: usize,
        conn_log: Option<LogFormat>,
        (pooling, stats): (Limits, &mut Stats),
    ) -> Pairs {
        let upstream_pool = pooling.on().then(|| UpstreamPool::new(pooling, stats));
        let mut upstreams = upstreams;
        if upstream_pool.as_ref().is_some_and(UpstreamPool::keeps) {
            upstreams.keep_alive(upstream_pool::keepalive(pooling.idle_timeout));
        }
        Pairs {
            keep_upstream: upstream_pool.as_ref().is_some_and(UpstreamPool::keeps),
            upstream_pool,
            serving_queue: false,
            slab: Slab::new(),
            work: Vec::new(),
            driving: Vec::new(),
            scratch: vec![0u8; buffer_size].into_boxed_slice(),
            pool: Pool::new(buffer_size, POOL_CAP),
            next_id: 0,
            upstreams,
            timeouts,
            serving,
            per_client: serving.per_client.map(PerClient::new),
            header_log: Throttle::new(LOG_INTERVAL),
            client_limit_log: Throttle::new(LOG_INTERVAL),
            exit: None,
            poll_log: Throttle::new(LOG_INTERVAL),
            conn_log,
        }
    }

    /// Client connections open, lingering ones included: what the
    /// connection limit and `connections_active` count.
    pub fn len(&self) -> usize {
        self.slab.len()
    }

    /// Connections in their lingering close.
    pub fn lingering(&self) -> usize {
        let lingering = |(_, p): (usize, &Pair)| matches!(p.state, State::Lingering(_));
        self.slab.iter().filter(|entry| lingering(*entry)).count()
    }

    pub fn has_work(&self) -> bool {
        !self.work.is_empty()
    }

    /// Bytes read but not yet written, over every pair.
    pub fn buffered(&self) -> u64 {
        let held = self.slab.iter().map(|(_, p)| p.buffered() as u64);
        held.fold(0, u64::saturating_add)
    }

    /// Requests read from clients and not yet answered, over all pairs
    /// (`requests_in_flight`): a sum at report time costs nothing per message.
    pub fn in_flight(&self) -> u64 {
        let outstanding = self.slab.iter().map(|(_, p)| p.seqs.outstanding());
        outstanding.fold(0, u64::saturating_add)
    }

    /// Takes a new client: with `--accept-proxy` it waits for its PROXY
    /// header, else it is served at once ([`Pairs::serve`]).
    pub fn open(&mut self, mut client: TcpStream, peer: SocketAddr, env: &mut Env<'_>) -> Opened {
        // A dual-stack listener's IPv4 client, as plain IPv4 in every line.
        let peer = crate::net::plain(peer);
        let key = self.slab.vacant_key();
        let interest = Interest::READABLE | Interest::WRITABLE;
        if let Err(e) = env
            .registry
            .register(&mut client, client_token(key), interest)
        {
            if let Some(suppressed) = self.poll_log.ready(env.now) {
                let note = suppressed_note(suppressed);
                warn!("cannot poll client {peer}: {}{note}", describe(&e));
            }
            return Opened::Yes;
        }
        add(&mut env.stats.connections_total, 1);
        add(&mut env.stats.connections_active, 1);
        self.next_id = self.next_id.wrapping_add(1);
        let id = self.next_id;
        debug!("pair {id}: client {peer} accepted");
        let mut pair = Pair::accepted(id, client, env.now);
        if self.conn_log.is_some() {
            let proxied = self.serving.accept_proxy;
            pair.seqs.log = Some(Box::new(ConnRecord::new(peer, proxied, env.now)));
        }
        self.slab.insert(pair);
        if self.serving.accept_proxy {
            // The header may be in already.
            if let Some(pair) = self.slab.get_mut(key) {
                pair.client.readable = true;
            }
            self.rearm(key, env);
            self.schedule(key);
            return Opened::Yes;
        }
        self.serve(key, Some(peer), None, env)
    }

    /// Serves the client of pair `key`, whose real address is `source`
    /// (`None`: the socket's peer) and who connected to `destination`
    /// (`None`: the socket's local address): the per-client limit, then
    /// the connect to the first forward address that takes one, the PROXY
    /// header queued first when `--send-proxy` is on. When the client is
    /// not served it gets its lingering close at once.
    fn serve(
        &mut self,
        key: usize,
        source: Option<SocketAddr>,
        destination: Option<SocketAddr>,
        env: &mut Env<'_>,
    ) -> Opened {
        let Some(pair) = self.slab.get_mut(key) else {
            return Opened::Yes;
        };
        let source = source.or_else(|| pair.client.stream.peer_addr().ok());
        if let (Some(limits), Some(client)) = (self.per_client.as_mut(), source)
            && !limits.admit(key, client.ip())
        {
            add(&mut env.stats.client_limit_hits, 1);
            if let Some(suppressed) = self.client_limit_log.ready(env.now) {
                info!(
                    "client {} has {} connection(s) open, the per-client limit: closing its new one{}",
                    crate::net::canonical(client.ip()),
                    self.serving.per_client.unwrap_or(0),
                    suppressed_note(suppressed)
                );
            }
            self.end(key, Reason::ClientLimit, env);
            return Opened::Yes;
        }
        if let Some(version) = self.serving.send_proxy {
            let destination = destination.or_else(|| pair.client.stream.local_addr().ok());
            let queued = match (source, destination) {
                (Some(s), Some(d)) => {
                    let header = proxy_protocol::encode(version, s, d);
                    pair.c2s.preload(header.as_bytes(), &mut self.pool)
                }
                _ => false,
            };
            if !queued {
                // No address to send (the client is gone already).
                self.end(key, Reason::ClientFailed, env);
                return Opened::Yes;
            }
        }
        if let Some(up) = self.upstream_pool.as_mut() {
            let id = pair.id;
            if !up.has_queue()
                && let Some(stream) =
                    up.take(upstream_token(key), &mut self.upstreams, &mut lent(env))
            {
                // The spare taken is replaced now, not when a session ends.
                up.refill(&mut self.upstreams, &mut lent(env));
                self.attach_pooled(key, stream, env);
                return Opened::Yes;
            }
            if up.has_queue() || !up.may_open() {
                pair.queued(env.now);
                up.enqueue(key, id, env.now, env.stats);
                self.rearm(key, env);
                return Opened::Yes;
            }
        }
        self.connect_upstream(key, env)
    }

    /// Notes what the kernel said about a pair's socket; the pair is
    /// driven later in this iteration. An upstream still connecting is
    /// checked first.
    pub fn note_event(&mut self, token: Token, event: &Event, env: &mut Env<'_>) {
        if let Some(key) = upstream_pool::key_of(token) {
            if let Some(up) = self.upstream_pool.as_mut() {
                up.event(key, event, &mut self.upstreams, &mut lent(env));
            }
            self.serve_queue(env);
            return;
        }
        let Some((key, is_client)) = side_of(token) else {
            return;
        };
        let Some(pair) = self.slab.get_mut(key) else {
            return;
        };
        let side = match is_client {
            true => &mut pair.client,
            false => match pair.upstream() {
                Some(upstream) => upstream,
                None => return,
            },
        };
        side.readable |= event.is_readable() || event.is_read_closed() || event.is_error();
        side.writable |= event.is_writable() || event.is_write_closed() || event.is_error();
        side.read_closed |= event.is_read_closed() || event.is_error();
        // A client that resets while it waits for an upstream connection
        // leaves the queue now: served later, its request would reach the
        // server for nobody and the connection it took would be thrown
        // away. A FIN alone (a request sent whole, then a half-close) is a
        // client still waiting for its answers: it stays queued.
        if is_client
            && matches!(pair.state, State::Queued)
            && (event.is_error() || (event.is_read_closed() && event.is_write_closed()))
        {
            self.end(key, Reason::ClientFailed, env);
            return;
        }
        let progress = match &pair.state {
            State::Connecting { upstream, .. } if !is_client => {
                Some(connect_progress_after(event, &upstream.stream))
            }
            _ => None,
        };
        match progress {
            None => {}
            Some(Connect::Pending) => return,
            Some(Connect::Connected) => {
                pair.connected(env.now);
                debug!("pair {}: upstream connected", pair.id);
                self.rearm(key, env);
            }
            Some(Connect::Failed(e)) => {
                self.next_address(key, e, env);
                return;
            }
        }
        self.schedule(key);
    }

    /// Drives every pair that had an event or work left, a bounded amount
    /// each.
    pub fn drive(&mut self, env: &mut Env<'_>) {
        let now_us = latency::us_at(env.now);
        // The list is swapped with last turn's emptied one, not taken: no
        // allocation per iteration. Pairs scheduled meanwhile go to the other.
        let mut keys = std::mem::take(&mut self.driving);
        std::mem::swap(&mut keys, &mut self.work);
        for key in keys.drain(..) {
            // Cleared here, not in `drive_one`: a deadline's drive of a
            // pair still in this list must not let it be listed twice.
            if let Some(pair) = self.slab.get_mut(key) {
                pair.scheduled = false;
            }
            self.drive_one(key, now_us, env);
        }
        self.driving = keys;
    }

    /// Drives pair `key` once, a bounded amount; `now_us` is `env.now` on
    /// [`latency::us_at`]'s clock.
    pub(super) fn drive_one(&mut self, key: usize, now_us: u64, env: &mut Env<'_>) {
        let budget = READS_PER_TURN * self.pool.buffer_size();
        let Some(pair) = self.slab.get_mut(key) else {
            return;
        };
        let mut ctx = Ctx {
            scratch: &mut self.scratch,
            pool: &mut self.pool,
            stats: env.stats,
            budget,
            keep_upstream: self.keep_upstream,
            now_us,
        };
        match pair.drive(&mut ctx) {
            Outcome::Going {
                requeue,
                moved,
                rearm,
            } => {
                if moved {
                    pair.last_active = env.now;
                }
                if pair.upstream_on_trial && pair.s2c.lines > 0 {
                    upstream::upstream_confirmed(pair);
                }
                if rearm {
                    self.rearm(key, env);
                }
                if requeue {
                    self.schedule(key);
                }
            }
            Outcome::Header(addresses) => {
                let (source, destination) = addresses.unzip();
                if let Some(s) = source {
                    debug!(
                        "pair {}: PROXY header: client {}",
                        pair.id,
                        crate::net::plain(s)
                    );
                }
                if let Some(rec) = pair.seqs.log.as_deref_mut() {
                    // LOCAL or UNKNOWN: the socket's own addresses.
                    rec.client = Some(source.unwrap_or(rec.peer));
                }
                // Running out of descriptors here is paused on by the
                // next accept that meets it.
                let _ = self.serve(key, source, destination, env);
            }
            Outcome::End(reason) => self.end(key, reason, env),
            Outcome::Closed(ending) => self.close(key, ending, env),
        }
    }

    /// The pair whose upstream connection an accepted client `peer` is, if
    /// it is one of ours to our own listen port (a forwarding loop).
    pub fn looped(&self, peer: SocketAddr) -> Option<usize> {
        self.upstreams.looped(peer)
    }

    /// An accepted client is our own upstream connection for pair `origin`:
    /// a forwarding loop. The looped connection is closed at once, and the
    /// origin's client is not served (an upstream error), so one client
    /// costs one extra connection instead of every descriptor.
    pub fn cut_loop(
        &mut self,
        origin: usize,
        looped: TcpStream,
        own: SocketAddr,
        env: &mut Env<'_>,
    ) {
        drop(looped);
        let target = match self.slab.get(origin).map(|p| &p.state) {
            Some(State::Connecting { attempt, .. }) => self.upstreams.address(*attempt),
            _ => None,
        };
        let target = target.map_or_else(String::new, |a| format!("{a} "));
        let why = io::Error::other(format!(
            "{target}leads back to this proxy's own listener {own} (a forwarding loop)"
        ));
        self.upstreams.failed(&why, env.stats, env.now);
        self.end(origin, Reason::Looped, env);
    }

    fn schedule(&mut self, key: usize) {
        if let Some(pair) = self.slab.get_mut(key)
            && !pair.scheduled
        {
            pair.scheduled = true;
            self.work.push(key);
        }
    }
}

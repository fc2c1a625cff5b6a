//! Upstream connection pooling, opt-in: idle upstream connections kept for
//! the next client (`--upstream-pool`), spares opened ahead of demand
//! (`--upstream-spare`), the cap on upstream connections and the queue of
//! clients waiting at it (`--max-upstream-connections`, `--queue-timeout`).
//!
//! The model is pgbouncer's session pooling: a client has an upstream
//! connection to itself for its whole session; only a session that ended
//! cleanly ([`crate::pair::Pair::reusable`]) gives it back. An idle pooled
//! connection is watched for readability: end of file, an error or any
//! byte (an answer nobody asked for) drops it, so it never reaches the
//! next client. The pairs' side of it (taking, queueing, giving back) is in
//! [`crate::pairs`]; this room keeps the connections, the queue and their
//! counts.

use std::collections::VecDeque;
use std::io::{self, Read};
use std::time::{Duration, Instant};

use log::debug;
use mio::event::Event;
use mio::net::TcpStream;
use mio::{Interest, Registry, Token};
use slab::Slab;

use crate::net::{self, Connect, Io, connect_progress_after, describe};
use crate::stats::{Stats, add};
use crate::timer::{Slot, Timer, Timers};
use crate::upstream::{NotStarted, Upstreams};

/// Tokens of pooled connections: `POOL_BASE + key`, above every pair token
/// and below the admin connections' (`1 << (BITS - 2)`).
const POOL_BASE: usize = 1 << (usize::BITS - 3);
/// After a spare's connect failed, no spare is opened for this long: a
/// server that is down must not cost a connect per loop iteration.
const SPARE_BACKOFF: Duration = Duration::from_secs(1);
/// The loop-watch key of a spare: it belongs to no pair yet.
const NO_PAIR: usize = usize::MAX;

/// The pool's token for entry `key`.
fn token(key: usize) -> Token {
    Token(POOL_BASE.saturating_add(key))
}

/// The entry a token names, if it is a pooled connection's.
pub(crate) fn key_of(token: Token) -> Option<usize> {
    token.0.checked_sub(POOL_BASE).filter(|k| *k < POOL_BASE)
}

/// What the flags ask of the pool.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    /// `--upstream-pool`: connections kept without a client (given back
    /// or spare, connecting or idle), at most; 0 keeps none.
    pub size: usize,
    /// `--upstream-spare`: how many of those are kept open ahead of
    /// demand (at most `size`, checked by the command line).
    pub spare: usize,
    /// `--max-upstream-connections`.
    pub max: Option<usize>,
    /// `--upstream-idle-timeout`.
    pub idle_timeout: Duration,
    /// `--connect-timeout`, for a spare's connect.
    pub connect_timeout: Duration,
}

impl Limits {
    /// Any of the pooling flags given: the pool is on.
    pub fn on(&self) -> bool {
        self.size > 0 || self.spare > 0 || self.max.is_some()
    }
}

/// TCP keepalive for pooled connections, derived from
/// `--upstream-idle-timeout` (`idle`): the first probe after a quarter of
/// it idle, then 3 probes a twelfth apart (at least 1 s each), so a server
/// that died silently (a crash, a firewall or NAT dropping the flow) is
/// found within about half the idle timeout and its connection dropped
/// (`server_closed`) before a client is lent it. The probes also keep a
/// NAT or firewall entry alive. An idle timeout under 1 s sends none.
pub(crate) fn keepalive(idle: Duration) -> socket2::TcpKeepalive {
    let second = Duration::from_secs(1);
    socket2::TcpKeepalive::new()
        .with_time((idle / 4).max(second))
        .with_interval((idle / 12).max(second))
        .with_retries(KEEPALIVE_PROBES)
}

/// Unanswered keepalive probes before a pooled connection is dead.
const KEEPALIVE_PROBES: u32 = 3;

/// Why a connection left the pool (or never entered it), counted in
/// `upstream_pool_discarded_*`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Discard {
    /// The server closed or reset it while it was idle.
    ServerClosed,
    /// Bytes came on it while it was idle (nobody asked for them).
    UnsolicitedBytes,
    /// Idle for `--upstream-idle-timeout`.
    IdleTimeout,
    /// Given back while the pool held `--upstream-pool` idle ones.
    PoolFull,
    /// Its session did not end cleanly: closed instead of given back.
    UncleanEnd,
    /// Closed at the drain (a stop signal or a hand-over).
    Drained,
    /// A spare whose connect failed or timed out.
    ConnectFailed,
    /// The kernel refused to poll it under its new token (out of memory):
    /// it could be watched neither idle nor by a client.
    PollFailed,
}

/// Whether idle connection `stream` is unusable, and why: a non-blocking
/// peek sees its end of file or error (`ServerClosed`) or bytes nobody
/// asked for (`UnsolicitedBytes`, with how many were read off, at most 256:
/// the connection is dropped anyway); `None` (it would block) when it is
/// fit to lend.
fn unusable(stream: &TcpStream) -> Option<(Discard, u64)> {
    let mut buf = [0u8; 256];
    match net::io(|| stream.peek(&mut buf)) {
        Io::WouldBlock => None,
        Io::Done(0) | Io::Failed(_) => Some((Discard::ServerClosed, 0)),
        Io::Done(n) => Some((Discard::UnsolicitedBytes, n as u64)),
    }
}

fn count(stats: &mut Stats, why: Discard) {
    let n = match why {
        Discard::ServerClosed => &mut stats.upstream_pool_discarded_server_closed,
        Discard::UnsolicitedBytes => &mut stats.upstream_pool_discarded_unsolicited_bytes,
        Discard::IdleTimeout => &mut stats.upstream_pool_discarded_idle_timeout,
        Discard::PoolFull => &mut stats.upstream_pool_discarded_pool_full,
        Discard::UncleanEnd => &mut stats.upstream_pool_discarded_unclean_end,
        Discard::Drained => &mut stats.upstream_pool_discarded_drained,
        Discard::ConnectFailed => &mut stats.upstream_pool_discarded_connect_failed,
        Discard::PollFailed => &mut stats.upstream_pool_discarded_poll_failed,
    };
    add(n, 1);
}

/// What the loop lends the pool for one step.
pub(crate) struct Lent<'a> {
    pub registry: &'a Registry,
    pub timers: &'a mut Timers,
    pub stats: &'a mut Stats,
    pub now: Instant,
}

/// One connection in the pool: a spare still connecting, or idle.
struct Entry {
    stream: TcpStream,
    /// Unique for the process lifetime (timer owner); slab keys are reused.
    id: u64,
    /// The connect completed: it is idle, in [`UpstreamPool::idle`].
    connected: bool,
    /// It served a client already (else it is a spare nobody used yet).
    used: bool,
    /// The forward address number a spare connects to: a failed connect
    /// moves on to the next one, as a client's does.
    attempt: u32,
    /// The connect timeout, then the idle timeout.
    deadline: Slot,
}

/// The pooled connections, the clients waiting for one, and the count of
/// upstream connections open.
pub(crate) struct UpstreamPool {
    limits: Limits,
    entries: Slab<Entry>,
    /// Idle connected entries, the most recently given back last: it is
    /// taken first (its server side is the warmest, and the others age
    /// out).
    idle: Vec<usize>,
    /// Upstream connections pairs hold (connecting or relaying).
    in_use: usize,
    /// Waiting clients, oldest first: `(pair key, pair id, since)`.
    queue: VecDeque<(usize, u64, Instant)>,
    next_id: u64,
    /// At the drain: nothing is kept or opened ahead.
    draining: bool,
    /// No spare is opened until this passes (after a failed one).
    backoff: Slot,
}

impl UpstreamPool {
    pub fn new(limits: Limits, stats: &mut Stats) -> UpstreamPool {
        stats.upstream_pool_size = limits.size as u64;
        UpstreamPool {
            limits,
            entries: Slab::new(),
            idle: Vec::new(),
            in_use: 0,
            queue: VecDeque::new(),
            next_id: 0,
            draining: false,
            backoff: Slot::default(),
        }
    }

    /// True when a clean session's connection may be kept for the next
    /// client (`--upstream-pool` above 0).
    pub fn keeps(&self) -> bool {
        self.limits.size > 0
    }

    /// Upstream connections open now: held by pairs or pooled.
    fn open(&self) -> usize {
        self.in_use.saturating_add(self.entries.len())
    }

    /// True when one more upstream connection may be opened.
    pub fn may_open(&self) -> bool {
        self.limits.max.is_none_or(|max| self.open() < max)
    }

    /// True while clients wait: a new one queues behind them.
    pub fn has_queue(&self) -> bool {
        !self.queue.is_empty()
    }

    /// Takes the most recently idle connection for a pair's `token`, if
    /// one is ready: it joins the pair's upstream side. Each candidate is
    /// first checked with a non-blocking peek, since its FIN, reset or
    /// stray bytes may have arrived with their event not yet handled: such
    /// a connection is dropped as the event would have dropped it, and the
    /// next one is tried.
    pub fn take(
        &mut self,
        pair_token: Token,
        upstreams: &mut Upstreams,
        lent: &mut Lent<'_>,
    ) -> Option<TcpStream> {
        while let Some(&key) = self.idle.last() {
            let unusable = self.entries.get(key).and_then(|e| unusable(&e.stream));
            if let Some((why, stray)) = unusable {
                add(&mut lent.stats.upstream_pool_unsolicited_bytes, stray);
                self.drop_entry(key, why, upstreams, lent);
                // As on the event: a server closing idle connections must
                // not have spares reopened in a loop.
                self.spare_failed(lent);
                continue;
            }
            self.idle.pop();
            let Some(mut entry) = self.entries.try_remove(key) else {
                continue;
            };
            entry
                .deadline
                .set(lent.timers, None, entry.id, Timer::Upstream(key));
            let interest = Interest::READABLE | Interest::WRITABLE;
            if let Err(e) = lent
                .registry
                .reregister(&mut entry.stream, pair_token, interest)
            {
                debug!("pooled upstream cannot be polled: {}", describe(&e));
                count(lent.stats, Discard::PollFailed);
                continue;
            }
            // Until its first answer line ([`crate::pairs`] lifts it), the
            // lent connection fails as a fresh connect would, after
            // `--connect-timeout`, if its server is gone without a FIN or
            // reset: unacknowledged bytes for that long end it (ETIMEDOUT).
            // Best effort: without it, `--idle-timeout` ends the client.
            let _ = socket2::SockRef::from(&entry.stream)
                .set_tcp_user_timeout(Some(self.limits.connect_timeout));
            self.in_use = self.in_use.saturating_add(1);
            add(&mut lent.stats.upstream_pool_reused, 1);
            self.publish(lent.stats);
            return Some(entry.stream);
        }
        None
    }

    /// A pair started a connect of its own.
    pub fn opened(&mut self, stats: &mut Stats) {
        self.in_use = self.in_use.saturating_add(1);
        add(&mut stats.upstream_connections_opened, 1);
        self.publish(stats);
    }

    /// A pair's upstream connection was closed instead of given back.
    /// `relaying`: its connect had completed, so a session ran on it and
    /// did not end cleanly (counted `unclean_end` with `--upstream-pool`
    /// on); a pair closed during its own connect had no session on it, and
    /// a connection never pooled is no pool discard.
    pub fn closed(&mut self, relaying: bool, stats: &mut Stats) {
        self.in_use = self.in_use.saturating_sub(1);
        if relaying && self.keeps() {
            count(stats, Discard::UncleanEnd);
        }
        self.publish(stats);
    }

    /// A clean session's connection comes back: kept idle, watched for
    /// readability, unless the pool is full or draining (then closed). A
    /// waiting client takes it at once ([`UpstreamPool::take`]).
    pub fn give_back(&mut self, mut stream: TcpStream, lent: &mut Lent<'_>) {
        self.in_use = self.in_use.saturating_sub(1);
        // `--upstream-pool` bounds every connection kept without a client,
        // spares (connecting or idle) included: a spare still connecting
        // would otherwise make one more idle when it completes.
        let full = self.entries.len() >= self.limits.size;
        let why = match (self.draining && self.queue.is_empty(), full) {
            (true, _) => Some(Discard::Drained),
            (false, true) if self.queue.is_empty() => Some(Discard::PoolFull),
            _ => None,
        };
        if let Some(why) = why {
            // Dropped: its close takes it out of the poll.
            count(lent.stats, why);
            self.publish(lent.stats);
            return;
        }
        let key = self.entries.vacant_key();
        if let Err(e) = lent
            .registry
            .reregister(&mut stream, token(key), Interest::READABLE)
        {
            debug!("pooled upstream cannot be polled: {}", describe(&e));
            count(lent.stats, Discard::PollFailed);
            self.publish(lent.stats);
            return;
        }
        self.next_id = self.next_id.wrapping_add(1);
        let mut deadline = Slot::default();
        let until = lent.now + self.limits.idle_timeout;
        deadline.set(lent.timers, Some(until), self.next_id, Timer::Upstream(key));
        self.entries.insert(Entry {
            stream,
            id: self.next_id,
            connected: true,
            used: true,
            attempt: 0,
            deadline,
        });
        self.idle.push(key);
        self.publish(lent.stats);
    }

    /// Client `key` (pair id `id`) waits for a connection from `now`.
    pub fn enqueue(&mut self, key: usize, id: u64, now: Instant, stats: &mut Stats) {
        self.queue.push_back((key, id, now));
        self.publish(stats);
    }

    /// The oldest waiting client, if any: `(pair key, pair id)`.
    pub fn front(&self) -> Option<(usize, u64)> {
        self.queue.front().map(|&(k, id, _)| (k, id))
    }

    /// The oldest waiting client leaves the queue, served at `now` (its
    /// wait is recorded) or gone (`now` is `None`).
    pub fn pop_front(&mut self, now: Option<Instant>, stats: &mut Stats) {
        if let Some((_, _, since)) = self.queue.pop_front()
            && let Some(now) = now
        {
            let waited = now.saturating_duration_since(since);
            let us = u64::try_from(waited.as_micros()).unwrap_or(u64::MAX);
            stats.upstream_queue_wait.record(us);
        }
        self.publish(stats);
    }

    /// A waiting client leaves the queue unserved (its queue timeout, or
    /// the relay ended otherwise).
    pub fn forget(&mut self, key: usize, id: u64, timed_out: bool, stats: &mut Stats) {
        self.queue.retain(|&(k, i, _)| (k, i) != (key, id));
        if timed_out {
            add(&mut stats.upstream_queue_timeouts, 1);
        }
        self.publish(stats);
    }

    /// Opens spares until `--upstream-spare` connections are pooled (idle
    /// or connecting), within `--max-upstream-connections`, unless clients
    /// wait (they come first), the pool drains, or a spare failed lately.
    pub fn refill(&mut self, upstreams: &mut Upstreams, lent: &mut Lent<'_>) {
        if self.draining || self.backoff.when().is_some() || !self.queue.is_empty() {
            return;
        }
        while self.entries.len() < self.limits.spare && self.may_open() {
            let key = self.entries.vacant_key();
            let started =
                upstreams.connect(NO_PAIR, 0, token(key), lent.registry, lent.stats, lent.now);
            let (attempt, stream) = match started {
                Ok(started) => started,
                Err(NotStarted::OutOfResources(e) | NotStarted::Failed(e)) => {
                    upstreams.spare_failed(&e, SPARE_BACKOFF, lent.now);
                    self.spare_failed(lent);
                    break;
                }
            };
            add(&mut lent.stats.upstream_connections_opened, 1);
            self.next_id = self.next_id.wrapping_add(1);
            let mut deadline = Slot::default();
            let until = lent.now + self.limits.connect_timeout;
            deadline.set(lent.timers, Some(until), self.next_id, Timer::Upstream(key));
            self.entries.insert(Entry {
                stream,
                id: self.next_id,
                connected: false,
                used: false,
                attempt,
                deadline,
            });
        }
        self.publish(lent.stats);
    }

    /// What the kernel said about pooled connection `key`: a spare's
    /// connect completed or failed; an idle one became readable (closed,
    /// reset, or bytes nobody asked for: it is dropped).
    pub fn event(
        &mut self,
        key: usize,
        event: &Event,
        upstreams: &mut Upstreams,
        lent: &mut Lent<'_>,
    ) {
        let Some(entry) = self.entries.get_mut(key) else {
            return;
        };
        if !entry.connected {
            match connect_progress_after(event, &entry.stream) {
                Connect::Pending => return,
                Connect::Failed(e) => {
                    self.spare_next_address(key, e, upstreams, lent);
                    return;
                }
                Connect::Connected => {
                    entry.connected = true;
                    let until = lent.now + self.limits.idle_timeout;
                    entry
                        .deadline
                        .set(lent.timers, Some(until), entry.id, Timer::Upstream(key));
                    self.idle.push(key);
                    self.publish(lent.stats);
                }
            }
        }
        if !(event.is_readable() || event.is_read_closed() || event.is_error()) {
            return;
        }
        let Some(entry) = self.entries.get_mut(key) else {
            return;
        };
        let mut buf = [0u8; 256];
        let why = match net::io(|| entry.stream.read(&mut buf)) {
            Io::WouldBlock => return,
            Io::Done(0) | Io::Failed(_) => Discard::ServerClosed,
            Io::Done(n) => {
                add(&mut lent.stats.upstream_pool_unsolicited_bytes, n as u64);
                Discard::UnsolicitedBytes
            }
        };
        self.drop_entry(key, why, upstreams, lent);
        // A server that greets, or closes connections it finds idle, would
        // otherwise have the spares reopened at once, without end: pause
        // them as after a failed connect.
        self.spare_failed(lent);
    }

    /// Pooled connection `key`'s deadline (owner `id`) came due: a spare's
    /// connect timed out, or an idle one expired.
    pub fn expire(&mut self, key: usize, id: u64, upstreams: &mut Upstreams, lent: &mut Lent<'_>) {
        let Some(entry) = self.entries.get_mut(key).filter(|e| e.id == id) else {
            return;
        };
        entry.deadline.fired();
        if entry.connected {
            self.drop_entry(key, Discard::IdleTimeout, upstreams, lent);
        } else {
            let e = io::Error::new(io::ErrorKind::TimedOut, "connect timed out");
            self.spare_next_address(key, e, upstreams, lent);
        }
    }

    /// Spare `key`'s connect failed with `err`: it moves on to the next
    /// forward address, with a whole `--connect-timeout` of its own,
    /// counted and logged as a client's retry is; after the last address
    /// it is dropped (`connect_failed`), logged (throttled), and spares
    /// pause for [`SPARE_BACKOFF`].
    fn spare_next_address(
        &mut self,
        key: usize,
        err: io::Error,
        upstreams: &mut Upstreams,
        lent: &mut Lent<'_>,
    ) {
        let Some(entry) = self.entries.get_mut(key) else {
            return;
        };
        let failed = entry.attempt;
        upstreams.retrying(failed, &err, lent.stats, lent.now);
        let from = (failed as usize).saturating_add(1);
        let mut last = err;
        if upstreams.address(from as u32).is_some() {
            // Replaced below; its close takes it out of the poll.
            upstreams.release(NO_PAIR, &entry.stream);
            let started = upstreams.connect(
                NO_PAIR,
                from,
                token(key),
                lent.registry,
                lent.stats,
                lent.now,
            );
            match started {
                Ok((next, stream)) => {
                    entry.stream = stream;
                    entry.attempt = next;
                    let until = lent.now + self.limits.connect_timeout;
                    entry
                        .deadline
                        .set(lent.timers, Some(until), entry.id, Timer::Upstream(key));
                    return;
                }
                Err(NotStarted::OutOfResources(e) | NotStarted::Failed(e)) => last = e,
            }
        }
        upstreams.spare_failed(&last, SPARE_BACKOFF, lent.now);
        self.drop_entry(key, Discard::ConnectFailed, upstreams, lent);
        self.spare_failed(lent);
    }

    /// The spare backoff is over.
    pub fn backoff_over(&mut self) {
        self.backoff.fired();
    }

    /// The drain: every pooled connection is closed, and none is kept or
    /// opened ahead any more (a connection given back goes to a waiting
    /// client or is closed).
    pub fn drain(&mut self, upstreams: &mut Upstreams, lent: &mut Lent<'_>) {
        self.draining = true;
        let keys: Vec<usize> = self.entries.iter().map(|(k, _)| k).collect();
        for key in keys {
            self.drop_entry(key, Discard::Drained, upstreams, lent);
        }
    }

    /// A hand-over broke off: serving again, spares are opened again.
    pub fn resume(&mut self) {
        self.draining = false;
    }

    /// Closes pooled connection `key`, counted under `why`.
    fn drop_entry(
        &mut self,
        key: usize,
        why: Discard,
        upstreams: &mut Upstreams,
        lent: &mut Lent<'_>,
    ) {
        let Some(mut entry) = self.entries.try_remove(key) else {
            return;
        };
        entry
            .deadline
            .set(lent.timers, None, entry.id, Timer::Upstream(key));
        // Dropped below: its close takes it out of the poll.
        upstreams.release(NO_PAIR, &entry.stream);
        self.idle.retain(|&k| k != key);
        count(lent.stats, why);
        debug!("pooled upstream connection closed ({why:?})");
        self.publish(lent.stats);
    }

    fn spare_failed(&mut self, lent: &mut Lent<'_>) {
        let until = lent.now + SPARE_BACKOFF;
        self.backoff
            .set(lent.timers, Some(until), 0, Timer::UpstreamBackoff);
    }

    /// The gauges: upstream connections open, held by clients, idle,
    /// spares nobody used yet, clients waiting.
    fn publish(&self, stats: &mut Stats) {
        stats.upstream_connections = self.open() as u64;
        stats.upstream_pool_in_use = self.in_use as u64;
        stats.upstream_pool_idle = self.idle.len() as u64;
        let spares = self.entries.iter().filter(|(_, e)| !e.used).count();
        stats.upstream_pool_spare = spares as u64;
        stats.upstream_queue_clients = self.queue.len() as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_tokens_lie_between_the_pairs_and_the_admin_connections() {
        assert_eq!(key_of(token(0)), Some(0));
        assert_eq!(key_of(token(7)), Some(7));
        assert_eq!(key_of(Token(16)), None);
        assert_eq!(key_of(Token(1 << (usize::BITS - 2))), None);
    }

    /// A pool of one idle connection whose server end did `server` (its
    /// event never handled): what `take` lent, and the stats.
    fn take_after(server: impl FnOnce(std::net::TcpStream)) -> (bool, Stats) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let poll = mio::Poll::new().unwrap();
        let mut timers = Timers::default();
        let mut stats = Stats::default();
        let mut upstreams = Upstreams::new(vec![addr], addr.to_string(), 0);
        let limits = Limits {
            size: 1,
            spare: 0,
            max: None,
            idle_timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(1),
        };
        let mut pool = UpstreamPool::new(limits, &mut stats);
        let std_stream = std::net::TcpStream::connect(addr).unwrap();
        std_stream.set_nonblocking(true).unwrap();
        let mut stream = TcpStream::from_std(std_stream);
        let (peer, _) = listener.accept().unwrap();
        poll.registry()
            .register(&mut stream, Token(1), Interest::READABLE)
            .unwrap();
        let now = Instant::now();
        let mut lent = Lent {
            registry: poll.registry(),
            timers: &mut timers,
            stats: &mut stats,
            now,
        };
        pool.in_use = 1;
        pool.give_back(stream, &mut lent);
        server(peer);
        // On loopback the FIN, reset or bytes are in before this returns.
        std::thread::sleep(Duration::from_millis(50));
        let taken = pool.take(Token(2), &mut upstreams, &mut lent).is_some();
        (taken, stats)
    }

    #[test]
    fn a_pooled_connection_closed_reset_or_written_by_the_server_is_not_lent() {
        let (taken, stats) = take_after(drop);
        assert!(!taken, "lent after the server's FIN");
        assert_eq!(stats.upstream_pool_discarded_server_closed, 1);
        let (taken, stats) = take_after(|peer| {
            socket2::SockRef::from(&peer)
                .set_linger(Some(Duration::ZERO))
                .unwrap();
        });
        assert!(!taken, "lent after the server's reset");
        assert_eq!(stats.upstream_pool_discarded_server_closed, 1);
        let (taken, stats) = take_after(|mut peer| {
            std::io::Write::write_all(&mut peer, b"ACK 9 stray\n").unwrap();
            std::mem::forget(peer);
        });
        assert!(!taken, "lent with bytes nobody asked for");
        assert_eq!(stats.upstream_pool_discarded_unsolicited_bytes, 1);
        assert_eq!(stats.upstream_pool_unsolicited_bytes, 12);
        let (taken, stats) = take_after(std::mem::forget);
        assert!(taken, "a live connection must be lent");
        assert_eq!(stats.upstream_pool_reused, 1);
    }

    #[test]
    fn limits_are_on_with_any_pooling_flag() {
        let off = Limits {
            size: 0,
            spare: 0,
            max: None,
            idle_timeout: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(1),
        };
        assert!(!off.on());
        assert!(Limits { size: 1, ..off }.on());
        assert!(
            Limits {
                max: Some(3),
                ..off
            }
            .on()
        );
    }
}

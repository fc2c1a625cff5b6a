//! The admin socket's connections: the listener and at most `MAX_CONNS` connections the loop drives, each bounded in time and work.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr};
use std::time::{Duration, Instant, SystemTime};

use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Registry, Token};
use slab::Slab;

use crate::admin::http::{Facts, MAX_HEAD, Reply, access_line, respond};
use crate::dates;
use crate::logging::Throttle;
use crate::net::{self, Io, describe};
use crate::stats::Report;
use crate::timer::{Slot, Timer, Timers};
use log::{debug, info};

/// Admin connections open at once; more wait in the listen backlog.
pub const MAX_CONNS: usize = 64;
/// From accept to the end of the exchange, whatever the client does.
pub const DEADLINE: Duration = Duration::from_secs(5);
/// After the answer, how long unread input is drained before closing.
const LINGER: Duration = Duration::from_secs(1);
const READ_CHUNK: usize = 4096;
/// How long accepting pauses after an accept error (out of descriptors).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Reads of discarded input per drive, so one client cannot hog the loop.
const DISCARD_READS_PER_TURN: usize = 4;
/// Access log lines per second; more are counted and the count logged.
const ACCESS_LOG_BURST: u32 = 20;
/// Connection tokens: `TOKEN_BASE + key`, far above any pair token.
const TOKEN_BASE: usize = 1 << (usize::BITS - 2);

/// The poll token of admin connection `key`.
pub fn token(key: usize) -> Token {
    Token(TOKEN_BASE + key)
}

/// The connection key an admin token names, if it is one.
pub fn key_of(token: Token) -> Option<usize> {
    token.0.checked_sub(TOKEN_BASE).filter(|k| *k < MAX_CONNS)
}

enum Phase {
    /// Collecting the request head.
    Reading,
    /// Sending `out[sent..]`.
    Writing,
    /// Answer sent and write side shut: discarding input until EOF, so the
    /// close does not turn into a reset that could destroy the answer.
    Lingering,
}

struct Conn {
    /// Unique for the process lifetime; slab keys are reused.
    id: u64,
    stream: TcpStream,
    peer: SocketAddr,
    phase: Phase,
    head: Vec<u8>,
    out: Vec<u8>,
    sent: usize,
    /// When it was accepted: the oldest idle connection makes room first.
    accepted: Instant,
    deadline: Slot,
    scheduled: bool,
}

impl Conn {
    /// Accepted in an earlier loop turn (so read at least once), not a byte
    /// of a request since, and no event waiting to be read: it may give its
    /// slot to a new client.
    fn idle(&self, now: Instant) -> bool {
        matches!(self.phase, Phase::Reading)
            && self.head.is_empty()
            && !self.scheduled
            && self.accepted < now
    }
}

enum Step {
    Continue,
    Requeue,
    Close,
}

impl Conn {
    fn drive(&mut self, answer: &mut dyn FnMut(&[u8], IpAddr) -> Reply) -> Step {
        if let Phase::Reading = self.phase {
            match self.read_head(answer) {
                Ok(Some(bytes)) => {
                    self.out = bytes;
                    self.head = Vec::new();
                    self.phase = Phase::Writing;
                }
                Ok(None) => return Step::Continue,
                Err(()) => return Step::Close,
            }
        }
        if let Phase::Writing = self.phase {
            while let Some(rest) = self.out.get(self.sent..).filter(|r| !r.is_empty()) {
                match net::io(|| self.stream.write(rest)) {
                    Io::Done(0) | Io::Failed(_) => return Step::Close,
                    Io::Done(n) => self.sent += n,
                    Io::WouldBlock => return Step::Continue,
                }
            }
            self.out = Vec::new();
            if self.stream.shutdown(Shutdown::Write).is_err() {
                return Step::Close;
            }
            self.phase = Phase::Lingering;
        }
        let mut chunk = [0u8; READ_CHUNK];
        for _ in 0..DISCARD_READS_PER_TURN {
            match net::io(|| self.stream.read(&mut chunk)) {
                Io::Done(0) | Io::Failed(_) => return Step::Close,
                Io::Done(_) => {}
                Io::WouldBlock => return Step::Continue,
            }
        }
        Step::Requeue
    }

    /// Reads until the head is answerable, the socket is drained, or the
    /// head limit is reached. `Err` means the client went away.
    fn read_head(
        &mut self,
        answer: &mut dyn FnMut(&[u8], IpAddr) -> Reply,
    ) -> Result<Option<Vec<u8>>, ()> {
        let mut chunk = [0u8; READ_CHUNK];
        loop {
            let room = MAX_HEAD.saturating_sub(self.head.len());
            let n = match net::io(|| {
                Read::by_ref(&mut self.stream)
                    .take(room as u64)
                    .read(&mut chunk)
            }) {
                Io::Done(0) if room > 0 => return Err(()),
                Io::Done(n) => n,
                Io::WouldBlock => return Ok(None),
                Io::Failed(_) => return Err(()),
            };
            let new = chunk.get(..n).unwrap_or_default();
            self.head.extend_from_slice(new);
            // A head ends with a line break: parse only when one arrives.
            if (new.contains(&b'\n') || self.head.len() >= MAX_HEAD)
                && let Reply::Done(a) = answer(&self.head, self.peer.ip())
            {
                return Ok(Some(a.bytes));
            }
        }
    }
}

/// The admin listener and its connections.
pub struct Admin {
    listener: TcpListener,
    listener_token: Token,
    /// A successor serves from the listener now (a hand-over).
    handed_off: bool,
    local_addr: SocketAddr,
    conns: Slab<Conn>,
    /// Connections to drive in this iteration.
    work: Vec<usize>,
    /// Accepting stopped at [`MAX_CONNS`]; it resumes when one closes.
    full: bool,
    /// Accepting failed (out of descriptors); it is retried at this time.
    accept_retry: Option<Instant>,
    next_id: u64,
    start_unix: f64,
    /// The access log: a scraper in a tight loop must not flood stderr.
    access_log: Throttle,
    /// `--access-log off`: no access lines at all.
    access_log_on: bool,
}

impl Admin {
    /// Binds `addr` and registers the listener under `listener_token`.
    /// `inherited` is a listener already bound (socket activation, a
    /// hand-over), used as it is. `access_log` says whether requests are
    /// logged (`--access-log`).
    pub fn bind(
        addr: SocketAddr,
        inherited: Option<std::net::TcpListener>,
        registry: &Registry,
        listener_token: Token,
        access_log: bool,
    ) -> Result<Admin, String> {
        let cannot = |e: io::Error| format!("cannot listen for HTTP on {addr}: {}", describe(&e));
        let mut listener = match inherited {
            Some(listener) => {
                listener.set_nonblocking(true).map_err(cannot)?;
                TcpListener::from_std(listener)
            }
            None => net::listen(addr, 128).map_err(cannot)?,
        };
        let local_addr = listener.local_addr().map_err(cannot)?;
        registry
            .register(&mut listener, listener_token, Interest::READABLE)
            .map_err(cannot)?;
        let start_unix = dates::unix_secs(SystemTime::now());
        Ok(Admin {
            listener,
            listener_token,
            handed_off: false,
            local_addr,
            conns: Slab::with_capacity(MAX_CONNS),
            work: Vec::new(),
            full: false,
            accept_retry: None,
            next_id: 0,
            start_unix,
            access_log: Throttle::with_burst(Duration::from_secs(1), ACCESS_LOG_BURST),
            access_log_on: access_log,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Accepting: not handed to a successor.
    pub fn listening(&self) -> bool {
        !self.handed_off
    }

    /// The listener, to hand it to a successor.
    pub fn listener_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        std::os::fd::AsFd::as_fd(&self.listener)
    }

    /// A successor serves now: stop accepting (connections already open
    /// are answered), keep the socket for [`Admin::take_back`].
    pub fn hand_off(&mut self, registry: &Registry) {
        if !self.handed_off {
            let _ = registry.deregister(&mut self.listener);
            self.handed_off = true;
        }
    }

    /// The successor went away: accept again.
    pub fn take_back(&mut self, registry: &Registry) {
        if self.handed_off {
            let _ = registry.register(&mut self.listener, self.listener_token, Interest::READABLE);
            self.handed_off = false;
        }
    }

    pub fn has_work(&self) -> bool {
        !self.work.is_empty()
    }

    /// Accepts while there is room. When every slot is taken and a client
    /// waits, the oldest connection that has sent nothing yet is closed to
    /// make room (as nginx reuses idle keep-alive connections when it runs
    /// out): silent connections cannot keep a health probe waiting for
    /// their 5 s deadline. Connections that sent part of a request, or are
    /// being answered, keep their slot.
    pub(crate) fn accept(&mut self, registry: &Registry, timers: &mut Timers, now: Instant) {
        if self.handed_off {
            return;
        }
        // While a retry is pending, accepting would only fail again.
        match self.accept_retry {
            Some(when) if when > now => return,
            Some(_) => self.accept_retry = None,
            None => {}
        }
        loop {
            let victim = if self.conns.len() < MAX_CONNS {
                None
            } else {
                let oldest_idle = self
                    .conns
                    .iter()
                    .filter(|(_, c)| c.idle(now))
                    .min_by_key(|(_, c)| (c.accepted, c.id))
                    .map(|(key, _)| key);
                match oldest_idle {
                    Some(key) => Some(key),
                    None => break,
                }
            };
            let (mut stream, peer) = match net::io(|| self.listener.accept()) {
                Io::Done(ok) => ok,
                Io::WouldBlock => {
                    self.full = false;
                    return;
                }
                Io::Failed(e) => {
                    // Out of descriptors, most likely: the backlog is
                    // retried shortly, through the loop's timer set.
                    debug!("admin accept failed: {}", describe(&e));
                    let when = now + ACCEPT_BACKOFF;
                    self.accept_retry = Some(when);
                    timers.arm(when, 0, Timer::AdminAccept);
                    return;
                }
            };
            // A dual-stack admin listener's IPv4 clients, as plain IPv4.
            let peer = net::plain(peer);
            if let Some(key) = victim {
                debug!("admin client {key}: idle with every slot taken, closing for {peer}");
                self.remove(key, timers);
            }
            let entry = self.conns.vacant_entry();
            let key = entry.key();
            if let Err(e) = registry.register(
                &mut stream,
                token(key),
                Interest::READABLE | Interest::WRITABLE,
            ) {
                debug!("cannot poll admin client {peer}: {}", describe(&e));
                continue;
            }
            let _ = stream.set_nodelay(true);
            self.next_id = self.next_id.wrapping_add(1);
            let mut deadline = Slot::default();
            deadline.set(
                timers,
                Some(now + DEADLINE),
                self.next_id,
                Timer::Admin(key),
            );
            entry.insert(Conn {
                id: self.next_id,
                stream,
                peer,
                phase: Phase::Reading,
                head: Vec::new(),
                out: Vec::new(),
                sent: 0,
                accepted: now,
                deadline,
                // Read in this turn already: a request that came with the
                // connection makes it not idle before the next accept.
                scheduled: true,
            });
            self.work.push(key);
        }
        self.full = true;
    }

    /// Notes an event for a connection token; it is driven later.
    pub(crate) fn note_event(&mut self, key: usize) {
        if let Some(conn) = self.conns.get_mut(key)
            && !conn.scheduled
        {
            conn.scheduled = true;
            self.work.push(key);
        }
    }

    /// Drives every connection that had an event, each a bounded amount.
    /// `report` is called at most once.
    pub(crate) fn drive(
        &mut self,
        registry: &Registry,
        timers: &mut Timers,
        now: Instant,
        ready: bool,
        report: &mut dyn FnMut() -> Report,
    ) {
        let facts = Facts {
            ready,
            start_unix: self.start_unix,
            now: SystemTime::now(),
        };
        let mut cached: Option<Report> = None;
        // Moved out for the closure while the loop below borrows `self`.
        let mut access_log = std::mem::replace(&mut self.access_log, Throttle::new(DEADLINE));
        let access_log_on = self.access_log_on;
        let mut answer = |head: &[u8], peer: IpAddr| {
            let mut get = || cached.get_or_insert_with(&mut *report).clone();
            let reply = respond(head, &facts, &mut get);
            if let Reply::Done(a) = &reply
                && access_log_on
                && let Some(suppressed) = access_log.ready(now)
            {
                if suppressed > 0 {
                    info!(
                        "{suppressed} admin requests were not logged (over {ACCESS_LOG_BURST} a second)"
                    );
                }
                info!("{}", access_line(peer, facts.now, a));
            }
            reply
        };
        for key in std::mem::take(&mut self.work) {
            let Some(conn) = self.conns.get_mut(key) else {
                continue;
            };
            conn.scheduled = false;
            match conn.drive(&mut answer) {
                Step::Continue => {}
                Step::Requeue => {
                    conn.scheduled = true;
                    self.work.push(key);
                }
                Step::Close => {
                    self.close(key, registry, timers, now);
                    continue;
                }
            }
            // Once answered, a client gets a short grace to read and close.
            if let Phase::Lingering = conn.phase
                && conn.deadline.when().is_some_and(|t| t > now + LINGER)
            {
                let (id, timer) = (conn.id, Timer::Admin(key));
                conn.deadline.set(timers, Some(now + LINGER), id, timer);
            }
        }
        self.access_log = access_log;
    }

    /// A deadline fired: close the connection if it is still the same one.
    pub(crate) fn expire(
        &mut self,
        key: usize,
        id: u64,
        registry: &Registry,
        timers: &mut Timers,
        now: Instant,
    ) {
        if let Some(conn) = self.conns.get_mut(key).filter(|c| c.id == id) {
            conn.deadline.fired();
            debug!("admin client {key}: deadline reached, closing");
            self.close(key, registry, timers, now);
        }
    }

    fn close(&mut self, key: usize, registry: &Registry, timers: &mut Timers, now: Instant) {
        self.remove(key, timers);
        if self.full {
            self.accept(registry, timers, now);
        }
    }

    /// Closes a connection and forgets it and its deadline.
    fn remove(&mut self, key: usize, timers: &mut Timers) {
        let Some(mut conn) = self.conns.try_remove(key) else {
            return;
        };
        conn.deadline.set(timers, None, conn.id, Timer::Admin(key));
        // Dropped here: its close takes it out of the poll (no other
        // descriptor shares it), so no EPOLL_CTL_DEL first.
        drop(conn);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_stay_clear_of_pairs() {
        assert_eq!(key_of(token(0)), Some(0));
        assert_eq!(key_of(token(MAX_CONNS - 1)), Some(MAX_CONNS - 1));
        assert_eq!(key_of(token(MAX_CONNS)), None);
        assert_eq!(key_of(Token(16)), None);
    }
}

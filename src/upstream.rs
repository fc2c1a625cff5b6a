//! Where the pairs' upstream connections come from: the forward addresses
//! tried in order (the next one after a refusal, an error or a timeout),
//! the counts and throttled warnings of retries and failures, and the watch
//! for a forward that leads back to this proxy's own listener.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use log::warn;
use mio::net::TcpStream;
use mio::{Interest, Registry, Token};

use crate::logging::{Throttle, suppressed_note};
use crate::net::{self, connect_first, describe, endpoint};
use crate::stats::{Stats, add};

/// At most one line per this interval for each warning a peer can trigger
/// over and over (upstream failures, moves to the next address).
const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Why no upstream connection was started.
#[derive(Debug)]
pub(crate) enum NotStarted {
    /// Out of descriptors or memory before any socket existed: accepting
    /// should pause (not the upstream's fault).
    OutOfResources(io::Error),
    /// Every address left refused or failed, or the socket could not be
    /// polled.
    Failed(io::Error),
}

/// The forward addresses and what happened to connections to them.
pub(crate) struct Upstreams {
    /// Every address the forward host resolved to, tried in order.
    forward: Vec<SocketAddr>,
    /// The forward address as the user wrote it, for messages.
    spec: String,
    /// Our own listen port: an upstream connection to it may loop back.
    listen_port: u16,
    /// Local addresses of upstream connections to our own listen port, by
    /// pair key: an accepted client from one of them is the proxy itself,
    /// a forwarding loop the start-up check could not see (an address this
    /// host gained later). Empty in a usual setup.
    loop_watch: HashMap<(IpAddr, u16), usize>,
    failure_log: Throttle,
    retry_log: Throttle,
    spare_log: Throttle,
    /// TCP keepalive set on every upstream connection at its connect, when
    /// connections are pooled (see [`crate::upstream_pool::keepalive`]).
    keepalive: Option<socket2::TcpKeepalive>,
}

impl Upstreams {
    pub fn new(forward: Vec<SocketAddr>, spec: String, listen_port: u16) -> Upstreams {
        Upstreams {
            forward,
            spec,
            listen_port,
            loop_watch: HashMap::new(),
            failure_log: Throttle::new(LOG_INTERVAL),
            retry_log: Throttle::new(LOG_INTERVAL),
            spare_log: Throttle::new(LOG_INTERVAL),
            keepalive: None,
        }
    }

    /// Starts a non-blocking connect for pair `key` to the first address
    /// from number `from` that takes one, registered under `token`; the
    /// address's number and the stream. Each address that fails at once
    /// while another is left counts as a retry.
    pub fn connect(
        &mut self,
        key: usize,
        from: usize,
        token: Token,
        registry: &Registry,
        stats: &mut Stats,
        now: Instant,
    ) -> Result<(u32, TcpStream), NotStarted> {
        let (forward, retry_log) = (&self.forward, &mut self.retry_log);
        let retried = |failed, why: &io::Error, next| {
            note_retry(stats, retry_log, (failed, why, next), now);
        };
        let (i, mut stream) = match connect_first(forward, from, retried) {
            Ok(started) => started,
            Err(e) if net::out_of_resources(&e) => return Err(NotStarted::OutOfResources(e)),
            Err(e) => return Err(NotStarted::Failed(e)),
        };
        if let Some(keepalive) = &self.keepalive {
            // Best effort: without it a silent server is found only by the
            // idle timeouts.
            let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(keepalive);
        }
        let interest = Interest::READABLE | Interest::WRITABLE;
        registry
            .register(&mut stream, token, interest)
            .map_err(NotStarted::Failed)?;
        if let Some(k) = forward
            .get(i)
            .and_then(|f| loop_key(*f, self.listen_port, &stream))
        {
            self.loop_watch.insert(k, key);
        }
        Ok((u32::try_from(i).unwrap_or(u32::MAX), stream))
    }

    /// Sets `keepalive` on every upstream connection from now on.
    pub fn keep_alive(&mut self, keepalive: socket2::TcpKeepalive) {
        self.keepalive = Some(keepalive);
    }

    /// Counts the move from address number `failed` (for `why`) to the
    /// next one, if there is a next one.
    pub fn retrying(&mut self, failed: u32, why: &io::Error, stats: &mut Stats, now: Instant) {
        let failed = failed as usize;
        if let (Some(addr), Some(next)) = (
            self.forward.get(failed),
            self.forward.get(failed.saturating_add(1)),
        ) {
            note_retry(stats, &mut self.retry_log, (*addr, why, *next), now);
        }
    }

    /// Counts a client that could not be served and logs it, throttled.
    pub fn failed(&mut self, err: &io::Error, stats: &mut Stats, now: Instant) {
        add(&mut stats.upstream_errors, 1);
        if let Some(suppressed) = self.failure_log.ready(now) {
            warn!(
                "cannot reach upstream {}: {}; closing the client{}",
                self.spec,
                describe(err),
                suppressed_note(suppressed)
            );
        }
    }

    /// Logs, throttled, a spare whose connect failed at every address
    /// (`err` is the last one's); spares pause for `pause`. Not counted in
    /// `upstream_errors`: no client was refused.
    pub fn spare_failed(&mut self, err: &io::Error, pause: Duration, now: Instant) {
        if let Some(suppressed) = self.spare_log.ready(now) {
            warn!(
                "cannot open a spare connection to upstream {}: {}; trying again in {}s{}",
                self.spec,
                describe(err),
                pause.as_secs(),
                suppressed_note(suppressed)
            );
        }
    }

    /// Forgets pair `key`'s upstream connection before it is closed.
    /// Nothing to do, and no system call, in a usual setup (the map is
    /// empty); the map is keyed by the local address only, so an entry is
    /// removed only if it is this pair's (two sockets to different peers
    /// can share a local address).
    pub fn release(&mut self, key: usize, stream: &TcpStream) {
        if self.loop_watch.is_empty() {
            return;
        }
        if let Ok(local) = stream.local_addr() {
            let local = endpoint(local);
            if self.loop_watch.get(&local) == Some(&key) {
                self.loop_watch.remove(&local);
            }
        }
    }

    /// The pair whose upstream connection an accepted client `peer` is, if
    /// it is one of ours to our own listen port (a forwarding loop).
    pub fn looped(&self, peer: SocketAddr) -> Option<usize> {
        match self.loop_watch.is_empty() {
            true => None,
            false => self.loop_watch.get(&endpoint(peer)).copied(),
        }
    }

    /// Address number `attempt`, for messages.
    pub fn address(&self, attempt: u32) -> Option<SocketAddr> {
        self.forward.get(attempt as usize).copied()
    }
}

/// Counts a move to the next forward address and logs it, throttled: a
/// black-holed first address costs every client a connect timeout, which
/// must not go unseen.
fn note_retry(
    stats: &mut Stats,
    log: &mut Throttle,
    (failed, why, next): (SocketAddr, &io::Error, SocketAddr),
    now: Instant,
) {
    add(&mut stats.upstream_connect_retries, 1);
    if let Some(suppressed) = log.ready(now) {
        warn!(
            "upstream {failed} failed ({}); trying the next address, {next}{}",
            describe(why),
            suppressed_note(suppressed)
        );
    }
}

/// The key under which an upstream connection to `forward` is watched for
/// a forwarding loop: its local address, when it goes to our own listen
/// port (only such a connection can come back to us). `None` otherwise,
/// which is every connection in a usual setup, at the cost of one compare.
fn loop_key(forward: SocketAddr, listen_port: u16, stream: &TcpStream) -> Option<(IpAddr, u16)> {
    if forward.port() != listen_port {
        return None;
    }
    stream.local_addr().ok().map(endpoint)
}

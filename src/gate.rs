//! The client listener and every reason not to accept from it, in one
//! place: the connection limit (stop at `--max-connections`, resume below
//! 90 %), the pause after running out of descriptors or memory, and the
//! drain (the listener is closed, so new clients are refused at once).

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Registry, Token};

use crate::cli::Config;
use crate::logging::{Throttle, suppressed_note};
use crate::net::{self, Io, describe};
use crate::stats::{Stats, add};
use crate::timer::{Slot, Timer, Timers};

/// How long accepting pauses after running out of descriptors or memory.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// At most one line per this interval for the connection limit and for
/// accept errors: clients can trigger them over and over.
const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// The listener and when it may be accepted from.
pub(crate) struct Gate {
    /// `None` once draining: new clients are refused.
    listener: Option<TcpListener>,
    token: Token,
    /// A successor accepts from the listener now: we keep it (unpolled)
    /// only to take it back if the successor goes away.
    handed_off: bool,
    local_addr: SocketAddr,
    /// Accepted clients inherit `TCP_NODELAY` from the listener
    /// ([`net::accepts_nodelay`]); otherwise [`Gate::next`] sets it.
    nodelay_inherited: bool,
    max_connections: usize,
    /// At the limit: accepting waits until below 90 %.
    at_limit: bool,
    /// Out of descriptors or memory: accepting waits for this deadline.
    pause: Slot,
    /// The exhaustion episode was logged (once per episode).
    exhausted_logged: bool,
    limit_log: Throttle,
    accept_log: Throttle,
}

impl Gate {
    /// Listens on `-listen` with a backlog as deep as the connection limit
    /// (the kernel caps it at `net.core.somaxconn`): a burst of clients must
    /// not overflow it; with `--reuse-port`, sharing the port with other
    /// processes. Errors name the address.
    ///
    /// `inherited` is a listener already bound (by socket activation or the
    /// process handing over): used as it is, never closed and re-bound.
    pub fn bind(
        config: &Config,
        inherited: Option<std::net::TcpListener>,
        registry: &Registry,
        token: Token,
    ) -> Result<Gate, String> {
        let (addr, max_connections) = (config.listen, config.max_connections);
        let cannot = |e: io::Error| format!("cannot listen on {addr}: {}", describe(&e));
        let backlog = i32::try_from(max_connections.max(1024)).unwrap_or(i32::MAX);
        let mut listener = match inherited {
            Some(listener) => {
                listener.set_nonblocking(true).map_err(cannot)?;
                TcpListener::from_std(listener)
            }
            None => net::listen_with(addr, backlog, config.reuse_port).map_err(cannot)?,
        };
        let local_addr = listener.local_addr().map_err(cannot)?;
        let nodelay_inherited = net::accepts_nodelay(&listener);
        registry
            .register(&mut listener, token, Interest::READABLE)
            .map_err(|e| format!("cannot poll listener: {}", describe(&e)))?;
        Ok(Gate {
            listener: Some(listener),
            token,
            handed_off: false,
            local_addr,
            nodelay_inherited,
            max_connections,
            at_limit: false,
            pause: Slot::default(),
            exhausted_logged: false,
            limit_log: Throttle::new(LOG_INTERVAL),
            accept_log: Throttle::new(LOG_INTERVAL),
        })
    }

    /// The address the listener got (port 0 resolved).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Still listening: not draining, not handed off.
    pub fn listening(&self) -> bool {
        self.listener.is_some() && !self.handed_off
    }

    /// The open listener, to hand it to a successor.
    pub fn listener_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        self.listener.as_ref().map(std::os::fd::AsFd::as_fd)
    }

    /// A successor accepts now: stop accepting, keep the socket open (the
    /// clients in its backlog are the successor's).
    pub fn hand_off(&mut self, registry: &Registry, timers: &mut Timers) {
        if let Some(listener) = self.listener.as_mut()
            && !self.handed_off
        {
            let _ = registry.deregister(listener);
            self.handed_off = true;
        }
        self.pause.set(timers, None, 0, Timer::Accept);
    }

    /// The successor went away: accept again.
    pub fn take_back(&mut self, registry: &Registry) {
        if let Some(listener) = self.listener.as_mut()
            && self.handed_off
        {
            let _ = registry.register(listener, self.token, Interest::READABLE);
            self.handed_off = false;
        }
    }

    /// The next client to serve (`TCP_NODELAY` set), with `open`
    /// connections now; `None` when the backlog is empty or the gate is shut
    /// (limit, pause, drain).
    pub fn next(
        &mut self,
        open: usize,
        stats: &mut Stats,
        timers: &mut Timers,
        now: Instant,
    ) -> Option<(TcpStream, SocketAddr)> {
        if self.at_limit || self.pause.when().is_some() || self.handed_off {
            return None;
        }
        if open >= self.max_connections {
            // New clients wait in the kernel backlog until below 90 %.
            self.at_limit = true;
            add(&mut stats.connection_limit_hits, 1);
            if let Some(suppressed) = self.limit_log.ready(now) {
                info!(
                    "connection limit {} reached; new clients wait until below 90 %{}",
                    self.max_connections,
                    suppressed_note(suppressed)
                );
            }
            return None;
        }
        loop {
            let listener = self.listener.as_ref()?;
            match net::io(|| listener.accept()) {
                Io::Done((client, peer)) => {
                    if !self.nodelay_inherited {
                        // Best effort: latency matters more than packet count.
                        let _ = client.set_nodelay(true);
                    }
                    return Some((client, peer));
                }
                Io::WouldBlock => {
                    // The backlog is empty: any exhaustion episode is over.
                    self.exhausted_logged = false;
                    return None;
                }
                Io::Failed(e) if net::out_of_resources(&e) => {
                    let what = format!("cannot accept on {}", self.local_addr);
                    self.exhausted(&what, &e, stats, timers, now);
                    return None;
                }
                Io::Failed(e) => {
                    if let Some(suppressed) = self.accept_log.ready(now) {
                        let note = suppressed_note(suppressed);
                        debug!("accept failed: {}{note}", describe(&e));
                    }
                }
            }
        }
    }

    /// Notes running out of descriptors or memory (accepting, or opening
    /// an upstream socket): accepting pauses for [`ACCEPT_BACKOFF`] at a
    /// time, through the timers, so there is no busy loop; one warning per
    /// episode.
    pub fn exhausted(
        &mut self,
        what: &str,
        err: &io::Error,
        stats: &mut Stats,
        timers: &mut Timers,
        now: Instant,
    ) {
        add(&mut stats.resource_errors, 1);
        if !self.exhausted_logged {
            warn!(
                "{what}: {}; pausing accepts for {ACCEPT_BACKOFF:?} at a time until it recovers",
                describe(err),
            );
            self.exhausted_logged = true;
        }
        let resume = now + ACCEPT_BACKOFF;
        self.pause.set(timers, Some(resume), 0, Timer::Accept);
    }

    /// The pause is over ([`Timer::Accept`] fired).
    pub fn resume(&mut self) {
        self.pause.fired();
    }

    /// True once, when `open` connections dropped below 90 % of the limit
    /// after it was reached: accepting resumes.
    pub fn below_limit(&mut self, open: usize) -> bool {
        let below = open.saturating_mul(10) < self.max_connections.saturating_mul(9);
        if self.at_limit && below {
            self.at_limit = false;
            return true;
        }
        false
    }

    /// Closes the listener: new clients are refused from now on.
    pub fn close(&mut self, registry: &Registry, timers: &mut Timers) {
        if let Some(mut listener) = self.listener.take()
            && !self.handed_off
        {
            let _ = registry.deregister(&mut listener);
        }
        self.handed_off = false;
        self.pause.set(timers, None, 0, Timer::Accept);
    }
}

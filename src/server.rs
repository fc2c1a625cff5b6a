//! The event loop: one mio poll drives the listener, every client/server
//! pair, and the signal pipe. All state lives here; nothing is shared.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Shutdown, SocketAddr};
use std::time::{Duration, Instant};

use libc::{
    SIGALRM, SIGHUP, SIGINT, SIGIO, SIGPROF, SIGPWR, SIGSTKFLT, SIGTERM, SIGTTIN, SIGTTOU, SIGUSR1,
    SIGUSR2, SIGVTALRM, SIGXCPU, SIGXFSZ,
};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use signal_hook_mio::v1_0::Signals;
use slab::Slab;

use crate::admin::{self, Admin};
use crate::cli::Config;
use crate::linger::{self, Linger};
use crate::logging::{Throttle, suppressed_note};
use crate::net::{self, Connect, Io, connect_first, connect_progress, describe, endpoint};
use crate::output;
use crate::pipe::{Ctx, Fault, Pipe, Side};
use crate::pool::Pool;
use crate::recovery::Recovery;
use crate::scanner::Direction;
use crate::stats::{Report, Stats, add};
use crate::timer::{Slot, Timer, Timers};
use log::{debug, info, warn};

const LISTENER: Token = Token(0);
const SIGNALS: Token = Token(1);
const ADMIN: Token = Token(2);
/// Pair tokens start here: `PAIR_BASE + 2 * key` is the client, `+ 1` the server.
const PAIR_BASE: usize = 16;
/// Lingering clients: `LINGER_BASE + key`, above every pair token and below
/// the admin connections' tokens.
const LINGER_BASE: usize = 1 << (usize::BITS - 3);
/// At exit (drain over, or a second signal) lingering clients get at most
/// this long for their EOF, so a client that never closes cannot hang it.
const EXIT_LINGER: Duration = Duration::from_millis(500);

/// Free buffers kept for reuse; more than this go back to the allocator.
const POOL_CAP: usize = 32;
/// Reads per direction per drive before other pairs get their turn.
const READS_PER_TURN: usize = 4;
/// How long accepting pauses after running out of descriptors or memory.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// At most one line per this interval for each warning a peer can trigger
/// over and over (upstream failures, the connection limit, accept errors).
const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Signals handled by the loop: the reports (SIGUSR2, SIGUSR1), the stops
/// (SIGTERM, SIGINT, and SIGXCPU: a CPU-time soft limit warns before the
/// hard limit's SIGKILL, so the proxy drains and saves while it can), and
/// every asynchronous signal whose default action would kill or stop the
/// process, caught and ignored with a log line: SIGHUP (a closed terminal,
/// a reload by habit), SIGXFSZ (a file over RLIMIT_FSIZE: the write returns
/// EFBIG instead), SIGTTIN/SIGTTOU (terminal job control),
/// SIGALRM/SIGVTALRM/SIGPROF (timers survive `exec`), SIGPWR (a UPS
/// daemon's power event), SIGIO/SIGPOLL and SIGSTKFLT (nothing here uses
/// them), and the real-time signals SIGRTMIN..=SIGRTMAX (a stray
/// `kill -RTMIN+n`). SIGPIPE is ignored by the Rust runtime; writes get
/// EPIPE. Left at their default on purpose: synchronous faults (SIGSEGV,
/// SIGBUS, SIGILL, SIGFPE, SIGSYS from seccomp, SIGTRAP from a debugger,
/// SIGABRT from `abort`) and explicit user requests (SIGQUIT, SIGTSTP;
/// SIGKILL and SIGSTOP cannot be caught).
fn handled_signals() -> Vec<i32> {
    let mut signals = vec![
        SIGUSR1, SIGUSR2, SIGTERM, SIGINT, SIGXCPU, SIGHUP, SIGXFSZ, SIGTTIN, SIGTTOU, SIGALRM,
        SIGVTALRM, SIGPROF, SIGPWR, SIGIO, SIGSTKFLT,
    ];
    // The C library keeps the first real-time signals for itself (thread
    // cancellation, set*id across threads): SIGRTMIN is past them.
    signals.extend(libc::SIGRTMIN()..=libc::SIGRTMAX());
    signals
}

/// The name of `signal` for a log line: `SIGHUP`, `SIGRTMIN+3`.
fn signal_name(signal: i32) -> String {
    // signal-hook's table lacks the Linux-only ones.
    let linux_only = match signal {
        SIGPWR => Some("SIGPWR"),
        SIGSTKFLT => Some("SIGSTKFLT"),
        SIGIO => Some("SIGIO"),
        _ => None,
    };
    match linux_only.or_else(|| signal_hook::low_level::signal_name(signal)) {
        Some(name) => name.to_string(),
        None if signal == libc::SIGRTMIN() => "SIGRTMIN".to_string(),
        None if signal > libc::SIGRTMIN() && signal <= libc::SIGRTMAX() => {
            format!("SIGRTMIN+{}", signal - libc::SIGRTMIN())
        }
        None => format!("signal {signal}"),
    }
}

/// Catches the signals the loop ignores from the very start of `main`, so
/// that one arriving before the loop's own handlers are installed (a
/// SIGXFSZ from the recovery file's start-up probe, a SIGHUP) cannot kill
/// the process. The loop's [`Signals`] later log them.
pub fn catch_stray_signals() {
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;
    let seen = Arc::new(AtomicBool::new(false));
    for signal in handled_signals() {
        if !matches!(signal, SIGUSR1 | SIGUSR2 | SIGTERM | SIGINT) {
            // Best effort: a signal that cannot be caught keeps its default.
            let _ = signal_hook::flag::register(signal, seen.clone());
        }
    }
}

fn client_token(key: usize) -> Token {
    Token(PAIR_BASE + 2 * key)
}

fn server_token(key: usize) -> Token {
    Token(PAIR_BASE + 2 * key + 1)
}

/// Which side of which pair a token names.
fn pair_of(token: Token) -> Option<(usize, bool)> {
    let n = token.0.checked_sub(PAIR_BASE)?;
    Some((n / 2, n % 2 == 0))
}

fn linger_token(key: usize) -> Token {
    Token(LINGER_BASE + key)
}

/// The lingering client a token names, if it is one.
fn linger_of(token: Token) -> Option<usize> {
    token
        .0
        .checked_sub(LINGER_BASE)
        .filter(|k| *k < LINGER_BASE)
}

/// How [`Server::run`] ended after a stop signal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stopped {
    /// Drained, and the final snapshot is on disk (or there is no recovery
    /// file): exit 0.
    Clean,
    /// The final snapshot could not be written, the wait for it ran out, or
    /// a further signal cut it short: the counts since the last snapshot
    /// are lost. `main` exits 3.
    SnapshotLost,
}

/// A client connection and its upstream connection.
struct Pair {
    /// Unique for the process lifetime; slab keys are reused.
    id: u64,
    client: Side,
    server: Side,
    /// Index of the forward address being tried or used.
    upstream: usize,
    connected: bool,
    c2s: Pipe,
    s2c: Pipe,
    /// The client shut down its sending side.
    client_eof: bool,
    /// The server closed or failed: only flushing to the client remains.
    server_done: bool,
    /// We shut down the upstream's write side after the client's FIN.
    upstream_shut: bool,
    deadline: Slot,
    /// The deadline is the fin timeout (no longer connect or idle).
    fin_armed: bool,
    /// When the pair last moved a byte, for the idle timeout.
    last_active: Instant,
    scheduled: bool,
}

/// How a pair ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The client reset or failed: close both sides now.
    Abort,
    /// Done with the client: close the upstream, then a lingering close.
    Linger,
}

/// What the loop must do with a pair after driving it.
#[derive(Debug, Default)]
struct Drive {
    end: Option<End>,
    requeue: bool,
    /// The pair entered its closing phase: bound it with the fin timeout.
    closing: bool,
    /// Bytes moved in either direction.
    moved: bool,
}

impl Pair {
    fn drive(&mut self, ctx: &mut Ctx<'_>) -> Drive {
        let mut out = Drive::default();
        if !self.server_done {
            match self
                .c2s
                .pump(&mut self.client, &mut self.server, self.connected, ctx)
            {
                Ok(p) => {
                    self.client_eof |= p.eof;
                    out.requeue |= p.exhausted;
                    out.moved |= p.moved;
                }
                Err(Fault::Source(e)) => {
                    debug!("pair {}: client read failed: {}", self.id, describe(&e));
                    out.end = Some(End::Abort);
                    return out;
                }
                Err(Fault::Destination(e)) => {
                    debug!("pair {}: upstream write failed: {}", self.id, describe(&e));
                    self.server_done = true;
                }
            }
        }
        if self.connected {
            // Once the server is done, its side is no longer read: only the
            // bytes already held are flushed to the client.
            if self.server_done {
                self.server.readable = false;
            }
            match self.s2c.pump(&mut self.server, &mut self.client, true, ctx) {
                Ok(p) => {
                    self.server_done |= p.eof;
                    out.requeue |= p.exhausted;
                    out.moved |= p.moved;
                }
                Err(Fault::Source(e)) => {
                    debug!("pair {}: upstream read failed: {}", self.id, describe(&e));
                    self.server_done = true;
                }
                Err(Fault::Destination(e)) => {
                    debug!("pair {}: client write failed: {}", self.id, describe(&e));
                    out.end = Some(End::Abort);
                    return out;
                }
            }
        }
        if self.server_done {
            // What the server sent is delivered by the lingering close.
            out.end = Some(End::Linger);
            out.requeue = false;
            return out;
        }
        if self.client_eof && self.connected {
            out.closing = true;
            if self.c2s.pending() == 0 && !self.upstream_shut {
                self.upstream_shut = true;
                if let Err(e) = self.server.stream.shutdown(Shutdown::Write) {
                    debug!(
                        "pair {}: upstream shutdown failed: {}",
                        self.id,
                        describe(&e)
                    );
                }
            }
            // A Foo server answers each line with one line: once every line
            // the client sent is answered and delivered, nothing is left. A
            // partial last line (no newline before the FIN) is answered too
            // by servers that read to EOF: wait for one more line then.
            let sent = self
                .c2s
                .lines
                .saturating_add(u64::from(!self.c2s.at_frame_boundary()));
            if self.upstream_shut && self.s2c.pending() == 0 && self.s2c.lines >= sent {
                out.end = Some(End::Linger);
            }
        }
        out
    }

    fn buffered(&self) -> usize {
        self.c2s.pending().saturating_add(self.s2c.pending())
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

/// Forgets pair `key`'s upstream connection in the loop map, if it is
/// there. Nothing to do, and no system call, in a usual setup (the map is
/// empty); the map is keyed by the local address only, so an entry is
/// removed only if it is this pair's (two sockets to different peers can
/// share a local address).
fn unwatch(map: &mut HashMap<(IpAddr, u16), usize>, key: usize, stream: &TcpStream) {
    if map.is_empty() {
        return;
    }
    if let Ok(local) = stream.local_addr() {
        let local = endpoint(local);
        if map.get(&local) == Some(&key) {
            map.remove(&local);
        }
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

/// The proxy: owns every socket, buffer, counter and deadline.
pub struct Server {
    poll: Poll,
    /// Dropped when a drain starts, so new clients are refused at once.
    listener: Option<TcpListener>,
    local_addr: SocketAddr,
    signals: Signals,
    pairs: Slab<Pair>,
    /// Clients in their lingering close; they count as connections.
    lingering: Slab<Linger>,
    linger_work: Vec<usize>,
    config: Config,
    pool: Pool,
    scratch: Box<[u8]>,
    stats: Stats,
    timers: Timers,
    /// The admin HTTP socket, unless `-http off`.
    admin: Option<Admin>,
    start: Instant,
    next_id: u64,
    /// Pairs to drive in this iteration, and those that used their budget.
    work: Vec<usize>,
    /// Accepting pauses until this deadline after running out of
    /// descriptors or memory.
    accept_pause: Slot,
    /// Out of descriptors or memory: logged once per episode.
    exhausted_logged: bool,
    /// At `--max-connections`: accepting waits until below 90 %.
    at_limit: bool,
    /// Accepting should be retried now (backlog left from a pause).
    accept_again: bool,
    upstream_log: Throttle,
    /// Moves to the next forward address.
    retry_log: Throttle,
    /// Local addresses of upstream connections to our own listen port, by
    /// pair key: an accepted client from one of them is the proxy itself,
    /// a forwarding loop the start-up check could not see (an address this
    /// host gained later). Empty in a usual setup.
    loop_watch: HashMap<(IpAddr, u16), usize>,
    limit_log: Throttle,
    accept_log: Throttle,
    signal_log: Throttle,
    /// SIGTERM/SIGINT seen: connections get until this deadline to finish.
    drain: Slot,
    /// The drain is over: lingering clients get until this instant.
    exit_deadline: Option<Instant>,
    /// The recovery file's next snapshot, while counters changed.
    snapshot: Slot,
    stopping: bool,
    /// The recovery file main claimed before `bind` (`set_recovery`);
    /// `run` restores it. `None` when disabled.
    recovery: Option<Recovery>,
}

impl Server {
    /// Binds the listener and sets up the poll. Errors name the address.
    pub fn bind(config: Config) -> Result<Server, String> {
        let poll = Poll::new().map_err(|e| format!("cannot create poll: {}", describe(&e)))?;
        // A backlog as deep as the connection limit (the kernel caps it at
        // net.core.somaxconn): a burst of clients must not overflow it.
        let backlog = i32::try_from(config.max_connections.max(1024)).unwrap_or(i32::MAX);
        let mut listener = net::listen(config.listen, backlog)
            .map_err(|e| format!("cannot listen on {}: {}", config.listen, describe(&e)))?;
        let local_addr = listener
            .local_addr()
            .map_err(|e| format!("cannot listen on {}: {}", config.listen, describe(&e)))?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)
            .map_err(|e| format!("cannot poll listener: {}", describe(&e)))?;
        let mut signals = Signals::new(handled_signals())
            .map_err(|e| format!("cannot install signal handlers: {}", describe(&e)))?;
        poll.registry()
            .register(&mut signals, SIGNALS, Interest::READABLE)
            .map_err(|e| format!("cannot poll signals: {}", describe(&e)))?;
        let admin = match config.http {
            Some(addr) => Some(Admin::bind(addr, poll.registry(), ADMIN)?),
            None => None,
        };
        let buffer_size = config.buffer_size;
        Ok(Server {
            poll,
            listener: Some(listener),
            local_addr,
            signals,
            pairs: Slab::new(),
            lingering: Slab::new(),
            linger_work: Vec::new(),
            config,
            pool: Pool::new(buffer_size, POOL_CAP),
            scratch: vec![0u8; buffer_size].into_boxed_slice(),
            stats: Stats::default(),
            timers: Timers::default(),
            admin,
            start: Instant::now(),
            next_id: 0,
            work: Vec::new(),
            accept_pause: Slot::default(),
            exhausted_logged: false,
            at_limit: false,
            accept_again: false,
            upstream_log: Throttle::new(LOG_INTERVAL),
            retry_log: Throttle::new(LOG_INTERVAL),
            loop_watch: HashMap::new(),
            limit_log: Throttle::new(LOG_INTERVAL),
            accept_log: Throttle::new(LOG_INTERVAL),
            signal_log: Throttle::new(Duration::from_secs(1)),
            drain: Slot::default(),
            exit_deadline: None,
            snapshot: Slot::default(),
            stopping: false,
            recovery: None,
        })
    }

    /// Takes the recovery file that was claimed before the sockets were
    /// bound; `run` restores it and keeps it written.
    pub fn set_recovery(&mut self, recovery: Recovery) {
        self.recovery = Some(recovery);
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// A forward address that is this proxy's own listener, which would
    /// make every client connect the proxy to itself until the connection
    /// limit: one line naming it, for an exit 2 at start.
    pub fn forwards_to_itself(&self) -> Option<String> {
        let own = self.local_addr;
        let hit = self
            .config
            .forward
            .iter()
            .find(|f| net::reaches_itself(own, **f, net::is_local))?;
        let why = if net::canonical(hit.ip()).is_unspecified() {
            " (the unspecified address connects to this host)"
        } else {
            ""
        };
        Some(format!(
            "invalid value {:?} for -forward: {hit}{why} is this proxy's own listen address {own}",
            self.config.forward_spec
        ))
    }

    /// Where the admin HTTP socket listens, if it is on.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(Admin::local_addr)
    }

    /// Ready for new clients: not draining, not stopping.
    pub fn ready(&self) -> bool {
        self.listener.is_some() && !self.stopping
    }

    fn now_ms(&self, now: Instant) -> u64 {
        ms_since(self.start, now)
    }

    /// Runs until SIGTERM or SIGINT; whether the final snapshot was saved.
    pub fn run(&mut self) -> io::Result<Stopped> {
        let forward: Vec<String> = self.config.forward.iter().map(|a| a.to_string()).collect();
        let admin = match self.admin_addr() {
            Some(addr) => format!("; admin listening on {addr}"),
            None => String::new(),
        };
        info!(
            "foo-proxy {} listening on {}, forwarding to {} ({}){admin}",
            env!("CARGO_PKG_VERSION"),
            self.local_addr,
            self.config.forward_spec,
            forward.join(", ")
        );
        if let Some(recovery) = &mut self.recovery {
            let now = Instant::now();
            recovery.open(&mut self.stats, now, ms_since(self.start, now));
        }
        let mut events = Events::with_capacity(1024);
        while !self.stopping {
            let timeout = self.poll_timeout(Instant::now());
            if let Io::Failed(e) = net::io(|| self.poll.poll(&mut events, timeout)) {
                return Err(e);
            }
            // The clock is read once per iteration, not per message.
            let now = Instant::now();
            let mut accept = false;
            for event in events.iter() {
                match event.token() {
                    LISTENER => accept = true,
                    SIGNALS => self.handle_signals(now),
                    ADMIN => {
                        if let Some(admin) = self.admin.as_mut() {
                            admin.accept(self.poll.registry(), &mut self.timers, now);
                        }
                    }
                    token => match (admin::key_of(token), self.admin.as_mut()) {
                        (Some(key), Some(admin)) => admin.note_event(key),
                        _ => match linger_of(token) {
                            Some(key) => self.note_linger_event(key, event),
                            None => self.note_event(token, event, now),
                        },
                    },
                }
            }
            if accept {
                self.accept_clients(now);
            }
            self.drive_work(now);
            self.drive_lingering();
            self.drive_admin(now);
            self.fire_timers(now);
            if std::mem::take(&mut self.accept_again) {
                self.accept_clients(now);
            }
            let now_ms = self.now_ms(now);
            self.stats.commit_window(now_ms);
            if let Some(recovery) = &mut self.recovery {
                recovery.tick(&mut self.stats, now, now_ms);
                let due = recovery.deadline();
                self.snapshot.set(&mut self.timers, due, 0, Timer::Snapshot);
            }
            if self.drain.when().is_some()
                && self.exit_deadline.is_none()
                && self.connections() == 0
            {
                self.begin_exit(now);
            }
            if self.exit_deadline.is_some() && self.lingering.is_empty() {
                self.stopping = true;
            }
        }
        if !self.lingering.is_empty() {
            info!(
                "closing {} lingering connection(s) at exit",
                self.lingering.len()
            );
        }
        let keys: Vec<usize> = self.lingering.iter().map(|(k, _)| k).collect();
        for key in keys {
            self.end_linger(key);
        }
        let mut stopped = Stopped::Clean;
        if let Some(recovery) = self.recovery.take() {
            let now_ms = self.now_ms(Instant::now());
            let signals = &mut self.signals;
            // One more SIGTERM or SIGINT ends the wait for a slow disk.
            let cut_short = || signals.pending().any(|s| matches!(s, SIGTERM | SIGINT));
            if !recovery.finish(&mut self.stats, now_ms, cut_short) {
                stopped = Stopped::SnapshotLost;
            }
        }
        Ok(stopped)
    }

    fn poll_timeout(&self, now: Instant) -> Option<Duration> {
        if !self.work.is_empty() || self.admin.as_ref().is_some_and(Admin::has_work) {
            return Some(Duration::ZERO);
        }
        if !self.linger_work.is_empty() {
            return Some(Duration::ZERO);
        }
        // Round up so a deadline is never polled for just before it is due.
        self.timers
            .next()
            .map(|t| t.saturating_duration_since(now) + Duration::from_millis(1))
    }

    fn handle_signals(&mut self, now: Instant) {
        let pending: Vec<i32> = self.signals.pending().collect();
        for signal in pending {
            match signal {
                SIGUSR1 | SIGUSR2 => self.print_report(now),
                SIGTERM | SIGINT => self.begin_shutdown(now),
                SIGXCPU => {
                    warn!("SIGXCPU: the CPU time limit is reached; stopping as on SIGTERM");
                    self.begin_shutdown(now);
                }
                other => {
                    if let Some(suppressed) = self.signal_log.ready(now) {
                        let name = signal_name(other);
                        warn!(
                            "ignoring {name} (SIGTERM or SIGINT stops the proxy){}",
                            suppressed_note(suppressed)
                        );
                    }
                }
            }
        }
    }

    /// Client connections open, lingering ones included: what the
    /// connection limit and `connections_active` count.
    fn connections(&self) -> usize {
        self.pairs.len().saturating_add(self.lingering.len())
    }

    /// First signal: stop accepting and drain. Second: end the drain (the
    /// exit linger). Third: stop now.
    fn begin_shutdown(&mut self, now: Instant) {
        if self.exit_deadline.is_some() {
            self.stopping = true;
            return;
        }
        if self.drain.when().is_some() || self.connections() == 0 {
            self.begin_exit(now);
            return;
        }
        self.stop_listening();
        let until = now + self.config.drain_timeout;
        self.drain
            .set(&mut self.timers, Some(until), 0, Timer::Drain);
        info!(
            "draining: {} connection(s) get up to {:?} to finish; signal again to stop now",
            self.pairs.len(),
            self.config.drain_timeout
        );
    }

    fn stop_listening(&mut self) {
        if let Some(mut listener) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut listener);
        }
        self.accept_pause
            .set(&mut self.timers, None, 0, Timer::Accept);
    }

    /// The drain is over: every pair still open gets its lingering close,
    /// and lingering clients get at most [`EXIT_LINGER`] more (never more
    /// than `--fin-timeout`), so the exit is bounded.
    fn begin_exit(&mut self, now: Instant) {
        self.stop_listening();
        self.drain.set(&mut self.timers, None, 0, Timer::Drain);
        let until = now + EXIT_LINGER.min(self.config.fin_timeout);
        self.exit_deadline = Some(until);
        self.timers.arm(until, 0, Timer::Exit);
        if !self.pairs.is_empty() {
            info!("closing {} connection(s) still open", self.pairs.len());
        }
        let keys: Vec<usize> = self.pairs.iter().map(|(k, _)| k).collect();
        for key in keys {
            self.linger(key, until);
        }
        let keys: Vec<usize> = self.lingering.iter().map(|(k, _)| k).collect();
        for key in keys {
            if let Some(l) = self.lingering.get_mut(key)
                && l.deadline.when().is_some_and(|t| t > until)
            {
                l.deadline
                    .set(&mut self.timers, Some(until), l.id, Timer::Linger(key));
            }
        }
    }

    /// Notes running out of descriptors or memory: pause accepting briefly
    /// (the pause is folded into the poll timeout, so no busy loop).
    fn exhausted(&mut self, what: &str, err: &io::Error, now: Instant) {
        self.stats.resource_errors = self.stats.resource_errors.saturating_add(1);
        if !self.exhausted_logged {
            warn!(
                "{what}: {}; pausing accepts for {:?} at a time until it recovers",
                describe(err),
                ACCEPT_BACKOFF
            );
            self.exhausted_logged = true;
        }
        let resume = now + ACCEPT_BACKOFF;
        self.accept_pause
            .set(&mut self.timers, Some(resume), 0, Timer::Accept);
    }

    /// The report as the admin socket and the signals show it.
    pub fn report(&mut self, now: Instant) -> Report {
        report(
            &mut self.stats,
            &self.pairs,
            &self.lingering,
            self.start,
            now,
        )
    }

    /// Serves admin connections after the data path had its turn.
    fn drive_admin(&mut self, now: Instant) {
        let ready = self.ready();
        let Some(admin) = self.admin.as_mut() else {
            return;
        };
        let (stats, pairs, lingering) = (&mut self.stats, &self.pairs, &self.lingering);
        let start = self.start;
        let mut report = || report(stats, pairs, lingering, start, now);
        admin.drive(
            self.poll.registry(),
            &mut self.timers,
            now,
            ready,
            &mut report,
        );
    }

    /// Queues the report for the stdout writer; a full queue (stdout not
    /// read) drops it and counts it, so the loop never waits.
    fn print_report(&mut self, now: Instant) {
        output::report(&self.report(now).to_json());
    }

    fn accept_clients(&mut self, now: Instant) {
        if self.accept_pause.when().is_some() || self.at_limit {
            return;
        }
        loop {
            if self.connections() >= self.config.max_connections {
                // New clients wait in the kernel backlog until we are below 90 %.
                self.at_limit = true;
                self.stats.connection_limit_hits =
                    self.stats.connection_limit_hits.saturating_add(1);
                if let Some(suppressed) = self.limit_log.ready(now) {
                    info!(
                        "connection limit {} reached; new clients wait until below 90 %{}",
                        self.config.max_connections,
                        suppressed_note(suppressed)
                    );
                }
                return;
            }
            let Some(listener) = self.listener.as_ref() else {
                return;
            };
            match net::io(|| listener.accept()) {
                Io::Done((stream, peer)) => {
                    // Empty unless a forward goes to our own listen port.
                    let looped = match self.loop_watch.is_empty() {
                        true => None,
                        false => self.loop_watch.get(&endpoint(peer)).copied(),
                    };
                    match looped {
                        Some(origin) => self.cut_loop(origin, stream, now),
                        None => self.open_pair(stream, peer, now),
                    }
                }
                Io::WouldBlock => {
                    // The backlog is empty: any exhaustion episode is over.
                    self.exhausted_logged = false;
                    return;
                }
                Io::Failed(e) if net::out_of_resources(&e) => {
                    self.exhausted(&format!("cannot accept on {}", self.local_addr), &e, now);
                    return;
                }
                Io::Failed(e) => {
                    if let Some(suppressed) = self.accept_log.ready(now) {
                        debug!(
                            "accept failed: {}{}",
                            describe(&e),
                            suppressed_note(suppressed)
                        );
                    }
                }
            }
            if self.accept_pause.when().is_some() {
                return;
            }
        }
    }

    fn open_pair(&mut self, mut client: TcpStream, peer: SocketAddr, now: Instant) {
        let _ = client.set_nodelay(true);
        let entry = self.pairs.vacant_entry();
        let key = entry.key();
        let registry = self.poll.registry();
        if let Err(e) = registry.register(
            &mut client,
            client_token(key),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            if let Some(suppressed) = self.accept_log.ready(now) {
                warn!(
                    "cannot poll client {peer}: {}{}",
                    describe(&e),
                    suppressed_note(suppressed)
                );
            }
            return;
        }
        self.stats.connections_total = self.stats.connections_total.saturating_add(1);
        self.stats.connections_active = self.stats.connections_active.saturating_add(1);
        self.next_id = self.next_id.wrapping_add(1);
        let id = self.next_id;
        debug!("pair {id}: client {peer} accepted");
        let (stats, retry_log) = (&mut self.stats, &mut self.retry_log);
        let retried = |failed, why: &io::Error, next| {
            note_retry(stats, retry_log, (failed, why, next), now);
        };
        let (upstream, mut server) = match connect_first(&self.config.forward, 0, retried) {
            Ok(ok) => ok,
            Err(e) => {
                if net::out_of_resources(&e) {
                    self.exhausted("cannot open an upstream socket", &e, now);
                } else {
                    self.upstream_failed(&e, now);
                }
                let until = now + self.config.fin_timeout;
                self.start_linger(
                    id,
                    Side::new(client),
                    Pipe::new(Direction::ServerToClient),
                    false,
                    until,
                );
                return;
            }
        };
        if let Err(e) = registry.register(
            &mut server,
            server_token(key),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            self.upstream_failed(&e, now);
            let until = now + self.config.fin_timeout;
            self.start_linger(
                id,
                Side::new(client),
                Pipe::new(Direction::ServerToClient),
                false,
                until,
            );
            return;
        }
        let forward = self.config.forward.get(upstream).copied();
        let watch = forward.and_then(|f| loop_key(f, self.local_addr.port(), &server));
        if let Some(k) = watch {
            self.loop_watch.insert(k, key);
        }
        entry.insert(Pair {
            id,
            client: Side::new(client),
            server: Side::new(server),
            upstream,
            connected: false,
            c2s: Pipe::new(Direction::ClientToServer),
            s2c: Pipe::new(Direction::ServerToClient),
            client_eof: false,
            server_done: false,
            upstream_shut: false,
            deadline: Slot::default(),
            fin_armed: false,
            last_active: now,
            scheduled: false,
        });
        self.set_deadline(key, Some(now + self.config.connect_timeout));
    }

    /// Counts an unreachable upstream and logs it, throttled.
    fn upstream_failed(&mut self, err: &io::Error, now: Instant) {
        self.stats.upstream_errors = self.stats.upstream_errors.saturating_add(1);
        if let Some(suppressed) = self.upstream_log.ready(now) {
            warn!(
                "cannot reach upstream {}: {}; closing the client{}",
                self.config.forward_spec,
                describe(err),
                suppressed_note(suppressed)
            );
        }
    }

    fn note_event(&mut self, token: Token, event: &mio::event::Event, now: Instant) {
        let Some((key, is_client)) = pair_of(token) else {
            return;
        };
        let Some(pair) = self.pairs.get_mut(key) else {
            return;
        };
        let readable = event.is_readable() || event.is_read_closed() || event.is_error();
        let writable = event.is_writable() || event.is_write_closed() || event.is_error();
        let read_closed = event.is_read_closed() || event.is_error();
        if is_client {
            pair.client.readable |= readable;
            pair.client.writable |= writable;
            pair.client.read_closed |= read_closed;
        } else {
            pair.server.readable |= readable;
            pair.server.writable |= writable;
            pair.server.read_closed |= read_closed;
            if !pair.connected {
                match connect_progress(&pair.server.stream) {
                    Connect::Pending => return,
                    Connect::Connected => {
                        pair.connected = true;
                        pair.server.writable = true;
                        pair.last_active = now;
                        debug!("pair {}: upstream connected", pair.id);
                        self.set_deadline(key, Some(now + self.config.idle_timeout));
                    }
                    Connect::Failed(e) => {
                        self.retry_connect(key, e, now);
                        return;
                    }
                }
            }
        }
        self.schedule(key);
    }

    fn note_linger_event(&mut self, key: usize, event: &mio::event::Event) {
        let Some(l) = self.lingering.get_mut(key) else {
            return;
        };
        l.client.readable |= event.is_readable() || event.is_read_closed() || event.is_error();
        l.client.writable |= event.is_writable() || event.is_write_closed() || event.is_error();
        l.client.read_closed |= event.is_read_closed() || event.is_error();
        if !l.scheduled {
            l.scheduled = true;
            self.linger_work.push(key);
        }
    }

    fn schedule(&mut self, key: usize) {
        if let Some(pair) = self.pairs.get_mut(key)
            && !pair.scheduled
        {
            pair.scheduled = true;
            self.work.push(key);
        }
    }

    /// Tries the next forward address, or gives up on the pair. Each
    /// attempt gets the whole `--connect-timeout`.
    fn retry_connect(&mut self, key: usize, err: io::Error, now: Instant) {
        let Some(pair) = self.pairs.get_mut(key) else {
            return;
        };
        let registry = self.poll.registry();
        let _ = registry.deregister(&mut pair.server.stream);
        unwatch(&mut self.loop_watch, key, &pair.server.stream);
        let addrs = &self.config.forward;
        let from = pair.upstream.saturating_add(1);
        let (stats, retry_log) = (&mut self.stats, &mut self.retry_log);
        if let (Some(failed), Some(next)) = (addrs.get(pair.upstream), addrs.get(from)) {
            note_retry(stats, retry_log, (*failed, &err, *next), now);
        }
        let retried = |failed, why: &io::Error, next| {
            note_retry(stats, retry_log, (failed, why, next), now);
        };
        let next = connect_first(addrs, from, retried);
        let registered = next.and_then(|(i, mut stream)| {
            registry
                .register(
                    &mut stream,
                    server_token(key),
                    Interest::READABLE | Interest::WRITABLE,
                )
                .map(|()| (i, stream))
        });
        match registered {
            Ok((i, stream)) => {
                let watch = addrs
                    .get(i)
                    .and_then(|f| loop_key(*f, self.local_addr.port(), &stream));
                if let Some(k) = watch {
                    self.loop_watch.insert(k, key);
                }
                pair.upstream = i;
                pair.server = Side::new(stream);
                self.set_deadline(key, Some(now + self.config.connect_timeout));
            }
            Err(_) => {
                self.upstream_failed(&err, now);
                self.linger(key, now + self.config.fin_timeout);
            }
        }
    }

    fn drive_work(&mut self, now: Instant) {
        let work = std::mem::take(&mut self.work);
        for key in work {
            let budget = READS_PER_TURN * self.config.buffer_size;
            let Some(pair) = self.pairs.get_mut(key) else {
                continue;
            };
            pair.scheduled = false;
            let mut ctx = Ctx {
                scratch: &mut self.scratch,
                pool: &mut self.pool,
                stats: &mut self.stats,
                budget,
            };
            let outcome = pair.drive(&mut ctx);
            if outcome.moved {
                pair.last_active = now;
            }
            match outcome.end {
                Some(End::Abort) => {
                    self.abort(key);
                    continue;
                }
                Some(End::Linger) => {
                    self.linger(key, now + self.config.fin_timeout);
                    continue;
                }
                None => {}
            }
            if outcome.closing && !pair.fin_armed {
                pair.fin_armed = true;
                self.set_deadline(key, Some(now + self.config.fin_timeout));
            }
            if outcome.requeue {
                self.schedule(key);
            }
        }
    }

    /// Drives the lingering clients that had an event, a bounded amount each.
    fn drive_lingering(&mut self) {
        let budget = READS_PER_TURN * self.config.buffer_size;
        for key in std::mem::take(&mut self.linger_work) {
            let Some(l) = self.lingering.get_mut(key) else {
                continue;
            };
            l.scheduled = false;
            match l.drive(&mut self.scratch, &mut self.pool, budget) {
                linger::Step::Wait => {}
                linger::Step::Requeue => {
                    l.scheduled = true;
                    self.linger_work.push(key);
                }
                linger::Step::Done => {
                    debug!("pair {}: closed", l.id);
                    self.end_linger(key);
                }
                linger::Step::Failed(e) => {
                    debug!(
                        "pair {}: client failed while lingering: {}",
                        l.id,
                        describe(&e)
                    );
                    self.end_linger(key);
                }
                linger::Step::TooMuch => {
                    debug!(
                        "pair {}: client sent over {} bytes after the FIN; closing",
                        l.id,
                        linger::MAX_DISCARD
                    );
                    self.end_linger(key);
                }
            }
        }
    }

    fn set_deadline(&mut self, key: usize, when: Option<Instant>) {
        let Some(pair) = self.pairs.get_mut(key) else {
            return;
        };
        pair.deadline
            .set(&mut self.timers, when, pair.id, Timer::Pair(key));
    }

    fn fire_timers(&mut self, now: Instant) {
        while let Some((id, timer)) = self.timers.pop_due(now) {
            let key = match timer {
                Timer::Pair(key) => key,
                Timer::Admin(key) => {
                    if let Some(admin) = self.admin.as_mut() {
                        admin.expire(key, id, self.poll.registry(), &mut self.timers, now);
                    }
                    continue;
                }
                Timer::AdminAccept => {
                    if let Some(admin) = self.admin.as_mut() {
                        admin.accept(self.poll.registry(), &mut self.timers, now);
                    }
                    continue;
                }
                Timer::Linger(key) => {
                    if let Some(l) = self.lingering.get_mut(key).filter(|l| l.id == id) {
                        l.deadline.fired();
                        debug!("pair {id}: lingering close reached its bound");
                        self.end_linger(key);
                    }
                    continue;
                }
                Timer::Accept => {
                    self.accept_pause.fired();
                    self.accept_clients(now);
                    continue;
                }
                Timer::Drain => {
                    self.drain.fired();
                    self.begin_exit(now);
                    continue;
                }
                Timer::Exit => {
                    self.stopping = true;
                    continue;
                }
                Timer::Snapshot => {
                    // The tick at the end of this iteration writes it.
                    self.snapshot.fired();
                    continue;
                }
            };
            let Some(pair) = self.pairs.get_mut(key) else {
                continue;
            };
            if pair.id != id {
                continue;
            }
            pair.deadline.fired();
            if pair.fin_armed {
                debug!("pair {}: fin timeout", pair.id);
                self.linger(key, now + self.config.fin_timeout);
            } else if pair.connected {
                let idle_until = pair.last_active + self.config.idle_timeout;
                if idle_until <= now {
                    debug!("pair {}: idle timeout", pair.id);
                    self.linger(key, now + self.config.fin_timeout);
                } else {
                    self.set_deadline(key, Some(idle_until));
                }
            } else {
                let err = io::Error::new(io::ErrorKind::TimedOut, "connect timed out");
                self.retry_connect(key, err, now);
            }
        }
    }

    /// Removes a pair from the slab, its deadline from the timers, both
    /// sockets from the poll, and closes the upstream.
    fn take_pair(&mut self, key: usize) -> Option<Pair> {
        let mut pair = self.pairs.try_remove(key)?;
        pair.deadline
            .set(&mut self.timers, None, pair.id, Timer::Pair(key));
        let registry = self.poll.registry();
        let _ = registry.deregister(&mut pair.server.stream);
        unwatch(&mut self.loop_watch, key, &pair.server.stream);
        // Bytes after the last newline form no frame; counted here, once
        // per connection, so that the frame counts can be reconciled.
        if !pair.c2s.at_frame_boundary() {
            add(&mut self.stats.partial_frames_client_to_server, 1);
        }
        if !pair.s2c.at_frame_boundary() {
            add(&mut self.stats.partial_frames_server_to_client, 1);
        }
        pair.c2s.discard(&mut self.pool);
        Some(pair)
    }

    /// The client reset or failed: close both sides now.
    fn abort(&mut self, key: usize) {
        let Some(mut pair) = self.take_pair(key) else {
            return;
        };
        let _ = self.poll.registry().deregister(&mut pair.client.stream);
        pair.s2c.discard(&mut self.pool);
        debug!("pair {}: closed", pair.id);
        self.connection_closed();
    }

    /// An accepted client is our own upstream connection for pair `origin`:
    /// a forwarding loop. The looped connection is closed at once, and the
    /// origin's client is not served (an upstream error), so one client
    /// costs one extra connection instead of every descriptor.
    fn cut_loop(&mut self, origin: usize, looped: TcpStream, now: Instant) {
        drop(looped);
        let target = self
            .pairs
            .get(origin)
            .and_then(|p| self.config.forward.get(p.upstream))
            .map_or_else(String::new, |a| format!("{a} "));
        let why = io::Error::other(format!(
            "{target}leads back to this proxy's own listener {} (a forwarding loop)",
            self.local_addr
        ));
        self.upstream_failed(&why, now);
        self.linger(origin, now + self.config.fin_timeout);
    }

    /// Done with the client: the upstream is closed now, the client gets a
    /// lingering close bounded by `until`.
    fn linger(&mut self, key: usize, until: Instant) {
        let Some(pair) = self.take_pair(key) else {
            return;
        };
        let until = self.exit_deadline.map_or(until, |exit| exit.min(until));
        self.start_linger(pair.id, pair.client, pair.s2c, pair.client_eof, until);
    }

    /// Moves a client into the lingering set, registered under a linger
    /// token and driven at once.
    fn start_linger(
        &mut self,
        id: u64,
        mut client: Side,
        mut s2c: Pipe,
        client_eof: bool,
        until: Instant,
    ) {
        if client_eof && s2c.pending() == 0 {
            // Nothing to deliver and nothing more can arrive: close now.
            let _ = self.poll.registry().deregister(&mut client.stream);
            debug!("pair {id}: closed");
            self.connection_closed();
            return;
        }
        let entry = self.lingering.vacant_entry();
        let key = entry.key();
        if let Err(e) = self.poll.registry().reregister(
            &mut client.stream,
            linger_token(key),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            debug!(
                "pair {id}: cannot poll the lingering client: {}",
                describe(&e)
            );
            let _ = self.poll.registry().deregister(&mut client.stream);
            s2c.discard(&mut self.pool);
            self.connection_closed();
            return;
        }
        // Try at once; the events say when to try again.
        client.readable = true;
        client.writable = true;
        let mut l = Linger::new(id, client, s2c, client_eof);
        l.scheduled = true;
        l.deadline
            .set(&mut self.timers, Some(until), id, Timer::Linger(key));
        entry.insert(l);
        self.linger_work.push(key);
    }

    /// Ends a lingering close: the socket is closed (a reset if the bound
    /// ran out with input unread).
    fn end_linger(&mut self, key: usize) {
        let Some(mut l) = self.lingering.try_remove(key) else {
            return;
        };
        l.deadline
            .set(&mut self.timers, None, l.id, Timer::Linger(key));
        let _ = self.poll.registry().deregister(&mut l.client.stream);
        l.release(&mut self.pool);
        self.connection_closed();
    }

    /// A client connection is gone: gauges, and accepting below 90 %.
    fn connection_closed(&mut self) {
        self.stats.connections_active = self.stats.connections_active.saturating_sub(1);
        if self.at_limit && self.connections() * 10 < self.config.max_connections * 9 {
            self.at_limit = false;
            self.accept_again = true;
        }
    }
}

fn ms_since(start: Instant, now: Instant) -> u64 {
    u64::try_from(now.duration_since(start).as_millis()).unwrap_or(u64::MAX)
}

/// The report SIGUSR2 prints and the admin socket serves.
fn report(
    stats: &mut Stats,
    pairs: &Slab<Pair>,
    lingering: &Slab<Linger>,
    start: Instant,
    now: Instant,
) -> Report {
    let held = pairs.iter().map(|(_, p)| p.buffered());
    let held = held.chain(lingering.iter().map(|(_, l)| l.pending()));
    Report {
        buffered_bytes: held.fold(0u64, |sum, n| sum.saturating_add(n as u64)),
        log_lines_dropped: output::log_lines_dropped(),
        reports_dropped: output::reports_dropped(),
        ..stats.report(ms_since(start, now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_time_signals_are_handled_and_named_past_the_c_librarys_own() {
        let handled = handled_signals();
        for signal in [
            SIGPWR,
            SIGIO,
            SIGSTKFLT,
            SIGXCPU,
            libc::SIGRTMIN(),
            libc::SIGRTMAX(),
        ] {
            assert!(handled.contains(&signal), "{signal}");
        }
        // glibc's thread cancellation and set*id signals stay untouched.
        assert!(!handled.contains(&32) && !handled.contains(&33));
        assert_eq!(signal_name(SIGPWR), "SIGPWR");
        assert_eq!(signal_name(SIGSTKFLT), "SIGSTKFLT");
        assert_eq!(signal_name(SIGIO), "SIGIO");
        assert_eq!(signal_name(SIGHUP), "SIGHUP");
        assert_eq!(signal_name(libc::SIGRTMIN()), "SIGRTMIN");
        assert_eq!(signal_name(libc::SIGRTMIN() + 5), "SIGRTMIN+5");
    }
}

//! The event loop: one mio poll drives the client listener ([`Gate`]), the
//! pairs ([`Pairs`]), the admin socket, the signals and the hand-over
//! ([`handover`]), and one timer set holds every deadline. The loop owns
//! all state; nothing is shared.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use mio::event::Event;
use mio::{Events, Poll, Token};
use signal_hook_mio::v1_0::Signals;

use crate::admin::{self, Admin};
use crate::cli::Config;
use crate::gate::Gate;
use crate::handover::giver::{self, Giver};
use crate::handover::taker::{self, Offered, Taker};
use crate::handover::{bind_control, control_path};
use crate::logging::{Throttle, suppressed_note};
use crate::net::{self, Io, describe};
use crate::output;
use crate::pair::{Reason, Timeouts};
use crate::pairs::{Env, Opened, Pairs, Serving};
use crate::recovery::{self, Recovery, RecoveryLock, Totals};
use crate::signals::{self, Action};
use crate::stats::{Report, Stats};
use crate::systemd;
use crate::timer::{Slot, Timer, Timers};
use crate::upstream::Upstreams;
use crate::upstream_pool::Limits;

/// What the loop lends the pairs for one step, `lend!(self, now)`: the
/// registry, the timers and the counters, borrowed apart from the pairs.
macro_rules! lend {
    ($server:ident, $now:expr) => {
        Env {
            registry: $server.poll.registry(),
            timers: &mut $server.timers,
            stats: &mut $server.stats,
            now: $now,
        }
    };
}

const LISTENER: Token = Token(0);
const SIGNALS: Token = Token(1);
const ADMIN: Token = Token(2);
/// The control socket a successor connects to.
const CONTROL: Token = Token(3);
/// The conversation with a successor (we are the old process).
const SUCCESSOR: Token = Token(4);
/// The conversation with the process we take over from.
const PREDECESSOR: Token = Token(5);
/// How often a draining old process sends its counts to its successor.
const COUNTS_INTERVAL: Duration = Duration::from_millis(250);
/// How often the recovery file is claimed again after its owner went away
/// in the middle of a hand-over (its lock is released when it exits).
const CLAIM_RETRY: Duration = Duration::from_millis(200);
/// At exit (drain over, or a second signal) lingering clients get at most
/// this long for their EOF, so a client that never closes cannot hang it.
const EXIT_LINGER: Duration = Duration::from_millis(500);

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
    /// A successor took the listeners, the counts and the recovery file:
    /// exit 0.
    HandedOver,
}

/// Listeners already bound when the proxy starts (socket activation, or
/// the process it takes over from), used instead of binding.
#[derive(Debug, Default)]
pub struct Inherited {
    pub listen: Option<TcpListener>,
    pub admin: Option<TcpListener>,
}

/// Where the process is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Accepting and relaying.
    Serving,
    /// A stop signal came: the listener is closed, open connections get
    /// `--drain-timeout` to finish.
    Draining,
    /// The drain is over: what is left gets a short lingering close.
    Exiting,
    /// The loop ends.
    Done,
}

/// The proxy: owns every socket, buffer, counter and deadline.
pub struct Server {
    poll: Poll,
    signals: Signals,
    gate: Gate,
    pairs: Pairs,
    /// The admin HTTP socket, unless `-http off`.
    admin: Option<Admin>,
    /// The recovery file main claimed before `bind` (`set_recovery`);
    /// `run` restores it. `None` when disabled.
    recovery: Option<Recovery>,
    stats: Stats,
    timers: Timers,
    phase: Phase,
    /// The end of the drain.
    drain: Slot,
    /// The recovery file's next snapshot, while counters changed.
    snapshot: Slot,
    config: Config,
    start: Instant,
    signal_log: Throttle,
    /// Our control socket, once we own the recovery file.
    giver: Option<Giver>,
    /// The hand-over we start from, until `run` says READY.
    offered: Option<Offered>,
    /// The process we take over from, until its FINAL.
    taker: Option<Taker>,
    /// The recovery file we own once the process we take over from hands
    /// it on (or goes away).
    pending_recovery: Option<PathBuf>,
    /// The next claim of `pending_recovery` after its owner went away.
    claim: Slot,
    /// The successor's deadline for READY.
    ready_wait: Slot,
    /// The drain is a hand-over's: the listeners come back if the
    /// successor goes away, and it gets our counts at the end.
    handing_over: bool,
    /// A stop signal came: a broken-off hand-over does not resume serving.
    stopping: bool,
    /// What ended the process (the first stop signal's name), for the
    /// exit line.
    stop_cause: Option<String>,
    /// When the successor gets our counts next, and what it had last.
    counts_due: Instant,
    counts_sent: Totals,
}

impl Server {
    /// Binds the listener and the admin socket and sets up the poll, with
    /// the signal handlers `main` installed. Errors name the address.
    /// `inherited` listeners are used instead of binding their addresses.
    pub fn bind(
        config: Config,
        mut signals: Signals,
        inherited: Inherited,
    ) -> Result<Server, String> {
        let poll = Poll::new().map_err(|e| format!("cannot create poll: {}", describe(&e)))?;
        let registry = poll.registry();
        let gate = Gate::bind(&config, inherited.listen, registry, LISTENER)?;
        registry
            .register(&mut signals, SIGNALS, mio::Interest::READABLE)
            .map_err(|e| format!("cannot poll signals: {}", describe(&e)))?;
        let admin = match config.http {
            Some(addr) => Some(Admin::bind(
                addr,
                inherited.admin,
                registry,
                ADMIN,
                config.access_log,
            )?),
            None => None,
        };
        let upstreams = Upstreams::new(
            config.forward.clone(),
            config.forward_spec.clone(),
            gate.local_addr().port(),
        );
        let serving = Serving {
            accept_proxy: config.accept_proxy,
            send_proxy: config.send_proxy,
            per_client: config.max_connections_per_client,
        };
        let timeouts = Timeouts {
            connect: config.connect_timeout,
            idle: config.idle_timeout,
            fin: config.fin_timeout,
            header: config.proxy_header_timeout,
            queue: config.queue_timeout,
        };
        let pooling = Limits {
            size: config.upstream_pool,
            spare: config.upstream_spare,
            max: config.max_upstream_connections,
            idle_timeout: config.upstream_idle_timeout,
            connect_timeout: config.connect_timeout,
        };
        let mut stats = Stats::default();
        Ok(Server {
            pairs: Pairs::new(
                upstreams,
                timeouts,
                serving,
                config.buffer_size,
                config.log_connections,
                (pooling, &mut stats),
            ),
            poll,
            signals,
            gate,
            admin,
            recovery: None,
            stats,
            timers: Timers::default(),
            phase: Phase::Serving,
            drain: Slot::default(),
            snapshot: Slot::default(),
            config,
            start: Instant::now(),
            signal_log: Throttle::new(Duration::from_secs(1)),
            giver: None,
            offered: None,
            taker: None,
            pending_recovery: None,
            claim: Slot::default(),
            ready_wait: Slot::default(),
            handing_over: false,
            stopping: false,
            stop_cause: None,
            counts_due: Instant::now(),
            counts_sent: Totals::default(),
        })
    }

    /// Takes the recovery file that was claimed before the sockets were
    /// bound; `run` restores it and keeps it written. Its owner listens on
    /// the control socket beside it for a successor.
    ///
    /// Without the lock (its directory was unwritable at start, already
    /// warned about) there is no control socket: a `--takeover` then finds
    /// no process and fails on the lock.
    pub fn set_recovery(&mut self, recovery: Recovery) {
        if recovery.holds_lock() {
            self.open_control(recovery.path().to_path_buf());
        }
        self.recovery = Some(recovery);
    }

    /// Starts from a hand-over: `run` says READY to the old process, which
    /// then drains and hands on recovery file `path` with its counts.
    pub fn set_takeover(&mut self, offered: Offered, path: PathBuf) {
        self.offered = Some(offered);
        self.pending_recovery = Some(path);
    }

    /// Listens on the control socket of recovery file `path` (we own it);
    /// without it, `--takeover` cannot reach this process: one warning.
    fn open_control(&mut self, path: PathBuf) {
        let control = control_path(&path);
        let giver = bind_control(&control).and_then(|listener| {
            Giver::new(listener, control, self.poll.registry(), CONTROL, SUCCESSOR)
        });
        match giver {
            Ok(giver) => self.giver = Some(giver),
            Err(why) => warn!("{why}; a --takeover cannot reach this process"),
        }
    }

    /// A forward address that is this proxy's own listener, which would
    /// make every client connect the proxy to itself until the connection
    /// limit: one line naming it, for an exit 2 at start.
    pub fn forwards_to_itself(&self) -> Option<String> {
        let own = self.gate.local_addr();
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
    fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(Admin::local_addr)
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
            self.gate.local_addr(),
            self.config.forward_spec,
            forward.join(", ")
        );
        if let Some(recovery) = &mut self.recovery {
            let now = Instant::now();
            recovery.open(&mut self.stats, now, ms_since(self.start, now));
        }
        if let Some(offered) = self.offered.take() {
            match Taker::start(offered, self.poll.registry(), PREDECESSOR) {
                Ok(taker) => self.taker = Some(taker),
                Err(why) => {
                    warn!("{why}; claiming the recovery file instead");
                    self.claim_recovery(Instant::now());
                }
            }
        }
        self.pairs
            .start_upstream_pool(&mut lend!(self, Instant::now()));
        systemd::notify(&format!("MAINPID={}\nREADY=1", std::process::id()));
        loop {
            self.serve()?;
            if self.pairs.len() > 0 {
                info!(
                    "closing {} lingering connection(s) at exit",
                    self.pairs.len()
                );
                self.pairs.close_all(&mut lend!(self, Instant::now()));
            }
            if !self.handing_over {
                break;
            }
            if self.hand_over() {
                self.log_exit(Stopped::HandedOver);
                return Ok(Stopped::HandedOver);
            }
            if self.phase == Phase::Done {
                break;
            }
        }
        // Nobody takes over from a process that is gone: no stale socket.
        if let Some(giver) = self.giver.take() {
            giver.remove(self.poll.registry());
        }
        let mut stopped = Stopped::Clean;
        if let Some(recovery) = self.recovery.take() {
            let now_ms = ms_since(self.start, Instant::now());
            let signals = &mut self.signals;
            // One more SIGTERM or SIGINT ends the wait for a slow disk.
            let cut_short = || {
                signals
                    .pending()
                    .any(|s| signals::action(s) == Action::Stop)
            };
            if !recovery.finish(&mut self.stats, now_ms, cut_short) {
                stopped = Stopped::SnapshotLost;
            }
        }
        self.log_exit(stopped);
        Ok(stopped)
    }

    /// One info line at exit on what this process did and how it ended,
    /// so an operator reading the log needs no report to know.
    fn log_exit(&mut self, stopped: Stopped) {
        let now = Instant::now();
        let r = report(&mut self.stats, &self.pairs, self.start, now);
        let how = match stopped {
            Stopped::Clean => "stopped",
            Stopped::SnapshotLost => "stopped without its final recovery snapshot",
            Stopped::HandedOver => "handed over to its successor",
        };
        let cause = match &self.stop_cause {
            Some(signal) => format!(" on {signal}"),
            None => String::new(),
        };
        let restored = if self.config.recovery_path.is_some() {
            "; totals include the counts restored from the recovery file"
        } else {
            ""
        };
        info!(
            "{how}{cause} after {:.1}s: {} connection(s), {} request(s) relayed, \
             {} answer(s) returned ({} ACK, {} NAK), {} invalid, {} upstream error(s), \
             {} connection(s) closed by the drain's end{restored}",
            r.uptime_secs,
            r.connections_total,
            r.msg_req,
            r.msg_ack.saturating_add(r.msg_nak),
            r.msg_ack,
            r.msg_nak,
            r.msg_invalid,
            r.upstream_errors,
            r.connections_closed
                .0
                .get(Reason::Shutdown.index())
                .copied()
                .unwrap_or(0),
        );
    }

    /// The loop, until the phase is `Done`.
    fn serve(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        while self.phase != Phase::Done {
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
                    CONTROL => self.accept_successor(now),
                    SUCCESSOR => self.hear_successor(now),
                    PREDECESSOR => self.hear_predecessor(now),
                    token => self.note_event(token, event, now),
                }
            }
            if accept {
                self.accept_clients(now);
            }
            self.pairs.drive(&mut lend!(self, now));
            self.drive_admin(now);
            self.fire_timers(now);
            if self.gate.below_limit(self.pairs.len()) {
                self.accept_clients(now);
            }
            let now_ms = ms_since(self.start, now);
            self.stats.commit_window(now_ms);
            if let Some(recovery) = &mut self.recovery {
                recovery.tick(&mut self.stats, now, now_ms);
                let due = recovery.deadline();
                self.snapshot.set(&mut self.timers, due, 0, Timer::Snapshot);
            }
            if self.handing_over && now >= self.counts_due {
                self.send_counts(now, now_ms);
            }
            if self.phase == Phase::Draining && self.pairs.len() == 0 {
                self.begin_exit(now);
            }
            // In the same iteration: nothing left to linger means no wait
            // for the exit timer (or any other wakeup).
            if self.phase == Phase::Exiting && self.pairs.len() == 0 {
                self.phase = Phase::Done;
            }
        }
        Ok(())
    }

    /// A successor connects: it has [`giver::READY_WAIT`] to get ready.
    fn accept_successor(&mut self, now: Instant) {
        let Some(giver) = self.giver.as_mut() else {
            return;
        };
        let before = giver.successor();
        giver.accept(self.poll.registry());
        if before.is_none() && giver.successor().is_some() {
            let until = now + giver::READY_WAIT;
            self.ready_wait
                .set(&mut self.timers, Some(until), 0, Timer::Successor);
        }
    }

    /// The successor spoke (we are the old process).
    fn hear_successor(&mut self, now: Instant) {
        let Some(giver) = self.giver.as_mut() else {
            return;
        };
        match giver.read(self.poll.registry()) {
            giver::Heard::Nothing => {}
            giver::Heard::Hello => {
                let listen = self
                    .gate
                    .listener_fd()
                    .filter(|_| self.gate.listening())
                    .map(|fd| (self.gate.local_addr(), fd));
                let admin = self
                    .admin
                    .as_ref()
                    .filter(|a| a.listening())
                    .map(|a| (a.local_addr(), a.listener_fd()));
                giver.offer(self.poll.registry(), listen, admin);
            }
            giver::Heard::Ready => self.begin_hand_over(now),
            giver::Heard::GoneAfterReady => self.take_back(),
        }
    }

    /// The successor accepts: we stop accepting (keeping the listeners
    /// for [`Server::take_back`]) and drain; our counts follow.
    fn begin_hand_over(&mut self, now: Instant) {
        self.gate.hand_off(self.poll.registry(), &mut self.timers);
        if let Some(admin) = self.admin.as_mut() {
            admin.hand_off(self.poll.registry());
        }
        self.handing_over = true;
        self.counts_due = now;
        if self.phase == Phase::Serving {
            let until = now + self.config.drain_timeout;
            self.drain
                .set(&mut self.timers, Some(until), 0, Timer::Drain);
            self.phase = Phase::Draining;
        }
        self.pairs.drain_upstream_pool(&mut lend!(self, now));
        info!(
            "hand-over: the successor accepts; draining {} connection(s) for up to {:?}",
            self.pairs.len(),
            self.config.drain_timeout
        );
    }

    /// The successor went away before it had our counts: serve again on
    /// the listeners we kept (unless a stop signal came meanwhile).
    fn take_back(&mut self) {
        self.handing_over = false;
        self.counts_sent = Totals::default();
        if self.stopping {
            return;
        }
        self.gate.take_back(self.poll.registry());
        if let Some(admin) = self.admin.as_mut() {
            admin.take_back(self.poll.registry());
        }
        self.drain.set(&mut self.timers, None, 0, Timer::Drain);
        self.phase = Phase::Serving;
        self.pairs
            .resume_upstream_pool(&mut lend!(self, Instant::now()));
        systemd::notify(&format!("MAINPID={}\nREADY=1", std::process::id()));
    }

    /// Sends the successor our totals so far, when they changed.
    fn send_counts(&mut self, now: Instant, now_ms: u64) {
        self.counts_due = now + COUNTS_INTERVAL;
        let totals = Totals::of(&self.stats);
        if totals == self.counts_sent {
            return;
        }
        self.counts_sent = totals;
        let snapshot = recovery::capture(&mut self.stats, recovery::wall_ms(), now_ms);
        if let Some(giver) = self.giver.as_mut() {
            giver.counts(snapshot);
        }
    }

    /// The drain is over: our final snapshot goes to disk, then to the
    /// successor with the recovery lock and the control socket. True when
    /// it has them; false when it went away first, and we serve again
    /// (phase `Serving`) or, after a stop signal, exit (phase `Done`).
    fn hand_over(&mut self) -> bool {
        let now_ms = ms_since(self.start, Instant::now());
        let (path, lock) = match self.recovery.take() {
            Some(recovery) => {
                let path = recovery.path().to_path_buf();
                let (_, lock) = recovery.finish_keeping_lock(&mut self.stats, now_ms, || false);
                (Some(path), lock)
            }
            None => (None, None),
        };
        let snapshot = recovery::capture(&mut self.stats, recovery::wall_ms(), now_ms);
        let handed = match self.giver.as_mut() {
            Some(giver) => giver.finish(snapshot, lock.as_ref().map(RecoveryLock::as_fd)),
            None => false,
        };
        if handed {
            return true;
        }
        if let Some(giver) = self.giver.as_mut() {
            giver.forget_session(self.poll.registry());
        }
        if let Some(path) = path {
            let mut recovery = Recovery::adopt(path, lock);
            recovery.start_writer(&mut self.stats, Instant::now());
            self.recovery = Some(recovery);
        }
        self.take_back();
        false
    }

    /// The process we take over from spoke.
    fn hear_predecessor(&mut self, now: Instant) {
        let Some(taker) = self.taker.as_mut() else {
            return;
        };
        let now_ms = ms_since(self.start, now);
        match taker.read(&mut self.stats, now_ms) {
            taker::Heard::Nothing => {}
            taker::Heard::Final { lock, control } => {
                taker.close(self.poll.registry());
                self.taker = None;
                let Some(path) = self.pending_recovery.take() else {
                    return;
                };
                let lock = lock.and_then(|file| {
                    RecoveryLock::adopt(file, &path)
                        .map_err(|why| warn!("{why}; taking the lock anew"))
                        .ok()
                });
                let mut recovery = Recovery::adopt(path.clone(), lock);
                recovery.start_writer(&mut self.stats, now);
                recovery.write_soon();
                self.recovery = Some(recovery);
                let giver = control.map(|listener| {
                    let _ = listener.set_nonblocking(true);
                    let control = control_path(&path);
                    Giver::new(listener, control, self.poll.registry(), CONTROL, SUCCESSOR)
                });
                match giver {
                    Some(Ok(giver)) => self.giver = Some(giver),
                    Some(Err(why)) => warn!("{why}; a --takeover cannot reach this process"),
                    None => self.open_control(path),
                }
            }
            taker::Heard::Gone => {
                let pid = taker.old_pid;
                taker.forget(&mut self.stats, self.poll.registry());
                self.taker = None;
                warn!(
                    "hand-over: pid {pid} went away before its final counts; \
                     restoring its last snapshot from the recovery file"
                );
                self.claim_recovery(now);
            }
        }
    }

    /// Claims the recovery file whose owner went away in the middle of a
    /// hand-over (its lock goes with its process), restores its last
    /// snapshot and opens the control socket; retried until the lock is
    /// free.
    fn claim_recovery(&mut self, now: Instant) {
        let Some(path) = self.pending_recovery.clone() else {
            return;
        };
        match Recovery::claim(path.clone()) {
            Ok(mut recovery) => {
                self.pending_recovery = None;
                self.claim.set(&mut self.timers, None, 0, Timer::Claim);
                let owner = recovery.holds_lock();
                recovery.open(&mut self.stats, now, ms_since(self.start, now));
                self.recovery = Some(recovery);
                if owner {
                    self.open_control(path);
                }
            }
            Err(e) => {
                debug!("{e}; trying again in {CLAIM_RETRY:?}");
                self.claim
                    .set(&mut self.timers, Some(now + CLAIM_RETRY), 0, Timer::Claim);
            }
        }
    }

    /// Zero while work is left over from this iteration; otherwise until
    /// the soonest deadline, or forever.
    fn poll_timeout(&self, now: Instant) -> Option<Duration> {
        if self.pairs.has_work() || self.admin.as_ref().is_some_and(Admin::has_work) {
            return Some(Duration::ZERO);
        }
        // Round up so a deadline is never polled for just before it is due.
        self.timers
            .next()
            .map(|t| t.saturating_duration_since(now) + Duration::from_millis(1))
    }

    fn note_event(&mut self, token: Token, event: &Event, now: Instant) {
        match (admin::key_of(token), self.admin.as_mut()) {
            (Some(key), Some(admin)) => admin.note_event(key),
            _ => self.pairs.note_event(token, event, &mut lend!(self, now)),
        }
    }

    fn handle_signals(&mut self, now: Instant) {
        let pending: Vec<i32> = self.signals.pending().collect();
        for signal in pending {
            match signals::action(signal) {
                Action::Report => self.print_report(now),
                Action::Stop => {
                    self.stop_cause.get_or_insert_with(|| signals::name(signal));
                    self.begin_shutdown(now);
                }
                Action::CpuLimit => {
                    self.stop_cause.get_or_insert_with(|| "SIGXCPU".to_string());
                    warn!("SIGXCPU: the CPU time limit is reached; stopping as on SIGTERM");
                    self.begin_shutdown(now);
                }
                Action::Ignore => {
                    if let Some(suppressed) = self.signal_log.ready(now) {
                        let name = signals::name(signal);
                        warn!(
                            "ignoring {name} (SIGTERM or SIGINT stops the proxy){}",
                            suppressed_note(suppressed)
                        );
                    }
                }
            }
        }
    }

    /// First signal: stop accepting and drain. Second: end the drain (the
    /// exit linger). Third: stop now.
    fn begin_shutdown(&mut self, now: Instant) {
        if !self.stopping {
            self.stopping = true;
            if !self.handing_over {
                systemd::notify("STOPPING=1");
            }
        }
        // Pooled idle connections serve no one during the drain.
        self.pairs.drain_upstream_pool(&mut lend!(self, now));
        match self.phase {
            Phase::Serving if self.pairs.len() > 0 => {
                self.gate.close(self.poll.registry(), &mut self.timers);
                let until = now + self.config.drain_timeout;
                self.drain
                    .set(&mut self.timers, Some(until), 0, Timer::Drain);
                self.phase = Phase::Draining;
                info!(
                    "draining: {} connection(s) get up to {:?} to finish; signal again to stop now",
                    self.pairs.len(),
                    self.config.drain_timeout
                );
            }
            Phase::Serving | Phase::Draining => self.begin_exit(now),
            Phase::Exiting | Phase::Done => self.phase = Phase::Done,
        }
    }

    /// The drain is over: every pair still open gets its lingering close,
    /// and lingering clients get at most [`EXIT_LINGER`] more (never more
    /// than `--fin-timeout`), so the exit is bounded.
    fn begin_exit(&mut self, now: Instant) {
        self.gate.close(self.poll.registry(), &mut self.timers);
        self.drain.set(&mut self.timers, None, 0, Timer::Drain);
        let until = now + EXIT_LINGER.min(self.config.fin_timeout);
        self.timers.arm(until, 0, Timer::Exit);
        self.phase = Phase::Exiting;
        self.pairs.drain_upstream_pool(&mut lend!(self, now));
        let open = self.pairs.len().saturating_sub(self.pairs.lingering());
        if open > 0 {
            info!("closing {open} connection(s) still open");
        }
        self.pairs.shut_down(until, &mut lend!(self, now));
    }

    /// Accepts while the gate lets clients through.
    fn accept_clients(&mut self, now: Instant) {
        while let Some((stream, peer)) =
            self.gate
                .next(self.pairs.len(), &mut self.stats, &mut self.timers, now)
        {
            let mut env = lend!(self, now);
            match self.pairs.looped(peer) {
                Some(origin) => {
                    let own = self.gate.local_addr();
                    self.pairs.cut_loop(origin, stream, own, &mut env);
                }
                None => {
                    if let Opened::OutOfResources(e) = self.pairs.open(stream, peer, &mut env) {
                        let what = "cannot open an upstream socket";
                        self.gate.exhausted(what, &e, env.stats, env.timers, now);
                    }
                }
            }
        }
    }

    fn fire_timers(&mut self, now: Instant) {
        while let Some((owner, timer)) = self.timers.pop_due(now) {
            match timer {
                Timer::Pair(key) => self.pairs.fire(key, owner, &mut lend!(self, now)),
                Timer::Upstream(key) => {
                    self.pairs.fire_upstream(key, owner, &mut lend!(self, now));
                }
                Timer::UpstreamBackoff => self.pairs.upstream_backoff_over(&mut lend!(self, now)),
                Timer::Admin(key) => {
                    if let Some(admin) = self.admin.as_mut() {
                        admin.expire(key, owner, self.poll.registry(), &mut self.timers, now);
                    }
                }
                Timer::AdminAccept => {
                    if let Some(admin) = self.admin.as_mut() {
                        admin.accept(self.poll.registry(), &mut self.timers, now);
                    }
                }
                Timer::Accept => {
                    self.gate.resume();
                    self.accept_clients(now);
                }
                Timer::Drain => {
                    self.drain.fired();
                    self.begin_exit(now);
                }
                // Only if the exit was not called off (a hand-over that
                // broke off resumes serving).
                Timer::Exit if self.phase == Phase::Exiting => self.phase = Phase::Done,
                Timer::Exit => {}
                Timer::Successor => {
                    self.ready_wait.fired();
                    if let Some(giver) = self.giver.as_mut() {
                        giver.expire(self.poll.registry());
                    }
                }
                Timer::Claim => {
                    self.claim.fired();
                    self.claim_recovery(now);
                }
                // The tick at the end of this iteration writes it.
                Timer::Snapshot => self.snapshot.fired(),
            }
        }
    }

    /// Serves admin connections after the data path had its turn.
    fn drive_admin(&mut self, now: Instant) {
        let ready = self.gate.listening() && self.phase == Phase::Serving;
        let Some(admin) = self.admin.as_mut() else {
            return;
        };
        let (stats, pairs, start) = (&mut self.stats, &self.pairs, self.start);
        let mut report = || report(stats, pairs, start, now);
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
        let line = report(&mut self.stats, &self.pairs, self.start, now).to_json();
        output::report(&line);
    }
}

fn ms_since(start: Instant, now: Instant) -> u64 {
    u64::try_from(now.duration_since(start).as_millis()).unwrap_or(u64::MAX)
}

/// The report SIGUSR2 prints and the admin socket serves.
fn report(stats: &mut Stats, pairs: &Pairs, start: Instant, now: Instant) -> Report {
    Report {
        buffered_bytes: pairs.buffered(),
        requests_in_flight: pairs.in_flight(),
        log_lines_dropped: output::log_lines_dropped(),
        reports_dropped: output::reports_dropped(),
        ..stats.report(ms_since(start, now))
    }
}

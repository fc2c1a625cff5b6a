//! The event loop: one mio poll drives the client listener ([`Gate`]), the
//! pairs ([`Pairs`]), the admin socket and the signals, and one timer set
//! holds every deadline. The loop owns all state; nothing is shared.

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use log::{info, warn};
use mio::event::Event;
use mio::{Events, Poll, Token};
use signal_hook_mio::v1_0::Signals;

use crate::admin::{self, Admin};
use crate::cli::Config;
use crate::gate::Gate;
use crate::logging::{Throttle, suppressed_note};
use crate::net::{self, Io, describe};
use crate::output;
use crate::pair::Timeouts;
use crate::pairs::{Env, Opened, Pairs, Serving};
use crate::recovery::Recovery;
use crate::signals::{self, Action};
use crate::stats::{Report, Stats};
use crate::timer::{Slot, Timer, Timers};
use crate::upstream::Upstreams;

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
}

impl Server {
    /// Binds the listener and the admin socket and sets up the poll, with
    /// the signal handlers `main` installed. Errors name the address.
    pub fn bind(config: Config, mut signals: Signals) -> Result<Server, String> {
        let poll = Poll::new().map_err(|e| format!("cannot create poll: {}", describe(&e)))?;
        let registry = poll.registry();
        let gate = Gate::bind(&config, registry, LISTENER)?;
        registry
            .register(&mut signals, SIGNALS, mio::Interest::READABLE)
            .map_err(|e| format!("cannot poll signals: {}", describe(&e)))?;
        let admin = match config.http {
            Some(addr) => Some(Admin::bind(addr, registry, ADMIN)?),
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
        };
        Ok(Server {
            pairs: Pairs::new(upstreams, timeouts, serving, config.buffer_size),
            poll,
            signals,
            gate,
            admin,
            recovery: None,
            stats: Stats::default(),
            timers: Timers::default(),
            phase: Phase::Serving,
            drain: Slot::default(),
            snapshot: Slot::default(),
            config,
            start: Instant::now(),
            signal_log: Throttle::new(Duration::from_secs(1)),
        })
    }

    /// Takes the recovery file that was claimed before the sockets were
    /// bound; `run` restores it and keeps it written.
    pub fn set_recovery(&mut self, recovery: Recovery) {
        self.recovery = Some(recovery);
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
            match self.phase {
                Phase::Draining if self.pairs.len() == 0 => self.begin_exit(now),
                Phase::Exiting if self.pairs.len() == 0 => self.phase = Phase::Done,
                _ => {}
            }
        }
        if self.pairs.len() > 0 {
            info!(
                "closing {} lingering connection(s) at exit",
                self.pairs.len()
            );
            self.pairs.close_all(&mut lend!(self, Instant::now()));
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
        Ok(stopped)
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
                Action::Stop => self.begin_shutdown(now),
                Action::CpuLimit => {
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
                Timer::Exit => self.phase = Phase::Done,
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
        log_lines_dropped: output::log_lines_dropped(),
        reports_dropped: output::reports_dropped(),
        ..stats.report(ms_since(start, now))
    }
}

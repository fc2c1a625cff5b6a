//! The event loop: one mio poll drives the client listener (`Gate`), the
//! pairs (`Pairs`), the admin socket, the signals and the hand-over
//! ([`handover`](crate::handover)), and one timer set holds every deadline. The loop owns
//! all state; nothing is shared. The hand-over side of the loop is in
//! `hand_over`, the stop side (signals, drain, exit) in `stop`.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use log::{info, warn};
use mio::event::Event;
use mio::{Events, Poll, Token};
use signal_hook_mio::v1_0::Signals;

use crate::admin::{self, Admin};
use crate::cli::Config;
use crate::gate::Gate;
use crate::handover::giver::Giver;
use crate::handover::taker::{Offered, Taker};
use crate::logging::Throttle;
use crate::net::{self, Io, describe};
use crate::output;
use crate::pair::Timeouts;
use crate::pairs::{Opened, Pairs, Serving};
use crate::recovery::{Recovery, Totals};
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
        $crate::pairs::Env {
            registry: $server.poll.registry(),
            timers: &mut $server.timers,
            stats: &mut $server.stats,
            now: $now,
        }
    };
}

mod hand_over;
mod stop;

pub use stop::Stopped;

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

/// The exit line's words for counts restored at start.
const RESTORED: &str = "the counts restored from the recovery file";

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
    /// Where counts from before this process came from, if any: the
    /// recovery file or the predecessor of a hand-over (the exit line).
    carried_over: Option<&'static str>,
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
            carried_over: None,
            counts_due: Instant::now(),
            counts_sent: Totals::default(),
        })
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
            if recovery.open(&mut self.stats, now, ms_since(self.start, now)) {
                self.carried_over = Some(RESTORED);
            }
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

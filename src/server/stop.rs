//! The stop side of the loop: the signals, then the drain, then a bounded lingering close at exit, and the exit line.

use std::time::Instant;

use log::{info, warn};

use super::{EXIT_LINGER, Phase, Server, report};
use crate::logging::suppressed_note;
use crate::pair::Reason;
use crate::signals::{self, Action};
use crate::systemd;
use crate::timer::Timer;

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

impl Server {
    /// One info line at exit on what this process did and how it ended,
    /// so an operator reading the log needs no report to know.
    pub(super) fn log_exit(&mut self, stopped: Stopped) {
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
        let restored = match self.carried_over {
            Some(whence) => format!("; totals include {whence}"),
            None => String::new(),
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

    pub(super) fn handle_signals(&mut self, now: Instant) {
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
    pub(super) fn begin_shutdown(&mut self, now: Instant) {
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
    pub(super) fn begin_exit(&mut self, now: Instant) {
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
}

//! The hand-over side of the loop (`--takeover`): the old process offers its listeners to a successor, drains and hands on its counts and recovery file; the new one takes them, or claims the file when the old one goes away.

use std::path::PathBuf;
use std::time::Instant;

use log::{debug, info, warn};

use super::{CLAIM_RETRY, CONTROL, COUNTS_INTERVAL, Phase, SUCCESSOR, Server, ms_since};
use crate::handover::giver::{self, Giver};
use crate::handover::taker::{self, Offered};
use crate::handover::{bind_control, control_path};
use crate::recovery::{self, Recovery, RecoveryLock, Totals};
use crate::systemd;
use crate::timer::Timer;

impl Server {
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
    pub(super) fn open_control(&mut self, path: PathBuf) {
        let control = control_path(&path);
        let giver = bind_control(&control).and_then(|listener| {
            Giver::new(listener, control, self.poll.registry(), CONTROL, SUCCESSOR)
        });
        match giver {
            Ok(giver) => self.giver = Some(giver),
            Err(why) => warn!("{why}; a --takeover cannot reach this process"),
        }
    }

    /// A successor connects: it has [`giver::READY_WAIT`] to get ready.
    pub(super) fn accept_successor(&mut self, now: Instant) {
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
    pub(super) fn hear_successor(&mut self, now: Instant) {
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
    pub(super) fn begin_hand_over(&mut self, now: Instant) {
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
    pub(super) fn take_back(&mut self) {
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
    pub(super) fn send_counts(&mut self, now: Instant, now_ms: u64) {
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
    pub(super) fn hand_over(&mut self) -> bool {
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
    pub(super) fn hear_predecessor(&mut self, now: Instant) {
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
                self.carried_over = Some("the counts handed over by the process it took over from");
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
    pub(super) fn claim_recovery(&mut self, now: Instant) {
        let Some(path) = self.pending_recovery.clone() else {
            return;
        };
        match Recovery::claim(path.clone()) {
            Ok(mut recovery) => {
                self.pending_recovery = None;
                self.claim.set(&mut self.timers, None, 0, Timer::Claim);
                let owner = recovery.holds_lock();
                if recovery.open(&mut self.stats, now, ms_since(self.start, now)) {
                    self.carried_over = Some(super::RESTORED);
                }
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
}

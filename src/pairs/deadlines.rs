//! A pair's one deadline: armed from its state (header, queue, connect,
//! idle, FIN, lingering close) and what happens when it comes due.

use std::io;
use std::time::{Duration, Instant};

use super::{Env, Pairs};
use crate::latency;
use crate::pair::linger::Ending;
use crate::pair::{Deadline, Due, Reason, State};
use crate::timer::Timer;

impl Pairs {
    /// A pair's deadline came due.
    pub fn fire(&mut self, key: usize, id: u64, env: &mut Env<'_>) {
        let Some(pair) = self.slab.get_mut(key).filter(|p| p.id == id) else {
            return;
        };
        pair.deadline.fired();
        let due = match pair.due(env.now, &self.timeouts) {
            // Before a deadline that slides with progress cuts, the writes
            // are tried once: a peer still reading may have had no
            // writable event (see `Pair::probe_writes`).
            Due::End(Reason::IdleTimeout | Reason::FinTimeout) | Due::Close(Ending::Bound)
                if pair.probe_writes() =>
            {
                self.drive_one(key, latency::us_at(env.now), env);
                match self.slab.get(key).filter(|p| p.id == id) {
                    Some(pair) => pair.due(env.now, &self.timeouts),
                    None => return,
                }
            }
            due => due,
        };
        match due {
            Due::ConnectTimedOut => {
                let err = io::Error::new(io::ErrorKind::TimedOut, "connect timed out");
                self.next_address(key, err, env);
            }
            // Never past the exit's bound: a lingering close still
            // delivering at the exit ends there.
            Due::Later(when) => match self.exit {
                Some(exit) if exit <= env.now => self.close(key, Ending::Bound, env),
                exit => self.arm(key, exit.map_or(when, |e| e.min(when)), env),
            },
            Due::End(reason) => self.end(key, reason, env),
            Due::Close(ending) => self.close(key, ending, env),
        }
    }

    /// Arms the one deadline the pair's state has, counted from now (the
    /// idle one from the last byte moved).
    pub(super) fn rearm(&mut self, key: usize, env: &mut Env<'_>) {
        let Some(pair) = self.slab.get(key) else {
            return;
        };
        let t = &self.timeouts;
        let when = match pair.state.deadline() {
            // From accept: bytes trickling in do not move it.
            Deadline::Header => pair.last_active + t.header,
            Deadline::Queue => pair.last_active + t.queue,
            Deadline::Connect => env.now + t.connect,
            Deadline::Idle => pair.last_active + t.idle,
            Deadline::Fin => env.now + t.fin,
            Deadline::Linger => {
                let mut until = env.now + t.fin;
                // A client without a whole, valid PROXY header holds its
                // slot no longer than the header deadline (a half header
                // and a stall must not crowd out real clients):
                // `last_active` is still the accept time, as nothing moved.
                if let State::Lingering(linger) = &pair.state
                    && matches!(
                        linger.reason,
                        Reason::ProxyHeaderMissing | Reason::ProxyHeaderInvalid
                    )
                {
                    // At least until the next turn of the loop, which
                    // drives the lingering close once (reads what the
                    // client sent, sends the FIN) before this deadline:
                    // a deadline already due would close with input
                    // unread, i.e. reset the client.
                    let header_due = pair.last_active + t.header;
                    until = until.min(header_due.max(env.now + Duration::from_millis(1)));
                }
                self.exit.map_or(until, |exit| exit.min(until))
            }
        };
        self.arm(key, when, env);
    }

    /// Moves the pair's deadline to `when`.
    pub(super) fn arm(&mut self, key: usize, when: Instant, env: &mut Env<'_>) {
        if let Some(pair) = self.slab.get_mut(key) {
            pair.deadline
                .set(env.timers, Some(when), pair.id, Timer::Pair(key));
        }
    }
}

//! Every deadline of the event loop in one ordered set, so the poll timeout
//! is simply the soonest entry: pairs, admin connections, the accept pause,
//! the drain, the exit, the next recovery snapshot and the recovery claim
//! after a hand-over that broke off.

use std::collections::BTreeSet;
use std::time::Instant;

/// What a deadline is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Timer {
    /// A pair, by slab key: its state says which deadline it is (connect,
    /// idle, fin or the bound of a lingering close).
    Pair(usize),
    /// A pooled upstream connection, by its key in the pool: a spare's
    /// connect timeout or an idle one's expiry.
    Upstream(usize),
    /// Spares may be opened again after one failed.
    UpstreamBackoff,
    /// An admin connection, by its slab key in the admin socket.
    Admin(usize),
    /// Accept admin clients again after running out of descriptors.
    AdminAccept,
    /// Accept clients again after running out of descriptors or memory.
    Accept,
    /// The drain after SIGTERM/SIGINT is over.
    Drain,
    /// The lingering closes at exit are over.
    Exit,
    /// A recovery snapshot is due.
    Snapshot,
    /// A successor must have said READY by now.
    Successor,
    /// Try again to claim the recovery file, whose owner went away in the
    /// middle of a hand-over.
    Claim,
}

/// The deadlines, soonest first: `(when, owner, what)`. `owner` is unique
/// per owner for the process lifetime (a pair's or admin connection's id;
/// 0 for the loop's own timers), so an entry never outlives its owner
/// unnoticed when slab keys are reused.
#[derive(Debug, Default)]
pub(crate) struct Timers {
    set: BTreeSet<(Instant, u64, Timer)>,
}

impl Timers {
    /// Adds a deadline.
    pub fn arm(&mut self, when: Instant, owner: u64, timer: Timer) {
        self.set.insert((when, owner, timer));
    }

    /// Removes a deadline, if it is still there.
    pub fn cancel(&mut self, when: Instant, owner: u64, timer: Timer) {
        self.set.remove(&(when, owner, timer));
    }

    /// The soonest deadline: the poll sleeps until then.
    pub fn next(&self) -> Option<Instant> {
        self.set.first().map(|(when, _, _)| *when)
    }

    /// Takes the soonest deadline if it is due at `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<(u64, Timer)> {
        if self.next()? > now {
            return None;
        }
        self.set.pop_first().map(|(_, owner, timer)| (owner, timer))
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.set.len()
    }
}

/// One owner's deadline, kept so that it can be moved or cancelled: at
/// most one entry in [`Timers`] at a time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Slot(Option<Instant>);

impl Slot {
    /// When it is due, if it is armed.
    pub fn when(&self) -> Option<Instant> {
        self.0
    }

    /// Moves the deadline to `when`, or cancels it (`None`). The owner
    /// passes the same `owner` and `timer` every time.
    pub fn set(&mut self, timers: &mut Timers, when: Option<Instant>, owner: u64, timer: Timer) {
        if self.0 == when {
            return;
        }
        if let Some(old) = self.0.take() {
            timers.cancel(old, owner, timer);
        }
        if let Some(new) = when {
            timers.arm(new, owner, timer);
            self.0 = Some(new);
        }
    }

    /// Its entry was taken by [`Timers::pop_due`]: forget it.
    pub fn fired(&mut self) {
        self.0 = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn deadlines_come_out_soonest_first_and_only_when_due() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut timers = Timers::default();
        timers.arm(t0 + ms(30), 0, Timer::Drain);
        timers.arm(t0 + ms(10), 7, Timer::Pair(3));
        timers.arm(t0 + ms(20), 9, Timer::Admin(1));
        assert_eq!(timers.next(), Some(t0 + ms(10)));
        assert_eq!(timers.pop_due(t0 + ms(5)), None);
        assert_eq!(timers.pop_due(t0 + ms(25)), Some((7, Timer::Pair(3))));
        assert_eq!(timers.pop_due(t0 + ms(25)), Some((9, Timer::Admin(1))));
        assert_eq!(timers.pop_due(t0 + ms(25)), None);
        timers.cancel(t0 + ms(30), 0, Timer::Drain);
        assert_eq!(timers.next(), None);
    }

    #[test]
    fn a_slot_holds_one_entry_moves_it_and_cancels_it() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut timers = Timers::default();
        let mut slot = Slot::default();
        slot.set(&mut timers, Some(t0 + ms(50)), 4, Timer::Pair(0));
        slot.set(&mut timers, Some(t0 + ms(20)), 4, Timer::Pair(0));
        assert_eq!((timers.len(), timers.next()), (1, Some(t0 + ms(20))));
        assert_eq!(timers.pop_due(t0 + ms(20)), Some((4, Timer::Pair(0))));
        slot.fired();
        // Armed again at the same instant after it fired: a new entry.
        slot.set(&mut timers, Some(t0 + ms(20)), 4, Timer::Pair(0));
        assert_eq!(timers.len(), 1);
        slot.set(&mut timers, None, 4, Timer::Pair(0));
        assert_eq!((timers.len(), slot.when()), (0, None));
    }
}

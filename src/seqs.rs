//! Request/answer matching by seq: each connection's outstanding requests,
//! and the counters and latencies matching yields.
//!
//! Pure: the times come from the loop's clock ([`Tracking`]). Each
//! pair keeps its outstanding `REQ`s as `(seq, time read)` in arrival order
//! ([`Seqs`]); an `ACK`/`NAK` matches the oldest one with its seq, which is
//! the front in the usual in-order case (one comparison), else found by a
//! scan (out-of-order answers). A `REQ` is checked for a duplicate seq only
//! when its seq is not above every seq outstanding, so increasing seqs cost
//! one comparison too. The set is capped at [`MAX_OUTSTANDING`] entries of
//! 16 bytes (64 KiB): past it requests are relayed but only counted
//! (`requests_untracked`), and answers that match nothing are taken to
//! answer them first. An empty set holds no allocation.

use std::collections::VecDeque;

use crate::latency::Answer;
use crate::pair::log_line::ConnRecord;
use crate::scanner::{Frame, FrameCounts, FrameSink};
use crate::stats::Stats;

/// A REQ whose seq is not above every outstanding one is looked for among
/// this many most recent outstanding requests: a client that reuses seqs
/// (wraps, or resends 1..N in a loop) must not cost a scan of the whole set
/// per request. An older duplicate is not counted (its answers still match).
pub const DUPLICATE_WINDOW: usize = 64;
/// Most requests tracked per connection.
pub const MAX_OUTSTANDING: usize = 4096;
/// Capacity of a set's first allocation: the default pipelining depth of
/// the benchmarks fits without growing.
const FIRST_CAPACITY: usize = 16;
/// Emptied sets kept for reuse, proxy-wide, and the largest capacity kept
/// (entries): a set that empties goes back here instead of to the
/// allocator, so a connection that alternates between nothing and a few
/// requests outstanding costs no allocation per request (at most 32 x 1 KiB
/// kept).
const SPARE_SETS: usize = 32;
const SPARE_MAX_CAPACITY: usize = 64;

/// One connection's outstanding requests.
#[derive(Debug, Default)]
pub struct Seqs {
    /// `(seq, µs read)`, oldest first.
    queue: VecDeque<(u64, u64)>,
    /// No outstanding seq is above this (while `queue` is not empty).
    top: u64,
    /// Requests outstanding beyond the cap.
    untracked: u32,
    /// Requests outstanding when the relay ended (for the connection log).
    pub unanswered: u32,
    /// The connection's slowest matched answer, µs (saturating).
    pub slowest_us: u32,
    /// At least one answer matched (`slowest_us` means something).
    answered: bool,
    /// A line whose answer cannot be told by its seq went by: a malformed
    /// frame either way, an answer that matched nothing, or a request past
    /// the cap. Counting lines cannot then prove that every answer came, so
    /// the upstream connection is never pooled (see `Pair::reusable`).
    pub unmatchable: bool,
    /// The connection log's record of this connection, when the log is on.
    pub(crate) log: Option<Box<ConnRecord>>,
}

impl Seqs {
    /// Requests outstanding on this connection.
    pub fn outstanding(&self) -> u64 {
        (self.queue.len() as u64).saturating_add(u64::from(self.untracked))
    }

    /// True once an answer matched on this connection.
    pub fn answered(&self) -> bool {
        self.answered
    }

    /// True while the set holds an allocation.
    pub fn holds_allocation(&self) -> bool {
        self.queue.capacity() > 0
    }

    /// A well-formed `REQ` with `seq` whose last byte was read at `at_us`.
    #[inline(always)]
    pub fn request(&mut self, seq: u64, at_us: u64, st: &mut Stats) {
        let len = self.queue.len();
        if len == 0 || seq > self.top {
            self.top = seq;
        } else if self
            .queue
            .iter()
            .rev()
            .take(DUPLICATE_WINDOW)
            .any(|&(s, _)| s == seq)
        {
            st.requests_duplicate_seq = st.requests_duplicate_seq.saturating_add(1);
        }
        if len >= MAX_OUTSTANDING {
            self.unmatchable = true;
            self.untracked = self.untracked.saturating_add(1);
            st.requests_untracked = st.requests_untracked.saturating_add(1);
            return;
        }
        if self.queue.capacity() == 0 {
            self.queue = st
                .matching
                .spare
                .pop()
                .unwrap_or_else(|| VecDeque::with_capacity(FIRST_CAPACITY));
        }
        self.queue.push_back((seq, at_us));
    }

    /// A well-formed answer with `seq` read at `at_us`.
    #[inline(always)]
    pub fn answer(&mut self, answer: Answer, seq: u64, at_us: u64, st: &mut Stats) {
        let found = match self.queue.front() {
            Some(&(s, t)) if s == seq => {
                self.queue.pop_front();
                Some(t)
            }
            Some(_) => self.take(seq),
            None => None,
        };
        match found {
            Some(sent) => {
                let us = at_us.saturating_sub(sent);
                self.slowest_us = self.slowest_us.max(u32::try_from(us).unwrap_or(u32::MAX));
                self.answered = true;
                st.matching.latency.record(answer, at_us, us);
                if self.queue.is_empty() {
                    self.release(st);
                }
            }
            // Past the cap, an answer that matches nothing is taken to
            // answer an untracked request.
            None if self.untracked > 0 => {
                self.untracked -= 1;
            }
            None => {
                self.unmatchable = true;
                st.answers_unmatched = st.answers_unmatched.saturating_add(1);
            }
        }
    }

    /// Removes the oldest outstanding `seq` (not at the front).
    #[cold]
    fn take(&mut self, seq: u64) -> Option<u64> {
        let at = self.queue.iter().position(|&(s, _)| s == seq)?;
        self.queue.remove(at).map(|(_, t)| t)
    }

    /// The relay is over: what is outstanding is unanswered. Returns how
    /// many; the set is emptied and freed.
    pub fn finish(&mut self, st: &mut Stats) -> u64 {
        let n = self.outstanding();
        st.requests_unanswered = st.requests_unanswered.saturating_add(n);
        self.unanswered = self
            .unanswered
            .saturating_add(u32::try_from(n).unwrap_or(u32::MAX));
        self.queue.clear();
        self.release(st);
        self.untracked = 0;
        n
    }

    /// Gives the emptied set's allocation back: an idle connection holds
    /// nothing for its requests.
    fn release(&mut self, st: &mut Stats) {
        let set = std::mem::take(&mut self.queue);
        let capacity = set.capacity();
        if capacity > 0 && capacity <= SPARE_MAX_CAPACITY && st.matching.spare.len() < SPARE_SETS {
            st.matching.spare.push(set);
        }
    }
}

/// The frame sink of one scanned read: counts every frame and matches
/// requests and answers, timed at `now` (µs on [`crate::latency::now_us`]'s
/// clock): the loop reads the clock once per iteration, not per read.
pub struct Tracking<'a> {
    pub counts: FrameCounts,
    pub seqs: &'a mut Seqs,
    pub stats: &'a mut Stats,
    now: u64,
}

impl<'a> Tracking<'a> {
    pub fn new(seqs: &'a mut Seqs, stats: &'a mut Stats, now: u64) -> Self {
        Tracking {
            counts: FrameCounts::default(),
            seqs,
            stats,
            now,
        }
    }

    #[inline(always)]
    fn now(&mut self) -> u64 {
        self.now
    }
}

impl FrameSink for Tracking<'_> {
    #[inline(always)]
    fn frame(&mut self, frame: Frame, seq: u64, _end: usize) {
        self.counts.add(frame);
        // The scanner classifies by direction: REQ only from the client,
        // ACK and NAK only from the server.
        match frame {
            Frame::Req => {
                let t = self.now();
                self.seqs.request(seq, t, self.stats);
            }
            Frame::Ack => {
                let t = self.now();
                self.seqs.answer(Answer::Ack, seq, t, self.stats);
            }
            Frame::Nak => {
                let t = self.now();
                self.seqs.answer(Answer::Nak, seq, t, self.stats);
            }
            Frame::Invalid => self.seqs.unmatchable = true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::latency::now_us;
    use crate::scanner::{Direction, Scanner};

    fn ack(s: &mut Seqs, seq: u64, at: u64, m: &mut Stats) {
        s.answer(Answer::Ack, seq, at, m);
    }

    #[test]
    fn in_order_answers_match_and_time_each_request() {
        let (mut s, mut m) = (Seqs::default(), Stats::default());
        s.request(1, 100, &mut m);
        s.request(2, 150, &mut m);
        assert_eq!(s.outstanding(), 2);
        ack(&mut s, 1, 1_100, &mut m);
        s.answer(Answer::Nak, 2, 20_150, &mut m);
        assert_eq!(s.outstanding(), 0);
        assert_eq!(m.matching.latency.ack.count(), 1);
        assert_eq!(m.matching.latency.ack.sum_us, 1_000);
        assert_eq!(m.matching.latency.nak.sum_us, 20_000);
        assert_eq!(s.slowest_us, 20_000);
        assert_eq!(
            m.answers_unmatched + m.requests_duplicate_seq + m.requests_unanswered,
            0
        );
        assert!(!s.holds_allocation(), "an idle connection holds nothing");
    }

    #[test]
    fn out_of_order_answers_match_their_own_request() {
        let (mut s, mut m) = (Seqs::default(), Stats::default());
        for seq in 1..=4 {
            s.request(seq, seq * 10, &mut m);
        }
        ack(&mut s, 3, 1_030, &mut m);
        ack(&mut s, 1, 1_010, &mut m);
        ack(&mut s, 4, 1_040, &mut m);
        ack(&mut s, 2, 1_020, &mut m);
        assert_eq!(m.matching.latency.ack.sum_us, 4_000, "each took 1 ms");
        assert_eq!(m.answers_unmatched, 0);
        assert_eq!(s.outstanding(), 0);
    }

    #[test]
    fn a_duplicate_seq_is_counted_and_both_are_answered() {
        let (mut s, mut m) = (Seqs::default(), Stats::default());
        s.request(7, 0, &mut m);
        s.request(8, 0, &mut m);
        s.request(7, 500, &mut m);
        assert_eq!(m.requests_duplicate_seq, 1);
        ack(&mut s, 7, 1_000, &mut m);
        ack(&mut s, 8, 1_000, &mut m);
        ack(&mut s, 7, 1_000, &mut m);
        assert_eq!(m.answers_unmatched, 0);
        assert_eq!(
            m.matching.latency.ack.sum_us,
            1_000 + 1_000 + 500,
            "oldest first"
        );
        // A seq reused after its answer is no duplicate.
        s.request(7, 0, &mut m);
        assert_eq!(m.requests_duplicate_seq, 1);
    }

    #[test]
    fn reused_seqs_are_checked_against_the_recent_window_only() {
        let (mut s, mut m) = (Seqs::default(), Stats::default());
        for seq in 1..=1000 {
            s.request(seq, 0, &mut m);
        }
        // Seq 1 is outstanding but older than the window: relayed, tracked,
        // not counted as a duplicate; seq 990 is within it.
        s.request(1, 0, &mut m);
        assert_eq!(m.requests_duplicate_seq, 0);
        s.request(990, 0, &mut m);
        assert_eq!(m.requests_duplicate_seq, 1);
        // Both copies of seq 1 are answered, oldest first.
        ack(&mut s, 1, 5, &mut m);
        ack(&mut s, 1, 5, &mut m);
        assert_eq!(m.answers_unmatched, 0);
    }

    #[test]
    fn unknown_and_twice_answered_seqs_are_unmatched() {
        let (mut s, mut m) = (Seqs::default(), Stats::default());
        ack(&mut s, 5, 10, &mut m);
        s.request(1, 0, &mut m);
        ack(&mut s, 1, 10, &mut m);
        ack(&mut s, 1, 20, &mut m);
        s.request(2, 0, &mut m);
        ack(&mut s, 9, 20, &mut m);
        assert_eq!(m.answers_unmatched, 3);
        assert_eq!(s.outstanding(), 1);
        assert_eq!(m.matching.latency.ack.count(), 1);
    }

    #[test]
    fn past_the_cap_requests_are_untracked_and_their_answers_not_unmatched() {
        let (mut s, mut m) = (Seqs::default(), Stats::default());
        let over = MAX_OUTSTANDING as u64 + 3;
        for seq in 0..over {
            s.request(seq, 0, &mut m);
        }
        assert_eq!(m.requests_untracked, 3);
        assert_eq!(s.outstanding(), over);
        assert!(s.queue.len() <= MAX_OUTSTANDING, "the set stays bounded");
        for seq in 0..over {
            ack(&mut s, seq, 5, &mut m);
        }
        assert_eq!(m.answers_unmatched, 0);
        assert_eq!(s.outstanding(), 0);
        assert_eq!(m.matching.latency.ack.count(), MAX_OUTSTANDING as u64);
    }

    #[test]
    fn a_close_with_requests_outstanding_counts_them_unanswered() {
        let (mut s, mut m) = (Seqs::default(), Stats::default());
        s.request(1, 0, &mut m);
        s.request(2, 0, &mut m);
        s.request(3, 0, &mut m);
        ack(&mut s, 2, 10, &mut m);
        assert_eq!(s.finish(&mut m), 2);
        assert_eq!(m.requests_unanswered, 2);
        assert_eq!(s.unanswered, 2);
        assert_eq!(s.outstanding(), 0);
        assert!(!s.holds_allocation());
    }

    #[test]
    fn a_request_split_across_reads_is_timed_from_its_last_byte() {
        let (mut s, mut m) = (Seqs::default(), Stats::default());
        let mut c2s = Scanner::new(Direction::ClientToServer);
        let mut sink = Tracking::new(&mut s, &mut m, now_us());
        c2s.scan(b"REQ 4", &mut sink);
        assert_eq!(sink.counts.req, 0);
        assert_eq!(sink.seqs.outstanding(), 0);
        let mut sink = Tracking::new(&mut s, &mut m, now_us());
        c2s.scan(b"2 hello\nREQ 43\n", &mut sink);
        assert_eq!(sink.counts.req, 2);
        assert_eq!(
            s.queue.iter().map(|&(q, _)| q).collect::<Vec<_>>(),
            [42, 43]
        );
        let mut s2c = Scanner::new(Direction::ServerToClient);
        let mut sink = Tracking::new(&mut s, &mut m, now_us());
        s2c.scan(b"NAK 43 x\nACK 42\nREQ 1\n", &mut sink);
        assert_eq!(sink.counts.invalid, 1, "a REQ from the server is no answer");
        assert_eq!(
            m.matching.latency.ack.count() + m.matching.latency.nak.count(),
            2
        );
        assert_eq!(m.answers_unmatched, 0);
    }
}

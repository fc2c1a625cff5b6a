//! Answer latency: fixed histogram buckets since start (Prometheus), and a
//! ring of per-second fine histograms for the quantiles of the last 10 s.
//!
//! Pure: times are microseconds on the proxy's monotonic clock ([`now_us`]),
//! passed in. The fixed buckets ([`BOUNDS_US`], 100 µs to 10 s in roughly
//! ×2.5 steps) are the same on every instance, so histograms from several
//! proxies sum exactly. The quantiles come from finer log-linear buckets (16
//! per power of two): a quantile is reported as its bucket's midpoint, at
//! most 1/32 (about 3 %) from the true value, and never above the maximum,
//! which is exact.

use std::sync::OnceLock;
use std::time::Instant;

/// Upper bounds (inclusive, as Prometheus `le`) of the fixed buckets, in µs.
pub const BOUNDS_US: [u64; 16] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000, 10_000_000,
];
/// One count per bound plus the last, `+Inf`.
pub const BUCKETS: usize = BOUNDS_US.len() + 1;
/// Seconds the recent quantiles cover.
pub const WINDOW_SECS: u64 = 10;

/// Sub-buckets per power of two in the fine layout (4 bits of mantissa).
const SUB_BITS: u32 = 4;
const SUB: u64 = 1 << SUB_BITS;
/// Latencies are capped here for the fine layout (about 71 minutes).
const FINE_MAX_US: u64 = (1 << 32) - 1;
/// Fine buckets: values below `SUB` exactly, then 16 per power of two up
/// to 2^32 µs.
const FINE: usize = (SUB as usize) * (32 - SUB_BITS as usize + 1);

static EPOCH: OnceLock<Instant> = OnceLock::new();

/// Microseconds since the first call in this process, on the monotonic
/// clock: the one clock of request and answer times.
pub fn now_us() -> u64 {
    us_at(Instant::now())
}

/// `at` in microseconds on the [`now_us`] clock: how the loop turns the
/// clock it read once per iteration into request and answer times.
pub fn us_at(at: Instant) -> u64 {
    let epoch = EPOCH.get_or_init(|| at);
    u64::try_from(at.saturating_duration_since(*epoch).as_micros()).unwrap_or(u64::MAX)
}

/// For each power of two 2^k (k = 0..63), how many bounds lie below it:
/// the first bucket a latency in [2^k, 2^(k+1)) can fall in. Every bound is
/// at least twice the one before (checked below), so such a latency is in
/// that bucket or the next, and one comparison tells which.
// Evaluated at compile time: an index out of range fails the build.
#[allow(clippy::indexing_slicing)]
const FIRST_BUCKET: [u8; 64] = {
    let mut first = [0u8; 64];
    let mut k = 0;
    while k < 64 {
        let mut n = 0;
        while n < BOUNDS_US.len() && BOUNDS_US[n] < 1 << k {
            n += 1;
        }
        first[k] = n as u8;
        k += 1;
    }
    first
};
/// The bounds and, past the last, a bound no latency exceeds (`+Inf`).
// Evaluated at compile time: an index out of range fails the build.
#[allow(clippy::indexing_slicing)]
const BOUNDS_OR_INF: [u64; BUCKETS] = {
    let mut b = [u64::MAX; BUCKETS];
    let mut i = 0;
    while i < BOUNDS_US.len() {
        assert!(i == 0 || BOUNDS_US[i] >= 2 * BOUNDS_US[i - 1]);
        b[i] = BOUNDS_US[i];
        i += 1;
    }
    b
};

/// Index of the fixed bucket that `us` falls in: the first bound `us` does
/// not exceed, found without a search (a table lookup by the power of two
/// and one comparison) since this runs once per matched answer.
#[inline]
pub fn bucket_of(us: u64) -> usize {
    let octave = (63 - (us | 1).leading_zeros()) as usize;
    let first = FIRST_BUCKET
        .get(octave)
        .map_or(BOUNDS_US.len(), |&f| f as usize);
    let bound = BOUNDS_OR_INF.get(first).copied().unwrap_or(u64::MAX);
    first + usize::from(us > bound)
}

/// Counts per fixed bucket (not cumulative) and the sum, since start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Histogram {
    pub counts: [u64; BUCKETS],
    /// Sum of every latency recorded, in µs (saturating).
    pub sum_us: u64,
}

impl Histogram {
    #[inline(always)]
    pub fn record(&mut self, us: u64) {
        if let Some(c) = self.counts.get_mut(bucket_of(us)) {
            *c = c.saturating_add(1);
        }
        self.sum_us = self.sum_us.saturating_add(us);
    }

    /// Latencies recorded (saturating).
    pub fn count(&self) -> u64 {
        self.counts.iter().fold(0, |a, &c| a.saturating_add(c))
    }
}

/// Fine bucket of `us`: exact below 16 µs, then 16 per power of two.
#[inline]
fn fine_of(us: u64) -> usize {
    let us = us.min(FINE_MAX_US);
    if us < SUB {
        return us as usize;
    }
    let octave = 63 - us.leading_zeros();
    let sub = (us >> (octave - SUB_BITS)) - SUB;
    ((octave - SUB_BITS + 1) as usize) * SUB as usize + sub as usize
}

/// The value a fine bucket stands for: its midpoint, in µs.
fn fine_value(index: usize) -> f64 {
    let sub = (index as u64) % SUB;
    let row = (index as u64) / SUB;
    if row == 0 {
        return sub as f64;
    }
    let shift = row - 1;
    let low = ((SUB + sub) << shift) as f64;
    let width = (1u64 << shift) as f64;
    low + (width - 1.0) / 2.0
}

/// One second of answers.
struct Second {
    /// The second (µs / 1e6) plus one; 0 when never used.
    tag: u64,
    count: u64,
    max_us: u64,
    counts: Box<[u32]>,
}

/// The quantiles of the last [`WINDOW_SECS`], in milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Quantiles {
    pub count: u64,
    pub p50: Option<f64>,
    pub p90: Option<f64>,
    pub p99: Option<f64>,
    pub p999: Option<f64>,
    pub max: Option<f64>,
}

/// A ring of per-second fine histograms: the answers whose second is one
/// of the last [`WINDOW_SECS`] (the current one included).
pub struct Recent {
    seconds: Vec<Second>,
    /// The slot of the second being recorded, and where that second ends
    /// (µs): a record before then needs no division.
    current: usize,
    current_end_us: u64,
}

impl Default for Recent {
    fn default() -> Self {
        let seconds = (0..WINDOW_SECS)
            .map(|_| Second {
                tag: 0,
                count: 0,
                max_us: 0,
                counts: vec![0u32; FINE].into_boxed_slice(),
            })
            .collect();
        Recent {
            seconds,
            current: 0,
            current_end_us: 0,
        }
    }
}

impl Recent {
    /// One answer `us` long, read at `at_us`.
    #[inline(always)]
    pub fn record(&mut self, at_us: u64, us: u64) {
        // The clock is monotonic: only a new second needs the slot found.
        if at_us >= self.current_end_us {
            self.enter(at_us);
        }
        let Some(slot) = self.seconds.get_mut(self.current) else {
            return;
        };
        // Per second: neither count can come near its limit.
        slot.count = slot.count.wrapping_add(1);
        slot.max_us = slot.max_us.max(us);
        if let Some(c) = slot.counts.get_mut(fine_of(us)) {
            *c = c.wrapping_add(1);
        }
    }

    /// Makes the slot of `at_us`'s second current, emptied if it held an
    /// older second.
    #[cold]
    fn enter(&mut self, at_us: u64) {
        let second = at_us / 1_000_000;
        let tag = second.saturating_add(1);
        self.current = (second % WINDOW_SECS) as usize;
        self.current_end_us = tag.saturating_mul(1_000_000);
        if let Some(slot) = self.seconds.get_mut(self.current)
            && slot.tag != tag
        {
            slot.tag = tag;
            slot.count = 0;
            slot.max_us = 0;
            slot.counts.fill(0);
        }
    }

    /// The quantiles of the answers read in the last [`WINDOW_SECS`]
    /// before `now_us` (whole seconds: between 9 and 10 s of them).
    pub fn quantiles(&self, now_us: u64) -> Quantiles {
        let now = now_us / 1_000_000;
        let live = |s: &&Second| s.tag != 0 && s.tag - 1 <= now && now - (s.tag - 1) < WINDOW_SECS;
        let live: Vec<&Second> = self.seconds.iter().filter(live).collect();
        let count = live.iter().fold(0u64, |a, s| a.saturating_add(s.count));
        if count == 0 {
            return Quantiles::default();
        }
        let max_us = live.iter().map(|s| s.max_us).max().unwrap_or(0);
        let mut merged = vec![0u64; FINE];
        for s in &live {
            for (m, &c) in merged.iter_mut().zip(s.counts.iter()) {
                *m = m.saturating_add(u64::from(c));
            }
        }
        let at = |q: f64| -> Option<f64> {
            // The smallest value with at least q of the answers at or below.
            let rank = ((q * count as f64).ceil() as u64).clamp(1, count);
            let mut seen = 0u64;
            for (i, &c) in merged.iter().enumerate() {
                seen = seen.saturating_add(c);
                if seen >= rank {
                    return Some(fine_value(i).min(max_us as f64) / 1000.0);
                }
            }
            Some(max_us as f64 / 1000.0)
        };
        Quantiles {
            count,
            p50: at(0.5),
            p90: at(0.9),
            p99: at(0.99),
            p999: at(0.999),
            max: Some(max_us as f64 / 1000.0),
        }
    }
}

/// What an answer was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    Ack,
    Nak,
}

/// Every latency the proxy keeps: the fixed histograms since start, one
/// per answer type, and the recent ring.
#[derive(Default)]
pub struct Latency {
    pub ack: Histogram,
    pub nak: Histogram,
    pub recent: Recent,
}

impl Latency {
    /// One matched answer: `us` from request to answer, read at `at_us`.
    #[inline(always)]
    pub fn record(&mut self, answer: Answer, at_us: u64, us: u64) {
        match answer {
            Answer::Ack => self.ack.record(us),
            Answer::Nak => self.nak.record(us),
        }
        self.recent.record(at_us, us);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_buckets_take_their_upper_bound_and_overflow_goes_to_inf() {
        assert_eq!(bucket_of(0), 0);
        assert_eq!(bucket_of(100), 0);
        assert_eq!(bucket_of(101), 1);
        assert_eq!(bucket_of(20_000), 7);
        assert_eq!(bucket_of(10_000_000), 15);
        assert_eq!(bucket_of(10_000_001), 16);
    }

    #[test]
    fn the_bucket_index_is_the_first_bound_not_exceeded_at_every_edge() {
        let linear = |us: u64| {
            BOUNDS_US
                .iter()
                .position(|&bound| us <= bound)
                .unwrap_or(BOUNDS_US.len())
        };
        let mut edges = vec![0, 1, u64::MAX - 1, u64::MAX];
        for b in BOUNDS_US.into_iter().chain((0..64).map(|k| 1u64 << k)) {
            edges.extend([b.saturating_sub(1), b, b.saturating_add(1)]);
        }
        for us in edges.into_iter().chain((0..200_000).step_by(7)) {
            assert_eq!(bucket_of(us), linear(us), "{us} µs");
        }
        let mut h = Histogram::default();
        h.record(20_000);
        h.record(u64::MAX);
        assert_eq!(h.counts[7], 1);
        assert_eq!(h.counts[16], 1);
        assert_eq!(h.count(), 2);
        assert_eq!(h.sum_us, u64::MAX, "the sum saturates");
    }

    #[test]
    fn fine_buckets_are_ordered_and_within_a_thirty_second_of_their_values() {
        let mut last = 0;
        for us in [
            1u64,
            15,
            16,
            17,
            31,
            32,
            1000,
            20_000,
            1 << 31,
            FINE_MAX_US,
            u64::MAX,
        ] {
            let i = fine_of(us);
            assert!(i < FINE, "{us} -> {i}");
            assert!(i >= last, "{us}");
            last = i;
            if us <= FINE_MAX_US {
                let v = fine_value(i);
                assert!((v - us as f64).abs() <= us as f64 / 32.0 + 0.5, "{us}: {v}");
            }
        }
    }

    #[test]
    fn quantiles_of_the_last_ten_seconds_track_the_values_recorded() {
        let mut r = Recent::default();
        assert_eq!(r.quantiles(0), Quantiles::default());
        // 1000 answers at 20 ms, 10 at 200 ms, 1 at 900 ms, in second 3.
        for _ in 0..1000 {
            r.record(3_000_000, 20_000);
        }
        for _ in 0..10 {
            r.record(3_500_000, 200_000);
        }
        r.record(3_900_000, 900_000);
        let q = r.quantiles(4_000_000);
        assert_eq!(q.count, 1011);
        let near = |got: Option<f64>, want: f64| {
            let got = got.unwrap();
            assert!((got - want).abs() <= want / 32.0, "{got} vs {want}");
        };
        near(q.p50, 20.0);
        near(q.p90, 20.0);
        near(q.p99, 200.0);
        near(q.p999, 200.0);
        assert_eq!(q.max, Some(900.0));
        // Still there at 12.9 s, gone at 13 s.
        assert_eq!(r.quantiles(12_900_000).count, 1011);
        assert_eq!(r.quantiles(13_000_000), Quantiles::default());
    }

    #[test]
    fn a_second_reused_by_the_ring_forgets_what_it_held() {
        let mut r = Recent::default();
        r.record(1_000_000, 5_000);
        r.record(11_000_000, 7_000);
        let q = r.quantiles(11_000_000);
        assert_eq!(q.count, 1);
        assert_eq!(q.max, Some(7.0));
    }
}

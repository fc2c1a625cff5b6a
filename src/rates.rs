//! Moving-window message rates.
//!
//! Pure: the time is passed in as milliseconds on a monotonic clock, so tests
//! drive it with a fake one. The 10 s window is kept in 1,000 buckets of
//! 10 ms; the 1 s rate sums the newest 100 of them. A bucket is 1 % of the
//! 1 s window and 0.1 % of the 10 s one, which bounds the error as docs/PROTOCOL.md
//! asks. Nothing ticks: buckets are aged lazily when touched or read.

/// Width of one bucket.
pub const BUCKET_MS: u64 = 10;
/// Buckets in the 10 s window.
pub const BUCKETS: usize = 1000;
/// Buckets in the 1 s window.
const BUCKETS_1S: u64 = 100;

/// Counts of one bucket: requests and responses (ACK + NAK).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bucket {
    pub req: u32,
    pub resp: u32,
}

/// The four rates docs/PROTOCOL.md defines.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct RateSnapshot {
    pub request_rate_1s: f64,
    pub request_rate_10s: f64,
    pub response_rate_1s: f64,
    pub response_rate_10s: f64,
}

/// A ring of buckets indexed by absolute bucket number (`ms / BUCKET_MS`).
#[derive(Clone)]
pub struct RateWindow {
    buckets: Box<[Bucket; BUCKETS]>,
    /// Absolute number of the newest bucket written or aged so far.
    head: u64,
}

impl Default for RateWindow {
    fn default() -> Self {
        Self::new()
    }
}

impl RateWindow {
    pub fn new() -> Self {
        RateWindow {
            buckets: Box::new([Bucket::default(); BUCKETS]),
            head: 0,
        }
    }

    fn slot(index: u64) -> usize {
        // The remainder is below BUCKETS, so the cast cannot truncate.
        (index % BUCKETS as u64) as usize
    }

    /// The slot `age` buckets behind `head` (`age < BUCKETS`). Modular, so
    /// buckets restored from before this process started (a negative
    /// absolute number) have a place too; `advance` clears them in turn.
    fn slot_at_age(head: u64, age: u64) -> usize {
        Self::slot(head % BUCKETS as u64 + BUCKETS as u64 - age)
    }

    /// Moves the head to the bucket of `now_ms`, clearing the buckets it
    /// passes. A clock that goes backwards keeps the head where it is.
    fn advance(&mut self, now_ms: u64) {
        let target = now_ms / BUCKET_MS;
        if target <= self.head {
            return;
        }
        let steps = (target - self.head).min(BUCKETS as u64);
        for i in 1..=steps {
            if let Some(b) = self.buckets.get_mut(Self::slot(self.head + i)) {
                *b = Bucket::default();
            }
        }
        self.head = target;
    }

    /// Adds `req` requests and `resp` responses completed at `now_ms`.
    pub fn record(&mut self, now_ms: u64, req: u64, resp: u64) {
        if req == 0 && resp == 0 {
            return;
        }
        self.advance(now_ms);
        if let Some(b) = self.buckets.get_mut(Self::slot(self.head)) {
            b.req = b.req.saturating_add(u32::try_from(req).unwrap_or(u32::MAX));
            b.resp = b
                .resp
                .saturating_add(u32::try_from(resp).unwrap_or(u32::MAX));
        }
    }

    /// The rates as seen at `now_ms`.
    pub fn rates(&mut self, now_ms: u64) -> RateSnapshot {
        self.advance(now_ms);
        let (mut req1, mut resp1, mut req10, mut resp10) = (0u64, 0u64, 0u64, 0u64);
        for age in 0..BUCKETS as u64 {
            let Some(b) = self.buckets.get(Self::slot_at_age(self.head, age)) else {
                continue;
            };
            req10 += u64::from(b.req);
            resp10 += u64::from(b.resp);
            if age < BUCKETS_1S {
                req1 += u64::from(b.req);
                resp1 += u64::from(b.resp);
            }
        }
        RateSnapshot {
            request_rate_1s: req1 as f64,
            request_rate_10s: req10 as f64 / 10.0,
            response_rate_1s: resp1 as f64,
            response_rate_10s: resp10 as f64 / 10.0,
        }
    }

    /// Non-empty buckets still inside the window at `now_ms`, oldest first,
    /// as `(ms since the bucket started, counts)`. Ages rather than start
    /// times, so the recovery snapshot can map them onto the wall clock.
    pub fn live_buckets(&mut self, now_ms: u64) -> Vec<(u64, Bucket)> {
        self.advance(now_ms);
        let into_head = now_ms.saturating_sub(self.head * BUCKET_MS);
        (0..BUCKETS as u64)
            .rev()
            .filter_map(|age| {
                let b = *self.buckets.get(Self::slot_at_age(self.head, age))?;
                (b != Bucket::default()).then_some((into_head + age * BUCKET_MS, b))
            })
            .collect()
    }

    /// Puts back counts of a bucket that started `age_ms` before `now_ms`, if
    /// that is still inside the window. The bucket lands `age_ms / BUCKET_MS`
    /// buckets behind the newest: off by less than one bucket at most.
    pub fn restore_bucket(&mut self, now_ms: u64, age_ms: u64, bucket: Bucket) {
        self.advance(now_ms);
        let age = age_ms / BUCKET_MS;
        if age >= BUCKETS as u64 {
            return;
        }
        if let Some(b) = self.buckets.get_mut(Self::slot_at_age(self.head, age)) {
            b.req = b.req.saturating_add(bucket.req);
            b.resp = b.resp.saturating_add(bucket.resp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_window_reports_zero() {
        let mut w = RateWindow::new();
        assert_eq!(w.rates(0), RateSnapshot::default());
        assert_eq!(w.rates(123_456), RateSnapshot::default());
    }

    #[test]
    fn one_second_window_boundary() {
        let mut w = RateWindow::new();
        w.record(5_000, 50, 40);
        let r = w.rates(5_000);
        assert_eq!(r.request_rate_1s, 50.0);
        assert_eq!(r.response_rate_1s, 40.0);
        assert_eq!(r.request_rate_10s, 5.0);
        assert_eq!(r.response_rate_10s, 4.0);
        // Still inside the last second just before the boundary.
        assert_eq!(w.rates(5_999).request_rate_1s, 50.0);
        // Exactly one second later the 1 s rates are exactly 0.
        let r = w.rates(6_000);
        assert_eq!(r.request_rate_1s, 0.0);
        assert_eq!(r.response_rate_1s, 0.0);
        assert_eq!(r.request_rate_10s, 5.0);
    }

    #[test]
    fn ten_second_window_boundary_and_decay() {
        let mut w = RateWindow::new();
        w.record(20_000, 100, 100);
        assert_eq!(w.rates(29_999).request_rate_10s, 10.0);
        let r = w.rates(30_000);
        assert_eq!(r, RateSnapshot::default());
        // Long idle gaps age everything out too.
        w.record(31_000, 7, 0);
        assert_eq!(w.rates(1_000_000), RateSnapshot::default());
    }

    #[test]
    fn ten_second_rate_divides_by_ten_from_the_start() {
        let mut w = RateWindow::new();
        w.record(100, 30, 0);
        assert_eq!(w.rates(200).request_rate_10s, 3.0);
    }

    #[test]
    fn steady_traffic_has_small_error() {
        let mut w = RateWindow::new();
        // 1,000 requests per second, one per millisecond, for 20 s.
        for ms in 0..20_000 {
            w.record(ms, 1, 1);
        }
        let r = w.rates(19_999);
        assert!((r.request_rate_1s - 1000.0).abs() <= 10.0, "{r:?}");
        assert!((r.request_rate_10s - 1000.0).abs() <= 10.0, "{r:?}");
        // Half a second later half the 1 s window is empty.
        let r = w.rates(20_499);
        assert!((r.request_rate_1s - 500.0).abs() <= 10.0, "{r:?}");
    }

    #[test]
    fn clock_going_backwards_does_not_lose_counts() {
        let mut w = RateWindow::new();
        w.record(10_000, 5, 0);
        w.record(9_000, 5, 0);
        assert_eq!(w.rates(10_000).request_rate_1s, 10.0);
    }

    #[test]
    fn live_buckets_round_trip() {
        let mut w = RateWindow::new();
        w.record(1_000, 1, 2);
        w.record(5_555, 3, 4);
        let live = w.live_buckets(6_003);
        assert_eq!(
            live,
            vec![
                (5_003, Bucket { req: 1, resp: 2 }),
                (453, Bucket { req: 3, resp: 4 })
            ]
        );
        let mut restored = RateWindow::new();
        for (age, b) in live {
            restored.restore_bucket(6_003, age, b);
        }
        assert_eq!(restored.rates(6_003), w.rates(6_003));
        // A bucket older than the window is dropped on restore.
        restored.restore_bucket(20_000, 10_000, Bucket { req: 9, resp: 9 });
        assert_eq!(restored.rates(20_000), RateSnapshot::default());
    }

    #[test]
    fn restored_buckets_from_before_start_count_and_age_out() {
        // A fresh process (clock near 0) restores counts from 9.5 s and
        // 0.5 s ago: they count now and leave the window on time.
        let mut w = RateWindow::new();
        w.restore_bucket(0, 9_500, Bucket { req: 10, resp: 0 });
        w.restore_bucket(0, 500, Bucket { req: 0, resp: 20 });
        let r = w.rates(0);
        assert_eq!(r.request_rate_10s, 1.0);
        assert_eq!(r.response_rate_10s, 2.0);
        assert_eq!(r.response_rate_1s, 20.0);
        assert_eq!(r.request_rate_1s, 0.0);
        assert_eq!(w.live_buckets(0).len(), 2);
        let r = w.rates(499);
        assert_eq!(r.request_rate_10s, 1.0);
        assert_eq!(r.response_rate_1s, 20.0);
        let r = w.rates(500);
        assert_eq!(r.request_rate_10s, 0.0);
        assert_eq!(r.response_rate_1s, 0.0);
        assert_eq!(r.response_rate_10s, 2.0);
        assert_eq!(w.rates(9_500), RateSnapshot::default());
        assert!(w.live_buckets(9_500).is_empty());
    }
}

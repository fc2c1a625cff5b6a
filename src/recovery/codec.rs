//! The recovery file's pure part: the snapshot, its encoding and decoding, and the restore arithmetic (both clocks passed in).

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::latency::{self, BOUNDS_US, Histogram};
use crate::rates::{BUCKET_MS, BUCKETS, Bucket};
use crate::reason::Reason;
use crate::stats::Stats;

/// The `format` field: tells our file from any other JSON, such as the
/// reference proxy's own `recovery.json`.
pub const FORMAT: &str = "foo-proxy-recovery";
/// The `version` field this build writes and reads.
pub const VERSION: u64 = 1;
/// A full window is about 50 KiB; anything past this is not ours.
pub const MAX_FILE_BYTES: u64 = 1 << 20;
/// The span of the moving window: older counts are not restored.
pub const WINDOW_MS: u64 = BUCKET_MS * BUCKETS as u64;

pub use crate::stats::Totals;

/// One non-empty bucket of the window, stamped with the wall-clock time it
/// started, so its age is known in the next process too.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct WindowBucket {
    pub start_ms: u64,
    pub req: u32,
    pub resp: u32,
}

/// A fixed-bucket latency histogram as the file carries it: the bounds
/// it was counted with (µs, inclusive; `+Inf` implied), the counts per
/// bucket (not cumulative, one more than the bounds) and the sum in µs.
/// The bounds travel with the counts so that a build with other buckets
/// leaves them alone instead of adding them into the wrong ones.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(default)]
pub struct HistogramTotals {
    pub bounds_us: Vec<u64>,
    pub counts: Vec<u64>,
    pub sum_us: u64,
}

impl HistogramTotals {
    fn of(h: &Histogram) -> HistogramTotals {
        HistogramTotals {
            bounds_us: BOUNDS_US.to_vec(),
            counts: h.counts.to_vec(),
            sum_us: h.sum_us,
        }
    }

    /// Adds these counts to `h` (saturating) when they were counted with
    /// this build's buckets; false (nothing added) otherwise.
    fn add_to(&self, h: &mut Histogram) -> bool {
        if self.bounds_us != BOUNDS_US || self.counts.len() != latency::BUCKETS {
            return self.counts.iter().all(|&c| c == 0) && self.sum_us == 0;
        }
        for (to, from) in h.counts.iter_mut().zip(&self.counts) {
            *to = to.saturating_add(*from);
        }
        h.sum_us = h.sum_us.saturating_add(self.sum_us);
        true
    }
}

/// The answer latency histograms since the first start, by answer type.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(default)]
pub struct LatencyTotals {
    pub ack: HistogramTotals,
    pub nak: HistogramTotals,
}

/// What the file holds besides its format and version.
///
/// `closed` and `latency` came after the first files (issue 12's close
/// reasons and histograms): a file without them reads as none (so older
/// files still restore their totals), and a build that does not know them
/// ignores them, like any unknown field, so the format stays version 1 and
/// a rolled-back build still reads the file.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Wall-clock time it was taken, ms since the Unix epoch.
    pub written_at_ms: u64,
    pub totals: Totals,
    /// Non-empty buckets, oldest first.
    pub window: Vec<WindowBucket>,
    /// Connections closed since the first start, by reason name (the
    /// report's `connections_closed` keys). Names this build does not know
    /// are ignored on restore.
    pub closed: BTreeMap<String, u64>,
    pub latency: LatencyTotals,
}

#[derive(Serialize)]
struct WireOut<'a> {
    format: &'a str,
    version: u64,
    written_at_ms: u64,
    totals: &'a Totals,
    window: &'a [WindowBucket],
    closed: &'a BTreeMap<String, u64>,
    latency: &'a LatencyTotals,
}

#[derive(Deserialize)]
struct WireIn {
    #[serde(rename = "format")]
    _format: String,
    #[serde(rename = "version")]
    _version: u64,
    written_at_ms: u64,
    totals: Totals,
    window: Vec<WindowBucket>,
    #[serde(default)]
    closed: BTreeMap<String, u64>,
    #[serde(default)]
    latency: LatencyTotals,
}

/// The file's bytes: one line of JSON.
pub fn encode(snapshot: &Snapshot) -> Vec<u8> {
    let wire = WireOut {
        format: FORMAT,
        version: VERSION,
        written_at_ms: snapshot.written_at_ms,
        totals: &snapshot.totals,
        window: &snapshot.window,
        closed: &snapshot.closed,
        latency: &snapshot.latency,
    };
    // Integers, strings and arrays into a Vec cannot fail to serialize; an
    // empty result would only ever be rejected by `decode`, never misread.
    let mut bytes = serde_json::to_vec(&wire).unwrap_or_default();
    bytes.push(b'\n');
    bytes
}

/// Why a file is not a snapshot this build can use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    Empty,
    TooLarge(u64),
    Truncated,
    NotJson(String),
    /// JSON without our `format` field: someone else's file.
    NotOurs,
    Version(String),
    Invalid(String),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Empty => f.write_str("the file is empty"),
            DecodeError::TooLarge(len) => write!(
                f,
                "the file is {len} bytes, more than a snapshot can be ({MAX_FILE_BYTES})"
            ),
            DecodeError::Truncated => f.write_str("the file is truncated"),
            DecodeError::NotJson(why) => write!(f, "the file is not valid JSON: {why}"),
            DecodeError::NotOurs => write!(
                f,
                "the file is not a foo-proxy snapshot (no \"format\": \"{FORMAT}\"; \
                 perhaps the reference proxy's format)"
            ),
            DecodeError::Version(v) => write!(
                f,
                "unsupported format version {v} (this build reads version {VERSION})"
            ),
            DecodeError::Invalid(why) => write!(f, "the snapshot is invalid: {why}"),
        }
    }
}

/// Parses a file's bytes. Pure and total: any input gives a snapshot or a
/// reason, never a panic. Fields this build does not know are ignored; a
/// `version` other than [`VERSION`] is an error. Any `u64` total is taken
/// as written: counters saturate, so a restored total near `u64::MAX` stops
/// there instead of wrapping. The window is returned as written:
/// [`check_window`] says whether it can be believed.
pub fn decode(bytes: &[u8]) -> Result<Snapshot, DecodeError> {
    let len = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
    if len > MAX_FILE_BYTES {
        return Err(DecodeError::TooLarge(len));
    }
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(DecodeError::Empty);
    }
    let value: Value = serde_json::from_slice(bytes).map_err(|e| {
        if e.is_eof() {
            DecodeError::Truncated
        } else {
            DecodeError::NotJson(e.to_string())
        }
    })?;
    let Value::Object(fields) = &value else {
        return Err(DecodeError::NotOurs);
    };
    if fields.get("format").and_then(Value::as_str) != Some(FORMAT) {
        return Err(DecodeError::NotOurs);
    }
    match fields.get("version") {
        Some(v) if v.as_u64() == Some(VERSION) => {}
        Some(v) => return Err(DecodeError::Version(v.to_string())),
        None => return Err(DecodeError::Version("(missing)".into())),
    }
    let wire: WireIn =
        serde_json::from_value(value).map_err(|e| DecodeError::Invalid(e.to_string()))?;
    Ok(Snapshot {
        written_at_ms: wire.written_at_ms,
        totals: wire.totals,
        window: wire.window,
        closed: wire.closed,
        latency: wire.latency,
    })
}

/// Why a snapshot's window cannot be true of its own totals. A window that
/// [`capture`] wrote always passes; anything else was crafted or damaged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Implausible {
    /// More buckets than the window has.
    TooManyBuckets(usize),
    /// A bucket started outside `[written_at_ms - WINDOW_MS, written_at_ms]`.
    OutsideWindow { start_ms: u64 },
    /// Two buckets with the same start.
    Duplicate { start_ms: u64 },
    /// The buckets hold more requests than `totals.msg_req`.
    Requests { window: u64, total: u64 },
    /// The buckets hold more responses than `totals.msg_ack + msg_nak`.
    Responses { window: u64, total: u64 },
}

impl fmt::Display for Implausible {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Implausible::TooManyBuckets(n) => {
                write!(f, "it has {n} buckets, more than the {BUCKETS} of a window")
            }
            Implausible::OutsideWindow { start_ms } => write!(
                f,
                "a bucket starts at {start_ms}, outside the 10 s before the snapshot"
            ),
            Implausible::Duplicate { start_ms } => {
                write!(f, "two buckets start at {start_ms}")
            }
            Implausible::Requests { window, total } => write!(
                f,
                "its buckets hold {window} requests but the totals only {total}"
            ),
            Implausible::Responses { window, total } => write!(
                f,
                "its buckets hold {window} responses but the totals only {total}"
            ),
        }
    }
}

/// Whether `snapshot`'s window can be part of its totals: at most
/// `BUCKETS` buckets, each started in the `WINDOW_MS` before the snapshot,
/// no two with the same start, and their requests and responses summed no
/// more than `msg_req` and `msg_ack + msg_nak` (so no bucket is either).
/// Pure; the first rule broken is the answer.
pub fn check_window(snapshot: &Snapshot) -> Result<(), Implausible> {
    let window = &snapshot.window;
    if window.len() > BUCKETS {
        return Err(Implausible::TooManyBuckets(window.len()));
    }
    let written = snapshot.written_at_ms;
    let oldest = written.saturating_sub(WINDOW_MS);
    if let Some(b) = window
        .iter()
        .find(|b| b.start_ms < oldest || b.start_ms > written)
    {
        return Err(Implausible::OutsideWindow {
            start_ms: b.start_ms,
        });
    }
    let mut starts: Vec<u64> = window.iter().map(|b| b.start_ms).collect();
    starts.sort_unstable();
    if let Some(pair) = starts.windows(2).find(|p| p.first() == p.get(1)) {
        return Err(Implausible::Duplicate {
            start_ms: pair.first().copied().unwrap_or_default(),
        });
    }
    // At most BUCKETS u32s: the sums cannot overflow a u64.
    let req: u64 = window.iter().map(|b| u64::from(b.req)).sum();
    let resp: u64 = window.iter().map(|b| u64::from(b.resp)).sum();
    let totals = &snapshot.totals;
    if req > totals.msg_req {
        return Err(Implausible::Requests {
            window: req,
            total: totals.msg_req,
        });
    }
    let answered = totals.msg_ack.saturating_add(totals.msg_nak);
    if resp > answered {
        return Err(Implausible::Responses {
            window: resp,
            total: answered,
        });
    }
    Ok(())
}

/// Takes a snapshot of `stats` at wall-clock `now_wall_ms`, monotonic `now_ms`.
pub fn capture(stats: &mut Stats, now_wall_ms: u64, now_ms: u64) -> Snapshot {
    stats.commit_window(now_ms);
    let window = stats
        .window
        .live_buckets(now_ms)
        .into_iter()
        .map(|(age_ms, b)| WindowBucket {
            start_ms: now_wall_ms.saturating_sub(age_ms),
            req: b.req,
            resp: b.resp,
        })
        .collect();
    let matching = &stats.matching;
    let closed = Reason::NAMES
        .iter()
        .zip(matching.closed.iter())
        .filter(|(_, n)| **n > 0)
        .map(|(name, n)| ((*name).to_string(), *n))
        .collect();
    Snapshot {
        written_at_ms: now_wall_ms,
        totals: Totals::of(stats),
        window,
        closed,
        latency: LatencyTotals {
            ack: HistogramTotals::of(&matching.latency.ack),
            nak: HistogramTotals::of(&matching.latency.nak),
        },
    }
}

/// What happens to a snapshot's window on restore.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowFate {
    /// The buckets still inside the window come back.
    Restored,
    /// Written `WINDOW_MS` or more ago: nothing of it is left.
    TooOld,
    /// Written after "now": the clock stepped back, so ages are unknown.
    FromTheFuture,
}

/// The restore arithmetic's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub totals: Totals,
    /// `(ms since the bucket started, counts)`, each younger than `WINDOW_MS`.
    pub buckets: Vec<(u64, Bucket)>,
    pub window: WindowFate,
    /// How long ago the snapshot was written (0 if in the future).
    pub age_ms: u64,
}

/// What [`restore`] could not carry over of the close reasons and the
/// latency histograms (a file from another build), for its log line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Skipped {
    /// Close reasons this build does not know.
    pub reasons: Vec<String>,
    /// A histogram counted with other buckets was left out.
    pub histograms: bool,
}

/// Decides what of `snapshot` to restore at wall-clock `now_wall_ms`: the
/// totals always; the buckets younger than `WINDOW_MS` by wall-clock age,
/// unless the snapshot is too old or from the future.
pub fn plan(snapshot: &Snapshot, now_wall_ms: u64) -> Plan {
    let written = snapshot.written_at_ms;
    let (window, age_ms) = match now_wall_ms.checked_sub(written) {
        None => (WindowFate::FromTheFuture, 0),
        Some(age) if age >= WINDOW_MS => (WindowFate::TooOld, age),
        Some(age) => (WindowFate::Restored, age),
    };
    let buckets = if window == WindowFate::Restored {
        snapshot
            .window
            .iter()
            .filter(|b| b.start_ms <= written)
            .filter_map(|b| {
                let age = now_wall_ms.checked_sub(b.start_ms)?;
                (age < WINDOW_MS).then_some((
                    age,
                    Bucket {
                        req: b.req,
                        resp: b.resp,
                    },
                ))
            })
            .collect()
    } else {
        Vec::new()
    };
    Plan {
        totals: snapshot.totals,
        buckets,
        window,
        age_ms,
    }
}

/// Adds what `plan` keeps of `snapshot` to `stats`, and the close reasons
/// and latency histograms this build knows; returns the plan.
pub fn restore(snapshot: &Snapshot, stats: &mut Stats, now_wall_ms: u64, now_ms: u64) -> Plan {
    restore_counted(snapshot, stats, now_wall_ms, now_ms).0
}

/// [`restore`], also saying what of the reasons and histograms was left out.
pub fn restore_counted(
    snapshot: &Snapshot,
    stats: &mut Stats,
    now_wall_ms: u64,
    now_ms: u64,
) -> (Plan, Skipped) {
    let mut skipped = Skipped::default();
    let matching = &mut stats.matching;
    for (name, n) in &snapshot.closed {
        let slot = Reason::NAMES
            .iter()
            .position(|known| known == name)
            .and_then(|i| matching.closed.get_mut(i));
        match slot {
            Some(count) => *count = count.saturating_add(*n),
            None => skipped.reasons.push(name.clone()),
        }
    }
    let latency = &snapshot.latency;
    let ack = latency.ack.add_to(&mut matching.latency.ack);
    let nak = latency.nak.add_to(&mut matching.latency.nak);
    skipped.histograms = !(ack && nak);
    let plan = plan(snapshot, now_wall_ms);
    plan.totals.add_to(stats);
    for (age_ms, bucket) in &plan.buckets {
        stats.window.restore_bucket(now_ms, *age_ms, *bucket);
    }
    (plan, skipped)
}

#[cfg(test)]
pub(in crate::recovery) mod tests;

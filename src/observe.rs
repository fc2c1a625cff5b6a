//! The report's Foo-aware values that are not plain counters: the latency
//! quantiles, the histogram by answer type and the connections closed by
//! reason, as JSON values and as Prometheus text.
//!
//! Their entries (and the plain matching counters) are in the counter list
//! (`stats.rs`); names are fixed by the status-page contract and documented
//! in the README ("Answers, latency and why connections end").

use std::fmt::Write;

use serde::Serialize;
use serde::ser::SerializeMap;

use crate::latency::{BOUNDS_US, BUCKETS, Histogram, Latency, Quantiles};
use crate::pair::Reason;
use crate::seqs::CLOSE_REASONS;
use crate::stats::Report;

/// One histogram per answer type.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct ByType {
    pub ack: [u64; BUCKETS],
    pub nak: [u64; BUCKETS],
    /// Sums for Prometheus' `_sum` (µs, ack then nak); not in the JSON.
    #[serde(skip)]
    pub sums_us: [u64; 2],
}

impl ByType {
    pub fn of(latency: &Latency) -> ByType {
        ByType {
            ack: latency.ack.counts,
            nak: latency.nak.counts,
            sums_us: [latency.ack.sum_us, latency.nak.sum_us],
        }
    }
}

/// Queue waits by fixed bucket (the latency histogram's bounds).
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct Waits {
    pub counts: [u64; BUCKETS],
    /// Sum for Prometheus' `_sum` (µs); not in the JSON.
    #[serde(skip)]
    pub sum_us: u64,
}

impl Waits {
    pub fn of(h: &Histogram) -> Waits {
        Waits {
            counts: h.counts,
            sum_us: h.sum_us,
        }
    }
}

/// The fixed histogram bounds in ms, as the report lists them.
pub fn bounds_ms() -> Vec<f64> {
    BOUNDS_US.iter().map(|&us| us as f64 / 1000.0).collect()
}

/// Counts by termination reason, serialised as an object keyed by name.
#[derive(Debug, Clone, PartialEq)]
pub struct Closed(pub [u64; CLOSE_REASONS]);

impl Serialize for Closed {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(CLOSE_REASONS))?;
        for (name, n) in Reason::NAMES.iter().zip(self.0.iter()) {
            map.serialize_entry(name, n)?;
        }
        map.end()
    }
}

impl Serialize for Quantiles {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(6))?;
        map.serialize_entry("count", &self.count)?;
        map.serialize_entry("p50", &self.p50)?;
        map.serialize_entry("p90", &self.p90)?;
        map.serialize_entry("p99", &self.p99)?;
        map.serialize_entry("p999", &self.p999)?;
        map.serialize_entry("max", &self.max)?;
        map.end()
    }
}

/// The Prometheus text of what the counter list cannot say as plain
/// samples: the latency histogram by type and the connections closed by
/// reason (exposition format 0.0.4).
pub fn prometheus(r: &Report, out: &mut String) {
    let name = "foo_response_latency_seconds";
    let _ = write!(
        out,
        "# HELP {name} Time from a request's last byte read to its answer's last byte read.\n\
         # TYPE {name} histogram\n"
    );
    let h = &r.response_latency_histogram;
    for (kind, counts, sum_us) in [("ack", &h.ack, h.sums_us[0]), ("nak", &h.nak, h.sums_us[1])] {
        let mut cumulative = 0u64;
        for (i, &c) in counts.iter().enumerate() {
            cumulative = cumulative.saturating_add(c);
            let le = match BOUNDS_US.get(i) {
                Some(&us) => format!("{}", us as f64 / 1e6),
                None => "+Inf".to_string(),
            };
            let _ = writeln!(
                out,
                "{name}_bucket{{type=\"{kind}\",le=\"{le}\"}} {cumulative}"
            );
        }
        let sum = sum_us as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum{{type=\"{kind}\"}} {sum}");
        let _ = writeln!(out, "{name}_count{{type=\"{kind}\"}} {cumulative}");
    }
    let name = "foo_upstream_queue_wait_seconds";
    let _ = write!(
        out,
        "# HELP {name} How long clients waited for an upstream connection (--max-upstream-connections).\n\
         # TYPE {name} histogram\n"
    );
    let waits = &r.upstream_queue_wait_histogram;
    let mut cumulative = 0u64;
    for (i, &c) in waits.counts.iter().enumerate() {
        cumulative = cumulative.saturating_add(c);
        let le = match BOUNDS_US.get(i) {
            Some(&us) => format!("{}", us as f64 / 1e6),
            None => "+Inf".to_string(),
        };
        let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
    }
    let _ = writeln!(out, "{name}_sum {}", waits.sum_us as f64 / 1e6);
    let _ = writeln!(out, "{name}_count {cumulative}");
    let name = "foo_connections_closed_total";
    let _ = write!(
        out,
        "# HELP {name} Connections closed, by termination reason.\n# TYPE {name} counter\n"
    );
    for (reason, n) in Reason::NAMES.iter().zip(r.connections_closed.0.iter()) {
        let _ = writeln!(out, "{name}{{reason=\"{reason}\"}} {n}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Stats;

    #[test]
    fn the_json_has_the_contract_names_and_null_quantiles_when_empty() {
        let mut stats = Stats::default();
        stats.matching.closed[2] = 4;
        let json = serde_json::to_value(stats.report(1000)).unwrap();
        assert_eq!(json["connections_closed"]["server_closed"], 4);
        assert_eq!(
            json["connections_closed"].as_object().unwrap().len(),
            CLOSE_REASONS
        );
        assert_eq!(json["response_latency_ms"]["count"], 0);
        assert!(json["response_latency_ms"]["p50"].is_null());
        assert_eq!(json["response_latency_buckets_ms"][0], 0.1);
        assert_eq!(json["response_latency_buckets_ms"][15], 10000.0);
        let nak = &json["response_latency_histogram"]["nak"];
        assert_eq!(nak.as_array().unwrap().len(), 17);
        assert!(json["response_latency_histogram"].get("sums_us").is_none());
        for k in [
            "requests_in_flight",
            "requests_unanswered",
            "answers_unmatched",
            "requests_duplicate_seq",
            "requests_untracked",
        ] {
            assert_eq!(json[k], 0, "{k}");
        }
    }

    #[test]
    fn the_histogram_is_cumulative_in_seconds_with_sum_and_count() {
        let mut stats = Stats::default();
        stats.matching.latency.ack.record(20_000);
        stats.matching.latency.ack.record(20_000_000);
        let mut text = String::new();
        prometheus(&stats.report(1000), &mut text);
        let has = |line: &str| assert!(text.contains(line), "{line} in\n{text}");
        has("foo_response_latency_seconds_bucket{type=\"ack\",le=\"0.01\"} 0\n");
        has("foo_response_latency_seconds_bucket{type=\"ack\",le=\"0.025\"} 1\n");
        has("foo_response_latency_seconds_bucket{type=\"ack\",le=\"10\"} 1\n");
        has("foo_response_latency_seconds_bucket{type=\"ack\",le=\"+Inf\"} 2\n");
        has("foo_response_latency_seconds_sum{type=\"ack\"} 20.02\n");
        has("foo_response_latency_seconds_count{type=\"ack\"} 2\n");
        has("foo_connections_closed_total{reason=\"drained\"} 0\n");
    }
}

//! The report's Foo-aware values that are not plain counters: the latency
//! quantiles, the histogram by answer type and the connections closed by
//! reason, as JSON values (`admin::prometheus` renders them as text).
//!
//! Their entries (and the plain matching counters) are in the counter list
//! (`stats.rs`); names are fixed by the status-page contract and documented
//! in the README ("Answers, latency and why connections end").

use serde::Serialize;
use serde::ser::SerializeMap;

use crate::latency::{BOUNDS_US, BUCKETS, Histogram, Latency, Quantiles};
use crate::reason::{CLOSE_REASONS, Reason};

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
}

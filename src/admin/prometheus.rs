//! The Prometheus text exposition (format 0.0.4) of the report.

use std::fmt::Write as _;

use crate::latency::{BOUNDS_US, BUCKETS};
use crate::reason::Reason;
use crate::stats::{Kind, Report};

/// Text exposition format 0.0.4: HELP and TYPE once per metric, samples of a
/// metric together, counters (ending in `_total`) before gauges, no rates.
/// The metrics are the report's samples ([`Report::visit_samples`]).
pub fn prometheus(r: &Report, start_unix: f64) -> String {
    let mut samples = Vec::with_capacity(32);
    r.visit_samples(&mut |sample, value| samples.push((*sample, value)));
    let mut out = String::with_capacity(2048);
    for kind in [Kind::Counter, Kind::Gauge] {
        let mut done: Vec<&str> = Vec::new();
        for (first, _) in samples.iter().filter(|(s, _)| s.kind == kind) {
            if done.contains(&first.name) {
                continue;
            }
            done.push(first.name);
            let of_metric = || samples.iter().filter(|(s, _)| s.name == first.name);
            let help = of_metric().map(|(s, _)| s.help).find(|h| !h.is_empty());
            let name = first.name;
            let kind = match kind {
                Kind::Counter => "counter",
                Kind::Gauge => "gauge",
            };
            let _ = write!(
                out,
                "# HELP {name} {}\n# TYPE {name} {kind}\n",
                help.unwrap_or_default()
            );
            for (sample, value) in of_metric() {
                let _ = writeln!(out, "{name}{} {value}", sample.labels);
            }
        }
    }
    histograms(r, &mut out);
    let _ = write!(
        out,
        "# HELP process_start_time_seconds Start time of the process since unix epoch in seconds.\n\
         # TYPE process_start_time_seconds gauge\n\
         process_start_time_seconds {start_unix}\n\
         # HELP foo_build_info The build of foo-proxy running (version, git commit, cargo profile); always 1.\n\
         # TYPE foo_build_info gauge\n\
         foo_build_info{{version=\"{}\",commit=\"{}\",profile=\"{}\"}} 1\n",
        crate::build::VERSION,
        crate::build::COMMIT,
        crate::build::PROFILE,
    );
    out
}

/// The Prometheus text of what the counter list cannot say as plain
/// samples: the latency histogram by type, the upstream queue waits and
/// the connections closed by reason (exposition format 0.0.4).
fn histograms(r: &Report, out: &mut String) {
    let name = "foo_response_latency_seconds";
    let _ = write!(
        out,
        "# HELP {name} Time from a request's last byte read to its answer's last byte read.\n\
         # TYPE {name} histogram\n"
    );
    let h = &r.response_latency_histogram;
    histogram(out, name, "type=\"ack\"", &h.ack, h.sums_us[0]);
    histogram(out, name, "type=\"nak\"", &h.nak, h.sums_us[1]);
    let name = "foo_upstream_queue_wait_seconds";
    let _ = write!(
        out,
        "# HELP {name} How long clients waited for an upstream connection (--max-upstream-connections).\n\
         # TYPE {name} histogram\n"
    );
    let waits = &r.upstream_queue_wait_histogram;
    histogram(out, name, "", &waits.counts, waits.sum_us);
    let name = "foo_connections_closed_total";
    let _ = write!(
        out,
        "# HELP {name} Connections closed, by termination reason.\n# TYPE {name} counter\n"
    );
    for (reason, n) in Reason::NAMES.iter().zip(r.connections_closed.0.iter()) {
        let _ = writeln!(out, "{name}{{reason=\"{reason}\"}} {n}");
    }
}

/// One histogram's samples: its buckets made cumulative (bounds in
/// seconds, then `+Inf`), `_sum` in seconds and `_count`; `label` (such as
/// `type="ack"`, or empty) goes before `le` in every sample.
fn histogram(out: &mut String, name: &str, label: &str, counts: &[u64; BUCKETS], sum_us: u64) {
    let mut cumulative = 0u64;
    let (sep, braced) = if label.is_empty() {
        ("", String::new())
    } else {
        (",", format!("{{{label}}}"))
    };
    for (i, &c) in counts.iter().enumerate() {
        cumulative = cumulative.saturating_add(c);
        let le = match BOUNDS_US.get(i) {
            Some(&us) => format!("{}", us as f64 / 1e6),
            None => "+Inf".to_string(),
        };
        let _ = writeln!(out, "{name}_bucket{{{label}{sep}le=\"{le}\"}} {cumulative}");
    }
    let sum = sum_us as f64 / 1e6;
    let _ = writeln!(out, "{name}_sum{braced} {sum}");
    let _ = writeln!(out, "{name}_count{braced} {cumulative}");
}

#[cfg(test)]
pub(in crate::admin) mod tests {
    use super::*;
    use crate::stats::Stats;

    /// A report with a few counters set.
    pub(in crate::admin) fn sample() -> Report {
        let mut stats = Stats::default();
        stats.msg_req = 7;
        stats.msg_ack = 5;
        stats.msg_nak = 2;
        stats.connections_total = 3;
        stats.bytes_client_to_server = 100;
        stats.report(1000)
    }

    #[test]
    fn prometheus_names_each_metric_once() {
        let text = prometheus(&sample(), 12.5);
        for name in [
            "foo_messages_total",
            "foo_invalid_messages_total",
            "foo_connections_total",
            "foo_upstream_errors_total",
            "foo_connection_limit_hits_total",
            "foo_resource_errors_total",
            "foo_proxy_header_errors_total",
            "foo_client_limit_hits_total",
            "foo_upstream_connect_retries_total",
            "foo_partial_frames_total",
            "foo_bytes_total",
            "foo_connections_active",
            "foo_buffered_bytes",
            "process_start_time_seconds",
            "foo_build_info",
        ] {
            assert_eq!(
                text.matches(&format!("# TYPE {name} ")).count(),
                1,
                "{name}"
            );
            assert_eq!(
                text.matches(&format!("# HELP {name} ")).count(),
                1,
                "{name}"
            );
        }
        assert!(!text.contains("rate"));
        assert!(text.contains("process_start_time_seconds 12.5\n"));
        let build = format!(
            "foo_build_info{{version=\"{}\",commit=\"{}\",profile=\"{}\"}} 1\n",
            crate::build::VERSION,
            crate::build::COMMIT,
            crate::build::PROFILE
        );
        assert!(text.contains(&build), "{text}");
        assert!(text.contains("foo_bytes_total{direction=\"client_to_server\"} 100\n"));
    }

    #[test]
    fn the_histogram_is_cumulative_in_seconds_with_sum_and_count() {
        let mut stats = Stats::default();
        stats.matching.latency.ack.record(20_000);
        stats.matching.latency.ack.record(20_000_000);
        let mut text = String::new();
        histograms(&stats.report(1000), &mut text);
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

//! The Prometheus text exposition (format 0.0.4) of the report.

use std::fmt::Write as _;

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
    crate::observe::prometheus(r, &mut out);
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
}

//! The one counter list: `Stats` (counted in place), the JSON `Report`, the recovery `Totals` and the Prometheus samples.
//!
//! The event loop owns one [`Stats`] and updates it in place; the report is
//! built on demand (SIGUSR2, SIGUSR1, the admin socket).
//!
//! **Adding a counter** is one entry in the `counters!` list below: its JSON
//! name and place in the report, where it is counted, whether it survives a
//! restart, and its Prometheus metric.
//!
//! **What survives a restart** (`kept`, in the recovery file) is what crossed
//! the proxy: messages, invalid frames, connections, unserved clients and
//! bytes, the service's totals, which a restart or a `kill -9` must not lose.
//! What starts at 0 in every process (`reset`, `filled`) describes this
//! process's own run: gauges (connections open now, bytes buffered now),
//! how it coped with its environment (connect retries, connection limit
//! hits, descriptor or memory shortages, log lines and reports it dropped)
//! and the partial-frame tails of connections it closed. Prometheus sees such
//! a reset through `process_start_time_seconds`, as for any restarted
//! process.

#[macro_use]
mod define;

use std::collections::VecDeque;

use crate::latency::{Latency, Quantiles, now_us};
use crate::observe::{ByType, Closed, Waits, bounds_ms};
use crate::rates::{RateSnapshot, RateWindow};
use crate::reason::CLOSE_REASONS;
use crate::scanner::FrameCounts;
use serde::{Deserialize, Serialize};

/// A Prometheus metric's type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
}

/// One Prometheus sample of the report: `name{labels} value`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sample {
    pub kind: Kind,
    /// The metric name, `foo_..._total` for counters.
    pub name: &'static str,
    /// `{key="value"}`, or empty.
    pub labels: &'static str,
    /// The HELP text; empty on a metric's later samples.
    pub help: &'static str,
}

counters! {
    msg_total: u64 = derived(|s, _, _| s.msg_total()) [];
    /// Well-formed frames: REQ from clients, ACK/NAK from the server.
    msg_req: u64 = kept(msg_req) [counter "foo_messages_total" "{type=\"req\"}"
        "Well-formed Foo messages relayed: REQ from clients, ACK and NAK from the server."];
    msg_ack: u64 = kept(msg_ack) [counter "foo_messages_total" "{type=\"ack\"}"];
    msg_nak: u64 = kept(msg_nak) [counter "foo_messages_total" "{type=\"nak\"}"];
    request_rate_1s: f64 = derived(|_, r, _| r.request_rate_1s) [];
    request_rate_10s: f64 = derived(|_, r, _| r.request_rate_10s) [];
    response_rate_1s: f64 = derived(|_, r, _| r.response_rate_1s) [];
    response_rate_10s: f64 = derived(|_, r, _| r.response_rate_10s) [];
    msg_invalid: u64 = derived(|s, _, _| s.msg_invalid()) [];
    /// Malformed or wrong-direction frames, by direction.
    msg_invalid_client_to_server: u64 = kept(invalid_client_to_server)
        [counter "foo_invalid_messages_total" "{direction=\"client_to_server\"}"
        "Malformed or wrong-direction frames, relayed unchanged."];
    msg_invalid_server_to_client: u64 = kept(invalid_server_to_client)
        [counter "foo_invalid_messages_total" "{direction=\"server_to_client\"}"];
    /// Client connections open now.
    connections_active: u64 = reset(connections_active)
        [gauge "foo_connections_active" "" "Client connections open now."];
    /// Client connections accepted.
    connections_total: u64 = kept(connections_total)
        [counter "foo_connections_total" "" "Client connections accepted."];
    /// Clients that could not be served: no forward address took the connect.
    upstream_errors: u64 = kept(upstream_errors) [counter "foo_upstream_errors_total" ""
        "Clients that could not be served: no forward address took the connect."];
    /// Moves to the next forward address after one failed or timed out
    /// (the client may still be served).
    upstream_connect_retries: u64 = reset(upstream_connect_retries)
        [counter "foo_upstream_connect_retries_total" ""
        "Moves to the next forward address after one failed or timed out."];
    /// Times accepting stopped at `--max-connections`.
    connection_limit_hits: u64 = reset(connection_limit_hits)
        [counter "foo_connection_limit_hits_total" ""
        "Times accepting paused at --max-connections."];
    /// Accepts or connects that failed for want of descriptors or memory.
    resource_errors: u64 = reset(resource_errors) [counter "foo_resource_errors_total" ""
        "Accepts or connects that failed for want of descriptors or memory."];
    /// `--accept-proxy`: connections closed without a valid PROXY protocol
    /// header (none, malformed, too long, or not in time).
    proxy_header_errors: u64 = reset(proxy_header_errors)
        [counter "foo_proxy_header_errors_total" ""
        "Connections closed without a valid PROXY protocol header (--accept-proxy)."];
    /// `--max-connections-per-client`: connections closed because their
    /// client address had that many open.
    client_limit_hits: u64 = reset(client_limit_hits)
        [counter "foo_client_limit_hits_total" ""
        "Connections closed at --max-connections-per-client."];
    /// Connections that ended with bytes after the last newline, by
    /// direction: a tail that forms no frame (counted at the connection's end).
    partial_frames_client_to_server: u64 = reset(partial_frames_client_to_server)
        [counter "foo_partial_frames_total" "{direction=\"client_to_server\"}"
        "Connections that ended with bytes after the last newline (a tail that forms no frame)."];
    partial_frames_server_to_client: u64 = reset(partial_frames_server_to_client)
        [counter "foo_partial_frames_total" "{direction=\"server_to_client\"}"];
    /// Log lines dropped because stderr was not read fast enough.
    log_lines_dropped: u64 = filled() [counter "foo_log_lines_dropped_total" ""
        "Log lines dropped because stderr was not read fast enough."];
    /// SIGUSR2/SIGUSR1 reports dropped because stdout was not read.
    reports_dropped: u64 = filled() [counter "foo_reports_dropped_total" ""
        "SIGUSR2 reports dropped because stdout was not read."];
    /// Bytes read from each side, by direction (counted as read, like the
    /// frames: a byte the other side never took still counts).
    bytes_client_to_server: u64 = kept(bytes_client_to_server)
        [counter "foo_bytes_total" "{direction=\"client_to_server\"}" "Bytes read from each side to relay."];
    bytes_server_to_client: u64 = kept(bytes_server_to_client)
        [counter "foo_bytes_total" "{direction=\"server_to_client\"}"];
    /// Bytes read but not yet written, over all connections.
    buffered_bytes: u64 = filled() [gauge "foo_buffered_bytes" ""
        "Bytes read but not yet written, over all connections."];
    /// Seconds since start.
    uptime_secs: f64 = derived(|_, _, now_ms| now_ms as f64 / 1000.0) [];
    // Request/answer matching (issue 12; names fixed by CONTRACT-12).
    /// Requests outstanding over all connections: summed over the pairs at
    /// report time (like `buffered_bytes`), not kept up to date per message.
    requests_in_flight: u64 = filled() [gauge "foo_requests_in_flight" ""
        "Requests read from clients and not yet answered."];
    requests_unanswered: u64 = kept(requests_unanswered)
        [counter "foo_requests_unanswered_total" ""
        "Requests still outstanding when their connection ended."];
    answers_unmatched: u64 = kept(answers_unmatched) [counter "foo_answers_unmatched_total" ""
        "Answers whose seq was not outstanding on their connection."];
    requests_duplicate_seq: u64 = kept(requests_duplicate_seq)
        [counter "foo_requests_duplicate_seq_total" ""
        "Requests whose seq was already outstanding on their connection."];
    requests_untracked: u64 = kept(requests_untracked) [counter "foo_requests_untracked_total" ""
        "Requests past the per-connection cap of outstanding requests: relayed, not timed."];
    /// Answers matched in the last 10 s: count, quantiles and max in ms.
    response_latency_ms: Quantiles =
        derived(|s, _, _| s.matching.latency.recent.quantiles(now_us())) [];
    /// The fixed histogram bounds, in ms.
    response_latency_buckets_ms: Vec<f64> = derived(|_, _, _| bounds_ms()) [];
    /// Matched answers by fixed bucket, by type, since start (not cumulative);
    /// rendered for Prometheus by `admin::prometheus`.
    response_latency_histogram: ByType = derived(|s, _, _| ByType::of(&s.matching.latency)) [];
    /// Connections closed, by termination reason; rendered for Prometheus by
    /// `admin::prometheus`.
    connections_closed: Closed = derived(|s, _, _| Closed(s.matching.closed)) [];
    // Upstream pooling (issue 19): all 0 without the pooling flags.
    /// Upstream connections open now: held by clients or pooled.
    upstream_connections: u64 = reset(upstream_connections)
        [gauge "foo_upstream_connections" ""
        "Upstream connections open now, held by clients or pooled (pooling flags only)."];
    /// Upstream connections opened (clients' connects and spares).
    upstream_connections_opened: u64 = reset(upstream_connections_opened)
        [counter "foo_upstream_connections_opened_total" ""
        "Upstream connections opened, spares included (pooling flags only)."];
    /// `--upstream-pool`: idle connections kept at most.
    upstream_pool_size: u64 = reset(upstream_pool_size) [gauge "foo_upstream_pool_size" ""
        "Idle upstream connections kept at most (--upstream-pool)."];
    /// Upstream connections clients hold now.
    upstream_pool_in_use: u64 = reset(upstream_pool_in_use) [gauge "foo_upstream_pool_in_use" ""
        "Upstream connections clients hold now."];
    /// Pooled upstream connections idle now, ready for a client.
    upstream_pool_idle: u64 = reset(upstream_pool_idle) [gauge "foo_upstream_pool_idle" ""
        "Pooled upstream connections idle now, ready for a client."];
    /// Pooled connections opened ahead of demand that no client used yet
    /// (connecting or idle).
    upstream_pool_spare: u64 = reset(upstream_pool_spare) [gauge "foo_upstream_pool_spare" ""
        "Spare upstream connections no client used yet (--upstream-spare)."];
    /// Clients served on a pooled connection.
    upstream_pool_reused: u64 = reset(upstream_pool_reused)
        [counter "foo_upstream_pool_reused_total" ""
        "Clients served on a pooled upstream connection."];
    /// Upstream connections closed instead of pooled, or dropped from the
    /// pool, by reason.
    upstream_pool_discarded_server_closed: u64 = reset(upstream_pool_discarded_server_closed)
        [counter "foo_upstream_pool_discarded_total" "{reason=\"server_closed\"}"
        "Upstream connections dropped from the pool or not given back to it, by reason."];
    upstream_pool_discarded_unsolicited_bytes: u64 =
        reset(upstream_pool_discarded_unsolicited_bytes)
        [counter "foo_upstream_pool_discarded_total" "{reason=\"unsolicited_bytes\"}"];
    upstream_pool_discarded_idle_timeout: u64 = reset(upstream_pool_discarded_idle_timeout)
        [counter "foo_upstream_pool_discarded_total" "{reason=\"idle_timeout\"}"];
    upstream_pool_discarded_pool_full: u64 = reset(upstream_pool_discarded_pool_full)
        [counter "foo_upstream_pool_discarded_total" "{reason=\"pool_full\"}"];
    upstream_pool_discarded_unclean_end: u64 = reset(upstream_pool_discarded_unclean_end)
        [counter "foo_upstream_pool_discarded_total" "{reason=\"unclean_end\"}"];
    upstream_pool_discarded_drained: u64 = reset(upstream_pool_discarded_drained)
        [counter "foo_upstream_pool_discarded_total" "{reason=\"drained\"}"];
    upstream_pool_discarded_connect_failed: u64 = reset(upstream_pool_discarded_connect_failed)
        [counter "foo_upstream_pool_discarded_total" "{reason=\"connect_failed\"}"];
    upstream_pool_discarded_poll_failed: u64 = reset(upstream_pool_discarded_poll_failed)
        [counter "foo_upstream_pool_discarded_total" "{reason=\"poll_failed\"}"];
    /// Bytes that came on idle pooled connections (each such connection
    /// is dropped).
    upstream_pool_unsolicited_bytes: u64 = reset(upstream_pool_unsolicited_bytes)
        [counter "foo_upstream_pool_unsolicited_bytes_total" ""
        "Bytes that came on idle pooled upstream connections (each is dropped)."];
    /// Clients waiting for an upstream connection now.
    upstream_queue_clients: u64 = reset(upstream_queue_clients)
        [gauge "foo_upstream_queue_clients" ""
        "Clients waiting for an upstream connection now (--max-upstream-connections)."];
    /// Clients closed after `--queue-timeout` without an upstream connection.
    upstream_queue_timeouts: u64 = reset(upstream_queue_timeouts)
        [counter "foo_upstream_queue_timeouts_total" ""
        "Clients closed after --queue-timeout without an upstream connection."];
    /// Waits of the clients that got an upstream connection after
    /// queueing, by the latency histogram's fixed buckets (not cumulative);
    /// rendered for Prometheus by `admin::prometheus`.
    upstream_queue_wait_histogram: Waits = derived(|s, _, _| Waits::of(&s.upstream_queue_wait)) [];
}

/// What matching keeps proxy-wide besides the plain counters (those are
/// `Stats` fields, in the counter list): the latencies, the connections
/// closed by reason, and emptied sets for reuse.
#[derive(Default)]
pub struct Matching {
    pub latency: Latency,
    /// Connections closed, by `crate::reason::Reason::index`.
    pub closed: [u64; CLOSE_REASONS],
    /// Emptied sets for reuse (see `crate::seqs`'s `SPARE_SETS`).
    pub(crate) spare: Vec<VecDeque<(u64, u64)>>,
}

impl Stats {
    /// Adds frames scanned from one read of client bytes. Every counter
    /// saturates: a total restored near `u64::MAX` must not wrap or panic.
    pub fn add_client_frames(&mut self, delta: &FrameCounts) {
        add(&mut self.msg_req, delta.req);
        add(&mut self.pending_req, delta.req);
        let invalid = delta
            .invalid
            .saturating_add(delta.ack)
            .saturating_add(delta.nak);
        add(&mut self.invalid_client_to_server, invalid);
    }

    /// Adds frames scanned from one read of server bytes.
    pub fn add_server_frames(&mut self, delta: &FrameCounts) {
        add(&mut self.msg_ack, delta.ack);
        add(&mut self.msg_nak, delta.nak);
        add(&mut self.pending_resp, delta.ack.saturating_add(delta.nak));
        add(
            &mut self.invalid_server_to_client,
            delta.invalid.saturating_add(delta.req),
        );
    }

    /// Moves the messages counted since the last call into the rate window.
    /// Called once per loop iteration with that iteration's clock reading.
    pub fn commit_window(&mut self, now_ms: u64) {
        self.window
            .record(now_ms, self.pending_req, self.pending_resp);
        self.pending_req = 0;
        self.pending_resp = 0;
    }

    /// Saturating: the totals may come from a recovery file.
    pub fn msg_total(&self) -> u64 {
        self.msg_req
            .saturating_add(self.msg_ack)
            .saturating_add(self.msg_nak)
    }

    /// Saturating, as `msg_total`.
    pub fn msg_invalid(&self) -> u64 {
        self.invalid_client_to_server
            .saturating_add(self.invalid_server_to_client)
    }
}

/// `counter += n`, stopping at `u64::MAX`.
pub fn add(counter: &mut u64, n: u64) {
    *counter = counter.saturating_add(n);
}

impl Report {
    /// One line of JSON, without the newline.
    pub fn to_json(&self) -> String {
        // Serializing plain numbers cannot fail; fall back to an empty object
        // rather than panic if it ever did.
        serde_json::to_string(self).unwrap_or_else(|_| String::from("{}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_of_totals_saturate_instead_of_overflowing() {
        let stats = Stats {
            msg_req: u64::MAX,
            msg_ack: 2,
            msg_nak: 3,
            invalid_client_to_server: u64::MAX - 1,
            invalid_server_to_client: 5,
            ..Stats::default()
        };
        assert_eq!(stats.msg_total(), u64::MAX);
        assert_eq!(stats.msg_invalid(), u64::MAX);
    }

    #[test]
    fn counters_near_the_top_saturate_instead_of_wrapping_or_panicking() {
        let mut stats = Stats {
            msg_req: u64::MAX - 1,
            msg_ack: u64::MAX - 1,
            msg_nak: u64::MAX,
            invalid_client_to_server: u64::MAX,
            invalid_server_to_client: u64::MAX - 2,
            ..Stats::default()
        };
        let frames = FrameCounts {
            req: 5,
            ack: 5,
            nak: 5,
            invalid: 5,
        };
        stats.add_client_frames(&frames);
        stats.add_server_frames(&frames);
        let r = stats.report(10);
        assert_eq!(r.msg_req, u64::MAX);
        assert_eq!(r.msg_ack, u64::MAX);
        assert_eq!(r.msg_nak, u64::MAX);
        assert_eq!(r.msg_total, u64::MAX);
        assert_eq!(r.msg_invalid_client_to_server, u64::MAX);
        assert_eq!(r.msg_invalid_server_to_client, u64::MAX);
        assert_eq!(r.msg_invalid, u64::MAX);
    }

    #[test]
    fn only_the_kept_counters_survive_a_restart() {
        let before = Stats {
            msg_req: 1,
            msg_ack: 2,
            msg_nak: 3,
            invalid_client_to_server: 4,
            invalid_server_to_client: 5,
            connections_total: 6,
            upstream_errors: 7,
            bytes_client_to_server: 8,
            bytes_server_to_client: 9,
            connections_active: 10,
            upstream_connect_retries: 11,
            connection_limit_hits: 12,
            resource_errors: 13,
            partial_frames_client_to_server: 14,
            partial_frames_server_to_client: 15,
            ..Stats::default()
        };
        let mut after = Stats::default();
        Totals::of(&before).add_to(&mut after);
        let r = after.report(0);
        let kept = [
            r.msg_req,
            r.msg_ack,
            r.msg_nak,
            r.msg_invalid_client_to_server,
            r.msg_invalid_server_to_client,
            r.connections_total,
            r.upstream_errors,
            r.bytes_client_to_server,
            r.bytes_server_to_client,
        ];
        assert_eq!(kept, [1, 2, 3, 4, 5, 6, 7, 8, 9]);
        let reset = [
            r.connections_active,
            r.upstream_connect_retries,
            r.connection_limit_hits,
            r.resource_errors,
            r.partial_frames_client_to_server,
            r.partial_frames_server_to_client,
        ];
        assert_eq!(reset, [0; 6]);
    }

    #[test]
    fn every_u64_field_but_the_sums_is_a_metric_sample() {
        let mut stats = Stats::default();
        let report = stats.report(0);
        let mut names = Vec::new();
        report.visit_samples(&mut |s, _| names.push((s.name, s.labels)));
        let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
        let u64_fields = json
            .as_object()
            .unwrap()
            .iter()
            .filter(|(_, v)| v.is_u64())
            .count();
        // msg_total and msg_invalid are sums of samples, not samples.
        assert_eq!(names.len(), u64_fields - 2);
        let mut unique = names.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), names.len(), "{names:?}");
    }

    #[test]
    fn report_lists_the_eight_fields_first_in_order() {
        let mut stats = Stats::default();
        stats.add_client_frames(&FrameCounts {
            req: 3,
            ack: 1,
            nak: 0,
            invalid: 2,
        });
        stats.add_server_frames(&FrameCounts {
            req: 1,
            ack: 2,
            nak: 1,
            invalid: 0,
        });
        let json = stats.report(500).to_json();
        let keys: Vec<&str> = json
            .trim_matches(|c| c == '{' || c == '}')
            .split(',')
            .filter_map(|kv| kv.split(':').next())
            .map(|k| k.trim_matches('"'))
            .collect();
        assert_eq!(
            keys.get(..8),
            Some(
                &[
                    "msg_total",
                    "msg_req",
                    "msg_ack",
                    "msg_nak",
                    "request_rate_1s",
                    "request_rate_10s",
                    "response_rate_1s",
                    "response_rate_10s"
                ][..]
            )
        );
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["msg_total"], 6);
        assert_eq!(v["msg_req"], 3);
        assert_eq!(v["msg_ack"], 2);
        assert_eq!(v["msg_nak"], 1);
        assert_eq!(v["msg_invalid"], 4);
        assert_eq!(v["request_rate_1s"], 3.0);
        assert_eq!(v["response_rate_10s"], 0.3);
        assert!(!json.contains('\n'));
    }
}

//! Counters and the JSON report.
//!
//! The event loop owns one [`Stats`] and updates it in place; the report is
//! built on demand (SIGUSR2, SIGUSR1, the admin socket).

use crate::rates::{RateSnapshot, RateWindow};
use crate::scanner::FrameCounts;
use serde::Serialize;

/// Every counter the proxy keeps.
#[derive(Default)]
pub struct Stats {
    /// Well-formed frames: REQ from clients, ACK/NAK from the server.
    pub msg_req: u64,
    pub msg_ack: u64,
    pub msg_nak: u64,
    /// Malformed or wrong-direction frames, by direction.
    pub invalid_client_to_server: u64,
    pub invalid_server_to_client: u64,
    pub connections_active: u64,
    pub connections_total: u64,
    /// Clients that could not be served: no forward address took the connect.
    pub upstream_errors: u64,
    /// Moves to the next forward address after one failed or timed out
    /// (the client may still be served).
    pub upstream_connect_retries: u64,
    /// Connections that ended with bytes after the last newline, by
    /// direction: a tail that forms no frame (counted at the connection's end).
    pub partial_frames_client_to_server: u64,
    pub partial_frames_server_to_client: u64,
    /// Times accepting stopped at `--max-connections`.
    pub connection_limit_hits: u64,
    /// Accepts or connects that failed for want of descriptors or memory.
    pub resource_errors: u64,
    pub bytes_client_to_server: u64,
    pub bytes_server_to_client: u64,
    pub window: RateWindow,
    /// Messages counted since the last time they went into the window.
    pending_req: u64,
    pending_resp: u64,
}

/// The report, in FOO.md's field order followed by the extras.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct Report {
    pub msg_total: u64,
    pub msg_req: u64,
    pub msg_ack: u64,
    pub msg_nak: u64,
    pub request_rate_1s: f64,
    pub request_rate_10s: f64,
    pub response_rate_1s: f64,
    pub response_rate_10s: f64,
    pub msg_invalid: u64,
    pub msg_invalid_client_to_server: u64,
    pub msg_invalid_server_to_client: u64,
    pub connections_active: u64,
    pub connections_total: u64,
    pub upstream_errors: u64,
    pub upstream_connect_retries: u64,
    pub connection_limit_hits: u64,
    pub resource_errors: u64,
    pub partial_frames_client_to_server: u64,
    pub partial_frames_server_to_client: u64,
    /// Log lines dropped because stderr was not read fast enough.
    pub log_lines_dropped: u64,
    /// SIGUSR2/SIGUSR1 reports dropped because stdout was not read.
    pub reports_dropped: u64,
    pub bytes_client_to_server: u64,
    pub bytes_server_to_client: u64,
    pub buffered_bytes: u64,
    pub uptime_secs: f64,
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

    pub fn report(&mut self, now_ms: u64) -> Report {
        self.commit_window(now_ms);
        let RateSnapshot {
            request_rate_1s,
            request_rate_10s,
            response_rate_1s,
            response_rate_10s,
        } = self.window.rates(now_ms);
        Report {
            msg_total: self.msg_total(),
            msg_req: self.msg_req,
            msg_ack: self.msg_ack,
            msg_nak: self.msg_nak,
            request_rate_1s,
            request_rate_10s,
            response_rate_1s,
            response_rate_10s,
            msg_invalid: self.msg_invalid(),
            msg_invalid_client_to_server: self.invalid_client_to_server,
            msg_invalid_server_to_client: self.invalid_server_to_client,
            connections_active: self.connections_active,
            connections_total: self.connections_total,
            upstream_errors: self.upstream_errors,
            upstream_connect_retries: self.upstream_connect_retries,
            connection_limit_hits: self.connection_limit_hits,
            resource_errors: self.resource_errors,
            partial_frames_client_to_server: self.partial_frames_client_to_server,
            partial_frames_server_to_client: self.partial_frames_server_to_client,
            // Kept by the output writers, not by the counters: the loop
            // fills them in.
            log_lines_dropped: 0,
            reports_dropped: 0,
            bytes_client_to_server: self.bytes_client_to_server,
            bytes_server_to_client: self.bytes_server_to_client,
            // Held by the pairs, not by the counters: the loop fills it in.
            buffered_bytes: 0,
            uptime_secs: now_ms as f64 / 1000.0,
        }
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

//! The connection log (`--log-connections`): one line per closed connection,
//! logfmt (`key=value`) or JSON, with what the proxy saw of it.
//!
//! Only kept when the log is on: a pair then holds one [`ConnRecord`] box,
//! updated once per read (not per frame). Lines go through the bounded,
//! non-blocking stderr queue ([`crate::output::log_line`]): when stderr is
//! not read they are dropped and counted in `log_lines_dropped`.

use std::fmt::Write;
use std::net::SocketAddr;
use std::time::{Instant, SystemTime};

use crate::dates;
pub use crate::logging::LogFormat;
use crate::net;
use crate::reason::Reason;
use crate::scanner::{Direction, FrameCounts};

/// What the log says of one connection, gathered over its life.
#[derive(Debug)]
pub struct ConnRecord {
    /// The client's address: the PROXY header's source under
    /// `--accept-proxy` (none until a header was read; the socket's peer
    /// for a `LOCAL` one), else the socket's peer.
    pub client: Option<SocketAddr>,
    /// The socket's peer: the client itself, or the balancer under
    /// `--accept-proxy`.
    pub peer: SocketAddr,
    /// The upstream's address once connected.
    pub upstream: Option<SocketAddr>,
    pub started: Instant,
    pub client_frames: FrameCounts,
    pub server_frames: FrameCounts,
    pub bytes_client_to_server: u64,
    pub bytes_server_to_client: u64,
}

impl ConnRecord {
    /// A record for a connection from `peer`; `proxied`: its client's
    /// address comes later, from the PROXY header.
    pub fn new(peer: SocketAddr, proxied: bool, started: Instant) -> ConnRecord {
        ConnRecord {
            client: if proxied { None } else { Some(peer) },
            peer,
            upstream: None,
            started,
            client_frames: FrameCounts::default(),
            server_frames: FrameCounts::default(),
            bytes_client_to_server: 0,
            bytes_server_to_client: 0,
        }
    }

    /// One read's frames and bytes.
    pub fn add(&mut self, direction: Direction, frames: &FrameCounts, bytes: u64) {
        let (counts, total) = match direction {
            Direction::ClientToServer => {
                (&mut self.client_frames, &mut self.bytes_client_to_server)
            }
            Direction::ServerToClient => {
                (&mut self.server_frames, &mut self.bytes_server_to_client)
            }
        };
        counts.req = counts.req.saturating_add(frames.req);
        counts.ack = counts.ack.saturating_add(frames.ack);
        counts.nak = counts.nak.saturating_add(frames.nak);
        counts.invalid = counts.invalid.saturating_add(frames.invalid);
        *total = total.saturating_add(bytes);
    }
}

/// What closing adds to the record.
pub struct Ended {
    pub id: u64,
    pub reason: Reason,
    pub unanswered: u32,
    /// The slowest matched answer, µs; none when nothing was answered.
    pub slowest_us: Option<u32>,
    pub now: Instant,
    pub wall: SystemTime,
}

/// The line for a closed connection, newline included. Fields, in order:
/// `ts`, `msg=connection`, `id`, `client` (the PROXY header's source
/// under `--accept-proxy`, `-` when no header was read), `peer` (the
/// socket's peer: the balancer under `--accept-proxy`), `upstream` (`-`
/// when never connected), `duration_ms`, `bytes_client_to_server`,
/// `bytes_server_to_client`, `req`, `ack`, `nak`, `invalid` (malformed or
/// wrong-way frames, both directions), `unanswered`, `slowest_ms` (`-`
/// when none), `reason`.
pub fn line(rec: &ConnRecord, end: &Ended, format: LogFormat) -> String {
    let ms = |us: u128| us as f64 / 1000.0;
    let duration_ms = ms(end.now.saturating_duration_since(rec.started).as_micros());
    let upstream = rec.upstream.map(|a| a.to_string());
    let client = rec.client.map(|a| net::plain(a).to_string());
    let peer = net::plain(rec.peer);
    let slowest = end.slowest_us.map(|us| ms(u128::from(us)));
    let invalid = rec
        .client_frames
        .invalid
        .saturating_add(rec.client_frames.ack)
        .saturating_add(rec.client_frames.nak)
        .saturating_add(rec.server_frames.invalid)
        .saturating_add(rec.server_frames.req);
    let ts = dates::rfc3339_ms(end.wall);
    let mut out = String::with_capacity(320);
    match format {
        LogFormat::Text => {
            let _ = writeln!(
                out,
                "ts={ts} msg=connection id={} client={} peer={} upstream={} duration_ms={duration_ms:.3} \
                 bytes_client_to_server={} bytes_server_to_client={} req={} ack={} nak={} \
                 invalid={invalid} unanswered={} slowest_ms={} reason={}",
                end.id,
                client.as_deref().unwrap_or("-"),
                peer,
                upstream.as_deref().unwrap_or("-"),
                rec.bytes_client_to_server,
                rec.bytes_server_to_client,
                rec.client_frames.req,
                rec.server_frames.ack,
                rec.server_frames.nak,
                end.unanswered,
                slowest.map_or_else(|| "-".to_string(), |v| format!("{v:.3}")),
                end.reason.name(),
            );
        }
        LogFormat::Json => {
            let value = serde_json::json!({
                "ts": ts,
                "msg": "connection",
                "id": end.id,
                "client": client,
                "peer": peer.to_string(),
                "upstream": upstream,
                "duration_ms": duration_ms,
                "bytes_client_to_server": rec.bytes_client_to_server,
                "bytes_server_to_client": rec.bytes_server_to_client,
                "req": rec.client_frames.req,
                "ack": rec.server_frames.ack,
                "nak": rec.server_frames.nak,
                "invalid": invalid,
                "unanswered": end.unanswered,
                "slowest_ms": slowest,
                "reason": end.reason.name(),
            });
            let _ = writeln!(out, "{value}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn sample() -> (ConnRecord, Ended) {
        let t0 = Instant::now();
        let mut rec = ConnRecord::new("127.0.0.1:5000".parse().unwrap(), false, t0);
        rec.upstream = Some("127.0.0.1:8001".parse().unwrap());
        let frames = FrameCounts {
            req: 3,
            ack: 0,
            nak: 0,
            invalid: 1,
        };
        rec.add(Direction::ClientToServer, &frames, 40);
        let answers = FrameCounts {
            req: 0,
            ack: 2,
            nak: 0,
            invalid: 0,
        };
        rec.add(Direction::ServerToClient, &answers, 30);
        let end = Ended {
            id: 7,
            reason: Reason::Answered,
            unanswered: 1,
            slowest_us: Some(20_500),
            now: t0 + Duration::from_millis(1500),
            wall: SystemTime::UNIX_EPOCH,
        };
        (rec, end)
    }

    #[test]
    fn a_logfmt_line_has_every_field_in_order() {
        let (rec, end) = sample();
        assert_eq!(
            line(&rec, &end, LogFormat::Text),
            "ts=1970-01-01T00:00:00.000Z msg=connection id=7 client=127.0.0.1:5000 \
             peer=127.0.0.1:5000 upstream=127.0.0.1:8001 duration_ms=1500.000 bytes_client_to_server=40 \
             bytes_server_to_client=30 req=3 ack=2 nak=0 invalid=1 unanswered=1 \
             slowest_ms=20.500 reason=client_closed\n"
        );
    }

    #[test]
    fn a_json_line_parses_and_says_null_for_what_never_happened() {
        let (mut rec, mut end) = sample();
        rec.upstream = None;
        end.slowest_us = None;
        end.reason = Reason::Refused;
        let text = line(&rec, &end, LogFormat::Json);
        assert!(text.ends_with('\n') && !text.trim_end().contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["reason"], "upstream_refused");
        assert_eq!(v["upstream"], serde_json::Value::Null);
        assert_eq!(v["slowest_ms"], serde_json::Value::Null);
        assert_eq!(v["req"], 3);
        assert_eq!(v["duration_ms"], 1500.0);
    }

    #[test]
    fn an_ipv4_client_of_a_dual_stack_listener_is_logged_as_plain_ipv4() {
        let mapped: SocketAddr = "[::ffff:127.0.0.1]:5000".parse().unwrap();
        let rec = ConnRecord::new(mapped, false, Instant::now());
        let end = sample().1;
        let text = line(&rec, &end, LogFormat::Text);
        assert!(
            text.contains(" client=127.0.0.1:5000 peer=127.0.0.1:5000 "),
            "{text}"
        );
        let v: serde_json::Value =
            serde_json::from_str(&line(&rec, &end, LogFormat::Json)).unwrap();
        assert_eq!(v["client"], "127.0.0.1:5000");
        assert_eq!(v["peer"], "127.0.0.1:5000");
    }

    #[test]
    fn behind_a_balancer_the_client_is_the_header_source_and_the_peer_the_balancer() {
        let t0 = Instant::now();
        let balancer: SocketAddr = "127.0.0.1:6000".parse().unwrap();
        let mut rec = ConnRecord::new(balancer, true, t0);
        let end = sample().1;
        let text = line(&rec, &end, LogFormat::Text);
        assert!(text.contains(" client=- peer=127.0.0.1:6000 "), "{text}");
        rec.client = Some("192.0.2.7:4321".parse().unwrap());
        let text = line(&rec, &end, LogFormat::Text);
        assert!(
            text.contains(" client=192.0.2.7:4321 peer=127.0.0.1:6000 "),
            "{text}"
        );
        let v: serde_json::Value =
            serde_json::from_str(&line(&rec, &end, LogFormat::Json)).unwrap();
        assert_eq!(v["client"], "192.0.2.7:4321");
        assert_eq!(v["peer"], "127.0.0.1:6000");
    }
}

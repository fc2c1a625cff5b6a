//! Foo-aware observability: answer latency by seq, requests in flight,
//! unanswered, unmatched, duplicate and untracked, why each connection
//! ended, and the connection log, each forced through the real binary.

mod util;

use std::io::Write;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::Command;
use std::sync::mpsc::{self, Receiver};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use util::*;

/// A loopback upstream the test drives by hand: each accepted connection
/// comes out of the receiver (blocking, with a read timeout).
fn hand_upstream() -> (String, Receiver<TcpStream>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            stream.set_read_timeout(Some(WAIT)).unwrap();
            if tx.send(stream).is_err() {
                return;
            }
        }
    });
    (addr, rx)
}

fn accepted(rx: &Receiver<TcpStream>) -> TcpStream {
    rx.recv_timeout(WAIT).expect("the proxy connects upstream")
}

/// Sends `bytes` from the client and waits until the upstream has them all.
fn relay_up(client: &mut TcpStream, upstream: &mut TcpStream, bytes: &[u8]) {
    client.write_all(bytes).unwrap();
    let got = read_exact_timeout(upstream, bytes.len());
    assert_eq!(got, bytes, "the upstream got the requests unchanged");
}

/// Sends `bytes` from the upstream and waits until the client has them all.
fn relay_down(upstream: &mut TcpStream, client: &mut TcpStream, bytes: &[u8]) {
    upstream.write_all(bytes).unwrap();
    let got = read_exact_timeout(client, bytes.len());
    assert_eq!(got, bytes, "the client got the answers unchanged");
}

fn closed(r: &Value, reason: &str) -> u64 {
    r["connections_closed"][reason]
        .as_u64()
        .unwrap_or_else(|| panic!("no connections_closed.{reason} in {r}"))
}

/// Waits until exactly one connection closed, and checks it was for `reason`.
fn assert_closed_once_for(proxy: &Proxy, reason: &str) -> Value {
    let total = |r: &Value| -> u64 {
        r["connections_closed"]
            .as_object()
            .map_or(0, |m| m.values().filter_map(Value::as_u64).sum())
    };
    let r = proxy.report_until(|r| total(r) >= 1);
    assert_eq!(closed(&r, reason), 1, "{}", r["connections_closed"]);
    assert_eq!(total(&r), 1, "one reason only: {}", r["connections_closed"]);
    r
}

fn client_of(proxy: &Proxy) -> TcpStream {
    let c = proxy.connect();
    c.set_read_timeout(Some(WAIT)).unwrap();
    c
}

fn histogram_total(r: &Value, kind: &str) -> u64 {
    let counts = r["response_latency_histogram"][kind].as_array().unwrap();
    assert_eq!(counts.len(), 17, "16 bounds and +Inf");
    counts.iter().map(|c| c.as_u64().unwrap()).sum()
}

#[test]
fn requests_in_flight_are_those_the_upstream_has_not_answered_yet() {
    let (up, conns) = hand_upstream();
    let proxy = Proxy::start(&up, &[]);
    let mut c = client_of(&proxy);
    let mut s = accepted(&conns);
    relay_up(&mut c, &mut s, b"REQ 1 a\nREQ 2 b\nREQ 3 c\n");
    let r = proxy.report_until(|r| r["requests_in_flight"] == 3);
    assert_eq!(r["requests_in_flight"], 3);
    // Out of order: seq 2 first, then 1.
    relay_down(&mut s, &mut c, b"ACK 2 x\nNAK 1 y\n");
    let r = proxy.report_until(|r| r["requests_in_flight"] == 1);
    assert_eq!(r["requests_in_flight"], 1);
    assert_eq!(r["answers_unmatched"], 0);
    assert_eq!(r["response_latency_ms"]["count"], 2);
    assert!(r["response_latency_ms"]["max"].as_f64().is_some());
    assert_eq!(histogram_total(&r, "ack"), 1);
    assert_eq!(histogram_total(&r, "nak"), 1);
    assert_eq!(
        r["response_latency_buckets_ms"],
        serde_json::json!([
            0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0,
            5000.0, 10000.0
        ])
    );
}

#[test]
fn with_no_answer_in_the_last_ten_seconds_every_quantile_is_null() {
    let server = FooServer::start(ServerOpts::default());
    let proxy = Proxy::start(&server.addr.to_string(), &[]);
    let r = proxy.report();
    let q = &r["response_latency_ms"];
    assert_eq!(q["count"], 0);
    for k in ["p50", "p90", "p99", "p999", "max"] {
        assert!(q[k].is_null(), "{k}: {q}");
    }
}

#[test]
fn requests_outstanding_when_the_connection_ends_are_unanswered() {
    let (up, conns) = hand_upstream();
    let proxy = Proxy::start(&up, &[]);
    let mut c = client_of(&proxy);
    let mut s = accepted(&conns);
    relay_up(&mut c, &mut s, b"REQ 1 a\nREQ 2 b\nREQ 3 c\n");
    relay_down(&mut s, &mut c, b"ACK 1 x\n");
    drop(s);
    let r = assert_closed_once_for(&proxy, "server_closed");
    assert_eq!(r["requests_unanswered"], 2);
    assert_eq!(r["requests_in_flight"], 0);
}

#[test]
fn answers_to_unknown_or_already_answered_seqs_are_unmatched() {
    let (up, conns) = hand_upstream();
    let proxy = Proxy::start(&up, &[]);
    let mut c = client_of(&proxy);
    let mut s = accepted(&conns);
    relay_up(&mut c, &mut s, b"REQ 1 a\n");
    relay_down(
        &mut s,
        &mut c,
        b"ACK 1 x\nACK 1 again\nNAK 99 never asked\n",
    );
    let r = proxy.report_until(|r| r["answers_unmatched"] == 2);
    assert_eq!(r["answers_unmatched"], 2);
    assert_eq!(r["response_latency_ms"]["count"], 1);
    assert_eq!(r["requests_in_flight"], 0);
    // Relayed all the same.
    assert_eq!(r["msg_ack"], 2);
    assert_eq!(r["msg_nak"], 1);
}

#[test]
fn a_request_reusing_an_outstanding_seq_is_a_duplicate_and_both_answers_match() {
    let (up, conns) = hand_upstream();
    let proxy = Proxy::start(&up, &[]);
    let mut c = client_of(&proxy);
    let mut s = accepted(&conns);
    relay_up(&mut c, &mut s, b"REQ 5 a\nREQ 5 b\n");
    let r = proxy.report_until(|r| r["requests_duplicate_seq"] == 1);
    assert_eq!(r["requests_duplicate_seq"], 1);
    relay_down(&mut s, &mut c, b"ACK 5 a\nACK 5 b\n");
    let r = proxy.report_until(|r| r["requests_in_flight"] == 0);
    assert_eq!(r["answers_unmatched"], 0);
    assert_eq!(r["response_latency_ms"]["count"], 2);
}

#[test]
fn past_4096_outstanding_requests_are_relayed_untracked_and_answered_without_unmatched() {
    let (up, conns) = hand_upstream();
    let proxy = Proxy::start(&up, &[]);
    let mut c = client_of(&proxy);
    let mut s = accepted(&conns);
    let n = 4100;
    let reqs = requests(1..=n);
    let reader = {
        let mut s = s.try_clone().unwrap();
        let len = reqs.len();
        thread::spawn(move || read_exact_timeout(&mut s, len))
    };
    c.write_all(&reqs).unwrap();
    assert_eq!(reader.join().unwrap(), reqs);
    let r = proxy.report_until(|r| r["requests_in_flight"] == n);
    assert_eq!(r["requests_in_flight"], n);
    assert_eq!(r["requests_untracked"], n - 4096);
    let answers = answers(1..=n);
    let reader = {
        let mut c = c.try_clone().unwrap();
        let len = answers.len();
        thread::spawn(move || read_exact_timeout(&mut c, len))
    };
    s.write_all(&answers).unwrap();
    assert_eq!(reader.join().unwrap(), answers);
    let r = proxy.report_until(|r| r["requests_in_flight"] == 0);
    assert_eq!(r["requests_in_flight"], 0);
    assert_eq!(r["answers_unmatched"], 0);
    assert_eq!(r["response_latency_ms"]["count"], 4096);
}

#[test]
fn the_median_latency_behind_a_slow_upstream_lies_in_the_bucket_of_its_delay() {
    let delay = Duration::from_millis(20);
    let server = FooServer::start(ServerOpts {
        delay: Some(delay),
        ..ServerOpts::default()
    });
    let proxy = Proxy::start(&server.addr.to_string(), &[]);
    let mut c = client_of(&proxy);
    for seq in 1..=30u64 {
        c.write_all(&requests(seq..=seq)).unwrap();
        let want = answers(seq..=seq);
        assert_eq!(read_exact_timeout(&mut c, want.len()), want);
    }
    let r = proxy.report();
    let q = &r["response_latency_ms"];
    assert_eq!(q["count"], 30);
    let p50 = q["p50"].as_f64().unwrap();
    // Never faster than the delay, less the quantile error (1/32); within
    // one fixed bucket of it (10-25 ms holds 20 ms, 25-50 ms is the next).
    assert!(
        (20.0 * 31.0 / 32.0..50.0).contains(&p50),
        "p50 {p50} ms: {q}"
    );
    let max = q["max"].as_f64().unwrap();
    assert!(max >= p50 && max >= q["p999"].as_f64().unwrap(), "{q}");
    // The fixed histogram has them in the 25 ms bucket or above.
    let ack = r["response_latency_histogram"]["ack"].as_array().unwrap();
    let below_10ms: u64 = ack[..7].iter().map(|c| c.as_u64().unwrap()).sum();
    assert_eq!(below_10ms, 0, "{ack:?}");
}

#[test]
fn a_client_that_closes_after_its_answers_ends_as_client_closed() {
    let server = FooServer::start(ServerOpts::default());
    let proxy = Proxy::start(&server.addr.to_string(), &[]);
    let mut c = client_of(&proxy);
    c.write_all(&requests(1..=2)).unwrap();
    let want = answers(1..=2);
    assert_eq!(read_exact_timeout(&mut c, want.len()), want);
    c.shutdown(Shutdown::Write).unwrap();
    let (_, eof) = read_to_eof(&mut c);
    assert!(eof);
    let r = assert_closed_once_for(&proxy, "client_closed");
    assert_eq!(r["requests_unanswered"], 0);
}

#[test]
fn a_server_that_closes_once_a_half_closed_client_is_answered_ends_as_client_closed() {
    // The server's last answer and its FIN usually arrive in one read: the
    // session still ended normally, the client having closed first.
    const ROUNDS: u64 = 10;
    let (up, conns) = hand_upstream();
    let proxy = Proxy::start(&up, &[]);
    for _ in 0..ROUNDS {
        let mut c = client_of(&proxy);
        let mut s = accepted(&conns);
        relay_up(&mut c, &mut s, b"REQ 1 a\nREQ 2 b\n");
        c.shutdown(Shutdown::Write).unwrap();
        let (_, eof) = read_to_eof(&mut s);
        assert!(eof, "the proxy passes the client's FIN on");
        s.write_all(b"ACK 1\nNAK 2\n").unwrap();
        drop(s);
        let (got, eof) = read_to_eof(&mut c);
        assert!(eof);
        assert_eq!(got, b"ACK 1\nNAK 2\n");
    }
    let r =
        proxy.report_until(|r| closed(r, "client_closed") + closed(r, "server_closed") >= ROUNDS);
    assert_eq!(
        closed(&r, "client_closed"),
        ROUNDS,
        "{}",
        r["connections_closed"]
    );
    assert_eq!(
        closed(&r, "server_closed"),
        0,
        "{}",
        r["connections_closed"]
    );
    assert_eq!(r["requests_unanswered"], 0);
}

#[test]
fn a_duplicate_answer_neither_ends_a_half_closed_session_early_nor_counts_as_answered() {
    // REQ 1, REQ 2, then the client's FIN. The server answers 1 twice: the
    // line counts match while REQ 2 still waits.
    let (up, conns) = hand_upstream();
    let proxy = Proxy::start(&up, &[]);
    // The answer comes late: the proxy must wait for it, not close.
    let mut c = client_of(&proxy);
    let mut s = accepted(&conns);
    relay_up(&mut c, &mut s, b"REQ 1 a\nREQ 2 b\n");
    c.shutdown(Shutdown::Write).unwrap();
    let (_, eof) = read_to_eof(&mut s);
    assert!(eof, "the proxy passes the client's FIN on");
    s.write_all(b"ACK 1\nACK 1\n").unwrap();
    thread::sleep(Duration::from_millis(300));
    s.write_all(b"ACK 2\n").unwrap();
    drop(s);
    let (got, eof) = read_to_eof(&mut c);
    assert!(eof);
    assert_eq!(
        got,
        b"ACK 1\nACK 1\nACK 2\n",
        "{}",
        String::from_utf8_lossy(&got)
    );
    let r = assert_closed_once_for(&proxy, "client_closed");
    assert_eq!(r["requests_unanswered"], 0);
    assert_eq!(r["answers_unmatched"], 1);
    // The answer never comes: the server's close, not the client's, ended it.
    let (up, conns) = hand_upstream();
    let proxy = Proxy::start(&up, &[]);
    let mut c = client_of(&proxy);
    let mut s = accepted(&conns);
    relay_up(&mut c, &mut s, b"REQ 1 a\nREQ 2 b\n");
    c.shutdown(Shutdown::Write).unwrap();
    let (_, eof) = read_to_eof(&mut s);
    assert!(eof);
    s.write_all(b"ACK 1\nACK 1\n").unwrap();
    drop(s);
    let (got, eof) = read_to_eof(&mut c);
    assert!(eof);
    assert_eq!(got, b"ACK 1\nACK 1\n");
    let r = assert_closed_once_for(&proxy, "server_closed");
    assert_eq!(r["requests_unanswered"], 1);
}

#[test]
fn a_client_reset_ends_as_client_reset() {
    let (up, conns) = hand_upstream();
    let proxy = Proxy::start(&up, &[]);
    let mut c = client_of(&proxy);
    let mut s = accepted(&conns);
    relay_up(&mut c, &mut s, b"REQ 1 a\n");
    socket2::SockRef::from(&c)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(c);
    let r = assert_closed_once_for(&proxy, "client_reset");
    assert_eq!(r["requests_unanswered"], 1);
}

#[test]
fn an_upstream_reset_ends_as_server_reset() {
    let (up, conns) = hand_upstream();
    let proxy = Proxy::start(&up, &[]);
    let mut c = client_of(&proxy);
    let mut s = accepted(&conns);
    relay_up(&mut c, &mut s, b"REQ 1 a\n");
    socket2::SockRef::from(&s)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(s);
    let r = assert_closed_once_for(&proxy, "server_reset");
    assert_eq!(r["requests_unanswered"], 1);
}

#[test]
fn an_upstream_that_refuses_the_connect_ends_as_upstream_refused() {
    let proxy = Proxy::start(&format!("127.0.0.1:{}", dead_port()), &[]);
    let mut c = client_of(&proxy);
    let (_, eof) = read_to_eof(&mut c);
    assert!(eof);
    assert_closed_once_for(&proxy, "upstream_refused");
}

#[test]
fn an_upstream_that_never_answers_the_connect_ends_as_connect_timeout() {
    let (hole, _fill) = black_hole();
    let addr = hole.local_addr().unwrap().as_socket().unwrap();
    let proxy = Proxy::start(&addr.to_string(), &["--connect-timeout", "300ms"]);
    let mut c = client_of(&proxy);
    let (_, eof) = read_to_eof(&mut c);
    assert!(eof);
    assert_closed_once_for(&proxy, "connect_timeout");
}

#[test]
fn a_client_that_leaves_without_a_byte_during_the_connect_ends_at_once_as_client_closed() {
    // It sent nothing and wants nothing: it must not hold its slot until
    // the connect times out (5 s here; health checks and impatient retries
    // during an upstream outage would fill every slot).
    let (hole, _fill) = black_hole();
    let addr = hole.local_addr().unwrap().as_socket().unwrap();
    let proxy = Proxy::start(&addr.to_string(), &["--connect-timeout", "5s"]);
    drop(client_of(&proxy));
    // The old code counted it `connect_timeout`, 5 s later.
    assert_closed_once_for(&proxy, "client_closed");
}

#[test]
fn a_connection_quiet_past_the_idle_timeout_ends_as_idle_timeout() {
    let server = FooServer::start(ServerOpts::default());
    let proxy = Proxy::start(&server.addr.to_string(), &["--idle-timeout", "300ms"]);
    let mut c = client_of(&proxy);
    let (_, eof) = read_to_eof(&mut c);
    assert!(eof);
    assert_closed_once_for(&proxy, "idle_timeout");
}

#[test]
fn a_half_closed_client_whose_answers_never_come_ends_as_fin_timeout() {
    let (up, conns) = hand_upstream();
    let proxy = Proxy::start(&up, &["--fin-timeout", "300ms"]);
    let mut c = client_of(&proxy);
    let mut s = accepted(&conns);
    relay_up(&mut c, &mut s, b"REQ 1 a\nREQ 2 b\n");
    relay_down(&mut s, &mut c, b"ACK 1 x\n");
    c.shutdown(Shutdown::Write).unwrap();
    let (_, eof) = read_to_eof(&mut c);
    assert!(eof);
    let r = assert_closed_once_for(&proxy, "fin_timeout");
    assert_eq!(r["requests_unanswered"], 1);
    drop(s);
}

#[test]
fn a_connection_still_open_when_the_drain_ends_is_drained_and_logged() {
    let server = FooServer::start(ServerOpts::default());
    let mut proxy = Proxy::start(
        &server.addr.to_string(),
        &["--drain-timeout", "200ms", "--log-connections"],
    );
    let mut c = client_of(&proxy);
    c.write_all(&requests(1..=1)).unwrap();
    let want = answers(1..=1);
    assert_eq!(read_exact_timeout(&mut c, want.len()), want);
    proxy.signal("TERM");
    assert_eq!(proxy.wait_exit(WAIT), Some(0));
    let (_, eof) = read_to_eof(&mut c);
    assert!(eof);
    // After the exit the reader thread may still lack the last lines:
    // polled for, then counted.
    let err = proxy.stderr_has("msg=connection");
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("msg=connection"))
        .collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(lines[0].ends_with(" reason=drained"), "{err}");
}

#[test]
fn a_client_that_cannot_get_an_upstream_socket_ends_as_proxy_error() {
    let server = FooServer::start(ServerOpts::default());
    let bin = env!("CARGO_BIN_EXE_foo-proxy");
    let upstream = server.addr.to_string();
    // A low descriptor limit: a handful of pairs exhaust it. Each pair takes
    // two descriptors (client, then upstream), so whether the last free one
    // goes to an accept (which then fails: a resource error, no pair) or to
    // an upstream socket (which fails: proxy_error) depends on the parity of
    // the descriptors below the limit that are already taken. The shell
    // closes what the test inherited (a CI runner's or cargo's descriptors
    // land anywhere below the limit), and of two neighbouring limits one
    // always has the parity this test needs. The client that got no
    // upstream has a lingering close (a short --fin-timeout here) and is
    // counted when it ends.
    let mut seen = Vec::new();
    for limit in [32, 33] {
        let script = format!(
            "for fd in $(ls /proc/$$/fd); do [ \"$fd\" -gt 2 ] && eval \"exec $fd>&-\"; done; \
             ulimit -n {limit} && exec {bin} -listen 127.0.0.1:0 -forward {upstream} \
             -recovery-path= -http 127.0.0.1:0 --fin-timeout 100ms"
        );
        let proxy = Proxy::spawn(Command::new("bash").args(["-c", &script]));
        let mut clients = Vec::new();
        for _ in 0..40 {
            clients.push(TcpStream::connect_timeout(&proxy.addr, WAIT).unwrap());
        }
        // Accepting that fails pauses 100 ms at a time: twenty failures
        // (twenty fin timeouts) say this limit gives no proxy_error.
        let r = proxy.report_until(|r| {
            closed(r, "proxy_error") > 0 || r["resource_errors"].as_u64().unwrap() >= 20
        });
        let total = r["connections_total"].as_u64().unwrap();
        let active = r["connections_active"].as_u64().unwrap();
        // No pair ended for any other reason.
        assert_eq!(closed(&r, "proxy_error"), total - active, "{r}");
        if closed(&r, "proxy_error") > 0 {
            return;
        }
        seen.push(r);
    }
    panic!("no limit gave proxy_error: {seen:?}");
}

#[test]
fn every_reason_is_always_in_the_report() {
    let server = FooServer::start(ServerOpts::default());
    let proxy = Proxy::start(&server.addr.to_string(), &[]);
    let r = proxy.report();
    let keys: Vec<&String> = r["connections_closed"]
        .as_object()
        .unwrap()
        .keys()
        .collect();
    for k in [
        "client_closed",
        "client_reset",
        "server_closed",
        "server_reset",
        "upstream_refused",
        "connect_timeout",
        "idle_timeout",
        "fin_timeout",
        "drained",
        "proxy_error",
    ] {
        assert_eq!(closed(&r, k), 0, "{k} in {keys:?}");
    }
}

#[test]
fn the_connection_log_has_one_logfmt_line_per_closed_connection() {
    let server = FooServer::start(ServerOpts::default());
    let proxy = Proxy::start(&server.addr.to_string(), &["--log-connections"]);
    let mut c = client_of(&proxy);
    let local = c.local_addr().unwrap();
    c.write_all(&requests(1..=8)).unwrap();
    c.write_all(b"junk\n").unwrap();
    let mut want = answers(1..=8);
    want.extend_from_slice(b"NAK 0 ERRDECODE\n");
    assert_eq!(read_exact_timeout(&mut c, want.len()), want);
    c.shutdown(Shutdown::Write).unwrap();
    let (_, eof) = read_to_eof(&mut c);
    assert!(eof);
    let deadline = Instant::now() + WAIT;
    let line = loop {
        let err = proxy.stderr();
        if let Some(l) = err.lines().find(|l| l.contains("msg=connection")) {
            break l.to_string();
        }
        assert!(Instant::now() < deadline, "no connection line: {err}");
        thread::sleep(Duration::from_millis(20));
    };
    let fields: Vec<(&str, &str)> = line
        .split(' ')
        .map(|kv| {
            kv.split_once('=')
                .unwrap_or_else(|| panic!("{kv} in {line}"))
        })
        .collect();
    let keys: Vec<&str> = fields.iter().map(|(k, _)| *k).collect();
    assert_eq!(
        keys,
        [
            "ts",
            "msg",
            "id",
            "client",
            "peer",
            "upstream",
            "duration_ms",
            "bytes_client_to_server",
            "bytes_server_to_client",
            "req",
            "ack",
            "nak",
            "invalid",
            "unanswered",
            "slowest_ms",
            "reason"
        ]
    );
    let get = |k: &str| fields.iter().find(|(n, _)| *n == k).unwrap().1;
    assert_eq!(get("client"), local.to_string());
    assert_eq!(get("peer"), local.to_string());
    assert_eq!(get("upstream"), server.addr.to_string());
    assert_eq!(get("req"), "8");
    assert_eq!(get("ack"), "7");
    // The NAK 0 answers a line that was no request: unmatched, still a NAK.
    assert_eq!(get("nak"), "2");
    assert_eq!(get("invalid"), "1");
    assert_eq!(get("unanswered"), "0");
    assert_eq!(
        get("bytes_client_to_server"),
        (requests(1..=8).len() + 5).to_string()
    );
    assert_eq!(get("bytes_server_to_client"), want.len().to_string());
    assert!(get("slowest_ms").parse::<f64>().unwrap() >= 0.0);
    assert_eq!(get("reason"), "client_closed");
}

#[test]
fn the_connection_log_in_json_says_null_for_an_upstream_never_reached() {
    let proxy = Proxy::start(
        &format!("127.0.0.1:{}", dead_port()),
        &["--log-connections", "--log-format", "json"],
    );
    let mut c = client_of(&proxy);
    let (_, eof) = read_to_eof(&mut c);
    assert!(eof);
    let deadline = Instant::now() + WAIT;
    let v: Value = loop {
        let err = proxy.stderr();
        if let Some(l) = err.lines().find(|l| l.contains("\"msg\":\"connection\"")) {
            break serde_json::from_str(l).unwrap();
        }
        assert!(Instant::now() < deadline, "no connection line: {err}");
        thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(v["reason"], "upstream_refused");
    assert!(v["upstream"].is_null());
    assert!(v["slowest_ms"].is_null());
    assert_eq!(v["req"], 0);
}

#[test]
fn without_the_flag_no_connection_is_logged() {
    let server = FooServer::start(ServerOpts::default());
    let proxy = Proxy::start(&server.addr.to_string(), &[]);
    let mut c = client_of(&proxy);
    c.write_all(&requests(1..=1)).unwrap();
    let want = answers(1..=1);
    assert_eq!(read_exact_timeout(&mut c, want.len()), want);
    c.shutdown(Shutdown::Write).unwrap();
    read_to_eof(&mut c);
    assert_closed_once_for(&proxy, "client_closed");
    assert!(!proxy.stderr().contains("msg=connection"));
}

/// A loopback listener whose accept queue is full, so further connects hang
/// in SYN_SENT: the only way to see a real connect timeout on loopback.
fn black_hole() -> (socket2::Socket, Vec<TcpStream>) {
    use socket2::{Domain, Socket, Type};
    let sock = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    let addr: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
    sock.bind(&addr.into()).unwrap();
    sock.listen(0).unwrap();
    let addr = sock.local_addr().unwrap().as_socket().unwrap();
    let mut fill = Vec::new();
    for _ in 0..8 {
        match TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            Ok(s) => fill.push(s),
            Err(_) => break,
        }
    }
    (sock, fill)
}

/// Runs inside a private network namespace: a proxy on `0.0.0.0:8002`
/// forwarding to 10.9.9.9:8002, an address this host gains only after the
/// start, so the start-up check passes and the first client's upstream
/// connection comes back to the proxy's own listener (a forwarding loop
/// found at run time). The client then closes; prints the report once the
/// origin pair has left (`connections_active` 0), or after 5 s.
const FORWARDING_LOOP: &str = r#"
import json, socket, subprocess, sys, time, urllib.request
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
p = subprocess.Popen([sys.argv[1], "-listen", "0.0.0.0:8002", "-forward", "10.9.9.9:8002",
                      "-http", "127.0.0.1:8088", "-recovery-path=", "--max-connections", "50"],
                     stderr=subprocess.DEVNULL)
for _ in range(100):
    try:
        urllib.request.urlopen("http://127.0.0.1:8088/ready", timeout=5)
        break
    except OSError:
        time.sleep(0.05)
subprocess.run(["ip", "addr", "add", "10.9.9.9/32", "dev", "lo"], check=True)
c = socket.create_connection(("127.0.0.1", 8002), timeout=5)
c.sendall(b"REQ 1 x\n")
while c.recv(65536):
    pass
c.close()
deadline = time.time() + 5
while True:
    stats = json.loads(urllib.request.urlopen("http://127.0.0.1:8088/stats", timeout=5).read())
    if stats["connections_active"] == 0 or time.time() > deadline:
        break
    time.sleep(0.05)
p.terminate()
p.wait(timeout=10)
print(json.dumps(stats))
"#;

#[test]
fn a_forwarding_loop_found_at_run_time_ends_as_proxy_error() {
    let netns = Command::new("unshare")
        .args(["-rn", "ip", "link", "set", "lo", "up"])
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !netns {
        eprintln!(
            "SKIPPED: a_forwarding_loop_found_at_run_time_ends_as_proxy_error: \
             `unshare -rn` or `ip` is not available here"
        );
        return;
    }
    let bin = env!("CARGO_BIN_EXE_foo-proxy");
    let out = Command::new("timeout")
        .args([
            "30",
            "unshare",
            "-rn",
            "python3",
            "-c",
            FORWARDING_LOOP,
            bin,
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let r: Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("{e}: {stdout} {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(r["connections_active"], 0, "{r}");
    // The looped connection never becomes a pair; its origin is the one
    // connection closed, as proxy_error.
    let closed = r["connections_closed"].as_object().unwrap();
    let ended: Vec<(&String, &Value)> = closed.iter().filter(|(_, n)| **n != 0).collect();
    assert_eq!(ended.len(), 1, "{r}");
    assert_eq!(r["connections_closed"]["proxy_error"], 1, "{r}");
}

#[test]
fn an_ipv4_client_of_a_dual_stack_listener_is_logged_as_plain_ipv4() {
    let server = FooServer::start(ServerOpts::default());
    // `:0` listens on every interface, IPv4 and IPv6: an IPv4 client is
    // accepted as `::ffff:127.0.0.1` (the last -listen given wins).
    let proxy = Proxy::start(
        &server.addr.to_string(),
        &["--log-connections", "--log-level", "debug", "-listen", ":0"],
    );
    if proxy.addr.is_ipv4() {
        eprintln!(
            "SKIPPED: an_ipv4_client_of_a_dual_stack_listener_is_logged_as_plain_ipv4: no IPv6 here"
        );
        return;
    }
    let mut c = TcpStream::connect(("127.0.0.1", proxy.addr.port())).unwrap();
    c.set_read_timeout(Some(WAIT)).unwrap();
    let local = c.local_addr().unwrap();
    c.write_all(&requests(1..=1)).unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_to_eof(&mut c).0, answers(1..=1));
    let err = proxy.stderr_has("msg=connection");
    let want = format!(" client={local} peer={local} ");
    assert!(err.contains(&want), "{want} in {err}");
    // Nor in the debug lines (accepted, PROXY header, poll failure).
    assert!(err.contains(&format!("client {local} accepted")), "{err}");
    assert!(!err.contains("ffff"), "{err}");
}

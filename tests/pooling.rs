//! Upstream connection pooling (issue 19), on the real binary over
//! loopback: reuse after clean sessions only, no answer ever reaching the
//! wrong client, the queue at --max-upstream-connections, idle pooled
//! connections dropped when the server closes them or sends bytes, and the
//! pooled connections closed at the drain.

mod util;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use util::{FooServer, Proxy, ServerOpts, WAIT, answers, read_to_eof, requests};

/// Sockets the server side holds on `port` (ESTABLISHED or CLOSE_WAIT),
/// from /proc/net/tcp.
fn server_sockets(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let local = format!(":{port:04X}");
    table
        .lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3 && f[1].ends_with(&local) && (f[3] == "01" || f[3] == "08")
        })
        .count()
}

/// One client session: sends `bytes`, half-closes, reads to the proxy's
/// FIN; what it got.
fn session(proxy: &Proxy, bytes: &[u8]) -> Vec<u8> {
    let mut c = proxy.connect();
    c.write_all(bytes).unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    let (got, eof) = read_to_eof(&mut c);
    assert!(
        eof,
        "no clean end after {:?}",
        String::from_utf8_lossy(&got)
    );
    got
}

/// Every reason a connection leaves the pool or is not given back.
const DISCARDS: [&str; 8] = [
    "server_closed",
    "unsolicited_bytes",
    "idle_timeout",
    "pool_full",
    "unclean_end",
    "drained",
    "connect_failed",
    "poll_failed",
];

/// Asserts that report `r` counts exactly `want` pool discards by reason,
/// and none for every other reason.
fn assert_discards(r: &serde_json::Value, want: &[(&str, u64)]) {
    for reason in DISCARDS {
        let expect = want
            .iter()
            .find(|(w, _)| *w == reason)
            .map_or(0, |(_, c)| *c);
        let got = n(r, &format!("upstream_pool_discarded_{reason}"));
        assert_eq!(got, expect, "discarded {reason}: {r}");
    }
}

fn n(r: &serde_json::Value, key: &str) -> u64 {
    r[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} missing in {r}"))
}

#[test]
fn a_thousand_sequential_sessions_with_a_pool_of_8_leave_at_most_8_server_sockets_spares_included()
{
    let server = FooServer::start(ServerOpts {
        never_close: true,
        ..ServerOpts::default()
    });
    let spare = 2;
    let proxy = Proxy::start(
        &server.addr.to_string(),
        &["--upstream-pool=8", &format!("--upstream-spare={spare}")],
    );
    let sessions = 1_000u64;
    for i in 0..sessions {
        let first = 2 * i + 1;
        let got = session(&proxy, &requests(first..=first + 1));
        assert_eq!(got, answers(first..=first + 1), "session {i}");
    }
    let r = proxy.report_until(|r| r["connections_active"] == 0);
    assert_eq!(n(&r, "connections_total"), sessions);
    assert_eq!(n(&r, "msg_req"), 2 * sessions);
    assert_eq!(n(&r, "msg_ack") + n(&r, "msg_nak"), 2 * sessions);
    assert_eq!(r["connections_closed"]["client_closed"], sessions);
    assert_eq!(n(&r, "requests_unanswered"), 0);
    assert_eq!(n(&r, "answers_unmatched"), 0);
    assert_eq!(n(&r, "upstream_pool_size"), 8);
    assert_eq!(n(&r, "upstream_pool_in_use"), 0);
    assert_eq!(n(&r, "upstream_pool_discarded_unclean_end"), 0);
    // Every session but perhaps the first (the spares may still have been
    // connecting) ran on a pooled connection.
    assert!(n(&r, "upstream_pool_reused") >= sessions - 1, "{r}");
    // A spare's handshake completes before the server's accept counts it.
    let accepted = util::wait_until(|| {
        let a = server.connections.load(Ordering::Relaxed);
        (a >= n(&r, "upstream_connections")).then_some(a)
    })
    .unwrap_or_else(|| server.connections.load(Ordering::Relaxed));
    assert!(accepted <= 8, "the server accepted {accepted}");
    let held = server_sockets(server.port());
    assert!(held <= 8, "the server holds {held} sockets");
    assert_eq!(n(&r, "upstream_connections"), accepted, "{r}");
}

/// The connections a test server accepted, and the seqs it read, in order.
type Seen = (Arc<AtomicU64>, Arc<Mutex<Vec<u64>>>);

/// A Foo server that answers each line in order with `ACK seq ok`, after
/// 400 ms for a line that says `slow`, and never closes; it counts the
/// connections it accepted and records the seqs it read.
fn slow_server() -> (std::net::SocketAddr, Seen) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicU64::new(0));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (count, record) = (accepted.clone(), seen.clone());
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { break };
            count.fetch_add(1, Ordering::Relaxed);
            let record = record.clone();
            thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut out = stream;
                let mut line = String::new();
                while reader.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
                    if line.contains("slow") {
                        thread::sleep(Duration::from_millis(400));
                    }
                    let seq = line.split_whitespace().nth(1).unwrap_or("0").to_string();
                    record.lock().unwrap().push(seq.parse().unwrap_or(0));
                    let _ = out.write_all(format!("ACK {seq} ok\n").as_bytes());
                    line.clear();
                }
                thread::sleep(WAIT);
            });
        }
    });
    (addr, (accepted, seen))
}

#[test]
fn a_client_that_leaves_with_requests_unanswered_never_passes_its_answer_to_the_next_client() {
    // A slow answer takes 400 ms; the proxy waits 100 ms after a client's
    // FIN, so the leaving client's answer comes after the next client
    // started.
    let (addr, (accepted, _)) = slow_server();
    let proxy = Proxy::start(
        &addr.to_string(),
        &["--upstream-pool=4", "--fin-timeout=100ms"],
    );
    let rounds = 6u64;
    for round in 0..rounds {
        // One clean session first, so that a pooled connection exists and
        // the leaving client takes it.
        let seq = 1 + 10 * round;
        let ack = |seq: u64| format!("ACK {seq} ok\n");
        let got = session(&proxy, format!("REQ {seq} a\n").as_bytes());
        assert_eq!(String::from_utf8_lossy(&got), ack(seq));
        let before = proxy.report();
        let mut leaving = proxy.connect();
        leaving.write_all(b"REQ 999 slow\n").unwrap();
        if round % 2 == 0 {
            // Leaves with a FIN: the fin timeout ends it.
            leaving.shutdown(Shutdown::Write).unwrap();
        } else {
            // Leaves with a reset.
            socket2::SockRef::from(&leaving)
                .set_linger(Some(Duration::ZERO))
                .unwrap();
        }
        drop(leaving);
        let unclean = n(&before, "upstream_pool_discarded_unclean_end") + 1;
        proxy.report_until(|r| r["upstream_pool_discarded_unclean_end"] == unclean);
        // The next client starts before the late answer comes.
        let next = seq + 1;
        let got = session(&proxy, format!("REQ {next} b\n").as_bytes());
        assert_eq!(String::from_utf8_lossy(&got), ack(next), "round {round}");
    }
    // One connection per leaving client, plus the first.
    assert_eq!(accepted.load(Ordering::Relaxed), rounds + 1);
    let r = proxy.report_until(|r| r["connections_active"] == 0);
    assert_discards(&r, &[("unclean_end", rounds)]);
    assert_eq!(n(&r, "requests_unanswered"), rounds);
    assert_eq!(n(&r, "answers_unmatched"), 0);
    let closed = &r["connections_closed"];
    assert_eq!(closed["client_closed"], 2 * rounds);
    assert_eq!(
        closed["fin_timeout"].as_u64().unwrap() + closed["client_reset"].as_u64().unwrap(),
        rounds
    );
}

/// Starts a client that sends `REQ seq`, half-closes, and reads to the end
/// of its session in a thread.
fn queued_client(proxy: &Proxy, seq: u64) -> thread::JoinHandle<Vec<u8>> {
    let mut c = proxy.connect();
    c.write_all(format!("REQ {seq} q\n").as_bytes()).unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    thread::spawn(move || read_to_eof(&mut c).0)
}

#[test]
fn clients_beyond_max_upstream_connections_wait_and_are_served_in_order() {
    // Served in order means: on the one upstream connection, the server
    // reads the waiting clients' requests in the order they arrived.
    let (addr, (accepted, seen)) = slow_server();
    let proxy = Proxy::start(
        &addr.to_string(),
        &["--upstream-pool=1", "--max-upstream-connections=1"],
    );
    let ack = |seq: u64| format!("ACK {seq} ok\n");
    // The first client holds the one connection.
    let mut holder = proxy.connect();
    holder.write_all(b"REQ 1 h\n").unwrap();
    let mut line = String::new();
    BufReader::new(&holder).read_line(&mut line).unwrap();
    assert_eq!(line, ack(1));
    let mut waiting = Vec::new();
    for seq in 2..=5u64 {
        waiting.push((seq, queued_client(&proxy, seq)));
        proxy.report_until(|r| r["upstream_queue_clients"] == seq - 1);
    }
    thread::sleep(Duration::from_millis(100));
    assert_eq!(
        *seen.lock().unwrap(),
        vec![1],
        "served before a connection was free"
    );
    holder.shutdown(Shutdown::Write).unwrap();
    let (rest, eof) = read_to_eof(&mut holder);
    assert!(rest.is_empty() && eof);
    for (seq, t) in waiting {
        let got = t.join().unwrap();
        assert_eq!(String::from_utf8_lossy(&got), ack(seq), "client {seq}");
    }
    assert_eq!(*seen.lock().unwrap(), vec![1, 2, 3, 4, 5]);
    let r = proxy.report_until(|r| r["connections_active"] == 0);
    assert_eq!(accepted.load(Ordering::Relaxed), 1);
    assert_eq!(n(&r, "upstream_pool_reused"), 4);
    assert_eq!(n(&r, "upstream_queue_clients"), 0);
    assert_eq!(n(&r, "upstream_queue_timeouts"), 0);
    let waits: u64 = r["upstream_queue_wait_histogram"]["counts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(waits, 4);
}

#[test]
fn a_client_that_waits_past_the_queue_timeout_is_closed_and_counted() {
    let server = FooServer::start(ServerOpts::default());
    let proxy = Proxy::start(
        &server.addr.to_string(),
        &["--max-upstream-connections=1", "--queue-timeout=200ms"],
    );
    let mut holder = proxy.connect();
    holder.write_all(&requests(1..=1)).unwrap();
    let mut line = String::new();
    BufReader::new(&holder).read_line(&mut line).unwrap();
    let started = Instant::now();
    let mut late = proxy.connect();
    late.write_all(&requests(2..=2)).unwrap();
    let (got, _) = read_to_eof(&mut late);
    assert!(got.is_empty(), "{:?}", String::from_utf8_lossy(&got));
    assert!(started.elapsed() < WAIT);
    drop(late);
    let r = proxy.report_until(|r| r["connections_closed"]["queue_timeout"] == 1);
    assert_eq!(n(&r, "upstream_queue_timeouts"), 1);
    assert_eq!(r["connections_closed"]["queue_timeout"], 1);
    assert_eq!(n(&r, "upstream_queue_clients"), 0);
    assert_eq!(server.connections.load(Ordering::Relaxed), 1);
    // The holder is still served.
    holder.write_all(&requests(3..=3)).unwrap();
    holder.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_to_eof(&mut holder).0, answers(3..=3));
}

#[test]
fn an_idle_pooled_connection_the_server_closes_or_lets_expire_is_dropped() {
    let server = FooServer::start(ServerOpts::default());
    let proxy = Proxy::start(&server.addr.to_string(), &["--upstream-pool=2"]);
    assert_eq!(session(&proxy, &requests(1..=2)), answers(1..=2));
    proxy.report_until(|r| r["upstream_pool_idle"] == 1);
    server.kill_connections();
    let r = proxy.report_until(|r| r["upstream_pool_discarded_server_closed"] == 1);
    assert_discards(&r, &[("server_closed", 1)]);
    assert_eq!(n(&r, "upstream_pool_idle"), 0);
    assert_eq!(n(&r, "upstream_connections"), 0);
    // The next client gets a new connection, and its own answers.
    assert_eq!(session(&proxy, &requests(3..=4)), answers(3..=4));
    assert_eq!(server.connections.load(Ordering::Relaxed), 2);

    let expiring = Proxy::start(
        &server.addr.to_string(),
        &["--upstream-pool=2", "--upstream-idle-timeout=200ms"],
    );
    assert_eq!(session(&expiring, &requests(5..=5)), answers(5..=5));
    let r = expiring.report_until(|r| r["upstream_pool_discarded_idle_timeout"] == 1);
    assert_discards(&r, &[("idle_timeout", 1)]);
    assert_eq!(n(&r, "upstream_pool_idle"), 0);
}

#[test]
fn bytes_on_an_idle_pooled_connection_discard_it() {
    // A server that answers, then, 200 ms later, sends a line nobody asked
    // for on the same connection.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicU64::new(0));
    let count = accepted.clone();
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { break };
            let n = count.fetch_add(1, Ordering::Relaxed);
            thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut out = stream;
                let mut line = String::new();
                while reader.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
                    let seq = line.split_whitespace().nth(1).unwrap_or("0").to_string();
                    let _ = out.write_all(format!("ACK {seq} ok\n").as_bytes());
                    if n == 0 {
                        thread::sleep(Duration::from_millis(200));
                        let _ = out.write_all(b"ACK 77 stray\n");
                    }
                    line.clear();
                }
                // Like the reference: never close.
                thread::sleep(WAIT);
            });
        }
    });
    let proxy = Proxy::start(&addr.to_string(), &["--upstream-pool=2"]);
    assert_eq!(session(&proxy, b"REQ 1 a\n"), b"ACK 1 ok\n");
    let r = proxy.report_until(|r| r["upstream_pool_discarded_unsolicited_bytes"] == 1);
    assert_discards(&r, &[("unsolicited_bytes", 1)]);
    assert_eq!(n(&r, "upstream_pool_unsolicited_bytes"), 13);
    assert_eq!(n(&r, "upstream_pool_idle"), 0);
    // The stray line never reaches the next client.
    assert_eq!(session(&proxy, b"REQ 2 b\n"), b"ACK 2 ok\n");
    assert_eq!(accepted.load(Ordering::Relaxed), 2);
    let r = proxy.report();
    assert_eq!(n(&r, "answers_unmatched"), 0);
}

#[test]
fn the_drain_closes_idle_pooled_connections_at_once() {
    let server = FooServer::start(ServerOpts::default());
    let proxy = Proxy::start(
        &server.addr.to_string(),
        &["--upstream-pool=2", "--drain-timeout=5s"],
    );
    // A client still relaying keeps the proxy draining.
    let mut open = proxy.connect();
    open.write_all(&requests(2..=2)).unwrap();
    let mut line = String::new();
    BufReader::new(&open).read_line(&mut line).unwrap();
    assert_eq!(session(&proxy, &requests(1..=1)), answers(1..=1));
    proxy.report_until(|r| r["upstream_pool_idle"] == 1);
    assert_eq!(server.streams.lock().unwrap().len(), 2);
    proxy.signal("TERM");
    // The server sees the pooled connection end while the proxy drains.
    let deadline = Instant::now() + WAIT;
    while server.streams.lock().unwrap().len() > 1 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(server.streams.lock().unwrap().len(), 1);
    let r = proxy.report();
    assert_discards(&r, &[("drained", 1)]);
    // The draining client is still served.
    open.write_all(&requests(3..=3)).unwrap();
    open.shutdown(Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    open.read_to_end(&mut rest).unwrap();
    assert_eq!(rest, answers(3..=3));
}

#[test]
fn pooling_with_send_proxy_is_refused_in_one_line() {
    let out = Command::new(env!("CARGO_BIN_EXE_foo-proxy"))
        .args([
            "--upstream-pool=4",
            "--send-proxy=v2",
            "-http=off",
            "-recovery-path=",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(
        err.contains("-send-proxy") && err.contains("-upstream-pool"),
        "{err}"
    );
    assert!(out.stdout.is_empty());
}

/// A server that answers `REQ` lines at once, twice for a line that says
/// `dup`, and a malformed line 300 ms late with `NAK 0 late`; never closes.
fn miscounting_server() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { break };
            thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let out = Arc::new(Mutex::new(stream));
                let mut line = String::new();
                while reader.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
                    let seq = line.split_whitespace().nth(1).unwrap_or("0").to_string();
                    if !line.starts_with("REQ ") {
                        let out = out.clone();
                        thread::spawn(move || {
                            thread::sleep(Duration::from_millis(300));
                            let _ = out.lock().unwrap().write_all(b"NAK 0 late\n");
                        });
                    } else if line.contains("dup") {
                        let twice = format!("ACK {seq} ok\nACK {seq} ok\n");
                        let _ = out.lock().unwrap().write_all(twice.as_bytes());
                    } else {
                        let once = format!("ACK {seq} ok\n");
                        let _ = out.lock().unwrap().write_all(once.as_bytes());
                    }
                    line.clear();
                }
                thread::sleep(WAIT);
            });
        }
    });
    addr
}

/// Line counts alone can be fooled: a malformed line whose answer is late
/// plus a request answered twice make as many answers as lines. A session
/// with a line whose answer cannot be told by its seq is never pooled, so
/// the late answer cannot reach the next client (break-it round 4: it did).
#[test]
fn a_session_with_a_malformed_line_or_an_unmatched_answer_is_never_pooled() {
    let addr = miscounting_server();
    let proxy = Proxy::start(&addr.to_string(), &["--upstream-pool=1"]);
    let got = session(&proxy, b"XYZ a\nREQ 2 dup\n");
    assert_eq!(got, b"ACK 2 ok\nACK 2 ok\n");
    let r = proxy.report_until(|r| r["upstream_pool_discarded_unclean_end"] == 1);
    assert_discards(&r, &[("unclean_end", 1)]);
    assert_eq!(n(&r, "upstream_pool_idle"), 0, "{r}");
    // The next client stays past the late answer's time: it gets its own
    // answer and nothing else.
    let mut next = proxy.connect();
    next.write_all(b"REQ 3 b\n").unwrap();
    thread::sleep(Duration::from_millis(500));
    next.shutdown(Shutdown::Write).unwrap();
    let (got, eof) = read_to_eof(&mut next);
    assert!(eof);
    assert_eq!(String::from_utf8_lossy(&got), "ACK 3 ok\n");
    let r = proxy.report();
    assert_eq!(n(&r, "upstream_pool_reused"), 0, "{r}");
}

/// A server that greets every connection, or closes it at once, drops
/// every spare as soon as it connects; reopening them at once would be a
/// reconnect loop (thousands a second, TIME-WAIT sockets piling up: break-it
/// round 4). Spares pause 1 s after such a drop, as after a failed connect.
#[test]
fn spares_dropped_by_a_greeting_or_closing_server_are_not_reopened_in_a_loop() {
    for greets in [true, false] {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicU64::new(0));
        let count = accepted.clone();
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { break };
                if count.fetch_add(1, Ordering::Relaxed) > 10_000 {
                    break;
                }
                if greets {
                    let _ = stream.write_all(b"HELLO\n");
                    thread::spawn(move || {
                        thread::sleep(WAIT);
                        drop(stream);
                    });
                }
            }
        });
        let proxy = Proxy::start(
            &addr.to_string(),
            &["--upstream-pool=4", "--upstream-spare=2"],
        );
        let r = proxy.report_until(|r| {
            r["upstream_pool_discarded_unsolicited_bytes"]
                .as_u64()
                .unwrap_or(0)
                + r["upstream_pool_discarded_server_closed"]
                    .as_u64()
                    .unwrap_or(0)
                >= 2
        });
        let dropped = n(&r, "upstream_pool_discarded_unsolicited_bytes")
            + n(&r, "upstream_pool_discarded_server_closed");
        assert!(dropped >= 2, "greets {greets}: {r}");
        // A second and a half: at most two more rounds of two spares, not
        // the thousands a loop makes.
        thread::sleep(Duration::from_millis(1500));
        let opened = n(&proxy.report(), "upstream_connections_opened");
        assert!(
            opened <= 8,
            "greets {greets}: {opened} spares opened in 1.5 s"
        );
    }
}

/// A queued client is not read, but its reset is noticed at once: it leaves
/// the queue, counted as client_reset, and its request never reaches the
/// server (break-it round 4: it stayed queued and, served a second later,
/// sent its request for nobody and threw the connection away).
#[test]
fn a_client_that_resets_while_queued_leaves_the_queue_and_sends_nothing() {
    let (addr, (_, seen)) = slow_server();
    let proxy = Proxy::start(
        &addr.to_string(),
        &["--upstream-pool=1", "--max-upstream-connections=1"],
    );
    let holder = {
        let mut c = proxy.connect();
        c.write_all(b"REQ 1 slow\n").unwrap();
        c
    };
    proxy.report_until(|r| r["upstream_connections"] == 1);
    let mut queued = Vec::new();
    for _ in 0..2 {
        let mut c = proxy.connect();
        c.write_all(b"REQ 2 q\n").unwrap();
        queued.push(c);
    }
    let r = proxy.report_until(|r| r["upstream_queue_clients"] == 2);
    assert_eq!(n(&r, "upstream_queue_clients"), 2, "{r}");
    for c in queued {
        socket2::SockRef::from(&c)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(c);
    }
    let r = proxy.report_until(|r| r["upstream_queue_clients"] == 0);
    assert_eq!(n(&r, "upstream_queue_clients"), 0, "{r}");
    // The holder is still being served (its answer takes 400 ms).
    let mut holder = holder;
    holder.shutdown(Shutdown::Write).unwrap();
    let (got, eof) = read_to_eof(&mut holder);
    assert!(eof);
    assert_eq!(got, b"ACK 1 ok\n");
    let r = proxy.report_until(|r| r["connections_active"] == 0);
    assert_eq!(r["connections_closed"]["client_reset"], 2, "{r}");
    assert_eq!(*seen.lock().unwrap(), vec![1]);
    assert_eq!(n(&r, "upstream_pool_discarded_unclean_end"), 0, "{r}");
}

/// A queued client that closes without sending a byte leaves the queue at
/// once (`client_closed`), as one that closes during its connect does: it
/// used to hold its place until its turn or `--queue-timeout`. Nothing of
/// a queued client is read: one that sent a request and half-closed is
/// still served.
#[test]
fn a_queued_client_that_closes_without_a_byte_leaves_the_queue_at_once() {
    let (addr, (_, seen)) = slow_server();
    let proxy = Proxy::start(
        &addr.to_string(),
        &["--upstream-pool=1", "--max-upstream-connections=1"],
    );
    let mut holder = proxy.connect();
    holder.write_all(b"REQ 1 slow\n").unwrap();
    proxy.report_until(|r| r["upstream_connections"] == 1);
    let served = queued_client(&proxy, 3);
    let empty: Vec<_> = (0..2).map(|_| proxy.connect()).collect();
    let r = proxy.report_until(|r| r["upstream_queue_clients"] == 3);
    assert_eq!(n(&r, "upstream_queue_clients"), 3, "{r}");
    for c in &empty {
        c.shutdown(Shutdown::Write).unwrap();
    }
    // The holder keeps the one connection: only the empty clients can go
    // (each is counted once its lingering close ends, just after it left).
    let r = proxy.report_until(|r| {
        r["upstream_queue_clients"] == 1 && r["connections_closed"]["client_closed"] == 2
    });
    assert_eq!(n(&r, "upstream_queue_clients"), 1, "{r}");
    assert_eq!(r["connections_closed"]["client_closed"], 2, "{r}");
    for mut c in empty {
        let (got, eof) = read_to_eof(&mut c);
        assert!(eof && got.is_empty(), "{:?}", String::from_utf8_lossy(&got));
    }
    holder.shutdown(Shutdown::Write).unwrap();
    let (got, eof) = read_to_eof(&mut holder);
    assert!(eof);
    assert_eq!(got, b"ACK 1 ok\n");
    assert_eq!(
        String::from_utf8_lossy(&served.join().unwrap()),
        "ACK 3 ok\n"
    );
    let r = proxy.report_until(|r| r["connections_active"] == 0);
    assert_eq!(r["connections_closed"]["client_closed"], 4, "{r}");
    assert_eq!(n(&r, "upstream_queue_timeouts"), 0, "{r}");
    assert_eq!(*seen.lock().unwrap(), vec![1, 3]);
}

/// Server sockets on `port` in ESTABLISHED only: the connections the proxy
/// still holds open (one it closed is in CLOSE_WAIT on a never-closing
/// server).
fn server_sockets_open(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let local = format!(":{port:04X}");
    table
        .lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3 && f[1].ends_with(&local) && f[3] == "01"
        })
        .count()
}

/// One gauge's value from `/metrics` (a line `NAME VALUE`).
fn metric(proxy: &Proxy, name: &str) -> u64 {
    let mut s = std::net::TcpStream::connect_timeout(&proxy.admin.unwrap(), WAIT).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(b"GET /metrics?format=prometheus HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let (body, _) = read_to_eof(&mut s);
    let body = String::from_utf8_lossy(&body).into_owned();
    let prefix = format!("{name} ");
    body.lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} missing in /metrics: {body}"))
}

#[test]
fn after_a_burst_the_pool_holds_at_most_its_size_spares_included() {
    let server = FooServer::start(ServerOpts {
        never_close: true,
        ..ServerOpts::default()
    });
    let proxy = Proxy::start(
        &server.addr.to_string(),
        &["--upstream-pool=8", "--upstream-spare=2"],
    );
    let addr = proxy.addr;
    // A spare still connecting while the burst's connections come back is
    // what overfilled the pool; it takes many rounds to show.
    const ROUNDS: u64 = 30;
    let clients = 60u64;
    for round in 0..ROUNDS {
        let threads: Vec<_> = (0..clients)
            .map(|i| {
                thread::spawn(move || {
                    let seq = 1_000 * round + 2 * i + 1;
                    let mut c = std::net::TcpStream::connect_timeout(&addr, WAIT).unwrap();
                    c.set_read_timeout(Some(WAIT)).unwrap();
                    c.write_all(&requests(seq..=seq + 1)).unwrap();
                    c.shutdown(Shutdown::Write).unwrap();
                    let (got, eof) = read_to_eof(&mut c);
                    assert!(eof, "round {round} client {i}: no clean end");
                    assert_eq!(got, answers(seq..=seq + 1), "round {round} client {i}");
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        // Settled: no client left, no spare still connecting.
        let r = proxy.report_until(|r| {
            r["connections_active"] == 0
                && r["upstream_pool_in_use"] == 0
                && r["upstream_connections"] == r["upstream_pool_idle"]
        });
        assert_eq!(
            n(&r, "upstream_connections"),
            n(&r, "upstream_pool_idle"),
            "{r}"
        );
        assert!(n(&r, "upstream_pool_idle") <= 8, "round {round}: {r}");
        assert!(n(&r, "upstream_pool_idle") >= 2, "round {round}: {r}");
        let idle = metric(&proxy, "foo_upstream_pool_idle");
        assert!(idle <= 8, "round {round}: /metrics says {idle} idle");
        assert_eq!(metric(&proxy, "foo_upstream_pool_size"), 8);
        // The server's side of a connection the proxy just closed leaves
        // ESTABLISHED a few ms after the proxy's counters say so: waited
        // for, bounded. (Seen as 44 of them at once, 8 half a second later,
        // the proxy's descriptors unchanged: a lag, not a leak.)
        let want = n(&r, "upstream_connections");
        let held = util::wait_until(|| {
            let held = server_sockets_open(server.port());
            (held as u64 == want).then_some(held)
        })
        .unwrap_or_else(|| server_sockets_open(server.port()));
        assert_eq!(held as u64, want, "round {round}");
        assert!(
            held <= 8,
            "round {round}: the server holds {held} open sockets"
        );
    }
    let r = proxy.report();
    assert_eq!(n(&r, "msg_req"), 2 * clients * ROUNDS);
    assert_eq!(n(&r, "requests_unanswered"), 0);
    assert_eq!(n(&r, "upstream_pool_discarded_unclean_end"), 0);
}

/// A listener whose accept queue is full: a connect to it stays pending
/// (the kernel drops the SYNs) until the connector gives up.
fn unanswering_listener() -> (socket2::Socket, Vec<std::net::TcpStream>) {
    use socket2::{Domain, Socket, Type};
    let sock = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    let any: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
    sock.bind(&any.into()).unwrap();
    sock.listen(0).unwrap();
    let addr = sock.local_addr().unwrap().as_socket().unwrap();
    let fill = (0..2)
        .filter_map(|_| {
            std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()
        })
        .collect();
    (sock, fill)
}

#[test]
fn a_pair_closed_during_its_own_connect_is_no_pool_discard() {
    // Refused: the connect fails.
    let dead = format!("127.0.0.1:{}", util::dead_port());
    let proxy = Proxy::start(&dead, &["--upstream-pool=4"]);
    for i in 1..=3 {
        let mut c = proxy.connect();
        c.write_all(&requests(i..=i)).unwrap();
        let (got, _) = read_to_eof(&mut c);
        assert!(got.is_empty());
    }
    let r = proxy.report_until(|r| r["connections_active"] == 0);
    assert_eq!(r["connections_closed"]["upstream_refused"], 3, "{r}");
    assert_discards(&r, &[]);
    assert_eq!(n(&r, "upstream_pool_in_use"), 0);
    assert_eq!(n(&r, "upstream_connections"), 0);

    // Timed out, and left by its client (a reset), while connecting.
    let (listener, _fill) = unanswering_listener();
    let addr = listener.local_addr().unwrap().as_socket().unwrap();
    let proxy = Proxy::start(
        &addr.to_string(),
        &["--upstream-pool=4", "--connect-timeout=300ms"],
    );
    let mut c = proxy.connect();
    c.write_all(&requests(1..=1)).unwrap();
    let (got, _) = read_to_eof(&mut c);
    assert!(got.is_empty());
    let r = proxy.report_until(|r| r["connections_active"] == 0);
    assert_eq!(r["connections_closed"]["connect_timeout"], 1, "{r}");
    let mut c = proxy.connect();
    c.write_all(&requests(2..=2)).unwrap();
    proxy.report_until(|r| r["upstream_pool_in_use"] == 1);
    socket2::SockRef::from(&c)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(c);
    let r = proxy.report_until(|r| r["connections_active"] == 0);
    assert_eq!(r["connections_closed"]["client_reset"], 1, "{r}");
    assert_discards(&r, &[]);
    assert_eq!(n(&r, "upstream_pool_in_use"), 0);
    assert_eq!(n(&r, "upstream_connections"), 0);
}

#[test]
fn a_connection_given_back_to_a_full_pool_is_counted_pool_full() {
    let server = FooServer::start(ServerOpts::default());
    let proxy = Proxy::start(&server.addr.to_string(), &["--upstream-pool=1"]);
    // Two sessions at once: each has its own connection.
    let mut a = proxy.connect();
    let mut b = proxy.connect();
    for (c, seq) in [(&mut a, 1), (&mut b, 2)] {
        c.write_all(&requests(seq..=seq)).unwrap();
        let mut line = String::new();
        BufReader::new(&*c).read_line(&mut line).unwrap();
    }
    for c in [&mut a, &mut b] {
        c.shutdown(Shutdown::Write).unwrap();
        let (_, eof) = read_to_eof(c);
        assert!(eof);
    }
    let r = proxy.report_until(|r| r["connections_active"] == 0);
    assert_discards(&r, &[("pool_full", 1)]);
    assert_eq!(n(&r, "upstream_pool_idle"), 1);
    assert_eq!(server.connections.load(Ordering::Relaxed), 2);
}

#[test]
fn a_spare_whose_connect_fails_is_counted_connect_failed_only() {
    let dead = format!("127.0.0.1:{}", util::dead_port());
    let proxy = Proxy::start(&dead, &["--upstream-pool=2", "--upstream-spare=1"]);
    let r = proxy.report_until(|r| r["upstream_pool_discarded_connect_failed"] != 0);
    let failed = n(&r, "upstream_pool_discarded_connect_failed");
    // One spare, then the 1 s back-off: one or two by now.
    assert!((1..=2).contains(&failed), "{r}");
    assert_discards(&r, &[("connect_failed", failed)]);
    assert_eq!(n(&r, "upstream_errors"), 0, "no client was refused: {r}");
    // Logged, throttled: one line however many spares fail.
    let warned = format!("cannot open a spare connection to upstream {dead}: connection refused");
    let log = proxy.stderr_has(&warned);
    assert_eq!(log.matches(&warned).count(), 1, "{log}");
}

#[test]
fn spares_taken_by_clients_are_replaced_at_once() {
    let server = FooServer::start(ServerOpts::default());
    let proxy = Proxy::start(
        &server.addr.to_string(),
        &["--upstream-pool=4", "--upstream-spare=2"],
    );
    proxy.report_until(|r| r["upstream_pool_spare"] == 2 && r["upstream_connections"] == 2);
    // Two clients take the two spares and stay: two new spares, no session
    // having ended.
    let held: Vec<_> = (1..=2u64)
        .map(|seq| {
            let mut c = proxy.connect();
            c.write_all(&requests(seq..=seq)).unwrap();
            let mut line = String::new();
            BufReader::new(&c).read_line(&mut line).unwrap();
            c
        })
        .collect();
    let r = proxy.report_until(|r| r["upstream_pool_spare"] == 2 && r["upstream_pool_in_use"] == 2);
    assert_eq!(n(&r, "upstream_pool_reused"), 2, "{r}");
    assert_eq!(n(&r, "upstream_pool_in_use"), 2, "{r}");
    assert_eq!(n(&r, "upstream_pool_spare"), 2, "{r}");
    assert_eq!(n(&r, "upstream_connections"), 4, "{r}");
    drop(held);
}

/// A loopback listener on `ip` whose accept queue is full, so further
/// connects hang in SYN_SENT (a real connect timeout on loopback).
fn black_hole(ip: &str) -> (socket2::Socket, Vec<std::net::TcpStream>) {
    use socket2::{Domain, Socket, Type};
    let sock = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    let addr: std::net::SocketAddr = format!("{ip}:0").parse().unwrap();
    sock.bind(&addr.into()).unwrap();
    sock.listen(0).unwrap();
    let addr = sock.local_addr().unwrap().as_socket().unwrap();
    let mut fill = Vec::new();
    for _ in 0..8 {
        match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            Ok(s) => fill.push(s),
            Err(_) => break,
        }
    }
    (sock, fill)
}

/// Whether this machine lets an unprivileged process have its own user and
/// mount namespace (`unshare -rm`), where the test gives the proxy a hosts
/// file of its own.
fn private_mounts() -> bool {
    Command::new("unshare")
        .args(["-rm", "true"])
        .status()
        .is_ok_and(|s| s.success())
}

/// A proxy forwarding to a name that resolves to 127.0.0.1 then 127.0.0.2
/// (port `port`), through a hosts file only it sees.
fn two_address_proxy(test: &str, port: u16, extra: &str) -> Proxy {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(test);
    std::fs::create_dir_all(&dir).unwrap();
    let hosts = dir.join("hosts");
    let name = "two-addresses.foo-proxy.test";
    std::fs::write(&hosts, format!("127.0.0.1 {name}\n127.0.0.2 {name}\n")).unwrap();
    let bin = env!("CARGO_BIN_EXE_foo-proxy");
    let script = format!(
        "mount --bind {} /etc/hosts && exec {bin} -listen 127.0.0.1:0 -forward {name}:{port} \
         -http 127.0.0.1:0 -recovery-path= {extra}",
        hosts.display()
    );
    Proxy::spawn(Command::new("unshare").args(["-rm", "sh", "-c", &script]))
}

#[test]
fn spares_move_on_to_the_second_address_when_the_first_times_out_or_refuses() {
    let test = "spares_move_on_to_the_second_address_when_the_first_times_out_or_refuses";
    if !private_mounts() {
        eprintln!("SKIPPED: {test}: `unshare -rm` is not allowed here");
        return;
    }
    for (mode, why) in [
        ("timeout", "connect timed out"),
        ("refused", "connection refused"),
    ] {
        // The first address drops SYNs (its accept queue is full) or has
        // no listener; the second, same port, is a server.
        let (hole, port) = match mode {
            "timeout" => {
                let hole = black_hole("127.0.0.1");
                let port = hole.0.local_addr().unwrap().as_socket().unwrap().port();
                (Some(hole), port)
            }
            _ => (None, util::dead_port()),
        };
        let second = TcpListener::bind(("127.0.0.2", port)).unwrap();
        let server = FooServer::serve(second, ServerOpts::default());
        let proxy = two_address_proxy(
            &format!("{test}-{mode}"),
            port,
            "--upstream-pool 2 --upstream-spare 2 --connect-timeout 300ms",
        );
        let r =
            proxy.report_until(|r| r["upstream_pool_spare"] == 2 && r["upstream_pool_idle"] == 2);
        assert_eq!(
            n(&r, "upstream_pool_idle"),
            2,
            "{mode}: no spare got through: {r}"
        );
        // Each spare moved on once, as a client does, and none was lost.
        assert_eq!(n(&r, "upstream_connect_retries"), 2, "{mode}: {r}");
        assert_eq!(n(&r, "upstream_connections_opened"), 2, "{mode}: {r}");
        assert_eq!(n(&r, "upstream_errors"), 0, "{mode}: {r}");
        assert_discards(&r, &[]);
        // The kernel completes a handshake before the server's accept
        // counts it: wait for the count, then check that it is exactly two.
        let accepted = util::wait_until(|| {
            let n = server.connections.load(Ordering::Relaxed);
            (n >= 2).then_some(n)
        });
        assert_eq!(accepted, Some(2), "{mode}");
        // Logged like a client's retry: one throttled line for both.
        let warned = format!("upstream 127.0.0.1:{port} failed ({why}");
        let log = proxy.stderr_has(&warned);
        assert_eq!(log.matches(&warned).count(), 1, "{mode}: {log}");
        // A client is served on a spare at once.
        assert_eq!(session(&proxy, &requests(1..=2)), answers(1..=2), "{mode}");
        let r = proxy.report();
        assert_eq!(n(&r, "upstream_pool_reused"), 1, "{mode}: {r}");
        drop(hole);
    }
}

/// A network namespace this test made, deleted on drop (declare it before
/// the processes inside: locals drop in reverse order).
struct Netns(String);

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// A child process killed on drop.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `args` inside namespace `ns`, bounded by `timeout(1)`; whether it
/// succeeded, and its stdout.
fn in_ns(ns: &str, within_s: u32, args: &[&str]) -> (bool, String) {
    let out = Command::new("timeout")
        .arg(within_s.to_string())
        .args(["ip", "netns", "exec", ns])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// A client session inside the namespace (Python, as CI has it): sends
/// `REQ seq`, half-closes if asked (`half-close`, else `open`: no fin
/// timeout then bounds the wait), reads to the end; prints what it got and after
/// how many milliseconds it ended ("hang" if not within 20 s).
const NS_CLIENT: &str = "
import socket, sys, time
s = socket.create_connection(('127.0.0.1', int(sys.argv[1])), 5)
s.settimeout(20)
t = time.time()
s.sendall(b'REQ %s x\\n' % sys.argv[2].encode())
if sys.argv[3] == 'half-close':
    s.shutdown(socket.SHUT_WR)
got = b''
try:
    while True:
        d = s.recv(4096)
        if not d:
            break
        got += d
    end = 'eof'
except socket.timeout:
    end = 'hang'
except OSError:
    end = 'reset'
print('%s %d %r' % (end, (time.time() - t) * 1000, got))
";

#[test]
fn a_pooled_connection_to_a_server_gone_silent_fails_no_later_than_a_connect_and_is_found_idle() {
    let test = "a_pooled_connection_to_a_server_gone_silent_fails_no_later_than_a_connect_and_is_found_idle";
    let ns = format!("fooP-{}", std::process::id());
    let made = Command::new("ip").args(["netns", "add", &ns]).status();
    if !made.is_ok_and(|s| s.success()) {
        eprintln!("SKIPPED: {test}: `ip netns add` is not permitted here");
        return;
    }
    let _ns = Netns(ns.clone());
    let (up, log) = in_ns(&ns, 10, &["ip", "link", "set", "lo", "up"]);
    assert!(up, "{log}");
    let (nft, log) = in_ns(
        &ns,
        10,
        &[
            "nft",
            "add table inet t; add chain inet t in { type filter hook input priority 0; }",
        ],
    );
    if !nft {
        eprintln!("SKIPPED: {test}: nft does not work here: {log}");
        return;
    }
    let server_bin = util::tool("foo-server");
    let server_bin = server_bin.to_str().unwrap();
    let _server = Killed(
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &ns,
                server_bin,
                "-listen",
                "127.0.0.1:7101",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let bin = env!("CARGO_BIN_EXE_foo-proxy");
    let proxy = |port: &str, idle: &str| {
        Proxy::spawn(Command::new("ip").args([
            "netns",
            "exec",
            &ns,
            bin,
            "-listen",
            port,
            "-forward",
            "127.0.0.1:7101",
            "-http",
            "off",
            "-recovery-path=",
            "--upstream-pool",
            "1",
            "--connect-timeout",
            "1s",
            "--idle-timeout",
            "60s",
            "--upstream-idle-timeout",
            idle,
        ]))
    };
    // One to lend the dead connection, one to keep it idle.
    let lending = proxy("127.0.0.1:7100", "60s");
    let idling = proxy("127.0.0.1:7102", "8s");
    for (port, p) in [("7100", &lending), ("7102", &idling)] {
        let mut session = None;
        for _ in 0..50 {
            let (ok, out) = in_ns(
                &ns,
                25,
                &["python3", "-c", NS_CLIENT, port, "1", "half-close"],
            );
            // foo-server NAKs one request in eight: any answer will do (a
            // retry after a NAK made a second pooled session).
            if ok && (out.contains("ACK 1") || out.contains("NAK 1")) {
                session = Some(out);
                break;
            }
            thread::sleep(Duration::from_millis(100));
        }
        assert!(session.is_some(), "port {port}: the first session failed");
        p.report_until(|r| r["upstream_pool_idle"] == 1);
    }
    // The server goes silent: every packet to or from it is dropped, no
    // FIN, no reset (a crash, a firewall or NAT forgetting the flow).
    let (dropped, log) = in_ns(
        &ns,
        10,
        &[
            "nft",
            "add rule inet t in tcp dport 7101 drop; add rule inet t in tcp sport 7101 drop",
        ],
    );
    assert!(dropped, "{log}");
    // The next client is lent the dead connection: it must end about when
    // a fresh connect would time out (1 s), not at the idle timeout (60 s).
    let (_, out) = in_ns(&ns, 25, &["python3", "-c", NS_CLIENT, "7100", "2", "open"]);
    let mut words = out.split_whitespace();
    let end = words.next().unwrap_or("");
    let ms: u64 = words
        .next()
        .and_then(|w| w.parse().ok())
        .unwrap_or(u64::MAX);
    assert!(
        end == "eof" || end == "reset",
        "the client hung on the dead pooled connection: {out}"
    );
    assert!(ms < 10_000, "ended only after {ms} ms: {out}");
    eprintln!("{test}: the client lent the dead connection ended after {ms} ms ({end})");
    let r = lending.report_until(|r| r["connections_active"] == 0);
    assert_eq!(n(&r, "upstream_pool_reused"), 1, "{r}");
    // The idle one is found dead by keepalive (within about half of its
    // 8 s idle timeout), not kept until it expires.
    let r = idling.report_until(|r| r["upstream_pool_discarded_server_closed"] == 1);
    assert_discards(&r, &[("server_closed", 1)]);
}

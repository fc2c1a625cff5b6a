//! The proxy's main job, end to end: the real binary on loopback between
//! real sockets.

mod util;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::Ordering;
use std::thread;
use std::time::{Duration, Instant};

use util::*;

fn upstream(server: &FooServer) -> String {
    server.addr.to_string()
}

#[test]
fn byte_at_a_time_client_through_fragmenting_server() {
    let server = FooServer::start(ServerOpts {
        fragment: true,
        ..Default::default()
    });
    let proxy = Proxy::start(&upstream(&server), &[]);
    let mut client = proxy.connect();
    let reqs = requests(1..=40);
    for byte in &reqs {
        client.write_all(&[*byte]).unwrap();
    }
    let expected = answers(1..=40);
    let got = read_exact_timeout(&mut client, expected.len());
    assert_eq!(
        String::from_utf8_lossy(&got),
        String::from_utf8_lossy(&expected)
    );
    let r = proxy.report_until(|r| r["msg_total"] == 80);
    assert_eq!(r["msg_req"], 40);
    assert_eq!(r["msg_ack"], 35);
    assert_eq!(r["msg_nak"], 5);
    assert_eq!(r["msg_total"], 80);
    assert_eq!(r["msg_invalid"], 0);
    assert_eq!(r["bytes_client_to_server"], reqs.len() as u64);
    assert_eq!(r["bytes_server_to_client"], expected.len() as u64);
}

#[test]
fn five_thousand_pipelined_requests_in_one_write_are_answered_in_order() {
    let server = FooServer::start(ServerOpts::default());
    let proxy = Proxy::start(&upstream(&server), &[]);
    let mut client = proxy.connect();
    client.write_all(&requests(1..=5000)).unwrap();
    let expected = answers(1..=5000);
    let got = read_exact_timeout(&mut client, expected.len());
    assert!(got == expected, "answers differ or arrived out of order");
    let r = proxy.report_until(|r| r["msg_total"] == 10_000);
    assert_eq!(r["msg_req"], 5000);
    assert_eq!(
        r["msg_ack"].as_u64().unwrap() + r["msg_nak"].as_u64().unwrap(),
        5000
    );
}

#[test]
fn server_that_speaks_first_is_relayed_at_once() {
    let server = FooServer::start(ServerOpts {
        greeting: Some(b"ACK 0 hello\n".to_vec()),
        ..Default::default()
    });
    let proxy = Proxy::start(&upstream(&server), &[]);
    let mut client = proxy.connect();
    // The client sends nothing: a lockstep relay would never deliver this.
    let got = read_exact_timeout(&mut client, 12);
    assert_eq!(got, b"ACK 0 hello\n");
    let r = proxy.report_until(|r| r["msg_ack"] == 1);
    assert_eq!(r["msg_ack"], 1);
}

#[test]
fn two_hundred_concurrent_connections_give_exact_counts() {
    let server = FooServer::start(ServerOpts {
        fragment: true,
        ..Default::default()
    });
    let proxy = Proxy::start(&upstream(&server), &[]);
    let addr = proxy.addr;
    let handles: Vec<_> = (0..200)
        .map(|i| {
            thread::spawn(move || {
                let mut c = TcpStream::connect_timeout(&addr, WAIT).unwrap();
                c.set_read_timeout(Some(WAIT)).unwrap();
                let n = 10 + (i % 7);
                c.write_all(&requests(1..=n)).unwrap();
                // One malformed line per connection, answered NAK 0.
                c.write_all(b"HELLO\n").unwrap();
                let mut expected = answers(1..=n);
                expected.extend_from_slice(b"NAK 0 ERRDECODE\n");
                let got = read_exact_timeout(&mut c, expected.len());
                assert_eq!(got, expected);
                n
            })
        })
        .collect();
    let reqs: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
    let naks_from_server = server.naks.load(Ordering::Relaxed);
    let acks_from_server = server.acks.load(Ordering::Relaxed);
    let r = proxy.report_until(|r| r["msg_ack"].as_u64() == Some(acks_from_server));
    assert_eq!(r["msg_req"], reqs);
    assert_eq!(r["msg_ack"], acks_from_server);
    assert_eq!(r["msg_nak"], naks_from_server);
    assert_eq!(r["msg_total"], reqs + acks_from_server + naks_from_server);
    assert_eq!(r["msg_invalid"], 200);
    assert_eq!(r["msg_invalid_client_to_server"], 200);
    assert_eq!(r["connections_total"], 200);
}

#[test]
fn upstream_down_closes_the_client_fast_then_recovers() {
    let port = dead_port();
    let mut proxy = Proxy::start(&format!("127.0.0.1:{port}"), &[]);
    let mut client = proxy.connect();
    let started = Instant::now();
    let mut buf = [0u8; 16];
    let n = client.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "expected EOF from a proxy whose upstream is down");
    // Fast means on the refusal, not at the 5 s connect timeout (the log
    // below names the refusal); not a tighter clock bound, which a loaded
    // machine overran.
    assert!(
        started.elapsed() < Duration::from_millis(4900),
        "took {:?}",
        started.elapsed()
    );
    assert!(proxy.alive());
    // The client stays counted until it closes too (the lingering close).
    drop(client);
    let r = proxy.report_until(|r| r["upstream_errors"] == 1 && r["connections_active"] == 0);
    assert_eq!(r["upstream_errors"], 1);
    assert_eq!(r["connections_active"], 0);
    proxy.stderr_has("cannot reach upstream");

    let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
    let _server = FooServer::serve(listener, ServerOpts::default());
    let mut client = proxy.connect();
    client.write_all(b"REQ 1 back\n").unwrap();
    assert_eq!(read_exact_timeout(&mut client, 9), b"ACK 1 ok\n");
}

#[test]
fn upstream_killed_mid_session_delivers_pending_then_eof() {
    let server = FooServer::start(ServerOpts::default());
    let mut proxy = Proxy::start(&upstream(&server), &[]);
    let mut client = proxy.connect();
    client.write_all(&requests(1..=3)).unwrap();
    let expected = answers(1..=3);
    let got = read_exact_timeout(&mut client, expected.len());
    assert_eq!(got, expected);
    server.kill_connections();
    let (rest, eof) = read_to_eof(&mut client);
    assert!(rest.is_empty());
    assert!(eof, "client must see EOF after the upstream died");
    assert!(proxy.alive());
    let r = proxy.report_until(|r| r["connections_active"] == 0);
    assert_eq!(r["connections_active"], 0);
}

#[test]
fn client_half_close_gets_every_reply_then_eof_from_a_server_that_never_closes() {
    let server = FooServer::start(ServerOpts {
        never_close: true,
        fragment: true,
        ..Default::default()
    });
    // A long fin timeout: the close must come from counting the answers.
    let proxy = Proxy::start(&upstream(&server), &["--fin-timeout", "30s"]);
    let baseline = proxy.fd_count();
    let mut client = proxy.connect();
    client.write_all(&requests(1..=100)).unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    let started = Instant::now();
    let (got, eof) = read_to_eof(&mut client);
    assert_eq!(got, answers(1..=100));
    // The EOF within read_to_eof's 10 s wait is not the 30 s fin timeout:
    // no tighter clock bound, which a loaded machine could overrun.
    assert!(eof, "no close within {WAIT:?}: {:?}", started.elapsed());
    let r = proxy.report_until(|r| r["connections_active"] == 0);
    assert_eq!(r["connections_active"], 0);
    assert_eq!(proxy.fd_count(), baseline, "both sockets must be closed");
}

#[test]
fn half_close_with_unanswered_lines_ends_at_the_fin_timeout() {
    // A sink that reads and never answers nor closes.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = [0u8; 1024];
        while let Ok(n) = s.read(&mut buf) {
            if n == 0 {
                thread::sleep(Duration::from_secs(30));
                return;
            }
        }
    });
    let proxy = Proxy::start(&addr.to_string(), &["--fin-timeout", "300ms"]);
    let mut client = proxy.connect();
    client.write_all(b"REQ 1 anyone\n").unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    let started = Instant::now();
    let (_, eof) = read_to_eof(&mut client);
    assert!(eof);
    let took = started.elapsed();
    // At the flag's 300 ms, not the default 5 s; the upper bound is as
    // generous as that allows, for a loaded machine's late timers.
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_millis(4900),
        "{took:?}"
    );
}

#[test]
fn no_fd_leak_after_500_short_connections() {
    let server = FooServer::start(ServerOpts::default());
    let proxy = Proxy::start(&upstream(&server), &[]);
    let baseline = proxy.fd_count();
    for i in 0..500u64 {
        let mut c = proxy.connect();
        match i % 3 {
            0 => {
                c.write_all(b"REQ 1 x\n").unwrap();
                assert_eq!(read_exact_timeout(&mut c, 9), b"ACK 1 ok\n");
            }
            1 => {
                c.write_all(b"REQ 2 y\n").unwrap();
                c.shutdown(Shutdown::Write).unwrap();
                let (got, eof) = read_to_eof(&mut c);
                assert_eq!(got, b"ACK 2 ok\n");
                assert!(eof);
            }
            _ => {}
        }
    }
    let r = proxy.report_until(|r| r["connections_active"] == 0);
    assert_eq!(r["connections_active"], 0);
    assert_eq!(r["connections_total"], 500);
    let deadline = Instant::now() + WAIT;
    while proxy.fd_count() != baseline && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(proxy.fd_count(), baseline);
}

/// Accepts one connection and writes `ACK` lines until told to stop.
fn flooding_server() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicU64>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let written = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = written.clone();
    thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.set_write_timeout(Some(Duration::from_secs(3))).unwrap();
        let chunk = "ACK 1 flood\n".repeat(5000);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            match s.write(chunk.as_bytes()) {
                Ok(n) => {
                    counter.fetch_add(n as u64, Ordering::Relaxed);
                }
                Err(_) => thread::sleep(Duration::from_millis(10)),
            }
        }
    });
    (addr, written)
}

#[test]
fn a_client_that_never_reads_keeps_proxy_memory_bounded() {
    let (addr, written) = flooding_server();
    let proxy = Proxy::start(&addr.to_string(), &[]);
    let client = proxy.connect();
    let before = proxy.rss_kib();
    // Let the flood fill every buffer on the way.
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut last = 0;
    while Instant::now() < deadline {
        thread::sleep(Duration::from_millis(200));
        last = written.load(Ordering::Relaxed);
    }
    thread::sleep(Duration::from_millis(500));
    // The server is stuck: nothing more moved since the proxy stopped reading.
    assert!(written.load(Ordering::Relaxed) - last < 1 << 20);
    let r = proxy.report();
    let relayed = r["bytes_server_to_client"].as_u64().unwrap();
    let buffered = r["buffered_bytes"].as_u64().unwrap();
    assert!(buffered <= 64 * 1024, "buffered {buffered}");
    // Kernel socket buffers hold a few MiB at most; the proxy did not read more.
    assert!(
        relayed < 32 << 20,
        "relayed {relayed} bytes to a client that reads nothing"
    );
    let after = proxy.rss_kib();
    assert!(
        after < before + 4096,
        "RSS grew from {before} KiB to {after} KiB"
    );
    drop(client);
}

#[test]
fn a_64_mib_line_without_newline_is_forwarded_exactly_with_bounded_memory() {
    const SIZE: usize = 64 << 20;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let sink = thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut buf = vec![0u8; 1 << 16];
        let (mut total, mut hash) = (0usize, 0xcbf2_9ce4_8422_2325u64);
        while let Ok(n) = s.read(&mut buf) {
            if n == 0 {
                break;
            }
            for b in &buf[..n] {
                hash = (hash ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3);
            }
            total += n;
        }
        (total, hash)
    });
    let proxy = Proxy::start(&addr.to_string(), &[]);
    let mut client = proxy.connect();
    let mut rng = Rng::new(7);
    let mut data = vec![0u8; SIZE];
    for b in data.iter_mut() {
        // Any byte but a newline.
        *b = (rng.next_u64() % 256) as u8;
        if *b == b'\n' {
            *b = b'x';
        }
    }
    data[..6].copy_from_slice(b"REQ 1 ");
    let mut expected_hash = 0xcbf2_9ce4_8422_2325u64;
    for b in &data {
        expected_hash = (expected_hash ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3);
    }
    let mut peak = 0;
    for chunk in data.chunks(1 << 20) {
        client.write_all(chunk).unwrap();
        peak = peak.max(proxy.rss_kib());
    }
    client.shutdown(Shutdown::Write).unwrap();
    let (total, hash) = sink.join().unwrap();
    assert_eq!(total, SIZE);
    assert_eq!(hash, expected_hash, "bytes changed on the way");
    assert!(peak < 16 * 1024, "peak RSS {peak} KiB");
    let r = proxy.report();
    assert_eq!(r["msg_total"], 0, "an unterminated line is no frame");
    assert_eq!(r["bytes_client_to_server"], SIZE as u64);
}

#[test]
fn binary_garbage_is_relayed_unchanged_and_counted_invalid() {
    let server = FooServer::start(ServerOpts::default());
    let proxy = Proxy::start(&upstream(&server), &[]);
    let mut client = proxy.connect();
    let mut rng = Rng::new(99);
    let mut garbage = Vec::new();
    for _ in 0..200 {
        // Never a valid type: the first byte is never R, A or N.
        garbage.push(0x80 | (rng.next_u64() as u8));
        for _ in 0..rng.below(40) {
            let b = rng.next_u64() as u8;
            garbage.push(if b == b'\n' { 0 } else { b });
        }
        garbage.push(b'\n');
    }
    client.write_all(&garbage).unwrap();
    let expected = b"NAK 0 ERRDECODE\n".repeat(200);
    assert_eq!(read_exact_timeout(&mut client, expected.len()), expected);
    let r = proxy.report_until(|r| r["msg_nak"] == 200);
    assert_eq!(r["msg_invalid_client_to_server"], 200);
    assert_eq!(r["msg_req"], 0);
    assert_eq!(r["bytes_client_to_server"], garbage.len() as u64);
    // The proxy is unaffected: a clean client right after works.
    let mut c = proxy.connect();
    c.write_all(b"REQ 1 fine\n").unwrap();
    assert_eq!(read_exact_timeout(&mut c, 9), b"ACK 1 ok\n");
}

#[test]
fn a_slow_upstream_gets_every_request_and_answers_stay_in_order() {
    let server = FooServer::start(ServerOpts {
        delay: Some(Duration::from_millis(300)),
        ..Default::default()
    });
    let proxy = Proxy::start(&upstream(&server), &[]);
    let mut client = proxy.connect();
    client.write_all(&requests(1..=50)).unwrap();
    // Nothing is dropped or timed out while the server takes its time.
    client.write_all(&requests(51..=60)).unwrap();
    let expected = answers(1..=60);
    assert_eq!(read_exact_timeout(&mut client, expected.len()), expected);
    let r = proxy.report();
    assert_eq!(r["msg_req"], 60);
    assert_eq!(r["upstream_errors"], 0);
}

#[test]
fn go_style_listen_and_forward_flags_work() {
    let server = FooServer::start(ServerOpts::default());
    let port = dead_port();
    let listen = format!("-listen=:{port}");
    let forward = format!("-forward=localhost:{}", server.port());
    let proxy = Proxy::start_with_args(&[&listen, &forward, "-recovery-path=", "-http=off"]);
    assert_eq!(proxy.addr.port(), port);
    assert!(
        proxy.addr.ip().is_unspecified(),
        ":PORT listens on every interface"
    );
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_read_timeout(Some(WAIT)).unwrap();
    c.write_all(b"REQ 9 go\n").unwrap();
    assert_eq!(read_exact_timeout(&mut c, 9), b"ACK 9 ok\n");
}

#[test]
fn sigusr1_reports_too_and_reports_go_to_stdout_only() {
    let server = FooServer::start(ServerOpts::default());
    let proxy = Proxy::start(&upstream(&server), &[]);
    let r1 = proxy.report_via("USR1");
    let r2 = proxy.report_via("USR2");
    for r in [&r1, &r2] {
        for key in [
            "msg_total",
            "msg_req",
            "msg_ack",
            "msg_nak",
            "request_rate_1s",
            "request_rate_10s",
            "response_rate_1s",
            "response_rate_10s",
            "msg_invalid",
            "connections_active",
            "connections_total",
            "upstream_errors",
            "bytes_client_to_server",
            "bytes_server_to_client",
            "uptime_secs",
        ] {
            assert!(r.get(key).is_some(), "missing {key} in {r}");
        }
    }
    assert!(proxy.stdout_lines().is_empty(), "one line per signal");
}

#[test]
fn rates_fall_to_zero_a_second_after_traffic_stops() {
    let server = FooServer::start(ServerOpts::default());
    // The 1 s rate holds the 50 only if the report comes within a second of
    // them, which a loaded machine does not promise: an attempt that took
    // longer tells nothing and is run again on a fresh proxy; one that was
    // quick enough must show the exact rates.
    for attempt in 1..=5 {
        let proxy = Proxy::start(&upstream(&server), &[]);
        let mut c = proxy.connect();
        let started = Instant::now();
        c.write_all(&requests(1..=50)).unwrap();
        read_exact_timeout(&mut c, answers(1..=50).len());
        let r = proxy.report();
        if started.elapsed() > Duration::from_millis(900) {
            eprintln!("attempt {attempt}: the report took {:?}", started.elapsed());
            continue;
        }
        assert_eq!(r["request_rate_1s"], 50.0);
        assert_eq!(r["response_rate_1s"], 50.0);
        assert_eq!(r["request_rate_10s"], 5.0);
        thread::sleep(Duration::from_millis(1100));
        let r = proxy.report();
        assert_eq!(r["request_rate_1s"], 0.0);
        assert_eq!(r["response_rate_1s"], 0.0);
        assert_eq!(r["request_rate_10s"], 5.0);
        return;
    }
    panic!("no attempt got its report within a second of its traffic");
}

#[test]
fn sigterm_on_an_idle_proxy_exits_zero_within_a_second() {
    let server = FooServer::start(ServerOpts::default());
    let mut proxy = Proxy::start(&upstream(&server), &[]);
    let started = Instant::now();
    proxy.signal("TERM");
    let code = proxy.wait_exit(WAIT);
    assert_eq!(code, Some(0), "{}", proxy.stderr());
    // Within a second when idle; the bound is what tells an exit at once
    // from one after a drain or linger (their 5 s defaults), generous for a
    // loaded machine; the log shows no drain either.
    assert!(
        started.elapsed() < Duration::from_millis(4900),
        "{:?}",
        started.elapsed()
    );
    assert!(!proxy.stderr().contains("draining"), "{}", proxy.stderr());
}

#[test]
fn a_client_reset_while_the_server_writes_does_not_kill_the_proxy() {
    let (addr, _) = flooding_server();
    let mut proxy = Proxy::start(&addr.to_string(), &[]);
    {
        let mut c = proxy.connect();
        let mut buf = [0u8; 1024];
        c.read_exact(&mut buf).unwrap();
        // Drop with unread data: the kernel sends a reset.
    }
    thread::sleep(Duration::from_millis(300));
    assert!(proxy.alive(), "SIGPIPE or a reset must not kill the proxy");
    let r = proxy.report_until(|r| r["connections_active"] == 0);
    assert_eq!(r["connections_active"], 0);
}

#[test]
fn nothing_is_logged_per_connection_at_the_default_level() {
    let server = FooServer::start(ServerOpts::default());
    let proxy = Proxy::start(&upstream(&server), &[]);
    for _ in 0..50 {
        let mut c = proxy.connect();
        c.write_all(b"REQ 1 x\n").unwrap();
        read_exact_timeout(&mut c, 9);
    }
    proxy.report_until(|r| r["connections_active"] == 0);
    let log = proxy.stderr();
    assert_eq!(log.lines().count(), 1, "{log}");
    assert!(log.contains(" INFO "), "{log}");
    assert!(log.contains(&server.addr.to_string()), "{log}");
}

fn run_cli(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_foo-proxy"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_bad_flag_is_one_line_and_exit_2() {
    for args in [&["-bogus"][..], &["-listen", "nope"], &["-forward=:70000"]] {
        let (code, out, err) = run_cli(args);
        assert_eq!(code, Some(2), "{args:?}");
        assert!(out.is_empty());
        assert_eq!(err.lines().count(), 1, "{err}");
    }
}

#[test]
fn a_bind_failure_names_the_address_and_exits_1() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (code, _, err) = run_cli(&["-listen", &addr, "-recovery-path="]);
    assert_eq!(code, Some(1));
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains(&addr) && err.contains("address already in use"),
        "{err}"
    );
}

#[test]
fn help_and_version_print_on_stdout() {
    let (code, out, _) = run_cli(&["-h"]);
    assert_eq!(code, Some(0));
    assert!(out.contains("-listen") && out.contains("-forward"));
    let (code, out, _) = run_cli(&["--version"]);
    assert_eq!(code, Some(0));
    assert!(out.starts_with("foo-proxy "));
}

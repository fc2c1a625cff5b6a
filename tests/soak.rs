//! Soak: 1,000 concurrent connections with random fragmentation,
//! pipelining, and early closes and resets from both sides. Afterwards the
//! replies of every completed connection are byte-exact, the counts are
//! exact, and descriptors, memory and gauges are back to where they were.

mod util;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use util::*;

const CONNECTIONS: u64 = 1000;

/// What one connection did, as counts the proxy must agree with.
#[derive(Default, Debug, Clone, Copy)]
struct Outcome {
    /// Requests and answers that certainly crossed the proxy.
    req: u64,
    resp: u64,
    /// Extra requests and answers that may or may not have crossed it
    /// (a reset races with them).
    req_maybe: u64,
    resp_maybe: u64,
}

/// Writes `bytes` in random small pieces.
fn write_fragmented(s: &mut TcpStream, bytes: &[u8], rng: &mut Rng) -> bool {
    let mut from = 0;
    while from < bytes.len() {
        let to = (from + 1 + rng.below(64) as usize).min(bytes.len());
        if s.write_all(&bytes[from..to]).is_err() {
            return false;
        }
        from = to;
    }
    true
}

fn reset(s: TcpStream) {
    let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
    drop(s);
}

fn lines(range: std::ops::RangeInclusive<u64>, last: &str) -> Vec<u8> {
    let end = *range.end();
    let mut out = Vec::new();
    for seq in range {
        let data = if seq == end {
            last.to_string()
        } else {
            format!("d{seq}")
        };
        out.extend_from_slice(format!("REQ {seq} {data}\n").as_bytes());
    }
    out
}

fn one_connection(addr: SocketAddr, i: u64, start: &Barrier) -> Outcome {
    let mut rng = Rng::new(i * 7919 + 1);
    let kind = rng.below(10);
    let n = 1 + rng.below(30);
    let mut s = TcpStream::connect_timeout(&addr, WAIT).expect("connect");
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.set_write_timeout(Some(WAIT)).unwrap();
    start.wait();
    match kind {
        // Normal: pipelined, fragmented, half-close, every answer, EOF.
        0..=5 => {
            assert!(write_fragmented(&mut s, &lines(1..=n, "end"), &mut rng));
            s.shutdown(Shutdown::Write).unwrap();
            let t = Instant::now();
            let (got, eof) = read_to_eof(&mut s);
            assert_eq!(
                got,
                answers(1..=n),
                "connection {i}: eof {eof} after {:?}",
                t.elapsed()
            );
            assert!(eof, "connection {i}: no EOF");
            Outcome {
                req: n,
                resp: n,
                ..Default::default()
            }
        }
        // Client reset after every answer arrived.
        6 => {
            assert!(write_fragmented(&mut s, &lines(1..=n, "end"), &mut rng));
            let want = answers(1..=n);
            assert_eq!(
                read_exact_timeout(&mut s, want.len()),
                want,
                "connection {i}"
            );
            reset(s);
            Outcome {
                req: n,
                resp: n,
                ..Default::default()
            }
        }
        // Client reset in mid-flight, after the first answer bytes.
        7 => {
            assert!(write_fragmented(&mut s, &lines(1..=n, "end"), &mut rng));
            let mut b = [0u8; 1];
            let _ = s.read(&mut b);
            reset(s);
            Outcome {
                req_maybe: n,
                resp_maybe: n,
                ..Default::default()
            }
        }
        // Server closes after answering the last request.
        8 => {
            assert!(write_fragmented(&mut s, &lines(1..=n, "BYE"), &mut rng));
            let (got, eof) = read_to_eof(&mut s);
            assert_eq!(got, answers(1..=n), "connection {i}");
            assert!(eof, "connection {i}: no EOF after the server closed");
            Outcome {
                req: n,
                resp: n,
                ..Default::default()
            }
        }
        // Server resets at the last request: the client gets a prefix of
        // the answers, then EOF or a reset, never garbage.
        _ => {
            let _ = write_fragmented(&mut s, &lines(1..=n, "RST"), &mut rng);
            let (got, _) = read_to_eof(&mut s);
            let full = answers(1..=n - 1);
            assert!(full.starts_with(&got), "connection {i}: not a prefix");
            Outcome {
                req_maybe: n,
                resp_maybe: n - 1,
                ..Default::default()
            }
        }
    }
}

/// Runs 1,000 concurrent connections (seeded by `round`) and checks the
/// counts they produced; returns the peak RSS seen.
fn round(proxy: &Proxy, server: &FooServer, round: u64) -> u64 {
    let addr = proxy.addr;
    let before = proxy.report();
    let start = Arc::new(Barrier::new(CONNECTIONS as usize));
    let handles: Vec<_> = (0..CONNECTIONS)
        .map(|i| {
            let start = start.clone();
            thread::Builder::new()
                .stack_size(128 * 1024)
                .spawn(move || one_connection(addr, round * CONNECTIONS + i, &start))
                .unwrap()
        })
        .collect();
    let outcomes: Vec<Outcome> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let rss_peak = proxy.rss_kib();

    let r = proxy.report_until(|r| r["connections_active"] == 0);
    let delta = |key: &str| r[key].as_u64().unwrap() - before[key].as_u64().unwrap();
    assert_eq!(r["connections_active"], 0, "a gauge drifted: {r}");
    assert_eq!(r["buffered_bytes"], 0);
    assert_eq!(delta("connections_total"), CONNECTIONS);
    assert_eq!(r["msg_invalid"], 0);
    assert_eq!(r["upstream_errors"], 0);
    let sum = |f: fn(&Outcome) -> u64| outcomes.iter().map(f).sum::<u64>();
    let (req, resp) = (sum(|o| o.req), sum(|o| o.resp));
    let (req_maybe, resp_maybe) = (sum(|o| o.req_maybe), sum(|o| o.resp_maybe));
    let got_req = delta("msg_req");
    let got_resp = delta("msg_ack") + delta("msg_nak");
    assert!(
        (req..=req + req_maybe).contains(&got_req),
        "msg_req {got_req} outside {req}..={}",
        req + req_maybe
    );
    assert!(
        (resp..=resp + resp_maybe).contains(&got_resp),
        "responses {got_resp} outside {resp}..={}",
        resp + resp_maybe
    );
    assert_eq!(delta("msg_total"), got_req + got_resp);
    // Every answer the proxy counted is one the server sent.
    let server_sent = server.acks.load(std::sync::atomic::Ordering::Relaxed)
        + server.naks.load(std::sync::atomic::Ordering::Relaxed);
    assert!(r["msg_ack"].as_u64().unwrap() + r["msg_nak"].as_u64().unwrap() <= server_sent);
    eprintln!(
        "soak round {round}: {CONNECTIONS} connections; {got_req} requests \
         ({req} certain), {got_resp} answers ({resp} certain); peak RSS {rss_peak} KiB"
    );
    rss_peak
}

#[test]
fn soak_a_thousand_connections_with_faults_from_both_sides() {
    let server = FooServer::start(ServerOpts {
        fragment: true,
        ..Default::default()
    });
    let proxy = Proxy::start(&server.addr.to_string(), &[]);
    let fds_start = proxy.fd_count();
    let rss_start = proxy.rss_kib();
    let started = Instant::now();

    // The first round sets the allocator's high-water mark (freed buffers and
    // the slab's capacity stay mapped); the baseline is taken after it.
    round(&proxy, &server, 0);
    let wait_fds = || {
        let deadline = Instant::now() + WAIT;
        while proxy.fd_count() != fds_start && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(50));
        }
        proxy.fd_count()
    };
    assert_eq!(wait_fds(), fds_start, "descriptors leaked");
    let rss_baseline = proxy.rss_kib();
    for n in 1..=4 {
        round(&proxy, &server, n);
        assert_eq!(wait_fds(), fds_start, "descriptors leaked in round {n}");
    }
    let rss_after = proxy.rss_kib();
    assert!(
        rss_after <= rss_baseline + 1024,
        "RSS grew from {rss_baseline} KiB to {rss_after} KiB over four rounds"
    );
    // Never near what 1,000 pairs holding buffers would cost (64 MiB+).
    assert!(
        rss_after < rss_start + 16 * 1024,
        "{rss_start} -> {rss_after} KiB"
    );
    eprintln!(
        "soak: 5 rounds in {:?}; RSS {rss_start} KiB at start, {rss_baseline} after \
         round 0, {rss_after} after round 4",
        started.elapsed()
    );
}

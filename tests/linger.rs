//! Lingering close: whenever the proxy closes a client, everything already
//! queued reaches it, then a FIN, and never a reset while the client still
//! sends; a cut stream (a cut inside an answer line, a server reset) ends
//! in a reset instead. Each scenario runs many times so that a race shows.

mod util;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use socket2::{Domain, Socket, Type};
use util::*;

const ANSWER_BYTES: usize = 128 * 1024;

/// One answer line of `len` bytes: `ACK 1 xxxx...\n`.
fn answer_of(len: usize) -> Vec<u8> {
    let mut out = b"ACK 1 ".to_vec();
    out.resize(len - 1, b'x');
    out.push(b'\n');
    out
}

fn big_answer() -> Vec<u8> {
    answer_of(ANSWER_BYTES)
}

/// A client socket with a 64 KiB receive buffer (set before connecting, so
/// the window is small from the start).
fn small_window_client(addr: SocketAddr) -> TcpStream {
    let sock = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(64 * 1024).unwrap();
    sock.set_send_buffer_size(16 * 1024).unwrap();
    sock.connect_timeout(&addr.into(), WAIT).unwrap();
    let s: TcpStream = sock.into();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.set_write_timeout(Some(WAIT)).unwrap();
    s
}

/// Reads slowly (8 KiB every 5 ms) until EOF or error. Returns the bytes
/// and how the stream ended.
fn read_slowly(s: &mut TcpStream) -> (Vec<u8>, Result<(), ErrorKind>) {
    read_paced(s, 8 * 1024, Duration::from_millis(5))
}

/// Reads at once until EOF or error.
fn read_fast(s: &mut TcpStream) -> (Vec<u8>, Result<(), ErrorKind>) {
    read_paced(s, 256 * 1024, Duration::ZERO)
}

fn read_paced(
    s: &mut TcpStream,
    chunk: usize,
    pause: Duration,
) -> (Vec<u8>, Result<(), ErrorKind>) {
    let mut got = Vec::new();
    let mut buf = vec![0u8; chunk];
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => return (got, Ok(())),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return (got, Err(e.kind())),
        }
        thread::sleep(pause);
    }
    (got, Err(ErrorKind::TimedOut))
}

/// How the test upstream behaves after its answer.
#[derive(Clone, Copy, PartialEq)]
enum After {
    /// Half-close, read to the proxy's EOF, close: a clean server close.
    Close,
    /// Keep the connection open and never answer again.
    Hang,
}

/// An upstream that answers `REQ 1` with `len` bytes, other lines not at all.
fn big_answer_server(after: After, len: usize) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { break };
            thread::spawn(move || {
                let mut line = Vec::new();
                let mut byte = [0u8; 1];
                while stream.read(&mut byte).unwrap_or(0) == 1 {
                    line.push(byte[0]);
                    if byte[0] == b'\n' {
                        break;
                    }
                }
                if line.starts_with(b"REQ 1 ") && stream.write_all(&answer_of(len)).is_err() {
                    return;
                }
                if after == After::Close {
                    let _ = stream.shutdown(Shutdown::Write);
                }
                let mut sink = vec![0u8; 64 * 1024];
                let _ = stream.set_read_timeout(Some(WAIT));
                while matches!(stream.read(&mut sink), Ok(n) if n > 0) {}
                if after == After::Hang {
                    // Like the reference: never closes, not even at EOF.
                    thread::sleep(WAIT);
                }
            });
        }
    });
    addr
}

#[test]
fn a_server_close_after_128_kib_reaches_a_slow_small_window_client_whole_then_eof() {
    let upstream = big_answer_server(After::Close, ANSWER_BYTES);
    let proxy = Proxy::start(&upstream.to_string(), &[]);
    for round in 0..30 {
        let mut c = small_window_client(proxy.addr);
        c.write_all(b"REQ 1 big\n").unwrap();
        let mut late = c.try_clone().unwrap();
        // One more line while the answer is still on its way, 10 to 300 ms
        // after it started: before and after the server's close.
        let writer = thread::spawn(move || {
            thread::sleep(Duration::from_millis(10 + 10 * round));
            let _ = late.write_all(b"REQ 2 late\n");
        });
        let (got, end) = read_slowly(&mut c);
        writer.join().unwrap();
        assert_eq!(
            end,
            Ok(()),
            "round {round}: no clean EOF after {} bytes",
            got.len()
        );
        assert_eq!(got.len(), ANSWER_BYTES, "round {round}");
        assert!(got == big_answer(), "round {round}: bytes differ");
    }
    drop(proxy);
}

#[test]
fn nothing_listening_upstream_a_client_that_sends_at_once_gets_eof_not_reset() {
    let proxy = Proxy::start(&format!("127.0.0.1:{}", dead_port()), &[]);
    for round in 0..50 {
        let mut c = proxy.connect();
        c.write_all(b"REQ 1 x\n").unwrap();
        let mut buf = [0u8; 16];
        match c.read(&mut buf) {
            Ok(0) => {}
            other => panic!("round {round}: expected EOF, got {other:?}"),
        }
    }
    let r = proxy.report_until(|r| r["connections_active"] == 0 && r["upstream_errors"] == 50);
    assert_eq!(r["upstream_errors"], 50, "{r}");
    assert_eq!(r["connections_active"], 0, "{r}");
}

#[test]
fn the_fin_timeout_delivers_queued_answers_then_eof() {
    const LEN: usize = 8 << 20;
    let upstream = big_answer_server(After::Hang, LEN);
    // 1 s: the lingering close lasts as long as the fin timeout, and the
    // client must read inside it; at 300 ms a loaded machine woke the
    // client after the window had closed.
    // 16 MiB held: the proxy reads the whole 8 MiB answer, so the cut
    // falls on a line boundary and what is queued is delivered, then a FIN
    // (a cut inside a line is a reset: see the tests below).
    let proxy = Proxy::start(
        &upstream.to_string(),
        &["--fin-timeout", "1s", "--buffer-size", "16MiB"],
    );
    for round in 0..10 {
        let before = relayed_so_far(&proxy);
        let mut c = small_window_client(proxy.addr);
        // The second line is never answered: the fin timeout ends the pair
        // while most of the 8 MiB answer still waits for the reader.
        c.write_all(b"REQ 1 big\nREQ 2 never\n").unwrap();
        c.shutdown(Shutdown::Write).unwrap();
        // The fin timeout fires at 1 s; the lingering close gives the
        // client another second to read what is queued.
        thread::sleep(Duration::from_millis(1200));
        let (got, end) = read_fast(&mut c);
        let what = format!("round {round}");
        assert_eq!(
            end,
            Ok(()),
            "{what}: no clean EOF after {} bytes",
            got.len()
        );
        let relayed = relayed_so_far(&proxy) - before;
        assert_eq!(
            got.len() as u64,
            relayed,
            "{what}: bytes read by the proxy were lost"
        );
        assert!(answer_of(LEN).starts_with(&got), "{what}: bytes differ");
    }
}

/// Sent by [`deaf_server`] as soon as a client connects: more than the
/// kernels' buffers hold (they grow to 4 MiB), so some of it always waits in
/// the proxy itself.
const GREETING: usize = 8 << 20;

/// An upstream that sends an 8 MiB greeting and never reads.
fn deaf_server() -> (SocketAddr, Arc<Mutex<Vec<TcpStream>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let held = Arc::new(Mutex::new(Vec::new()));
    let keep = held.clone();
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { break };
            let keep = keep.clone();
            thread::spawn(move || {
                let _ = stream.write_all(&answer_of(GREETING));
                keep.lock().unwrap().push(stream);
            });
        }
    });
    (addr, held)
}

/// Writes one line after the proxy has closed (its input then is unread,
/// which turns a plain close into a reset), then reads everything: a clean
/// EOF after every byte the proxy had read from the server (`relayed`; the
/// rest of the greeting was never read, the upstream is closed).
fn late_line_then_all_relayed_and_eof(c: &mut TcpStream, proxy: &Proxy, before: u64, what: &str) {
    c.write_all(b"REQ 9 late\n").unwrap();
    thread::sleep(Duration::from_millis(20));
    let (got, end) = read_fast(c);
    assert_eq!(
        end,
        Ok(()),
        "{what}: no clean EOF after {} bytes",
        got.len()
    );
    assert_all_relayed(&got, proxy, before, what);
}

/// `got` is a prefix of the greeting as long as what the proxy read from
/// the server since `before` (`bytes_server_to_client`).
fn assert_all_relayed(got: &[u8], proxy: &Proxy, before: u64, what: &str) {
    let relayed = proxy.report()["bytes_server_to_client"].as_u64().unwrap() - before;
    assert!(relayed > 0, "{what}: nothing relayed");
    assert_eq!(
        got.len() as u64,
        relayed,
        "{what}: bytes read by the proxy were lost"
    );
    assert!(answer_of(GREETING).starts_with(got), "{what}: bytes differ");
}

fn relayed_so_far(proxy: &Proxy) -> u64 {
    proxy.report()["bytes_server_to_client"].as_u64().unwrap()
}

#[test]
fn an_idle_timeout_delivers_what_is_queued_and_survives_late_input() {
    let (upstream, _held) = deaf_server();
    // 16 MiB held: the proxy reads the whole 8 MiB answer, so the cut
    // falls on a line boundary and what is queued is delivered, then a FIN
    // (a cut inside a line is a reset: see the tests below).
    let proxy = Proxy::start(
        &upstream.to_string(),
        &["--idle-timeout", "300ms", "--buffer-size", "16MiB"],
    );
    for round in 0..5 {
        let before = relayed_so_far(&proxy);
        let mut c = small_window_client(proxy.addr);
        // Nothing moves: the idle timeout fires while the client sleeps.
        thread::sleep(Duration::from_millis(600));
        late_line_then_all_relayed_and_eof(&mut c, &proxy, before, &format!("round {round}"));
    }
    let r = proxy.report_until(|r| r["connections_active"] == 0);
    assert_eq!(r["connections_active"], 0, "{r}");
}

#[test]
fn the_end_of_a_drain_delivers_what_is_queued_and_survives_late_input() {
    for round in 0..3 {
        let (upstream, _held) = deaf_server();
        // 16 MiB held: the proxy reads the whole 8 MiB answer, so the cut
        // falls on a line boundary and what is queued is delivered, then a FIN
        // (a cut inside a line is a reset: see the tests below).
        let mut proxy = Proxy::start(
            &upstream.to_string(),
            &["--drain-timeout", "200ms", "--buffer-size", "16MiB"],
        );
        let mut c = small_window_client(proxy.addr);
        // What the proxy read stops growing once its buffers are full:
        // polled until it holds still for 300 ms, not read once after a
        // fixed pause.
        let mut relayed = relayed_so_far(&proxy);
        let mut still_since = Instant::now();
        wait_for("the relayed bytes to settle", || {
            let now = relayed_so_far(&proxy);
            if now != relayed {
                (relayed, still_since) = (now, Instant::now());
            }
            relayed > 0 && still_since.elapsed() > Duration::from_millis(300)
        });
        proxy.signal("TERM");
        // The drain ends at 200 ms (its log line, polled for); the exit
        // linger gives 500 ms more, in which the late line comes.
        proxy.stderr_has("connection(s) still open");
        c.write_all(b"REQ 9 late\n").unwrap();
        let (got, end) = read_fast(&mut c);
        let what = format!("round {round}");
        assert_eq!(
            end,
            Ok(()),
            "{what}: no clean EOF after {} bytes",
            got.len()
        );
        assert_eq!(
            got.len() as u64,
            relayed,
            "{what}: bytes read by the proxy were lost"
        );
        assert!(
            answer_of(GREETING).starts_with(&got),
            "{what}: bytes differ"
        );
        drop(c);
        assert_eq!(proxy.wait_exit(WAIT), Some(0), "{}", proxy.stderr());
    }
}

#[test]
fn a_client_that_never_closes_is_released_at_the_linger_bound() {
    // A 2 s bound, so that the report below comes inside it even on a
    // loaded machine (at 300 ms it could come after).
    let proxy = Proxy::start(
        &format!("127.0.0.1:{}", dead_port()),
        &["--fin-timeout", "2s"],
    );
    let mut c = proxy.connect();
    let mut buf = [0u8; 16];
    let started = Instant::now();
    assert_eq!(c.read(&mut buf).unwrap(), 0, "EOF first");
    // The client holds its socket open: the proxy keeps it (counted) until
    // the bound, then lets go.
    assert_eq!(proxy.report()["connections_active"], 1);
    let r = proxy.report_until(|r| r["connections_active"] == 0);
    assert_eq!(r["connections_active"], 0, "{r}");
    // At the flag's bound, not the 5 s default: generous for late timers.
    assert!(
        started.elapsed() < Duration::from_millis(4900),
        "{:?}",
        started.elapsed()
    );
}

/// A server like the reference: answers every line, and a last line
/// without a newline once the client's EOF arrives; never closes.
fn answers_the_partial_line_at_eof() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { break };
            thread::spawn(move || {
                let mut all = Vec::new();
                let _ = stream.read_to_end(&mut all);
                for line in all.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                    let seq = String::from_utf8_lossy(line)
                        .split_whitespace()
                        .nth(1)
                        .unwrap_or("0")
                        .to_string();
                    let _ = stream.write_all(format!("ACK {seq} ok\n").as_bytes());
                }
                thread::sleep(WAIT);
            });
        }
    });
    addr
}

#[test]
fn a_half_close_after_a_partial_last_line_waits_for_its_answer() {
    let upstream = answers_the_partial_line_at_eof();
    // A 30 s fin timeout: an EOF within read_to_eof's 10 s wait can only
    // come from the answer (a clock bound below 3 s was what a loaded
    // machine could overrun).
    let proxy = Proxy::start(&upstream.to_string(), &["--fin-timeout", "30s"]);
    for round in 0..10 {
        let mut c = proxy.connect();
        c.write_all(b"REQ 6 a\nREQ 7 x").unwrap();
        c.shutdown(Shutdown::Write).unwrap();
        let (got, eof) = read_to_eof(&mut c);
        // The answer, not the fin timeout, ended it.
        assert!(eof, "round {round}");
        assert_eq!(got, b"ACK 6 ok\nACK 7 ok\n", "round {round}");
    }
}

#[test]
fn a_partial_last_line_is_answered_and_counted_as_a_partial_frame_not_a_request() {
    // The bytes after the last newline form no frame (the README's frame
    // definition), so `msg_req` stays below `msg_ack`; the unterminated
    // tail is counted by direction so that the totals can be reconciled.
    let upstream = answers_the_partial_line_at_eof();
    let proxy = Proxy::start(&upstream.to_string(), &["--fin-timeout", "3s"]);
    let mut c = proxy.connect();
    c.write_all(b"REQ 6 a\nREQ 7 x").unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    let (got, eof) = read_to_eof(&mut c);
    assert!(eof);
    assert_eq!(got, b"ACK 6 ok\nACK 7 ok\n");
    let r = proxy.report_until(|r| r["connections_active"] == 0);
    assert_eq!(r["msg_req"], 1, "{r}");
    assert_eq!(r["msg_ack"], 2, "{r}");
    assert_eq!(r["partial_frames_client_to_server"], 1, "{r}");
    assert_eq!(r["partial_frames_server_to_client"], 0, "{r}");
    // A whole last line leaves no partial frame.
    let mut c = proxy.connect();
    c.write_all(b"REQ 8 a\n").unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_to_eof(&mut c), (b"ACK 8 ok\n".to_vec(), true));
    let r = proxy.report_until(|r| r["connections_active"] == 0 && r["msg_req"] == 2);
    assert_eq!(r["partial_frames_client_to_server"], 1, "{r}");
}

#[test]
fn answers_queued_before_an_upstream_reset_reach_the_client_while_it_still_sends() {
    // The server answers the first 200 requests, then resets (SO_LINGER 0)
    // while the client is still pipelining: the proxy's next write upstream
    // fails, and the 200 answers already in its socket must still go out.
    const ANSWERED: usize = 200;
    const ROUNDS: usize = 20;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let upstream = listener.local_addr().unwrap().to_string();
    thread::spawn(move || {
        for stream in listener.incoming().take(ROUNDS) {
            let Ok(mut s) = stream else { return };
            s.set_read_timeout(Some(WAIT)).unwrap();
            let mut seen = Vec::new();
            let mut buf = [0u8; 65536];
            while seen.iter().filter(|&&b| b == b'\n').count() < ANSWERED {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => seen.extend_from_slice(&buf[..n]),
                }
            }
            s.write_all(&answers(1..=ANSWERED as u64)).unwrap();
            socket2::SockRef::from(&s)
                .set_linger(Some(Duration::ZERO))
                .unwrap();
        }
    });
    let proxy = Proxy::start(&upstream, &[]);
    let want = answers(1..=ANSWERED as u64);
    for round in 0..ROUNDS {
        let mut c = proxy.connect();
        c.set_read_timeout(Some(WAIT)).unwrap();
        let writer = c.try_clone().unwrap();
        let sender = thread::spawn(move || {
            let mut writer = writer;
            let until = Instant::now() + Duration::from_millis(300);
            let mut seq = 1u64;
            while Instant::now() < until {
                if writer.write_all(&requests(seq..=seq + 99)).is_err() {
                    return;
                }
                seq += 100;
            }
        });
        let mut got = Vec::new();
        let mut buf = [0u8; 65536];
        loop {
            match c.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
        let _ = sender.join();
        assert!(
            got.starts_with(&want),
            "round {round}: {} of {} answer bytes before the end",
            got.len(),
            want.len()
        );
    }
}

#[test]
fn a_half_closed_client_still_taking_its_answers_is_not_cut_at_the_fin_timeout() {
    // 8 MiB read at 64 KiB every 30 ms takes about 4 s: four fin timeouts.
    // Bytes move the whole time, so the deadline keeps moving with them;
    // the old fixed deadline cut the stream at 1 s plus the 1 s linger.
    const LEN: usize = 8 << 20;
    let upstream = big_answer_server(After::Hang, LEN);
    let proxy = Proxy::start(&upstream.to_string(), &["--fin-timeout", "1s"]);
    let mut c = small_window_client(proxy.addr);
    // The second line is never answered: the pair stays half-closed until
    // the fin timeout, which must count from the last byte moved.
    c.write_all(b"REQ 1 big\nREQ 2 never\n").unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    let (got, end) = read_paced(&mut c, 64 * 1024, Duration::from_millis(30));
    assert_eq!(end, Ok(()), "no clean EOF after {} bytes", got.len());
    assert_eq!(got.len(), LEN, "the stream was cut");
    assert!(answer_of(LEN) == got, "bytes differ");
}

#[test]
fn a_slow_steady_reader_gets_every_byte_past_the_fin_and_idle_timeouts() {
    // 8 MiB: the client reads 64 KiB every 400 ms for 3 s, then the rest at
    // full speed. Each pause frees less of the proxy's send buffer than the
    // kernel's writable mark needs, so the proxy sees no writable event for
    // longer than the 1 s timeout while the client still reads: the
    // deadline must try the write before it cuts (break-it round 9, F1:
    // the client was reset after 1.2 s with 194 KB delivered).
    const LEN: usize = 8 << 20;
    for (half_close, flags) in [
        (true, ["--fin-timeout", "1s"]),
        (false, ["--idle-timeout", "1s"]),
    ] {
        let upstream = big_answer_server(After::Hang, LEN);
        let proxy = Proxy::start(&upstream.to_string(), &flags);
        let mut c = small_window_client(proxy.addr);
        c.write_all(b"REQ 1 big\n").unwrap();
        if half_close {
            c.shutdown(Shutdown::Write).unwrap();
        }
        let what = flags.join(" ");
        let mut got = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        for _ in 0..8 {
            thread::sleep(Duration::from_millis(400));
            match c.read(&mut buf) {
                Ok(n) if n > 0 => got.extend_from_slice(&buf[..n]),
                other => panic!("{what}: {other:?} after {} bytes", got.len()),
            }
        }
        let (rest, end) = read_fast(&mut c);
        got.extend_from_slice(&rest);
        // After the answer the pair is idle until the timeout: then a FIN.
        assert_eq!(
            end,
            Ok(()),
            "{what}: no clean EOF after {} bytes",
            got.len()
        );
        assert_eq!(got.len(), LEN, "{what}: the stream was cut");
        assert!(answer_of(LEN) == got, "{what}: bytes differ");
    }
}

/// An upstream that answers each connection with `len` bytes of 1 KiB
/// lines (`ACK n xxx...`) and then holds it open, never reading.
fn line_flood_server(len: usize) -> (SocketAddr, Arc<Vec<u8>>) {
    let mut stream = Vec::with_capacity(len);
    let mut n = 0u64;
    while stream.len() < len {
        n += 1;
        let mut line = format!("ACK {n} ").into_bytes();
        line.resize(1023, b'x');
        line.push(b'\n');
        stream.extend_from_slice(&line);
    }
    let stream = Arc::new(stream);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let bytes = stream.clone();
    thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { break };
            let bytes = bytes.clone();
            thread::spawn(move || {
                let _ = conn.write_all(&bytes);
                thread::sleep(WAIT);
            });
        }
    });
    (addr, stream)
}

#[test]
fn a_stream_the_proxy_cuts_never_ends_in_a_partial_line_and_a_fin() {
    // The client reads nothing while the server sends 64 MiB of lines; the
    // idle timeout cuts the relay wherever the reads stopped, and the
    // lingering close's bound runs out with answers still held. Either way
    // the client must be able to tell: a reset, or a FIN only after a
    // whole line (a FIN after `ACK 94` of `ACK 94 xxx` passes a truncated
    // answer off as a whole one). With the default buffer and with 4 MiB.
    const LEN: usize = 64 << 20;
    let (upstream, sent) = line_flood_server(LEN);
    for buffer in ["64KiB", "4MiB"] {
        let proxy = Proxy::start(
            &upstream.to_string(),
            &[
                "--idle-timeout",
                "200ms",
                "--fin-timeout",
                "200ms",
                "--buffer-size",
                buffer,
            ],
        );
        for round in 0..3 {
            let mut c = small_window_client(proxy.addr);
            let what = format!("--buffer-size {buffer}, round {round}");
            // Opened first, then closed: a report taken before the accept
            // also shows no active connection.
            wait_for("the pair to be opened and closed", || {
                let r = proxy.report();
                r["connections_total"] == round + 1 && r["connections_active"] == 0
            });
            let (got, end) = read_fast(&mut c);
            assert!(got.len() < LEN, "{what}: the client got everything");
            assert!(sent.starts_with(&got), "{what}: bytes differ");
            match end {
                Err(ErrorKind::ConnectionReset) => {}
                Ok(()) => assert!(
                    got.ends_with(b"\n"),
                    "{what}: a FIN after a partial line ({} bytes)",
                    got.len()
                ),
                Err(e) => panic!("{what}: {e:?} after {} bytes", got.len()),
            }
        }
    }
}

#[test]
fn a_client_reading_slowly_after_the_server_closed_gets_everything_then_eof() {
    // The server sends 8 MiB and closes; the proxy holds up to 4 MiB of it
    // while the client reads at 64 KiB every 30 ms (about 4 s). The
    // lingering close's 1 s bound counts from the last byte delivered: the
    // client must get the whole stream and a FIN, not a reset at 1 s that
    // destroys what the kernel still held for it.
    const LEN: usize = 8 << 20;
    let upstream = big_answer_server(After::Close, LEN);
    let proxy = Proxy::start(
        &upstream.to_string(),
        &["--fin-timeout", "1s", "--buffer-size", "4MiB"],
    );
    let mut c = small_window_client(proxy.addr);
    c.write_all(b"REQ 1 big\n").unwrap();
    let (got, end) = read_paced(&mut c, 64 * 1024, Duration::from_millis(30));
    assert_eq!(end, Ok(()), "no clean EOF after {} bytes", got.len());
    assert_eq!(got.len(), LEN, "the stream was cut");
    assert!(answer_of(LEN) == got, "bytes differ");
}

/// An upstream that reads each connection until EOF or an error and sends
/// `true` when it ended in a reset.
fn reset_watching_server() -> (SocketAddr, std::sync::mpsc::Receiver<(Vec<u8>, bool)>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { break };
            let tx = tx.clone();
            thread::spawn(move || {
                let _ = stream.set_read_timeout(Some(WAIT));
                let mut got = Vec::new();
                let mut buf = [0u8; 4096];
                let reset = loop {
                    match stream.read(&mut buf) {
                        Ok(0) => break false,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                        Err(e) if e.kind() == ErrorKind::Interrupted => {}
                        Err(e) => break e.kind() == ErrorKind::ConnectionReset,
                    }
                };
                let _ = tx.send((got, reset));
            });
        }
    });
    (addr, rx)
}

#[test]
fn a_request_cut_mid_line_reaches_the_server_as_a_reset_never_as_a_clean_last_line() {
    // Servers answer a last line without a newline at EOF (the reference
    // does): a FIN after a truncated request would have it served as a
    // whole one. A client that resets, or goes quiet mid-line until the
    // idle timeout, cuts its request stream; a client that half-closes
    // after a partial line means it, and the server gets the FIN.
    let (upstream, seen) = reset_watching_server();
    let proxy = Proxy::start(&upstream.to_string(), &["--idle-timeout", "300ms"]);
    let wait = |what: &str| {
        seen.recv_timeout(WAIT)
            .unwrap_or_else(|_| panic!("{what}: the server saw no end"))
    };
    // A reset mid-line.
    let c = proxy.connect();
    (&c).write_all(b"REQ 1 whole\nREQ 2 tru").unwrap();
    socket2::SockRef::from(&c)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    thread::sleep(Duration::from_millis(100));
    drop(c);
    let (got, reset) = wait("client reset");
    assert_eq!(got, b"REQ 1 whole\nREQ 2 tru");
    assert!(reset, "client reset mid-line: the server got a clean EOF");
    // Quiet mid-line until the idle timeout.
    let mut c = proxy.connect();
    c.write_all(b"REQ 3 tru").unwrap();
    let (got, reset) = wait("idle timeout");
    assert_eq!(got, b"REQ 3 tru");
    assert!(reset, "idle mid-line: the server got a clean EOF");
    drop(c);
    // A half-close after a partial line is the client's own end: a FIN.
    let mut c = proxy.connect();
    c.write_all(b"REQ 4 last").unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    let (got, reset) = wait("half-close");
    assert_eq!(got, b"REQ 4 last");
    assert!(
        !reset,
        "a client's own half-close must reach the server as a FIN"
    );
}

/// An upstream that, for each connection, reads two request lines (all
/// the client sends: a FIN must not turn into the kernel's reset for
/// unread input), writes the next of `replies` and ends the connection:
/// with a reset (SO_LINGER 0) when `reset`, else with a FIN.
fn ending_server(replies: Vec<&'static [u8]>, reset: bool) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        for (stream, reply) in listener.incoming().zip(replies) {
            let Ok(mut s) = stream else { return };
            s.set_read_timeout(Some(WAIT)).unwrap();
            let mut buf = [0u8; 4096];
            let mut seen = Vec::new();
            while seen.iter().filter(|&&b| b == b'\n').count() < 2 {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => seen.extend_from_slice(&buf[..n]),
                }
            }
            s.write_all(reply).unwrap();
            // The proxy reads the reply before the end, as a real server's
            // last answer and its reset often come apart.
            thread::sleep(Duration::from_millis(30));
            if reset {
                socket2::SockRef::from(&s)
                    .set_linger(Some(Duration::ZERO))
                    .unwrap();
            }
        }
    });
    addr
}

/// Reads until EOF (`Ok`) or an error (its kind).
fn read_to_end_or_error(c: &mut TcpStream) -> (Vec<u8>, Result<(), ErrorKind>) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match c.read(&mut buf) {
            Ok(0) => return (got, Ok(())),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return (got, Err(e.kind())),
        }
    }
}

const ROUNDS_OF_RESETS: usize = 10;

#[test]
fn a_server_reset_inside_an_answer_line_reaches_the_client_as_a_reset_never_as_a_fin() {
    // `ACK 2 da` of `ACK 2 data` then a FIN would read as a whole answer
    // to a client that takes a last line at EOF: the server's reset is
    // passed on, and the whole line before it still arrives.
    let upstream = ending_server(vec![b"ACK 1 ok\nACK 2 da"; ROUNDS_OF_RESETS], true);
    let proxy = Proxy::start(&upstream.to_string(), &[]);
    for round in 0..ROUNDS_OF_RESETS {
        let mut c = proxy.connect();
        c.set_read_timeout(Some(WAIT)).unwrap();
        c.write_all(b"REQ 1 a\nREQ 2 b\n").unwrap();
        let (got, end) = read_to_end_or_error(&mut c);
        assert_eq!(
            end,
            Err(ErrorKind::ConnectionReset),
            "round {round}: {:?} then a clean EOF",
            String::from_utf8_lossy(&got)
        );
        assert!(
            b"ACK 1 ok\nACK 2 da".starts_with(&got) && got.len() >= b"ACK 1 ok\n".len(),
            "round {round}: {:?}",
            String::from_utf8_lossy(&got)
        );
    }
    let r = proxy.report_until(|r| r["connections_active"] == 0);
    assert_eq!(
        r["connections_closed"]["server_reset"], ROUNDS_OF_RESETS,
        "{r}"
    );
}

#[test]
fn a_server_reset_after_whole_answers_delivers_them_then_a_fin() {
    // On a line boundary every answer read is whole: the client gets them
    // and a FIN, never a reset that would drop what the proxy's kernel
    // still holds for it; its unanswered second request shows the failure.
    let upstream = ending_server(vec![b"ACK 1 ok\n"; ROUNDS_OF_RESETS], true);
    let proxy = Proxy::start(&upstream.to_string(), &[]);
    for round in 0..ROUNDS_OF_RESETS {
        let mut c = proxy.connect();
        c.set_read_timeout(Some(WAIT)).unwrap();
        c.write_all(b"REQ 1 a\nREQ 2 b\n").unwrap();
        let (got, end) = read_to_end_or_error(&mut c);
        assert_eq!(got, b"ACK 1 ok\n", "round {round}");
        assert_eq!(end, Ok(()), "round {round}");
    }
}

#[test]
fn a_server_fin_inside_an_answer_line_reaches_the_client_as_that_fin() {
    // The server's own end, mid-line or not, is relayed as it came: the
    // same bytes and a FIN, as on a direct connection (the partial line
    // is the server's, counted as a partial frame). Only a cut, by the
    // proxy or by a reset, becomes a reset.
    let upstream = ending_server(vec![b"ACK 1 ok\nACK 2 da"; ROUNDS_OF_RESETS], false);
    let proxy = Proxy::start(&upstream.to_string(), &[]);
    for round in 0..ROUNDS_OF_RESETS {
        let mut c = proxy.connect();
        c.set_read_timeout(Some(WAIT)).unwrap();
        c.write_all(b"REQ 1 a\nREQ 2 b\n").unwrap();
        let (got, end) = read_to_end_or_error(&mut c);
        assert_eq!(got, b"ACK 1 ok\nACK 2 da", "round {round}");
        assert_eq!(end, Ok(()), "round {round}");
    }
    let r = proxy.report_until(|r| r["connections_active"] == 0);
    assert_eq!(
        r["connections_closed"]["server_closed"], ROUNDS_OF_RESETS,
        "{r}"
    );
    assert_eq!(
        r["partial_frames_server_to_client"], ROUNDS_OF_RESETS,
        "{r}"
    );
}

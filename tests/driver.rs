//! The test drivers: foo-server, foo-client, foo-load and foo-demo, run as
//! the real binaries on loopback, with and without foo-proxy in between.

mod util;

use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::{Command, ExitStatus};
use std::thread;
use std::time::Duration;

use foo_tools::child::{Child, Stdout};
use foo_tools::proto::{self, Kind};
use util::{Proxy, WAIT};

/// Starts foo-server on a free loopback port with these extra flags.
fn foo_server(extra: &[&str]) -> (Child, SocketAddr) {
    let mut command = Command::new(util::tool("foo-server"));
    command.args(["-listen", "127.0.0.1:0"]).args(extra);
    let mut child = Child::spawn("foo-server", &mut command, Stdout::Capture).unwrap();
    let addr = child.wait_for_listening(WAIT).unwrap();
    (child, addr)
}

/// Runs a driver binary to completion: exit status, stdout, stderr.
fn run(binary: &std::path::Path, name: &str, args: &[&str]) -> (ExitStatus, String, String) {
    let mut command = Command::new(binary);
    command.args(args);
    let mut child = Child::spawn(name, &mut command, Stdout::Capture).unwrap();
    let status = child.wait(3 * WAIT).unwrap();
    (status, child.stdout_rest(WAIT), child.stderr_rest(WAIT))
}

fn foo_client(args: &[&str]) -> (ExitStatus, String, String) {
    run(&util::tool("foo-client"), "foo-client", args)
}

/// A one-connection Foo server that answers REQ n with `answer(n)`; when that
/// is `None` it closes its side (FIN, no reset) and only reads from then on.
fn broken_server(answer: fn(u64) -> Option<String>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        let Ok((stream, _)) = listener.accept() else {
            return;
        };
        stream.set_read_timeout(Some(WAIT)).unwrap();
        let mut writer = stream.try_clone().unwrap();
        let mut open = true;
        for line in BufReader::new(stream).split(b'\n') {
            let Ok(line) = line else { return };
            let Some(msg) = proto::parse(&line) else {
                return;
            };
            match answer(msg.seq) {
                Some(reply) if open => {
                    if writer.write_all(reply.as_bytes()).is_err() {
                        return;
                    }
                }
                Some(_) => {}
                None => {
                    open = false;
                    let _ = writer.shutdown(Shutdown::Write);
                }
            }
        }
    });
    addr
}

#[test]
fn client_prints_ok_through_the_proxy() {
    let (_server, server_addr) = foo_server(&["--seed", "7"]);
    let proxy = Proxy::start(&server_addr.to_string(), &[]);
    let target = proxy.addr.to_string();
    let (status, stdout, stderr) = foo_client(&["-connect", &target, "-n", "200", "-c", "3"]);
    assert!(status.success(), "{status}: {stdout} {stderr}");
    assert_eq!(stdout, format!("{}OK!\n", ".".repeat(60)));
    let report = proxy.report_until(|r| {
        r["msg_ack"].as_u64().unwrap_or(0) + r["msg_nak"].as_u64().unwrap_or(0) == 600
    });
    assert_eq!(report["msg_req"], 600, "{report}");
    assert_eq!(report["msg_invalid"], 0, "{report}");
    let naks = report["msg_nak"].as_u64().unwrap();
    assert!(
        (30..=120).contains(&naks),
        "about 1 in 8 NAK, got {naks}: {report}"
    );
}

#[test]
fn client_accepts_every_go_flag_form() {
    let (_server, addr) = foo_server(&[]);
    for args in [
        format!("-connect {addr} -n 20"),
        format!("-connect={addr} -n=20"),
        format!("--connect {addr} --n 20 --c 2"),
        format!("--connect={addr} --n=20 -c=2 -no-fragment"),
    ] {
        let args: Vec<&str> = args.split(' ').collect();
        let (status, stdout, stderr) = foo_client(&args);
        assert!(status.success(), "{args:?}: {stderr}");
        assert!(stdout.ends_with("..OK!\n"), "{args:?}: {stdout}");
    }
}

#[test]
fn client_names_a_wrong_seq_from_a_broken_server() {
    let addr = broken_server(|seq| {
        let seq = if seq == 5 { 6 } else { seq };
        Some(format!("ACK {seq} fine\n"))
    });
    let (status, stdout, stderr) = foo_client(&["-connect", &addr.to_string(), "-n", "20"]);
    assert!(!status.success(), "{stdout}");
    assert!(!stdout.contains("OK!"), "{stdout}");
    assert!(
        stderr.contains("expected ACK or NAK with seq 5, got \"ACK 6 fine\""),
        "{stderr}"
    );
}

#[test]
fn client_rejects_an_answer_that_is_not_ack_or_nak() {
    let addr = broken_server(|seq| Some(format!("REQ {seq} echo\n")));
    let (status, _, stderr) = foo_client(&["-connect", &addr.to_string(), "-n", "5"]);
    assert!(!status.success());
    assert!(stderr.contains("got \"REQ 1 echo\""), "{stderr}");
}

#[test]
fn client_fails_when_the_server_closes_early() {
    let addr = broken_server(|seq| (seq <= 3).then(|| format!("NAK {seq}\n")));
    let (status, _, stderr) = foo_client(&["-connect", &addr.to_string(), "-n", "10"]);
    assert!(!status.success());
    assert!(
        stderr.contains("closed the connection after 3 of 10"),
        "{stderr}"
    );
}

#[test]
fn client_fails_when_nothing_listens() {
    let port = util::dead_port().to_string();
    let (status, _, stderr) = foo_client(&["-connect", &format!("127.0.0.1:{port}")]);
    assert_eq!(status.code(), Some(1));
    assert!(
        stderr.contains("cannot connect to 127.0.0.1:") && stderr.contains("refused"),
        "{stderr}"
    );
}

#[test]
fn server_answers_every_line_and_closes_after_the_client() {
    let (_server, addr) = foo_server(&["--seed", "3"]);
    let mut stream = TcpStream::connect_timeout(&addr, WAIT).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    // The server must frame across writes: send the first REQ in pieces.
    for piece in [
        &b"REQ 6"[..],
        b" gxb6w7yr3sc647vyua",
        b"\nhello\nREQ 7\r\nACK 1\n",
    ] {
        stream.write_all(piece).unwrap();
        thread::sleep(Duration::from_millis(5));
    }
    stream.shutdown(Shutdown::Write).unwrap();
    let (bytes, eof) = util::read_to_eof(&mut stream);
    assert!(eof, "the server must close once the client has closed");
    let lines: Vec<&[u8]> = bytes.split(|b| *b == b'\n').collect();
    assert_eq!(lines.len(), 5, "{}", String::from_utf8_lossy(&bytes));
    for (line, seq) in [(lines[0], 6), (lines[2], 7)] {
        let m = proto::parse(line).unwrap();
        assert!(matches!(m.kind, Kind::Ack | Kind::Nak), "{line:?}");
        assert_eq!(m.seq, seq);
        assert_eq!(m.data.len(), 32);
        assert!(m.data.iter().all(u8::is_ascii_hexdigit));
    }
    assert_eq!(lines[1], b"NAK 0 ERRDECODE");
    assert_eq!(lines[3], b"NAK 0 ERRDECODE");
    assert_eq!(lines[4], b"");
}

#[test]
fn server_answers_a_last_line_without_a_newline_when_the_client_closes() {
    // Through the proxy too: the client's half-close after a partial line
    // must end as `client_closed` with the answer delivered, as the README
    // promises for a reference-like server.
    let (_server, addr) = foo_server(&["--seed", "5", "--no-fragment"]);
    let proxy = Proxy::start(&addr.to_string(), &["--log-connections"]);
    for target in [addr, proxy.addr] {
        let mut stream = TcpStream::connect_timeout(&target, WAIT).unwrap();
        stream.set_read_timeout(Some(WAIT)).unwrap();
        stream.write_all(b"REQ 4\nREQ 5 tail").unwrap();
        stream.shutdown(Shutdown::Write).unwrap();
        let (bytes, eof) = util::read_to_eof(&mut stream);
        assert!(eof, "{target}: the server must close after answering");
        let lines: Vec<&[u8]> = bytes.split(|b| *b == b'\n').collect();
        assert_eq!(
            lines.len(),
            3,
            "{target}: {}",
            String::from_utf8_lossy(&bytes)
        );
        for (line, seq) in [(lines[0], 4), (lines[1], 5)] {
            let m = proto::parse(line).unwrap();
            assert!(matches!(m.kind, Kind::Ack | Kind::Nak), "{line:?}");
            assert_eq!(m.seq, seq);
        }
    }
    let log = proxy.stderr_has(" reason=");
    assert!(log.contains(" reason=client_closed"), "{log}");
    assert!(!log.contains(" reason=server_closed"), "{log}");
}

/// What foo-server sends back for one REQ line of `len` bytes (its newline
/// not counted), sent with a newline or as a last line cut off by the
/// client's half-close. A server that gives up may reset the connection
/// while the line is still going up: that is no answer either.
fn answer_to_one_line(addr: SocketAddr, len: usize, newline: bool) -> Vec<u8> {
    let mut line = b"REQ 9 ".to_vec();
    line.resize(len, b'x');
    if newline {
        line.push(b'\n');
    }
    let mut stream = TcpStream::connect_timeout(&addr, WAIT).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream.set_write_timeout(Some(WAIT)).unwrap();
    if stream.write_all(&line).is_err() || stream.shutdown(Shutdown::Write).is_err() {
        return Vec::new();
    }
    util::read_to_eof(&mut stream).0
}

#[test]
fn server_caps_a_line_at_one_mib_with_a_newline_and_at_eof_alike() {
    const MIB: usize = 1 << 20;
    let (_server, addr) = foo_server(&["--no-fragment"]);
    for newline in [true, false] {
        for len in [MIB - 1, MIB] {
            let got = answer_to_one_line(addr, len, newline);
            let msg = proto::parse(got.strip_suffix(b"\n").unwrap_or(&got));
            assert!(
                msg.is_some_and(|m| m.seq == 9 && matches!(m.kind, Kind::Ack | Kind::Nak)),
                "a {len}-byte line (newline: {newline}) is answered: {:?}",
                String::from_utf8_lossy(&got)
            );
        }
        let got = answer_to_one_line(addr, MIB + 1, newline);
        assert!(
            got.is_empty(),
            "a line of 1 MiB + 1 byte (newline: {newline}) ends the connection unanswered: {:?}",
            String::from_utf8_lossy(&got)
        );
    }
}

#[test]
fn server_holds_a_thousand_connections() {
    let (_server, addr) = foo_server(&["--no-fragment"]);
    let mut streams: Vec<TcpStream> = (0..1000)
        .map(|_| TcpStream::connect_timeout(&addr, WAIT).unwrap())
        .collect();
    for (i, s) in streams.iter_mut().enumerate() {
        s.set_read_timeout(Some(WAIT)).unwrap();
        s.write_all(format!("REQ {i} x\n").as_bytes()).unwrap();
    }
    for (i, s) in streams.iter_mut().enumerate() {
        let got = util::read_exact_timeout(s, 5 + i.to_string().len() + 33);
        let m = proto::parse(got.strip_suffix(b"\n").unwrap()).unwrap();
        assert_eq!(m.seq, i as u64);
    }
}

#[test]
fn server_delays_answers_when_asked() {
    let (_server, addr) = foo_server(&["--delay-ms", "150"]);
    let mut stream = TcpStream::connect_timeout(&addr, WAIT).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let started = std::time::Instant::now();
    stream.write_all(b"REQ 1 x\n").unwrap();
    let got = util::read_exact_timeout(&mut stream, 6 + 33);
    assert!(started.elapsed() >= Duration::from_millis(150));
    assert_eq!(
        proto::parse(got.strip_suffix(b"\n").unwrap()).unwrap().seq,
        1
    );
}

#[test]
fn load_reports_rates_and_latency_without_errors() {
    let (_server, addr) = foo_server(&["--no-fragment"]);
    let target = addr.to_string();
    let (status, stdout, stderr) = run(
        &util::tool("foo-load"),
        "foo-load",
        &[
            "--target",
            &target,
            "--connections",
            "2",
            "--depth",
            "4",
            "--duration",
            "500ms",
            "--json",
        ],
    );
    assert!(status.success(), "{stdout} {stderr}");
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert!(
        report["requests_per_sec"].as_f64().unwrap() > 100.0,
        "{report}"
    );
    assert_eq!(report["errors"], 0, "{report}");
    let p50 = report["latency_us"]["p50"].as_f64().unwrap();
    let p99 = report["latency_us"]["p99"].as_f64().unwrap();
    assert!(p50 > 0.0 && p50 <= p99, "{report}");
}

#[test]
fn load_replaces_each_connection_after_its_per_connection_requests() {
    let (_server, addr) = foo_server(&["--no-fragment"]);
    let target = addr.to_string();
    let (status, stdout, stderr) = run(
        &util::tool("foo-load"),
        "foo-load",
        &[
            "--target",
            &target,
            "--connections",
            "2",
            "--depth",
            "3",
            "--per-connection",
            "5",
            "--duration",
            "300ms",
            "--json",
        ],
    );
    assert!(status.success(), "{stdout} {stderr}");
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(report["errors"], 0, "{report}");
    let opened = report["opened"].as_u64().unwrap();
    let sent = report["sent"].as_u64().unwrap();
    let answered = report["ack_all"].as_u64().unwrap() + report["nak_all"].as_u64().unwrap();
    assert_eq!(sent, answered, "{report}");
    // Never more than 5 REQs on one connection; the last ones may be short
    // (the deadline stops sending).
    assert!(opened > 2 && sent <= opened * 5, "{report}");
    assert!(sent > (opened - 2) * 5 - 1, "{report}");
}

#[test]
fn load_counts_a_wrong_seq_as_an_error() {
    let addr = broken_server(|seq| Some(format!("ACK {} x\n", seq + 1)));
    let (status, stdout, _) = run(
        &util::tool("foo-load"),
        "foo-load",
        &[
            "--target",
            &addr.to_string(),
            "--connections",
            "1",
            "--duration",
            "200ms",
        ],
    );
    assert_eq!(status.code(), Some(1));
    assert!(stdout.contains("errors       1"), "{stdout}");
    assert!(
        stdout.contains("expected ACK or NAK with seq 1, got \"ACK 2 x\""),
        "{stdout}"
    );
}

#[test]
fn the_demo_explains_the_counts_in_whole_lines_and_leaves_nothing_running() {
    let (status, stdout, stderr) = run(&util::tool("foo-demo"), "foo-demo", &["--no-build"]);
    assert!(status.success(), "{stdout}\n{stderr}");
    // Only the demo writes while it runs: nothing on stderr can cut into
    // its lines, and every line fits a terminal.
    assert_eq!(stderr, "", "{stdout}");
    for line in stdout.lines() {
        assert!(line.chars().count() <= 80, "longer than 80: {line:?}");
    }
    // The report is explained, not dumped (once or twice).
    assert!(!stdout.contains("{\"msg_total\""), "{stdout}");
    let number_after = |label: &str| -> u64 {
        let rest = stdout
            .split(label)
            .nth(1)
            .unwrap_or_else(|| panic!("no {label:?} in {stdout}"));
        rest.split_whitespace().next().unwrap().parse().unwrap()
    };
    let relayed = number_after("msg_req ");
    let sent = number_after("the clients sent ");
    let returned = number_after("msg_ack+msg_nak ");
    let got = number_after("the clients got ");
    assert!(relayed >= 400, "{stdout}");
    assert_eq!((relayed, returned), (sent, got), "{stdout}");
    assert!(stdout.contains("They match"), "{stdout}");
    assert!(stdout.contains("request_rate_10s"), "{stdout}");
    assert!(stdout.contains("the proxy adds about") || stdout.contains("no difference"));
    // The proxy's own account of its end, from its log.
    assert!(stdout.contains("INFO stopped on SIGTERM after"), "{stdout}");
    // Commands to run afterwards name no pid of a process that is gone.
    for rest in stdout.split("kill ").skip(1) {
        let args: Vec<&str> = rest.split_whitespace().take_while(|w| *w != "#").collect();
        assert!(
            args.iter()
                .all(|a| a.starts_with('-') || a.starts_with('$')),
            "a literal pid after kill: {args:?} in {stdout}"
        );
    }
    assert!(
        stdout.contains("curl -s http://127.0.0.1:8088/stats"),
        "{stdout}"
    );
    // Nothing left running: the proxy's port refuses.
    let proxy: SocketAddr = stdout
        .split("foo-proxy listens on ")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .and_then(|addr| addr.parse().ok())
        .unwrap_or_else(|| panic!("no proxy address in {stdout}"));
    assert!(
        TcpStream::connect(proxy).is_err(),
        "foo-proxy still listens on {proxy}"
    );
}

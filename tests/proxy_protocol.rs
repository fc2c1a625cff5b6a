//! The PROXY protocol in (`--accept-proxy`) and out (`--send-proxy`), the
//! per-client limit, and `--reuse-port`, against the real binary on
//! loopback with in-test clients and upstreams that speak raw bytes.

mod util;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use foo_proxy::proxy_protocol::{self, Parsed, Version};
use util::{
    FooServer, Proxy, ServerOpts, WAIT, answers, read_exact_timeout, read_to_eof, requests,
};

const V2_SIG: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";

/// A TCP connection to `to` from `source` (any port): a client on
/// another loopback address.
fn connect_from(source: &str, to: SocketAddr) -> TcpStream {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    let from: SocketAddr = format!("{source}:0").parse().unwrap();
    s.bind(&from.into()).unwrap();
    s.connect(&to.into()).unwrap();
    let s: TcpStream = s.into();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s
}

/// An upstream that records, per connection, every byte it got until the
/// client's EOF, and answers nothing.
fn recording_upstream() -> (SocketAddr, std::sync::mpsc::Receiver<Vec<u8>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { break };
            let tx = tx.clone();
            thread::spawn(move || {
                s.set_read_timeout(Some(WAIT)).unwrap();
                let mut got = Vec::new();
                let _ = s.read_to_end(&mut got);
                let _ = tx.send(got);
            });
        }
    });
    (addr, rx)
}

/// Writes `bytes` a few at a time with pauses, so the proxy sees the
/// header arrive in pieces.
fn dribble(s: &mut TcpStream, bytes: &[u8], chunk: usize) {
    for piece in bytes.chunks(chunk) {
        s.write_all(piece).unwrap();
        s.flush().unwrap();
        thread::sleep(Duration::from_millis(15));
    }
}

fn v2_header(src: &str, dst: &str) -> Vec<u8> {
    let (s, d): (SocketAddr, SocketAddr) = (src.parse().unwrap(), dst.parse().unwrap());
    proxy_protocol::encode(Version::V2, s, d)
        .as_bytes()
        .to_vec()
}

#[test]
fn a_header_in_pieces_is_read_whole_and_its_address_is_sent_upstream() {
    let (upstream, got) = recording_upstream();
    for (sent, out, chunk) in [
        (
            b"PROXY TCP4 192.0.2.7 198.51.100.1 40000 8002\r\n".to_vec(),
            "v1",
            1,
        ),
        (v2_header("192.0.2.7:40000", "198.51.100.1:8002"), "v1", 3),
        (
            b"PROXY TCP4 192.0.2.7 198.51.100.1 40000 8002\r\n".to_vec(),
            "v2",
            7,
        ),
        (v2_header("192.0.2.7:40000", "198.51.100.1:8002"), "v2", 100),
    ] {
        let proxy = Proxy::start(
            &upstream.to_string(),
            &["--accept-proxy", "--send-proxy", out],
        );
        let mut c = TcpStream::connect(proxy.addr).unwrap();
        let mut bytes = sent.clone();
        bytes.extend_from_slice(b"REQ 1 a\n");
        dribble(&mut c, &bytes, chunk);
        c.write_all(b"REQ 2 b\n").unwrap();
        c.shutdown(std::net::Shutdown::Write).unwrap();
        let seen = got
            .recv_timeout(WAIT)
            .expect("the upstream got a connection");
        let header = match proxy_protocol::parse(&seen) {
            Parsed::Done(h) => h,
            other => panic!("{other:?}: {:?}", String::from_utf8_lossy(&seen)),
        };
        assert_eq!(
            header.addresses,
            Some((
                "192.0.2.7:40000".parse().unwrap(),
                "198.51.100.1:8002".parse().unwrap()
            )),
            "sent {out}"
        );
        assert_eq!(
            seen.get(header.len..).unwrap(),
            b"REQ 1 a\nREQ 2 b\n",
            "the client's bytes follow, the incoming header is not relayed"
        );
        if out == "v1" {
            assert!(seen.starts_with(b"PROXY TCP4 192.0.2.7 198.51.100.1 40000 8002\r\n"));
        } else {
            assert!(seen.starts_with(V2_SIG));
        }
        // The header's bytes are not counted as the client's.
        let r = proxy.report_until(|r| r["connections_active"] == 0);
        assert_eq!(r["bytes_client_to_server"], 16, "{r}");
        assert_eq!(r["msg_req"], 2, "{r}");
        assert_eq!(r["proxy_header_errors"], 0, "{r}");
    }
}

#[test]
fn local_and_unknown_headers_use_the_connections_own_address() {
    let (upstream, got) = recording_upstream();
    let proxy = Proxy::start(
        &upstream.to_string(),
        &["--accept-proxy", "--send-proxy", "v1"],
    );
    let mut local = V2_SIG.to_vec();
    local.extend_from_slice(&[0x20, 0x00, 0, 0]);
    for header in [local, b"PROXY UNKNOWN\r\n".to_vec()] {
        let mut c = connect_from("127.0.0.4", proxy.addr);
        let port = c.local_addr().unwrap().port();
        c.write_all(&header).unwrap();
        c.write_all(b"REQ 1 a\n").unwrap();
        c.shutdown(std::net::Shutdown::Write).unwrap();
        let seen = got.recv_timeout(WAIT).unwrap();
        let want = format!(
            "PROXY TCP4 127.0.0.4 127.0.0.1 {port} {}\r\nREQ 1 a\n",
            proxy.addr.port()
        );
        assert_eq!(String::from_utf8_lossy(&seen), want);
    }
}

#[test]
fn a_connection_without_a_valid_header_is_closed_counted_and_never_relayed() {
    let server = FooServer::start(ServerOpts::default());
    let proxy = Proxy::start(&server.addr.to_string(), &["--accept-proxy"]);
    let mut cases = 0;
    // No header at all (a client that skipped the balancer), a malformed
    // one, one cut short by the client's FIN, and one too long.
    let too_long = {
        let mut h = V2_SIG.to_vec();
        h.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        h
    };
    for bytes in [
        requests(1..=3),
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\nREQ 1 a\n".to_vec(),
        b"PROXY TCP4 1.2.3".to_vec(),
        too_long,
    ] {
        let mut c = TcpStream::connect(proxy.addr).unwrap();
        c.set_read_timeout(Some(WAIT)).unwrap();
        c.write_all(&bytes).unwrap();
        c.shutdown(std::net::Shutdown::Write).unwrap();
        let (answer, clean) = read_to_eof(&mut c);
        assert!(answer.is_empty(), "{:?}", String::from_utf8_lossy(&answer));
        assert!(clean, "a FIN, not a reset");
        cases += 1;
    }
    let r = proxy.report_until(|r| r["proxy_header_errors"] == cases);
    assert_eq!(r["proxy_header_errors"], cases, "{r}");
    assert_eq!(r["msg_req"], 0, "{r}");
    assert_eq!(
        server.connections.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "nothing reached the upstream"
    );
    // Polled for: the output thread writes the line.
    proxy.stderr_has("invalid PROXY header");
}

/// CRC32c (Castagnoli), bit at a time: the test's own, independent of
/// the proxy's table-driven one.
fn crc32c(bytes: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in bytes {
        c ^= u32::from(b);
        for _ in 0..8 {
            c = if c & 1 == 1 {
                (c >> 1) ^ 0x82F6_3B78
            } else {
                c >> 1
            };
        }
    }
    !c
}

/// A v2 header from 192.0.2.7:40000 with `tlvs` after its addresses.
fn v2_with_tlvs(tlvs: &[u8]) -> Vec<u8> {
    let mut h = v2_header("192.0.2.7:40000", "198.51.100.1:8002");
    let len = u16::try_from(12 + tlvs.len()).unwrap().to_be_bytes();
    h[14..16].copy_from_slice(&len);
    h.extend_from_slice(tlvs);
    h
}

#[test]
fn v2_headers_with_a_cut_tlv_or_a_wrong_crc32c_are_closed_counted_and_never_relayed() {
    let (upstream, got) = recording_upstream();
    let proxy = Proxy::start(
        &upstream.to_string(),
        &["--accept-proxy", "--send-proxy", "v1"],
    );
    // A good checksum over the header with its own value zeroed.
    let mut good = v2_with_tlvs(&[0x02, 0, 3, b'f', b'o', b'o', 0x03, 0, 4, 0, 0, 0, 0]);
    let crc = crc32c(&good).to_be_bytes();
    let at = good.len() - 4;
    good[at..].copy_from_slice(&crc);
    let mut wrong_crc = good.clone();
    wrong_crc[at + 3] ^= 0x80;
    let mut changed_address = good.clone();
    changed_address[16] ^= 0x01;
    let cut_tlv = v2_with_tlvs(&[0x02, 0, 9, b'a', b'b']);
    let stray_byte = v2_with_tlvs(&[0x04]);
    let bad = [wrong_crc, changed_address, cut_tlv, stray_byte];
    for header in &bad {
        let mut c = TcpStream::connect(proxy.addr).unwrap();
        c.set_read_timeout(Some(WAIT)).unwrap();
        c.write_all(&[header.as_slice(), b"REQ 1 a\n"].concat())
            .unwrap();
        c.shutdown(std::net::Shutdown::Write).unwrap();
        let (answer, clean) = read_to_eof(&mut c);
        assert!(
            answer.is_empty() && clean,
            "closed with a FIN, nothing answered"
        );
    }
    let r = proxy.report_until(|r| r["proxy_header_errors"] == bad.len());
    assert_eq!(r["proxy_header_errors"], bad.len(), "{r}");
    assert_eq!(r["msg_req"], 0, "{r}");
    assert!(got.try_recv().is_err(), "nothing reached the upstream");
    // The same header with its checksum right is served, its address used.
    let mut c = TcpStream::connect(proxy.addr).unwrap();
    c.write_all(&[good.as_slice(), b"REQ 1 a\n"].concat())
        .unwrap();
    c.shutdown(std::net::Shutdown::Write).unwrap();
    let seen = got
        .recv_timeout(WAIT)
        .expect("the upstream got a connection");
    assert_eq!(
        seen,
        b"PROXY TCP4 192.0.2.7 198.51.100.1 40000 8002\r\nREQ 1 a\n",
        "{:?}",
        String::from_utf8_lossy(&seen)
    );
    let r = proxy.report_until(|r| r["msg_req"] == 1);
    assert_eq!(r["proxy_header_errors"], bad.len(), "{r}");
}

#[test]
fn a_client_that_sends_no_header_is_closed_at_the_header_deadline() {
    let server = FooServer::start(ServerOpts::default());
    let proxy = Proxy::start(&server.addr.to_string(), &["--accept-proxy"]);
    let mut c = TcpStream::connect(proxy.addr).unwrap();
    c.set_read_timeout(Some(WAIT)).unwrap();
    c.write_all(b"PROXY TCP4 ").unwrap();
    let start = Instant::now();
    let (answer, clean) = read_to_eof(&mut c);
    let waited = start.elapsed();
    assert!(answer.is_empty() && clean);
    assert!(
        waited >= Duration::from_secs(2) && waited < WAIT,
        "closed after {waited:?}"
    );
    let r = proxy.report_until(|r| r["proxy_header_errors"] == 1);
    assert_eq!(r["proxy_header_errors"], 1, "{r}");
    proxy.stderr_has("no PROXY header in time");
}

#[test]
fn the_per_client_limit_counts_the_address_from_the_proxy_header() {
    let server = FooServer::start(ServerOpts::default());
    let proxy = Proxy::start(
        &server.addr.to_string(),
        &["--accept-proxy", "--max-connections-per-client", "2"],
    );
    let open = |client: &str| {
        let mut c = TcpStream::connect(proxy.addr).unwrap();
        c.set_read_timeout(Some(WAIT)).unwrap();
        let header = format!("PROXY TCP4 {client} 127.0.0.1 1000 8002\r\n");
        c.write_all(header.as_bytes()).unwrap();
        c.write_all(&requests(1..=1)).unwrap();
        c
    };
    let served = |c: &mut TcpStream| read_exact_timeout(c, answers(1..=1).len()) == answers(1..=1);
    // All of these come from 127.0.0.1: only the header tells them apart.
    let mut a1 = open("192.0.2.1");
    let mut a2 = open("192.0.2.1");
    assert!(served(&mut a1) && served(&mut a2));
    let mut a3 = open("192.0.2.1");
    // Closed at once: a reset, since its request is unread.
    let (answer, _) = read_to_eof(&mut a3);
    assert!(answer.is_empty(), "the third from 192.0.2.1 is closed");
    let mut b1 = open("192.0.2.2");
    assert!(served(&mut b1), "another address is not affected");
    drop(a1);
    proxy.report_until(|r| r["connections_active"] == 2);
    let mut a4 = open("192.0.2.1");
    assert!(served(&mut a4), "a slot came free");
    let r = proxy.report();
    assert_eq!(r["client_limit_hits"], 1, "{r}");
    assert!(
        proxy
            .stderr()
            .contains("client 192.0.2.1 has 2 connection(s) open")
    );
}

#[test]
fn without_accept_proxy_the_per_client_limit_counts_the_socket_address() {
    let server = FooServer::start(ServerOpts::default());
    let proxy = Proxy::start(
        &server.addr.to_string(),
        &["--max-connections-per-client", "1"],
    );
    let mut held = connect_from("127.0.0.2", proxy.addr);
    held.write_all(&requests(1..=1)).unwrap();
    assert_eq!(read_exact_timeout(&mut held, 9), answers(1..=1));
    let mut other = connect_from("127.0.0.3", proxy.addr);
    other.write_all(&requests(1..=1)).unwrap();
    assert_eq!(read_exact_timeout(&mut other, 9), answers(1..=1));
    let mut over = connect_from("127.0.0.2", proxy.addr);
    let (answer, clean) = read_to_eof(&mut over);
    assert!(
        answer.is_empty() && clean,
        "closed at once; it sent nothing: a FIN"
    );
    // Removed before the EOF was sent: a lingering close would still
    // hold the slot (until --fin-timeout) after sending its FIN.
    let r = proxy.report();
    assert_eq!(
        r["connections_active"], 2,
        "no lingering close holds a slot"
    );
    let r = proxy.report();
    assert_eq!(r["client_limit_hits"], 1, "{r}");
}

#[test]
fn send_proxy_without_accept_proxy_names_the_socket_peer() {
    let (upstream, got) = recording_upstream();
    for (version, v2) in [("v1", false), ("v2", true)] {
        let proxy = Proxy::start(&upstream.to_string(), &["--send-proxy", version]);
        let mut c = connect_from("127.0.0.5", proxy.addr);
        let port = c.local_addr().unwrap().port();
        c.write_all(b"REQ 9 x\n").unwrap();
        c.shutdown(std::net::Shutdown::Write).unwrap();
        let seen = got.recv_timeout(WAIT).unwrap();
        assert_eq!(seen.starts_with(V2_SIG), v2);
        let Parsed::Done(h) = proxy_protocol::parse(&seen) else {
            panic!("{seen:?}")
        };
        let (src, dst) = h.addresses.unwrap();
        assert_eq!(src, format!("127.0.0.5:{port}").parse().unwrap());
        assert_eq!(dst, proxy.addr);
        assert_eq!(seen.get(h.len..).unwrap(), b"REQ 9 x\n");
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("foo-proxy-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn reuse_port_shares_the_listen_port_between_processes_with_their_own_files() {
    let server = FooServer::start(ServerOpts::default());
    let listen = format!("127.0.0.1:{}", free_port());
    let dir = scratch("reuse-port");
    let start = |n: u32, extra: &[&str]| {
        let recovery = format!(
            "-recovery-path={}",
            dir.join(format!("r{n}.json")).display()
        );
        let mut args = vec!["-listen", &listen, "-forward"];
        let fwd = server.addr.to_string();
        args.push(&fwd);
        args.extend_from_slice(&["-http", "127.0.0.1:0", &recovery]);
        args.extend_from_slice(extra);
        Proxy::start_with_args(&args)
    };
    let a = start(1, &["--reuse-port"]);
    let b = start(2, &["--reuse-port"]);
    assert_eq!(a.addr, b.addr);
    let total = 40u64;
    for _ in 0..total {
        let mut c = TcpStream::connect(a.addr).unwrap();
        c.set_read_timeout(Some(WAIT)).unwrap();
        c.write_all(&requests(1..=1)).unwrap();
        assert_eq!(read_exact_timeout(&mut c, 9), answers(1..=1));
    }
    let (ra, rb) = (a.report(), b.report());
    let (na, nb) = (
        ra["connections_total"].as_u64().unwrap(),
        rb["connections_total"].as_u64().unwrap(),
    );
    assert_eq!(na + nb, total);
    assert!(na > 0 && nb > 0, "the kernel spread them: {na} and {nb}");

    // Without the flag the port is taken: one line, exit 1.
    let out = Command::new(env!("CARGO_BIN_EXE_foo-proxy"))
        .args(["-listen", &listen, "-http", "off", "-recovery-path="])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("cannot listen on {listen}")), "{err}");
    // With it, but on a recovery file another process owns: refused.
    let taken = format!("-recovery-path={}", dir.join("r1.json").display());
    let out = Command::new(env!("CARGO_BIN_EXE_foo-proxy"))
        .args(["-listen", &listen, "--reuse-port", "-http", "off", &taken])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("in use by another foo-proxy"), "{err}");
    drop((a, b));
    let _ = std::fs::remove_dir_all(&dir);
}

/// The connection log's line for the connection from `peer_port`, waited
/// for.
fn log_line_of(proxy: &Proxy, peer_port: u16) -> String {
    let deadline = Instant::now() + WAIT;
    let needle = format!(":{peer_port} ");
    loop {
        let err = proxy.stderr();
        if let Some(l) = err
            .lines()
            .find(|l| l.contains("msg=connection") && l.contains(&needle))
        {
            return l.to_string();
        }
        assert!(Instant::now() < deadline, "no connection line: {err}");
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn the_connection_log_names_the_client_from_the_proxy_header_and_the_balancer_as_peer() {
    let server = FooServer::start(ServerOpts::default());
    let proxy = Proxy::start(
        &server.addr.to_string(),
        &["--accept-proxy", "--log-connections"],
    );
    // v1 and v2 headers from a "balancer" on 127.0.0.5, then a LOCAL one
    // (its health check: the client is the balancer itself), then one
    // without a valid header (no client known).
    let mut local = V2_SIG.to_vec();
    local.extend_from_slice(&[0x20, 0x00, 0, 0]);
    let cases: [(Vec<u8>, &str); 4] = [
        (
            b"PROXY TCP4 192.0.2.1 127.0.0.1 4001 8002\r\n".to_vec(),
            "client=192.0.2.1:4001",
        ),
        (
            v2_header("[2001:db8::7]:4002", "[2001:db8::1]:8002"),
            "client=[2001:db8::7]:4002",
        ),
        (local, "client=127.0.0.5:"),
        (b"GET / HTTP/1.0\r\n\r\n".to_vec(), "client=-"),
    ];
    for (header, want) in cases {
        let mut c = connect_from("127.0.0.5", proxy.addr);
        let port = c.local_addr().unwrap().port();
        c.write_all(&header).unwrap();
        if want != "client=-" {
            c.write_all(&requests(1..=1)).unwrap();
            assert_eq!(
                read_exact_timeout(&mut c, answers(1..=1).len()),
                answers(1..=1)
            );
        }
        c.shutdown(std::net::Shutdown::Write).unwrap();
        read_to_eof(&mut c);
        let line = log_line_of(&proxy, port);
        assert!(line.contains(&format!(" {want}")), "{want} in {line}");
        assert!(
            line.contains(&format!(" peer=127.0.0.5:{port} ")),
            "the balancer as peer in {line}"
        );
    }
}

#[test]
fn the_proxy_header_timeout_flag_sets_the_header_deadline() {
    let server = FooServer::start(ServerOpts::default());
    let proxy = Proxy::start(
        &server.addr.to_string(),
        &["--accept-proxy", "--proxy-header-timeout", "300ms"],
    );
    let mut c = TcpStream::connect(proxy.addr).unwrap();
    c.set_read_timeout(Some(WAIT)).unwrap();
    let start = Instant::now();
    c.write_all(b"PROXY TCP4 ").unwrap();
    let (answer, clean) = read_to_eof(&mut c);
    let waited = start.elapsed();
    assert!(answer.is_empty() && clean);
    // Not the 3 s default: closed at 300 ms (the loop's clock may read
    // the deadline a little early or late; 2 s is far from both).
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(2),
        "closed after {waited:?}"
    );
    let r = proxy.report_until(|r| r["proxy_header_errors"] == 1);
    assert_eq!(r["proxy_header_errors"], 1, "{r}");
}

/// F11: clients that send half a PROXY header and then stall (never read,
/// never close) must not keep their slots past the header deadline, or a
/// few of them crowd out every real client for `--fin-timeout`.
#[test]
fn half_header_clients_that_stall_free_their_slots_at_the_header_deadline() {
    let server = FooServer::start(ServerOpts::default());
    let proxy = Proxy::start(
        &server.addr.to_string(),
        &[
            "--accept-proxy",
            "--max-connections",
            "4",
            "--fin-timeout",
            "60s",
            "--log-connections",
        ],
    );
    let stalled: Vec<TcpStream> = (0..4)
        .map(|_| {
            let mut c = TcpStream::connect(proxy.addr).unwrap();
            c.write_all(b"PROXY TCP4 192.0.2.1 ").unwrap();
            c
        })
        .collect();
    proxy.report_until(|r| r["connections_active"] == 4);
    // Every slot is taken: this one waits in the backlog until the
    // stalled ones are gone, at the 3 s header deadline (not after the
    // 60 s --fin-timeout of a lingering close).
    let start = Instant::now();
    let mut real = TcpStream::connect(proxy.addr).unwrap();
    real.set_read_timeout(Some(WAIT)).unwrap();
    real.write_all(b"PROXY TCP4 192.0.2.2 127.0.0.1 1000 8002\r\n")
        .unwrap();
    real.write_all(&requests(1..=1)).unwrap();
    let got = read_exact_timeout(&mut real, answers(1..=1).len());
    let waited = start.elapsed();
    assert_eq!(got, answers(1..=1), "served after {waited:?}");
    assert!(waited < Duration::from_secs(20), "served after {waited:?}");
    let r = proxy.report_until(|r| r["proxy_header_errors"] == 4);
    assert_eq!(r["proxy_header_errors"], 4, "{r}");
    assert_eq!(r["connections_closed"]["proxy_header_error"], 4, "{r}");
    assert_eq!(r["connections_active"], 1, "{r}");
    drop(stalled);
}

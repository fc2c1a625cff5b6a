//! Addresses: every resolved forward address is tried, `:PORT` listens on
//! IPv4 and IPv6, and a proxy that would forward to itself does not start.

mod util;

use std::io::Write;
use std::net::{Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use util::*;

/// A loopback listener on `ip` whose accept queue is full, so further
/// connects hang in SYN_SENT (a real connect timeout on loopback).
fn black_hole(ip: &str) -> (socket2::Socket, Vec<TcpStream>) {
    use socket2::{Domain, Socket, Type};
    let sock = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    let addr: SocketAddr = format!("{ip}:0").parse().unwrap();
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

fn ipv6_loopback() -> bool {
    TcpListener::bind((Ipv6Addr::LOCALHOST, 0)).is_ok()
}

/// Whether this machine lets an unprivileged process have its own user and
/// mount namespace (`unshare -rm`), where the test can give the proxy a
/// hosts file of its own without touching the real one.
fn private_mounts() -> bool {
    Command::new("unshare")
        .args(["-rm", "true"])
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn a_name_with_two_addresses_gets_the_second_after_the_first_times_out() {
    if !private_mounts() {
        eprintln!(
            "SKIPPED a_name_with_two_addresses_gets_the_second_after_the_first_times_out: \
             `unshare -rm` is not allowed here"
        );
        return;
    }
    // The first address drops SYNs; the second, same port, answers.
    let (hole, _fill) = black_hole("127.0.0.1");
    let port = hole.local_addr().unwrap().as_socket().unwrap().port();
    let second = TcpListener::bind(("127.0.0.2", port)).unwrap();
    let _server = FooServer::serve(second, ServerOpts::default());
    // A real name resolution: a hosts file seen only by the proxy, through
    // a private mount namespace the test creates and that dies with it.
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("addresses-two");
    std::fs::create_dir_all(&dir).unwrap();
    let hosts = dir.join("hosts");
    let name = "two-addresses.foo-proxy.test";
    std::fs::write(&hosts, format!("127.0.0.1 {name}\n127.0.0.2 {name}\n")).unwrap();
    let bin = env!("CARGO_BIN_EXE_foo-proxy");
    let script = format!(
        "mount --bind {} /etc/hosts && exec {bin} -listen 127.0.0.1:0 -forward {name}:{port} \
         --connect-timeout 300ms -http 127.0.0.1:0 -recovery-path=",
        hosts.display()
    );
    let proxy = Proxy::spawn(Command::new("unshare").args(["-rm", "sh", "-c", &script]));
    let order = format!("(127.0.0.1:{port}, 127.0.0.2:{port})");
    let deadline = std::time::Instant::now() + WAIT;
    while !proxy.stderr().contains(&order) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        proxy.stderr().contains(&order),
        "the name must resolve to both, in order: {}",
        proxy.stderr()
    );
    for seq in 1..=3 {
        let mut c = proxy.connect();
        c.write_all(format!("REQ {seq} x\n").as_bytes()).unwrap();
        assert_eq!(
            read_exact_timeout(&mut c, answers(seq..=seq).len()),
            answers(seq..=seq),
            "the second address was not tried after the first timed out"
        );
    }
    let r = proxy.report();
    assert_eq!(r["upstream_errors"], 0, "{r}");
}

/// Starts a proxy on `-listen :PORT -http :PORT2`.
fn wildcard_proxy(upstream: &str) -> (Proxy, u16, u16) {
    let (port, admin) = (dead_port(), dead_port());
    let listen = format!(":{port}");
    let http = format!(":{admin}");
    let proxy = Proxy::start_with_args(&[
        "-listen",
        &listen,
        "-forward",
        upstream,
        "-http",
        &http,
        "-recovery-path=",
    ]);
    (proxy, port, admin)
}

#[test]
fn listen_and_http_on_a_bare_port_accept_on_ipv4_and_ipv6() {
    if !ipv6_loopback() {
        eprintln!("SKIPPED listen_and_http_on_a_bare_port_accept_on_ipv4_and_ipv6: no ::1 here");
        return;
    }
    let server = FooServer::start(ServerOpts::default());
    let (proxy, port, admin) = wildcard_proxy(&server.addr.to_string());
    for (seq, ip) in [(1, "127.0.0.1"), (2, "::1")] {
        let addr = SocketAddr::new(ip.parse().unwrap(), port);
        let mut c = TcpStream::connect_timeout(&addr, WAIT)
            .unwrap_or_else(|e| panic!("no accept on {addr}: {e}"));
        c.set_read_timeout(Some(WAIT)).unwrap();
        c.write_all(format!("REQ {seq} x\n").as_bytes()).unwrap();
        assert_eq!(read_exact_timeout(&mut c, 9), answers(seq..=seq), "{addr}");
        let admin_addr = SocketAddr::new(ip.parse().unwrap(), admin);
        let mut a = TcpStream::connect_timeout(&admin_addr, WAIT)
            .unwrap_or_else(|e| panic!("no admin accept on {admin_addr}: {e}"));
        a.set_read_timeout(Some(WAIT)).unwrap();
        a.write_all(b"GET /health HTTP/1.1\r\n\r\n").unwrap();
        let (answer, _) = read_to_eof(&mut a);
        assert!(answer.starts_with(b"HTTP/1.1 200"), "{admin_addr}");
    }
    drop(proxy);
}

fn exits_2_naming_the_forward(args: &[&str]) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_foo-proxy"))
        .args(args)
        .args(["-http=off", "-recovery-path="])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(
        code,
        Some(2),
        "{args:?} still runs or failed otherwise: {stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("-forward") && stderr.contains("own listen address"),
        "{stderr}"
    );
}

#[test]
fn forwarding_to_itself_is_refused_at_start_with_exit_2() {
    let port = dead_port().to_string();
    let same = format!("127.0.0.1:{port}");
    exits_2_naming_the_forward(&["-listen", &same, "-forward", &same]);
    let any = format!(":{port}");
    exits_2_naming_the_forward(&["-listen", &any, "-forward", &same]);
    exits_2_naming_the_forward(&["-listen", &any, "-forward", &format!("localhost:{port}")]);
    exits_2_naming_the_forward(&["-listen", &any, "-forward", &any]);
}

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
    // Each client moved on once; the timed-out address is named, in one
    // throttled line for the three.
    assert_eq!(r["upstream_connect_retries"], 3, "{r}");
    let warned = format!(
        "upstream 127.0.0.1:{port} failed (connect timed out); trying the next address, 127.0.0.2:{port}"
    );
    // Polled for (the output thread writes it), then counted.
    let log = proxy.stderr_has(&warned);
    assert_eq!(log.matches(&warned).count(), 1, "{log}");
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
    // The shape of every other bad value, not a timestamped log line.
    assert!(
        stderr.starts_with("foo-proxy: invalid value ")
            && stderr.trim_end().ends_with("(see foo-proxy -h)"),
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

#[test]
fn forwarding_to_the_unspecified_address_in_any_spelling_is_refused_with_exit_2() {
    // Linux connects 0.0.0.0 and :: to this host: each of these would make
    // one client chain connections until every descriptor is used.
    let port = dead_port();
    let v4 = format!("127.0.0.1:{port}");
    for forward in ["0.0.0.0", "0", "[::ffff:0.0.0.0]", "[::]"] {
        exits_2_naming_the_forward(&["-listen", &v4, "-forward", &format!("{forward}:{port}")]);
    }
    exits_2_naming_the_forward(&[
        "-listen",
        &format!(":{port}"),
        "-forward",
        &format!("0.0.0.0:{port}"),
    ]);
    if ipv6_loopback() {
        let v6 = format!("[::1]:{port}");
        for forward in ["[::]", "[::0]", "[0:0:0:0:0:0:0:0]"] {
            exits_2_naming_the_forward(&["-listen", &v6, "-forward", &format!("{forward}:{port}")]);
        }
    } else {
        eprintln!(
            "SKIPPED the [::1] cases of forwarding_to_the_unspecified_address...: no ::1 here"
        );
    }
}

/// Whether the test can make a network namespace of its own (`unshare
/// -rn`) and set its addresses with `ip`; it dies with the process in it.
fn private_network() -> bool {
    Command::new("unshare")
        .args(["-rn", "ip", "link", "set", "lo", "up"])
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn a_forward_to_this_hosts_link_local_address_with_its_zone_is_refused() {
    if !private_network() {
        eprintln!(
            "SKIPPED a_forward_to_this_hosts_link_local_address_with_its_zone_is_refused: \
             `unshare -rn` or `ip` is not available here"
        );
        return;
    }
    // A namespace whose loopback also has fe80::1: `[fe80::1%lo]` is this
    // host, reachable through the dual-stack `:PORT` listener.
    let bin = env!("CARGO_BIN_EXE_foo-proxy");
    let script = format!(
        "ip link set lo up && ip addr add fe80::1/64 dev lo nodad && \
         exec {bin} -listen :8002 -forward '[fe80::1%lo]:8002' -http=off -recovery-path="
    );
    let out = Command::new("unshare")
        .args([
            "-rn",
            "sh",
            "-c",
            &format!("timeout 5 sh -c \"{script}\"; echo exit=$?"),
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stdout.contains("exit=2"), "{stdout} {stderr}");
    assert!(stderr.contains("own listen address"), "{stderr}");
}

/// Runs inside a private network namespace: a proxy on `0.0.0.0:8002`
/// forwarding to 10.9.9.9:8002, which becomes an address of this host only
/// after the start (a virtual IP moving in); one client; prints how the
/// client's connection ended, the report and the proxy's log.
const LOOP_AFTER_START: &str = r#"
import json, socket, subprocess, sys, time, urllib.request
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
p = subprocess.Popen([sys.argv[1], "-listen", "0.0.0.0:8002", "-forward", "10.9.9.9:8002",
                      "-http", "127.0.0.1:8088", "-recovery-path=", "--max-connections", "50",
                      "--fin-timeout", "1s"], stderr=subprocess.PIPE, text=True)
log = p.stderr.readline()
subprocess.run(["ip", "addr", "add", "10.9.9.9/32", "dev", "lo"], check=True)
c = socket.create_connection(("127.0.0.1", 8002), timeout=5)
c.sendall(b"REQ 1 x\n")
how = "eof"
try:
    while c.recv(65536):
        pass
except socket.timeout:
    how = "timeout"
except OSError as e:
    how = "error %s" % e
time.sleep(0.2)
stats = json.loads(urllib.request.urlopen("http://127.0.0.1:8088/stats", timeout=5).read())
p.terminate()
log += p.communicate(timeout=10)[1]
print(json.dumps({"how": how, "stats": stats, "log": log}))
"#;

#[test]
fn a_forward_that_becomes_this_host_after_start_is_cut_at_the_first_looped_connection() {
    if !private_network() {
        eprintln!(
            "SKIPPED a_forward_that_becomes_this_host_after_start_is_cut_at_the_first_looped_connection: \
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
            LOOP_AFTER_START,
            bin,
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let result: serde_json::Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("{e}: {stdout} {}", String::from_utf8_lossy(&out.stderr)));
    let r = &result["stats"];
    // One client, one looped connection cut at once: the client gets EOF
    // (not served), and no chain of connections builds up.
    assert_eq!(result["how"], "eof", "{result}");
    assert_eq!(r["connections_total"], 1, "{result}");
    assert_eq!(r["upstream_errors"], 1, "{result}");
    assert_eq!(r["connection_limit_hits"], 0, "{result}");
    let log = result["log"].as_str().unwrap();
    assert_eq!(log.matches("a forwarding loop").count(), 1, "{log}");
}

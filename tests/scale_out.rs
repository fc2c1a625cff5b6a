//! More than one foo-proxy behind HAProxy (`mode tcp`, `send-proxy-v2`),
//! scraped by a real Prometheus server: the instances see the real client
//! addresses, the per-client limit acts on them, and PromQL sums over the
//! instances equal what the clients sent. Also foo-proxy `--send-proxy` in
//! front of HAProxy `accept-proxy`.
//!
//! Most tests run on loopback: each "host" is its own loopback address
//! (127.0.0.2, 127.0.0.3; 127.0.0.4 for two processes sharing a port with
//! `--reuse-port`), and clients come from 127.0.0.1x addresses through a
//! small in-test relay that binds the source address (foo-client and
//! foo-load cannot). One runs each host in a network namespace of its own
//! (`ip netns`, veth links with addresses used only on those links), the
//! clients in two more. Needs `haproxy` and `prometheus` on PATH (and
//! `ip netns` permitted for that one); without them a test prints a
//! `SKIPPED:` line and passes (`.ci/run` installs both and prints the same
//! line when it cannot, or when `ip netns` is not permitted).

mod util;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use util::{
    FooServer, Proxy, ServerOpts, WAIT, answers, read_exact_timeout, read_to_eof, requests,
};

/// A program on PATH, or `None`.
fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// `haproxy` and `prometheus`, or a loud skip.
fn tools(test: &str) -> Option<(PathBuf, PathBuf)> {
    match (on_path("haproxy"), on_path("prometheus")) {
        (Some(h), Some(p)) => Some((h, p)),
        (h, p) => {
            let missing: Vec<&str> = [("haproxy", h.is_none()), ("prometheus", p.is_none())]
                .iter()
                .filter(|(_, m)| *m)
                .map(|(n, _)| *n)
                .collect();
            eprintln!("SKIPPED: {test}: {} not on PATH", missing.join(" and "));
            None
        }
    }
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("foo-proxy-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A free port on `ip` (bound, then released).
fn free_port(ip: &str) -> u16 {
    TcpListener::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process with its output collected, killed on drop.
struct Daemon {
    child: Child,
    output: Arc<Mutex<String>>,
}

impl Daemon {
    fn spawn(cmd: &mut Command) -> Daemon {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let output = Arc::new(Mutex::new(String::new()));
        let out = child.stdout.take().unwrap();
        let err = child.stderr.take().unwrap();
        for pipe in [Box::new(out) as Box<dyn Read + Send>, Box::new(err)] {
            let sink = output.clone();
            thread::spawn(move || {
                for line in BufReader::new(pipe).lines() {
                    let Ok(line) = line else { break };
                    let mut s = sink.lock().unwrap();
                    s.push_str(&line);
                    s.push('\n');
                }
            });
        }
        Daemon { child, output }
    }

    fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    /// Waits until the output contains `text`; whether it did.
    fn wait_for(&self, text: &str, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if self.output().contains(text) {
                return true;
            }
            thread::sleep(Duration::from_millis(50));
        }
        false
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// HAProxy in the foreground with `config`, logging to its stdout; waits
/// until `ready` accepts connections.
fn haproxy(bin: &PathBuf, dir: &std::path::Path, config: &str, ready: SocketAddr) -> Daemon {
    let path = dir.join("haproxy.cfg");
    std::fs::write(&path, config).unwrap();
    let d = Daemon::spawn(Command::new(bin).arg("-db").arg("-f").arg(&path));
    let deadline = Instant::now() + WAIT;
    // Probed from an address of its own, which the tests expect nowhere.
    while connect_probe(ready).is_err() {
        assert!(
            Instant::now() < deadline,
            "haproxy did not start: {}",
            d.output()
        );
        thread::sleep(Duration::from_millis(50));
    }
    d
}

const HAPROXY_GLOBAL: &str = "\
global
    log stdout format raw local0 info
    maxconn 1000
defaults
    mode tcp
    log global
    option tcplog
    timeout connect 5s
    timeout client 30s
    timeout server 30s
";

/// A Prometheus server scraping `targets` every second.
struct Prometheus {
    _daemon: Daemon,
    addr: SocketAddr,
}

impl Prometheus {
    fn start(bin: &PathBuf, dir: &std::path::Path, targets: &[SocketAddr]) -> Prometheus {
        let list: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: foo-proxy\n    static_configs:\n      - targets: [{}]\n",
            list.join(", ")
        );
        let path = dir.join("prometheus.yml");
        std::fs::write(&path, config).unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port("127.0.0.1"))
            .parse()
            .unwrap();
        let daemon = Daemon::spawn(
            Command::new(bin)
                .arg(format!("--config.file={}", path.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.join("tsdb").display()
                ))
                .arg(format!("--web.listen-address={addr}")),
        );
        let p = Prometheus {
            _daemon: daemon,
            addr,
        };
        let up = p.eventually("sum(up)", |v| v == targets.len() as f64, 3 * WAIT);
        assert_eq!(
            up,
            Some(targets.len() as f64),
            "prometheus scrapes every instance: {}",
            p._daemon.output()
        );
        p
    }

    /// The value of an instant query with one result, if any.
    fn query(&self, promql: &str) -> Option<f64> {
        let url = format!("http://{}/api/v1/query", self.addr);
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(WAIT))
            .build()
            .into();
        let mut resp = agent.get(&url).query("query", promql).call().ok()?;
        let text = resp.body_mut().read_to_string().ok()?;
        let body: serde_json::Value = serde_json::from_str(&text).ok()?;
        let value = body["data"]["result"].get(0)?["value"].get(1)?.as_str()?;
        value.parse().ok()
    }

    /// Polls `promql` until `done` holds (the next scrapes bring the
    /// latest counts); the last value.
    fn eventually(
        &self,
        promql: &str,
        done: impl Fn(f64) -> bool,
        within: Duration,
    ) -> Option<f64> {
        let deadline = Instant::now() + within;
        let mut last = None;
        while Instant::now() < deadline {
            last = self.query(promql);
            if last.is_some_and(&done) {
                break;
            }
            thread::sleep(Duration::from_millis(250));
        }
        last
    }
}

/// A relay on 127.0.0.1 whose connections go on to `target` from
/// `source`: how foo-client and foo-load (which cannot bind a source
/// address) appear to come from another client address.
fn from_source(source: &'static str, target: SocketAddr) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        for inbound in listener.incoming() {
            let Ok(inbound) = inbound else { break };
            let outbound = connect_from(source, target);
            let (a, b) = (inbound.try_clone().unwrap(), outbound.try_clone().unwrap());
            thread::spawn(move || copy(inbound, outbound));
            thread::spawn(move || copy(b, a));
        }
    });
    addr
}

/// Copies until EOF, then passes the FIN on.
fn copy(mut from: TcpStream, mut to: TcpStream) {
    let _ = std::io::copy(&mut from, &mut to);
    let _ = to.shutdown(Shutdown::Write);
}

fn connect_probe(to: SocketAddr) -> std::io::Result<TcpStream> {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    let from: SocketAddr = "127.0.0.99:0".parse().unwrap();
    s.bind(&from.into())?;
    s.connect(&to.into())?;
    Ok(s.into())
}

/// A TCP connection to `to` from `source`.
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

/// Runs foo-client (`-n` requests on each of `-c` connections) against
/// `target`; panics unless every answer checked out.
fn foo_client(target: SocketAddr, n: u64, c: u64) {
    let out = Command::new(util::tool("foo-client"))
        .args(["-connect", &target.to_string()])
        .args(["-n", &n.to_string(), "-c", &c.to_string(), "--seed", "7"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "foo-client: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs foo-load against `target` for one second; its JSON summary.
fn foo_load(target: SocketAddr) -> serde_json::Value {
    let out = Command::new(util::tool("foo-load"))
        .args(["--target", &target.to_string(), "--json"])
        .args(["--connections", "4", "--depth", "4", "--duration", "1s"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "foo-load: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A foo-proxy "host" on `ip:port` behind the balancer.
fn instance(ip: &str, port: u16, upstream: SocketAddr, extra: &[&str]) -> Proxy {
    let listen = format!("{ip}:{port}");
    let http = format!("{ip}:0");
    let upstream = upstream.to_string();
    let mut args = vec![
        "-listen",
        &listen,
        "-forward",
        &upstream,
        "-http",
        &http,
        "-recovery-path=",
        "--accept-proxy",
        "--log-connections",
    ];
    args.extend_from_slice(extra);
    Proxy::start_with_args(&args)
}

/// Waits (bounded) until `proxy`'s stderr holds a connection-log line with
/// `needle`; its whole stderr.
fn log_with(proxy: &Proxy, needle: &str) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let log = proxy.stderr();
        let found = log
            .lines()
            .any(|l| l.contains("msg=connection") && l.contains(needle));
        if found || Instant::now() >= deadline {
            return log;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

fn counter(report: &serde_json::Value, name: &str) -> u64 {
    report[name]
        .as_u64()
        .unwrap_or_else(|| panic!("{name} in {report}"))
}

#[test]
fn two_hosts_behind_haproxy_see_the_real_clients_and_add_up_in_prometheus() {
    let test = "two_hosts_behind_haproxy_see_the_real_clients_and_add_up_in_prometheus";
    let Some((haproxy_bin, prometheus_bin)) = tools(test) else {
        return;
    };
    let dir = scratch("scale-out-hosts");
    let server = FooServer::start(ServerOpts::default());
    // Both hosts listen on the same port, as a fleet does.
    let port = free_port("127.0.0.2");
    let limit = ["--max-connections-per-client", "3"];
    let hosts = [
        instance("127.0.0.2", port, server.addr, &limit),
        instance("127.0.0.3", port, server.addr, &limit),
    ];
    let front: SocketAddr = format!("127.0.0.1:{}", free_port("127.0.0.1"))
        .parse()
        .unwrap();
    let mut config = format!(
        "{HAPROXY_GLOBAL}frontend fe\n    bind {front}\n    default_backend foo\n\
         backend foo\n    balance roundrobin\n    option httpchk GET /ready\n"
    );
    for (name, host) in ["a", "b"].iter().zip(&hosts) {
        let admin = host.admin.unwrap();
        config.push_str(&format!(
            "    server {name} {} send-proxy-v2 check port {} inter 500ms\n",
            host.addr,
            admin.port()
        ));
    }
    let lb = haproxy(&haproxy_bin, &dir, &config, front);
    let targets: Vec<SocketAddr> = hosts.iter().map(|h| h.admin.unwrap()).collect();
    let prom = Prometheus::start(&prometheus_bin, &dir, &targets);

    // Two clients, one after the other so that round robin gives each of
    // them connections on both hosts: 4 connections x 250 requests each.
    let (n, c) = (250, 4);
    for source in ["127.0.0.11", "127.0.0.12"] {
        foo_client(from_source(source, front), n, c);
    }
    let sent = 2 * n * c;
    for host in &hosts {
        let r = host.report_until(|r| r["connections_active"] == 0);
        assert_eq!(counter(&r, "proxy_header_errors"), 0, "{r}");
        for source in ["127.0.0.11", "127.0.0.12"] {
            let client = format!(" client={source}:");
            let log = log_with(host, &client);
            assert!(
                log.contains(&client),
                "{}'s connection log names the real client {source}:\n{log}",
                host.addr
            );
        }
        // HAProxy (127.0.0.1) is the socket's peer, never the client.
        let log = host.stderr();
        assert!(!log.contains(" client=127.0.0.1:"), "{log}");
        assert!(log.contains(" peer=127.0.0.1:"), "{log}");
    }
    let per_host: Vec<u64> = hosts
        .iter()
        .map(|h| counter(&h.report(), "msg_req"))
        .collect();
    assert_eq!(per_host.iter().sum::<u64>(), sent, "{per_host:?}");
    assert!(per_host.iter().all(|&m| m > 0), "{per_host:?}");
    let sum = "sum(foo_messages_total{type=\"req\"})";
    let want = sent as f64;
    assert_eq!(prom.eventually(sum, |v| v == want, 3 * WAIT), Some(want));
    let answered = "sum(foo_messages_total{type=~\"ack|nak\"})";
    assert_eq!(
        prom.eventually(answered, |v| v == want, 3 * WAIT),
        Some(want)
    );

    // The per-client limit, 3 per host, on the address HAProxy reports:
    // 10 connections from one client alternate over the two hosts; each
    // host serves 3 and closes 2. Every one of them comes from HAProxy's
    // own 127.0.0.1.
    let mut open = Vec::new();
    let (mut served, mut refused) = (0, 0);
    for _ in 0..10 {
        let mut s = connect_from("127.0.0.13", front);
        s.write_all(&requests(1..=1)).unwrap();
        let got = read_exact_timeout(&mut s, answers(1..=1).len());
        if got == answers(1..=1) {
            served += 1;
            open.push(s);
        } else {
            let (rest, _) = read_to_eof(&mut s);
            assert!(got.is_empty() && rest.is_empty(), "{got:?}");
            refused += 1;
        }
    }
    assert_eq!((served, refused), (6, 4));
    // Another client is not affected.
    let mut other = connect_from("127.0.0.14", front);
    other.write_all(&requests(1..=1)).unwrap();
    assert_eq!(read_exact_timeout(&mut other, 9), answers(1..=1));
    for host in &hosts {
        assert_eq!(counter(&host.report(), "client_limit_hits"), 2);
    }
    let hits = "sum(foo_client_limit_hits_total)";
    assert_eq!(prom.eventually(hits, |v| v == 4.0, 3 * WAIT), Some(4.0));
    drop(open);

    // foo-load through the balancer too: PromQL still adds the hosts up.
    let load = foo_load(from_source("127.0.0.15", front));
    assert_eq!(load["errors"], 0, "{load}");
    thread::sleep(Duration::from_millis(300));
    let reqs: u64 = hosts.iter().map(|h| counter(&h.report(), "msg_req")).sum();
    assert!(reqs >= sent + 7 + load["answers"].as_u64().unwrap());
    let got = prom.eventually(sum, |v| v == reqs as f64, 3 * WAIT);
    assert_eq!(got, Some(reqs as f64));
    // HAProxy's own log names the clients too.
    assert!(lb.wait_for("127.0.0.13:", WAIT), "{}", lb.output());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn two_processes_sharing_a_port_behind_haproxy_add_up_in_prometheus() {
    let test = "two_processes_sharing_a_port_behind_haproxy_add_up_in_prometheus";
    let Some((haproxy_bin, prometheus_bin)) = tools(test) else {
        return;
    };
    let dir = scratch("scale-out-reuse-port");
    // A 15 ms upstream: every answer's latency, as the proxies and as
    // foo-load see it, falls in the histogram's (10 ms, 25 ms] bucket
    // unless the machine adds more than 10 ms.
    let server = FooServer::start(ServerOpts {
        delay: Some(Duration::from_millis(15)),
        ..ServerOpts::default()
    });
    let port = free_port("127.0.0.4");
    let shared = ["--reuse-port"];
    let procs = [
        instance("127.0.0.4", port, server.addr, &shared),
        instance("127.0.0.4", port, server.addr, &shared),
    ];
    assert_eq!(procs[0].addr, procs[1].addr);
    let front: SocketAddr = format!("127.0.0.1:{}", free_port("127.0.0.1"))
        .parse()
        .unwrap();
    // One server line: HAProxy sees one address; its check asks the
    // first process's /ready.
    let config = format!(
        "{HAPROXY_GLOBAL}frontend fe\n    bind {front}\n    default_backend foo\n\
         backend foo\n    option httpchk GET /ready\n\
         \x20   server shared {} send-proxy-v2 check port {} inter 500ms\n",
        procs[0].addr,
        procs[0].admin.unwrap().port()
    );
    let _lb = haproxy(&haproxy_bin, &dir, &config, front);
    let targets: Vec<SocketAddr> = procs.iter().map(|p| p.admin.unwrap()).collect();
    let prom = Prometheus::start(&prometheus_bin, &dir, &targets);

    // 32 connections: the kernel spreads them over the two listeners.
    let (n, c) = (50, 16);
    for source in ["127.0.0.11", "127.0.0.12"] {
        foo_client(from_source(source, front), n, c);
    }
    let sent = 2 * n * c;
    let conns: Vec<u64> = procs
        .iter()
        .map(|p| {
            counter(
                &p.report_until(|r| r["connections_active"] == 0),
                "connections_total",
            )
        })
        .collect();
    assert!(
        conns.iter().all(|&n| n > 0),
        "both processes served: {conns:?}"
    );
    for p in &procs {
        let log = log_with(p, " client=127.0.0.1");
        let named = |c: &str| log.contains(&format!(" client={c}:"));
        assert!(named("127.0.0.11") || named("127.0.0.12"), "{log}");
        assert!(!named("127.0.0.1"), "{log}");
    }
    let sum = "sum(foo_messages_total{type=\"req\"})";
    let want = sent as f64;
    assert_eq!(prom.eventually(sum, |v| v == want, 3 * WAIT), Some(want));
    let total = "sum(foo_connections_total)";
    let conns_sum = conns.iter().sum::<u64>() as f64;
    assert_eq!(
        prom.eventually(total, |v| v == conns_sum, 3 * WAIT),
        Some(conns_sum)
    );

    // foo-load through the balancer: the latency histograms of both
    // processes, summed by bucket in PromQL, give a median in the bucket
    // of the median foo-load measured (end to end, so a little more than
    // what the proxies time: the balancer and the relay in between).
    let load = foo_load(from_source("127.0.0.15", front));
    assert_eq!(load["errors"], 0, "{load}");
    let timed: u64 = procs
        .iter()
        .map(|p| {
            let h = &p.report()["response_latency_histogram"];
            ["ack", "nak"]
                .iter()
                .flat_map(|t| h[t].as_array().unwrap().iter())
                .map(|n| n.as_u64().unwrap())
                .sum::<u64>()
        })
        .sum();
    assert!(timed >= sent, "{timed} answers timed");
    let count = "sum(foo_response_latency_seconds_count)";
    assert_eq!(
        prom.eventually(count, |v| v == timed as f64, 3 * WAIT),
        Some(timed as f64)
    );
    let median = prom
        .query("histogram_quantile(0.5, sum by (le) (foo_response_latency_seconds_bucket))")
        .unwrap();
    let measured = load["latency_us"]["p50"].as_f64().unwrap() / 1e6;
    let bounds: Vec<f64> = foo_proxy::latency::BOUNDS_US
        .iter()
        .map(|&us| us as f64 / 1e6)
        .collect();
    let hi = bounds.iter().copied().find(|&b| measured <= b);
    let lo = bounds
        .iter()
        .copied()
        .rfind(|&b| b < measured)
        .unwrap_or(0.0);
    let hi = hi.unwrap_or(f64::INFINITY);
    assert!(
        lo <= median && median <= hi,
        "PromQL median {median} s outside foo-load's bucket ({lo}, {hi}] (its p50 {measured} s)"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn haproxy_accept_proxy_reads_foo_proxys_send_proxy_header() {
    let test = "haproxy_accept_proxy_reads_foo_proxys_send_proxy_header";
    let Some(haproxy_bin) = on_path("haproxy") else {
        eprintln!("SKIPPED: {test}: haproxy not on PATH");
        return;
    };
    let dir = scratch("send-proxy-haproxy");
    let server = FooServer::start(ServerOpts::default());
    let front: SocketAddr = format!("127.0.0.1:{}", free_port("127.0.0.1"))
        .parse()
        .unwrap();
    let config = format!(
        "{HAPROXY_GLOBAL}frontend fe\n    bind {front} accept-proxy\n    default_backend foo\n\
         backend foo\n    server s {}\n",
        server.addr
    );
    let lb = haproxy(&haproxy_bin, &dir, &config, front);
    for (version, source) in [("v1", "127.0.0.21"), ("v2", "127.0.0.22")] {
        let proxy = Proxy::start(&front.to_string(), &["--send-proxy", version]);
        let mut s = connect_from(source, proxy.addr);
        let port = s.local_addr().unwrap().port();
        s.write_all(&requests(1..=20)).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let (got, clean) = read_to_eof(&mut s);
        assert!(clean);
        assert_eq!(got, answers(1..=20), "relayed through HAProxy");
        // HAProxy logs the session when it ends, with the client address
        // it read from the header (not foo-proxy's 127.0.0.1).
        let client = format!("{source}:{port} ");
        assert!(lb.wait_for(&client, WAIT), "{version}: {}", lb.output());
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn haproxy_send_proxy_v1_reaches_foo_proxy_with_the_client_address() {
    let test = "haproxy_send_proxy_v1_reaches_foo_proxy_with_the_client_address";
    let Some(haproxy_bin) = on_path("haproxy") else {
        eprintln!("SKIPPED: {test}: haproxy not on PATH");
        return;
    };
    let dir = scratch("accept-proxy-v1");
    let server = FooServer::start(ServerOpts::default());
    let port = free_port("127.0.0.5");
    let host = instance("127.0.0.5", port, server.addr, &[]);
    let front: SocketAddr = format!("127.0.0.1:{}", free_port("127.0.0.1"))
        .parse()
        .unwrap();
    let config = format!(
        "{HAPROXY_GLOBAL}frontend fe\n    bind {front}\n    default_backend foo\n\
         backend foo\n    server a {} send-proxy\n",
        host.addr
    );
    let _lb = haproxy(&haproxy_bin, &dir, &config, front);
    let mut s = connect_from("127.0.0.23", front);
    let port = s.local_addr().unwrap().port();
    s.write_all(&requests(1..=5)).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let (got, _) = read_to_eof(&mut s);
    assert_eq!(got, answers(1..=5));
    let client = format!(" client=127.0.0.23:{port} peer=127.0.0.1:");
    let log = log_with(&host, &client);
    assert!(log.contains(&client), "{log}");
    let r = host.report();
    assert_eq!(
        (counter(&r, "msg_req"), counter(&r, "proxy_header_errors")),
        (5, 0)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Runs `cmd` to its end within `within` (killed past it); its output.
fn run_bounded(cmd: &mut Command, within: Duration) -> Result<std::process::Output, String> {
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{what}: {e}"))?;
    let deadline = Instant::now() + within;
    while child.try_wait().map_err(|e| e.to_string())?.is_none() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("{what}: still running after {within:?}"));
        }
        thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().map_err(|e| e.to_string())
}

/// `ip ARGS`, bounded; its stdout, or why it failed.
fn ip(args: &[&str]) -> Result<String, String> {
    let out = run_bounded(Command::new("ip").args(args), WAIT)?;
    match out.status.success() {
        true => Ok(String::from_utf8_lossy(&out.stdout).into_owned()),
        false => Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )),
    }
}

/// Network namespaces (and the root ends of their veth links) this test
/// made: deleted on drop, so on every exit path, a panic included. The
/// processes inside must be gone first (declare this before them: locals
/// drop in reverse order), else a namespace lives on until they exit.
struct Netns {
    names: Vec<String>,
    links: Vec<String>,
}

impl Drop for Netns {
    fn drop(&mut self) {
        for link in &self.links {
            let _ = ip(&["link", "del", link]);
        }
        for name in &self.names {
            let _ = ip(&["netns", "del", name]);
        }
    }
}

/// Namespaces named `fooN-<pid>-…` whose test process is gone (killed
/// before its guard ran) are deleted, so that runs do not pile them up.
fn reap_stale_namespaces() {
    let Ok(list) = ip(&["netns", "list"]) else {
        return;
    };
    for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
        let Some(pid) = name.strip_prefix("fooN-").and_then(|r| r.split('-').next()) else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = ip(&["netns", "del", name]);
        }
    }
}

/// One "host": a namespace and the veth link to it, `/30`, the root end
/// `.gw`, the namespace's end `.addr`.
struct Host {
    ns: String,
    gw: String,
    addr: String,
}

/// Makes one namespace per `role`, each linked to the root namespace by a
/// veth pair with addresses from 10.x.y.0/28 (x, y from this process's id,
/// moved on while the root namespace already has one of them): used only
/// on these links, which exist only while the test runs. No default route:
/// a namespace reaches its own link and the `/32` routes the test adds.
fn make_hosts(test: &str, roles: &[&str]) -> Result<(Netns, Vec<Host>), String> {
    reap_stale_namespaces();
    let pid = std::process::id();
    let used = ip(&["-4", "-o", "addr", "show"])?;
    let x = 100 + (pid >> 8) % 100;
    let mut y = pid & 0xff;
    while used.contains(&format!(" 10.{x}.{y}.")) {
        y = (y + 1) % 256;
    }
    let mut guard = Netns {
        names: Vec::new(),
        links: Vec::new(),
    };
    let mut hosts = Vec::new();
    for (k, role) in roles.iter().enumerate() {
        let ns = format!("fooN-{pid}-{role}");
        ip(&["netns", "add", &ns])
            .map_err(|e| format!("{test}: `ip netns add` is not permitted here: {e}"))?;
        guard.names.push(ns.clone());
        let link = format!("fn{pid}{k}");
        ip(&[
            "link", "add", &link, "type", "veth", "peer", "name", "eth0", "netns", &ns,
        ])
        .map_err(|e| format!("{test}: veth links are not permitted here: {e}"))?;
        guard.links.push(link.clone());
        let (gw, addr) = (
            format!("10.{x}.{y}.{}", 4 * k + 1),
            format!("10.{x}.{y}.{}", 4 * k + 2),
        );
        ip(&["addr", "add", &format!("{gw}/30"), "dev", &link])?;
        ip(&["link", "set", &link, "up"])?;
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{addr}/30"),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        hosts.push(Host { ns, gw, addr });
    }
    Ok((guard, hosts))
}

/// Runs a test tool inside namespace `ns`; its stdout, or a panic with
/// its stderr.
fn tool_in(ns: &str, name: &str, args: &[&str]) -> Vec<u8> {
    let tool = util::tool(name);
    let out = run_bounded(
        Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(&tool)
            .args(args),
        6 * WAIT,
    )
    .unwrap();
    assert!(
        out.status.success(),
        "{name} in {ns}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Answers timed by `proxy` in its latency histogram at or under bucket
/// `upto` (an index into `BOUNDS_US`), ACKs and NAKs together.
fn timed_upto(proxy: &Proxy, upto: usize) -> u64 {
    let h = &proxy.report()["response_latency_histogram"];
    ["ack", "nak"]
        .iter()
        .flat_map(|t| h[t].as_array().unwrap().iter().take(upto + 1))
        .map(|n| n.as_u64().unwrap())
        .sum()
}

#[test]
fn two_hosts_in_network_namespaces_see_the_real_clients_and_add_up_in_prometheus() {
    let test = "two_hosts_in_network_namespaces_see_the_real_clients_and_add_up_in_prometheus";
    let Some((haproxy_bin, prometheus_bin)) = tools(test) else {
        return;
    };
    if on_path("ip").is_none() {
        eprintln!("SKIPPED: {test}: ip (iproute2) not on PATH");
        return;
    }
    // Two proxy hosts (a, b) and two client hosts (c1, c2), each its own
    // namespace. Declared first, dropped last: after every process in them.
    let (_netns, hosts) = match make_hosts(test, &["a", "b", "c1", "c2"]) {
        Ok(made) => made,
        Err(e) if e.contains("is not permitted here") || e.contains("are not permitted here") => {
            eprintln!("SKIPPED: {e}");
            return;
        }
        Err(e) => panic!("{e}"),
    };
    let [a, b, c1, c2] = [&hosts[0], &hosts[1], &hosts[2], &hosts[3]];
    let dir = scratch("scale-out-netns");
    // The Foo server in the root namespace on a's link; b reaches it by a
    // route through its own link. A 15 ms server puts every latency in
    // the (10, 25] ms bucket unless the machine adds 10 ms.
    let listener = TcpListener::bind((a.gw.as_str(), 0)).unwrap();
    let server = FooServer::serve(
        listener,
        ServerOpts {
            delay: Some(Duration::from_millis(15)),
            ..ServerOpts::default()
        },
    );
    ip(&[
        "-n",
        &b.ns,
        "route",
        "add",
        &format!("{}/32", a.gw),
        "via",
        &b.gw,
    ])
    .unwrap();
    // Each host runs foo-proxy on the same ports, as a fleet does.
    let instances: Vec<Proxy> = [a, b]
        .iter()
        .map(|h| {
            Proxy::spawn(
                Command::new("ip")
                    .args(["netns", "exec", &h.ns, env!("CARGO_BIN_EXE_foo-proxy")])
                    .args(["-listen", &format!("{}:8002", h.addr)])
                    .args(["-forward", &server.addr.to_string()])
                    .args(["-http", &format!("{}:8088", h.addr)])
                    .args(["-recovery-path=", "--accept-proxy", "--log-connections"])
                    .args(["--max-connections-per-client", "3"]),
            )
        })
        .collect();
    // HAProxy in the root namespace: clients reach it on c1's link (c2
    // by a route through its own) and, for the in-test clients, on
    // loopback. It sends v2 headers with a CRC32c TLV, which the proxies
    // check; its health check asks each host's /ready on its admin port.
    let port = free_port("127.0.0.1");
    let front: SocketAddr = format!("{}:{port}", c1.gw).parse().unwrap();
    let local: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    ip(&[
        "-n",
        &c2.ns,
        "route",
        "add",
        &format!("{}/32", c1.gw),
        "via",
        &c2.gw,
    ])
    .unwrap();
    let mut config = format!(
        "{HAPROXY_GLOBAL}frontend fe\n    bind {front}\n    bind {local}\n    default_backend foo\n\
         backend foo\n    balance roundrobin\n    option httpchk GET /ready\n"
    );
    for (name, p) in ["a", "b"].iter().zip(&instances) {
        config.push_str(&format!(
            "    server {name} {} send-proxy-v2 proxy-v2-options crc32c check port 8088 inter 500ms\n",
            p.addr
        ));
    }
    let lb = haproxy(&haproxy_bin, &dir, &config, local);
    let targets: Vec<SocketAddr> = instances.iter().map(|p| p.admin.unwrap()).collect();
    let prom = Prometheus::start(&prometheus_bin, &dir, &targets);

    // foo-client from each client host, one after the other, so that
    // round robin gives each of them connections on both proxy hosts.
    let (n, c) = (100, 4);
    let connect = front.to_string();
    for client in [c1, c2] {
        let args = [
            "-connect",
            &connect,
            "-n",
            &n.to_string(),
            "-c",
            &c.to_string(),
        ];
        tool_in(
            &client.ns,
            "foo-client",
            &[&args[..], &["--seed", "7"]].concat(),
        );
    }
    let sent = 2 * n * c;
    for (p, host) in instances.iter().zip([a, b]) {
        let r = p.report_until(|r| r["connections_active"] == 0);
        assert_eq!(counter(&r, "proxy_header_errors"), 0, "{r}");
        for client in [c1, c2] {
            let named = format!(" client={}:", client.addr);
            let log = log_with(p, &named);
            assert!(
                log.contains(&named),
                "{}'s connection log names the real client {}:\n{log}",
                host.ns,
                client.addr
            );
        }
        // HAProxy, on this host's link, is the socket's peer only.
        let log = p.stderr();
        assert!(log.contains(&format!(" peer={}:", host.gw)), "{log}");
        for lb_side in [&a.gw, &b.gw] {
            assert!(!log.contains(&format!(" client={lb_side}:")), "{log}");
        }
    }
    let sum = "sum(foo_messages_total{type=\"req\"})";
    let want = sent as f64;
    assert_eq!(prom.eventually(sum, |v| v == want, 3 * WAIT), Some(want));
    let answered = "sum(foo_messages_total{type=~\"ack|nak\"})";
    assert_eq!(
        prom.eventually(answered, |v| v == want, 3 * WAIT),
        Some(want)
    );

    // The per-client limit, 3 per host, on the address from the header:
    // 10 connections from one client alternate over the hosts; each host
    // serves 3 and closes 2, though all come from HAProxy.
    let mut open = Vec::new();
    let (mut served, mut refused) = (0, 0);
    for _ in 0..10 {
        let mut s = connect_from("127.0.0.13", local);
        s.write_all(&requests(1..=1)).unwrap();
        let got = read_exact_timeout(&mut s, answers(1..=1).len());
        if got == answers(1..=1) {
            served += 1;
            open.push(s);
        } else {
            let (rest, _) = read_to_eof(&mut s);
            assert!(got.is_empty() && rest.is_empty(), "{got:?}");
            refused += 1;
        }
    }
    assert_eq!((served, refused), (6, 4));
    let mut other = connect_from("127.0.0.14", local);
    other.write_all(&requests(1..=1)).unwrap();
    assert_eq!(read_exact_timeout(&mut other, 9), answers(1..=1));
    for p in &instances {
        assert_eq!(counter(&p.report(), "client_limit_hits"), 2);
        let log = p.stderr();
        assert!(log.contains(" client=127.0.0.13:"), "{log}");
    }
    let hits = "sum(foo_client_limit_hits_total)";
    assert_eq!(prom.eventually(hits, |v| v == 4.0, 3 * WAIT), Some(4.0));
    drop((open, other));

    // foo-load from c1: the latency histograms of both hosts, summed by
    // bucket in PromQL, hold exactly the hosts' own counts, and their
    // median lies in the bucket of the median foo-load measured.
    let load: serde_json::Value = serde_json::from_slice(&tool_in(
        &c1.ns,
        "foo-load",
        &[
            "--target",
            &connect,
            "--json",
            "--connections",
            "4",
            "--depth",
            "4",
            "--duration",
            "1s",
        ],
    ))
    .unwrap();
    assert_eq!(load["errors"], 0, "{load}");
    let measured = load["latency_us"]["p50"].as_f64().unwrap();
    let bounds = foo_proxy::latency::BOUNDS_US;
    let upto = bounds
        .iter()
        .position(|&b| measured <= b as f64)
        .unwrap_or(bounds.len());
    for p in &instances {
        p.report_until(|r| r["connections_active"] == 0);
    }
    let all: u64 = instances.iter().map(|p| timed_upto(p, bounds.len())).sum();
    assert!(all >= sent, "{all} answers timed");
    let count = "sum(foo_response_latency_seconds_count)";
    assert_eq!(
        prom.eventually(count, |v| v == all as f64, 3 * WAIT),
        Some(all as f64)
    );
    if let Some(&bound) = bounds.get(upto) {
        let within: u64 = instances.iter().map(|p| timed_upto(p, upto)).sum();
        let le = format!(
            "sum(foo_response_latency_seconds_bucket{{le=\"{}\"}})",
            bound as f64 / 1e6
        );
        assert_eq!(prom.query(&le), Some(within as f64), "{le}");
    }
    let median = prom
        .query("histogram_quantile(0.5, sum by (le) (foo_response_latency_seconds_bucket))")
        .unwrap();
    let hi = bounds.get(upto).map_or(f64::INFINITY, |&b| b as f64 / 1e6);
    let lo = upto
        .checked_sub(1)
        .and_then(|i| bounds.get(i))
        .map_or(0.0, |&b| b as f64 / 1e6);
    assert!(
        lo <= median && median <= hi,
        "PromQL median {median} s outside foo-load's bucket ({lo}, {hi}] (its p50 {measured} us)"
    );
    let reqs: u64 = instances
        .iter()
        .map(|p| counter(&p.report(), "msg_req"))
        .sum();
    assert_eq!(
        prom.eventually(sum, |v| v == reqs as f64, 3 * WAIT),
        Some(reqs as f64)
    );
    // HAProxy's own log names a client host too.
    assert!(
        lb.wait_for(&format!("{}:", c2.addr), WAIT),
        "{}",
        lb.output()
    );
    drop((prom, lb, instances));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn reuse_port_processes_with_a_server_line_each_are_checked_apart_and_a_drain_refuses_no_client() {
    let test = "reuse_port_processes_with_a_server_line_each_are_checked_apart_and_a_drain_refuses_no_client";
    let Some(haproxy_bin) = on_path("haproxy") else {
        eprintln!("SKIPPED: {test}: haproxy not on PATH");
        return;
    };
    let dir = scratch("reuse-port-checks");
    let server = FooServer::start(ServerOpts::default());
    let port = free_port("127.0.0.6");
    let shared = ["--reuse-port"];
    let procs = [
        instance("127.0.0.6", port, server.addr, &shared),
        instance("127.0.0.6", port, server.addr, &shared),
    ];
    let front: SocketAddr = format!("127.0.0.1:{}", free_port("127.0.0.1"))
        .parse()
        .unwrap();
    // One server line per process, all on the shared address, each
    // checked on its own admin port: HAProxy knows each process's state,
    // though where a connection lands is the kernel's choice.
    let mut config = format!(
        "{HAPROXY_GLOBAL}frontend fe\n    bind {front}\n    default_backend foo\n\
         backend foo\n    option httpchk GET /ready\n"
    );
    for (i, p) in procs.iter().enumerate() {
        config.push_str(&format!(
            "    server p{i} {} send-proxy-v2 check port {} inter 300ms fall 1 rise 1\n",
            p.addr,
            p.admin.unwrap().port()
        ));
    }
    let lb = haproxy(&haproxy_bin, &dir, &config, front);
    // The first process drains: its /ready turns 503 (or its admin port
    // closes when it is done), and its line alone goes down.
    procs[0].signal("TERM");
    assert!(
        lb.wait_for("foo/p0 is DOWN", WAIT),
        "HAProxy marks the draining process down: {}",
        lb.output()
    );
    assert!(!lb.output().contains("foo/p1 is DOWN"), "{}", lb.output());
    // It left the port's group when it began draining: every new client
    // lands on the other process and is served.
    let before = counter(&procs[1].report(), "connections_total");
    for _ in 0..20 {
        let mut s = connect_from("127.0.0.16", front);
        s.write_all(&requests(1..=3)).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let (got, _) = read_to_eof(&mut s);
        assert_eq!(got, answers(1..=3));
    }
    let r = procs[1].report_until(|r| r["connections_active"] == 0);
    assert_eq!(counter(&r, "connections_total"), before + 20, "{r}");
    let _ = std::fs::remove_dir_all(&dir);
}

//! A real Prometheus server scrapes the proxy every second while foo-load
//! runs through it against `foo-server --delay-ms 20`, and its query API
//! must see the latency and the request rate the load saw.
//!
//! The `prometheus` binary comes from Debian's `prometheus` package,
//! unpacked by `.ci/run` onto PATH (no service started); `PROMETHEUS` may
//! name it. Without it the test prints a `SKIPPED` line (and `.ci/run`
//! prints one of its own).

mod util;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use util::{Proxy, WAIT};

/// A scratch directory, removed on drop.
struct Scratch(std::path::PathBuf);

impl Scratch {
    fn new() -> Scratch {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let path = std::env::temp_dir().join(format!("foo-prom-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&path).unwrap();
        Scratch(path)
    }

    fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Kills and reaps a child on drop.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_connectable(addr: SocketAddr) {
    let deadline = Instant::now() + WAIT;
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        assert!(Instant::now() < deadline, "{addr} never listened");
        thread::sleep(Duration::from_millis(50));
    }
}

/// One HTTP/1.0 GET on loopback: (status, body).
fn http_get(addr: SocketAddr, target: &str) -> (u16, String) {
    let mut s = TcpStream::connect_timeout(&addr, WAIT).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    write!(s, "GET {target} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (status, body.to_string())
}

fn encode(q: &str) -> String {
    q.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The single value of an instant query at unix time `at`.
fn query(prom: SocketAddr, q: &str, at: f64) -> Option<f64> {
    let (status, body) = http_get(
        prom,
        &format!("/api/v1/query?query={}&time={at}", encode(q)),
    );
    assert_eq!(status, 200, "{q}: {body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    v["data"]["result"][0]["value"][1]
        .as_str()
        .and_then(|s| s.parse().ok())
}

fn prometheus_binary() -> Option<String> {
    let candidate = std::env::var("PROMETHEUS").unwrap_or_else(|_| "prometheus".into());
    let ok = Command::new(&candidate)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    ok.then_some(candidate)
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

#[test]
fn a_real_prometheus_sees_the_latency_and_request_rate_foo_load_saw() {
    let Some(prometheus) = prometheus_binary() else {
        eprintln!(
            "SKIPPED a_real_prometheus_sees_the_latency_and_request_rate_foo_load_saw: \
             no prometheus binary (Debian package prometheus; .ci/run unpacks it)"
        );
        return;
    };
    let dir = Scratch::new();
    let server_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let _server = Reaped(
        Command::new(util::tool("foo-server"))
            .args(["-listen", &server_addr.to_string(), "--delay-ms", "20"])
            .args(["--log-level", "warn"])
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_connectable(server_addr);
    let proxy = Proxy::start(&server_addr.to_string(), &[]);
    let admin = proxy.admin.unwrap();

    let prom_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: foo\n    metrics_path: /metrics\n    \
             static_configs:\n      - targets: ['{admin}']\n"
        ),
    )
    .unwrap();
    let _prom = Reaped(
        Command::new(&prometheus)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={prom_addr}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + 3 * WAIT;
    while http_get_ok(prom_addr, "/-/ready").is_none() {
        assert!(Instant::now() < deadline, "prometheus never became ready");
        thread::sleep(Duration::from_millis(200));
    }
    // Prometheus hands its first targets over after a few seconds: the load
    // starts once the proxy has been scraped, so that the rate window lies
    // wholly inside the run.
    while query(prom_addr, "up{job=\"foo\"}", unix_now()) != Some(1.0) {
        assert!(
            Instant::now() < deadline,
            "prometheus never scraped the proxy"
        );
        thread::sleep(Duration::from_millis(200));
    }

    let load = Command::new(util::tool("foo-load"))
        .args(["--target", &proxy.addr.to_string()])
        .args([
            "--connections",
            "4",
            "--depth",
            "4",
            "--duration",
            "12s",
            "--json",
        ])
        .output()
        .unwrap();
    let ended = unix_now();
    assert!(
        load.status.success(),
        "{}",
        String::from_utf8_lossy(&load.stderr)
    );
    let report: Value = serde_json::from_slice(&load.stdout).unwrap();
    let load_rate = report["requests_per_sec"]
        .as_f64()
        .or_else(|| report["rps"].as_f64())
        .unwrap_or_else(|| panic!("no rate in foo-load's {report}"));
    // Let the last scrapes land, then ask about the window inside the run.
    thread::sleep(Duration::from_secs(2));
    let at = ended - 1.0;
    let p50 = query(
        prom_addr,
        "histogram_quantile(0.5, sum by (le) (rate(foo_response_latency_seconds_bucket[8s])))",
        at,
    )
    .expect("a median latency");
    assert!(
        (0.010..=0.025).contains(&p50),
        "the median of a 20 ms server must lie in the 10-25 ms bucket: {p50} s"
    );
    let rate = query(
        prom_addr,
        "sum(rate(foo_messages_total{type=\"req\"}[8s]))",
        at,
    )
    .expect("a request rate");
    assert!(
        (rate - load_rate).abs() <= 0.1 * load_rate,
        "prometheus says {rate} req/s, foo-load {load_rate} req/s"
    );
}

fn http_get_ok(addr: SocketAddr, target: &str) -> Option<()> {
    TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()?;
    (http_get(addr, target).0 == 200).then_some(())
}

//! End-to-end comparison: the same closed-loop load (foo-load) straight to
//! foo-server (the physical limit), through foo-proxy, and through any other
//! proxy command given, in one run, with the proxies' CPU and memory read
//! from /proc.
//!
//! Run: `cargo bench --bench relay` (HAProxy and socat join in when they are
//! on PATH), or pass proxies yourself:
//!
//! ```text
//! cargo bench --bench relay -- --proxy 'haproxy=sh benches/haproxy.sh {listen} {forward} {tmp}'
//! ```
//!
//! A proxy command is run by `sh` with its descriptor limit raised, in a
//! process group of its own; `{listen}` and `{forward}` are loopback port
//! numbers and `{tmp}` a scratch directory removed at the end. Everything the
//! group does counts: for a forking proxy (socat) that is every child, and
//! children already reaped through their parent's cutime/cstime.

use std::fs;
use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

const USAGE: &str = "\
relay: foo-load straight to foo-server, through foo-proxy and through other proxies

    cargo bench --bench relay -- [FLAGS]

    --proxy NAME=CMD    another proxy to compare (repeatable); replaces the
                        default HAProxy and socat commands
    --runs N            load rounds, every target once per round [default 5]
    --duration DUR      load per run                          [default 5s]
    --connections N     foo-load connections                  [default 16]
    --depth N           REQs in flight per connection         [default 16]
    --idle-pairs N      idle client connections per proxy     [default 9900]
    --idle-secs N       seconds of idleness measured          [default 5]
    --fragment          let foo-server split its writes (default: --no-fragment)

  The cost curve (issue 18): foo-proxy against HAProxy with 1 and 2 threads
  (or the --proxy commands), one row per point of each dimension, others at
  16 connections x depth 16 x 32 B; rounds rotate the order of the targets
  and of the points; ratios are medians of per-round ratios.

    --curve             run every dimension instead of the table above
    --dimension D       only these (repeatable; implies --curve): baseline,
                        connections (1/256/2000), depth (1/128), data
                        (16 B/1 KiB/16 KiB), churn (a new connection per 4
                        REQs), idle (--busy-idle idle pairs + 16 busy)
    --busy-idle N       idle pairs held open in the idle row [default 5000]
";

const HOST: Ipv4Addr = Ipv4Addr::LOCALHOST;
/// Every wait is bounded by this unless it says otherwise.
const WAIT: Duration = Duration::from_secs(30);
/// Idle connections opened at once.
const IDLE_BATCH: usize = 250;

struct Args {
    proxies: Vec<(String, String)>,
    runs: usize,
    duration: Duration,
    connections: usize,
    depth: usize,
    idle_pairs: usize,
    idle_secs: u64,
    fragment: bool,
    /// The cost curve's dimensions; empty: the classic table.
    dimensions: Vec<String>,
    busy_idle: usize,
}

/// The load's shape: foo-load's flags.
#[derive(Clone, Debug)]
struct Shape {
    connections: usize,
    depth: usize,
    size: usize,
    /// REQs per connection before foo-load replaces it; 0: never.
    per_connection: u64,
}

/// The dimensions of the cost curve, in table order.
const DIMENSIONS: [&str; 6] = ["baseline", "connections", "depth", "data", "churn", "idle"];

fn parse_args() -> Result<Option<Args>, String> {
    let mut pargs = pico_args::Arguments::from_env();
    // cargo bench passes --bench; cargo test --benches does not.
    if !pargs.contains("--bench") {
        return Ok(None);
    }
    if pargs.contains(["-h", "--help"]) {
        print!("{USAGE}");
        return Ok(None);
    }
    let e = |e: pico_args::Error| e.to_string();
    let mut proxies = Vec::new();
    for spec in pargs.values_from_str::<_, String>("--proxy").map_err(e)? {
        let (name, cmd) = spec
            .split_once('=')
            .ok_or_else(|| format!("--proxy {spec:?}: expected NAME=COMMAND"))?;
        proxies.push((name.to_string(), cmd.to_string()));
    }
    let duration: Option<String> = pargs.opt_value_from_str("--duration").map_err(e)?;
    let duration = match duration {
        Some(d) => parse_secs(&d).ok_or_else(|| format!("--duration {d:?}: expected e.g. 5s"))?,
        None => Duration::from_secs(5),
    };
    let args = Args {
        proxies,
        runs: pargs.opt_value_from_str("--runs").map_err(e)?.unwrap_or(5),
        duration,
        connections: pargs
            .opt_value_from_str("--connections")
            .map_err(e)?
            .unwrap_or(16),
        depth: pargs
            .opt_value_from_str("--depth")
            .map_err(e)?
            .unwrap_or(16),
        idle_pairs: pargs
            .opt_value_from_str("--idle-pairs")
            .map_err(e)?
            .unwrap_or(9_900),
        idle_secs: pargs
            .opt_value_from_str("--idle-secs")
            .map_err(e)?
            .unwrap_or(5),
        fragment: pargs.contains("--fragment"),
        dimensions: {
            let curve = pargs.contains("--curve");
            let mut d: Vec<String> = pargs.values_from_str("--dimension").map_err(e)?;
            if let Some(bad) = d.iter().find(|d| !DIMENSIONS.contains(&d.as_str())) {
                return Err(format!(
                    "--dimension {bad:?}: expected one of {}",
                    DIMENSIONS.join(", ")
                ));
            }
            if curve && d.is_empty() {
                d = DIMENSIONS.iter().map(|d| d.to_string()).collect();
            }
            d
        },
        busy_idle: pargs
            .opt_value_from_str("--busy-idle")
            .map_err(e)?
            .unwrap_or(5_000),
    };
    let rest = pargs.finish();
    if !rest.is_empty() {
        return Err(format!("unexpected arguments: {rest:?}"));
    }
    if args.runs == 0 {
        return Err("--runs must be at least 1".into());
    }
    Ok(Some(args))
}

/// `5`, `5s`, `500ms`.
fn parse_secs(text: &str) -> Option<Duration> {
    if let Some(ms) = text.strip_suffix("ms") {
        return ms.parse().ok().map(Duration::from_millis);
    }
    let secs: f64 = text.strip_suffix('s').unwrap_or(text).parse().ok()?;
    Duration::try_from_secs_f64(secs).ok()
}

// ---------------------------------------------------------------- /proc

/// One process as /proc/PID/stat shows it.
struct Stat {
    pgrp: u32,
    /// utime + stime, clock ticks.
    own: u64,
    /// cutime + cstime: children already reaped, clock ticks.
    reaped: u64,
}

fn read_stat(pid: u32) -> Option<Stat> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: skip past the last ')'.
    let (_, rest) = text.rsplit_once(')')?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok());
    // Field n of stat(5) is f[n - 3] here.
    Some(Stat {
        pgrp: u32::try_from(num(2)?).ok()?,
        own: num(11)? + num(12)?,
        reaped: num(13)? + num(14)?,
    })
}

/// Every live process whose process group is `pgid`.
fn group(pgid: u32) -> Vec<u32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| read_stat(pid).is_some_and(|s| s.pgrp == pgid))
        .collect()
}

/// CPU ticks the group has used so far, reaped children included.
fn group_ticks(pgid: u32) -> u64 {
    group(pgid)
        .into_iter()
        .filter_map(read_stat)
        .map(|s| s.own + s.reaped)
        .sum()
}

/// On-CPU nanoseconds and times scheduled, over every thread of the group
/// (/proc/PID/task/TID/schedstat): finer than clock ticks, for idle CPU.
fn group_sched(pgid: u32) -> (u64, u64) {
    let mut total = (0, 0);
    for pid in group(pgid) {
        let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            let Ok(text) = fs::read_to_string(task.path().join("schedstat")) else {
                continue;
            };
            let f: Vec<u64> = text
                .split_whitespace()
                .filter_map(|v| v.parse().ok())
                .collect();
            total.0 += f.first().copied().unwrap_or(0);
            total.1 += f.get(2).copied().unwrap_or(0);
        }
    }
    total
}

/// A `Name:   123 kB` line of /proc/PID/status (or smaps_rollup), in KiB.
fn kib_field(path: &str, name: &str) -> u64 {
    let Ok(text) = fs::read_to_string(path) else {
        return 0;
    };
    text.lines()
        .find_map(|l| {
            l.strip_prefix(name)?
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

/// Memory of the whole group, KiB.
#[derive(Clone, Copy, Debug, Default)]
struct Mem {
    members: usize,
    rss: u64,
    hwm: u64,
    /// Proportional set size: shared pages split among their sharers, so a
    /// forking proxy's children are not charged the same libc pages 10,000
    /// times.
    pss: u64,
}

fn group_mem(pgid: u32, with_pss: bool) -> Mem {
    let mut m = Mem::default();
    for pid in group(pgid) {
        let status = format!("/proc/{pid}/status");
        m.members += 1;
        m.rss += kib_field(&status, "VmRSS:");
        m.hwm += kib_field(&status, "VmHWM:");
        if with_pss {
            m.pss += kib_field(&format!("/proc/{pid}/smaps_rollup"), "Pss:");
        }
    }
    m
}

fn open_fds(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

fn nofile_soft_limit() -> usize {
    let text = fs::read_to_string("/proc/self/limits").unwrap_or_default();
    text.lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3)?.parse().ok())
        .unwrap_or(1024)
}

fn clock_ticks_per_sec() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok()?.trim().parse().ok())
        .unwrap_or(100.0)
}

fn loadavg() -> String {
    let text = fs::read_to_string("/proc/loadavg").unwrap_or_default();
    text.split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn machine() -> String {
    let cpu = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpu
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")?
                .split_once(':')
                .map(|x| x.1.trim())
        })
        .unwrap_or("unknown CPU")
        .to_string();
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpus = thread::available_parallelism().map_or(0, |n| n.get());
    format!(
        "{cpus} CPU(s), {model}, Linux {}, nofile soft limit {}",
        kernel.trim(),
        nofile_soft_limit()
    )
}

// ---------------------------------------------------------------- processes

/// A command run by `sh` in a process group of its own. The whole group is
/// terminated on drop.
struct Proc {
    name: String,
    pid: u32,
    child: std::process::Child,
    log: PathBuf,
}

impl Proc {
    fn spawn(name: &str, command: &str, tmp: &Path) -> Result<Proc, String> {
        let log = tmp.join(format!("{name}.log"));
        let file = fs::File::create(&log).map_err(|e| format!("cannot create {log:?}: {e}"))?;
        // The soft descriptor limit goes up to the hard one, no further.
        let script = format!("ulimit -S -n \"$(ulimit -H -n)\"; exec {command}");
        let child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .stdin(Stdio::null())
            .stdout(file.try_clone().map_err(|e| e.to_string())?)
            .stderr(file)
            .process_group(0)
            .spawn()
            .map_err(|e| format!("cannot start {name} ({command}): {e}"))?;
        Ok(Proc {
            name: name.to_string(),
            pid: child.id(),
            child,
            log,
        })
    }

    /// Waits until `port` accepts a connection.
    fn wait_for_port(&mut self, port: u16) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let addr = SocketAddr::from((HOST, port));
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!(
                    "{} exited ({status}) before listening on {port}: {}",
                    self.name,
                    self.log_tail()
                ));
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "{} is not listening on {port} after 10 s: {}",
                    self.name,
                    self.log_tail()
                ));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    fn log_tail(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(5)..].join(" | ")
    }

    fn kill_group(&self, signal: &str) {
        let _ = Command::new("kill")
            .args([format!("-{signal}"), "--".into(), format!("-{}", self.pid)])
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill_group("TERM");
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            thread::sleep(Duration::from_millis(20));
        }
        // Forked children outlive their parent unless told too.
        self.kill_group("KILL");
        let _ = self.child.wait();
    }
}

fn free_port() -> Result<u16, String> {
    let l = TcpListener::bind((HOST, 0)).map_err(|e| format!("cannot find a free port: {e}"))?;
    l.local_addr().map(|a| a.port()).map_err(|e| e.to_string())
}

// ---------------------------------------------------------------- measuring

/// One foo-load run against one target.
#[derive(Clone, Debug)]
struct Run {
    rps: f64,
    p50_us: f64,
    p99_us: f64,
    /// Answers counted by foo-load; the proxy relayed as many REQs.
    answers: u64,
    /// CPU seconds the target's proxy group used over the run.
    proxy_cpu: Option<f64>,
    /// The same in on-CPU nanoseconds, every thread (schedstat): finer.
    proxy_ns: Option<u64>,
    server_cpu: f64,
    /// Connections foo-load opened (more than `connections` under churn).
    opened: u64,
}

struct Target {
    name: String,
    port: u16,
    /// None for "direct".
    proc: Option<Proc>,
    runs: Vec<Run>,
    peak: Mem,
    idle: Option<Idle>,
}

#[derive(Debug)]
struct Idle {
    pairs: usize,
    before: Mem,
    after: Mem,
    /// (on-CPU ns, times scheduled) over `idle_secs` with the pairs open.
    with_pairs: (u64, u64),
    /// The same with no connection at all.
    none: (u64, u64),
    setup: Duration,
}

impl Idle {
    /// Growth per pair in bytes: RSS for one process; for a forking proxy
    /// the summed PSS, which charges shared pages once.
    fn per_pair(&self) -> f64 {
        let kib = if self.after.members > 1 {
            self.after.pss.saturating_sub(self.before.pss)
        } else {
            self.after.rss.saturating_sub(self.before.rss)
        };
        kib as f64 * 1024.0 / self.pairs as f64
    }
}

struct Bench {
    args: Args,
    bin: PathBuf,
    server: Proc,
    ticks: f64,
}

impl Bench {
    /// Runs foo-load against `port`, sampling the group's memory meanwhile.
    /// The classic table's shape, from the flags.
    fn shape(&self) -> Shape {
        Shape {
            connections: self.args.connections,
            depth: self.args.depth,
            size: 32,
            per_connection: 0,
        }
    }

    fn load(
        &self,
        port: u16,
        proxy: Option<&Proc>,
        duration: Duration,
        shape: &Shape,
    ) -> Result<(Run, Mem), String> {
        let pgid = proxy.map(|p| p.pid);
        let cpu0 = pgid.map(group_ticks);
        let ns0 = pgid.map(group_sched);
        let srv0 = group_ticks(self.server.pid);
        let mut child = Command::new(self.bin.join("foo-load"))
            .args([
                "--target".to_string(),
                format!("127.0.0.1:{port}"),
                "--connections".into(),
                shape.connections.to_string(),
                "--depth".into(),
                shape.depth.to_string(),
                "--size".into(),
                shape.size.to_string(),
                "--per-connection".into(),
                shape.per_connection.to_string(),
                "--duration".into(),
                format!("{}ms", duration.as_millis()),
                "--json".into(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start foo-load: {e}"))?;
        let deadline = Instant::now() + duration + WAIT;
        let mut peak = Mem::default();
        let status = loop {
            if let Some(pgid) = pgid {
                let m = group_mem(pgid, false);
                if m.hwm > peak.hwm {
                    peak = m;
                }
            }
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() >= deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!("foo-load against port {port} did not finish"));
                }
                Ok(None) => thread::sleep(Duration::from_millis(100)),
                Err(e) => return Err(format!("cannot wait for foo-load: {e}")),
            }
        };
        let mut out = String::new();
        let mut err = String::new();
        if let Some(mut s) = child.stdout.take() {
            let _ = s.read_to_string(&mut out);
        }
        if let Some(mut s) = child.stderr.take() {
            let _ = s.read_to_string(&mut err);
        }
        let json: serde_json::Value = serde_json::from_str(out.trim())
            .map_err(|e| format!("foo-load ({status}) printed no JSON ({e}): {out} {err}"))?;
        if json["errors"].as_u64() != Some(0) {
            return Err(format!("foo-load saw errors against port {port}: {out}"));
        }
        // A forking proxy's children exit with their connections: wait until
        // they are reaped, so their CPU shows in the parent's cutime once.
        if let Some(pgid) = pgid {
            let until = Instant::now() + Duration::from_secs(10);
            while group(pgid).len() > 1 && Instant::now() < until {
                thread::sleep(Duration::from_millis(50));
            }
        }
        let secs = |ticks: u64| ticks as f64 / self.ticks;
        let run = Run {
            rps: json["requests_per_sec"].as_f64().unwrap_or(0.0),
            p50_us: json["latency_us"]["p50"].as_f64().unwrap_or(0.0),
            p99_us: json["latency_us"]["p99"].as_f64().unwrap_or(0.0),
            answers: json["answers"].as_u64().unwrap_or(0),
            proxy_cpu: pgid
                .zip(cpu0)
                .map(|(g, c0)| secs(group_ticks(g).saturating_sub(c0))),
            proxy_ns: pgid
                .zip(ns0)
                .map(|(g, (n0, _))| group_sched(g).0.saturating_sub(n0)),
            server_cpu: secs(group_ticks(self.server.pid).saturating_sub(srv0)),
            opened: json["opened"].as_u64().unwrap_or(0),
        };
        Ok((run, peak))
    }

    /// Opens idle pairs through `proxy` and measures memory and idle CPU.
    fn idle(&self, port: u16, proxy: &Proc) -> Result<Idle, String> {
        let pgid = proxy.pid;
        let span = Duration::from_secs(self.args.idle_secs);
        // Idle with no connection first, after the load rounds.
        thread::sleep(Duration::from_millis(500));
        let s0 = group_sched(pgid);
        thread::sleep(span);
        let s1 = group_sched(pgid);
        let none = (s1.0.saturating_sub(s0.0), s1.1.saturating_sub(s0.1));

        let before = group_mem(pgid, true);
        let server_fds = open_fds(self.server.pid);
        let started = Instant::now();
        let clients = self.open_idle(port, &proxy.name, self.args.idle_pairs)?;
        let setup = started.elapsed();
        thread::sleep(Duration::from_secs(1));
        let after = group_mem(pgid, true);
        let s0 = group_sched(pgid);
        thread::sleep(span);
        let s1 = group_sched(pgid);
        let with_pairs = (s1.0.saturating_sub(s0.0), s1.1.saturating_sub(s0.1));
        self.close_idle(clients, server_fds);
        Ok(Idle {
            pairs: self.args.idle_pairs,
            before,
            after,
            with_pairs,
            none,
            setup,
        })
    }
}

impl Bench {
    /// Opens `n` idle client connections to `port`, returning once
    /// foo-server holds the upstream end of each.
    fn open_idle(
        &self,
        port: u16,
        name: &str,
        n: usize,
    ) -> Result<Vec<mio::net::TcpStream>, String> {
        let server_fds = open_fds(self.server.pid);
        let started = Instant::now();
        let addr = SocketAddr::from((HOST, port));
        let mut clients = Vec::with_capacity(n);
        // Non-blocking connects in batches, each waited for until foo-server
        // holds its end: a blocking connect per pair costs a scheduler round
        // trip on this loaded machine, and a batch never overflows a backlog.
        while clients.len() < n {
            let batch = IDLE_BATCH.min(n - clients.len());
            for _ in 0..batch {
                let s = mio::net::TcpStream::connect(addr).map_err(|e| {
                    format!("{name}: idle connection {} failed: {e}", clients.len())
                })?;
                clients.push(s);
            }
            let held = server_fds + clients.len();
            while open_fds(self.server.pid) < held {
                if started.elapsed() > WAIT * 2 {
                    return Err(format!(
                        "{name}: foo-server holds {} of {} upstream connections after {:?}",
                        open_fds(self.server.pid).saturating_sub(server_fds),
                        clients.len(),
                        WAIT * 2
                    ));
                }
                thread::sleep(Duration::from_millis(5));
            }
        }
        Ok(clients)
    }

    /// Closes idle connections and waits (bounded) until foo-server is back
    /// near `server_fds` descriptors, so the next target starts clean.
    fn close_idle(&self, clients: Vec<mio::net::TcpStream>, server_fds: usize) {
        drop(clients);
        let until = Instant::now() + WAIT;
        while open_fds(self.server.pid) > server_fds + 16 && Instant::now() < until {
            thread::sleep(Duration::from_millis(100));
        }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

fn default_proxies() -> Vec<(String, String)> {
    let mut out = Vec::new();
    if on_path("haproxy") {
        out.push((
            "haproxy".into(),
            "sh benches/haproxy.sh {listen} {forward} {tmp}".into(),
        ));
    }
    if on_path("socat") {
        out.push((
            "socat".into(),
            "socat TCP-LISTEN:{listen},bind=127.0.0.1,fork,reuseaddr,backlog=4096,nodelay \
             TCP:127.0.0.1:{forward},nodelay"
                .into(),
        ));
    }
    out
}

fn run(args: Args) -> Result<(), String> {
    let started = Instant::now();
    // foo-server and foo-load are the `tools` member's: cargo builds only
    // this package's binaries for its benches, so build theirs (same profile,
    // next to foo-proxy) before using them.
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_foo-proxy"))
        .parent()
        .map(Path::to_path_buf)
        .ok_or("no binary directory")?;
    foo_tools::child::build_workspace_bins(&bin, true, Duration::from_secs(900))?;
    let tmp = std::env::temp_dir().join(format!("foo-relay-bench-{}", std::process::id()));
    // A new directory, never one (or a link) someone left at that name in
    // the shared temp directory: the logs are then created inside ours.
    fs::create_dir(&tmp).map_err(|e| format!("cannot create {tmp:?}: {e}"))?;
    let _cleanup = RemoveDir(tmp.clone());

    let limit = nofile_soft_limit();
    let (held, flag) = match args.dimensions.is_empty() {
        true => (args.idle_pairs, "--idle-pairs"),
        false => (args.busy_idle, "--busy-idle"),
    };
    if held + 256 > limit {
        return Err(format!(
            "{flag} {held} needs more descriptors than this process may open ({limit}); \
             raise `ulimit -n` or lower {flag}"
        ));
    }
    eprintln!("machine: {}", machine());
    eprintln!("load average at start: {}", loadavg());

    let server_port = free_port()?;
    let fragment = if args.fragment { "" } else { " --no-fragment" };
    let server_cmd = format!(
        "{}/foo-server -listen 127.0.0.1:{server_port} --seed 1 --log-level warn{fragment}",
        bin.display()
    );
    let mut server = Proc::spawn("foo-server", &server_cmd, &tmp)?;
    server.wait_for_port(server_port)?;
    eprintln!("foo-server: {server_cmd}");
    if !args.dimensions.is_empty() {
        curve(args, bin, server, server_port, &tmp)?;
        eprintln!("took {:.0?}", started.elapsed());
        return Ok(());
    }

    let mut proxies = vec![(
        "foo-proxy".to_string(),
        format!(
            "{}/foo-proxy -listen 127.0.0.1:{{listen}} -forward 127.0.0.1:{{forward}} \
             -http 127.0.0.1:{{admin}} -recovery-path= --log-level warn",
            bin.display()
        ),
    )];
    proxies.extend(if args.proxies.is_empty() {
        default_proxies()
    } else {
        args.proxies.clone()
    });

    let mut targets = vec![Target {
        name: "direct".into(),
        port: server_port,
        proc: None,
        runs: Vec::new(),
        peak: Mem::default(),
        idle: None,
    }];
    for (name, template) in &proxies {
        let port = free_port()?;
        let command = template
            .replace("{listen}", &port.to_string())
            .replace("{forward}", &server_port.to_string())
            .replace("{admin}", &free_port()?.to_string())
            .replace("{tmp}", &tmp.display().to_string());
        let mut proc = Proc::spawn(name, &command, &tmp)?;
        proc.wait_for_port(port)?;
        eprintln!("{name}: {command}");
        targets.push(Target {
            name: name.clone(),
            port,
            proc: Some(proc),
            runs: Vec::new(),
            peak: Mem::default(),
            idle: None,
        });
    }
    let bench = Bench {
        args,
        bin,
        server,
        ticks: clock_ticks_per_sec(),
    };

    // Warm up every path once, then interleave the rounds so that every
    // target sees the same neighbours on this shared machine.
    for t in &targets {
        bench.load(
            t.port,
            t.proc.as_ref(),
            Duration::from_secs(1),
            &bench.shape(),
        )?;
    }
    for round in 0..bench.args.runs {
        let n = targets.len();
        for i in 0..n {
            let t = &mut targets[(i + round) % n];
            let shape = bench.shape();
            let (run, peak) = bench.load(t.port, t.proc.as_ref(), bench.args.duration, &shape)?;
            eprintln!(
                "round {} {:<10} {:>9.0} req/s  p50 {:>7.0} us  p99 {:>7.0} us  proxy cpu {}  server cpu {:.2} s  load {}",
                round + 1,
                t.name,
                run.rps,
                run.p50_us,
                run.p99_us,
                run.proxy_cpu.map_or("-".into(), |c| format!("{c:.2} s")),
                run.server_cpu,
                loadavg()
            );
            if peak.hwm > t.peak.hwm {
                t.peak = peak;
            }
            t.runs.push(run);
        }
    }
    for t in &mut targets {
        if let Some(proc) = &t.proc {
            let now = group_mem(proc.pid, false);
            if now.hwm > t.peak.hwm {
                t.peak = now;
            }
        }
    }
    for t in &mut targets {
        let Some(proc) = &t.proc else { continue };
        if bench.args.idle_pairs == 0 {
            continue;
        }
        let idle = bench.idle(t.port, proc)?;
        eprintln!(
            "idle {:<10} {} pairs in {:.1?}: rss {} -> {} KiB, pss {} -> {} KiB ({} process(es)); \
             {} s idle: {:.1} ms CPU, {} wakeups with pairs; {:.1} ms, {} wakeups with none",
            t.name,
            idle.pairs,
            idle.setup,
            idle.before.rss,
            idle.after.rss,
            idle.before.pss,
            idle.after.pss,
            idle.after.members,
            bench.args.idle_secs,
            idle.with_pairs.0 as f64 / 1e6,
            idle.with_pairs.1,
            idle.none.0 as f64 / 1e6,
            idle.none.1,
        );
        t.idle = Some(idle);
    }
    eprintln!("load average at end: {}", loadavg());
    print_table(&targets, &bench);
    eprintln!("took {:.0?}", started.elapsed());
    Ok(())
}

/// One point of the cost curve.
struct Point {
    dimension: &'static str,
    label: String,
    shape: Shape,
    /// Idle pairs held open through the proxy during the load.
    idle: usize,
}

/// The points of the chosen dimensions, others at the baseline.
fn points(args: &Args) -> Vec<Point> {
    let base = Shape {
        connections: 16,
        depth: 16,
        size: 32,
        per_connection: 0,
    };
    let point = |dimension, label: &str, shape: Shape, idle| Point {
        dimension,
        label: label.to_string(),
        shape,
        idle,
    };
    let mut out = Vec::new();
    for d in DIMENSIONS {
        if !args.dimensions.iter().any(|c| c == d) {
            continue;
        }
        match d {
            "baseline" => out.push(point(d, "16 conns x depth 16 x 32 B", base.clone(), 0)),
            "connections" => {
                for connections in [1, 256, 2000] {
                    let label = format!("{connections} connections");
                    let shape = Shape {
                        connections,
                        ..base.clone()
                    };
                    out.push(point(d, &label, shape, 0));
                }
            }
            "depth" => {
                for depth in [1, 128] {
                    let label = format!("depth {depth}");
                    out.push(point(
                        d,
                        &label,
                        Shape {
                            depth,
                            ..base.clone()
                        },
                        0,
                    ));
                }
            }
            "data" => {
                for (size, label) in [(16, "16 B"), (1024, "1 KiB"), (16 * 1024, "16 KiB")] {
                    out.push(point(
                        d,
                        label,
                        Shape {
                            size,
                            ..base.clone()
                        },
                        0,
                    ));
                }
            }
            "churn" => {
                let shape = Shape {
                    depth: 4,
                    per_connection: 4,
                    ..base.clone()
                };
                out.push(point(d, "new connection per 4 REQs, depth 4", shape, 0));
            }
            _ => {
                let label = format!("{} idle + 16 busy", args.busy_idle);
                out.push(point(d, &label, base.clone(), args.busy_idle));
            }
        }
    }
    out
}

/// The cost curve: foo-proxy and the other proxies over every point, in
/// rounds that rotate the order of points and targets.
fn curve(
    args: Args,
    bin: PathBuf,
    server: Proc,
    server_port: u16,
    tmp: &Path,
) -> Result<(), String> {
    let mut proxies = vec![(
        "foo-proxy".to_string(),
        format!(
            "{}/foo-proxy -listen 127.0.0.1:{{listen}} -forward 127.0.0.1:{{forward}} \
             -http 127.0.0.1:{{admin}} -recovery-path= --log-level warn",
            bin.display()
        ),
    )];
    if args.proxies.is_empty() {
        if !on_path("haproxy") {
            return Err(
                "the cost curve compares with HAProxy, which is not on PATH; \
                        install it or pass --proxy NAME=COMMAND"
                    .into(),
            );
        }
        for threads in [1, 2] {
            proxies.push((
                format!("haproxy-{threads}t"),
                format!("sh benches/haproxy.sh {{listen}} {{forward}} {{tmp}} {threads}"),
            ));
        }
    } else {
        proxies.extend(args.proxies.clone());
    }
    let mut targets = Vec::new();
    for (name, template) in &proxies {
        let port = free_port()?;
        let command = template
            .replace("{listen}", &port.to_string())
            .replace("{forward}", &server_port.to_string())
            .replace("{admin}", &free_port()?.to_string())
            .replace("{tmp}", &tmp.display().to_string());
        let mut proc = Proc::spawn(name, &command, tmp)?;
        proc.wait_for_port(port)?;
        eprintln!("{name}: {command}");
        targets.push((name.clone(), port, proc));
    }
    let bench = Bench {
        args,
        bin,
        server,
        ticks: clock_ticks_per_sec(),
    };
    let points = points(&bench.args);
    let warm = Shape {
        connections: 16,
        depth: 16,
        size: 32,
        per_connection: 0,
    };
    for (_, port, proc) in &targets {
        bench.load(*port, Some(proc), Duration::from_secs(1), &warm)?;
    }
    // runs[point][target]: one Run per round.
    let mut runs: Vec<Vec<Vec<Run>>> = points
        .iter()
        .map(|_| targets.iter().map(|_| Vec::new()).collect())
        .collect();
    let n = targets.len();
    for round in 0..bench.args.runs {
        for j in 0..points.len() {
            let pi = (j + round) % points.len();
            let point = &points[pi];
            for i in 0..n {
                let ti = (i + round + j) % n;
                let (name, port, proc) = &targets[ti];
                let server_fds = open_fds(bench.server.pid);
                let idle = match point.idle {
                    0 => Vec::new(),
                    k => bench.open_idle(*port, name, k)?,
                };
                let (run, _) = bench.load(*port, Some(proc), bench.args.duration, &point.shape)?;
                bench.close_idle(idle, server_fds);
                eprintln!(
                    "round {} {:<36} {:<10} {:>9.0} req/s  proxy cpu {:>6.3} s  {:.2} us/msg  load {}",
                    round + 1,
                    point.label,
                    name,
                    run.rps,
                    run.proxy_ns.unwrap_or(0) as f64 / 1e9,
                    ns_per_msg(&run).unwrap_or(f64::NAN) / 1e3,
                    loadavg()
                );
                runs[pi][ti].push(run);
            }
        }
    }
    eprintln!("load average at end: {}", loadavg());
    print_curve(&targets, &points, &runs, &bench);
    Ok(())
}

/// Proxy on-CPU nanoseconds per message relayed (REQ and answer each one).
fn ns_per_msg(run: &Run) -> Option<f64> {
    let ns = run.proxy_ns? as f64;
    (run.answers > 0).then(|| ns / (2.0 * run.answers as f64))
}

fn print_curve(
    targets: &[(String, u16, Proc)],
    points: &[Point],
    runs: &[Vec<Vec<Run>>],
    bench: &Bench,
) {
    let others: Vec<&str> = targets.iter().skip(1).map(|t| t.0.as_str()).collect();
    println!();
    println!(
        "{} rounds of {:?} per point and target; others at 16 connections x depth 16 x 32 B; \
         req/s and CPU are medians over rounds, ratios medians of per-round ratios \
         (lowest-highest round in brackets); CPU ratio below 1: foo-proxy uses less",
        bench.args.runs, bench.args.duration
    );
    println!();
    let mut head = String::from("| dimension | point | foo-proxy req/s |");
    let mut rule = String::from("|---|---|---:|");
    for o in &others {
        head.push_str(&format!(" ÷ {o} |"));
        rule.push_str("---:|");
    }
    head.push_str(" foo-proxy CPU µs/msg |");
    rule.push_str("---:|");
    for o in &others {
        head.push_str(&format!(" CPU/msg ÷ {o} |"));
        rule.push_str("---:|");
    }
    head.push_str(" CPU µs/conn (churn) |");
    rule.push_str("---|");
    println!("{head}");
    println!("{rule}");
    for (p, per_target) in points.iter().zip(runs) {
        let Some(ours) = per_target.first() else {
            continue;
        };
        let rps = median(ours.iter().map(|r| r.rps).collect());
        let mut line = format!("| {} | {} | {rps:.0} |", p.dimension, p.label);
        for theirs in per_target.iter().skip(1) {
            line.push_str(&format!(
                " {} |",
                paired_spread(ours, theirs, |r| Some(r.rps))
            ));
        }
        let cpu = median(ours.iter().filter_map(ns_per_msg).collect()) / 1e3;
        line.push_str(&format!(" {cpu:.2} |"));
        for theirs in per_target.iter().skip(1) {
            line.push_str(&format!(" {} |", paired_spread(ours, theirs, ns_per_msg)));
        }
        let per_conn = |r: &Run| Some(r.proxy_ns? as f64 / 1e3 / (r.opened.max(1) as f64));
        if p.shape.per_connection > 0 {
            let all: Vec<String> = targets
                .iter()
                .zip(per_target)
                .map(|(t, rs)| {
                    format!(
                        "{} {:.1}",
                        t.0,
                        median(rs.iter().filter_map(per_conn).collect())
                    )
                })
                .collect();
            line.push_str(&format!(" {} |", all.join(", ")));
        } else {
            line.push_str(" - |");
        }
        println!("{line}");
    }
}

/// CPU seconds per million messages relayed: every answered request is two
/// messages through the proxy, the REQ and its ACK or NAK.
fn cpu_per_m(cpu: f64, run: &Run) -> f64 {
    cpu / (2.0 * run.answers as f64 / 1e6)
}

/// `f(this round) / f(the same round of base)`, one per round.
fn round_ratios(runs: &[Run], base: &[Run], f: impl Fn(&Run) -> Option<f64>) -> Vec<f64> {
    runs.iter()
        .zip(base)
        .filter_map(|(r, b)| Some(f(r)? / f(b)?))
        .collect()
}

/// Median over rounds of `f(this round) / f(the same round of base)`.
fn paired(runs: &[Run], base: &[Run], f: impl Fn(&Run) -> Option<f64>) -> Option<f64> {
    let ratios = round_ratios(runs, base, f);
    (!ratios.is_empty()).then(|| median(ratios))
}

/// The median of the per-round ratios with their lowest and highest,
/// `1.04 (0.97-1.12)`: how far a row moves from round to round.
fn paired_spread(runs: &[Run], base: &[Run], f: impl Fn(&Run) -> Option<f64>) -> String {
    let ratios = round_ratios(runs, base, f);
    let low = ratios.iter().copied().fold(f64::INFINITY, f64::min);
    let high = ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    match ratios.is_empty() {
        true => "-".into(),
        false => format!("{:.2} ({low:.2}-{high:.2})", median(ratios)),
    }
}

fn print_table(targets: &[Target], bench: &Bench) {
    let direct = &targets[0].runs;
    let ours = &targets[1].runs;
    let show = |v: Option<f64>, digits: usize| v.map_or("-".into(), |v| format!("{v:.digits$}"));
    println!();
    println!(
        "{} rounds of {:?}, {} connections x depth {}; medians over rounds; \
         ratios are medians of per-round ratios (same round, side by side)",
        bench.args.runs, bench.args.duration, bench.args.connections, bench.args.depth
    );
    println!();
    println!(
        "| target | req/s | ÷ direct | ÷ foo-proxy | p50 µs | p99 µs | CPU s / M msgs | CPU ÷ foo-proxy \
         | peak RSS KiB | bytes / idle pair | idle CPU ms / {s} s, {n} pairs | idle CPU ms / {s} s, none |",
        s = bench.args.idle_secs,
        n = bench.args.idle_pairs
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for t in targets {
        let rps = median(t.runs.iter().map(|r| r.rps).collect());
        let p50 = median(t.runs.iter().map(|r| r.p50_us).collect());
        let p99 = median(t.runs.iter().map(|r| r.p99_us).collect());
        let proxy_cpu = |r: &Run| r.proxy_cpu.map(|c| cpu_per_m(c, r));
        let cpu = if t.proc.is_some() {
            show(
                Some(median(t.runs.iter().filter_map(proxy_cpu).collect())),
                3,
            )
        } else {
            let server = median(t.runs.iter().map(|r| cpu_per_m(r.server_cpu, r)).collect());
            format!("({server:.3} server)")
        };
        let peak = match &t.proc {
            Some(_) => t.peak.hwm.to_string(),
            None => "-".into(),
        };
        let (per_pair, idle_pairs, idle_none) = match &t.idle {
            Some(idle) => (
                format!("{:.0}", idle.per_pair()),
                format!("{:.1}", idle.with_pairs.0 as f64 / 1e6),
                format!("{:.1}", idle.none.0 as f64 / 1e6),
            ),
            None => ("-".into(), "-".into(), "-".into()),
        };
        println!(
            "| {} | {:.0} | {} | {} | {:.0} | {:.0} | {} | {} | {} | {} | {} | {} |",
            t.name,
            rps,
            show(paired(&t.runs, direct, |r| Some(r.rps)), 2),
            show(paired(&t.runs, ours, |r| Some(r.rps)), 2),
            p50,
            p99,
            cpu,
            show(paired(&t.runs, ours, proxy_cpu), 2),
            peak,
            per_pair,
            idle_pairs,
            idle_none
        );
    }
}

struct RemoveDir(PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn main() {
    let args = match parse_args() {
        Ok(Some(args)) => args,
        Ok(None) => return,
        Err(e) => {
            eprintln!("relay: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = run(args) {
        eprintln!("relay: {e}");
        std::process::exit(1);
    }
}

//! Shared helpers for the integration tests: start the real binary on
//! loopback, learn its port from its start line, signal it, read its JSON
//! reports, and a small Foo server that can misbehave on purpose.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// Every wait in the tests is bounded by this unless it says otherwise.
pub const WAIT: Duration = Duration::from_secs(10);

/// The path of a test tool (`foo-server`, `foo-client`, `foo-load`,
/// `foo-demo`) of the `tools` workspace member, next to foo-proxy. Cargo
/// builds a package's own binaries for its integration tests but not
/// another member's, so the first call in each test binary has cargo build
/// the workspace's binaries with this build's profile
/// ([`foo_tools::child::build_workspace_bins`]; a no-op after `cargo test`
/// at the root, which builds them all): the tools are never stale.
pub fn tool(name: &str) -> std::path::PathBuf {
    static BUILT: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    let dir = std::path::Path::new(env!("CARGO_BIN_EXE_foo-proxy"))
        .parent()
        .expect("the binary's directory");
    if let Err(e) = BUILT
        .get_or_init(|| foo_tools::child::build_workspace_bins(dir, true, Duration::from_secs(900)))
    {
        panic!("cannot build the test tools: {e}");
    }
    foo_tools::child::sibling(dir, name).unwrap_or_else(|e| panic!("{e}"))
}

/// A running foo-proxy. Killed on drop.
pub struct Proxy {
    pub child: Child,
    pub addr: SocketAddr,
    /// Where the admin HTTP socket listens, unless `-http off`.
    pub admin: Option<SocketAddr>,
    stdout: Receiver<String>,
    stderr: Arc<Mutex<String>>,
}

impl Proxy {
    /// Starts foo-proxy listening on 127.0.0.1:0 in front of `upstream`,
    /// with extra flags, and waits for its start line. The admin socket
    /// takes a free loopback port unless `extra` sets `-http`.
    pub fn start(upstream: &str, extra: &[&str]) -> Proxy {
        let mut args = vec!["-listen", "127.0.0.1:0", "-forward", upstream];
        if !extra.iter().any(|a| a.contains("recovery-path")) {
            args.push("-recovery-path=");
        }
        if http_flag(extra).is_none() {
            args.extend_from_slice(&["-http", "127.0.0.1:0"]);
        }
        args.extend_from_slice(extra);
        Proxy::start_with_args(&args)
    }

    /// Starts foo-proxy with exactly these arguments.
    pub fn start_with_args(args: &[&str]) -> Proxy {
        Proxy::start_in(args, None)
    }

    pub fn start_in(args: &[&str], dir: Option<&std::path::Path>) -> Proxy {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_foo-proxy"));
        cmd.args(args);
        if let Some(dir) = dir {
            cmd.current_dir(dir);
        }
        Proxy::spawn(&mut cmd)
    }

    /// Runs `cmd` (which must exec foo-proxy) and waits for its start line.
    pub fn spawn(cmd: &mut Command) -> Proxy {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn foo-proxy");
        let (tx, stdout) = mpsc::channel();
        let out = child.stdout.take().expect("stdout");
        thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let (addr_tx, addr_rx) = mpsc::channel();
        let err = child.stderr.take().expect("stderr");
        let sink = stderr.clone();
        thread::spawn(move || {
            for line in BufReader::new(err).lines() {
                let Ok(line) = line else { break };
                // `listening on ADDR, ...` and `admin listening on ADDR`,
                // on one line or two.
                for (at, _) in line.match_indices("listening on ") {
                    let before = line.get(..at).unwrap_or("");
                    let rest = line.get(at + "listening on ".len()..).unwrap_or("");
                    let addr = rest
                        .split([',', ' ', ';', '"'])
                        .next()
                        .unwrap_or("")
                        .to_string();
                    let _ = addr_tx.send((before.ends_with("admin "), addr));
                }
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        // A wrapper (`sh -c "... exec foo-proxy ..."`) has its flags inside
        // one argument: look at every word.
        let words: Vec<String> = cmd
            .get_args()
            .filter_map(|a| a.to_str())
            .flat_map(str::split_whitespace)
            .map(str::to_owned)
            .collect();
        let words: Vec<&str> = words.iter().map(String::as_str).collect();
        let want_admin = !matches!(http_flag(&words), Some("" | "off"));
        let deadline = Instant::now() + WAIT;
        let (mut addr, mut admin) = (None, None);
        while addr.is_none() || (want_admin && admin.is_none()) {
            let left = deadline.saturating_duration_since(Instant::now());
            match addr_rx.recv_timeout(left) {
                Ok((true, a)) => admin = Some(a.parse().expect("admin address")),
                Ok((false, a)) => addr = Some(a.parse().expect("listen address")),
                Err(_) => {
                    let _ = child.kill();
                    panic!(
                        "foo-proxy did not start: {}",
                        stderr.lock().unwrap().as_str()
                    );
                }
            }
        }
        Proxy {
            child,
            addr: addr.expect("listen address"),
            admin,
            stdout,
            stderr,
        }
    }

    /// `http://ADMIN/path`; panics when the admin socket is off.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin.expect("admin socket on"))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} failed");
    }

    /// Sends SIGUSR2 and returns the JSON line it printed.
    pub fn report(&self) -> serde_json::Value {
        self.report_via("USR2")
    }

    pub fn report_via(&self, signal: &str) -> serde_json::Value {
        while self.stdout.try_recv().is_ok() {}
        self.signal(signal);
        let line = self
            .stdout
            .recv_timeout(WAIT)
            .expect("a report line on stdout");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad JSON {line:?}: {e}"))
    }

    /// Polls reports until `done` holds or the wait runs out.
    pub fn report_until(&self, done: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let r = self.report();
            if done(&r) || Instant::now() > deadline {
                return r;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Lines the proxy printed on stdout since the last read.
    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout.try_iter().collect()
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Polls stderr until `done` holds, and returns it; panics with the
    /// whole log when [`WAIT`] runs out. The log is written by the
    /// proxy's output thread, so a line may come a while after the event
    /// it tells of: read it with this, never once.
    pub fn stderr_until(&self, what: &str, done: impl Fn(&str) -> bool) -> String {
        wait_until(|| {
            let log = self.stderr();
            done(&log).then_some(log)
        })
        .unwrap_or_else(|| panic!("no {what} in stderr within {WAIT:?}:\n{}", self.stderr()))
    }

    /// Polls stderr until it contains `line` (bounded by [`WAIT`]).
    pub fn stderr_has(&self, line: &str) -> String {
        self.stderr_until(&format!("{line:?}"), |log| log.contains(line))
    }

    /// Polls stderr until `line` occurs at least `n` times.
    pub fn stderr_count(&self, line: &str, n: usize) -> String {
        self.stderr_until(&format!("{n} x {line:?}"), |log| {
            log.matches(line).count() >= n
        })
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits for the process to exit and returns its code.
    pub fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            thread::sleep(Duration::from_millis(10));
        }
        None
    }

    pub fn fd_count(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// Resident set size in KiB, from /proc.
    pub fn rss_kib(&self) -> u64 {
        proc_status_kib(self.pid(), "VmRSS:")
    }

    pub fn connect(&self) -> TcpStream {
        let s = TcpStream::connect_timeout(&self.addr, WAIT).expect("connect to proxy");
        s.set_read_timeout(Some(WAIT)).unwrap();
        s.set_write_timeout(Some(WAIT)).unwrap();
        s
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of the last `-http` flag in `args`, in any of Go's forms.
pub fn http_flag<'a>(args: &[&'a str]) -> Option<&'a str> {
    let mut found = None;
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        let bare = arg.trim_start_matches('-');
        if bare.len() == arg.len() {
            continue;
        }
        if bare == "http" {
            found = iter.next().copied();
        } else if let Some(v) = bare.strip_prefix("http=") {
            found = Some(v);
        }
    }
    found
}

pub fn proc_status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Polls `probe` every 10 ms until it yields a value or [`WAIT`] runs
/// out (`None`). A loaded machine delays every step, so a test waits for a state with
/// this instead of sleeping a fixed time and looking once.
pub fn wait_until<T>(mut probe: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = probe() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// [`wait_until`] for a condition; panics naming `what` when it never holds.
pub fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    if wait_until(|| cond().then_some(())).is_none() {
        panic!("{what}: not within {WAIT:?}");
    }
}

/// splitmix64, the tools' generator: deterministic randomness for tests.
pub use foo_tools::rng::Rng;

/// How the in-test Foo server behaves.
#[derive(Clone, Default)]
pub struct ServerOpts {
    /// Split each answer into random small writes.
    pub fragment: bool,
    /// Send this line as soon as a client connects.
    pub greeting: Option<Vec<u8>>,
    /// Never close, not even after the client's FIN (like the reference).
    pub never_close: bool,
    /// Wait this long before each batch of answers (a slow upstream).
    pub delay: Option<Duration>,
}

type Streams = Arc<Mutex<Vec<(u64, TcpStream)>>>;

/// A threaded Foo server on 127.0.0.1: answers `REQ n ...` with `ACK n`
/// (or `NAK n` for every 8th), anything else with `NAK 0 ERRDECODE`.
/// `REQ n BYE` is answered, then the server closes; `REQ n RST` makes it
/// reset the connection without answering.
pub struct FooServer {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    pub connections: Arc<AtomicU64>,
    pub acks: Arc<AtomicU64>,
    pub naks: Arc<AtomicU64>,
    /// Each live connection's stream, so tests can kill the server side.
    pub streams: Streams,
}

impl FooServer {
    pub fn start(opts: ServerOpts) -> FooServer {
        // A deep backlog: std's default of 128 overflows when a thousand
        // connections arrive at once.
        use socket2::{Domain, Socket, Type};
        let sock = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
        sock.bind(&addr.into()).unwrap();
        sock.listen(4096).unwrap();
        Self::serve(sock.into(), opts)
    }

    pub fn serve(listener: TcpListener, opts: ServerOpts) -> FooServer {
        let addr = listener.local_addr().unwrap();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let connections = Arc::new(AtomicU64::new(0));
        let acks = Arc::new(AtomicU64::new(0));
        let naks = Arc::new(AtomicU64::new(0));
        let streams = Arc::new(Mutex::new(Vec::new()));
        let server = FooServer {
            addr,
            stop: stop.clone(),
            connections: connections.clone(),
            acks: acks.clone(),
            naks: naks.clone(),
            streams: streams.clone(),
        };
        thread::spawn(move || {
            let mut seed = 1;
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        stream.set_nonblocking(false).unwrap();
                        stream.set_nodelay(true).unwrap();
                        connections.fetch_add(1, Ordering::Relaxed);
                        seed += 1;
                        let id = seed;
                        streams
                            .lock()
                            .unwrap()
                            .push((id, stream.try_clone().unwrap()));
                        let (opts, acks, naks, stop, streams) = (
                            opts.clone(),
                            acks.clone(),
                            naks.clone(),
                            stop.clone(),
                            streams.clone(),
                        );
                        thread::Builder::new()
                            .stack_size(256 * 1024)
                            .spawn(move || {
                                let end = serve_conn(&stream, opts, id, acks, naks, stop);
                                streams.lock().unwrap().retain(|(i, _)| *i != id);
                                if end == End::Reset {
                                    let sock = socket2::SockRef::from(&stream);
                                    let _ = sock.set_linger(Some(Duration::ZERO));
                                }
                            })
                            .unwrap();
                    }
                    Err(_) => thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        server
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Resets every connection the server holds, as a crash would.
    pub fn kill_connections(&self) {
        for (_, s) in self.streams.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for FooServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.kill_connections();
    }
}

/// How a served connection ended.
#[derive(PartialEq, Eq)]
enum End {
    Close,
    Reset,
}

fn serve_conn(
    mut stream: &TcpStream,
    opts: ServerOpts,
    seed: u64,
    acks: Arc<AtomicU64>,
    naks: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> End {
    let mut rng = Rng::new(seed);
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    if let Some(g) = &opts.greeting
        && stream.write_all(g).is_err()
    {
        return End::Close;
    }
    let mut pending = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if stop.load(Ordering::Relaxed) {
            return End::Close;
        }
        let n = match stream.read(&mut buf) {
            Ok(0) => {
                if opts.never_close {
                    // Like the reference server: sit in CLOSE_WAIT.
                    while !stop.load(Ordering::Relaxed) {
                        thread::sleep(Duration::from_millis(50));
                    }
                }
                return End::Close;
            }
            Ok(n) => n,
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                continue;
            }
            Err(_) => return End::Close,
        };
        pending.extend_from_slice(&buf[..n]);
        let mut out = Vec::new();
        let mut end = None;
        while let Some(pos) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=pos).collect();
            let text = String::from_utf8_lossy(&line);
            let mut parts = text.split_whitespace();
            let kind = parts.next();
            let seq = parts.next().and_then(|s| s.parse::<u64>().ok());
            match parts.next() {
                Some("RST") => return End::Reset,
                Some("BYE") => end = Some(End::Close),
                _ => {}
            }
            match (kind, seq) {
                (Some("REQ"), Some(seq)) if seq % 8 == 0 => {
                    naks.fetch_add(1, Ordering::Relaxed);
                    out.extend_from_slice(format!("NAK {seq} nope\n").as_bytes());
                }
                (Some("REQ"), Some(seq)) => {
                    acks.fetch_add(1, Ordering::Relaxed);
                    out.extend_from_slice(format!("ACK {seq} ok\n").as_bytes());
                }
                _ => {
                    naks.fetch_add(1, Ordering::Relaxed);
                    out.extend_from_slice(b"NAK 0 ERRDECODE\n");
                }
            }
            if end.is_some() {
                break;
            }
        }
        if let Some(delay) = opts.delay
            && !out.is_empty()
        {
            thread::sleep(delay);
        }
        let mut from = 0;
        while from < out.len() {
            let take = if opts.fragment {
                1 + rng.below(7) as usize
            } else {
                out.len()
            };
            let to = (from + take).min(out.len());
            if stream.write_all(&out[from..to]).is_err() {
                return End::Close;
            }
            from = to;
        }
        if let Some(end) = end {
            return end;
        }
    }
}

/// Reads from `stream` until `want` bytes arrived, EOF, or the wait ends.
pub fn read_exact_timeout(stream: &mut TcpStream, want: usize) -> Vec<u8> {
    let deadline = Instant::now() + WAIT;
    let mut got = Vec::with_capacity(want);
    let mut buf = vec![0u8; 64 * 1024];
    while got.len() < want && Instant::now() < deadline {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    got
}

/// Reads until EOF (or error, or the wait ends); returns bytes and whether
/// a clean EOF was seen.
pub fn read_to_eof(stream: &mut TcpStream) -> (Vec<u8>, bool) {
    let deadline = Instant::now() + WAIT;
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    while Instant::now() < deadline {
        match stream.read(&mut buf) {
            Ok(0) => return (got, true),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return (got, false),
        }
    }
    (got, false)
}

/// `REQ 1 ...\nREQ 2 ...\n` for seq in `range`.
pub fn requests(range: std::ops::RangeInclusive<u64>) -> Vec<u8> {
    let mut out = Vec::new();
    for seq in range {
        out.extend_from_slice(format!("REQ {seq} data{seq}\n").as_bytes());
    }
    out
}

/// The exact answers the in-test server gives to `requests(range)`.
pub fn answers(range: std::ops::RangeInclusive<u64>) -> Vec<u8> {
    let mut out = Vec::new();
    for seq in range {
        if seq % 8 == 0 {
            out.extend_from_slice(format!("NAK {seq} nope\n").as_bytes());
        } else {
            out.extend_from_slice(format!("ACK {seq} ok\n").as_bytes());
        }
    }
    out
}

/// A loopback port with nothing listening on it (bound, then released).
pub fn dead_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

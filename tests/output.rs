//! Stdout and stderr that nobody reads must not stall the relay: lines are
//! dropped and counted, and output resumes when the reader reads again.

mod util;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, ChildStderr, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use util::*;

/// A free loopback port (bound, then released) for a proxy whose start line
/// cannot be read.
fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// A proxy whose stdout and stderr are pipes the test holds but does not
/// read until it says so. Killed on drop.
struct Deaf {
    child: Child,
    addr: SocketAddr,
    admin: SocketAddr,
}

impl Deaf {
    fn start(upstream: &str, extra: &[&str]) -> Deaf {
        Deaf::start_with_stdout(upstream, extra, Stdio::piped())
    }

    fn start_with_stdout(upstream: &str, extra: &[&str], stdout: Stdio) -> Deaf {
        let (addr, admin) = (free_addr(), free_addr());
        let mut child = Command::new(env!("CARGO_BIN_EXE_foo-proxy"))
            .args(["-listen", &addr.to_string(), "-forward", upstream])
            .args(["-http", &admin.to_string(), "-recovery-path="])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + WAIT;
        while TcpStream::connect_timeout(&admin, Duration::from_millis(200)).is_err() {
            assert!(Instant::now() < deadline, "foo-proxy did not start");
            assert!(child.try_wait().unwrap().is_none(), "foo-proxy exited");
            thread::sleep(Duration::from_millis(20));
        }
        Deaf { child, addr, admin }
    }

    /// Sends `signal` `times` times, a millisecond apart so that the
    /// kernel does not merge them into one pending signal.
    fn signal_many(&self, signal: nix::sys::signal::Signal, times: usize) {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).unwrap());
        for _ in 0..times {
            nix::sys::signal::kill(pid, signal).unwrap();
            thread::sleep(Duration::from_millis(1));
        }
    }

    /// A request/answer through the proxy, bounded; `None` if it stalled.
    fn round_trip(&self, seq: u64) -> Option<Vec<u8>> {
        let mut c = TcpStream::connect_timeout(&self.addr, Duration::from_secs(3)).ok()?;
        c.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
        c.write_all(format!("REQ {seq} x\n").as_bytes()).ok()?;
        let want = answers(seq..=seq);
        let mut got = vec![0u8; want.len()];
        c.read_exact(&mut got).ok()?;
        Some(got)
    }

    /// `GET path` on the admin socket, bounded; the body, or `None`.
    fn get(&self, path: &str) -> Option<String> {
        let mut s = TcpStream::connect_timeout(&self.admin, Duration::from_secs(3)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).ok()?;
        let (_, body) = text.split_once("\r\n\r\n")?;
        text.starts_with("HTTP/1.1 200").then(|| body.to_string())
    }

    fn stats(&self) -> serde_json::Value {
        let body = self.get("/stats").expect("/stats answers");
        serde_json::from_str(&body).unwrap()
    }
}

impl Drop for Deaf {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn an_unread_stdout_drops_reports_and_the_relay_and_admin_keep_answering() {
    let server = FooServer::start(ServerOpts::default());
    let proxy = Deaf::start(&server.addr.to_string(), &[]);
    // Stderr is read (and ignored) so that only stdout is stuck.
    let err = proxy_stderr(&proxy);
    let mut dropped = 0;
    for round in 0..10 {
        proxy.signal_many(nix::sys::signal::Signal::SIGUSR2, 100);
        assert_eq!(
            proxy.round_trip(round + 1),
            Some(answers(round + 1..=round + 1)),
            "the relay stalled after {} reports",
            (round + 1) * 100
        );
        assert!(proxy.get("/health").is_some(), "/health stalled");
        dropped = proxy.stats()["reports_dropped"].as_u64().unwrap_or(0);
        if dropped > 0 {
            break;
        }
    }
    assert!(dropped > 0, "no report was dropped: {}", proxy.stats());
    let metrics = proxy.get("/metrics?format=prometheus").unwrap();
    let counter = metrics
        .lines()
        .find_map(|l| l.strip_prefix("foo_reports_dropped_total "))
        .and_then(|v| v.parse::<u64>().ok());
    assert!(counter.is_some_and(|n| n >= dropped), "{metrics}");
    drop(err);
}

/// Reads the proxy's stderr in the background so it never fills.
fn proxy_stderr(proxy: &Deaf) -> thread::JoinHandle<()> {
    let fd = proxy.child.stderr.as_ref().unwrap().try_clone_fd();
    thread::spawn(move || {
        let mut sink = Vec::new();
        let _ = std::fs::File::from(fd).read_to_end(&mut sink);
    })
}

trait CloneFd {
    fn try_clone_fd(&self) -> std::os::fd::OwnedFd;
}

impl CloneFd for ChildStderr {
    fn try_clone_fd(&self) -> std::os::fd::OwnedFd {
        use std::os::fd::AsFd;
        self.as_fd().try_clone_to_owned().unwrap()
    }
}

#[test]
fn an_unread_stderr_drops_debug_lines_the_relay_keeps_working_and_logging_resumes() {
    let server = FooServer::start(ServerOpts::default());
    let mut proxy = Deaf::start(&server.addr.to_string(), &["--log-level", "debug"]);
    // Each connection logs a few debug lines: a few thousand fill the pipe
    // (64 KiB) and the queue many times over.
    let started = Instant::now();
    for seq in 1..=3000 {
        assert_eq!(
            proxy.round_trip(seq),
            Some(answers(seq..=seq)),
            "the relay stalled at connection {seq} ({:?} in)",
            started.elapsed()
        );
        if seq % 500 == 0 {
            assert!(proxy.get("/health").is_some(), "/health stalled");
        }
    }
    let dropped = proxy.stats()["log_lines_dropped"].as_u64().unwrap();
    assert!(dropped > 0, "nothing was dropped: the pipe never filled?");
    // The reader reads again: the backlog drains and new lines come out.
    let err = proxy.child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(err).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + WAIT;
    let mut seen_new = false;
    let mut seq = 5000;
    while !seen_new && Instant::now() < deadline {
        proxy.round_trip(seq).expect("relay works");
        while let Ok(line) = rx.recv_timeout(Duration::from_millis(100)) {
            if line.contains("admin requests were not logged") || line.contains(" DEBUG ") {
                // Lines logged after the reader came back carry pair ids
                // above the 3000 connections made while it was away.
                if let Some(id) = line
                    .split("pair ")
                    .nth(1)
                    .and_then(|r| r.split(':').next())
                    .and_then(|n| n.parse::<u64>().ok())
                    && id > 3000
                {
                    seen_new = true;
                }
            }
        }
        seq += 1;
    }
    assert!(seen_new, "logging did not resume once stderr was read");
}

/// Sets the soft file-size limit (RLIMIT_FSIZE) of process `pid` from
/// outside, as `prlimit --pid` does (`None`: no limit); false when python3
/// is missing.
fn set_file_size_limit(pid: u32, bytes: Option<u64>) -> bool {
    let soft = bytes.map_or_else(|| "resource.RLIM_INFINITY".to_string(), |b| b.to_string());
    let script = format!(
        "import resource; resource.prlimit({pid}, resource.RLIMIT_FSIZE, ({soft}, resource.RLIM_INFINITY))"
    );
    Command::new("python3")
        .args(["-c", &script])
        .status()
        .is_ok_and(|s| s.success())
}

/// Waits until `path` holds `lines` newlines; its text.
fn wait_for_lines(path: &std::path::Path, lines: usize) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let text = std::fs::read_to_string(path).unwrap();
        if text.matches('\n').count() >= lines || Instant::now() > deadline {
            return text;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_report_cut_short_by_the_file_size_limit_is_ended_by_a_newline_not_glued_to_the_next() {
    use nix::sys::signal::Signal::SIGUSR2;
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("output-efbig");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("stdout.txt");
    let file = std::fs::File::create(&path).unwrap();
    let proxy = Deaf::start_with_stdout("127.0.0.1:1", &[], Stdio::from(file));
    let err = proxy_stderr(&proxy);
    proxy.signal_many(SIGUSR2, 1);
    let first = wait_for_lines(&path, 1);
    assert!(first.ends_with('\n'), "{first:?}");
    // The next report reaches the limit half way (EFBIG, SIGXFSZ ignored).
    let limit = first.len() as u64 * 3 / 2;
    if !set_file_size_limit(proxy.child.id(), Some(limit)) {
        eprintln!("SKIPPED a_report_cut_short_by_the_file_size_limit...: python3 is missing");
        return;
    }
    proxy.signal_many(SIGUSR2, 1);
    let deadline = Instant::now() + WAIT;
    while proxy.stats()["reports_dropped"] != 1 {
        assert!(
            Instant::now() < deadline,
            "the cut report was not counted: {}",
            proxy.stats()
        );
        thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(std::fs::metadata(&path).unwrap().len(), limit);
    // Space again (the limit lifted, as when a full disk is cleaned up).
    assert!(set_file_size_limit(proxy.child.id(), None));
    proxy.signal_many(SIGUSR2, 1);
    wait_for_lines(&path, 3);
    proxy.signal_many(SIGUSR2, 1);
    let text = wait_for_lines(&path, 4);
    let lines: Vec<&str> = text.split_terminator('\n').collect();
    assert!(text.ends_with('\n'), "{text}");
    assert_eq!(lines.len(), 4, "{text}");
    let json = |l: &str| serde_json::from_str::<serde_json::Value>(l).is_ok();
    assert!(json(lines[0]), "{text}");
    // The fragment is a line of its own, ended by the newline that the
    // next write put in front; every report after it is whole.
    assert!(
        !json(lines[1]) && lines[1].starts_with("{\"msg_total\":"),
        "{text}"
    );
    assert!(json(lines[2]) && json(lines[3]), "{text}");
    drop(err);
}

#[test]
fn a_proxy_stopped_while_its_stdout_pipe_is_full_leaves_only_whole_reports() {
    use nix::sys::signal::Signal::{SIGTERM, SIGUSR2};
    let mut proxy = Deaf::start("127.0.0.1:1", &[]);
    let err = proxy_stderr(&proxy);
    // Far more reports than the pipe holds (64 KiB, about 70 reports).
    let mut dropped = 0;
    for _ in 0..20 {
        proxy.signal_many(SIGUSR2, 100);
        dropped = proxy.stats()["reports_dropped"].as_u64().unwrap_or(0);
        if dropped > 0 {
            break;
        }
    }
    assert!(dropped > 0, "the pipe never filled: {}", proxy.stats());
    // The reader takes a little, then stops again: the writer goes on with
    // the queued reports until the pipe is full once more.
    let mut stdout = proxy.child.stdout.take().unwrap();
    let mut head = vec![0u8; 10_000];
    stdout.read_exact(&mut head).unwrap();
    thread::sleep(Duration::from_millis(200));
    proxy.signal_many(SIGTERM, 1);
    let deadline = Instant::now() + WAIT;
    while proxy.child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the exit hung on a full stdout");
        thread::sleep(Duration::from_millis(10));
    }
    let mut text = String::from_utf8(head).unwrap();
    stdout.read_to_string(&mut text).unwrap();
    assert!(text.len() > 32 * 1024, "{} bytes", text.len());
    assert!(
        text.ends_with('\n'),
        "cut off: {:?}",
        &text[text.len().saturating_sub(80)..]
    );
    for line in text.lines() {
        assert!(
            serde_json::from_str::<serde_json::Value>(line).is_ok(),
            "{line:?}"
        );
    }
    drop(err);
}

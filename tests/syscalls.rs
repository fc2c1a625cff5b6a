//! The system calls the proxy makes per connection and per read, counted
//! with `strace` attached to the running binary: the calls issue 18 removed
//! (an `EPOLL_CTL_DEL` before each close, `SO_ERROR` and `getpeername` per
//! upstream connect, a `shutdown` right before a close, a `TCP_NODELAY`
//! call per accepted client, a read that only says `EAGAIN` after a short
//! one) must not come back. Counts, not timings: they do not depend on the
//! machine's load. Without `strace` the tests say SKIPPED and pass.

mod util;

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use util::*;

/// The calls traced: the connection's life and the relay.
const TRACED: &str = "trace=accept4,socket,connect,setsockopt,getsockopt,getpeername,\
                      epoll_ctl,recvfrom,sendto,shutdown,close";

/// `strace` attached to a running process (every thread), writing to a
/// file; detached (SIGINT) on [`Tracer::finish`] or drop.
struct Tracer {
    child: Child,
    out: std::path::PathBuf,
}

impl Tracer {
    /// Attaches to `pid`, or `None` (SKIPPED printed) without strace.
    fn attach(pid: u32, test: &str) -> Option<Tracer> {
        if Command::new("strace").arg("-V").output().is_err() {
            eprintln!("SKIPPED: {test}: no strace");
            return None;
        }
        let out = std::env::temp_dir().join(format!("foo-syscalls-{pid}-{test}.txt"));
        let child = Command::new("strace")
            .args(["-f", "-qq", "-e", TRACED, "-o"])
            .arg(&out)
            .args(["-p", &pid.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn strace");
        // Attached once the kernel names a tracer for the process.
        wait_for("strace to attach", || {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            status
                .lines()
                .any(|l| l.starts_with("TracerPid:") && l.trim_end() != "TracerPid:\t0")
        });
        Some(Tracer { child, out })
    }

    /// Detaches and returns one entry per traced call: `(name, line)`.
    fn finish(mut self) -> Vec<(String, String)> {
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let deadline = std::time::Instant::now() + WAIT;
        while self.child.try_wait().ok().flatten().is_none() {
            assert!(
                std::time::Instant::now() < deadline,
                "strace did not detach"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let text = std::fs::read_to_string(&self.out).unwrap_or_default();
        let _ = std::fs::remove_file(&self.out);
        text.lines()
            .filter_map(|line| {
                // `PID name(args) = result`, or `PID name(args <unfinished ...>`.
                let call = line.split_once(' ').map_or(line, |(_, rest)| rest);
                let name = call.split('(').next()?.trim();
                let known = !name.is_empty()
                    && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
                known.then(|| (name.to_string(), call.to_string()))
            })
            .collect()
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn counts(calls: &[(String, String)]) -> BTreeMap<&str, usize> {
    let mut map = BTreeMap::new();
    for (name, _) in calls {
        *map.entry(name.as_str()).or_insert(0) += 1;
    }
    map
}

fn matching(calls: &[(String, String)], name: &str, needle: &str) -> usize {
    let hit = |(n, line): &&(String, String)| n == name && line.contains(needle);
    calls.iter().filter(hit).count()
}

/// Waits until the proxy holds only the descriptors it held before.
fn settled(proxy: &Proxy, baseline: usize) {
    wait_for("the proxy to close every connection", || {
        proxy.fd_count() <= baseline
    });
}

#[test]
fn a_churned_connection_costs_no_call_that_issue_18_removed() {
    const N: usize = 40;
    let server = FooServer::start(ServerOpts::default());
    let upstream = server.addr.to_string();
    let proxy = Proxy::start(&upstream, &[]);
    let baseline = proxy.fd_count();
    let test = "a_churned_connection_costs_no_call_that_issue_18_removed";
    let Some(tracer) = Tracer::attach(proxy.pid(), test) else {
        return;
    };
    for seq in 1..=N as u64 {
        let mut client = proxy.connect();
        client.write_all(&requests(seq..=seq)).unwrap();
        let got = read_exact_timeout(&mut client, answers(seq..=seq).len());
        assert_eq!(got, answers(seq..=seq), "connection {seq}");
        drop(client);
        settled(&proxy, baseline);
    }
    let calls = tracer.finish();
    let c = counts(&calls);
    eprintln!("per {N} churned connections: {c:?}");
    let n = |name: &str| c.get(name).copied().unwrap_or(0);
    assert_eq!(
        matching(&calls, "epoll_ctl", "EPOLL_CTL_DEL"),
        0,
        "close removes a socket from epoll itself"
    );
    assert_eq!(
        n("getsockopt"),
        0,
        "a connect's result comes with its event (no SO_ERROR)"
    );
    assert_eq!(
        n("getpeername"),
        0,
        "a connect's result comes with its event"
    );
    assert_eq!(n("shutdown"), 0, "no shutdown right before a close");
    assert_eq!(
        matching(&calls, "setsockopt", "TCP_NODELAY"),
        N,
        "one TCP_NODELAY per upstream socket; a client inherits it from the listener"
    );
    assert_eq!(n("socket"), N);
    assert_eq!(n("connect"), N);
    assert_eq!(
        n("close"),
        2 * N,
        "each client and each upstream socket closed once"
    );
    let accepted = calls
        .iter()
        .filter(|(name, line)| name == "accept4" && !line.contains("EAGAIN"))
        .count();
    assert_eq!(accepted, N);
    assert!(
        n("accept4") <= 2 * N,
        "at most one empty accept per wakeup: {c:?}"
    );
    let total: usize = c.values().sum();
    assert!(
        total <= 15 * N,
        "{total} calls for {N} connections (at most 15 each): {c:?}"
    );
}

#[test]
fn a_short_read_is_not_followed_by_a_read_that_only_says_eagain() {
    let server = FooServer::start(ServerOpts::default());
    let upstream = server.addr.to_string();
    let proxy = Proxy::start(&upstream, &[]);
    let test = "a_short_read_is_not_followed_by_a_read_that_only_says_eagain";
    let mut client = proxy.connect();
    let Some(tracer) = Tracer::attach(proxy.pid(), test) else {
        return;
    };
    for batch in 0..50u64 {
        let range = batch * 8 + 1..=batch * 8 + 8;
        client.write_all(&requests(range.clone())).unwrap();
        let got = read_exact_timeout(&mut client, answers(range.clone()).len());
        assert_eq!(got, answers(range), "batch {batch}");
    }
    let calls = tracer.finish();
    let reads = matching(&calls, "recvfrom", "");
    let empty = matching(&calls, "recvfrom", "EAGAIN");
    eprintln!("{reads} reads, {empty} of them EAGAIN, for 50 round trips");
    assert!(reads >= 100, "two reads per round trip at least: {reads}");
    // Reading until EAGAIN would make every other read an empty one.
    assert!(
        empty * 4 <= reads,
        "{empty} of {reads} reads only said EAGAIN"
    );
}

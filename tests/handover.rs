//! Zero-downtime restarts: `--takeover` hands the listeners, the counts and
//! the recovery file from a running proxy to a new one; socket activation
//! (`LISTEN_FDS`) keeps the listener across a plain stop and start; and
//! whatever breaks in the middle leaves one working proxy.

mod util;

use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use util::{FooServer, Proxy, ServerOpts, WAIT, answers, requests};

const PROXY: &str = env!("CARGO_BIN_EXE_foo-proxy");

/// A fresh directory for one test, under cargo's scratch space.
fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("handover-{name}"));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// The flags of every proxy in these tests: loopback, a long drain (the
/// old process must outlive its clients), the recovery file in `dir`.
fn flags(server: &FooServer, listen: &str, dir: &Path) -> Vec<String> {
    [
        "-listen",
        listen,
        "-forward",
        &server.addr.to_string(),
        "-http",
        "127.0.0.1:0",
        "--drain-timeout",
        "30s",
        "-recovery-path",
        &dir.join("r.json").display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn start(args: &[String]) -> Proxy {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Proxy::start_with_args(&args)
}

/// A successor for `old`: the same flags, its listen address, `--takeover`.
fn take_over(server: &FooServer, old: &Proxy, dir: &Path) -> Proxy {
    let mut args = flags(server, &old.addr.to_string(), dir);
    args.push("--takeover".into());
    start(&args)
}

/// Runs foo-proxy to its exit (bounded); its exit code and stderr.
fn run_to_exit(args: &[String]) -> (Option<i32>, String) {
    let mut child = Command::new(PROXY)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + WAIT;
    let code = loop {
        if let Ok(Some(status)) = child.try_wait() {
            break status.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        thread::sleep(Duration::from_millis(10));
    };
    let mut err = String::new();
    let _ = child.stderr.take().unwrap().read_to_string(&mut err);
    (code, err)
}

/// Waits (bounded) until `what` appears in the proxy's stderr.
fn wait_for_log(proxy: &Proxy, what: &str) {
    let deadline = Instant::now() + WAIT;
    while !proxy.stderr().contains(what) {
        assert!(
            Instant::now() < deadline,
            "no {what:?} in: {}",
            proxy.stderr()
        );
        thread::sleep(Duration::from_millis(10));
    }
}

/// The recovery file's totals: (msg_req, msg_ack, msg_nak).
fn saved_totals(dir: &Path) -> (u64, u64, u64) {
    let bytes = fs::read(dir.join("r.json")).expect("a recovery file");
    let snapshot = foo_proxy::recovery::decode(&bytes).expect("a valid recovery file");
    let t = snapshot.totals;
    (t.msg_req, t.msg_ack, t.msg_nak)
}

fn totals(report: &serde_json::Value) -> (u64, u64, u64) {
    let n = |k: &str| report[k].as_u64().unwrap();
    (n("msg_req"), n("msg_ack"), n("msg_nak"))
}

/// What the connector saw.
#[derive(Default, Debug)]
struct Seen {
    connections: u64,
    sent: u64,
    acks: u64,
    naks: u64,
    connect_errors: u64,
    resets: u64,
    wrong_answers: u64,
}

/// A client that opens a new connection every few milliseconds until
/// `stop`: a few REQs, a half-close, every answer read and compared byte
/// for byte, then the server's EOF. `made` counts its connections as they
/// go, so a test can wait for traffic instead of sleeping.
fn connector(
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    made: Arc<AtomicU64>,
) -> thread::JoinHandle<Seen> {
    thread::spawn(move || {
        let mut seen = Seen::default();
        let mut i = 0u64;
        while !stop.load(Ordering::Relaxed) {
            i += 1;
            let n = 1 + i % 9;
            let mut stream = match TcpStream::connect_timeout(&addr, WAIT) {
                Ok(s) => s,
                Err(_) => {
                    seen.connect_errors += 1;
                    thread::sleep(Duration::from_millis(3));
                    continue;
                }
            };
            seen.connections += 1;
            made.fetch_add(1, Ordering::Relaxed);
            stream.set_read_timeout(Some(WAIT)).unwrap();
            stream.set_write_timeout(Some(WAIT)).unwrap();
            let sent = stream
                .write_all(&requests(1..=n))
                .and_then(|()| stream.shutdown(Shutdown::Write));
            if sent.is_err() {
                seen.resets += 1;
                continue;
            }
            seen.sent += n;
            let mut got = Vec::new();
            match stream.read_to_end(&mut got) {
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::ConnectionReset => seen.resets += 1,
                Err(_) => seen.wrong_answers += 1,
            }
            if got == answers(1..=n) {
                seen.naks += n / 8;
                seen.acks += n - n / 8;
            } else {
                seen.wrong_answers += 1;
            }
            thread::sleep(Duration::from_millis(3));
        }
        seen
    })
}

/// Waits (bounded) until the connector has made `n` more connections:
/// traffic that overlaps what comes next, however slow the machine.
fn more_connections(made: &AtomicU64, n: u64) {
    let want = made.load(Ordering::Relaxed) + n;
    util::wait_for(&format!("{n} more connections"), || {
        made.load(Ordering::Relaxed) >= want
    });
}

/// What foo-load reported (`--json`).
struct Load {
    sent: u64,
    acks: u64,
    naks: u64,
    errors: u64,
}

fn foo_load(addr: SocketAddr, duration: &str) -> thread::JoinHandle<Load> {
    let duration = duration.to_string();
    thread::spawn(move || {
        let out = Command::new(util::tool("foo-load"))
            .args(["--target", &addr.to_string(), "--connections", "4"])
            .args(["--depth", "8", "--duration", &duration, "--json"])
            .stdin(Stdio::null())
            .output()
            .expect("run foo-load");
        assert!(
            out.status.success(),
            "foo-load: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("foo-load JSON");
        let n = |k: &str| v[k].as_u64().unwrap();
        Load {
            sent: n("sent"),
            acks: n("ack_all"),
            naks: n("nak_all"),
            errors: n("errors"),
        }
    })
}

#[test]
fn a_takeover_under_load_refuses_no_client_and_keeps_every_count() {
    let server = FooServer::start(ServerOpts::default());
    let dir = scratch("under-load");
    let mut old = start(&flags(&server, "127.0.0.1:0", &dir));
    let addr = old.addr;
    let stop = Arc::new(AtomicBool::new(false));
    let made = Arc::new(AtomicU64::new(0));
    let clients = connector(addr, stop.clone(), made.clone());
    let load = foo_load(addr, "2s");
    // Counted, not timed: the connector is busy before, between and after
    // the hand-overs (fixed pauses gave a loaded machine too few).
    more_connections(&made, 40);
    // Three hand-overs in a row: the first while foo-load's connections
    // live on the old process, the others with only the connector.
    let mut current = take_over(&server, &old, &dir);
    wait_for_log(&current, "hand-over: accepting");
    let load = load.join().unwrap();
    assert_eq!(old.wait_exit(WAIT), Some(0), "{}", old.stderr());
    for _ in 0..2 {
        more_connections(&made, 30);
        let next = take_over(&server, &current, &dir);
        assert_eq!(current.wait_exit(WAIT), Some(0), "{}", current.stderr());
        wait_for_log(&next, "complete");
        current = next;
        assert!(current.alive());
    }
    more_connections(&made, 30);
    stop.store(true, Ordering::Relaxed);
    let seen = clients.join().unwrap();

    assert_eq!(load.errors, 0, "foo-load saw errors");
    assert_eq!(
        load.sent,
        load.acks + load.naks,
        "foo-load: every REQ answered"
    );
    assert_eq!(seen.connect_errors, 0, "{seen:?}");
    assert_eq!(seen.resets, 0, "{seen:?}");
    assert_eq!(seen.wrong_answers, 0, "{seen:?}");
    assert!(seen.connections > 100, "{seen:?}");
    let want = (
        load.sent + seen.sent,
        load.acks + seen.acks,
        load.naks + seen.naks,
    );
    assert_eq!(totals(&current.report()), want, "{}", current.stderr());
    // The recovery file holds the same once the last process stops.
    current.signal("TERM");
    assert_eq!(current.wait_exit(WAIT), Some(0), "{}", current.stderr());
    assert_eq!(saved_totals(&dir), want);
    assert!(
        !dir.join("r.json.sock").exists(),
        "a stopped proxy leaves no control socket"
    );
}

#[test]
fn without_a_running_proxy_takeover_starts_normally() {
    let server = FooServer::start(ServerOpts::default());
    let dir = scratch("alone");
    let mut args = flags(&server, "127.0.0.1:0", &dir);
    args.push("--takeover".into());
    let proxy = start(&args);
    let mut c = proxy.connect();
    c.write_all(&requests(1..=3)).unwrap();
    assert_eq!(
        util::read_exact_timeout(&mut c, answers(1..=3).len()),
        answers(1..=3)
    );
    wait_for_log(&proxy, "starting without a hand-over");
    // And it can be taken over in turn.
    let next = take_over(&server, &proxy, &dir);
    wait_for_log(&next, "hand-over: accepting");
}

/// A client connection held open on `proxy` (it keeps a drain going).
fn hold(proxy: &Proxy) -> TcpStream {
    let mut c = proxy.connect();
    c.write_all(&requests(1..=1)).unwrap();
    assert_eq!(
        util::read_exact_timeout(&mut c, answers(1..=1).len()),
        answers(1..=1)
    );
    c
}

/// One REQ..answer exchange on a new connection to `addr`.
fn exchange(addr: SocketAddr, n: u64) {
    let mut c = TcpStream::connect_timeout(&addr, WAIT).expect("a proxy accepts");
    c.set_read_timeout(Some(WAIT)).unwrap();
    c.write_all(&requests(1..=n)).unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    let mut got = Vec::new();
    c.read_to_end(&mut got).unwrap();
    assert_eq!(got, answers(1..=n));
}

#[test]
fn a_second_takeover_during_one_is_refused_and_the_first_completes() {
    let server = FooServer::start(ServerOpts::default());
    let dir = scratch("second");
    let mut old = start(&flags(&server, "127.0.0.1:0", &dir));
    let held = hold(&old);
    let first = take_over(&server, &old, &dir);
    wait_for_log(&first, "hand-over: accepting");
    let mut args = flags(&server, &old.addr.to_string(), &dir);
    args.push("--takeover".into());
    let (code, err) = run_to_exit(&args);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("already in progress"), "{err}");
    exchange(old.addr, 5);
    // The first one completes once the old process's client leaves.
    drop(held);
    assert_eq!(old.wait_exit(WAIT), Some(0), "{}", old.stderr());
    wait_for_log(&first, "complete");
    // The file gets the successor's counts of the hand-over too, with no
    // traffic after it.
    let deadline = Instant::now() + WAIT;
    while saved_totals(&dir) != (6, 6, 0) {
        assert!(Instant::now() < deadline, "{:?}", saved_totals(&dir));
        thread::sleep(Duration::from_millis(20));
    }
    exchange(first.addr, 3);
    assert_eq!(totals(&first.report()), (9, 9, 0));
    // Its control socket came along: it can be taken over in turn.
    let second = take_over(&server, &first, &dir);
    wait_for_log(&second, "complete");
}

/// The pids a log names (every number after "pid ").
fn pids_named(log: &str) -> Vec<u32> {
    log.split("pid ")
        .skip(1)
        .filter_map(|rest| {
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        })
        .collect()
}

/// The control socket is handed on with each hand-over, and on the
/// connecting side `SO_PEERCRED` names the socket's creator (the first
/// process) for ever: each successor must learn the pid of the process it
/// takes over from as that process sends, and every log names the real one.
#[test]
fn three_takeovers_in_a_row_name_each_process_by_its_own_pid() {
    let server = FooServer::start(ServerOpts::default());
    let dir = scratch("pids");
    let mut old = start(&flags(&server, "127.0.0.1:0", &dir));
    for round in 1..=3 {
        let held = hold(&old);
        let new = take_over(&server, &old, &dir);
        wait_for_log(&new, "hand-over: accepting");
        let (o, n) = (old.pid(), new.pid());
        // A second successor meanwhile is told both real pids.
        let mut args = flags(&server, &old.addr.to_string(), &dir);
        args.push("--takeover".into());
        let (code, err) = run_to_exit(&args);
        assert_eq!(code, Some(1), "{err}");
        assert!(
            err.contains(&format!("a hand-over from pid {o} to pid {n} is already")),
            "round {round} (old {o}, new {n}): {err}"
        );
        drop(held);
        assert_eq!(old.wait_exit(WAIT), Some(0), "{}", old.stderr());
        wait_for_log(&new, "complete");
        let new_log = new.stderr();
        for line in [
            format!("hand-over: accepting; pid {o} drains"),
            format!("hand-over from pid {o} complete"),
        ] {
            assert!(
                new_log.contains(&line),
                "round {round} (old {o}, new {n}): no {line:?} in:\n{new_log}"
            );
        }
        assert!(
            pids_named(&new_log).iter().all(|p| *p == o),
            "round {round}: the successor names a pid other than {o}:\n{new_log}"
        );
        let old_log = old.stderr();
        for line in [
            format!("hand-over: pid {n} asks to take over"),
            format!("hand-over: pid {n} has our listeners and counts"),
        ] {
            assert!(
                old_log.contains(&line),
                "round {round} (old {o}, new {n}): no {line:?} in:\n{old_log}"
            );
        }
        old = new;
    }
}

#[test]
fn a_takeover_whose_flags_cannot_bind_leaves_the_old_one_serving() {
    let server = FooServer::start(ServerOpts::default());
    let dir = scratch("cannot-bind");
    let old = start(&flags(&server, "127.0.0.1:0", &dir));
    exchange(old.addr, 2);
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = taken.local_addr().unwrap().to_string();
    let mut args = flags(&server, &old.addr.to_string(), &dir);
    let http = args.iter().position(|a| a == "-http").unwrap() + 1;
    args[http] = busy.clone();
    args.push("--takeover".into());
    let (code, err) = run_to_exit(&args);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(&format!("cannot listen for HTTP on {busy}")),
        "{err}"
    );
    // The old process never stopped accepting, and it can still be taken
    // over (its conversation ended cleanly).
    exchange(old.addr, 3);
    assert_eq!(totals(&old.report()), (5, 5, 0));
    let next = take_over(&server, &old, &dir);
    wait_for_log(&next, "complete");
    exchange(next.addr, 8);
    assert_eq!(totals(&next.report()), (13, 12, 1));
}

#[test]
fn a_crash_of_the_new_process_mid_hand_over_gives_the_listener_back() {
    let server = FooServer::start(ServerOpts::default());
    let dir = scratch("new-crash");
    let mut old = start(&flags(&server, "127.0.0.1:0", &dir));
    let _held = hold(&old);
    // Killed right after it accepts, and again once it has the old one's
    // counts (its report shows the REQs made so far: a state polled for,
    // not a pause that a loaded machine can outrun).
    for (round, with_counts) in [false, true].into_iter().enumerate() {
        let mut new = take_over(&server, &old, &dir);
        wait_for_log(&new, "hand-over: accepting");
        if with_counts {
            let so_far = 1 + 4 * round as u64;
            let r = new.report_until(|r| r["msg_req"] == so_far);
            assert_eq!(r["msg_req"], so_far, "the successor got no counts: {r}");
        }
        let back = old.stderr().matches("serving again").count();
        new.child.kill().unwrap();
        let _ = new.child.wait();
        let deadline = Instant::now() + WAIT;
        while old.stderr().matches("serving again").count() == back {
            assert!(Instant::now() < deadline, "{}", old.stderr());
            thread::sleep(Duration::from_millis(10));
        }
        assert!(old.alive());
        exchange(old.addr, 4);
    }
    assert_eq!(totals(&old.report()), (9, 9, 0));
    // Two stop signals: drain, then stop now. Signals of one kind pending
    // at once merge into one, so the second goes only once the first has
    // started the drain (its log line); back to back, a loaded machine
    // merged them and the drain ran its 30 s.
    old.signal("TERM");
    wait_for_log(&old, "signal again to stop now");
    old.signal("TERM");
    assert_eq!(old.wait_exit(WAIT), Some(0), "{}", old.stderr());
    assert_eq!(saved_totals(&dir), (9, 9, 0));
}

#[test]
fn a_crash_of_the_old_process_mid_hand_over_leaves_the_new_one_owning_the_file() {
    let server = FooServer::start(ServerOpts::default());
    let dir = scratch("old-crash");
    let mut old = start(&flags(&server, "127.0.0.1:0", &dir));
    let _held = hold(&old);
    exchange(old.addr, 8);
    // The old process's snapshot of its 9 REQs is on disk.
    let deadline = Instant::now() + WAIT;
    while !dir.join("r.json").exists() || saved_totals(&dir).0 < 9 {
        assert!(Instant::now() < deadline);
        thread::sleep(Duration::from_millis(20));
    }
    let mut new = take_over(&server, &old, &dir);
    wait_for_log(&new, "hand-over: accepting");
    exchange(new.addr, 3);
    old.child.kill().unwrap();
    let _ = old.child.wait();
    wait_for_log(&new, "went away before its final counts");
    wait_for_log(&new, "restored totals");
    exchange(new.addr, 2);
    // Its own 5, and the old one's 9 from the file: counted once.
    assert_eq!(totals(&new.report()), (14, 13, 1));
    // It owns the control socket now.
    let next = take_over(&server, &new, &dir);
    assert_eq!(new.wait_exit(WAIT), Some(0), "{}", new.stderr());
    wait_for_log(&next, "complete");
    assert_eq!(totals(&next.report()), (14, 13, 1));
}

/// The free port of a listener bound and released at once.
fn free_port() -> u16 {
    util::dead_port()
}

/// The children of process `pid`.
fn children(pid: u32) -> Vec<u32> {
    fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

fn kill(pid: u32, signal: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status();
}

#[test]
fn with_socket_activation_a_plain_stop_and_start_refuses_no_client() {
    let Ok(activate) = which("systemd-socket-activate") else {
        eprintln!(
            "SKIPPED: with_socket_activation_a_plain_stop_and_start_refuses_no_client: \
             systemd-socket-activate is not installed (Debian package systemd)"
        );
        return;
    };
    let server = FooServer::start(ServerOpts::default());
    let dir = scratch("activation");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let addr: SocketAddr = listen.parse().unwrap();
    // systemd-socket-activate holds the socket, as the service manager
    // would, and the shell keeps it across two runs of the proxy (its
    // children: LISTEN_PID, which names the shell, is dropped for them).
    let proxy_args = format!(
        "{PROXY} -listen {listen} -forward {} -http off --drain-timeout 30s -recovery-path {}",
        server.addr,
        dir.join("r.json").display()
    );
    let script = format!("env -u LISTEN_PID {proxy_args}; env -u LISTEN_PID {proxy_args}");
    // systemd-socket-activate starts its command on the first connection:
    // this one, tried until the socket is there.
    let trigger = thread::spawn(move || {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(mut c) = TcpStream::connect(addr) {
                c.set_read_timeout(Some(WAIT)).unwrap();
                c.write_all(&requests(1..=1)).unwrap();
                let got = util::read_exact_timeout(&mut c, answers(1..=1).len());
                assert_eq!(got, answers(1..=1));
                return;
            }
            assert!(
                Instant::now() < deadline,
                "systemd-socket-activate did not listen"
            );
            thread::sleep(Duration::from_millis(5));
        }
    });
    let mut cmd = Command::new(activate);
    cmd.args(["-l", &listen, "sh", "-c", &script]);
    let holder = Proxy::spawn(&mut cmd);
    trigger.join().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let made = Arc::new(AtomicU64::new(0));
    let clients = connector(addr, stop.clone(), made.clone());
    let load = foo_load(addr, "1500ms");
    more_connections(&made, 25);
    let first = *children(holder.pid()).first().expect("the first proxy");
    kill(first, "TERM");
    let deadline = Instant::now() + WAIT * 2;
    let second = loop {
        match children(holder.pid()).first() {
            Some(&pid) if pid != first => break pid,
            _ => {}
        }
        assert!(Instant::now() < deadline, "{}", holder.stderr());
        thread::sleep(Duration::from_millis(5));
    };
    let load = load.join().unwrap();
    more_connections(&made, 25);
    stop.store(true, Ordering::Relaxed);
    let seen = clients.join().unwrap();
    kill(second, "TERM");
    let deadline = Instant::now() + WAIT;
    while fs::metadata(format!("/proc/{second}")).is_ok() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(load.errors, 0, "foo-load saw errors");
    assert_eq!(seen.connect_errors, 0, "{seen:?}");
    assert_eq!(seen.resets, 0, "{seen:?}");
    assert_eq!(seen.wrong_answers, 0, "{seen:?}");
    assert!(seen.connections > 50, "{seen:?}");
    let err = holder.stderr_count("listening on", 2);
    assert_eq!(err.matches("listening on").count(), 2, "{err}");
    // The first run's counts came back from its final snapshot.
    let want = (
        1 + load.sent + seen.sent,
        1 + load.acks + seen.acks,
        load.naks + seen.naks,
    );
    assert_eq!(saved_totals(&dir), want, "{err}");
}

fn which(name: &str) -> Result<PathBuf, ()> {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or(())
}

#[test]
fn systemd_hears_ready_mainpid_after_a_hand_over_and_stopping() {
    let server = FooServer::start(ServerOpts::default());
    let dir = scratch("notify");
    let socket = dir.join("notify.sock");
    let manager = UnixDatagram::bind(&socket).unwrap();
    manager.set_read_timeout(Some(WAIT)).unwrap();
    let spawn = |args: Vec<String>| {
        let mut cmd = Command::new(PROXY);
        cmd.args(args).env("NOTIFY_SOCKET", &socket);
        Proxy::spawn(&mut cmd)
    };
    let hear = || {
        let mut buf = [0u8; 256];
        let n = manager.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).to_string()
    };
    let mut old = spawn(flags(&server, "127.0.0.1:0", &dir));
    assert_eq!(hear(), format!("MAINPID={}\nREADY=1", old.pid()));
    let mut args = flags(&server, &old.addr.to_string(), &dir);
    args.push("--takeover".into());
    let mut new = spawn(args);
    assert_eq!(hear(), format!("MAINPID={}\nREADY=1", new.pid()));
    assert_eq!(old.wait_exit(WAIT), Some(0));
    // The old process drained without STOPPING=1: the service is not
    // stopping. The new one says it when it is.
    new.signal("TERM");
    assert_eq!(hear(), "STOPPING=1");
    assert_eq!(new.wait_exit(WAIT), Some(0));
}

/// Server sockets on `port` in ESTABLISHED: the upstream connections the
/// proxies still hold open (one they closed is in CLOSE_WAIT on a
/// never-closing server).
fn server_sockets_open(port: u16) -> usize {
    let table = fs::read_to_string("/proc/net/tcp").unwrap();
    let local = format!(":{port:04X}");
    table
        .lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3 && f[1].ends_with(&local) && f[3] == "01"
        })
        .count()
}

/// Polls until `probe` holds (bounded); its last value.
fn until<T: std::fmt::Debug>(
    what: &str,
    mut probe: impl FnMut() -> T,
    ok: impl Fn(&T) -> bool,
) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        let v = probe();
        if ok(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: {v:?}");
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_takeover_with_a_pool_keeps_sessions_exact_closes_the_old_pool_and_builds_a_new_one() {
    let server = FooServer::start(ServerOpts {
        never_close: true,
        ..ServerOpts::default()
    });
    let dir = scratch("pool");
    let pool = ["--upstream-pool", "4", "--upstream-spare", "2"].map(String::from);
    let mut args = flags(&server, "127.0.0.1:0", &dir);
    args.extend_from_slice(&pool);
    let mut old = start(&args);
    // Four sessions at once, ended cleanly: four connections pooled.
    let ends: Vec<_> = (0..4u64)
        .map(|i| {
            let addr = old.addr;
            thread::spawn(move || exchange(addr, 2 + i))
        })
        .collect();
    for t in ends {
        t.join().unwrap();
    }
    let sent_before = 2 + 3 + 4 + 5;
    old.report_until(|r| r["connections_active"] == 0 && r["upstream_pool_idle"] == 4);
    // Three clients mid-session: each holds a pooled connection.
    let mut mid: Vec<TcpStream> = (0..3u64)
        .map(|i| {
            let mut c = old.connect();
            c.set_read_timeout(Some(WAIT)).unwrap();
            let seqs = 100 * i + 1..=100 * i + 3;
            c.write_all(&requests(seqs.clone())).unwrap();
            assert_eq!(
                util::read_exact_timeout(&mut c, answers(seqs.clone()).len()),
                answers(seqs)
            );
            c
        })
        .collect();
    // One pooled connection left idle, and one spare opened to make two.
    let r = old.report_until(|r| {
        r["upstream_pool_in_use"] == 3
            && r["upstream_pool_idle"] == 2
            && r["upstream_connections"] == 5
    });
    assert_eq!(r["upstream_pool_in_use"], 3, "{r}");
    assert_eq!(r["upstream_pool_idle"], 2, "{r}");
    let idle_before = r["upstream_pool_idle"].as_u64().unwrap();
    let before = until(
        "the old pool's sockets",
        || server_sockets_open(server.port()),
        |&n| n as u64 == 3 + idle_before,
    );
    assert!(before >= 3 + 2, "{before}");
    let accepted_before = server.connections.load(Ordering::Relaxed);

    let mut args = flags(&server, &old.addr.to_string(), &dir);
    args.extend_from_slice(&pool);
    args.push("--takeover".into());
    let new = start(&args);
    wait_for_log(&new, "hand-over: accepting");
    // The old process closed its idle pooled connections at once; the new
    // one opened its own spares: the server holds the three sessions' and
    // the two spares.
    let r = old.report_until(|r| r["upstream_pool_idle"] == 0);
    assert_eq!(r["upstream_pool_idle"], 0, "{r}");
    assert_eq!(r["upstream_pool_discarded_drained"], idle_before, "{r}");
    let r = new.report_until(|r| r["upstream_pool_spare"] == 2 && r["upstream_connections"] == 2);
    assert_eq!(r["upstream_connections"], 2, "{r}");
    until(
        "the server's sockets after the hand-over",
        || server_sockets_open(server.port()),
        |&n| n == 3 + 2,
    );
    // The handshakes complete before the server's accept counts them.
    until(
        "the server's accepts after the hand-over",
        || server.connections.load(Ordering::Relaxed),
        |&n| n >= accepted_before + 2,
    );
    assert_eq!(
        server.connections.load(Ordering::Relaxed),
        accepted_before + 2
    );

    // The sessions on the old process go on, byte-exact, and end.
    for (i, c) in mid.iter_mut().enumerate() {
        let seqs = 100 * i as u64 + 4..=100 * i as u64 + 6;
        c.write_all(&requests(seqs.clone())).unwrap();
        c.shutdown(Shutdown::Write).unwrap();
        let mut got = Vec::new();
        c.read_to_end(&mut got).unwrap();
        assert_eq!(got, answers(seqs), "session {i}");
    }
    assert_eq!(old.wait_exit(WAIT), Some(0), "{}", old.stderr());
    wait_for_log(&new, "complete");
    // Nothing of the old process's is left open on the server.
    until(
        "the server's sockets after the old one left",
        || server_sockets_open(server.port()),
        |&n| n == 2,
    );

    // The successor serves from its own pool.
    for n in 1..=5 {
        exchange(new.addr, n);
    }
    let r = new.report_until(|r| r["connections_active"] == 0);
    assert!(r["upstream_pool_reused"].as_u64().unwrap() >= 5, "{r}");
    assert!(r["upstream_connections"].as_u64().unwrap() <= 4, "{r}");
    assert_eq!(r["upstream_pool_discarded_unclean_end"], 0, "{r}");
    let sent = sent_before + 3 * 6 + (1 + 2 + 3 + 4 + 5);
    let (req, ack, nak) = totals(&r);
    assert_eq!(req, sent, "{r}");
    assert_eq!(ack + nak, sent, "{r}");
    assert_eq!(r["requests_unanswered"], 0, "{r}");
    until(
        "the server's sockets at the end",
        || server_sockets_open(server.port()),
        |&n| n as u64 == r["upstream_connections"].as_u64().unwrap(),
    );
}

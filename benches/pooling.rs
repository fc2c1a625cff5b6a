//! Time to first answer of a new client session with a far-away server:
//! foo-proxy without pooling, with `--upstream-pool`, and with
//! `--upstream-spare` too.
//!
//! Run: `cargo bench --bench pooling [-- --runs N --sessions N --rtt-ms N]`.
//!
//! The kernel here has no netem, so the distance is emulated in user space:
//! a delaying relay between the proxy and a Foo server (both threads of
//! this process, on loopback) holds each connect for one round trip (what
//! a TCP handshake costs) and each chunk for half of one, each way. A
//! session connects to the proxy, sends one `REQ`, times its answer, then
//! half-closes and reads to the proxy's FIN (a clean end, so a pooled
//! connection goes back). Each run starts a fresh proxy: its first session
//! is "cold" (a pool is still empty; spares were opened at start), the
//! others "warm". Medians over every run.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

const USAGE: &str = "\
pooling: time to first answer of a new session through foo-proxy to a
server one emulated round trip away, without pooling, with a pool, with spares

    cargo bench --bench pooling -- [FLAGS]

    --runs N        fresh proxies per mode                 [default 5]
    --sessions N    sequential sessions per proxy          [default 40]
    --rtt-ms N      emulated round trip, ms                [default 25]
";

struct Args {
    runs: usize,
    sessions: usize,
    rtt: Duration,
}

fn parse_args() -> Result<Option<Args>, String> {
    let mut args = Args {
        runs: 5,
        sessions: 40,
        rtt: Duration::from_millis(25),
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut number = |name: &str| -> Result<usize, String> {
            it.next()
                .and_then(|v| v.parse().ok())
                .filter(|n| *n > 0)
                .ok_or_else(|| format!("{name} takes a number above 0"))
        };
        match a.as_str() {
            "--runs" => args.runs = number("--runs")?,
            "--sessions" => args.sessions = number("--sessions")?,
            "--rtt-ms" => args.rtt = Duration::from_millis(number("--rtt-ms")? as u64),
            "--bench" => {}
            "-h" | "--help" => {
                print!("{USAGE}");
                return Ok(None);
            }
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    Ok(Some(args))
}

/// A Foo server that answers every line with `ACK seq ok` and never
/// closes (like the reference server).
fn server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            thread::spawn(move || {
                let _ = stream.set_nodelay(true);
                let mut out = stream.try_clone().unwrap();
                let mut lines = BufReader::new(stream);
                let mut line = String::new();
                while lines.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
                    let seq = line.split_whitespace().nth(1).unwrap_or("0").to_string();
                    let _ = out.write_all(format!("ACK {seq} ok\n").as_bytes());
                    line.clear();
                }
                // Sit in CLOSE_WAIT until the process ends.
                thread::sleep(Duration::from_secs(3600));
            });
        }
    });
    addr
}

/// Copies `from` to `to`, each chunk written `one_way` after it was read.
fn delayed_copy(mut from: TcpStream, mut to: TcpStream, one_way: Duration) {
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx
                        .send((Instant::now() + one_way, buf[..n].to_vec()))
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
    });
    thread::spawn(move || {
        for (due, chunk) in rx {
            thread::sleep(due.saturating_duration_since(Instant::now()));
            if to.write_all(&chunk).is_err() {
                return;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}

/// The far-away server: a relay in front of `server` that holds each
/// connect for `rtt` (the handshake) and each chunk for `rtt / 2` each way.
fn far_away(server: SocketAddr, rtt: Duration) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        for near in listener.incoming().flatten() {
            thread::spawn(move || {
                thread::sleep(rtt);
                let Ok(far) = TcpStream::connect(server) else {
                    return;
                };
                let _ = near.set_nodelay(true);
                let _ = far.set_nodelay(true);
                let (near2, far2) = (near.try_clone().unwrap(), far.try_clone().unwrap());
                delayed_copy(near, far, rtt / 2);
                delayed_copy(far2, near2, rtt / 2);
            });
        }
    });
    addr
}

struct Proxy {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_proxy(forward: SocketAddr, extra: &[&str]) -> Proxy {
    let listen = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listen.local_addr().unwrap();
    drop(listen);
    let mut child = Command::new(env!("CARGO_BIN_EXE_foo-proxy"))
        .args([
            "-listen",
            &addr.to_string(),
            "-forward",
            &forward.to_string(),
        ])
        .args(["-http=off", "-recovery-path="])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start foo-proxy");
    // Its start line says it listens; no probe connection (that would be
    // a session of its own, and could fill the pool).
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let started = lines
        .by_ref()
        .map_while(Result::ok)
        .any(|l| l.contains("listening on"));
    assert!(started, "foo-proxy did not start");
    thread::spawn(move || lines.for_each(drop));
    // Spares get their connect (one emulated round trip).
    thread::sleep(Duration::from_millis(300));
    Proxy { child, addr }
}

/// One session: connect, one REQ, its answer timed; then a clean end.
fn session(proxy: &Proxy, seq: u64) -> Duration {
    let started = Instant::now();
    let mut c = TcpStream::connect(proxy.addr).expect("connect to foo-proxy");
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = c.set_nodelay(true);
    c.write_all(format!("REQ {seq} hello\n").as_bytes())
        .unwrap();
    let mut reader = BufReader::new(c.try_clone().unwrap());
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    let took = started.elapsed();
    assert_eq!(line, format!("ACK {seq} ok\n"));
    c.shutdown(Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    let _ = reader.read_to_end(&mut rest);
    took
}

fn median(mut v: Vec<Duration>) -> f64 {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => ms(v[n / 2]),
        n => (ms(v[n / 2 - 1]) + ms(v[n / 2])) / 2.0,
    }
}

fn main() {
    let args = match parse_args() {
        Ok(Some(a)) => a,
        Ok(None) => return,
        Err(e) => {
            eprintln!("pooling: {e}");
            std::process::exit(2);
        }
    };
    let far = far_away(server(), args.rtt);
    let modes: [(&str, &[&str]); 3] = [
        ("no pooling (default)", &[]),
        ("--upstream-pool 8", &["--upstream-pool=8"]),
        (
            "--upstream-pool 8 --upstream-spare 2",
            &["--upstream-pool=8", "--upstream-spare=2"],
        ),
    ];
    let mut cold: Vec<Vec<Duration>> = vec![Vec::new(); modes.len()];
    let mut warm: Vec<Vec<Duration>> = vec![Vec::new(); modes.len()];
    let mut seq = 0u64;
    for _ in 0..args.runs {
        // Every mode once per round, so neighbours' load hits them alike.
        for (i, (_, flags)) in modes.iter().enumerate() {
            let proxy = start_proxy(far, flags);
            for s in 0..args.sessions {
                seq += 1;
                let took = session(&proxy, seq);
                if s == 0 {
                    cold[i].push(took);
                } else {
                    warm[i].push(took);
                }
            }
        }
    }
    println!(
        "time to first answer of a new session, {} ms emulated round trip, {} runs x {} sessions",
        args.rtt.as_millis(),
        args.runs,
        args.sessions
    );
    println!("| mode | first session (median ms) | later sessions (median ms) |");
    println!("|---|---:|---:|");
    for (i, (name, _)) in modes.iter().enumerate() {
        println!(
            "| {name} | {:.1} | {:.1} |",
            median(cold[i].clone()),
            median(warm[i].clone())
        );
    }
}

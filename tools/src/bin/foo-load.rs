//! foo-load: closed-loop, pipelined load against any Foo endpoint. Every
//! connection keeps `--depth` REQs in flight and sends a new one per answer;
//! reads and writes are batched so that one thread outruns the proxy.

#![forbid(unsafe_code)]
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io;
use std::net::{SocketAddr, TcpStream as StdStream};
use std::process::ExitCode;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

use foo_proxy::cli::{self, CliError, Flags};
use foo_proxy::net::{self, Io, describe};
use foo_tools::hist::Histogram;
use foo_tools::proto::{self, Kind, push_msg, show};
use foo_tools::rng::Rng;
use foo_tools::wire::{Filled, LineReader, Outbox};

const USAGE: &str = "\
foo-load: closed-loop, pipelined load against a Foo server or proxy

USAGE:
    foo-load [FLAGS]

    --target ADDR        where to send REQs          [default localhost:8001]
    --connections N      connections                  [default 16]
    --depth N            REQs in flight per connection [default 16]
    --duration DUR       how long to measure          [default 5s]
    --requests N         REQs per connection, then stop [default: no limit]
    --size BYTES         data bytes per REQ           [default 32]
    --threads N          event loops, connections shared out [default 1]
    --per-connection N   REQs per connection: once all are answered it
                         is closed and a new one opened (churn) [default
                         0: never; not with --requests]
    --json               print one JSON object instead of text
    -h, --help           print this help

Latency is per request, from the write that carried it to the read that
brought its answer. Errors are answers with the wrong type or seq, and
connections lost during the run. With --requests the run ends once every
connection has sent its N REQs and had their answers (or at --duration):
a fixed amount of work, e.g. to count instructions per message. At the end no new REQ is sent and the ones
in flight get up to 5 s for their answers; --json counts them in sent,
ack_all and nak_all, and the connections opened in `opened`.
";

/// How long the REQs in flight at the deadline may take to be answered.
const DRAIN_WAIT: Duration = Duration::from_secs(5);

struct Config {
    target: Vec<SocketAddr>,
    target_spec: String,
    connections: usize,
    depth: usize,
    duration: Duration,
    /// REQs per connection (`--requests`); `u64::MAX` when not limited.
    requests: u64,
    size: usize,
    threads: usize,
    /// REQs per connection before it is replaced; 0: never.
    per_connection: u64,
    json: bool,
}

fn parse_args(args: Vec<OsString>) -> Result<Option<Config>, CliError> {
    let flags = Flags::parse(
        args,
        &[
            "target",
            "connections",
            "depth",
            "duration",
            "requests",
            "size",
            "threads",
            "per-connection",
        ],
        &["json"],
    )?;
    if flags.switch("help") {
        return Ok(None);
    }
    let json = flags.switch("json");
    // Every value given is checked, as Go's flag package does.
    flags.parse_or("target", (), |v| cli::resolve(v, "localhost").map(drop))?;
    let target_spec = flags.value("target").unwrap_or("localhost:8001").to_owned();
    let target = cli::resolve(&target_spec, "localhost")
        .map_err(|why| cli::invalid("target", &target_spec, why))?;
    let range = |min: usize, max: usize| {
        move |v: &str| {
            cli::parse_count(v)
                .and_then(|n| usize::try_from(n).ok())
                .filter(|n| (min..=max).contains(n))
                .ok_or_else(|| format!("expected {min} to {max}"))
        }
    };
    let connections = flags.parse_or("connections", 16, range(1, 50_000))?;
    let depth = flags.parse_or("depth", 16, range(1, 100_000))?;
    let size = flags.parse_or("size", 32, range(0, 60_000))?;
    let threads = flags.parse_or("threads", 1, range(1, 64))?;
    let per_connection = flags.parse_or("per-connection", 0, range(0, usize::MAX))? as u64;
    let duration = flags.parse_or("duration", Duration::from_secs(5), cli::parse_duration)?;
    let requests = flags.parse_or("requests", u64::MAX, |v| {
        cli::parse_count(v)
            .filter(|&n| n >= 1)
            .ok_or_else(|| "expected a count of at least 1".to_string())
    })?;
    if per_connection != 0 && requests != u64::MAX {
        let why = "cannot be combined with --requests".to_string();
        return Err(cli::invalid(
            "per-connection",
            &per_connection.to_string(),
            why,
        ));
    }
    Ok(Some(Config {
        target,
        target_spec,
        connections,
        depth,
        duration,
        requests,
        size,
        threads: threads.min(connections),
        per_connection,
        json,
    }))
}

/// What one event loop measured.
#[derive(Default)]
struct Tally {
    latency: Histogram,
    ack: u64,
    nak: u64,
    /// Over the whole run, the wait for the last answers included.
    sent: u64,
    ack_all: u64,
    nak_all: u64,
    errors: u64,
    first_error: Option<String>,
    /// Connections opened, replacements included.
    opened: u64,
}

impl Tally {
    fn error(&mut self, what: String) {
        self.errors += 1;
        self.first_error.get_or_insert(what);
    }

    fn merge(&mut self, other: Tally) {
        self.latency.merge(&other.latency);
        self.ack += other.ack;
        self.sent += other.sent;
        self.ack_all += other.ack_all;
        self.nak_all += other.nak_all;
        self.nak += other.nak;
        self.errors += other.errors;
        self.opened += other.opened;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }
}

struct Conn {
    stream: TcpStream,
    lines: LineReader,
    out: Outbox,
    data: Vec<u8>,
    /// When each REQ in flight was written, oldest first.
    sent_at: VecDeque<Instant>,
    next_seq: u64,
    alive: bool,
}

/// What a connection needs after [`Conn::drive`].
enum Next {
    Wait,
    /// Its `--per-connection` REQs are all answered: replace it.
    Replace,
}

impl Conn {
    /// Reads every answer available, then refills the pipeline in one write.
    fn drive(
        &mut self,
        config: &Config,
        deadline: Instant,
        tally: &mut Tally,
    ) -> Result<Next, String> {
        loop {
            let filled = self
                .lines
                .fill(&mut self.stream)
                .map_err(|e| format!("read failed: {}", describe(&e)))?;
            let now = Instant::now();
            while let Some(line) = self.lines.next_line() {
                let expected = self.next_seq - self.sent_at.len() as u64;
                let sent = match proto::parse(line) {
                    Some(m) if m.kind != Kind::Req && m.seq == expected => {
                        self.sent_at.pop_front().map(|sent| (sent, m.kind))
                    }
                    _ => None,
                };
                let Some((sent, kind)) = sent else {
                    return Err(format!(
                        "expected ACK or NAK with seq {expected}, got {}",
                        show(line)
                    ));
                };
                match kind {
                    Kind::Ack => tally.ack_all += 1,
                    _ => tally.nak_all += 1,
                }
                // Answers after the deadline fall outside the measured window.
                if now <= deadline {
                    match kind {
                        Kind::Ack => tally.ack += 1,
                        _ => tally.nak += 1,
                    }
                    let ns = now.duration_since(sent).as_nanos();
                    tally.latency.record(u64::try_from(ns).unwrap_or(u64::MAX));
                }
            }
            match filled {
                Filled::Bytes(_) => continue,
                Filled::Eof => return Err("the server closed the connection".into()),
                Filled::WouldBlock => break,
            }
        }
        // Seqs start at 1, so next_seq - 1 REQs went out on this connection.
        let done = self.next_seq - 1;
        if config.per_connection != 0 && done >= config.per_connection && self.sent_at.is_empty() {
            return Ok(Next::Replace);
        }
        let now = Instant::now();
        if now < deadline {
            while self.sent_at.len() < config.depth
                && self.next_seq <= config.requests
                && (config.per_connection == 0 || self.next_seq <= config.per_connection)
            {
                push_msg(&mut self.out.buf, Kind::Req, self.next_seq, &self.data);
                self.next_seq += 1;
                self.sent_at.push_back(now);
                tally.sent += 1;
            }
        }
        self.out
            .flush(&mut self.stream, None)
            .map_err(|e| format!("write failed: {}", describe(&e)))?;
        Ok(Next::Wait)
    }
}

fn connect(config: &Config) -> Result<TcpStream, String> {
    let mut last = None;
    for addr in &config.target {
        match StdStream::connect_timeout(addr, Duration::from_secs(5)) {
            Ok(s) => {
                s.set_nonblocking(true)
                    .map_err(|e| format!("cannot make the socket non-blocking: {e}"))?;
                let _ = s.set_nodelay(true);
                return Ok(TcpStream::from_std(s));
            }
            Err(e) => last = Some(e),
        }
    }
    Err(format!(
        "cannot connect to {}: {}",
        config.target_spec,
        last.map_or_else(|| "no address".to_string(), |e| describe(&e))
    ))
}

/// One event loop over `count` connections; all loops start together.
fn worker(config: &Config, index: usize, count: usize, start: &Barrier) -> Result<Tally, String> {
    let io_err = |what: &str, e: io::Error| format!("cannot {what}: {}", describe(&e));
    let poll = Poll::new().map_err(|e| io_err("create poll", e));
    let open = |poll: &Poll, i: usize| -> Result<TcpStream, String> {
        let mut stream = connect(config)?;
        poll.registry()
            .register(
                &mut stream,
                Token(i),
                Interest::READABLE | Interest::WRITABLE,
            )
            .map_err(|e| io_err("register the socket", e))?;
        Ok(stream)
    };
    let conns: Result<Vec<Conn>, String> = poll.as_ref().map_err(Clone::clone).and_then(|poll| {
        (0..count)
            .map(|i| {
                let stream = open(poll, i)?;
                let mut data = Vec::with_capacity(config.size);
                Rng::stream(index as u64, i as u64).push_alnum(&mut data, config.size);
                Ok(Conn {
                    stream,
                    lines: LineReader::new(64 * 1024),
                    out: Outbox::default(),
                    data,
                    sent_at: VecDeque::with_capacity(config.depth),
                    next_seq: 1,
                    alive: true,
                })
            })
            .collect()
    });
    // Every thread reaches the barrier, even one that failed to connect.
    start.wait();
    let (mut poll, mut conns) = (poll?, conns?);
    let deadline = Instant::now() + config.duration;
    let mut tally = Tally {
        opened: count as u64,
        ..Tally::default()
    };
    // Drives a connection until it waits; a finished one is replaced by a
    // new one under the same token (the old one is closed by dropping it,
    // after every answer it was owed arrived).
    let step = |poll: &Poll, i: usize, conn: &mut Conn, tally: &mut Tally| loop {
        match conn.drive(config, deadline, tally) {
            Ok(Next::Wait) => return,
            Ok(Next::Replace) if Instant::now() >= deadline => return,
            Ok(Next::Replace) => {
                let _ = poll.registry().deregister(&mut conn.stream);
                match open(poll, i) {
                    Ok(stream) => {
                        conn.stream = stream;
                        conn.lines = LineReader::new(64 * 1024);
                        conn.out = Outbox::default();
                        conn.next_seq = 1;
                        tally.opened += 1;
                    }
                    Err(e) => {
                        tally.error(format!("connection {}: {e}", i + 1));
                        conn.alive = false;
                        return;
                    }
                }
            }
            Err(e) => {
                tally.error(format!("connection {}: {e}", i + 1));
                conn.alive = false;
                let _ = poll.registry().deregister(&mut conn.stream);
                return;
            }
        }
    };
    for (i, conn) in conns.iter_mut().enumerate() {
        step(&poll, i, conn, &mut tally);
    }
    let mut events = Events::with_capacity(1024);
    // After the deadline no REQ is sent; the ones in flight get their
    // answers (bounded), so nothing is cut off mid-conversation.
    let drained_by = deadline + DRAIN_WAIT;
    loop {
        let now = Instant::now();
        let in_flight = conns.iter().any(|c| c.alive && !c.sent_at.is_empty());
        let all_sent = conns
            .iter()
            .all(|c| !c.alive || c.next_seq > config.requests);
        if now >= drained_by || ((now >= deadline || all_sent) && !in_flight) {
            break;
        }
        let until = if now < deadline { deadline } else { drained_by };
        if let Io::Failed(e) = net::io(|| poll.poll(&mut events, Some(until - now))) {
            return Err(io_err("poll", e));
        }
        for event in events.iter() {
            let i = event.token().0;
            let Some(conn) = conns.get_mut(i).filter(|c| c.alive) else {
                continue;
            };
            step(&poll, i, conn, &mut tally);
        }
    }
    Ok(tally)
}

fn run(config: &Config) -> Result<Tally, String> {
    let start = Arc::new(Barrier::new(config.threads));
    let tallies: Vec<Result<Tally, String>> = thread::scope(|scope| {
        let handles: Vec<_> = (0..config.threads)
            .map(|t| {
                let share = config.connections / config.threads
                    + usize::from(t < config.connections % config.threads);
                let start = Arc::clone(&start);
                scope.spawn(move || worker(config, t, share, &start))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("a load thread panicked".into()))
            })
            .collect()
    });
    let mut total = Tally::default();
    for tally in tallies {
        total.merge(tally?);
    }
    Ok(total)
}

/// `850ns`, `312us`, `4.20ms`, `1.50s`.
fn fmt_ns(ns: u64) -> String {
    match ns {
        0..1_000 => format!("{ns}ns"),
        1_000..1_000_000 => format!("{}us", ns / 1_000),
        1_000_000..1_000_000_000 => format!("{:.2}ms", ns as f64 / 1e6),
        _ => format!("{:.2}s", ns as f64 / 1e9),
    }
}

fn report(config: &Config, tally: &Tally, window: Duration) -> String {
    let answers = tally.ack + tally.nak;
    let rate = answers as f64 / window.as_secs_f64();
    let h = &tally.latency;
    let us = |q: f64| h.quantile(q) as f64 / 1_000.0;
    if config.json {
        return serde_json::json!({
            "target": config.target_spec,
            "connections": config.connections,
            "depth": config.depth,
            "duration_secs": window.as_secs_f64(),
            "size": config.size,
            "threads": config.threads,
            "per_connection": config.per_connection,
            "opened": tally.opened,
            "requests_per_sec": rate.round(),
            "answers": answers,
            "ack": tally.ack,
            "nak": tally.nak,
            "sent": tally.sent,
            "ack_all": tally.ack_all,
            "nak_all": tally.nak_all,
            "errors": tally.errors,
            "first_error": tally.first_error,
            "latency_us": {
                "p50": us(0.5),
                "p90": us(0.9),
                "p99": us(0.99),
                "p99_9": us(0.999),
                "max": h.max() as f64 / 1_000.0,
            },
        })
        .to_string();
    }
    let mut text = format!(
        "target       {} ({} connections x depth {}, {}-byte data, {} thread(s), {:?})\n\
         requests/s   {:.0}\n\
         answers      {} (ACK {}, NAK {})\n\
         errors       {}\n\
         latency      p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
        config.target_spec,
        config.connections,
        config.depth,
        config.size,
        config.threads,
        window,
        rate,
        answers,
        tally.ack,
        tally.nak,
        tally.errors,
        fmt_ns(h.quantile(0.5)),
        fmt_ns(h.quantile(0.9)),
        fmt_ns(h.quantile(0.99)),
        fmt_ns(h.quantile(0.999)),
        fmt_ns(h.max()),
    );
    if config.per_connection != 0 {
        text.push_str(&format!("\nconnections  {} opened", tally.opened));
    }
    if let Some(e) = &tally.first_error {
        text.push_str(&format!("\nfirst error  {e}"));
    }
    text
}

fn main() -> ExitCode {
    let config = match foo_tools::parse_or_exit("foo-load", USAGE, parse_args) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let started = Instant::now();
    match run(&config) {
        Ok(tally) => {
            // A run cut short by --requests measured for as long as it ran.
            let window = config.duration.min(started.elapsed());
            println!("{}", report(&config, &tally, window));
            if tally.errors == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("foo-load: {e}");
            ExitCode::from(1)
        }
    }
}

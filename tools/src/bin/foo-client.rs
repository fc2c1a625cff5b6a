//! foo-client: a checking Foo client, after the reference driver. Sends
//! `-n` REQs on each of `-c` connections with 1 to 4 in flight, checks every
//! answer's type and seq, prints a dot per 10 answers and `OK!` at the end.

#![forbid(unsafe_code)]
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::ffi::OsString;
use std::io::{self, Write};
use std::net::{SocketAddr, TcpStream as StdStream};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

use foo_proxy::cli::{self, CliError, Flags};
use foo_proxy::net::{self, Io, describe};
use foo_tools::proto::{self, Kind, push_msg, show};
use foo_tools::rng::{Rng, parse_seed, seed_from_clock};
use foo_tools::wire::{Filled, LineReader, Outbox};

const USAGE: &str = "\
foo-client: a checking Foo client for trying foo-proxy

USAGE:
    foo-client [FLAGS]

    -connect ADDR     the Foo server or proxy          [default localhost:8001]
    -n N              requests per connection           [default 100]
    -c N              parallel connections              [default 1]
    --seed N          seed for data and split points    [default: clock]
    --no-fragment     write each batch of requests whole
    --timeout DUR     give up after this long without an answer [default 10s]
    -h, --help        print this help

Exits 0 only when every answer was ACK or NAK with the expected seq;
otherwise names the first mismatch on stderr and exits 1.
";

/// Most REQs in flight per connection; each window is drawn from 1..=this.
const MAX_IN_FLIGHT: u64 = 4;

struct Config {
    connect: Vec<SocketAddr>,
    connect_spec: String,
    requests: u64,
    connections: usize,
    seed: u64,
    fragment: bool,
    timeout: Duration,
}

fn parse_args(args: Vec<OsString>) -> Result<Option<Config>, CliError> {
    let flags = Flags::parse(
        args,
        &["connect", "n", "c", "seed", "timeout"],
        &["no-fragment"],
    )?;
    if flags.switch("help") {
        return Ok(None);
    }
    let fragment = !flags.switch("no-fragment");
    // Every value given is checked, as Go's flag package does.
    flags.parse_or("connect", (), |v| cli::resolve(v, "localhost").map(drop))?;
    let connect_spec = flags
        .value("connect")
        .unwrap_or("localhost:8001")
        .to_owned();
    let connect = cli::resolve(&connect_spec, "localhost")
        .map_err(|why| cli::invalid("connect", &connect_spec, why))?;
    let above_zero = |v: &str| {
        cli::parse_count(v)
            .filter(|n| *n > 0)
            .ok_or_else(|| "expected a whole number above 0".to_string())
    };
    let requests = flags.parse_or("n", 100, above_zero)?;
    let connections = flags.parse_or("c", 1, |v| {
        usize::try_from(above_zero(v)?)
            .ok()
            .filter(|c| *c <= 100_000)
            .ok_or_else(|| "at most 100000".to_string())
    })?;
    let seed = flags.parse_or("seed", None, parse_seed)?;
    let seed = seed.unwrap_or_else(seed_from_clock);
    let timeout = flags.parse_or("timeout", Duration::from_secs(10), cli::parse_duration)?;
    Ok(Some(Config {
        connect,
        connect_spec,
        requests,
        connections,
        seed,
        fragment,
        timeout,
    }))
}

/// One connection: its socket, buffers and the conversation state.
struct Conn {
    stream: TcpStream,
    lines: LineReader,
    out: Outbox,
    talk: Talk,
    done: bool,
}

/// What one connection has sent and expects next. No I/O.
struct Talk {
    id: usize,
    rng: Rng,
    /// Seq of the next REQ to send; seqs run from 1 to `-n`.
    next_seq: u64,
    /// Seq the next answer must carry.
    expected: u64,
    /// REQs allowed in flight until the next answer.
    window: u64,
}

/// Answers checked so far, shown as dots on stdout.
struct Progress {
    answered: u64,
    dots: u64,
}

impl Progress {
    fn answer(&mut self) {
        self.answered += 1;
        if self.answered.is_multiple_of(10) {
            self.dots += 1;
            let mut out = io::stdout().lock();
            let _ = out.write_all(b".").and_then(|()| out.flush());
        }
    }
}

impl Talk {
    /// An I/O failure, with how far the conversation got.
    fn io_error(&self, e: &io::Error, requests: u64) -> String {
        format!(
            "connection {}: {} after {} of {requests} answers",
            self.id,
            describe(e),
            self.expected - 1
        )
    }

    /// Queues REQs until the window is full or all `requests` are sent.
    fn top_up(&mut self, out: &mut Vec<u8>, requests: u64) {
        let mut data = Vec::with_capacity(32);
        while self.next_seq <= requests && self.next_seq - self.expected < self.window {
            data.clear();
            let len = self.rng.range(4, 24) as usize;
            self.rng.push_alnum(&mut data, len);
            push_msg(out, Kind::Req, self.next_seq, &data);
            self.next_seq += 1;
        }
    }

    /// Checks one answer; the error names the mismatch.
    fn check(&mut self, line: &[u8]) -> Result<(), String> {
        if self.expected >= self.next_seq {
            return Err(format!(
                "connection {}: got {} with no REQ in flight",
                self.id,
                show(line)
            ));
        }
        match proto::parse(line) {
            Some(m) if m.kind != Kind::Req && m.seq == self.expected => {
                self.expected += 1;
                self.window = self.rng.range(1, MAX_IN_FLIGHT);
                Ok(())
            }
            _ => Err(format!(
                "connection {}: expected ACK or NAK with seq {}, got {}",
                self.id,
                self.expected,
                show(line)
            )),
        }
    }
}

impl Conn {
    /// Reads and checks answers, then sends more REQs, until the socket blocks.
    fn drive(&mut self, config: &Config, progress: &mut Progress) -> Result<bool, String> {
        let id = self.talk.id;
        let mut progressed = false;
        loop {
            let filled = self
                .lines
                .fill(&mut self.stream)
                .map_err(|e| self.talk.io_error(&e, config.requests))?;
            while let Some(line) = self.lines.next_line() {
                self.talk.check(line)?;
                progress.answer();
                progressed = true;
            }
            if self.talk.expected > config.requests {
                self.done = true;
                return Ok(true);
            }
            match filled {
                Filled::Bytes(_) => continue,
                Filled::Eof => {
                    return Err(format!(
                        "connection {id}: server closed the connection after {} of {} answers",
                        self.talk.expected - 1,
                        config.requests
                    ));
                }
                Filled::WouldBlock => break,
            }
        }
        self.talk.top_up(&mut self.out.buf, config.requests);
        let split = config.fragment.then_some(&mut self.talk.rng);
        self.out
            .flush(&mut self.stream, split)
            .map_err(|e| self.talk.io_error(&e, config.requests))?;
        Ok(progressed)
    }
}

fn connect(config: &Config) -> Result<StdStream, String> {
    let mut last = None;
    for addr in &config.connect {
        match StdStream::connect_timeout(addr, config.timeout) {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
    }
    Err(format!(
        "cannot connect to {}: {}",
        config.connect_spec,
        last.map_or_else(|| "no address".to_string(), |e| describe(&e))
    ))
}

fn run(config: &Config, progress: &mut Progress) -> Result<(), String> {
    let io_err = |what: &str, e: io::Error| format!("cannot {what}: {}", describe(&e));
    let mut poll = Poll::new().map_err(|e| io_err("create poll", e))?;
    let mut conns = Vec::with_capacity(config.connections);
    for i in 0..config.connections {
        let std = connect(config)?;
        std.set_nonblocking(true)
            .map_err(|e| io_err("make the socket non-blocking", e))?;
        let _ = std.set_nodelay(true);
        let mut stream = TcpStream::from_std(std);
        poll.registry()
            .register(
                &mut stream,
                Token(i),
                Interest::READABLE | Interest::WRITABLE,
            )
            .map_err(|e| io_err("register the socket", e))?;
        let mut rng = Rng::stream(config.seed, i as u64);
        let window = rng.range(1, MAX_IN_FLIGHT);
        conns.push(Conn {
            stream,
            lines: LineReader::new(4096),
            out: Outbox::default(),
            talk: Talk {
                id: i + 1,
                rng,
                next_seq: 1,
                expected: 1,
                window,
            },
            done: false,
        });
    }
    for conn in &mut conns {
        conn.drive(config, progress)?;
    }
    let mut remaining = conns.iter().filter(|c| !c.done).count();
    let mut events = Events::with_capacity(1024);
    let mut last_progress = Instant::now();
    while remaining > 0 {
        let deadline = last_progress + config.timeout;
        let now = Instant::now();
        if now >= deadline {
            let stuck = conns.iter().find(|c| !c.done);
            return Err(match stuck {
                Some(c) => format!(
                    "connection {}: no answer to REQ {} within {:?}",
                    c.talk.id, c.talk.expected, config.timeout
                ),
                None => "timed out".into(),
            });
        }
        if let Io::Failed(e) = net::io(|| poll.poll(&mut events, Some(deadline - now))) {
            return Err(io_err("poll", e));
        }
        for event in events.iter() {
            let Some(conn) = conns.get_mut(event.token().0) else {
                continue;
            };
            if conn.done {
                continue;
            }
            if conn.drive(config, progress)? {
                last_progress = Instant::now();
            }
            if conn.done {
                remaining -= 1;
                let _ = poll.registry().deregister(&mut conn.stream);
                let _ = conn.stream.shutdown(std::net::Shutdown::Both);
            }
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let config = match foo_tools::parse_or_exit("foo-client", USAGE, parse_args) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let mut progress = Progress {
        answered: 0,
        dots: 0,
    };
    match run(&config, &mut progress) {
        Ok(()) => {
            println!("OK!");
            ExitCode::SUCCESS
        }
        Err(e) => {
            if progress.dots > 0 {
                println!();
            }
            eprintln!("foo-client: FAIL: {e}");
            ExitCode::from(1)
        }
    }
}

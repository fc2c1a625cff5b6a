//! foo-server: a Foo server for trying the proxy, after the reference driver.
//! Answers every line (a last one without a newline once the client closes),
//! splits its writes at random points, and closes its
//! side once the client has closed and every answer is out.

#![forbid(unsafe_code)]
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::ffi::OsString;
use std::io;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use slab::Slab;

use foo_proxy::cli::{self, CliError, Flags};
use foo_proxy::logging::{self, Level};
use foo_proxy::net::{self, Io, describe};
use foo_tools::proto::push_answer;
use foo_tools::rng::{Rng, parse_seed, seed_from_clock};
use foo_tools::wire::{Filled, LineReader, Outbox};
use log::{debug, error, info, warn};

const USAGE: &str = "\
foo-server: a Foo server for trying foo-proxy

USAGE:
    foo-server [FLAGS]

    -listen ADDR        where clients connect              [default :8001]
    --seed N            seed for NAKs, data and split points [default: clock]
    --no-fragment       write each batch of answers whole
    --delay-ms MS       hold every answer this long        [default 0]
    --log-level LEVEL   error, warn, info or debug         [default info]
    -h, --help          print this help

Every well-formed REQ gets ACK (or NAK, about 1 in 8) with its seq and 32 hex
characters; any other line gets `NAK 0 ERRDECODE`.
";

const LISTENER: Token = Token(0);
const CONN_BASE: usize = 1;
/// Stop reading from a client whose unsent answers exceed this.
const OUT_HIGH: usize = 1 << 20;
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// mio's 128 drops SYNs when a proxy opens hundreds of upstream connections
/// at once, and each dropped one waits a second for its retransmit.
const LISTEN_BACKLOG: i32 = 4096;

struct Config {
    listen: SocketAddr,
    seed: u64,
    fragment: bool,
    delay: Duration,
    log_level: Level,
}

fn parse_args(args: Vec<OsString>) -> Result<Option<Config>, CliError> {
    let flags = Flags::parse(
        args,
        &["listen", "seed", "delay-ms", "log-level"],
        &["no-fragment"],
    )?;
    if flags.switch("help") {
        return Ok(None);
    }
    let fragment = !flags.switch("no-fragment");
    // Every value given is checked, as Go's flag package does.
    flags.parse_or("listen", (), |v| cli::resolve(v, "0.0.0.0").map(drop))?;
    let listen = flags.value("listen").unwrap_or(":8001");
    let listen_addr = cli::resolve(listen, "0.0.0.0")
        .and_then(|addrs| {
            addrs
                .into_iter()
                .next()
                .ok_or_else(|| "resolves to no address".to_string())
        })
        .map_err(|why| cli::invalid("listen", listen, why))?;
    let seed = flags.parse_or("seed", None, parse_seed)?;
    let seed = seed.unwrap_or_else(seed_from_clock);
    let delay = flags.parse_or("delay-ms", Duration::ZERO, |v| {
        cli::parse_count(v)
            .map(Duration::from_millis)
            .ok_or_else(|| "expected milliseconds".to_string())
    })?;
    let log_level = flags.parse_or("log-level", Level::Info, |v| {
        Level::parse(v).ok_or_else(|| "expected error, warn, info or debug".to_string())
    })?;
    Ok(Some(Config {
        listen: listen_addr,
        seed,
        fragment,
        delay,
        log_level,
    }))
}

struct Conn {
    stream: TcpStream,
    lines: LineReader,
    out: Outbox,
    rng: Rng,
    /// Answers held back by `--delay-ms`, with the time they are due.
    held: VecDeque<(Instant, Vec<u8>)>,
    read_closed: bool,
}

/// Whether a connection lives on after being driven.
enum Drive {
    Continue,
    Close,
}

struct Server {
    config: Config,
    poll: Poll,
    listener: TcpListener,
    conns: Slab<Conn>,
    /// Due times of held answers, by connection key (may be stale).
    timers: BinaryHeap<Reverse<(Instant, usize)>>,
    accepted: u64,
    accept_paused_until: Option<Instant>,
}

impl Server {
    fn bind(config: Config) -> Result<Server, String> {
        let poll = Poll::new().map_err(|e| format!("cannot create poll: {}", describe(&e)))?;
        let mut listener = net::listen(config.listen, LISTEN_BACKLOG)
            .map_err(|e| format!("cannot listen on {}: {}", config.listen, describe(&e)))?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)
            .map_err(|e| format!("cannot register listener: {}", describe(&e)))?;
        Ok(Server {
            config,
            poll,
            listener,
            conns: Slab::new(),
            timers: BinaryHeap::new(),
            accepted: 0,
            accept_paused_until: None,
        })
    }

    fn run(&mut self) -> io::Result<()> {
        info!(
            "foo-server listening on {} (seed {}{}{})",
            self.listener.local_addr()?,
            self.config.seed,
            if self.config.fragment {
                ""
            } else {
                ", no fragmenting"
            },
            if self.config.delay.is_zero() {
                String::new()
            } else {
                format!(", delay {:?}", self.config.delay)
            }
        );
        let mut events = Events::with_capacity(1024);
        loop {
            let now = Instant::now();
            let next = [
                self.timers.peek().map(|Reverse((t, _))| *t),
                self.accept_paused_until,
            ]
            .into_iter()
            .flatten()
            .min();
            let timeout = next.map(|t| t.saturating_duration_since(now) + Duration::from_millis(1));
            if let Io::Failed(e) = net::io(|| self.poll.poll(&mut events, timeout)) {
                return Err(e);
            }
            let now = Instant::now();
            let mut accept = self.accept_paused_until.is_some_and(|t| t <= now);
            for event in events.iter() {
                match event.token() {
                    LISTENER => accept = true,
                    Token(t) => self.drive(t.wrapping_sub(CONN_BASE), now),
                }
            }
            while let Some(Reverse((due, key))) = self.timers.peek().copied() {
                if due > now {
                    break;
                }
                self.timers.pop();
                self.drive(key, now);
            }
            if accept {
                self.accept(now);
            }
        }
    }

    fn accept(&mut self, now: Instant) {
        self.accept_paused_until = None;
        loop {
            match net::io(|| self.listener.accept()) {
                Io::Done((mut stream, peer)) => {
                    // Split writes should reach the peer as separate segments.
                    let _ = stream.set_nodelay(true);
                    let entry = self.conns.vacant_entry();
                    let token = Token(CONN_BASE + entry.key());
                    if let Err(e) = self.poll.registry().register(
                        &mut stream,
                        token,
                        Interest::READABLE | Interest::WRITABLE,
                    ) {
                        warn!("cannot register connection from {peer}: {}", describe(&e));
                        continue;
                    }
                    self.accepted += 1;
                    debug!("connection {} from {peer}", self.accepted);
                    entry.insert(Conn {
                        stream,
                        lines: LineReader::new(4096),
                        out: Outbox::default(),
                        rng: Rng::stream(self.config.seed, self.accepted),
                        held: VecDeque::new(),
                        read_closed: false,
                    });
                }
                Io::WouldBlock => return,
                Io::Failed(e) => {
                    warn!("cannot accept: {}; pausing accepts briefly", describe(&e));
                    self.accept_paused_until = Some(now + ACCEPT_BACKOFF);
                    return;
                }
            }
        }
    }

    fn drive(&mut self, key: usize, now: Instant) {
        let delay = self.config.delay;
        let fragment = self.config.fragment;
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let result = conn.drive(now, delay, fragment);
        if let Some(due) = conn.held.front().map(|(t, _)| *t)
            && due > now
        {
            self.timers.push(Reverse((due, key)));
        }
        match result {
            Ok(Drive::Continue) => {}
            Ok(Drive::Close) => self.close(key, None),
            Err(e) => self.close(key, Some(e)),
        }
    }

    fn close(&mut self, key: usize, err: Option<io::Error>) {
        if let Some(mut conn) = self.conns.try_remove(key) {
            let _ = self.poll.registry().deregister(&mut conn.stream);
            match err {
                Some(e) => debug!("connection closed on error: {}", describe(&e)),
                None => debug!("connection closed after the client closed"),
            }
        }
    }
}

impl Conn {
    /// Reads, answers and writes until the socket blocks both ways.
    fn drive(&mut self, now: Instant, delay: Duration, fragment: bool) -> io::Result<Drive> {
        loop {
            let mut progressed = false;
            if !self.read_closed && self.out.pending() < OUT_HIGH {
                match self.lines.fill(&mut self.stream)? {
                    Filled::Bytes(_) => progressed = true,
                    Filled::Eof => self.read_closed = true,
                    Filled::WouldBlock => {}
                }
                while let Some(line) = self.lines.next_line() {
                    answer(
                        line,
                        &mut self.out.buf,
                        &mut self.held,
                        &mut self.rng,
                        now,
                        delay,
                    );
                }
                // Like the reference server, a last line without a newline
                // is answered once the client has closed its side.
                if self.read_closed
                    && let Some(line) = self.lines.take_rest()
                {
                    answer(
                        line,
                        &mut self.out.buf,
                        &mut self.held,
                        &mut self.rng,
                        now,
                        delay,
                    );
                }
            }
            while let Some((due, answer)) = self.held.front() {
                if *due > now {
                    break;
                }
                self.out.buf.extend_from_slice(answer);
                self.held.pop_front();
            }
            let rng = fragment.then_some(&mut self.rng);
            let drained = self.out.flush(&mut self.stream, rng)?;
            if self.read_closed && drained && self.held.is_empty() {
                return Ok(Drive::Close);
            }
            if !progressed {
                return Ok(Drive::Continue);
            }
        }
    }
}

/// Queues the answer to `line`: into `out` at once, or held for `delay`.
fn answer(
    line: &[u8],
    out: &mut Vec<u8>,
    held: &mut VecDeque<(Instant, Vec<u8>)>,
    rng: &mut Rng,
    now: Instant,
    delay: Duration,
) {
    if delay.is_zero() {
        push_answer(out, line, rng);
    } else {
        let mut answer = Vec::with_capacity(48);
        push_answer(&mut answer, line, rng);
        held.push_back((now + delay, answer));
    }
}

fn main() -> ExitCode {
    let config = match foo_tools::parse_or_exit("foo-server", USAGE, parse_args) {
        Ok(c) => c,
        Err(code) => return code,
    };
    logging::init(config.log_level, logging::LogFormat::Text);
    let mut server = match Server::bind(config) {
        Ok(server) => server,
        Err(e) => {
            error!("{e}");
            foo_proxy::output::flush(std::time::Duration::from_secs(1));
            return ExitCode::from(1);
        }
    };
    let code = match server.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("event loop failed: {}", describe(&e));
            ExitCode::from(1)
        }
    };
    foo_proxy::output::flush(std::time::Duration::from_secs(1));
    code
}

//! Stdout and stderr that never block the event loop: one writer thread per
//! stream, fed by a bounded queue of whole lines.
//!
//! The loop (or any thread) only does a non-blocking `try_send`; when a
//! reader stops reading and the queue fills, the line is dropped and counted
//! ([`reports_dropped`], [`log_lines_dropped`]) and output resumes as soon as
//! the reader reads again. The writer writes whole lines only, so a report is
//! never torn. The inherited descriptors stay blocking: `O_NONBLOCK` would be
//! shared with the parent's terminal.

use std::io::{self, Write};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::thread;
use std::time::{Duration, Instant};

/// Report lines queued for stdout; a report is about 700 bytes.
pub const REPORT_QUEUE: usize = 64;
/// Log lines queued for stderr.
pub const LOG_QUEUE: usize = 1024;
/// Most bytes one `write` of a batch of queued lines carries.
const BATCH_BYTES: usize = 64 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stream {
    Stdout,
    Stderr,
}

/// One stream's queue and its counts.
struct Sink {
    /// `None` when the writer thread could not be started.
    tx: Option<SyncSender<String>>,
    /// Lines accepted into the queue.
    queued: AtomicU64,
    /// Lines the writer has finished with (written or failed).
    done: AtomicU64,
    /// Lines dropped: queue full, no writer, or the write failed.
    dropped: AtomicU64,
}

static STDOUT: OnceLock<Sink> = OnceLock::new();
static STDERR: OnceLock<Sink> = OnceLock::new();

fn sink(stream: Stream) -> &'static Sink {
    let (cell, capacity) = match stream {
        Stream::Stdout => (&STDOUT, REPORT_QUEUE),
        Stream::Stderr => (&STDERR, LOG_QUEUE),
    };
    cell.get_or_init(|| Sink::start(stream, capacity))
}

impl Sink {
    fn start(stream: Stream, capacity: usize) -> Sink {
        let (tx, rx) = mpsc::sync_channel(capacity);
        let name = match stream {
            Stream::Stdout => "stdout-writer",
            Stream::Stderr => "stderr-writer",
        };
        let spawned = thread::Builder::new()
            .name(name.into())
            .stack_size(64 * 1024)
            .spawn(move || run_writer(stream, rx));
        Sink {
            tx: spawned.ok().map(|_| tx),
            queued: AtomicU64::new(0),
            done: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        }
    }

    /// Queues `line` (which ends in `\n`) or counts it dropped; never blocks.
    fn push(&self, line: String) -> bool {
        let sent = match &self.tx {
            Some(tx) => match tx.try_send(line) {
                Ok(()) => true,
                Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => false,
            },
            None => false,
        };
        let counter = if sent { &self.queued } else { &self.dropped };
        counter.fetch_add(1, Ordering::Relaxed);
        sent
    }

    fn idle(&self) -> bool {
        self.done.load(Ordering::Relaxed) >= self.queued.load(Ordering::Relaxed)
    }
}

/// The writer thread: takes what is queued, up to [`BATCH_BYTES`], and
/// writes it with one blocking `write_all`. Blocking here is the point: the
/// loop never waits for it.
fn run_writer(stream: Stream, rx: Receiver<String>) {
    // A background process that writes to a terminal with `tostop` set gets
    // SIGTTOU, which stops the whole process; with the signal blocked in
    // this thread the kernel lets the write through instead.
    block_job_control_signals();
    let mut batch = String::new();
    while let Ok(first) = rx.recv() {
        batch.clear();
        batch.push_str(&first);
        let mut lines = 1u64;
        while batch.len() < BATCH_BYTES {
            match rx.try_recv() {
                Ok(line) => {
                    batch.push_str(&line);
                    lines += 1;
                }
                Err(_) => break,
            }
        }
        let written = match stream {
            Stream::Stdout => {
                let mut out = io::stdout().lock();
                out.write_all(batch.as_bytes()).and_then(|()| out.flush())
            }
            Stream::Stderr => io::stderr().lock().write_all(batch.as_bytes()),
        };
        let sink = sink(stream);
        if written.is_err() {
            sink.dropped.fetch_add(lines, Ordering::Relaxed);
        }
        sink.done.fetch_add(lines, Ordering::Relaxed);
    }
}

fn block_job_control_signals() {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    set.add(Signal::SIGTTOU);
    set.add(Signal::SIGTTIN);
    // Best effort: without it a terminal stop can only stop, not corrupt.
    let _ = set.thread_block();
}

/// Queues one report line for stdout (the newline is added). Returns false
/// when it was dropped because stdout is not being read.
pub fn report(line: &str) -> bool {
    let mut owned = String::with_capacity(line.len() + 1);
    owned.push_str(line);
    owned.push('\n');
    sink(Stream::Stdout).push(owned)
}

/// Queues one log line for stderr; `line` must end in `\n`.
pub fn log_line(line: String) -> bool {
    sink(Stream::Stderr).push(line)
}

/// Report lines dropped since start (stdout not read, or closed).
pub fn reports_dropped() -> u64 {
    STDOUT
        .get()
        .map_or(0, |s| s.dropped.load(Ordering::Relaxed))
}

/// Log lines dropped since start (stderr not read, or closed).
pub fn log_lines_dropped() -> u64 {
    STDERR
        .get()
        .map_or(0, |s| s.dropped.load(Ordering::Relaxed))
}

/// Waits until everything queued so far is written, or `within` passes (a
/// reader that never reads must not hang the exit). True when all is out.
pub fn flush(within: Duration) -> bool {
    let deadline = Instant::now() + within;
    loop {
        let idle = [&STDOUT, &STDERR]
            .iter()
            .all(|cell| cell.get().is_none_or(Sink::idle));
        if idle {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(2));
    }
}

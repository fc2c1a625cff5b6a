//! Stdout and stderr that never block the event loop: one writer thread per
//! stream, fed by a bounded queue of whole lines.
//!
//! The loop (or any thread) only does a non-blocking `try_send`; when a
//! reader stops reading and the queue fills, the line is dropped and counted
//! ([`reports_dropped`], [`log_lines_dropped`]) and output resumes as soon as
//! the reader reads again. The inherited descriptors stay blocking:
//! `O_NONBLOCK` would be shared with the parent's terminal.
//!
//! Every line on the stream is whole or a fragment ended by a newline
//! ([`LineWriter`]): a write that stops short (a full disk, a file-size
//! limit) drops the rest of that line, and the next write starts with a
//! newline. Batches of whole lines up to `PIPE_BUF` go in one `write`,
//! which a pipe takes all or nothing, so a writer blocked on a pipe at exit
//! leaves no fragment either.

use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::thread;
use std::time::{Duration, Instant};

use crate::net::{self, Io};
use crate::signals;

/// Report lines queued for stdout; a report is about 700 bytes.
pub const REPORT_QUEUE: usize = 64;
/// Log lines queued for stderr.
pub const LOG_QUEUE: usize = 1024;
/// Most bytes one `write` of a batch of queued lines carries: `PIPE_BUF`,
/// so that a pipe takes a batch whole or not at all (a longer line goes
/// alone).
const BATCH_BYTES: usize = 4096;

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
        let builder = thread::Builder::new()
            .name(name.into())
            .stack_size(64 * 1024);
        let spawned = signals::spawn_unsignalled(builder, move || run_writer(stream, rx));
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

/// The writer thread: takes what is queued, whole lines up to
/// [`BATCH_BYTES`], and writes them with blocking `write`s. Blocking here is
/// the point: the loop never waits for it.
fn run_writer(stream: Stream, rx: Receiver<String>) {
    // A background process that writes to a terminal with `tostop` set gets
    // SIGTTOU, which stops the whole process; with the signal blocked in
    // this thread the kernel lets the write through instead.
    block_job_control_signals();
    let mut writer = LineWriter::default();
    let mut batch: Vec<String> = Vec::new();
    let mut next: Option<String> = None;
    loop {
        let first = match next.take() {
            Some(line) => line,
            None => match rx.recv() {
                Ok(line) => line,
                Err(_) => return,
            },
        };
        let mut bytes = first.len();
        batch.clear();
        batch.push(first);
        while bytes < BATCH_BYTES {
            match rx.try_recv() {
                Ok(line) if bytes + line.len() <= BATCH_BYTES => {
                    bytes += line.len();
                    batch.push(line);
                }
                Ok(line) => {
                    next = Some(line);
                    break;
                }
                Err(_) => break,
            }
        }
        let (stdout, stderr) = (io::stdout(), io::stderr());
        let fd = match stream {
            Stream::Stdout => stdout.as_fd(),
            Stream::Stderr => stderr.as_fd(),
        };
        let whole = writer.write_lines(&batch, &mut |bytes| write_fd(fd, bytes));
        let sink = sink(stream);
        let lines = batch.len() as u64;
        let cut = lines.saturating_sub(whole as u64);
        if cut > 0 {
            sink.dropped.fetch_add(cut, Ordering::Relaxed);
        }
        sink.done.fetch_add(lines, Ordering::Relaxed);
    }
}

/// One `write(2)` on the inherited descriptor (no buffer in between, so the
/// count is what reached the stream).
fn write_fd(fd: BorrowedFd<'_>, bytes: &[u8]) -> io::Result<usize> {
    nix::unistd::write(fd, bytes).map_err(io::Error::from)
}

/// Writes whole lines to a stream whose writes can stop short, keeping
/// every line on it either whole or a fragment ended by a newline.
#[derive(Debug, Default)]
pub struct LineWriter {
    /// A line was cut: its fragment on the stream has no newline yet.
    torn: bool,
    buf: Vec<u8>,
}

impl LineWriter {
    /// Writes `lines` (each ending in `\n`) with `write`, one system call
    /// each time, going on after a short count until all is out or a write
    /// fails (an error or 0). Returns how many lines reached the stream
    /// whole; a cut line and the lines after it are dropped, and the next
    /// call starts with a newline that ends the cut line's fragment.
    pub fn write_lines(
        &mut self,
        lines: &[String],
        write: &mut dyn FnMut(&[u8]) -> io::Result<usize>,
    ) -> usize {
        self.buf.clear();
        if self.torn {
            self.buf.push(b'\n');
        }
        let prefix = self.buf.len();
        for line in lines {
            self.buf.extend_from_slice(line.as_bytes());
        }
        let mut written = 0;
        while let Some(rest) = self.buf.get(written..).filter(|r| !r.is_empty()) {
            match net::io(|| write(rest)) {
                Io::Done(0) | Io::WouldBlock | Io::Failed(_) => break,
                Io::Done(n) => written += n,
            }
        }
        if written < prefix {
            // Not even the newline went out: the fragment is still open.
            return 0;
        }
        let mut end = prefix;
        let mut whole = 0;
        for line in lines {
            if end + line.len() > written {
                break;
            }
            end += line.len();
            whole += 1;
        }
        self.torn = written > end;
        whole
    }
}

/// Blocks SIGTTOU and SIGTTIN in the calling thread (and in the threads it
/// starts later, which inherit its mask): the kernel then lets a write to a
/// terminal with `tostop` set through instead of stopping the whole process
/// when it runs in the background. `main` calls it first thing, before
/// anything can be printed.
pub fn block_job_control_signals() {
    // Best effort: without it a terminal stop can only stop, not corrupt.
    let _ = job_control_signals().thread_block();
}

/// Undoes [`block_job_control_signals`] in the calling thread, once it
/// prints nothing itself any more: a SIGTTOU sent with `kill` is then
/// caught (and logged) by the event loop's handler again.
pub fn unblock_job_control_signals() {
    let _ = job_control_signals().thread_unblock();
}

fn job_control_signals() -> nix::sys::signal::SigSet {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    set.add(Signal::SIGTTOU);
    set.add(Signal::SIGTTIN);
    set
}

/// Writes `text` to stdout, or stderr, from the calling thread: for the
/// lines printed before the writer threads exist (`--help`, `--version`, a
/// bad flag). Unlike `print!` it never panics; the error is returned.
pub fn print_now(to_stderr: bool, text: &str) -> io::Result<()> {
    use std::io::Write;
    if to_stderr {
        io::stderr().lock().write_all(text.as_bytes())
    } else {
        let mut out = io::stdout().lock();
        out.write_all(text.as_bytes()).and_then(|()| out.flush())
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A stream that takes at most `room` more bytes, then fails as a full
    /// disk does; `chunk` bytes per call at most.
    struct Stream {
        out: Vec<u8>,
        room: usize,
        chunk: usize,
    }

    impl Stream {
        fn new(room: usize) -> Stream {
            Stream {
                out: Vec::new(),
                room,
                chunk: usize::MAX,
            }
        }

        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            if self.room == 0 {
                return Err(io::Error::from_raw_os_error(libc::ENOSPC));
            }
            let n = bytes.len().min(self.room).min(self.chunk);
            self.out.extend_from_slice(bytes.get(..n).unwrap());
            self.room -= n;
            Ok(n)
        }
    }

    fn lines(texts: &[&str]) -> Vec<String> {
        texts.iter().map(|t| format!("{t}\n")).collect()
    }

    #[test]
    fn a_short_write_drops_the_rest_of_the_line_and_the_next_write_ends_the_fragment() {
        let mut w = LineWriter::default();
        let mut s = Stream::new(10);
        // "first\n" fits, "second\n" is cut after 4 bytes.
        assert_eq!(
            w.write_lines(&lines(&["first", "second", "third"]), &mut |b| s.write(b)),
            1
        );
        assert_eq!(s.out, b"first\nseco");
        // Still full: not even the newline goes out; the fragment stays open.
        assert_eq!(w.write_lines(&lines(&["fourth"]), &mut |b| s.write(b)), 0);
        assert_eq!(s.out, b"first\nseco");
        // Space again: the newline ends the fragment, then whole lines.
        s.room = usize::MAX;
        assert_eq!(
            w.write_lines(&lines(&["fifth", "sixth"]), &mut |b| s.write(b)),
            2
        );
        assert_eq!(s.out, b"first\nseco\nfifth\nsixth\n");
        // Whole again: no newline in front any more.
        assert_eq!(w.write_lines(&lines(&["seventh"]), &mut |b| s.write(b)), 1);
        assert_eq!(s.out, b"first\nseco\nfifth\nsixth\nseventh\n");
    }

    #[test]
    fn a_write_that_stops_exactly_between_lines_leaves_nothing_torn() {
        let mut w = LineWriter::default();
        let mut s = Stream::new(6);
        assert_eq!(
            w.write_lines(&lines(&["first", "second"]), &mut |b| s.write(b)),
            1
        );
        s.room = usize::MAX;
        assert_eq!(w.write_lines(&lines(&["third"]), &mut |b| s.write(b)), 1);
        assert_eq!(s.out, b"first\nthird\n");
    }

    #[test]
    fn only_the_newline_going_out_ends_the_fragment_and_nothing_more() {
        let mut w = LineWriter::default();
        let mut s = Stream::new(3);
        assert_eq!(w.write_lines(&lines(&["first"]), &mut |b| s.write(b)), 0);
        s.room = 1;
        assert_eq!(w.write_lines(&lines(&["second"]), &mut |b| s.write(b)), 0);
        assert_eq!(s.out, b"fir\n");
        s.room = usize::MAX;
        assert_eq!(w.write_lines(&lines(&["third"]), &mut |b| s.write(b)), 1);
        assert_eq!(s.out, b"fir\nthird\n");
    }

    #[test]
    fn short_counts_and_interruptions_without_an_error_go_on_to_the_end() {
        let mut w = LineWriter::default();
        let mut s = Stream::new(usize::MAX);
        s.chunk = 3;
        let mut interrupted = false;
        let mut write = |b: &[u8]| {
            if !interrupted {
                interrupted = true;
                return Err(io::Error::from(io::ErrorKind::Interrupted));
            }
            s.write(b)
        };
        assert_eq!(w.write_lines(&lines(&["first", "second"]), &mut write), 2);
        assert_eq!(s.out, b"first\nsecond\n");
    }

    #[test]
    fn every_line_on_the_stream_is_whole_or_a_fragment_ended_by_a_newline() {
        // Whatever the stream takes each time, what it holds splits into
        // the lines sent, some of them cut, never two glued together.
        let sent = lines(&["alpha", "bravo", "charlie", "delta", "echo", "foxtrot"]);
        for room in 0..40 {
            for later in 0..40 {
                let mut w = LineWriter::default();
                let mut s = Stream::new(room);
                w.write_lines(sent.get(..3).unwrap(), &mut |b| s.write(b));
                s.room = later;
                w.write_lines(sent.get(3..5).unwrap(), &mut |b| s.write(b));
                s.room = usize::MAX;
                w.write_lines(sent.get(5..).unwrap(), &mut |b| s.write(b));
                let text = String::from_utf8(s.out.clone()).unwrap();
                assert!(text.ends_with("foxtrot\n"), "{room} {later}: {text:?}");
                for line in text.lines() {
                    assert!(
                        sent.iter()
                            .any(|l| l.trim_end().starts_with(line) && !line.is_empty()),
                        "{room} {later}: {line:?} in {text:?}"
                    );
                }
            }
        }
    }
}

//! One direction of the byte relay: read from one socket, scan, write to the
//! other, and hold what the other could not take yet.
//!
//! Bytes are read into the loop's shared scratch buffer and written straight
//! through; only a remainder the peer could not take is copied into a pooled
//! buffer, which goes back to the pool as soon as it drains. An idle pipe
//! therefore holds no buffer at all.

use std::io::{self, Read, Write};

use mio::net::TcpStream;

use crate::net::{self, Io};
use crate::pool::Pool;
use crate::scanner::{Direction, Scanner};
use crate::seqs::{Seqs, Tracking};
use crate::stats::{Stats, add};

/// A socket plus what the kernel last told us about it (edge-triggered).
pub struct Side {
    pub stream: TcpStream,
    pub readable: bool,
    pub writable: bool,
    /// The kernel reported the peer's FIN or an error: read until end of
    /// file or WouldBlock, since no further edge will announce it.
    pub read_closed: bool,
}

impl Side {
    pub fn new(stream: TcpStream) -> Self {
        Side {
            stream,
            readable: false,
            writable: false,
            read_closed: false,
        }
    }
}

/// Bytes waiting to be written: `data[start..end]`.
struct Buf {
    data: Box<[u8]>,
    start: usize,
    end: usize,
}

/// Shared state the pipes borrow from the event loop for one drive.
pub struct Ctx<'a> {
    pub scratch: &'a mut [u8],
    pub pool: &'a mut Pool,
    pub stats: &'a mut Stats,
    /// Most bytes read per direction in one drive (fairness).
    pub budget: usize,
    /// Upstream pooling is on: a half-closed client's upstream connection
    /// is not shut, so that a clean end can hand it to the next client.
    pub keep_upstream: bool,
    /// This loop iteration's clock, µs ([`crate::latency::us_at`]): the
    /// time of every request and answer read in it.
    pub now_us: u64,
}

/// Why a pump stopped early.
#[derive(Debug)]
pub enum Fault {
    /// Reading the source failed (reset, ...).
    Source(io::Error),
    /// Writing the destination failed (reset, broken pipe, ...).
    Destination(io::Error),
}

/// What a pump did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Pumped {
    /// The source returned end of file during this pump.
    pub eof: bool,
    /// The byte budget ran out while the source was still readable.
    pub exhausted: bool,
    /// At least one byte was read or written.
    pub moved: bool,
}

/// One direction: its unsent bytes, its frame scanner and its line count.
pub struct Pipe {
    buf: Option<Buf>,
    scanner: Scanner,
    /// Newline-terminated frames read from the source so far.
    pub lines: u64,
}

impl Pipe {
    pub fn new(direction: Direction) -> Self {
        Pipe {
            buf: None,
            scanner: Scanner::new(direction),
            lines: 0,
        }
    }

    /// Bytes read but not yet written.
    pub fn pending(&self) -> usize {
        self.buf.as_ref().map_or(0, |b| b.end - b.start)
    }

    /// Drops unsent bytes (the destination is gone) and returns the buffer.
    pub fn discard(&mut self, pool: &mut Pool) {
        if let Some(b) = self.buf.take() {
            pool.put(b.data);
        }
    }

    /// Queues `bytes` the proxy itself sends ahead of the source's (a
    /// PROXY protocol header): not scanned or counted. Only before anything
    /// was read, so they go first; false (nothing queued) otherwise, or
    /// when they do not fit a buffer.
    pub fn preload(&mut self, bytes: &[u8], pool: &mut Pool) -> bool {
        if self.buf.is_some() || bytes.len() > pool.buffer_size() {
            return false;
        }
        let mut data = pool.get();
        let Some(slot) = data.get_mut(..bytes.len()) else {
            pool.put(data);
            return false;
        };
        slot.copy_from_slice(bytes);
        self.buf = Some(Buf {
            data,
            start: 0,
            end: bytes.len(),
        });
        true
    }

    fn account(&mut self, bytes: &[u8], seqs: &mut Seqs, stats: &mut Stats, now_us: u64) {
        let mut sink = Tracking::new(seqs, stats, now_us);
        self.scanner.scan(bytes, &mut sink);
        let delta = sink.counts;
        self.lines = self.lines.saturating_add(delta.lines());
        let n = bytes.len() as u64;
        if let Some(rec) = seqs.log.as_deref_mut() {
            rec.add(self.scanner_direction(), &delta, n);
        }
        match self.scanner_direction() {
            Direction::ClientToServer => {
                stats.add_client_frames(&delta);
                add(&mut stats.bytes_client_to_server, n);
            }
            Direction::ServerToClient => {
                stats.add_server_frames(&delta);
                add(&mut stats.bytes_server_to_client, n);
            }
        }
    }

    fn scanner_direction(&self) -> Direction {
        self.scanner.direction()
    }

    /// True when the source's bytes so far end on a frame boundary (after a
    /// newline, or none yet): a partial last line is not pending.
    pub fn at_frame_boundary(&self) -> bool {
        self.scanner.at_frame_start()
    }

    /// Writes pending bytes to `dst` until it would block or they are gone;
    /// true when some were written.
    pub fn flush_to(&mut self, dst: &mut Side, pool: &mut Pool) -> Result<bool, Fault> {
        let mut progress = false;
        while let Some(buf) = self.buf.as_mut() {
            if !dst.writable {
                break;
            }
            let Some(pending) = buf.data.get(buf.start..buf.end) else {
                break;
            };
            match net::io(|| dst.stream.write(pending)) {
                Io::Done(0) => return Err(Fault::Destination(io::ErrorKind::WriteZero.into())),
                Io::Done(n) => {
                    progress = true;
                    buf.start += n;
                    if buf.start >= buf.end {
                        self.discard(pool);
                    }
                }
                Io::WouldBlock => dst.writable = false,
                Io::Failed(e) => return Err(Fault::Destination(e)),
            }
        }
        Ok(progress)
    }

    /// Moves bytes from `src` to `dst` until neither can make progress, the
    /// pending bytes reach the pool's buffer size (backpressure), or the
    /// budget runs out. `dst_open` false means bytes are held, not written
    /// (the upstream is still connecting).
    pub fn pump(
        &mut self,
        src: &mut Side,
        dst: &mut Side,
        dst_open: bool,
        seqs: &mut Seqs,
        ctx: &mut Ctx<'_>,
    ) -> Result<Pumped, Fault> {
        let limit = ctx.pool.buffer_size();
        let mut budget = ctx.budget;
        let mut out = Pumped::default();
        loop {
            let mut progress = false;
            if dst_open {
                progress |= self.flush_to(dst, ctx.pool)?;
                out.moved |= progress;
            }
            let space = limit.saturating_sub(self.pending());
            if !src.readable || space == 0 {
                break;
            }
            if budget == 0 {
                out.exhausted = true;
                break;
            }
            let want = space.min(budget);
            let read = match self.buf.as_mut() {
                Some(buf) => {
                    if buf.start > 0 {
                        buf.data.copy_within(buf.start..buf.end, 0);
                        buf.end -= buf.start;
                        buf.start = 0;
                    }
                    let end = buf.end;
                    match buf.data.get_mut(end..end + want) {
                        Some(dst_slice) => net::io(|| src.stream.read(dst_slice)),
                        None => break,
                    }
                }
                None => match ctx.scratch.get_mut(..want) {
                    Some(dst_slice) => net::io(|| src.stream.read(dst_slice)),
                    None => break,
                },
            };
            match read {
                Io::Done(0) => {
                    src.readable = false;
                    out.eof = true;
                    break;
                }
                Io::Done(n) => {
                    budget = budget.saturating_sub(n);
                    progress = true;
                    out.moved = true;
                    // A short read emptied the receive queue: more data
                    // brings a new edge, so the read that would only say
                    // WouldBlock is skipped (a third of the syscalls under
                    // pipelined load). A pending FIN brings no edge.
                    if n < want && !src.read_closed {
                        src.readable = false;
                    }
                    self.accept_read(n, dst, dst_open, seqs, ctx)?;
                }
                Io::WouldBlock => src.readable = false,
                Io::Failed(e) => return Err(Fault::Source(e)),
            }
            if !progress {
                break;
            }
        }
        Ok(out)
    }

    /// Scans and forwards `n` freshly read bytes, which sit either at the
    /// end of the pipe's buffer or at the start of the scratch buffer.
    fn accept_read(
        &mut self,
        n: usize,
        dst: &mut Side,
        dst_open: bool,
        seqs: &mut Seqs,
        ctx: &mut Ctx<'_>,
    ) -> Result<(), Fault> {
        if let Some(mut buf) = self.buf.take() {
            let end = buf.end + n;
            if let Some(fresh) = buf.data.get(buf.end..end) {
                self.account(fresh, seqs, ctx.stats, ctx.now_us);
            }
            buf.end = end;
            self.buf = Some(buf);
            return Ok(());
        }
        let Some(fresh) = ctx.scratch.get(..n) else {
            return Ok(());
        };
        self.account(fresh, seqs, ctx.stats, ctx.now_us);
        let mut written = 0;
        while dst_open && dst.writable && written < n {
            let Some(rest) = fresh.get(written..) else {
                break;
            };
            match net::io(|| dst.stream.write(rest)) {
                Io::Done(0) => return Err(Fault::Destination(io::ErrorKind::WriteZero.into())),
                Io::Done(w) => written += w,
                Io::WouldBlock => dst.writable = false,
                Io::Failed(e) => return Err(Fault::Destination(e)),
            }
        }
        if let Some(rest) = fresh.get(written..).filter(|r| !r.is_empty()) {
            let mut data = ctx.pool.get();
            if let Some(slot) = data.get_mut(..rest.len()) {
                slot.copy_from_slice(rest);
            }
            self.buf = Some(Buf {
                data,
                start: 0,
                end: rest.len(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mio::{Events, Interest, Poll, Token};
    use std::net::{Shutdown, TcpListener};
    use std::time::Duration;

    /// A connected loopback pair: (our mio end, the peer's std end).
    fn connected() -> (TcpStream, std::net::TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let peer = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (ours, _) = listener.accept().unwrap();
        ours.set_nonblocking(true).unwrap();
        (TcpStream::from_std(ours), peer)
    }

    /// Waits until the kernel reports `stream` readable.
    fn wait_readable(stream: &mut TcpStream) {
        let mut poll = Poll::new().unwrap();
        poll.registry()
            .register(stream, Token(0), Interest::READABLE)
            .unwrap();
        let mut events = Events::with_capacity(4);
        poll.poll(&mut events, Some(Duration::from_secs(5)))
            .unwrap();
        assert!(!events.is_empty(), "no readable event within 5 s");
        poll.registry().deregister(stream).unwrap();
    }

    fn pump_once(src: &mut Side, dst: &mut Side) -> Pumped {
        let mut scratch = vec![0u8; 4096];
        let mut pool = Pool::new(4096, 1);
        let mut stats = Stats::default();
        let mut ctx = Ctx {
            scratch: &mut scratch,
            pool: &mut pool,
            stats: &mut stats,
            budget: 4 * 4096,
            keep_upstream: false,
            now_us: 0,
        };
        let mut pipe = Pipe::new(Direction::ClientToServer);
        pipe.pump(src, dst, true, &mut Seqs::default(), &mut ctx)
            .unwrap()
    }

    #[test]
    fn a_short_read_is_forwarded_and_clears_readable() {
        let (mut src_stream, mut src_peer) = connected();
        let (dst_stream, mut dst_peer) = connected();
        src_peer.write_all(b"REQ 1 a\n").unwrap();
        wait_readable(&mut src_stream);
        let mut src = Side::new(src_stream);
        let mut dst = Side::new(dst_stream);
        src.readable = true;
        dst.writable = true;
        let out = pump_once(&mut src, &mut dst);
        assert!(out.moved && !out.eof);
        assert!(!src.readable, "a short read means the queue is empty");
        let mut got = [0u8; 8];
        dst_peer.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"REQ 1 a\n");
    }

    #[test]
    fn a_fin_queued_behind_data_is_read_in_the_same_pump() {
        let (mut src_stream, mut src_peer) = connected();
        let (dst_stream, mut dst_peer) = connected();
        src_peer.write_all(b"REQ 1 a\n").unwrap();
        src_peer.shutdown(Shutdown::Write).unwrap();
        wait_readable(&mut src_stream);
        // Give the FIN time to land behind the data on a loaded machine.
        std::thread::sleep(Duration::from_millis(50));
        let mut src = Side::new(src_stream);
        let mut dst = Side::new(dst_stream);
        src.readable = true;
        src.read_closed = true;
        dst.writable = true;
        let out = pump_once(&mut src, &mut dst);
        assert!(out.eof, "the FIN brings no new edge: it must be read now");
        let mut got = [0u8; 8];
        dst_peer.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"REQ 1 a\n");
    }
}

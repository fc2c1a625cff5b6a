//! Buffers between the drivers and their non-blocking sockets: a line reader
//! that frames by `\n` across any number of reads, and an outbox that can
//! split its writes at random points, as the reference driver does.

use std::io::{self, Read, Write};

use crate::rng::Rng;
use foo_proxy::net::{self, Io};

/// Longest line a driver accepts before it gives up on the peer, in bytes,
/// its newline not counted: the same cap for a line that ends in `\n` and
/// for a last one that ends at EOF.
pub const MAX_LINE: usize = 1 << 20;

/// The reader's largest buffer: a longest line and its newline. A buffer
/// full of bytes without a newline holds a line longer than [`MAX_LINE`].
const MAX_BUF: usize = MAX_LINE + 1;

/// Bytes read but not yet framed: `buf[start..end]`.
pub struct LineReader {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

/// What one read did.
#[derive(Debug, PartialEq, Eq)]
pub enum Filled {
    Bytes(usize),
    /// The peer closed its side (`read() == 0`).
    Eof,
    WouldBlock,
}

impl LineReader {
    pub fn new(capacity: usize) -> Self {
        LineReader {
            buf: vec![0; capacity.max(64)],
            start: 0,
            end: 0,
        }
    }

    /// Bytes after the last complete line.
    pub fn pending(&self) -> usize {
        self.end - self.start
    }

    /// One read into the free space, making room first. Take every
    /// complete line ([`LineReader::next_line`]) before the next call: a
    /// buffer full of one unfinished line longer than [`MAX_LINE`] is an
    /// `InvalidData` error.
    pub fn fill<R: Read>(&mut self, r: &mut R) -> io::Result<Filled> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.end == self.buf.len() {
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            } else if self.buf.len() < MAX_BUF {
                self.buf.resize((self.buf.len() * 2).min(MAX_BUF), 0);
            } else {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("line longer than {MAX_LINE} bytes"),
                ));
            }
        }
        let free = self.buf.get_mut(self.end..).unwrap_or_default();
        match net::io(|| r.read(free)) {
            Io::Done(0) => Ok(Filled::Eof),
            Io::Done(n) => {
                self.end += n;
                Ok(Filled::Bytes(n))
            }
            Io::WouldBlock => Ok(Filled::WouldBlock),
            Io::Failed(e) => Err(e),
        }
    }

    /// The next complete line, without its `\n`.
    pub fn next_line(&mut self) -> Option<&[u8]> {
        let avail = self.buf.get(self.start..self.end)?;
        let i = memchr::memchr(b'\n', avail)?;
        self.start += i + 1;
        avail.get(..i)
    }

    /// At EOF, the last line if it has no `\n` (empty: `None`), as Go's
    /// `bufio.Scanner` hands the reference server a final unterminated line.
    pub fn take_rest(&mut self) -> Option<&[u8]> {
        let rest = self.buf.get(self.start..self.end)?;
        self.start = self.end;
        (!rest.is_empty()).then_some(rest)
    }
}

/// Bytes waiting to be written: `buf[pos..]`.
#[derive(Default)]
pub struct Outbox {
    pub buf: Vec<u8>,
    pos: usize,
}

impl Outbox {
    pub fn pending(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Writes until empty (`Ok(true)`) or the socket is full (`Ok(false)`).
    /// With `split`, every write takes a random-length prefix, so the peer
    /// sees frames cut at arbitrary points (with TCP_NODELAY, as separate
    /// segments).
    pub fn flush<W: Write>(&mut self, w: &mut W, mut split: Option<&mut Rng>) -> io::Result<bool> {
        while self.pos < self.buf.len() {
            let rest = self.buf.get(self.pos..).unwrap_or_default();
            let len = match split.as_deref_mut() {
                Some(rng) => rng.range(1, rest.len() as u64) as usize,
                None => rest.len(),
            };
            match net::io(|| w.write(rest.get(..len).unwrap_or(rest))) {
                Io::Done(0) => return Err(io::ErrorKind::WriteZero.into()),
                Io::Done(n) => self.pos += n,
                Io::WouldBlock => return Ok(false),
                Io::Failed(e) => return Err(e),
            }
        }
        self.buf.clear();
        self.pos = 0;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader that hands out its bytes in the given chunk sizes.
    struct Chunks<'a>(&'a [u8], Vec<usize>);

    impl Read for Chunks<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.0.is_empty() {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = self
                .1
                .pop()
                .unwrap_or(usize::MAX)
                .min(buf.len())
                .min(self.0.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn the_unterminated_rest_is_taken_once_and_only_when_not_empty() {
        let mut lines = LineReader::new(64);
        let mut input: &[u8] = b"REQ 1\nREQ 2 tail";
        assert_eq!(lines.fill(&mut input).ok(), Some(Filled::Bytes(16)));
        assert_eq!(lines.next_line(), Some(&b"REQ 1"[..]));
        assert_eq!(lines.next_line(), None);
        assert_eq!(lines.take_rest(), Some(&b"REQ 2 tail"[..]));
        assert_eq!(lines.take_rest(), None);
        assert_eq!(lines.pending(), 0);
    }

    #[test]
    fn lines_span_reads_and_reads_hold_many_lines() {
        let stream = b"REQ 6 gxb6w7yr3sc647vyua\nACK 1\nACK 2\npartial";
        let mut r = Chunks(stream, vec![100, 1, 19, 5]);
        let mut lines = LineReader::new(8);
        let mut got = Vec::new();
        while lines.fill(&mut r).unwrap() != Filled::WouldBlock {
            while let Some(l) = lines.next_line() {
                got.push(l.to_vec());
            }
        }
        assert_eq!(got, [&b"REQ 6 gxb6w7yr3sc647vyua"[..], b"ACK 1", b"ACK 2"]);
        assert_eq!(lines.pending(), b"partial".len());
    }

    /// One line of `len` bytes (`REQ 1 xxx...`), with a newline or cut off
    /// by EOF: what the reader hands out, or the error.
    fn read_one(len: usize, newline: bool) -> Result<Vec<u8>, io::ErrorKind> {
        let mut input = b"REQ 1 ".to_vec();
        input.resize(len, b'x');
        if newline {
            input.push(b'\n');
        }
        let mut r = &input[..];
        let mut lines = LineReader::new(4096);
        loop {
            if let Some(line) = lines.next_line() {
                return Ok(line.to_vec());
            }
            match lines.fill(&mut r).map_err(|e| e.kind())? {
                Filled::Eof => {
                    return lines
                        .take_rest()
                        .map(<[u8]>::to_vec)
                        .ok_or(io::ErrorKind::UnexpectedEof);
                }
                Filled::Bytes(_) | Filled::WouldBlock => {}
            }
        }
    }

    #[test]
    fn the_line_cap_is_the_same_with_a_newline_and_at_eof() {
        for newline in [true, false] {
            for len in [MAX_LINE - 1, MAX_LINE] {
                let line = read_one(len, newline).unwrap_or_else(|e| {
                    panic!("a {len}-byte line (newline: {newline}) is within the cap: {e:?}")
                });
                assert_eq!(line.len(), len, "newline: {newline}");
            }
            assert_eq!(
                read_one(MAX_LINE + 1, newline),
                Err(io::ErrorKind::InvalidData),
                "a line of MAX_LINE + 1 bytes (newline: {newline}) is over the cap"
            );
        }
    }

    #[test]
    fn split_writes_deliver_every_byte_in_order() {
        struct Small(Vec<u8>, usize);
        impl Write for Small {
            fn write(&mut self, b: &[u8]) -> io::Result<usize> {
                self.1 += 1;
                self.0.extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut out = Outbox::default();
        out.buf.extend_from_slice(&[b'x'; 1000]);
        let mut sink = Small(Vec::new(), 0);
        let mut rng = Rng::new(9);
        assert!(out.flush(&mut sink, Some(&mut rng)).unwrap());
        assert_eq!(sink.0, [b'x'; 1000]);
        assert!(sink.1 > 1, "expected several writes");
        assert_eq!(out.pending(), 0);
    }
}

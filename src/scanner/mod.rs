//! Incremental Foo frame scanner and the one source of the Foo line grammar.
//!
//! Pure: no I/O and no allocation. A [`Scanner`] is fed each read's bytes in
//! order and carries its state between calls, so a frame may span any number
//! of reads. Each read is searched once for all its newlines (64 bytes at a
//! time, as a bit mask), and a frame's header (type, separator, seq) is read
//! only at its start: the data part costs nothing but that search.
//!
//! Its rooms: `grammar` (the line grammar, written once: the scanner reads
//! each frame start with it, and [`parse_line`] reads a whole line with it,
//! for the test tools), `newlines` (the newline masks, SSE2 on x86_64),
//! `state` (the state a partial frame leaves, and how it is kept),
//! `reference` (a plain one-shot classifier the tests and the fuzz target
//! hold the scanner to; not compiled into the product) and `tests`.

mod grammar;
mod newlines;
#[cfg(any(test, fuzzing))]
mod reference;
mod state;
#[cfg(test)]
mod tests;

use grammar::{
    Head, digits_value, first_word, head, is_sep, leading_digits, parse_header, quick, seq_value,
    skip_digits, skip_seps, type_and_sep,
};
use newlines::for_each_newline;
use state::{State, Tag, from_words, to_words};

pub use grammar::{Kind, Line, parse_line};
#[cfg(any(test, fuzzing))]
pub use reference::{classify_line, count_reference};

/// Which way the bytes flow; decides which message types are legal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Client to server: only `REQ` is well-formed.
    ClientToServer,
    /// Server to client: only `ACK` and `NAK` are well-formed.
    ServerToClient,
}

/// What a completed frame was, in its direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Frame {
    Req,
    Ack,
    Nak,
    Invalid,
}

/// Frames completed so far, by class. `lines()` counts every frame.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FrameCounts {
    pub req: u64,
    pub ack: u64,
    pub nak: u64,
    pub invalid: u64,
}

impl FrameCounts {
    /// Every newline-terminated frame, well-formed or not.
    pub fn lines(&self) -> u64 {
        self.req + self.ack + self.nak + self.invalid
    }

    #[inline]
    pub fn add(&mut self, frame: Frame) {
        match frame {
            Frame::Req => self.req += 1,
            Frame::Ack => self.ack += 1,
            Frame::Nak => self.nak += 1,
            Frame::Invalid => self.invalid += 1,
        }
    }
}

/// Receives each frame [`Scanner::scan`] completes, in stream order.
///
/// `scan` is generic over the sink, so a sink that ignores `seq` and `end`
/// (like [`FrameCounts`]) compiles to a scanner that never computes them.
pub trait FrameSink {
    /// One frame: `frame` is its class in the scanner's direction; `seq` is
    /// its seq when `frame` is not [`Frame::Invalid`] (0 otherwise); `end` is
    /// the offset just past its `\n` in the bytes given to this `scan` call
    /// (the frame may have begun in an earlier call).
    fn frame(&mut self, frame: Frame, seq: u64, end: usize);
}

impl FrameSink for FrameCounts {
    #[inline(always)]
    fn frame(&mut self, frame: Frame, _seq: u64, _end: usize) {
        self.add(frame);
    }
}

/// Scanner state for one direction of one connection: four words.
///
/// The `State` is kept spread over plain fields, each read and written
/// at its own width: kept as an enum, its parts sat at odd offsets and
/// were copied in pieces of other widths than they were read back with by
/// the next call (a load that spans several earlier stores cannot take its
/// value from them and waits).
#[derive(Clone, Copy, Debug)]
pub struct Scanner {
    direction: Direction,
    tag: Tag,
    /// `Type`, `Sep`, `Seq`, `SeqCr`, `Data`: the message type.
    kind: Kind,
    /// `Head`: bytes kept; `Type`: letters matched.
    len: u8,
    /// `Seq`, `SeqCr`: the seq so far; `Data`: the seq.
    value: u64,
    /// `Head`: the kept bytes (see [`State::Head`]).
    tail: [u64; 2],
}

impl Scanner {
    pub fn new(direction: Direction) -> Self {
        Scanner {
            direction,
            tag: Tag::Start,
            kind: Kind::Req,
            len: 0,
            value: 0,
            tail: [0; 2],
        }
    }

    pub fn direction(&self) -> Direction {
        self.direction
    }

    /// True when the scanner sits between frames (no partial frame pending).
    pub fn at_frame_start(&self) -> bool {
        self.tag == Tag::Start
    }

    /// Consumes `bytes`, handing each completed frame to `sink` in order.
    /// Bytes after the last newline are remembered as the state of a partial
    /// frame (its first 15 bytes at most are kept raw, never more).
    #[inline]
    pub fn scan<S: FrameSink + ?Sized>(&mut self, bytes: &[u8], sink: &mut S) {
        // One copy of the loop per direction, so the legality test folds away.
        match self.direction {
            Direction::ClientToServer => self.scan_in(Direction::ClientToServer, bytes, sink),
            Direction::ServerToClient => self.scan_in(Direction::ServerToClient, bytes, sink),
        }
    }

    #[inline(always)]
    fn scan_in<S: FrameSink + ?Sized>(&mut self, direction: Direction, bytes: &[u8], sink: &mut S) {
        // Whether the first line began in an earlier read. The state itself
        // is read in place, field by field, where it is needed: copying it
        // whole would load what the last call stored in pieces.
        let mut pending = self.tag != Tag::Start;
        let mut start = 0;
        let carried = &*self;
        for_each_newline(
            bytes,
            #[inline(always)]
            |newline| {
                let Some(line) = bytes.get(start..newline) else {
                    return;
                };
                let (frame, seq) = if pending {
                    pending = false;
                    finish(
                        carried,
                        line,
                        bytes.get(start..).unwrap_or_default(),
                        direction,
                    )
                } else {
                    classify(line, direction)
                };
                start = newline + 1;
                sink.frame(frame, seq, start);
            },
        );
        let rest = bytes.get(start..).unwrap_or_default();
        // A newline was found when nothing is pending any more: the rest
        // starts a frame, whatever the stored tag still says.
        if pending {
            carry(self, rest, bytes);
        } else {
            open(self, rest, bytes);
        }
    }
}

/// The class and seq of a whole line that began in this read.
#[inline(always)]
fn classify(line: &[u8], direction: Direction) -> (Frame, u64) {
    match parse_header(line) {
        Some((kind, seq, _)) if kind.legal(direction) => (kind.frame(), seq),
        _ => (Frame::Invalid, 0),
    }
}

/// The class and seq of a frame that began in an earlier read, from the
/// state it had reached and the rest of its line, `rest`, which starts
/// `bytes`, this read.
#[inline(always)]
fn finish(carried: &Scanner, rest: &[u8], bytes: &[u8], direction: Direction) -> (Frame, u64) {
    let header = match carried.tag {
        Tag::Data => Some((carried.kind, carried.value)),
        Tag::Skip => None,
        Tag::Head => rejoin(carried.tail, usize::from(carried.len), rest, bytes),
        _ => match header(carried.state(), rest) {
            State::Seq { kind, value } | State::SeqCr { kind, value } => Some((kind, value)),
            State::Data { kind, seq } => Some((kind, seq)),
            _ => None,
        },
    };
    match header {
        Some((kind, seq)) if kind.legal(direction) => (kind.frame(), seq),
        _ => (Frame::Invalid, 0),
    }
}

/// The header of a line whose first `len` bytes were kept raw at the start
/// of `tail` and whose other bytes are `rest`, which starts `bytes`.
#[inline(always)]
fn rejoin(tail: [u64; 2], len: usize, rest: &[u8], bytes: &[u8]) -> Option<(Kind, u64)> {
    let window = (from_words(tail) | first_16(bytes) << (8 * len)).to_le_bytes();
    let total = len + rest.len();
    // A line of at most 16 bytes is all in the window.
    if let Some(line) = window.get(..total) {
        return parse_header(line).map(|(kind, seq, _)| (kind, seq));
    }
    if let Some((first, after)) = window.split_first_chunk::<4>()
        && let Some(word) = after.first_chunk::<8>()
        && let Some(decided) = quick(*first, u64::from_le_bytes(*word), total)
    {
        return decided.map(|(kind, seq, _)| (kind, seq));
    }
    rejoin_unusual(tail, len, rest)
}

/// [`rejoin`] of an unusual header (several separators, a long seq), by
/// the byte-wise machine. Not inlined: inlined, LLVM hoisted its
/// preparation in front of the newline loop, paid by every read with a
/// newline whatever the carried state.
#[inline(never)]
fn rejoin_unusual(tail: [u64; 2], len: usize, rest: &[u8]) -> Option<(Kind, u64)> {
    let tail = from_words(tail).to_le_bytes();
    let kept = tail.get(..len).unwrap_or_default();
    match header(header(State::Start, kept), rest) {
        State::Seq { kind, value } | State::SeqCr { kind, value } => Some((kind, value)),
        State::Data { kind, seq } => Some((kind, seq)),
        _ => None,
    }
}

/// The first 16 bytes of `bytes`, zero past its end.
#[inline(always)]
fn first_16(bytes: &[u8]) -> u128 {
    if let Some(first) = bytes.first_chunk::<16>() {
        return u128::from_le_bytes(*first);
    }
    // Fewer: two overlapping words, or one word, without a loop.
    match (bytes.first_chunk::<8>(), bytes.last_chunk::<8>()) {
        (Some(first), Some(last)) => {
            u128::from(u64::from_le_bytes(*first))
                | u128::from(u64::from_le_bytes(*last)) << (8 * (bytes.len() - 8))
        }
        _ => u128::from(first_word(bytes)),
    }
}

/// Stores the state after `rest`, the start of a frame (the bytes after
/// this read's last newline, at the end of `bytes`; possibly none).
#[inline(always)]
fn open(scanner: &mut Scanner, rest: &[u8], bytes: &[u8]) {
    if rest.is_empty() {
        scanner.tag = Tag::Start;
    } else if rest.len() < 16 {
        scanner.tag = Tag::Head;
        scanner.len = rest.len() as u8;
        scanner.tail = to_words(keep(rest, bytes));
    } else {
        scanner.set(begin(rest));
    }
}

/// Advances the stored state over `rest`, a read without a newline
/// (`bytes`). Written in place, and not at all when a decided header just
/// goes on.
#[inline(always)]
fn carry(scanner: &mut Scanner, rest: &[u8], bytes: &[u8]) {
    if rest.is_empty() {
        return;
    }
    match scanner.tag {
        Tag::Data | Tag::Skip => {}
        Tag::Start => open(scanner, rest, bytes),
        Tag::Head => {
            let (tail, len) = (from_words(scanner.tail), usize::from(scanner.len));
            if len + rest.len() < 16 {
                // Still short: add these after the kept bytes.
                scanner.len = (len + rest.len()) as u8;
                scanner.tail = to_words(tail | keep(rest, bytes) << (8 * len));
            } else {
                // Sixteen bytes of the frame now: read them as its start.
                let window = (tail | first_16(rest) << (8 * len)).to_le_bytes();
                let rest = rest.get(16 - len..).unwrap_or_default();
                // Usually sixteen bytes decide the header: then there is
                // nothing left for the byte-wise machine to read.
                match begin(&window) {
                    decided @ (State::Data { .. } | State::Skip) => scanner.set(decided),
                    state => scanner.set(header(state, rest)),
                }
            }
        }
        _ => scanner.set(header(scanner.state(), rest)),
    }
}

/// `rest` (1 to 15 bytes, the end of `bytes`) at the start of a 16-byte
/// number (byte 0 lowest), zeros above: the last 16 bytes of the read,
/// shifted, when there are that many.
#[inline(always)]
fn keep(rest: &[u8], bytes: &[u8]) -> u128 {
    match bytes.last_chunk::<16>() {
        Some(last) => u128::from_le_bytes(*last) >> (8 * (16 - rest.len())),
        None => first_16(rest),
    }
}

/// The state after the first bytes of a frame (no `\n` among them).
#[inline(always)]
fn begin(bytes: &[u8]) -> State {
    let (kind, value, end) = match head(bytes) {
        Head::Digits { kind, value, end } => (kind, value, end),
        Head::Invalid => return State::Skip,
        Head::Unusual => return header(State::Start, bytes),
    };
    after_seq(kind, value, bytes, end)
}

/// The state once the seq's digits end at `end` (of `bytes`, no `\n`).
#[inline(always)]
fn after_seq(kind: Kind, value: u64, bytes: &[u8], end: usize) -> State {
    match bytes.get(end) {
        None => State::Seq { kind, value },
        Some(&byte) if is_sep(byte) => State::Data { kind, seq: value },
        Some(b'\r') if end + 1 == bytes.len() => State::SeqCr { kind, value },
        Some(_) => State::Skip,
    }
}

/// Runs the header grammar over `bytes` (which hold no `\n`) from `state`,
/// one part at a time: for a header cut by the end of a read, or an
/// unusual one (several separators, a long seq).
#[inline(never)]
fn header(mut state: State, bytes: &[u8]) -> State {
    let mut i = 0;
    if let State::Start | State::Type { .. } = state {
        if let (State::Start, Some(first)) = (state, bytes.first_chunk::<4>()) {
            let Some(kind) = type_and_sep(*first) else {
                return State::Skip;
            };
            state = State::Sep(kind);
            i = 4;
        } else {
            while let State::Start | State::Type { .. } = state {
                let Some(&byte) = bytes.get(i) else {
                    return state;
                };
                state = step_type(state, byte);
                i += 1;
            }
        }
    }
    let (kind, value) = match state {
        State::Sep(kind) => {
            i = skip_seps(bytes, i);
            match bytes.get(i) {
                None => return state,
                Some(byte) if byte.is_ascii_digit() => (kind, 0),
                Some(_) => return State::Skip,
            }
        }
        State::Seq { kind, value } => (kind, value),
        State::SeqCr { .. } if !bytes.is_empty() => return State::Skip,
        _ => return state,
    };
    // Usually the digits end within the next eight bytes: one word.
    let word = first_word(bytes.get(i..).unwrap_or_default());
    let (value, end) = match leading_digits(word) {
        0 => (Some(value), i),
        n @ 1..=7 => {
            let scale = POWERS_OF_TEN.get(n).copied().unwrap_or(u64::MAX);
            let value = value
                .checked_mul(scale)
                .and_then(|v| v.checked_add(digits_value(word, n)));
            (value, i + n)
        }
        _ => {
            let end = skip_digits(bytes, i);
            (seq_value(value, bytes.get(i..end).unwrap_or_default()), end)
        }
    };
    match value {
        Some(value) => after_seq(kind, value, bytes, end),
        None => State::Skip,
    }
}

/// `10^n` for the one to seven digits [`header`] takes from one word.
const POWERS_OF_TEN: [u64; 8] = [1, 10, 100, 1_000, 10_000, 100_000, 1_000_000, 10_000_000];

/// One byte of the type name or the separator after it, for a header cut
/// inside its first four bytes.
fn step_type(state: State, byte: u8) -> State {
    match state {
        State::Start => match byte {
            b'R' => State::Type {
                kind: Kind::Req,
                matched: 1,
            },
            b'A' => State::Type {
                kind: Kind::Ack,
                matched: 1,
            },
            b'N' => State::Type {
                kind: Kind::Nak,
                matched: 1,
            },
            _ => State::Skip,
        },
        State::Type { kind, matched: 3 } if is_sep(byte) => State::Sep(kind),
        State::Type { kind, matched }
            if kind.name().as_bytes().get(usize::from(matched)) == Some(&byte) =>
        {
            State::Type {
                kind,
                matched: matched + 1,
            }
        }
        State::Type { .. } => State::Skip,
        other => other,
    }
}

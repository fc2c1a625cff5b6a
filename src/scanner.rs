//! Incremental Foo frame scanner and the one source of the Foo line grammar.
//!
//! Pure: no I/O and no allocation. A [`Scanner`] is fed each read's bytes in
//! order and carries its state between calls, so a frame may span any number
//! of reads. Each read is searched once for all its newlines (64 bytes at a
//! time, as a bit mask), and a frame's header (type, separator, seq) is read
//! only at its start: the data part costs nothing but that search.
//! [`parse_line`] is the same grammar for one whole line, for the drivers.

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

/// A message type, whichever way it flows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Req,
    Ack,
    Nak,
}

impl Kind {
    /// The type as it is written on the wire.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Req => "REQ",
            Kind::Ack => "ACK",
            Kind::Nak => "NAK",
        }
    }

    fn frame(self) -> Frame {
        match self {
            Kind::Req => Frame::Req,
            Kind::Ack => Frame::Ack,
            Kind::Nak => Frame::Nak,
        }
    }

    fn legal(self, direction: Direction) -> bool {
        match direction {
            Direction::ClientToServer => self == Kind::Req,
            Direction::ServerToClient => self != Kind::Req,
        }
    }
}

/// One well-formed line, as [`parse_line`] reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Line<'a> {
    pub kind: Kind,
    pub seq: u64,
    /// The data part: after the separators that follow the seq, without a
    /// final `\r`; empty when there is none.
    pub data: &'a [u8],
}

/// Parses one line given without its `\n` (a final `\r` is tolerated);
/// `None` when it is not well-formed. The direction is not checked.
///
/// This is the grammar [`Scanner::scan`] applies at each frame start (the
/// same code, inlined), so the drivers and the proxy cannot disagree.
pub fn parse_line(line: &[u8]) -> Option<Line<'_>> {
    let (kind, seq, used) = parse_header(line)?;
    let data = line.get(used..).unwrap_or_default();
    let data = data.strip_suffix(b"\r").unwrap_or(data);
    let skip = data.iter().position(|&b| !is_sep(b)).unwrap_or(data.len());
    Some(Line {
        kind,
        seq,
        data: data.get(skip..).unwrap_or_default(),
    })
}

/// The header of a whole line (without its `\n`): type, seq and the offset
/// just after the separator that ends the seq (the line's length when the
/// seq ends the line). `None` when the line is not well-formed.
#[inline(always)]
fn parse_header(line: &[u8]) -> Option<(Kind, u64, usize)> {
    if let Some((first, rest)) = line.split_first_chunk::<4>()
        && let Some(word) = rest.first_chunk::<8>()
        && let Some(decided) = quick(*first, u64::from_le_bytes(*word), line.len())
    {
        return decided;
    }
    let (kind, value, end) = match head(line) {
        Head::Digits { kind, value, end } => (kind, value, end),
        Head::Invalid => return None,
        Head::Unusual => {
            let kind = type_and_sep(*line.first_chunk::<4>()?)?;
            let digits = skip_seps(line, 4);
            let end = skip_digits(line, digits);
            if end == digits {
                return None;
            }
            (kind, seq_value(0, line.get(digits..end)?)?, end)
        }
    };
    match line.get(end) {
        None => Some((kind, value, end)),
        Some(&byte) if is_sep(byte) => Some((kind, value, end + 1)),
        Some(b'\r') if end + 1 == line.len() => Some((kind, value, end + 1)),
        Some(_) => None,
    }
}

/// The usual header (type, one separator, one to seven digits and the byte
/// after them) decided from a line's first twelve bytes read as two words,
/// `first` and `word`; `len` is the line's length (at least twelve).
/// `None` when the loops must decide.
#[inline(always)]
fn quick(first: [u8; 4], word: u64, len: usize) -> Option<Option<(Kind, u64, usize)>> {
    let n = leading_digits(word);
    if !(1..=7).contains(&n) {
        return None;
    }
    let Some(kind) = type_and_sep(first) else {
        return Some(None);
    };
    let next = (word >> (8 * n)) as u8;
    let end = 4 + n;
    let ends = is_sep(next) || (next == b'\r' && end + 1 == len);
    Some(ends.then(|| (kind, digits_value(word, n), end + 1)))
}

/// What the first twelve bytes of a frame say, read as two words.
enum Head {
    /// The type is wrong: the frame is invalid whatever follows.
    Invalid,
    /// Type, one separator and one to seven digits ending at `end` (the
    /// bytes from `end` on are not looked at).
    Digits { kind: Kind, value: u64, end: usize },
    /// Anything else (fewer than four bytes, several separators, no digit,
    /// eight digits or more): the byte loops decide.
    Unusual,
}

/// Reads the usual header in a few word operations, branching only on
/// the outcome. `bytes` may be a whole line or the start of one.
#[inline(always)]
fn head(bytes: &[u8]) -> Head {
    let Some((first, next)) = head_words(bytes) else {
        return Head::Unusual;
    };
    let Some(kind) = type_and_sep(first) else {
        return Head::Invalid;
    };
    match leading_digits(next) {
        n @ 1..=7 => Head::Digits {
            kind,
            value: digits_value(next, n),
            end: 4 + n,
        },
        _ => Head::Unusual,
    }
}

/// Bytes 0 to 3 and 4 to 11 of `bytes`, zero past its end (a zero byte is
/// neither a digit, a separator nor `\r`); `None` below four bytes.
#[inline(always)]
fn head_words(bytes: &[u8]) -> Option<([u8; 4], u64)> {
    let (first, rest) = bytes.split_first_chunk::<4>()?;
    Some((*first, first_word(rest)))
}

/// The first eight bytes of `bytes` as a little-endian word, zero past its
/// end.
#[inline(always)]
fn first_word(bytes: &[u8]) -> u64 {
    if let Some(word) = bytes.first_chunk::<8>() {
        return u64::from_le_bytes(*word);
    }
    match (bytes.first_chunk::<4>(), bytes.last_chunk::<4>()) {
        // Four to seven bytes: two overlapping loads.
        (Some(low), Some(high)) => {
            let low = u64::from(u32::from_le_bytes(*low));
            let high = u64::from(u32::from_le_bytes(*high));
            low | high << (8 * (bytes.len() - 4))
        }
        _ => bytes
            .iter()
            .rev()
            .fold(0, |word, &byte| word << 8 | u64::from(byte)),
    }
}

/// How many of the word's bytes, from the first, are ASCII digits (0 to 8).
#[inline(always)]
fn leading_digits(word: u64) -> usize {
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let low = word & !HIGH;
    // Adding to the low seven bits never carries into the next byte, so
    // each byte's high bit answers "at least 0x30" and "at least 0x3a".
    let at_least_0 = low + 0x5050_5050_5050_5050;
    let past_9 = low + 0x4646_4646_4646_4646;
    let digit = at_least_0 & !past_9 & !word & HIGH;
    (!digit & HIGH).trailing_zeros() as usize / 8
}

/// The value of the first `n` (1 to 8) bytes of `word`, all digits: the
/// digits moved to the top (zeros below are leading zeros), then pairs,
/// quads and octets combined in three multiplies.
#[inline(always)]
fn digits_value(word: u64, n: usize) -> u64 {
    // Borrows from the bytes after the digits only go up, and are shifted out.
    let v = word.wrapping_sub(0x3030_3030_3030_3030) << (8 * (8 - n));
    let v = (v.wrapping_mul(10).wrapping_add(v >> 8)) & 0x00ff_00ff_00ff_00ff;
    let v = (v.wrapping_mul(100).wrapping_add(v >> 16)) & 0x0000_ffff_0000_ffff;
    (v.wrapping_mul(10_000).wrapping_add(v >> 32)) & 0xffff_ffff
}

/// Where the scanner is inside a frame that began in an earlier read. The
/// header is decided (`Data` or `Skip`) long before the frame ends in the
/// usual case; a short start of a frame is kept raw (`Head`), and the
/// byte-wise states serve headers longer than that.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// At the first byte of a frame.
    Start,
    /// The first `len` (1 to 15) bytes of a frame whose header may not be
    /// decided yet, kept raw at the end of `tail`: when the frame's line is
    /// complete they are read again with it, as one header, by the same
    /// code as any other line (no state to dispatch on, and so few branches
    /// to mispredict at every short read).
    Head { tail: [u8; 16], len: u8 },
    /// Matched `matched` letters (1 to 3) of the type name; after all three
    /// a space or tab must follow.
    Type { kind: Kind, matched: u8 },
    /// Inside the separator; a digit must come next.
    Sep(Kind),
    /// Inside the seq; `value` so far (it always fits: overflow is `Skip`).
    Seq { kind: Kind, value: u64 },
    /// Seq followed by `\r`; only `\n` may come next.
    SeqCr { kind: Kind, value: u64 },
    /// Header was valid; everything up to `\n` is opaque data.
    Data { kind: Kind, seq: u64 },
    /// Header was invalid; skip to `\n`.
    Skip,
}

/// Scanner state for one direction of one connection: four words.
#[derive(Clone, Copy, Debug)]
pub struct Scanner {
    direction: Direction,
    state: State,
}

impl Scanner {
    pub fn new(direction: Direction) -> Self {
        Scanner {
            direction,
            state: State::Start,
        }
    }

    pub fn direction(&self) -> Direction {
        self.direction
    }

    /// True when the scanner sits between frames (no partial frame pending).
    pub fn at_frame_start(&self) -> bool {
        self.state == State::Start
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
        let mut pending = self.state != State::Start;
        let mut start = 0;
        let state = &self.state;
        for_each_newline(
            bytes,
            #[inline(always)]
            |newline| {
                let Some(line) = bytes.get(start..newline) else {
                    return;
                };
                let (frame, seq) = if pending {
                    pending = false;
                    finish(state, line, bytes, direction)
                } else {
                    classify(line, direction)
                };
                start = newline + 1;
                sink.frame(frame, seq, start);
            },
        );
        if !pending {
            self.state = State::Start;
        }
        carry(
            &mut self.state,
            bytes.get(start..).unwrap_or_default(),
            bytes,
        );
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
fn finish(carried: &State, rest: &[u8], bytes: &[u8], direction: Direction) -> (Frame, u64) {
    let header = match *carried {
        State::Data { kind, seq } => Some((kind, seq)),
        State::Skip => None,
        State::Head { tail, len } => rejoin(tail, usize::from(len), rest, bytes),
        _ => match header(*carried, rest) {
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

/// The header of a line whose first `len` bytes were kept raw at the end
/// of `tail` and whose other bytes are `rest`, which starts `bytes`.
#[inline(always)]
fn rejoin(tail: [u8; 16], len: usize, rest: &[u8], bytes: &[u8]) -> Option<(Kind, u64)> {
    let kept = u128::from_le_bytes(tail) >> (8 * (16 - len));
    let window = (kept | first_16(bytes) << (8 * len)).to_le_bytes();
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
    let kept = tail.get(16 - len..).unwrap_or_default();
    match header(header(State::Start, kept), rest) {
        State::Seq { kind, value } | State::SeqCr { kind, value } => Some((kind, value)),
        State::Data { kind, seq } => Some((kind, seq)),
        _ => None,
    }
}

/// The first 16 bytes of `bytes`, zero past its end.
#[inline(always)]
fn first_16(bytes: &[u8]) -> u128 {
    match bytes.first_chunk::<16>() {
        Some(first) => u128::from_le_bytes(*first),
        None => bytes
            .iter()
            .rev()
            .fold(0, |word, &byte| word << 8 | u128::from(byte)),
    }
}

/// Advances `state`, the state at the start of `rest`, over `rest`: the
/// bytes after this read's last newline (the whole read, `bytes`, when it
/// had none). Written in place, and not at all when a decided header just
/// goes on.
#[inline(always)]
fn carry(state: &mut State, rest: &[u8], bytes: &[u8]) {
    if rest.is_empty() {
        return;
    }
    match *state {
        State::Data { .. } | State::Skip => {}
        State::Start if rest.len() < 16 => *state = keep(rest, bytes),
        State::Start => *state = begin(rest),
        State::Head { tail, len } => {
            let len = usize::from(len);
            *state = if len + rest.len() < 16 {
                // Still short: shift the kept bytes down and add these.
                let kept = u128::from_le_bytes(tail) >> (8 * rest.len());
                match keep(rest, bytes) {
                    State::Head { tail: new, .. } => State::Head {
                        tail: (kept | u128::from_le_bytes(new)).to_le_bytes(),
                        len: (len + rest.len()) as u8,
                    },
                    other => other,
                }
            } else {
                // Sixteen bytes of the frame now: read them as its start.
                let kept = u128::from_le_bytes(tail) >> (8 * (16 - len));
                let window = (kept | first_16(rest) << (8 * len)).to_le_bytes();
                header(begin(&window), rest.get(16 - len..).unwrap_or_default())
            };
        }
        other => *state = header(other, rest),
    }
}

/// `rest` (1 to 15 bytes, the end of `bytes`) kept raw at the end of a
/// 16-byte array: the last 16 bytes of the read when there are that many.
#[inline(always)]
fn keep(rest: &[u8], bytes: &[u8]) -> State {
    let tail = match bytes.last_chunk::<16>() {
        Some(last) => u128::from_le_bytes(*last) & (u128::MAX << (8 * (16 - rest.len()))),
        None => rest
            .iter()
            .fold(0, |word, &byte| word >> 8 | u128::from(byte) << 120),
    };
    State::Head {
        tail: tail.to_le_bytes(),
        len: rest.len() as u8,
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

fn is_sep(byte: u8) -> bool {
    byte == b' ' || byte == b'\t'
}

/// The offset of the first byte at or after `from` that is not a separator.
#[inline(always)]
fn skip_seps(bytes: &[u8], mut from: usize) -> usize {
    while bytes.get(from).copied().is_some_and(is_sep) {
        from += 1;
    }
    from
}

/// The offset of the first byte at or after `from` that is not a digit.
#[inline(always)]
fn skip_digits(bytes: &[u8], mut from: usize) -> usize {
    while bytes.get(from).is_some_and(u8::is_ascii_digit) {
        from += 1;
    }
    from
}

/// `value` followed by the decimal digits `run`, or `None` past `u64::MAX`.
#[inline(always)]
fn seq_value(value: u64, run: &[u8]) -> Option<u64> {
    run.iter().try_fold(value, |v, &d| {
        v.checked_mul(10)?
            .checked_add(u64::from(d.wrapping_sub(b'0')))
    })
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

/// The type of a frame whose first four bytes are a type name and a
/// separator, in one 32-bit compare per type.
#[inline(always)]
fn type_and_sep(first: [u8; 4]) -> Option<Kind> {
    const REQ: u32 = u32::from_le_bytes(*b"REQ\0");
    const ACK: u32 = u32::from_le_bytes(*b"ACK\0");
    const NAK: u32 = u32::from_le_bytes(*b"NAK\0");
    let [.., sep] = first;
    if !is_sep(sep) {
        return None;
    }
    match u32::from_le_bytes(first) & 0x00ff_ffff {
        REQ => Some(Kind::Req),
        ACK => Some(Kind::Ack),
        NAK => Some(Kind::Nak),
        _ => None,
    }
}

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

/// Bytes searched at once for newlines.
const BLOCK: usize = 64;

/// Calls `found` with the offset of every `\n` in `bytes`, in order.
///
/// Each 64-byte block becomes a 64-bit mask of its newlines, so the next
/// newline is a `trailing_zeros` away. A block without any newline means a
/// long frame: `memchr`'s wide loop finds its end.
#[inline(always)]
fn for_each_newline(bytes: &[u8], mut found: impl FnMut(usize)) {
    let mut base = 0;
    while let Some(block) = bytes.get(base..).and_then(<[u8]>::first_chunk::<BLOCK>) {
        let mut mask = newline_mask(block);
        if mask == 0 {
            let after = base + BLOCK;
            match memchr::memchr(b'\n', bytes.get(after..).unwrap_or_default()) {
                Some(at) => {
                    found(after + at);
                    base = after + at + 1;
                    continue;
                }
                None => return,
            }
        }
        while mask != 0 {
            found(base + mask.trailing_zeros() as usize);
            mask &= mask - 1;
        }
        base += BLOCK;
    }
    let rest = bytes.len().saturating_sub(base);
    if rest == 0 {
        return;
    }
    // The last partial block: the last 64 bytes when there are that many
    // (the bits already seen shifted out), else a short mask.
    let last = bytes
        .len()
        .checked_sub(BLOCK)
        .and_then(|from| bytes.get(from..))
        .and_then(<[u8]>::first_chunk::<BLOCK>);
    let mut mask = match last {
        Some(last) => newline_mask(last) >> (BLOCK - rest),
        None => short_mask(bytes.get(base..).unwrap_or_default()),
    };
    while mask != 0 {
        found(base + mask.trailing_zeros() as usize);
        mask &= mask - 1;
    }
}

/// Bit `i` set when `block[i]` is `\n`.
#[inline(always)]
fn newline_mask(block: &[u8; BLOCK]) -> u64 {
    let (pieces, _) = block.as_chunks::<16>();
    let mut mask = 0;
    for (k, piece) in pieces.iter().enumerate() {
        mask |= piece_mask(piece) << (16 * k);
    }
    mask
}

/// [`newline_mask`] of fewer than 64 bytes (a short read). Short reads
/// come in every length, so this does not branch on it beyond three size
/// classes: four 16-byte pieces, the ones past the end slid back to end at
/// the end (their bits are seen twice); two words; or byte by byte.
#[inline(always)]
fn short_mask(bytes: &[u8]) -> u64 {
    let len = bytes.len();
    if let Some(last) = len.checked_sub(16) {
        let mut mask = 0;
        for k in 0..4 {
            let at = (16 * k).min(last);
            if let Some(piece) = bytes.get(at..).and_then(<[u8]>::first_chunk::<16>) {
                mask |= piece_mask(piece) << at;
            }
        }
        return mask;
    }
    match (bytes.first_chunk::<8>(), bytes.last_chunk::<8>()) {
        (Some(first), Some(last)) => {
            word_mask(u64::from_le_bytes(*first))
                | word_mask(u64::from_le_bytes(*last)) << (len - 8)
        }
        _ => bytes
            .iter()
            .enumerate()
            .fold(0, |m, (i, &b)| m | (u64::from(b == b'\n') << i)),
    }
}

/// Bit `i` (0 to 15) set when `piece[i]` is `\n`: SSE2's byte compare and
/// `pmovmskb` (through `safe_arch`, so this crate keeps forbidding
/// `unsafe`), about four times fewer instructions than [`portable_piece_mask`].
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
#[inline(always)]
fn piece_mask(piece: &[u8; 16]) -> u64 {
    use safe_arch::{
        cmp_eq_mask_i8_m128i, load_unaligned_m128i, move_mask_i8_m128i, set_splat_i8_m128i,
    };
    let hits = cmp_eq_mask_i8_m128i(load_unaligned_m128i(piece), set_splat_i8_m128i(b'\n' as i8));
    u64::from(move_mask_i8_m128i(hits) as u16)
}

#[cfg(not(all(target_arch = "x86_64", target_feature = "sse2")))]
#[inline(always)]
fn piece_mask(piece: &[u8; 16]) -> u64 {
    portable_piece_mask(piece)
}

/// [`piece_mask`] in plain integer arithmetic, for other targets (and the
/// tests, which hold the two together).
#[cfg_attr(
    all(target_arch = "x86_64", target_feature = "sse2", not(test)),
    allow(dead_code)
)]
#[inline(always)]
fn portable_piece_mask(piece: &[u8; 16]) -> u64 {
    let (words, _) = piece.as_chunks::<8>();
    let mut mask = 0;
    for (k, word) in words.iter().enumerate() {
        mask |= word_mask(u64::from_le_bytes(*word)) << (8 * k);
    }
    mask
}

/// Bit `j` (0 to 7) set when byte `j` of `word` (little-endian) is `\n`.
#[inline(always)]
fn word_mask(word: u64) -> u64 {
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let x = word ^ 0x0a0a_0a0a_0a0a_0a0a;
    // High bit of each byte set when the byte of `x` is zero; adding to the
    // low seven bits never carries into the next byte, so this is exact.
    let zero = !(((x & !HIGH) + !HIGH) | x) & HIGH;
    // The multiply moves bit 8j + 7 to bit 56 + j.
    zero.wrapping_mul(0x0002_0408_1020_4081) >> 56
}

/// One-shot classification of a single line (without its `\n`), written
/// plainly. It is the reference the incremental scanner is tested against.
pub fn classify_line(line: &[u8], direction: Direction) -> Frame {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let (kind, rest) = match line.split_at_checked(3) {
        Some((b"REQ", rest)) => (Kind::Req, rest),
        Some((b"ACK", rest)) => (Kind::Ack, rest),
        Some((b"NAK", rest)) => (Kind::Nak, rest),
        _ => return Frame::Invalid,
    };
    let is_sep = |b: &u8| *b == b' ' || *b == b'\t';
    let after_sep = match rest.iter().position(|b| !is_sep(b)) {
        Some(0) | None => return Frame::Invalid,
        Some(n) => rest.get(n..).unwrap_or_default(),
    };
    let digits = after_sep
        .iter()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(after_sep.len());
    let (seq, tail) = after_sep.split_at(digits);
    let seq_ok = std::str::from_utf8(seq)
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .is_some();
    let tail_ok = tail.first().is_none_or(is_sep);
    if !seq_ok || !tail_ok {
        return Frame::Invalid;
    }
    let legal = match direction {
        Direction::ClientToServer => kind == Kind::Req,
        Direction::ServerToClient => kind != Kind::Req,
    };
    if legal { kind.frame() } else { Frame::Invalid }
}

/// Counts the frames of a whole stream with [`classify_line`]; bytes after the
/// last newline form no frame.
pub fn count_reference(stream: &[u8], direction: Direction) -> FrameCounts {
    let mut counts = FrameCounts::default();
    let mut lines: Vec<&[u8]> = stream.split(|b| *b == b'\n').collect();
    lines.pop();
    for line in lines {
        counts.add(classify_line(line, direction));
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;
    use Direction::{ClientToServer as C2S, ServerToClient as S2C};
    use proptest::prelude::*;

    fn one(line: &[u8], direction: Direction) -> Frame {
        let mut scanner = Scanner::new(direction);
        let mut counts = FrameCounts::default();
        scanner.scan(line, &mut counts);
        assert_eq!(counts.lines(), 1, "expected one frame in {line:?}");
        assert!(scanner.at_frame_start());
        [Frame::Req, Frame::Ack, Frame::Nak, Frame::Invalid]
            .into_iter()
            .zip([counts.req, counts.ack, counts.nak, counts.invalid])
            .find(|(_, n)| *n == 1)
            .map(|(f, _)| f)
            .unwrap_or(Frame::Invalid)
    }

    #[test]
    fn classification_table() {
        let table: &[(&[u8], Direction, Frame)] = &[
            (b"REQ 1 Hey\n", C2S, Frame::Req),
            (b"REQ 1 Hey there with spaces\n", C2S, Frame::Req),
            (b"REQ 2\n", C2S, Frame::Req),
            (b"REQ\t3\tdata\n", C2S, Frame::Req),
            (b"REQ  \t 4 \t data\n", C2S, Frame::Req),
            (b"REQ 5\r\n", C2S, Frame::Req),
            (b"REQ 5 data\r\n", C2S, Frame::Req),
            (b"REQ 6 \xff\xfe not utf8\n", C2S, Frame::Req),
            (b"REQ 18446744073709551615\n", C2S, Frame::Req),
            (b"REQ 18446744073709551615 data\n", C2S, Frame::Req),
            (b"REQ 9999999999999999999 data\n", C2S, Frame::Req),
            (b"REQ 00000000000000000000001 data\n", C2S, Frame::Req),
            (b"ACK 1 Hello\n", S2C, Frame::Ack),
            (b"ACK 2\n", S2C, Frame::Ack),
            (b"NAK 5 Stop it\n", S2C, Frame::Nak),
            (b"NAK\t0\tERRDECODE\r\n", S2C, Frame::Nak),
            // malformed
            (b"REQ\n", C2S, Frame::Invalid),
            (b"REQ \n", C2S, Frame::Invalid),
            (b"REQ x\n", C2S, Frame::Invalid),
            (b"REQ -1\n", C2S, Frame::Invalid),
            (b"REQ 1x\n", C2S, Frame::Invalid),
            (b"REQ1 data\n", C2S, Frame::Invalid),
            (b"REQ 1234567890123456789012345\n", C2S, Frame::Invalid),
            (b"REQ 18446744073709551616\n", C2S, Frame::Invalid),
            (b"REQ 18446744073709551616 data\n", C2S, Frame::Invalid),
            (b"REQ 1\rx\n", C2S, Frame::Invalid),
            (b"REQ 1\r\r\n", C2S, Frame::Invalid),
            (b"req 1\n", C2S, Frame::Invalid),
            (b" REQ 1\n", C2S, Frame::Invalid),
            (b"\n", C2S, Frame::Invalid),
            (b"\r\n", C2S, Frame::Invalid),
            (b"R\n", C2S, Frame::Invalid),
            (b"RE\n", C2S, Frame::Invalid),
            (b"AC\n", S2C, Frame::Invalid),
            (b"\x00\x01\xff\x80garbage\n", C2S, Frame::Invalid),
            (b"\x00\x01\xff\x80garbage\n", S2C, Frame::Invalid),
            (b"RAQ 1\n", C2S, Frame::Invalid),
            (b"NAKK 1\n", S2C, Frame::Invalid),
            // wrong direction
            (b"REQ 1 hi\n", S2C, Frame::Invalid),
            (b"ACK 1 hi\n", C2S, Frame::Invalid),
            (b"NAK 1\n", C2S, Frame::Invalid),
        ];
        for (line, direction, expected) in table {
            assert_eq!(
                one(line, *direction),
                *expected,
                "scanner: {:?} {direction:?}",
                String::from_utf8_lossy(line)
            );
            let body = line.strip_suffix(b"\n").unwrap_or(line);
            assert_eq!(
                classify_line(body, *direction),
                *expected,
                "reference: {:?} {direction:?}",
                String::from_utf8_lossy(line)
            );
        }
    }

    #[test]
    fn bytes_after_last_newline_form_no_frame() {
        let mut scanner = Scanner::new(C2S);
        let mut counts = FrameCounts::default();
        scanner.scan(b"REQ 1 a\nREQ 2 partial", &mut counts);
        assert_eq!(counts.req, 1);
        assert_eq!(counts.lines(), 1);
        assert!(!scanner.at_frame_start());
        scanner.scan(b" more\n", &mut counts);
        assert_eq!(counts.req, 2);
    }

    #[test]
    fn a_long_frame_needs_no_buffering() {
        let mut scanner = Scanner::new(S2C);
        let mut counts = FrameCounts::default();
        scanner.scan(b"ACK 7 ", &mut counts);
        let chunk = vec![b'x'; 1 << 16];
        for _ in 0..64 {
            scanner.scan(&chunk, &mut counts);
        }
        assert_eq!(counts.lines(), 0);
        scanner.scan(b"\nNAK 8\n", &mut counts);
        assert_eq!((counts.ack, counts.nak, counts.invalid), (1, 1, 0));
    }

    fn frame_strategy() -> impl Strategy<Value = Vec<u8>> {
        let header = prop_oneof![
            Just(b"REQ".to_vec()),
            Just(b"ACK".to_vec()),
            Just(b"NAK".to_vec()),
            Just(b"RE".to_vec()),
            Just(b"XYZ".to_vec()),
            Just(Vec::new()),
        ];
        let sep = prop_oneof![
            Just(b" ".to_vec()),
            Just(b"\t".to_vec()),
            Just(b" \t ".to_vec()),
            Just(Vec::new()),
        ];
        let seq = prop_oneof![
            "[0-9]{1,3}".prop_map(String::into_bytes),
            "[0-9]{19,21}".prop_map(String::into_bytes),
            Just(b"-1".to_vec()),
            Just(Vec::new()),
        ];
        let data = proptest::collection::vec(any::<u8>(), 0..12);
        let end = prop_oneof![Just(b"\n".to_vec()), Just(b"\r\n".to_vec())];
        (header, sep.clone(), seq, sep, data, end).prop_map(|(h, s1, q, s2, d, e)| {
            let mut v = h;
            v.extend(s1);
            v.extend(q);
            v.extend(s2);
            v.extend(d);
            v.extend(e);
            v
        })
    }

    fn stream_strategy() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            proptest::collection::vec(frame_strategy(), 0..40).prop_map(|f| f.concat()),
            proptest::collection::vec(any::<u8>(), 0..400),
        ]
    }

    proptest! {
        #[test]
        fn counts_do_not_depend_on_chunking(
            stream in stream_strategy(),
            cuts in proptest::collection::vec(any::<usize>(), 0..30),
            c2s in any::<bool>(),
        ) {
            let direction = if c2s { C2S } else { S2C };
            let mut whole = FrameCounts::default();
            Scanner::new(direction).scan(&stream, &mut whole);

            let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (stream.len() + 1)).collect();
            cuts.sort_unstable();
            let mut chunked = FrameCounts::default();
            let mut scanner = Scanner::new(direction);
            let mut from = 0;
            for cut in cuts.into_iter().chain([stream.len()]) {
                scanner.scan(&stream[from..cut], &mut chunked);
                from = cut;
            }
            prop_assert_eq!(whole, chunked);
            prop_assert_eq!(whole, count_reference(&stream, direction));
        }
    }

    /// Every frame `scan` reports, with `end` made absolute.
    #[derive(Default)]
    struct Events {
        seen: Vec<(Frame, u64, usize)>,
        offset: usize,
    }

    impl FrameSink for Events {
        fn frame(&mut self, frame: Frame, seq: u64, end: usize) {
            self.seen.push((frame, seq, self.offset + end));
        }
    }

    /// Scans `stream` cut at `cuts` (ascending offsets), returning the events
    /// and whether the scanner ended between frames.
    fn events(
        stream: &[u8],
        cuts: &[usize],
        direction: Direction,
    ) -> (Vec<(Frame, u64, usize)>, bool) {
        let mut scanner = Scanner::new(direction);
        let mut sink = Events::default();
        let mut from = 0;
        for &cut in cuts.iter().chain([&stream.len()]) {
            sink.offset = from;
            scanner.scan(&stream[from..cut], &mut sink);
            from = cut;
        }
        (sink.seen, scanner.at_frame_start())
    }

    /// The events a plain reading of `stream` gives: the reference class of
    /// each line, its seq parsed by `str::parse` when well-formed, and the
    /// offset past its newline.
    fn expected_events(stream: &[u8], direction: Direction) -> Vec<(Frame, u64, usize)> {
        let mut out = Vec::new();
        let mut end = 0;
        let mut lines: Vec<&[u8]> = stream.split(|b| *b == b'\n').collect();
        lines.pop();
        for line in lines {
            end += line.len() + 1;
            let frame = classify_line(line, direction);
            let seq = match frame {
                Frame::Invalid => 0,
                _ => {
                    let text = String::from_utf8_lossy(&line[3..]);
                    let digits: String = text
                        .trim_start_matches([' ', '\t'])
                        .chars()
                        .take_while(char::is_ascii_digit)
                        .collect();
                    digits.parse().unwrap()
                }
            };
            out.push((frame, seq, end));
        }
        out
    }

    const SAMPLES: &[&[u8]] = &[
        b"REQ 1 Hey\nREQ 22\nREQ 333 data with spaces\n",
        b"REQ 5\r\nREQ 6 data\r\nREQ 7\r\r\nREQ 8\rx\n",
        b"REQ 18446744073709551615\nREQ 18446744073709551616\nREQ 01844674407370955161 x\n",
        b"REQ 00000000000000000000000000000000000000042 x\nREQ  \t 9\t\tdata\n",
        b"\n\n\r\n\nREQ\nREQ \nRE\nR\n",
        b"ACK 1 Hello\nNAK 2\nACK\t3\t\nREQ 4 wrong way\nNAK 99999999 x\n",
        b"REQ 1234567 a\nREQ 12345678 b\nREQ 123456789 c\nREQ 1 \xff\xfe\n",
    ];

    #[test]
    fn a_frame_split_at_every_offset_gives_the_same_events() {
        for stream in SAMPLES {
            for direction in [C2S, S2C] {
                let want = expected_events(stream, direction);
                assert_eq!(events(stream, &[], direction).0, want, "whole {stream:?}");
                for i in 0..=stream.len() {
                    assert_eq!(events(stream, &[i], direction).0, want, "cut at {i}");
                }
                // Two cuts anywhere: every header state meets every other.
                for i in 0..=stream.len() {
                    for j in i..=stream.len().min(i + 24) {
                        assert_eq!(events(stream, &[i, j], direction).0, want, "cuts {i} {j}");
                    }
                }
                let bytes: Vec<usize> = (1..stream.len()).collect();
                assert_eq!(
                    events(stream, &bytes, direction).0,
                    want,
                    "one byte at a time"
                );
            }
        }
    }

    #[test]
    fn crlf_ends_a_frame_only_right_before_the_newline() {
        let (seen, _) = events(
            b"REQ 5\r\nREQ 6 data\r\nREQ 7\r\r\nREQ 8\rx\nREQ 9 \r\n",
            &[],
            C2S,
        );
        let frames: Vec<Frame> = seen.iter().map(|e| e.0).collect();
        use Frame::{Invalid, Req};
        assert_eq!(frames, [Req, Req, Invalid, Invalid, Req]);
        // The \r at the end of one read, the \n at the start of the next.
        assert_eq!(events(b"REQ 5\r\n", &[6], C2S).0, [(Req, 5, 7)]);
        assert_eq!(events(b"REQ 5\r\r\n", &[6], C2S).0, [(Invalid, 0, 8)]);
    }

    #[test]
    fn a_seq_of_twenty_digits_is_valid_up_to_u64_max() {
        let stream =
            b"REQ 18446744073709551615 x\nREQ 18446744073709551616 x\nREQ 99999999999999999999\n";
        let want = [
            (Frame::Req, u64::MAX, 27),
            (Frame::Invalid, 0, 54),
            (Frame::Invalid, 0, 79),
        ];
        for i in 0..=stream.len() {
            assert_eq!(events(stream, &[i], C2S).0, want, "cut at {i}");
        }
        assert_eq!(
            parse_line(b"REQ 18446744073709551615").map(|l| l.seq),
            Some(u64::MAX)
        );
        assert_eq!(parse_line(b"REQ 18446744073709551616"), None);
    }

    #[test]
    fn empty_lines_are_invalid_frames() {
        let (seen, between) = events(b"\n\r\n\n", &[], C2S);
        assert_eq!(
            seen,
            [
                (Frame::Invalid, 0, 1),
                (Frame::Invalid, 0, 3),
                (Frame::Invalid, 0, 4)
            ]
        );
        assert!(between);
    }

    #[test]
    fn a_read_of_only_newlines_is_one_invalid_frame_per_byte() {
        for len in [1, 7, 8, 15, 16, 63, 64, 65, 127, 128, 129, 1000] {
            let stream = vec![b'\n'; len];
            let (seen, between) = events(&stream, &[], S2C);
            let want: Vec<_> = (1..=len).map(|end| (Frame::Invalid, 0, end)).collect();
            assert_eq!(seen, want, "{len} newlines");
            assert!(between);
        }
    }

    #[test]
    fn a_frame_start_at_a_read_or_block_boundary_is_seen() {
        // A read that ends exactly at a newline: the next read starts a frame.
        assert_eq!(
            events(b"REQ 1 a\nREQ 2 b\n", &[8], C2S).0,
            [(Frame::Req, 1, 8), (Frame::Req, 2, 16)]
        );
        // Newlines at and around the 64-byte block edges, frames longer than
        // a block (the memchr path), and reads whose last block overlaps.
        for newline_at in [62usize, 63, 64, 65, 127, 128, 200] {
            for total in [
                newline_at + 1,
                newline_at + 9,
                newline_at + 64,
                newline_at + 70,
            ] {
                let mut stream = b"REQ 77 ".to_vec();
                stream.resize(newline_at, b'x');
                stream.push(b'\n');
                stream.extend_from_slice(b"REQ 78 ");
                stream.resize(total.max(stream.len()), b'y');
                stream.push(b'\n');
                let want = expected_events(&stream, C2S);
                assert_eq!(want.len(), 2);
                assert_eq!(events(&stream, &[], C2S).0, want, "newline at {newline_at}");
                for cut in [newline_at, newline_at + 1, 64, 65] {
                    let cut = cut.min(stream.len());
                    assert_eq!(events(&stream, &[cut], C2S).0, want, "cut at {cut}");
                }
            }
        }
    }

    #[test]
    fn events_carry_the_seq_and_the_end_of_each_frame() {
        let stream = b"ACK 5 x\nNAK 18446744073709551615\nREQ 3\nACK 12345678901 y\n";
        let (seen, _) = events(stream, &[3, 20], S2C);
        assert_eq!(
            seen,
            [
                (Frame::Ack, 5, 8),
                (Frame::Nak, u64::MAX, 33),
                (Frame::Invalid, 0, 39),
                (Frame::Ack, 12_345_678_901, 57),
            ]
        );
    }

    #[test]
    fn parse_line_gives_type_seq_and_data() {
        let line = parse_line(b"NAK\t0\t ERRDECODE\r").unwrap();
        assert_eq!(
            (line.kind, line.seq, line.data),
            (Kind::Nak, 0, &b"ERRDECODE"[..])
        );
        let line = parse_line(b"REQ 1234567 abc").unwrap();
        assert_eq!(
            (line.kind, line.seq, line.data),
            (Kind::Req, 1_234_567, &b"abc"[..])
        );
        assert_eq!(parse_line(b"ACK 7").unwrap().data, b"");
        for bad in [
            &b""[..],
            b"REQ",
            b"REQ ",
            b"REQ x",
            b"REQ 1x",
            b"REQ1 2",
            b"REQ 1\r\r",
        ] {
            assert_eq!(parse_line(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_scanner_stays_four_words() {
        // Two per pair, for every pair: the raw partial header must not grow it.
        assert!(std::mem::size_of::<Scanner>() <= 32);
    }

    #[test]
    fn the_portable_newline_mask_matches_the_sse2_one() {
        let mut piece = [b'x'; 16];
        for i in 0..16 {
            piece[i] = b'\n';
            assert_eq!(portable_piece_mask(&piece), piece_mask(&piece));
            assert_eq!(piece_mask(&piece) & (1 << i), 1 << i);
            piece[(i * 7) % 16] = 0x8a; // \n with the high bit set
            assert_eq!(portable_piece_mask(&piece), piece_mask(&piece));
        }
        assert_eq!(piece_mask(&[b'\n'; 16]), 0xffff);
        assert_eq!(portable_piece_mask(&[0x0b; 16]), 0);
    }

    proptest! {
        #[test]
        fn events_do_not_depend_on_chunking(
            stream in stream_strategy(),
            cuts in proptest::collection::vec(any::<usize>(), 0..30),
            c2s in any::<bool>(),
        ) {
            let direction = if c2s { C2S } else { S2C };
            let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (stream.len() + 1)).collect();
            cuts.sort_unstable();
            let (seen, between) = events(&stream, &cuts, direction);
            prop_assert_eq!(seen, expected_events(&stream, direction));
            prop_assert_eq!(between, stream.last().is_none_or(|&b| b == b'\n'));
        }

        #[test]
        fn the_newline_masks_find_every_newline(bytes in proptest::collection::vec(
            prop_oneof![Just(b'\n'), Just(0x8a), any::<u8>()], 0..300)) {
            let mut found = Vec::new();
            for_each_newline(&bytes, |at| found.push(at));
            let want: Vec<usize> = (0..bytes.len()).filter(|&i| bytes[i] == b'\n').collect();
            prop_assert_eq!(found, want);
        }
    }
}

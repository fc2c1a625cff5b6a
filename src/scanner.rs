//! Incremental Foo frame scanner.
//!
//! Pure: no I/O and no allocation. A [`Scanner`] is fed each read's bytes in
//! order and carries its state between calls, so a frame may span any number
//! of reads. It decides a frame's class from its first bytes (type, separator,
//! seq) and afterwards only searches for the newline, so the length of the
//! data part costs nothing but a `memchr`.

/// Which way the bytes flow; decides which message types are legal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Client to server: only `REQ` is well-formed.
    ClientToServer,
    /// Server to client: only `ACK` and `NAK` are well-formed.
    ServerToClient,
}

/// What a completed frame was.
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

    pub fn add(&mut self, frame: Frame) {
        match frame {
            Frame::Req => self.req += 1,
            Frame::Ack => self.ack += 1,
            Frame::Nak => self.nak += 1,
            Frame::Invalid => self.invalid += 1,
        }
    }
}

/// The message type being matched, letter by letter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Req,
    Ack,
    Nak,
}

impl Kind {
    fn name(self) -> &'static [u8; 3] {
        match self {
            Kind::Req => b"REQ",
            Kind::Ack => b"ACK",
            Kind::Nak => b"NAK",
        }
    }

    fn frame(self) -> Frame {
        match self {
            Kind::Req => Frame::Req,
            Kind::Ack => Frame::Ack,
            Kind::Nak => Frame::Nak,
        }
    }
}

/// Where the scanner is inside the current frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// At the first byte of a frame.
    Start,
    /// Matched `matched` letters (1 or 2) of the type name.
    Type { kind: Kind, matched: u8 },
    /// Type complete; at least one space or tab must follow.
    AfterType(Kind),
    /// Inside the separator; a digit must come next.
    Sep(Kind),
    /// Inside the seq; `value` guards against u64 overflow.
    Seq { kind: Kind, value: u64 },
    /// Seq followed by `\r`; only `\n` may come next.
    SeqCr(Kind),
    /// Header was valid; everything up to `\n` is opaque data.
    Data(Kind),
    /// Header was invalid; skip to `\n`.
    Skip,
}

/// Scanner state for one direction of one connection. Two words of state.
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

    /// Consumes `bytes`, adding each completed frame to `counts`.
    pub fn scan(&mut self, bytes: &[u8], counts: &mut FrameCounts) {
        let mut rest = bytes;
        while !rest.is_empty() {
            match self.state {
                State::Data(_) | State::Skip => match memchr::memchr(b'\n', rest) {
                    Some(pos) => {
                        let frame = self.finish();
                        counts.add(frame);
                        rest = rest.get(pos + 1..).unwrap_or_default();
                    }
                    None => return,
                },
                State::Start if let Some((state, used)) = fast_header(rest) => {
                    let body = rest.get(used..).unwrap_or_default();
                    // The common case, a whole frame in this chunk, in one go.
                    if let State::Data(kind) = state
                        && let Some(pos) = memchr::memchr(b'\n', body)
                    {
                        counts.add(self.classify(kind));
                        rest = body.get(pos + 1..).unwrap_or_default();
                        continue;
                    }
                    self.state = state;
                    rest = body;
                }
                _ => {
                    let Some((&byte, tail)) = rest.split_first() else {
                        return;
                    };
                    rest = tail;
                    if let Some(frame) = self.step(byte) {
                        counts.add(frame);
                    }
                }
            }
        }
    }

    /// Ends the current frame at a newline, returning its class.
    fn finish(&mut self) -> Frame {
        let frame = match self.state {
            State::Seq { kind, .. } | State::SeqCr(kind) | State::Data(kind) => self.classify(kind),
            _ => Frame::Invalid,
        };
        self.state = State::Start;
        frame
    }

    fn classify(&self, kind: Kind) -> Frame {
        let legal = match self.direction {
            Direction::ClientToServer => kind == Kind::Req,
            Direction::ServerToClient => kind != Kind::Req,
        };
        if legal { kind.frame() } else { Frame::Invalid }
    }

    /// Advances the header state machine by one byte.
    fn step(&mut self, byte: u8) -> Option<Frame> {
        if byte == b'\n' {
            return Some(self.finish());
        }
        self.state = match self.state {
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
            State::Type { kind, matched } => {
                let expected = kind.name().get(usize::from(matched)).copied();
                match (expected, matched) {
                    (Some(e), 2) if e == byte => State::AfterType(kind),
                    (Some(e), _) if e == byte => State::Type {
                        kind,
                        matched: matched + 1,
                    },
                    _ => State::Skip,
                }
            }
            State::AfterType(kind) | State::Sep(kind) => match byte {
                b' ' | b'\t' => State::Sep(kind),
                b'0'..=b'9' if matches!(self.state, State::Sep(_)) => State::Seq {
                    kind,
                    value: u64::from(byte - b'0'),
                },
                _ => State::Skip,
            },
            State::Seq { kind, value } => match byte {
                b'0'..=b'9' => match value
                    .checked_mul(10)
                    .and_then(|v| v.checked_add(u64::from(byte - b'0')))
                {
                    Some(value) => State::Seq { kind, value },
                    None => State::Skip,
                },
                b' ' | b'\t' => State::Data(kind),
                b'\r' => State::SeqCr(kind),
                _ => State::Skip,
            },
            // `\r` not followed by `\n` after the seq is neither end nor separator.
            State::SeqCr(_) => State::Skip,
            State::Data(kind) => State::Data(kind),
            State::Skip => State::Skip,
        };
        None
    }
}

fn is_sep(byte: u8) -> bool {
    byte == b' ' || byte == b'\t'
}

/// Fast path at the start of a frame: reads the type, separator and seq
/// straight from the slice and returns the state reached and the bytes
/// used. `None` (not a known type) leaves the byte-wise machine to decide.
/// Whatever it returns is exactly where `step` would have been after the
/// same bytes, so chunking cannot change the result.
#[inline]
fn fast_header(bytes: &[u8]) -> Option<(State, usize)> {
    let kind = match bytes.get(..4)? {
        [b'R', b'E', b'Q', sep] if is_sep(*sep) => Kind::Req,
        [b'A', b'C', b'K', sep] if is_sep(*sep) => Kind::Ack,
        [b'N', b'A', b'K', sep] if is_sep(*sep) => Kind::Nak,
        _ => return None,
    };
    let mut i = 4;
    while bytes.get(i).copied().is_some_and(is_sep) {
        i += 1;
    }
    let digits = i;
    while bytes.get(i).is_some_and(u8::is_ascii_digit) {
        i += 1;
    }
    if i == digits {
        return Some((State::Sep(kind), i));
    }
    // The seq's value only matters for overflow, and 19 digits always fit
    // in a u64: the common frame needs no arithmetic at all.
    let value = || seq_value(bytes.get(digits..i).unwrap_or_default());
    match bytes.get(i) {
        Some(&byte) if is_sep(byte) => {
            if i - digits > MAX_SAFE_DIGITS && value().is_none() {
                return Some((State::Skip, i));
            }
            Some((State::Data(kind), i + 1))
        }
        _ => match value() {
            Some(value) => Some((State::Seq { kind, value }, i)),
            None => Some((State::Skip, i)),
        },
    }
}

/// Any run of this many decimal digits fits in a u64.
const MAX_SAFE_DIGITS: usize = 19;

/// The value of a run of ASCII digits, or `None` when it overflows a u64.
fn seq_value(digits: &[u8]) -> Option<u64> {
    digits.iter().try_fold(0u64, |value, &byte| {
        value
            .checked_mul(10)?
            .checked_add(u64::from(byte.wrapping_sub(b'0')))
    })
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
}

//! The Foo line grammar, the one source of it: a line's type, separators
//! and seq, read a word at a time ([`parse_line`] for a whole line; the
//! scanner applies the same functions at each frame start). Pure.

use super::{Direction, Frame};

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

    pub(super) fn frame(self) -> Frame {
        match self {
            Kind::Req => Frame::Req,
            Kind::Ack => Frame::Ack,
            Kind::Nak => Frame::Nak,
        }
    }

    pub(super) fn legal(self, direction: Direction) -> bool {
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
/// This is the grammar [`Scanner::scan`](crate::scanner::Scanner::scan) applies at each frame start (the
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
pub(super) fn parse_header(line: &[u8]) -> Option<(Kind, u64, usize)> {
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
pub(super) fn quick(first: [u8; 4], word: u64, len: usize) -> Option<Option<(Kind, u64, usize)>> {
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
pub(super) enum Head {
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
pub(super) fn head(bytes: &[u8]) -> Head {
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
pub(super) fn first_word(bytes: &[u8]) -> u64 {
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
        // One to three bytes: the first, the middle and the last (they
        // overlap below three), so no loop runs for a short read.
        _ => match (bytes.first(), bytes.get(bytes.len() / 2), bytes.last()) {
            (Some(&first), Some(&middle), Some(&last)) => {
                u64::from(first)
                    | u64::from(middle) << (8 * (bytes.len() / 2))
                    | u64::from(last) << (8 * (bytes.len() - 1))
            }
            _ => 0,
        },
    }
}

/// How many of the word's bytes, from the first, are ASCII digits (0 to 8).
#[inline(always)]
pub(super) fn leading_digits(word: u64) -> usize {
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
pub(super) fn digits_value(word: u64, n: usize) -> u64 {
    // Borrows from the bytes after the digits only go up, and are shifted out.
    let v = word.wrapping_sub(0x3030_3030_3030_3030) << (8 * (8 - n));
    let v = (v.wrapping_mul(10).wrapping_add(v >> 8)) & 0x00ff_00ff_00ff_00ff;
    let v = (v.wrapping_mul(100).wrapping_add(v >> 16)) & 0x0000_ffff_0000_ffff;
    (v.wrapping_mul(10_000).wrapping_add(v >> 32)) & 0xffff_ffff
}

pub(super) fn is_sep(byte: u8) -> bool {
    byte == b' ' || byte == b'\t'
}

/// The offset of the first byte at or after `from` that is not a separator.
#[inline(always)]
pub(super) fn skip_seps(bytes: &[u8], mut from: usize) -> usize {
    while bytes.get(from).copied().is_some_and(is_sep) {
        from += 1;
    }
    from
}

/// The offset of the first byte at or after `from` that is not a digit.
#[inline(always)]
pub(super) fn skip_digits(bytes: &[u8], mut from: usize) -> usize {
    while bytes.get(from).is_some_and(u8::is_ascii_digit) {
        from += 1;
    }
    from
}

/// `value` followed by the decimal digits `run`, or `None` past `u64::MAX`.
#[inline(always)]
pub(super) fn seq_value(value: u64, run: &[u8]) -> Option<u64> {
    run.iter().try_fold(value, |v, &d| {
        v.checked_mul(10)?
            .checked_add(u64::from(d.wrapping_sub(b'0')))
    })
}

/// The type of a frame whose first four bytes are a type name and a
/// separator, in one 32-bit compare per type.
#[inline(always)]
pub(super) fn type_and_sep(first: [u8; 4]) -> Option<Kind> {
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

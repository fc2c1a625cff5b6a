//! The test oracle: a one-shot classifier of whole lines, written plainly
//! and differently on purpose (slices and `str::parse`, no words, no
//! state), so that the scanner's word-at-a-time grammar is checked against
//! an independent reading of the protocol by its unit tests, proptests and
//! the `frame_scanner` fuzz target. Built only for those (`cfg(test)` or
//! `cfg(fuzzing)`); not part of the product.

use super::{Direction, Frame, FrameCounts, Kind};

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

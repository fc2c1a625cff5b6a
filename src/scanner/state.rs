//! A scanner's state between reads: what it is (`State`, used while a
//! read is scanned) and how it is kept (plain fields of `Scanner`).

use super::{Kind, Scanner};

/// Where the scanner is inside a frame that began in an earlier read. The
/// header is decided (`Data` or `Skip`) long before the frame ends in the
/// usual case; a short start of a frame is kept raw (`Head`), and the
/// byte-wise states serve headers longer than that.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum State {
    /// At the first byte of a frame.
    Start,
    /// The first `len` (1 to 15) bytes of a frame whose header may not be
    /// decided yet, kept raw at the start of `tail` (zeros after them, so
    /// they join the rest of the line without a shift): when the frame's
    /// line is complete they are read again with it, as one header, by the
    /// same code as any other line (no state to dispatch on, and so few
    /// branches to mispredict at every short read).
    Head { tail: [u64; 2], len: u8 },
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

/// Which [`State`] a [`Scanner`] holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Tag {
    Start,
    Head,
    Type,
    Sep,
    Seq,
    SeqCr,
    Data,
    Skip,
}

impl Scanner {
    /// The state the fields hold.
    #[inline(always)]
    pub(super) fn state(&self) -> State {
        let (kind, value) = (self.kind, self.value);
        match self.tag {
            Tag::Start => State::Start,
            Tag::Head => State::Head {
                tail: self.tail,
                len: self.len,
            },
            Tag::Type => State::Type {
                kind,
                matched: self.len,
            },
            Tag::Sep => State::Sep(kind),
            Tag::Seq => State::Seq { kind, value },
            Tag::SeqCr => State::SeqCr { kind, value },
            Tag::Data => State::Data { kind, seq: value },
            Tag::Skip => State::Skip,
        }
    }

    /// Stores `state` in the fields (only those it uses).
    #[inline(always)]
    pub(super) fn set(&mut self, state: State) {
        self.tag = match state {
            State::Start => Tag::Start,
            State::Head { tail, len } => {
                self.tail = tail;
                self.len = len;
                Tag::Head
            }
            State::Type { kind, matched } => {
                self.kind = kind;
                self.len = matched;
                Tag::Type
            }
            State::Sep(kind) => {
                self.kind = kind;
                Tag::Sep
            }
            State::Seq { kind, value } => {
                self.kind = kind;
                self.value = value;
                Tag::Seq
            }
            State::SeqCr { kind, value } => {
                self.kind = kind;
                self.value = value;
                Tag::SeqCr
            }
            State::Data { kind, seq } => {
                self.kind = kind;
                self.value = seq;
                Tag::Data
            }
            State::Skip => Tag::Skip,
        };
    }
}

/// A kept tail as one number (byte 0 lowest). The tail is stored as two
/// aligned words: as bytes it sat unaligned after the state's tag, and
/// every read of it was pieced together from three loads.
#[inline(always)]
pub(super) fn from_words([low, high]: [u64; 2]) -> u128 {
    u128::from(low) | u128::from(high) << 64
}

#[inline(always)]
pub(super) fn to_words(tail: u128) -> [u64; 2] {
    [tail as u64, (tail >> 64) as u64]
}

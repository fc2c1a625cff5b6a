//! The newline search: each 64-byte block of a read becomes a 64-bit mask
//! of its newlines (SSE2 byte compares where the target has them, word
//! arithmetic elsewhere), so the next newline is a `trailing_zeros` away.

use super::grammar::first_word;

/// Bytes searched at once for newlines.
const BLOCK: usize = 64;

/// Calls `found` with the offset of every `\n` in `bytes`, in order.
///
/// Each 64-byte block becomes a 64-bit mask of its newlines, so the next
/// newline is a `trailing_zeros` away. A block without any newline means a
/// long frame: `memchr`'s wide loop finds its end.
#[inline(always)]
pub(super) fn for_each_newline(bytes: &[u8], mut found: impl FnMut(usize)) {
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
        // Zero past the end is not a newline.
        _ => word_mask(first_word(bytes)),
    }
}

/// Bit `i` (0 to 15) set when `piece[i]` is `\n`: SSE2's byte compare and
/// `pmovmskb` (through `safe_arch`, so this crate keeps forbidding
/// `unsafe`), about four times fewer instructions than [`portable_piece_mask`].
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
#[inline(always)]
pub(super) fn piece_mask(piece: &[u8; 16]) -> u64 {
    use safe_arch::{
        cmp_eq_mask_i8_m128i, load_unaligned_m128i, move_mask_i8_m128i, set_splat_i8_m128i,
    };
    let hits = cmp_eq_mask_i8_m128i(load_unaligned_m128i(piece), set_splat_i8_m128i(b'\n' as i8));
    u64::from(move_mask_i8_m128i(hits) as u16)
}

#[cfg(not(all(target_arch = "x86_64", target_feature = "sse2")))]
#[inline(always)]
pub(super) fn piece_mask(piece: &[u8; 16]) -> u64 {
    portable_piece_mask(piece)
}

/// [`piece_mask`] in plain integer arithmetic, for other targets (and the
/// tests, which hold the two together).
#[cfg_attr(
    all(target_arch = "x86_64", target_feature = "sse2", not(test)),
    allow(dead_code)
)]
#[inline(always)]
pub(super) fn portable_piece_mask(piece: &[u8; 16]) -> u64 {
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

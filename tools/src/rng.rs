//! SplitMix64: small, fast and good enough to pick split points and data.
//! Not for anything secret.

use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Clone, Debug)]
pub struct Rng(u64);

const ALNUM: &[u8; 36] = b"abcdefghijklmnopqrstuvwxyz0123456789";
const HEX: &[u8; 16] = b"0123456789abcdef";

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    /// A generator for the `n`th stream of `seed` (one per connection).
    pub fn stream(seed: u64, n: u64) -> Self {
        let mut r = Rng(seed ^ n.wrapping_mul(0xa076_1d64_78bd_642f));
        r.next_u64();
        r
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n`; 0 when `n` is 0.
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi.saturating_sub(lo).saturating_add(1))
    }

    /// True about once in `n` draws.
    pub fn one_in(&mut self, n: u64) -> bool {
        self.below(n) == 0
    }

    /// Appends `len` characters from `[a-z0-9]`.
    pub fn push_alnum(&mut self, out: &mut Vec<u8>, len: usize) {
        out.extend((0..len).map(|_| pick(ALNUM, self.below(36))));
    }

    /// Appends `len` lowercase hex digits.
    pub fn push_hex(&mut self, out: &mut Vec<u8>, len: usize) {
        out.extend((0..len).map(|_| pick(HEX, self.below(16))));
    }
}

fn pick(set: &[u8], i: u64) -> u8 {
    set.get(i as usize).copied().unwrap_or(b'0')
}

/// A seed from the clock and the process id, for runs without `--seed`.
pub fn seed_from_clock() -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    Rng::new(nanos ^ u64::from(std::process::id()) << 32).next_u64()
}

/// A `--seed` value (for `Flags::parse_or`): `Some` seed,
/// or an error saying what a seed is.
pub fn parse_seed(v: &str) -> Result<Option<u64>, String> {
    foo_proxy::cli::parse_count(v)
        .map(Some)
        .ok_or_else(|| "expected an unsigned integer".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_sequence() {
        let (mut a, mut b) = (Rng::new(7), Rng::new(7));
        assert!((0..100).all(|_| a.next_u64() == b.next_u64()));
        assert_ne!(Rng::stream(7, 1).next_u64(), Rng::stream(7, 2).next_u64());
    }

    #[test]
    fn below_stays_in_range_and_covers_it() {
        let mut r = Rng::new(1);
        let mut seen = [false; 8];
        for _ in 0..1000 {
            let v = r.below(8) as usize;
            seen[v] = true;
        }
        assert!(seen.iter().all(|s| *s));
        assert_eq!(r.below(0), 0);
        assert!((0..1000).all(|_| (1..=4).contains(&r.range(1, 4))));
    }

    #[test]
    fn one_in_eight_is_about_an_eighth() {
        let mut r = Rng::new(3);
        let hits = (0..80_000).filter(|_| r.one_in(8)).count();
        assert!((9_000..11_000).contains(&hits), "{hits}");
    }

    #[test]
    fn alnum_and_hex_use_their_alphabets() {
        let mut r = Rng::new(5);
        let mut v = Vec::new();
        r.push_alnum(&mut v, 500);
        assert!(
            v.iter()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        );
        v.clear();
        r.push_hex(&mut v, 32);
        assert_eq!(v.len(), 32);
        assert!(v.iter().all(u8::is_ascii_hexdigit));
    }
}

//! `--max-connections-per-client`: open connections counted by the real
//! client address (the PROXY header's when `--accept-proxy` is on).
//!
//! Memory is bounded by the open connections: an address has an entry only
//! while it has one open, and a pair only while it is counted, so both maps
//! hold at most `--max-connections` entries.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::net::IpAddr;

use crate::net::canonical;

/// Open connections per client address, and which pair counts for which.
pub(crate) struct PerClient {
    /// At most this many open connections per address.
    limit: u32,
    open: HashMap<IpAddr, u32>,
    /// The address each counted pair (by slab key) was counted under.
    counted: HashMap<usize, IpAddr>,
}

impl PerClient {
    pub fn new(limit: u32) -> PerClient {
        PerClient {
            limit,
            open: HashMap::new(),
            counted: HashMap::new(),
        }
    }

    /// Counts pair `key` under `client` if that address is below the
    /// limit; false when it is at the limit (the pair is not counted).
    pub fn admit(&mut self, key: usize, client: IpAddr) -> bool {
        let client = canonical(client);
        let open = self.open.entry(client).or_insert(0);
        if *open >= self.limit {
            if *open == 0 {
                self.open.remove(&client);
            }
            return false;
        }
        *open += 1;
        if let Some(old) = self.counted.insert(key, client) {
            // A key is released before it is reused; should it not have
            // been, the old count must not stay behind.
            self.forget(old);
        }
        true
    }

    /// Pair `key` closed: its address has one connection fewer.
    pub fn release(&mut self, key: usize) {
        if let Some(client) = self.counted.remove(&key) {
            self.forget(client);
        }
    }

    fn forget(&mut self, client: IpAddr) {
        if let Entry::Occupied(mut e) = self.open.entry(client) {
            *e.get_mut() = e.get().saturating_sub(1);
            if *e.get() == 0 {
                e.remove();
            }
        }
    }

    /// Addresses with an open connection (for tests).
    #[cfg(test)]
    fn addresses(&self) -> usize {
        self.open.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_limit_counts_each_address_apart_and_frees_on_release() {
        let mut c = PerClient::new(2);
        assert!(c.admit(0, ip("192.0.2.1")));
        assert!(c.admit(1, ip("::ffff:192.0.2.1")));
        assert!(!c.admit(2, ip("192.0.2.1")), "the third from one address");
        assert!(
            c.admit(3, ip("192.0.2.2")),
            "another address is not affected"
        );
        c.release(0);
        assert!(c.admit(4, ip("192.0.2.1")), "a slot came free");
        c.release(2); // never counted: no effect
        assert!(!c.admit(5, ip("192.0.2.1")));
    }

    #[test]
    fn nothing_is_kept_for_addresses_without_connections() {
        let mut c = PerClient::new(1);
        for key in 0..1000 {
            let addr = IpAddr::from([10, 0, (key / 256) as u8, (key % 256) as u8]);
            assert!(c.admit(key, addr));
            c.release(key);
        }
        assert_eq!(c.addresses(), 0);
        assert!(c.counted.is_empty());
        let mut zero = PerClient::new(0);
        assert!(!zero.admit(0, ip("::1")));
        assert_eq!(zero.addresses(), 0);
    }
}

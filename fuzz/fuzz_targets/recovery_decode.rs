//! Any bytes give a snapshot or a reason, never a panic; and encoding then
//! decoding gives back the same snapshot, both for what decoded from the
//! input and for a snapshot built from the input's bytes.
#![no_main]

use foo_proxy::recovery::{Snapshot, Totals, WindowBucket, decode, encode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(snapshot) = decode(data) {
        let bytes = encode(&snapshot);
        assert_eq!(decode(&bytes).as_ref(), Ok(&snapshot));
        // One encoding per snapshot: the file is canonical.
        assert_eq!(encode(&snapshot), bytes);
    }
    let x = snapshot_from(data);
    assert_eq!(decode(&encode(&x)), Ok(x));
});

/// Every field from the input, 8 bytes per u64 (zero-padded at the end);
/// what is left after the totals becomes window buckets.
fn snapshot_from(data: &[u8]) -> Snapshot {
    let mut words = data.chunks(8).map(|c| {
        let mut b = [0u8; 8];
        b[..c.len()].copy_from_slice(c);
        u64::from_le_bytes(b)
    });
    let mut next = || words.next().unwrap_or(0);
    let written_at_ms = next();
    let totals = Totals {
        msg_req: next(),
        msg_ack: next(),
        msg_nak: next(),
        invalid_client_to_server: next(),
        invalid_server_to_client: next(),
        connections_total: next(),
        upstream_errors: next(),
        bytes_client_to_server: next(),
        bytes_server_to_client: next(),
    };
    let mut window = Vec::new();
    loop {
        let (start_ms, counts) = (next(), next());
        if start_ms == 0 && counts == 0 {
            break;
        }
        window.push(WindowBucket {
            start_ms,
            req: counts as u32,
            resp: (counts >> 32) as u32,
        });
    }
    Snapshot {
        written_at_ms,
        totals,
        window,
    }
}

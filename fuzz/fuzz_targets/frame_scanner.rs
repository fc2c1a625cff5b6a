//! Any bytes, split into any chunks, in both directions: the incremental
//! scanner must count exactly what the one-shot reference counts.
//!
//! Input layout: byte 0 is the number of cut points `n` (mod 16), the next
//! `n` bytes are cut sizes, and the rest is the stream. Cut sizes are chunk
//! lengths, so empty chunks and one-byte chunks are both reachable.
#![no_main]

use foo_proxy::scanner::{Direction, FrameCounts, Scanner, count_reference};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (cuts, stream) = match data.split_first() {
        Some((&n, rest)) => rest.split_at(usize::from(n % 16).min(rest.len())),
        None => (&[][..], data),
    };
    for direction in [Direction::ClientToServer, Direction::ServerToClient] {
        check(stream, cuts, direction);
    }
});

fn check(stream: &[u8], cuts: &[u8], direction: Direction) {
    let mut scanner = Scanner::new(direction);
    let mut counts = FrameCounts::default();
    let mut rest = stream;
    let mut consumed = 0;
    // Chunk lengths from the cut bytes, then whatever is left as one chunk.
    let lengths = cuts.iter().map(|&c| usize::from(c)).chain([usize::MAX]);
    for len in lengths {
        let (chunk, tail) = rest.split_at(len.min(rest.len()));
        let before = counts;
        scanner.scan(chunk, &mut counts);
        consumed += chunk.len();

        // Each chunk completes exactly as many frames as it holds newlines.
        let newlines = chunk.iter().filter(|&&b| b == b'\n').count() as u64;
        assert_eq!(counts.lines() - before.lines(), newlines, "chunk {chunk:?}");
        // Counters only grow.
        assert!(counts.req >= before.req && counts.ack >= before.ack);
        assert!(counts.nak >= before.nak && counts.invalid >= before.invalid);
        // Between frames exactly when everything so far ends in a newline.
        let prefix = &stream[..consumed];
        let boundary = prefix.last().is_none_or(|&b| b == b'\n');
        assert_eq!(scanner.at_frame_start(), boundary, "after {prefix:?}");
        rest = tail;
    }
    assert!(rest.is_empty());

    assert_eq!(counts, count_reference(stream, direction), "{direction:?}");
    // A direction only ever counts its own legal types.
    match direction {
        Direction::ClientToServer => assert_eq!(counts.ack + counts.nak, 0),
        Direction::ServerToClient => assert_eq!(counts.req, 0),
    }
}

//! Unit tests and proptests of the scanner, the grammar and the newline
//! search, held to the reference classifier ([`super::reference`]).

use super::newlines::{piece_mask, portable_piece_mask};
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
fn events(stream: &[u8], cuts: &[usize], direction: Direction) -> (Vec<(Frame, u64, usize)>, bool) {
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

    #[test]
    fn parse_line_agrees_with_the_reference(line in proptest::collection::vec(
        prop_oneof![Just(b'R'), Just(b'E'), Just(b'Q'), Just(b'A'), Just(b'C'),
                    Just(b'K'), Just(b'N'), Just(b' '), Just(b'\t'), Just(b'\r'),
                    b'0'..=b'9', any::<u8>()], 0..30)) {
        prop_assume!(!line.contains(&b'\n'));
        let parsed = parse_line(&line).map(|l| l.kind);
        for dir in [C2S, S2C] {
            let want = match classify_line(&line, dir) {
                Frame::Req => Some(Kind::Req),
                Frame::Ack => Some(Kind::Ack),
                Frame::Nak => Some(Kind::Nak),
                Frame::Invalid => None,
            };
            match want {
                Some(kind) => prop_assert_eq!(parsed, Some(kind)),
                // The reference also rejects a type sent the wrong way;
                // parse_line does not look at the direction.
                None => prop_assert!(parsed.is_none_or(|kind| !kind.legal(dir))),
            }
        }
    }
}

//! Foo lines as the drivers read and write them. Pure: no I/O.
//!
//! Reading uses the proxy's own grammar ([`foo_proxy::scanner::parse_line`]), so
//! the test tools and the proxy cannot disagree on what is well-formed; the
//! scanner's tests hold that grammar to its reference classifier.

use crate::rng::Rng;
pub use foo_proxy::scanner::Kind;

/// One well-formed message; `data` excludes the separators and any `\r`.
pub type Msg<'a> = foo_proxy::scanner::Line<'a>;

/// Parses one line without its `\n`; `None` when it is not well-formed.
pub fn parse(line: &[u8]) -> Option<Msg<'_>> {
    foo_proxy::scanner::parse_line(line)
}

/// Appends the decimal digits of `n` without going through `fmt`.
pub fn push_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        if let Some(d) = digits.get_mut(i) {
            *d = b'0' + (n % 10) as u8;
        }
        n /= 10;
        if n == 0 || i == 0 {
            break;
        }
    }
    out.extend_from_slice(digits.get(i..).unwrap_or_default());
}

/// Appends `TYPE SEQ DATA\n` (no data part when `data` is empty).
pub fn push_msg(out: &mut Vec<u8>, kind: Kind, seq: u64, data: &[u8]) {
    out.extend_from_slice(kind.name().as_bytes());
    out.push(b' ');
    push_u64(out, seq);
    if !data.is_empty() {
        out.push(b' ');
        out.extend_from_slice(data);
    }
    out.push(b'\n');
}

/// The reference server's answer to one line: a well-formed REQ gets ACK,
/// or NAK about one time in eight, with 32 hex characters of data; any other
/// line gets `NAK 0 ERRDECODE`.
pub fn push_answer(out: &mut Vec<u8>, line: &[u8], rng: &mut Rng) {
    match parse(line) {
        Some(Msg {
            kind: Kind::Req,
            seq,
            ..
        }) => {
            let kind = if rng.one_in(8) { Kind::Nak } else { Kind::Ack };
            out.extend_from_slice(kind.name().as_bytes());
            out.push(b' ');
            push_u64(out, seq);
            out.push(b' ');
            rng.push_hex(out, 32);
            out.push(b'\n');
        }
        _ => out.extend_from_slice(b"NAK 0 ERRDECODE\n"),
    }
}

/// A line for an error message: lossy UTF-8, at most 60 characters.
pub fn show(line: &[u8]) -> String {
    let text = String::from_utf8_lossy(line);
    let mut short: String = text.chars().take(60).collect();
    if text.chars().count() > 60 {
        short.push_str("...");
    }
    format!("{short:?}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use proptest::prelude::*;

    #[test]
    fn parses_seq_and_data() {
        let m = parse(b"REQ 6 gxb6w7yr3sc647vyua").unwrap();
        assert_eq!(
            (m.kind, m.seq, m.data),
            (Kind::Req, 6, &b"gxb6w7yr3sc647vyua"[..])
        );
        let m = parse(b"NAK\t0\tERRDECODE\r").unwrap();
        assert_eq!((m.kind, m.seq, m.data), (Kind::Nak, 0, &b"ERRDECODE"[..]));
        assert_eq!(parse(b"ACK 2").unwrap().data, b"");
        assert_eq!(parse(b"ACK 18446744073709551615").unwrap().seq, u64::MAX);
        for bad in [
            &b"ACK 18446744073709551616"[..],
            b"REQ",
            b"REQ 1x",
            b"REQ1",
            b"",
            b"ACK -1",
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn answers_like_the_reference_server() {
        let mut rng = Rng::new(1);
        let mut out = Vec::new();
        push_answer(&mut out, b"REQ 42 hello", &mut rng);
        let m = parse(out.strip_suffix(b"\n").unwrap()).unwrap();
        assert!(matches!(m.kind, Kind::Ack | Kind::Nak));
        assert_eq!(m.seq, 42);
        assert_eq!(m.data.len(), 32);
        assert!(m.data.iter().all(u8::is_ascii_hexdigit));
        for junk in [&b"hello"[..], b"ACK 1", b"REQ x", b""] {
            out.clear();
            push_answer(&mut out, junk, &mut rng);
            assert_eq!(out, b"NAK 0 ERRDECODE\n", "{junk:?}");
        }
    }

    #[test]
    fn writes_what_it_parses() {
        let mut out = Vec::new();
        push_msg(&mut out, Kind::Req, 0, b"");
        push_msg(&mut out, Kind::Req, u64::MAX, b"abc");
        assert_eq!(out, b"REQ 0\nREQ 18446744073709551615 abc\n");
    }

    #[test]
    fn show_keeps_messages_short() {
        assert_eq!(show(b"ACK 1"), "\"ACK 1\"");
        assert_eq!(show(&[b'x'; 100]).len(), 60 + 3 + 2);
    }

    proptest! {
        #[test]
        fn seqs_round_trip(seq in any::<u64>()) {
            let mut out = Vec::new();
            push_msg(&mut out, Kind::Ack, seq, b"x");
            prop_assert_eq!(parse(&out[..out.len() - 1]).map(|m| m.seq), Some(seq));
        }
    }
}

//! The PROXY protocol (HAProxy's spec, v1 text and v2 binary): reading the
//! header a balancer puts before a client's bytes (`--accept-proxy`) and
//! writing one before the upstream's (`--send-proxy v1|v2`).
//!
//! Reading is incremental and bounded: [`parse`] says `Incomplete` until the
//! whole header is there, and a header longer than [`MAX_HEADER`] bytes is
//! refused, so a connection holds at most that much while it is read. The
//! grammar is checked by the `ppp` crate; what a header means for this
//! proxy (which address the client is) is decided here. Encoding is done
//! here, into a fixed array: it cannot fail and allocates nothing.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use ppp::{v1, v2};

use crate::net::canonical;

/// The longest header accepted, in bytes: a v1 header is at most 107; a v2
/// header is 16 plus its addresses (at most 216) plus TLVs, which balancers
/// keep short. A longer one is refused rather than buffered.
pub const MAX_HEADER: usize = 4096;

/// The v2 signature, the first 12 bytes of every v2 header.
const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// The longest header [`encode`] writes: v1 for two IPv6 addresses.
pub const MAX_ENCODED: usize = 108;

/// The PROXY protocol version to send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    /// The text header, `PROXY TCP4 src dst sport dport\r\n`.
    V1,
    /// The binary header.
    V2,
}

impl Version {
    /// `v1` or `v2`, as `--send-proxy` takes it.
    pub fn parse(text: &str) -> Option<Version> {
        match text {
            "v1" => Some(Version::V1),
            "v2" => Some(Version::V2),
            _ => None,
        }
    }
}

/// What a complete header says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Its length in bytes: the client's own bytes start after it.
    pub len: usize,
    /// The client (source) and the address it connected to (destination),
    /// or `None` for `LOCAL` (v2), `UNKNOWN` (v1) and address families
    /// other than TCP over IPv4/IPv6: the connection's own addresses apply.
    pub addresses: Option<(SocketAddr, SocketAddr)>,
}

/// Why a header was refused: every case closes the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Invalid {
    /// The bytes are neither a v1 nor a v2 header.
    NotProxy,
    /// It starts as a header but breaks the grammar.
    Malformed,
    /// Longer than [`MAX_HEADER`] bytes.
    TooLong,
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Invalid::NotProxy => f.write_str("no PROXY protocol header"),
            Invalid::Malformed => f.write_str("malformed PROXY protocol header"),
            Invalid::TooLong => write!(f, "PROXY protocol header longer than {MAX_HEADER} bytes"),
        }
    }
}

/// What the bytes received so far come to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parsed {
    /// A prefix of a valid header: wait for more bytes.
    Incomplete,
    Done(Header),
    Invalid(Invalid),
}

/// Reads a header from the start of `input`, the client's first bytes
/// (any length; bytes after the header are ignored). Never panics.
///
/// Whether more bytes are needed is decided here, from the framing alone
/// (v1: the first LF within 107 bytes; v2: the length field), and `ppp`
/// checks the complete header only: its own partial-input answers call some
/// prefixes malformed (a v1 header cut just after a space).
pub fn parse(input: &[u8]) -> Parsed {
    if V2_SIGNATURE.starts_with(input) || input.starts_with(&V2_SIGNATURE) {
        return parse_v2(input);
    }
    if V1_PREFIX.starts_with(input) {
        return Parsed::Incomplete;
    }
    if input.starts_with(V1_PREFIX) {
        return parse_v1(input);
    }
    Parsed::Invalid(Invalid::NotProxy)
}

/// Every v1 header starts so.
const V1_PREFIX: &[u8] = b"PROXY ";
/// The longest v1 header, CRLF included.
const V1_MAX: usize = 107;

fn parse_v1(input: &[u8]) -> Parsed {
    let window = input.get(..V1_MAX).unwrap_or(input);
    let Some(lf) = memchr::memchr(b'\n', window) else {
        return match input.len() >= V1_MAX {
            true => Parsed::Invalid(Invalid::Malformed),
            false => Parsed::Incomplete,
        };
    };
    let Some(line) = input.get(..=lf) else {
        return Parsed::Invalid(Invalid::Malformed);
    };
    match v1::Header::try_from(line) {
        Ok(h) if h.header.len() == line.len() && v1_fields_are_plain(line, &h.addresses) => {
            Parsed::Done(Header {
                len: line.len(),
                addresses: v1_addresses(&h.addresses),
            })
        }
        _ => Parsed::Invalid(Invalid::Malformed),
    }
}

/// Whether the address and port fields of a TCP4/TCP6 line hold only what
/// the spec allows (digits, hex digits, `.`, `:`, single spaces): Rust's
/// number parsers behind `ppp` also take a `+` sign (`+80`), which the
/// spec's "decimal digits" does not.
fn v1_fields_are_plain(line: &[u8], addresses: &v1::Addresses) -> bool {
    if matches!(addresses, v1::Addresses::Unknown) {
        return true;
    }
    // `PROXY TCP4 ` / `PROXY TCP6 `, the fields, CRLF.
    let fields = line
        .get(V1_PREFIX.len() + 5..line.len().saturating_sub(2))
        .unwrap_or(&[]);
    !fields.is_empty()
        && fields
            .iter()
            .all(|b| b.is_ascii_hexdigit() || matches!(b, b'.' | b':' | b' '))
}

fn parse_v2(input: &[u8]) -> Parsed {
    let Some(&[hi, lo]) = input.get(14..16) else {
        return Parsed::Incomplete;
    };
    let total = 16 + usize::from(u16::from_be_bytes([hi, lo]));
    if total > MAX_HEADER {
        return Parsed::Invalid(Invalid::TooLong);
    }
    let Some(whole) = input.get(..total) else {
        return Parsed::Incomplete;
    };
    match v2::Header::try_from(whole) {
        // A PROXY header for a datagram (UDP) cannot describe this stream
        // connection; LOCAL ignores the transport, as the spec says.
        Ok(h) if h.command == v2::Command::Proxy && h.protocol == v2::Protocol::Datagram => {
            Parsed::Invalid(Invalid::Malformed)
        }
        Ok(h) if h.header.len() == total => Parsed::Done(Header {
            len: total,
            addresses: match h.command {
                v2::Command::Local => None,
                v2::Command::Proxy => v2_addresses(&h.addresses),
            },
        }),
        _ => Parsed::Invalid(Invalid::Malformed),
    }
}

fn v1_addresses(a: &v1::Addresses) -> Option<(SocketAddr, SocketAddr)> {
    match a {
        v1::Addresses::Tcp4(a) => Some((
            SocketAddr::from((a.source_address, a.source_port)),
            SocketAddr::from((a.destination_address, a.destination_port)),
        )),
        v1::Addresses::Tcp6(a) => Some((
            SocketAddr::from((a.source_address, a.source_port)),
            SocketAddr::from((a.destination_address, a.destination_port)),
        )),
        v1::Addresses::Unknown => None,
    }
}

fn v2_addresses(a: &v2::Addresses) -> Option<(SocketAddr, SocketAddr)> {
    match a {
        v2::Addresses::IPv4(a) => Some((
            SocketAddr::from((a.source_address, a.source_port)),
            SocketAddr::from((a.destination_address, a.destination_port)),
        )),
        v2::Addresses::IPv6(a) => Some((
            SocketAddr::from((a.source_address, a.source_port)),
            SocketAddr::from((a.destination_address, a.destination_port)),
        )),
        // The spec: an unsupported family is accepted and the connection's
        // own addresses are used.
        v2::Addresses::Unspecified | v2::Addresses::Unix(_) => None,
    }
}

/// A header to send, `bytes[..len]`.
#[derive(Clone, Copy)]
pub struct Encoded {
    bytes: [u8; MAX_ENCODED],
    len: usize,
}

impl Encoded {
    pub fn as_bytes(&self) -> &[u8] {
        self.bytes.get(..self.len).unwrap_or(&[])
    }
}

/// The header that tells the upstream a TCP connection came from `source`
/// to `destination`. Both are written in one family: IPv4 when both are
/// IPv4 (IPv4-mapped included), else IPv6 with IPv4 addresses mapped.
pub fn encode(version: Version, source: SocketAddr, destination: SocketAddr) -> Encoded {
    let (src, dst) = (canonical(source.ip()), canonical(destination.ip()));
    let pair = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => Family::V4(s.octets(), d.octets()),
        _ => Family::V6(v6(src).octets(), v6(dst).octets()),
    };
    let (sport, dport) = (source.port(), destination.port());
    let mut out = Writer {
        bytes: [0; MAX_ENCODED],
        len: 0,
    };
    match version {
        Version::V1 => {
            use std::fmt::Write;
            // At most 107 bytes: `Writer` drops nothing within MAX_ENCODED.
            let _ = match pair {
                Family::V4(..) => write!(out, "PROXY TCP4 {src} {dst} {sport} {dport}\r\n"),
                Family::V6(..) => write!(
                    out,
                    "PROXY TCP6 {} {} {sport} {dport}\r\n",
                    v6(src),
                    v6(dst)
                ),
            };
        }
        Version::V2 => {
            out.put(&V2_SIGNATURE);
            // Version 2, command PROXY; then the family with STREAM.
            out.put(&[0x21]);
            match pair {
                Family::V4(s, d) => {
                    out.put(&[0x11, 0, 12]);
                    out.put(&s);
                    out.put(&d);
                }
                Family::V6(s, d) => {
                    out.put(&[0x21, 0, 36]);
                    out.put(&s);
                    out.put(&d);
                }
            }
            out.put(&sport.to_be_bytes());
            out.put(&dport.to_be_bytes());
        }
    }
    Encoded {
        bytes: out.bytes,
        len: out.len,
    }
}

enum Family {
    V4([u8; 4], [u8; 4]),
    V6([u8; 16], [u8; 16]),
}

fn v6(ip: IpAddr) -> std::net::Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

/// A fixed buffer `write!` can fill.
struct Writer {
    bytes: [u8; MAX_ENCODED],
    len: usize,
}

impl Writer {
    fn put(&mut self, data: &[u8]) -> bool {
        let end = self.len.saturating_add(data.len());
        match self.bytes.get_mut(self.len..end) {
            Some(slot) => {
                slot.copy_from_slice(data);
                self.len = end;
                true
            }
            None => false,
        }
    }
}

impl fmt::Write for Writer {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        match self.put(s.as_bytes()) {
            true => Ok(()),
            false => Err(fmt::Error),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn done(input: &[u8]) -> Header {
        match parse(input) {
            Parsed::Done(h) => h,
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(input)),
        }
    }

    #[test]
    fn a_v1_header_gives_the_client_address_and_its_length() {
        let input = b"PROXY TCP4 192.0.2.7 198.51.100.1 40000 8002\r\nREQ 1\n";
        let h = done(input);
        assert_eq!(h.len, input.len() - 6);
        assert_eq!(
            h.addresses,
            Some((addr("192.0.2.7:40000"), addr("198.51.100.1:8002")))
        );
        let h = done(b"PROXY TCP6 2001:db8::1 ::1 1 2\r\n");
        assert_eq!(h.addresses.unwrap().0, addr("[2001:db8::1]:1"));
    }

    #[test]
    fn local_and_unknown_use_the_connections_own_address() {
        assert_eq!(done(b"PROXY UNKNOWN\r\n").addresses, None);
        assert_eq!(
            done(b"PROXY UNKNOWN ffff:: 1.2.3.4 1 2\r\n").addresses,
            None
        );
        let mut local = V2_SIGNATURE.to_vec();
        local.extend_from_slice(&[0x20, 0x00, 0, 0]);
        assert_eq!(
            done(&local),
            Header {
                len: 16,
                addresses: None
            }
        );
    }

    #[test]
    fn every_prefix_of_a_header_is_incomplete_and_the_whole_is_done() {
        let src = addr("203.0.113.9:5555");
        let dst = addr("[2001:db8::2]:8002");
        for version in [Version::V1, Version::V2] {
            let header = encode(version, src, dst);
            let bytes = header.as_bytes();
            for cut in 0..bytes.len() {
                let prefix = bytes.get(..cut).unwrap();
                assert_eq!(
                    parse(prefix),
                    Parsed::Incomplete,
                    "{version:?} cut at {cut}"
                );
            }
            let h = done(bytes);
            assert_eq!(h.len, bytes.len());
            let (s, d) = h.addresses.unwrap();
            // Mixed families are sent as IPv6, IPv4 mapped.
            assert_eq!((canonical(s.ip()), s.port()), (src.ip(), 5555));
            assert_eq!(d, dst);
        }
    }

    #[test]
    fn ipv4_pairs_are_sent_as_tcp4_even_when_mapped() {
        let src = addr("[::ffff:127.0.0.2]:4000");
        let dst = addr("127.0.0.1:8002");
        let v1 = encode(Version::V1, src, dst);
        assert_eq!(
            v1.as_bytes(),
            b"PROXY TCP4 127.0.0.2 127.0.0.1 4000 8002\r\n"
        );
        let v2 = encode(Version::V2, src, dst);
        assert_eq!(v2.as_bytes().len(), 28);
        assert_eq!(
            done(v2.as_bytes()).addresses,
            Some((addr("127.0.0.2:4000"), dst))
        );
    }

    #[test]
    fn the_longest_v1_header_fits() {
        let ip = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";
        let src = SocketAddr::new(ip.parse().unwrap(), 65535);
        let h = encode(Version::V1, src, src);
        assert_eq!(h.as_bytes().len(), 104);
        assert!(h.as_bytes().ends_with(b"\r\n"));
    }

    #[test]
    fn anything_else_is_refused_as_soon_as_it_can_be() {
        assert_eq!(parse(b"REQ 1 hello\n"), Parsed::Invalid(Invalid::NotProxy));
        assert_eq!(parse(b"G"), Parsed::Invalid(Invalid::NotProxy));
        assert_eq!(parse(b"PROXY"), Parsed::Incomplete);
        assert_eq!(parse(b"PROXYTCP4"), Parsed::Invalid(Invalid::NotProxy));
        assert_eq!(
            parse(b"\r\n\r\n\0\r\nX"),
            Parsed::Invalid(Invalid::NotProxy)
        );
        // The spec requires CRLF, a port without leading zeroes, one space.
        for bad in [
            &b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n"[..],
            b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",
            b"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n",
            b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 65536\r\n",
            b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n",
            // A sign is not a decimal digit (Rust's u16 parser takes `+`).
            b"PROXY TCP4 1.2.3.4 5.6.7.8 +1111 2222\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1111 +2222\r\n",
            b"PROXY TCP6 ::1 ::2 +1 2\r\n",
            b"PROXY TCP4 +1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1\t2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n",
        ] {
            assert_eq!(
                parse(bad),
                Parsed::Invalid(Invalid::Malformed),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        // v1 without its CRLF within 107 bytes.
        let long = [b"PROXY TCP4 ".as_slice(), &[b'1'; 120]].concat();
        assert!(matches!(parse(&long), Parsed::Invalid(_)));
    }

    #[test]
    fn a_v2_proxy_header_for_udp_is_malformed() {
        // 0x12 UDP over IPv4, 0x22 UDP over IPv6: this is a stream proxy.
        let mut udp4 = V2_SIGNATURE.to_vec();
        udp4.extend_from_slice(&[0x21, 0x12, 0, 12, 1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 0, 2]);
        assert_eq!(parse(&udp4), Parsed::Invalid(Invalid::Malformed));
        let mut udp6 = V2_SIGNATURE.to_vec();
        udp6.extend_from_slice(&[0x21, 0x22, 0, 36]);
        udp6.extend_from_slice(&[1; 36]);
        assert_eq!(parse(&udp6), Parsed::Invalid(Invalid::Malformed));
        // The same headers for TCP are accepted.
        udp4[13] = 0x11;
        udp6[13] = 0x21;
        assert!(matches!(parse(&udp4), Parsed::Done(_)));
        assert!(matches!(parse(&udp6), Parsed::Done(_)));
    }

    #[test]
    fn v2_with_a_wrong_version_or_short_addresses_is_malformed() {
        let mut wrong_version = V2_SIGNATURE.to_vec();
        wrong_version.extend_from_slice(&[0x31, 0x11, 0, 12, 1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 0, 2]);
        assert_eq!(parse(&wrong_version), Parsed::Invalid(Invalid::Malformed));
        let mut short = V2_SIGNATURE.to_vec();
        short.extend_from_slice(&[0x21, 0x11, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(parse(&short), Parsed::Invalid(Invalid::Malformed));
    }

    #[test]
    fn v2_tlvs_are_skipped_and_a_huge_length_is_refused() {
        let mut with_tlv = V2_SIGNATURE.to_vec();
        with_tlv.extend_from_slice(&[0x21, 0x11, 0, 19, 1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 0, 2]);
        // PP2_TYPE_AUTHORITY "abcd".
        with_tlv.extend_from_slice(&[0x02, 0, 4, b'a', b'b', b'c', b'd']);
        with_tlv.extend_from_slice(b"REQ 1\n");
        let h = done(&with_tlv);
        assert_eq!(h.len, 16 + 19);
        let mut huge = V2_SIGNATURE.to_vec();
        huge.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        assert_eq!(parse(&huge), Parsed::Invalid(Invalid::TooLong));
        // Within the bound, a long TLV area is waited for.
        let mut long = V2_SIGNATURE.to_vec();
        long.extend_from_slice(&[0x21, 0x11, 0x0f, 0x00]);
        long.resize(1000, 0);
        assert_eq!(parse(&long), Parsed::Incomplete);
    }
}

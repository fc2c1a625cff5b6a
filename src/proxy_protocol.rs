//! The PROXY protocol (HAProxy's spec, v1 text and v2 binary): reading the
//! header a balancer puts before a client's bytes (`--accept-proxy`) and
//! writing one before the upstream's (`--send-proxy v1|v2`).
//!
//! Reading is incremental and bounded: [`parse`] says `Incomplete` until the
//! whole header is there, and a header longer than [`MAX_HEADER`] bytes is
//! refused, so a connection holds at most that much while it is read. The
//! grammar is checked by the `ppp` crate, the v2 TLV area and its CRC32c
//! here (`ppp` leaves TLVs unread); what a header means for this proxy
//! (which address the client is) is decided here. Encoding is done here,
//! into a fixed array: it cannot fail and allocates nothing.

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
        Ok(h) if h.header.len() == total => match h.command {
            // The spec: a LOCAL header's block is discarded unread.
            v2::Command::Local => Parsed::Done(Header {
                len: total,
                addresses: None,
            }),
            v2::Command::Proxy if tlvs_are_valid(whole, h.address_family()) => {
                Parsed::Done(Header {
                    len: total,
                    addresses: v2_addresses(&h.addresses),
                })
            }
            v2::Command::Proxy => Parsed::Invalid(Invalid::Malformed),
        },
        _ => Parsed::Invalid(Invalid::Malformed),
    }
}

/// `PP2_TYPE_CRC32C`: the CRC32c of the whole header, computed with this
/// TLV's 4-byte value zeroed.
const PP2_TYPE_CRC32C: u8 = 0x03;
/// Type and length, before each TLV's value.
const TLV_HEAD: usize = 3;

/// Whether the TLV area of a complete v2 PROXY header (`whole`, 16 bytes
/// plus the length field's count) parses exactly and its checksum, if it
/// has one, verifies; `ppp` only frames the header and leaves TLVs unread.
///
/// As HAProxy reads it: every TLV's 3-byte head and value lie within the
/// header (a TLV cut by the length field, or 1-2 stray bytes at the end,
/// make the header invalid); a `PP2_TYPE_CRC32C` TLV is 4 bytes and matches
/// the CRC32c of the header with its value zeroed. More than one CRC32C TLV
/// is refused: which bytes the sender zeroed is then ambiguous. Other TLVs
/// (ALPN, authority, SSL with its sub-TLVs, ...) are used by nothing here
/// and are not looked into. With `AF_UNSPEC` the spec has the receiver
/// ignore the block, whose layout is then unknown: it is not checked.
fn tlvs_are_valid(whole: &[u8], family: v2::AddressFamily) -> bool {
    let addresses = match family {
        v2::AddressFamily::IPv4 => 12,
        v2::AddressFamily::IPv6 => 36,
        v2::AddressFamily::Unix => 216,
        v2::AddressFamily::Unspecified => return true,
    };
    let mut at = 16 + addresses;
    let mut crc: Option<(usize, u32)> = None;
    while at < whole.len() {
        let Some(&[kind, hi, lo]) = whole.get(at..at + TLV_HEAD) else {
            return false;
        };
        let value = at + TLV_HEAD;
        let end = value + usize::from(u16::from_be_bytes([hi, lo]));
        let Some(bytes) = whole.get(value..end) else {
            return false;
        };
        if kind == PP2_TYPE_CRC32C {
            let (Ok(sent), None) = (<[u8; 4]>::try_from(bytes), crc) else {
                return false;
            };
            crc = Some((value, u32::from_be_bytes(sent)));
        }
        at = end;
    }
    match crc {
        None => true,
        Some((value, sent)) => {
            let (before, rest) = whole.split_at(value.min(whole.len()));
            let after = rest.get(4..).unwrap_or(&[]);
            crc32c::finish(crc32c::update(
                crc32c::update(crc32c::update(crc32c::START, before), &[0; 4]),
                after,
            )) == sent
        }
    }
}

/// CRC32c (Castagnoli, reflected polynomial 0x82F63B78), byte at a time
/// from a 1 KiB table built at compile time: a header is read once per
/// connection, so a faster kernel or a crate would buy nothing.
mod crc32c {
    const POLY: u32 = 0x82F6_3B78;
    pub const START: u32 = !0;

    // Evaluated by the compiler: an index out of bounds fails the build,
    // it cannot panic at run time.
    #[allow(clippy::indexing_slicing)]
    const TABLE: [u32; 256] = {
        let mut table = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 == 1 { (c >> 1) ^ POLY } else { c >> 1 };
                k += 1;
            }
            table[i] = c;
            i += 1;
        }
        table
    };

    pub fn update(mut crc: u32, bytes: &[u8]) -> u32 {
        for &b in bytes {
            let slot = TABLE
                .get(usize::from((crc as u8) ^ b))
                .copied()
                .unwrap_or(0);
            crc = (crc >> 8) ^ slot;
        }
        crc
    }

    pub fn finish(crc: u32) -> u32 {
        !crc
    }

    #[cfg(test)]
    pub fn of(bytes: &[u8]) -> u32 {
        finish(update(START, bytes))
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
mod tests;

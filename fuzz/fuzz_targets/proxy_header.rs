//! The PROXY protocol header parser on any bytes: it never panics, a
//! header is self-delimiting, and reading is incremental (every prefix of
//! a header is `Incomplete`, never refused; what is refused stays refused
//! whatever follows). The encoder's output, for addresses taken from the
//! input, parses back to the same addresses.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use foo_proxy::proxy_protocol::{MAX_HEADER, Parsed, Version, encode, parse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    check_parse(data);
    check_round_trip(data);
});

fn check_parse(data: &[u8]) {
    match parse(data) {
        Parsed::Done(h) => {
            assert!(h.len <= data.len() && h.len <= MAX_HEADER);
            assert_eq!(parse(&data[..h.len]), Parsed::Done(h), "self-delimiting");
            // Every prefix is a wait, never a refusal (sampled past 256).
            let step = (h.len / 256).max(1);
            for cut in (0..h.len).step_by(step) {
                assert_eq!(parse(&data[..cut]), Parsed::Incomplete, "cut at {cut}");
            }
        }
        Parsed::Invalid(why) => {
            let mut longer = data.to_vec();
            longer.extend_from_slice(b"\r\nREQ 1\n");
            assert!(
                matches!(parse(&longer), Parsed::Invalid(_)),
                "{why} is final"
            );
        }
        Parsed::Incomplete => {
            assert!(data.len() < MAX_HEADER);
            let step = (data.len() / 64).max(1);
            for cut in (0..data.len()).step_by(step) {
                assert_eq!(parse(&data[..cut]), Parsed::Incomplete);
            }
        }
    }
}

fn check_round_trip(data: &[u8]) {
    let Some((&kind, rest)) = data.split_first() else {
        return;
    };
    let Some(bytes) = rest.get(..36) else {
        return;
    };
    let ip = |b: &[u8], v6: bool| -> IpAddr {
        if v6 {
            let mut a = [0u8; 16];
            a.copy_from_slice(&b[..16]);
            IpAddr::V6(Ipv6Addr::from(a))
        } else {
            IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
        }
    };
    let src = SocketAddr::new(ip(&bytes[0..16], kind & 1 == 1), u16::from_be_bytes([bytes[32], bytes[33]]));
    let dst = SocketAddr::new(ip(&bytes[16..32], kind & 2 == 2), u16::from_be_bytes([bytes[34], bytes[35]]));
    for version in [Version::V1, Version::V2] {
        let header = encode(version, src, dst);
        let sent = header.as_bytes();
        let Parsed::Done(h) = parse(sent) else {
            panic!("{version:?} {src} {dst}: {:?}", parse(sent));
        };
        assert_eq!(h.len, sent.len());
        let (s, d) = h.addresses.expect("addresses");
        let canonical = |a: SocketAddr| match a.ip() {
            IpAddr::V6(v6) => (v6.to_ipv4_mapped().map_or(a.ip(), IpAddr::V4), a.port()),
            v4 => (v4, a.port()),
        };
        assert_eq!(canonical(s), canonical(src));
        assert_eq!(canonical(d), canonical(dst));
    }
}

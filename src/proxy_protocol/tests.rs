//! The PROXY protocol unit tests: v1 and v2 headers parsed, rejected and written.

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
fn well_formed_v2_tlvs_are_accepted_and_a_huge_length_is_refused() {
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

/// A v2 PROXY header for TCP over IPv4 with `tlvs` after the addresses.
fn v2_with(tlvs: &[u8]) -> Vec<u8> {
    let mut h = V2_SIGNATURE.to_vec();
    let len = u16::try_from(12 + tlvs.len()).unwrap().to_be_bytes();
    h.extend_from_slice(&[0x21, 0x11, len[0], len[1]]);
    h.extend_from_slice(&[192, 0, 2, 7, 198, 51, 100, 1, 0x9c, 0x40, 0x1f, 0x42]);
    h.extend_from_slice(tlvs);
    h
}

/// `v2_with` plus a CRC32C TLV holding the right checksum.
fn v2_with_crc(tlvs: &[u8]) -> Vec<u8> {
    let mut h = v2_with(&[tlvs, &[PP2_TYPE_CRC32C, 0, 4, 0, 0, 0, 0]].concat());
    let crc = crc32c::of(&h).to_be_bytes();
    let at = h.len() - 4;
    h.get_mut(at..).unwrap().copy_from_slice(&crc);
    h
}

#[test]
fn crc32c_is_castagnolis_checksum() {
    // The check value of CRC-32C (RFC 3720, B.4; the standard catalogue).
    assert_eq!(crc32c::of(b"123456789"), 0xE306_9283);
    assert_eq!(crc32c::of(&[0; 32]), 0x8A91_36AA);
}

#[test]
fn a_v2_header_with_a_crc32c_tlv_is_accepted_only_if_the_checksum_matches() {
    let good = v2_with_crc(&[0x02, 0, 3, b'f', b'o', b'o']);
    assert_eq!(done(&good).len, good.len());
    assert_eq!(
        done(&good).addresses,
        Some((addr("192.0.2.7:40000"), addr("198.51.100.1:8002")))
    );
    // Any bit changed after the checksum was made: the address, the
    // checksum itself, another TLV's value.
    for at in [16, good.len() - 1, good.len() - 8] {
        let mut bad = good.clone();
        *bad.get_mut(at).unwrap() ^= 0x01;
        assert_eq!(
            parse(&bad),
            Parsed::Invalid(Invalid::Malformed),
            "bit at {at}"
        );
    }
}

#[test]
fn a_crc32c_tlv_of_another_length_or_a_second_one_is_malformed() {
    let short = v2_with(&[PP2_TYPE_CRC32C, 0, 3, 1, 2, 3]);
    assert_eq!(parse(&short), Parsed::Invalid(Invalid::Malformed));
    let good = v2_with_crc(&[]);
    let twice = v2_with(&[good.get(28..).unwrap(), good.get(28..).unwrap()].concat());
    assert_eq!(parse(&twice), Parsed::Invalid(Invalid::Malformed));
}

#[test]
fn a_tlv_area_that_does_not_parse_exactly_makes_the_header_invalid() {
    // Well formed: NOOP of length 0, then AUTHORITY "ab".
    assert!(matches!(
        parse(&v2_with(&[0x04, 0, 0, 0x02, 0, 2, b'a', b'b'])),
        Parsed::Done(_)
    ));
    for tlvs in [
        // A TLV whose length runs past the header.
        &[0x02, 0, 5, b'a', b'b'][..],
        &[0x02, 0xff, 0xff],
        // One or two stray bytes: no room for a TLV's head.
        &[0x04],
        &[0x04, 0, 0, 0x02, 0],
    ] {
        assert_eq!(
            parse(&v2_with(tlvs)),
            Parsed::Invalid(Invalid::Malformed),
            "{tlvs:?}"
        );
    }
    // IPv6: the TLVs start after 36 bytes of addresses.
    let mut v6 = V2_SIGNATURE.to_vec();
    v6.extend_from_slice(&[0x21, 0x21, 0, 38]);
    v6.extend_from_slice(&[1; 36]);
    v6.extend_from_slice(&[0x04, 0]);
    assert_eq!(parse(&v6), Parsed::Invalid(Invalid::Malformed));
}

#[test]
fn a_local_header_s_block_is_discarded_unchecked() {
    // The spec: LOCAL discards the block, family included; a health
    // check's stray bytes (or a checksum over them) do not matter.
    let mut local = V2_SIGNATURE.to_vec();
    local.extend_from_slice(&[0x20, 0x11, 0, 14]);
    local.extend_from_slice(&[1; 12]);
    local.extend_from_slice(&[0x04, 0]);
    assert_eq!(
        done(&local),
        Header {
            len: 30,
            addresses: None
        }
    );
}

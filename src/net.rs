//! Listening sockets and address questions: dual-stack `:PORT`, and whether
//! a forward address is this proxy's own listener.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};

use mio::net::TcpListener;
use socket2::{Domain, Protocol, Socket, Type};

/// A non-blocking listener with SO_REUSEADDR and the given backlog (mio's
/// own `bind` fixes the backlog at 128). `[::]` listens dual-stack
/// (`IPV6_V6ONLY` off), as Go's `:PORT` does; where the host has no IPv6 it
/// falls back to `0.0.0.0` on the same port.
pub fn listen(addr: SocketAddr, backlog: i32) -> io::Result<TcpListener> {
    match bind(addr, backlog) {
        Err(e) if addr.ip() == IpAddr::from(std::net::Ipv6Addr::UNSPECIFIED) && no_ipv6(&e) => {
            bind(
                SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), addr.port()),
                backlog,
            )
        }
        other => other,
    }
}

fn bind(addr: SocketAddr, backlog: i32) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() && addr.ip().is_unspecified() {
        socket.set_only_v6(false)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(backlog)?;
    Ok(TcpListener::from_std(socket.into()))
}

/// EAFNOSUPPORT (IPv6 disabled) or EADDRNOTAVAIL (no IPv6 address).
fn no_ipv6(err: &io::Error) -> bool {
    matches!(err.raw_os_error(), Some(97 | 99))
}

/// Whether `addr`'s IP is an address of this host: a socket can be bound
/// to it (port 0). The zone (scope id) goes with it, so a link-local
/// address counts only on the interface it names.
pub fn is_local(addr: SocketAddr) -> bool {
    let ip = addr.ip();
    if ip.is_loopback() || ip.is_unspecified() {
        return true;
    }
    let mut probe = addr;
    probe.set_port(0);
    if let SocketAddr::V6(v6) = &mut probe {
        v6.set_flowinfo(0);
    }
    UdpSocket::bind(probe).is_ok()
}

/// Whether connecting to `forward` would reach the listener bound at
/// `listening` (the address it actually got, port 0 resolved), on the same
/// port: the unspecified address (`0.0.0.0`, `[::]`, in any spelling,
/// IPv4-mapped too), which Linux connects to this host itself; the same
/// address (a link-local one only in the same zone); or, on a wildcard
/// listener, an address of this host that the listener accepts on.
/// `is_local` is passed in so tests need no network.
pub fn reaches_itself(
    listening: SocketAddr,
    forward: SocketAddr,
    is_local: impl Fn(SocketAddr) -> bool,
) -> bool {
    if listening.port() != forward.port() {
        return false;
    }
    let fwd = canonical(forward.ip());
    let own = canonical(listening.ip());
    // A connect to 0.0.0.0 or :: goes to this host (the loopback address,
    // or the socket's own source): treated as every local listener rather
    // than predicting which one the kernel picks.
    if fwd.is_unspecified() || same_address(listening, forward) {
        return true;
    }
    let accepts_family = match own {
        // `[::]` listens dual-stack.
        IpAddr::V6(v6) if v6.is_unspecified() => true,
        IpAddr::V4(v4) if v4.is_unspecified() => fwd.is_ipv4(),
        _ => false,
    };
    // A mapped address is probed as the IPv4 address it stands for.
    let probe = if fwd == forward.ip() {
        forward
    } else {
        SocketAddr::new(fwd, forward.port())
    };
    accepts_family && is_local(probe)
}

/// The same IP (IPv4-mapped normalised), and for a link-local IPv6 address
/// the same zone: `fe80::1%eth0` and `fe80::1%eth1` are different hosts.
fn same_address(a: SocketAddr, b: SocketAddr) -> bool {
    if canonical(a.ip()) != canonical(b.ip()) {
        return false;
    }
    match (a, b) {
        (SocketAddr::V6(a), SocketAddr::V6(b)) if a.ip().is_unicast_link_local() => {
            a.scope_id() == b.scope_id()
        }
        _ => true,
    }
}

/// `::ffff:a.b.c.d` as `a.b.c.d`, so mapped and plain IPv4 compare equal.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// This host, for the tests: loopback, 10.1.2.3, and fe80::7 on
    /// interface 2 only.
    fn local(a: SocketAddr) -> bool {
        match a {
            SocketAddr::V6(v6) if v6.ip().is_unicast_link_local() => {
                *v6.ip() == "fe80::7".parse::<std::net::Ipv6Addr>().unwrap() && v6.scope_id() == 2
            }
            _ => a.ip().is_loopback() || a.ip() == "10.1.2.3".parse::<IpAddr>().unwrap(),
        }
    }

    fn zoned(ip: &str, port: u16, zone: u32) -> SocketAddr {
        SocketAddr::V6(std::net::SocketAddrV6::new(
            ip.parse().unwrap(),
            port,
            0,
            zone,
        ))
    }

    #[test]
    fn a_forward_to_the_own_listener_is_recognised() {
        let yes = [
            ("127.0.0.1:8002", "127.0.0.1:8002"),
            ("[::]:8002", "127.0.0.1:8002"),
            ("[::]:8002", "[::1]:8002"),
            ("[::]:8002", "10.1.2.3:8002"),
            ("0.0.0.0:8002", "127.0.0.2:8002"),
            ("0.0.0.0:8002", "[::ffff:127.0.0.1]:8002"),
            ("0.0.0.0:8002", "[::ffff:10.1.2.3]:8002"),
            ("[::1]:8002", "[::1]:8002"),
        ];
        for (listen, forward) in yes {
            assert!(
                reaches_itself(addr(listen), addr(forward), local),
                "{listen} {forward}"
            );
        }
        let no = [
            ("127.0.0.1:8002", "127.0.0.1:8001"),
            ("127.0.0.1:8002", "127.0.0.2:8002"),
            ("0.0.0.0:8002", "[::1]:8002"),
            ("[::]:8002", "192.0.2.7:8002"),
            ("127.0.0.1:8002", "0.0.0.0:8001"),
        ];
        for (listen, forward) in no {
            assert!(
                !reaches_itself(addr(listen), addr(forward), local),
                "{listen} {forward}"
            );
        }
    }

    #[test]
    fn the_unspecified_address_in_every_spelling_is_this_host() {
        // Linux connects 0.0.0.0 and :: to this host: whatever the listener.
        let listeners = [
            "127.0.0.1:8002",
            "127.0.0.2:8002",
            "[::1]:8002",
            "0.0.0.0:8002",
            "[::]:8002",
        ];
        let forwards = [
            "0.0.0.0:8002",
            "[::]:8002",
            "[::0]:8002",
            "[0:0:0:0:0:0:0:0]:8002",
            "[::ffff:0.0.0.0]:8002",
        ];
        for listen in listeners {
            for forward in forwards {
                assert!(
                    reaches_itself(addr(listen), addr(forward), |_| false),
                    "{listen} {forward}"
                );
            }
        }
    }

    #[test]
    fn a_link_local_forward_is_compared_with_its_zone() {
        let any = addr("[::]:8002");
        assert!(reaches_itself(any, zoned("fe80::7", 8002, 2), local));
        // The same address on another interface is another host.
        assert!(!reaches_itself(any, zoned("fe80::7", 8002, 3), local));
        let on_2 = zoned("fe80::7", 8002, 2);
        assert!(reaches_itself(on_2, zoned("fe80::7", 8002, 2), |_| false));
        assert!(!reaches_itself(on_2, zoned("fe80::7", 8002, 3), |_| false));
        // An IPv4-only wildcard does not accept IPv6.
        assert!(!reaches_itself(addr("0.0.0.0:8002"), on_2, local));
    }

    #[test]
    fn is_local_knows_loopback_and_needs_the_zone_of_a_link_local_address() {
        assert!(is_local(addr("127.0.0.1:9")));
        assert!(is_local(addr("0.0.0.0:9")));
        // An address no interface here has.
        assert!(!is_local(addr("192.0.2.77:9")));
        // Without a zone a link-local address cannot be bound anywhere.
        assert!(!is_local(zoned("fe80::1234", 9, 0)));
    }
}

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

/// Whether `ip` is an address of this host: a socket can be bound to it.
pub fn is_local(ip: IpAddr) -> bool {
    ip.is_loopback() || ip.is_unspecified() || UdpSocket::bind((ip, 0)).is_ok()
}

/// Whether connecting to `forward` would reach the listener bound at
/// `listening` (the address it actually got, port 0 resolved): the same
/// address and port, or the same port on a wildcard listener and an address
/// of this host that the listener accepts on. `is_local` is passed in so
/// tests need no network.
pub fn reaches_itself(
    listening: SocketAddr,
    forward: SocketAddr,
    is_local: impl Fn(IpAddr) -> bool,
) -> bool {
    if listening.port() != forward.port() {
        return false;
    }
    let fwd = canonical(forward.ip());
    let own = canonical(listening.ip());
    if fwd == own {
        return true;
    }
    let accepts_family = match listening.ip() {
        // `[::]` listens dual-stack.
        IpAddr::V6(v6) if v6.is_unspecified() => true,
        IpAddr::V4(v4) if v4.is_unspecified() => fwd.is_ipv4(),
        _ => false,
    };
    accepts_family && is_local(fwd)
}

/// `::ffff:a.b.c.d` as `a.b.c.d`, so mapped and plain IPv4 compare equal.
fn canonical(ip: IpAddr) -> IpAddr {
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

    #[test]
    fn a_forward_to_the_own_listener_is_recognised() {
        let local = |ip: IpAddr| ip.is_loopback() || ip == "10.1.2.3".parse::<IpAddr>().unwrap();
        let yes = [
            ("127.0.0.1:8002", "127.0.0.1:8002"),
            ("[::]:8002", "127.0.0.1:8002"),
            ("[::]:8002", "[::1]:8002"),
            ("[::]:8002", "10.1.2.3:8002"),
            ("0.0.0.0:8002", "127.0.0.2:8002"),
            ("0.0.0.0:8002", "[::ffff:127.0.0.1]:8002"),
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
        ];
        for (listen, forward) in no {
            assert!(
                !reaches_itself(addr(listen), addr(forward), local),
                "{listen} {forward}"
            );
        }
    }
}

//! Sockets and their errors: listening (dual-stack `:PORT`), non-blocking
//! connects and their progress, one outcome type for every non-blocking
//! call, error messages and classes, and whether a forward address is this
//! proxy's own listener. A leaf: it uses nothing else of the crate.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};

use mio::net::{TcpListener, TcpStream};
use socket2::{Domain, Protocol, Socket, Type};

/// A non-blocking listener with SO_REUSEADDR and the given backlog (mio's
/// own `bind` fixes the backlog at 128). `[::]` listens dual-stack
/// (`IPV6_V6ONLY` off), as Go's `:PORT` does; where the host has no IPv6 it
/// falls back to `0.0.0.0` on the same port.
pub fn listen(addr: SocketAddr, backlog: i32) -> io::Result<TcpListener> {
    listen_with(addr, backlog, false)
}

/// [`listen`], with `SO_REUSEPORT` when `reuse_port`: processes that all
/// set it share the address, and the kernel spreads new connections over
/// their listeners.
pub fn listen_with(addr: SocketAddr, backlog: i32, reuse_port: bool) -> io::Result<TcpListener> {
    match bind(addr, backlog, reuse_port) {
        Err(e) if addr.ip() == IpAddr::from(std::net::Ipv6Addr::UNSPECIFIED) && no_ipv6(&e) => {
            bind(
                SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), addr.port()),
                backlog,
                reuse_port,
            )
        }
        other => other,
    }
}

fn bind(addr: SocketAddr, backlog: i32, reuse_port: bool) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() && addr.ip().is_unspecified() {
        socket.set_only_v6(false)?;
    }
    socket.set_reuse_address(true)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.set_nonblocking(true)?;
    // Set before `listen`, so every connection it accepts inherits it (see
    // [`accepts_nodelay`]); best effort, like the per-socket call it saves.
    let _ = socket.set_tcp_nodelay(true);
    socket.bind(&addr.into())?;
    socket.listen(backlog)?;
    Ok(TcpListener::from_std(socket.into()))
}

/// Makes the coming close of `stream` a reset (`SO_LINGER` 0) instead of
/// a FIN: for a stream cut short, so that the peer cannot take what it got
/// for the whole. Best effort: without it the peer sees a FIN.
pub fn reset_on_close(stream: &TcpStream) {
    let _ = socket2::SockRef::from(stream).set_linger(Some(std::time::Duration::ZERO));
}

/// True when `listener` has `TCP_NODELAY` set: on Linux a connection
/// accepted from it is a clone of the listening socket and starts with the
/// same option, so the `setsockopt` per accepted client can be skipped
/// (one syscall per connection). A listener handed to us (socket activation
/// without `NoDelay=`) answers false, and each client gets the call.
pub fn accepts_nodelay(listener: &TcpListener) -> bool {
    cfg!(target_os = "linux")
        && socket2::SockRef::from(listener)
            .tcp_nodelay()
            .unwrap_or(false)
}

/// IPv6 is disabled (`EAFNOSUPPORT`) or the host has no IPv6 address
/// (`EADDRNOTAVAIL`).
fn no_ipv6(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::EAFNOSUPPORT | libc::EADDRNOTAVAIL)
    )
}

/// Out of descriptors (`EMFILE`, `ENFILE`) or memory (`ENOBUFS`,
/// `ENOMEM`): a condition of this host that passes, unlike a peer's error.
pub fn out_of_resources(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// An error for a one-line message: `Address already in use (os error 98)`
/// becomes `address already in use`.
pub fn describe(err: &io::Error) -> String {
    let text = err.to_string();
    let text = match text.find(" (os error") {
        Some(i) => text.get(..i).unwrap_or(&text).to_string(),
        None => text,
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => text,
    }
}

/// What one non-blocking call (read, write, accept, poll) did, with
/// `EINTR` already retried: every call site matches these three cases and
/// nothing else.
#[derive(Debug)]
pub enum Io<T> {
    /// It completed. For a read, `0` is the peer's end of file; for a
    /// write, `0` means the peer took nothing.
    Done(T),
    /// Nothing can be done now (`EAGAIN`): the next readiness event says
    /// when to try again. For a blocking socket with a timeout, the timeout.
    WouldBlock,
    /// It failed for good: a reset, a broken pipe, out of descriptors.
    Failed(io::Error),
}

/// Runs `call`, again while a signal interrupts it, and sorts its result.
#[inline]
pub fn io<T>(mut call: impl FnMut() -> io::Result<T>) -> Io<T> {
    loop {
        match call() {
            Ok(value) => return Io::Done(value),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Io::WouldBlock,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Io::Failed(e),
        }
    }
}

/// Where a non-blocking connect stands.
#[derive(Debug)]
pub enum Connect {
    /// Still in progress: wait for the next writable event.
    Pending,
    Connected,
    Failed(io::Error),
}

/// Non-blocking connect progress from the socket's event: writable with
/// no error, hang-up or read-closed flag is a connect that completed (a
/// socket in SYN-SENT is never writable), and costs no syscall; anything
/// else asks the socket ([`connect_progress`]). Saves the `SO_ERROR` and
/// `getpeername` calls of every upstream connect.
pub fn connect_progress_after(event: &mio::event::Event, stream: &TcpStream) -> Connect {
    let troubled = event.is_error() || event.is_read_closed() || event.is_write_closed();
    match (troubled, event.is_writable()) {
        (false, true) => Connect::Connected,
        (false, false) => Connect::Pending,
        (true, _) => connect_progress(stream),
    }
}

/// Non-blocking connect progress, as mio documents it: `take_error`, then
/// `peer_addr` (`NotConnected` means keep waiting).
pub fn connect_progress(stream: &TcpStream) -> Connect {
    match stream.take_error() {
        Ok(Some(e)) | Err(e) => return Connect::Failed(e),
        Ok(None) => {}
    }
    match stream.peer_addr() {
        Ok(_) => Connect::Connected,
        Err(e) if e.kind() == io::ErrorKind::NotConnected => Connect::Pending,
        Err(e) => Connect::Failed(e),
    }
}

/// Starts a non-blocking connect to the first of `addrs[from..]` that
/// takes one, with `TCP_NODELAY` set; its index and stream. `retried(failed,
/// why, next)` is told of each address that failed at once while another
/// one is left. The error is the last address's.
pub fn connect_first(
    addrs: &[SocketAddr],
    from: usize,
    mut retried: impl FnMut(SocketAddr, &io::Error, SocketAddr),
) -> io::Result<(usize, TcpStream)> {
    let mut last = io::Error::new(io::ErrorKind::InvalidInput, "no forward address");
    for (i, addr) in addrs.iter().enumerate().skip(from) {
        match TcpStream::connect(*addr) {
            Ok(stream) => {
                // Best effort: latency matters more than packet count here.
                let _ = stream.set_nodelay(true);
                return Ok((i, stream));
            }
            Err(e) => {
                if let Some(next) = addrs.get(i + 1) {
                    retried(*addr, &e, *next);
                }
                last = e;
            }
        }
    }
    Err(last)
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

/// `addr` with an IPv4-mapped IP as plain IPv4 (`[::ffff:127.0.0.1]:5000`
/// as `127.0.0.1:5000`): how a dual-stack listener's IPv4 clients are
/// written in logs.
pub fn plain(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(canonical(addr.ip()), addr.port())
}

/// `(IP, port)` with an IPv4-mapped IP as plain IPv4: how an accepted
/// peer and an upstream's local address compare.
pub fn endpoint(addr: SocketAddr) -> (IpAddr, u16) {
    (canonical(addr.ip()), addr.port())
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

    /// Accepts one loopback client from `listener`: whether the accepted
    /// socket has `TCP_NODELAY`.
    fn accepted_nodelay(listener: &std::net::TcpListener) -> bool {
        let _client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        socket2::SockRef::from(&accepted).tcp_nodelay().unwrap()
    }

    #[test]
    fn a_client_accepted_from_our_listener_starts_with_nodelay() {
        let listener = listen(addr("127.0.0.1:0"), 16).unwrap();
        assert!(accepts_nodelay(&listener));
        let std_listener = std::net::TcpListener::from(std::os::fd::OwnedFd::from(listener));
        std_listener.set_nonblocking(false).unwrap();
        assert!(
            accepted_nodelay(&std_listener),
            "the kernel did not pass TCP_NODELAY on"
        );
    }

    #[test]
    fn a_listener_without_nodelay_says_so_and_its_clients_lack_it() {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let listener = TcpListener::from_std(std_listener.try_clone().unwrap());
        assert!(
            !accepts_nodelay(&listener),
            "the gate would skip a needed setsockopt"
        );
        assert!(!accepted_nodelay(&std_listener));
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
    fn errors_are_described_in_one_lower_case_phrase_and_classified_by_errno() {
        let in_use = io::Error::from_raw_os_error(libc::EADDRINUSE);
        assert_eq!(describe(&in_use), "address already in use");
        assert_eq!(describe(&io::Error::other("Odd")), "odd");
        for errno in [libc::EMFILE, libc::ENFILE, libc::ENOBUFS, libc::ENOMEM] {
            assert!(out_of_resources(&io::Error::from_raw_os_error(errno)));
        }
        assert!(!out_of_resources(&in_use));
        assert!(no_ipv6(&io::Error::from_raw_os_error(libc::EAFNOSUPPORT)));
        assert!(!no_ipv6(&in_use));
    }

    #[test]
    fn an_interrupted_call_is_retried_and_would_block_is_its_own_case() {
        let mut calls = 0;
        let out = io(|| {
            calls += 1;
            match calls {
                1 => Err(io::Error::from(io::ErrorKind::Interrupted)),
                _ => Ok(7),
            }
        });
        assert!(matches!(out, Io::Done(7)) && calls == 2);
        let blocked: Io<usize> = io(|| Err(io::ErrorKind::WouldBlock.into()));
        assert!(matches!(blocked, Io::WouldBlock));
        let reset: Io<usize> = io(|| Err(io::ErrorKind::ConnectionReset.into()));
        assert!(matches!(reset, Io::Failed(e) if e.kind() == io::ErrorKind::ConnectionReset));
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

#[cfg(test)]
mod connect_tests {
    use super::*;
    use mio::{Events, Interest, Poll, Token};
    use std::time::{Duration, Instant};

    /// Polls until `stream` has an event whose progress is not Pending.
    fn progress(addr: SocketAddr) -> Connect {
        let mut poll = Poll::new().unwrap();
        let mut stream = TcpStream::connect(addr).unwrap();
        poll.registry()
            .register(
                &mut stream,
                Token(1),
                Interest::READABLE | Interest::WRITABLE,
            )
            .unwrap();
        let mut events = Events::with_capacity(8);
        let until = Instant::now() + Duration::from_secs(5);
        while Instant::now() < until {
            poll.poll(&mut events, Some(Duration::from_millis(100)))
                .unwrap();
            for event in events.iter() {
                match connect_progress_after(event, &stream) {
                    Connect::Pending => {}
                    done => return done,
                }
            }
        }
        Connect::Pending
    }

    #[test]
    fn a_completed_connect_is_seen_from_its_writable_event() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        assert!(matches!(progress(addr), Connect::Connected));
    }

    #[test]
    fn a_refused_connect_is_seen_with_its_error() {
        // A port nobody listens on: bound, then closed.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        match progress(addr) {
            Connect::Failed(e) => assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused),
            other => panic!("expected a refused connect, got {other:?}"),
        }
    }
}

//! A pair's unit tests: each state's one deadline, and the pair's size.

use super::*;

const ZERO: Timeouts = Timeouts {
    connect: Duration::ZERO,
    idle: Duration::ZERO,
    fin: Duration::ZERO,
    header: Duration::ZERO,
    queue: Duration::ZERO,
};

#[test]
fn each_state_has_its_one_deadline() {
    let (client, upstream) = loopback_pair();
    let now = Instant::now();
    let mut pair = Pair::accepted(1, client, now);
    assert_eq!(pair.state.deadline(), Deadline::Header);
    assert!(matches!(
        pair.due(now, &ZERO),
        Due::End(Reason::ProxyHeaderMissing)
    ));
    pair.connecting(upstream, 0);
    assert_eq!(pair.state.deadline(), Deadline::Connect);
    pair.connected(now);
    assert_eq!(pair.state.deadline(), Deadline::Idle);
    if let State::Relaying { client, .. } = &mut pair.state {
        *client = Client::HalfClosed {
            upstream_shut: false,
        };
    }
    assert_eq!(pair.state.deadline(), Deadline::Fin);
    let (client, _) = loopback_pair();
    let mut lingering = Pair::accepted(2, client, now);
    let mut pool = Pool::new(1024, 1);
    assert!(matches!(
        lingering.stop_relaying(Reason::Refused, &mut pool),
        Ok(None)
    ));
    assert_eq!(lingering.state.deadline(), Deadline::Linger);
    assert!(matches!(
        lingering.due(now, &ZERO),
        Due::Close(Ending::Bound)
    ));
}

#[test]
fn a_pair_stays_small() {
    // The bytes per idle pair are a published figure (README,
    // BENCHMARKS.md), at most 400 (issue 12); the slab entry is most of
    // it. The seq tracker (`Seqs`, 64 bytes, no allocation while idle)
    // took it from 216 to 280.
    let size = std::mem::size_of::<Pair>();
    eprintln!("Pair: {size} bytes");
    assert!(size <= 280, "{size}");
}

/// Two connected non-blocking loopback streams.
fn loopback_pair() -> (TcpStream, TcpStream) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let a = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (b, _) = listener.accept().unwrap();
    a.set_nonblocking(true).unwrap();
    b.set_nonblocking(true).unwrap();
    (TcpStream::from_std(a), TcpStream::from_std(b))
}

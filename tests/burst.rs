//! Many clients arriving at once.

mod util;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use mio::{Events, Interest, Poll, Token};

use util::*;

#[test]
fn a_burst_of_600_connects_is_queued_without_dropping_a_syn() {
    let server = FooServer::start(ServerOpts::default());
    let proxy = Proxy::start(&server.addr.to_string(), &[]);
    let mut poll = Poll::new().unwrap();
    let mut clients: Vec<mio::net::TcpStream> = (0..600)
        .map(|i| {
            let mut s = mio::net::TcpStream::connect(proxy.addr).unwrap();
            poll.registry()
                .register(&mut s, Token(i), Interest::WRITABLE)
                .unwrap();
            s
        })
        .collect();
    // A SYN the listen queue dropped is retried after a second: every
    // handshake done well within that means none was dropped.
    let deadline = Instant::now() + Duration::from_millis(800);
    let mut connected = HashSet::new();
    let mut events = Events::with_capacity(1024);
    while connected.len() < clients.len() && Instant::now() < deadline {
        let left = deadline.saturating_duration_since(Instant::now());
        poll.poll(&mut events, Some(left)).unwrap();
        for event in events.iter() {
            let i = event.token().0;
            if clients[i].peer_addr().is_ok() {
                connected.insert(i);
            }
        }
    }
    assert_eq!(
        connected.len(),
        clients.len(),
        "handshakes still pending after 800 ms: the listen backlog dropped SYNs"
    );
    // And the proxy serves them.
    let mut c = proxy.connect();
    use std::io::Write;
    c.write_all(b"REQ 1 x\n").unwrap();
    assert_eq!(
        read_exact_timeout(&mut c, answers(1..=1).len()),
        answers(1..=1)
    );
    clients.clear();
}

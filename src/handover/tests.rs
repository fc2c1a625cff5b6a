//! The hand-over's unit tests: the messages on the control socket and the descriptors they carry.

use super::*;
use crate::recovery::{Totals, WindowBucket};

fn snapshot() -> Snapshot {
    Snapshot {
        written_at_ms: 1_795_817_411_000,
        totals: Totals {
            msg_req: 7,
            msg_ack: 5,
            msg_nak: 2,
            ..Totals::default()
        },
        window: vec![WindowBucket {
            start_ms: 1_795_817_410_900,
            req: 7,
            resp: 7,
        }],
        ..Snapshot::default()
    }
}

#[test]
fn every_message_reads_back_as_written() {
    let all = [
        Msg::Hello {
            version: VERSION,
            pid: 42,
        },
        Msg::Listeners {
            listen: Some("127.0.0.1:8002".parse().unwrap()),
            admin: None,
        },
        Msg::Listeners {
            listen: Some("[::]:8002".parse().unwrap()),
            admin: Some("[::1]:8088".parse().unwrap()),
        },
        Msg::Busy { pid: 9 },
        Msg::Refused("protocol version 2 is not spoken here".into()),
        Msg::Ready,
        Msg::Counts(snapshot()),
        Msg::Final {
            lock: true,
            control: false,
            snapshot: snapshot(),
        },
        Msg::Done,
    ];
    for msg in all {
        let line = msg.encode();
        assert!(line.ends_with('\n') && line.matches('\n').count() == 1);
        let back = Msg::decode(line.trim_end().as_bytes()).unwrap();
        assert_eq!(back, msg);
    }
}

#[test]
fn garbage_is_an_error_not_a_panic() {
    for line in [
        &b"HELLO"[..],
        b"HELLO x y",
        b"LISTENERS 1.2.3.4",
        b"COUNTS {",
        b"FINAL lock",
        b"\xff",
        b"WHAT",
    ] {
        assert!(Msg::decode(line).is_err(), "{line:?}");
    }
}

#[test]
fn lines_and_descriptors_cross_a_socket_pair_in_order() {
    let (a, b) = UnixStream::pair().unwrap();
    let (x, _y) = UnixStream::pair().unwrap();
    let mut sender = Link::new(a);
    sender.send(&Msg::Ready, &[]).unwrap();
    sender
        .send(
            &Msg::Listeners {
                listen: Some("127.0.0.1:1".parse().unwrap()),
                admin: None,
            },
            &[x.as_fd()],
        )
        .unwrap();
    sender.send(&Msg::Done, &[]).unwrap();
    let mut receiver = Link::new(b);
    let mut got = Vec::new();
    while got.len() < 3 {
        assert!(matches!(receiver.fill(), Io::Done(n) if n > 0));
        while let Some(msg) = receiver.next_msg().unwrap() {
            got.push(msg);
        }
    }
    assert_eq!(got.first(), Some(&Msg::Ready));
    assert_eq!(got.get(2), Some(&Msg::Done));
    let fd = receiver.take_fd().expect("the descriptor came along");
    // The descriptor is the other end's peer: writing to it reaches `_y`.
    let passed = UnixStream::from(fd);
    assert_eq!(
        passed.peer_addr().is_ok(),
        x.peer_addr().is_ok(),
        "same kind of socket"
    );
    assert!(receiver.take_fd().is_none());
}

#[test]
fn the_unspecified_v6_listen_address_matches_its_v4_fallback() {
    let v6: SocketAddr = "[::]:8002".parse().unwrap();
    assert!(same_listen(v6, "0.0.0.0:8002".parse().unwrap()));
    assert!(same_listen(v6, v6));
    assert!(!same_listen(v6, "0.0.0.0:8003".parse().unwrap()));
    let lo: SocketAddr = "127.0.0.1:8002".parse().unwrap();
    assert!(!same_listen(lo, "0.0.0.0:8002".parse().unwrap()));
}

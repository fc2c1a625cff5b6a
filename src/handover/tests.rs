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

/// What a receiving link makes of `bytes`, written by a thread while it
/// reads: the messages it read until the end, or the error that ended it.
fn read_all(bytes: Vec<u8>) -> Result<usize, io::ErrorKind> {
    let (mut a, b) = UnixStream::pair().unwrap();
    b.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        let _ = a.write_all(&bytes);
    });
    let mut receiver = Link::new(b);
    let mut messages = 0;
    let result = loop {
        match receiver.fill() {
            Io::Done(0) => break Ok(messages),
            Io::Done(_) => {}
            Io::WouldBlock => break Err(io::ErrorKind::TimedOut),
            Io::Failed(e) => break Err(e.kind()),
        }
        // One message taken per read, as the old process's side does.
        if let Ok(Some(_)) | Err(_) = receiver.next_msg() {
            messages += 1;
        }
    };
    drop(receiver);
    writer.join().unwrap();
    result
}

#[test]
fn the_line_cap_counts_the_line_being_read_not_complete_ones_before_it() {
    // A longest line with its newline is read whole.
    let mut longest = vec![b'x'; MAX_LINE];
    longest.push(b'\n');
    assert_eq!(read_all(longest), Ok(1));
    // One byte more is too long, also after complete lines: one left
    // unread before it (one message is taken per read, and 2,000 lines
    // outlast the reads) used to hide any length after it.
    for before in [Vec::new(), b"READY\n".repeat(2000)] {
        let mut long = before.clone();
        long.extend(std::iter::repeat_n(b'x', MAX_LINE + 1));
        assert_eq!(
            read_all(long),
            Err(io::ErrorKind::InvalidData),
            "{} bytes of lines before",
            before.len()
        );
    }
}

#[test]
fn descriptors_and_the_senders_credentials_arrive_together() {
    let (a, b) = UnixStream::pair().unwrap();
    rustix::net::sockopt::set_socket_passcred(&b, true).unwrap();
    let (x, _y) = UnixStream::pair().unwrap();
    let (z, _w) = UnixStream::pair().unwrap();
    let mut sender = Link::new(a);
    let listeners = Msg::Listeners {
        listen: Some("127.0.0.1:1".parse().unwrap()),
        admin: Some("127.0.0.1:2".parse().unwrap()),
    };
    sender.send(&listeners, &[x.as_fd(), z.as_fd()]).unwrap();
    let mut receiver = Link::new(b);
    assert!(matches!(receiver.fill(), Io::Done(n) if n > 0));
    assert_eq!(receiver.next_msg().unwrap(), Some(listeners));
    assert!(receiver.take_fd().is_some() && receiver.take_fd().is_some());
    let sender = receiver
        .sender()
        .expect("SO_PASSCRED brings the credentials");
    assert_eq!(sender_pid(&sender), Ok(std::process::id()));
}

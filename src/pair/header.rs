//! The PROXY protocol header a client sends first (`--accept-proxy`): peeked at until whole, then read exactly.

use std::io::Read;

use log::debug;

use super::{Outcome, Reason, Side};
use crate::net::{self, Io, describe};
use crate::proxy_protocol::{self, MAX_HEADER, Parsed};

/// Peeks at the client's first bytes until they hold a whole PROXY
/// protocol header, then reads exactly that header: the client's own bytes
/// stay in the socket for the relay.
pub(super) fn read_header(id: u64, client: &mut Side) -> Outcome {
    let wait = Outcome::Going {
        requeue: false,
        moved: false,
        rearm: false,
    };
    if !client.readable {
        return wait;
    }
    let mut buf = [0u8; MAX_HEADER];
    let n = match net::io(|| client.stream.peek(&mut buf)) {
        Io::Done(0) => return Outcome::End(Reason::ProxyHeaderMissing),
        Io::Done(n) => n,
        Io::WouldBlock => {
            client.readable = false;
            return wait;
        }
        Io::Failed(e) => {
            debug!("pair {id}: client read failed: {}", describe(&e));
            return Outcome::End(Reason::ClientFailed);
        }
    };
    match proxy_protocol::parse(buf.get(..n).unwrap_or_default()) {
        // Peeked bytes stay readable: only new bytes bring an edge, and a
        // FIN already seen brings none.
        Parsed::Incomplete if client.read_closed => Outcome::End(Reason::ProxyHeaderMissing),
        Parsed::Incomplete => {
            client.readable = false;
            wait
        }
        Parsed::Invalid(why) => {
            debug!("pair {id}: {why}");
            Outcome::End(Reason::ProxyHeaderInvalid)
        }
        Parsed::Done(header) => {
            let Some(consume) = buf.get_mut(..header.len) else {
                return Outcome::End(Reason::ProxyHeaderInvalid);
            };
            match net::io(|| client.stream.read(consume)) {
                Io::Done(got) if got == header.len => Outcome::Header(header.addresses),
                Io::Failed(e) => {
                    debug!("pair {id}: client read failed: {}", describe(&e));
                    Outcome::End(Reason::ClientFailed)
                }
                // The peeked bytes are in the socket: a short read cannot
                // happen, but is no header either.
                _ => Outcome::End(Reason::ProxyHeaderInvalid),
            }
        }
    }
}

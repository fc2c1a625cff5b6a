//! systemd integration: readiness notification (`sd_notify`'s datagram
//! protocol, written directly) and socket activation (`LISTEN_FDS`).
//!
//! The notify datagram is sent non-blocking: a service manager that does
//! not read never holds up the loop (the one step `sd_notify` crates
//! leave blocking), and it costs no dependency. Nothing happens without
//! `NOTIFY_SOCKET`.

use std::net::{SocketAddr, TcpListener};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr as UnixAddr, UnixDatagram};
use std::sync::OnceLock;

use log::debug;

use crate::net::describe;

/// `NOTIFY_SOCKET`, read once at start.
static NOTIFY_SOCKET: OnceLock<Option<String>> = OnceLock::new();

/// Reads `NOTIFY_SOCKET` (call it at start, before any thread runs).
pub fn init() {
    let _ = NOTIFY_SOCKET.set(
        std::env::var("NOTIFY_SOCKET")
            .ok()
            .filter(|s| !s.is_empty()),
    );
}

/// Sends `state` (`READY=1`, `STOPPING=1`, `MAINPID=N\nREADY=1`, ...) to
/// the service manager, if there is one. Never blocks; a failure is logged
/// at debug level only (the manager's own timeout reports a missed READY).
pub fn notify(state: &str) {
    let Some(Some(target)) = NOTIFY_SOCKET.get() else {
        return;
    };
    let addr = match target.strip_prefix('@') {
        // Linux's abstract namespace.
        Some(name) => UnixAddr::from_abstract_name(name.as_bytes()),
        None => UnixAddr::from_pathname(target),
    };
    let sent = addr.and_then(|addr| {
        let sock = UnixDatagram::unbound()?;
        sock.set_nonblocking(true)?;
        sock.send_to_addr(state.as_bytes(), &addr)
    });
    if let Err(e) = sent {
        debug!(
            "cannot notify the service manager at {target}: {}",
            describe(&e)
        );
    }
}

/// The listening TCP sockets the service manager passed (`LISTEN_FDS`;
/// `LISTEN_PID`, when set and not empty, must be this process, as listenfd
/// reads it, so a wrapper may pass them on by unsetting it), each with its
/// address. Call it before
/// any thread runs: it unsets those variables. A passed descriptor that is
/// not a listening TCP socket is an error naming it.
pub fn listen_fds() -> Result<Vec<(SocketAddr, TcpListener)>, String> {
    let mut fds = listenfd::ListenFd::from_env();
    let mut out = Vec::new();
    for i in 0..fds.len() {
        let fd = 3 + i;
        let listener = fds
            .take_tcp_listener(i)
            .map_err(|e| format!("socket activation: descriptor {fd}: {}", describe(&e)))?
            .ok_or_else(|| format!("socket activation: descriptor {fd} is not a TCP socket"))?;
        let addr = listener
            .local_addr()
            .map_err(|e| format!("socket activation: descriptor {fd}: {}", describe(&e)))?;
        out.push((addr, listener));
    }
    Ok(out)
}

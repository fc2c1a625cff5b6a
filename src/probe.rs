//! `--probe URL`: one HTTP GET that exits 0 on a 2xx answer, so a container
//! image with nothing but the proxy in it can run its own health check.
//!
//! Blocking std sockets are fine here: the probe is a process of its own
//! (`foo-proxy --probe ...`), never the proxy's event loop.

use std::fmt;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use crate::cli::{self, Target};
use crate::net::{self, Io, describe};

/// The whole probe (resolve, connect, request, status line) gets this long.
/// Shorter than the image's `HEALTHCHECK --timeout` (3 s), so the probe
/// reports its own failure instead of being killed.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Most bytes read while looking for the end of the status line
/// (`HTTP/1.1 200 OK\r\n`); an answer without one by then is unhealthy.
const STATUS_LINE_MAX: usize = 256;

/// Why a probe found the admin socket unhealthy: one line.
#[derive(Debug, PartialEq, Eq)]
pub struct ProbeError(pub String);

impl fmt::Display for ProbeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Runs the probe: exit 0 on a 2xx answer; otherwise one line on stderr
/// (`foo-proxy: probe URL: WHY`) and exit 1. Nothing on stdout.
pub fn main(target: &Target) -> ExitCode {
    match probe(target, PROBE_TIMEOUT) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            // Exit 1 whether or not stderr takes the line (no panic).
            let line = format!("foo-proxy: probe {}: {e}\n", target.url);
            let _ = crate::output::print_now(true, &line);
            ExitCode::from(1)
        }
    }
}

/// GETs `target` within `timeout` and returns the 2xx status it answered.
/// Every resolved address is tried in order until one connects. Errors:
/// the name does not resolve, no address connects, the request or the
/// status line times out or fails, or the status is not 2xx.
pub fn probe(target: &Target, timeout: Duration) -> Result<u16, ProbeError> {
    let deadline = Instant::now() + timeout;
    let left = || {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| ProbeError(format!("no answer within {timeout:?}")))
    };
    let addrs = cli::resolve(&target.authority, "localhost").map_err(ProbeError)?;
    let mut last = None;
    let mut stream = None;
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, left()?) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = Some(format!("cannot connect to {addr}: {}", describe(&e))),
        }
    }
    let Some(mut stream) = stream else {
        return Err(ProbeError(last.unwrap_or_else(|| "no address".into())));
    };
    let io = |what: &str, e: std::io::Error| match e.kind() {
        ErrorKind::WouldBlock | ErrorKind::TimedOut => {
            ProbeError(format!("no answer within {timeout:?}"))
        }
        _ => ProbeError(format!("cannot {what}: {}", describe(&e))),
    };
    stream
        .set_write_timeout(Some(left()?))
        .map_err(|e| io("send the request", e))?;
    let host = match target.authority.strip_prefix(':') {
        Some(port) => format!("localhost:{port}"),
        None => target.authority.clone(),
    };
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: foo-proxy-probe\r\nConnection: close\r\n\r\n",
        target.path
    );
    stream
        .write_all(request.as_bytes())
        .map_err(|e| io("send the request", e))?;
    let mut head = Vec::with_capacity(STATUS_LINE_MAX);
    let mut buf = [0u8; STATUS_LINE_MAX];
    while !head.contains(&b'\n') && head.len() < STATUS_LINE_MAX {
        stream
            .set_read_timeout(Some(left()?))
            .map_err(|e| io("read the answer", e))?;
        let n = match net::io(|| stream.read(&mut buf)) {
            Io::Done(0) => break,
            Io::Done(n) => n,
            Io::WouldBlock => return Err(io("read the answer", ErrorKind::WouldBlock.into())),
            Io::Failed(e) => return Err(io("read the answer", e)),
        };
        head.extend_from_slice(buf.get(..n).unwrap_or(&[]));
    }
    let status = status_code(&head)
        .ok_or_else(|| ProbeError("the answer is not an HTTP/1.x status line".into()))?;
    if (200..300).contains(&status) {
        Ok(status)
    } else {
        Err(ProbeError(format!("answered status {status}")))
    }
}

/// The status code of an `HTTP/1.x NNN ...` status line at the start of
/// `head`, if it is one.
fn status_code(head: &[u8]) -> Option<u16> {
    let line = head.split(|&b| b == b'\n').next()?;
    let rest = line.strip_prefix(b"HTTP/1.")?;
    if !matches!(rest.first(), Some(b'0' | b'1')) {
        return None;
    }
    let after = rest.get(1..)?.strip_prefix(b" ")?;
    let code = after.get(..3)?;
    // Exactly three digits (RFC 9112 status-code): `2000` is not `200`.
    if !code.iter().all(u8::is_ascii_digit) || !matches!(after.get(3), Some(b' ' | b'\r') | None) {
        return None;
    }
    std::str::from_utf8(code).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_splits_into_authority_and_path() {
        let t = Target::parse("http://127.0.0.1:8088/health").unwrap();
        assert_eq!(
            (t.authority.as_str(), t.path.as_str()),
            ("127.0.0.1:8088", "/health")
        );
        let t = Target::parse("http://[::1]:8088").unwrap();
        assert_eq!((t.authority.as_str(), t.path.as_str()), ("[::1]:8088", "/"));
        let t = Target::parse("http://:8088/ready").unwrap();
        assert_eq!((t.authority.as_str(), t.path.as_str()), (":8088", "/ready"));
    }

    #[test]
    fn a_url_that_is_not_plain_http_with_a_port_is_a_bad_value() {
        for url in [
            "",
            "127.0.0.1:8088/health",
            "https://127.0.0.1:8088/health",
            "http://127.0.0.1/health",
            "http://127.0.0.1:99999/health",
            "http://u@127.0.0.1:8088/health",
            "http://127.0.0.1:8088/health?x=1",
            "http://127.0.0.1:8088/he alth",
            "http://127.0.0.1:8088/health\r\nX: y",
        ] {
            let e = Target::parse(url).unwrap_err();
            assert!(e.0.contains("-probe"), "{url:?}: {e}");
        }
    }

    #[test]
    fn only_an_http_1_status_line_gives_a_code() {
        assert_eq!(status_code(b"HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(
            status_code(b"HTTP/1.0 503 Service Unavailable\r\n"),
            Some(503)
        );
        assert_eq!(status_code(b"HTTP/1.1 204\r\n"), Some(204));
        for bad in [
            &b""[..],
            b"HTTP/1.1",
            b"HTTP/1.1 2x0 OK",
            b"HTTP/2 200",
            b"SSH-2.0-x\r\n",
            b"HTTP/1.1  200",
        ] {
            assert_eq!(status_code(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
        for bad in [
            &b"HTTP/1.1 2000 OK\r\n"[..],
            b"HTTP/1.1 2001\r\n",
            b"HTTP/1.1 200x OK\r\n",
            b"HTTP/1.9 200 OK\r\n",
        ] {
            assert_eq!(status_code(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }
}

//! Any bytes as an admin request: never a panic, and the answer (when the
//! head is complete) is well-formed HTTP/1.1 with a valid status line and a
//! `Content-Length` that matches the body.
#![no_main]

use foo_proxy::admin::{MAX_HEAD, handle_request};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let out = handle_request(data);
    if out.is_empty() {
        // Partial: only a head that can still grow may wait for more.
        assert!(data.len() < MAX_HEAD, "waits on {} bytes", data.len());
        return;
    }

    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut headers);
    let head = match response.parse(&out) {
        Ok(httparse::Status::Complete(n)) => n,
        other => panic!("response head does not parse: {other:?}"),
    };
    let code = response.code.unwrap();
    assert_eq!(response.version, Some(1));
    assert!((200..600).contains(&code), "status {code}");
    let reason = response.reason.unwrap();
    assert!(!reason.is_empty() && reason != "Unknown", "reason {reason:?}");
    // The status line is exactly `HTTP/1.1 NNN Reason\r\n`.
    let status_line = format!("HTTP/1.1 {code} {reason}\r\n");
    assert!(out.starts_with(status_line.as_bytes()));

    let header = |name: &str| {
        response
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| std::str::from_utf8(h.value).unwrap())
    };
    let length: usize = header("content-length").unwrap().parse().unwrap();
    let body = out.len() - head;
    // HEAD gets GET's Content-Length and no body.
    // httparse skips blank lines before the request line, as RFC 9112 allows.
    let start = data.iter().position(|b| !matches!(b, b'\r' | b'\n'));
    let method = data.get(start.unwrap_or(0)..).unwrap();
    let head_only = body == 0 && method.starts_with(b"HEAD ");
    assert!(body == length || head_only, "Content-Length {length}, body {body}");
    assert_eq!(header("connection"), Some("close"));
});

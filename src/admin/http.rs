//! The pure HTTP half of the admin socket: request bytes in, response bytes out (parse, route, render, access log line).

use std::fmt::Write as _;
use std::net::IpAddr;
use std::time::SystemTime;

use crate::admin::page::{self, Asset, CSP};
use crate::admin::prometheus::prometheus;
use crate::dates::{self, http_date};
use crate::stats::Report;

/// Longest request head; a longer one gets 431.
pub const MAX_HEAD: usize = 8 * 1024;
const MAX_HEADERS: usize = 32;

const JSON: &str = "application/json";
const PROMETHEUS: &str = "text/plain; version=0.0.4; charset=utf-8";
const ALLOWED: &str = "GET, HEAD";
/// Every answer names the proxy and its version (`foo-proxy/0.1.0`): the
/// status page shows it, and an operator can tell which build answered.
const SERVER: &str = concat!("foo-proxy/", env!("CARGO_PKG_VERSION"));
/// The reports change every instant: never reuse one.
const NO_STORE: &str = "no-store";
/// The page's files change only with the binary: keep, but revalidate
/// (`ETag`, `If-None-Match`, 304) so a new build is seen at once.
const REVALIDATE: &str = "no-cache";

/// What the answer depends on besides the request and the report.
#[derive(Clone, Copy, Debug)]
pub struct Facts {
    /// Whether the proxy accepts clients (`/ready`).
    pub ready: bool,
    /// `process_start_time_seconds`: the start, in seconds since the epoch.
    pub start_unix: f64,
    /// The wall clock, for the `Date` header and the access log.
    pub now: SystemTime,
}

/// What to do with the bytes received so far.
#[derive(Debug)]
pub enum Reply {
    /// The request head is incomplete: read more.
    Partial,
    /// Send this, then close.
    Done(Answer),
}

/// A rendered response and what the access log says about it.
#[derive(Debug)]
pub struct Answer {
    pub bytes: Vec<u8>,
    pub status: u16,
    /// Body bytes sent (0 for HEAD).
    pub body_len: usize,
    /// `GET /stats HTTP/1.1`, escaped for the log, or `-` when unparsable.
    pub request_line: String,
}

/// Answers one request as a fresh, ready proxy with zero counters would:
/// request bytes in, response bytes out; empty while the head is incomplete.
/// The entry point for fuzzing.
#[cfg(any(test, fuzzing))]
pub fn handle_request(bytes: &[u8]) -> Vec<u8> {
    let facts = Facts {
        ready: true,
        start_unix: 0.0,
        now: std::time::UNIX_EPOCH,
    };
    match respond(bytes, &facts, &mut || {
        crate::stats::Stats::default().report(0)
    }) {
        Reply::Partial => Vec::new(),
        Reply::Done(answer) => answer.bytes,
    }
}

/// Parses the head in `buf` (only its first [`MAX_HEAD`] bytes count) and
/// renders the answer. `report` is called only for routes that show it.
pub fn respond(buf: &[u8], facts: &Facts, report: &mut dyn FnMut() -> Report) -> Reply {
    let full = buf.len() >= MAX_HEAD;
    let buf = buf.get(..MAX_HEAD).unwrap_or(buf);
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) if !full => return Reply::Partial,
        Ok(httparse::Status::Partial) | Err(httparse::Error::TooManyHeaders) => {
            return Reply::Done(error(431, "request head too large", &[], false, facts));
        }
        Err(_) => return Reply::Done(error(400, "malformed request", &[], false, facts)),
    }
    let (Some(method), Some(target), Some(minor)) = (req.method, req.path, req.version) else {
        return Reply::Done(error(400, "malformed request", &[], false, facts));
    };
    let request_line = escape(&format!("{method} {target} HTTP/1.{minor}"));
    let mut answer = route(method, target, req.headers, facts, report);
    answer.request_line = request_line;
    Reply::Done(answer)
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Route {
    Stats,
    Metrics,
    Live,
    Ready,
    /// The status page (`/`) and its script and style.
    Page(Asset),
}

fn route(
    method: &str,
    target: &str,
    headers: &[httparse::Header<'_>],
    facts: &Facts,
    report: &mut dyn FnMut() -> Report,
) -> Answer {
    let head_only = method == "HEAD";
    let (path, query) = match path_and_query(target) {
        Ok(parts) => parts,
        Err(why) => return error(400, why, &[], head_only, facts),
    };
    let route = match path.as_str() {
        "/stats" => Route::Stats,
        "/metrics" => Route::Metrics,
        "/health" | "/heartbeat" | "/status" => Route::Live,
        "/ready" => Route::Ready,
        other => match page::asset(other) {
            Some(asset) => Route::Page(asset),
            None => return error(404, "not found", &[], head_only, facts),
        },
    };
    if !matches!(method, "GET" | "HEAD") {
        return error(
            405,
            "method not allowed",
            &[("Allow", ALLOWED)],
            false,
            facts,
        );
    }
    let (status, content_type, body) = match route {
        Route::Page(asset) => return page_file(asset, headers, head_only, facts),
        Route::Live => (200, JSON, String::from("{\"status\":\"OK\"}\n")),
        Route::Ready if facts.ready => (200, JSON, String::from("{\"status\":\"OK\"}\n")),
        Route::Ready => (503, JSON, String::from("{\"status\":\"unavailable\"}\n")),
        Route::Metrics if wants_prometheus(&query, headers) => {
            (200, PROMETHEUS, prometheus(&report(), facts.start_unix))
        }
        Route::Stats | Route::Metrics => (200, JSON, report().to_json() + "\n"),
    };
    Answer {
        bytes: render(
            status,
            content_type,
            NO_STORE,
            &[],
            body.as_bytes(),
            head_only,
            facts.now,
        ),
        status,
        body_len: if head_only { 0 } else { body.len() },
        request_line: String::new(),
    }
}

/// One of the status page's files, with its CSP and entity tag; 304 (GET's
/// headers, no body) when `If-None-Match` names the current tag or `*`.
fn page_file(
    asset: Asset,
    headers: &[httparse::Header<'_>],
    head_only: bool,
    facts: &Facts,
) -> Answer {
    let tag = format!("\"{:016x}\"", asset.tag);
    let fresh = headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("if-none-match"))
        .filter_map(|h| std::str::from_utf8(h.value).ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .any(|t| t == "*" || t.strip_prefix("W/").unwrap_or(t) == tag);
    let extra = [
        ("ETag", tag.as_str()),
        ("Content-Security-Policy", CSP),
        ("X-Content-Type-Options", "nosniff"),
        ("Referrer-Policy", "no-referrer"),
    ];
    let (status, head_only) = if fresh { (304, true) } else { (200, head_only) };
    Answer {
        bytes: render(
            status,
            asset.content_type,
            REVALIDATE,
            &extra,
            asset.body.as_bytes(),
            head_only,
            facts.now,
        ),
        status,
        body_len: if head_only { 0 } else { asset.body.len() },
        request_line: String::new(),
    }
}

/// The path and query of a request target, normalised: the origin form
/// (`/stats?x`), or the absolute form (`http://host:8088/stats?x`, which
/// RFC 9112 section 3.2.2 requires a server to accept) without its scheme
/// and authority, an empty path meaning `/`. Percent-encoded unreserved
/// characters are decoded (RFC 3986 section 6.2.2.2: `/%73tats` is
/// `/stats`); other escapes stay as they are. `Err` names why the target is
/// unusable, for a 400: a fragment (never part of a request target), an
/// authority with userinfo (RFC 9110 section 4.2.4), an empty host or a bad
/// port, a broken escape, or another form (`*`, `host:port`).
fn path_and_query(target: &str) -> Result<(String, String), &'static str> {
    if target.contains('#') {
        return Err("a request target has no fragment");
    }
    let rest = if target.starts_with('/') {
        target
    } else {
        let scheme_len = ["http://", "https://"]
            .into_iter()
            .find_map(|scheme| {
                let head = target.get(..scheme.len())?;
                head.eq_ignore_ascii_case(scheme).then_some(scheme.len())
            })
            .ok_or("request target must be a path or an http URI")?;
        let after = target.get(scheme_len..).unwrap_or("");
        let end = after.find(['/', '?']).unwrap_or(after.len());
        check_authority(after.get(..end).unwrap_or(""))?;
        after.get(end..).unwrap_or("")
    };
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    let path = if path.is_empty() { "/" } else { path };
    Ok((decode_unreserved(path)?, decode_unreserved(query)?))
}

/// `host[:port]` of an http URI: a registered name or an IP literal in
/// brackets, never empty, no userinfo, a port of digits up to 65535 (or
/// empty, as RFC 3986 allows).
fn check_authority(authority: &str) -> Result<(), &'static str> {
    const BAD: &str = "bad host or port in the request target";
    if authority.contains('@') {
        return Err("a request target has no userinfo");
    }
    let (host, port) = match authority.strip_prefix('[') {
        Some(literal) => {
            let (ip, after) = literal.split_once(']').ok_or(BAD)?;
            let ok = !ip.is_empty()
                && ip
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.');
            if !ok {
                return Err(BAD);
            }
            match after {
                "" => (ip, None),
                _ => (ip, Some(after.strip_prefix(':').ok_or(BAD)?)),
            }
        }
        None => match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        },
    };
    let reg_name = |b: u8| b.is_ascii_alphanumeric() || b"-._~%!$&'()*+,;=".contains(&b);
    if host.is_empty() || (!authority.starts_with('[') && !host.bytes().all(reg_name)) {
        return Err(BAD);
    }
    match port {
        Some(p)
            if !p.is_empty()
                && (!p.bytes().all(|b| b.is_ascii_digit()) || p.parse::<u16>().is_err()) =>
        {
            Err(BAD)
        }
        _ => Ok(()),
    }
}

/// Decodes `%XX` where it stands for an unreserved character (letters,
/// digits, `-._~`); other escapes stay. A `%` without two hex digits after
/// it is an error.
fn decode_unreserved(text: &str) -> Result<String, &'static str> {
    const BAD: &str = "bad percent-encoding in the request target";
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b != b'%' {
            out.push(b);
            i += 1;
            continue;
        }
        let hex = bytes.get(i + 1..i + 3).ok_or(BAD)?;
        if !hex.iter().all(u8::is_ascii_hexdigit) {
            return Err(BAD);
        }
        let value = std::str::from_utf8(hex)
            .ok()
            .and_then(|h| u8::from_str_radix(h, 16).ok())
            .ok_or(BAD)?;
        if value.is_ascii_alphanumeric() || b"-._~".contains(&value) {
            out.push(value);
        } else {
            out.push(b'%');
            out.extend_from_slice(hex);
        }
        i += 3;
    }
    // Only ASCII was decoded, so what was UTF-8 stays UTF-8.
    String::from_utf8(out).map_err(|_| BAD)
}

/// An error answer with a small JSON body.
fn error(status: u16, why: &str, extra: &[(&str, &str)], head_only: bool, facts: &Facts) -> Answer {
    let body = format!("{{\"error\":\"{why}\"}}\n");
    Answer {
        bytes: render(
            status,
            JSON,
            NO_STORE,
            extra,
            body.as_bytes(),
            head_only,
            facts.now,
        ),
        status,
        body_len: if head_only { 0 } else { body.len() },
        request_line: String::from("-"),
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        304 => "Not Modified",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// The whole response. HEAD gets GET's headers, `Content-Length` included
/// (so does a 304: the length the 200 would have had).
fn render(
    status: u16,
    content_type: &str,
    cache_control: &str,
    extra: &[(&str, &str)],
    body: &[u8],
    head_only: bool,
    now: SystemTime,
) -> Vec<u8> {
    let mut head = format!(
        "HTTP/1.1 {status} {}\r\nDate: {}\r\nServer: {SERVER}\r\n\
         Content-Type: {content_type}\r\nContent-Length: {}\r\n\
         Access-Control-Allow-Origin: *\r\nCache-Control: {cache_control}\r\n\
         Connection: close\r\n",
        reason(status),
        http_date(now),
        body.len()
    );
    for (name, value) in extra {
        let _ = write!(head, "{name}: {value}\r\n");
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    if !head_only {
        out.extend_from_slice(body);
    }
    out
}

/// `?format=prometheus` (or `json`) decides; otherwise the Accept header
/// must rank text/plain or OpenMetrics above JSON. `*/*` ties, so JSON.
fn wants_prometheus(query: &str, headers: &[httparse::Header<'_>]) -> bool {
    for pair in query.split('&') {
        match pair {
            "format=prometheus" => return true,
            "format=json" => return false,
            _ => {}
        }
    }
    let accept: Vec<&str> = headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("accept"))
        .filter_map(|h| std::str::from_utf8(h.value).ok())
        .collect();
    if accept.is_empty() {
        return false;
    }
    let q = |t: &str, s: &str| quality(&accept, t, s);
    let text = q("text", "plain").max(q("application", "openmetrics-text"));
    text > q("application", "json")
}

/// The q of the most specific media range in `accept` matching `t/s`
/// (RFC 9110 12.5.1), or 0 when none matches.
fn quality(accept: &[&str], t: &str, s: &str) -> f32 {
    let mut best: Option<(u8, f32)> = None;
    for item in accept.iter().flat_map(|v| v.split(',')) {
        let mut parts = item.split(';');
        let range = parts.next().unwrap_or("").trim();
        let Some((rt, rs)) = range.split_once('/') else {
            continue;
        };
        let specificity = if rt == "*" && rs == "*" {
            0
        } else if rt.eq_ignore_ascii_case(t) && rs == "*" {
            1
        } else if rt.eq_ignore_ascii_case(t) && rs.eq_ignore_ascii_case(s) {
            2
        } else {
            continue;
        };
        let mut q = 1.0f32;
        for param in parts {
            if let Some((k, v)) = param.split_once('=')
                && k.trim().eq_ignore_ascii_case("q")
            {
                q = qvalue(v.trim()).unwrap_or(0.0);
            }
        }
        best = match best {
            Some((bs, bq)) if bs > specificity || (bs == specificity && bq >= q) => Some((bs, bq)),
            _ => Some((specificity, q)),
        };
    }
    best.map_or(0.0, |(_, q)| q)
}

/// Quotes, backslashes and bytes outside printable ASCII become `\xNN`, so a
/// request cannot forge or split log lines.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\' {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
    out
}

/// Common Log Format, as Go's gorilla/handlers writes it:
/// `127.0.0.1 - - [27/Nov/2026:22:10:11 +0000] "GET /stats HTTP/1.1" 200 512`.
pub fn access_line(peer: IpAddr, t: SystemTime, answer: &Answer) -> String {
    format!(
        "{peer} - - [{}] \"{}\" {} {}",
        dates::clf(t),
        answer.request_line,
        answer.status,
        answer.body_len
    )
}

/// An RFC 9110 `qvalue`: `0`, `0.` and up to three digits, `1`, or `1.`
/// and up to three zeros. Nothing else (`1e0`, `+0.5`, `nan`, which a
/// float parser would take) is a weight.
fn qvalue(v: &str) -> Option<f32> {
    let (whole, fraction) = v.split_once('.').unwrap_or((v, ""));
    let digits = fraction.len() <= 3 && fraction.bytes().all(|b| b.is_ascii_digit());
    match whole {
        "0" if digits => Some(
            fraction
                .parse::<u16>()
                .map_or(0.0, |f| f32::from(f) / 10f32.powi(fraction.len() as i32)),
        ),
        "1" if digits && fraction.bytes().all(|b| b == b'0') => Some(1.0),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::prometheus::tests::sample;
    use std::time::{Duration, UNIX_EPOCH};

    fn facts() -> Facts {
        Facts {
            ready: true,
            start_unix: 1_795_817_411.5,
            now: UNIX_EPOCH + Duration::from_secs(1_795_817_411),
        }
    }

    fn ask(req: &str) -> (Answer, String) {
        let mut calls = 0;
        let reply = respond(req.as_bytes(), &facts(), &mut || {
            calls += 1;
            sample()
        });
        assert!(calls <= 1);
        match reply {
            Reply::Done(a) => {
                let text = String::from_utf8(a.bytes.clone()).unwrap();
                (a, text)
            }
            Reply::Partial => panic!("partial: {req:?}"),
        }
    }

    fn body(text: &str) -> &str {
        text.split_once("\r\n\r\n").unwrap().1
    }

    #[test]
    fn stats_is_the_report_json() {
        let (a, text) = ask("GET /stats HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(a.status, 200);
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(text.contains("\r\nContent-Type: application/json\r\n"));
        assert!(text.contains("\r\nAccess-Control-Allow-Origin: *\r\n"));
        assert_eq!(body(&text), sample().to_json() + "\n");
        assert_eq!(a.request_line, "GET /stats HTTP/1.1");
    }

    #[test]
    fn metrics_negotiates_prometheus() {
        let prom = "text/plain; version=0.0.4; charset=utf-8";
        let scraper = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        for (accept, want_prom) in [
            ("*/*", false),
            ("application/json", false),
            ("text/plain", true),
            ("text/*", true),
            (scraper, true),
            ("application/json, text/plain;q=0.5", false),
            ("text/plain;q=0.9, application/json;q=0.1", true),
            ("text/html", false),
            ("text/plain;q=bogus", false),
        ] {
            let (_, text) = ask(&format!(
                "GET /metrics HTTP/1.1\r\nAccept: {accept}\r\n\r\n"
            ));
            assert_eq!(text.contains(prom), want_prom, "{accept}");
        }
        let (_, text) = ask("GET /metrics?format=prometheus HTTP/1.1\r\n\r\n");
        assert!(text.contains(prom));
        assert!(body(&text).contains("foo_messages_total{type=\"req\"} 7\n"));
        let (_, text) = ask("GET /metrics?x=1&format=json HTTP/1.1\r\nAccept: text/plain\r\n\r\n");
        assert!(text.contains("application/json"));
        let (_, text) = ask("GET /stats?format=prometheus HTTP/1.1\r\n\r\n");
        assert!(text.contains("application/json"), "/stats is JSON only");
    }

    #[test]
    fn liveness_readiness_and_errors() {
        for path in ["/health", "/heartbeat", "/status", "/ready"] {
            let (a, text) = ask(&format!("GET {path} HTTP/1.0\r\n\r\n"));
            assert_eq!(a.status, 200, "{path}");
            assert_eq!(body(&text), "{\"status\":\"OK\"}\n");
        }
        let draining = Facts {
            ready: false,
            ..facts()
        };
        let Reply::Done(a) = respond(b"GET /ready HTTP/1.1\r\n\r\n", &draining, &mut sample) else {
            panic!()
        };
        assert_eq!(a.status, 503);
        let Reply::Done(a) = respond(b"GET /health HTTP/1.1\r\n\r\n", &draining, &mut sample)
        else {
            panic!()
        };
        assert_eq!(a.status, 200, "liveness holds while draining");

        let (a, text) = ask("POST /stats HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi");
        assert_eq!(a.status, 405);
        assert!(text.contains("\r\nAllow: GET, HEAD\r\n"));
        assert_eq!(ask("GET /nope HTTP/1.1\r\n\r\n").0.status, 404);
        let (a, text) = ask("HEAD /nope HTTP/1.1\r\n\r\n");
        assert_eq!((a.status, body(&text)), (404, ""));
        assert_eq!(ask("DELETE /nope HTTP/1.1\r\n\r\n").0.status, 404);
        assert_eq!(ask("GET x:8088 HTTP/1.1\r\n\r\n").0.status, 400);
        assert_eq!(ask("\x00\x01garbage\r\n\r\n").0.status, 400);
        assert_eq!(
            ask("GET /stats HTTP/1.1\r\nBad Header\r\n\r\n").0.status,
            400
        );
        let many: String = (0..40).map(|i| format!("X-{i}: y\r\n")).collect();
        assert_eq!(
            ask(&format!("GET /stats HTTP/1.1\r\n{many}\r\n")).0.status,
            431
        );
    }

    #[test]
    fn head_sends_get_headers_without_body() {
        let (get, get_text) = ask("GET /stats HTTP/1.1\r\n\r\n");
        let (head, head_text) = ask("HEAD /stats HTTP/1.1\r\n\r\n");
        assert_eq!(head.status, 200);
        assert_eq!(head.body_len, 0);
        assert_eq!(body(&head_text), "");
        let length = |t: &str| {
            t.lines()
                .find(|l| l.starts_with("Content-Length"))
                .map(str::to_owned)
        };
        assert_eq!(length(&head_text), length(&get_text));
        assert!(get.body_len > 0);
    }

    #[test]
    fn the_absolute_form_of_the_target_is_accepted() {
        let parts = |p: &str, q: &str| Ok((p.to_string(), q.to_string()));
        assert_eq!(path_and_query("/stats?x=1"), parts("/stats", "x=1"));
        assert_eq!(path_and_query("http://h:8088/stats"), parts("/stats", ""));
        assert_eq!(
            path_and_query("HTTP://h/metrics?format=prometheus"),
            parts("/metrics", "format=prometheus")
        );
        assert_eq!(path_and_query("https://h/health"), parts("/health", ""));
        assert_eq!(
            path_and_query("http://[::1]:8088/health"),
            parts("/health", "")
        );
        assert_eq!(path_and_query("http://h:/health"), parts("/health", ""));
        assert!(path_and_query("*").is_err());
        assert!(path_and_query("h:8088").is_err());
        let (a, text) =
            ask("GET http://localhost:8088/stats HTTP/1.1\r\nHost: localhost:8088\r\n\r\n");
        assert_eq!(a.status, 200, "{text}");
        assert_eq!(body(&text), sample().to_json() + "\n");
        let (a, _) = ask("GET http://localhost:8088/nope HTTP/1.1\r\n\r\n");
        assert_eq!(a.status, 404);
    }

    #[test]
    fn an_empty_path_is_slash_with_or_without_a_query() {
        let parts = |p: &str, q: &str| Ok((p.to_string(), q.to_string()));
        assert_eq!(path_and_query("http://h"), parts("/", ""));
        assert_eq!(path_and_query("http://h:8088?x=1"), parts("/", "x=1"));
        for target in ["http://h:8088", "http://h:8088?x=1", "/", "/?x=1"] {
            let (a, text) = ask(&format!("GET {target} HTTP/1.1\r\n\r\n"));
            assert_eq!(a.status, 200, "{target}");
            assert!(text.contains("Content-Type: text/html"), "{target}");
        }
    }

    fn header<'t>(text: &'t str, name: &str) -> Option<&'t str> {
        text.split("\r\n\r\n")
            .next()?
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(": "))
    }

    #[test]
    fn the_status_page_is_html_under_a_csp_that_allows_only_itself() {
        let (a, text) = ask("GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(a.status, 200);
        assert_eq!(
            header(&text, "Content-Type"),
            Some("text/html; charset=utf-8")
        );
        let csp = header(&text, "Content-Security-Policy").unwrap();
        assert!(csp.starts_with("default-src 'none'; "), "{csp}");
        for directive in csp.split("; ").skip(1) {
            let (_, sources) = directive.split_once(' ').unwrap();
            assert!(
                sources == "'self'" || sources == "'none'",
                "{directive}: only the page's own origin, nothing inline"
            );
        }
        assert!(csp.contains("script-src 'self'") && csp.contains("connect-src 'self'"));
        assert_eq!(header(&text, "X-Content-Type-Options"), Some("nosniff"));
        assert_eq!(header(&text, "Cache-Control"), Some("no-cache"));
        assert!(body(&text).starts_with("<!doctype html>"));
        assert!(body(&text).contains("/page.js") && body(&text).contains("/page.css"));
        let total = crate::admin::page::TOTAL_BYTES;
        assert!(total < 48 * 1024, "the page's files are {total} bytes");
        for (path, kind) in [
            ("/page.js", "text/javascript; charset=utf-8"),
            ("/page.css", "text/css; charset=utf-8"),
        ] {
            let (a, text) = ask(&format!("GET {path} HTTP/1.1\r\n\r\n"));
            assert_eq!((a.status, header(&text, "Content-Type")), (200, Some(kind)));
            assert!(a.body_len > 0);
        }
        let (a, _) = ask("POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(a.status, 405);
    }

    #[test]
    fn the_page_answers_head_and_if_none_match_with_get_headers_and_no_body() {
        let (get, get_text) = ask("GET / HTTP/1.1\r\n\r\n");
        let tag = header(&get_text, "ETag").unwrap();
        assert!(tag.starts_with('"') && tag.ends_with('"'), "{tag}");
        let (head, head_text) = ask("HEAD / HTTP/1.1\r\n\r\n");
        assert_eq!((head.status, head.body_len, body(&head_text)), (200, 0, ""));
        assert_eq!(
            header(&head_text, "Content-Length"),
            Some(get.body_len.to_string().as_str())
        );
        for condition in [tag.to_string(), format!("W/{tag}"), "\"x\", *".to_string()] {
            let (a, text) = ask(&format!(
                "GET / HTTP/1.1\r\nIf-None-Match: {condition}\r\n\r\n"
            ));
            assert_eq!(
                (a.status, a.body_len, body(&text)),
                (304, 0, ""),
                "{condition}"
            );
            assert!(text.starts_with("HTTP/1.1 304 Not Modified\r\n"));
            assert_eq!(header(&text, "ETag"), Some(tag));
        }
        let (a, _) = ask("GET / HTTP/1.1\r\nIf-None-Match: \"0\"\r\n\r\n");
        assert_eq!(a.status, 200, "a stale tag gets the file");
        let (_, js) = ask("GET /page.js HTTP/1.1\r\n\r\n");
        assert_ne!(header(&js, "ETag"), Some(tag), "each file has its own tag");
    }

    #[test]
    fn every_answer_names_the_proxy_and_its_version() {
        for req in [
            "GET /stats HTTP/1.1",
            "GET / HTTP/1.1",
            "GET /nope HTTP/1.1",
        ] {
            let (_, text) = ask(&format!("{req}\r\n\r\n"));
            assert_eq!(
                header(&text, "Server"),
                Some(concat!("foo-proxy/", env!("CARGO_PKG_VERSION"))),
                "{req}"
            );
        }
        let (_, text) = ask("GET /stats HTTP/1.1\r\n\r\n");
        assert_eq!(header(&text, "Cache-Control"), Some("no-store"));
    }

    #[test]
    fn fragments_userinfo_empty_hosts_and_bad_ports_are_400() {
        for target in [
            "http://h#frag/health",
            "/health#x",
            "http://h:99999/health",
            "http://h:80x/health",
            "http:///health",
            "http://:8088/health",
            "http://user:pw@h/health",
            "http://@h/health",
            "http://[::1/health",
            "http://[zz]/health",
            "http://h h/health",
            "/%zz",
            "/%4",
            "/stats?x=%g1",
        ] {
            let (a, text) = ask(&format!("GET {target} HTTP/1.1\r\n\r\n"));
            assert_eq!(a.status, 400, "{target}: {text}");
        }
    }

    #[test]
    fn percent_encoded_unreserved_characters_are_decoded_others_kept() {
        assert_eq!(
            decode_unreserved("/%73t%41ts%7E%2d"),
            Ok("/stAts~-".to_string())
        );
        assert_eq!(
            decode_unreserved("/a%2Fb%20c%25"),
            Ok("/a%2Fb%20c%25".to_string())
        );
        let (a, _) = ask("GET /%73tats HTTP/1.1\r\n\r\n");
        assert_eq!(a.status, 200);
        let (a, _) = ask("GET /%2Fstats HTTP/1.1\r\n\r\n");
        assert_eq!(a.status, 404);
        let (_, text) = ask("GET /metrics?format=%70rometheus HTTP/1.1\r\n\r\n");
        assert!(text.contains(PROMETHEUS), "{text}");
    }

    #[test]
    fn blank_lines_before_the_request_line_are_skipped() {
        // Seed fuzz/seeds/admin_request/regression-head-after-blank-lines.
        let (head, text) = ask("\n\r\n\nHEAD /stats HTTP/1.1\r\n\r\n");
        assert_eq!((head.status, head.body_len), (200, 0));
        assert_eq!(body(&text), "");
        assert_eq!(head.request_line, "HEAD /stats HTTP/1.1");
    }

    #[test]
    fn a_head_is_partial_until_complete_and_431_when_full() {
        let mut never = || -> Report { panic!("no report for a partial head") };
        assert!(matches!(
            respond(b"GET /stats HTTP/1.1\r\n", &facts(), &mut never),
            Reply::Partial
        ));
        let mut big = b"GET /stats HTTP/1.1\r\nX: ".to_vec();
        big.resize(MAX_HEAD, b'a');
        let Reply::Done(a) = respond(&big, &facts(), &mut never) else {
            panic!()
        };
        assert_eq!(a.status, 431);
        big.resize(100 * 1024, b'a');
        assert!(
            String::from_utf8(handle_request(&big))
                .unwrap()
                .starts_with("HTTP/1.1 431 ")
        );
        assert!(handle_request(b"GET / HT").is_empty());
    }

    #[test]
    fn access_log_is_common_log_format_and_escaped() {
        let (a, _) = ask("GET /stats?\"x\\ HTTP/1.1\r\n\r\n");
        let line = access_line("127.0.0.1".parse().unwrap(), facts().now, &a);
        assert_eq!(
            line,
            format!(
                "127.0.0.1 - - [27/Nov/2026:22:10:11 +0000] \"GET /stats?\\x22x\\x5c HTTP/1.1\" 200 {}",
                a.body_len
            )
        );
        assert_eq!(http_date(facts().now), "Fri, 27 Nov 2026 22:10:11 GMT");
        assert_eq!(http_date(UNIX_EPOCH), "Thu, 01 Jan 1970 00:00:00 GMT");
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_get_an_http_answer_or_a_wait(
            prefix in proptest::sample::select(vec!["", "GET /stats HTTP/1.1\r\n", "HEAD /metrics?format=prometheus HTTP/1.0\r\nAccept: "]),
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600),
        ) {
            let mut input = prefix.as_bytes().to_vec();
            input.extend_from_slice(&bytes);
            let out = handle_request(&input);
            proptest::prop_assert!(out.is_empty() || out.starts_with(b"HTTP/1.1 "));
        }
    }
}

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
mod tests;

//! The admin HTTP part's unit tests: parsing, routing, negotiation and the access-log line, without a socket.

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
    let Reply::Done(a) = respond(b"GET /health HTTP/1.1\r\n\r\n", &draining, &mut sample) else {
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
    let (a, text) = ask("GET http://localhost:8088/stats HTTP/1.1\r\nHost: localhost:8088\r\n\r\n");
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

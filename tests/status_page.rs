//! The status page (`GET /` on the admin socket) in a real browser: headless
//! Chromium driven over the DevTools protocol, against a proxy under foo-load.
//! Without Chromium the tests print a `SKIPPED:` line and pass; `.ci/run`
//! installs Chromium and prints the same line itself when it cannot.

mod util;

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};
use util::{FooServer, Proxy, ServerOpts, WAIT};

/// The page's polling interval.
const POLL: Duration = Duration::from_secs(1);

/// The Chromium binary: `$CHROMIUM`, else `chromium` or `chromium-browser`
/// on the PATH.
fn chromium() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("CHROMIUM") {
        return Some(PathBuf::from(path));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| ["chromium", "chromium-browser"].map(|name| dir.join(name)))
        .find(|candidate| candidate.is_file())
}

/// A headless Chromium with one page, driven over its DevTools websocket.
/// Killed (its whole process group) and its profile removed on drop.
struct Browser {
    child: Child,
    profile: PathBuf,
    ws: WebSocket<MaybeTlsStream<TcpStream>>,
    next_id: u64,
}

impl Browser {
    /// Starts Chromium on a blank page. Every request to a host name or to
    /// a non-loopback address is sent to a dead proxy on loopback, so the
    /// browser's own background traffic cannot leave the machine.
    fn start(binary: &Path) -> Browser {
        let profile = std::env::temp_dir().join(format!(
            "foo-proxy-status-page-{}-{:?}",
            std::process::id(),
            thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&profile);
        std::fs::create_dir_all(&profile).unwrap();
        let mut cmd = Command::new(binary);
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--remote-debugging-port=0",
            "--remote-debugging-address=127.0.0.1",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            "--disable-default-apps",
            "--no-pings",
            "--proxy-server=http://127.0.0.1:9",
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
            "--window-size=1000,1400",
            "--lang=en-US",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("about:blank")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let mut child = cmd.spawn().expect("spawn chromium");
        // Chromium writes its DevTools port to the profile once it listens.
        let port_file = profile.join("DevToolsActivePort");
        let deadline = Instant::now() + 3 * WAIT;
        let port: u16 = loop {
            if let Some(port) = std::fs::read_to_string(&port_file)
                .ok()
                .and_then(|text| text.lines().next()?.trim().parse().ok())
            {
                break port;
            }
            if Instant::now() > deadline || matches!(child.try_wait(), Ok(Some(_))) {
                let _ = child.kill();
                panic!("chromium did not open its DevTools port");
            }
            thread::sleep(Duration::from_millis(50));
        };
        let list: Value = loop {
            let got = ureq::get(&format!("http://127.0.0.1:{port}/json/list"))
                .call()
                .ok()
                .and_then(|mut r| r.body_mut().read_to_string().ok())
                .and_then(|t| serde_json::from_str::<Value>(&t).ok());
            if let Some(list) = got.filter(|l| {
                l.as_array()
                    .is_some_and(|a| a.iter().any(|t| t["type"] == "page"))
            }) {
                break list;
            }
            assert!(Instant::now() < deadline, "chromium lists no page");
            thread::sleep(Duration::from_millis(50));
        };
        let url = list
            .as_array()
            .and_then(|a| a.iter().find(|t| t["type"] == "page"))
            .and_then(|t| t["webSocketDebuggerUrl"].as_str())
            .expect("a page's websocket")
            .to_string();
        let (ws, _) = tungstenite::connect(url.as_str()).expect("DevTools websocket");
        if let MaybeTlsStream::Plain(stream) = ws.get_ref() {
            stream.set_read_timeout(Some(POLL)).unwrap();
            stream.set_write_timeout(Some(WAIT)).unwrap();
        }
        Browser {
            child,
            profile,
            ws,
            next_id: 0,
        }
    }

    /// Sends one DevTools command and returns its `result`, skipping the
    /// events that arrive meanwhile.
    fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let msg = json!({"id": id, "method": method, "params": params}).to_string();
        self.ws.send(Message::text(msg)).expect("send to chromium");
        let deadline = Instant::now() + 2 * WAIT;
        while Instant::now() < deadline {
            let msg = match self.ws.read() {
                Ok(msg) => msg,
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    continue;
                }
                Err(e) => panic!("DevTools connection: {e}"),
            };
            let Ok(text) = msg.to_text() else { continue };
            let Ok(value) = serde_json::from_str::<Value>(text) else {
                continue;
            };
            if value["id"] == id {
                assert!(value["error"].is_null(), "{method}: {value}");
                return value["result"].clone();
            }
        }
        panic!("no answer to {method} within {:?}", 2 * WAIT);
    }

    /// Evaluates `expression` in the page and returns its value.
    fn eval(&mut self, expression: &str) -> Value {
        let result = self.call(
            "Runtime.evaluate",
            json!({"expression": expression, "returnByValue": true}),
        );
        assert!(
            result["exceptionDetails"].is_null(),
            "{expression}: {result}"
        );
        result["result"]["value"].clone()
    }

    fn open(&mut self, url: &str) {
        self.call("Page.navigate", json!({"url": url}));
    }

    /// What the page shows, read from its DOM; `None` while it loads.
    fn try_view(&mut self) -> Option<View> {
        let v = self.eval(VIEW_JS);
        if v.is_null() {
            return None;
        }
        Some(serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("{v}: {e}")))
    }

    fn view(&mut self) -> View {
        self.try_view().expect("the status page is loaded")
    }

    /// Polls the page's view until `done` holds; panics with the last view.
    fn view_until(&mut self, what: &str, within: Duration, done: impl Fn(&View) -> bool) -> View {
        let deadline = Instant::now() + within;
        loop {
            let view = self.try_view();
            match view {
                Some(view) if done(&view) => return view,
                _ => assert!(Instant::now() < deadline, "{what}: {view:#?}"),
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// A PNG of the whole page at `width` CSS pixels.
    fn screenshot(&mut self, width: u32) -> Vec<u8> {
        self.resize(width, 800);
        let height = self
            .eval("document.documentElement.scrollHeight")
            .as_u64()
            .unwrap();
        self.resize(width, height as u32);
        let shot = self.call("Page.captureScreenshot", json!({"format": "png"}));
        base64_decode(shot["data"].as_str().expect("PNG data"))
    }

    fn resize(&mut self, width: u32, height: u32) {
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": false}),
        );
    }

    fn dark(&mut self, on: bool) {
        let value = if on { "dark" } else { "light" };
        self.call(
            "Emulation.setEmulatedMedia",
            json!({"features": [{"name": "prefers-color-scheme", "value": value}]}),
        );
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.ws.close(None);
        // Chromium's helpers (zygote, renderer, GPU) share its process group.
        let pgid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// Reads what the page displays (the text a person sees, not the data it
/// fetched), as one JSON object.
const VIEW_JS: &str = r#"(() => {
  if (document.readyState === 'loading' || !document.getElementById('line-req')) return null;
  const text = (sel) => { const e = document.querySelector(sel); return e ? e.textContent : null; };
  const cells = (table, attr) => Object.fromEntries(
    [...document.querySelectorAll('#' + table + ' td[data-' + attr + ']')]
      .map((td) => [td.dataset[attr], td.textContent]));
  return {
    state: document.body.dataset.state,
    state_text: text('#state-text'),
    updated: text('#updated'),
    readiness: text('#readiness'),
    version: text('#version'),
    req: text('td[data-key="msg_req"]'),
    ack: text('td[data-key="msg_ack"]'),
    points: (document.getElementById('line-req').getAttribute('points') || '').trim().split(/\s+/).filter(Boolean).length,
    latency_note: text('#latency-note'),
    latency: cells('latency', 'quantile'),
    closed: cells('closed', 'reason'),
    hist_rows: document.querySelectorAll('#hist tbody tr').length,
    hist_hidden: document.getElementById('hist').hidden,
    other: [...document.querySelectorAll('#other th')].map((th) => th.textContent),
    pool: Object.assign(cells('pool', 'key'), cells('discarded', 'key')),
    pool_note: text('#pool-note'),
    queue_waits: text('#queue-waits'),
  };
})()"#;

#[derive(serde::Deserialize, Debug)]
struct View {
    state: String,
    state_text: String,
    updated: String,
    readiness: String,
    version: String,
    req: String,
    ack: String,
    points: usize,
    latency_note: String,
    latency: std::collections::BTreeMap<String, String>,
    closed: std::collections::BTreeMap<String, String>,
    hist_rows: usize,
    hist_hidden: bool,
    other: Vec<String>,
    pool: std::collections::BTreeMap<String, String>,
    pool_note: String,
    queue_waits: String,
}

/// The number in a displayed figure (`1,234,567` -> 1234567), if it shows one.
fn digits(shown: &str) -> Option<u64> {
    let d: String = shown.chars().filter(char::is_ascii_digit).collect();
    d.parse().ok()
}

fn stats(proxy: &Proxy) -> Value {
    ureq::get(&proxy.admin_url("/stats"))
        .call()
        .expect("GET /stats")
        .body_mut()
        .read_to_string()
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .expect("/stats is JSON")
}

fn start_load(proxy: &Proxy, duration: &str) -> Child {
    Command::new(util::tool("foo-load"))
        .args(["--target", &proxy.addr.to_string()])
        .args(["--connections", "4", "--depth", "8", "--duration", duration])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn foo-load")
}

fn browser_or_skip(test: &str) -> Option<Browser> {
    match chromium() {
        Some(binary) => Some(Browser::start(&binary)),
        None => {
            eprintln!("SKIPPED: {test}: no chromium on the PATH (set CHROMIUM to its path)");
            None
        }
    }
}

#[test]
fn the_status_page_follows_the_load_matches_stats_and_says_when_the_proxy_is_gone() {
    let Some(mut browser) = browser_or_skip("the status page tests") else {
        return;
    };
    let server = FooServer::start(ServerOpts::default());
    let mut proxy = Proxy::start(&server.addr.to_string(), &[]);
    browser.open(&proxy.admin_url("/"));
    let first = browser.view_until("the page goes live", WAIT, |v| v.state == "live");
    assert_eq!(digits(&first.req), Some(0), "{first:#?}");
    assert_eq!(first.version, env!("CARGO_PKG_VERSION"));
    assert!(first.readiness.starts_with("Ready"), "{first:#?}");

    // Long enough for every check below on a slow machine; killed after them.
    let mut load = start_load(&proxy, "60s");
    // The displayed REQ total rises.
    let low = browser.view_until("REQ rises", WAIT, |v| digits(&v.req) > Some(0));
    let low = digits(&low.req).unwrap();
    let high = browser.view_until("REQ rises again", WAIT, |v| digits(&v.req) > Some(low));
    assert!(high.req.contains(','), "thousands separators: {high:#?}");

    // Matches /stats within one polling interval. For ~4 s the test reads
    // /stats and the page in turn; each page figure's lag is how long ago
    // /stats last showed no more than it. The page's figure is never above
    // /stats, and its median lag is within one interval (the worst lag
    // within three: a loaded machine can delay a poll).
    let mut timeline: Vec<(Instant, u64)> = Vec::new();
    let mut shown: Vec<(Instant, u64)> = Vec::new();
    let start = Instant::now();
    while start.elapsed() < 6 * POLL {
        timeline.push((Instant::now(), stats(&proxy)["msg_req"].as_u64().unwrap()));
        // The page's figures come from polls before the timeline starts
        // until one interval (and more on a slow machine) has passed.
        if start.elapsed() > 2 * POLL {
            let value = digits(&browser.view().req).unwrap();
            shown.push((Instant::now(), value));
        }
        thread::sleep(Duration::from_millis(100));
    }
    timeline.push((Instant::now(), stats(&proxy)["msg_req"].as_u64().unwrap()));
    assert!(
        timeline[0].1 < timeline[timeline.len() - 1].1,
        "the load ran all along"
    );
    let mut lags: Vec<Duration> = shown
        .iter()
        .map(|&(at, value)| {
            let after = timeline.iter().find(|(t, _)| *t > at).unwrap().1;
            assert!(
                value <= after,
                "the page shows {value}, /stats then {after}"
            );
            timeline
                .iter()
                .rev()
                .find(|(t, v)| *t <= at && *v <= value)
                .map_or(Duration::MAX, |(t, _)| at - *t)
        })
        .collect();
    lags.sort();
    let median = lags[lags.len() / 2];
    let worst = lags[lags.len() - 1];
    eprintln!(
        "page lag behind /stats over {} reads: median {median:?}, worst {worst:?}",
        lags.len()
    );
    assert!(
        median <= POLL && worst <= 3 * POLL,
        "lag behind /stats: median {median:?}, worst {worst:?}"
    );

    let charted = browser.view_until("the chart has points", WAIT, |v| v.points >= 2);
    assert_eq!(charted.state, "live");
    // Issue 12's answer latency, while answers flow: the quantiles in ms.
    let timed = browser.view_until("latency quantiles in ms", WAIT, |v| {
        v.latency.get("p50").is_some_and(|p| p.ends_with(" ms"))
    });
    for quantile in ["p50", "p90", "p99", "max"] {
        let shown = &timed.latency[quantile];
        let ms: f64 = shown
            .trim_end_matches(" ms")
            .replace(',', "")
            .parse()
            .unwrap();
        assert!((0.0..10_000.0).contains(&ms), "{quantile}: {shown}");
    }
    assert!(timed.latency_note.contains("answers matched"), "{timed:#?}");
    load.kill().unwrap();
    load.wait().unwrap();

    // With the load over the figures stand still (once the proxy has seen
    // every client go): the page settles on exactly what /stats says,
    // totals and close reasons alike.
    let deadline = Instant::now() + WAIT;
    let settled = loop {
        let report = stats(&proxy);
        if report["connections_active"] == 0 {
            break report;
        }
        assert!(
            Instant::now() < deadline,
            "connections still open: {report}"
        );
        thread::sleep(Duration::from_millis(50));
    };
    let req = settled["msg_req"].as_u64().unwrap();
    let reasons = settled["connections_closed"]
        .as_object()
        .expect("issue 12's connections_closed in /stats")
        .clone();
    let closed: u64 = reasons.values().filter_map(Value::as_u64).sum();
    assert!(closed >= 4, "foo-load's 4 connections closed: {settled}");
    let view = browser.view_until("the page settles on /stats", 3 * POLL + WAIT, |v| {
        digits(&v.req) == Some(req)
            && reasons
                .iter()
                .all(|(reason, n)| v.closed.get(reason).and_then(|s| digits(s)) == n.as_u64())
    });
    assert_eq!(
        digits(&view.ack),
        settled["msg_ack"].as_u64(),
        "{view:#?} {settled}"
    );
    assert!(req > 1000, "foo-load sent {req} requests");
    // Every reason /stats has is a row, named as in /stats.
    assert_eq!(
        view.closed.keys().collect::<Vec<_>>(),
        reasons.keys().collect::<Vec<_>>()
    );
    // Fields of the report the page has no row for are listed, not dropped.
    for key in [
        "resource_errors",
        "requests_unanswered",
        "answers_unmatched",
    ] {
        assert!(settled[key].is_u64(), "{key} in /stats");
        assert!(view.other.iter().any(|k| k == key), "{key}: {view:#?}");
    }
    let buckets = settled["response_latency_histogram"]["ack"]
        .as_array()
        .expect("issue 12's histogram in /stats");
    assert_eq!(view.hist_rows, buckets.len(), "{view:#?}");
    assert!(!view.hist_hidden);

    // Readable at 400 px: nothing wider than the screen.
    browser.resize(400, 900);
    let wide = browser.eval("document.documentElement.scrollWidth");
    assert!(
        wide.as_u64().unwrap() <= 400,
        "scroll width {wide} at 400 px"
    );
    // A dark theme when the system asks for one.
    let background = "getComputedStyle(document.body).backgroundColor";
    browser.dark(false);
    let light = browser.eval(background);
    browser.dark(true);
    let dark = browser.eval(background);
    assert_ne!(light, dark, "prefers-color-scheme: dark changes the page");

    // The proxy stops: the page says so, keeps the last figures, and counts
    // the time since the last success.
    let last = browser.view().req;
    proxy.child.kill().unwrap();
    proxy.child.wait().unwrap();
    let gone = browser.view_until("the page says unreachable", WAIT, |v| {
        v.state == "unreachable" && v.updated.contains("ago")
    });
    assert!(gone.state_text.starts_with("Unreachable"), "{gone:#?}");
    assert_eq!(gone.req, last, "the last figures stay");
    assert!(gone.readiness.contains("unknown"), "{gone:#?}");
}

#[test]
fn the_status_page_shows_the_upstream_pool_in_its_own_section() {
    let Some(mut browser) = browser_or_skip("the pool section") else {
        return;
    };
    let server = FooServer::start(ServerOpts::default());
    let proxy = Proxy::start(
        &server.addr.to_string(),
        &["--upstream-pool=4", "--upstream-spare=2"],
    );
    // Three clean sessions one after another: served from the pool.
    for seq in 1..=3u64 {
        let mut c = proxy.connect();
        std::io::Write::write_all(&mut c, &util::requests(seq..=seq)).unwrap();
        c.shutdown(std::net::Shutdown::Write).unwrap();
        let (got, eof) = util::read_to_eof(&mut c);
        assert!(eof);
        assert_eq!(got, util::answers(seq..=seq));
    }
    let deadline = Instant::now() + WAIT;
    let settled = loop {
        let r = stats(&proxy);
        if r["connections_active"] == 0 && r["upstream_pool_reused"] == 3 {
            break r;
        }
        assert!(Instant::now() < deadline, "{r}");
        thread::sleep(Duration::from_millis(50));
    };
    let pooled: Vec<&String> = settled
        .as_object()
        .unwrap()
        .keys()
        .filter(|k| {
            k.starts_with("upstream_pool")
                || k.starts_with("upstream_queue")
                || k.starts_with("upstream_connections")
        })
        .collect();
    assert_eq!(pooled.len(), 19, "{pooled:?}");
    browser.open(&proxy.admin_url("/"));
    let view = browser.view_until("the pool section matches /stats", 3 * POLL + WAIT, |v| {
        digits(
            v.pool
                .get("upstream_pool_reused")
                .map_or("", String::as_str),
        ) == Some(3)
    });
    // Every pool field has its row (the queue-wait histogram its line),
    // showing what /stats says, and none is left under "Other fields".
    for key in &pooled {
        assert!(
            !view.other.iter().any(|k| k == *key),
            "{key} under Other fields: {view:#?}"
        );
        if key.as_str() == "upstream_queue_wait_histogram" {
            continue;
        }
        let shown = view
            .pool
            .get(key.as_str())
            .unwrap_or_else(|| panic!("no row for {key}: {view:#?}"));
        assert_eq!(
            digits(shown),
            settled[key.as_str()].as_u64(),
            "{key}: {view:#?}"
        );
    }
    assert_eq!(digits(&view.pool["upstream_pool_size"]), Some(4));
    assert!(
        view.pool_note.contains("spares are part of the pool"),
        "{view:#?}"
    );
    assert!(
        view.queue_waits
            .starts_with("Queue waits of served clients: 0"),
        "{view:#?}"
    );
    // Still readable at 400 px.
    browser.resize(400, 900);
    let wide = browser.eval("document.documentElement.scrollWidth");
    assert!(
        wide.as_u64().unwrap() <= 400,
        "scroll width {wide} at 400 px"
    );
}

/// Regenerates `docs/status-page.png` (and the narrow dark one): the page
/// after about 20 s of foo-load through the proxy. Run with
/// `cargo test --release --test status_page -- --ignored`.
#[test]
#[ignore = "writes docs/*.png: run by hand to refresh the README's screenshots"]
fn regenerate_the_status_page_screenshots() {
    let Some(mut browser) = browser_or_skip("the screenshots") else {
        return;
    };
    // Built before the page opens, so its chart is all load.
    util::tool("foo-load");
    let server = FooServer::start(ServerOpts::default());
    // With a pool, so that its section shows figures.
    let proxy = Proxy::start(
        &server.addr.to_string(),
        &["--upstream-pool=8", "--upstream-spare=2"],
    );
    browser.open(&proxy.admin_url("/"));
    browser.view_until("live", WAIT, |v| v.state == "live");
    let mut load = start_load(&proxy, "40s");
    thread::sleep(Duration::from_secs(25));
    let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs");
    std::fs::create_dir_all(&docs).unwrap();
    browser.dark(false);
    std::fs::write(docs.join("status-page.png"), browser.screenshot(1000)).unwrap();
    browser.dark(true);
    std::fs::write(
        docs.join("status-page-dark-400.png"),
        browser.screenshot(400),
    )
    .unwrap();
    let _ = load.kill();
    let _ = load.wait();
}

/// Standard base64 (RFC 4648, with padding), as DevTools sends screenshots.
fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {c}"),
    };
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    for chunk in text.trim_end_matches('=').as_bytes().chunks(4) {
        let mut acc = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            acc |= u32::from(value(c)) << (18 - 6 * i);
        }
        let bytes = acc.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    out
}

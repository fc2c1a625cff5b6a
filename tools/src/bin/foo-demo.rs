//! foo-demo: the one-command tour. Builds the binaries, runs foo-proxy in
//! front of foo-server on free loopback ports, sends foo-client and foo-load
//! traffic through it, then explains in a few lines what the proxy counted
//! and how that compares with what the clients saw, and stops everything it
//! started, on every path (children are killed on drop). Only this process
//! writes to the terminal while it runs: the children's output is captured
//! and shown whole, so no line is cut by another.

#![forbid(unsafe_code)]
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Duration;

use foo_proxy::cli::{CliError, Flags};
use foo_tools::child::{Child, Stdout, build_workspace_bins, listening_addr, sibling};

const USAGE: &str = "\
foo-demo: run foo-proxy in front of foo-server and show its statistics

USAGE:
    cargo run --release --bin foo-demo
    foo-demo [FLAGS]

    --no-build    use the binaries next to this one as they are
    -h, --help    print this help

Under `cargo run` (from the repository) it first builds the other binaries
of the workspace with the same profile, next to itself; otherwise it uses the
binaries found next to itself. Every port is a free loopback port; nothing is left running.
";

const START_TIMEOUT: Duration = Duration::from_secs(10);
const BUILD_TIMEOUT: Duration = Duration::from_secs(900);
const RUN_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_GRACE: Duration = Duration::from_secs(2);
/// The main load's length: long enough for a 1 s rate, short for a demo.
const LOAD_SECS: u64 = 2;

fn parse_args(args: Vec<OsString>) -> Result<Option<bool>, CliError> {
    let flags = Flags::parse(args, &[], &["no-build"])?;
    if flags.switch("help") {
        return Ok(None);
    }
    let no_build = flags.switch("no-build");
    Ok(Some(!no_build))
}

fn start(dir: &Path, name: &str, args: &[&str]) -> Result<Child, String> {
    let mut command = Command::new(sibling(dir, name)?);
    command.args(args);
    Child::spawn_quiet(name, &mut command, Stdout::Capture)
}

/// Runs a driver to completion; its stdout. Error: it failed, with its
/// output.
fn run_driver(dir: &Path, name: &str, args: &[&str]) -> Result<String, String> {
    let mut child = start(dir, name, args)?;
    let status = child.wait(RUN_TIMEOUT)?;
    let stdout = child.stdout_rest(STOP_GRACE);
    if status.success() {
        Ok(stdout)
    } else {
        let stderr = child.stderr_rest(STOP_GRACE);
        Err(format!(
            "`{name} {}` failed ({status}):\n{stdout}{stderr}",
            args.join(" ")
        ))
    }
}

/// What one `foo-load --json` run saw.
struct Load {
    sent: u64,
    ack: u64,
    nak: u64,
    per_sec: f64,
    errors: u64,
    p50_us: f64,
}

fn run_load(dir: &Path, target: &str, conns: &str, depth: &str, secs: u64) -> Result<Load, String> {
    let duration = format!("{secs}s");
    let args = [
        "--target",
        target,
        "--connections",
        conns,
        "--depth",
        depth,
        "--duration",
        &duration,
        "--json",
    ];
    let out = run_driver(dir, "foo-load", &args)?;
    let v: serde_json::Value = serde_json::from_str(out.trim())
        .map_err(|e| format!("foo-load's report is not JSON ({e}): {out}"))?;
    let int = |key: &str| v.get(key).and_then(serde_json::Value::as_u64);
    let float = |v: Option<&serde_json::Value>| v.and_then(serde_json::Value::as_f64);
    let missing = || format!("foo-load's report lacks a field: {out}");
    Ok(Load {
        sent: int("sent").ok_or_else(missing)?,
        ack: int("ack_all").ok_or_else(missing)?,
        nak: int("nak_all").ok_or_else(missing)?,
        errors: int("errors").ok_or_else(missing)?,
        per_sec: float(v.get("requests_per_sec")).ok_or_else(missing)?,
        p50_us: float(v.get("latency_us").and_then(|l| l.get("p50"))).ok_or_else(missing)?,
    })
}

/// A report field as an integer, or an error naming it.
fn field(report: &serde_json::Value, key: &str) -> Result<u64, String> {
    report
        .get(key)
        .and_then(serde_json::Value::as_u64)
        .ok_or_else(|| format!("foo-proxy's report has no {key}"))
}

fn rate(report: &serde_json::Value, key: &str) -> Result<f64, String> {
    report
        .get(key)
        .and_then(serde_json::Value::as_f64)
        .ok_or_else(|| format!("foo-proxy's report has no {key}"))
}

/// `dir` relative to the current directory when it is under it
/// (`target/release`), for commands the reader can paste.
fn shown(dir: &Path) -> String {
    let relative = std::env::current_dir()
        .ok()
        .and_then(|cwd| dir.strip_prefix(cwd).ok().map(Path::to_path_buf));
    relative
        .unwrap_or_else(|| dir.to_path_buf())
        .display()
        .to_string()
}

fn demo(dir: &Path) -> Result<(), String> {
    let mut server = start(
        dir,
        "foo-server",
        &["-listen", "127.0.0.1:0", "--seed", "1"],
    )?;
    let server_addr: SocketAddr = server.wait_for_listening(START_TIMEOUT)?;
    let forward = server_addr.to_string();
    let mut proxy = start(
        dir,
        "foo-proxy",
        &[
            "-listen",
            "127.0.0.1:0",
            "-forward",
            &forward,
            "-recovery-path=",
            "-http",
            "127.0.0.1:0",
        ],
    )?;
    let start_line = proxy.wait_for_start_line(START_TIMEOUT)?;
    let proxy_addr = listening_addr(&start_line)
        .ok_or_else(|| format!("no address in foo-proxy's start line: {start_line}"))?
        .to_string();
    let admin_addr = start_line
        .split_once("; admin ")
        .and_then(|(_, admin)| listening_addr(admin))
        .ok_or_else(|| format!("no admin address in foo-proxy's start line: {start_line}"))?;
    println!("foo-server answers on {server_addr}; foo-proxy listens on {proxy_addr},");
    println!("relays to it, and serves its statistics on http://{admin_addr}.");
    println!("(Free loopback ports; everything stops when the demo ends.)\n");

    println!("1. Latency, one request at a time for 1 s (foo-load, 1 connection, depth 1):");
    let direct = run_load(dir, &forward, "1", "1", 1)?;
    let through = run_load(dir, &proxy_addr, "1", "1", 1)?;
    let added = through.p50_us - direct.p50_us;
    println!("   straight to foo-server  p50 {:>6.0} us", direct.p50_us);
    if added > 0.0 {
        println!(
            "   through foo-proxy       p50 {:>6.0} us: the proxy adds about {added:.0} us",
            through.p50_us
        );
    } else {
        println!(
            "   through foo-proxy       p50 {:>6.0} us: no difference this run could measure",
            through.p50_us
        );
    }
    println!("   (a second loopback hop and one read, scan and write each way)\n");

    let client_args = ["-connect", proxy_addr.as_str(), "-n", "100", "-c", "4"];
    let out = run_driver(dir, "foo-client", &client_args)?;
    if !out.contains("OK!") {
        return Err(format!("foo-client did not say OK: {out}"));
    }
    println!("2. foo-client {}:", client_args.join(" "));
    println!("   4 x 100 requests, each answer's type and seq checked: OK\n");
    let client_sent = 400;

    println!(
        "3. foo-load --target {proxy_addr} --connections 4 --depth 8 --duration {LOAD_SECS}s:"
    );
    let load = run_load(dir, &proxy_addr, "4", "8", LOAD_SECS)?;
    println!(
        "   {:.0} answers/s, {} errors; p50 {:.0} us with 8 requests in flight on each\n",
        load.per_sec, load.errors, load.p50_us
    );

    // The report right after the load, while its last second is in the 1 s
    // window.
    proxy.signal("USR2")?;
    let line = proxy.stdout_line(START_TIMEOUT)?;
    let report: serde_json::Value = serde_json::from_str(&line)
        .map_err(|e| format!("foo-proxy's report is not JSON ({e}): {line}"))?;
    let body = http_get(admin_addr, "/stats")?;
    let over_http: serde_json::Value =
        serde_json::from_str(&body).map_err(|e| format!("/stats is not JSON ({e}): {body}"))?;
    if over_http.get("msg_req") != report.get("msg_req") {
        return Err(format!("/stats and SIGUSR2 disagree: {body} vs {line}"));
    }

    let msg_req = field(&report, "msg_req")?;
    let msg_ack = field(&report, "msg_ack")?;
    let msg_nak = field(&report, "msg_nak")?;
    let in_flight = field(&report, "requests_in_flight")?;
    let sent = client_sent + through.sent + load.sent;
    let answered = client_sent + through.ack + through.nak + load.ack + load.nak;
    if msg_req == 0 {
        return Err("foo-proxy's report counts no requests".into());
    }
    println!("What foo-proxy counted (its SIGUSR2 report; GET /stats says the same):");
    println!("   requests relayed  msg_req          {msg_req:>8}   the clients sent {sent:>8}");
    println!(
        "   answers returned  msg_ack+msg_nak  {:>8}   the clients got  {answered:>8}",
        msg_ack.saturating_add(msg_nak)
    );
    if msg_req == sent && msg_ack.saturating_add(msg_nak) == answered {
        println!("   They match: every client waited for its answers before closing.");
    } else {
        println!("   They differ: a client closed with requests unanswered.");
    }
    println!("   Asked while clients run, msg_req is ahead of the answers by the");
    println!("   requests in flight (requests_in_flight, {in_flight} now).");
    let rate_1s = rate(&report, "request_rate_1s")?;
    let rate_10s = rate(&report, "request_rate_10s")?;
    let uptime = rate(&report, "uptime_secs")?;
    println!("   request_rate_1s  {rate_1s:>8.0}/s  requests in the last second, which also");
    println!("                               holds the moments since foo-load stopped");
    println!("   request_rate_10s {rate_10s:>8.0}/s  requests in the last 10 s, divided by 10:");
    println!("   foo-proxy has run {uptime:.1} s, so the 10 s window is mostly empty and");
    println!("   this rate reads low until the proxy has run 10 s.\n");

    proxy.stop(STOP_GRACE)?;
    server.stop(STOP_GRACE)?;
    println!("foo-proxy's log (stderr; timestamps cut), from start to SIGTERM:");
    let rest = proxy.stderr_rest(STOP_GRACE);
    for line in std::iter::once(start_line.as_str()).chain(rest.lines()) {
        let text = line.split_once(' ').map_or(line, |(_, rest)| rest);
        for piece in wrap(text, 76) {
            println!("   {piece}");
        }
    }

    let bin = shown(dir);
    println!("\nTry it by hand (the report's fields: README.md, \"The report\"):");
    println!("   {bin}/foo-server -listen 127.0.0.1:8001 & server=$!");
    println!("   {bin}/foo-proxy -listen 127.0.0.1:8002 \\");
    println!("       -forward 127.0.0.1:8001 -recovery-path= & proxy=$!");
    println!("   sleep 1                                 # until both listen");
    println!("   {bin}/foo-client -connect 127.0.0.1:8002 -n 100");
    println!("   curl -s http://127.0.0.1:8088/stats     # the report, as JSON; and");
    println!("   # the same counts as Prometheus metrics:");
    println!("   curl -s 'http://127.0.0.1:8088/metrics?format=prometheus'");
    println!("   kill -USR2 $proxy                       # the report, on foo-proxy's stdout");
    println!("   kill $proxy $server                     # foo-proxy logs what it did");
    Ok(())
}

/// `text` cut at spaces into pieces of at most `width` characters (a
/// longer word stays whole); the pieces after the first are indented by
/// two spaces, as continuation lines.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut pieces = Vec::new();
    let mut piece = String::new();
    for word in text.split(' ') {
        if !piece.trim().is_empty() && piece.chars().count() + 1 + word.chars().count() > width {
            pieces.push(std::mem::replace(&mut piece, "  ".to_string()));
        } else if !piece.is_empty() && !piece.ends_with("  ") {
            piece.push(' ');
        }
        piece.push_str(word);
    }
    pieces.push(piece);
    pieces
}

/// A plain HTTP/1.1 GET, enough for the admin socket; returns the body.
fn http_get(addr: SocketAddr, path: &str) -> Result<String, String> {
    use std::io::{Read, Write};
    let fail = |e: std::io::Error| format!("GET http://{addr}{path}: {e}");
    let mut stream = std::net::TcpStream::connect_timeout(&addr, START_TIMEOUT).map_err(fail)?;
    stream.set_read_timeout(Some(START_TIMEOUT)).map_err(fail)?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(fail)?;
    let mut response = String::new();
    stream.read_to_string(&mut response).map_err(fail)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("GET http://{addr}{path}: no complete answer: {response:?}"))?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(format!("GET http://{addr}{path}: {head}"));
    }
    Ok(body.to_string())
}

fn main() -> ExitCode {
    let build = match foo_tools::parse_or_exit("foo-demo", USAGE, parse_args) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let dir: Result<PathBuf, String> = std::env::current_exe()
        .map_err(|e| format!("cannot find this executable: {e}"))
        .and_then(|exe| {
            exe.parent()
                .map(Path::to_path_buf)
                .ok_or_else(|| "this executable has no directory".to_string())
        });
    let result = dir.and_then(|dir| {
        if build {
            // `cargo run` builds only the binary it runs: build the rest,
            // quietly (cargo still shows errors); its progress lines would
            // come before the demo's, but say nothing a newcomer needs.
            if std::env::var_os("CARGO").is_some() {
                println!("Building foo-proxy, foo-server, foo-client and foo-load...\n");
            }
            build_workspace_bins(&dir, true, BUILD_TIMEOUT)?;
        }
        demo(&dir)
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("foo-demo: {e}");
            ExitCode::from(1)
        }
    }
}

//! foo-demo: the one-command tour. Builds the binaries, runs foo-proxy in
//! front of foo-server on free loopback ports, sends foo-client and foo-load
//! traffic through it, shows the SIGUSR2 report, and stops everything it
//! started, on every path (children are killed on drop).

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

fn parse_args(args: Vec<OsString>) -> Result<Option<bool>, CliError> {
    let flags = Flags::parse(args, &[], &["no-build"])?;
    if flags.switch("help") {
        return Ok(None);
    }
    let no_build = flags.switch("no-build");
    Ok(Some(!no_build))
}

fn start(dir: &Path, name: &str, args: &[&str], stdout: Stdout) -> Result<Child, String> {
    let mut command = Command::new(sibling(dir, name)?);
    command.args(args);
    Child::spawn(name, &mut command, stdout)
}

/// Runs a driver to completion with its stdout on ours.
fn run_driver(dir: &Path, name: &str, args: &[&str]) -> Result<(), String> {
    println!("$ {name} {}", args.join(" "));
    let mut child = start(dir, name, args, Stdout::Inherit)?;
    let status = child.wait(RUN_TIMEOUT)?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{name} failed ({status})"))
    }
}

fn demo(dir: &Path) -> Result<(), String> {
    let mut server = start(
        dir,
        "foo-server",
        &["-listen", "127.0.0.1:0", "--seed", "1"],
        Stdout::Capture,
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
        Stdout::Capture,
    )?;
    let start_line = proxy.wait_for_start_line(START_TIMEOUT)?;
    let proxy_addr = listening_addr(&start_line)
        .ok_or_else(|| format!("no address in foo-proxy's start line: {start_line}"))?
        .to_string();
    let admin_addr = start_line
        .split_once("; admin ")
        .and_then(|(_, admin)| listening_addr(admin))
        .ok_or_else(|| format!("no admin address in foo-proxy's start line: {start_line}"))?;
    println!("foo-server on {server_addr}, foo-proxy on {proxy_addr} in front of it\n");

    run_driver(
        dir,
        "foo-client",
        &["-connect", &proxy_addr, "-n", "100", "-c", "4"],
    )?;
    println!();
    run_driver(
        dir,
        "foo-load",
        &[
            "--target",
            &proxy_addr,
            "--connections",
            "4",
            "--depth",
            "8",
            "--duration",
            "2s",
        ],
    )?;

    println!(
        "\n$ kill -USR2 {}   # foo-proxy prints its statistics on stdout",
        proxy.pid()
    );
    proxy.signal("USR2")?;
    let line = proxy.stdout_line(START_TIMEOUT)?;
    println!("{line}");
    let report: serde_json::Value = serde_json::from_str(&line)
        .map_err(|e| format!("foo-proxy's report is not JSON ({e}): {line}"))?;
    if report
        .get("msg_req")
        .and_then(serde_json::Value::as_u64)
        .unwrap_or(0)
        == 0
    {
        return Err("foo-proxy's report counts no requests".into());
    }

    println!("\n$ curl -s http://{admin_addr}/stats   # the same report over HTTP");
    let body = http_get(admin_addr, "/stats")?;
    println!("{body}");
    let over_http: serde_json::Value =
        serde_json::from_str(&body).map_err(|e| format!("/stats is not JSON ({e}): {body}"))?;
    if over_http.get("msg_req") != report.get("msg_req") {
        return Err(format!("/stats and SIGUSR2 disagree: {body} vs {line}"));
    }

    proxy.stop(STOP_GRACE)?;
    server.stop(STOP_GRACE)?;
    println!("\nstopped foo-proxy and foo-server");
    Ok(())
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
            // `cargo run` builds only the binary it runs: build the rest.
            build_workspace_bins(&dir, false, BUILD_TIMEOUT)?;
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

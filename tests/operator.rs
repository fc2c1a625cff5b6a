//! The operator flags through the real binary: `--check`, `--access-log`, `--log-format`, `--version`, `--help`.

mod util;

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use util::{FooServer, Proxy, ServerOpts};

/// A fresh directory for one test, under cargo's scratch space.
fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("operator-{name}"));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs foo-proxy with `args` to its exit, bounded by 10 s.
fn run(args: &[&str]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_foo-proxy"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + util::WAIT;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("foo-proxy {args:?} did not exit within {:?}", util::WAIT);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn check_reports_what_would_run_on_stdout_and_exits_0_without_serving() {
    let dir = scratch("check-ok");
    let path = dir.join("sub/recovery.json");
    let flag = format!("-recovery-path={}", path.display());
    let out = run(&[
        "--check",
        "-listen",
        "127.0.0.1:0",
        "-http",
        "127.0.0.1:0",
        "-forward",
        "127.0.0.1:9",
        &flag,
        "--buffer-size=1MiB",
    ]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    assert!(stdout.starts_with("foo-proxy --check: OK"), "{stdout}");
    for want in [
        "listen          127.0.0.1:0 (can be bound now)",
        "forward         127.0.0.1:9 -> 127.0.0.1:9",
        "admin HTTP      127.0.0.1:0 (can be bound now)",
        "(usable; lock ",
        "buffer size     1 MiB per direction",
        "timeouts        connect 5s, fin 5s, idle 10m, drain 5s",
        // The flag's own spelling, not the Rust name (`Info`).
        "logs            level info, format text, admin access log on, connection log off",
        "takeover        no",
    ] {
        assert!(stdout.contains(want), "{want:?} missing from\n{stdout}");
    }
    // Nothing served, so no start line; and nothing made on disk: a dry
    // run leaves no directory and no lock file behind.
    assert!(!stderr.contains("listening"), "{stderr}");
    assert!(
        !dir.join("sub").exists(),
        "--check created the recovery directory"
    );
    let again = run(&["--check", "-listen=127.0.0.1:0", "-http=off", &flag]);
    assert_eq!(again.status.code(), Some(0), "{}", text(&again.stderr));
}

#[test]
fn check_creates_writes_and_removes_nothing() {
    let dir = scratch("check-no-writes");
    let path = dir.join("recovery.json");
    // What a start would clean up or write: a temp file an interrupted
    // write left, a stale lock file, the recovery file itself.
    let leftover = dir.join("recovery.json.tmp");
    fs::write(&leftover, b"half").unwrap();
    fs::write(dir.join("recovery.json.lock"), b"1\n").unwrap();
    fs::write(&path, b"{not json").unwrap();
    let before: Vec<_> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let m = e.metadata().unwrap();
            (e.file_name(), m.len(), m.modified().unwrap())
        })
        .collect();
    let flag = format!("-recovery-path={}", path.display());
    let out = run(&["--check", "-listen=127.0.0.1:0", "-http=off", &flag]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("(usable; lock "), "{stdout}");
    // What a start would do with the file it cannot decode is said, not done.
    assert!(
        stdout.contains("its contents cannot be restored: ")
            && stdout.contains("a start moves it aside and starts fresh"),
        "{stdout}"
    );
    let mut after: Vec<_> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let m = e.metadata().unwrap();
            (e.file_name(), m.len(), m.modified().unwrap())
        })
        .collect();
    let mut before = before;
    before.sort();
    after.sort();
    assert_eq!(after, before, "--check changed the recovery directory");
    // A directory it may not write in is reported, not created.
    let blocked = dir.join("file-not-dir/sub/recovery.json");
    fs::write(dir.join("file-not-dir"), b"x").unwrap();
    let flag = format!("-recovery-path={}", blocked.display());
    let out = run(&["--check", "-listen=127.0.0.1:0", "-http=off", &flag]);
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("cannot be written now: cannot create directory")
            && stdout.contains("file-not-dir is not a directory"),
        "{stdout}{}",
        text(&out.stderr)
    );
}

#[test]
fn check_exits_2_naming_an_address_that_cannot_be_bound_or_an_unusable_path() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = taken.local_addr().unwrap().to_string();
    let out = run(&["--check", "-listen", &busy, "-http=off", "-recovery-path="]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(2), "{stdout}{stderr}");
    assert!(stdout.starts_with("foo-proxy --check: FAILED"), "{stdout}");
    assert!(
        stderr.contains(&format!("cannot listen on {busy}: address already in use")),
        "{stderr}"
    );
    let out = run(&[
        "--check",
        "-listen=127.0.0.1:0",
        "-http",
        &busy,
        "-recovery-path=",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains(&format!("cannot listen for HTTP on {busy}")),
        "{}",
        text(&out.stderr)
    );
    let out = run(&[
        "--check",
        "-listen=127.0.0.1:0",
        "-http=off",
        "-recovery-path=/dev/null",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("recovery path /dev/null is a character device"),
        "{}",
        text(&out.stderr)
    );
    // A bad value stays a bad value: exit 2, no report.
    let out = run(&["--check", "--buffer-size=1"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
}

#[test]
fn check_reports_a_recovery_lock_held_by_a_running_proxy_without_taking_it() {
    let server = FooServer::start(ServerOpts::default());
    let dir = scratch("check-held");
    let path = dir.join("recovery.json");
    let flag = format!("-recovery-path={}", path.display());
    let mut proxy = Proxy::start(&server.addr.to_string(), &[&flag]);
    for _ in 0..3 {
        let out = run(&["--check", "-listen=127.0.0.1:0", "-http=off", &flag]);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(
            stderr.contains(&format!(
                "is in use by another foo-proxy (pid {})",
                proxy.pid()
            )),
            "{stderr}"
        );
    }
    // The running proxy still owns it: its pid is still in the lock file.
    let lock = fs::read_to_string(dir.join("recovery.json.lock")).unwrap();
    assert_eq!(lock.trim(), proxy.pid().to_string());
    assert!(proxy.alive());
}

/// One `GET path` on the admin socket; the whole response.
fn get(proxy: &Proxy, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(proxy.admin.unwrap()).unwrap();
    s.set_read_timeout(Some(util::WAIT)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// Stops `proxy` with SIGTERM and returns everything it logged.
fn stopped_log(mut proxy: Proxy) -> String {
    proxy.signal("TERM");
    assert_eq!(proxy.wait_exit(util::WAIT), Some(0));
    proxy.stderr()
}

#[test]
fn access_log_off_drops_admin_request_lines_but_keeps_the_start_line() {
    let server = FooServer::start(ServerOpts::default());
    let on = Proxy::start(&server.addr.to_string(), &[]);
    assert!(get(&on, "/stats").starts_with("HTTP/1.1 200"));
    let log = stopped_log(on);
    assert!(log.contains("\"GET /stats HTTP/1.1\" 200"), "{log}");

    let off = Proxy::start(&server.addr.to_string(), &["--access-log", "off"]);
    for path in ["/stats", "/metrics", "/health", "/nope"] {
        assert!(get(&off, path).starts_with("HTTP/1.1 "));
    }
    let log = stopped_log(off);
    assert!(log.contains(" INFO foo-proxy "), "{log}");
    assert!(log.contains("listening on"), "{log}");
    assert!(!log.contains("GET /"), "{log}");
    assert!(!log.contains("were not logged"), "{log}");
}

#[test]
fn log_format_json_makes_every_log_line_one_json_object() {
    // The upstream is down: each client costs a (throttled) warning.
    let dead = format!("127.0.0.1:{}", util::dead_port());
    let proxy = Proxy::start(&dead, &["--log-format=json", "--log-connections"]);
    assert!(get(&proxy, "/stats").starts_with("HTTP/1.1 200"));
    let mut client = proxy.connect();
    let _ = util::read_to_eof(&mut client);
    drop(client);
    let deadline = Instant::now() + util::WAIT;
    while !proxy.stderr().contains("\"WARN\"") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let log = stopped_log(proxy);
    let mut msgs = Vec::new();
    for line in log.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{line:?}: {e}"));
        assert!(v["ts"].as_str().unwrap().ends_with('Z'), "{line}");
        let msg = v["msg"].as_str().unwrap().to_string();
        // The connection log's lines have their own keys, and no level.
        let level = match msg.as_str() {
            "connection" => "CONN".to_string(),
            _ => v["level"].as_str().unwrap().to_string(),
        };
        msgs.push((level, msg));
    }
    let has = |level: &str, text: &str| msgs.iter().any(|(l, m)| l == level && m.contains(text));
    assert!(has("INFO", "listening on"), "{msgs:?}");
    assert!(has("INFO", "\"GET /stats HTTP/1.1\" 200"), "{msgs:?}");
    assert!(msgs.iter().any(|(l, _)| l == "WARN"), "{msgs:?}");
    assert!(has("CONN", "connection"), "{msgs:?}");
}

#[test]
fn version_names_the_git_commit_and_the_build_profile_and_v_is_its_short_form() {
    let out = run(&["--version"]);
    assert_eq!(out.status.code(), Some(0));
    let line = text(&out.stdout);
    assert_eq!(run(&["-V"]).stdout, out.stdout);
    assert_eq!(run(&["-version"]).stdout, out.stdout);
    // This test binary's own directory names the profile both were built with.
    let exe = Path::new(env!("CARGO_BIN_EXE_foo-proxy"));
    let profile = exe.parent().unwrap().file_name().unwrap().to_str().unwrap();
    let profile = if profile == "debug" { "dev" } else { profile };
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let head = Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(manifest)
        .output()
        .ok()
        .filter(|o| o.status.success() && manifest.join(".git").exists())
        .map(|o| text(&o.stdout).trim().to_string());
    let want = match head {
        Some(head) => format!(
            "foo-proxy {} (commit {}, {profile} profile)\n",
            env!("CARGO_PKG_VERSION"),
            &head[..12]
        ),
        None => format!(
            "foo-proxy {} (unknown commit, {profile} profile)\n",
            env!("CARGO_PKG_VERSION")
        ),
    };
    assert_eq!(line, want);
    // As in Go, a value flag takes `-V` as its value: no version then.
    let out = run(&["-http", "-V"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty(), "{}", text(&out.stdout));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("invalid value \"-V\" for -http"),
        "{stderr}"
    );
}

#[test]
fn help_fits_80_columns_groups_the_flags_and_names_units() {
    let out = run(&["--help"]);
    assert_eq!(out.status.code(), Some(0));
    let help = text(&out.stdout);
    for line in help.lines() {
        assert!(
            line.chars().count() <= 80,
            "{} columns: {line:?}",
            line.chars().count()
        );
        assert!(!line.contains('\t'), "{line:?}");
    }
    for group in [
        "Addresses:",
        "Limits and timeouts:",
        "Logs, on stderr:",
        "Other modes:",
    ] {
        assert!(help.contains(group), "{group} missing:\n{help}");
    }
    for unit in ["KiB", "MiB", "5s", "10m", "-V, --version"] {
        assert!(help.contains(unit), "{unit} missing:\n{help}");
    }
    // Every flag the proxy takes is in the help.
    for flag in [
        "-listen",
        "-forward",
        "-http",
        "-recovery-path",
        "--buffer-size",
        "--connect-timeout",
        "--fin-timeout",
        "--idle-timeout",
        "--drain-timeout",
        "--max-connections",
        "--max-connections-per-client",
        "--log-level",
        "--log-format",
        "--log-connections",
        "--access-log",
        "--accept-proxy",
        "--send-proxy",
        "--reuse-port",
        "--takeover",
        "--check",
        "--probe",
        "--help",
    ] {
        assert!(
            help.contains(&format!("{flag} ")),
            "{flag} missing:\n{help}"
        );
    }
}

#[test]
fn the_exit_line_says_what_the_process_relayed_and_which_signal_stopped_it() {
    let server = FooServer::start(ServerOpts::default());
    let proxy = Proxy::start(&server.addr.to_string(), &[]);
    let mut client = proxy.connect();
    std::io::Write::write_all(&mut client, &util::requests(1..=3)).unwrap();
    let answers = util::read_exact_timeout(&mut client, util::answers(1..=3).len());
    assert_eq!(answers, util::answers(1..=3));
    drop(client);
    // The close is counted before the signal: the report shows it.
    proxy.report_until(|r| r["connections_active"] == 0);
    let mut proxy = proxy;
    proxy.signal("INT");
    assert_eq!(proxy.wait_exit(util::WAIT), Some(0));
    let log = proxy.stderr();
    let exit: Vec<&str> = log.lines().filter(|l| l.contains(" stopped ")).collect();
    assert_eq!(exit.len(), 1, "{log}");
    let exit = exit[0];
    assert!(exit.contains(" INFO stopped on SIGINT after "), "{exit}");
    assert!(
        exit.contains(
            ": 1 connection(s), 3 request(s) relayed, 3 answer(s) returned (3 ACK, 0 NAK), \
             0 invalid, 0 upstream error(s), 0 connection(s) closed by the drain's end"
        ),
        "{exit}"
    );
}

#[test]
fn the_exit_line_says_counts_were_restored_only_when_they_were() {
    let server = FooServer::start(ServerOpts::default());
    let dir = scratch("exit-restored");
    let flag = format!("-recovery-path={}", dir.join("recovery.json").display());
    let mut lines = Vec::new();
    for _ in 0..2 {
        let mut proxy = Proxy::start(&server.addr.to_string(), &[&flag]);
        proxy.signal("TERM");
        assert_eq!(proxy.wait_exit(util::WAIT), Some(0));
        let log = proxy.stderr();
        let exit = log
            .lines()
            .find(|l| l.contains(" stopped "))
            .map(str::to_string);
        lines.push(exit.unwrap_or_else(|| panic!("no exit line in {log}")));
    }
    // A fresh path: nothing restored, nothing claimed.
    assert!(!lines[0].contains("restored"), "{}", lines[0]);
    // The second start read the first one's final snapshot.
    assert!(
        lines[1].ends_with("; totals include the counts restored from the recovery file"),
        "{}",
        lines[1]
    );
}

/// The keys of a JSON object and of the objects in it, as `a` and `a.b`.
fn key_paths(value: &serde_json::Value, prefix: &str, into: &mut Vec<String>) {
    if let Some(map) = value.as_object() {
        for (key, inner) in map {
            let path = format!("{prefix}{key}");
            key_paths(inner, &format!("{path}."), into);
            into.push(path);
        }
    }
}

#[test]
fn the_readmes_example_report_has_every_field_of_a_live_one() {
    let readme =
        fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let section = readme.split("\n## The report\n").nth(1).unwrap();
    let example = section
        .split("```json\n")
        .nth(1)
        .and_then(|rest| rest.split("\n```").next())
        .unwrap();
    let example: serde_json::Value = serde_json::from_str(example).unwrap();
    let proxy = Proxy::start("127.0.0.1:1", &[]);
    let live = proxy.report();
    let (mut want, mut shown) = (Vec::new(), Vec::new());
    key_paths(&live, "", &mut want);
    key_paths(&example, "", &mut shown);
    want.sort();
    shown.sort();
    assert_eq!(shown, want, "README's example report against a live one");
}

/// Runs `bin` with `args`; its exit code and stderr, or `None` when it is
/// still running after 5 s (it took the value and went on to work).
fn exit_of(bin: &Path, args: &[&str]) -> Option<(i32, String)> {
    let mut child = Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output().unwrap();
    Some((out.status.code().unwrap_or(-1), text(&out.stderr)))
}

/// Fault class: a lenient number parser. The proxy and every tool share
/// one grammar for counts, durations, sizes and names: a sign, an
/// exponent, a sub-millisecond duration, a decimal-looking size unit or an
/// undocumented log-level spelling is a bad value (exit 2, one line naming
/// the flag), never a guess.
#[test]
fn the_proxy_and_the_tools_refuse_signs_exponents_and_undocumented_spellings() {
    let proxy = PathBuf::from(env!("CARGO_BIN_EXE_foo-proxy"));
    let (server, client, load) = (
        util::tool("foo-server"),
        util::tool("foo-client"),
        util::tool("foo-load"),
    );
    // A port nobody listens on, so a tool that took the value fails fast
    // in another way or keeps running: either is told apart from exit 2.
    let dead = format!("127.0.0.1:{}", util::dead_port());
    let cases: Vec<(&Path, Vec<&str>)> = vec![
        (&proxy, vec!["--check", "--connect-timeout", "1e3"]),
        (&proxy, vec!["--check", "--fin-timeout", "+1s"]),
        (&proxy, vec!["--check", "--idle-timeout", "0.0001ms"]),
        (&proxy, vec!["--check", "--buffer-size", "1KB"]),
        (&proxy, vec!["--check", "--max-connections", "+5"]),
        (&proxy, vec!["--check", "--log-level", "DEBUG"]),
        (&server, vec!["-listen", "127.0.0.1:0", "--delay-ms", "+5"]),
        (&server, vec!["-listen", "127.0.0.1:0", "--seed", "+7"]),
        (
            &server,
            vec!["-listen", "127.0.0.1:0", "--log-level", "DEBUG"],
        ),
        (&server, vec!["-listen", "127.0.0.1:+0"]),
        (&client, vec!["-connect", &dead, "-n", "+5"]),
        (&client, vec!["-connect", &dead, "-c", "+1"]),
        (&client, vec!["-connect", &dead, "--timeout", "1e3"]),
        (&client, vec!["-connect", &dead, "--timeout", "0.0001ms"]),
        (&load, vec!["--target", &dead, "--duration", "1e3"]),
        (&load, vec!["--target", &dead, "--duration", "+1s"]),
        (&load, vec!["--target", &dead, "--connections", "+5"]),
        (&load, vec!["--target", &dead, "--depth", "05"]),
    ];
    for (bin, args) in cases {
        let flag = args[args.len() - 2].trim_start_matches('-');
        let value = args[args.len() - 1];
        let got = exit_of(bin, &args);
        let name = bin.file_name().unwrap().to_string_lossy();
        let (code, err) = got.unwrap_or_else(|| panic!("{name} {args:?} took the value"));
        assert_eq!(code, 2, "{name} {args:?}: {err}");
        assert!(
            err.contains(flag) && err.contains(value) && err.trim().lines().count() == 1,
            "{name} {args:?}: {err}"
        );
    }
}
/// Every line of a text log starts with a timestamp and a level: nothing
/// an operator or a peer wrote can start a line of its own.
fn assert_each_line_is_a_log_line(log: &str) {
    for line in log.lines() {
        let level = line.split(' ').nth(1).unwrap_or("");
        assert!(
            line.len() > 24
                && line.as_bytes().get(23) == Some(&b'Z')
                && ["ERROR", "WARN", "INFO", "DEBUG"].contains(&level),
            "not a log line of its own: {line:?} in\n{log}"
        );
        assert!(!line.chars().any(char::is_control), "{line:?}");
    }
}

#[test]
fn a_recovery_path_or_request_target_with_control_characters_stays_on_one_text_log_line() {
    let dir = scratch("one-line");
    // The parent is a regular file: the recovery file cannot be written
    // and the warning names the path.
    fs::write(dir.join("file"), b"").unwrap();
    let forged = "x\n2026-01-01T00:00:00.000Z ERROR fake\r\u{1b}[2Jy";
    let path = dir.join("file").join(forged);
    let server = FooServer::start(ServerOpts::default());
    let proxy = Proxy::start(
        &server.addr.to_string(),
        &[
            &format!("-recovery-path={}", path.display()),
            "--log-format=text",
        ],
    );
    proxy.stderr_has("cannot be written");
    for target in [
        &b"/a\rb"[..],
        b"/a\nb",
        b"/a\x1b[31mb",
        b"/a\x7fb",
        b"/a\xffb",
        b"/a\tb",
    ] {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(proxy.admin.unwrap()).unwrap();
        s.set_read_timeout(Some(util::WAIT)).unwrap();
        let mut req = b"GET ".to_vec();
        req.extend_from_slice(target);
        req.extend_from_slice(b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        s.write_all(&req).unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        assert!(out.starts_with(b"HTTP/1.1 "), "{target:?}");
    }
    assert!(get(&proxy, "/stats").starts_with("HTTP/1.1 200"));
    proxy.stderr_has("\"GET /stats HTTP/1.1\" 200");
    let mut proxy = proxy;
    proxy.signal("TERM");
    // 3: the final snapshot could not be written either.
    assert_eq!(proxy.wait_exit(util::WAIT), Some(3));
    let log = proxy.stderr();
    assert_each_line_is_a_log_line(&log);
    assert!(
        log.contains("x\\n2026-01-01T00:00:00.000Z ERROR fake\\r\\x1b[2Jy"),
        "{log}"
    );
    assert!(!log.lines().any(|l| l.starts_with("2026-01-01")), "{log}");
}

#[test]
fn a_check_problem_naming_a_path_with_a_newline_is_one_stderr_line() {
    let dir = scratch("check-one-line").join("d\nfoo-proxy: forged");
    fs::create_dir_all(&dir).unwrap();
    let path = dir.display().to_string();
    let out = run(&[
        "--check",
        "-listen",
        "127.0.0.1:0",
        "-http",
        "off",
        "-forward",
        "127.0.0.1:1",
        "-recovery-path",
        &path,
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("d\\nfoo-proxy: forged is a directory"),
        "{err}"
    );
    let report = text(&out.stdout);
    assert!(report.contains("d\\nfoo-proxy: forged (FAILED"), "{report}");
    assert!(
        !report.lines().any(|l| l.starts_with("foo-proxy: forged")),
        "{report}"
    );
}

#[test]
fn check_names_a_forward_to_the_listen_address_even_when_the_listen_address_is_taken() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = taken.local_addr().unwrap().to_string();
    let out = run(&["--check", "-listen", &busy, "-forward", &busy, "-http=off"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot listen on {busy}")),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("{busy} is this proxy's own listen address")),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 2, "{stderr}");
}

#[test]
fn a_check_report_stdout_does_not_take_is_named_on_stderr_and_exits_1() {
    let args = [
        "--check",
        "-listen=127.0.0.1:0",
        "-http=off",
        "-forward=127.0.0.1:1",
    ];
    let full = fs::OpenOptions::new().write(true).open("/dev/full");
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let mut outs: Vec<(&str, Stdio)> = vec![("broken pipe", writer.into())];
    match full {
        Ok(full) => outs.push(("no space left on device", full.into())),
        Err(_) => eprintln!(
            "SKIPPED the /dev/full half of a_check_report_stdout_does_not_take...: no /dev/full"
        ),
    }
    for (why, stdout) in outs {
        let out = Command::new(env!("CARGO_BIN_EXE_foo-proxy"))
            .args(args)
            .stdout(stdout)
            .output()
            .unwrap();
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{why}: {stderr}");
        assert!(
            stderr.contains(&format!("cannot write the --check report to stdout: {why}")),
            "{stderr}"
        );
    }
}

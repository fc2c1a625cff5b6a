//! The container image (Dockerfile, contrib/container/build.sh) and
//! compose.yaml, built and run with podman: relaying, /stats, the health
//! probe, SIGTERM draining as PID 1, the recovery file on the volume.
//!
//! Where podman cannot run (not installed, not root), a test prints a line
//! starting with `SKIPPED:` and passes; `.ci/run` checks the same
//! prerequisites and prints the skip in CI's output.

mod util;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use util::{Proxy, WAIT};

const FOO_PROXY: &str = env!("CARGO_BIN_EXE_foo-proxy");

/// podman flags every container here needs: crun does not work on every
/// cgroup setup (runc does), and podman's default rlimits (nofile 1048576)
/// can be above a sandbox's hard limits, which fails the start.
const RUNTIME: &[&str] = &["--runtime", "runc"];
const ULIMITS: &[&str] = &[
    "--ulimit",
    "nofile=1024:1024",
    "--ulimit",
    "nproc=1024:1024",
];

/// Image builds include a `cargo build` of the static binaries: minutes on
/// a fresh checkout of a 2-core machine.
const BUILD_WAIT: Duration = Duration::from_secs(900);

// ---------------------------------------------------------------------------
// The probe, without containers.

#[test]
fn probe_exits_0_on_2xx_1_on_an_error_status_or_no_listener_and_2_on_a_bad_url() {
    let proxy = Proxy::start("127.0.0.1:9", &[]);
    let admin = proxy.admin.expect("admin socket");
    let probe = |url: &str| {
        let out = run(Command::new(FOO_PROXY).args(["--probe", url]), WAIT);
        (out.status.code(), text(&out.stdout), text(&out.stderr))
    };
    let (code, stdout, stderr) = probe(&format!("http://{admin}/health"));
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(stdout, "", "a probe prints nothing on stdout");
    let (code, _, stderr) = probe(&format!("http://{admin}/nope"));
    assert_eq!(code, Some(1));
    assert!(stderr.contains("answered status 404"), "{stderr}");
    let dead = util::dead_port();
    let (code, _, stderr) = probe(&format!("http://127.0.0.1:{dead}/health"));
    assert_eq!(code, Some(1));
    assert!(stderr.contains("cannot connect to 127.0.0.1"), "{stderr}");
    let (code, _, stderr) = probe(&format!("https://{admin}/health"));
    assert_eq!(code, Some(2));
    assert!(stderr.contains("-probe"), "{stderr}");
}

#[test]
fn probe_of_a_listener_that_never_answers_fails_within_its_timeout() {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/health", silent.local_addr().unwrap());
    let started = Instant::now();
    let out = run(Command::new(FOO_PROXY).args(["--probe", &url]), WAIT);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("no answer within"));
    // Bounded by the probe's own 2 s, well inside a 3 s health-check timeout.
    assert!(started.elapsed() < Duration::from_secs(5));
    drop(silent);
}

// ---------------------------------------------------------------------------
// The image.

#[test]
fn the_image_relays_drains_on_sigterm_as_pid_1_and_keeps_its_counts_on_the_volume() {
    if let Some(why) = containers_unavailable() {
        eprintln!("SKIPPED: container image test: {why}");
        return;
    }
    let mut cleanup = Cleanup::default();
    let tag = format!("test-image-{}", std::process::id());
    let (proxy_image, _server_image) = build_images(&tag, &mut cleanup);

    // What the image says about itself (the HEALTHCHECK needs the docker format).
    let image = podman_json(&["image", "inspect", &proxy_image]);
    let config = &image[0]["Config"];
    assert_eq!(config["User"], "65532:65532");
    assert_eq!(config["StopSignal"], "SIGTERM");
    assert_eq!(
        image[0]["Healthcheck"]["Test"],
        serde_json::json!([
            "CMD",
            "/usr/local/bin/foo-proxy",
            "--probe",
            "http://127.0.0.1:8088/health"
        ])
    );
    let entrypoint: Vec<&str> = config["Entrypoint"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(entrypoint.windows(2).any(|w| w == ["-http", ":8088"]));
    assert!(
        entrypoint
            .windows(2)
            .any(|w| w == ["-recovery-path", "/data/recovery.json"])
    );
    // Health probes every 30 s would be one access line each.
    assert!(entrypoint.windows(2).any(|w| w == ["--access-log", "off"]));
    assert!(config["Volumes"].get("/data").is_some());
    assert!(config["ExposedPorts"].get("8002/tcp").is_some());
    assert!(config["ExposedPorts"].get("8088/tcp").is_some());

    let server = FooServerProcess::start();
    let volume = format!("foo-proxy-test-{}", std::process::id());
    podman_ok(&["volume", "create", &volume]);
    cleanup.volumes.push(volume.clone());

    // Host network, loopback only: the flags after the image name come last
    // and win over the entry point's -listen and -http (free ports here).
    let forward = server.addr.to_string();
    let first = format!("foo-proxy-test-{}-a", std::process::id());
    cleanup.containers.push(first.clone());
    let run_args = |name: &str| -> Vec<String> {
        let mut args: Vec<String> = ["run", "-d", "--name", name, "--network", "host"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.extend(ULIMITS.iter().map(|s| s.to_string()));
        args.extend(
            [
                "-v",
                &format!("{volume}:/data"),
                &proxy_image,
                "-listen",
                "127.0.0.1:0",
                "-http",
                "127.0.0.1:0",
                "-forward",
                &forward,
                "--drain-timeout",
                "20s",
            ]
            .iter()
            .map(|s| s.to_string()),
        );
        args
    };
    let args = run_args(&first);
    podman_ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let (addr, admin) = wait_for_listening(&first);

    // PID 1 in its namespace, the numeric non-root user.
    let pid = podman_text(&["inspect", "--format", "{{.State.Pid}}", &first]);
    let status = std::fs::read_to_string(format!("/proc/{}/status", pid.trim())).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or("")
            .split_whitespace()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        field("NSpid:").last().map(String::as_str),
        Some("1"),
        "{status}"
    );
    assert!(field("Uid:").iter().all(|u| u == "65532"), "{status}");
    assert!(field("Gid:").iter().all(|g| g == "65532"), "{status}");

    // The health probe, run inside the container as a health check runs.
    let probe = podman(&[
        "exec",
        &first,
        "/usr/local/bin/foo-proxy",
        "--probe",
        &format!("http://{admin}/health"),
    ]);
    assert!(probe.status.success(), "probe: {}", text(&probe.stderr));

    // foo-client through the container's proxy.
    let client = run(
        Command::new(util::tool("foo-client")).args([
            "-connect",
            &addr.to_string(),
            "-n",
            "100",
            "-c",
            "4",
            "--seed",
            "7",
        ]),
        WAIT * 6,
    );
    assert!(
        client.status.success(),
        "foo-client: {}",
        text(&client.stderr)
    );
    let stats = get_json(admin, "/stats");
    assert_eq!(stats["msg_req"], 400, "{stats}");
    assert_eq!(
        stats["msg_ack"].as_u64().unwrap() + stats["msg_nak"].as_u64().unwrap(),
        400,
        "{stats}"
    );
    assert_eq!(stats["connections_total"], 4, "{stats}");

    // SIGTERM (podman stop) drains: an open connection still gets its
    // answer, then the proxy writes its snapshot and exits 0, well before
    // podman would fall back to SIGKILL.
    let mut open = TcpStream::connect_timeout(&addr, WAIT).unwrap();
    open.set_read_timeout(Some(WAIT)).unwrap();
    let stopping = Command::new("podman")
        .args(RUNTIME)
        .args(["stop", "-t", "60", &first])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stopping = Reaped(stopping);
    let deadline = Instant::now() + WAIT;
    while get_status(admin, "/ready") != Some(503) {
        assert!(
            Instant::now() < deadline,
            "/ready never turned 503 after podman stop"
        );
        thread::sleep(Duration::from_millis(50));
    }
    open.write_all(b"REQ 401 during-drain\n").unwrap();
    let mut line = String::new();
    BufReader::new(&open).read_line(&mut line).unwrap();
    assert!(
        line.starts_with("ACK 401 ") || line.starts_with("NAK 401 "),
        "{line:?}"
    );
    open.shutdown(Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    let _ = (&open).read_to_end(&mut rest);
    let stopped = stopping.wait(WAIT * 3);
    assert!(stopped.success(), "podman stop failed");
    let state = podman_text(&["inspect", "--format", "{{.State.ExitCode}}", &first]);
    assert_eq!(
        state.trim(),
        "0",
        "exit code after podman stop (137 = SIGKILL)"
    );
    let logs = podman(&["logs", &first]);
    let logs = text(&logs.stderr) + &text(&logs.stdout);
    assert!(logs.contains("draining"), "{logs}");
    // The probe above was served but not logged (--access-log off); the
    // exit line says how the proxy ended.
    assert!(!logs.contains("GET /health"), "{logs}");
    assert!(logs.contains("INFO stopped on SIGTERM after"), "{logs}");

    // The recovery file is on the volume, owned by the proxy's user.
    let mountpoint = podman_text(&["volume", "inspect", "--format", "{{.Mountpoint}}", &volume]);
    let file = Path::new(mountpoint.trim()).join("recovery.json");
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(saved["totals"]["msg_req"], 401, "{saved}");
    let owner = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(&file).unwrap());
    assert_eq!(owner, 65532);

    // A new container on the same volume starts from those counts.
    let second = format!("foo-proxy-test-{}-b", std::process::id());
    cleanup.containers.push(second.clone());
    let args = run_args(&second);
    podman_ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let (_, admin) = wait_for_listening(&second);
    let stats = get_json(admin, "/stats");
    assert_eq!(stats["msg_req"], 401, "{stats}");
    podman_ok(&["stop", "-t", "30", &second]);
    let state = podman_text(&["inspect", "--format", "{{.State.ExitCode}}", &second]);
    assert_eq!(state.trim(), "0");
    drop(server);
}

#[test]
fn compose_runs_the_proxy_in_front_of_foo_server_by_name_and_reports_healthy() {
    if let Some(why) = containers_unavailable() {
        eprintln!("SKIPPED: compose test: {why}");
        return;
    }
    if let Some(why) = compose_unavailable() {
        eprintln!("SKIPPED: compose test: {why}");
        return;
    }
    let mut cleanup = Cleanup::default();
    let tag = format!("test-compose-{}", std::process::id());
    let (proxy_image, server_image) = build_images(&tag, &mut cleanup);
    let project = format!("fooproxytest{}", std::process::id());
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    // A bridge network with container addresses: inside a network namespace
    // of this test's own, so nothing but loopback is reached from the host.
    let script = format!(
        r#"set -u
ip link set lo up
compose() {{ podman-compose -p {project} -f compose.yaml --podman-args=--runtime=runc "$@"; }}
finish() {{
  compose down -v >/dev/null 2>&1
  podman network rm -f {project}_default >/dev/null 2>&1
  podman volume rm -f {project}_foo-data >/dev/null 2>&1
}}
trap finish EXIT
compose up -d >&2 || exit 10
for i in $(seq 100); do
  {proxy} --probe http://127.0.0.1:8088/health 2>/dev/null && break
  sleep 0.1
done
{client} -connect 127.0.0.1:8002 -n 50 -c 2 --seed 3 >&2 || exit 11
python3 -c 'import urllib.request; print("STATS", urllib.request.urlopen("http://127.0.0.1:8088/stats", timeout=5).read().decode().strip())'
echo "HEALTH $(podman healthcheck run {project}_foo-proxy_1 >/dev/null 2>&1; echo $?)"
podman stop -t 30 {project}_foo-proxy_1 >/dev/null 2>&1
echo "EXIT $(podman inspect --format '{{{{.State.ExitCode}}}}' {project}_foo-proxy_1)"
"#,
        proxy = FOO_PROXY,
        client = util::tool("foo-client").display(),
    );
    let out = run(
        Command::new("unshare")
            .args(["--net", "bash", "-c", &script])
            .current_dir(root)
            .env("FOO_PROXY_IMAGE", &proxy_image)
            .env("FOO_SERVER_IMAGE", &server_image),
        Duration::from_secs(300),
    );
    let stdout = text(&out.stdout);
    let stderr = text(&out.stderr);
    assert!(
        out.status.success(),
        "compose script failed:\n{stdout}\n{stderr}"
    );
    let value = |key: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_else(|| panic!("no {key} line:\n{stdout}\n{stderr}"))
            .trim()
            .to_owned()
    };
    let stats: serde_json::Value = serde_json::from_str(&value("STATS ")).unwrap();
    assert_eq!(stats["msg_req"], 100, "{stats}");
    assert_eq!(stats["upstream_errors"], 0, "{stats}");
    assert_eq!(value("HEALTH "), "0", "podman healthcheck run:\n{stderr}");
    assert_eq!(
        value("EXIT "),
        "0",
        "the proxy's exit code after podman stop"
    );
}

// ---------------------------------------------------------------------------
// Helpers.

/// Why containers cannot run here, if they cannot.
fn containers_unavailable() -> Option<String> {
    for tool in ["podman", "runc"] {
        if !command_works(Command::new(tool).arg("--version")) {
            return Some(format!(
                "{tool} is not installed (apt-get install podman runc)"
            ));
        }
    }
    // Rootless podman needs subordinate IDs and user-owned storage set up.
    let uid = run(Command::new("id").arg("-u"), WAIT);
    if text(&uid.stdout).trim() != "0" {
        return Some("not root (the test runs rootful podman)".into());
    }
    if !command_works(Command::new("podman").args(["info"])) {
        return Some("`podman info` fails".into());
    }
    None
}

/// Why the compose file cannot be run here, if it cannot.
fn compose_unavailable() -> Option<String> {
    if !command_works(Command::new("podman-compose").arg("--version")) {
        return Some("podman-compose is not installed (apt-get install podman-compose)".into());
    }
    if !command_works(Command::new("ip").arg("-V")) {
        return Some("ip is not installed (apt-get install iproute2)".into());
    }
    if !command_works(Command::new("unshare").args(["--net", "true"])) {
        return Some("unshare --net is not permitted".into());
    }
    None
}

fn command_works(cmd: &mut Command) -> bool {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Builds both images with `contrib/container/build.sh` under `tag`
/// (removed again by `cleanup`); returns the proxy's and the server's name.
fn build_images(tag: &str, cleanup: &mut Cleanup) -> (String, String) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = run(
        Command::new("bash")
            .arg(root.join("contrib/container/build.sh"))
            .env("FOO_IMAGE_TAG", tag),
        BUILD_WAIT,
    );
    assert!(
        out.status.success(),
        "build.sh failed: {}",
        text(&out.stderr)
    );
    let names: Vec<String> = text(&out.stdout).lines().map(str::to_owned).collect();
    cleanup.images.extend(names.iter().cloned());
    let proxy = format!("localhost/foo-proxy:{tag}");
    let server = format!("localhost/foo-server:{tag}");
    assert!(
        names.contains(&proxy) && names.contains(&server),
        "{names:?}"
    );
    (proxy, server)
}

/// Containers, volumes and images this test made, removed on drop.
#[derive(Default)]
struct Cleanup {
    containers: Vec<String>,
    volumes: Vec<String>,
    images: Vec<String>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for c in &self.containers {
            let _ = podman(&["rm", "-f", "-t", "0", c]);
        }
        for v in &self.volumes {
            let _ = podman(&["volume", "rm", "-f", v]);
        }
        for i in &self.images {
            let _ = podman(&["rmi", "-f", i]);
        }
    }
}

/// A child process that is killed and reaped when dropped.
struct Reaped(Child);

impl Reaped {
    fn wait(mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.0.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "a child did not exit in {within:?}"
            );
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// foo-server on a free loopback port.
struct FooServerProcess {
    _child: Reaped,
    addr: SocketAddr,
}

impl FooServerProcess {
    fn start() -> FooServerProcess {
        let mut child = Command::new(util::tool("foo-server"))
            .args(["-listen", "127.0.0.1:0", "--seed", "5"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let child = Reaped(child);
        let (tx, rx) = std::sync::mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("listening on ").nth(1) {
                    let _ = tx.send(rest.split_whitespace().next().unwrap_or("").to_owned());
                }
            }
        });
        let addr = rx.recv_timeout(WAIT).expect("foo-server start line");
        FooServerProcess {
            _child: child,
            addr: addr.parse().expect("foo-server address"),
        }
    }
}

/// Runs `cmd` to completion within `within` (killed and a panic after).
fn run(cmd: &mut Command, within: Duration) -> Output {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let (tx, rx) = std::sync::mpsc::channel();
    let id = child.id();
    thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(within) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", &id.to_string()])
                .status();
            panic!("{cmd:?} did not finish within {within:?}");
        }
    }
}

fn podman(args: &[&str]) -> Output {
    run(Command::new("podman").args(RUNTIME).args(args), WAIT * 6)
}

fn podman_ok(args: &[&str]) {
    let out = podman(args);
    assert!(
        out.status.success(),
        "podman {args:?}: {}",
        text(&out.stderr)
    );
}

fn podman_text(args: &[&str]) -> String {
    let out = podman(args);
    assert!(
        out.status.success(),
        "podman {args:?}: {}",
        text(&out.stderr)
    );
    text(&out.stdout)
}

fn podman_json(args: &[&str]) -> serde_json::Value {
    serde_json::from_str(&podman_text(args)).unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The proxy's and the admin socket's addresses, from the container's log.
fn wait_for_listening(container: &str) -> (SocketAddr, SocketAddr) {
    let deadline = Instant::now() + WAIT;
    loop {
        let out = podman(&["logs", container]);
        let logs = text(&out.stderr) + &text(&out.stdout);
        let after = |marker: &str| {
            logs.split(marker)
                .nth(1)
                .and_then(|rest| rest.split([',', ' ', ';', '\n']).next())
                .and_then(|a| a.parse::<SocketAddr>().ok())
        };
        // The first ` listening on ` is the proxy's own, then the admin's.
        if let (Some(addr), Some(admin)) = (after(" listening on "), after("admin listening on ")) {
            return (addr, admin);
        }
        assert!(
            Instant::now() < deadline,
            "{container} did not log its addresses:\n{logs}"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(WAIT))
        .build()
        .into()
}

fn get_status(admin: SocketAddr, path: &str) -> Option<u16> {
    agent()
        .get(format!("http://{admin}{path}"))
        .call()
        .ok()
        .map(|r| r.status().as_u16())
}

fn get_json(admin: SocketAddr, path: &str) -> serde_json::Value {
    let mut resp = agent()
        .get(format!("http://{admin}{path}"))
        .call()
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    assert_eq!(resp.status().as_u16(), 200, "GET {path}");
    let body = resp.body_mut().read_to_string().unwrap();
    serde_json::from_str(&body).unwrap()
}

//! Running the workspace's binaries as child processes, for `foo-demo` and
//! the integration tests: find the address they log, read their stdout with a
//! deadline, signal them, and never leave one behind (kill on drop).

use std::io::{BufRead, BufReader, Read};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

/// A running child. Its stderr is kept line by line for
/// [`Child::wait_for_listening`] and, from [`Child::spawn`], also echoed to
/// ours prefixed with its name.
pub struct Child {
    name: String,
    child: std::process::Child,
    stderr: Receiver<String>,
    stdout: Option<Receiver<String>>,
}

/// How a child's stdout is handled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stdout {
    /// Read line by line through [`Child::stdout_line`].
    Capture,
    /// Shared with ours.
    Inherit,
}

/// `binary` in `dir`, or an error saying how to build it.
pub fn sibling(dir: &Path, binary: &str) -> Result<PathBuf, String> {
    let path = dir.join(binary);
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!(
            "cannot find {binary} in {}; build it with `cargo build --release --bins` at the workspace root",
            dir.display()
        ))
    }
}

/// Brings the workspace's binaries (foo-proxy and the tools) in `dir` up to
/// date: `cargo build --bins` for the workspace found from the current
/// directory, with the profile, target triple and target directory that
/// `dir` (an output directory such as `target/release`) belongs to, so the
/// binaries land next to each other in `dir`. Runs only under cargo (`cargo
/// run`, `test`, `bench` set `CARGO`); elsewhere it does nothing and the
/// binaries are used as they are. `quiet` passes `--quiet` to cargo. Error:
/// cargo cannot start, fails, or takes longer than `timeout`.
pub fn build_workspace_bins(dir: &Path, quiet: bool, timeout: Duration) -> Result<(), String> {
    let Some(cargo) = std::env::var_os("CARGO") else {
        return Ok(());
    };
    let mut command = Command::new(cargo);
    command.args(["build", "--bins"]);
    if quiet {
        command.arg("--quiet");
    }
    match dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => {}
        Some("release") => {
            command.arg("--release");
        }
        Some(profile) => {
            command.args(["--profile", profile]);
        }
    }
    // target/<profile> or target/<triple>/<profile>: the target directory
    // is the one that holds cargo's CACHEDIR.TAG.
    let parent = dir.parent();
    match parent.and_then(Path::parent) {
        Some(root) if root.join("CACHEDIR.TAG").is_file() => {
            if let Some(triple) = parent.and_then(Path::file_name) {
                command.arg("--target").arg(triple);
            }
            command.arg("--target-dir").arg(root);
        }
        _ => {
            if let Some(root) = parent {
                command.arg("--target-dir").arg(root);
            }
        }
    }
    let mut build = Child::spawn("cargo", &mut command, Stdout::Inherit)?;
    let status = build.wait(timeout)?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("cargo build --bins failed ({status})"))
    }
}

/// Reads `from` line by line into a channel until it closes.
fn forward_lines<R: Read + Send + 'static>(from: R, echo: Option<String>) -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(from).lines() {
            let Ok(line) = line else { break };
            if let Some(name) = &echo {
                eprintln!("[{name}] {line}");
            }
            // The receiver may be gone; the echo must go on regardless.
            let _ = tx.send(line);
        }
    });
    rx
}

impl Child {
    /// Starts `command`, echoing its stderr to ours (for tests: the child's
    /// log shows with a failure).
    pub fn spawn(name: &str, command: &mut Command, stdout: Stdout) -> Result<Child, String> {
        Child::start(name, command, stdout, true)
    }

    /// Starts `command` without echoing its stderr: the caller shows what
    /// it wants, when it wants, so the child's lines never cut into its own.
    pub fn spawn_quiet(name: &str, command: &mut Command, stdout: Stdout) -> Result<Child, String> {
        Child::start(name, command, stdout, false)
    }

    fn start(
        name: &str,
        command: &mut Command,
        stdout: Stdout,
        echo: bool,
    ) -> Result<Child, String> {
        command.stdin(Stdio::null()).stderr(Stdio::piped());
        command.stdout(match stdout {
            Stdout::Capture => Stdio::piped(),
            Stdout::Inherit => Stdio::inherit(),
        });
        let mut child = command
            .spawn()
            .map_err(|e| format!("cannot start {name} ({:?}): {e}", command.get_program()))?;
        let stderr = match child.stderr.take() {
            Some(pipe) => forward_lines(pipe, echo.then(|| name.to_string())),
            None => mpsc::channel().1,
        };
        let stdout = child.stdout.take().map(|pipe| forward_lines(pipe, None));
        Ok(Child {
            name: name.to_string(),
            child,
            stderr,
            stdout,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the `listening on ADDR` line every binary here logs at start,
    /// and returns ADDR with an unspecified IP turned into loopback.
    pub fn wait_for_listening(&mut self, timeout: Duration) -> Result<SocketAddr, String> {
        let line = self.wait_for_start_line(timeout)?;
        listening_addr(&line).ok_or_else(|| format!("{}: no address in {line:?}", self.name))
    }

    /// Waits for the start line (the one naming `listening on ADDR`).
    pub fn wait_for_start_line(&mut self, timeout: Duration) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stderr.recv_timeout(left) {
                Ok(line) => {
                    if listening_addr(&line).is_some() {
                        return Ok(line);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    return Err(format!(
                        "{} did not log its listening address within {timeout:?}",
                        self.name
                    ));
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.wait(Duration::from_secs(1));
                    return Err(format!(
                        "{} exited before listening ({})",
                        self.name,
                        status.map_or_else(|e| e, |s| s.to_string())
                    ));
                }
            }
        }
    }

    /// The next line on the child's captured stdout.
    pub fn stdout_line(&mut self, timeout: Duration) -> Result<String, String> {
        let Some(rx) = &self.stdout else {
            return Err(format!("{}'s stdout is not captured", self.name));
        };
        rx.recv_timeout(timeout).map_err(|e| match e {
            RecvTimeoutError::Timeout => {
                format!("{} printed no line within {timeout:?}", self.name)
            }
            RecvTimeoutError::Disconnected => format!("{} closed its stdout", self.name),
        })
    }

    /// Everything the child prints on stdout until it closes it (exits).
    pub fn stdout_rest(&mut self, timeout: Duration) -> String {
        match &self.stdout {
            Some(rx) => drain(rx, timeout),
            None => String::new(),
        }
    }

    /// Every stderr line not read yet, until the child closes stderr.
    pub fn stderr_rest(&mut self, timeout: Duration) -> String {
        drain(&self.stderr, timeout)
    }

    /// Sends `signal` (a name such as `USR2`) with kill(1).
    pub fn signal(&self, signal: &str) -> Result<(), String> {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .stdin(Stdio::null())
            .status()
            .map_err(|e| format!("cannot run kill to signal {}: {e}", self.name))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("kill -{signal} {} failed: {status}", self.pid()))
        }
    }

    /// Waits for the child to exit, at most `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> Result<ExitStatus, String> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return Ok(status),
                Ok(None) if Instant::now() >= deadline => {
                    return Err(format!("{} still running after {timeout:?}", self.name));
                }
                Ok(None) => thread::sleep(Duration::from_millis(10)),
                Err(e) => return Err(format!("cannot wait for {}: {e}", self.name)),
            }
        }
    }

    /// SIGTERM, then SIGKILL if it has not exited within `grace`.
    pub fn stop(&mut self, grace: Duration) -> Result<ExitStatus, String> {
        if let Ok(Some(status)) = self.child.try_wait() {
            return Ok(status);
        }
        let terminated = self.signal("TERM").and_then(|()| self.wait(grace));
        match terminated {
            Ok(status) => Ok(status),
            Err(_) => {
                let _ = self.child.kill();
                self.wait(grace)
            }
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Lines from `rx` until its sender is gone or `timeout` has passed.
fn drain(rx: &Receiver<String>, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    let mut text = String::new();
    while let Ok(line) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        text.push_str(&line);
        text.push('\n');
    }
    text
}

/// The address in a `... listening on ADDR, ...` log line.
pub fn listening_addr(line: &str) -> Option<SocketAddr> {
    let (_, rest) = line.split_once("listening on ")?;
    let end = rest
        .find(|c: char| c == ',' || c.is_whitespace())
        .unwrap_or(rest.len());
    let addr: SocketAddr = rest.get(..end)?.parse().ok()?;
    Some(connectable(addr))
}

/// `0.0.0.0:p` and `[::]:p` become the loopback address of the same family.
pub fn connectable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => (Ipv4Addr::LOCALHOST, addr.port()).into(),
        IpAddr::V6(ip) if ip.is_unspecified() => {
            (std::net::Ipv6Addr::LOCALHOST, addr.port()).into()
        }
        _ => addr,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_address_in_log_lines() {
        let proxy = "2026-01-01T00:00:00.000Z INFO foo-proxy 0.1.0 listening on \
                     127.0.0.1:40001, forwarding to 127.0.0.1:8001 (127.0.0.1:8001)";
        assert_eq!(
            listening_addr(proxy),
            Some("127.0.0.1:40001".parse().unwrap())
        );
        let server = "... INFO foo-server listening on 0.0.0.0:8001 (seed 7)";
        assert_eq!(
            listening_addr(server),
            Some("127.0.0.1:8001".parse().unwrap())
        );
        assert_eq!(
            listening_addr("listening on [::]:9"),
            Some("[::1]:9".parse().unwrap())
        );
        assert_eq!(listening_addr("INFO shutting down"), None);
        assert_eq!(listening_addr("listening on nowhere"), None);
    }
}

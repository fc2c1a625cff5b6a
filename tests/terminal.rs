//! The first lines a process prints: in the background on a `tostop`
//! terminal, `--help`, `--version` and a bad flag must not stop it, and a
//! stdout that does not take them must not make it panic.

use std::path::Path;
use std::process::{Command, Stdio};

/// Runs one case inside a new session on a pseudo-terminal with `tostop`
/// set: foo-proxy in a background process group, the session leader in the
/// foreground. Prints how foo-proxy ended (`exit N` or `stopped by SIG...`)
/// on the first line, then what reached the terminal.
const TOSTOP: &str = r#"
import os, pty, select, signal, sys, termios, time
binary, case, result = sys.argv[1], sys.argv[2], sys.argv[3]
args = {
    "help": [binary, "-h"],
    "version": [binary, "--version"],
    "bad-flag": [binary, "--buffer-size", "1"],
    "run": [binary, "-listen", "127.0.0.1:0", "-forward", "127.0.0.1:1", "-http", "off",
            "-recovery-path="],
}[case]
pid, master = pty.fork()
if pid == 0:
    attrs = termios.tcgetattr(0)
    attrs[3] |= termios.TOSTOP
    termios.tcsetattr(0, termios.TCSANOW, attrs)
    child = os.fork()
    if child == 0:
        os.setpgid(0, 0)
        os.execv(binary, args)
    try:
        os.setpgid(child, child)
    except OSError:
        pass
    if case == "run":
        time.sleep(0.5)
        os.kill(child, signal.SIGUSR2)
        time.sleep(0.3)
        os.kill(child, signal.SIGTERM)
    outcome = "still running"
    end = time.time() + 5
    while time.time() < end:
        done, status = os.waitpid(child, os.WNOHANG | os.WUNTRACED)
        if done:
            if os.WIFSTOPPED(status):
                outcome = "stopped by " + signal.Signals(os.WSTOPSIG(status)).name
            else:
                outcome = "exit %d" % os.waitstatus_to_exitcode(status)
            break
        time.sleep(0.02)
    if not outcome.startswith("exit"):
        os.kill(child, signal.SIGKILL)
    with open(result, "w") as f:
        f.write(outcome)
    os._exit(0)
out = b""
while True:
    ready, _, _ = select.select([master], [], [], 10)
    if not ready:
        break
    try:
        data = os.read(master, 65536)
    except OSError:
        break
    if not data:
        break
    out += data
os.waitpid(pid, 0)
print(open(result).read())
print(out.decode(errors="replace"))
"#;

fn python3() -> bool {
    Command::new("python3")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// How foo-proxy ended in the background on a `tostop` terminal, and what
/// it printed there.
fn in_the_background(case: &str) -> (String, String) {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("terminal");
    std::fs::create_dir_all(&dir).unwrap();
    let result = dir.join(format!("{case}.result"));
    let out = Command::new("timeout")
        .args([
            "30",
            "python3",
            "-c",
            TOSTOP,
            env!("CARGO_BIN_EXE_foo-proxy"),
            case,
        ])
        .arg(&result)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (outcome, printed) = text.split_once('\n').unwrap_or((&text, ""));
    (outcome.to_string(), printed.to_string())
}

#[test]
fn help_version_and_a_bad_flag_print_in_the_background_on_a_tostop_terminal_without_stopping() {
    if !python3() {
        eprintln!("SKIPPED help_version_and_a_bad_flag_print_in_the_background...: no python3");
        return;
    }
    for (case, code, shows) in [
        ("help", "exit 0", "Usage: foo-proxy"),
        ("version", "exit 0", "foo-proxy 0."),
        ("bad-flag", "exit 2", "invalid value"),
        // The writer threads, with a report and log lines.
        ("run", "exit 0", "\"msg_total\":0"),
    ] {
        let (outcome, printed) = in_the_background(case);
        assert_eq!(outcome, code, "{case}: {printed}");
        assert!(printed.contains(shows), "{case}: {printed}");
    }
}

#[test]
fn help_and_version_to_a_full_stdout_exit_1_and_a_bad_flag_to_a_full_stderr_exits_2() {
    let Ok(full) = std::fs::OpenOptions::new().write(true).open("/dev/full") else {
        eprintln!("SKIPPED help_and_version_to_a_full_stdout...: no /dev/full");
        return;
    };
    let bin = env!("CARGO_BIN_EXE_foo-proxy");
    for (args, what) in [(&["-h"][..], "the usage"), (&["--version"], "the version")] {
        let out = Command::new(bin)
            .args(args)
            .stdout(full.try_clone().unwrap())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        // One line naming what failed, and no panic message.
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            stderr,
            format!("foo-proxy: cannot write {what} to stdout: no space left on device\n"),
            "{args:?}"
        );
    }
    let status = Command::new(bin)
        .arg("--bogus")
        .stderr(full)
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(2));
}

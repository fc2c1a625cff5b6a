//! The foo-proxy binary: reads the flags, then prints the help or version, probes, checks, or starts the server (recovery file, signals, inherited listeners) and turns how it ended into the exit code.

#![forbid(unsafe_code)]
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::process::ExitCode;
use std::time::Duration;

use foo_proxy::cli::{self, Command, USAGE};
use foo_proxy::handover::{control_path, same_listen, taker};
use foo_proxy::logging;
use foo_proxy::net::describe;
use foo_proxy::output;
use foo_proxy::recovery::Recovery;
use foo_proxy::server::{Inherited, Server, Stopped};
use foo_proxy::signals::{self, Signals};
use foo_proxy::systemd;
use log::{error, info, warn};

/// How long the exit waits for queued report and log lines to be written:
/// a reader that never reads must not hang it.
const OUTPUT_FLUSH_WAIT: Duration = Duration::from_secs(1);

/// The exit code when the proxy stopped but its final snapshot is not on
/// disk (1 is a start failure, 2 a bad flag or path).
const EXIT_SNAPSHOT_LOST: u8 = 3;

fn main() -> ExitCode {
    // Before anything is printed: in the background on a `tostop` terminal
    // a write would otherwise stop the whole process (SIGTTOU), `--help`
    // and a bad flag included.
    output::block_job_control_signals();
    let config = match cli::parse(std::env::args_os().skip(1).collect()) {
        Ok(Command::Run(config)) => *config,
        Ok(Command::Help) => return printed("the usage", USAGE),
        Ok(Command::Version) => {
            let line = foo_proxy::build::version_line();
            return printed("the version", &line);
        }
        Ok(Command::Probe(target)) => return foo_proxy::probe::main(&target),
        Ok(Command::Check(config)) => return check(&config),
        Err(e) => {
            // Exit 2 whether or not stderr takes the line.
            let e = logging::one_line(&e.to_string()).into_owned();
            let _ = output::print_now(true, &format!("foo-proxy: {e} (see foo-proxy -h)\n"));
            return ExitCode::from(2);
        }
    };
    // Before any thread runs: socket activation unsets its variables.
    systemd::init();
    let activated = systemd::listen_fds();
    // Before the recovery file and the sockets: a signal during the start
    // waits for the loop instead of killing the process (or being lost).
    let signals = signals::install();
    logging::init(config.log_level, config.log_format);
    let signals = match signals {
        Ok((signals, warning)) => {
            if let Some(warning) = warning {
                warn!("{warning}");
            }
            signals
        }
        Err(e) => {
            error!("cannot install signal handlers: {}", describe(&e));
            output::flush(OUTPUT_FLUSH_WAIT);
            return ExitCode::from(1);
        }
    };
    // From here on this thread writes nothing itself (the writer threads
    // do, with the signals blocked): a `kill -TTOU` is caught and logged.
    output::unblock_job_control_signals();
    let activated = match activated {
        Ok(activated) => activated,
        Err(e) => {
            error!("{e}");
            output::flush(OUTPUT_FLUSH_WAIT);
            return ExitCode::from(1);
        }
    };
    let code = start(config, signals, activated);
    output::flush(OUTPUT_FLUSH_WAIT);
    code
}

/// Prints `text` (`what`: `the usage`, `the version`) on stdout: exit 0
/// once it is out, 1 with one line on stderr if stdout did not take it
/// (`foo-proxy --help > /dev/full`, `| true`), as coreutils do. A closed
/// stdout (`>&-`) is `/dev/null` by then (Rust's runtime reopens 0, 1 and
/// 2 there before `main`), so the text is discarded and the exit is 0.
fn printed(what: &str, text: &str) -> ExitCode {
    match output::print_now(false, text) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let why = describe(&e);
            let _ = output::print_now(
                true,
                &format!("foo-proxy: cannot write {what} to stdout: {why}\n"),
            );
            ExitCode::from(1)
        }
    }
}

/// `--check`: the report on stdout, each problem on stderr; exit 0 when
/// a start would get past every check, 2 otherwise; 1 when there was no
/// problem but stdout did not take the report (one line on stderr says so).
fn check(config: &cli::Config) -> ExitCode {
    logging::init(config.log_level, config.log_format);
    let outcome = foo_proxy::check::check(config);
    let mut code = ExitCode::SUCCESS;
    for problem in &outcome.problems {
        let problem = logging::one_line(problem);
        let _ = output::print_now(true, &format!("foo-proxy: {problem}\n"));
        code = ExitCode::from(2);
    }
    if let Err(e) = output::print_now(false, &outcome.report) {
        let why = describe(&e);
        let _ = output::print_now(
            true,
            &format!("foo-proxy: cannot write the --check report to stdout: {why}\n"),
        );
        if outcome.problems.is_empty() {
            code = ExitCode::from(1);
        }
    }
    output::flush(OUTPUT_FLUSH_WAIT);
    code
}

/// Takes over from a running proxy (`--takeover`) or claims the recovery
/// file, binds what was not handed over or passed by socket activation,
/// runs; the exit code.
fn start(
    config: cli::Config,
    signals: Signals,
    activated: Vec<(std::net::SocketAddr, std::net::TcpListener)>,
) -> ExitCode {
    let mut offered = None;
    if config.takeover
        && let Some(path) = &config.recovery_path
    {
        let control = control_path(path);
        match taker::ask(&control) {
            Ok(Some(o)) => offered = Some(o),
            Ok(None) => info!(
                "no foo-proxy answers on {}: starting without a hand-over",
                control.display()
            ),
            Err(e) => {
                error!("{e}");
                return ExitCode::from(1);
            }
        }
    }
    let inherited = match inherit(&config, offered.as_mut(), activated) {
        Ok(inherited) => inherited,
        Err(e) => {
            error!("{e}");
            return ExitCode::from(2);
        }
    };
    // Before any socket is bound: an unusable recovery path or a second
    // owner stops the start here, with no client left hanging. In a
    // hand-over the old process hands it on later.
    let claimed = if offered.is_some() {
        None
    } else {
        config.recovery_path.clone()
    };
    let recovery = match claimed.map(Recovery::claim) {
        Some(Err(e)) => {
            error!("{e}");
            return ExitCode::from(e.exit_code());
        }
        Some(Ok(recovery)) => Some(recovery),
        None => None,
    };
    let recovery_path = config.recovery_path.clone();
    let mut server = match Server::bind(config, signals, inherited) {
        Ok(server) => server,
        Err(e) => {
            error!("{e}");
            return ExitCode::from(1);
        }
    };
    // Known only once the listener has its port: a bad value all the same.
    if let Some(why) = server.forwards_to_itself() {
        // A bad -forward value: the same line as every other one.
        let _ = output::print_now(true, &format!("foo-proxy: {why} (see foo-proxy -h)\n"));
        return ExitCode::from(2);
    }
    if let Some(recovery) = recovery {
        server.set_recovery(recovery);
    }
    if let (Some(offered), Some(path)) = (offered, recovery_path) {
        server.set_takeover(offered, path);
    }
    match server.run() {
        Ok(Stopped::Clean | Stopped::HandedOver) => ExitCode::SUCCESS,
        Ok(Stopped::SnapshotLost) => ExitCode::from(EXIT_SNAPSHOT_LOST),
        Err(e) => {
            error!("event loop failed: {}", describe(&e));
            ExitCode::from(1)
        }
    }
}

/// The listeners to use instead of binding: the old process's (a
/// hand-over) for the addresses the flags still name, else socket
/// activation's. A listener the flags do not name is closed (the old
/// process's stays open until it exits); one from socket activation is an
/// error, since the service's socket unit and flags disagree.
fn inherit(
    config: &cli::Config,
    offered: Option<&mut taker::Offered>,
    activated: Vec<(std::net::SocketAddr, std::net::TcpListener)>,
) -> Result<Inherited, String> {
    let mut inherited = Inherited::default();
    if let Some(offered) = offered {
        if let Some((addr, listener)) = offered.listen.take() {
            if same_listen(config.listen, addr) {
                inherited.listen = Some(listener);
            } else {
                warn!(
                    "hand-over: -listen {} is not the old listener {addr}: binding anew; {addr} closes when pid {} exits",
                    config.listen, offered.old_pid
                );
            }
        }
        if let Some((addr, listener)) = offered.admin.take() {
            if config.http.is_some_and(|http| same_listen(http, addr)) {
                inherited.admin = Some(listener);
            } else {
                info!(
                    "hand-over: the admin listener {addr} is not -http: it closes when pid {} exits",
                    offered.old_pid
                );
            }
        }
    }
    for (addr, listener) in activated {
        if same_listen(config.listen, addr) {
            if inherited.listen.is_none() {
                inherited.listen = Some(listener);
            }
        } else if config.http.is_some_and(|http| same_listen(http, addr)) {
            if inherited.admin.is_none() {
                inherited.admin = Some(listener);
            }
        } else {
            return Err(format!(
                "socket activation passed a listener on {addr}, which is neither -listen {} nor -http",
                config.listen
            ));
        }
    }
    Ok(inherited)
}

#![forbid(unsafe_code)]
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::process::ExitCode;
use std::time::Duration;

use foo_proxy::cli::{self, Command, USAGE};
use foo_proxy::logging;
use foo_proxy::net::describe;
use foo_proxy::output;
use foo_proxy::recovery::Recovery;
use foo_proxy::server::{Server, Stopped};
use foo_proxy::signals::{self, Signals};
use log::error;

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
        Ok(Command::Help) => return printed(output::print_now(false, USAGE)),
        Ok(Command::Version) => {
            let version = format!("foo-proxy {}\n", env!("CARGO_PKG_VERSION"));
            return printed(output::print_now(false, &version));
        }
        Ok(Command::Probe(target)) => return foo_proxy::probe::main(&target),
        Err(e) => {
            // Exit 2 whether or not stderr takes the line.
            let _ = output::print_now(true, &format!("foo-proxy: {e} (see foo-proxy -h)\n"));
            return ExitCode::from(2);
        }
    };
    // Before the recovery file and the sockets: a signal during the start
    // waits for the loop instead of killing the process (or being lost).
    let signals = signals::install();
    logging::init(config.log_level);
    let signals = match signals {
        Ok(signals) => signals,
        Err(e) => {
            error!("cannot install signal handlers: {}", describe(&e));
            output::flush(OUTPUT_FLUSH_WAIT);
            return ExitCode::from(1);
        }
    };
    // From here on this thread writes nothing itself (the writer threads
    // do, with the signals blocked): a `kill -TTOU` is caught and logged.
    output::unblock_job_control_signals();
    let code = start(config, signals);
    output::flush(OUTPUT_FLUSH_WAIT);
    code
}

/// Exit 0 once `--help` or `--version` is out, 1 if stdout did not take it
/// (`foo-proxy --help > /dev/full`), as coreutils do.
fn printed(result: std::io::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(_) => ExitCode::from(1),
    }
}

/// Claims the recovery file, binds, runs; the exit code.
fn start(config: cli::Config, signals: Signals) -> ExitCode {
    // Before any socket is bound: an unusable recovery path or a second
    // owner stops the start here, with no client left hanging.
    let recovery = match config.recovery_path.clone().map(Recovery::claim) {
        Some(Err(e)) => {
            error!("{e}");
            return ExitCode::from(e.exit_code());
        }
        Some(Ok(recovery)) => Some(recovery),
        None => None,
    };
    let mut server = match Server::bind(config, signals) {
        Ok(server) => server,
        Err(e) => {
            error!("{e}");
            return ExitCode::from(1);
        }
    };
    // Known only once the listener has its port: a bad value all the same.
    if let Some(why) = server.forwards_to_itself() {
        error!("{why}");
        return ExitCode::from(2);
    }
    if let Some(recovery) = recovery {
        server.set_recovery(recovery);
    }
    match server.run() {
        Ok(Stopped::Clean) => ExitCode::SUCCESS,
        Ok(Stopped::SnapshotLost) => ExitCode::from(EXIT_SNAPSHOT_LOST),
        Err(e) => {
            error!("event loop failed: {}", describe(&e));
            ExitCode::from(1)
        }
    }
}

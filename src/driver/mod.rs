//! Test drivers: what `foo-server`, `foo-client`, `foo-load` and `foo-demo`
//! share, so that no binary carries its own copy.
//!
//! [`rng`] (seeded, reproducible), [`proto`] (parsing and writing Foo lines),
//! [`wire`] (line reader and fragmenting writer over non-blocking sockets),
//! [`hist`] (latency histogram) and [`child`] (running the binaries from the
//! demo and the tests).

pub mod child;
pub mod hist;
pub mod proto;
pub mod rng;
pub mod wire;

use std::ffi::OsString;
use std::process::ExitCode;

use crate::cli::CliError;

/// Parses a driver's command line. `Err` carries the exit code after the
/// usage (`-h`, exit 0) or a one-line error (exit 2) has been printed.
pub fn parse_or_exit<T>(
    name: &str,
    usage: &str,
    parse: impl FnOnce(Vec<OsString>) -> Result<Option<T>, CliError>,
) -> Result<T, ExitCode> {
    // No SIGTTOU stop in the background on a `tostop` terminal (for the
    // driver's whole life: it prints from this thread), and no panic on a
    // stdout that does not take the usage.
    crate::output::block_job_control_signals();
    match parse(std::env::args_os().skip(1).collect()) {
        Ok(Some(config)) => Ok(config),
        Ok(None) => match crate::output::print_now(false, usage) {
            Ok(()) => Err(ExitCode::SUCCESS),
            Err(_) => Err(ExitCode::from(1)),
        },
        Err(e) => {
            let _ = crate::output::print_now(true, &format!("{name}: {e} (see {name} -h)\n"));
            Err(ExitCode::from(2))
        }
    }
}

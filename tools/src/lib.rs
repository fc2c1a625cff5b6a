//! foo-tools: what the test tools `foo-server`, `foo-client`, `foo-load`
//! and `foo-demo` share, so that no binary carries its own copy.
//!
//! A workspace member of its own, so that installing the proxy installs
//! none of them; it uses the proxy's library only for what both must agree
//! on: the Foo line grammar ([`foo_proxy::scanner::parse_line`]), the
//! Go-style flags, socket errors and non-blocking I/O outcomes, the log and
//! output backends.
//!
//! [`rng`] (seeded, reproducible), [`proto`] (parsing and writing Foo lines),
//! [`wire`] (line reader and fragmenting writer over non-blocking sockets),
//! [`hist`] (latency histogram) and [`child`] (running the binaries from the
//! demo and the tests).

#![forbid(unsafe_code)]
// Input from the network, a file or the command line must never panic.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

pub mod child;
pub mod hist;
pub mod proto;
pub mod rng;
pub mod wire;

use std::ffi::OsString;
use std::process::ExitCode;

use foo_proxy::cli::CliError;

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
    foo_proxy::output::block_job_control_signals();
    match parse(std::env::args_os().skip(1).collect()) {
        Ok(Some(config)) => Ok(config),
        Ok(None) => match foo_proxy::output::print_now(false, usage) {
            Ok(()) => Err(ExitCode::SUCCESS),
            Err(_) => Err(ExitCode::from(1)),
        },
        Err(e) => {
            let _ = foo_proxy::output::print_now(true, &format!("{name}: {e} (see {name} -h)\n"));
            Err(ExitCode::from(2))
        }
    }
}

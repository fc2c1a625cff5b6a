#![forbid(unsafe_code)]
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::process::ExitCode;

use foo_proxy::cli::{self, Command, USAGE};
use foo_proxy::recovery::Recovery;
use foo_proxy::server::{Server, describe};
use foo_proxy::{error, log};

fn main() -> ExitCode {
    let config = match cli::parse(std::env::args_os().skip(1).collect()) {
        Ok(Command::Run(config)) => *config,
        Ok(Command::Help) => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Ok(Command::Version) => {
            println!("foo-proxy {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("foo-proxy: {e} (see foo-proxy -h)");
            return ExitCode::from(2);
        }
    };
    log::set_level(config.log_level);
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
    let mut server = match Server::bind(config) {
        Ok(server) => server,
        Err(e) => {
            error!("{e}");
            return ExitCode::from(1);
        }
    };
    if let Some(recovery) = recovery {
        server.set_recovery(recovery);
    }
    match server.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("event loop failed: {}", describe(&e));
            ExitCode::from(1)
        }
    }
}

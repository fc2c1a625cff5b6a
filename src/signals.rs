//! The signals the proxy handles, what each one asks for, and their
//! registration, which `main` does as soon as it knows it will serve.

use std::io;
use std::thread::{self, JoinHandle};

use libc::{
    SIGALRM, SIGHUP, SIGINT, SIGIO, SIGPROF, SIGPWR, SIGSTKFLT, SIGTERM, SIGTTIN, SIGTTOU, SIGUSR1,
    SIGUSR2, SIGVTALRM, SIGXCPU, SIGXFSZ,
};
use nix::sys::signal::{SigSet, SigmaskHow, Signal, pthread_sigmask};
pub use signal_hook_mio::v1_0::Signals;

/// What the loop does on a signal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Action {
    /// SIGUSR2, SIGUSR1: print the report.
    Report,
    /// SIGTERM, SIGINT: drain, then stop (again: stop sooner).
    Stop,
    /// SIGXCPU: the CPU-time soft limit, before the hard limit's SIGKILL:
    /// stop as on SIGTERM while the proxy can still save.
    CpuLimit,
    /// Anything else handled: log it (throttled) and go on.
    Ignore,
}

/// What `signal` asks of the loop.
pub(crate) fn action(signal: i32) -> Action {
    match signal {
        SIGUSR1 | SIGUSR2 => Action::Report,
        SIGTERM | SIGINT => Action::Stop,
        SIGXCPU => Action::CpuLimit,
        _ => Action::Ignore,
    }
}

/// Signals handled by the loop: the reports (SIGUSR2, SIGUSR1), the stops
/// (SIGTERM, SIGINT, SIGXCPU), and every asynchronous signal whose default
/// action would kill or stop the process, caught and ignored with a log
/// line: SIGHUP (a closed terminal, a reload by habit), SIGXFSZ (a file
/// over RLIMIT_FSIZE: the write returns EFBIG instead), SIGTTIN/SIGTTOU
/// (terminal job control), SIGALRM/SIGVTALRM/SIGPROF (timers survive
/// `exec`), SIGPWR (a UPS daemon's power event), SIGIO/SIGPOLL and
/// SIGSTKFLT (nothing here uses them), and the real-time signals
/// SIGRTMIN..=SIGRTMAX (a stray `kill -RTMIN+n`). SIGPIPE is ignored by the
/// Rust runtime; writes get EPIPE. Left at their default on purpose:
/// synchronous faults (SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGSYS from
/// seccomp, SIGTRAP from a debugger, SIGABRT from `abort`) and explicit
/// user requests (SIGQUIT, SIGTSTP; SIGKILL and SIGSTOP cannot be caught).
fn handled() -> Vec<i32> {
    let mut signals = vec![
        SIGUSR1, SIGUSR2, SIGTERM, SIGINT, SIGXCPU, SIGHUP, SIGXFSZ, SIGTTIN, SIGTTOU, SIGALRM,
        SIGVTALRM, SIGPROF, SIGPWR, SIGIO, SIGSTKFLT,
    ];
    // The C library keeps the first real-time signals for itself (thread
    // cancellation, set*id across threads): SIGRTMIN is past them.
    signals.extend(libc::SIGRTMIN()..=libc::SIGRTMAX());
    signals
}

/// Installs the handlers of every handled signal. `main` calls it right
/// after reading the flags, before the name lookups, the recovery file and
/// the sockets: a signal that comes during the start waits in the
/// handlers' pipe until the loop reads it, instead of killing the process
/// or, for PID 1 in a container (no default actions), being lost.
///
/// Then unblocks them in this thread (and so in the threads it starts): a
/// parent may have left them blocked (the signal mask is inherited across
/// `exec`), which would make the proxy deaf to SIGTERM, and a signal sent
/// while they were blocked is delivered now. SIGTTOU and SIGTTIN are left
/// as `main` set them (blocked while it prints), and so are the real-time
/// signals, which nix cannot name: blocked, they would only be ignored.
///
/// Returns the handlers and a warning naming the real-time signals that
/// could not be handled (another runtime reserved them), for `main` to log
/// once logging is set up.
///
/// # Errors
///
/// A fixed signal's handler could not be installed, or the mask changed.
pub fn install() -> io::Result<(Signals, Option<String>)> {
    let (real_time, fixed): (Vec<i32>, Vec<i32>) = handled()
        .into_iter()
        .partition(|s| (libc::SIGRTMIN()..=libc::SIGRTMAX()).contains(s));
    let signals = Signals::new(fixed)?;
    // A real-time signal someone else reserved (valgrind keeps SIGRTMAX)
    // cannot be caught, nor sent to us by anyone but its owner: one line,
    // and the proxy runs.
    let refused: Vec<String> = real_time
        .into_iter()
        .filter(|&signal| signals.add_signal(signal).is_err())
        .map(name)
        .collect();
    let warning = (!refused.is_empty()).then(|| {
        format!(
            "cannot handle {} (reserved by the runtime, as valgrind does); left at their defaults",
            refused.join(", ")
        )
    });
    let mut set = SigSet::empty();
    for signal in handled() {
        if let Ok(known) = Signal::try_from(signal)
            && signal != SIGTTOU
            && signal != SIGTTIN
        {
            set.add(known);
        }
    }
    set.thread_unblock().map_err(io::Error::from)?;
    Ok((signals, warning))
}

/// The name of `signal` for a log line: `SIGHUP`, `SIGRTMIN+3`.
pub(crate) fn name(signal: i32) -> String {
    // signal-hook's table lacks the Linux-only ones.
    let linux_only = match signal {
        SIGPWR => Some("SIGPWR"),
        SIGSTKFLT => Some("SIGSTKFLT"),
        SIGIO => Some("SIGIO"),
        _ => None,
    };
    match linux_only.or_else(|| signal_hook::low_level::signal_name(signal)) {
        Some(name) => name.to_string(),
        None if signal == libc::SIGRTMIN() => "SIGRTMIN".to_string(),
        None if signal > libc::SIGRTMIN() && signal <= libc::SIGRTMAX() => {
            format!("SIGRTMIN+{}", signal - libc::SIGRTMIN())
        }
        None => format!("signal {signal}"),
    }
}

/// Spawns a side thread (an output writer, the recovery writer) with every
/// signal blocked, so that only the loop's thread takes signals.
///
/// A handler runs on the stack of whichever thread the kernel picks, and
/// different signals nest (each is blocked only while its own handler
/// runs): a burst of distinct real-time signals stacked one frame per
/// signal on a writer's 64 KiB stack until it overflowed (SIGSEGV). The
/// loop's thread has the main stack, and nesting there is bounded by the
/// number of signals. The new thread inherits the mask; the caller's is
/// restored at once (a signal arriving meanwhile is held, not lost).
///
/// # Errors
///
/// What [`thread::Builder::spawn`] returns: the thread could not be made.
pub(crate) fn spawn_unsignalled<F, T>(builder: thread::Builder, f: F) -> io::Result<JoinHandle<T>>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let mut old = SigSet::empty();
    let blocked =
        pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&SigSet::all()), Some(&mut old)).is_ok();
    let spawned = builder.spawn(f);
    if blocked {
        let _ = pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&old), None);
    }
    spawned
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_time_signals_are_handled_and_named_past_the_c_librarys_own() {
        let handled = handled();
        for signal in [
            SIGPWR,
            SIGIO,
            SIGSTKFLT,
            SIGXCPU,
            libc::SIGRTMIN(),
            libc::SIGRTMAX(),
        ] {
            assert!(handled.contains(&signal), "{signal}");
        }
        // glibc's thread cancellation and set*id signals stay untouched.
        assert!(!handled.contains(&32) && !handled.contains(&33));
        assert_eq!(name(SIGPWR), "SIGPWR");
        assert_eq!(name(SIGSTKFLT), "SIGSTKFLT");
        assert_eq!(name(SIGIO), "SIGIO");
        assert_eq!(name(SIGHUP), "SIGHUP");
        assert_eq!(name(libc::SIGRTMIN()), "SIGRTMIN");
        assert_eq!(name(libc::SIGRTMIN() + 5), "SIGRTMIN+5");
    }

    #[test]
    fn each_signal_asks_for_one_thing() {
        assert_eq!(action(SIGUSR2), Action::Report);
        assert_eq!(action(SIGUSR1), Action::Report);
        assert_eq!(action(SIGTERM), Action::Stop);
        assert_eq!(action(SIGINT), Action::Stop);
        assert_eq!(action(SIGXCPU), Action::CpuLimit);
        assert_eq!(action(SIGHUP), Action::Ignore);
        assert_eq!(action(libc::SIGRTMIN() + 2), Action::Ignore);
    }
}

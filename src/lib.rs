//! foo-proxy: a counting proxy for the Foo line protocol.
//!
//! Data flow, all on one thread driven by one mio poll ([`server`]):
//!
//! 1. **accept**: the listener hands over a client; a non-blocking connect to
//!    the upstream starts at once, and both sockets join a slab as a pair.
//! 2. **relay**: each direction is a `pipe::Pipe`. Bytes are read into a
//!    shared scratch buffer and written straight through; only what the peer
//!    cannot take yet is parked in a pooled buffer (`pool`), bounded per
//!    direction (backpressure). Idle pairs hold no buffer.
//! 3. **scan**: every byte read passes through a per-direction
//!    [`scanner::Scanner`], which classifies newline-terminated frames
//!    incrementally (one pass per read finds all its newlines; at most 15
//!    bytes of a partial frame are kept). The Foo line grammar is written
//!    once, in the scanner's `grammar` room ([`scanner::parse_line`] reads a
//!    whole line with it, for the test tools); the scanner's `reference`
//!    classifier is a test oracle, built only for tests and fuzzing.
//! 4. **count**: frame counts go into [`stats::Stats`] in place; the moving
//!    windows (`rates`) take them once per loop iteration. One list in
//!    [`stats`] names every counter once: its report field, its Prometheus
//!    metric and whether the recovery file keeps it across a restart. The
//!    same scan matches each answer to its request by seq ([`seqs`]) and
//!    records the latency ([`latency`]); each connection's end is counted
//!    under its termination reason, and `--log-connections` logs it.
//! 5. **report**: SIGUSR2 (or SIGUSR1) prints [`stats::Report`] as one JSON
//!    line on stdout; the admin HTTP socket ([`admin`], same loop, after the
//!    data path each iteration) serves the same report as JSON or Prometheus
//!    text, plus liveness, readiness and a live status page that polls
//!    `/stats` from the browser: `admin::conn` (the connections the loop
//!    drives) -> `admin::http` (pure request to response) ->
//!    `admin::prometheus` (the text format) and `admin::page` (the page's
//!    embedded files).
//! 6. **recover**: before any socket is bound, the recovery path is checked
//!    (a regular file or nothing) and locked (one owner). At most once a
//!    second, while counters change, a [`recovery::Snapshot`] of the totals
//!    and the 10 s window goes to a writer thread that replaces the recovery
//!    file atomically; the next start restores it. `recovery::writer` (what
//!    the loop calls, and the thread) -> `recovery::lock` (one owner) ->
//!    `recovery::files` (names, load, atomic replace, quarantine) ->
//!    `recovery::path` (safe opens) and `recovery::codec` (pure: the
//!    snapshot's bytes and the restore arithmetic).
//! 7. **close**: a client the proxy is done with gets a lingering close
//!    (`pair::linger`): what is queued, then a FIN, then its input is discarded
//!    until its EOF (bounded), so a close never turns into a reset that
//!    destroys answers the client has not read.
//!
//! Modules: [`cli`] (Go-compatible flags, read once with Go's `flag`
//! semantics: [`cli::Flags`], in `cli::flags`, which the test tools use
//! too; the values flags take in `cli::values`), [`logging`] (the `log`
//! facade's backend), [`output`] (stdout and stderr through writer threads
//! with bounded queues: printing never blocks the loop), [`net`]
//! (dual-stack listeners, connect progress, errno names, self-forward
//! check), [`scanner`], `rates` and [`stats`] (pure logic, clock passed
//! in), [`recovery`] (the pure codec; the file, its lock and its writer
//! thread), `pool`, `pipe`, `pair::linger` and [`server`] (I/O: the
//! loop in `server`, its hand-over and stop sides in `server::hand_over`
//! and `server::stop`; accept gating in `gate`; every deadline in one
//! `timer` set; a pair's life in `pair`, its PROXY header read in
//! `pair::header`; the table of pairs in `pairs`, how a pair ends in
//! `pairs::ending`, its upstream connection in `pairs::upstream`, its deadline in
//! `pairs::deadlines`), `upstream` and
//! `upstream_pool` (the forward addresses; pooled upstream connections and
//! the queue for them, `--upstream-pool`, `--max-upstream-connections`),
//! [`admin`] (the connections the loop drives, a pure request to response
//! part, the Prometheus renderer), `observe` (the report's latency and
//! termination values as JSON), `reason` (why a connection ended, and the
//! names it is counted under: a leaf that `pair`, `stats`, `observe`,
//! `recovery` and `admin` share), [`latency`] (the answer latency
//! histograms; public for its bucket bounds), [`probe`] (`--probe URL`,
//! the container image's health check), [`proxy_protocol`] (the PROXY
//! protocol v1/v2 header a balancer sends, `--accept-proxy`, and the one
//! sent upstream, `--send-proxy`), `clients` (open connections per real
//! client address, `--max-connections-per-client`), [`handover`]
//! (`--takeover`: the listeners, the counts and the recovery lock passed
//! from a running proxy to its successor over a Unix socket) and
//! [`systemd`] (readiness notification, socket activation). No module
//! imports another in a circle: `python3 contrib/module-cycles.py` checks
//! it in CI.
//!
//! The test tools (foo-server, foo-client, foo-load, foo-demo) are not in
//! this crate: they are the `tools/` workspace member (`foo-tools`), which
//! uses this library, so that `cargo install --path .` installs foo-proxy
//! alone.

#![forbid(unsafe_code)]
// Input from the network, a file or the command line must never panic.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

pub mod admin;
pub mod check;
pub mod cli;
mod clients;
mod dates;
mod gate;
pub mod handover;
pub mod latency;
pub mod logging;
pub mod net;
mod observe;
pub mod output;
mod pair;
mod pairs;
mod pipe;
mod pool;
pub mod probe;
pub mod proxy_protocol;
#[cfg(fuzzing)]
pub mod rates;
#[cfg(not(fuzzing))]
mod rates;
mod reason;
pub mod recovery;
pub mod scanner;
pub mod seqs;
pub mod server;
pub mod signals;
pub mod stats;
pub mod systemd;
mod timer;
mod upstream;
mod upstream_pool;

/// The build, as `--version` and `foo_build_info` name it: the crate
/// version, the git commit it was built from (12 hex digits, or `unknown`
/// when built without a git checkout, e.g. from a crate tarball) and the
/// cargo profile (`release`, `dist`, `dev`, ...). Set by `build.rs`.
pub mod build {
    pub const VERSION: &str = env!("CARGO_PKG_VERSION");
    pub const COMMIT: &str = env!("FOO_BUILD_COMMIT");
    pub const PROFILE: &str = env!("FOO_BUILD_PROFILE");

    /// `foo-proxy 0.1.0 (commit 0123456789ab, release profile)`, or
    /// `(unknown commit, ...)`; newline included.
    pub fn version_line() -> String {
        if COMMIT == "unknown" {
            format!("foo-proxy {VERSION} (unknown commit, {PROFILE} profile)\n")
        } else {
            format!("foo-proxy {VERSION} (commit {COMMIT}, {PROFILE} profile)\n")
        }
    }
}

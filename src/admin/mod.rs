//! The admin HTTP socket: statistics as JSON or Prometheus text, a live status page, liveness and readiness, on the proxy's own loop.
//!
//! Four rooms. `http`: `respond` is pure, request bytes in, response
//! bytes out, with the report, readiness and clock passed in, so unit tests
//! and the fuzz target (`handle_request`) drive it directly.
//! `prometheus`: the report as Prometheus text. `page`: the live status
//! page's static files (`/`, `/page.css`, `/page.js`), which poll `/stats`
//! from the browser. `conn`: [`Admin`] owns
//! the listener and at most `MAX_CONNS` connections; the loop hands it
//! events and deadlines. Each connection carries one request (`Connection:
//! close`), whose head must arrive within `DEADLINE` of accept and fit in
//! `MAX_HEAD` bytes; every drive of a connection does bounded work.
//!
//! Imports go one way: `conn` uses `http`, `http` uses `prometheus` and
//! `page`.

mod conn;
mod http;
mod page;
mod prometheus;

pub use conn::{Admin, key_of};
/// The fuzz target's entry point and its input bound.
#[cfg(fuzzing)]
pub use http::{MAX_HEAD, handle_request};
/// The status page's Content-Security-Policy, which tests/admin.rs checks.
pub use page::CSP;

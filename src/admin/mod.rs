//! The admin HTTP socket: statistics as JSON or Prometheus text, liveness and readiness, on the proxy's own loop.
//!
//! Three rooms. `http`: [`respond`] is pure, request bytes in, response
//! bytes out, with the report, readiness and clock passed in, so unit tests
//! and the fuzz target ([`handle_request`]) drive it directly.
//! [`prometheus`]: the report as Prometheus text. `conn`: [`Admin`] owns
//! the listener and at most [`MAX_CONNS`] connections; the loop hands it
//! events and deadlines. Each connection carries one request (`Connection:
//! close`), whose head must arrive within [`DEADLINE`] of accept and fit in
//! [`MAX_HEAD`] bytes; every drive of a connection does bounded work.
//!
//! Imports go one way: `conn` uses `http`, `http` uses `prometheus`.

mod conn;
mod http;
mod prometheus;

pub use conn::{Admin, DEADLINE, MAX_CONNS, key_of, token};
pub use http::{Answer, Facts, MAX_HEAD, Reply, access_line, handle_request, respond};
pub use prometheus::prometheus;

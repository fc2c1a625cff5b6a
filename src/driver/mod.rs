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

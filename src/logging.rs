//! The `log` facade's backend: `2026-11-27T22:10:11.123Z WARN message` lines
//! on stderr, through [`output`](crate::output) so that logging never blocks
//! the event loop.
//!
//! Nothing is logged per message or per connection at the default level
//! (`info`); per-connection events are `debug`. Lines a peer can trigger
//! over and over go through a [`Throttle`].

use std::fmt::Write as _;
use std::time::{Duration, Instant, SystemTime};

use crate::{dates, output};

/// The levels the `--log-level` flag takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Error = 1,
    Warn = 2,
    Info = 3,
    Debug = 4,
}

impl Level {
    pub fn parse(s: &str) -> Option<Level> {
        match s.to_ascii_lowercase().as_str() {
            "error" => Some(Level::Error),
            "warn" | "warning" => Some(Level::Warn),
            "info" => Some(Level::Info),
            "debug" => Some(Level::Debug),
            _ => None,
        }
    }

    fn filter(self) -> log::LevelFilter {
        match self {
            Level::Error => log::LevelFilter::Error,
            Level::Warn => log::LevelFilter::Warn,
            Level::Info => log::LevelFilter::Info,
            Level::Debug => log::LevelFilter::Debug,
        }
    }
}

struct Logger;

static LOGGER: Logger = Logger;

impl log::Log for Logger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let mut line = String::with_capacity(96);
        let _ = writeln!(
            line,
            "{} {} {}",
            dates::rfc3339_ms(SystemTime::now()),
            record.level(),
            record.args()
        );
        output::log_line(line);
    }

    fn flush(&self) {}
}

/// Installs the backend (once; later calls only change the level) and sets
/// the most verbose level logged.
pub fn init(level: Level) {
    // Fails only when a logger is already installed, which is ours.
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(level.filter());
}

/// At most `burst` lines per interval for a line a peer can trigger over
/// and over: the rest are counted, and the count goes on the next line.
#[derive(Debug)]
pub struct Throttle {
    interval: Duration,
    burst: u32,
    window_start: Option<Instant>,
    used: u32,
    suppressed: u64,
}

impl Throttle {
    /// One line per `interval`.
    pub fn new(interval: Duration) -> Self {
        Self::with_burst(interval, 1)
    }

    /// Up to `burst` lines per `interval`.
    pub fn with_burst(interval: Duration, burst: u32) -> Self {
        Throttle {
            interval,
            burst: burst.max(1),
            window_start: None,
            used: 0,
            suppressed: 0,
        }
    }

    /// `Some(lines suppressed since the last one logged)` when this one may
    /// be logged; `None` when it is suppressed (and counted).
    pub fn ready(&mut self, now: Instant) -> Option<u64> {
        let expired = self
            .window_start
            .is_none_or(|t| now.saturating_duration_since(t) >= self.interval);
        if expired {
            self.window_start = Some(now);
            self.used = 0;
        }
        if self.used < self.burst {
            self.used += 1;
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed = self.suppressed.saturating_add(1);
            None
        }
    }
}

/// ` (N more since the last one)`, or nothing when none were suppressed.
pub fn suppressed_note(suppressed: u64) -> String {
    if suppressed > 0 {
        format!(" ({suppressed} more since the last one)")
    } else {
        String::new()
    }
}

/// The connection log's line format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Logfmt,
    Json,
}

impl LogFormat {
    pub fn parse(s: &str) -> Option<LogFormat> {
        match s {
            "logfmt" => Some(LogFormat::Logfmt),
            "json" => Some(LogFormat::Json),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_throttle_logs_once_per_interval_and_counts_the_rest() {
        let t0 = Instant::now();
        let second = Duration::from_secs(1);
        let mut t = Throttle::new(second);
        assert_eq!(t.ready(t0), Some(0));
        assert_eq!(t.ready(t0 + Duration::from_millis(10)), None);
        assert_eq!(t.ready(t0 + Duration::from_millis(20)), None);
        assert_eq!(t.ready(t0 + second), Some(2));
        let mut burst = Throttle::with_burst(second, 2);
        assert_eq!(burst.ready(t0), Some(0));
        assert_eq!(burst.ready(t0), Some(0));
        assert_eq!(burst.ready(t0), None);
        assert_eq!(burst.ready(t0 + second), Some(1));
        assert_eq!(suppressed_note(2), " (2 more since the last one)");
        assert_eq!(suppressed_note(0), "");
    }
}

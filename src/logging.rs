//! The `log` facade's backend: `2026-11-27T22:10:11.123Z WARN message` lines
//! (or one JSON object a line with `--log-format json`) on stderr, through
//! [`output`] so that logging never blocks the event loop.
//!
//! Nothing is logged per message or per connection at the default level
//! (`info`); per-connection events are `debug`. Lines a peer can trigger
//! over and over go through a [`Throttle`].

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
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
    /// Exactly the documented lowercase names: `DEBUG` or `warning` are
    /// refused, not guessed.
    pub fn parse(s: &str) -> Option<Level> {
        match s {
            "error" => Some(Level::Error),
            "warn" => Some(Level::Warn),
            "info" => Some(Level::Info),
            "debug" => Some(Level::Debug),
            _ => None,
        }
    }

    /// The flag's spelling: `error`, `warn`, `info`, `debug`.
    pub fn name(self) -> &'static str {
        match self {
            Level::Error => "error",
            Level::Warn => "warn",
            Level::Info => "info",
            Level::Debug => "debug",
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

/// `--log-format`: how every log line is written. `text` is
/// `TIME LEVEL message` for the general log (and logfmt for a log of
/// key=value records such as the connection log; `logfmt` is accepted as
/// another name for it), `json` one JSON object a line for every log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

impl LogFormat {
    pub fn parse(s: &str) -> Option<LogFormat> {
        match s {
            "text" | "logfmt" => Some(LogFormat::Text),
            "json" => Some(LogFormat::Json),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

struct Logger;

static LOGGER: Logger = Logger;

/// Whether lines are JSON (`--log-format json`); set once by [`init`].
static JSON: AtomicBool = AtomicBool::new(false);

/// `s` with every control character (C0, DEL, C1) written as an escape:
/// `\n`, `\r`, `\t`, `\xNN` below 0x80, `\u{NNNN}` above, so that text an
/// operator or a peer supplied (a path, a request target) cannot split a
/// line or forge a line after it. Borrowed when there is nothing to escape,
/// which is the common case. Text that was not UTF-8 reaches here already
/// lossily converted (U+FFFD), as `Path::display` does.
pub fn one_line(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.chars().any(char::is_control) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() && u32::from(c) < 0x80 => {
                let _ = write!(out, "\\x{:02x}", u32::from(c));
            }
            c if c.is_control() => {
                let _ = write!(out, "\\u{{{:04x}}}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

/// One log line, newline included: `TIME LEVEL message` (the message's
/// control characters escaped by [`one_line`], so it stays one line), or
/// `{"ts":"TIME","level":"LEVEL","msg":"message"}` (the message escaped
/// as a JSON string, so a peer's bytes in it cannot break the line; `ts`
/// and `msg` as in the connection log's lines).
pub fn format_line(format: LogFormat, time: SystemTime, level: log::Level, msg: &str) -> String {
    let time = dates::rfc3339_ms(time);
    let mut line = String::with_capacity(msg.len() + 64);
    match format {
        LogFormat::Text => {
            let _ = writeln!(line, "{time} {level} {}", one_line(msg));
        }
        LogFormat::Json => {
            let msg = serde_json::to_string(msg).unwrap_or_else(|_| "\"\"".to_string());
            let _ = writeln!(
                line,
                "{{\"ts\":\"{time}\",\"level\":\"{level}\",\"msg\":{msg}}}"
            );
        }
    }
    line
}

impl log::Log for Logger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let format = if JSON.load(Ordering::Relaxed) {
            LogFormat::Json
        } else {
            LogFormat::Text
        };
        let msg = match record.args().as_str() {
            Some(text) => std::borrow::Cow::Borrowed(text),
            None => std::borrow::Cow::Owned(record.args().to_string()),
        };
        output::log_line(format_line(format, SystemTime::now(), record.level(), &msg));
    }

    fn flush(&self) {}
}

/// Installs the backend (once; later calls only change the level and
/// format) and sets the most verbose level logged and the line format.
pub fn init(level: Level, format: LogFormat) {
    // Fails only when a logger is already installed, which is ours.
    let _ = log::set_logger(&LOGGER);
    JSON.store(format == LogFormat::Json, Ordering::Relaxed);
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_json_line_is_one_object_with_the_message_escaped() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_500);
        let text = format_line(LogFormat::Text, t, log::Level::Warn, "a \"b\"\nc");
        assert_eq!(text, "1970-01-01T00:00:01.500Z WARN a \"b\"\\nc\n");
        let json = format_line(LogFormat::Json, t, log::Level::Info, "a \"b\"\nc\u{1}");
        assert_eq!(json.matches('\n').count(), 1, "{json}");
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["ts"], "1970-01-01T00:00:01.500Z");
        assert_eq!(v["level"], "INFO");
        assert_eq!(v["msg"], "a \"b\"\nc\u{1}");
        assert_eq!(LogFormat::parse("logfmt"), Some(LogFormat::Text));
        assert_eq!(LogFormat::parse("json"), Some(LogFormat::Json));
        assert_eq!(LogFormat::parse("xml"), None);
    }

    #[test]
    fn a_text_line_is_one_line_whatever_control_characters_the_message_holds() {
        let t = SystemTime::UNIX_EPOCH;
        let forged = "/tmp/x\n2026-01-01T00:00:00.000Z ERROR fake\r\t\u{1b}[31m\u{7f}\u{9b}\u{0}é";
        let text = format_line(LogFormat::Text, t, log::Level::Warn, forged);
        assert_eq!(
            text,
            "1970-01-01T00:00:00.000Z WARN /tmp/x\\n2026-01-01T00:00:00.000Z ERROR fake\\r\\t\\x1b[31m\\x7f\\u{009b}\\x00é\n"
        );
        assert_eq!(text.matches('\n').count(), 1);
        assert!(!text.trim_end_matches('\n').chars().any(char::is_control));
        assert!(matches!(
            one_line("plain /tmp/x é"),
            std::borrow::Cow::Borrowed(_)
        ));
    }

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

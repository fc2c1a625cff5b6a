//! Command line, compatible with Go's `flag` package.
//!
//! `-listen :8002`, `-listen=:8002`, `--listen :8002` and `--listen=:8002`
//! are the same flag, read once in order as Go's `flag` package reads them
//! ([`Flags`], in `flags`); the value grammars (addresses, counts,
//! durations, sizes, the probe URL) are in `values`.

use std::ffi::OsString;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::logging::{Level, LogFormat};

mod flags;
mod values;

pub use flags::{Flags, invalid};
use values::count_or_off;
pub use values::{
    Target, count_in, parse_count, parse_duration, parse_size, resolve, split_host_port,
};

/// `--help`: grouped, at most 80 columns (pinned by a test), with units.
pub const USAGE: &str = "\
foo-proxy: a counting proxy for the Foo line protocol

Usage: foo-proxy [FLAGS]
Flags take one dash or two, and their value after a space or '='
(-listen :8002, --listen=:8002); the last value given wins.

Addresses:
  -listen ADDR            where clients connect                    [:8002]
  -forward ADDR           the Foo server to relay to               [:8001]
  -http ADDR              admin HTTP: /stats /metrics /health /ready;
                          'off' or '' disables            [127.0.0.1:8088]
  -recovery-path PATH     totals and rates kept across restarts;
                          '' disables                [.data/recovery.json]

Limits and timeouts:
  --buffer-size SIZE      unsent bytes held per direction, 1KiB to 64MiB
                                                                   [64KiB]
  --max-connections N     client connections at once               [10000]
  --max-connections-per-client N|off
                          open connections per client address        [off]
  --connect-timeout DUR   give up on an upstream connect after        [5s]
  --fin-timeout DUR       wait for answers after a client half-close;
                          also bounds a lingering close               [5s]
  --idle-timeout DUR      close a pair that moved no byte for        [10m]
  --drain-timeout DUR     on SIGTERM, let connections finish for      [5s]

Upstream connections (off by default: one fresh connection per client):
  --upstream-pool N|off   keep up to N upstream connections without
                          a client (spares included) for reuse
                          after a clean session end                  [off]
  --upstream-spare K      keep K of those N connected ahead of
                          demand, K at most N                          [0]
  --max-upstream-connections M
                          at most M upstream connections; clients
                          beyond them wait in order                  [off]
  --queue-timeout DUR     close a client that waited this long        [5s]
  --upstream-idle-timeout DUR
                          close an idle pooled connection after      [60s]

PROXY protocol, scale-out and restarts:
  --accept-proxy          clients start with a PROXY v1/v2 header (from a
                          balancer); its address is the client's
  --proxy-header-timeout DUR
                          the whole header must come within, from
                          accept (or the client is closed)            [3s]
  --send-proxy v1|v2|off  start each upstream connection with one    [off]
  --reuse-port            share -listen with other foo-proxy processes
                          (SO_REUSEPORT); each needs its own -http and
                          -recovery-path
  --takeover              take the listeners, counts and recovery file
                          over from the foo-proxy running with the same
                          -recovery-path (which then drains and exits);
                          without one, start normally

Logs, on stderr:
  --log-level LEVEL       error, warn, info or debug                [info]
  --log-format FORMAT     text (or logfmt, its other name) or json,
                          for every log line; text is logfmt for
                          --log-connections                         [text]
  --log-connections       one line per closed connection
  --access-log on|off     one line per admin HTTP request             [on]

Other modes:
  --check                 check the flags, addresses and recovery path,
                          print what would run; exit 0 or 2, no serving
  --probe URL             GET http://HOST:PORT/PATH once; exit 0 on a 2xx
                          answer, 1 otherwise (a container health check)
  -h, --help              print this help
  -V, --version           print the version, git commit and build profile

ADDR is HOST:PORT; ':PORT' is every interface (IPv4 and IPv6) for -listen
and -http, and this host for -forward. The admin socket serves statistics
to anyone who can reach it: open it to the network deliberately.
N is decimal digits only: no sign, no space, no leading zero.
SIZE is N bytes, or N with KiB (or k) or MiB (or M): 65536, 64KiB, 1MiB.
DUR is seconds (5), or numbers with ms, s, m or h (250ms, 1.5s, 1m30s),
a whole number of milliseconds.
SIGUSR2 (or SIGUSR1) prints the statistics as one JSON line on stdout.
SIGTERM or SIGINT drains and exits; SIGHUP is ignored.
";

/// Everything the proxy needs from the command line.
#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    /// Every address the forward host resolved to, tried in order.
    pub forward: Vec<SocketAddr>,
    /// The forward address as the user wrote it, for messages.
    pub forward_spec: String,
    /// The admin HTTP address; `None` when disabled.
    pub http: Option<SocketAddr>,
    pub recovery_path: Option<PathBuf>,
    pub buffer_size: usize,
    pub connect_timeout: Duration,
    pub fin_timeout: Duration,
    pub idle_timeout: Duration,
    pub drain_timeout: Duration,
    /// `--proxy-header-timeout`: how long an `--accept-proxy` client has,
    /// from accept, to send its whole PROXY header.
    pub proxy_header_timeout: Duration,
    pub max_connections: usize,
    pub log_level: Level,
    /// The connection log's format; `None` when it is off.
    pub log_connections: Option<LogFormat>,
    /// `--log-format`: every log line's format.
    pub log_format: LogFormat,
    /// `--access-log`: one line per admin request (throttled); off keeps
    /// every other info line.
    pub access_log: bool,
    /// `--accept-proxy`.
    pub accept_proxy: bool,
    /// `--send-proxy v1|v2`.
    pub send_proxy: Option<crate::proxy_protocol::Version>,
    /// `--max-connections-per-client`; `None` when off.
    pub max_connections_per_client: Option<u32>,
    /// `--reuse-port`: `SO_REUSEPORT` on the client listener.
    pub reuse_port: bool,
    /// `--upstream-pool`: upstream connections kept without a client
    /// (given back or spare), at most; 0 is off (one fresh upstream
    /// connection per client).
    pub upstream_pool: usize,
    /// `--upstream-spare`: pooled connections opened ahead of demand
    /// (at most `upstream_pool`).
    pub upstream_spare: usize,
    /// `--max-upstream-connections`; `None` when off.
    pub max_upstream_connections: Option<usize>,
    /// `--queue-timeout`: the longest a client waits for an upstream
    /// connection at `--max-upstream-connections`.
    pub queue_timeout: Duration,
    /// `--upstream-idle-timeout`: how long a pooled connection stays idle.
    pub upstream_idle_timeout: Duration,
    /// `--takeover`: ask the running proxy for its listeners first.
    pub takeover: bool,
}

/// What the command line asked for.
#[derive(Debug)]
pub enum Command {
    Run(Box<Config>),
    /// `--check`: check everything a start checks, report, do not serve.
    Check(Box<Config>),
    Help,
    Version,
    /// `--probe URL`: one health-check request instead of serving.
    Probe(Target),
}

/// A command-line error: one line naming the flag or value at fault.
#[derive(Debug, PartialEq, Eq)]
pub struct CliError(pub String);

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Flags that take a value, in their long form.
const VALUE_FLAGS: &[&str] = &[
    "listen",
    "forward",
    "http",
    "recovery-path",
    "buffer-size",
    "connect-timeout",
    "fin-timeout",
    "idle-timeout",
    "drain-timeout",
    "proxy-header-timeout",
    "max-connections",
    "log-level",
    "log-format",
    "access-log",
    "probe",
    "send-proxy",
    "max-connections-per-client",
    "upstream-pool",
    "upstream-spare",
    "max-upstream-connections",
    "queue-timeout",
    "upstream-idle-timeout",
];

/// Flags that take no value, in their long form (`-h` is `--help`).
const SWITCH_FLAGS: &[&str] = &[
    "help",
    "version",
    "accept-proxy",
    "reuse-port",
    "takeover",
    "log-connections",
    "check",
];

/// One flag as given: a value, or a switch's setting.
/// Parses the arguments after the program name.
pub fn parse(args: Vec<OsString>) -> Result<Command, CliError> {
    parse_with(args, resolve)
}

/// [`parse`] with the address resolver passed in, so tests and fuzz targets
/// can parse every flag without a DNS lookup.
pub fn parse_with(
    args: Vec<OsString>,
    resolve: impl Fn(&str, &str) -> Result<Vec<SocketAddr>, String>,
) -> Result<Command, CliError> {
    // `-V`: Go's flag package gives it no meaning and the reference proxy
    // defines no such flag (it would exit 2 on it), so no compatibility is
    // lost.
    let flags = Flags::parse_aliased(args, VALUE_FLAGS, SWITCH_FLAGS, &[("V", "version")])?;
    if flags.switch("help") {
        return Ok(Command::Help);
    }
    if flags.switch("version") {
        return Ok(Command::Version);
    }
    if let Some(url) = flags.value("probe") {
        flags.only(&["probe"])?;
        for earlier in flags.values("probe") {
            Target::parse(earlier)?;
        }
        return Ok(Command::Probe(Target::parse(url)?));
    }
    let accept_proxy = flags.switch("accept-proxy");
    let reuse_port = flags.switch("reuse-port");
    let takeover = flags.switch("takeover");
    let log_connections = flags.switch("log-connections");

    // Every value given is resolved, not only the last (as Go's flag reads
    // each); the defaults are read the same way when a flag is not given.
    let first = |spec: &str, default_host: &str| {
        resolve(spec, default_host)?
            .into_iter()
            .next()
            .ok_or_else(|| "resolves to no address".to_string())
    };
    // `:PORT` listens on every interface, IPv6 too (dual-stack `[::]`).
    let listen = match flags.parse_or("listen", None, |v| first(v, "::").map(Some))? {
        Some(addr) => addr,
        None => first(":8002", "::").map_err(|why| invalid("listen", ":8002", why))?,
    };
    let http_spec = "127.0.0.1:8088";
    let read_http = |v: &str| match v {
        "" | "off" => Ok(None),
        spec => first(spec, "::").map(Some),
    };
    let http = match flags.values("http").next() {
        Some(_) => flags.parse_or("http", None, read_http)?,
        None => read_http(http_spec).map_err(|why| invalid("http", http_spec, why))?,
    };
    let forward_spec = flags.value("forward").unwrap_or(":8001").to_owned();
    // No server listens on port 0: every client would fail to connect.
    let read_forward = |v: &str| match split_host_port(v, "localhost")? {
        (_, 0) => Err("port 0 cannot be connected to".to_string()),
        _ => resolve(v, "localhost"),
    };
    let forward = flags.parse_or("forward", None, |v| read_forward(v).map(Some))?;
    let forward = match forward {
        Some(f) => f,
        None => {
            read_forward(&forward_spec).map_err(|why| invalid("forward", &forward_spec, why))?
        }
    };
    let secs = Duration::from_secs;
    let buffer_size = flags.parse_or("buffer-size", 64 * 1024, parse_size)?;
    let connect_timeout = flags.parse_or("connect-timeout", secs(5), parse_duration)?;
    let fin_timeout = flags.parse_or("fin-timeout", secs(5), parse_duration)?;
    let idle_timeout = flags.parse_or("idle-timeout", secs(600), parse_duration)?;
    let drain_timeout = flags.parse_or("drain-timeout", secs(5), parse_duration)?;
    let proxy_header_timeout = flags.parse_or("proxy-header-timeout", secs(3), parse_duration)?;
    let max_connections = flags.parse_or("max-connections", 10_000, |v| {
        count_in(1, 1_000_000)(v).map(|n| n as usize)
    })?;
    let log_level = flags.parse_or("log-level", Level::Info, |v| {
        Level::parse(v).ok_or_else(|| "expected error, warn, info or debug".to_string())
    })?;
    let log_format = flags.parse_or("log-format", LogFormat::Text, |v| {
        LogFormat::parse(v).ok_or_else(|| "expected text, logfmt or json".to_string())
    })?;
    // on/off, and Go's strconv.ParseBool spellings as the switches take.
    let access_log = flags.parse_or("access-log", true, |v| match v {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err("expected on or off".to_string()),
    })?;
    // `off`, the default's spelling, lets a later argument undo an earlier one.
    let send_proxy = flags.parse_or("send-proxy", None, |v| match v {
        "off" => Ok(None),
        _ => crate::proxy_protocol::Version::parse(v)
            .map(Some)
            .ok_or_else(|| "expected v1, v2 or off".to_string()),
    })?;
    let max_connections_per_client = flags
        .parse_or(
            "max-connections-per-client",
            None,
            count_or_off(1, 1_000_000),
        )?
        .map(|n| n as u32);
    // The one count grammar (digits only, no sign), as usize.
    let count = |max: u64| move |v: &str| count_in(0, max)(v).map(|n| n as usize);
    // `off`, the default's spelling, is 0.
    let upstream_pool = flags
        .parse_or("upstream-pool", None, count_or_off(0, 100_000))?
        .map_or(0, |n| n as usize);
    let upstream_spare = flags.parse_or("upstream-spare", 0, count(100_000))?;
    let max_upstream_connections = flags
        .parse_or("max-upstream-connections", None, count_or_off(1, 1_000_000))?
        .map(|n| n as usize);
    let queue_timeout = flags.parse_or("queue-timeout", secs(5), parse_duration)?;
    let upstream_idle_timeout =
        flags.parse_or("upstream-idle-timeout", secs(60), parse_duration)?;
    check_pooling(
        upstream_pool,
        upstream_spare,
        max_upstream_connections,
        send_proxy.is_some(),
    )?;
    let recovery_path = match flags.value("recovery-path") {
        Some("") => None,
        Some(p) => Some(PathBuf::from(p)),
        None => Some(PathBuf::from(".data/recovery.json")),
    };
    if takeover && recovery_path.is_none() {
        return Err(CliError(
            "-takeover needs a recovery file (-recovery-path): the running proxy is found by its control socket beside it".into(),
        ));
    }
    let config = Box::new(Config {
        listen,
        forward,
        forward_spec,
        http,
        recovery_path,
        buffer_size,
        connect_timeout,
        fin_timeout,
        idle_timeout,
        drain_timeout,
        proxy_header_timeout,
        max_connections,
        log_level,
        log_connections: log_connections.then_some(log_format),
        log_format,
        access_log,
        accept_proxy,
        send_proxy,
        max_connections_per_client,
        reuse_port,
        takeover,
        upstream_pool,
        upstream_spare,
        max_upstream_connections,
        queue_timeout,
        upstream_idle_timeout,
    });
    Ok(if flags.switch("check") {
        Command::Check(config)
    } else {
        Command::Run(config)
    })
}

/// The pooling flags together: spares are pooled connections (so at most
/// the pool), within the connection limit, and no pooling with
/// `--send-proxy`: a PROXY header names one client, once, at the start of
/// a connection, so a reused connection would carry a former client's
/// address for the next one.
fn check_pooling(
    pool: usize,
    spare: usize,
    max: Option<usize>,
    send_proxy: bool,
) -> Result<(), CliError> {
    if spare > pool {
        return Err(invalid(
            "upstream-spare",
            &spare.to_string(),
            format!("spares are pooled connections, so at most -upstream-pool ({pool})"),
        ));
    }
    if let Some(max) = max
        && spare > max
    {
        return Err(invalid(
            "upstream-spare",
            &spare.to_string(),
            format!("more than -max-upstream-connections ({max})"),
        ));
    }
    if pool > 0 && send_proxy {
        return Err(CliError(
            "-upstream-pool cannot be combined with -send-proxy: a PROXY header is sent once per upstream connection and names one client, so a reused connection would name the wrong one".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests;

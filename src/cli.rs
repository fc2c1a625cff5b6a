//! Command line, compatible with Go's `flag` package.
//!
//! `-listen :8002`, `-listen=:8002`, `--listen :8002` and `--listen=:8002`
//! are the same flag, read once in order as Go's `flag` package reads them
//! ([`Flags`]).

use std::ffi::OsString;
use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use crate::logging::{Level, LogFormat};

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
                          after a clean session end                [off]
  --upstream-spare K      keep K of those N connected ahead of
                          demand, K at most N                        [0]
  --max-upstream-connections M
                          at most M upstream connections; clients
                          beyond them wait in order                [off]
  --queue-timeout DUR     close a client that waited this long      [5s]
  --upstream-idle-timeout DUR
                          close an idle pooled connection after    [60s]

PROXY protocol, scale-out and restarts:
  --accept-proxy          clients start with a PROXY v1/v2 header (from a
                          balancer); its address is the client's
  --proxy-header-timeout DUR
                          the whole header must come within, from
                          accept (or the client is closed)            [3s]
  --send-proxy v1|v2|off  start each upstream connection with one  [off]
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

/// Where a probe connects and what it asks for, from `http://HOST:PORT/PATH`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// The URL as given, for messages.
    pub url: String,
    /// `HOST:PORT` (`:PORT` means this host), resolved when the probe runs.
    pub authority: String,
    /// The origin-form request target, `/` when the URL has no path.
    pub path: String,
}

impl Target {
    /// Parses `http://HOST:PORT[/PATH]`: plain HTTP only (the admin socket
    /// has no TLS), a port always (no default port to guess), and no user
    /// info, query or fragment. Errors name the URL and what is wrong.
    pub fn parse(url: &str) -> Result<Target, CliError> {
        let bad = |why: &str| CliError(format!("invalid value {url:?} for -probe: {why}"));
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| bad("expected http://HOST:PORT/PATH"))?;
        let (authority, path) = match rest.find('/') {
            Some(at) => (rest.get(..at).unwrap_or(""), rest.get(at..).unwrap_or("/")),
            None => (rest, "/"),
        };
        if authority.contains('@') {
            return Err(bad("user info is not supported"));
        }
        if path.contains(['?', '#']) || !path.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(bad(
                "the path must be a plain path (no query, fragment or spaces)",
            ));
        }
        split_host_port(authority, "localhost").map_err(|why| bad(&why))?;
        Ok(Target {
            url: url.to_owned(),
            authority: authority.to_owned(),
            path: path.to_owned(),
        })
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
#[derive(Clone, Debug, PartialEq, Eq)]
enum Given {
    Value(String),
    Switch(bool),
}

/// Go-style flags, read once and in order, with the semantics of Go's
/// `flag` package: `-f v`, `-f=v`, `--f v` and `--f=v` are one flag; a flag
/// that takes a value takes the next argument whatever it looks like
/// (`-recovery-path --version` sets the path to `--version`); a switch takes
/// no value, or a Go boolean (`=true`, `=0`, `=F`, ...); every value is
/// checked as it is read and the last setting of a flag wins. `-h`
/// and `-help` are always the `help` switch. Shared by every binary of the
/// workspace, so they all read their flags alike.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Flags {
    /// (long name, what was given, the flag as typed: `-listen`), in
    /// command-line order.
    given: Vec<(&'static str, Given, String)>,
}

impl Flags {
    /// Reads `args` (after the program name). `value_flags` take a value,
    /// `switch_flags` none. Errors: a non-UTF-8 or non-flag argument (Go
    /// stops at the first one; nothing here takes positional arguments), an
    /// undefined flag, a value flag at the end without its value, or a bad
    /// boolean; each names the argument or flag.
    pub fn parse(
        args: Vec<OsString>,
        value_flags: &[&'static str],
        switch_flags: &[&'static str],
    ) -> Result<Flags, CliError> {
        Flags::parse_aliased(args, value_flags, switch_flags, &[])
    }

    /// [`parse`](Flags::parse), with short names: `(short, long)` pairs
    /// such as `("V", "version")`, read wherever a flag name is.
    pub fn parse_aliased(
        args: Vec<OsString>,
        value_flags: &[&'static str],
        switch_flags: &[&'static str],
        aliases: &[(&str, &'static str)],
    ) -> Result<Flags, CliError> {
        let mut given = Vec::with_capacity(args.len());
        let mut iter = args.into_iter();
        while let Some(arg) = iter.next() {
            let Some(text) = arg.to_str() else {
                return Err(CliError(format!(
                    "argument is not valid UTF-8: {}",
                    arg.to_string_lossy()
                )));
            };
            if text == "--" {
                // Go's flag package: `--` ends the flags and is consumed;
                // what follows is a positional argument, and no program
                // here takes one.
                return match iter.next() {
                    None => Ok(Flags { given }),
                    Some(rest) => Err(CliError(format!(
                        "unexpected argument: {}",
                        rest.to_string_lossy()
                    ))),
                };
            }
            if !text.starts_with('-') || text == "-" {
                return Err(CliError(format!("unexpected argument: {text}")));
            }
            let bare = text.trim_start_matches('-');
            if text.len() - bare.len() > 2 {
                return Err(CliError(format!("bad flag syntax: {text}")));
            }
            let (name, inline) = match bare.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (bare, None),
            };
            let typed = text.split_once('=').map_or(text, |(t, _)| t).to_owned();
            let name = if name == "h" {
                "help"
            } else {
                aliases
                    .iter()
                    .find(|(short, _)| *short == name)
                    .map_or(name, |(_, long)| long)
            };
            if let Some(&flag) = value_flags.iter().find(|f| **f == name) {
                let value = match inline {
                    Some(v) => v.to_owned(),
                    None => {
                        let next = iter
                            .next()
                            .ok_or_else(|| CliError(format!("flag needs a value: -{name}")))?;
                        next.into_string().map_err(|v| {
                            CliError(format!(
                                "invalid value {:?} for -{name}: not valid UTF-8",
                                v.to_string_lossy()
                            ))
                        })?
                    }
                };
                given.push((flag, Given::Value(value), typed));
            } else if let Some(&flag) = switch_flags.iter().chain(&["help"]).find(|f| **f == name) {
                // Go's strconv.ParseBool spellings.
                let on = match inline {
                    None | Some("1" | "t" | "T" | "TRUE" | "true" | "True") => true,
                    Some("0" | "f" | "F" | "FALSE" | "false" | "False") => false,
                    Some(v) => {
                        return Err(CliError(format!(
                            "invalid boolean value {v:?} for -{name}: expected true or false"
                        )));
                    }
                };
                given.push((flag, Given::Switch(on), typed));
            } else {
                return Err(CliError(format!("flag provided but not defined: -{name}")));
            }
        }
        Ok(Flags { given })
    }

    /// The last value given for the value flag `name` (`"listen"`).
    pub fn value(&self, name: &str) -> Option<&str> {
        self.given.iter().rev().find_map(|(n, g, _)| match g {
            Given::Value(v) if *n == name => Some(v.as_str()),
            _ => None,
        })
    }

    /// Every value given for the value flag `name`, in command-line order.
    pub fn values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.given.iter().filter_map(move |(n, g, _)| match g {
            Given::Value(v) if *n == name => Some(v.as_str()),
            _ => None,
        })
    }

    /// Whether the switch `name` (`"help"`) is on: its last setting.
    pub fn switch(&self, name: &str) -> bool {
        self.given
            .iter()
            .rev()
            .find_map(|(n, g, _)| match g {
                Given::Switch(on) if *n == name => Some(*on),
                _ => None,
            })
            .unwrap_or(false)
    }

    /// The last value of `name` read with `parse`, or `default` when the
    /// flag was not given. Every value given is read, as Go's `flag` sets
    /// each in turn: the error names the flag and the first bad value, even
    /// when a later one overrides it.
    pub fn parse_or<T>(
        &self,
        name: &str,
        default: T,
        mut parse: impl FnMut(&str) -> Result<T, String>,
    ) -> Result<T, CliError> {
        let mut last = default;
        for v in self.values(name) {
            last = parse(v).map_err(|why| invalid(name, v, why))?;
        }
        Ok(last)
    }

    /// Fails naming the first flag given that is not one of `allowed` (a
    /// switch turned off counts as not given), as the user typed it: for a
    /// mode such as `--probe` (`allowed[0]`) that takes no other flag.
    pub fn only(&self, allowed: &[&str]) -> Result<(), CliError> {
        let Some((_, _, typed)) = self
            .given
            .iter()
            .find(|(n, g, _)| !allowed.contains(n) && *g != Given::Switch(false))
        else {
            return Ok(());
        };
        let mode = self
            .given
            .iter()
            .find(|(n, _, _)| allowed.first() == Some(n))
            .map_or_else(
                || format!("-{}", allowed.first().unwrap_or(&"")),
                |g| g.2.clone(),
            );
        Err(CliError(format!("{typed} cannot be combined with {mode}")))
    }
}

/// The error for a flag's bad value: `invalid value "x" for -flag: why`.
pub fn invalid(flag: &str, value: &str, why: impl fmt::Display) -> CliError {
    CliError(format!("invalid value {value:?} for -{flag}: {why}"))
}

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

/// Resolves `HOST:PORT`; an empty host (`:PORT`) becomes `default_host`.
pub fn resolve(spec: &str, default_host: &str) -> Result<Vec<SocketAddr>, String> {
    let (host, port) = split_host_port(spec, default_host)?;
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve host {host:?}: {e}"))?
        .collect();
    if addrs.is_empty() {
        return Err(format!("host {host:?} has no address"));
    }
    // Prefer IPv4 first: `:PORT` servers in this ecosystem listen on 0.0.0.0.
    let (mut v4, v6): (Vec<_>, Vec<_>) = addrs.into_iter().partition(SocketAddr::is_ipv4);
    v4.extend(v6);
    Ok(v4)
}

/// Splits `HOST:PORT` (or `[V6]:PORT`) without any lookup; an empty host
/// becomes `default_host`.
pub fn split_host_port<'a>(spec: &'a str, default_host: &'a str) -> Result<(&'a str, u16), String> {
    let (host, port) = spec
        .rsplit_once(':')
        .ok_or_else(|| "missing port (expected HOST:PORT or :PORT)".to_string())?;
    let port = parse_count(port)
        .and_then(|p| u16::try_from(p).ok())
        .ok_or_else(|| format!("bad port {port:?} (expected 0 to 65535)"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let host = if host.is_empty() { default_host } else { host };
    Ok((host, port))
}

/// A count or port: ASCII decimal digits only, no sign, no space, no
/// leading zero (`010` would be octal 8 to Go's flag package), at most
/// `u64::MAX`. The one number grammar of every flag; `None` otherwise.
pub fn parse_count(s: &str) -> Option<u64> {
    let digits = s.as_bytes();
    let well_formed = match digits {
        [] => false,
        [b'0', _, ..] => false,
        _ => digits.iter().all(u8::is_ascii_digit),
    };
    if !well_formed {
        return None;
    }
    s.parse().ok()
}

/// A count flag's value within `min..=max` (for `Flags::parse_or`).
pub fn count_in(min: u64, max: u64) -> impl Fn(&str) -> Result<u64, String> {
    move |v| {
        parse_count(v)
            .filter(|n| (min..=max).contains(n))
            .ok_or_else(|| format!("expected a number from {min} to {max}"))
    }
}

/// A count from `min` to `max` in the count grammar, or `off` (`None`):
/// the spelling of a flag whose default is shown as `off`, so that a later
/// argument can undo an earlier one.
fn count_or_off(min: u64, max: u64) -> impl Fn(&str) -> Result<Option<u64>, String> {
    move |v| match v {
        "off" => Ok(None),
        _ => count_in(min, max)(v)
            .map(Some)
            .map_err(|e| format!("{e}, or off")),
    }
}

/// The one duration grammar (`DUR`), Go's `time.ParseDuration` without
/// its sign and its units below a millisecond: one or more terms
/// `NUMBER UNIT` (`250ms`, `1.5s`, `2m`, `1h`, `1m30s`), or a bare
/// `NUMBER` of seconds (`90`). `NUMBER` is digits with an optional
/// fraction (`1.5`, `.5`); `UNIT` is `ms`, `s`, `m` or `h`. No sign,
/// exponent or space. The result must be a whole number of milliseconds
/// (the event loop's timer resolution: `0.0001ms` would be a zero
/// timeout), more than 0 and at most a year.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    const HELP: &str = "expected a duration such as 5s, 250ms, 1.5s or 1m30s";
    const MS: u128 = 1_000_000;
    const YEAR_NS: u128 = 86_400 * 365 * 1_000_000_000;
    let bare = !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit() || b == b'.');
    let mut rest = s;
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let (number, after) = rest.split_at(
            rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .unwrap_or(rest.len()),
        );
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        let digits_ok = |d: &str| d.bytes().all(|b| b.is_ascii_digit());
        // Bounded lengths keep the arithmetic below in range: 10^12 h in
        // ns is under 2^128 with a 9-digit fraction scale.
        if whole.is_empty() && fraction.is_empty()
            || !digits_ok(whole)
            || !digits_ok(fraction)
            || whole.len() > 12
            || fraction.len() > 9
        {
            return Err(HELP.into());
        }
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_len);
        let unit_ns: u128 = match (unit, bare) {
            ("", true) | ("s", false) => 1_000_000_000,
            ("ms", false) => MS,
            ("m", false) => 60 * 1_000_000_000,
            ("h", false) => 3_600 * 1_000_000_000,
            _ => return Err(HELP.into()),
        };
        let scale = 10u128.pow(fraction.len() as u32);
        let whole: u128 = whole.parse().unwrap_or(0);
        let fraction: u128 = fraction.parse().unwrap_or(0);
        let ns = (whole * scale + fraction) * unit_ns;
        if !ns.is_multiple_of(scale * MS) {
            return Err("must be a whole number of milliseconds".into());
        }
        total = total.saturating_add(ns / scale);
        rest = next;
    }
    if total == 0 || total > YEAR_NS {
        return Err("must be more than 0 and at most a year".into());
    }
    let ms = u64::try_from(total / MS).map_err(|_| HELP.to_string())?;
    Ok(Duration::from_millis(ms))
}

/// The one size grammar (`BYTES`): a count ([`parse_count`]) with an
/// optional binary unit, `KiB` or `k` (1024), `MiB` or `M` (1024²),
/// spelt exactly so (`64KiB`, `64k`, `1MiB`, `1M`, `65536`); `KB`, `kb`,
/// `MB`, `m` and spaces are refused, since they could be read as decimal
/// units or as milli. Between 1KiB and 64MiB.
pub fn parse_size(s: &str) -> Result<usize, String> {
    let (num, scale) = if let Some(n) = s.strip_suffix("KiB").or_else(|| s.strip_suffix('k')) {
        (n, 1024)
    } else if let Some(n) = s.strip_suffix("MiB").or_else(|| s.strip_suffix('M')) {
        (n, 1024 * 1024)
    } else {
        (s, 1)
    };
    let value = parse_count(num)
        .ok_or_else(|| "expected a size such as 65536, 64KiB or 1MiB".to_string())?;
    let bytes = value
        .checked_mul(scale)
        .and_then(|b| usize::try_from(b).ok())
        .ok_or_else(|| "too large".to_string())?;
    if !(1024..=64 * 1024 * 1024).contains(&bytes) {
        return Err("must be between 1KiB and 64MiB".into());
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Result<Config, CliError> {
        match parse(args.iter().map(OsString::from).collect())? {
            Command::Run(c) => Ok(*c),
            other => panic!("expected run, got {other:?}"),
        }
    }

    #[test]
    fn go_flag_forms_are_equivalent() {
        for args in [
            &["-listen", ":9002", "-forward", ":9001"][..],
            &["-listen=:9002", "-forward=:9001"],
            &["--listen", ":9002", "--forward", ":9001"],
            &["--listen=:9002", "--forward=:9001"],
        ] {
            let c = run(args).unwrap();
            assert_eq!(c.listen, "[::]:9002".parse().unwrap(), "{args:?}");
            assert_eq!(c.forward[0], "127.0.0.1:9001".parse().unwrap(), "{args:?}");
        }
    }

    #[test]
    fn defaults_follow_the_reference() {
        let c = run(&[]).unwrap();
        assert_eq!(c.listen, "[::]:8002".parse().unwrap());
        assert_eq!(c.forward[0].port(), 8001);
        assert!(c.forward[0].ip().is_loopback());
        assert_eq!(c.recovery_path, Some(PathBuf::from(".data/recovery.json")));
        assert_eq!(c.buffer_size, 65536);
        assert_eq!(c.connect_timeout, Duration::from_secs(5));
        assert_eq!(c.fin_timeout, Duration::from_secs(5));
        assert_eq!(c.idle_timeout, Duration::from_secs(600));
        assert_eq!(c.drain_timeout, Duration::from_secs(5));
        assert_eq!(c.max_connections, 10_000);
    }

    #[test]
    fn admin_http_is_loopback_by_default_and_can_be_turned_off() {
        assert_eq!(
            run(&[]).unwrap().http,
            Some("127.0.0.1:8088".parse().unwrap())
        );
        assert_eq!(run(&["-http=off"]).unwrap().http, None);
        assert_eq!(run(&["-http="]).unwrap().http, None);
        assert_eq!(
            run(&["-http", ":9"]).unwrap().http,
            Some("[::]:9".parse().unwrap())
        );
        let e = run(&["-http", "8088"]).unwrap_err();
        assert!(e.0.contains("-http"), "{e}");
    }

    #[test]
    fn reference_command_lines_are_accepted() {
        let c = run(&[
            "-listen=:8002",
            "-forward=localhost:8001",
            "-http=0.0.0.0:8088",
            "-recovery-path=.data/recovery.json",
        ])
        .unwrap();
        assert_eq!(c.forward[0], "127.0.0.1:8001".parse().unwrap());
        assert_eq!(c.http, Some("0.0.0.0:8088".parse().unwrap()));
        assert!(run(&["-recovery-path="]).unwrap().recovery_path.is_none());
    }

    #[test]
    fn help_and_version() {
        for a in ["-h", "--help", "-help"] {
            assert!(matches!(parse(vec![a.into()]), Ok(Command::Help)), "{a}");
        }
        for a in ["--version", "-version", "-V", "--V"] {
            assert!(matches!(parse(vec![a.into()]), Ok(Command::Version)), "{a}");
        }
    }

    #[test]
    fn errors_name_the_flag() {
        let e = run(&["-bogus", "1"]).unwrap_err();
        assert!(e.0.contains("-bogus"), "{e}");
        let e = run(&["-listen"]).unwrap_err();
        assert!(e.0.contains("-listen"), "{e}");
        let e = run(&["-listen", "8002"]).unwrap_err();
        assert!(
            e.0.contains("-listen") && e.0.contains("missing port"),
            "{e}"
        );
        let e = run(&["-forward=:99999"]).unwrap_err();
        assert!(e.0.contains("-forward") && e.0.contains("99999"), "{e}");
        let e = run(&["-forward=no-such-host.invalid:1"]).unwrap_err();
        assert!(e.0.contains("-forward"), "{e}");
        let e = run(&["--fin-timeout=soon"]).unwrap_err();
        assert!(e.0.contains("-fin-timeout"), "{e}");
        let e = run(&["--buffer-size=0"]).unwrap_err();
        assert!(e.0.contains("-buffer-size"), "{e}");
        let e = run(&["--max-connections=0"]).unwrap_err();
        assert!(e.0.contains("-max-connections"), "{e}");
        let e = run(&["stray"]).unwrap_err();
        assert!(e.0.contains("stray"), "{e}");
        assert!(!e.0.contains('\n'));
    }

    #[test]
    fn shared_flag_reader_reads_go_bool_flags() {
        let read = |args: &[&str]| {
            let args = args.iter().map(OsString::from).collect();
            Flags::parse(args, &["n"], &["no-fragment"])
        };
        let flags = read(&["-n=5", "-no-fragment"]).unwrap();
        assert_eq!(
            (flags.value("n"), flags.switch("no-fragment")),
            (Some("5"), true)
        );
        let flags = read(&["--n", "5", "--no-fragment=true"]).unwrap();
        assert_eq!(
            (flags.value("n"), flags.switch("no-fragment")),
            (Some("5"), true)
        );
        assert!(!read(&["-no-fragment=false"]).unwrap().switch("no-fragment"));
        assert!(
            read(&["-no-fragment=maybe"])
                .unwrap_err()
                .0
                .contains("-no-fragment")
        );
        assert!(read(&["-version"]).unwrap_err().0.contains("-version"));
        // As in Go, the last value of a flag wins.
        assert_eq!(read(&["-n", "1", "--n=2"]).unwrap().value("n"), Some("2"));
    }

    #[test]
    fn a_value_flag_takes_the_next_argument_whatever_it_looks_like() {
        // Go's flag package: `-recovery-path --version` sets the path.
        let c = run(&["-recovery-path", "--version"]).unwrap();
        assert_eq!(c.recovery_path, Some(PathBuf::from("--version")));
        let c = run(&["--recovery-path", "-h", "-listen", "127.0.0.1:0"]).unwrap();
        assert_eq!(c.recovery_path, Some(PathBuf::from("-h")));
        assert_eq!(c.listen, "127.0.0.1:0".parse().unwrap());
        let c = run(&["-recovery-path", "-http=off"]).unwrap();
        assert_eq!(c.recovery_path, Some(PathBuf::from("-http=off")));
        assert!(c.http.is_some());
        // A value that looks like a flag is still only a value.
        let e = run(&["-listen", "--help"]).unwrap_err();
        assert!(e.0.contains("-listen") && e.0.contains("--help"), "{e}");
        let e = run(&["-probe", "--version"]).unwrap_err();
        assert!(!e.0.is_empty());
    }

    #[test]
    fn every_value_of_a_flag_is_checked_not_only_the_last() {
        // As Go's flag package, which sets (and checks) each in turn.
        for (args, flag, bad) in [
            (
                &["--buffer-size", "0", "--buffer-size", "1KiB"][..],
                "buffer-size",
                "0",
            ),
            (&["--send-proxy=v9", "--send-proxy=v1"], "send-proxy", "v9"),
            (
                &["-http", "127.0.0.1:99999", "-http", "off"],
                "http",
                "127.0.0.1:99999",
            ),
            (&["-listen", "nope", "-listen", ":1"], "listen", "nope"),
            (&["-forward", "x", "-forward", ":1"], "forward", "x"),
            (
                &["--max-connections", "abc", "--max-connections", "5"],
                "max-connections",
                "abc",
            ),
            (
                &["--connect-timeout", "xyz", "--connect-timeout", "1s"],
                "connect-timeout",
                "xyz",
            ),
            (&["--fin-timeout=0", "--fin-timeout=1s"], "fin-timeout", "0"),
            (
                &["--idle-timeout=0", "--idle-timeout=1s"],
                "idle-timeout",
                "0",
            ),
            (
                &["--drain-timeout=0", "--drain-timeout=1s"],
                "drain-timeout",
                "0",
            ),
            (
                &["--log-level", "bogus", "--log-level", "info"],
                "log-level",
                "bogus",
            ),
            (
                &[
                    "--max-connections-per-client=0",
                    "--max-connections-per-client=5",
                ],
                "max-connections-per-client",
                "0",
            ),
        ] {
            let e = run(args).unwrap_err();
            assert!(
                e.0.starts_with(&format!("invalid value {bad:?} for -{flag}:")),
                "{args:?}: {e}"
            );
        }
        // The probe URL too, even before the mode's own check.
        let e = parse(
            ["--probe", "nope", "--probe", "http://127.0.0.1:1/health"]
                .map(OsString::from)
                .into(),
        );
        assert!(e.is_err(), "{e:?}");
        // Good values: the last wins.
        let c = run(&[
            "-http",
            "off",
            "-http",
            "127.0.0.1:1",
            "--buffer-size=2KiB",
            "--buffer-size=1KiB",
        ])
        .unwrap();
        assert_eq!(
            (c.http, c.buffer_size),
            (Some("127.0.0.1:1".parse().unwrap()), 1024)
        );
    }

    #[test]
    fn switches_take_gos_boolean_spellings() {
        for on in ["1", "t", "T", "TRUE", "true", "True"] {
            assert!(
                run(&[&format!("--accept-proxy={on}")])
                    .unwrap()
                    .accept_proxy,
                "{on}"
            );
        }
        for off in ["0", "f", "F", "FALSE", "false", "False"] {
            let c = run(&["--reuse-port", &format!("--reuse-port={off}")]).unwrap();
            assert!(!c.reuse_port, "{off}");
        }
        for bad in ["yes", "on", "tRUE", "2", ""] {
            let e = run(&[&format!("--accept-proxy={bad}")]).unwrap_err();
            assert!(e.0.contains("-accept-proxy"), "{bad}: {e}");
        }
    }

    #[test]
    fn a_forward_to_port_0_is_refused() {
        for spec in ["127.0.0.1:0", ":0", "[::1]:0", "localhost:0"] {
            let e = run(&["-forward", spec]).unwrap_err();
            assert!(
                e.0.contains("-forward") && e.0.contains("port 0"),
                "{spec}: {e}"
            );
        }
        // Listening on port 0 (any free port) stays allowed.
        assert_eq!(run(&["-listen", "127.0.0.1:0"]).unwrap().listen.port(), 0);
    }

    #[test]
    fn check_reads_every_flag_like_a_run() {
        let args = ["--check", "-listen=127.0.0.1:0", "--idle-timeout=2m"];
        let Ok(Command::Check(c)) = parse(args.map(OsString::from).into()) else {
            panic!("expected check");
        };
        assert_eq!(c.idle_timeout, Duration::from_secs(120));
        let e = parse(["--check", "--idle-timeout=x"].map(OsString::from).into()).unwrap_err();
        assert!(e.0.contains("-idle-timeout"), "{e}");
    }

    #[test]
    fn the_documented_default_spelling_off_turns_an_earlier_value_off() {
        let c = run(&["--send-proxy=v2", "--send-proxy", "off"]).unwrap();
        assert_eq!(c.send_proxy, None);
        let c = run(&[
            "--max-connections-per-client=5",
            "--max-connections-per-client",
            "off",
        ])
        .unwrap();
        assert_eq!(c.max_connections_per_client, None);
        let e = run(&["--send-proxy=v3"]).unwrap_err();
        assert!(e.0.contains("expected v1, v2 or off"), "{e}");
        let e = run(&["--max-connections-per-client=0"]).unwrap_err();
        assert!(e.0.contains("or off"), "{e}");
    }

    #[test]
    fn a_double_dash_ends_the_flags_and_what_follows_is_refused() {
        // Go's flag package consumes `--` and stops; foo-proxy takes no
        // positional argument.
        let c = run(&["--log-level", "warn", "--"]).unwrap();
        assert_eq!(c.log_level, Level::Warn);
        let e = run(&["--", "x"]).unwrap_err();
        assert_eq!(e.0, "unexpected argument: x");
        // A flag after `--` is an argument, not a flag.
        let e = run(&["--", "-forward", "127.0.0.1:9"]).unwrap_err();
        assert_eq!(e.0, "unexpected argument: -forward");
    }

    #[test]
    fn access_log_takes_on_or_off_spelt_so() {
        assert!(
            run(&["--access-log=off", "--access-log=on"])
                .unwrap()
                .access_log
        );
        assert!(!run(&["--access-log", "off"]).unwrap().access_log);
        for bad in ["yes", "true", "0", "OFF"] {
            let e = run(&["--access-log", bad]).unwrap_err();
            assert!(e.0.contains("expected on or off"), "{bad}: {e}");
        }
    }

    #[test]
    fn pooling_flags_are_off_by_default_and_checked_together() {
        let c = run(&[]).unwrap();
        assert_eq!((c.upstream_pool, c.upstream_spare), (0, 0));
        assert_eq!(c.max_upstream_connections, None);
        assert_eq!(c.queue_timeout, Duration::from_secs(5));
        assert_eq!(c.upstream_idle_timeout, Duration::from_secs(60));
        let c = run(&[
            "--upstream-pool=8",
            "--upstream-spare=2",
            "--max-upstream-connections=4",
            "--queue-timeout=250ms",
            "--upstream-idle-timeout=2s",
        ])
        .unwrap();
        assert_eq!((c.upstream_pool, c.upstream_spare), (8, 2));
        assert_eq!(c.max_upstream_connections, Some(4));
        assert_eq!(c.queue_timeout, Duration::from_millis(250));
        assert_eq!(c.upstream_idle_timeout, Duration::from_secs(2));
        let e = run(&["--upstream-spare=2"]).unwrap_err();
        assert!(
            e.0.contains("-upstream-spare") && e.0.contains("(0)"),
            "{e}"
        );
        let e = run(&[
            "--upstream-pool=4",
            "--upstream-spare=3",
            "--max-upstream-connections=2",
        ])
        .unwrap_err();
        assert!(e.0.contains("-max-upstream-connections (2)"), "{e}");
        let e = run(&["--upstream-pool=4", "--send-proxy=v1"]).unwrap_err();
        assert!(e.0.contains("-send-proxy") && !e.0.contains('\n'), "{e}");
        assert!(run(&["--max-upstream-connections=4", "--send-proxy=v1"]).is_ok());
        let e = run(&["--max-upstream-connections=0"]).unwrap_err();
        assert!(e.0.contains("-max-upstream-connections"), "{e}");
        // The strict count grammar: no sign.
        for flag in [
            "--upstream-pool=+8",
            "--upstream-spare=+1",
            "--max-upstream-connections=+4",
        ] {
            assert!(run(&[flag]).is_err(), "{flag}");
        }
        let c = run(&[
            "--max-upstream-connections=4",
            "--max-upstream-connections=off",
        ])
        .unwrap();
        assert_eq!(c.max_upstream_connections, None);
    }

    #[test]
    fn log_format_and_access_log() {
        let c = run(&[]).unwrap();
        assert_eq!((c.log_format, c.access_log), (LogFormat::Text, true));
        let c = run(&["--log-format=json", "--access-log", "off"]).unwrap();
        assert_eq!((c.log_format, c.access_log), (LogFormat::Json, false));
        assert_eq!(
            run(&["--log-format=logfmt"]).unwrap().log_format,
            LogFormat::Text
        );
        let e = run(&["--log-format=xml"]).unwrap_err();
        assert!(
            e.0.contains("-log-format") && e.0.contains("text, logfmt or json"),
            "{e}"
        );
        let e = run(&["--access-log=maybe"]).unwrap_err();
        assert!(e.0.contains("-access-log"), "{e}");
    }

    #[test]
    fn probe_takes_no_other_flag() {
        let e = parse(
            ["--probe", "http://127.0.0.1:1/health", "-listen", ":1"]
                .map(OsString::from)
                .into(),
        )
        .unwrap_err();
        // Named as typed, both of them.
        assert_eq!(e.0, "-listen cannot be combined with --probe");
        let e = parse(
            ["-http", "off", "-probe=http://127.0.0.1:1/health"]
                .map(OsString::from)
                .into(),
        )
        .unwrap_err();
        assert_eq!(e.0, "-http cannot be combined with -probe");
        assert!(matches!(
            parse(
                ["--probe", "http://127.0.0.1:1/health"]
                    .map(OsString::from)
                    .into()
            ),
            Ok(Command::Probe(_))
        ));
    }

    #[test]
    fn takeover_is_a_switch_that_needs_a_recovery_file() {
        assert!(!run(&[]).unwrap().takeover);
        assert!(run(&["--takeover", "-takeover"]).unwrap().takeover);
        assert!(!run(&["--takeover=false"]).unwrap().takeover);
        let e = run(&["--takeover", "-recovery-path="]).unwrap_err();
        assert!(e.0.contains("-takeover needs a recovery file"), "{e}");
        assert!(run(&["--takeover=false", "-recovery-path="]).is_ok());
    }

    #[test]
    fn proxy_protocol_and_scale_out_flags() {
        let c = run(&[]).unwrap();
        assert!(!c.accept_proxy && !c.reuse_port);
        assert_eq!((c.send_proxy, c.max_connections_per_client), (None, None));
        let c = run(&[
            "-accept-proxy",
            "--send-proxy=v2",
            "--max-connections-per-client",
            "3",
            "--reuse-port",
            "--accept-proxy",
        ])
        .unwrap();
        assert!(c.accept_proxy && c.reuse_port);
        assert_eq!(c.send_proxy, Some(crate::proxy_protocol::Version::V2));
        assert_eq!(c.max_connections_per_client, Some(3));
        assert!(!run(&["--accept-proxy=false"]).unwrap().accept_proxy);
        let e = run(&["--send-proxy=v3"]).unwrap_err();
        assert!(
            e.0.contains("-send-proxy") && e.0.contains("v1, v2 or off"),
            "{e}"
        );
        let e = run(&["--max-connections-per-client=0"]).unwrap_err();
        assert!(e.0.contains("-max-connections-per-client"), "{e}");
    }

    #[test]
    fn durations_and_sizes() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("-1").is_err());
        assert!(parse_duration("0").is_err());
        assert_eq!(parse_size("64KiB"), Ok(65536));
        assert_eq!(parse_size("1M"), Ok(1 << 20));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("12").is_err());
    }

    #[test]
    fn durations_that_round_to_zero_are_rejected() {
        // Found by the cli_address fuzz target.
        assert!(parse_duration("1e-10").is_err());
        assert!(parse_duration("0.0000000000006").is_err());
        assert!(parse_duration("1e-9").is_err());
    }

    /// Fault class: a lenient number parser (Rust's `f64`/`u64` parsers
    /// take signs, exponents, `inf`; the old size reader any case and
    /// decimal-looking units). One grammar for every value of a flag.
    #[test]
    fn durations_sizes_and_counts_have_one_strict_grammar() {
        let ms = Duration::from_millis;
        for (text, want) in [
            ("90", ms(90_000)),
            ("1.5", ms(1_500)),
            ("250ms", ms(250)),
            ("1.5s", ms(1_500)),
            (".5s", ms(500)),
            ("2m", ms(120_000)),
            ("1h", ms(3_600_000)),
            ("1m30s", ms(90_000)),
            ("1h0m0.001s", ms(3_600_001)),
            ("0.001", ms(1)),
        ] {
            assert_eq!(parse_duration(text), Ok(want), "{text}");
        }
        for bad in [
            "1e3", "1e3ms", "+1s", "-1s", "+5", "0.0001ms", "1.5ms", "0.0005", "0", "0s", "0ms0s",
            " 1s", "1s ", "1 s", "inf", "nan", "infs", ".", "s", "ms", "1S", "1MS", "1ns", "1us",
            "1d", "1.2.3s", "1s1", "5m1", "366d", "9000h", "",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(parse_duration("1."), Ok(ms(1_000)));
        assert!(parse_duration("8761h").is_err(), "over a year");
        assert_eq!(
            parse_duration("8760h"),
            Ok(Duration::from_secs(86_400 * 365))
        );

        for (text, want) in [
            ("65536", 65_536),
            ("64KiB", 65_536),
            ("64k", 65_536),
            ("1MiB", 1 << 20),
            ("1M", 1 << 20),
            ("64MiB", 64 << 20),
        ] {
            assert_eq!(parse_size(text), Ok(want), "{text}");
        }
        for bad in [
            "1KB", "64kb", "64kib", "64KIB", "1MB", "1mb", "1m", "1mib", "64K", "+4096", "04096",
            " 4096", "4096 ", "64 KiB", "0x1000", "4e3", "1.5KiB", "-1KiB", "KiB", "",
        ] {
            assert!(parse_size(bad).is_err(), "{bad:?} accepted");
        }

        assert_eq!(parse_count("0"), Some(0));
        assert_eq!(parse_count("18446744073709551615"), Some(u64::MAX));
        for bad in [
            "+5",
            "-5",
            "05",
            "00",
            " 5",
            "5 ",
            "0x10",
            "5e1",
            "1_000",
            "",
            "18446744073709551616",
        ] {
            assert_eq!(parse_count(bad), None, "{bad:?}");
        }
        assert!(split_host_port(":+8002", "x").is_err());
        assert!(split_host_port(": 8002", "x").is_err());
        assert!(split_host_port("[::1]:08002", "x").is_err());
    }

    /// Every flag that takes a number, a duration, a size or a name refuses
    /// what the grammar does not say, through the whole flag reader.
    #[test]
    fn every_numeric_and_named_flag_refuses_undocumented_spellings() {
        for (flag, bad) in [
            ("--connect-timeout", "1e3"),
            ("--fin-timeout", "+1s"),
            ("--idle-timeout", "0.0001ms"),
            ("--drain-timeout", "1.5ms"),
            ("--buffer-size", "1KB"),
            ("--buffer-size", "64kb"),
            ("--max-connections", "+5"),
            ("--max-connections", "05"),
            ("--max-connections-per-client", "+5"),
            ("--log-level", "DEBUG"),
            ("--log-level", "Info"),
            ("--log-level", "warning"),
            ("--access-log", "true"),
            ("--send-proxy", "1"),
            ("--send-proxy", "V2"),
            ("--log-format", "JSON"),
            ("-listen", ":+8002"),
            ("-forward", ":+8001"),
            ("-http", "127.0.0.1:+8088"),
        ] {
            let e = run(&[flag, bad]).map(|_| ()).unwrap_err();
            let name = flag.trim_start_matches('-');
            assert!(e.0.contains(name) && e.0.contains(bad), "{flag} {bad}: {e}");
        }
        let c = run(&[
            "--log-level",
            "debug",
            "--buffer-size",
            "1M",
            "--idle-timeout",
            "1m30s",
        ])
        .unwrap();
        assert_eq!(c.buffer_size, 1 << 20);
        assert_eq!(c.idle_timeout, Duration::from_secs(90));
    }

    #[test]
    fn host_and_port_split_without_lookup() {
        assert_eq!(split_host_port(":8002", "0.0.0.0"), Ok(("0.0.0.0", 8002)));
        assert_eq!(split_host_port("[::1]:80", "x"), Ok(("::1", 80)));
        assert_eq!(split_host_port("db.example:1", "x"), Ok(("db.example", 1)));
        assert!(
            split_host_port("8002", "x")
                .unwrap_err()
                .contains("missing port")
        );
        assert!(
            split_host_port("h:65536", "x")
                .unwrap_err()
                .contains("65536")
        );
    }

    #[test]
    fn parse_with_uses_the_given_resolver() {
        let fake = |spec: &str, default_host: &str| {
            let (_host, port) = split_host_port(spec, default_host)?;
            Ok(vec![SocketAddr::from(([10, 0, 0, 1], port))])
        };
        let args = ["-forward=no-such-host.invalid:7"]
            .map(OsString::from)
            .into();
        let Ok(Command::Run(c)) = parse_with(args, fake) else {
            panic!("expected run");
        };
        assert_eq!(c.forward, vec!["10.0.0.1:7".parse().unwrap()]);
    }

    #[test]
    fn ipv6_and_hostnames() {
        let c = run(&["-listen", "[::1]:0", "-forward", "localhost:1"]).unwrap();
        assert_eq!(c.listen, "[::1]:0".parse().unwrap());
        assert!(c.forward.iter().all(|a| a.ip().is_loopback()));
    }
}

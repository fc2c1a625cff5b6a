//! The value grammars of the flags: `HOST:PORT`, counts, durations, sizes and the probe URL.

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use super::CliError;

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
            .ok_or_else(|| {
                format!("expected a number from {min} to {max} (decimal digits only: no sign, space or leading zero)")
            })
    }
}

/// A count from `min` to `max` in the count grammar, or `off` (`None`):
/// the spelling of a flag whose default is shown as `off`, so that a later
/// argument can undo an earlier one.
pub(super) fn count_or_off(min: u64, max: u64) -> impl Fn(&str) -> Result<Option<u64>, String> {
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

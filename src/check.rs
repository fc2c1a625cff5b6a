//! `--check`: everything a start would check, then a report of what would run, without serving.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use crate::cli::Config;
use crate::logging::{LogFormat, one_line};
use crate::net::{self, describe};
use crate::recovery::{Recovery, lock_path, unrestorable};

/// What `--check` found: the report for stdout (what would run) and the
/// problems, one sentence each, for stderr. Exit 0 when `problems` is empty,
/// 2 otherwise.
#[derive(Debug)]
pub struct Outcome {
    pub report: String,
    pub problems: Vec<String>,
}

/// Binds the listen and admin addresses and drops them (a point-in-time
/// check: the address may be taken between this and a start), checks the
/// forward address is not the proxy itself, and checks the recovery path by
/// the rules of a start ([`Recovery::check`]: a lock another process holds
/// is reported, never taken). Serves nothing and never blocks.
pub fn check(config: &Config) -> Outcome {
    let mut problems = Vec::new();
    let mut out = String::with_capacity(1024);
    let listen =
        match net::listen_with(config.listen, 1, config.reuse_port).and_then(|l| l.local_addr()) {
            Ok(bound) => {
                let _ = writeln!(out, "listen          {} (can be bound now)", config.listen);
                Some(bound)
            }
            Err(e) => {
                let why = format!("cannot listen on {}: {}", config.listen, describe(&e));
                let _ = writeln!(out, "listen          {} (FAILED: {why})", config.listen);
                problems.push(why);
                None
            }
        };
    let forward: Vec<String> = config.forward.iter().map(SocketAddr::to_string).collect();
    let _ = writeln!(
        out,
        "forward         {} -> {} (tried in this order; not connected now)",
        one_line(&config.forward_spec),
        forward.join(", ")
    );
    // When the bind failed, the address as given still tells a forward to
    // it (unless its port is 0, which only a bind resolves): every problem
    // gets its line, not only the first.
    let own = listen.or((config.listen.port() != 0).then_some(config.listen));
    if let Some(own) = own
        && let Some(hit) = config
            .forward
            .iter()
            .find(|f| net::reaches_itself(own, **f, net::is_local))
    {
        problems.push(format!(
            "invalid value {:?} for -forward: {hit} is this proxy's own listen address {own}",
            config.forward_spec
        ));
    }
    match config.http {
        None => out.push_str("admin HTTP      off\n"),
        Some(addr) => match net::listen(addr, 1) {
            Ok(_) => {
                let _ = writeln!(out, "admin HTTP      {addr} (can be bound now)");
            }
            Err(e) => {
                let why = format!("cannot listen for HTTP on {addr}: {}", describe(&e));
                let _ = writeln!(out, "admin HTTP      {addr} (FAILED: {why})");
                problems.push(why);
            }
        },
    }
    match &config.recovery_path {
        None => out.push_str("recovery file   off\n"),
        Some(path) => {
            let shown = path.display().to_string();
            let shown = one_line(&shown);
            match Recovery::check(path.clone()) {
                Ok(None) => {
                    let contents = match unrestorable(path) {
                        Some(why) => {
                            format!("; its contents cannot be restored: {}", one_line(&why))
                        }
                        None => String::new(),
                    };
                    let _ = writeln!(
                        out,
                        "recovery file   {shown} (usable; lock {} free{contents})",
                        one_line(&lock_path(path).display().to_string())
                    );
                }
                Ok(Some(why)) => {
                    let why = one_line(&why);
                    let _ = writeln!(
                        out,
                        "recovery file   {shown} (cannot be written now: {why}; the proxy would relay and retry)"
                    );
                }
                Err(e) => {
                    let _ = writeln!(
                        out,
                        "recovery file   {shown} (FAILED: {})",
                        one_line(&e.to_string())
                    );
                    problems.push(e.to_string());
                }
            }
        }
    }
    let _ = writeln!(
        out,
        "buffer size     {} per direction",
        size(config.buffer_size)
    );
    let _ = writeln!(
        out,
        "timeouts        connect {}, fin {}, idle {}, drain {}, proxy header {}",
        duration(config.connect_timeout),
        duration(config.fin_timeout),
        duration(config.idle_timeout),
        duration(config.drain_timeout),
        duration(config.proxy_header_timeout)
    );
    let per_client = match config.max_connections_per_client {
        Some(n) => n.to_string(),
        None => "off".to_string(),
    };
    let _ = writeln!(
        out,
        "connections     at most {} (per client address: {per_client})",
        config.max_connections
    );
    let send = match config.send_proxy {
        Some(v) => format!("{v:?}").to_ascii_lowercase(),
        None => "off".to_string(),
    };
    let _ = writeln!(
        out,
        "PROXY protocol  accept: {}, send: {send}",
        yes_no(config.accept_proxy)
    );
    let max_upstream = match config.max_upstream_connections {
        Some(n) => format!(
            "at most {n} (queue timeout {})",
            duration(config.queue_timeout)
        ),
        None => "no limit".to_string(),
    };
    let _ = writeln!(
        out,
        "upstream        pool {}, spare {}, idle timeout {}; connections: {max_upstream}",
        config.upstream_pool,
        config.upstream_spare,
        duration(config.upstream_idle_timeout)
    );
    let _ = writeln!(out, "reuse-port      {}", yes_no(config.reuse_port));
    let _ = writeln!(out, "takeover        {}", yes_no(config.takeover));
    let _ = writeln!(
        out,
        "logs            level {}, format {}, admin access log {}, connection log {}",
        config.log_level.name(),
        config.log_format.name(),
        if config.access_log { "on" } else { "off" },
        config.log_connections.map_or("off", LogFormat::name)
    );
    let verdict = if problems.is_empty() {
        "foo-proxy --check: OK, this is what would run\n"
    } else {
        "foo-proxy --check: FAILED, this would not start\n"
    };
    Outcome {
        report: format!("{verdict}{out}"),
        problems,
    }
}

fn yes_no(on: bool) -> &'static str {
    if on { "yes" } else { "no" }
}

/// `64 KiB`, `1 MiB`, `1500 bytes`.
pub fn size(bytes: usize) -> String {
    if bytes >= 1 << 20 && bytes.is_multiple_of(1 << 20) {
        format!("{} MiB", bytes >> 20)
    } else if bytes >= 1 << 10 && bytes.is_multiple_of(1 << 10) {
        format!("{} KiB", bytes >> 10)
    } else {
        format!("{bytes} bytes")
    }
}

/// `5s`, `10m`, `250ms`, `1.5s`: the flag's own syntax.
pub fn duration(d: Duration) -> String {
    let ms = d.as_millis();
    if !d.subsec_nanos().is_multiple_of(1_000_000) {
        format!("{}s", d.as_secs_f64())
    } else if ms.is_multiple_of(60_000) {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations_are_shown_in_the_flags_own_units() {
        assert_eq!(size(65536), "64 KiB");
        assert_eq!(size(1 << 20), "1 MiB");
        assert_eq!(size(1500), "1500 bytes");
        assert_eq!(duration(Duration::from_secs(600)), "10m");
        assert_eq!(duration(Duration::from_secs(5)), "5s");
        assert_eq!(duration(Duration::from_millis(250)), "250ms");
        assert_eq!(duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(duration(Duration::from_nanos(1)), "0.000000001s");
    }
}

//! The command line never panics, and never reaches the network here.
//!
//! The input is one string for the address, duration and size parsers, and
//! also, split at NUL bytes, an argument list for the whole flag parser. Host
//! names are never looked up: `resolve` is only called when the host is an IP
//! literal (which std parses without DNS), and `parse_with` gets a resolver
//! that maps every host name to a fixed address.
#![no_main]

use std::ffi::OsString;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::ffi::OsStringExt;
use std::time::Duration;

use foo_proxy::cli::{
    Command, parse_duration, parse_size, parse_with, resolve, split_host_port,
};
use libfuzzer_sys::fuzz_target;

const YEAR: Duration = Duration::from_secs(86_400 * 365);

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);

    for default_host in ["0.0.0.0", "localhost"] {
        if let Ok((host, port)) = split_host_port(&text, default_host) {
            if let Ok(ip) = host.parse::<IpAddr>() {
                // An IP literal resolves to itself and nothing else.
                assert_eq!(resolve(&text, default_host), Ok(vec![SocketAddr::new(ip, port)]));
            }
        }
    }

    if let Ok(d) = parse_duration(&text) {
        assert!(d > Duration::ZERO && d <= YEAR, "{text:?} gave {d:?}");
    }
    if let Ok(n) = parse_size(&text) {
        assert!((1024..=64 << 20).contains(&n), "{text:?} gave {n}");
    }

    let args: Vec<OsString> = data
        .split(|&b| b == 0)
        .map(|a| OsString::from_vec(a.to_vec()))
        .collect();
    if let Ok(Command::Run(config)) = parse_with(args, no_dns) {
        assert!((1024..=64 << 20).contains(&config.buffer_size));
        for d in [config.connect_timeout, config.fin_timeout] {
            assert!(d > Duration::ZERO && d <= YEAR, "{d:?}");
        }
    }
});

/// Parses like `resolve`, but answers host names with a fixed address.
fn no_dns(spec: &str, default_host: &str) -> Result<Vec<SocketAddr>, String> {
    let (host, port) = split_host_port(spec, default_host)?;
    let ip = host.parse().unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
    Ok(vec![SocketAddr::new(ip, port)])
}

//! The command line's unit tests: every flag's spellings, values, defaults and errors, and the help text.

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
fn the_help_right_aligns_every_default_in_one_column() {
    let ends: Vec<(usize, &str)> = USAGE
        .lines()
        .filter(|l| l.ends_with(']') && l.starts_with(' '))
        .map(|l| (l.chars().count(), l))
        .collect();
    assert!(ends.len() > 15, "{ends:?}");
    let column = ends.first().map(|e| e.0);
    for (at, line) in &ends {
        assert_eq!(Some(*at), column, "{line}");
    }
}

#[test]
fn a_number_with_a_leading_zero_is_refused_saying_why() {
    let e = run(&["--max-connections", "05"]).unwrap_err();
    assert!(e.0.contains("leading zero"), "{e}");
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
        " 1s", "1s ", "1 s", "inf", "nan", "infs", ".", "s", "ms", "1S", "1MS", "1ns", "1us", "1d",
        "1.2.3s", "1s1", "5m1", "366d", "9000h", "",
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

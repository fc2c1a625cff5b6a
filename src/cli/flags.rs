//! Go-style flags read once, in order, with Go's `flag` semantics: a flag that takes a value takes the next argument, whatever it looks like.

use std::ffi::OsString;
use std::fmt;

use super::CliError;

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

//! The `counters!` macro: turns the one counter list in `stats.rs` into `Stats`, `Report`, `Totals` and the metric samples.
//!
//! Each entry of the list is one field of the report, in JSON order:
//!
//! ```text
//! /// doc
//! json_name: Type = role(args) [prometheus];
//! ```
//!
//! - `kept(field)`: a `u64` the loop counts in `Stats::field`; it is in
//!   the recovery file's `totals`, so it survives a restart.
//! - `reset(field)`: a `u64` in `Stats::field` that starts at 0 in every
//!   process (not in the recovery file).
//! - `derived(fn)`: computed from the counters, the rates and the uptime
//!   (`fn(&Stats, &RateSnapshot, now_ms) -> Type`).
//! - `filled()`: kept outside the counters (output writers, pairs); 0 here,
//!   the loop fills it in.
//!
//! `[prometheus]` is `[]` (JSON only) or `[counter|gauge "name" "{labels}"
//! "help"]`; the help text may be left out on the second and later samples
//! of one metric.

/// See the module documentation for the entry syntax.
macro_rules! counters {
    // `Stats`: one `u64` field per kept or reset entry.
    (@stats {$($acc:tt)*}) => {
        /// Every counter the proxy keeps: plain `u64`s the loop adds to in
        /// place (the hot path), plus the moving window.
        #[derive(Default)]
        pub struct Stats {
            $($acc)*
            pub window: RateWindow,
            /// Request/answer matching: answer latencies, connections
            /// closed by reason, spare seq sets.
            pub matching: Matching,
            /// Queue waits at `--max-upstream-connections`, µs.
            pub upstream_queue_wait: crate::latency::Histogram,
            /// Messages counted since the last time they went into the window.
            pending_req: u64,
            pending_resp: u64,
        }
    };
    (@stats {$($acc:tt)*} $(#[$attr:meta])* $json:ident: $ty:ty = kept($f:ident) $prom:tt; $($rest:tt)*) => {
        counters!(@stats {$($acc)* $(#[$attr])* pub $f: u64,} $($rest)*);
    };
    (@stats {$($acc:tt)*} $(#[$attr:meta])* $json:ident: $ty:ty = reset($f:ident) $prom:tt; $($rest:tt)*) => {
        counters!(@stats {$($acc)* $(#[$attr])* pub $f: u64,} $($rest)*);
    };
    (@stats {$($acc:tt)*} $(#[$attr:meta])* $json:ident: $ty:ty = $role:ident $args:tt $prom:tt; $($rest:tt)*) => {
        counters!(@stats {$($acc)*} $($rest)*);
    };

    // `Totals`: the kept entries only, named as in `Stats`.
    (@totals [$($f:ident)*]) => {
        /// The counters that survive a restart (the `kept` entries of the
        /// counter list), as a recovery snapshot carries them. Unknown fields
        /// are ignored on reading (here and in the whole file), so a build
        /// rolled back after an upgrade that added one still restores the
        /// counts; a missing one reads as 0, so a file written before a
        /// counter became kept still restores the others.
        #[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
        #[serde(default)]
        pub struct Totals {
            $(pub $f: u64,)*
        }

        impl Totals {
            /// The kept counters of `stats`.
            pub fn of(stats: &Stats) -> Totals {
                Totals { $($f: stats.$f,)* }
            }

            /// Adds these totals to `stats`, saturating.
            pub fn add_to(&self, stats: &mut Stats) {
                $(add(&mut stats.$f, self.$f);)*
            }

            /// What `self` has beyond `other`, field by field (never below
            /// zero): what a hand-over's counts add to those already taken.
            pub fn minus(&self, other: &Totals) -> Totals {
                Totals { $($f: self.$f.saturating_sub(other.$f),)* }
            }

            /// Both added, field by field (saturating).
            pub fn plus(&self, other: &Totals) -> Totals {
                Totals { $($f: self.$f.saturating_add(other.$f),)* }
            }

            /// Takes these totals back out of `stats` (saturating): what a
            /// hand-over added before the old process went away.
            pub fn sub_from(&self, stats: &mut Stats) {
                $(stats.$f = stats.$f.saturating_sub(self.$f);)*
            }
        }
    };
    (@totals [$($acc:ident)*] $(#[$attr:meta])* $json:ident: $ty:ty = kept($f:ident) $prom:tt; $($rest:tt)*) => {
        counters!(@totals [$($acc)* $f] $($rest)*);
    };
    (@totals [$($acc:ident)*] $(#[$attr:meta])* $json:ident: $ty:ty = $role:ident $args:tt $prom:tt; $($rest:tt)*) => {
        counters!(@totals [$($acc)*] $($rest)*);
    };

    // One report field's value.
    (@value $stats:ident $rates:ident $now:ident kept($f:ident)) => { $stats.$f };
    (@value $stats:ident $rates:ident $now:ident reset($f:ident)) => { $stats.$f };
    (@value $stats:ident $rates:ident $now:ident filled()) => { 0 };
    (@value $stats:ident $rates:ident $now:ident derived($e:expr)) => {{
        let derive: fn(&Stats, &RateSnapshot, u64) -> _ = $e;
        derive($stats, &$rates, $now)
    }};

    // One metric sample, if the entry has one.
    (@sample $visit:ident $report:ident $json:ident []) => {};
    (@sample $visit:ident $report:ident $json:ident [$kind:ident $name:literal $labels:literal $($help:literal)?]) => {
        $visit(
            &Sample {
                kind: counters!(@kind $kind),
                name: $name,
                labels: $labels,
                help: concat!("" $(, $help)?),
            },
            $report.$json,
        );
    };
    (@kind counter) => { Kind::Counter };
    (@kind gauge) => { Kind::Gauge };

    ($($(#[$attr:meta])* $json:ident: $ty:ty = $role:ident $args:tt $prom:tt;)*) => {
        counters!(@stats {} $($(#[$attr])* $json: $ty = $role $args $prom;)*);
        counters!(@totals [] $($(#[$attr])* $json: $ty = $role $args $prom;)*);

        /// The report (SIGUSR2 JSON, `/stats`), in the field order of docs/PROTOCOL.md
        /// followed by the extras.
        #[derive(Serialize, Debug, Clone, PartialEq)]
        pub struct Report {
            $($(#[$attr])* pub $json: $ty,)*
        }

        impl Stats {
            /// The report at monotonic `now_ms` (ms since start); the
            /// `filled()` fields are 0, for the loop to fill in.
            pub fn report(&mut self, now_ms: u64) -> Report {
                self.commit_window(now_ms);
                let rates = self.window.rates(now_ms);
                let stats: &Stats = self;
                Report {
                    $($json: counters!(@value stats rates now_ms $role $args),)*
                }
            }
        }

        impl Report {
            /// Calls `visit` with every metric sample, in report order.
            pub fn visit_samples(&self, visit: &mut dyn FnMut(&Sample, u64)) {
                let report = self;
                $(counters!(@sample visit report $json $prom);)*
            }
        }
    };
}

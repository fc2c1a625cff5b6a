//! Why a connection ended: the termination reasons and their names in the counters, the log and Prometheus.

use std::fmt;

/// How many names the reasons are counted under ([`Reason::NAMES`]).
pub const CLOSE_REASONS: usize = 13;

/// Why the proxy stopped relaying for a pair: the connection's one
/// termination reason, counted in `connections_closed` under [`Reason::name`]
/// (HAProxy's termination states are the model).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Reason {
    /// The client closed (its FIN) and every line it sent was answered.
    Answered,
    /// The client reset or failed: both sides are closed at once.
    ClientFailed,
    /// The upstream closed its side.
    UpstreamClosed,
    /// Reading from or writing to the upstream failed (a reset, ...).
    UpstreamFailed,
    /// No forward address took the connect (refused, unreachable).
    Refused,
    /// The last forward address tried did not answer the connect in time.
    ConnectTimeout,
    /// No byte moved either way for `--idle-timeout`.
    IdleTimeout,
    /// The half-closed client's answers did not all come in time.
    FinTimeout,
    /// The drain is over (or a second stop signal came).
    Shutdown,
    /// `--accept-proxy`: the client closed, or `--proxy-header-timeout` passed,
    /// before a whole PROXY protocol header came.
    ProxyHeaderMissing,
    /// `--accept-proxy`: the client's first bytes are not a valid PROXY
    /// protocol header (or one longer than the bound).
    ProxyHeaderInvalid,
    /// `--max-connections-per-client`: the client's address already has
    /// that many connections open.
    ClientLimit,
    /// The upstream connection came back to this proxy's own listener.
    Looped,
    /// No upstream socket could be opened (descriptors or memory).
    NoResources,
    /// `--queue-timeout` passed before an upstream connection was free.
    QueueTimeout,
}

impl Reason {
    /// Every reason's name, in [`Reason::index`] order: the keys of
    /// `connections_closed` and the `reason` label of
    /// `foo_connections_closed_total`.
    pub const NAMES: [&'static str; CLOSE_REASONS] = [
        "client_closed",
        "client_reset",
        "server_closed",
        "server_reset",
        "upstream_refused",
        "connect_timeout",
        "idle_timeout",
        "fin_timeout",
        "drained",
        "proxy_error",
        "proxy_header_error",
        "client_limit",
        "queue_timeout",
    ];

    /// Where the reason is counted in `connections_closed`.
    pub fn index(self) -> usize {
        match self {
            Reason::Answered => 0,
            Reason::ClientFailed => 1,
            Reason::UpstreamClosed => 2,
            Reason::UpstreamFailed => 3,
            Reason::Refused => 4,
            Reason::ConnectTimeout => 5,
            Reason::IdleTimeout => 6,
            Reason::FinTimeout => 7,
            Reason::Shutdown => 8,
            Reason::Looped | Reason::NoResources => 9,
            Reason::ProxyHeaderMissing | Reason::ProxyHeaderInvalid => 10,
            Reason::ClientLimit => 11,
            Reason::QueueTimeout => 12,
        }
    }

    /// The reason's name in the counters and the connection log.
    pub fn name(self) -> &'static str {
        Reason::NAMES
            .get(self.index())
            .copied()
            .unwrap_or("proxy_error")
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Reason::Answered => "every line answered",
            Reason::ClientFailed => "client failed",
            Reason::UpstreamClosed => "upstream closed",
            Reason::UpstreamFailed => "upstream failed",
            Reason::Refused => "upstream unreachable",
            Reason::ConnectTimeout => "upstream connect timed out",
            Reason::IdleTimeout => "idle timeout",
            Reason::FinTimeout => "fin timeout",
            Reason::Shutdown => "shutdown",
            Reason::ProxyHeaderMissing => "no PROXY header in time",
            Reason::ProxyHeaderInvalid => "invalid PROXY header",
            Reason::ClientLimit => "per-client connection limit",
            Reason::Looped => "forwarding loop",
            Reason::NoResources => "out of descriptors or memory",
            Reason::QueueTimeout => "no upstream connection free in time",
        })
    }
}

//! The behaviour line a reported version belongs to, and what differs between the lines: which inherited fds are read, whether `ip_listen_mode` and the RPC service exist, SIGUSR2, and where the local config lives.
//!
//! Citations are `file:line` in oceanbase/obproxy at the tag named; `v4.3.1:` is also HEAD.

/// The three lines whose process contracts differ (obproxy.md, "Version differences").
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Line {
    /// 3.x and 4.0: `v3.2.3` and `v4.0.0` read only `OBPROXY_INHERITED_FD`
    /// (v3.2.3:src/obproxy/ob_proxy_main.cpp:503) and have no SIGUSR2 handler
    /// (v3.2.3:src/obproxy/ob_proxy_main.cpp:568-598).
    V32,
    /// 4.1 and 4.2: the IPv6 fd and `ip_listen_mode` arrive
    /// (v4.2.3:src/obproxy/ob_proxy_main.cpp:523-524, v4.2.3:src/obproxy/obutils/ob_proxy_config.h:280),
    /// and SIGUSR2 is handled (v4.1.0:src/obproxy/ob_proxy_main.cpp:608).
    V42,
    /// 4.3 and later: the RPC service and the sqlite local config
    /// (v4.3.1:src/obproxy/obutils/ob_proxy_config.h:520-521, v4.3.1:src/obproxy/ob_proxy.cpp:711-729).
    V43,
}

impl Line {
    /// The line of a version string such as `3.2.3`, `4.2.1.0` or `4.3.1.0`. What does not
    /// start with `major.minor` is taken for the newest line, the stand-in's default.
    pub fn of(version: &str) -> Line {
        let mut parts = version.split('.').map(|p| p.trim().parse::<u32>().ok());
        match (parts.next().flatten(), parts.next().flatten()) {
            (Some(major), _) if major < 4 => Line::V32,
            (Some(4), Some(0)) => Line::V32,
            (Some(4), Some(1 | 2)) => Line::V42,
            _ => Line::V43,
        }
    }

    /// For the logs.
    pub fn name(self) -> &'static str {
        match self {
            Line::V32 => "3.2",
            Line::V42 => "4.2",
            Line::V43 => "4.3",
        }
    }

    /// `OBPROXY_INHERITED_IPV6_FD` is read from 4.1 on (v4.1.0:src/obproxy/ob_proxy_main.cpp:513).
    pub fn reads_ipv6_fd(self) -> bool {
        self >= Line::V42
    }

    /// The RPC service and its `OBPROXY_INHERITED_RPC_*` fds exist from 4.3 on
    /// (v4.3.1:src/obproxy/ob_proxy_main.cpp:566-578; v4.2.3 reads only the SQL fds, :523-524).
    pub fn has_rpc(self) -> bool {
        self == Line::V43
    }

    /// SIGUSR2 has a handler (forget the native child) from 4.1 on; before, its default
    /// action kills the process (v4.1.0:src/obproxy/ob_proxy_main.cpp:608 against
    /// v4.0.0:src/obproxy/ob_proxy_main.cpp:575-600).
    pub fn handles_sigusr2(self) -> bool {
        self >= Line::V42
    }

    /// A clean drain ends with SIGUSR2 to the parent from 4.1 on
    /// (v4.3.1:src/obproxy/iocore/net/ob_unix_net.cpp:85-94, absent in v3.2.3 and v4.0.0).
    pub fn signals_exit(self) -> bool {
        self >= Line::V42
    }

    /// Up to 4.2 the local config is `etc/obproxy_config.bin`, required by an inherited
    /// start (v4.2.3:src/obproxy/ob_proxy.cpp:654-662); 4.3 keeps it in sqlite, created on
    /// the fly (v4.3.1:src/obproxy/ob_proxy.cpp:711-729).
    pub fn uses_sqlite(self) -> bool {
        self == Line::V43
    }

    /// The `-V` and `SHOW PROXYINFO BINARY` package string, `OceanBase <version>`
    /// (configure.ac:1-5).
    pub fn package_string(version: &str) -> String {
        format!("OceanBase {version}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_map_to_their_lines() {
        assert_eq!(Line::of("3.2.3"), Line::V32);
        assert_eq!(Line::of("3.1.0"), Line::V32);
        assert_eq!(Line::of("4.0.0"), Line::V32);
        assert_eq!(Line::of("4.1.0.0"), Line::V42);
        assert_eq!(Line::of("4.2.3.0"), Line::V42);
        assert_eq!(Line::of("4.3.1.0"), Line::V43);
        assert_eq!(Line::of("4.4.0.0"), Line::V43);
        assert_eq!(Line::of("5.0"), Line::V43);
        assert_eq!(Line::of("next"), Line::V43);
    }
}

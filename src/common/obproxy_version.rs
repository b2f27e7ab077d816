//! obproxy's versions as text: read from `obproxy -V`'s output, compared,
//! and what each version line can do. Pure, so both daemons use it (the
//! agent to launch obproxy, the coordinator's preconditions to refuse a hot
//! restart of one too old).
/// The same match obshell makes: `\(OceanBase (\d+\.\d+\.\d+\.\d+) ...\)`.
/// Three-part versions are accepted too (older builds and stand-ins).
pub fn parse(text: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let rest = &line[line.find("(OceanBase ")? + "(OceanBase ".len()..];
        let version: String = rest
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == '.')
            .collect();
        let parts = version.split('.').filter(|p| !p.is_empty()).count();
        (parts >= 3 && !version.ends_with('.')).then_some(version)
    })
}

/// Compares dotted versions numerically ("3.2.1" < "3.10.0"; "3.2.1" ==
/// "3.2.1.0").
pub fn at_least(version: &str, minimum: &str) -> bool {
    let nums = |v: &str| -> Vec<u64> { v.split('.').map(|p| p.parse().unwrap_or(0)).collect() };
    let (mut a, mut b) = (nums(version), nums(minimum));
    let len = a.len().max(b.len());
    a.resize(len, 0);
    b.resize(len, 0);
    a >= b
}

/// What differs between obproxy's version lines, as far as the agent's
/// launch is concerned (read from obproxy's source, tags v3.2.3 to v4.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Features {
    /// 4.1+: reads `OBPROXY_INHERITED_IPV6_FD` and knows `ip_listen_mode`
    /// (3.2.x and 4.0 read only the IPv4 fd).
    pub ipv6: bool,
    /// 4.3+: the RPC service (`enable_obproxy_rpc_service`, on by default,
    /// `rpc_listen_port`), bound unless inherited as `OBPROXY_INHERITED_RPC_FD`.
    pub rpc_service: bool,
    /// Before 4.3: an inherited start reads `etc/obproxy_config.bin` and
    /// aborts without it; only a start that was not inherited writes it.
    pub needs_config_bin: bool,
}

/// The version from which each feature exists.
pub const IPV6_SINCE: &str = "4.1.0";
pub const RPC_SINCE: &str = "4.3.0";

pub fn features(version: &str) -> Features {
    Features {
        ipv6: at_least(version, IPV6_SINCE),
        rpc_service: at_least(version, RPC_SINCE),
        needs_config_bin: !at_least(version, RPC_SINCE),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_version_line_has_its_features() {
        let f = features("3.2.3");
        assert!(!f.ipv6 && !f.rpc_service && f.needs_config_bin);
        let f = features("4.0.0");
        assert!(!f.ipv6 && !f.rpc_service && f.needs_config_bin);
        let f = features("4.2.3.0");
        assert!(f.ipv6 && !f.rpc_service && f.needs_config_bin);
        let f = features("4.3.1.0");
        assert!(f.ipv6 && f.rpc_service && !f.needs_config_bin);
    }

    #[test]
    fn parses_the_first_line_of_obproxy_v() {
        let out = "obproxy (OceanBase 4.3.1.0 20240507-17e0ff5)\n\nREVISION: 1-abc\n";
        assert_eq!(parse(out).as_deref(), Some("4.3.1.0"));
    }

    #[test]
    fn garbage_has_no_version() {
        assert_eq!(parse("usage: obproxy [options]"), None);
        assert_eq!(parse("(OceanBase 4.)"), None);
    }

    #[test]
    fn versions_compare_numerically() {
        assert!(at_least("3.2.1", "3.2.1"));
        assert!(at_least("3.10.0", "3.2.1"));
        assert!(at_least("4.3.1.0", "3.2.1"));
        assert!(!at_least("3.1.0", "3.2.1"));
        assert!(!at_least("3.2.0.9", "3.2.1"));
    }
}

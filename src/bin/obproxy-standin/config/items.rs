//! The config items the stand-in knows: obproxy's own (name, default, range, info, reboot flag, visibility and level exactly as `src/obproxy/obutils/ob_proxy_config.h` defines them on each line) and the stand-in's test knobs.
//!
//! Only items whose behaviour the stand-in models, or that its flags set (`-p`, `-l`, `-s`,
//! `-n`, `-r`, `-c`), are here: an `-o` item obproxy has but the stand-in does not is
//! ignored, as obproxy ignores names it does not know
//! (v4.3.1:src/share/config/ob_common_config.cpp:123-126).

use crate::profile::Line;

/// How a value is parsed: obproxy's item classes (v4.3.1:src/share/config/ob_config.cpp),
/// plus the knobs, which keep the forms tests have always used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `DEF_INT`: `strtol(str, &end, 0)` and nothing after it (ob_config.cpp:935-953).
    Int,
    /// `DEF_TIME`: `strtol(str, &unit, 0)` then `us`, `ms`, `s` (or none), `m`, `h` or `d`
    /// (ob_config.cpp:849-881).
    Time,
    /// `DEF_BOOL`: true/false, on/off, yes/no, t/f, 1/0, any case; shown as True/False
    /// (ob_config.cpp:1047-1100).
    Bool,
    /// `DEF_STR` and `DEF_STR_LIST`: any text.
    Str,
    /// A stand-in knob, parsed by its own rule (see `config::knob`).
    Knob(KnobKind),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KnobKind {
    Text,
    /// A humantime duration such as `500ms` or `1s 500ms`.
    Duration,
    /// true/1/on/yes or false/0/off/no.
    Flag,
    /// HOST:PORT.
    Address,
}

/// `CFG_VISIBLE_LEVEL_*` (v4.3.1:src/lib/ob_define.h:857-860).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Visible {
    User,
    Sys,
    /// Not written to the local config and not loaded from it
    /// (v4.2.3:src/share/config/ob_common_config.cpp:166-168,
    /// v4.3.1:src/obproxy/obutils/ob_proxy_config.cpp:258-260).
    Memory,
}

impl Visible {
    pub fn as_str(self) -> &'static str {
        match self {
            Visible::User => "USER",
            Visible::Sys => "SYS",
            Visible::Memory => "MEMORY",
        }
    }
}

#[derive(Debug)]
pub struct ItemDef {
    pub name: &'static str,
    pub kind: Kind,
    pub default: &'static str,
    /// As written in the definition, e.g. `[-1,86400000000]`; empty when there is none.
    pub range: &'static str,
    pub info: &'static str,
    pub need_reboot: bool,
    pub visible: Visible,
    /// `CFG_MULTI_LEVEL_*` as `config_level_to_str()` prints it (4.3 only shows it).
    pub level: &'static str,
    /// The lines that have this definition.
    pub lines: &'static [Line],
}

const ALL: &[Line] = &[Line::V32, Line::V42, Line::V43];
const FROM_42: &[Line] = &[Line::V42, Line::V43];
const UP_TO_42: &[Line] = &[Line::V32, Line::V42];
const ONLY_32: &[Line] = &[Line::V32];
const ONLY_43: &[Line] = &[Line::V43];
const GLOBAL: &str = "LEVEL_GLOBAL";
const VIP: &str = "LEVEL_VIP";

/// One definition, in the order `DEF_*` takes its arguments.
macro_rules! item {
    ($name:expr, $kind:expr, $default:expr, $range:expr, $info:expr, $reboot:expr, $visible:expr, $level:expr, $lines:expr $(,)?) => {
        ItemDef {
            name: $name,
            kind: $kind,
            default: $default,
            range: $range,
            info: $info,
            need_reboot: $reboot,
            visible: $visible,
            level: $level,
            lines: $lines,
        }
    };
}

const fn knob(
    name: &'static str,
    kind: KnobKind,
    default: &'static str,
    info: &'static str,
) -> ItemDef {
    item!(
        name,
        Kind::Knob(kind),
        default,
        "",
        info,
        true,
        Visible::Sys,
        GLOBAL,
        ALL,
    )
}

use Kind::{Bool, Int, Str, Time};
use Visible::{Memory, Sys, User};

/// Line numbers are those of `src/obproxy/obutils/ob_proxy_config.h` at v3.2.3 / v4.2.3 /
/// v4.3.1; where a definition differs between lines it has one entry per variant.
pub static ITEMS: &[ItemDef] = &[
    // :262 / :279 / :283
    item!(
        "listen_port",
        Int,
        "6688",
        "(1024,65536)",
        "obproxy listen port",
        true,
        Sys,
        GLOBAL,
        ALL,
    ),
    // :261 / :278 / :282: the address a start that was not inherited binds (SQL and RPC).
    // DEF_IP; the stand-in checks the value when it binds.
    item!(
        "local_bound_ip",
        Str,
        "0.0.0.0",
        "",
        "local bound ip(any)",
        true,
        Sys,
        GLOBAL,
        ALL,
    ),
    // - / :281 / :285
    item!(
        "local_bound_ipv6_ip",
        Str,
        "::",
        "",
        "local bound ipv6 ip(any)",
        true,
        Sys,
        GLOBAL,
        FROM_42,
    ),
    // - / :280 / :284 (3.x and 4.0 listen on IPv4 only)
    item!(
        "ip_listen_mode",
        Int,
        "1",
        "[1, 3]",
        "1 means ipv4 listen mode, 2 means ipv6 listen mode, 3 means ipv4 and ipv6 listen mode",
        true,
        Sys,
        GLOBAL,
        FROM_42,
    ),
    // :337 / :373 / :376
    item!(
        "prometheus_listen_port",
        Int,
        "2884",
        "(1024,65536)",
        "obproxy prometheus listen port",
        true,
        Sys,
        GLOBAL,
        ALL,
    ),
    // :340 / :376 / :379
    item!(
        "enable_prometheus",
        Bool,
        "true",
        "",
        "enable prometheus or not",
        false,
        User,
        GLOBAL,
        ALL,
    ),
    // - / - / :520-521
    item!(
        "enable_obproxy_rpc_service",
        Bool,
        "true",
        "",
        "enable obproxy rpc service or not",
        true,
        Sys,
        GLOBAL,
        ONLY_43,
    ),
    item!(
        "rpc_listen_port",
        Int,
        "2885",
        "(1024,65536)",
        "obproxy rpc service listen port",
        true,
        Sys,
        GLOBAL,
        ONLY_43,
    ),
    // :171-172 / :183-184 / :185-186
    item!(
        "hot_upgrade_exit_timeout",
        Int,
        "30000000",
        "[-1,86400000000]",
        "graceful exit timeout, unit is us, default 30s, -1 means no timeout, 0 means quit now, > 0 means wait time",
        false,
        User,
        GLOBAL,
        ONLY_32,
    ),
    item!(
        "hot_upgrade_exit_timeout",
        Int,
        "30000000",
        "[-1,86400000000]",
        "graceful exit timeout, also use as INACTIVE timeout when rolling upgrade, unit is us, default 30s, -1 means no timeout, 0 means quit now, > 0 means wait time",
        false,
        User,
        GLOBAL,
        FROM_42,
    ),
    // :170 / :182 / :184
    item!(
        "hot_upgrade_rollback_timeout",
        Time,
        "24h",
        "[1s,30d]",
        "default hot upgrade rollback timeout, proxy will do rollback if receive no rollback command in such long time, [1s, 30d]",
        false,
        User,
        GLOBAL,
        ALL,
    ),
    // :169 / :181 / :183
    item!(
        "hot_upgrade_failure_retries",
        Int,
        "5",
        "[1,20]",
        "default hot upgrade failure retries, proxy will stop handle hot_upgrade command after such retries, [1, 20]",
        false,
        User,
        GLOBAL,
        ALL,
    ),
    // :154 / :165 / :166
    item!(
        "proxy_hot_upgrade_check_interval",
        Time,
        "5s",
        "[1s,1h]",
        "proxy info check task interval, [1s, 1h]",
        false,
        User,
        GLOBAL,
        ALL,
    ),
    // :173 / :185 / :187
    item!(
        "delay_exit_time",
        Time,
        "100ms",
        "[100ms,500ms]",
        "delay exit time, [100ms,500ms]",
        false,
        User,
        GLOBAL,
        ALL,
    ),
    // :309 / :345 / :349
    item!(
        "proxy_local_cmd",
        Int,
        "0",
        "[0,2]",
        "proxy local cmd type: 0->none(default), 1->exit, 2->restart",
        false,
        Memory,
        GLOBAL,
        ONLY_32,
    ),
    item!(
        "proxy_local_cmd",
        Int,
        "0",
        "[0,4]",
        "proxy local cmd type: 0->none(default), 1->exit, 2->restart, 3->offline, 4->online",
        false,
        Memory,
        GLOBAL,
        FROM_42,
    ),
    // :266 / :285 / :289
    item!(
        "app_name",
        Str,
        "undefined",
        "",
        "current application name which proxy works for, need defined, only modified when restart",
        true,
        Sys,
        GLOBAL,
        ALL,
    ),
    // :271 / :291 / :295
    item!(
        "rootservice_cluster_name",
        Str,
        "undefined",
        "",
        "default cluster name for rootservice_list",
        true,
        Sys,
        VIP,
        ALL,
    ),
    // :272 / :292 / :296
    item!(
        "rootservice_list",
        Str,
        "",
        "",
        "a list of servers against which election candidate is checked for validation, format ip1:sql_port1;ip2:sql_port2",
        true,
        Sys,
        GLOBAL,
        ALL,
    ),
    // :352 / :396 / :394
    item!(
        "mysql_version",
        Str,
        "5.6.25",
        "",
        "returned version for mysql mode, default value is 5.6.25. If set, proxy will send new version when user connect to proxy",
        false,
        User,
        VIP,
        ALL,
    ),
    // :361 / :405 / :403: 3.2 skips the private-address check by default
    item!(
        "skip_proxy_sys_private_check",
        Bool,
        "true",
        "",
        "skip_proxy_sys_private_check",
        false,
        User,
        GLOBAL,
        ONLY_32,
    ),
    item!(
        "skip_proxy_sys_private_check",
        Bool,
        "false",
        "",
        "skip_proxy_sys_private_check",
        false,
        User,
        GLOBAL,
        FROM_42,
    ),
    // :444 / :485 / :483: empty up to 4.2, a built-in hash on 4.3
    item!(
        "obproxy_sys_password",
        Str,
        "",
        "",
        "password for obproxy sys user",
        false,
        Sys,
        GLOBAL,
        UP_TO_42,
    ),
    item!(
        "obproxy_sys_password",
        Str,
        "f0455d5edb4833fa2e91762e71b61bc35d45cf0b",
        "",
        "password for obproxy sys user",
        false,
        Sys,
        GLOBAL,
        ONLY_43,
    ),
    // :445 / :486 / :484
    item!(
        "observer_sys_password",
        Str,
        "",
        "",
        "password for observer sys user",
        false,
        Sys,
        GLOBAL,
        UP_TO_42,
    ),
    item!(
        "observer_sys_password",
        Str,
        "ee0e5138c912aed80b683c05303684be347ce81d",
        "",
        "password for observer sys user",
        false,
        Sys,
        VIP,
        ONLY_43,
    ),
    // The stand-in's own knobs: not obproxy's, kept in its config so that a native child,
    // which gets no arguments, starts the way its parent did.
    knob(
        "standin_version",
        KnobKind::Text,
        "4.3.1.0",
        "stand-in: the version -V and SHOW PROXYINFO report",
    ),
    knob(
        "standin_start_delay",
        KnobKind::Duration,
        "0s",
        "stand-in: wait this long before listening",
    ),
    knob(
        "standin_fail_start",
        KnobKind::Flag,
        "false",
        "stand-in: give up after the start delay, without readiness",
    ),
    knob(
        "standin_no_ready",
        KnobKind::Flag,
        "false",
        "stand-in: serve, but never send the readiness signal",
    ),
    knob(
        "standin_ignore_signals",
        KnobKind::Flag,
        "false",
        "stand-in: ignore SIGTERM, SIGINT and SIGUSR1",
    ),
    knob(
        "standin_backend",
        KnobKind::Address,
        "",
        "stand-in: HOST:PORT every client is forwarded to (empty: echo)",
    ),
];

/// The definitions one line has, in table order.
pub fn for_line(line: Line) -> Vec<&'static ItemDef> {
    ITEMS.iter().filter(|d| d.lines.contains(&line)).collect()
}

/// The environment variable that gives a knob its default (the agent runs `binary -V`
/// with no other argument, so `-o` alone cannot reach every run).
pub fn knob_env(name: &str) -> Option<&'static str> {
    Some(match name {
        "standin_version" => "ODP_STANDIN_VERSION",
        "standin_start_delay" => "ODP_STANDIN_START_DELAY",
        "standin_fail_start" => "ODP_STANDIN_FAIL_START",
        "standin_no_ready" => "ODP_STANDIN_NO_READY",
        "standin_ignore_signals" => "ODP_STANDIN_IGNORE_SIGNALS",
        "standin_backend" => "ODP_STANDIN_BACKEND",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_line_has_each_name_once() {
        for line in [Line::V32, Line::V42, Line::V43] {
            let defs = for_line(line);
            let mut names: Vec<_> = defs.iter().map(|d| d.name).collect();
            names.sort_unstable();
            let before = names.len();
            names.dedup();
            assert_eq!(before, names.len(), "{line:?} has a name twice");
        }
        assert!(
            for_line(Line::V32)
                .iter()
                .all(|d| d.name != "ip_listen_mode")
        );
        assert!(
            for_line(Line::V42)
                .iter()
                .all(|d| d.name != "rpc_listen_port")
        );
    }
}

//! The result sets the admin session shows, in obproxy's layouts per line: `SHOW PROXYCONFIG`, `SHOW PROXYINFO BINARY`, the session variables and the three SELECTs obproxy answers.

use super::sql::{Listing, like};
use crate::config::Config;
use crate::config::items::{Kind, Visible};
use crate::profile::Line;
use crate::proxy::Proxy;

pub type Rows = Vec<Vec<Option<String>>>;

/// `SHOW PROXYCONFIG`'s columns: five up to 4.2, range and config_level added in 4.3
/// (v3.2.3 and v4.2.3:src/obproxy/cmd/ob_show_config_handler.cpp:63-69,
/// v4.3.1:src/obproxy/cmd/ob_show_config_handler.cpp:81-89).
pub fn config_columns(line: Line) -> &'static [&'static str] {
    const UP_TO_42: &[&str] = &["name", "value", "info", "need_reboot", "visible_level"];
    const FROM_43: &[&str] = &[
        "name",
        "value",
        "info",
        "need_reboot",
        "visible_level",
        "range",
        "config_level",
    ];
    if line.uses_sqlite() {
        FROM_43
    } else {
        UP_TO_42
    }
}

/// One row per item whose name matches `pattern`, as `dump_config_item` fills it
/// (v4.3.1:src/obproxy/cmd/ob_show_config_handler.cpp:238-258): the value as set, need_reboot
/// `true`/`false`, the visible level, and on 4.3 the range as defined and the level.
pub fn config_rows(config: &Config, listing: Listing, pattern: Option<&str>) -> Rows {
    let line = config.line();
    let defaults = Config::new(line);
    config
        .items()
        .filter(|(def, _)| like(def.name, pattern.unwrap_or("")))
        .filter(|(def, value)| match listing {
            Listing::All | Listing::Levels => true,
            Listing::Diff => *value != defaults.get(def.name),
            Listing::DiffUser => def.visible == Visible::User && *value != defaults.get(def.name),
        })
        .map(|(def, value)| {
            let mut row = vec![
                Some(def.name.to_owned()),
                Some(value.to_owned()),
                Some(def.info.to_owned()),
                Some(def.need_reboot.to_string()),
                Some(def.visible.as_str().to_owned()),
            ];
            if line.uses_sqlite() {
                // A bool or string item has no range: an empty string
                // (v4.3.1:src/share/config/ob_config.cpp:165-172).
                let range = match def.kind {
                    Kind::Int | Kind::Time => def.range,
                    _ => "",
                };
                row.push(Some(range.to_owned()));
                row.push(Some(def.level.to_owned()));
            }
            row
        })
        .collect()
}

/// `SHOW PROXYINFO BINARY`: columns `name` and `info`, one row named `binary info` whose
/// text is `"%s-%s-%s\nversion:%.*s\nMD5:%s\nREVISION:%s\nBUILD_TIME:%s %s\nBUILD_FLAGS:%s"`
/// over APP_NAME, PACKAGE_STRING, RELEASEID, the kernel release, the binary's MD5 and the
/// build (v4.3.1:src/obproxy/cmd/ob_show_info_handler.cpp:146-158; the same at v3.2.3 and
/// v4.2.3). The kernel release is RELEASE_UNKNOWN unless `enable_strict_kernel_release`,
/// off by default (v4.3.1:src/obproxy/obutils/ob_config_server_processor.cpp:1206-1217), and
/// the MD5 is computed only for a meta-db's batch upgrade, so without one it is empty
/// (v4.3.1:src/obproxy/obutils/ob_proxy_table_processor.cpp:1012-1035).
pub fn binary_info(proxy: &Proxy) -> Rows {
    let time = crate::build_time();
    let (date, clock) = time.rsplit_once(' ').unwrap_or((&time, ""));
    let info = format!(
        "ObProxy-{}-{}\nversion:RELEASE_UNKNOWN\nMD5:\nREVISION:{}\nBUILD_TIME:{} {}\nBUILD_FLAGS:{}",
        Line::package_string(&proxy.version),
        crate::cmdline::RELEASE_ID,
        crate::revision(),
        date,
        clock,
        crate::build_flags(),
    );
    vec![vec![Some("binary info".to_owned()), Some(info)]]
}

pub const BINARY_COLUMNS: &[&str] = &["name", "info"];
pub const VARIABLE_COLUMNS: &[&str] = &["Variable_name", "Value"];

/// The session variables obproxy lists for any other SHOW
/// (v4.3.1:src/obproxy/cmd/ob_dds_config_handler.cpp:39-67).
pub fn variables() -> Rows {
    [
        ("interactive_timeout", "28800"),
        ("lower_case_table_names", "2"),
        ("max_allowed_packet", "4194304"),
        ("net_buffer_length", "16384"),
        ("net_write_timeout", "60"),
        ("query_cache_size", "1048576"),
        ("wait_timeout", "28800"),
        ("character_set_client", "utf8mb4"),
        ("character_set_connection", "utf8mb4"),
        ("character_set_results", "utf8mb4"),
        ("character_set_server", "utf8mb4"),
        ("init_connect", ""),
        ("query_cache_type", "OFF"),
        ("sql_mode", "STRICT_ALL_TABLES"),
        ("system_time_zone", "+08:00"),
        ("time_zone", "+08:00"),
        ("transaction_isolation", "READ"),
        ("tx_isolation", "READ-COMMITTED"),
    ]
    .into_iter()
    .map(|(n, v)| vec![Some(n.to_owned()), Some(v.to_owned())])
    .collect()
}

/// The only SELECTs obproxy answers `root@proxysys`, one column named after the variable
/// (ob_dds_config_handler.cpp:211-225); anything else is not supported.
pub fn select(key: &str) -> Option<(&'static str, &'static str)> {
    [
        ("@@session.auto_increment_increment", "1"),
        ("@@session.tx_read_only", "0"),
        ("@@session.tx_isolation", "READ-COMMITTED"),
    ]
    .into_iter()
    .find(|(name, _)| name.eq_ignore_ascii_case(key))
}

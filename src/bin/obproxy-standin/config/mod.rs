//! The running config: every item the stand-in knows for its line, set from the defaults, the local config, the `-o` string and the flags in obproxy's order, changed later by `ALTER proxyconfig`; and the test knobs resolved from it and the environment.

pub mod items;
pub mod value;

use std::net::SocketAddr;
use std::time::Duration;

use items::{ItemDef, Kind, Visible};

use crate::profile::Line;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// obproxy's `add_config` stops at a value its item rejects, and the start fails
    /// (v4.3.1:src/share/config/ob_common_config.cpp:127-132).
    #[error("Invalid config value {name}={value:?}")]
    InvalidValue { name: String, value: String },
    #[error("invalid {env}={value:?}")]
    InvalidEnv { env: &'static str, value: String },
}

/// Why `ALTER proxyconfig SET` refused a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetError {
    /// `OB_ERR_SYS_CONFIG_UNKNOWN` (v4.3.1:src/obproxy/obutils/ob_proxy_config.cpp:389-391).
    Unknown,
    /// `OB_INVALID_CONFIG` (v4.3.1:src/obproxy/obutils/ob_proxy_config.cpp:340-356).
    Invalid,
}

#[derive(Debug, Clone)]
pub struct Config {
    line: Line,
    defs: Vec<&'static ItemDef>,
    values: Vec<String>,
}

impl Config {
    /// Every item of `line` at its default.
    pub fn new(line: Line) -> Self {
        let defs = items::for_line(line);
        let values = defs
            .iter()
            .map(|d| value::normalize(d, d.default).unwrap_or_else(|| d.default.to_owned()))
            .collect();
        Config { line, defs, values }
    }

    pub fn line(&self) -> Line {
        self.line
    }

    /// Names compare without case, as `ObConfigStringKey` does
    /// (v4.3.1:src/share/config/ob_config_helper.h:249-251).
    fn index(&self, name: &str) -> Option<usize> {
        self.defs
            .iter()
            .position(|d| d.name.eq_ignore_ascii_case(name))
    }

    pub fn def(&self, name: &str) -> Option<&'static ItemDef> {
        self.index(name).map(|i| self.defs[i])
    }

    /// Sets one item, keeping the old value when the new one is not valid for it
    /// (`set_value_safe`, v4.3.1:src/obproxy/obutils/ob_proxy_config.cpp:321-372).
    pub fn set(&mut self, name: &str, value: &str) -> Result<(), SetError> {
        let i = self.index(name).ok_or(SetError::Unknown)?;
        let normalized = value::normalize(self.defs[i], value).ok_or(SetError::Invalid)?;
        self.values[i] = normalized;
        Ok(())
    }

    /// The current text of an item this line has; empty for one it has not.
    pub fn get(&self, name: &str) -> &str {
        self.index(name).map_or("", |i| self.values[i].as_str())
    }

    pub fn has(&self, name: &str) -> bool {
        self.index(name).is_some()
    }

    pub fn int(&self, name: &str) -> i64 {
        value::int(self.get(name)).unwrap_or(0)
    }

    pub fn time(&self, name: &str) -> Duration {
        value::time(self.get(name)).unwrap_or_default()
    }

    pub fn flag(&self, name: &str) -> bool {
        match self.def(name).map(|d| d.kind) {
            Some(Kind::Bool) => value::boolean(self.get(name)).unwrap_or(false),
            _ => value::flag(self.get(name)).unwrap_or(false),
        }
    }

    /// Every item with its current value, in definition order.
    pub fn items(&self) -> impl Iterator<Item = (&'static ItemDef, &str)> {
        self.defs
            .iter()
            .copied()
            .zip(self.values.iter().map(String::as_str))
    }

    /// What the local config keeps: every item but the memory-only ones
    /// (v4.2.3:src/share/config/ob_common_config.cpp:166-168).
    pub fn persistent(&self) -> impl Iterator<Item = (&'static ItemDef, &str)> {
        self.items().filter(|(d, _)| d.visible != Visible::Memory)
    }

    /// Applies the `-o` string the way `add_extra_config_from_opt` does
    /// (v4.3.1:src/share/config/ob_common_config.cpp:50-145): items split on `,` and
    /// newlines, unknown names and `target_db_server` ignored, the first invalid value fails.
    pub fn apply_optstr(&mut self, optstr: &str) -> Result<(), ConfigError> {
        for (name, value) in optstr_items(optstr) {
            if name.eq_ignore_ascii_case("target_db_server") {
                continue;
            }
            match self.set(&name, &value) {
                Ok(()) | Err(SetError::Unknown) => {}
                Err(SetError::Invalid) => return Err(ConfigError::InvalidValue { name, value }),
            }
        }
        Ok(())
    }

    /// Loads pairs from the sqlite local config: memory items and unknown or invalid values
    /// are skipped, keeping the default (v4.3.1:src/obproxy/obutils/ob_proxy_config.cpp:258-268).
    pub fn load_lenient<'a>(&mut self, pairs: impl IntoIterator<Item = (&'a str, &'a str)>) {
        for (name, value) in pairs {
            if self.def(name).is_some_and(|d| d.visible == Visible::Memory) {
                continue;
            }
            if self.set(name, value) == Err(SetError::Invalid) {
                event!("config ignored", "name={name} reason=invalid-value");
            }
        }
    }

    /// The value of `-o` items given in this start's command line, for the knobs.
    pub fn knobs(&self, given: &[(String, String)]) -> Result<Knobs, ConfigError> {
        let knob = |name: &str| -> Result<String, ConfigError> {
            let env = items::knob_env(name).expect("a knob");
            let in_optstr = given.iter().any(|(n, _)| n.eq_ignore_ascii_case(name));
            if !in_optstr
                && let Ok(v) = std::env::var(env)
                && !v.is_empty()
            {
                let def = self.def(name).expect("knobs exist on every line");
                if value::normalize(def, &v).is_none() {
                    return Err(ConfigError::InvalidEnv { env, value: v });
                }
                return Ok(v);
            }
            Ok(self.get(name).to_owned())
        };
        let flag = |name: &str| knob(name).map(|v| value::flag(&v).unwrap_or(false));
        let backend = knob("standin_backend")?;
        Ok(Knobs {
            start_delay: humantime::parse_duration(&knob("standin_start_delay")?)
                .unwrap_or_default(),
            fail_start: flag("standin_fail_start")?,
            no_ready: flag("standin_no_ready")?,
            ignore_signals: flag("standin_ignore_signals")?,
            backend: (!backend.is_empty()).then(|| Backend {
                addrs: value::address(&backend).unwrap_or_default(),
                name: backend,
            }),
        })
    }
}

/// The test knobs a start runs with: an `-o` item of this start, else the environment
/// variable, else the local config, else the default.
#[derive(Debug, Clone)]
pub struct Knobs {
    pub start_delay: Duration,
    pub fail_start: bool,
    pub no_ready: bool,
    pub ignore_signals: bool,
    pub backend: Option<Backend>,
}

#[derive(Debug, Clone)]
pub struct Backend {
    /// As configured, for the logs.
    pub name: String,
    /// Resolved once at start; a connect tries them in order.
    pub addrs: Vec<SocketAddr>,
}

/// The `name=value` items of one `-o` string, as `add_config` tokenizes it: `strtok` on
/// `,` and newline, then on the first `=` after the name (leading `=` skipped), a token
/// without one being a name with an empty value. Nothing is trimmed.
pub fn optstr_items(optstr: &str) -> Vec<(String, String)> {
    optstr
        .split([',', '\n'])
        .filter(|t| !t.is_empty())
        .filter_map(|token| {
            let token = token.trim_start_matches('=');
            if token.is_empty() {
                return None;
            }
            let (name, value) = token.split_once('=').unwrap_or((token, ""));
            Some((name.to_owned(), value.to_owned()))
        })
        .collect()
}

/// The version a start reports: `standin_version` in `-o`, else `ODP_STANDIN_VERSION`,
/// else the default. It picks the line before any config is read.
pub fn version(optstr: Option<&str>) -> String {
    let given = optstr
        .map(optstr_items)
        .unwrap_or_default()
        .into_iter()
        .rev()
        .find(|(n, _)| n.eq_ignore_ascii_case("standin_version"))
        .map(|(_, v)| v);
    given
        .or_else(|| {
            std::env::var("ODP_STANDIN_VERSION")
                .ok()
                .filter(|v| !v.is_empty())
        })
        .unwrap_or_else(|| {
            let def = items::ITEMS.iter().find(|d| d.name == "standin_version");
            def.map_or("4.3.1.0", |d| d.default).to_owned()
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn optstr_tokens_split_like_strtok() {
        let items = optstr_items("a=1,,b=x=y\nc,=d=2,e=");
        let expected = [("a", "1"), ("b", "x=y"), ("c", ""), ("d", "2"), ("e", "")];
        let got: Vec<_> = items
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        assert_eq!(got, expected);
    }

    #[test]
    fn unknown_items_are_ignored_and_invalid_values_fail() {
        let mut c = Config::new(Line::V43);
        c.apply_optstr("enable_cluster_checkout=false,hot_upgrade_exit_timeout=5000000")
            .unwrap();
        assert_eq!(c.int("hot_upgrade_exit_timeout"), 5_000_000);
        assert!(c.apply_optstr("hot_upgrade_exit_timeout=5s").is_err());
        assert_eq!(c.int("hot_upgrade_exit_timeout"), 5_000_000, "kept");
        assert!(
            Config::new(Line::V42)
                .apply_optstr("enable_obproxy_rpc_service=false")
                .is_ok()
        );
        assert!(!Config::new(Line::V42).has("enable_obproxy_rpc_service"));
    }

    #[test]
    fn defaults_differ_per_line() {
        assert_eq!(Config::new(Line::V42).get("obproxy_sys_password"), "");
        assert_eq!(
            Config::new(Line::V43).get("obproxy_sys_password"),
            "f0455d5edb4833fa2e91762e71b61bc35d45cf0b"
        );
        assert!(Config::new(Line::V32).flag("skip_proxy_sys_private_check"));
        assert!(!Config::new(Line::V43).flag("skip_proxy_sys_private_check"));
        assert_eq!(Config::new(Line::V43).get("enable_prometheus"), "True");
    }
}

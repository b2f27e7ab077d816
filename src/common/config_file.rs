//! Loading a daemon's TOML file into typed values, with errors that name the
//! file, the key and the reason (shared by the agent and the coordinator).
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Deserializer, de::DeserializeOwned};

/// `sysexits.h` EX_CONFIG: what a daemon exits with on a bad configuration.
pub const EX_CONFIG: i32 = 78;

#[derive(Debug, thiserror::Error)]
#[error("{}: {key}: {reason}", path.display())]
pub struct ConfigError {
    pub path: PathBuf,
    /// Dotted key path such as `obproxy.start_timeout`; `-` for the whole file.
    pub key: String,
    pub reason: String,
}

impl ConfigError {
    /// The reason may quote the file (a TOML error does): a secret in it is
    /// masked, since the message goes to the log and the terminal.
    pub fn new(path: &Path, key: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            path: path.to_path_buf(),
            key: key.into(),
            reason: crate::common::redact::text(&reason.into()),
        }
    }
}

/// Reads and deserializes `path`; unknown keys are refused by the target
/// types (`deny_unknown_fields`).
pub fn load<T: DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    // What the file says decides what runs and who may call: nobody but its
    // owner may be able to change it.
    crate::security::files::check_config(path)
        .map_err(|reason| ConfigError::new(path, "-", reason))?;
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::new(path, "-", format!("cannot read the file: {e}")))?;
    parse(path, &text)
}

pub fn parse<T: DeserializeOwned>(path: &Path, text: &str) -> Result<T, ConfigError> {
    let de = toml::Deserializer::parse(text)
        .map_err(|e| ConfigError::new(path, "-", one_line(&e.to_string())))?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        // The whole file ("."), or a key whose name is empty (`'' = 1`, found
        // by the fuzzer): nothing to name, so the whole file.
        let key = if key == "." || key.is_empty() {
            "-".to_string()
        } else {
            key
        };
        ConfigError::new(path, key, one_line(&e.into_inner().to_string()))
    })
}

/// toml renders errors over several lines with a source excerpt; a log line
/// and an exit message want one: the reason, then where.
fn one_line(message: &str) -> String {
    let location = message
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("TOML parse error at "))
        .map(|l| format!(" (at {l})"));
    let is_excerpt = |l: &str| {
        let t = l.trim_start();
        t.starts_with('|')
            || t.split_once(" |")
                .is_some_and(|(n, _)| n.chars().all(|c| c.is_ascii_digit()))
    };
    let reason: Vec<&str> = message
        .lines()
        .filter(|l| !l.starts_with("TOML parse error") && !is_excerpt(l) && !l.trim().is_empty())
        .map(str::trim)
        .collect();
    format!("{}{}", reason.join(" "), location.unwrap_or_default())
}

/// The optional `[metrics]` section both daemons share: where the Prometheus
/// endpoint listens. Without the section there is no endpoint.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSection {
    pub listen: SocketAddr,
}

/// `[server] max_message_bytes` when unset: far above any real request (the
/// largest is a few hundred bytes) and far below what would hurt the host.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 1 << 20;
/// Bounds of `[server] max_message_bytes`: below 1 KiB a legitimate request
/// may not fit; above 64 MiB one caller could make the daemon buffer a lot.
pub const MESSAGE_BYTES_RANGE: std::ops::RangeInclusive<usize> = 1024..=(64 << 20);

pub fn default_max_message_bytes() -> usize {
    DEFAULT_MAX_MESSAGE_BYTES
}

/// Checks `[server] max_message_bytes` against [`MESSAGE_BYTES_RANGE`].
pub fn check_max_message_bytes(path: &Path, value: usize) -> Result<usize, ConfigError> {
    if MESSAGE_BYTES_RANGE.contains(&value) {
        return Ok(value);
    }
    Err(ConfigError::new(
        path,
        "server.max_message_bytes",
        format!(
            "{value} is outside {}..={} (default {DEFAULT_MAX_MESSAGE_BYTES})",
            MESSAGE_BYTES_RANGE.start(),
            MESSAGE_BYTES_RANGE.end()
        ),
    ))
}

/// The directory relative paths in `path` are read against: the file's own,
/// so a configuration and its tree can be moved together.
pub fn base_dir(path: &Path) -> PathBuf {
    let base = path
        .parent()
        // "agent.toml" has the parent "": the current directory.
        .filter(|dir| !dir.as_os_str().is_empty())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    std::path::absolute(&base).unwrap_or(base)
}

/// Durations are written as humans do ("30s", "1m 30s", "250ms").
pub fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    humantime::parse_duration(&text).map_err(|e| {
        serde::de::Error::custom(format!(
            "invalid duration {text:?}: {e} (write it like \"30s\" or \"500ms\")"
        ))
    })
}

/// `host:port` with a plain host name or IP (IPv6 in brackets).
pub fn valid_host_port(addr: &str) -> bool {
    if addr.parse::<std::net::SocketAddr>().is_ok() {
        return true;
    }
    let Some((host, port)) = addr.rsplit_once(':') else {
        return false;
    };
    port.parse::<u16>().is_ok_and(|p| p != 0)
        && !host.is_empty()
        && host.len() <= 253
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Sample {
        section: Section,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Section {
        #[serde(deserialize_with = "duration")]
        timeout: Duration,
    }

    #[test]
    fn a_good_duration_is_typed() {
        let s = parse::<Sample>(Path::new("x.toml"), "[section]\ntimeout = \"1m 30s\"\n").unwrap();
        assert_eq!(s.section.timeout, Duration::from_secs(90));
    }

    #[test]
    fn a_bad_duration_names_its_key() {
        let e =
            parse::<Sample>(Path::new("x.toml"), "[section]\ntimeout = \"soon\"\n").unwrap_err();
        assert_eq!(e.key, "section.timeout");
        assert!(e.reason.contains("soon"), "{e}");
    }

    #[test]
    fn an_unknown_key_is_refused() {
        let e = parse::<Sample>(
            Path::new("x.toml"),
            "[section]\ntimeout = \"1s\"\ntimeuot = 3\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("timeuot"), "{e}");
    }

    #[test]
    fn a_key_with_an_empty_name_is_blamed_on_the_whole_file() {
        let e = parse::<Sample>(Path::new("x.toml"), "'' = '  i'\n").unwrap_err();
        assert_eq!(e.key, "-");
        assert!(e.reason.contains("unknown field"), "{e}");
    }

    #[test]
    fn a_syntax_error_names_the_line() {
        let e = parse::<Sample>(Path::new("x.toml"), "[section\n").unwrap_err();
        assert!(e.to_string().starts_with("x.toml: -: "), "{e}");
        assert!(e.reason.contains("line 1"), "{e}");
    }
}

//! The coordinator's configuration: its clusters and their agents, parsed once
//! at start into typed values.
use std::{
    collections::HashSet,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;

use crate::config_file::{self, ConfigError, MetricsSection};

#[derive(Debug, Clone)]
pub struct CoordinatorConfig {
    pub listen: SocketAddr,
    pub store_path: PathBuf,
    pub agents: AgentTimeouts,
    pub clusters: Vec<Cluster>,
    /// Where `GET /metrics` listens; None: no metrics endpoint.
    pub metrics: Option<SocketAddr>,
}

#[derive(Debug, Clone)]
pub struct Cluster {
    pub name: String,
    /// `host:port` of each agent; the address names the ODP.
    pub agents: Vec<String>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentTimeouts {
    /// Connecting to an agent.
    #[serde(
        default = "connect_timeout",
        deserialize_with = "config_file::duration"
    )]
    pub connect_timeout: Duration,
    /// One GetStatus call: past it the agent shows as UNAVAILABLE.
    #[serde(default = "status_timeout", deserialize_with = "config_file::duration")]
    pub status_timeout: Duration,
    /// Submitting an operation (the agent answers at once; this is slack for
    /// a loaded host).
    #[serde(
        default = "request_timeout",
        deserialize_with = "config_file::duration"
    )]
    pub request_timeout: Duration,
    /// One agent operation (start, stop, restart with its drain) end to end.
    #[serde(
        default = "operation_timeout",
        deserialize_with = "config_file::duration"
    )]
    pub operation_timeout: Duration,
}

impl Default for AgentTimeouts {
    fn default() -> Self {
        Self {
            connect_timeout: connect_timeout(),
            status_timeout: status_timeout(),
            request_timeout: request_timeout(),
            operation_timeout: operation_timeout(),
        }
    }
}

fn connect_timeout() -> Duration {
    Duration::from_secs(2)
}
fn status_timeout() -> Duration {
    Duration::from_secs(3)
}
fn request_timeout() -> Duration {
    Duration::from_secs(10)
}
fn operation_timeout() -> Duration {
    Duration::from_secs(15 * 60)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    server: RawServer,
    store: RawStore,
    #[serde(default)]
    agents: AgentTimeouts,
    #[serde(default)]
    clusters: Vec<RawCluster>,
    #[serde(default)]
    metrics: Option<MetricsSection>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: SocketAddr,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStore {
    path: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCluster {
    name: String,
    agents: Vec<String>,
}

/// Cluster names travel in requests and logs: keep them plain.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// `host:port` with a plain host name or IP (IPv6 in brackets).
pub fn valid_agent_addr(addr: &str) -> bool {
    if addr.parse::<SocketAddr>().is_ok() {
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

impl CoordinatorConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::from_raw(path, config_file::load(path)?)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        Self::from_raw(path, config_file::parse(path, text)?)
    }

    fn from_raw(path: &Path, raw: Raw) -> Result<Self, ConfigError> {
        let base = path
            .parent()
            // "agent.toml" has the parent "": the current directory.
            .filter(|dir| !dir.as_os_str().is_empty())
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let base = std::path::absolute(&base).unwrap_or(base);
        let mut names = HashSet::new();
        let mut clusters = Vec::new();
        for (i, c) in raw.clusters.into_iter().enumerate() {
            let key = |k: &str| format!("clusters[{i}].{k}");
            if !valid_name(&c.name) {
                return Err(ConfigError::new(
                    path,
                    key("name"),
                    format!("{:?}: 1 to 64 of A-Z a-z 0-9 - _ .", c.name),
                ));
            }
            if !names.insert(c.name.clone()) {
                return Err(ConfigError::new(
                    path,
                    key("name"),
                    format!("{:?} is defined twice", c.name),
                ));
            }
            if c.agents.is_empty() {
                return Err(ConfigError::new(
                    path,
                    key("agents"),
                    "needs at least one agent address",
                ));
            }
            let mut seen = HashSet::new();
            for a in &c.agents {
                if !valid_agent_addr(a) {
                    return Err(ConfigError::new(
                        path,
                        key("agents"),
                        format!("{a:?} is not host:port"),
                    ));
                }
                if !seen.insert(a) {
                    return Err(ConfigError::new(
                        path,
                        key("agents"),
                        format!("{a:?} is listed twice"),
                    ));
                }
            }
            clusters.push(Cluster {
                name: c.name,
                agents: c.agents,
            });
        }
        for (key, d) in [
            ("agents.connect_timeout", raw.agents.connect_timeout),
            ("agents.status_timeout", raw.agents.status_timeout),
            ("agents.request_timeout", raw.agents.request_timeout),
            ("agents.operation_timeout", raw.agents.operation_timeout),
        ] {
            if d.is_zero() {
                return Err(ConfigError::new(path, key, "must be longer than zero"));
            }
        }
        Ok(Self {
            listen: raw.server.listen,
            store_path: base.join(raw.store.path),
            agents: raw.agents,
            clusters,
            metrics: raw.metrics.map(|m| m.listen),
        })
    }

    pub fn cluster(&self, name: &str) -> Option<&Cluster> {
        self.clusters.iter().find(|c| c.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[server]
listen = "127.0.0.1:2890"
[store]
path = "/var/lib/odp-coordinator/tasks.db"
[[clusters]]
name = "prod"
agents = ["10.0.0.1:2889", "10.0.0.2:2889", "odp-3.example:2889"]
"#;

    fn parse(text: &str) -> Result<CoordinatorConfig, ConfigError> {
        CoordinatorConfig::parse(Path::new("/etc/odp-coordinator.toml"), text)
    }

    #[test]
    fn the_documented_example_parses() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.clusters[0].agents.len(), 3);
        assert_eq!(c.agents.status_timeout, Duration::from_secs(3));
    }

    #[test]
    fn a_duplicate_agent_names_its_cluster() {
        let e = parse(&GOOD.replace("odp-3.example:2889", "10.0.0.1:2889")).unwrap_err();
        assert_eq!(e.key, "clusters[0].agents");
    }

    #[test]
    fn an_agent_without_port_is_refused() {
        let e = parse(&GOOD.replace("odp-3.example:2889", "odp-3")).unwrap_err();
        assert!(e.reason.contains("host:port"), "{e}");
    }

    #[test]
    fn the_metrics_endpoint_is_optional_and_typed() {
        assert_eq!(parse(GOOD).unwrap().metrics, None);
        let text = format!("{GOOD}[metrics]\nlisten = \"127.0.0.1:9092\"\n");
        assert_eq!(
            parse(&text).unwrap().metrics,
            Some("127.0.0.1:9092".parse().unwrap())
        );
        let e = parse(&format!("{GOOD}[metrics]\nlisten = \"nowhere\"\n")).unwrap_err();
        assert_eq!(e.key, "metrics.listen");
    }

    #[test]
    fn a_bad_cluster_name_is_refused() {
        let e = parse(&GOOD.replace("\"prod\"", "\"prod cluster\"")).unwrap_err();
        assert_eq!(e.key, "clusters[0].name");
    }
}

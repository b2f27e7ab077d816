//! The coordinator's configuration: its clusters and their agents, parsed once
//! at start into typed values.
use std::{collections::HashSet, net::SocketAddr, path::Path, time::Duration};

use serde::Deserialize;

use super::load_balancer::config::{LoadBalancerConfig, RawLoadBalancer};
use store::RawStore;
pub use store::{MetadbConfig, StoreConfig};

mod store;
use crate::{
    common::{
        config_file::{self, ConfigError, MetricsSection},
        grpc_server::settings::{ServerSection, Settings},
    },
    security::config::{AuditConfig, AuthConfig, ClientTlsConfig, Security, TlsConfig},
};

#[derive(Debug, Clone)]
pub struct CoordinatorConfig {
    /// gRPC: the TCP address, the local socket, the bounds on callers.
    pub server: Settings,
    /// `[store]`: a SQLite file or a shared metadb.
    pub store: StoreConfig,
    pub agents: AgentTimeouts,
    /// `[agents.tls]`: TLS (and the coordinator's client certificate) for
    /// the connections to the agents; None: plain gRPC.
    pub agent_tls: Option<ClientTlsConfig>,
    /// TLS, callers' roles and the audit log (`[tls]`, `[auth]`, `[audit]`).
    pub security: Security,
    pub clusters: Vec<Cluster>,
    /// Where `GET /metrics` listens; None: no metrics endpoint.
    pub metrics: Option<SocketAddr>,
    /// `[web]`: the console's pages; None: no console.
    pub web: Option<super::web_config::WebConfig>,
}

#[derive(Debug, Clone)]
pub struct Cluster {
    pub name: String,
    /// `host:port` of each agent; the address names the ODP.
    pub agents: Vec<String>,
    /// `[clusters.load_balancer]`: the balancer in front of the ODPs.
    pub load_balancer: Option<LoadBalancerConfig>,
    /// `lb_drain`: HOT Restart All drains each ODP in the balancer too.
    pub lb_drain: bool,
}

#[derive(Debug, Clone, Copy)]
pub struct AgentTimeouts {
    /// Connecting to an agent.
    pub connect_timeout: Duration,
    /// One GetStatus call: past it the agent shows as UNAVAILABLE.
    pub status_timeout: Duration,
    /// Submitting an operation (the agent answers at once; this is slack for
    /// a loaded host).
    pub request_timeout: Duration,
    /// One agent operation (start, stop, restart with its drain) end to end.
    pub operation_timeout: Duration,
}

/// The `[agents]` section as written: the timeouts and `[agents.tls]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAgents {
    #[serde(
        default = "connect_timeout",
        deserialize_with = "config_file::duration"
    )]
    connect_timeout: Duration,
    #[serde(default = "status_timeout", deserialize_with = "config_file::duration")]
    status_timeout: Duration,
    #[serde(
        default = "request_timeout",
        deserialize_with = "config_file::duration"
    )]
    request_timeout: Duration,
    #[serde(
        default = "operation_timeout",
        deserialize_with = "config_file::duration"
    )]
    operation_timeout: Duration,
    #[serde(default)]
    tls: Option<ClientTlsConfig>,
}

impl Default for RawAgents {
    fn default() -> Self {
        let t = AgentTimeouts::default();
        Self {
            connect_timeout: t.connect_timeout,
            status_timeout: t.status_timeout,
            request_timeout: t.request_timeout,
            operation_timeout: t.operation_timeout,
            tls: None,
        }
    }
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
    server: ServerSection,
    store: RawStore,
    #[serde(default)]
    agents: RawAgents,
    #[serde(default)]
    clusters: Vec<RawCluster>,
    #[serde(default)]
    metrics: Option<MetricsSection>,
    #[serde(default)]
    tls: Option<TlsConfig>,
    #[serde(default)]
    auth: AuthConfig,
    #[serde(default)]
    audit: AuditConfig,
    #[serde(default)]
    web: Option<super::web_config::WebSection>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCluster {
    name: String,
    agents: Vec<String>,
    #[serde(default)]
    lb_drain: bool,
    #[serde(default)]
    load_balancer: Option<RawLoadBalancer>,
}

/// Cluster names travel in requests and logs: keep them plain.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

impl CoordinatorConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::from_raw(path, config_file::load(path)?)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        Self::from_raw(path, config_file::parse(path, text)?)
    }

    fn from_raw(path: &Path, raw: Raw) -> Result<Self, ConfigError> {
        let base = config_file::base_dir(path);
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
                if !config_file::valid_host_port(a) {
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
            let load_balancer = c
                .load_balancer
                .map(|lb| lb.resolve(path, &base, &key("load_balancer"), &c.agents))
                .transpose()?;
            if c.lb_drain && load_balancer.is_none() {
                return Err(ConfigError::new(
                    path,
                    key("lb_drain"),
                    "needs [clusters.load_balancer]",
                ));
            }
            clusters.push(Cluster {
                name: c.name,
                agents: c.agents,
                load_balancer,
                lb_drain: c.lb_drain,
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
        let (store, state_dir) = raw.store.resolve(path, &base)?;
        // The audit log and the local socket live next to the task store,
        // in the state the coordinator already owns.
        let default_audit = state_dir.join("audit.log");
        let server = raw
            .server
            .resolve(path, &base, state_dir.join("grpc.sock"))?;
        let security = Security::resolve(
            path,
            &base,
            raw.server.exposure(),
            raw.tls,
            raw.auth,
            raw.audit,
            default_audit,
        )?;
        let agent_tls = raw.agents.tls.map(|t| t.resolve(path, &base)).transpose()?;
        let web = raw.web.map(|w| w.resolve(path, &security)).transpose()?;
        // A coordinator holding a certificate the agents trust acts with
        // their operator's role: whoever may call it must prove who they are,
        // or any local user could stop every ODP through it.
        if agent_tls.as_ref().is_some_and(|t| t.cert.is_some()) && !security.requires_credentials()
        {
            return Err(ConfigError::new(
                path,
                "agents.tls.cert",
                "the coordinator presents this certificate to the agents, so its own callers must \
                 present credentials too: configure [tls] with [[auth.certificates]] or \
                 [[auth.tokens]] (local operators keep the Unix socket), or drop the certificate",
            ));
        }
        Ok(Self {
            server,
            store,
            agents: AgentTimeouts {
                connect_timeout: raw.agents.connect_timeout,
                status_timeout: raw.agents.status_timeout,
                request_timeout: raw.agents.request_timeout,
                operation_timeout: raw.agents.operation_timeout,
            },
            agent_tls,
            clusters,
            metrics: raw.metrics.map(|m| m.listen),
            security,
            web,
        })
    }

    pub fn cluster(&self, name: &str) -> Option<&Cluster> {
        self.clusters.iter().find(|c| c.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

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

    #[test]
    fn the_audit_log_sits_next_to_the_store() {
        assert_eq!(
            parse(GOOD).unwrap().security.audit_path,
            PathBuf::from("/var/lib/odp-coordinator/audit.log")
        );
    }

    #[test]
    fn agents_tls_is_optional_and_resolved() {
        assert!(parse(GOOD).unwrap().agent_tls.is_none());
        let text = format!(
            "{GOOD}[agents.tls]\nca = \"pki/ca.pem\"\ncert = \"pki/c.pem\"\nkey = \"pki/c.key\"\ndomain = \"odp.example\"\n"
        );
        // Holding a client certificate for the agents needs credentials of
        // its own (see below); tokens give them here.
        let text = format!(
            "{text}[[auth.tokens]]\nname = \"ops\"\nsha256 = \"{}\"\nrole = \"OBPROXY_MANAGER\"\n",
            "b".repeat(64)
        );
        let tls = parse(&text).unwrap().agent_tls.unwrap();
        assert_eq!(tls.ca, PathBuf::from("/etc/pki/ca.pem"));
        assert_eq!(tls.domain.as_deref(), Some("odp.example"));
        let e = parse(&format!(
            "{GOOD}[agents.tls]\nca = \"ca.pem\"\ncert = \"c.pem\"\n"
        ))
        .unwrap_err();
        assert_eq!(e.key, "agents.tls");
        let e = parse(&format!(
            "{GOOD}[agents.tls]\nca = \"ca.pem\"\nverify = false\n"
        ))
        .unwrap_err();
        assert!(e.to_string().contains("verify"), "{e}");
    }

    #[test]
    fn a_coordinator_with_agent_credentials_requires_credentials_itself() {
        let with_cert = format!(
            "{GOOD}[agents.tls]\nca = \"pki/ca.pem\"\ncert = \"pki/c.pem\"\nkey = \"pki/c.key\"\n"
        );
        let e = parse(&with_cert).unwrap_err();
        assert_eq!(e.key, "agents.tls.cert");
        // Tokens make every TCP caller present one.
        let tokens = format!(
            "{with_cert}[[auth.tokens]]\nname = \"ops\"\nsha256 = \"{}\"\nrole = \"OBPROXY_MANAGER\"\n",
            "a".repeat(64)
        );
        assert!(parse(&tokens).is_ok());
        // A CA alone (no certificate) grants nothing.
        let ca_only = format!("{GOOD}[agents.tls]\nca = \"pki/ca.pem\"\n");
        assert!(parse(&ca_only).is_ok());
    }

    #[test]
    fn the_network_without_tls_is_refused() {
        let e = parse(&GOOD.replace("127.0.0.1:2890", "0.0.0.0:2890")).unwrap_err();
        assert_eq!(e.key, "server.listen");
    }
}

/// The `[web]` section as the whole file is read (here: `web_config` names
/// no other coordinator module).
#[cfg(test)]
mod web_section_tests {
    use super::CoordinatorConfig;
    use std::{path::Path, time::Duration};

    const BASE: &str = r#"
[server]
listen = "127.0.0.1:2890"
[store]
path = "/var/lib/odp-coordinator/tasks.db"
[[auth.tokens]]
name = "ops"
sha256 = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
role = "OBPROXY_MANAGER"
"#;

    fn parse(text: &str) -> Result<CoordinatorConfig, crate::common::config_file::ConfigError> {
        CoordinatorConfig::parse(Path::new("/etc/odp-coordinator.toml"), text)
    }

    #[test]
    fn the_console_is_off_unless_configured() {
        assert!(parse(BASE).unwrap().web.is_none());
        let web = parse(&format!("{BASE}[web]\nlisten = \"127.0.0.1:8080\"\n"))
            .unwrap()
            .web
            .unwrap();
        assert_eq!(web.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(web.session_ttl, Duration::from_secs(8 * 3600));
        assert!(!web.tls);
    }

    #[test]
    fn the_network_needs_tls_and_the_console_needs_tokens() {
        let e = parse(&format!("{BASE}[web]\nlisten = \"0.0.0.0:8080\"\n")).unwrap_err();
        assert_eq!(e.key, "web.listen");
        let without_tokens = BASE.split("[[auth.tokens]]").next().unwrap();
        let e = parse(&format!(
            "{without_tokens}[web]\nlisten = \"127.0.0.1:8080\"\n"
        ))
        .unwrap_err();
        assert_eq!(e.key, "web.listen");
        assert!(e.reason.contains("[[auth.tokens]]"), "{e}");
        let e = parse(&format!(
            "{BASE}[web]\nlisten = \"127.0.0.1:8080\"\nsession_ttl = \"0s\"\n"
        ))
        .unwrap_err();
        assert_eq!(e.key, "web.session_ttl");
    }
}

/// `[clusters.load_balancer]` read as part of the whole file (here, so that
/// `load_balancer` names no module that names it).
#[cfg(test)]
mod load_balancer_tests;

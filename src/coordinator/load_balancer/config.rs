//! `[clusters.load_balancer]` as written and as checked: the kind, where the
//! balancer is, each agent's server name, the command templates, the
//! timeouts. Every refusal names its key.
use std::{
    collections::{BTreeMap, HashSet},
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;

use crate::common::config_file::{self, ConfigError};

/// The section as written: one flat table whose keys depend on `kind`, so
/// that a key of the other kind is refused by name.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLoadBalancer {
    kind: RawKind,
    #[serde(default)]
    socket: Option<String>,
    #[serde(default)]
    backend: Option<String>,
    #[serde(default)]
    servers: Option<BTreeMap<String, String>>,
    #[serde(default = "drain_timeout", deserialize_with = "config_file::duration")]
    drain_timeout: Duration,
    #[serde(default = "timeout", deserialize_with = "config_file::duration")]
    timeout: Duration,
    #[serde(default)]
    drain: Option<Vec<String>>,
    #[serde(default)]
    enable: Option<Vec<String>>,
    #[serde(default)]
    sessions: Option<Vec<String>>,
    #[serde(default)]
    maint: Option<Vec<String>>,
    #[serde(default)]
    state: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
enum RawKind {
    HaProxy,
    Command,
}

fn drain_timeout() -> Duration {
    Duration::from_secs(60)
}
fn timeout() -> Duration {
    Duration::from_secs(5)
}

/// The longest drain a subtask waits for.
const MAX_DRAIN_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, Clone)]
pub struct LoadBalancerConfig {
    pub kind: Kind,
    /// Agent address -> the ODP's server name in the balancer.
    pub servers: BTreeMap<String, String>,
    /// How long a drain waits for the server's sessions to end.
    pub drain_timeout: Duration,
    /// One call to the balancer (a runtime API command, a command's run).
    pub timeout: Duration,
}

#[derive(Debug, Clone)]
pub enum Kind {
    HaProxy(HaProxyConfig),
    Command(CommandConfig),
}

impl Kind {
    pub fn name(&self) -> &'static str {
        match self {
            Kind::HaProxy(_) => "haproxy",
            Kind::Command(_) => "command",
        }
    }
}

#[derive(Debug, Clone)]
pub struct HaProxyConfig {
    pub socket: Socket,
    pub backend: String,
}

/// Where HAProxy's runtime API listens (`stats socket ... level admin`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Socket {
    Unix(PathBuf),
    /// `host:port`, resolved at each connect.
    Tcp(String),
}

#[derive(Debug, Clone)]
pub struct CommandConfig {
    pub drain: Template,
    pub enable: Template,
    pub sessions: Template,
    /// Optional: Stop All leaves the server drained without it.
    pub maint: Option<Template>,
    /// Optional: prints ready, drain or maint, for the cluster status.
    pub state: Option<Template>,
}

/// An argv with `{agent}` and `{server}` placeholders, run without a shell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    pub program: PathBuf,
    pub args: Vec<String>,
}

impl Template {
    /// The arguments with the placeholders filled in. Each argument stays one
    /// argument whatever the values hold: no shell splits or expands them.
    pub fn args(&self, agent: &str, server: &str) -> Vec<String> {
        self.args
            .iter()
            .map(|a| a.replace("{agent}", agent).replace("{server}", server))
            .collect()
    }

    fn uses_server(&self) -> bool {
        self.args.iter().any(|a| a.contains("{server}"))
    }
}

/// Names that travel inside a runtime API command line: no space, slash,
/// semicolon or newline can split or chain it.
fn valid_haproxy_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
}

impl RawLoadBalancer {
    /// Checks the section of cluster `cluster` (its key prefix) against the
    /// cluster's agents; relative paths are taken from `base`.
    pub fn resolve(
        self,
        path: &Path,
        base: &Path,
        prefix: &str,
        agents: &[String],
    ) -> Result<LoadBalancerConfig, ConfigError> {
        let key = |k: &str| format!("{prefix}.{k}");
        let err = |k: &str, reason: String| ConfigError::new(path, key(k), reason);
        for (k, d) in [
            ("drain_timeout", self.drain_timeout),
            ("timeout", self.timeout),
        ] {
            if d.is_zero() {
                return Err(err(k, "must be longer than zero".into()));
            }
        }
        if self.drain_timeout > MAX_DRAIN_TIMEOUT {
            return Err(err("drain_timeout", "must be at most 24h".into()));
        }
        let servers = match self.servers {
            Some(servers) => Some(check_servers(servers, agents).map_err(|r| err("servers", r))?),
            None => None,
        };
        let foreign = |keys: &[(&str, bool)], kind: &str| -> Result<(), ConfigError> {
            match keys.iter().find(|(_, set)| *set) {
                Some((k, _)) => Err(err(k, format!("is not a key of kind = \"{kind}\""))),
                None => Ok(()),
            }
        };
        let kind = match self.kind {
            RawKind::HaProxy => {
                foreign(
                    &[
                        ("drain", self.drain.is_some()),
                        ("enable", self.enable.is_some()),
                        ("sessions", self.sessions.is_some()),
                        ("maint", self.maint.is_some()),
                        ("state", self.state.is_some()),
                    ],
                    "haproxy",
                )?;
                let needed = |k: &str| err(k, "is needed by kind = \"haproxy\"".into());
                let socket = self.socket.ok_or_else(|| needed("socket"))?;
                let socket = parse_socket(&socket, base).map_err(|r| err("socket", r))?;
                let backend = self.backend.ok_or_else(|| needed("backend"))?;
                if !valid_haproxy_name(&backend) {
                    return Err(err(
                        "backend",
                        format!("{backend:?}: 1 to 64 of A-Z a-z 0-9 - _ . :"),
                    ));
                }
                if servers.is_none() {
                    return Err(needed("servers"));
                }
                Kind::HaProxy(HaProxyConfig { socket, backend })
            }
            RawKind::Command => {
                foreign(
                    &[
                        ("socket", self.socket.is_some()),
                        ("backend", self.backend.is_some()),
                    ],
                    "command",
                )?;
                let needed = |k: &str| err(k, "is needed by kind = \"command\"".into());
                let template = |k: &str, argv: Vec<String>| {
                    let t = parse_template(argv, base).map_err(|r| err(k, r))?;
                    if t.uses_server() && servers.is_none() {
                        return Err(err(
                            k,
                            "uses {server}, but servers (agent -> server name) is not set".into(),
                        ));
                    }
                    Ok(t)
                };
                let drain = template("drain", self.drain.ok_or_else(|| needed("drain"))?)?;
                let enable = template("enable", self.enable.ok_or_else(|| needed("enable"))?)?;
                let sessions =
                    template("sessions", self.sessions.ok_or_else(|| needed("sessions"))?)?;
                let maint = self.maint.map(|a| template("maint", a)).transpose()?;
                let state = self.state.map(|a| template("state", a)).transpose()?;
                Kind::Command(CommandConfig {
                    drain,
                    enable,
                    sessions,
                    maint,
                    state,
                })
            }
        };
        Ok(LoadBalancerConfig {
            kind,
            servers: servers.unwrap_or_default(),
            drain_timeout: self.drain_timeout,
            timeout: self.timeout,
        })
    }
}

/// Every agent has exactly one server, every server one agent.
fn check_servers(
    servers: BTreeMap<String, String>,
    agents: &[String],
) -> Result<BTreeMap<String, String>, String> {
    if let Some(unknown) = servers.keys().find(|a| !agents.contains(a)) {
        return Err(format!("{unknown:?} is not an agent of this cluster"));
    }
    if let Some(missing) = agents.iter().find(|a| !servers.contains_key(*a)) {
        return Err(format!("agent {missing:?} has no server"));
    }
    let mut seen = HashSet::new();
    for (agent, server) in &servers {
        if !valid_haproxy_name(server) {
            return Err(format!(
                "{agent:?} = {server:?}: a server name is 1 to 64 of A-Z a-z 0-9 - _ . :"
            ));
        }
        if !seen.insert(server) {
            return Err(format!("server {server:?} is named for two agents"));
        }
    }
    Ok(servers)
}

fn parse_socket(raw: &str, base: &Path) -> Result<Socket, String> {
    if raw.contains('/') {
        return Ok(Socket::Unix(base.join(raw)));
    }
    if raw.parse::<SocketAddr>().is_ok() || config_file::valid_host_port(raw) {
        return Ok(Socket::Tcp(raw.to_string()));
    }
    Err(format!(
        "{raw:?} is neither a socket path (with a /) nor host:port"
    ))
}

fn parse_template(argv: Vec<String>, base: &Path) -> Result<Template, String> {
    let Some((program, args)) = argv.split_first() else {
        return Err("an empty command: give [program, args...]".into());
    };
    if program.is_empty() {
        return Err("the program is empty".into());
    }
    if program.contains('{') {
        return Err(format!(
            "{program:?}: the program takes no placeholder, only its arguments do"
        ));
    }
    for arg in args {
        check_placeholders(arg)?;
    }
    // A bare name is looked up on PATH; a path is taken from the config's
    // directory.
    let program = if program.contains('/') {
        base.join(program)
    } else {
        PathBuf::from(program)
    };
    Ok(Template {
        program,
        args: args.to_vec(),
    })
}

/// Only `{agent}` and `{server}`: a misspelt placeholder would otherwise be
/// passed on as text to the balancer.
fn check_placeholders(arg: &str) -> Result<(), String> {
    let mut rest = arg;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        let Some(close) = after.find('}') else {
            return Err(format!("{arg:?}: a {{ without its }}"));
        };
        let name = &after[..close];
        if name != "agent" && name != "server" {
            return Err(format!(
                "{arg:?}: unknown placeholder {{{name}}} (only {{agent}} and {{server}})"
            ));
        }
        rest = &after[close + 1..];
    }
    Ok(())
}

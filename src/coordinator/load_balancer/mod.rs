//! The load balancer in front of a cluster's ODPs (`[clusters.load_balancer]`):
//! each ODP's server taken out of rotation before its operation and put back
//! once it serves again, and its state and sessions for the cluster status.
//!
//! [`config`] (the section, checked at load), [`haproxy`] (HAProxy's runtime
//! API over its stats socket), [`command`] (argv templates for any other
//! balancer), [`rotation`] (one ODP's steps around its operation, and what a
//! subtask records of them).
pub mod command;
pub mod config;
pub mod haproxy;
pub mod rotation;

use std::{collections::HashMap, path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize};

use config::{Kind, LoadBalancerConfig};

/// A server's administrative state in the balancer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServerState {
    /// Takes new sessions.
    Ready,
    /// Takes no new sessions; those open go on.
    Drain,
    /// Out of the balancer altogether (an ODP stopped on purpose).
    Maint,
}

impl ServerState {
    /// As HAProxy's `set server ... state` and the `state` command spell it.
    pub fn name(self) -> &'static str {
        match self {
            ServerState::Ready => "ready",
            ServerState::Drain => "drain",
            ServerState::Maint => "maint",
        }
    }

    pub fn parse(word: &str) -> Option<Self> {
        match word.to_ascii_lowercase().as_str() {
            "ready" => Some(ServerState::Ready),
            "drain" => Some(ServerState::Drain),
            "maint" => Some(ServerState::Maint),
            _ => None,
        }
    }
}

/// One server as the balancer reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerStatus {
    /// None: a command balancer without a `state` command.
    pub state: Option<ServerState>,
    pub sessions: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum LbError {
    #[error("load balancer {target}: cannot connect")]
    Connect {
        target: String,
        #[source]
        source: std::io::Error,
    },
    #[error("load balancer {target}: {command:?} got no answer")]
    Io {
        target: String,
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("load balancer {target}: {command:?} got no answer within {}", humantime::format_duration(*timeout))]
    Timeout {
        target: String,
        command: String,
        timeout: Duration,
    },
    #[error("load balancer {target}: {command:?} refused: {answer}")]
    Refused {
        target: String,
        command: String,
        answer: String,
    },
    #[error("load balancer {target}: backend {backend:?} has no server {server:?}")]
    UnknownServer {
        target: String,
        backend: String,
        server: String,
    },
    #[error("load balancer {target}: {command:?} answered what is not understood: {answer}")]
    Unparsable {
        target: String,
        command: String,
        answer: String,
    },
    #[error("load balancer command {what} ({program}) cannot run")]
    Spawn {
        what: &'static str,
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("load balancer command {what} ({program}) {status}: {output}")]
    Failed {
        what: &'static str,
        program: PathBuf,
        status: String,
        output: String,
    },
}

/// The balancer itself.
enum Backend {
    HaProxy(haproxy::HaProxy),
    Command(command::Commands),
}

/// One cluster's load balancer.
pub struct LoadBalancer {
    pub config: LoadBalancerConfig,
    backend: Backend,
}

impl LoadBalancer {
    pub fn new(config: LoadBalancerConfig) -> Self {
        let backend = match &config.kind {
            Kind::HaProxy(h) => Backend::HaProxy(haproxy::HaProxy::new(h, config.timeout)),
            Kind::Command(c) => Backend::Command(command::Commands::new(c, config.timeout)),
        };
        Self { config, backend }
    }

    /// The ODP's name in the balancer (the agent's address when the command
    /// kind has no `servers`).
    pub fn server<'a>(&'a self, agent: &'a str) -> &'a str {
        self.config
            .servers
            .get(agent)
            .map(String::as_str)
            .unwrap_or(agent)
    }

    /// Sets the ODP's server to `state`; what the balancer said, for the log.
    pub async fn set(&self, agent: &str, state: ServerState) -> Result<String, LbError> {
        let server = self.server(agent);
        match &self.backend {
            Backend::HaProxy(h) => h.set(server, state).await,
            Backend::Command(c) => c.set(agent, server, state).await,
        }
    }

    /// Whether `state` can be set at all (the command kind needs a `maint`
    /// command for maint).
    pub fn can_set(&self, state: ServerState) -> bool {
        match &self.backend {
            Backend::HaProxy(_) => true,
            Backend::Command(c) => c.can_set(state),
        }
    }

    /// The ODP's current sessions, and what was said, for the log.
    pub async fn sessions(&self, agent: &str) -> Result<(u64, String), LbError> {
        let server = self.server(agent);
        match &self.backend {
            Backend::HaProxy(h) => {
                let s = h.server(server).await?;
                Ok((s.sessions, format!("{} sessions", s.sessions)))
            }
            Backend::Command(c) => c.sessions(agent, server).await,
        }
    }

    /// Every agent's server, asked in parallel, all within `deadline` (the
    /// cluster status's, so a balancer that hangs never holds it up); an error
    /// for all of them when the balancer itself cannot be asked.
    pub async fn statuses(
        &self,
        agents: &[String],
        deadline: Duration,
    ) -> Result<Vec<Result<ServerStatus, LbError>>, LbError> {
        tokio::time::timeout(deadline, self.ask_statuses(agents))
            .await
            .unwrap_or_else(|_| {
                Err(LbError::Timeout {
                    target: self.target(),
                    command: "status".into(),
                    timeout: deadline,
                })
            })
    }

    /// Where the balancer is, as errors name it.
    fn target(&self) -> String {
        match &self.backend {
            Backend::HaProxy(h) => h.target(),
            Backend::Command(c) => c.target(),
        }
    }

    async fn ask_statuses(
        &self,
        agents: &[String],
    ) -> Result<Vec<Result<ServerStatus, LbError>>, LbError> {
        match &self.backend {
            Backend::HaProxy(h) => {
                let all = h.servers().await?;
                Ok(agents
                    .iter()
                    .map(|a| lookup(h, &all, self.server(a)))
                    .collect())
            }
            Backend::Command(c) => Ok(futures::future::join_all(
                agents.iter().map(|a| c.status(a, self.server(a))),
            )
            .await),
        }
    }
}

fn lookup(
    h: &haproxy::HaProxy,
    all: &HashMap<String, ServerStatus>,
    server: &str,
) -> Result<ServerStatus, LbError> {
    all.get(server).copied().ok_or_else(|| h.unknown(server))
}

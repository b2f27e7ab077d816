//! Talking to the agents: one lazily connected channel per agent (over TLS,
//! presenting the coordinator's client certificate, when `[agents.tls]` is
//! set), status with a deadline (an unreachable agent is an answer, never a
//! hang), and operations followed to their end.
use std::{collections::HashMap, sync::Mutex, time::Duration};

use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use super::{config::AgentTimeouts, status_stream::Connector};
use crate::{
    proto::agent::{self as pb, agent_client::AgentClient},
    security::{
        config::ClientTlsConfig as TlsSection,
        tls::{self, TlsFileError},
    },
};

/// The pool's TLS settings could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("cannot load [agents.tls]")]
pub struct PoolError(#[from] TlsFileError);

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("agent {agent} is unreachable: {message}")]
    Unreachable { agent: String, message: String },
    #[error("agent {agent} did not answer within {}", humantime::format_duration(*timeout))]
    Timeout { agent: String, timeout: Duration },
    #[error("agent {agent} refused: {}: {}", status.code(), status.message())]
    Refused {
        agent: String,
        status: tonic::Status,
    },
}

impl AgentError {
    fn from_status(agent: &str, status: tonic::Status) -> Self {
        match status.code() {
            tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled => {
                AgentError::Unreachable {
                    agent: agent.to_string(),
                    message: status.message().to_string(),
                }
            }
            tonic::Code::DeadlineExceeded => AgentError::Unreachable {
                agent: agent.to_string(),
                message: "deadline exceeded".into(),
            },
            _ => AgentError::Refused {
                agent: agent.to_string(),
                status,
            },
        }
    }

    /// The agent answered that it does not know the thing asked about.
    pub fn is_not_found(&self) -> bool {
        matches!(self, AgentError::Refused { status, .. } if status.code() == tonic::Code::NotFound)
    }

    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            AgentError::Unreachable { .. } | AgentError::Timeout { .. }
        )
    }
}

/// What a subtask asks an agent to do.
#[derive(Debug, Clone)]
pub enum Command {
    Start,
    Stop,
    Restart {
        mode: pb::RestartMode,
        exit_timeout: Option<Duration>,
    },
    /// A HOT restart onto `binary` (empty: the agent's configured one).
    Upgrade {
        binary: std::sync::Arc<str>,
        exit_timeout: Option<Duration>,
    },
}

pub struct AgentPool {
    timeouts: AgentTimeouts,
    /// Read once at start: the CA, the client certificate and the name to
    /// verify; None: plain gRPC.
    tls: Option<ClientTlsConfig>,
    channels: Mutex<HashMap<String, Channel>>,
    /// The status streams' own connections (see `status_stream`).
    streams: Connector,
}

impl AgentPool {
    pub fn new(timeouts: AgentTimeouts, tls: Option<&TlsSection>) -> Result<Self, PoolError> {
        let tls_section = tls;
        let tls = tls
            .map(|t| {
                tls::client(
                    &t.ca,
                    t.cert.as_deref().zip(t.key.as_deref()),
                    t.domain.as_deref(),
                )
            })
            .transpose()?;
        let streams = Connector::new(tls_section, timeouts.connect_timeout)?;
        Ok(Self {
            timeouts,
            tls,
            channels: Mutex::new(HashMap::new()),
            streams,
        })
    }

    pub fn timeouts(&self) -> AgentTimeouts {
        self.timeouts
    }

    /// How the status streams reach the agents.
    pub fn streams(&self) -> &Connector {
        &self.streams
    }

    fn client(&self, agent: &str) -> Result<AgentClient<Channel>, AgentError> {
        let mut channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(ch) = channels.get(agent) {
            return Ok(AgentClient::new(ch.clone()));
        }
        let unusable = |e: tonic::transport::Error| AgentError::Unreachable {
            agent: agent.to_string(),
            message: e.to_string(),
        };
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        // While a call is open (an operation followed), the connection is
        // pinged every status_timeout and dropped when a ping is not answered
        // within it: an agent cut off (or frozen) mid-operation is noticed in
        // seconds, not at operation_timeout.
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{agent}"))
            .map_err(unusable)?
            .connect_timeout(self.timeouts.connect_timeout)
            .http2_keep_alive_interval(self.timeouts.status_timeout)
            .keep_alive_timeout(self.timeouts.status_timeout)
            .keep_alive_while_idle(false)
            .tcp_nodelay(true);
        if let Some(tls) = &self.tls {
            endpoint = endpoint.tls_config(tls.clone()).map_err(unusable)?;
        }
        let ch = endpoint.connect_lazy();
        channels.insert(agent.to_string(), ch.clone());
        Ok(AgentClient::new(ch))
    }

    /// Forgets the agent's channel when a call found it unreachable: the
    /// next call connects afresh. A lazy channel keeps the error of a
    /// connect that failed after its caller gave up and hands it to the next
    /// call, so an agent back on the network would otherwise first look
    /// unreachable once more.
    fn settle<T>(&self, agent: &str, result: Result<T, AgentError>) -> Result<T, AgentError> {
        if result.as_ref().is_err_and(AgentError::is_unreachable) {
            let mut channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
            channels.remove(agent);
        }
        result
    }

    /// The agent's status, or why it could not be had within the deadline.
    pub async fn status(&self, agent: &str) -> Result<pb::ProxyStatus, AgentError> {
        self.status_with(agent, false).await
    }

    /// As [`AgentPool::status`], with `skip_sample`: the last usage sample
    /// the agent has, however old, instead of a new one.
    async fn status_with(
        &self,
        agent: &str,
        skip_sample: bool,
    ) -> Result<pb::ProxyStatus, AgentError> {
        let mut client = self.client(agent)?;
        let timeout = self.timeouts.status_timeout;
        let ask = client.get_status(pb::GetStatusRequest { skip_sample });
        let result = match tokio::time::timeout(timeout, ask).await {
            Ok(Ok(r)) => Ok(r.into_inner()),
            Ok(Err(status)) => Err(AgentError::from_status(agent, status)),
            Err(_) => Err(AgentError::Timeout {
                agent: agent.to_string(),
                timeout,
            }),
        };
        self.settle(agent, result)
    }

    /// One of the agent's operations by id.
    pub async fn operation(&self, agent: &str, id: &str) -> Result<pb::Operation, AgentError> {
        let mut client = self.client(agent)?;
        let timeout = self.timeouts.status_timeout;
        let call = client.get_operation(pb::GetOperationRequest { id: id.to_string() });
        let result = match tokio::time::timeout(timeout, call).await {
            Ok(Ok(r)) => Ok(r.into_inner()),
            Ok(Err(status)) => Err(AgentError::from_status(agent, status)),
            Err(_) => Err(AgentError::Timeout {
                agent: agent.to_string(),
                timeout,
            }),
        };
        self.settle(agent, result)
    }

    /// Every agent's status, asked in parallel; the slowest bounds the call.
    pub async fn statuses(&self, agents: &[String]) -> Vec<Result<pb::ProxyStatus, AgentError>> {
        futures::future::join_all(agents.iter().map(|a| self.status(a))).await
    }

    /// Every agent's status of now for an admission check: its state and
    /// processes asked afresh, the usage as last sampled (a new sample is a
    /// socket dump per agent, and the rules read no usage).
    pub async fn states(&self, agents: &[String]) -> Vec<Result<pb::ProxyStatus, AgentError>> {
        futures::future::join_all(agents.iter().map(|a| self.status_with(a, true))).await
    }

    /// Submits `command` with `request_id` (a repeat returns the agent's
    /// existing operation) and reports the operation as it starts.
    pub async fn submit(
        &self,
        agent: &str,
        command: Command,
        request_id: &str,
    ) -> Result<pb::Operation, AgentError> {
        let mut client = self.client(agent)?;
        let request_id = request_id.to_string();
        let call = async {
            match command {
                Command::Start => {
                    client
                        .start(pb::StartRequest {
                            request_id,
                            wait: false,
                        })
                        .await
                }
                Command::Stop => {
                    client
                        .stop(pb::StopRequest {
                            request_id,
                            wait: false,
                        })
                        .await
                }
                Command::Restart { mode, exit_timeout } => {
                    client
                        .restart(pb::RestartRequest {
                            mode: mode as i32,
                            exit_timeout: exit_timeout.map(proto_duration),
                            request_id,
                            wait: false,
                            binary: String::new(),
                        })
                        .await
                }
                Command::Upgrade {
                    binary,
                    exit_timeout,
                } => {
                    client
                        .restart(pb::RestartRequest {
                            mode: pb::RestartMode::Hot as i32,
                            exit_timeout: exit_timeout.map(proto_duration),
                            request_id,
                            wait: false,
                            binary: binary.to_string(),
                        })
                        .await
                }
            }
        };
        let timeout = self.timeouts.request_timeout;
        let result = match tokio::time::timeout(timeout, call).await {
            Ok(Ok(r)) => Ok(r.into_inner()),
            Ok(Err(status)) => Err(AgentError::from_status(agent, status)),
            Err(_) => Err(AgentError::Timeout {
                agent: agent.to_string(),
                timeout,
            }),
        };
        self.settle(agent, result)
    }

    /// What the agent makes of `binary` (its path, SHA-256 and `-V`).
    pub async fn inspect(
        &self,
        agent: &str,
        binary: &str,
    ) -> Result<pb::BinaryInspection, AgentError> {
        let mut client = self.client(agent)?;
        let call = client.inspect_binary(pb::InspectBinaryRequest {
            binary: binary.to_string(),
        });
        // Hashing a large binary and running its `-V` takes longer than a
        // status: the request's own timeout.
        let timeout = self.timeouts.request_timeout;
        let result = match tokio::time::timeout(timeout, call).await {
            Ok(Ok(r)) => Ok(r.into_inner()),
            Ok(Err(status)) => Err(AgentError::from_status(agent, status)),
            Err(_) => Err(AgentError::Timeout {
                agent: agent.to_string(),
                timeout,
            }),
        };
        self.settle(agent, result)
    }

    /// Follows an operation until it finishes, calling `progress` on each
    /// update; bounded by the operation timeout.
    pub async fn follow(
        &self,
        agent: &str,
        id: &str,
        mut progress: impl FnMut(&pb::Operation),
    ) -> Result<pb::Operation, AgentError> {
        let mut client = self.client(agent)?;
        let timeout = self.timeouts.operation_timeout;
        let follow = async {
            let mut last: Option<pb::Operation> = None;
            // A watch ends with the finished operation; one that fell behind
            // (RESOURCE_EXHAUSTED) is opened again from the current state.
            'watch: loop {
                let mut stream = client
                    .watch_operation(pb::WatchOperationRequest { id: id.to_string() })
                    .await
                    .map_err(|s| AgentError::from_status(agent, s))?
                    .into_inner();
                loop {
                    match stream.message().await {
                        Ok(Some(op)) => {
                            progress(&op);
                            let done = op.state() != pb::OperationState::Running;
                            last = Some(op);
                            if done {
                                break 'watch;
                            }
                        }
                        Ok(None) => break 'watch,
                        Err(s) if s.code() == tonic::Code::ResourceExhausted => continue 'watch,
                        Err(s) => return Err(AgentError::from_status(agent, s)),
                    }
                }
            }
            match last {
                Some(op) if op.state() != pb::OperationState::Running => Ok(op),
                _ => Err(AgentError::Unreachable {
                    agent: agent.to_string(),
                    message: format!("the watch of operation {id} ended before it finished"),
                }),
            }
        };
        let result = tokio::time::timeout(timeout, follow)
            .await
            .unwrap_or_else(|_| {
                Err(AgentError::Timeout {
                    agent: agent.to_string(),
                    timeout,
                })
            });
        self.settle(agent, result)
    }
}

fn proto_duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

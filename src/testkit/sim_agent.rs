//! Simulated agents: the `odp.agent.v1.Agent` service answering from memory,
//! with a configurable restart time and status cost. They let benchmarks and
//! demos put a coordinator in front of thousands of ODPs that one host could
//! not run as real processes; they never pretend to be one in the tests of
//! the agent. A fleet of them is one gRPC server over many listeners (one
//! address per agent), each request answered by the agent whose address the
//! connection reached.
use std::{
    collections::HashMap,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use futures::{Stream, StreamExt};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::proto::agent::{self as pb, agent_server::AgentServer};

struct State {
    running: bool,
    pid: u32,
    restarts: u32,
    ops: Vec<(String, watch::Receiver<pb::Operation>)>,
}

/// One simulated agent.
#[derive(Clone)]
pub struct SimAgent {
    state: Arc<Mutex<State>>,
    /// Bumped at every change of state, for WatchStatus.
    changed: Arc<watch::Sender<u64>>,
    version: String,
    /// How long a start or restart takes (a real obproxy's start-up).
    op_time: Duration,
    /// How long a status takes to answer (what a real agent's costs).
    status_cost: Duration,
}

impl SimAgent {
    pub fn new(running: bool, version: &str, op_time: Duration) -> Self {
        Self {
            state: Arc::new(Mutex::new(State {
                running,
                pid: if running { 1000 } else { 0 },
                restarts: 0,
                ops: Vec::new(),
            })),
            changed: Arc::new(watch::channel(0).0),
            version: version.to_string(),
            op_time,
            status_cost: Duration::ZERO,
        }
    }

    /// Every status answered after `cost`, as a real agent's takes.
    pub fn with_status_cost(mut self, cost: Duration) -> Self {
        self.status_cost = cost;
        self
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn status(&self) -> pb::ProxyStatus {
        let st = self.state();
        pb::ProxyStatus {
            state: if st.running {
                pb::ProxyState::Running
            } else {
                pb::ProxyState::Stopped
            } as i32,
            pid: st.pid,
            version: if st.running {
                self.version.clone()
            } else {
                String::new()
            },
            restart_count: st.restarts,
            desired_running: st.running,
            ..Default::default()
        }
    }

    async fn costly_status(&self) -> pb::ProxyStatus {
        if !self.status_cost.is_zero() {
            tokio::time::sleep(self.status_cost).await;
        }
        self.status()
    }

    /// Runs an operation in the background; repeats of a request id return it.
    fn submit(
        &self,
        kind: pb::OperationKind,
        request_id: String,
        ends_running: bool,
    ) -> pb::Operation {
        let mut st = self.state();
        if let Some((_, rx)) = st
            .ops
            .iter()
            .find(|(rid, _)| !rid.is_empty() && *rid == request_id)
        {
            return rx.borrow().clone();
        }
        let op = pb::Operation {
            id: format!("op-sim-{}", uuid::Uuid::new_v4().simple()),
            kind: kind as i32,
            state: pb::OperationState::Running as i32,
            request_id: request_id.clone(),
            created_at: Some(SystemTime::now().into()),
            previous_pid: st.pid,
            ..Default::default()
        };
        let (tx, rx) = watch::channel(op.clone());
        st.ops.push((request_id, rx));
        let me = self.clone();
        let delay = if kind == pb::OperationKind::Stop {
            Duration::ZERO
        } else {
            self.op_time
        };
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let pid = {
                let mut st = me.state();
                if ends_running {
                    st.restarts += u32::from(st.running);
                    st.pid += 1;
                } else {
                    st.pid = 0;
                }
                st.running = ends_running;
                st.pid
            };
            me.changed.send_modify(|n| *n += 1);
            let left = if ends_running {
                pb::ProxyState::Running
            } else {
                pb::ProxyState::Stopped
            };
            tx.send_modify(|op| {
                op.state = pb::OperationState::Succeeded as i32;
                op.pid = pid;
                op.finished_at = Some(SystemTime::now().into());
                op.proxy_state = left as i32;
            });
        });
        op
    }

    fn restart(&self, r: pb::RestartRequest) -> pb::Operation {
        let kind = if r.mode == pb::RestartMode::Force as i32 {
            pb::OperationKind::RestartForce
        } else {
            pb::OperationKind::RestartHot
        };
        self.submit(kind, r.request_id, true)
    }

    fn operation(&self, id: &str) -> Result<pb::Operation, Status> {
        self.state()
            .ops
            .iter()
            .map(|(_, rx)| rx.borrow().clone())
            .find(|op| op.id == id)
            .ok_or_else(|| Status::not_found(format!("id: no operation {id:?}")))
    }

    fn watch_operation(&self, id: &str) -> Result<OperationStream, Status> {
        let rx = self
            .state()
            .ops
            .iter()
            .find(|(_, rx)| rx.borrow().id == id)
            .map(|(_, rx)| rx.clone())
            .ok_or_else(|| Status::not_found(format!("id: no operation {id:?}")))?;
        let stream = futures::stream::unfold((rx, false), |(mut rx, done)| async move {
            if done {
                return None;
            }
            let op = rx.borrow_and_update().clone();
            if op.state == pb::OperationState::Running as i32 {
                let _ = rx.changed().await;
                let op = rx.borrow_and_update().clone();
                let finished = op.state != pb::OperationState::Running as i32;
                return Some((Ok(op), (rx, finished)));
            }
            Some((Ok(op), (rx, true)))
        });
        Ok(Box::pin(stream))
    }

    /// The status now, then at every change and after each `heartbeat` of
    /// silence, each one costing what a status costs.
    fn watch_status(&self, heartbeat: Duration) -> StatusStream {
        let changes = self.changed.subscribe();
        let stream = futures::stream::unfold(
            (self.clone(), changes, true),
            move |(me, mut changes, first)| async move {
                if !first {
                    tokio::select! {
                        changed = changes.changed() => changed.ok()?,
                        _ = tokio::time::sleep(heartbeat) => {}
                    }
                }
                changes.mark_unchanged();
                let status = me.costly_status().await;
                Some((Ok(status), (me, changes, false)))
            },
        );
        Box::pin(stream)
    }
}

type OperationStream = Pin<Box<dyn Stream<Item = Result<pb::Operation, Status>> + Send>>;
type StatusStream = Pin<Box<dyn Stream<Item = Result<pb::ProxyStatus, Status>> + Send>>;

/// Many simulated agents behind one server: each request goes to the agent
/// whose address its connection reached.
#[derive(Clone)]
pub struct SimFleet {
    agents: Arc<HashMap<SocketAddr, SimAgent>>,
}

impl SimFleet {
    fn agent<T>(&self, request: &Request<T>) -> Result<&SimAgent, Status> {
        request
            .local_addr()
            .and_then(|addr| self.agents.get(&addr))
            .ok_or_else(|| Status::not_found("no simulated agent at this address"))
    }
}

#[tonic::async_trait]
impl pb::agent_server::Agent for SimFleet {
    async fn get_status(
        &self,
        r: Request<pb::GetStatusRequest>,
    ) -> Result<Response<pb::ProxyStatus>, Status> {
        Ok(Response::new(self.agent(&r)?.costly_status().await))
    }

    async fn start(&self, r: Request<pb::StartRequest>) -> Result<Response<pb::Operation>, Status> {
        let agent = self.agent(&r)?;
        let op = agent.submit(pb::OperationKind::Start, r.into_inner().request_id, true);
        Ok(Response::new(op))
    }

    async fn stop(&self, r: Request<pb::StopRequest>) -> Result<Response<pb::Operation>, Status> {
        let agent = self.agent(&r)?;
        let op = agent.submit(pb::OperationKind::Stop, r.into_inner().request_id, false);
        Ok(Response::new(op))
    }

    async fn restart(
        &self,
        r: Request<pb::RestartRequest>,
    ) -> Result<Response<pb::Operation>, Status> {
        let agent = self.agent(&r)?;
        Ok(Response::new(agent.restart(r.into_inner())))
    }

    async fn inspect_binary(
        &self,
        _: Request<pb::InspectBinaryRequest>,
    ) -> Result<Response<pb::BinaryInspection>, Status> {
        // A simulated agent holds no files to hash or run.
        Err(Status::unimplemented(
            "InspectBinary: a simulated agent has no binaries (Upgrade All needs real agents)",
        ))
    }

    async fn get_operation(
        &self,
        r: Request<pb::GetOperationRequest>,
    ) -> Result<Response<pb::Operation>, Status> {
        let agent = self.agent(&r)?;
        Ok(Response::new(agent.operation(&r.get_ref().id)?))
    }

    type WatchOperationStream = OperationStream;

    async fn watch_operation(
        &self,
        r: Request<pb::WatchOperationRequest>,
    ) -> Result<Response<Self::WatchOperationStream>, Status> {
        let agent = self.agent(&r)?;
        Ok(Response::new(agent.watch_operation(&r.get_ref().id)?))
    }

    type WatchStatusStream = StatusStream;

    async fn watch_status(
        &self,
        r: Request<pb::WatchStatusRequest>,
    ) -> Result<Response<Self::WatchStatusStream>, Status> {
        let agent = self.agent(&r)?;
        let heartbeat = crate::agent::service::requests::heartbeat(r.get_ref())?;
        Ok(Response::new(agent.watch_status(heartbeat)))
    }
}

/// What a fleet of simulated agents looks like.
#[derive(Debug, Clone)]
pub struct FleetOptions {
    pub agents: usize,
    pub version: String,
    pub op_time: Duration,
    pub status_cost: Duration,
}

/// Serves a fleet of simulated agents on loopback, one address each, until
/// `shutdown`; returns their addresses.
pub async fn serve_fleet(
    opts: &FleetOptions,
    shutdown: CancellationToken,
) -> std::io::Result<Vec<SocketAddr>> {
    let mut addrs = Vec::with_capacity(opts.agents);
    let mut agents = HashMap::with_capacity(opts.agents);
    let mut incoming = Vec::with_capacity(opts.agents);
    for _ in 0..opts.agents {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        addrs.push(addr);
        let agent =
            SimAgent::new(true, &opts.version, opts.op_time).with_status_cost(opts.status_cost);
        agents.insert(addr, agent);
        incoming.push(crate::common::grpc_server::incoming(listener).boxed());
    }
    let fleet = SimFleet {
        agents: Arc::new(agents),
    };
    let connections = futures::stream::select_all(incoming);
    tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(AgentServer::new(fleet))
            .serve_with_incoming_shutdown(connections, async move { shutdown.cancelled().await })
            .await;
    });
    Ok(addrs)
}

/// Serves `n` simulated agents on loopback that answer statuses at once;
/// returns their addresses.
pub async fn serve_many(
    n: usize,
    version: &str,
    op_time: Duration,
    shutdown: CancellationToken,
) -> std::io::Result<Vec<SocketAddr>> {
    let opts = FleetOptions {
        agents: n,
        version: version.to_string(),
        op_time,
        status_cost: Duration::ZERO,
    };
    serve_fleet(&opts, shutdown).await
}

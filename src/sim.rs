//! A simulated agent: the `odp.agent.v1.Agent` service answering from memory,
//! with a configurable restart time. It lets benchmarks and demos put a
//! coordinator in front of hundreds of ODPs that one host could not run as
//! real processes; it never pretends to be one in the tests of the agent.
use std::{
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use futures::Stream;
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

#[derive(Clone)]
pub struct SimAgent {
    state: Arc<Mutex<State>>,
    version: String,
    /// How long a start or restart takes (a real obproxy's start-up).
    op_time: Duration,
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
            version: version.to_string(),
            op_time,
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
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
            tx.send_modify(|op| {
                op.state = pb::OperationState::Succeeded as i32;
                op.pid = pid;
                op.finished_at = Some(SystemTime::now().into());
            });
        });
        op
    }
}

#[tonic::async_trait]
impl pb::agent_server::Agent for SimAgent {
    async fn get_status(
        &self,
        _r: Request<pb::GetStatusRequest>,
    ) -> Result<Response<pb::ProxyStatus>, Status> {
        let st = self.state();
        Ok(Response::new(pb::ProxyStatus {
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
        }))
    }

    async fn start(&self, r: Request<pb::StartRequest>) -> Result<Response<pb::Operation>, Status> {
        Ok(Response::new(self.submit(
            pb::OperationKind::Start,
            r.into_inner().request_id,
            true,
        )))
    }

    async fn stop(&self, r: Request<pb::StopRequest>) -> Result<Response<pb::Operation>, Status> {
        Ok(Response::new(self.submit(
            pb::OperationKind::Stop,
            r.into_inner().request_id,
            false,
        )))
    }

    async fn restart(
        &self,
        r: Request<pb::RestartRequest>,
    ) -> Result<Response<pb::Operation>, Status> {
        let r = r.into_inner();
        let kind = if r.mode == pb::RestartMode::Force as i32 {
            pb::OperationKind::RestartForce
        } else {
            pb::OperationKind::RestartHot
        };
        Ok(Response::new(self.submit(kind, r.request_id, true)))
    }

    async fn get_operation(
        &self,
        r: Request<pb::GetOperationRequest>,
    ) -> Result<Response<pb::Operation>, Status> {
        let id = r.into_inner().id;
        let st = self.state();
        st.ops
            .iter()
            .map(|(_, rx)| rx.borrow().clone())
            .find(|op| op.id == id)
            .map(Response::new)
            .ok_or_else(|| Status::not_found(format!("id: no operation {id:?}")))
    }

    type WatchOperationStream = Pin<Box<dyn Stream<Item = Result<pb::Operation, Status>> + Send>>;

    async fn watch_operation(
        &self,
        r: Request<pb::WatchOperationRequest>,
    ) -> Result<Response<Self::WatchOperationStream>, Status> {
        let id = r.into_inner().id;
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
        Ok(Response::new(Box::pin(stream)))
    }
}

/// Serves `n` simulated agents on loopback; returns their addresses.
pub async fn serve_many(
    n: usize,
    version: &str,
    op_time: Duration,
    shutdown: CancellationToken,
) -> std::io::Result<Vec<SocketAddr>> {
    let mut addrs = Vec::with_capacity(n);
    for _ in 0..n {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        addrs.push(listener.local_addr()?);
        let sim = SimAgent::new(true, version, op_time);
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(AgentServer::new(sim))
                .serve_with_incoming_shutdown(crate::grpc_server::incoming(listener), async move {
                    stop.cancelled().await
                })
                .await;
        });
    }
    Ok(addrs)
}

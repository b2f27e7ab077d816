//! The `odp.agent.v1.Agent` gRPC service: it validates and translates
//! requests into supervisor calls and domain results back into proto. No
//! decisions are made here.
use std::{
    path::PathBuf,
    pin::Pin,
    sync::Arc,
    time::{Duration, SystemTime},
};

use futures::Stream;
use tokio::sync::watch;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::{
    config::{AgentConfig, MAX_EXIT_TIMEOUT},
    operation::{self, Kind, Phase},
    proto::agent as pb,
    supervisor::{self, Handle, ProxyState, SubmitError},
};

const MAX_REQUEST_ID: usize = 128;
const MAX_OPERATION_ID: usize = 64;

pub struct AgentService {
    sup: Handle,
    config: Arc<AgentConfig>,
}

impl AgentService {
    pub fn new(sup: Handle, config: Arc<AgentConfig>) -> Self {
        Self { sup, config }
    }

    async fn submit(
        &self,
        request: operation::Request,
        wait: bool,
    ) -> Result<Response<pb::Operation>, Status> {
        let span = tracing::info_span!("rpc", kind = request.kind.name(), request_id = ?request.request_id);
        // Instrumented, not entered: an entered span held across an await
        // would leak into whatever else runs on this thread meanwhile.
        let mut rx = self
            .sup
            .submit(request)
            .instrument(span)
            .await
            .map_err(submit_status)?;
        if wait {
            let _ = rx.wait_for(operation::Operation::is_finished).await;
        }
        let op = rx.borrow().clone();
        Ok(Response::new(operation_pb(&op)))
    }
}

#[tonic::async_trait]
impl pb::agent_server::Agent for AgentService {
    async fn get_status(
        &self,
        _request: Request<pb::GetStatusRequest>,
    ) -> Result<Response<pb::ProxyStatus>, Status> {
        let status = self.sup.status().await.ok_or_else(shutting_down)?;
        Ok(Response::new(status_pb(&status)))
    }

    async fn start(
        &self,
        request: Request<pb::StartRequest>,
    ) -> Result<Response<pb::Operation>, Status> {
        let r = request.into_inner();
        let request = operation::Request {
            kind: Kind::Start,
            request_id: request_id(&r.request_id)?,
            exit_timeout: None,
            binary: None,
        };
        self.submit(request, r.wait).await
    }

    async fn stop(
        &self,
        request: Request<pb::StopRequest>,
    ) -> Result<Response<pb::Operation>, Status> {
        let r = request.into_inner();
        let request = operation::Request {
            kind: Kind::Stop,
            request_id: request_id(&r.request_id)?,
            exit_timeout: None,
            binary: None,
        };
        self.submit(request, r.wait).await
    }

    async fn restart(
        &self,
        request: Request<pb::RestartRequest>,
    ) -> Result<Response<pb::Operation>, Status> {
        let r = request.into_inner();
        let kind = match pb::RestartMode::try_from(r.mode) {
            Ok(pb::RestartMode::Hot) => Kind::RestartHot,
            Ok(pb::RestartMode::Force) => Kind::RestartForce,
            _ => {
                return Err(Status::invalid_argument(format!(
                    "mode: {} is not RESTART_MODE_HOT (1) or RESTART_MODE_FORCE (2)",
                    r.mode
                )));
            }
        };
        let exit_timeout = r.exit_timeout.map(exit_timeout).transpose()?;
        let binary = (!r.binary.is_empty())
            .then(|| binary(&self.config, &r.binary))
            .transpose()?;
        if kind == Kind::RestartForce && (exit_timeout.is_some() || binary.is_some()) {
            return Err(Status::invalid_argument(
                "exit_timeout, binary: only a RESTART_MODE_HOT restart drains or changes binary",
            ));
        }
        let request = operation::Request {
            kind,
            request_id: request_id(&r.request_id)?,
            exit_timeout,
            binary,
        };
        self.submit(request, r.wait).await
    }

    async fn get_operation(
        &self,
        request: Request<pb::GetOperationRequest>,
    ) -> Result<Response<pb::Operation>, Status> {
        let id = operation_id(&request.into_inner().id)?;
        let op = self
            .sup
            .operation(id.clone())
            .await
            .ok_or_else(|| Status::not_found(format!("id: no operation {id:?}")))?;
        Ok(Response::new(operation_pb(&op)))
    }

    type WatchOperationStream = Pin<Box<dyn Stream<Item = Result<pb::Operation, Status>> + Send>>;

    async fn watch_operation(
        &self,
        request: Request<pb::WatchOperationRequest>,
    ) -> Result<Response<Self::WatchOperationStream>, Status> {
        let id = operation_id(&request.into_inner().id)?;
        let rx = self
            .sup
            .watch_operation(id.clone())
            .await
            .ok_or_else(|| Status::not_found(format!("id: no operation {id:?}")))?;
        Ok(Response::new(Box::pin(operation_stream(rx))))
    }
}

/// Every change of the operation, ending with its final state.
fn operation_stream(
    rx: watch::Receiver<operation::Operation>,
) -> impl Stream<Item = Result<pb::Operation, Status>> {
    futures::stream::unfold((rx, true, false), |(mut rx, first, done)| async move {
        if done {
            return None;
        }
        if !first && rx.changed().await.is_err() {
            return None;
        }
        let op = rx.borrow_and_update().clone();
        let finished = op.is_finished();
        Some((Ok(operation_pb(&op)), (rx, false, finished)))
    })
}

fn shutting_down() -> Status {
    Status::unavailable("the agent is shutting down")
}

fn submit_status(e: SubmitError) -> Status {
    match &e {
        SubmitError::Log(operation::LogError::Busy { .. })
        | SubmitError::NotServing { .. }
        | SubmitError::ListenersLost { .. } => Status::failed_precondition(e.to_string()),
        SubmitError::Log(operation::LogError::RequestIdReused { .. }) => {
            Status::already_exists(e.to_string())
        }
        SubmitError::ShuttingDown => Status::unavailable(e.to_string()),
    }
}

fn request_id(raw: &str) -> Result<Option<String>, Status> {
    if raw.is_empty() {
        return Ok(None);
    }
    if raw.len() > MAX_REQUEST_ID {
        return Err(Status::invalid_argument(format!(
            "request_id: {} bytes, at most {MAX_REQUEST_ID}",
            raw.len()
        )));
    }
    if !raw.chars().all(|c| c.is_ascii_graphic()) {
        return Err(Status::invalid_argument(
            "request_id: only printable ASCII without spaces",
        ));
    }
    Ok(Some(raw.to_string()))
}

fn operation_id(raw: &str) -> Result<String, Status> {
    if raw.is_empty() {
        return Err(Status::invalid_argument("id: required"));
    }
    if raw.len() > MAX_OPERATION_ID || !raw.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        return Err(Status::invalid_argument(format!(
            "id: {raw:?} is not an operation id"
        )));
    }
    Ok(raw.to_string())
}

fn exit_timeout(d: prost_types::Duration) -> Result<Duration, Status> {
    if d.seconds < 0 || d.nanos < 0 || d.nanos >= 1_000_000_000 {
        return Err(Status::invalid_argument(format!(
            "exit_timeout: {}s {}ns is negative or malformed",
            d.seconds, d.nanos
        )));
    }
    let d = Duration::new(d.seconds as u64, d.nanos as u32);
    if d > MAX_EXIT_TIMEOUT {
        return Err(Status::invalid_argument(format!(
            "exit_timeout: {} is longer than the {} limit",
            humantime::format_duration(d),
            humantime::format_duration(MAX_EXIT_TIMEOUT)
        )));
    }
    Ok(d)
}

fn binary(config: &AgentConfig, raw: &str) -> Result<PathBuf, Status> {
    use std::os::unix::fs::PermissionsExt;
    if raw.len() > 4096 || raw.contains('\0') {
        return Err(Status::invalid_argument("binary: not a usable path"));
    }
    let path = config.obproxy.home.join(raw);
    let meta = std::fs::metadata(&path)
        .map_err(|e| Status::invalid_argument(format!("binary: {}: {e}", path.display())))?;
    if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
        return Err(Status::invalid_argument(format!(
            "binary: {} is not an executable file",
            path.display()
        )));
    }
    Ok(path)
}

fn timestamp(t: SystemTime) -> prost_types::Timestamp {
    t.into()
}

fn duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

pub fn operation_pb(op: &operation::Operation) -> pb::Operation {
    pb::Operation {
        id: op.id.clone(),
        kind: match op.kind {
            Kind::Start => pb::OperationKind::Start,
            Kind::Stop => pb::OperationKind::Stop,
            Kind::RestartHot => pb::OperationKind::RestartHot,
            Kind::RestartForce => pb::OperationKind::RestartForce,
            Kind::Respawn => pb::OperationKind::Respawn,
        } as i32,
        state: match op.state {
            operation::State::Running => pb::OperationState::Running,
            operation::State::Succeeded => pb::OperationState::Succeeded,
            operation::State::Failed => pb::OperationState::Failed,
        } as i32,
        phase: match op.phase {
            Phase::Queued => pb::OperationPhase::Queued,
            Phase::Binding => pb::OperationPhase::Binding,
            Phase::Spawning => pb::OperationPhase::Spawning,
            Phase::WaitingReady => pb::OperationPhase::WaitingReady,
            Phase::Draining => pb::OperationPhase::Draining,
            Phase::Stopping => pb::OperationPhase::Stopping,
            Phase::Killing => pb::OperationPhase::Killing,
            Phase::ClosingListeners => pb::OperationPhase::ClosingListeners,
            Phase::Done => pb::OperationPhase::Done,
        } as i32,
        error: op.error.clone().unwrap_or_default(),
        request_id: op.request_id.clone().unwrap_or_default(),
        created_at: Some(timestamp(op.created_at)),
        finished_at: op.finished_at.map(timestamp),
        pid: op.pid.unwrap_or(0),
        previous_pid: op.previous_pid.unwrap_or(0),
        events: op.events.clone(),
    }
}

fn process_pb(p: &supervisor::ProcessInfo) -> pb::ProxyProcess {
    pb::ProxyProcess {
        pid: p.pid,
        version: p.version.clone(),
        binary: p.binary.display().to_string(),
        started_at: Some(timestamp(p.started_at)),
        uptime: Some(duration(p.started_at.elapsed().unwrap_or_default())),
        usage: Some(pb::ProcessUsage {
            cpu_percent: p.cpu_percent,
            memory_bytes: p.memory_bytes,
        }),
        open_connections: p.open_connections,
    }
}

fn status_pb(s: &supervisor::Status) -> pb::ProxyStatus {
    let serving = s.serving.as_ref();
    pb::ProxyStatus {
        state: match s.state {
            ProxyState::Running => pb::ProxyState::Running,
            ProxyState::Stopped => pb::ProxyState::Stopped,
            ProxyState::Starting => pb::ProxyState::Starting,
            ProxyState::Stopping => pb::ProxyState::Stopping,
            ProxyState::Restarting => pb::ProxyState::Restarting,
            ProxyState::Upgrading => pb::ProxyState::Upgrading,
            ProxyState::Unavailable => pb::ProxyState::Unavailable,
        } as i32,
        pid: serving.map_or(0, |p| p.pid),
        version: serving.map_or_else(String::new, |p| p.version.clone()),
        uptime: serving.map(|p| duration(p.started_at.elapsed().unwrap_or_default())),
        restart_count: s.restart_count,
        listeners: s
            .listeners
            .iter()
            .map(|(addr, inode)| pb::Listener {
                address: addr.to_string(),
                socket_inode: *inode,
            })
            .collect(),
        serving: serving.map(process_pb),
        draining: s
            .draining
            .iter()
            .map(|(p, deadline)| pb::DrainingProcess {
                process: Some(process_pb(p)),
                deadline: Some(timestamp(*deadline)),
            })
            .collect(),
        operation: s.operation.as_ref().map(operation_pb),
        desired_running: s.desired_running,
        last_exit: s.last_exit.clone().unwrap_or_default(),
        notices: s.notices.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_negative_exit_timeout_names_the_field() {
        let e = exit_timeout(prost_types::Duration {
            seconds: -1,
            nanos: 0,
        })
        .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().starts_with("exit_timeout:"));
    }

    #[test]
    fn an_absurd_exit_timeout_is_refused() {
        let e = exit_timeout(prost_types::Duration {
            seconds: 10 * 86400,
            nanos: 0,
        })
        .unwrap_err();
        assert!(e.message().contains("limit"));
    }

    #[test]
    fn zero_exit_timeout_means_cut_now() {
        assert_eq!(
            exit_timeout(prost_types::Duration::default()).unwrap(),
            Duration::ZERO
        );
    }

    #[test]
    fn request_ids_with_spaces_are_refused() {
        assert!(request_id("a b").is_err());
        assert_eq!(request_id("").unwrap(), None);
        assert!(request_id(&"x".repeat(200)).is_err());
    }
}

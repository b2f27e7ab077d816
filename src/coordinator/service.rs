//! The `odp.coordinator.v1.Coordinator` gRPC service: validation and
//! translation only; the task manager decides.
use std::{pin::Pin, sync::Arc, time::Duration};

use futures::Stream;
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use super::{
    config::valid_name,
    task::{self, Kind, Mode, Rollout, SubtaskState},
    tasks::{NewTask, TaskError, Tasks},
};
use crate::{
    config::MAX_EXIT_TIMEOUT,
    metrics::coordinator::CoordinatorMetrics,
    operations::describe,
    proto::{agent as apb, coordinator as pb},
};

const MAX_REQUEST_ID: usize = 128;
const MAX_PAUSE: Duration = Duration::from_secs(24 * 3600);

pub struct CoordinatorService {
    tasks: Arc<Tasks>,
    metrics: Arc<CoordinatorMetrics>,
}

impl CoordinatorService {
    pub fn new(tasks: Arc<Tasks>, metrics: Arc<CoordinatorMetrics>) -> Self {
        Self { tasks, metrics }
    }
}

fn task_status(e: TaskError) -> Status {
    let message = describe(&e);
    match e {
        TaskError::UnknownCluster(_) | TaskError::NotFound(_) => Status::not_found(message),
        TaskError::Refused(_)
        | TaskError::Finished { .. }
        | TaskError::StillRunning { .. }
        | TaskError::NothingToRetry { .. } => Status::failed_precondition(message),
        TaskError::RequestIdReused { .. } => Status::already_exists(message),
        TaskError::Store(_) => Status::internal(message),
    }
}

fn cluster(raw: &str) -> Result<String, Status> {
    if !valid_name(raw) {
        return Err(Status::invalid_argument(format!(
            "cluster: {raw:?} is not a cluster name (1 to 64 of A-Z a-z 0-9 - _ .)"
        )));
    }
    Ok(raw.to_string())
}

fn request_id(raw: &str) -> Result<Option<String>, Status> {
    if raw.is_empty() {
        return Ok(None);
    }
    if raw.len() > MAX_REQUEST_ID || !raw.chars().all(|c| c.is_ascii_graphic()) {
        return Err(Status::invalid_argument(format!(
            "request_id: at most {MAX_REQUEST_ID} printable ASCII characters without spaces"
        )));
    }
    Ok(Some(raw.to_string()))
}

fn task_id(raw: &str) -> Result<String, Status> {
    if raw.is_empty()
        || raw.len() > 64
        || !raw.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    {
        return Err(Status::invalid_argument(format!(
            "id: {raw:?} is not a task id"
        )));
    }
    Ok(raw.to_string())
}

fn duration(
    field: &str,
    d: Option<prost_types::Duration>,
    max: Duration,
) -> Result<Option<Duration>, Status> {
    let Some(d) = d else { return Ok(None) };
    if d.seconds < 0 || d.nanos < 0 || d.nanos >= 1_000_000_000 {
        return Err(Status::invalid_argument(format!(
            "{field}: must not be negative"
        )));
    }
    let d = Duration::new(d.seconds as u64, d.nanos as u32);
    if d > max {
        return Err(Status::invalid_argument(format!(
            "{field}: {} is longer than the {} limit",
            humantime::format_duration(d),
            humantime::format_duration(max)
        )));
    }
    Ok(Some(d))
}

fn rollout(
    batch_size: u32,
    batch_percent: u32,
    max_failures: u32,
    pause: Option<prost_types::Duration>,
) -> Result<Rollout, Status> {
    if batch_size > 0 && batch_percent > 0 {
        return Err(Status::invalid_argument(
            "batch_size, batch_percent: give one or the other",
        ));
    }
    if batch_percent > 100 {
        return Err(Status::invalid_argument(format!(
            "batch_percent: {batch_percent} is over 100"
        )));
    }
    if batch_size > 100_000 {
        return Err(Status::invalid_argument("batch_size: absurdly large"));
    }
    Ok(Rollout {
        batch_size: (batch_size > 0).then_some(batch_size),
        batch_percent: (batch_percent > 0).then_some(batch_percent),
        max_failures,
        pause: duration("pause", pause, MAX_PAUSE)?.unwrap_or_default(),
    })
}

#[tonic::async_trait]
impl pb::coordinator_server::Coordinator for CoordinatorService {
    async fn list_clusters(
        &self,
        _request: Request<pb::ListClustersRequest>,
    ) -> Result<Response<pb::ListClustersResponse>, Status> {
        let clusters = self
            .tasks
            .clusters()
            .iter()
            .map(|c| pb::Cluster {
                name: c.name.clone(),
                agents: c.agents.clone(),
            })
            .collect();
        Ok(Response::new(pb::ListClustersResponse { clusters }))
    }

    async fn get_cluster_status(
        &self,
        request: Request<pb::GetClusterStatusRequest>,
    ) -> Result<Response<pb::ClusterStatus>, Status> {
        self.metrics.cluster_status_requested();
        let name = cluster(&request.into_inner().cluster)?;
        let statuses = self
            .tasks
            .cluster_status(&name)
            .await
            .map_err(task_status)?;
        let odps = statuses
            .into_iter()
            .map(|(agent, s)| match s {
                Ok(s) => pb::OdpStatus {
                    agent,
                    state: s.state,
                    pid: s.pid,
                    version: s.version.clone(),
                    error: String::new(),
                    status: Some(s),
                },
                Err(e) => pb::OdpStatus {
                    agent,
                    state: apb::ProxyState::Unavailable as i32,
                    pid: 0,
                    version: String::new(),
                    error: describe(&e),
                    status: None,
                },
            })
            .collect();
        Ok(Response::new(pb::ClusterStatus {
            cluster: name,
            odps,
        }))
    }

    async fn stop_all(
        &self,
        request: Request<pb::StopAllRequest>,
    ) -> Result<Response<pb::Task>, Status> {
        let r = request.into_inner();
        let new = NewTask {
            cluster: cluster(&r.cluster)?,
            kind: Kind::StopAll,
            mode: None,
            rollout: rollout(r.batch_size, r.batch_percent, r.max_failures, r.pause)?,
            exit_timeout: None,
            request_id: request_id(&r.request_id)?,
        };
        let task = self.tasks.create(new).await.map_err(task_status)?;
        Ok(Response::new(task_pb(&task)))
    }

    async fn start_all(
        &self,
        request: Request<pb::StartAllRequest>,
    ) -> Result<Response<pb::Task>, Status> {
        let r = request.into_inner();
        let new = NewTask {
            cluster: cluster(&r.cluster)?,
            kind: Kind::StartAll,
            mode: None,
            rollout: rollout(r.batch_size, r.batch_percent, r.max_failures, r.pause)?,
            exit_timeout: None,
            request_id: request_id(&r.request_id)?,
        };
        let task = self.tasks.create(new).await.map_err(task_status)?;
        Ok(Response::new(task_pb(&task)))
    }

    async fn restart_all(
        &self,
        request: Request<pb::RestartAllRequest>,
    ) -> Result<Response<pb::Task>, Status> {
        let r = request.into_inner();
        let mode = match apb::RestartMode::try_from(r.mode) {
            Ok(apb::RestartMode::Hot) => Mode::Hot,
            Ok(apb::RestartMode::Force) => Mode::Force,
            _ => {
                return Err(Status::invalid_argument(format!(
                    "mode: {} is not RESTART_MODE_HOT (1) or RESTART_MODE_FORCE (2)",
                    r.mode
                )));
            }
        };
        let exit_timeout = duration("exit_timeout", r.exit_timeout, MAX_EXIT_TIMEOUT)?;
        if mode == Mode::Force && exit_timeout.is_some() {
            return Err(Status::invalid_argument(
                "exit_timeout: only a RESTART_MODE_HOT restart drains",
            ));
        }
        let new = NewTask {
            cluster: cluster(&r.cluster)?,
            kind: Kind::RestartAll,
            mode: Some(mode),
            rollout: rollout(r.batch_size, r.batch_percent, r.max_failures, r.pause)?,
            exit_timeout,
            request_id: request_id(&r.request_id)?,
        };
        let task = self.tasks.create(new).await.map_err(task_status)?;
        Ok(Response::new(task_pb(&task)))
    }

    async fn get_task(
        &self,
        request: Request<pb::GetTaskRequest>,
    ) -> Result<Response<pb::Task>, Status> {
        let id = task_id(&request.into_inner().id)?;
        let task = self.tasks.get(&id).map_err(task_status)?;
        Ok(Response::new(task_pb(&task)))
    }

    async fn list_tasks(
        &self,
        request: Request<pb::ListTasksRequest>,
    ) -> Result<Response<pb::ListTasksResponse>, Status> {
        let r = request.into_inner();
        let cluster = if r.cluster.is_empty() {
            None
        } else {
            Some(cluster(&r.cluster)?)
        };
        let limit = match r.limit {
            0 => 50,
            n if n > 1000 => return Err(Status::invalid_argument("limit: at most 1000")),
            n => n,
        };
        let tasks = self
            .tasks
            .list(cluster.as_deref(), limit)
            .map_err(task_status)?;
        Ok(Response::new(pb::ListTasksResponse {
            tasks: tasks.iter().map(task_pb).collect(),
        }))
    }

    type WatchTaskStream = Pin<Box<dyn Stream<Item = Result<pb::Task, Status>> + Send>>;

    async fn watch_task(
        &self,
        request: Request<pb::WatchTaskRequest>,
    ) -> Result<Response<Self::WatchTaskStream>, Status> {
        let id = task_id(&request.into_inner().id)?;
        let rx = self.tasks.watch(&id).map_err(task_status)?;
        Ok(Response::new(Box::pin(task_stream(rx))))
    }

    async fn cancel_task(
        &self,
        request: Request<pb::CancelTaskRequest>,
    ) -> Result<Response<pb::Task>, Status> {
        let id = task_id(&request.into_inner().id)?;
        let task = self.tasks.cancel(&id).map_err(task_status)?;
        Ok(Response::new(task_pb(&task)))
    }

    async fn retry_task(
        &self,
        request: Request<pb::RetryTaskRequest>,
    ) -> Result<Response<pb::Task>, Status> {
        let id = task_id(&request.into_inner().id)?;
        let task = self.tasks.retry(&id).map_err(task_status)?;
        Ok(Response::new(task_pb(&task)))
    }
}

/// Every change of the task, ending with its final state (also when the
/// runner is gone by the time the last change is read).
fn task_stream(rx: watch::Receiver<task::Task>) -> impl Stream<Item = Result<pb::Task, Status>> {
    futures::stream::unfold((rx, true, false), |(mut rx, first, done)| async move {
        if done {
            return None;
        }
        if !first && rx.changed().await.is_err() {
            // The sender is gone; its last value may not have been seen.
            // (Had it been seen, the stream would have ended with it.)
            let last = rx.borrow().clone();
            return last
                .is_finished()
                .then(|| (Ok(task_pb(&last)), (rx, false, true)));
        }
        let task = rx.borrow_and_update().clone();
        let finished = task.is_finished();
        Some((Ok(task_pb(&task)), (rx, false, finished)))
    })
}

fn ts(t: std::time::SystemTime) -> prost_types::Timestamp {
    t.into()
}

fn dur(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

pub fn task_pb(t: &task::Task) -> pb::Task {
    pb::Task {
        id: t.id.clone(),
        cluster: t.cluster.clone(),
        kind: match t.kind {
            Kind::StopAll => pb::TaskKind::StopAll,
            Kind::StartAll => pb::TaskKind::StartAll,
            Kind::RestartAll => pb::TaskKind::RestartAll,
        } as i32,
        mode: match t.mode {
            Some(Mode::Hot) => apb::RestartMode::Hot,
            Some(Mode::Force) => apb::RestartMode::Force,
            None => apb::RestartMode::Unspecified,
        } as i32,
        state: match t.state {
            task::State::Running => pb::TaskState::Running,
            task::State::Succeeded => pb::TaskState::Succeeded,
            task::State::Failed => pb::TaskState::Failed,
            task::State::Cancelled => pb::TaskState::Cancelled,
        } as i32,
        subtasks: t
            .subtasks
            .iter()
            .map(|s| pb::Subtask {
                agent: s.agent.clone(),
                state: match s.state {
                    SubtaskState::Pending => pb::SubtaskState::Pending,
                    SubtaskState::Running => pb::SubtaskState::Running,
                    SubtaskState::Succeeded => pb::SubtaskState::Succeeded,
                    SubtaskState::Failed => pb::SubtaskState::Failed,
                    SubtaskState::Unreachable => pb::SubtaskState::Unreachable,
                    SubtaskState::Skipped => pb::SubtaskState::Skipped,
                    SubtaskState::Cancelled => pb::SubtaskState::Cancelled,
                } as i32,
                batch: s.batch,
                attempts: s.attempts,
                started_at: s.started_at.map(ts),
                finished_at: s.finished_at.map(ts),
                last_error: s.last_error.clone().unwrap_or_default(),
                operation_id: s.operation_id.clone().unwrap_or_default(),
                pid: s.pid.unwrap_or(0),
                proxy_state: s.proxy_state,
            })
            .collect(),
        rollout: Some(pb::Rollout {
            batch_size: t.rollout.batch_size.unwrap_or(0),
            batch_percent: t.rollout.batch_percent.unwrap_or(0),
            max_failures: t.rollout.max_failures,
            pause: Some(dur(t.rollout.pause)),
        }),
        exit_timeout: t.exit_timeout.map(dur),
        request_id: t.request_id.clone().unwrap_or_default(),
        created_at: Some(ts(t.created_at)),
        finished_at: t.finished_at.map(ts),
        error: t.error.clone().unwrap_or_default(),
        batches: t.batches,
        current_batch: t.current_batch,
        cancel_requested: t.cancel_requested,
    }
}

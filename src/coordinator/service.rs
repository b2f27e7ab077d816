//! The `odp.coordinator.v1.Coordinator` gRPC service: it admits the caller
//! (the guard), validates ([`requests`]) and translates; the task manager
//! decides. Every mutating call is audited.
pub mod requests;

use std::{pin::Pin, sync::Arc, time::Duration};

use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use super::{
    task::{self, Kind, Mode, SubtaskState},
    tasks::{TaskError, Tasks},
};
use crate::{
    change_feed::Watcher,
    error_chain::describe,
    metrics::coordinator::CoordinatorMetrics,
    proto::{agent as apb, coordinator as pb},
    security::guard::Guard,
};

pub struct CoordinatorService {
    tasks: Arc<Tasks>,
    metrics: Arc<CoordinatorMetrics>,
    guard: Guard,
}

impl CoordinatorService {
    pub fn new(tasks: Arc<Tasks>, metrics: Arc<CoordinatorMetrics>, guard: Guard) -> Self {
        Self {
            tasks,
            metrics,
            guard,
        }
    }

    /// Admits the caller (before any validation: an unknown caller learns
    /// nothing about its arguments), runs `call`, and audits the outcome
    /// before answering.
    async fn mutate<T: Mutation>(
        &self,
        request: Request<T>,
        call: impl AsyncFnOnce(&T) -> Result<task::Task, Status>,
    ) -> Result<Response<pb::Task>, Status> {
        let (target, request_id) = {
            let r = request.get_ref();
            (r.target().to_string(), r.request_id().to_string())
        };
        let caller = self.guard.write(&request, T::RPC, &target, &request_id)?;
        let result = call(request.get_ref()).await;
        let id = result.as_ref().map(|t| t.id.as_str());
        self.guard.record(&caller, T::RPC, &target, &request_id, id);
        result.map(|t| Response::new(task_pb(&t)))
    }
}

/// A mutating request: its RPC name, what it acts on (a cluster or a task)
/// and its request id, for the audit log.
trait Mutation {
    const RPC: &'static str;
    fn target(&self) -> &str;
    fn request_id(&self) -> &str {
        ""
    }
}

macro_rules! cluster_mutation {
    ($t:ty, $rpc:literal) => {
        impl Mutation for $t {
            const RPC: &'static str = $rpc;
            fn target(&self) -> &str {
                &self.cluster
            }
            fn request_id(&self) -> &str {
                &self.request_id
            }
        }
    };
}
cluster_mutation!(pb::StopAllRequest, "StopAll");
cluster_mutation!(pb::StartAllRequest, "StartAll");
cluster_mutation!(pb::RestartAllRequest, "RestartAll");

macro_rules! task_mutation {
    ($t:ty, $rpc:literal) => {
        impl Mutation for $t {
            const RPC: &'static str = $rpc;
            fn target(&self) -> &str {
                &self.id
            }
        }
    };
}
task_mutation!(pb::CancelTaskRequest, "CancelTask");
task_mutation!(pb::RetryTaskRequest, "RetryTask");

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

#[tonic::async_trait]
impl pb::coordinator_server::Coordinator for CoordinatorService {
    async fn list_clusters(
        &self,
        request: Request<pb::ListClustersRequest>,
    ) -> Result<Response<pb::ListClustersResponse>, Status> {
        self.guard.read(&request, "ListClusters")?;
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
        self.guard.read(&request, "GetClusterStatus")?;
        self.metrics.cluster_status_requested();
        let name = requests::cluster(&request.into_inner().cluster)?;
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
        self.mutate(request, async |r| self.create(requests::stop_all(r)?).await)
            .await
    }

    async fn start_all(
        &self,
        request: Request<pb::StartAllRequest>,
    ) -> Result<Response<pb::Task>, Status> {
        self.mutate(request, async |r| {
            self.create(requests::start_all(r)?).await
        })
        .await
    }

    async fn restart_all(
        &self,
        request: Request<pb::RestartAllRequest>,
    ) -> Result<Response<pb::Task>, Status> {
        self.mutate(request, async |r| {
            self.create(requests::restart_all(r)?).await
        })
        .await
    }

    async fn get_task(
        &self,
        request: Request<pb::GetTaskRequest>,
    ) -> Result<Response<pb::Task>, Status> {
        self.guard.read(&request, "GetTask")?;
        let id = requests::task_id(&request.into_inner().id)?;
        let task = self.tasks.get(&id).map_err(task_status)?;
        Ok(Response::new(task_pb(&task)))
    }

    async fn list_tasks(
        &self,
        request: Request<pb::ListTasksRequest>,
    ) -> Result<Response<pb::ListTasksResponse>, Status> {
        self.guard.read(&request, "ListTasks")?;
        let (cluster, limit) = requests::list_tasks(request.get_ref())?;
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
        self.guard.read(&request, "WatchTask")?;
        let id = requests::task_id(&request.into_inner().id)?;
        let watcher = self.tasks.watch(&id).map_err(task_status)?;
        Ok(Response::new(Box::pin(task_stream(watcher))))
    }

    async fn cancel_task(
        &self,
        request: Request<pb::CancelTaskRequest>,
    ) -> Result<Response<pb::Task>, Status> {
        self.mutate(request, async |r| {
            self.tasks
                .cancel(&requests::task_id(&r.id)?)
                .await
                .map_err(task_status)
        })
        .await
    }

    async fn retry_task(
        &self,
        request: Request<pb::RetryTaskRequest>,
    ) -> Result<Response<pb::Task>, Status> {
        self.mutate(request, async |r| {
            self.tasks
                .retry(&requests::task_id(&r.id)?)
                .map_err(task_status)
        })
        .await
    }
}

impl CoordinatorService {
    async fn create(&self, new: super::tasks::NewTask) -> Result<task::Task, Status> {
        self.tasks.create(new).await.map_err(task_status)
    }
}

/// Every change of the task, ending with its final state; a watcher that
/// falls too far behind gets RESOURCE_EXHAUSTED saying how far, never a gap.
fn task_stream(watcher: Watcher<task::Task>) -> impl Stream<Item = Result<pb::Task, Status>> {
    watcher
        .until(task::Task::is_finished)
        .map(|change| match change {
            Ok(task) => Ok(task_pb(&task)),
            Err(behind) => Err(Status::resource_exhausted(format!("WatchTask: {behind}"))),
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

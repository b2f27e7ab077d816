//! The `odp.coordinator.v1.Coordinator` gRPC service: it admits the caller
//! (the guard), validates ([`requests`]) and translates; the task manager
//! decides. Every mutating call is audited.
pub mod balancer;
pub mod requests;

use std::{pin::Pin, sync::Arc, time::Duration};

use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use super::{
    task::{self, Kind, Mode, SubtaskState},
    task_manager::{NewTask, TaskError, Tasks},
};
use crate::{
    common::{change_feed::Watcher, error_chain::describe},
    coordinator::metrics::CoordinatorMetrics,
    proto::{agent as apb, coordinator as pb},
    security::{
        audit::Details,
        guard::{self, Call, Guard},
    },
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
    /// nothing about its arguments) and runs `act`, which validates and
    /// hands the task manager the hook that audits the admission in the step
    /// that admits it. A call that is not admitted is audited here.
    async fn mutate<T: Mutation>(
        &self,
        request: Request<T>,
        act: impl AsyncFnOnce(&T, &Call<'_>) -> Result<task::Task, Failed>,
    ) -> Result<Response<pb::Task>, Status> {
        let (target, request_id) = {
            let r = request.get_ref();
            (r.target().to_string(), r.request_id().to_string())
        };
        let caller = self.guard.write(&request, T::RPC, &target, &request_id)?;
        let call = Call {
            caller: &caller,
            rpc: T::RPC,
            target: &target,
            request_id: &request_id,
        };
        match act(request.get_ref(), &call).await {
            Ok(task) => Ok(Response::new(task_pb(&task))),
            Err(failed) => {
                if failed.audit {
                    self.guard.record(&call, failed.details, &failed.status);
                }
                Err(failed.status)
            }
        }
    }

    /// Creates a task, its admission audited with what was asked.
    async fn create(&self, call: &Call<'_>, new: NewTask) -> Result<task::Task, Failed> {
        let details = task_details(&new);
        let admit = self.guard.admission(call, details.clone());
        self.tasks
            .create(new, admit)
            .await
            .map_err(|e| Failed::task(e, details))
    }
}

/// A mutating call that was not admitted: what the caller is told, and
/// whether (and with what) it still needs its audit line.
struct Failed {
    status: Status,
    details: Details,
    /// False when the audit line itself could not be written.
    audit: bool,
}

impl Failed {
    fn invalid(status: Status) -> Self {
        Self {
            status,
            details: Vec::new(),
            audit: true,
        }
    }

    fn task(e: TaskError, details: Details) -> Self {
        match e {
            TaskError::NotRecorded(reason) => Self {
                status: guard::not_recorded(&reason),
                details,
                audit: false,
            },
            e => Self {
                status: task_status(e),
                details,
                audit: true,
            },
        }
    }
}

/// What the audit line of a cluster operation says was asked.
fn task_details(new: &NewTask) -> Details {
    let mut details: Details = Vec::new();
    if let Some(mode) = new.mode {
        let mode = match mode {
            Mode::Hot => "RESTART_MODE_HOT",
            Mode::Force => "RESTART_MODE_FORCE",
        };
        details.push(("mode", mode.into()));
    }
    if let Some(t) = new.exit_timeout {
        details.push((
            "exit_timeout",
            humantime::format_duration(t).to_string().into(),
        ));
    }
    if let Some(up) = &new.upgrade {
        details.push(("binary", up.binary.clone().into()));
        details.push(("binary_sha256", up.sha256.clone().into()));
        details.push(("canary_size", up.canary_size.into()));
        details.push((
            "canary_wait",
            humantime::format_duration(up.canary_wait)
                .to_string()
                .into(),
        ));
        details.push(("allow_downgrade", up.allow_downgrade.into()));
    }
    let r = &new.rollout;
    if let Some(n) = r.batch_size {
        details.push(("batch_size", n.into()));
    }
    if let Some(p) = r.batch_percent {
        details.push(("batch_percent", p.into()));
    }
    details.push(("max_failures", r.max_failures.into()));
    details.push((
        "pause",
        humantime::format_duration(r.pause).to_string().into(),
    ));
    details
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
cluster_mutation!(pb::UpgradeAllRequest, "UpgradeAll");

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
        // The metadb is down or cut off: another try (or coordinator) may do.
        TaskError::Store(e) | TaskError::Unrecorded(e) if e.is_unreachable() => {
            Status::unavailable(message)
        }
        TaskError::Store(_) => Status::internal(message),
        // A full disk is a resource running out; a read-only or failing one
        // must be fixed first. Either way no agent was called.
        TaskError::Unrecorded(source) if source.is_storage_full() => {
            Status::resource_exhausted(message)
        }
        TaskError::Unrecorded(_) => Status::failed_precondition(message),
        TaskError::NotRecorded(reason) => guard::not_recorded(&reason),
    }
}

#[tonic::async_trait]
impl pb::coordinator_server::Coordinator for CoordinatorService {
    async fn get_leader(
        &self,
        request: Request<pb::GetLeaderRequest>,
    ) -> Result<Response<pb::Leader>, Status> {
        self.guard.read(&request, "GetLeader")?;
        let view = self.tasks.leader().await.map_err(task_status)?;
        Ok(Response::new(match view.lease {
            Some(lease) => pb::Leader {
                holder: lease.holder,
                token: lease.token,
                expires_in: Some(dur(lease.remaining.unwrap_or_default())),
                this_coordinator: view.me,
                this_coordinator_leads: view.leading,
                store: "metadb".into(),
            },
            None => pb::Leader {
                holder: view.me.clone(),
                token: 0,
                expires_in: None,
                this_coordinator: view.me,
                this_coordinator_leads: view.leading,
                store: "sqlite".into(),
            },
        }))
    }

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
                load_balancer: c
                    .load_balancer
                    .as_ref()
                    .map(|lb| lb.kind.name().to_string())
                    .unwrap_or_default(),
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
        // The balancer is asked while the agents are.
        let (statuses, servers) = tokio::join!(
            self.tasks.cluster_status(&name),
            self.tasks.balancer_status(&name)
        );
        let statuses = statuses.map_err(task_status)?;
        let mut servers = servers.map(balancer::servers_pb).map(Vec::into_iter);
        let odps = statuses
            .into_iter()
            .map(|(agent, s)| (agent, s, servers.as_mut().and_then(Iterator::next)))
            .map(|(agent, s, balancer)| match s {
                Ok(seen) => pb::OdpStatus {
                    agent,
                    state: seen.status.state,
                    pid: seen.status.pid,
                    version: seen.status.version.clone(),
                    error: String::new(),
                    age: Some(dur(seen.age)),
                    status: Some(seen.status),
                    balancer,
                },
                Err(e) => pb::OdpStatus {
                    agent,
                    state: apb::ProxyState::Unavailable as i32,
                    pid: 0,
                    version: String::new(),
                    error: describe(&e),
                    status: None,
                    age: None,
                    balancer,
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
        self.mutate(request, async |r, call| {
            let new = requests::stop_all(r).map_err(Failed::invalid)?;
            self.create(call, new).await
        })
        .await
    }

    async fn start_all(
        &self,
        request: Request<pb::StartAllRequest>,
    ) -> Result<Response<pb::Task>, Status> {
        self.mutate(request, async |r, call| {
            let new = requests::start_all(r).map_err(Failed::invalid)?;
            self.create(call, new).await
        })
        .await
    }

    async fn restart_all(
        &self,
        request: Request<pb::RestartAllRequest>,
    ) -> Result<Response<pb::Task>, Status> {
        self.mutate(request, async |r, call| {
            let new = requests::restart_all(r).map_err(Failed::invalid)?;
            self.create(call, new).await
        })
        .await
    }

    async fn upgrade_all(
        &self,
        request: Request<pb::UpgradeAllRequest>,
    ) -> Result<Response<pb::Task>, Status> {
        self.mutate(request, async |r, call| {
            let new = requests::upgrade_all(r).map_err(Failed::invalid)?;
            self.create(call, new).await
        })
        .await
    }

    async fn get_task(
        &self,
        request: Request<pb::GetTaskRequest>,
    ) -> Result<Response<pb::Task>, Status> {
        self.guard.read(&request, "GetTask")?;
        let id = requests::task_id(&request.into_inner().id)?;
        let task = self.tasks.get(&id).await.map_err(task_status)?;
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
            .await
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
        let watcher = self.tasks.watch(&id).await.map_err(task_status)?;
        Ok(Response::new(Box::pin(task_stream(watcher))))
    }

    async fn cancel_task(
        &self,
        request: Request<pb::CancelTaskRequest>,
    ) -> Result<Response<pb::Task>, Status> {
        self.mutate(request, async |r, call| {
            let id = requests::task_id(&r.id).map_err(Failed::invalid)?;
            let admit = self.guard.admission(call, Vec::new());
            self.tasks
                .cancel(&id, admit)
                .await
                .map_err(|e| Failed::task(e, Vec::new()))
        })
        .await
    }

    async fn retry_task(
        &self,
        request: Request<pb::RetryTaskRequest>,
    ) -> Result<Response<pb::Task>, Status> {
        self.mutate(request, async |r, call| {
            let id = requests::task_id(&r.id).map_err(Failed::invalid)?;
            let admit = self.guard.admission(call, Vec::new());
            self.tasks
                .retry(&id, admit)
                .await
                .map_err(|e| Failed::task(e, Vec::new()))
        })
        .await
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
            Kind::UpgradeAll => pb::TaskKind::UpgradeAll,
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
            task::State::RolledBack => pb::TaskState::RolledBack,
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
                    SubtaskState::RollingBack => pb::SubtaskState::RollingBack,
                    SubtaskState::RolledBack => pb::SubtaskState::RolledBack,
                } as i32,
                batch: s.batch,
                attempts: s.attempts,
                started_at: s.started_at.map(ts),
                finished_at: s.finished_at.map(ts),
                last_error: s.last_error.clone().unwrap_or_default(),
                operation_id: s.operation_id.clone().unwrap_or_default(),
                pid: s.pid.unwrap_or(0),
                proxy_state: s.proxy_state,
                balancer: s.balancer.as_ref().map(balancer::note_pb),
                previous_binary: s
                    .upgrade
                    .as_ref()
                    .map_or_else(String::new, |u| u.previous_binary.clone()),
                previous_version: s
                    .upgrade
                    .as_ref()
                    .map_or_else(String::new, |u| u.previous_version.clone()),
                version: s
                    .upgrade
                    .as_ref()
                    .map_or_else(String::new, |u| u.version.clone()),
                rollback_operation_id: s
                    .upgrade
                    .as_ref()
                    .and_then(|u| u.rollback_operation_id.clone())
                    .unwrap_or_default(),
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
        store_error: t.store_error.clone().unwrap_or_default(),
        upgrade: t.upgrade.as_ref().map(|u| pb::Upgrade {
            binary: u.binary.clone(),
            binary_sha256: u.sha256.clone(),
            version: u.version.clone(),
            canary_size: u.canary_size,
            canary_wait: Some(dur(u.canary_wait)),
            allow_downgrade: u.allow_downgrade,
            rollback_reason: u.rollback.clone().unwrap_or_default(),
        }),
    }
}

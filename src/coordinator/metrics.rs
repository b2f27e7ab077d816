//! The coordinator's metrics: tasks finished and running, subtasks by how
//! they ended, and cluster status requests, counted through hooks in the
//! runner and the service.
use std::sync::Arc;

use axum::{Router, extract::State, response::Response, routing::get};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use crate::coordinator::task::{Kind, State as TaskState, SubtaskState};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TaskLabels {
    kind: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SubtaskLabels {
    state: &'static str,
}

pub struct CoordinatorMetrics {
    registry: Registry,
    tasks: Family<TaskLabels, Counter>,
    running: Gauge,
    subtasks: Family<SubtaskLabels, Counter>,
    cluster_status_requests: Counter,
    lease_changes: Family<LeaseLabels, Counter>,
    leader: Gauge,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LeaseLabels {
    event: &'static str,
}

/// Counts a task as running for as long as it is held (a runner holds it
/// for its whole run, whichever way the run ends).
pub struct RunningTask(Gauge);

impl Drop for RunningTask {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Default for CoordinatorMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl CoordinatorMetrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let tasks = Family::<TaskLabels, Counter>::default();
        registry.register(
            "odp_tasks",
            "Cluster tasks finished, by kind and outcome",
            tasks.clone(),
        );
        let running = Gauge::default();
        registry.register(
            "odp_tasks_running",
            "Cluster tasks running now",
            running.clone(),
        );
        let subtasks = Family::<SubtaskLabels, Counter>::default();
        registry.register(
            "odp_subtasks",
            "Subtasks (one ODP of a task) ended, by final state",
            subtasks.clone(),
        );
        registry.register(
            "odp_log_write_errors",
            "Log lines stderr did not take (dropped; logging goes on)",
            crate::common::telemetry::write_errors(),
        );
        let cluster_status_requests = Counter::default();
        registry.register(
            "odp_cluster_status_requests",
            "GetClusterStatus requests",
            cluster_status_requests.clone(),
        );
        let lease_changes = Family::<LeaseLabels, Counter>::default();
        registry.register(
            "odp_coordinator_lease_changes",
            "The metadb lease taken (acquired) or given up (lost) by this coordinator",
            lease_changes.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "odp_coordinator_is_leader",
            "1 while this coordinator holds the lease and runs tasks",
            leader.clone(),
        );
        Self {
            registry,
            tasks,
            running,
            subtasks,
            cluster_status_requests,
            lease_changes,
            leader,
        }
    }

    /// Hook: this coordinator took the lease (true) or lost it (false).
    pub fn lease(&self, held: bool) {
        let event = if held { "acquired" } else { "lost" };
        self.lease_changes
            .get_or_create(&LeaseLabels { event })
            .inc();
        self.leader.set(i64::from(held));
    }

    /// Hook: a runner starts; the task counts as running until the guard
    /// is dropped.
    pub fn task_running(&self) -> RunningTask {
        self.running.inc();
        RunningTask(self.running.clone())
    }

    /// Hook: a task reached its final state.
    pub fn task_finished(&self, kind: Kind, state: TaskState) {
        let labels = TaskLabels {
            kind: match kind {
                Kind::StopAll => "stop_all",
                Kind::StartAll => "start_all",
                Kind::RestartAll => "restart_all",
                Kind::UpgradeAll => "upgrade_all",
            },
            outcome: match state {
                TaskState::Running => "running",
                TaskState::Succeeded => "succeeded",
                TaskState::Failed => "failed",
                TaskState::Cancelled => "cancelled",
                TaskState::RolledBack => "rolled_back",
            },
        };
        self.tasks.get_or_create(&labels).inc();
    }

    /// Hook: a subtask ended (ran, or was skipped or cancelled).
    pub fn subtask_finished(&self, state: SubtaskState) {
        let state = match state {
            SubtaskState::Pending => "pending",
            SubtaskState::Running => "running",
            SubtaskState::Succeeded => "succeeded",
            SubtaskState::Failed => "failed",
            SubtaskState::Unreachable => "unreachable",
            SubtaskState::Skipped => "skipped",
            SubtaskState::Cancelled => "cancelled",
            SubtaskState::RollingBack => "rolling_back",
            SubtaskState::RolledBack => "rolled_back",
        };
        self.subtasks.get_or_create(&SubtaskLabels { state }).inc();
    }

    /// Hook: a GetClusterStatus request.
    pub fn cluster_status_requested(&self) {
        self.cluster_status_requests.inc();
    }

    /// `GET /metrics`.
    pub fn router(self: Arc<Self>) -> Router {
        Router::new()
            .route("/metrics", get(scrape))
            .with_state(self)
    }
}

async fn scrape(State(metrics): State<Arc<CoordinatorMetrics>>) -> Response {
    crate::common::metrics_endpoint::encode(&metrics.registry)
}

#[cfg(test)]
mod tests {
    use axum::body::to_bytes;

    use super::*;

    #[tokio::test]
    async fn hooks_show_in_a_scrape() {
        let metrics = Arc::new(CoordinatorMetrics::new());
        let running = metrics.task_running();
        metrics.subtask_finished(SubtaskState::Succeeded);
        metrics.subtask_finished(SubtaskState::Succeeded);
        metrics.task_finished(Kind::StartAll, TaskState::Succeeded);
        metrics.cluster_status_requested();
        let text = |m: &Arc<CoordinatorMetrics>| {
            let m = m.clone();
            async move {
                let body = scrape(State(m)).await.into_body();
                String::from_utf8(to_bytes(body, usize::MAX).await.unwrap().to_vec()).unwrap()
            }
        };
        let during = text(&metrics).await;
        drop(running);
        let after = text(&metrics).await;
        for line in [
            "odp_tasks_total{kind=\"start_all\",outcome=\"succeeded\"} 1",
            "odp_subtasks_total{state=\"succeeded\"} 2",
            "odp_cluster_status_requests_total 1",
        ] {
            assert!(after.lines().any(|l| l == line), "no {line:?} in\n{after}");
        }
        assert!(
            during.lines().any(|l| l == "odp_tasks_running 1"),
            "{during}"
        );
        assert!(after.lines().any(|l| l == "odp_tasks_running 0"), "{after}");
    }
}

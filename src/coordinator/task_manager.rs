//! The task manager: creates tasks (after the console's rules), runs each in
//! its own runner, resumes unfinished ones at start, and answers get, list,
//! watch, cancel and retry.
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    common::{
        change_feed::{Feed, Watcher},
        error_chain::describe,
    },
    coordinator::metrics::CoordinatorMetrics,
};

mod following;
mod leading;

use super::{
    agent_pool::AgentPool,
    config::CoordinatorConfig,
    live_status::{LiveStatus, Seen},
    load_balancer::{LbError, LoadBalancer, ServerStatus},
    rules::{self, Odp},
    runner::Runner,
    store::{Fence, Store, StoreError},
    task::upgrade::UpgradeRequest,
    task::{Kind, Mode, Rollout, State, SubtaskState, Task},
    upgrade_plan,
};

/// Each ODP's server name, and what the balancer says of each (or why it
/// could not be asked).
pub type BalancerStatuses = (
    Vec<String>,
    Result<Vec<Result<ServerStatus, LbError>>, LbError>,
);

#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    #[error("cluster: no cluster named {0:?}")]
    UnknownCluster(String),
    #[error("{0}")]
    Refused(String),
    #[error("id: no task {0:?}")]
    NotFound(String),
    #[error("task {id} is already {state:?}")]
    Finished { id: String, state: State },
    #[error("task {id} is still running; cancel it or wait for it")]
    StillRunning { id: String },
    #[error("task {id} succeeded: nothing to retry")]
    NothingToRetry { id: String },
    #[error("request_id {request_id:?} was used for task {id} ({}), not {}", used.name(), asked.name())]
    RequestIdReused {
        request_id: String,
        id: String,
        used: Kind,
        asked: Kind,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The task could not be written down, so no agent was called.
    #[error("refused before any agent was called: cannot record the task")]
    Unrecorded(#[source] StoreError),
    /// The admission could not be recorded (the audit log): refused.
    #[error("{0}")]
    NotRecorded(String),
}

/// Run in the step that admits a task (created, replayed, cancelled or
/// retried), before anything is done, with the task's id and whether the
/// request id was a replay: the audit log's line. An error refuses the call.
pub type OnAdmit = Box<dyn FnOnce(&str, bool) -> Result<(), String> + Send>;

/// A cluster operation as asked for (validated by the service).
#[derive(Debug, Clone)]
pub struct NewTask {
    pub cluster: String,
    pub kind: Kind,
    pub mode: Option<Mode>,
    pub rollout: Rollout,
    pub exit_timeout: Option<Duration>,
    pub request_id: Option<String>,
    /// Upgrade All: the binary, its SHA-256 and the canary.
    pub upgrade: Option<UpgradeRequest>,
}

/// Changes a WatchTask caller may fall behind before it is told so. A task
/// changes a few times per ODP (started, operation known, done), so a watcher
/// reading along never gets there; one that stops reading does.
pub const WATCH_BUFFER: usize = 256;

/// How often the metadb is read for what other coordinators changed: the
/// leader's poll for tasks (and cancels) accepted elsewhere, a follower's
/// WatchTask.
pub const POLL: Duration = Duration::from_millis(500);

/// How long CancelTask waits for the runner to write the cancel down. The
/// runner does it at once unless its store write is stuck.
const CANCEL_RECORDED: Duration = Duration::from_secs(10);

struct Live {
    feed: Arc<Feed<Task>>,
    cancel: CancellationToken,
}

impl Live {
    /// The runner has published its task's end and that end is in the store (a runner
    /// shows an end it could not store yet with `store_error`, and keeps trying).
    fn has_ended(&self) -> bool {
        let task = self.feed.latest();
        task.is_finished() && task.store_error.is_none()
    }
}

/// This coordinator's right to run tasks: with SQLite, from start to stop;
/// with a metadb, while it holds the lease.
#[derive(Clone)]
pub struct Term {
    /// The lease's token, which every runner's write carries.
    pub fence: Option<Fence>,
    /// Cancelled when the term ends: every runner of it stops at once,
    /// writing nothing more.
    pub stop: CancellationToken,
}

pub struct Tasks {
    config: Arc<CoordinatorConfig>,
    store: Arc<Store>,
    pool: Arc<AgentPool>,
    /// Every agent's status as it pushes it.
    statuses: Arc<LiveStatus>,
    live: Mutex<HashMap<String, Live>>,
    /// Each cluster's load balancer, by cluster name.
    balancers: HashMap<String, Arc<LoadBalancer>>,
    /// Serialises RetryTask, so two concurrent retries cannot both find the
    /// task idle and start two runners.
    retrying: tokio::sync::Mutex<()>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
    metrics: Arc<CoordinatorMetrics>,
    /// Some while this coordinator runs tasks.
    term: Mutex<Option<Term>>,
    /// The name this coordinator leads under (set once its listener is
    /// bound).
    name: std::sync::OnceLock<String>,
}

impl Tasks {
    pub fn new(
        config: Arc<CoordinatorConfig>,
        store: Arc<Store>,
        pool: Arc<AgentPool>,
        tracker: TaskTracker,
        shutdown: CancellationToken,
        metrics: Arc<CoordinatorMetrics>,
    ) -> Arc<Self> {
        let agents = config.clusters.iter().flat_map(|c| c.agents.clone());
        let statuses = LiveStatus::start(
            pool.clone(),
            agents,
            config.agents.status_timeout,
            &tracker,
            shutdown.clone(),
        );
        let balancers = config
            .clusters
            .iter()
            .filter_map(|c| {
                let lb = c.load_balancer.clone()?;
                Some((c.name.clone(), Arc::new(LoadBalancer::new(lb))))
            })
            .collect();
        Arc::new(Self {
            balancers,
            config,
            store,
            pool,
            statuses,
            live: Mutex::new(HashMap::new()),
            retrying: tokio::sync::Mutex::new(()),
            tracker,
            shutdown,
            metrics,
            term: Mutex::new(None),
            name: std::sync::OnceLock::new(),
        })
    }

    fn live(&self) -> std::sync::MutexGuard<'_, HashMap<String, Live>> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Picks up the tasks that were running when the coordinator stopped.
    /// Their running subtasks are asked again with the same request ids, so
    /// the agents answer with the operations they already ran.
    async fn resume_all(self: &Arc<Self>) -> Result<usize, StoreError> {
        let unfinished = self.store.unfinished().await?;
        let n = unfinished.len();
        for task in unfinished {
            tracing::info!(task_id = %task.id, "resuming task");
            self.launch(task);
        }
        Ok(n)
    }

    pub async fn create(self: &Arc<Self>, new: NewTask, admit: OnAdmit) -> Result<Task, TaskError> {
        let cluster = self
            .config
            .cluster(&new.cluster)
            .ok_or_else(|| TaskError::UnknownCluster(new.cluster.clone()))?;
        if let Some(rid) = &new.request_id
            && let Some(existing) = self.store.by_request_id(rid).await?
        {
            if existing.kind != new.kind {
                return Err(TaskError::RequestIdReused {
                    request_id: rid.clone(),
                    id: existing.id,
                    used: existing.kind,
                    asked: new.kind,
                });
            }
            admit(&existing.id, true).map_err(TaskError::NotRecorded)?;
            return Ok(self.snapshot(&existing.id).await?.unwrap_or(existing));
        }
        // Asked, not read from the live view: a rule checked against a status
        // a moment old could refuse (or admit) what the agents' state of now
        // would not. The usage is not asked afresh: the rules read none.
        let statuses = self.pool.states(&cluster.agents).await;
        let odps: Vec<Odp> = cluster
            .agents
            .iter()
            .zip(&statuses)
            .map(|(agent, s)| Odp {
                agent,
                status: s.as_ref().ok(),
            })
            .collect();
        rules::check(new.kind, new.mode, &odps).map_err(TaskError::Refused)?;
        let mut task = Task::new(
            &cluster.name,
            &cluster.agents,
            new.kind,
            new.mode,
            new.rollout,
            new.exit_timeout,
            new.request_id,
        );
        if let Some(ask) = &new.upgrade {
            task = upgrade_plan::plan(&self.pool, cluster, &statuses, task, ask)
                .await
                .map_err(TaskError::Refused)?;
        }
        // Written down before any RPC is sent.
        if let Err(e) = self.store.insert(&task).await {
            // The same request id, created concurrently (here or at another
            // coordinator): that task it is.
            if let Some(rid) = &task.request_id
                && let Ok(Some(existing)) = self.store.by_request_id(rid).await
            {
                admit(&existing.id, true).map_err(TaskError::NotRecorded)?;
                return Ok(self.snapshot(&existing.id).await?.unwrap_or(existing));
            }
            return Err(TaskError::Unrecorded(e));
        }
        // Audited before it runs; a line that cannot be written takes the
        // task back (no agent has been called).
        if let Err(reason) = admit(&task.id, false) {
            if let Err(e) = self.store.delete(&task.id).await {
                tracing::error!(task_id = %task.id, error = %describe(&e), "cannot take back a task whose admission was not recorded");
            }
            return Err(TaskError::NotRecorded(reason));
        }
        tracing::info!(task_id = %task.id, cluster = %task.cluster, kind = task.kind.name(), "task created");
        self.launch(task.clone());
        Ok(task)
    }

    /// Runs the task here if this coordinator leads and does not run it
    /// yet (the leader's poll finds its own tasks too); false otherwise.
    /// A follower leaves it in the store for the leader.
    fn launch(self: &Arc<Self>, task: Task) -> bool {
        let Some(term) = self.term() else {
            return false;
        };
        let feed = Arc::new(Feed::new(task.clone(), WATCH_BUFFER));
        let cancel = CancellationToken::new();
        let id = task.id.clone();
        {
            let mut live = self.live();
            // A runner whose task has ended may not have left the map yet (it publishes
            // the stored end, then leaves): a retry takes its place.
            if live.get(&id).is_some_and(|l| !l.has_ended()) {
                return false;
            }
            live.insert(
                id.clone(),
                Live {
                    feed: feed.clone(),
                    cancel: cancel.clone(),
                },
            );
        }
        let balancer = self.balancer(&task.cluster);
        let runner = Runner {
            task,
            store: self.store.clone(),
            fence: term.fence,
            pool: self.pool.clone(),
            feed,
            cancel,
            shutdown: term.stop,
            metrics: self.metrics.clone(),
            balancer,
        };
        let me = self.clone();
        let mine = runner.feed.clone();
        self.tracker.spawn(async move {
            runner.run().await;
            // Only its own entry: a retry may already have put the next run's there.
            let mut live = me.live();
            if live.get(&id).is_some_and(|l| Arc::ptr_eq(&l.feed, &mine)) {
                live.remove(&id);
            }
        });
        true
    }

    async fn snapshot(&self, id: &str) -> Result<Option<Task>, StoreError> {
        let live = self.live().get(id).map(|live| live.feed.latest());
        match live {
            Some(task) => Ok(Some(task)),
            None => self.store.get(id).await,
        }
    }

    pub async fn get(&self, id: &str) -> Result<Task, TaskError> {
        self.snapshot(id)
            .await?
            .ok_or_else(|| TaskError::NotFound(id.to_string()))
    }

    pub async fn list(&self, cluster: Option<&str>, limit: u32) -> Result<Vec<Task>, TaskError> {
        Ok(self.store.list(cluster, limit).await?)
    }

    /// A running task as it is now and every change to it, or the final
    /// state of a finished one.
    pub async fn watch(&self, id: &str) -> Result<Watcher<Task>, TaskError> {
        let live = self.live().get(id).map(|live| live.feed.watch());
        if let Some(watcher) = live {
            return Ok(watcher);
        }
        let task = self.get(id).await?;
        if task.is_finished() || self.store.metadb().is_none() {
            return Ok(Watcher::finished(task));
        }
        Ok(self.follow(task))
    }

    /// Stops further batches. Answers once the cancel is in the store (or the
    /// task has ended), so a coordinator restarted right after still honours
    /// it.
    pub async fn cancel(&self, id: &str, admit: OnAdmit) -> Result<Task, TaskError> {
        let live = self.live().get(id).map(|live| live.cancel.clone());
        let Some(cancel) = live else {
            return self.cancel_elsewhere(id, admit).await;
        };
        admit(id, false).map_err(TaskError::NotRecorded)?;
        cancel.cancel();
        let latest = self.live().get(id).map(|live| live.feed.subscribe_latest());
        let Some(mut latest) = latest else {
            // Ended meanwhile.
            return self.get(id).await;
        };
        tracing::info!(task_id = %id, "task cancel requested");
        let recorded = latest.wait_for(|t| t.cancel_requested || t.is_finished());
        if tokio::time::timeout(CANCEL_RECORDED, recorded)
            .await
            .is_err()
        {
            tracing::warn!(task_id = %id, "the cancel was not written down in time");
        }
        let mut task = latest.borrow().clone();
        task.cancel_requested = true;
        Ok(task)
    }

    /// Runs again every subtask that did not succeed, with new request ids.
    pub async fn retry(self: &Arc<Self>, id: &str, admit: OnAdmit) -> Result<Task, TaskError> {
        let _one_at_a_time = self.retrying.lock().await;
        // Its runner publishes the task's stored end before it leaves the map: such a
        // task is not running, whether or not it has left yet.
        let running = self.live().get(id).is_some_and(|l| !l.has_ended());
        if running {
            return Err(TaskError::StillRunning { id: id.to_string() });
        }
        let original = self.get(id).await?;
        // Run by another coordinator, the leader.
        if original.state == State::Running {
            return Err(TaskError::StillRunning { id: id.to_string() });
        }
        if original.state == State::Succeeded {
            return Err(TaskError::NothingToRetry { id: original.id });
        }
        // Its checks and its rollback are of the cluster as it was: a new
        // Upgrade All checks the cluster as it is now.
        if original.kind == Kind::UpgradeAll {
            return Err(TaskError::Refused(format!(
                "task {} is an Upgrade All: run UpgradeAll again (every check is repeated)",
                original.id
            )));
        }
        let mut task = original.clone();
        for s in &mut task.subtasks {
            match s.state {
                SubtaskState::Succeeded => continue,
                // Whether its last attempt happened is unknown: the same
                // request id asks the agent, which answers with what it did
                // (or does it now, once).
                SubtaskState::Unreachable => s.reconcile = true,
                // A new attempt: what the last one did is no longer its news.
                _ => {
                    s.generation += 1;
                    s.reconcile = false;
                    s.operation_id = None;
                    s.previous_pid = None;
                }
            }
            s.state = SubtaskState::Pending;
        }
        task.state = State::Running;
        task.finished_at = None;
        task.error = None;
        task.cancel_requested = false;
        task.current_batch = 0;
        // Written down first (what cannot be is not done), then audited; a
        // line that cannot be written puts the task back as it was.
        // Conditional: of coordinators retrying it at once, one wins.
        if !self
            .store
            .rerun(&task)
            .await
            .map_err(TaskError::Unrecorded)?
        {
            return Err(TaskError::StillRunning { id: id.to_string() });
        }
        if let Err(reason) = admit(&task.id, false) {
            if let Err(e) = self.store.put_back(&original).await {
                tracing::error!(task_id = %task.id, error = %describe(&e), "cannot put back a task whose retry was not recorded");
            }
            return Err(TaskError::NotRecorded(reason));
        }
        tracing::info!(task_id = %task.id, "task retried");
        self.launch(task.clone());
        Ok(task)
    }

    pub async fn cluster_status(
        &self,
        name: &str,
    ) -> Result<Vec<(String, Result<Seen, super::agent_pool::AgentError>)>, TaskError> {
        let cluster = self
            .config
            .cluster(name)
            .ok_or_else(|| TaskError::UnknownCluster(name.to_string()))?;
        let statuses = self.statuses.statuses(&cluster.agents).await;
        Ok(cluster.agents.iter().cloned().zip(statuses).collect())
    }

    /// The cluster's load balancer, and whether HOT restarts drain too.
    fn balancer(&self, cluster: &str) -> Option<(Arc<LoadBalancer>, bool)> {
        let lb = self.balancers.get(cluster)?.clone();
        let lb_drain = self.config.cluster(cluster).is_some_and(|c| c.lb_drain);
        Some((lb, lb_drain))
    }

    /// Every ODP's server in the cluster's load balancer, in agent order;
    /// None when the cluster has none.
    pub async fn balancer_status(&self, name: &str) -> Option<BalancerStatuses> {
        let cluster = self.config.cluster(name)?;
        let lb = self.balancers.get(name)?;
        let statuses = lb
            .statuses(&cluster.agents, self.config.agents.status_timeout)
            .await;
        let servers = cluster
            .agents
            .iter()
            .map(|a| lb.server(a).to_string())
            .collect();
        Some((servers, statuses))
    }

    pub fn clusters(&self) -> &[super::config::Cluster] {
        &self.config.clusters
    }
}

//! Tasks: a cluster-wide operation with one subtask per ODP, as stored and
//! as shown. Times are wall-clock so they survive a restart.
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

pub mod upgrade;

// The console's names for them, and the RPCs', all end in "All".
#[allow(clippy::enum_variant_names)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    StopAll,
    StartAll,
    RestartAll,
    UpgradeAll,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::StopAll => "Stop All",
            Kind::StartAll => "Start All",
            Kind::RestartAll => "Restart All",
            Kind::UpgradeAll => "Upgrade All",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mode {
    Hot,
    Force,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum State {
    Running,
    Succeeded,
    Failed,
    Cancelled,
    /// Upgrade All: an ODP failed and every ODP moved is back.
    RolledBack,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SubtaskState {
    Pending,
    Running,
    Succeeded,
    Failed,
    Unreachable,
    Skipped,
    Cancelled,
    /// Upgrade All: going back onto its previous binary.
    RollingBack,
    /// Upgrade All: back on its previous binary.
    RolledBack,
}

impl SubtaskState {
    pub fn is_failure(self) -> bool {
        matches!(self, SubtaskState::Failed | SubtaskState::Unreachable)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollout {
    pub batch_size: Option<u32>,
    pub batch_percent: Option<u32>,
    pub max_failures: u32,
    pub pause: Duration,
}

impl Rollout {
    /// ODPs per batch for a cluster of `n`: the count, the percentage rounded
    /// up (at least one), or everything at once.
    pub fn batch_len(&self, n: usize) -> usize {
        let len = match (self.batch_size, self.batch_percent) {
            (Some(size), _) => size as usize,
            (None, Some(pct)) => (n * pct as usize).div_ceil(100),
            (None, None) => n,
        };
        len.clamp(1, n.max(1))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Subtask {
    pub agent: String,
    pub state: SubtaskState,
    /// 1-based.
    pub batch: u32,
    pub attempts: u32,
    /// Bumped by RetryTask, so the retry's request id is new while a resumed
    /// attempt reuses its own (and the agent answers with the same operation).
    pub generation: u32,
    pub started_at: Option<SystemTime>,
    pub finished_at: Option<SystemTime>,
    pub last_error: Option<String>,
    pub operation_id: Option<String>,
    /// The pid that served when that operation began: after a restart of
    /// both coordinator and agent, a different pid proves it happened.
    #[serde(default)]
    pub previous_pid: Option<u32>,
    /// Retried after its agent was unreachable, so whether the last attempt
    /// happened is unknown: the retry asks for that attempt's operation and
    /// resends the same request id (the agent answers with what it already
    /// did) instead of starting the operation a second time.
    #[serde(default)]
    pub reconcile: bool,
    pub pid: Option<u32>,
    /// The agent's `ProxyState` wire value as last seen.
    pub proxy_state: i32,
    /// What was done with the ODP's server in the cluster's load balancer.
    #[serde(default)]
    pub balancer: Option<super::load_balancer::rotation::BalancerNote>,
    /// Upgrade All: what it ran before (its rollback target) and its
    /// rollback.
    #[serde(default)]
    pub upgrade: Option<upgrade::OdpUpgrade>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Task {
    pub id: String,
    pub cluster: String,
    pub kind: Kind,
    pub mode: Option<Mode>,
    pub state: State,
    pub subtasks: Vec<Subtask>,
    pub rollout: Rollout,
    pub exit_timeout: Option<Duration>,
    pub request_id: Option<String>,
    pub created_at: SystemTime,
    pub finished_at: Option<SystemTime>,
    pub error: Option<String>,
    pub batches: u32,
    pub current_batch: u32,
    pub cancel_requested: bool,
    /// Why the task's latest state is not in the store (a full or read-only
    /// disk); None once it is. Never stored itself.
    #[serde(skip)]
    pub store_error: Option<String>,
    /// Upgrade All: the binary, its version, the canary and the rollback.
    #[serde(default)]
    pub upgrade: Option<upgrade::Upgrade>,
}

impl Task {
    pub fn new(
        cluster: &str,
        agents: &[String],
        kind: Kind,
        mode: Option<Mode>,
        rollout: Rollout,
        exit_timeout: Option<Duration>,
        request_id: Option<String>,
    ) -> Self {
        let per_batch = rollout.batch_len(agents.len());
        let subtasks: Vec<Subtask> = agents
            .iter()
            .enumerate()
            .map(|(i, agent)| Subtask {
                agent: agent.clone(),
                state: SubtaskState::Pending,
                batch: (i / per_batch) as u32 + 1,
                attempts: 0,
                generation: 0,
                started_at: None,
                finished_at: None,
                last_error: None,
                operation_id: None,
                previous_pid: None,
                reconcile: false,
                pid: None,
                proxy_state: 0,
                balancer: None,
                upgrade: None,
            })
            .collect();
        let batches = subtasks.last().map_or(0, |s| s.batch);
        Self {
            id: format!("task-{}", uuid::Uuid::new_v4().simple()),
            cluster: cluster.to_string(),
            kind,
            mode,
            state: State::Running,
            subtasks,
            rollout,
            exit_timeout,
            request_id,
            created_at: SystemTime::now(),
            finished_at: None,
            error: None,
            batches,
            current_batch: 0,
            cancel_requested: false,
            store_error: None,
            upgrade: None,
        }
    }

    pub fn is_finished(&self) -> bool {
        self.state != State::Running
    }

    pub fn failures(&self) -> usize {
        self.subtasks
            .iter()
            .filter(|s| s.state.is_failure())
            .count()
    }

    /// The request id of a subtask's current attempt: derived from the task,
    /// the ODP and the retry generation, so a resumed task repeats no work.
    pub fn request_id_for(&self, index: usize) -> String {
        format!("{}.{}.{}", self.id, index, self.subtasks[index].generation)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agents(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("10.0.0.{i}:2889")).collect()
    }

    #[test]
    fn batches_follow_count_percent_or_all_at_once() {
        let r = |size, pct| Rollout {
            batch_size: size,
            batch_percent: pct,
            ..Default::default()
        };
        assert_eq!(r(None, None).batch_len(7), 7);
        assert_eq!(r(Some(2), None).batch_len(7), 2);
        assert_eq!(r(Some(20), None).batch_len(7), 7);
        assert_eq!(r(None, Some(30)).batch_len(7), 3);
        assert_eq!(r(None, Some(1)).batch_len(7), 1, "at least one ODP");
    }

    #[test]
    fn subtasks_are_numbered_into_batches() {
        let rollout = Rollout {
            batch_size: Some(2),
            ..Default::default()
        };
        let t = Task::new("c", &agents(5), Kind::StopAll, None, rollout, None, None);
        let batches: Vec<u32> = t.subtasks.iter().map(|s| s.batch).collect();
        assert_eq!(batches, [1, 1, 2, 2, 3]);
        assert_eq!(t.batches, 3);
    }

    #[test]
    fn request_ids_change_only_with_the_generation() {
        let mut t = Task::new(
            "c",
            &agents(2),
            Kind::StartAll,
            None,
            Rollout::default(),
            None,
            None,
        );
        let first = t.request_id_for(1);
        assert_eq!(first, t.request_id_for(1));
        t.subtasks[1].generation += 1;
        assert_ne!(first, t.request_id_for(1));
    }
}

//! Upgrade All: every ODP hot-upgraded onto another obproxy binary in
//! batches, the first batch a canary held for `canary_wait`, each ODP done
//! only on the new binary at its version; once an ODP fails beyond the
//! failure budget, no further batch starts and every ODP the task moved is
//! hot-upgraded back. The batches themselves are the runner's; this module
//! owns what an upgrade adds: [`precheck`] (everything confirmed before
//! anything moves) and [`rollback`].
pub mod precheck;
pub mod rollback;

use std::{sync::Arc, time::Duration, time::SystemTime};

use serde::{Deserialize, Serialize};

use super::{
    agents::Command,
    health_gate::{Expect, gate},
    runner::Runner,
    task::{Kind, SubtaskState, Task},
};
use crate::proto::agent as pb;

/// What an Upgrade All moves the ODPs onto, as stored with its task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Upgrade {
    /// As asked: every agent resolves it (home-relative or absolute).
    pub binary: String,
    pub sha256: String,
    /// What every agent's `-V` of the binary reported.
    pub version: String,
    pub canary_size: u32,
    pub canary_wait: Duration,
    pub allow_downgrade: bool,
    /// Why the task rolls back, written down before the first rollback
    /// call: a coordinator restarted after that resumes the rollback.
    pub rollback: Option<String>,
}

/// One ODP's side of an upgrade, recorded before anything moved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OdpUpgrade {
    /// The binary it served from before the task (its rollback target), as
    /// its agent reported it.
    pub previous_binary: String,
    /// The same file as its agent resolves it: what a restart onto it runs,
    /// and so the path its status shows after the rollback.
    pub rollback_binary: String,
    /// It is the agent's configured binary: a restart onto it names none.
    pub previous_configured: bool,
    pub previous_version: String,
    pub previous_sha256: String,
    /// The upgrade's binary as this agent resolved it.
    pub target_binary: String,
    /// The version the ODP reported as last seen.
    pub version: String,
    /// The agent's operation that moved it back.
    pub rollback_operation_id: Option<String>,
    /// Its rollback failed: a person must look at it.
    pub rollback_failed: bool,
    /// The rollback dealt with it (back, never moved, or failed).
    pub rollback_ended: bool,
}

/// What an Upgrade All asks, beyond the rollout (validated by the service).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpgradeRequest {
    pub binary: String,
    pub sha256: String,
    pub canary_size: u32,
    pub canary_wait: Duration,
    pub allow_downgrade: bool,
}

/// The agent call of an upgrade's subtask.
pub fn command(task: &Task) -> Command {
    Command::Upgrade {
        binary: Arc::from(task.upgrade.as_ref().map_or("", |u| u.binary.as_str())),
        exit_timeout: task.exit_timeout,
    }
}

/// What subtask `i` must show after its hot upgrade, beyond Running.
pub fn expect_after(task: &Task, i: usize) -> Option<Expect> {
    let up = task.upgrade.as_ref()?;
    let odp = task.subtasks[i].upgrade.as_ref()?;
    Some(Expect {
        binary: odp.target_binary.clone(),
        version: up.version.clone(),
    })
}

/// The wait before `batch`: the rollout's pause between batches, and after
/// an upgrade's canary (batch 1) at least what is left of `canary_wait`
/// since the canary's last ODP was done, so a coordinator restarted during
/// the hold still holds.
pub fn pause_before(task: &Task, batch: u32, ran_a_batch: bool) -> Duration {
    let pause = if ran_a_batch {
        task.rollout.pause
    } else {
        Duration::ZERO
    };
    let Some(up) = task
        .upgrade
        .as_ref()
        .filter(|_| task.kind == Kind::UpgradeAll)
    else {
        return pause;
    };
    if batch != 2 {
        return pause;
    }
    let canary_done = task
        .subtasks
        .iter()
        .filter(|s| s.batch == 1)
        .filter_map(|s| s.finished_at)
        .max();
    let held = canary_done
        .and_then(|t| SystemTime::now().duration_since(t).ok())
        .unwrap_or_default();
    pause.max(up.canary_wait.saturating_sub(held))
}

impl Runner {
    /// After the canary's hold, asks each canary ODP again whether it still
    /// serves from the new binary at its version (one that crashed meanwhile
    /// and was respawned on the configured binary does not). A canary that
    /// does not is FAILED. False when the failure budget is exceeded then.
    /// Not asked when the next batch (`todo`) is already in flight (a
    /// coordinator restarted during it): that batch is followed regardless.
    pub(super) async fn canary_holds(&mut self, todo: &[usize]) -> bool {
        let in_flight = todo
            .iter()
            .any(|&i| self.task.subtasks[i].state == SubtaskState::Running);
        if self.task.kind != Kind::UpgradeAll || in_flight {
            return true;
        }
        let canary: Vec<usize> = (0..self.task.subtasks.len())
            .filter(|&i| {
                let s = &self.task.subtasks[i];
                s.batch == 1 && s.state == SubtaskState::Succeeded
            })
            .collect();
        let checks = canary.iter().map(|&i| {
            let pool = self.pool.clone();
            let agent = self.task.subtasks[i].agent.clone();
            let expect = expect_after(&self.task, i);
            async move {
                let what = "the canary's hold";
                gate(
                    &pool,
                    &agent,
                    pb::ProxyState::Running,
                    expect.as_ref(),
                    what,
                )
                .await
            }
        });
        let outcomes = futures::future::join_all(checks).await;
        let mut changed = false;
        for (&i, outcome) in canary.iter().zip(outcomes) {
            if outcome.state == SubtaskState::Succeeded {
                continue;
            }
            let s = &mut self.task.subtasks[i];
            tracing::warn!(odp = %s.agent, error = ?outcome.error, "the canary failed during its hold");
            s.state = SubtaskState::Failed;
            s.last_error = outcome.error.map(|e| format!("after canary_wait: {e}"));
            s.pid = outcome.pid;
            s.proxy_state = outcome.proxy_state;
            if let (Some(u), Some(v)) = (s.upgrade.as_mut(), outcome.version) {
                u.version = v;
            }
            self.metrics.subtask_finished(SubtaskState::Failed);
            changed = true;
        }
        if changed {
            self.publish();
        }
        self.task.failures() <= self.task.rollout.max_failures as usize
    }
}

/// The batch of each of `n` ODPs: the first `canary` alone in batch 1, the
/// rest `per_batch` at a time.
pub fn batches(n: usize, canary: usize, per_batch: usize) -> Vec<u32> {
    let canary = canary.clamp(1, n.max(1));
    let per_batch = per_batch.max(1);
    (0..n)
        .map(|i| {
            if i < canary {
                1
            } else {
                2 + ((i - canary) / per_batch) as u32
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_canary_is_a_batch_of_its_own() {
        assert_eq!(batches(5, 1, 2), [1, 2, 2, 3, 3]);
        assert_eq!(batches(3, 1, 1), [1, 2, 3]);
        assert_eq!(batches(4, 2, 10), [1, 1, 2, 2]);
        assert_eq!(batches(2, 9, 1), [1, 1], "a canary of the whole cluster");
    }
}

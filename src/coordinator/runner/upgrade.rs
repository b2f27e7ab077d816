//! Upgrade All in the runner: each ODP's move is a HOT restart onto the
//! new binary, done only on that binary at its version; the canary, the
//! first batch, is held for `canary_wait` and asked again before the next
//! one. The batches themselves are the runner's; what follows a failure
//! beyond the budget is [`super::rollback`]. The checks before anything
//! moves are `upgrade_plan`'s.
use std::{sync::Arc, time::Duration, time::SystemTime};

use super::{
    Runner,
    health_gate::{Expect, gate},
};
use crate::{
    coordinator::{
        agent_pool::Command,
        task::{Kind, SubtaskState, Task},
    },
    proto::agent as pb,
};

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
            self.publish().await;
        }
        self.task.failures() <= self.task.rollout.max_failures as usize
    }
}

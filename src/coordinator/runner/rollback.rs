//! The automatic rollback of an Upgrade All: once an ODP failed beyond the
//! failure budget (and the batch in flight ended), every ODP the task moved
//! is hot-upgraded back onto the binary it ran before, all at once (each is
//! a hot restart: nothing is dropped). Why is written down before the first
//! call, and each ODP's rollback has its own request id, so a coordinator
//! restarted mid-rollback resumes it and repeats nothing: an ODP already
//! back is seen so by its status, one in flight answers with its operation.
//! A server the task left out of the cluster's load balancer (drained before
//! the ODP's move) is set ready again once its ODP is back.
use std::{sync::Arc, time::SystemTime};

use futures::{StreamExt, stream::FuturesUnordered};
use tokio::sync::mpsc;

use super::{
    Progress, Runner,
    health_gate::{Expect, gate},
    odp::follow,
};
use crate::{
    common::error_chain::describe,
    coordinator::{
        agent_pool::{AgentPool, Command},
        load_balancer::{
            LoadBalancer, ServerState,
            rotation::{BalancerNote, Plan, Rotation},
        },
        task::{State, SubtaskState, Task, upgrade::OdpUpgrade},
    },
    proto::agent as pb,
};

/// How one ODP's rollback ended.
enum End {
    /// Its agent shows it on its previous binary already.
    Unneeded {
        pid: u32,
        version: String,
    },
    Done {
        pid: u32,
        version: String,
    },
    Failed(String),
}

impl Runner {
    /// Rolls back if the failure budget is exceeded (or a rollback was under
    /// way when the coordinator stopped). False if the coordinator shuts
    /// down first: the store keeps the rollback, to resume.
    pub(super) async fn roll_back_if_needed(&mut self) -> bool {
        let Some(up) = self.task.upgrade.as_ref() else {
            return true;
        };
        if up.rollback.is_none() {
            let failures = self.task.failures();
            if failures <= self.task.rollout.max_failures as usize {
                return true;
            }
            let failed: Vec<String> = self
                .task
                .subtasks
                .iter()
                .filter(|s| s.state.is_failure())
                .map(|s| {
                    format!(
                        "{}: {}",
                        s.agent,
                        s.last_error.as_deref().unwrap_or("failed")
                    )
                })
                .collect();
            let reason = format!(
                "{failures} ODP(s) failed, max_failures is {}: {}",
                self.task.rollout.max_failures,
                failed.join("; ")
            );
            tracing::warn!(reason = %reason, "rolling back the upgrade");
            let now = SystemTime::now();
            for s in &mut self.task.subtasks {
                if s.state == SubtaskState::Pending {
                    s.state = SubtaskState::Skipped;
                    s.last_error = Some("not upgraded: the task rolled back".into());
                    s.finished_at = Some(now);
                    self.metrics.subtask_finished(SubtaskState::Skipped);
                }
            }
            if let Some(up) = self.task.upgrade.as_mut() {
                up.rollback = Some(reason);
            }
            // Written down before any rollback call.
            if !self.record().await {
                return false;
            }
        } else {
            tracing::info!("resuming the rollback of the upgrade");
        }
        let todo: Vec<usize> = (0..self.task.subtasks.len())
            .filter(|&i| needs_a_look(&self.task, i))
            .collect();
        let (op_tx, mut op_rx) = mpsc::unbounded_channel::<(usize, Progress)>();
        let mut running: FuturesUnordered<_> = todo
            .iter()
            .filter_map(|&i| {
                let s = &self.task.subtasks[i];
                let odp = s.upgrade.clone()?;
                let pool = self.pool.clone();
                let agent = s.agent.clone();
                let request_id = format!("{}.rollback", self.task.request_id_for(i));
                let exit_timeout = self.task.exit_timeout;
                let op_tx = op_tx.clone();
                let lb = self.balancer.as_ref().map(|(lb, _)| lb.clone());
                let note = s.balancer.clone();
                Some(async move {
                    let on_op = |id: String| {
                        let _ = op_tx.send((i, Progress::Operation(id, 0)));
                    };
                    let end =
                        roll_back_one(&pool, &agent, &odp, &request_id, exit_timeout, on_op).await;
                    let on_note = |note| {
                        let _ = op_tx.send((i, Progress::Balancer(note)));
                    };
                    let end = match lb {
                        Some(lb) => put_back(&lb, &agent, note, end, &on_note).await,
                        None => end,
                    };
                    (i, end)
                })
            })
            .collect();
        drop(op_tx);
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return false,
                Some((i, progress)) = op_rx.recv() => {
                    let s = &mut self.task.subtasks[i];
                    match progress {
                        Progress::Operation(id, _) => {
                            s.state = SubtaskState::RollingBack;
                            if let Some(u) = s.upgrade.as_mut() {
                                u.rollback_operation_id = Some(id);
                            }
                        }
                        Progress::Balancer(note) => s.balancer = Some(note),
                    }
                    self.publish().await;
                }
                next = running.next() => match next {
                    Some((i, end)) => {
                        self.note_rollback(i, end);
                        self.publish().await;
                    }
                    None => break,
                },
            }
        }
        true
    }

    fn note_rollback(&mut self, i: usize, end: End) {
        let s = &mut self.task.subtasks[i];
        let Some(odp) = s.upgrade.as_mut() else {
            return;
        };
        let back = format!("{} ({})", odp.previous_binary, odp.previous_version);
        let earlier = s.last_error.take();
        let with_earlier = |now: String| match &earlier {
            Some(e) => format!("{e}; {now}"),
            None => now,
        };
        match end {
            End::Unneeded { pid, version } => {
                odp.version = version;
                s.pid = (pid != 0).then_some(pid);
                if s.state.is_failure() {
                    // Its own upgrade failed and left it as it was.
                    s.last_error = Some(with_earlier(format!("still on {back}")));
                } else {
                    s.state = SubtaskState::RolledBack;
                    s.last_error = Some(with_earlier(format!("rolled back onto {back}")));
                }
            }
            End::Done { pid, version } => {
                odp.version = version;
                s.pid = (pid != 0).then_some(pid);
                s.state = SubtaskState::RolledBack;
                s.last_error = Some(with_earlier(format!("rolled back onto {back}")));
            }
            End::Failed(error) => {
                odp.rollback_failed = true;
                s.state = SubtaskState::Failed;
                s.last_error = Some(with_earlier(format!(
                    "the rollback onto {back} failed and needs a person: {error}"
                )));
            }
        }
        // Dealt with: a resumed rollback does not look at it again.
        odp.rollback_ended = true;
        s.proxy_state = pb::ProxyState::Running as i32;
        s.finished_at = Some(SystemTime::now());
        self.metrics.subtask_finished(s.state);
        tracing::info!(odp = %s.agent, state = ?s.state, error = ?s.last_error, "rollback done");
    }
}

/// Whether subtask `i` may have moved and its rollback has not ended: it
/// was attempted, and is neither back nor given up on.
fn needs_a_look(task: &Task, i: usize) -> bool {
    let s = &task.subtasks[i];
    let Some(odp) = &s.upgrade else {
        return false;
    };
    let touched = matches!(
        s.state,
        SubtaskState::Succeeded
            | SubtaskState::Failed
            | SubtaskState::Unreachable
            | SubtaskState::RollingBack
    );
    s.attempts > 0 && touched && !odp.rollback_ended
}

/// One ODP back onto its previous binary: nothing if its agent shows it
/// there already; else, once its agent confirms the file is still the one
/// it ran (its SHA-256), a HOT restart onto it (the same request id on a
/// resume, so an agent that ran it answers with that operation), then the
/// health gate on the previous binary and version.
async fn roll_back_one(
    pool: &AgentPool,
    agent: &str,
    odp: &OdpUpgrade,
    request_id: &str,
    exit_timeout: Option<std::time::Duration>,
    on_operation: impl Fn(String),
) -> End {
    match pool.status(agent).await {
        Ok(s) if is_back(odp, &s) => {
            return End::Unneeded {
                pid: s.pid,
                version: s.version,
            };
        }
        Ok(_) => {}
        Err(e) => return End::Failed(describe(&e)),
    }
    let binary = if odp.previous_configured {
        ""
    } else {
        odp.rollback_binary.as_str()
    };
    match pool.inspect(agent, binary).await {
        Ok(now) if now.sha256.eq_ignore_ascii_case(&odp.previous_sha256) => {}
        Ok(now) => {
            return End::Failed(format!(
                "{} changed since the upgrade began (SHA-256 {}, was {}): not run",
                now.binary, now.sha256, odp.previous_sha256
            ));
        }
        Err(e) => return End::Failed(describe(&e)),
    }
    let command = Command::Upgrade {
        binary: Arc::from(binary),
        exit_timeout,
    };
    let op = match pool.submit(agent, command, request_id).await {
        Ok(op) => op,
        Err(e) => return End::Failed(describe(&e)),
    };
    on_operation(op.id.clone());
    let op = match follow(pool, agent, op).await {
        Ok(op) => op,
        Err(e) => return End::Failed(describe(&e)),
    };
    if op.state() == pb::OperationState::Failed {
        return End::Failed(format!("operation {}: {}", op.id, op.error));
    }
    let expect = Expect {
        binary: odp.rollback_binary.clone(),
        version: odp.previous_version.clone(),
    };
    let what = format!("the rollback (operation {})", op.id);
    let gated = gate(pool, agent, pb::ProxyState::Running, Some(&expect), &what).await;
    match gated.state {
        SubtaskState::Succeeded => End::Done {
            pid: gated.pid.unwrap_or(0),
            version: gated.version.unwrap_or_default(),
        },
        _ => End::Failed(
            gated
                .error
                .unwrap_or_else(|| "the health gate failed".into()),
        ),
    }
}

/// An ODP back on its previous binary whose server the task left out of
/// the balancer (DRAIN: drained before its move, and left out when the move
/// failed) is set ready again, as it was before the task. A balancer that
/// refuses leaves the ODP serving but out of rotation: a person must look.
async fn put_back(
    lb: &LoadBalancer,
    agent: &str,
    note: Option<BalancerNote>,
    end: End,
    on_note: &(dyn Fn(BalancerNote) + Send + Sync),
) -> End {
    let left_out = note
        .as_ref()
        .is_some_and(|n| n.state == Some(ServerState::Drain));
    if matches!(end, End::Failed(_)) || !left_out {
        return end;
    }
    let plan = Plan {
        drain: false,
        end: ServerState::Ready,
        no_drain: "",
    };
    let mut rotation = Rotation::new(lb, agent, plan, note, on_note);
    match rotation
        .put_back("the ODP is back on its previous binary")
        .await
    {
        Ok(()) => end,
        Err(error) => End::Failed(error),
    }
}

/// Whether the ODP serves from its previous binary at its previous version
/// (by the path its status showed before the task, or the one a restart
/// onto it shows).
fn is_back(odp: &OdpUpgrade, s: &pb::ProxyStatus) -> bool {
    let binary = s.serving.as_ref().map_or("", |p| p.binary.as_str());
    s.state() == pb::ProxyState::Running
        && s.version == odp.previous_version
        && (binary == odp.previous_binary || binary == odp.rollback_binary)
}

/// An upgrade that rolled back ends ROLLED_BACK, or FAILED naming the ODPs
/// whose rollback failed (they need a person); any other task is left as
/// the runner concluded.
pub fn conclude(task: &mut Task) {
    let Some(reason) = task.upgrade.as_ref().and_then(|u| u.rollback.clone()) else {
        return;
    };
    let stuck: Vec<&str> = task
        .subtasks
        .iter()
        .filter(|s| s.upgrade.as_ref().is_some_and(|u| u.rollback_failed))
        .map(|s| s.agent.as_str())
        .collect();
    if stuck.is_empty() {
        task.state = State::RolledBack;
        task.error = Some(format!(
            "rolled back: every ODP moved is back on its previous binary; {reason}"
        ));
    } else {
        task.state = State::Failed;
        task.error = Some(format!(
            "the rollback failed on {}: these ODPs need a person; {reason}",
            stuck.join(", ")
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coordinator::task::{Kind, Rollout};

    fn odp() -> OdpUpgrade {
        OdpUpgrade {
            previous_binary: "/h/./bin/obproxy".into(),
            rollback_binary: "/h/bin/obproxy".into(),
            previous_configured: true,
            previous_version: "4.2.3.0".into(),
            previous_sha256: "ab".repeat(32),
            target_binary: "/h/bin/obproxy-4.3.1".into(),
            version: "4.2.3.0".into(),
            rollback_operation_id: None,
            rollback_failed: false,
            rollback_ended: false,
        }
    }

    fn task(states: &[SubtaskState]) -> Task {
        let agents: Vec<String> = (0..states.len()).map(|i| format!("a{i}:2889")).collect();
        let mut t = Task::new(
            "c",
            &agents,
            Kind::UpgradeAll,
            None,
            Rollout::default(),
            None,
            None,
        );
        for (s, &state) in t.subtasks.iter_mut().zip(states) {
            s.state = state;
            s.attempts = u32::from(state != SubtaskState::Skipped);
            s.upgrade = Some(odp());
        }
        t.upgrade = Some(crate::coordinator::task::upgrade::Upgrade {
            binary: "bin/obproxy-4.3.1".into(),
            sha256: "cd".repeat(32),
            version: "4.3.1.0".into(),
            canary_size: 1,
            canary_wait: std::time::Duration::ZERO,
            allow_downgrade: false,
            rollback: Some("a1:2889 failed".into()),
        });
        t
    }

    #[test]
    fn every_odp_touched_is_looked_at_once_and_never_one_left_alone() {
        use SubtaskState::*;
        let mut t = task(&[Succeeded, Failed, Skipped, RollingBack, RolledBack]);
        let looked: Vec<bool> = (0..5).map(|i| needs_a_look(&t, i)).collect();
        assert_eq!(looked, [true, true, false, true, false]);
        t.subtasks[1].upgrade.as_mut().unwrap().rollback_ended = true;
        assert!(
            !needs_a_look(&t, 1),
            "a resumed rollback does not look again"
        );
    }

    #[test]
    fn a_rollback_ends_rolled_back_or_failed_naming_who_needs_a_person() {
        use SubtaskState::*;
        let mut t = task(&[RolledBack, Failed, Skipped]);
        conclude(&mut t);
        assert_eq!(t.state, State::RolledBack);
        assert!(t.error.as_deref().unwrap().contains("a1:2889 failed"));
        t.subtasks[0].upgrade.as_mut().unwrap().rollback_failed = true;
        conclude(&mut t);
        assert_eq!(t.state, State::Failed);
        let e = t.error.unwrap();
        assert!(e.contains("a0:2889") && e.contains("need a person"), "{e}");
    }

    #[test]
    fn back_means_running_the_previous_version_from_the_previous_file() {
        let status = |binary: &str, version: &str| pb::ProxyStatus {
            state: pb::ProxyState::Running as i32,
            version: version.into(),
            serving: Some(pb::ProxyProcess {
                binary: binary.into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(is_back(&odp(), &status("/h/./bin/obproxy", "4.2.3.0")));
        assert!(is_back(&odp(), &status("/h/bin/obproxy", "4.2.3.0")));
        assert!(!is_back(&odp(), &status("/h/bin/obproxy-4.3.1", "4.3.1.0")));
        assert!(!is_back(&odp(), &status("/h/bin/obproxy", "4.3.1.0")));
    }
}

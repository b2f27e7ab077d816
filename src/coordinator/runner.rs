//! Runs one task: batch by batch, each ODP's operation followed to its end
//! and through the health gate ([`odp`], with the load balancer's steps
//! around it; [`health_gate`]), the failure budget checked between batches,
//! every change written to the store before it is shown. An Upgrade All
//! adds its canary ([`upgrade`]) and, past the failure budget, its rollback
//! ([`rollback`]).
use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use futures::{FutureExt, StreamExt, stream::FuturesUnordered};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

mod balancer_plan;
mod health_gate;
mod odp;
mod rollback;
mod upgrade;

use super::{
    agent_pool::{AgentPool, Command},
    load_balancer::{LoadBalancer, rotation::BalancerNote},
    store::{Fence, Store, StoreError},
    task::{Kind, Mode, State, SubtaskState, Task},
};
use crate::{
    common::{change_feed::Feed, error_chain::describe},
    coordinator::metrics::CoordinatorMetrics,
    proto::agent as pb,
};

/// How soon a task write the store refused is tried again: once the disk
/// has room (or is writable) again, the task goes on within this.
const STORE_RETRY: Duration = Duration::from_secs(1);

pub struct Runner {
    pub task: Task,
    pub store: Arc<Store>,
    /// The lease token every write is conditional on (a metadb); None with
    /// SQLite, where this coordinator is the only one.
    pub fence: Option<Fence>,
    pub pool: Arc<AgentPool>,
    /// Every change, for GetTask and WatchTask, after it is in the store.
    pub feed: Arc<Feed<Task>>,
    /// CancelTask: no further batch.
    pub cancel: CancellationToken,
    /// The coordinator stopping, or its lease lost: leave the task as it
    /// is, to resume later (here or at the next leader).
    pub shutdown: CancellationToken,
    pub metrics: Arc<CoordinatorMetrics>,
    /// The cluster's load balancer, and whether HOT restarts drain too.
    pub balancer: Option<(Arc<LoadBalancer>, bool)>,
}

/// What a subtask reports while it runs, to be stored and shown.
enum Progress {
    /// The agent's operation and the pid that served before it.
    Operation(String, u32),
    /// What was done with the ODP's server in the load balancer.
    Balancer(BalancerNote),
}

/// How a batch ended.
#[derive(Debug, PartialEq, Eq)]
enum BatchEnd {
    /// Every ODP of the batch came to an end (or none started: cancelled
    /// while the store refused the batch).
    Done,
    /// The coordinator is shutting down: the store keeps the task running.
    Shutdown,
}

impl Runner {
    /// Writes the task to the store and shows it to its watchers. A write
    /// the store refuses is shown (`store_error`) and retried by the next
    /// one; callers that must not go on unwritten use [`Runner::record`].
    async fn publish(&mut self) -> bool {
        let saved = self.save().await;
        self.show();
        saved
    }

    /// Shows the task as it is now to GetTask and WatchTask.
    fn show(&self) {
        self.feed.replace(self.task.clone());
    }

    async fn save(&mut self) -> bool {
        match self.store.save(&self.task, self.fence).await {
            Ok(()) => {
                if self.task.store_error.take().is_some() {
                    tracing::info!("the task is recorded again");
                }
                true
            }
            // Another coordinator leads now: nothing more is written or
            // sent by this one; every runner of this lease stops.
            Err(e @ StoreError::Fenced { .. }) => {
                tracing::warn!(error = %describe(&e), "lease lost: stopping without writing");
                self.shutdown.cancel();
                false
            }
            Err(e) => {
                let error = describe(&e);
                if self.task.store_error.is_none() {
                    tracing::error!(error = %error, "cannot write the task; no agent is called until it is written");
                }
                self.task.store_error = Some(error);
                false
            }
        }
    }

    /// Writes the task, waiting as long as the store refuses. False if the
    /// coordinator shuts down first.
    async fn record(&mut self) -> bool {
        while !self.publish().await {
            if self.shutdown.is_cancelled() {
                return false;
            }
            tokio::select! {
                _ = tokio::time::sleep(STORE_RETRY) => {}
                _ = self.shutdown.cancelled() => return false,
            }
        }
        true
    }

    fn command(&self) -> Command {
        match (self.task.kind, self.task.mode) {
            (Kind::StopAll, _) => Command::Stop,
            (Kind::StartAll, _) => Command::Start,
            (Kind::RestartAll, mode) => Command::Restart {
                mode: if mode == Some(Mode::Force) {
                    pb::RestartMode::Force
                } else {
                    pb::RestartMode::Hot
                },
                exit_timeout: self.task.exit_timeout,
            },
            (Kind::UpgradeAll, _) => upgrade::command(&self.task),
        }
    }

    fn expected(&self) -> pb::ProxyState {
        match self.task.kind {
            Kind::StopAll => pb::ProxyState::Stopped,
            _ => pb::ProxyState::Running,
        }
    }

    fn mark_remaining(&mut self, state: SubtaskState, why: &str) {
        for s in &mut self.task.subtasks {
            if s.state == SubtaskState::Pending {
                s.state = state;
                self.metrics.subtask_finished(state);
                s.last_error = Some(why.to_string());
                s.finished_at = Some(SystemTime::now());
            }
        }
    }

    pub async fn run(mut self) {
        let span =
            tracing::info_span!("task", task_id = %self.task.id, cluster = %self.task.cluster);
        async move {
            let running = self.metrics.task_running();
            tracing::info!(
                kind = self.task.kind.name(),
                batches = self.task.batches,
                "task running"
            );
            // A cancel recorded before a coordinator restart still holds.
            if self.task.cancel_requested {
                self.cancel.cancel();
            }
            let mut ran_a_batch = false;
            for batch in 1..=self.task.batches {
                if self.shutdown.is_cancelled() {
                    return;
                }
                // Cancelled: no new ODP starts, but one whose operation was in
                // flight when the coordinator restarted is still followed to
                // its end.
                let cancelled = self.cancel.is_cancelled();
                let failures = self.task.failures();
                if !cancelled && failures > self.task.rollout.max_failures as usize {
                    let why = format!(
                        "failure budget exceeded: {failures} ODP(s) failed, max_failures is {}",
                        self.task.rollout.max_failures
                    );
                    self.mark_remaining(SubtaskState::Skipped, &why);
                    self.task.error = Some(why);
                    break;
                }
                let todo: Vec<usize> = self
                    .task
                    .subtasks
                    .iter()
                    .enumerate()
                    .filter(|(_, s)| {
                        s.batch == batch
                            && (s.state == SubtaskState::Running
                                || !cancelled && s.state == SubtaskState::Pending)
                    })
                    .map(|(i, _)| i)
                    .collect();
                if todo.is_empty() {
                    continue;
                }
                let pause = upgrade::pause_before(&self.task, batch, ran_a_batch);
                if !cancelled && !pause.is_zero() {
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => {}
                        _ = self.cancel.cancelled() => break,
                        _ = self.shutdown.cancelled() => return,
                    }
                }
                // An upgrade's canary must still be healthy after its hold;
                // if not, the failure budget decides (at the next batch, or
                // the rollback).
                if batch == 2 && !cancelled && !self.canary_holds(&todo).await {
                    continue;
                }
                self.task.current_batch = batch;
                if self.run_batch(&todo).await == BatchEnd::Shutdown {
                    return; // the store keeps the task running
                }
                ran_a_batch = true;
            }
            if self.cancel.is_cancelled() {
                self.task.cancel_requested = true;
                self.mark_remaining(SubtaskState::Cancelled, "the task was cancelled");
            }
            if self.task.kind == Kind::UpgradeAll && !self.roll_back_if_needed().await {
                return; // the store keeps the rollback to resume
            }
            drop(running); // before finish() shows the final state
            self.finish().await;
            tracing::info!(state = ?self.task.state, error = ?self.task.error, "task finished");
        }
        .instrument(span)
        .await
    }

    async fn finish(&mut self) {
        let subs = &self.task.subtasks;
        let failed: Vec<String> = subs
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
        let skipped = subs
            .iter()
            .filter(|s| s.state == SubtaskState::Skipped)
            .count();
        let cancelled = subs.iter().any(|s| s.state == SubtaskState::Cancelled);
        self.task.state = if !failed.is_empty() || skipped > 0 {
            State::Failed
        } else if cancelled {
            State::Cancelled
        } else {
            State::Succeeded
        };
        if !failed.is_empty() {
            let summary = format!(
                "{} of {} ODPs failed: {}",
                failed.len(),
                subs.len(),
                failed.join("; ")
            );
            self.task.error = Some(match self.task.error.take() {
                Some(budget) => format!("{budget}; {summary}"),
                None => summary,
            });
        } else if cancelled && self.task.error.is_none() {
            self.task.error = Some("cancelled before every ODP was done".into());
        }
        rollback::conclude(&mut self.task);
        self.task.finished_at = Some(SystemTime::now());
        self.metrics.task_finished(self.task.kind, self.task.state);
        // The task stays live (GetTask answers from memory) until its end is
        // in the store; a coordinator stopped first resumes it from the
        // store and finds every operation again by its request id.
        self.record().await;
        self.feed.close();
    }

    fn note_progress(&mut self, i: usize, progress: Progress) {
        let s = &mut self.task.subtasks[i];
        match progress {
            Progress::Operation(op_id, previous_pid) => {
                s.operation_id = Some(op_id);
                s.previous_pid = (previous_pid != 0).then_some(previous_pid);
            }
            Progress::Balancer(note) => s.balancer = Some(note),
        }
    }

    fn note_outcome(&mut self, i: usize, outcome: health_gate::Outcome) {
        let s = &mut self.task.subtasks[i];
        s.state = outcome.state;
        self.metrics.subtask_finished(s.state);
        s.last_error = outcome.error;
        s.pid = outcome.pid;
        s.proxy_state = outcome.proxy_state;
        if let (Some(u), Some(v)) = (s.upgrade.as_mut(), outcome.version) {
            u.version = v;
        }
        s.reconcile = false;
        s.finished_at = Some(SystemTime::now());
        tracing::info!(odp = %s.agent, state = ?s.state, error = ?s.last_error, "subtask done");
    }

    /// Runs one batch to its end.
    async fn run_batch(&mut self, todo: &[usize]) -> BatchEnd {
        // A subtask already running was interrupted by a coordinator restart,
        // and one retried after its agent was unreachable may have run: its
        // agent is asked about that operation before anything is resent.
        let resumed: Vec<Option<(String, Option<u32>)>> = todo
            .iter()
            .map(|&i| {
                let s = &self.task.subtasks[i];
                (s.state == SubtaskState::Running || s.reconcile)
                    .then(|| s.operation_id.clone().map(|id| (id, s.previous_pid)))
                    .flatten()
            })
            .collect();
        // Written down before any RPC of this batch is sent: while the store
        // refuses, the batch waits, shown as not started.
        let before: Vec<_> = todo
            .iter()
            .map(|&i| self.task.subtasks[i].clone())
            .collect();
        // A cancel ends the wait unless an operation is already in flight
        // (a resumed attempt), which is followed to its end regardless.
        let in_flight = before.iter().any(|s| s.state == SubtaskState::Running);
        let plan = self
            .balancer
            .as_ref()
            .and_then(|(_, lb_drain)| balancer_plan::plan_for(&self.task, *lb_drain));
        loop {
            let now = SystemTime::now();
            for &i in todo {
                let s = &mut self.task.subtasks[i];
                if s.state == SubtaskState::Pending {
                    s.attempts += 1;
                    s.started_at = Some(now);
                    s.finished_at = None;
                }
                s.state = SubtaskState::Running;
                // The server may be drained from here on: known to a
                // coordinator restarted before the drain is even sent.
                if let (Some((lb, _)), Some(plan)) = (&self.balancer, plan) {
                    plan.intend(lb, &s.agent, &mut s.balancer);
                }
            }
            if self.save().await {
                break;
            }
            for (&i, s) in todo.iter().zip(&before) {
                self.task.subtasks[i] = s.clone();
            }
            self.show();
            tokio::select! {
                _ = tokio::time::sleep(STORE_RETRY) => {}
                _ = self.cancel.cancelled(), if !in_flight => return BatchEnd::Done,
                _ = self.shutdown.cancelled() => return BatchEnd::Shutdown,
            }
        }
        self.show();
        let command = self.command();
        let expected = self.expected();
        let (op_tx, mut op_rx) = mpsc::unbounded_channel::<(usize, Progress)>();
        let mut running: FuturesUnordered<_> = todo
            .iter()
            .zip(resumed)
            .map(|(&i, resumed)| {
                let pool = self.pool.clone();
                let agent = self.task.subtasks[i].agent.clone();
                let request_id = self.task.request_id_for(i);
                let op_tx = op_tx.clone();
                let lb = self.balancer.as_ref().map(|(lb, _)| lb.clone());
                let note = self.task.subtasks[i].balancer.clone();
                let command = command.clone();
                let expect = upgrade::expect_after(&self.task, i);
                async move {
                    let call = odp::Call {
                        command,
                        request_id: &request_id,
                        expected,
                        expect,
                        resumed,
                    };
                    let balanced =
                        lb.as_deref()
                            .zip(plan)
                            .map(|(lb, plan)| odp::Balanced { lb, plan, note });
                    let on_note = |note| {
                        let _ = op_tx.send((i, Progress::Balancer(note)));
                    };
                    let on_operation = |id, previous_pid| {
                        let _ = op_tx.send((i, Progress::Operation(id, previous_pid)));
                    };
                    let outcome =
                        odp::run(&pool, &agent, call, balanced, on_operation, &on_note).await;
                    (i, outcome)
                }
            })
            .collect();
        drop(op_tx);
        let mut done = false;
        while !done {
            let mut changed = false;
            tokio::select! {
                _ = self.shutdown.cancelled() => return BatchEnd::Shutdown,
                // What the store refused is written as soon as it can be.
                _ = tokio::time::sleep(STORE_RETRY), if self.task.store_error.is_some() => {
                    self.publish().await;
                }
                // Written down at once, so a coordinator restarted while this
                // batch finishes does not start the next one.
                _ = self.cancel.cancelled(), if !self.task.cancel_requested => {
                    self.task.cancel_requested = true;
                    changed = true;
                }
                Some((i, progress)) = op_rx.recv() => {
                    self.note_progress(i, progress);
                    changed = true;
                }
                next = running.next() => match next {
                    Some((i, outcome)) => {
                        self.note_outcome(i, outcome);
                        changed = true;
                    }
                    None => done = true,
                },
            }
            // What else is ready now goes into the same write: the ODPs of a
            // batch tend to answer and finish together, and each write is an
            // fsync the next batch would wait for.
            while !done {
                match running.next().now_or_never() {
                    Some(Some((i, outcome))) => {
                        self.note_outcome(i, outcome);
                        changed = true;
                    }
                    Some(None) => done = true,
                    None => break,
                }
            }
            // After the outcomes: a subtask reports what it did just before it
            // ends, within the same poll.
            while let Ok((i, progress)) = op_rx.try_recv() {
                self.note_progress(i, progress);
                changed = true;
            }
            if changed {
                self.publish().await;
            }
        }
        BatchEnd::Done
    }
}

//! A frozen peer (SIGSTOP, then SIGCONT): an agent frozen mid-operation is
//! UNREACHABLE within the coordinator's timeouts and a retry finishes its
//! operation without running it again; a coordinator frozen mid-task picks
//! it up where it was; an agent frozen past a drain deadline enforces it as
//! soon as it runs again.
use crate::common;

use std::time::{Duration, Instant};

use common::{
    Agent, Options, PATIENCE, alive,
    cluster::{CLUSTER, Cluster, Settings},
    signal,
};
use odp_agent::proto::{agent as pb, coordinator as cpb};

/// Timeouts short enough to see them hold: keepalive pings every second,
/// one second to answer.
const TIMEOUTS: &str = r#"connect_timeout = "1s"
status_timeout = "1s"
request_timeout = "3s""#;
const STATUS_TIMEOUT: Duration = Duration::from_secs(1);

fn settings() -> Settings {
    Settings {
        agents: TIMEOUTS.to_string(),
        ..Settings::default()
    }
}

/// `n` running agents.
async fn running_agents(n: usize) -> Vec<Agent> {
    let mut agents = Vec::new();
    for _ in 0..n {
        let agent = Agent::start().await;
        agent.start_proxy().await;
        agents.push(agent);
    }
    agents
}

async fn restart_all(cluster: &Cluster, batch_size: u32) -> cpb::Task {
    cluster
        .client()
        .await
        .restart_all(cpb::RestartAllRequest {
            cluster: CLUSTER.into(),
            mode: pb::RestartMode::Hot as i32,
            batch_size,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
}

async fn restart_counts(cluster: &Cluster) -> Vec<u32> {
    let mut counts = Vec::new();
    for a in &cluster.agents {
        counts.push(a.status().await.restart_count);
    }
    counts
}

/// SIGCONT on drop, so a failing test leaves nothing frozen behind.
struct Frozen(u32);

impl Frozen {
    fn freeze(pid: u32) -> Self {
        signal(pid, libc::SIGSTOP);
        Self(pid)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        signal(self.0, libc::SIGCONT);
    }
}

fn pidfd(pid: u32) -> std::os::fd::OwnedFd {
    // SAFETY: pidfd_open(pid, 0) returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as i32, 0) } as i32;
    assert!(fd >= 0, "pid {pid} is gone already");
    // SAFETY: a new fd we own.
    unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) }
}

/// Waits for the process behind `pidfd` to end (its pidfd turns readable).
fn wait_gone(pidfd: std::os::fd::OwnedFd, within: Duration) {
    use std::os::fd::AsRawFd;
    let mut pfd = libc::pollfd {
        fd: pidfd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let ready = unsafe { libc::poll(&mut pfd, 1, within.as_millis() as i32) };
    assert!(ready > 0, "the process did not end within {within:?}");
}

#[tokio::test]
async fn an_agent_frozen_mid_operation_is_unreachable_in_time_and_a_retry_finishes_it_once() {
    let agents = running_agents(2).await;
    agents[1].set_standin_env(&[("ODP_STANDIN_START_DELAY", "3s")]);
    let cluster = Cluster::with_settings(agents, settings());
    let task = restart_all(&cluster, 0).await;
    let started = cluster
        .watch_task_until(&task.id, |t| !t.subtasks[1].operation_id.is_empty())
        .await;
    let op_id = started.subtasks[1].operation_id.clone();

    let frozen = Frozen::freeze(cluster.agents[1].child.id());
    let since = Instant::now();
    let cut = cluster
        .watch_task_until(&task.id, |t| {
            t.subtasks[1].state() == cpb::SubtaskState::Unreachable
        })
        .await;
    let took = since.elapsed();
    assert_eq!(
        cut.subtasks[1].state(),
        cpb::SubtaskState::Unreachable,
        "{cut:?}"
    );
    // A missed keepalive ping (interval and timeout: status_timeout), then
    // one more question within status_timeout.
    assert!(
        took < 3 * STATUS_TIMEOUT + Duration::from_secs(2),
        "{took:?}"
    );
    let failed = cluster.wait_task(&task.id).await;
    assert_eq!(failed.state(), cpb::TaskState::Failed, "{failed:?}");
    assert_eq!(failed.subtasks[0].state(), cpb::SubtaskState::Succeeded);

    // Running again, the agent finishes the restart it had begun.
    drop(frozen);
    let finished = cluster.agents[1].wait_op(&op_id).await;
    assert_eq!(
        finished.state(),
        pb::OperationState::Succeeded,
        "{finished:?}\n{}\nobproxy output:\n{}",
        cluster.agents[1].logs(),
        cluster.agents[1].obproxy_output()
    );

    // The retry asks with the same request id and finds it done: the ODP is
    // restarted once, not twice.
    cluster
        .client()
        .await
        .retry_task(cpb::RetryTaskRequest {
            id: task.id.clone(),
        })
        .await
        .unwrap();
    let done = cluster.wait_task(&task.id).await;
    assert_eq!(done.state(), cpb::TaskState::Succeeded, "{done:?}");
    assert_eq!(done.subtasks[1].operation_id, op_id);
    assert_eq!(done.subtasks[1].pid, finished.pid);
    assert_eq!(restart_counts(&cluster).await, [1, 1]);
}

#[tokio::test]
async fn an_agent_frozen_for_a_moment_costs_nothing_the_coordinator_asks_again_and_follows_on() {
    let agents = running_agents(1).await;
    agents[0].set_standin_env(&[("ODP_STANDIN_START_DELAY", "4s")]);
    let cluster = Cluster::with_settings(agents, settings());
    let task = restart_all(&cluster, 0).await;
    let started = cluster
        .watch_task_until(&task.id, |t| !t.subtasks[0].operation_id.is_empty())
        .await;

    // Frozen until its unanswered keepalive ping drops the watch; running
    // again before the coordinator's question times out.
    let frozen = Frozen::freeze(cluster.agents[0].child.id());
    cluster
        .log
        .wait_for(|l| l.contains("lost the operation's watch; asking the agent again"));
    drop(frozen);

    let done = cluster.wait_task(&task.id).await;
    assert_eq!(done.state(), cpb::TaskState::Succeeded, "{done:?}");
    let s = &done.subtasks[0];
    assert_eq!(s.operation_id, started.subtasks[0].operation_id);
    assert_eq!(s.attempts, 1);
    assert_eq!(restart_counts(&cluster).await, [1]);
}

#[tokio::test]
async fn a_coordinator_frozen_mid_task_finishes_it_when_resumed_without_repeating_an_operation() {
    let agents = running_agents(2).await;
    for a in &agents {
        a.set_standin_env(&[("ODP_STANDIN_START_DELAY", "2s")]);
    }
    let cluster = Cluster::with_settings(agents, settings());
    let task = restart_all(&cluster, 0).await;
    let started = cluster
        .watch_task_until(&task.id, |t| {
            t.subtasks.iter().all(|s| !s.operation_id.is_empty())
        })
        .await;

    // Frozen while it follows both operations, for longer than its own
    // keepalive and status timeouts: the agents finish meanwhile.
    let frozen = Frozen::freeze(cluster.coordinator.id());
    let since = Instant::now();
    for (agent, s) in cluster.agents.iter().zip(&started.subtasks) {
        let op = agent.wait_op(&s.operation_id).await;
        assert_eq!(op.state(), pb::OperationState::Succeeded, "{op:?}");
    }
    assert!(since.elapsed() > 2 * STATUS_TIMEOUT);
    drop(frozen);

    let done = cluster.wait_task(&task.id).await;
    assert_eq!(done.state(), cpb::TaskState::Succeeded, "{done:?}");
    for (before, after) in started.subtasks.iter().zip(&done.subtasks) {
        assert_eq!(after.operation_id, before.operation_id);
        assert_eq!(after.attempts, 1);
    }
    assert_eq!(restart_counts(&cluster).await, [1, 1]);
}

#[tokio::test]
async fn an_agent_frozen_past_a_drain_deadline_enforces_it_as_soon_as_it_runs() {
    let agent = Agent::start_with(Options::default()).await;
    // The serving process will not drain on SIGUSR1: only the agent's
    // deadline (window + 2 s grace) ends it.
    agent.set_standin_env(&[("ODP_STANDIN_IGNORE_SIGNALS", "1")]);
    agent.start_proxy().await;
    let old = agent.status().await.pid;
    agent.set_standin_env(&[]);
    let op = agent
        .restart_with(pb::RestartRequest {
            mode: pb::RestartMode::Hot as i32,
            exit_timeout: Some(prost_types::Duration {
                seconds: 1,
                nanos: 0,
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    agent
        .watch_op_until(&op.id, |o| o.phase() == pb::OperationPhase::Draining)
        .await;
    let deadline = agent.status().await.draining[0]
        .deadline
        .map(|t| std::time::SystemTime::try_from(t).unwrap())
        .unwrap();

    let frozen = Frozen::freeze(agent.child.id());
    // What is under test is a deadline passing while the agent cannot act:
    // wait until it has.
    let past = deadline
        .duration_since(std::time::SystemTime::now())
        .unwrap_or_default()
        + Duration::from_millis(500);
    tokio::time::sleep(past).await;
    assert!(alive(old), "nothing but the agent ends the old process");

    let gone = pidfd(old);
    drop(frozen);
    let resumed = Instant::now();
    wait_gone(gone, PATIENCE);
    assert!(
        resumed.elapsed() < Duration::from_secs(1),
        "SIGKILL {:?} after the agent ran again",
        resumed.elapsed()
    );
    let done = agent.wait_op(&op.id).await;
    assert_eq!(done.state(), pb::OperationState::Succeeded, "{done:?}");
}

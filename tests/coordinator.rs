//! The coordinator runs the console's cluster operations across real agents
//! as tasks you can watch, cancel, retry and resume.
use crate::common;

use common::{
    alive,
    cluster::{CLUSTER, Cluster},
};
use odp_agent::proto::{agent as apb, coordinator as pb};

fn restart_all(mode: apb::RestartMode, batch_size: u32) -> pb::RestartAllRequest {
    pb::RestartAllRequest {
        cluster: CLUSTER.into(),
        mode: mode as i32,
        batch_size,
        ..Default::default()
    }
}

async fn start_all(cluster: &Cluster) -> pb::Task {
    let task = cluster
        .client()
        .await
        .start_all(pb::StartAllRequest {
            cluster: CLUSTER.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let done = cluster.wait_task(&task.id).await;
    assert_eq!(done.state(), pb::TaskState::Succeeded, "{done:?}");
    done
}

async fn pids(cluster: &Cluster) -> Vec<u32> {
    let mut pids = Vec::new();
    for a in &cluster.agents {
        pids.push(a.status().await.pid);
    }
    pids
}

#[tokio::test]
async fn start_all_restart_all_and_stop_all_end_to_end() {
    let cluster = Cluster::start(3).await;
    let started = start_all(&cluster).await;
    assert!(
        started
            .subtasks
            .iter()
            .all(|s| s.state() == pb::SubtaskState::Succeeded && s.pid != 0)
    );
    let before = pids(&cluster).await;

    let status = cluster
        .client()
        .await
        .get_cluster_status(pb::GetClusterStatusRequest {
            cluster: CLUSTER.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.odps.len(), 3);
    assert!(
        status
            .odps
            .iter()
            .all(|o| o.state() == apb::ProxyState::Running && o.version == "4.3.1.0")
    );

    let task = cluster
        .client()
        .await
        .restart_all(restart_all(apb::RestartMode::Hot, 0))
        .await
        .unwrap()
        .into_inner();
    let done = cluster.wait_task(&task.id).await;
    assert_eq!(done.state(), pb::TaskState::Succeeded, "{}", done.error);
    let after = pids(&cluster).await;
    for (b, a) in before.iter().zip(&after) {
        assert_ne!(b, a);
        assert!(!alive(*b));
    }

    let task = cluster
        .client()
        .await
        .stop_all(pb::StopAllRequest {
            cluster: CLUSTER.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let done = cluster.wait_task(&task.id).await;
    assert_eq!(done.state(), pb::TaskState::Succeeded, "{}", done.error);
    for a in &cluster.agents {
        assert_eq!(a.status().await.state(), apb::ProxyState::Stopped);
    }
    // Tasks are listed, newest first.
    let list = cluster
        .client()
        .await
        .list_tasks(pb::ListTasksRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.tasks.len(), 3);
    assert_eq!(list.tasks[0].id, task.id);
}

#[tokio::test]
async fn hot_restart_is_refused_unless_every_odp_runs_321_or_later() {
    let cluster = Cluster::start(3).await;
    cluster.agents[2].set_standin_env(&[("ODP_STANDIN_VERSION", "3.1.0")]);
    // A fresh home: the agent bootstraps the 3.1 obproxy (it binds the port itself once).
    // One ODP stopped: refused, naming it, and nothing touched.
    cluster.agents[0].start_proxy().await;
    cluster.agents[2].start_proxy().await;
    let before = pids(&cluster).await;
    let err = cluster
        .client()
        .await
        .restart_all(restart_all(apb::RestartMode::Hot, 0))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    let msg = err.message();
    assert!(
        msg.contains(&format!("{} is STOPPED", cluster.agents[1].grpc)),
        "{msg}"
    );
    assert!(
        msg.contains(&format!("{} runs 3.1.0", cluster.agents[2].grpc)),
        "{msg}"
    );
    assert_eq!(pids(&cluster).await, before);
    // Stop All is not refused by versions (nor by a stopped ODP).
    let task = cluster
        .client()
        .await
        .stop_all(pb::StopAllRequest {
            cluster: CLUSTER.into(),
            ..Default::default()
        })
        .await
        .expect("Stop All with a 3.1.0 ODP is accepted")
        .into_inner();
    let done = cluster.wait_task(&task.id).await;
    assert_eq!(done.state(), pb::TaskState::Succeeded, "{}", done.error);
    // Force Restart is always possible and, given a batch size, rolls.
    for a in &cluster.agents {
        a.start_proxy().await;
    }
    let task = cluster
        .client()
        .await
        .restart_all(restart_all(apb::RestartMode::Force, 1))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(task.batches, 3);
    let done = cluster.wait_task(&task.id).await;
    assert_eq!(done.state(), pb::TaskState::Succeeded, "{}", done.error);
}

#[tokio::test]
async fn a_rolling_restart_never_takes_more_than_a_batch_down() {
    let cluster = Cluster::start(4).await;
    start_all(&cluster).await;
    for a in &cluster.agents {
        a.set_standin_env(&[("ODP_STANDIN_START_DELAY", "300ms")]);
    }
    let task = cluster
        .client()
        .await
        .restart_all(restart_all(apb::RestartMode::Force, 2))
        .await
        .unwrap()
        .into_inner();
    let done = cluster.wait_task(&task.id).await;
    assert_eq!(done.state(), pb::TaskState::Succeeded, "{}", done.error);
    // From the subtasks' own timestamps: each batch ran its two ODPs, and no
    // batch started before the one before it had finished.
    for batch in 1..=2 {
        let members: Vec<_> = done.subtasks.iter().filter(|s| s.batch == batch).collect();
        assert_eq!(members.len(), 2, "batch {batch}");
    }
    let end_of_1 = done.subtasks[..2]
        .iter()
        .map(|s| ts(&s.finished_at))
        .max()
        .unwrap();
    let start_of_2 = done.subtasks[2..]
        .iter()
        .map(|s| ts(&s.started_at))
        .min()
        .unwrap();
    assert!(start_of_2 >= end_of_1);
}

fn ts(t: &Option<prost_types::Timestamp>) -> (i64, i32) {
    let t = t.as_ref().expect("timestamp");
    (t.seconds, t.nanos)
}

#[tokio::test]
async fn the_failure_budget_stops_the_rollout_and_later_odps_are_skipped() {
    let cluster = Cluster::start(4).await;
    cluster.agents[0].set_standin_env(&[("ODP_STANDIN_FAIL_START", "1")]);
    let task = cluster
        .client()
        .await
        .start_all(pb::StartAllRequest {
            cluster: CLUSTER.into(),
            batch_size: 1,
            max_failures: 0,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let done = cluster.wait_task(&task.id).await;
    assert_eq!(done.state(), pb::TaskState::Failed);
    assert!(
        done.error.contains("failure budget exceeded"),
        "{}",
        done.error
    );
    let states: Vec<_> = done.subtasks.iter().map(|s| s.state()).collect();
    assert_eq!(
        states,
        [
            pb::SubtaskState::Failed,
            pb::SubtaskState::Skipped,
            pb::SubtaskState::Skipped,
            pb::SubtaskState::Skipped
        ]
    );
    assert!(
        done.subtasks[0].last_error.contains("before it was ready"),
        "{}",
        done.subtasks[0].last_error
    );
    for a in &cluster.agents[1..] {
        assert_eq!(
            a.status().await.state(),
            apb::ProxyState::Stopped,
            "a skipped ODP was touched"
        );
    }
}

#[tokio::test]
async fn an_agent_killed_mid_rollout_is_unreachable_and_the_rest_follow_the_budget() {
    let mut cluster = Cluster::start(3).await;
    start_all(&cluster).await;
    for a in &cluster.agents {
        a.set_standin_env(&[("ODP_STANDIN_START_DELAY", "500ms")]);
    }
    let task = cluster
        .client()
        .await
        .restart_all(pb::RestartAllRequest {
            max_failures: 1,
            ..restart_all(apb::RestartMode::Force, 1)
        })
        .await
        .unwrap()
        .into_inner();
    cluster
        .watch_task_until(&task.id, |t| {
            t.subtasks[0].state() == pb::SubtaskState::Running
        })
        .await;
    // The third agent dies while the first batch is in flight.
    let victim = &mut cluster.agents[2];
    let _ = victim.child.kill();
    let _ = victim.child.wait();
    let done = cluster.wait_task(&task.id).await;
    assert_eq!(done.state(), pb::TaskState::Failed);
    let states: Vec<_> = done.subtasks.iter().map(|s| s.state()).collect();
    assert_eq!(
        states,
        [
            pb::SubtaskState::Succeeded,
            pb::SubtaskState::Succeeded,
            pb::SubtaskState::Unreachable
        ]
    );
    assert!(!done.subtasks[2].last_error.is_empty());
    // Cluster status answers at once with the dead agent UNAVAILABLE.
    let status = cluster
        .client()
        .await
        .get_cluster_status(pb::GetClusterStatusRequest {
            cluster: CLUSTER.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.odps[2].state(), apb::ProxyState::Unavailable);
    assert!(!status.odps[2].error.is_empty());
}

#[tokio::test]
async fn a_coordinator_killed_mid_task_resumes_without_repeating_a_restart() {
    let mut cluster = Cluster::start(3).await;
    start_all(&cluster).await;
    for a in &cluster.agents {
        a.set_standin_env(&[("ODP_STANDIN_START_DELAY", "700ms")]);
    }
    let task = cluster
        .client()
        .await
        .restart_all(restart_all(apb::RestartMode::Force, 1))
        .await
        .unwrap()
        .into_inner();
    // Kill it while the second ODP's restart is in flight at its agent.
    cluster
        .watch_task_until(&task.id, |t| {
            t.subtasks[1].state() == pb::SubtaskState::Running
                && !t.subtasks[1].operation_id.is_empty()
        })
        .await;
    cluster.crash_and_restart_coordinator();
    let done = cluster.wait_task(&task.id).await;
    assert_eq!(
        done.state(),
        pb::TaskState::Succeeded,
        "{}\n{}",
        done.error,
        cluster.logs()
    );
    for a in &cluster.agents {
        assert_eq!(
            a.status().await.restart_count,
            1,
            "an ODP was restarted twice"
        );
    }
    assert!(
        cluster.logs().contains("resuming task"),
        "{}",
        cluster.logs()
    );
}

#[tokio::test]
async fn cancel_stops_further_batches() {
    let cluster = Cluster::start(3).await;
    let task = cluster
        .client()
        .await
        .start_all(pb::StartAllRequest {
            cluster: CLUSTER.into(),
            batch_size: 1,
            pause: Some(prost_types::Duration {
                seconds: 30,
                nanos: 0,
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    cluster
        .watch_task_until(&task.id, |t| {
            t.subtasks[0].state() == pb::SubtaskState::Succeeded
        })
        .await;
    let cancelled = cluster
        .client()
        .await
        .cancel_task(pb::CancelTaskRequest {
            id: task.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(cancelled.cancel_requested);
    let done = cluster.wait_task(&task.id).await;
    assert_eq!(done.state(), pb::TaskState::Cancelled);
    let states: Vec<_> = done.subtasks.iter().map(|s| s.state()).collect();
    assert_eq!(
        states,
        [
            pb::SubtaskState::Succeeded,
            pb::SubtaskState::Cancelled,
            pb::SubtaskState::Cancelled
        ]
    );
    assert_eq!(
        cluster.agents[1].status().await.state(),
        apb::ProxyState::Stopped
    );
    // A finished task cannot be cancelled again.
    let err = cluster
        .client()
        .await
        .cancel_task(pb::CancelTaskRequest {
            id: task.id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
}

#[tokio::test]
async fn retry_reruns_only_the_failed_subtasks() {
    let cluster = Cluster::start(3).await;
    cluster.agents[1].set_standin_env(&[("ODP_STANDIN_FAIL_START", "1")]);
    let task = cluster
        .client()
        .await
        .start_all(pb::StartAllRequest {
            cluster: CLUSTER.into(),
            max_failures: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let failed = cluster.wait_task(&task.id).await;
    assert_eq!(failed.state(), pb::TaskState::Failed);
    let first_pid = cluster.agents[0].status().await.pid;
    cluster.agents[1].set_standin_env(&[]);
    let retried = cluster
        .client()
        .await
        .retry_task(pb::RetryTaskRequest {
            id: task.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(retried.state(), pb::TaskState::Running);
    let done = cluster.wait_task(&task.id).await;
    assert_eq!(done.state(), pb::TaskState::Succeeded, "{}", done.error);
    assert_eq!(done.subtasks[1].attempts, 2);
    assert_eq!(done.subtasks[0].attempts, 1);
    assert_eq!(
        cluster.agents[0].status().await.pid,
        first_pid,
        "a succeeded ODP was redone"
    );
}

#[tokio::test]
async fn bad_requests_name_the_field_and_change_nothing() {
    let cluster = Cluster::start(1).await;
    let mut c = cluster.client().await;
    let err = c
        .restart_all(pb::RestartAllRequest {
            cluster: CLUSTER.into(),
            mode: 0,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().starts_with("mode"), "{}", err.message());
    let err = c
        .stop_all(pb::StopAllRequest {
            cluster: CLUSTER.into(),
            batch_size: 1,
            batch_percent: 50,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(
        err.message().starts_with("batch_size, batch_percent"),
        "{}",
        err.message()
    );
    let err = c
        .stop_all(pb::StopAllRequest {
            cluster: "no such".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let err = c
        .stop_all(pb::StopAllRequest {
            cluster: "nosuch".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    let err = c
        .get_task(pb::GetTaskRequest {
            id: "task-nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    let list = c
        .list_tasks(pb::ListTasksRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(list.tasks.is_empty());
}

#[tokio::test]
async fn a_restart_is_not_repeated_when_coordinator_and_agent_both_restart_mid_task() {
    let mut cluster = Cluster::start(2).await;
    start_all(&cluster).await;
    for a in &cluster.agents {
        a.set_standin_env(&[("ODP_STANDIN_START_DELAY", "500ms")]);
    }
    let task = cluster
        .client()
        .await
        .restart_all(restart_all(apb::RestartMode::Force, 1))
        .await
        .unwrap()
        .into_inner();
    let first = cluster
        .watch_task_until(&task.id, |t| {
            t.subtasks[0].state() == pb::SubtaskState::Running
                && !t.subtasks[0].operation_id.is_empty()
        })
        .await;
    cluster.kill_coordinator();
    // The agent finishes the restart, then is restarted itself and forgets
    // the request id.
    let op_id = first.subtasks[0].operation_id.clone();
    cluster.agents[0].wait_op(&op_id).await;
    // Same gRPC address after its restart, as under systemd.
    let agent = &mut cluster.agents[0];
    let text = std::fs::read_to_string(&agent.config).unwrap();
    let fixed = text.replacen("127.0.0.1:0", &agent.grpc.to_string(), 1);
    std::fs::write(&agent.config, fixed).unwrap();
    agent.kill9_and_restart();
    assert_eq!(agent.status().await.restart_count, 1);
    cluster.start_coordinator();
    let done = cluster.wait_task(&task.id).await;
    assert_eq!(
        done.state(),
        pb::TaskState::Succeeded,
        "{}\n{}",
        done.error,
        cluster.logs()
    );
    assert_eq!(
        cluster.agents[0].status().await.restart_count,
        1,
        "the restart was repeated"
    );
}

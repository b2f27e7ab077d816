//! A full or read-only disk under the agent's `[state] dir` or the
//! coordinator's store: what cannot be written down is refused before
//! obproxy or any agent is touched, reads go on, nothing is left half
//! written, and everything resumes once the disk takes writes again. Each
//! test mounts its own small tmpfs (root only).
use crate::common;

use std::path::Path;

use common::{
    Agent, Options,
    cluster::{CLUSTER, Cluster, Settings},
    connect, echo,
    tmpfs::Tmpfs,
};
use odp_agent::proto::{agent as pb, coordinator as cpb};
use tonic::Code;

/// The agent's state file as JSON, and whether a temporary file was left.
fn state_file(dir: &Path) -> (serde_json::Value, bool) {
    let text = std::fs::read_to_string(dir.join("agent-state.json")).unwrap();
    let tmp_left = dir.join("agent-state.json.tmp").exists();
    (serde_json::from_str(&text).unwrap(), tmp_left)
}

fn serving_pid(state: &serde_json::Value) -> Vec<u64> {
    state["processes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["role"] == "serving")
        .map(|p| p["pid"].as_u64().unwrap())
        .collect()
}

async fn agent_on(disk: &Tmpfs) -> Agent {
    Agent::start_with(Options {
        state_dir: Some(disk.path().to_path_buf()),
        ..Default::default()
    })
    .await
}

async fn serves_sql(agent: &Agent) {
    let mut client = connect(agent.sql_addr().await).await.unwrap();
    echo(&mut client, b"still serving").await.unwrap();
}

fn unrecorded(status: &pb::ProxyStatus) -> bool {
    status
        .notices
        .iter()
        .any(|n| n.contains("could not be written"))
}

#[tokio::test]
#[cfg_attr(
    skip_root,
    ignore = "needs root to mount a tmpfs: built with ODP_TEST_SKIP_ROOT=1"
)]
async fn a_full_disk_refuses_operations_before_touching_obproxy_and_all_resumes_with_space() {
    let disk = Tmpfs::mount("1m");
    let agent = agent_on(&disk).await;
    let started = agent.start_proxy().await;
    let pid = agent.status().await.pid;
    let (before, _) = state_file(disk.path());

    disk.fill();
    let refused = agent
        .restart_with(pb::RestartRequest {
            mode: pb::RestartMode::Hot as i32,
            request_id: "after-the-disk-filled".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    for part in [
        "refused before touching obproxy",
        "agent-state.json",
        "No space left on device",
    ] {
        assert!(refused.message().contains(part), "{}", refused.message());
    }
    let stop = agent
        .client()
        .await
        .stop(pb::StopRequest {
            request_id: String::new(),
            wait: true,
        })
        .await
        .unwrap_err();
    assert_eq!(stop.code(), Code::ResourceExhausted, "{stop:?}");

    // Nothing was touched: the same obproxy serves, alone, and reads work.
    let status = agent.status().await;
    assert_eq!(status.state(), pb::ProxyState::Running);
    assert_eq!(status.pid, pid);
    assert!(status.operation.is_none(), "{status:?}");
    assert!(unrecorded(&status), "{:?}", status.notices);
    assert_eq!(agent.obproxy_pids(), vec![pid]);
    serves_sql(&agent).await;
    let op = agent
        .client()
        .await
        .get_operation(pb::GetOperationRequest {
            id: started.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(op.state(), pb::OperationState::Succeeded);
    // What is on disk is the last state written, whole, and no half file.
    let (now, tmp_left) = state_file(disk.path());
    assert_eq!(now, before);
    assert!(!tmp_left);

    // With space again the state is written without being asked, and the
    // refused request id was never used: it runs now, once.
    disk.free();
    agent.wait_status(|s| !unrecorded(s)).await;
    let op = agent
        .restart_with(pb::RestartRequest {
            mode: pb::RestartMode::Hot as i32,
            request_id: "after-the-disk-filled".into(),
            wait: true,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(op.state(), pb::OperationState::Succeeded, "{op:?}");
    assert_ne!(op.pid, pid);
    let (after, _) = state_file(disk.path());
    assert_eq!(serving_pid(&after), vec![u64::from(op.pid)]);
    serves_sql(&agent).await;
}

#[tokio::test]
#[cfg_attr(
    skip_root,
    ignore = "needs root to mount a tmpfs: built with ODP_TEST_SKIP_ROOT=1"
)]
async fn a_disk_that_fills_mid_restart_gets_the_state_once_it_has_room() {
    let disk = Tmpfs::mount("1m");
    let agent = agent_on(&disk).await;
    agent.start_proxy().await;
    let old = agent.status().await.pid;
    agent.set_standin_env(&[("ODP_STANDIN_START_DELAY", "1s")]);
    let op = agent.restart(pb::RestartMode::Hot, false).await.unwrap();
    // Admitted (its intent written); the disk fills while the new process
    // starts: the restart goes on, the state waits for room.
    agent
        .watch_op_until(&op.id, |o| o.phase() == pb::OperationPhase::WaitingReady)
        .await;
    disk.fill();
    let done = agent.wait_op(&op.id).await;
    assert_eq!(done.state(), pb::OperationState::Succeeded, "{done:?}");
    let status = agent.wait_status(unrecorded).await;
    assert_eq!(status.pid, done.pid);
    let (stale, tmp_left) = state_file(disk.path());
    assert_eq!(serving_pid(&stale), vec![u64::from(old)]);
    assert!(!tmp_left);
    serves_sql(&agent).await;

    disk.free();
    agent.wait_status(|s| !unrecorded(s)).await;
    let (written, tmp_left) = state_file(disk.path());
    assert_eq!(serving_pid(&written), vec![u64::from(done.pid)]);
    assert!(!tmp_left);
}

#[tokio::test]
#[cfg_attr(
    skip_root,
    ignore = "needs root to mount a tmpfs: built with ODP_TEST_SKIP_ROOT=1"
)]
async fn a_read_only_state_dir_refuses_stop_and_obproxy_keeps_serving() {
    let mut disk = Tmpfs::mount("1m");
    let agent = agent_on(&disk).await;
    agent.start_proxy().await;
    let pid = agent.status().await.pid;

    disk.make_read_only();
    let stop = agent
        .client()
        .await
        .stop(pb::StopRequest {
            request_id: "stop-on-read-only".into(),
            wait: true,
        })
        .await
        .unwrap_err();
    assert_eq!(stop.code(), Code::FailedPrecondition, "{stop:?}");
    assert!(
        stop.message().contains("Read-only file system"),
        "{}",
        stop.message()
    );
    let status = agent.status().await;
    assert_eq!((status.state(), status.pid), (pb::ProxyState::Running, pid));
    serves_sql(&agent).await;

    disk.make_writable();
    agent.wait_status(|s| !unrecorded(s)).await;
    let stopped = agent
        .client()
        .await
        .stop(pb::StopRequest {
            request_id: "stop-on-read-only".into(),
            wait: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        stopped.state(),
        pb::OperationState::Succeeded,
        "{stopped:?}"
    );
    let (state, _) = state_file(disk.path());
    assert_eq!(state["desired_running"], false);
}

fn on_store(disk: &Tmpfs) -> Settings {
    Settings {
        store: Some(disk.path().join("tasks.db")),
        ..Settings::default()
    }
}

async fn restart_counts(cluster: &Cluster) -> Vec<u32> {
    let mut counts = Vec::new();
    for a in &cluster.agents {
        counts.push(a.status().await.restart_count);
    }
    counts
}

#[tokio::test]
#[cfg_attr(
    skip_root,
    ignore = "needs root to mount a tmpfs: built with ODP_TEST_SKIP_ROOT=1"
)]
async fn a_coordinator_on_a_full_disk_refuses_new_tasks_calls_no_agent_and_keeps_answering() {
    let disk = Tmpfs::mount("4m");
    let agents = vec![Agent::start().await, Agent::start().await];
    for a in &agents {
        a.start_proxy().await;
    }
    let cluster = Cluster::with_settings(agents, on_store(&disk));
    let mut client = cluster.client().await;
    let first = client
        .restart_all(cpb::RestartAllRequest {
            cluster: CLUSTER.into(),
            mode: pb::RestartMode::Hot as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let first = cluster.wait_task(&first.id).await;
    assert_eq!(first.state(), cpb::TaskState::Succeeded, "{first:?}");

    disk.fill();
    let stop = cpb::StopAllRequest {
        cluster: CLUSTER.into(),
        request_id: "stop-on-a-full-disk".into(),
        ..Default::default()
    };
    let refused = client.stop_all(stop.clone()).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused
            .message()
            .contains("refused before any agent was called")
            && refused.message().contains("full"),
        "{}",
        refused.message()
    );
    let retry = client
        .retry_task(cpb::RetryTaskRequest {
            id: first.id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(retry.code(), Code::FailedPrecondition, "{retry:?}");
    for a in &cluster.agents {
        let s = a.status().await;
        assert_eq!(s.state(), pb::ProxyState::Running);
        assert!(s.operation.is_none(), "{s:?}");
    }
    // Reads answer from the store and the agents as before.
    let listed = client
        .list_tasks(cpb::ListTasksRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.tasks.len(), 1);
    let got = client
        .get_task(cpb::GetTaskRequest {
            id: first.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.state(), cpb::TaskState::Succeeded);
    let status = client
        .get_cluster_status(cpb::GetClusterStatusRequest {
            cluster: CLUSTER.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        status
            .odps
            .iter()
            .all(|o| o.state() == pb::ProxyState::Running),
        "{status:?}"
    );

    // With room again the same request runs, once.
    disk.free();
    let task = client.stop_all(stop).await.unwrap().into_inner();
    let done = cluster.wait_task(&task.id).await;
    assert_eq!(done.state(), cpb::TaskState::Succeeded, "{done:?}");
    for a in &cluster.agents {
        assert_eq!(a.status().await.state(), pb::ProxyState::Stopped);
    }
}

#[tokio::test]
#[cfg_attr(
    skip_root,
    ignore = "needs root to mount a tmpfs: built with ODP_TEST_SKIP_ROOT=1"
)]
async fn a_store_that_fills_between_batches_holds_the_next_batch_until_it_has_room() {
    let disk = Tmpfs::mount("4m");
    let agents = vec![Agent::start().await, Agent::start().await];
    for a in &agents {
        a.start_proxy().await;
    }
    let mut cluster = Cluster::with_settings(agents, on_store(&disk));
    let task = cluster
        .client()
        .await
        .restart_all(cpb::RestartAllRequest {
            cluster: CLUSTER.into(),
            mode: pb::RestartMode::Hot as i32,
            batch_size: 1,
            pause: Some(prost_types::Duration {
                seconds: 2,
                nanos: 0,
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    cluster
        .watch_task_until(&task.id, |t| {
            t.subtasks[0].state() == cpb::SubtaskState::Succeeded
        })
        .await;
    // In the pause: the second batch cannot be written down, so it is not
    // sent; the task says why.
    disk.fill();
    let held = cluster
        .watch_task_until(&task.id, |t| !t.store_error.is_empty())
        .await;
    assert_eq!(held.state(), cpb::TaskState::Running, "{held:?}");
    assert_eq!(held.subtasks[1].state(), cpb::SubtaskState::Pending);
    assert!(held.store_error.contains("full"), "{}", held.store_error);
    assert_eq!(restart_counts(&cluster).await, [1, 0]);
    let second = &cluster.agents[1].status().await;
    assert!(second.operation.is_none(), "{second:?}");

    disk.free();
    let done = cluster.wait_task(&task.id).await;
    assert_eq!(done.state(), cpb::TaskState::Succeeded, "{done:?}");
    assert!(done.store_error.is_empty());
    assert_eq!(restart_counts(&cluster).await, [1, 1]);
    // Its end is in the store: a new coordinator reads it from there.
    cluster.crash_and_restart_coordinator();
    let stored = cluster
        .client()
        .await
        .get_task(cpb::GetTaskRequest { id: task.id })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stored.state(), cpb::TaskState::Succeeded, "{stored:?}");
}

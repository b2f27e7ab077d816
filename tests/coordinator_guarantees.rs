//! What the coordinator promises at its edges: an agent that accepts a connection and never
//! answers costs `status_timeout`, never a hang; one request id makes one task however many
//! callers race with it; a cancel holds across a coordinator restart; and every watcher of a
//! task sees every change, or is told how far it fell behind.
use crate::common;

use std::time::{Duration, Instant};

use common::{
    Agent,
    cluster::{CLUSTER, Cluster},
};
use odp_agent::proto::{
    agent as apb,
    coordinator::{self as pb, coordinator_client::CoordinatorClient},
};
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};

/// The harness's `[agents] status_timeout`.
const STATUS_TIMEOUT: Duration = Duration::from_secs(3);

/// A loopback port that refuses connections and stays ours: bound, never listening.
fn refusing_port() -> (socket2::Socket, String) {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket
        .bind(&std::net::SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    let addr = socket.local_addr().unwrap().as_socket().unwrap();
    (socket, addr.to_string())
}

#[tokio::test]
async fn an_agent_that_accepts_and_never_answers_is_unavailable_after_status_timeout() {
    let (_refusing, refused) = refusing_port();
    // The kernel completes the TCP handshake into the backlog, but nothing ever accepts,
    // so no HTTP/2 answer comes: only the coordinator's own deadline ends the wait.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mute = silent.local_addr().unwrap().to_string();
    let agent = Agent::start().await;
    let cluster = Cluster::with_agents(vec![agent], &[refused.clone(), mute.clone()]);
    let started = Instant::now();
    let call = async {
        cluster
            .client()
            .await
            .get_cluster_status(pb::GetClusterStatusRequest {
                cluster: CLUSTER.into(),
            })
            .await
    };
    let status = tokio::time::timeout(common::PATIENCE, call)
        .await
        .expect("GetClusterStatus hung on the silent agent")
        .unwrap()
        .into_inner();
    let took = started.elapsed();
    assert!(
        took >= STATUS_TIMEOUT - Duration::from_millis(100)
            && took < STATUS_TIMEOUT + Duration::from_secs(1),
        "the silent agent should cost status_timeout ({STATUS_TIMEOUT:?}), not {took:?}"
    );
    assert_eq!(status.odps[0].state(), apb::ProxyState::Stopped);
    assert_eq!(status.odps[1].agent, refused);
    assert_eq!(status.odps[1].state(), apb::ProxyState::Unavailable);
    assert!(
        status.odps[1].error.contains("unreachable"),
        "{}",
        status.odps[1].error
    );
    assert_eq!(status.odps[2].agent, mute);
    assert_eq!(status.odps[2].state(), apb::ProxyState::Unavailable);
    assert!(
        status.odps[2].error.contains("did not answer within 3s"),
        "{}",
        status.odps[2].error
    );
}

#[tokio::test]
async fn one_request_id_makes_one_task_for_concurrent_and_later_callers() {
    let cluster = Cluster::start(2).await;
    let request = pb::StartAllRequest {
        cluster: CLUSTER.into(),
        request_id: "change-8".into(),
        ..Default::default()
    };
    // Each call checks the id, then asks every agent for its status before
    // writing the task: eight callers are all between the two at once.
    let calls = (0..8).map(|_| {
        let request = request.clone();
        let cluster = &cluster;
        async move {
            cluster
                .client()
                .await
                .start_all(request)
                .await
                .map(|t| t.into_inner().id)
        }
    });
    let ids: Vec<String> = futures::future::join_all(calls)
        .await
        .into_iter()
        .map(|r| r.expect("every caller gets the task"))
        .collect();
    assert!(ids.iter().all(|id| *id == ids[0]), "{ids:?}");
    let done = cluster.wait_task(&ids[0]).await;
    assert_eq!(done.state(), pb::TaskState::Succeeded, "{}", done.error);
    let list = cluster
        .client()
        .await
        .list_tasks(pb::ListTasksRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.tasks.len(), 1);
    // And later, once it has finished, the same id still answers with it.
    let again = cluster
        .client()
        .await
        .start_all(request)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.id, ids[0]);
    for agent in &cluster.agents {
        let starts = agent
            .logs()
            .lines()
            .filter(|l| l.contains("operation admitted") && l.contains("kind=\"start\""))
            .count();
        assert_eq!(starts, 1, "{}", agent.logs());
    }
}

#[tokio::test]
async fn a_cancel_holds_across_a_coordinator_restart() {
    let mut cluster = Cluster::start(3).await;
    // The first ODP takes its time, so the cancel lands while its batch is in flight.
    cluster.agents[0].set_standin_env(&[("ODP_STANDIN_START_DELAY", "2s")]);
    let task = cluster
        .client()
        .await
        .start_all(pb::StartAllRequest {
            cluster: CLUSTER.into(),
            batch_size: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    cluster
        .watch_task_until(&task.id, |t| {
            t.subtasks[0].state() == pb::SubtaskState::Running
                && !t.subtasks[0].operation_id.is_empty()
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
    // At once: the answer came after the cancel was written down.
    cluster.crash_and_restart_coordinator();
    let done = cluster.wait_task(&task.id).await;
    assert_eq!(
        done.state(),
        pb::TaskState::Cancelled,
        "{}\n{}",
        done.error,
        cluster.logs()
    );
    let states: Vec<_> = done.subtasks.iter().map(|s| s.state()).collect();
    assert_eq!(
        states,
        [
            pb::SubtaskState::Succeeded,
            pb::SubtaskState::Cancelled,
            pb::SubtaskState::Cancelled
        ],
        "the ODP in flight finishes; no further batch starts\n{}",
        cluster.logs()
    );
    assert!(
        cluster.logs().contains("resuming task"),
        "{}",
        cluster.logs()
    );
    assert_eq!(
        cluster.agents[0].status().await.state(),
        apb::ProxyState::Running
    );
    for agent in &cluster.agents[1..] {
        assert_eq!(agent.status().await.state(), apb::ProxyState::Stopped);
        assert!(agent.obproxy_pids().is_empty());
    }
}

/// A client whose HTTP/2 stream window is tiny: a watch it does not read stops the server
/// after a message or two, so every later change must wait in the coordinator's buffer.
async fn slow_client(cluster: &Cluster) -> CoordinatorClient<Channel> {
    let channel = Endpoint::from_shared(format!("http://{}", cluster.addr))
        .unwrap()
        .initial_stream_window_size(Some(1024))
        .connect()
        .await
        .unwrap();
    CoordinatorClient::new(channel)
}

/// `n` simulated agents (answering from memory) behind a coordinator, and a HOT Restart All
/// over them in batches of `batch_size`.
async fn simulated_restart(
    n: usize,
    batch_size: u32,
    stop: &CancellationToken,
) -> (Cluster, String) {
    let addrs = odp_agent::testkit::sim_agent::serve_many(
        n,
        "4.3.1.0",
        Duration::from_millis(5),
        stop.clone(),
    )
    .await
    .unwrap();
    let names: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
    let cluster = Cluster::with_agents(vec![], &names);
    let task = cluster
        .client()
        .await
        .restart_all(pb::RestartAllRequest {
            cluster: CLUSTER.into(),
            mode: apb::RestartMode::Hot as i32,
            batch_size,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    (cluster, task.id)
}

#[tokio::test]
async fn a_watcher_that_reads_late_sees_every_change_of_a_task() {
    let stop = CancellationToken::new();
    let (cluster, id) = simulated_restart(60, 10, &stop).await;
    let mut slow = slow_client(&cluster)
        .await
        .watch_task(pb::WatchTaskRequest { id: id.clone() })
        .await
        .unwrap()
        .into_inner();
    // A reader that keeps up, for comparison; the slow one reads nothing until the end.
    let mut fast = cluster
        .client()
        .await
        .watch_task(pb::WatchTaskRequest { id: id.clone() })
        .await
        .unwrap()
        .into_inner();
    let mut along = Vec::new();
    while let Some(t) = fast.message().await.unwrap() {
        along.push(t);
    }
    let mut late = Vec::new();
    while let Some(t) = slow.message().await.unwrap() {
        late.push(t);
    }
    let last = late.last().unwrap();
    assert_eq!(last.state(), pb::TaskState::Succeeded, "{}", last.error);
    assert!(
        late.ends_with(&along),
        "the late reader missed changes: {} updates read late, {} read along",
        late.len(),
        along.len()
    );
    // Every ODP was seen running and then done, and the batches went by in order.
    for i in 0..60 {
        let running = late
            .iter()
            .position(|t| t.subtasks[i].state() == pb::SubtaskState::Running)
            .unwrap_or_else(|| panic!("ODP {i} never seen running"));
        let done = late
            .iter()
            .position(|t| t.subtasks[i].state() == pb::SubtaskState::Succeeded)
            .unwrap();
        assert!(running < done, "ODP {i}");
    }
    let batches: Vec<u32> = late.iter().map(|t| t.current_batch).collect();
    assert!(batches.is_sorted(), "{batches:?}");
    for batch in 1..=6 {
        assert!(
            batches.contains(&batch),
            "batch {batch} never seen: {batches:?}"
        );
    }
    stop.cancel();
}

#[tokio::test]
async fn a_watcher_too_far_behind_is_told_how_far_and_can_watch_again() {
    let stop = CancellationToken::new();
    // A hundred batches of one: some three hundred changes, more than the buffer holds.
    let (cluster, id) = simulated_restart(100, 1, &stop).await;
    let mut slow = slow_client(&cluster)
        .await
        .watch_task(pb::WatchTaskRequest { id: id.clone() })
        .await
        .unwrap()
        .into_inner();
    let done = cluster.wait_task(&id).await;
    assert_eq!(done.state(), pb::TaskState::Succeeded, "{}", done.error);
    let error = loop {
        match slow.message().await {
            Ok(Some(t)) => assert_eq!(t.state(), pb::TaskState::Running),
            Ok(None) => panic!("the stream ended without saying it fell behind"),
            Err(status) => break status,
        }
    };
    assert_eq!(error.code(), tonic::Code::ResourceExhausted, "{error:?}");
    assert!(
        error.message().starts_with("WatchTask: this watcher fell ")
            && error
                .message()
                .contains("changes behind (the buffer holds 256)"),
        "{}",
        error.message()
    );
    // Watching again starts from the current state: the finished task.
    let mut again = cluster
        .client()
        .await
        .watch_task(pb::WatchTaskRequest { id })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.message().await.unwrap().unwrap(), done);
    assert!(again.message().await.unwrap().is_none());
    stop.cancel();
}

#[tokio::test]
async fn a_hundred_simulated_odps_roll_in_ten_batches() {
    let stop = CancellationToken::new();
    let addrs = odp_agent::testkit::sim_agent::serve_many(
        100,
        "4.3.1.0",
        Duration::from_millis(20),
        stop.clone(),
    )
    .await
    .unwrap();
    let names: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
    let cluster = Cluster::with_agents(vec![], &names);
    let status = cluster
        .client()
        .await
        .get_cluster_status(pb::GetClusterStatusRequest {
            cluster: CLUSTER.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.odps.len(), 100);
    assert!(
        status
            .odps
            .iter()
            .all(|o| o.state() == apb::ProxyState::Running)
    );
    let task = cluster
        .client()
        .await
        .restart_all(pb::RestartAllRequest {
            cluster: CLUSTER.into(),
            mode: apb::RestartMode::Hot as i32,
            batch_percent: 10,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(task.batches, 10);
    let done = cluster.wait_task(&task.id).await;
    assert_eq!(done.state(), pb::TaskState::Succeeded, "{}", done.error);
    assert!(done.subtasks.iter().all(|s| s.attempts == 1));
    stop.cancel();
}

//! Hot restart: the new obproxy starts on the same listener while the old one
//! serves; the old one drains only once the new one is ready.
use crate::common;

use std::time::{Duration, Instant, SystemTime};

use common::{Agent, Options, alive, connect, echo, round_trip};
use odp_agent::proto::agent as pb;
use tokio::{io::AsyncReadExt, net::TcpStream};

fn hot(exit_timeout: Option<Duration>, binary: &str, wait: bool) -> pb::RestartRequest {
    pb::RestartRequest {
        mode: pb::RestartMode::Hot as i32,
        exit_timeout: exit_timeout.map(|d| prost_types::Duration {
            seconds: d.as_secs() as i64,
            nanos: d.subsec_nanos() as i32,
        }),
        binary: binary.into(),
        wait,
        ..Default::default()
    }
}

/// Reads until the peer closes; an error (reset) counts as cut too.
async fn wait_cut(stream: &mut TcpStream) {
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(common::PATIENCE, stream.read(&mut buf)).await;
    match read.expect("the session was not cut") {
        Ok(0) | Err(_) => {}
        Ok(n) => panic!("unexpected {n} bytes"),
    }
}

#[tokio::test]
async fn a_session_held_through_a_hot_restart_keeps_working_until_it_closes() {
    let agent = Agent::start_with(Options {
        exit_timeout: "20s",
        ..Default::default()
    })
    .await;
    let old = agent.start_proxy().await.pid;
    let addr = agent.sql_addr().await;
    let mut session = connect(addr).await.unwrap();
    echo(&mut session, b"before").await.unwrap();

    let op = agent.restart_with(hot(None, "", false)).await.unwrap();
    let draining = agent
        .watch_op_until(&op.id, |o| o.phase() == pb::OperationPhase::Draining)
        .await;
    assert_eq!(
        draining.phase(),
        pb::OperationPhase::Draining,
        "{draining:?}"
    );

    let status = agent.status().await;
    let new = status.pid;
    assert_ne!(new, old);
    assert_eq!(status.draining.len(), 1);
    let drain = &status.draining[0];
    assert_eq!(drain.process.as_ref().unwrap().pid, old);
    assert_eq!(drain.process.as_ref().unwrap().open_connections, 1);
    assert!(drain.deadline.is_some());

    // The old process still serves the held session; new ones go to the new.
    echo(&mut session, b"during").await.unwrap();
    let mut fresh = common::connect(addr).await.unwrap();
    echo(&mut fresh, b"fresh").await.unwrap();
    // Sessions are sampled off the supervisor: wait for a sample that has the new one.
    let status = agent
        .wait_status(|s| s.serving.as_ref().is_some_and(|p| p.open_connections == 1))
        .await;
    assert_eq!(
        status.draining[0]
            .process
            .as_ref()
            .unwrap()
            .open_connections,
        1,
        "the new session went to the draining process"
    );
    drop(fresh);
    assert!(alive(old));

    // The drain ends as soon as the last session leaves, not at the window.
    let closed_at = Instant::now();
    drop(session);
    let done = agent.wait_op(&op.id).await;
    assert_eq!(
        done.state(),
        pb::OperationState::Succeeded,
        "{}",
        done.error
    );
    assert!(
        closed_at.elapsed() < Duration::from_secs(10),
        "drain waited for the window"
    );
    assert!(!alive(old));
    assert_eq!(done.pid, new);
    assert!(agent.status().await.draining.is_empty());
}

/// Starts a HOT restart with `exit_timeout` and follows it to its drain: the operation, the
/// moment the drain was seen to begin, and the agent's SIGKILL deadline for the old process.
async fn drain_begun(agent: &Agent, exit_timeout: Duration) -> (String, Instant, SystemTime) {
    let op = agent
        .restart_with(hot(Some(exit_timeout), "", false))
        .await
        .unwrap();
    agent
        .watch_op_until(&op.id, |o| o.phase() == pb::OperationPhase::Draining)
        .await;
    let begun = Instant::now();
    let status = agent.status().await;
    let deadline = status.draining[0].deadline.unwrap().try_into().unwrap();
    (op.id, begun, deadline)
}

#[tokio::test]
async fn a_session_beyond_the_window_is_cut_at_its_end() {
    // The window is the old process's own (configured) one: it cuts what is left when it
    // ends, long before the agent's SIGKILL at the window plus 2 s of grace.
    let agent = Agent::start_with(Options {
        exit_timeout: "1s",
        ..Default::default()
    })
    .await;
    let old = agent.start_proxy().await.pid;
    let addr = agent.sql_addr().await;
    let mut session = connect(addr).await.unwrap();
    echo(&mut session, b"hello").await.unwrap();
    let (op, begun, _) = drain_begun(&agent, Duration::from_secs(1)).await;
    wait_cut(&mut session).await;
    let cut = begun.elapsed();
    assert!(
        cut >= Duration::from_millis(900) && cut < Duration::from_secs(2),
        "cut {cut:?} after the drain began, not at the 1 s window's end"
    );
    let done = agent.wait_op(&op).await;
    assert_eq!(
        done.state(),
        pb::OperationState::Succeeded,
        "{}",
        done.error
    );
    assert!(!alive(old));
    round_trip(addr).await.unwrap();
}

#[tokio::test]
async fn an_old_process_that_outlives_its_window_is_killed_at_the_grace_deadline() {
    // The request's window is the old process's own: it gets 2 s of grace after it.
    let agent = Agent::start_with(Options {
        exit_timeout: "1s",
        ..Default::default()
    })
    .await;
    // The old process ignores SIGUSR1: it never drains, only the agent can end it.
    agent.set_standin_env(&[("ODP_STANDIN_IGNORE_SIGNALS", "true")]);
    let old = agent.start_proxy().await.pid;
    agent.set_standin_env(&[]);
    let addr = agent.sql_addr().await;
    let mut session = common::connect(addr).await.unwrap();
    echo(&mut session, b"hello").await.unwrap();
    let asked = SystemTime::now();
    let (op, _, deadline) = drain_begun(&agent, Duration::from_secs(1)).await;
    let grace = deadline.duration_since(asked).unwrap();
    assert!(
        grace >= Duration::from_secs(3) && grace < Duration::from_secs(5),
        "the deadline is the 1 s window plus 2 s of grace from the handover, not {grace:?}"
    );
    wait_cut(&mut session).await;
    let late = SystemTime::now().duration_since(deadline);
    assert!(
        matches!(late, Ok(late) if late < Duration::from_millis(700)),
        "cut at {late:?} from its deadline"
    );
    let done = agent.wait_op(&op).await;
    assert_eq!(
        done.state(),
        pb::OperationState::Succeeded,
        "{}",
        done.error
    );
    assert!(
        done.events
            .iter()
            .any(|e| e == &format!("pid {old} killed by SIGKILL")),
        "{:?}",
        done.events
    );
    assert!(!alive(old));
}

#[tokio::test]
async fn exit_timeout_zero_cuts_the_old_sessions_at_once() {
    // Shorter than the old process's own 10 s window, and no admin SQL to change that
    // window: the agent enforces it with SIGKILL at the deadline, here at once.
    let agent = Agent::start().await;
    agent.start_proxy().await;
    let addr = agent.sql_addr().await;
    let mut session = common::connect(addr).await.unwrap();
    echo(&mut session, b"hello").await.unwrap();
    let op = agent
        .restart_with(hot(Some(Duration::ZERO), "", false))
        .await
        .unwrap();
    agent
        .watch_op_until(&op.id, |o| o.phase() == pb::OperationPhase::Draining)
        .await;
    let draining = Instant::now();
    wait_cut(&mut session).await;
    assert!(
        draining.elapsed() < Duration::from_millis(500),
        "cut {:?} after the drain began",
        draining.elapsed()
    );
    let done = agent.wait_op(&op.id).await;
    assert_eq!(
        done.state(),
        pb::OperationState::Succeeded,
        "{}",
        done.error
    );
    assert!(
        done.events
            .iter()
            .any(|e| e.contains("enforced by SIGKILL at the deadline")),
        "{:?}",
        done.events
    );
    round_trip(addr).await.unwrap();
}

/// WatchOperation streams every change: a reader that reads nothing until the operation has
/// ended (its HTTP/2 window so small that the agent's side stalls after a message or two)
/// still gets every phase and every event, in order.
#[tokio::test]
async fn a_watcher_that_reads_late_sees_every_phase_of_a_hot_restart() {
    let agent = Agent::start().await;
    agent.start_proxy().await;
    let op = agent.restart(pb::RestartMode::Hot, false).await.unwrap();
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", agent.grpc))
        .unwrap()
        .initial_stream_window_size(Some(256))
        .connect()
        .await
        .unwrap();
    let mut late = pb::agent_client::AgentClient::new(channel)
        .watch_operation(pb::WatchOperationRequest { id: op.id.clone() })
        .await
        .unwrap()
        .into_inner();
    // A reader that keeps up, for comparison.
    let mut fast = agent
        .client()
        .await
        .watch_operation(pb::WatchOperationRequest { id: op.id.clone() })
        .await
        .unwrap()
        .into_inner();
    let mut along = Vec::new();
    while let Some(update) = fast.message().await.unwrap() {
        along.push(update);
    }
    let done = along.last().unwrap().clone();
    assert_eq!(
        done.state(),
        pb::OperationState::Succeeded,
        "{}",
        done.error
    );
    let mut seen = Vec::new();
    while let Some(update) = late.message().await.unwrap() {
        seen.push(update);
    }
    assert!(
        seen.ends_with(&along),
        "the late reader missed changes: {seen:#?}\nread along: {along:#?}"
    );
    // Each change adds at most one event: a gap would show as a jump.
    for pair in seen.windows(2) {
        let (a, b) = (pair[0].events.len(), pair[1].events.len());
        assert!(b == a || b == a + 1, "{a} then {b} events: {seen:#?}");
    }
    let phases: Vec<_> = seen.iter().map(|o| o.phase()).collect();
    for phase in [
        pb::OperationPhase::WaitingReady,
        pb::OperationPhase::Draining,
        pb::OperationPhase::Done,
    ] {
        assert!(phases.contains(&phase), "{phase:?} never seen: {phases:?}");
    }
}

#[tokio::test]
async fn a_broken_new_binary_leaves_the_old_process_serving() {
    let agent = Agent::start().await;
    let old = agent.start_proxy().await.pid;
    let addr = agent.sql_addr().await;
    let mut session = connect(addr).await.unwrap();
    let broken = agent.add_binary("obproxy-broken", &[("ODP_STANDIN_FAIL_START", "1")]);
    let op = agent.restart_with(hot(None, &broken, true)).await.unwrap();
    assert_eq!(op.state(), pb::OperationState::Failed);
    assert!(op.error.contains("before it was ready"), "{}", op.error);
    let status = agent.status().await;
    assert_eq!(status.state(), pb::ProxyState::Running);
    assert_eq!(status.pid, old);
    assert_eq!(op.pid, old);
    echo(&mut session, b"still here").await.unwrap();
    round_trip(addr).await.unwrap();
    assert_eq!(agent.obproxy_pids(), vec![old]);
}

#[tokio::test]
async fn a_new_process_not_ready_in_time_is_killed_and_the_old_serves_on() {
    let agent = Agent::start_with(Options {
        start_timeout: "1s",
        ..Default::default()
    })
    .await;
    let old = agent.start_proxy().await.pid;
    let mute = agent.add_binary("obproxy-mute", &[("ODP_STANDIN_NO_READY", "1")]);
    let op = agent.restart_with(hot(None, &mute, true)).await.unwrap();
    assert_eq!(op.state(), pb::OperationState::Failed);
    assert!(op.error.contains("not ready within"), "{}", op.error);
    assert_eq!(agent.status().await.pid, old);
    assert_eq!(agent.obproxy_pids(), vec![old]);
    round_trip(agent.sql_addr().await).await.unwrap();
}

#[tokio::test]
async fn a_restart_during_a_restart_is_refused() {
    let agent = Agent::start().await;
    agent.start_proxy().await;
    // Slow enough that every call below lands while it starts; the test ends with it.
    let slow = agent.add_binary("obproxy-slow", &[("ODP_STANDIN_START_DELAY", "5s")]);
    let first = agent.restart_with(hot(None, &slow, false)).await.unwrap();
    let err = agent
        .restart(pb::RestartMode::Hot, false)
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert!(err.message().contains(&first.id), "{}", err.message());
    let err = agent
        .restart(pb::RestartMode::Force, false)
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert_eq!(
        agent.wait_op(&first.id).await.state(),
        pb::OperationState::Succeeded
    );
}

#[tokio::test]
async fn three_hot_restarts_keep_the_socket_and_leave_one_process() {
    let agent = Agent::start().await;
    let first = agent.start_proxy().await.pid;
    let inode = agent.status().await.listeners[0].socket_inode;
    let mut pids = vec![first];
    for _ in 0..3 {
        let op = agent
            .restart_with(hot(Some(Duration::from_secs(5)), "", true))
            .await
            .unwrap();
        assert_eq!(op.state(), pb::OperationState::Succeeded, "{}", op.error);
        let status = agent.status().await;
        assert_eq!(status.listeners[0].socket_inode, inode);
        assert!(!pids.contains(&status.pid));
        pids.push(status.pid);
        round_trip(agent.sql_addr().await).await.unwrap();
    }
    let last = *pids.last().unwrap();
    for pid in &pids[..3] {
        assert!(!alive(*pid), "old pid {pid} still alive");
    }
    assert_eq!(agent.obproxy_pids(), vec![last]);
    assert_eq!(agent.status().await.restart_count, 3);
}

#[tokio::test]
async fn a_hot_upgrade_moves_onto_the_new_binary_and_version() {
    let agent = Agent::start().await;
    agent.start_proxy().await;
    assert_eq!(agent.status().await.version, "4.3.1.0");
    let newer = agent.add_binary(
        "obproxy-4.4",
        &[
            ("ODP_STANDIN_VERSION", "4.4.0.0"),
            ("ODP_STANDIN_START_DELAY", "2s"),
        ],
    );
    let op = agent
        .restart_with(hot(Some(Duration::from_secs(1)), &newer, false))
        .await
        .unwrap();
    // While the new binary starts, the proxy says it is upgrading.
    let seen = agent
        .watch_op_until(&op.id, |o| o.phase() == pb::OperationPhase::WaitingReady)
        .await;
    assert_eq!(seen.phase(), pb::OperationPhase::WaitingReady);
    assert_eq!(agent.status().await.state(), pb::ProxyState::Upgrading);
    let done = agent.wait_op(&op.id).await;
    assert_eq!(
        done.state(),
        pb::OperationState::Succeeded,
        "{}",
        done.error
    );
    let status = agent.status().await;
    assert_eq!(status.version, "4.4.0.0");
    assert!(status.serving.unwrap().binary.ends_with("bin/obproxy-4.4"));
}

#[tokio::test]
async fn hot_restart_of_a_stopped_proxy_is_refused() {
    let agent = Agent::start().await;
    let err = agent.restart(pb::RestartMode::Hot, true).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert!(err.message().contains("FORCE"), "{}", err.message());
}

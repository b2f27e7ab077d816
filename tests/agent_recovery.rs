//! The agent survives itself: kill -9 it at any point and start it again;
//! obproxy keeps serving throughout, the new agent re-adopts what the old one
//! owned, and never touches a process whose identity it cannot confirm.
mod common;

use std::time::{Duration, SystemTime};

use common::{Agent, Load, Options, alive, echo};
use odp_agent::proto::agent as pb;
use tokio::io::AsyncReadExt;

fn hot(window: Duration, binary: &str) -> pb::RestartRequest {
    pb::RestartRequest {
        mode: pb::RestartMode::Hot as i32,
        exit_timeout: Some(prost_types::Duration {
            seconds: window.as_secs() as i64,
            nanos: 0,
        }),
        binary: binary.into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn killing_the_agent_while_obproxy_serves_changes_nothing_for_clients() {
    let mut agent = Agent::start().await;
    let pid = agent.start_proxy().await.pid;
    let before = agent.status().await;
    let addr = agent.sql_addr().await;
    let load = Load::start(addr);

    agent.kill9_and_restart();
    let after = agent.status().await;
    assert_eq!(after.state(), pb::ProxyState::Running);
    assert_eq!(after.pid, pid, "the serving obproxy was re-adopted");
    // SQL and RPC (4.3) listeners alike were taken back: the same sockets.
    assert_eq!(after.listeners.len(), 2);
    assert_eq!(after.listeners, before.listeners);
    assert_eq!(after.version, "4.3.1.0");
    // Nothing to report but that admin SQL is not configured here.
    let notices: Vec<&String> = after
        .notices
        .iter()
        .filter(|n| !n.starts_with("admin SQL is off"))
        .collect();
    assert!(notices.is_empty(), "{notices:?}");

    // The listeners were taken back, so a hot restart still works.
    let op = agent
        .restart_with(pb::RestartRequest {
            wait: true,
            ..hot(Duration::from_secs(2), "")
        })
        .await
        .unwrap();
    assert_eq!(op.state(), pb::OperationState::Succeeded, "{}", op.error);
    assert_eq!(agent.status().await.listeners, before.listeners);

    let report = load.finish().await;
    assert!(report.ok > 0);
    assert_eq!((report.refused, report.failed), (0, 0), "{report:?}");
    assert_eq!(agent.obproxy_pids().len(), 1);
}

#[tokio::test]
async fn killing_the_agent_before_the_new_process_is_ready_rolls_the_restart_back() {
    let mut agent = Agent::start().await;
    let old = agent.start_proxy().await.pid;
    let inode = agent.status().await.listeners[0].socket_inode;
    let addr = agent.sql_addr().await;
    let load = Load::start(addr);

    let slow = agent.add_binary("obproxy-slow", &[("ODP_STANDIN_START_DELAY", "3s")]);
    let op = agent
        .restart_with(hot(Duration::from_secs(5), &slow))
        .await
        .unwrap();
    agent
        .watch_op_until(&op.id, |o| o.phase() == pb::OperationPhase::WaitingReady)
        .await;
    let starting: Vec<u32> = agent
        .obproxy_pids()
        .into_iter()
        .filter(|p| *p != old)
        .collect();
    assert_eq!(starting.len(), 1);

    agent.kill9_and_restart();
    let status = agent.status().await;
    assert_eq!(status.pid, old, "the old process keeps serving");
    assert_eq!(status.listeners[0].socket_inode, inode);
    assert!(!alive(starting[0]) || agent.wait_status(|_| !alive(starting[0])).await.pid == old);
    assert_eq!(
        agent.obproxy_pids(),
        vec![old],
        "exactly one obproxy serves"
    );

    let report = load.finish().await;
    assert_eq!((report.refused, report.failed), (0, 0), "{report:?}");
}

#[tokio::test]
async fn killing_the_agent_during_a_drain_keeps_the_drains_deadline() {
    // Long enough that the agent is surely back before the window ends, even
    // on a loaded machine.
    let mut agent = Agent::start_with(Options {
        exit_timeout: "6s",
        ..Default::default()
    })
    .await;
    let old = agent.start_proxy().await.pid;
    let inode = agent.status().await.listeners[0].socket_inode;
    let addr = agent.sql_addr().await;
    // A session that never ends keeps the old process draining to its end.
    let mut session = common::connect(addr).await.unwrap();
    echo(&mut session, b"held").await.unwrap();
    let load = Load::start(addr);

    let op = agent
        .restart_with(hot(Duration::from_secs(6), ""))
        .await
        .unwrap();
    agent
        .watch_op_until(&op.id, |o| o.phase() == pb::OperationPhase::Draining)
        .await;
    let draining = agent.status().await.draining[0].clone();
    let deadline: SystemTime = draining.deadline.unwrap().try_into().unwrap();
    assert_eq!(draining.process.as_ref().unwrap().pid, old);

    agent.kill9_and_restart();
    let status = agent.status().await;
    assert_eq!(status.state(), pb::ProxyState::Running);
    assert_eq!(status.listeners[0].socket_inode, inode);
    assert_eq!(
        status.draining.len(),
        1,
        "the draining process was re-adopted"
    );
    let readopted: SystemTime = status.draining[0].deadline.unwrap().try_into().unwrap();
    let drift = readopted
        .duration_since(deadline)
        .unwrap_or_else(|e| e.duration());
    assert!(
        drift < Duration::from_millis(1),
        "the deadline moved by {drift:?}"
    );

    // The held session is cut when the window ends, and the old process is
    // gone by its original deadline.
    let mut buf = [0u8; 8];
    let cut = tokio::time::timeout(common::PATIENCE, session.read(&mut buf))
        .await
        .unwrap();
    assert!(matches!(cut, Ok(0) | Err(_)));
    agent.wait_status(|s| s.draining.is_empty()).await;
    assert!(!alive(old));
    // The deadline already holds the agent's 2 s grace; the slack is for
    // the status polling on a loaded machine.
    assert!(
        SystemTime::now() < deadline + Duration::from_secs(3),
        "the drain outlived its deadline"
    );
    assert_eq!(agent.obproxy_pids().len(), 1);

    let report = load.finish().await;
    assert!(report.ok > 0);
    assert_eq!((report.refused, report.failed), (0, 0), "{report:?}");
}

#[tokio::test]
async fn a_recorded_pid_now_used_by_another_process_is_neither_adopted_nor_signalled() {
    let mut agent = Agent::start().await;
    agent.start_proxy().await;
    agent.stop_proxy().await;
    // Another program now has a pid the state file claims is our obproxy.
    let mut other = std::process::Command::new("sleep")
        .arg("60")
        .spawn()
        .unwrap();
    let state_path = agent.dir.path().join("state/agent-state.json");
    let mut state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&state_path).unwrap()).unwrap();
    state["desired_running"] = false.into();
    state["processes"] = serde_json::json!([{
        "pid": other.id(),
        "start_ticks": 1,
        "exe": common::STANDIN,
        "binary": common::STANDIN,
        "version": "4.3.1.0",
        "role": "serving",
        "started_at": 0.0,
        "drain_deadline": null
    }, {
        "pid": other.id(),
        "start_ticks": odp_agent::obproxy::procfs::start_ticks(other.id()).unwrap(),
        "exe": common::STANDIN,
        "binary": common::STANDIN,
        "version": "4.3.1.0",
        "role": "draining",
        "started_at": 0.0,
        "drain_deadline": 0.0
    }]);
    std::fs::write(&state_path, state.to_string()).unwrap();

    agent.kill9_and_restart();
    let status = agent.status().await;
    assert_eq!(status.state(), pb::ProxyState::Stopped);
    assert_eq!(status.pid, 0);
    assert!(
        status.draining.is_empty(),
        "a stranger was adopted as draining (and killed at its deadline)"
    );
    assert!(
        other.try_wait().unwrap().is_none(),
        "the agent signalled a process it does not own"
    );
    let logs = agent.logs();
    assert!(logs.contains("was reused"), "{logs}");
    assert!(logs.contains("runs /"), "{logs}");
    let _ = other.kill();
    let _ = other.wait();
}

#[tokio::test]
async fn obproxy_killed_from_outside_is_respawned_with_backoff_but_not_after_stop() {
    let agent = Agent::start().await;
    let first = agent.start_proxy().await.pid;
    let addr = agent.sql_addr().await;

    common::signal(first, libc::SIGKILL);
    let second = agent
        .wait_status(|s| s.state() == pb::ProxyState::Running && s.pid != first && s.pid != 0)
        .await;
    assert!(
        second
            .last_exit
            .contains(&format!("pid {first} killed by SIGKILL")),
        "{}",
        second.last_exit
    );
    assert_eq!(second.restart_count, 1);
    common::round_trip(addr).await.unwrap();

    // Again at once: the second respawn waits longer (1 s, then 2 s).
    let killed_at = std::time::Instant::now();
    common::signal(second.pid, libc::SIGKILL);
    let down = agent.wait_status(|s| s.pid != second.pid).await;
    assert_eq!(down.state(), pb::ProxyState::Unavailable);
    let third = agent
        .wait_status(|s| s.state() == pb::ProxyState::Running && s.pid != 0)
        .await;
    assert!(
        killed_at.elapsed() >= Duration::from_secs(2),
        "no backoff: {:?}",
        killed_at.elapsed()
    );
    assert_eq!(third.restart_count, 2);

    // A deliberate stop is never undone.
    assert_eq!(
        agent.stop_proxy().await.state(),
        pb::OperationState::Succeeded
    );
    let stopped = agent.status().await;
    assert_eq!(stopped.state(), pb::ProxyState::Stopped);
    assert!(!stopped.desired_running);
    // Start and stop once more: the operations are ours, no respawn between.
    agent.start_proxy().await;
    agent.stop_proxy().await;
    let logs = agent.logs();
    let after_stop = &logs[logs.find("closing SQL listeners").unwrap()..];
    assert!(!after_stop.contains("respawning"), "{after_stop}");
    assert!(agent.obproxy_pids().is_empty());
}

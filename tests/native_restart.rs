//! obproxy's own ("native") restarts: one triggered behind the agent's back
//! (`ALTER proxyconfig SET proxy_local_cmd = 2` over admin SQL) is adopted, so
//! exactly one obproxy serves and a later Stop closes the port; Stop and FORCE
//! end a native child the agent never adopted; and `restart_strategy =
//! "native"` restarts under client load without a failed request.
use crate::common;

use std::time::Duration;

use common::{
    Agent, Load, Options,
    admin_sql::{self, PASSWORD, admin, agent_with, wait_until},
    alive, echo, log_field, spawn_agent,
};
use mysql_async::prelude::*;
use odp_agent::proto::agent as pb;
use tokio::net::TcpStream;

/// obproxy polls `proxy_local_cmd` every half to full interval; its minimum
/// keeps the tests short.
const CHECK_INTERVAL: &str = "proxy_hot_upgrade_check_interval=1s";

async fn agent(exit_timeout: &'static str, keys: &'static str) -> Agent {
    agent_with(
        Options {
            exit_timeout,
            args: admin_sql::args(CHECK_INTERVAL),
            ..Default::default()
        },
        keys,
        Some(PASSWORD),
    )
    .await
}

/// Asks obproxy itself to restart, as obshell's upgrade does.
async fn restart_behind_the_agents_back(port: u16) {
    let mut session = admin(port).await;
    session
        .query_drop("ALTER proxyconfig SET proxy_local_cmd = 2")
        .await
        .unwrap();
    session.disconnect().await.unwrap();
}

/// The agent's record of the state it keeps on disk.
fn recorded_processes(agent: &Agent) -> Vec<(u64, String)> {
    let text = std::fs::read_to_string(agent.dir.path().join("state/agent-state.json")).unwrap();
    let state: serde_json::Value = serde_json::from_str(&text).unwrap();
    state["processes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["pid"].as_u64().unwrap(),
                p["role"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_native_restart_behind_the_agents_back_is_adopted_and_a_stop_closes_the_port() {
    let agent = agent("5s", "").await;
    let old = agent.start_proxy().await.pid;
    let addr = agent.sql_addr().await;
    let load = Load::start(addr);

    restart_behind_the_agents_back(addr.port()).await;
    let admitted = agent
        .log
        .wait_for(|l| l.contains("operation admitted") && l.contains("native restart adoption"));
    let id = log_field(&admitted, "op_id").unwrap();
    let op = agent.wait_op(&id).await;
    assert_eq!(op.state(), pb::OperationState::Succeeded, "{}", op.error);
    assert_eq!(op.kind(), pb::OperationKind::AdoptNative);
    assert_eq!(op.previous_pid, old);
    let child = op.pid;
    assert_ne!(child, old);
    let events = op.events.join("\n");
    assert!(
        events.contains(&format!("pid {old} exited"))
            && events.contains(&format!("after forking pid {child}"))
            && events.contains("obproxy restarted itself")
            && events.contains(&format!(
                "pid {child} answers SHOW PROXYINFO BINARY: version 4.3.1.0"
            )),
        "{events}"
    );

    // Exactly one obproxy serves: the adopted child, watched, recorded, no respawn.
    let status = agent.status().await;
    assert_eq!(status.state(), pb::ProxyState::Running);
    assert_eq!(status.pid, child);
    assert_eq!(status.restart_count, 1);
    assert!(
        status.last_exit.is_empty(),
        "no crash: {}",
        status.last_exit
    );
    assert!(!alive(old));
    assert_eq!(agent.obproxy_pids(), vec![child]);
    assert_eq!(
        recorded_processes(&agent),
        vec![(child as u64, "serving".into())]
    );
    assert!(!agent.logs().contains("respawning"), "{}", agent.logs());
    let report = load.finish().await;
    assert!(report.ok > 0);
    assert_eq!((report.refused, report.failed), (0, 0), "{report:?}");

    // The agent manages it like its own: a Stop ends it and the port closes.
    let stop = agent.stop_proxy().await;
    assert_eq!(
        stop.state(),
        pb::OperationState::Succeeded,
        "{}",
        stop.error
    );
    let refused = TcpStream::connect(addr).await.unwrap_err();
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
    assert!(!alive(child));
    assert!(agent.obproxy_pids().is_empty());
}

/// A native restart whose parent drains a held session for its whole window:
/// (parent, child, the held session) once the child accepts.
async fn native_restart_under_way(agent: &Agent) -> (u32, u32, TcpStream) {
    let old = agent.start_proxy().await.pid;
    let addr = agent.sql_addr().await;
    let mut held = common::connect(addr).await.unwrap();
    echo(&mut held, b"held").await.unwrap();
    restart_behind_the_agents_back(addr.port()).await;
    wait_until("obproxy forked its child", || {
        agent.obproxy_pids().len() == 2
    })
    .await;
    let child = *agent.obproxy_pids().iter().find(|&&p| p != old).unwrap();
    // The parent stopped accepting at the fork: a new connection is the child's.
    common::round_trip(addr).await.unwrap();
    assert!(alive(old), "the parent drains its held session");
    (old, child, held)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_obproxy_restarts_itself_hot_is_refused_and_stop_ends_the_child_too() {
    let agent = agent("20s", "").await;
    let (old, child, _held) = native_restart_under_way(&agent).await;

    let op = agent
        .restart_with(pb::RestartRequest {
            mode: pb::RestartMode::Hot as i32,
            wait: true,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(op.state(), pb::OperationState::Failed);
    assert!(
        op.error
            .contains(&format!("pids [{child}] hold the SQL listener"))
            && op.error.contains("not started by the agent"),
        "{}",
        op.error
    );

    let addr = agent.sql_addr().await;
    let stop = agent.stop_proxy().await;
    assert_eq!(
        stop.state(),
        pb::OperationState::Succeeded,
        "{}",
        stop.error
    );
    assert!(
        stop.events
            .iter()
            .any(|e| e.contains(&format!("pids [{child}] hold the SQL listener"))),
        "{:?}",
        stop.events
    );
    assert!(!alive(old) && !alive(child));
    let refused = TcpStream::connect(addr).await.unwrap_err();
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
    assert!(agent.obproxy_pids().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_force_restart_while_obproxy_restarts_itself_leaves_one_process() {
    let agent = agent("20s", "").await;
    let (old, child, _held) = native_restart_under_way(&agent).await;
    let op = agent.restart(pb::RestartMode::Force, true).await.unwrap();
    assert_eq!(op.state(), pb::OperationState::Succeeded, "{}", op.error);
    assert!(!alive(old) && !alive(child));
    assert_eq!(agent.obproxy_pids(), vec![op.pid]);
    common::round_trip(agent.sql_addr().await).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_native_strategy_restarts_under_load_without_a_failed_request() {
    let agent = agent("5s", "restart_strategy = \"native\"").await;
    let mut pid = agent.start_proxy().await.pid;
    let addr = agent.sql_addr().await;
    let load = Load::start(addr);
    for round in 1..=3 {
        let op = agent
            .restart_with(pb::RestartRequest {
                mode: pb::RestartMode::Hot as i32,
                exit_timeout: Some(prost_types::Duration {
                    seconds: 2,
                    nanos: 0,
                }),
                wait: true,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(
            op.state(),
            pb::OperationState::Succeeded,
            "round {round}: {}\n{}",
            op.error,
            agent.logs()
        );
        assert_eq!(op.previous_pid, pid, "round {round}");
        let events = op.events.join("\n");
        assert!(
            events.contains("hot_upgrade_exit_timeout = 2000000 µs")
                && events.contains("proxy_local_cmd = 2 sent")
                && events.contains(&format!("forked by pid {pid}"))
                && events.contains("Prometheus exporter moved with it"),
            "round {round}: {events}"
        );
        assert!(!alive(pid), "round {round}");
        pid = op.pid;
        assert_eq!(agent.obproxy_pids(), vec![pid], "round {round}");
        let status = agent.status().await;
        assert_eq!(status.pid, pid);
        assert!(
            !status.notices.iter().any(|n| n.contains("Prometheus")),
            "{:?}",
            status.notices
        );
        assert_eq!(
            status.serving.unwrap().binary_info.map(|i| i.version),
            Some("4.3.1.0".to_string())
        );
    }
    let report = load.finish().await;
    eprintln!("3 native restarts under load: {report:?}");
    assert!(report.ok > 0);
    assert_eq!((report.refused, report.failed), (0, 0), "{report:?}");
    assert_eq!(agent.status().await.restart_count, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_native_strategy_drains_the_parent_with_the_requested_window() {
    let agent = agent("20s", "restart_strategy = \"native\"").await;
    let old = agent.start_proxy().await.pid;
    let addr = agent.sql_addr().await;
    let mut held = common::connect(addr).await.unwrap();
    echo(&mut held, b"held").await.unwrap();
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
    let draining = agent
        .watch_op_until(&op.id, |o| o.phase() == pb::OperationPhase::Draining)
        .await;
    let began = std::time::Instant::now();
    let child = agent.status().await.pid;
    assert_ne!(child, old);
    assert!(
        draining
            .events
            .iter()
            .any(|e| e.contains(&format!("pid {old} drains within 1s (SIGKILL at 3s)"))),
        "{:?}",
        draining.events
    );
    // The parent keeps the held session while its child serves new ones.
    echo(&mut held, b"still").await.unwrap();
    common::round_trip(addr).await.unwrap();
    let done = agent.wait_op(&op.id).await;
    let drained_in = began.elapsed();
    assert_eq!(
        done.state(),
        pb::OperationState::Succeeded,
        "{}",
        done.error
    );
    assert!(
        drained_in < Duration::from_secs(3),
        "the parent drained for {drained_in:?}: not the requested 1s but its 20s"
    );
    let events = done.events.join("\n");
    assert!(!events.contains("drain deadline"), "SIGKILLed: {events}");
    assert!(events.contains(&format!("pid {old} exited")), "{events}");
    assert!(
        echo(&mut held, b"gone").await.is_err(),
        "the window end cut it"
    );
    assert_eq!(agent.obproxy_pids(), vec![child]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_native_child_that_is_not_ready_in_time_is_killed_and_the_parent_serves_again() {
    let agent = agent("5s", "restart_strategy = \"native\"").await;
    let old = agent.start_proxy().await.pid;
    let addr = agent.sql_addr().await;
    // The child reads its configuration from etc/, where the parent keeps it: a child that
    // never gets ready.
    let mut session = admin(addr.port()).await;
    session
        .query_drop("ALTER proxyconfig SET standin_start_delay = '1h'")
        .await
        .unwrap();
    session.disconnect().await.unwrap();

    let started = std::time::Instant::now();
    let op = agent.restart(pb::RestartMode::Hot, true).await.unwrap();
    assert_eq!(op.state(), pb::OperationState::Failed);
    assert!(
        op.error
            .contains("did not accept connections within start_timeout 10s")
            && op.error.contains(&format!("pid {old} accepts again")),
        "{}",
        op.error
    );
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_eq!(agent.status().await.pid, old);
    wait_until("only the parent is left", || {
        agent.obproxy_pids() == vec![old]
    })
    .await;
    // obproxy's rollback: the parent accepts again.
    common::round_trip(addr).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_native_restart_while_the_agent_was_away_is_adopted_when_it_returns() {
    let mut agent = agent("5s", "").await;
    let old = agent.start_proxy().await.pid;
    let before = agent.status().await;
    let addr = agent.sql_addr().await;
    let _ = agent.child.kill();
    let _ = agent.child.wait();

    restart_behind_the_agents_back(addr.port()).await;
    wait_until("the parent drained and its child serves", || {
        !alive(old) && agent.obproxy_pids().len() == 1
    })
    .await;
    let child = agent.obproxy_pids()[0];
    assert_ne!(child, old);

    let (process, grpc, log) = spawn_agent(&agent.config);
    (agent.child, agent.grpc, agent.log) = (process, grpc, log);
    let status = agent.status().await;
    assert_eq!(status.state(), pb::ProxyState::Running);
    assert_eq!(status.pid, child, "adopted, not killed as a stray");
    assert_eq!(
        status.listeners[0].socket_inode,
        before.listeners[0].socket_inode
    );
    let admitted = agent
        .log
        .wait_for(|l| l.contains("operation admitted") && l.contains("native restart adoption"));
    let op = agent.wait_op(&log_field(&admitted, "op_id").unwrap()).await;
    assert_eq!(op.previous_pid, old);
    assert!(
        op.events
            .iter()
            .any(|e| e.contains("serving when the agent went away, is gone")),
        "{:?}",
        op.events
    );
    assert_eq!(agent.obproxy_pids(), vec![child]);
    // The listeners came back from the child: a hot restart works.
    let hot = agent.restart(pb::RestartMode::Hot, true).await.unwrap();
    assert_eq!(hot.state(), pb::OperationState::Succeeded, "{}", hot.error);
    assert_eq!(hot.previous_pid, child);
    common::round_trip(addr).await.unwrap();
}

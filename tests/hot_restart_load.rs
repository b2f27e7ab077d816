//! Hot restart under load: fresh-connection clients and long-lived sessions run through the
//! stand-in to a real backend while the agent hot-restarts it again and again, and not one
//! connection is refused, reset or cut. `cargo test` runs three rounds under a lighter load;
//! the README's twenty rounds (about ten seconds of flat-out load on two cores) are ignored
//! by default: `cargo test --release --test agent hot_restart_load -- --ignored --nocapture`.
use crate::common;

use std::time::Duration;

use common::{Agent, Options, PATIENCE};
use odp_agent::{
    proto::agent as pb,
    testkit::{
        echo_backend::EchoBackend,
        loadgen::{Load, LoadConfig},
    },
};
use tokio_util::sync::CancellationToken;

/// The drain window: far longer than a session needs to reach its next reconnect, so every
/// session leaves the old process by itself and none is cut at the window.
const EXIT_TIMEOUT: Duration = Duration::from_secs(15);

/// How hard and how long: restarts, clients and sessions, and the requests that must
/// succeed on each new process before the next restart.
struct Shape {
    rounds: usize,
    clients: usize,
    sessions: usize,
    between: u64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hot_restarts_under_load_drop_nothing() {
    hot_restarts_under_load(Shape {
        rounds: 3,
        clients: 8,
        sessions: 4,
        between: 300,
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "load test; run with: cargo test --release --test agent hot_restart_load -- --ignored"]
async fn hot_restarts_under_load_drop_nothing() {
    hot_restarts_under_load(Shape {
        rounds: 20,
        clients: 24,
        sessions: 8,
        between: 1_000,
    })
    .await;
}

/// Waits for `n` successful requests in all, bounded by PATIENCE.
async fn wait_for_ok(load: &Load, n: u64) {
    tokio::time::timeout(PATIENCE, load.wait_for_ok(n))
        .await
        .unwrap_or_else(|_| {
            panic!(
                "{n} requests did not succeed in time: {:?}",
                load.progress()
            )
        });
}

async fn hot_restarts_under_load(shape: Shape) {
    let backend = EchoBackend::start().await.unwrap();
    let agent = Agent::start_with(Options {
        exit_timeout: "15s",
        args: vec!["-o".into(), format!("standin_backend={}", backend.addr())],
        ..Default::default()
    })
    .await;
    // A start-up time, so the old process serves alone for a while during every restart.
    agent.set_standin_env(&[("ODP_STANDIN_START_DELAY", "200ms")]);
    let mut pid = agent.start_proxy().await.pid;
    let addr = agent.sql_addr().await;

    let load = Load::start(
        LoadConfig {
            clients: shape.clients,
            sessions: shape.sessions,
            // A "transaction" of 20 requests, then the session reconnects.
            session_requests: Some(20),
            pause: Duration::ZERO,
            // Bounds in case the restarts hang: the test never runs longer than this.
            duration: Some(Duration::from_secs(100)),
            max_requests: Some(5_000_000),
            ..LoadConfig::new(addr)
        },
        CancellationToken::new(),
    )
    .unwrap();
    wait_for_ok(&load, shape.between).await;

    for round in 1..=shape.rounds {
        let op = agent
            .restart_with(pb::RestartRequest {
                mode: pb::RestartMode::Hot as i32,
                exit_timeout: Some(prost_types::Duration {
                    seconds: EXIT_TIMEOUT.as_secs() as i64,
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
        assert_ne!(op.pid, pid, "round {round}");
        pid = op.pid;
        // The new process carries the load before the next round begins.
        wait_for_ok(&load, load.progress().ok + shape.between).await;
        assert!(
            !load.is_stopped(),
            "the load ended before round {round} was proven"
        );
        println!("round {round}: pid {pid} serving; {:?}", load.progress());
    }

    let report = load.stop().await;
    println!("{} hot restarts under load: {report}", shape.rounds);
    assert_eq!(report.refused, 0, "{report}");
    assert_eq!(report.reset, 0, "{report}");
    assert_eq!(report.failed, 0, "{report}");
    assert_eq!(report.cut_sessions, 0, "{report}");
    assert!(
        report.ok >= (shape.rounds as u64 + 1) * shape.between,
        "{report}"
    );
    assert_eq!(agent.obproxy_pids(), vec![pid], "an old process is left");
    backend.shutdown().await;
}

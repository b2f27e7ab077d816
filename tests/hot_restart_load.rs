//! Hot restart under load: fresh-connection clients and long-lived sessions run through the
//! stand-in to a real backend while the agent hot-restarts it again and again, and not one
//! connection is refused, reset or cut. Ignored by default (it runs for about ten seconds of
//! flat-out load on two cores):
//! `cargo test --release --test hot_restart_load -- --ignored --nocapture`.
mod common;

use std::time::Duration;

use common::{Agent, Options};
use odp_agent::{
    loadgen::{EchoBackend, Load, LoadConfig},
    proto::agent as pb,
};
use tokio_util::sync::CancellationToken;

const ROUNDS: usize = 20;
/// The drain window: far longer than a session needs to reach its next reconnect, so every
/// session leaves the old process by itself and none is cut at the window.
const EXIT_TIMEOUT: Duration = Duration::from_secs(15);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "load test; run with: cargo test --release --test hot_restart_load -- --ignored"]
async fn hot_restarts_under_load_drop_nothing() {
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
            clients: 24,
            sessions: 8,
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
    load.wait_for_ok(1_000).await;

    for round in 1..=ROUNDS {
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
        load.wait_for_ok(load.progress().ok + 1_000).await;
        assert!(
            !load.is_stopped(),
            "the load ended before round {round} was proven"
        );
        println!("round {round}: pid {pid} serving; {:?}", load.progress());
    }

    let report = load.stop().await;
    println!("{ROUNDS} hot restarts under load: {report}");
    assert_eq!(report.refused, 0, "{report}");
    assert_eq!(report.reset, 0, "{report}");
    assert_eq!(report.failed, 0, "{report}");
    assert_eq!(report.cut_sessions, 0, "{report}");
    assert!(report.ok >= (ROUNDS as u64 + 1) * 1_000, "{report}");
    assert_eq!(agent.obproxy_pids(), vec![pid], "an old process is left");
    backend.shutdown().await;
}

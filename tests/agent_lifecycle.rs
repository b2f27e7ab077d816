//! The agent controls a local obproxy over gRPC: start, stop, status, force
//! restart, and what it refuses.
use crate::common;

use common::{Agent, Options, alive, round_trip, signal};
use odp_agent::proto::agent as pb;
use tokio::net::TcpStream;

#[tokio::test]
async fn start_reports_running_with_the_version_and_serves_clients() {
    let agent = Agent::start().await;
    assert_eq!(agent.status().await.state(), pb::ProxyState::Stopped);
    let op = agent.start_proxy().await;
    let status = agent.status().await;
    assert_eq!(status.state(), pb::ProxyState::Running);
    assert_eq!(status.pid, op.pid);
    assert!(alive(status.pid));
    assert_eq!(status.version, "4.3.1.0");
    // obproxy 4.3 serves RPC too: the agent holds that port as well.
    let kinds: Vec<_> = status.listeners.iter().map(|l| l.kind()).collect();
    assert_eq!(kinds, [pb::ListenerKind::Sql, pb::ListenerKind::Rpc]);
    assert_ne!(status.listeners[0].socket_inode, 0);
    assert!(status.operation.is_none());
    round_trip(agent.sql_addr().await).await.unwrap();
    // The process holds the agent's listener: it was handed over, not rebound.
    let args = std::fs::read_to_string(format!("/proc/{}/cmdline", status.pid)).unwrap();
    assert!(args.split('\0').any(|a| a == "-N"), "{args:?}");
    // It was exec'd through a link named like its binary (so ps and pidof name
    // it obproxy), kept in the state directory, to the descriptor it inherited.
    let links: Vec<_> = std::fs::read_dir(agent.state.join("exec"))
        .unwrap()
        .map(|e| e.unwrap().path().join("obproxy"))
        .collect();
    assert_eq!(links.len(), 1, "{links:?}");
    let fd = links[0]
        .parent()
        .unwrap()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .to_string();
    assert_eq!(
        std::fs::read_link(&links[0]).unwrap(),
        std::path::PathBuf::from(format!("/proc/self/fd/{fd}"))
    );
}

#[tokio::test]
async fn stop_ends_obproxy_and_closes_the_port() {
    let agent = Agent::start().await;
    let pid = agent.start_proxy().await.pid;
    let addr = agent.sql_addr().await;
    let op = agent.stop_proxy().await;
    assert_eq!(op.state(), pb::OperationState::Succeeded, "{}", op.error);
    let status = agent.status().await;
    assert_eq!(status.state(), pb::ProxyState::Stopped);
    assert_eq!(status.pid, 0);
    assert!(status.listeners.is_empty());
    assert!(!alive(pid));
    let refused = TcpStream::connect(addr).await.unwrap_err();
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
    // And it comes back on the same port.
    agent.start_proxy().await;
    assert_eq!(agent.sql_addr().await, addr);
    round_trip(addr).await.unwrap();
}

#[tokio::test]
async fn stop_kills_an_obproxy_that_ignores_sigterm_after_stop_timeout() {
    let agent = Agent::start_with(Options {
        stop_timeout: "1s",
        ..Default::default()
    })
    .await;
    agent.set_standin_env(&[("ODP_STANDIN_IGNORE_SIGNALS", "true")]);
    let pid = agent.start_proxy().await.pid;
    let op = agent.stop_proxy().await;
    assert_eq!(op.state(), pb::OperationState::Succeeded, "{}", op.error);
    assert!(
        op.events.iter().any(|e| e.contains("SIGKILL")),
        "{:?}",
        op.events
    );
    assert!(!alive(pid));
}

#[tokio::test]
async fn force_restart_queues_new_connections_until_the_new_process_serves() {
    let agent = Agent::start().await;
    let old = agent.start_proxy().await.pid;
    let addr = agent.sql_addr().await;
    // The next obproxy takes a while to come up: connections made meanwhile
    // must wait in the backlog of the held listener, not be refused.
    agent.set_standin_env(&[("ODP_STANDIN_START_DELAY", "1s")]);
    let op = agent.restart(pb::RestartMode::Force, false).await.unwrap();
    let waiting = agent
        .watch_op_until(&op.id, |op| op.phase() == pb::OperationPhase::WaitingReady)
        .await;
    assert_eq!(
        waiting.phase(),
        pb::OperationPhase::WaitingReady,
        "{waiting:?}"
    );
    assert!(
        !alive(old),
        "the old process must be gone before the new one is ready"
    );
    // Made while the new process is still starting: it waits in the backlog (about the
    // rest of the 1 s start-up), then is served.
    let connected = std::time::Instant::now();
    round_trip(addr)
        .await
        .expect("a connection made during the restart was not served");
    assert!(
        connected.elapsed() >= std::time::Duration::from_millis(500),
        "served after {:?}: it did not wait for the new process",
        connected.elapsed()
    );
    let done = agent.wait_op(&op.id).await;
    assert_eq!(
        done.state(),
        pb::OperationState::Succeeded,
        "{}",
        done.error
    );
    assert_ne!(done.pid, old);
    let status = agent.status().await;
    assert_eq!(status.pid, done.pid);
    assert_eq!(status.restart_count, 1);
}

#[tokio::test]
async fn a_start_that_dies_fails_with_the_reason_and_is_not_running() {
    let agent = Agent::start().await;
    agent.set_standin_env(&[("ODP_STANDIN_FAIL_START", "true")]);
    let op = agent.try_start().await;
    assert_eq!(op.state(), pb::OperationState::Failed);
    assert!(op.error.contains("before it was ready"), "{}", op.error);
    let status = agent.status().await;
    assert_eq!(status.state(), pb::ProxyState::Unavailable);
    assert_eq!(status.pid, 0);
    assert!(agent.obproxy_pids().is_empty());
}

#[tokio::test]
async fn a_start_not_ready_in_time_is_killed_and_fails() {
    let agent = Agent::start_with(Options {
        start_timeout: "1s",
        ..Default::default()
    })
    .await;
    agent.set_standin_env(&[("ODP_STANDIN_NO_READY", "true")]);
    let op = agent.try_start().await;
    assert_eq!(op.state(), pb::OperationState::Failed);
    assert!(
        op.error.contains("not ready within start_timeout 1s"),
        "{}",
        op.error
    );
    assert_ne!(agent.status().await.state(), pb::ProxyState::Running);
    assert!(
        agent.obproxy_pids().is_empty(),
        "the unready process must be killed"
    );
}

#[tokio::test]
async fn a_second_operation_is_refused_naming_the_running_one() {
    let agent = Agent::start().await;
    // Slow enough that every call below lands while it starts.
    agent.set_standin_env(&[("ODP_STANDIN_START_DELAY", "5s")]);
    let mut client = agent.client().await;
    let start = client
        .start(pb::StartRequest {
            request_id: String::new(),
            wait: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(start.state(), pb::OperationState::Running);
    assert_eq!(agent.status().await.state(), pb::ProxyState::Starting);
    let err = client
        .stop(pb::StopRequest {
            request_id: String::new(),
            wait: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert!(err.message().contains(&start.id), "{}", err.message());
    assert_eq!(
        agent.wait_op(&start.id).await.state(),
        pb::OperationState::Succeeded
    );
}

#[tokio::test]
async fn a_repeated_request_id_returns_the_same_operation() {
    let agent = Agent::start().await;
    let mut client = agent.client().await;
    let request = pb::StartRequest {
        request_id: "deploy-42".into(),
        wait: true,
    };
    let first = client.start(request.clone()).await.unwrap().into_inner();
    let again = client.start(request).await.unwrap().into_inner();
    assert_eq!(first.id, again.id);
    assert_eq!(again.pid, first.pid);
    assert_eq!(
        agent.status().await.restart_count,
        0,
        "the repeat started nothing"
    );
    let other = client
        .stop(pb::StopRequest {
            request_id: "deploy-42".into(),
            wait: false,
        })
        .await
        .unwrap_err();
    assert_eq!(other.code(), tonic::Code::AlreadyExists);
    let got = client
        .get_operation(pb::GetOperationRequest {
            id: first.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.request_id, "deploy-42");
}

#[tokio::test]
async fn bad_arguments_are_invalid_and_name_the_field() {
    let agent = Agent::start().await;
    agent.start_proxy().await;
    let pid = agent.status().await.pid;
    let bad = [
        (
            pb::RestartRequest {
                mode: 0,
                ..Default::default()
            },
            "mode",
        ),
        (
            pb::RestartRequest {
                mode: 9,
                ..Default::default()
            },
            "mode",
        ),
        (
            pb::RestartRequest {
                mode: pb::RestartMode::Hot as i32,
                exit_timeout: Some(prost_types::Duration {
                    seconds: -5,
                    nanos: 0,
                }),
                ..Default::default()
            },
            "exit_timeout",
        ),
        (
            pb::RestartRequest {
                mode: pb::RestartMode::Hot as i32,
                binary: "bin/nope".into(),
                ..Default::default()
            },
            "binary",
        ),
        (
            pb::RestartRequest {
                mode: pb::RestartMode::Force as i32,
                request_id: "has space".into(),
                ..Default::default()
            },
            "request_id",
        ),
    ];
    for (request, field) in bad {
        let err = agent.restart_with(request).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(
            err.message().starts_with(field),
            "{field}: {}",
            err.message()
        );
    }
    let err = agent
        .client()
        .await
        .get_operation(pb::GetOperationRequest { id: String::new() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    // Nothing changed.
    assert_eq!(agent.status().await.pid, pid);
}

#[tokio::test]
async fn the_agent_survives_sigusr1_and_sigusr2() {
    let agent = Agent::start().await;
    agent.start_proxy().await;
    // The stand-in already sent SIGUSR1 (ready); now some from outside too.
    signal(agent.child.id(), libc::SIGUSR1);
    signal(agent.child.id(), libc::SIGUSR2);
    // A stop makes obproxy exit cleanly, which sends SIGUSR2 to us.
    assert_eq!(
        agent.stop_proxy().await.state(),
        pb::OperationState::Succeeded
    );
    assert_eq!(agent.status().await.state(), pb::ProxyState::Stopped);
}

#[tokio::test]
async fn the_agent_exits_on_sigterm_and_leaves_obproxy_serving() {
    let mut agent = Agent::start().await;
    let pid = agent.start_proxy().await.pid;
    let addr = agent.sql_addr().await;
    let status = agent.terminate();
    assert!(status.success(), "{status:?}\n{}", agent.logs());
    assert!(alive(pid));
    round_trip(addr)
        .await
        .expect("obproxy must keep serving without the agent");
}

/// A stand-in is ready within a millisecond or two, often before the spawner
/// thread has reported its pid: the readiness signal must not be lost then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quick_restarts_in_parallel_never_lose_a_readiness_signal() {
    let mut agents = Vec::new();
    for _ in 0..3 {
        agents.push(tokio::spawn(async {
            let agent = Agent::start().await;
            agent.start_proxy().await;
            for _ in 0..25 {
                let op = agent.restart(pb::RestartMode::Force, true).await.unwrap();
                assert_eq!(
                    op.state(),
                    pb::OperationState::Succeeded,
                    "{}\n{}\n{}",
                    op.error,
                    agent.logs(),
                    agent.obproxy_output()
                );
            }
            assert_eq!(agent.status().await.restart_count, 25);
        }));
    }
    for a in agents {
        a.await.unwrap();
    }
}

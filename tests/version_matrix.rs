//! Every operation against every obproxy version line, on the stand-in's
//! profiles (3.2, 4.2, 4.3): Start (a bootstrap start on a fresh home before
//! 4.3), a HOT restart under client load with not one failed request, a
//! FORCE restart that refuses no connection, and Stop; a hot upgrade from
//! 4.2 to 4.3 and back under load; IPv6 clients served after a HOT restart.
use crate::common;

use std::{net::SocketAddr, time::Duration};

use common::{Agent, Options, PATIENCE};
use odp_agent::{
    agent::obproxy::procfs,
    proto::agent as pb,
    testkit::{
        echo_backend::EchoBackend,
        loadgen::{Load, LoadConfig, Report},
    },
};
use tokio_util::sync::CancellationToken;

const V32: &str = "3.2.3";
const V42: &str = "4.2.3.0";
const V43: &str = "4.3.1.0";

/// An agent whose obproxy (the stand-in of `version`) forwards to an echo
/// backend, as a real one forwards to an observer; keep the backend alive.
async fn agent_at(version: &str, mut opts: Options) -> (Agent, EchoBackend) {
    let backend = EchoBackend::start().await.unwrap();
    opts.args
        .extend(["-o".into(), format!("standin_backend={}", backend.addr())]);
    let agent = Agent::start_with(opts).await;
    agent.set_standin_env(&[("ODP_STANDIN_VERSION", version)]);
    (agent, backend)
}

/// Requests through `addr` are answered now.
async fn served(addr: SocketAddr) {
    let probe = load(addr);
    carried(&probe, 10).await;
    assert_clean(&format!("through {addr}"), &probe.stop().await);
}

/// Fresh-connection clients (no long-lived sessions: every request proves a
/// connection accepted by whichever process holds the listener then).
fn load(addr: SocketAddr) -> Load {
    Load::start(
        LoadConfig {
            clients: 4,
            sessions: 0,
            // Bounds in case an operation hangs.
            duration: Some(Duration::from_secs(120)),
            ..LoadConfig::new(addr)
        },
        CancellationToken::new(),
    )
    .unwrap()
}

/// Waits until `more` further requests were answered: the load runs through
/// whatever process serves now.
async fn carried(load: &Load, more: u64) {
    let target = load.progress().ok + more;
    tokio::time::timeout(PATIENCE, load.wait_for_ok(target))
        .await
        .unwrap_or_else(|_| {
            panic!(
                "the load did not get {more} more answers: {:?}",
                load.progress()
            )
        });
}

fn kinds(status: &pb::ProxyStatus) -> Vec<pb::ListenerKind> {
    status.listeners.iter().map(|l| l.kind()).collect()
}

/// The `started` line the stand-in logged for `pid`.
fn started_line(agent: &Agent, pid: u32) -> String {
    let out = agent.obproxy_output();
    out.lines()
        .find(|l| l.contains("started") && l.contains(&format!("pid={pid} ")))
        .unwrap_or_else(|| panic!("no start of pid {pid} in:\n{out}"))
        .to_string()
}

fn assert_clean(what: &str, report: &Report) {
    assert_eq!(report.refused, 0, "{what}: {report}");
    assert_eq!(report.failed_requests(), 0, "{what}: {report}");
    assert!(report.ok > 0, "{what}: {report}");
}

async fn hot(agent: &Agent, binary: &str) -> pb::Operation {
    let op = agent
        .restart_with(pb::RestartRequest {
            mode: pb::RestartMode::Hot as i32,
            binary: binary.to_string(),
            wait: true,
            ..Default::default()
        })
        .await
        .expect("hot restart accepted");
    assert_eq!(
        op.state(),
        pb::OperationState::Succeeded,
        "{}\n{}\n{}",
        op.error,
        agent.logs(),
        agent.obproxy_output()
    );
    op
}

/// Start, HOT under load, FORCE and Stop against one version line.
async fn every_operation(version: &str) {
    let (agent, _backend) = agent_at(version, Options::default()).await;
    let rpc = version == V43;

    let start = agent.start_proxy().await;
    let status = agent.status().await;
    assert_eq!(status.version, version);
    let expected = if rpc {
        vec![pb::ListenerKind::Sql, pb::ListenerKind::Rpc]
    } else {
        vec![pb::ListenerKind::Sql]
    };
    assert_eq!(kinds(&status), expected, "{version}");
    let inodes: Vec<u64> = status.listeners.iter().map(|l| l.socket_inode).collect();
    assert!(procfs::holds_listeners(start.pid, &inodes), "{version}");
    // Before 4.3 a fresh home has no etc/obproxy_config.bin: the first start
    // binds the port itself and writes it; 4.3 inherits from the start.
    let first = started_line(&agent, start.pid);
    assert!(
        first.contains(&format!("inherited={}", rpc)),
        "{version}: {first}"
    );
    assert_eq!(
        agent.home().join("etc/obproxy_config.bin").exists(),
        !rpc,
        "{version}"
    );

    let addr = agent.sql_addr().await;
    let running = load(addr);
    carried(&running, 100).await;
    let op = hot(&agent, "").await;
    assert_eq!(op.previous_pid, start.pid);
    carried(&running, 100).await;
    let report = running.stop().await;
    assert_clean(&format!("{version} HOT"), &report);
    let restarted = started_line(&agent, op.pid);
    assert!(
        restarted.contains("inherited=true"),
        "{version}: {restarted}"
    );
    let status = agent.status().await;
    let same: Vec<u64> = status.listeners.iter().map(|l| l.socket_inode).collect();
    assert_eq!(
        same, inodes,
        "{version}: the listeners are the same sockets"
    );
    assert!(procfs::holds_listeners(op.pid, &inodes), "{version}");
    println!("{version} HOT under load: {report}");

    let running = load(addr);
    carried(&running, 100).await;
    let force = agent.restart(pb::RestartMode::Force, true).await.unwrap();
    assert_eq!(
        force.state(),
        pb::OperationState::Succeeded,
        "{}",
        force.error
    );
    carried(&running, 100).await;
    let report = running.stop().await;
    // The killed process's requests in flight are lost; nothing is refused.
    assert_eq!(report.refused, 0, "{version} FORCE: {report}");
    println!("{version} FORCE under load: {report}");

    let held = agent.status().await.listeners;
    let stop = agent.stop_proxy().await;
    assert_eq!(
        stop.state(),
        pb::OperationState::Succeeded,
        "{}",
        stop.error
    );
    let status = agent.status().await;
    assert!(status.listeners.is_empty(), "{version}: {status:?}");
    assert!(agent.obproxy_pids().is_empty(), "{version}");
    // Every port is closed, the RPC one too.
    for listener in held {
        let addr: SocketAddr = listener.address.parse().unwrap();
        let refused = tokio::net::TcpStream::connect(addr).await.unwrap_err();
        assert_eq!(
            refused.kind(),
            std::io::ErrorKind::ConnectionRefused,
            "{addr}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_works_on_obproxy_3_2() {
    every_operation(V32).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_works_on_obproxy_4_2() {
    every_operation(V42).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_works_on_obproxy_4_3() {
    every_operation(V43).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_upgrade_from_4_2_to_4_3_and_back_fails_no_request() {
    let (agent, _backend) = agent_at(V42, Options::default()).await;
    let v43 = agent.add_binary("obproxy-4.3", &[("ODP_STANDIN_VERSION", V43)]);
    let start = agent.start_proxy().await;
    let addr = agent.sql_addr().await;
    let sql = agent.status().await.listeners[0].socket_inode;
    let running = load(addr);
    carried(&running, 100).await;

    let up = hot(&agent, &v43).await;
    assert_eq!(up.previous_pid, start.pid);
    carried(&running, 100).await;
    let status = agent.status().await;
    assert_eq!(status.version, V43);
    assert_eq!(
        kinds(&status),
        [pb::ListenerKind::Sql, pb::ListenerKind::Rpc]
    );
    let rpc = status.listeners[1].socket_inode;
    // 4.3 got the RPC listener the agent bound for it, and uses it.
    assert!(procfs::holds_listeners(up.pid, &[sql, rpc]));
    let line = started_line(&agent, up.pid);
    assert!(line.contains("inherited=true"), "{line}");
    assert!(
        line.contains(&format!("rpc={}", status.listeners[1].address)),
        "{line}"
    );

    let down = hot(&agent, "bin/obproxy").await;
    carried(&running, 100).await;
    let report = running.stop().await;
    assert_clean("4.2 -> 4.3 -> 4.2", &report);
    println!("4.2 -> 4.3 -> 4.2 under load: {report}");
    let status = agent.status().await;
    assert_eq!(status.version, V42);
    // The RPC port is let go once no serving obproxy has the service.
    assert_eq!(kinds(&status), [pb::ListenerKind::Sql]);
    assert_eq!(status.listeners[0].socket_inode, sql);
    assert!(procfs::holds_listeners(down.pid, &[sql]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_clients_are_served_after_a_hot_restart() {
    for version in [V42, V43] {
        let (agent, _backend) = agent_at(
            version,
            Options {
                listen: r#"["127.0.0.1:0", "[::1]:0"]"#,
                rpc_listen: r#"["127.0.0.1:0", "[::1]:0"]"#,
                ..Default::default()
            },
        )
        .await;
        let start = agent.start_proxy().await;
        let cmdline = std::fs::read(format!("/proc/{}/cmdline", start.pid)).unwrap();
        assert!(
            String::from_utf8_lossy(&cmdline).contains("ip_listen_mode=3"),
            "{version}"
        );
        let status = agent.status().await;
        let v6: SocketAddr = status.listeners[1].address.parse().unwrap();
        assert!(v6.is_ipv6(), "{version}: {status:?}");
        served(v6).await;
        let running = load(v6);
        carried(&running, 100).await;
        let op = hot(&agent, "").await;
        carried(&running, 100).await;
        let report = running.stop().await;
        assert_clean(&format!("{version} IPv6"), &report);
        // The new process accepts on the IPv6 listener it inherited.
        let line = started_line(&agent, op.pid);
        assert!(line.contains("inherited=true"), "{version}: {line}");
        served(v6).await;
    }
}

#[tokio::test]
async fn an_ipv6_listener_is_refused_for_obproxy_before_4_1_naming_the_version() {
    let (agent, _backend) = agent_at(
        V32,
        Options {
            listen: r#"["127.0.0.1:0", "[::1]:0"]"#,
            rpc_listen: r#"["127.0.0.1:0", "[::1]:0"]"#,
            ..Default::default()
        },
    )
    .await;
    let op = agent.try_start().await;
    assert_eq!(op.state(), pb::OperationState::Failed);
    assert!(op.error.contains("obproxy 3.2.3"), "{}", op.error);
    assert!(op.error.contains("IPv6"), "{}", op.error);
    assert!(agent.obproxy_pids().is_empty());
}

#[tokio::test]
async fn a_failed_upgrade_to_4_3_leaves_4_2_serving_and_no_rpc_port_held() {
    let (agent, _backend) = agent_at(V42, Options::default()).await;
    let broken = agent.add_binary(
        "obproxy-4.3",
        &[
            ("ODP_STANDIN_VERSION", V43),
            ("ODP_STANDIN_FAIL_START", "true"),
        ],
    );
    let start = agent.start_proxy().await;
    let op = agent
        .restart_with(pb::RestartRequest {
            mode: pb::RestartMode::Hot as i32,
            binary: broken,
            wait: true,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(op.state(), pb::OperationState::Failed, "{op:?}");
    let status = agent.status().await;
    assert_eq!(status.pid, start.pid);
    assert_eq!(kinds(&status), [pb::ListenerKind::Sql], "{status:?}");
    served(agent.sql_addr().await).await;
}

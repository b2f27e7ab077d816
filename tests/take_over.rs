//! Taking over an obproxy the agent did not start: one started by hand (as
//! obd does: daemonized, in its home, binding its own port) keeps serving a
//! client load while an agent with no state finds it, adopts it and then hot
//! restarts it; no request fails.
use crate::common;

use std::{net::SocketAddr, path::Path, process::Command};

use common::{
    Agent, Load, Options, STANDIN,
    ports::{reserve_port, wait_serving},
};
use odp_agent::{agent::obproxy::procfs, proto::agent as pb};

/// The stand-in started by hand in `home`, fresh (not inherited): it
/// daemonizes like obproxy and binds `-p port` itself.
fn start_by_hand(home: &Path, port: u16, rpc_port: u16) {
    let out = std::fs::File::create(home.join("by-hand.out")).unwrap();
    let status = Command::new(home.join("bin/obproxy"))
        .args(["-p", &port.to_string(), "-s", &rpc_port.to_string()])
        .args(["-n", "byhand", "-o", "standin_version=4.3.1.0"])
        .current_dir(home)
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .status()
        .unwrap();
    // The foreground part returns once it has daemonized.
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_obproxy_started_by_hand_is_taken_over_and_hot_restarted_under_load_without_a_failed_request()
 {
    let any: std::net::IpAddr = "0.0.0.0".parse().unwrap();
    let (_sql_reservation, port) = reserve_port(any);
    let (_rpc_reservation, rpc_port) = reserve_port(any);
    let listen: &'static str = Box::leak(format!(r#"["0.0.0.0:{port}"]"#).into_boxed_str());
    let rpc_listen: &'static str = Box::leak(format!(r#"["0.0.0.0:{rpc_port}"]"#).into_boxed_str());
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut load = None;
    let opts = Options {
        listen,
        rpc_listen,
        ..Default::default()
    };
    let agent = Agent::start_customized(opts, |config| {
        // The home as obd leaves it: the program itself under bin/.
        let home = config.parent().unwrap().join("odp");
        let bin = home.join("bin/obproxy");
        std::fs::remove_file(&bin).unwrap();
        std::os::unix::fs::symlink(STANDIN, &bin).unwrap();
        start_by_hand(&home, port, rpc_port);
        let rt = tokio::runtime::Handle::current();
        tokio::task::block_in_place(|| rt.block_on(wait_serving(addr)));
        load = Some(Load::start(addr));
        let mut command = common::agent_command(config);
        // What `-V` reports (the stand-in started by hand was told by -o).
        command.env("ODP_STANDIN_VERSION", "4.3.1.0");
        command
    })
    .await;
    let load = load.unwrap();
    let by_hand = agent.obproxy_pids();
    assert_eq!(by_hand.len(), 1, "{by_hand:?}");
    let status = agent
        .wait_status(|s| s.state() == pb::ProxyState::Running)
        .await;
    assert_eq!(status.pid, by_hand[0], "{}", agent.logs());
    // Its SQL listener and the RPC listener it bound itself (4.3).
    let held: Vec<(String, pb::ListenerKind)> = status
        .listeners
        .iter()
        .map(|l| (l.address.clone(), l.kind()))
        .collect();
    assert_eq!(
        held,
        [
            (format!("0.0.0.0:{port}"), pb::ListenerKind::Sql),
            (format!("0.0.0.0:{rpc_port}"), pb::ListenerKind::Rpc)
        ]
    );
    let inodes: Vec<u64> = status.listeners.iter().map(|l| l.socket_inode).collect();
    assert!(procfs::holds_listeners(by_hand[0], &inodes));
    let op = agent
        .client()
        .await
        .get_status(pb::GetStatusRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(op.desired_running);
    let state = std::fs::read_to_string(agent.dir.path().join("state/agent-state.json")).unwrap();
    assert!(
        state.contains(&format!("\"pid\": {}", by_hand[0])),
        "{state}"
    );

    let op = agent
        .restart(pb::RestartMode::Hot, true)
        .await
        .expect("hot restart accepted");
    assert_eq!(
        op.state(),
        pb::OperationState::Succeeded,
        "{}\n{}",
        op.error,
        agent.logs()
    );
    let report = load.finish().await;
    assert_eq!(report.failed, 0, "{report:?}");
    assert_eq!(report.refused, 0, "{report:?}");
    assert!(report.ok > 0, "{report:?}");
    let status = agent.status().await;
    assert_ne!(status.pid, by_hand[0]);
    // The new process inherited both sockets (a 4.3 that had to bind the RPC
    // port itself would have died on it while the old one held it).
    assert!(procfs::holds_listeners(status.pid, &inodes));
    assert!(
        !common::alive(by_hand[0]),
        "the old process drained and left"
    );
}

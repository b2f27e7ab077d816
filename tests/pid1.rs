//! An agent that is PID 1 (a container's entrypoint, here a new PID
//! namespace made by `unshare --pid --fork`): obproxy signals readiness only
//! to a parent that is not PID 1, so the agent forks and PID 1 stays a
//! minimal init. Start and a hot restart must complete and serve, and a
//! SIGTERM to PID 1 reaches the agent.
use crate::common;

use std::process::Command;

use common::{AGENT, Agent, Options, round_trip};
use odp_agent::proto::agent as pb;

#[tokio::test]
async fn an_agent_that_is_pid_1_starts_and_hot_restarts_obproxy() {
    let have_unshare = Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "true"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        have_unshare,
        "this test needs unshare(1) with PID and mount namespaces (util-linux, root)"
    );
    let mut agent = Agent::start_customized(Options::default(), |config| {
        let mut command = Command::new("unshare");
        // --kill-child: the namespace (agent and obproxy) dies with the test.
        command
            .args(["--pid", "--fork", "--mount-proc", "--kill-child", AGENT])
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", "info");
        command
    })
    .await;
    agent.log.wait_for(|l| l.contains("running as PID 1"));
    let op = agent.start_proxy().await;
    assert_eq!(op.state(), pb::OperationState::Succeeded);
    let addr = agent.sql_addr().await;
    round_trip(addr).await.unwrap();
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
    round_trip(addr).await.unwrap();
    // SIGTERM to PID 1 (the unshare child) is forwarded to the agent, which
    // logs its shutdown; PID 1 then exits with the agent's status.
    let init = std::fs::read_to_string(format!(
        "/proc/{}/task/{}/children",
        agent.child.id(),
        agent.child.id()
    ))
    .unwrap();
    let init: u32 = init.split_whitespace().next().unwrap().parse().unwrap();
    common::signal(init, libc::SIGTERM);
    agent.log.wait_for(|l| l.contains("odp-agent stopped"));
    let status = common::wait_child(&mut agent.child);
    assert!(status.success(), "{status:?}");
}

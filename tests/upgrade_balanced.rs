//! Upgrade All behind a real HAProxy (`lb_drain = true`): each ODP's server
//! is drained before its move and set ready after, and when a move fails the
//! rollback puts back the server the failed move left out, so every server
//! ends READY on the binary it ran before.
use crate::common;

use common::{
    Agent, Options,
    balanced::{coordinator, haproxy_section, run, session, start_all, succeeded},
    cluster::CLUSTER,
    haproxy::{HaProxy, listen_on, odp_ports},
    upgrade_package::{TARGET, V42, V43, break_host, package, sha256, stage},
};
use odp_agent::proto::coordinator as pb;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_move_drained_by_lb_drain_is_put_back_by_the_rollback() {
    let (_reserved, ports) = odp_ports(3);
    let mut agents = Vec::new();
    for &port in &ports {
        let agent = Agent::start_with(Options {
            listen: listen_on(port),
            exit_timeout: "2s",
            ..Options::default()
        })
        .await;
        agent.set_standin_env(&[("ODP_STANDIN_VERSION", V42)]);
        agents.push(agent);
    }
    let servers: Vec<(String, u16)> = ports
        .iter()
        .enumerate()
        .map(|(i, &port)| (format!("odp{}", i + 1), port))
        .collect();
    let content = package(V43);
    for a in &agents {
        stage(a, &content);
    }
    // The second host's start of the new binary fails: its old process
    // serves on, and its server was drained before the move.
    break_host(&agents[1]);
    let haproxy = HaProxy::start(&servers);
    let section = format!(
        "lb_drain = true\n{}",
        haproxy_section(&haproxy.socket.display().to_string(), &agents, "10s")
    );
    let cluster = coordinator(agents, section);
    succeeded(&start_all(&cluster).await, &cluster);
    assert_eq!(haproxy.states(), ["ready"; 3]);

    let request = pb::UpgradeAllRequest {
        cluster: CLUSTER.into(),
        binary: TARGET.into(),
        binary_sha256: sha256(&content),
        canary_size: 1,
        batch_size: 1,
        ..Default::default()
    };
    let done = run(&cluster, cluster.client().await.upgrade_all(request).await).await;
    assert_eq!(
        done.state(),
        pb::TaskState::RolledBack,
        "{}\n{:#?}\n{}",
        done.error,
        done.subtasks,
        cluster.logs()
    );
    let states: Vec<pb::SubtaskState> = done.subtasks.iter().map(|s| s.state()).collect();
    assert_eq!(
        states,
        [
            pb::SubtaskState::RolledBack,
            pb::SubtaskState::Failed,
            pb::SubtaskState::Skipped
        ]
    );
    // The canary and the failed one were drained before their moves, and
    // each server is ready again: the canary's after its move, the failed
    // one's only by the rollback (a failed move leaves its server out).
    for s in &done.subtasks[..2] {
        let b = s.balancer.as_ref().expect("a balancer note");
        assert!(b.drain.starts_with("no sessions after"), "{b:?}");
        assert!(
            b.log.iter().any(|l| l.contains("state drain: done")),
            "{b:?}"
        );
        assert_eq!(b.state(), pb::BalancerState::Ready, "{s:?}");
    }
    assert!(
        done.subtasks[1].last_error.contains("still on"),
        "{:?}",
        done.subtasks[1]
    );
    assert!(done.subtasks[2].balancer.is_none(), "never touched");
    assert_eq!(haproxy.states(), ["ready"; 3]);
    for a in &cluster.agents {
        assert_eq!(a.status().await.version, V42);
    }
    // HAProxy sends clients to every ODP again.
    for _ in 0..3 {
        drop(session(haproxy.frontend).await);
    }
}

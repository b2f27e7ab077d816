//! Batches that follow the load balancer, with a real HAProxy (Debian's `haproxy`) in front
//! of three real agents and their stand-ins, and a real coordinator configured with
//! `[clusters.load_balancer]` (the command kind: `tests/load_balancer_command.rs`).
//!
//! - Stop All leaves every server in maint; Start All brings each back to ready.
//! - A drain waits for the server's open session to end before the ODP is touched.
//! - A balancer that cannot be reached fails the subtask before the ODP is touched.
//! - A task resumed after the coordinator was killed puts back the server it left drained.
//! - HOT restarts drain with `lb_drain`; a restart of every ODP at once drains none.
use crate::common;

use common::{
    balanced::{
        agents, balancer_view, cluster_status, coordinator, force_restart_one_by_one,
        haproxy_section, run, session, start_all, succeeded,
    },
    cluster::CLUSTER,
    haproxy::HaProxy,
};
use odp_agent::proto::{agent::RestartMode, coordinator as pb};
use tokio::net::TcpStream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_all_leaves_every_server_in_maint_and_start_all_brings_them_back() {
    let (agents, servers, _reserved) = agents().await;
    let haproxy = HaProxy::start(&servers);
    let section = haproxy_section(&haproxy.socket.display().to_string(), &agents, "10s");
    let cluster = coordinator(agents, section);
    let started = start_all(&cluster).await;
    succeeded(&started, &cluster);
    assert_eq!(haproxy.states(), ["ready"; 3]);
    drop(session(haproxy.frontend).await);

    let request = pb::StopAllRequest {
        cluster: CLUSTER.into(),
        ..Default::default()
    };
    let stopped = run(&cluster, cluster.client().await.stop_all(request).await).await;
    succeeded(&stopped, &cluster);
    assert_eq!(haproxy.states(), ["maint"; 3]);
    for s in &stopped.subtasks {
        let b = s.balancer.as_ref().unwrap();
        assert_eq!(b.state(), pb::BalancerState::Maint, "{b:?}");
        assert!(b.drain.starts_with("no sessions after"), "{b:?}");
        assert!(
            b.log.iter().any(|l| l.contains("state drain: done")),
            "{b:?}"
        );
    }
    assert_eq!(
        balancer_view(&cluster).await,
        [(pb::BalancerState::Maint, 0); 3]
    );
    let table = cluster.odpctl(&["cluster", "status", CLUSTER]);
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.contains("LB SESS"), "{table}");
    assert_eq!(table.matches(" maint ").count(), 3, "{table}");

    let started = start_all(&cluster).await;
    succeeded(&started, &cluster);
    assert_eq!(haproxy.states(), ["ready"; 3]);
    for s in &started.subtasks {
        let b = s.balancer.as_ref().unwrap();
        assert_eq!(b.state(), pb::BalancerState::Ready, "{b:?}");
    }
    assert_eq!(
        balancer_view(&cluster).await,
        [(pb::BalancerState::Ready, 0); 3]
    );
    // HAProxy sends clients to every ODP again.
    for _ in 0..3 {
        drop(session(haproxy.frontend).await);
    }
    let table = cluster.odpctl(&["-o", "json", "cluster", "status", CLUSTER]);
    let json: serde_json::Value = serde_json::from_slice(&table.stdout).unwrap();
    assert_eq!(json["odps"][2]["balancer"]["state"], "BALANCER_STATE_READY");
    assert_eq!(json["odps"][2]["balancer"]["server"], "odp3");
}

/// One held session on every server, the ODPs started.
async fn sessions_on_every_server(haproxy: &HaProxy) -> Vec<TcpStream> {
    let mut sessions = Vec::new();
    for _ in 0..3 {
        sessions.push(session(haproxy.frontend).await);
    }
    // Round robin: one each.
    assert!(
        haproxy.servers().iter().all(|s| s.sessions == 1),
        "{:?}",
        haproxy.servers()
    );
    sessions
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_waits_for_the_open_session_before_the_odp_is_restarted() {
    let (agents, servers, _reserved) = agents().await;
    let haproxy = HaProxy::start(&servers);
    // The runtime API over TCP this time.
    let section = haproxy_section(&haproxy.tcp_socket.to_string(), &agents, "30s");
    let cluster = coordinator(agents, section);
    succeeded(&start_all(&cluster).await, &cluster);
    let before: Vec<u32> = {
        let mut pids = Vec::new();
        for a in &cluster.agents {
            pids.push(a.status().await.pid);
        }
        pids
    };
    let mut sessions = sessions_on_every_server(&haproxy).await;

    let task = force_restart_one_by_one(&cluster).await;
    let waiting = cluster
        .watch_task_until(&task.id, |t| {
            t.subtasks[0]
                .balancer
                .as_ref()
                .is_some_and(|b| b.drain == "waiting for 1 session(s)")
        })
        .await;
    assert_eq!(waiting.state(), pb::TaskState::Running, "{waiting:#?}");
    // Out of rotation, its session still served, its ODP not touched; the others in.
    assert_eq!(haproxy.states(), ["drain", "ready", "ready"]);
    assert_eq!(
        balancer_view(&cluster).await,
        [
            (pb::BalancerState::Drain, 1),
            (pb::BalancerState::Ready, 1),
            (pb::BalancerState::Ready, 1)
        ]
    );
    common::echo(&mut sessions[0], b"still served")
        .await
        .unwrap();
    assert_eq!(cluster.agents[0].status().await.pid, before[0]);
    assert!(
        cluster.agents[0]
            .audit()
            .iter()
            .all(|l| l["rpc"] != "Restart")
    );

    // The clients leave: each drain ends as its session does.
    sessions.clear();
    let done = cluster.wait_task(&task.id).await;
    succeeded(&done, &cluster);
    for (i, s) in done.subtasks.iter().enumerate() {
        let b = s.balancer.as_ref().unwrap();
        assert!(b.drain.starts_with("no sessions after"), "{b:?}");
        assert_eq!(b.state(), pb::BalancerState::Ready, "{b:?}");
        assert_ne!(cluster.agents[i].status().await.pid, before[i]);
    }
    assert_eq!(haproxy.states(), ["ready"; 3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_balancer_fails_the_subtask_before_the_odp_is_touched() {
    let (agents, servers, _reserved) = agents().await;
    let mut haproxy = HaProxy::start(&servers);
    let section = haproxy_section(&haproxy.tcp_socket.to_string(), &agents, "10s");
    let cluster = coordinator(agents, section);
    succeeded(&start_all(&cluster).await, &cluster);
    let mut before = Vec::new();
    for a in &cluster.agents {
        before.push(a.status().await);
    }
    haproxy.kill();

    let task = force_restart_one_by_one(&cluster).await;
    let done = cluster.wait_task(&task.id).await;
    assert_eq!(done.state(), pb::TaskState::Failed, "{done:#?}");
    let first = &done.subtasks[0];
    assert_eq!(first.state(), pb::SubtaskState::Failed, "{first:#?}");
    assert!(
        first
            .last_error
            .contains("could not take server odp1 out (the ODP was not touched)"),
        "{}",
        first.last_error
    );
    assert!(
        first.last_error.contains("cannot connect"),
        "{}",
        first.last_error
    );
    assert!(first.operation_id.is_empty(), "{first:#?}");
    // The failure budget (0) counted it: no further ODP was taken.
    for s in &done.subtasks[1..] {
        assert_eq!(s.state(), pb::SubtaskState::Skipped, "{s:#?}");
    }
    for (agent, before) in cluster.agents.iter().zip(&before) {
        let now = agent.status().await;
        assert_eq!(
            (now.pid, now.restart_count),
            (before.pid, before.restart_count)
        );
        let restarts: Vec<_> = agent
            .audit()
            .into_iter()
            .filter(|l| l["rpc"] == "Restart")
            .collect();
        assert!(restarts.is_empty(), "the agent was asked: {restarts:?}");
    }
    // The status says so per ODP, and still shows the agents.
    let status = cluster_status(&cluster).await;
    for o in &status.odps {
        assert_eq!(o.state(), odp_agent::proto::agent::ProxyState::Running);
        let b = o.balancer.as_ref().unwrap();
        assert!(b.error.contains("cannot connect"), "{b:?}");
    }
    let table = cluster.odpctl(&["cluster", "status", CLUSTER]);
    assert!(table.status.success());
    let table = String::from_utf8_lossy(&table.stdout);
    assert_eq!(table.matches("lb: load balancer").count(), 3, "{table}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_task_puts_back_the_server_it_left_drained() {
    let (agents, servers, _reserved) = agents().await;
    let haproxy = HaProxy::start(&servers);
    let section = haproxy_section(&haproxy.socket.display().to_string(), &agents, "30s");
    let mut cluster = coordinator(agents, section);
    succeeded(&start_all(&cluster).await, &cluster);
    let mut sessions = sessions_on_every_server(&haproxy).await;
    let first_pid = cluster.agents[0].status().await.pid;

    let task = force_restart_one_by_one(&cluster).await;
    cluster
        .watch_task_until(&task.id, |t| {
            t.subtasks[0]
                .balancer
                .as_ref()
                .is_some_and(|b| b.drain.starts_with("waiting for"))
        })
        .await;
    cluster.kill_coordinator();
    assert_eq!(haproxy.states(), ["drain", "ready", "ready"]);
    cluster.start_coordinator();

    // From its store, the resumed task knows the server it drained.
    let resumed = cluster
        .client()
        .await
        .get_task(pb::GetTaskRequest {
            id: task.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let note = resumed.subtasks[0].balancer.as_ref().unwrap();
    assert_eq!(
        (note.server.as_str(), note.state()),
        ("odp1", pb::BalancerState::Drain)
    );
    assert_eq!(cluster.agents[0].status().await.pid, first_pid);
    sessions.clear();
    let done = cluster.wait_task(&task.id).await;
    succeeded(&done, &cluster);
    assert_eq!(haproxy.states(), ["ready"; 3]);
    assert_ne!(cluster.agents[0].status().await.pid, first_pid);
    // Restarted once, not twice.
    let restarts = cluster.agents[0]
        .audit()
        .into_iter()
        .filter(|l| l["rpc"] == "Restart")
        .count();
    assert_eq!(restarts, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_restarts_drain_with_lb_drain_and_a_whole_cluster_batch_drains_nothing() {
    let (agents, servers, _reserved) = agents().await;
    let haproxy = HaProxy::start(&servers);
    let section = format!(
        "lb_drain = true\n{}",
        haproxy_section(&haproxy.socket.display().to_string(), &agents, "10s")
    );
    let cluster = coordinator(agents, section);
    succeeded(&start_all(&cluster).await, &cluster);

    let request = pb::RestartAllRequest {
        cluster: CLUSTER.into(),
        mode: RestartMode::Hot as i32,
        batch_size: 1,
        ..Default::default()
    };
    let hot = run(&cluster, cluster.client().await.restart_all(request).await).await;
    succeeded(&hot, &cluster);
    for s in &hot.subtasks {
        let b = s.balancer.as_ref().unwrap();
        assert!(b.drain.starts_with("no sessions after"), "{b:?}");
        assert!(
            b.log.iter().any(|l| l.contains("state drain: done")),
            "{b:?}"
        );
        assert_eq!(b.state(), pb::BalancerState::Ready, "{b:?}");
    }

    // FORCE with every ODP in one batch: nothing drained, each set ready.
    let request = pb::RestartAllRequest {
        cluster: CLUSTER.into(),
        mode: RestartMode::Force as i32,
        ..Default::default()
    };
    let force = run(&cluster, cluster.client().await.restart_all(request).await).await;
    succeeded(&force, &cluster);
    for s in &force.subtasks {
        let b = s.balancer.as_ref().unwrap();
        assert!(b.drain.contains("the batch holds every ODP"), "{b:?}");
        assert!(!b.log.iter().any(|l| l.contains("state drain")), "{b:?}");
        assert_eq!(b.state(), pb::BalancerState::Ready, "{b:?}");
    }
    assert_eq!(haproxy.states(), ["ready"; 3]);
}

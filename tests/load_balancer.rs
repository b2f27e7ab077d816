//! Batches that follow the load balancer, with a real HAProxy (Debian's `haproxy`) in front
//! of three real agents and their stand-ins, and a real coordinator configured with
//! `[clusters.load_balancer]`; and the command kind with a script that records its calls.
//!
//! - Stop All leaves every server in maint; Start All brings each back to ready.
//! - A drain waits for the server's open session to end before the ODP is touched.
//! - A balancer that cannot be reached fails the subtask before the ODP is touched.
//! - A task resumed after the coordinator was killed puts back the server it left drained.
//! - HOT restarts drain with `lb_drain`; a restart of every ODP at once drains none.
//! - The command kind runs its argv templates without a shell, in order per ODP, and a
//!   drain that outlasts `drain_timeout` says so.
//! - A bad section is refused at start with exit 78, naming its key.
mod common;

use std::{net::SocketAddr, process::Command};

use common::{
    Agent, Options,
    cluster::{CLUSTER, COORDINATOR, Cluster, Settings},
    haproxy::{HaProxy, listen_on, odp_ports},
};
use odp_agent::proto::{agent::RestartMode, coordinator as pb};
use tokio::net::TcpStream;

/// Three agents on fixed SQL ports (an ODP keeps its port across Stop All and Start All, as
/// HAProxy's server lines need), their server names and the reservations of their ports.
async fn agents() -> (Vec<Agent>, Vec<(String, u16)>, Vec<socket2::Socket>) {
    let (reserved, ports) = odp_ports(3);
    let mut agents = Vec::new();
    for &port in &ports {
        agents.push(
            Agent::start_with(Options {
                listen: listen_on(port),
                ..Options::default()
            })
            .await,
        );
    }
    let servers = ports
        .iter()
        .enumerate()
        .map(|(i, &port)| (format!("odp{}", i + 1), port))
        .collect();
    (agents, servers, reserved)
}

/// `[clusters.load_balancer]` of kind haproxy for `agents`, named odp1.. in order.
fn haproxy_section(socket: &str, agents: &[Agent], drain_timeout: &str) -> String {
    let servers: Vec<String> = agents
        .iter()
        .enumerate()
        .map(|(i, a)| format!("\"{}\" = \"odp{}\"", a.grpc, i + 1))
        .collect();
    format!(
        "[clusters.load_balancer]\nkind = \"haproxy\"\nsocket = \"{socket}\"\nbackend = \"odp\"\n\
         servers = {{ {} }}\ndrain_timeout = \"{drain_timeout}\"\ntimeout = \"2s\"\n",
        servers.join(", ")
    )
}

fn coordinator(agents: Vec<Agent>, section: String) -> Cluster {
    Cluster::with_settings(
        agents,
        Settings {
            more: section,
            ..Settings::default()
        },
    )
}

/// Submits a task and follows it to its end.
async fn run(
    cluster: &Cluster,
    task: Result<tonic::Response<pb::Task>, tonic::Status>,
) -> pb::Task {
    let task = task.unwrap().into_inner();
    cluster.wait_task(&task.id).await
}

async fn start_all(cluster: &Cluster) -> pb::Task {
    let request = pb::StartAllRequest {
        cluster: CLUSTER.into(),
        ..Default::default()
    };
    run(cluster, cluster.client().await.start_all(request).await).await
}

/// FORCE Restart All, one ODP per batch, as submitted (not followed).
async fn force_restart_one_by_one(cluster: &Cluster) -> pb::Task {
    let request = pb::RestartAllRequest {
        cluster: CLUSTER.into(),
        mode: RestartMode::Force as i32,
        batch_size: 1,
        ..Default::default()
    };
    cluster
        .client()
        .await
        .restart_all(request)
        .await
        .unwrap()
        .into_inner()
}

fn succeeded(task: &pb::Task, cluster: &Cluster) {
    assert_eq!(
        task.state(),
        pb::TaskState::Succeeded,
        "{}: {}\n{:#?}\n{}",
        task.id,
        task.error,
        task.subtasks,
        cluster.logs()
    );
}

async fn cluster_status(cluster: &Cluster) -> pb::ClusterStatus {
    cluster
        .client()
        .await
        .get_cluster_status(pb::GetClusterStatusRequest {
            cluster: CLUSTER.into(),
        })
        .await
        .unwrap()
        .into_inner()
}

/// Each ODP's balancer state and sessions, as GetClusterStatus reports them.
async fn balancer_view(cluster: &Cluster) -> Vec<(pb::BalancerState, u64)> {
    cluster_status(cluster)
        .await
        .odps
        .iter()
        .map(|o| {
            let b = o.balancer.as_ref().expect("a balancer entry per ODP");
            assert!(b.error.is_empty(), "{}", b.error);
            (b.state(), b.sessions)
        })
        .collect()
}

/// A client session through HAProxy: the stand-in's greeting read, one echo done.
async fn session(frontend: SocketAddr) -> TcpStream {
    let mut stream = common::connect(frontend).await.unwrap();
    common::echo(&mut stream, b"hello").await.unwrap();
    stream
}

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

/// Records each call (`[arg]` per argument, one line per call) and answers `sessions`
/// from `sessions-<agent>` when it exists (0 otherwise), `state` with `ready`.
const SCRIPT: &str = r#"#!/bin/sh
dir=$(dirname "$0")
line=""
for arg in "$@"; do line="$line[$arg]"; done
echo "$line" >> "$dir/calls.log"
case "$1" in
  sessions) if [ -f "$dir/sessions-$2" ]; then cat "$dir/sessions-$2"; else echo 0; fi ;;
  state) echo ready ;;
  *) echo "did $1 $2" ;;
esac
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_kind_runs_its_templates_without_a_shell_in_order_per_odp() {
    let mut agents = Vec::new();
    for _ in 0..3 {
        agents.push(Agent::start().await);
    }
    for a in &agents {
        a.start_proxy().await;
    }
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("lb.sh");
    std::fs::write(&script, SCRIPT).unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let names: Vec<String> = agents.iter().map(|a| a.grpc.to_string()).collect();
    // The third ODP keeps one session for ever: its drain ends at drain_timeout.
    std::fs::write(dir.path().join(format!("sessions-{}", names[2])), "1\n").unwrap();
    let tricky = "a b;$(touch pwned)";
    let script = script.display().to_string();
    let section = format!(
        "[clusters.load_balancer]\nkind = \"command\"\n\
         drain = [\"{script}\", \"drain\", \"{{agent}}\", \"{tricky}\"]\n\
         enable = [\"{script}\", \"enable\", \"{{agent}}\"]\n\
         sessions = [\"{script}\", \"sessions\", \"{{agent}}\"]\n\
         state = [\"{script}\", \"state\", \"{{agent}}\"]\n\
         drain_timeout = \"1s\"\n"
    );
    let cluster = coordinator(agents, section);
    let mut before = Vec::new();
    for a in &cluster.agents {
        before.push(a.status().await.pid);
    }
    let task = force_restart_one_by_one(&cluster).await;
    let done = cluster.wait_task(&task.id).await;
    succeeded(&done, &cluster);

    let calls = std::fs::read_to_string(dir.path().join("calls.log")).unwrap();
    let expected: Vec<String> = names
        .iter()
        .flat_map(|a| {
            // The third ODP's sessions are asked until drain_timeout: at least twice.
            let mut calls = vec![
                format!("[drain][{a}][{tricky}]"),
                format!("[sessions][{a}]"),
            ];
            if *a == names[2] {
                calls.push(format!("[sessions][{a}]"));
            }
            calls.push(format!("[enable][{a}]"));
            calls
        })
        .collect();
    let seen: Vec<&str> = calls.lines().collect();
    // Repeated sessions calls of the third collapse to the two the expectation holds.
    let mut collapsed: Vec<&str> = Vec::new();
    for line in &seen {
        if collapsed.len() >= 2
            && collapsed[collapsed.len() - 1] == *line
            && collapsed[collapsed.len() - 2] == *line
        {
            continue;
        }
        collapsed.push(line);
    }
    assert_eq!(collapsed, expected, "{calls}");
    assert!(
        !dir.path().join("pwned").exists(),
        "a shell ran the template"
    );
    assert!(
        !std::path::Path::new("pwned").exists(),
        "a shell ran the template"
    );

    for (i, s) in done.subtasks.iter().enumerate() {
        let b = s.balancer.as_ref().unwrap();
        assert_eq!(
            b.server, names[i],
            "without servers, the agent names the server"
        );
        assert_eq!(b.state(), pb::BalancerState::Ready, "{b:?}");
        assert!(
            b.log.iter().any(|l| l.contains("exited 0: did enable")),
            "the command's output is in the subtask: {b:?}"
        );
        assert_ne!(cluster.agents[i].status().await.pid, before[i]);
    }
    assert!(
        done.subtasks[0]
            .balancer
            .as_ref()
            .unwrap()
            .drain
            .starts_with("no sessions after")
    );
    let third = done.subtasks[2].balancer.as_ref().unwrap();
    assert_eq!(
        third.drain, "drain_timeout (1s) passed with 1 session(s) still open",
        "{third:?}"
    );
    // The status asks the sessions and state commands.
    assert_eq!(
        balancer_view(&cluster).await,
        [
            (pb::BalancerState::Ready, 0),
            (pb::BalancerState::Ready, 0),
            (pb::BalancerState::Ready, 1)
        ]
    );
}

#[test]
fn a_bad_load_balancer_section_is_refused_at_start_naming_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("coordinator.toml");
    std::fs::write(
        &config,
        r#"[server]
listen = "127.0.0.1:0"
[store]
path = "tasks.db"
[[clusters]]
name = "prod"
agents = ["10.0.0.1:2889", "10.0.0.2:2889"]
[clusters.load_balancer]
kind = "haproxy"
socket = "/run/haproxy/admin.sock"
backend = "odp"
servers = { "10.0.0.1:2889" = "odp1", "10.0.0.3:2889" = "odp3" }
"#,
    )
    .unwrap();
    let out = Command::new(COORDINATOR)
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(stderr.contains(&config.display().to_string()), "{stderr}");
    assert!(
        stderr.contains("clusters[0].load_balancer.servers"),
        "{stderr}"
    );
    assert!(
        stderr.contains("\"10.0.0.3:2889\" is not an agent of this cluster"),
        "{stderr}"
    );
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

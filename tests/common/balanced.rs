//! A coordinator with `[clusters.load_balancer]` over three real agents, for
//! `tests/load_balancer.rs` and `tests/load_balancer_command.rs`: the agents on fixed SQL
//! ports, the section for HAProxy, tasks submitted and followed, what the status says.

use std::net::SocketAddr;

use odp_agent::proto::{agent::RestartMode, coordinator as pb};
use tokio::net::TcpStream;

use super::{
    Agent, Options,
    cluster::{CLUSTER, Cluster, Settings},
    haproxy::{listen_on, odp_ports},
};

/// Three agents on fixed SQL ports (an ODP keeps its port across Stop All and Start All, as
/// HAProxy's server lines need), their server names and the reservations of their ports.
pub async fn agents() -> (Vec<Agent>, Vec<(String, u16)>, Vec<socket2::Socket>) {
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
pub fn haproxy_section(socket: &str, agents: &[Agent], drain_timeout: &str) -> String {
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

pub fn coordinator(agents: Vec<Agent>, section: String) -> Cluster {
    Cluster::with_settings(
        agents,
        Settings {
            more: section,
            ..Settings::default()
        },
    )
}

/// Submits a task and follows it to its end.
pub async fn run(
    cluster: &Cluster,
    task: Result<tonic::Response<pb::Task>, tonic::Status>,
) -> pb::Task {
    let task = task.unwrap().into_inner();
    cluster.wait_task(&task.id).await
}

pub async fn start_all(cluster: &Cluster) -> pb::Task {
    let request = pb::StartAllRequest {
        cluster: CLUSTER.into(),
        ..Default::default()
    };
    run(cluster, cluster.client().await.start_all(request).await).await
}

/// FORCE Restart All, one ODP per batch, as submitted (not followed).
pub async fn force_restart_one_by_one(cluster: &Cluster) -> pb::Task {
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

pub fn succeeded(task: &pb::Task, cluster: &Cluster) {
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

pub async fn cluster_status(cluster: &Cluster) -> pb::ClusterStatus {
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
pub async fn balancer_view(cluster: &Cluster) -> Vec<(pb::BalancerState, u64)> {
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
pub async fn session(frontend: SocketAddr) -> TcpStream {
    let mut stream = super::connect(frontend).await.unwrap();
    super::echo(&mut stream, b"hello").await.unwrap();
    stream
}

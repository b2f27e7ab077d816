//! Upgrade All on the oldest line it serves: 3.2.x, whose `-V` has three parts, which reads
//! only `OBPROXY_INHERITED_FD`, has no RPC service and no SIGUSR2 handler (obproxy.md,
//! "Version differences"). A cluster at 3.2.1 moves to 3.2.3 with HOT restarts under load
//! without a failed request; a cluster with one ODP at 3.2.0 (before the Restart mode the
//! console allows from 3.2.1 on) is refused before any ODP moves.
use crate::common;

use std::time::Duration;

use common::upgrade_cluster::{assert_no_request_failed, cluster_at, cluster_of, loads, upgrade};
use common::upgrade_package::{TARGET, package, sha256, stage};
use odp_agent::proto::{agent as apb, coordinator as pb};

const V321: &str = "3.2.1";
const V323: &str = "3.2.3";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_odps_move_from_3_2_1_to_3_2_3_without_a_failed_request() {
    let (cluster, _backend) = cluster_at(V321, &[]).await;
    let content = package(V323);
    let sha = sha256(&content);
    for a in &cluster.agents {
        stage(a, &content);
    }
    let before: Vec<apb::ProxyStatus> =
        futures::future::join_all(cluster.agents.iter().map(|a| a.status())).await;
    for s in &before {
        assert_eq!(s.version, V321);
    }
    let loads = loads(&cluster).await;

    let task = cluster
        .client()
        .await
        .upgrade_all(upgrade(&sha, Duration::ZERO))
        .await
        .unwrap_or_else(|e| panic!("{e:?}\n{}", cluster.logs()))
        .into_inner();
    let done = cluster.wait_task(&task.id).await;
    assert_eq!(done.state(), pb::TaskState::Succeeded, "{done:?}");
    for (s, b) in done.subtasks.iter().zip(&before) {
        assert_eq!(s.state(), pb::SubtaskState::Succeeded, "{done:?}");
        assert_eq!(s.previous_version, V321);
        assert_eq!(s.previous_binary, b.binary);
        assert_eq!(s.version, V323);
    }
    for (a, b) in cluster.agents.iter().zip(&before) {
        let s = a.status().await;
        assert_eq!(s.state(), apb::ProxyState::Running);
        assert_eq!(s.version, V323);
        assert_ne!(s.pid, b.pid);
        assert!(s.binary.ends_with(TARGET), "{}", s.binary);
        // 3.2 has no RPC service: the agent hands over the SQL listener alone.
        let kinds: Vec<_> = s.listeners.iter().map(|l| l.kind()).collect();
        assert_eq!(kinds, [apb::ListenerKind::Sql], "{s:?}");
    }
    assert_no_request_failed(loads).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_odp_at_3_2_0_refuses_the_upgrade_before_any_odp_moves() {
    // The second ODP runs 3.2.0, before the Restart mode the console allows.
    let (cluster, _backend) = cluster_of(&[V321, "3.2.0", V321], &[]).await;
    let content = package(V323);
    for a in &cluster.agents {
        stage(a, &content);
    }
    let before: Vec<(u32, u32)> =
        futures::future::join_all(cluster.agents.iter().map(|a| a.status()))
            .await
            .iter()
            .map(|s| (s.pid, s.restart_count))
            .collect();
    assert_eq!(cluster.agents[1].status().await.version, "3.2.0");

    let e = cluster
        .client()
        .await
        .upgrade_all(upgrade(&sha256(&content), Duration::ZERO))
        .await
        .expect_err("refused");
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    let second = cluster.agents[1].grpc.to_string();
    assert!(
        e.message().contains(&second) && e.message().contains("3.2.0"),
        "{e:?}"
    );
    for (a, b) in cluster.agents.iter().zip(before) {
        let s = a.status().await;
        assert_eq!((s.pid, s.restart_count), b, "an ODP moved");
    }
}

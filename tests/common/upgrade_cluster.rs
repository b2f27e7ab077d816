//! A cluster of three started ODPs on one obproxy version under fresh-connection load, for the
//! Upgrade All tests of each version line (`tests/upgrade_all.rs`, `tests/upgrade_lines.rs`).
use std::{net::SocketAddr, time::Duration};

use odp_agent::{
    proto::coordinator as pb,
    testkit::{
        echo_backend::EchoBackend,
        loadgen::{Load, LoadConfig, Report},
    },
};
use tokio_util::sync::CancellationToken;

use super::{
    Agent, Options, PATIENCE,
    cluster::{CLUSTER, Cluster},
    upgrade_package::{TARGET, V42},
};

/// Three agents whose ODPs run the 4.2 stand-in, started, forwarding to an
/// echo backend (kept alive by the caller), with `env` for their configured
/// binary beyond the version.
pub async fn cluster_at_4_2(env: &[(&str, &str)]) -> (Cluster, EchoBackend) {
    cluster_at(V42, env).await
}

/// Three agents whose ODPs run the stand-in as obproxy `version`, started, forwarding to an
/// echo backend (kept alive by the caller), with `env` for their configured binary beyond the
/// version.
pub async fn cluster_at(version: &str, env: &[(&str, &str)]) -> (Cluster, EchoBackend) {
    cluster_of(&[version; 3], env).await
}

/// A cluster of one started ODP per entry of `versions`, each running the stand-in as that
/// obproxy version (the agents read it once per binary file, at their first start).
pub async fn cluster_of(versions: &[&str], env: &[(&str, &str)]) -> (Cluster, EchoBackend) {
    let backend = EchoBackend::start().await.unwrap();
    let opts = Options {
        args: vec!["-o".into(), format!("standin_backend={}", backend.addr())],
        exit_timeout: "2s",
        ..Options::default()
    };
    let mut agents = Vec::new();
    for &version in versions {
        let agent = Agent::start_with(opts.clone()).await;
        agent.set_standin_env(&[("ODP_STANDIN_VERSION", version)]);
        agent.start_proxy().await;
        let mut more = vec![("ODP_STANDIN_VERSION", version)];
        more.extend_from_slice(env);
        agent.set_standin_env(&more);
        agents.push(agent);
    }
    (Cluster::with_agents(agents, &[]), backend)
}

/// Fresh-connection clients through every ODP: each request is a
/// connection accepted by whichever process holds the listener then.
pub async fn loads(cluster: &Cluster) -> Vec<Load> {
    let mut loads = Vec::new();
    for a in &cluster.agents {
        let addr: SocketAddr = a.sql_addr().await;
        let load = Load::start(
            LoadConfig {
                clients: 2,
                sessions: 0,
                pause: Duration::from_millis(2),
                duration: Some(Duration::from_secs(180)),
                ..LoadConfig::new(addr)
            },
            CancellationToken::new(),
        )
        .unwrap();
        carried(&load, 20).await;
        loads.push(load);
    }
    loads
}

pub async fn carried(load: &Load, more: u64) {
    let target = load.progress().ok + more;
    tokio::time::timeout(PATIENCE, load.wait_for_ok(target))
        .await
        .unwrap_or_else(|_| panic!("the load stalled: {:?}", load.progress()));
}

/// Each load carries on after the task, then has not one failed request.
pub async fn assert_no_request_failed(loads: Vec<Load>) {
    for (i, load) in loads.into_iter().enumerate() {
        carried(&load, 20).await;
        let report: Report = load.stop().await;
        assert_eq!(report.refused, 0, "ODP {i}: {report}");
        assert_eq!(report.failed_requests(), 0, "ODP {i}: {report}");
        println!("ODP {i} under the upgrade: {report}");
    }
}

pub fn upgrade(sha: &str, canary_wait: Duration) -> pb::UpgradeAllRequest {
    pb::UpgradeAllRequest {
        cluster: CLUSTER.into(),
        binary: TARGET.into(),
        binary_sha256: sha.into(),
        canary_size: 1,
        canary_wait: Some(prost_types::Duration {
            seconds: canary_wait.as_secs() as i64,
            nanos: canary_wait.subsec_nanos() as i32,
        }),
        batch_size: 1,
        ..Default::default()
    }
}

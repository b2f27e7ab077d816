//! The coordinator's cluster status comes from the statuses the agents push
//! (WatchStatus), each with its age: a change reaches it without anyone
//! asking, and an agent that cannot answer right now still shows what it
//! last said, instead of making the caller wait for it.
use crate::common;

use std::time::{Duration, Instant};

use common::{
    Agent, Options, PATIENCE,
    cluster::{CLUSTER, Cluster},
    pki::Pki,
    signal,
};
use odp_agent::proto::{agent as apb, coordinator as pb};
use sha2::{Digest, Sha256};

async fn cluster_status(cluster: &Cluster) -> pb::ClusterStatus {
    cluster_status_as(cluster, None).await
}

async fn cluster_status_as(cluster: &Cluster, token: Option<&str>) -> pb::ClusterStatus {
    let mut request = tonic::Request::new(pb::GetClusterStatusRequest {
        cluster: CLUSTER.into(),
    });
    if let Some(token) = token {
        let value = format!("Bearer {token}").parse().unwrap();
        request.metadata_mut().insert("authorization", value);
    }
    cluster
        .client()
        .await
        .get_cluster_status(request)
        .await
        .unwrap()
        .into_inner()
}

/// Waits until every ODP shows `state`.
async fn wait_all(cluster: &Cluster, token: Option<&str>, state: apb::ProxyState) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let status = cluster_status_as(cluster, token).await;
        if status.odps.iter().all(|o| o.state() == state) {
            return;
        }
        assert!(Instant::now() < deadline, "never all {state:?}: {status:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Freezes the first agent and checks the view still shows it, with its age, at once.
async fn a_frozen_agent_still_shows(cluster: &Cluster, token: Option<&str>) {
    let frozen = cluster.agents[0].child.id();
    signal(frozen, libc::SIGSTOP);
    // Not a wait for an event: the freeze must last a known time, so the
    // view can be checked to show at least that age for the frozen agent.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let asked = Instant::now();
    let status = cluster_status_as(cluster, token).await;
    let took = asked.elapsed();
    signal(frozen, libc::SIGCONT);
    let odp = &status.odps[0];
    assert_eq!(odp.state(), apb::ProxyState::Running, "{odp:?}");
    assert!(odp.error.is_empty(), "{odp:?}");
    assert!(age(odp) >= Duration::from_millis(300), "{odp:?}");
    assert!(took < Duration::from_secs(1), "the call waited {took:?}");
}

fn age(odp: &pb::OdpStatus) -> Duration {
    let a = odp
        .age
        .expect("a status that came from an agent has an age");
    Duration::new(a.seconds as u64, a.nanos as u32)
}

#[tokio::test]
async fn a_cluster_status_is_the_agents_pushed_view_with_its_age() {
    let cluster = Cluster::start(2).await;
    for a in &cluster.agents {
        a.start_proxy().await;
    }
    wait_all(&cluster, None, apb::ProxyState::Running).await;

    // A change made behind the coordinator's back reaches it.
    cluster.agents[1].stop_proxy().await;
    let deadline = Instant::now() + PATIENCE;
    loop {
        let status = cluster_status(&cluster).await;
        if status.odps[1].state() == apb::ProxyState::Stopped {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the stop never showed: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A frozen agent answers nothing; the view still has what it said last,
    // and says how old that is, at once.
    a_frozen_agent_still_shows(&cluster, None).await;
}

#[tokio::test]
async fn the_status_streams_of_mutual_tls_agents_carry_the_coordinators_certificate() {
    let pki = Pki::new();
    let mut agents = Vec::new();
    for _ in 0..2 {
        let opts = Options {
            more: pki.agent_toml(),
            ..Default::default()
        };
        agents.push(Agent::start_with(opts).await);
    }
    let hash = |t: &str| hex::encode(Sha256::digest(t.as_bytes()));
    let coordinator_toml = format!(
        "[agents.tls]\nca = {ca:?}\ncert = {cert:?}\nkey = {key:?}\n\n\
         [[auth.tokens]]\nname = \"oncall\"\nsha256 = \"{oncall}\"\nrole = \"OBPROXY_MANAGER\"\n",
        ca = pki.path("ca.pem"),
        cert = pki.path("operator.pem"),
        key = pki.path("operator.key"),
        oncall = hash("act-now"),
    );
    let cluster = Cluster::with_config(agents, &[], &coordinator_toml);
    let mut start = tonic::Request::new(pb::StartAllRequest {
        cluster: CLUSTER.into(),
        ..Default::default()
    });
    start
        .metadata_mut()
        .insert("authorization", "Bearer act-now".parse().unwrap());
    let task = cluster
        .client()
        .await
        .start_all(start)
        .await
        .unwrap()
        .into_inner();
    let mut watch = tonic::Request::new(pb::WatchTaskRequest { id: task.id });
    watch
        .metadata_mut()
        .insert("authorization", "Bearer act-now".parse().unwrap());
    let mut updates = cluster
        .client()
        .await
        .watch_task(watch)
        .await
        .unwrap()
        .into_inner();
    let mut last = None;
    let follow = async {
        while let Some(t) = updates.message().await.unwrap() {
            last = Some(t);
        }
    };
    tokio::time::timeout(PATIENCE, follow).await.unwrap();
    let done = last.unwrap();
    assert_eq!(done.state(), pb::TaskState::Succeeded, "{}", done.error);
    wait_all(&cluster, Some("act-now"), apb::ProxyState::Running).await;
    // Only a live stream (over mutual TLS) can answer for a frozen agent.
    a_frozen_agent_still_shows(&cluster, Some("act-now")).await;
}

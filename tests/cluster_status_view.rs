//! The coordinator's cluster status comes from the statuses the agents push
//! (WatchStatus), each with its age: a change reaches it without anyone
//! asking, and an agent that cannot answer right now still shows what it
//! last said, instead of making the caller wait for it.
mod common;

use std::time::{Duration, Instant};

use common::{
    PATIENCE,
    cluster::{CLUSTER, Cluster},
    signal,
};
use odp_agent::proto::{agent as apb, coordinator as pb};

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
    let deadline = Instant::now() + PATIENCE;
    loop {
        let status = cluster_status(&cluster).await;
        if status
            .odps
            .iter()
            .all(|o| o.state() == apb::ProxyState::Running)
        {
            break;
        }
        assert!(Instant::now() < deadline, "never all running: {status:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

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
    let frozen = cluster.agents[0].child.id();
    signal(frozen, libc::SIGSTOP);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let asked = Instant::now();
    let status = cluster_status(&cluster).await;
    let took = asked.elapsed();
    signal(frozen, libc::SIGCONT);
    let odp = &status.odps[0];
    assert_eq!(odp.state(), apb::ProxyState::Running, "{odp:?}");
    assert!(odp.error.is_empty(), "{odp:?}");
    assert!(age(odp) >= Duration::from_millis(300), "{odp:?}");
    assert!(took < Duration::from_secs(1), "the call waited {took:?}");
}

//! What an agent costs the coordinator in memory. It keeps a status stream open to every
//! agent, so this cost times 10,000 is a large coordinator's footprint: with h2's
//! per-connection buffers it was about 23 KiB an agent (over 200 MiB at 10,000); the
//! streams' own HTTP/2 holds a few KiB.
use crate::common;

use std::time::{Duration, Instant};

use common::{
    PATIENCE,
    cluster::{CLUSTER, Cluster},
};
use odp_agent::proto::coordinator as pb;
use tokio_util::sync::CancellationToken;

/// The most resident memory one more agent may add (a debug build's; release is leaner).
const PER_AGENT_KIB: f64 = 10.0;

fn raise_fd_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid resource and struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

fn rss_kib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// A coordinator over `n` simulated agents once it holds every one's pushed status; its
/// resident memory then.
async fn coordinator_rss_with(n: usize, stop: &CancellationToken) -> f64 {
    let addrs = odp_agent::testkit::sim_agent::serve_many(
        n,
        "4.3.1.0",
        Duration::from_millis(5),
        stop.clone(),
    )
    .await
    .unwrap();
    let names: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
    let cluster = Cluster::with_agents(vec![], &names);
    let mut client = cluster
        .client()
        .await
        .max_decoding_message_size(64 * 1024 * 1024);
    let deadline = Instant::now() + PATIENCE;
    loop {
        let status = client
            .get_cluster_status(pb::GetClusterStatusRequest {
                cluster: CLUSTER.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(status.odps.len(), n);
        // Every entry from the live view: no error, and an age (the time since its push).
        if status
            .odps
            .iter()
            .all(|o| o.error.is_empty() && o.age.is_some())
        {
            break;
        }
        assert!(Instant::now() < deadline, "the view never filled");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    rss_kib(cluster.coordinator.id())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_costs_the_coordinator_a_few_kib() {
    raise_fd_limit();
    let stop = CancellationToken::new();
    let small = coordinator_rss_with(10, &stop).await;
    let large = coordinator_rss_with(1010, &stop).await;
    stop.cancel();
    let per_agent = (large - small) / 1000.0;
    eprintln!(
        "coordinator RSS: 10 agents {small} KiB, 1010 agents {large} KiB: {per_agent:.1} KiB an agent"
    );
    assert!(
        per_agent <= PER_AGENT_KIB,
        "{per_agent:.1} KiB an agent (10 agents: {small} KiB, 1010: {large} KiB)"
    );
}

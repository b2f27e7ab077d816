//! `odp-bench cluster-status`: how long GetClusterStatus takes, and what the
//! coordinator holds in memory, for clusters of 10, 100 and 1000 ODPs. The
//! agents are simulated in this process (the real Agent service, answering
//! from memory); the coordinator is the real binary.
use std::time::{Duration, Instant};

use anyhow::Context;
use odp_agent::{
    local_cluster,
    proto::coordinator::{self as pb, coordinator_client::CoordinatorClient},
    sim,
};
use tokio_util::sync::CancellationToken;

#[derive(clap::Args)]
pub struct Args {
    /// Cluster sizes to measure.
    #[arg(long, value_delimiter = ',', default_value = "10,100,1000")]
    sizes: Vec<usize>,
    /// GetClusterStatus calls per size (after one warm-up call).
    #[arg(long, default_value_t = 20)]
    calls: usize,
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let bin_dir = local_cluster::Options::beside_me(0).bin_dir;
    println!("GetClusterStatus through the real odp-coordinator; agents simulated in-process");
    println!(
        "| ODPs | calls | p50 | p99 | max | per ODP (p50) | coordinator RSS |\n|---:|---:|---:|---:|---:|---:|---:|"
    );
    for &n in &args.sizes {
        let stop = CancellationToken::new();
        let addrs = sim::serve_many(n, "4.3.1.0", Duration::from_millis(10), stop.clone()).await?;
        let names: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
        let dir = tempfile::tempdir()?;
        let mut coordinator =
            local_cluster::spawn_coordinator(&bin_dir, dir.path(), "bench", &names)?;
        let mut client = CoordinatorClient::connect(format!("http://{}", coordinator.addr))
            .await
            .context("cannot reach the coordinator")?;
        let request = || pb::GetClusterStatusRequest {
            cluster: "bench".into(),
        };
        // The first call opens every connection; it is not what an operator waits for.
        let warm = client.get_cluster_status(request()).await?.into_inner();
        anyhow::ensure!(warm.odps.len() == n, "expected {n} ODPs");
        let mut times = Vec::with_capacity(args.calls);
        for _ in 0..args.calls {
            let t = Instant::now();
            let status = client.get_cluster_status(request()).await?.into_inner();
            times.push(t.elapsed());
            let unavailable = status.odps.iter().filter(|o| !o.error.is_empty()).count();
            anyhow::ensure!(unavailable == 0, "{unavailable} of {n} ODPs unavailable");
        }
        times.sort();
        let p50 = percentile(&times, 0.5);
        println!(
            "| {n} | {} | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} µs | {:.1} MiB |",
            args.calls,
            p50.as_secs_f64() * 1e3,
            percentile(&times, 0.99).as_secs_f64() * 1e3,
            times.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
            p50.as_secs_f64() * 1e6 / n as f64,
            rss_kib(coordinator.child.id()) as f64 / 1024.0,
        );
        let _ = coordinator.child.kill();
        let _ = coordinator.child.wait();
        stop.cancel();
    }
    Ok(())
}

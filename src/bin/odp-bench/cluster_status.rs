//! `odp-bench cluster-status`: how long GetClusterStatus takes, and what the coordinator
//! holds in memory, for clusters of 10 to 10,000 ODPs. The coordinator is the real binary;
//! the first ODP of every cluster is a real agent with the stand-in, the others are
//! simulated agents (`odp-bench sim-agents`, in processes of their own) that answer every
//! status after what the real agent's GetStatus takes on this machine, measured first.
use std::{
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use odp_agent::{
    proto::{
        agent as apb,
        coordinator::{self as pb, coordinator_client::CoordinatorClient},
    },
    testkit::{local_cluster, sim_agent},
};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};
use tokio_util::sync::CancellationToken;

use crate::{
    proc_stat,
    stats::{Spread, median, print_table, quantile},
    testbed::{Options, Testbed},
};

/// Simulated agents per process: each holds a listener and a connection per agent, and
/// stays under a 20,000 open-file limit.
const PER_PROCESS: usize = 4000;
/// How long a coordinator may take to hear from every agent once.
const FULL_VIEW: Duration = Duration::from_secs(120);

#[derive(clap::Args)]
pub struct Args {
    /// Cluster sizes to measure.
    #[arg(long, value_delimiter = ',', default_value = "10,100,1000,10000")]
    sizes: Vec<usize>,
    /// GetClusterStatus calls per size and run (after the coordinator has heard from all).
    #[arg(long, default_value_t = 20)]
    calls: usize,
    /// Runs, each on a fresh coordinator and fresh simulated agents.
    #[arg(long, default_value_t = 5)]
    runs: usize,
}

/// `odp-bench sim-agents`: a fleet of simulated agents in this process.
#[derive(clap::Args)]
pub struct SimArgs {
    #[arg(long)]
    agents: usize,
    /// How long each status takes to answer.
    #[arg(long, value_parser = humantime::parse_duration)]
    status_cost: Duration,
}

/// Serves the fleet, prints one address a line then `ready`, and ends when stdin closes.
pub async fn serve_sims(args: SimArgs) -> anyhow::Result<()> {
    proc_stat::raise_fd_limit();
    let stop = CancellationToken::new();
    let opts = sim_agent::FleetOptions {
        agents: args.agents,
        version: "4.3.1.0".into(),
        op_time: Duration::from_millis(10),
        status_cost: args.status_cost,
    };
    let addrs = sim_agent::serve_fleet(&opts, stop.clone()).await?;
    let mut text = String::new();
    for a in &addrs {
        text.push_str(&format!("{a}\n"));
    }
    text.push_str("ready\n");
    print!("{text}");
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    while stdin.next_line().await?.is_some() {}
    stop.cancel();
    Ok(())
}

/// One size in one run.
struct SizeRun {
    odps: usize,
    full_view: Duration,
    p50: Duration,
    p99: Duration,
    rss_mib: f64,
    cpu_per_call: Duration,
    sims_rss_mib: f64,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let limit = proc_stat::raise_fd_limit();
    let real = Testbed::start(&Options {
        start_delay: Duration::ZERO,
        exit_timeout: Duration::from_secs(5),
    })
    .await?;
    let mut client = real.client();
    let op = client
        .start(apb::StartRequest {
            request_id: String::new(),
            wait: true,
        })
        .await?
        .into_inner();
    if op.state() != apb::OperationState::Succeeded {
        bail!("the real agent's Start failed: {}", op.error);
    }
    let mut costs = Vec::new();
    for _ in 0..200 {
        let t = Instant::now();
        client.get_status(apb::GetStatusRequest::default()).await?;
        costs.push(t.elapsed());
    }
    let cost = median(costs.iter().copied());
    println!(
        "GetClusterStatus through the real odp-coordinator; the first ODP a real agent + stand-in, \
         the others simulated agents in processes of their own (up to {PER_PROCESS} each) \
         answering each status after {:.2} ms, the real agent's GetStatus here (median of 200; \
         p99 {:.2} ms); {} runs on fresh coordinators, figures min / median / max over them; \
         open-file limit {limit}",
        cost.as_secs_f64() * 1e3,
        quantile(&costs, 0.99).as_secs_f64() * 1e3,
        args.runs
    );
    let real_addr = real
        .grpc_addr()
        .context("the real agent's address")?
        .to_string();
    let mut results = Vec::new();
    for n in 1..=args.runs {
        for &size in &args.sizes {
            eprintln!("run {n}/{}: {size} ODPs", args.runs);
            results.push(one_size(size, cost, &real_addr, args.calls).await?);
        }
    }
    real.shutdown().await?;
    let rows: Vec<Vec<String>> = args
        .sizes
        .iter()
        .map(|&size| {
            let of: Vec<&SizeRun> = results.iter().filter(|r| r.odps == size).collect();
            let ms =
                |f: fn(&SizeRun) -> Duration, d| Spread::ms(of.iter().map(|r| f(r))).show(d, "ms");
            vec![
                size.to_string(),
                ms(|r| r.p50, 1),
                ms(|r| r.p99, 1),
                Spread::of(of.iter().map(|r| r.rss_mib)).show(1, "MiB"),
                ms(|r| r.cpu_per_call, 1),
                Spread::of(of.iter().map(|r| r.full_view.as_secs_f64())).show(2, "s"),
                Spread::of(of.iter().map(|r| r.sims_rss_mib)).show(0, "MiB"),
            ]
        })
        .collect();
    print_table(
        &[
            "ODPs",
            "p50",
            "p99",
            "coordinator RSS",
            "coordinator CPU per call",
            "start → first full view",
            "simulated agents' RSS",
        ],
        &rows,
    );
    println!(
        "p50 and p99 over {} calls per run; RSS after them. The coordinator answers from the \
         statuses the agents push (WatchStatus): the first full view is when every ODP has \
         been heard from after the coordinator started.",
        args.calls
    );
    Ok(())
}

async fn one_size(
    size: usize,
    cost: Duration,
    real: &str,
    calls: usize,
) -> anyhow::Result<SizeRun> {
    let bin_dir = crate::testbed::bin_dir()?;
    let mut fleets = Vec::new();
    let mut names = vec![real.to_string()];
    let mut left = size.saturating_sub(1);
    while left > 0 {
        let n = left.min(PER_PROCESS);
        left -= n;
        let (child, addrs) = start_fleet(n, cost).await?;
        fleets.push(child);
        names.extend(addrs.iter().cloned());
    }
    let dir = tempfile::tempdir()?;
    let spawned = Instant::now();
    let mut coordinator = local_cluster::spawn_coordinator(&bin_dir, dir.path(), "bench", &names)?;
    let pid = coordinator.child.id();
    let mut client = CoordinatorClient::connect(format!("http://{}", coordinator.addr))
        .await
        .context("cannot reach the coordinator")?
        .max_decoding_message_size(256 * 1024 * 1024);
    let request = || pb::GetClusterStatusRequest {
        cluster: "bench".into(),
    };
    // Until the coordinator has heard from every ODP.
    let full_view = loop {
        let status = client.get_cluster_status(request()).await?.into_inner();
        anyhow::ensure!(status.odps.len() == size, "expected {size} ODPs");
        if status.odps.iter().all(|o| o.error.is_empty()) {
            break spawned.elapsed();
        }
        if spawned.elapsed() > FULL_VIEW {
            let down = status.odps.iter().filter(|o| !o.error.is_empty()).count();
            bail!("{down} of {size} ODPs still unheard of after {FULL_VIEW:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let cpu_before = proc_stat::cpu(pid);
    let mut times = Vec::with_capacity(calls);
    for _ in 0..calls {
        let t = Instant::now();
        let status = client.get_cluster_status(request()).await?.into_inner();
        times.push(t.elapsed());
        let unavailable = status.odps.iter().filter(|o| !o.error.is_empty()).count();
        anyhow::ensure!(unavailable == 0, "{unavailable} of {size} ODPs unavailable");
    }
    let cpu = proc_stat::cpu(pid).saturating_sub(cpu_before);
    let rss_mib = proc_stat::rss_mib(pid);
    let sims_rss_mib = fleets
        .iter()
        .filter_map(|f| f.id())
        .map(proc_stat::rss_mib)
        .sum();
    let _ = coordinator.child.kill();
    let _ = coordinator.child.wait();
    for mut f in fleets {
        let _ = f.kill().await;
    }
    Ok(SizeRun {
        odps: size,
        full_view,
        p50: quantile(&times, 0.5),
        p99: quantile(&times, 0.99),
        rss_mib,
        cpu_per_call: cpu / calls.max(1) as u32,
        sims_rss_mib,
    })
}

/// Starts `odp-bench sim-agents` with `n` agents; their addresses.
async fn start_fleet(n: usize, cost: Duration) -> anyhow::Result<(Child, Vec<String>)> {
    let me = std::env::current_exe()?;
    let mut child = Command::new(me)
        .arg("sim-agents")
        .arg("--agents")
        .arg(n.to_string())
        .arg("--status-cost")
        .arg(format!("{}us", cost.as_micros()))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("start simulated agents")?;
    let mut lines = BufReader::new(child.stdout.take().context("sim stdout")?).lines();
    let mut addrs = Vec::with_capacity(n);
    while let Some(line) = lines.next_line().await? {
        if line == "ready" {
            return Ok((child, addrs));
        }
        addrs.push(line);
    }
    bail!("the simulated agents ended before they were ready")
}

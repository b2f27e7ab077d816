//! `odp-bench rolling`: a rolling HOT Restart All of a cluster of real agents
//! (each with the obproxy stand-in) in batches, against the ideal: batches x
//! the time one ODP's hot restart takes on its own.
use std::time::{Duration, Instant};

use crate::stats::{Spread, median, print_table};
use anyhow::Context;
use odp_agent::{
    proto::{
        agent::{self as apb, agent_client::AgentClient},
        coordinator::{self as pb, coordinator_client::CoordinatorClient},
    },
    testkit::local_cluster::{LocalCluster, Options},
};

#[derive(clap::Args)]
pub struct Args {
    /// ODPs in the cluster (real agents and stand-ins).
    #[arg(long, default_value_t = 30)]
    odps: usize,
    /// Batch sizes to measure.
    #[arg(long, value_delimiter = ',', default_value = "5,10")]
    batches: Vec<u32>,
    /// The obproxy start-up time the stand-in simulates.
    #[arg(long, default_value = "300ms", value_parser = humantime::parse_duration)]
    start_delay: Duration,
    /// Single-ODP restarts timed for the ideal (per run).
    #[arg(long, default_value_t = 5)]
    samples: usize,
    /// Runs, each on a fresh cluster.
    #[arg(long, default_value_t = 5)]
    runs: usize,
}

async fn watch(
    client: &mut CoordinatorClient<tonic::transport::Channel>,
    id: &str,
) -> anyhow::Result<pb::Task> {
    let mut stream = client
        .watch_task(pb::WatchTaskRequest { id: id.into() })
        .await?
        .into_inner();
    let mut last = None;
    while let Some(t) = stream.message().await? {
        last = Some(t);
    }
    last.context("no task update")
}

/// One batch size in one run.
struct BatchRun {
    batch: u32,
    batches: u32,
    took: Duration,
    ideal: Duration,
    slowest: Duration,
    gap: Duration,
    /// CPU of every agent, obproxy and the coordinator over the Restart All, per ODP.
    cpu_per_odp: Duration,
}

/// CPU used so far by the cluster's daemons and obproxy processes: each agent's own and
/// that of the stand-ins it reaped, the running stand-ins' (their home is under the
/// cluster's directory) and the coordinator's.
fn cluster_cpu(cluster: &LocalCluster) -> Duration {
    let daemons: Duration = cluster
        .agents
        .iter()
        .chain(std::iter::once(&cluster.coordinator))
        .map(|d| crate::proc_stat::cpu(d.child.id()))
        .sum();
    let running: Duration = std::fs::read_dir(cluster.dir.path())
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("odp-"))
        .flat_map(|e| crate::testbed::processes_in(&e.path()))
        .map(crate::proc_stat::cpu)
        .sum();
    daemons + running
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    println!(
        "rolling HOT Restart All of {} real agents + stand-ins (start-up {} ms); batches of {:?}; \
         {} runs on fresh clusters, figures min / median / max over them",
        args.odps,
        args.start_delay.as_millis(),
        args.batches,
        args.runs
    );
    let mut ones = Vec::new();
    let mut batches: Vec<BatchRun> = Vec::new();
    for n in 1..=args.runs {
        eprintln!("run {n}/{}", args.runs);
        let (one, runs) = one_run(&args).await?;
        ones.push(one);
        batches.extend(runs);
    }
    println!(
        "one ODP alone (a run's median of {}): {}",
        args.samples,
        Spread::ms(ones.iter().copied()).show(0, "ms")
    );
    let rows: Vec<Vec<String>> = args
        .batches
        .iter()
        .map(|&b| {
            let of: Vec<&BatchRun> = batches.iter().filter(|r| r.batch == b).collect();
            let secs = |f: fn(&BatchRun) -> Duration| {
                Spread::of(of.iter().map(|r| f(r).as_secs_f64())).show(2, "s")
            };
            vec![
                b.to_string(),
                of.first().map_or(0, |r| r.batches).to_string(),
                secs(|r| r.took),
                secs(|r| r.ideal),
                Spread::of(
                    of.iter()
                        .map(|r| (r.took.as_secs_f64() / r.ideal.as_secs_f64() - 1.0) * 100.0),
                )
                .show(1, "%"),
                Spread::ms(of.iter().map(|r| r.slowest)).show(0, "ms"),
                Spread::ms(of.iter().map(|r| r.gap)).show(1, "ms"),
                Spread::ms(of.iter().map(|r| r.cpu_per_odp)).show(1, "ms"),
                // What a batch's CPU takes of the 2 cores (or however many there are) at best.
                Spread::ms(of.iter().map(|r| r.cpu_per_odp * r.batch / cores())).show(0, "ms"),
            ]
        })
        .collect();
    print_table(
        &[
            "batch size",
            "batches",
            "took",
            "ideal (batches x one ODP)",
            "over ideal",
            "slowest ODP per batch (mean)",
            "between batches (mean)",
            "CPU per ODP restart",
            "a batch's CPU / cores",
        ],
        &rows,
    );
    println!();
    println!(
        "- CPU per ODP restart: what every agent, obproxy process and the coordinator used \
         over the Restart All, divided by the ODPs; a batch's CPU / cores is the least wall \
         time that CPU takes when a batch's ODPs all want it at once."
    );
    Ok(())
}

fn cores() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as u32)
}

async fn one_run(args: &Args) -> anyhow::Result<(Duration, Vec<BatchRun>)> {
    let mut opts = Options::beside_me(args.odps);
    opts.start_delay = Some(args.start_delay);
    opts.exit_timeout = Duration::from_secs(5);
    let cluster = LocalCluster::start(&opts)?;
    let mut coord =
        CoordinatorClient::connect(format!("http://{}", cluster.coordinator.addr)).await?;
    let started = coord
        .start_all(pb::StartAllRequest {
            cluster: cluster.name.clone(),
            ..Default::default()
        })
        .await?
        .into_inner();
    let started = watch(&mut coord, &started.id).await?;
    anyhow::ensure!(
        started.state() == pb::TaskState::Succeeded,
        "Start All: {}",
        started.error
    );
    // Every agent restarts once first: the first restart reads the binary's version.
    let warm = coord
        .restart_all(pb::RestartAllRequest {
            cluster: cluster.name.clone(),
            mode: apb::RestartMode::Hot as i32,
            ..Default::default()
        })
        .await?
        .into_inner();
    let warm = watch(&mut coord, &warm.id).await?;
    anyhow::ensure!(
        warm.state() == pb::TaskState::Succeeded,
        "Restart All: {}",
        warm.error
    );

    // One ODP restarted on its own: what a batch costs at best.
    let mut agent = AgentClient::connect(format!("http://{}", cluster.agents[0].addr)).await?;
    let mut single = Vec::new();
    for _ in 0..args.samples {
        let t = Instant::now();
        let op = agent
            .restart(apb::RestartRequest {
                mode: apb::RestartMode::Hot as i32,
                wait: true,
                ..Default::default()
            })
            .await?
            .into_inner();
        anyhow::ensure!(op.state() == apb::OperationState::Succeeded, "{}", op.error);
        single.push(t.elapsed());
    }
    let one = median(single);
    let mut runs = Vec::new();
    for &batch in &args.batches {
        // Read before the clock starts: reading every process's /proc takes
        // milliseconds of its own.
        let cpu_before = cluster_cpu(&cluster);
        let t = Instant::now();
        let task = coord
            .restart_all(pb::RestartAllRequest {
                cluster: cluster.name.clone(),
                mode: apb::RestartMode::Hot as i32,
                batch_size: batch,
                ..Default::default()
            })
            .await?
            .into_inner();
        let done = watch(&mut coord, &task.id).await?;
        let took = t.elapsed();
        // The old processes are reaped by then (the operations end with their exit).
        let cpu = cluster_cpu(&cluster).saturating_sub(cpu_before);
        anyhow::ensure!(
            done.state() == pb::TaskState::Succeeded,
            "Restart All: {}",
            done.error
        );
        let (slowest, gap) = batch_times(&done);
        runs.push(BatchRun {
            batch,
            batches: done.batches,
            took,
            ideal: one * done.batches,
            slowest,
            gap,
            cpu_per_odp: cpu / args.odps.max(1) as u32,
        });
    }
    let stopped = coord
        .stop_all(pb::StopAllRequest {
            cluster: cluster.name.clone(),
            ..Default::default()
        })
        .await?
        .into_inner();
    watch(&mut coord, &stopped.id).await?;
    Ok((one, runs))
}

fn secs(t: &Option<prost_types::Timestamp>) -> f64 {
    t.as_ref()
        .map_or(0.0, |t| t.seconds as f64 + t.nanos as f64 / 1e9)
}

/// From the subtasks' own timestamps: the mean of each batch's slowest ODP
/// (what the ODPs cost, contention included) and the mean gap from one
/// batch's last finish to the next batch's first start (what coordinating
/// costs).
fn batch_times(task: &pb::Task) -> (Duration, Duration) {
    let mut slowest = Vec::new();
    let mut bounds = Vec::new();
    for b in 1..=task.batches {
        let subs: Vec<_> = task.subtasks.iter().filter(|s| s.batch == b).collect();
        let start = subs
            .iter()
            .map(|s| secs(&s.started_at))
            .fold(f64::MAX, f64::min);
        let end = subs
            .iter()
            .map(|s| secs(&s.finished_at))
            .fold(0.0, f64::max);
        slowest.push(end - start);
        bounds.push((start, end));
    }
    let gaps: Vec<f64> = bounds.windows(2).map(|w| w[1].0 - w[0].1).collect();
    let mean = |v: &[f64]| {
        if v.is_empty() {
            0.0
        } else {
            v.iter().sum::<f64>() / v.len() as f64
        }
    };
    (
        Duration::from_secs_f64(mean(&slowest).max(0.0)),
        Duration::from_secs_f64(mean(&gaps).max(0.0)),
    )
}

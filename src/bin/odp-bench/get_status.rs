//! `odp-bench get-status`: what one GetStatus costs its caller, on an idle agent and while a
//! connect-per-request load runs through its ODP and keeps the kernel's TCP table full of
//! TIME_WAIT sockets. That is where an agent that counted sessions by dumping the table on
//! every call answered in 13 to 33 ms; the agent samples usage on a thread of its own instead
//! (at most once a second, and only for the SQL port), so a call should cost a gRPC round
//! trip whatever the table holds.
//!
//! The calls are made one after another on one connection, from a thread and runtime of
//! their own, so that their latency is not queued behind the echo backend this process also
//! runs; the load runs in a process of its own (`odp-bench load`).
use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use odp_agent::proto::agent::{self as pb, agent_client::AgentClient};

use crate::{
    load_process::{self, LoadProcess},
    proc_stat,
    stats::{Spread, print_table, quantile},
    testbed::{Options, Testbed},
};

#[derive(clap::Args)]
pub struct Args {
    /// Runs (the figures are min / median / max over them).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// GetStatus calls timed per run and phase.
    #[arg(long, default_value_t = 1000)]
    calls: usize,
    /// Load workers, each opening a fresh connection per request, flat out.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// TIME_WAIT sockets on the host before the loaded calls begin.
    #[arg(long, default_value_t = 15_000)]
    time_wait: u64,
}

/// One phase of one run.
struct Phase {
    p50: Duration,
    p99: Duration,
    max: Duration,
    /// TIME_WAIT sockets when the calls began and when they ended.
    time_wait: (u64, u64),
    /// Client requests per second through the ODP while the calls ran.
    load_rate: f64,
    /// The agent's CPU per call (its sampler's included; the stand-in's excluded).
    agent_cpu_per_call: Duration,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    if args.runs == 0 || args.calls == 0 {
        bail!("--runs and --calls must be at least 1");
    }
    println!(
        "GetStatus on one connection, {} calls one after another per phase and run, from a \
         thread of their own; idle, then under {} fresh-connection clients flat out through \
         the ODP (their own process) once the host holds {} TIME_WAIT sockets; agent + \
         stand-in; {} runs, figures min / median / max over them",
        args.calls, args.clients, args.time_wait, args.runs
    );
    let (mut idle, mut loaded) = (Vec::new(), Vec::new());
    for n in 1..=args.runs {
        eprintln!("run {n}/{}", args.runs);
        let testbed = Testbed::start(&Options {
            start_delay: Duration::ZERO,
            exit_timeout: Duration::from_secs(10),
        })
        .await?;
        let target = testbed.start_odp().await?;
        let grpc = testbed.grpc_addr().context("no gRPC address")?;

        idle.push(phase(&testbed, grpc, args.calls, None).await?);

        let mut load = LoadProcess::start(&load_process::Args {
            target,
            clients: args.clients,
            sessions: 0,
            session_requests: 0,
            pause: Duration::ZERO,
            request_timeout: Duration::from_secs(2),
        })?;
        fill_time_wait(args.time_wait).await?;
        loaded.push(phase(&testbed, grpc, args.calls, Some(&mut load)).await?);
        let (summary, _) = load.stop().await?;
        if summary.counts.lost() > 0 {
            eprintln!(
                "the load lost {} requests: {:?}",
                summary.counts.lost(),
                summary.samples
            );
        }
        testbed.shutdown().await?;
    }
    print_results(&idle, &loaded);
    Ok(())
}

/// Times `calls` GetStatus calls, with the load's rate over them if there is a load.
async fn phase(
    testbed: &Testbed,
    grpc: SocketAddr,
    calls: usize,
    load: Option<&mut LoadProcess>,
) -> anyhow::Result<Phase> {
    let tw_before = time_wait()?;
    let cpu_before = testbed.agent_cpu();
    let (load, before) = match load {
        Some(load) => {
            let before = load.progress().await?.ok;
            (Some(load), before)
        }
        None => (None, 0),
    };
    let started = Instant::now();
    let mut latencies = std::thread::spawn(move || timed_calls(grpc, calls))
        .join()
        .map_err(|_| anyhow::anyhow!("the calling thread panicked"))??;
    let elapsed = started.elapsed();
    let load_rate = match load {
        Some(load) => (load.progress().await?.ok - before) as f64 / elapsed.as_secs_f64(),
        None => 0.0,
    };
    let cpu = testbed.agent_cpu().saturating_sub(cpu_before);
    latencies.sort_unstable();
    Ok(Phase {
        p50: quantile(&latencies, 0.5),
        p99: quantile(&latencies, 0.99),
        max: latencies[latencies.len() - 1],
        time_wait: (tw_before, time_wait()?),
        load_rate,
        agent_cpu_per_call: cpu / calls as u32,
    })
}

/// The calls, on a runtime of their own: a few untimed to open the connection, then
/// `calls` timed.
fn timed_calls(grpc: SocketAddr, calls: usize) -> anyhow::Result<Vec<Duration>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let mut client = AgentClient::connect(format!("http://{grpc}")).await?;
        for _ in 0..10 {
            client.get_status(pb::GetStatusRequest::default()).await?;
        }
        let mut latencies = Vec::with_capacity(calls);
        for _ in 0..calls {
            let sent = Instant::now();
            client.get_status(pb::GetStatusRequest::default()).await?;
            latencies.push(sent.elapsed());
        }
        Ok(latencies)
    })
}

/// Waits until the host holds `want` TIME_WAIT sockets (the load leaves one per request).
async fn fill_time_wait(want: u64) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let now = time_wait()?;
        if now >= want {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the load left only {now} TIME_WAIT sockets in 120 s ({want} wanted)");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// TIME_WAIT sockets in this network namespace, IPv4 and IPv6 (the `tw` of
/// `/proc/net/sockstat`: the kernel's own count, read without walking the table).
fn time_wait() -> anyhow::Result<u64> {
    let text = std::fs::read_to_string("/proc/net/sockstat")?;
    parse_time_wait(&text).context("no TCP tw count in /proc/net/sockstat")
}

fn parse_time_wait(sockstat: &str) -> Option<u64> {
    let tcp = sockstat.lines().find(|l| l.starts_with("TCP:"))?;
    let mut words = tcp.split_whitespace();
    while let Some(word) = words.next() {
        if word == "tw" {
            return words.next()?.parse().ok();
        }
    }
    None
}

fn print_results(idle: &[Phase], loaded: &[Phase]) {
    let ms = |phases: &[Phase], f: fn(&Phase) -> Duration| {
        Spread::ms(phases.iter().map(f)).show(2, "ms")
    };
    let row = |name: &str, phases: &[Phase]| {
        vec![
            name.to_string(),
            ms(phases, |p| p.p50),
            ms(phases, |p| p.p99),
            ms(phases, |p| p.max),
            Spread::of(phases.iter().map(|p| p.time_wait.0 as f64)).show(0, ""),
            Spread::of(phases.iter().map(|p| p.time_wait.1 as f64)).show(0, ""),
            Spread::of(phases.iter().map(|p| p.load_rate)).show(0, "/s"),
            Spread::ms(phases.iter().map(|p| p.agent_cpu_per_call)).show(3, "ms"),
        ]
    };
    print_table(
        &[
            "phase",
            "p50",
            "p99",
            "max",
            "TIME_WAIT at start",
            "TIME_WAIT at end",
            "client requests through the ODP",
            "agent CPU per call",
        ],
        &[row("idle", idle), row("under load", loaded)],
    );
    println!(
        "p50, p99 and max over a run's calls; the agent's CPU over the calls (its usage \
         sampler's included) divided by them. This process's CPU (echo backend, calls): {:.1} s.",
        proc_stat::own_cpu().as_secs_f64()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_time_wait_count() {
        let text = "sockets: used 180\n\
                    TCP: inuse 9 orphan 0 tw 15234 alloc 12 mem 1\n\
                    UDP: inuse 1 mem 0\n";
        assert_eq!(parse_time_wait(text), Some(15234));
        assert_eq!(parse_time_wait("UDP: inuse 1 mem 0\n"), None);
    }
}

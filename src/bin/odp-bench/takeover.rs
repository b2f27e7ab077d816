//! `odp-bench takeover`: coordinators sharing a metadb (a throwaway MariaDB),
//! the leader kill -9'd in the middle of a rolling Restart All: how long
//! until the other coordinator holds the lease, and until the task moves
//! again (its next ODP recorded done, by the new leader). Each run starts two
//! fresh coordinators on the same metadb and agents.
use std::time::{Duration, Instant};

use crate::stats::{Spread, print_table};
use anyhow::Context;
use odp_agent::{
    proto::{
        agent as apb,
        coordinator::{self as pb, coordinator_client::CoordinatorClient},
    },
    testkit::{
        local_cluster::{Daemon, LocalCluster, Options, spawn},
        metadb_server::MetadbServer,
    },
};
use tonic::transport::Channel;

#[derive(clap::Args)]
pub struct Args {
    /// Runs (leaders killed).
    #[arg(long, default_value_t = 10)]
    runs: usize,
    /// ODPs in the cluster (restarted one at a time).
    #[arg(long, default_value_t = 4)]
    odps: usize,
    /// The coordinators' `[store] lease`.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    lease: Duration,
    /// The obproxy start-up time the stand-in simulates.
    #[arg(long, default_value = "100ms", value_parser = humantime::parse_duration)]
    start_delay: Duration,
}

/// How often the benchmark asks (what bounds its resolution).
const POLL: Duration = Duration::from_millis(5);

async fn client(d: &Daemon) -> anyhow::Result<CoordinatorClient<Channel>> {
    Ok(CoordinatorClient::connect(format!("http://{}", d.addr)).await?)
}

async fn task(c: &mut CoordinatorClient<Channel>, id: &str) -> anyhow::Result<pb::Task> {
    Ok(c.get_task(pb::GetTaskRequest { id: id.into() })
        .await?
        .into_inner())
}

fn done(t: &pb::Task) -> usize {
    t.subtasks
        .iter()
        .filter(|s| s.state() == pb::SubtaskState::Succeeded)
        .count()
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.odps >= 3,
        "--odps: at least 3 (one in flight, one after)"
    );
    println!(
        "leader kill -9'd mid rolling FORCE Restart All of {} real agents + stand-ins (start-up \
         {} ms, batch 1); two coordinators on one MariaDB metadb, lease {} ms; {} runs, figures \
         min / median / max, polled every {} ms",
        args.odps,
        args.start_delay.as_millis(),
        args.lease.as_millis(),
        args.runs,
        POLL.as_millis()
    );
    let db = MetadbServer::start()?;
    let mut opts = Options::beside_me(args.odps);
    opts.start_delay = Some(args.start_delay);
    let cluster = LocalCluster::start(&opts)?;
    let coordinator_bin = opts.bin_dir.join("odp-coordinator");
    std::fs::write(cluster.dir.path().join("password"), "odp\n")?;
    let agents: Vec<String> = cluster.agents.iter().map(|a| a.addr.to_string()).collect();
    let mut c = client(&cluster.coordinator).await?;
    let started = c
        .start_all(pb::StartAllRequest {
            cluster: cluster.name.clone(),
            ..Default::default()
        })
        .await?
        .into_inner();
    while task(&mut c, &started.id).await?.state() == pb::TaskState::Running {
        tokio::time::sleep(POLL).await;
    }
    let mut lease_taken = Vec::new();
    let mut moving = Vec::new();
    for n in 1..=args.runs {
        eprintln!("run {n}/{}", args.runs);
        let mut pair = Vec::new();
        for side in ["a", "b"] {
            let holder = format!("run{n}-{side}");
            let config = cluster.dir.path().join(format!("{holder}.toml"));
            std::fs::write(
                &config,
                format!(
                    "[server]\nlisten = \"127.0.0.1:0\"\nloopback_role = \"OBPROXY_MANAGER\"\n\
                     [store]\n{}[[clusters]]\nname = \"{}\"\nagents = {agents:?}\n",
                    db.store_keys(&holder, args.lease),
                    cluster.name
                ),
            )?;
            let log = cluster.dir.path().join(format!("{holder}.log"));
            pair.push(spawn(&coordinator_bin, &config, &log, &[])?);
        }
        let (taken, moved) = one_run(&args, &cluster.name, &mut pair).await?;
        lease_taken.push(taken);
        moving.push(moved);
        for d in &mut pair {
            // SIGTERM: the survivor hands the lease over for the next run.
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(d.child.id() as i32, libc::SIGTERM) };
            let _ = d.child.wait();
        }
    }
    print_table(
        &[
            "lease",
            "kill → other coordinator leads",
            "kill → task moving again",
        ],
        &[vec![
            format!("{} ms", args.lease.as_millis()),
            Spread::ms(lease_taken).show(0, "ms"),
            Spread::ms(moving).show(0, "ms"),
        ]],
    );
    Ok(())
}

async fn one_run(
    args: &Args,
    cluster: &str,
    pair: &mut [Daemon],
) -> anyhow::Result<(Duration, Duration)> {
    // Whoever took the lease leads.
    let leader = loop {
        let mut found = None;
        for (i, d) in pair.iter().enumerate() {
            let l = client(d)
                .await?
                .get_leader(pb::GetLeaderRequest {})
                .await?
                .into_inner();
            if l.this_coordinator_leads {
                found = Some(i);
            }
        }
        if let Some(i) = found {
            break i;
        }
        tokio::time::sleep(POLL).await;
    };
    let other = 1 - leader;
    let mut c = client(&pair[other]).await?;
    let t = c
        .restart_all(pb::RestartAllRequest {
            cluster: cluster.into(),
            mode: apb::RestartMode::Force as i32,
            batch_size: 1,
            ..Default::default()
        })
        .await?
        .into_inner();
    // Killed while the second ODP's restart is in flight.
    let at_kill = loop {
        let now = task(&mut c, &t.id).await?;
        anyhow::ensure!(
            now.state() == pb::TaskState::Running,
            "ended early: {now:?}"
        );
        if now.subtasks[1].state() == pb::SubtaskState::Running
            && !now.subtasks[1].operation_id.is_empty()
        {
            break now;
        }
        tokio::time::sleep(POLL).await;
    };
    pair[leader].child.kill().context("kill -9 the leader")?;
    let killed = Instant::now();
    let _ = pair[leader].child.wait();
    let mut taken = None;
    let moved = loop {
        if taken.is_none() {
            let l = c.get_leader(pb::GetLeaderRequest {}).await?.into_inner();
            if l.this_coordinator_leads {
                taken = Some(killed.elapsed());
            }
        }
        let now = task(&mut c, &t.id).await?;
        if done(&now) > done(&at_kill) {
            break killed.elapsed();
        }
        anyhow::ensure!(
            killed.elapsed() < args.lease * 10,
            "the task did not move again after the leader was killed"
        );
        tokio::time::sleep(POLL).await;
    };
    // Finished by the new leader before the next run.
    while task(&mut c, &t.id).await?.state() == pb::TaskState::Running {
        tokio::time::sleep(POLL).await;
    }
    let end = task(&mut c, &t.id).await?;
    anyhow::ensure!(
        end.state() == pb::TaskState::Succeeded,
        "Restart All: {}",
        end.error
    );
    Ok((taken.unwrap_or(moved), moved))
}

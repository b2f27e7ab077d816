//! `odp-demo`: a local ODP cluster on loopback (three agents with the obproxy
//! stand-in, a coordinator, an echo backend), a client load through every
//! ODP, and a Restart All shown live with odpctl, ending with the count of
//! failed client requests. The coordinator also serves the console (its
//! address and sign-in token are printed), where the same tasks show.
//! Needs nothing installed.
use std::{process::ExitCode, time::Duration};

use anyhow::{Context, Result};
use clap::Parser;
use odp_agent::{
    proto::coordinator::{self as pb, coordinator_client::CoordinatorClient},
    testkit::{
        echo_backend::EchoBackend,
        loadgen::{Load, LoadConfig},
        local_cluster::{LocalCluster, Options},
    },
};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(about = "A local ODP cluster, client load, and a live Restart All")]
struct Args {
    /// ODPs (agents with a stand-in each).
    #[arg(long, default_value_t = 3)]
    odps: usize,
    /// Force Restart (SIGKILL) instead of the hot restart.
    #[arg(long)]
    force: bool,
    /// ODPs per batch (default: all at once, as the console does).
    #[arg(long)]
    batch: Option<u32>,
    /// Clients opening a fresh connection per request, per ODP.
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// Long-lived sessions per ODP.
    #[arg(long, default_value_t = 2)]
    sessions: usize,
    /// Keep the cluster (and its console) up at the end until Ctrl-C.
    #[arg(long)]
    keep_running: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("odp-demo: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(0) => ExitCode::SUCCESS,
        Ok(_) => ExitCode::from(1),
        Err(e) => {
            eprintln!("odp-demo: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn step(text: &str) {
    println!("\n== {text}");
}

/// Runs odpctl (the operator's CLI) against the demo's coordinator, on this
/// terminal, so the live progress is the real one.
fn odpctl(
    cluster: &LocalCluster,
    bin_dir: &std::path::Path,
    token: &str,
    args: &[&str],
) -> Result<bool> {
    let status = std::process::Command::new(bin_dir.join("odpctl"))
        .arg("--coordinator")
        .arg(cluster.coordinator.addr.to_string())
        .args(args)
        .env("ODPCTL_TOKEN", token)
        .status()
        .context("cannot run odpctl")?;
    Ok(status.success())
}

async fn run(args: Args) -> Result<u64> {
    let backend = EchoBackend::start()
        .await
        .context("cannot start the echo backend")?;
    let mut opts = Options::beside_me(args.odps);
    opts.backend = Some(backend.addr());
    opts.exit_timeout = Duration::from_secs(10);
    // A real obproxy takes a moment to come up; so does the stand-in here.
    opts.start_delay = Some(Duration::from_millis(300));
    // The console signs in with a token, so every caller needs it: odpctl
    // (ODPCTL_TOKEN) and this program's own client.
    let token = odp_agent::coordinator::web::session::random_hex()?;
    opts.console_token = Some(token.clone());
    let bin_dir = opts.bin_dir.clone();
    step(&format!(
        "Starting {} agents with the obproxy stand-in, and a coordinator",
        args.odps
    ));
    let cluster = LocalCluster::start(&opts)?;
    println!("files and logs: {}", cluster.dir.path().display());
    println!("coordinator:    {}", cluster.coordinator.addr);
    if let Some(console) = cluster.coordinator.console {
        println!("console:        http://{console}/  (sign in with the token {token})");
    }

    step("Start All");
    odpctl(
        &cluster,
        &bin_dir,
        &token,
        &["cluster", "start", &cluster.name],
    )?;

    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{}", cluster.coordinator.addr))?
            .connect()
            .await?;
    let bearer: tonic::metadata::AsciiMetadataValue = format!("Bearer {token}").parse()?;
    let mut client =
        CoordinatorClient::with_interceptor(channel, move |mut r: tonic::Request<()>| {
            r.metadata_mut().insert("authorization", bearer.clone());
            Ok(r)
        });
    let status = client
        .get_cluster_status(pb::GetClusterStatusRequest {
            cluster: cluster.name.clone(),
        })
        .await?
        .into_inner();
    let targets: Vec<std::net::SocketAddr> = status
        .odps
        .iter()
        .filter_map(|o| o.status.as_ref()?.listeners.first()?.address.parse().ok())
        .collect();

    step(&format!(
        "Client load through {} ODPs: {} clients (a connection per request) and {} long sessions each",
        targets.len(),
        args.clients,
        args.sessions
    ));
    let stop = CancellationToken::new();
    let mut loads = Vec::new();
    for &target in &targets {
        let mut cfg = LoadConfig::new(target);
        cfg.clients = args.clients;
        cfg.sessions = args.sessions;
        cfg.pause = Duration::from_millis(5);
        loads.push(Load::start(cfg, stop.clone())?);
    }
    for load in &loads {
        load.wait_for_ok(100).await;
    }

    let mode = if args.force { "FORCE" } else { "HOT" };
    step(&format!("Restart All ({mode}) while the clients run"));
    let mut restart = vec!["cluster", "restart", cluster.name.as_str()];
    let batch = args.batch.map(|b| b.to_string());
    if args.force {
        restart.push("--force");
    }
    if let Some(b) = &batch {
        restart.extend(["--batch", b.as_str()]);
    }
    let restarted = odpctl(&cluster, &bin_dir, &token, &restart)?;

    step("Cluster status after the restart");
    odpctl(
        &cluster,
        &bin_dir,
        &token,
        &["cluster", "status", &cluster.name],
    )?;

    stop.cancel();
    let mut total = (0, 0, 0, 0, 0);
    for load in loads {
        let r = load.stop().await;
        total = (
            total.0 + r.ok,
            total.1 + r.failed_requests(),
            total.2 + r.refused,
            total.3 + r.reset,
            total.4 + r.cut_sessions,
        );
    }
    if args.keep_running {
        if let Some(console) = cluster.coordinator.console {
            step(&format!(
                "The cluster stays up: the console is at http://{console}/ (token {token}); Ctrl-C ends it"
            ));
        }
        tokio::signal::ctrl_c().await?;
    }
    step("Stop All");
    odpctl(
        &cluster,
        &bin_dir,
        &token,
        &["cluster", "stop", &cluster.name],
    )?;

    let (ok, failed, refused, reset, cut) = total;
    step("Result");
    println!("client requests served: {ok}");
    println!(
        "failed client requests: {failed} (refused connections: {refused}, resets: {reset}); sessions cut: {cut}"
    );
    if !restarted {
        println!("the Restart All task did not succeed");
        return Ok(failed.max(1));
    }
    Ok(failed + refused)
}

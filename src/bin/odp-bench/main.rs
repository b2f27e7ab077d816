//! `odp-bench`: benchmarks that run the real binaries on loopback and print tables.
//!
//! Layout: `machine` describes the host the figures come from; `stats` makes every figure
//! min / median / max over repeated runs and prints the tables; `proc_stat` accounts for the
//! CPU and memory of every process involved; `load_process` runs the client load
//! ([`odp_agent::testkit::loadgen`]) in a process of its own; `testbed` is a disposable ODP (echo
//! backend, real `odp-agent`, the obproxy stand-in) in a temporary directory; each
//! benchmark is one module.
mod cluster_status;
mod get_status;
mod hot_restart;
mod load_process;
mod machine;
mod proc_stat;
mod restart_modes;
mod rolling;
mod stats;
mod takeover;
mod testbed;
mod vs_haproxy;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Benchmarks of odp-agent against the obproxy stand-in, printed as tables")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// What each way of restarting the ODP costs clients under load: HOT, FORCE, and
    /// stop-then-start.
    RestartModes(restart_modes::Args),
    /// What the agent adds to a HOT restart over the process's own start, on an idle
    /// machine.
    HotRestart(hot_restart::Args),
    /// HOT restart and HAProxy's seamless reload under the same load, side by side.
    VsHaproxy(vs_haproxy::Args),
    /// What a GetStatus costs its caller, idle and under a connect-per-request load that
    /// fills the TCP table with TIME_WAIT sockets.
    GetStatus(get_status::Args),
    /// GetClusterStatus over 10 to 10,000 agents, and the coordinator's memory.
    ClusterStatus(cluster_status::Args),
    /// A rolling HOT Restart All of real agents in batches, against the ideal.
    Rolling(rolling::Args),
    /// Coordinators sharing a metadb: the leader killed mid Restart All, how soon
    /// another leads and the task moves again.
    Takeover(takeover::Args),
    /// (used by the benchmarks) the client load, driven over stdin and stdout.
    #[command(hide = true)]
    Load(load_process::Args),
    /// (used by the benchmarks) a fleet of simulated agents.
    #[command(hide = true)]
    SimAgents(cluster_status::SimArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Runtime::new()?;
    match cli.command {
        Command::Load(args) => return runtime.block_on(load_process::serve(args)),
        Command::SimAgents(args) => return runtime.block_on(cluster_status::serve_sims(args)),
        _ => {}
    }
    println!("{}", machine::describe());
    match cli.command {
        Command::RestartModes(args) => runtime.block_on(restart_modes::run(args)),
        Command::HotRestart(args) => runtime.block_on(hot_restart::run(args)),
        Command::VsHaproxy(args) => runtime.block_on(vs_haproxy::run(args)),
        Command::GetStatus(args) => runtime.block_on(get_status::run(args)),
        Command::ClusterStatus(args) => runtime.block_on(cluster_status::run(args)),
        Command::Rolling(args) => runtime.block_on(rolling::run(args)),
        Command::Takeover(args) => runtime.block_on(takeover::run(args)),
        Command::Load(_) | Command::SimAgents(_) => Ok(()),
    }
}

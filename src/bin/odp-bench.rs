//! `odp-bench`: benchmarks that run the real binaries on loopback and print tables.
//!
//! Layout: `machine` describes the host the figures come from; `testbed` is a disposable ODP
//! (echo backend, real `odp-agent`, the obproxy stand-in) in a temporary directory; each
//! subcommand is one module that drives a testbed under [`odp_agent::loadgen`] load.
// A crate root's modules resolve beside it, in src/bin/; these live in src/bin/odp-bench/.
#[path = "odp-bench/cluster_status.rs"]
mod cluster_status;
#[path = "odp-bench/machine.rs"]
mod machine;
#[path = "odp-bench/restart_modes.rs"]
mod restart_modes;
#[path = "odp-bench/rolling.rs"]
mod rolling;
#[path = "odp-bench/testbed.rs"]
mod testbed;

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
    /// GetClusterStatus over 10, 100 and 1000 (simulated) agents, and the
    /// coordinator's memory.
    ClusterStatus(cluster_status::Args),
    /// A rolling HOT Restart All of real agents in batches, against the ideal.
    Rolling(rolling::Args),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Runtime::new()?;
    println!("{}", machine::describe());
    match cli.command {
        Command::RestartModes(args) => runtime.block_on(restart_modes::run(args)),
        Command::ClusterStatus(args) => runtime.block_on(cluster_status::run(args)),
        Command::Rolling(args) => runtime.block_on(rolling::run(args)),
    }
}

//! The command lines of the three programs, defined once with clap: the
//! daemons' here, `odpctl`'s in [`odpctl`]. They live in the library so one
//! program (`odp-shell-files`) can write the shell completions and man pages
//! of all three from the very definitions `--help` prints ([`shell_files`]).
pub mod odpctl;
pub mod shell_files;

use std::path::PathBuf;

use clap::Parser;

use crate::common::telemetry::LogFormat;

#[derive(Parser)]
#[command(
    name = "odp-agent",
    version,
    about = "Controls the local obproxy (ODP) over gRPC",
    long_about = "Controls the local obproxy (ODP) over gRPC: holds its SQL (and RPC) listening \
sockets, starts it on them, stops it, restarts it HOT (the new process starts on the same sockets \
while the old one drains) or FORCE, and re-adopts a running obproxy when the agent itself restarts."
)]
pub struct AgentArgs {
    /// The agent's TOML configuration.
    #[arg(long, short, required_unless_present = "demo")]
    pub config: Option<PathBuf>,
    /// Check the configuration and exit: parse and validate it, load the
    /// certificates, look at the paths and the obproxy binary (its -V), print
    /// what would run; exit 0, or 78 naming file, key and reason.
    #[arg(long, requires = "config")]
    pub check: bool,
    /// Run on the embedded default instead: loopback ports 2889 (gRPC) and
    /// 2883 (SQL) and 2885 (RPC), the obproxy stand-in as obproxy, started at once.
    #[arg(long, conflicts_with = "config")]
    pub demo: bool,
    /// Log lines as text, or as JSON objects for a collector.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Parser)]
#[command(
    name = "odp-coordinator",
    version,
    about = "Runs Stop All / Start All / Restart All across ODP agents",
    long_about = "Runs Stop All / Start All / Restart All across the ODP agents of each cluster in \
its configuration, as persistent tasks (one subtask per ODP, in batches, with a health gate and a \
failure budget) that survive a restart of the coordinator. odpctl(1) drives it."
)]
pub struct CoordinatorArgs {
    /// The coordinator's TOML configuration.
    #[arg(long, short)]
    pub config: PathBuf,
    /// Check the configuration and exit: parse and validate it, load the
    /// certificates, look at the paths, print the listeners, clusters and
    /// agents; exit 0, or 78 naming file, key and reason. No agent is contacted.
    #[arg(long)]
    pub check: bool,
    /// Log lines as text, or as JSON objects for a collector.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

//! `odpctl`'s command line: the operator's CLI for the coordinator (cluster
//! operations and tasks) and for single agents. Defined here, not in the
//! binary, so [`super::shell_files`] can write its completions and man pages.
use std::{path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "odpctl",
    version,
    about = "Operate ODP clusters through odp-coordinator, or one odp-agent",
    after_long_help = "Exit status: 0 when the command (and the task or operation it follows) \
succeeded, 1 when a task or operation failed, 2 on a usage or connection error.\n\n\
A bearer token, when the daemon asks for one, is read from ODPCTL_TOKEN only."
)]
pub struct Cli {
    /// The coordinator's gRPC address: HOST:PORT, or unix:PATH for its
    /// local socket.
    #[arg(
        long,
        global = true,
        default_value = "127.0.0.1:2890",
        env = "ODPCTL_COORDINATOR"
    )]
    pub coordinator: String,
    /// `table` for people, `json` for scripts.
    #[arg(long, short, global = true, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    #[command(flatten)]
    pub tls: TlsArgs,
    #[command(subcommand)]
    pub command: Top,
}

/// TLS to the daemon (https). A bearer token, if the daemon wants one, is
/// read from the ODPCTL_TOKEN environment variable.
#[derive(Args)]
pub struct TlsArgs {
    /// PEM CA that signed the daemon's certificate; turns TLS on.
    #[arg(long, global = true, env = "ODPCTL_CACERT")]
    pub cacert: Option<PathBuf>,
    /// PEM client certificate (mutual TLS), with --key.
    #[arg(long, global = true, env = "ODPCTL_CERT", requires_all = ["key", "cacert"])]
    pub cert: Option<PathBuf>,
    /// PEM private key of --cert.
    #[arg(long, global = true, env = "ODPCTL_KEY", requires_all = ["cert", "cacert"])]
    pub key: Option<PathBuf>,
    /// The name to verify in the daemon's certificate, if not the host of
    /// the address.
    #[arg(long, global = true, requires = "cacert")]
    pub tls_domain: Option<String>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

#[derive(Subcommand)]
pub enum Top {
    /// Clusters and their cluster-wide operations.
    #[command(subcommand)]
    Cluster(ClusterCmd),
    /// Tasks: list, show, watch, cancel, retry.
    #[command(subcommand)]
    Task(TaskCmd),
    /// One agent directly.
    #[command(subcommand)]
    Agent(AgentCmd),
}

#[derive(Subcommand)]
pub enum ClusterCmd {
    /// The clusters the coordinator knows, with their agents.
    List,
    /// Which coordinator runs tasks: the holder of the shared metadb's lease
    /// (with SQLite, the coordinator asked).
    Leader,
    /// Every ODP's state, fetched in parallel.
    Status {
        /// The cluster's name, as in the coordinator's configuration.
        cluster: String,
    },
    /// Stop All.
    Stop {
        /// The cluster's name, as in the coordinator's configuration.
        cluster: String,
        #[command(flatten)]
        rollout: RolloutArgs,
    },
    /// Start All.
    Start {
        /// The cluster's name, as in the coordinator's configuration.
        cluster: String,
        #[command(flatten)]
        rollout: RolloutArgs,
    },
    /// Restart All: HOT by default (no connection dropped), --force to SIGKILL.
    Restart {
        /// The cluster's name, as in the coordinator's configuration.
        cluster: String,
        #[arg(long)]
        force: bool,
        /// HOT only: the drain window, e.g. 30s.
        #[arg(long, value_parser = humantime::parse_duration)]
        exit_timeout: Option<Duration>,
        #[command(flatten)]
        rollout: RolloutArgs,
    },
    /// Upgrade All: hot-upgrade every ODP onto another obproxy binary,
    /// canary first; on a failure, every ODP moved goes back.
    Upgrade {
        /// The cluster's name, as in the coordinator's configuration.
        cluster: String,
        /// The new obproxy's path on every host (relative to the agents'
        /// home, inside their upgrade_dir), e.g. bin/obproxy-4.3.1.
        #[arg(long)]
        binary: String,
        /// Its SHA-256, as sha256sum prints it; every host must hold it.
        #[arg(long)]
        sha256: String,
        /// ODPs in the first batch, the canary.
        #[arg(long, default_value_t = 1)]
        canary: u32,
        /// How long the canary serves on the new binary before the rest,
        /// e.g. 5m.
        #[arg(long, value_parser = humantime::parse_duration)]
        canary_wait: Option<Duration>,
        /// Allow a binary older than an ODP's version.
        #[arg(long)]
        allow_downgrade: bool,
        /// The drain window of each hot upgrade (and rollback), e.g. 30s.
        #[arg(long, value_parser = humantime::parse_duration)]
        exit_timeout: Option<Duration>,
        #[command(flatten)]
        rollout: RolloutArgs,
    },
}

#[derive(Args)]
pub struct RolloutArgs {
    /// ODPs per batch: a count (2) or a percentage (25%). Default: all at once.
    #[arg(long)]
    pub batch: Option<String>,
    /// Failed ODPs tolerated before no further batch starts.
    #[arg(long, default_value_t = 0)]
    pub max_failures: u32,
    /// Wait between batches, e.g. 10s.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub pause: Option<Duration>,
    /// Makes a repeated command return the same task.
    #[arg(long, default_value = "")]
    pub request_id: String,
    /// Print the task and return instead of following it.
    #[arg(long)]
    pub detach: bool,
}

#[derive(Subcommand)]
pub enum TaskCmd {
    /// Recent tasks, newest first.
    List {
        /// Only this cluster's tasks.
        #[arg(long)]
        cluster: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// One task with its subtasks.
    Show {
        /// The task's id (task-...).
        id: String,
    },
    /// Follow a task until it ends.
    Watch {
        /// The task's id (task-...).
        id: String,
    },
    /// Stop a task from taking any further batch.
    Cancel {
        /// The task's id (task-...).
        id: String,
    },
    /// Run the subtasks of a task that did not succeed again.
    Retry {
        /// The task's id (task-...).
        id: String,
        /// Print the task and return instead of following it.
        #[arg(long)]
        detach: bool,
    },
}

#[derive(Subcommand)]
pub enum AgentCmd {
    /// The agent's status: state, pid, version, listeners.
    Status(AgentAddr),
    /// Start obproxy.
    Start(AgentAddr),
    /// Stop obproxy and close its ports.
    Stop(AgentAddr),
    /// Restart obproxy: HOT by default, --force to SIGKILL.
    Restart {
        #[command(flatten)]
        addr: AgentAddr,
        /// SIGKILL obproxy and start it again on the held listeners.
        #[arg(long)]
        force: bool,
        /// HOT only: the drain window, e.g. 30s.
        #[arg(long, value_parser = humantime::parse_duration)]
        exit_timeout: Option<Duration>,
        /// HOT only: move onto another obproxy binary.
        #[arg(long)]
        binary: Option<String>,
    },
}

#[derive(Args)]
pub struct AgentAddr {
    /// The agent's gRPC address: HOST:PORT, or unix:PATH for its local
    /// socket (e.g. unix:/var/lib/odp-agent/grpc.sock).
    #[arg(long)]
    pub addr: String,
}

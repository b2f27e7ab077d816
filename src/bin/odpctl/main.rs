//! `odpctl`: the operator's CLI for the coordinator (cluster operations and
//! tasks) and for single agents, over TLS with a client certificate and/or a
//! bearer token when the daemon asks for them.
//!
//! Layout: one file per command group ([`cluster`], [`task`], [`agent`]);
//! [`connect`] opens the connection (local socket, TLS, bearer token),
//! [`follow`] follows a task to its end with live progress, and [`render`]
//! prints tables and JSON. The command line itself is defined in the library
//! (`common::command_line::odpctl`), where the shell completions and the man
//! page are made from it.
mod agent;
mod cluster;
mod connect;
mod follow;
mod render;
mod task;

use std::{process::ExitCode, time::Duration};

use clap::Parser;
use odp_agent::{
    common::command_line::odpctl::{Cli, Output, Top},
    proto::coordinator::coordinator_client::CoordinatorClient,
};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("odpctl: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("odpctl: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Returns whether the command succeeded (exit 0) or a task/operation failed.
async fn run(cli: Cli) -> anyhow::Result<bool> {
    let json_out = cli.output == Output::Json;
    match cli.command {
        Top::Cluster(cmd) => {
            let c = CoordinatorClient::new(connect::connect(&cli.coordinator, &cli.tls).await?);
            cluster::run(cmd, c, json_out).await
        }
        Top::Task(cmd) => {
            let c = CoordinatorClient::new(connect::connect(&cli.coordinator, &cli.tls).await?);
            task::run(cmd, c, json_out).await
        }
        Top::Agent(cmd) => agent::run(cmd, &cli.tls, json_out).await,
    }
}

pub(crate) fn rpc_error(status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{}: {}", status.code(), status.message())
}

pub(crate) fn proto_duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

//! `odp-agent --config FILE`: the agent daemon of one ODP host.
use std::{path::PathBuf, process::ExitCode};

use clap::Parser;
use odp_agent::{
    config::AgentConfig,
    config_file::{ConfigError, EX_CONFIG},
    telemetry::{self, LogFormat},
};

#[derive(Parser)]
#[command(version, about = "Controls the local obproxy (ODP) over gRPC")]
struct Args {
    /// The agent's TOML configuration.
    #[arg(long, short)]
    config: PathBuf,
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

fn main() -> ExitCode {
    let args = Args::parse();
    telemetry::init(args.log_format);
    let config = match AgentConfig::load(&args.config).and_then(|c| {
        std::fs::create_dir_all(&c.state.dir).map_err(|e| {
            ConfigError::new(
                &args.config,
                "state.dir",
                format!("cannot create {}: {e}", c.state.dir.display()),
            )
        })?;
        Ok(c)
    }) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("odp-agent: bad configuration: {e}");
            return ExitCode::from(EX_CONFIG as u8);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("odp-agent: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(odp_agent::agent::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("odp-agent: {}", odp_agent::operations::describe(&e));
            ExitCode::FAILURE
        }
    }
}

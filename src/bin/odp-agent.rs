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
    #[arg(long, short, required_unless_present = "demo")]
    config: Option<PathBuf>,
    /// Run on the embedded default instead: loopback ports 2889 (gRPC) and
    /// 2883 (SQL) and 2885 (RPC), the obproxy stand-in as obproxy, started at once.
    #[arg(long, conflicts_with = "config")]
    demo: bool,
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

fn main() -> ExitCode {
    // First, while single-threaded: as PID 1 the agent forks and PID 1
    // stays a minimal init (obproxy never signals readiness to PID 1).
    if let Some(code) = odp_agent::container_init::split_if_pid1() {
        return ExitCode::from(code);
    }
    let args = Args::parse();
    telemetry::init(args.log_format);
    let loaded = match &args.config {
        Some(path) => AgentConfig::load(path),
        None => demo_config(),
    };
    let config = match loaded.and_then(|c| {
        std::fs::create_dir_all(&c.state.dir).map_err(|e| {
            ConfigError::new(
                args.config.as_deref().unwrap_or(&c.state.dir),
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
    match runtime.block_on(odp_agent::agent::run(config, args.demo)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.is_config() => {
            eprintln!(
                "odp-agent: bad configuration: {}",
                odp_agent::error_chain::describe(&e)
            );
            ExitCode::from(EX_CONFIG as u8)
        }
        Err(e) => {
            eprintln!("odp-agent: {}", odp_agent::error_chain::describe(&e));
            ExitCode::FAILURE
        }
    }
}

fn demo_config() -> Result<AgentConfig, ConfigError> {
    let exe = std::env::current_exe().unwrap_or_default();
    let standin = exe.with_file_name("obproxy-standin");
    let dir = std::env::temp_dir().join("odp-agent-demo");
    eprintln!(
        "odp-agent: demo on the embedded default: gRPC 127.0.0.1:2889, SQL 127.0.0.1:2883, RPC 127.0.0.1:2885, \
         obproxy = {}, files under {}",
        standin.display(),
        dir.display()
    );
    AgentConfig::demo(&dir, &standin)
}

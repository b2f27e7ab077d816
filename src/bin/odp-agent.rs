//! `odp-agent --config FILE`: the agent daemon of one ODP host
//! (`--check` examines the configuration instead).
use std::process::ExitCode;

use clap::Parser;
use odp_agent::{
    agent::config::AgentConfig,
    common::{
        command_line::AgentArgs as Args,
        config_file::{ConfigError, EX_CONFIG},
        telemetry,
    },
};

fn main() -> ExitCode {
    // First, while single-threaded: as PID 1 the agent forks and PID 1
    // stays a minimal init (obproxy never signals readiness to PID 1).
    if let Some(code) = odp_agent::agent::container_init::split_if_pid1() {
        return ExitCode::from(code);
    }
    let args = Args::parse();
    if let (true, Some(path)) = (args.check, &args.config) {
        return odp_agent::agent::preflight::check(path).finish("odp-agent");
    }
    telemetry::init(args.log_format);
    odp_agent::common::panics::install("odp-agent");
    // Everything the daemon creates is its own (0700 directories, 0600
    // files), whatever umask it was started with.
    odp_agent::security::files::restrict_umask();
    let loaded = match &args.config {
        Some(path) => AgentConfig::load(path),
        None => demo_config(),
    };
    let config = match loaded.and_then(|c| {
        // The state directory holds what the agent trusts at its next start
        // (which pids to signal): its own, 0700, nobody else's.
        odp_agent::security::files::private_dir(&c.state.dir).map_err(|e| {
            ConfigError::new(
                args.config.as_deref().unwrap_or(&c.state.dir),
                "state.dir",
                odp_agent::common::error_chain::describe(&e),
            )
        })?;
        Ok(c)
    }) {
        Ok(c) => c,
        Err(e) => {
            odp_agent::say!("odp-agent: bad configuration: {e}");
            return ExitCode::from(EX_CONFIG as u8);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            odp_agent::say!("odp-agent: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(odp_agent::agent::daemon::run(config, args.demo)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.is_config() => {
            odp_agent::say!(
                "odp-agent: bad configuration: {}",
                odp_agent::common::error_chain::describe(&e)
            );
            ExitCode::from(EX_CONFIG as u8)
        }
        Err(e) => {
            odp_agent::say!(
                "odp-agent: {}",
                odp_agent::common::error_chain::describe(&e)
            );
            ExitCode::FAILURE
        }
    }
}

fn demo_config() -> Result<AgentConfig, ConfigError> {
    let exe = std::env::current_exe().unwrap_or_default();
    let standin = exe.with_file_name("obproxy-standin");
    let dir = std::env::temp_dir().join("odp-agent-demo");
    odp_agent::say!(
        "odp-agent: demo on the embedded default: gRPC 127.0.0.1:2889, SQL 127.0.0.1:2883, RPC 127.0.0.1:2885, \
         obproxy = {}, files under {}",
        standin.display(),
        dir.display()
    );
    AgentConfig::demo(&dir, &standin)
}

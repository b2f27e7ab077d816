//! `odp-coordinator --config FILE`: cluster-wide operations across agents
//! (`--check` examines the configuration instead).
use std::process::ExitCode;

use clap::Parser;
use odp_agent::{
    common::{command_line::CoordinatorArgs as Args, config_file::EX_CONFIG, telemetry},
    coordinator::config::CoordinatorConfig,
};

fn main() -> ExitCode {
    let args = Args::parse();
    if args.check {
        return odp_agent::coordinator::preflight::check(&args.config).finish("odp-coordinator");
    }
    telemetry::init(args.log_format);
    odp_agent::common::panics::install("odp-coordinator");
    // Everything the daemon creates is its own (0700 directories, 0600
    // files), whatever umask it was started with.
    odp_agent::security::files::restrict_umask();
    let config = match CoordinatorConfig::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            odp_agent::say!("odp-coordinator: bad configuration: {e}");
            return ExitCode::from(EX_CONFIG as u8);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            odp_agent::say!("odp-coordinator: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(odp_agent::coordinator::daemon::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.is_config() => {
            odp_agent::say!(
                "odp-coordinator: bad configuration: {}",
                odp_agent::common::error_chain::describe(&e)
            );
            ExitCode::from(EX_CONFIG as u8)
        }
        Err(e) => {
            odp_agent::say!(
                "odp-coordinator: {}",
                odp_agent::common::error_chain::describe(&e)
            );
            ExitCode::FAILURE
        }
    }
}

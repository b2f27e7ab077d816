//! `odp-shell-files --out DIR`: writes the shell completions and man pages
//! of odp-agent, odp-coordinator and odpctl under DIR, from their clap
//! definitions. Run when the packages are built (`packaging/build-debs`);
//! not installed itself.
use std::{path::PathBuf, process::ExitCode};

use clap::Parser;
use odp_agent::common::command_line::shell_files;

#[derive(Parser)]
#[command(
    version,
    about = "Write the completions and man pages the packages ship"
)]
struct Args {
    /// Where to write them (created if missing): bash/, zsh/, fish/, man1/, man8/.
    #[arg(long)]
    out: PathBuf,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match shell_files::write_all(&args.out) {
        Ok(written) => {
            for path in written {
                println!("{}", path.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!(
                "odp-shell-files: {}",
                odp_agent::common::error_chain::describe(&e)
            );
            ExitCode::FAILURE
        }
    }
}

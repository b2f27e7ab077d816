//! Logging: structured `tracing` events to stderr, human-readable by default
//! or JSON lines for collectors. `RUST_LOG` refines the level.
//!
//! Context lives in spans (an operation's `op_id`, a task's `task_id`), so
//! JSON lines carry the innermost span (`span`) and every enclosing one
//! (`spans`): a collector finds all lines of one operation by its id.
use tracing_subscriber::EnvFilter;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(false).init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .init(),
    }
}

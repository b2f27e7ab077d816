//! Logging: structured `tracing` events to stderr, human-readable by default
//! or JSON lines for collectors. `RUST_LOG` refines the level.
//!
//! Context lives in spans (an operation's `op_id`, a task's `task_id`), so
//! JSON lines carry the innermost span (`span`) and every enclosing one
//! (`spans`): a collector finds all lines of one operation by its id.
//!
//! Logging never hurts the daemon: a line stderr cannot take (its reader is
//! gone, say journald restarted) is dropped and counted
//! (`odp_log_write_errors_total`), never turned into a panic, and the next
//! line tries again, so logging resumes if the stream comes back.
use std::{
    io::{self, Write},
    sync::{LazyLock, OnceLock},
};

use prometheus_client::metrics::counter::Counter;
use tracing_subscriber::EnvFilter;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Log lines stderr did not take.
static WRITE_ERRORS: LazyLock<Counter> = LazyLock::new(Counter::default);

static FORMAT: OnceLock<LogFormat> = OnceLock::new();

/// The counter of dropped log lines, for a daemon's metrics registry.
pub fn write_errors() -> Counter {
    WRITE_ERRORS.clone()
}

/// The format logging was set up with (text until [`init`]).
pub fn format() -> LogFormat {
    FORMAT.get().copied().unwrap_or(LogFormat::Text)
}

/// stderr, where a failed write is counted and forgotten.
pub struct Stderr;

impl Write for Stderr {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if io::stderr().lock().write_all(buf).is_err() {
            WRITE_ERRORS.inc();
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        let _ = io::stderr().flush();
        Ok(())
    }
}

/// A line straight to stderr (a daemon's own messages before or after
/// logging, e.g. a configuration error), never a panic if stderr is gone.
pub fn say(line: std::fmt::Arguments<'_>) {
    let _ = Stderr.write_all(format!("{line}\n").as_bytes());
}

/// `eprintln!` that cannot panic: see [`say`].
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => { $crate::common::telemetry::say(format_args!($($arg)*)) };
}

pub fn init(format: LogFormat) {
    let _ = FORMAT.set(format);
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| Stderr)
        // Its own report of a failed write is an eprintln!, which panics
        // when stderr is gone; Stderr never fails anyway.
        .log_internal_errors(false);
    match format {
        LogFormat::Text => builder.with_ansi(false).init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .init(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_never_fails() {
        // Whatever stderr is in the test harness, the writer says it took
        // everything.
        assert_eq!(Stderr.write(b"x\n").unwrap(), 2);
        assert!(Stderr.flush().is_ok());
    }
}

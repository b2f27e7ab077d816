//! What a panic does to a daemon: it ends the process. A thread that dies
//! alone would leave a half-dead daemon (no signal thread: SIGTERM and
//! obproxy's SIGUSR1 ignored; no spawner: no respawn) that still answers
//! gRPC as if all were well. The hook writes where it happened (thread,
//! file:line, message) straight to stderr, then aborts; systemd restarts
//! the daemon and obproxy, which outlives it, is re-adopted. Release builds
//! also abort on panic (`[profile.release] panic = "abort"`); the hook makes
//! debug builds do the same.
use std::io::Write;

use crate::common::telemetry::{self, LogFormat, Stderr};

/// Installs the hook for the daemon `daemon` (its name in the line).
pub fn install(daemon: &'static str) {
    std::panic::set_hook(Box::new(move |info| {
        let thread = std::thread::current();
        let thread = thread.name().unwrap_or("<unnamed>");
        let location = info
            .location()
            .map_or_else(|| "?".to_string(), |l| l.to_string());
        let payload = info.payload();
        let message = payload
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
            .unwrap_or("(no message)");
        let time = humantime::format_rfc3339_micros(std::time::SystemTime::now());
        let line = match telemetry::format() {
            LogFormat::Text => format!(
                "{time} ERROR {daemon}: panic in thread '{thread}' at {location}: {message}; ending the process\n"
            ),
            LogFormat::Json => format!(
                "{}\n",
                serde_json::json!({
                    "timestamp": time.to_string(),
                    "level": "ERROR",
                    "fields": {
                        "message": "panic; ending the process",
                        "thread": thread,
                        "location": location,
                        "panic": message,
                    },
                    "target": daemon,
                })
            ),
        };
        let _ = Stderr.write_all(line.as_bytes());
        let backtrace = std::backtrace::Backtrace::capture();
        if backtrace.status() == std::backtrace::BacktraceStatus::Captured {
            let _ = Stderr.write_all(format!("{backtrace}\n").as_bytes());
        }
        std::process::abort();
    }));
}

/// Debug builds only: panics here when `ODP_DEBUG_PANIC` names `point`, so
/// the tests can prove that a panic in that thread ends the process.
/// Release builds have no such switch.
#[inline]
#[track_caller]
pub fn injected(point: &str) {
    #[cfg(debug_assertions)]
    if std::env::var("ODP_DEBUG_PANIC").is_ok_and(|p| p == point) {
        panic!("ODP_DEBUG_PANIC={point}");
    }
    #[cfg(not(debug_assertions))]
    let _ = point;
}

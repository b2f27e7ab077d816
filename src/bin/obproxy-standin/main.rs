//! obproxy stand-in: a small fake obproxy for tests and demos that keeps obproxy's process contract (flags, inherited listeners, readiness and exit signals to the parent, SIGUSR1 drain, SIGTERM quick exit) and forwards or echoes TCP.
//!
//! Layout: `options` reads the command line and test knobs; `listener` owns the SQL listeners
//! (inherited or bound); `forward` accepts and serves connections and keeps their census;
//! `session` relays one forwarded session and `mysql` follows its protocol, so that a drain
//! (`drain`, which owns stopping) closes sessions only at transaction boundaries; `parent`
//! the signals exchanged with the parent; `exporter` the optional `-l` port.
//! Logs are one plain `obproxy-standin: <event> pid=<pid> key=value...` line per event on stderr.

/// Writes one log line. Defined before the modules so they can all use it.
macro_rules! event {
    ($name:expr, $($fields:tt)*) => {
        eprintln!("obproxy-standin: {} pid={} {}", $name, std::process::id(), format_args!($($fields)*))
    };
}

mod drain;
mod exporter;
mod forward;
mod listener;
mod mysql;
mod options;
mod parent;
mod session;

use nix::sys::signal::Signal;

use crate::drain::{Stop, StopSignals, Windows};
use crate::forward::{Acceptors, Connections, Service};
use crate::listener::Listeners;
use crate::options::{Action, Config};

fn main() {
    let args: Vec<String> = std::env::args_os()
        .skip(1)
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    match options::parse(&args) {
        Ok(Action::Run(config)) => start(*config),
        Ok(Action::PrintVersion(version)) => {
            // obproxy prints its version to stderr; obshell parses the first line.
            eprintln!("obproxy (OceanBase {version} {})", options::release_id());
            eprintln!("REVISION: obproxy-standin-{}", env!("CARGO_PKG_VERSION"));
        }
        Ok(Action::PrintReleaseId) => println!("{}.", options::release_id()),
        Ok(Action::PrintUsage) => eprintln!("{}", options::USAGE),
        // Like obproxy: the message, the usage, and exit code 0 (exit codes say nothing).
        Err(e) => {
            event!("start failed", "error={e:#}");
            eprintln!("{}", options::USAGE);
        }
    }
}

/// The start-up steps that must happen before the runtime exists: they fork, edit the
/// environment or close descriptors, none of which is safe with other threads around.
fn start(config: Config) -> ! {
    let inherited = Listeners::inherit_from_env().unwrap_or_else(|e| fail(e));
    // A fresh start daemonizes like obproxy; an inherited start stays with its parent.
    if inherited.is_none() && !config.nodaemon {
        parent::daemonize().unwrap_or_else(|e| fail(e.into()));
    }
    parent::arm_death_signal().unwrap_or_else(|e| fail(e.into()));
    if config.knobs.ignore_signals {
        parent::ignore(&[Signal::SIGTERM, Signal::SIGINT, Signal::SIGUSR1])
            .unwrap_or_else(|e| fail(e.into()));
    }
    if let Some(listeners) = &inherited {
        listeners.close_other_fds().unwrap_or_else(|e| fail(e));
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| fail(e.into()));
    let code = runtime.block_on(run(config, inherited));
    // obproxy leaves with _exit: nothing to tear down, the sockets go with the process.
    // SAFETY: ends the process; no destructor is relied on.
    unsafe { libc::_exit(code) }
}

/// A failed start: a message, exit code 0 and no readiness signal, as obproxy does.
fn fail(error: anyhow::Error) -> ! {
    event!("start failed", "error={error:#}");
    // SAFETY: ends the process; no destructor is relied on.
    unsafe { libc::_exit(0) }
}

async fn run(config: Config, inherited: Option<Listeners>) -> i32 {
    let knobs = &config.knobs;
    let mut signals = StopSignals::install(knobs.ignore_signals).unwrap_or_else(|e| fail(e.into()));
    let windows = Windows {
        drain: config.drain_window,
        quick: config.quick_exit_delay,
    };
    let connections = Connections::new();

    if !knobs.start_delay.is_zero() {
        tokio::select! {
            _ = tokio::time::sleep(knobs.start_delay) => {}
            stop = signals.next() => {
                let stop = drain::drain(stop, Acceptors::none(), &connections, &mut signals, windows).await;
                return finish(stop, knobs.strict);
            }
        }
    }
    if knobs.fail_start {
        fail(anyhow::anyhow!("standin_fail_start is set"));
    }

    // Held until exit: the listeners are never closed by this process.
    let listeners = match inherited {
        Some(listeners) => listeners,
        None => Listeners::bind(config.listen_port).unwrap_or_else(|e| fail(e)),
    };
    let service = Service {
        backend: knobs.backend.clone().map(std::sync::Arc::new),
        close_idle: !knobs.strict,
    };
    let acceptors = Acceptors::start(&listeners, service, &connections).unwrap_or_else(|e| fail(e));
    let prometheus = match config.prometheus_port.map(exporter::start) {
        None => "none".to_owned(),
        Some(None) => "failed".to_owned(),
        Some(Some(addr)) => addr.to_string(),
    };
    event!(
        "started",
        "{listeners} prometheus={prometheus} version={} backend={}",
        knobs.version,
        knobs.backend.as_ref().map_or("echo", |b| b.name.as_str())
    );

    // obproxy itself signals readiness only when it took over inherited listeners.
    let silent = knobs.no_ready || (knobs.strict && !listeners.inherited);
    let ready = if silent {
        parent::current()
    } else {
        parent::notify(Signal::SIGUSR1)
    };
    event!("ready", "parent={} notified={}", ready.parent, ready.sent);

    let stop = signals.next().await;
    let stop = drain::drain(stop, acceptors, &connections, &mut signals, windows).await;
    finish(stop, knobs.strict)
}

/// A clean exit: SIGUSR2 to the parent, then obproxy's graceful exit code 1. obproxy itself
/// skips the SIGUSR2 after SIGTERM/SIGINT (it counts as an abort), which `strict` mimics.
fn finish(stop: Stop, strict: bool) -> i32 {
    let notice = if strict && stop != Stop::Drain {
        parent::current()
    } else {
        parent::notify(Signal::SIGUSR2)
    };
    event!(
        "exit",
        "signal={} code=1 parent={} notified={}",
        stop.signal_name(),
        notice.parent,
        notice.sent
    );
    1
}

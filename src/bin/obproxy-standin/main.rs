//! obproxy stand-in: a small fake obproxy for tests and demos that keeps obproxy's process contract per version line (3.2, 4.2, 4.3: flags, local config, inherited listeners, RPC port, readiness and exit signals, SIGUSR1 drain, SIGTERM quick exit), its `root@proxysys` admin SQL and native restart, and forwards or echoes TCP.
//!
//! Layout: `cmdline` reads the flags; `profile` says what differs per line; `config` holds
//! the items and knobs, `local_config` keeps them under `etc/`; `listener` owns the SQL and
//! RPC listeners (inherited or bound); `forward` accepts and serves connections and keeps
//! their census; `session` relays one forwarded session and `mysql` follows its protocol, so
//! that a drain (`drain`, which owns stopping) closes sessions only at transaction
//! boundaries; `signals` the signals listened to, `parent` those sent to the parent;
//! `exporter` the Prometheus port; `login` decides who a connection is, `admin` serves
//! `root@proxysys`; `native` is obproxy's own restart; `proxy` the state they share.
//! Logs are one plain `obproxy-standin: <event> pid=<pid> key=value...` line per event on stderr.

/// Writes one log line. Defined before the modules so they can all use it.
macro_rules! event {
    ($name:expr, $($fields:tt)*) => {
        $crate::say(&format!("obproxy-standin: {} pid={} {}", $name, std::process::id(), format_args!($($fields)*)))
    };
}

mod admin;
mod cmdline;
mod config;
mod drain;
mod exporter;
mod forward;
mod listener;
mod local_config;
mod login;
mod mysql;
mod native;
mod parent;
mod profile;
mod proxy;
mod session;
mod signals;

use std::ffi::OsString;
use std::sync::Arc;

use anyhow::bail;
use nix::sys::signal::Signal;

use crate::cmdline::{Action, CommandLine};
use crate::config::{Config, Knobs, optstr_items};
use crate::drain::Stop;
use crate::exporter::Exporter;
use crate::forward::{Acceptors, Connections};
use crate::listener::{Fds, Listeners};
use crate::local_config::Layout;
use crate::profile::Line;
use crate::proxy::Proxy;
use crate::signals::{Received, Signals};

/// One line to stderr in a single write, so that lines from processes sharing it (a
/// parent, a native child) never interleave inside a line.
pub fn say(line: &str) {
    use std::io::Write;
    let _ = std::io::stderr().write_all(format!("{line}\n").as_bytes());
}

fn main() {
    let argv: Vec<OsString> = std::env::args_os().collect();
    let text = |a: &OsString| a.to_string_lossy().into_owned();
    // `print_args`: obproxy echoes its command line to stderr before anything else
    // (v4.3.1:src/obproxy/ob_proxy_main.cpp:53-66, :457), `-o` and its passwords included.
    say(&argv.iter().map(text).collect::<Vec<_>>().join(" "));
    let args: Vec<String> = argv.iter().skip(1).map(text).collect();
    match cmdline::parse(&args) {
        Ok(Action::Run(cmd)) => {
            for line in &cmd.echo {
                say(line);
            }
            let argv0 = argv.first().cloned().unwrap_or_default();
            start(*cmd, argv0)
        }
        Ok(Action::PrintVersion(optstr)) => print_version(&config::version(optstr.as_deref())),
        // The only output on stdout (v4.3.1:src/obproxy/ob_proxy_main.cpp:369-372).
        Ok(Action::PrintReleaseId) => println!("{}.", cmdline::RELEASE_ID),
        Ok(Action::PrintUsage) => eprintln!("{}", cmdline::USAGE),
        // Like obproxy: the message, and exit code 0 (exit codes say nothing).
        Err(e) => {
            event!("start failed", "error={e:#}");
            eprintln!("{}", cmdline::USAGE);
        }
    }
}

/// `print_version` (v4.3.1:src/obproxy/ob_proxy_main.cpp:352-357), all on stderr. The
/// build time is when this binary was written; the licence text that follows in obproxy is
/// not the stand-in's to print.
fn print_version(version: &str) {
    say(&format!(
        "obproxy ({} {})",
        Line::package_string(version),
        cmdline::RELEASE_ID
    ));
    say(&format!("REVISION: {}", revision()));
    say(&format!("BUILD_TIME: {}", build_time()));
    say(&format!("BUILD_FLAGS: {}\n", build_flags()));
}

pub fn revision() -> String {
    format!("obproxy-standin-{}", env!("CARGO_PKG_VERSION"))
}

pub fn build_flags() -> &'static str {
    if cfg!(debug_assertions) {
        "rust-debug"
    } else {
        "rust-release"
    }
}

/// `__DATE__ __TIME__` of this binary: its modification time, in UTC, as `Mmm dd yyyy hh:mm:ss`.
pub fn build_time() -> String {
    let modified = std::env::current_exe()
        .and_then(std::fs::metadata)
        .and_then(|m| m.modified());
    let Ok(at) = modified else {
        return "unknown".to_owned();
    };
    // "2024-07-19T10:04:16Z"
    let stamp = humantime::format_rfc3339_seconds(at).to_string();
    let (date, time) = stamp
        .trim_end_matches('Z')
        .split_once('T')
        .unwrap_or((&stamp, ""));
    let mut parts = date.split('-');
    let (year, month, day) = (parts.next(), parts.next(), parts.next());
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = month
        .and_then(|m| m.parse::<usize>().ok())
        .and_then(|m| MONTHS.get(m.wrapping_sub(1)))
        .copied()
        .unwrap_or("???");
    let day: u32 = day.and_then(|d| d.parse().ok()).unwrap_or(0);
    format!("{month} {day:>2} {} {time}", year.unwrap_or("????"))
}

/// The start-up steps that must happen before the runtime exists: they fork, edit the
/// environment or close descriptors, none of which is safe with other threads around.
fn start(cmd: CommandLine, argv0: OsString) -> ! {
    let version = config::version(cmd.optstr.as_deref());
    let line = Line::of(&version);
    let inherited = Fds::inherit_from_env(line).unwrap_or_else(|e| fail(e));
    // An inherited start never daemonizes (v4.3.1:src/obproxy/ob_proxy_main.cpp:467-475).
    if inherited.is_none() && !cmd.nodaemon {
        parent::daemonize().unwrap_or_else(|e| fail(e.into()));
    }
    if let Some(fds) = &inherited {
        fds.close_others().unwrap_or_else(|e| fail(e));
    }
    let layout = Layout::from_env().unwrap_or_else(|e| fail(e.into()));
    layout.create_dirs().unwrap_or_else(|e| fail(e.into()));
    parent::arm_death_signal().unwrap_or_else(|e| fail(e.into()));
    let (config, knobs) = build_config(&cmd, line, &version, &layout, inherited.is_some())
        .unwrap_or_else(|e| fail(e));
    if knobs.ignore_signals {
        parent::ignore(&[Signal::SIGTERM, Signal::SIGINT, Signal::SIGUSR1])
            .unwrap_or_else(|e| fail(e.into()));
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| fail(e.into()));
    let proxy = Proxy::new(config, version, layout, argv0, knobs.backend.clone());
    let code = runtime.block_on(run(proxy, knobs, inherited));
    // obproxy leaves with _exit: nothing to tear down, the sockets go with the process.
    // SAFETY: ends the process; no destructor is relied on.
    unsafe { libc::_exit(code) }
}

/// The config a start runs with, in obproxy's order (v4.3.1:src/obproxy/ob_proxy.cpp:500-545,
/// :711-747): the local config, then `-o`, then the flags; then the knobs.
fn build_config(
    cmd: &CommandLine,
    line: Line,
    version: &str,
    layout: &Layout,
    inherited: bool,
) -> anyhow::Result<(Config, Knobs)> {
    let mut config = Config::new(line);
    match local_config::load(layout, &mut config) {
        Ok(true) => {}
        // An inherited start must not fall back to defaults (v4.2.3:src/obproxy/ob_proxy.cpp:654-663).
        Ok(false) => {
            if inherited {
                bail!("fail to load config from file during hot upgrade, terminate startup");
            }
            event!("local config", "loaded=false reason=missing");
        }
        Err(e) => {
            if inherited {
                bail!("fail to load config from file during hot upgrade, terminate startup: {e}");
            }
            event!(
                "local config",
                "loaded=false reason={}",
                e.to_string().replace(' ', "_")
            );
            config = Config::new(line);
        }
    }
    let optstr = cmd.optstr.as_deref().unwrap_or("");
    config.apply_optstr(optstr)?;
    let flags = [
        ("rootservice_list", cmd.rs_list.clone()),
        ("rootservice_cluster_name", cmd.cluster_name.clone()),
        ("app_name", cmd.app_name.clone()),
        ("listen_port", cmd.listen_port.map(|p| p.to_string())),
        (
            "prometheus_listen_port",
            cmd.prometheus_port.map(|p| p.to_string()),
        ),
        ("rpc_listen_port", cmd.rpc_port.map(|p| p.to_string())),
    ];
    for (name, value) in flags {
        if let Some(value) = value
            && config.has(name)
        {
            config
                .set(name, &value)
                .map_err(|_| anyhow::anyhow!("invalid {name}={value}"))?;
        }
    }
    let _ = config.set("standin_version", version);
    let knobs = config.knobs(&optstr_items(optstr))?;
    // 4.3 writes every item into sqlite at init (v4.3.1:src/obproxy/obutils/ob_config_processor.cpp:135).
    if line.uses_sqlite() {
        local_config::store(layout, &config)?;
    }
    Ok((config, knobs))
}

/// A failed start: a message, exit code 0 and no readiness signal, as obproxy does
/// (v4.3.1:src/obproxy/main.cpp:42-54).
fn fail(error: anyhow::Error) -> ! {
    event!("start failed", "error={error:#}");
    // SAFETY: ends the process; no destructor is relied on.
    unsafe { libc::_exit(0) }
}

async fn run(proxy: Arc<Proxy>, knobs: Knobs, inherited: Option<Fds>) -> i32 {
    let line = proxy.line;
    let mut signals =
        Signals::install(line, knobs.ignore_signals).unwrap_or_else(|e| fail(e.into()));
    let connections = Connections::new();

    if !knobs.start_delay.is_zero() {
        tokio::select! {
            _ = tokio::time::sleep(knobs.start_delay) => {}
            stop = wait_for_stop(&mut signals, &proxy) => {
                let stop = drain::drain(stop, Acceptors::none(), &proxy, &connections, &mut signals).await;
                return finish(stop, line);
            }
        }
    }
    if knobs.fail_start {
        fail(anyhow::anyhow!("standin_fail_start is set"));
    }

    let (families, listen_port, prometheus_port, rpc, ips) = {
        let config = proxy.config();
        // 3.x/4.0 have no local_bound_ipv6_ip: "" there, and IPv6 is never bound.
        let v6 = match config.get("local_bound_ipv6_ip") {
            "" => "::",
            v6 => v6,
        };
        let ips =
            listener::BindIps::parse(config.get("local_bound_ip"), v6).unwrap_or_else(|e| fail(e));
        let families = listener::families(line, config.int("ip_listen_mode"));
        let rpc = (
            config.flag("enable_obproxy_rpc_service"),
            config.int("rpc_listen_port") as u16,
        );
        let ports = (
            config.int("listen_port") as u16,
            config.int("prometheus_listen_port") as u16,
        );
        (families, ports.0, ports.1, rpc, ips)
    };
    *proxy.exporter.lock().await = Some(Exporter::start(prometheus_port));
    let mut listeners = match inherited {
        Some(fds) => Listeners::inherited(fds, families),
        None => Listeners::bind(listen_port, families, ips),
    }
    .unwrap_or_else(|e| fail(e));
    // Up to 4.2 every start that gets this far writes the local config
    // (v4.2.3:src/obproxy/ob_proxy.cpp:333, v3.2.3:src/obproxy/ob_proxy.cpp:304).
    if !line.uses_sqlite() {
        let config = proxy.config().clone();
        local_config::store(&proxy.layout, &config).unwrap_or_else(|e| fail(e.into()));
    }
    let acceptors =
        Acceptors::start(&listeners.sql, &proxy, &connections).unwrap_or_else(|e| fail(e));
    // 4.3 starts the RPC acceptor after the SQL one, and its failure fails the start with the
    // clients already accepted (v4.3.1:src/obproxy/ob_proxy.cpp:428-431).
    if line.has_rpc() {
        listeners
            .start_rpc(rpc.0, rpc.1, families, ips)
            .unwrap_or_else(|e| fail(e));
    }
    proxy.set_fds(listeners.fds);
    let prometheus = proxy
        .exporter
        .lock()
        .await
        .as_ref()
        .map_or_else(|| "failed".to_owned(), Exporter::describe);
    event!(
        "started",
        "{listeners} prometheus={prometheus} version={} line={} backend={}",
        proxy.version,
        line.name(),
        proxy.backend.as_ref().map_or("echo", |b| b.name.as_str())
    );
    ready(&proxy, listeners.inherited, knobs.no_ready);
    native::start(proxy.clone());

    let stop = wait_for_stop(&mut signals, &proxy).await;
    let stop = drain::drain(stop, acceptors, &proxy, &connections, &mut signals).await;
    finish(stop, line)
}

/// Readiness: only an inherited start tells its parent, with SIGUSR1, and only when the
/// parent is not pid 1 (v4.3.1:src/obproxy/ob_proxy.cpp:454-462; the same in
/// v3.2.3:src/obproxy/ob_proxy.cpp:371-379).
fn ready(proxy: &Proxy, inherited: bool, no_ready: bool) {
    let (notice, reason) = if !inherited {
        (parent::current(), "not-inherited")
    } else if no_ready {
        (parent::current(), "standin_no_ready")
    } else {
        let notice = parent::notify(Signal::SIGUSR1);
        let reason = if notice.sent {
            "sent"
        } else {
            "parent-is-init"
        };
        (notice, reason)
    };
    proxy.set_is_parent();
    event!(
        "ready",
        "parent={} notified={} reason={reason}",
        notice.parent,
        notice.sent
    );
}

/// Waits for what stops the process: SIGUSR1 (once), SIGTERM/SIGINT, or
/// `proxy_local_cmd = 1`. Other signals are handled as they come.
async fn wait_for_stop(signals: &mut Signals, proxy: &Proxy) -> Stop {
    loop {
        tokio::select! {
            signal = signals.next() => match signal {
                Received::Usr1 if proxy.act_on_sigusr1() => return Stop::Drain,
                Received::Usr1 => event!("signal ignored", "signal=SIGUSR1 reason=already-acted-on"),
                Received::Term | Received::Int => return Stop::Quick(signal.name()),
                other => drain::other_signal(proxy, other),
            },
            _ = proxy.local_exit.notified() => return Stop::LocalExit,
        }
    }
}

/// The exit: SIGUSR2 to the parent after a normal one, from 4.1 on, then obproxy's
/// graceful exit code 1 (v4.3.1:src/obproxy/iocore/net/ob_unix_net.cpp:85-116).
fn finish(stop: Stop, line: Line) -> i32 {
    let notice = if stop.is_normal() && line.signals_exit() {
        parent::notify(Signal::SIGUSR2)
    } else {
        parent::current()
    };
    event!(
        "exit",
        "signal={} code=1 parent={} notified={}",
        stop.name(),
        notice.parent,
        notice.sent
    );
    1
}

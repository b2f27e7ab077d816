//! Bringing one obproxy up: version, what that version line needs (RPC
//! listeners, `ip_listen_mode`, a bootstrap start), spawn, readiness (its
//! SIGUSR1 to us, then the listener check and a TCP probe as second
//! opinions; for a bootstrap start, its own listener answering). On any
//! failure the new process is killed.
use std::time::Duration;

use tokio::net::TcpStream;

use super::{Ctl, Error, bootstrap};
use crate::agent::{
    obproxy::{
        executable::{Binary, Executable},
        launch::{Handover, Plan},
        procfs, version,
    },
    operation_log::Phase,
    supervisor_protocol::ListenerInfo,
};
use crate::common::obproxy_version;

const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// Whether a TCP connect is a fair second opinion on readiness.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// Nobody else holds the listener: a connect proves the new process accepts.
    Tcp,
    /// The old process shares the listener (a hot restart): a connect could
    /// be accepted by either, proves nothing about the new one, and would add
    /// a spurious session to the old one's drain. The socket-inode check stays.
    ListenerOnly,
}

/// Where obproxy keeps its local config before 4.3, relative to its home.
pub const CONFIG_BIN: &str = "etc/obproxy_config.bin";

/// Returns the pid of a ready obproxy that is not serving yet.
pub async fn bring_up(
    ctl: &Ctl,
    binary: impl Into<Binary>,
    exit_timeout: Duration,
    probe: Probe,
) -> Result<u32, Error> {
    let cfg = &ctl.config.obproxy;
    // Opened once: its version is read from, and the process started from,
    // this very file.
    let binary = binary.into().open()?;
    ctl.progress(
        Phase::Spawning,
        format!("reading the version of {}", binary.path().display()),
    );
    // `-V` only for a binary not seen before (or changed since).
    let version = version::of(&binary, &cfg.home).await?;
    let features = obproxy_version::features(&version);
    if !features.ipv6
        && let Some(&addr) = cfg.listen.iter().find(|a| a.is_ipv6())
    {
        return Err(Error::Ipv6Unsupported { version, addr });
    }
    let has_v6 = cfg.listen.iter().any(|a| a.is_ipv6());
    let ip_listen_mode = features.ipv6.then_some(if has_v6 { 3 } else { 1 });
    let rpc = features.rpc_service && cfg.rpc_service;
    let config_bin = cfg.home.join(CONFIG_BIN);
    if features.needs_config_bin && !config_bin.exists() {
        if probe == Probe::ListenerOnly {
            return Err(Error::NeedsConfigBin {
                version,
                path: config_bin,
            });
        }
        let plan = Plan {
            exit_timeout,
            handover: Handover::Bootstrap,
            ip_listen_mode,
        };
        return bootstrap_start(ctl, binary, version, plan).await;
    }
    ctl.progress(Phase::Binding, None);
    let listeners = ctl.bind_listeners(rpc).await?;
    let plan = Plan {
        exit_timeout,
        handover: Handover::Inherit { rpc },
        ip_listen_mode,
    };
    let pid = ctl.spawn(binary, version.clone(), plan).await?;
    ctl.progress(
        Phase::WaitingReady,
        format!(
            "pid {pid} (version {version}) spawned on the held {}; waiting for its readiness signal",
            if rpc { "SQL and RPC listeners" } else { "SQL listeners" }
        ),
    );
    match tokio::time::timeout(cfg.start_timeout, ctl.wait_ready(pid)).await {
        Ok(ready) => {
            if let Err(exit) = ready? {
                return Err(Error::DiedBeforeReady { pid, exit });
            }
        }
        Err(_) => {
            ctl.kill(pid).await?;
            return Err(Error::NotReady {
                pid,
                timeout: cfg.start_timeout,
            });
        }
    }
    let addrs = if probe == Probe::Tcp {
        &listeners.probe_addrs[..]
    } else {
        &[]
    };
    // A 4.3 that was handed the RPC listeners must hold them too: one that
    // bound its own would fail the next hot restart on the port.
    let rpc_inodes = if rpc { &listeners.rpc_inodes[..] } else { &[] };
    let inodes: Vec<u64> = listeners.inodes.iter().chain(rpc_inodes).copied().collect();
    if let Err(e) = second_opinion(pid, &inodes, addrs).await {
        ctl.kill(pid).await?;
        return Err(e);
    }
    ctl.progress(Phase::WaitingReady, format!("pid {pid} is ready"));
    Ok(pid)
}

/// A start that binds the SQL port itself (see [`bootstrap`]). Listeners the
/// agent still holds (a FORCE restart, a respawn) are closed first: obproxy
/// cannot bind a port the agent listens on.
async fn bootstrap_start(
    ctl: &Ctl,
    binary: Executable,
    version: String,
    plan: Plan,
) -> Result<u32, Error> {
    ctl.close_listeners().await?;
    let addrs = ctl.bootstrap_addrs().await?;
    ctl.progress(
        Phase::Binding,
        format!(
            "obproxy {version} has no {CONFIG_BIN} yet, which an inherited start needs: this start \
             binds {addrs:?} itself (the agent's held listeners, if any, are closed first) and \
             writes it; the agent then holds the listener"
        ),
    );
    let pid = ctl.spawn(binary, version.clone(), plan).await?;
    ctl.progress(
        Phase::WaitingReady,
        format!("pid {pid} (version {version}) spawned; waiting for it to listen on {addrs:?}"),
    );
    let ListenerInfo { .. } = bootstrap::take_over_listeners(ctl, pid, &addrs).await?;
    ctl.progress(
        Phase::WaitingReady,
        format!("pid {pid} is ready; the agent holds its listener(s) from now on"),
    );
    Ok(pid)
}

async fn second_opinion(
    pid: u32,
    inodes: &[u64],
    addrs: &[std::net::SocketAddr],
) -> Result<(), Error> {
    if !procfs::holds_listeners(pid, inodes) {
        return Err(Error::NotHoldingListeners {
            pid,
            inodes: inodes.to_vec(),
        });
    }
    for &addr in addrs {
        let connect = tokio::time::timeout(PROBE_TIMEOUT, TcpStream::connect(addr)).await;
        match connect {
            Ok(Ok(_stream)) => {}
            Ok(Err(source)) => return Err(Error::ProbeFailed { pid, addr, source }),
            Err(_) => {
                return Err(Error::ProbeFailed {
                    pid,
                    addr,
                    source: std::io::ErrorKind::TimedOut.into(),
                });
            }
        }
    }
    Ok(())
}

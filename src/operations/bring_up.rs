//! Bringing one obproxy up on the held listeners: version, spawn, readiness
//! (its SIGUSR1 to us, then the listener check and a TCP probe as second
//! opinions). On any failure the new process is killed.
use std::{path::PathBuf, time::Duration};

use tokio::net::TcpStream;

use super::{Ctl, Error};
use crate::{
    obproxy::{procfs, version},
    operation::Phase,
};

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

/// Returns the pid of a ready obproxy that is not serving yet.
pub async fn bring_up(
    ctl: &Ctl,
    binary: PathBuf,
    exit_timeout: Duration,
    probe: Probe,
) -> Result<u32, Error> {
    let cfg = &ctl.config.obproxy;
    ctl.progress(Phase::Binding, None);
    let listeners = ctl.bind_listeners().await?;
    ctl.progress(
        Phase::Spawning,
        format!("reading the version of {}", binary.display()),
    );
    // `-V` only for a binary not seen before (or changed since).
    let version = version::of(&binary, &cfg.home).await?;
    let pid = ctl.spawn(binary, version.clone(), exit_timeout).await?;
    ctl.progress(
        Phase::WaitingReady,
        format!("pid {pid} (version {version}) spawned; waiting for its readiness signal"),
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
    if let Err(e) = second_opinion(pid, &listeners.inodes, addrs).await {
        ctl.kill(pid).await?;
        return Err(e);
    }
    ctl.progress(Phase::WaitingReady, format!("pid {pid} is ready"));
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

//! The first start of an obproxy before 4.3 on a home without
//! `etc/obproxy_config.bin`: an inherited start would abort without that
//! file, and only a start that was not inherited writes it. So obproxy binds
//! the SQL port itself, once; it is ready when the port answers and its
//! listening socket is in `/proc/<pid>/fd`; the agent then takes the listener
//! from it (pidfd_getfd) and holds it from then on, and every later start is
//! inherited as usual.
use std::{net::SocketAddr, time::Duration};

use tokio::net::TcpStream;

use super::{Ctl, Error};
use crate::agent::{obproxy::procfs, operation_log::Phase, supervisor_protocol::ListenerInfo};

/// How often the listener is looked for: a start takes hundreds of ms.
const LOOK_EVERY: Duration = Duration::from_millis(50);

/// Waits until `pid` listens on every one of `addrs` and answers there, then
/// makes the agent hold those listeners. On failure the process is killed.
pub async fn take_over_listeners(
    ctl: &Ctl,
    pid: u32,
    addrs: &[SocketAddr],
) -> Result<ListenerInfo, Error> {
    let timeout = ctl.config.obproxy.start_timeout;
    let deadline = tokio::time::Instant::now() + timeout;
    let exited = ctl.wait_exit(pid);
    tokio::pin!(exited);
    let mut tick = tokio::time::interval(LOOK_EVERY);
    loop {
        tokio::select! {
            exit = &mut exited => {
                return Err(Error::DiedBeforeReady { pid, exit: exit? });
            }
            _ = tick.tick() => {}
        }
        if let Some(fds) = listening(pid, addrs).await {
            ctl.progress(
                Phase::WaitingReady,
                format!(
                    "pid {pid} listens on {addrs:?}; taking the listener(s) from it (pidfd_getfd)"
                ),
            );
            return match ctl.take_listeners(pid, fds).await {
                Ok(info) => Ok(info),
                Err(e) => {
                    ctl.kill(pid).await?;
                    Err(e)
                }
            };
        }
        if tokio::time::Instant::now() >= deadline {
            ctl.kill(pid).await?;
            return Err(Error::NotListening {
                pid,
                addrs: addrs.to_vec(),
                timeout,
            });
        }
    }
}

/// The fd numbers under which `pid` holds a listener on each of `addrs`,
/// once each one also accepts a connection.
async fn listening(pid: u32, addrs: &[SocketAddr]) -> Option<Vec<i32>> {
    let mut fds = Vec::with_capacity(addrs.len());
    for &addr in addrs {
        let inode = procfs::listening_inode(addr).ok()??;
        fds.push(procfs::fd_of_socket(pid, inode)?);
        let mut probe = addr;
        if probe.ip().is_unspecified() {
            probe.set_ip(match probe {
                SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        let connect = tokio::time::timeout(LOOK_EVERY * 20, TcpStream::connect(probe)).await;
        if !matches!(connect, Ok(Ok(_))) {
            return None;
        }
    }
    Some(fds)
}

//! Finding an obproxy the agent did not start (one started by obd, obshell
//! or by hand): the one process listening on the configured SQL address(es),
//! found through `/proc/net/tcp{,6}` (socket inode) and `/proc/*/fd`, and
//! confirmed by its executable and working directory before anything is
//! taken from it. The pidfd is opened before the checks, so a pid reused in
//! between cannot slip through.
use std::{net::SocketAddr, os::fd::OwnedFd, path::PathBuf};

use super::{pidfd::Pidfd, procfs};
use crate::agent::config::ObproxyConfig;

#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("cannot read the socket tables in /proc")]
    Proc(#[source] std::io::Error),
    #[error(
        "the SQL port {port} is listened on at {found:?}, not at [obproxy] listen {wanted}: set \
         listen to the address obproxy binds (its local_bound_ip)"
    )]
    OtherAddress {
        port: u16,
        wanted: SocketAddr,
        found: Vec<SocketAddr>,
    },
    #[error("nothing listens on {addr}, which [obproxy] listen names beside {found}")]
    Partial { addr: SocketAddr, found: SocketAddr },
    #[error(
        "{addr} is held by pids {pids:?}, not by one process (a restart in progress?): start \
         the agent again once one obproxy serves"
    )]
    SeveralHolders { addr: SocketAddr, pids: Vec<u32> },
    #[error("{addr} is held by pid {pid}, but {other} by {others:?}")]
    Split {
        addr: SocketAddr,
        pid: u32,
        other: SocketAddr,
        others: Vec<u32>,
    },
    #[error("pid {pid} ended while it was examined")]
    Gone { pid: u32 },
    #[error(
        "pid {pid} runs {exe}, which is neither [obproxy] binary {binary} nor in upgrade_dir \
         {upgrade_dir}: not taken over"
    )]
    OtherExe {
        pid: u32,
        exe: String,
        binary: String,
        upgrade_dir: String,
    },
    #[error(
        "pid {pid} works in {cwd}, not in [obproxy] home {home} (its etc/ and log/ are there): \
         not taken over"
    )]
    OtherHome { pid: u32, cwd: String, home: String },
    #[error("pidfd_getfd of fd {fd} in pid {pid} failed (Linux 5.6+ and ptrace permission)")]
    GetFd {
        pid: u32,
        fd: i32,
        #[source]
        source: std::io::Error,
    },
}

/// A process found listening where the agent's obproxy should.
#[derive(Debug)]
pub struct Found {
    pub pidfd: Pidfd,
    pub start_ticks: u64,
    /// `/proc/<pid>/exe`, what it runs (also what `-V` is asked of).
    pub exe: PathBuf,
    /// Our copies of its SQL listeners, in configured order.
    pub sql: Vec<OwnedFd>,
    /// Our copies of its RPC listeners (4.3), when it holds every one of
    /// the RPC addresses; empty otherwise.
    pub rpc: Vec<OwnedFd>,
    pub sql_addrs: Vec<SocketAddr>,
    pub rpc_addrs: Vec<SocketAddr>,
}

/// Whether anything listens on the configured SQL port(s): the cheap check
/// made at every start without state, before an operation is created.
pub fn something_listens(cfg: &ObproxyConfig) -> bool {
    cfg.listen.iter().any(|a| {
        a.port() != 0
            && procfs::listeners_on(a.port())
                .is_ok_and(|found| found.iter().any(|(f, _)| f.is_ipv4() == a.is_ipv4()))
    })
}

/// Finds and confirms the process, and takes copies of its listeners. None:
/// nothing listens on the configured address.
pub fn find(cfg: &ObproxyConfig) -> Result<Option<Found>, DiscoveryError> {
    let me = std::process::id();
    let mut holders: Option<(SocketAddr, Vec<u32>)> = None;
    let mut inodes = Vec::new();
    for &addr in &cfg.listen {
        let on_port = procfs::listeners_on(addr.port()).map_err(DiscoveryError::Proc)?;
        let Some(&(_, inode)) = on_port.iter().find(|(a, _)| *a == addr) else {
            let same_family: Vec<SocketAddr> = on_port
                .iter()
                .map(|(a, _)| *a)
                .filter(|a| a.is_ipv4() == addr.is_ipv4())
                .collect();
            if !same_family.is_empty() {
                return Err(DiscoveryError::OtherAddress {
                    port: addr.port(),
                    wanted: addr,
                    found: same_family,
                });
            }
            if let Some((found, _)) = &holders {
                return Err(DiscoveryError::Partial {
                    addr,
                    found: *found,
                });
            }
            continue;
        };
        let pids: Vec<u32> = procfs::pids_holding_socket(inode)
            .map_err(DiscoveryError::Proc)?
            .into_iter()
            .filter(|&p| p != me)
            .collect();
        if pids.len() != 1 {
            return Err(DiscoveryError::SeveralHolders { addr, pids });
        }
        match &holders {
            Some((first, h)) if h != &pids => {
                return Err(DiscoveryError::Split {
                    addr: *first,
                    pid: h[0],
                    other: addr,
                    others: pids,
                });
            }
            _ => holders = Some((addr, pids)),
        }
        inodes.push((addr, inode));
    }
    let Some((_, pids)) = holders else {
        return Ok(None);
    };
    if inodes.len() != cfg.listen.len() {
        // The IPv4 one listens, an IPv6 one configured beside it does not.
        let missing = cfg
            .listen
            .iter()
            .find(|a| !inodes.iter().any(|(b, _)| b == *a))
            .copied()
            .unwrap_or(cfg.listen[0]);
        return Err(DiscoveryError::Partial {
            addr: missing,
            found: inodes[0].0,
        });
    }
    let pid = pids[0];
    let pidfd = Pidfd::open(pid).map_err(|_| DiscoveryError::Gone { pid })?;
    let start_ticks = procfs::start_ticks(pid).map_err(|_| DiscoveryError::Gone { pid })?;
    let exe = procfs::exe(pid).map_err(|_| DiscoveryError::Gone { pid })?;
    confirm_program(cfg, pid, &exe)?;
    let take = |addr_inodes: &[(SocketAddr, u64)]| -> Result<Vec<OwnedFd>, DiscoveryError> {
        addr_inodes
            .iter()
            .map(|&(_, inode)| {
                let fd = procfs::fd_of_socket(pid, inode).ok_or(DiscoveryError::Gone { pid })?;
                pidfd
                    .get_fd(fd)
                    .map_err(|source| DiscoveryError::GetFd { pid, fd, source })
            })
            .collect()
    };
    let sql = take(&inodes)?;
    // The RPC listeners (4.3 binds them itself): taken when it holds them all.
    let rpc_addrs = cfg.rpc_addrs();
    let mut rpc_inodes = Vec::new();
    for &addr in &rpc_addrs {
        if let Ok(Some(inode)) = procfs::listening_inode(addr)
            && procfs::fd_of_socket(pid, inode).is_some()
        {
            rpc_inodes.push((addr, inode));
        }
    }
    let rpc = if rpc_inodes.len() == rpc_addrs.len() {
        take(&rpc_inodes)?
    } else {
        Vec::new()
    };
    Ok(Some(Found {
        pidfd,
        start_ticks,
        exe,
        sql,
        rpc,
        sql_addrs: inodes.iter().map(|(a, _)| *a).collect(),
        rpc_addrs: rpc_inodes.iter().map(|(a, _)| *a).collect(),
    }))
}

/// The program must be the configured obproxy (or one the agent may run: in
/// `upgrade_dir`), working in the configured home.
fn confirm_program(
    cfg: &ObproxyConfig,
    pid: u32,
    exe: &std::path::Path,
) -> Result<(), DiscoveryError> {
    let canonical =
        |p: &std::path::Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let binary = canonical(&cfg.binary);
    let upgrade_dir = canonical(&cfg.upgrade_dir);
    if exe != binary && !exe.starts_with(&upgrade_dir) {
        return Err(DiscoveryError::OtherExe {
            pid,
            exe: exe.display().to_string(),
            binary: binary.display().to_string(),
            upgrade_dir: upgrade_dir.display().to_string(),
        });
    }
    let cwd =
        std::fs::read_link(format!("/proc/{pid}/cwd")).map_err(|_| DiscoveryError::Gone { pid })?;
    let home = canonical(&cfg.home);
    if cwd != home {
        return Err(DiscoveryError::OtherHome {
            pid,
            cwd: cwd.display().to_string(),
            home: home.display().to_string(),
        });
    }
    Ok(())
}

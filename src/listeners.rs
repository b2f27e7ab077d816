//! The SQL listening sockets the agent binds, holds and hands to every
//! obproxy it starts, so the port never closes while the ODP is meant to be up.
use std::{
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::{AsRawFd, OwnedFd, RawFd},
};

use socket2::{Domain, Protocol, Socket, Type};

/// Deep enough that connections arriving while no process accepts (a force
/// restart) wait instead of being refused; the kernel caps it at somaxconn.
const BACKLOG: i32 = 4096;

#[derive(Debug, thiserror::Error)]
pub enum ListenerError {
    #[error("fd {fd} is not a listening TCP socket")]
    NotAListener { fd: RawFd },
    #[error("cannot bind SQL listener {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// One held listener.
#[derive(Debug)]
pub struct Listener {
    /// What the configuration asked for (port 0 = any).
    pub configured: SocketAddr,
    /// What the kernel gave.
    pub bound: SocketAddr,
    /// The socket's inode: how a process is recognised as holding it.
    pub inode: u64,
    fd: OwnedFd,
}

impl Listener {
    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Where a local probe connects: a wildcard address is reached through
    /// loopback.
    pub fn probe_addr(&self) -> SocketAddr {
        let mut addr = self.bound;
        if addr.ip().is_unspecified() {
            addr.set_ip(match addr {
                SocketAddr::V4(_) => Ipv4Addr::LOCALHOST.into(),
                SocketAddr::V6(_) => Ipv6Addr::LOCALHOST.into(),
            });
        }
        addr
    }
}

/// The listeners of one ODP, in configured order.
#[derive(Debug, Default)]
pub struct Listeners {
    held: Vec<Listener>,
}

impl Listeners {
    /// Binds every configured address. A port of 0 takes the port `previous`
    /// had for the same address, so a stop/start keeps the port stable.
    pub fn bind(configured: &[SocketAddr], previous: &[SocketAddr]) -> Result<Self, ListenerError> {
        let mut held = Vec::with_capacity(configured.len());
        for (i, &addr) in configured.iter().enumerate() {
            let mut target = addr;
            if addr.port() == 0
                && let Some(prev) = previous.get(i)
            {
                target.set_port(prev.port());
            }
            held.push(bind_one(addr, target)?);
        }
        Ok(Self { held })
    }

    /// Listeners taken back from a running obproxy (pidfd_getfd), in
    /// configured order; each must be a listening TCP socket.
    pub fn adopt(configured: &[SocketAddr], fds: Vec<OwnedFd>) -> Result<Self, ListenerError> {
        let mut held = Vec::with_capacity(fds.len());
        for (i, fd) in fds.into_iter().enumerate() {
            let sock = socket2::SockRef::from(&fd);
            let bound = sock
                .local_addr()
                .ok()
                .and_then(|a| a.as_socket())
                .ok_or(ListenerError::NotAListener { fd: fd.as_raw_fd() })?;
            if !sock.is_listener().unwrap_or(false) {
                return Err(ListenerError::NotAListener { fd: fd.as_raw_fd() });
            }
            let inode = nix::sys::stat::fstat(&fd)
                .map_err(|e| ListenerError::Bind {
                    addr: bound,
                    source: e.into(),
                })?
                .st_ino;
            held.push(Listener {
                configured: configured.get(i).copied().unwrap_or(bound),
                bound,
                inode,
                fd,
            });
        }
        Ok(Self { held })
    }

    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Listener> {
        self.held.iter()
    }

    pub fn bound_addrs(&self) -> Vec<SocketAddr> {
        self.held.iter().map(|l| l.bound).collect()
    }

    pub fn inodes(&self) -> Vec<u64> {
        self.held.iter().map(|l| l.inode).collect()
    }

    /// The environment obproxy reads in `handle_inherited_sockets()`.
    pub fn inherit_env(&self) -> Vec<(String, String)> {
        let v4 = self.held.iter().find(|l| l.bound.is_ipv4());
        let v6 = self.held.iter().find(|l| l.bound.is_ipv6());
        let mut env = Vec::new();
        if let Some(l) = v4 {
            env.push(("OBPROXY_INHERITED_FD".into(), l.raw_fd().to_string()));
            env.push((
                "OBPROXY_INHERITED_IPV6_FD".into(),
                v6.map_or(-1, Listener::raw_fd).to_string(),
            ));
        }
        env
    }

    pub fn raw_fds(&self) -> Vec<RawFd> {
        self.held.iter().map(Listener::raw_fd).collect()
    }
}

fn bind_one(configured: SocketAddr, target: SocketAddr) -> Result<Listener, ListenerError> {
    let err = |source| ListenerError::Bind {
        addr: target,
        source,
    };
    let socket = Socket::new(
        Domain::for_address(target),
        Type::STREAM,
        Some(Protocol::TCP),
    )
    .map_err(err)?;
    // A stopped obproxy's connections in TIME_WAIT must not keep the port.
    socket.set_reuse_address(true).map_err(err)?;
    if target.is_ipv6() {
        // The IPv4 listener is separate (OBPROXY_INHERITED_FD); a dual-stack
        // socket would collide with it.
        socket.set_only_v6(true).map_err(err)?;
    }
    socket.bind(&target.into()).map_err(err)?;
    socket.listen(BACKLOG).map_err(err)?;
    let bound = socket
        .local_addr()
        .map_err(err)?
        .as_socket()
        .unwrap_or(target);
    let fd: OwnedFd = socket.into();
    let inode = nix::sys::stat::fstat(&fd)
        .map_err(|e| err(e.into()))?
        .st_ino;
    Ok(Listener {
        configured,
        bound,
        inode,
        fd,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_zero_keeps_the_port_across_rebinds() {
        let cfg = ["127.0.0.1:0".parse().unwrap()];
        let first = Listeners::bind(&cfg, &[]).unwrap();
        let port = first.bound_addrs()[0].port();
        assert_ne!(port, 0);
        let prev = first.bound_addrs();
        drop(first);
        let second = Listeners::bind(&cfg, &prev).unwrap();
        assert_eq!(second.bound_addrs()[0].port(), port);
    }

    #[test]
    fn inherit_env_names_the_ipv4_fd_and_no_ipv6() {
        let l = Listeners::bind(&["127.0.0.1:0".parse().unwrap()], &[]).unwrap();
        let env = l.inherit_env();
        assert_eq!(env[0].0, "OBPROXY_INHERITED_FD");
        assert_eq!(env[0].1, l.raw_fds()[0].to_string());
        assert_eq!(env[1], ("OBPROXY_INHERITED_IPV6_FD".into(), "-1".into()));
    }
}

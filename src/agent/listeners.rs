//! The listening sockets the agent binds, holds and hands to every obproxy it
//! starts, so the port never closes while the ODP is meant to be up: the SQL
//! listeners, and for obproxy 4.3+ the RPC listeners (which obproxy would
//! otherwise bind itself, failing while the old process holds the port).
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
    #[error("cannot bind {kind} listener {addr}")]
    Bind {
        kind: Kind,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Which service a listener is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Sql,
    Rpc,
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Kind::Sql => "SQL",
            Kind::Rpc => "RPC",
        })
    }
}

/// One held listener.
#[derive(Debug)]
pub struct Listener {
    pub kind: Kind,
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

/// The listeners of one ODP, in configured order: SQL, and RPC while an
/// obproxy that serves RPC needs them.
#[derive(Debug, Default)]
pub struct Listeners {
    held: Vec<Listener>,
    rpc: Vec<Listener>,
}

/// Binds every configured address. A port of 0 takes the port `previous`
/// had for the same address, so a stop/start keeps the port stable.
fn bind_all(
    kind: Kind,
    configured: &[SocketAddr],
    previous: &[SocketAddr],
) -> Result<Vec<Listener>, ListenerError> {
    let mut held = Vec::with_capacity(configured.len());
    for (i, &addr) in configured.iter().enumerate() {
        let mut target = addr;
        if addr.port() == 0
            && let Some(prev) = previous.get(i)
        {
            target.set_port(prev.port());
        }
        held.push(bind_one(kind, addr, target)?);
    }
    Ok(held)
}

impl Listeners {
    /// Binds the SQL listeners (see [`bind_all`] for port 0).
    pub fn bind(configured: &[SocketAddr], previous: &[SocketAddr]) -> Result<Self, ListenerError> {
        Ok(Self {
            held: bind_all(Kind::Sql, configured, previous)?,
            rpc: Vec::new(),
        })
    }

    /// Binds the RPC listeners unless they are held already.
    pub fn bind_rpc(
        &mut self,
        configured: &[SocketAddr],
        previous: &[SocketAddr],
    ) -> Result<(), ListenerError> {
        if self.rpc.is_empty() {
            self.rpc = bind_all(Kind::Rpc, configured, previous)?;
        }
        Ok(())
    }

    /// Lets the RPC listeners go (no process that serves RPC is left to
    /// hand them to; a process that inherited them keeps its own copy).
    pub fn close_rpc(&mut self) {
        self.rpc.clear();
    }

    /// Listeners taken back from a running obproxy (pidfd_getfd), in
    /// configured order; each must be a listening TCP socket.
    pub fn adopt(configured: &[SocketAddr], fds: Vec<OwnedFd>) -> Result<Self, ListenerError> {
        Ok(Self {
            held: adopt_all(Kind::Sql, configured, fds)?,
            rpc: Vec::new(),
        })
    }

    /// RPC listeners taken back from a running obproxy, as [`Listeners::adopt`].
    pub fn adopt_rpc(
        &mut self,
        configured: &[SocketAddr],
        fds: Vec<OwnedFd>,
    ) -> Result<(), ListenerError> {
        self.rpc = adopt_all(Kind::Rpc, configured, fds)?;
        Ok(())
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

    /// The RPC listeners held (empty unless an obproxy 4.3+ needs them).
    pub fn rpc(&self) -> impl Iterator<Item = &Listener> {
        self.rpc.iter()
    }

    pub fn rpc_bound_addrs(&self) -> Vec<SocketAddr> {
        self.rpc.iter().map(|l| l.bound).collect()
    }

    /// The environment obproxy reads in `handle_inherited_sockets()`; the
    /// RPC variables only `with_rpc` (obproxy before 4.3 has no RPC service).
    pub fn inherit_env(&self, with_rpc: bool) -> Vec<(String, String)> {
        let fd_of = |set: &[Listener], v6: bool| {
            set.iter()
                .find(|l| l.bound.is_ipv6() == v6)
                .map(Listener::raw_fd)
        };
        let mut env = Vec::new();
        if let Some(fd) = fd_of(&self.held, false) {
            env.push(("OBPROXY_INHERITED_FD".into(), fd.to_string()));
            env.push((
                "OBPROXY_INHERITED_IPV6_FD".into(),
                fd_of(&self.held, true).unwrap_or(-1).to_string(),
            ));
        }
        if with_rpc {
            // obproxy reads each RPC variable only when it is set.
            if let Some(fd) = fd_of(&self.rpc, false) {
                env.push(("OBPROXY_INHERITED_RPC_FD".into(), fd.to_string()));
            }
            if let Some(fd) = fd_of(&self.rpc, true) {
                env.push(("OBPROXY_INHERITED_RPC_IPV6_FD".into(), fd.to_string()));
            }
        }
        env
    }

    /// The fds to hand over (close-on-exec cleared in the child).
    pub fn raw_fds(&self, with_rpc: bool) -> Vec<RawFd> {
        let rpc = if with_rpc { &self.rpc[..] } else { &[] };
        self.held.iter().chain(rpc).map(Listener::raw_fd).collect()
    }
}

/// Sockets taken from a running obproxy, in configured order; each must be a
/// listening TCP socket.
fn adopt_all(
    kind: Kind,
    configured: &[SocketAddr],
    fds: Vec<OwnedFd>,
) -> Result<Vec<Listener>, ListenerError> {
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
                kind,
                addr: bound,
                source: e.into(),
            })?
            .st_ino;
        held.push(Listener {
            kind,
            configured: configured.get(i).copied().unwrap_or(bound),
            bound,
            inode,
            fd,
        });
    }
    Ok(held)
}

fn bind_one(
    kind: Kind,
    configured: SocketAddr,
    target: SocketAddr,
) -> Result<Listener, ListenerError> {
    let err = |source| ListenerError::Bind {
        kind,
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
        kind,
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
        let env = l.inherit_env(true);
        assert_eq!(env[0].0, "OBPROXY_INHERITED_FD");
        assert_eq!(env[0].1, l.raw_fds(true)[0].to_string());
        assert_eq!(env[1], ("OBPROXY_INHERITED_IPV6_FD".into(), "-1".into()));
        assert_eq!(env.len(), 2, "no RPC listener held: {env:?}");
    }

    #[test]
    fn rpc_listeners_are_handed_over_only_when_asked() {
        let mut l = Listeners::bind(&["127.0.0.1:0".parse().unwrap()], &[]).unwrap();
        l.bind_rpc(
            &["127.0.0.1:0".parse().unwrap(), "[::1]:0".parse().unwrap()],
            &[],
        )
        .unwrap();
        let rpc: Vec<_> = l.rpc().map(|r| r.raw_fd().to_string()).collect();
        let env = l.inherit_env(true);
        assert_eq!(env[2], ("OBPROXY_INHERITED_RPC_FD".into(), rpc[0].clone()));
        assert_eq!(
            env[3],
            ("OBPROXY_INHERITED_RPC_IPV6_FD".into(), rpc[1].clone())
        );
        assert_eq!(l.raw_fds(true).len(), 3);
        assert_eq!(l.inherit_env(false).len(), 2);
        assert_eq!(l.raw_fds(false).len(), 1);
        l.close_rpc();
        assert_eq!(l.inherit_env(true).len(), 2);
    }
}

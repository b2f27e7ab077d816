//! How each obproxy gets its listening sockets: the supervisor's side of the
//! hand-over. SQL listeners are bound (or reused) and inherited; RPC
//! listeners are bound when a 4.3+ process needs them and let go once no
//! serving process uses them; a bootstrap start binds the SQL port itself and
//! the agent takes the listener from it (pidfd_getfd) and holds it from then
//! on.
use std::{net::SocketAddr, sync::Arc};

use super::{ListenerInfo, Role, StepError, Supervisor};
use crate::{
    agent::{
        adoption,
        listeners::Listeners,
        obproxy::{
            executable::Executable,
            launch::{self, Bind, Handover, LaunchSpec, Plan, Ports},
            pidfd::Pidfd,
            procfs,
        },
        state_file::RecordedListener,
    },
    common::error_chain::describe,
};

impl Supervisor {
    /// Binds the SQL listeners unless held, and the RPC listeners too with
    /// `rpc`.
    pub(super) fn bind_listeners(&mut self, rpc: bool) -> Result<ListenerInfo, StepError> {
        if self.listeners.is_empty() {
            self.listeners = Listeners::bind(&self.config.obproxy.listen, &self.last_bound)?;
            self.last_bound = self.listeners.bound_addrs();
            self.listener_problem = None;
            tracing::info!(addrs = ?self.last_bound, inodes = ?self.listeners.inodes(), "SQL listeners bound");
            self.persist();
        }
        if rpc && self.listeners.rpc().next().is_none() {
            let addrs = self.config.obproxy.rpc_addrs();
            self.listeners.bind_rpc(&addrs, &self.last_rpc_bound)?;
            self.last_rpc_bound = self.listeners.rpc_bound_addrs();
            tracing::info!(addrs = ?self.last_rpc_bound, "RPC listeners bound");
            self.persist();
        }
        Ok(self.listener_info())
    }

    pub(super) fn listener_info(&self) -> ListenerInfo {
        ListenerInfo {
            probe_addrs: self.listeners.iter().map(|l| l.probe_addr()).collect(),
            inodes: self.listeners.inodes(),
            rpc_inodes: self.listeners.rpc().map(|l| l.inode).collect(),
        }
    }

    /// The command line, environment and fds of a new process.
    pub(super) fn launch_spec(
        &mut self,
        binary: Executable,
        plan: &Plan,
    ) -> Result<LaunchSpec, StepError> {
        let config = self.config.clone();
        let cfg = &config.obproxy;
        let (env, inherit_fds, ports) = match plan.handover {
            Handover::Inherit { rpc } => {
                if self.listeners.is_empty() {
                    return Err(StepError::NoListeners);
                }
                let rpc_port = self
                    .listeners
                    .rpc()
                    .find(|l| l.bound.is_ipv4())
                    .map(|l| l.bound.port());
                if rpc && rpc_port.is_none() {
                    return Err(StepError::NoRpcListeners);
                }
                let ports = Ports {
                    rpc_listen_port: rpc_port.filter(|_| rpc),
                    bind: None,
                };
                (
                    self.listeners.inherit_env(rpc),
                    self.listeners.raw_fds(rpc),
                    ports,
                )
            }
            Handover::Bootstrap => {
                if !self.listeners.is_empty() {
                    return Err(StepError::ListenersHeld);
                }
                let ports = Ports {
                    rpc_listen_port: None,
                    bind: Some(self.bootstrap_bind()?),
                };
                (Vec::new(), Vec::new(), ports)
            }
        };
        Ok(LaunchSpec {
            args: launch::args(cfg, plan, &ports),
            binary,
            umask: crate::security::files::inherited_umask(),
            home: cfg.home.clone(),
            env,
            inherit_fds,
            output: self.config.state.dir.join("obproxy.out"),
        })
    }

    /// Where a bootstrap start binds: the configured addresses on one port,
    /// obproxy's `listen_port`. A port of 0 takes the port the listeners had
    /// last; with none yet, the agent reserves a free one (bound with
    /// SO_REUSEADDR and not listening, so obproxy, which sets SO_REUSEADDR
    /// too, can still bind and listen on it, and nothing else can take it
    /// meanwhile) and keeps the reservation until it holds the listener.
    pub(super) fn bootstrap_bind(&mut self) -> Result<Bind, StepError> {
        let listen = self.config.obproxy.listen.clone();
        let reserved = self
            .port_reservation
            .first()
            .and_then(|s| s.local_addr().ok()?.as_socket().map(|a| a.port()));
        let mut ports: Vec<u16> = listen
            .iter()
            .enumerate()
            .map(|(i, a)| match a.port() {
                0 => self
                    .last_bound
                    .get(i)
                    .map(SocketAddr::port)
                    .or(reserved)
                    .unwrap_or(0),
                p => p,
            })
            .collect();
        if ports.iter().all(|&p| p == 0) {
            let port = self.reserve_port(&listen)?;
            ports.iter_mut().for_each(|p| *p = port);
        }
        let port = ports[0];
        if port == 0 || ports.iter().any(|&p| p != port) {
            return Err(StepError::BootstrapPort { addrs: listen });
        }
        let ip = |v6: bool| listen.iter().find(|a| a.is_ipv6() == v6).map(|a| a.ip());
        Ok(Bind {
            port,
            ipv4: ip(false).ok_or(StepError::NoListeners)?,
            ipv6: ip(true),
        })
    }

    /// One free port for every address in `listen`, held as a reservation.
    fn reserve_port(&mut self, listen: &[SocketAddr]) -> Result<u16, StepError> {
        use socket2::{Domain, Protocol, Socket, Type};
        let mut port = 0;
        let mut reservation = Vec::with_capacity(listen.len());
        for &addr in listen {
            let target = SocketAddr::new(addr.ip(), port);
            let err = |source| StepError::Reserve {
                addr: target,
                source,
            };
            let socket = Socket::new(
                Domain::for_address(target),
                Type::STREAM,
                Some(Protocol::TCP),
            )
            .map_err(err)?;
            socket.set_reuse_address(true).map_err(err)?;
            if target.is_ipv6() {
                socket.set_only_v6(true).map_err(err)?;
            }
            socket.bind(&target.into()).map_err(err)?;
            if port == 0 {
                port = socket
                    .local_addr()
                    .ok()
                    .and_then(|a| a.as_socket())
                    .map_or(0, |a| a.port());
            }
            reservation.push(socket);
        }
        tracing::info!(port, "reserved a port for obproxy's bootstrap start");
        self.port_reservation = reservation;
        Ok(port)
    }

    /// A bootstrap start listens: take its listeners (fd numbers in the
    /// process, in configured order) and hold them from now on.
    pub(super) fn take_listeners(
        &mut self,
        pid: u32,
        fds: &[i32],
    ) -> Result<ListenerInfo, StepError> {
        let Some(p) = self.processes.get_mut(pid) else {
            return Err(StepError::UnknownPid { pid });
        };
        let taken: Vec<_> = fds
            .iter()
            .map(|&fd| {
                p.pidfd
                    .get_fd(fd)
                    .map_err(|source| StepError::TakeListener { pid, fd, source })
            })
            .collect::<Result<_, _>>()?;
        self.listeners = Listeners::adopt(&self.config.obproxy.listen, taken)?;
        self.last_bound = self.listeners.bound_addrs();
        self.port_reservation.clear();
        self.listener_problem = None;
        p.ready = true;
        p.exe = crate::agent::obproxy::procfs::exe(pid).ok();
        tracing::info!(pid, addrs = ?self.last_bound, inodes = ?self.listeners.inodes(), "took the SQL listeners from the bootstrap start");
        self.persist();
        Ok(self.listener_info())
    }

    /// After a promotion or at the end of an operation: RPC listeners that
    /// neither the serving process nor one being started uses are let go, so
    /// the port is not held with nobody accepting (a downgrade below 4.3, or
    /// an upgrade to 4.3 that failed).
    pub(super) fn release_unused_rpc(&mut self) {
        let serving_rpc = self
            .processes
            .values()
            .any(|p| p.role != Role::Draining && p.rpc);
        if !serving_rpc && self.listeners.rpc().next().is_some() {
            tracing::info!(addrs = ?self.listeners.rpc_bound_addrs(), "closing the RPC listeners: the serving obproxy has no RPC service");
            self.listeners.close_rpc();
            self.persist();
        }
    }

    /// At re-adoption: the RPC listeners come back from a process that
    /// holds them. Without them a HOT restart would fail on the port while
    /// the old process holds it, so the status says so.
    pub(super) fn take_rpc_back(
        &mut self,
        holders: &[(Role, Arc<Pidfd>)],
        recorded: &[RecordedListener],
    ) {
        if recorded.is_empty() || self.listeners.is_empty() {
            return;
        }
        let inodes: Vec<u64> = recorded.iter().map(|l| l.inode).collect();
        let Some((_, pidfd)) = holders
            .iter()
            .find(|(_, p)| procfs::holds_listeners(p.pid(), &inodes))
        else {
            return;
        };
        let addrs = self.config.obproxy.rpc_addrs();
        let taken = adoption::take_listeners(pidfd, recorded)
            .map_err(|e| describe(&e))
            .and_then(|fds| {
                self.listeners
                    .adopt_rpc(&addrs, fds)
                    .map_err(|e| describe(&e))
            });
        match taken {
            Ok(()) => {
                tracing::info!(pid = pidfd.pid(), addrs = ?self.listeners.rpc_bound_addrs(), "took the RPC listeners back");
            }
            Err(e) => {
                tracing::error!(pid = pidfd.pid(), error = %e, "cannot take the RPC listeners back");
                self.notices.push(format!(
                    "the RPC listeners could not be taken back from pid {}: {e}; a HOT restart \
                     cannot hand them over while it holds them: use a FORCE restart",
                    pidfd.pid()
                ));
            }
        }
    }
}

//! The operations themselves, one file each, written as straight-line async
//! scripts. They own no state: every step is a request to the supervisor.
mod adopt_native;
mod bootstrap;
mod bring_up;
mod drain_window;
mod respawn;
mod restart_force;
mod restart_hot;
mod restart_native;
mod start;
mod stop;
mod take_over;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use nix::sys::signal::Signal;
use tokio::sync::oneshot;
use tracing::Instrument;

use crate::{
    agent::{
        admin_sql::{Admin, AdminError, RestartStrategy},
        config::AgentConfig,
        obproxy::{
            executable::ExecutableError,
            launch::Plan,
            pidfd::{Exit, Pidfd},
            version::VersionError,
        },
        operation_log::{Kind, Phase, Request},
        supervisor_protocol::{
            Drain, FactUpdate, Handle, ListenerInfo, ProcessFacts, Step, StepError,
        },
    },
    common::error_chain::describe,
};

/// How long a SIGKILLed process may take to be gone before we call it stuck.
const KILL_WAIT: Duration = Duration::from_secs(10);

/// obproxy's local config before 4.3; `--check` says when it is missing.
pub use bring_up::CONFIG_BIN;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Step(#[from] StepError),
    #[error(transparent)]
    Version(#[from] VersionError),
    #[error(transparent)]
    Binary(#[from] ExecutableError),
    #[error(transparent)]
    Discovery(#[from] crate::agent::obproxy::discovery::DiscoveryError),
    #[error("obproxy pid {pid} {exit} before it was ready")]
    DiedBeforeReady { pid: u32, exit: Exit },
    #[error("obproxy pid {pid} was not ready within start_timeout {}; killed it", humantime::format_duration(*timeout))]
    NotReady { pid: u32, timeout: Duration },
    #[error(
        "obproxy pid {pid} signalled readiness but does not hold the listeners it was handed (socket inodes {inodes:?}); killed it"
    )]
    NotHoldingListeners { pid: u32, inodes: Vec<u64> },
    #[error(
        "obproxy pid {pid} signalled readiness but {addr} does not accept connections; killed it"
    )]
    ProbeFailed {
        pid: u32,
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "obproxy pid {pid} is still alive {} after SIGKILL",
        humantime::format_duration(KILL_WAIT)
    )]
    Unkillable { pid: u32 },
    #[error("no obproxy is serving; a hot restart needs one")]
    NotServing,
    #[error(transparent)]
    Admin(#[from] AdminError),
    #[error(
        "pids {pids:?} hold the SQL listener but were not started by the agent: obproxy is \
         restarting itself (proxy_local_cmd = 2); retry once it is done (the agent then adopts \
         the new process), or use a FORCE restart"
    )]
    NativeRestartUnderway { pids: Vec<u32> },
    #[error(
        "exit_timeout {} is longer than the {} window pid {pid} was started with, and {reason}: \
         obproxy would cut its sessions at {}; configure [obproxy] sys_password_file so the agent \
         can lengthen it, or ask for at most {}",
        humantime::format_duration(*requested), humantime::format_duration(*own),
        humantime::format_duration(*own), humantime::format_duration(*own)
    )]
    WindowTooLong {
        pid: u32,
        requested: Duration,
        own: Duration,
        reason: String,
    },
    #[error(
        "pid {pid} forked no child within {} of proxy_local_cmd = 2 (obproxy acts on it only \
         while no other restart of its own is under way)",
        humantime::format_duration(*waited)
    )]
    NoNativeChild { pid: u32, waited: Duration },
    #[error(
        "native child pid {pid} {exit} before it accepted connections; pid {parent} accepts again (obproxy's own rollback)"
    )]
    NativeChildDied { pid: u32, parent: u32, exit: Exit },
    #[error(
        "native child pid {pid} did not accept connections within start_timeout {}; it was \
         killed (obproxy's hot_upgrade_rollback_timeout, set to it, or the agent shortly after), \
         and pid {parent} accepts again (obproxy's own rollback)",
        humantime::format_duration(*timeout)
    )]
    NativeNotReady {
        pid: u32,
        parent: u32,
        timeout: Duration,
    },
    #[error(
        "obproxy {version} cannot inherit the IPv6 listener {addr}: it reads \
         OBPROXY_INHERITED_IPV6_FD from 4.1 on; remove {addr} from [obproxy] listen or run obproxy 4.1 or later"
    )]
    Ipv6Unsupported {
        version: String,
        addr: std::net::SocketAddr,
    },
    #[error(
        "obproxy {version} needs {} for an inherited start and it is missing (obproxy 4.3 writes it \
         only on its own restart path), so a HOT restart onto it would abort: a FORCE restart, or \
         Stop and Start, lets it bind the port itself once and write the file", path.display()
    )]
    NeedsConfigBin {
        version: String,
        path: std::path::PathBuf,
    },
    #[error(
        "obproxy pid {pid} (a bootstrap start) did not listen on {addrs:?} within start_timeout {}; killed it",
        humantime::format_duration(*timeout)
    )]
    NotListening {
        pid: u32,
        addrs: Vec<std::net::SocketAddr>,
        timeout: Duration,
    },
    #[error("the agent is shutting down")]
    Gone,
}

/// What an operation script holds: its id, the config, and the supervisor.
pub struct Ctl {
    sup: Handle,
    config: Arc<AgentConfig>,
    id: String,
    /// The serving pid when the operation was admitted.
    serving_at_start: Option<u32>,
}

impl Ctl {
    pub fn new(sup: Handle, config: Arc<AgentConfig>, id: String, serving: Option<u32>) -> Self {
        Self {
            sup,
            config,
            id,
            serving_at_start: serving,
        }
    }

    fn progress(&self, phase: Phase, note: impl Into<Option<String>>) {
        self.sup.notify(Step::Progress {
            op: self.id.clone(),
            phase,
            note: note.into(),
        });
    }

    fn set_desired(&self, running: bool) {
        self.sup.notify(Step::SetDesired(running));
    }

    /// SQL listeners, and RPC listeners too with `rpc`.
    async fn bind_listeners(&self, rpc: bool) -> Result<ListenerInfo, Error> {
        Ok(self
            .sup
            .step(|reply| Step::BindListeners { rpc, reply })
            .await
            .ok_or(Error::Gone)??)
    }

    /// Where a bootstrap start will listen.
    async fn bootstrap_addrs(&self) -> Result<Vec<std::net::SocketAddr>, Error> {
        Ok(self
            .sup
            .step(Step::BootstrapAddrs)
            .await
            .ok_or(Error::Gone)??)
    }

    /// Holds the listeners a bootstrap start bound (its fd numbers).
    async fn take_listeners(&self, pid: u32, fds: Vec<i32>) -> Result<ListenerInfo, Error> {
        Ok(self
            .sup
            .step(|reply| Step::TakeListeners { pid, fds, reply })
            .await
            .ok_or(Error::Gone)??)
    }

    async fn close_listeners(&self) -> Result<(), Error> {
        self.sup.step(Step::CloseListeners).await.ok_or(Error::Gone)
    }

    async fn spawn(
        &self,
        binary: crate::agent::obproxy::executable::Executable,
        version: String,
        plan: Plan,
    ) -> Result<u32, Error> {
        Ok(self
            .sup
            .step(|reply| Step::Spawn {
                binary,
                version,
                plan,
                reply,
            })
            .await
            .ok_or(Error::Gone)??)
    }

    async fn wait_ready(&self, pid: u32) -> Result<Result<(), Exit>, Error> {
        self.sup
            .step(|reply| Step::WaitReady { pid, reply })
            .await
            .ok_or(Error::Gone)
    }

    async fn wait_exit(&self, pid: u32) -> Result<Exit, Error> {
        self.sup
            .step(|reply| Step::WaitExit { pid, reply })
            .await
            .ok_or(Error::Gone)
    }

    /// Signals a process the supervisor holds; one that already ended is
    /// not an error (it is what we wanted).
    async fn signal(&self, pid: u32, signal: Signal) -> Result<(), Error> {
        match self
            .sup
            .step(|reply| Step::Signal { pid, signal, reply })
            .await
            .ok_or(Error::Gone)?
        {
            Ok(()) | Err(StepError::UnknownPid { .. }) => Ok(()),
            Err(StepError::Signal { source, .. }) if source.raw_os_error() == Some(libc::ESRCH) => {
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Makes `pid` serve; returns the process that served before (now
    /// draining with `drain`, or for the caller to end without one).
    async fn promote(&self, pid: u32, drain: Option<Drain>) -> Result<Option<u32>, Error> {
        self.sup
            .step(|reply| Step::Promote { pid, drain, reply })
            .await
            .ok_or(Error::Gone)
    }

    /// A HOT restart's handover (see [`Step::Handover`]): returns the old
    /// process, now told to drain, and where its exit will be told.
    async fn hand_over(
        &self,
        pid: u32,
        old: u32,
        drain: Drain,
        note: impl FnOnce(u32) -> String + Send + 'static,
    ) -> Result<(u32, oneshot::Receiver<Exit>), Error> {
        let (exit, exited) = oneshot::channel();
        let old = self
            .sup
            .step(|reply| Step::Handover {
                op: self.id.clone(),
                pid,
                old,
                drain,
                note: Box::new(note),
                exit,
                reply,
            })
            .await
            .ok_or(Error::Gone)??;
        Ok((old, exited))
    }

    async fn facts(&self, pid: u32) -> Result<Option<ProcessFacts>, Error> {
        self.sup
            .step(|reply| Step::Facts { pid, reply })
            .await
            .ok_or(Error::Gone)
    }

    fn update(&self, pid: u32, update: FactUpdate) {
        self.sup.notify(Step::Update { pid, update });
    }

    /// Processes holding our listeners that the agent did not start.
    async fn strangers(&self) -> Result<Vec<Arc<Pidfd>>, Error> {
        self.sup.step(Step::Strangers).await.ok_or(Error::Gone)
    }

    /// A HOT restart needs to know who accepts: not while obproxy is
    /// restarting itself behind the agent's back.
    async fn refuse_strangers(&self) -> Result<(), Error> {
        let strangers = self.strangers().await?;
        if strangers.is_empty() {
            Ok(())
        } else {
            Err(Error::NativeRestartUnderway {
                pids: strangers.iter().map(|s| s.pid()).collect(),
            })
        }
    }

    /// Admin SQL to the SQL listener at `addr`, if configured.
    fn admin(&self, addr: SocketAddr) -> Option<Admin> {
        let password = self.config.obproxy.admin.password.clone()?;
        Some(Admin::new(addr, password))
    }

    /// Ends the processes that hold our listeners without being ours (the
    /// child of a native restart): `first`, then SIGKILL after `grace`.
    /// Asked again until none is left, since one may fork as we look.
    async fn end_strangers(
        &self,
        phase: Phase,
        first: Signal,
        grace: Duration,
    ) -> Result<(), Error> {
        for _ in 0..3 {
            let strangers = self.strangers().await?;
            if strangers.is_empty() {
                return Ok(());
            }
            let pids: Vec<u32> = strangers.iter().map(|s| s.pid()).collect();
            self.progress(
                phase,
                format!(
                    "pids {pids:?} hold the SQL listener but were not started by the agent \
                     (obproxy's own restart); {first} to them too"
                ),
            );
            for s in &strangers {
                let _ = s.signal(first);
            }
            let gone = futures::future::join_all(strangers.iter().map(|s| s.exited()));
            if tokio::time::timeout(grace, gone).await.is_ok() {
                continue;
            }
            for s in &strangers {
                let _ = s.signal(Signal::SIGKILL);
            }
            let gone = futures::future::join_all(strangers.iter().map(|s| s.exited()));
            if tokio::time::timeout(KILL_WAIT, gone).await.is_err() {
                let pid = pids.first().copied().unwrap_or_default();
                return Err(Error::Unkillable { pid });
            }
        }
        Ok(())
    }

    /// (serving, draining, starting) pids.
    async fn processes(&self) -> Result<(Option<u32>, Vec<u32>, Vec<u32>), Error> {
        self.sup.step(Step::Processes).await.ok_or(Error::Gone)
    }

    /// SIGKILL and wait until it is gone.
    async fn kill(&self, pid: u32) -> Result<(), Error> {
        self.signal(pid, Signal::SIGKILL).await?;
        match tokio::time::timeout(KILL_WAIT, self.wait_exit(pid)).await {
            Ok(exit) => exit.map(|_| ()),
            Err(_) => Err(Error::Unkillable { pid }),
        }
    }

    /// Ends every process: `first` (SIGTERM, or SIGKILL at once), then
    /// SIGKILL for whatever is still alive after `grace`.
    async fn end_all(&self, pids: &[u32], first: Signal, grace: Duration) -> Result<(), Error> {
        for &pid in pids {
            self.signal(pid, first).await?;
        }
        let waits = pids.iter().map(|&pid| self.wait_exit(pid));
        if tokio::time::timeout(grace, futures::future::join_all(waits))
            .await
            .is_ok()
        {
            return Ok(());
        }
        let (serving, draining, starting) = self.processes().await?;
        let alive: Vec<u32> = serving
            .into_iter()
            .chain(draining)
            .chain(starting)
            .filter(|p| pids.contains(p))
            .collect();
        if !alive.is_empty() {
            self.progress(
                Phase::Killing,
                format!(
                    "pids {alive:?} still alive after {}; SIGKILL",
                    humantime::format_duration(grace)
                ),
            );
        }
        for pid in alive {
            self.kill(pid).await?;
        }
        Ok(())
    }
}

/// Runs one operation to its end and records the outcome.
pub async fn run(ctl: Ctl, request: Request) {
    let span = tracing::info_span!("operation", op_id = %ctl.id, kind = request.kind.name());
    async move {
        let result = match request.kind {
            Kind::Start => start::run(&ctl).await,
            Kind::Stop => stop::run(&ctl).await,
            Kind::RestartForce => restart_force::run(&ctl).await,
            Kind::RestartHot => match ctl.config.obproxy.admin.restart_strategy {
                RestartStrategy::Agent => restart_hot::run(&ctl, &request).await,
                RestartStrategy::Native => restart_native::run(&ctl, &request).await,
            },
            Kind::Respawn => respawn::run(&ctl).await,
            Kind::AdoptNative => adopt_native::run(&ctl).await,
            Kind::TakeOver => take_over::run(&ctl).await,
        };
        ctl.sup.notify(Step::Finish {
            op: ctl.id.clone(),
            result: result.map_err(|e| describe(&e)),
        });
    }
    .instrument(span)
    .await
}

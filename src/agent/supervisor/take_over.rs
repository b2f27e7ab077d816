//! Taking over an obproxy the agent did not start: at start-up without a
//! state of its own, the agent looks for a process listening on the
//! configured SQL address; if there is one, a TAKE_OVER operation confirms it
//! and the supervisor makes it the serving process, holding copies of its
//! listeners (pidfd_getfd). Nothing is signalled or restarted, so no
//! connection is dropped.
use std::sync::Arc;

use super::{Process, Role, StepError, Supervisor};
use crate::agent::supervisor_protocol::Adoption;
use crate::agent::{
    listeners::Listeners,
    obproxy::procfs,
    operation_log::{Kind, Request},
};

impl Supervisor {
    /// At start-up with no state: a TAKE_OVER operation when something
    /// listens on the configured SQL port.
    pub(super) fn maybe_take_over(&mut self) {
        if !crate::agent::obproxy::discovery::something_listens(&self.config.obproxy) {
            return;
        }
        tracing::info!(addrs = ?self.config.obproxy.listen, "something listens on the SQL port and the agent has no state: taking it over");
        let request = Request {
            kind: Kind::TakeOver,
            request_id: None,
            exit_timeout: None,
            binary: None,
        };
        if let Err(e) = self.submit(request, None) {
            tracing::error!(error = %e, "cannot take over the running obproxy");
        }
    }

    pub(super) fn adopt(&mut self, adoption: Adoption) -> Result<u32, StepError> {
        let Adoption { found, version } = adoption;
        let cfg = self.config.obproxy.clone();
        let pidfd = Arc::new(found.pidfd);
        let pid = pidfd.pid();
        let mut listeners = Listeners::adopt(&cfg.listen, found.sql)?;
        let rpc = !found.rpc.is_empty();
        if rpc {
            listeners.adopt_rpc(&found.rpc_addrs, found.rpc)?;
        }
        let same_binary = std::fs::canonicalize(&cfg.binary).is_ok_and(|b| b == found.exe);
        self.processes.insert(
            pid,
            Process {
                pidfd: pidfd.clone(),
                role: Role::Serving,
                start_ticks: found.start_ticks,
                exe: Some(found.exe.clone()),
                version,
                binary: if same_binary { cfg.binary } else { found.exe },
                started_at: procfs::started_at(pid)
                    .unwrap_or_else(|_| std::time::SystemTime::now()),
                ready: true,
                drain_deadline: None,
                ending: false,
                drain_started: None,
                rpc,
                // Whatever it was started with or set to since: unknown
                // here (admin SQL sets it before a HOT restart drains it).
                exit_window: None,
                binary_info: None,
                native_parent: None,
            },
        );
        self.listeners = listeners;
        self.last_bound = self.listeners.bound_addrs();
        self.last_rpc_bound = self.listeners.rpc_bound_addrs();
        self.listener_problem = None;
        self.note_outside_holders();
        self.desired_running = true;
        self.started_count = self.started_count.max(1);
        tracing::info!(pid, sql = ?self.last_bound, rpc = ?self.last_rpc_bound, "took over a running obproxy");
        self.persist();
        self.watch_exit(pidfd);
        Ok(pid)
    }
}

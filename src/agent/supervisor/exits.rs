//! How the supervisor learns that its processes end: pidfd watchers, the
//! drain deadlines it enforces, and what an exit means (expected, the hand-over
//! of a native restart, or a crash to respawn); plus the facts operations
//! report about a process and the notes they add to the running operation.
use std::{sync::Arc, time::SystemTime};

use nix::sys::signal::Signal;

use super::{FactUpdate, Msg, Process, Role, Supervisor};
use crate::agent::obproxy::{
    pidfd::{self, Exit, Pidfd},
    procfs,
};

/// How long the count of a drain's last sessions may hold up its SIGKILL.
const COUNT_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

impl Supervisor {
    /// Reports the process's exit to the supervisor (also for processes
    /// adopted from a previous agent, which are not our children).
    pub(super) fn watch_exit(&self, pidfd: Arc<Pidfd>) {
        let pid = pidfd.pid();
        let tx = self.tx.clone();
        let shutdown = self.shutdown.clone();
        self.tracker.spawn(async move {
            tokio::select! {
                _ = shutdown.cancelled() => {}
                res = pidfd.exited() => {
                    if let Err(e) = res {
                        tracing::error!(pid, error = %e, "cannot watch obproxy for exit");
                    }
                    let exit = pidfd::reap(pid);
                    let _ = tx.send(Msg::Exited { pid, exit });
                }
            }
        });
    }

    /// SIGKILLs `pid` at `deadline` unless it has exited by then. The
    /// sessions it still holds are counted first, off the supervisor (a count
    /// walks the kernel's socket table), and come with the deadline.
    pub(super) fn schedule_drain_deadline(&self, pid: u32, deadline: SystemTime) {
        let wait = deadline
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        let tx = self.tx.clone();
        let shutdown = self.shutdown.clone();
        let listeners: Vec<std::net::SocketAddr> = self.listeners.bound_addrs();
        self.tracker.spawn(async move {
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = tokio::time::sleep(wait) => {
                    let count = tokio::task::spawn_blocking(move || {
                        procfs::client_connections(pid, &procfs::sessions_on(&listeners))
                    });
                    let open = tokio::time::timeout(COUNT_WAIT, count).await.ok().and_then(Result::ok);
                    let _ = tx.send(Msg::DrainDeadline { pid, deadline, open });
                }
            }
        });
    }

    /// The drain window of `pid` is over: SIGKILL, and the operation says
    /// how many sessions that cut.
    pub(super) fn on_drain_deadline(&mut self, pid: u32, deadline: SystemTime, open: Option<u32>) {
        // Only the draining process whose window this was: the pid may
        // belong to a later process of ours by now.
        let due = |p: &&Process| p.role == Role::Draining && p.drain_deadline == Some(deadline);
        if let Some(p) = self.processes.get(pid).filter(due) {
            tracing::warn!(pid, open, "drain window over; SIGKILL");
            let _ = p.pidfd.signal(Signal::SIGKILL);
            let open = open.map_or_else(|| "uncounted".to_string(), |n| n.to_string());
            self.note(format!(
                "drain deadline of pid {pid}: SIGKILL; its {open} client session(s) still open were cut"
            ));
        }
    }

    pub(super) fn on_exit(&mut self, pid: u32, exit: Exit) {
        let Some(p) = self.processes.remove(pid) else {
            return;
        };
        if let Some(started) = p.drain_started {
            self.metrics.drain_finished(started.elapsed());
        }
        let expected = p.ending || p.role == Role::Draining;
        if expected {
            tracing::info!(pid, %exit, role = ?p.role, "obproxy exited");
        } else if p.role == Role::Serving && self.on_native_parent_exit(pid, &p, &exit) {
            // obproxy restarted itself: its child serves on our listener.
        } else {
            tracing::warn!(pid, %exit, role = ?p.role, "obproxy exited unexpectedly");
            self.last_exit = Some(format!("pid {pid} {exit}"));
            if p.role == Role::Serving {
                self.respawn
                    .crashed(p.started_at.elapsed().unwrap_or_default());
            }
        }
        if let Some(w) = self.ready_waiters.remove(&pid) {
            let _ = w.send(Err(exit.clone()));
        }
        for w in self.exit_waiters.remove(&pid).unwrap_or_default() {
            let _ = w.send(exit.clone());
        }
        self.persist();
        self.maybe_schedule_respawn();
    }

    pub(super) fn update_facts(&mut self, pid: u32, update: FactUpdate) {
        let Some(p) = self.processes.get_mut(pid) else {
            return;
        };
        match update {
            FactUpdate::ExitWindow(w) => p.exit_window = Some(w),
            FactUpdate::Version(v) => p.version = v,
            FactUpdate::BinaryInfo(info) => p.binary_info = Some(info),
        }
        self.persist();
    }

    /// Adds a line to the running operation's events (and the log).
    pub(super) fn note(&mut self, text: String) {
        tracing::info!("{text}");
        if let Some(id) = self.log.current_id().map(str::to_string) {
            self.log.update(&id, |o| o.events.push(text));
        }
    }
}

//! What the supervisor does when an agent starts on a host where a previous
//! agent ran: re-adopt the obproxy processes it recorded (never signalling a
//! pid whose identity is not confirmed), take the listeners back from them,
//! finish what was interrupted, and reap orphans re-parented to us.
use std::{sync::Arc, time::SystemTime};

use nix::sys::signal::Signal;

use super::{Msg, Process, Role, Supervisor};
use crate::{
    agent::{
        adoption,
        listeners::Listeners,
        obproxy::{pidfd::Pidfd, procfs},
        state_file,
    },
    common::error_chain::describe,
};

impl Supervisor {
    pub(super) fn recover(&mut self) {
        let dir = self.config.state.dir.clone();
        // Generations go on rising across the agent's lives: an entry a
        // journal still holds is never taken for one written over a file
        // this agent writes (see `state_file::journal`).
        self.generation = state_file::journal::max_generation(&dir);
        let state = match state_file::load(&dir) {
            Ok(Some(state)) => state,
            Ok(None) => {
                self.maybe_take_over();
                return;
            }
            Err(e) => {
                // Keep the evidence, start with no memory rather than not at all.
                let path = state_file::path(&dir);
                let _ = std::fs::rename(&path, path.with_extension("json.corrupt"));
                tracing::error!(error = %describe(&e), "ignoring the state file");
                return;
            }
        };
        self.generation = self.generation.max(state.generation);
        self.desired_running = state.desired_running;
        self.started_count = state.started_count;
        self.last_exit = state.last_exit.clone();
        self.last_bound = if state.listeners.is_empty() {
            state.last_bound.clone()
        } else {
            state.listeners.iter().map(|l| l.bound).collect()
        };
        self.last_rpc_bound = if state.rpc_listeners.is_empty() {
            state.last_rpc_bound.clone()
        } else {
            state.rpc_listeners.iter().map(|l| l.bound).collect()
        };
        let inodes: Vec<u64> = state.listeners.iter().map(|l| l.inode).collect();
        let now = SystemTime::now();
        let mut holders: Vec<(Role, Arc<Pidfd>)> = Vec::new();
        // Recorded pids we could not confirm: never signalled, strays or not.
        let mut rejected = Vec::new();
        let place = adoption::Place::of(&self.config.obproxy);
        for rec in &state.processes {
            let pidfd = match adoption::confirm(rec, &inodes, &place) {
                Ok(pidfd) => Arc::new(pidfd),
                Err(e) => {
                    tracing::warn!(pid = rec.pid, reason = %e, "not adopting the recorded obproxy; it will not be signalled");
                    rejected.push(rec.pid);
                    continue;
                }
            };
            let pid = rec.pid;
            let mut process = Process::from_record(rec, pidfd.clone());
            match process.role {
                Role::Starting => {
                    // Its start (or hot restart) was interrupted with the
                    // agent: roll it back; the old process never stopped.
                    tracing::warn!(
                        pid,
                        "killing an obproxy whose start was interrupted when the agent stopped"
                    );
                    process.ending = true;
                    let _ = pidfd.signal(Signal::SIGKILL);
                }
                Role::Draining => match process.drain_deadline {
                    Some(deadline) if deadline > now => {
                        tracing::info!(pid, "re-adopted a draining obproxy; it keeps its deadline");
                        // The agent may have died between recording the drain
                        // and sending SIGUSR1; obproxy acts on it once, so
                        // sending it again is harmless.
                        let _ = pidfd.signal(Signal::SIGUSR1);
                        self.schedule_drain_deadline(pid, deadline);
                    }
                    _ => {
                        tracing::warn!(
                            pid,
                            "re-adopted a draining obproxy past its deadline; SIGKILL"
                        );
                        let _ = pidfd.signal(Signal::SIGKILL);
                    }
                },
                Role::Serving => tracing::info!(pid, "re-adopted the serving obproxy"),
            }
            if process.role != Role::Starting {
                holders.push((process.role, pidfd.clone()));
            }
            self.processes.insert(pid, process);
            self.watch_exit(pidfd);
        }
        if let Some(pidfd) = self.adopt_orphan_at_recovery(&state.processes, &inodes) {
            holders.push((Role::Serving, pidfd));
        }
        self.kill_strays(&inodes, &rejected);
        // The listeners come back from a process that still holds them,
        // preferably the serving one.
        holders.sort_by_key(|(role, _)| *role != Role::Serving);
        if let Some((_, pidfd)) = holders.first()
            && !state.listeners.is_empty()
        {
            let taken = adoption::take_listeners(pidfd, &state.listeners)
                .map_err(|e| describe(&e))
                .and_then(|fds| {
                    Listeners::adopt(&self.config.obproxy.listen, fds).map_err(|e| describe(&e))
                });
            match taken {
                Ok(listeners) => {
                    tracing::info!(pid = pidfd.pid(), addrs = ?listeners.bound_addrs(), "took the SQL listeners back");
                    self.listeners = listeners;
                    self.note_outside_holders();
                }
                Err(e) => {
                    tracing::error!(pid = pidfd.pid(), error = %e, "cannot take the SQL listeners back");
                    self.listener_problem = Some(format!(
                        "the SQL listeners could not be taken back from pid {}: {e}; \
                         HOT restart is refused until a FORCE restart (or Stop and Start) binds them again",
                        pidfd.pid()
                    ));
                }
            }
        }
        self.take_rpc_back(&holders, &state.rpc_listeners);
        if self.desired_running && self.processes.serving_pid().is_none() {
            tracing::warn!("obproxy should run but none serves: it died while the agent was away");
            self.respawn.found_dead();
        }
        self.persist();
        self.maybe_schedule_respawn();
    }

    /// A process holding our listener socket that we did not record is an
    /// obproxy started in the instant before the agent died: it would serve
    /// beside the adopted one, so it goes (only if it runs in the obproxy home).
    fn kill_strays(&mut self, inodes: &[u64], rejected: &[u32]) {
        if inodes.is_empty() {
            return;
        }
        let home = &self.config.obproxy.home;
        let me = std::process::id();
        for pid in procfs::pids() {
            if pid == me
                || rejected.contains(&pid)
                || self.processes.contains(pid)
                || !procfs::holds_listeners(pid, inodes)
            {
                continue;
            }
            let in_home =
                std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| &cwd == home);
            // A child of an adopted obproxy is its own restart under way
            // (adopted once its parent exits), not a spawn of ours.
            let native = procfs::parent_pid(pid).is_ok_and(|ppid| self.processes.contains(ppid));
            if !in_home || native {
                continue;
            }
            if let Ok(pidfd) = Pidfd::open(pid)
                && procfs::holds_listeners(pid, inodes)
            {
                tracing::warn!(pid, "killing an unrecorded obproxy that holds our listener");
                let _ = pidfd.signal(Signal::SIGKILL);
            }
        }
    }

    /// Orphans re-parented to us (we are the child subreaper) are reaped on
    /// SIGCHLD.
    pub(super) fn watch_children(&self) {
        let tx = self.tx.clone();
        let shutdown = self.shutdown.clone();
        let Ok(mut sigchld) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child())
        else {
            tracing::warn!("cannot watch SIGCHLD; orphans are not reaped");
            return;
        };
        self.tracker.spawn(async move {
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    r = sigchld.recv() => {
                        if r.is_none() || tx.send(Msg::Sweep).is_err() {
                            break;
                        }
                    }
                }
            }
        });
    }

    pub(super) fn reap_orphans(&mut self) {
        // A child whose spawn is not registered yet is no orphan: reaping it
        // would lose its exit and free its pid before its pidfd is open.
        if self.spawns_in_flight > 0 {
            return;
        }
        let me = std::process::id();
        // Our own short-lived children (version probes) share our process
        // group and are reaped by whoever started them; obproxy processes are
        // reaped by their exit watchers.
        let pgid = nix::unistd::getpgrp().as_raw() as u32;
        for pid in procfs::zombie_children(me, pgid) {
            if self.processes.contains(pid) {
                continue;
            }
            let exit = crate::agent::obproxy::pidfd::reap(pid);
            tracing::info!(pid, %exit, "reaped an orphan");
        }
    }
}

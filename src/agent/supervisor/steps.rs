//! The running operation's steps, served by the supervisor: each
//! [`Step`] is answered from the process table and the listeners it owns,
//! or handed to the method that does the work.
use std::time::SystemTime;

use nix::sys::signal::Signal;

use super::{Role, Supervisor};
use crate::agent::{
    listeners::Listeners,
    obproxy::pidfd::Exit,
    operation_log::{self, Phase},
    supervisor_protocol::{ProcessFacts, Step, StepError},
};

impl Supervisor {
    pub(super) fn on_step(&mut self, step: Step) {
        match step {
            Step::SetDesired(running) => {
                // Usually already written when the operation was admitted.
                let changed = self.desired_running != running;
                self.desired_running = running;
                if !running {
                    self.respawn.settled();
                }
                if changed {
                    self.persist();
                }
            }
            Step::BindListeners { rpc, reply } => {
                let _ = reply.send(self.bind_listeners(rpc));
            }
            Step::BootstrapAddrs(reply) => {
                let _ = reply.send(self.bootstrap_bind().map(|b| b.addrs()));
            }
            Step::TakeListeners { pid, fds, reply } => {
                let _ = reply.send(self.take_listeners(pid, &fds));
            }
            Step::CloseListeners(reply) => {
                if !self.listeners.is_empty() {
                    tracing::info!(addrs = ?self.listeners.bound_addrs(), "closing SQL listeners");
                }
                self.listeners = Listeners::default();
                self.port_reservation.clear();
                self.listener_problem = None;
                self.persist();
                let _ = reply.send(());
            }
            Step::Spawn {
                binary,
                version,
                plan,
                reply,
            } => self.spawn(binary, version, plan, reply),
            Step::WaitReady { pid, reply } => match self.processes.get(pid) {
                Some(p) if p.ready => {
                    let _ = reply.send(Ok(()));
                }
                Some(_) => {
                    self.ready_waiters.insert(pid, reply);
                }
                None => {
                    let _ = reply.send(Err(Exit::Unknown));
                }
            },
            Step::WaitExit { pid, reply } => {
                if self.processes.contains(pid) {
                    self.exit_waiters.entry(pid).or_default().push(reply);
                } else {
                    let _ = reply.send(Exit::Unknown);
                }
            }
            Step::Signal { pid, signal, reply } => {
                let _ = reply.send(self.signal_process(pid, signal));
            }
            Step::Promote { pid, drain, reply } => {
                let (previous, file_owed) = self.promote(pid, drain);
                let _ = reply.send(previous);
                if file_owed {
                    self.persist();
                }
            }
            Step::Handover {
                op,
                pid,
                old,
                drain,
                note,
                exit,
                reply,
            } => {
                let (previous, file_owed) = self.promote(pid, Some(drain));
                let old = previous.unwrap_or(old);
                if self.processes.contains(old) {
                    self.exit_waiters.entry(old).or_default().push(exit);
                } else {
                    let _ = exit.send(Exit::Unknown);
                }
                self.progress(&op, Phase::Draining, Some(note(old)));
                let told = match self.signal_process(old, Signal::SIGUSR1) {
                    Err(StepError::UnknownPid { .. }) => Ok(()),
                    Err(StepError::Signal { source, .. })
                        if source.raw_os_error() == Some(libc::ESRCH) =>
                    {
                        Ok(())
                    }
                    other => other,
                };
                let _ = reply.send(told.map(|()| old));
                // The journal holds the promotion; the whole file follows,
                // with the old process's exit if that comes soon.
                if file_owed {
                    self.schedule_compaction();
                }
            }
            Step::Facts { pid, reply } => {
                let _ = reply.send(self.processes.get(pid).map(|p| ProcessFacts {
                    exit_window: p.exit_window,
                    binary: p.binary.clone(),
                    version: p.version.clone(),
                }));
            }
            Step::Update { pid, update } => self.update_facts(pid, update),
            Step::Strangers(reply) => {
                let _ = reply.send(self.strangers());
            }
            Step::AdoptChild {
                parent,
                child,
                version,
                exit_window,
                reply,
            } => {
                let _ = reply.send(self.register_native_child(parent, child, version, exit_window));
            }
            Step::Adopt { adoption, reply } => {
                let _ = reply.send(self.adopt(*adoption));
            }
            Step::Processes(reply) => {
                let by = |role| self.processes.with_role(role).collect::<Vec<_>>();
                let _ = reply.send((
                    self.processes.serving_pid(),
                    by(Role::Draining),
                    by(Role::Starting),
                ));
            }
            Step::Progress { op, phase, note } => self.progress(&op, phase, note),
            Step::Finish { op, result } => {
                match &result {
                    Ok(pid) => tracing::info!(op_id = %op, pid = ?pid, "operation succeeded"),
                    Err(e) => tracing::warn!(op_id = %op, error = %e, "operation failed"),
                }
                let serving = self.processes.serving_pid();
                // Before the finished operation is published: a caller told
                // it failed (a 4.3 that never served) must not then see the
                // RPC listeners still held.
                self.release_unused_rpc();
                // What the operation leaves: the state once nothing runs.
                let left = self.settled_state();
                let metrics = self.metrics.clone();
                self.update_operation(&op, |o| {
                    metrics.operation_finished(o.kind, result.is_ok());
                    o.finished_at = Some(SystemTime::now());
                    o.phase = Phase::Done;
                    o.proxy_state = Some(left);
                    match result {
                        Ok(pid) => {
                            o.state = operation_log::State::Succeeded;
                            o.pid = pid;
                        }
                        Err(e) => {
                            o.state = operation_log::State::Failed;
                            o.pid = serving;
                            o.error = Some(e);
                        }
                    }
                });
                self.maybe_schedule_respawn();
                self.ask_binary_info();
            }
        }
    }
}

impl Supervisor {
    fn progress(&mut self, op: &str, phase: Phase, note: Option<String>) {
        if let Some(n) = &note {
            tracing::info!(op_id = %op, ?phase, "{n}");
        }
        self.update_operation(op, |o| {
            o.phase = phase;
            o.events.extend(note);
        });
    }

    fn signal_process(&mut self, pid: u32, signal: Signal) -> Result<(), StepError> {
        match self.processes.get_mut(pid) {
            None => Err(StepError::UnknownPid { pid }),
            Some(p) => {
                if matches!(signal, Signal::SIGTERM | Signal::SIGKILL | Signal::SIGINT) {
                    p.ending = true;
                }
                p.pidfd.signal(signal).map_err(|source| StepError::Signal {
                    pid,
                    signal,
                    source,
                })
            }
        }
    }
}

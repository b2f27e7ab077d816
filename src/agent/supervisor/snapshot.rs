//! The status the supervisor publishes after every change: state, processes,
//! listeners, counters and the operation in progress. Callers read the latest
//! one without waiting for the supervisor, so no number of them can hold up
//! supervision. It is published before any caller is told of a change (an
//! answer, an operation's update), so a status read after hearing of one
//! already shows it.
use std::sync::Arc;

use super::{ProxyState, Status, Supervisor};
use crate::agent::operation_log::{Kind, Operation};

/// What is published before the supervisor has recovered anything.
pub(super) fn initial() -> Status {
    Status {
        state: ProxyState::Stopped,
        desired_running: false,
        serving: None,
        draining: Vec::new(),
        listeners: Vec::new(),
        restart_count: 0,
        operation: None,
        last_exit: None,
        notices: Vec::new(),
    }
}

impl Supervisor {
    /// The state, from the operation running (if any) and the processes.
    pub(super) fn state(&self) -> ProxyState {
        match self.log.current() {
            Some(op) => self.state_during(&op),
            None => self.settled_state(),
        }
    }

    /// The state once no operation runs.
    pub(super) fn settled_state(&self) -> ProxyState {
        self.processes.settled_state(self.desired_running)
    }

    fn state_during(&self, op: &Operation) -> ProxyState {
        match op.kind {
            Kind::Start => ProxyState::Starting,
            Kind::Stop => ProxyState::Stopping,
            Kind::RestartForce => ProxyState::Restarting,
            // Down while it should run: the respawn is the cure, not the state.
            Kind::Respawn => ProxyState::Unavailable,
            Kind::TakeOver => ProxyState::Starting,
            // The child of a native restart serves already.
            Kind::AdoptNative => ProxyState::Running,
            Kind::RestartHot => {
                if self.processes.upgrading(&self.config.obproxy.binary) {
                    ProxyState::Upgrading
                } else {
                    ProxyState::Restarting
                }
            }
        }
    }

    /// The status as it is, or as it will be once `pending` (an update of
    /// the current operation about to be announced) is in the log.
    fn snapshot(&self, pending: Option<&Operation>) -> Status {
        let serving = self.processes.serving_info();
        let draining = self.processes.draining_info();
        let operation = match pending {
            Some(op) if op.is_finished() => None,
            Some(op) => Some(op.clone()),
            None => self.log.current(),
        };
        let state = match &operation {
            Some(op) => self.state_during(op),
            None => self.settled_state(),
        };
        Status {
            state,
            desired_running: self.desired_running,
            serving,
            draining,
            listeners: self
                .listeners
                .iter()
                .chain(self.listeners.rpc())
                .map(|l| (l.kind, l.bound, l.inode))
                .collect(),
            restart_count: self.started_count.saturating_sub(1),
            operation,
            last_exit: self.last_exit.clone(),
            notices: self
                .notices
                .iter()
                .cloned()
                .chain(self.listener_problem.clone())
                .chain(self.unrecorded_notice())
                .chain(self.admin_notices())
                .collect(),
        }
    }

    /// Publishes the status if it changed (readers wake only then).
    pub(super) fn publish(&mut self, pending: Option<&Operation>) {
        let next = self.snapshot(pending);
        self.status_tx.send_if_modified(|current| {
            if **current == next {
                return false;
            }
            *current = Arc::new(next);
            true
        });
    }

    /// Changes the current operation: the status showing the change is
    /// published first, then the operation's watchers are woken.
    pub(super) fn update_operation(&mut self, id: &str, change: impl FnOnce(&mut Operation)) {
        let Some(mut op) = self.log.get(id) else {
            return;
        };
        change(&mut op);
        if self.log.current_id() == Some(id) {
            self.publish(Some(&op));
        }
        self.log.update(id, |o| *o = op);
    }
}

//! The task manager's side of leadership: a term begins (every unfinished
//! task resumed) and ends (every runner stopped, nothing more written), the
//! leader's poll for tasks accepted by other coordinators, and who leads.
use std::sync::Arc;

use super::{TaskError, Tasks, Term};
use crate::coordinator::store::StoreError;

/// GetLeader's answer.
pub struct LeaderView {
    pub lease: Option<crate::coordinator::store::lease::Leader>,
    pub me: String,
    pub leading: bool,
}

impl Tasks {
    /// Names this coordinator (the lease holder's name).
    pub fn set_name(&self, name: String) {
        let _ = self.name.set(name);
    }

    /// Who leads, as the metadb's lease row says (None with SQLite: this
    /// coordinator).
    pub async fn leader(&self) -> Result<LeaderView, TaskError> {
        let lease = match self.store.metadb() {
            Some(db) => Some(db.leader().await?),
            None => None,
        };
        Ok(LeaderView {
            lease,
            me: self.name.get().cloned().unwrap_or_default(),
            leading: self.leading(),
        })
    }

    pub(super) fn term(&self) -> Option<Term> {
        self.term.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Whether this coordinator runs tasks now.
    pub fn leading(&self) -> bool {
        self.term().is_some()
    }

    /// Starts running tasks: every unfinished one is resumed.
    pub async fn lead(self: &Arc<Self>, term: Term) -> Result<usize, StoreError> {
        *self.term.lock().unwrap_or_else(|e| e.into_inner()) = Some(term);
        self.resume_all().await
    }

    /// Stops running tasks at once (the lease is lost): every runner stops
    /// where it is, writing nothing more; the next leader resumes them.
    pub fn step_down(&self) {
        if let Some(term) = self.term.lock().unwrap_or_else(|e| e.into_inner()).take() {
            term.stop.cancel();
        }
    }

    /// The leader's poll: tasks created, retried or cancelled through
    /// another coordinator.
    pub async fn pick_up(self: &Arc<Self>) -> Result<(), StoreError> {
        if !self.leading() {
            return Ok(());
        }
        for task in self.store.unfinished().await? {
            let cancel = task.cancel_requested;
            let id = task.id.clone();
            if !self.launch(task) && cancel {
                if let Some(live) = self.live().get(&id) {
                    live.cancel.cancel();
                }
            }
        }
        Ok(())
    }
}

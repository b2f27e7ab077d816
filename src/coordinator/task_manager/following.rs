//! What a coordinator that does not run a task still does for it: watch it
//! (the metadb read while anyone watches) and cancel it (a flag in its row
//! that the leader's runner honours).
use std::sync::Arc;

use super::{OnAdmit, TaskError, Tasks, WATCH_BUFFER};
use crate::{
    common::change_feed::{Feed, Watcher},
    coordinator::task::{State, Task},
};

impl Tasks {
    /// WatchTask of a task another coordinator (the leader) runs: the
    /// metadb read every [`super::POLL`] while anyone watches, each
    /// change passed on; it ends with the task.
    pub(super) fn follow(&self, task: Task) -> Watcher<Task> {
        let feed = Arc::new(Feed::new(task.clone(), WATCH_BUFFER));
        let watcher = feed.watch();
        let store = self.store.clone();
        let shutdown = self.shutdown.clone();
        self.tracker.spawn(async move {
            let mut seen = serde_json::to_string(&task).unwrap_or_default();
            while feed.watchers() > 0 {
                tokio::select! {
                    _ = tokio::time::sleep(super::POLL) => {}
                    _ = shutdown.cancelled() => break,
                }
                let Ok(Some(now)) = store.get(&task.id).await else {
                    continue;
                };
                let text = serde_json::to_string(&now).unwrap_or_default();
                let finished = now.is_finished();
                if text != seen {
                    seen = text;
                    feed.replace(now);
                }
                if finished {
                    break;
                }
            }
            feed.close();
        });
        watcher
    }

    /// CancelTask for a task no runner here has: run by another coordinator
    /// (the leader), or about to be; the flag in the store is what its
    /// runner honours.
    pub(super) async fn cancel_elsewhere(
        &self,
        id: &str,
        admit: OnAdmit,
    ) -> Result<Task, TaskError> {
        let task = self.get(id).await?;
        if task.state == State::Running {
            admit(id, false).map_err(TaskError::NotRecorded)?;
            if self.store.request_cancel(id).await? {
                tracing::info!(task_id = %id, "task cancel recorded for the leader");
                let mut task = task;
                task.cancel_requested = true;
                return Ok(task);
            }
        }
        let task = self.get(id).await?;
        Err(TaskError::Finished {
            id: task.id,
            state: task.state,
        })
    }
}

//! Which coordinator runs tasks when several share a metadb: the holder of
//! the lease row ([`crate::coordinator::store::lease`]). A follower tries
//! to take it while it is expired; the leader renews it every third of its
//! length, picks up the tasks other coordinators accepted, and stops every
//! runner at once when it cannot renew before the lease would expire (its
//! local deadline counts from when the last renewal was *sent*, so it is
//! never later than the metadb's). A leader paused past that point is
//! stopped by the fence on its writes instead.
use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use tokio_util::sync::CancellationToken;

use super::{
    metrics::CoordinatorMetrics,
    store::{Fence, Store},
    task_manager::{POLL, Tasks, Term},
};
use crate::common::error_chain::describe;

pub struct Leadership {
    pub store: Arc<Store>,
    pub tasks: Arc<Tasks>,
    pub metrics: Arc<CoordinatorMetrics>,
    pub holder: String,
    pub lease: Duration,
    pub shutdown: CancellationToken,
}

impl Leadership {
    /// Follows, leads, follows again, until the coordinator stops.
    pub async fn run(self) {
        let Some(db) = self.store.metadb() else {
            return;
        };
        // A follower asks as often as a leader renews: a free lease is taken
        // within a third of its length.
        let retry = (self.lease / 3).min(Duration::from_secs(1));
        loop {
            let sent = Instant::now();
            let taken = match db.acquire(&self.holder, self.lease).await {
                Ok(taken) => taken,
                Err(e) => {
                    tracing::warn!(error = %describe(&e), "cannot reach the metadb for the lease");
                    None
                }
            };
            let Some(fence) = taken else {
                tokio::select! {
                    _ = tokio::time::sleep(retry) => continue,
                    _ = self.shutdown.cancelled() => return,
                }
            };
            self.lead(fence, sent).await;
            if self.shutdown.is_cancelled() {
                // Handed over at once rather than after it expires. Runners
                // have stopped with the term.
                if let Err(e) = db.release(fence).await {
                    tracing::warn!(error = %describe(&e), "cannot release the lease");
                }
                return;
            }
        }
    }

    /// One term: from taking the lease to losing it (or stopping).
    async fn lead(&self, fence: Fence, sent: Instant) {
        let Some(db) = self.store.metadb() else {
            return;
        };
        let stop = self.shutdown.child_token();
        let mut deadline = sent + self.lease;
        let renew_every = self.lease / 3;
        let mut next_renew = sent + renew_every;
        self.metrics.lease(true);
        tracing::info!(holder = %self.holder, token = fence.0, "lease acquired: leading");
        let term = Term {
            fence: Some(fence),
            stop: stop.clone(),
        };
        match tokio::time::timeout_at(deadline.into(), self.tasks.lead(term)).await {
            Ok(Ok(n)) => tracing::info!(resumed = n, "tasks resumed from the metadb"),
            Ok(Err(e)) => {
                tracing::warn!(error = %describe(&e), "cannot read the tasks to resume; polling")
            }
            Err(_) => tracing::warn!("reading the tasks to resume outlasted the lease"),
        }
        let mut poll = tokio::time::interval(POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let why = loop {
            tokio::select! {
                _ = stop.cancelled() => break if self.shutdown.is_cancelled() {
                    "the coordinator is stopping"
                } else {
                    "a write was fenced: another coordinator holds the lease"
                },
                _ = tokio::time::sleep_until(deadline.into()) => {
                    break "the lease was not renewed in time";
                }
                _ = tokio::time::sleep_until(next_renew.into()) => {
                    let sent = Instant::now();
                    let renewed = tokio::time::timeout_at(deadline.into(), db.renew(fence, self.lease)).await;
                    match renewed {
                        Ok(Ok(true)) => {
                            deadline = sent + self.lease;
                            next_renew = sent + renew_every;
                        }
                        Ok(Ok(false)) => break "the lease is no longer ours",
                        Ok(Err(e)) => {
                            tracing::warn!(error = %describe(&e), "cannot renew the lease; retrying");
                            next_renew = Instant::now() + POLL.min(renew_every);
                        }
                        Err(_) => break "the lease was not renewed in time",
                    }
                }
                _ = poll.tick() => {
                    let picked = tokio::time::timeout_at(deadline.into(), self.tasks.pick_up()).await;
                    if let Ok(Err(e)) = picked {
                        tracing::warn!(error = %describe(&e), "cannot poll the metadb for tasks");
                    }
                }
            }
        };
        self.tasks.step_down();
        self.metrics.lease(false);
        tracing::warn!(holder = %self.holder, token = fence.0, reason = why, "lease lost: not leading");
    }
}

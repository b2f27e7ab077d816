//! The coordinator's live view of its agents: one `WatchStatus` stream per
//! agent, opened at start and kept open, holding each agent's latest status
//! and when it came. The agents push every change and a heartbeat, so a
//! cluster status is read from memory, each entry with its age, and costs the
//! same whatever the agents' own status costs: 10,000 ODPs answer in tens of
//! milliseconds where asking each would take seconds.
//!
//! An entry that is not live (the stream is down or silent past its
//! heartbeat, or an older agent has no `WatchStatus`) is asked with
//! `GetStatus` and its deadline instead, as before: an unreachable agent is
//! still an answer, never a hang.
use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::sync::{Notify, watch};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use super::agent_pool::{AgentError, AgentPool};
use crate::proto::agent as pb;

/// The longest silence asked of each agent's stream.
pub const HEARTBEAT: Duration = Duration::from_secs(10);
const FIRST_RETRY: Duration = Duration::from_secs(1);
const MAX_RETRY: Duration = Duration::from_secs(30);

/// An agent's status as last heard, and how long ago.
#[derive(Debug, Clone)]
pub struct Seen {
    pub status: pb::ProxyStatus,
    pub age: Duration,
}

#[derive(Debug, Clone)]
enum View {
    /// No answer yet since the coordinator started.
    Connecting,
    Live {
        status: Box<pb::ProxyStatus>,
        at: Instant,
    },
    /// The stream is down; it is being opened again.
    Down,
    /// The agent has no WatchStatus: it is asked each time.
    Unsupported,
}

struct Entry {
    view: watch::Sender<View>,
    /// Wakes the stream's task to reconnect at once (an agent that answered
    /// a GetStatus is back).
    retry: Notify,
}

pub struct LiveStatus {
    pool: Arc<AgentPool>,
    entries: HashMap<String, Arc<Entry>>,
    /// How long a status may take: also how long a first answer is waited for.
    status_timeout: Duration,
}

impl LiveStatus {
    /// Opens a stream to every agent in `agents` (they stay open until
    /// `shutdown`).
    pub fn start(
        pool: Arc<AgentPool>,
        agents: impl IntoIterator<Item = String>,
        status_timeout: Duration,
        tracker: &TaskTracker,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        let mut entries = HashMap::new();
        for agent in agents {
            if entries.contains_key(&agent) {
                continue;
            }
            let entry = Arc::new(Entry {
                view: watch::channel(View::Connecting).0,
                retry: Notify::new(),
            });
            entries.insert(agent.clone(), entry.clone());
            let pool = pool.clone();
            let shutdown = shutdown.clone();
            tracker.spawn(async move {
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    _ = follow(&pool, &agent, &entry, status_timeout) => {}
                }
            });
        }
        Arc::new(Self {
            pool,
            entries,
            status_timeout,
        })
    }

    /// Every agent's status, live where the stream is, asked (in parallel,
    /// with the deadline) where it is not.
    pub async fn statuses(&self, agents: &[String]) -> Vec<Result<Seen, AgentError>> {
        futures::future::join_all(agents.iter().map(|a| self.status(a))).await
    }

    async fn status(&self, agent: &str) -> Result<Seen, AgentError> {
        let Some(entry) = self.entries.get(agent) else {
            return self.ask(agent).await;
        };
        let mut view = entry.view.subscribe();
        // Just started: the first answer is on its way.
        let first = view.wait_for(|v| !matches!(v, View::Connecting));
        let _ = tokio::time::timeout(self.status_timeout, first).await;
        let current = view.borrow().clone();
        match current {
            View::Live { status, at } if at.elapsed() <= HEARTBEAT + self.status_timeout => {
                Ok(Seen {
                    status: *status,
                    age: at.elapsed(),
                })
            }
            View::Connecting => Err(AgentError::Timeout {
                agent: agent.to_string(),
                timeout: self.status_timeout,
            }),
            View::Live { .. } | View::Down | View::Unsupported => {
                let asked = self.ask(agent).await;
                if asked.is_ok() {
                    entry.retry.notify_one();
                }
                asked
            }
        }
    }

    async fn ask(&self, agent: &str) -> Result<Seen, AgentError> {
        self.pool.status(agent).await.map(|status| Seen {
            status,
            age: Duration::ZERO,
        })
    }
}

/// Keeps `agent`'s stream open, recording every status; reconnects with
/// backoff (or at once when told), gives up only on an agent without
/// WatchStatus.
async fn follow(pool: &AgentPool, agent: &str, entry: &Entry, status_timeout: Duration) {
    let mut retry = FIRST_RETRY;
    loop {
        let mut heard = false;
        // Silent past the heartbeat: the agent or the path is gone.
        let silence = HEARTBEAT + status_timeout;
        let ended = pool
            .streams()
            .follow(agent, HEARTBEAT, silence, |status| {
                heard = true;
                entry.view.send_replace(View::Live {
                    status: Box::new(status),
                    at: Instant::now(),
                });
            })
            .await;
        match ended {
            Err(e) if e.is_unimplemented() => {
                tracing::info!(odp = %agent, "the agent has no WatchStatus; asking it each time");
                entry.view.send_replace(View::Unsupported);
                return;
            }
            Err(e) => tracing::debug!(odp = %agent, error = %e, "status stream lost"),
            Ok(()) => tracing::debug!(odp = %agent, "status stream ended"),
        }
        entry.view.send_replace(View::Down);
        if heard {
            retry = FIRST_RETRY;
        }
        tokio::select! {
            _ = tokio::time::sleep(retry) => {}
            _ = entry.retry.notified() => {}
        }
        retry = (retry * 2).min(MAX_RETRY);
    }
}

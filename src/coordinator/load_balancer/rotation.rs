//! One ODP's steps in the balancer around its operation: drain the server
//! and wait for its sessions to end (or `drain_timeout`), then, once the ODP
//! is what the task wants, set it ready again (maint after Stop All). What
//! was done is a [`BalancerNote`] kept with the subtask in the store.
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::{LoadBalancer, ServerState};
use crate::common::error_chain::describe;

/// How often a draining server's sessions are asked for.
const POLL: Duration = Duration::from_millis(250);
/// Lines of the balancer's answers a subtask keeps (the latest).
const MAX_LOG: usize = 24;

/// What a subtask did with its ODP's server, kept with the subtask.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalancerNote {
    pub server: String,
    /// What this task last set the server to. Drain is written to the store
    /// before the drain is sent: a coordinator restarted meanwhile knows the
    /// server may be out of rotation, and its resumed task puts it back (or
    /// leaves it, as the task ends).
    pub state: Option<ServerState>,
    /// How the drain before the operation ended, or why there was none.
    pub drain: Option<String>,
    /// The balancer's answers and commands' output, oldest first.
    pub log: Vec<String>,
}

/// What a task does with the balancer around each ODP's operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// Drain the server and wait for its sessions before the operation.
    pub drain: bool,
    /// What the server is set to once the ODP is what the task wants.
    pub end: ServerState,
    /// Why a plan drains nothing, for the subtask.
    pub no_drain: &'static str,
}

impl Plan {
    /// Written with the subtask before its batch starts.
    pub fn intend(&self, lb: &LoadBalancer, agent: &str, note: &mut Option<BalancerNote>) {
        let note = note.get_or_insert_with(|| BalancerNote {
            server: lb.server(agent).to_string(),
            ..BalancerNote::default()
        });
        if self.drain {
            note.state = Some(ServerState::Drain);
        }
    }
}

/// One ODP's server through one subtask.
pub struct Rotation<'a> {
    lb: &'a LoadBalancer,
    agent: &'a str,
    plan: Plan,
    note: BalancerNote,
    /// Every change of the note, for the runner to store and show.
    on_note: &'a (dyn Fn(BalancerNote) + Send + Sync),
}

impl<'a> Rotation<'a> {
    pub fn new(
        lb: &'a LoadBalancer,
        agent: &'a str,
        plan: Plan,
        note: Option<BalancerNote>,
        on_note: &'a (dyn Fn(BalancerNote) + Send + Sync),
    ) -> Self {
        let note = note.unwrap_or_else(|| BalancerNote {
            server: lb.server(agent).to_string(),
            ..BalancerNote::default()
        });
        Self {
            lb,
            agent,
            plan,
            note,
            on_note,
        }
    }

    fn log(&mut self, line: String) {
        self.note.log.push(line);
        let excess = self.note.log.len().saturating_sub(MAX_LOG);
        self.note.log.drain(..excess);
    }

    fn publish(&self) {
        (self.on_note)(self.note.clone());
    }

    /// Before the ODP is touched: drains the server and waits for its
    /// sessions, or (no drain planned) proves the balancer answers. An error
    /// fails the subtask with the ODP untouched; the server is set ready
    /// again if it may have been drained. `under_way`: a resumed subtask
    /// whose operation was already sent, so its drain is behind it.
    pub async fn take_out(&mut self, under_way: bool) -> Result<(), String> {
        if under_way && self.note.drain.is_some() {
            return Ok(());
        }
        if !self.plan.drain {
            let (n, said) = self.lb.sessions(self.agent).await.map_err(|e| {
                format!(
                    "the load balancer cannot be asked about server {} (the ODP was not touched): {}",
                    self.note.server,
                    describe(&e)
                )
            })?;
            self.log(said);
            self.note.drain = Some(format!(
                "not drained ({n} sessions): {}",
                self.plan.no_drain
            ));
            self.publish();
            return Ok(());
        }
        if let Err(e) = self.drain_and_wait().await {
            let why = format!(
                "the load balancer could not take server {} out (the ODP was not touched): {}",
                self.note.server,
                describe(&e)
            );
            self.log(why.clone());
            self.put_back_after_failure().await;
            self.publish();
            return Err(why);
        }
        Ok(())
    }

    async fn drain_and_wait(&mut self) -> Result<(), super::LbError> {
        let said = self.lb.set(self.agent, ServerState::Drain).await?;
        self.log(said);
        self.note.state = Some(ServerState::Drain);
        self.publish();
        let timeout = self.lb.config.drain_timeout;
        let began = Instant::now();
        let mut last = None;
        loop {
            let (n, said) = self.lb.sessions(self.agent).await?;
            let waited = began.elapsed();
            if n == 0 || waited >= timeout {
                self.log(said);
                self.note.drain = Some(if n == 0 {
                    format!("no sessions after {:.1}s", waited.as_secs_f64())
                } else {
                    format!(
                        "drain_timeout ({}) passed with {n} session(s) still open",
                        humantime::format_duration(timeout)
                    )
                });
                tracing::info!(odp = %self.agent, server = %self.note.server, drain = ?self.note.drain, "drained");
                self.publish();
                return Ok(());
            }
            if last != Some(n) {
                // Shown while it waits: how many sessions are left.
                self.note.drain = Some(format!("waiting for {n} session(s)"));
                if last.is_none() {
                    self.log(said);
                }
                self.publish();
                last = Some(n);
            }
            tokio::time::sleep(POLL.min(timeout.saturating_sub(waited))).await;
        }
    }

    /// A drain that failed half-way: the ODP still serves, so its server is
    /// set ready again if the balancer lets it; otherwise the note keeps
    /// saying it may be drained.
    async fn put_back_after_failure(&mut self) {
        match self.lb.set(self.agent, ServerState::Ready).await {
            Ok(said) => {
                self.log(said);
                self.note.state = Some(ServerState::Ready);
            }
            Err(e) => self.log(format!("could not set it ready again: {}", describe(&e))),
        }
    }

    /// Once the ODP is what the task wants: ready after a start or restart,
    /// maint after a stop. An error fails the subtask: the ODP is fine but
    /// its server is not where the task leaves it.
    pub async fn put_back(&mut self, what: &str) -> Result<(), String> {
        let end = self.plan.end;
        let result = self.lb.set(self.agent, end).await;
        let outcome = match result {
            Ok(said) => {
                self.log(said);
                self.note.state = Some(if self.lb.can_set(end) {
                    end
                } else {
                    ServerState::Drain
                });
                Ok(())
            }
            Err(e) => {
                let why = format!(
                    "{what}, but the load balancer could not set server {} {}: {}",
                    self.note.server,
                    end.name(),
                    describe(&e)
                );
                self.log(why.clone());
                Err(why)
            }
        };
        self.publish();
        outcome
    }
}

//! Crash respawn: when obproxy dies while it should run, start it again,
//! with exponential backoff so a binary that crashes at once does not spin.
use std::time::Duration;

use super::{Msg, Supervisor};
use crate::agent::operation_log::{Kind, Request};

const FIRST: Duration = Duration::from_secs(1);
const CAP: Duration = Duration::from_secs(30);
/// A process that served this long before it died starts the backoff over.
const STABLE: Duration = Duration::from_secs(60);

#[derive(Debug, Default)]
pub struct Backoff {
    /// Crashes in a row without a stable run in between.
    failures: u32,
    /// A Msg::Respawn is on its way.
    pending: bool,
    /// obproxy crashed (or was found dead) while it should run, and no
    /// process has served since. A Start that fails is not a crash: it is
    /// reported to whoever asked, not retried behind their back.
    wanted: bool,
}

impl Backoff {
    pub fn crashed(&mut self, uptime: Duration) {
        self.wanted = true;
        if uptime >= STABLE {
            self.failures = 0;
        }
    }

    /// Found dead at start (it died while the agent was away).
    pub fn found_dead(&mut self) {
        self.wanted = true;
    }

    /// A process serves again, or obproxy is no longer meant to run.
    pub fn settled(&mut self) {
        self.wanted = false;
    }

    /// The wait before the next attempt: 1 s, 2 s, 4 s, ... up to 30 s.
    pub fn next_delay(&mut self) -> Duration {
        let delay = FIRST.saturating_mul(1u32 << self.failures.min(16)).min(CAP);
        self.failures += 1;
        delay
    }
}

impl Supervisor {
    /// Schedules a respawn if obproxy should run, none serves and nothing
    /// else is being done about it. A deliberate Stop clears the desire
    /// first, so it is never undone.
    pub(super) fn maybe_schedule_respawn(&mut self) {
        if !self.respawn.wanted
            || !self.desired_running
            || self.processes.serving_pid().is_some()
            || self.log.current().is_some()
            || self.respawn.pending
            || self.shutdown.is_cancelled()
        {
            return;
        }
        let delay = self.respawn.next_delay();
        self.respawn.pending = true;
        tracing::warn!(delay = %humantime::format_duration(delay), last_exit = ?self.last_exit, "obproxy is down; respawning");
        self.send_later(delay, Msg::Respawn);
    }

    pub(super) fn on_respawn(&mut self) {
        self.respawn.pending = false;
        if !self.respawn.wanted
            || !self.desired_running
            || self.processes.serving_pid().is_some()
            || self.log.current().is_some()
        {
            return;
        }
        let request = Request {
            kind: Kind::Respawn,
            request_id: None,
            exit_timeout: None,
            binary: None,
        };
        if let Err(e) = self.submit(request, None) {
            tracing::error!(error = %e, "cannot respawn obproxy");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_crash_makes_a_respawn_wanted() {
        let mut b = Backoff::default();
        assert!(!b.wanted);
        b.crashed(Duration::from_secs(1));
        assert!(b.wanted);
        b.settled();
        assert!(!b.wanted);
    }

    #[test]
    fn backoff_doubles_to_a_cap_and_a_stable_run_resets_it() {
        let mut b = Backoff::default();
        let delays: Vec<u64> = (0..7).map(|_| b.next_delay().as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 30, 30]);
        b.crashed(Duration::from_secs(5));
        assert_eq!(b.next_delay().as_secs(), 30);
        b.crashed(STABLE);
        assert_eq!(b.next_delay().as_secs(), 1);
    }
}

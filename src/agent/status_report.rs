//! What a status answers with (GetStatus, WatchStatus, the metrics scrape):
//! the supervisor's latest published status (state, processes, operation;
//! read without waiting for the supervisor) joined with the processes' usage
//! from the sampler (no older than [`sampling::MAX_AGE`], its age said).
use std::{sync::Arc, time::Duration};

use tokio::sync::watch;

use crate::agent::{
    sampling::{self, Sample, Sampler, Usage},
    supervisor_protocol::{Handle, Status},
};

#[derive(Clone)]
pub struct Reporter {
    supervisor: Handle,
    sampler: Sampler,
}

/// A status and the usage of its processes.
#[derive(Clone, Debug)]
pub struct Report {
    pub status: Arc<Status>,
    /// None before any sample (or while the sampler cannot keep up).
    pub sample: Option<Arc<Sample>>,
}

impl Report {
    /// The process's usage, if the sample has it.
    pub fn usage(&self, pid: u32) -> Option<Usage> {
        self.sample.as_ref()?.usage.get(&pid).copied()
    }

    pub fn usage_age(&self) -> Option<Duration> {
        self.sample.as_ref().map(|s| s.age())
    }
}

/// The processes and listeners a status shows: what to sample for it.
pub fn target(status: &Status) -> sampling::Target {
    sampling::Target {
        pids: status
            .serving
            .iter()
            .chain(status.draining.iter().map(|(p, _)| p))
            .map(|p| p.pid)
            .collect(),
        listeners: status
            .listeners
            .iter()
            .filter(|(kind, _, _)| *kind == crate::agent::listeners::Kind::Sql)
            .map(|(_, addr, _)| *addr)
            .collect(),
    }
}

impl Reporter {
    pub fn new(supervisor: Handle, sampler: Sampler) -> Self {
        Self {
            supervisor,
            sampler,
        }
    }

    /// The status now, with usage no older than [`sampling::MAX_AGE`]
    /// (waiting at most [`sampling::WAIT`] for a sample).
    pub async fn report(&self) -> Report {
        self.supervisor.status_asked();
        let status = self.supervisor.status();
        let target = target(&status);
        let sample = if target.pids.is_empty() {
            None
        } else {
            self.sampler.sample(&target).await
        };
        // The status may have moved on while the sample was taken: the
        // latest is shown, with the usage of the processes it still has.
        Report {
            status: self.supervisor.status(),
            sample,
        }
    }

    /// The status now with the last sample there is, without waiting for a
    /// new one (a process it does not show has no usage yet).
    pub fn report_now(&self) -> Report {
        Report {
            status: self.supervisor.status(),
            sample: self.sampler.latest(),
        }
    }

    /// Wakes at every change of the supervisor's status.
    pub fn changes(&self) -> watch::Receiver<Arc<Status>> {
        self.supervisor.status_changes()
    }
}

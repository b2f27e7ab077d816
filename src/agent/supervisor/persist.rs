//! Writing down what the supervisor owns (the state file), so that a new
//! agent finds it all again. Each write is durable (fsync), so writes are
//! kept to the moments a restarted agent would act on differently: the
//! desire, the listeners, a promotion, an exit. A promotion, on the path
//! a HOT restart's caller waits on, is written into the journal (one
//! `fdatasync` in place, see `state_file::journal`) and the whole file only once
//! the caller has its answer. A new process is not written
//! down for itself before its promotion: recovery kills one still starting
//! whether it was recorded or not (one that holds our listener unrecorded is
//! killed as a stray). And when the disk refuses: an
//! operation is admitted only once its intent is written (fail closed: a
//! request that cannot be recorded is refused before obproxy is touched),
//! a write that fails later is retried until the disk takes it again, and
//! meanwhile the status says so while supervision goes on as before.
use std::time::{Duration, SystemTime};

use super::{Msg, Supervisor};
use crate::{
    agent::{
        operation_log::Kind,
        state_file::journal::Journal,
        state_file::{self, AgentState, RecordedListener, StateFileError},
    },
    common::error_chain::describe,
};

/// How soon a failed state write is tried again: once the disk has room
/// (or is writable) again, the state is on it within this.
const RETRY: Duration = Duration::from_secs(1);

/// How long the state file may stay behind the journal (see
/// `schedule_compaction`).
const COMPACT_AFTER: Duration = Duration::from_secs(1);

/// The state on disk is behind: the last write failed and none has
/// succeeded since.
#[derive(Debug)]
pub(super) struct Unrecorded {
    since: SystemTime,
    error: String,
    /// A retry is on its way (one at a time).
    retry_pending: bool,
}

/// What an operation of `kind` means obproxy to be: written down when it is
/// admitted, before it does anything. None for the agent's own operations
/// (a respawn, a take-over at start, adopting obproxy's own restart), which
/// keep up what is already meant and must go on when the disk is full:
/// supervision never waits for the disk.
fn intent(kind: Kind) -> Option<bool> {
    match kind {
        Kind::Start | Kind::RestartHot | Kind::RestartForce => Some(true),
        Kind::Stop => Some(false),
        Kind::Respawn | Kind::TakeOver | Kind::AdoptNative => None,
    }
}

/// An operation's intent, written down at its admission: what the desire
/// was before, to put back if the admission is withdrawn after all.
#[must_use]
pub(super) struct Intent {
    before: bool,
    running: Option<bool>,
}

impl Supervisor {
    /// Writes the state file. A failure is logged, shown in the status and
    /// retried until it succeeds; it never stops supervision (the agent only
    /// risks its memory across a restart of its own).
    pub(super) fn persist(&mut self) {
        let _ = self.record();
    }

    /// Writes the state file now, and says whether the disk took it.
    pub(super) fn record(&mut self) -> Result<(), StateFileError> {
        self.generation += 1;
        match state_file::save(&self.config.state.dir, &self.state_to_record()) {
            Ok(()) => {
                self.metrics.state_written();
                self.file_behind = false;
                self.file_generation = self.generation;
                if self.journal.is_none() {
                    // Now that the file holds the newest state, whatever an
                    // old journal held can go.
                    match Journal::create(&self.config.state.dir) {
                        Ok(j) => self.journal = Some(j),
                        Err(e) => {
                            tracing::warn!(error = %describe(&e), "no state journal: a promotion writes the whole state file");
                        }
                    }
                }
                if let Some(u) = self.unrecorded.take() {
                    tracing::info!(
                        since = %humantime::format_rfc3339_seconds(u.since),
                        "the agent's state is recorded again"
                    );
                }
                Ok(())
            }
            Err(e) => {
                let error = describe(&e);
                match &mut self.unrecorded {
                    Some(u) => {
                        tracing::debug!(error = %error, "the agent's state still cannot be recorded");
                        u.error = error;
                    }
                    None => {
                        tracing::error!(error = %error, "cannot record the agent's state; operations are refused until it can be, obproxy is supervised as before");
                        self.unrecorded = Some(Unrecorded {
                            since: SystemTime::now(),
                            error,
                            retry_pending: false,
                        });
                    }
                }
                self.schedule_record_retry();
                Err(e)
            }
        }
    }

    /// A promotion's write, the one a HOT restart makes before its new
    /// process serves: into the journal (one `fdatasync` in place) when
    /// there is one and the last write of the file succeeded (the entry
    /// names that file's generation), otherwise the whole file.
    /// Says whether the state file is still owed the write: the caller
    /// writes it (`persist`) once the caller of the restart has its answer.
    pub(super) fn record_promotion(&mut self) -> bool {
        if self.unrecorded.is_none() && self.journal.is_some() {
            self.generation += 1;
            let state = self.state_to_record();
            let dir = self.config.state.dir.clone();
            let based_on = self.file_generation;
            if let Some(j) = &mut self.journal {
                match j.write(&dir, based_on, &state) {
                    Ok(()) => {
                        self.metrics.state_journaled();
                        self.file_behind = true;
                        // Tests end the agent here: the promotion is only
                        // in the journal (see `agent_recovery`).
                        crate::common::panics::injected("state-journal-written");
                        return true;
                    }
                    Err(e) => {
                        tracing::warn!(error = %describe(&e), "cannot write the state journal; writing the state file instead");
                        self.journal = None;
                    }
                }
            }
        }
        self.persist();
        false
    }

    /// Admits an operation on the disk: its intent (obproxy meant to run, or
    /// not) is written before it runs. On failure nothing changes, in memory
    /// or on disk, and the caller refuses the request.
    pub(super) fn record_intent(&mut self, kind: Kind) -> Result<Intent, StateFileError> {
        let intent = Intent {
            before: self.desired_running,
            running: intent(kind),
        };
        let Some(running) = intent.running else {
            return Ok(intent);
        };
        if running == self.desired_running && self.unrecorded.is_none() {
            // The file already says so (the last write succeeded, and every
            // change of the desire is written): a HOT restart of a running
            // obproxy. The disk must still take writes, or the request is
            // refused before obproxy is touched, but the one durable write
            // before the new process serves is its promotion's.
            return match state_file::probe(&self.config.state.dir, &self.state_to_record()) {
                Ok(()) => Ok(intent),
                Err(e) => {
                    // Shown in the status and retried like any failed write.
                    let _ = self.record();
                    Err(e)
                }
            };
        }
        self.desired_running = running;
        if let Err(e) = self.record() {
            self.desired_running = intent.before;
            return Err(e);
        }
        Ok(intent)
    }

    /// The operation is admitted: a Stop ends any wish to respawn.
    pub(super) fn commit_intent(&mut self, intent: Intent) {
        if intent.running == Some(false) {
            self.respawn.settled();
        }
    }

    /// The admission was withdrawn after its intent was written (its audit
    /// line could not be): the desire before it is put back, on disk too.
    pub(super) fn withdraw_intent(&mut self, intent: Intent) {
        if self.desired_running != intent.before {
            self.desired_running = intent.before;
            self.persist();
        }
    }

    /// The whole file, a little after a promotion written into the journal
    /// only: by then a HOT restart's old process has usually exited, and the
    /// write that records its exit records the promotion too (one full
    /// write per restart instead of two: each is two fsyncs, and a new
    /// inode for ext4 to find).
    pub(super) fn schedule_compaction(&mut self) {
        if self.shutdown.is_cancelled() {
            self.persist();
            return;
        }
        self.send_later(COMPACT_AFTER, Msg::Compact);
    }

    pub(super) fn on_compact(&mut self) {
        if self.file_behind {
            self.persist();
        }
    }

    /// The retry of a failed write came due.
    pub(super) fn on_record_retry(&mut self) {
        if let Some(u) = &mut self.unrecorded {
            u.retry_pending = false;
            self.persist();
        }
    }

    /// What GetStatus says while the state on disk is behind.
    pub(super) fn unrecorded_notice(&self) -> Option<String> {
        self.unrecorded.as_ref().map(|u| {
            format!(
                "the agent's state could not be written since {}: {}; new operations are refused until it can be (obproxy is supervised as before)",
                humantime::format_rfc3339_seconds(u.since),
                u.error
            )
        })
    }

    fn schedule_record_retry(&mut self) {
        let Some(u) = &mut self.unrecorded else {
            return;
        };
        if u.retry_pending || self.shutdown.is_cancelled() {
            return;
        }
        u.retry_pending = true;
        self.send_later(RETRY, Msg::RecordRetry);
    }

    fn state_to_record(&self) -> AgentState {
        AgentState {
            generation: self.generation,
            desired_running: self.desired_running,
            listeners: self
                .listeners
                .iter()
                .map(|l| RecordedListener {
                    bound: l.bound,
                    inode: l.inode,
                })
                .collect(),
            last_bound: self.last_bound.clone(),
            rpc_listeners: self
                .listeners
                .rpc()
                .map(|l| RecordedListener {
                    bound: l.bound,
                    inode: l.inode,
                })
                .collect(),
            last_rpc_bound: self.last_rpc_bound.clone(),
            processes: self.processes.records(),
            started_count: self.started_count,
            last_exit: self.last_exit.clone(),
        }
    }
}

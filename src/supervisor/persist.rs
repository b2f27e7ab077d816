//! Writing down what the supervisor owns (the state file), so that a new
//! agent finds it all again. Each write is durable (fsync), so writes are
//! kept to the moments a restarted agent would act on differently: the
//! desire, the listeners, a promotion, an exit. A new process is not written
//! down for itself before its promotion: recovery kills one still starting
//! whether it was recorded or not (one that holds our listener unrecorded is
//! killed as a stray).
use super::Supervisor;
use crate::state_file::{self, AgentState, RecordedListener, RecordedProcess};

impl Supervisor {
    /// Writes the state file; a failure is logged, not fatal (the agent keeps
    /// serving, it only loses its memory across a restart).
    pub(super) fn persist(&self) {
        let state = AgentState {
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
            processes: self
                .processes
                .iter()
                .map(|(&pid, p)| RecordedProcess {
                    pid,
                    start_ticks: p.start_ticks,
                    exe: p.exe.clone(),
                    binary: p.binary.clone(),
                    version: p.version.clone(),
                    role: p.role,
                    started_at: state_file::to_epoch(p.started_at),
                    drain_deadline: p.drain_deadline.map(state_file::to_epoch),
                    exit_window_us: p.exit_window.map(|w| w.as_micros() as u64),
                    rpc: p.rpc,
                })
                .collect(),
            started_count: self.started_count,
            last_exit: self.last_exit.clone(),
        };
        if let Err(e) = state_file::save(&self.config.state.dir, &state) {
            tracing::error!(error = %crate::error_chain::describe(&e), "cannot record the agent's state");
        }
    }
}

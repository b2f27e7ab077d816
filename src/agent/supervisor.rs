//! The process supervisor: the one owner of the listeners, the obproxy
//! processes (a [`ProcessTable`]) and the operation log. The gRPC service,
//! the signal thread, the exit watchers and the running operation all talk
//! to it through messages (`supervisor_protocol`), so no lock guards process
//! state.
//!
//! Supervision comes first: signals, exits, spawns, drain deadlines and the
//! running operation's steps have a queue of their own that the supervisor
//! serves before anything a caller asks. Callers' requests wait in bounded
//! queues (a full one is answered at once, `RESOURCE_EXHAUSTED`), and none is
//! worked on once its caller has gone. Status is never asked of it: it
//! publishes a snapshot after every change ([`snapshot`]), which callers read
//! without waiting, and it observes nothing itself (usage is
//! [`crate::agent::sampling`]'s).
mod exits;
mod handover;
mod native;
mod persist;
mod proxyinfo;
mod recovery;
mod respawn;
mod snapshot;
mod steps;
mod take_over;

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::agent::{
    config::AgentConfig,
    listeners::Listeners,
    metrics::AgentMetrics,
    obproxy::{
        executable::Executable,
        launch::{Handover, Plan},
        pidfd::Exit,
        procfs,
        spawner::{SpawnError, Spawned, Spawner},
    },
    operation_log::{self, Admission, Kind, OnAdmit, Operation, Request},
    operations,
    process_table::{Process, ProcessTable, ProxyState, Role},
    signals::ChildSignal,
    supervisor_protocol::{
        Drain, FactUpdate, Handle, Inbox, ListenerInfo, Msg, Status, StepError, SubmitError,
        channels,
    },
};

pub struct Supervisor {
    config: Arc<AgentConfig>,
    /// A handle for the operations it starts (they talk back through it).
    handle: Handle,
    tx: mpsc::UnboundedSender<Msg>,
    rx: mpsc::UnboundedReceiver<Msg>,
    calls: mpsc::Receiver<Msg>,
    submits: mpsc::Receiver<Msg>,
    /// Where the status snapshot is published.
    status_tx: watch::Sender<Arc<Status>>,
    /// Woken when someone asks for a status.
    asked: Arc<tokio::sync::Notify>,
    spawner: Spawner,
    tracker: TaskTracker,
    shutdown: CancellationToken,
    listeners: Listeners,
    /// Addresses the listeners had, so port 0 stays the same port.
    last_bound: Vec<SocketAddr>,
    last_rpc_bound: Vec<SocketAddr>,
    /// A free port held (bound, not listening) for a bootstrap start until
    /// the agent holds the listener obproxy binds on it.
    port_reservation: Vec<socket2::Socket>,
    processes: ProcessTable,
    ready_waiters: HashMap<u32, oneshot::Sender<Result<(), Exit>>>,
    /// Spawns sent to the spawner thread and not registered yet.
    spawns_in_flight: u32,
    /// Readiness signals that overtook their process's registration: a fast
    /// child can signal before the spawner thread has reported its pid.
    early_ready: Vec<u32>,
    exit_waiters: HashMap<u32, Vec<oneshot::Sender<Exit>>>,
    log: operation_log::Log,
    desired_running: bool,
    started_count: u32,
    last_exit: Option<String>,
    notices: Vec<String>,
    /// Why the listeners are not held while obproxy runs (they could not be
    /// taken back after an agent restart): HOT restart is refused meanwhile.
    listener_problem: Option<String>,
    respawn: respawn::Backoff,
    /// The state on disk is behind (a write failed): operations are refused.
    unrecorded: Option<persist::Unrecorded>,
    /// The generation of the last state written (see `state_file::journal`).
    generation: u64,
    /// The generation of the state file this agent last wrote: what a
    /// journal entry is written over.
    file_generation: u64,
    /// Where a promotion is written (see `state_file::journal`); made after the
    /// first full write of the state file, None until then or after a
    /// failed write into it.
    journal: Option<crate::agent::state_file::journal::Journal>,
    /// The journal holds a newer state than the file (see `persist`).
    file_behind: bool,
    /// Counts what only the supervisor sees end: operations and drains.
    metrics: Arc<AgentMetrics>,
    /// SHOW PROXYINFO BINARY asked of the serving process: when, and how
    /// the last attempt went.
    proxyinfo: proxyinfo::Asking,
    /// Processes not started by the agent that held its listeners when it
    /// took them over (see `native`).
    outside_holders: Vec<Arc<crate::agent::obproxy::pidfd::Pidfd>>,
}

impl Supervisor {
    /// Recovers what a previous agent left (see `recovery`) before it
    /// returns; must be called inside the runtime.
    pub fn new(
        config: Arc<AgentConfig>,
        spawner: Spawner,
        tracker: TaskTracker,
        shutdown: CancellationToken,
        metrics: Arc<AgentMetrics>,
    ) -> (Self, Handle) {
        let (handle, inbox) = channels(snapshot::initial());
        let Inbox {
            tx,
            rx,
            calls,
            submits,
            status_tx,
            asked,
        } = inbox;
        let mut sup = Self {
            config,
            handle: handle.clone(),
            tx,
            rx,
            calls,
            submits,
            status_tx,
            asked,
            spawner,
            tracker,
            shutdown,
            listeners: Listeners::default(),
            last_bound: Vec::new(),
            last_rpc_bound: Vec::new(),
            port_reservation: Vec::new(),
            processes: ProcessTable::default(),
            ready_waiters: HashMap::new(),
            spawns_in_flight: 0,
            early_ready: Vec::new(),
            exit_waiters: HashMap::new(),
            log: operation_log::Log::default(),
            desired_running: false,
            started_count: 0,
            last_exit: None,
            notices: Vec::new(),
            listener_problem: None,
            respawn: respawn::Backoff::default(),
            unrecorded: None,
            generation: 0,
            file_generation: 0,
            journal: None,
            file_behind: false,
            metrics,
            proxyinfo: proxyinfo::Asking::default(),
            outside_holders: Vec::new(),
        };
        // Before anyone can ask: the first status published is the
        // recovered one.
        sup.recover();
        sup.watch_children();
        sup.publish(None);
        (sup, handle)
    }

    /// Serves messages until shutdown: supervision first (obproxy's signals
    /// to its parent arrive straight from the signal thread, `signals`), then
    /// mutating requests, then reads. obproxy processes are left running:
    /// the agent going away must never take the ODP down.
    pub async fn run(mut self, mut signals: mpsc::UnboundedReceiver<ChildSignal>) {
        let asked = self.asked.clone();
        loop {
            tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => break,
                Some(sig) = signals.recv() => {
                    let _handling = procfs::Handling::enter();
                    let _op = self.operation_span();
                    self.on_signal(sig);
                }
                Some(msg) = self.rx.recv() => self.handle(msg),
                Some(msg) = self.submits.recv() => self.handle(msg),
                _ = asked.notified() => self.on_status_asked(),
                Some(msg) = self.calls.recv() => self.handle(msg),
                else => break,
            }
            self.publish(None);
        }
        tracing::info!(pids = ?self.processes.pids(), "supervisor stopped; obproxy left running");
    }

    /// A status was asked for: obproxy's own account of its binary, once
    /// per serving process (see `proxyinfo`).
    fn on_status_asked(&mut self) {
        let _handling = procfs::Handling::enter();
        crate::common::panics::injected("supervisor");
        self.ask_binary_info();
    }

    /// What happens while an operation runs (its messages, and the signals
    /// its processes send) is logged as part of it.
    fn operation_span(&self) -> Option<tracing::span::EnteredSpan> {
        self.log
            .current_id()
            .map(|id| tracing::info_span!("operation", op_id = %id).entered())
    }

    fn handle(&mut self, msg: Msg) {
        let _handling = procfs::Handling::enter();
        let _op = self.operation_span();
        match msg {
            Msg::Ping(reply) => {
                let _ = reply.send(());
            }
            // A caller that has gone gets no work done for it.
            Msg::Submit(_, _, reply) if reply.is_closed() => {}
            Msg::GetOperation(_, reply) if reply.is_closed() => {}
            Msg::WatchOperation(_, reply) if reply.is_closed() => {}
            Msg::Submit(request, on_admit, reply) => {
                let result = self.submit(request, on_admit);
                // Published before the answer, so the caller's next status
                // shows what it started.
                self.publish(None);
                let _ = reply.send(result);
            }
            Msg::GetOperation(id, reply) => {
                let _ = reply.send(self.log.get(&id));
            }
            Msg::WatchOperation(id, reply) => {
                let _ = reply.send(self.log.watch(&id));
            }
            Msg::Exited { pid, exit } => self.on_exit(pid, exit),
            Msg::Spawned {
                result,
                binary,
                version,
                exit_window,
                rpc,
                reply,
            } => {
                let _ = reply.send(self.on_spawned(result, binary, version, exit_window, rpc));
            }
            Msg::BinaryInfo { pid, result } => self.on_binary_info(pid, result),
            Msg::DrainDeadline {
                pid,
                deadline,
                open,
            } => self.on_drain_deadline(pid, deadline, open),
            Msg::Respawn => self.on_respawn(),
            Msg::Sweep => self.reap_orphans(),
            Msg::RecordRetry => self.on_record_retry(),
            Msg::Compact => self.on_compact(),
            Msg::Step(step) => self.on_step(step),
        }
    }

    fn submit(
        &mut self,
        request: Request,
        on_admit: Option<OnAdmit>,
    ) -> Result<watch::Receiver<Operation>, SubmitError> {
        if self.shutdown.is_cancelled() {
            return Err(SubmitError::ShuttingDown);
        }
        let serving = self.processes.serving_pid();
        // A replayed request id answers with its operation, whatever the
        // state is now.
        let replay = request
            .request_id
            .as_deref()
            .is_some_and(|rid| self.log.has_request(rid));
        if request.kind == Kind::RestartHot && serving.is_none() && !replay {
            return Err(SubmitError::NotServing {
                state: self.state(),
            });
        }
        if request.kind == Kind::RestartHot
            && !replay
            && let Some(problem) = &self.listener_problem
        {
            return Err(SubmitError::ListenersLost {
                reason: problem.clone(),
            });
        }
        let admission = self.log.admit(&request, serving)?;
        let replayed = matches!(admission, Admission::Replay(_));
        let (Admission::Replay(rx) | Admission::New(rx)) = &admission;
        let id = rx.borrow().id.clone();
        // Fail closed: what cannot be written down is not done. Written
        // before the audit line, which then says what really happened.
        let intent = if replayed {
            None
        } else {
            match self.record_intent(request.kind) {
                Ok(intent) => Some(intent),
                Err(e) => {
                    tracing::warn!(op_id = %id, kind = request.kind.name(), error = %crate::common::error_chain::describe(&e), "operation refused: the agent's state cannot be recorded");
                    self.log.withdraw(&id);
                    return Err(SubmitError::Unrecorded(e));
                }
            }
        };
        if let Some(on_admit) = on_admit
            && let Err(reason) = on_admit(&id, replayed)
        {
            if let Some(intent) = intent {
                self.log.withdraw(&id);
                self.withdraw_intent(intent);
            }
            return Err(SubmitError::NotRecorded(reason));
        }
        if let Some(intent) = intent {
            self.commit_intent(intent);
        }
        match admission {
            Admission::Replay(rx) => Ok(rx),
            Admission::New(rx) => {
                let op = rx.borrow().clone();
                tracing::info!(op_id = %op.id, kind = op.kind.name(), request_id = ?op.request_id, "operation admitted");
                let ctl = operations::Ctl::new(
                    self.handle.clone(),
                    self.config.clone(),
                    op.id.clone(),
                    serving,
                );
                self.tracker.spawn(operations::run(ctl, request));
                Ok(rx)
            }
        }
    }

    fn on_signal(&mut self, sig: ChildSignal) {
        let Some(pid) = sig.pid else { return };
        let Some(p) = self.processes.get_mut(pid) else {
            if sig.signal == libc::SIGUSR1 && self.spawns_in_flight > 0 {
                // A fast child can signal before the spawner thread has
                // reported its pid; keep it for the registration.
                tracing::debug!(pid, "readiness signal before the spawn was registered");
                self.early_ready.push(pid);
            } else {
                tracing::debug!(
                    pid,
                    signal = sig.signal,
                    "signal from a process that is not ours"
                );
            }
            return;
        };
        if sig.signal == libc::SIGUSR1 {
            tracing::info!(pid, "obproxy signalled readiness");
            p.ready = true;
            // By now it has exec'd its final binary: its identity, recorded
            // with the promotion (a process that is not serving yet is killed
            // at recovery whatever the record says, so no write is owed here).
            p.exe = procfs::exe(pid).ok();
            if let Some(w) = self.ready_waiters.remove(&pid) {
                let _ = w.send(Ok(()));
            }
        } else {
            // SIGUSR2: obproxy's clean exit; the pidfd reports the exit itself.
            tracing::info!(pid, "obproxy announced a clean exit");
        }
    }

    fn on_spawned(
        &mut self,
        result: Result<Spawned, SpawnError>,
        binary: PathBuf,
        version: String,
        exit_window: Duration,
        rpc: bool,
    ) -> Result<u32, StepError> {
        self.spawns_in_flight = self.spawns_in_flight.saturating_sub(1);
        let early = std::mem::take(&mut self.early_ready);
        let spawned = result?;
        let pidfd = Arc::new(spawned.pidfd);
        let pid = pidfd.pid();
        let ready = early.contains(&pid);
        self.started_count += 1;
        let mut process = Process::spawned(
            pidfd.clone(),
            procfs::start_ticks(pid).unwrap_or(0),
            binary,
            version,
            spawned.started_at,
            exit_window,
            rpc,
        );
        process.ready = ready;
        self.processes.insert(pid, process);
        tracing::info!(pid, "obproxy spawned");
        // Not written down yet: an agent killed before the promotion finds
        // the process holding our listener unrecorded and kills it, exactly
        // as it would kill a recorded one still starting (the old process,
        // or none, serves). The first write is the promotion's.
        self.watch_exit(pidfd);
        Ok(pid)
    }

    fn spawn(
        &mut self,
        binary: Executable,
        version: String,
        plan: Plan,
        reply: oneshot::Sender<Result<u32, StepError>>,
    ) {
        let spec = match self.launch_spec(binary.clone(), &plan) {
            Ok(spec) => spec,
            Err(e) => {
                let _ = reply.send(Err(e));
                return;
            }
        };
        let rpc = plan.handover == Handover::Inherit { rpc: true };
        tracing::info!(binary = %binary.path().display(), args = ?crate::common::redact::args(&spec.args), env = ?spec.env, "spawning obproxy");
        self.spawns_in_flight += 1;
        let tx = self.tx.clone();
        let binary = binary.path().to_path_buf();
        self.spawner.spawn(spec, move |result| {
            let _ = tx.send(Msg::Spawned {
                result,
                binary,
                version,
                exit_window: plan.exit_timeout,
                rpc,
                reply,
            });
        });
    }

    /// Sends `msg` to the supervisor itself after `delay`, unless the agent
    /// is shutting down by then: its timers (a respawn, a write retried or
    /// owed).
    fn send_later(&self, delay: std::time::Duration, msg: Msg) {
        let tx = self.tx.clone();
        let shutdown = self.shutdown.clone();
        self.tracker.spawn(async move {
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = tokio::time::sleep(delay) => { let _ = tx.send(msg); }
            }
        });
    }

    /// Makes `pid` serve and writes that down durably (see
    /// `record_promotion`); returns the process that served before, and
    /// whether the state file is still owed the write.
    fn promote(&mut self, pid: u32, drain: Option<Drain>) -> (Option<u32>, bool) {
        let deadline = drain.map(|d| SystemTime::now() + d.kill_after);
        let promotion = self.processes.promote(pid, deadline, Instant::now());
        let previous = promotion.previous;
        if let (Some(old), Some(deadline)) = (previous, deadline) {
            self.schedule_drain_deadline(old, deadline);
        }
        if promotion.promoted {
            // Its identity, if nothing read it yet (a native restart's child
            // signals its parent, not us; a readiness signal can come before
            // the spawn is registered): what a restarted agent re-adopts by.
            if promotion.unidentified
                && let Some(p) = self.processes.get_mut(pid)
            {
                p.exe = procfs::exe(pid).ok();
            }
            self.respawn.settled();
            self.notices = match (previous, drain) {
                (Some(old), Some(d)) if d.exporter_lost => vec![format!(
                    "pid {pid} started while pid {old} still held obproxy's Prometheus port; \
                     obproxy then runs without its exporter until a restart that is not HOT \
                     (restart_strategy = \"native\" keeps it)"
                )],
                _ => Vec::new(),
            };
        }
        self.release_unused_rpc();
        (previous, self.record_promotion())
    }
}

//! The process supervisor: the one owner of the listeners, the obproxy
//! processes and the operation log. The gRPC service, the signal thread, the
//! exit watchers and the running operation all talk to it through messages,
//! so no lock guards process state.
//!
//! Supervision comes first: signals, exits, spawns, drain deadlines and the
//! running operation's steps have a queue of their own that the supervisor
//! serves before anything a caller asks. Callers' requests wait in bounded
//! queues (a full one is answered at once, `RESOURCE_EXHAUSTED`), and none is
//! worked on once its caller has gone. Status is never asked of it: it
//! publishes a snapshot after every change ([`snapshot`]), which callers read
//! without waiting, and it observes nothing itself (usage is
//! [`crate::sampling`]'s).
mod exits;
mod handover;
mod native;
mod persist;
mod proxyinfo;
mod recovery;
mod respawn;
mod snapshot;
mod take_over;

pub use take_over::Adoption;

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use nix::sys::signal::Signal;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    admin_sql::BinaryInfo,
    change_feed::Watcher,
    config::AgentConfig,
    listeners::{self, ListenerError, Listeners},
    metrics::agent::AgentMetrics,
    obproxy::{
        executable::Executable,
        launch::{Handover, Plan},
        pidfd::{Exit, Pidfd},
        procfs,
        spawner::{SpawnError, Spawned, Spawner},
    },
    operation::{self, Admission, Kind, LogError, OnAdmit, Operation, Phase, Request},
    operations,
    signals::ChildSignal,
    state_file::{self, StateFileError},
};

/// Time a draining obproxy gets beyond its window to close what is left
/// before the agent SIGKILLs it.
pub const DRAIN_GRACE: Duration = Duration::from_secs(2);

/// Callers' requests (GetOperation, WatchOperation) that may wait for the
/// supervisor; more are refused until it catches up.
pub const CALL_QUEUE: usize = 64;
/// Mutating requests that may wait; a queue of their own, so reads cannot
/// crowd out an operator's Stop.
pub const SUBMIT_QUEUE: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyState {
    Running,
    Stopped,
    Starting,
    Stopping,
    Restarting,
    Upgrading,
    Unavailable,
}

/// A process as the supervisor knows it: identity and counters only (its
/// usage is sampled elsewhere, see [`crate::sampling`]).
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessInfo {
    pub pid: u32,
    pub version: String,
    pub binary: PathBuf,
    pub started_at: SystemTime,
    /// What the process reported over admin SQL (SHOW PROXYINFO BINARY).
    pub binary_info: Option<BinaryInfo>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Status {
    pub state: ProxyState,
    pub desired_running: bool,
    pub serving: Option<ProcessInfo>,
    pub draining: Vec<(ProcessInfo, SystemTime)>,
    /// Held listeners: SQL first, then RPC.
    pub listeners: Vec<(listeners::Kind, SocketAddr, u64)>,
    pub restart_count: u32,
    pub operation: Option<Operation>,
    pub last_exit: Option<String>,
    pub notices: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error(
        "a hot restart needs a serving obproxy, and the proxy is {state:?}; use Start or a FORCE restart"
    )]
    NotServing { state: ProxyState },
    #[error("HOT restart refused: {reason}")]
    ListenersLost { reason: String },
    /// The operation's intent could not be written down: refused before
    /// anything was done.
    #[error("refused before touching obproxy: cannot record the agent's state")]
    Unrecorded(#[source] StateFileError),
    /// The admission could not be recorded (the audit log): refused.
    #[error("{0}")]
    NotRecorded(String),
    #[error("the agent is shutting down")]
    ShuttingDown,
    #[error(transparent)]
    Overloaded(#[from] QueueFull),
}

/// A caller's request found its queue full.
#[derive(Debug, thiserror::Error)]
#[error("the agent has {capacity} {queue} waiting already; try again shortly")]
pub struct QueueFull {
    pub queue: &'static str,
    pub capacity: usize,
}

/// Why a caller's read was not answered.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error(transparent)]
    Overloaded(#[from] QueueFull),
    #[error("the agent is shutting down")]
    ShuttingDown,
}

/// Why a step of an operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error(transparent)]
    Listener(#[from] ListenerError),
    #[error(transparent)]
    Spawn(#[from] SpawnError),
    #[error("the SQL listeners are not held")]
    NoListeners,
    #[error("the RPC listeners are not held")]
    NoRpcListeners,
    #[error("the agent holds the SQL listeners, but a bootstrap start must bind the port itself")]
    ListenersHeld,
    #[error(
        "obproxy must bind the SQL port itself once (a bootstrap start) and cannot be told \
         \"any port\": [obproxy] listen {addrs:?} needs one fixed port for all its addresses"
    )]
    BootstrapPort { addrs: Vec<SocketAddr> },
    #[error("cannot reserve {addr} for obproxy's bootstrap start")]
    Reserve {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot take fd {fd} (a listener) from pid {pid} (pidfd_getfd, Linux 5.6+)")]
    TakeListener {
        pid: u32,
        fd: i32,
        #[source]
        source: std::io::Error,
    },
    #[error("pid {pid} is not an obproxy of this agent")]
    UnknownPid { pid: u32 },
    #[error("cannot send {signal} to pid {pid}")]
    Signal {
        pid: u32,
        signal: Signal,
        #[source]
        source: std::io::Error,
    },
    #[error("the agent is shutting down")]
    ShuttingDown,
    #[error(transparent)]
    Native(#[from] native::NativeChildError),
}

/// What an operation learns when the listeners are held.
#[derive(Debug, Clone)]
pub struct ListenerInfo {
    pub probe_addrs: Vec<SocketAddr>,
    pub inodes: Vec<u64>,
    /// The RPC listeners held (empty when none is).
    pub rpc_inodes: Vec<u64>,
}

use state_file::Role;

/// How the previous serving process drains once another is promoted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Drain {
    /// SIGKILL this long after the hand-over unless it has exited by then.
    pub kill_after: Duration,
    /// The new process could not bind obproxy's Prometheus port, which the
    /// old one held (the agent's own hot restart; a native one keeps it).
    pub exporter_lost: bool,
}

/// What the supervisor knows about one of its processes.
#[derive(Debug, Clone)]
pub struct ProcessFacts {
    /// Its `hot_upgrade_exit_timeout`; None: unknown.
    pub exit_window: Option<Duration>,
    pub binary: PathBuf,
    pub exe: Option<PathBuf>,
    pub version: String,
}

/// Facts an operation learned about a process.
#[derive(Debug, Clone)]
pub enum FactUpdate {
    /// Admin SQL changed its drain window.
    ExitWindow(Duration),
    Version(String),
    BinaryInfo(BinaryInfo),
}

struct Process {
    pidfd: Arc<Pidfd>,
    role: Role,
    /// Identity for re-adoption: start time, and the executable once ready.
    start_ticks: u64,
    exe: Option<PathBuf>,
    version: String,
    binary: PathBuf,
    started_at: SystemTime,
    /// Its readiness SIGUSR1 arrived (possibly before anyone waited for it).
    ready: bool,
    drain_deadline: Option<SystemTime>,
    /// The agent signalled it to end, so its exit is no surprise.
    ending: bool,
    /// When it was handed over to drain: its exit times the drain (metrics).
    drain_started: Option<Instant>,
    /// Its `hot_upgrade_exit_timeout` (from its `-o`, or set over admin SQL
    /// since): the window it drains with. None: unknown.
    exit_window: Option<Duration>,
    /// What it reported over admin SQL, once asked.
    binary_info: Option<BinaryInfo>,
    /// For the child of a native restart the agent asked for: its parent,
    /// whose exit is then the hand-over, not a crash.
    native_parent: Option<u32>,
    /// It was handed the RPC listeners (obproxy 4.3+ with RPC on).
    rpc: bool,
}

enum Msg {
    /// A round trip that proves the supervisor serves its queue (watchdog).
    Ping(oneshot::Sender<()>),
    Submit(
        Request,
        Option<OnAdmit>,
        oneshot::Sender<Result<watch::Receiver<Operation>, SubmitError>>,
    ),
    GetOperation(String, oneshot::Sender<Option<Operation>>),
    WatchOperation(String, oneshot::Sender<Option<Watcher<Operation>>>),
    Exited {
        pid: u32,
        exit: Exit,
    },
    Spawned {
        result: Result<Spawned, SpawnError>,
        binary: PathBuf,
        version: String,
        exit_window: Duration,
        rpc: bool,
        reply: oneshot::Sender<Result<u32, StepError>>,
    },
    /// The answer to SHOW PROXYINFO BINARY asked of the serving `pid`.
    BinaryInfo {
        pid: u32,
        result: Result<BinaryInfo, String>,
    },
    DrainDeadline {
        pid: u32,
        /// Which drain: the pid may belong to a later process by then.
        deadline: SystemTime,
        /// Its client sessions, counted just before (None: not in time).
        open: Option<u32>,
    },
    /// Time to start obproxy again after it died (crash respawn).
    Respawn,
    /// A child changed state: reap orphans re-parented to us.
    Sweep,
    /// Time to try a failed state write again.
    RecordRetry,
    Step(Step),
}

/// Requests from the running operation.
pub enum Step {
    SetDesired(bool),
    /// SQL listeners, and RPC listeners too with `rpc`.
    BindListeners {
        rpc: bool,
        reply: oneshot::Sender<Result<ListenerInfo, StepError>>,
    },
    CloseListeners(oneshot::Sender<()>),
    Spawn {
        binary: Executable,
        version: String,
        plan: Plan,
        reply: oneshot::Sender<Result<u32, StepError>>,
    },
    /// Where a bootstrap start will listen (checked before it is spawned).
    BootstrapAddrs(oneshot::Sender<Result<Vec<SocketAddr>, StepError>>),
    /// A bootstrap start listens on these fds: the agent holds them now.
    TakeListeners {
        pid: u32,
        fds: Vec<i32>,
        reply: oneshot::Sender<Result<ListenerInfo, StepError>>,
    },
    WaitReady {
        pid: u32,
        reply: oneshot::Sender<Result<(), Exit>>,
    },
    WaitExit {
        pid: u32,
        reply: oneshot::Sender<Exit>,
    },
    Signal {
        pid: u32,
        signal: Signal,
        reply: oneshot::Sender<Result<(), StepError>>,
    },
    /// Makes `pid` the serving process; the previous one starts draining
    /// (SIGKILLed at `drain.kill_after`) or, without a drain, is returned
    /// for the caller to end.
    Promote {
        pid: u32,
        drain: Option<Drain>,
        reply: oneshot::Sender<Option<u32>>,
    },
    Facts {
        pid: u32,
        reply: oneshot::Sender<Option<ProcessFacts>>,
    },
    Update {
        pid: u32,
        update: FactUpdate,
    },
    /// Processes that hold our listeners but are not ours (a native
    /// restart's child): pidfds opened after the pid was found holding them.
    Strangers(oneshot::Sender<Vec<Arc<Pidfd>>>),
    /// Records the child `parent` forked for a native restart as starting.
    AdoptChild {
        parent: u32,
        child: u32,
        version: String,
        exit_window: Duration,
        reply: oneshot::Sender<Result<(), StepError>>,
    },
    /// Makes a process the agent did not start the serving one (take-over).
    Adopt {
        adoption: Box<Adoption>,
        reply: oneshot::Sender<Result<u32, StepError>>,
    },
    /// Pids the agent holds, by role: (serving, draining, starting).
    Processes(oneshot::Sender<(Option<u32>, Vec<u32>, Vec<u32>)>),
    Progress {
        op: String,
        phase: Phase,
        note: Option<String>,
    },
    Finish {
        op: String,
        result: Result<Option<u32>, String>,
    },
}

thread_local! {
    /// Set while this thread handles a supervisor message.
    static HANDLING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether this thread is handling a supervisor message now: what must never
/// run there (a kernel socket dump) checks it in debug builds.
pub fn handling() -> bool {
    HANDLING.with(std::cell::Cell::get)
}

/// Marks the handling of one message (the handlers are synchronous, so the
/// thread does nothing else meanwhile).
struct Handling;

impl Handling {
    fn enter() -> Self {
        HANDLING.with(|h| h.set(true));
        Self
    }
}

impl Drop for Handling {
    fn drop(&mut self) {
        HANDLING.with(|h| h.set(false));
    }
}

/// A cheap, cloneable way to talk to the supervisor.
#[derive(Clone)]
pub struct Handle {
    /// Supervision: never refused (its senders are bounded in number).
    tx: mpsc::UnboundedSender<Msg>,
    calls: mpsc::Sender<Msg>,
    submits: mpsc::Sender<Msg>,
    status: watch::Receiver<Arc<Status>>,
    /// Someone asked for a status: the supervisor may ask obproxy about
    /// itself (admin SQL), at most once per serving process. Coalesces.
    asked: Arc<tokio::sync::Notify>,
}

/// Puts a caller's request in its bounded queue, or says why not.
fn enqueue(queue: &mpsc::Sender<Msg>, msg: Msg, name: &'static str) -> Result<(), CallError> {
    queue.try_send(msg).map_err(|e| match e {
        mpsc::error::TrySendError::Full(_) => CallError::Overloaded(QueueFull {
            queue: name,
            capacity: queue.max_capacity(),
        }),
        mpsc::error::TrySendError::Closed(_) => CallError::ShuttingDown,
    })
}

impl Handle {
    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Msg) -> Option<T> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(make(tx)).ok()?;
        rx.await.ok()
    }

    async fn call<T>(
        &self,
        queue: &mpsc::Sender<Msg>,
        name: &'static str,
        make: impl FnOnce(oneshot::Sender<T>) -> Msg,
    ) -> Result<T, CallError> {
        let (tx, rx) = oneshot::channel();
        enqueue(queue, make(tx), name)?;
        rx.await.map_err(|_| CallError::ShuttingDown)
    }

    /// The latest status: published by the supervisor after every change,
    /// read without waiting for it.
    pub fn status(&self) -> Arc<Status> {
        self.status.borrow().clone()
    }

    /// Wakes at every published change of the status.
    pub fn status_changes(&self) -> watch::Receiver<Arc<Status>> {
        self.status.clone()
    }

    /// Tells the supervisor a status was asked for (never waits; any number
    /// of callers make one wake-up).
    pub fn status_asked(&self) {
        self.asked.notify_one();
    }

    /// Whether the supervisor serves its queue (a round trip through it).
    pub async fn ping(&self) -> bool {
        self.ask(Msg::Ping).await.is_some()
    }

    pub async fn submit(
        &self,
        request: Request,
    ) -> Result<watch::Receiver<Operation>, SubmitError> {
        self.submit_with(request, None).await
    }

    /// As [`Handle::submit`], with `on_admit` run in the step that admits
    /// the operation: a caller that hangs up meanwhile cannot skip it.
    pub async fn submit_audited(
        &self,
        request: Request,
        on_admit: OnAdmit,
    ) -> Result<watch::Receiver<Operation>, SubmitError> {
        self.submit_with(request, Some(on_admit)).await
    }

    async fn submit_with(
        &self,
        request: Request,
        on_admit: Option<OnAdmit>,
    ) -> Result<watch::Receiver<Operation>, SubmitError> {
        match self
            .call(&self.submits, "mutating requests", |tx| {
                Msg::Submit(request, on_admit, tx)
            })
            .await
        {
            Ok(result) => result,
            Err(CallError::Overloaded(full)) => Err(SubmitError::Overloaded(full)),
            Err(CallError::ShuttingDown) => Err(SubmitError::ShuttingDown),
        }
    }

    pub async fn operation(&self, id: String) -> Result<Option<Operation>, CallError> {
        self.call(&self.calls, "requests", |tx| Msg::GetOperation(id, tx))
            .await
    }

    pub async fn watch_operation(
        &self,
        id: String,
    ) -> Result<Option<Watcher<Operation>>, CallError> {
        self.call(&self.calls, "requests", |tx| Msg::WatchOperation(id, tx))
            .await
    }

    pub async fn step<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Step) -> Option<T> {
        self.ask(|tx| Msg::Step(make(tx))).await
    }

    pub fn notify(&self, step: Step) {
        let _ = self.tx.send(Msg::Step(step));
    }
}

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
    processes: BTreeMap<u32, Process>,
    ready_waiters: HashMap<u32, oneshot::Sender<Result<(), Exit>>>,
    /// Spawns sent to the spawner thread and not registered yet.
    spawns_in_flight: u32,
    /// Readiness signals that overtook their process's registration: a fast
    /// child can signal before the spawner thread has reported its pid.
    early_ready: Vec<u32>,
    exit_waiters: HashMap<u32, Vec<oneshot::Sender<Exit>>>,
    log: operation::Log,
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
    /// Counts what only the supervisor sees end: operations and drains.
    metrics: Arc<AgentMetrics>,
    /// SHOW PROXYINFO BINARY asked of the serving process: when, and how
    /// the last attempt went.
    proxyinfo: proxyinfo::Asking,
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
        let (tx, rx) = mpsc::unbounded_channel();
        let (calls_tx, calls) = mpsc::channel(CALL_QUEUE);
        let (submits_tx, submits) = mpsc::channel(SUBMIT_QUEUE);
        let (status_tx, status) = watch::channel(Arc::new(snapshot::initial()));
        let handle = Handle {
            tx: tx.clone(),
            calls: calls_tx,
            submits: submits_tx,
            status,
            asked: Arc::new(tokio::sync::Notify::new()),
        };
        let mut sup = Self {
            config,
            handle: handle.clone(),
            tx,
            rx,
            calls,
            submits,
            status_tx,
            spawner,
            tracker,
            shutdown,
            listeners: Listeners::default(),
            last_bound: Vec::new(),
            last_rpc_bound: Vec::new(),
            port_reservation: Vec::new(),
            processes: BTreeMap::new(),
            ready_waiters: HashMap::new(),
            spawns_in_flight: 0,
            early_ready: Vec::new(),
            exit_waiters: HashMap::new(),
            log: operation::Log::default(),
            desired_running: false,
            started_count: 0,
            last_exit: None,
            notices: Vec::new(),
            listener_problem: None,
            respawn: respawn::Backoff::default(),
            unrecorded: None,
            metrics,
            proxyinfo: proxyinfo::Asking::default(),
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
        let asked = self.handle.asked.clone();
        loop {
            tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => break,
                Some(sig) = signals.recv() => {
                    let _handling = Handling::enter();
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
        tracing::info!(pids = ?self.processes.keys().collect::<Vec<_>>(), "supervisor stopped; obproxy left running");
    }

    /// A status was asked for: obproxy's own account of its binary, once
    /// per serving process (see `proxyinfo`).
    fn on_status_asked(&mut self) {
        let _handling = Handling::enter();
        crate::panics::injected("supervisor");
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
        let _handling = Handling::enter();
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
            Msg::Step(step) => self.on_step(step),
        }
    }

    fn serving_pid(&self) -> Option<u32> {
        self.processes
            .iter()
            .find(|(_, p)| p.role == Role::Serving)
            .map(|(pid, _)| *pid)
    }

    fn submit(
        &mut self,
        request: Request,
        on_admit: Option<OnAdmit>,
    ) -> Result<watch::Receiver<Operation>, SubmitError> {
        if self.shutdown.is_cancelled() {
            return Err(SubmitError::ShuttingDown);
        }
        let serving = self.serving_pid();
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
                    tracing::warn!(op_id = %id, kind = request.kind.name(), error = %crate::error_chain::describe(&e), "operation refused: the agent's state cannot be recorded");
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
        let Some(p) = self.processes.get_mut(&pid) else {
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
        self.processes.insert(
            pid,
            Process {
                pidfd: pidfd.clone(),
                role: Role::Starting,
                start_ticks: procfs::start_ticks(pid).unwrap_or(0),
                exe: None,
                version,
                binary,
                started_at: spawned.started_at,
                ready,
                drain_deadline: None,
                ending: false,
                drain_started: None,
                exit_window: Some(exit_window),
                binary_info: None,
                native_parent: None,
                rpc,
            },
        );
        tracing::info!(pid, "obproxy spawned");
        // Not written down yet: an agent killed before the promotion finds
        // the process holding our listener unrecorded and kills it, exactly
        // as it would kill a recorded one still starting (the old process,
        // or none, serves). The first write is the promotion's.
        self.watch_exit(pidfd);
        Ok(pid)
    }

    fn on_step(&mut self, step: Step) {
        match step {
            Step::SetDesired(running) => {
                // Usually already written when the operation was admitted.
                let changed = self.desired_running != running;
                self.desired_running = running;
                if !running {
                    self.respawn.settled();
                }
                if changed {
                    self.persist();
                }
            }
            Step::BindListeners { rpc, reply } => {
                let _ = reply.send(self.bind_listeners(rpc));
            }
            Step::BootstrapAddrs(reply) => {
                let _ = reply.send(self.bootstrap_bind().map(|b| b.addrs()));
            }
            Step::TakeListeners { pid, fds, reply } => {
                let _ = reply.send(self.take_listeners(pid, &fds));
            }
            Step::CloseListeners(reply) => {
                if !self.listeners.is_empty() {
                    tracing::info!(addrs = ?self.listeners.bound_addrs(), "closing SQL listeners");
                }
                self.listeners = Listeners::default();
                self.port_reservation.clear();
                self.listener_problem = None;
                self.persist();
                let _ = reply.send(());
            }
            Step::Spawn {
                binary,
                version,
                plan,
                reply,
            } => self.spawn(binary, version, plan, reply),
            Step::WaitReady { pid, reply } => match self.processes.get(&pid) {
                Some(p) if p.ready => {
                    let _ = reply.send(Ok(()));
                }
                Some(_) => {
                    self.ready_waiters.insert(pid, reply);
                }
                None => {
                    let _ = reply.send(Err(Exit::Unknown));
                }
            },
            Step::WaitExit { pid, reply } => {
                if self.processes.contains_key(&pid) {
                    self.exit_waiters.entry(pid).or_default().push(reply);
                } else {
                    let _ = reply.send(Exit::Unknown);
                }
            }
            Step::Signal { pid, signal, reply } => {
                let result = match self.processes.get_mut(&pid) {
                    None => Err(StepError::UnknownPid { pid }),
                    Some(p) => {
                        if matches!(signal, Signal::SIGTERM | Signal::SIGKILL | Signal::SIGINT) {
                            p.ending = true;
                        }
                        p.pidfd.signal(signal).map_err(|source| StepError::Signal {
                            pid,
                            signal,
                            source,
                        })
                    }
                };
                let _ = reply.send(result);
            }
            Step::Promote { pid, drain, reply } => {
                let _ = reply.send(self.promote(pid, drain));
            }
            Step::Facts { pid, reply } => {
                let _ = reply.send(self.processes.get(&pid).map(|p| ProcessFacts {
                    exit_window: p.exit_window,
                    binary: p.binary.clone(),
                    exe: p.exe.clone(),
                    version: p.version.clone(),
                }));
            }
            Step::Update { pid, update } => self.update_facts(pid, update),
            Step::Strangers(reply) => {
                let _ = reply.send(self.strangers());
            }
            Step::AdoptChild {
                parent,
                child,
                version,
                exit_window,
                reply,
            } => {
                let _ = reply.send(self.register_native_child(parent, child, version, exit_window));
            }
            Step::Adopt { adoption, reply } => {
                let _ = reply.send(self.adopt(*adoption));
            }
            Step::Processes(reply) => {
                let by = |role| {
                    self.processes
                        .iter()
                        .filter(|(_, p)| p.role == role)
                        .map(|(pid, _)| *pid)
                        .collect::<Vec<_>>()
                };
                let _ = reply.send((self.serving_pid(), by(Role::Draining), by(Role::Starting)));
            }
            Step::Progress { op, phase, note } => {
                if let Some(n) = &note {
                    tracing::info!(op_id = %op, ?phase, "{n}");
                }
                self.update_operation(&op, |o| {
                    o.phase = phase;
                    o.events.extend(note);
                });
            }
            Step::Finish { op, result } => {
                match &result {
                    Ok(pid) => tracing::info!(op_id = %op, pid = ?pid, "operation succeeded"),
                    Err(e) => tracing::warn!(op_id = %op, error = %e, "operation failed"),
                }
                let serving = self.serving_pid();
                // Before the finished operation is published: a caller told
                // it failed (a 4.3 that never served) must not then see the
                // RPC listeners still held.
                self.release_unused_rpc();
                // What the operation leaves: the state once nothing runs.
                let left = self.settled_state();
                let metrics = self.metrics.clone();
                self.update_operation(&op, |o| {
                    metrics.operation_finished(o.kind, result.is_ok());
                    o.finished_at = Some(SystemTime::now());
                    o.phase = Phase::Done;
                    o.proxy_state = Some(left);
                    match result {
                        Ok(pid) => {
                            o.state = operation::State::Succeeded;
                            o.pid = pid;
                        }
                        Err(e) => {
                            o.state = operation::State::Failed;
                            o.pid = serving;
                            o.error = Some(e);
                        }
                    }
                });
                self.maybe_schedule_respawn();
                self.ask_binary_info();
            }
        }
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
        tracing::info!(binary = %binary.path().display(), args = ?crate::redact::args(&spec.args), env = ?spec.env, "spawning obproxy");
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

    fn promote(&mut self, pid: u32, drain: Option<Drain>) -> Option<u32> {
        let previous = self.serving_pid().filter(|&old| old != pid);
        let deadline = drain.map(|d| SystemTime::now() + d.kill_after);
        if let Some(old) = previous
            && let Some(p) = self.processes.get_mut(&old)
        {
            p.role = Role::Draining;
            p.drain_deadline = deadline;
            p.drain_started = deadline.map(|_| Instant::now());
        }
        if let (Some(old), Some(deadline)) = (previous, deadline) {
            self.schedule_drain_deadline(old, deadline);
        }
        if let Some(p) = self.processes.get_mut(&pid) {
            p.role = Role::Serving;
            // A native restart's child signals its parent, not us: being
            // promoted is how it counts as ready.
            if !p.ready {
                p.ready = true;
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
        self.persist();
        previous
    }
}

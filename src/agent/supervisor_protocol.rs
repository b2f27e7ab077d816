//! How the rest of the agent talks to the supervisor: the [`Handle`] callers
//! and the running operation hold, the messages it sends ([`Msg`], and the
//! operation's [`Step`]s), their errors, and the [`Status`] the supervisor
//! publishes. A leaf: it names no module that uses it, so the operations,
//! the service and the metrics depend on it and not on the supervisor.
use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::Arc,
    time::{Duration, SystemTime},
};

use nix::sys::signal::Signal;
use tokio::sync::{mpsc, oneshot, watch};

use crate::{
    agent::{
        admin_sql::BinaryInfo,
        listeners::{self, ListenerError},
        obproxy::{
            discovery::Found,
            executable::Executable,
            launch::Plan,
            pidfd::{Exit, Pidfd},
            spawner::{SpawnError, Spawned},
        },
        operation_log::{LogError, OnAdmit, Operation, Phase, Request},
        process_table::{ProcessInfo, ProxyState},
        state_file::StateFileError,
    },
    common::change_feed::Watcher,
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
    #[error(transparent)]
    Native(#[from] NativeChildError),
}

/// What an operation learns when the listeners are held.
#[derive(Debug, Clone)]
pub struct ListenerInfo {
    pub probe_addrs: Vec<SocketAddr>,
    pub inodes: Vec<u64>,
    /// The RPC listeners held (empty when none is).
    pub rpc_inodes: Vec<u64>,
}

/// Why the child of a native restart was not taken on.
#[derive(Debug, thiserror::Error)]
pub enum NativeChildError {
    #[error("pid {pid} is gone")]
    Gone { pid: u32 },
    #[error("pid {parent} is not an obproxy of this agent")]
    UnknownParent { parent: u32 },
    #[error("pid {pid} was not forked by pid {parent} (its parent is pid {found})")]
    NotItsChild { pid: u32, parent: u32, found: u32 },
    #[error("pid {pid} does not hold the SQL listener socket(s) {inodes:?}")]
    NoListener { pid: u32, inodes: Vec<u64> },
    #[error("pid {pid} started before pid {parent}, so it cannot be its child")]
    Older { pid: u32, parent: u32 },
    #[error("pid {pid} runs in {found}, not in the obproxy home {home}")]
    ElsewhereHome {
        pid: u32,
        found: String,
        home: String,
    },
    #[error("pid {pid} runs {found}, not {expected} as its parent does")]
    OtherExe {
        pid: u32,
        found: String,
        expected: String,
    },
}

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

/// A confirmed process and its version, for the supervisor to adopt.
#[derive(Debug)]
pub struct Adoption {
    pub found: Found,
    pub version: String,
}

pub(crate) enum Msg {
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
    /// Time to write the whole state file after a promotion written only
    /// into the journal (nothing to do if a write came since).
    Compact,
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
    /// A HOT restart's handover in one step, so that nothing waits between
    /// its parts: `pid` promoted (the previous process, or `old` if none
    /// was serving any more, drains with `drain`), the operation's DRAINING
    /// phase published with `note(old)`, and SIGUSR1 sent to the old process
    /// (one that is gone already is not an error). Answers with the old pid;
    /// `exit` is sent its exit (waited for from before the signal, so an
    /// exit that comes at once is not missed).
    Handover {
        op: String,
        pid: u32,
        old: u32,
        drain: Drain,
        note: Box<dyn FnOnce(u32) -> String + Send>,
        exit: oneshot::Sender<Exit>,
        reply: oneshot::Sender<Result<u32, StepError>>,
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

/// The supervisor's end of the channels a [`Handle`] sends on.
pub(crate) struct Inbox {
    /// Supervision: its own messages (timers, exits, spawns) come back here.
    pub(crate) tx: mpsc::UnboundedSender<Msg>,
    pub(crate) rx: mpsc::UnboundedReceiver<Msg>,
    pub(crate) calls: mpsc::Receiver<Msg>,
    pub(crate) submits: mpsc::Receiver<Msg>,
    /// Where the status snapshot is published.
    pub(crate) status_tx: watch::Sender<Arc<Status>>,
    /// Woken when someone asks for a status (see [`Handle::status_asked`]).
    pub(crate) asked: Arc<tokio::sync::Notify>,
}

/// The channels between the supervisor and its handles, `initial` the first
/// status published.
pub(crate) fn channels(initial: Status) -> (Handle, Inbox) {
    let (tx, rx) = mpsc::unbounded_channel();
    let (calls_tx, calls) = mpsc::channel(CALL_QUEUE);
    let (submits_tx, submits) = mpsc::channel(SUBMIT_QUEUE);
    let (status_tx, status) = watch::channel(Arc::new(initial));
    let asked = Arc::new(tokio::sync::Notify::new());
    let handle = Handle {
        tx: tx.clone(),
        calls: calls_tx,
        submits: submits_tx,
        status,
        asked: asked.clone(),
    };
    (
        handle,
        Inbox {
            tx,
            rx,
            calls,
            submits,
            status_tx,
            asked,
        },
    )
}

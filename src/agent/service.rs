//! The `odp.agent.v1.Agent` gRPC service: it admits the caller (the guard),
//! validates and translates requests into supervisor calls ([`requests`]),
//! audits every mutating call, and maps domain results back into proto. No
//! decisions are made here.
pub mod inspect;
pub mod requests;

use std::{
    pin::Pin,
    sync::Arc,
    time::{Duration, SystemTime},
};

use futures::{Stream, StreamExt};
use tokio::sync::watch;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::{
    agent::{
        config::AgentConfig,
        listeners, obproxy,
        operation_log::{self, Kind, OnAdmit, Phase},
        process_table::ProxyState,
        sampling::Usage,
        status_report::{Report, Reporter},
        supervisor_protocol::{CallError, Handle, SubmitError},
    },
    common::{change_feed::Watcher, error_chain::describe},
    proto::agent as pb,
    security::{
        audit::Details,
        guard::{self, Call, Guard},
    },
};

/// What the audit log names as the target of an agent's calls: its own ODP.
const TARGET: &str = "local";
/// How long GetStatus waits for a new serving binary's digest.
const DIGEST_WAIT: Duration = Duration::from_secs(2);

pub struct AgentService {
    sup: Handle,
    reporter: Reporter,
    config: Arc<AgentConfig>,
    guard: Guard,
}

/// A mutating request: its RPC name and what the audit log and the
/// operation need from it.
trait Mutation {
    const RPC: &'static str;
    fn request_id(&self) -> &str;
    fn wait(&self) -> bool;
}

macro_rules! mutation {
    ($t:ty, $rpc:literal) => {
        impl Mutation for $t {
            const RPC: &'static str = $rpc;
            fn request_id(&self) -> &str {
                &self.request_id
            }
            fn wait(&self) -> bool {
                self.wait
            }
        }
    };
}
mutation!(pb::StartRequest, "Start");
mutation!(pb::StopRequest, "Stop");
mutation!(pb::RestartRequest, "Restart");

impl AgentService {
    pub fn new(sup: Handle, reporter: Reporter, config: Arc<AgentConfig>, guard: Guard) -> Self {
        Self {
            sup,
            reporter,
            config,
            guard,
        }
    }

    /// Admits the caller (authentication before validation: an unknown
    /// caller learns nothing about its arguments), validates, submits, then
    /// waits if asked. The supervisor writes the audit line of an admitted
    /// operation in the step that admits it, so a caller that hangs up at
    /// any point cannot leave it unrecorded, and a line that cannot be
    /// written refuses it; a call that is not admitted is recorded here.
    async fn mutate<T: Mutation>(
        &self,
        request: Request<T>,
        validate: impl FnOnce(&T) -> Result<operation_log::Request, Status>,
    ) -> Result<Response<pb::Operation>, Status> {
        let request_id = request.get_ref().request_id().to_string();
        let caller = self.guard.write(&request, T::RPC, TARGET, &request_id)?;
        let call = Call {
            caller: &caller,
            rpc: T::RPC,
            target: TARGET,
            request_id: &request_id,
        };
        let r = request.into_inner();
        let op = match validate(&r) {
            Ok(op) => op,
            Err(e) => {
                self.guard.record(&call, Vec::new(), &e);
                return Err(e);
            }
        };
        let details = self.details(&op);
        let admit = self.guard.admission(&call, details.clone());
        let mut rx = match self.submit(op, admit).await {
            Ok(rx) => rx,
            Err(SubmitError::NotRecorded(reason)) => return Err(guard::not_recorded(&reason)),
            Err(e) => {
                let status = submit_status(e);
                self.guard.record(&call, details, &status);
                return Err(status);
            }
        };
        if r.wait() {
            let _ = rx.wait_for(operation_log::Operation::is_finished).await;
        }
        let op = rx.borrow().clone();
        Ok(Response::new(operation_pb(&op)))
    }

    /// What the audit line says was asked: for a restart, its mode, and for
    /// a hot one the binary and drain window it will use.
    fn details(&self, op: &operation_log::Request) -> Details {
        let cfg = &self.config.obproxy;
        match op.kind {
            Kind::RestartHot => vec![
                ("mode", "RESTART_MODE_HOT".into()),
                (
                    "binary",
                    op.binary
                        .as_ref()
                        .map_or(cfg.binary.as_path(), |b| b.path())
                        .display()
                        .to_string()
                        .into(),
                ),
                (
                    "exit_timeout",
                    humantime::format_duration(
                        op.exit_timeout.unwrap_or(cfg.hot_upgrade_exit_timeout),
                    )
                    .to_string()
                    .into(),
                ),
            ],
            Kind::RestartForce => vec![("mode", "RESTART_MODE_FORCE".into())],
            Kind::Start | Kind::Stop | Kind::Respawn | Kind::TakeOver | Kind::AdoptNative => {
                Vec::new()
            }
        }
    }

    async fn submit(
        &self,
        request: operation_log::Request,
        admit: OnAdmit,
    ) -> Result<watch::Receiver<operation_log::Operation>, SubmitError> {
        let span = tracing::info_span!("rpc", kind = request.kind.name(), request_id = ?request.request_id);
        // Instrumented, not entered: an entered span held across an await
        // would leak into whatever else runs on this thread meanwhile.
        self.sup
            .submit_audited(request, admit)
            .instrument(span)
            .await
    }
}

#[tonic::async_trait]
impl pb::agent_server::Agent for AgentService {
    async fn get_status(
        &self,
        request: Request<pb::GetStatusRequest>,
    ) -> Result<Response<pb::ProxyStatus>, Status> {
        self.guard.read(&request, "GetStatus")?;
        let skip_sample = request.get_ref().skip_sample;
        // The serving binary's digest, read once per file: a new binary's
        // first status waits a little for it rather than show none (before
        // the status is taken, so the wait does not make it stale).
        let serving = self.reporter.report_now().status.serving.clone();
        if let Some(p) = serving {
            obproxy::digest::settle(&[&p.binary], DIGEST_WAIT).await;
        }
        let report = if skip_sample {
            self.reporter.report_now()
        } else {
            self.reporter.report().await
        };
        Ok(Response::new(status_pb(&report)))
    }

    async fn start(
        &self,
        request: Request<pb::StartRequest>,
    ) -> Result<Response<pb::Operation>, Status> {
        self.mutate(request, requests::start).await
    }

    async fn stop(
        &self,
        request: Request<pb::StopRequest>,
    ) -> Result<Response<pb::Operation>, Status> {
        self.mutate(request, requests::stop).await
    }

    async fn restart(
        &self,
        request: Request<pb::RestartRequest>,
    ) -> Result<Response<pb::Operation>, Status> {
        self.mutate(request, |r| requests::restart(r, &self.config.obproxy))
            .await
    }

    async fn inspect_binary(
        &self,
        request: Request<pb::InspectBinaryRequest>,
    ) -> Result<Response<pb::BinaryInspection>, Status> {
        // It runs the file (`-V`): an operator's call, audited.
        const RPC: &str = "InspectBinary";
        let caller = self.guard.write(&request, RPC, TARGET, "")?;
        let call = Call {
            caller: &caller,
            rpc: RPC,
            target: TARGET,
            request_id: "",
        };
        let cfg = &self.config.obproxy;
        let (exe, configured) = match inspect::resolve(cfg, &request.get_ref().binary) {
            Ok(found) => found,
            Err(e) => {
                self.guard.record(&call, Vec::new(), &e);
                return Err(e);
            }
        };
        let path = exe.path().display().to_string();
        let admit = self
            .guard
            .admission(&call, vec![("binary", path.clone().into())]);
        admit(&path, false).map_err(|reason| guard::not_recorded(&reason))?;
        let inspection = inspect::inspect(cfg, exe, configured).await?;
        Ok(Response::new(inspection))
    }

    async fn get_operation(
        &self,
        request: Request<pb::GetOperationRequest>,
    ) -> Result<Response<pb::Operation>, Status> {
        self.guard.read(&request, "GetOperation")?;
        let id = requests::operation_id(&request.into_inner().id)?;
        let op = self
            .sup
            .operation(id.clone())
            .await
            .map_err(call_status)?
            .ok_or_else(|| Status::not_found(format!("id: no operation {id:?}")))?;
        Ok(Response::new(operation_pb(&op)))
    }

    type WatchOperationStream = Pin<Box<dyn Stream<Item = Result<pb::Operation, Status>> + Send>>;

    async fn watch_operation(
        &self,
        request: Request<pb::WatchOperationRequest>,
    ) -> Result<Response<Self::WatchOperationStream>, Status> {
        self.guard.read(&request, "WatchOperation")?;
        let id = requests::operation_id(&request.into_inner().id)?;
        let watcher = self
            .sup
            .watch_operation(id.clone())
            .await
            .map_err(call_status)?
            .ok_or_else(|| Status::not_found(format!("id: no operation {id:?}")))?;
        Ok(Response::new(Box::pin(operation_stream(watcher))))
    }

    type WatchStatusStream = Pin<Box<dyn Stream<Item = Result<pb::ProxyStatus, Status>> + Send>>;

    async fn watch_status(
        &self,
        request: Request<pb::WatchStatusRequest>,
    ) -> Result<Response<Self::WatchStatusStream>, Status> {
        self.guard.read(&request, "WatchStatus")?;
        let heartbeat = requests::heartbeat(request.get_ref())?;
        Ok(Response::new(Box::pin(status_stream(
            self.reporter.clone(),
            heartbeat,
        ))))
    }
}

/// The status now, then at every change and after every `heartbeat` of
/// silence; ends when the agent shuts down. A change goes out at once, with
/// the usage sampled last (a watcher must not see a state late because a
/// sample was being taken); the first status and every heartbeat carry usage
/// no older than the sampler's maximum age.
fn status_stream(
    reporter: Reporter,
    heartbeat: Duration,
) -> impl Stream<Item = Result<pb::ProxyStatus, Status>> {
    let changes = reporter.changes();
    futures::stream::unfold(
        (reporter, changes, true),
        move |(reporter, mut changes, first)| async move {
            let changed = if first {
                false
            } else {
                tokio::select! {
                    changed = changes.changed() => { changed.ok()?; true }
                    _ = tokio::time::sleep(heartbeat) => false,
                }
            };
            changes.mark_unchanged();
            let report = if changed {
                reporter.report_now()
            } else {
                reporter.report().await
            };
            Some((Ok(status_pb(&report)), (reporter, changes, false)))
        },
    )
}

/// Every change of the operation, ending with its final state; a watcher that
/// falls too far behind gets RESOURCE_EXHAUSTED saying how far, never a gap.
fn operation_stream(
    watcher: Watcher<operation_log::Operation>,
) -> impl Stream<Item = Result<pb::Operation, Status>> {
    watcher
        .until(operation_log::Operation::is_finished)
        .map(|change| match change {
            Ok(op) => Ok(operation_pb(&op)),
            Err(behind) => Err(Status::resource_exhausted(format!(
                "WatchOperation: {behind}"
            ))),
        })
}

fn call_status(e: CallError) -> Status {
    match e {
        CallError::Overloaded(full) => Status::resource_exhausted(full.to_string()),
        CallError::ShuttingDown => Status::unavailable(e.to_string()),
    }
}

fn submit_status(e: SubmitError) -> Status {
    match &e {
        SubmitError::Overloaded(full) => Status::resource_exhausted(full.to_string()),
        SubmitError::Log(operation_log::LogError::Busy { .. })
        | SubmitError::NotServing { .. }
        | SubmitError::ListenersLost { .. } => Status::failed_precondition(e.to_string()),
        SubmitError::Log(operation_log::LogError::RequestIdReused { .. }) => {
            Status::already_exists(e.to_string())
        }
        SubmitError::ShuttingDown => Status::unavailable(e.to_string()),
        // A full disk is a resource running out; a read-only or failing one
        // must be fixed first. Either way nothing was done.
        SubmitError::Unrecorded(source) if source.is_storage_full() => {
            Status::resource_exhausted(describe(&e))
        }
        SubmitError::Unrecorded(_) => Status::failed_precondition(describe(&e)),
        SubmitError::NotRecorded(reason) => guard::not_recorded(reason),
    }
}

fn timestamp(t: SystemTime) -> prost_types::Timestamp {
    t.into()
}

fn duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

pub fn operation_pb(op: &operation_log::Operation) -> pb::Operation {
    pb::Operation {
        id: op.id.clone(),
        kind: match op.kind {
            Kind::Start => pb::OperationKind::Start,
            Kind::Stop => pb::OperationKind::Stop,
            Kind::RestartHot => pb::OperationKind::RestartHot,
            Kind::RestartForce => pb::OperationKind::RestartForce,
            Kind::Respawn => pb::OperationKind::Respawn,
            Kind::AdoptNative => pb::OperationKind::AdoptNative,
            Kind::TakeOver => pb::OperationKind::TakeOver,
        } as i32,
        state: match op.state {
            operation_log::State::Running => pb::OperationState::Running,
            operation_log::State::Succeeded => pb::OperationState::Succeeded,
            operation_log::State::Failed => pb::OperationState::Failed,
        } as i32,
        phase: match op.phase {
            Phase::Queued => pb::OperationPhase::Queued,
            Phase::Binding => pb::OperationPhase::Binding,
            Phase::Spawning => pb::OperationPhase::Spawning,
            Phase::WaitingReady => pb::OperationPhase::WaitingReady,
            Phase::Draining => pb::OperationPhase::Draining,
            Phase::Stopping => pb::OperationPhase::Stopping,
            Phase::Killing => pb::OperationPhase::Killing,
            Phase::ClosingListeners => pb::OperationPhase::ClosingListeners,
            Phase::Done => pb::OperationPhase::Done,
        } as i32,
        error: op.error.clone().unwrap_or_default(),
        request_id: op.request_id.clone().unwrap_or_default(),
        created_at: Some(timestamp(op.created_at)),
        finished_at: op.finished_at.map(timestamp),
        pid: op.pid.unwrap_or(0),
        previous_pid: op.previous_pid.unwrap_or(0),
        events: op.events.clone(),
        proxy_state: op.proxy_state.map_or(0, |s| state_pb(s) as i32),
    }
}

fn state_pb(state: ProxyState) -> pb::ProxyState {
    match state {
        ProxyState::Running => pb::ProxyState::Running,
        ProxyState::Stopped => pb::ProxyState::Stopped,
        ProxyState::Starting => pb::ProxyState::Starting,
        ProxyState::Stopping => pb::ProxyState::Stopping,
        ProxyState::Restarting => pb::ProxyState::Restarting,
        ProxyState::Upgrading => pb::ProxyState::Upgrading,
        ProxyState::Unavailable => pb::ProxyState::Unavailable,
    }
}

fn process_pb(
    p: &crate::agent::process_table::ProcessInfo,
    usage: Option<Usage>,
) -> pb::ProxyProcess {
    pb::ProxyProcess {
        pid: p.pid,
        version: p.version.clone(),
        binary: p.binary.display().to_string(),
        binary_sha256: obproxy::digest::cached(&p.binary).unwrap_or_default(),
        started_at: Some(timestamp(p.started_at)),
        uptime: Some(duration(p.started_at.elapsed().unwrap_or_default())),
        usage: usage.map(|u| pb::ProcessUsage {
            cpu_percent: u.cpu_percent,
            memory_bytes: u.memory_bytes,
        }),
        open_connections: usage.map_or(0, |u| u.open_connections),
        binary_info: p.binary_info.as_ref().map(|i| pb::BinaryInfo {
            version: i.version.clone(),
            build: i.build.clone(),
            revision: i.revision.clone(),
            build_time: i.build_time.clone(),
            md5: i.md5.clone(),
        }),
    }
}

pub fn status_pb(report: &Report) -> pb::ProxyStatus {
    let s = &report.status;
    let serving = s.serving.as_ref();
    pb::ProxyStatus {
        state: state_pb(s.state) as i32,
        pid: serving.map_or(0, |p| p.pid),
        version: serving.map_or_else(String::new, |p| p.version.clone()),
        uptime: serving.map(|p| duration(p.started_at.elapsed().unwrap_or_default())),
        restart_count: s.restart_count,
        listeners: s
            .listeners
            .iter()
            .map(|(kind, addr, inode)| pb::Listener {
                address: addr.to_string(),
                socket_inode: *inode,
                kind: match kind {
                    listeners::Kind::Sql => pb::ListenerKind::Sql,
                    listeners::Kind::Rpc => pb::ListenerKind::Rpc,
                } as i32,
            })
            .collect(),
        serving: serving.map(|p| process_pb(p, report.usage(p.pid))),
        draining: s
            .draining
            .iter()
            .map(|(p, deadline)| pb::DrainingProcess {
                process: Some(process_pb(p, report.usage(p.pid))),
                deadline: Some(timestamp(*deadline)),
            })
            .collect(),
        operation: s.operation.as_ref().map(operation_pb),
        desired_running: s.desired_running,
        last_exit: s.last_exit.clone().unwrap_or_default(),
        notices: s.notices.clone(),
        usage_age: report.usage_age().map(duration),
        binary: serving.map_or_else(String::new, |p| p.binary.display().to_string()),
        binary_sha256: serving
            .and_then(|p| obproxy::digest::cached(&p.binary))
            .unwrap_or_default(),
    }
}

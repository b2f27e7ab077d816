//! `odpctl`: the operator's CLI for the coordinator (cluster operations and
//! tasks) and for single agents, over TLS with a client certificate and/or a
//! bearer token when the daemon asks for them.
use std::{collections::HashMap, process::ExitCode, time::Duration};

use anyhow::{Context, Result, bail};
use clap::Parser;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use odp_agent::{
    command_line::odpctl::{AgentCmd, Cli, ClusterCmd, Output, TaskCmd, TlsArgs, Top},
    proto::{
        agent::{self as apb, agent_client::AgentClient},
        coordinator::{self as pb, coordinator_client::CoordinatorClient},
    },
};
use serde_json::{Value, json};
use tonic::{
    metadata::{AsciiMetadataValue, MetadataValue},
    service::{Interceptor, interceptor::InterceptedService},
    transport::Channel,
};

/// Where a bearer token comes from: the environment only, never a flag, so
/// it stays out of shell history and `ps`.
const TOKEN_ENV: &str = "ODPCTL_TOKEN";

/// A connection to a daemon, every call carrying the token if there is one.
type Conn = InterceptedService<Channel, BearerToken>;

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Clone)]
struct BearerToken(Option<AsciiMetadataValue>);

impl BearerToken {
    fn from_env() -> Result<Self> {
        let Some(token) = std::env::var_os(TOKEN_ENV) else {
            return Ok(Self(None));
        };
        let token = token
            .into_string()
            .ok()
            .filter(|t| !t.trim().is_empty())
            .with_context(|| format!("{TOKEN_ENV} is empty or not UTF-8"))?;
        let value: AsciiMetadataValue = MetadataValue::try_from(format!("Bearer {}", token.trim()))
            .with_context(|| format!("{TOKEN_ENV} is not a printable ASCII token"))?;
        Ok(Self(Some(value)))
    }
}

impl Interceptor for BearerToken {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("odpctl: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("odpctl: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Connects to `addr`: `unix:/path` is the daemon's local socket (the
/// kernel tells it who calls); anything else is `host:port`, over TLS if
/// `--cacert` is given.
async fn connect(addr: &str, tls: &TlsArgs) -> Result<Conn> {
    if let Some(path) = addr.strip_prefix("unix:") {
        if tls.cacert.is_some() {
            bail!("{addr}: the local socket speaks no TLS; drop --cacert");
        }
        let path = std::path::PathBuf::from(path);
        let shown = path.display().to_string();
        let channel = tonic::transport::Endpoint::from_static("http://localhost")
            .connect_timeout(Duration::from_secs(5))
            .connect_with_connector(tower::service_fn(move |_| {
                let path = path.clone();
                async move {
                    tokio::net::UnixStream::connect(path)
                        .await
                        .map(hyper_util::rt::TokioIo::new)
                }
            }))
            .await
            .with_context(|| format!("cannot connect to the local socket {shown}"))?;
        return Ok(InterceptedService::new(channel, BearerToken::from_env()?));
    }
    let scheme = if tls.cacert.is_some() {
        "https"
    } else {
        "http"
    };
    let mut endpoint = tonic::transport::Endpoint::from_shared(format!("{scheme}://{addr}"))
        .with_context(|| format!("bad address {addr:?}"))?
        .connect_timeout(Duration::from_secs(5));
    if let Some(ca) = &tls.cacert {
        let config = odp_agent::security::tls::client(
            ca,
            tls.cert.as_deref().zip(tls.key.as_deref()),
            tls.tls_domain.as_deref(),
        )?;
        endpoint = endpoint.tls_config(config).context("TLS settings")?;
    }
    let channel = endpoint
        .connect()
        .await
        .with_context(|| format!("cannot connect to {addr}"))?;
    Ok(InterceptedService::new(channel, BearerToken::from_env()?))
}

fn rpc_error(status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{}: {}", status.code(), status.message())
}

fn proto_duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

/// `--batch 3` or `--batch 25%`.
fn batch(spec: &Option<String>) -> Result<(u32, u32)> {
    let Some(spec) = spec else { return Ok((0, 0)) };
    if let Some(pct) = spec.strip_suffix('%') {
        let pct: u32 = pct
            .trim()
            .parse()
            .with_context(|| format!("--batch {spec:?}"))?;
        if pct == 0 || pct > 100 {
            bail!("--batch {spec}: a percentage from 1% to 100%");
        }
        return Ok((0, pct));
    }
    let n: u32 = spec
        .trim()
        .parse()
        .with_context(|| format!("--batch {spec:?}: a count or N%"))?;
    if n == 0 {
        bail!("--batch 0: at least one ODP per batch");
    }
    Ok((n, 0))
}

/// A cluster operation request: the fields every one shares (the protocol
/// keeps them flat, under the names users know), plus any of its own.
macro_rules! cluster_request {
    ($ty:ident, $cluster:expr, $rollout:expr $(, $field:ident: $value:expr)*) => {{
        let (batch_size, batch_percent) = batch(&$rollout.batch)?;
        pb::$ty {
            cluster: $cluster,
            request_id: $rollout.request_id.clone(),
            batch_size,
            batch_percent,
            max_failures: $rollout.max_failures,
            pause: $rollout.pause.map(proto_duration),
            $($field: $value,)*
        }
    }};
}

/// Returns whether the command succeeded (exit 0) or a task/operation failed.
async fn run(cli: Cli) -> Result<bool> {
    let json_out = cli.output == Output::Json;
    match cli.command {
        Top::Cluster(cmd) => {
            let mut c = CoordinatorClient::new(connect(&cli.coordinator, &cli.tls).await?);
            match cmd {
                ClusterCmd::List => {
                    let r = c
                        .list_clusters(pb::ListClustersRequest {})
                        .await
                        .map_err(rpc_error)?
                        .into_inner();
                    if json_out {
                        let v: Vec<Value> = r
                            .clusters
                            .iter()
                            .map(|c| json!({"name": c.name, "agents": c.agents}))
                            .collect();
                        println!("{}", serde_json::to_string_pretty(&v)?);
                    } else {
                        for cl in r.clusters {
                            println!("{:<20} {}", cl.name, cl.agents.join(" "));
                        }
                    }
                    Ok(true)
                }
                ClusterCmd::Status { cluster } => {
                    let s = c
                        .get_cluster_status(pb::GetClusterStatusRequest { cluster })
                        .await
                        .map_err(rpc_error)?
                        .into_inner();
                    if json_out {
                        println!("{}", serde_json::to_string_pretty(&cluster_json(&s))?);
                    } else {
                        print_cluster(&s);
                    }
                    Ok(s.odps.iter().all(|o| o.error.is_empty()))
                }
                ClusterCmd::Stop { cluster, rollout } => {
                    let task = c
                        .stop_all(cluster_request!(StopAllRequest, cluster, rollout))
                        .await;
                    follow_answer(&mut c, task, rollout.detach, json_out).await
                }
                ClusterCmd::Start { cluster, rollout } => {
                    let task = c
                        .start_all(cluster_request!(StartAllRequest, cluster, rollout))
                        .await;
                    follow_answer(&mut c, task, rollout.detach, json_out).await
                }
                ClusterCmd::Restart {
                    cluster,
                    force,
                    exit_timeout,
                    rollout,
                } => {
                    let mode = if force {
                        apb::RestartMode::Force
                    } else {
                        apb::RestartMode::Hot
                    };
                    let request = cluster_request!(
                        RestartAllRequest,
                        cluster,
                        rollout,
                        mode: mode as i32,
                        exit_timeout: exit_timeout.map(proto_duration)
                    );
                    let task = c.restart_all(request).await;
                    follow_answer(&mut c, task, rollout.detach, json_out).await
                }
            }
        }
        Top::Task(cmd) => {
            let mut c = CoordinatorClient::new(connect(&cli.coordinator, &cli.tls).await?);
            match cmd {
                TaskCmd::List { cluster, limit } => {
                    let r = c
                        .list_tasks(pb::ListTasksRequest {
                            cluster: cluster.unwrap_or_default(),
                            limit,
                        })
                        .await
                        .map_err(rpc_error)?
                        .into_inner();
                    if json_out {
                        let v: Vec<Value> = r.tasks.iter().map(task_json).collect();
                        println!("{}", serde_json::to_string_pretty(&v)?);
                    } else {
                        println!(
                            "{:<38} {:<10} {:<12} {:<10} {:>5}  CREATED",
                            "ID", "CLUSTER", "KIND", "STATE", "ODPS"
                        );
                        for t in &r.tasks {
                            println!(
                                "{:<38} {:<10} {:<12} {:<10} {:>5}  {}",
                                t.id,
                                t.cluster,
                                kind_name(t),
                                short(t.state().as_str_name(), "TASK_STATE_"),
                                t.subtasks.len(),
                                t.created_at.as_ref().map(timestamp).unwrap_or_default()
                            );
                        }
                    }
                    Ok(true)
                }
                TaskCmd::Show { id } => {
                    let t = c
                        .get_task(pb::GetTaskRequest { id })
                        .await
                        .map_err(rpc_error)?
                        .into_inner();
                    print_task(&t, json_out)?;
                    Ok(t.state() != pb::TaskState::Failed)
                }
                TaskCmd::Watch { id } => {
                    let t = c
                        .get_task(pb::GetTaskRequest { id })
                        .await
                        .map_err(rpc_error)?
                        .into_inner();
                    follow(&mut c, t, false, json_out).await
                }
                TaskCmd::Cancel { id } => {
                    let t = c
                        .cancel_task(pb::CancelTaskRequest { id })
                        .await
                        .map_err(rpc_error)?
                        .into_inner();
                    print_task(&t, json_out)?;
                    Ok(true)
                }
                TaskCmd::Retry { id, detach } => {
                    let t = c
                        .retry_task(pb::RetryTaskRequest { id })
                        .await
                        .map_err(rpc_error)?
                        .into_inner();
                    follow(&mut c, t, detach, json_out).await
                }
            }
        }
        Top::Agent(cmd) => agent(cmd, &cli.tls, json_out).await,
    }
}

/// The coordinator's answer to a cluster operation, followed to its end.
async fn follow_answer(
    c: &mut CoordinatorClient<Conn>,
    answer: Result<tonic::Response<pb::Task>, tonic::Status>,
    detach: bool,
    json_out: bool,
) -> Result<bool> {
    let task = answer.map_err(rpc_error)?.into_inner();
    follow(c, task, detach, json_out).await
}

/// Follows a task with a live progress display per ODP (unless detached or
/// JSON), then prints it; true when it succeeded.
async fn follow(
    c: &mut CoordinatorClient<Conn>,
    task: pb::Task,
    detach: bool,
    json_out: bool,
) -> Result<bool> {
    if detach || task.state() != pb::TaskState::Running {
        print_task(&task, json_out)?;
        return Ok(matches!(
            task.state(),
            pb::TaskState::Running | pb::TaskState::Succeeded
        ));
    }
    let progress = (!json_out).then(|| Progress::new(&task));
    let id = task.id.clone();
    let mut last = task;
    // A watch that fell behind (RESOURCE_EXHAUSTED) is opened again: the
    // display needs only the current state.
    'watch: while last.state() == pb::TaskState::Running {
        let mut stream = c
            .watch_task(pb::WatchTaskRequest { id: id.clone() })
            .await
            .map_err(rpc_error)?
            .into_inner();
        loop {
            match stream.message().await {
                Ok(Some(t)) => {
                    if let Some(p) = &progress {
                        p.update(&t);
                    }
                    last = t;
                }
                Ok(None) => break 'watch,
                Err(s) if s.code() == tonic::Code::ResourceExhausted => continue 'watch,
                Err(s) => return Err(rpc_error(s)),
            }
        }
    }
    if let Some(p) = progress {
        p.finish();
    }
    print_task(&last, json_out)?;
    Ok(last.state() == pb::TaskState::Succeeded)
}

struct Progress {
    multi: MultiProgress,
    overall: ProgressBar,
    bars: HashMap<String, ProgressBar>,
}

impl Progress {
    fn new(task: &pb::Task) -> Self {
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
        let overall = multi.add(ProgressBar::new(task.subtasks.len() as u64));
        overall.set_style(
            ProgressStyle::with_template("{prefix:.bold} [{bar:30}] {pos}/{len} ODPs  {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        overall.set_prefix(format!("{} {}", kind_name(task), task.cluster));
        let style = ProgressStyle::with_template("  {spinner} {prefix:<24} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner());
        let bars = task
            .subtasks
            .iter()
            .map(|s| {
                let bar = multi.add(ProgressBar::new_spinner());
                bar.set_style(style.clone());
                bar.set_prefix(s.agent.clone());
                bar.enable_steady_tick(Duration::from_millis(120));
                (s.agent.clone(), bar)
            })
            .collect();
        let p = Self {
            multi,
            overall,
            bars,
        };
        p.update(task);
        p
    }

    fn update(&self, t: &pb::Task) {
        let done = t
            .subtasks
            .iter()
            .filter(|s| {
                !matches!(
                    s.state(),
                    pb::SubtaskState::Pending | pb::SubtaskState::Running
                )
            })
            .count();
        self.overall.set_position(done as u64);
        self.overall.set_message(format!(
            "batch {}/{}  {}",
            t.current_batch,
            t.batches,
            short(t.state().as_str_name(), "TASK_STATE_")
        ));
        for s in &t.subtasks {
            if let Some(bar) = self.bars.get(&s.agent) {
                let mut msg = format!(
                    "batch {} {}",
                    s.batch,
                    short(s.state().as_str_name(), "SUBTASK_STATE_")
                );
                if !s.last_error.is_empty() {
                    msg.push_str(&format!("  {}", s.last_error));
                }
                bar.set_message(msg);
                if !matches!(
                    s.state(),
                    pb::SubtaskState::Pending | pb::SubtaskState::Running
                ) && !bar.is_finished()
                {
                    bar.finish();
                }
            }
        }
    }

    fn finish(self) {
        for bar in self.bars.values() {
            bar.finish();
        }
        self.overall.finish();
        let _ = self.multi.clear();
    }
}

fn short<'a>(name: &'a str, prefix: &str) -> &'a str {
    name.trim_start_matches(prefix)
}

fn kind_name(t: &pb::Task) -> String {
    match t.kind() {
        pb::TaskKind::StopAll => "stop".into(),
        pb::TaskKind::StartAll => "start".into(),
        pb::TaskKind::RestartAll => match t.mode() {
            apb::RestartMode::Force => "restart-force".into(),
            _ => "restart-hot".into(),
        },
        pb::TaskKind::Unspecified => "?".into(),
    }
}

fn timestamp(t: &prost_types::Timestamp) -> String {
    let st = std::time::UNIX_EPOCH + Duration::new(t.seconds.max(0) as u64, t.nanos.max(0) as u32);
    humantime::format_rfc3339_seconds(st).to_string()
}

fn print_task(t: &pb::Task, json_out: bool) -> Result<()> {
    if json_out {
        println!("{}", serde_json::to_string_pretty(&task_json(t))?);
        return Ok(());
    }
    println!(
        "task {}  {} {}  {}  batches {}/{}",
        t.id,
        kind_name(t),
        t.cluster,
        short(t.state().as_str_name(), "TASK_STATE_"),
        t.current_batch,
        t.batches
    );
    if !t.error.is_empty() {
        println!("error: {}", t.error);
    }
    println!(
        "{:<24} {:>5} {:<12} {:>8} {:>8}  ERROR",
        "ODP", "BATCH", "STATE", "ATTEMPTS", "PID"
    );
    for s in &t.subtasks {
        println!(
            "{:<24} {:>5} {:<12} {:>8} {:>8}  {}",
            s.agent,
            s.batch,
            short(s.state().as_str_name(), "SUBTASK_STATE_"),
            s.attempts,
            s.pid,
            s.last_error
        );
    }
    Ok(())
}

fn task_json(t: &pb::Task) -> Value {
    json!({
        "id": t.id,
        "cluster": t.cluster,
        "kind": t.kind().as_str_name(),
        "mode": t.mode().as_str_name(),
        "state": t.state().as_str_name(),
        "error": t.error,
        "request_id": t.request_id,
        "batches": t.batches,
        "current_batch": t.current_batch,
        "cancel_requested": t.cancel_requested,
        "created_at": t.created_at.as_ref().map(timestamp),
        "finished_at": t.finished_at.as_ref().map(timestamp),
        "subtasks": t.subtasks.iter().map(|s| json!({
            "agent": s.agent,
            "state": s.state().as_str_name(),
            "batch": s.batch,
            "attempts": s.attempts,
            "pid": s.pid,
            "operation_id": s.operation_id,
            "last_error": s.last_error,
            "started_at": s.started_at.as_ref().map(timestamp),
            "finished_at": s.finished_at.as_ref().map(timestamp),
        })).collect::<Vec<_>>(),
    })
}

fn cluster_json(s: &pb::ClusterStatus) -> Value {
    json!({
        "cluster": s.cluster,
        "odps": s.odps.iter().map(|o| {
            let st = o.status.as_ref();
            json!({
                "agent": o.agent,
                "state": o.state().as_str_name(),
                "pid": o.pid,
                "version": o.version,
                "error": o.error,
                "uptime_seconds": st.and_then(|s| s.uptime.as_ref()).map(|u| u.seconds),
                "restart_count": st.map(|s| s.restart_count),
                "open_connections": st.and_then(|s| s.serving.as_ref()).map(|p| p.open_connections),
                "draining": st.map(|s| s.draining.len()),
            })
        }).collect::<Vec<_>>(),
    })
}

fn print_cluster(s: &pb::ClusterStatus) {
    println!(
        "{:<24} {:<12} {:>8} {:<10} {:>10} {:>8} {:>6} {:>8}  ERROR",
        "ODP", "STATE", "PID", "VERSION", "UPTIME", "RESTARTS", "CONNS", "DRAINING"
    );
    for o in &s.odps {
        let st = o.status.as_ref();
        let uptime = st
            .and_then(|s| s.uptime.as_ref())
            .map(|u| {
                humantime::format_duration(Duration::from_secs(u.seconds.max(0) as u64)).to_string()
            })
            .unwrap_or_default();
        println!(
            "{:<24} {:<12} {:>8} {:<10} {:>10} {:>8} {:>6} {:>8}  {}",
            o.agent,
            short(o.state().as_str_name(), "PROXY_STATE_"),
            o.pid,
            o.version,
            uptime,
            st.map(|s| s.restart_count).unwrap_or(0),
            st.and_then(|s| s.serving.as_ref())
                .map(|p| p.open_connections)
                .unwrap_or(0),
            st.map(|s| s.draining.len()).unwrap_or(0),
            o.error
        );
    }
}

async fn agent(cmd: AgentCmd, tls: &TlsArgs, json_out: bool) -> Result<bool> {
    let addr = match &cmd {
        AgentCmd::Status(a) | AgentCmd::Start(a) | AgentCmd::Stop(a) => a.addr.clone(),
        AgentCmd::Restart { addr, .. } => addr.addr.clone(),
    };
    let mut c = AgentClient::new(connect(&addr, tls).await?);
    let op = match cmd {
        AgentCmd::Status(_) => {
            let s = c
                .get_status(apb::GetStatusRequest {})
                .await
                .map_err(rpc_error)?
                .into_inner();
            let cs = pb::ClusterStatus {
                cluster: String::new(),
                odps: vec![pb::OdpStatus {
                    agent: addr,
                    state: s.state,
                    pid: s.pid,
                    version: s.version.clone(),
                    error: String::new(),
                    status: Some(s),
                    age: None,
                }],
            };
            if json_out {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&cluster_json(&cs)["odps"][0])?
                );
            } else {
                print_cluster(&cs);
            }
            return Ok(true);
        }
        AgentCmd::Start(_) => {
            c.start(apb::StartRequest {
                request_id: String::new(),
                wait: true,
            })
            .await
        }
        AgentCmd::Stop(_) => {
            c.stop(apb::StopRequest {
                request_id: String::new(),
                wait: true,
            })
            .await
        }
        AgentCmd::Restart {
            force,
            exit_timeout,
            binary,
            ..
        } => {
            c.restart(apb::RestartRequest {
                mode: if force {
                    apb::RestartMode::Force
                } else {
                    apb::RestartMode::Hot
                } as i32,
                exit_timeout: exit_timeout.map(proto_duration),
                request_id: String::new(),
                wait: true,
                binary: binary.unwrap_or_default(),
            })
            .await
        }
    }
    .map_err(rpc_error)?
    .into_inner();
    if json_out {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "id": op.id,
                "kind": op.kind().as_str_name(),
                "state": op.state().as_str_name(),
                "error": op.error,
                "pid": op.pid,
                "previous_pid": op.previous_pid,
                "events": op.events,
            }))?
        );
    } else {
        println!(
            "operation {}  {}  pid {} (was {})",
            op.id,
            short(op.state().as_str_name(), "OPERATION_STATE_"),
            op.pid,
            op.previous_pid
        );
        for e in &op.events {
            println!("  {e}");
        }
        if !op.error.is_empty() {
            println!("error: {}", op.error);
        }
    }
    Ok(op.state() == apb::OperationState::Succeeded)
}

//! `odpctl`: the operator's CLI for the coordinator (cluster operations and
//! tasks) and for single agents, over TLS with a client certificate and/or a
//! bearer token when the daemon asks for them.
#[path = "odpctl/render.rs"]
mod render;

use std::{process::ExitCode, time::Duration};

use anyhow::{Context, Result, bail};
use clap::Parser;
use odp_agent::{
    command_line::odpctl::{AgentCmd, Cli, ClusterCmd, Output, TaskCmd, TlsArgs, Top},
    proto::{
        agent::{self as apb, agent_client::AgentClient},
        coordinator::{self as pb, coordinator_client::CoordinatorClient},
    },
};
use render::{
    Progress, cluster_json, kind_name, print_cluster, print_task, short, task_json, timestamp,
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
                ClusterCmd::Upgrade {
                    cluster,
                    binary,
                    sha256,
                    canary,
                    canary_wait,
                    allow_downgrade,
                    exit_timeout,
                    rollout,
                } => {
                    let request = cluster_request!(
                        UpgradeAllRequest,
                        cluster,
                        rollout,
                        binary: binary,
                        binary_sha256: sha256,
                        canary_size: canary,
                        canary_wait: canary_wait.map(proto_duration),
                        exit_timeout: exit_timeout.map(proto_duration),
                        allow_downgrade: allow_downgrade
                    );
                    let task = c.upgrade_all(request).await;
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

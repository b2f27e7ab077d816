//! A local cluster for tests: several real agents (each with its stand-in)
//! and a real `odp-coordinator` on loopback.
use std::{
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::Arc,
};

use odp_agent::proto::coordinator::{self as pb, coordinator_client::CoordinatorClient};
use tonic::transport::Channel;

use super::{Agent, Log, Options, PATIENCE, log_field, spawn_logged};

pub const COORDINATOR: &str = env!("CARGO_BIN_EXE_odp-coordinator");
pub const ODPCTL: &str = env!("CARGO_BIN_EXE_odpctl");
pub const CLUSTER: &str = "test";

pub struct Cluster {
    pub agents: Vec<Agent>,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub coordinator: Child,
    pub addr: SocketAddr,
    pub log: Arc<Log>,
}

impl Cluster {
    pub async fn start(n: usize) -> Self {
        Self::start_with(n, Options::default()).await
    }

    /// `n` agents, each configured by `opts`.
    pub async fn start_with(n: usize, opts: Options) -> Self {
        let mut agents = Vec::new();
        for _ in 0..n {
            agents.push(Agent::start_with(opts.clone()).await);
        }
        Self::with_agents(agents, &[])
    }

    /// A coordinator over `agents` plus `extra` addresses (e.g. a dead one).
    pub fn with_agents(agents: Vec<Agent>, extra: &[String]) -> Self {
        Self::with_config(agents, extra, "")
    }

    /// As [`Cluster::with_agents`], with `more` TOML appended to the
    /// coordinator's configuration (e.g. a `[metrics]` section).
    pub fn with_config(agents: Vec<Agent>, extra: &[String], more: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("coordinator.toml");
        let addrs: Vec<String> = agents
            .iter()
            .map(|a| a.grpc.to_string())
            .chain(extra.iter().cloned())
            .collect();
        std::fs::write(
            &config,
            format!(
                r#"[server]
listen = "127.0.0.1:0"
{loopback}
[store]
path = "tasks.db"
[agents]
status_timeout = "3s"
[[clusters]]
name = "{CLUSTER}"
agents = {addrs:?}
{more}"#,
                loopback = super::open_loopback(more),
            ),
        )
        .unwrap();
        let (coordinator, addr, log) = spawn_coordinator(&config);
        Self {
            agents,
            dir,
            config,
            coordinator,
            addr,
            log,
        }
    }

    pub async fn client(&self) -> CoordinatorClient<Channel> {
        CoordinatorClient::connect(format!("http://{}", self.addr))
            .await
            .unwrap()
    }

    /// Follows a task to its end.
    pub async fn wait_task(&self, id: &str) -> pb::Task {
        self.watch_task_until(id, |_| false).await
    }

    /// Follows a task until `until` holds or it ends; `each` sees every update.
    pub async fn watch_task_until(&self, id: &str, until: impl Fn(&pb::Task) -> bool) -> pb::Task {
        let mut stream = self
            .client()
            .await
            .watch_task(pb::WatchTaskRequest { id: id.into() })
            .await
            .unwrap()
            .into_inner();
        let mut last = None;
        let watch = async {
            while let Some(t) = stream.message().await.unwrap() {
                let stop = until(&t) || t.state() != pb::TaskState::Running;
                last = Some(t);
                if stop {
                    break;
                }
            }
        };
        tokio::time::timeout(PATIENCE, watch)
            .await
            .expect("task did not get there in time");
        last.expect("no task update")
    }

    /// kill -9 the coordinator and start it again on the same store.
    pub fn crash_and_restart_coordinator(&mut self) {
        self.kill_coordinator();
        self.start_coordinator();
    }

    /// kill -9 the coordinator (its tasks stay in the store).
    pub fn kill_coordinator(&mut self) {
        let _ = self.coordinator.kill();
        let _ = self.coordinator.wait();
    }

    /// Starts the coordinator again on the same store.
    pub fn start_coordinator(&mut self) {
        let (child, addr, log) = spawn_coordinator(&self.config);
        self.coordinator = child;
        self.addr = addr;
        self.log = log;
    }

    pub fn logs(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// The coordinator's metrics endpoint, from its startup log.
    pub fn metrics_addr(&self) -> SocketAddr {
        let log = self.log.lock().unwrap();
        let addr = log.iter().find_map(|line| log_field(line, "metrics_addr"));
        addr.unwrap_or_else(|| panic!("no metrics_addr in the log:\n{}", log.join("\n")))
            .parse()
            .unwrap()
    }

    pub fn odpctl(&self, args: &[&str]) -> std::process::Output {
        Command::new(ODPCTL)
            .arg("--coordinator")
            .arg(self.addr.to_string())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.coordinator.kill();
        let _ = self.coordinator.wait();
    }
}

fn spawn_coordinator(config: &std::path::Path) -> (Child, SocketAddr, Arc<Log>) {
    let mut command = Command::new(COORDINATOR);
    command.arg("--config").arg(config).env("RUST_LOG", "info");
    spawn_logged(command, "coordinator")
}

//! A local cluster for tests: several real agents (each with its stand-in)
//! and a real `odp-coordinator` on loopback.
use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex, mpsc},
};

use odp_agent::proto::coordinator::{self as pb, coordinator_client::CoordinatorClient};
use tonic::transport::Channel;

use super::{Agent, Options, PATIENCE};

pub const COORDINATOR: &str = env!("CARGO_BIN_EXE_odp-coordinator");
pub const ODPCTL: &str = env!("CARGO_BIN_EXE_odpctl");
pub const CLUSTER: &str = "test";

pub struct Cluster {
    pub agents: Vec<Agent>,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub coordinator: Child,
    pub addr: SocketAddr,
    pub log: Arc<Mutex<Vec<String>>>,
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
[store]
path = "tasks.db"
[agents]
status_timeout = "3s"
[[clusters]]
name = "{CLUSTER}"
agents = {addrs:?}
"#
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
        let _ = self.coordinator.kill();
        let _ = self.coordinator.wait();
        let (child, addr, log) = spawn_coordinator(&self.config);
        self.coordinator = child;
        self.addr = addr;
        self.log = log;
    }

    pub fn logs(&self) -> String {
        self.log.lock().unwrap().join("\n")
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

fn spawn_coordinator(config: &std::path::Path) -> (Child, SocketAddr, Arc<Mutex<Vec<String>>>) {
    let mut child = Command::new(COORDINATOR)
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    let sink = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(addr) = line.split("grpc_addr=").nth(1) {
                let _ = tx.send(addr.split_whitespace().next().unwrap_or("").to_string());
            }
            sink.lock().unwrap().push(line);
        }
    });
    let addr = rx.recv_timeout(PATIENCE).unwrap_or_else(|_| {
        panic!(
            "coordinator did not start serving:\n{}",
            log.lock().unwrap().join("\n")
        )
    });
    (child, addr.parse().unwrap(), log)
}

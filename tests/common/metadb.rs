//! Several real coordinators sharing one metadb (a MariaDB of our own, see
//! [`super::mariadb`]) over the same real agents: who leads is read from the
//! lease row, tasks from the tasks table, and every wait has a deadline.
use std::{
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command},
    sync::Arc,
    time::{Duration, Instant},
};

use mysql_async::prelude::Queryable;
use odp_agent::proto::coordinator::{self as pb, coordinator_client::CoordinatorClient};
use tonic::transport::Channel;

use super::{
    Agent, Log, PATIENCE,
    cluster::{CLUSTER, COORDINATOR},
    mariadb::MariaDb,
    spawn_logged,
};

/// The lease the tests' coordinators hold: short, so a takeover is quick.
pub const LEASE: Duration = Duration::from_secs(3);

pub struct Coordinator {
    pub name: String,
    pub child: Child,
    pub addr: SocketAddr,
    pub log: Arc<Log>,
    pub config: PathBuf,
}

impl Coordinator {
    /// A sample of its metrics endpoint (`series` exactly as written).
    pub async fn metric(&self, series: &str) -> Option<f64> {
        let addr = {
            let log = self.log.lock().unwrap();
            log.iter()
                .find_map(|l| super::log_field(l, "metrics_addr"))
                .expect("no metrics_addr in the log")
        };
        let (code, body) = super::http_get(addr.parse().unwrap(), "/metrics").await;
        assert_eq!(code, 200);
        super::sample(&body, series)
    }

    pub fn logs(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Waits (on a blocking thread) for a log line containing `text`.
    pub async fn wait_log(&self, text: &'static str) {
        let log = self.log.clone();
        tokio::task::spawn_blocking(move || {
            log.wait_until(|lines| lines.iter().any(|l| l.contains(text)))
        })
        .await
        .unwrap();
    }
}

pub struct Fleet {
    pub db: MariaDb,
    /// The coordinators' `[store] lease`.
    pub lease: Duration,
    pub agents: Vec<Agent>,
    pub coordinators: Vec<Coordinator>,
    pub dir: tempfile::TempDir,
}

impl Fleet {
    /// `agents` agents, `coordinators` coordinators named c0, c1, …, all
    /// on one metadb; returns once one of them leads.
    pub async fn start(agents: usize, coordinators: usize) -> Self {
        Self::start_with_lease(agents, coordinators, LEASE).await
    }

    /// As [`Fleet::start`], with coordinators holding `lease`.
    pub async fn start_with_lease(agents: usize, coordinators: usize, lease: Duration) -> Self {
        let db = MariaDb::start();
        let mut list = Vec::new();
        for _ in 0..agents {
            list.push(Agent::start().await);
        }
        let mut fleet = Fleet {
            db,
            lease,
            agents: list,
            coordinators: Vec::new(),
            dir: tempfile::tempdir().unwrap(),
        };
        std::fs::write(fleet.dir.path().join("password"), "odp\n").unwrap();
        for i in 0..coordinators {
            let c = fleet.spawn(&format!("c{i}"));
            fleet.coordinators.push(c);
        }
        fleet.wait_leader(|_, token| token > 0).await;
        fleet
    }

    /// A coordinator's configuration, with `store` as its
    /// `[store]` section's keys.
    pub fn config_text(&self, store: &str) -> String {
        let addrs: Vec<String> = self.agents.iter().map(|a| a.grpc.to_string()).collect();
        format!(
            r#"[server]
listen = "127.0.0.1:0"
loopback_role = "OBPROXY_MANAGER"
[store]
{store}
[agents]
status_timeout = "3s"
[metrics]
listen = "127.0.0.1:0"
[[clusters]]
name = "{CLUSTER}"
agents = {addrs:?}
"#
        )
    }

    /// The `[store]` keys of coordinator `name` on this fleet's metadb.
    pub fn store_keys(&self, name: &str) -> String {
        format!(
            "url = \"mysql://odp@127.0.0.1:{}/odp\"\npassword_file = \"password\"\n\
             state_dir = \"state-{name}\"\nlease = \"{}s\"\nholder = \"{name}\"",
            self.db.port,
            self.lease.as_secs()
        )
    }

    fn spawn(&self, name: &str) -> Coordinator {
        let config = self.dir.path().join(format!("{name}.toml"));
        std::fs::write(&config, self.config_text(&self.store_keys(name))).unwrap();
        let mut command = Command::new(COORDINATOR);
        command.arg("--config").arg(&config).env("RUST_LOG", "info");
        let (child, addr, log) = spawn_logged(command, name);
        Coordinator {
            name: name.to_string(),
            child,
            addr,
            log,
            config,
        }
    }

    pub async fn client(&self, i: usize) -> CoordinatorClient<Channel> {
        CoordinatorClient::connect(format!("http://{}", self.coordinators[i].addr))
            .await
            .unwrap()
    }

    pub fn index_of(&self, name: &str) -> usize {
        self.coordinators
            .iter()
            .position(|c| c.name == name)
            .unwrap_or_else(|| panic!("no coordinator {name}"))
    }

    pub async fn sql(&self) -> mysql_async::Conn {
        self.db.connect().await
    }

    /// The lease row: holder and token.
    pub async fn leader(&self) -> (String, i64) {
        let mut conn = self.sql().await;
        let row: Option<(String, i64)> = conn
            .query_first("SELECT holder, token FROM odp_leader WHERE id = 1")
            .await
            .unwrap();
        row.unwrap_or_default()
    }

    /// Polls the lease row until `until` holds (within [`PATIENCE`]).
    pub async fn wait_leader(&self, until: impl Fn(&str, i64) -> bool) -> (String, i64) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Ok(mut conn) = mysql_async::Conn::new(super::mariadb::opts(self.db.port)).await {
                let row: Option<(String, i64)> = conn
                    .query_first("SELECT holder, token FROM odp_leader WHERE id = 1")
                    .await
                    .ok()
                    .flatten();
                if let Some((holder, token)) = row
                    && until(&holder, token)
                {
                    return (holder, token);
                }
            }
            assert!(Instant::now() < deadline, "the lease never got there");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A task's row: its state and body, as the metadb has them.
    pub async fn task_row(&self, id: &str) -> (String, String) {
        let mut conn = self.sql().await;
        let row: Option<(String, String)> = conn
            .exec_first("SELECT state, body FROM odp_tasks WHERE id = ?", (id,))
            .await
            .unwrap();
        row.unwrap_or_else(|| panic!("no task {id} in the metadb"))
    }

    /// Polls GetTask at coordinator `i` until `until` holds or the task
    /// ends (within `patience`); a coordinator that does not answer is
    /// asked again.
    pub async fn wait_task(
        &self,
        i: usize,
        id: &str,
        patience: Duration,
        until: impl Fn(&pb::Task) -> bool,
    ) -> pb::Task {
        let deadline = Instant::now() + patience;
        let mut last = None;
        loop {
            if let Ok(mut client) =
                CoordinatorClient::connect(format!("http://{}", self.coordinators[i].addr)).await
                && let Ok(t) = client.get_task(pb::GetTaskRequest { id: id.into() }).await
            {
                let t = t.into_inner();
                if until(&t) || t.state() != pb::TaskState::Running {
                    return t;
                }
                last = Some(t);
            }
            assert!(
                Instant::now() < deadline,
                "task {id} did not get there in time: {last:?}\n{}",
                self.all_logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn all_logs(&self) -> String {
        self.coordinators
            .iter()
            .map(|c| format!("--- {}\n{}", c.name, c.logs()))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for c in &mut self.coordinators {
            // A test may leave one stopped (SIGSTOP): SIGKILL ends it anyway.
            let _ = c.child.kill();
            let _ = c.child.wait();
        }
    }
}

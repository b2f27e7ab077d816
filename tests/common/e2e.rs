//! The end-to-end stack of `tests/e2e_mariadb.rs`: MariaDB, three real agents whose ODPs
//! (the stand-in) forward to it, and a real coordinator over them, one stack at a time.

use std::time::Duration;

use mysql_async::prelude::*;
use odp_agent::proto::{agent::RestartMode, coordinator as pb};

use super::{
    Options,
    cluster::{CLUSTER, Cluster},
    mariadb::MariaDb,
    sysbench::{Report, Workload},
    txn_load::{self, Shape},
};

/// Small enough to prepare in a second, large enough that sysbench's threads rarely meet.
pub const SYSBENCH: Workload = Workload {
    tables: 4,
    table_size: 10_000,
    threads: 6,
    reconnect: true,
};

/// One test at a time: each starts its own MariaDB, three agents and sysbench or a dozen
/// clients, and the drain windows they prove are timed; on two cores they would skew each
/// other.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// MariaDB, three agents with the stand-in forwarding to it, and the coordinator over them,
/// every ODP started.
pub struct Stack {
    // Dropped first: the agents and their stand-ins go before the database.
    pub cluster: Cluster,
    pub db: MariaDb,
    /// The ODPs' SQL ports, in agent order.
    pub ports: Vec<u16>,
    /// The drain window the ODPs were started with, passed again to HOT Restart All.
    pub window: Duration,
    _serial: tokio::sync::MutexGuard<'static, ()>,
}

impl Stack {
    /// `window` is every agent's `hot_upgrade_exit_timeout`: the drain window the ODPs are
    /// started with. A HOT Restart All's `exit_timeout` only moves the agent's SIGKILL
    /// deadline, not the window the old ODP drains over (see the README), so the window a
    /// test proves is configured here and passed again to Restart All.
    pub async fn start(window: &'static str) -> Stack {
        let serial = SERIAL.lock().await;
        let db = MariaDb::start();
        let cluster = Cluster::start_with(
            3,
            Options {
                exit_timeout: window,
                args: vec![
                    "-o".into(),
                    format!("standin_backend=127.0.0.1:{}", db.port),
                ],
                ..Options::default()
            },
        )
        .await;
        let mut stack = Stack {
            cluster,
            db,
            ports: Vec::new(),
            window: humantime::parse_duration(window).unwrap(),
            _serial: serial,
        };
        stack.start_all().await;
        for agent in &stack.cluster.agents {
            stack.ports.push(agent.sql_addr().await.port());
        }
        stack
    }

    /// Follows a task the coordinator accepted to its successful end.
    pub async fn follow(&self, task: Result<tonic::Response<pb::Task>, tonic::Status>) -> pb::Task {
        let task = task.unwrap().into_inner();
        let done = self.cluster.wait_task(&task.id).await;
        assert_eq!(
            done.state(),
            pb::TaskState::Succeeded,
            "{} failed: {}\n{:#?}\n{}",
            task.id,
            done.error,
            done.subtasks,
            self.cluster.logs()
        );
        done
    }

    /// Restart All; a HOT one with the stack's window as `exit_timeout`.
    pub async fn restart_all(&self, mode: RestartMode) -> pb::Task {
        let exit_timeout = (mode == RestartMode::Hot).then_some(self.window);
        let request = pb::RestartAllRequest {
            cluster: CLUSTER.into(),
            mode: mode as i32,
            exit_timeout: exit_timeout.map(|d| prost_types::Duration {
                seconds: d.as_secs() as i64,
                nanos: d.subsec_nanos() as i32,
            }),
            ..Default::default()
        };
        self.follow(self.cluster.client().await.restart_all(request).await)
            .await
    }

    pub async fn stop_all(&self) -> pb::Task {
        let request = pb::StopAllRequest {
            cluster: CLUSTER.into(),
            ..Default::default()
        };
        self.follow(self.cluster.client().await.stop_all(request).await)
            .await
    }

    pub async fn start_all(&self) -> pb::Task {
        let request = pb::StartAllRequest {
            cluster: CLUSTER.into(),
            ..Default::default()
        };
        self.follow(self.cluster.client().await.start_all(request).await)
            .await
    }

    /// The serving obproxy pid of every agent.
    pub async fn pids(&self) -> Vec<u32> {
        let mut pids = Vec::new();
        for agent in &self.cluster.agents {
            pids.push(agent.status().await.pid);
        }
        pids
    }

    /// `per_odp` clients of `shape` on every ODP, in agent order.
    pub fn clients(&self, per_odp: usize, shape: Shape) -> Vec<(u16, Shape)> {
        self.ports
            .iter()
            .flat_map(|&port| std::iter::repeat_n((port, shape), per_odp))
            .collect()
    }

    pub async fn create_rows_table(&self) {
        self.db
            .connect()
            .await
            .query_drop(txn_load::TABLE)
            .await
            .unwrap();
    }

    /// The stand-in's `event` lines from process `pid` of agent `agent`.
    pub fn standin_events(&self, agent: usize, pid: u32, event: &str) -> Vec<String> {
        let prefix = format!("obproxy-standin: {event} pid={pid} ");
        self.cluster.agents[agent]
            .obproxy_output()
            .lines()
            .filter(|l| l.starts_with(&prefix))
            .map(str::to_owned)
            .collect()
    }

    /// The one `drain finished` line of the old process `pid` of agent `agent`.
    pub fn drain_finished(&self, agent: usize, pid: u32) -> String {
        let lines = self.standin_events(agent, pid, "drain finished");
        assert_eq!(
            lines.len(),
            1,
            "pid {pid} of agent {agent}:\n{}",
            self.cluster.agents[agent].obproxy_output()
        );
        lines[0].clone()
    }
}

/// Report intervals that began at or after `from` and saw transactions.
pub fn busy_seconds(reports: &[Report], from: f64) -> usize {
    reports
        .iter()
        .filter(|r| r.start() >= from && r.tps > 0.0)
        .count()
}

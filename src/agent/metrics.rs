//! The agent's metrics: what the supervisor's status says at scrape time
//! (state, up, open connections, restarts) and what only the supervisor sees
//! happen (operations ending, drains ending), counted through its hooks.
use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{Router, extract::State, response::Response, routing::get};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

use crate::agent::{
    operation_log::Kind,
    process_table::ProxyState,
    status_report::{Report, Reporter},
};

/// Every state, so each scrape shows all of them (0 or 1) and a state that
/// was left drops to 0 instead of vanishing.
const STATES: [ProxyState; 7] = [
    ProxyState::Running,
    ProxyState::Stopped,
    ProxyState::Starting,
    ProxyState::Stopping,
    ProxyState::Restarting,
    ProxyState::Upgrading,
    ProxyState::Unavailable,
];

/// Drains end anywhere from at once (no sessions left) to the window's end
/// (30 s by default, up to a day).
const DRAIN_BUCKETS: [f64; 12] = [
    0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 14400.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabels {
    kind: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProcessLabels {
    process: &'static str,
}

pub struct AgentMetrics {
    /// Held while a scrape refreshes the status gauges and encodes, so two
    /// concurrent scrapes never mix two statuses.
    registry: Mutex<Registry>,
    state: Family<StateLabels, Gauge>,
    up: Gauge,
    restarts: Counter,
    open_connections: Family<ProcessLabels, Gauge>,
    operations: Family<OperationLabels, Counter>,
    drain_duration: Histogram,
    state_writes: Counter,
    state_journal_writes: Counter,
}

impl Default for AgentMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl AgentMetrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let state = Family::<StateLabels, Gauge>::default();
        registry.register(
            "odp_proxy_state",
            "The ODP's state: 1 for the current one",
            state.clone(),
        );
        let up = Gauge::default();
        registry.register(
            "odp_proxy_up",
            "1 while an obproxy serves the SQL listeners",
            up.clone(),
        );
        let restarts = Counter::default();
        registry.register(
            "odp_proxy_restarts",
            "obproxy processes started after the first one since the agent started",
            restarts.clone(),
        );
        let open_connections = Family::<ProcessLabels, Gauge>::default();
        registry.register(
            "odp_open_connections",
            "Client connections held by the serving and the draining obproxy",
            open_connections.clone(),
        );
        let operations = Family::<OperationLabels, Counter>::default();
        registry.register(
            "odp_operations",
            "Operations finished, by kind and outcome",
            operations.clone(),
        );
        registry.register(
            "odp_log_write_errors",
            "Log lines stderr did not take (dropped; logging goes on)",
            crate::common::telemetry::write_errors(),
        );
        let drain_duration = Histogram::new(DRAIN_BUCKETS);
        registry.register(
            "odp_drain_duration_seconds",
            "From a hot restart's handover to the old obproxy's exit",
            drain_duration.clone(),
        );
        let state_writes = Counter::default();
        registry.register(
            "odp_state_writes",
            "Durable writes of the agent's state file (each an fsync of the file and one of its directory)",
            state_writes.clone(),
        );
        let state_journal_writes = Counter::default();
        registry.register(
            "odp_state_journal_writes",
            "Durable writes of the agent's state into its journal (a promotion: one fdatasync in place)",
            state_journal_writes.clone(),
        );
        Self {
            registry: Mutex::new(registry),
            state,
            up,
            restarts,
            open_connections,
            operations,
            drain_duration,
            state_writes,
            state_journal_writes,
        }
    }

    /// Hook: the state file was written, durably.
    pub fn state_written(&self) {
        self.state_writes.inc();
    }

    /// Hook: the state was written durably into the journal.
    pub fn state_journaled(&self) {
        self.state_journal_writes.inc();
    }

    /// Hook: an operation ended (the supervisor's `Finish`).
    pub fn operation_finished(&self, kind: Kind, succeeded: bool) {
        let labels = OperationLabels {
            kind: kind_label(kind),
            outcome: if succeeded { "succeeded" } else { "failed" },
        };
        self.operations.get_or_create(&labels).inc();
    }

    /// Hook: a draining obproxy exited, `took` after it was handed over.
    pub fn drain_finished(&self, took: Duration) {
        self.drain_duration.observe(took.as_secs_f64());
    }

    /// The text a scrape answers with, its gauges set from `report`.
    fn render(&self, report: &Report) -> Response {
        let status = &report.status;
        let registry = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        for s in STATES {
            let current = i64::from(s == status.state);
            self.state
                .get_or_create(&StateLabels {
                    state: state_label(s),
                })
                .set(current);
        }
        self.up.set(i64::from(status.serving.is_some()));
        // The supervisor counts restarts; the counter catches up with it
        // (both start at zero with the agent).
        let restarts = u64::from(status.restart_count);
        let counted = self.restarts.get();
        if restarts > counted {
            self.restarts.inc_by(restarts - counted);
        }
        let connections = |pid| report.usage(pid).map_or(0, |u| u.open_connections);
        let serving = status.serving.as_ref().map_or(0, |p| connections(p.pid));
        let draining: u32 = status
            .draining
            .iter()
            .map(|(p, _)| connections(p.pid))
            .sum();
        for (process, n) in [("serving", serving), ("draining", draining)] {
            self.open_connections
                .get_or_create(&ProcessLabels { process })
                .set(i64::from(n));
        }
        crate::common::metrics_endpoint::encode(&registry)
    }

    /// `GET /metrics`, answered from the status of the moment (the
    /// supervisor's published one, with sampled usage).
    pub fn router(self: Arc<Self>, reporter: Reporter) -> Router {
        Router::new()
            .route("/metrics", get(scrape))
            .with_state((self, reporter))
    }
}

async fn scrape(State((metrics, reporter)): State<(Arc<AgentMetrics>, Reporter)>) -> Response {
    metrics.render(&reporter.report().await)
}

/// Label values are stable snake_case names, not the log's wording.
fn kind_label(kind: Kind) -> &'static str {
    match kind {
        Kind::Start => "start",
        Kind::Stop => "stop",
        Kind::RestartHot => "restart_hot",
        Kind::RestartForce => "restart_force",
        Kind::Respawn => "respawn",
        Kind::AdoptNative => "adopt_native",
        Kind::TakeOver => "take_over",
    }
}

fn state_label(state: ProxyState) -> &'static str {
    match state {
        ProxyState::Running => "running",
        ProxyState::Stopped => "stopped",
        ProxyState::Starting => "starting",
        ProxyState::Stopping => "stopping",
        ProxyState::Restarting => "restarting",
        ProxyState::Upgrading => "upgrading",
        ProxyState::Unavailable => "unavailable",
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use axum::body::to_bytes;

    use super::*;
    use crate::agent::{
        process_table::ProcessInfo,
        sampling::{Sample, Target, Usage},
        supervisor_protocol::Status,
    };

    fn process(pid: u32) -> ProcessInfo {
        ProcessInfo {
            pid,
            version: "4.3.1.0".into(),
            binary: "bin/obproxy".into(),
            started_at: SystemTime::now(),
            binary_info: None,
        }
    }

    async fn text(metrics: &AgentMetrics, report: &Report) -> String {
        let body = metrics.render(report).into_body();
        String::from_utf8(to_bytes(body, usize::MAX).await.unwrap().to_vec()).unwrap()
    }

    #[tokio::test]
    async fn a_scrape_shows_the_status_and_the_counted_events() {
        let metrics = AgentMetrics::new();
        metrics.operation_finished(Kind::Start, true);
        metrics.operation_finished(Kind::RestartHot, false);
        metrics.drain_finished(Duration::from_millis(300));
        let status = Status {
            state: ProxyState::Running,
            desired_running: true,
            serving: Some(process(10)),
            draining: vec![(process(9), SystemTime::now())],
            listeners: vec![],
            restart_count: 2,
            operation: None,
            last_exit: None,
            notices: vec![],
        };
        let connections = |open_connections| Usage {
            open_connections,
            ..Default::default()
        };
        let report = Report {
            status: Arc::new(status),
            sample: Some(Arc::new(Sample {
                taken_at: std::time::Instant::now(),
                target: Target::default(),
                usage: [(10, connections(3)), (9, connections(2))].into(),
            })),
        };
        let text = text(&metrics, &report).await;
        for line in [
            "odp_proxy_state{state=\"running\"} 1",
            "odp_proxy_state{state=\"stopped\"} 0",
            "odp_proxy_up 1",
            "odp_proxy_restarts_total 2",
            "odp_open_connections{process=\"serving\"} 3",
            "odp_open_connections{process=\"draining\"} 2",
            "odp_operations_total{kind=\"start\",outcome=\"succeeded\"} 1",
            "odp_operations_total{kind=\"restart_hot\",outcome=\"failed\"} 1",
            "odp_drain_duration_seconds_count 1",
            "odp_drain_duration_seconds_bucket{le=\"0.5\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
    }
}

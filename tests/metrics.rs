//! `GET /metrics` on both daemons shows what happened: operations and
//! drains on the agent, tasks and subtasks on the coordinator, scraped with
//! a plain HTTP request as Prometheus would.
use crate::common;

use common::{
    Agent, Options,
    cluster::{CLUSTER, Cluster},
    http_get, sample,
};
use odp_agent::proto::{agent as pb, coordinator as cpb};

async fn scrape(addr: std::net::SocketAddr) -> String {
    let (code, body) = http_get(addr, "/metrics").await;
    assert_eq!(code, 200, "{body}");
    assert!(body.ends_with("# EOF\n"), "not OpenMetrics text:\n{body}");
    body
}

fn expect(body: &str, series: &str, value: f64) {
    assert_eq!(sample(body, series), Some(value), "{series} in\n{body}");
}

#[tokio::test]
async fn the_agent_counts_a_start_and_a_hot_restart_with_its_drain() {
    let agent = Agent::start_with(Options {
        metrics: true,
        ..Default::default()
    })
    .await;
    let addr = agent.metrics_addr();

    let body = scrape(addr).await;
    expect(&body, r#"odp_proxy_state{state="stopped"}"#, 1.0);
    expect(&body, r#"odp_proxy_state{state="running"}"#, 0.0);
    expect(&body, "odp_proxy_up", 0.0);

    agent.start_proxy().await;
    let op = agent.restart(pb::RestartMode::Hot, true).await.unwrap();
    assert_eq!(op.state(), pb::OperationState::Succeeded, "{}", op.error);
    // One client session on the new process.
    let mut session = common::connect(agent.sql_addr().await).await.unwrap();
    common::echo(&mut session, b"counted").await.unwrap();
    // Sessions are sampled off the supervisor: the scrape that has the new one.
    agent
        .wait_status(|s| s.serving.as_ref().is_some_and(|p| p.open_connections == 1))
        .await;

    let body = scrape(addr).await;
    expect(
        &body,
        r#"odp_operations_total{kind="start",outcome="succeeded"}"#,
        1.0,
    );
    expect(
        &body,
        r#"odp_operations_total{kind="restart_hot",outcome="succeeded"}"#,
        1.0,
    );
    expect(&body, "odp_proxy_restarts_total", 1.0);
    expect(&body, r#"odp_proxy_state{state="running"}"#, 1.0);
    expect(&body, r#"odp_proxy_state{state="stopped"}"#, 0.0);
    expect(&body, "odp_proxy_up", 1.0);
    // The old process drained (and exited) before the restart succeeded.
    expect(&body, "odp_drain_duration_seconds_count", 1.0);
    expect(&body, r#"odp_open_connections{process="draining"}"#, 0.0);
    expect(&body, r#"odp_open_connections{process="serving"}"#, 1.0);

    let (code, _) = http_get(addr, "/nothing").await;
    assert_eq!(code, 404);
}

#[tokio::test]
async fn the_coordinator_counts_a_start_all_and_status_requests() {
    let agents = vec![
        Agent::start_with(Options::default()).await,
        Agent::start_with(Options::default()).await,
    ];
    let cluster = Cluster::with_config(agents, &[], "[metrics]\nlisten = \"127.0.0.1:0\"\n");
    let addr = cluster.metrics_addr();

    let task = cluster
        .client()
        .await
        .start_all(cpb::StartAllRequest {
            cluster: CLUSTER.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let task = cluster.wait_task(&task.id).await;
    assert_eq!(task.state(), cpb::TaskState::Succeeded, "{}", task.error);
    cluster
        .client()
        .await
        .get_cluster_status(cpb::GetClusterStatusRequest {
            cluster: CLUSTER.into(),
        })
        .await
        .unwrap();

    let body = scrape(addr).await;
    expect(
        &body,
        r#"odp_tasks_total{kind="start_all",outcome="succeeded"}"#,
        1.0,
    );
    expect(&body, r#"odp_subtasks_total{state="succeeded"}"#, 2.0);
    expect(&body, "odp_tasks_running", 0.0);
    expect(&body, "odp_cluster_status_requests_total", 1.0);
}

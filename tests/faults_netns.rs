//! A cut-off agent: agents on addresses of their own, each in its network
//! namespace behind a veth pair (as in production, over TLS), and the
//! coordinator in the test's namespace. Cutting one agent's link mid-rollout
//! (link down) or dropping its every packet makes its subtask UNREACHABLE
//! within the configured timeouts, the failure budget holds, and once the
//! link is healed RetryTask finishes it without running anything twice.
//! Needs root, `ip` and `tc` (iproute2).
use crate::common;

use std::time::{Duration, Instant};

use common::{
    Agent, Options,
    cluster::{CLUSTER, Cluster, Settings},
    netns::Netns,
    pki::Pki,
};
use odp_agent::proto::{
    agent::{self as pb, agent_client::AgentClient},
    coordinator as cpb,
};
use tonic::transport::Channel;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const STATUS_TIMEOUT: Duration = Duration::from_secs(1);

/// The operator's client over TLS to `agent` (the agents' certificate
/// names localhost, not their addresses), once a connection goes through:
/// a link just healed may take a moment to carry again.
async fn client(agent: &Agent, pki: &Pki) -> AgentClient<Channel> {
    let deadline = Instant::now() + common::PATIENCE;
    loop {
        let tls = pki.client(Some("operator")).domain_name("localhost");
        match agent.tls_client(tls).await {
            Ok(client) => return client,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("cannot reach the agent at {}: {e:?}", agent.grpc),
        }
    }
}

/// A running agent in a namespace of its own, listening on its address.
async fn remote_agent(pki: &Pki) -> (Agent, Netns) {
    let ns = Netns::create();
    let agent = Agent::start_customized(
        Options {
            grpc_listen: Some(format!("{}:0", ns.addr)),
            more: pki.agent_toml(),
            ..Default::default()
        },
        |config| ns.agent_command(config),
    )
    .await;
    let op = client(&agent, pki)
        .await
        .start(pb::StartRequest {
            request_id: String::new(),
            wait: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        op.state(),
        pb::OperationState::Succeeded,
        "{op:?}\n{}",
        agent.logs()
    );
    (agent, ns)
}

/// `n` running agents, each in its namespace, and a coordinator over them
/// with short timeouts, speaking TLS to them with the operator's
/// certificate.
async fn cluster(pki: &Pki, n: usize) -> (Cluster, Vec<Netns>) {
    let mut agents = Vec::new();
    let mut namespaces = Vec::new();
    for _ in 0..n {
        let (agent, ns) = remote_agent(pki).await;
        agents.push(agent);
        namespaces.push(ns);
    }
    let settings = Settings {
        // As CONNECT_TIMEOUT and STATUS_TIMEOUT say; a submit gets 3 s.
        agents: "connect_timeout = \"1s\"\nstatus_timeout = \"1s\"\nrequest_timeout = \"3s\""
            .to_string(),
        // A coordinator presenting the agents' operator certificate takes
        // credentials from its own callers too: the same TLS and roles.
        more: format!(
            "[agents.tls]\nca = {:?}\ncert = {:?}\nkey = {:?}\ndomain = \"localhost\"\n{}",
            pki.path("ca.pem"),
            pki.path("operator.pem"),
            pki.path("operator.key"),
            pki.agent_toml(),
        ),
        client_tls: Some(pki.client(Some("operator"))),
        ..Settings::default()
    };
    (Cluster::with_settings(agents, settings), namespaces)
}

/// The cluster status, answered within status_timeout (plus slack for a
/// loaded host). A cut-off ODP is UNAVAILABLE, or still shows the last status
/// the coordinator's live view heard from it, with an age that says so: at
/// least the time since `cut`. The others are Running.
async fn cluster_status_after_cut(cluster: &Cluster, cut_odp: usize, cut: Instant) {
    let asked = Instant::now();
    let status = cluster
        .client()
        .await
        .get_cluster_status(cpb::GetClusterStatusRequest {
            cluster: CLUSTER.into(),
        })
        .await
        .unwrap()
        .into_inner();
    let took = asked.elapsed();
    assert!(took < STATUS_TIMEOUT + Duration::from_secs(1), "{took:?}");
    for (i, odp) in status.odps.iter().enumerate() {
        if i != cut_odp {
            assert_eq!(odp.state(), pb::ProxyState::Running, "{odp:?}");
            continue;
        }
        let age = odp
            .age
            .map(|a| Duration::new(a.seconds as u64, a.nanos as u32))
            .unwrap_or_default();
        assert!(
            odp.state() == pb::ProxyState::Unavailable || age >= asked.duration_since(cut),
            "the cut-off ODP shows as fresh: {odp:?}"
        );
    }
}

/// The status of the cluster's agent `i`, over TLS.
async fn remote_status(cluster: &Cluster, pki: &Pki, i: usize) -> pb::ProxyStatus {
    client(&cluster.agents[i], pki)
        .await
        .get_status(pb::GetStatusRequest::default())
        .await
        .unwrap()
        .into_inner()
}

/// Follows an operation of the cluster's agent `i` to its end.
async fn remote_wait_op(cluster: &Cluster, pki: &Pki, i: usize, id: &str) -> pb::Operation {
    let mut stream = client(&cluster.agents[i], pki)
        .await
        .watch_operation(pb::WatchOperationRequest { id: id.into() })
        .await
        .unwrap()
        .into_inner();
    let follow = async {
        let mut last = None;
        while let Some(op) = stream.message().await.unwrap() {
            last = Some(op);
        }
        last.unwrap()
    };
    tokio::time::timeout(common::PATIENCE, follow)
        .await
        .expect("the operation did not finish in time")
}

async fn restart_counts(cluster: &Cluster, pki: &Pki) -> Vec<u32> {
    let mut counts = Vec::new();
    for i in 0..cluster.agents.len() {
        counts.push(remote_status(cluster, pki, i).await.restart_count);
    }
    counts
}

async fn retry(cluster: &Cluster, id: &str) -> cpb::Task {
    cluster
        .client()
        .await
        .retry_task(cpb::RetryTaskRequest { id: id.into() })
        .await
        .unwrap();
    cluster.wait_task(id).await
}

#[tokio::test]
#[cfg_attr(
    skip_root,
    ignore = "needs root for network namespaces: built with ODP_TEST_SKIP_ROOT=1"
)]
async fn an_agent_cut_off_mid_rollout_is_unreachable_in_time_the_budget_holds_and_retry_finishes_it()
 {
    let pki = Pki::new();
    let (cluster, ns) = cluster(&pki, 3).await;
    // The second ODP takes a while to start, so its link is cut while the
    // coordinator follows its operation.
    cluster.agents[1].set_standin_env(&[("ODP_STANDIN_START_DELAY", "3s")]);
    let task = cluster
        .client()
        .await
        .restart_all(cpb::RestartAllRequest {
            cluster: CLUSTER.into(),
            mode: pb::RestartMode::Hot as i32,
            batch_size: 1,
            max_failures: 0,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let following = cluster
        .watch_task_until(&task.id, |t| !t.subtasks[1].operation_id.is_empty())
        .await;
    let op_id = following.subtasks[1].operation_id.clone();

    ns[1].cut();
    let since = Instant::now();
    let cut = cluster
        .watch_task_until(&task.id, |t| {
            t.subtasks[1].state() != cpb::SubtaskState::Running
        })
        .await;
    let took = since.elapsed();
    assert_eq!(
        cut.subtasks[1].state(),
        cpb::SubtaskState::Unreachable,
        "{cut:?}"
    );
    // A keepalive ping unanswered (every status_timeout, answered within
    // it), then the operation asked for once more within status_timeout.
    assert!(
        took < 3 * STATUS_TIMEOUT + Duration::from_secs(2),
        "UNREACHABLE after {took:?}"
    );

    // The failure budget (0) holds: the third ODP is never taken down.
    let failed = cluster.wait_task(&task.id).await;
    assert_eq!(failed.state(), cpb::TaskState::Failed, "{failed:?}");
    assert_eq!(failed.subtasks[0].state(), cpb::SubtaskState::Succeeded);
    assert_eq!(failed.subtasks[2].state(), cpb::SubtaskState::Skipped);
    assert!(
        failed.error.contains("failure budget exceeded"),
        "{}",
        failed.error
    );

    cluster_status_after_cut(&cluster, 1, since).await;

    // Healed: the agent had finished the restart on its own; the retry finds
    // that operation by its request id and runs the skipped ODP.
    ns[1].heal();
    let finished = remote_wait_op(&cluster, &pki, 1, &op_id).await;
    assert_eq!(
        finished.state(),
        pb::OperationState::Succeeded,
        "{finished:?}"
    );
    assert_eq!(restart_counts(&cluster, &pki).await, [1, 1, 0]);
    let done = retry(&cluster, &task.id).await;
    assert_eq!(done.state(), cpb::TaskState::Succeeded, "{done:?}");
    assert_eq!(done.subtasks[1].operation_id, op_id);
    assert_eq!(done.subtasks[1].pid, finished.pid);
    assert_eq!(restart_counts(&cluster, &pki).await, [1, 1, 1]);
}

#[tokio::test]
#[cfg_attr(
    skip_root,
    ignore = "needs root for network namespaces: built with ODP_TEST_SKIP_ROOT=1"
)]
async fn an_agent_blackholed_before_its_turn_is_unreachable_within_its_timeouts_and_retry_finishes_it()
 {
    let pki = Pki::new();
    let (cluster, ns) = cluster(&pki, 2).await;
    // Silent: no carrier lost, no reset, nothing answers; connects time out.
    ns[1].blackhole();
    let cut = Instant::now();
    cluster_status_after_cut(&cluster, 1, cut).await;
    // FORCE: it is always possible (the preflight may still see the last
    // status of the cut ODP, or see it UNAVAILABLE).
    let mut client = cluster.client().await;
    let since = Instant::now();
    let task = client
        .restart_all(cpb::RestartAllRequest {
            cluster: CLUSTER.into(),
            mode: pb::RestartMode::Force as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let failed = cluster.wait_task(&task.id).await;
    let took = since.elapsed();
    assert_eq!(failed.state(), cpb::TaskState::Failed, "{failed:?}");
    assert_eq!(failed.subtasks[0].state(), cpb::SubtaskState::Succeeded);
    assert_eq!(
        failed.subtasks[1].state(),
        cpb::SubtaskState::Unreachable,
        "{failed:?}"
    );
    // The preflight status (within status_timeout), then the submit, whose
    // connect times out (connect_timeout).
    assert!(
        took < STATUS_TIMEOUT + CONNECT_TIMEOUT + Duration::from_secs(1),
        "{took:?}"
    );
    assert!(
        failed.subtasks[1].last_error.contains("unreachable"),
        "{}",
        failed.subtasks[1].last_error
    );

    ns[1].heal();
    let done = retry(&cluster, &task.id).await;
    assert_eq!(done.state(), cpb::TaskState::Succeeded, "{done:?}");
    assert_eq!(restart_counts(&cluster, &pki).await, [1, 1]);
}

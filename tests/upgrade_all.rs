//! Upgrade All moves a cluster's ODPs onto another obproxy binary, canary
//! first, under client load without one failed request; a binary that fails
//! on one host rolls back every ODP already moved; a binary that is not the
//! same file on every host is refused before anything moves; and a rollback
//! cut short by a coordinator crash is finished after its restart.
use crate::common;

use std::time::Duration;

use common::{
    Agent, Options,
    cluster::CLUSTER,
    upgrade_cluster::{assert_no_request_failed, cluster_at_4_2, loads, upgrade},
    upgrade_package::{TARGET, V42, V43, break_host, package, sha256, stage},
};
use odp_agent::proto::{agent as apb, coordinator as pb};

fn kinds(status: &apb::ProxyStatus) -> Vec<apb::ListenerKind> {
    status.listeners.iter().map(|l| l.kind()).collect()
}

fn secs(t: &Option<prost_types::Timestamp>) -> f64 {
    let t = t.as_ref().expect("a timestamp");
    t.seconds as f64 + f64::from(t.nanos) / 1e9
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_odps_move_from_4_2_to_4_3_canary_first_without_a_failed_request() {
    let (cluster, _backend) = cluster_at_4_2(&[]).await;
    let content = package(V43);
    let sha = sha256(&content);
    for a in &cluster.agents {
        stage(a, &content);
    }
    let before: Vec<apb::ProxyStatus> =
        futures::future::join_all(cluster.agents.iter().map(|a| a.status())).await;
    let loads = loads(&cluster).await;

    // Through odpctl, as an operator runs it.
    let args: Vec<String> = [
        "--output",
        "json",
        "cluster",
        "upgrade",
        CLUSTER,
        "--binary",
        TARGET,
        "--sha256",
        &sha,
        "--canary",
        "1",
        "--canary-wait",
        "1s",
        "--batch",
        "1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let odpctl = {
        let addr = cluster.addr;
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(common::cluster::ODPCTL)
                .arg("--coordinator")
                .arg(addr.to_string())
                .args(&args)
                .stdin(std::process::Stdio::null())
                .output()
                .unwrap()
        })
        .await
        .unwrap()
    };
    let out = String::from_utf8_lossy(&odpctl.stdout);
    assert!(
        odpctl.status.success(),
        "{out}\n{}\n{}",
        String::from_utf8_lossy(&odpctl.stderr),
        cluster.logs()
    );
    let task: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(task["kind"], "TASK_KIND_UPGRADE_ALL", "{task}");
    assert_eq!(task["state"], "TASK_STATE_SUCCEEDED", "{task}");
    assert_eq!(task["upgrade"]["version"], V43, "{task}");

    let done = cluster.wait_task(task["id"].as_str().unwrap()).await;
    for (s, b) in done.subtasks.iter().zip(&before) {
        assert_eq!(s.state(), pb::SubtaskState::Succeeded, "{done:?}");
        assert_eq!(s.previous_version, V42);
        assert_eq!(s.previous_binary, b.binary);
        assert_eq!(s.version, V43);
    }
    let batches: Vec<u32> = done.subtasks.iter().map(|s| s.batch).collect();
    assert_eq!(batches, [1, 2, 3]);
    // The canary served on 4.3 for canary_wait before the next batch began.
    let held = secs(&done.subtasks[1].started_at) - secs(&done.subtasks[0].finished_at);
    assert!(held >= 1.0, "the canary was held {held:.3}s");

    for (a, b) in cluster.agents.iter().zip(&before) {
        let s = a.status().await;
        assert_eq!(s.state(), apb::ProxyState::Running);
        assert_eq!(s.version, V43);
        assert_ne!(s.pid, b.pid);
        assert!(s.binary.ends_with(TARGET), "{}", s.binary);
        // The agent's own digest of what it runs, next to the version.
        assert_eq!(s.binary_sha256, sha);
        // 4.3 serves with the RPC listener the agent bound and handed over.
        assert_eq!(kinds(&s), [apb::ListenerKind::Sql, apb::ListenerKind::Rpc]);
    }
    assert_no_request_failed(loads).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binary_that_fails_to_start_on_the_second_odp_rolls_the_first_back() {
    let (cluster, _backend) = cluster_at_4_2(&[]).await;
    let content = package(V43);
    for a in &cluster.agents {
        stage(a, &content);
    }
    break_host(&cluster.agents[1]);
    let before: Vec<apb::ProxyStatus> =
        futures::future::join_all(cluster.agents.iter().map(|a| a.status())).await;
    let loads = loads(&cluster).await;

    let task = cluster
        .client()
        .await
        .upgrade_all(upgrade(&sha256(&content), Duration::ZERO))
        .await
        .unwrap()
        .into_inner();
    let done = cluster.wait_task(&task.id).await;
    assert_eq!(
        done.state(),
        pb::TaskState::RolledBack,
        "{}\n{}",
        done.error,
        cluster.logs()
    );
    let states: Vec<pb::SubtaskState> = done.subtasks.iter().map(|s| s.state()).collect();
    assert_eq!(
        states,
        [
            pb::SubtaskState::RolledBack,
            pb::SubtaskState::Failed,
            pb::SubtaskState::Skipped
        ],
        "{done:?}"
    );
    let canary = &done.subtasks[0];
    assert!(!canary.rollback_operation_id.is_empty(), "{canary:?}");
    assert_eq!(canary.version, V42);
    assert!(canary.last_error.contains("rolled back onto"), "{canary:?}");
    assert!(
        done.subtasks[1].last_error.contains("still on"),
        "{:?}",
        done.subtasks[1]
    );
    assert!(
        done.upgrade
            .as_ref()
            .unwrap()
            .rollback_reason
            .contains(&cluster.agents[1].grpc.to_string()),
        "{done:?}"
    );

    // Every ODP is on the binary it ran before: the canary moved there and
    // back (two processes started), the second never left it (its new
    // process died, the old one served on), the third was never touched.
    let after = futures::future::join_all(cluster.agents.iter().map(|a| a.status())).await;
    for (s, b) in after.iter().zip(&before) {
        assert_eq!(s.state(), apb::ProxyState::Running);
        assert_eq!(s.version, V42);
        assert_eq!(s.binary, b.binary);
        assert_eq!(s.binary_sha256, b.binary_sha256);
        // Back below 4.3 (or never above it), no RPC listener is held.
        assert_eq!(kinds(s), [apb::ListenerKind::Sql], "{s:?}");
    }
    assert_eq!(after[0].restart_count - before[0].restart_count, 2);
    assert_ne!(after[0].pid, before[0].pid);
    assert_eq!(after[1].pid, before[1].pid, "the old process served on");
    assert_eq!(after[2].pid, before[2].pid, "never touched");
    assert_eq!(after[2].restart_count, before[2].restart_count);
    assert_no_request_failed(loads).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_sha256_a_missing_file_or_a_downgrade_is_refused_before_any_odp_moves() {
    let (cluster, _backend) = cluster_at_4_2(&[]).await;
    let content = package(V43);
    let sha = sha256(&content);
    let before: Vec<u32> = futures::future::join_all(cluster.agents.iter().map(|a| a.status()))
        .await
        .iter()
        .map(|s| s.pid)
        .collect();
    let refused = |request: pb::UpgradeAllRequest| {
        let cluster = &cluster;
        async move {
            let e = cluster
                .client()
                .await
                .upgrade_all(request)
                .await
                .expect_err("refused");
            assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
            e.message().to_string()
        }
    };
    let second = cluster.agents[1].grpc.to_string();

    // Missing on the second host.
    stage(&cluster.agents[0], &content);
    stage(&cluster.agents[2], &content);
    let e = refused(upgrade(&sha, Duration::ZERO)).await;
    assert!(e.contains(&second) && e.contains("No such file"), "{e}");
    assert!(!e.contains(&cluster.agents[0].grpc.to_string()), "{e}");

    // Another file there (a 4.3.2 build, say): its digest differs.
    stage(&cluster.agents[1], &package("4.3.2.0"));
    let e = refused(upgrade(&sha, Duration::ZERO)).await;
    assert!(e.contains(&second) && e.contains("SHA-256"), "{e}");
    assert!(!e.contains(&cluster.agents[2].grpc.to_string()), "{e}");

    // A binary older than the ODPs' version, unless asked for.
    let old = package("4.1.0.0");
    for a in &cluster.agents {
        stage(a, &old);
    }
    let e = refused(upgrade(&sha256(&old), Duration::ZERO)).await;
    assert!(e.contains("allow_downgrade"), "{e}");

    // Nothing moved, and no task was made.
    for (a, pid) in cluster.agents.iter().zip(before) {
        let s = a.status().await;
        assert_eq!((s.pid, s.restart_count), (pid, 0));
        assert_eq!(s.version, V42);
    }
    let tasks = cluster
        .client()
        .await
        .list_tasks(pb::ListTasksRequest::default())
        .await
        .unwrap()
        .into_inner()
        .tasks;
    assert!(
        tasks.iter().all(|t| t.kind() != pb::TaskKind::UpgradeAll),
        "{tasks:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_killed_during_the_rollback_finishes_it_after_restart() {
    // The canary's way back is slow: its 4.2 takes 2 s to be ready.
    let (mut cluster, _backend) = cluster_at_4_2(&[("ODP_STANDIN_START_DELAY", "2s")]).await;
    let content = package(V43);
    for a in &cluster.agents {
        stage(a, &content);
    }
    break_host(&cluster.agents[1]);
    let before: Vec<apb::ProxyStatus> =
        futures::future::join_all(cluster.agents.iter().map(|a| a.status())).await;
    let loads = loads(&cluster).await;
    let task = cluster
        .client()
        .await
        .upgrade_all(upgrade(&sha256(&content), Duration::ZERO))
        .await
        .unwrap()
        .into_inner();
    let rolling = cluster
        .watch_task_until(&task.id, |t| {
            t.subtasks[0].state() == pb::SubtaskState::RollingBack
                && !t.subtasks[0].rollback_operation_id.is_empty()
        })
        .await;
    assert_eq!(rolling.state(), pb::TaskState::Running, "{rolling:?}");
    cluster.crash_and_restart_coordinator();

    let done = cluster.wait_task(&task.id).await;
    assert_eq!(
        done.state(),
        pb::TaskState::RolledBack,
        "{}\n{}",
        done.error,
        cluster.logs()
    );
    assert_eq!(done.subtasks[0].state(), pb::SubtaskState::RolledBack);
    assert!(
        cluster.logs().contains("resuming the rollback"),
        "{}",
        cluster.logs()
    );
    let canary = cluster.agents[0].status().await;
    assert_eq!(canary.version, V42);
    assert_eq!(canary.binary, before[0].binary);
    // Up once and back once: the resumed rollback did not go back again.
    assert_eq!(canary.restart_count - before[0].restart_count, 2);
    assert_no_request_failed(loads).await;
}

#[tokio::test]
async fn inspect_binary_hashes_and_versions_a_staged_binary_for_operators_only_and_is_audited() {
    let agent = Agent::start().await;
    let content = package(V43);
    stage(&agent, &content);
    let mut client = agent.client().await;
    let inspect = |binary: &str| apb::InspectBinaryRequest {
        binary: binary.into(),
    };
    let got = client
        .inspect_binary(inspect(TARGET))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.sha256, sha256(&content));
    assert_eq!(got.version, V43);
    assert!(!got.configured);
    assert_eq!(got.binary, agent.home().join(TARGET).display().to_string());
    let audited = agent.audit();
    let line = audited
        .iter()
        .find(|l| l["rpc"] == "InspectBinary")
        .unwrap_or_else(|| panic!("no InspectBinary line: {audited:?}"));
    assert_eq!(line["outcome"], "ok", "{line}");
    assert_eq!(line["binary"], got.binary, "{line}");

    // The configured binary, by its own path, is one to go back to.
    let configured = client
        .inspect_binary(inspect("bin/obproxy"))
        .await
        .unwrap()
        .into_inner();
    assert!(configured.configured);
    // Nothing outside the upgrade directory is opened, let alone run.
    let e = client.inspect_binary(inspect("/bin/sh")).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(e.message().starts_with("binary: "), "{e:?}");

    // The status shows the serving binary's digest next to its version.
    agent.start_proxy().await;
    let status = agent.status().await;
    assert_eq!(status.binary, configured.binary);
    assert_eq!(status.binary_sha256, configured.sha256);
    assert_eq!(
        status.serving.as_ref().unwrap().binary_sha256,
        configured.sha256
    );

    // It runs the file: a READ_ONLY caller may not.
    let viewer = Agent::start_with(Options {
        server: "loopback_role = \"READ_ONLY\"".into(),
        ..Options::default()
    })
    .await;
    stage(&viewer, &content);
    let e = viewer
        .client()
        .await
        .inspect_binary(inspect(TARGET))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_that_crashes_during_its_hold_stops_the_upgrade() {
    let (cluster, _backend) = cluster_at_4_2(&[]).await;
    let content = package(V43);
    for a in &cluster.agents {
        stage(a, &content);
    }
    let task = cluster
        .client()
        .await
        .upgrade_all(upgrade(&sha256(&content), Duration::from_secs(3)))
        .await
        .unwrap()
        .into_inner();
    let canary_done = cluster
        .watch_task_until(&task.id, |t| {
            t.subtasks[0].state() == pb::SubtaskState::Succeeded
        })
        .await;
    assert_eq!(canary_done.subtasks[1].state(), pb::SubtaskState::Pending);
    // The canary's 4.3 dies during the hold; its agent starts the
    // configured binary (4.2) again.
    let pid = cluster.agents[0].status().await.pid;
    common::signal(pid, libc::SIGKILL);

    let done = cluster.wait_task(&task.id).await;
    assert_eq!(
        done.state(),
        pb::TaskState::RolledBack,
        "{}\n{}",
        done.error,
        cluster.logs()
    );
    let canary = &done.subtasks[0];
    assert_eq!(canary.state(), pb::SubtaskState::Failed, "{canary:?}");
    assert!(
        canary.last_error.contains("after canary_wait"),
        "{canary:?}"
    );
    for s in &done.subtasks[1..] {
        assert_eq!(s.state(), pb::SubtaskState::Skipped, "{s:?}");
        assert_eq!(s.attempts, 0);
    }
    for a in &cluster.agents[1..] {
        let s = a.status().await;
        assert_eq!((s.version.as_str(), s.restart_count), (V42, 0));
    }
}

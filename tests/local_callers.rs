//! Local callers are identified: on loopback TCP without credentials anyone
//! may read and nobody may change anything; the local socket (mode 0660)
//! gives each caller the role its uid and groups have, as the kernel reports
//! them; uid 65534 cannot stop an ODP; odpctl and grpcurl work over the
//! socket; a coordinator holding the agents' credentials must require
//! credentials itself.
use crate::common;

use std::{os::unix::fs::MetadataExt, process::Command};

use common::{
    Agent, Options,
    cluster::{CLUSTER, Cluster, ODPCTL},
    local::{self, NOBODY},
};
use odp_agent::proto::agent as pb;

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test]
async fn a_local_user_without_privileges_cannot_change_anything() {
    let agent = Agent::start_with(Options {
        // No loopback_role: the daemons' default applies.
        server: "# loopback_role left to its default".into(),
        ..Default::default()
    })
    .await;
    let running = local::operator(&agent)
        .await
        .start(pb::StartRequest {
            request_id: String::new(),
            wait: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(running.state(), pb::OperationState::Succeeded);
    let tools = tempfile::tempdir().unwrap();
    let grpcurl = local::grpcurl_for_nobody(tools.path());
    let addr = agent.grpc.to_string();
    let nobody = |args: &[&str]| {
        local::as_nobody(&grpcurl, args)
            .output()
            .expect("setpriv (util-linux) is needed")
    };

    // Reading is allowed.
    let status = nobody(&["-plaintext", &addr, "odp.agent.v1.Agent/GetStatus"]);
    assert!(status.status.success(), "{}", text(&status));
    assert!(text(&status).contains("PROXY_STATE_RUNNING"));
    // Changing anything is not, over loopback TCP...
    for (method, body) in [
        ("Stop", r#"{"wait": true}"#),
        ("Start", "{}"),
        ("Restart", r#"{"mode": "RESTART_MODE_FORCE"}"#),
        ("Restart", r#"{"mode": "RESTART_MODE_HOT"}"#),
    ] {
        let out = nobody(&[
            "-plaintext",
            "-d",
            body,
            &addr,
            &format!("odp.agent.v1.Agent/{method}"),
        ]);
        assert!(!out.status.success(), "{method}: {}", text(&out));
        assert!(
            text(&out).contains(&format!(
                "{method} needs role OBPROXY_MANAGER; anonymous has READ_ONLY"
            )),
            "{method}: {}",
            text(&out)
        );
    }
    // ...nor with odpctl...
    let out = local::as_nobody(
        std::path::Path::new(ODPCTL),
        &["agent", "stop", "--addr", &addr],
    )
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("Stop needs role OBPROXY_MANAGER"),
        "{}",
        text(&out)
    );
    // ...and the local socket is out of its reach (in the 0700 state dir).
    let socket = local::socket(&agent).display().to_string();
    let out = nobody(&[
        "-plaintext",
        "-unix",
        "-authority",
        "localhost",
        "-d",
        r#"{"wait": true}"#,
        &socket,
        "odp.agent.v1.Agent/Stop",
    ]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("permission denied"), "{}", text(&out));

    let after = agent.status().await;
    assert_eq!(after.state(), pb::ProxyState::Running);
    assert_eq!(after.pid, running.pid, "obproxy was touched");
    let denied = agent
        .audit()
        .iter()
        .filter(|l| {
            l["caller"] == "anonymous" && l["outcome"].as_str().unwrap().starts_with("denied")
        })
        .count();
    assert_eq!(denied, 5, "{:#?}", agent.audit());
}

#[tokio::test]
async fn the_local_socket_gives_each_caller_the_role_of_its_uid_and_groups() {
    let dir = tempfile::tempdir().unwrap();
    let sock_dir = dir.path().join("run");
    std::fs::create_dir(&sock_dir).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&sock_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let socket = sock_dir.join("grpc.sock");
    let agent = Agent::start_with(Options {
        server: format!(
            "unix_socket = {:?}\nunix_socket_group = \"nogroup\"",
            socket.display().to_string()
        ),
        more: "[[auth.local]]\nuser = \"nobody\"\nrole = \"READ_ONLY\"\n".into(),
        ..Default::default()
    })
    .await;
    let meta = std::fs::metadata(&socket).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o660);
    assert_eq!(meta.gid(), NOBODY);

    let path = socket.display().to_string();
    // Root (an operator) through odpctl and grpcurl.
    let odpctl = |args: &[&str]| {
        Command::new(ODPCTL)
            .args(["-o", "json", "agent"])
            .args(args)
            .args(["--addr", &format!("unix:{path}")])
            .output()
            .unwrap()
    };
    let out = odpctl(&["start"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = Command::new("grpcurl")
        .args([
            "-plaintext",
            "-unix",
            "-authority",
            "localhost",
            &path,
            "odp.agent.v1.Agent/GetStatus",
        ])
        .output()
        .unwrap();
    assert!(text(&out).contains("PROXY_STATE_RUNNING"), "{}", text(&out));
    let pid = agent.status().await.pid;

    // uid 65534 has READ_ONLY by its rule: reads, and is refused a Stop.
    let tools = tempfile::tempdir().unwrap();
    let grpcurl = local::grpcurl_for_nobody(tools.path());
    let out = local::as_nobody(
        &grpcurl,
        &[
            "-plaintext",
            "-unix",
            "-authority",
            "localhost",
            &path,
            "odp.agent.v1.Agent/GetStatus",
        ],
    )
    .output()
    .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let out = local::as_nobody(
        &grpcurl,
        &[
            "-plaintext",
            "-unix",
            "-authority",
            "localhost",
            &path,
            "odp.agent.v1.Agent/Stop",
        ],
    )
    .output()
    .unwrap();
    assert!(
        text(&out)
            .contains("Stop needs role OBPROXY_MANAGER; unix:nobody(uid=65534) has READ_ONLY"),
        "{}",
        text(&out)
    );
    // Another uid in the socket's group: it may connect, but has no role.
    let out = Command::new("setpriv")
        .args(["--reuid", "4242", "--regid", "65534", "--clear-groups"])
        .arg(&grpcurl)
        .args([
            "-plaintext",
            "-unix",
            "-authority",
            "localhost",
            &path,
            "odp.agent.v1.Agent/GetStatus",
        ])
        .output()
        .unwrap();
    assert!(
        text(&out).contains("unix:uid=4242 has no role on the local socket"),
        "{}",
        text(&out)
    );
    assert_eq!(agent.status().await.pid, pid, "obproxy was touched");

    // The operator stops it; the audit log names who did what.
    let out = odpctl(&["stop"]);
    assert!(out.status.success(), "{}", text(&out));
    let audit = agent.audit();
    assert!(
        audit.iter().any(|l| l["rpc"] == "Stop"
            && l["caller"] == "unix:root(uid=0)"
            && l["outcome"] == "ok"),
        "{audit:#?}"
    );
    assert!(
        audit
            .iter()
            .any(|l| l["rpc"] == "Stop" && l["caller"] == "unix:nobody(uid=65534)"),
        "{audit:#?}"
    );
}

#[tokio::test]
async fn odpctl_drives_the_coordinator_over_its_local_socket_and_nobody_cannot() {
    let agents = vec![Agent::start().await];
    // The coordinator as shipped: loopback TCP is READ_ONLY.
    let cluster = Cluster::with_config(agents, &[], "# loopback_role left to its default\n");
    let tools = tempfile::tempdir().unwrap();
    let grpcurl = local::grpcurl_for_nobody(tools.path());
    let addr = cluster.addr.to_string();
    let out = local::as_nobody(
        &grpcurl,
        &[
            "-plaintext",
            &addr,
            "odp.coordinator.v1.Coordinator/ListClusters",
        ],
    )
    .output()
    .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let out = local::as_nobody(
        &grpcurl,
        &[
            "-plaintext",
            "-d",
            &format!(r#"{{"cluster": "{CLUSTER}"}}"#),
            &addr,
            "odp.coordinator.v1.Coordinator/StopAll",
        ],
    )
    .output()
    .unwrap();
    assert!(
        text(&out).contains("StopAll needs role OBPROXY_MANAGER; anonymous has READ_ONLY"),
        "{}",
        text(&out)
    );
    let socket = format!("unix:{}", cluster.dir.path().join("grpc.sock").display());
    let out = Command::new(ODPCTL)
        .args([
            "--coordinator",
            &socket,
            "-o",
            "json",
            "cluster",
            "start",
            CLUSTER,
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let task: serde_json::Value =
        serde_json::from_str(&String::from_utf8_lossy(&out.stdout)).unwrap();
    assert_eq!(task["state"], "TASK_STATE_SUCCEEDED", "{task}");
    let audit = common::audit_lines(&cluster.dir.path().join("audit.log"));
    let start = audit.iter().find(|l| l["rpc"] == "StartAll").unwrap();
    assert_eq!(start["caller"], "unix:root(uid=0)", "{audit:#?}");
    assert_eq!(start["id"], task["id"], "{audit:#?}");
    let stop = audit.iter().find(|l| l["rpc"] == "StopAll").unwrap();
    assert_eq!(stop["caller"], "anonymous", "{audit:#?}");
    assert!(
        stop["outcome"].as_str().unwrap().starts_with("denied: "),
        "{audit:#?}"
    );
}

#[test]
fn a_coordinator_holding_the_agents_credentials_must_require_credentials() {
    let pki = common::pki::Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("coordinator.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[store]\npath = \"tasks.db\"\n\
             [agents.tls]\nca = {:?}\ncert = {:?}\nkey = {:?}\n",
            pki.path("ca.pem"),
            pki.path("operator.pem"),
            pki.path("operator.key")
        ),
    )
    .unwrap();
    let out = Command::new(common::cluster::COORDINATOR)
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78), "{}", text(&out));
    assert!(text(&out).contains("agents.tls.cert"), "{}", text(&out));
}

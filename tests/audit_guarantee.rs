//! Every admitted operation has exactly one audit line, written in the step
//! that admits it: a client that resets its request right after sending it
//! cannot skip it, a line that cannot be written (a full disk) refuses the
//! call before obproxy is touched, a rotated or deleted log is opened again,
//! and SIGHUP reopens it without ending either daemon.
use crate::common;

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use bytes::Bytes;
use common::{
    Agent, Options, PATIENCE,
    cluster::{CLUSTER, Cluster},
    local,
};
use odp_agent::proto::{agent as pb, coordinator as cpb};
use prost::Message;
use tonic::Code;

/// An agent (and a coordinator) whose audit log is `path`.
fn audit_at(path: &Path) -> String {
    format!("\n[audit]\npath = {:?}\n", path.display().to_string())
}

/// Waits until the agent runs no operation (asked over its local socket).
async fn idle(agent: &Agent) -> pb::ProxyStatus {
    let mut op = local::operator(agent).await;
    let deadline = Instant::now() + PATIENCE;
    loop {
        let s = op
            .get_status(pb::GetStatusRequest::default())
            .await
            .unwrap()
            .into_inner();
        if s.operation.is_none() {
            return s;
        }
        assert!(Instant::now() < deadline, "still busy: {s:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A gRPC request sent over raw HTTP/2 and reset (RST_STREAM CANCEL) right
/// after it was sent, `delay` later: the client hangs up mid-call.
async fn send_and_reset(addr: std::net::SocketAddr, path: &str, body: Vec<u8>, delay: Duration) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (client, conn) = h2::client::handshake(tcp).await.unwrap();
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut client = client.ready().await.unwrap();
    let request = http::Request::builder()
        .method("POST")
        .uri(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (_response, mut stream) = client.send_request(request, false).unwrap();
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(&body);
    stream.send_data(Bytes::from(frame), true).unwrap();
    if !delay.is_zero() {
        // Part of the attack's shape (how far the call got), not a wait.
        tokio::time::sleep(delay).await;
    }
    stream.send_reset(h2::Reason::CANCEL);
    drop(client);
    let _ = tokio::time::timeout(Duration::from_millis(200), driver).await;
}

#[tokio::test]
async fn a_request_reset_right_after_it_is_sent_is_audited_exactly_once_if_admitted() {
    let agent = Agent::start().await;
    agent.start_proxy().await;
    const TRIES: usize = 30;
    for i in 0..TRIES {
        let body = pb::RestartRequest {
            mode: pb::RestartMode::Force as i32,
            request_id: format!("reset-{i}"),
            ..Default::default()
        }
        .encode_to_vec();
        let delay = Duration::from_micros(300 * (i % 10) as u64);
        send_and_reset(agent.grpc, "/odp.agent.v1.Agent/Restart", body, delay).await;
        idle(&agent).await;
    }
    let logs = agent.logs();
    let admitted: Vec<String> = (0..TRIES)
        .map(|i| format!("reset-{i}"))
        .filter(|rid| {
            logs.lines().any(|l| {
                l.contains("operation admitted") && l.contains(&format!("Some(\"{rid}\")"))
            })
        })
        .collect();
    let mut lines: HashMap<String, Vec<serde_json::Value>> = HashMap::new();
    for line in agent.audit() {
        if let Some(rid) = line["request_id"]
            .as_str()
            .filter(|r| r.starts_with("reset-"))
        {
            lines.entry(rid.to_string()).or_default().push(line.clone());
        }
    }
    eprintln!(
        "{} of {TRIES} reset requests were admitted (the rest were dropped before the handler ran)",
        admitted.len()
    );
    assert!(
        !admitted.is_empty(),
        "no reset request got far enough to test anything"
    );
    for rid in &admitted {
        let got = lines.get(rid).map_or(&[][..], Vec::as_slice);
        assert_eq!(got.len(), 1, "{rid}: {got:#?}");
        assert_eq!(got[0]["outcome"], "ok", "{}", got[0]);
        assert_eq!(got[0]["mode"], "RESTART_MODE_FORCE", "{}", got[0]);
        assert!(got[0]["id"].as_str().unwrap().starts_with("op-"));
    }
    // Nothing audited as done that was not.
    for (rid, got) in &lines {
        if got.iter().any(|l| l["outcome"] == "ok") {
            assert!(
                admitted.contains(rid),
                "{rid} audited ok but never admitted"
            );
        }
    }
    assert_eq!(
        agent.status().await.restart_count as usize,
        admitted.len(),
        "every admitted FORCE restart ran"
    );
}

#[tokio::test]
async fn a_full_audit_disk_refuses_every_mutating_call_before_obproxy_is_touched() {
    let agent = Agent::start_with(Options {
        more: audit_at(Path::new("/dev/full")),
        ..Default::default()
    })
    .await;
    let mut client = agent.client().await;
    let refused = |e: tonic::Status| {
        assert_eq!(e.code(), Code::Unavailable, "{e:?}");
        assert!(e.message().contains("/dev/full"), "{e:?}");
        assert!(e.message().contains("nothing was done"), "{e:?}");
    };
    refused(
        client
            .start(pb::StartRequest {
                request_id: "full-start".into(),
                wait: true,
            })
            .await
            .unwrap_err(),
    );
    refused(
        client
            .restart(pb::RestartRequest {
                mode: pb::RestartMode::Force as i32,
                ..Default::default()
            })
            .await
            .unwrap_err(),
    );
    // Reads go on; nothing was started, nothing is left running.
    let status = agent.status().await;
    assert_eq!(status.state(), pb::ProxyState::Stopped);
    assert!(!status.desired_running);
    assert!(agent.obproxy_pids().is_empty());
    // The same request id is free: the refused call left nothing behind.
    let e = client
        .start(pb::StartRequest {
            request_id: "full-start".into(),
            wait: false,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable);
}

#[tokio::test]
async fn a_full_audit_disk_refuses_cluster_operations_before_any_agent_is_called() {
    let agents = vec![Agent::start().await, Agent::start().await];
    let cluster = Cluster::with_config(agents, &[], &audit_at(Path::new("/dev/full")));
    let e = cluster
        .client()
        .await
        .start_all(cpb::StartAllRequest {
            cluster: CLUSTER.into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(e.message().contains("/dev/full"), "{e:?}");
    let tasks = cluster
        .client()
        .await
        .list_tasks(cpb::ListTasksRequest::default())
        .await
        .unwrap()
        .into_inner()
        .tasks;
    assert!(tasks.is_empty(), "a refused call left a task: {tasks:?}");
    for agent in &cluster.agents {
        assert_eq!(agent.status().await.state(), pb::ProxyState::Stopped);
        assert!(agent.audit().is_empty(), "an agent was called");
    }
}

/// A tmpfs of 64 KiB, unmounted when dropped.
struct TinyDisk {
    dir: tempfile::TempDir,
}

impl TinyDisk {
    fn mount() -> Result<Self, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs"])
            .arg(dir.path())
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        Ok(Self { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes a file until the disk is full.
    fn fill(&self) -> PathBuf {
        use std::io::Write;
        let filler = self.path().join("filler");
        let mut f = std::fs::File::create(&filler).unwrap();
        let block = [0u8; 4096];
        while f.write_all(&block).is_ok() {}
        let _ = f.sync_all();
        filler
    }
}

impl Drop for TinyDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

#[tokio::test]
async fn a_disk_that_fills_up_refuses_operations_and_they_resume_when_space_returns() {
    let disk = match TinyDisk::mount() {
        Ok(disk) => disk,
        Err(why) => {
            eprintln!("SKIPPED: cannot mount a tmpfs (needs root): {why}");
            return;
        }
    };
    let audit = disk.path().join("audit.log");
    let agent = Agent::start_with(Options {
        more: audit_at(&audit),
        ..Default::default()
    })
    .await;
    let filler = disk.fill();
    let e = agent
        .client()
        .await
        .start(pb::StartRequest {
            request_id: "on-a-full-disk".into(),
            wait: true,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(e.message().contains("No space left"), "{e:?}");
    assert!(agent.obproxy_pids().is_empty());

    std::fs::remove_file(filler).unwrap();
    let started = agent.start_proxy().await;
    let lines = common::audit_lines(&audit);
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert_eq!(lines[0]["id"], started.id.as_str());
}

#[tokio::test]
async fn a_rotated_log_is_reopened_and_sighup_ends_neither_daemon() {
    let agents = vec![Agent::start().await];
    let mut cluster = Cluster::with_config(agents, &[], "");
    let agent = &cluster.agents[0];
    let state = agent.dir.path().join("state");
    // logrotate moves the file away; the next line goes to a new one.
    std::fs::rename(state.join("audit.log"), state.join("audit.log.1")).unwrap();
    agent.start_proxy().await;
    let fresh = agent.audit();
    assert_eq!(fresh.len(), 1, "{fresh:#?}");
    assert_eq!(fresh[0]["rpc"], "Start");
    // Deleted: the same.
    std::fs::remove_file(state.join("audit.log")).unwrap();
    agent.stop_proxy().await;
    assert_eq!(agent.audit().len(), 1);

    // SIGHUP: both reopen their log at once, and go on.
    std::fs::rename(state.join("audit.log"), state.join("audit.log.2")).unwrap();
    common::signal(agent.child.id(), libc::SIGHUP);
    agent.log.wait_for(|l| l.contains("audit log reopened"));
    assert!(state.join("audit.log").exists());
    common::signal(cluster.coordinator.id(), libc::SIGHUP);
    cluster.log.wait_for(|l| l.contains("audit log reopened"));
    let task = cluster
        .client()
        .await
        .start_all(cpb::StartAllRequest {
            cluster: CLUSTER.into(),
            request_id: "after-hup".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    cluster.wait_task(&task.id).await;
    assert!(common::alive(cluster.coordinator.id()));
    assert!(common::alive(cluster.agents[0].child.id()));
    let coordinator_audit = common::audit_lines(&cluster.dir.path().join("audit.log"));
    assert!(
        coordinator_audit
            .iter()
            .any(|l| l["request_id"] == "after-hup" && l["outcome"] == "ok"),
        "{coordinator_audit:#?}"
    );
    cluster.kill_coordinator();
}

#[tokio::test]
async fn restart_lines_name_the_mode_the_binary_and_the_window() {
    let agents = vec![Agent::start().await];
    let cluster = Cluster::with_config(agents, &[], "");
    let agent = &cluster.agents[0];
    agent.start_proxy().await;
    let binary = agent.add_binary("obproxy-next", &[]);
    let hot = agent
        .restart_with(pb::RestartRequest {
            mode: pb::RestartMode::Hot as i32,
            binary: binary.clone(),
            exit_timeout: Some(prost_types::Duration {
                seconds: 5,
                nanos: 0,
            }),
            request_id: "hot-1".into(),
            wait: true,
        })
        .await
        .unwrap();
    assert_eq!(hot.state(), pb::OperationState::Succeeded, "{hot:?}");
    agent.restart(pb::RestartMode::Force, true).await.unwrap();
    let audit = agent.audit();
    let line = |mode: &str| {
        audit
            .iter()
            .find(|l| l["rpc"] == "Restart" && l["mode"] == mode)
            .unwrap_or_else(|| panic!("{audit:#?}"))
            .clone()
    };
    let hot = line("RESTART_MODE_HOT");
    assert_eq!(
        hot["binary"],
        agent.home().join(&binary).display().to_string()
    );
    assert_eq!(hot["exit_timeout"], "5s");
    assert_eq!(hot["request_id"], "hot-1");
    assert!(line("RESTART_MODE_FORCE")["binary"].is_null());

    let task = cluster
        .client()
        .await
        .restart_all(cpb::RestartAllRequest {
            cluster: CLUSTER.into(),
            mode: pb::RestartMode::Hot as i32,
            batch_size: 1,
            exit_timeout: Some(prost_types::Duration {
                seconds: 3,
                nanos: 0,
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    cluster.wait_task(&task.id).await;
    let audit = common::audit_lines(&cluster.dir.path().join("audit.log"));
    let line = audit.iter().find(|l| l["rpc"] == "RestartAll").unwrap();
    assert_eq!(line["mode"], "RESTART_MODE_HOT", "{line}");
    assert_eq!(line["exit_timeout"], "3s", "{line}");
    assert_eq!(line["batch_size"], 1, "{line}");
    assert_eq!(line["id"], task.id.as_str(), "{line}");
}

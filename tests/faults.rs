//! Faults the daemons survive, or end cleanly on: a log stream whose reader
//! is gone (a journald restart) costs nothing, and SIGHUP then SIGTERM still
//! end the daemon with exit 0; a panic in any thread (signals, spawner,
//! supervisor, a coordinator task) ends the whole process with a line saying
//! where, and obproxy, which outlives the agent, is re-adopted by the next.
use crate::common;

use std::{
    io::{BufRead, BufReader},
    os::unix::process::ExitStatusExt,
    process::{Child, Command, Stdio},
};

use common::{Agent, Options, local, wait_child};
use odp_agent::proto::agent as pb;

/// Starts `command` with stderr on a pipe, reads until the daemon serves,
/// and returns the child, the pipe's reader (drop it to break the pipe) and
/// the lines read.
fn spawn_on_a_pipe(
    mut command: Command,
) -> (Child, BufReader<std::process::ChildStderr>, Vec<String>) {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut reader = BufReader::new(child.stderr.take().unwrap());
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        // EOF: the daemon is gone (nothing left to wait for but its zombie).
        assert!(
            reader.read_line(&mut line).unwrap_or(0) > 0,
            "the daemon ended before it served:\n{}",
            lines.concat()
        );
        let serving = line.contains("grpc_addr=");
        lines.push(line);
        if serving {
            break;
        }
    }
    (child, reader, lines)
}

fn config_of(agent: &Agent) -> Command {
    common::agent_command(&agent.config)
}

#[tokio::test]
async fn a_broken_log_stream_costs_the_agent_nothing_and_sigterm_still_ends_it() {
    // An agent whose first run only wrote the configuration (and started
    // obproxy); this one logs to a pipe whose reader goes away.
    let mut first = Agent::start_with(Options {
        metrics: true,
        ..Default::default()
    })
    .await;
    let pid = first.start_proxy().await.pid;
    assert!(first.terminate().success());
    let (mut child, reader, lines) = spawn_on_a_pipe(config_of(&first));
    let metrics: std::net::SocketAddr = lines
        .iter()
        .find_map(|l| common::log_field(l, "metrics_addr"))
        .unwrap()
        .parse()
        .unwrap();
    drop(reader);
    // Each signal is logged: every line now meets a broken pipe.
    common::signal(child.id(), libc::SIGHUP);
    common::signal(child.id(), libc::SIGHUP);
    // The agent still answers, supervises (re-adopted obproxy), and counts
    // what it could not log.
    let mut op = local::operator(&first).await;
    let status = op
        .get_status(pb::GetStatusRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.state(), pb::ProxyState::Running);
    assert_eq!(status.pid, pid);
    let deadline = std::time::Instant::now() + common::PATIENCE;
    loop {
        let (_, body) = common::http_get(metrics, "/metrics").await;
        let lost = common::sample(&body, "odp_log_write_errors_total").unwrap();
        if lost >= 2.0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{body}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    common::signal(child.id(), libc::SIGTERM);
    let exit = wait_child(&mut child);
    assert!(exit.success(), "{exit:?}");
    assert!(common::alive(pid), "obproxy went with the agent");
    common::signal(pid, libc::SIGKILL);
}

#[tokio::test]
async fn a_broken_log_stream_and_sighup_do_not_end_the_coordinator() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("coordinator.toml");
    std::fs::write(
        &config,
        "[server]\nlisten = \"127.0.0.1:0\"\n[store]\npath = \"tasks.db\"\n",
    )
    .unwrap();
    let mut command = Command::new(common::cluster::COORDINATOR);
    command.arg("--config").arg(&config);
    let (mut child, reader, _) = spawn_on_a_pipe(command);
    drop(reader);
    common::signal(child.id(), libc::SIGHUP);
    // Still serving, over its local socket.
    let channel = local::unix_channel(&dir.path().join("grpc.sock"))
        .await
        .unwrap();
    odp_agent::proto::coordinator::coordinator_client::CoordinatorClient::new(channel)
        .list_clusters(odp_agent::proto::coordinator::ListClustersRequest {})
        .await
        .unwrap();
    assert!(child.try_wait().unwrap().is_none(), "SIGHUP ended it");
    common::signal(child.id(), libc::SIGTERM);
    let exit = wait_child(&mut child);
    assert!(exit.success(), "{exit:?}");
}

/// Runs the agent of `agent`'s configuration with `ODP_DEBUG_PANIC=point`,
/// does `trigger` to it, and returns its exit and its log.
async fn panicking_agent(
    agent: &Agent,
    point: &str,
    trigger: impl AsyncFnOnce(&Agent, u32),
) -> (std::process::ExitStatus, String) {
    let mut command = config_of(agent);
    command.env("ODP_DEBUG_PANIC", point);
    let (mut child, _, log) = common::spawn_logged(command, "agent");
    trigger(agent, child.id()).await;
    let exit = wait_child(&mut child);
    let text = log.lock().unwrap().join("\n");
    (exit, text)
}

#[tokio::test]
async fn a_panic_in_any_thread_ends_the_agent_and_obproxy_is_readopted() {
    let mut agent = Agent::start().await;
    let pid = agent.start_proxy().await.pid;
    let addr = agent.sql_addr().await;
    assert!(agent.terminate().success());

    let sighup = async |_: &Agent, agent_pid: u32| common::signal(agent_pid, libc::SIGHUP);
    let status = async |a: &Agent, _| {
        // The first status the supervisor computes panics; the call fails.
        let _ = local::operator(a)
            .await
            .get_status(pb::GetStatusRequest::default())
            .await;
    };
    for (point, place, exit) in [
        (
            "signals",
            "thread 'signals' at src/agent/signals.rs",
            panicking_agent(&agent, "signals", sighup).await,
        ),
        (
            "supervisor",
            "at src/agent/supervisor.rs",
            panicking_agent(&agent, "supervisor", status).await,
        ),
    ] {
        let (exit, log) = exit;
        assert_eq!(
            exit.signal(),
            Some(libc::SIGABRT),
            "{point}: {exit:?}\n{log}"
        );
        assert!(
            log.contains(&format!("panic in {place}")) || log.contains(place),
            "{point}:\n{log}"
        );
        assert!(log.contains("ODP_DEBUG_PANIC"), "{point}:\n{log}");
        // obproxy serves on, through every agent's end.
        common::round_trip(addr).await.unwrap();
    }

    // The spawner: obproxy is down and must be started; the agent ends at
    // the spawn, and the next agent starts it.
    common::signal(pid, libc::SIGKILL);
    let mut command = config_of(&agent);
    command.env("ODP_DEBUG_PANIC", "spawner");
    let (mut child, _, log) = common::spawn_logged(command, "agent");
    let exit = wait_child(&mut child);
    let text = log.lock().unwrap().join("\n");
    assert_eq!(exit.signal(), Some(libc::SIGABRT), "{exit:?}\n{text}");
    assert!(
        text.contains("panic in thread 'obproxy-spawner' at src/agent/obproxy/spawner.rs"),
        "{text}"
    );

    // A sound agent picks up where they left: it respawns obproxy.
    let (child, grpc, log) = common::spawn_agent(&agent.config);
    agent.child = child;
    agent.grpc = grpc;
    agent.log = log;
    let running = agent
        .wait_status(|s| s.state() == pb::ProxyState::Running && s.pid != 0)
        .await;
    assert_ne!(running.pid, pid);
}

#[tokio::test]
async fn a_panic_ends_the_coordinator() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("coordinator.toml");
    std::fs::write(
        &config,
        "[server]\nlisten = \"127.0.0.1:0\"\n[store]\npath = \"tasks.db\"\n",
    )
    .unwrap();
    let mut command = Command::new(common::cluster::COORDINATOR);
    command
        .arg("--config")
        .arg(&config)
        .env("ODP_DEBUG_PANIC", "coordinator-signals");
    let (mut child, _, log) = common::spawn_logged(command, "coordinator");
    common::signal(child.id(), libc::SIGHUP);
    let exit = wait_child(&mut child);
    let text = log.lock().unwrap().join("\n");
    assert_eq!(exit.signal(), Some(libc::SIGABRT), "{exit:?}\n{text}");
    assert!(text.contains("odp-coordinator: panic in thread"), "{text}");
}

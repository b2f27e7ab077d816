//! Admin SQL as `root@proxysys`: the password file is checked at start (exit
//! 78 naming file, key and reason), a HOT restart's window reaches the old
//! obproxy over SQL or, without it, is enforced by SIGKILL (shorter) or
//! refused (longer), and GetStatus says what the binary reports and why
//! admin SQL does not work when it does not.
mod common;

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use common::{Agent, Options, agent_command, alive, echo};
use odp_agent::proto::agent as pb;
use tokio::net::TcpStream;

const PASSWORD: &str = "pr0xy-sys";

fn hot(window: Duration) -> pb::RestartRequest {
    pb::RestartRequest {
        mode: pb::RestartMode::Hot as i32,
        exit_timeout: Some(prost_types::Duration {
            seconds: window.as_secs() as i64,
            nanos: window.subsec_nanos() as i32,
        }),
        wait: true,
        ..Default::default()
    }
}

fn write_password(dir: &Path, text: &str, mode: u32) -> PathBuf {
    let path = dir.join("proxysys.pw");
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path
}

/// Runs the agent on a configuration whose `[obproxy]` has `keys` too, and
/// expects it to refuse to start: (exit code, stderr).
fn refused_with(keys: &str, setup: impl FnOnce(&Path)) -> (i32, String, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    setup(dir.path());
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[obproxy]\nhome = \"odp\"\n\
             listen = [\"127.0.0.1:0\"]\n{keys}\n[state]\ndir = \"state\"\n"
        ),
    )
    .unwrap();
    let out = Command::new(common::AGENT)
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(stderr.contains(&config.display().to_string()), "{stderr}");
    (out.status.code().unwrap_or(-1), stderr, dir.keep())
}

#[test]
fn a_missing_password_file_exits_78_naming_it() {
    let (code, stderr, dir) = refused_with("sys_password_file = \"proxysys.pw\"", |_| {});
    assert_eq!(code, 78, "{stderr}");
    assert!(stderr.contains("obproxy.sys_password_file"), "{stderr}");
    let file = dir.join("proxysys.pw");
    assert!(stderr.contains(&file.display().to_string()), "{stderr}");
    assert!(stderr.contains("No such file"), "{stderr}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_password_file_others_can_read_exits_78_with_the_fix() {
    let (code, stderr, dir) = refused_with("sys_password_file = \"proxysys.pw\"", |dir| {
        write_password(dir, PASSWORD, 0o644);
    });
    assert_eq!(code, 78, "{stderr}");
    assert!(stderr.contains("obproxy.sys_password_file"), "{stderr}");
    assert!(
        stderr.contains("readable by other users (mode 0644)") && stderr.contains("chmod o-rwx"),
        "{stderr}"
    );
    assert!(!stderr.contains(PASSWORD), "the password leaked: {stderr}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn the_native_strategy_without_a_password_file_exits_78() {
    let (code, stderr, dir) = refused_with("restart_strategy = \"native\"", |_| {});
    assert_eq!(code, 78, "{stderr}");
    assert!(
        stderr.contains("obproxy.restart_strategy") && stderr.contains("sys_password_file"),
        "{stderr}"
    );
    std::fs::remove_dir_all(dir).unwrap();
    let (code, stderr, dir) = refused_with("restart_strategy = \"obd\"", |_| {});
    assert_eq!(code, 78, "{stderr}");
    assert!(stderr.contains("obproxy.restart_strategy"), "{stderr}");
    std::fs::remove_dir_all(dir).unwrap();
}

/// An agent with `keys` added to its `[obproxy]` section, and the password
/// file (mode 0600) next to its configuration when `password` is given.
async fn agent_with(opts: Options, keys: &'static str, password: Option<&'static str>) -> Agent {
    Agent::start_customized(opts, move |config| {
        if let Some(password) = password {
            write_password(config.parent().unwrap(), password, 0o600);
        }
        let text = std::fs::read_to_string(config).unwrap();
        let text = text.replacen("[obproxy]\n", &format!("[obproxy]\n{keys}\n"), 1);
        std::fs::write(config, text).unwrap();
        agent_command(config)
    })
    .await
}

#[tokio::test]
async fn without_admin_sql_a_shorter_window_is_a_sigkill_at_the_deadline_and_said_so() {
    let agent = Agent::start_with(Options {
        exit_timeout: "20s",
        ..Default::default()
    })
    .await;
    let old = agent.start_proxy().await.pid;
    assert!(
        agent
            .status()
            .await
            .notices
            .iter()
            .any(|n| n.starts_with("admin SQL is off")),
        "GetStatus says why nothing is done over SQL"
    );
    let mut session = TcpStream::connect(agent.sql_addr().await).await.unwrap();
    echo(&mut session, b"held").await.unwrap();

    let started = Instant::now();
    let op = agent.restart_with(hot(Duration::from_secs(1))).await.unwrap();
    let took = started.elapsed();
    assert_eq!(op.state(), pb::OperationState::Succeeded, "{}", op.error);
    let events = op.events.join("\n");
    assert!(
        events.contains("keeps the 20s window it was started with")
            && events.contains("enforced by SIGKILL at the deadline"),
        "{events}"
    );
    assert!(
        events.contains(&format!(
            "drain deadline of pid {old}: SIGKILL; its 1 client session(s) still open were cut"
        )),
        "{events}"
    );
    assert!(took < Duration::from_secs(10), "{took:?}: waited for the 20s window");
    assert!(!alive(old));
    // The new process was started with the configured window, not the request's.
    assert!(
        agent.logs().contains("hot_upgrade_exit_timeout=20000000"),
        "{}",
        agent.logs()
    );
}

#[tokio::test]
async fn without_admin_sql_a_longer_window_is_refused_and_nothing_changes() {
    let agent = Agent::start().await;
    let old = agent.start_proxy().await.pid;
    let op = agent
        .restart_with(hot(Duration::from_secs(30)))
        .await
        .unwrap();
    assert_eq!(op.state(), pb::OperationState::Failed);
    assert!(
        op.error.contains("exit_timeout 30s is longer than the 10s window pid")
            && op.error.contains("sys_password_file"),
        "{}",
        op.error
    );
    let status = agent.status().await;
    assert_eq!(status.pid, old);
    assert_eq!(agent.obproxy_pids(), vec![old], "nothing was spawned");
    common::round_trip(agent.sql_addr().await).await.unwrap();
}

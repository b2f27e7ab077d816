//! Admin SQL as `root@proxysys`: the password file is checked at start (exit
//! 78 naming file, key and reason), a HOT restart's window reaches the old
//! obproxy over SQL or, without it, is enforced by SIGKILL (shorter) or
//! refused (longer), and GetStatus says what the binary reports and why
//! admin SQL does not work when it does not.
use crate::common;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use common::{
    Agent, Options,
    admin_sql::{self, PASSWORD, agent_with, write_password},
    alive, echo,
    mariadb::MariaDb,
    txn_load::{self, Load, Outcome, Shape},
};
use mysql_async::prelude::*;
use odp_agent::proto::agent as pb;

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
    let mut session = common::connect(agent.sql_addr().await).await.unwrap();
    echo(&mut session, b"held").await.unwrap();

    let started = Instant::now();
    let op = agent
        .restart_with(hot(Duration::from_secs(1)))
        .await
        .unwrap();
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
    assert!(
        took < Duration::from_secs(10),
        "{took:?}: waited for the 20s window"
    );
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
        op.error
            .contains("exit_timeout 30s is longer than the 10s window pid")
            && op.error.contains("sys_password_file"),
        "{}",
        op.error
    );
    let status = agent.status().await;
    assert_eq!(status.pid, old);
    assert_eq!(agent.obproxy_pids(), vec![old], "nothing was spawned");
    common::round_trip(agent.sql_addr().await).await.unwrap();
}

#[tokio::test]
async fn getstatus_reports_what_obproxy_says_about_its_binary() {
    let agent = agent_with(
        Options {
            args: admin_sql::args(""),
            ..Default::default()
        },
        "",
        Some(PASSWORD),
    )
    .await;
    agent.start_proxy().await;
    let status = agent
        .wait_status(|s| s.serving.as_ref().is_some_and(|p| p.binary_info.is_some()))
        .await;
    let info = status.serving.unwrap().binary_info.unwrap();
    assert_eq!(info.version, "4.3.1.0");
    assert_eq!(
        info.version, status.version,
        "-V and the running binary agree"
    );
    assert!(!info.build.is_empty(), "{info:?}");
    assert!(
        !status.notices.iter().any(|n| n.contains("admin SQL")),
        "{:?}",
        status.notices
    );
    assert!(!agent.logs().contains(PASSWORD), "the password leaked");
}

#[tokio::test]
async fn a_wrong_password_is_reported_and_the_window_falls_back_to_the_agents_sigkill() {
    let agent = agent_with(
        Options {
            args: admin_sql::args(""),
            ..Default::default()
        },
        "",
        Some("not-the-password"),
    )
    .await;
    let old = agent.start_proxy().await.pid;
    let status = agent
        .wait_status(|s| s.notices.iter().any(|n| n.starts_with("admin SQL failed")))
        .await;
    let notice = status
        .notices
        .iter()
        .find(|n| n.starts_with("admin SQL failed"))
        .unwrap();
    let file = agent.dir.path().join("proxysys.pw");
    assert!(
        notice.contains("refused the login as root@proxysys")
            && notice.contains(&file.display().to_string()),
        "{notice}"
    );
    assert!(status.serving.unwrap().binary_info.is_none());

    let op = agent
        .restart_with(hot(Duration::from_secs(1)))
        .await
        .unwrap();
    assert_eq!(op.state(), pb::OperationState::Succeeded, "{}", op.error);
    let events = op.events.join("\n");
    assert!(
        events.contains("admin SQL failed (")
            && events.contains("refused the login as root@proxysys")
            && events.contains(&format!(
                "pid {old} keeps the 10s window it was started with"
            )),
        "{events}"
    );
    assert!(
        !agent.logs().contains("not-the-password"),
        "the password leaked"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    skip_mariadb,
    ignore = "needs MariaDB: built with ODP_TEST_SKIP_MARIADB=1"
)]
async fn a_2s_request_against_a_20s_window_closes_sessions_at_transaction_ends_within_2s() {
    let db = MariaDb::start();
    db.connect()
        .await
        .query_drop(txn_load::TABLE)
        .await
        .unwrap();
    let backend = format!("standin_backend=127.0.0.1:{}", db.port);
    let agent = agent_with(
        Options {
            exit_timeout: "20s",
            args: admin_sql::args(&backend),
            ..Default::default()
        },
        "",
        Some(PASSWORD),
    )
    .await;
    let old = agent.start_proxy().await.pid;
    let port = agent.sql_addr().await.port();
    // Three clients keeping their sessions, short transactions back to back: with the
    // configured 20 s, obproxy's allowance would keep all three for over 6 s.
    let shape = Shape {
        rows: 2,
        work: Duration::from_millis(20),
        per_session: None,
    };
    let load = Load::start(&[(port, shape); 3]);
    load.wait("a committed transaction each", |p| {
        p.iter().all(|c| c.committed >= 1)
    })
    .await;

    let op = agent
        .restart_with(pb::RestartRequest {
            wait: false,
            ..hot(Duration::from_secs(2))
        })
        .await
        .unwrap();
    agent
        .watch_op_until(&op.id, |o| o.phase() == pb::OperationPhase::Draining)
        .await;
    let drain_began = Instant::now();
    let done = agent.wait_op(&op.id).await;
    let drained_in = drain_began.elapsed();
    assert_eq!(
        done.state(),
        pb::OperationState::Succeeded,
        "{}",
        done.error
    );
    let events = done.events.join("\n");
    assert!(
        events.contains(&format!(
            "pid {old}: hot_upgrade_exit_timeout = 2000000 µs (2s) over admin SQL, verified"
        )),
        "{events}"
    );
    assert!(!events.contains("drain deadline"), "SIGKILLed: {events}");
    assert!(
        drained_in < Duration::from_millis(3500),
        "the old process drained for {drained_in:?}, not within its 2s window"
    );
    let at_end = load.progress();
    load.wait("commit again on the new process", |p| {
        p.iter()
            .zip(&at_end)
            .all(|(now, then)| now.committed > then.committed)
    })
    .await;
    let report = load.finish().await;
    let tally = txn_load::verify(&mut db.connect().await, &report).await;

    let output = agent.obproxy_output();
    let of_old = |event: &str| -> Vec<String> {
        let prefix = format!("obproxy-standin: {event} pid={old} ");
        output
            .lines()
            .filter(|l| l.starts_with(&prefix))
            .map(str::to_owned)
            .collect()
    };
    let begun = of_old("drain begun");
    assert!(
        begun.len() == 1
            && begun[0].contains("open_connections=3")
            && begun[0].contains("window=2s"),
        "{begun:?}"
    );
    // Two of the three left at a transaction end as the allowance shrank; the last one may
    // stay to the window end (obproxy's formula), where it is cut only if it is inside a
    // transaction then.
    let closed = of_old("session closed at boundary");
    assert!(closed.len() >= 2, "{output}");
    let finished = of_old("drain finished");
    assert_eq!(finished.len(), 1, "{output}");
    let cut_at_end = usize::from(!finished[0].contains("cut=0"));
    let cut = tally.cut + tally.commit_unknown_committed + tally.commit_unknown_rolled_back;
    assert_eq!(cut, cut_at_end, "{finished:?} {tally:?}");
    // The closed sessions met their clients between transactions: nothing was lost.
    assert!(tally.not_begun >= 2, "{tally:?}");
    let lost: Vec<_> = report
        .failures()
        .into_iter()
        .filter(|t| {
            !matches!(
                t.outcome,
                Outcome::NotBegun | Outcome::Cut | Outcome::CommitUnknown
            )
        })
        .collect();
    assert!(lost.is_empty(), "{lost:#?}");
    assert_eq!(report.refused(), 0);
    assert!(
        report.connect_errors().is_empty(),
        "{:?}",
        report.connect_errors()
    );
    eprintln!(
        "drained in {drained_in:?}; {} closed at a transaction end; {finished:?}; {tally:?}",
        closed.len()
    );
}

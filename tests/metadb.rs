//! Tasks in a shared MySQL-compatible metadb (a real MariaDB started by the
//! test): three coordinators on it, one leader runs every task whichever
//! coordinator accepted it, all of them answer for it; one request id makes
//! one task across coordinators; a cancel asked of a follower is honoured; a runner whose lease token is no longer the
//! leader's writes nothing more; a schema newer than the coordinator knows
//! and a bad `[store]` are refused with exit 78.
use crate::common;

use std::{process::Command, time::Duration};

use common::{
    PATIENCE,
    cluster::{CLUSTER, COORDINATOR},
    mariadb::MariaDb,
    metadb::Fleet,
};
use mysql_async::prelude::Queryable;
use odp_agent::proto::{agent as apb, coordinator as pb};

fn start_all(request_id: &str) -> pb::StartAllRequest {
    pb::StartAllRequest {
        cluster: CLUSTER.into(),
        request_id: request_id.into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    skip_mariadb,
    ignore = "needs MariaDB: built with ODP_TEST_SKIP_MARIADB=1"
)]
async fn three_coordinators_share_the_tasks_and_only_the_leader_runs_them() {
    let fleet = Fleet::start(3, 3).await;
    let (leader, _) = fleet.leader().await;
    let l = fleet.index_of(&leader);
    let followers: Vec<usize> = (0..3).filter(|&i| i != l).collect();
    // Accepted by a follower; the same request id at the other follower is
    // the same task.
    let task = fleet
        .client(followers[0])
        .await
        .start_all(start_all("deploy-1"))
        .await
        .unwrap()
        .into_inner();
    let again = fleet
        .client(followers[1])
        .await
        .start_all(start_all("deploy-1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.id, task.id, "one request id, two tasks");
    let done = fleet
        .wait_task(followers[1], &task.id, PATIENCE, |_| false)
        .await;
    assert_eq!(
        done.state(),
        pb::TaskState::Succeeded,
        "{done:?}\n{}",
        fleet.all_logs()
    );
    for a in &fleet.agents {
        assert_eq!(a.status().await.state(), apb::ProxyState::Running);
    }
    // Every coordinator lists it; only the leader ran it.
    for i in 0..3 {
        let listed = fleet
            .client(i)
            .await
            .list_tasks(pb::ListTasksRequest {
                cluster: CLUSTER.into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(listed.tasks.len(), 1, "coordinator {i}");
        assert_eq!(listed.tasks[0].id, task.id);
        let ran = fleet.coordinators[i].logs().contains("task running");
        assert_eq!(ran, i == l, "coordinator {i} ran the task: {ran}");
    }
    // Every coordinator names the same leader; it alone says it leads, in
    // GetLeader, in its metrics and through odpctl.
    for i in 0..3 {
        let said = fleet
            .client(i)
            .await
            .get_leader(pb::GetLeaderRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(said.holder, leader);
        assert_eq!(said.store, "metadb");
        assert_eq!(said.this_coordinator, fleet.coordinators[i].name);
        assert_eq!(said.this_coordinator_leads, i == l);
        assert!(said.expires_in.unwrap().seconds <= 3);
        let c = &fleet.coordinators[i];
        let leads = if i == l { 1.0 } else { 0.0 };
        assert_eq!(c.metric("odp_coordinator_is_leader").await, Some(leads));
        let acquired = c
            .metric("odp_coordinator_lease_changes_total{event=\"acquired\"}")
            .await;
        assert_eq!(acquired, (i == l).then_some(1.0));
    }
    let out = Command::new(common::cluster::ODPCTL)
        .args([
            "--coordinator",
            &fleet.coordinators[followers[0]].addr.to_string(),
        ])
        .args(["cluster", "leader"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains(&format!("leader {leader}  token")), "{text}");
    assert!(text.contains("(following)"), "{text}");
    // WatchTask at a follower follows the leader's run to its end.
    let watched = fleet
        .client(followers[0])
        .await
        .watch_task(pb::WatchTaskRequest {
            id: task.id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .message()
        .await
        .unwrap()
        .unwrap();
    assert_eq!(watched.state(), pb::TaskState::Succeeded);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    skip_mariadb,
    ignore = "needs MariaDB: built with ODP_TEST_SKIP_MARIADB=1"
)]
async fn a_runner_whose_token_was_superseded_writes_nothing_more() {
    // A long lease: the renewal (every 100 s) does not notice the takeover
    // below in time; the fence on the runner's next write must.
    let fleet = Fleet::start_with_lease(2, 1, Duration::from_secs(300)).await;
    let done = fleet
        .wait_task(
            0,
            &fleet
                .client(0)
                .await
                .start_all(start_all(""))
                .await
                .unwrap()
                .into_inner()
                .id,
            PATIENCE,
            |_| false,
        )
        .await;
    assert_eq!(done.state(), pb::TaskState::Succeeded, "{done:?}");
    for a in &fleet.agents {
        a.set_standin_env(&[("ODP_STANDIN_START_DELAY", "1500ms")]);
    }
    let task = fleet
        .client(0)
        .await
        .restart_all(pb::RestartAllRequest {
            cluster: CLUSTER.into(),
            mode: apb::RestartMode::Force as i32,
            batch_size: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    fleet
        .wait_task(0, &task.id, PATIENCE, |t| {
            !t.subtasks[0].operation_id.is_empty()
        })
        .await;
    // Another holder takes the lease, as a coordinator would after this
    // one's lease expired unseen (a pause, a partition).
    let mut sql = fleet.sql().await;
    sql.query_drop(
        "UPDATE odp_leader SET holder = 'intruder', token = token + 1, \
         expires_at = TIMESTAMPADD(SECOND, 3600, NOW(6)) WHERE id = 1",
    )
    .await
    .unwrap();
    let (_, before) = fleet.task_row(&task.id).await;
    fleet.coordinators[0]
        .wait_log("lease lost: stopping without writing")
        .await;
    fleet.coordinators[0]
        .wait_log("lease lost: not leading")
        .await;
    // The first ODP's restart ends at its agent; the coordinator writes
    // none of it, and never starts the second.
    fleet.agents[0]
        .wait_status(|s| s.restart_count == 1 && s.state() == apb::ProxyState::Running)
        .await;
    let (state, after) = fleet.task_row(&task.id).await;
    assert_eq!(state, "running");
    assert_eq!(after, before, "a fenced runner wrote the task");
    assert_eq!(fleet.agents[1].status().await.restart_count, 0);
    assert_eq!(fleet.leader().await.0, "intruder");
    // The intruder goes away: the coordinator leads again under a new
    // token and finishes the task, no ODP restarted twice.
    sql.query_drop("UPDATE odp_leader SET expires_at = NOW(6) WHERE id = 1")
        .await
        .unwrap();
    let done = fleet.wait_task(0, &task.id, PATIENCE * 2, |_| false).await;
    assert_eq!(
        done.state(),
        pb::TaskState::Succeeded,
        "{done:?}\n{}",
        fleet.all_logs()
    );
    for a in &fleet.agents {
        assert_eq!(a.status().await.restart_count, 1, "restarted twice");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    skip_mariadb,
    ignore = "needs MariaDB: built with ODP_TEST_SKIP_MARIADB=1"
)]
async fn a_cancel_asked_of_a_follower_is_honoured_by_the_leader() {
    let fleet = Fleet::start(3, 2).await;
    let (leader, _) = fleet.leader().await;
    let f = 1 - fleet.index_of(&leader);
    let started = fleet
        .client(f)
        .await
        .start_all(start_all(""))
        .await
        .unwrap()
        .into_inner();
    let done = fleet.wait_task(f, &started.id, PATIENCE, |_| false).await;
    assert_eq!(done.state(), pb::TaskState::Succeeded, "{done:?}");
    for a in &fleet.agents {
        a.set_standin_env(&[("ODP_STANDIN_START_DELAY", "1s")]);
    }
    let task = fleet
        .client(f)
        .await
        .restart_all(pb::RestartAllRequest {
            cluster: CLUSTER.into(),
            mode: apb::RestartMode::Force as i32,
            batch_size: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    fleet
        .wait_task(f, &task.id, PATIENCE, |t| {
            !t.subtasks[0].operation_id.is_empty()
        })
        .await;
    let answer = fleet
        .client(f)
        .await
        .cancel_task(pb::CancelTaskRequest {
            id: task.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(answer.cancel_requested);
    let done = fleet.wait_task(f, &task.id, PATIENCE, |_| false).await;
    assert_eq!(
        done.state(),
        pb::TaskState::Cancelled,
        "{done:?}\n{}",
        fleet.all_logs()
    );
    // The ODP in flight finished; no later one was touched.
    assert_eq!(done.subtasks[0].state(), pb::SubtaskState::Succeeded);
    assert_eq!(done.subtasks[2].state(), pb::SubtaskState::Cancelled);
    assert_eq!(fleet.agents[2].status().await.restart_count, 0);
}

/// Runs a coordinator on `config` to its exit: its code and stderr.
fn run_config(config: &str, env: &[(&str, &str)]) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("coordinator.toml");
    std::fs::write(&path, config).unwrap();
    std::fs::write(dir.path().join("password"), "odp\n").unwrap();
    let out = Command::new(COORDINATOR)
        .arg("--config")
        .arg(&path)
        .env_remove("ODP_STORE_PASSWORD")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).to_string(),
        path.display().to_string(),
    )
}

fn config(store: &str) -> String {
    format!("[server]\nlisten = \"127.0.0.1:0\"\n[store]\n{store}\nstate_dir = \"state\"\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    skip_mariadb,
    ignore = "needs MariaDB: built with ODP_TEST_SKIP_MARIADB=1"
)]
async fn a_schema_newer_than_the_coordinator_knows_is_refused() {
    let db = MariaDb::start();
    let mut sql = db.connect().await;
    sql.query_drop(
        "CREATE TABLE odp_schema (id INT NOT NULL PRIMARY KEY, version BIGINT NOT NULL)",
    )
    .await
    .unwrap();
    sql.query_drop("INSERT INTO odp_schema VALUES (1, 99)")
        .await
        .unwrap();
    let store = format!(
        "url = \"mysql://odp@127.0.0.1:{}/odp\"\npassword_file = \"password\"",
        db.port
    );
    let (code, stderr, _) = run_config(&config(&store), &[]);
    assert_eq!(code, 78, "{stderr}");
    assert!(
        stderr.contains("schema is version 99, newer than this coordinator knows (1)"),
        "{stderr}"
    );
    // Left as it was: no table of a version it does not know was touched.
    let tables: Vec<String> = sql.query("SHOW TABLES").await.unwrap();
    assert_eq!(tables, vec!["odp_schema".to_string()]);
    // The password may come from the environment instead of a file.
    let store = format!("url = \"mysql://odp@127.0.0.1:{}/odp\"", db.port);
    let (code, stderr, _) = run_config(&config(&store), &[("ODP_STORE_PASSWORD", "odp")]);
    assert_eq!(code, 78, "{stderr}");
    assert!(stderr.contains("version 99"), "{stderr}");
}

#[test]
fn a_bad_store_section_exits_78_naming_file_key_and_reason() {
    for (store, key, reason) in [
        (
            "url = \"mysql://odp:secret@127.0.0.1:3306/odp\"",
            "store.url",
            "holds a password",
        ),
        (
            "url = \"mysql://odp@127.0.0.1:3306/odp\"\npath = \"tasks.db\"",
            "store.url",
            "not both",
        ),
        (
            "url = \"mysql://odp@127.0.0.1:3306\"",
            "store.url",
            "names no database",
        ),
        (
            "url = \"mysql:/odp@nowhere\"",
            "store.url",
            "mysql://user@host:port/db",
        ),
        (
            "url = \"mysql://odp@127.0.0.1:3306/odp\"\npassword_file = \"absent\"",
            "store.password_file",
            "cannot read",
        ),
        (
            "url = \"mysql://odp@127.0.0.1:3306/odp\"\nlease = \"100ms\"",
            "store.lease",
            "at least",
        ),
    ] {
        let (code, stderr, path) = run_config(&config(store), &[]);
        assert_eq!(code, 78, "{store}: {stderr}");
        assert!(stderr.contains(&path), "{store}: {stderr}");
        assert!(stderr.contains(key), "{store}: {stderr}");
        assert!(stderr.contains(reason), "{store}: {stderr}");
        assert!(!stderr.contains("secret"), "{stderr}");
    }
}

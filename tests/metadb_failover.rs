//! Coordinators sharing a metadb survive what kills one of them: the leader
//! kill -9'd in the middle of a rolling HOT Restart All under client load is
//! replaced and the task finishes, every ODP restarted exactly once and not
//! one client request failed; a leader frozen (SIGSTOP) past its lease and
//! then woken writes nothing; the metadb restarted mid-task holds the task,
//! which then goes on. A real MariaDB, real coordinators, real agents.
use crate::common;

use std::time::Duration;

use common::{
    Load, PATIENCE, alive,
    cluster::CLUSTER,
    metadb::{Fleet, LEASE},
    signal,
};
use odp_agent::proto::{agent as apb, coordinator as pb};

fn restart_all(mode: apb::RestartMode) -> pb::RestartAllRequest {
    pb::RestartAllRequest {
        cluster: CLUSTER.into(),
        mode: mode as i32,
        batch_size: 1,
        ..Default::default()
    }
}

/// Starts every ODP through coordinator `i` and waits for the task's end.
async fn start_all(fleet: &Fleet, i: usize) {
    let task = fleet
        .client(i)
        .await
        .start_all(pb::StartAllRequest {
            cluster: CLUSTER.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let done = fleet.wait_task(i, &task.id, PATIENCE, |_| false).await;
    assert_eq!(done.state(), pb::TaskState::Succeeded, "{done:?}");
}

/// Each agent's restart count: how many restarts its operation log holds.
async fn restarts(fleet: &Fleet) -> Vec<u32> {
    let mut counts = Vec::new();
    for a in &fleet.agents {
        counts.push(a.status().await.restart_count);
    }
    counts
}

/// Each agent's restart operations, from its audit log: the distinct
/// operations its admitted Restart calls started (a call repeating a
/// request id is answered with the operation it already started).
fn audited_restarts(fleet: &Fleet) -> Vec<usize> {
    fleet
        .agents
        .iter()
        .map(|a| {
            let ops: std::collections::HashSet<String> = a
                .audit()
                .iter()
                .filter(|l| l["rpc"] == "Restart" && l["outcome"] == "ok")
                .filter_map(|l| l["id"].as_str().map(str::to_string))
                .collect();
            ops.len()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    skip_mariadb,
    ignore = "needs MariaDB: built with ODP_TEST_SKIP_MARIADB=1"
)]
async fn the_leader_killed_mid_rolling_restart_under_load_is_replaced_and_no_odp_restarts_twice() {
    let mut fleet = Fleet::start(3, 3).await;
    start_all(&fleet, 0).await;
    // Slow restarts, so the kill lands while one is in flight.
    for a in &fleet.agents {
        a.set_standin_env(&[("ODP_STANDIN_START_DELAY", "700ms")]);
    }
    let mut loads = Vec::new();
    for a in &fleet.agents {
        loads.push(Load::start(a.sql_addr().await));
    }
    let (leader, token) = fleet.leader().await;
    let l = fleet.index_of(&leader);
    let f = (l + 1) % 3;
    let task = fleet
        .client(f)
        .await
        .restart_all(restart_all(apb::RestartMode::Hot))
        .await
        .unwrap()
        .into_inner();
    fleet
        .wait_task(f, &task.id, PATIENCE, |t| {
            t.subtasks[1].state() == pb::SubtaskState::Running
                && !t.subtasks[1].operation_id.is_empty()
        })
        .await;
    let pid = fleet.coordinators[l].child.id();
    fleet.coordinators[l].child.kill().unwrap();
    fleet.coordinators[l].child.wait().unwrap();
    assert!(!alive(pid));
    let (next, _) = fleet.wait_leader(|h, t| t > token && h != leader).await;
    let done = fleet.wait_task(f, &task.id, PATIENCE * 2, |_| false).await;
    assert_eq!(
        done.state(),
        pb::TaskState::Succeeded,
        "{done:?}\n{}",
        fleet.all_logs()
    );
    assert_eq!(
        restarts(&fleet).await,
        vec![1, 1, 1],
        "an ODP restarted twice"
    );
    let n = fleet.index_of(&next);
    assert!(
        fleet.coordinators[n].logs().contains("resuming task"),
        "{}",
        fleet.coordinators[n].logs()
    );
    for (a, load) in loads.into_iter().enumerate() {
        let report = load.finish().await;
        assert!(report.ok > 0, "ODP {a}: no load ran");
        assert_eq!(
            (report.failed, report.refused),
            (0, 0),
            "ODP {a}: client requests failed: {:?}",
            report.errors
        );
    }
    // Every restart the agents ran is in their audit logs: one each.
    let audited = audited_restarts(&fleet);
    assert!(audited.iter().all(|&n| n == 1), "{audited:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    skip_mariadb,
    ignore = "needs MariaDB: built with ODP_TEST_SKIP_MARIADB=1"
)]
async fn a_leader_frozen_past_its_lease_writes_nothing_when_it_wakes() {
    let fleet = Fleet::start(3, 2).await;
    start_all(&fleet, 0).await;
    for a in &fleet.agents {
        a.set_standin_env(&[("ODP_STANDIN_START_DELAY", "1500ms")]);
    }
    let (leader, token) = fleet.leader().await;
    let l = fleet.index_of(&leader);
    let other = 1 - l;
    let task = fleet
        .client(other)
        .await
        .restart_all(restart_all(apb::RestartMode::Force))
        .await
        .unwrap()
        .into_inner();
    fleet
        .wait_task(other, &task.id, PATIENCE, |t| {
            !t.subtasks[0].operation_id.is_empty()
        })
        .await;
    let pid = fleet.coordinators[l].child.id();
    signal(pid, libc::SIGSTOP);
    // The lease expires unrenewed; the other coordinator takes it and
    // finishes the task.
    let (holder, new_token) = fleet.wait_leader(|_, t| t > token).await;
    assert_eq!(holder, fleet.coordinators[other].name);
    let done = fleet
        .wait_task(other, &task.id, PATIENCE * 2, |_| false)
        .await;
    assert_eq!(
        done.state(),
        pb::TaskState::Succeeded,
        "{done:?}\n{}",
        fleet.all_logs()
    );
    let row = fleet.task_row(&task.id).await;
    // Woken well past its lease, it finds out and stops, writing nothing.
    signal(pid, libc::SIGCONT);
    fleet.coordinators[l].wait_log("lease lost").await;
    assert_eq!(
        fleet.task_row(&task.id).await,
        row,
        "the woken leader wrote"
    );
    assert_eq!(fleet.leader().await, (holder, new_token));
    assert_eq!(
        restarts(&fleet).await,
        vec![1, 1, 1],
        "an ODP restarted twice"
    );
    // Its next lease attempt finds the lease held: it stays a follower.
    assert!(
        fleet.coordinators[l]
            .logs()
            .matches("lease acquired")
            .count()
            == 1,
        "{}",
        fleet.coordinators[l].logs()
    );
    assert!(LEASE < PATIENCE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    skip_mariadb,
    ignore = "needs MariaDB: built with ODP_TEST_SKIP_MARIADB=1"
)]
async fn the_metadb_restarted_mid_task_holds_the_task_and_it_goes_on() {
    let mut fleet = Fleet::start(3, 2).await;
    start_all(&fleet, 0).await;
    for a in &fleet.agents {
        a.set_standin_env(&[("ODP_STANDIN_START_DELAY", "1s")]);
    }
    let task = fleet
        .client(0)
        .await
        .restart_all(restart_all(apb::RestartMode::Force))
        .await
        .unwrap()
        .into_inner();
    fleet
        .wait_task(0, &task.id, PATIENCE, |t| {
            !t.subtasks[0].operation_id.is_empty()
        })
        .await;
    let db = &mut fleet.db;
    tokio::task::block_in_place(|| db.restart());
    let done = fleet.wait_task(0, &task.id, PATIENCE * 3, |_| false).await;
    assert_eq!(
        done.state(),
        pb::TaskState::Succeeded,
        "{done:?}\n{}",
        fleet.all_logs()
    );
    assert_eq!(
        restarts(&fleet).await,
        vec![1, 1, 1],
        "an ODP restarted twice"
    );
    let (state, _) = fleet.task_row(&task.id).await;
    assert_eq!(state, "succeeded");
    let _ = Duration::ZERO;
}

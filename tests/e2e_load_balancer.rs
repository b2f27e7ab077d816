//! FORCE Restart All in batches of one through a real HAProxy, with and without the
//! coordinator's `[clusters.load_balancer]`: MariaDB on loopback, three real agents whose
//! ODPs (the stand-in) forward to it, HAProxy in `mode tcp` in front of the ODPs, and
//! sysbench `oltp_read_write` through HAProxy with a new session for every transaction.
//!
//! With the balancer each ODP is drained in HAProxy before it is killed and set ready once
//! it serves again: no transaction fails. Without it, the kill cuts the transactions open on
//! that ODP at that instant. Both numbers are printed:
//! `cargo test --test e2e_load_balancer -- --nocapture`.
//!
//! Needs MariaDB, sysbench and HAProxy (Debian: `apt-get install -y mariadb-server
//! mariadb-client sysbench haproxy`); built with `ODP_TEST_SKIP_MARIADB=1` it is ignored
//! (see `tests/common/mariadb.rs`).
mod common;

use common::{
    Agent, Options,
    cluster::{CLUSTER, Cluster, Settings},
    e2e::{SYSBENCH, busy_seconds},
    haproxy::{HaProxy, listen_on, odp_ports},
    mariadb::MariaDb,
    sysbench::{self, Counts, Summary, Sysbench},
};
use odp_agent::proto::{agent::RestartMode, coordinator as pb};

/// What one FORCE Restart All under sysbench did.
struct Measured {
    summary: Summary,
    totals: Counts,
    took: f64,
}

impl Measured {
    fn failed(&self) -> u64 {
        self.totals.cut + self.totals.errors
    }
}

async fn force_restart_all_under_sysbench(
    cluster: &Cluster,
    db: &MariaDb,
    haproxy: &HaProxy,
) -> Measured {
    sysbench::reset_ledger(db).await;
    let run = Sysbench::find()
        .run(&[haproxy.frontend.port()], &SYSBENCH, cluster.dir.path())
        .await;
    run.wait_reports("two seconds of transactions", |r| busy_seconds(r, 0.0) >= 2)
        .await;
    let began = run.elapsed();
    let request = pb::RestartAllRequest {
        cluster: CLUSTER.into(),
        mode: RestartMode::Force as i32,
        batch_size: 1,
        ..Default::default()
    };
    let task = cluster
        .client()
        .await
        .restart_all(request)
        .await
        .unwrap()
        .into_inner();
    let done = cluster.wait_task(&task.id).await;
    assert_eq!(
        done.state(),
        pb::TaskState::Succeeded,
        "{}\n{:#?}\n{}",
        done.error,
        done.subtasks,
        cluster.logs()
    );
    let ended = run.elapsed();
    run.wait_reports("two seconds of transactions after", |r| {
        busy_seconds(r, ended) >= 2
    })
    .await;
    let summary = run.finish().await;
    let totals = summary.totals();
    assert!(summary.status.success(), "{}", summary.output);
    // A commit lost in flight may have been applied: the ledger holds the truth.
    let ledger: u64 = sysbench::ledger(db).await.iter().map(|(_, n)| n).sum();
    assert!(
        ledger >= totals.committed && ledger <= totals.committed + totals.cut,
        "ledger {ledger}, {totals:?}"
    );
    Measured {
        summary,
        totals,
        took: ended - began,
    }
}

/// The coordinator's configuration without `[clusters.load_balancer]`, and it restarted on
/// it (no task is running).
fn drop_the_balancer(cluster: &mut Cluster) {
    let config = std::fs::read_to_string(&cluster.config).unwrap();
    let (without, _) = config.split_once("[clusters.load_balancer]").unwrap();
    std::fs::write(&cluster.config, without).unwrap();
    cluster.kill_coordinator();
    cluster.start_coordinator();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    skip_mariadb,
    ignore = "needs MariaDB and sysbench: built with ODP_TEST_SKIP_MARIADB=1"
)]
async fn force_restart_all_through_haproxy_fails_no_transaction_with_the_balancer_and_some_without()
{
    let db = MariaDb::start();
    let (_reserved, ports) = odp_ports(3);
    let mut agents = Vec::new();
    for &port in &ports {
        agents.push(
            Agent::start_with(Options {
                listen: listen_on(port),
                args: vec![
                    "-o".into(),
                    format!("standin_backend=127.0.0.1:{}", db.port),
                ],
                ..Options::default()
            })
            .await,
        );
    }
    let servers: Vec<(String, u16)> = ports
        .iter()
        .enumerate()
        .map(|(i, &port)| (format!("odp{}", i + 1), port))
        .collect();
    let haproxy = HaProxy::start(&servers);
    let names: Vec<String> = agents
        .iter()
        .enumerate()
        .map(|(i, a)| format!("\"{}\" = \"odp{}\"", a.grpc, i + 1))
        .collect();
    let section = format!(
        "[clusters.load_balancer]\nkind = \"haproxy\"\nsocket = \"{}\"\nbackend = \"odp\"\n\
         servers = {{ {} }}\ndrain_timeout = \"30s\"\n",
        haproxy.socket.display(),
        names.join(", ")
    );
    let mut cluster = Cluster::with_settings(
        agents,
        Settings {
            more: section,
            ..Settings::default()
        },
    );
    for agent in &cluster.agents {
        agent.start_proxy().await;
    }
    Sysbench::find().prepare(&db, &SYSBENCH).await;

    let with = force_restart_all_under_sysbench(&cluster, &db, &haproxy).await;
    assert_eq!(haproxy.states(), ["ready"; 3]);
    drop_the_balancer(&mut cluster);
    let without = force_restart_all_under_sysbench(&cluster, &db, &haproxy).await;

    println!(
        "\nFORCE Restart All, batches of one, sysbench oltp_read_write through HAProxy \
         ({} threads, a session per transaction, {} tables x {} rows):\n\
         | balancer | took (s) | transactions | failed txns | sessions cut | failed connects |\n\
         |---|---|---|---|---|---|\n\
         | [clusters.load_balancer] (drain, restart, ready) | {:.1} | {} | {} | {} | {} |\n\
         | none | {:.1} | {} | {} | {} | {} |",
        SYSBENCH.threads,
        SYSBENCH.tables,
        SYSBENCH.table_size,
        with.took,
        with.summary.transactions,
        with.failed(),
        with.totals.cut,
        with.totals.connect_failures,
        without.took,
        without.summary.transactions,
        without.failed(),
        without.totals.cut,
        without.totals.connect_failures,
    );
    assert_eq!(
        (with.failed(), with.totals.connect_failures),
        (0, 0),
        "with the balancer: {:?}\n{}",
        with.totals,
        with.summary.errors.join("\n")
    );
    assert_eq!(with.summary.ignored_errors, 0);
    assert!(
        without.failed() > 0,
        "without the balancer a FORCE restart should cut the transactions open on each ODP: \
         {:?}",
        without.totals
    );
}

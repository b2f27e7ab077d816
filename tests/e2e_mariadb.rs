//! Proof with real database clients: MariaDB on loopback, three real agents whose ODPs (the
//! stand-in, forwarding to MariaDB) stand in front of it, and a real coordinator running
//! Restart All while sysbench or Rust MySQL clients work through the ODPs. Every check counts
//! from the database itself: each transaction writes a uniquely keyed row set (or a ledger
//! row), and what MariaDB holds afterwards is held against what the clients believe.
//!
//! - HOT Restart All under sysbench (a session per transaction): no failed transaction, no
//!   second without transactions.
//! - HOT Restart All, window longer than the transactions: every transaction commits; the
//!   ODPs close sessions only between transactions, and the clients reconnect and go on.
//! - HOT Restart All, window shorter than the transactions: those still open at the window
//!   end are cut and rolled back by the server, nothing is left in part, the rest commit.
//! - FORCE Restart All: sessions are cut, new connections wait in the held listeners'
//!   backlog until the ODPs are back, and none is refused.
//!
//! `bench_restart_all_under_sysbench` (ignored) prints transactions per second before, during
//! and after HOT, FORCE and Stop All + Start All. Run the suite with
//! `cargo test --release --test e2e_mariadb` (a debug build lists it as ignored: its drain
//! windows are timed; CI's build, whose dependencies are optimised, sets `ODP_TEST_E2E=1`),
//! the benchmark with
//! `cargo test --release --test e2e_mariadb -- --ignored --nocapture bench`.
//!
//! Needs MariaDB and sysbench (Debian: `apt-get install -y mariadb-server mariadb-client
//! sysbench`); without them the tests fail, saying so. Built with `ODP_TEST_SKIP_MARIADB=1`
//! they are ignored instead (see `tests/common/mariadb.rs`).
mod common;

use std::time::Duration;

use common::{
    e2e::{SYSBENCH, Stack, busy_seconds},
    mariadb::MariaDb,
    sysbench::{self, Report, Summary, Sysbench, Workload},
    txn_load::{self, Load, Outcome, Shape},
};
use odp_agent::proto::agent::RestartMode;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    skip_mariadb,
    ignore = "needs MariaDB and sysbench: built with ODP_TEST_SKIP_MARIADB=1"
)]
#[cfg_attr(
    all(not(e2e), not(skip_mariadb)),
    ignore = "timed drain windows: run in an optimised build (cargo test --release --test e2e_mariadb) or with ODP_TEST_E2E=1"
)]
async fn sysbench_fails_no_transaction_through_a_hot_restart_all() {
    let stack = Stack::start("10s").await;
    let sysbench = Sysbench::find();
    sysbench.prepare(&stack.db, &SYSBENCH).await;
    let run = sysbench
        .run(&stack.ports, &SYSBENCH, stack.cluster.dir.path())
        .await;
    run.wait_reports("two seconds of transactions", |r| busy_seconds(r, 0.0) >= 2)
        .await;
    let old = stack.pids().await;
    let began = run.elapsed();
    stack.restart_all(RestartMode::Hot).await;
    let ended = run.elapsed();
    run.wait_reports("two seconds of transactions after the restart", |r| {
        busy_seconds(r, ended) >= 2
    })
    .await;
    let stopping = run.elapsed();
    let summary = run.finish().await;

    let totals = summary.totals();
    assert!(summary.status.success(), "{}", summary.output);
    assert_eq!(
        summary.threads.len(),
        SYSBENCH.threads as usize,
        "{}",
        summary.output
    );
    assert_eq!(
        (
            totals.cut,
            totals.closed,
            totals.errors,
            totals.connect_failures
        ),
        (0, 0, 0, 0),
        "failed transactions, lost sessions, errors or failed connects: {totals:?}\n{}",
        summary.errors.join("\n")
    );
    assert_eq!(summary.ignored_errors, 0);
    assert_eq!(totals.committed, summary.transactions);
    assert_eq!(
        totals.attempts, summary.transactions,
        "every attempt committed"
    );
    // A session per transaction (plus each thread's first): every transaction went through
    // an ODP's listener, before, during and after the restart.
    for (thread, counts) in &summary.threads {
        assert_eq!(
            counts.sessions,
            counts.committed + 1,
            "thread {thread}: {counts:?}"
        );
    }
    let stalled: Vec<&Report> = summary
        .reports
        .iter()
        .filter(|r| r.at <= stopping && r.tps == 0.0)
        .collect();
    assert!(
        stalled.is_empty(),
        "seconds without a transaction: {stalled:?}"
    );
    // A report for every second: a missing one would hide a stalled second from the check.
    let seconds: Vec<f64> = summary.reports.iter().map(|r| r.at).collect();
    let expected: Vec<f64> = (1..=seconds.len()).map(|s| s as f64).collect();
    assert_eq!(
        seconds, expected,
        "sysbench's per-second reports have a gap"
    );
    assert_ledger_matches(&stack.db, &summary).await;

    // Every ODP was replaced, and each old one drained to idle: nothing was cut.
    let new = stack.pids().await;
    let mut open_at_drain = 0;
    for (i, (&old, &new)) in old.iter().zip(&new).enumerate() {
        assert_ne!(old, new);
        let finished = stack.drain_finished(i, old);
        assert!(finished.contains("reason=idle"), "{finished}");
        let begun = &stack.standin_events(i, old, "drain begun")[0];
        open_at_drain += field(begun, "open_connections=");
    }
    assert!(
        open_at_drain > 0,
        "no session was open on the old ODPs when they began to drain"
    );
    eprintln!(
        "sysbench: {} transactions; HOT Restart All from {began:.1}s to {ended:.1}s, \
         {open_at_drain} sessions open at the drains; tps before {:.0}, during {:.0}, after {:.0}",
        summary.transactions,
        summary.tps_between(0.0, began),
        summary.tps_between(began, ended),
        summary.tps_between(ended, stopping),
    );
}

/// The ledger rows per sysbench thread equal the transactions that thread committed.
async fn assert_ledger_matches(db: &MariaDb, summary: &Summary) {
    let mut believed: Vec<(u32, u64)> = summary
        .threads
        .iter()
        .map(|(thread, c)| (*thread, c.committed))
        .filter(|(_, committed)| *committed > 0)
        .collect();
    believed.sort();
    assert_eq!(sysbench::ledger(db).await, believed);
}

fn field(line: &str, name: &str) -> u64 {
    line.split_once(name)
        .and_then(|(_, rest)| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {line}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    skip_mariadb,
    ignore = "needs MariaDB and sysbench: built with ODP_TEST_SKIP_MARIADB=1"
)]
#[cfg_attr(
    all(not(e2e), not(skip_mariadb)),
    ignore = "timed drain windows: run in an optimised build (cargo test --release --test e2e_mariadb) or with ODP_TEST_E2E=1"
)]
async fn long_transactions_all_commit_when_the_window_outlasts_them_and_sessions_close_between() {
    let stack = Stack::start("8s").await;
    stack.create_rows_table().await;
    // Two clients per ODP, each session eight transactions of ~0.8 s (~6.4 s, a pool's
    // maximum lifetime), and an 8 s window: the allowance falls from 2 to 1 at 4 s, so on
    // each ODP one session is closed at its next transaction boundary after that, while the
    // other ends by itself before the window does.
    let shape = Shape {
        rows: 4,
        work: Duration::from_millis(250),
        per_session: Some(8),
    };
    let load = Load::start(&stack.clients(2, shape));
    load.wait("their first transaction", |p| {
        p.iter().all(|c| c.in_txn && c.rows_in_txn >= 1)
    })
    .await;
    let old = stack.pids().await;
    stack.restart_all(RestartMode::Hot).await;
    let at_end = load.progress();
    load.wait("commit again after the restart", |p| {
        p.iter()
            .zip(&at_end)
            .all(|(now, then)| now.committed > then.committed)
    })
    .await;
    let report = load.finish().await;
    let tally = txn_load::verify(&mut stack.db.connect().await, &report).await;

    let failed: Vec<_> = report
        .failures()
        .into_iter()
        .filter(|t| t.outcome != Outcome::NotBegun)
        .collect();
    assert!(
        failed.is_empty(),
        "transactions that did not commit: {failed:#?}"
    );
    assert_eq!(report.refused(), 0);
    assert!(
        report.connect_errors().is_empty(),
        "{:?}",
        report.connect_errors()
    );
    // On each ODP the drain closed one of its two sessions at a transaction boundary and
    // the other ended by itself: the window cut nothing.
    for (i, &old) in old.iter().enumerate() {
        let begun = &stack.standin_events(i, old, "drain begun")[0];
        assert_eq!(field(begun, "open_connections="), 2, "{begun}");
        let closed = stack.standin_events(i, old, "session closed at boundary");
        assert_eq!(closed.len(), 1, "{closed:?}");
        let finished = stack.drain_finished(i, old);
        assert!(finished.contains("reason=idle"), "{finished}");
    }
    // Each close met its client between transactions: its next BEGIN failed, it reconnected
    // and went on.
    assert_eq!(tally.not_begun, old.len(), "{:#?}", report.failures());
    eprintln!("{tally:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    skip_mariadb,
    ignore = "needs MariaDB and sysbench: built with ODP_TEST_SKIP_MARIADB=1"
)]
#[cfg_attr(
    all(not(e2e), not(skip_mariadb)),
    ignore = "timed drain windows: run in an optimised build (cargo test --release --test e2e_mariadb) or with ODP_TEST_E2E=1"
)]
async fn transactions_longer_than_a_short_window_are_cut_and_rolled_back_and_the_rest_commit() {
    let stack = Stack::start("1500ms").await;
    stack.create_rows_table().await;
    // Per ODP a long client (transactions of ~6 s) and a short one (~0.05 s), both keeping
    // their session, and a 1.5 s window: the short session leaves at a boundary once the
    // allowance falls to 1 (at 0.75 s); the long one is still inside its transaction at the
    // window end and is cut.
    let long = Shape {
        rows: 4,
        work: Duration::from_secs(2),
        per_session: None,
    };
    let short = Shape {
        rows: 2,
        work: Duration::from_millis(50),
        per_session: None,
    };
    let clients: Vec<(u16, Shape)> = stack
        .ports
        .iter()
        .flat_map(|&port| [(port, long), (port, short)])
        .collect();
    let is_long = |client: usize| client % 2 == 0;
    let load = Load::start(&clients);
    // Long clients within the first two seconds of a transaction: at least 4 s of it
    // remain, so the restart has seconds to begin the drains before the window must end.
    load.wait(
        "long transactions under way and short ones committing",
        |p| {
            p.iter().enumerate().all(|(i, c)| {
                if is_long(i) {
                    c.in_txn && c.rows_in_txn == 1
                } else {
                    c.committed >= 1
                }
            })
        },
    )
    .await;
    let old = stack.pids().await;
    stack.restart_all(RestartMode::Hot).await;
    let at_end = load.progress();
    load.wait("commit again after the restart", |p| {
        p.iter()
            .zip(&at_end)
            .all(|(now, then)| now.committed > then.committed)
    })
    .await;
    let report = load.finish().await;
    let tally = txn_load::verify(&mut stack.db.connect().await, &report).await;

    let cut = report.per_client(Outcome::Cut);
    let expected_cut: Vec<usize> = (0..clients.len())
        .map(|i| usize::from(is_long(i)))
        .collect();
    assert_eq!(cut, expected_cut, "{:#?}", report.failures());
    assert_eq!(tally.cut, old.len());
    assert_eq!(
        report.count(Outcome::CommitUnknown),
        0,
        "{:#?}",
        report.failures()
    );
    assert_eq!(
        report.count(Outcome::ServerError),
        0,
        "{:#?}",
        report.failures()
    );
    let closed_between = report.per_client(Outcome::NotBegun);
    for (i, closed) in closed_between.iter().enumerate() {
        if !is_long(i) {
            assert_eq!(*closed, 1, "short client {i}: {:#?}", report.failures());
        }
    }
    assert_eq!(report.refused(), 0);
    for (i, &old) in old.iter().enumerate() {
        let closed = stack.standin_events(i, old, "session closed at boundary");
        assert_eq!(closed.len(), 1, "{closed:?}");
        let finished = stack.drain_finished(i, old);
        assert!(
            finished.contains("reason=window cut=1 closed_at_boundary=0"),
            "{finished}"
        );
    }
    assert!(tally.committed > 0);
    eprintln!("{tally:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    skip_mariadb,
    ignore = "needs MariaDB and sysbench: built with ODP_TEST_SKIP_MARIADB=1"
)]
#[cfg_attr(
    all(not(e2e), not(skip_mariadb)),
    ignore = "timed drain windows: run in an optimised build (cargo test --release --test e2e_mariadb) or with ODP_TEST_E2E=1"
)]
async fn force_restart_all_cuts_sessions_and_queues_new_connections_refusing_none() {
    let stack = Stack::start("10s").await;
    stack.create_rows_table().await;
    let shape = Shape {
        rows: 2,
        work: Duration::from_millis(50),
        per_session: None,
    };
    let load = Load::start(&stack.clients(2, shape));
    load.wait("two commits each", |p| p.iter().all(|c| c.committed >= 2))
        .await;
    // The new ODPs take a second to listen: the clients' reconnects made meanwhile wait in
    // the backlog of the listeners the agents hold.
    let start_delay = "1s";
    for agent in &stack.cluster.agents {
        agent.set_standin_env(&[("ODP_STANDIN_START_DELAY", start_delay)]);
    }
    stack.restart_all(RestartMode::Force).await;
    let at_end = load.progress();
    load.wait("commit again after the restart", |p| {
        p.iter()
            .zip(&at_end)
            .all(|(now, then)| now.committed > then.committed)
    })
    .await;
    let progress = load.progress();
    let report = load.finish().await;
    let tally = txn_load::verify(&mut stack.db.connect().await, &report).await;

    assert_eq!(report.refused(), 0, "connections refused");
    assert!(
        report.connect_errors().is_empty(),
        "{:?}",
        report.connect_errors()
    );
    // Every session was cut, once.
    assert!(progress.iter().all(|c| c.lost == 1), "{progress:#?}");
    let lost = tally.cut
        + tally.not_begun
        + tally.commit_unknown_committed
        + tally.commit_unknown_rolled_back;
    assert_eq!(lost, progress.len(), "{:#?}", report.failures());
    assert_eq!(report.count(Outcome::ServerError), 0);
    assert!(
        report.longest_connect() >= humantime::parse_duration(start_delay).unwrap() / 2,
        "no connect waited for the ODPs to come back: longest {:?}",
        report.longest_connect()
    );
    eprintln!("{tally:?}; longest connect {:?}", report.longest_connect());
}

/// What the benchmark does to the cluster while sysbench runs.
#[derive(Debug, Clone, Copy)]
enum Operation {
    Hot,
    Force,
    StopThenStart,
}

impl Operation {
    fn name(self) -> &'static str {
        match self {
            Operation::Hot => "HOT Restart All",
            Operation::Force => "FORCE Restart All",
            Operation::StopThenStart => "Stop All + Start All",
        }
    }

    async fn run(self, stack: &Stack) {
        match self {
            Operation::Hot => {
                stack.restart_all(RestartMode::Hot).await;
            }
            Operation::Force => {
                stack.restart_all(RestartMode::Force).await;
            }
            Operation::StopThenStart => {
                stack.stop_all().await;
                stack.start_all().await;
            }
        }
    }
}

/// How many connects failed, and why: "0", or e.g. "60 refused".
fn failed_connects(summary: &Summary) -> String {
    let total = summary.totals().connect_failures;
    if total == 0 {
        return "0".into();
    }
    let mut why: Vec<String> = summary
        .connect_errors
        .iter()
        .map(|(errno, n)| match errno {
            2002 | 2003 => format!("{n} refused"),
            2013 => format!("{n} lost before the greeting"),
            other => format!("{n} error {other}"),
        })
        .collect();
    let explained: u64 = summary.connect_errors.values().sum();
    if total > explained {
        why.push(format!("{} with no reason logged", total - explained));
    }
    format!("{total} ({})", why.join(", "))
}

/// The drain window of the benchmark's ODPs.
const BENCH_WINDOW: &str = "5s";
/// Seconds of load measured before and after the operation.
const BENCH_SECONDS: usize = 5;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark that prints a table: \
            cargo test --release --test e2e_mariadb -- --ignored --nocapture bench"]
async fn bench_restart_all_under_sysbench() {
    let stack = Stack::start(BENCH_WINDOW).await;
    let sysbench = Sysbench::find();
    sysbench.prepare(&stack.db, &SYSBENCH).await;
    let mut rows = Vec::new();
    for operation in [Operation::Hot, Operation::Force, Operation::StopThenStart] {
        for reconnect in [true, false] {
            sysbench::reset_ledger(&stack.db).await;
            let workload = Workload {
                reconnect,
                ..SYSBENCH
            };
            let run = sysbench
                .run(&stack.ports, &workload, stack.cluster.dir.path())
                .await;
            run.wait_reports("the seconds before", |r| r.len() >= BENCH_SECONDS)
                .await;
            let began = run.elapsed();
            operation.run(&stack).await;
            let ended = run.elapsed();
            run.wait_reports("the seconds after", |r| {
                r.iter().filter(|r| r.start() >= ended).count() >= BENCH_SECONDS
            })
            .await;
            let stopping = run.elapsed();
            let summary = run.finish().await;
            let totals = summary.totals();
            let ledger: u64 = sysbench::ledger(&stack.db)
                .await
                .iter()
                .map(|(_, n)| n)
                .sum();
            // A commit lost in flight may have been applied: the ledger holds the truth.
            assert!(
                ledger >= totals.committed && ledger <= totals.committed + totals.cut,
                "ledger {ledger}, {totals:?}"
            );
            rows.push(format!(
                "| {} | {} | {:.1} | {:.0} | {:.0} | {:.0} | {} | {} | {} | {} |",
                operation.name(),
                if reconnect { "per transaction" } else { "kept" },
                ended - began,
                summary.tps_between(0.0, began),
                summary.tps_between(began, ended),
                summary.tps_between(ended, stopping),
                totals.cut + totals.errors,
                totals.cut,
                totals.closed,
                failed_connects(&summary),
            ));
        }
    }
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| {
                l.strip_prefix("model name")?
                    .split_once(':')
                    .map(|(_, m)| m.trim().to_owned())
            })
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "\nsysbench oltp_read_write, {} threads over 3 ODPs, {} tables x {} rows; \
         {cores} cores, {cpu}; HOT window {BENCH_WINDOW}\n",
        SYSBENCH.threads, SYSBENCH.tables, SYSBENCH.table_size,
    );
    println!(
        "| operation | sessions | took (s) | tps before | tps during | tps after | \
         failed txns | sessions cut | sessions closed between txns | failed connects |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for row in rows {
        println!("{row}");
    }
}

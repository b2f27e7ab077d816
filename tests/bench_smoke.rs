//! Every `odp-bench` command still runs to its table. The benchmarks are not timed here (their
//! figures are observations, printed for the README); this only proves that each one starts
//! its daemons, drives them and prints its table, with the smallest arguments that exercise
//! every step. A benchmark that broke when a config format or an RPC changed would otherwise
//! be found only by whoever next tried to reproduce the README's figures.
use std::process::Command;

/// Runs `odp-bench ARGS` and returns its standard output, failing with both streams if the
/// command failed or printed no table.
fn bench(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_odp-bench"))
        .args(args)
        .output()
        .expect("cannot run odp-bench");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "odp-bench {args:?} failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(
        stdout.contains("|:--"),
        "odp-bench {args:?} printed no table:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.starts_with("machine: "),
        "odp-bench {args:?} does not name the machine first:\n{stdout}"
    );
    stdout
}

#[test]
fn hot_restart_prints_its_table() {
    let out = bench(&["hot-restart", "--runs", "1", "--restarts", "2"]);
    assert!(out.contains("agent overhead"), "{out}");
}

#[test]
fn restart_modes_prints_its_table() {
    let out = bench(&[
        "restart-modes",
        "--runs",
        "1",
        "--rounds",
        "1",
        "--start-delay",
        "10ms",
        "--exit-timeout",
        "1s",
    ]);
    for mode in ["HOT", "FORCE", "stop+start"] {
        assert!(out.contains(&format!("| {mode}")), "no {mode} row:\n{out}");
    }
}

#[test]
fn vs_haproxy_prints_its_table() {
    let out = bench(&["vs-haproxy", "--runs", "1", "--restarts", "1"]);
    assert!(out.contains("HAProxy reload"), "{out}");
}

#[test]
fn get_status_prints_its_table() {
    let out = bench(&[
        "get-status",
        "--runs",
        "1",
        "--calls",
        "20",
        "--clients",
        "2",
        "--time-wait",
        "100",
    ]);
    for phase in ["| idle", "| under load"] {
        assert!(out.contains(phase), "no {phase} row:\n{out}");
    }
}

#[test]
fn cluster_status_prints_its_table() {
    let out = bench(&[
        "cluster-status",
        "--sizes",
        "10",
        "--calls",
        "2",
        "--runs",
        "1",
    ]);
    assert!(out.contains("| 10 "), "no row for 10 ODPs:\n{out}");
}

#[test]
fn rolling_prints_its_table() {
    let out = bench(&[
        "rolling",
        "--odps",
        "2",
        "--batches",
        "1",
        "--start-delay",
        "10ms",
        "--samples",
        "1",
        "--runs",
        "1",
    ]);
    assert!(out.contains("| 1 "), "no row for batches of 1:\n{out}");
}

#[test]
#[cfg_attr(
    skip_mariadb,
    ignore = "needs MariaDB: built with ODP_TEST_SKIP_MARIADB=1"
)]
fn takeover_prints_its_table() {
    let out = bench(&["takeover", "--runs", "1", "--odps", "3", "--lease", "2s"]);
    assert!(out.contains("kill → task moving again"), "{out}");
}

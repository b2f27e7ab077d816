//! sysbench 1.0 as a load through the ODPs: `oltp_read_write` wrapped by
//! `tests/sysbench/oltp_e2e.lua` (a session per transaction or one kept, a ledger row per
//! transaction, a stop file, failures counted by kind), its per-second reports followed as
//! they come, and its final statistics read back.
//!
//! Needs `sysbench` (Debian: `apt-get install -y sysbench`); without it the tests that need
//! it fail, saying so (see `mariadb.rs` for `ODP_TEST_SKIP_MARIADB`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Instant;

use mysql_async::prelude::*;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::sync::watch;

use super::PATIENCE;
use super::mariadb::{MariaDb, find, missing};

pub const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sysbench/oltp_e2e.lua");

/// What sysbench runs: the table set, the client threads, and how they use sessions.
#[derive(Debug, Clone, Copy)]
pub struct Workload {
    pub tables: u32,
    pub table_size: u32,
    pub threads: u32,
    /// A new session for every transaction, or one session per thread for the whole run.
    pub reconnect: bool,
}

pub struct Sysbench {
    program: PathBuf,
}

impl Sysbench {
    pub fn find() -> Self {
        match find("sysbench") {
            Some(program) => Sysbench { program },
            None => {
                missing("sysbench is not installed: install it with `apt-get install -y sysbench`")
            }
        }
    }

    /// Creates and fills the sbtest tables straight on the server, and the ledger table the
    /// script writes a row to in every transaction.
    pub async fn prepare(&self, db: &MariaDb, workload: &Workload) {
        let output = tokio::process::Command::new(&self.program)
            .arg("oltp_read_write")
            .args(connection_args(&[db.port]))
            .args(table_args(workload))
            .args(["--threads=4", "prepare"])
            .stdin(Stdio::null())
            .output()
            .await
            .unwrap();
        assert!(
            output.status.success(),
            "sysbench prepare failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        db.connect()
            .await
            .query_drop(
                "CREATE TABLE e2e_ledger (thread INT NOT NULL, attempt INT NOT NULL, \
                 PRIMARY KEY (thread, attempt)) ENGINE=InnoDB",
            )
            .await
            .unwrap();
    }

    /// Starts `workload` spread over `ports` (sysbench hands each new session the next port
    /// of the list), until [`Run::finish`]. `dir` holds the stop file.
    pub async fn run(&self, ports: &[u16], workload: &Workload, dir: &Path) -> Run {
        let stop_file = dir.join(format!("sysbench-stop-{}", unique()));
        let mut child = tokio::process::Command::new(&self.program)
            .arg(SCRIPT)
            .args(connection_args(ports))
            .args(table_args(workload))
            .arg(format!("--threads={}", workload.threads))
            // A bound for a run nobody stops; runs end by the stop file.
            .arg(format!("--time={}", 10 * PATIENCE.as_secs()))
            .args([
                "--report-interval=1",
                // Statements are sent as text: a session then costs only its connect, and
                // a new one per transaction stays cheap.
                "--db-ps-mode=disable",
                // Spread over the rows: fewer lock conflicts among sysbench's own threads.
                "--rand-type=uniform",
                "--mysql-ignore-errors=none",
            ])
            .arg(format!(
                "--e2e_reconnect={}",
                if workload.reconnect { "on" } else { "off" }
            ))
            .arg(format!("--e2e_stop_file={}", stop_file.display()))
            .arg("run")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let (lines, output) = watch::channel(Output::default());
        follow(child.stdout.take().unwrap(), lines.clone());
        follow(child.stderr.take().unwrap(), lines);
        let run = Run {
            child,
            output,
            stop_file,
        };
        run.wait_output("sysbench to start its threads", |o| o.started.is_some())
            .await;
        run
    }
}

fn connection_args(ports: &[u16]) -> Vec<String> {
    let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
    vec![
        "--db-driver=mysql".into(),
        "--mysql-host=127.0.0.1".into(),
        format!("--mysql-port={}", ports.join(",")),
        "--mysql-user=odp".into(),
        "--mysql-password=odp".into(),
        "--mysql-db=odp".into(),
    ]
}

fn table_args(workload: &Workload) -> [String; 2] {
    [
        format!("--tables={}", workload.tables),
        format!("--table-size={}", workload.table_size),
    ]
}

/// Unique enough for a file name within one test process.
fn unique() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Everything sysbench printed so far, with the moment its threads started.
#[derive(Debug, Default, Clone)]
struct Output {
    lines: Vec<String>,
    started: Option<Instant>,
    /// Both pipes are closed: the process has printed everything.
    closed: u8,
}

fn follow(pipe: impl AsyncRead + Unpin + Send + 'static, output: watch::Sender<Output>) {
    tokio::spawn(async move {
        let mut lines = BufReader::new(pipe).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            output.send_modify(|o| {
                if line.starts_with("Threads started!") {
                    o.started = Some(Instant::now());
                }
                o.lines.push(line);
            });
        }
        output.send_modify(|o| o.closed += 1);
    });
}

/// One of sysbench's per-second reports.
#[derive(Debug, Clone, Copy)]
pub struct Report {
    /// End of the interval, in seconds since the threads started.
    pub at: f64,
    pub tps: f64,
}

impl Report {
    /// `[ 3s ] thds: 6 tps: 812.95 qps: ... err/s: 0.00 reconn/s: 0.00`
    fn parse(line: &str) -> Option<Report> {
        let at = line
            .strip_prefix("[ ")?
            .split_once("s ]")?
            .0
            .trim()
            .parse()
            .ok()?;
        let tps = field(line, "tps:")?;
        Some(Report { at, tps })
    }

    pub fn start(&self) -> f64 {
        self.at - 1.0
    }
}

/// The number after `name` in a line of `name value` pairs.
fn field(line: &str, name: &str) -> Option<f64> {
    line.split_once(name)?
        .1
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

pub struct Run {
    child: tokio::process::Child,
    output: watch::Receiver<Output>,
    stop_file: PathBuf,
}

impl Run {
    /// Seconds since sysbench's threads started, on the clock of its reports.
    pub fn elapsed(&self) -> f64 {
        self.output
            .borrow()
            .started
            .expect("sysbench has started")
            .elapsed()
            .as_secs_f64()
    }

    /// The reports so far, once `until` holds for them.
    pub async fn wait_reports(&self, what: &str, until: impl Fn(&[Report]) -> bool) -> Vec<Report> {
        let output = self
            .wait_output(what, |o| until(&reports(&o.lines)) || o.closed == 2)
            .await;
        let reports = reports(&output.lines);
        assert!(
            until(&reports),
            "sysbench ended before {what}:\n{}",
            output.lines.join("\n")
        );
        reports
    }

    async fn wait_output(&self, what: &str, until: impl Fn(&Output) -> bool) -> Output {
        let mut output = self.output.clone();
        match tokio::time::timeout(PATIENCE, output.wait_for(|o| until(o) || o.closed == 2)).await {
            Ok(Ok(o)) if until(&o) => o.clone(),
            _ => panic!(
                "no {what} within {PATIENCE:?}; sysbench printed:\n{}",
                self.output.borrow().lines.join("\n")
            ),
        }
    }

    /// Ends the run at the next transaction boundary of every thread and reads its results.
    pub async fn finish(mut self) -> Summary {
        std::fs::write(&self.stop_file, b"").unwrap();
        let status = tokio::time::timeout(PATIENCE, self.child.wait())
            .await
            .expect("sysbench did not stop")
            .unwrap();
        let output = self
            .wait_output("end of sysbench's output", |o| o.closed == 2)
            .await;
        let _ = std::fs::remove_file(&self.stop_file);
        Summary::parse(status, output.lines)
    }
}

fn reports(lines: &[String]) -> Vec<Report> {
    lines.iter().filter_map(|l| Report::parse(l)).collect()
}

/// Every piece of the output that starts with `marker`, up to the next one: sysbench's
/// threads share stdout, and a line written in parts can run into another thread's.
fn pieces<'a>(lines: &'a [String], marker: &'a str) -> impl Iterator<Item = &'a str> {
    lines.iter().flat_map(move |line| {
        let starts: Vec<usize> = line.match_indices(marker).map(|(i, _)| i).collect();
        (0..starts.len()).map(move |k| {
            let end = starts.get(k + 1).copied().unwrap_or(line.len());
            &line[starts[k]..end]
        })
    })
}

/// How one sysbench thread's transactions went, from the script's `e2e:` line.
#[derive(Debug, Default, Clone, Copy)]
pub struct Counts {
    pub attempts: u64,
    pub committed: u64,
    /// Sessions opened.
    pub sessions: u64,
    /// Sessions lost inside a transaction: the transaction failed.
    pub cut: u64,
    /// Sessions lost between transactions: nothing failed, the client reconnected.
    pub closed: u64,
    /// Any other SQL error.
    pub errors: u64,
    /// Connects that failed (refused while an ODP was stopped).
    pub connect_failures: u64,
}

impl Counts {
    fn parse(line: &str) -> Option<(u32, Counts)> {
        let rest = line.strip_prefix("e2e: ")?;
        let value = |name: &str| -> Option<u64> {
            rest.split_whitespace()
                .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))?
                .parse()
                .ok()
        };
        Some((
            value("thread")? as u32,
            Counts {
                attempts: value("attempts")?,
                committed: value("committed")?,
                sessions: value("sessions")?,
                cut: value("cut")?,
                closed: value("closed")?,
                errors: value("errors")?,
                connect_failures: value("connect_failures")?,
            },
        ))
    }

    fn add(self, other: Counts) -> Counts {
        Counts {
            attempts: self.attempts + other.attempts,
            committed: self.committed + other.committed,
            sessions: self.sessions + other.sessions,
            cut: self.cut + other.cut,
            closed: self.closed + other.closed,
            errors: self.errors + other.errors,
            connect_failures: self.connect_failures + other.connect_failures,
        }
    }
}

/// A finished run.
#[derive(Debug)]
pub struct Summary {
    pub status: ExitStatus,
    /// sysbench's own count of transactions (events completed).
    pub transactions: u64,
    pub ignored_errors: u64,
    /// Per thread, as the script counted.
    pub threads: Vec<(u32, Counts)>,
    pub reports: Vec<Report>,
    /// The first errors the script saw (`e2e-error:` lines).
    pub errors: Vec<String>,
    /// Failed connects by client error number, from the driver's `FATAL: error <n>:` lines
    /// (2002/2003: could not connect, i.e. refused; 2013: lost before the greeting).
    pub connect_errors: BTreeMap<u32, u64>,
    pub output: String,
}

impl Summary {
    fn parse(status: ExitStatus, lines: Vec<String>) -> Summary {
        // A statistic sysbench no longer prints (or renames) fails here, rather than
        // reading as a reassuring zero.
        let stat = |name: &str| {
            lines
                .iter()
                .find_map(|l| field(l.trim_start(), name))
                .map(|v| v as u64)
                .unwrap_or_else(|| {
                    panic!("no {name:?} in sysbench's output:\n{}", lines.join("\n"))
                })
        };
        Summary {
            status,
            transactions: stat("transactions:"),
            ignored_errors: stat("ignored errors:"),
            threads: pieces(&lines, "e2e: ").filter_map(Counts::parse).collect(),
            reports: reports(&lines),
            errors: lines
                .iter()
                .filter(|l| l.starts_with("e2e-error:"))
                .cloned()
                .collect(),
            connect_errors: pieces(&lines, "FATAL: error ")
                .filter_map(|l| {
                    l.strip_prefix("FATAL: error ")?
                        .split_once(':')?
                        .0
                        .parse()
                        .ok()
                })
                .fold(BTreeMap::new(), |mut counts, errno| {
                    *counts.entry(errno).or_insert(0) += 1;
                    counts
                }),
            output: lines.join("\n"),
        }
    }

    pub fn totals(&self) -> Counts {
        self.threads
            .iter()
            .fold(Counts::default(), |sum, (_, c)| sum.add(*c))
    }

    /// Mean transactions per second over the report intervals that overlap [from, to).
    pub fn tps_between(&self, from: f64, to: f64) -> f64 {
        let overlapping: Vec<f64> = self
            .reports
            .iter()
            .filter(|r| r.at > from && r.start() < to)
            .map(|r| r.tps)
            .collect();
        if overlapping.is_empty() {
            return 0.0;
        }
        overlapping.iter().sum::<f64>() / overlapping.len() as f64
    }
}

/// Rows of the ledger per sysbench thread: what the database says committed.
pub async fn ledger(db: &MariaDb) -> Vec<(u32, u64)> {
    db.connect()
        .await
        .query("SELECT thread, COUNT(*) FROM e2e_ledger GROUP BY thread ORDER BY thread")
        .await
        .unwrap()
}

/// Empties the ledger between runs (each run numbers its attempts from 1 again).
pub async fn reset_ledger(db: &MariaDb) {
    db.connect()
        .await
        .query_drop("TRUNCATE e2e_ledger")
        .await
        .unwrap();
}

//! The stand-in's MySQL-aware drain against a real MariaDB: after SIGUSR1 a session leaves
//! at the first response it completes at a boundary once the shrinking allowance asks for
//! it, a session inside a transaction keeps working until it commits, an idle one stays to
//! the window end, and what is still inside a transaction then is cut and rolled back by the
//! server.
//!
//! Needs `mariadbd` and `mariadb-install-db` (Debian: `apt-get install -y mariadb-server`).
//! Without them these tests fail, saying so; built with `ODP_TEST_SKIP_MARIADB=1` they are
//! ignored instead (see `tests/common/mariadb.rs`).

mod common;

use std::process::Stdio;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Once};
use std::time::{Duration, Instant};

use common::mariadb::{MariaDb, connect};
use common::ports::reserve_port;
use common::{PATIENCE, STANDIN};
use mysql_async::Conn;
use mysql_async::prelude::*;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::AsyncBufReadExt;
use tokio::sync::watch;

/// One test at a time, as in `e2e_mariadb.rs`: each starts its own MariaDB (install and
/// InnoDB start-up are CPU and fsync heavy) while the others time their drains.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    skip_mariadb,
    ignore = "needs MariaDB: built with ODP_TEST_SKIP_MARIADB=1"
)]
async fn sessions_leave_at_transaction_boundaries_as_the_allowance_shrinks() {
    let _serial = SERIAL.lock().await;
    let db = MariaDb::start();
    let mut admin = db.connect().await;
    admin
        .query_drop("CREATE TABLE boundary (k VARCHAR(32) PRIMARY KEY) ENGINE=InnoDB")
        .await
        .unwrap();
    // Three sessions over nine seconds: the allowance is 3, then 2 from 3 s, 1 from 6 s.
    let window = Duration::from_secs(9);
    let standin = Standin::start(db.port, "hot_upgrade_exit_timeout=9000000").await;
    let mut polling = connect(standin.port).await;
    let mut committing = connect(standin.port).await;
    let mut lingering = connect(standin.port).await;

    polling.query_drop("SELECT 1").await.unwrap();
    committing.query_drop("BEGIN").await.unwrap();
    committing
        .exec_drop("INSERT INTO boundary VALUES (?)", ("committed",))
        .await
        .unwrap();
    // A text row that starts with an empty string reads, byte for byte, like an OK packet
    // without IN_TRANS: the stand-in must not take it for the end of the transaction.
    let row: Option<(String, Option<String>)> =
        committing.query_first("SELECT '', NULL").await.unwrap();
    assert_eq!(row, Some((String::new(), None)));
    lingering.query_drop("BEGIN").await.unwrap();
    lingering
        .query_drop("INSERT INTO boundary VALUES ('lingering')")
        .await
        .unwrap();

    let began = Instant::now();
    standin.drain();
    let begun = standin.wait_for("drain begun", 1).await;
    assert!(begun.contains("open_connections=3"), "{begun}");

    // obproxy looks at the allowance only as a response completes: a session that keeps
    // asking leaves at its first completion after the allowance dropped, at 3 s.
    let statements = until_closed(&mut polling).await;
    let first = standin.wait_for("session closed at boundary", 1).await;
    let at = began.elapsed();
    assert!(
        at >= window / 3 && at < window / 2,
        "the polling session should leave once the allowance drops, at 3 s, not {at:?}"
    );
    assert!(statements > 1, "it kept working until then");
    assert!(first.contains("open=2 allowed=2"), "{first}");

    // Still inside its transaction, and over the allowance: it keeps working (binary
    // protocol too), and its commit is no reason to leave while two may stay.
    let key: Option<(String,)> = committing
        .exec_first("SELECT k FROM boundary WHERE k = ?", ("committed",))
        .await
        .unwrap();
    assert_eq!(key, Some(("committed".to_owned(),)));
    committing.query_drop("COMMIT").await.unwrap();
    until_closed(&mut committing).await;
    let second = standin.wait_for("session closed at boundary", 2).await;
    let at = began.elapsed();
    assert!(
        at >= window * 2 / 3 && at < window,
        "the committed session should leave once one may stay, at 6 s, not {at:?}"
    );
    assert!(second.contains("open=1 allowed=1"), "{second}");

    // The window end cuts the session that never left its transaction.
    let finished = standin.wait_for("drain finished", 1).await;
    // `began` precedes the signal, so only the upper bound can tell a late cut.
    assert!(
        began.elapsed() < window + Duration::from_secs(1),
        "the window end cut at {:?}",
        began.elapsed()
    );
    assert!(
        finished.contains("reason=window cut=1 closed_at_boundary=0"),
        "{finished}"
    );
    assert!(lingering.query_drop("SELECT 1").await.is_err());
    assert_rolled_back(&mut admin, "boundary", "lingering").await;
    let keys: Vec<String> = admin
        .query("SELECT k FROM boundary ORDER BY k")
        .await
        .unwrap();
    assert_eq!(keys, ["committed", "lingering"]);
    standin.wait_for("exit", 1).await;
}

/// Runs `SELECT 1` until the connection is closed; how many succeeded.
async fn until_closed(conn: &mut Conn) -> usize {
    let mut done = 0;
    let deadline = Instant::now() + PATIENCE;
    while conn.query_drop("SELECT 1").await.is_ok() {
        done += 1;
        assert!(Instant::now() < deadline, "the session was never closed");
    }
    done
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    skip_mariadb,
    ignore = "needs MariaDB: built with ODP_TEST_SKIP_MARIADB=1"
)]
async fn a_transaction_open_at_a_short_window_end_is_cut_and_rolled_back() {
    let _serial = SERIAL.lock().await;
    let db = MariaDb::start();
    let mut admin = db.connect().await;
    admin
        .query_drop("CREATE TABLE cut (k VARCHAR(32) PRIMARY KEY) ENGINE=InnoDB")
        .await
        .unwrap();
    let standin = Standin::start(db.port, "hot_upgrade_exit_timeout=1000000").await;
    let mut session = connect(standin.port).await;
    session.query_drop("BEGIN").await.unwrap();
    session
        .query_drop("INSERT INTO cut VALUES ('cut')")
        .await
        .unwrap();

    standin.drain();
    let cut = standin.wait_for("session cut", 1).await;
    assert!(cut.contains("state=in-transaction"), "{cut}");
    let finished = standin.wait_for("drain finished", 1).await;
    assert!(
        finished.contains("reason=window cut=1 closed_at_boundary=0"),
        "{finished}"
    );
    assert!(session.query_drop("COMMIT").await.is_err());
    assert_rolled_back(&mut admin, "cut", "cut").await;
    let rows: Vec<String> = admin.query("SELECT k FROM cut").await.unwrap();
    assert_eq!(rows, ["cut"], "only the row inserted after the rollback");
}

/// obproxy looks at the allowance only when a transaction completes
/// (`handle_transaction_complete`): an idle session stays until the window end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    skip_mariadb,
    ignore = "needs MariaDB: built with ODP_TEST_SKIP_MARIADB=1"
)]
async fn sessions_are_closed_only_as_they_complete_a_response() {
    let _serial = SERIAL.lock().await;
    let db = MariaDb::start();
    let standin = Standin::start(db.port, "hot_upgrade_exit_timeout=8000000").await;
    let mut idle = connect(standin.port).await;
    let mut busy = connect(standin.port).await;
    idle.query_drop("SELECT 1").await.unwrap();

    // In flight across 4 s, where the allowance drops from 2 to 1, and done 3 s before the
    // window ends.
    let sleeping =
        tokio::spawn(async move { busy.query_drop("SELECT SLEEP(5)").await.map(|()| busy) });
    standin.drain();
    let mut busy = sleeping
        .await
        .unwrap()
        .expect("the statement in flight completes");
    let left = standin.wait_for("session closed at boundary", 1).await;
    assert!(left.contains("open=1 allowed=1"), "{left}");
    assert!(busy.query_drop("SELECT 1").await.is_err());

    let finished = standin.wait_for("drain finished", 1).await;
    assert!(
        finished.contains("reason=window cut=0 closed_at_boundary=1"),
        "the idle session stays to the window end: {finished}"
    );
    assert!(idle.query_drop("SELECT 1").await.is_err());
}

/// Proves the server rolled back a cut transaction that inserted `key` into `table`:
/// inserting the same key waits for that transaction's row lock and then succeeds, which it
/// could not if the row had been committed or the transaction were still open.
async fn assert_rolled_back(admin: &mut Conn, table: &str, key: &str) {
    admin
        .query_drop("SET SESSION innodb_lock_wait_timeout = 30")
        .await
        .unwrap();
    admin
        .exec_drop(format!("INSERT INTO {table} VALUES (?)"), (key,))
        .await
        .unwrap_or_else(|e| panic!("the cut transaction's row {key:?} is still there: {e}"));
}

/// The stand-in started fresh (`-p`, `-N`) in front of MariaDB, with this test as its
/// parent, and its log lines as they come.
struct Standin {
    child: tokio::process::Child,
    port: u16,
    log: watch::Receiver<Vec<String>>,
    _home: tempfile::TempDir,
    /// Its SQL, RPC and exporter ports, held for it (see [`reserve_port`]).
    _ports: Vec<socket2::Socket>,
}

impl Standin {
    async fn start(backend_port: u16, optstr: &str) -> Self {
        handle_child_signals();
        // Its SQL, RPC and exporter ports stay reserved for it: no other test can take one
        // between here and its bind (SO_REUSEADDR lets it bind over the reservation).
        let loopback = std::net::Ipv4Addr::LOCALHOST.into();
        let (ports, numbers): (Vec<_>, Vec<_>) = (0..3).map(|_| reserve_port(loopback)).unzip();
        let port = numbers[0];
        // Its layout (etc/, log/) goes in a directory of its own.
        let home = tempfile::tempdir().unwrap();
        let mut child = tokio::process::Command::new(STANDIN)
            .args(["-p", &port.to_string(), "-N"])
            .args([
                "-s",
                &numbers[1].to_string(),
                "-l",
                &numbers[2].to_string(),
                "-o",
            ])
            .arg(format!("standin_backend=127.0.0.1:{backend_port},{optstr}"))
            .current_dir(home.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (lines, log) = watch::channel(Vec::new());
        tokio::spawn(async move {
            let mut stderr = tokio::io::BufReader::new(stderr).lines();
            while let Ok(Some(line)) = stderr.next_line().await {
                eprintln!("{line}");
                lines.send_modify(|l| l.push(line));
            }
        });
        let standin = Standin {
            child,
            port,
            log,
            _home: home,
            _ports: ports,
        };
        standin.wait_for("ready", 1).await;
        standin
    }

    /// SIGUSR1: the graceful drain.
    fn drain(&self) {
        let pid = Pid::from_raw(self.child.id().unwrap() as i32);
        kill(pid, Signal::SIGUSR1).unwrap();
    }

    /// The `count`-th log line of `event`, once it has come.
    async fn wait_for(&self, event: &str, count: usize) -> String {
        let prefix = format!("obproxy-standin: {event} ");
        let matching = |lines: &Vec<String>| {
            lines
                .iter()
                .filter(|l| l.starts_with(&prefix))
                .nth(count - 1)
                .cloned()
        };
        let mut log = self.log.clone();
        match tokio::time::timeout(PATIENCE, log.wait_for(|l| matching(l).is_some())).await {
            Ok(Ok(lines)) => matching(&lines).unwrap(),
            _ => panic!(
                "no {count}x {event:?} from the stand-in within {PATIENCE:?}; its log:\n{}",
                self.log.borrow().join("\n")
            ),
        }
    }
}

/// Like obproxy 4.1+, the stand-in tells its parent that it drained (SIGUSR2); the default
/// action would kill this test process.
fn handle_child_signals() {
    static HANDLED: Once = Once::new();
    HANDLED.call_once(|| {
        for signal in [signal_hook::consts::SIGUSR1, signal_hook::consts::SIGUSR2] {
            signal_hook::flag::register(signal, Arc::new(AtomicBool::new(false))).unwrap();
        }
    });
}

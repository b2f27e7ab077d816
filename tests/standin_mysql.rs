//! The stand-in's MySQL-aware drain against a real MariaDB: after SIGUSR1 an idle session
//! leaves as soon as the shrinking allowance asks for it, a session inside a transaction
//! keeps working until it commits and leaves then, and what is still inside a transaction at
//! the window end is cut and rolled back by the server.
//!
//! Needs `mariadbd` and `mariadb-install-db` (Debian: `apt-get install -y mariadb-server`).
//! Without them these tests fail, saying so; built with `ODP_TEST_SKIP_MARIADB=1` they are
//! ignored instead (see `tests/common/mariadb.rs`).

mod common;

use std::os::fd::AsRawFd;
use std::process::Stdio;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Once};
use std::time::{Duration, Instant};

use common::mariadb::{MariaDb, connect};
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
    let standin = Standin::start(db.port, "hot_upgrade_exit_timeout=9s").await;
    let mut idle = connect(standin.port).await;
    let mut committing = connect(standin.port).await;
    let mut lingering = connect(standin.port).await;

    idle.query_drop("SELECT 1").await.unwrap();
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

    let first = standin.wait_for("session closed at boundary", 1).await;
    let left = began.elapsed();
    assert!(
        left >= window / 3 && left < window / 2,
        "the idle session should leave once the allowance drops, at 3 s, not {left:?}"
    );
    assert!(first.contains("open=2 allowed=2"), "{first}");
    assert!(
        idle.query_drop("SELECT 1").await.is_err(),
        "the idle session is closed"
    );

    // Still inside its transaction, and over the allowance: it keeps working (binary
    // protocol too) and is closed only once it has committed.
    let key: Option<(String,)> = committing
        .exec_first("SELECT k FROM boundary WHERE k = ?", ("committed",))
        .await
        .unwrap();
    assert_eq!(key, Some(("committed".to_owned(),)));
    committing.query_drop("COMMIT").await.unwrap();
    let second = standin.wait_for("session closed at boundary", 2).await;
    assert!(
        began.elapsed() < window,
        "the committed session should leave before the window end, not at {:?}",
        began.elapsed()
    );
    assert!(second.contains("open=1 allowed=1"), "{second}");
    assert!(committing.query_drop("SELECT 1").await.is_err());

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
    let standin = Standin::start(db.port, "hot_upgrade_exit_timeout=1s").await;
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

/// `standin_strict` follows obproxy's source, which looks at the allowance only when a
/// transaction completes: an idle session stays until the window end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    skip_mariadb,
    ignore = "needs MariaDB: built with ODP_TEST_SKIP_MARIADB=1"
)]
async fn strict_mode_closes_sessions_only_as_they_complete_a_response() {
    let _serial = SERIAL.lock().await;
    let db = MariaDb::start();
    let standin = Standin::start(db.port, "hot_upgrade_exit_timeout=8s,standin_strict=true").await;
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
}

impl Standin {
    async fn start(backend_port: u16, optstr: &str) -> Self {
        handle_child_signals();
        // The listener is bound here and handed over, as the agent does: no port is
        // released and bound again, so no other test can take it in between.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let fd = listener.as_raw_fd();
        let mut command = tokio::process::Command::new(STANDIN);
        command
            .env("OBPROXY_INHERITED_FD", fd.to_string())
            .args(["-N", "-o"])
            .arg(format!("standin_backend=127.0.0.1:{backend_port},{optstr}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        // SAFETY: only fcntl between fork and exec: the child keeps the listener.
        unsafe {
            command.pre_exec(move || {
                if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = command.spawn().unwrap();
        drop(listener);
        let stderr = child.stderr.take().unwrap();
        let (lines, log) = watch::channel(Vec::new());
        tokio::spawn(async move {
            let mut stderr = tokio::io::BufReader::new(stderr).lines();
            while let Ok(Some(line)) = stderr.next_line().await {
                eprintln!("{line}");
                lines.send_modify(|l| l.push(line));
            }
        });
        let standin = Standin { child, port, log };
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

/// Like obproxy, the stand-in tells its parent it is ready (SIGUSR1) and that it exited
/// (SIGUSR2); their default action would kill this test process.
fn handle_child_signals() {
    static HANDLED: Once = Once::new();
    HANDLED.call_once(|| {
        for signal in [signal_hook::consts::SIGUSR1, signal_hook::consts::SIGUSR2] {
            signal_hook::flag::register(signal, Arc::new(AtomicBool::new(false))).unwrap();
        }
    });
}

//! A load of Rust MySQL clients (mysql_async) whose every transaction writes a uniquely keyed
//! row set, so that the database itself says what committed: each client records how each of
//! its transactions ended, and [`verify`] counts the rows per transaction in MariaDB and holds
//! them against those records. A transaction is either wholly there or wholly absent; what a
//! client saw committed must be there, what was cut must not.
//!
//! Clients run on one ODP each, keep their session until it is lost (or for a fixed number of
//! transactions), reconnect to the same ODP and carry on. They publish their progress, so a
//! test can wait for "every client is inside a transaction" and the like instead of sleeping.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use mysql_async::prelude::*;
use mysql_async::{Conn, Error, IoError};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::PATIENCE;
use super::mariadb::opts;

/// The table every transaction writes its rows to: (transaction id, row number).
pub const TABLE: &str = "CREATE TABLE e2e_rows (txn BIGINT NOT NULL, part INT NOT NULL, \
                         PRIMARY KEY (txn, part)) ENGINE=InnoDB";

/// What each transaction of a client does.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    /// Rows per transaction, one INSERT each.
    pub rows: u32,
    /// Work between two inserts, as `SELECT SLEEP(..)` inside the transaction: load that
    /// keeps the transaction open, not a wait for anything.
    pub work: Duration,
    /// Transactions per session, after which the client ends the session itself (a pool's
    /// maximum lifetime); `None` keeps it until it is lost.
    pub per_session: Option<u32>,
}

/// How a transaction ended, as its client saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Committed,
    /// The session was lost before BEGIN was answered: it was closed between transactions
    /// and nothing of this one reached the server.
    NotBegun,
    /// The session was lost inside the transaction, before COMMIT was sent: the server must
    /// roll it back.
    Cut,
    /// The session was lost while COMMIT was in flight: committed or not, never in part.
    CommitUnknown,
    /// The server refused a statement (the session lived on; the client rolled back).
    ServerError,
}

#[derive(Debug, Clone)]
pub struct Txn {
    pub id: u64,
    pub client: usize,
    /// The client's session count when it ran (1 = its first session).
    pub session: u64,
    pub rows: u32,
    pub outcome: Outcome,
    pub error: Option<String>,
}

/// What a client has done so far, published as it goes.
#[derive(Debug, Default, Clone, Copy)]
pub struct Progress {
    pub sessions: u64,
    pub committed: u64,
    /// Inside a transaction (BEGIN answered, COMMIT not yet).
    pub in_txn: bool,
    /// Rows inserted by the transaction under way.
    pub rows_in_txn: u32,
    /// Sessions lost (closed or cut by the proxy).
    pub lost: u64,
}

#[derive(Debug, Default)]
pub struct ClientReport {
    pub txns: Vec<Txn>,
    /// Connects refused (ECONNREFUSED): the ODP's port was closed.
    pub refused: u64,
    /// Any other failed connect.
    pub connect_errors: Vec<String>,
    /// How long each successful connect took, greeting and login included: a connection
    /// waiting in the listener's backlog shows here.
    pub connect_waits: Vec<Duration>,
}

pub struct Load {
    stop: CancellationToken,
    clients: Vec<JoinHandle<ClientReport>>,
    progress: watch::Receiver<Vec<Progress>>,
}

impl Load {
    /// One client per entry, each on the ODP at its port.
    pub fn start(clients: &[(u16, Shape)]) -> Load {
        let stop = CancellationToken::new();
        let (progress, watcher) = watch::channel(vec![Progress::default(); clients.len()]);
        let clients = clients
            .iter()
            .enumerate()
            .map(|(id, &(port, shape))| {
                tokio::spawn(run_client(id, port, shape, stop.clone(), progress.clone()))
            })
            .collect();
        Load {
            stop,
            clients,
            progress: watcher,
        }
    }

    pub fn progress(&self) -> Vec<Progress> {
        self.progress.borrow().clone()
    }

    /// The clients' progress once `until` holds for it.
    pub async fn wait(&self, what: &str, until: impl Fn(&[Progress]) -> bool) -> Vec<Progress> {
        let mut progress = self.progress.clone();
        match tokio::time::timeout(PATIENCE, progress.wait_for(|p| until(p))).await {
            Ok(Ok(p)) => p.clone(),
            _ => panic!(
                "the clients did not get to {what} within {PATIENCE:?}: {:#?}",
                self.progress.borrow()
            ),
        }
    }

    /// Lets every client finish the transaction under way, then ends their sessions.
    pub async fn finish(self) -> LoadReport {
        self.stop.cancel();
        let mut clients = Vec::new();
        for client in self.clients {
            clients.push(
                tokio::time::timeout(PATIENCE, client)
                    .await
                    .expect("a client did not stop")
                    .unwrap(),
            );
        }
        LoadReport { clients }
    }
}

pub struct LoadReport {
    pub clients: Vec<ClientReport>,
}

impl LoadReport {
    pub fn txns(&self) -> impl Iterator<Item = &Txn> {
        self.clients.iter().flat_map(|c| c.txns.iter())
    }

    pub fn count(&self, outcome: Outcome) -> usize {
        self.txns().filter(|t| t.outcome == outcome).count()
    }

    /// Per client, its transactions that ended as `outcome`.
    pub fn per_client(&self, outcome: Outcome) -> Vec<usize> {
        self.clients
            .iter()
            .map(|c| c.txns.iter().filter(|t| t.outcome == outcome).count())
            .collect()
    }

    pub fn refused(&self) -> u64 {
        self.clients.iter().map(|c| c.refused).sum()
    }

    pub fn connect_errors(&self) -> Vec<&String> {
        self.clients
            .iter()
            .flat_map(|c| c.connect_errors.iter())
            .collect()
    }

    pub fn longest_connect(&self) -> Duration {
        self.clients
            .iter()
            .flat_map(|c| c.connect_waits.iter().copied())
            .max()
            .unwrap_or_default()
    }

    /// The transactions that did not simply commit, for failure messages.
    pub fn failures(&self) -> Vec<&Txn> {
        self.txns()
            .filter(|t| t.outcome != Outcome::Committed)
            .collect()
    }
}

async fn run_client(
    id: usize,
    port: u16,
    shape: Shape,
    stop: CancellationToken,
    progress: watch::Sender<Vec<Progress>>,
) -> ClientReport {
    let mut report = ClientReport::default();
    let mut seq = 0;
    let mut session = 0;
    while !stop.is_cancelled() {
        let connecting = Instant::now();
        let mut conn = match Conn::new(opts(port)).await {
            Ok(conn) => conn,
            Err(e) => {
                if is_refused(&e) {
                    report.refused += 1;
                } else {
                    report.connect_errors.push(e.to_string());
                }
                // A retry pace, not a wait for an event: the next attempt tells.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        report.connect_waits.push(connecting.elapsed());
        session += 1;
        progress.send_modify(|p| p[id].sessions += 1);
        let mut done_in_session = 0;
        let lost = loop {
            if stop.is_cancelled() || shape.per_session == Some(done_in_session) {
                break false;
            }
            seq += 1;
            let txn = id as u64 * 1_000_000 + seq;
            let (outcome, error) = transaction(&mut conn, txn, &shape, |update| {
                progress.send_modify(|p| update(&mut p[id]))
            })
            .await;
            report.txns.push(Txn {
                id: txn,
                client: id,
                session,
                rows: shape.rows,
                outcome,
                error,
            });
            match outcome {
                Outcome::Committed => done_in_session += 1,
                Outcome::ServerError => {}
                Outcome::NotBegun | Outcome::Cut | Outcome::CommitUnknown => break true,
            }
        };
        if lost {
            progress.send_modify(|p| {
                p[id].lost += 1;
                p[id].in_txn = false;
            });
            // The connection is dead; dropping it is all there is to do.
            drop(conn);
        } else {
            let _ = conn.disconnect().await;
        }
    }
    report
}

/// BEGIN, `rows` inserts with the work between them, COMMIT; how it ended.
async fn transaction(
    conn: &mut Conn,
    txn: u64,
    shape: &Shape,
    publish: impl Fn(&dyn Fn(&mut Progress)),
) -> (Outcome, Option<String>) {
    let classify = |e: &Error, lost: Outcome| {
        if e.is_fatal() {
            lost
        } else {
            Outcome::ServerError
        }
    };
    if let Err(e) = conn.query_drop("BEGIN").await {
        return (classify(&e, Outcome::NotBegun), Some(e.to_string()));
    }
    publish(&|p| {
        p.in_txn = true;
        p.rows_in_txn = 0;
    });
    for part in 1..=shape.rows {
        let mut step = conn
            .query_drop(format!(
                "INSERT INTO e2e_rows (txn, part) VALUES ({txn}, {part})"
            ))
            .await;
        if step.is_ok() {
            publish(&|p| p.rows_in_txn = part);
            if part < shape.rows && !shape.work.is_zero() {
                step = conn
                    .query_drop(format!("SELECT SLEEP({})", shape.work.as_secs_f64()))
                    .await;
            }
        }
        if let Err(e) = step {
            let outcome = classify(&e, Outcome::Cut);
            if outcome == Outcome::ServerError {
                let _ = conn.query_drop("ROLLBACK").await;
                publish(&|p| p.in_txn = false);
            }
            return (outcome, Some(e.to_string()));
        }
    }
    let committed = conn.query_drop("COMMIT").await;
    publish(&|p| p.in_txn = false);
    match committed {
        Ok(()) => {
            publish(&|p| p.committed += 1);
            (Outcome::Committed, None)
        }
        Err(e) => (classify(&e, Outcome::CommitUnknown), Some(e.to_string())),
    }
}

fn is_refused(e: &Error) -> bool {
    matches!(e, Error::Io(IoError::Io(io)) if io.kind() == std::io::ErrorKind::ConnectionRefused)
}

/// What the database holds, checked against what the clients saw.
#[derive(Debug, Default)]
pub struct Tally {
    pub committed: usize,
    pub not_begun: usize,
    /// Cut inside the transaction, and rolled back by the server.
    pub cut: usize,
    /// Lost during COMMIT, and found committed.
    pub commit_unknown_committed: usize,
    /// Lost during COMMIT, and found rolled back.
    pub commit_unknown_rolled_back: usize,
    /// Refused by the server, and rolled back by the client.
    pub server_errors: usize,
}

/// Counts each transaction's rows in the database once no transaction is left open on the
/// server, and fails on any transaction present in part, any committed one missing, any cut
/// one present, and any rows nobody wrote.
pub async fn verify(db: &mut Conn, report: &LoadReport) -> Tally {
    // A cut session's transaction ends when the server notices the lost connection (at the
    // latest when its SLEEP returns); only then is "rolled back" a fact rather than "not
    // committed yet". Polled: the server has no notification for it.
    let deadline = Instant::now() + PATIENCE;
    loop {
        let open: Option<u64> = db
            .query_first(
                "SELECT COUNT(*) FROM information_schema.innodb_trx \
                 WHERE trx_mysql_thread_id <> CONNECTION_ID()",
            )
            .await
            .unwrap();
        if open == Some(0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{open:?} transactions still open on the server after {PATIENCE:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut rows: HashMap<u64, u32> = db
        .query::<(u64, u32), _>("SELECT txn, COUNT(*) FROM e2e_rows GROUP BY txn")
        .await
        .unwrap()
        .into_iter()
        .collect();
    let mut tally = Tally::default();
    let mut wrong = Vec::new();
    for txn in report.txns() {
        let found = rows.remove(&txn.id).unwrap_or(0);
        let ok = match txn.outcome {
            Outcome::Committed => {
                tally.committed += 1;
                found == txn.rows
            }
            Outcome::NotBegun => {
                tally.not_begun += 1;
                found == 0
            }
            Outcome::Cut => {
                tally.cut += 1;
                found == 0
            }
            Outcome::ServerError => {
                tally.server_errors += 1;
                found == 0
            }
            Outcome::CommitUnknown if found == txn.rows => {
                tally.commit_unknown_committed += 1;
                true
            }
            Outcome::CommitUnknown => {
                tally.commit_unknown_rolled_back += 1;
                found == 0
            }
        };
        if !ok {
            wrong.push(format!(
                "{txn:?}: {found} of {} rows in the database",
                txn.rows
            ));
        }
    }
    for (txn, found) in rows {
        wrong.push(format!("transaction {txn}: {found} rows no client wrote"));
    }
    assert!(
        wrong.is_empty(),
        "the database disagrees with the clients:\n{}",
        wrong.join("\n")
    );
    tally
}

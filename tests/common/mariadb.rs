//! A MariaDB server of our own on loopback for the tests that put real database clients
//! through the stand-in: installed into a temporary data directory, with a user `odp`
//! (password `odp`) owning a database `odp`, and killed on drop.
//!
//! Needs `mariadbd` and `mariadb-install-db` (Debian: `apt-get install -y mariadb-server
//! mariadb-client`). Without them the tests that need it fail, unless
//! `ODP_TEST_SKIP_MARIADB=1` asks to skip them.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Instant;

use mysql_async::{Conn, OptsBuilder};

use super::PATIENCE;

/// Set to 1 to skip, rather than fail, the tests that need MariaDB (or sysbench) where they
/// are not installed.
pub const SKIP: &str = "ODP_TEST_SKIP_MARIADB";

pub struct MariaDb {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl MariaDb {
    /// `None` only when MariaDB is not installed and `ODP_TEST_SKIP_MARIADB=1`.
    pub fn start() -> Option<Self> {
        let (Some(install_db), Some(mariadbd)) = (find("mariadb-install-db"), find("mariadbd"))
        else {
            return skip_or_fail(
                "MariaDB is not installed (no mariadbd / mariadb-install-db): install it with \
                 `apt-get install -y mariadb-server mariadb-client`",
            );
        };
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        // mariadbd refuses to run as root unless told to; elsewhere --user only warns.
        let user: &[&str] = if nix::unistd::geteuid().is_root() {
            &["--user=root"]
        } else {
            &[]
        };
        let installed = Command::new(install_db)
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .args(["--auth-root-authentication-method=normal", "--skip-test-db"])
            .args(user)
            .output()
            .unwrap();
        assert!(
            installed.status.success(),
            "mariadb-install-db failed: {}{}",
            String::from_utf8_lossy(&installed.stdout),
            String::from_utf8_lossy(&installed.stderr)
        );
        let init = dir.path().join("init.sql");
        std::fs::write(
            &init,
            "CREATE USER IF NOT EXISTS 'odp'@'127.0.0.1' IDENTIFIED BY 'odp';\n\
             GRANT ALL ON *.* TO 'odp'@'127.0.0.1';\n\
             CREATE DATABASE IF NOT EXISTS odp;\n",
        )
        .unwrap();
        let port = free_port();
        let mut child = Command::new(mariadbd)
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .arg(format!(
                "--socket={}",
                dir.path().join("mysqld.sock").display()
            ))
            .arg(format!(
                "--pid-file={}",
                dir.path().join("mariadbd.pid").display()
            ))
            .arg(format!("--port={port}"))
            .args([
                "--bind-address=127.0.0.1",
                "--skip-name-resolve",
                "--skip-log-bin",
                "--innodb-buffer-pool-size=32M",
                // Its data is thrown away: durability would only cost the tests time.
                "--innodb-flush-log-at-trx-commit=0",
            ])
            .arg(format!("--init-file={}", init.display()))
            .args(user)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // mariadbd logs to stderr; it is read to the end so the pipe never fills.
        let stderr = child.stderr.take().unwrap();
        let (lines, log) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = lines.send(line);
            }
        });
        let deadline = Instant::now() + PATIENCE;
        let mut seen = Vec::new();
        loop {
            match log.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) if line.contains("ready for connections") => break,
                Ok(line) => seen.push(line),
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("mariadbd did not become ready:\n{}", seen.join("\n"));
                }
            }
        }
        Some(MariaDb {
            child,
            port,
            _dir: dir,
        })
    }

    /// A session straight to the server, not through a proxy.
    pub async fn connect(&self) -> Conn {
        connect(self.port).await
    }
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        // SIGKILL: its data directory is thrown away anyway.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How the tests reach the server (or a proxy in front of it) as `odp`, over TCP.
pub fn opts(port: u16) -> OptsBuilder {
    OptsBuilder::default()
        .ip_or_hostname("127.0.0.1")
        .tcp_port(port)
        .user(Some("odp"))
        .pass(Some("odp"))
        .db_name(Some("odp"))
        // Otherwise the client switches to the server's Unix socket, around the proxy.
        .prefer_socket(false)
}

pub async fn connect(port: u16) -> Conn {
    Conn::new(opts(port)).await.unwrap()
}

/// `None` when `ODP_TEST_SKIP_MARIADB=1`; otherwise a failed test saying what is missing.
pub fn skip_or_fail<T>(missing: &str) -> Option<T> {
    if std::env::var(SKIP).as_deref() == Ok("1") {
        eprintln!("skipped: {missing}, and {SKIP}=1");
        return None;
    }
    panic!("{missing}; or set {SKIP}=1 to skip");
}

/// A program on the PATH, or in sbin, which a non-root PATH often lacks (mariadbd).
pub fn find(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

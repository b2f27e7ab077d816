//! A MariaDB server of our own on loopback for the tests that put real database clients
//! through the stand-in: installed into a temporary data directory, with a user `odp`
//! (password `odp`) owning a database `odp`, and killed on drop.
//!
//! Needs `mariadbd` and `mariadb-install-db` (Debian: `apt-get install -y mariadb-server
//! mariadb-client`). Without them the tests that need it fail, saying what is missing. Built
//! with `ODP_TEST_SKIP_MARIADB=1` (see `build.rs`), those tests are ignored instead, and
//! `cargo test` reports them as ignored with that reason; `.ci/run` refuses the variable.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use mysql_async::{Conn, OptsBuilder};

use super::ports::reserve_port;

/// How long `mariadbd` may take to say it is ready: InnoDB's start-up on a busy machine.
const STARTUP: Duration = Duration::from_secs(60);

pub struct MariaDb {
    child: Child,
    mariadbd: PathBuf,
    pub port: u16,
    /// Its port, held for it (see [`reserve_port`]).
    _port: socket2::Socket,
    _dir: tempfile::TempDir,
}

impl MariaDb {
    pub fn start() -> Self {
        let (Some(install_db), Some(mariadbd)) = (find("mariadb-install-db"), find("mariadbd"))
        else {
            missing(
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
        // Its temporary tables in a directory of its own, not /tmp: two servers
        // bootstrapping at once there failed on each other's temporary files
        // ("Could not remove temporary table ... error: 2").
        let tmp = dir.path().join("tmp");
        std::fs::create_dir(&tmp).unwrap();
        let installed = Command::new(install_db)
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--tmpdir={}", tmp.display()))
            .args(["--auth-root-authentication-method=normal", "--skip-test-db"])
            // Passed on to the bootstrap server: the data is thrown away.
            .arg("--innodb-flush-log-at-trx-commit=0")
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
        // mariadbd binds with SO_REUSEADDR, so it can bind over the reservation.
        let (reserved, port) = reserve_port(std::net::Ipv4Addr::LOCALHOST.into());
        let child = spawn(&mariadbd, dir.path(), port, user);
        MariaDb {
            child,
            mariadbd,
            port,
            _port: reserved,
            _dir: dir,
        }
    }

    /// Stops the server (SIGTERM, as systemd would) and starts it again on the same data
    /// and port, returning once it is ready.
    pub fn restart(&mut self) {
        super::signal(self.child.id(), libc::SIGTERM);
        let _ = self.child.wait();
        let user: &[&str] = if nix::unistd::geteuid().is_root() {
            &["--user=root"]
        } else {
            &[]
        };
        self.child = spawn(&self.mariadbd, self._dir.path(), self.port, user);
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

/// A test that needs what is not installed fails, saying what is missing.
pub fn missing(what: &str) -> ! {
    panic!(
        "{what}; or build the tests with ODP_TEST_SKIP_MARIADB=1 to have them reported as \
         ignored"
    );
}

/// A program on the PATH, or in sbin, which a non-root PATH often lacks (mariadbd).
pub fn find(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// Starts `mariadbd` on the data in `dir` and waits until it is ready.
fn spawn(mariadbd: &std::path::Path, dir: &std::path::Path, port: u16, user: &[&str]) -> Child {
    let data = dir.join("data");
    let init = dir.join("init.sql");
    let mut child = Command::new(mariadbd)
        .arg("--no-defaults")
        .arg(format!("--datadir={}", data.display()))
        .arg(format!("--socket={}", dir.join("mysqld.sock").display()))
        .arg(format!("--pid-file={}", dir.join("mariadbd.pid").display()))
        .arg(format!("--tmpdir={}", dir.join("tmp").display()))
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
    let deadline = Instant::now() + STARTUP;
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
    child
}

//! A throwaway MariaDB on loopback for the benchmarks that need a metadb:
//! installed into a temporary directory, a user `odp` (password `odp`)
//! owning a database `odp`, killed on drop. Needs `mariadbd` and
//! `mariadb-install-db` (Debian: `apt-get install -y mariadb-server`).
use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

/// InnoDB's start-up on a busy machine.
const STARTUP: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum MetadbServerError {
    #[error("{0} is not installed (apt-get install -y mariadb-server)")]
    Missing(&'static str),
    #[error("cannot run {what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("mariadb-install-db failed: {0}")]
    Install(String),
    #[error("mariadbd did not become ready: {0}")]
    NoStart(String),
}

pub struct MetadbServer {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

fn find(program: &'static str) -> Result<PathBuf, MetadbServerError> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(program))
        .find(|c| c.is_file())
        .ok_or(MetadbServerError::Missing(program))
}

fn io(what: &Path) -> impl FnOnce(std::io::Error) -> MetadbServerError + '_ {
    move |source| MetadbServerError::Io {
        what: what.display().to_string(),
        source,
    }
}

impl MetadbServer {
    pub fn start() -> Result<Self, MetadbServerError> {
        let (install_db, mariadbd) = (find("mariadb-install-db")?, find("mariadbd")?);
        let dir = tempfile::Builder::new()
            .prefix("odp-metadb-")
            .tempdir()
            .map_err(io(Path::new("/tmp")))?;
        let data = dir.path().join("data");
        // mariadbd refuses to run as root unless told to.
        let user: &[&str] = if nix::unistd::geteuid().is_root() {
            &["--user=root"]
        } else {
            &[]
        };
        // Its temporary tables in a directory of its own, not /tmp, where two
        // servers bootstrapping at once fail on each other's temporary files.
        let tmp = dir.path().join("tmp");
        std::fs::create_dir(&tmp).map_err(io(&tmp))?;
        let out = Command::new(&install_db)
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--tmpdir={}", tmp.display()))
            .args(["--auth-root-authentication-method=normal", "--skip-test-db"])
            .args(user)
            .output()
            .map_err(io(&install_db))?;
        if !out.status.success() {
            return Err(MetadbServerError::Install(
                String::from_utf8_lossy(&out.stderr).into_owned(),
            ));
        }
        let init = dir.path().join("init.sql");
        std::fs::write(
            &init,
            "CREATE USER IF NOT EXISTS 'odp'@'127.0.0.1' IDENTIFIED BY 'odp';\n\
             GRANT ALL ON odp.* TO 'odp'@'127.0.0.1';\n\
             CREATE DATABASE IF NOT EXISTS odp;\n",
        )
        .map_err(io(&init))?;
        // The port is free when asked, but another process may take it before
        // mariadbd binds it: then again, on another.
        let mut attempts = 0;
        let (child, port) = loop {
            attempts += 1;
            match spawn(&mariadbd, dir.path(), &init, user) {
                Err(MetadbServerError::NoStart(log))
                    if attempts < 5 && log.contains("Address already in use") => {}
                other => break other?,
            }
        };
        Ok(Self {
            child,
            port,
            _dir: dir,
        })
    }

    /// `[store]` keys for a coordinator named `holder` on this server
    /// (its password in `password_file`, which the caller writes: `odp`).
    pub fn store_keys(&self, holder: &str, lease: Duration) -> String {
        format!(
            "url = \"mysql://odp@127.0.0.1:{}/odp\"\npassword_file = \"password\"\n\
             state_dir = \"state-{holder}\"\nlease = \"{}ms\"\nholder = \"{holder}\"\n",
            self.port,
            lease.as_millis()
        )
    }
}

/// Starts `mariadbd` on the data in `dir` on a free port and waits until it
/// is ready.
fn spawn(
    mariadbd: &Path,
    dir: &Path,
    init: &Path,
    user: &[&str],
) -> Result<(Child, u16), MetadbServerError> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(io(Path::new("127.0.0.1:0")))?
        .port();
    let mut child = Command::new(mariadbd)
        .arg("--no-defaults")
        .arg(format!("--datadir={}", dir.join("data").display()))
        .arg(format!("--socket={}", dir.join("sock").display()))
        .arg(format!("--pid-file={}", dir.join("pid").display()))
        .arg(format!("--tmpdir={}", dir.join("tmp").display()))
        .arg(format!("--port={port}"))
        .args([
            "--bind-address=127.0.0.1",
            "--skip-name-resolve",
            "--skip-log-bin",
            "--innodb-buffer-pool-size=32M",
        ])
        .arg(format!("--init-file={}", init.display()))
        .args(user)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(io(mariadbd))?;
    let stderr = child.stderr.take().expect("piped stderr");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + STARTUP;
    let mut seen = Vec::new();
    loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) if line.contains("ready for connections") => break,
            Ok(line) => seen.push(line),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(MetadbServerError::NoStart(seen.join("\n")));
            }
        }
    }
    Ok((child, port))
}

impl Drop for MetadbServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

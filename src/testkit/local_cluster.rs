//! A local cluster on loopback: real `odp-agent` processes, each with the
//! obproxy stand-in as its obproxy, and a real `odp-coordinator`, all in a
//! temporary directory. What the demo and the benchmarks run on.
use std::{
    io::{BufRead, BufReader, Write},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use super::fixed_port;

/// How long a daemon may take to say where it listens.
const STARTUP: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cannot find {0} beside this program (build every binary: cargo build --release)")]
    Missing(PathBuf),
    #[error("cannot prepare {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} did not start; its log is {log}")]
    NoStart { what: String, log: PathBuf },
}

#[derive(Debug, Clone)]
pub struct Options {
    pub odps: usize,
    /// Where the stand-ins forward (an echo without one).
    pub backend: Option<SocketAddr>,
    pub exit_timeout: Duration,
    /// The stand-in's start-up time, to look like a real obproxy.
    pub start_delay: Option<Duration>,
    /// Where odp-agent, odp-coordinator and obproxy-standin are.
    pub bin_dir: PathBuf,
    /// Serve the console on a loopback port, signed in with this token
    /// (an OBPROXY_MANAGER token, which every caller then needs).
    pub console_token: Option<String>,
}

impl Options {
    /// `odps` ODPs, binaries beside the running executable.
    pub fn beside_me(odps: usize) -> Self {
        let bin_dir = std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf))
            .unwrap_or_else(|| PathBuf::from("."));
        Self {
            odps,
            backend: None,
            exit_timeout: Duration::from_secs(5),
            start_delay: None,
            bin_dir,
            console_token: None,
        }
    }
}

/// A child daemon and where it serves gRPC.
pub struct Daemon {
    pub child: Child,
    pub addr: SocketAddr,
    pub log: PathBuf,
    /// Where the coordinator serves its console, if it does.
    pub console: Option<SocketAddr>,
}

pub struct LocalCluster {
    pub name: String,
    pub dir: tempfile::TempDir,
    pub agents: Vec<Daemon>,
    pub coordinator: Daemon,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ClusterError + '_ {
    move |source| ClusterError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Spawns `binary --config config`, logging to `log`, and waits for its
/// `grpc_addr=` line.
pub fn spawn(
    binary: &Path,
    config: &Path,
    log: &Path,
    env: &[(&str, String)],
) -> Result<Daemon, ClusterError> {
    let mut child = Command::new(binary)
        .arg("--config")
        .arg(config)
        .envs(env.iter().map(|(k, v)| (*k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(io_err(binary))?;
    let stderr = child.stderr.take().expect("piped stderr");
    let mut file = std::fs::File::create(log).map_err(io_err(log))?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            for key in ["console_addr=", "grpc_addr="] {
                if let Some(addr) = line.split(key).nth(1) {
                    let addr = addr.split_whitespace().next().unwrap_or("").to_string();
                    let _ = tx.send((key, addr));
                }
            }
            let _ = writeln!(file, "{line}");
        }
    });
    let no_start = || ClusterError::NoStart {
        what: binary.display().to_string(),
        log: log.to_path_buf(),
    };
    // The console, when there is one, is announced before gRPC.
    let mut console = None;
    let addr = loop {
        match rx.recv_timeout(STARTUP) {
            Ok(("console_addr=", a)) => console = a.parse().ok(),
            Ok((_, a)) => break a.parse().ok(),
            Err(_) => break None,
        }
    }
    .ok_or_else(no_start)?;
    Ok(Daemon {
        child,
        addr,
        log: log.to_path_buf(),
        console,
    })
}

/// A throwaway cluster of one user on loopback: its callers (odpctl, the
/// coordinator calling the agents) operate over loopback TCP, which the
/// daemons otherwise allow only READ_ONLY.
const LOOPBACK_OPERATES: &str = "loopback_role = \"OBPROXY_MANAGER\"";

/// A coordinator over `agents` (cluster `name`) with its files in `dir`.
pub fn spawn_coordinator(
    bin_dir: &Path,
    dir: &Path,
    name: &str,
    agents: &[String],
) -> Result<Daemon, ClusterError> {
    let binary = bin_dir.join("odp-coordinator");
    if !binary.exists() {
        return Err(ClusterError::Missing(binary));
    }
    let config = dir.join("coordinator.toml");
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n{LOOPBACK_OPERATES}\n[store]\npath = \"tasks.db\"\n[[clusters]]\nname = \"{name}\"\nagents = {agents:?}\n"
    );
    std::fs::write(&config, text).map_err(io_err(&config))?;
    spawn(&binary, &config, &dir.join("coordinator.log"), &[])
}

impl LocalCluster {
    pub fn start(opts: &Options) -> Result<Self, ClusterError> {
        let bin = |name: &str| {
            let p = opts.bin_dir.join(name);
            if p.exists() {
                Ok(p)
            } else {
                Err(ClusterError::Missing(p))
            }
        };
        let (agent_bin, coordinator_bin, standin) = (
            bin("odp-agent")?,
            bin("odp-coordinator")?,
            bin("obproxy-standin")?,
        );
        let dir = tempfile::Builder::new()
            .prefix("odp-cluster-")
            .tempdir()
            .map_err(io_err(Path::new("/tmp")))?;
        let mut env = Vec::new();
        if let Some(d) = opts.start_delay {
            env.push(("ODP_STANDIN_START_DELAY", format!("{}ms", d.as_millis())));
        }
        let mut args = vec!["-n".to_string(), "demo".into(), "-c".into(), "demo".into()];
        if let Some(b) = opts.backend {
            args.extend(["-o".into(), format!("standin_backend={b}")]);
        }
        let mut agents = Vec::with_capacity(opts.odps);
        let loopback = std::net::Ipv4Addr::LOCALHOST.into();
        for i in 0..opts.odps {
            let config = dir.path().join(format!("agent-{i}.toml"));
            let text = format!(
                r#"[server]
listen = "127.0.0.1:0"
{LOOPBACK_OPERATES}
[obproxy]
home = "odp-{i}"
binary = {standin:?}
args = {args:?}
listen = ["127.0.0.1:{sql}"]
rpc_listen = ["127.0.0.1:{rpc}"]
hot_upgrade_exit_timeout = "{exit}ms"
start_timeout = "30s"
stop_timeout = "5s"
[state]
dir = "agent-{i}"
"#,
                standin = standin.display().to_string(),
                exit = opts.exit_timeout.as_millis(),
                // Outside the ephemeral range, so no client's source port takes a port
                // a stop+start has closed (see fixed_port).
                sql = fixed_port::below_ephemeral(loopback).map_err(io_err(&config))?,
                rpc = fixed_port::below_ephemeral(loopback).map_err(io_err(&config))?,
            );
            let home = dir.path().join(format!("odp-{i}"));
            std::fs::create_dir_all(&home).map_err(io_err(&home))?;
            std::fs::write(&config, text).map_err(io_err(&config))?;
            let log = dir.path().join(format!("agent-{i}.log"));
            agents.push(spawn(&agent_bin, &config, &log, &env)?);
        }
        let name = "demo".to_string();
        let addrs: Vec<String> = agents.iter().map(|a| a.addr.to_string()).collect();
        let config = dir.path().join("coordinator.toml");
        // `loopback_role` belongs to `[server]`; the console's tables come last, since
        // `[[clusters]]` would otherwise swallow the keys that follow it.
        let (server_role, callers) = match &opts.console_token {
            None => (format!("{LOOPBACK_OPERATES}\n"), String::new()),
            Some(token) => {
                use sha2::Digest;
                let hash = hex::encode(sha2::Sha256::digest(token.as_bytes()));
                (
                    String::new(),
                    format!(
                        "[web]\nlisten = \"127.0.0.1:0\"\n[[auth.tokens]]\nname = \"demo\"\nsha256 = \"{hash}\"\nrole = \"OBPROXY_MANAGER\"\n"
                    ),
                )
            }
        };
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n{server_role}[store]\npath = \"tasks.db\"\n[[clusters]]\nname = \"{name}\"\nagents = {addrs:?}\n{callers}"
        );
        std::fs::write(&config, text).map_err(io_err(&config))?;
        let coordinator = spawn(
            &coordinator_bin,
            &config,
            &dir.path().join("coordinator.log"),
            &[],
        )?;
        Ok(Self {
            name,
            dir,
            agents,
            coordinator,
        })
    }

    /// Processes running in this cluster's directory (the stand-ins).
    fn obproxies(&self) -> Vec<u32> {
        crate::agent::obproxy::procfs::pids()
            .into_iter()
            .filter(|pid| {
                std::fs::read_link(format!("/proc/{pid}/cwd"))
                    .is_ok_and(|cwd| cwd.starts_with(self.dir.path()))
            })
            .collect()
    }
}

impl Drop for LocalCluster {
    /// The daemons get SIGTERM; obproxy outlives its agent by design, so the
    /// stand-ins are ended here explicitly.
    fn drop(&mut self) {
        for d in self
            .agents
            .iter_mut()
            .chain(std::iter::once(&mut self.coordinator))
        {
            let _ = d.child.kill();
            let _ = d.child.wait();
        }
        for pid in self.obproxies() {
            // SAFETY: kill(2) on a pid whose cwd is inside our own temp dir.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    }
}

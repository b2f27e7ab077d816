//! A disposable ODP on loopback for benchmarks: an echo backend, a real `odp-agent` and the
//! obproxy stand-in (both found next to this executable) in a temporary directory, with the
//! agent's log kept line by line with its own timestamps.
use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex, mpsc},
    time::{Duration, SystemTime},
};

use anyhow::{Context, bail};
use odp_agent::{
    proto::agent::{self as pb, agent_client::AgentClient},
    testkit::{echo_backend::EchoBackend, fixed_port},
};
use tonic::transport::Channel;

/// Bound on the agent coming up and on a Stop at the end.
const PATIENCE: Duration = Duration::from_secs(30);

pub struct Options {
    /// The obproxy start-up time the stand-in simulates (`ODP_STANDIN_START_DELAY`).
    pub start_delay: Duration,
    /// `hot_upgrade_exit_timeout`.
    pub exit_timeout: Duration,
}

/// One line of the agent's log.
#[derive(Debug, Clone)]
pub struct LogLine {
    /// The agent's own timestamp (tracing's RFC 3339), or when the line was read if it has none.
    pub at: SystemTime,
    pub text: String,
}

pub struct Testbed {
    /// Removed on drop, with the agent's state and obproxy's home in it.
    dir: tempfile::TempDir,
    backend: Option<EchoBackend>,
    agent: Child,
    grpc: SocketAddr,
    client: AgentClient<Channel>,
    log: Arc<AgentLog>,
}

/// The agent's log as read so far; the reader thread may lag behind the agent on a busy
/// machine, so callers wait for the line they need rather than expect it there.
#[derive(Default)]
struct AgentLog {
    lines: Mutex<Vec<LogLine>>,
    /// Woken at every new line.
    grew: tokio::sync::Notify,
}

impl AgentLog {
    fn lines(&self) -> std::sync::MutexGuard<'_, Vec<LogLine>> {
        self.lines.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Testbed {
    pub async fn start(opts: &Options) -> anyhow::Result<Self> {
        let bin_dir = bin_dir()?;
        let agent_bin = sibling(&bin_dir, "odp-agent")?;
        let standin = sibling(&bin_dir, "obproxy-standin")?;

        let dir = tempfile::Builder::new().prefix("odp-bench-").tempdir()?;
        let home = dir.path().join("odp");
        std::fs::create_dir_all(&home)?;
        let backend = EchoBackend::start()
            .await
            .context("start the echo backend")?;
        let args = [
            "-n".to_string(),
            "bench".into(),
            "-c".into(),
            "bench".into(),
            "-o".into(),
            format!("standin_backend={}", backend.addr()),
        ];
        let config = dir.path().join("agent.toml");
        // Ports a client's source port can never take while a stop+start has them closed.
        let loopback = std::net::Ipv4Addr::LOCALHOST.into();
        std::fs::write(
            &config,
            format!(
                r#"[server]
listen = "127.0.0.1:0"
# The bench drives the agent over loopback TCP (READ_ONLY by default).
loopback_role = "OBPROXY_MANAGER"

[obproxy]
home = "odp"
binary = {standin:?}
args = {args:?}
listen = ["127.0.0.1:{sql}"]
rpc_listen = ["127.0.0.1:{rpc}"]
hot_upgrade_exit_timeout = "{exit}"
start_timeout = "60s"
stop_timeout = "10s"

[state]
dir = "state"
"#,
                exit = humantime::format_duration(opts.exit_timeout),
                sql = fixed_port::below_ephemeral(loopback)?,
                rpc = fixed_port::below_ephemeral(loopback)?,
            ),
        )?;

        // obproxy inherits the agent's environment, so the knob reaches every stand-in.
        let mut agent = Command::new(&agent_bin)
            .arg("--config")
            .arg(&config)
            // At least info: the timings are read from the agent's info lines.
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .env(
                "ODP_STANDIN_START_DELAY",
                humantime::format_duration(opts.start_delay).to_string(),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("start {}", agent_bin.display()))?;
        let (log, grpc) = follow_log(&mut agent)?;
        let grpc = match grpc {
            Ok(addr) => addr,
            Err(e) => {
                let _ = agent.kill();
                let _ = agent.wait();
                bail!("{e}; the agent said:\n{}", join(&log.lines()));
            }
        };
        let client = AgentClient::connect(format!("http://{grpc}")).await?;
        Ok(Self {
            dir,
            backend: Some(backend),
            agent,
            grpc,
            client,
            log,
        })
    }

    /// Keeps the directory (agent state, obproxy's output) after the testbed is gone, for a
    /// look at what went wrong; returns where it is.
    pub fn keep_files(&mut self) -> PathBuf {
        self.dir.disable_cleanup(true);
        self.dir.path().to_path_buf()
    }

    /// The agent's gRPC address.
    pub fn grpc_addr(&self) -> Option<SocketAddr> {
        Some(self.grpc)
    }

    /// The echo backend the stand-ins forward to.
    pub fn backend_addr(&self) -> Option<SocketAddr> {
        self.backend.as_ref().map(EchoBackend::addr)
    }

    pub fn client(&self) -> AgentClient<Channel> {
        self.client.clone()
    }

    /// Starts the ODP (`Start` with `wait`) and returns its SQL listener's address.
    pub async fn start_odp(&self) -> anyhow::Result<SocketAddr> {
        let mut client = self.client();
        let op = client
            .start(pb::StartRequest {
                request_id: String::new(),
                wait: true,
            })
            .await?
            .into_inner();
        if op.state() != pb::OperationState::Succeeded {
            bail!("Start failed: {}", op.error);
        }
        let status = client
            .get_status(pb::GetStatusRequest::default())
            .await?
            .into_inner();
        Ok(status
            .listeners
            .first()
            .context("no SQL listener after Start")?
            .address
            .parse()?)
    }

    /// CPU time of the agent alone (its sampler thread included).
    pub fn agent_cpu(&self) -> Duration {
        crate::proc_stat::cpu(self.agent.id())
    }

    /// CPU time of the agent and of every obproxy it ran: those it reaped count in its
    /// children's time, the running ones are added.
    pub fn cpu(&self) -> Duration {
        let running: Duration = processes_in(&self.dir.path().join("odp"))
            .into_iter()
            .map(crate::proc_stat::cpu)
            .sum();
        crate::proc_stat::cpu(self.agent.id()) + running
    }

    /// The agent's log lines stamped at or after `since`, once `done` holds for them (or
    /// after `PATIENCE`, as far as they go).
    pub async fn log_since(
        &self,
        since: SystemTime,
        done: impl Fn(&[LogLine]) -> bool,
    ) -> Vec<LogLine> {
        let wait = async {
            loop {
                // Registered before the check, so a line read in between is not missed.
                let grew = self.log.grew.notified();
                let lines: Vec<LogLine> = self
                    .log
                    .lines()
                    .iter()
                    .filter(|l| l.at >= since)
                    .cloned()
                    .collect();
                if done(&lines) {
                    return lines;
                }
                grew.await;
            }
        };
        match tokio::time::timeout(PATIENCE, wait).await {
            Ok(lines) => lines,
            Err(_) => self
                .log
                .lines()
                .iter()
                .filter(|l| l.at >= since)
                .cloned()
                .collect(),
        }
    }

    /// The last lines of the agent's log, for an error message.
    pub fn log_tail(&self, n: usize) -> String {
        let lines = self.log.lines();
        join(&lines[lines.len().saturating_sub(n)..])
    }

    /// Stops obproxy (closing the port), the agent and the backend.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        let stop = self.client.stop(pb::StopRequest {
            request_id: String::new(),
            wait: true,
        });
        let op = tokio::time::timeout(PATIENCE, stop)
            .await
            .context("Stop did not finish")??
            .into_inner();
        if op.state() != pb::OperationState::Succeeded {
            bail!("Stop failed: {}", op.error);
        }
        if let Some(backend) = self.backend.take() {
            backend.shutdown().await;
        }
        Ok(())
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        let _ = self.agent.kill();
        let _ = self.agent.wait();
        // obproxy outlives its agent by design; a benchmark that failed half-way must not
        // leave one behind.
        for pid in processes_in(&self.dir.path().join("odp")) {
            // SAFETY: kill(2) with a pid and a signal number.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    }
}

/// Where odp-bench is, and the binaries built beside it.
pub fn bin_dir() -> anyhow::Result<PathBuf> {
    Ok(std::env::current_exe()
        .context("where is odp-bench")?
        .parent()
        .context("odp-bench has no directory")?
        .to_path_buf())
}

/// `name` beside odp-bench, or an error saying how to build it.
pub fn sibling(dir: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let path = dir.join(name);
    if !path.is_file() {
        bail!(
            "{} not found: odp-bench runs the binaries built beside it (cargo build --release)",
            path.display()
        );
    }
    Ok(path)
}

type GrpcAddr = Result<SocketAddr, String>;

/// Reads the agent's stderr on a thread of its own, keeping every line, until it announces
/// its gRPC address (or exits first).
fn follow_log(agent: &mut Child) -> anyhow::Result<(Arc<AgentLog>, GrpcAddr)> {
    let stderr = agent.stderr.take().context("agent stderr")?;
    let log = Arc::new(AgentLog::default());
    let sink = log.clone();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for text in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(addr) = text.split("grpc_addr=").nth(1) {
                let addr = addr.split_whitespace().next().unwrap_or("").to_string();
                let _ = tx.send(addr.parse::<SocketAddr>().map_err(|e| e.to_string()));
            }
            let at = text
                .split_whitespace()
                .next()
                .and_then(|t| humantime::parse_rfc3339_weak(t).ok())
                .unwrap_or_else(SystemTime::now);
            sink.lines().push(LogLine { at, text });
            sink.grew.notify_waiters();
        }
    });
    let grpc = rx
        .recv_timeout(PATIENCE)
        .map_err(|_| "the agent did not start serving gRPC".to_string())
        .and_then(|r| r);
    Ok((log, grpc))
}

fn join(lines: &[LogLine]) -> String {
    lines
        .iter()
        .map(|l| l.text.as_str())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Live processes whose working directory is `dir` (obproxy runs in its home).
pub fn processes_in(dir: &Path) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd == dir))
        .collect()
}

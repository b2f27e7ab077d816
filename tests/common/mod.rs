//! Test harness: a real `odp-agent` process on loopback with the obproxy
//! stand-in as its obproxy, and a real gRPC client. Every wait is on an event
//! (a log line, an operation update, a socket), bounded by a deadline.
#![allow(dead_code)]

pub mod admin_sql;
pub mod balanced;
pub mod browser;
pub mod cluster;
pub mod console;
pub mod e2e;
mod echo;
pub mod haproxy;
pub mod local;
mod log;
pub mod mariadb;
pub mod metadb;
pub mod netns;
pub mod pki;
pub mod ports;
pub mod standin;
pub mod sysbench;
pub mod tmpfs;
pub mod txn_load;
pub mod upgrade_cluster;
pub mod upgrade_package;

// Not every test binary uses each of them.
#[allow(unused_imports)]
pub use echo::{Load, LoadReport, connect, echo, round_trip};
pub use log::Log;

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, mpsc},
    time::Duration,
};

use odp_agent::proto::agent::{self as pb, agent_client::AgentClient};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tonic::transport::Channel;

pub const AGENT: &str = env!("CARGO_BIN_EXE_odp-agent");
pub const STANDIN: &str = env!("CARGO_BIN_EXE_obproxy-standin");

/// Upper bound for anything a test waits on.
pub const PATIENCE: Duration = Duration::from_secs(30);

#[derive(Clone)]
pub struct Options {
    pub exit_timeout: &'static str,
    pub start_timeout: &'static str,
    pub stop_timeout: &'static str,
    /// Extra `args` for obproxy, e.g. `-o standin_backend=...`.
    pub args: Vec<String>,
    /// Serve `/metrics` on a free loopback port (see [`Agent::metrics_addr`]).
    pub metrics: bool,
    /// More keys for the `[server]` section, e.g. `max_message_bytes = 4096`.
    pub server: String,
    /// More sections appended to the configuration, e.g. `[tls]` and
    /// `[[auth.certificates]]` (see [`pki::Pki::agent_toml`]).
    pub more: String,
    /// `[obproxy] listen` and `rpc_listen` as TOML arrays (default: one
    /// loopback address on port 0 each).
    pub listen: &'static str,
    pub rpc_listen: &'static str,
    /// `[server] listen` (default `127.0.0.1:0`).
    pub grpc_listen: Option<String>,
    /// `[state] dir` (default `state` in the agent's directory), e.g. on a
    /// small file system a test fills.
    pub state_dir: Option<PathBuf>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            exit_timeout: "10s",
            start_timeout: "10s",
            stop_timeout: "5s",
            args: vec![],
            metrics: false,
            server: String::new(),
            more: String::new(),
            listen: r#"["127.0.0.1:0"]"#,
            rpc_listen: r#"["127.0.0.1:0"]"#,
            grpc_listen: None,
            state_dir: None,
        }
    }
}

/// One agent with its own directory tree, gRPC port and SQL port.
pub struct Agent {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    /// `[state] dir`.
    pub state: PathBuf,
    pub grpc: SocketAddr,
    pub child: Child,
    pub log: Arc<Log>,
    /// The SQL and RPC ports, held for the agent's life (see
    /// [`ports::hold_loopback_port`]).
    _ports: Vec<socket2::Socket>,
}

impl Agent {
    pub async fn start() -> Self {
        Self::start_with(Options::default()).await
    }

    pub async fn start_with(opts: Options) -> Self {
        Self::start_customized(opts, agent_command).await
    }

    /// As [`Agent::start_with`], with the command that runs the agent made by
    /// `command` from the config path (an environment, a wrapper, flags).
    pub async fn start_customized(opts: Options, command: impl FnOnce(&Path) -> Command) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("odp");
        std::fs::create_dir_all(home.join("bin")).unwrap();
        write_wrapper(&home.join("bin/obproxy"), &[]);
        let args: Vec<String> = ["-n", "testapp", "-c", "testcluster"]
            .iter()
            .map(|s| s.to_string())
            .chain(opts.args.iter().cloned())
            .collect();
        let config = dir.path().join("agent.toml");
        let state = opts
            .state_dir
            .clone()
            .unwrap_or_else(|| dir.path().join("state"));
        let grpc_listen = opts.grpc_listen.as_deref().unwrap_or("127.0.0.1:0");
        let (listen, sql_port) = ports::hold_loopback_port(opts.listen);
        let (rpc_listen, rpc_port) = ports::hold_loopback_port(opts.rpc_listen);
        std::fs::write(
            &config,
            format!(
                r#"[server]
listen = "{grpc_listen}"
{}
{}

[obproxy]
home = "odp"
binary = "bin/obproxy"
args = {args:?}
listen = {listen}
rpc_listen = {rpc_listen}
hot_upgrade_exit_timeout = "{}"
start_timeout = "{}"
stop_timeout = "{}"

[state]
dir = {state:?}
{}
{}"#,
                opts.server,
                open_loopback(&format!("{}{}", opts.server, opts.more)),
                opts.exit_timeout,
                opts.start_timeout,
                opts.stop_timeout,
                if opts.metrics {
                    "\n[metrics]\nlisten = \"127.0.0.1:0\"\n"
                } else {
                    ""
                },
                opts.more,
                listen = listen,
                rpc_listen = rpc_listen,
            ),
        )
        .unwrap();
        let (child, grpc, log) = spawn_logged(command(&config), "agent");
        Self {
            dir,
            config,
            state,
            grpc,
            child,
            log,
            _ports: sql_port.into_iter().chain(rpc_port).collect(),
        }
    }

    pub fn home(&self) -> PathBuf {
        self.dir.path().join("odp")
    }

    /// Makes every obproxy started from now on behave per `env` (stand-in
    /// knobs such as `ODP_STANDIN_START_DELAY`).
    pub fn set_standin_env(&self, env: &[(&str, &str)]) {
        write_env(&self.home().join("bin/obproxy"), env);
    }

    /// Another obproxy binary under home (for hot upgrades), with its knobs.
    pub fn add_binary(&self, name: &str, env: &[(&str, &str)]) -> String {
        let path = self.home().join("bin").join(name);
        write_wrapper(&path, env);
        format!("bin/{name}")
    }

    pub async fn client(&self) -> AgentClient<Channel> {
        AgentClient::connect(format!("http://{}", self.grpc))
            .await
            .unwrap()
    }

    pub async fn status(&self) -> pb::ProxyStatus {
        self.client()
            .await
            .get_status(pb::GetStatusRequest::default())
            .await
            .unwrap()
            .into_inner()
    }

    /// Start with `wait: true`: the finished operation, whatever its outcome.
    pub async fn try_start(&self) -> pb::Operation {
        self.client()
            .await
            .start(pb::StartRequest {
                request_id: String::new(),
                wait: true,
            })
            .await
            .unwrap()
            .into_inner()
    }

    /// Start, which must succeed.
    pub async fn start_proxy(&self) -> pb::Operation {
        let op = self.try_start().await;
        assert_eq!(
            op.state(),
            pb::OperationState::Succeeded,
            "start failed: {}\n{}\nobproxy output:\n{}",
            op.error,
            self.logs(),
            self.obproxy_output()
        );
        op
    }

    pub async fn stop_proxy(&self) -> pb::Operation {
        self.client()
            .await
            .stop(pb::StopRequest {
                request_id: String::new(),
                wait: true,
            })
            .await
            .unwrap()
            .into_inner()
    }

    pub async fn restart(
        &self,
        mode: pb::RestartMode,
        wait: bool,
    ) -> Result<pb::Operation, tonic::Status> {
        self.restart_with(pb::RestartRequest {
            mode: mode as i32,
            wait,
            ..Default::default()
        })
        .await
    }

    pub async fn restart_with(
        &self,
        request: pb::RestartRequest,
    ) -> Result<pb::Operation, tonic::Status> {
        self.client()
            .await
            .restart(request)
            .await
            .map(|r| r.into_inner())
    }

    /// The SQL listener address (after the first start).
    pub async fn sql_addr(&self) -> SocketAddr {
        self.status().await.listeners[0].address.parse().unwrap()
    }

    /// Follows an operation until it is finished.
    pub async fn wait_op(&self, id: &str) -> pb::Operation {
        self.watch_op_until(id, |op| op.state() != pb::OperationState::Running)
            .await
    }

    /// Follows an operation's updates until `until` holds (or it finishes).
    pub async fn watch_op_until(
        &self,
        id: &str,
        until: impl Fn(&pb::Operation) -> bool,
    ) -> pb::Operation {
        let mut stream = self
            .client()
            .await
            .watch_operation(pb::WatchOperationRequest { id: id.to_string() })
            .await
            .unwrap()
            .into_inner();
        let mut last = None;
        let watch = async {
            while let Some(op) = stream.message().await.unwrap() {
                let done = until(&op) || op.state() != pb::OperationState::Running;
                last = Some(op);
                if done {
                    break;
                }
            }
        };
        tokio::time::timeout(PATIENCE, watch)
            .await
            .expect("operation did not get there in time");
        last.expect("the watch stream ended without an update")
    }

    /// The audit log (`<state>/audit.log`), one JSON value per line.
    pub fn audit(&self) -> Vec<serde_json::Value> {
        audit_lines(&self.state.join("audit.log"))
    }

    /// A client over TLS to this agent, as `tls` says (CA, certificate).
    pub async fn tls_client(
        &self,
        tls: tonic::transport::ClientTlsConfig,
    ) -> Result<AgentClient<Channel>, tonic::transport::Error> {
        Ok(AgentClient::new(tls_channel(self.grpc, tls).await?))
    }

    /// What obproxy (the stand-in) printed, for failure messages.
    pub fn obproxy_output(&self) -> String {
        std::fs::read_to_string(self.state.join("obproxy.out")).unwrap_or_default()
    }

    pub fn logs(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// The metrics endpoint's address, from the agent's startup log (the
    /// line comes before the one [`spawn_logged`] waits for).
    pub fn metrics_addr(&self) -> SocketAddr {
        let log = self.log.lock().unwrap();
        let addr = log.iter().find_map(|line| log_field(line, "metrics_addr"));
        addr.unwrap_or_else(|| panic!("no metrics_addr in the log:\n{}", log.join("\n")))
            .parse()
            .unwrap()
    }

    /// SIGTERM to the agent and its exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        signal(self.child.id(), libc::SIGTERM);
        wait_child(&mut self.child)
    }

    /// kill -9 the agent (obproxy keeps running), then start it again on
    /// the same configuration and state directory.
    pub fn kill9_and_restart(&mut self) {
        self.kill9();
        self.restart_agent_with(agent_command);
    }

    /// kill -9 the agent; obproxy keeps running.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the agent again on the same configuration and state directory,
    /// with the command `command` makes from the config path.
    pub fn restart_agent_with(&mut self, command: impl FnOnce(&Path) -> Command) {
        let (child, grpc, log) = spawn_logged(command(&self.config), "agent");
        self.child = child;
        self.grpc = grpc;
        self.log = log;
    }

    /// Waits until the status satisfies `until`, asking at short intervals
    /// (the agent has no status stream), bounded by PATIENCE.
    pub async fn wait_status(&self, until: impl Fn(&pb::ProxyStatus) -> bool) -> pb::ProxyStatus {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        loop {
            tick.tick().await;
            let status = self.status().await;
            if until(&status) {
                return status;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "status never got there: {status:?}\n{}",
                self.logs()
            );
        }
    }

    /// Every process (stand-in) whose working directory is this agent's home.
    /// The obproxy processes in the home, without the agent's own short
    /// `obproxy -V` runs (it asks a binary it has not seen for its version,
    /// e.g. while taking over an obproxy it did not start), before or after
    /// their exec.
    pub fn obproxy_pids(&self) -> Vec<u32> {
        processes_in(&self.home())
            .into_iter()
            .filter(|pid| {
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                let mut args = cmdline.split(|b| *b == 0);
                let forked_agent = args.next().is_some_and(|a| a.ends_with(b"odp-agent"));
                !forked_agent && !args.any(|arg| arg == b"-V")
            })
            .collect()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // obproxy outlives the agent by design; tests clean up after it.
        for pid in self.obproxy_pids() {
            signal(pid, libc::SIGKILL);
        }
    }
}

/// Starts `odp-agent --config path` and waits for its "serving" log line.
pub fn spawn_agent(config: &Path) -> (Child, SocketAddr, Arc<Log>) {
    spawn_logged(agent_command(config), "agent")
}

/// `odp-agent --config path` at log level info.
pub fn agent_command(config: &Path) -> Command {
    let mut command = Command::new(AGENT);
    command.arg("--config").arg(config).env("RUST_LOG", "info");
    command
}

/// Runs a daemon's `command` with its stderr collected line by line, and
/// waits for the line that carries its `grpc_addr`.
pub fn spawn_logged(mut command: Command, what: &str) -> (Child, SocketAddr, Arc<Log>) {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = Arc::new(Log::default());
    let (tx, rx) = mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    let sink = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let addr = log_field(&line, "grpc_addr");
            // Logged before it is announced: whoever wakes up on the
            // address finds every earlier line (metrics_addr) in the log.
            sink.push(line);
            if let Some(addr) = addr {
                let _ = tx.send(addr);
            }
        }
    });
    let addr = rx.recv_timeout(PATIENCE).unwrap_or_else(|_| {
        panic!(
            "{what} did not start serving:\n{}",
            log.lock().unwrap().join("\n")
        )
    });
    (child, addr.parse().unwrap(), log)
}

/// A TLS connection to `addr` (https), as `tls` says.
pub async fn tls_channel(
    addr: SocketAddr,
    tls: tonic::transport::ClientTlsConfig,
) -> Result<Channel, tonic::transport::Error> {
    tonic::transport::Endpoint::from_shared(format!("https://{addr}"))?
        .tls_config(tls)?
        .connect_timeout(PATIENCE)
        .connect()
        .await
}

/// An audit log, one JSON value per line (empty if there is none yet).
pub fn audit_lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// A field of a log line, text (`key=value`) or JSON (`"key":"value"`).
pub fn log_field(line: &str, key: &str) -> Option<String> {
    if let Some(rest) = line.split(&format!("{key}=")).nth(1) {
        return rest.split_whitespace().next().map(str::to_string);
    }
    let rest = line.split(&format!("\"{key}\":\"")).nth(1)?;
    rest.split('"').next().map(str::to_string)
}

/// `GET path` over plain HTTP/1.1: the status code and the body.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        std::io::Result::Ok(response)
    };
    let response = tokio::time::timeout(PATIENCE, exchange)
        .await
        .expect("no HTTP response in time")
        .expect("HTTP exchange failed");
    let response = String::from_utf8(response).expect("a text response");
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("a status line");
    // A small text body is sent whole or chunked; join the chunks.
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        unchunk(body)
    } else {
        body.to_string()
    };
    (code, body)
}

fn unchunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).expect("a chunk size");
        if size == 0 {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

/// The value of one sample in a Prometheus text body, by its exact name and
/// labels as written (`odp_proxy_up`, `odp_proxy_state{state="running"}`).
pub fn sample(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Without credentials in `more`, test callers on loopback operate (the
/// daemons' default is READ_ONLY there; the security tests prove that).
pub fn open_loopback(more: &str) -> &'static str {
    if more.contains("[tls]") || more.contains("[[auth.tokens]]") || more.contains("loopback_role")
    {
        ""
    } else {
        "loopback_role = \"OBPROXY_MANAGER\""
    }
}

fn write_wrapper(path: &Path, env: &[(&str, &str)]) {
    // The wrapper sources `<binary>.env` at every start, so a test can change
    // how the next obproxy behaves; `exec` keeps the pid and the parent. It
    // runs a link to the stand-in beside it: the agent adopts only an
    // obproxy whose executable lies in its home or upgrade directory. The
    // env file is named in full: the agent runs the file it opened, so $0 is
    // a /proc/self/fd name.
    let standin = path.with_file_name(".obproxy-standin");
    if !standin.exists() && std::fs::hard_link(STANDIN, &standin).is_err() {
        std::fs::copy(STANDIN, &standin).unwrap();
    }
    std::fs::write(
        path,
        format!(
            "#!/bin/sh\n[ -f \"{path}.env\" ] && . \"{path}.env\"\nexec {standin} \"$@\"\n",
            path = path.display(),
            standin = standin.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    write_env(path, env);
}

fn write_env(binary: &Path, env: &[(&str, &str)]) {
    let text: String = env
        .iter()
        .map(|(k, v)| format!("export {k}='{v}'\n"))
        .collect();
    std::fs::write(format!("{}.env", binary.display()), text).unwrap();
}

/// Fails the test, saying why, where it cannot run: mounting file systems
/// and making network namespaces need root (CI has it). Built with
/// `ODP_TEST_SKIP_ROOT=1`, those tests are ignored instead, with that reason.
pub fn require_root(what: &str) {
    assert!(
        nix::unistd::geteuid().is_root(),
        "{what} needs root: run the tests as root, or build them with ODP_TEST_SKIP_ROOT=1 to have them ignored"
    );
}

pub fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) with a pid and a signal number.
    unsafe { libc::kill(pid as i32, sig) };
}

pub fn alive(pid: u32) -> bool {
    // A zombie still has /proc/<pid>; its state letter is Z.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit_once(')')
                .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

/// Waits for the child to exit: poll(2) on its pidfd, which turns readable
/// when the process ends.
pub fn wait_child(child: &mut Child) -> std::process::ExitStatus {
    // SAFETY: pidfd_open(pid, 0) returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, child.id() as i32, 0) } as i32;
    if fd >= 0 {
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd; then we close the fd we own.
        let ready = unsafe { libc::poll(&mut pfd, 1, PATIENCE.as_millis() as i32) };
        unsafe { libc::close(fd) };
        assert!(ready > 0, "process {} did not exit", child.id());
    }
    child.wait().unwrap()
}

pub fn processes_in(dir: &Path) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd == dir))
        .filter(|pid| alive(*pid))
        .collect()
}

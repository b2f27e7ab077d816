//! The agent tells systemd the truth: READY=1 only once its gRPC port
//! answers, STOPPING=1 on SIGTERM, and WATCHDOG=1 again and again while the
//! unit has a watchdog. The test plays systemd: a unix datagram socket in a
//! temporary directory, given to the agent as `$NOTIFY_SOCKET`.
use crate::common;

use std::{
    os::unix::net::UnixDatagram,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use common::{
    AGENT, Agent, Options, PATIENCE, cluster::COORDINATOR, signal, spawn_logged, wait_child,
};
use odp_agent::proto::agent as pb;

/// What systemd would listen on.
struct NotifySocket {
    _dir: tempfile::TempDir,
    path: PathBuf,
    socket: UnixDatagram,
}

impl NotifySocket {
    fn bind() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        Self {
            _dir: dir,
            path,
            socket,
        }
    }

    /// The next message, waited for up to [`PATIENCE`].
    fn next(&self) -> String {
        self.socket.set_read_timeout(Some(PATIENCE)).unwrap();
        let mut buf = [0u8; 4096];
        let n = self
            .socket
            .recv(&mut buf)
            .expect("no sd_notify message in time");
        String::from_utf8_lossy(&buf[..n]).trim_end().to_string()
    }

    /// Fills the socket's queue (`net.unix.max_dgram_qlen`) with messages
    /// of our own: until the test reads them, a daemon's next message cannot
    /// get in and its blocking send waits. Returns how many were queued.
    fn fill(&self) -> usize {
        let sender = UnixDatagram::unbound().unwrap();
        sender.set_nonblocking(true).unwrap();
        let mut queued = 0;
        loop {
            match sender.send_to(b"FILLER=1", &self.path) {
                Ok(_) => queued += 1,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return queued,
                Err(e) => panic!("cannot fill the notify socket: {e}"),
            }
        }
    }

    /// Messages until one equals `want` (returned with those before it).
    fn until(&self, want: &str) -> Vec<String> {
        let mut seen = Vec::new();
        loop {
            let message = self.next();
            let done = message == want;
            seen.push(message);
            if done {
                return seen;
            }
        }
    }
}

fn agent_under(notify: &Path, watchdog_usec: Option<&str>) -> impl FnOnce(&Path) -> Command {
    under_systemd(AGENT, notify, watchdog_usec)
}

/// `daemon --config CONFIG` with systemd's environment.
fn under_systemd(
    daemon: &'static str,
    notify: &Path,
    watchdog_usec: Option<&str>,
) -> impl FnOnce(&Path) -> Command {
    let notify = notify.to_path_buf();
    let watchdog_usec = watchdog_usec.map(str::to_string);
    move |config| {
        // As systemd does: WATCHDOG_PID is the daemon's own pid, which only
        // the process itself knows before exec.
        let mut command = Command::new("sh");
        command
            .args(["-c", r#"export WATCHDOG_PID=$$; exec "$0" "$@""#, daemon])
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", "info")
            .env("NOTIFY_SOCKET", &notify);
        if let Some(usec) = watchdog_usec {
            command.env("WATCHDOG_USEC", usec);
        }
        command
    }
}

fn environ(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/environ"))
        .unwrap()
        .split(|b| *b == 0)
        .map(|v| String::from_utf8_lossy(v).to_string())
        .collect()
}

#[tokio::test]
async fn ready_comes_only_after_the_grpc_port_is_bound_and_sigterm_says_stopping() {
    let notify = NotifySocket::bind();
    // READY=1 cannot get in until the test reads: had the agent sent it
    // before binding its gRPC port, it would wait there, and never bind nor
    // log the address the harness waits for.
    let queued = notify.fill();
    let mut agent =
        Agent::start_customized(Options::default(), agent_under(&notify.path, None)).await;
    std::net::TcpStream::connect(agent.grpc).expect("bound while READY=1 waits");
    for _ in 0..queued {
        assert_eq!(notify.next(), "FILLER=1");
    }
    assert_eq!(notify.next(), "READY=1", "{}", agent.logs());
    // Ready means serving: the very first call is answered.
    let status = agent.status().await;
    assert_eq!(status.state(), pb::ProxyState::Stopped);

    // obproxy is not the unit's main process: systemd's variables stay
    // with the agent.
    let pid = agent.start_proxy().await.pid;
    let env = environ(pid);
    for var in ["NOTIFY_SOCKET=", "WATCHDOG_PID=", "WATCHDOG_USEC="] {
        assert!(
            !env.iter().any(|e| e.starts_with(var)),
            "obproxy inherited {var}"
        );
    }

    signal(agent.child.id(), libc::SIGTERM);
    let before_stopping = notify.until("STOPPING=1");
    assert!(
        !before_stopping.iter().any(|m| m == "WATCHDOG=1"),
        "watchdog pings without WATCHDOG_USEC: {before_stopping:?}"
    );
    assert!(wait_child(&mut agent.child).success(), "{}", agent.logs());
}

#[tokio::test]
async fn the_watchdog_is_fed_at_half_its_interval() {
    const WATCHDOG: Duration = Duration::from_millis(200);
    let notify = NotifySocket::bind();
    let mut agent = Agent::start_customized(
        Options::default(),
        agent_under(&notify.path, Some(&WATCHDOG.as_micros().to_string())),
    )
    .await;
    assert_eq!(notify.next(), "READY=1", "{}", agent.logs());
    let mut pings = Vec::new();
    while pings.len() < 6 {
        assert_eq!(notify.next(), "WATCHDOG=1", "{}", agent.logs());
        pings.push(Instant::now());
    }
    // Each ping waits for its tick, half the interval (100 ms): never
    // faster, and not at the whole interval. The first ping follows READY at
    // once, so the gaps are taken from the second ping on; their median
    // shrugs off a reader woken late once.
    let mut gaps: Vec<Duration> = pings[1..].windows(2).map(|w| w[1] - w[0]).collect();
    gaps.sort();
    let median = gaps[gaps.len() / 2];
    assert!(
        median >= Duration::from_millis(70) && median <= Duration::from_millis(160),
        "pings {gaps:?} apart, not half of {WATCHDOG:?}"
    );
    let spread = pings[5] - pings[1];
    assert!(
        spread >= (WATCHDOG / 2) * 4 - Duration::from_millis(100),
        "4 intervals in {spread:?}"
    );
    signal(agent.child.id(), libc::SIGTERM);
    notify.until("STOPPING=1");
    assert!(wait_child(&mut agent.child).success(), "{}", agent.logs());
}

#[tokio::test]
async fn the_coordinator_is_ready_fed_and_stopping_too() {
    let notify = NotifySocket::bind();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("coordinator.toml");
    std::fs::write(
        &config,
        "[server]\nlisten = \"127.0.0.1:0\"\n[store]\npath = \"tasks.db\"\n",
    )
    .unwrap();
    let command = under_systemd(COORDINATOR, &notify.path, Some("200000"))(&config);
    let (mut child, _, log) = spawn_logged(command, "coordinator");
    let logs = || log.lock().unwrap().join("\n");
    assert_eq!(notify.next(), "READY=1", "{}", logs());
    for _ in 0..3 {
        assert_eq!(notify.next(), "WATCHDOG=1", "{}", logs());
    }
    signal(child.id(), libc::SIGTERM);
    notify.until("STOPPING=1");
    assert!(wait_child(&mut child).success(), "{}", logs());
}

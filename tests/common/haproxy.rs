//! A real HAProxy (Debian's `haproxy`) on loopback in front of the ODPs: `mode tcp`, one
//! backend `odp` with a server per ODP and no health checks (the coordinator is what moves
//! them), its runtime API on a Unix stats socket and a TCP one, both `level admin`. Killed
//! on drop.
//!
//! Needs `haproxy` (Debian: `apt-get install -y haproxy`); without it the tests that need
//! it fail, saying so.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{Ipv4Addr, SocketAddr},
    os::unix::net::UnixStream,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use super::{PATIENCE, mariadb::find, ports::reserve_port};

pub struct HaProxy {
    child: Child,
    pub dir: tempfile::TempDir,
    /// Where clients connect.
    pub frontend: SocketAddr,
    /// The runtime API, `stats socket <path> level admin`.
    pub socket: PathBuf,
    /// The same, over TCP.
    pub tcp_socket: SocketAddr,
    /// Its stderr so far.
    pub log: Arc<Mutex<Vec<String>>>,
    _ports: Vec<socket2::Socket>,
}

/// A server as `show servers state` and `show stat` report it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Server {
    pub name: String,
    /// ready, drain or maint (from `srv_admin_state`).
    pub state: &'static str,
    pub sessions: u64,
}

impl HaProxy {
    /// `servers`: each server's name and the loopback port of its ODP.
    pub fn start(servers: &[(String, u16)]) -> HaProxy {
        let Some(program) = find("haproxy") else {
            panic!("haproxy is not installed: install it with `apt-get install -y haproxy`");
        };
        let dir = tempfile::tempdir().unwrap();
        // HAProxy binds with SO_REUSEADDR, so it can bind over the reservations.
        let (frontend_port, frontend) = reserve_port(Ipv4Addr::LOCALHOST.into());
        let (stats_port, stats) = reserve_port(Ipv4Addr::LOCALHOST.into());
        let socket = dir.path().join("admin.sock");
        let lines: Vec<String> = servers
            .iter()
            .map(|(name, port)| format!("  server {name} 127.0.0.1:{port}\n"))
            .collect();
        let config = dir.path().join("haproxy.cfg");
        std::fs::write(
            &config,
            format!(
                "global\n  nbthread 1\n  \
                 stats socket {} mode 600 level admin\n  \
                 stats socket ipv4@127.0.0.1:{stats} level admin\n\
                 defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 60s\n  \
                 timeout server 60s\n\
                 frontend fe\n  bind 127.0.0.1:{frontend}\n  default_backend odp\n\
                 backend odp\n  balance roundrobin\n{}",
                socket.display(),
                lines.concat()
            ),
        )
        .unwrap();
        let mut child = Command::new(program)
            .arg("-f")
            .arg(&config)
            .arg("-db")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        let haproxy = HaProxy {
            child,
            dir,
            frontend: SocketAddr::from((Ipv4Addr::LOCALHOST, frontend)),
            socket,
            tcp_socket: SocketAddr::from((Ipv4Addr::LOCALHOST, stats)),
            log,
            _ports: vec![frontend_port, stats_port],
        };
        haproxy.wait_until("its runtime API answers", || {
            haproxy
                .try_ask("show info")
                .is_ok_and(|a| a.contains("Pid:"))
        });
        haproxy
    }

    /// Asks `until` at short intervals, up to [`PATIENCE`]: HAProxy's
    /// state (its runtime API up, a server's state and sessions) is only
    /// known by asking its stats socket, which has no push, so this polls.
    pub fn wait_until(&self, what: &str, until: impl Fn() -> bool) {
        let deadline = Instant::now() + PATIENCE;
        while !until() {
            assert!(
                Instant::now() < deadline,
                "HAProxy: no {what} within {PATIENCE:?}:\n{}",
                self.log.lock().unwrap().join("\n")
            );
            // HAProxy's server states are read from its admin socket and
            // announce no change: this is the event's poll, not a fixed wait.
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn try_ask(&self, command: &str) -> std::io::Result<String> {
        let mut stream = UnixStream::connect(&self.socket)?;
        stream.write_all(format!("{command}\n").as_bytes())?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer)?;
        Ok(answer)
    }

    /// One runtime API command, its answer.
    pub fn ask(&self, command: &str) -> String {
        self.try_ask(command).unwrap()
    }

    /// Every server of the backend, read here independently of the coordinator's reading.
    pub fn servers(&self) -> Vec<Server> {
        let states = self.ask("show servers state odp");
        let stat = self.ask("show stat odp 4 -1");
        let column = |header: &str, sep: char, name: &str| {
            header
                .trim_start_matches("# ")
                .split(sep)
                .position(|c| c == name)
                .unwrap_or_else(|| panic!("no {name} in {header}"))
        };
        let header = states.lines().find(|l| l.starts_with("# ")).unwrap();
        let (name_at, admin_at) = (
            column(header, ' ', "srv_name"),
            column(header, ' ', "srv_admin_state"),
        );
        let stat_header = stat.lines().find(|l| l.starts_with("# ")).unwrap();
        let (sv_at, scur_at) = (
            column(stat_header, ',', "svname"),
            column(stat_header, ',', "scur"),
        );
        states
            .lines()
            .filter(|l| !l.starts_with('#') && l.split(' ').count() > admin_at)
            .map(|l| {
                let cells: Vec<&str> = l.split(' ').collect();
                let name = cells[name_at].to_string();
                let admin: u32 = cells[admin_at].parse().unwrap();
                let sessions = stat
                    .lines()
                    .map(|s| s.split(',').collect::<Vec<_>>())
                    .find(|s| s.get(sv_at) == Some(&name.as_str()))
                    .map(|s| s[scur_at].parse().unwrap())
                    .unwrap();
                let state = if admin & 0x27 != 0 {
                    "maint"
                } else if admin & 0x18 != 0 {
                    "drain"
                } else {
                    "ready"
                };
                Server {
                    name,
                    state,
                    sessions,
                }
            })
            .collect()
    }

    /// Each server's state, in the order they were given.
    pub fn states(&self) -> Vec<&'static str> {
        self.servers().iter().map(|s| s.state).collect()
    }

    /// kill -9: the balancer is gone (its socket files stay).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for HaProxy {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `count` loopback ports reserved for ODPs the agents will bind (SO_REUSEADDR), and each
/// agent's `[obproxy] listen` for them.
pub fn odp_ports(count: usize) -> (Vec<socket2::Socket>, Vec<u16>) {
    (0..count)
        .map(|_| reserve_port(Ipv4Addr::LOCALHOST.into()))
        .unzip()
}

/// `listen = [...]` of an agent's `[obproxy]` for one fixed port: the ODP keeps its port
/// across Stop All and Start All, as HAProxy's server line needs.
pub fn listen_on(port: u16) -> &'static str {
    Box::leak(format!("[\"127.0.0.1:{port}\"]").into_boxed_str())
}

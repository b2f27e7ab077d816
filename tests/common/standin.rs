//! Running the stand-in directly, without an agent: listeners handed over the way obproxy inherits them (close-on-exec cleared in the child), a shell as its parent that reports every SIGUSR1/SIGUSR2 it receives and how the stand-in ended, optionally as pid 1 of a new pid namespace, and every line as it comes.
//!
//! The shell makes "no signal was sent" a fact rather than a timeout: a signal sent before
//! the stand-in exits is pending on the shell before its `wait` returns, and the shell runs
//! its trap before the next command, so `parent-got` lines always precede `parent-waited`.

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use super::{Log, PATIENCE, STANDIN, processes_in, signal};

/// The parent script: `$@` is the stand-in's command line.
const PARENT: &str = r#"
trap 'echo "parent-got SIGUSR1" >&2' USR1
trap 'echo "parent-got SIGUSR2" >&2' USR2
"$@" &
child=$!
echo "parent-child $child" >&2
wait "$child"; status=$?
# Above 128 is either the child's death by a signal or a trap interrupting the wait (even
# when the child exited at that same moment). A second wait tells them apart: the shell
# keeps an ended child's status, so it answers the same again for a real death, and the
# child's own status (at once, or when it ends) after an interruption.
while [ "$status" -gt 128 ]; do
  wait "$child"; again=$?
  [ "$again" = "$status" ] && break
  status=$again
done
echo "parent-waited $status" >&2
"#;

/// How to start one stand-in.
pub struct Builder {
    dir: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    keep: Vec<RawFd>,
    pid1: bool,
}

impl Builder {
    /// A stand-in whose working directory (its layout prefix) is `dir`.
    pub fn new(dir: &Path) -> Self {
        Builder {
            dir: dir.to_path_buf(),
            args: Vec::new(),
            env: Vec::new(),
            keep: Vec::new(),
            pid1: false,
        }
    }

    pub fn args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.env.push((name.into(), value.into()));
        self
    }

    /// Hands `listener` over as `variable`, as obproxy's parent does: the fd number in the
    /// environment and its close-on-exec flag cleared in the child.
    pub fn inherit(mut self, variable: &str, listener: &TcpListener) -> Self {
        let fd = listener.as_raw_fd();
        self.keep.push(fd);
        self.env(variable, &fd.to_string())
    }

    /// The shell parent runs as pid 1 of a new pid namespace (`unshare --pid --fork`).
    pub fn parent_is_pid1(mut self) -> Self {
        self.pid1 = true;
        self
    }

    pub fn spawn(self) -> Standin {
        let mut command = if self.pid1 {
            let mut c = Command::new("unshare");
            c.args(["--pid", "--fork", "--kill-child"]);
            // A new pid namespace needs CAP_SYS_ADMIN: without root, in a user namespace.
            if !nix::unistd::geteuid().is_root() {
                c.arg("--map-root-user");
            }
            c.args(["sh", "-c", PARENT, "sh", STANDIN]);
            c
        } else {
            let mut c = Command::new("sh");
            c.args(["-c", PARENT, "sh", STANDIN]);
            c
        };
        command
            .args(&self.args)
            .current_dir(&self.dir)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let keep = self.keep.clone();
        // SAFETY: only fcntl between fork and exec.
        unsafe {
            command.pre_exec(move || {
                for fd in &keep {
                    if libc::fcntl(*fd, libc::F_SETFD, 0) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let mut parent = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run the stand-in's parent shell: {e}"));
        let log = Arc::new(Log::default());
        let sink = log.clone();
        let stderr = parent.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("{line}");
                sink.push(line);
            }
        });
        let mut standin = Standin {
            parent,
            pid: 0,
            dir: self.dir,
            log,
        };
        standin.pid = if self.pid1 {
            // The shell prints the pid its namespace gives; find it from here by its cwd.
            standin.wait_event("started", 1);
            *processes_in(&standin.dir)
                .iter()
                .find(|pid| {
                    std::fs::read_link(format!("/proc/{pid}/exe"))
                        .is_ok_and(|e| e.ends_with("obproxy-standin"))
                })
                .expect("the stand-in's pid")
        } else {
            let line = standin.log.wait_for(|l| l.starts_with("parent-child "));
            line["parent-child ".len()..].trim().parse().unwrap()
        };
        standin
    }
}

/// A running (or ended) stand-in under its shell parent.
pub struct Standin {
    parent: Child,
    /// The stand-in's pid as this process sees it.
    pub pid: u32,
    dir: PathBuf,
    pub log: Arc<Log>,
}

impl Standin {
    /// The `n`-th (from 1) line of `event`, once it has come.
    pub fn wait_event(&self, event: &str, n: usize) -> String {
        let prefix = format!("obproxy-standin: {event} ");
        let lines = self
            .log
            .wait_until(|lines| lines.iter().filter(|l| l.starts_with(&prefix)).count() >= n);
        lines
            .into_iter()
            .filter(|l| l.starts_with(&prefix))
            .nth(n - 1)
            .expect("the line waited for")
    }

    /// Every line of `event` so far.
    pub fn events(&self, event: &str) -> Vec<String> {
        let prefix = format!("obproxy-standin: {event} ");
        self.lines()
            .into_iter()
            .filter(|l| l.starts_with(&prefix))
            .collect()
    }

    pub fn lines(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    pub fn signal(&self, sig: i32) {
        signal(self.pid, sig);
    }

    /// Waits for the stand-in to end: its wait status as the shell reports it (the exit
    /// code, or 128 + the signal that killed it), and the signals the shell received first.
    pub fn wait_end(&mut self) -> End {
        let line = self.log.wait_for(|l| l.starts_with("parent-waited "));
        let status = line["parent-waited ".len()..].trim().parse().unwrap();
        let lines = self.lines();
        let received = lines
            .iter()
            .take_while(|l| !l.starts_with("parent-waited "))
            .filter_map(|l| l.strip_prefix("parent-got "))
            .map(str::to_owned)
            .collect();
        let _ = self.parent.wait();
        End { status, received }
    }

    /// The signals the parent shell received so far.
    pub fn parent_got(&self) -> Vec<String> {
        self.lines()
            .iter()
            .filter_map(|l| l.strip_prefix("parent-got "))
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for Standin {
    fn drop(&mut self) {
        for pid in processes_in(&self.dir) {
            signal(pid, libc::SIGKILL);
        }
        let _ = self.parent.kill();
        let _ = self.parent.wait();
    }
}

#[derive(Debug)]
pub struct End {
    pub status: i32,
    pub received: Vec<String>,
}

/// A listener on loopback (IPv4 or IPv6) on a free port, as a supervisor would hold it.
pub fn listener(ipv6: bool) -> TcpListener {
    let addr = if ipv6 { "[::1]:0" } else { "127.0.0.1:0" };
    TcpListener::bind(addr).unwrap_or_else(|e| panic!("cannot listen on {addr}: {e}"))
}

/// A loopback port nobody listens on, for a process that binds it itself: reserved (see
/// [`super::ports::reserve_port`]) for as long as this test process runs, so no other test
/// can take it between here and that bind.
pub fn free_port() -> u16 {
    static HELD: std::sync::Mutex<Vec<socket2::Socket>> = std::sync::Mutex::new(Vec::new());
    let (socket, port) = super::ports::reserve_port(std::net::Ipv4Addr::LOCALHOST.into());
    HELD.lock().unwrap_or_else(|e| e.into_inner()).push(socket);
    port
}

/// A client connection that the peer closed, or reset: read until either, within PATIENCE.
pub fn closed_by_peer(stream: &mut TcpStream) -> bool {
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut buf = Vec::new();
    match stream.read_to_end(&mut buf) {
        Ok(_) => true,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
    }
}

/// The socket inode a listener has, to find it in `/proc/<pid>/fd`.
pub fn socket_inode(fd: RawFd) -> String {
    std::fs::read_link(format!("/proc/self/fd/{fd}"))
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

/// Whether process `pid` holds a descriptor for `inode` (`socket:[n]`).
pub fn holds(pid: u32, inode: &str) -> bool {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| {
            dir.filter_map(Result::ok)
                .any(|e| std::fs::read_link(e.path()).is_ok_and(|t| t.to_string_lossy() == inode))
        })
        .unwrap_or(false)
}

/// The connections waiting in `listener`'s accept queue: `rx_queue` of its LISTEN entry in
/// /proc/net/tcp (or tcp6).
pub fn accept_queue(listener: &TcpListener) -> usize {
    let inode = socket_inode(listener.as_raw_fd());
    let inode = inode.trim_start_matches("socket:[").trim_end_matches(']');
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap();
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.get(9) == Some(&inode) {
                let queues = fields[4];
                let rx = queues.split(':').nth(1).unwrap();
                return usize::from_str_radix(rx, 16).unwrap();
            }
        }
    }
    panic!("socket {inode} is not in /proc/net/tcp");
}

/// How a test logs in as obproxy's `root@proxysys` with mysql_async. The client reads
/// `@@max_allowed_packet` and `@@wait_timeout` (and `@@socket`) at connect unless told them,
/// and obproxy answers none of those SELECTs.
pub fn admin_opts(addr: SocketAddr, password: &str) -> mysql_async::OptsBuilder {
    mysql_async::OptsBuilder::default()
        .ip_or_hostname(addr.ip().to_string())
        .tcp_port(addr.port())
        .user(Some("root@proxysys"))
        .pass(Some(password))
        .prefer_socket(false)
        .max_allowed_packet(Some(4 << 20))
        .wait_timeout(Some(28800))
}

/// The environment a process was started with, as `NAME=value` strings.
pub fn environ(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/environ"))
        .unwrap()
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

/// The arguments a process was started with.
pub fn cmdline(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .unwrap()
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

/// One echo round trip on a new connection to `addr`.
pub fn echo_once(addr: SocketAddr) -> std::io::Result<()> {
    let mut stream = TcpStream::connect(addr)?;
    skip_greeting(&mut stream)?;
    echo_on(&mut stream, b"ping")
}

/// Reads the MySQL greeting the stand-in sends every new client; what follows is echoed
/// (or, for `root@proxysys`, an admin session).
pub fn skip_greeting(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    stream.set_read_timeout(Some(PATIENCE))?;
    let mut header = [0u8; 4];
    stream.read_exact(&mut header)?;
    let len = usize::from(header[0]) | usize::from(header[1]) << 8 | usize::from(header[2]) << 16;
    let mut payload = vec![0; len];
    stream.read_exact(&mut payload)?;
    assert_eq!(payload.first(), Some(&10), "a protocol v10 greeting");
    Ok(payload)
}

pub fn echo_on(stream: &mut TcpStream, message: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    stream.set_read_timeout(Some(PATIENCE))?;
    stream.write_all(message)?;
    let mut got = vec![0; message.len()];
    stream.read_exact(&mut got)?;
    assert_eq!(got, message);
    Ok(())
}

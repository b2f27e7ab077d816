//! obproxy's own ("native") restart: `proxy_local_cmd`, polled by the hot-upgrade task every half to whole `proxy_hot_upgrade_check_interval`; `2` closes the exporter, forks and executes `argv[0]` with no arguments and only the `OBPROXY_INHERITED_*` (and `OBPROXY_ROOT`) variables, and stops accepting at once; the child's readiness drains this process, a child that dies first (or does not confirm within `hot_upgrade_rollback_timeout`) makes it accept again. `1` is a quick exit.
//!
//! Citations are to v4.3.1:src/obproxy/obutils/ob_hot_upgrade_processor.cpp unless named.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, MutexGuard};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::time::Instant;

use crate::listener::{INHERITED_FD, INHERITED_IPV6_FD, INHERITED_RPC_FD, INHERITED_RPC_IPV6_FD};
use crate::local_config;
use crate::proxy::{Accepting, Proxy};

/// `HU_STATE_WAIT_HU_CMD` / `HU_STATE_WAIT_LOCAL_CR_FINISH`, and the child being waited for.
#[derive(Debug, Default)]
pub struct HotUpgrade {
    waiting: Option<Child>,
    /// `sub_pid_`: cleared by SIGUSR2 (`reset_sub_pid`), after which the child's exit no
    /// longer counts (v4.3.1:src/obproxy/ob_proxy_main.cpp:896-906, :798-808).
    sub_pid: Option<u32>,
}

#[derive(Debug)]
struct Child {
    pid: u32,
    exited: bool,
    /// `schedule_timeout_rollback`: now + `hot_upgrade_rollback_timeout`.
    rollback_at: Instant,
}

/// Runs the hot-upgrade task for the life of the process (`start_hot_upgrade_task`, :1632-1655).
pub fn start(proxy: Arc<Proxy>) {
    tokio::spawn(async move {
        loop {
            let interval = proxy.config().time("proxy_hot_upgrade_check_interval");
            tokio::time::sleep(half_to_full(interval)).await;
            tick(&proxy).await;
        }
    });
}

/// SIGUSR2 on 4.1+: the child is considered gone for good.
pub fn forget_child(proxy: &Proxy) {
    hot(proxy).sub_pid = None;
}

fn hot(proxy: &Proxy) -> MutexGuard<'_, HotUpgrade> {
    proxy.hot.lock().unwrap_or_else(|e| e.into_inner())
}

/// `do_hot_upgrade_work` (:1657-1816): take the local command (it resets to 0), act on it
/// if idle, then look after a child being waited for.
async fn tick(proxy: &Arc<Proxy>) {
    let cmd = {
        let mut config = proxy.config();
        let cmd = config.int("proxy_local_cmd");
        if cmd != 0 {
            let _ = config.set("proxy_local_cmd", "0");
        }
        cmd
    };
    let idle = hot(proxy).waiting.is_none() && proxy.is_parent();
    match cmd {
        0 => {}
        1 | 2 if !idle => event!("local cmd", "cmd={cmd} action=ignored reason=upgrading"),
        1 => {
            event!("local cmd", "cmd=1 action=exit");
            proxy.local_exit.notify_one();
        }
        2 => {
            event!("local cmd", "cmd=2 action=restart");
            restart(proxy).await;
        }
        // 3 and 4 move sessions to and from the rolling-upgrade INACTIVE state (:1688-1705).
        other => event!(
            "local cmd",
            "cmd={other} action=ignored reason=not-modelled"
        ),
    }
    let (exited, timed_out, pid) = {
        let hot = hot(proxy);
        match &hot.waiting {
            None => return,
            Some(c) => (
                c.exited,
                !proxy.parent_flag() && Instant::now() >= c.rollback_at,
                c.pid,
            ),
        }
    };
    if exited {
        roll_back(proxy, "child-exited").await;
    } else if timed_out {
        // The child never confirmed: killed, and SIGUSR1 ignored from now on (:1781-1798).
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        proxy.set_parent_flag(true);
        roll_back(proxy, "timeout").await;
    }
}

/// Accept again and bring the exporter back (:1772-1779, :1789-1792).
async fn roll_back(proxy: &Proxy, reason: &str) {
    hot(proxy).waiting = None;
    event!("native restart rolled back", "reason={reason}");
    proxy.set_accepting(Accepting::Yes);
    if let Some(exporter) = proxy.exporter.lock().await.as_mut() {
        exporter.create();
    }
}

/// `HUC_LOCAL_RESTART` (:1719-1749): exporter closed, child spawned, on 4.3 the `.bin`
/// written for a rollback to an older binary, rollback scheduled, accepting stopped.
async fn restart(proxy: &Arc<Proxy>) {
    if let Some(exporter) = proxy.exporter.lock().await.as_mut() {
        exporter.destroy().await;
    }
    let child = match spawn(proxy) {
        Ok(child) => child,
        Err(e) => {
            event!(
                "native restart failed",
                "error={}",
                e.to_string().replace(' ', "_")
            );
            if let Some(exporter) = proxy.exporter.lock().await.as_mut() {
                exporter.create();
            }
            return;
        }
    };
    let pid = child.id().unwrap_or(0);
    if proxy.line.uses_sqlite() {
        let config = proxy.config().clone();
        if let Err(e) = local_config::store_bin(&proxy.layout, &config) {
            event!(
                "config not stored",
                "error={}",
                e.to_string().replace(' ', "_")
            );
        }
    }
    let rollback_at = Instant::now() + proxy.config().time("hot_upgrade_rollback_timeout");
    proxy.set_accepting(Accepting::Paused);
    {
        let mut hot = hot(proxy);
        hot.waiting = Some(Child {
            pid,
            exited: false,
            rollback_at,
        });
        hot.sub_pid = Some(pid);
    }
    event!(
        "native restart forked",
        "child={pid} argv0={}",
        proxy.argv0.to_string_lossy()
    );
    let proxy = proxy.clone();
    tokio::spawn(async move {
        let mut child = child;
        let status = child.wait().await;
        // SIGCHLD: the child matters only if it is still the one waited for (ob_proxy_main.cpp:798-811).
        let current = {
            let mut hot = hot(&proxy);
            let current = hot.sub_pid == Some(pid);
            if current {
                hot.sub_pid = None;
                if let Some(c) = hot.waiting.as_mut().filter(|c| c.pid == pid) {
                    c.exited = true;
                }
                proxy.set_parent_flag(false);
            }
            current
        };
        let status = status.map_or_else(|e| e.to_string(), |s| s.to_string());
        event!(
            "native child exited",
            "child={pid} status={} current={current}",
            status.replace(' ', "_")
        );
    });
}

/// `spawn_process` (:52-92) with `fill_exec_ctx` and `get_envp` (:94-248): `argv[0]` as the
/// path (`execve` resolves it from the working directory, not PATH) and the only argument;
/// the environment is the inherited fds (the IPv6 one from 4.1, the RPC ones when above 0
/// on 4.3, v3.2.3 passing only `OBPROXY_INHERITED_FD`) and `OBPROXY_ROOT` if set. The
/// stand-in adds its own `ODP_STANDIN_*` variables and its version: what a real child gets
/// by executing the same binary file. The listeners stay open across the exec.
fn spawn(proxy: &Proxy) -> std::io::Result<tokio::process::Child> {
    let argv0: &OsString = &proxy.argv0;
    let program: PathBuf = if argv0.to_string_lossy().contains('/') {
        PathBuf::from(argv0)
    } else {
        Path::new(".").join(argv0)
    };
    let fds = proxy.fds();
    let mut env: Vec<(String, String)> = vec![(INHERITED_FD.into(), fds.sql4.to_string())];
    if proxy.line.reads_ipv6_fd() {
        env.push((INHERITED_IPV6_FD.into(), fds.sql6.to_string()));
    }
    if let Ok(root) = std::env::var("OBPROXY_ROOT") {
        env.push(("OBPROXY_ROOT".into(), root));
    }
    if proxy.line.has_rpc() {
        for (name, fd) in [
            (INHERITED_RPC_FD, fds.rpc4),
            (INHERITED_RPC_IPV6_FD, fds.rpc6),
        ] {
            if fd > 0 {
                env.push((name.into(), fd.to_string()));
            }
        }
    }
    env.extend(std::env::vars().filter(|(k, _)| k.starts_with("ODP_STANDIN_")));
    env.push(("ODP_STANDIN_VERSION".into(), proxy.version.clone()));
    let keep: Vec<i32> = fds.handed_over().collect();
    let mut command = tokio::process::Command::new(program);
    command.as_std_mut().arg0(argv0);
    command.env_clear().envs(env);
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
    command.spawn()
}

/// `get_random_half_to_full`: a wait between half of `interval` and all of it.
fn half_to_full(interval: Duration) -> Duration {
    let mut raw = [0u8; 8];
    use std::io::Read;
    if let Ok(mut urandom) = std::fs::File::open("/dev/urandom") {
        let _ = urandom.read_exact(&mut raw);
    }
    let half = interval / 2;
    let spread = half.as_micros() as u64 + 1;
    half + Duration::from_micros(u64::from_le_bytes(raw) % spread)
}

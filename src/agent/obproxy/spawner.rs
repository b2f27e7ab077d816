//! The long-lived thread every obproxy is forked from. obproxy sets
//! `PR_SET_PDEATHSIG`, which fires when the *thread* that forked it exits, so
//! spawning from a pooled thread would signal obproxy at random moments.
use std::{
    os::unix::process::CommandExt,
    process::{Command, Stdio},
    sync::mpsc,
    time::SystemTime,
};

use super::{launch::LaunchSpec, pidfd::Pidfd};
use crate::security::files;

#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("cannot open {path} for obproxy's output")]
    Output {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot execute {binary}")]
    Exec {
        binary: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open a pidfd for pid {pid}")]
    Pidfd {
        pid: u32,
        #[source]
        source: std::io::Error,
    },
    #[error("the spawner thread is gone")]
    Gone,
}

/// A freshly started obproxy: not yet reaped, so its pid is still its own.
#[derive(Debug)]
pub struct Spawned {
    pub pidfd: Pidfd,
    pub started_at: SystemTime,
}

type Reply = Box<dyn FnOnce(Result<Spawned, SpawnError>) + Send>;

#[derive(Clone)]
pub struct Spawner {
    tx: mpsc::Sender<(LaunchSpec, Reply)>,
}

impl Spawner {
    /// Starts the thread; it lives as long as the agent.
    pub fn start() -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel::<(LaunchSpec, Reply)>();
        std::thread::Builder::new()
            .name("obproxy-spawner".into())
            .spawn(move || {
                for (spec, reply) in rx {
                    crate::common::panics::injected("spawner");
                    reply(spawn(&spec));
                }
            })?;
        Ok(Self { tx })
    }

    /// Spawns on the thread; `reply` runs there with the outcome.
    pub fn spawn(
        &self,
        spec: LaunchSpec,
        reply: impl FnOnce(Result<Spawned, SpawnError>) + Send + 'static,
    ) {
        if let Err(mpsc::SendError((_, reply))) = self.tx.send((spec, Box::new(reply))) {
            reply(Err(SpawnError::Gone));
        }
    }
}

fn spawn(spec: &LaunchSpec) -> Result<Spawned, SpawnError> {
    // obproxy echoes its argv (secrets in -o included) to stderr: 0600, and
    // never through a symlink planted in its place.
    let out = files::append_private(&spec.output).map_err(|e| SpawnError::Output {
        path: spec.output.display().to_string(),
        source: std::io::Error::other(crate::common::error_chain::describe(&e)),
    })?;
    let err = out.try_clone().map_err(|source| SpawnError::Output {
        path: spec.output.display().to_string(),
        source,
    })?;
    let fds = spec.inherit_fds.clone();
    // The very file that was opened (and whose version was read) is what
    // runs; argv[0] keeps its path.
    let (program, exe_fd) = spec.binary.program();
    let umask = spec.umask;
    let mut cmd = Command::new(program);
    cmd.arg0(spec.binary.path())
        .args(&spec.args)
        .current_dir(&spec.home)
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        // systemd's notify socket and watchdog are the agent's, not obproxy's.
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_PID")
        .env_remove("WATCHDOG_USEC")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        // Its own process group: a Ctrl-C meant for an agent run by hand
        // must not reach obproxy, which outlives the agent by design.
        .process_group(0);
    // SAFETY: only async-signal-safe fcntl and prctl calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            // The unit grants the agent CAP_SYS_PTRACE as an ambient
            // capability (to take listeners back from a running obproxy);
            // obproxy must not inherit it. Fails only on kernels without
            // ambient capabilities, which then have nothing to clear.
            // The kernel reads the variadic arguments as unsigned longs.
            let (clear, zero): (libc::c_ulong, libc::c_ulong) =
                (libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong, 0);
            libc::prctl(libc::PR_CAP_AMBIENT, clear, zero, zero, zero);
            libc::umask(umask as libc::mode_t);
            // An interpreter (#!) opens the script by its /proc/self/fd name
            // after exec, so this one descriptor must survive it.
            if libc::fcntl(exe_fd, libc::F_SETFD, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            for &fd in &fds {
                // Clear FD_CLOEXEC on exactly the handed-over listeners; the
                // flag is per fd table, so the agent's copies keep theirs.
                if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let started_at = SystemTime::now();
    let child = cmd.spawn().map_err(|source| SpawnError::Exec {
        binary: spec.binary.path().display().to_string(),
        source,
    })?;
    let pid = child.id();
    // The child is unreaped until we wait for it, so the pid cannot have been
    // reused yet: this pidfd names exactly our child.
    let pidfd = Pidfd::open(pid).map_err(|source| SpawnError::Pidfd { pid, source })?;
    Ok(Spawned { pidfd, started_at })
}

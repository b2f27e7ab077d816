//! The long-lived thread every obproxy is started from. obproxy sets
//! `PR_SET_PDEATHSIG`, which fires when the *thread* that created it exits, so
//! spawning from a pooled thread would signal obproxy at random moments. It
//! starts obproxy with `posix_spawn` (see [`super::posix_spawn`]), or, where
//! the thread cannot be prepared for that, with fork and exec.
use std::{
    ffi::OsStr,
    os::{fd::AsRawFd, unix::process::CommandExt},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    time::SystemTime,
};

use super::{launch::LaunchSpec, pidfd::Pidfd, posix_spawn};
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
    /// Starts the thread; it lives as long as the agent. `names` is a directory
    /// of the agent's own (under its state directory) for the links that give
    /// obproxy its name (see [`named_program`]).
    pub fn start(names: PathBuf) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel::<(LaunchSpec, Reply)>();
        std::thread::Builder::new()
            .name("obproxy-spawner".into())
            .spawn(move || {
                let method = match posix_spawn::prepare_thread() {
                    Ok(()) => Method::PosixSpawn,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot give the spawner thread a umask of its own; obproxy is forked instead of spawned");
                        Method::Fork
                    }
                };
                for (spec, reply) in rx {
                    crate::common::panics::injected("spawner");
                    reply(spawn(&spec, &names, method));
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

/// How the thread starts obproxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Method {
    /// `posix_spawn`, from a thread [`posix_spawn::prepare_thread`] prepared.
    PosixSpawn,
    /// fork and exec, the child doing the preparation itself.
    Fork,
}

fn spawn(spec: &LaunchSpec, names: &Path, method: Method) -> Result<Spawned, SpawnError> {
    // obproxy echoes its argv (secrets in -o included) to stderr: 0600, and
    // never through a symlink planted in its place.
    let out = files::append_private(&spec.output).map_err(|e| SpawnError::Output {
        path: spec.output.display().to_string(),
        source: std::io::Error::other(crate::common::error_chain::describe(&e)),
    })?;
    // The very file that was opened (and whose version was read) is what
    // runs; argv[0] keeps its path.
    let (by_fd, exe_fd) = spec.binary.program();
    let program = named_program(names, spec.binary.path(), exe_fd).unwrap_or_else(|e| {
        tracing::warn!(dir = %names.display(), error = %e,
            "cannot link obproxy's name; it runs as /proc/self/fd/{exe_fd} and ps shows it as {exe_fd}");
        by_fd
    });
    let exec_error = |source| SpawnError::Exec {
        binary: spec.binary.path().display().to_string(),
        source,
    };
    let started_at = SystemTime::now();
    let pid = match method {
        Method::PosixSpawn => {
            let mut keep = vec![exe_fd];
            keep.extend(&spec.inherit_fds);
            let mut argv = vec![spec.binary.path().as_os_str()];
            argv.extend(spec.args.iter().map(OsStr::new));
            // The child changes directory before the exec.
            let program = std::path::absolute(&program).map_err(exec_error)?;
            posix_spawn::spawn(&posix_spawn::Child {
                program: &program,
                argv,
                env: &spec.env,
                home: &spec.home,
                umask: spec.umask,
                output: out.as_raw_fd(),
                keep,
            })
            .map_err(exec_error)?
        }
        Method::Fork => fork(spec, program, exe_fd, out).map_err(exec_error)?,
    };
    // The child is unreaped until we wait for it, so the pid cannot have been
    // reused yet: this pidfd names exactly our child.
    let pidfd = Pidfd::open(pid).map_err(|source| SpawnError::Pidfd { pid, source })?;
    Ok(Spawned { pidfd, started_at })
}

/// fork and exec with [`Command`], the child clearing the ambient
/// capabilities, setting the umask and clearing close-on-exec itself; the
/// new process's pid.
fn fork(
    spec: &LaunchSpec,
    program: PathBuf,
    exe_fd: i32,
    out: std::fs::File,
) -> std::io::Result<u32> {
    let err = out.try_clone()?;
    let fds = spec.inherit_fds.clone();
    let umask = spec.umask;
    let mut cmd = Command::new(program);
    cmd.arg0(spec.binary.path())
        .args(&spec.args)
        .current_dir(&spec.home)
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        // Its own process group: a Ctrl-C meant for an agent run by hand
        // must not reach obproxy, which outlives the agent by design.
        .process_group(0);
    for k in posix_spawn::NOT_INHERITED {
        cmd.env_remove(k);
    }
    // SAFETY: only async-signal-safe fcntl and prctl calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            // The unit grants the agent CAP_SYS_PTRACE as an ambient
            // capability (to take listeners back from a running obproxy);
            // obproxy must not inherit it.
            posix_spawn::clear_ambient_capabilities();
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
    Ok(cmd.spawn()?.id())
}

/// What to exec so that obproxy runs the very file the agent opened and is
/// still named after it: `names/<fd>/<binary's file name>`, a symlink to
/// `/proc/self/fd/<fd>`. The kernel names a process (its `comm`: `ps -e`,
/// `top`, `pgrep -x`, `pidof`) after the last component of the path it was
/// exec'd by, so exec'ing `/proc/self/fd/22` itself would name obproxy "22".
/// The link resolves in the child, through the descriptor it inherits, so
/// what runs is still the file opened (and whose version was read), whatever
/// the configured path names now. A link's target depends only on the
/// descriptor's number, so it is made once and never changes: an interpreter
/// (`#!`) that opens it after a later spawn still finds its own descriptor.
/// Only the agent's user may write `names` (0700, under the state directory).
fn named_program(names: &Path, binary: &Path, fd: i32) -> std::io::Result<PathBuf> {
    let name = binary
        .file_name()
        .ok_or_else(|| std::io::Error::other("the binary's path has no file name"))?;
    let dir = names.join(fd.to_string());
    let link = dir.join(name);
    let target = PathBuf::from(format!("/proc/self/fd/{fd}"));
    if std::fs::read_link(&link).is_ok_and(|t| t == target) {
        return Ok(link);
    }
    files::private_dir(&dir)
        .map_err(|e| std::io::Error::other(crate::common::error_chain::describe(&e)))?;
    // Made beside it and renamed over whatever is in the way, so the name is
    // never missing for an interpreter that opens it meanwhile.
    let made = dir.join(format!(".{}.new", name.to_string_lossy()));
    let _ = std::fs::remove_file(&made);
    std::os::unix::fs::symlink(&target, &made)?;
    std::fs::rename(&made, &link)?;
    Ok(link)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::obproxy::executable::Executable;
    use std::os::fd::AsRawFd;

    /// A copy of `sleep` named `name` in `dir`: a real ELF binary to exec.
    fn binary(dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::copy("/bin/sleep", &path).unwrap();
        path
    }

    fn spec(dir: &Path, binary: &Path) -> LaunchSpec {
        LaunchSpec {
            binary: Executable::open(binary).unwrap(),
            umask: 0o022,
            args: vec!["30".into()],
            home: dir.to_path_buf(),
            env: Vec::new(),
            inherit_fds: Vec::new(),
            output: dir.join("out"),
        }
    }

    fn kill(child: Spawned) {
        let pid = child.pidfd.pid();
        child
            .pidfd
            .signal(nix::sys::signal::Signal::SIGKILL)
            .unwrap();
        nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid as i32), None).unwrap();
    }

    #[test]
    fn obproxy_is_named_after_its_binary_and_runs_the_file_opened() {
        let dir = tempfile::tempdir().unwrap();
        let names = dir.path().join("state/exec");
        let path = binary(dir.path(), "obproxy");
        let spec = spec(dir.path(), &path);
        // Whatever the configured path names once the file is open, the
        // opened one runs.
        std::fs::rename(&path, dir.path().join("moved")).unwrap();
        std::fs::write(&path, "#!/bin/sh\nexit 3\n").unwrap();
        posix_spawn::prepare_thread().unwrap();
        for method in [Method::PosixSpawn, Method::Fork, Method::PosixSpawn] {
            let child = spawn(&spec, &names, method).unwrap();
            let pid = child.pidfd.pid();
            assert_eq!(
                posix_spawn::comm_once_execd(pid, "obproxy"),
                "obproxy",
                "{method:?}: ps, top, pgrep -x and pidof see this"
            );
            let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
            assert_eq!(exe, dir.path().join("moved"));
            kill(child);
        }
        let mode = std::fs::metadata(&names).unwrap().permissions();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            mode.mode() & 0o077,
            0,
            "only the agent's user may plant a link"
        );
    }

    #[test]
    fn a_link_in_the_way_is_replaced_and_an_unusable_directory_falls_back_to_the_descriptor() {
        let dir = tempfile::tempdir().unwrap();
        let names = dir.path().join("exec");
        let path = binary(dir.path(), "obproxy");
        let spec = spec(dir.path(), &path);
        let (_, fd) = spec.binary.program();
        std::fs::create_dir_all(names.join(fd.to_string())).unwrap();
        std::os::unix::fs::symlink("/bin/false", names.join(format!("{fd}/obproxy"))).unwrap();
        let link = named_program(&names, &path, fd).unwrap();
        assert_eq!(
            std::fs::read_link(&link).unwrap(),
            PathBuf::from(format!("/proc/self/fd/{fd}"))
        );
        // A file where the directory should be: the spawn still runs the
        // binary, by its descriptor.
        let blocked = dir.path().join("blocked");
        std::fs::write(&blocked, "").unwrap();
        posix_spawn::prepare_thread().unwrap();
        for method in [Method::PosixSpawn, Method::Fork] {
            let child = spawn(&spec, &blocked, method).unwrap();
            let pid = child.pidfd.pid();
            let name = fd.to_string();
            assert_eq!(posix_spawn::comm_once_execd(pid, &name), name, "{method:?}");
            kill(child);
        }
    }

    #[test]
    #[cfg_attr(skip_root, ignore = "raises an ambient capability: needs root")]
    fn neither_way_passes_on_the_agents_ambient_capability() {
        let dir = tempfile::tempdir().unwrap();
        let path = binary(dir.path(), "obproxy");
        let spec = spec(dir.path(), &path);
        let names = dir.path().join("exec");
        posix_spawn::raise_ambient_ptrace();
        // The forked child clears it itself; the spawner thread is cleared
        // once, when it is prepared.
        let forked = spawn(&spec, &names, Method::Fork).unwrap();
        posix_spawn::prepare_thread().unwrap();
        let spawned = spawn(&spec, &names, Method::PosixSpawn).unwrap();
        for child in [forked, spawned] {
            let pid = child.pidfd.pid();
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
            assert!(status.contains("CapAmb:\t0000000000000000"), "{status}");
            kill(child);
        }
    }

    #[test]
    fn both_ways_hand_over_the_listeners_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let path = binary(dir.path(), "obproxy");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut spec = spec(dir.path(), &path);
        spec.inherit_fds = vec![listener.as_raw_fd()];
        spec.umask = 0o027;
        posix_spawn::prepare_thread().unwrap();
        for method in [Method::PosixSpawn, Method::Fork] {
            let child = spawn(&spec, &dir.path().join("exec"), method).unwrap();
            let pid = child.pidfd.pid();
            let held = |fd: i32| {
                std::fs::read_link(format!("/proc/{pid}/fd/{fd}"))
                    .ok()
                    .map(|l| l.to_string_lossy().into_owned())
            };
            let inode = |fd: i32| {
                std::fs::read_link(format!("/proc/self/fd/{fd}"))
                    .unwrap()
                    .to_string_lossy()
                    .into_owned()
            };
            let fd = listener.as_raw_fd();
            assert_eq!(held(fd), Some(inode(fd)), "{method:?}: the listener");
            assert_eq!(held(other.as_raw_fd()), None, "{method:?}: not asked for");
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
            assert!(status.contains("Umask:\t0027"), "{method:?}: {status}");
            kill(child);
        }
        // The agent's own descriptors keep close-on-exec.
        // SAFETY: F_GETFD on a descriptor we own.
        let flags = unsafe { libc::fcntl(listener.as_raw_fd(), libc::F_GETFD) };
        assert_eq!(flags & libc::FD_CLOEXEC, libc::FD_CLOEXEC);
    }
}

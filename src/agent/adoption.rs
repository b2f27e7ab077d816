//! Re-adopting the obproxy processes a previous agent recorded. A pid is
//! believed only when its start time, executable and listener socket all
//! match the record, and it looks like an obproxy of this agent whatever the
//! record says (the state file may be forged): it runs as the agent's user,
//! from an executable in `home` or `upgrade_dir`, with `home` as its working
//! directory. The pidfd is opened first and the checks made after, so a pid
//! reused in between cannot slip through. The listener sockets are taken
//! back from the serving process with pidfd_getfd.
use std::{
    os::fd::OwnedFd,
    path::{Path, PathBuf},
};

use crate::agent::{
    config::ObproxyConfig,
    obproxy::{pidfd::Pidfd, procfs},
    state_file::{RecordedListener, RecordedProcess, Role},
};

/// Where an obproxy of this agent runs from: what every adopted pid must
/// match, whatever the state file says.
#[derive(Debug, Clone)]
pub struct Place {
    home: PathBuf,
    /// Its executable lies in one of these (home, upgrade_dir) or is the
    /// configured binary.
    dirs: Vec<PathBuf>,
    binary: PathBuf,
    uid: u32,
}

impl Place {
    pub fn of(cfg: &ObproxyConfig) -> Self {
        let real = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
        Self {
            home: real(&cfg.home),
            dirs: vec![real(&cfg.home), real(&cfg.upgrade_dir)],
            binary: real(&cfg.binary),
            uid: nix::unistd::geteuid().as_raw(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Rejected {
    #[error("pid {pid} is gone")]
    Gone { pid: u32 },
    #[error("pid {pid} was reused: start time {found} is not the recorded {recorded}")]
    Reused { pid: u32, recorded: u64, found: u64 },
    #[error("pid {pid} runs {found}, not the recorded {recorded}")]
    OtherExe {
        pid: u32,
        recorded: String,
        found: String,
    },
    #[error("pid {pid} does not hold the listener socket(s) {inodes:?}")]
    NoListener { pid: u32, inodes: Vec<u64> },
    #[error("pid {pid} is recorded as {role:?} without the executable it ran")]
    NoExe { pid: u32, role: Role },
    #[error("pid {pid} is not an obproxy of this agent: {reason}")]
    Foreign { pid: u32, reason: String },
}

/// A pidfd for `rec` if and only if it is still the process we started,
/// and it runs where an obproxy of this agent runs (`place`).
pub fn confirm(
    rec: &RecordedProcess,
    listener_inodes: &[u64],
    place: &Place,
) -> Result<Pidfd, Rejected> {
    let pid = rec.pid;
    let pidfd = Pidfd::open(pid).map_err(|_| Rejected::Gone { pid })?;
    let found = procfs::start_ticks(pid).map_err(|_| Rejected::Gone { pid })?;
    if found != rec.start_ticks {
        return Err(Rejected::Reused {
            pid,
            recorded: rec.start_ticks,
            found,
        });
    }
    // A process that served or drained was ready, so its executable was
    // recorded: without it, the record is not the agent's.
    if rec.exe.is_none() && rec.role != Role::Starting {
        return Err(Rejected::NoExe {
            pid,
            role: rec.role,
        });
    }
    let found = procfs::exe(pid).map_err(|_| Rejected::Gone { pid })?;
    if let Some(recorded) = &rec.exe
        && &found != recorded
    {
        return Err(Rejected::OtherExe {
            pid,
            recorded: recorded.display().to_string(),
            found: found.display().to_string(),
        });
    }
    runs_from(pid, &found, place).map_err(|reason| Rejected::Foreign { pid, reason })?;
    if !listener_inodes.is_empty() && !procfs::holds_listeners(pid, listener_inodes) {
        return Err(Rejected::NoListener {
            pid,
            inodes: listener_inodes.to_vec(),
        });
    }
    Ok(pidfd)
}

/// Whether `pid`, running `exe`, is where an obproxy of this agent runs.
fn runs_from(pid: u32, exe: &Path, place: &Place) -> Result<(), String> {
    let uid = process_uid(pid).ok_or("its owner is unknown")?;
    if uid != place.uid {
        return Err(format!(
            "it runs as uid {uid}, not the agent's {}",
            place.uid
        ));
    }
    if exe != place.binary && !place.dirs.iter().any(|d| exe.starts_with(d)) {
        return Err(format!(
            "its executable {} lies outside {}",
            exe.display(),
            place
                .dirs
                .iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(" and ")
        ));
    }
    let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).map_err(|e| e.to_string())?;
    if cwd != place.home {
        return Err(format!(
            "its working directory is {}, not {}",
            cwd.display(),
            place.home.display()
        ));
    }
    Ok(())
}

/// The real uid of `pid` (`Uid:` in /proc/<pid>/status).
fn process_uid(pid: u32) -> Option<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[derive(Debug, thiserror::Error)]
pub enum TakeError {
    #[error("pid {pid} holds no socket with inode {inode}")]
    Missing { pid: u32, inode: u64 },
    #[error(
        "pidfd_getfd of fd {fd} in pid {pid} failed (Linux 5.6+ and ptrace permission are needed)"
    )]
    GetFd {
        pid: u32,
        fd: i32,
        #[source]
        source: std::io::Error,
    },
}

/// Our own copies of the recorded listener sockets, from the process.
pub fn take_listeners(
    pidfd: &Pidfd,
    recorded: &[RecordedListener],
) -> Result<Vec<OwnedFd>, TakeError> {
    let pid = pidfd.pid();
    recorded
        .iter()
        .map(|l| {
            let fd = procfs::fd_of_socket(pid, l.inode).ok_or(TakeError::Missing {
                pid,
                inode: l.inode,
            })?;
            pidfd
                .get_fd(fd)
                .map_err(|source| TakeError::GetFd { pid, fd, source })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Where the test process itself runs: its executable's directory and
    /// its working directory.
    fn here() -> Place {
        let exe = procfs::exe(std::process::id()).unwrap();
        Place {
            home: std::env::current_dir().unwrap(),
            dirs: vec![exe.parent().unwrap().to_path_buf()],
            binary: exe,
            uid: nix::unistd::geteuid().as_raw(),
        }
    }

    fn me() -> RecordedProcess {
        let pid = std::process::id();
        RecordedProcess {
            pid,
            start_ticks: procfs::start_ticks(pid).unwrap(),
            exe: Some(procfs::exe(pid).unwrap()),
            binary: "x".into(),
            version: "4.3.1.0".into(),
            role: Role::Serving,
            started_at: 0.0,
            drain_deadline: None,
            exit_window_us: None,
            rpc: false,
        }
    }

    #[test]
    fn a_matching_process_is_confirmed() {
        assert!(confirm(&me(), &[], &here()).is_ok());
    }

    #[test]
    fn a_reused_pid_is_rejected() {
        let rec = RecordedProcess {
            start_ticks: me().start_ticks + 1,
            ..me()
        };
        assert!(matches!(
            confirm(&rec, &[], &here()),
            Err(Rejected::Reused { .. })
        ));
    }

    #[test]
    fn another_executable_is_rejected() {
        let rec = RecordedProcess {
            exe: Some("/usr/sbin/obproxy-elsewhere".into()),
            ..me()
        };
        assert!(matches!(
            confirm(&rec, &[], &here()),
            Err(Rejected::OtherExe { .. })
        ));
    }

    #[test]
    fn a_process_without_the_listener_is_rejected() {
        assert!(matches!(
            confirm(&me(), &[1], &here()),
            Err(Rejected::NoListener { .. })
        ));
    }

    #[test]
    fn a_forged_record_without_an_executable_is_rejected() {
        for role in [Role::Serving, Role::Draining] {
            let rec = RecordedProcess {
                exe: None,
                role,
                ..me()
            };
            assert!(matches!(
                confirm(&rec, &[], &here()),
                Err(Rejected::NoExe { .. })
            ));
        }
        // A "starting" one is still checked for where it runs from.
        let rec = RecordedProcess {
            exe: None,
            role: Role::Starting,
            ..me()
        };
        assert!(confirm(&rec, &[], &here()).is_ok());
    }

    #[test]
    fn a_process_running_from_elsewhere_is_rejected() {
        let elsewhere = Place {
            home: "/nonexistent-home".into(),
            ..here()
        };
        assert!(matches!(
            confirm(&me(), &[], &elsewhere),
            Err(Rejected::Foreign { .. })
        ));
        let other_dirs = Place {
            dirs: vec!["/nonexistent-bin".into()],
            binary: "/nonexistent-bin/obproxy".into(),
            ..here()
        };
        assert!(matches!(
            confirm(&me(), &[], &other_dirs),
            Err(Rejected::Foreign { .. })
        ));
        let other_user = Place {
            uid: here().uid + 1,
            ..here()
        };
        assert!(matches!(
            confirm(&me(), &[], &other_user),
            Err(Rejected::Foreign { .. })
        ));
    }

    #[test]
    fn listeners_are_taken_back_through_the_pidfd() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let inode = nix::sys::stat::fstat(&l).unwrap().st_ino;
        let pidfd = Pidfd::open(std::process::id()).unwrap();
        let rec = [RecordedListener {
            bound: l.local_addr().unwrap(),
            inode,
        }];
        let fds = take_listeners(&pidfd, &rec).unwrap();
        assert_eq!(nix::sys::stat::fstat(&fds[0]).unwrap().st_ino, inode);
    }
}

//! Re-adopting the obproxy processes a previous agent recorded. A pid is
//! believed only when its start time, executable and listener socket all
//! match the record; the pidfd is opened first and the checks made after, so
//! a pid reused in between cannot slip through. The listener sockets are
//! taken back from the serving process with pidfd_getfd.
use std::os::fd::OwnedFd;

use crate::{
    obproxy::{pidfd::Pidfd, procfs},
    state_file::{RecordedListener, RecordedProcess},
};

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
}

/// A pidfd for `rec` if and only if it is still the process we started.
pub fn confirm(rec: &RecordedProcess, listener_inodes: &[u64]) -> Result<Pidfd, Rejected> {
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
    if let Some(recorded) = &rec.exe {
        let found = procfs::exe(pid).map_err(|_| Rejected::Gone { pid })?;
        if &found != recorded {
            return Err(Rejected::OtherExe {
                pid,
                recorded: recorded.display().to_string(),
                found: found.display().to_string(),
            });
        }
    }
    if !listener_inodes.is_empty() && !procfs::holds_listeners(pid, listener_inodes) {
        return Err(Rejected::NoListener {
            pid,
            inodes: listener_inodes.to_vec(),
        });
    }
    Ok(pidfd)
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
    use crate::state_file::Role;

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
        assert!(confirm(&me(), &[]).is_ok());
    }

    #[test]
    fn a_reused_pid_is_rejected() {
        let rec = RecordedProcess {
            start_ticks: me().start_ticks + 1,
            ..me()
        };
        assert!(matches!(confirm(&rec, &[]), Err(Rejected::Reused { .. })));
    }

    #[test]
    fn another_executable_is_rejected() {
        let rec = RecordedProcess {
            exe: Some("/usr/sbin/obproxy-elsewhere".into()),
            ..me()
        };
        assert!(matches!(confirm(&rec, &[]), Err(Rejected::OtherExe { .. })));
    }

    #[test]
    fn a_process_without_the_listener_is_rejected() {
        assert!(matches!(
            confirm(&me(), &[1]),
            Err(Rejected::NoListener { .. })
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

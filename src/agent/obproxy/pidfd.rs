//! A process handle that cannot be confused with a later process of the same
//! pid: signals go through the pidfd and its readiness says the process ended.
use std::{
    fmt, io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use nix::{
    sys::{
        signal::Signal,
        wait::{WaitPidFlag, WaitStatus, waitpid},
    },
    unistd::Pid,
};
use tokio::io::unix::AsyncFd;

#[derive(Debug)]
pub struct Pidfd {
    pid: u32,
    fd: OwnedFd,
}

impl Pidfd {
    pub fn open(pid: u32) -> io::Result<Self> {
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the kernel just handed us this fd; nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        Ok(Self { pid, fd })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Signals exactly this process; fails with ESRCH once it has exited, even
    /// if its pid was reused.
    pub fn signal(&self, signal: Signal) -> io::Result<()> {
        // SAFETY: a valid pidfd, a valid signal number, no siginfo, no flags.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.fd.as_raw_fd(),
                signal as libc::c_int,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    /// Duplicates the process's fd `target` into ours (pidfd_getfd, Linux
    /// 5.6+): how listener sockets are taken back from a running obproxy.
    /// The new fd is close-on-exec.
    pub fn get_fd(&self, target: i32) -> io::Result<OwnedFd> {
        // SAFETY: a valid pidfd, a target fd number, no flags.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_getfd, self.fd.as_raw_fd(), target, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a new fd the kernel just gave us.
        Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
    }

    /// Resolves once the process has terminated (a pidfd polls readable then).
    pub async fn exited(&self) -> io::Result<()> {
        let dup = self.fd.try_clone()?;
        // SAFETY: the AsyncFd owns `dup`, an open fd that stays open and the
        // same until the AsyncFd is dropped.
        let fd = unsafe { AsyncFd::register_with_interest(dup, tokio::io::Interest::READABLE) }
            .map_err(std::io::Error::from)?;
        let _ready = fd.readable().await?;
        Ok(())
    }
}

/// How a process ended, as far as the agent can know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(String),
    /// The process was not the agent's child (adopted), so its status is
    /// someone else's to collect.
    Unknown,
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exit::Code(c) => write!(f, "exited with code {c}"),
            Exit::Signal(s) => write!(f, "killed by {s}"),
            Exit::Unknown => write!(f, "exited (status unknown)"),
        }
    }
}

/// Collects the exit status of a child that has terminated.
pub fn reap(pid: u32) -> Exit {
    match waitpid(Pid::from_raw(pid as i32), Some(WaitPidFlag::WNOHANG)) {
        Ok(WaitStatus::Exited(_, code)) => Exit::Code(code),
        Ok(WaitStatus::Signaled(_, sig, _)) => Exit::Signal(sig.as_str().to_string()),
        _ => Exit::Unknown,
    }
}

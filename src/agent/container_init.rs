//! What the agent does when it runs as PID 1 (a container's entrypoint):
//! obproxy signals readiness to its parent only when `getppid() != 1`, so
//! with the agent as PID 1 no start would ever be ready. The agent therefore
//! forks before anything else starts: the child is the agent (so every
//! obproxy's parent is not PID 1), and PID 1 stays a minimal init that
//! forwards signals to it, reaps every orphan, and exits with the agent's
//! status.
use nix::{
    sys::{
        signal::{SigSet, SigmaskHow, Signal, kill, sigprocmask},
        wait::{WaitPidFlag, WaitStatus, waitpid},
    },
    unistd::{ForkResult, Pid, fork},
};

/// Returns `None` in the process that goes on as the agent. As PID 1 the
/// call forks and, in PID 1, returns only the exit code to leave with once
/// the agent has ended. Must run while the process has a single thread.
pub fn split_if_pid1() -> Option<u8> {
    if std::process::id() != 1 {
        return None;
    }
    let mut all = SigSet::all();
    all.remove(Signal::SIGKILL);
    all.remove(Signal::SIGSTOP);
    // Blocked before the fork, so no signal meant for the agent is lost in
    // between: PID 1 collects them with sigwait, the child unblocks.
    let mut old = SigSet::empty();
    if let Err(e) = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&all), Some(&mut old)) {
        eprintln!("odp-agent: running as PID 1 but cannot block signals ({e}); exiting");
        return Some(crate::common::config_file::EX_CONFIG as u8);
    }
    // SAFETY: the process is single-threaded here (called first in main).
    match unsafe { fork() } {
        Ok(ForkResult::Child) => {
            let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&old), None);
            None
        }
        Ok(ForkResult::Parent { child }) => {
            eprintln!(
                "odp-agent: running as PID 1: the agent runs as pid {child} (obproxy signals \
                 readiness only to a parent that is not PID 1); PID 1 forwards signals and reaps"
            );
            Some(init(child, &all))
        }
        Err(e) => {
            eprintln!(
                "odp-agent: running as PID 1 and cannot fork ({e}): obproxy never signals \
                 readiness to PID 1; run the agent under an init (docker run --init, tini)"
            );
            Some(crate::common::config_file::EX_CONFIG as u8)
        }
    }
}

/// PID 1's loop: forward, reap, and leave with the agent's status.
fn init(agent: Pid, signals: &SigSet) -> u8 {
    loop {
        let Ok(signal) = signals.wait() else {
            continue;
        };
        if signal != Signal::SIGCHLD {
            let _ = kill(agent, signal);
            continue;
        }
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) if pid == agent => return code as u8,
                Ok(WaitStatus::Signaled(pid, sig, _)) if pid == agent => {
                    return 128u8.saturating_add(sig as u8);
                }
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                // An orphan that ended: reaped, look for more.
                Ok(_) => {}
            }
        }
    }
}

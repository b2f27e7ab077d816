//! The process's ties to its parent: the death signal it arms, the readiness and exit signals it sends, and the signals it ignores.

use std::sync::atomic::{AtomicI32, Ordering};

use nix::sys::signal::{SigHandler, Signal, kill, signal};
use nix::unistd::{Pid, getpid, getppid};

/// The process that ran us before `daemonize`, or 0. It is on its way out and must not be
/// signalled: a SIGUSR1 reaching it before its `_exit` would kill it instead.
static LAUNCHER: AtomicI32 = AtomicI32::new(0);

/// obproxy's `daemon(1, 0)` for a fresh start: keep the working directory, send stdio to
/// /dev/null, and leave the launching process behind.
pub fn daemonize() -> nix::Result<()> {
    LAUNCHER.store(getpid().as_raw(), Ordering::Relaxed);
    nix::unistd::daemon(true, false)
}

/// Like obproxy: `prctl(PR_SET_PDEATHSIG, SIGHUP)`, and SIGHUP itself is ignored, so the
/// parent's (forking thread's) death is noticed but does not kill the proxy. SIGUSR2, which
/// obproxy takes as "my child exited cleanly", is ignored too rather than fatal.
///
/// Call after daemonizing: the death signal does not survive a fork.
pub fn arm_death_signal() -> nix::Result<()> {
    ignore(&[Signal::SIGHUP, Signal::SIGUSR2])?;
    nix::sys::prctl::set_pdeathsig(Signal::SIGHUP)
}

/// Sets these signals to SIG_IGN. Must run before the runtime registers its own handlers.
pub fn ignore(signals: &[Signal]) -> nix::Result<()> {
    for sig in signals {
        // SAFETY: SIG_IGN installs no handler code.
        unsafe { signal(*sig, SigHandler::SigIgn) }?;
    }
    Ok(())
}

/// The outcome of telling the parent something, for the logs.
pub struct Notice {
    pub parent: Pid,
    pub sent: bool,
}

/// Sends `sig` to the current parent unless it is pid 1 (an orphan has nobody to tell),
/// the rule obproxy applies to its readiness SIGUSR1 and exit SIGUSR2. A daemon's launcher
/// that has not exited yet is skipped too.
pub fn notify(sig: Signal) -> Notice {
    let parent = getppid();
    let sent = parent.as_raw() != 1
        && parent.as_raw() != LAUNCHER.load(Ordering::Relaxed)
        && kill(parent, sig).is_ok();
    Notice { parent, sent }
}

/// The parent as it is now, for a log line when nothing is sent.
pub fn current() -> Notice {
    Notice {
        parent: getppid(),
        sent: false,
    }
}

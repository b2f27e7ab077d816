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

/// Like obproxy: `prctl(PR_SET_PDEATHSIG, SIGHUP)` (v4.3.1:src/obproxy/ob_proxy_main.cpp:648),
/// so the death of the thread that forked it is noticed. SIGHUP is ignored until the
/// runtime installs its handler (see `signals`), which replaces SIG_IGN; a handler, unlike
/// SIG_IGN, does not survive into a native child's exec.
///
/// Call after daemonizing: the death signal does not survive a fork.
pub fn arm_death_signal() -> nix::Result<()> {
    ignore(&[Signal::SIGHUP])?;
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

/// Sends `sig` to the current parent unless it is pid 1, the rule obproxy applies to its
/// readiness SIGUSR1 (v4.3.1:src/obproxy/ob_proxy.cpp:456-460) and exit SIGUSR2
/// (v4.3.1:src/obproxy/iocore/net/ob_unix_net.cpp:88-92). A daemon's launcher that has not
/// exited yet is skipped too: signalling it could kill it before its own `_exit`.
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

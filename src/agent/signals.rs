//! The agent's own signal handling. obproxy signals its parent (SIGUSR1 when
//! ready, SIGUSR2 on a clean exit) and the default action of both is to
//! terminate, so the agent must catch them, with the sender's pid.
use signal_hook::{
    consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1, SIGUSR2},
    iterator::{SignalsInfo, exfiltrator::WithOrigin},
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// A signal a process sent to the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChildSignal {
    pub signal: i32,
    /// The sender, when the kernel says (always, for kill(2)).
    pub pid: Option<u32>,
}

/// Installs the handlers and starts the thread that reads them. SIGUSR1/2 go
/// to `children`; SIGTERM/SIGINT cancel `shutdown`; SIGHUP runs `on_hup`
/// (logrotate's cue to reopen the audit log). Installed before anything is
/// spawned, so no early signal can kill us.
pub fn listen(
    children: mpsc::UnboundedSender<ChildSignal>,
    shutdown: CancellationToken,
    on_hup: impl Fn() + Send + 'static,
) -> std::io::Result<()> {
    let mut signals = SignalsInfo::<WithOrigin>::new([SIGUSR1, SIGUSR2, SIGTERM, SIGINT, SIGHUP])?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for info in signals.forever() {
                let pid = info.process.map(|p| p.pid as u32);
                match info.signal {
                    SIGUSR1 | SIGUSR2 => {
                        let _ = children.send(ChildSignal {
                            signal: info.signal,
                            pid,
                        });
                    }
                    SIGTERM | SIGINT => {
                        tracing::info!(signal = info.signal, sender = ?pid, "shutting down; obproxy keeps running");
                        shutdown.cancel();
                    }
                    SIGHUP => {
                        tracing::info!(signal = info.signal, sender = ?pid, "reopening the audit log");
                        crate::common::panics::injected("signals");
                        on_hup();
                    }
                    other => tracing::info!(signal = other, sender = ?pid, "ignored signal"),
                }
            }
        })?;
    Ok(())
}

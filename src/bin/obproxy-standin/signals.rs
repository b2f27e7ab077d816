//! The signals the process listens to, per line: SIGUSR1 (drain), SIGTERM/SIGINT (quick exit), SIGUSR2 (4.1+: forget the native child; before, no handler, so it kills), SIGHUP (the parent thread's death, handled and harmless).

use std::future::pending;

use tokio::signal::unix::{Signal, SignalKind, signal};

use crate::profile::Line;

/// One signal received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received {
    Usr1,
    Term,
    Int,
    Usr2,
    Hup,
}

impl Received {
    pub fn name(self) -> &'static str {
        match self {
            Received::Usr1 => "SIGUSR1",
            Received::Term => "SIGTERM",
            Received::Int => "SIGINT",
            Received::Usr2 => "SIGUSR2",
            Received::Hup => "SIGHUP",
        }
    }
}

/// The handlers `init_signal` installs (v4.3.1:src/obproxy/ob_proxy_main.cpp:628-669). When
/// the stop signals are to be ignored no handler is installed for them, so the SIG_IGN set
/// before the runtime started stays in force.
pub struct Signals {
    usr1: Option<Signal>,
    term: Option<Signal>,
    int: Option<Signal>,
    usr2: Option<Signal>,
    hup: Option<Signal>,
}

impl Signals {
    pub fn install(line: Line, ignore_stops: bool) -> std::io::Result<Self> {
        let stop = |kind| -> std::io::Result<Option<Signal>> {
            if ignore_stops {
                Ok(None)
            } else {
                signal(kind).map(Some)
            }
        };
        Ok(Signals {
            usr1: stop(SignalKind::user_defined1())?,
            term: stop(SignalKind::terminate())?,
            int: stop(SignalKind::interrupt())?,
            // 3.x/4.0 install no SIGUSR2 handler (v3.2.3:src/obproxy/ob_proxy_main.cpp:568-598):
            // its default action, terminate, stays.
            usr2: if line.handles_sigusr2() {
                Some(signal(SignalKind::user_defined2())?)
            } else {
                None
            },
            // Asynchronous and harmless (ob_proxy_main.cpp:650, :822-833); armed by
            // PR_SET_PDEATHSIG, so the parent thread's death must not kill the process.
            hup: Some(signal(SignalKind::hangup())?),
        })
    }

    pub async fn next(&mut self) -> Received {
        tokio::select! {
            _ = recv(&mut self.usr1) => Received::Usr1,
            _ = recv(&mut self.term) => Received::Term,
            _ = recv(&mut self.int) => Received::Int,
            _ = recv(&mut self.usr2) => Received::Usr2,
            _ = recv(&mut self.hup) => Received::Hup,
        }
    }
}

async fn recv(signal: &mut Option<Signal>) {
    // No handler, or the runtime shutting down, means it never fires.
    match signal {
        Some(signal) => {
            if signal.recv().await.is_none() {
                pending().await
            }
        }
        None => pending().await,
    }
}

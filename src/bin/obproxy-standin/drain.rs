//! Stopping: the stop signals (SIGUSR1 drain, SIGTERM/SIGINT quick exit) and the drain they start, which ends when no connection is left or its window runs out.

use std::future::pending;
use std::time::Duration;

use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::time::{Instant, sleep_until};

use crate::forward::{Acceptors, Connections};
use crate::options::Window;

/// What asked the process to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// SIGUSR1: graceful drain over `hot_upgrade_exit_timeout`.
    Drain,
    /// SIGTERM or SIGINT: drain over `delay_exit_time`, at most 500 ms.
    Quick(&'static str),
}

impl Stop {
    pub fn signal_name(self) -> &'static str {
        match self {
            Stop::Drain => "SIGUSR1",
            Stop::Quick(name) => name,
        }
    }
}

/// The stop signals, listened to from start-up on. When they are to be ignored no handler is
/// installed at all, so the SIG_IGN set before the runtime started stays in force.
pub struct StopSignals {
    usr1: Option<Signal>,
    term: Option<Signal>,
    int: Option<Signal>,
}

impl StopSignals {
    pub fn install(ignored: bool) -> std::io::Result<Self> {
        if ignored {
            return Ok(StopSignals {
                usr1: None,
                term: None,
                int: None,
            });
        }
        Ok(StopSignals {
            usr1: Some(signal(SignalKind::user_defined1())?),
            term: Some(signal(SignalKind::terminate())?),
            int: Some(signal(SignalKind::interrupt())?),
        })
    }

    pub async fn next(&mut self) -> Stop {
        tokio::select! {
            _ = recv(&mut self.usr1) => Stop::Drain,
            _ = recv(&mut self.term) => Stop::Quick("SIGTERM"),
            _ = recv(&mut self.int) => Stop::Quick("SIGINT"),
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

/// How long each kind of stop lets connections finish.
#[derive(Debug, Clone, Copy)]
pub struct Windows {
    pub drain: Window,
    pub quick: Duration,
}

/// Stops accepting (the listeners stay open), then waits for the open connections to close
/// by themselves until the window ends, and cuts whatever is left. SIGUSR1 is acted on once;
/// SIGTERM/SIGINT during a drain shorten it to `delay_exit_time`, as in obproxy. Returns the
/// stop that decided the exit: a SIGTERM during a SIGUSR1 drain takes over.
pub async fn drain(
    first: Stop,
    acceptors: Acceptors,
    connections: &Connections,
    signals: &mut StopSignals,
    windows: Windows,
) -> Stop {
    acceptors.stop().await;
    let mut stop = first;
    let mut window = match stop {
        Stop::Drain => windows.drain,
        Stop::Quick(_) => Window::Within(windows.quick),
    };
    event!(
        "drain begun",
        "signal={} open_connections={} window={window}",
        stop.signal_name(),
        connections.open()
    );
    let mut deadline = deadline_of(window);
    loop {
        tokio::select! {
            // Checked first so a window of 0 with no connection reads as idle, not cut.
            biased;
            _ = connections.all_closed() => {
                event!("drain finished", "reason=idle cut=0");
                return stop;
            }
            _ = until(deadline) => break,
            next = signals.next() => match next {
                Stop::Quick(_) if stop == Stop::Drain => {
                    stop = next;
                    window = Window::Within(windows.quick);
                    deadline = deadline_of(window);
                    event!("drain shortened", "signal={} window={window}", stop.signal_name());
                }
                _ => event!("signal ignored", "signal={} reason=already-stopping", next.signal_name()),
            },
        }
    }
    let cut = connections.open();
    connections.cut_all();
    connections.all_closed().await;
    event!("drain finished", "reason=window cut={cut}");
    stop
}

fn deadline_of(window: Window) -> Option<Instant> {
    match window {
        Window::Unlimited => None,
        // A window too long to represent is as good as none.
        Window::Within(d) => Instant::now().checked_add(d),
    }
}

async fn until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => sleep_until(at).await,
        None => pending().await,
    }
}

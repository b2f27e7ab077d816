//! Stopping: the stop signals (SIGUSR1 drain, SIGTERM/SIGINT quick exit) and the drain they start, which lets sessions leave at transaction boundaries as its allowance shrinks and ends when no connection is left or its window runs out.

use std::future::pending;
use std::time::Duration;

use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::time::{Instant, MissedTickBehavior, interval, sleep_until};

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

/// How often sessions idle at a boundary look at the shrinking allowance again.
const BEAT: Duration = Duration::from_millis(100);

/// How many sessions a drain still allows to stay open: obproxy's linear shrink from the
/// count at the start to zero at the window end, rounded up (`need_active_count` in
/// `ObMysqlClientSession::need_close`). Rounding up means the last session may stay until
/// the window end.
#[derive(Debug, Clone, Copy)]
pub struct Allowance {
    began: Instant,
    initial: usize,
    window: Window,
}

impl Allowance {
    pub fn new(began: Instant, initial: usize, window: Window) -> Self {
        Allowance {
            began,
            initial,
            window,
        }
    }

    pub fn allowed_at(&self, now: Instant) -> usize {
        let Window::Within(window) = self.window else {
            // No window: the allowance never shrinks; sessions leave only by themselves.
            return self.initial;
        };
        let elapsed = now.saturating_duration_since(self.began);
        match window.checked_sub(elapsed) {
            Some(remaining) if !remaining.is_zero() => {
                let share = self.initial as u128 * remaining.as_nanos();
                share.div_ceil(window.as_nanos()) as usize
            }
            _ => 0,
        }
    }
}

/// How long each kind of stop lets connections finish.
#[derive(Debug, Clone, Copy)]
pub struct Windows {
    pub drain: Window,
    pub quick: Duration,
}

/// Stops accepting (the listeners stay open), then lets MySQL sessions leave at transaction
/// boundaries while the allowance shrinks, waits for the rest to close by themselves until
/// the window ends, and cuts whatever is left. SIGUSR1 is acted on once; SIGTERM/SIGINT
/// during a drain shorten it to `delay_exit_time`, as in obproxy, with a new allowance from
/// the sessions still open. Returns the stop that decided the exit: a SIGTERM during a
/// SIGUSR1 drain takes over.
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
    let open = connections.begin_drain(window);
    event!(
        "drain begun",
        "signal={} open_connections={open} window={window}",
        stop.signal_name(),
    );
    let mut deadline = deadline_of(window);
    let mut beat = interval(BEAT);
    beat.set_missed_tick_behavior(MissedTickBehavior::Delay);
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
                    connections.begin_drain(window);
                    event!("drain shortened", "signal={} window={window}", stop.signal_name());
                }
                _ => event!("signal ignored", "signal={} reason=already-stopping", next.signal_name()),
            },
            _ = beat.tick() => connections.beat(),
        }
    }
    connections.cut_all();
    connections.all_closed().await;
    // `cut` counts what the window end interrupted: sessions in a transaction or with a
    // command in flight, and connections nothing is known of (echo, not MySQL).
    let (cut, at_boundary) = connections.cut_report();
    event!(
        "drain finished",
        "reason=window cut={cut} closed_at_boundary={at_boundary}"
    );
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

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed(initial: usize, window: Window, after_ms: u64) -> usize {
        let began = Instant::now();
        Allowance::new(began, initial, window).allowed_at(began + Duration::from_millis(after_ms))
    }

    #[test]
    fn the_allowance_shrinks_linearly_rounding_up() {
        let ten = Window::Within(Duration::from_secs(10));
        assert_eq!(allowed(2, ten, 0), 2);
        assert_eq!(allowed(2, ten, 1), 2);
        assert_eq!(allowed(2, ten, 4_999), 2);
        assert_eq!(allowed(2, ten, 5_000), 1);
        assert_eq!(
            allowed(2, ten, 9_999),
            1,
            "the last one may stay to the end"
        );
        assert_eq!(allowed(2, ten, 10_000), 0);
        assert_eq!(allowed(2, ten, 60_000), 0);
        let six = Window::Within(Duration::from_secs(6));
        assert_eq!(allowed(3, six, 1_999), 3);
        assert_eq!(allowed(3, six, 2_000), 2);
        assert_eq!(allowed(3, six, 4_000), 1);
        assert_eq!(allowed(0, six, 0), 0);
    }

    #[test]
    fn no_window_never_shrinks_and_a_zero_window_allows_none() {
        assert_eq!(allowed(5, Window::Unlimited, 3_600_000), 5);
        assert_eq!(allowed(5, Window::Within(Duration::ZERO), 0), 0);
    }
}

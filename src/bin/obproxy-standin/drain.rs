//! Stopping: what asked for it (SIGUSR1 drain, SIGTERM/SIGINT quick exit, `proxy_local_cmd = 1`) and the drain itself, which lets sessions leave at transaction boundaries as its allowance shrinks and ends when no connection is left or its window runs out.

use std::future::pending;
use std::time::Duration;

use tokio::time::{Instant, sleep_until};

use crate::forward::{Acceptors, Connections};
use crate::proxy::Proxy;
use crate::signals::{Received, Signals};

/// What asked the process to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// SIGUSR1: graceful drain over `hot_upgrade_exit_timeout`.
    Drain,
    /// SIGTERM or SIGINT: drain over `delay_exit_time`; obproxy then counts the exit as an
    /// abort (`OB_GOT_SIGNAL_ABORTING`, v4.3.1:src/obproxy/ob_proxy_main.cpp:907-923).
    Quick(&'static str),
    /// `proxy_local_cmd = 1`: the same quick window, as `OB_SERVER_IS_STOPPING`
    /// (v4.3.1:src/obproxy/obutils/ob_hot_upgrade_processor.cpp:1751-1758).
    LocalExit,
}

impl Stop {
    pub fn name(self) -> &'static str {
        match self {
            Stop::Drain => "SIGUSR1",
            Stop::Quick(name) => name,
            Stop::LocalExit => "proxy_local_cmd=1",
        }
    }

    /// Whether the exit counts as normal, which is when obproxy tells its parent with
    /// SIGUSR2 (`g_proxy_fatal_errcode == OB_SUCCESS`, v4.3.1:src/obproxy/iocore/net/ob_unix_net.cpp:85-94).
    pub fn is_normal(self) -> bool {
        self == Stop::Drain
    }
}

/// A drain window: `-1` in obproxy's config means no limit, `0` means cut at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    Unlimited,
    Within(Duration),
}

impl Window {
    /// `hot_upgrade_exit_timeout` in microseconds, as the SIGUSR1 handler reads it at that
    /// moment (v4.3.1:src/obproxy/ob_proxy_main.cpp:887-889): the window is fixed then, and
    /// a later `ALTER` changes the next drain, not this one.
    pub fn exit_timeout(proxy: &Proxy) -> Window {
        match proxy.config().int("hot_upgrade_exit_timeout") {
            us if us < 0 => Window::Unlimited,
            us => Window::Within(Duration::from_micros(us as u64)),
        }
    }

    /// `delay_exit_time` (100 ms to 500 ms), read at the signal (:918-920).
    pub fn delay_exit(proxy: &Proxy) -> Window {
        Window::Within(proxy.config().time("delay_exit_time"))
    }

    fn deadline(self) -> Option<Instant> {
        match self {
            Window::Unlimited => None,
            // A window too long to represent is as good as none.
            Window::Within(d) => Instant::now().checked_add(d),
        }
    }
}

impl std::fmt::Display for Window {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Window::Unlimited => f.write_str("unlimited"),
            // "1s500ms", not "1s 500ms": log values must not contain spaces.
            Window::Within(d) => {
                let text = humantime::format_duration(*d).to_string();
                f.write_str(&text.replace(' ', ""))
            }
        }
    }
}

/// A signal that is not a stop: SIGUSR2 makes a 4.1+ process forget its native child
/// (v4.3.1:src/obproxy/ob_proxy_main.cpp:896-906); SIGHUP changes nothing here.
pub fn other_signal(proxy: &Proxy, signal: Received) {
    if signal == Received::Usr2 {
        crate::native::forget_child(proxy);
    }
    event!("signal received", "signal={}", signal.name());
}

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

/// Stops accepting (the listeners stay open), then lets MySQL sessions leave at transaction
/// boundaries while the allowance shrinks, waits for the rest to close by themselves until
/// the window ends, and cuts whatever is left. During it, SIGTERM/SIGINT restart the window
/// at `delay_exit_time` and make the exit an abort; a SIGUSR1 not yet acted on restarts it at
/// `hot_upgrade_exit_timeout` (both handlers just set a new end, ob_proxy_main.cpp:872-923),
/// each time with a new allowance from the sessions still open. Returns the stop that
/// decided how the exit counts.
pub async fn drain(
    first: Stop,
    acceptors: Acceptors,
    proxy: &Proxy,
    connections: &Connections,
    signals: &mut Signals,
) -> Stop {
    acceptors.stop(proxy).await;
    let mut stop = first;
    let mut window = match stop {
        Stop::Drain => Window::exit_timeout(proxy),
        Stop::Quick(_) | Stop::LocalExit => Window::delay_exit(proxy),
    };
    let open = connections.begin_drain(window);
    event!(
        "drain begun",
        "signal={} open_connections={open} window={window}",
        stop.name(),
    );
    let mut deadline = window.deadline();
    loop {
        tokio::select! {
            // Checked first so a window of 0 with no connection reads as idle, not cut.
            biased;
            _ = connections.all_closed() => {
                event!("drain finished", "reason=idle cut=0");
                return stop;
            }
            _ = until(deadline) => break,
            signal = signals.next() => {
                let restarted = match signal {
                    Received::Term | Received::Int => {
                        stop = Stop::Quick(signal.name());
                        Some(Window::delay_exit(proxy))
                    }
                    Received::Usr1 if proxy.act_on_sigusr1() => Some(Window::exit_timeout(proxy)),
                    Received::Usr1 => {
                        event!("signal ignored", "signal=SIGUSR1 reason=already-acted-on");
                        None
                    }
                    other => {
                        other_signal(proxy, other);
                        None
                    }
                };
                if let Some(new) = restarted {
                    window = new;
                    deadline = window.deadline();
                    connections.begin_drain(window);
                    event!("drain restarted", "signal={} window={window}", signal.name());
                }
            }
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

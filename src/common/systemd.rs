//! What systemd is told: ready, stopping, watchdog. Every message is a no-op
//! without `$NOTIFY_SOCKET`, so the daemons run the same outside systemd.
//!
//! A daemon calls [`ready`] once its gRPC server is bound (connections from
//! then on are served), then runs [`run`] until shutdown: it pings the
//! watchdog only when a liveness probe through the daemon's own main loop
//! answers, and says STOPPING=1 when shutdown starts.
use std::{future::Future, time::Duration};

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;

/// READY=1: the daemon serves; `systemctl start` returns and units ordered
/// after it may start.
pub fn ready() {
    send(&[NotifyState::Ready]);
}

/// STOPPING=1: shutdown has started.
pub fn stopping() {
    send(&[NotifyState::Stopping]);
}

fn send(states: &[NotifyState]) {
    // A failed notification must not take the daemon down: without READY
    // systemd times the start out, without WATCHDOG it restarts us, which
    // is the right outcome for a socket we cannot reach anyway.
    if let Err(error) = sd_notify::notify(states) {
        let what: Vec<String> = states.iter().map(ToString::to_string).collect();
        tracing::warn!(%error, message = ?what, "cannot notify systemd");
    }
}

/// How often to ping the watchdog: half its timeout (as sd_watchdog_enabled(3)
/// advises), or None when the unit has no `WatchdogSec=` (or the variables
/// are meant for another process: `WATCHDOG_PID` is not ours).
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled()
        .filter(|timeout| !timeout.is_zero())
        .map(|timeout| timeout / 2)
}

/// Until `shutdown`: WATCHDOG=1 at half the watchdog timeout, each one earned
/// by `probe` answering `true` within that half. Then STOPPING=1.
///
/// The probe goes through the daemon's main loop (the supervisor, the task
/// store), so a wedged daemon stops pinging and systemd restarts it, while a
/// timer alone would keep a dead daemon "alive".
pub async fn run<P, F>(shutdown: CancellationToken, probe: P)
where
    P: FnMut() -> F,
    F: Future<Output = bool>,
{
    let interval = watchdog_interval();
    if let Some(interval) = interval {
        tracing::info!(interval = %humantime::format_duration(interval), "systemd watchdog on");
    }
    keep_alive(interval, &shutdown, probe, || {
        send(&[NotifyState::Watchdog])
    })
    .await;
    stopping();
}

async fn keep_alive<P, F>(
    interval: Option<Duration>,
    shutdown: &CancellationToken,
    mut probe: P,
    mut ping: impl FnMut(),
) where
    P: FnMut() -> F,
    F: Future<Output = bool>,
{
    let Some(interval) = interval else {
        shutdown.cancelled().await;
        return;
    };
    let mut tick = tokio::time::interval(interval);
    // After a slow probe, wait a whole interval again rather than firing
    // the missed ticks in a burst.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let answered = tokio::select! {
            _ = shutdown.cancelled() => return,
            answered = tokio::time::timeout(interval, probe()) => answered,
        };
        match answered {
            Ok(true) => ping(),
            Ok(false) => tracing::warn!("liveness probe failed; withholding the watchdog ping"),
            Err(_) => tracing::warn!(
                within = %humantime::format_duration(interval),
                "liveness probe did not answer; withholding the watchdog ping"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        cell::Cell,
        sync::{
            Arc,
            atomic::{AtomicBool, Ordering},
        },
    };

    use super::*;

    const INTERVAL: Duration = Duration::from_millis(100);

    #[tokio::test(start_paused = true)]
    async fn pings_stop_when_the_probe_stops_answering() {
        let shutdown = CancellationToken::new();
        let healthy = Arc::new(AtomicBool::new(true));
        let pings = Cell::new(0u32);
        let probe = {
            let healthy = healthy.clone();
            move || {
                let healthy = healthy.clone();
                async move {
                    if healthy.load(Ordering::SeqCst) {
                        true
                    } else {
                        // Wedged: never answers.
                        std::future::pending().await
                    }
                }
            }
        };
        let run = keep_alive(Some(INTERVAL), &shutdown, probe, || {
            pings.set(pings.get() + 1)
        });
        let script = async {
            // Ticks at 0, 100, 200 and 300 ms answer.
            tokio::time::sleep(INTERVAL * 3 + INTERVAL / 2).await;
            assert_eq!(pings.get(), 4);
            healthy.store(false, Ordering::SeqCst);
            tokio::time::sleep(INTERVAL * 10).await;
            assert_eq!(pings.get(), 4, "a wedged daemon must not ping");
            shutdown.cancel();
        };
        tokio::join!(run, script);
    }

    #[tokio::test(start_paused = true)]
    async fn a_false_probe_earns_no_ping() {
        let shutdown = CancellationToken::new();
        let pings = Cell::new(0u32);
        let run = keep_alive(
            Some(INTERVAL),
            &shutdown,
            || async { false },
            || pings.set(pings.get() + 1),
        );
        let script = async {
            tokio::time::sleep(INTERVAL * 5).await;
            shutdown.cancel();
        };
        tokio::join!(run, script);
        assert_eq!(pings.get(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_watchdog_it_only_waits_for_shutdown() {
        let shutdown = CancellationToken::new();
        let probes = Cell::new(0u32);
        let pings = Cell::new(0u32);
        let run = keep_alive(
            None,
            &shutdown,
            || {
                probes.set(probes.get() + 1);
                async { true }
            },
            || pings.set(pings.get() + 1),
        );
        tokio::pin!(run);
        // Ten intervals on, it still waits, having neither probed nor pinged.
        assert!(
            tokio::time::timeout(INTERVAL * 10, &mut run).await.is_err(),
            "returned before shutdown"
        );
        assert_eq!((probes.get(), pings.get()), (0, 0));
        shutdown.cancel();
        tokio::time::timeout(INTERVAL, run)
            .await
            .expect("shutdown ends it");
        assert_eq!(pings.get(), 0);
    }
}

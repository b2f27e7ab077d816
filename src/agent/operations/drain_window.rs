//! How a HOT restart's drain window reaches the old process. obproxy drains
//! with the `hot_upgrade_exit_timeout` it has when SIGUSR1 arrives, not with
//! anything given to its successor, so the window is set on the old process
//! over admin SQL (and read back) while it is still the only one accepting.
//! Without admin SQL, a shorter window is the agent's SIGKILL at the deadline
//! (cutting what is still open) and a longer one is refused.
use std::{net::SocketAddr, time::Duration};

use super::{Ctl, Error};
use crate::{
    agent::{
        admin_sql::{Admin, AdminError, Item},
        operation_log::Phase,
        supervisor_protocol::{DRAIN_GRACE, Drain, FactUpdate},
    },
    common::error_chain::describe,
};

/// What was settled for the old process's drain.
pub struct Settled {
    pub drain: Drain,
    /// The window the process had before admin SQL changed it, to put back
    /// if the restart fails before the drain begins.
    changed_from: Option<Duration>,
}

fn format(d: Duration) -> humantime::FormattedDuration {
    humantime::format_duration(d)
}

async fn set_window(admin: &Admin, window: Duration) -> Result<(), AdminError> {
    let mut session = admin.connect().await?;
    let result = session.set_verified(Item::ExitTimeout(window)).await;
    session.close().await;
    result
}

/// Gives `old` the drain `window`, or says how the agent enforces it.
/// `addr` reaches the SQL listener; only `old` may be accepting on it.
pub async fn settle(
    ctl: &Ctl,
    old: u32,
    window: Duration,
    addr: SocketAddr,
) -> Result<Settled, Error> {
    let own = ctl.facts(old).await?.ok_or(Error::NotServing)?.exit_window;
    let graceful = Drain {
        kill_after: window + DRAIN_GRACE,
        exporter_lost: true,
    };
    let reason = match ctl.admin(addr) {
        None => "admin SQL is off (no [obproxy] sys_password_file)".to_string(),
        Some(admin) => match set_window(&admin, window).await {
            Ok(()) => {
                ctl.update(old, FactUpdate::ExitWindow(window));
                ctl.progress(
                    Phase::Spawning,
                    format!(
                        "pid {old}: hot_upgrade_exit_timeout = {} µs ({}) over admin SQL, \
                         verified with SHOW PROXYCONFIG",
                        window.as_micros(),
                        format(window)
                    ),
                );
                return Ok(Settled {
                    drain: graceful,
                    changed_from: own.filter(|&o| o != window),
                });
            }
            Err(e) => format!("admin SQL failed ({})", describe(&e)),
        },
    };
    let settled = |drain| Settled {
        drain,
        changed_from: None,
    };
    match own {
        Some(own) if own == window => Ok(settled(graceful)),
        Some(own) if window < own => {
            ctl.progress(
                Phase::Spawning,
                format!(
                    "{reason}: pid {old} keeps the {} window it was started with, so the \
                     requested {} is enforced by SIGKILL at the deadline; sessions still open \
                     then are cut",
                    format(own),
                    format(window)
                ),
            );
            Ok(settled(Drain {
                kill_after: window,
                exporter_lost: true,
            }))
        }
        Some(own) => Err(Error::WindowTooLong {
            pid: old,
            requested: window,
            own,
            reason,
        }),
        None => {
            ctl.progress(
                Phase::Spawning,
                format!(
                    "{reason}, and the window pid {old} drains with is unknown: SIGKILL at {} \
                     (+{} grace)",
                    format(window),
                    format(DRAIN_GRACE)
                ),
            );
            Ok(settled(graceful))
        }
    }
}

/// The restart failed before the drain began: the old process serves on,
/// with the window it had (best effort; the failure is what gets reported).
pub async fn restore(ctl: &Ctl, old: u32, settled: &Settled, addr: SocketAddr) {
    let (Some(previous), Some(admin)) = (settled.changed_from, ctl.admin(addr)) else {
        return;
    };
    match set_window(&admin, previous).await {
        Ok(()) => ctl.update(old, FactUpdate::ExitWindow(previous)),
        Err(e) => ctl.progress(
            Phase::Done,
            format!(
                "pid {old} keeps the drain window of this restart: putting {} back failed: {}",
                format(previous),
                describe(&e)
            ),
        ),
    }
}

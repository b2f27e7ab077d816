//! HOT restart through obproxy's own mechanism (`restart_strategy =
//! "native"`): over admin SQL the old process gets the drain window and a
//! rollback timeout of `start_timeout`, then `proxy_local_cmd = 2`. obproxy
//! then forks and executes its own binary on the same sockets (the RPC
//! listener and the Prometheus exporter included) and stops accepting at
//! once; the child's readiness goes to its parent, which drains. The agent
//! records the child, learns it is ready when it accepts the agent's own
//! login, and makes it the serving process.
use std::time::Duration;

use tokio::time::Instant;

use super::{Ctl, Error, restart_hot};
use crate::{
    agent::{
        admin_sql::{Admin, AdminError, BinaryInfo, Item, answers},
        obproxy::{procfs, version},
        operation_log::{Phase, Request},
        supervisor_protocol::{DRAIN_GRACE, Drain, FactUpdate, Step},
    },
    common::error_chain::describe,
};

/// obproxy's default `proxy_hot_upgrade_check_interval`.
const CHECK_INTERVAL: Duration = Duration::from_secs(5);
/// Beyond the interval, how long the fork may take to show.
const FORK_SLACK: Duration = Duration::from_secs(2);
/// How often /proc is looked at for the child (nothing signals its fork).
const LOOK_EVERY: Duration = Duration::from_millis(100);
const RETRY_CONNECT: Duration = Duration::from_millis(100);
/// obproxy kills a child that is not ready within its rollback timeout (set
/// to `start_timeout`); the agent does so itself only this much later, should
/// obproxy not.
const ROLLBACK_MARGIN: Duration = Duration::from_secs(2);
/// At most how long after its fork the child is found (and then recorded).
const FOUND_AFTER_FORK: Duration = Duration::from_secs(1);

fn format(d: Duration) -> humantime::FormattedDuration {
    humantime::format_duration(d)
}

pub async fn run(ctl: &Ctl, request: &Request) -> Result<Option<u32>, Error> {
    let cfg = &ctl.config.obproxy;
    let old = ctl.serving_at_start.ok_or(Error::NotServing)?;
    // The request names another binary only when it is not the configured
    // one (see agent::service::requests::binary).
    if let Some(binary) = request.binary.as_ref() {
        ctl.progress(
            Phase::Queued,
            format!(
                "obproxy's own restart re-executes the running binary; moving onto {} takes \
                 the agent's own hot restart instead",
                binary.path().display()
            ),
        );
        return restart_hot::run(ctl, request).await;
    }
    let window = request.exit_timeout.unwrap_or(cfg.hot_upgrade_exit_timeout);
    let listeners = ctl.bind_listeners(false).await?;
    let addr = listeners.probe_addrs[0];
    ctl.refuse_strangers().await?;
    let facts = ctl.facts(old).await?.ok_or(Error::NotServing)?;
    // obproxy re-executes argv[0]: the child runs what that file is now.
    let version = version::probe_path(&facts.binary, &cfg.home).await?;
    let admin = ctl.admin(addr).ok_or(AdminError::NotConfigured)?;
    let interval = prepare(ctl, &admin, old, window).await?;
    ctl.progress(
        Phase::Spawning,
        format!(
            "pid {old}: hot_upgrade_exit_timeout = {} µs and hot_upgrade_rollback_timeout = {} \
             (start_timeout) verified, proxy_local_cmd = 2 sent; obproxy forks its child within \
             {} and stops accepting at once (new connections wait in the listener's backlog)",
            window.as_micros(),
            format(cfg.start_timeout),
            format(interval)
        ),
    );
    let child = match wait_for_child(ctl, &admin, old, interval + FORK_SLACK).await? {
        Found::Forked(child) => child,
        Found::Adopted(child) => return adopted(ctl, &admin, old, child).await,
    };
    let recorded = ctl
        .sup
        .step(|reply| Step::AdoptChild {
            parent: old,
            child,
            version: version.clone(),
            // It reads what the parent keeps in etc/: the window set above.
            exit_window: window,
            reply,
        })
        .await
        .ok_or(Error::Gone)?;
    if let Err(e) = recorded {
        // An idle parent may be gone already, its child adopted as it left.
        return match serving_other_than(ctl, old).await? {
            Some(child) => adopted(ctl, &admin, old, child).await,
            None => Err(e.into()),
        };
    }
    ctl.progress(
        Phase::WaitingReady,
        format!(
            "pid {child} (version {version}) forked by pid {old}; waiting until it accepts \
             (its readiness signal goes to pid {old}, not to the agent)"
        ),
    );
    let info = wait_accepting(ctl, &admin, old, child).await?;
    ctl.update(child, FactUpdate::BinaryInfo(info.clone()));
    let drain = Drain {
        kill_after: window + DRAIN_GRACE,
        exporter_lost: false,
    };
    let Some(old) = ctl.promote(child, Some(drain)).await? else {
        ctl.progress(
            Phase::Done,
            serving_note(old, child, &info, "is gone already"),
        );
        return Ok(Some(child));
    };
    let draining = format!(
        "drains within {} (SIGKILL at {})",
        format(window),
        format(drain.kill_after)
    );
    ctl.progress(Phase::Draining, serving_note(old, child, &info, &draining));
    let exit = ctl.wait_exit(old).await?;
    ctl.progress(Phase::Done, format!("pid {old} {exit}"));
    Ok(Some(child))
}

fn serving_note(old: u32, child: u32, info: &BinaryInfo, parent: &str) -> String {
    format!(
        "pid {child} (forked by pid {old}) serving, it reports version {} build {}; pid {old} \
         {parent}; obproxy's Prometheus exporter moved with it",
        info.version, info.build
    )
}

/// Sets the window and the rollback timeout on the old process (verified),
/// reads its check interval, and asks for the restart.
async fn prepare(ctl: &Ctl, admin: &Admin, old: u32, window: Duration) -> Result<Duration, Error> {
    let mut session = admin.connect().await?;
    let result = async {
        session.set_verified(Item::ExitTimeout(window)).await?;
        ctl.update(old, FactUpdate::ExitWindow(window));
        // A child that never confirms is killed by obproxy after this, and
        // the parent accepts again (24 h by default).
        session
            .set_verified(Item::RollbackTimeout(ctl.config.obproxy.start_timeout))
            .await?;
        let interval = session
            .show("proxy_hot_upgrade_check_interval")
            .await
            .ok()
            .and_then(|v| answers::parse_time(&v))
            .unwrap_or(CHECK_INTERVAL);
        session.set(Item::LocalCmd(2)).await?;
        Ok::<_, AdminError>(interval)
    }
    .await;
    session.close().await;
    Ok(result?)
}

/// What became of the restart asked of `old`.
enum Found {
    /// Its child, forked on our listener, found in /proc.
    Forked(u32),
    /// Its child was quicker: ready, the idle parent drained and gone, and
    /// the child adopted as it left (the story is in this operation).
    Adopted(u32),
}

/// The serving process, if it is no longer `old`.
async fn serving_other_than(ctl: &Ctl, old: u32) -> Result<Option<u32>, Error> {
    Ok(ctl.processes().await?.0.filter(|&pid| pid != old))
}

/// The child serves already: ask it what it is, and the restart is done.
async fn adopted(ctl: &Ctl, admin: &Admin, old: u32, child: u32) -> Result<Option<u32>, Error> {
    let mut session = admin.connect().await?;
    let info = session.binary_info().await;
    session.close().await;
    let info = info?;
    ctl.update(child, FactUpdate::BinaryInfo(info.clone()));
    ctl.progress(
        Phase::Done,
        serving_note(old, child, &info, "is gone already"),
    );
    Ok(Some(child))
}

/// The process `old` forked on our listener, looked for in /proc.
async fn wait_for_child(
    ctl: &Ctl,
    admin: &Admin,
    old: u32,
    within: Duration,
) -> Result<Found, Error> {
    let deadline = Instant::now() + within;
    let mut old_gone: Option<Instant> = None;
    loop {
        for stranger in ctl.strangers().await? {
            if procfs::parent_pid(stranger.pid()).ok() == Some(old) {
                return Ok(Found::Forked(stranger.pid()));
            }
        }
        if let Some(child) = serving_other_than(ctl, old).await? {
            return Ok(Found::Adopted(child));
        }
        // The parent may leave before its child is adopted (the exit is seen
        // first, the adoption follows in its own step): keep looking a little
        // longer, then say no one serves.
        if ctl.facts(old).await?.is_none() {
            let gone = *old_gone.get_or_insert_with(Instant::now);
            if gone.elapsed() >= FOUND_AFTER_FORK {
                return Err(Error::NotServing);
            }
        }
        if Instant::now() >= deadline {
            // Take the command back, so it does not fire later by surprise.
            if let Ok(mut s) = admin.connect().await {
                let _ = s.set(Item::LocalCmd(0)).await;
                s.close().await;
            }
            return Err(Error::NoNativeChild {
                pid: old,
                waited: within,
            });
        }
        tokio::time::sleep(LOOK_EVERY).await;
    }
}

/// Waits until `child` accepts a connection: the parent stopped accepting
/// at the fork, so whoever answers is the child. Its binary info is what it
/// says about itself.
async fn wait_accepting(
    ctl: &Ctl,
    admin: &Admin,
    old: u32,
    child: u32,
) -> Result<BinaryInfo, Error> {
    let timeout = ctl.config.obproxy.start_timeout;
    let began = Instant::now();
    let deadline = began + timeout + ROLLBACK_MARGIN;
    let not_ready = Error::NativeNotReady {
        pid: child,
        parent: old,
        timeout,
    };
    let died = ctl.wait_exit(child);
    tokio::pin!(died);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            ctl.kill(child).await?;
            return Err(not_ready);
        }
        let attempt = tokio::select! {
            exit = &mut died => {
                let exit = exit?;
                // At the rollback timeout (counted from the fork, a moment
                // before the child was found) it is obproxy that killed it.
                return Err(if began.elapsed() + FOUND_AFTER_FORK >= timeout {
                    not_ready
                } else {
                    Error::NativeChildDied { pid: child, parent: old, exit }
                });
            }
            attempt = admin.connect_within(left) => attempt,
        };
        match attempt {
            Ok(mut session) => {
                let info = session.binary_info().await;
                session.close().await;
                // A child that died has given the socket back to its parent:
                // only a live one was the one that answered.
                if ctl.facts(child).await?.is_none() {
                    continue;
                }
                return Ok(info?);
            }
            Err(e) if e.was_answered() => return Err(e.into()),
            Err(e) => {
                tracing::debug!(pid = child, error = %describe(&e), "not accepting yet");
                tokio::time::sleep(RETRY_CONNECT.min(left)).await;
            }
        }
    }
}

//! Hot restart (and hot upgrade onto another binary): the new obproxy starts
//! on the same listener sockets while the old one keeps serving; only once
//! the new one is ready is the old one told to drain (SIGUSR1), with the
//! window the request asked for (see `drain_window`). A new process that
//! fails is killed and the old one never noticed anything.
use super::{
    Ctl, Error,
    bring_up::{Probe, bring_up},
    drain_window,
};
use crate::agent::{
    obproxy::executable::Binary,
    operation_log::{Phase, Request},
};

pub async fn run(ctl: &Ctl, request: &Request) -> Result<Option<u32>, Error> {
    let cfg = &ctl.config.obproxy;
    let old = ctl.serving_at_start.ok_or(Error::NotServing)?;
    let window = request.exit_timeout.unwrap_or(cfg.hot_upgrade_exit_timeout);
    let binary = match request.binary.clone() {
        Some(upgrade) => Binary::Opened(upgrade),
        None => Binary::Configured(cfg.binary.clone()),
    };
    let listeners = ctl.bind_listeners(false).await?;
    let addr = listeners.probe_addrs[0];
    // Only the old process may accept while its window is set over SQL.
    ctl.refuse_strangers().await?;
    let settled = drain_window::settle(ctl, old, window, addr).await?;
    // The new process drains, in its turn, with the configured window; a
    // request's window is for this restart's old process only.
    let new = match bring_up(
        ctl,
        binary,
        cfg.hot_upgrade_exit_timeout,
        Probe::ListenerOnly,
    )
    .await
    {
        Ok(new) => new,
        Err(e) => {
            drain_window::restore(ctl, old, &settled, addr).await;
            return Err(e);
        }
    };
    // The new process serves from here on; the supervisor holds the old one's
    // drain deadline and SIGKILLs it there. (The process that served may have
    // changed meanwhile, if obproxy restarted itself and was adopted.)
    // Promoted, DRAINING published and SIGUSR1 sent in one step of the
    // supervisor's: nothing else runs between them.
    let kill_after = settled.drain.kill_after;
    let (old, exited) = ctl
        .hand_over(new, old, settled.drain, move |old| {
            format!(
                "pid {new} serving; SIGUSR1 to pid {old} to drain within {} (SIGKILL at {})",
                humantime::format_duration(window),
                humantime::format_duration(kill_after)
            )
        })
        .await?;
    let exit = exited.await.map_err(|_| Error::Gone)?;
    ctl.progress(Phase::Done, format!("pid {old} {exit}"));
    Ok(Some(new))
}

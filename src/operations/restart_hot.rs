//! Hot restart (and hot upgrade onto another binary): the new obproxy starts
//! on the same listener sockets while the old one keeps serving; only once
//! the new one is ready is the old one told to drain (SIGUSR1). A new process
//! that fails is killed and the old one never noticed anything.
use nix::sys::signal::Signal;

use super::{
    Ctl, Error,
    bring_up::{Probe, bring_up},
};
use crate::{
    obproxy::executable::Binary, operation::Phase, operation::Request, supervisor::DRAIN_GRACE,
};

pub async fn run(ctl: &Ctl, request: &Request) -> Result<Option<u32>, Error> {
    let cfg = &ctl.config.obproxy;
    let old = ctl.serving_at_start.ok_or(Error::NotServing)?;
    let window = request.exit_timeout.unwrap_or(cfg.hot_upgrade_exit_timeout);
    let binary = match request.binary.clone() {
        Some(upgrade) => Binary::Opened(upgrade),
        None => Binary::Configured(cfg.binary.clone()),
    };
    let new = bring_up(ctl, binary, window, Probe::ListenerOnly).await?;
    // The new process serves from here on; the supervisor holds the old one's
    // drain deadline (window + grace) and SIGKILLs it there.
    ctl.promote(new, Some(window)).await?;
    ctl.progress(
        Phase::Draining,
        format!(
            "pid {new} serving; SIGUSR1 to pid {old} to drain within {} (+{} grace)",
            humantime::format_duration(window),
            humantime::format_duration(DRAIN_GRACE)
        ),
    );
    ctl.signal(old, Signal::SIGUSR1).await?;
    let exit = ctl.wait_exit(old).await?;
    ctl.progress(Phase::Done, format!("pid {old} {exit}"));
    Ok(Some(new))
}

//! Force restart: SIGKILL, then start on the held listeners. Sessions are
//! cut, but new connections wait in the listener's backlog meanwhile.
use std::time::Duration;

use nix::sys::signal::Signal;

use super::{
    Ctl, Error,
    bring_up::{Probe, bring_up},
};
use crate::agent::operation_log::Phase;

pub async fn run(ctl: &Ctl) -> Result<Option<u32>, Error> {
    ctl.set_desired(true);
    let (serving, draining, starting) = ctl.processes().await?;
    let pids: Vec<u32> = serving
        .into_iter()
        .chain(draining)
        .chain(starting)
        .collect();
    if !pids.is_empty() {
        ctl.progress(Phase::Killing, format!("SIGKILL to pids {pids:?}"));
        ctl.end_all(&pids, Signal::SIGKILL, Duration::from_secs(10))
            .await?;
    }
    // Nothing obproxy forked for its own restart may serve beside the new one.
    ctl.end_strangers(Phase::Killing, Signal::SIGKILL, Duration::from_secs(10))
        .await?;
    let cfg = &ctl.config.obproxy;
    let pid = bring_up(
        ctl,
        cfg.binary.clone(),
        cfg.hot_upgrade_exit_timeout,
        Probe::Tcp,
    )
    .await?;
    ctl.promote(pid, None).await?;
    Ok(Some(pid))
}

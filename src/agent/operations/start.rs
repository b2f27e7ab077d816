//! Start: bind (or reuse) the listeners, spawn obproxy, wait for readiness.
use super::{
    Ctl, Error,
    bring_up::{Probe, bring_up},
};
use crate::agent::operation_log::Phase;

pub async fn run(ctl: &Ctl) -> Result<Option<u32>, Error> {
    ctl.set_desired(true);
    if let Some(pid) = ctl.serving_at_start {
        ctl.progress(Phase::Done, format!("already running as pid {pid}"));
        return Ok(Some(pid));
    }
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

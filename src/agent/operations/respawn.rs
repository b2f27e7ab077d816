//! Respawn: obproxy died while it should run; start it again on the held
//! listeners (the supervisor decides when, with backoff).
use super::{
    Ctl, Error,
    bring_up::{Probe, bring_up},
};
use crate::agent::operation_log::Phase;

pub async fn run(ctl: &Ctl) -> Result<Option<u32>, Error> {
    ctl.progress(
        Phase::Binding,
        "obproxy is down while it should run; starting it again".to_string(),
    );
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

//! Stop: SIGTERM, `stop_timeout`, SIGKILL, for our processes and for any
//! other that holds our listeners; then close the listeners so load
//! balancers see the port down.
use nix::sys::signal::Signal;

use super::{Ctl, Error};
use crate::agent::operation_log::Phase;

pub async fn run(ctl: &Ctl) -> Result<Option<u32>, Error> {
    // Desired state first: an exit seen from now on is no crash.
    ctl.set_desired(false);
    let (serving, draining, starting) = ctl.processes().await?;
    let pids: Vec<u32> = serving
        .into_iter()
        .chain(draining)
        .chain(starting)
        .collect();
    if !pids.is_empty() {
        let grace = ctl.config.obproxy.stop_timeout;
        ctl.progress(
            Phase::Stopping,
            format!(
                "SIGTERM to pids {pids:?}; SIGKILL after {}",
                humantime::format_duration(grace)
            ),
        );
        ctl.end_all(&pids, Signal::SIGTERM, grace).await?;
    }
    // A child obproxy forked for its own restart holds the socket too: the
    // port closes only once it is gone as well.
    ctl.end_strangers(
        Phase::Stopping,
        Signal::SIGTERM,
        ctl.config.obproxy.stop_timeout,
    )
    .await?;
    ctl.progress(
        Phase::ClosingListeners,
        "closing the SQL listeners".to_string(),
    );
    ctl.close_listeners().await?;
    Ok(None)
}

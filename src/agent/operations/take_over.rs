//! Take-over: confirm the obproxy found listening on the configured SQL port
//! (one process, the configured program in the configured home, `-V` of the
//! very binary it runs), take copies of its listeners and make it the
//! serving process. It is neither signalled nor restarted.
use super::{Ctl, Error};
use crate::agent::{
    obproxy::{discovery, executable::Executable, version},
    operation_log::Phase,
    supervisor_protocol::{Adoption, Step},
};

pub async fn run(ctl: &Ctl) -> Result<Option<u32>, Error> {
    let cfg = ctl.config.obproxy.clone();
    ctl.progress(
        Phase::Binding,
        format!(
            "the agent has no state and something listens on {:?}: looking for the obproxy there",
            cfg.listen
        ),
    );
    let lookup = cfg.clone();
    let found = tokio::task::spawn_blocking(move || discovery::find(&lookup))
        .await
        .map_err(|_| Error::Gone)??;
    let Some(found) = found else {
        ctl.progress(Phase::Done, "nothing listens there any more".to_string());
        return Ok(None);
    };
    let pid = found.pidfd.pid();
    // `-V` of the very binary it runs, even if replaced on disk since.
    let running = Executable::open(std::path::Path::new(&format!("/proc/{pid}/exe")))?;
    let version = version::probe(&running, &cfg.home).await?;
    ctl.progress(
        Phase::WaitingReady,
        format!(
            "pid {pid} runs {} (version {version}) in {}; holding copies of its SQL listener(s) \
             {:?}{}",
            found.exe.display(),
            cfg.home.display(),
            found.sql_addrs,
            if found.rpc.is_empty() {
                String::new()
            } else {
                format!(" and RPC listener(s) {:?}", found.rpc_addrs)
            }
        ),
    );
    let adoption = Box::new(Adoption { found, version });
    let pid = ctl
        .sup
        .step(|reply| Step::Adopt { adoption, reply })
        .await
        .ok_or(Error::Gone)??;
    ctl.progress(
        Phase::Done,
        format!("pid {pid} is the serving obproxy; the agent manages it from now on"),
    );
    Ok(Some(pid))
}

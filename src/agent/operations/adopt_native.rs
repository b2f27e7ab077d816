//! The record of a native restart the agent did not ask for: the supervisor
//! has already made obproxy's child the serving process (see
//! `supervisor_protocol::native`); this operation reads what the child is (its
//! binary's version, and over admin SQL what it reports about itself) and
//! writes it into the operation's events.
use super::{Ctl, Error};
use crate::{
    agent::{
        admin_sql::{self, Admin, AdminError, BinaryInfo},
        obproxy::version,
        operation_log::Phase,
        supervisor_protocol::FactUpdate,
    },
    common::error_chain::describe,
};

async fn binary_info(admin: &Admin) -> Result<BinaryInfo, AdminError> {
    let mut session = admin.connect().await?;
    let info = session.binary_info().await;
    session.close().await;
    info
}

pub async fn run(ctl: &Ctl) -> Result<Option<u32>, Error> {
    let pid = ctl.serving_at_start.ok_or(Error::NotServing)?;
    let facts = ctl.facts(pid).await?.ok_or(Error::NotServing)?;
    // The child re-executed the program its parent was started as.
    ctl.progress(
        Phase::WaitingReady,
        format!("reading the version of {}", facts.binary.display()),
    );
    match version::probe_path(&facts.binary, &ctl.config.obproxy.home).await {
        Ok(v) if v == facts.version => {}
        Ok(v) => {
            ctl.update(pid, FactUpdate::Version(v.clone()));
            ctl.progress(
                Phase::WaitingReady,
                format!(
                    "pid {pid} runs version {v} (its parent ran {})",
                    facts.version
                ),
            );
        }
        Err(e) => ctl.progress(
            Phase::WaitingReady,
            format!(
                "cannot read the version of {}: {}; keeping {}",
                facts.binary.display(),
                describe(&e),
                facts.version
            ),
        ),
    }
    let addr = ctl.bind_listeners(false).await?.probe_addrs[0];
    let note = match ctl.admin(addr) {
        None => format!(
            "{}; the adoption rests on /proc (listener socket, parent, executable, working \
             directory)",
            admin_sql::NOT_CONFIGURED
        ),
        Some(admin) => match binary_info(&admin).await {
            Ok(info) => {
                let note = format!(
                    "pid {pid} answers SHOW PROXYINFO BINARY: version {} build {}",
                    info.version, info.build
                );
                ctl.update(pid, FactUpdate::BinaryInfo(info));
                note
            }
            Err(e) => format!("admin SQL failed: {}", describe(&e)),
        },
    };
    ctl.progress(Phase::Done, note);
    Ok(Some(pid))
}

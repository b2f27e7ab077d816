//! What obproxy says about itself: `SHOW PROXYINFO BINARY` asked over admin
//! SQL of each serving process once (version and build for GetStatus), and
//! what the notices say while admin SQL is off or failing.
use std::time::{Duration, Instant};

use super::{Msg, Role, Supervisor};
use crate::{
    agent::admin_sql::{self, Admin},
    common::error_chain::describe,
};

/// A failed attempt is not repeated sooner than this (a wrong password must
/// not turn every GetStatus into a login).
const RETRY: Duration = Duration::from_secs(15);

#[derive(Debug, Default)]
pub(super) struct Asking {
    in_flight: bool,
    /// The pid last asked, and when.
    last: Option<(u32, Instant)>,
    /// Why the last attempt failed; None once one succeeded.
    error: Option<String>,
}

impl Supervisor {
    /// Asks the serving process for its binary info, when it is the only one
    /// that can accept the connection (no other process of ours starting, no
    /// operation under way) and has not answered yet.
    pub(super) fn ask_binary_info(&mut self) {
        let Some(password) = self.config.obproxy.admin.password.clone() else {
            return;
        };
        let Some(pid) = self.processes.serving_pid() else {
            return;
        };
        let answered = self
            .processes
            .get(pid)
            .is_some_and(|p| p.binary_info.is_some());
        let starting = self.processes.values().any(|p| p.role == Role::Starting);
        let recently = self
            .proxyinfo
            .last
            .is_some_and(|(asked, at)| asked == pid && at.elapsed() < RETRY);
        if answered
            || starting
            || recently
            || self.proxyinfo.in_flight
            || self.log.current().is_some()
            || self.shutdown.is_cancelled()
        {
            return;
        }
        let Some(addr) = self.listeners.iter().next().map(|l| l.probe_addr()) else {
            return;
        };
        self.proxyinfo.in_flight = true;
        self.proxyinfo.last = Some((pid, Instant::now()));
        let admin = Admin::new(addr, password);
        let tx = self.tx.clone();
        self.tracker.spawn(async move {
            let result = async {
                let mut session = admin.connect().await?;
                let info = session.binary_info().await;
                session.close().await;
                info
            }
            .await
            .map_err(|e| describe(&e));
            let _ = tx.send(Msg::BinaryInfo { pid, result });
        });
    }

    pub(super) fn on_binary_info(
        &mut self,
        pid: u32,
        result: Result<admin_sql::BinaryInfo, String>,
    ) {
        self.proxyinfo.in_flight = false;
        match result {
            Ok(info) => {
                tracing::info!(pid, version = %info.version, build = %info.build, "obproxy reports its binary");
                self.proxyinfo.error = None;
                if let Some(p) = self.processes.get_mut(pid) {
                    p.binary_info = Some(info);
                }
            }
            Err(e) => {
                tracing::warn!(pid, error = %e, "SHOW PROXYINFO BINARY failed");
                self.proxyinfo.error = Some(e);
            }
        }
    }

    /// What GetStatus says about admin SQL: off, or why it last failed.
    pub(super) fn admin_notices(&self) -> Option<String> {
        if self.config.obproxy.admin.password.is_none() {
            return Some(admin_sql::NOT_CONFIGURED.to_string());
        }
        self.proxyinfo
            .error
            .as_ref()
            .map(|e| format!("admin SQL failed: {e}"))
    }
}

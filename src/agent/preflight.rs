//! `odp-agent --check`: the agent's configuration as the agent would use it,
//! with obproxy's version read from the configured binary (`-V`), so a
//! combination a Start would refuse (an IPv6 listener before 4.1) is refused
//! here first.
use std::{net::SocketAddr, path::Path};

use crate::common::preflight::{Report, certificates, listen_line, paths};
use crate::{
    agent::{config::AgentConfig, obproxy::version, operations::CONFIG_BIN},
    common::{error_chain, obproxy_version, redact},
};

fn addrs(addrs: &[SocketAddr]) -> String {
    addrs
        .iter()
        .map(SocketAddr::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn check(path: &Path) -> Report {
    let mut report = Report::new(path);
    let config = match AgentConfig::load(path) {
        Ok(config) => config,
        Err(e) => {
            report.problems.push(e);
            return report;
        }
    };
    report.note_file_mode();
    let security = &config.security;
    report.plan(
        "gRPC",
        listen_line(&config.server.listen, security.tls.is_some()),
    );
    if let Some(tls) = &security.tls {
        let line = certificates::server(&mut report, tls, config.server.limits.handshake_timeout);
        report.plan("TLS", line);
    }
    if let Some(socket) = &config.server.unix_socket {
        report.plan(
            "local socket",
            crate::common::preflight::socket_line(socket),
        );
    }
    report.plan("callers", crate::common::preflight::callers(security));
    let o = &config.obproxy;
    report.plan("SQL", format!("{} (held by the agent)", addrs(&o.listen)));
    let version = obproxy(&mut report, &config);
    if let Some(version) = &version {
        let features = obproxy_version::features(version);
        if !features.ipv6
            && let Some(v6) = o.listen.iter().find(|a| a.is_ipv6())
        {
            report.problem(
                "obproxy.listen",
                format!(
                    "{v6} is IPv6, and obproxy {version} ({}) reads no inherited IPv6 listener \
                     before {}; every Start would be refused",
                    o.binary.display(),
                    obproxy_version::IPV6_SINCE
                ),
            );
        }
        let rpc = match (features.rpc_service, o.rpc_service) {
            (true, true) => format!("{} (held by the agent)", addrs(&o.rpc_addrs())),
            (true, false) => "none: enable_obproxy_rpc_service=false in -o".into(),
            (false, _) => format!(
                "none: obproxy {version} has no RPC service (from {})",
                obproxy_version::RPC_SINCE
            ),
        };
        report.plan("RPC", rpc);
        if features.needs_config_bin && !o.home.join(CONFIG_BIN).exists() {
            report.note(format!(
                "{} is missing: the first Start bootstraps (obproxy {version} binds {} itself \
                 once, then the agent holds the listener)",
                o.home.join(CONFIG_BIN).display(),
                addrs(&o.listen)
            ));
        }
    }
    let home_missing = report.problems.iter().any(|p| p.key == "obproxy.home");
    if home_missing && o.upgrade_dir.starts_with(&o.home) {
        // Said once, for the home.
    } else if let Err(reason) = paths::directory(&o.upgrade_dir) {
        report.problem("obproxy.upgrade_dir", reason);
    } else {
        report.plan(
            "upgrades",
            format!("binaries from {}", o.upgrade_dir.display()),
        );
    }
    state(&mut report, &config);
    report.plan(
        "metrics",
        config
            .metrics
            .map_or_else(|| "off".to_string(), |m| format!("{m} (GET /metrics)")),
    );
    report
}

/// obproxy's home and binary, and the binary's version. Returns the version
/// when it could be read.
fn obproxy(report: &mut Report, config: &AgentConfig) -> Option<String> {
    let o = &config.obproxy;
    if let Err(reason) = paths::directory(&o.home) {
        report.problem("obproxy.home", reason);
        return None;
    }
    if let Err(reason) = paths::executable(&o.binary) {
        report.problem("obproxy.binary", reason);
        return None;
    }
    let probed = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a runtime to run -V: {e}"))
        .and_then(|rt| {
            rt.block_on(version::probe_path(&o.binary, &o.home))
                .map_err(|e| error_chain::describe(&e))
        });
    let mut args = redact::args(&o.args);
    if let Some(optstr) = &o.optstr {
        args.extend(["-o".to_string(), redact::optstr(optstr)]);
    }
    match probed {
        Ok(version) => {
            report.plan(
                "obproxy",
                format!(
                    "{} {version}, in {}, args: {}",
                    o.binary.display(),
                    o.home.display(),
                    args.join(" ")
                ),
            );
            report.plan(
                "timeouts",
                format!(
                    "start {}, stop {}, drain window {}",
                    humantime::format_duration(o.start_timeout),
                    humantime::format_duration(o.stop_timeout),
                    humantime::format_duration(o.hot_upgrade_exit_timeout)
                ),
            );
            Some(version)
        }
        Err(reason) => {
            report.problem("obproxy.binary", reason);
            None
        }
    }
}

/// The state directory (created at start) and the audit log in it or
/// wherever `[audit] path` puts it.
fn state(report: &mut Report, config: &AgentConfig) {
    let dir = &config.state.dir;
    match paths::owned(dir) {
        Ok(Some(note)) => report.note(note),
        Ok(None) => {}
        Err(reason) => report.problem("state.dir", reason),
    }
    match paths::writable_dir(dir) {
        Ok(paths::Writable::Exists { mode }) => {
            if mode & 0o007 != 0 {
                report.note(format!(
                    "{} is open to every user (mode {mode:o}): the state file names the pids the \
                     next agent signals; the packages make it 0700",
                    dir.display()
                ));
            }
            report.plan("state", dir.display().to_string());
        }
        Ok(paths::Writable::Created) => {
            report.plan("state", format!("{} (created at start)", dir.display()));
        }
        Err(reason) => report.problem("state.dir", reason),
    }
    let audit = &config.security.audit_path;
    match paths::writable_file(audit) {
        Ok(_) => report.plan("audit log", audit.display().to_string()),
        Err(reason) => report.problem("audit.path", reason),
    }
}

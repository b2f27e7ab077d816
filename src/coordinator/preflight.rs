//! `odp-coordinator --check`: the coordinator's configuration as the
//! coordinator would use it: listeners, certificates on both sides (its
//! server and its connections to the agents), the task store's place, and
//! the clusters with their agents. No agent is contacted.
use std::path::Path;

use crate::common::preflight::{Report, certificates, listen_line, paths};
use crate::coordinator::config::CoordinatorConfig;

pub fn check(path: &Path) -> Report {
    let mut report = Report::new(path);
    let config = match CoordinatorConfig::load(path) {
        Ok(config) => config,
        Err(e) => {
            report.problems.push(e);
            return report;
        }
    };
    report.note_file_mode();
    let security = &config.security;
    let server = &config.server;
    report.plan("gRPC", listen_line(&server.listen, security.tls.is_some()));
    if let Some(tls) = &security.tls {
        let line = certificates::server(&mut report, tls, server.limits.handshake_timeout);
        report.plan("TLS", line);
    }
    if let Some(socket) = &server.unix_socket {
        report.plan(
            "local socket",
            crate::common::preflight::socket_line(socket),
        );
    }
    report.plan("callers", crate::common::preflight::callers(security));
    match &config.store {
        crate::coordinator::config::StoreConfig::Sqlite(file) => store_file(&mut report, file),
        crate::coordinator::config::StoreConfig::Metadb(m) => report.plan(
            "task store",
            format!(
                "metadb {} (shared; this coordinator runs tasks while it holds the {:?} lease; \
                 not contacted by --check)",
                m.url, m.lease
            ),
        ),
    }
    let audit = &security.audit_path;
    match paths::writable_file(audit) {
        Ok(_) => report.plan("audit log", audit.display().to_string()),
        Err(reason) => report.problem("audit.path", reason),
    }
    report.plan(
        "metrics",
        config
            .metrics
            .map_or_else(|| "off".to_string(), |m| format!("{m} (GET /metrics)")),
    );
    report.plan(
        "console",
        config.web.as_ref().map_or_else(
            || "off".to_string(),
            |w| {
                format!(
                    "{}://{} ([web] listen)",
                    if w.tls { "https" } else { "http" },
                    w.listen
                )
            },
        ),
    );
    let agents = match &config.agent_tls {
        Some(tls) => {
            let first = config
                .clusters
                .iter()
                .flat_map(|c| c.agents.first())
                .next()
                .map_or("127.0.0.1:2889", String::as_str);
            certificates::agents(&mut report, tls, first)
        }
        None => {
            // An agent refuses to serve anything but loopback without
            // [tls], so a remote one is out of reach in plaintext.
            let remote: Vec<&str> = config
                .clusters
                .iter()
                .flat_map(|c| c.agents.iter())
                .filter(|a| !is_loopback(a))
                .map(String::as_str)
                .collect();
            if !remote.is_empty() {
                report.note(format!(
                    "no [agents.tls]: agents on other hosts serve TLS only, so the \
                     coordinator could not reach {}",
                    remote.join(", ")
                ));
            }
            "plaintext (reaches agents without [tls], which listen on loopback)".into()
        }
    };
    report.plan("to agents", agents);
    let t = config.agents;
    report.plan(
        "timeouts",
        format!(
            "connect {}, status {}, request {}, operation {}",
            humantime::format_duration(t.connect_timeout),
            humantime::format_duration(t.status_timeout),
            humantime::format_duration(t.request_timeout),
            humantime::format_duration(t.operation_timeout)
        ),
    );
    if config.clusters.is_empty() {
        report.note("no [[clusters]]: the coordinator would run with nothing to operate");
    }
    for cluster in &config.clusters {
        report.plan(
            "cluster",
            format!(
                "{}: {} agent(s): {}",
                cluster.name,
                cluster.agents.len(),
                cluster.agents.join(", ")
            ),
        );
    }
    report
}

/// `127.0.0.1:2889`, `[::1]:2889`, `localhost:2889`.
fn is_loopback(agent: &str) -> bool {
    match agent.parse::<std::net::SocketAddr>() {
        Ok(addr) => addr.ip().is_loopback(),
        Err(_) => agent
            .rsplit_once(':')
            .is_some_and(|(host, _)| host == "localhost"),
    }
}

/// The SQLite file: its directory owned, the file writable.
fn store_file(report: &mut Report, file: &Path) {
    if let Some(dir) = file.parent() {
        match paths::owned(dir) {
            Ok(Some(note)) => report.note(note),
            Ok(None) => {}
            Err(reason) => report.problem("store.path", reason),
        }
    }
    match paths::writable_file(file) {
        Ok(paths::Writable::Exists { .. }) => report.plan(
            "task store",
            format!("{} (unfinished tasks resume at start)", file.display()),
        ),
        Ok(paths::Writable::Created) => report.plan(
            "task store",
            format!("{} (created at start)", file.display()),
        ),
        Err(reason) => report.problem("store.path", reason),
    }
}

//! The coordinator daemon: opens the task store, resumes unfinished tasks,
//! serves gRPC (with TLS, the callers' guard, reflection and health, and the
//! optional metrics endpoint) until SIGTERM or SIGINT, and tells systemd how
//! it is doing.
use std::sync::Arc;

use tokio_util::{sync::CancellationToken, task::TaskTracker};

use super::{
    agent_pool::{AgentPool, PoolError},
    config::CoordinatorConfig,
    config::StoreConfig,
    leadership::Leadership,
    service::CoordinatorService,
    store::{Store, StoreError},
    task_manager::{Tasks, Term},
};
use crate::{
    common::{
        grpc_server::{self, SHUTDOWN_GRACE, ServeError},
        metrics_endpoint::{self, MetricsError},
        systemd,
    },
    coordinator::metrics::CoordinatorMetrics,
    proto::coordinator::coordinator_server::CoordinatorServer,
    security::{audit::AuditError, guard::Guard, role::Role},
};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Serve(#[from] ServeError),
    #[error("cannot install signal handlers")]
    Signals(#[source] std::io::Error),
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    #[error(transparent)]
    Audit(#[from] AuditError),
    #[error(transparent)]
    Agents(#[from] PoolError),
    #[error(transparent)]
    Console(#[from] super::web::listener::ListenError),
}

impl Error {
    /// Whether the configuration is at fault (an unreadable certificate or
    /// audit log): exit with EX_CONFIG, so systemd does not restart in a loop.
    pub fn is_config(&self) -> bool {
        matches!(
            self,
            Error::Audit(_)
                | Error::Agents(_)
                | Error::Console(_)
                | Error::Store(StoreError::Dir(_) | StoreError::SchemaNewer { .. })
                | Error::Serve(
                    ServeError::Tls { .. } | ServeError::TlsFiles(_) | ServeError::Socket(_)
                )
        )
    }
}

pub async fn run(config: CoordinatorConfig) -> Result<(), Error> {
    let config = Arc::new(config);
    // With a metadb, the coordinator's own files have a directory of their
    // own (with SQLite, the store makes its file's).
    if let StoreConfig::Metadb(m) = &config.store {
        crate::security::files::private_dir(&m.state_dir).map_err(StoreError::Dir)?;
    }
    // Before anything starts: a daemon that cannot audit or speak TLS as
    // configured must not run at all.
    let guard = Guard::from_config(&config.security)?;
    // The TLS settings are checked (files, key permissions) before anything
    // starts; the listeners' own servers are built below.
    grpc_server::builder(config.security.tls.as_ref(), &config.server.limits)?;
    let pool = Arc::new(AgentPool::new(config.agents, config.agent_tls.as_ref())?);
    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    let store = Arc::new(Store::open(&config.store).await?);
    let metrics = Arc::new(CoordinatorMetrics::new());
    let tasks = Tasks::new(
        config.clone(),
        store.clone(),
        pool,
        tracker.clone(),
        shutdown.clone(),
        metrics.clone(),
    );

    let stop = shutdown.clone();
    let signal = |kind| tokio::signal::unix::signal(kind).map_err(Error::Signals);
    use tokio::signal::unix::SignalKind;
    let mut term = signal(SignalKind::terminate())?;
    // SIGHUP (logrotate) opens the audit log again; its default action
    // would end the coordinator.
    let mut hup = signal(SignalKind::hangup())?;
    let audit = guard.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = tokio::signal::ctrl_c() => break,
                _ = hup.recv() => {
                    tracing::info!(signal = "SIGHUP", "reopening the audit log");
                    crate::common::panics::injected("coordinator-signals");
                    audit.reopen_audit();
                }
            }
        }
        tracing::info!("shutting down; running tasks resume at the next start");
        stop.cancel();
    });

    let bound = grpc_server::bind_all(&config.server).await?;
    let addr = bound.addr;
    // With SQLite this coordinator runs every task; with a metadb, whoever
    // holds the lease does.
    let resumed = match &config.store {
        StoreConfig::Sqlite(_) => {
            tasks.set_name(default_holder(addr));
            let term = Term {
                fence: None,
                stop: shutdown.clone(),
            };
            tasks.lead(term).await?
        }
        StoreConfig::Metadb(m) => {
            let holder = m.holder.clone().unwrap_or_else(|| default_holder(addr));
            tasks.set_name(holder.clone());
            tracing::info!(metadb = %m.url, holder = %holder, lease = ?m.lease, "tasks in the metadb: leading while holding its lease");
            let leadership = Leadership {
                store: store.clone(),
                tasks: tasks.clone(),
                metrics: metrics.clone(),
                holder,
                lease: m.lease,
                shutdown: shutdown.clone(),
            };
            tracker.spawn(leadership.run());
            0
        }
    };
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<CoordinatorServer<CoordinatorService>>()
        .await;
    let routes = |mut server: grpc_server::Builder| {
        let service = CoordinatorServer::new(CoordinatorService::new(
            tasks.clone(),
            metrics.clone(),
            guard.clone(),
        ))
        .max_decoding_message_size(config.server.max_message_bytes);
        grpc_server::with_reflection(
            server
                .add_service(health_service.clone())
                .add_service(service),
        )
    };
    if let Some(listen) = config.metrics {
        let endpoint = metrics_endpoint::Endpoint::bind(listen).await?;
        tracing::info!(metrics_addr = %endpoint.addr, "metrics endpoint serving");
        tracker.spawn(endpoint.serve(metrics.clone().router(), shutdown.clone()));
    }
    if let Some(web) = &config.web {
        let service = CoordinatorService::new(tasks.clone(), metrics.clone(), guard.clone());
        let (listener, router) = super::web::start(
            web,
            config.security.tls.as_ref(),
            service,
            guard.clone(),
            shutdown.clone(),
        )
        .await?;
        tracing::info!(console_addr = %listener.addr, tls = web.tls, "console serving");
        tracker.spawn(listener.serve(router, shutdown.clone()));
    }
    tracing::info!(
        grpc_addr = %addr,
        grpc_socket = ?bound.unix.as_ref().map(|(_, p)| p),
        pid = std::process::id(),
        resumed,
        tls = config.security.tls.is_some(),
        agents_tls = config.agent_tls.is_some(),
        audit = %config.security.audit_path.display(),
        "odp-coordinator serving"
    );
    if config.security.loopback_role == Role::Operator {
        tracing::warn!(
            "server.loopback_role = OBPROXY_MANAGER: every local user may operate over loopback TCP"
        );
    }
    // The gRPC listener is bound, so connections from here on are served.
    systemd::ready();
    // Watchdog pings earned by a cheap read of the task store (on a blocking
    // thread: a wedged store must stall the probe, not the runtime).
    tracker.spawn(systemd::run(shutdown.clone(), move || {
        let store = store.clone();
        async move {
            // SQLite's calls block; the metadb's are bounded by their deadline.
            match &*store {
                Store::Sqlite(_) => tokio::task::spawn_blocking(move || {
                    tokio::runtime::Handle::current().block_on(store.list(None, 1))
                })
                .await
                .is_ok_and(|r| r.is_ok()),
                Store::Metadb(_) => store.list(None, 1).await.is_ok(),
            }
        }
    }));
    // Connections to the agents and the task store's files come out of the
    // same descriptor limit as the callers' connections.
    let agents: usize = config.clusters.iter().map(|c| c.agents.len()).sum();
    let result = grpc_server::serve_all(
        routes,
        config.security.tls.clone(),
        config.server.clone(),
        bound,
        grpc_server::accept::RESERVED_FDS + agents as u64,
        shutdown.clone(),
    )
    .await;
    shutdown.cancel();
    tracker.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("tasks still running at shutdown; leaving them");
    }
    tracing::info!("odp-coordinator stopped");
    Ok(result?)
}

/// The name a coordinator holds the lease under unless `[store] holder`
/// says: this host and its gRPC port.
fn default_holder(addr: std::net::SocketAddr) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    let host = if host.is_empty() {
        addr.ip().to_string()
    } else {
        host
    };
    format!("{host}:{}", addr.port())
}

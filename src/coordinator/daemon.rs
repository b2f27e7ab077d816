//! The coordinator daemon: opens the task store, resumes unfinished tasks,
//! serves gRPC (with TLS, the callers' guard, reflection and health, and the
//! optional metrics endpoint) until SIGTERM or SIGINT, and tells systemd how
//! it is doing.
use std::sync::Arc;

use tokio_util::{sync::CancellationToken, task::TaskTracker};

use super::{
    agents::{AgentPool, PoolError},
    config::CoordinatorConfig,
    service::CoordinatorService,
    store::{Store, StoreError},
    tasks::Tasks,
};
use crate::{
    grpc_server::{self, SHUTDOWN_GRACE, ServeError},
    metrics::{self, MetricsError, coordinator::CoordinatorMetrics},
    proto::coordinator::coordinator_server::CoordinatorServer,
    security::audit::AuditError,
    systemd,
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
}

impl Error {
    /// Whether the configuration is at fault (an unreadable certificate or
    /// audit log): exit with EX_CONFIG, so systemd does not restart in a loop.
    pub fn is_config(&self) -> bool {
        matches!(
            self,
            Error::Audit(_)
                | Error::Agents(_)
                | Error::Serve(ServeError::Tls { .. } | ServeError::TlsFiles(_))
        )
    }
}

pub async fn run(config: CoordinatorConfig) -> Result<(), Error> {
    let config = Arc::new(config);
    // Before anything starts: a daemon that cannot audit or speak TLS as
    // configured must not run at all.
    let guard = config.security.guard()?;
    let mut server = grpc_server::builder(config.security.tls.as_ref())?;
    let pool = Arc::new(AgentPool::new(config.agents, config.agent_tls.as_ref())?);
    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    let store = Arc::new(Store::open(&config.store_path)?);
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
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(Error::Signals)?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        tracing::info!("shutting down; running tasks resume at the next start");
        stop.cancel();
    });

    let (listener, addr) = grpc_server::bind(config.listen).await?;
    let resumed = tasks.resume_all()?;
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<CoordinatorServer<CoordinatorService>>()
        .await;
    let service = CoordinatorServer::new(CoordinatorService::new(tasks, metrics.clone(), guard))
        .max_decoding_message_size(config.max_message_bytes);
    let router = server.add_service(health_service).add_service(service);
    let router = grpc_server::with_reflection(router)?;
    if let Some(listen) = config.metrics {
        let endpoint = metrics::Endpoint::bind(listen).await?;
        tracing::info!(metrics_addr = %endpoint.addr, "metrics endpoint serving");
        tracker.spawn(endpoint.serve(metrics.router(), shutdown.clone()));
    }
    tracing::info!(
        grpc_addr = %addr,
        pid = std::process::id(),
        resumed,
        tls = config.security.tls.is_some(),
        agents_tls = config.agent_tls.is_some(),
        audit = %config.security.audit_path.display(),
        "odp-coordinator serving"
    );
    // The gRPC listener is bound, so connections from here on are served.
    systemd::ready();
    // Watchdog pings earned by a cheap read of the task store (on a blocking
    // thread: a wedged store must stall the probe, not the runtime).
    tracker.spawn(systemd::run(shutdown.clone(), move || {
        let store = store.clone();
        async move {
            tokio::task::spawn_blocking(move || store.list(None, 1).is_ok())
                .await
                .unwrap_or(false)
        }
    }));
    let result = grpc_server::serve(router, listener, shutdown.clone()).await;
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

//! The agent daemon: wires the signal thread, the spawner, the supervisor,
//! the gRPC server (with TLS, the callers' guard, reflection and health), the
//! optional metrics endpoint and what systemd is told, and runs until
//! SIGTERM or SIGINT. Its shutdown leaves obproxy serving.
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    agent::{
        config::AgentConfig,
        metrics::AgentMetrics,
        obproxy::spawner::Spawner,
        operation_log::{Kind, Request},
        sampling::{Sampler, SystemProbe},
        service::AgentService,
        signals,
        status_report::Reporter,
        supervisor::Supervisor,
    },
    common::{
        grpc_server::{self, SHUTDOWN_GRACE, ServeError},
        metrics_endpoint::{self, MetricsError},
        systemd,
    },
    proto::agent::agent_server::AgentServer,
    security::{audit::AuditError, guard::Guard, role::Role},
};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot install signal handlers")]
    Signals(#[source] std::io::Error),
    #[error("cannot start the spawner thread")]
    Spawner(#[source] std::io::Error),
    #[error("cannot start the sampler thread")]
    Sampler(#[source] std::io::Error),
    #[error(transparent)]
    Serve(#[from] ServeError),
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    #[error(transparent)]
    Audit(#[from] AuditError),
}

impl Error {
    /// Whether the configuration is at fault (an unreadable certificate or
    /// audit log): exit with EX_CONFIG, so systemd does not restart in a loop.
    pub fn is_config(&self) -> bool {
        matches!(
            self,
            Error::Audit(_)
                | Error::Serve(
                    ServeError::Tls { .. } | ServeError::TlsFiles(_) | ServeError::Socket(_)
                )
        )
    }
}

/// Runs the agent until SIGTERM/SIGINT. With `start_proxy`, obproxy is
/// started at once (the demo); otherwise it waits to be told.
pub async fn run(config: AgentConfig, start_proxy: bool) -> Result<(), Error> {
    let config = Arc::new(config);
    // Before anything starts: a daemon that cannot audit or serve TLS as
    // configured must not run at all.
    let guard = Guard::from_config(&config.security)?;
    // The TLS settings are checked (files, key permissions) before anything
    // starts; the listeners' own servers are built below.
    grpc_server::builder(config.security.tls.as_ref(), &config.server.limits)?;
    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();

    // Handlers first: a child's SIGUSR1 must never meet the default action.
    // SIGHUP (logrotate) opens the audit log again.
    let (child_tx, child_rx) = mpsc::unbounded_channel();
    let audit = guard.clone();
    signals::listen(child_tx, shutdown.clone(), move || audit.reopen_audit())
        .map_err(Error::Signals)?;
    // Processes that lose their parent (an obproxy's own children) come to
    // us and are reaped, instead of lingering as zombies.
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        tracing::warn!(error = %e, "cannot become child subreaper");
    }
    // obproxy is exec'd through links named after its binary (see
    // `spawner::named_program`), kept in the agent's private state directory.
    let spawner = Spawner::start(config.state.dir.join("exec")).map_err(Error::Spawner)?;

    let metrics = Arc::new(AgentMetrics::new());
    let (supervisor, handle) = Supervisor::new(
        config.clone(),
        spawner,
        tracker.clone(),
        shutdown.clone(),
        metrics.clone(),
    );
    // Signals go straight to the supervisor, no task in between.
    tracker.spawn(supervisor.run(child_rx));
    let sampler = Sampler::start(SystemProbe::default()).map_err(Error::Sampler)?;
    let reporter = Reporter::new(handle.clone(), sampler);

    // Callers are served on threads of their own (see CallerRuntime): the
    // supervisor and the operations keep this runtime to themselves.
    let callers = grpc_server::CallerRuntime::new().map_err(ServeError::Runtime)?;
    let settings = config.server.clone();
    let bound = callers
        .run(async move { grpc_server::bind_all(&settings).await })
        .await??;
    let addr = bound.addr;
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<AgentServer<AgentService>>().await;
    let routes = {
        let (handle, reporter, config, guard) = (
            handle.clone(),
            reporter.clone(),
            config.clone(),
            guard.clone(),
        );
        move |mut server: grpc_server::Builder| {
            let service = AgentServer::new(AgentService::new(
                handle.clone(),
                reporter.clone(),
                config.clone(),
                guard.clone(),
            ))
            .max_decoding_message_size(config.server.max_message_bytes);
            grpc_server::with_reflection(
                server
                    .add_service(health_service.clone())
                    .add_service(service),
            )
        }
    };

    if let Some(listen) = config.metrics {
        let endpoint = callers
            .run(metrics_endpoint::Endpoint::bind(listen))
            .await??;
        tracing::info!(metrics_addr = %endpoint.addr, "metrics endpoint serving");
        let router = metrics.router(reporter.clone());
        tracker.spawn_on(endpoint.serve(router, shutdown.clone()), callers.handle());
    }

    tracing::info!(
        grpc_addr = %addr,
        grpc_socket = ?bound.unix.as_ref().map(|(_, p)| p),
        pid = std::process::id(),
        tls = config.security.tls.is_some(),
        loopback_role = %config.security.loopback_role,
        audit = %config.security.audit_path.display(),
        "odp-agent serving"
    );
    if config.security.loopback_role == Role::Operator {
        tracing::warn!(
            "server.loopback_role = OBPROXY_MANAGER: every local user may operate over loopback TCP"
        );
    }
    // The gRPC listener is bound, so connections from here on are served.
    systemd::ready();
    // Watchdog pings earned by a round trip through the supervisor (on its
    // supervision queue, which callers cannot fill): a wedged supervisor
    // stops them and systemd restarts the agent.
    let probe = handle.clone();
    tracker.spawn(systemd::run(shutdown.clone(), move || {
        let probe = probe.clone();
        async move { probe.ping().await }
    }));
    if start_proxy {
        let request = Request {
            kind: Kind::Start,
            request_id: None,
            exit_timeout: None,
            binary: None,
        };
        if let Err(e) = handle.submit(request).await {
            tracing::error!(error = %e, "cannot start obproxy");
        }
    }
    let result = callers
        .run(grpc_server::serve_all(
            routes,
            config.security.tls.clone(),
            config.server.clone(),
            bound,
            grpc_server::accept::RESERVED_FDS,
            shutdown.clone(),
        ))
        .await
        .and_then(|r| r);
    shutdown.cancel();
    tracker.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("tasks still running at shutdown; leaving them");
    }
    tracing::info!("odp-agent stopped");
    Ok(result?)
}

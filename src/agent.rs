//! The agent daemon: wires the signal thread, the spawner, the supervisor and
//! the gRPC server (with reflection and health), and runs until SIGTERM or
//! SIGINT. Its shutdown leaves obproxy serving.
use std::{net::SocketAddr, sync::Arc, time::Duration};

use tokio::sync::mpsc;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    agent_service::AgentService,
    config::AgentConfig,
    obproxy::spawner::Spawner,
    proto::{self, agent::agent_server::AgentServer},
    signals,
    supervisor::Supervisor,
};

/// How long in-flight RPCs (say a `wait: true` Restart) get at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot install signal handlers")]
    Signals(#[source] std::io::Error),
    #[error("cannot start the spawner thread")]
    Spawner(#[source] std::io::Error),
    #[error("cannot listen for gRPC on {addr}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot build the reflection service")]
    Reflection(#[source] tonic_reflection::server::Error),
    #[error("gRPC server failed")]
    Serve(#[source] tonic::transport::Error),
}

/// Runs the agent until SIGTERM/SIGINT. With `start_proxy`, obproxy is
/// started at once (the demo); otherwise it waits to be told.
pub async fn run(config: AgentConfig, start_proxy: bool) -> Result<(), Error> {
    let config = Arc::new(config);
    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();

    // Handlers first: a child's SIGUSR1 must never meet the default action.
    let (child_tx, child_rx) = mpsc::unbounded_channel();
    signals::listen(child_tx, shutdown.clone()).map_err(Error::Signals)?;
    let spawner = Spawner::start().map_err(Error::Spawner)?;

    let (supervisor, handle) =
        Supervisor::new(config.clone(), spawner, tracker.clone(), shutdown.clone());
    handle.forward_signals(child_rx);
    tracker.spawn(supervisor.run());

    let listener = tokio::net::TcpListener::bind(config.server.listen)
        .await
        .map_err(|source| Error::Listen {
            addr: config.server.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| Error::Listen {
        addr: config.server.listen,
        source,
    })?;

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<AgentServer<AgentService>>().await;
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(Error::Reflection)?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(Error::Reflection)?;

    tracing::info!(grpc_addr = %addr, pid = std::process::id(), "odp-agent serving");
    if start_proxy {
        let request = crate::operation::Request {
            kind: crate::operation::Kind::Start,
            request_id: None,
            exit_timeout: None,
            binary: None,
        };
        if let Err(e) = handle.submit(request).await {
            tracing::error!(error = %e, "cannot start obproxy");
        }
    }
    let service = AgentService::new(handle.clone(), config.clone());
    let stop = shutdown.clone();
    let server = tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(AgentServer::new(service))
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            async move { stop.cancelled().await },
        );
    // Graceful, but bounded: a client that keeps its connection open must not
    // keep the agent from exiting.
    let result = tokio::select! {
        r = server => r.map_err(Error::Serve),
        _ = async { shutdown.cancelled().await; tokio::time::sleep(SHUTDOWN_GRACE).await } => {
            tracing::warn!("gRPC connections still open after the grace period; closing them");
            Ok(())
        }
    };
    shutdown.cancel();
    tracker.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("tasks still running at shutdown; leaving them");
    }
    tracing::info!("odp-agent stopped");
    result
}

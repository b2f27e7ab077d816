//! The Prometheus endpoint (`GET /metrics`) both daemons can serve, off
//! unless `[metrics] listen` is set. Each daemon owns its registry
//! (`agent::metrics`, `coordinator::metrics`); this module binds, serves and
//! encodes.

use std::net::SocketAddr;

use axum::{
    Router,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use crate::common::grpc_server::{accept, conn::Conn, settings::Limits};

/// What `prometheus_client` encodes (Prometheus reads it natively).
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("cannot listen for metrics on {addr}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// A bound metrics listener: bound before the daemon reports ready, so the
/// endpoint answers as soon as systemd says the daemon is up.
pub struct Endpoint {
    listener: tokio::net::TcpListener,
    pub addr: SocketAddr,
}

impl Endpoint {
    pub async fn bind(addr: SocketAddr) -> Result<Self, MetricsError> {
        let err = |source| MetricsError::Listen { addr, source };
        let listener = tokio::net::TcpListener::bind(addr).await.map_err(err)?;
        let addr = listener.local_addr().map_err(err)?;
        Ok(Self { listener, addr })
    }

    /// Serves `router` until `shutdown`. A failure is logged, not returned:
    /// losing the metrics must not take the daemon down. Scrapers get the
    /// gRPC listeners' bounds: a few connections at once, a request within
    /// the handshake timeout, closed when idle.
    pub async fn serve(self, router: Router, shutdown: CancellationToken) {
        let addr = self.addr;
        let cap = accept::fit_to_fd_limit(MAX_SCRAPERS, accept::RESERVED_FDS, "metrics");
        let listener = Capped {
            conns: Box::pin(accept::incoming(
                self.listener,
                cap,
                false,
                Limits::default(),
            )),
            addr,
        };
        let served = axum::serve(listener, router)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(error) = served {
            tracing::error!(metrics_addr = %addr, %error, "metrics endpoint failed");
        }
    }
}

/// Connections the metrics endpoint admits at once.
const MAX_SCRAPERS: usize = 16;

type Conns = std::pin::Pin<
    Box<dyn futures::Stream<Item = std::io::Result<Conn<tokio::net::TcpStream>>> + Send>,
>;

/// The metrics listener with the gRPC listeners' accept loop (cap, clocks,
/// back-off when out of descriptors).
struct Capped {
    conns: Conns,
    addr: SocketAddr,
}

impl axum::serve::Listener for Capped {
    type Io = Conn<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, SocketAddr) {
        use futures::StreamExt;
        loop {
            // The loop never ends and handles its own errors.
            if let Some(Ok(conn)) = self.conns.next().await {
                return (conn, self.addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.addr)
    }
}

/// A scrape's answer: the registry in the text format.
pub(crate) fn encode(registry: &Registry) -> Response {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, registry) {
        Ok(()) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], body).into_response(),
        // Only a formatter error, which writing to a String never raises.
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

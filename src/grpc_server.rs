//! What both daemons' gRPC servers share: TLS when configured, bounds on
//! what a caller may send, server reflection over our protos and grpc.health
//! (so grpcurl needs no proto files), and a graceful shutdown bounded by a
//! grace period.
use std::{net::SocketAddr, time::Duration};

use tokio_util::sync::CancellationToken;
use tonic::transport::{Server, server::Router};

use crate::{
    proto,
    security::{
        config::TlsConfig,
        tls::{self, TlsFileError},
    },
};

/// How long in-flight RPCs (say a `wait: true` restart) get at shutdown.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot load the TLS settings")]
    TlsFiles(#[from] TlsFileError),
    #[error("bad TLS certificate or key (cert {cert}, key {key})")]
    Tls {
        cert: std::path::PathBuf,
        key: std::path::PathBuf,
        #[source]
        source: tonic::transport::Error,
    },
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

/// Request metadata (headers) a caller may send: an authorization header is
/// well under 1 KiB. hyper's default is the same today; stated here so an
/// upgrade cannot widen it unnoticed.
const MAX_HEADER_LIST_BYTES: u32 = 16 * 1024;

/// A server builder with TLS when `tls` is set and the header bound.
pub fn builder(tls: Option<&TlsConfig>) -> Result<Server, ServeError> {
    let server = Server::builder().http2_max_header_list_size(MAX_HEADER_LIST_BYTES);
    let Some(cfg) = tls else { return Ok(server) };
    server
        .tls_config(tls::server(cfg)?)
        .map_err(|source| ServeError::Tls {
            cert: cfg.cert.clone(),
            key: cfg.key.clone(),
            source,
        })
}

/// Adds reflection (v1 and v1alpha: grpcurl versions differ) to a router.
pub fn with_reflection(router: Router) -> Result<Router, ServeError> {
    let v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(ServeError::Reflection)?;
    let v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(ServeError::Reflection)?;
    Ok(router.add_service(v1).add_service(v1alpha))
}

pub async fn bind(addr: SocketAddr) -> Result<(tokio::net::TcpListener, SocketAddr), ServeError> {
    let err = |source| ServeError::Listen { addr, source };
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(err)?;
    let bound = listener.local_addr().map_err(err)?;
    Ok((listener, bound))
}

/// Accepted connections with Nagle off: a small gRPC response must not wait
/// for the client's delayed ACK (about 40 ms a call otherwise).
pub fn incoming(
    listener: tokio::net::TcpListener,
) -> impl futures::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use futures::StreamExt;
    tokio_stream::wrappers::TcpListenerStream::new(listener).map(|conn| {
        conn.inspect(|stream| {
            let _ = stream.set_nodelay(true);
        })
    })
}

/// Serves until `shutdown`; then lets in-flight calls finish for at most
/// [`SHUTDOWN_GRACE`], so a client that keeps its connection open cannot keep
/// the daemon from exiting.
pub async fn serve(
    router: Router,
    listener: tokio::net::TcpListener,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    let stop = shutdown.clone();
    let server = router
        .serve_with_incoming_shutdown(incoming(listener), async move { stop.cancelled().await });
    tokio::select! {
        r = server => r.map_err(ServeError::Serve),
        _ = async { shutdown.cancelled().await; tokio::time::sleep(SHUTDOWN_GRACE).await } => {
            tracing::warn!("gRPC connections still open after the grace period; closing them");
            Ok(())
        }
    }
}

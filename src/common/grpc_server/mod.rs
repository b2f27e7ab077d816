//! What both daemons' gRPC servers share: TLS when configured, bounds on
//! what a caller may send and hold ([`settings`], [`accept`], [`conn`],
//! [`calls`]), the local socket ([`unix_socket`]), server reflection over
//! our protos and grpc.health (so grpcurl needs no proto files), and a
//! graceful shutdown bounded by a grace period.
pub mod accept;
pub mod calls;
pub mod conn;
pub mod settings;
pub mod unix_socket;

use std::{net::SocketAddr, time::Duration};

use futures::Stream;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;
use tonic::transport::{
    Server,
    server::{Connected, Router},
};
use tower::layer::util::{Identity, Stack};

use self::{
    calls::CallBudget,
    settings::{Limits, Settings},
};

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
    #[error(transparent)]
    Socket(#[from] unix_socket::SocketError),
    #[error("cannot start the threads that serve callers")]
    Runtime(#[source] std::io::Error),
    #[error("the gRPC server stopped unexpectedly")]
    Stopped,
}

/// Request metadata (headers) a caller may send: an authorization header is
/// well under 1 KiB. hyper's default is the same today; stated here so an
/// upgrade cannot widen it unnoticed.
const MAX_HEADER_LIST_BYTES: u32 = 16 * 1024;

/// Concurrent HTTP/2 streams one connection may open (tonic would allow
/// any number): with the connection cap it bounds what callers can hold.
pub const MAX_CONCURRENT_STREAMS: u32 = 64;
/// Server PINGs on every connection, and how long an answer may take: a peer
/// that vanished without a FIN is found and its connection closed.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Flow-control windows: requests are small, and what a client may push
/// before the daemon reads it is bounded per stream and per connection.
const STREAM_WINDOW: u32 = 64 * 1024;
const CONNECTION_WINDOW: u32 = 256 * 1024;

/// A server builder with every bound, and the calls-in-flight budget.
pub type Builder = Server<Stack<CallBudget, Identity>>;
pub type Routed = Router<Stack<CallBudget, Identity>>;

/// A server builder with TLS when `tls` is set, the bounds, and a budget of
/// calls in flight of its own (one per listener).
pub fn builder(tls: Option<&TlsConfig>, limits: &Limits) -> Result<Builder, ServeError> {
    let server = Server::builder()
        .http2_max_header_list_size(MAX_HEADER_LIST_BYTES)
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .layer(CallBudget::default());
    let Some(cfg) = tls else { return Ok(server) };
    server
        .tls_config(tls::server(cfg, limits.handshake_timeout)?)
        .map_err(|source| ServeError::Tls {
            cert: cfg.cert.clone(),
            key: cfg.key.clone(),
            source,
        })
}

/// Adds reflection (v1 and v1alpha: grpcurl versions differ) to a router.
pub fn with_reflection(router: Routed) -> Result<Routed, ServeError> {
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

/// The threads that serve callers (gRPC and metrics), apart from the
/// daemon's own work: however busy callers keep them, the supervisor's
/// threads are scheduled by the kernel on their own, so signals, readiness,
/// respawns and drains are handled on time.
pub struct CallerRuntime(Option<tokio::runtime::Runtime>);

/// Worker threads for callers: gRPC work here is small and bounded, and one
/// thread leaves the other cores to supervision however hard callers push.
const CALLER_THREADS: usize = 1;

impl CallerRuntime {
    pub fn new() -> std::io::Result<Self> {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(CALLER_THREADS)
            .thread_name("grpc")
            .enable_all()
            .build()
            .map(|rt| Self(Some(rt)))
    }

    pub fn handle(&self) -> &tokio::runtime::Handle {
        self.0
            .as_ref()
            .expect("the runtime lives until dropped")
            .handle()
    }

    /// Runs `work` on the callers' threads and waits for it.
    pub async fn run<F>(&self, work: F) -> Result<F::Output, ServeError>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handle()
            .spawn(work)
            .await
            .map_err(|_| ServeError::Stopped)
    }
}

impl Drop for CallerRuntime {
    fn drop(&mut self) {
        // Dropped from async code at shutdown: it must not block there.
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// Connections the local socket admits at once: operators on the host.
pub const LOCAL_CONNECTIONS: usize = 32;

/// A daemon's bound gRPC listeners.
pub struct Bound {
    pub tcp: tokio::net::TcpListener,
    pub addr: SocketAddr,
    pub unix: Option<(tokio::net::UnixListener, std::path::PathBuf)>,
}

/// Binds the TCP address and the local socket.
pub async fn bind_all(settings: &Settings) -> Result<Bound, ServeError> {
    let (tcp, addr) = bind(settings.listen).await?;
    let unix = match &settings.unix_socket {
        Some(socket) => Some((unix_socket::bind(socket).await?, socket.path.clone())),
        None => None,
    };
    Ok(Bound { tcp, addr, unix })
}

/// Serves the routes `routes` adds on the TCP listener (over TLS when `tls`
/// is set) and on the local socket, each with its own caps, until
/// `shutdown`. `reserved_fds` descriptors are kept free of connections for
/// the daemon's own work. The local socket is removed at the end.
pub async fn serve_all(
    routes: impl Fn(Builder) -> Result<Routed, ServeError>,
    tls: Option<TlsConfig>,
    settings: Settings,
    bound: Bound,
    reserved_fds: u64,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    let limits = settings.limits;
    let local_cap = accept::fit_to_fd_limit(LOCAL_CONNECTIONS, reserved_fds, "local socket");
    let tcp_cap = accept::fit_to_fd_limit(
        limits.max_connections,
        reserved_fds + local_cap as u64,
        "server.max_connections",
    );
    let tcp_router = routes(builder(tls.as_ref(), &limits)?)?;
    let tcp = serve(
        tcp_router,
        accept::incoming(bound.tcp, tcp_cap, tls.is_some(), limits),
        shutdown.clone(),
    );
    let Some((listener, path)) = bound.unix else {
        return tcp.await;
    };
    let local_router = routes(builder(None, &limits)?)?;
    let local = serve(
        local_router,
        accept::incoming(listener, local_cap, false, limits),
        shutdown.clone(),
    );
    let (tcp, local) = tokio::join!(tcp, local);
    unix_socket::remove(&path);
    tcp.and(local)
}

pub async fn bind(addr: SocketAddr) -> Result<(tokio::net::TcpListener, SocketAddr), ServeError> {
    let err = |source| ServeError::Listen { addr, source };
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(err)?;
    let bound = listener.local_addr().map_err(err)?;
    Ok((listener, bound))
}

/// Accepted connections with Nagle off (for the simulated agents of the
/// benchmarks, which need none of the daemons' bounds).
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

/// Serves `incoming` until `shutdown`; then lets in-flight calls finish for
/// at most [`SHUTDOWN_GRACE`], so a client that keeps its connection open
/// cannot keep the daemon from exiting.
pub async fn serve<I, IO>(
    router: Routed,
    incoming: I,
    shutdown: CancellationToken,
) -> Result<(), ServeError>
where
    I: Stream<Item = std::io::Result<IO>>,
    IO: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
    IO::ConnectInfo: Clone + Send + Sync + 'static,
{
    let stop = shutdown.clone();
    let server =
        router.serve_with_incoming_shutdown(incoming, async move { stop.cancelled().await });
    tokio::select! {
        r = server => r.map_err(ServeError::Serve),
        _ = async { shutdown.cancelled().await; tokio::time::sleep(SHUTDOWN_GRACE).await } => {
            tracing::warn!("gRPC connections still open after the grace period; closing them");
            Ok(())
        }
    }
}

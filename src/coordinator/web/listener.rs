//! The console's listener: the gRPC listeners' accept loop (a cap on
//! connections, the handshake and idle clocks, back-off when out of
//! descriptors), HTTP/1.1 on each connection, over the daemon's TLS
//! certificate when `[tls]` is configured.
use std::{net::SocketAddr, sync::Arc, time::Duration};

use futures::StreamExt;
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tonic::transport::server::Connected;
use tower::ServiceExt;

use crate::{
    common::grpc_server::{accept, settings::Limits},
    security::config::TlsConfig,
};

#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("cannot listen for the console on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read the console's TLS file {path}: {reason}")]
    TlsFile {
        path: std::path::PathBuf,
        reason: String,
    },
    #[error("cannot use the console's TLS certificate")]
    Tls(#[source] rustls::Error),
}

/// Browsers open a handful of connections each; a few dozen operators at
/// once is far more than a console has.
const MAX_CONNECTIONS: usize = 128;
/// How long open connections (a task page's live feed) may take to finish
/// once the daemon is stopping.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// A bound console listener: bound before the daemon reports ready.
pub struct WebListener {
    listener: tokio::net::TcpListener,
    pub addr: SocketAddr,
    tls: Option<tokio_rustls::TlsAcceptor>,
}

impl WebListener {
    pub async fn bind(addr: SocketAddr, tls: Option<&TlsConfig>) -> Result<Self, ListenError> {
        let tls = tls.map(acceptor).transpose()?;
        let err = |source| ListenError::Bind { addr, source };
        let listener = tokio::net::TcpListener::bind(addr).await.map_err(err)?;
        let addr = listener.local_addr().map_err(err)?;
        Ok(Self {
            listener,
            addr,
            tls,
        })
    }

    /// Serves `router` until `shutdown`; each request carries its
    /// connection's `Peer` in its extensions and keeps the connection busy
    /// while it runs.
    pub async fn serve(self, router: axum::Router, shutdown: CancellationToken) {
        let limits = Limits::default();
        let cap = accept::fit_to_fd_limit(MAX_CONNECTIONS, accept::RESERVED_FDS, "console");
        let conns = accept::incoming(self.listener, cap, self.tls.is_some(), limits);
        let mut conns = std::pin::pin!(conns);
        let tracker = TaskTracker::new();
        loop {
            let conn = tokio::select! {
                _ = shutdown.cancelled() => break,
                next = conns.next() => match next {
                    Some(Ok(conn)) => conn,
                    // The accept loop logs and backs off by itself.
                    Some(Err(_)) => continue,
                    None => break,
                },
            };
            let peer = conn.connect_info();
            let router = router.clone();
            let shutdown = shutdown.clone();
            let tls = self.tls.clone();
            let handshake = limits.handshake_timeout;
            tracker.spawn(async move {
                let service = hyper::service::service_fn(move |mut request: http::Request<_>| {
                    let call = peer.begin_call();
                    request.extensions_mut().insert(peer.clone());
                    let router = router.clone();
                    async move {
                        let response = router.oneshot(request).await;
                        drop(call);
                        response
                    }
                });
                match tls {
                    None => serve_connection(TokioIo::new(conn), service, shutdown).await,
                    Some(acceptor) => {
                        match tokio::time::timeout(handshake, acceptor.accept(conn)).await {
                            Ok(Ok(stream)) => {
                                serve_connection(TokioIo::new(stream), service, shutdown).await
                            }
                            Ok(Err(error)) => {
                                tracing::debug!(%error, "console TLS handshake failed")
                            }
                            Err(_) => tracing::debug!("console TLS handshake timed out"),
                        }
                    }
                }
            });
        }
        tracker.close();
        let _ = tokio::time::timeout(CLOSE_GRACE * 2, tracker.wait()).await;
    }
}

async fn serve_connection<I, S>(io: I, service: S, shutdown: CancellationToken)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::HttpService<hyper::body::Incoming> + Send,
    S::Future: Send + 'static,
    S::ResBody: Send + 'static,
    <S::ResBody as http_body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    <S::ResBody as http_body::Body>::Data: Send,
{
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(Limits::default().handshake_timeout)
        .serve_connection(io, service);
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(CLOSE_GRACE, conn).await;
        }
    }
}

/// HTTPS with the daemon's own certificate. Browsers sign in with a token,
/// so no client certificate is asked for here.
fn acceptor(cfg: &TlsConfig) -> Result<tokio_rustls::TlsAcceptor, ListenError> {
    let file_err = |path: &std::path::Path| {
        let path = path.to_path_buf();
        move |e: rustls::pki_types::pem::Error| ListenError::TlsFile {
            path,
            reason: e.to_string(),
        }
    };
    let certs = CertificateDer::pem_file_iter(&cfg.cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(file_err(&cfg.cert))?;
    let key = PrivateKeyDer::from_pem_file(&cfg.key).map_err(file_err(&cfg.key))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(ListenError::Tls)?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(ListenError::Tls)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

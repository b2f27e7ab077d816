//! The connection to a daemon: its local socket (the kernel tells it who
//! calls) or `host:port`, over TLS when a CA is given, every call carrying
//! the bearer token from the environment when there is one.
use std::time::Duration;

use anyhow::{Context, Result, bail};
use odp_agent::common::command_line::odpctl::TlsArgs;
use tonic::{
    metadata::{AsciiMetadataValue, MetadataValue},
    service::{Interceptor, interceptor::InterceptedService},
    transport::Channel,
};

/// Where a bearer token comes from: the environment only, never a flag, so
/// it stays out of shell history and `ps`.
const TOKEN_ENV: &str = "ODPCTL_TOKEN";

/// A connection to a daemon, every call carrying the token if there is one.
pub(crate) type Conn = InterceptedService<Channel, BearerToken>;

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Clone)]
pub(crate) struct BearerToken(Option<AsciiMetadataValue>);

impl BearerToken {
    fn from_env() -> Result<Self> {
        let Some(token) = std::env::var_os(TOKEN_ENV) else {
            return Ok(Self(None));
        };
        let token = token
            .into_string()
            .ok()
            .filter(|t| !t.trim().is_empty())
            .with_context(|| format!("{TOKEN_ENV} is empty or not UTF-8"))?;
        let value: AsciiMetadataValue = MetadataValue::try_from(format!("Bearer {}", token.trim()))
            .with_context(|| format!("{TOKEN_ENV} is not a printable ASCII token"))?;
        Ok(Self(Some(value)))
    }
}

impl Interceptor for BearerToken {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// Connects to `addr`: `unix:/path` is the daemon's local socket (the
/// kernel tells it who calls); anything else is `host:port`, over TLS if
/// `--cacert` is given.
pub(crate) async fn connect(addr: &str, tls: &TlsArgs) -> Result<Conn> {
    if let Some(path) = addr.strip_prefix("unix:") {
        if tls.cacert.is_some() {
            bail!("{addr}: the local socket speaks no TLS; drop --cacert");
        }
        let path = std::path::PathBuf::from(path);
        let shown = path.display().to_string();
        let channel = tonic::transport::Endpoint::from_static("http://localhost")
            .connect_timeout(Duration::from_secs(5))
            .connect_with_connector(tower::service_fn(move |_| {
                let path = path.clone();
                async move {
                    tokio::net::UnixStream::connect(path)
                        .await
                        .map(hyper_util::rt::TokioIo::new)
                }
            }))
            .await
            .with_context(|| format!("cannot connect to the local socket {shown}"))?;
        return Ok(InterceptedService::new(channel, BearerToken::from_env()?));
    }
    let scheme = if tls.cacert.is_some() {
        "https"
    } else {
        "http"
    };
    let mut endpoint = tonic::transport::Endpoint::from_shared(format!("{scheme}://{addr}"))
        .with_context(|| format!("bad address {addr:?}"))?
        .connect_timeout(Duration::from_secs(5));
    if let Some(ca) = &tls.cacert {
        let config = odp_agent::security::tls::client(
            ca,
            tls.cert.as_deref().zip(tls.key.as_deref()),
            tls.tls_domain.as_deref(),
        )?;
        endpoint = endpoint.tls_config(config).context("TLS settings")?;
    }
    let channel = endpoint
        .connect()
        .await
        .with_context(|| format!("cannot connect to {addr}"))?;
    Ok(InterceptedService::new(channel, BearerToken::from_env()?))
}

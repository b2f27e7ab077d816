//! rustls settings for the daemons' servers (with client-certificate
//! verification) and for the coordinator's connections to the agents.
use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

use super::config::TlsConfig;

#[derive(Debug, thiserror::Error)]
#[error("cannot read {path}")]
pub struct TlsFileError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

fn read(path: &Path) -> Result<Vec<u8>, TlsFileError> {
    std::fs::read(path).map_err(|source| TlsFileError {
        path: path.to_path_buf(),
        source,
    })
}

/// How long a client gets to finish its TLS handshake: one that stalls must
/// not hold a connection slot for ever.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

pub fn server(cfg: &TlsConfig) -> Result<ServerTlsConfig, TlsFileError> {
    let identity = Identity::from_pem(read(&cfg.cert)?, read(&cfg.key)?);
    let mut tls = ServerTlsConfig::new()
        .identity(identity)
        .timeout(HANDSHAKE_TIMEOUT);
    if let Some(ca) = &cfg.client_ca {
        tls = tls
            .client_ca_root(Certificate::from_pem(read(ca)?))
            .client_auth_optional(cfg.client_cert_optional);
    }
    Ok(tls)
}

/// How the coordinator reaches agents over TLS: the CA that signed their
/// certificates, its own client certificate, and the name to verify.
pub fn client(
    ca: &Path,
    cert: Option<(&Path, &Path)>,
    domain: Option<&str>,
) -> Result<ClientTlsConfig, TlsFileError> {
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(ca)?));
    if let Some((cert, key)) = cert {
        tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
    }
    if let Some(domain) = domain {
        tls = tls.domain_name(domain);
    }
    Ok(tls)
}

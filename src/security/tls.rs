//! rustls settings for the daemons' servers (with client-certificate
//! verification) and for the coordinator's connections to the agents.
use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

use super::{config::TlsConfig, files::check_secret};

#[derive(Debug, thiserror::Error)]
pub enum TlsFileError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A private key others may read (or its group change).
    #[error("{reason}")]
    Exposed { path: PathBuf, reason: String },
}

fn read(path: &Path) -> Result<Vec<u8>, TlsFileError> {
    std::fs::read(path).map_err(|source| TlsFileError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// A private key, refused if others may read it: a key anyone on the host
/// can copy proves nothing about who holds it.
fn read_key(path: &Path) -> Result<Vec<u8>, TlsFileError> {
    let bytes = read(path)?;
    check_secret(path).map_err(|reason| TlsFileError::Exposed {
        path: path.to_path_buf(),
        reason,
    })?;
    Ok(bytes)
}

/// The server's TLS settings; a client that does not finish its handshake
/// within `handshake_timeout` is dropped (it must not hold a connection slot
/// for ever).
pub fn server(
    cfg: &TlsConfig,
    handshake_timeout: Duration,
) -> Result<ServerTlsConfig, TlsFileError> {
    let identity = Identity::from_pem(read(&cfg.cert)?, read_key(&cfg.key)?);
    let mut tls = ServerTlsConfig::new()
        .identity(identity)
        .timeout(handshake_timeout);
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
        tls = tls.identity(Identity::from_pem(read(cert)?, read_key(key)?));
    }
    if let Some(domain) = domain {
        tls = tls.domain_name(domain);
    }
    Ok(tls)
}

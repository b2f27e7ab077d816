//! The certificates and keys of `[tls]` and `[agents.tls]`: each file read
//! and parsed on its own (so a problem names its key), each certificate held
//! against its validity period, then the whole loaded as the daemon loads it
//! (tonic and rustls, which also refuse a key that is not the certificate's).
use std::{
    path::Path,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use x509_parser::pem::Pem;

use super::Report;
use crate::{
    common::error_chain,
    security::{
        config::{ClientTlsConfig, TlsConfig},
        tls,
    },
};

/// A certificate expiring sooner than this gets a note.
const EXPIRY_WARNING: Duration = Duration::from_secs(30 * 24 * 3600);

/// What the plan says about one certificate.
struct Cert {
    subject: String,
    not_before: i64,
    not_after: i64,
}

fn date(ts: i64) -> String {
    let at = UNIX_EPOCH + Duration::from_secs(ts.max(0) as u64);
    humantime::format_rfc3339_seconds(at).to_string()
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Every certificate in a PEM file, in order (the leaf first in a chain).
fn certificates(path: &Path) -> Result<Vec<Cert>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut certs = Vec::new();
    for (i, pem) in Pem::iter_from_buffer(&bytes).enumerate() {
        let pem = pem.map_err(|e| format!("{}: block {i} is not PEM: {e}", path.display()))?;
        if pem.label != "CERTIFICATE" {
            continue;
        }
        let cert = pem
            .parse_x509()
            .map_err(|e| format!("{}: certificate {i} does not parse: {e}", path.display()))?;
        certs.push(Cert {
            subject: cert.subject().to_string(),
            not_before: cert.validity().not_before.timestamp(),
            not_after: cert.validity().not_after.timestamp(),
        });
    }
    if certs.is_empty() {
        return Err(format!(
            "{} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            path.display()
        ));
    }
    Ok(certs)
}

/// Refuses a certificate outside its validity period, notes one about to
/// leave it.
fn in_validity(report: &mut Report, key: &str, path: &Path, cert: &Cert) -> bool {
    let now = now();
    if cert.not_after < now {
        report.problem(
            key,
            format!(
                "{}: the certificate of {} expired on {}",
                path.display(),
                cert.subject,
                date(cert.not_after)
            ),
        );
        return false;
    }
    if cert.not_before > now {
        report.problem(
            key,
            format!(
                "{}: the certificate of {} is valid only from {}",
                path.display(),
                cert.subject,
                date(cert.not_before)
            ),
        );
        return false;
    }
    if cert.not_after - now < EXPIRY_WARNING.as_secs() as i64 {
        report.note(format!(
            "{key}: the certificate of {} expires on {}",
            cert.subject,
            date(cert.not_after)
        ));
    }
    true
}

/// A certificate file: the leaf must be valid now. Returns its subject.
fn leaf(report: &mut Report, key: &str, path: &Path) -> Option<String> {
    match certificates(path) {
        Ok(certs) => {
            let leaf = &certs[0];
            in_validity(report, key, path, leaf)
                .then(|| format!("{}, until {}", leaf.subject, date(leaf.not_after)))
        }
        Err(reason) => {
            report.problem(key, reason);
            None
        }
    }
}

/// A CA file: every certificate in it must be valid now.
fn authority(report: &mut Report, key: &str, path: &Path) -> Option<String> {
    match certificates(path) {
        Ok(certs) => {
            let valid = certs.iter().all(|c| in_validity(report, key, path, c));
            valid.then(|| {
                let names: Vec<&str> = certs.iter().map(|c| c.subject.as_str()).collect();
                names.join("; ")
            })
        }
        Err(reason) => {
            report.problem(key, reason);
            None
        }
    }
}

/// A private key file: readable, with a PEM private key in it (whether it is
/// the certificate's is for rustls to say).
fn private_key(report: &mut Report, key: &str, path: &Path) -> bool {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let has_key = text.lines().any(|l| {
                l.starts_with("-----BEGIN ") && l.trim_end().ends_with("PRIVATE KEY-----")
            });
            if !has_key {
                report.problem(key, format!("{} holds no PEM private key", path.display()));
            }
            has_key
        }
        Err(e) => {
            report.problem(key, format!("cannot read {}: {e}", path.display()));
            false
        }
    }
}

/// `[tls]` of either daemon; returns the plan's line about it.
pub(crate) fn server(report: &mut Report, cfg: &TlsConfig, handshake: Duration) -> String {
    let cert = leaf(report, "tls.cert", &cfg.cert);
    let key = private_key(report, "tls.key", &cfg.key);
    let ca = cfg
        .client_ca
        .as_ref()
        .map(|ca| authority(report, "tls.client_ca", ca));
    let (Some(cert), true) = (cert, key) else {
        return "unusable (see the problems)".into();
    };
    // The daemon's own loading: rustls refuses a key that is not the
    // certificate's, or one it cannot use.
    let loaded = tls::server(cfg, handshake)
        .map_err(|e| error_chain::describe(&e))
        .and_then(|settings| {
            tonic::transport::Server::builder()
                .tls_config(settings)
                .map(|_| ())
                .map_err(|e| error_chain::describe(&e))
        });
    if let Err(reason) = loaded {
        report.problem(
            "tls.key",
            format!(
                "{} and {} do not load as the server's identity: {reason}",
                cfg.cert.display(),
                cfg.key.display()
            ),
        );
    }
    match ca {
        None => format!("certificate {cert}; clients are not asked for one"),
        Some(None) => format!("certificate {cert}; client CA unusable"),
        Some(Some(ca)) if cfg.client_cert_optional => {
            format!("certificate {cert}; clients may present one from {ca}")
        }
        Some(Some(ca)) => format!("certificate {cert}; clients must present one from {ca}"),
    }
}

/// `[agents.tls]` of the coordinator; `agent` is one agent's address, the
/// name the connector is built for. Returns the plan's line.
pub(crate) fn agents(report: &mut Report, cfg: &ClientTlsConfig, agent: &str) -> String {
    let ca = authority(report, "agents.tls.ca", &cfg.ca);
    let identity = match (&cfg.cert, &cfg.key) {
        (Some(cert), Some(key)) => {
            let cert = leaf(report, "agents.tls.cert", cert);
            let key = private_key(report, "agents.tls.key", key);
            Some(cert.filter(|_| key))
        }
        _ => None,
    };
    let (Some(ca), Some(Some(_)) | None) = (ca, identity.clone()) else {
        return "unusable (see the problems)".into();
    };
    let loaded = tls::client(
        &cfg.ca,
        cfg.cert.as_deref().zip(cfg.key.as_deref()),
        cfg.domain.as_deref(),
    )
    .map_err(|e| error_chain::describe(&e))
    .and_then(|settings| {
        tonic::transport::Endpoint::from_shared(format!("https://{agent}"))
            .and_then(|endpoint| endpoint.tls_config(settings))
            .map(|_| ())
            .map_err(|e| error_chain::describe(&e))
    });
    if let Err(reason) = loaded {
        report.problem(
            "agents.tls",
            format!("the TLS settings for the agents do not load: {reason}"),
        );
    }
    let who = match identity.flatten() {
        Some(cert) => format!("presenting {cert}"),
        None => "without a client certificate".into(),
    };
    format!("TLS, agents' certificates from {ca}, {who}")
}

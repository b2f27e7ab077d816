//! The security sections both daemons share, parsed into typed values.
use std::{net::SocketAddr, path::PathBuf};

use serde::Deserialize;

use super::roles::Role;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain the daemon presents.
    pub cert: PathBuf,
    /// PEM private key of `cert`.
    pub key: PathBuf,
    /// PEM CA that client certificates must chain to (mutual TLS). Without
    /// it, clients are not asked for a certificate (tokens then identify).
    pub client_ca: Option<PathBuf>,
    /// With `client_ca`: accept clients without a certificate too (they
    /// then need a bearer token).
    #[serde(default)]
    pub client_cert_optional: bool,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    #[serde(default)]
    pub tokens: Vec<TokenRule>,
    #[serde(default)]
    pub certificates: Vec<CertRule>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRule {
    /// Who holds it, for the audit log.
    pub name: String,
    /// Hex SHA-256 of the token (`printf %s "$TOKEN" | sha256sum`); the
    /// token itself is never written to the configuration.
    pub sha256: String,
    pub role: Role,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertRule {
    /// Matches the certificate subject's common name.
    pub subject_cn: Option<String>,
    /// Or one of its DNS / URI subject alternative names.
    pub san: Option<String>,
    pub role: Role,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// Append-only audit log; default `audit.log` in the state directory.
    pub path: Option<PathBuf>,
}

/// Validates the security settings together with the listen address:
/// returns `(key, reason)` for a configuration error.
pub fn check(
    listen: &SocketAddr,
    tls: Option<&TlsConfig>,
    auth: &AuthConfig,
) -> Result<(), (String, String)> {
    for (i, t) in auth.tokens.iter().enumerate() {
        let ok = t.sha256.len() == 64 && t.sha256.chars().all(|c| c.is_ascii_hexdigit());
        if !ok {
            return Err((
                format!("auth.tokens[{i}].sha256"),
                "must be 64 hex digits: the SHA-256 of the token, never the token itself".into(),
            ));
        }
        if t.name.is_empty() || t.name.len() > 64 {
            return Err((
                format!("auth.tokens[{i}].name"),
                "1 to 64 characters".into(),
            ));
        }
    }
    for (i, c) in auth.certificates.iter().enumerate() {
        if c.subject_cn.is_none() == c.san.is_none() {
            return Err((
                format!("auth.certificates[{i}]"),
                "give exactly one of subject_cn or san".into(),
            ));
        }
    }
    if !auth.certificates.is_empty() && tls.and_then(|t| t.client_ca.as_ref()).is_none() {
        return Err((
            "auth.certificates".into(),
            "certificate roles need [tls] client_ca, so clients present verified certificates"
                .into(),
        ));
    }
    let credentials = tls.is_some() || !auth.tokens.is_empty();
    if !listen.ip().is_loopback() && !credentials {
        return Err((
            "server.listen".into(),
            format!(
                "{listen} is reachable from the network, and neither [tls] nor [[auth.tokens]] is \
                 configured, so anyone could stop the ODP: configure TLS with client_ca (mutual TLS) \
                 and/or bearer tokens, or listen on 127.0.0.1"
            ),
        ));
    }
    if tls.is_some() && auth.tokens.is_empty() && auth.certificates.is_empty() {
        return Err((
            "auth".into(),
            "[tls] is on but no [[auth.certificates]] or [[auth.tokens]] grants a role, so every call would be refused".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(role: Role) -> AuthConfig {
        AuthConfig {
            tokens: vec![TokenRule {
                name: "ops".into(),
                sha256: "a".repeat(64),
                role,
            }],
            certificates: vec![],
        }
    }

    #[test]
    fn the_network_without_credentials_is_refused_with_a_fix() {
        let (key, reason) = check(
            &"0.0.0.0:2889".parse().unwrap(),
            None,
            &AuthConfig::default(),
        )
        .unwrap_err();
        assert_eq!(key, "server.listen");
        assert!(reason.contains("127.0.0.1"), "{reason}");
        assert!(
            check(
                &"127.0.0.1:2889".parse().unwrap(),
                None,
                &AuthConfig::default()
            )
            .is_ok()
        );
        assert!(
            check(
                &"0.0.0.0:2889".parse().unwrap(),
                None,
                &token(Role::Operator)
            )
            .is_ok()
        );
    }

    #[test]
    fn a_plain_token_in_place_of_its_hash_is_refused() {
        let mut auth = token(Role::ReadOnly);
        auth.tokens[0].sha256 = "s3cret".into();
        let (key, _) = check(&"127.0.0.1:1".parse().unwrap(), None, &auth).unwrap_err();
        assert_eq!(key, "auth.tokens[0].sha256");
    }
}

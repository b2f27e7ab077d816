//! The security sections both daemons share (`[tls]`, `[auth]`, `[audit]`,
//! and the coordinator's `[agents.tls]`), parsed into typed values, with
//! relative paths resolved and the safe-default rule checked at load.
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use serde::Deserialize;

use super::role::{CertRule, LocalPrincipal, Role, TokenRule};
use crate::common::config_file::ConfigError;

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
    /// Roles of callers on the local socket besides root and the daemon's
    /// own user (who always operate).
    #[serde(default)]
    pub local: Vec<LocalRule>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalRule {
    /// A user, by name or uid.
    pub user: Option<String>,
    /// Or a group (primary or supplementary), by name or gid.
    pub group: Option<String>,
    pub role: Role,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// Append-only audit log; default `audit.log` in the state directory.
    pub path: Option<PathBuf>,
}

/// `[agents.tls]` of the coordinator: how it reaches agents that serve TLS.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientTlsConfig {
    /// PEM CA that signed the agents' certificates.
    pub ca: PathBuf,
    /// PEM client certificate presented to the agents (with `key`); agents
    /// with `[tls] client_ca` require one.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// The name to verify in every agent's certificate, when it is not the
    /// host of the agent's address (an IP address is verified as an IP SAN).
    pub domain: Option<String>,
}

/// One daemon's security settings, resolved: absolute paths, checked.
#[derive(Debug, Clone)]
pub struct Security {
    pub tls: Option<TlsConfig>,
    pub auth: AuthConfig,
    pub audit_path: PathBuf,
    /// `[[auth.local]]` with names resolved.
    pub local: Vec<(LocalPrincipal, Role)>,
    /// What a loopback caller without credentials may do (`[server]
    /// loopback_role`, READ_ONLY by default); only without TLS and tokens.
    pub loopback_role: Role,
}

/// What the `[server]` section says that the security settings are checked
/// against: where the daemon listens, and what a loopback caller may do.
#[derive(Debug, Clone, Copy)]
pub struct Exposure {
    pub listen: SocketAddr,
    pub loopback_role: Option<Role>,
}

impl Security {
    /// Resolves the sections of the file `path` (relative paths against
    /// `base`) and checks them with the `[server]` section's `exposure`;
    /// `default_audit` is where the audit log goes unless `[audit] path`
    /// says otherwise.
    pub fn resolve(
        path: &Path,
        base: &Path,
        exposure: Exposure,
        tls: Option<TlsConfig>,
        auth: AuthConfig,
        audit: AuditConfig,
        default_audit: PathBuf,
    ) -> Result<Self, ConfigError> {
        let Exposure {
            listen,
            loopback_role,
        } = exposure;
        let listen = &listen;
        let tls = tls
            .map(|t| {
                Ok::<_, ConfigError>(TlsConfig {
                    cert: resolve_file(path, base, "tls.cert", &t.cert)?,
                    key: resolve_file(path, base, "tls.key", &t.key)?,
                    client_ca: t
                        .client_ca
                        .map(|ca| resolve_file(path, base, "tls.client_ca", &ca))
                        .transpose()?,
                    client_cert_optional: t.client_cert_optional,
                })
            })
            .transpose()?;
        if tls
            .as_ref()
            .is_some_and(|t| t.client_cert_optional && t.client_ca.is_none())
        {
            return Err(ConfigError::new(
                path,
                "tls.client_cert_optional",
                "only means something with client_ca",
            ));
        }
        check(listen, tls.as_ref(), &auth)
            .map_err(|(key, reason)| ConfigError::new(path, key, reason))?;
        if loopback_role.is_some() && (tls.is_some() || !auth.tokens.is_empty()) {
            return Err(ConfigError::new(
                path,
                "server.loopback_role",
                "only applies without [tls] and [[auth.tokens]]: with them every caller needs a credential",
            ));
        }
        let local = resolve_local(&auth.local)
            .map_err(|(key, reason)| ConfigError::new(path, key, reason))?;
        let audit_path = match audit.path {
            Some(p) => resolve_file(path, base, "audit.path", &p)?,
            None => default_audit,
        };
        Ok(Self {
            tls,
            auth,
            audit_path,
            local,
            loopback_role: loopback_role.unwrap_or(Role::ReadOnly),
        })
    }

    /// Whether a TCP caller must present a credential (a certificate or a
    /// token): not on the loopback default.
    pub fn requires_credentials(&self) -> bool {
        self.tls.is_some() || !self.auth.tokens.is_empty()
    }
}

impl ClientTlsConfig {
    /// Resolves relative paths against `base` and checks that `cert` and
    /// `key` come together.
    pub fn resolve(self, path: &Path, base: &Path) -> Result<Self, ConfigError> {
        let file = |key: &str, p: Option<PathBuf>| {
            p.map(|p| resolve_file(path, base, key, &p)).transpose()
        };
        let resolved = Self {
            ca: resolve_file(path, base, "agents.tls.ca", &self.ca)?,
            cert: file("agents.tls.cert", self.cert)?,
            key: file("agents.tls.key", self.key)?,
            domain: self.domain,
        };
        if resolved.cert.is_some() != resolved.key.is_some() {
            return Err(ConfigError::new(
                path,
                "agents.tls",
                "give both cert and key (the client certificate and its private key), or neither",
            ));
        }
        if let Some(domain) = &resolved.domain {
            let plain = !domain.is_empty()
                && domain.len() <= 253
                && domain
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.'));
            if !plain {
                return Err(ConfigError::new(
                    path,
                    "agents.tls.domain",
                    format!("{domain:?} is not a DNS name"),
                ));
            }
        }
        Ok(resolved)
    }
}

/// `[[auth.local]]` rules with user and group names looked up.
fn resolve_local(rules: &[LocalRule]) -> Result<Vec<(LocalPrincipal, Role)>, (String, String)> {
    rules
        .iter()
        .enumerate()
        .map(|(i, rule)| {
            let key = format!("auth.local[{i}]");
            let who = match (&rule.user, &rule.group) {
                (Some(user), None) => match user.parse::<u32>() {
                    Ok(uid) => LocalPrincipal::Uid(uid),
                    Err(_) => match nix::unistd::User::from_name(user) {
                        Ok(Some(u)) => LocalPrincipal::Uid(u.uid.as_raw()),
                        _ => return Err((key, format!("no user named {user:?} on this host"))),
                    },
                },
                (None, Some(group)) => match group.parse::<u32>() {
                    Ok(gid) => LocalPrincipal::Gid(gid),
                    Err(_) => match nix::unistd::Group::from_name(group) {
                        Ok(Some(g)) => LocalPrincipal::Gid(g.gid.as_raw()),
                        _ => return Err((key, format!("no group named {group:?} on this host"))),
                    },
                },
                _ => return Err((key, "give exactly one of user or group".into())),
            };
            Ok((who, rule.role))
        })
        .collect()
}

fn resolve_file(path: &Path, base: &Path, key: &str, file: &Path) -> Result<PathBuf, ConfigError> {
    if file.as_os_str().is_empty() {
        return Err(ConfigError::new(path, key, "must not be empty"));
    }
    Ok(base.join(file))
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
        // One token, one name and one role: a second rule for the same hash
        // would silently decide who the caller is.
        if let Some(first) = auth.tokens[..i]
            .iter()
            .position(|o| o.sha256.eq_ignore_ascii_case(&t.sha256))
        {
            return Err((
                format!("auth.tokens[{i}].sha256"),
                format!(
                    "the same hash as auth.tokens[{first}] ({:?}): each token must be distinct",
                    auth.tokens[first].name
                ),
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
        let name = c.subject_cn.as_deref().or(c.san.as_deref()).unwrap_or("");
        if name.is_empty() || name.len() > 255 {
            return Err((
                format!("auth.certificates[{i}]"),
                "the subject_cn or san to match: 1 to 255 characters".into(),
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
    // The product's rule: TLS on any address other than loopback. Bearer
    // tokens alone are not enough there: they would cross the network in
    // clear text, for anyone on the path to replay.
    if !listen.ip().is_loopback() && tls.is_none() {
        let reason = if auth.tokens.is_empty() {
            "neither [tls] nor [[auth.tokens]] is configured, so anyone could stop the ODP"
        } else {
            "bearer tokens without [tls] would cross the network in clear text"
        };
        return Err((
            "server.listen".into(),
            format!(
                "{listen} is reachable from the network and {reason}: configure [tls] cert and key \
                 with client_ca (mutual TLS) and [[auth.certificates]] or [[auth.tokens]] roles, \
                 or listen on 127.0.0.1"
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
            ..Default::default()
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
        // Tokens alone would travel in clear text.
        let (key, reason) = check(
            &"0.0.0.0:2889".parse().unwrap(),
            None,
            &token(Role::Operator),
        )
        .unwrap_err();
        assert_eq!(key, "server.listen");
        assert!(reason.contains("clear text"), "{reason}");
        let tls = TlsConfig {
            cert: "c.pem".into(),
            key: "k.pem".into(),
            client_ca: None,
            client_cert_optional: false,
        };
        assert!(
            check(
                &"0.0.0.0:2889".parse().unwrap(),
                Some(&tls),
                &token(Role::Operator)
            )
            .is_ok()
        );
    }

    #[test]
    fn a_token_hash_given_twice_is_refused() {
        let mut auth = token(Role::ReadOnly);
        let mut second = auth.tokens[0].clone();
        second.name = "other".into();
        second.role = Role::Operator;
        second.sha256 = second.sha256.to_uppercase();
        auth.tokens.push(second);
        let (key, reason) = check(&"127.0.0.1:1".parse().unwrap(), None, &auth).unwrap_err();
        assert_eq!(key, "auth.tokens[1].sha256");
        assert!(reason.contains("auth.tokens[0]"), "{reason}");
    }

    #[test]
    fn local_rules_name_a_user_or_a_group() {
        let rule = |user: Option<&str>, group: Option<&str>| LocalRule {
            user: user.map(str::to_string),
            group: group.map(str::to_string),
            role: Role::Operator,
        };
        assert_eq!(
            resolve_local(&[rule(Some("root"), None), rule(None, Some("0"))]).unwrap(),
            vec![
                (LocalPrincipal::Uid(0), Role::Operator),
                (LocalPrincipal::Gid(0), Role::Operator)
            ]
        );
        for bad in [
            rule(None, None),
            rule(Some("root"), Some("root")),
            rule(Some("no-such-user-here"), None),
        ] {
            assert_eq!(resolve_local(&[bad]).unwrap_err().0, "auth.local[0]");
        }
    }

    #[test]
    fn a_plain_token_in_place_of_its_hash_is_refused() {
        let mut auth = token(Role::ReadOnly);
        auth.tokens[0].sha256 = "s3cret".into();
        let (key, _) = check(&"127.0.0.1:1".parse().unwrap(), None, &auth).unwrap_err();
        assert_eq!(key, "auth.tokens[0].sha256");
    }
}

//! Identifying a caller (bearer token or verified client certificate) and
//! checking its role. Two roles: read-only (status, operations, tasks) and
//! OBPROXY_MANAGER (may also stop, start, restart, cancel and retry), the
//! console's name for it.
use std::fmt;

use serde::Deserialize;
use sha2::{Digest, Sha256};
use tonic::{Request, Status};

use super::config::{AuthConfig, CertRule};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
pub enum Role {
    #[serde(rename = "READ_ONLY")]
    ReadOnly,
    #[serde(rename = "OBPROXY_MANAGER")]
    Operator,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::ReadOnly => "READ_ONLY",
            Role::Operator => "OBPROXY_MANAGER",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// `token:<name>`, `cert:<subject CN or SAN>` or `anonymous`.
    pub identity: String,
    pub role: Role,
}

/// Who gets which role.
#[derive(Debug, Clone)]
pub struct Policy {
    /// No credentials configured (loopback only, enforced at start): every
    /// local caller operates, as on a single host without auth.
    open: bool,
    tokens: Vec<([u8; 32], String, Role)>,
    certs: Vec<CertRule>,
}

impl Policy {
    pub fn new(auth: &AuthConfig, tls: bool) -> Self {
        let tokens = auth
            .tokens
            .iter()
            .filter_map(|t| {
                let mut hash = [0u8; 32];
                hex::decode_to_slice(&t.sha256, &mut hash).ok()?;
                Some((hash, t.name.clone(), t.role))
            })
            .collect::<Vec<_>>();
        Self {
            open: !tls && tokens.is_empty(),
            tokens,
            certs: auth.certificates.clone(),
        }
    }

    /// The caller of `request`, or why it is not known.
    pub fn identify<T>(&self, request: &Request<T>) -> Result<Caller, Status> {
        if let Some(value) = request.metadata().get("authorization") {
            let token = value
                .to_str()
                .ok()
                .and_then(|v| v.strip_prefix("Bearer "))
                .ok_or_else(|| {
                    Status::unauthenticated("authorization: expected \"Bearer <token>\"")
                })?;
            let hash: [u8; 32] = Sha256::digest(token.trim().as_bytes()).into();
            // Compare every rule in full, so timing says nothing of a match.
            let mut found = None;
            for (want, name, role) in &self.tokens {
                let diff = want
                    .iter()
                    .zip(hash.iter())
                    .fold(0u8, |d, (a, b)| d | (a ^ b));
                if diff == 0 {
                    found = Some((name, *role));
                }
            }
            return match found {
                Some((name, role)) => Ok(Caller {
                    identity: format!("token:{name}"),
                    role,
                }),
                None => Err(Status::unauthenticated(
                    "authorization: unknown bearer token",
                )),
            };
        }
        if let Some(certs) = request.peer_certs()
            && let Some(leaf) = certs.first()
        {
            let names = cert_names(leaf.as_ref());
            let role = self
                .certs
                .iter()
                .filter(|rule| {
                    names.iter().any(|(kind, name)| match kind {
                        NameKind::Cn => rule.subject_cn.as_deref() == Some(name.as_str()),
                        NameKind::San => rule.san.as_deref() == Some(name.as_str()),
                    })
                })
                .map(|rule| rule.role)
                .max();
            let shown = names
                .first()
                .map(|(_, n)| n.clone())
                .unwrap_or_else(|| "unnamed".into());
            return match role {
                Some(role) => Ok(Caller {
                    identity: format!("cert:{shown}"),
                    role,
                }),
                None => Err(Status::permission_denied(format!(
                    "certificate {shown} is valid but has no role here"
                ))),
            };
        }
        if self.open {
            return Ok(Caller {
                identity: "anonymous".into(),
                role: Role::Operator,
            });
        }
        Err(Status::unauthenticated(
            "credentials required: a client certificate or an \"authorization: Bearer <token>\" header",
        ))
    }

    pub fn authorize(caller: &Caller, rpc: &str, needs: Role) -> Result<(), Status> {
        if caller.role >= needs {
            Ok(())
        } else {
            Err(Status::permission_denied(format!(
                "{rpc} needs role {needs}; {} has {}",
                caller.identity, caller.role
            )))
        }
    }
}

enum NameKind {
    Cn,
    San,
}

/// Subject CN and DNS/URI SANs of a DER certificate.
fn cert_names(der: &[u8]) -> Vec<(NameKind, String)> {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return Vec::new();
    };
    let mut names: Vec<(NameKind, String)> = cert
        .subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok())
        .map(|cn| (NameKind::Cn, cn.to_string()))
        .collect();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                x509_parser::extensions::GeneralName::DNSName(n)
                | x509_parser::extensions::GeneralName::URI(n) => {
                    names.push((NameKind::San, n.to_string()))
                }
                _ => {}
            }
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::security::config::TokenRule;

    fn hash(token: &str) -> String {
        hex::encode(Sha256::digest(token.as_bytes()))
    }

    fn policy() -> Policy {
        Policy::new(
            &AuthConfig {
                tokens: vec![
                    TokenRule {
                        name: "viewer".into(),
                        sha256: hash("look"),
                        role: Role::ReadOnly,
                    },
                    TokenRule {
                        name: "oncall".into(),
                        sha256: hash("act"),
                        role: Role::Operator,
                    },
                ],
                certificates: vec![],
            },
            false,
        )
    }

    fn with_token(token: &str) -> Request<()> {
        let mut r = Request::new(());
        r.metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        r
    }

    #[test]
    fn tokens_map_to_their_roles() {
        let p = policy();
        assert_eq!(
            p.identify(&with_token("look")).unwrap().role,
            Role::ReadOnly
        );
        let oncall = p.identify(&with_token("act")).unwrap();
        assert_eq!(oncall.identity, "token:oncall");
        assert_eq!(oncall.role, Role::Operator);
    }

    #[test]
    fn a_wrong_token_or_none_is_unauthenticated() {
        let p = policy();
        assert_eq!(
            p.identify(&with_token("guess")).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        assert_eq!(
            p.identify(&Request::new(())).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
    }

    #[test]
    fn a_read_only_caller_is_denied_naming_the_role_needed() {
        let viewer = policy().identify(&with_token("look")).unwrap();
        let e = Policy::authorize(&viewer, "Restart", Role::Operator).unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        assert!(e.message().contains("OBPROXY_MANAGER"), "{}", e.message());
        assert!(Policy::authorize(&viewer, "GetStatus", Role::ReadOnly).is_ok());
    }

    #[test]
    fn without_credentials_configured_local_callers_operate() {
        let open = Policy::new(&AuthConfig::default(), false);
        assert_eq!(
            open.identify(&Request::new(())).unwrap().role,
            Role::Operator
        );
    }
}

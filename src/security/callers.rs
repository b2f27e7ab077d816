//! Identifying a caller (bearer token, verified client certificate, or the
//! kernel's word for a caller on the local socket) and checking its role
//! (see [`super::role`]).
use sha2::{Digest, Sha256};
use tonic::{Request, Status, transport::server::TlsConnectInfo};

use super::{
    config::{AuthConfig, Security},
    role::{CertRule, LocalPrincipal, Role},
};
use crate::common::grpc_server::{
    conn::{Peer, PeerKind},
    unix_socket,
};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// `token:<name>`, `cert:<subject CN or SAN>`, `unix:<user>(uid=N)` or
    /// `anonymous` (loopback TCP without credentials).
    pub identity: String,
    pub role: Role,
}

/// Who gets which role.
#[derive(Debug, Clone)]
pub struct Policy {
    /// No credentials configured (loopback only, enforced at start): the
    /// role of a caller on loopback TCP, whom nothing identifies.
    open: Option<Role>,
    tokens: Vec<([u8; 32], String, Role)>,
    certs: Vec<CertRule>,
    /// The daemon's own user: it and root operate over the local socket
    /// (they could signal obproxy themselves anyway).
    me: u32,
    local: Vec<(LocalPrincipal, Role)>,
}

impl Policy {
    /// Tokens and certificate rules from `auth`; without `[tls]` and tokens
    /// a loopback caller is READ_ONLY (see [`Policy::with_local`]).
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
            open: (!tls && tokens.is_empty()).then_some(Role::ReadOnly),
            tokens,
            certs: auth.certificates.clone(),
            me: nix::unistd::geteuid().as_raw(),
            local: Vec::new(),
        }
    }

    /// The policy of a daemon's resolved `security`: its tokens and
    /// certificate rules, its local callers and its loopback role.
    pub fn for_daemon(security: &Security) -> Self {
        Self::new(&security.auth, security.tls.is_some())
            .with_local(security.local.clone(), security.loopback_role)
    }

    /// The roles of callers on the local socket, and the role a loopback
    /// caller gets when nothing identifies it.
    pub fn with_local(mut self, local: Vec<(LocalPrincipal, Role)>, loopback: Role) -> Self {
        self.local = local;
        self.open = self.open.map(|_| loopback);
        self
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
        let peer = request.extensions().get::<Peer>();
        if let Some(Peer {
            kind:
                PeerKind::Unix {
                    uid,
                    gid,
                    groups,
                    user,
                    ..
                },
            ..
        }) = peer
        {
            return self.local_caller(*uid, *gid, groups, user.as_deref());
        }
        let certs = request
            .extensions()
            .get::<TlsConnectInfo<Peer>>()
            .and_then(|info| info.peer_certs());
        if let Some(certs) = certs
            && let Some(leaf) = certs.first()
        {
            let names = cert_names(leaf.as_ref());
            let granted = self.cert_role(&names);
            return match granted {
                Some((role, name)) => Ok(Caller {
                    identity: format!("cert:{name}"),
                    role,
                }),
                None => {
                    let shown = names
                        .first()
                        .map(|(_, n)| n.clone())
                        .unwrap_or_else(|| "unnamed".into());
                    Err(Status::permission_denied(format!(
                        "certificate {shown} is valid but has no role here"
                    )))
                }
            };
        }
        if let Some(role) = self.open {
            return Ok(Caller {
                identity: "anonymous".into(),
                role,
            });
        }
        Err(Status::unauthenticated(
            "credentials required: a client certificate or an \"authorization: Bearer <token>\" header",
        ))
    }

    /// The highest role any name of a certificate has, and the name that
    /// earned it (the first such, CN before SANs): the audit log names who
    /// was let in, not whatever name the certificate carries first.
    fn cert_role<'n>(&self, names: &'n [(NameKind, String)]) -> Option<(Role, &'n str)> {
        names
            .iter()
            .rev()
            .filter_map(|(kind, name)| {
                self.certs
                    .iter()
                    .filter(|rule| match kind {
                        NameKind::Cn => rule.subject_cn.as_deref() == Some(name.as_str()),
                        NameKind::San => rule.san.as_deref() == Some(name.as_str()),
                    })
                    .map(|rule| rule.role)
                    .max()
                    .map(|role| (role, name.as_str()))
            })
            .max_by_key(|(role, _)| *role)
    }

    /// A caller on the local socket: root and the daemon's own user operate;
    /// anyone else has the highest role an `[[auth.local]]` rule gives its
    /// uid or one of its groups, or none.
    fn local_caller(
        &self,
        uid: u32,
        gid: u32,
        groups: &[u32],
        user: Option<&str>,
    ) -> Result<Caller, Status> {
        let identity = unix_socket::describe(uid, user);
        let role = if uid == 0 || uid == self.me {
            Some(Role::Operator)
        } else {
            self.local
                .iter()
                .filter(|(who, _)| match who {
                    LocalPrincipal::Uid(u) => *u == uid,
                    LocalPrincipal::Gid(g) => *g == gid || groups.contains(g),
                })
                .map(|(_, role)| *role)
                .max()
        };
        match role {
            Some(role) => Ok(Caller { identity, role }),
            None => Err(Status::permission_denied(format!(
                "{identity} has no role on the local socket (see [[auth.local]])"
            ))),
        }
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
    use crate::security::role::TokenRule;

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
                ..Default::default()
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
    fn without_credentials_configured_loopback_callers_only_read() {
        let open = Policy::new(&AuthConfig::default(), false);
        assert_eq!(
            open.identify(&Request::new(())).unwrap().role,
            Role::ReadOnly
        );
        let widened = open.with_local(vec![], Role::Operator);
        assert_eq!(
            widened.identify(&Request::new(())).unwrap().role,
            Role::Operator
        );
        // With tokens, nothing is open whatever was asked.
        let closed = policy().with_local(vec![], Role::Operator);
        assert_eq!(
            closed.identify(&Request::new(())).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
    }

    #[test]
    fn a_certificate_is_named_by_the_name_that_earned_its_role() {
        let rule = |cn: Option<&str>, san: Option<&str>, role| CertRule {
            subject_cn: cn.map(str::to_string),
            san: san.map(str::to_string),
            role,
        };
        let p = Policy::new(
            &AuthConfig {
                certificates: vec![
                    rule(Some("grafana"), None, Role::ReadOnly),
                    rule(None, Some("ops.example.com"), Role::Operator),
                ],
                ..Default::default()
            },
            true,
        );
        let names = vec![
            (NameKind::Cn, "grafana".to_string()),
            (NameKind::San, "ops.example.com".to_string()),
        ];
        assert_eq!(
            p.cert_role(&names),
            Some((Role::Operator, "ops.example.com"))
        );
        assert_eq!(p.cert_role(&names[..1]), Some((Role::ReadOnly, "grafana")));
        assert_eq!(p.cert_role(&[(NameKind::Cn, "x".into())]), None);
    }

    #[test]
    fn local_socket_callers_get_their_role_from_the_kernels_word() {
        let me = nix::unistd::geteuid().as_raw();
        let p = policy().with_local(
            vec![
                (LocalPrincipal::Uid(4242), Role::ReadOnly),
                (LocalPrincipal::Gid(777), Role::Operator),
            ],
            Role::ReadOnly,
        );
        let call = |uid: u32, gid: u32, groups: &[u32]| {
            p.local_caller(uid, gid, groups, None)
                .map(|c| c.role)
                .map_err(|e| e.code())
        };
        assert_eq!(call(0, 0, &[]), Ok(Role::Operator));
        assert_eq!(call(me, me, &[]), Ok(Role::Operator));
        assert_eq!(call(4242, 100, &[]), Ok(Role::ReadOnly));
        // A supplementary group counts, and the highest role wins.
        assert_eq!(call(4242, 100, &[777]), Ok(Role::Operator));
        assert_eq!(call(65534, 65534, &[]), Err(tonic::Code::PermissionDenied));
    }
}

//! The two roles a caller can have, READ_ONLY (status, operations, tasks)
//! and OBPROXY_MANAGER (may also stop, start, restart, cancel and retry), the
//! console's name for it, and the rules of the configuration that grant them
//! (a token, a certificate name, a local user or group). A leaf: the server
//! settings name a role without knowing how callers are identified.
use std::fmt;

use serde::Deserialize;

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

/// Who, on the local socket, gets which role (`[[auth.local]]`, resolved).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalPrincipal {
    Uid(u32),
    /// The caller's primary or one of its supplementary groups.
    Gid(u32),
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

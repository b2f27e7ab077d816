//! The `[web]` section: where the console listens and how long a sign-in
//! lasts, checked against the daemon's TLS and tokens at load.
use std::{net::SocketAddr, path::Path, time::Duration};

use serde::Deserialize;

use crate::{
    common::config_file::{self, ConfigError},
    security::config::Security,
};

/// `[web]` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebSection {
    pub listen: SocketAddr,
    #[serde(default = "session_ttl", deserialize_with = "config_file::duration")]
    pub session_ttl: Duration,
}

/// The console's settings, resolved.
#[derive(Debug, Clone)]
pub struct WebConfig {
    pub listen: SocketAddr,
    /// How long a session lives after sign-in (it is not extended by use:
    /// a stolen cookie is worth a bounded time).
    pub session_ttl: Duration,
    /// HTTPS with the daemon's `[tls]` certificate; plain HTTP (loopback
    /// only) without it.
    pub tls: bool,
}

fn session_ttl() -> Duration {
    Duration::from_secs(8 * 3600)
}

/// A working day is the expected use; a week is the most a cookie may
/// stand for a token.
const MAX_SESSION_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

impl WebSection {
    /// Checks the section against the daemon's security settings: the
    /// console follows the gRPC port's rule (TLS on any address but
    /// loopback) and signs in with the `[[auth.tokens]]` it already has.
    pub fn resolve(self, path: &Path, security: &Security) -> Result<WebConfig, ConfigError> {
        let tls = security.tls.is_some();
        if !self.listen.ip().is_loopback() && !tls {
            return Err(ConfigError::new(
                path,
                "web.listen",
                format!(
                    "{} is not a loopback address and [tls] is not configured: the console's \
                     sign-in token and session cookie would cross the network in clear text \
                     (configure [tls]: the console then serves HTTPS with that certificate)",
                    self.listen
                ),
            ));
        }
        if security.auth.tokens.is_empty() {
            return Err(ConfigError::new(
                path,
                "web.listen",
                "the console signs users in with a bearer token: configure [[auth.tokens]] \
                 (a READ_ONLY token to look, an OBPROXY_MANAGER token to act)",
            ));
        }
        if self.session_ttl.is_zero() || self.session_ttl > MAX_SESSION_TTL {
            return Err(ConfigError::new(
                path,
                "web.session_ttl",
                format!(
                    "{}: must be longer than zero and at most {}",
                    humantime::format_duration(self.session_ttl),
                    humantime::format_duration(MAX_SESSION_TTL)
                ),
            ));
        }
        Ok(WebConfig {
            listen: self.listen,
            session_ttl: self.session_ttl,
            tls,
        })
    }
}

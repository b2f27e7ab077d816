//! What the `[server]` section of either daemon says about serving gRPC: the
//! TCP address, the local Unix socket, and the bounds every caller meets
//! (connections, idle and handshake timeouts, message size), parsed once into
//! typed values.
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;

use crate::{
    common::config_file::{self, ConfigError},
    security::{config::Exposure, role::Role},
};

/// The `[server]` section as written (both daemons share it).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    /// gRPC over TCP.
    pub listen: SocketAddr,
    /// Largest request message accepted; a bigger one is refused before it
    /// is read, so no caller can make the daemon buffer much.
    #[serde(default = "config_file::default_max_message_bytes")]
    pub max_message_bytes: usize,
    /// Open TCP connections at most (the file-descriptor limit may lower it).
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// A connection with no call in flight for this long is closed.
    #[serde(
        default = "default_idle_timeout",
        deserialize_with = "config_file::duration"
    )]
    pub idle_timeout: Duration,
    /// A new connection must finish its TLS handshake, or send the HTTP/2
    /// preface, within this.
    #[serde(
        default = "default_handshake_timeout",
        deserialize_with = "config_file::duration"
    )]
    pub handshake_timeout: Duration,
    /// The local socket (relative paths follow the file); `""` for none.
    /// Default: `grpc.sock` in the daemon's state directory.
    #[serde(default)]
    pub unix_socket: Option<PathBuf>,
    /// The group the socket is given (mode 0660), e.g. the operators'.
    #[serde(default)]
    pub unix_socket_group: Option<String>,
    /// The role of a caller on loopback TCP when no credentials are
    /// configured: `READ_ONLY` unless set (see Security in the README).
    #[serde(default)]
    pub loopback_role: Option<Role>,
}

fn default_max_connections() -> usize {
    256
}
fn default_idle_timeout() -> Duration {
    Duration::from_secs(300)
}
fn default_handshake_timeout() -> Duration {
    Duration::from_secs(10)
}

/// How gRPC is served, resolved and checked.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    pub max_message_bytes: usize,
    pub limits: Limits,
    pub unix_socket: Option<UnixSocket>,
}

/// The bounds every connection meets.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    pub idle_timeout: Duration,
    pub handshake_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: default_max_connections(),
            idle_timeout: default_idle_timeout(),
            handshake_timeout: default_handshake_timeout(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct UnixSocket {
    pub path: PathBuf,
    /// Name and gid of the group given the socket.
    pub group: Option<(String, u32)>,
}

/// `sun_path` holds 108 bytes with the terminating NUL.
const MAX_SOCKET_PATH: usize = 107;

impl ServerSection {
    /// What the security settings are checked against.
    pub fn exposure(&self) -> Exposure {
        Exposure {
            listen: self.listen,
            loopback_role: self.loopback_role,
        }
    }

    /// Typed settings for the file `path` (relative paths against `base`);
    /// `default_socket` is where the local socket goes when not configured.
    pub fn resolve(
        &self,
        path: &Path,
        base: &Path,
        default_socket: PathBuf,
    ) -> Result<Settings, ConfigError> {
        let err = |key: &str, reason: String| ConfigError::new(path, key, reason);
        let max_message_bytes = config_file::check_max_message_bytes(path, self.max_message_bytes)?;
        if !(1..=65536).contains(&self.max_connections) {
            return Err(err(
                "server.max_connections",
                format!("{} is outside 1..=65536", self.max_connections),
            ));
        }
        for (key, value, max) in [
            (
                "server.idle_timeout",
                self.idle_timeout,
                Duration::from_secs(86400),
            ),
            (
                "server.handshake_timeout",
                self.handshake_timeout,
                Duration::from_secs(300),
            ),
        ] {
            if value.is_zero() || value > max {
                return Err(err(
                    key,
                    format!(
                        "{} is outside (0, {}]",
                        humantime::format_duration(value),
                        humantime::format_duration(max)
                    ),
                ));
            }
        }
        let socket = match &self.unix_socket {
            Some(p) if p.as_os_str().is_empty() => None,
            Some(p) => Some(base.join(p)),
            None => Some(default_socket),
        };
        let unix_socket = match socket {
            None => {
                if self.unix_socket_group.is_some() {
                    return Err(err(
                        "server.unix_socket_group",
                        "there is no socket (unix_socket = \"\")".into(),
                    ));
                }
                None
            }
            Some(p) => {
                if p.as_os_str().len() > MAX_SOCKET_PATH {
                    return Err(err(
                        "server.unix_socket",
                        format!(
                            "{} is {} bytes; a Unix socket path holds at most {MAX_SOCKET_PATH}",
                            p.display(),
                            p.as_os_str().len()
                        ),
                    ));
                }
                let group = self
                    .unix_socket_group
                    .as_deref()
                    .map(|g| group_id(g).map(|gid| (g.to_string(), gid)))
                    .transpose()
                    .map_err(|reason| err("server.unix_socket_group", reason))?;
                Some(UnixSocket { path: p, group })
            }
        };
        Ok(Settings {
            listen: self.listen,
            max_message_bytes,
            limits: Limits {
                max_connections: self.max_connections,
                idle_timeout: self.idle_timeout,
                handshake_timeout: self.handshake_timeout,
            },
            unix_socket,
        })
    }
}

/// A group by name or number.
fn group_id(name: &str) -> Result<u32, String> {
    if let Ok(gid) = name.parse::<u32>() {
        return Ok(gid);
    }
    match nix::unistd::Group::from_name(name) {
        Ok(Some(g)) => Ok(g.gid.as_raw()),
        Ok(None) => Err(format!("no group named {name:?} on this host")),
        Err(e) => Err(format!("cannot look up group {name:?}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(text: &str) -> ServerSection {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn defaults_put_the_socket_in_the_state_directory() {
        let s = section("listen = \"127.0.0.1:2889\"\n")
            .resolve(
                Path::new("/e/a.toml"),
                Path::new("/e"),
                "/s/grpc.sock".into(),
            )
            .unwrap();
        assert_eq!(s.unix_socket.unwrap().path, PathBuf::from("/s/grpc.sock"));
        assert_eq!(s.limits.max_connections, 256);
        let none = section("listen = \"127.0.0.1:2889\"\nunix_socket = \"\"\n")
            .resolve(
                Path::new("/e/a.toml"),
                Path::new("/e"),
                "/s/grpc.sock".into(),
            )
            .unwrap();
        assert!(none.unix_socket.is_none());
    }

    #[test]
    fn bad_bounds_name_their_key() {
        for (text, key) in [
            ("max_connections = 0", "server.max_connections"),
            ("idle_timeout = \"0s\"", "server.idle_timeout"),
            ("handshake_timeout = \"1h\"", "server.handshake_timeout"),
            (
                "unix_socket_group = \"no-such-group-here\"",
                "server.unix_socket_group",
            ),
        ] {
            let e = section(&format!("listen = \"127.0.0.1:1\"\n{text}\n"))
                .resolve(Path::new("/e/a.toml"), Path::new("/e"), "/s/g.sock".into())
                .unwrap_err();
            assert_eq!(e.key, key, "{text}: {e}");
        }
        let long = format!(
            "listen = \"127.0.0.1:1\"\nunix_socket = \"/{}\"\n",
            "x".repeat(120)
        );
        let e = section(&long)
            .resolve(Path::new("/e/a.toml"), Path::new("/e"), "/s/g.sock".into())
            .unwrap_err();
        assert_eq!(e.key, "server.unix_socket");
    }
}

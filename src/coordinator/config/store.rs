//! The `[store]` section: where tasks are kept — an embedded SQLite file
//! (`path`, the default for one machine) or a shared MySQL-compatible
//! metadb (`url`) that several coordinators lead in turn.
use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;

use crate::common::config_file::{self, ConfigError};

/// Where the audit log and the local socket live when tasks are in a metadb.
const STATE_DIR: &str = "/var/lib/odp-coordinator";
/// The environment variable a metadb password may come from.
pub const PASSWORD_ENV: &str = "ODP_STORE_PASSWORD";

/// Where the tasks are kept.
#[derive(Debug, Clone)]
pub enum StoreConfig {
    /// One coordinator, its tasks in a SQLite file.
    Sqlite(PathBuf),
    /// Any number of coordinators sharing a metadb; one leads at a time.
    Metadb(MetadbConfig),
}

#[derive(Clone)]
pub struct MetadbConfig {
    /// The connection as written (no password in it), for logs and errors.
    pub url: String,
    /// The connection, password included.
    pub opts: mysql_async::Opts,
    /// How long a lease lasts unless renewed (renewed every third of it).
    pub lease: Duration,
    /// The name this coordinator holds the lease under; None: `host:port`
    /// of its gRPC listener, known once it is bound.
    pub holder: Option<String>,
    /// `state_dir`: the audit log and the local socket (by default).
    pub state_dir: PathBuf,
}

impl std::fmt::Debug for MetadbConfig {
    // The options hold the password: never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetadbConfig")
            .field("url", &self.url)
            .field("lease", &self.lease)
            .field("holder", &self.holder)
            .finish()
    }
}

/// The section as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStore {
    #[serde(default)]
    path: Option<PathBuf>,
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    password_file: Option<PathBuf>,
    #[serde(default)]
    state_dir: Option<PathBuf>,
    #[serde(default, deserialize_with = "optional_duration")]
    lease: Option<Duration>,
    #[serde(default)]
    holder: Option<String>,
}

fn optional_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    config_file::duration(d).map(Some)
}

fn default_lease() -> Duration {
    Duration::from_secs(10)
}

/// Below this a renewal (every third of it) would race the metadb's own
/// round trips on a loaded network.
const MIN_LEASE: Duration = Duration::from_secs(1);

impl RawStore {
    /// The store, and the directory of the coordinator's own files (audit
    /// log, local socket).
    pub(super) fn resolve(
        self,
        path: &Path,
        base: &Path,
    ) -> Result<(StoreConfig, PathBuf), ConfigError> {
        let err =
            |key: &str, reason: String| ConfigError::new(path, format!("store.{key}"), reason);
        let metadb_only = [
            ("password_file", self.password_file.is_some()),
            ("state_dir", self.state_dir.is_some()),
            ("lease", self.lease.is_some()),
            ("holder", self.holder.is_some()),
        ];
        match (self.path, self.url) {
            (Some(_), Some(_)) => Err(err(
                "url",
                "give either path (SQLite) or url (a metadb), not both".into(),
            )),
            (None, None) => Err(err(
                "path",
                "missing: give path (SQLite) or url (a metadb)".into(),
            )),
            (Some(file), None) => {
                if let Some((key, _)) = metadb_only.iter().find(|(_, set)| *set) {
                    return Err(err(key, "only applies with store.url".into()));
                }
                if file.as_os_str().is_empty() {
                    return Err(err("path", "must not be empty".into()));
                }
                let file = base.join(file);
                let dir = file.parent().map(Path::to_path_buf).unwrap_or_default();
                Ok((StoreConfig::Sqlite(file), dir))
            }
            (None, Some(url)) => {
                let password = match &self.password_file {
                    Some(file) => {
                        let file = base.join(file);
                        let text = std::fs::read_to_string(&file).map_err(|e| {
                            err(
                                "password_file",
                                format!("cannot read {}: {e}", file.display()),
                            )
                        })?;
                        Some(text.trim_end_matches(['\r', '\n']).to_string())
                    }
                    None => std::env::var(PASSWORD_ENV).ok(),
                };
                let opts = metadb_opts(&url, password).map_err(|reason| err("url", reason))?;
                let lease = self.lease.unwrap_or_else(default_lease);
                if lease < MIN_LEASE {
                    return Err(err("lease", format!("must be at least {MIN_LEASE:?}")));
                }
                if let Some(h) = &self.holder
                    && (h.is_empty() || h.len() > 128 || h.chars().any(char::is_control))
                {
                    return Err(err("holder", "1 to 128 printable characters".into()));
                }
                let dir = base.join(self.state_dir.unwrap_or_else(|| STATE_DIR.into()));
                Ok((
                    StoreConfig::Metadb(MetadbConfig {
                        url,
                        opts,
                        lease,
                        holder: self.holder,
                        state_dir: dir.clone(),
                    }),
                    dir,
                ))
            }
        }
    }
}

/// `mysql://user@host:port/db`: the password comes from elsewhere, never
/// the file's text, and the database must be named.
fn metadb_opts(url: &str, password: Option<String>) -> Result<mysql_async::Opts, String> {
    if !url.starts_with("mysql://") {
        return Err(format!("{url:?}: write it as mysql://user@host:port/db"));
    }
    let opts = mysql_async::Opts::from_url(url)
        .map_err(|e| format!("{url:?}: {e} (write it as mysql://user@host:port/db)"))?;
    if opts.pass().is_some() {
        return Err(format!(
            "holds a password: put it in store.password_file or {PASSWORD_ENV}, not in the \
             configuration"
        ));
    }
    if opts.user().is_none_or(str::is_empty) {
        return Err(format!("{url:?} names no user (mysql://user@host:port/db)"));
    }
    if opts.db_name().is_none_or(str::is_empty) {
        return Err(format!(
            "{url:?} names no database (mysql://user@host:port/db)"
        ));
    }
    Ok(mysql_async::OptsBuilder::from_opts(opts)
        .pass(password)
        // The named host and port, not a local socket the server may name.
        .prefer_socket(false)
        // Affected rows count matches, not changes: a cancel flag set twice
        // is still found.
        .client_found_rows(true)
        .into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(text: &str) -> Result<(StoreConfig, PathBuf), ConfigError> {
        let raw: RawStore = toml::from_str(text).unwrap();
        raw.resolve(Path::new("/etc/c.toml"), Path::new("/etc"))
    }

    #[test]
    fn a_url_names_user_host_and_database_and_never_a_password() {
        let (store, dir) =
            resolve("url = \"mysql://odp@db.example:2881/odp_meta\"\nholder = \"c1\"").unwrap();
        let StoreConfig::Metadb(m) = store else {
            panic!("not a metadb")
        };
        assert_eq!(m.opts.ip_or_hostname(), "db.example");
        assert_eq!(m.opts.tcp_port(), 2881);
        assert_eq!(m.lease, Duration::from_secs(10));
        assert_eq!(dir, PathBuf::from(STATE_DIR));
        for (text, key, says) in [
            (
                "url = \"mysql://odp:secret@db:3306/odp\"",
                "store.url",
                "password",
            ),
            ("url = \"mysql://odp@db:3306\"", "store.url", "database"),
            ("url = \"postgres://odp@db/odp\"", "store.url", "mysql://"),
            (
                "url = \"mysql://odp@db/odp\"\npath = \"t.db\"",
                "store.url",
                "not both",
            ),
            (
                "url = \"mysql://odp@db/odp\"\nlease = \"10ms\"",
                "store.lease",
                "at least",
            ),
            (
                "path = \"t.db\"\nlease = \"10s\"",
                "store.lease",
                "store.url",
            ),
            (
                "url = \"mysql://odp@db/odp\"\npassword_file = \"nope\"",
                "store.password_file",
                "cannot read",
            ),
        ] {
            let e = resolve(text).unwrap_err();
            assert_eq!(e.key, key, "{text}: {e}");
            assert!(e.reason.contains(says), "{text}: {e}");
            assert!(!e.to_string().contains("secret"), "{e}");
        }
    }
}

//! obproxy's admin SQL: logging in as `root@proxysys` over the SQL port (from
//! loopback, where obproxy accepts it) and the few statements the agent runs:
//! `ALTER proxyconfig SET`, `SHOW PROXYCONFIG LIKE` to verify it, and
//! `SHOW PROXYINFO BINARY`. Every step has a short timeout; the password
//! never reaches a log line or an error.
pub mod answers;
pub mod password;

use std::{net::SocketAddr, path::Path, time::Duration};

use mysql_async::{Conn, OptsBuilder, Row, prelude::Queryable};
use serde::Deserialize;

pub use answers::BinaryInfo;
pub use password::SysPassword;

/// obproxy's administrator: the user `root` of its internal tenant `proxysys`.
pub const USER: &str = "root@proxysys";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(5);

/// How a HOT restart is carried out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RestartStrategy {
    /// The agent starts the new process on its held listeners and drains the
    /// old one once the new one is ready.
    #[default]
    Agent,
    /// obproxy's own `proxy_local_cmd = 2`; the agent adopts the child.
    Native,
}

/// The `[obproxy]` keys about admin SQL, resolved at start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AdminSettings {
    /// None: no `sys_password_file`, so nothing is done over SQL.
    pub password: Option<SysPassword>,
    pub restart_strategy: RestartStrategy,
}

impl AdminSettings {
    /// From the raw keys; the error is the key and the reason.
    pub fn resolve(
        password_file: Option<&Path>,
        restart_strategy: RestartStrategy,
    ) -> Result<Self, (&'static str, String)> {
        let password = password_file
            .map(|file| {
                SysPassword::load(file).map_err(|e| {
                    (
                        "obproxy.sys_password_file",
                        crate::common::error_chain::describe(&e),
                    )
                })
            })
            .transpose()?;
        if restart_strategy == RestartStrategy::Native && password.is_none() {
            return Err((
                "obproxy.restart_strategy",
                "\"native\" drives obproxy's own restart over admin SQL \
                 (ALTER proxyconfig SET proxy_local_cmd = 2): set [obproxy] sys_password_file too"
                    .into(),
            ));
        }
        Ok(Self {
            password,
            restart_strategy,
        })
    }
}

/// What the notices say while nothing can be done over SQL.
pub const NOT_CONFIGURED: &str = "admin SQL is off (no [obproxy] sys_password_file): a HOT \
    restart cannot change the drain window of the running obproxy, and version and build are \
    not read from obproxy itself (SHOW PROXYINFO BINARY)";

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("admin SQL is off: no [obproxy] sys_password_file")]
    NotConfigured,
    #[error("no answer from {addr} as {USER} within {}", humantime::format_duration(*timeout))]
    ConnectTimeout { addr: SocketAddr, timeout: Duration },
    #[error("cannot log in to {addr} as {USER}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: mysql_async::Error,
    },
    #[error("{addr} refused the login as {USER} (password from {file})")]
    LoginRefused {
        addr: SocketAddr,
        file: String,
        #[source]
        source: mysql_async::ServerError,
    },
    #[error("`{statement}` on {addr} failed")]
    Statement {
        addr: SocketAddr,
        statement: String,
        #[source]
        source: mysql_async::Error,
    },
    #[error(
        "`{statement}` on {addr} did not answer within {}",
        humantime::format_duration(STATEMENT_TIMEOUT)
    )]
    StatementTimeout { addr: SocketAddr, statement: String },
    #[error("SHOW PROXYCONFIG on {addr} has no item {name}")]
    NoSuchItem {
        addr: SocketAddr,
        name: &'static str,
    },
    #[error("{name} on {addr} reads {found:?} after ALTER set it to {wanted}")]
    NotApplied {
        addr: SocketAddr,
        name: &'static str,
        wanted: String,
        found: String,
    },
    #[error("SHOW PROXYINFO BINARY on {addr} names no version: {found:?}")]
    NoVersion { addr: SocketAddr, found: String },
}

impl AdminError {
    /// Whether obproxy answered the connection at all (a refused login
    /// still proves that a process accepts on the port).
    pub fn was_answered(&self) -> bool {
        matches!(self, AdminError::LoginRefused { .. })
    }
}

/// A configuration item the agent sets, with its value in the form obproxy
/// parses for that item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Item {
    /// `hot_upgrade_exit_timeout`: an integer item, in microseconds (no unit).
    ExitTimeout(Duration),
    /// `hot_upgrade_rollback_timeout`: a time item, `[1s, 30d]`.
    RollbackTimeout(Duration),
    /// `proxy_local_cmd`: 2 restarts natively; obproxy resets it to 0 once
    /// acted on, so it is not verified.
    LocalCmd(u8),
}

impl Item {
    pub fn name(self) -> &'static str {
        match self {
            Item::ExitTimeout(_) => "hot_upgrade_exit_timeout",
            Item::RollbackTimeout(_) => "hot_upgrade_rollback_timeout",
            Item::LocalCmd(_) => "proxy_local_cmd",
        }
    }

    /// The value as written after `=`.
    pub fn sql_value(self) -> String {
        match self {
            Item::ExitTimeout(d) => d.as_micros().to_string(),
            Item::RollbackTimeout(d) => format!("'{}ms'", Self::rollback_millis(d)),
            Item::LocalCmd(n) => n.to_string(),
        }
    }

    pub fn statement(self) -> String {
        format!(
            "ALTER proxyconfig SET {} = {}",
            self.name(),
            self.sql_value()
        )
    }

    /// Whether `shown` (SHOW PROXYCONFIG's value) is this value.
    pub fn is_shown_as(self, shown: &str) -> bool {
        match self {
            Item::ExitTimeout(d) => {
                answers::parse_int(shown).and_then(|v| u128::try_from(v).ok())
                    == Some(d.as_micros())
            }
            Item::RollbackTimeout(d) => answers::parse_time(shown)
                .is_some_and(|v| v.as_millis() == u128::from(Self::rollback_millis(d))),
            Item::LocalCmd(_) => true,
        }
    }

    /// obproxy refuses a rollback timeout under 1 s.
    fn rollback_millis(d: Duration) -> u64 {
        (d.as_millis() as u64).max(1000)
    }
}

/// Where and how to log in.
#[derive(Debug, Clone)]
pub struct Admin {
    addr: SocketAddr,
    password: SysPassword,
}

impl Admin {
    /// `addr` is the SQL listener as a client reaches it (loopback for a
    /// wildcard address).
    pub fn new(addr: SocketAddr, password: SysPassword) -> Self {
        Self { addr, password }
    }

    pub async fn connect(&self) -> Result<Session, AdminError> {
        self.connect_within(CONNECT_TIMEOUT).await
    }

    /// Logs in, waiting at most `timeout` for a process to accept and
    /// answer (a connection waits in the listener's backlog meanwhile).
    pub async fn connect_within(&self, timeout: Duration) -> Result<Session, AdminError> {
        let addr = self.addr;
        let opts = OptsBuilder::default()
            .ip_or_hostname(addr.ip().to_string())
            .tcp_port(addr.port())
            .user(Some(USER))
            .pass(Some(self.password.secret()))
            // No query of our own at login: obproxy's internal tenant
            // answers its admin statements only.
            .prefer_socket(false)
            .max_allowed_packet(Some(16 * 1024 * 1024))
            .wait_timeout(Some(28_800))
            .stmt_cache_size(0);
        match tokio::time::timeout(timeout, Conn::new(opts)).await {
            Err(_) => Err(AdminError::ConnectTimeout { addr, timeout }),
            Ok(Ok(conn)) => Ok(Session { conn, addr }),
            Ok(Err(mysql_async::Error::Server(source))) => Err(AdminError::LoginRefused {
                addr,
                file: self.password.file().display().to_string(),
                source,
            }),
            Ok(Err(source)) => Err(AdminError::Connect { addr, source }),
        }
    }
}

/// One logged-in connection to one obproxy process.
pub struct Session {
    conn: Conn,
    addr: SocketAddr,
}

impl Session {
    async fn rows(&mut self, statement: String) -> Result<Vec<Row>, AdminError> {
        let addr = self.addr;
        match tokio::time::timeout(STATEMENT_TIMEOUT, self.conn.query::<Row, _>(&statement)).await {
            Err(_) => Err(AdminError::StatementTimeout { addr, statement }),
            Ok(Err(source)) => Err(AdminError::Statement {
                addr,
                statement,
                source,
            }),
            Ok(Ok(rows)) => Ok(rows),
        }
    }

    /// `ALTER proxyconfig SET <item> = <value>`.
    pub async fn set(&mut self, item: Item) -> Result<(), AdminError> {
        self.rows(item.statement()).await.map(drop)
    }

    /// The value `SHOW PROXYCONFIG LIKE '<name>'` shows (columns: name,
    /// value, info, ...).
    pub async fn show(&mut self, name: &'static str) -> Result<String, AdminError> {
        let rows = self.rows(format!("SHOW PROXYCONFIG LIKE '{name}'")).await?;
        rows.into_iter()
            .find_map(|row| {
                let found: String = row.get_opt(0)?.ok()?;
                (found == name).then(|| row.get_opt::<String, _>(1)?.ok())?
            })
            .ok_or(AdminError::NoSuchItem {
                addr: self.addr,
                name,
            })
    }

    /// Sets `item` and reads it back: obproxy answers OK to an ALTER even
    /// where it then keeps another value.
    pub async fn set_verified(&mut self, item: Item) -> Result<(), AdminError> {
        self.set(item).await?;
        let found = self.show(item.name()).await?;
        if item.is_shown_as(&found) {
            Ok(())
        } else {
            Err(AdminError::NotApplied {
                addr: self.addr,
                name: item.name(),
                wanted: item.sql_value(),
                found,
            })
        }
    }

    /// `SHOW PROXYINFO BINARY` (columns: name, info).
    pub async fn binary_info(&mut self) -> Result<BinaryInfo, AdminError> {
        let rows = self.rows("SHOW PROXYINFO BINARY".into()).await?;
        let text: String = rows
            .first()
            .and_then(|row| row.get_opt::<String, _>(1)?.ok())
            .unwrap_or_default();
        BinaryInfo::parse(&text).ok_or(AdminError::NoVersion {
            addr: self.addr,
            found: text,
        })
    }

    /// Says goodbye (COM_QUIT); a connection that is already gone is fine.
    pub async fn close(self) {
        let _ = tokio::time::timeout(STATEMENT_TIMEOUT, self.conn.disconnect()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exit_timeout_is_set_in_microseconds_without_a_unit() {
        let item = Item::ExitTimeout(Duration::from_secs(2));
        assert_eq!(
            item.statement(),
            "ALTER proxyconfig SET hot_upgrade_exit_timeout = 2000000"
        );
        assert!(item.is_shown_as("2000000"));
        assert!(!item.is_shown_as("20000000"));
        assert!(!item.is_shown_as("2s"), "an integer item takes no unit");
    }

    #[test]
    fn the_rollback_timeout_is_a_time_of_at_least_a_second() {
        let item = Item::RollbackTimeout(Duration::from_millis(1500));
        assert_eq!(
            item.statement(),
            "ALTER proxyconfig SET hot_upgrade_rollback_timeout = '1500ms'"
        );
        assert!(item.is_shown_as("1500ms"));
        assert!(!item.is_shown_as("24h"));
        let short = Item::RollbackTimeout(Duration::from_millis(10));
        assert_eq!(short.sql_value(), "'1000ms'");
        assert!(short.is_shown_as("1s"));
    }

    #[test]
    fn a_native_strategy_needs_the_password_file() {
        let (key, reason) = AdminSettings::resolve(None, RestartStrategy::Native).unwrap_err();
        assert_eq!(key, "obproxy.restart_strategy");
        assert!(reason.contains("sys_password_file"), "{reason}");
        assert_eq!(
            AdminSettings::resolve(None, RestartStrategy::Agent).unwrap(),
            AdminSettings::default()
        );
    }
}

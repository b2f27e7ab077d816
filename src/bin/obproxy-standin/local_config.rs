//! The local config under the layout prefix: `etc/obproxy_config.bin` up to 4.2, `etc/proxyconfig_v1.db` (sqlite) on 4.3, where a start without arguments, a native child above all, finds the config its predecessor ran with.
//!
//! The `.bin` file holds obproxy's payload, one `name=value` line per item that is not
//! memory-only (v4.2.3:src/share/config/ob_common_config.cpp:161-171), but not the
//! `ObRecordHeader` with its crc64 that obproxy frames it in: the stand-in's file is not
//! readable by a real obproxy, nor the reverse. What matters to a supervisor, whether the
//! file is there, is the same. The sqlite file has obproxy's `proxy_config` table.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, params};

use crate::config::Config;

#[derive(Debug, thiserror::Error)]
pub enum LocalConfigError {
    #[error("invalid env path for proxy, env_path={0}")]
    RelativeRoot(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Sqlite {
        path: PathBuf,
        source: rusqlite::Error,
    },
    /// A `.bin` item its definition rejects fails the whole load
    /// (v4.2.3:src/share/config/ob_common_config.cpp:212-213, :127-129).
    #[error("{path}: invalid config value {item}")]
    InvalidItem { path: PathBuf, item: String },
}

/// `CFG_DUMP_NAME` (v4.2.3:src/obproxy/obutils/ob_proxy_config_utils.h:33).
const BIN_NAME: &str = "obproxy_config.bin";
/// `sqlite3_db_name` (v4.3.1:src/obproxy/obutils/ob_config_processor.cpp:67).
const DB_NAME: &str = "proxyconfig_v1.db";
/// v4.3.1:src/obproxy/obutils/ob_config_processor.cpp:96-103.
const CREATE_PROXY_CONFIG: &str = "create table if not exists \
    proxy_config(vid int NOT NULL default -1, vip varchar(100) NOT NULL default '', \
    vport int NOT NULL default 0, tenant_name varchar(128) collate nocase NOT NULL default '', \
    cluster_name varchar(260) collate nocase NOT NULL default '', \
    name varchar(130) collate nocase NOT NULL, value varchar(4100) NOT NULL, info varchar(1024), \
    range varchar(64), need_reboot bool, visible_level varchar(20), config_level varchar(20) NOT NULL, \
    primary key(vid, vip, vport, tenant_name, cluster_name, name))";
/// obproxy retries its exclusive lock 10 times, 100 ms apart
/// (v4.3.1:src/obproxy/obutils/ob_config_processor.cpp:291-310).
const LOCK_PATIENCE: Duration = Duration::from_secs(1);

/// Where obproxy keeps its files: `$OBPROXY_ROOT` (absolute, trailing slashes dropped) or
/// the working directory (v4.3.1:src/obproxy/utils/ob_layout.cpp:215-255).
#[derive(Debug, Clone)]
pub struct Layout {
    pub prefix: PathBuf,
}

impl Layout {
    pub fn from_env() -> Result<Self, LocalConfigError> {
        let prefix = match std::env::var("OBPROXY_ROOT") {
            Ok(root) if !root.starts_with('/') => return Err(LocalConfigError::RelativeRoot(root)),
            Ok(root) => {
                let trimmed = root.trim_end_matches('/');
                PathBuf::from(if trimmed.is_empty() { "/" } else { trimmed })
            }
            Err(_) => std::env::current_dir().map_err(|source| LocalConfigError::Io {
                path: PathBuf::from("."),
                source,
            })?,
        };
        Ok(Layout { prefix })
    }

    pub fn etc(&self) -> PathBuf {
        self.prefix.join("etc")
    }

    fn conf(&self) -> PathBuf {
        self.prefix.join(".conf")
    }

    /// obproxy creates these at start (v4.3.1:src/obproxy/utils/ob_layout.cpp:257-278).
    pub fn create_dirs(&self) -> Result<(), LocalConfigError> {
        for dir in ["etc", "log", ".conf", "control-config", "sharding-config"] {
            let path = self.prefix.join(dir);
            std::fs::create_dir_all(&path)
                .map_err(|source| LocalConfigError::Io { path, source })?;
        }
        Ok(())
    }
}

/// Loads the local config into `config`. `Ok(false)`: there is none (≤4.2: no file in
/// `etc/` or `.conf/`, nor their `.old` backups, v4.2.3:src/obproxy/obutils/ob_proxy_config_utils.cpp:722-769).
/// On 4.3 the database is created if missing and an empty table loads as success
/// (v4.3.1:src/obproxy/obutils/ob_proxy_config_utils.cpp:563-591).
pub fn load(layout: &Layout, config: &mut Config) -> Result<bool, LocalConfigError> {
    if config.line().uses_sqlite() {
        let db = open_db(layout)?;
        let path = layout.etc().join(DB_NAME);
        let sqlite = |source| LocalConfigError::Sqlite {
            path: path.clone(),
            source,
        };
        let mut select = db
            .prepare("select name, value from proxy_config where config_level = 'LEVEL_GLOBAL'")
            .map_err(sqlite)?;
        let rows: Vec<(String, Option<String>)> = select
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(sqlite)?
            .collect::<Result<_, _>>()
            .map_err(sqlite)?;
        config.load_lenient(
            rows.iter()
                .filter_map(|(n, v)| Some((n.as_str(), v.as_deref()?))),
        );
        return Ok(true);
    }
    let candidates = [
        layout.etc().join(BIN_NAME),
        layout.conf().join(BIN_NAME),
        layout.etc().join(format!("{BIN_NAME}.old")),
        layout.conf().join(format!("{BIN_NAME}.old")),
    ];
    let Some((path, text)) = candidates
        .into_iter()
        .find_map(|p| std::fs::read(&p).ok().map(|t| (p, t)))
    else {
        return Ok(false);
    };
    // `add_extra_config`: newline-separated items (ob_common_config.cpp:57-62).
    for line in String::from_utf8_lossy(&text)
        .split('\n')
        .filter(|l| !l.is_empty())
    {
        let (name, value) = line.split_once('=').unwrap_or((line, ""));
        if config.set(name, value) == Err(crate::config::SetError::Invalid) {
            return Err(LocalConfigError::InvalidItem {
                path,
                item: line.to_owned(),
            });
        }
    }
    Ok(true)
}

/// Writes the whole config: the `.bin` file (to `etc/` and `.conf/`, each replacing the
/// last with a `.old` backup, v4.2.3:src/obproxy/obutils/ob_proxy_config_utils.cpp:597-720),
/// or every item into sqlite (`dump_config_to_sqlite`, v4.3.1:src/obproxy/obutils/ob_proxy_config.cpp:289-319).
pub fn store(layout: &Layout, config: &Config) -> Result<(), LocalConfigError> {
    if config.line().uses_sqlite() {
        let mut db = open_db(layout)?;
        let path = layout.etc().join(DB_NAME);
        let sqlite = |source| LocalConfigError::Sqlite {
            path: path.clone(),
            source,
        };
        let tx = db
            .transaction_with_behavior(rusqlite::TransactionBehavior::Exclusive)
            .map_err(sqlite)?;
        for (def, value) in config.items() {
            tx.execute(
                "replace into proxy_config(name, value, config_level) values(?1, ?2, 'LEVEL_GLOBAL')",
                params![def.name, value],
            )
            .map_err(sqlite)?;
        }
        return tx.commit().map_err(sqlite);
    }
    store_bin(layout, config)
}

/// One item after `ALTER proxyconfig`: a row in sqlite (`store_global_proxy_config`,
/// v4.3.1:src/obproxy/cmd/ob_alter_config_handler.cpp:155-158), or the whole `.bin` again
/// (v4.2.3:src/obproxy/cmd/ob_alter_config_handler.cpp:141-148).
pub fn store_item(layout: &Layout, config: &Config, name: &str) -> Result<(), LocalConfigError> {
    if !config.line().uses_sqlite() {
        return store_bin(layout, config);
    }
    let db = open_db(layout)?;
    let def = config.def(name).map_or(name, |d| d.name);
    db.execute(
        "replace into proxy_config(vid, vip, vport, tenant_name, cluster_name, name, value, config_level) \
         values(-1, '', 0, '', '', ?1, ?2, 'LEVEL_GLOBAL')",
        params![def, config.get(name)],
    )
    .map(|_| ())
    .map_err(|source| LocalConfigError::Sqlite {
        path: layout.etc().join(DB_NAME),
        source,
    })
}

/// `dump2file`: the `.bin` payload into `etc/` and `.conf/`. 4.3 writes it too, on its
/// native restart path only, for a rollback to an older binary
/// (v4.3.1:src/obproxy/obutils/ob_hot_upgrade_processor.cpp:1725-1727).
pub fn store_bin(layout: &Layout, config: &Config) -> Result<(), LocalConfigError> {
    let text: String = config
        .persistent()
        .map(|(d, v)| format!("{}={v}\n", d.name))
        .collect();
    for dir in [layout.etc(), layout.conf()] {
        write_with_backup(&dir, BIN_NAME, text.as_bytes())?;
    }
    Ok(())
}

/// obproxy's `write_and_backup_file`: write a temporary file, move the current one to
/// `.old`, move the new one in place (v4.2.3:src/obproxy/obutils/ob_proxy_config_utils.cpp:663-720).
fn write_with_backup(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), LocalConfigError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| LocalConfigError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let path = dir.join(name);
    let tmp = dir.join(format!("{name}.tmp"));
    let old = dir.join(format!("{name}.old"));
    let mut file = std::fs::File::create(&tmp).map_err(io(&tmp))?;
    file.write_all(bytes).map_err(io(&tmp))?;
    match std::fs::rename(&path, &old) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(&path)(e)),
        _ => {}
    }
    std::fs::rename(&tmp, &path).map_err(io(&path))
}

/// Opens (creating) the database and its `proxy_config` table under an exclusive lock,
/// waiting as long as obproxy does for another process holding it.
fn open_db(layout: &Layout) -> Result<Connection, LocalConfigError> {
    let path = layout.etc().join(DB_NAME);
    let sqlite = |source| LocalConfigError::Sqlite {
        path: path.clone(),
        source,
    };
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE;
    let db = Connection::open_with_flags(&path, flags).map_err(sqlite)?;
    db.busy_timeout(LOCK_PATIENCE).map_err(sqlite)?;
    db.execute_batch(&format!("BEGIN EXCLUSIVE; {CREATE_PROXY_CONFIG}; COMMIT;"))
        .map_err(sqlite)?;
    Ok(db)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::Line;

    #[test]
    fn both_formats_round_trip_and_memory_items_stay_out() {
        for line in [Line::V42, Line::V43] {
            let dir = tempfile::tempdir().unwrap();
            let layout = Layout {
                prefix: dir.path().to_path_buf(),
            };
            layout.create_dirs().unwrap();
            let mut fresh = Config::new(line);
            assert_eq!(load(&layout, &mut fresh).unwrap(), line == Line::V43);
            let mut config = Config::new(line);
            config.set("hot_upgrade_exit_timeout", "7000000").unwrap();
            config.set("proxy_local_cmd", "2").unwrap();
            store(&layout, &config).unwrap();
            config.set("delay_exit_time", "200ms").unwrap();
            store_item(&layout, &config, "delay_exit_time").unwrap();
            let mut read = Config::new(line);
            assert!(load(&layout, &mut read).unwrap());
            assert_eq!(read.int("hot_upgrade_exit_timeout"), 7_000_000, "{line:?}");
            assert_eq!(read.get("delay_exit_time"), "200ms", "{line:?}");
            assert_eq!(read.int("proxy_local_cmd"), 0, "{line:?}");
        }
    }

    #[test]
    fn a_bin_item_its_definition_rejects_fails_the_load() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout {
            prefix: dir.path().to_path_buf(),
        };
        layout.create_dirs().unwrap();
        std::fs::write(layout.etc().join(BIN_NAME), "hot_upgrade_exit_timeout=5s\n").unwrap();
        assert!(load(&layout, &mut Config::new(Line::V42)).is_err());
    }
}

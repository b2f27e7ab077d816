//! The task store: every task, written before any agent is called and after
//! every change, so a coordinator that is killed (or replaced by another)
//! resumes where it was. Two backends: an embedded SQLite file ([`sqlite`],
//! one coordinator) and a shared MySQL-compatible metadb ([`metadb`], its
//! tables versioned by [`schema`], its leader's lease row in [`lease`]),
//! where every write of a runner is conditional on its lease's token.
use std::{path::PathBuf, time::Duration};

use super::{config::StoreConfig, task::Task};

pub mod lease;
mod metadb;
mod schema;
mod sqlite;

pub use metadb::Metadb;

/// A lease's token: the runner's writes carry it and are refused once a
/// newer holder exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fence(pub i64);

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("task store {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("task store: {what} task {id}")]
    Query {
        what: &'static str,
        id: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error("task store: task {id} is not valid JSON")]
    Corrupt {
        id: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("task store directory")]
    Dir(#[source] crate::security::files::FileError),
    #[error("metadb {url}: {what} {id}")]
    Metadb {
        url: String,
        what: &'static str,
        id: String,
        #[source]
        source: Box<mysql_async::Error>,
    },
    #[error("metadb {url}: {what} {id}: no answer within {after:?}")]
    MetadbTimeout {
        url: String,
        what: &'static str,
        id: String,
        after: Duration,
    },
    #[error(
        "metadb {url}: its schema is version {found}, newer than this coordinator knows \
         ({known}); upgrade this coordinator"
    )]
    SchemaNewer { url: String, found: i64, known: i64 },
    /// Another coordinator took the lease: this one's writes are refused.
    #[error("task {id}: not written, lease token {token} is no longer the leader's")]
    Fenced { id: String, token: i64 },
}

impl StoreError {
    /// The metadb did not answer (down, unreachable, too slow): worth
    /// trying again, at this coordinator or another.
    pub fn is_unreachable(&self) -> bool {
        match self {
            StoreError::MetadbTimeout { .. } => true,
            StoreError::Metadb { source, .. } => matches!(
                **source,
                mysql_async::Error::Io(_) | mysql_async::Error::Driver(_)
            ),
            _ => false,
        }
    }

    /// The disk under the store is full: space, not a fault, is missing.
    pub fn is_storage_full(&self) -> bool {
        match self {
            StoreError::Open { source, .. } | StoreError::Query { source, .. } => {
                source.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull)
            }
            _ => false,
        }
    }
}

/// Where the tasks are.
pub enum Store {
    Sqlite(sqlite::SqliteStore),
    Metadb(Metadb),
}

impl Store {
    pub async fn open(config: &StoreConfig) -> Result<Self, StoreError> {
        Ok(match config {
            StoreConfig::Sqlite(path) => Store::Sqlite(sqlite::SqliteStore::open(path)?),
            StoreConfig::Metadb(m) => Store::Metadb(Metadb::open(m).await?),
        })
    }

    /// The metadb, when the tasks are in one (and coordinators lead in turn).
    pub fn metadb(&self) -> Option<&Metadb> {
        match self {
            Store::Metadb(m) => Some(m),
            Store::Sqlite(_) => None,
        }
    }

    /// A new task; a request id already used is refused.
    pub async fn insert(&self, task: &Task) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(s) => s.save(task),
            Store::Metadb(m) => m.insert(task).await,
        }
    }

    /// A runner's write: refused ([`StoreError::Fenced`]) once `fence` is
    /// not the lease's token any more.
    pub async fn save(&self, task: &Task, fence: Option<Fence>) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(s) => s.save(task),
            Store::Metadb(m) => m.save(task, fence).await,
        }
    }

    /// RetryTask: the task running again, unless it already is (another
    /// coordinator retried it first): false then.
    pub async fn rerun(&self, task: &Task) -> Result<bool, StoreError> {
        match self {
            Store::Sqlite(s) => s.save(task).map(|()| true),
            Store::Metadb(m) => m.rerun(task).await,
        }
    }

    /// Puts back a task whose retry could not be recorded.
    pub async fn put_back(&self, task: &Task) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(s) => s.save(task),
            Store::Metadb(m) => m.put_back(task).await,
        }
    }

    /// Removes a task that must not run after all (its admission could not
    /// be recorded).
    pub async fn delete(&self, id: &str) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(s) => s.delete(id),
            Store::Metadb(m) => m.delete(id).await,
        }
    }

    pub async fn get(&self, id: &str) -> Result<Option<Task>, StoreError> {
        match self {
            Store::Sqlite(s) => s.get(id),
            Store::Metadb(m) => m.get(id).await,
        }
    }

    pub async fn by_request_id(&self, request_id: &str) -> Result<Option<Task>, StoreError> {
        match self {
            Store::Sqlite(s) => s.by_request_id(request_id),
            Store::Metadb(m) => m.by_request_id(request_id).await,
        }
    }

    /// Newest first; `cluster` None for all.
    pub async fn list(&self, cluster: Option<&str>, limit: u32) -> Result<Vec<Task>, StoreError> {
        match self {
            Store::Sqlite(s) => s.list(cluster, limit),
            Store::Metadb(m) => m.list(cluster, limit).await,
        }
    }

    /// Tasks still running (to resume, or to pick up), oldest first, with
    /// any cancel asked of another coordinator in `cancel_requested`.
    pub async fn unfinished(&self) -> Result<Vec<Task>, StoreError> {
        match self {
            Store::Sqlite(s) => s.unfinished(),
            Store::Metadb(m) => m.unfinished().await,
        }
    }

    /// CancelTask for a task no runner of this coordinator has: the flag
    /// its runner honours. False if the task is not running.
    pub async fn request_cancel(&self, id: &str) -> Result<bool, StoreError> {
        match self {
            Store::Sqlite(s) => s.request_cancel(id),
            Store::Metadb(m) => m.request_cancel(id).await,
        }
    }
}

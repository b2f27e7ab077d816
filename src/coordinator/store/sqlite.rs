//! The embedded task store: one coordinator's tasks in a SQLite file (WAL,
//! synchronous FULL), the default on one machine.
use std::{path::Path, sync::Mutex};

use rusqlite::{Connection, OptionalExtension, params};

use super::StoreError;
use crate::coordinator::task::{State, Task};

/// Writes are small (one task's JSON) and synchronous; the mutex orders them.
pub struct SqliteStore {
    conn: Mutex<Connection>,
}

pub(super) fn state_name(s: State) -> &'static str {
    match s {
        State::Running => "running",
        State::Succeeded => "succeeded",
        State::Failed => "failed",
        State::Cancelled => "cancelled",
        State::RolledBack => "rolled_back",
    }
}

impl SqliteStore {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let err = |source| StoreError::Open {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent()
            && let Err(e) = crate::security::files::private_dir(dir)
        {
            return Err(StoreError::Dir(e));
        }
        let conn = Connection::open(path).map_err(err)?;
        // WAL + FULL: a task written is on disk before the RPC it announces.
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(err)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(err)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS tasks (
                 id TEXT PRIMARY KEY,
                 cluster TEXT NOT NULL,
                 request_id TEXT UNIQUE,
                 state TEXT NOT NULL,
                 created_at REAL NOT NULL,
                 body TEXT NOT NULL
             );
             CREATE INDEX IF NOT EXISTS tasks_state ON tasks(state);",
        )
        .map_err(err)?;
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn save(&self, task: &Task) -> Result<(), StoreError> {
        let body = serde_json::to_string(task).map_err(|source| StoreError::Corrupt {
            id: task.id.clone(),
            source,
        })?;
        let created = task
            .created_at
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        self.conn()
            .execute(
                "INSERT INTO tasks (id, cluster, request_id, state, created_at, body)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT(id) DO UPDATE SET state = excluded.state, body = excluded.body",
                params![
                    task.id,
                    task.cluster,
                    task.request_id,
                    state_name(task.state),
                    created,
                    body
                ],
            )
            .map_err(|source| StoreError::Query {
                what: "save",
                id: task.id.clone(),
                source,
            })?;
        Ok(())
    }

    /// Removes a task that must not run after all (its admission could not
    /// be recorded).
    pub fn delete(&self, id: &str) -> Result<(), StoreError> {
        self.conn()
            .execute("DELETE FROM tasks WHERE id = ?1", [id])
            .map_err(|source| StoreError::Query {
                what: "delete",
                id: id.to_string(),
                source,
            })?;
        Ok(())
    }

    fn decode(id: String, body: String) -> Result<Task, StoreError> {
        serde_json::from_str(&body).map_err(|source| StoreError::Corrupt { id, source })
    }

    pub fn get(&self, id: &str) -> Result<Option<Task>, StoreError> {
        let body: Option<String> = self
            .conn()
            .query_row("SELECT body FROM tasks WHERE id = ?1", [id], |r| r.get(0))
            .optional()
            .map_err(|source| StoreError::Query {
                what: "read",
                id: id.to_string(),
                source,
            })?;
        body.map(|b| Self::decode(id.to_string(), b)).transpose()
    }

    pub fn by_request_id(&self, request_id: &str) -> Result<Option<Task>, StoreError> {
        let row: Option<(String, String)> = self
            .conn()
            .query_row(
                "SELECT id, body FROM tasks WHERE request_id = ?1",
                [request_id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(|source| StoreError::Query {
                what: "find by request id",
                id: request_id.to_string(),
                source,
            })?;
        row.map(|(id, b)| Self::decode(id, b)).transpose()
    }

    /// Newest first; `cluster` None for all.
    pub fn list(&self, cluster: Option<&str>, limit: u32) -> Result<Vec<Task>, StoreError> {
        self.select(
            "SELECT id, body FROM tasks WHERE (?1 IS NULL OR cluster = ?1)
             ORDER BY created_at DESC LIMIT ?2",
            params![cluster, limit],
        )
    }

    /// Tasks that were running when the coordinator last stopped.
    pub fn unfinished(&self) -> Result<Vec<Task>, StoreError> {
        self.select(
            "SELECT id, body FROM tasks WHERE state = 'running' ORDER BY created_at",
            params![],
        )
    }

    /// Sets the cancel flag of a running task (kept in its body here).
    pub fn request_cancel(&self, id: &str) -> Result<bool, StoreError> {
        match self.get(id)? {
            Some(mut task) if task.state == State::Running => {
                task.cancel_requested = true;
                self.save(&task)?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    fn select(&self, sql: &str, params: impl rusqlite::Params) -> Result<Vec<Task>, StoreError> {
        let qerr = |source| StoreError::Query {
            what: "list",
            id: "*".into(),
            source,
        };
        let conn = self.conn();
        let mut stmt = conn.prepare(sql).map_err(qerr)?;
        let rows = stmt
            .query_map(params, |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
            })
            .map_err(qerr)?;
        let mut tasks = Vec::new();
        for row in rows {
            let (id, body) = row.map_err(qerr)?;
            tasks.push(Self::decode(id, body)?);
        }
        Ok(tasks)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coordinator::task::{Kind, Rollout};

    #[test]
    fn tasks_survive_reopening_and_unfinished_ones_are_found() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tasks.db");
        let agents = vec!["127.0.0.1:1".to_string()];
        let mut done = Task::new(
            "c",
            &agents,
            Kind::StopAll,
            None,
            Rollout::default(),
            None,
            Some("r1".into()),
        );
        done.state = State::Succeeded;
        let running = Task::new(
            "c",
            &agents,
            Kind::StartAll,
            None,
            Rollout::default(),
            None,
            None,
        );
        {
            let store = SqliteStore::open(&path).unwrap();
            store.save(&done).unwrap();
            store.save(&running).unwrap();
        }
        let store = SqliteStore::open(&path).unwrap();
        let unfinished = store.unfinished().unwrap();
        assert_eq!(unfinished.len(), 1);
        assert_eq!(unfinished[0].id, running.id);
        assert_eq!(store.by_request_id("r1").unwrap().unwrap().id, done.id);
        assert_eq!(store.list(Some("c"), 10).unwrap().len(), 2);
        assert!(store.get("task-nope").unwrap().is_none());
    }
}

//! The shared task store: tasks in a MySQL-compatible metadb (OceanBase's
//! MySQL mode, MySQL 8, MariaDB) over plain SQL, so several coordinators
//! see the same tasks. A runner's writes are conditional on its lease's
//! token ([`Fence`]), checked under the lease row's lock in the same
//! transaction, so a leader that lost the lease cannot write over the next.
use std::{future::Future, time::Duration};

use mysql_async::{Pool, TxOpts, prelude::Queryable};

use super::{Fence, StoreError, schema, sqlite::state_name};
use crate::coordinator::{config::MetadbConfig, task::Task};

/// One call's deadline (a connection, a transaction): a metadb that does
/// not answer is an error the caller retries, never a hang.
pub const CALL: Duration = Duration::from_secs(5);

pub struct Metadb {
    pool: Pool,
    url: String,
}

type Row = (String, String, i64);

impl Metadb {
    pub async fn open(config: &MetadbConfig) -> Result<Self, StoreError> {
        let db = Self {
            pool: Pool::new(config.opts.clone()),
            url: config.url.clone(),
        };
        let pool = db.pool.clone();
        db.within("migrate", "schema", async move {
            let mut conn = pool.get_conn().await?;
            schema::migrate(&mut conn).await
        })
        .await?
        .map_err(|(found, known)| StoreError::SchemaNewer {
            url: db.url.clone(),
            found,
            known,
        })?;
        Ok(db)
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub(super) fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Runs `call` with [`CALL`] as its deadline, naming what failed.
    pub(super) async fn within<T>(
        &self,
        what: &'static str,
        id: &str,
        call: impl Future<Output = Result<T, mysql_async::Error>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(CALL, call).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(source)) => Err(StoreError::Metadb {
                url: self.url.clone(),
                what,
                id: id.to_string(),
                source: Box::new(source),
            }),
            Err(_) => Err(StoreError::MetadbTimeout {
                url: self.url.clone(),
                what,
                id: id.to_string(),
                after: CALL,
            }),
        }
    }

    fn body(task: &Task) -> Result<String, StoreError> {
        serde_json::to_string(task).map_err(|source| StoreError::Corrupt {
            id: task.id.clone(),
            source,
        })
    }

    pub async fn insert(&self, task: &Task) -> Result<(), StoreError> {
        let body = Self::body(task)?;
        let created = task
            .created_at
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        let params = (
            task.id.clone(),
            task.cluster.clone(),
            task.request_id.clone(),
            state_name(task.state),
            created,
            body,
        );
        self.within("insert", &task.id, async {
            let mut conn = self.pool.get_conn().await?;
            conn.exec_drop(
                "INSERT INTO odp_tasks (id, cluster, request_id, state, created_at, \
                 cancel_requested, body) VALUES (?, ?, ?, ?, ?, 0, ?)",
                params,
            )
            .await
        })
        .await
    }

    /// The runner's write. With a fence, the lease row is locked and its
    /// token compared in the same transaction as the write: a newer holder
    /// either committed before (refused here) or waits for this to commit
    /// (and then reads it).
    pub async fn save(&self, task: &Task, fence: Option<Fence>) -> Result<(), StoreError> {
        let body = Self::body(task)?;
        let state = state_name(task.state);
        let id = task.id.clone();
        let token = self
            .within("save", &task.id, async {
                let mut conn = self.pool.get_conn().await?;
                let mut tx = conn.start_transaction(TxOpts::default()).await?;
                if let Some(Fence(mine)) = fence {
                    let now: Option<i64> = tx
                        .exec_first("SELECT token FROM odp_leader WHERE id = 1 FOR UPDATE", ())
                        .await?;
                    if now != Some(mine) {
                        tx.rollback().await?;
                        return Ok(Some(mine));
                    }
                }
                tx.exec_drop(
                    "UPDATE odp_tasks SET state = ?, body = ? WHERE id = ?",
                    (state, body, id),
                )
                .await?;
                tx.commit().await?;
                Ok(None)
            })
            .await?;
        match token {
            Some(token) => Err(StoreError::Fenced {
                id: task.id.clone(),
                token,
            }),
            None => Ok(()),
        }
    }

    pub async fn rerun(&self, task: &Task) -> Result<bool, StoreError> {
        let params = (Self::body(task)?, task.id.clone());
        self.within("retry", &task.id, async {
            let mut conn = self.pool.get_conn().await?;
            conn.exec_drop(
                "UPDATE odp_tasks SET state = 'running', cancel_requested = 0, body = ? \
                 WHERE id = ? AND state <> 'running'",
                params,
            )
            .await?;
            Ok(conn.affected_rows() == 1)
        })
        .await
    }

    pub async fn put_back(&self, task: &Task) -> Result<(), StoreError> {
        let params = (state_name(task.state), Self::body(task)?, task.id.clone());
        self.within("put back", &task.id, async {
            let mut conn = self.pool.get_conn().await?;
            conn.exec_drop(
                "UPDATE odp_tasks SET state = ?, body = ? WHERE id = ?",
                params,
            )
            .await
        })
        .await
    }

    pub async fn delete(&self, id: &str) -> Result<(), StoreError> {
        self.within("delete", id, async {
            let mut conn = self.pool.get_conn().await?;
            conn.exec_drop("DELETE FROM odp_tasks WHERE id = ?", (id,))
                .await
        })
        .await
    }

    fn decode((id, body, cancel): Row) -> Result<Task, StoreError> {
        let mut task: Task =
            serde_json::from_str(&body).map_err(|source| StoreError::Corrupt { id, source })?;
        // Asked of any coordinator; the runner's body learns it when its
        // leader honours it.
        task.cancel_requested |= cancel != 0;
        Ok(task)
    }

    async fn select(
        &self,
        what: &'static str,
        id: &str,
        sql: &'static str,
        params: mysql_async::Params,
    ) -> Result<Vec<Task>, StoreError> {
        let rows: Vec<Row> = self
            .within(what, id, async {
                let mut conn = self.pool.get_conn().await?;
                conn.exec(sql, params).await
            })
            .await?;
        rows.into_iter().map(Self::decode).collect()
    }

    pub async fn get(&self, id: &str) -> Result<Option<Task>, StoreError> {
        let sql = "SELECT id, body, cancel_requested FROM odp_tasks WHERE id = ?";
        let found = self.select("read", id, sql, (id,).into()).await?;
        Ok(found.into_iter().next())
    }

    pub async fn by_request_id(&self, request_id: &str) -> Result<Option<Task>, StoreError> {
        let sql = "SELECT id, body, cancel_requested FROM odp_tasks WHERE request_id = ?";
        let found = self
            .select("find by request id", request_id, sql, (request_id,).into())
            .await?;
        Ok(found.into_iter().next())
    }

    pub async fn list(&self, cluster: Option<&str>, limit: u32) -> Result<Vec<Task>, StoreError> {
        let sql = "SELECT id, body, cancel_requested FROM odp_tasks \
                   WHERE (? IS NULL OR cluster = ?) ORDER BY created_at DESC LIMIT ?";
        self.select("list", "*", sql, (cluster, cluster, limit).into())
            .await
    }

    pub async fn unfinished(&self) -> Result<Vec<Task>, StoreError> {
        let sql = "SELECT id, body, cancel_requested FROM odp_tasks \
                   WHERE state = 'running' ORDER BY created_at";
        self.select("list running", "*", sql, ().into()).await
    }

    pub async fn request_cancel(&self, id: &str) -> Result<bool, StoreError> {
        self.within("cancel", id, async {
            let mut conn = self.pool.get_conn().await?;
            conn.exec_drop(
                "UPDATE odp_tasks SET cancel_requested = 1 WHERE id = ? AND state = 'running'",
                (id,),
            )
            .await?;
            Ok(conn.affected_rows() == 1)
        })
        .await
    }
}

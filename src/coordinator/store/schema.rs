//! The metadb's tables, created and versioned by the coordinator: a row in
//! `odp_schema` holds the version; each step up to [`VERSION`] is plain SQL
//! that any MySQL-compatible server runs (no engine-specific features), and
//! safe to run twice (coordinators starting together race through it).
use mysql_async::{Conn, prelude::Queryable};

/// The newest schema this coordinator knows.
pub const VERSION: i64 = 1;

/// Statements taking the schema from version `i` to `i + 1`, by `i`.
const STEPS: &[&[&str]] = &[&[
    "CREATE TABLE IF NOT EXISTS odp_tasks (
         id VARCHAR(64) NOT NULL PRIMARY KEY,
         cluster VARCHAR(64) NOT NULL,
         request_id VARCHAR(128) NULL,
         state VARCHAR(16) NOT NULL,
         created_at DOUBLE NOT NULL,
         cancel_requested TINYINT NOT NULL DEFAULT 0,
         body LONGTEXT NOT NULL,
         UNIQUE KEY odp_tasks_request_id (request_id),
         KEY odp_tasks_state (state)
     )",
    // One row: who leads, under which token, until when (the metadb's own
    // clock, so the coordinators' clocks do not matter).
    "CREATE TABLE IF NOT EXISTS odp_leader (
         id INT NOT NULL PRIMARY KEY,
         holder VARCHAR(255) NOT NULL,
         token BIGINT NOT NULL,
         expires_at DATETIME(6) NOT NULL
     )",
    "INSERT IGNORE INTO odp_leader (id, holder, token, expires_at)
     VALUES (1, '', 0, '2000-01-01 00:00:00')",
]];

/// Brings the schema to [`VERSION`]; `Err((found, known))` when it is newer
/// than this coordinator knows (the metadb is left as it is).
pub async fn migrate(conn: &mut Conn) -> Result<Result<(), (i64, i64)>, mysql_async::Error> {
    conn.query_drop(
        "CREATE TABLE IF NOT EXISTS odp_schema (
             id INT NOT NULL PRIMARY KEY,
             version BIGINT NOT NULL
         )",
    )
    .await?;
    let found: Option<i64> = conn
        .query_first("SELECT version FROM odp_schema WHERE id = 1")
        .await?;
    let found = found.unwrap_or(0);
    if found > VERSION {
        return Ok(Err((found, VERSION)));
    }
    for (from, step) in STEPS.iter().enumerate().skip(found as usize) {
        for sql in *step {
            conn.query_drop(*sql).await?;
        }
        let to = from as i64 + 1;
        conn.exec_drop(
            "INSERT IGNORE INTO odp_schema (id, version) VALUES (1, ?)",
            (to,),
        )
        .await?;
        conn.exec_drop(
            "UPDATE odp_schema SET version = ? WHERE id = 1 AND version < ?",
            (to, to),
        )
        .await?;
        tracing::info!(version = to, "metadb schema migrated");
    }
    Ok(Ok(()))
}

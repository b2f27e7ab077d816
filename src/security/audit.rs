//! The audit log: one JSON line per mutating call, allowed or denied, with
//! time, caller, role, RPC, target, request id and outcome, appended and
//! flushed to disk before the call answers.
use std::{
    borrow::Cow,
    fs::{File, OpenOptions},
    io::Write,
    path::{Path, PathBuf},
    sync::Mutex,
    time::SystemTime,
};

use serde_json::json;

#[derive(Debug, thiserror::Error)]
#[error("cannot open the audit log {path}")]
pub struct AuditError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

pub struct AuditLog {
    path: PathBuf,
    file: Mutex<File>,
}

/// One audited call.
pub struct Entry<'a> {
    pub caller: &'a str,
    pub role: &'a str,
    pub rpc: &'a str,
    pub target: &'a str,
    pub request_id: &'a str,
    /// `ok`, `denied: ...` or `error: CODE: ...`.
    pub outcome: String,
    /// The operation or task the call started or acted on, when it did.
    pub id: Option<&'a str>,
}

/// Longest text kept from a caller-supplied field: the fields are written
/// before they are validated (a refused call is audited too), and a hostile
/// caller must not grow the log by a megabyte a call.
const MAX_FIELD: usize = 256;

fn bounded(text: &str) -> Cow<'_, str> {
    if text.len() <= MAX_FIELD {
        return Cow::Borrowed(text);
    }
    let mut end = MAX_FIELD;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!("{}...({} bytes)", &text[..end], text.len()))
}

impl AuditLog {
    pub fn open(path: &Path) -> Result<Self, AuditError> {
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|source| AuditError {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(Self {
            path: path.to_path_buf(),
            file: Mutex::new(file),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends and syncs the entry; a failure to audit is logged loudly (the
    /// call itself has already been decided).
    pub fn record(&self, e: &Entry<'_>) {
        let line = json!({
            "time": humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            "caller": bounded(e.caller),
            "role": e.role,
            "rpc": e.rpc,
            "target": bounded(e.target),
            "request_id": bounded(e.request_id),
            "outcome": bounded(&e.outcome),
            "id": e.id,
        });
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        let written = writeln!(file, "{line}").and_then(|()| file.sync_data());
        if let Err(err) = written {
            tracing::error!(path = %self.path.display(), error = %err, "cannot write the audit log");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_appended_as_json_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = AuditLog::open(&path).unwrap();
        for outcome in ["ok", "denied: nope"] {
            log.record(&Entry {
                caller: "token:oncall",
                role: "OBPROXY_MANAGER",
                rpc: "Restart",
                target: "local",
                request_id: "r1",
                outcome: outcome.into(),
                id: None,
            });
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[1]["outcome"], "denied: nope");
        assert_eq!(lines[0]["rpc"], "Restart");
    }

    #[test]
    fn a_huge_caller_supplied_field_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = AuditLog::open(&path).unwrap();
        let huge = "é".repeat(100_000);
        log.record(&Entry {
            caller: "anonymous",
            role: "-",
            rpc: "StopAll",
            target: &huge,
            request_id: &huge,
            outcome: "error: InvalidArgument".into(),
            id: None,
        });
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.len() < 2 * 1024, "{} bytes", text.len());
        let line: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        assert!(line["target"].as_str().unwrap().ends_with("(200000 bytes)"));
    }
}

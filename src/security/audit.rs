//! The audit log: one JSON line per mutating call, allowed or denied, with
//! time, caller, role, RPC, target, request id, outcome and the details of
//! what was asked (a restart's mode, binary and window), appended and synced
//! to disk before the call answers. An admitted call is recorded in the step
//! that admits it, and a line that cannot be written refuses the call (see
//! [`super::guard`]). The file is 0600, never reached through a symlink, and
//! opened again when it was rotated, deleted or on SIGHUP.
use std::{
    borrow::Cow,
    fs::File,
    io::Write,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::Mutex,
    time::SystemTime,
};

use serde_json::{Map, Value, json};

use super::files::{self, FileError};

#[derive(Debug, thiserror::Error)]
#[error("cannot open the audit log {path}")]
pub struct AuditError {
    pub path: PathBuf,
    #[source]
    pub source: FileError,
}

/// Why a line could not be written (the call it was for is refused).
#[derive(Debug, thiserror::Error)]
#[error("cannot write the audit log {path}: {reason}")]
pub struct AuditWriteError {
    pub path: PathBuf,
    pub reason: String,
}

pub struct AuditLog {
    path: PathBuf,
    file: Mutex<Option<Open>>,
}

/// The open file and which one it is, so a rotation or a deletion of the
/// path is noticed.
struct Open {
    file: File,
    dev: u64,
    ino: u64,
}

/// What a call asked for besides its target, for the audit line.
pub type Details = Vec<(&'static str, Value)>;

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
    pub details: Details,
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

fn open_file(path: &Path) -> Result<Open, FileError> {
    if let Some(dir) = path.parent() {
        // Missing parents are created private; an existing directory (say
        // /var/log/odp-agent) is left as the administrator made it.
        if !dir.exists() {
            files::private_dir(dir)?;
        }
    }
    let file = files::append_private(path)?;
    let meta = file.metadata().map_err(|source| FileError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(Open {
        file,
        dev: meta.dev(),
        ino: meta.ino(),
    })
}

impl AuditLog {
    /// Opens (or creates) the log; a daemon that cannot must not start.
    pub fn open(path: &Path) -> Result<Self, AuditError> {
        let file = open_file(path).map_err(|source| AuditError {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Self {
            path: path.to_path_buf(),
            file: Mutex::new(Some(file)),
        })
    }

    /// Opens the path again (logrotate's SIGHUP); a failure is logged, and
    /// the next line tries again (and refuses its call if it cannot).
    pub fn reopen(&self) {
        let mut slot = self.file.lock().unwrap_or_else(|p| p.into_inner());
        match open_file(&self.path) {
            Ok(open) => {
                *slot = Some(open);
                tracing::info!(path = %self.path.display(), "audit log reopened");
            }
            Err(e) => {
                *slot = None;
                tracing::error!(path = %self.path.display(), error = %crate::common::error_chain::describe(&e), "cannot reopen the audit log");
            }
        }
    }

    /// Appends and syncs the entry. The file is opened again first if the
    /// path no longer names it (rotated or deleted), so no line goes to a
    /// file nobody will read.
    pub fn record(&self, e: &Entry<'_>) -> Result<(), AuditWriteError> {
        let mut line = json!({
            "time": humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            "caller": bounded(e.caller),
            "role": e.role,
            "rpc": e.rpc,
            "target": bounded(e.target),
            "request_id": bounded(e.request_id),
            "outcome": bounded(&e.outcome),
            "id": e.id,
        });
        if let Value::Object(map) = &mut line {
            let details: Map<String, Value> = e
                .details
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect();
            map.extend(details);
        }
        let mut slot = self.file.lock().unwrap_or_else(|p| p.into_inner());
        // One write(2) per line: the file is opened for appending, so a whole
        // line lands at once (formatting straight into the file made one
        // write per JSON token, about a hundred syscalls on every admission).
        let text = format!("{line}\n");
        let written = self.current(&mut slot).and_then(|open| {
            open.file
                .write_all(text.as_bytes())
                .and_then(|()| open.file.sync_data())
                .map_err(|e| e.to_string())
        });
        written.map_err(|reason| {
            // The next line opens the file afresh.
            *slot = None;
            tracing::error!(path = %self.path.display(), error = %reason, "cannot write the audit log");
            AuditWriteError {
                path: self.path.clone(),
                reason,
            }
        })
    }

    /// The open file, opened again if the path now names another file.
    fn current<'s>(&self, slot: &'s mut Option<Open>) -> Result<&'s mut Open, String> {
        let same = match (&*slot, std::fs::symlink_metadata(&self.path)) {
            (Some(open), Ok(meta)) => meta.dev() == open.dev && meta.ino() == open.ino,
            _ => false,
        };
        if !same {
            if slot.is_some() {
                tracing::warn!(path = %self.path.display(), "the audit log was moved or deleted; opening it again");
            }
            *slot =
                Some(open_file(&self.path).map_err(|e| crate::common::error_chain::describe(&e))?);
        }
        slot.as_mut().ok_or_else(|| "not open".to_string())
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
                details: vec![("mode", "RESTART_MODE_HOT".into())],
            })
            .unwrap();
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[1]["outcome"], "denied: nope");
        assert_eq!(lines[0]["rpc"], "Restart");
        assert_eq!(lines[0]["mode"], "RESTART_MODE_HOT");
    }

    fn entry() -> Entry<'static> {
        Entry {
            caller: "anonymous",
            role: "OBPROXY_MANAGER",
            rpc: "Stop",
            target: "local",
            request_id: "",
            outcome: "ok".into(),
            id: Some("op-1"),
            details: vec![],
        }
    }

    #[test]
    fn a_rotated_or_deleted_log_is_opened_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = AuditLog::open(&path).unwrap();
        log.record(&entry()).unwrap();
        std::fs::rename(&path, dir.path().join("audit.log.1")).unwrap();
        log.record(&entry()).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 1);
        std::fs::remove_file(&path).unwrap();
        log.record(&entry()).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 1);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn a_full_disk_is_an_error_not_a_shrug() {
        let log = AuditLog::open(Path::new("/dev/full")).unwrap();
        let e = log.record(&entry()).unwrap_err();
        assert!(e.to_string().contains("/dev/full"), "{e}");
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
            details: vec![],
        })
        .unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.len() < 2 * 1024, "{} bytes", text.len());
        let line: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        assert!(line["target"].as_str().unwrap().ends_with("(200000 bytes)"));
    }
}

//! The `root@proxysys` password: read once, at start, from
//! `[obproxy] sys_password_file`, refused when other users could read it, and
//! never printed (its `Debug` shows the file, not the secret).
use std::{
    fmt,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};

/// Longer than any password; a bigger file is not one (and a device such as
/// /dev/zero must not be read forever).
const MAX_BYTES: u64 = 1024;

/// The plain text whose SHA-1 is obproxy's `obproxy_sys_password` item.
#[derive(Clone, PartialEq, Eq)]
pub struct SysPassword {
    file: PathBuf,
    secret: String,
}

impl fmt::Debug for SysPassword {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SysPassword")
            .field("file", &self.file)
            .field("secret", &"<redacted>")
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PasswordFileError {
    #[error("cannot read {}", path.display())]
    Unreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is not a regular file", path.display())]
    NotAFile { path: PathBuf },
    #[error(
        "{} is readable by other users (mode {mode:04o}); the admin password must not be: chmod o-rwx {}",
        path.display(), path.display()
    )]
    ReadableByOthers { path: PathBuf, mode: u32 },
    #[error(
        "{} is writable by other users (mode {mode:04o}), so anyone could change the password the agent uses: chmod o-rwx {}",
        path.display(), path.display()
    )]
    WritableByOthers { path: PathBuf, mode: u32 },
    #[error("{} holds {size} bytes: more than a password (at most {MAX_BYTES})", path.display())]
    TooLong { path: PathBuf, size: u64 },
    #[error("{} holds more than one line: the password is its first and only line", path.display())]
    SeveralLines { path: PathBuf },
    #[error("{} is not UTF-8 text", path.display())]
    NotText { path: PathBuf },
}

impl SysPassword {
    /// Reads the password from `file`: plain text, one line (a trailing
    /// newline is not part of it), not readable or writable by others.
    pub fn load(file: &Path) -> Result<Self, PasswordFileError> {
        let path = file.to_path_buf();
        let meta = std::fs::metadata(file).map_err(|source| PasswordFileError::Unreadable {
            path: path.clone(),
            source,
        })?;
        if !meta.is_file() {
            return Err(PasswordFileError::NotAFile { path });
        }
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o004 != 0 {
            return Err(PasswordFileError::ReadableByOthers { path, mode });
        }
        if mode & 0o002 != 0 {
            return Err(PasswordFileError::WritableByOthers { path, mode });
        }
        if meta.len() > MAX_BYTES {
            return Err(PasswordFileError::TooLong {
                path,
                size: meta.len(),
            });
        }
        let bytes = std::fs::read(file).map_err(|source| PasswordFileError::Unreadable {
            path: path.clone(),
            source,
        })?;
        let text = String::from_utf8(bytes)
            .map_err(|_| PasswordFileError::NotText { path: path.clone() })?;
        let secret = text
            .strip_suffix('\n')
            .map(|t| t.strip_suffix('\r').unwrap_or(t))
            .unwrap_or(&text);
        if secret.contains(['\n', '\r']) {
            return Err(PasswordFileError::SeveralLines { path });
        }
        Ok(Self {
            file: path,
            secret: secret.to_string(),
        })
    }

    /// Where it was read from: what error messages name instead of it.
    pub fn file(&self) -> &Path {
        &self.file
    }

    pub(super) fn secret(&self) -> &str {
        &self.secret
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, text: &str, mode: u32) -> PathBuf {
        let path = dir.join("proxysys.pw");
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[test]
    fn a_private_file_gives_its_first_line() {
        let dir = tempfile::tempdir().unwrap();
        let pw = SysPassword::load(&write(dir.path(), "s3cret\n", 0o600)).unwrap();
        assert_eq!(pw.secret(), "s3cret");
        let pw = SysPassword::load(&write(dir.path(), "s3cret\r\n", 0o640)).unwrap();
        assert_eq!(pw.secret(), "s3cret");
        // obproxy's empty item is an empty password.
        let pw = SysPassword::load(&write(dir.path(), "", 0o400)).unwrap();
        assert_eq!(pw.secret(), "");
    }

    #[test]
    fn the_secret_never_shows_in_debug_output() {
        let dir = tempfile::tempdir().unwrap();
        let pw = SysPassword::load(&write(dir.path(), "s3cret", 0o600)).unwrap();
        let shown = format!("{pw:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("proxysys.pw"), "{shown}");
    }

    #[test]
    fn a_file_others_can_read_is_refused_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "s3cret", 0o644);
        let e = SysPassword::load(&path).unwrap_err();
        assert!(matches!(
            e,
            PasswordFileError::ReadableByOthers { mode: 0o644, .. }
        ));
        let text = e.to_string();
        assert!(
            text.contains("mode 0644") && text.contains("chmod o-rwx"),
            "{text}"
        );
    }

    #[test]
    fn a_file_others_can_write_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let e = SysPassword::load(&write(dir.path(), "s3cret", 0o602)).unwrap_err();
        assert!(
            matches!(e, PasswordFileError::WritableByOthers { .. }),
            "{e}"
        );
    }

    #[test]
    fn a_missing_file_names_the_path_and_the_cause() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nope.pw");
        let e = SysPassword::load(&path).unwrap_err();
        let text = crate::common::error_chain::describe(&e);
        assert!(
            text.contains("nope.pw") && text.contains("No such file"),
            "{text}"
        );
    }

    #[test]
    fn a_directory_a_device_or_a_long_file_is_no_password() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            SysPassword::load(dir.path()),
            Err(PasswordFileError::NotAFile { .. })
        ));
        assert!(matches!(
            SysPassword::load(Path::new("/dev/zero")),
            Err(PasswordFileError::NotAFile { .. })
        ));
        let long = "x".repeat(2000);
        assert!(matches!(
            SysPassword::load(&write(dir.path(), &long, 0o600)),
            Err(PasswordFileError::TooLong { .. })
        ));
        assert!(matches!(
            SysPassword::load(&write(dir.path(), "a\nb\n", 0o600)),
            Err(PasswordFileError::SeveralLines { .. })
        ));
    }
}

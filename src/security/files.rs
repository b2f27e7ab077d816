//! The daemons' own files: directories made 0700 and files 0600 whatever the
//! umask, opened without following a symlink, written only into a directory
//! the daemon owns and nobody else may write; and the checks on the files
//! they trust (a configuration others may write, a key others may read, is
//! refused at start).
use std::{
    fs::{File, OpenOptions},
    io,
    os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("{path}: {reason}")]
    Unsafe { path: PathBuf, reason: String },
    #[error("cannot use {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> FileError + '_ {
    move |source| FileError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn unsafe_file(path: &Path, reason: String) -> FileError {
    FileError::Unsafe {
        path: path.to_path_buf(),
        reason,
    }
}

/// The umask every daemon runs under: what it creates is its own. obproxy
/// gets the umask the daemon was started with back (see [`inherited_umask`]).
const DAEMON_UMASK: u32 = 0o077;

static INHERITED_UMASK: std::sync::OnceLock<u32> = std::sync::OnceLock::new();

/// Sets the daemon's umask to 0077, remembering the one it was given.
pub fn restrict_umask() {
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(DAEMON_UMASK));
    let _ = INHERITED_UMASK.set(old.bits());
}

/// The umask the daemon was started with (for the processes it starts).
pub fn inherited_umask() -> u32 {
    INHERITED_UMASK.get().copied().unwrap_or(DAEMON_UMASK)
}

fn me() -> u32 {
    nix::unistd::geteuid().as_raw()
}

/// Creates `dir` (and its parents) 0700, or checks an existing one: it must
/// be a directory of the daemon's user; any access for group or others is
/// taken away.
pub fn private_dir(dir: &Path) -> Result<(), FileError> {
    // The directory itself is named by the configuration and may be a
    // symlink (systemd's DynamicUser= makes /var/lib/NAME one).
    match std::fs::metadata(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io_err(dir))?,
        Err(e) => return Err(io_err(dir)(e)),
        Ok(_) => {}
    }
    let meta = std::fs::metadata(dir).map_err(io_err(dir))?;
    if !meta.is_dir() {
        return Err(unsafe_file(dir, "is not a directory".into()));
    }
    if meta.uid() != me() {
        return Err(unsafe_file(
            dir,
            format!(
                "is owned by uid {}, not by the daemon's user (uid {}): whoever owns it could plant files the daemon trusts",
                meta.uid(),
                me()
            ),
        ));
    }
    if meta.mode() & 0o077 != 0 {
        tracing::warn!(dir = %dir.display(), mode = format!("{:o}", meta.mode() & 0o777), "making the directory private (0700)");
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(io_err(dir))?;
    }
    Ok(())
}

/// Checked before every write into `dir`: the daemon's own, and nobody
/// else may add or replace an entry in it.
pub fn check_writable_dir(dir: &Path) -> Result<(), FileError> {
    let meta = std::fs::metadata(dir).map_err(io_err(dir))?;
    if !meta.is_dir() || meta.uid() != me() || meta.mode() & 0o022 != 0 {
        return Err(unsafe_file(
            dir,
            format!(
                "refusing to write here: owner uid {} and mode {:o}; it must be a directory of uid {} that nobody else may write",
                meta.uid(),
                meta.mode() & 0o7777,
                me()
            ),
        ));
    }
    Ok(())
}

/// A new private file (0600) in place of whatever `path` was: the old entry
/// (a file, or a symlink planted there) is removed, never followed.
pub fn create_private(path: &Path) -> Result<File, FileError> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(path)(e)),
    }
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(io_err(path))
}

/// `path` opened for appending, created 0600 if missing; a symlink is not
/// followed. An existing regular file of ours is made private; another
/// kind of file (`/dev/null`) is used as it is.
pub fn append_private(path: &Path) -> Result<File, FileError> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                unsafe_file(path, "is a symlink; refusing to follow it".into())
            } else {
                io_err(path)(e)
            }
        })?;
    let meta = file.metadata().map_err(io_err(path))?;
    if meta.is_file() && meta.uid() == me() && meta.mode() & 0o077 != 0 {
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(io_err(path))?;
    }
    Ok(file)
}

/// A configuration file: others (and the group) must not be able to change
/// it, since it says what the daemon runs and who may call it.
pub fn check_config(path: &Path) -> Result<(), String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read the file: {e}"))?;
    if meta.mode() & 0o022 != 0 {
        return Err(format!(
            "{} is writable by {} (mode {:o}); chmod go-w it",
            path.display(),
            if meta.mode() & 0o002 != 0 {
                "everyone"
            } else {
                "its group"
            },
            meta.mode() & 0o777
        ));
    }
    Ok(())
}

/// A private key: nobody but its owner and group may read it, nobody but
/// its owner write it.
pub fn check_secret(path: &Path) -> Result<(), String> {
    let meta =
        std::fs::metadata(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if meta.mode() & 0o026 != 0 {
        return Err(format!(
            "{} is {} (mode {:o}); a private key must be 0600 or 0640",
            path.display(),
            if meta.mode() & 0o006 != 0 {
                "open to everyone"
            } else {
                "writable by its group"
            },
            meta.mode() & 0o777
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::symlink_metadata(path).unwrap().mode() & 0o777
    }

    #[test]
    fn directories_and_files_are_private_whatever_the_umask() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("a/state");
        private_dir(&state).unwrap();
        assert_eq!(mode(&state), 0o700);
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o777)).unwrap();
        private_dir(&state).unwrap();
        assert_eq!(mode(&state), 0o700);
        let f = state.join("f");
        drop(create_private(&f).unwrap());
        assert_eq!(mode(&f), 0o600);
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        drop(append_private(&f).unwrap());
        assert_eq!(mode(&f), 0o600);
    }

    #[test]
    fn a_planted_symlink_is_replaced_or_refused_never_followed() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "original").unwrap();
        let link = dir.path().join("state.tmp");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        let mut f = create_private(&link).unwrap();
        std::io::Write::write_all(&mut f, b"new").unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "original");
        let log = dir.path().join("audit.log");
        std::os::unix::fs::symlink(&victim, &log).unwrap();
        assert!(matches!(
            append_private(&log),
            Err(FileError::Unsafe { .. })
        ));
    }

    #[test]
    fn a_directory_others_may_write_is_not_written_into() {
        let dir = tempfile::tempdir().unwrap();
        check_writable_dir(dir.path()).unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(check_writable_dir(dir.path()).is_err());
    }

    #[test]
    fn open_keys_and_writable_configs_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("x");
        std::fs::write(&f, "x").unwrap();
        for (m, config_ok, secret_ok) in [
            (0o600, true, true),
            (0o640, true, true),
            (0o644, true, false),
            (0o660, false, false),
            (0o666, false, false),
        ] {
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(m)).unwrap();
            assert_eq!(check_config(&f).is_ok(), config_ok, "{m:o}");
            assert_eq!(check_secret(&f).is_ok(), secret_ok, "{m:o}");
        }
    }
}

//! What a daemon needs of a path, looked at without touching it: a
//! directory it reads, a file it runs, a directory or file it writes (there
//! and writable, or creatable because the nearest existing ancestor is a
//! writable directory). Permissions are asked of the kernel (`access(2)`) for
//! the user running the check, which under the units' `ExecStartPre` is the
//! daemon's own user.
use std::{
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::Path,
};

use nix::unistd::{AccessFlags, access};

/// How a path the daemon writes stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Writable {
    /// There, with its permission bits.
    Exists { mode: u32 },
    /// Not there yet; the daemon creates it.
    Created,
}

fn can(path: &Path, flags: AccessFlags) -> bool {
    access(path, flags).is_ok()
}

/// A directory the daemon reads (obproxy's home, the upgrade directory).
pub fn directory(dir: &Path) -> Result<(), String> {
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => {
            if can(dir, AccessFlags::R_OK | AccessFlags::X_OK) {
                Ok(())
            } else {
                Err(format!("{} is not readable by this user", dir.display()))
            }
        }
        Ok(_) => Err(format!("{} is not a directory", dir.display())),
        Err(e) => Err(format!("{}: {e}", dir.display())),
    }
}

/// A program the daemon runs (obproxy).
pub fn executable(file: &Path) -> Result<(), String> {
    match std::fs::metadata(file) {
        Ok(m) if !m.is_file() => Err(format!("{} is not a regular file", file.display())),
        Ok(m) if m.permissions().mode() & 0o111 == 0 || !can(file, AccessFlags::X_OK) => {
            Err(format!("{} is not executable by this user", file.display()))
        }
        Ok(_) => Ok(()),
        Err(e) => Err(format!("{}: {e}", file.display())),
    }
}

/// A directory the daemon writes in, created at start if missing.
pub fn writable_dir(dir: &Path) -> Result<Writable, String> {
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => {
            if can(dir, AccessFlags::W_OK | AccessFlags::X_OK) {
                Ok(Writable::Exists {
                    mode: m.mode() & 0o7777,
                })
            } else {
                Err(format!("{} is not writable by this user", dir.display()))
            }
        }
        Ok(_) => Err(format!("{} is not a directory", dir.display())),
        Err(e) if missing(&e) => creatable(dir),
        Err(e) => Err(format!("{}: {e}", dir.display())),
    }
}

/// A file the daemon writes (the task store, the audit log), created at
/// start if missing, with its directory.
pub fn writable_file(file: &Path) -> Result<Writable, String> {
    match std::fs::metadata(file) {
        Ok(m) if m.is_file() => {
            if can(file, AccessFlags::W_OK) {
                Ok(Writable::Exists {
                    mode: m.mode() & 0o7777,
                })
            } else {
                Err(format!("{} is not writable by this user", file.display()))
            }
        }
        Ok(_) => Err(format!("{} is not a regular file", file.display())),
        Err(e) if missing(&e) => creatable(file),
        Err(e) => Err(format!("{}: {e}", file.display())),
    }
}

/// A directory the daemon takes as its own at start (its state directory,
/// the task store's): there, it must belong to the daemon's user, which
/// under `ExecStartPre=` is the user running the check. Root running it by
/// hand gets a note instead (the unit's user is not known here). Missing:
/// the daemon creates it.
pub fn owned(dir: &Path) -> Result<Option<String>, String> {
    let Ok(meta) = std::fs::metadata(dir) else {
        return Ok(None);
    };
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() == me {
        return Ok(None);
    }
    let owner = format!("{} is owned by uid {}", dir.display(), meta.uid());
    if me == 0 {
        Ok(Some(format!(
            "{owner}: the daemon must run as that user (the unit's User=); checked as root, \
             so what that user may do is not"
        )))
    } else {
        Err(format!(
            "{owner}, not by the daemon's user (uid {me}): the daemon refuses a directory \
             someone else could plant files in"
        ))
    }
}

/// Not there, or under something that is not a directory (which
/// [`creatable`] then names).
fn missing(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
    )
}

/// A missing path can be created when its nearest existing ancestor is a
/// directory this user may write in.
fn creatable(path: &Path) -> Result<Writable, String> {
    let mut ancestor = path.parent();
    while let Some(dir) = ancestor {
        match std::fs::metadata(dir) {
            Ok(m) if m.is_dir() => {
                return if can(dir, AccessFlags::W_OK | AccessFlags::X_OK) {
                    Ok(Writable::Created)
                } else {
                    Err(format!(
                        "{} does not exist and cannot be created: {} is not writable by this user",
                        path.display(),
                        dir.display()
                    ))
                };
            }
            Ok(_) => {
                return Err(format!(
                    "{} cannot be created: {} is not a directory",
                    path.display(),
                    dir.display()
                ));
            }
            Err(_) => ancestor = dir.parent(),
        }
    }
    Err(format!("{} has no existing ancestor", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_directory_under_a_writable_one_will_be_created() {
        let dir = tempfile::tempdir().unwrap();
        let deep = dir.path().join("a/b/c");
        assert_eq!(writable_dir(&deep), Ok(Writable::Created));
        assert_eq!(writable_file(&deep.join("tasks.db")), Ok(Writable::Created));
        assert!(matches!(
            writable_dir(dir.path()),
            Ok(Writable::Exists { .. })
        ));
    }

    #[test]
    fn a_file_where_a_directory_belongs_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, "x").unwrap();
        assert!(writable_dir(&file).unwrap_err().contains("not a directory"));
        assert!(
            writable_dir(&file.join("below"))
                .unwrap_err()
                .contains("not a directory")
        );
        assert!(directory(&file).unwrap_err().contains("not a directory"));
    }

    #[test]
    fn a_file_without_execute_bits_is_not_a_program() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("obproxy");
        std::fs::write(&file, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(executable(&file).unwrap_err().contains("not executable"));
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(executable(&file), Ok(()));
        assert!(
            executable(&dir.path().join("missing"))
                .unwrap_err()
                .contains("No such file")
        );
    }
}

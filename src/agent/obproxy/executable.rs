//! The file an obproxy is started from, opened once: its version is read
//! from that very file and the process is started from it (exec through
//! `/proc/self/fd/N`, i.e. fexecve), so nothing renamed or swapped on disk in
//! between changes what runs. A hot upgrade's binary is opened beneath
//! `upgrade_dir` one component at a time without following any symlink, and
//! refused if others may write it or a user other than root or the agent's
//! owns it.
use std::{
    ffi::CString,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
        unix::{ffi::OsStrExt, fs::MetadataExt},
    },
    path::{Component, Path, PathBuf},
    sync::Arc,
};

#[derive(Debug, thiserror::Error)]
pub enum ExecutableError {
    #[error("cannot open {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Refused { path: PathBuf, reason: String },
}

/// An opened executable and the path it was opened by (for logs, status
/// and `argv[0]`).
#[derive(Debug, Clone)]
pub struct Executable {
    path: PathBuf,
    fd: Arc<OwnedFd>,
}

/// What an operation starts: the configured binary (opened when it starts)
/// or a hot upgrade's, opened when the request was checked.
#[derive(Debug, Clone)]
pub enum Binary {
    Configured(PathBuf),
    Opened(Executable),
}

impl From<PathBuf> for Binary {
    fn from(path: PathBuf) -> Self {
        Binary::Configured(path)
    }
}

impl From<Executable> for Binary {
    fn from(exe: Executable) -> Self {
        Binary::Opened(exe)
    }
}

impl Binary {
    pub fn open(self) -> Result<Executable, ExecutableError> {
        match self {
            Binary::Configured(path) => Executable::open(&path),
            Binary::Opened(exe) => Ok(exe),
        }
    }
}

fn open_at(dir: RawFd, name: &Path, flags: libc::c_int) -> std::io::Result<OwnedFd> {
    let c = CString::new(name.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: a valid NUL-terminated name; the result is a new fd or -1.
    let fd = unsafe { libc::openat(dir, c.as_ptr(), flags | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: openat returned a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

impl Executable {
    /// The configured binary, by its path (the configuration is trusted; a
    /// symlink there is the administrator's choice).
    pub fn open(path: &Path) -> Result<Self, ExecutableError> {
        let fd = open_at(libc::AT_FDCWD, path, libc::O_PATH).map_err(|source| {
            ExecutableError::Open {
                path: path.to_path_buf(),
                source,
            }
        })?;
        Ok(Self {
            path: path.to_path_buf(),
            fd: Arc::new(fd),
        })
    }

    /// `relative` beneath `dir`, every component opened relative to the one
    /// before with no symlink followed (a swap of any directory on the way
    /// cannot lead out), then checked: a regular executable file that only
    /// root or the agent's user owns and nobody else may write.
    pub fn beneath(dir: &Path, relative: &Path) -> Result<Self, ExecutableError> {
        let full = dir.join(relative);
        let refused = |reason: String| ExecutableError::Refused {
            path: full.clone(),
            reason,
        };
        let open_err = |source| ExecutableError::Open {
            path: full.clone(),
            source,
        };
        let mut names = Vec::new();
        for c in relative.components() {
            match c {
                Component::Normal(name) => names.push(name),
                Component::CurDir => {}
                _ => {
                    return Err(refused(
                        "must be a plain path inside the upgrade directory".into(),
                    ));
                }
            }
        }
        let Some((file, dirs)) = names.split_last() else {
            return Err(ExecutableError::Refused {
                path: dir.to_path_buf(),
                reason: "is the upgrade directory itself, not an executable file".into(),
            });
        };
        let mut at =
            open_at(libc::AT_FDCWD, dir, libc::O_PATH | libc::O_DIRECTORY).map_err(|source| {
                ExecutableError::Open {
                    path: dir.to_path_buf(),
                    source,
                }
            })?;
        for name in dirs {
            at = open_at(
                at.as_raw_fd(),
                Path::new(name),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW,
            )
            .map_err(|e| match e.raw_os_error() {
                Some(libc::ELOOP | libc::ENOTDIR) => refused(format!(
                    "{} is a symlink or not a directory; no symlink is followed in the upgrade directory",
                    Path::new(name).display()
                )),
                _ => open_err(e),
            })?;
        }
        let fd = open_at(
            at.as_raw_fd(),
            Path::new(file),
            libc::O_PATH | libc::O_NOFOLLOW,
        )
        .map_err(open_err)?;
        let meta = nix::sys::stat::fstat(&fd).map_err(|e| open_err(e.into()))?;
        let kind = meta.st_mode & libc::S_IFMT;
        if kind == libc::S_IFLNK {
            return Err(refused(
                "is a symlink; no symlink is followed in the upgrade directory".into(),
            ));
        }
        if kind != libc::S_IFREG || meta.st_mode & 0o111 == 0 {
            return Err(refused("is not an executable file".into()));
        }
        if meta.st_mode & 0o022 != 0 {
            return Err(refused(format!(
                "others may write it (mode {:o}); it would run as the agent's user",
                meta.st_mode & 0o7777
            )));
        }
        let me = nix::unistd::geteuid().as_raw();
        if meta.st_uid != 0 && meta.st_uid != me {
            return Err(refused(format!(
                "is owned by uid {}, neither root nor the agent's user (uid {me})",
                meta.st_uid
            )));
        }
        Ok(Self {
            path: full,
            fd: Arc::new(fd),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file's identity (device, inode), to compare with another path.
    pub fn same_file_as(&self, path: &Path) -> bool {
        let Ok(other) = std::fs::metadata(path) else {
            return false;
        };
        nix::sys::stat::fstat(&*self.fd)
            .is_ok_and(|m| m.st_dev == other.dev() && m.st_ino == other.ino())
    }

    /// What to exec: this descriptor through `/proc/self/fd` (the child's
    /// own table, which it inherits), and the descriptor the child must keep
    /// open across exec so an interpreter (`#!`) can read the script.
    pub fn program(&self) -> (PathBuf, RawFd) {
        let fd = self.fd.as_raw_fd();
        (PathBuf::from(format!("/proc/self/fd/{fd}")), fd)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn executable(path: &Path) {
        std::fs::write(path, "#!/bin/sh\necho hi\n").unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[test]
    fn a_binary_is_opened_beneath_the_directory_without_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir_all(bin.join("sub")).unwrap();
        std::fs::create_dir_all(dir.path().join("outside")).unwrap();
        executable(&bin.join("sub/obproxy"));
        executable(&dir.path().join("outside/obproxy"));
        std::os::unix::fs::symlink(dir.path().join("outside"), bin.join("escape")).unwrap();
        std::os::unix::fs::symlink(bin.join("sub/obproxy"), bin.join("current")).unwrap();

        let ok = Executable::beneath(&bin, Path::new("sub/obproxy")).unwrap();
        assert!(ok.same_file_as(&bin.join("sub/obproxy")));
        for bad in [
            "escape/obproxy",
            "current",
            "../outside/obproxy",
            "sub",
            "missing",
        ] {
            assert!(Executable::beneath(&bin, Path::new(bad)).is_err(), "{bad}");
        }
        std::fs::set_permissions(
            bin.join("sub/obproxy"),
            std::fs::Permissions::from_mode(0o777),
        )
        .unwrap();
        let e = Executable::beneath(&bin, Path::new("sub/obproxy")).unwrap_err();
        assert!(e.to_string().contains("others may write"), "{e}");
    }

    #[test]
    fn the_opened_file_is_what_runs_even_after_a_swap() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        let path = bin.join("tool");
        std::fs::write(&path, "#!/bin/sh\necho first\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        let exe = Executable::beneath(&bin, Path::new("tool")).unwrap();
        // Replaced on disk after the check: the opened file still runs.
        std::fs::remove_file(&path).unwrap();
        executable(&path);
        let (program, fd) = exe.program();
        let mut cmd = std::process::Command::new(program);
        // SAFETY: only fcntl between fork and exec.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
                libc::fcntl(fd, libc::F_SETFD, 0);
                Ok(())
            });
        }
        let out = cmd.output().unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "first\n");
    }
}

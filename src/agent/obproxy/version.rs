//! Reading obproxy's version from `obproxy -V`, which prints on stderr, once
//! per binary file: a file's version cannot change while the file does not,
//! and `-V` is a whole extra process start on the path of every restart.
use std::{
    collections::HashMap,
    path::Path,
    sync::{LazyLock, Mutex},
    time::Duration,
};

use tokio::process::Command;

use super::executable::Executable;
use crate::common::obproxy_version::parse;

#[derive(Debug, thiserror::Error)]
pub enum VersionError {
    #[error("cannot run {binary} -V")]
    Run {
        binary: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{binary} -V did not answer within {timeout:?}")]
    Timeout { binary: String, timeout: Duration },
    #[error(transparent)]
    Open(#[from] super::executable::ExecutableError),
    #[error("{binary} -V printed no \"(OceanBase x.y.z.w ...)\" line on stderr: {stderr:?}")]
    Unrecognised { binary: String, stderr: String },
}

/// Which file an opened binary is, and whether it changed: device, inode,
/// size and modification time (a binary installed over the old one, or
/// copied to a new inode, or rewritten in place, differs in at least one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BinaryId {
    dev: u64,
    ino: u64,
    size: i64,
    mtime_ns: i128,
}

impl BinaryId {
    /// The identity of the opened file (through its descriptor: what was
    /// opened is what is run).
    pub fn of(binary: &Executable) -> std::io::Result<Self> {
        let (_, fd) = binary.program();
        // SAFETY: the descriptor is open for as long as `binary` lives.
        let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        let m = nix::sys::stat::fstat(fd)?;
        Ok(Self {
            dev: m.st_dev,
            ino: m.st_ino,
            size: m.st_size,
            mtime_ns: i128::from(m.st_mtime) * 1_000_000_000 + i128::from(m.st_mtime_nsec),
        })
    }
}

/// Versions read so far, by the identity of the file they were read from.
#[derive(Default)]
pub struct VersionCache {
    known: Mutex<HashMap<BinaryId, String>>,
    /// How many times `-V` was run (what the cache saves is visible in tests).
    probes: std::sync::atomic::AtomicU64,
}

/// The agent's cache (one obproxy binary or a few per agent).
static CACHE: LazyLock<VersionCache> = LazyLock::new(VersionCache::default);

/// The version of `binary`, from the cache while the file is unchanged.
pub async fn of(binary: &Executable, home: &Path) -> Result<String, VersionError> {
    CACHE.version(binary, home).await
}

impl VersionCache {
    /// The version of `binary`: `-V` is run only when the file is new to the
    /// cache or changed since (or cannot be looked at: then `-V` says why).
    pub async fn version(&self, binary: &Executable, home: &Path) -> Result<String, VersionError> {
        let before = BinaryId::of(binary).ok();
        if let Some(id) = before
            && let Some(version) = self.lock().get(&id)
        {
            return Ok(version.clone());
        }
        self.probes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let version = probe(binary, home).await?;
        // Kept only if the file did not change while `-V` ran.
        if let Some(id) = before
            && BinaryId::of(binary).ok() == Some(id)
        {
            self.lock().insert(id, version.clone());
        }
        Ok(version)
    }

    /// How many times `-V` was run.
    pub fn probes(&self) -> u64 {
        self.probes.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<BinaryId, String>> {
        self.known.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The version of the file at `path` as it is now: opened, then run through
/// its descriptor.
pub async fn probe_path(path: &Path, home: &Path) -> Result<String, VersionError> {
    probe(&Executable::open(path)?, home).await
}

/// Runs `binary -V` in `home` and parses its version (the opened file
/// itself, which is then the one started).
pub async fn probe(binary: &Executable, home: &Path) -> Result<String, VersionError> {
    let timeout = Duration::from_secs(10);
    let name = binary.path().display().to_string();
    let (program, fd) = binary.program();
    let mut command = Command::new(program);
    // SAFETY: only prctl and fcntl between fork and exec: no ambient
    // capability of the agent's reaches the binary (obproxy never gets the
    // agent's CAP_SYS_PTRACE, `-V` included), and the descriptor survives
    // the exec, for an interpreter (#!) that opens the script by its name.
    unsafe {
        command.pre_exec(move || {
            super::posix_spawn::clear_ambient_capabilities();
            if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let output = command
        .arg0(binary.path())
        .arg("-V")
        .current_dir(home)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(timeout, output)
        .await
        .map_err(|_| VersionError::Timeout {
            binary: name.clone(),
            timeout,
        })?
        .map_err(|source| VersionError::Run {
            binary: name.clone(),
            source,
        })?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    parse(&stderr).ok_or_else(|| VersionError::Unrecognised {
        binary: name,
        stderr: stderr.chars().take(200).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn script(path: &Path, version: &str) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(
            path,
            format!("#!/bin/sh\necho 'obproxy (OceanBase {version} 1-x)' >&2\n"),
        )
        .unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    async fn read(cache: &VersionCache, bin: &Path) -> String {
        let exe = Executable::open(bin).unwrap();
        cache.version(&exe, bin.parent().unwrap()).await.unwrap()
    }

    #[tokio::test]
    #[cfg_attr(skip_root, ignore = "raises an ambient capability: needs root")]
    async fn v_runs_without_the_agents_ambient_capability() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("obproxy");
        std::fs::write(
            &bin,
            "#!/bin/sh\ngrep CapAmb /proc/self/status > capamb\n\
             echo 'obproxy (OceanBase 4.3.1.0 1-x)' >&2\n",
        )
        .unwrap();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        // The current-thread runtime forks from this thread.
        crate::agent::obproxy::posix_spawn::raise_ambient_ptrace();
        assert_eq!(probe_path(&bin, dir.path()).await.unwrap(), "4.3.1.0");
        let seen = std::fs::read_to_string(dir.path().join("capamb")).unwrap();
        assert_eq!(seen.trim_end(), "CapAmb:\t0000000000000000");
    }

    #[tokio::test]
    async fn v_runs_once_per_binary_and_again_when_the_file_changes() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("obproxy");
        script(&bin, "4.3.1.0");
        let cache = VersionCache::default();
        for _ in 0..3 {
            assert_eq!(read(&cache, &bin).await, "4.3.1.0");
        }
        assert_eq!(cache.probes(), 1);
        // Installed over: another inode, and a new version read.
        let new = dir.path().join("obproxy.new");
        script(&new, "4.3.2.0");
        std::fs::rename(&new, &bin).unwrap();
        assert_eq!(read(&cache, &bin).await, "4.3.2.0");
        assert_eq!(cache.probes(), 2);
        // Another binary is another entry.
        let other = dir.path().join("obproxy-4.4");
        script(&other, "4.4.0.0");
        assert_eq!(read(&cache, &other).await, "4.4.0.0");
        assert_eq!(read(&cache, &bin).await, "4.3.2.0");
        assert_eq!(cache.probes(), 3);
    }

    #[tokio::test]
    async fn a_binary_rewritten_in_place_is_read_again() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("obproxy");
        script(&bin, "4.3.1.0");
        let cache = VersionCache::default();
        assert_eq!(read(&cache, &bin).await, "4.3.1.0");
        // Same inode, new contents (and size).
        script(&bin, "4.3.10.0");
        assert_eq!(read(&cache, &bin).await, "4.3.10.0");
        assert_eq!(cache.probes(), 2);
    }
}

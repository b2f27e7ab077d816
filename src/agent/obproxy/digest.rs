//! The SHA-256 of obproxy binaries, read once per file (device, inode, size
//! and modification time; see [`BinaryId`]) and kept: a file's digest cannot
//! change while the file does not, and hashing a large binary is too slow
//! for every status. Hashing runs on a blocking thread, never on the
//! supervisor's.
use std::{
    collections::{HashMap, HashSet},
    io::Read,
    path::{Path, PathBuf},
    sync::{LazyLock, Mutex},
    time::Duration,
};

use sha2::{Digest, Sha256};

use super::{
    executable::{Executable, ExecutableError},
    version::BinaryId,
};

#[derive(Debug, thiserror::Error)]
pub enum DigestError {
    #[error(transparent)]
    Open(#[from] ExecutableError),
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Default)]
struct Digests {
    known: Mutex<HashMap<BinaryId, String>>,
    /// Files being hashed for a status (one thread per file at a time).
    hashing: Mutex<HashSet<BinaryId>>,
}

static DIGESTS: LazyLock<Digests> = LazyLock::new(Digests::default);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The digest of the opened file, from the cache while it is unchanged.
pub async fn of(binary: &Executable) -> Result<String, DigestError> {
    let id = BinaryId::of(binary).ok();
    if let Some(digest) = id.and_then(|id| lock(&DIGESTS.known).get(&id).cloned()) {
        return Ok(digest);
    }
    let exe = binary.clone();
    let digest = tokio::task::spawn_blocking(move || hash(&exe))
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))?;
    remember(binary, id, &digest);
    Ok(digest)
}

/// The digest of the file at `path` if it is known; if not, it is computed
/// in the background (once per file) for a later status.
pub fn cached(path: &Path) -> Option<String> {
    let exe = Executable::open(path).ok()?;
    let id = BinaryId::of(&exe).ok()?;
    if let Some(digest) = lock(&DIGESTS.known).get(&id) {
        return Some(digest.clone());
    }
    if lock(&DIGESTS.hashing).insert(id) {
        // A detached thread: it only reads one file and ends; nothing waits
        // for it at shutdown.
        let spawned = std::thread::Builder::new()
            .name("binary-digest".into())
            .spawn(move || {
                if let Ok(digest) = hash(&exe) {
                    remember(&exe, Some(id), &digest);
                }
                lock(&DIGESTS.hashing).remove(&id);
            });
        if spawned.is_err() {
            lock(&DIGESTS.hashing).remove(&id);
        }
    }
    None
}

/// Makes the digests of `paths` known, waiting at most `within` (a status
/// is answered without one that takes longer, and shows it later).
pub async fn settle(paths: &[&Path], within: Duration) {
    let all = async {
        for path in paths {
            // From the cache when known; else hashed here, within the wait.
            if let Ok(exe) = Executable::open(path) {
                let _ = of(&exe).await;
            }
        }
    };
    let _ = tokio::time::timeout(within, all).await;
}

/// Kept only if the file did not change while it was read.
fn remember(binary: &Executable, id: Option<BinaryId>, digest: &str) {
    if let Some(id) = id
        && BinaryId::of(binary).ok() == Some(id)
    {
        lock(&DIGESTS.known).insert(id, digest.to_string());
    }
}

/// Reads the opened file itself (through `/proc/self/fd`, the descriptor
/// it was opened by), so a file swapped on disk meanwhile is not what is
/// hashed.
fn hash(binary: &Executable) -> Result<String, DigestError> {
    let (program, _) = binary.program();
    let err = |source| DigestError::Read {
        path: binary.path().to_path_buf(),
        source,
    };
    let mut file = std::fs::File::open(&program).map_err(err)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf).map_err(err)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_digest_is_the_file_content_s_and_is_read_once_per_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("obproxy");
        std::fs::write(&path, b"abc").unwrap();
        let exe = Executable::open(&path).unwrap();
        let abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert_eq!(of(&exe).await.unwrap(), abc);
        assert_eq!(cached(&path).as_deref(), Some(abc));
        // Another file at the path is another identity: not the old digest.
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, b"abcd").unwrap();
        settle(&[&path], Duration::from_secs(5)).await;
        assert_ne!(cached(&path).as_deref(), Some(abc));
        assert_eq!(cached(&path).unwrap().len(), 64);
    }
}

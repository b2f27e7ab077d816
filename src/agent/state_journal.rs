//! A cheaper durable write of the agent's state, for the one write a HOT
//! restart makes before its new process serves (the promotion).
//!
//! A full write of the state file ([`state_file::save`]) is a new file, its
//! fsync, a rename and an fsync of the directory: two journal commits of the
//! filesystem, about 0.5 to 0.7 ms on a virtual disk. This journal is a file
//! of fixed size whose blocks were written (and synced) once, when it was
//! made: a state is written into it in place and `fdatasync`ed, which flushes
//! only the data (no block is allocated and the size does not change), about
//! 0.1 ms on the same disk. Each entry is one line: a checksum, then the
//! state as JSON. A line torn by a power loss, or what is left of an older,
//! longer line past the end of a newer one, fails its checksum and is not
//! read. Entries are written one after another and wrap to the start when
//! the file is full, so the newest is never the one overwritten.
//!
//! Every state carries a generation: [`state_file::load`] believes the newest
//! of the state file and the journal's entries. The supervisor writes the
//! whole file again right after a journalled promotion (off the path the
//! caller waits on), so the journal is only ever a few milliseconds ahead.
use std::{
    fs::File,
    io::Read,
    os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt},
    path::{Path, PathBuf},
};

use sha2::{Digest, Sha256};

use super::state_file::{AgentState, StateFileError};
use crate::{common::error_chain::describe, security::files};

const FILE: &str = "agent-state.journal";

/// Room for about sixty states (one is 0.5 to 1.5 KiB).
const SIZE: usize = 64 * 1024;

/// Hex digits of the SHA-256 kept per line: a torn line is not mistaken for
/// a whole one.
const SUM_LEN: usize = 16;

pub fn path(dir: &Path) -> PathBuf {
    dir.join(FILE)
}

/// The journal of a state directory, open for in-place writes.
pub struct Journal {
    file: File,
    /// Where the next entry goes.
    pos: usize,
}

impl Journal {
    /// Makes the journal afresh (a planted file or symlink is removed, not
    /// followed): its whole size written and synced, then the directory, so
    /// that later writes allocate nothing. Only once the state file holds a
    /// state at least as new as anything the old journal held: whatever it
    /// held is discarded.
    pub fn create(dir: &Path) -> Result<Self, StateFileError> {
        let path = path(dir);
        let err = |source| StateFileError::Write {
            path: path.clone(),
            source,
        };
        files::check_writable_dir(dir).map_err(|e| err(std::io::Error::other(describe(&e))))?;
        let made = (|| {
            let file = files::create_private(&path)
                .map_err(|e| err(std::io::Error::other(describe(&e))))?;
            file.write_all_at(&[b'\n'; SIZE], 0).map_err(err)?;
            file.sync_all().map_err(err)?;
            File::open(dir).and_then(|d| d.sync_all()).map_err(err)?;
            Ok(file)
        })();
        match made {
            Ok(file) => Ok(Self { file, pos: 0 }),
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                Err(e)
            }
        }
    }

    /// Writes `state` durably (one `fdatasync`). A state too large for the
    /// journal is refused (the caller writes the file instead).
    pub fn write(&mut self, dir: &Path, state: &AgentState) -> Result<(), StateFileError> {
        let path = path(dir);
        let err = |source| StateFileError::Write {
            path: path.clone(),
            source,
        };
        let line = entry(state).map_err(|e| err(std::io::Error::other(e)))?;
        if line.len() > SIZE / 2 {
            return Err(err(std::io::Error::other(format!(
                "a state of {} bytes does not fit the journal",
                line.len()
            ))));
        }
        if self.pos + line.len() > SIZE {
            self.pos = 0;
        }
        self.file
            .write_all_at(line.as_bytes(), self.pos as u64)
            .map_err(err)?;
        self.file.sync_data().map_err(err)?;
        self.pos += line.len();
        Ok(())
    }
}

fn entry(state: &AgentState) -> Result<String, serde_json::Error> {
    let json = serde_json::to_string(state)?;
    Ok(format!("{} {json}\n", checksum(&json)))
}

fn checksum(json: &str) -> String {
    let sum = Sha256::digest(json.as_bytes());
    let hex: String = sum.iter().map(|b| format!("{b:02x}")).collect();
    hex[..SUM_LEN].to_string()
}

/// The newest whole state in the journal of `dir`, if any. Trusted as the
/// state file is: a regular file of the agent's user that nobody else may
/// write, not through a symlink.
pub fn newest(dir: &Path) -> Result<Option<AgentState>, StateFileError> {
    let path = path(dir);
    let opened = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&path);
    let mut file = match opened {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(StateFileError::Read { path, source }),
    };
    let meta = file.metadata().map_err(|source| StateFileError::Read {
        path: path.clone(),
        source,
    })?;
    let me = nix::unistd::geteuid().as_raw();
    if !meta.is_file() || meta.uid() != me || meta.mode() & 0o022 != 0 {
        return Err(StateFileError::Untrusted {
            reason: format!(
                "owner uid {} and mode {:o}; the agent (uid {me}) writes it 0600",
                meta.uid(),
                meta.mode() & 0o7777
            ),
            path,
        });
    }
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)
        .map_err(|source| StateFileError::Read { path, source })?;
    Ok(bytes
        .split(|&b| b == b'\n')
        .filter_map(|line| {
            let line = std::str::from_utf8(line).ok()?;
            let (sum, json) = line.split_once(' ')?;
            (sum == checksum(json))
                .then(|| serde_json::from_str::<AgentState>(json).ok())
                .flatten()
        })
        .max_by_key(|s| s.generation))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(generation: u64, started_count: u32) -> AgentState {
        AgentState {
            generation,
            desired_running: true,
            started_count,
            ..AgentState::default()
        }
    }

    #[test]
    fn the_newest_entry_is_read_and_a_missing_journal_is_none() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(newest(dir.path()).unwrap(), None);
        let mut j = Journal::create(dir.path()).unwrap();
        assert_eq!(newest(dir.path()).unwrap(), None);
        for g in 1..=3 {
            j.write(dir.path(), &state(g, g as u32)).unwrap();
        }
        assert_eq!(newest(dir.path()).unwrap(), Some(state(3, 3)));
        // The file keeps its size: nothing is allocated by a write.
        let len = std::fs::metadata(path(dir.path())).unwrap().len();
        assert_eq!(len, SIZE as u64);
    }

    #[test]
    fn a_torn_entry_is_not_read_and_the_one_before_it_is() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::create(dir.path()).unwrap();
        j.write(dir.path(), &state(1, 1)).unwrap();
        let at = j.pos;
        j.write(dir.path(), &state(2, 2)).unwrap();
        // A power loss that wrote only the first half of the second entry.
        let line = entry(&state(2, 2)).unwrap();
        let half = line.len() / 2;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(path(dir.path()))
            .unwrap();
        f.write_all_at(&vec![b'\n'; line.len() - half], (at + half) as u64)
            .unwrap();
        assert_eq!(newest(dir.path()).unwrap(), Some(state(1, 1)));
        // A whole state under a wrong checksum (over the first entry, which
        // is as long) is not read either.
        let forged = serde_json::to_string(&state(9, 9)).unwrap();
        f.write_all_at(format!("0123456789abcdef {forged}\n").as_bytes(), 0)
            .unwrap();
        assert_eq!(newest(dir.path()).unwrap(), None);
    }

    #[test]
    fn a_full_journal_wraps_and_keeps_its_newest_entry() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::create(dir.path()).unwrap();
        let per = entry(&state(100, 1)).unwrap().len();
        let n = (SIZE / per) as u64 * 3;
        for g in 100..100 + n {
            j.write(dir.path(), &state(g, 1)).unwrap();
            assert_eq!(newest(dir.path()).unwrap().unwrap().generation, g);
        }
        assert!(j.pos < SIZE);
    }

    #[test]
    fn a_symlink_planted_as_the_journal_is_removed_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "ORIGINAL").unwrap();
        let state_dir = dir.path().join("state");
        files::private_dir(&state_dir).unwrap();
        std::os::unix::fs::symlink(&victim, path(&state_dir)).unwrap();
        // Read: refused, not followed.
        assert!(newest(&state_dir).is_err());
        let mut j = Journal::create(&state_dir).unwrap();
        j.write(&state_dir, &state(1, 1)).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "ORIGINAL");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path(&state_dir))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}

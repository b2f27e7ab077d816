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
//! Every state carries a generation, which goes on rising across the
//! agent's lives (a new agent starts above anything the file or the journal
//! holds), and every entry names the generation of the state file it was
//! written on top of: [`state_file::load`] believes an entry only over that
//! very file, and only if it is newer. An entry of an earlier file (a journal
//! left from before the file was written again, restored or edited by hand)
//! is not read. The supervisor writes the whole file again a second after a
//! journalled promotion (off the path the caller waits on), or sooner with
//! the old process's exit.
use std::{
    fs::File,
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{AgentState, StateFileError};
use crate::{common::error_chain::describe, security::files};

const FILE: &str = "agent-state.journal";

/// Room for about sixty states (one is 0.5 to 1.5 KiB).
const SIZE: usize = 64 * 1024;

/// The longest entry: with every entry at most a third of the file, the one
/// written after a wrap to the start never reaches the newest one before it.
const MAX_ENTRY: usize = SIZE / 3;

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

    /// Writes `state` durably (one `fdatasync`), as newer than the state
    /// file of generation `based_on`. A state too large for the journal is
    /// refused (the caller writes the file instead).
    pub fn write(
        &mut self,
        dir: &Path,
        based_on: u64,
        state: &AgentState,
    ) -> Result<(), StateFileError> {
        let path = path(dir);
        let err = |source| StateFileError::Write {
            path: path.clone(),
            source,
        };
        let line = entry(based_on, state).map_err(|e| err(std::io::Error::other(e)))?;
        if line.len() > MAX_ENTRY {
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

/// A journal entry: a state and the state file it is newer than.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// The generation of the state file this entry was written over.
    pub based_on: u64,
    pub state: AgentState,
}

fn entry(based_on: u64, state: &AgentState) -> Result<String, serde_json::Error> {
    let json = serde_json::to_string(&EntryRef { based_on, state })?;
    Ok(format!("{} {json}\n", checksum(&json)))
}

#[derive(Serialize)]
struct EntryRef<'a> {
    based_on: u64,
    state: &'a AgentState,
}

fn checksum(json: &str) -> String {
    let sum = Sha256::digest(json.as_bytes());
    let hex: String = sum.iter().map(|b| format!("{b:02x}")).collect();
    hex[..SUM_LEN].to_string()
}

/// Every whole entry in the journal of `dir`, oldest generation or not.
/// Trusted as the state file is: a regular file of the agent's user that
/// nobody else may write, not through a symlink (nor a FIFO: opened without
/// waiting, and checked before it is read).
pub fn entries(dir: &Path) -> Result<Vec<Entry>, StateFileError> {
    let Some(bytes) = super::read_trusted(&path(dir))? else {
        return Ok(Vec::new());
    };
    Ok(bytes
        .split(|&b| b == b'\n')
        .filter_map(|line| {
            let line = std::str::from_utf8(line).ok()?;
            let (sum, json) = line.split_once(' ')?;
            (sum == checksum(json))
                .then(|| serde_json::from_str::<Entry>(json).ok())
                .flatten()
        })
        .collect())
}

/// The newest entry written over the state file of generation `file`, if
/// it is newer than that file.
pub fn newest_over(dir: &Path, file: u64) -> Result<Option<AgentState>, StateFileError> {
    Ok(entries(dir)?
        .into_iter()
        .filter(|e| e.based_on == file && e.state.generation > file)
        .map(|e| e.state)
        .max_by_key(|s| s.generation))
}

/// The highest generation any entry of the journal has (0 without one, or
/// with one that cannot be read): a new agent counts on from above it.
pub fn max_generation(dir: &Path) -> u64 {
    entries(dir)
        .unwrap_or_default()
        .iter()
        .map(|e| e.state.generation)
        .max()
        .unwrap_or(0)
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

    /// The newest entry over a state file of generation 1.
    fn newest(dir: &Path) -> Option<AgentState> {
        newest_over(dir, 1).unwrap()
    }

    #[test]
    fn the_newest_entry_is_read_and_a_missing_journal_is_none() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(newest(dir.path()), None);
        let mut j = Journal::create(dir.path()).unwrap();
        assert_eq!(newest(dir.path()), None);
        for g in 2..=4 {
            j.write(dir.path(), 1, &state(g, g as u32)).unwrap();
        }
        assert_eq!(newest(dir.path()), Some(state(4, 4)));
        assert_eq!(max_generation(dir.path()), 4);
        // The file keeps its size: nothing is allocated by a write.
        let len = std::fs::metadata(path(dir.path())).unwrap().len();
        assert_eq!(len, SIZE as u64);
    }

    #[test]
    fn an_entry_over_another_state_file_is_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::create(dir.path()).unwrap();
        j.write(dir.path(), 7, &state(8, 1)).unwrap();
        // Over the file it was written on: newer, read.
        assert_eq!(newest_over(dir.path(), 7).unwrap(), Some(state(8, 1)));
        // A file written since, or restored, or edited without a generation.
        assert_eq!(newest_over(dir.path(), 9).unwrap(), None);
        assert_eq!(newest_over(dir.path(), 0).unwrap(), None);
        // Still counted: a new agent's generations start above it.
        assert_eq!(max_generation(dir.path()), 8);
    }

    #[test]
    fn a_torn_entry_is_not_read_and_the_one_before_it_is() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::create(dir.path()).unwrap();
        j.write(dir.path(), 1, &state(2, 2)).unwrap();
        let at = j.pos;
        j.write(dir.path(), 1, &state(3, 3)).unwrap();
        // A power loss that wrote only the first half of the second entry.
        let line = entry(1, &state(3, 3)).unwrap();
        let half = line.len() / 2;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(path(dir.path()))
            .unwrap();
        f.write_all_at(&vec![b'\n'; line.len() - half], (at + half) as u64)
            .unwrap();
        assert_eq!(newest(dir.path()), Some(state(2, 2)));
        // A whole entry under a wrong checksum (over the first entry, which
        // is as long) is not read either.
        let forged = serde_json::to_string(&Entry {
            based_on: 1,
            state: state(9, 9),
        })
        .unwrap();
        f.write_all_at(format!("0123456789abcdef {forged}\n").as_bytes(), 0)
            .unwrap();
        assert_eq!(newest(dir.path()), None);
    }

    #[test]
    fn a_wrap_never_overwrites_the_newest_entry_whatever_the_lengths() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::create(dir.path()).unwrap();
        // Short entries and ones of the largest size taken, mixed, so that
        // writes wrap at every offset there is.
        let long = |g: u64| AgentState {
            last_exit: Some("x".repeat(MAX_ENTRY - 500)),
            ..state(g, 1)
        };
        let mut wrapped = 0;
        for g in 2..200u64 {
            let s = if g % 3 == 0 { long(g) } else { state(g, 1) };
            let before = j.pos;
            j.write(dir.path(), 1, &s).unwrap();
            if j.pos < before {
                wrapped += 1;
            }
            assert_eq!(newest(dir.path()), Some(s), "generation {g}");
        }
        assert!(wrapped > 3, "{wrapped} wraps");
        // Larger than an entry may be: refused, for the file to take.
        assert!(j.write(dir.path(), 1, &long(500)).is_ok());
        let too_long = AgentState {
            last_exit: Some("x".repeat(MAX_ENTRY)),
            ..state(501, 1)
        };
        assert!(j.write(dir.path(), 1, &too_long).is_err());
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
        assert!(entries(&state_dir).is_err());
        let mut j = Journal::create(&state_dir).unwrap();
        j.write(&state_dir, 1, &state(2, 1)).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "ORIGINAL");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path(&state_dir))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_fifo_planted_as_the_journal_is_refused_without_waiting() {
        let dir = tempfile::tempdir().unwrap();
        nix::unistd::mkfifo(&path(dir.path()), nix::sys::stat::Mode::S_IRWXU).unwrap();
        assert!(entries(dir.path()).is_err());
        assert_eq!(max_generation(dir.path()), 0);
    }
}

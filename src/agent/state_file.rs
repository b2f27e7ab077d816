//! The agent's state on disk: what it means obproxy to be (running or
//! stopped), the listeners it holds, and every obproxy it owns with the facts
//! that identify it. Written atomically (temp file, fsync, rename) at every
//! change, so an agent that is killed finds it all again; a promotion goes
//! into the journal first (see `state_file::journal`), and the file follows. Written only into
//! a directory the agent owns and nobody else may write, as a 0600 file
//! created afresh (a symlink planted in its place is removed, not followed):
//! the next agent signals the pids it names.
use std::{
    io::Write,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};

use crate::{common::error_chain::describe, security::files};

pub mod journal;

const FILE: &str = "agent-state.json";
/// Where [`probe`] writes.
const PROBE: &str = "agent-state.probe";

#[derive(Debug, thiserror::Error)]
pub enum StateFileError {
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not to be trusted: {reason}")]
    Untrusted { path: PathBuf, reason: String },
    #[error("{path} is not a valid state file")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

impl StateFileError {
    /// The disk (or the user's quota) is full: space, not a fault, is missing.
    pub fn is_storage_full(&self) -> bool {
        matches!(self, StateFileError::Write { source, .. }
            if matches!(source.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT)))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Starting,
    Serving,
    Draining,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordedProcess {
    pub pid: u32,
    /// `/proc/<pid>/stat` start time: with the pid, one process per boot.
    pub start_ticks: u64,
    /// `/proc/<pid>/exe` once it was ready (None before).
    pub exe: Option<PathBuf>,
    /// The binary the agent launched (a wrapper may exec another).
    pub binary: PathBuf,
    pub version: String,
    pub role: Role,
    /// Seconds since the epoch.
    pub started_at: f64,
    pub drain_deadline: Option<f64>,
    /// Its `hot_upgrade_exit_timeout` in µs as far as the agent knows (the
    /// `-o` it was started with, or what admin SQL set since): the window it
    /// drains with. None: unknown.
    #[serde(default)]
    pub exit_window_us: Option<u64>,
    /// It was handed the RPC listeners (obproxy 4.3+).
    #[serde(default)]
    pub rpc: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordedListener {
    pub bound: SocketAddr,
    pub inode: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AgentState {
    /// Counts the agent's writes of its state: of the state file and the
    /// journal (see `state_file::journal`), the newer one is the state.
    #[serde(default)]
    pub generation: u64,
    pub desired_running: bool,
    pub listeners: Vec<RecordedListener>,
    /// Where the listeners were last bound (a port 0 keeps its port).
    #[serde(default)]
    pub last_bound: Vec<SocketAddr>,
    /// The RPC listeners held (obproxy 4.3+), and where they were last bound.
    #[serde(default)]
    pub rpc_listeners: Vec<RecordedListener>,
    #[serde(default)]
    pub last_rpc_bound: Vec<SocketAddr>,
    pub processes: Vec<RecordedProcess>,
    /// obproxy processes started so far (restarts = this minus one).
    pub started_count: u32,
    pub last_exit: Option<String>,
}

pub fn to_epoch(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

/// A recorded time; an absurd one (a hand-edited file) reads as the epoch
/// instead of panicking.
pub fn from_epoch(secs: f64) -> SystemTime {
    Duration::try_from_secs_f64(secs.max(0.0))
        .ok()
        .and_then(|d| UNIX_EPOCH.checked_add(d))
        .unwrap_or(UNIX_EPOCH)
}

pub fn path(dir: &Path) -> PathBuf {
    dir.join(FILE)
}

/// The state a previous agent left, if any: the state file, or the
/// journal's newest entry written over that very file, where it is newer (a
/// promotion written there just before the agent stopped). Without a state
/// file there is no state: the journal is made after the file, and whoever
/// removed the file meant the agent to start afresh. A journal that cannot
/// be read (or trusted) is left out, with a warning: the file is whole.
/// Only files of the agent's own user that nobody else may write are
/// believed (they name pids to signal); a symlink is not followed.
pub fn load(dir: &Path) -> Result<Option<AgentState>, StateFileError> {
    let Some(file) = load_file(dir)? else {
        return Ok(None);
    };
    Ok(Some(match journal::newest_over(dir, file.generation) {
        Ok(Some(newer)) => newer,
        Ok(None) => file,
        Err(e) => {
            tracing::warn!(error = %describe(&e), "not reading the state journal; the state file is the state");
            file
        }
    }))
}

fn load_file(dir: &Path) -> Result<Option<AgentState>, StateFileError> {
    let path = path(dir);
    let Some(bytes) = read_trusted(&path)? else {
        return Ok(None);
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|source| StateFileError::Corrupt { path, source })
}

/// The whole of the agent's file at `path` (None if there is none), read
/// only if it is a regular file of the agent's user that nobody else may
/// write: it names pids to signal. Not through a symlink, and not a FIFO's
/// reader either (opened without waiting, checked before it is read).
fn read_trusted(path: &Path) -> Result<Option<Vec<u8>>, StateFileError> {
    use std::{
        io::Read,
        os::unix::fs::{MetadataExt, OpenOptionsExt},
    };
    let read_err = |source| StateFileError::Read {
        path: path.to_path_buf(),
        source,
    };
    let opened = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path);
    let mut file = match opened {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(read_err(source)),
    };
    let meta = file.metadata().map_err(read_err)?;
    let me = nix::unistd::geteuid().as_raw();
    if !meta.is_file() || meta.uid() != me || meta.mode() & 0o022 != 0 {
        return Err(StateFileError::Untrusted {
            reason: format!(
                "owner uid {} and mode {:o}; the agent (uid {me}) writes it 0600",
                meta.uid(),
                meta.mode() & 0o7777
            ),
            path: path.to_path_buf(),
        });
    }
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).map_err(read_err)?;
    Ok(Some(bytes))
}

/// Replaces the state file so that a reader sees either the old or the new
/// state, never half of one, even across a power loss. A write that fails
/// (a full or read-only disk) leaves the previous file as it was and no
/// temporary file behind.
pub fn save(dir: &Path, state: &AgentState) -> Result<(), StateFileError> {
    let path = path(dir);
    let tmp = dir.join(format!("{FILE}.tmp"));
    let err = |source| StateFileError::Write {
        path: path.clone(),
        source,
    };
    let body = serde_json::to_vec_pretty(state).map_err(|e| err(std::io::Error::other(e)))?;
    // The io error itself when there is one, so a full disk reads as one.
    let unusable = |e: files::FileError| match e {
        files::FileError::Io { source, .. } => err(source),
        other => err(std::io::Error::other(describe(&other))),
    };
    files::check_writable_dir(dir).map_err(unusable)?;
    let written = (|| {
        let mut f = files::create_private(&tmp).map_err(unusable)?;
        f.write_all(&body).map_err(err)?;
        f.sync_all().map_err(err)?;
        std::fs::rename(&tmp, &path).map_err(err)
    })();
    if let Err(e) = written {
        // Half a file must not stay: it would hold the space a later write
        // needs, and it is not the state.
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Whether the disk takes a write of `state` now (a full or read-only disk
/// fails it with the error [`save`] would give), without replacing the file
/// and without waiting for the disk: the body is written into a probe file,
/// not synced, and cut back to nothing. For an admission whose intent the
/// file already holds: the request is still refused on a disk that cannot
/// record, and no durable write is spent saying again what is on it.
///
/// The probe file is kept (empty): a file created and removed at every
/// admission would cost ext4 an inode allocation each time, and with many
/// inodes freed in the last seconds (every restart frees some) it walks
/// them all to avoid reusing one (`recently_deleted` in `perf`). Opened
/// for writing anew each time, so a directory made read-only since fails
/// the open (EROFS).
pub fn probe(dir: &Path, state: &AgentState) -> Result<(), StateFileError> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let path = path(dir);
    let probe = dir.join(PROBE);
    let err = |source| StateFileError::Write {
        path: path.clone(),
        source,
    };
    let body = serde_json::to_vec_pretty(state).map_err(|e| err(std::io::Error::other(e)))?;
    let unusable = |e: files::FileError| match e {
        files::FileError::Io { source, .. } => err(source),
        other => err(std::io::Error::other(describe(&other))),
    };
    files::check_writable_dir(dir).map_err(unusable)?;
    let opened = std::fs::OpenOptions::new()
        .write(true)
        // A FIFO planted there fails at once (ENXIO) instead of waiting.
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(&probe);
    let me = nix::unistd::geteuid().as_raw();
    let mut f = match opened {
        // Only a private regular file of ours is written into; anything
        // else in its place, or a file that cannot be opened (a symlink, a
        // mode without write, a FIFO), is made afresh, which fails as a
        // save would where the directory takes no new file.
        Ok(f)
            if f.metadata().is_ok_and(|m| {
                m.is_file() && m.uid() == me && m.mode() & 0o077 == 0 && m.nlink() == 1
            }) =>
        {
            f
        }
        _ => files::create_private(&probe).map_err(unusable)?,
    };
    let written = f.write_all(&body).map_err(err);
    // The space goes back whatever the write did.
    let cut = f.set_len(0).map_err(err);
    written.and(cut)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_and_a_missing_file_is_none() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path()).unwrap(), None);
        let state = AgentState {
            generation: 4,
            desired_running: true,
            listeners: vec![RecordedListener {
                bound: "127.0.0.1:2883".parse().unwrap(),
                inode: 42,
            }],
            processes: vec![RecordedProcess {
                pid: 7,
                start_ticks: 99,
                exe: Some("/bin/obproxy".into()),
                binary: "/bin/obproxy".into(),
                version: "4.3.1.0".into(),
                role: Role::Draining,
                started_at: 1.5,
                drain_deadline: Some(31.5),
                exit_window_us: Some(30_000_000),
                rpc: true,
            }],
            last_bound: vec![],
            rpc_listeners: vec![RecordedListener {
                bound: "127.0.0.1:2885".parse().unwrap(),
                inode: 43,
            }],
            last_rpc_bound: vec![],
            started_count: 3,
            last_exit: None,
        };
        save(dir.path(), &state).unwrap();
        assert_eq!(load(dir.path()).unwrap(), Some(state));
    }

    #[test]
    fn the_journal_is_believed_where_it_is_newer_than_the_file() {
        use super::journal::Journal;
        let dir = tempfile::tempdir().unwrap();
        let at = |generation, started_count| AgentState {
            generation,
            started_count,
            ..AgentState::default()
        };
        save(dir.path(), &at(5, 1)).unwrap();
        let mut journal = Journal::create(dir.path()).unwrap();
        journal.write(dir.path(), 5, &at(4, 2)).unwrap();
        assert_eq!(load(dir.path()).unwrap(), Some(at(5, 1)));
        journal.write(dir.path(), 5, &at(6, 3)).unwrap();
        assert_eq!(load(dir.path()).unwrap(), Some(at(6, 3)));
        save(dir.path(), &at(7, 3)).unwrap();
        assert_eq!(load(dir.path()).unwrap(), Some(at(7, 3)));
        // A file restored or edited since (any other generation): the
        // entries written over the earlier file are not its.
        journal.write(dir.path(), 7, &at(8, 4)).unwrap();
        assert_eq!(load(dir.path()).unwrap(), Some(at(8, 4)));
        save(dir.path(), &at(0, 9)).unwrap();
        assert_eq!(load(dir.path()).unwrap(), Some(at(0, 9)));
        // Without the file, nothing: whoever removed it meant a fresh start.
        std::fs::remove_file(path(dir.path())).unwrap();
        assert_eq!(load(dir.path()).unwrap(), None);
    }

    #[test]
    fn a_journal_that_cannot_be_read_leaves_the_file_the_state() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let at = AgentState {
            generation: 3,
            started_count: 2,
            ..AgentState::default()
        };
        save(dir.path(), &at).unwrap();
        let journal = journal::path(dir.path());
        std::fs::write(&journal, "x").unwrap();
        std::fs::set_permissions(&journal, std::fs::Permissions::from_mode(0o666)).unwrap();
        assert_eq!(load(dir.path()).unwrap(), Some(at.clone()));
        std::fs::remove_file(&journal).unwrap();
        std::fs::create_dir(&journal).unwrap();
        assert_eq!(load(dir.path()).unwrap(), Some(at));
    }

    #[test]
    fn a_probe_refused_by_a_planted_fifo_or_an_unwritable_file_makes_its_file_afresh() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let probe_path = dir.path().join(PROBE);
        nix::unistd::mkfifo(&probe_path, nix::sys::stat::Mode::S_IRWXU).unwrap();
        probe(dir.path(), &AgentState::default()).unwrap();
        assert!(std::fs::metadata(&probe_path).unwrap().is_file());
        std::fs::set_permissions(&probe_path, std::fs::Permissions::from_mode(0o400)).unwrap();
        probe(dir.path(), &AgentState::default()).unwrap();
    }

    #[test]
    fn a_write_that_fails_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        // The rename cannot replace a non-empty directory: the write fails
        // after the temporary file was written in full.
        std::fs::create_dir_all(path(dir.path()).join("in-the-way")).unwrap();
        let e = save(dir.path(), &AgentState::default()).unwrap_err();
        assert!(matches!(e, StateFileError::Write { .. }), "{e}");
        assert!(!e.is_storage_full());
        assert!(!dir.path().join(format!("{FILE}.tmp")).exists());
    }

    #[test]
    fn a_symlink_planted_as_the_temp_file_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "ROOT-OWNED ORIGINAL CONTENT").unwrap();
        let state = dir.path().join("state");
        files::private_dir(&state).unwrap();
        std::os::unix::fs::symlink(&victim, state.join(format!("{FILE}.tmp"))).unwrap();
        save(&state, &AgentState::default()).unwrap();
        assert_eq!(
            std::fs::read_to_string(&victim).unwrap(),
            "ROOT-OWNED ORIGINAL CONTENT"
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path(&state))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(load(&state).unwrap(), Some(AgentState::default()));
    }

    #[test]
    fn a_probe_replaces_nothing_and_leaves_one_empty_file() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let state = AgentState {
            desired_running: true,
            ..AgentState::default()
        };
        probe(dir.path(), &state).unwrap();
        assert_eq!(load(dir.path()).unwrap(), None);
        save(dir.path(), &AgentState::default()).unwrap();
        let first = std::fs::metadata(dir.path().join(PROBE)).unwrap();
        probe(dir.path(), &state).unwrap();
        assert_eq!(load(dir.path()).unwrap(), Some(AgentState::default()));
        assert!(!dir.path().join(format!("{FILE}.tmp")).exists());
        // The same file each time (no inode made and freed), left empty.
        let again = std::fs::metadata(dir.path().join(PROBE)).unwrap();
        assert_eq!((again.ino(), again.len()), (first.ino(), 0));
        assert_eq!(again.mode() & 0o777, 0o600);
        // What save refuses, a probe refuses too.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = probe(dir.path(), &state).unwrap_err();
        assert!(
            describe(&e).contains("refusing to write"),
            "{}",
            describe(&e)
        );
    }

    #[test]
    fn a_symlink_planted_as_the_probe_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "ROOT-OWNED ORIGINAL CONTENT").unwrap();
        let state = dir.path().join("state");
        files::private_dir(&state).unwrap();
        std::os::unix::fs::symlink(&victim, state.join(PROBE)).unwrap();
        probe(&state, &AgentState::default()).unwrap();
        assert_eq!(
            std::fs::read_to_string(&victim).unwrap(),
            "ROOT-OWNED ORIGINAL CONTENT"
        );
        assert!(
            std::fs::symlink_metadata(state.join(PROBE))
                .unwrap()
                .is_file()
        );
    }

    #[test]
    fn a_directory_others_may_write_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = save(dir.path(), &AgentState::default()).unwrap_err();
        assert!(
            describe(&e).contains("refusing to write"),
            "{}",
            describe(&e)
        );
    }

    #[test]
    fn a_corrupt_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(path(dir.path()), "{not json").unwrap();
        let e = load(dir.path()).unwrap_err();
        assert!(e.to_string().contains(FILE), "{e}");
    }
}

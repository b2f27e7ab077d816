//! A small tmpfs the test mounts itself (root only), to fill up or make
//! read-only under a daemon's state: the disk faults a daemon must survive.
use std::{
    io::Write,
    path::{Path, PathBuf},
    process::Command,
};

use super::require_root;

pub struct Tmpfs {
    dir: tempfile::TempDir,
    /// A read-only bind mount is stacked on the tmpfs.
    read_only: bool,
}

impl Tmpfs {
    /// A tmpfs of `size` (e.g. `1m`), private to its owner as a state
    /// directory should be.
    pub fn mount(size: &str) -> Self {
        require_root("mounting a tmpfs");
        let dir = tempfile::tempdir().unwrap();
        run(Command::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(format!("size={size},mode=0700"))
            .arg("odp-test")
            .arg(dir.path()));
        Self {
            dir,
            read_only: false,
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    fn ballast(&self) -> PathBuf {
        self.path().join("ballast")
    }

    /// Fills the file system: a ballast file grows until it refuses
    /// (ENOSPC), so any write that needs a new page fails.
    pub fn fill(&self) {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.ballast())
            .unwrap();
        let chunk = vec![0u8; 64 * 1024];
        loop {
            match f.write_all(&chunk) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => panic!("filling {}: {e}", self.path().display()),
            }
        }
        // Whatever a 64 KiB write could not take, a byte at a time.
        while f.write_all(&[0]).is_ok() {}
    }

    /// Gives the space back.
    pub fn free(&self) {
        std::fs::remove_file(self.ballast()).unwrap();
    }

    /// Makes it read-only: a read-only bind mount over it, so files already
    /// open for writing (obproxy's output) do not keep it writable.
    pub fn make_read_only(&mut self) {
        run(Command::new("mount")
            .arg("--bind")
            .arg(self.path())
            .arg(self.path()));
        self.read_only = true;
        run(Command::new("mount")
            .args(["-o", "remount,bind,ro"])
            .arg(self.path()));
    }

    /// Writable again: the read-only bind mount goes.
    pub fn make_writable(&mut self) {
        run(Command::new("umount").arg(self.path()));
        self.read_only = false;
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazily: a daemon of the test may still have it open.
        let umount = || {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(self.dir.path())
                .status();
        };
        if self.read_only {
            umount();
        }
        umount();
    }
}

fn run(command: &mut Command) {
    let out = command.output().unwrap();
    assert!(
        out.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

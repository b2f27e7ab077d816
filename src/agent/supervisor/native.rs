//! obproxy's own ("native") restarts: `proxy_local_cmd = 2` or
//! `enable_auto_restart` make the serving obproxy fork a child on our
//! listener socket, which drains the parent and serves on. The agent adopts
//! that child instead of reading the parent's exit as a crash, and counts
//! every other process holding its listeners as a stranger that Stop and
//! FORCE must end too.
use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use nix::sys::signal::Signal;

use super::{Process, Role, StepError, Supervisor};
use crate::agent::supervisor_protocol::NativeChildError;
use crate::agent::{
    obproxy::{
        pidfd::{Exit, Pidfd},
        procfs,
    },
    operation_log::{Kind, Request},
    state_file::RecordedProcess,
};

impl Supervisor {
    /// Every process that holds one of our listeners and is not ours: the
    /// pidfd is opened first and the socket checked again through it, so a
    /// pid reused in between is never returned.
    ///
    /// A process comes to hold a listener only by inheriting it across a
    /// fork from one that holds it (the agent, its obproxy processes, or one
    /// that held it when the agent adopted the listener: [`Self::note_outside_holders`]),
    /// and an orphan of the agent's tree is re-parented to the agent (its
    /// child subreaper). So the candidates are the descendants of those, read
    /// from `/proc/<pid>/task/*/children`: a few reads where a walk of every
    /// process's descriptors on the host reads one link per descriptor (tens
    /// of thousands on a busy host, milliseconds on the path of every HOT
    /// restart). Kernels that do not list children are walked in full.
    pub(super) fn strangers(&self) -> Vec<Arc<Pidfd>> {
        let me = std::process::id();
        let candidates: Option<Vec<u32>> = procfs::lists_children().then(|| {
            let roots: Vec<u32> = std::iter::once(me)
                .chain(self.processes.pids())
                .chain(self.outside_holders.iter().map(|p| p.pid()))
                .collect();
            // The outside holders themselves are candidates too.
            procfs::descendants(&roots)
                .into_iter()
                .chain(self.outside_holders.iter().map(|p| p.pid()))
                .collect()
        });
        let mut found: Vec<Arc<Pidfd>> = Vec::new();
        for inode in self.listeners.inodes() {
            let holders = match &candidates {
                Some(pids) => pids
                    .iter()
                    .copied()
                    .filter(|&pid| procfs::socket_inodes(pid).is_ok_and(|h| h.contains(&inode)))
                    .collect(),
                None => procfs::pids_holding_socket(inode).unwrap_or_default(),
            };
            for pid in holders {
                if pid == me || self.processes.contains(pid) || found.iter().any(|p| p.pid() == pid)
                {
                    continue;
                }
                if let Ok(pidfd) = Pidfd::open(pid)
                    && procfs::socket_inodes(pid).is_ok_and(|held| held.contains(&inode))
                {
                    found.push(Arc::new(pidfd));
                }
            }
        }
        found
    }

    /// Remembers the processes that hold the listeners the agent just took
    /// over from outside (at recovery, or from an obproxy it did not start)
    /// without being its own: found by a walk of every process's
    /// descriptors, once, so that [`Self::strangers`] can follow them and
    /// their children from then on.
    pub(super) fn note_outside_holders(&mut self) {
        let _walk = procfs::HostWalk::allow();
        let me = std::process::id();
        let mut outside: Vec<Arc<Pidfd>> = Vec::new();
        for inode in self.listeners.inodes() {
            for pid in procfs::pids_holding_socket(inode).unwrap_or_default() {
                if pid == me
                    || self.processes.contains(pid)
                    || outside.iter().any(|p| p.pid() == pid)
                {
                    continue;
                }
                if let Ok(pidfd) = Pidfd::open(pid) {
                    outside.push(Arc::new(pidfd));
                }
            }
        }
        if !outside.is_empty() {
            let pids: Vec<u32> = outside.iter().map(|p| p.pid()).collect();
            tracing::info!(
                ?pids,
                "processes the agent did not start hold its listeners"
            );
        }
        self.outside_holders = outside;
    }

    /// Whether `pid` is the child `parent` forked on our listener: its
    /// parent (or, once the parent died, us as subreaper), our listener
    /// sockets, a start after the parent's, the obproxy home, the parent's
    /// executable. Checked after the pidfd is open.
    fn confirm_native_child(
        &self,
        parent_pid: u32,
        parent: &Process,
        pid: u32,
    ) -> Result<Pidfd, NativeChildError> {
        let gone = |_| NativeChildError::Gone { pid };
        let pidfd = Pidfd::open(pid).map_err(gone)?;
        let found = procfs::parent_pid(pid).map_err(gone)?;
        // Once its parent is gone it belongs to the nearest subreaper: us,
        // or init if the agent was away when the parent exited.
        if found != parent_pid && found != std::process::id() && found != 1 {
            return Err(NativeChildError::NotItsChild {
                pid,
                parent: parent_pid,
                found,
            });
        }
        let inodes = self.listeners.inodes();
        if inodes.is_empty() || !procfs::holds_listeners(pid, &inodes) {
            return Err(NativeChildError::NoListener { pid, inodes });
        }
        if procfs::start_ticks(pid).map_err(gone)? < parent.start_ticks {
            return Err(NativeChildError::Older {
                pid,
                parent: parent_pid,
            });
        }
        let home = &self.config.obproxy.home;
        let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).map_err(gone)?;
        if &cwd != home {
            return Err(NativeChildError::ElsewhereHome {
                pid,
                found: cwd.display().to_string(),
                home: home.display().to_string(),
            });
        }
        // obproxy re-executes its own argv[0]: the parent's program.
        let expected = parent.exe.as_deref().unwrap_or(&parent.binary);
        let exe = procfs::exe(pid).map_err(gone)?;
        if exe != expected {
            return Err(NativeChildError::OtherExe {
                pid,
                found: exe.display().to_string(),
                expected: expected.display().to_string(),
            });
        }
        Ok(pidfd)
    }

    /// Children of `parent_pid` on our listener, youngest first.
    fn native_children(&self, parent_pid: u32, parent: &Process) -> Vec<(u32, Pidfd)> {
        let mut children: Vec<(u64, u32, Pidfd)> = self
            .strangers()
            .iter()
            .filter_map(|s| {
                let pid = s.pid();
                match self.confirm_native_child(parent_pid, parent, pid) {
                    Ok(pidfd) => Some((procfs::start_ticks(pid).unwrap_or(0), pid, pidfd)),
                    Err(e) => {
                        tracing::warn!(pid, reason = %e, "a process holds our listener but is no native child");
                        None
                    }
                }
            })
            .collect();
        children.sort_by_key(|(ticks, _, _)| std::cmp::Reverse(*ticks));
        children
            .into_iter()
            .map(|(_, pid, pidfd)| (pid, pidfd))
            .collect()
    }

    fn insert_native_child(
        &mut self,
        pid: u32,
        pidfd: Pidfd,
        from: Inherited,
        role: Role,
        native_parent: Option<u32>,
    ) {
        let pidfd = Arc::new(pidfd);
        let start_ticks = procfs::start_ticks(pid).unwrap_or(0);
        let ready = role == Role::Serving;
        self.processes.insert(
            pid,
            Process {
                pidfd: pidfd.clone(),
                role,
                start_ticks,
                exe: if ready { procfs::exe(pid).ok() } else { None },
                version: from.version,
                binary: from.binary,
                started_at: started_at(start_ticks),
                ready,
                drain_deadline: None,
                ending: false,
                drain_started: None,
                exit_window: from.exit_window,
                binary_info: None,
                native_parent,
                rpc: from.rpc,
            },
        );
        self.started_count += 1;
        self.persist();
        self.watch_exit(pidfd);
    }

    /// The serving `old_pid` exited without being asked to. Returns whether
    /// that was a native restart's parent leaving (otherwise it is a crash).
    pub(super) fn on_native_parent_exit(
        &mut self,
        old_pid: u32,
        old: &Process,
        exit: &Exit,
    ) -> bool {
        // The child of a native restart the agent asked for can be ready, and
        // an idle parent gone, before the operation has promoted it.
        let asked_for = self
            .processes
            .iter()
            .find(|(_, p)| p.native_parent == Some(old_pid))
            .map(|(pid, _)| pid);
        if let Some(child) = asked_for {
            self.note(format!(
                "pid {old_pid} {exit}: it drained once its child pid {child} was ready"
            ));
            return true;
        }
        self.adopt_native_child(old_pid, old, exit)
    }

    /// If `old_pid` forked a child on our listener (a native restart), that
    /// child becomes the serving process, with an operation of its own in
    /// the log. Returns whether one was adopted.
    fn adopt_native_child(&mut self, old_pid: u32, old: &Process, exit: &Exit) -> bool {
        let mut children = self.native_children(old_pid, old).into_iter();
        let Some((pid, pidfd)) = children.next() else {
            return false;
        };
        for (extra, extra_fd) in children {
            // Two children of one parent on one socket: only one may serve.
            tracing::warn!(
                pid = extra,
                adopted = pid,
                "a second native child holds our listener; SIGKILL"
            );
            let _ = extra_fd.signal(Signal::SIGKILL);
        }
        // It reads its configuration from what the parent left in etc/, so
        // it drains with the parent's window.
        let from = Inherited {
            version: old.version.clone(),
            binary: old.binary.clone(),
            exit_window: old.exit_window,
            rpc: old.rpc,
        };
        self.insert_native_child(pid, pidfd, from, Role::Serving, None);
        self.respawn.settled();
        let inodes = self.listeners.inodes();
        let exe = procfs::exe(pid).map(|e| e.display().to_string());
        let story = format!(
            "pid {old_pid} {exit} after forking pid {pid}, which holds the SQL listener \
             (socket inode(s) {inodes:?}), runs {} in {}: obproxy restarted itself \
             (proxy_local_cmd = 2 or enable_auto_restart); pid {pid} is adopted as the serving \
             process instead of a respawn",
            exe.unwrap_or_else(|_| "?".into()),
            self.config.obproxy.home.display(),
        );
        self.record_adoption(pid, old_pid, story);
        true
    }

    /// Writes an adoption down as an operation of its own (or, while another
    /// runs, into that one's events).
    fn record_adoption(&mut self, pid: u32, previous: u32, story: String) {
        tracing::info!(pid, previous, "{story}");
        if self.log.current().is_some() {
            // One operation at a time: the running one tells the story.
            self.note(story);
            return;
        }
        let request = Request {
            kind: Kind::AdoptNative,
            request_id: None,
            exit_timeout: None,
            binary: None,
        };
        match self.submit(request, None) {
            Ok(rx) => {
                let id = rx.borrow().id.clone();
                self.log.update(&id, |o| {
                    o.previous_pid = Some(previous);
                    o.events.push(story);
                });
            }
            Err(e) => tracing::error!(error = %e, "cannot record the adoption as an operation"),
        }
    }

    /// At start, when the process that served as the previous agent went
    /// away is gone: obproxy may have restarted itself meanwhile
    /// (enable_auto_restart fires once its parent is PID 1). A process that
    /// holds the recorded listeners, runs the same program in the obproxy
    /// home and started after it is that restart's child: it is adopted as
    /// the serving process (returned, for the listeners to come back from
    /// it), not killed as a stray.
    pub(super) fn adopt_orphan_at_recovery(
        &mut self,
        recorded: &[RecordedProcess],
        inodes: &[u64],
    ) -> Option<Arc<Pidfd>> {
        if inodes.is_empty() || self.processes.serving_pid().is_some() {
            return None;
        }
        let served = recorded
            .iter()
            .find(|r| r.role == crate::agent::state_file::Role::Serving)?;
        let me = std::process::id();
        let home = self.config.obproxy.home.clone();
        let expected = served.exe.as_deref().unwrap_or(&served.binary);
        let mut found: Vec<(u64, u32)> = procfs::pids_holding_socket(inodes[0])
            .unwrap_or_default()
            .into_iter()
            .filter(|&pid| pid != me && pid != served.pid && !self.processes.contains(pid))
            .filter(|&pid| procfs::holds_listeners(pid, inodes))
            .filter(|&pid| {
                std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd == home)
                    && procfs::exe(pid).is_ok_and(|exe| exe == expected)
            })
            .filter_map(|pid| Some((procfs::start_ticks(pid).ok()?, pid)))
            .filter(|&(ticks, _)| ticks > served.start_ticks)
            .collect();
        found.sort();
        let (_, pid) = found.pop()?;
        let pidfd = Pidfd::open(pid).ok()?;
        if !procfs::holds_listeners(pid, inodes) {
            return None;
        }
        let from = Inherited {
            version: served.version.clone(),
            binary: served.binary.clone(),
            exit_window: served.exit_window_us.map(Duration::from_micros),
            rpc: served.rpc,
        };
        self.insert_native_child(pid, pidfd, from, Role::Serving, None);
        let story = format!(
            "pid {}, serving when the agent went away, is gone; pid {pid} holds the SQL \
             listener and runs the same program in {} since after it: obproxy restarted itself \
             meanwhile (enable_auto_restart or proxy_local_cmd = 2); pid {pid} is adopted as the \
             serving process",
            served.pid,
            home.display()
        );
        self.record_adoption(pid, served.pid, story);
        self.processes.get(pid).map(|p| p.pidfd.clone())
    }

    /// The child `parent` forked for a native restart the agent asked for:
    /// recorded as starting (its readiness signal goes to the parent).
    pub(super) fn register_native_child(
        &mut self,
        parent_pid: u32,
        pid: u32,
        version: String,
        exit_window: Duration,
    ) -> Result<(), StepError> {
        let Some(parent) = self.processes.get(parent_pid) else {
            return Err(NativeChildError::UnknownParent { parent: parent_pid }.into());
        };
        let pidfd = self.confirm_native_child(parent_pid, parent, pid)?;
        let from = Inherited {
            version,
            binary: parent.binary.clone(),
            exit_window: Some(exit_window),
            rpc: parent.rpc,
        };
        self.insert_native_child(pid, pidfd, from, Role::Starting, Some(parent_pid));
        tracing::info!(pid, parent = parent_pid, "native child recorded");
        Ok(())
    }
}

/// What a native child takes over from its parent's record.
struct Inherited {
    version: String,
    /// The program the parent was started as: the child re-executes it.
    binary: PathBuf,
    exit_window: Option<Duration>,
    /// obproxy hands its RPC listeners to the child as it got them.
    rpc: bool,
}

/// When a process started, from its start time in clock ticks since boot.
fn started_at(start_ticks: u64) -> SystemTime {
    // SAFETY: sysconf only reads a system constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let boot = std::fs::read_to_string(Path::new("/proc/stat"))
        .ok()
        .and_then(|stat| {
            stat.lines()
                .find_map(|l| l.strip_prefix("btime "))
                .and_then(|t| t.trim().parse::<u64>().ok())
        });
    match (boot, u64::try_from(hz).ok().filter(|&hz| hz > 0)) {
        (Some(boot), Some(hz)) => {
            UNIX_EPOCH + Duration::from_secs(boot) + Duration::from_millis(start_ticks * 1000 / hz)
        }
        _ => SystemTime::now(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_start_time_from_ticks_is_in_the_recent_past() {
        let ticks = procfs::start_ticks(std::process::id()).unwrap();
        let at = started_at(ticks);
        let age = SystemTime::now().duration_since(at).unwrap_or_default();
        assert!(age < Duration::from_secs(3600), "{age:?}");
    }
}

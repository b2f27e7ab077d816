//! The processes the supervisor holds, as data: each one's record and role,
//! which one serves, the state of the proxy they make up, and their mapping
//! to and from the state file. Pure: nothing here signals, reads `/proc` or
//! writes, so the rules are tested without a process to supervise.
use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use crate::agent::{
    admin_sql::BinaryInfo,
    obproxy::pidfd::Pidfd,
    state_file::{self, RecordedProcess},
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyState {
    Running,
    Stopped,
    Starting,
    Stopping,
    Restarting,
    Upgrading,
    Unavailable,
}

/// What a process is to the proxy: the one serving, one draining after a
/// hand-over, or one starting to take over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Starting,
    Serving,
    Draining,
}

impl From<state_file::Role> for Role {
    fn from(role: state_file::Role) -> Self {
        match role {
            state_file::Role::Starting => Role::Starting,
            state_file::Role::Serving => Role::Serving,
            state_file::Role::Draining => Role::Draining,
        }
    }
}

impl From<Role> for state_file::Role {
    fn from(role: Role) -> Self {
        match role {
            Role::Starting => state_file::Role::Starting,
            Role::Serving => state_file::Role::Serving,
            Role::Draining => state_file::Role::Draining,
        }
    }
}

/// A process as the supervisor knows it: identity and counters only (its
/// usage is sampled elsewhere, see [`crate::agent::sampling`]).
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessInfo {
    pub pid: u32,
    pub version: String,
    pub binary: PathBuf,
    pub started_at: SystemTime,
    /// What the process reported over admin SQL (SHOW PROXYINFO BINARY).
    pub binary_info: Option<BinaryInfo>,
}

pub(crate) struct Process {
    pub(crate) pidfd: Arc<Pidfd>,
    pub(crate) role: Role,
    /// Identity for re-adoption: start time, and the executable once ready.
    pub(crate) start_ticks: u64,
    pub(crate) exe: Option<PathBuf>,
    pub(crate) version: String,
    pub(crate) binary: PathBuf,
    pub(crate) started_at: SystemTime,
    /// Its readiness SIGUSR1 arrived (possibly before anyone waited for it).
    pub(crate) ready: bool,
    pub(crate) drain_deadline: Option<SystemTime>,
    /// The agent signalled it to end, so its exit is no surprise.
    pub(crate) ending: bool,
    /// When it was handed over to drain: its exit times the drain (metrics).
    pub(crate) drain_started: Option<Instant>,
    /// Its `hot_upgrade_exit_timeout` (from its `-o`, or set over admin SQL
    /// since): the window it drains with. None: unknown.
    pub(crate) exit_window: Option<Duration>,
    /// What it reported over admin SQL, once asked.
    pub(crate) binary_info: Option<BinaryInfo>,
    /// For the child of a native restart the agent asked for: its parent,
    /// whose exit is then the hand-over, not a crash.
    pub(crate) native_parent: Option<u32>,
    /// It was handed the RPC listeners (obproxy 4.3+ with RPC on).
    pub(crate) rpc: bool,
}

impl Process {
    /// A process the agent has just spawned: starting, not ready unless its
    /// readiness signal overtook its registration.
    pub(crate) fn spawned(
        pidfd: Arc<Pidfd>,
        start_ticks: u64,
        binary: PathBuf,
        version: String,
        started_at: SystemTime,
        exit_window: Duration,
        rpc: bool,
    ) -> Self {
        Self {
            pidfd,
            role: Role::Starting,
            start_ticks,
            exe: None,
            version,
            binary,
            started_at,
            ready: false,
            drain_deadline: None,
            ending: false,
            drain_started: None,
            exit_window: Some(exit_window),
            binary_info: None,
            native_parent: None,
            rpc,
        }
    }

    /// A recorded process, confirmed to be the same one (`pidfd` open on
    /// it): it is ready if it had been (its executable was recorded then).
    pub(crate) fn from_record(rec: &RecordedProcess, pidfd: Arc<Pidfd>) -> Self {
        Self {
            pidfd,
            role: rec.role.into(),
            start_ticks: rec.start_ticks,
            exe: rec.exe.clone(),
            version: rec.version.clone(),
            binary: rec.binary.clone(),
            started_at: state_file::from_epoch(rec.started_at),
            ready: rec.exe.is_some(),
            drain_deadline: rec.drain_deadline.map(state_file::from_epoch),
            // The drain's start was not recorded; its duration goes unmeasured.
            drain_started: None,
            ending: false,
            exit_window: rec.exit_window_us.map(Duration::from_micros),
            binary_info: None,
            native_parent: None,
            rpc: rec.rpc,
        }
    }

    /// What the state file keeps of it.
    pub(crate) fn record(&self, pid: u32) -> RecordedProcess {
        RecordedProcess {
            pid,
            start_ticks: self.start_ticks,
            exe: self.exe.clone(),
            binary: self.binary.clone(),
            version: self.version.clone(),
            role: self.role.into(),
            started_at: state_file::to_epoch(self.started_at),
            drain_deadline: self.drain_deadline.map(state_file::to_epoch),
            exit_window_us: self.exit_window.map(|w| w.as_micros() as u64),
            rpc: self.rpc,
        }
    }

    /// What the status shows of it.
    pub(crate) fn info(&self, pid: u32) -> ProcessInfo {
        ProcessInfo {
            pid,
            version: self.version.clone(),
            binary: self.binary.clone(),
            started_at: self.started_at,
            binary_info: self.binary_info.clone(),
        }
    }
}

/// The processes by pid.
#[derive(Default)]
pub(crate) struct ProcessTable {
    processes: BTreeMap<u32, Process>,
}

impl ProcessTable {
    pub(crate) fn insert(&mut self, pid: u32, process: Process) {
        self.processes.insert(pid, process);
    }

    pub(crate) fn remove(&mut self, pid: u32) -> Option<Process> {
        self.processes.remove(&pid)
    }

    pub(crate) fn get(&self, pid: u32) -> Option<&Process> {
        self.processes.get(&pid)
    }

    pub(crate) fn get_mut(&mut self, pid: u32) -> Option<&mut Process> {
        self.processes.get_mut(&pid)
    }

    pub(crate) fn contains(&self, pid: u32) -> bool {
        self.processes.contains_key(&pid)
    }

    pub(crate) fn pids(&self) -> Vec<u32> {
        self.processes.keys().copied().collect()
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (u32, &Process)> {
        self.processes.iter().map(|(pid, p)| (*pid, p))
    }

    pub(crate) fn values(&self) -> impl Iterator<Item = &Process> {
        self.processes.values()
    }

    /// The process that serves, if one does.
    pub(crate) fn serving_pid(&self) -> Option<u32> {
        self.with_role(Role::Serving).next()
    }

    /// The pids of the processes in `role`, in pid order.
    pub(crate) fn with_role(&self, role: Role) -> impl Iterator<Item = u32> + '_ {
        self.iter()
            .filter(move |(_, p)| p.role == role)
            .map(|(pid, _)| pid)
    }

    /// Makes `pid` the serving process. The one serving before (if another)
    /// drains until `deadline` when there is one (its drain timed from
    /// `now`), and is returned either way. A process promoted before it
    /// signalled readiness (a native restart's child signals its parent, not
    /// us) counts as ready. `unidentified` says that its executable is not
    /// known yet, for the caller to read it now: so for that child, and for a
    /// process whose readiness arrived before its spawn was registered (under
    /// load), whose identity nothing read. A serving process recorded without
    /// it is not re-adopted by a restarted agent.
    pub(crate) fn promote(
        &mut self,
        pid: u32,
        deadline: Option<SystemTime>,
        now: Instant,
    ) -> Promotion {
        let previous = self.serving_pid().filter(|&old| old != pid);
        if let Some(old) = previous
            && let Some(p) = self.processes.get_mut(&old)
        {
            p.role = Role::Draining;
            p.drain_deadline = deadline;
            p.drain_started = deadline.map(|_| now);
        }
        let mut unidentified = false;
        let promoted = match self.processes.get_mut(&pid) {
            Some(p) => {
                p.role = Role::Serving;
                p.ready = true;
                unidentified = p.exe.is_none();
                true
            }
            None => false,
        };
        Promotion {
            previous,
            promoted,
            unidentified,
        }
    }

    /// The state once no operation runs: whether one serves, and whether one
    /// should.
    pub(crate) fn settled_state(&self, desired_running: bool) -> ProxyState {
        match (self.serving_pid(), desired_running) {
            (Some(_), _) => ProxyState::Running,
            (None, true) => ProxyState::Unavailable,
            (None, false) => ProxyState::Stopped,
        }
    }

    /// A process starts from another binary than `configured`: a HOT
    /// restart that is an upgrade.
    pub(crate) fn upgrading(&self, configured: &std::path::Path) -> bool {
        self.values()
            .any(|p| p.role == Role::Starting && p.binary != configured)
    }

    /// The serving process as the status shows it.
    pub(crate) fn serving_info(&self) -> Option<ProcessInfo> {
        let pid = self.serving_pid()?;
        self.get(pid).map(|p| p.info(pid))
    }

    /// The draining processes as the status shows them, each with its
    /// deadline (its start when it has none).
    pub(crate) fn draining_info(&self) -> Vec<(ProcessInfo, SystemTime)> {
        self.iter()
            .filter(|(_, p)| p.role == Role::Draining)
            .map(|(pid, p)| (p.info(pid), p.drain_deadline.unwrap_or(p.started_at)))
            .collect()
    }

    /// What the state file keeps of every process.
    pub(crate) fn records(&self) -> Vec<RecordedProcess> {
        self.iter().map(|(pid, p)| p.record(pid)).collect()
    }
}

/// What a promotion changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Promotion {
    /// The process that served before, now draining or left to the caller.
    pub(crate) previous: Option<u32>,
    /// The pid was one of ours (and serves now).
    pub(crate) promoted: bool,
    /// Its executable is not known: the caller reads it now.
    pub(crate) unidentified: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record with a pidfd on this test process: the table never uses it.
    fn process(role: Role, binary: &str) -> Process {
        let pidfd = Arc::new(Pidfd::open(std::process::id()).unwrap());
        let mut p = Process::spawned(
            pidfd,
            7,
            PathBuf::from(binary),
            "4.3.1.0".into(),
            SystemTime::UNIX_EPOCH + Duration::from_secs(100),
            Duration::from_secs(30),
            false,
        );
        p.role = role;
        p
    }

    #[test]
    fn a_spawned_process_starts_unready_and_the_table_knows_who_serves() {
        let mut t = ProcessTable::default();
        assert_eq!(t.serving_pid(), None);
        t.insert(20, process(Role::Starting, "/o/bin/obproxy"));
        assert!(!t.get(20).unwrap().ready);
        assert_eq!(t.serving_pid(), None);
        t.insert(10, process(Role::Serving, "/o/bin/obproxy"));
        t.insert(5, process(Role::Draining, "/o/bin/obproxy"));
        assert_eq!(t.serving_pid(), Some(10));
        assert_eq!(t.with_role(Role::Starting).collect::<Vec<_>>(), vec![20]);
        assert_eq!(t.with_role(Role::Draining).collect::<Vec<_>>(), vec![5]);
        assert_eq!(t.pids(), vec![5, 10, 20]);
    }

    #[test]
    fn promotion_hands_over_and_the_previous_drains_until_its_deadline() {
        let mut t = ProcessTable::default();
        t.insert(10, process(Role::Serving, "/o/bin/obproxy"));
        t.insert(20, process(Role::Starting, "/o/bin/obproxy"));
        let deadline = SystemTime::UNIX_EPOCH + Duration::from_secs(500);
        let now = Instant::now();
        let p = t.promote(20, Some(deadline), now);
        assert_eq!(
            p,
            Promotion {
                previous: Some(10),
                promoted: true,
                unidentified: true
            }
        );
        assert_eq!(t.serving_pid(), Some(20));
        let old = t.get(10).unwrap();
        assert_eq!(old.role, Role::Draining);
        assert_eq!(old.drain_deadline, Some(deadline));
        assert_eq!(old.drain_started, Some(now));
        assert_eq!(t.draining_info()[0].1, deadline);
        // Without a drain the previous one is returned for the caller to
        // end, and it has no deadline.
        t.insert(30, process(Role::Starting, "/o/bin/obproxy"));
        t.get_mut(30).unwrap().ready = true;
        let p = t.promote(30, None, now);
        assert_eq!(p.previous, Some(20));
        assert_eq!(t.get(20).unwrap().drain_deadline, None);
        // Ready before its spawn was registered (a busy machine): nothing read
        // its executable, so the promotion asks for it.
        assert!(p.unidentified);
        t.get_mut(30).unwrap().exe = Some(PathBuf::from("/o/bin/obproxy"));
        t.insert(40, process(Role::Starting, "/o/bin/obproxy"));
        let ready = t.get_mut(40).unwrap();
        ready.ready = true;
        ready.exe = Some(PathBuf::from("/o/bin/obproxy"));
        let p = t.promote(40, None, now);
        assert!(p.promoted && !p.unidentified, "read at its readiness");
        t.promote(30, None, now);
        // Promoting the one that serves changes nothing.
        assert_eq!(t.promote(30, None, now).previous, None);
        assert!(!t.promote(99, None, now).promoted);
    }

    #[test]
    fn the_state_follows_the_processes_and_the_desire() {
        let mut t = ProcessTable::default();
        assert_eq!(t.settled_state(false), ProxyState::Stopped);
        assert_eq!(t.settled_state(true), ProxyState::Unavailable);
        t.insert(10, process(Role::Serving, "/o/bin/obproxy"));
        assert_eq!(t.settled_state(false), ProxyState::Running);
        let configured = std::path::Path::new("/o/bin/obproxy");
        t.insert(20, process(Role::Starting, "/o/bin/obproxy"));
        assert!(!t.upgrading(configured));
        t.insert(30, process(Role::Starting, "/o/upgrade/obproxy"));
        assert!(t.upgrading(configured));
        t.get_mut(30).unwrap().role = Role::Draining;
        assert!(!t.upgrading(configured), "only a starting process upgrades");
    }

    #[test]
    fn a_record_reads_back_as_the_same_process() {
        let mut p = process(Role::Draining, "/o/bin/obproxy");
        p.exe = Some(PathBuf::from("/o/bin/obproxy"));
        p.drain_deadline = Some(SystemTime::UNIX_EPOCH + Duration::from_secs(300));
        p.rpc = true;
        let rec = p.record(42);
        assert_eq!(rec.role, state_file::Role::Draining);
        let back = Process::from_record(&rec, p.pidfd.clone());
        assert_eq!(back.role, Role::Draining);
        assert!(back.ready, "a recorded executable means it was ready");
        assert_eq!(back.record(42), rec);
        // Not ready yet when recorded: no executable, and not ready again.
        let rec = process(Role::Starting, "/o/bin/obproxy").record(43);
        let back = Process::from_record(&rec, p.pidfd.clone());
        assert!(!back.ready);
        assert_eq!(back.exit_window, Some(Duration::from_secs(30)));
    }
}

//! What `/proc` says about a process: the sockets it holds, its client
//! connections, its start time. Identity is judged by the listener's socket
//! inode, never by process name (killing by name caused port clashes).
use std::{
    collections::HashSet,
    fs, io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

/// Inodes of every socket in the process's fd table.
pub fn socket_inodes(pid: u32) -> io::Result<HashSet<u64>> {
    let mut inodes = HashSet::new();
    for entry in fs::read_dir(format!("/proc/{pid}/fd"))? {
        let Ok(target) = fs::read_link(entry?.path()) else {
            continue; // the fd closed while we looked
        };
        if let Some(inode) = target
            .to_str()
            .and_then(|t| t.strip_prefix("socket:["))
            .and_then(|t| t.strip_suffix(']'))
            .and_then(|t| t.parse().ok())
        {
            inodes.insert(inode);
        }
    }
    Ok(inodes)
}

/// The fd number under which `pid` holds the socket `inode`.
pub fn fd_of_socket(pid: u32, inode: u64) -> Option<i32> {
    let want = format!("socket:[{inode}]");
    fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()?
        .filter_map(Result::ok)
        .find(|e| fs::read_link(e.path()).is_ok_and(|t| t.as_os_str() == want.as_str()))
        .and_then(|e| e.file_name().to_str()?.parse().ok())
}

/// The executable the process runs. A binary replaced on disk since (an
/// upgrade renames a new file over it) reads as "<path> (deleted)": it is
/// still the same program, so the suffix is dropped.
pub fn exe(pid: u32) -> io::Result<std::path::PathBuf> {
    let path = fs::read_link(format!("/proc/{pid}/exe"))?;
    Ok(
        match path.to_str().and_then(|p| p.strip_suffix(" (deleted)")) {
            Some(p) => std::path::PathBuf::from(p),
            None => path,
        },
    )
}

/// Whether this kernel lists each thread's children in `/proc`
/// (`CONFIG_PROC_CHILDREN`, in every common distribution's kernel).
pub fn lists_children() -> bool {
    static LISTS: std::sync::LazyLock<bool> =
        std::sync::LazyLock::new(|| std::path::Path::new("/proc/thread-self/children").exists());
    *LISTS
}

/// The children of `pid`, from `/proc/<pid>/task/<tid>/children` of each of
/// its threads (a child is listed under the thread that forked it). A
/// process or thread that ended meanwhile shows none.
pub fn children(pid: u32) -> Vec<u32> {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .filter_map(Result::ok)
        .filter_map(|task| fs::read_to_string(task.path().join("children")).ok())
        .flat_map(|text| {
            text.split_whitespace()
                .filter_map(|c| c.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

/// Every descendant of `roots` (their children, theirs, and so on; roots
/// excluded): the only processes that can have inherited a descriptor from
/// them. A read per thread of the tree, where a walk of every process's
/// descriptors on the host reads a link per descriptor (tens of thousands on
/// a busy host).
pub fn descendants(roots: &[u32]) -> Vec<u32> {
    let mut seen: HashSet<u32> = roots.iter().copied().collect();
    let mut todo: Vec<u32> = roots.to_vec();
    let mut found = Vec::new();
    while let Some(pid) = todo.pop() {
        for kid in children(pid) {
            if seen.insert(kid) {
                found.push(kid);
                todo.push(kid);
            }
        }
    }
    found
}

/// Every pid on the host.
pub fn pids() -> Vec<u32> {
    host_walk();
    fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Zombie children of `parent` outside `pgid` (orphans re-parented to us).
/// Only `parent`'s own children are read where the kernel lists them; every
/// process on the host otherwise.
pub fn zombie_children(parent: u32, not_in_pgid: u32) -> Vec<u32> {
    let candidates = if lists_children() {
        children(parent)
    } else {
        pids()
    };
    candidates
        .into_iter()
        .filter(|pid| {
            let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return false;
            };
            let Some((_, rest)) = stat.rsplit_once(')') else {
                return false;
            };
            let f: Vec<&str> = rest.split_whitespace().take(4).collect();
            // state, ppid, pgrp
            f.len() == 4
                && f[0] == "Z"
                && f[1].parse() == Ok(parent)
                && f[2].parse::<u32>().is_ok_and(|g| g != not_in_pgid)
        })
        .collect()
}

/// Whether `pid` holds every one of `listener_inodes`.
pub fn holds_listeners(pid: u32, listener_inodes: &[u64]) -> bool {
    socket_inodes(pid).is_ok_and(|held| listener_inodes.iter().all(|i| held.contains(i)))
}

/// Inodes of the established TCP sockets on `listeners` (the SQL
/// listeners): every client session on this host's ODP. Read once per sample
/// and matched against each process's fds.
pub fn sessions_on(listeners: &[std::net::SocketAddr]) -> HashSet<u64> {
    // A dump walks the kernel's whole TCP table: never in the supervisor,
    // which everything else waits for (the sampler thread takes them).
    // Debug builds, which the tests run, enforce it.
    debug_assert!(!handling(), "a socket dump in the supervisor");
    if listeners.is_empty() {
        return HashSet::new();
    }
    let mut ports: Vec<u16> = listeners.iter().map(|l| l.port()).collect();
    ports.sort_unstable();
    ports.dedup();
    // Only the families we listen on: each dump walks the whole table.
    let v4 = listeners.iter().any(|l| l.is_ipv4());
    let v6 = listeners.iter().any(|l| l.is_ipv6());
    // The kernel filters by state (and port) for us; the tables are the fallback.
    if let Ok(inodes) = super::sock_diag::sessions_on(&ports, v4, v6) {
        return inodes;
    }
    let mut inodes = HashSet::new();
    let tables = [("/proc/net/tcp", v4), ("/proc/net/tcp6", v6)];
    for (table, _) in tables.iter().filter(|(_, wanted)| *wanted) {
        if let Ok(text) = fs::read_to_string(table) {
            inodes.extend(established_inodes(&text, &ports));
        }
    }
    inodes
}

/// How many of `sessions` the process holds: its open client connections.
pub fn client_connections(pid: u32, sessions: &HashSet<u64>) -> u32 {
    if sessions.is_empty() {
        return 0;
    }
    socket_inodes(pid).map_or(0, |held| held.intersection(sessions).count() as u32)
}

/// Rows of `/proc/net/tcp{,6}`: `sl local rem st ... uid timeout inode`.
/// A busy host has tens of thousands of rows (TIME_WAIT mostly), so rows on
/// other ports are dropped after reading two columns.
fn established_inodes<'a>(table: &'a str, ports: &'a [u16]) -> impl Iterator<Item = u64> + 'a {
    table.lines().skip(1).filter_map(move |line| {
        let mut cols = line.split_ascii_whitespace();
        let local = cols.nth(1)?;
        let port = u16::from_str_radix(local.rsplit(':').next()?, 16).ok()?;
        if !ports.contains(&port) {
            return None;
        }
        // 01 = ESTABLISHED; 08 = CLOSE_WAIT (the client left, the proxy has
        // not closed yet) still holds a session.
        let state = cols.nth(1)?;
        if state != "01" && state != "08" {
            return None;
        }
        cols.nth(5)?.parse().ok()
    })
}

/// Every process that holds the socket `inode` in its fd table (a listener
/// is shared by every obproxy that inherited it). Processes that vanish or
/// cannot be read while we look are skipped.
pub fn pids_holding_socket(inode: u64) -> io::Result<Vec<u32>> {
    host_walk();
    let want = format!("socket:[{inode}]");
    let mut pids = Vec::new();
    for entry in fs::read_dir("/proc")? {
        let Some(pid) = entry?
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        let holds = fds
            .filter_map(Result::ok)
            .any(|fd| fs::read_link(fd.path()).is_ok_and(|t| t.as_os_str() == want.as_str()));
        if holds {
            pids.push(pid);
        }
    }
    Ok(pids)
}

/// The listening TCP sockets on `port` (any address), with their inodes,
/// from `/proc/net/tcp` and `/proc/net/tcp6`.
pub fn listeners_on(port: u16) -> io::Result<Vec<(SocketAddr, u64)>> {
    let mut found = Vec::new();
    for (table, v6) in [("/proc/net/tcp", false), ("/proc/net/tcp6", true)] {
        let text = match fs::read_to_string(table) {
            Ok(t) => t,
            // No IPv6 on this host.
            Err(e) if e.kind() == io::ErrorKind::NotFound && v6 => continue,
            Err(e) => return Err(e),
        };
        found.extend(listening_rows(&text, v6).filter(|(addr, _)| addr.port() == port));
    }
    Ok(found)
}

/// The inode of the socket listening on exactly `addr`, if any.
pub fn listening_inode(addr: SocketAddr) -> io::Result<Option<u64>> {
    Ok(listeners_on(addr.port())?
        .into_iter()
        .find(|(a, _)| *a == addr)
        .map(|(_, inode)| inode))
}

/// LISTEN rows (state 0A) of a `/proc/net/tcp{,6}` table.
fn listening_rows(table: &str, v6: bool) -> impl Iterator<Item = (SocketAddr, u64)> + '_ {
    table.lines().skip(1).filter_map(move |line| {
        let mut cols = line.split_ascii_whitespace();
        let local = parse_addr(cols.nth(1)?, v6)?;
        if cols.nth(1)? != "0A" {
            return None;
        }
        Some((local, cols.nth(5)?.parse().ok()?))
    })
}

/// `0100007F:0B43` or 32 hex digits and a port: the kernel prints each
/// 32-bit word of the address as a number in host order.
fn parse_addr(text: &str, v6: bool) -> Option<SocketAddr> {
    let (ip, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| -> Option<[u8; 4]> {
        Some(
            u32::from_str_radix(ip.get(i * 8..i * 8 + 8)?, 16)
                .ok()?
                .to_ne_bytes(),
        )
    };
    let ip: IpAddr = if v6 {
        if ip.len() != 32 {
            return None;
        }
        let mut bytes = [0u8; 16];
        for i in 0..4 {
            bytes[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
        }
        Ipv6Addr::from(bytes).into()
    } else {
        if ip.len() != 8 {
            return None;
        }
        Ipv4Addr::from(word(0)?).into()
    };
    Some(SocketAddr::new(ip, port))
}

/// The process's start time in clock ticks since boot (`/proc/<pid>/stat`
/// field 22): with the pid it names one process for the life of the host.
pub fn start_ticks(pid: u32) -> io::Result<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) may hold spaces and parentheses: the fields
    // after it start after the last ')'.
    let after = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| io::Error::other("malformed /proc/<pid>/stat"))?;
    after
        .split_whitespace()
        .nth(19)
        .and_then(|f| f.parse().ok())
        .ok_or_else(|| io::Error::other("no start time in /proc/<pid>/stat"))
}

/// The process's parent (`/proc/<pid>/stat` field 4).
pub fn parent_pid(pid: u32) -> io::Result<u32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse().ok())
        .ok_or_else(|| io::Error::other("no parent pid in /proc/<pid>/stat"))
}

/// When the process started, from its start ticks and the boot time: for a
/// process the agent did not start (taken over), whose uptime it reports.
pub fn started_at(pid: u32) -> io::Result<std::time::SystemTime> {
    let ticks = start_ticks(pid)?;
    let stat = fs::read_to_string("/proc/stat")?;
    let btime: u64 = stat
        .lines()
        .find_map(|l| l.strip_prefix("btime ")?.trim().parse().ok())
        .ok_or_else(|| io::Error::other("no btime in /proc/stat"))?;
    // SAFETY: sysconf takes a name and returns a number.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let secs = std::time::Duration::from_secs(btime)
        + std::time::Duration::from_millis(ticks.saturating_mul(1000) / hz);
    Ok(std::time::UNIX_EPOCH + secs)
}

thread_local! {
    /// Set while this thread handles a supervisor message.
    static HANDLING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// Set while the supervisor takes over listeners from outside, the one
    /// moment it may walk every process on the host.
    static WALK_ALLOWED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// A walk of every process on the host is about to start: never while the
/// supervisor handles a message (a HOT restart's path: on a busy host it is
/// tens of thousands of reads, and everything waits for the supervisor),
/// except under [`HostWalk::allow`] or on a kernel that does not list a
/// process's children. Debug builds, which the tests run, enforce it.
fn host_walk() {
    debug_assert!(
        !handling() || WALK_ALLOWED.with(std::cell::Cell::get) || !lists_children(),
        "a walk of every process on the host in the supervisor"
    );
}

/// Allows walks of every process on the host while it lives (see [`host_walk`]).
pub(crate) struct HostWalk;

impl HostWalk {
    pub(crate) fn allow() -> Self {
        WALK_ALLOWED.with(|w| w.set(true));
        Self
    }
}

impl Drop for HostWalk {
    fn drop(&mut self) {
        WALK_ALLOWED.with(|w| w.set(false));
    }
}

/// Whether this thread is handling a supervisor message now: what must never
/// run there (a kernel socket dump) checks it in debug builds.
pub fn handling() -> bool {
    HANDLING.with(std::cell::Cell::get)
}

/// Marks the handling of one message (the handlers are synchronous, so the
/// thread does nothing else meanwhile).
pub(crate) struct Handling;

impl Handling {
    pub(crate) fn enter() -> Self {
        HANDLING.with(|h| h.set(true));
        Self
    }
}

impl Drop for Handling {
    fn drop(&mut self) {
        HANDLING.with(|h| h.set(false));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn established_rows_on_the_listener_port_are_counted() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 0100007F:0B43 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 111 1 0 100 0 0 10 0\n\
   1: 0100007F:0B43 0100007F:D2A0 01 00000000:00000000 00:00000000 00000000     0        0 222 1 0 20 4 30 10 -1\n\
   2: 0100007F:D2A0 0100007F:0B43 01 00000000:00000000 00:00000000 00000000     0        0 333 1 0 20 4 30 10 -1\n";
        let inodes: Vec<u64> = established_inodes(table, &[0x0B43]).collect();
        assert_eq!(inodes, [222]);
    }

    #[test]
    fn our_parent_is_read_from_stat() {
        assert_eq!(
            parent_pid(std::process::id()).unwrap(),
            std::os::unix::process::parent_id()
        );
    }

    #[test]
    fn a_listener_is_found_by_address_and_its_holders_by_inode() {
        let v4 = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = v4.local_addr().unwrap();
        let inode = nix::sys::stat::fstat(&v4).unwrap().st_ino;
        assert_eq!(listening_inode(addr).unwrap(), Some(inode));
        let holders = pids_holding_socket(inode).unwrap();
        assert!(holders.contains(&std::process::id()), "{holders:?}");
        // Besides us, only a child another test is starting, between its
        // clone and its exec (it has a copy of every descriptor until then).
        for pid in holders.into_iter().filter(|&p| p != std::process::id()) {
            if let Ok(parent) = parent_pid(pid) {
                assert_eq!(parent, std::process::id(), "pid {pid} holds our listener");
            }
        }
        // A connection to it is no listener.
        let _c = std::net::TcpStream::connect(addr).unwrap();
        assert_eq!(listeners_on(addr.port()).unwrap(), [(addr, inode)]);
        if let Ok(v6) = std::net::TcpListener::bind("[::1]:0") {
            let addr = v6.local_addr().unwrap();
            let inode = nix::sys::stat::fstat(&v6).unwrap().st_ino;
            assert_eq!(listening_inode(addr).unwrap(), Some(inode));
        }
    }

    #[test]
    fn our_own_start_time_is_readable() {
        assert!(start_ticks(std::process::id()).unwrap() > 0);
        let age = started_at(std::process::id())
            .unwrap()
            .elapsed()
            .unwrap_or_default();
        assert!(age < std::time::Duration::from_secs(3600), "{age:?}");
    }
}

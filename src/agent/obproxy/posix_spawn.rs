//! Starting obproxy with `posix_spawn(3)` instead of fork and exec. glibc's
//! `posix_spawn` clones the calling thread with `CLONE_VM | CLONE_VFORK`: the
//! child borrows the agent's memory until it execs, so the agent's page
//! tables are never copied and no copy-on-write fault hits the agent's other
//! threads meanwhile. A fork of the agent (a large, multi-threaded process)
//! took 1 to 3 ms more than a fork of a small one on a HOT restart's path.
//!
//! The child can run none of our code, so what a fork's child did before
//! exec is done another way:
//! - the listeners and the binary's descriptor lose close-on-exec in the
//!   child only, by `posix_spawn_file_actions_adddup2(fd, fd)` (POSIX.1-2024;
//!   glibc since 2.29);
//! - the ambient capabilities are cleared on the spawner thread once, at its
//!   start ([`prepare_thread`]): they are per thread, and the child takes the
//!   calling thread's;
//! - the umask is set on the spawner thread around the call: the thread has
//!   a file-system context of its own (`unshare(CLONE_FS)`), so the agent's
//!   other threads keep 0077 throughout;
//! - the working directory is the child's own (`addchdir_np`), the process
//!   group its own (`POSIX_SPAWN_SETPGROUP`), every signal at its default and
//!   none blocked (as a fork's child of the Rust runtime gets them).
use std::{
    ffi::{CString, OsStr, OsString},
    mem::MaybeUninit,
    os::{
        fd::RawFd,
        unix::ffi::{OsStrExt, OsStringExt},
    },
    path::Path,
};

/// The environment variables obproxy never inherits: systemd's notify
/// socket and watchdog are the agent's.
pub const NOT_INHERITED: [&str; 3] = ["NOTIFY_SOCKET", "WATCHDOG_PID", "WATCHDOG_USEC"];

/// Makes the calling thread one obproxy can be spawned from: its own
/// file-system context (so its umask can differ from the agent's) and no
/// ambient capabilities (the unit grants the agent CAP_SYS_PTRACE as one, to
/// take listeners back from a running obproxy; obproxy must not get it).
pub fn prepare_thread() -> std::io::Result<()> {
    // SAFETY: unshare of this thread's fs_struct only.
    if unsafe { libc::unshare(libc::CLONE_FS) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    clear_ambient_capabilities();
    Ok(())
}

/// Clears the calling thread's ambient capabilities, so that no program it
/// execs (obproxy, or `obproxy -V`) runs with the agent's CAP_SYS_PTRACE.
/// Async-signal-safe (one prctl): callable between fork and exec. Fails only
/// on kernels without ambient capabilities, which then have nothing to clear.
pub fn clear_ambient_capabilities() {
    // The kernel reads the variadic arguments as unsigned longs.
    let (clear, zero): (libc::c_ulong, libc::c_ulong) =
        (libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong, 0);
    // SAFETY: prctl on this thread's capabilities only.
    unsafe { libc::prctl(libc::PR_CAP_AMBIENT, clear, zero, zero, zero) };
}

/// What to start.
pub struct Child<'a> {
    /// The path exec'd (absolute: the child changes directory first).
    pub program: &'a Path,
    pub argv: Vec<&'a OsStr>,
    /// Added to (or replacing in) the agent's own environment.
    pub env: &'a [(String, String)],
    pub home: &'a Path,
    pub umask: u32,
    /// The child's stdout and stderr.
    pub output: RawFd,
    /// Descriptors the child keeps at the same numbers.
    pub keep: Vec<RawFd>,
}

/// Starts `child` from the calling thread, which must have run
/// [`prepare_thread`]; the new process's pid. An exec that fails (a missing
/// or non-executable file) is this call's error: glibc waits for the exec.
pub fn spawn(child: &Child<'_>) -> std::io::Result<u32> {
    if !child.program.is_absolute() {
        return Err(std::io::Error::other("the program's path must be absolute"));
    }
    // Descriptors 0 to 2 are the child's stdio: one of them kept at its own
    // number would be replaced.
    if child.output <= 2 || child.keep.iter().any(|&fd| fd <= 2) {
        return Err(std::io::Error::other(
            "a descriptor to hand over is one of 0, 1 and 2",
        ));
    }
    let path = c_string(child.program.as_os_str())?;
    let argv = child
        .argv
        .iter()
        .map(|a| c_string(a))
        .collect::<std::io::Result<Vec<_>>>()?;
    let envp = environment(child.env)?;
    let home = c_string(child.home.as_os_str())?;
    let argv_ptrs = pointers(&argv);
    let envp_ptrs = pointers(&envp);

    let mut actions = FileActions::new()?;
    actions.open(0, c"/dev/null", libc::O_RDONLY)?;
    actions.dup2(child.output, 1)?;
    actions.dup2(child.output, 2)?;
    for &fd in &child.keep {
        actions.dup2(fd, fd)?;
    }
    actions.chdir(&home)?;
    let attributes = Attributes::new()?;

    let mut pid: libc::pid_t = 0;
    // SAFETY: the thread's own umask (its fs_struct is unshared), restored
    // right after; every pointer outlives the call, both lists end in null.
    let r = unsafe {
        let before = libc::umask(child.umask as libc::mode_t);
        let r = libc::posix_spawn(
            &mut pid,
            path.as_ptr(),
            &actions.0,
            &attributes.0,
            argv_ptrs.as_ptr(),
            envp_ptrs.as_ptr(),
        );
        libc::umask(before);
        r
    };
    check(r)?;
    Ok(pid as u32)
}

fn c_string(s: &OsStr) -> std::io::Result<CString> {
    CString::new(s.as_bytes()).map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("a NUL byte in {:?}", s.to_string_lossy()),
        )
    })
}

/// The agent's environment with `env` over it, minus [`NOT_INHERITED`].
fn environment(env: &[(String, String)]) -> std::io::Result<Vec<CString>> {
    let mut all: std::collections::BTreeMap<OsString, OsString> = std::env::vars_os().collect();
    for (k, v) in env {
        all.insert(k.into(), v.into());
    }
    for k in NOT_INHERITED {
        all.remove(OsStr::new(k));
    }
    all.into_iter()
        .map(|(k, v)| {
            let mut line = k.into_vec();
            line.push(b'=');
            line.extend(v.as_bytes());
            c_string(OsStr::from_bytes(&line))
        })
        .collect()
}

fn pointers(strings: &[CString]) -> Vec<*mut libc::c_char> {
    strings
        .iter()
        .map(|s| s.as_ptr().cast_mut())
        .chain(std::iter::once(std::ptr::null_mut()))
        .collect()
}

fn check(r: libc::c_int) -> std::io::Result<()> {
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::from_raw_os_error(r))
    }
}

struct FileActions(libc::posix_spawn_file_actions_t);

impl FileActions {
    fn new() -> std::io::Result<Self> {
        let mut raw = MaybeUninit::uninit();
        // SAFETY: initialises the value it is given.
        check(unsafe { libc::posix_spawn_file_actions_init(raw.as_mut_ptr()) })?;
        // SAFETY: initialised above.
        Ok(Self(unsafe { raw.assume_init() }))
    }

    fn open(
        &mut self,
        fd: RawFd,
        path: &std::ffi::CStr,
        flags: libc::c_int,
    ) -> std::io::Result<()> {
        // SAFETY: the path is copied by glibc.
        check(unsafe {
            libc::posix_spawn_file_actions_addopen(&mut self.0, fd, path.as_ptr(), flags, 0)
        })
    }

    /// `from` as `to` in the child; with `from == to`, the child's copy
    /// loses close-on-exec (the agent's keeps it).
    fn dup2(&mut self, from: RawFd, to: RawFd) -> std::io::Result<()> {
        // SAFETY: plain integers.
        check(unsafe { libc::posix_spawn_file_actions_adddup2(&mut self.0, from, to) })
    }

    fn chdir(&mut self, dir: &CString) -> std::io::Result<()> {
        // SAFETY: the path is copied by glibc.
        check(unsafe { libc::posix_spawn_file_actions_addchdir_np(&mut self.0, dir.as_ptr()) })
    }
}

impl Drop for FileActions {
    fn drop(&mut self) {
        // SAFETY: initialised in new, destroyed once.
        unsafe { libc::posix_spawn_file_actions_destroy(&mut self.0) };
    }
}

struct Attributes(libc::posix_spawnattr_t);

impl Attributes {
    /// Its own process group (a Ctrl-C meant for an agent run by hand must
    /// not reach obproxy, which outlives the agent by design), no signal
    /// blocked, every signal at its default (the Rust runtime ignores
    /// SIGPIPE; handlers are reset by the exec anyway).
    fn new() -> std::io::Result<Self> {
        let mut raw = MaybeUninit::uninit();
        // SAFETY: initialises the value it is given.
        check(unsafe { libc::posix_spawnattr_init(raw.as_mut_ptr()) })?;
        // SAFETY: initialised above; destroyed by Drop from here on.
        let mut this = Self(unsafe { raw.assume_init() });
        let flags = libc::POSIX_SPAWN_SETPGROUP
            | libc::POSIX_SPAWN_SETSIGMASK
            | libc::POSIX_SPAWN_SETSIGDEF;
        // SAFETY: initialised sets and attributes only.
        unsafe {
            let mut none = MaybeUninit::<libc::sigset_t>::uninit();
            libc::sigemptyset(none.as_mut_ptr());
            let mut all = MaybeUninit::<libc::sigset_t>::uninit();
            libc::sigfillset(all.as_mut_ptr());
            check(libc::posix_spawnattr_setflags(
                &mut this.0,
                flags as libc::c_short,
            ))?;
            check(libc::posix_spawnattr_setpgroup(&mut this.0, 0))?;
            check(libc::posix_spawnattr_setsigmask(&mut this.0, none.as_ptr()))?;
            check(libc::posix_spawnattr_setsigdefault(
                &mut this.0,
                all.as_ptr(),
            ))?;
        }
        Ok(this)
    }
}

impl Drop for Attributes {
    fn drop(&mut self) {
        // SAFETY: initialised in new, destroyed once.
        unsafe { libc::posix_spawnattr_destroy(&mut self.0) };
    }
}

/// Raises CAP_SYS_PTRACE as an ambient capability of the calling thread, as
/// the unit's `AmbientCapabilities=` gives it to the agent (root only), so a
/// test can see that none of obproxy's processes inherits it.
#[cfg(test)]
pub(crate) fn raise_ambient_ptrace() {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Default, Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    const CAP_SYS_PTRACE: u32 = 19;
    let mut header = Header {
        version: VERSION_3,
        pid: 0,
    };
    let mut data = [Data::default(); 2];
    // SAFETY: capget/capset of this thread with version 3 structures, then a
    // prctl that raises one ambient capability of this thread.
    unsafe {
        assert_eq!(
            libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()),
            0,
            "capget: {}",
            std::io::Error::last_os_error()
        );
        data[0].inheritable |= 1 << CAP_SYS_PTRACE;
        assert_eq!(
            libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()),
            0,
            "capset (root needed): {}",
            std::io::Error::last_os_error()
        );
        let (raise, cap, zero): (libc::c_ulong, libc::c_ulong, libc::c_ulong) = (
            libc::PR_CAP_AMBIENT_RAISE as libc::c_ulong,
            CAP_SYS_PTRACE.into(),
            0,
        );
        assert_eq!(
            libc::prctl(libc::PR_CAP_AMBIENT, raise, cap, zero, zero),
            0,
            "PR_CAP_AMBIENT_RAISE: {}",
            std::io::Error::last_os_error()
        );
    }
    let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
    assert!(
        status.contains("CapAmb:\t0000000000080000"),
        "the raise did not take: {status}"
    );
}

/// `/proc/<pid>/comm` once it is `expected`, or as it is after 10 s. The
/// spawn returns when the child has let go of the agent's memory, inside its
/// exec: the kernel names the process, and sets up its arguments and
/// environment, a moment later.
#[cfg(test)]
pub(crate) fn comm_once_execd(pid: u32, expected: &str) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        let comm = comm.trim_end();
        if comm == expected || std::time::Instant::now() > deadline {
            return comm.to_string();
        }
        std::thread::yield_now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{
        os::{fd::AsRawFd, unix::fs::PermissionsExt},
        path::PathBuf,
        time::{Duration, Instant},
    };

    fn child<'a>(program: &'a Path, home: &'a Path, output: &'a std::fs::File) -> Child<'a> {
        Child {
            program,
            argv: vec![OsStr::new("obproxy")],
            env: &[],
            home,
            umask: 0o022,
            output: output.as_raw_fd(),
            keep: Vec::new(),
        }
    }

    fn output(dir: &Path) -> std::fs::File {
        std::fs::File::create(dir.join("out")).unwrap()
    }

    fn kill(pid: u32) {
        let pid = nix::unistd::Pid::from_raw(pid as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        nix::sys::wait::waitpid(pid, None).unwrap();
    }

    fn status(pid: u32, field: &str) -> String {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let line = status
            .lines()
            .find(|l| l.starts_with(field))
            .unwrap_or_else(|| panic!("no {field} in {status}"));
        line[field.len()..].trim().to_string()
    }

    /// The umask of the process's shared file-system context, read on a
    /// thread of its own (reading a umask sets it).
    fn process_umask() -> u32 {
        std::thread::spawn(|| {
            // SAFETY: umask only, set back at once.
            unsafe {
                let u = libc::umask(0o077);
                libc::umask(u);
                u as u32
            }
        })
        .join()
        .unwrap()
    }

    #[test]
    fn the_child_gets_its_directory_environment_umask_group_and_default_signals() {
        let dir = tempfile::tempdir().unwrap();
        let out = output(dir.path());
        let before = process_umask();
        prepare_thread().unwrap();
        let env = [
            ("ODP_SPAWN_TEST".to_string(), "1".to_string()),
            ("NOTIFY_SOCKET".to_string(), "/run/x".to_string()),
        ];
        let sleep = Path::new("/bin/sleep");
        let mut c = child(sleep, dir.path(), &out);
        c.argv.push(OsStr::new("30"));
        c.env = &env;
        c.umask = 0o027;
        let pid = spawn(&c).unwrap();
        assert_eq!(comm_once_execd(pid, "sleep"), "sleep");
        let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap();
        assert_eq!(cwd, dir.path().canonicalize().unwrap());
        // Empty until the exec has set the new stack up.
        let environ = loop {
            let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
            if !environ.is_empty() {
                break environ;
            }
            std::thread::yield_now();
        };
        let environ: Vec<&[u8]> = environ.split(|&b| b == 0).collect();
        assert!(environ.contains(&&b"ODP_SPAWN_TEST=1"[..]));
        assert!(!environ.iter().any(|e| e.starts_with(b"NOTIFY_SOCKET=")));
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
        assert_eq!(cmdline, b"obproxy\x0030\x00", "argv[0] is the one given");
        assert_eq!(status(pid, "Umask:"), "0027");
        // The test harness ignores SIGPIPE, as every Rust program does; the
        // child ignores nothing but glibc's two internal signals (32 and 33,
        // which glibc's spawn leaves ignored and a glibc program handles
        // itself once it uses them).
        let ignored = u64::from_str_radix(&status(pid, "SigIgn:"), 16).unwrap();
        assert_eq!(ignored & !0x1_8000_0000, 0, "SigIgn {ignored:x}");
        assert_eq!(status(pid, "SigBlk:"), "0000000000000000");
        let pgid = nix::unistd::getpgid(Some(nix::unistd::Pid::from_raw(pid as i32))).unwrap();
        assert_eq!(pgid.as_raw() as u32, pid, "a process group of its own");
        kill(pid);
        // Neither this thread's umask nor the agent's changed.
        // SAFETY: umask only, set back at once.
        let thread = unsafe {
            let u = libc::umask(0o077);
            libc::umask(u);
            u as u32
        };
        assert_eq!(thread, before);
        assert_eq!(process_umask(), before);
    }

    #[test]
    #[cfg_attr(skip_root, ignore = "raises an ambient capability: needs root")]
    fn no_ambient_capability_of_the_agent_reaches_the_child() {
        let dir = tempfile::tempdir().unwrap();
        let out = output(dir.path());
        raise_ambient_ptrace();
        prepare_thread().unwrap();
        let mut c = child(Path::new("/bin/sleep"), dir.path(), &out);
        c.argv.push(OsStr::new("30"));
        let pid = spawn(&c).unwrap();
        assert_eq!(status(pid, "CapAmb:"), "0000000000000000");
        kill(pid);
    }

    #[test]
    fn a_script_run_by_its_descriptor_can_open_it_after_the_exec() {
        let dir = tempfile::tempdir().unwrap();
        let out = output(dir.path());
        let script = dir.path().join("obproxy");
        std::fs::write(&script, "#!/bin/sh\nexec sleep 30\n").unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let file = std::fs::File::open(&script).unwrap();
        let by_fd = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
        prepare_thread().unwrap();
        let mut c = child(&by_fd, dir.path(), &out);
        c.keep = vec![file.as_raw_fd()];
        let pid = spawn(&c).unwrap();
        // sh opens the script by the descriptor's name after the exec; had
        // the descriptor been closed, it would exit 127 instead of running it.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            if comm.trim_end() == "sleep" {
                break;
            }
            let state = status(pid, "State:");
            assert!(!state.starts_with('Z'), "the script did not run: {}", {
                kill(pid);
                std::fs::read_to_string(dir.path().join("out")).unwrap()
            });
            assert!(Instant::now() < deadline, "still {comm:?}");
            std::thread::yield_now();
        }
        kill(pid);
    }

    #[test]
    fn a_failed_exec_is_the_calls_error_and_bad_arguments_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let out = output(dir.path());
        prepare_thread().unwrap();
        let text = dir.path().join("not-executable");
        std::fs::write(&text, "data").unwrap();
        let e = spawn(&child(&text, dir.path(), &out)).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EACCES), "{e}");
        let missing = dir.path().join("missing");
        let e = spawn(&child(&missing, dir.path(), &out)).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOENT), "{e}");
        let relative = Path::new("bin/sleep");
        assert!(spawn(&child(relative, dir.path(), &out)).is_err());
        let mut stdio = child(Path::new("/bin/true"), dir.path(), &out);
        stdio.keep = vec![1];
        assert!(spawn(&stdio).is_err());
    }
}

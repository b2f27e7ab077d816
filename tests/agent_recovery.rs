//! The agent survives itself: kill -9 it at any point and start it again;
//! obproxy keeps serving throughout, the new agent re-adopts what the old one
//! owned, and never touches a process whose identity it cannot confirm.
use crate::common;

use std::{
    os::unix::process::{CommandExt, ExitStatusExt},
    process::{Child, Command, Stdio},
    time::{Duration, SystemTime},
};

use common::{Agent, Load, Options, alive, echo};
use odp_agent::proto::agent as pb;
use tokio::io::AsyncReadExt;

fn hot(window: Duration, binary: &str) -> pb::RestartRequest {
    pb::RestartRequest {
        mode: pb::RestartMode::Hot as i32,
        exit_timeout: Some(prost_types::Duration {
            seconds: window.as_secs() as i64,
            nanos: 0,
        }),
        binary: binary.into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn killing_the_agent_while_obproxy_serves_changes_nothing_for_clients() {
    let mut agent = Agent::start().await;
    let pid = agent.start_proxy().await.pid;
    let before = agent.status().await;
    let addr = agent.sql_addr().await;
    let load = Load::start(addr);

    agent.kill9_and_restart();
    let after = agent.status().await;
    assert_eq!(after.state(), pb::ProxyState::Running, "{}", agent.logs());
    assert_eq!(after.pid, pid, "the serving obproxy was re-adopted");
    // SQL and RPC (4.3) listeners alike were taken back: the same sockets.
    assert_eq!(after.listeners.len(), 2);
    assert_eq!(after.listeners, before.listeners);
    assert_eq!(after.version, "4.3.1.0");
    // Nothing to report but that admin SQL is not configured here.
    let notices: Vec<&String> = after
        .notices
        .iter()
        .filter(|n| !n.starts_with("admin SQL is off"))
        .collect();
    assert!(notices.is_empty(), "{notices:?}");

    // The listeners were taken back, so a hot restart still works.
    let op = agent
        .restart_with(pb::RestartRequest {
            wait: true,
            ..hot(Duration::from_secs(2), "")
        })
        .await
        .unwrap();
    assert_eq!(op.state(), pb::OperationState::Succeeded, "{}", op.error);
    assert_eq!(agent.status().await.listeners, before.listeners);

    let report = load.finish().await;
    assert!(report.ok > 0);
    assert_eq!((report.refused, report.failed), (0, 0), "{report:?}");
    assert_eq!(agent.obproxy_pids().len(), 1);
}

#[tokio::test]
async fn killing_the_agent_before_the_new_process_is_ready_rolls_the_restart_back() {
    let mut agent = Agent::start().await;
    let old = agent.start_proxy().await.pid;
    let inode = agent.status().await.listeners[0].socket_inode;
    let addr = agent.sql_addr().await;
    let load = Load::start(addr);

    let slow = agent.add_binary("obproxy-slow", &[("ODP_STANDIN_START_DELAY", "3s")]);
    let op = agent
        .restart_with(hot(Duration::from_secs(5), &slow))
        .await
        .unwrap();
    agent
        .watch_op_until(&op.id, |o| o.phase() == pb::OperationPhase::WaitingReady)
        .await;
    let starting: Vec<u32> = agent
        .obproxy_pids()
        .into_iter()
        .filter(|p| *p != old)
        .collect();
    assert_eq!(starting.len(), 1);

    agent.kill9_and_restart();
    let status = agent.status().await;
    assert_eq!(status.pid, old, "the old process keeps serving");
    assert_eq!(status.listeners[0].socket_inode, inode);
    assert!(!alive(starting[0]) || agent.wait_status(|_| !alive(starting[0])).await.pid == old);
    assert_eq!(
        agent.obproxy_pids(),
        vec![old],
        "exactly one obproxy serves"
    );

    let report = load.finish().await;
    assert!(report.ok > 0);
    assert_eq!((report.refused, report.failed), (0, 0), "{report:?}");
}

/// An agent whose obproxy serves with a 30 s window of its own, and a
/// session on it that never ends (it keeps the process draining after a
/// HOT restart).
struct Serving {
    agent: Agent,
    old: u32,
    inode: u64,
    addr: std::net::SocketAddr,
    session: tokio::net::TcpStream,
}

async fn serving_with_a_held_session() -> Serving {
    let agent = Agent::start_with(Options {
        exit_timeout: "30s",
        ..Default::default()
    })
    .await;
    let old = agent.start_proxy().await.pid;
    let inode = agent.status().await.listeners[0].socket_inode;
    let addr = agent.sql_addr().await;
    let mut session = common::connect(addr).await.unwrap();
    echo(&mut session, b"held").await.unwrap();
    Serving {
        agent,
        old,
        inode,
        addr,
        session,
    }
}

#[tokio::test]
async fn killing_the_agent_during_a_drain_keeps_the_drains_deadline() {
    // The old process's own window (30 s) outlasts the agent's deadline for it
    // (the 4 s exit_timeout, enforced by SIGKILL without admin SQL): only the
    // re-adopted agent's SIGKILL can end it in time.
    let Serving {
        mut agent,
        old,
        inode,
        addr,
        mut session,
    } = serving_with_a_held_session().await;
    let load = Load::start(addr);

    let op = agent
        .restart_with(hot(Duration::from_secs(4), ""))
        .await
        .unwrap();
    agent
        .watch_op_until(&op.id, |o| o.phase() == pb::OperationPhase::Draining)
        .await;
    let draining = agent.status().await.draining[0].clone();
    let deadline: SystemTime = draining.deadline.unwrap().try_into().unwrap();
    assert_eq!(draining.process.as_ref().unwrap().pid, old);

    agent.kill9_and_restart();
    let status = agent.status().await;
    assert_eq!(status.state(), pb::ProxyState::Running, "{}", agent.logs());
    assert_eq!(status.listeners[0].socket_inode, inode);
    assert_eq!(
        status.draining.len(),
        1,
        "the draining process was re-adopted"
    );
    let readopted: SystemTime = status.draining[0].deadline.unwrap().try_into().unwrap();
    let drift = readopted
        .duration_since(deadline)
        .unwrap_or_else(|e| e.duration());
    assert!(
        drift < Duration::from_millis(1),
        "the deadline moved by {drift:?}"
    );

    // The held session is cut by the new agent's SIGKILL at the old deadline.
    let mut buf = [0u8; 8];
    let cut = tokio::time::timeout(common::PATIENCE, session.read(&mut buf))
        .await
        .unwrap();
    assert!(matches!(cut, Ok(0) | Err(_)));
    let at = SystemTime::now();
    let early = deadline.duration_since(at).unwrap_or_default();
    let late = at.duration_since(deadline).unwrap_or_default();
    assert!(
        early < Duration::from_millis(50) && late < Duration::from_millis(700),
        "cut {early:?} before / {late:?} after the drain's deadline"
    );
    agent
        .log
        .wait_for(|l| l.contains("drain window over; SIGKILL"));
    agent.wait_status(|s| s.draining.is_empty()).await;
    assert!(!alive(old));
    // The re-adopting agent sent SIGUSR1 again (the first agent may have
    // died before sending it); obproxy had it already and says so.
    let output = agent.obproxy_output();
    assert!(
        output
            .lines()
            .any(|l| l.contains(&format!("signal ignored pid={old} signal=SIGUSR1"))),
        "{output}"
    );
    assert_eq!(agent.obproxy_pids().len(), 1);

    let report = load.finish().await;
    assert!(report.ok > 0);
    assert_eq!((report.refused, report.failed), (0, 0), "{report:?}");
}

#[tokio::test]
async fn a_promotion_only_in_the_journal_is_what_the_returning_agent_finds() {
    let Serving {
        mut agent,
        old,
        inode,
        addr,
        // Held to the end: it keeps the old process draining.
        session: _session,
    } = serving_with_a_held_session().await;
    // This agent ends right after the promotion's journal write: before the
    // state file says it, before DRAINING, before the old process's SIGUSR1.
    agent.kill9();
    agent.restart_agent_with(|config| {
        let mut command = common::agent_command(config);
        command.env("ODP_DEBUG_PANIC", "state-journal-written");
        command
    });
    let _ = agent.restart_with(hot(Duration::from_secs(20), "")).await;
    let exit = common::wait_child(&mut agent.child);
    assert!(!exit.success(), "{exit:?}");
    let file: odp_agent::agent::state_file::AgentState =
        serde_json::from_slice(&std::fs::read(agent.state.join("agent-state.json")).unwrap())
            .unwrap();
    let serving = |s: &odp_agent::agent::state_file::AgentState| {
        s.processes
            .iter()
            .find(|p| p.role == odp_agent::agent::state_file::Role::Serving)
            .map(|p| p.pid)
    };
    assert_eq!(serving(&file), Some(old), "the file still has the old one");

    agent.restart_agent_with(common::agent_command);
    let status = agent.status().await;
    assert_eq!(status.state(), pb::ProxyState::Running, "{}", agent.logs());
    assert_ne!(status.pid, old, "the new process serves: {}", agent.logs());
    assert_eq!(status.listeners[0].socket_inode, inode);
    assert_eq!(status.draining.len(), 1, "{}", agent.logs());
    assert_eq!(status.draining[0].process.as_ref().unwrap().pid, old);
    // The returning agent told the old process to drain.
    agent.log.wait_for(|l| {
        l.contains("re-adopted a draining obproxy") && l.contains(&format!("pid={old}"))
    });
    // obproxy's output is a file: nothing announces a new line.
    wait_until(|| {
        agent.obproxy_output().lines().any(|l| {
            l.contains("drain begun")
                && l.contains(&format!("pid={old}"))
                && l.contains("signal=SIGUSR1")
        })
    });
    let mut pids = agent.obproxy_pids();
    pids.sort_unstable();
    let mut want = vec![old, status.pid];
    want.sort_unstable();
    assert_eq!(pids, want);
    common::round_trip(addr).await.unwrap();
}

#[tokio::test]
async fn a_recorded_pid_now_used_by_another_process_is_neither_adopted_nor_signalled() {
    let mut agent = Agent::start().await;
    agent.start_proxy().await;
    agent.stop_proxy().await;
    // Another program now has a pid the state file claims is our obproxy.
    let mut other = std::process::Command::new("sleep")
        .arg("60")
        .spawn()
        .unwrap();
    let state_path = agent.dir.path().join("state/agent-state.json");
    let mut state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&state_path).unwrap()).unwrap();
    state["desired_running"] = false.into();
    state["processes"] = serde_json::json!([{
        "pid": other.id(),
        "start_ticks": 1,
        "exe": common::STANDIN,
        "binary": common::STANDIN,
        "version": "4.3.1.0",
        "role": "serving",
        "started_at": 0.0,
        "drain_deadline": null
    }, {
        "pid": other.id(),
        "start_ticks": odp_agent::agent::obproxy::procfs::start_ticks(other.id()).unwrap(),
        "exe": common::STANDIN,
        "binary": agent.home().join("bin/obproxy"),
        "version": "4.3.1.0",
        "role": "draining",
        "started_at": 0.0,
        "drain_deadline": 0.0
    }]);
    std::fs::write(&state_path, state.to_string()).unwrap();

    agent.kill9_and_restart();
    let status = agent.status().await;
    assert_eq!(status.state(), pb::ProxyState::Stopped);
    assert_eq!(status.pid, 0);
    assert!(
        status.draining.is_empty(),
        "a stranger was adopted as draining (and killed at its deadline)"
    );
    assert!(
        other.try_wait().unwrap().is_none(),
        "the agent signalled a process it does not own"
    );
    let logs = agent.logs();
    assert!(logs.contains("was reused"), "{logs}");
    assert!(logs.contains("runs /"), "{logs}");
    let _ = other.kill();
    let _ = other.wait();
}

#[tokio::test]
async fn obproxy_killed_from_outside_is_respawned_with_backoff_but_not_after_stop() {
    let agent = Agent::start().await;
    let first = agent.start_proxy().await.pid;
    let addr = agent.sql_addr().await;

    common::signal(first, libc::SIGKILL);
    let second = agent
        .wait_status(|s| s.state() == pb::ProxyState::Running && s.pid != first && s.pid != 0)
        .await;
    assert!(
        second
            .last_exit
            .contains(&format!("pid {first} killed by SIGKILL")),
        "{}",
        second.last_exit
    );
    assert_eq!(second.restart_count, 1);
    common::round_trip(addr).await.unwrap();

    // Again at once: the second respawn waits longer (1 s, then 2 s).
    let killed_at = std::time::Instant::now();
    common::signal(second.pid, libc::SIGKILL);
    let down = agent.wait_status(|s| s.pid != second.pid).await;
    assert_eq!(down.state(), pb::ProxyState::Unavailable);
    let third = agent
        .wait_status(|s| s.state() == pb::ProxyState::Running && s.pid != 0)
        .await;
    assert!(
        killed_at.elapsed() >= Duration::from_secs(2),
        "no backoff: {:?}",
        killed_at.elapsed()
    );
    assert_eq!(third.restart_count, 2);

    // A deliberate stop is never undone.
    assert_eq!(
        agent.stop_proxy().await.state(),
        pb::OperationState::Succeeded
    );
    let stopped = agent.status().await;
    assert_eq!(stopped.state(), pb::ProxyState::Stopped);
    assert!(!stopped.desired_running);
    // Start and stop once more: the operations are ours, no respawn between.
    agent.start_proxy().await;
    agent.stop_proxy().await;
    let logs = agent.logs();
    let after_stop = &logs[logs.find("closing SQL listeners").unwrap()..];
    assert!(!after_stop.contains("respawning"), "{after_stop}");
    assert!(agent.obproxy_pids().is_empty());
}

/// What `GetStatus` reports beyond admin SQL being off (it is not configured here).
fn other_notices(status: &pb::ProxyStatus) -> Vec<&String> {
    status
        .notices
        .iter()
        .filter(|n| !n.starts_with("admin SQL is off"))
        .collect()
}

/// Like obproxy, the stand-in tells its parent it is ready (SIGUSR1) and that
/// it exited (SIGUSR2): for the holders this test starts itself, the parent is
/// the test, whose default action for both would be to die.
fn handle_child_signals() {
    static HANDLED: std::sync::Once = std::sync::Once::new();
    HANDLED.call_once(|| {
        for signal in [signal_hook::consts::SIGUSR1, signal_hook::consts::SIGUSR2] {
            let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            signal_hook::flag::register(signal, flag).unwrap();
        }
    });
}

/// A second obproxy holding the agent's SQL listener, in the obproxy home, that
/// no agent started: what an agent that died right after a fork leaves behind.
/// The socket comes from the serving obproxy with pidfd_getfd (the tests run
/// as root or as obproxy's owner); its output goes to `holder.out`.
fn spawn_holder(agent: &Agent, serving: u32) -> Child {
    handle_child_signals();
    let environ = std::fs::read(format!("/proc/{serving}/environ")).unwrap();
    // SAFETY: pidfd_open returns a new fd (or -1), closed below.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, serving as i32, 0) } as i32;
    assert!(pidfd >= 0, "{}", std::io::Error::last_os_error());
    // Every listener the serving obproxy inherited (SQL, and RPC on 4.3), under the same
    // variable, as our own copies.
    let inherited: Vec<(&str, i32)> = ["OBPROXY_INHERITED_FD", "OBPROXY_INHERITED_RPC_FD"]
        .into_iter()
        .filter_map(|var| {
            let prefix = format!("{var}=");
            let fd: i32 = environ
                .split(|b| *b == 0)
                .find_map(|v| v.strip_prefix(prefix.as_bytes()))
                .map(|v| String::from_utf8_lossy(v).parse().unwrap())?;
            // SAFETY: pidfd_getfd returns a new fd (or -1), closed below.
            let ours = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd, fd, 0) } as i32;
            assert!(ours >= 0, "{}", std::io::Error::last_os_error());
            Some((var, ours))
        })
        .collect();
    assert!(
        !inherited.is_empty(),
        "the serving obproxy inherited no listener"
    );
    let out = std::fs::File::create(agent.dir.path().join("holder.out")).unwrap();
    // The stand-in as the agent's own obproxy runs it: from the link beside the wrapper, in
    // the home (an agent adopts only what runs from its home or upgrade directory).
    let mut command = Command::new(agent.home().join("bin/.obproxy-standin"));
    command
        .current_dir(agent.home())
        .args(["-n", "testapp", "-o", "hot_upgrade_exit_timeout=30000000"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(out);
    for (var, fd) in &inherited {
        command.env(var, fd.to_string());
    }
    let fds: Vec<i32> = inherited.iter().map(|(_, fd)| *fd).collect();
    // SAFETY: only fcntl between fork and exec: the child keeps the listeners.
    unsafe {
        let fds = fds.clone();
        command.pre_exec(move || {
            for fd in &fds {
                if libc::fcntl(*fd, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let child = command.spawn().unwrap();
    // SAFETY: our copies; the child has its own.
    unsafe {
        for fd in fds {
            libc::close(fd);
        }
        libc::close(pidfd);
    }
    let log = agent.dir.path().join("holder.out");
    wait_until(|| std::fs::read_to_string(&log).is_ok_and(|l| l.contains(" ready ")));
    child
}

/// Polls `done` (a file, /proc) every 20 ms, up to PATIENCE: a line a
/// helper process writes into a file and a /proc entry have no event to
/// wait on, so this is the event's poll, not a fixed wait.
fn wait_until(done: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + common::PATIENCE;
    while !done() {
        assert!(std::time::Instant::now() < deadline, "never happened");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test]
async fn an_unrecorded_obproxy_holding_the_listener_is_killed_when_the_agent_returns() {
    let mut agent = Agent::start().await;
    let serving = agent.start_proxy().await.pid;
    agent.kill9();
    let mut stray = spawn_holder(&agent, serving);
    assert_eq!(agent.obproxy_pids().len(), 2);

    agent.restart_agent_with(common::agent_command);
    let exit = common::wait_child(&mut stray);
    assert_eq!(exit.signal(), Some(libc::SIGKILL), "{exit:?}");
    assert!(
        agent
            .logs()
            .contains("killing an unrecorded obproxy that holds our listener"),
        "{}",
        agent.logs()
    );
    let status = agent.status().await;
    assert_eq!(
        status.pid,
        serving,
        "the recorded obproxy serves on\n{}",
        agent.logs()
    );
    assert!(other_notices(&status).is_empty(), "{:?}", status.notices);
    assert_eq!(agent.obproxy_pids(), vec![serving]);
    common::round_trip(agent.sql_addr().await).await.unwrap();
}

#[tokio::test]
async fn a_drain_recorded_but_never_signalled_begins_when_the_agent_returns() {
    let mut agent = Agent::start().await;
    let serving = agent.start_proxy().await.pid;
    agent.kill9();
    // The agent died after writing down that this process drains, before its
    // SIGUSR1: the process still accepts, and nothing told it to stop.
    let mut old = spawn_holder(&agent, serving);
    let state_path = agent.dir.path().join("state/agent-state.json");
    let mut state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&state_path).unwrap()).unwrap();
    let deadline = SystemTime::now() + Duration::from_secs(20);
    let epoch = |t: SystemTime| {
        t.duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64()
    };
    let pid = old.id();
    state["processes"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({
            "pid": pid,
            "start_ticks": odp_agent::agent::obproxy::procfs::start_ticks(pid).unwrap(),
            "exe": odp_agent::agent::obproxy::procfs::exe(pid).unwrap(),
            "binary": common::STANDIN,
            "version": "4.3.1.0",
            "role": "draining",
            "started_at": epoch(SystemTime::now()),
            "drain_deadline": epoch(deadline),
        }));
    std::fs::write(&state_path, state.to_string()).unwrap();

    agent.restart_agent_with(common::agent_command);
    agent.log.wait_for(|l| {
        l.contains("re-adopted a draining obproxy") && l.contains(&format!("pid={pid}"))
    });
    // Told now: with no session open it drains at once and exits by itself,
    // long before the agent would kill it at the deadline.
    let exit = common::wait_child(&mut old);
    assert!(SystemTime::now() < deadline - Duration::from_secs(10));
    assert_eq!(exit.code(), Some(1), "a clean exit, not a kill: {exit:?}");
    let output = std::fs::read_to_string(agent.dir.path().join("holder.out")).unwrap();
    assert!(
        output.contains("drain begun") && output.contains("signal=SIGUSR1"),
        "{output}"
    );
    agent.wait_status(|s| s.draining.is_empty()).await;
    assert_eq!(agent.status().await.pid, serving);
}

#[tokio::test]
async fn an_obproxy_whose_binary_was_replaced_on_disk_is_still_re_adopted() {
    let mut agent = Agent::start().await;
    // obproxy runs from a file under home, which an upgrade then replaces.
    let real = agent.home().join("bin/obproxy-real");
    std::fs::copy(common::STANDIN, &real).unwrap();
    std::fs::write(
        agent.home().join("bin/obproxy"),
        format!("#!/bin/sh\nexec {} \"$@\"\n", real.display()),
    )
    .unwrap();
    let pid = agent.start_proxy().await.pid;
    agent.kill9();
    // As a package upgrade does: a new file renamed over the old one.
    let new = agent.home().join("bin/obproxy-real.new");
    std::fs::copy(common::STANDIN, &new).unwrap();
    std::fs::rename(&new, &real).unwrap();
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    assert!(exe.to_string_lossy().ends_with(" (deleted)"), "{exe:?}");

    agent.restart_agent_with(common::agent_command);
    let status = agent.status().await;
    assert_eq!(status.pid, pid, "{}", agent.logs());
    assert!(other_notices(&status).is_empty(), "{:?}", status.notices);
    assert!(agent.logs().contains("re-adopted the serving obproxy"));
    // Listeners taken back: a hot restart moves onto the new file.
    let op = agent
        .restart_with(pb::RestartRequest {
            wait: true,
            ..hot(Duration::from_secs(2), "")
        })
        .await
        .unwrap();
    assert_eq!(op.state(), pb::OperationState::Succeeded, "{}", op.error);
    assert!(!alive(pid));
}

/// The agent as [`common::agent_command`] runs it, with pidfd_getfd(2) failing
/// (EPERM), as it does without ptrace permission over obproxy.
fn without_pidfd_getfd(config: &std::path::Path) -> Command {
    let mut command = common::agent_command(config);
    // SAFETY: between fork and exec, two prctl calls on a filter on our stack.
    unsafe {
        command.pre_exec(|| {
            let stmt = |code: u32, k: u32| libc::sock_filter {
                code: code as u16,
                jt: 0,
                jf: 0,
                k,
            };
            let filter = [
                // Load the system call number (offset 0 of seccomp_data).
                stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, 0),
                libc::sock_filter {
                    code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
                    jt: 0,
                    jf: 1,
                    k: libc::SYS_pidfd_getfd as u32,
                },
                stmt(
                    libc::BPF_RET | libc::BPF_K,
                    libc::SECCOMP_RET_ERRNO | libc::EPERM as u32,
                ),
                stmt(libc::BPF_RET | libc::BPF_K, libc::SECCOMP_RET_ALLOW),
            ];
            let program = libc::sock_fprog {
                len: filter.len() as u16,
                filter: filter.as_ptr() as *mut libc::sock_filter,
            };
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                || libc::prctl(
                    libc::PR_SET_SECCOMP,
                    libc::SECCOMP_MODE_FILTER,
                    &program as *const libc::sock_fprog,
                ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    command
}

#[tokio::test]
async fn listeners_not_taken_back_refuse_hot_until_a_force_restart_binds_them() {
    let mut agent = Agent::start().await;
    let old = agent.start_proxy().await.pid;
    let addr = agent.sql_addr().await;
    agent.kill9();
    agent.restart_agent_with(without_pidfd_getfd);

    let status = agent.status().await;
    assert_eq!(status.pid, old, "the serving obproxy is still re-adopted");
    assert_eq!(status.state(), pb::ProxyState::Running);
    let notice = status
        .notices
        .iter()
        .find(|n| n.contains("could not be taken back"))
        .unwrap_or_else(|| panic!("{:?}\n{}", status.notices, agent.logs()));
    assert!(notice.contains("pidfd_getfd"), "{notice}");
    let refused = agent.restart(pb::RestartMode::Hot, true).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    assert!(
        refused.message().contains("could not be taken back"),
        "{}",
        refused.message()
    );
    common::round_trip(addr).await.unwrap();

    let op = agent.restart(pb::RestartMode::Force, true).await.unwrap();
    assert_eq!(op.state(), pb::OperationState::Succeeded, "{}", op.error);
    let status = agent.status().await;
    assert!(other_notices(&status).is_empty(), "{:?}", status.notices);
    assert_ne!(status.pid, old);
    assert_eq!(agent.sql_addr().await, addr, "bound again on the same port");
    common::round_trip(addr).await.unwrap();
    let op = agent.restart(pb::RestartMode::Hot, true).await.unwrap();
    assert_eq!(op.state(), pb::OperationState::Succeeded, "{}", op.error);
}

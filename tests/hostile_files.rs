//! What a local user can plant on disk cannot steer the agent: its files are
//! private whatever the umask, a symlink planted in the state directory is
//! not followed, a forged state file makes it signal nobody, a directory
//! swapped inside upgrade_dir never runs a binary from outside, and
//! configurations others may write or keys others may read are refused at
//! start (exit 78).
use crate::common;

use std::{
    os::unix::{
        fs::{MetadataExt, PermissionsExt},
        process::CommandExt,
    },
    path::Path,
    process::{Child, Command},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use common::{Agent, Options, alive, local::NOBODY, pki::Pki};
use odp_agent::proto::agent as pb;
use tonic::Code;

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .mode()
        & 0o777
}

#[tokio::test]
async fn the_agents_files_are_private_whatever_the_umask() {
    let agent = Agent::start_customized(Options::default(), |config| {
        let mut command = common::agent_command(config);
        // SAFETY: umask only, between fork and exec.
        unsafe {
            command.pre_exec(|| {
                libc::umask(0);
                Ok(())
            });
        }
        command
    })
    .await;
    let pid = agent.start_proxy().await.pid;
    let state = agent.dir.path().join("state");
    assert_eq!(mode(&state), 0o700);
    for file in ["agent-state.json", "audit.log", "obproxy.out"] {
        assert_eq!(mode(&state.join(file)), 0o600, "{file}");
    }
    assert_eq!(mode(&state.join("grpc.sock")), 0o660);
    // obproxy gets the umask the agent was started with, not the agent's.
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(status.contains("Umask:\t0000"), "{status}");
}

#[tokio::test]
async fn the_coordinators_files_are_private_whatever_the_umask() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("coordinator.toml");
    std::fs::write(
        &config,
        "[server]\nlisten = \"127.0.0.1:0\"\n[store]\npath = \"store/tasks.db\"\n",
    )
    .unwrap();
    let mut command = Command::new(common::cluster::COORDINATOR);
    command.arg("--config").arg(&config);
    // SAFETY: umask only, between fork and exec.
    unsafe {
        command.pre_exec(|| {
            libc::umask(0);
            Ok(())
        });
    }
    let (mut child, _, _) = common::spawn_logged(command, "coordinator");
    let store = dir.path().join("store");
    assert_eq!(mode(&store), 0o700);
    for file in ["tasks.db", "audit.log"] {
        assert_eq!(mode(&store.join(file)), 0o600, "{file}");
    }
    assert_eq!(mode(&store.join("grpc.sock")), 0o660);
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test]
async fn a_symlink_planted_in_the_state_directory_is_not_followed() {
    let agent = Agent::start().await;
    let victim = agent.dir.path().join("victim-root-file");
    std::fs::write(&victim, "ROOT-OWNED ORIGINAL CONTENT").unwrap();
    let state = agent.dir.path().join("state");
    std::os::unix::fs::symlink(&victim, state.join("agent-state.json.tmp")).unwrap();
    agent.start_proxy().await;
    assert_eq!(
        std::fs::read_to_string(&victim).unwrap(),
        "ROOT-OWNED ORIGINAL CONTENT"
    );
    let saved = state.join("agent-state.json");
    assert!(std::fs::symlink_metadata(&saved).unwrap().is_file());
    let recorded: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(saved).unwrap()).unwrap();
    assert_eq!(recorded["desired_running"], true);
}

/// `sleep 300` as uid 65534: a process the agent must never touch.
fn foreign_sleep() -> Child {
    common::local::as_nobody(Path::new("/usr/bin/sleep"), &["300"])
        .spawn()
        .unwrap()
}

#[tokio::test]
async fn a_forged_state_file_makes_the_agent_signal_nobody() {
    let mut agent = Agent::start().await;
    agent.start_proxy().await;
    agent.stop_proxy().await;
    let mut sleeps: Vec<Child> = (0..4).map(|_| foreign_sleep()).collect();
    let ticks = |c: &Child| odp_agent::agent::obproxy::procfs::start_ticks(c.id()).unwrap();
    // Every start time right, no executable, no listeners: the checks a
    // forged file can skip.
    let state_path = agent.dir.path().join("state/agent-state.json");
    let record = |c: &Child, role: &str, exe: Option<&str>| {
        serde_json::json!({
            "pid": c.id(),
            "start_ticks": ticks(c),
            "exe": exe,
            "binary": "bin/obproxy",
            "version": "4.3.1.0",
            "role": role,
            "started_at": 0.0,
            "drain_deadline": 1.0,
        })
    };
    let forged = serde_json::json!({
        // No generation: the agent's journal entries, written over the file
        // this one replaced, are not read over it.
        "desired_running": false,
        "listeners": [],
        "last_bound": [],
        "processes": [
            record(&sleeps[0], "starting", None),
            record(&sleeps[1], "draining", None),
            record(&sleeps[2], "serving", None),
            record(&sleeps[3], "serving", Some("/usr/bin/sleep")),
        ],
        "started_count": 1,
        "last_exit": null,
    });
    std::fs::write(&state_path, forged.to_string()).unwrap();
    agent.kill9_and_restart();

    let status = agent.status().await;
    assert_eq!(status.state(), pb::ProxyState::Stopped, "{status:?}");
    assert_eq!(status.pid, 0);
    assert!(status.draining.is_empty());
    let stop = agent.stop_proxy().await;
    assert_eq!(stop.state(), pb::OperationState::Succeeded);
    for s in &mut sleeps {
        assert!(
            s.try_wait().unwrap().is_none() && alive(s.id()),
            "pid {} (uid {NOBODY}) was signalled:\n{}",
            s.id(),
            agent.logs()
        );
    }
    let logs = agent.logs();
    assert_eq!(
        logs.matches("not adopting the recorded obproxy").count(),
        4,
        "{logs}"
    );
    assert!(logs.contains("without the executable it ran"), "{logs}");
    assert!(logs.contains("runs as uid 65534"), "{logs}");
    // The agent works as ever.
    agent.start_proxy().await;

    // A state file another user could have written is not read at all.
    std::fs::write(&state_path, forged.to_string()).unwrap();
    nix::unistd::chown(&state_path, Some(NOBODY.into()), None).unwrap();
    agent.kill9_and_restart();
    agent.log.wait_for(|l| l.contains("is not to be trusted"));
    for mut s in sleeps {
        assert!(alive(s.id()));
        let _ = s.kill();
        let _ = s.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_swapped_inside_upgrade_dir_never_runs_a_binary_from_outside() {
    let agent = Agent::start().await;
    agent.start_proxy().await;
    let home = agent.home();
    let bin = home.join("bin");
    std::fs::create_dir_all(bin.join("sub")).unwrap();
    let legit = bin.join("sub/obproxy");
    std::fs::write(
        &legit,
        format!(
            "#!/bin/sh\nexec {} \"$@\"\n",
            bin.join(".obproxy-standin").display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&legit, std::fs::Permissions::from_mode(0o755)).unwrap();
    let outside = agent.dir.path().join("outside/sub");
    std::fs::create_dir_all(&outside).unwrap();
    let marker = agent.dir.path().join("pwned");
    std::fs::write(
        outside.join("obproxy"),
        format!(
            "#!/bin/sh\necho \"pwned $(id -u) $*\" >> {}\nexit 1\n",
            marker.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        outside.join("obproxy"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    std::os::unix::fs::symlink(&outside, bin.join("sub_alt")).unwrap();

    // bin/sub (the real directory) and bin/sub_alt (a symlink out) trade
    // places as fast as the kernel allows.
    let stop = Arc::new(AtomicBool::new(false));
    let swapper = {
        let stop = stop.clone();
        let (a, b) = (
            std::ffi::CString::new(bin.join("sub").display().to_string()).unwrap(),
            std::ffi::CString::new(bin.join("sub_alt").display().to_string()).unwrap(),
        );
        std::thread::spawn(move || {
            let mut swaps = 0u64;
            while !stop.load(Ordering::Relaxed) {
                // SAFETY: two valid paths; renameat2 swaps them atomically.
                unsafe {
                    libc::renameat2(
                        libc::AT_FDCWD,
                        a.as_ptr(),
                        libc::AT_FDCWD,
                        b.as_ptr(),
                        libc::RENAME_EXCHANGE,
                    );
                }
                swaps += 1;
                std::thread::yield_now();
            }
            swaps
        })
    };
    let (mut ran, mut refused) = (0, 0);
    for i in 0..20 {
        let answer = agent
            .restart_with(pb::RestartRequest {
                mode: pb::RestartMode::Hot as i32,
                binary: "bin/sub/obproxy".into(),
                exit_timeout: Some(prost_types::Duration::default()),
                request_id: format!("swap-{i}"),
                wait: true,
            })
            .await;
        match answer {
            Ok(op) if op.state() == pb::OperationState::Succeeded => ran += 1,
            Ok(op) => panic!("{op:?}"),
            Err(e) => {
                assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
                assert!(e.message().contains("symlink"), "{e:?}");
                refused += 1;
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    let swaps = swapper.join().unwrap();
    eprintln!("{swaps} swaps; {ran} hot upgrades from the real directory, {refused} refused");
    assert!(
        !marker.exists(),
        "{}",
        std::fs::read_to_string(&marker).unwrap()
    );
    assert!(ran > 0 && refused > 0, "the race was not exercised");
}

#[tokio::test]
async fn upgrade_binaries_others_may_write_or_another_user_owns_are_refused() {
    let agent = Agent::start().await;
    let pid = agent.start_proxy().await.pid;
    let writable = agent.add_binary("obproxy-writable", &[]);
    let path = agent.home().join(&writable);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777)).unwrap();
    let foreign = agent.add_binary("obproxy-foreign", &[]);
    nix::unistd::chown(&agent.home().join(&foreign), Some(NOBODY.into()), None).unwrap();
    for (binary, reason) in [
        (writable, "others may write it"),
        (foreign, "owned by uid 65534"),
    ] {
        let e = agent
            .restart_with(pb::RestartRequest {
                mode: pb::RestartMode::Hot as i32,
                binary,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.message().starts_with("binary: "), "{e:?}");
        assert!(e.message().contains(reason), "{e:?}");
    }
    assert_eq!(agent.status().await.pid, pid);
}

/// Runs `odp-agent` on `config` and returns its exit code and stderr.
fn agent_exit(config: &Path) -> (Option<i32>, String) {
    let out = Command::new(common::AGENT)
        .arg("--config")
        .arg(config)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn agent_config(dir: &Path, more: &str) -> std::path::PathBuf {
    let config = dir.join("agent.toml");
    std::fs::create_dir_all(dir.join("odp")).unwrap();
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[obproxy]\nhome = \"odp\"\nlisten = [\"127.0.0.1:0\"]\n\
             [state]\ndir = \"state\"\n{more}"
        ),
    )
    .unwrap();
    config
}

#[test]
fn configs_others_may_write_keys_others_may_read_and_shared_token_hashes_exit_78() {
    let dir = tempfile::tempdir().unwrap();
    let config = agent_config(dir.path(), "");
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o666)).unwrap();
    let (code, err) = agent_exit(&config);
    assert_eq!(code, Some(78), "{err}");
    assert!(
        err.contains("agent.toml") && err.contains("writable by everyone"),
        "{err}"
    );

    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let config = agent_config(dir.path(), &pki.agent_toml());
    let key = pki.path("server.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, err) = agent_exit(&config);
    assert_eq!(code, Some(78), "{err}");
    assert!(
        err.contains("server.key") && err.contains("open to everyone"),
        "{err}"
    );

    let dir = tempfile::tempdir().unwrap();
    let hash = "ab".repeat(32);
    let tokens = format!(
        "[[auth.tokens]]\nname = \"a\"\nsha256 = \"{hash}\"\nrole = \"READ_ONLY\"\n\
         [[auth.tokens]]\nname = \"b\"\nsha256 = \"{hash}\"\nrole = \"OBPROXY_MANAGER\"\n"
    );
    let (code, err) = agent_exit(&agent_config(dir.path(), &tokens));
    assert_eq!(code, Some(78), "{err}");
    assert!(err.contains("auth.tokens[1].sha256"), "{err}");

    // A state directory someone else owns: whoever owns it could plant the
    // state file that names the pids to signal.
    let dir = tempfile::tempdir().unwrap();
    let config = agent_config(dir.path(), "");
    std::fs::create_dir(dir.path().join("state")).unwrap();
    nix::unistd::chown(&dir.path().join("state"), Some(NOBODY.into()), None).unwrap();
    let (code, err) = agent_exit(&config);
    assert_eq!(code, Some(78), "{err}");
    assert!(
        err.contains("state.dir") && err.contains("uid 65534"),
        "{err}"
    );
}

//! Passwords in obproxy's `-o` reach obproxy but nothing the agent writes:
//! its log, the state directory (state file, audit log), GetStatus and the
//! operations' events, through a start, a hot and a force restart and a
//! stop; nor a configuration error that quotes them.
use crate::common;

use std::process::Command;

use common::{Agent, Options};
use odp_agent::proto::agent as pb;

const SYS: &str = "Sys-S3cret-4711";
const OBSERVER: &str = "Observer-S3cret-4712";

#[tokio::test]
async fn passwords_in_the_optstr_never_appear_in_what_the_agent_writes() {
    let agent = Agent::start_with(Options {
        args: vec![
            "-o".into(),
            format!(
                "obproxy_sys_password={SYS},observer_sys_password1={OBSERVER},enable_metadb=false"
            ),
        ],
        ..Default::default()
    })
    .await;
    let mut seen = Vec::new();
    let start = agent.start_proxy().await;
    // obproxy itself got them (otherwise this test would prove nothing).
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", start.pid)).unwrap();
    let cmdline = String::from_utf8_lossy(&cmdline);
    assert!(
        cmdline.contains(SYS) && cmdline.contains(OBSERVER),
        "{cmdline}"
    );
    seen.push(format!("{:?}", agent.status().await));
    let hot = agent.restart(pb::RestartMode::Hot, true).await.unwrap();
    assert_eq!(hot.state(), pb::OperationState::Succeeded, "{}", hot.error);
    seen.push(format!("{:?}", agent.status().await));
    let force = agent.restart(pb::RestartMode::Force, true).await.unwrap();
    assert_eq!(
        force.state(),
        pb::OperationState::Succeeded,
        "{}",
        force.error
    );
    let stop = agent.stop_proxy().await;
    seen.push(format!("{:?}", agent.status().await));
    for op in [&start, &hot, &force, &stop] {
        let op = agent
            .client()
            .await
            .get_operation(pb::GetOperationRequest { id: op.id.clone() })
            .await
            .unwrap()
            .into_inner();
        assert!(!op.events.is_empty());
        seen.push(format!("{op:?}"));
    }
    let logs = agent.logs();
    assert!(logs.contains("obproxy_sys_password=<redacted>"), "{logs}");
    seen.push(logs);
    // Everything in the state directory but obproxy's own output (obproxy
    // echoes its argv; the agent only makes that file private).
    let state = agent.dir.path().join("state");
    let mut files = 0;
    for entry in std::fs::read_dir(&state).unwrap() {
        let path = entry.unwrap().path();
        if path.file_name().is_some_and(|n| n == "obproxy.out") {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "obproxy.out is readable by others");
            continue;
        }
        files += 1;
        seen.push(std::fs::read_to_string(&path).unwrap_or_default());
    }
    assert!(files >= 2, "the state file and the audit log");
    for text in &seen {
        for secret in [SYS, OBSERVER] {
            assert!(!text.contains(secret), "{secret} leaked into:\n{text}");
        }
    }
}

#[test]
fn a_configuration_error_quoting_a_password_masks_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.toml");
    std::fs::write(
        &path,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[obproxy]\nhome = \"odp\"\nlisten = [\"127.0.0.1:0\"]\n\
             args = \"-o obproxy_sys_password={SYS}\"\n[state]\ndir = \"state\"\n"
        ),
    )
    .unwrap();
    let out = Command::new(common::AGENT)
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(stderr.contains("obproxy.args"), "{stderr}");
    assert!(!stderr.contains(SYS), "{stderr}");
}

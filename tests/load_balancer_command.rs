//! The load balancer's command kind, with a script that records its calls in front of three
//! real agents and a real coordinator; and a bad `[clusters.load_balancer]` refused at start.
//!
//! - The command kind runs its argv templates without a shell, in order per ODP, keeps their
//!   output in the subtask, and a drain that outlasts `drain_timeout` says so.
//! - A bad section is refused at start with exit 78, naming its key.
use crate::common;

use std::process::Command;

use common::{
    Agent,
    balanced::{balancer_view, coordinator, force_restart_one_by_one, succeeded},
    cluster::COORDINATOR,
};
use odp_agent::proto::coordinator as pb;

/// Records each call (`[arg]` per argument, one line per call) and answers `sessions`
/// from `sessions-<agent>` when it exists (0 otherwise), `state` with `ready`.
const SCRIPT: &str = r#"#!/bin/sh
dir=$(dirname "$0")
line=""
for arg in "$@"; do line="$line[$arg]"; done
echo "$line" >> "$dir/calls.log"
case "$1" in
  sessions) if [ -f "$dir/sessions-$2" ]; then cat "$dir/sessions-$2"; else echo 0; fi ;;
  state) echo ready ;;
  *) echo "did $1 $2" ;;
esac
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_kind_runs_its_templates_without_a_shell_in_order_per_odp() {
    let mut agents = Vec::new();
    for _ in 0..3 {
        agents.push(Agent::start().await);
    }
    for a in &agents {
        a.start_proxy().await;
    }
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("lb.sh");
    std::fs::write(&script, SCRIPT).unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let names: Vec<String> = agents.iter().map(|a| a.grpc.to_string()).collect();
    // The third ODP keeps one session for ever: its drain ends at drain_timeout.
    std::fs::write(dir.path().join(format!("sessions-{}", names[2])), "1\n").unwrap();
    let tricky = "a b;$(touch pwned)";
    let script = script.display().to_string();
    let section = format!(
        "[clusters.load_balancer]\nkind = \"command\"\n\
         drain = [\"{script}\", \"drain\", \"{{agent}}\", \"{tricky}\"]\n\
         enable = [\"{script}\", \"enable\", \"{{agent}}\"]\n\
         sessions = [\"{script}\", \"sessions\", \"{{agent}}\"]\n\
         state = [\"{script}\", \"state\", \"{{agent}}\"]\n\
         drain_timeout = \"1s\"\n"
    );
    let cluster = coordinator(agents, section);
    let mut before = Vec::new();
    for a in &cluster.agents {
        before.push(a.status().await.pid);
    }
    let task = force_restart_one_by_one(&cluster).await;
    let done = cluster.wait_task(&task.id).await;
    succeeded(&done, &cluster);

    let calls = std::fs::read_to_string(dir.path().join("calls.log")).unwrap();
    let expected: Vec<String> = names
        .iter()
        .flat_map(|a| {
            // The third ODP's sessions are asked until drain_timeout: at least twice.
            let mut calls = vec![
                format!("[drain][{a}][{tricky}]"),
                format!("[sessions][{a}]"),
            ];
            if *a == names[2] {
                calls.push(format!("[sessions][{a}]"));
            }
            calls.push(format!("[enable][{a}]"));
            calls
        })
        .collect();
    let seen: Vec<&str> = calls.lines().collect();
    // Repeated sessions calls of the third collapse to the two the expectation holds.
    let mut collapsed: Vec<&str> = Vec::new();
    for line in &seen {
        if collapsed.len() >= 2
            && collapsed[collapsed.len() - 1] == *line
            && collapsed[collapsed.len() - 2] == *line
        {
            continue;
        }
        collapsed.push(line);
    }
    assert_eq!(collapsed, expected, "{calls}");
    assert!(
        !dir.path().join("pwned").exists(),
        "a shell ran the template"
    );
    assert!(
        !std::path::Path::new("pwned").exists(),
        "a shell ran the template"
    );

    for (i, s) in done.subtasks.iter().enumerate() {
        let b = s.balancer.as_ref().unwrap();
        assert_eq!(
            b.server, names[i],
            "without servers, the agent names the server"
        );
        assert_eq!(b.state(), pb::BalancerState::Ready, "{b:?}");
        assert!(
            b.log.iter().any(|l| l.contains("exited 0: did enable")),
            "the command's output is in the subtask: {b:?}"
        );
        assert_ne!(cluster.agents[i].status().await.pid, before[i]);
    }
    assert!(
        done.subtasks[0]
            .balancer
            .as_ref()
            .unwrap()
            .drain
            .starts_with("no sessions after")
    );
    let third = done.subtasks[2].balancer.as_ref().unwrap();
    assert_eq!(
        third.drain, "drain_timeout (1s) passed with 1 session(s) still open",
        "{third:?}"
    );
    // The status asks the sessions and state commands.
    assert_eq!(
        balancer_view(&cluster).await,
        [
            (pb::BalancerState::Ready, 0),
            (pb::BalancerState::Ready, 0),
            (pb::BalancerState::Ready, 1)
        ]
    );
}

#[test]
fn a_bad_load_balancer_section_is_refused_at_start_naming_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("coordinator.toml");
    std::fs::write(
        &config,
        r#"[server]
listen = "127.0.0.1:0"
[store]
path = "tasks.db"
[[clusters]]
name = "prod"
agents = ["10.0.0.1:2889", "10.0.0.2:2889"]
[clusters.load_balancer]
kind = "haproxy"
socket = "/run/haproxy/admin.sock"
backend = "odp"
servers = { "10.0.0.1:2889" = "odp1", "10.0.0.3:2889" = "odp3" }
"#,
    )
    .unwrap();
    let out = Command::new(COORDINATOR)
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(stderr.contains(&config.display().to_string()), "{stderr}");
    assert!(
        stderr.contains("clusters[0].load_balancer.servers"),
        "{stderr}"
    );
    assert!(
        stderr.contains("\"10.0.0.3:2889\" is not an agent of this cluster"),
        "{stderr}"
    );
}

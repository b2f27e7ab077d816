//! Upgrade All's plan. Before any ODP moves: every agent confirms the binary (it exists inside
//! its upgrade directory, is executable, has the SHA-256 asked for and a
//! `-V` version, the same on every host), every ODP's own binary can be gone
//! back to, and no ODP would be downgraded unless that was asked for. The
//! console's rules (every ODP Running at 3.2.1 or later) are checked by
//! `rules` first. Any problem refuses the task, naming the host and why.
use super::{
    agent_pool::{AgentError, AgentPool},
    config::Cluster,
    task::{
        Task,
        upgrade::{OdpUpgrade, Upgrade, UpgradeRequest},
    },
};
use crate::{
    common::{error_chain::describe, obproxy_version as version},
    proto::agent as pb,
};

/// What one agent said about the two binaries of its upgrade.
struct Inspected {
    agent: String,
    current_version: String,
    target: Result<pb::BinaryInspection, AgentError>,
    previous: Result<pb::BinaryInspection, AgentError>,
    previous_binary: String,
}

/// `task` (made as any other) as the Upgrade All it runs: its canary batch
/// and what each ODP runs before; or every reason it may not (host by host).
pub async fn plan(
    pool: &AgentPool,
    cluster: &Cluster,
    statuses: &[Result<pb::ProxyStatus, AgentError>],
    mut task: Task,
    ask: &UpgradeRequest,
) -> Result<Task, String> {
    let mut problems = Vec::new();
    let mut asks = Vec::new();
    for (agent, status) in cluster.agents.iter().zip(statuses) {
        // `rules` already refused an ODP not Running; one with no serving
        // process in its status has no binary to go back to.
        match status.as_ref().ok().and_then(|s| s.serving.as_ref()) {
            Some(p) if !p.binary.is_empty() => {
                asks.push((agent.clone(), p.binary.clone(), p.version.clone()));
            }
            _ => problems.push(format!("{agent}: reports no serving binary")),
        }
    }
    if !problems.is_empty() {
        return Err(refusal(&problems));
    }
    let inspected = futures::future::join_all(asks.into_iter().map(
        |(agent, previous_binary, current_version)| async move {
            let (target, previous) = futures::join!(
                pool.inspect(&agent, &ask.binary),
                pool.inspect(&agent, &previous_binary)
            );
            Inspected {
                agent,
                current_version,
                target,
                previous,
                previous_binary,
            }
        },
    ))
    .await;
    let mut odps = Vec::new();
    for i in &inspected {
        let agent = &i.agent;
        let target = match &i.target {
            Ok(t) if !t.sha256.eq_ignore_ascii_case(&ask.sha256) => {
                problems.push(format!(
                    "{agent}: {} has SHA-256 {}, not {}",
                    t.binary, t.sha256, ask.sha256
                ));
                None
            }
            Ok(t) => Some(t),
            // The error names the agent.
            Err(e) => {
                problems.push(describe(e));
                None
            }
        };
        let previous = match &i.previous {
            Ok(p) => Some(p),
            Err(e) => {
                problems.push(format!(
                    "the current binary {} could not be gone back to: {}",
                    i.previous_binary,
                    describe(e)
                ));
                None
            }
        };
        if let (Some(t), Some(p)) = (target, previous) {
            if !ask.allow_downgrade && !version::at_least(&t.version, &i.current_version) {
                problems.push(format!(
                    "{agent}: runs {}, newer than the binary's {} (a downgrade needs allow_downgrade)",
                    i.current_version, t.version
                ));
            }
            odps.push((t, p, i));
        }
    }
    let mut versions: Vec<(&str, &str)> = odps
        .iter()
        .map(|(t, _, i)| (i.agent.as_str(), t.version.as_str()))
        .collect();
    versions.sort_by_key(|(_, v)| *v);
    if versions.first().map(|v| v.1) != versions.last().map(|v| v.1) {
        let each: Vec<String> = versions.iter().map(|(a, v)| format!("{a}: {v}")).collect();
        problems.push(format!(
            "the hosts' binaries report different versions ({})",
            each.join(", ")
        ));
    }
    if !problems.is_empty() {
        return Err(refusal(&problems));
    }
    let version = versions
        .first()
        .map(|v| v.1.to_string())
        .unwrap_or_default();
    let n = task.subtasks.len();
    let per_batch = task.rollout.batch_len(n);
    for ((s, batch), (t, p, i)) in task
        .subtasks
        .iter_mut()
        .zip(batches(n, ask.canary_size as usize, per_batch))
        .zip(odps)
    {
        s.batch = batch;
        s.upgrade = Some(OdpUpgrade {
            previous_binary: i.previous_binary.clone(),
            rollback_binary: p.binary.clone(),
            previous_configured: p.configured,
            previous_version: i.current_version.clone(),
            previous_sha256: p.sha256.clone(),
            target_binary: t.binary.clone(),
            version: i.current_version.clone(),
            rollback_operation_id: None,
            rollback_failed: false,
            rollback_ended: false,
        });
    }
    task.batches = task.subtasks.last().map_or(0, |s| s.batch);
    task.upgrade = Some(Upgrade {
        binary: ask.binary.clone(),
        sha256: ask.sha256.to_ascii_lowercase(),
        version,
        canary_size: ask.canary_size,
        canary_wait: ask.canary_wait,
        allow_downgrade: ask.allow_downgrade,
        rollback: None,
    });
    Ok(task)
}

fn refusal(problems: &[String]) -> String {
    format!(
        "Upgrade All refused before any ODP moved: {}",
        problems.join("; ")
    )
}

/// The batch of each of `n` ODPs: the first `canary` alone in batch 1, the
/// rest `per_batch` at a time.
pub fn batches(n: usize, canary: usize, per_batch: usize) -> Vec<u32> {
    let canary = canary.clamp(1, n.max(1));
    let per_batch = per_batch.max(1);
    (0..n)
        .map(|i| {
            if i < canary {
                1
            } else {
                2 + ((i - canary) / per_batch) as u32
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_canary_is_a_batch_of_its_own() {
        assert_eq!(batches(5, 1, 2), [1, 2, 2, 3, 3]);
        assert_eq!(batches(3, 1, 1), [1, 2, 3]);
        assert_eq!(batches(4, 2, 10), [1, 1, 2, 2]);
        assert_eq!(batches(2, 9, 1), [1, 1], "a canary of the whole cluster");
    }
}
